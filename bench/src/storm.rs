//! The reconnect storm: the incident Floodgate exists for. Thousands of WebSocket clients hold
//! sessions through Envoy to a backend that can take `capacity` new upgrades per second; the
//! backend restarts (drops every session, refuses connections for a moment) and the clients
//! reconnect the way client libraries do. Each configuration runs the same storm in its own Envoy
//! (`--concurrency 1`, pinned to CPU 0; this process, clients and backends, on CPU 1).
//!
//! What the backend sees is what matters: new upgrades arriving per second (1-second buckets
//! from the restart) against its capacity, and how long until every client is back. Beyond its
//! capacity the backend answers 503 at once (an overloaded backend that sheds), so every arrival
//! counts whether it was accepted or not. A second backend, never restarted, holds sessions of
//! clients outside the storm through the same Envoy: they must all be alive at the end.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use floodgate_demo::envoy::{self, Envoy, Ports};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::system::{cpu_ns, open_files_limit, pin};

/// The storm's size and the backend's capacity.
#[derive(Clone, Debug)]
pub struct StormPlan {
    pub clients: usize,
    /// Sessions on the never-restarted backend (clients outside the storm).
    pub steady: usize,
    /// New upgrades per second the backend accepts.
    pub capacity: u32,
    /// How long the restarting backend refuses connections.
    pub down: Duration,
    /// The storm is cut off after this long.
    pub max_storm: Duration,
    pub rounds: usize,
    /// The cost stage: upgrades per second, and upgrades per measured phase.
    pub cost_rate: u32,
    pub cost_upgrades: usize,
}

impl StormPlan {
    pub fn quick() -> StormPlan {
        StormPlan {
            clients: 1_500,
            steady: 50,
            capacity: 500,
            down: Duration::from_secs(2),
            max_storm: Duration::from_secs(15),
            rounds: 1,
            cost_rate: 400,
            cost_upgrades: 200,
        }
    }
    pub fn full() -> StormPlan {
        StormPlan {
            clients: 5_000,
            steady: 100,
            capacity: 500,
            down: Duration::from_secs(2),
            max_storm: Duration::from_secs(60),
            rounds: 2,
            cost_rate: 400,
            cost_upgrades: 600,
        }
    }
    /// The time the capacity needs to take every client back (clients / capacity).
    pub fn ideal(&self) -> Duration {
        Duration::from_secs_f64(self.clients as f64 / f64::from(self.capacity))
    }
    fn burst(&self) -> u32 {
        (self.capacity / 5).max(1)
    }
}

// ---- the configurations ----

pub struct StormSetup {
    pub name: &'static str,
    pub what: String,
    filters: String,
    /// `circuit_breakers.thresholds` of the storm cluster (and of `cost_ws`, the cost stage's
    /// admitting cluster).
    thresholds: String,
    /// How the cost stage makes this configuration refuse every upgrade to `cost_refuse_ws`
    /// (None: it has no refusal that can be made on purpose), and that cluster's thresholds.
    refusal: Option<&'static str>,
    refuse_thresholds: String,
    /// Lines added under the cost stage's refusing route, and under every other route
    /// (`typed_per_filter_config`).
    route_filters: (&'static str, &'static str),
    /// Whether it runs in the storm; `false`: in the cost stage only.
    storm: bool,
}

const ADMISSION_CONTROL: &str = r#"- name: envoy.filters.http.admission_control
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.admission_control.v3.AdmissionControl
              enabled: {default_value: true, runtime_key: ac.enabled}
              sampling_window: 10s
              aggression: {default_value: 1.0, runtime_key: ac.aggression}
              sr_threshold: {default_value: {value: 95.0}, runtime_key: ac.sr_threshold}
              rps_threshold: {default_value: 5, runtime_key: ac.rps_threshold}
              max_rejection_probability: {default_value: {value: 95.0}, runtime_key: ac.max_rejection_probability}
              success_criteria:
                http_criteria:
                  http_success_status: [{start: 100, end: 500}]
          "#;

/// The upgrade budget as an operator would hand-write it in Lua: a token bucket per path
/// prefix in the worker's Lua state (exact with `--concurrency 1`), refusing with 503 and a
/// `retry-after` of the time to the next token. `/cost/refuse` is the cost stage's refusing
/// route (one upgrade per second).
const LUA_BUDGET: &str = r#"- name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  local budgets = {["/collab"] = {CAP, BURST}, ["/cost/refuse"] = {1, 1}}
                  local buckets = {}
                  function envoy_on_request(h)
                    local headers = h:headers()
                    if headers:get("upgrade") == nil then return end
                    local path = headers:get(":path") or ""
                    for prefix, b in pairs(budgets) do
                      if string.sub(path, 1, #prefix) == prefix then
                        local now = tonumber(h:timestampString(EnvoyTimestampResolution.MILLISECOND))
                        local s = buckets[prefix]
                        if s == nil then
                          s = {tokens = b[2], last = now}
                          buckets[prefix] = s
                        end
                        s.tokens = math.min(b[2], s.tokens + (now - s.last) * b[1] / 1000)
                        s.last = now
                        if s.tokens >= 1 then
                          s.tokens = s.tokens - 1
                          return
                        end
                        local wait = math.max(1, math.ceil((1 - s.tokens) / b[1]))
                        h:respond({[":status"] = "503", ["retry-after"] = tostring(wait),
                                   ["content-type"] = "application/json"}, '{"error":"rate_limited"}')
                        return
                      end
                    end
                  end
          "#;

/// `max_delay_ms` of the delaying configuration: under reconnecting-websocket's 4 s handshake
/// timeout and this bench's clients' 10 s.
const STORM_MAX_DELAY_MS: u32 = 2000;

/// The wasm floor's filters: `refuse` only on the cost stage's refusing route, `pass` on every
/// other, so that each request meets one wasm filter, as with Floodgate. A filter disabled on a
/// route is not created for its requests (Envoy builds the chain after matching the route).
const FLOOR_ROUTES: (&str, &str) = (
    r#"
                typed_per_filter_config:
                  wasm_floor_pass: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}"#,
    r#"
                typed_per_filter_config:
                  wasm_floor_refuse: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}"#,
);

const OPEN_THRESHOLDS: &str =
    "{max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000, max_retries: 1000000}";

