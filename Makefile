# firezone-gw: one command installs and runs the tests (make test), one runs the gateway (make run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make deb`: Debian's python3 and venv for the package's environment, strip, lintian.
DEB_APT_PACKAGES := python3 python3-venv binutils lintian
# `make systemd-check` (also in `make test`): a Debian 12 root file system and systemd-nspawn.
SYSTEMD_CHECK_APT_PACKAGES := debootstrap systemd-container
# System packages the tests and the gateway need on a fresh Debian machine.
# zbar-tools: an independent QR decoder for client-config --qr's test; keepalived: the HA
# pair's namespace test (tests/test_ha_e2e.py).
APT_PACKAGES := iproute2 wireguard-go wireguard-tools iperf3 iputils-ping procps kmod systemd \
	zbar-tools keepalived $(DEB_APT_PACKAGES) $(SYSTEMD_CHECK_APT_PACKAGES)
PACKAGES := gateway shm_ring tunio testbed ippacket bench
PYTEST_ARGS ?=
# The native per-packet path (a Rust crate the package build compiles when cargo exists).
NATIVE := gateway/native
CARGO ?= cargo
NATIVE_SOURCES := $(NATIVE)/Cargo.toml $(wildcard $(NATIVE)/src/*.rs)
# Run a second time with FIREZONE_GW_NO_EXTENSIONS=1: the data-plane tests on the pure-Python
# fallback (the unit and differential tests are parametrised over both backends anyway; this
# runs the Device, the loop and a few end-to-end gateways on the fallback alone).
FALLBACK_TESTS ?= tests/wireguard tests/test_crypto_loop.py tests/test_transport.py \
	tests/test_firewall.py tests/test_gateway_e2e.py::test_ping_handshakes_spoofing_and_unknown_key \
	tests/test_gateway_e2e.py::test_numbered_udp_stream_keeps_order_both_ways

.PHONY: all deps venv lint lint-native test test-fallback run demo bench bench-ring fuzz netns-suite \
	deb systemd-check clean

all: test

# Install missing system packages (needs root, as CI runs).
deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(BIN)/.installed: pyproject.toml $(NATIVE_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

lint: venv lint-native
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict $(PACKAGES)

# The crate's gates; clippy also checks the PyO3 bindings (feature "python", against the venv's
# Python). cargo test runs the core without them (no libpython to link).
lint-native: venv
	cd $(NATIVE) && $(CARGO) fmt --check && $(CARGO) fmt --check --manifest-path fuzz/Cargo.toml
	cd $(NATIVE) && PYO3_PYTHON=$(CURDIR)/$(BIN)/python $(CARGO) clippy --all-targets --features python -- -D warnings
	cd $(NATIVE) && $(CARGO) clippy --all-targets -- -D warnings
	cd $(NATIVE) && $(CARGO) test --quiet

# pytest exit codes: 0 passed, 1 failures, 2 interrupted, 3 internal error, 4 usage error,
# 5 no tests collected. Only 0 is a pass: a run that collects nothing proves nothing.
test: deps venv lint
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; fi; \
	[ $$rc -eq 0 ] || exit $$rc
	$(MAKE) --no-print-directory test-fallback

# The data-plane tests on the pure-Python path (what runs without a Rust toolchain).
test-fallback: venv
	FIREZONE_GW_NO_EXTENSIONS=1 $(BIN)/pytest -q $(FALLBACK_TESTS)

# Benchmarks (root): the network benchmark (firezone-gw vs wireguard-go as the gateway) and
# every other bench/bench_*.py, each in its own process. E.g. BENCH_ARGS="--duration 5".
# WG_GO=/path/to/wireguard-go: the clients and the reference gateway run that build instead of
# Debian's (e.g. ../shared/tools/wireguard-go-0.0.20250522/wireguard-go).
BENCH_ARGS ?=
WG_GO ?=
bench: deps venv
	$(BIN)/python -m bench $(if $(WG_GO),--wireguard-go "$(WG_GO)") $(BENCH_ARGS)

# shm_ring vs multiprocessing.Queue vs SOCK_SEQPACKET (a benchmark, not a test).
bench-ring: venv
	$(BIN)/python -m bench.bench_ring

# Coverage-guided fuzzing of every native entry point (cargo fuzz, nightly toolchain) and of
# the transport through its Python API, native against the fallback (atheris), FUZZ_RUNS
# inputs each. Not part of make test. E.g. make fuzz FUZZ_RUNS=100000.
FUZZ_RUNS ?= 1000000
FUZZ_TARGETS := inbound outbound ring table udp_send udp_recv
FUZZ_TOOLCHAIN ?= +nightly
fuzz: venv
	$(BIN)/pip install -q 'atheris>=2.3'
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd $(NATIVE) && for t in $(FUZZ_TARGETS); do \
		$(CARGO) $(FUZZ_TOOLCHAIN) fuzz run $$t -- -runs=$(FUZZ_RUNS) || exit 1; \
	done
	$(BIN)/python tests/atheris_transport.py -runs=$(FUZZ_RUNS)

# Run the gateway in the foreground with the shipped config (root: it creates a TUN device).
# On first start it creates config/private.key (mode 0600) and logs the public key.
RUN_ARGS ?=
run: deps venv
	$(BIN)/firezone-gw --config config/gateway.toml $(RUN_ARGS)

# Three namespaces (client with wireguard-go, gateway, resource): a ping and an iperf3 run.
demo: deps venv
	$(BIN)/python -m bench.demo

# wireguard-go's own test suite, tests/netns.sh, with firezone-gw as the program under test
# (bench/netns_launcher.py plays `wireguard-go IFNAME`). Needs a wireguard-go source checkout;
# nothing is fetched: make netns-suite WG_GO_SRC=/path/to/wireguard-go. It runs for many
# minutes (16 iperf3 runs of 1 GB through two gateways). SUITE_PROGRAM=/usr/bin/wireguard-go
# runs the same suite against wireguard-go itself, for comparison. Gateway logs are kept
# (their folder is printed) when the suite fails.
SUITE_APT_PACKAGES := iproute2 wireguard-go wireguard-tools iperf3 iputils-ping ncat iptables
SUITE_PROGRAM ?= $(CURDIR)/bench/netns_launcher.py
netns-suite: venv
	@if [ -z "$(WG_GO_SRC)" ] || [ ! -f "$(WG_GO_SRC)/tests/netns.sh" ]; then \
		echo "usage: make netns-suite WG_GO_SRC=/path/to/wireguard-go (a checkout with tests/netns.sh)" >&2; \
		exit 2; \
	fi
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(SUITE_APT_PACKAGES)"
	@logs=$$(mktemp -d /tmp/firezone-gw-suite.XXXXXX); \
	FIREZONE_GW="$(CURDIR)/$(BIN)/firezone-gw" FIREZONE_GW_SUITE_DIR="$$logs" \
	WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 \
		bash "$(WG_GO_SRC)/tests/netns.sh" "$(SUITE_PROGRAM)"; rc=$$?; \
	if [ $$rc -eq 0 ]; then rm -rf "$$logs"; else echo "netns.sh failed ($$rc); gateway logs: $$logs" >&2; fi; \
	exit $$rc

# dist/firezone-gw_<version>_amd64.deb (packaging/deb/build.sh): `pip install .` into a venv
# of Debian's python3 under /opt/firezone-gw, the unit, sysusers.d and tmpfiles.d entries;
# lintian must find no error. Install: apt install ./dist/firezone-gw_*.deb
deb:
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(DEB_APT_PACKAGES)"
	@deb=$$(bash packaging/deb/build.sh) && echo "built $$deb" && \
		lintian --fail-on error --suppress-tags no-manual-page "$$deb"

# Debian 12 with systemd as PID 1 in systemd-nspawn: the package installs and the unit works
# (tests/test_systemd_check.py), sessions survive kill -9 of the main PID and SIGUSR2 under
# systemd (tests/test_systemd_handover.py; about 3 minutes, plus ~2 the first time for debootstrap,
# whose tree is cached in /var/cache/firezone-gw-tests, outside the checkout).
systemd-check: venv
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(DEB_APT_PACKAGES) $(SYSTEMD_CHECK_APT_PACKAGES)"
	$(BIN)/pytest -q tests/test_systemd_check.py tests/test_systemd_handover.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info $(NATIVE)/target \
		gateway/_native*.so
