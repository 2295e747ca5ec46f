//! Plugin configuration: parsed by serde (unknown fields are errors), then validated into a
//! typed [`Config`]. Every error names the field it is about, as `path.to.field: reason`.

use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use hashbrown::HashMap;
use serde::Deserialize;

use floodgate_core::admission::{Budget, MAX_BURST, MAX_DELAY_MS, MAX_PER_SECOND};
use floodgate_core::classify::{FailurePolicy, StatusPattern};
use floodgate_core::policy::MAX_RECOVERY_RAMP_MS;
use floodgate_core::state::MAX_PERMITS;
use floodgate_core::window::TIME_BUCKETS;
use floodgate_core::{Mode, Policy, WindowSpec};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

fn err<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError { field: field.into(), message: message.into() })
}

// ---- raw, as written ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    shed: Option<String>,
    key: Option<String>,
    #[serde(default)]
    defaults: RawPolicy,
    #[serde(default)]
    breakers: BTreeMap<String, RawPolicy>,
    reject: Option<RawReject>,
    control: Option<RawControl>,
    max_breakers: Option<u32>,
    breaker: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    mode: Option<ModeName>,
    failure: Option<RawFailure>,
    consecutive_failures: Option<u32>,
    failure_rate: Option<f64>,
    slow_call: Option<RawSlowCall>,
    window: Option<RawWindow>,
    minimum_calls: Option<u32>,
    open: Option<RawOpen>,
    half_open: Option<RawHalfOpen>,
    recovery_ramp_ms: Option<u64>,
    answer_timeout_ms: Option<u64>,
    admission: Option<RawAdmission>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawAdmission {
    per_second: Option<u32>,
    burst: Option<u32>,
    max_delay_ms: Option<u32>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum ModeName {
    Enforce,
    DryRun,
    ForcedOpen,
    Disabled,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawFailure {
    statuses: Option<Vec<StatusValue>>,
    ignore_statuses: Option<Vec<StatusValue>>,
    resets: Option<bool>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum StatusValue {
    Code(u64),
    Text(String),
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawSlowCall {
    duration_ms: Option<u64>,
    rate: Option<f64>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    kind: Option<String>,
    size: Option<u16>,
    seconds: Option<u16>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawOpen {
    base_ms: Option<u64>,
    max_ms: Option<u64>,
    multiplier: Option<f64>,
    jitter: Option<f64>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawHalfOpen {
    permits: Option<u8>,
    successes: Option<u8>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReject {
    status: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    websocket: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    cluster: String,
    authority: Option<String>,
    path: Option<String>,
    token: Option<String>,
    wait_s: Option<u32>,
    timeout_ms: Option<u64>,
    retry_ms: Option<u64>,
    stale_after_s: Option<u64>,
}

/// `over` wins field by field, nested objects included.
fn merge(base: &RawPolicy, over: &RawPolicy) -> RawPolicy {
    fn pick<T: Clone>(b: &Option<T>, o: &Option<T>) -> Option<T> {
        o.clone().or_else(|| b.clone())
    }
    fn nested<T: Clone + Default>(b: &Option<T>, o: &Option<T>, f: impl Fn(&T, &T) -> T) -> Option<T> {
        match (b, o) {
            (Some(b), Some(o)) => Some(f(b, o)),
            _ => pick(b, o),
        }
    }
    RawPolicy {
        mode: pick(&base.mode, &over.mode),
        failure: nested(&base.failure, &over.failure, |b, o| RawFailure {
            statuses: pick(&b.statuses, &o.statuses),
            ignore_statuses: pick(&b.ignore_statuses, &o.ignore_statuses),
            resets: pick(&b.resets, &o.resets),
        }),
        consecutive_failures: pick(&base.consecutive_failures, &over.consecutive_failures),
        failure_rate: pick(&base.failure_rate, &over.failure_rate),
        slow_call: nested(&base.slow_call, &over.slow_call, |b, o| RawSlowCall {
            duration_ms: pick(&b.duration_ms, &o.duration_ms),
            rate: pick(&b.rate, &o.rate),
        }),
        window: nested(&base.window, &over.window, |b, o| RawWindow {
            kind: pick(&b.kind, &o.kind),
            size: pick(&b.size, &o.size),
            seconds: pick(&b.seconds, &o.seconds),
        }),
        minimum_calls: pick(&base.minimum_calls, &over.minimum_calls),
        open: nested(&base.open, &over.open, |b, o| RawOpen {
            base_ms: pick(&b.base_ms, &o.base_ms),
            max_ms: pick(&b.max_ms, &o.max_ms),
            multiplier: pick(&b.multiplier, &o.multiplier),
            jitter: pick(&b.jitter, &o.jitter),
        }),
        half_open: nested(&base.half_open, &over.half_open, |b, o| RawHalfOpen {
            permits: pick(&b.permits, &o.permits),
            successes: pick(&b.successes, &o.successes),
        }),
        recovery_ramp_ms: pick(&base.recovery_ramp_ms, &over.recovery_ramp_ms),
        answer_timeout_ms: pick(&base.answer_timeout_ms, &over.answer_timeout_ms),
        admission: nested(&base.admission, &over.admission, |b, o| RawAdmission {
            per_second: pick(&b.per_second, &o.per_second),
            burst: pick(&b.burst, &o.burst),
            max_delay_ms: pick(&b.max_delay_ms, &o.max_delay_ms),
        }),
    }
}

// ---- typed ----

/// Everything that decides one breaker.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerPolicy {
    pub policy: Policy,
    pub failure: FailurePolicy,
    /// The admission budget (`admission`); off when `per_second` is 0.
    pub admission: Budget,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// Refuse only new WebSocket upgrades; only upgrades feed the breaker.
    WebSocket,
    /// Refuse every new request; every request feeds the breaker.
    All,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Cluster,
    Route,
    Header(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// How a refused HTTP/1.1 WebSocket upgrade is answered (`reject.websocket`).
    pub websocket: WebSocketReject,
}

/// `reject.websocket`: `http` (the HTTP refusal) or `close_frame` (101, then a 1013 close frame).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WebSocketReject {
    #[default]
    Http,
    CloseFrame,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlConfig {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub token: String,
    pub wait_s: u32,
    pub timeout_ms: u64,
    pub retry_ms: u64,
    pub stale_after_s: u64,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub shed: Shed,
    pub key: KeySource,
    pub defaults: Rc<BreakerPolicy>,
    pub overrides: HashMap<String, Rc<BreakerPolicy>>,
    pub reject: Reject,
    pub control: Option<ControlConfig>,
    pub max_breakers: u32,
    /// The TCP filter's breaker (root_id `floodgate_tcp` only).
    pub tcp_breaker: Option<String>,
    /// Per-key data the request path reuses (filled as keys are first seen).
    pub keys: crate::keys::Keys,
}

impl Config {
    pub fn policy_for(&self, key: &str) -> &Rc<BreakerPolicy> {
        self.overrides.get(key).unwrap_or(&self.defaults)
    }

    /// Keys the configuration forces open, for `floodgate_forced`: each key in `breakers` with
    /// `mode: forced_open`, and `*` when `defaults` has it.
    pub fn forced_keys(&self) -> Vec<String> {
        let forced = |p: &BreakerPolicy| p.policy.mode == Mode::ForcedOpen;
        let mut keys: Vec<String> = self.overrides.iter().filter(|(_, p)| forced(p)).map(|(k, _)| k.clone()).collect();
        if forced(&self.defaults) {
            keys.push("*".to_string());
        }
        keys.sort_unstable();
        keys
    }

    /// Whether any breaker has an answer deadline (the worker's tick then closes overdue calls).
    pub fn answer_timeouts(&self) -> bool {
        std::iter::once(&self.defaults).chain(self.overrides.values()).any(|p| p.policy.answer_timeout_ms > 0)
    }
}

/// Which filter the configuration is for: the TCP filter needs `breaker`, HTTP must not have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKind {
    Http,
    Tcp,
    Poller,
}

pub fn parse(bytes: &[u8], kind: FilterKind) -> Result<Config, ConfigError> {
    let text: &[u8] = if bytes.iter().all(|b| b.is_ascii_whitespace()) { b"{}" } else { bytes };
    let de = &mut serde_json::Deserializer::from_slice(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        ConfigError { field: if field == "." { String::new() } else { field }, message: e.inner().to_string() }
    })?;
    validate(raw, kind)
}

fn validate(raw: RawConfig, kind: FilterKind) -> Result<Config, ConfigError> {
    let shed = match raw.shed.as_deref() {
        None | Some("websocket") => Shed::WebSocket,
        Some("all") => Shed::All,
        Some(other) => return err("shed", format!("must be \"websocket\" or \"all\", got {other:?}")),
    };
    let key = match raw.key.as_deref() {
        None | Some("cluster") => KeySource::Cluster,
        Some("route") => KeySource::Route,
        Some(k) => match k.strip_prefix("header:") {
            Some(name) if !name.is_empty() => KeySource::Header(name.to_ascii_lowercase()),
            _ => return err("key", format!("must be \"cluster\", \"route\" or \"header:<name>\", got {k:?}")),
        },
    };
    let defaults = Rc::new(resolve(&raw.defaults, "defaults")?);
    let mut overrides = HashMap::new();
    for (name, over) in &raw.breakers {
        if name.is_empty() {
            return err("breakers", "a breaker key must not be empty");
        }
        let merged = merge(&raw.defaults, over);
        overrides.insert(name.clone(), Rc::new(resolve(&merged, &format!("breakers.{name}"))?));
    }
    let reject = match raw.reject {
        None => Reject { status: 503, headers: vec![], websocket: WebSocketReject::Http },
        Some(r) => {
            let status = r.status.unwrap_or(503);
            if !(400..=599).contains(&status) {
                return err("reject.status", format!("must be in 400..=599, got {status}"));
            }
            let mut headers = Vec::new();
            for (name, value) in r.headers {
                let lower = name.to_ascii_lowercase();
                let valid = !lower.is_empty() && lower.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                if !valid || lower.starts_with(':') {
                    return err(format!("reject.headers.{name}"), "not a valid header name");
                }
                if ["retry-after", "x-floodgate", "content-type"].contains(&lower.as_str()) {
                    return err(format!("reject.headers.{name}"), "set by Floodgate itself");
                }
                if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    return err(format!("reject.headers.{name}"), "value must not contain CR, LF or NUL");
                }
                headers.push((lower, value));
            }
            let websocket = match r.websocket.as_deref() {
                None | Some("http") => WebSocketReject::Http,
                Some("close_frame") => WebSocketReject::CloseFrame,
                Some(other) => {
                    return err("reject.websocket", format!("must be \"http\" or \"close_frame\", got {other:?}"))
                }
            };
            Reject { status, headers, websocket }
        }
    };
    let control = match raw.control {
        None => None,
        Some(c) => Some(control(c)?),
    };
    let max_breakers = raw.max_breakers.unwrap_or(1024);
    if !(1..=100_000).contains(&max_breakers) {
        return err("max_breakers", format!("must be in 1..=100000, got {max_breakers}"));
    }
    let tcp_breaker = match (kind, raw.breaker) {
        (FilterKind::Tcp, None) => return err("breaker", "required by the TCP filter (root_id floodgate_tcp)"),
        (FilterKind::Tcp, Some(b)) if b.is_empty() => return err("breaker", "must not be empty"),
        (FilterKind::Http, Some(_)) => {
            return err("breaker", "only for the TCP filter; the HTTP filter names breakers with `key`")
        }
        (_, b) => b,
    };
    let (mut defaults, mut overrides) = (defaults, overrides);
    if kind == FilterKind::Tcp {
        // A TCP connection has no answer to wait for: a client that connects and stays quiet must
        // not hold a probe slot "past its deadline" and re-open a healthy backend's breaker.
        for p in std::iter::once(&mut defaults).chain(overrides.values_mut()) {
            std::rc::Rc::make_mut(p).policy.answer_timeout_ms = 0;
        }
    }
    Ok(Config { shed, key, defaults, overrides, reject, control, max_breakers, tcp_breaker, keys: Default::default() })
}

fn control(c: RawControl) -> Result<ControlConfig, ConfigError> {
    if c.cluster.is_empty() {
        return err("control.cluster", "must not be empty");
    }
    let path = c.path.unwrap_or_else(|| "/v1/snapshot".to_string());
    if !path.starts_with('/') {
        return err("control.path", format!("must start with '/', got {path:?}"));
    }
    let wait_s = c.wait_s.unwrap_or(25);
    if !(1..=300).contains(&wait_s) {
        return err("control.wait_s", format!("must be in 1..=300, got {wait_s}"));
    }
    let timeout_ms = c.timeout_ms.unwrap_or(30_000);
    if timeout_ms <= u64::from(wait_s) * 1000 {
        return err("control.timeout_ms", format!("must exceed wait_s ({wait_s} s), got {timeout_ms}"));
    }
    let retry_ms = c.retry_ms.unwrap_or(1000);
    if !(100..=600_000).contains(&retry_ms) {
        return err("control.retry_ms", format!("must be in 100..=600000, got {retry_ms}"));
    }
    let stale_after_s = c.stale_after_s.unwrap_or(120);
    if stale_after_s.saturating_mul(1000) <= timeout_ms {
        // A long-poll held for its whole timeout must not look like an outage.
        return err("control.stale_after_s", format!("must exceed timeout_ms ({timeout_ms} ms), got {stale_after_s}"));
    }
    Ok(ControlConfig {
        cluster: c.cluster,
        authority: c.authority.unwrap_or_else(|| "floodgate-control".to_string()),
        path,
        token: c.token.unwrap_or_default(),
        wait_s,
        timeout_ms,
        retry_ms,
        stale_after_s,
    })
}

fn rate(value: Option<f64>, default: f64, field: String) -> Result<f64, ConfigError> {
    let v = value.unwrap_or(default);
    if !(v > 0.0 && v <= 1.0) {
        return err(field, format!("must be in (0, 1], got {v}"));
    }
    Ok(v)
}

fn statuses(list: &[StatusValue], field: &str) -> Result<Vec<StatusPattern>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let parsed = match s {
                StatusValue::Code(n) => u16::try_from(*n).ok().and_then(StatusPattern::code),
                StatusValue::Text(t) => StatusPattern::parse(t),
            };
            parsed.ok_or_else(|| ConfigError {
                field: format!("{field}[{i}]"),
                message: "must be a status code 100..=599 or a class like \"5xx\"".to_string(),
            })
        })
        .collect()
}

fn resolve(raw: &RawPolicy, at: &str) -> Result<BreakerPolicy, ConfigError> {
    let d = Policy::default();
    let f = |name: &str| format!("{at}.{name}");
    let mode = match raw.mode {
        None | Some(ModeName::Enforce) => Mode::Enforce,
        Some(ModeName::DryRun) => Mode::DryRun,
        Some(ModeName::ForcedOpen) => Mode::ForcedOpen,
        Some(ModeName::Disabled) => Mode::Disabled,
    };
    let fail = raw.failure.clone().unwrap_or_default();
    let failure = FailurePolicy {
        statuses: match &fail.statuses {
            Some(list) => statuses(list, &f("failure.statuses"))?,
            None => FailurePolicy::default().statuses,
        },
        ignore_statuses: match &fail.ignore_statuses {
            Some(list) => statuses(list, &f("failure.ignore_statuses"))?,
            None => vec![],
        },
        resets: fail.resets.unwrap_or(true),
    };
    let slow = raw.slow_call.clone().unwrap_or_default();
    let win = raw.window.clone().unwrap_or_default();
    let window = match win.kind.as_deref() {
        None | Some("count") => {
            let size = win.size.unwrap_or(100);
            if !(1..=1000).contains(&size) {
                return err(f("window.size"), format!("must be in 1..=1000, got {size}"));
            }
            WindowSpec::Count { size }
        }
        Some("time") => {
            let seconds = win.seconds.unwrap_or(60);
            if !(1..=3600).contains(&seconds) {
                return err(f("window.seconds"), format!("must be in 1..=3600, got {seconds}"));
            }
            WindowSpec::Time { seconds }
        }
        Some(k) => return err(f("window.kind"), format!("must be \"count\" or \"time\", got {k:?}")),
    };
    let minimum_calls = raw.minimum_calls.unwrap_or(d.minimum_calls);
    if let WindowSpec::Time { .. } = window {
        // Each of a time window's buckets counts at most u16::MAX calls.
        let most = TIME_BUCKETS as u32 * u32::from(u16::MAX);
        if minimum_calls > most {
            return err(
                f("minimum_calls"),
                format!("must not exceed {most} (what a time window counts), got {minimum_calls}"),
            );
        }
    }
    if let WindowSpec::Count { size } = window {
        if minimum_calls > u32::from(size) {
            return err(f("minimum_calls"), format!("must not exceed window.size ({size}), got {minimum_calls}"));
        }
    }
    let open = raw.open.clone().unwrap_or_default();
    let open_base_ms = open.base_ms.unwrap_or(d.open_base_ms);
    if open_base_ms == 0 || open_base_ms > 86_400_000 {
        return err(f("open.base_ms"), format!("must be in 1..=86400000, got {open_base_ms}"));
    }
    let open_max_ms = open.max_ms.unwrap_or(d.open_max_ms.max(open_base_ms));
    if open_max_ms < open_base_ms || open_max_ms > 86_400_000 {
        return err(f("open.max_ms"), format!("must be in base_ms..=86400000, got {open_max_ms}"));
    }
    let open_multiplier = open.multiplier.unwrap_or(d.open_multiplier);
    if !(open_multiplier.is_finite() && (1.0..=100.0).contains(&open_multiplier)) {
        return err(f("open.multiplier"), format!("must be in [1, 100], got {open_multiplier}"));
    }
    let open_jitter = open.jitter.unwrap_or(d.open_jitter);
    if !(0.0..1.0).contains(&open_jitter) {
        return err(f("open.jitter"), format!("must be in [0, 1), got {open_jitter}"));
    }
    let half = raw.half_open.clone().unwrap_or_default();
    let half_open_permits = half.permits.unwrap_or(d.half_open_permits);
    if !(1..=MAX_PERMITS).contains(&half_open_permits) {
        return err(f("half_open.permits"), format!("must be in 1..={MAX_PERMITS}, got {half_open_permits}"));
    }
    let half_open_successes = half.successes.unwrap_or(d.half_open_successes);
    if half_open_successes == 0 {
        return err(f("half_open.successes"), "must be at least 1");
    }
    let consecutive_failures = raw.consecutive_failures.unwrap_or(d.consecutive_failures);
    if consecutive_failures > u32::from(u16::MAX) {
        // The shared state counts the streak in 16 bits.
        return err(f("consecutive_failures"), format!("must be in 0..=65535, got {consecutive_failures}"));
    }
    let answer_timeout_ms = raw.answer_timeout_ms.unwrap_or(d.answer_timeout_ms);
    if answer_timeout_ms != 0 && !(100..=86_400_000).contains(&answer_timeout_ms) {
        return err(f("answer_timeout_ms"), format!("must be 0 (off) or in 100..=86400000, got {answer_timeout_ms}"));
    }
    let policy = Policy {
        mode,
        consecutive_failures,
        failure_rate: rate(raw.failure_rate, d.failure_rate, f("failure_rate"))?,
        slow_call_ms: slow.duration_ms.unwrap_or(0),
        slow_call_rate: rate(slow.rate, d.slow_call_rate, f("slow_call.rate"))?,
        window,
        minimum_calls,
        open_base_ms,
        open_max_ms,
        open_multiplier,
        open_jitter,
        half_open_permits,
        half_open_successes,
        recovery_ramp_ms: raw.recovery_ramp_ms.unwrap_or(0),
        answer_timeout_ms,
    };
    if policy.recovery_ramp_ms > MAX_RECOVERY_RAMP_MS {
        return err(
            f("recovery_ramp_ms"),
            format!("must be at most {MAX_RECOVERY_RAMP_MS}, got {}", policy.recovery_ramp_ms),
        );
    }
    let admission = admission(raw.admission.clone().unwrap_or_default(), &f("admission"))?;
    Ok(BreakerPolicy { policy, failure, admission })
}

/// `admission`: `per_second` 0 is off; `burst` 0 means one second's worth; `max_delay_ms` 0
/// refuses at once what finds no token.
fn admission(raw: RawAdmission, at: &str) -> Result<Budget, ConfigError> {
    let per_second = raw.per_second.unwrap_or(0);
    if per_second > MAX_PER_SECOND {
        return err(format!("{at}.per_second"), format!("must be at most {MAX_PER_SECOND}, got {per_second}"));
    }
    let burst = raw.burst.unwrap_or(0);
    if burst > MAX_BURST {
        return err(format!("{at}.burst"), format!("must be at most {MAX_BURST}, got {burst}"));
    }
    let max_delay_ms = raw.max_delay_ms.unwrap_or(0);
    if max_delay_ms > MAX_DELAY_MS {
        return err(format!("{at}.max_delay_ms"), format!("must be at most {MAX_DELAY_MS}, got {max_delay_ms}"));
    }
    Ok(Budget { per_second, burst, max_delay_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(json: &str) -> Result<Config, ConfigError> {
        parse(json.as_bytes(), FilterKind::Http)
    }

    #[test]
    fn empty_config_takes_design_defaults() {
        let c = http("").unwrap();
        assert_eq!(c.shed, Shed::WebSocket);
        assert_eq!(c.key, KeySource::Cluster);
        assert_eq!(c.defaults.policy, Policy::default());
        assert_eq!(c.defaults.failure, FailurePolicy::default());
        assert_eq!(c.reject, Reject { status: 503, headers: vec![], websocket: WebSocketReject::Http });
        assert_eq!(c.max_breakers, 1024);
        assert!(c.control.is_none());
    }

    #[test]
    fn design_example_parses() {
        let c = http(
            r#"{"shed":"websocket","key":"cluster","defaults":{"mode":"enforce",
            "failure":{"statuses":["5xx"],"ignore_statuses":[],"resets":true},"consecutive_failures":5,
            "failure_rate":0.5,"slow_call":{"duration_ms":0,"rate":1.0},"window":{"kind":"count","size":100},
            "minimum_calls":10,"open":{"base_ms":30000,"max_ms":300000,"multiplier":2.0,"jitter":0.1},
            "half_open":{"permits":3,"successes":2},"recovery_ramp_ms":0,
            "admission":{"per_second":0,"burst":0}},
            "breakers":{"collab_ws":{"consecutive_failures":3}},"reject":{"status":503,"headers":{},"websocket":"http"},
            "control":null,"max_breakers":1024}"#,
        )
        .unwrap();
        assert_eq!(c.policy_for("collab_ws").policy.consecutive_failures, 3);
        assert_eq!(c.policy_for("collab_ws").policy.minimum_calls, 10);
        assert_eq!(c.policy_for("other").policy.consecutive_failures, 5);
    }

    #[test]
    fn overrides_merge_nested_objects_field_by_field() {
        let c =
            http(r#"{"defaults":{"open":{"base_ms":1000,"max_ms":8000}},"breakers":{"a":{"open":{"base_ms":2000}}}}"#)
                .unwrap();
        let p = &c.policy_for("a").policy;
        assert_eq!((p.open_base_ms, p.open_max_ms), (2000, 8000));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"defaults":{"failure_rate":1.5}}"#, "defaults.failure_rate"),
            (r#"{"defaults":{"failure_rate":"x"}}"#, "defaults.failure_rate"),
            (r#"{"defaults":{"bogus":1}}"#, "defaults.bogus"),
            (r#"{"bogus":1}"#, "bogus"),
            (r#"{"breakers":{"ws":{"half_open":{"permits":0}}}}"#, "breakers.ws.half_open.permits"),
            (r#"{"defaults":{"failure":{"statuses":["6xx"]}}}"#, "defaults.failure.statuses[0]"),
            (r#"{"defaults":{"window":{"kind":"time","seconds":0}}}"#, "defaults.window.seconds"),
            (r#"{"defaults":{"open":{"jitter":1.0}}}"#, "defaults.open.jitter"),
            (r#"{"defaults":{"mode":"sometimes"}}"#, "defaults.mode"),
            (r#"{"reject":{"status":200}}"#, "reject.status"),
            (r#"{"reject":{"websocket":"close"}}"#, "reject.websocket"),
            (r#"{"key":"header:"}"#, "key"),
            (r#"{"breaker":"x"}"#, "breaker"),
            (r#"{"control":{"cluster":"c","wait_s":30,"timeout_ms":1000}}"#, "control.timeout_ms"),
            (r#"{"defaults":{"consecutive_failures":70000}}"#, "defaults.consecutive_failures"),
            (r#"{"defaults":{"window":{"kind":"time"},"minimum_calls":700000}}"#, "defaults.minimum_calls"),
            (r#"{"breakers":{"a":{"answer_timeout_ms":5}}}"#, "breakers.a.answer_timeout_ms"),
            (r#"{"defaults":{"admission":{"per_second":2000000}}}"#, "defaults.admission.per_second"),
            (r#"{"breakers":{"ws":{"admission":{"burst":-1}}}}"#, "breakers.ws.admission.burst"),
            (r#"{"breakers":{"ws":{"admission":{"burst":20000000}}}}"#, "breakers.ws.admission.burst"),
            (r#"{"defaults":{"admission":{"rate":5}}}"#, "defaults.admission.rate"),
            (r#"{"defaults":{"admission":{"max_delay_ms":10001}}}"#, "defaults.admission.max_delay_ms"),
            (r#"{"breakers":{"ws":{"admission":{"max_delay_ms":-5}}}}"#, "breakers.ws.admission.max_delay_ms"),
        ];
        for (json, field) in cases {
            let e = http(json).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
        let unknown = http(r#"{"defaults":{"bogus":1}}"#).unwrap_err();
        assert!(unknown.to_string().contains("bogus"), "{unknown}");
    }

    #[test]
    fn reject_websocket_takes_http_or_close_frame() {
        let c = http(r#"{"reject":{"websocket":"close_frame"}}"#).unwrap();
        assert_eq!((c.reject.status, c.reject.websocket), (503, WebSocketReject::CloseFrame));
        assert_eq!(http(r#"{"reject":{"websocket":"http"}}"#).unwrap().reject.websocket, WebSocketReject::Http);
        assert_eq!(http(r#"{"reject":{"status":429}}"#).unwrap().reject.websocket, WebSocketReject::Http);
    }

    #[test]
    fn tcp_breakers_wait_for_no_answer_so_quiet_clients_never_fail_a_probe() {
        let c = parse(
            br#"{"breaker":"db","defaults":{"answer_timeout_ms":2000},"breakers":{"db":{"answer_timeout_ms":3000}}}"#,
            FilterKind::Tcp,
        )
        .unwrap();
        assert_eq!(c.defaults.policy.answer_timeout_ms, 0);
        assert!(c.overrides.values().all(|p| p.policy.answer_timeout_ms == 0));
        let h = parse(br#"{"defaults":{"answer_timeout_ms":2000}}"#, FilterKind::Http).unwrap();
        assert_eq!(h.defaults.policy.answer_timeout_ms, 2000);
    }

    #[test]
    fn admission_is_off_by_default_and_merges_per_breaker() {
        let c = http(
            r#"{"defaults":{"admission":{"per_second":100,"burst":50}},"breakers":{"a":{"admission":{"burst":10,"max_delay_ms":2000}},
            "b":{"admission":{"per_second":0}}}}"#,
        )
        .unwrap();
        assert_eq!(http("").unwrap().defaults.admission, Budget::default());
        assert!(http("").unwrap().defaults.admission.is_off());
        assert_eq!(c.policy_for("other").admission, Budget { per_second: 100, burst: 50, max_delay_ms: 0 });
        assert_eq!(c.policy_for("a").admission, Budget { per_second: 100, burst: 10, max_delay_ms: 2000 });
        assert!(c.policy_for("b").admission.is_off());
    }

    #[test]
    fn tcp_requires_its_breaker_name() {
        assert_eq!(parse(b"{}", FilterKind::Tcp).unwrap_err().field, "breaker");
        let c = parse(br#"{"breaker":"db"}"#, FilterKind::Tcp).unwrap();
        assert_eq!(c.tcp_breaker.as_deref(), Some("db"));
    }
}