pub fn setups(plan: &StormPlan) -> Vec<StormSetup> {
    let breaker = r#""consecutive_failures": 5, "open": {"base_ms": 5000, "max_ms": 30000, "jitter": 0.5}"#;
    let ramp_ms = plan.ideal().as_millis();
    let (cap, burst) = (plan.capacity, plan.burst());
    // Every session holds a request for its life: the thresholds must admit them all, so only
    // the pending queue (connections being set up) can bound a storm.
    let sessions = plan.clients + plan.clients / 20;
    let cb =
        format!("{{max_connections: {sessions}, max_pending_requests: 64, max_requests: {sessions}, max_retries: 3}}");
    // The cost stage's clusters: `cost_ws` admits under the storm cluster's policy, `cost_refuse_ws`
    // refuses every upgrade the way the storm's refusals are made.
    let forced = r#""cost_refuse_ws": {"mode": "forced_open"}"#;
    // `delay`: the storm cluster's `max_delay_ms` (the cost stage's refusals are never delayed).
    let budget_delayed = |policy: &str, delay: u32| {
        let sep = if policy.is_empty() { "" } else { ", " };
        format!(
            r#""collab_ws": {{{policy}{sep}"admission": {{"per_second": {cap}, "burst": {burst}, "max_delay_ms": {delay}}}}}, "cost_ws": {{{policy}{sep}"admission": {{"per_second": 1000000, "burst": 1000000}}}}, "cost_refuse_ws": {{{policy}{sep}"admission": {{"per_second": 1, "burst": 1}}}}"#
        )
    };
    let budget = |policy: &str| budget_delayed(policy, 0);
    let no_failures = r#""failure": {"statuses": [], "resets": false}"#;
    let floodgate = |name, what, config: String, refusal| StormSetup {
        name,
        what,
        filters: crate::setups::wasm_filter(&config),
        thresholds: OPEN_THRESHOLDS.into(),
        refusal: Some(refusal),
        refuse_thresholds: OPEN_THRESHOLDS.into(),
        route_filters: ("", ""),
        storm: true,
    };
    vec![
        StormSetup {
            name: "none",
            what: "no filter".into(),
            filters: String::new(),
            thresholds: OPEN_THRESHOLDS.into(),
            refusal: Some("a route's `direct_response: {status: 503}` (Envoy's own floor: no filter runs)"),
            refuse_thresholds: OPEN_THRESHOLDS.into(),
            route_filters: ("", ""),
            storm: true,
        },
        StormSetup {
            name: "circuit_breakers",
            what: format!("Envoy cluster `circuit_breakers` (max_requests {sessions}, max_pending_requests 64)"),
            filters: String::new(),
            thresholds: cb.clone(),
            refusal: Some("`max_pending_requests: 0` (every upgrade overflows the pending queue)"),
            refuse_thresholds: format!(
                "{{max_connections: {sessions}, max_pending_requests: 0, max_requests: {sessions}, max_retries: 3}}"
            ),
            route_filters: ("", ""),
            storm: true,
        },
        StormSetup {
            name: "admission_control",
            what: "Envoy `admission_control` (10 s window, success rate 95 %)".into(),
            filters: ADMISSION_CONTROL.into(),
            thresholds: OPEN_THRESHOLDS.into(),
            refusal: None,
            refuse_thresholds: OPEN_THRESHOLDS.into(),
            route_filters: ("", ""),
            storm: true,
        },
        StormSetup {
            name: "lua_budget",
            what: format!(
                "hand-written Lua guard: a token bucket of {cap} upgrades/s, {burst} at once, in the worker's Lua state; refuses with 503 and `retry-after` to the next token"
            ),
            filters: LUA_BUDGET.replace("CAP", &cap.to_string()).replace("BURST", &burst.to_string()),
            thresholds: OPEN_THRESHOLDS.into(),
            refusal: Some("its bucket of 1 upgrade/s"),
            refuse_thresholds: OPEN_THRESHOLDS.into(),
            route_filters: ("", ""),
            storm: true,
        },
        floodgate(
            "floodgate",
            "Floodgate local breaker (5 failures, open 5 s, jitter 0.5)".into(),
            format!(r#"{{"defaults": {{{breaker}}}, "breakers": {{{forced}}}}}"#),
            "`mode: forced_open`",
        ),
        floodgate(
            "floodgate_ramp",
            format!("Floodgate local breaker + `recovery_ramp_ms: {ramp_ms}`"),
            format!(r#"{{"defaults": {{{breaker}, "recovery_ramp_ms": {ramp_ms}}}, "breakers": {{{forced}}}}}"#),
            "`mode: forced_open`",
        ),
        floodgate(
            "floodgate_budget",
            format!("Floodgate local breaker + `admission: {{per_second: {cap}, burst: {burst}}}` on the storm cluster"),
            format!(r#"{{"defaults": {{{breaker}}}, "breakers": {{{}}}}}"#, budget("")),
            "a budget of 1 upgrade/s",
        ),
        floodgate(
            "floodgate_budget_only",
            format!(
                "Floodgate `admission: {{per_second: {cap}, burst: {burst}}}` alone (no outcome counts as a failure: the breaker never opens)"
            ),
            format!(r#"{{"breakers": {{{}}}}}"#, budget(no_failures)),
            "a budget of 1 upgrade/s",
        ),
        floodgate(
            "floodgate_budget_delay",
            format!(
                "Floodgate `admission: {{per_second: {cap}, burst: {burst}, max_delay_ms: {STORM_MAX_DELAY_MS}}}` alone: an upgrade past the budget waits up to {STORM_MAX_DELAY_MS} ms in the proxy for its token before being refused"
            ),
            format!(r#"{{"breakers": {{{}}}}}"#, budget_delayed(no_failures, STORM_MAX_DELAY_MS)),
            "a budget of 1 upgrade/s (not delayed)",
        ),
        StormSetup {
            name: "wasm_floor",
            what: "the wasm floor (bench/wasm-floor): a proxy-wasm filter with Floodgate's SDK that does nothing but pass (admitting routes) or answer 503 with Floodgate's refusal headers and a body of its size (the refusing route); cost stage only, not in the storm".into(),
            filters: format!(
                "{}\n          {}",
                crate::setups::floor_filter("wasm_floor_refuse", "refuse").trim_end(),
                crate::setups::floor_filter("wasm_floor_pass", "pass").trim_end()
            ),
            thresholds: OPEN_THRESHOLDS.into(),
            refusal: Some("the wasm floor's `refuse` (a 503 local reply and nothing else)"),
            refuse_thresholds: OPEN_THRESHOLDS.into(),
            route_filters: FLOOR_ROUTES,
            storm: false,
        },
    ]
}

const ENVOY: &str = r#"admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: ADMIN}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {address: 127.0.0.1, port_value: LISTEN}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          # ACCESS_LOG
          upgrade_configs: [{upgrade_type: websocket}]
          route_config:
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {prefix: "/steady"}
                route: {cluster: steady_ws, timeout: 0s}ROUTE_FILTERS
              - match: {prefix: "/cost/admit"}
                route: {cluster: cost_ws, timeout: 0s}ROUTE_FILTERS
              - match: {prefix: "/cost/refuse"}
                REFUSE_ROUTE
              - match: {prefix: "/"}
                route: {cluster: collab_ws, timeout: 0s}ROUTE_FILTERS
          http_filters:
          # FILTERS
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: collab_ws
    type: STATIC
    connect_timeout: 1s
    circuit_breakers:
      thresholds:
      - THRESHOLDS
    load_assignment:
      cluster_name: collab_ws
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: STORM_BACKEND}
  - name: cost_ws
    type: STATIC
    connect_timeout: 1s
    circuit_breakers:
      thresholds:
      - THRESHOLDS
    load_assignment:
      cluster_name: cost_ws
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: STEADY_BACKEND}
  - name: cost_refuse_ws
    type: STATIC
    connect_timeout: 1s
    circuit_breakers:
      thresholds:
      - REFUSE_THRESHOLDS
    load_assignment:
      cluster_name: cost_refuse_ws
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: STEADY_BACKEND}
  - name: steady_ws
    type: STATIC
    connect_timeout: 1s
    circuit_breakers:
      thresholds:
      - {max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000, max_retries: 1000000}
    load_assignment:
      cluster_name: steady_ws
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: STEADY_BACKEND}
"#;

pub fn render(setup: &StormSetup, admin: u16, listen: u16, storm: u16, steady: u16) -> String {
    let filters =
        if setup.filters.is_empty() { String::new() } else { format!("          {}\n", setup.filters.trim_end()) };
    let log = match std::env::var("FLOODGATE_STORM_DIAG") {
        Ok(dir) => format!(
            "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {dir}/{}-envoy.log\n              log_format: {{text_format_source: {{inline_string: \"%START_TIME(%s.%3f)% %REQ(X-ID)% %RESPONSE_CODE% %RESPONSE_FLAGS%\\n\"}}}}\n",
            setup.name
        ),
        Err(_) => String::new(),
    };
    ENVOY
        .replace("          # ACCESS_LOG\n", &log)
        .replace("          # FILTERS\n", &filters)
        .replace(
            "REFUSE_ROUTE",
            &if setup.name == "none" {
                "direct_response: {status: 503}".to_string()
            } else {
                format!("route: {{cluster: cost_refuse_ws, timeout: 0s}}{}", setup.route_filters.0)
            },
        )
        .replace("ROUTE_FILTERS", setup.route_filters.1)
        .replace("REFUSE_THRESHOLDS", &setup.refuse_thresholds)
        .replace("THRESHOLDS", &setup.thresholds)
        .replace("port_value: ADMIN", &format!("port_value: {admin}"))
        .replace("port_value: LISTEN", &format!("port_value: {listen}"))
        .replace("port_value: STORM_BACKEND", &format!("port_value: {storm}"))
        .replace("port_value: STEADY_BACKEND", &format!("port_value: {steady}"))
}

// ---- the backend ----

/// What turning an upgrade away costs the backend, in accepted upgrades.
const REFUSAL_COST: f64 = 0.25;

/// A WebSocket backend of bounded capacity that can restart. It speaks just enough of the
/// handshake for Envoy (101 with the upgrade headers); after it, bytes are echoed.
struct Backend {
    addr: SocketAddr,
    state: Arc<BackendState>,
    /// Ends the backend's thread (and with its runtime, every session task).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Sessions watch the epoch: a restart ends them; so does the end of the backend.
        self.state.epoch.send_modify(|e| *e += 1);
    }
}

