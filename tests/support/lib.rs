//! Shared helpers for the test binaries under `tests/`.

use std::time::{Duration, Instant};

pub use floodgate_demo::{backend, client, envoy, procs, stats};

/// Polls `check` every 50 ms until it returns `Some`, or fails after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fails with a clear message when the module has not been built.
pub fn require_wasm() {
    let path = envoy::wasm_path();
    assert!(path.exists(), "{} is missing: build it with `make wasm`", path.display());
}
