#!/usr/bin/env bash
# Installs what building, running and testing async-dl needs on a fresh
# Debian 12 machine.  Idempotent: does nothing when everything is present,
# so `make run` and `make test` can call it every time.
set -euo pipefail

pkgs=(
    # build: nginx with its module build tree, and the libraries we link
    nginx nginx-dev build-essential pkg-config
    libcurl4-openssl-dev libpq-dev libjansson-dev libssl-dev libarchive-dev
    # run: the database
    postgresql postgresql-contrib
    # tests: prove and the Perl modules the harness uses, boto3 as an
    # independent SigV4 signer, clang's sanitizer runtime
    perl libtest-base-perl libtext-diff-perl liblist-moreutils-perl
    libtest-longstring-perl liburi-perl libhttp-message-perl
    libipc-run-perl libwww-perl python3 python3-boto3
    # an independent WebSocket client, the reference Prometheus text parser
    python3-websockets python3-prometheus-client
    clang libclang-rt-14-dev
    # benchmarks
    wrk
    # the S3-compatible test server runs on node
    nodejs
    # the browser tests (t/610): headless chromium, a font for its pages
    chromium fonts-liberation
)

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed'; then
        missing+=("$p")
    fi
done

# node may come from a non-Debian package of the same name; accept any node >= 20
if command -v node >/dev/null 2>&1; then
    missing=("${missing[@]/nodejs}")
fi

read -r -a missing <<<"${missing[*]}"
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The S3 server (verifies SigV4) from the committed lockfile.
here=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d "$here/t/s3/node_modules/@20minutes/s3rver" ]; then
    echo "install-deps: npm ci in t/s3" >&2
    (cd "$here/t/s3" && npm ci --silent --no-audit --no-fund)
fi

# The browser tests' driver (playwright-core, for /usr/bin/chromium: it
# downloads no browser) from the committed lockfile.
if [ ! -d "$here/t/browser/node_modules/playwright-core" ]; then
    echo "install-deps: npm ci in t/browser" >&2
    (cd "$here/t/browser" && npm ci --silent --no-audit --no-fund)
fi
