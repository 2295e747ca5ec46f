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

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use wasmtime::error::Context as _;
use wasmtime::{bail, format_err};
use wasmtime::{Caller, Config, Engine, Extern, Instance, Linker, Module, Store, TypedFunc};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

/// proxy-wasm statuses.
pub mod status {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const BAD_ARGUMENT: u32 = 2;
    pub const SERIALIZATION_FAILURE: u32 = 3;
    pub const PARSE_FAILURE: u32 = 4;
    pub const EMPTY: u32 = 7;
    pub const CAS_MISMATCH: u32 = 8;
    pub const INTERNAL_FAILURE: u32 = 10;
    pub const UNIMPLEMENTED: u32 = 12;
}

/// proxy-wasm header map types.
pub mod map {
    pub const REQUEST_HEADERS: u32 = 0;
    pub const REQUEST_TRAILERS: u32 = 1;
    pub const RESPONSE_HEADERS: u32 = 2;
    pub const RESPONSE_TRAILERS: u32 = 3;
    pub const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
    pub const HTTP_CALL_RESPONSE_TRAILERS: u32 = 7;
}

/// proxy-wasm buffer types.
pub mod buffer {
    pub const HTTP_REQUEST_BODY: u32 = 0;
    pub const HTTP_RESPONSE_BODY: u32 = 1;
    pub const DOWNSTREAM_DATA: u32 = 2;
    pub const UPSTREAM_DATA: u32 = 3;
    pub const HTTP_CALL_RESPONSE_BODY: u32 = 4;
    pub const VM_CONFIGURATION: u32 = 6;
    pub const PLUGIN_CONFIGURATION: u32 = 7;
}

/// Filter actions returned by stream callbacks.
pub const CONTINUE: u32 = 0;
pub const PAUSE: u32 = 1;

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
struct Fault {
    call: String,
    status: u32,
    remaining: u32,
}

/// What every worker of one host shares, as Envoy's workers share one process.
#[derive(Default)]
struct SharedState {
    clock_ns: u64,
    data: HashMap<String, (Vec<u8>, u32)>,
    last_cas: u32,
    metrics: Vec<Metric>,
    metric_ids: HashMap<String, u32>,
    faults: Vec<Fault>,
    logs: Vec<LogLine>,
    next_http_token: u32,
}

impl SharedState {
    /// Envoy's `nextCas`: one counter for the whole store, never 0.
    fn next_cas(&mut self) -> u32 {
        self.last_cas = self.last_cas.wrapping_add(1);
        if self.last_cas == 0 {
            self.last_cas = 1;
        }
        self.last_cas
    }

    fn fault(&mut self, call: &str) -> Option<u32> {
        let f = self.faults.iter_mut().find(|f| f.call == call && f.remaining > 0)?;
        f.remaining -= 1;
        Some(f.status)
    }
}

#[derive(Clone)]
struct ManualClock(Arc<Mutex<SharedState>>);

fn lock(s: &Arc<Mutex<SharedState>>) -> MutexGuard<'_, SharedState> {
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

/// The module, compiled once, and the process-wide state its workers share.
pub struct Host {
    engine: Engine,
    module: Module,
    shared: Arc<Mutex<SharedState>>,
    workers: usize,
}

type Compiled = (Engine, Module);
type CompiledCache = Mutex<HashMap<(std::path::PathBuf, Vec<u8>), Compiled>>;

fn compiled(path: &Path, bytes: Vec<u8>) -> wasmtime::Result<Compiled> {
    static CACHE: std::sync::OnceLock<CompiledCache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let key = (path.to_path_buf(), bytes);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = map.get(&key) {
        return Ok(c.clone());
    }
    let mut config = Config::new();
    config.consume_fuel(true);
    let engine = Engine::new(&config)?;
    let module = Module::new(&engine, &key.1)?;
    map.insert(key, (engine.clone(), module.clone()));
    Ok((engine, module))
}

/// The wall time the manual clock starts at: 2026-11-22T10:00:00Z.
pub const START_NS: u64 = 1_795_341_600_000_000_000;

impl Host {
    /// Loads the module at `wasm` (a clear error when it is missing). Compiled code is cached
    /// per path and file contents for the process: only the compilation is shared, never state.
    pub fn new(wasm: &Path) -> wasmtime::Result<Host> {
        let bytes =
            std::fs::read(wasm).with_context(|| format!("{} is missing: run `make wasm` first", wasm.display()))?;
        let (engine, module) = compiled(wasm, bytes)?;
        let shared = SharedState { clock_ns: START_NS, ..SharedState::default() };
        Ok(Host { engine, module, shared: Arc::new(Mutex::new(shared)), workers: 0 })
    }

