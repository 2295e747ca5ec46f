//! Floodgate's Envoy stats. Names are defined once here, in Istio's tag form
//! (`label=.=value;.;name`) so the shipped `stats_tags` turn them into Prometheus labels; ids are
//! defined on first use and cached per VM, so the request path makes no `define_metric` call.

use hashbrown::HashMap;

use crate::host::{self, MetricKind};
use floodgate_core::Phase;

pub const STATE: &str = "floodgate_state";
pub const FORCED: &str = "floodgate_forced";
pub const TRANSITIONS: &str = "floodgate_transitions_total";
pub const CALLS: &str = "floodgate_calls_total";
pub const REJECTED: &str = "floodgate_rejected_total";
/// Refusals a `dry_run` breaker would have made (README: an addition to DESIGN's series).
pub const WOULD_REJECT: &str = "floodgate_would_reject_total";
/// Outcomes or transitions lost to shared-data contention or host errors.
pub const UPDATES_LOST: &str = "floodgate_updates_lost_total";
/// Requests admitted untracked because `max_breakers` keys are already tracked.
pub const UNTRACKED: &str = "floodgate_untracked_total";
/// New upgrades that took a token of the admission budget (README: an addition to DESIGN's series).
pub const ADMISSION_ADMITTED: &str = "floodgate_admission_admitted_total";
/// New upgrades that waited in the proxy for their token (`admission.max_delay_ms`; also counted
/// in `floodgate_admission_admitted_total`).
pub const ADMISSION_DELAYED: &str = "floodgate_admission_delayed_total";
/// New upgrades the admission budget refused (also counted in `floodgate_rejected_total`).
pub const ADMISSION_REJECTED: &str = "floodgate_admission_rejected_total";
/// Existing WebSockets closed by a drain (DESIGN, `floodgate_drained_total`).
pub const DRAINED: &str = "floodgate_drained_total";
pub const CONTROL_POLLS: &str = "floodgate_control_polls_total";
pub const CONTROL_VERSION: &str = "floodgate_control_version";
pub const CONTROL_STALE: &str = "floodgate_control_stale";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success = 0,
    Failure = 1,
    Slow = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectKind {
    WebSocket = 0,
    Http = 1,
    Tcp = 2,
}

const OUTCOMES: [&str; 3] = ["success", "failure", "slow"];
const KINDS: [&str; 3] = ["websocket", "http", "tcp"];

/// `breaker=.=<key>;.;<name>` with further labels before the name.
pub fn tagged(labels: &[(&str, &str)], name: &str) -> String {
    let mut s = String::with_capacity(name.len() + labels.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>());
    for (k, v) in labels {
        s.push_str(k);
        s.push_str("=.=");
        s.push_str(v);
        s.push_str(";.;");
    }
    s.push_str(name);
    s
}

fn define(kind: MetricKind, name: &str) -> Option<u32> {
    match host::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(e) => {
            log::warn!("cannot define metric {name}: {e:?}");
            None
        }
    }
}

fn add(id: Option<u32>, n: i64) {
    if let Some(id) = id {
        // A stat that cannot be updated must not affect the request.
        let _ = host::increment_metric(id, n);
    }
}

fn set(id: Option<u32>, v: u64) {
    if let Some(id) = id {
        let _ = host::record_metric(id, v);
    }
}

/// One breaker's stat ids. Only `floodgate_state` is defined when the breaker is first seen;
/// every other series when first used (`None` = not yet defined, `Some(None)` = the host
/// refused it), so a key that only ever succeeds costs two stats, not a dozen: with client-chosen
/// keys, `max_breakers` of them stay cheap.
struct BreakerIds {
    state: Option<u32>,
    forced: Option<Option<u32>>,
    calls: [Option<Option<u32>>; 3],
    rejected: [Option<Option<u32>>; 3],
    would_reject: [Option<Option<u32>>; 3],
    lost: Option<Option<u32>>,
    drained: Option<Option<u32>>,
    transitions: [[Option<Option<u32>>; 3]; 3],
}