/// Since `t0`: arrivals and acceptances per second, each arrival's read lag (ms).
type Series = (Instant, Vec<u64>, Vec<u64>, Vec<f32>);
/// One arrival, for diagnostics: its id, epoch ms at accept and at reading its head, whether the
/// backend was down at accept, whether it was accepted.
type Arrival = (u64, f64, f64, bool, bool);

struct BackendState {
    down: AtomicBool,
    /// New upgrades per second; 0 = unlimited.
    capacity: AtomicU64,
    burst: AtomicU64,
    bucket: Mutex<(f64, Instant)>,
    /// Arrivals and acceptances per second since `t0`, and each arrival's read lag (ms from
    /// accepting its connection to having read its request).
    series: Mutex<Series>,
    epoch: watch::Sender<u64>,
    sessions: AtomicI64,
    /// Diagnostics (`FLOODGATE_STORM_DIAG`): per arrival, its id, epoch ms at accept and at
    /// reading the head, whether the backend was down at accept, whether it was accepted.
    diag: Option<Mutex<Vec<Arrival>>>,
}

impl BackendState {
    fn admit(&self) -> bool {
        let cap = self.capacity.load(Ordering::SeqCst);
        if cap == 0 {
            return true;
        }
        let burst = self.burst.load(Ordering::SeqCst) as f64;
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * cap as f64).min(burst);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            // Turning an upgrade away costs a quarter of accepting one, and that work is owed
            // (up to a second's worth): a backend flooded past four times its capacity accepts
            // nothing at all, as overloaded servers do.
            b.0 = (b.0 - REFUSAL_COST).max(-(cap as f64));
            false
        }
    }

    fn count(&self, accepted: bool, lag: Duration) {
        let mut guard = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let (t0, arrivals, acceptances, lags) = &mut *guard;
        lags.push(lag.as_secs_f32() * 1000.0);
        let i = t0.elapsed().as_secs() as usize;
        for v in [&mut *arrivals, &mut *acceptances] {
            if v.len() <= i {
                v.resize(i + 1, 0);
            }
        }
        arrivals[i] += 1;
        if accepted {
            acceptances[i] += 1;
        }
    }

    fn reset_series(&self) {
        *self.series.lock().unwrap_or_else(|e| e.into_inner()) = (Instant::now(), vec![], vec![], vec![]);
    }

    fn series(&self) -> (Vec<u64>, Vec<u64>, Vec<f32>) {
        let s = self.series.lock().unwrap_or_else(|e| e.into_inner());
        (s.1.clone(), s.2.clone(), s.3.clone())
    }
}

impl Backend {
    /// The backend runs on its own thread and runtime, as a backend is its own process: the
    /// clients' tasks on the bench's runtime must not delay it reading the upgrades (a backend
    /// that reads late counts arrivals in the wrong second; see the storm's notes).
    async fn start(capacity: u32, burst: u32) -> anyhow::Result<Backend> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(BackendState {
            down: AtomicBool::new(false),
            capacity: AtomicU64::new(u64::from(capacity)),
            burst: AtomicU64::new(u64::from(burst)),
            bucket: Mutex::new((f64::from(burst), Instant::now())),
            series: Mutex::new((Instant::now(), vec![], vec![], vec![])),
            epoch: watch::channel(0).0,
            sessions: AtomicI64::new(0),
            diag: std::env::var_os("FLOODGATE_STORM_DIAG").map(|_| Mutex::new(vec![])),
        });
        let st = state.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("storm-backend".into()).spawn(move || {
            // Ahead of the clients' threads on the shared core, as a backend on its own core
            // would be: it must read upgrades when they arrive.
            if let Some(tid) = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|l| l.file_name().map(|t| t.to_string_lossy().into_owned()))
            {
                let _ = std::process::Command::new("renice").args(["-n", "-10", "-p", &tid]).output();
            }
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else { return };
                let accept = async {
                    loop {
                        let Ok((sock, _)) = listener.accept().await else { continue };
                        let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
                        let _ = sock.set_nodelay(true);
                        let at = (Instant::now(), epoch_ms(), st.down.load(Ordering::SeqCst));
                        tokio::spawn(serve(sock, st.clone(), at));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        })?;
        Ok(Backend { addr, state, stop: Some(stop) })
    }

    /// Drops every session and refuses connections for `down`, then takes upgrades again at its
    /// capacity, `burst` of them at once.
    async fn restart(&self, down: Duration, capacity: u32, burst: u32) {
        self.state.down.store(true, Ordering::SeqCst);
        self.state.epoch.send_modify(|e| *e += 1);
        tokio::time::sleep(down).await;
        self.state.capacity.store(u64::from(capacity), Ordering::SeqCst);
        self.state.burst.store(u64::from(burst), Ordering::SeqCst);
        *self.state.bucket.lock().unwrap_or_else(|e| e.into_inner()) = (f64::from(burst), Instant::now());
        self.state.down.store(false, Ordering::SeqCst);
    }
}

async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        if buf.len() > 16 * 1024 {
            return None;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

async fn serve(mut sock: TcpStream, st: Arc<BackendState>, at: (Instant, f64, bool)) {
    if st.down.load(Ordering::SeqCst) {
        return; // dropped with linger 0: a reset, as a process that is not listening yet
    }
    let mut epoch = st.epoch.subscribe();
    let mut buf = Vec::new();
    let Some(head_len) = read_head(&mut sock, &mut buf).await else { return };
    let accepted = st.admit();
    st.count(accepted, at.0.elapsed());
    if let Some(d) = &st.diag {
        let head = String::from_utf8_lossy(&buf[..head_len]).to_ascii_lowercase();
        let id = head.lines().find_map(|l| l.strip_prefix("x-id:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        d.lock().unwrap_or_else(|e| e.into_inner()).push((id, at.1, epoch_ms(), at.2, accepted));
    }
    if !accepted {
        let _ = sock
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\nx-backend: overloaded\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    }
    let ok = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    if sock.write_all(ok).await.is_err() {
        return;
    }
    st.sessions.fetch_add(1, Ordering::SeqCst);
    let mut rest = buf.split_off(head_len);
    let mut chunk = [0u8; 1024];
    loop {
        if !rest.is_empty() {
            if sock.write_all(&rest).await.is_err() {
                break;
            }
            rest.clear();
        }
        tokio::select! {
            r = sock.read(&mut chunk) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            },
            _ = epoch.changed() => break,
        }
    }
    st.sessions.fetch_sub(1, Ordering::SeqCst);
}

// ---- the clients ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// Exponential backoff with jitter (0.5 s doubling to 30 s, "equal jitter"), as
    /// reconnecting-websocket and socket.io do; ignores `retry-after`.
    Backoff,
    /// Waits `retry-after` when the refusal carries one, else backs off like `Backoff`.
    RetryAfter,
    /// Retries at once (after 100-150 ms), as a bare `onclose = connect` does.
    Immediate,
}

fn style(i: usize) -> Style {
    match i % 10 {
        0..=5 => Style::Backoff,
        6..=8 => Style::RetryAfter,
        _ => Style::Immediate,
    }
}

#[derive(Default)]
struct ClientStats {
    connected: AtomicI64,
    attempts: AtomicU64,
    /// Refused by the proxy's protection (Floodgate, circuit breakers, admission control).
    refused: AtomicU64,
    /// Refused by the backend (overloaded) or failed upstream (503 made by Envoy for a backend
    /// that is down).
    failed: AtomicU64,
    errors: AtomicU64,
}

struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn delay(style: Style, attempt: u32, retry_after: Option<u64>, rng: &mut Rng) -> Duration {
    let u = rng.unit();
    let secs = match (style, retry_after) {
        (Style::Immediate, _) => 0.1 + 0.05 * u,
        (Style::RetryAfter, Some(s)) => s as f64 + 0.1 * u,
        _ => {
            let d = (0.5 * 2f64.powi(attempt.min(10) as i32)).min(30.0);
            d / 2.0 + d / 2.0 * u
        }
    };
    Duration::from_secs_f64(secs)
}

enum Answer {
    Connected(TcpStream),
    Refused(Option<u64>),
    Failed,
    Error,
}

async fn attempt(addr: SocketAddr, path: &str) -> Answer {
    let Ok(Ok(mut sock)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await else {
        return Answer::Error;
    };
    let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
    let _ = sock.set_nodelay(true);
    static IDS: AtomicU64 = AtomicU64::new(1);
    let id = IDS.fetch_add(1, Ordering::Relaxed);
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: collab\r\nx-id: {id}\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    if sock.write_all(req.as_bytes()).await.is_err() {
        return Answer::Error;
    }
    let mut buf = Vec::new();
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut sock, &mut buf)).await;
    let Ok(Some(len)) = head else { return Answer::Error };
    let head = String::from_utf8_lossy(&buf[..len]).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if status == 101 {
        return Answer::Connected(sock);
    }
    let header = |name: &str| {
        head.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_string()))
    };
    let retry_after = header("retry-after").and_then(|v| v.parse().ok());
    // The body names admission_control's refusals; read what is there (it is small).
    let mut body = buf[len..].to_vec();
    let want: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0).min(512);
    while body.len() < want {
        let mut chunk = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(2), sock.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let body = String::from_utf8_lossy(&body);
    // Envoy's own 503s for a backend that is down say "upstream connect error"; the backend's
    // own say `x-backend`; every other refusal is the protection's (admission control's denial
    // carries neither).
    let protection = header("x-floodgate").is_some()
        || header("x-envoy-overloaded").is_some()
        || (status == 503 && header("x-backend").is_none() && !body.contains("upstream connect error"));
    if protection {
        Answer::Refused(retry_after)
    } else {
        Answer::Failed
    }
}

