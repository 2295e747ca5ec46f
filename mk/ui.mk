# floodgate-control's status page (/ui) in a real headless Chromium.
TEST_TARGETS += test-ui
.PHONY: test-ui
test-ui:
	scripts/deps.sh chromium
	cargo build -p floodgate-control
	cargo test -p floodgate-tests --test ui
