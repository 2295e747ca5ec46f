# Floodgate. `make demo` shows it working; `make test` runs every test. Both install what they need.
# Each area keeps its own targets in mk/<area>.mk and adds its test target to TEST_TARGETS there.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export CARGO_TERM_COLOR ?= never
include scripts/env.mk

WASM := target/wasm32-wasip1/release/floodgate.wasm
TEST_TARGETS :=

.PHONY: help deps build wasm test lint fmt demo bench bench-quick clean
help:
	@echo "make demo   - run the whole loop locally and print a timeline"
	@echo "make test   - run every test (installs what it needs)"
	@echo "make test-envoy-all - the real-Envoy suite on every supported Envoy (1.36.4, 1.37.0, 1.39.3, 1.40)"
	@echo "make build  - build floodgate.wasm and floodgate-control"
	@echo "make lint   - rustfmt check and clippy (no unwrap/expect/panic outside tests)"
	@echo "make bench  - benchmarks, written to BENCHMARKS.md (bench-quick: a short smoke run)"
	@echo "make bench-filter - exact wasm instructions and host calls per request (harness)"
	@echo "make oci    - floodgate.wasm as an OCI image layout for Istio (prints the digest)"

deps:
	scripts/deps.sh

# Always delegate: cargo decides what is stale.
wasm:
	scripts/build-wasm.sh

build: wasm
	cargo build --release -p floodgate-control

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings

include $(sort $(wildcard mk/*.mk))

test: deps lint $(TEST_TARGETS)
	@echo "make test: all passed ($(TEST_TARGETS))"

clean:
	cargo clean
