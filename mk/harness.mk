# The compiled module in the wasmtime harness: deterministic tests, and exact per-request costs.
TEST_TARGETS += test-harness
.PHONY: test-harness bench-filter
test-harness: wasm
	cargo test -p floodgate-harness

bench-filter: wasm
	cargo run -q --release -p floodgate-harness --bin bench-filter
