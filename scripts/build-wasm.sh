#!/usr/bin/env bash
# Builds target/wasm32-wasip1/release/floodgate.wasm (release, LTO). The only place the wasm flags live.
# With a rustup wasm32-wasip1 target installed it uses it; otherwise Debian's rustc with -Zbuild-std.
# Usage: scripts/build-wasm.sh [package]   (default floodgate; the bench's floor: floodgate-wasm-floor)
set -euo pipefail
cd "$(dirname "$0")/.."
pkg=${1:-floodgate}
export CARGO_TARGET_DIR="$PWD/target"
# Size-tuned release profile for the module only, so native release builds stay quick to compile.
export CARGO_PROFILE_RELEASE_LTO=true CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
       CARGO_PROFILE_RELEASE_OPT_LEVEL=3 CARGO_PROFILE_RELEASE_STRIP=debuginfo
if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  cargo build --quiet --target wasm32-wasip1 --release -p "$pkg"
else
  scripts/deps.sh wasm
  RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc \
  RUSTFLAGS="-C linker=wasm-ld-22 -C link-self-contained=no -L /usr/lib/wasm32-wasi" \
    /usr/bin/cargo build --quiet -Zbuild-std=std,panic_abort --target wasm32-wasip1 --release -p "$pkg"
fi
ls -l "target/wasm32-wasip1/release/${pkg//-/_}.wasm" | awk '{print "built " $NF " (" $5 " bytes)"}'
