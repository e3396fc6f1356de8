# xlpy: `make run` (the main job) and `make test` (the whole suite) work on a
# fresh Debian machine; everything else hangs off those.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
XLPY   := $(VENV)/bin/xlpy
XEN_CACHE := .cache/xen-4.17
export XLPY_XEN_CACHE := $(CURDIR)/$(XEN_CACHE)

.PHONY: run test venv xen-cache lint typecheck unit fuzz bench cdef-check integration integration-deps libxc-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Debian bookworm's Xen 4.17 tools and libraries, unpacked without root.
# A failure here is not fatal for `make test`: the tests that need them skip
# loudly, or fail when XLPY_REQUIRE_XEN_TOOLS=1.
xen-cache:
	-tools/fetch-xen.sh $(XEN_CACHE)

run: venv
	$(PY) -m xlpy.demo

unit: venv xen-cache
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check xlpy tests bench integration
	$(VENV)/bin/ruff format --check xlpy tests bench integration

typecheck: venv
	$(VENV)/bin/mypy

test: lint typecheck unit

# Every target under tests/fuzz/ for FUZZ_SECONDS each (default 60), one after another;
# FUZZ_TARGETS picks some, FUZZ_ARGS adds libFuzzer flags (see tests/fuzz/run-all.sh).
fuzz: venv
	tests/fuzz/run-all.sh $(PY) $(FUZZ_ARGS)

# xlpy(1), generated from the parser (the same page as `xlpy help --man`), written under
# a temporary name so that a failed run leaves no half page.
.PHONY: man
man: venv
	mkdir -p build/man
	$(PY) -m xlpy help --man > build/man/xlpy.1.tmp
	mv build/man/xlpy.1.tmp build/man/xlpy.1

bench: venv
	$(PY) bench/run.py $(BENCH_ARGS)

# tox -e cdef-check's check, in the project venv: the 4.14-4.21 declarations compiled in
# cffi API mode against Debian's libxen-dev 4.17 headers from the xen cache.
cdef-check: venv xen-cache
	$(PY) -m xlpy.binding.cdefcheck --generation 4.14-4.21 --xen-root $(XEN_CACHE)

# The suite under integration/, run inside a real Xen 4.17 dom0 booted in QEMU
# (root; see integration/README.md for prerequisites, exit codes and timings).
integration:
	integration/vm/run-vm.sh

# What `make integration` needs on a fresh Debian host (root), installed only when
# missing; the harness itself names anything still missing (exit 10).
VM_DEPS := qemu-system-x86 debootstrap e2fsprogs git
integration-deps:
	@missing=$$(for p in $(VM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# What `xlpy libxc build` (the fakexen tier of the tests) compiles with, on a fresh Debian
# host (root), installed only when missing.
LIBXC_DEPS := gcc libc6-dev zlib1g-dev
libxc-deps:
	@missing=$$(for p in $(LIBXC_DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

clean:
	rm -rf $(VENV) .cache build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
