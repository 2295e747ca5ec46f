# Make's view of scripts/env.sh (keep the two in step).
FLOODGATE_CACHE ?= $(HOME)/.cache/floodgate
FLOODGATE_VENV ?= $(FLOODGATE_CACHE)/venv
FLOODGATE_ENVOY ?= $(FLOODGATE_VENV)/bin/envoy
export FLOODGATE_CACHE FLOODGATE_VENV FLOODGATE_ENVOY
