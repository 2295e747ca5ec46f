# make demo: the whole loop on this machine (Envoy, floodgate-control on Redis, Prometheus,
# Alertmanager, a WebSocket backend and client load), printed as a timeline.
# test-demo runs the same binary with shortened acts (--short) and checks its summary line.
TEST_TARGETS += test-demo
.PHONY: demo test-demo
demo: wasm
	scripts/deps.sh envoy redis prometheus
	cargo build -q -p floodgate-control
	cargo run -q -p floodgate-demo

# Built alone, as `cargo run -p floodgate-demo` (what the test runs) builds it.
test-demo: wasm
	scripts/deps.sh envoy redis prometheus
	cargo build -q -p floodgate-control
	cargo build -q -p floodgate-demo
	cargo test -p floodgate-tests --test demo
