//! [`Worker`]: one instance of the module, as one Envoy worker thread runs it, and the callbacks
//! a test drives it with.

use std::collections::{BTreeMap, HashMap};

use wasmtime::error::Context as _;
use wasmtime::{Extern, Instance, Store, TypedFunc};
use wasmtime_wasi::WasiCtxBuilder;

use crate::abi::{buffer, map};
use crate::state::{CallStats, HttpCall, LocalResponse, ManualClock, WorkerState};
use crate::Host;

/// One instance of the module, like one Envoy worker thread.
pub struct Worker {
    store: Store<WorkerState>,
    instance: Instance,
    root: u32,
    next_context: u32,
    pub last: CallStats,
}

impl Worker {
    pub(crate) fn new(host: &Host, index: usize) -> wasmtime::Result<Worker> {
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
            allocations: 0,
            segments: Vec::new(),
            callback: "",
            last_call: "",
            last_fuel: 0,
        };
        let mut store = Store::new(&host.engine, state);
        store.set_fuel(u64::MAX)?;
        let instance = host.pre.instantiate(&mut store)?;
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
        name: &'static str,
        args: P,
    ) -> wasmtime::Result<R> {
        let f = self.func::<P, R>(name)?;
        let st = self.store.data_mut();
        st.current = ctx;
        st.host_calls.clear();
        st.allocations = 0;
        st.segments.clear();
        st.callback = name.trim_start_matches("proxy_");
        st.last_call = "start";
        st.last_fuel = u64::MAX;
        self.store.set_fuel(u64::MAX)?;
        let r = f.call(&mut self.store, args).with_context(|| format!("{name} trapped"))?;
        let left = self.store.get_fuel()?;
        let used = u64::MAX - left;
        let st = self.store.data_mut();
        st.segment("return", left);
        self.last = CallStats {
            instructions: used,
            host_calls: std::mem::take(&mut st.host_calls),
            allocations: std::mem::take(&mut st.allocations),
            segments: std::mem::take(&mut st.segments),
        };
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

    /// Another root context in this worker's VM (as Envoy makes one per filter configuration
    /// with the same `vm_id`): `on_context_create`, `on_vm_start` and `on_configure` with
    /// `plugin_config` as root_id `root_id`. Returns its id and what `on_configure` returned;
    /// tick it with [`Worker::tick_root`]. Streams are still created under the first root.
    pub fn add_root(&mut self, root_id: &str, plugin_config: &str) -> wasmtime::Result<(u32, bool)> {
        let root = self.next_context;
        self.next_context += 1;
        self.set_property(&["plugin_root_id"], root_id.as_bytes());
        self.store.data_mut().known_contexts.push(root);
        self.store.data_mut().root_buffers.insert(buffer::PLUGIN_CONFIGURATION, plugin_config.as_bytes().to_vec());
        self.call::<(i32, i32), ()>(root, "proxy_on_context_create", (root as i32, 0))?;
        let started: i32 = self.call(root, "proxy_on_vm_start", (root as i32, 0))?;
        if started == 0 {
            return Ok((root, false));
        }
        let ok: i32 = self.call(root, "proxy_on_configure", (root as i32, plugin_config.len() as i32))?;
        Ok((root, ok != 0))
    }

    /// The tick of root context `root` (one [`Worker::add_root`] made).
    pub fn tick_root(&mut self, root: u32) -> wasmtime::Result<()> {
        self.call::<i32, ()>(root, "proxy_on_tick", root as i32)
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

    /// Whether the module reset HTTP stream `ctx` (`proxy_close_stream(HttpRequest)`).
    pub fn closed_http(&self, ctx: u32) -> bool {
        self.store.data().streams.get(&ctx).is_some_and(|s| s.closed_http)
    }

    /// How many times the module resumed `ctx`'s paused request (`proxy_continue_stream`).
    pub fn resumed_request(&self, ctx: u32) -> u32 {
        self.store.data().streams.get(&ctx).map_or(0, |s| s.resumed_request)
    }

    /// The response body chunk of `ctx` as the module left it (what goes on to the client).
    pub fn response_body_sent(&self, ctx: u32) -> Vec<u8> {
        let st = self.store.data();
        st.streams.get(&ctx).and_then(|s| s.buffers.get(&buffer::HTTP_RESPONSE_BODY)).cloned().unwrap_or_default()
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