    /// A new worker (a fresh instance of the module) sharing this host's store, metrics and clock.
    pub fn worker(&mut self) -> wasmtime::Result<Worker> {
        let index = self.workers;
        self.workers += 1;
        Worker::new(self, index)
    }

    pub fn now_ns(&self) -> u64 {
        lock(&self.shared).clock_ns
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ns() / 1_000_000
    }

    /// Moves the clock forward (time never moves by itself).
    pub fn advance(&self, by: Duration) {
        lock(&self.shared).clock_ns += by.as_nanos() as u64;
    }

    /// Makes the next `times` calls of host function `call` return `status`.
    pub fn inject_fault(&self, call: &str, status: u32, times: u32) {
        lock(&self.shared).faults.push(Fault { call: call.to_string(), status, remaining: times });
    }

    pub fn clear_faults(&self) {
        lock(&self.shared).faults.clear();
    }

    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        lock(&self.shared).data.get(key).cloned()
    }

    /// Writes shared data as another process component would (a fresh CAS).
    pub fn set_shared_data(&self, key: &str, value: &[u8]) {
        let mut s = lock(&self.shared);
        let cas = s.next_cas();
        s.data.insert(key.to_string(), (value.to_vec(), cas));
    }

    /// The value of the metric named `name` (as the module defined it), if defined.
    pub fn metric(&self, name: &str) -> Option<i64> {
        let s = lock(&self.shared);
        s.metrics.iter().find(|m| m.name == name).map(|m| m.value)
    }

    pub fn metrics(&self) -> Vec<Metric> {
        lock(&self.shared).metrics.clone()
    }

    pub fn logs(&self) -> Vec<LogLine> {
        lock(&self.shared).logs.clone()
    }

    pub fn clear_logs(&self) {
        lock(&self.shared).logs.clear();
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
}

impl CallStats {
    pub fn total_host_calls(&self) -> u32 {
        self.host_calls.values().sum()
    }
}

#[derive(Default)]
struct StreamState {
    maps: HashMap<u32, Vec<(String, String)>>,
    buffers: HashMap<u32, Vec<u8>>,
    properties: HashMap<String, Vec<u8>>,
    local_response: Option<LocalResponse>,
    closed_downstream: bool,
    closed_upstream: bool,
}

/// One worker's view: what Envoy keeps per worker and per context.
struct WorkerState {
    wasi: WasiP1Ctx,
    shared: Arc<Mutex<SharedState>>,
    index: usize,
    /// Properties of every context (plugin_root_id, node...).
    properties: HashMap<String, Vec<u8>>,
    streams: HashMap<u32, StreamState>,
    root_buffers: HashMap<u32, Vec<u8>>,
    /// The context host calls apply to (set before each callback, and by set_effective_context).
    current: u32,
    known_contexts: Vec<u32>,
    clusters: Vec<String>,
    http_calls: Vec<HttpCall>,
    tick_period_ms: u32,
    host_calls: BTreeMap<String, u32>,
}

impl WorkerState {
    fn count(&mut self, call: &str) -> Option<u32> {
        *self.host_calls.entry(call.to_string()).or_default() += 1;
        lock(&self.shared).fault(call)
    }
}

/// One instance of the module, like one Envoy worker thread.
pub struct Worker {
    store: Store<WorkerState>,
    instance: Instance,
    root: u32,
    next_context: u32,
    pub last: CallStats,
}

type Mem<'a> = Caller<'a, WorkerState>;

fn memory(caller: &mut Mem<'_>) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => bail!("module exports no memory"),
    }
}

fn read(caller: &mut Mem<'_>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let m = memory(caller)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let data = m.data(&caller);
    data.get(ptr..ptr + len).map(<[u8]>::to_vec).ok_or_else(|| format_err!("read out of bounds: {ptr}+{len}"))
}

