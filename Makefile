# vswitch: build, run, test, bench.
#
#   make run    virtualenv + build + vswitchd on config/vswitch.yaml
#   make build  the datapath extension, compiled only when its sources changed
#   make test   every Debian and Python package the suite needs, build, run the suite
#   make test-quick  the same without QEMU guests, testpmd, systemd and slow
#               tests (markers in pyproject.toml, tests/conftest.py): about 2 minutes
#   make demo   two QEMU guests and the host switched by a fresh vswitchd: ping,
#               iperf3, vswitchctl, metrics and a PNG of the rates (tools/demo.py)
#   make bench  the benchmarks of BENCH_SECTIONS, one at a time, in this order
#               (about 80 minutes for all, at most 90; docs/performance.md):
#                 loopback   tenant features off/on against the release before (+ plot)
#                 table      the performance table (as bench-table): vswitch, DPDK,
#                            OVS-DPDK NORMAL and port to port, both memory modes and
#                            socket roles, against the before build (+ plots)
#                 uplink, iperf (VM-to-VM), ratelimit, attacks (a hostile guest
#                 beside a healthy pair), latency (single-frame round trips),
#                 callgrind (as bench-callgrind); not by default: ovs (the
#                 table's huge-page part alone, BENCH_OVS_CONFIGS)
#               e.g. make bench BENCH_SECTIONS="table callgrind"
#   make bench-table  the performance table alone (about 47 minutes); then
#               make bench-table-docs  puts its tables into docs/performance.md
#   make deb    dist/vswitch_<version>_amd64.deb, checked by lintian (README,
#               "Running as a service")
#   make bench-callgrind  instructions per 64-byte frame of the datapath under
#               callgrind, this tree against CALLGRIND_BASELINE (about a minute);
#               a clean commit's figure goes into bench/results/callgrind-history.tsv
#               (and its plot)
#
# Targets install what they need; on a fresh Debian 12 only `make` itself
# must be installed first (apt-get install -y make).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= config/vswitch.yaml
# Passed to pytest: paths, -k, -m, -x... Without a path pytest runs tests/
# (testpaths in pyproject.toml), e.g.
#   make test PYTEST_ARGS=tests/unit/test_config.py
#   make test PYTEST_ARGS="-x -m hostile"
PYTEST_ARGS ?=

# Debian packages: to build (compiler, headers, venv) and to test against real peers.
BUILD_DEBS := gcc python3-dev python3-venv
TEST_DEBS  := qemu-system-x86 dpdk-dev busybox-static iperf3 ethtool iproute2 procps iputils-ping tshark debootstrap systemd-container qemu-user groff-base
TEST_PIPS  := pytest hypothesis jsonschema atheris==3.0.0 matplotlib
# Debian packages the benchmarks need beyond the suite's.
BENCH_DEBS := valgrind openvswitch-switch-dpdk

.PHONY: all run test test-quick bench bench-callgrind build deps-build deps-test deps-bench venv clean

all: build

# Install Debian packages only when something is missing (not installed, or
# only its config files left), so repeated runs need neither the network nor
# root. Light: no Recommends (the suite needs none; README "What make test
# installs"), and no service started by a maintainer script (libvirtd,
# virtlogd, ...): a /usr/sbin/policy-rc.d that answers 101 ("action
# forbidden") for the install, removed after it only if we created it.
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q ' installed$$' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  made=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\n# vswitch make: no service starts while it installs packages\nexit 101\n' \
	      > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d && made=1; fi; \
	  trap '[ -z "$$made" ] || rm -f /usr/sbin/policy-rc.d' EXIT INT TERM; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

deps-build:
	@if ! command -v gcc >/dev/null || ! $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
	   ! $(PYTHON) -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
	  $(MAKE) --no-print-directory apt-build; fi

.PHONY: apt-build
apt-build:
	$(call apt_install,$(BUILD_DEBS))

deps-test: deps-build
	$(call apt_install,$(TEST_DEBS))
	@# the guest kernel is fetched with apt-get download: it needs package lists
	@apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 || apt-get update -q

# libvirt for tests/test_libvirt.py, which starts virtlogd and libvirtd
# itself (no systemd needed) and stops them after. Installed without starting
# them (apt_install's policy-rc.d), and libvirt's default network is not
# autostarted when this install brought it: it would add a bridge and
# firewall rules to the host, and its dnsmasq is only a Recommends.
LIBVIRT_DEBS := libvirt-daemon-system libvirt-clients
LIBVIRT_NET_AUTOSTART := /etc/libvirt/qemu/networks/autostart/default.xml

