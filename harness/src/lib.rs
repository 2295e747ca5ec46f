//! A proxy-wasm host on wasmtime, for deterministic tests and exact cost counts of a compiled
//! module (ABI 0.2.1, `wasm32-wasip1`). Test and benchmark code only: never shipped.
//!
//! - [`Host`] owns what an Envoy process shares between its worker threads: the shared-data
//!   store (with Envoy's CAS semantics), the metrics, a manual clock, captured logs and injected
//!   faults. It compiles the module once.
//! - [`Worker`] is one instance of the module, as one Envoy worker thread runs it. Several
//!   workers of one host interleave step by step, driven by the test.
//! - Every callback reports the wasm instructions it executed (fuel) and the host calls it made.
//!
//! Host calls follow Envoy's semantics (the proxy-wasm Rust SDK panics on statuses it does not
//! expect, so the statuses matter); imports the module declares but this host does not
//! implement (gRPC, queues, foreign functions) trap with their name if called.
//!
//! Layout: `abi` (statuses, map and buffer types, the map wire format), `state` (what the host
//! and each worker keep), `host` and `worker` (the API tests drive), `hostcalls/` (one module per
//! concern: memory, log, time, properties, headers, buffers, shared data, stream, context,
//! metrics, HTTP calls).

mod abi;
mod host;
mod hostcalls;
mod state;
mod worker;

pub use abi::{buffer, deserialize_map, map, serialize_map, status, CONTINUE, PAUSE};
pub use host::{built_module, Host, START_NS};
pub use state::{CallStats, HttpCall, LocalResponse, LogLine, Metric, MetricKind};
pub use worker::Worker;
