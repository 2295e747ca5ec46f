#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through libfuzzer-sys) of every parser on the configuration
# and request path: plugin_config, snapshot, shared_state, fleet_header (fuzz/fuzz_targets).
# Stable rustc with RUSTC_BOOTSTRAP=1 and the sancov pass: no nightly, no cargo-fuzz needed.
#   scripts/fuzz.sh [runs per target]   (default 1000000; FUZZ_TARGETS="snapshot ..." to pick)
# Corpora live in target/fuzz/corpus/<target> (seeded from fuzz/seeds/<target>); crashes in
# target/fuzz/artifacts/<target>. Prints one line per target: runs, coverage, result.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-1000000}"
TARGETS="${FUZZ_TARGETS:-plugin_config snapshot shared_state fleet_header}"
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="--cfg fuzzing -Cdebug-assertions -Coverflow-checks -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares"
TRIPLE="$(rustc -vV | sed -n "s/^host: //p")"
# --target keeps the instrumentation out of build scripts and proc macros.
cargo build -q --release --manifest-path fuzz/Cargo.toml --target-dir target/fuzz --target "$TRIPLE"
BIN="target/fuzz/$TRIPLE/release"
failed=0
for t in $TARGETS; do
  corpus="target/fuzz/corpus/$t"; artifacts="target/fuzz/artifacts/$t/"
  mkdir -p "$corpus" "$artifacts"
  if [ -d "fuzz/seeds/$t" ]; then cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true; fi
  log="target/fuzz/$t.log"
  if "$BIN/$t" -runs="$RUNS" -max_len=65536 -rss_limit_mb=1024 -artifact_prefix="$artifacts" \
       "$corpus" >"$log" 2>&1; then result=ok; else result="FAILED (see $log)"; failed=1; fi
  summary=$(grep -E "DONE|^Done " "$log" | tr -s "\t " " " | tr "\n" " " || true)
  echo "fuzz $t: $result: $summary"
done
exit "$failed"