fn read_str(caller: &mut Mem<'_>, ptr: i32, len: i32) -> wasmtime::Result<String> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

fn write(caller: &mut Mem<'_>, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    let m = memory(caller)?;
    let ptr = ptr as u32 as usize;
    m.data_mut(caller)
        .get_mut(ptr..ptr + bytes.len())
        .ok_or_else(|| format_err!("write out of bounds"))?
        .copy_from_slice(bytes);
    Ok(())
}

fn write_u32(caller: &mut Mem<'_>, ptr: i32, v: u32) -> wasmtime::Result<()> {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the module allocates, and writes its address and size.
fn give(caller: &mut Mem<'_>, bytes: &[u8], ptr_out: i32, size_out: i32) -> wasmtime::Result<()> {
    let alloc = match caller.get_export("proxy_on_memory_allocate") {
        Some(Extern::Func(f)) => f.typed::<i32, i32>(&caller)?,
        _ => bail!("module exports no proxy_on_memory_allocate"),
    };
    let addr = if bytes.is_empty() { 0 } else { alloc.call(&mut *caller, bytes.len() as i32)? };
    if !bytes.is_empty() {
        write(caller, addr, bytes)?;
    }
    write_u32(caller, ptr_out, addr as u32)?;
    write_u32(caller, size_out, bytes.len() as u32)
}

/// The proxy-wasm map wire format.
pub fn serialize_map(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let n = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        let at = 4 + i * 8;
        let k = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        sizes.push((k, v));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (k, v) in sizes {
        let key = String::from_utf8_lossy(bytes.get(at..at + k)?).into_owned();
        at += k + 1;
        let value = String::from_utf8_lossy(bytes.get(at..at + v)?).into_owned();
        at += v + 1;
        out.push((key, value));
    }
    Some(out)
}

fn link(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Mem<'_>, level: i32, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_log") {
                return Ok(s as i32);
            }
            let message = read_str(&mut c, ptr, len)?;
            let worker = c.data().index;
            lock(&c.data().shared).logs.push(LogLine { worker, level: level as u32, message });
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Mem<'_>, out: i32| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_get_current_time_nanoseconds") {
                return Ok(s as i32);
            }
            let now = lock(&c.data().shared).clock_ns;
            write(&mut c, out, &now.to_le_bytes())?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Mem<'_>, path: i32, path_len: i32, ptr_out: i32, size_out: i32| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_get_property") {
                return Ok(s as i32);
            }
            // Segments are `\0`-separated; the SDK also ends the path with one.
            let path = read_str(&mut c, path, path_len)?.trim_end_matches('\0').to_string();
            let st = c.data();
            let value = st
                .streams
                .get(&st.current)
                .and_then(|s| s.properties.get(&path))
                .or_else(|| st.properties.get(&path))
                .cloned();
            match value {
                Some(v) => {
                    give(&mut c, &v, ptr_out, size_out)?;
                    Ok(0)
                }
                None => Ok(status::NOT_FOUND as i32),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Mem<'_>, kind: i32, key: i32, key_len: i32, ptr_out: i32, size_out: i32| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_get_header_map_value") {
                return Ok(s as i32);
            }
            let key = read_str(&mut c, key, key_len)?.to_ascii_lowercase();
            let st = c.data();
            let Some(map) = st.streams.get(&st.current).and_then(|s| s.maps.get(&(kind as u32))) else {
                return Ok(status::NOT_FOUND as i32);
            };
            match map.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()) {
                Some(v) => {
                    give(&mut c, v.as_bytes(), ptr_out, size_out)?;
                    Ok(0)
                }
                None => Ok(status::NOT_FOUND as i32),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Mem<'_>, kind: i32, ptr_out: i32, size_out: i32| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_get_header_map_pairs") {
                return Ok(s as i32);
            }
            let st = c.data();
            let map = st.streams.get(&st.current).and_then(|s| s.maps.get(&(kind as u32))).cloned().unwrap_or_default();
            give(&mut c, &serialize_map(&map), ptr_out, size_out)?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Mem<'_>, kind: i32, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_set_header_map_pairs") {
                return Ok(s as i32);
            }
            let bytes = read(&mut c, ptr, len)?;
            let Some(pairs) = deserialize_map(&bytes) else { return Ok(status::BAD_ARGUMENT as i32) };
            let st = c.data_mut();
            let cur = st.current;
            st.streams.entry(cur).or_default().maps.insert(kind as u32, pairs);
            Ok(0)
        },
    )?;
    for (name, replace) in [("proxy_add_header_map_value", false), ("proxy_replace_header_map_value", true)] {
        linker.func_wrap(
            "env",
            name,
            move |mut c: Mem<'_>, kind: i32, k: i32, kl: i32, v: i32, vl: i32| -> wasmtime::Result<i32> {
                if let Some(s) = c.data_mut().count(name) {
                    return Ok(s as i32);
                }
                let key = read_str(&mut c, k, kl)?.to_ascii_lowercase();
                let value = read_str(&mut c, v, vl)?;
                let st = c.data_mut();
                let cur = st.current;
                let map = st.streams.entry(cur).or_default().maps.entry(kind as u32).or_default();
                if replace {
                    map.retain(|(x, _)| *x != key);
                }
                map.push((key, value));
                Ok(0)
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Mem<'_>, kind: i32, k: i32, kl: i32| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_remove_header_map_value") {
                return Ok(s as i32);
            }
            let key = read_str(&mut c, k, kl)?.to_ascii_lowercase();
            let st = c.data_mut();
            let cur = st.current;
            if let Some(map) = st.streams.entry(cur).or_default().maps.get_mut(&(kind as u32)) {
                map.retain(|(x, _)| *x != key);
            }
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Mem<'_>, kind: i32, start: i32, max: i32, ptr_out: i32, size_out: i32| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_get_buffer_bytes") {
                return Ok(s as i32);
            }
            let st = c.data();
            let kind = kind as u32;
            let buf = if kind == buffer::VM_CONFIGURATION || kind == buffer::PLUGIN_CONFIGURATION {
                st.root_buffers.get(&kind).cloned()
            } else {
                st.streams.get(&st.current).and_then(|s| s.buffers.get(&kind)).cloned()
            };
            let Some(buf) = buf else { return Ok(status::NOT_FOUND as i32) };
            let start = (start as u32 as usize).min(buf.len());
            let end = start.saturating_add(max as u32 as usize).min(buf.len());
            give(&mut c, &buf[start..end], ptr_out, size_out)?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Mem<'_>, kind: i32, _start: i32, _len: i32, ptr: i32, size: i32| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_set_buffer_bytes") {
                return Ok(s as i32);
            }
            let bytes = read(&mut c, ptr, size)?;
            let st = c.data_mut();
            let cur = st.current;
            st.streams.entry(cur).or_default().buffers.insert(kind as u32, bytes);
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Mem<'_>, k: i32, kl: i32, ptr_out: i32, size_out: i32, cas_out: i32| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_get_shared_data") {
                return Ok(s as i32);
            }
            let key = read_str(&mut c, k, kl)?;
            let found = lock(&c.data().shared).data.get(&key).cloned();
            match found {
                Some((value, cas)) => {
                    give(&mut c, &value, ptr_out, size_out)?;
                    write_u32(&mut c, cas_out, cas)?;
                    Ok(0)
                }
                None => Ok(status::NOT_FOUND as i32),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Mem<'_>, k: i32, kl: i32, v: i32, vl: i32, cas: i32| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_set_shared_data") {
                return Ok(s as i32);
            }
            let key = read_str(&mut c, k, kl)?;
            let value = read(&mut c, v, vl)?;
            let mut s = lock(&c.data().shared);
            // Envoy: cas 0 writes unconditionally; a stale cas on an existing key fails.
            if let Some((_, current)) = s.data.get(&key) {
                if cas != 0 && cas as u32 != *current {
                    return Ok(status::CAS_MISMATCH as i32);
                }
            }
            let next = s.next_cas();
            s.data.insert(key, (value, next));
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Mem<'_>,
         code: i32,
         d: i32,
         dl: i32,
         b: i32,
         bl: i32,
         h: i32,
         hl: i32,
         _grpc: i32|
         -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_send_local_response") {
                return Ok(s as i32);
            }
            let details = read_str(&mut c, d, dl)?;
            let body = read(&mut c, b, bl)?;
            let raw = read(&mut c, h, hl)?;
            let Some(headers) = deserialize_map(&raw) else { return Ok(status::BAD_ARGUMENT as i32) };
            let st = c.data_mut();
            let cur = st.current;
            st.streams.entry(cur).or_default().local_response =
                Some(LocalResponse { status: code as u32, details, headers, body });
            Ok(0)
        },
    )?;
    linker.func_wrap("env", "proxy_close_stream", |mut c: Mem<'_>, kind: i32| -> wasmtime::Result<i32> {
        if let Some(s) = c.data_mut().count("proxy_close_stream") {
            return Ok(s as i32);
        }
        let st = c.data_mut();
        let cur = st.current;
        let stream = st.streams.entry(cur).or_default();
        match kind {
            2 => stream.closed_downstream = true,
            3 => stream.closed_upstream = true,
            _ => return Ok(status::BAD_ARGUMENT as i32),
        }
        Ok(0)
    })?;
    linker.func_wrap("env", "proxy_continue_stream", |mut c: Mem<'_>, _kind: i32| -> wasmtime::Result<i32> {
        Ok(c.data_mut().count("proxy_continue_stream").unwrap_or(0) as i32)
    })?;
    linker.func_wrap("env", "proxy_done", |mut c: Mem<'_>| -> wasmtime::Result<i32> {
        Ok(c.data_mut().count("proxy_done").unwrap_or(0) as i32)
    })?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Mem<'_>, period: i32| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_set_tick_period_milliseconds") {
                return Ok(s as i32);
            }
            c.data_mut().tick_period_ms = period as u32;
            Ok(0)
        },
    )?;
    linker.func_wrap("env", "proxy_set_effective_context", |mut c: Mem<'_>, ctx: i32| -> wasmtime::Result<i32> {
        if let Some(s) = c.data_mut().count("proxy_set_effective_context") {
            return Ok(s as i32);
        }
        let st = c.data_mut();
        if !st.known_contexts.contains(&(ctx as u32)) {
            return Ok(status::BAD_ARGUMENT as i32);
        }
        st.current = ctx as u32;
        Ok(0)
    })?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Mem<'_>, kind: i32, n: i32, nl: i32, id_out: i32| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_define_metric") {
                return Ok(s as i32);
            }
            let name = read_str(&mut c, n, nl)?;
            let kind = match kind {
                0 => MetricKind::Counter,
                1 => MetricKind::Gauge,
                2 => MetricKind::Histogram,
                _ => return Ok(status::BAD_ARGUMENT as i32),
            };
            let id = {
                let mut s = lock(&c.data().shared);
                match s.metric_ids.get(&name) {
                    Some(&id) => id,
                    None => {
                        let id = s.metrics.len() as u32;
                        s.metrics.push(Metric { name: name.clone(), kind, value: 0, samples: vec![] });
                        s.metric_ids.insert(name, id);
                        id
                    }
                }
            };
            write_u32(&mut c, id_out, id)?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: Mem<'_>, id: i32, offset: i64| -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_increment_metric") {
                return Ok(s as i32);
            }
            let mut s = lock(&c.data().shared);
            let Some(m) = s.metrics.get_mut(id as u32 as usize) else { return Ok(status::NOT_FOUND as i32) };
            match m.kind {
                MetricKind::Counter if offset < 0 => Ok(status::BAD_ARGUMENT as i32),
                MetricKind::Counter | MetricKind::Gauge => {
                    m.value += offset;
                    Ok(0)
                }
                MetricKind::Histogram => Ok(status::BAD_ARGUMENT as i32),
            }
        },
    )?;
    linker.func_wrap("env", "proxy_record_metric", |mut c: Mem<'_>, id: i32, value: i64| -> wasmtime::Result<i32> {
        if let Some(s) = c.data_mut().count("proxy_record_metric") {
            return Ok(s as i32);
        }
        let mut s = lock(&c.data().shared);
        let Some(m) = s.metrics.get_mut(id as u32 as usize) else { return Ok(status::NOT_FOUND as i32) };
        match m.kind {
            MetricKind::Counter => m.value += value,
            MetricKind::Gauge => m.value = value,
            MetricKind::Histogram => m.samples.push(value as u64),
        }
        Ok(0)
    })?;
    linker.func_wrap("env", "proxy_get_metric", |mut c: Mem<'_>, id: i32, out: i32| -> wasmtime::Result<i32> {
        if let Some(s) = c.data_mut().count("proxy_get_metric") {
            return Ok(s as i32);
        }
        let value = lock(&c.data().shared).metrics.get(id as u32 as usize).map(|m| m.value);
        match value {
            Some(v) => {
                write(&mut c, out, &(v as u64).to_le_bytes())?;
                Ok(0)
            }
            None => Ok(status::NOT_FOUND as i32),
        }
    })?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Mem<'_>,
         up: i32,
         upl: i32,
         h: i32,
         hl: i32,
         b: i32,
         bl: i32,
         _t: i32,
         _tl: i32,
         timeout: i32,
         token_out: i32|
         -> wasmtime::Result<i32> {
            if let Some(s) = c.data_mut().count("proxy_http_call") {
                return Ok(s as i32);
            }
            let cluster = read_str(&mut c, up, upl)?;
            let raw = read(&mut c, h, hl)?;
            let body = read(&mut c, b, bl)?;
            let Some(headers) = deserialize_map(&raw) else { return Ok(status::BAD_ARGUMENT as i32) };
            // Envoy: an unknown cluster, or a request without :method/:path/:authority.
            let has = |n: &str| headers.iter().any(|(k, _)| k == n);
            if !(c.data().clusters.contains(&cluster) && has(":method") && has(":path") && has(":authority")) {
                return Ok(status::BAD_ARGUMENT as i32);
            }
            let token = {
                let mut s = lock(&c.data().shared);
                s.next_http_token += 1;
                s.next_http_token
            };
            c.data_mut().http_calls.push(HttpCall { token, cluster, headers, body, timeout_ms: timeout as u32 });
            write_u32(&mut c, token_out, token)?;
            Ok(0)
        },
    )?;
    Ok(())
}

