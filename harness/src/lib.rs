//! proxy-wasm host emulator on wasmtime (issue 3).