impl BreakerIds {
    fn define(breaker: &str) -> BreakerIds {
        BreakerIds {
            state: define(MetricKind::Gauge, &tagged(&[("breaker", breaker)], STATE)),
            forced: None,
            calls: [None; 3],
            rejected: [None; 3],
            would_reject: [None; 3],
            lost: None,
            drained: None,
            transitions: [[None; 3]; 3],
        }
    }
}

/// The id in `slot`, defining the stat on first use.
fn on_first_use(slot: &mut Option<Option<u32>>, kind: MetricKind, name: impl FnOnce() -> String) -> Option<u32> {
    *slot.get_or_insert_with(|| define(kind, &name()))
}

/// The per-VM metric registry.
#[derive(Default)]
pub struct Metrics {
    breakers: HashMap<String, BreakerIds>,
    /// `floodgate_forced` of keys with no other stats here.
    forced_only: HashMap<String, Option<u32>>,
    untracked: Option<Option<u32>>,
    polls: [Option<u32>; 3],
    control_version: Option<Option<u32>>,
    control_stale: Option<Option<u32>>,
    /// Per breaker: admitted, then rejected per kind; defined when first taken.
    /// `floodgate_admission_*` ids per breaker: [admitted, rejected websocket/http/tcp,
    /// delayed], each defined on first use.
    admission: HashMap<String, [Option<Option<u32>>; 5]>,
}

impl Metrics {
    fn breaker(&mut self, breaker: &str) -> &mut BreakerIds {
        // entry_ref looks up by &str: the common case allocates nothing.
        self.breakers.entry_ref(breaker).or_insert_with(|| BreakerIds::define(breaker))
    }

    pub fn call(&mut self, breaker: &str, outcome: Outcome) {
        self.calls(breaker, outcome, 1);
    }

    /// `n` calls with `outcome` at once (successes are counted per worker and added on the tick).
    pub fn calls(&mut self, breaker: &str, outcome: Outcome, n: i64) {
        let slot = &mut self.breaker(breaker).calls[outcome as usize];
        let name = || tagged(&[("breaker", breaker), ("outcome", OUTCOMES[outcome as usize])], CALLS);
        add(on_first_use(slot, MetricKind::Counter, name), n);
    }

    pub fn rejected(&mut self, breaker: &str, kind: RejectKind) {
        let slot = &mut self.breaker(breaker).rejected[kind as usize];
        let name = || tagged(&[("breaker", breaker), ("kind", KINDS[kind as usize])], REJECTED);
        add(on_first_use(slot, MetricKind::Counter, name), 1);
    }

    pub fn would_reject(&mut self, breaker: &str, kind: RejectKind) {
        let slot = &mut self.breaker(breaker).would_reject[kind as usize];
        let name = || tagged(&[("breaker", breaker), ("kind", KINDS[kind as usize])], WOULD_REJECT);
        add(on_first_use(slot, MetricKind::Counter, name), 1);
    }

    pub fn lost(&mut self, breaker: &str) {
        let slot = &mut self.breaker(breaker).lost;
        add(on_first_use(slot, MetricKind::Counter, || tagged(&[("breaker", breaker)], UPDATES_LOST)), 1);
    }

    /// `floodgate_forced` for `breaker` (a key of the control plane or the configuration, which
    /// may not be tracked: only this gauge is defined for it then).
    pub fn drained(&mut self, breaker: &str) {
        let slot = &mut self.breaker(breaker).drained;
        add(on_first_use(slot, MetricKind::Counter, || tagged(&[("breaker", breaker)], DRAINED)), 1);
    }

    pub fn forced(&mut self, breaker: &str, on: bool) {
        let name = || tagged(&[("breaker", breaker)], FORCED);
        let id = match self.breakers.get_mut(breaker) {
            Some(ids) => on_first_use(&mut ids.forced, MetricKind::Gauge, name),
            None => *self
                .forced_only
                .entry_ref(breaker)
                .or_insert_with(|| define(MetricKind::Gauge, &tagged(&[("breaker", breaker)], FORCED))),
        };
        set(id, u64::from(on));
    }

