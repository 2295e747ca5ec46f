# floodgate-control's status page (/ui) in a real headless Chromium, and what a browser's
# WebSocket sees of Floodgate's refusals through a real Envoy (tests/ui/websocket.rs).
TEST_TARGETS += test-ui
.PHONY: test-ui
test-ui: wasm
	scripts/deps.sh chromium envoy
	cargo build -p floodgate-control
	cargo test -p floodgate-tests --test ui