async fn client(i: usize, addr: SocketAddr, stats: Arc<ClientStats>, mut stop: watch::Receiver<bool>) {
    let style = style(i);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut tries = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let wait = match attempt(addr, "/collab").await {
            Answer::Connected(mut sock) => {
                tries = 0;
                stats.connected.fetch_add(1, Ordering::SeqCst);
                let mut chunk = [0u8; 256];
                let stopped = loop {
                    tokio::select! {
                        r = sock.read(&mut chunk) => if matches!(r, Ok(0) | Err(_)) { break false },
                        _ = stop.changed() => break true,
                    }
                };
                stats.connected.fetch_sub(1, Ordering::SeqCst);
                if stopped {
                    return;
                }
                delay(style, 0, None, &mut rng)
            }
            Answer::Refused(retry_after) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                tries += 1;
                delay(style, tries, retry_after, &mut rng)
            }
            Answer::Failed => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tries += 1;
                delay(style, tries, None, &mut rng)
            }
            Answer::Error => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tries += 1;
                delay(style, tries, None, &mut rng)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Sessions of clients outside the storm, on the backend that never restarts.
async fn steady_sessions(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        for _ in 0..20 {
            if let Answer::Connected(s) = attempt(addr, "/steady").await {
                out.push(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out
}

/// How many sessions still echo a ping.
async fn alive(sessions: &mut [TcpStream]) -> usize {
    let mut n = 0;
    for s in sessions.iter_mut() {
        let ping = async {
            s.write_all(b"ping").await.ok()?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.ok()?;
            (&b == b"ping").then_some(())
        };
        if let Ok(Some(())) = tokio::time::timeout(Duration::from_secs(2), ping).await {
            n += 1;
        }
    }
    n
}

// ---- one run ----

#[derive(Clone, Debug)]
pub struct StormRun {
    /// Upgrades reaching the backend per second since the restart (accepted or not).
    pub arrivals: Vec<u64>,
    pub accepted: Vec<u64>,
    /// The backend's read lag (accepting a connection to having read its upgrade), p99 and
    /// max, ms: the measurement's own error on which second an arrival is counted in.
    pub read_lag_ms: [f32; 2],
    /// Seconds from the backend's return until every client was connected again (None: cut off).
    pub reconnect_s: Option<f64>,
    /// Seconds from the backend's return until 95 % of the clients were connected again.
    pub back95_s: Option<f64>,
    pub connected_at_end: i64,
    pub refused: u64,
    pub failed: u64,
    pub errors: u64,
    pub attempts: u64,
    pub storm_s: f64,
    pub envoy_cpu_ns: u64,
    pub steady_alive: usize,
    pub steady: usize,
}

impl StormRun {
    pub fn peak(&self) -> u64 {
        self.arrivals.iter().copied().max().unwrap_or(0)
    }
    pub fn p99(&self) -> u64 {
        let mut v = self.arrivals.clone();
        v.sort_unstable();
        if v.is_empty() {
            return 0;
        }
        v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
    }
}

async fn run_one(setup: &StormSetup, plan: &StormPlan, steady: &Backend) -> anyhow::Result<StormRun> {
    let backend = Backend::start(0, 0).await?;
    let ports = Ports::free(backend.addr.port())?;
    let config = render(setup, ports.admin, ports.listen, backend.addr.port(), steady.addr.port());
    let (ok, log) = envoy::validate(&config).await?;
    if !ok {
        bail!("{} does not validate:\n{log}", setup.name);
    }
    let proxy = Envoy::start(&config, ports, 1).await.with_context(|| setup.name)?;
    let pid = proxy.pid().unwrap_or(0);
    pin(pid, 0);
    let mut held = steady_sessions(proxy.listen, plan.steady).await;
    let stats = Arc::new(ClientStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(plan.clients);
    // Everyone connects (the backend takes them all for now), spread over two seconds.
    for i in 0..plan.clients {
        let (s, r) = (stats.clone(), stop_rx.clone());
        let addr = proxy.listen;
        let start = Duration::from_secs_f64(2.0 * i as f64 / plan.clients as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(start).await;
            client(i, addr, s, r).await;
        }));
    }
    let filled = wait_all(&stats, plan.clients, Duration::from_secs(180)).await;
    if filled.is_none() {
        eprintln!(
            "storm {}: only {} of {} clients connected before the storm",
            setup.name,
            stats.connected.load(Ordering::SeqCst),
            plan.clients
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = [&stats.refused, &stats.failed, &stats.errors, &stats.attempts].map(|c| c.load(Ordering::SeqCst));
    let cpu_before = cpu_ns(pid);
    backend.state.reset_series();
    let started = Instant::now();
    let t0_ms = epoch_ms();
    backend.restart(plan.down, plan.capacity, plan.burst()).await;
    let up = Instant::now();
    let up_ms = epoch_ms();
    let (back95, reconnect) = wait_all_95(&stats, plan.clients, plan.max_storm.saturating_sub(plan.down)).await;
    let reconnect_s = reconnect.map(|d| d.as_secs_f64());
    let back95_s = back95.map(|d| d.as_secs_f64());
    let _ = up;
    let storm_s = started.elapsed().as_secs_f64();
    let envoy_cpu_ns = cpu_ns(pid).saturating_sub(cpu_before);
    let after = [&stats.refused, &stats.failed, &stats.errors, &stats.attempts].map(|c| c.load(Ordering::SeqCst));
    let (arrivals, accepted, mut lags) = backend.state.series();
    lags.sort_unstable_by(f32::total_cmp);
    let read_lag_ms = [0.99, 1.0].map(|q| {
        let i = ((lags.len() as f64 * q).ceil() as usize).clamp(1, lags.len().max(1)) - 1;
        lags.get(i).copied().unwrap_or(0.0)
    });
    if let (Ok(dir), Some(d)) = (std::env::var("FLOODGATE_STORM_DIAG"), &backend.state.diag) {
        let mut out = format!("# t0 {t0_ms:.3} up {up_ms:.3}\n");
        for (id, acc, head, down, ok) in d.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "{id} {acc:.3} {head:.3} {} {}", u8::from(*down), u8::from(*ok));
        }
        let _ = std::fs::write(format!("{dir}/{}-backend.txt", setup.name), out);
    }
    let steady_alive = alive(&mut held).await;
    let connected_at_end = stats.connected.load(Ordering::SeqCst);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    drop(held);
    drop(proxy);
    Ok(StormRun {
        arrivals,
        accepted,
        read_lag_ms,
        reconnect_s,
        back95_s,
        connected_at_end,
        refused: after[0] - before[0],
        failed: after[1] - before[1],
        errors: after[2] - before[2],
        attempts: after[3] - before[3],
        storm_s,
        envoy_cpu_ns,
        steady_alive,
        steady: plan.steady,
    })
}

/// Envoy's CPU per admitted and per refused upgrade of one configuration, measured apart from
/// the storm (see [`cost_stage`]): one value per repetition.
#[derive(Clone, Debug, Default)]
pub struct Costs {
    /// Envoy CPU per admitted upgrade (connect, upgrade through the filters, 101, close), µs.
    pub admit_us: Vec<f64>,
    /// Envoy CPU per refused upgrade (connect, refusal, close), µs; empty without a refusal phase.
    pub refuse_us: Vec<f64>,
    pub admitted: u64,
    pub refused: u64,
    /// Answers that were neither what the phase expected (for example admitted in the refusal
    /// phase, whose CPU is taken off at the admitted price).
    pub other: u64,
}

pub fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

struct Phase {
    cpu_ns: u64,
    secs: f64,
    admitted: u64,
    refused: u64,
    other: u64,
}

/// `n` upgrades to `path`, open loop at `rate` per second, each closed at once after its
/// answer; Envoy's CPU from the first until every answer is in and the closes settled.
async fn phase(addr: SocketAddr, pid: u32, path: &'static str, rate: u32, n: usize) -> Phase {
    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_ns(pid);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / f64::from(rate))).await;
        let (a, r, o) = (admitted.clone(), refused.clone(), other.clone());
        tasks.push(tokio::spawn(async move {
            let c = match attempt(addr, path).await {
                Answer::Connected(_) => &a,
                Answer::Refused(_) => &r,
                _ => &o,
            };
            c.fetch_add(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Phase {
        cpu_ns: cpu_ns(pid).saturating_sub(cpu0),
        secs: start.elapsed().as_secs_f64(),
        admitted: admitted.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        other: other.load(Ordering::Relaxed),
    }
}

/// Repetitions of the cost stage.
const COST_REPS: usize = 5;

/// The cost stage, after the storms: every configuration's Envoy at once (each `--concurrency 1`
/// on CPU 0, only one loaded at a time), so all are measured in the same minutes and whatever
/// else the machine does falls on all of them alike. After a warm-up of both kinds and Envoy's
/// idle rate (its base load), each repetition runs, configuration after configuration (the order
/// rotating), `cost_upgrades` upgrades it admits (`/cost/admit`) then as many it refuses
/// (`/cost/refuse`). CPU per upgrade = (phase CPU − idle rate × phase time) / upgrades; a refusal
/// phase's few admitted upgrades are taken off at that repetition's admitted price.
async fn cost_stage(plan: &StormPlan, setups: &[StormSetup], backend: &Backend) -> anyhow::Result<Vec<Costs>> {
    let (rate, n) = (plan.cost_rate, plan.cost_upgrades);
    let port = backend.addr.port();
    let mut envoys = Vec::with_capacity(setups.len());
    for s in setups {
        let ports = Ports::free(port)?;
        let proxy = Envoy::start(&render(s, ports.admin, ports.listen, port, port), ports, 1)
            .await
            .with_context(|| format!("cost stage: {}", s.name))?;
        let pid = proxy.pid().unwrap_or(0);
        pin(pid, 0);
        envoys.push((proxy, pid));
    }
    for ((proxy, pid), s) in envoys.iter().zip(setups) {
        phase(proxy.listen, *pid, "/cost/admit", rate, n / 2).await;
        if s.refusal.is_some() {
            phase(proxy.listen, *pid, "/cost/refuse", rate, n / 2).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle0: Vec<u64> = envoys.iter().map(|(_, pid)| cpu_ns(*pid)).collect();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle: Vec<f64> = envoys
        .iter()
        .zip(&idle0)
        .map(|((_, pid), c0)| cpu_ns(*pid).saturating_sub(*c0) as f64 / t.elapsed().as_secs_f64())
        .collect();
    let mut costs = vec![Costs::default(); setups.len()];
    for rep in 0..COST_REPS {
        for k in 0..setups.len() {
            let i = (k + rep) % setups.len();
            let (proxy, pid) = &envoys[i];
            let net = |p: &Phase| (p.cpu_ns as f64 - idle[i] * p.secs).max(0.0);
            let c = &mut costs[i];
            let a = phase(proxy.listen, *pid, "/cost/admit", rate, n).await;
            let admit_ns = net(&a) / a.admitted.max(1) as f64;
            c.admit_us.push(admit_ns / 1000.0);
            c.admitted += a.admitted;
            c.other += a.refused + a.other;
            if setups[i].refusal.is_some() {
                let r = phase(proxy.listen, *pid, "/cost/refuse", rate, n).await;
                if r.refused > 0 {
                    c.refuse_us.push((net(&r) - admit_ns * r.admitted as f64).max(0.0) / r.refused as f64 / 1000.0);
                }
                c.refused += r.refused;
                c.other += r.admitted + r.other;
            }
        }
    }
    Ok(costs)
}

/// When 95 % of the `n` clients, then all of them, were connected (each `None` if not within).
async fn wait_all_95(stats: &ClientStats, n: usize, within: Duration) -> (Option<Duration>, Option<Duration>) {
    let start = Instant::now();
    let mut p95 = None;
    while start.elapsed() < within {
        let c = stats.connected.load(Ordering::SeqCst);
        if p95.is_none() && c as f64 >= n as f64 * 0.95 {
            p95 = Some(start.elapsed());
        }
        if c >= n as i64 {
            return (p95, Some(start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (p95, None)
}

async fn wait_all(stats: &ClientStats, n: usize, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if stats.connected.load(Ordering::SeqCst) >= n as i64 {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

pub struct StormResults {
    pub plan: StormPlan,
    pub setups: Vec<(&'static str, String)>,
    /// Per configuration, how the cost stage makes refusals.
    pub refusals: Vec<Option<&'static str>>,
    /// Per configuration, its runs (one per round).
    pub runs: Vec<Vec<StormRun>>,
    /// Per configuration, its costs (the cost stage).
    pub costs: Vec<Costs>,
    pub open_files: u64,
}

/// Every configuration, `plan.rounds` times, interleaved (A B C ... A B C ...).
pub async fn run(plan: StormPlan) -> anyhow::Result<StormResults> {
    let open_files = open_files_limit();
    let needed = (plan.clients + plan.steady) as u64 * 2 + 512;
    if open_files < needed {
        bail!("the storm needs {needed} open files, the limit is {open_files}: raise `ulimit -n`");
    }
    pin(std::process::id(), 1);
    let steady = Backend::start(0, 0).await?;
    let only = std::env::var("FLOODGATE_STORM_CONFIGS").unwrap_or_default();
    let setups: Vec<StormSetup> =
        setups(&plan).into_iter().filter(|s| only.is_empty() || only.split(',').any(|o| o == s.name)).collect();
    let mut runs: Vec<Vec<StormRun>> = setups.iter().map(|_| vec![]).collect();
    for round in 0..plan.rounds {
        for (i, setup) in setups.iter().enumerate().filter(|(_, s)| s.storm) {
            let r = run_one(setup, &plan, &steady).await?;
            eprintln!(
                "storm round {round} {}: peak {}/s p99 {}/s, back in {:?} s, refused {}, alive {}/{}",
                setup.name,
                r.peak(),
                r.p99(),
                r.reconnect_s,
                r.refused,
                r.steady_alive,
                r.steady
            );
            runs[i].push(r);
        }
    }
    let costs = cost_stage(&plan, &setups, &steady).await?;
    for (s, c) in setups.iter().zip(&costs) {
        eprintln!("storm costs {}: admitted {:?} µs, refused {:?} µs", s.name, c.admit_us, c.refuse_us);
    }
    Ok(StormResults {
        plan,
        setups: setups.iter().map(|s| (s.name, s.what.clone())).collect(),
        refusals: setups.iter().map(|s| s.refusal).collect(),
        runs,
        costs,
        open_files,
    })
}

// ---- the report ----

fn spread(values: &[f64], digits: usize) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    if values.len() == 1 || (hi - lo).abs() < 10f64.powi(-(digits as i32)) {
        format!("{lo:.digits$}")
    } else {
        format!("{lo:.digits$}–{hi:.digits$}")
    }
}

/// The markdown section (between `<!-- storm -->` markers, so a storm-only run can replace it).
pub fn report(r: &StormResults, svg_name: &str) -> String {
    let p = &r.plan;
    let mut md = String::new();
    let _ = writeln!(md, "<!-- storm -->\n## Reconnect storm\n");
    let _ = writeln!(
        md,
        "{} WebSocket clients hold sessions through Envoy (`--concurrency 1`, pinned to one core) to a backend \
         that accepts **{} new upgrades per second**, {} at once (beyond that it answers 503 at once, and each upgrade it turns \
         away costs it a quarter of an accepted one, so past four times its capacity it accepts none: an \
         overloaded backend falls over). The backend restarts: every session drops and connections are refused \
         for {} s, then it comes back at its capacity. Clients \
         reconnect as libraries do: 60 % exponential backoff with jitter (0.5 s doubling to 30 s), 30 % honour \
         `retry-after` (else back off), 10 % retry at once (100–150 ms). {} sessions of clients outside the storm, \
         on a backend that never restarts, share the Envoy. The capacity allows everyone back in {:.1} s \
         (clients / capacity), counted from the backend's return; runs are cut off at {} s after the restart. \
         Buckets are 1 s from the restart; with fewer than 100 of them, the p99 is the peak. {} round(s), configurations interleaved; a range is \
         the spread over rounds. Open-file limit {}.\n",
        p.clients,
        p.capacity,
        p.burst(),
        p.down.as_secs(),
        p.steady,
        p.ideal().as_secs_f64(),
        p.max_storm.as_secs(),
        p.rounds,
        r.open_files
    );
    let _ = writeln!(md, "| configuration | what |\n|---|---|");
    for (n, what) in &r.setups {
        let _ = writeln!(md, "| `{n}` | {what} |");
    }
    let _ = writeln!(
        md,
        "\n| configuration | upgrades/s at the backend: peak | p99 of 1-s buckets | worst second past capacity + burst ({}) | 95 % back after (s) | all back after (s) | vs ideal {:.1} s | refused by the proxy | refusals/s per Envoy core | Envoy CPU per refusal (µs, median of the cost stage) | Envoy CPU in the storm per upgrade attempt (µs) | undisturbed sessions alive | backend read lag p99 / max (ms) |",
        p.capacity + p.burst(),
        p.ideal().as_secs_f64()
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (ci, ((name, _), runs)) in r.setups.iter().zip(&r.runs).enumerate().filter(|(_, (_, runs))| !runs.is_empty()) {
        let f = |g: &dyn Fn(&StormRun) -> f64, d: usize| spread(&runs.iter().map(g).collect::<Vec<_>>(), d);
        let back: Vec<String> = runs
            .iter()
            .map(|x| x.reconnect_s.map(|s| format!("{s:.1}")).unwrap_or_else(|| format!(">{}", p.max_storm.as_secs())))
            .collect();
        let ratio: Vec<String> = runs
            .iter()
            .map(|x| match x.reconnect_s {
                Some(s) => format!("{:.2}×", s / p.ideal().as_secs_f64()),
                None => format!("not all ({} of {})", x.connected_at_end, p.clients),
            })
            .collect();
        let over = |x: &StormRun| (x.peak() as f64 - f64::from(p.capacity + p.burst())).max(0.0);
        let per_attempt = |x: &StormRun| x.envoy_cpu_ns as f64 / x.attempts.max(1) as f64 / 1000.0;
        let _ = writeln!(
            md,
            "| `{name}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f(&|x| x.peak() as f64, 0),
            f(&|x| x.p99() as f64, 0),
            f(&over, 0),
            runs.iter()
                .map(|x| x.back95_s.map(|s| format!("{s:.1}")).unwrap_or_else(|| "–".into()))
                .collect::<Vec<_>>()
                .join(", "),
            back.join(", "),
            ratio.join(", "),
            f(&|x| x.refused as f64, 0),
            f(&|x| x.refused as f64 / x.storm_s, 0),
            median(&r.costs[ci].refuse_us).map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".into()),
            f(&per_attempt, 1),
            runs.iter().map(|x| format!("{}/{}", x.steady_alive, x.steady)).collect::<Vec<_>>().join(", "),
            runs.iter()
                .map(|x| format!("{:.0} / {:.0}", x.read_lag_ms[0], x.read_lag_ms[1]))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let _ = writeln!(
        md,
        "\n| configuration | upgrade attempts by clients | accepted by the backend: peak/s | 503 from the backend (overloaded) or for it (down) | connection errors |\n|---|---|---|---|---|"
    );
    for ((name, _), runs) in r.setups.iter().zip(&r.runs).filter(|(_, runs)| !runs.is_empty()) {
        let f = |g: &dyn Fn(&StormRun) -> f64| spread(&runs.iter().map(g).collect::<Vec<_>>(), 0);
        let _ = writeln!(
            md,
            "| `{name}` | {} | {} | {} | {} |",
            f(&|x| x.attempts as f64),
            f(&|x| x.accepted.iter().copied().max().unwrap_or(0) as f64),
            f(&|x| x.failed as f64),
            f(&|x| x.errors as f64),
        );
    }
    let _ = writeln!(
        md,
        "\n\"Refused by the proxy\" counts answers made by the protection itself (a Floodgate refusal, \
         `x-envoy-overloaded`, admission control's denial) during the storm; 503s for a backend that is down or \
         overloaded are not refusals. Envoy CPU per refusal is measured apart (below); Envoy CPU in the storm per upgrade \
         attempt divides all of Envoy's CPU during the storm (admitted upgrades, refusals, dropped and proxied sessions \
         alike) by the clients' attempts. The backend runs \
         on its own thread and runtime (as a backend is its own process), ahead of the clients (nice -10), and counts an upgrade in the second it \
         reads it; its read lag (from accepting the connection to having read the upgrade) is the measurement's \
         own error on which second an arrival falls in.\n"
    );
    let _ = writeln!(
        md,
        "### What a refusal costs Envoy\n\nMeasured apart from the storm, after the storms, with every configuration's Envoy \
         up at once (each `--concurrency 1` on the same core, one loaded at a time), so that all are measured in the same \
         minutes and whatever else the machine does falls on all alike. After a warm-up and each Envoy's idle rate (its base \
         load), {COST_REPS} repetitions run, configuration after configuration (the order rotating): {} upgrades at {}/s that \
         the configuration admits (to `cost_ws`, a backend without limit, under the storm cluster's policy; each closed at \
         once after its 101), then {} that it refuses (to `cost_refuse_ws`, refused the way the storm's refusals are made). \
         CPU per upgrade is the phase's Envoy CPU (all threads, from the scheduler) less the idle rate for as long, over the \
         upgrades; the few upgrades a refusal phase admits are taken off at that repetition's admitted price. Every upgrade \
         is a new connection, as in the storm. Figures are the median of the repetitions, then their range.\n",
        p.cost_upgrades, p.cost_rate, p.cost_upgrades
    );
    let _ = writeln!(
        md,
        "| configuration | refusals made by | Envoy CPU per refused upgrade (µs) | per admitted upgrade (µs) | admitted ÷ refused (medians) | measured: admitted, refused (other) |\n|---|---|---|---|---|---|"
    );
    let med = |v: &[f64]| -> String {
        match median(v) {
            None => "–".into(),
            Some(m) => format!("{m:.1} ({})", spread(v, 1)),
        }
    };
    for (((name, _), refusal), c) in r.setups.iter().zip(&r.refusals).zip(&r.costs) {
        let ratio = match (median(&c.admit_us), median(&c.refuse_us)) {
            (Some(a), Some(f)) if f > 0.0 => format!("{:.1}×", a / f),
            _ => "–".into(),
        };
        let _ = writeln!(
            md,
            "| `{name}` | {} | {} | {} | {ratio} | {}, {} ({}) |",
            refusal.unwrap_or("– (no refusal made on purpose)"),
            med(&c.refuse_us),
            med(&c.admit_us),
            c.admitted,
            c.refused,
            c.other,
        );
    }
    let _ = writeln!(md);
    md.push_str(&targets(r));
    let _ = writeln!(md, "![new upgrades per second at the backend, per configuration]({svg_name})\n");
    let _ = writeln!(md, "<!-- /storm -->");
    md
}

/// The issue's targets, checked on these figures (every round of the storm must meet its
/// targets; costs are the cost stage's medians).
fn targets(r: &StormResults) -> String {
    let p = &r.plan;
    let runs = |name: &str| r.setups.iter().position(|(n, _)| *n == name).map(|i| &r.runs[i]);
    let verdict = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let list = |v: Vec<String>| v.join(", ");
    let mut md = String::from("### Targets\n\n");
    let limit = p.capacity + p.burst();
    for name in ["floodgate_budget_delay", "floodgate_budget_only", "floodgate_budget"] {
        let Some(runs) = runs(name) else { continue };
        let peaks: Vec<u64> = runs.iter().map(StormRun::peak).collect();
        let ratios: Vec<Option<f64>> =
            runs.iter().map(|x| x.reconnect_s.map(|s| s / p.ideal().as_secs_f64())).collect();
        let _ = writeln!(
            md,
            "- `{name}`: busiest second at the backend {} (capacity + burst {limit}): {}; every client back after {} × clients/capacity (1.5× at most): {}.",
            list(peaks.iter().map(u64::to_string).collect()),
            verdict(peaks.iter().all(|&v| v <= u64::from(limit))),
            list(ratios.iter().map(|x| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "never".into())).collect()),
            verdict(ratios.iter().all(|x| x.is_some_and(|v| v <= 1.5))),
        );
    }
    let cost = |name: &str| {
        let i = r.setups.iter().position(|(n, _)| *n == name)?;
        Some((median(&r.costs.get(i)?.admit_us)?, median(&r.costs.get(i)?.refuse_us)?))
    };
    let lua = cost("lua_budget");
    for name in ["floodgate_budget_only", "floodgate_budget", "floodgate"] {
        let (Some((admit, refuse)), Some((_, lua_refuse))) = (cost(name), lua) else { continue };
        let _ = writeln!(
            md,
            "- `{name}`: a refusal costs Envoy {refuse:.1} µs against the Lua guard's {lua_refuse:.1} µs (no more: {}); admitting costs {:.1} times a refusal (3× at least: {}). Medians of the cost stage.",
            verdict(refuse <= lua_refuse),
            admit / refuse.max(0.001),
            verdict(admit >= 3.0 * refuse),
        );
    }
    md.push_str(&breakdown(&cost));
    md.push('\n');
    md
}

/// Which part of a refusal's and an admission's cost is whose, from the cost stage's medians
/// (`cost`: a configuration's (admitted, refused) medians): Envoy's own floor (`none`), the
/// platform's part (the wasm floor over `none`), the breaker's (Floodgate over the wasm floor)
/// and Lua's (`lua_budget` over `none`). A reading of the figures, not a target.
fn breakdown(cost: &dyn Fn(&str) -> Option<(f64, f64)>) -> String {
    let (Some((none_admit, none_refuse)), Some((floor_admit, floor_refuse))) = (cost("none"), cost("wasm_floor"))
    else {
        return String::new();
    };
    let floodgates = ["floodgate", "floodgate_budget", "floodgate_budget_only", "floodgate_budget_delay"];
    let mut md = String::new();
    for (what, floor, base, pick) in [
        ("a refusal", floor_refuse, none_refuse, (|c: (f64, f64)| c.1) as fn((f64, f64)) -> f64),
        ("an admitted upgrade", floor_admit, none_admit, |c: (f64, f64)| c.0),
    ] {
        let mut line = format!(
            "- Breakdown of {what} (not a target: differences of the medians above): Envoy with no filter {base:.1} µs; \
             the platform's part (`wasm_floor` − `none`: Envoy's wasm runtime, the stream context, the SDK's dispatch{}) {:+.1} µs",
            if what == "a refusal" { ", a filter's local reply instead of a route's" } else { "" },
            floor - base
        );
        if let Some(lua) = cost("lua_budget") {
            let _ = write!(line, "; Lua's part (`lua_budget` − `none`) {:+.1} µs", pick(lua) - base);
        }
        let parts: Vec<String> =
            floodgates.iter().filter_map(|n| cost(n).map(|c| format!("`{n}` {:+.1} µs", pick(c) - floor))).collect();
        if !parts.is_empty() {
            let _ = write!(line, "; the breaker's part (Floodgate − `wasm_floor`): {}", parts.join(", "));
        }
        let _ = writeln!(md, "{line}.");
    }
    md
}

const COLORS: [&str; 10] =
    ["#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#bcbd22", "#7f7f7f"];

/// New upgrades per second at the backend, one polyline per configuration (first round), and the
/// capacity as a dashed line. Plain SVG, no dependencies.
pub fn svg(r: &StormResults) -> String {
    let (w, h, left, bottom, top, right) = (860.0, 420.0, 60.0, 40.0, 20.0, 200.0);
    let series: Vec<(&str, &Vec<u64>)> =
        r.setups.iter().zip(&r.runs).filter_map(|((n, _), runs)| Some((*n, &runs.first()?.arrivals))).collect();
    let max_x = series.iter().map(|(_, s)| s.len()).max().unwrap_or(1).max(1) as f64;
    let max_y = series.iter().flat_map(|(_, s)| s.iter().copied()).max().unwrap_or(1).max(u64::from(r.plan.capacity))
        as f64
        * 1.1;
    let (pw, ph) = (w - left - right, h - top - bottom);
    let x = |t: f64| left + t / max_x * pw;
    let y = |v: f64| top + ph - v / max_y * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#,
        top + ph,
        left + pw,
        top + ph,
        top + ph
    );
    for i in 0..=5 {
        let v = max_y / 5.0 * f64::from(i);
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#, left - 4.0, y(v) + 4.0, v);
        let t = max_x / 5.0 * f64::from(i);
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{:.0}</text>"#, x(t), top + ph + 16.0, t);
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the backend restarted</text>"#,
        left + pw / 2.0,
        h - 6.0
    );
    let _ = writeln!(
        s,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">new upgrades/s at the backend</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    let cap = f64::from(r.plan.capacity);
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black" stroke-dasharray="6 4"/><text x="{}" y="{}">capacity {}/s</text>"#,
        y(cap),
        left + pw,
        y(cap),
        left + pw + 6.0,
        y(cap) + 4.0,
        r.plan.capacity
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> =
            points.iter().enumerate().map(|(t, &v)| format!("{:.1},{:.1}", x(t as f64 + 0.5), y(v as f64))).collect();
        let _ = writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, pts.join(" "));
        let ly = top + 30.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{name}</text>"#,
            left + pw + 6.0,
            left + pw + 26.0,
            left + pw + 30.0,
            ly + 4.0
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

/// Replaces the storm section of `md` (or appends it).
pub fn splice(md: &str, section: &str) -> String {
    match (md.find("<!-- storm -->"), md.find("<!-- /storm -->")) {
        (Some(a), Some(b)) if b > a => {
            let end = b + "<!-- /storm -->".len();
            format!("{}{}{}", &md[..a], section.trim_end(), &md[end..])
        }
        _ => format!("{}\n{}", md.trim_end(), section),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_storm_configuration_validates_in_envoy() {
        for setup in setups(&StormPlan::quick()) {
            let config = render(&setup, 9901, 10000, 8081, 8082);
            let (ok, log) = envoy::validate(&config).await.unwrap_or_else(|e| panic!("{e}"));
            assert!(ok, "{}:\n{log}", setup.name);
        }
    }

    /// The answer to one upgrade to `path`: status, lower-case head, body.
    async fn answer(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut sock = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
        let req = format!(
            "GET {path} HTTP/1.1\r\nhost: collab\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        sock.write_all(req.as_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
        let mut buf = Vec::new();
        let len = read_head(&mut sock, &mut buf).await.unwrap_or_else(|| panic!("no answer from {path}"));
        let head = String::from_utf8_lossy(&buf[..len]).to_ascii_lowercase();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let want: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0);
        let mut body = buf[len..].to_vec();
        while body.len() < want {
            let mut chunk = [0u8; 512];
            match sock.read(&mut chunk).await {
                Ok(n) if n > 0 => body.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        (status, head, String::from_utf8_lossy(&body).into_owned())
    }

    /// The wasm floor refuses on the cost stage's refusing route as Floodgate's `forced_open`
    /// does (503, the same headers, a body of the same size) and admits everywhere else.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wasm_floor_refuses_like_floodgate_and_passes_the_rest() {
        let backend = Backend::start(0, 0).await.unwrap_or_else(|e| panic!("{e}"));
        let port = backend.addr.port();
        let mut refusals = Vec::new();
        for name in ["floodgate", "wasm_floor"] {
            let setup = setups(&StormPlan::quick()).into_iter().find(|s| s.name == name);
            let setup = setup.unwrap_or_else(|| panic!("no {name}"));
            let ports = Ports::free(port).unwrap_or_else(|e| panic!("{e}"));
            let config = render(&setup, ports.admin, ports.listen, port, port);
            let proxy = Envoy::start(&config, ports, 1).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            for path in ["/cost/admit", "/steady", "/collab"] {
                let (status, head, _) = answer(proxy.listen, path).await;
                assert_eq!(status, 101, "{name} {path}:\n{head}");
            }
            let (status, head, body) = answer(proxy.listen, "/cost/refuse").await;
            assert_eq!(status, 503, "{name}:\n{head}");
            for h in ["retry-after:", "x-floodgate:", "content-type: application/json"] {
                assert!(head.contains(h), "{name} lacks {h}:\n{head}");
            }
            refusals.push((head, body));
        }
        let (floodgate, floor) = (&refusals[0], &refusals[1]);
        assert_eq!(floodgate.1.len(), floor.1.len(), "bodies: {:?} and {:?}", floodgate.1, floor.1);
    }

    #[test]
    fn the_client_mix_and_its_delays() {
        let styles: Vec<Style> = (0..10).map(style).collect();
        assert_eq!(styles.iter().filter(|s| **s == Style::Backoff).count(), 6);
        assert_eq!(styles.iter().filter(|s| **s == Style::RetryAfter).count(), 3);
        let mut rng = Rng(7);
        for attempt in 0..20 {
            let d = delay(Style::Backoff, attempt, Some(1), &mut rng);
            assert!(d <= Duration::from_secs(30));
            assert!(d >= Duration::from_secs_f64((0.25 * 2f64.powi(attempt.min(10) as i32)).min(15.0)));
            let r = delay(Style::RetryAfter, attempt, Some(3), &mut rng);
            assert!(r >= Duration::from_secs(3) && r < Duration::from_millis(3_100));
            assert!(delay(Style::Immediate, attempt, Some(30), &mut rng) < Duration::from_millis(150));
        }
    }

    #[test]
    fn the_report_keeps_its_section_replaceable_and_the_plot_draws_every_configuration() {
        let plan = StormPlan::quick();
        let run = StormRun {
            arrivals: vec![0, 900, 400, 380, 10],
            accepted: vec![0, 400, 400, 380, 10],
            read_lag_ms: [3.0, 12.0],
            reconnect_s: Some(6.0),
            back95_s: Some(5.0),
            connected_at_end: 2000,
            refused: 1000,
            failed: 10,
            errors: 0,
            attempts: 3000,
            storm_s: 6.0,
            envoy_cpu_ns: 50_000_000,
            steady_alive: 50,
            steady: 50,
        };
        assert_eq!((run.peak(), run.p99()), (900, 900));
        let setups = setups(&plan);
        let r = StormResults {
            setups: setups.iter().map(|s| (s.name, s.what.clone())).collect(),
            refusals: setups.iter().map(|s| s.refusal).collect(),
            runs: setups.iter().map(|s| if s.storm { vec![run.clone()] } else { vec![] }).collect(),
            costs: setups
                .iter()
                .map(|s| {
                    // Envoy alone 80 µs a refusal, the wasm floor 90, Lua 95, Floodgate 100.
                    let refuse = match s.name {
                        "none" => 80.0,
                        "wasm_floor" => 90.0,
                        "lua_budget" => 95.0,
                        _ => 100.0,
                    };
                    let admit = if s.name == "none" { 280.0 } else { 300.0 };
                    Costs {
                        admit_us: vec![admit - 10.0, admit, admit + 30.0],
                        refuse_us: vec![refuse, refuse - 10.0, refuse + 20.0],
                        admitted: 2400,
                        refused: 2394,
                        other: 6,
                    }
                })
                .collect(),
            plan,
            open_files: 20_000,
        };
        let section = report(&r, "storm.svg");
        assert!(
            section.contains(
                "| `floodgate_budget` | 900 | 900 | 300 | 5.0 | 6.0 | 2.00× | 1000 | 167 | 100.0 | 16.7 | 50/50 | 3 / 12 |"
            ),
            "{section}"
        );
        assert!(
            section.contains(
                "| `floodgate_budget` | a budget of 1 upgrade/s | 100.0 (90.0–120.0) | 300.0 (290.0–330.0) | 3.0× | 2400, 2394 (6) |"
            ),
            "{section}"
        );
        assert!(
            section.contains("- `floodgate_budget_only`: busiest second at the backend 900 (capacity + burst 600): **not met**; every client back after 2.00 × clients/capacity (1.5× at most): **not met**."),
            "{section}"
        );
        assert!(
            section.contains("- `floodgate_budget`: a refusal costs Envoy 100.0 µs against the Lua guard's 95.0 µs (no more: **not met**); admitting costs 3.0 times a refusal (3× at least: **met**). Medians of the cost stage."),
            "{section}"
        );
        assert!(
            section.contains("- Breakdown of a refusal (not a target: differences of the medians above): Envoy with no filter 80.0 µs; the platform's part (`wasm_floor` − `none`: Envoy's wasm runtime, the stream context, the SDK's dispatch, a filter's local reply instead of a route's) +10.0 µs; Lua's part (`lua_budget` − `none`) +15.0 µs; the breaker's part (Floodgate − `wasm_floor`): `floodgate` +10.0 µs, `floodgate_budget` +10.0 µs, `floodgate_budget_only` +10.0 µs, `floodgate_budget_delay` +10.0 µs.\n"),
            "{section}"
        );
        assert!(
            section.contains("- Breakdown of an admitted upgrade (not a target: differences of the medians above): Envoy with no filter 280.0 µs; the platform's part (`wasm_floor` − `none`: Envoy's wasm runtime, the stream context, the SDK's dispatch) +20.0 µs; Lua's part (`lua_budget` − `none`) +20.0 µs; the breaker's part (Floodgate − `wasm_floor`): `floodgate` +0.0 µs,"),
            "{section}"
        );
        // The cost-stage-only configuration is in the cost table, not in the storm's.
        assert!(section.contains("| `wasm_floor` | the wasm floor's `refuse`"), "{section}");
        assert!(!section.contains("| `wasm_floor` | 900"), "{section}");
        let md = splice("# Bench\n\ntext\n", &section);
        let again = splice(&md, &section.replace("900", "901"));
        assert_eq!(again.matches("<!-- storm -->").count(), 1);
        assert!(again.starts_with("# Bench") && again.contains("901"));
        let svg = svg(&r);
        assert_eq!(svg.matches("<polyline").count(), r.runs.iter().filter(|runs| !runs.is_empty()).count());
        assert!(svg.contains("capacity 500/s"));
    }
}
