# async-dl: the nginx module, the worker, and the tools the tests use.
#
#   make                  module (.so against Debian's nginx) + worker
#   make NGINX_SRC=DIR    the same module against an upstream nginx tree
#   make deb              the Debian packages, in build/deb/ (debian/)
#   make test-nginx-releases   the API tests against other nginx releases
#                         (scripts/nginx-releases.sh $(NGINX_RELEASES))
#   make run              the whole stack on 127.0.0.1:$(PORT)
#   make test             the suite (prove t/)
#   make test-sanitize    the suite with -fsanitize=address,undefined
#   make bench            the benchmarks in bench/
#   make chaos            the fault-injection run and the expiry soak
#                         (bench/chaos --both; CHAOS_ARGS= passes options)

SANITIZE ?=
PORT     ?= 8080
NGINX_SRC ?=

ifeq ($(SANITIZE),1)
BUILD     ?= build-san
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer \
             -fno-sanitize-recover=undefined
else
BUILD     ?= build
SAN_FLAGS :=
endif

B := $(CURDIR)/$(BUILD)

# --- the worker and the shared code ------------------------------------

PKGS_WORKER := libcurl libpq jansson libcrypto libarchive
CC       ?= cc
CFLAGS   ?= -O2 -g
WFLAGS   := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow \
            -Wpointer-arith -Wformat=2 -Icommon -Iworker -I$(BUILD)
