//! The pieces `make demo` and the end-to-end tests share: a controllable WebSocket backend, an
//! Envoy process launcher built on the configs in `envoy/`, a WebSocket client and a reader of
//! Envoy's Prometheus stats.

pub mod backend;
pub mod client;
pub mod envoy;
pub mod procs;
pub mod stats;

/// The workspace root (where `envoy/` and `target/` live).
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