    /// Per-breaker stat sets defined in this VM (for tests: bounded by the tracked keys).
    pub fn breakers_defined(&self) -> usize {
        self.breakers.len()
    }

    pub fn transition(&mut self, breaker: &str, from: Phase, to: Phase) {
        let ids = self.breaker(breaker);
        let slot = &mut ids.transitions[from as usize][to as usize];
        let name = || tagged(&[("breaker", breaker), ("from", from.name()), ("to", to.name())], TRANSITIONS);
        add(on_first_use(slot, MetricKind::Counter, name), 1);
        set(ids.state, to as u64);
    }

    /// Makes the breaker's series exist (at their current values) once it is first seen.
    pub fn touch(&mut self, breaker: &str, phase: Phase) {
        if !self.breakers.contains_key(breaker) {
            let ids = self.breaker(breaker);
            set(ids.state, phase as u64);
        }
    }

    /// An upgrade the admission budget admitted.
    pub fn admission_admitted(&mut self, breaker: &str) {
        let slot = &mut self.admission.entry_ref(breaker).or_insert([None; 5])[0];
        add(on_first_use(slot, MetricKind::Counter, || tagged(&[("breaker", breaker)], ADMISSION_ADMITTED)), 1);
    }

    /// An upgrade the admission budget delayed (it took a token: counted as admitted too).
    pub fn admission_delayed(&mut self, breaker: &str) {
        self.admission_admitted(breaker);
        let slot = &mut self.admission.entry_ref(breaker).or_insert([None; 5])[4];
        add(on_first_use(slot, MetricKind::Counter, || tagged(&[("breaker", breaker)], ADMISSION_DELAYED)), 1);
    }

    /// An upgrade the admission budget refused (counted in `floodgate_rejected_total` too).
    pub fn admission_rejected(&mut self, breaker: &str, kind: RejectKind) {
        let slot = &mut self.admission.entry_ref(breaker).or_insert([None; 5])[1 + kind as usize];
        let name = || tagged(&[("breaker", breaker), ("kind", KINDS[kind as usize])], ADMISSION_REJECTED);
        add(on_first_use(slot, MetricKind::Counter, name), 1);
        self.rejected(breaker, kind);
    }

    pub fn untracked(&mut self) {
        let id = *self.untracked.get_or_insert_with(|| define(MetricKind::Counter, UNTRACKED));
        add(id, 1);
    }

    pub fn poll(&mut self, result: PollResult) {
        let i = result as usize;
        if self.polls[i].is_none() {
            self.polls[i] = define(MetricKind::Counter, &tagged(&[("result", result.name())], CONTROL_POLLS));
        }
        add(self.polls[i], 1);
    }

    pub fn control(&mut self, version: u64, stale: bool) {
        let v = *self.control_version.get_or_insert_with(|| define(MetricKind::Gauge, CONTROL_VERSION));
        let s = *self.control_stale.get_or_insert_with(|| define(MetricKind::Gauge, CONTROL_STALE));
        set(v, version);
        set(s, u64::from(stale));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollResult {
    Ok = 0,
    NotModified = 1,
    Error = 2,
}

impl PollResult {
    pub fn name(self) -> &'static str {
        match self {
            PollResult::Ok => "ok",
            PollResult::NotModified => "not_modified",
            PollResult::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_names_follow_istio_form() {
        assert_eq!(
            tagged(&[("breaker", "collab_ws"), ("kind", "websocket")], REJECTED),
            "breaker=.=collab_ws;.;kind=.=websocket;.;floodgate_rejected_total"
        );
        assert_eq!(tagged(&[], CONTROL_VERSION), "floodgate_control_version");
    }

    #[test]
    fn phase_order_matches_the_state_gauge() {
        assert_eq!([Phase::Closed, Phase::HalfOpen, Phase::Open].map(|p| p as u64), [0, 1, 2]);
    }
}
