//! What the host keeps: the process-wide state every worker shares, each worker's own state, and
//! the records tests read back (metrics, logs, HTTP calls, local responses, costs).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Clone, Debug)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    pub value: i64,
    /// Values recorded into a histogram.
    pub samples: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub worker: usize,
    pub level: u32,
    pub message: String,
}

/// A fault: the next `remaining` calls of `call` return `status` without doing anything.
#[derive(Clone, Debug)]
pub(crate) struct Fault {
    pub(crate) call: String,
    pub(crate) status: u32,
    pub(crate) remaining: u32,
}

/// What every worker of one host shares, as Envoy's workers share one process.
#[derive(Default)]
pub(crate) struct SharedState {
    pub(crate) clock_ns: u64,
    pub(crate) data: HashMap<String, (Vec<u8>, u32)>,
    pub(crate) last_cas: u32,
    pub(crate) metrics: Vec<Metric>,
    pub(crate) metric_ids: HashMap<String, u32>,
    pub(crate) faults: Vec<Fault>,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) next_http_token: u32,
}

impl SharedState {
    /// Envoy's `nextCas`: one counter for the whole store, never 0.
    pub(crate) fn next_cas(&mut self) -> u32 {
        self.last_cas = self.last_cas.wrapping_add(1);
        if self.last_cas == 0 {
            self.last_cas = 1;
        }
        self.last_cas
    }

    pub(crate) fn fault(&mut self, call: &str) -> Option<u32> {
        let f = self.faults.iter_mut().find(|f| f.call == call && f.remaining > 0)?;
        f.remaining -= 1;
        Some(f.status)
    }
}

#[derive(Clone)]
pub(crate) struct ManualClock(pub(crate) Arc<Mutex<SharedState>>);

pub(crate) fn lock(s: &Arc<Mutex<SharedState>>) -> MutexGuard<'_, SharedState> {
    // A poisoned lock only means another test thread panicked; the state is still usable.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl HostWallClock for ManualClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(lock(&self.0).clock_ns)
    }
}

impl HostMonotonicClock for ManualClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        lock(&self.0).clock_ns
    }
}

/// A dispatched `proxy_http_call`, for the test to answer, fail or time out.
#[derive(Clone, Debug)]
pub struct HttpCall {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
}

impl HttpCall {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub details: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl LocalResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// What one callback cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Wasm instructions executed (wasmtime fuel).
    pub instructions: u64,
    pub host_calls: BTreeMap<String, u32>,
    /// Host calls whose answer the host copied into memory it had the module allocate
    /// (`proxy_on_memory_allocate`, a call from the host into the module: in Envoy it costs more
    /// than the host call itself, `make bench-host-calls`). An empty answer allocates nothing.
    pub allocations: u32,
    /// Instructions run between consecutive host calls, in order: (`callback: previous call ->
    /// next call`, instructions). Where a callback's instructions went, with no profiler.
    pub segments: Vec<(String, u64)>,
}

impl CallStats {
    pub fn total_host_calls(&self) -> u32 {
        self.host_calls.values().sum()
    }
}

#[derive(Default)]
pub(crate) struct StreamState {
    pub(crate) maps: HashMap<u32, Vec<(String, String)>>,
    pub(crate) buffers: HashMap<u32, Vec<u8>>,
    pub(crate) properties: HashMap<String, Vec<u8>>,
    pub(crate) local_response: Option<LocalResponse>,
    pub(crate) closed_downstream: bool,
    pub(crate) closed_upstream: bool,
    /// `proxy_close_stream(HttpRequest | HttpResponse)`: Envoy resets the stream.
    pub(crate) closed_http: bool,
    /// `proxy_continue_stream(HttpRequest)` / `(HttpResponse)` calls on this stream.
    pub(crate) resumed_request: u32,
    pub(crate) resumed_response: u32,
}

/// One worker's view: what Envoy keeps per worker and per context.
pub(crate) struct WorkerState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) shared: Arc<Mutex<SharedState>>,
    pub(crate) index: usize,
    /// Properties of every context (plugin_root_id, node...).
    pub(crate) properties: HashMap<String, Vec<u8>>,
    pub(crate) streams: HashMap<u32, StreamState>,
    pub(crate) root_buffers: HashMap<u32, Vec<u8>>,
    /// The context host calls apply to (set before each callback, and by set_effective_context).
    pub(crate) current: u32,
    pub(crate) known_contexts: Vec<u32>,
    pub(crate) clusters: Vec<String>,
    pub(crate) http_calls: Vec<HttpCall>,
    pub(crate) tick_period_ms: u32,
    pub(crate) host_calls: BTreeMap<String, u32>,
    /// The running callback's allocations for host answers so far.
    pub(crate) allocations: u32,
    /// The running callback's segments so far, its name, the last host call and the fuel then.
    pub(crate) segments: Vec<(String, u64)>,
    pub(crate) callback: &'static str,
    pub(crate) last_call: &'static str,
    pub(crate) last_fuel: u64,
}

impl WorkerState {
    /// Counts host call `call`, made with `fuel` left; the fault status to answer, if any.
    pub(crate) fn count(&mut self, call: &'static str, fuel: u64) -> Option<u32> {
        *self.host_calls.entry(call.to_string()).or_default() += 1;
        self.segment(call, fuel);
        lock(&self.shared).fault(call)
    }

    /// Closes the segment that ends at `next` (a host call, or the callback's return).
    pub(crate) fn segment(&mut self, next: &'static str, fuel: u64) {
        let used = self.last_fuel.saturating_sub(fuel);
        let label = format!("{}: {} -> {}", self.callback, self.last_call, next.trim_start_matches("proxy_"));
        self.segments.push((label, used));
        self.last_call = next.trim_start_matches("proxy_");
        self.last_fuel = fuel;
    }
}
