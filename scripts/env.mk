# Make's view of scripts/env.sh (keep the two in step).
FLOODGATE_CACHE ?= $(HOME)/.cache/floodgate
FLOODGATE_VENV ?= $(FLOODGATE_CACHE)/venv
FLOODGATE_ENVOY ?= $(FLOODGATE_VENV)/bin/envoy
FLOODGATE_ENVOY_OLDEST ?= 1.36.4
FLOODGATE_ENVOY_BETWEEN ?= 1.37.0 1.39.3
export FLOODGATE_CACHE FLOODGATE_VENV FLOODGATE_ENVOY FLOODGATE_ENVOY_OLDEST FLOODGATE_ENVOY_BETWEEN
# $(call envoy_of,1.36.4): the Envoy binary of that release's virtualenv.
envoy_of = $(FLOODGATE_CACHE)/envoy-$(1)/bin/envoy
