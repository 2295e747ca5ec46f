# floodgate-control: unit and router tests, and integration tests on a real Redis and Alertmanager.
TEST_TARGETS += test-control
.PHONY: test-control
test-control:
	scripts/deps.sh redis prometheus
	cargo test -p floodgate-control