impl Worker {
    fn new(host: &Host, index: usize) -> wasmtime::Result<Worker> {
        let clock = ManualClock(host.shared.clone());
        let wasi = WasiCtxBuilder::new().wall_clock(clock.clone()).monotonic_clock(clock).build_p1();
        let state = WorkerState {
            wasi,
            shared: host.shared.clone(),
            index,
            properties: HashMap::new(),
            streams: HashMap::new(),
            root_buffers: HashMap::new(),
            current: 0,
            known_contexts: Vec::new(),
            clusters: Vec::new(),
            http_calls: Vec::new(),
            tick_period_ms: 0,
            host_calls: BTreeMap::new(),
        };
        let mut store = Store::new(&host.engine, state);
        store.set_fuel(u64::MAX)?;
        let mut linker = Linker::new(&host.engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut WorkerState| &mut s.wasi)?;
        link(&mut linker)?;
        // gRPC, shared queues, foreign functions...: trap with the import's name if ever called.
        linker.define_unknown_imports_as_traps(&host.module)?;
        let instance = linker.instantiate(&mut store, &host.module)?;
        let mut w = Worker { store, instance, root: 1, next_context: 2, last: CallStats::default() };
        if let Ok(init) = w.instance.get_typed_func::<(), ()>(&mut w.store, "_initialize") {
            init.call(&mut w.store, ())?;
        }
        Ok(w)
    }

