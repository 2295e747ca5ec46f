//! Model-based test of the compiled filter: several workers on one shared store, driven through
//! random interleavings of new upgrades (to the configured breaker and to client-chosen keys),
//! upstream answers (101, 5xx, 404), Envoy's own 503/504, another filter's 429/403, client
//! disconnects, upstream resets, calls left hanging past `answer_timeout_ms`, wall-clock steps
//! both ways, ticks and control-plane views with expiring entries; every decision is compared
//! with a small reference model written from DESIGN's rules.
//!
//! Checked after every step: the filter admits and refuses exactly as the model does (so never a
//! refusal the model does not make), with the state the model names; the shared breaker state
//! equals the model's (phase, open time, probe slots, streak); at most `permits` probes of the
//! current half-open period are in flight; no probe slot outlives `answer_timeout_ms` once every
//! worker ticked; the number of Envoy stats and each VM's memory stay bounded.
//!
//! `FLOODGATE_MODEL_SEQUENCES` (default 10,000) sets how many sequences run;
//! `FLOODGATE_MODEL_SEED` shifts the seeds (a failure prints the seed that reproduces it).
// Test code throughout: clippy.toml lets it unwrap, expect and panic.
#![cfg(test)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Rng;
use floodgate_core::remote::{Forced, Override, RemoteView};
use floodgate_core::{BreakerState, Phase, Policy, WindowSpec};
use floodgate_harness::{built_module, Host, Worker, CONTINUE, PAUSE};

const KEY: &str = "collab_ws";
const BASE: u64 = 1_000;
const MAX: u64 = 8_000;
const PERMITS: usize = 2;
const SUCCESSES: u32 = 2;
const STREAK: u32 = 3;
const TIMEOUT: u64 = 3_000;
const STALE: u64 = 120_000;
const MAX_BREAKERS: usize = 3;
const WORKERS: usize = 3;

/// The window the main model runs with: too large to fill with successes in a sequence, so
/// breakers stay stored in full. [`QUIET_WINDOW`] fills in four: breakers go quiet (an empty
/// value) and come back between failures. The failure rate (all of the window) never trips
/// before the streak of `STREAK` does, so the model's decisions hold for both.
const WINDOW: u16 = 100;
const QUIET_WINDOW: u16 = 4;

fn config(window: u16) -> String {
    serde_json::json!({
        "defaults": {
            "consecutive_failures": STREAK,
            "failure_rate": 1.0, "minimum_calls": window, "window": {"kind": "count", "size": window},
            "open": {"base_ms": BASE, "max_ms": MAX, "multiplier": 2.0, "jitter": 0.0},
            "half_open": {"permits": PERMITS, "successes": SUCCESSES},
            "answer_timeout_ms": TIMEOUT
        },
        "breakers": {KEY: {}},
        "max_breakers": MAX_BREAKERS,
        "control": {"cluster": "floodgate_control", "wait_s": 5, "timeout_ms": 7000, "stale_after_s": STALE / 1000}
    })
    .to_string()
}

/// A breaker's state as shared data holds it (a quiet one as no bytes, in `config(window)`'s shape).
fn state_of(bytes: &[u8], window: u16) -> Result<BreakerState, &'static str> {
    let shape =
        Policy { half_open_permits: PERMITS as u8, window: WindowSpec::Count { size: window }, ..Policy::default() };
    BreakerState::decode_for(bytes, &shape).ok_or("undecodable state")
}

// ---- the reference model ----