WORKER_SRCS := $(wildcard worker/*.c) common/adl_sigv4.c \
               $(BUILD)/adl_migrations.c
WORKER_HDRS := $(wildcard worker/*.h) common/adl_sigv4.h

# --- the module --------------------------------------------------------

MODULE_SRCS := config $(wildcard src/*.c) \
               $(wildcard src/*.h) common/adl_sigv4.c common/adl_sigv4.h

ifeq ($(NGINX_SRC),)
# Debian's nginx: its nginx-dev tree, configured out of tree with Debian's
# own flags (conf_flags, dpkg-buildflags), as Debian's module packages do.
# The tree is mirrored as symlinks so the build never writes under /usr.
NGX_TREE   := $(B)/nginx-src
NGX_OBJS   := $(B)/nginx
NGX_CONFIGURE = . ./conf_flags && ./configure \
    --with-cc-opt="$$(dpkg-buildflags --get CFLAGS) -fPIC \
                   $$(dpkg-buildflags --get CPPFLAGS) $(SAN_FLAGS)" \
    --with-ld-opt="$$(dpkg-buildflags --get LDFLAGS) -fPIC $(SAN_FLAGS)" \
    "$${NGX_CONF_FLAGS[@]}" \
    --add-dynamic-module=$(CURDIR) --builddir=$(NGX_OBJS)
NGX_PREPARE = rm -rf $(NGX_TREE) && mkdir -p $(B) && \
    cp -rs /usr/share/nginx/src $(NGX_TREE)
else
NGX_TREE   := $(abspath $(NGINX_SRC))
NGX_OBJS   := $(B)/nginx-upstream
# a release tarball has ./configure, a git checkout auto/configure
NGX_CONFIGURE = $$(test -x configure && echo ./configure || echo auto/configure) \
    --with-compat \
    --with-cc-opt="-fPIC $(SAN_FLAGS)" --with-ld-opt="$(SAN_FLAGS)" \
    --add-dynamic-module=$(CURDIR) --builddir=$(NGX_OBJS)
NGX_PREPARE = mkdir -p $(B)
endif

MODULE_SO := $(NGX_OBJS)/ngx_http_async_dl_module.so
WORKER    := $(BUILD)/async-dl-worker
TOOLS     := $(BUILD)/sigv4_tool

.PHONY: all module worker tools deps run test test-sanitize bench chaos clean deb \
        test-nginx-releases

all: module worker tools

module: $(MODULE_SO)
worker: $(WORKER)
tools: $(TOOLS)

$(NGX_OBJS)/Makefile: config
	$(NGX_PREPARE)
	cd $(NGX_TREE) && bash -c '$(NGX_CONFIGURE)' > $(B)/configure.log 2>&1 \
	    || { tail -30 $(B)/configure.log; exit 1; }

$(MODULE_SO): $(NGX_OBJS)/Makefile $(MODULE_SRCS)
	$(MAKE) -s -f $(NGX_OBJS)/Makefile -C $(NGX_TREE) modules

$(BUILD)/adl_migrations.c: $(wildcard sql/*.sql) scripts/embed-sql.sh
	@mkdir -p $(BUILD)
	scripts/embed-sql.sh sql/*.sql > $@.tmp && mv $@.tmp $@

$(WORKER): $(WORKER_SRCS) $(WORKER_HDRS)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(SAN_FLAGS) $(WFLAGS) \
	    $$(pkg-config --cflags $(PKGS_WORKER)) -o $@ $(WORKER_SRCS) \
	    $(LDFLAGS) $(SAN_FLAGS) $$(pkg-config --libs $(PKGS_WORKER)) -lm

$(BUILD)/sigv4_tool: t/tools/sigv4_tool.c common/adl_sigv4.c common/adl_sigv4.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(SAN_FLAGS) $(WFLAGS) -o $@ t/tools/sigv4_tool.c \
	    common/adl_sigv4.c $$(pkg-config --libs libcrypto)

deps:
	scripts/install-deps.sh

# --- the Debian packages -------------------------------------------------
#
# dpkg-buildpackage writes its results next to the tree it builds, so it
# builds a copy of this one in build/deb/src: the .deb files land in
# build/deb/.  Remade only when a file that goes into them changed.

DEB_OUT  := $(CURDIR)/build/deb
DEB_DEPS := $(MODULE_SRCS) $(filter-out $(BUILD)/%,$(WORKER_SRCS)) \
            $(WORKER_HDRS) $(wildcard sql/*.sql) scripts/embed-sql.sh \
            Makefile README.md nginx.conf.example docs/openapi.yaml \
            $(shell find debian -type f) \
            $(wildcard /usr/share/nginx/src/debian/libnginx-mod.abisubstvars)

deb: deps
	$(MAKE) $(DEB_OUT)/built

$(DEB_OUT)/built: $(DEB_DEPS)
	rm -rf $(DEB_OUT) && mkdir -p $(DEB_OUT)/src
	tar -c --exclude-vcs --exclude=./build --exclude='./build-*' \
	    --exclude=./tmp --exclude=node_modules . | tar -x -C $(DEB_OUT)/src
	cd $(DEB_OUT)/src && dpkg-buildpackage -b -us -uc -J \
	    > $(DEB_OUT)/build.log 2>&1 || { tail -40 $(DEB_OUT)/build.log; exit 1; }
	rm -rf $(DEB_OUT)/src
	ls $(DEB_OUT)/*.deb > $@

run: deps
	$(MAKE) all
	PORT=$(PORT) BUILD=$(BUILD) scripts/run.sh

# The API, stream and lifecycle tests run a second time with the status
# cache on (except with the sanitizers, which run t/125 and t/126).
test: deps
	$(MAKE) all
	ADL_BUILD=$(B) ADL_MODULE=$(MODULE_SO) prove -r -j2 --timer t/
	$(if $(SANITIZE),,ADL_STATUS_CACHE=16m ADL_BUILD=$(B) ADL_MODULE=$(MODULE_SO) prove -j2 --timer t/1*.t t/3*.t t/4*.t)

test-sanitize:
	$(MAKE) SANITIZE=1 test

# trixie: Debian 13's nginx (its upstream tarball, through apt-get source)
NGINX_RELEASES ?= trixie
test-nginx-releases: deps
	scripts/nginx-releases.sh $(NGINX_RELEASES)

bench: deps
	$(MAKE) all
	ADL_BUILD=$(B) ADL_MODULE=$(MODULE_SO) bench/run-all

chaos: deps
	$(MAKE) all
	ADL_BUILD=$(B) ADL_MODULE=$(MODULE_SO) bench/chaos --both $(CHAOS_ARGS)

clean:
	rm -rf build build-san