    fn func<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        name: &str,
    ) -> wasmtime::Result<TypedFunc<P, R>> {
        self.instance.get_typed_func::<P, R>(&mut self.store, name).with_context(|| format!("export {name}"))
    }

    /// Calls export `name` as context `ctx`, counting its cost into [`Worker::last`].
    fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        ctx: u32,
        name: &str,
        args: P,
    ) -> wasmtime::Result<R> {
        let f = self.func::<P, R>(name)?;
        self.store.data_mut().current = ctx;
        self.store.data_mut().host_calls.clear();
        self.store.set_fuel(u64::MAX)?;
        let r = f.call(&mut self.store, args).with_context(|| format!("{name} trapped"))?;
        let used = u64::MAX - self.store.get_fuel()?;
        self.last = CallStats { instructions: used, host_calls: std::mem::take(&mut self.store.data_mut().host_calls) };
        Ok(r)
    }

    pub fn index(&self) -> usize {
        self.store.data().index
    }

    /// A property every context of this worker sees (path segments joined by `\0`, as the ABI does).
    pub fn set_property(&mut self, path: &[&str], value: &[u8]) {
        self.store.data_mut().properties.insert(path.join("\0"), value.to_vec());
    }

    /// A property only context `ctx` sees.
    pub fn set_context_property(&mut self, ctx: u32, path: &[&str], value: &[u8]) {
        self.store.data_mut().streams.entry(ctx).or_default().properties.insert(path.join("\0"), value.to_vec());
    }

    /// Declares an upstream cluster `proxy_http_call` may target.
    pub fn add_cluster(&mut self, name: &str) {
        self.store.data_mut().clusters.push(name.to_string());
    }

    /// Creates the root context and runs `on_vm_start` and `on_configure` with `plugin_config`
    /// as root_id `root_id`. Returns what `on_configure` returned.
    pub fn configure(&mut self, root_id: &str, plugin_config: &str) -> wasmtime::Result<bool> {
        self.set_property(&["plugin_root_id"], root_id.as_bytes());
        let root = self.root;
        self.store.data_mut().known_contexts.push(root);
        self.store.data_mut().root_buffers.insert(buffer::PLUGIN_CONFIGURATION, plugin_config.as_bytes().to_vec());
        self.call::<(i32, i32), ()>(root, "proxy_on_context_create", (root as i32, 0))?;
        let started: i32 = self.call(root, "proxy_on_vm_start", (root as i32, 0))?;
        if started == 0 {
            return Ok(false);
        }
        let ok: i32 = self.call(root, "proxy_on_configure", (root as i32, plugin_config.len() as i32))?;
        Ok(ok != 0)
    }

    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    pub fn tick(&mut self) -> wasmtime::Result<()> {
        let root = self.root;
        self.call::<i32, ()>(root, "proxy_on_tick", root as i32)
    }

    /// A new stream context (HTTP request or TCP connection) under the root.
    pub fn new_context(&mut self) -> wasmtime::Result<u32> {
        let ctx = self.next_context;
        self.next_context += 1;
        self.store.data_mut().known_contexts.push(ctx);
        self.store.data_mut().streams.entry(ctx).or_default();
        let root = self.root;
        self.call::<(i32, i32), ()>(ctx, "proxy_on_context_create", (ctx as i32, root as i32))?;
        Ok(ctx)
    }

    fn set_map(&mut self, ctx: u32, kind: u32, headers: &[(&str, &str)]) {
        let pairs = headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())).collect();
        self.store.data_mut().streams.entry(ctx).or_default().maps.insert(kind, pairs);
    }

    pub fn request_headers(
        &mut self,
        ctx: u32,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> wasmtime::Result<u32> {
        self.set_map(ctx, map::REQUEST_HEADERS, headers);
        let r: i32 =
            self.call(ctx, "proxy_on_request_headers", (ctx as i32, headers.len() as i32, end_of_stream as i32))?;
        Ok(r as u32)
    }

    pub fn response_headers(
        &mut self,
        ctx: u32,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> wasmtime::Result<u32> {
        self.set_map(ctx, map::RESPONSE_HEADERS, headers);
        let r: i32 =
            self.call(ctx, "proxy_on_response_headers", (ctx as i32, headers.len() as i32, end_of_stream as i32))?;
        Ok(r as u32)
    }

    pub fn request_body(&mut self, ctx: u32, body: &[u8], end_of_stream: bool) -> wasmtime::Result<u32> {
        self.store.data_mut().streams.entry(ctx).or_default().buffers.insert(buffer::HTTP_REQUEST_BODY, body.to_vec());
        let r: i32 = self.call(ctx, "proxy_on_request_body", (ctx as i32, body.len() as i32, end_of_stream as i32))?;
        Ok(r as u32)
    }

    pub fn response_body(&mut self, ctx: u32, body: &[u8], end_of_stream: bool) -> wasmtime::Result<u32> {
        self.store.data_mut().streams.entry(ctx).or_default().buffers.insert(buffer::HTTP_RESPONSE_BODY, body.to_vec());
        let r: i32 = self.call(ctx, "proxy_on_response_body", (ctx as i32, body.len() as i32, end_of_stream as i32))?;
        Ok(r as u32)
    }

    pub fn request_trailers(&mut self, ctx: u32, trailers: &[(&str, &str)]) -> wasmtime::Result<u32> {
        self.set_map(ctx, map::REQUEST_TRAILERS, trailers);
        let r: i32 = self.call(ctx, "proxy_on_request_trailers", (ctx as i32, trailers.len() as i32))?;
        Ok(r as u32)
    }

    pub fn response_trailers(&mut self, ctx: u32, trailers: &[(&str, &str)]) -> wasmtime::Result<u32> {
        self.set_map(ctx, map::RESPONSE_TRAILERS, trailers);
        let r: i32 = self.call(ctx, "proxy_on_response_trailers", (ctx as i32, trailers.len() as i32))?;
        Ok(r as u32)
    }

    /// `on_log`, `on_done` and `on_delete`, as Envoy ends a stream.
    pub fn end(&mut self, ctx: u32) -> wasmtime::Result<()> {
        self.call::<i32, ()>(ctx, "proxy_on_log", ctx as i32)?;
        let _: i32 = self.call(ctx, "proxy_on_done", ctx as i32)?;
        self.call::<i32, ()>(ctx, "proxy_on_delete", ctx as i32)?;
        let st = self.store.data_mut();
        st.known_contexts.retain(|&c| c != ctx);
        Ok(())
    }

    pub fn new_connection(&mut self, ctx: u32) -> wasmtime::Result<u32> {
        let r: i32 = self.call(ctx, "proxy_on_new_connection", ctx as i32)?;
        Ok(r as u32)
    }

    pub fn downstream_data(&mut self, ctx: u32, data: &[u8], end_of_stream: bool) -> wasmtime::Result<u32> {
        self.store.data_mut().streams.entry(ctx).or_default().buffers.insert(buffer::DOWNSTREAM_DATA, data.to_vec());
        let r: i32 =
            self.call(ctx, "proxy_on_downstream_data", (ctx as i32, data.len() as i32, end_of_stream as i32))?;
        Ok(r as u32)
    }

    pub fn upstream_data(&mut self, ctx: u32, data: &[u8], end_of_stream: bool) -> wasmtime::Result<u32> {
        self.store.data_mut().streams.entry(ctx).or_default().buffers.insert(buffer::UPSTREAM_DATA, data.to_vec());
        let r: i32 = self.call(ctx, "proxy_on_upstream_data", (ctx as i32, data.len() as i32, end_of_stream as i32))?;
        Ok(r as u32)
    }

    /// Peer type 1 = local, 2 = remote.
    pub fn downstream_close(&mut self, ctx: u32, peer: u32) -> wasmtime::Result<()> {
        self.call::<(i32, i32), ()>(ctx, "proxy_on_downstream_connection_close", (ctx as i32, peer as i32))
    }

    pub fn upstream_close(&mut self, ctx: u32, peer: u32) -> wasmtime::Result<()> {
        self.call::<(i32, i32), ()>(ctx, "proxy_on_upstream_connection_close", (ctx as i32, peer as i32))
    }

    pub fn local_response(&self, ctx: u32) -> Option<LocalResponse> {
        self.store.data().streams.get(&ctx).and_then(|s| s.local_response.clone())
    }

    pub fn closed_downstream(&self, ctx: u32) -> bool {
        self.store.data().streams.get(&ctx).is_some_and(|s| s.closed_downstream)
    }

    /// Dispatched HTTP calls not answered yet.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        self.store.data().http_calls.clone()
    }

    /// Answers call `token` with `status`, extra headers and `body`.
    pub fn answer_http_call(
        &mut self,
        token: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> wasmtime::Result<()> {
        let root = self.root;
        let mut pairs = vec![(":status".to_string(), status.to_string())];
        pairs.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let n = pairs.len();
        let st = self.store.data_mut();
        st.http_calls.retain(|c| c.token != token);
        let s = st.streams.entry(root).or_default();
        s.maps.insert(map::HTTP_CALL_RESPONSE_HEADERS, pairs);
        s.buffers.insert(buffer::HTTP_CALL_RESPONSE_BODY, body.to_vec());
        self.call::<(i32, i32, i32, i32, i32), ()>(
            root,
            "proxy_on_http_call_response",
            (root as i32, token as i32, n as i32, body.len() as i32, 0),
        )
    }

    /// Fails call `token` as Envoy does on a reset, an unreachable cluster or a timeout: the
    /// callback comes with no headers.
    pub fn fail_http_call(&mut self, token: u32) -> wasmtime::Result<()> {
        let root = self.root;
        let st = self.store.data_mut();
        st.http_calls.retain(|c| c.token != token);
        let s = st.streams.entry(root).or_default();
        s.maps.remove(&map::HTTP_CALL_RESPONSE_HEADERS);
        s.buffers.remove(&buffer::HTTP_CALL_RESPONSE_BODY);
        self.call::<(i32, i32, i32, i32, i32), ()>(
            root,
            "proxy_on_http_call_response",
            (root as i32, token as i32, 0, 0, 0),
        )
    }

    /// The module's linear memory, in bytes.
    pub fn memory_bytes(&mut self) -> usize {
        match self.instance.get_export(&mut self.store, "memory") {
            Some(Extern::Memory(m)) => m.data_size(&self.store),
            _ => 0,
        }
    }
}
