# The whole loop with real processes: Envoy, floodgate-control, Redis, Alertmanager.
TEST_TARGETS += test-loop
.PHONY: test-loop
test-loop: wasm
	scripts/deps.sh envoy redis prometheus
	cargo build -p floodgate-control
	cargo test -p floodgate-tests --test loop
