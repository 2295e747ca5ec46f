# The filter's pure logic: unit and property tests, natively.
TEST_TARGETS += test-core
.PHONY: test-core
test-core: wasm
	cargo test -p floodgate-core -p floodgate --lib
