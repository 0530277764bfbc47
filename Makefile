# vswitch: build, run, test, bench.
#
#   make run    virtualenv + build + vswitchd on config/vswitch.yaml
#   make test   every Debian and Python package the suite needs, build, run the suite
#   make bench  loopback, uplink and VM-to-VM benchmarks against DPDK, one at a time
#
# Targets install what they need; on a fresh Debian 12 only `make` itself
# must be installed first (apt-get install -y make).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= config/vswitch.yaml
PYTEST_ARGS ?=

# Debian packages: to build (compiler, headers, venv) and to test against real peers.
BUILD_DEBS := gcc python3-dev python3-venv
TEST_DEBS  := qemu-system-x86 dpdk-dev busybox-static iperf3 ethtool iproute2 procps iputils-ping
TEST_PIPS  := pytest hypothesis

.PHONY: all run test bench build deps-build deps-test venv clean

all: build

# Install Debian packages only when something is missing, so repeated runs
# need neither the network nor root.
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
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

$(PY): | deps-build
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

venv: $(PY)
	$(PY) -m pip install -q "Cython>=3.0" setuptools wheel
	$(PY) -m pip install -q -e .

build: venv
	$(PY) setup.py -q build_ext --inplace

run: build
	$(VENV)/bin/vswitchd --config $(CONFIG)

test: deps-test build
	$(PY) -m pip install -q $(TEST_PIPS)
	$(PY) -m pytest $(PYTEST_ARGS) tests

bench: deps-test build
	$(PY) -m pip install -q matplotlib
	$(PY) bench/loopback.py
	$(PY) bench/plot.py
	$(PY) bench/uplink.py
	$(PY) bench/iperf.py

clean:
	rm -rf build *.egg-info vswitch/*.so cython_ext/*.c cython_ext/*.html
