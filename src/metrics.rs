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
/// New upgrades the admission budget refused (also counted in `floodgate_rejected_total`).
pub const ADMISSION_REJECTED: &str = "floodgate_admission_rejected_total";
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

struct BreakerIds {
    state: Option<u32>,
    forced: Option<u32>,
    calls: [Option<u32>; 3],
    rejected: [Option<u32>; 3],
    would_reject: [Option<u32>; 3],
    lost: Option<u32>,
    /// [from][to], defined when first taken.
    transitions: [[Option<u32>; 3]; 3],
}

impl BreakerIds {
    fn define(breaker: &str) -> BreakerIds {
        let b = ("breaker", breaker);
        let per = |name: &str, label: &str, values: [&str; 3]| {
            values.map(|v| define(MetricKind::Counter, &tagged(&[b, (label, v)], name)))
        };
        BreakerIds {
            state: define(MetricKind::Gauge, &tagged(&[b], STATE)),
            forced: define(MetricKind::Gauge, &tagged(&[b], FORCED)),
            calls: per(CALLS, "outcome", OUTCOMES),
            rejected: per(REJECTED, "kind", KINDS),
            would_reject: per(WOULD_REJECT, "kind", KINDS),
            lost: define(MetricKind::Counter, &tagged(&[b], UPDATES_LOST)),
            transitions: [[None; 3]; 3],
        }
    }
}

fn admission_ids(breaker: &str) -> [Option<u32>; 4] {
    let b = ("breaker", breaker);
    let [w, h, t] = KINDS.map(|k| define(MetricKind::Counter, &tagged(&[b, ("kind", k)], ADMISSION_REJECTED)));
    [define(MetricKind::Counter, &tagged(&[b], ADMISSION_ADMITTED)), w, h, t]
}

/// The per-VM metric registry.
#[derive(Default)]
pub struct Metrics {
    breakers: HashMap<String, BreakerIds>,
    untracked: Option<Option<u32>>,
    polls: [Option<u32>; 3],
    control_version: Option<Option<u32>>,
    control_stale: Option<Option<u32>>,
    /// Per breaker: admitted, then rejected per kind; defined when first taken.
    admission: HashMap<String, [Option<u32>; 4]>,
}

impl Metrics {
    fn breaker(&mut self, breaker: &str) -> &mut BreakerIds {
        // entry_ref looks up by &str: the common case allocates nothing.
        self.breakers.entry_ref(breaker).or_insert_with(|| BreakerIds::define(breaker))
    }

    pub fn call(&mut self, breaker: &str, outcome: Outcome) {
        add(self.breaker(breaker).calls[outcome as usize], 1);
    }

    pub fn rejected(&mut self, breaker: &str, kind: RejectKind) {
        add(self.breaker(breaker).rejected[kind as usize], 1);
    }

    pub fn would_reject(&mut self, breaker: &str, kind: RejectKind) {
        add(self.breaker(breaker).would_reject[kind as usize], 1);
    }

    pub fn lost(&mut self, breaker: &str) {
        add(self.breaker(breaker).lost, 1);
    }

    pub fn forced(&mut self, breaker: &str, on: bool) {
        set(self.breaker(breaker).forced, u64::from(on));
    }

    pub fn transition(&mut self, breaker: &str, from: Phase, to: Phase) {
        let ids = self.breaker(breaker);
        let slot = &mut ids.transitions[from as usize][to as usize];
        if slot.is_none() {
            let name = tagged(&[("breaker", breaker), ("from", from.name()), ("to", to.name())], TRANSITIONS);
            *slot = define(MetricKind::Counter, &name);
        }
        add(*slot, 1);
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
        let ids = self.admission.entry_ref(breaker).or_insert_with(|| admission_ids(breaker));
        add(ids[0], 1);
    }

    /// An upgrade the admission budget refused (counted in `floodgate_rejected_total` too).
    pub fn admission_rejected(&mut self, breaker: &str, kind: RejectKind) {
        let ids = self.admission.entry_ref(breaker).or_insert_with(|| admission_ids(breaker));
        add(ids[1 + kind as usize], 1);
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
