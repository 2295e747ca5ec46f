# Sourced by the scripts and the Makefile's recipes: where the tools live. Override any of these.
: "${FLOODGATE_CACHE:=$HOME/.cache/floodgate}"
: "${FLOODGATE_VENV:=$FLOODGATE_CACHE/venv}"
: "${FLOODGATE_ENVOY:=$FLOODGATE_VENV/bin/envoy}"
export FLOODGATE_CACHE FLOODGATE_VENV FLOODGATE_ENVOY