.PHONY: deps-libvirt apt-libvirt
deps-test: deps-libvirt
deps-libvirt:
	@fresh=""; dpkg-query -W -f='$${Status}\n' libvirt-daemon-config-network 2>/dev/null | \
	  grep -q ' installed$$' || fresh=1; \
	$(MAKE) --no-print-directory apt-libvirt || exit 1; \
	if [ -n "$$fresh" ] && [ -L $(LIBVIRT_NET_AUTOSTART) ]; then \
	  rm -f $(LIBVIRT_NET_AUTOSTART); echo "libvirt: its default network stays inactive (not autostarted)"; fi

apt-libvirt:
	$(call apt_install,$(LIBVIRT_DEBS))

$(PY): | deps-build
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The package is installed editable without its extension (VSWITCH_SKIP_EXT,
# see setup.py), again only when setup.py or pyproject.toml changed: the
# extension is built in place by the rule below, once.
INSTALLED := $(VENV)/.vswitch-installed
$(INSTALLED): setup.py pyproject.toml | $(PY)
	$(PY) -m pip install -q "Cython>=3.0" setuptools wheel
	VSWITCH_SKIP_EXT=1 $(PY) -m pip install -q --no-build-isolation -e .
	@touch $@

venv: $(INSTALLED)

# The datapath extension: rebuilt when a Cython or C source of it, or
# setup.py, is newer than the module (--force: setup.py's flags may be what
# changed; cythonize still regenerates the C only from changed sources).
# The module's name ends in the interpreter's suffix: the venv's, or before it
# exists the one it will be made from.
EXT_SUFFIX := $(shell if [ -x $(PY) ]; then p=$(PY); else p=$(PYTHON); fi; \
	$$p -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
DATAPATH   := vswitch/_datapath$(EXT_SUFFIX)
EXT_SOURCES := $(wildcard cython_ext/*.pyx cython_ext/*.pxi cython_ext/*.pxd cython_ext/*.h) setup.py

# The CPU the datapath is compiled for (setup.py): x86-64-v2 unless
# VSWITCH_MARCH says otherwise (`make build VSWITCH_MARCH=native`). The stamp
# holds the value the module was built with and is rewritten only when it
# changes, so a change rebuilds the module and an unchanged value does not.
VSWITCH_MARCH ?=
export VSWITCH_MARCH
MARCH_STAMP := build/.vswitch-march
.PHONY: march-stamp-check
march-stamp-check:
$(MARCH_STAMP): march-stamp-check
	@mkdir -p $(@D); v='$(VSWITCH_MARCH)'; \
	if [ ! -f $@ ] || [ "$$(cat $@)" != "$$v" ]; then printf '%s\n' "$$v" > $@; fi

$(DATAPATH): $(EXT_SOURCES) $(MARCH_STAMP) | $(INSTALLED)
	$(PY) setup.py -q build_ext --inplace --force
	@touch $@

build: $(DATAPATH)

run: build
	$(VENV)/bin/vswitchd --config $(CONFIG)

# Installed again when the Makefile (TEST_PIPS) changes.
TEST_PIPS_STAMP := $(VENV)/.test-pips
$(TEST_PIPS_STAMP): Makefile | $(PY)
	$(PY) -m pip install -q $(TEST_PIPS)
	@touch $@

test: deps-test build $(TEST_PIPS_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-quick: deps-test build $(TEST_PIPS_STAMP)
	$(PY) -m pytest -m "not qemu and not dpdk and not systemd and not slow" $(PYTEST_ARGS)

# --- make demo ---------------------------------------------------------------
# The switch at work for a newcomer (tools/demo.py): two QEMU guests and a TAP
# uplink on a fresh vswitchd, ping and iperf3 between the guests and to the
# host, vswitchctl's view, the metrics, and DEMO_OUT/vswitch-demo.png (per-port
# frame and byte rates). About 30 s after its installs; the first run also
# fetches the guest kernel. Stops everything it started, also on Ctrl-C.
DEMO_DEBS := qemu-system-x86 busybox-static iperf3 ethtool iproute2
DEMO_OUT  ?= demo-output

.PHONY: demo
demo: build
	$(call apt_install,$(DEMO_DEBS))
	@apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 || apt-get update -q
	@$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q matplotlib
	$(PY) -m tools.demo --out $(DEMO_OUT)

# The loopback benchmark interleaves DPDK, the release before the tenant
# features (VLANs, port security, storm control, policing, mirrors, the FDB
# caps; BENCH_BASELINE, built once in a worktree under /tmp) and this tree
# with those features off and in BENCH_VARIANTS (see bench/loopback.py).
BENCH_BASELINE ?= cefd30a
BENCH_VARIANTS ?= off,policing,all

# Instructions per frame (bench/callgrind.py): deterministic, unlike the
# rates above on this machine. CALLGRIND_BASELINE is built once under /tmp
# (main before the hostile-guest hardening, docs/security.md, whose
# datapath may cost at most 3 % more than it).
CALLGRIND_BASELINE ?= 705ace4
CALLGRIND_ARGS ?=

# The OVS section: the configs it runs (5 pairs of DPDK, OVS NORMAL, OVS
# port to port and vswitch each; about 15 minutes for two configs).
BENCH_OVS_CONFIGS ?= 64x1,1518x1
BENCH_SECTIONS ?= loopback table uplink iperf ratelimit attacks latency callgrind
BENCH_SECTIONS_ALL := loopback ovs table uplink iperf ratelimit attacks latency callgrind

# The loopback section: the tenant features' cost against BENCH_BASELINE
# (vswitch builds only: DPDK is in the table section), 40 runs, about 8 minutes.
BENCH_LOOPBACK_ARGS ?= --only vswitch --configs 64x1,1518x1 --seconds 6 --warmup 2

# The table section (bench/matrix.py, bench/table.py; docs/performance.md,
# "The table"): 5 interleaved pairs of DPDK, OVS NORMAL, OVS port to port,
# the before build and this tree for BENCH_TABLE_CONFIGS on huge pages (switch
# as client) and 4 KiB pages (server), and DPDK, before and this tree at 64x1
# in the two other memory x role combinations; about 47 minutes (printed
# before it starts, with the actual time after). The before build: an
# already built checkout (BENCH_TABLE_BASELINE_TREE, e.g. a worktree of main
# after make build), else BENCH_TABLE_BASELINE built once under /tmp (main
# before the 64-byte hot path work); BENCH_TABLE_BASELINE= runs none.
BENCH_TABLE_BASELINE ?= 2c066f7
BENCH_TABLE_BASELINE_TREE ?=
BENCH_TABLE_CONFIGS ?= 64x1,1518x1,64x2,1518x2
BENCH_TABLE_ARGS ?=
# the result directory bench-table-docs reads (default: the newest)
BENCH_TABLE_RESULT ?=

# Without recommends, and with no service started while installing: OVS's
# package would start a system ovs-vswitchd (a policy-rc.d exiting 101 says
# no to invoke-rc.d and deb-systemd-invoke); ours is removed afterwards, one
# that was there already is left alone. The benchmark runs OVS itself.
deps-bench: deps-build
	@missing=""; for p in $(BENCH_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
	    trap 'rm -f /usr/sbin/policy-rc.d' EXIT INT TERM; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@if pgrep -x ovs-vswitchd >/dev/null; then \
	  echo "note: an ovs-vswitchd is running (not started by the benchmark; it may take CPU from it)"; fi

.PHONY: bench-loopback bench-ovs bench-uplink bench-iperf bench-ratelimit bench-attacks bench-latency bench-pips
.PHONY: bench-table bench-table-docs

bench-pips: | $(PY)
	@# bench.attacks imports the attacks from the tests (they import pytest, hypothesis)
	$(PY) -m pip install -q matplotlib pytest hypothesis

bench: deps-test deps-bench build bench-pips
	@for s in $(BENCH_SECTIONS); do case " $(BENCH_SECTIONS_ALL) " in *" $$s "*) ;; \
	  *) echo "BENCH_SECTIONS: unknown section $$s (from: $(BENCH_SECTIONS_ALL))"; exit 2;; esac; done
	@t0=$$(date +%s); for s in $(BENCH_SECTIONS); do \
	  echo "== bench section $$s ($$(date -u +%H:%M:%S) UTC)"; ts=$$(date +%s); \
	  $(MAKE) --no-print-directory bench-$$s || exit $$?; \
	  echo "== bench section $$s: $$(( ($$(date +%s) - ts + 30) / 60 )) min"; done; \
	echo "== bench: $(BENCH_SECTIONS) in $$(( ($$(date +%s) - t0) / 60 )) min"

bench-loopback: build bench-pips
	$(PY) -m bench.loopback --baseline $(BENCH_BASELINE) --variants $(BENCH_VARIANTS) $(BENCH_LOOPBACK_ARGS)
	$(PY) -m bench.plot

bench-table: deps-bench build bench-pips
	$(PY) -m bench.matrix --configs $(BENCH_TABLE_CONFIGS) \
	  $(if $(BENCH_TABLE_BASELINE_TREE),--baseline-tree $(BENCH_TABLE_BASELINE_TREE),$(if $(BENCH_TABLE_BASELINE),--baseline $(BENCH_TABLE_BASELINE))) \
	  $(BENCH_TABLE_ARGS)
	$(PY) -m bench.table $(BENCH_TABLE_RESULT)

bench-table-docs: | $(PY)
	$(PY) -m bench.table $(BENCH_TABLE_RESULT) --docs docs/performance.md

bench-ovs: deps-bench build bench-pips
	$(PY) -m bench.loopback --memory huge --socket-role client --ovs normal,p2p --configs $(BENCH_OVS_CONFIGS)
	$(PY) -m bench.plot

bench-uplink: build
	$(PY) -m bench.uplink --sizes 64,1514

bench-iperf: build
	$(PY) -m bench.iperf

bench-ratelimit: build
	$(PY) -m bench.ratelimit

bench-attacks: build bench-pips
	$(PY) -m bench.attacks

bench-latency: deps-test build
	$(PY) -m bench.latency

bench-callgrind: deps-bench build bench-pips
	$(PY) -m bench.callgrind --baseline $(CALLGRIND_BASELINE) $(CALLGRIND_ARGS)
	$(PY) -m bench.plot --history

clean:
	rm -rf build *.egg-info vswitch/*.so cython_ext/*.c cython_ext/*.html

# --- Debian package --------------------------------------------------------------
# make deb: dist/vswitch_<version>_amd64.deb from debian/ (`make install`
# staged with Debian's paths: a virtualenv in /usr/lib/vswitch, the unit
# installed by dh_installsystemd, /etc/vswitch/vswitch.yaml a conffile; see
# README "Running as a service"), then lintian on it (errors fail the build).
#   apt install ./dist/vswitch_*_amd64.deb
DEB_DEBS := debhelper dpkg-dev fakeroot lintian

.PHONY: deb
deb: deps-build
	$(call apt_install,$(DEB_DEBS))
	@mkdir -p dist
	debian/rules clean
	debian/rules build
	fakeroot debian/rules binary
	lintian --fail-on error --info dist/vswitch_$$(dpkg-parsechangelog -S Version)_amd64.deb

# --- install / uninstall ---------------------------------------------------------
# make install: a virtualenv of its own under /opt (Debian's system Python is
# externally managed, PEP 668) with vswitch built into it (not editable), the
# commands linked into $(PREFIX)/bin, the systemd unit, the default config
# (only if there is none), the Grafana dashboard and the config schema, and
# the README with docs/ beside it in $(DOCDIR) (the README links into docs/),
# and the manual pages (man/) in $(MANDIR).
# Re-running it rebuilds and reinstalls the package and leaves an edited
# /etc/vswitch/vswitch.yaml alone. `make uninstall` removes what it put, and
# the config only if it is still the default.
#   DESTDIR  staging root for packaging (the venv's paths are rewritten to
#            work at their final place)
#   PREFIX   /usr/local: bin/ links, share/vswitch, share/doc/vswitch, share/man
#   VENVDIR  /opt/vswitch   SYSCONFDIR /etc   UNITDIR /etc/systemd/system
#   INSTALL_PYTHON  the interpreter the venv is made from (/usr/bin/python3)
DESTDIR        ?=
PREFIX         ?= /usr/local
VENVDIR        ?= /opt/vswitch
SYSCONFDIR     ?= /etc
UNITDIR        ?= /etc/systemd/system
INSTALL_PYTHON ?= /usr/bin/python3
SHAREDIR       := $(PREFIX)/share/vswitch
DOCDIR         := $(PREFIX)/share/doc/vswitch
MANDIR         := $(PREFIX)/share/man
MAN_PAGES      := $(wildcard man/*.[1-8])
INSTALL_EXTRAS := $(wildcard config/grafana/vswitch-dashboard.json config/vswitch.schema.json)

.PHONY: install uninstall

install: deps-build
	@set -e; v='$(DESTDIR)$(VENVDIR)'; \
	if [ ! -x "$$v/bin/python" ]; then \
	  echo "creating $$v"; $(INSTALL_PYTHON) -m venv "$$v"; \
	  "$$v/bin/python" -m pip install -q --upgrade pip; fi; \
	"$$v/bin/python" -m pip install -q "Cython>=3.0" "setuptools>=68" wheel; \
	echo "building vswitch into $$v"; \
	"$$v/bin/python" -m pip install -q --no-build-isolation .; \
	if [ -n '$(DESTDIR)' ]; then \
	  grep -rlI -- "$$v" "$$v/bin" "$$v/pyvenv.cfg" 2>/dev/null | \
	    xargs -r sed -i 's|$(DESTDIR)$(VENVDIR)|$(VENVDIR)|g'; fi
	@install -d '$(DESTDIR)$(PREFIX)/bin'
	@ln -sfn '$(VENVDIR)/bin/vswitchd' '$(DESTDIR)$(PREFIX)/bin/vswitchd'
	@ln -sfn '$(VENVDIR)/bin/vswitchctl' '$(DESTDIR)$(PREFIX)/bin/vswitchctl'
	@install -d '$(DESTDIR)$(UNITDIR)'
	@sed -e 's|/usr/local/bin/|$(PREFIX)/bin/|g' \
	     -e 's|/usr/local/share/|$(PREFIX)/share/|g' \
	     -e 's|/etc/vswitch/|$(SYSCONFDIR)/vswitch/|g' \
	     systemd/vswitchd.service > '$(DESTDIR)$(UNITDIR)/vswitchd.service.tmp'
	@chmod 0644 '$(DESTDIR)$(UNITDIR)/vswitchd.service.tmp'
	@mv -f '$(DESTDIR)$(UNITDIR)/vswitchd.service.tmp' '$(DESTDIR)$(UNITDIR)/vswitchd.service'
	@install -D -m 0644 config/vswitch.yaml '$(DESTDIR)$(SHAREDIR)/vswitch.yaml.default'
	@for f in $(INSTALL_EXTRAS); do install -D -m 0644 "$$f" '$(DESTDIR)$(SHAREDIR)/'"$${f##*/}"; done
	@install -D -m 0644 README.md '$(DESTDIR)$(DOCDIR)/README.md'
	@for f in docs/*.md; do install -D -m 0644 "$$f" '$(DESTDIR)$(DOCDIR)/'"$$f"; done
	@for f in $(MAN_PAGES); do s="$${f##*.}"; install -D -m 0644 "$$f" '$(DESTDIR)$(MANDIR)/man'"$$s/$${f##*/}"; done
	@if [ -e '$(DESTDIR)$(SYSCONFDIR)/vswitch/vswitch.yaml' ]; then \
	  echo "keeping $(SYSCONFDIR)/vswitch/vswitch.yaml"; \
	else \
	  install -D -m 0644 config/vswitch.yaml '$(DESTDIR)$(SYSCONFDIR)/vswitch/vswitch.yaml'; \
	  echo "installed the default $(SYSCONFDIR)/vswitch/vswitch.yaml"; fi
	@if [ -z '$(DESTDIR)' ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed vswitch: $(VENVDIR), $(PREFIX)/bin/vswitchd, $(UNITDIR)/vswitchd.service"

uninstall:
	@c='$(DESTDIR)$(SYSCONFDIR)/vswitch/vswitch.yaml'; \
	if [ -e "$$c" ]; then \
	  if cmp -s "$$c" '$(DESTDIR)$(SHAREDIR)/vswitch.yaml.default'; then \
	    rm -f "$$c"; rmdir '$(DESTDIR)$(SYSCONFDIR)/vswitch' 2>/dev/null || true; \
	  else echo "keeping $$c (changed)"; fi; fi
	@rm -f '$(DESTDIR)$(UNITDIR)/vswitchd.service' \
	       '$(DESTDIR)$(PREFIX)/bin/vswitchd' '$(DESTDIR)$(PREFIX)/bin/vswitchctl'
	@for f in $(MAN_PAGES); do s="$${f##*.}"; rm -f '$(DESTDIR)$(MANDIR)/man'"$$s/$${f##*/}"; done
	@rm -rf '$(DESTDIR)$(SHAREDIR)' '$(DESTDIR)$(DOCDIR)' '$(DESTDIR)$(VENVDIR)'
	@if [ -z '$(DESTDIR)' ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "uninstalled vswitch"
