#!/usr/bin/env bash
# The module against other nginx releases than Debian 12's: for each
# argument, an nginx source tree is built with the module (`make
# NGINX_SRC=`), and the API, stream and lifecycle tests (t/1*, t/3*, t/4*,
# t/5*) run against that nginx and that module.
#
#   scripts/nginx-releases.sh [SUITE|DIR ...]      (default: trixie)
#
# DIR is an nginx source tree (a release tarball unpacked, or a git
# checkout).  SUITE is a Debian suite: the tree is the upstream release
# tarball (.orig.tar.gz) of Debian's nginx source package there, fetched by
# apt-get source from the Debian mirror this machine's apt already uses,
# with a private apt state under build/nginx-releases/ (the machine's own
# sources and lists are not touched).  trixie has nginx 1.26.
set -euo pipefail
shopt -s inherit_errexit

top=$(cd "$(dirname "$0")/.." && pwd)
out=$top/build/nginx-releases
[ $# -gt 0 ] || set -- trixie
mkdir -p "$out"

# A source tree for Debian suite $1: prints its path.
from_suite() {
    local suite=$1 apt=$out/apt mirror
    mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Label: Debian' \
                 'Identifier: Packages' | sort -u | head -1)
    [ -n "$mirror" ] || { echo "no Debian mirror in apt's sources" >&2; return 1; }
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
    echo "deb-src $mirror $suite main" > "$apt/$suite.list"
    local o=(-o "Dir::Etc::SourceList=$apt/$suite.list"
             -o Dir::Etc::SourceParts=/nonexistent
             -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
             -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    apt-get "${o[@]}" -qq update >&2
    rm -rf "${out:?}/$suite" && mkdir -p "$out/$suite"
    # Only the upstream tarball is needed: apt-get fails when the Debian
    # files of the package (.dsc, .debian.tar.xz) cannot be had, but keeps
    # each file it got, checked against the suite's signed index.
    (cd "$out/$suite" && apt-get "${o[@]}" -qq source --download-only \
        "nginx/$suite" > "$out/$suite.log" 2>&1) || true
    local orig
    orig=$(ls "$out/$suite"/nginx_*.orig.tar.gz 2>/dev/null) || {
        cat "$out/$suite.log" >&2
        echo "apt-get source brought no nginx_*.orig.tar.gz from $suite" >&2
        return 1
    }
    tar -xzf "$orig" -C "$out/$suite"
    ls -d "$out/$suite"/nginx-*/
}

make -C "$top" -s all
rc=0
for arg in "$@"; do
    if [ -d "$arg" ]; then
        tree=$(cd "$arg" && pwd)
    elif ! tree=$(from_suite "$arg"); then
        # the mirror's trouble, not the module's: said loudly, not failed
        echo "== SKIPPED: no nginx source for $arg could be fetched (above)"
        continue
    fi
    tree=${tree%/}
    v=$(sed -n 's/^#define NGINX_VERSION *"\(.*\)"/\1/p' "$tree/src/core/nginx.h")
    build=build/nginx-releases/build-$v
    echo "== nginx $v ($arg): the module and nginx, from $tree"
    make -C "$top" -s BUILD="$build" NGINX_SRC="$tree" module
    make -s -f "$top/$build/nginx-upstream/Makefile" -C "$tree" binary
    "$top/$build/nginx-upstream/nginx" -V 2>&1 | head -1
    echo "== nginx $v: the API, stream and lifecycle tests"
    (cd "$top" && ADL_BUILD="$top/build" ADL_NGINX="$top/$build/nginx-upstream/nginx" \
        ADL_MODULE="$top/$build/nginx-upstream/ngx_http_async_dl_module.so" \
        prove -j2 --timer t/1*.t t/3*.t t/4*.t t/5*.t) || rc=1
done
exit $rc
