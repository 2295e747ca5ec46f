//! [`Host`]: the module, compiled once, and the process-wide state its workers share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::error::Context as _;
use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use crate::state::{lock, Fault, LogLine, Metric, SharedState, WorkerState};
use crate::Worker;

/// The module, compiled once, and the process-wide state its workers share.
pub struct Host {
    pub(crate) engine: Engine,
    pub(crate) module: Module,
    pub(crate) shared: Arc<Mutex<SharedState>>,
    /// The module linked to the host calls once; each worker only instantiates it.
    pub(crate) pre: InstancePre<WorkerState>,
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

/// The module the tests and bench-filter load: `FLOODGATE_WASM`, else the workspace's release
/// build (`make wasm`).
pub fn built_module() -> PathBuf {
    std::env::var_os("FLOODGATE_WASM").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/release/floodgate.wasm")
    })
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
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut WorkerState| &mut s.wasi)?;
        crate::hostcalls::link(&mut linker)?;
        // gRPC, shared queues, foreign functions...: trap with the import's name if ever called.
        linker.define_unknown_imports_as_traps(&module)?;
        let pre = linker.instantiate_pre(&module)?;
        Ok(Host { engine, module, shared: Arc::new(Mutex::new(shared)), pre, workers: 0 })
    }

    /// Another host for the same module (compiled once) with fresh shared state and clock: cheap,
    /// for tests that run thousands of independent sequences.
    pub fn sibling(&self) -> Host {
        let shared = SharedState { clock_ns: START_NS, ..SharedState::default() };
        Host {
            engine: self.engine.clone(),
            module: self.module.clone(),
            shared: Arc::new(Mutex::new(shared)),
            pre: self.pre.clone(),
            workers: 0,
        }
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

    /// Steps the wall clock backwards (an NTP step, a VM restored from a snapshot).
    pub fn rewind(&self, by: Duration) {
        let mut s = lock(&self.shared);
        s.clock_ns = s.clock_ns.saturating_sub(by.as_nanos() as u64);
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

    /// How many metrics the module defined.
    pub fn metric_count(&self) -> usize {
        lock(&self.shared).metrics.len()
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
