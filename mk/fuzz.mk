# Coverage-guided fuzzing of the parsers on the configuration and request path (fuzz/).
# `make fuzz` runs 1,000,000 inputs per target (FUZZ_RUNS to change); test-fuzz is a smoke run
# in `make test` that keeps the targets building and finding nothing in 2,000 inputs each.
TEST_TARGETS += test-fuzz
.PHONY: fuzz test-fuzz fuzz-deps
FUZZ_RUNS ?= 1000000

# libfuzzer-sys compiles libFuzzer (C++): a C++ compiler is the one thing it needs.
fuzz-deps:
	@command -v c++ >/dev/null || (apt-get update -qq && apt-get install -y -qq g++)

fuzz: fuzz-deps
	scripts/fuzz.sh $(FUZZ_RUNS)

test-fuzz: fuzz-deps
	scripts/fuzz.sh 2000
