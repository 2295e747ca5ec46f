# The compiled module in the wasmtime harness: deterministic tests, and exact per-request costs
# (bench-filter fails when a hot path exceeds its instruction or host-call target, issue 15).
TEST_TARGETS += test-harness
.PHONY: test-harness bench-filter
test-harness: wasm bench-filter
	cargo test -p floodgate-harness

bench-filter: wasm
	cargo run -q --release -p floodgate-harness --bin bench-filter