#[derive(Clone, Debug, PartialEq)]
struct Breaker {
    phase: Phase,
    streak: u32,
    open_until: u64,
    reopens: u32,
    slots: Vec<u64>,
    successes: u32,
    /// Counts half-open periods, to tell this period's probes from older ones.
    period: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Said {
    Admit,
    Pass,
    Refuse(&'static str),
}

impl Breaker {
    fn new() -> Breaker {
        Breaker {
            phase: Phase::Closed,
            streak: 0,
            open_until: 0,
            reopens: 0,
            slots: vec![0; PERMITS],
            successes: 0,
            period: 0,
        }
    }

    /// A wall clock stepped back: an open time lasts at most `max_ms * (1 + jitter)` from now.
    fn normalize(&mut self, now: u64) {
        if self.phase == Phase::Open && self.open_until > now + MAX {
            self.open_until = now + MAX;
        }
    }

    fn open(&mut self, now: u64) {
        let d = (BASE << self.reopens.min(10)).min(MAX);
        self.phase = Phase::Open;
        self.open_until = now + d;
        self.slots = vec![0; PERMITS];
        self.successes = 0;
    }

    fn reopen(&mut self, now: u64) {
        self.reopens += 1;
        self.open(now);
    }

    fn admit(&mut self, now: u64) -> (Said, Option<(usize, u64)>) {
        self.normalize(now);
        if self.phase == Phase::HalfOpen && self.slots.iter().any(|&d| d != 0 && d <= now) {
            self.reopen(now); // a probe went unanswered past answer_timeout_ms
        }
        if self.phase == Phase::Open {
            if now < self.open_until {
                return (Said::Refuse("open"), None);
            }
            self.phase = Phase::HalfOpen;
            self.slots = vec![0; PERMITS];
            self.successes = 0;
            self.period += 1;
        }
        if self.phase == Phase::HalfOpen {
            return match self.slots.iter().position(|&d| d == 0 || d <= now) {
                Some(i) => {
                    self.slots[i] = now + TIMEOUT;
                    (Said::Admit, Some((i, now + TIMEOUT)))
                }
                None => (Said::Refuse("half_open"), None),
            };
        }
        (Said::Admit, None)
    }

    fn take(&mut self, probe: Option<(usize, u64)>, now: u64) -> bool {
        match probe {
            Some((i, d)) if self.phase == Phase::HalfOpen && self.slots[i] == d && d > now => {
                self.slots[i] = 0;
                true
            }
            _ => false,
        }
    }

    fn record(&mut self, now: u64, failure: bool, probe: Option<(usize, u64)>) {
        self.normalize(now);
        match self.phase {
            Phase::Closed => {
                self.streak = if failure { self.streak + 1 } else { 0 };
                if self.streak >= STREAK {
                    self.open(now);
                }
            }
            Phase::HalfOpen => {
                if !self.take(probe, now) {
                    return;
                }
                if failure {
                    self.reopen(now);
                } else {
                    self.successes += 1;
                    if self.successes >= SUCCESSES {
                        self.phase = Phase::Closed;
                        self.streak = 0;
                        self.reopens = 0;
                        self.successes = 0;
                        self.slots = vec![0; PERMITS];
                    }
                }
            }
            Phase::Open => {}
        }
    }

    /// A success, recorded with no clock reading: no clamp of a stepped clock, and a probe
    /// decides while it holds its slot (its deadline is its worker's tick's to enforce).
    fn succeed(&mut self, probe: Option<(usize, u64)>) {
        match self.phase {
            Phase::Closed => self.streak = 0,
            Phase::HalfOpen => self.record(0, false, probe),
            Phase::Open => {}
        }
    }

    fn timeout(&mut self, now: u64, probe: Option<(usize, u64)>) {
        if self.phase != Phase::HalfOpen {
            return self.record(now, true, None);
        }
        self.normalize(now);
        if let Some((i, d)) = probe {
            if self.slots[i] == d && d != 0 {
                self.reopen(now);
            }
        }
    }

    fn release(&mut self, now: u64, probe: Option<(usize, u64)>) {
        self.take(probe, now);
    }
}

#[derive(Clone, Debug)]
struct View {
    confirmed: u64,
    /// (key, forced open?, until; 0 = no end)
    entries: Vec<(String, bool, u64)>,
}

impl View {
    fn decide(&self, key: &str, now: u64) -> Option<bool> {
        // A view confirmed after the current time was confirmed before a clock step backwards:
        // not live until the next poll (1 s of tolerance for workers' clocks).
        if !(self.confirmed > 0 && self.confirmed <= now + 1_000 && now < self.confirmed + STALE) {
            return None;
        }
        let holding = |k: &str| self.entries.iter().find(|(ek, _, until)| ek == k && (*until == 0 || now < *until));
        holding(key).or_else(|| holding("*")).map(|(_, open, _)| *open)
    }
}

#[derive(Debug)]
struct Call {
    worker: usize,
    ctx: u32,
    key: String,
    /// Admitted by the breaker (not passed by an override or as untracked).
    guarded: bool,
    probe: Option<(usize, u64)>,
    period: u32,
    start: u64,
    deadline: u64,
    timed_out: bool,
}

struct Model {
    breakers: HashMap<String, Breaker>,
    registry: Vec<String>,
    shared_view: Option<View>,
    views: Vec<Option<View>>,
    calls: Vec<Call>,
}

impl Model {
    fn tracked(&mut self, key: &str) -> bool {
        if self.registry.iter().any(|k| k == key) {
            return true;
        }
        if key.len() > 256 {
            return false;
        }
        if key == KEY || self.registry.len() < MAX_BREAKERS {
            self.registry.push(key.to_string());
            return true;
        }
        false
    }

    fn upgrade(&mut self, w: usize, key: &str, now: u64) -> (Said, Option<(usize, u64)>, u32) {
        let tracked = self.tracked(key);
        match self.views[w].as_ref().and_then(|v| v.decide(key, now)) {
            Some(true) => return (Said::Refuse("forced_open"), None, 0),
            Some(false) => return (Said::Pass, None, 0),
            None => {}
        }
        if !tracked {
            return (Said::Pass, None, 0);
        }
        let b = self.breakers.entry(key.to_string()).or_insert_with(Breaker::new);
        let (said, probe) = b.admit(now);
        (said, probe, b.period)
    }
}

// ---- driving the filter ----

/// What the stream gets, as the filter sees it: response headers (status, details, flags), or
/// none before it ends (then only the flags).
#[derive(Clone, Copy, Debug)]
enum End {
    Upstream(u16),
    /// Envoy's own reply: (status, details, flags).
    Envoy(u16, &'static str, u64),
    /// Another filter's reply.
    Filter(u16, &'static str, u64),
    /// The client went away before any answer (flag DC).
    ClientLeft,
    /// The upstream reset the stream before answering, no reply reached the filter (flag UR).
    Reset,
}

impl End {
    /// The outcome the model records: Some(failure) or None (nothing decided).
    fn outcome(self) -> Option<bool> {
        match self {
            End::Upstream(s) => Some((500..600).contains(&s)),
            End::Envoy(..) | End::Reset => Some(true),
            End::Filter(..) | End::ClientLeft => None,
        }
    }
}

fn end_of(r: &mut Rng) -> End {
    match r.below(10) {
        0..=2 => End::Upstream(101),
        3 => End::Upstream(503),
        4 => End::Upstream(404),
        5 => End::Envoy(503, "upstream_reset_before_response_started{connection_failure}", 0x20),
        6 => End::Envoy(504, "response_timeout", 0x4),
        7 => {
            if r.below(2) == 0 {
                End::Filter(429, "request_rate_limited", 0x800)
            } else {
                End::Filter(403, "rbac_access_denied_matched_policy[none]", 0)
            }
        }
        8 => End::ClientLeft,
        _ => End::Reset,
    }
}

fn finish(w: &mut Worker, ctx: u32, end: End) {
    let flags = |f: u64| f.to_le_bytes();
    match end {
        End::Upstream(s) => {
            w.set_context_property(ctx, &["response", "code_details"], b"via_upstream");
            w.set_context_property(ctx, &["response", "flags"], &flags(0));
            w.response_headers(ctx, &[(":status", &s.to_string())], false).unwrap();
        }
        End::Envoy(s, details, f) | End::Filter(s, details, f) => {
            w.set_context_property(ctx, &["response", "code_details"], details.as_bytes());
            w.set_context_property(ctx, &["response", "flags"], &flags(f));
            w.response_headers(ctx, &[(":status", &s.to_string())], false).unwrap();
        }
        End::ClientLeft => w.set_context_property(ctx, &["response", "flags"], &flags(0x4000)),
        End::Reset => w.set_context_property(ctx, &["response", "flags"], &flags(0x10)),
    }
    w.end(ctx).unwrap();
}

fn upgrade(w: &mut Worker, key: &str) -> (u32, Said) {
    let ctx = w.new_context().unwrap();
    w.set_context_property(ctx, &["xds", "cluster_name"], key.as_bytes());
    let headers = [(":method", "GET"), (":path", "/ws"), ("upgrade", "websocket"), ("connection", "upgrade")];
    let action = w.request_headers(ctx, &headers, false).unwrap();
    let said = match action {
        CONTINUE => Said::Admit,
        PAUSE => {
            let reply = w.local_response(ctx).expect("a refusal sends a local reply");
            let state = match reply.header("x-floodgate") {
                Some("open") => "open",
                Some("half_open") => "half_open",
                Some("forced_open") => "forced_open",
                Some("closed") => "closed",
                other => panic!("refusal with x-floodgate {other:?}"),
            };
            Said::Refuse(state)
        }
        other => panic!("action {other}"),
    };
    (ctx, said)
}

fn junk_key(r: &mut Rng) -> String {
    match r.below(8) {
        0 => "x".repeat(300), // longer than any tracked key
        _ => format!("client-{}", r.below(12)),
    }
}

fn snapshot(r: &mut Rng, now: u64) -> (View, RemoteView) {
    let mut entries = Vec::new();
    for key in [KEY, "*", "client-1"] {
        if r.below(3) == 0 {
            let open = r.below(3) != 0;
            let until = if r.below(3) == 0 { 0 } else { (now + r.below(8_000)).saturating_sub(2_000).max(1) };
            entries.push((key.to_string(), open, until));
        }
    }
    let overrides = entries
        .iter()
        .map(|(k, open, until)| Override {
            key: k.clone(),
            state: if *open { Forced::ForcedOpen } else { Forced::ForcedClosed },
            reason: "model".into(),
            until_ms: *until,
        })
        .collect();
    let view = RemoteView { version: r.below(1_000), confirmed_ms: now, overrides, ..RemoteView::default() };
    (View { confirmed: now, entries }, view)
}

/// Stats the filter may define at most: the fixed ones, one set per tracked breaker (with every
/// transition), and `floodgate_forced` for the keys a view names.
const MAX_STATS: usize = 8 + (MAX_BREAKERS + 1) * (12 + 9) + 3;

fn run(seed: u64, proto: &Host, seen: &mut HashMap<String, u64>, window: u16) -> Result<usize, String> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut host = proto.sibling();
    let cfg = config(window);
    let mut ws: Vec<Worker> = (0..WORKERS)
        .map(|_| {
            let mut w = host.worker().unwrap();
            w.add_cluster("floodgate_control");
            assert!(w.configure("floodgate", &cfg).unwrap(), "{:?}", host.logs());
            w
        })
        .collect();
    let base_memory: Vec<usize> = ws.iter_mut().map(|w| w.memory_bytes()).collect();
    let mut m = Model {
        breakers: HashMap::new(),
        registry: Vec::new(),
        shared_view: None,
        views: vec![None; WORKERS],
        calls: Vec::new(),
    };
    let steps = 20 + r.below(60) as usize;
    let mut log = Vec::new();
    for step in 0..steps {
        let now = host.now_ms();
        let op = r.below(100);
        match op {
            // A new upgrade, mostly to the configured breaker.
            0..=34 => {
                let w = r.below(WORKERS as u64) as usize;
                let key = if r.below(4) == 0 { junk_key(&mut r) } else { KEY.to_string() };
                let (said, probe, period) = m.upgrade(w, &key, now);
                let (ctx, got) = upgrade(&mut ws[w], &key);
                let got_kind = if got == Said::Admit && said == Said::Pass { Said::Pass } else { got };
                log.push(format!(
                    "{step}: t={now} w{w} upgrade {} -> model {said:?}, filter {got:?}",
                    &key[..key.len().min(12)]
                ));
                *seen.entry(format!("{said:?}")).or_default() += 1;
                if got_kind != said {
                    return Err(format!("decision differs at step {step}\n{}", log.join("\n")));
                }
                match said {
                    Said::Refuse(_) => ws[w].end(ctx).unwrap(),
                    _ => m.calls.push(Call {
                        worker: w,
                        ctx,
                        key,
                        guarded: said == Said::Admit,
                        probe,
                        period,
                        start: now,
                        deadline: now + TIMEOUT,
                        timed_out: false,
                    }),
                }
            }
            // An outstanding call ends.
            35..=59 if !m.calls.is_empty() => {
                let i = r.below(m.calls.len() as u64) as usize;
                let c = m.calls.swap_remove(i);
                let end = end_of(&mut r);
                log.push(format!("{step}: t={now} w{} call {} ends {end:?}", c.worker, c.ctx));
                finish(&mut ws[c.worker], c.ctx, end);
                if c.guarded && !c.timed_out {
                    let b = m.breakers.get_mut(&c.key).expect("a guarded call's breaker");
                    match end.outcome() {
                        // A success reads no clock (the request path's budget): it counts unless
                        // its worker's tick already timed it out.
                        Some(false) => b.succeed(c.probe),
                        // Past its deadline, any other end: no answer in time.
                        _ if now >= c.deadline => b.timeout(now, c.probe),
                        Some(failure) => b.record(now, failure, c.probe),
                        None => b.release(now, c.probe),
                    }
                }
            }
            // Time passes (sometimes past every deadline), or the wall clock steps back.
            60..=74 => {
                let by = match r.below(10) {
                    0 => 600_000,
                    1..=3 => r.below(100),
                    _ => r.below(4_000),
                };
                host.advance(Duration::from_millis(by));
                log.push(format!("{step}: +{by} ms"));
            }
            75..=79 => {
                let by = if r.below(4) == 0 { 3_600_000 } else { r.below(10_000) };
                host.rewind(Duration::from_millis(by));
                log.push(format!("{step}: clock stepped back {by} ms"));
            }
            // A worker's tick: its overdue calls fail now; it takes the shared view.
            80..=94 => {
                let w = r.below(WORKERS as u64) as usize;
                ws[w].tick().unwrap();
                m.views[w] = m.shared_view.clone();
                let mut due: Vec<usize> = Vec::new();
                for (i, c) in m.calls.iter_mut().enumerate() {
                    if c.worker != w || !c.guarded || c.timed_out {
                        continue;
                    }
                    if c.start > now {
                        c.deadline = now + (c.deadline - c.start);
                        c.start = now;
                    }
                    if c.deadline <= now {
                        due.push(i);
                    }
                }
                for i in due {
                    *seen.entry("timed out".into()).or_default() += 1;
                    let c = &mut m.calls[i];
                    c.timed_out = true;
                    m.breakers.get_mut(&c.key).expect("breaker").timeout(now, c.probe);
                }
                log.push(format!("{step}: t={now} tick w{w}"));
            }
            // The control plane's view changes (entries that expire on their own).
            _ => {
                let (model_view, view) = snapshot(&mut r, now);
                host.set_shared_data("floodgate/control", &serde_json::to_vec(&view).unwrap());
                log.push(format!("{step}: t={now} view {:?}", model_view.entries));
                m.shared_view = Some(model_view);
            }
        }
        // The shared state is the model's.
        for (key, b) in &m.breakers {
            let Some((bytes, _)) = host.shared_data(&format!("floodgate/b/{key}")) else { continue };
            if bytes.is_empty() {
                *seen.entry("quiet state".into()).or_default() += 1;
            }
            let s = state_of(&bytes, window)?;
            let real = (s.phase, u32::from(s.consecutive_failures), s.probe_slots.clone(), u32::from(s.reopens));
            let model = (b.phase, b.streak, b.slots.clone(), b.reopens);
            let open_differs = b.phase == Phase::Open && s.open_until_ms != b.open_until;
            if real != model || open_differs {
                return Err(format!(
                    "state of {key} differs after step {step}: filter {real:?} open_until {}, model {model:?} open_until {}\n{}",
                    s.open_until_ms,
                    b.open_until,
                    log.join("\n")
                ));
            }
            // At most `permits` probes of this half-open period in flight.
            if b.phase == Phase::HalfOpen {
                let probes = m
                    .calls
                    .iter()
                    .filter(|c| &c.key == key && c.probe.is_some() && c.period == b.period && !c.timed_out)
                    .filter(|c| c.probe.is_some_and(|(i, d)| b.slots[i] == d))
                    .count();
                if probes > PERMITS {
                    return Err(format!("{probes} probes in flight\n{}", log.join("\n")));
                }
            }
        }
        let stats = host.metric_count();
        if stats > MAX_STATS {
            return Err(format!("{stats} stats defined (bound {MAX_STATS})"));
        }
    }
    // Every worker ticks past every deadline: no half-open breaker keeps a probe slot longer.
    host.advance(Duration::from_millis(TIMEOUT));
    for w in ws.iter_mut() {
        w.tick().unwrap();
    }
    let after = host.now_ms();
    for key in m.breakers.keys() {
        let Some((bytes, _)) = host.shared_data(&format!("floodgate/b/{key}")) else { continue };
        let s = state_of(&bytes, window)?;
        let overdue = s.probe_slots.iter().any(|&d| d != 0 && d <= after);
        if s.phase == Phase::HalfOpen && overdue {
            return Err(format!("{key} still half-open with an overdue probe {s:?}\n{}", log.join("\n")));
        }
    }
    for (i, w) in ws.iter_mut().enumerate() {
        let grown = w.memory_bytes().saturating_sub(base_memory[i]);
        if grown > 1 << 20 {
            return Err(format!("worker {i} memory grew by {grown} bytes"));
        }
    }
    Ok(steps)
}

#[test]
fn the_filter_decides_as_the_model_over_random_interleavings() {
    let seen = decide_as_the_model(WINDOW, 10_000);
    assert!(!seen.iter().any(|(k, _)| k == "quiet state"), "a window of {WINDOW} filled: {seen:?}");
}

/// The same with breakers that go quiet (stored as an empty value) and come back between
/// failures, on three workers.
#[test]
fn the_filter_decides_as_the_model_with_breakers_going_quiet_between_failures() {
    let seen = decide_as_the_model(QUIET_WINDOW, 3_000);
    assert!(seen.iter().any(|(k, n)| k == "quiet state" && *n > 100), "few quiet states: {seen:?}");
}

/// Runs the model's random sequences (`FLOODGATE_MODEL_SEQUENCES` of them, else `default`) with
/// a count window of `window`; what was decided, and how often.
fn decide_as_the_model(window: u16, default: u64) -> Vec<(String, u64)> {
    let sequences: u64 =
        std::env::var("FLOODGATE_MODEL_SEQUENCES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let offset: u64 = std::env::var("FLOODGATE_MODEL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let proto = Host::new(&built_module()).unwrap_or_else(|e| panic!("{e:#}"));
    let t = std::time::Instant::now();
    for _ in 0..20 {
        let mut h = proto.sibling();
        let mut w = h.worker().unwrap();
        w.add_cluster("floodgate_control");
        w.configure("floodgate", &config(window)).unwrap();
    }
    println!("one configured worker: {:.2} ms", t.elapsed().as_secs_f64() * 1000.0 / 20.0);
    let started = std::time::Instant::now();
    let mut steps = 0;
    let mut seen = HashMap::new();
    for seed in offset..offset + sequences {
        match run(seed, &proto, &mut seen, window) {
            Ok(n) => steps += n,
            Err(e) => {
                panic!("window {window}, sequence with FLOODGATE_MODEL_SEED={seed} FLOODGATE_MODEL_SEQUENCES=1:\n{e}")
            }
        }
    }
    println!("{sequences} sequences, {steps} steps, in {:.1} s", started.elapsed().as_secs_f64());
    let mut seen: Vec<_> = seen.into_iter().collect();
    seen.sort();
    println!("decisions and timeouts: {seen:?}");
    // Every kind of decision happened (the sequences reach every state).
    if sequences >= 1_000 {
        for kind in
            ["Admit", "Pass", "Refuse(\"open\")", "Refuse(\"half_open\")", "Refuse(\"forced_open\")", "timed out"]
        {
            assert!(seen.iter().any(|(k, n)| k == kind && *n > 0), "no {kind} in {seen:?}");
        }
    }
    seen
}
