# Floodgate in the real Envoy: every shipped config validates, and the end-to-end tests.
TEST_TARGETS += test-envoy
.PHONY: test-envoy
test-envoy: wasm
	scripts/deps.sh envoy
	cargo test -p floodgate-tests --test envoy
