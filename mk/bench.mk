# Benchmarks: Floodgate against no filter, admission_control and Lua, side by side in one run.
# `make bench` writes BENCHMARKS.md (about 40 minutes: the host-call costs, sections 1-6, the
# reconnect storm); `make bench-quick` is a smoke run that
# reports and never fails on speed. Both raise the open-file limit for the long-poll waiters.
TEST_TARGETS += test-bench
.PHONY: bench bench-quick bench-storm bench-host-calls test-bench wasm-floor
BENCH_ENV = FLOODGATE_CONTROL_BIN=$(CURDIR)/target/release/floodgate-control

# The wasm floor (bench/wasm-floor): the cheapest proxy-wasm filter with the filter's SDK, built
# like floodgate.wasm; the bench runs it beside Floodgate (`wasm_floor`) to tell the platform's
# part of the cost from the breaker's.
wasm-floor:
	scripts/build-wasm.sh floodgate-wasm-floor

bench: wasm wasm-floor bench-filter bench-host-calls
	scripts/deps.sh envoy redis
	cargo build -q --release -p floodgate-control -p floodgate-bench
	ulimit -n $$(ulimit -Hn); $(BENCH_ENV) target/release/floodgate-bench

bench-quick: wasm wasm-floor
	scripts/deps.sh envoy redis
	cargo build -q --release -p floodgate-control -p floodgate-bench
	ulimit -n $$(ulimit -Hn); $(BENCH_ENV) target/release/floodgate-bench --quick

# The reconnect storm alone (bench/src/storm.rs): replaces its section of BENCHMARKS.md and
# BENCHMARKS-storm.svg. `make bench` and `make bench-quick` run it too, after the rest.
bench-storm: wasm wasm-floor
	scripts/deps.sh envoy
	cargo build -q --release -p floodgate-bench
	ulimit -n $$(ulimit -Hn); target/release/floodgate-bench --storm-only

# What one host call of each kind costs in Envoy (bench/src/host_calls.rs), written to
# bench/results/host-calls.md (about 4 minutes).
bench-host-calls: wasm wasm-floor
	scripts/deps.sh envoy
	cargo build -q --release -p floodgate-bench
	ulimit -n $$(ulimit -Hn); target/release/floodgate-bench --host-calls

# The generator's own tests (open-loop schedule, latency from the scheduled time) and the bench
# configurations validating in Envoy; then `make bench-host-calls` in a short form (one round of
# half a second, written under target/), so the command stays working.
test-bench: wasm wasm-floor
	scripts/deps.sh envoy
	cargo test -p floodgate-bench
	ulimit -n $$(ulimit -Hn); cargo run -q -p floodgate-bench -- --host-calls --quick
