//! Shared helpers for the test binaries under `tests/`.

use std::path::PathBuf;

/// The release module the tests run: `$FLOODGATE_WASM`, else `target/wasm32-wasip1/release/floodgate.wasm`.
pub fn wasm_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOODGATE_WASM") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/release/floodgate.wasm")
}
