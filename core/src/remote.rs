//! Remote overrides from the control plane, as pure functions: parsing a snapshot, folding it
//! into the view every worker reads from shared data, and deciding a new call from that view.
//! Time and randomness are inputs, as in the breaker.

use serde::{Deserialize, Serialize};

use crate::drain::DrainEntry;
use crate::time::parse_rfc3339_ms;
use crate::wire::{EntryState, SnapshotBody};
pub use crate::wire::{Forced, MAX_SNAPSHOT_BYTES};

/// How long an ended override is remembered for its recovery ramp (the longest ramp allowed).
pub const MAX_RAMP_MS: u64 = 3_600_000;

/// One override as the proxy keeps it; `until_ms == 0` means until the control plane ends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    pub key: String,
    pub state: Forced,
    pub reason: String,
    pub until_ms: u64,
}

impl Override {
    fn holds(&self, now_ms: u64) -> bool {
        self.until_ms == 0 || now_ms < self.until_ms
    }
}

/// A forced-open that ended, remembered so new calls to its key ramp back in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub key: String,
    pub at_ms: u64,
}

/// The last good snapshot and when the control plane last confirmed it. Written by the poller
/// into shared data, read by every worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteView {
    pub version: u64,
    /// When a poll last returned this version (200 or 304); 0 = never.
    pub confirmed_ms: u64,
    pub overrides: Vec<Override>,
    pub ended: Vec<Ended>,
    /// The snapshot's drains (DESIGN, "draining").
    #[serde(default)]
    pub drains: Vec<DrainEntry>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub version: u64,
    pub overrides: Vec<Override>,
    pub drains: Vec<DrainEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    TooLarge(usize),
    Malformed(String),
    /// Older than the view the proxy holds (and that view is not stale).
    Backwards {
        got: u64,
        have: u64,
    },
}

/// Parses a snapshot body into the overrides this proxy applies. Entries in states it does not
/// act on (added by a newer control plane) are skipped, not refused.
pub fn parse_snapshot(body: &[u8]) -> Result<Snapshot, SnapshotError> {
    if body.len() > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotError::TooLarge(body.len()));
    }
    let raw: SnapshotBody = serde_json::from_slice(body).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    let mut overrides = Vec::with_capacity(raw.breakers.len());
    let mut others = Vec::new();
    for (i, e) in raw.breakers.into_iter().enumerate() {
        let EntryState::Forced(state) = e.state else {
            others.push(e);
            continue;
        };
        if e.key.is_empty() {
            return Err(SnapshotError::Malformed(format!("breakers[{i}].key: empty")));
        }
        let until_ms = match e.until.as_deref() {
            None => 0,
            Some(t) => parse_rfc3339_ms(t)
                .ok_or_else(|| SnapshotError::Malformed(format!("breakers[{i}].until: not RFC 3339: {t:?}")))?
                .max(1),
        };
        let reason = e.reason.filter(|r| !r.is_empty()).unwrap_or_else(|| "forced".to_string());
        overrides.push(Override { key: e.key, state, reason, until_ms });
    }
    Ok(Snapshot { version: raw.version, overrides, drains: crate::drain::drains_of(others) })
}

impl RemoteView {
    /// The view is live until `stale_after_ms` past its last confirmation.
    pub fn live(&self, now_ms: u64, stale_after_ms: u64) -> bool {
        // A confirmation in the future was made before a clock step backwards: the view is not
        // live until the next poll confirms it again (a few ms later), so remote overrides never
        // hold for the length of the step.
        self.confirmed_ms > 0
            && self.confirmed_ms <= now_ms.saturating_add(crate::poll::CLOCK_TOLERANCE_MS)
            && now_ms < self.confirmed_ms.saturating_add(stale_after_ms)
    }

    /// The override that holds for `key` at `now_ms`: a live keyed entry, else a live `*` entry.
    /// An entry past its `until` (or in a stale view) is not looked up: an expired keyed entry
    /// falls through to `*`.
    pub fn lookup(&self, key: &str, now_ms: u64, stale_after_ms: u64) -> Option<&Override> {
        if !self.live(now_ms, stale_after_ms) {
            return None;
        }
        let holding = |k: &str| self.overrides.iter().find(|o| o.key == k && o.holds(now_ms));
        holding(key).or_else(|| holding("*"))
    }

    /// Keys whose forced-open holds at `now_ms` (for the `floodgate_forced` gauge).
    pub fn forced_open_keys(&self, now_ms: u64, stale_after_ms: u64) -> impl Iterator<Item = &str> {
        let live = self.live(now_ms, stale_after_ms);
        self.overrides
            .iter()
            .filter(move |o| live && o.state == Forced::ForcedOpen && o.holds(now_ms))
            .map(|o| o.key.as_str())
    }

    /// Folds a fetched snapshot into the view. A stale view accepts any version (the control
    /// plane may have lost its state and started over); a live one refuses to go backwards.
    pub fn apply(&self, snap: Snapshot, now_ms: u64, stale_after_ms: u64) -> Result<RemoteView, SnapshotError> {
        let live = self.live(now_ms, stale_after_ms);
        if live && snap.version < self.version {
            return Err(SnapshotError::Backwards { got: snap.version, have: self.version });
        }
        // Forced-opens that this snapshot ends start their ramp now (or when they expired, or
        // when the view went stale, whichever came first).
        let lapse_ms = if live { now_ms } else { self.confirmed_ms.saturating_add(stale_after_ms).min(now_ms) };
        let mut ended: Vec<Ended> =
            self.ended.iter().filter(|e| now_ms < e.at_ms.saturating_add(MAX_RAMP_MS)).cloned().collect();
        for old in self.overrides.iter().filter(|o| o.state == Forced::ForcedOpen) {
            let still_open = snap.overrides.iter().any(|n| n.key == old.key && n.state == Forced::ForcedOpen);
            if still_open {
                continue;
            }
            let at_ms = if old.until_ms > 0 { old.until_ms.min(lapse_ms) } else { lapse_ms };
            ended.retain(|e| e.key != old.key);
            ended.push(Ended { key: old.key.clone(), at_ms });
        }
        ended.retain(|e| !snap.overrides.iter().any(|n| n.key == e.key && n.state == Forced::ForcedOpen));
        Ok(RemoteView {
            version: snap.version,
            confirmed_ms: now_ms,
            overrides: snap.overrides,
            ended,
            drains: snap.drains,
        })
    }

    /// The drains that hold at `now_ms` in a live view (a stale view drains nothing: an
    /// unreachable control plane never closes connections by itself).
    pub fn draining(&self, now_ms: u64, stale_after_ms: u64) -> impl Iterator<Item = &DrainEntry> {
        let live = self.live(now_ms, stale_after_ms);
        self.drains.iter().filter(move |d| live && d.holds(now_ms))
    }
}

/// What the control plane's view says about a new call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteDecision<'a> {
    /// No override: the local breaker decides.
    Local,
    /// `forced_closed`: admit whatever the local breaker says.
    Admit,
    /// `forced_open`: refuse with the control plane's reason.
    Refuse { reason: &'a str, retry_after_ms: u64 },
    /// A forced-open ended recently and this call falls outside the ramp's admitted share.
    Ramp { retry_after_ms: u64 },
}

/// Tuning of [`decide`] from the breaker's policy.
#[derive(Clone, Copy, Debug)]
pub struct DecideParams {
    pub stale_after_ms: u64,
    pub ramp_ms: u64,
    /// `retry-after` for a forced-open with no end time.
    pub open_retry_ms: u64,
    pub jitter: f64,
    pub short_retry_ms: u64,
}

/// Decides a new call to `key`. `unit` is uniform in [0, 1): it picks the ramp's share and
/// spreads `retry-after` so refused clients do not return together.
pub fn decide<'a>(view: &'a RemoteView, key: &str, now_ms: u64, p: &DecideParams, unit: f64) -> RemoteDecision<'a> {
    if let Some(o) = view.lookup(key, now_ms, p.stale_after_ms) {
        return match o.state {
            Forced::ForcedOpen => {
                let base = if o.until_ms > 0 { o.until_ms - now_ms } else { p.open_retry_ms };
                RemoteDecision::Refuse { reason: &o.reason, retry_after_ms: spread(base, p.jitter, unit) }
            }
            Forced::ForcedClosed => RemoteDecision::Admit,
        };
    }
    // No override holds: a forced-open of this key or of `*` that lapsed (at its end time or
    // when the view went stale, whichever came first) ramps new calls back in.
    let stale_at = view.confirmed_ms.saturating_add(p.stale_after_ms);
    let mut ramp_from = 0u64;
    for o in view.overrides.iter().filter(|o| o.state == Forced::ForcedOpen && (o.key == key || o.key == "*")) {
        let until = if o.until_ms > 0 { o.until_ms } else { u64::MAX };
        ramp_from = ramp_from.max(until.min(stale_at));
    }
    for e in view.ended.iter().filter(|e| e.key == key || e.key == "*") {
        ramp_from = ramp_from.max(e.at_ms);
    }
    if p.ramp_ms > 0 && ramp_from > 0 && ramp_from <= now_ms && now_ms < ramp_from.saturating_add(p.ramp_ms) {
        let share = now_ms.saturating_sub(ramp_from) as f64 / p.ramp_ms as f64;
        if unit >= share {
            let unit = crate::breaker::rebits(unit); // this draw is above the share: use other bits
            return RemoteDecision::Ramp { retry_after_ms: spread(p.short_retry_ms, p.jitter, unit) };
        }
    }
    RemoteDecision::Local
}

fn spread(ms: u64, jitter: f64, unit: f64) -> u64 {
    crate::breaker::whole_seconds(ms, jitter, unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: u64 = 120_000;
    const T0: u64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z

    fn params(ramp_ms: u64) -> DecideParams {
        DecideParams { stale_after_ms: STALE, ramp_ms, open_retry_ms: 30_000, jitter: 0.0, short_retry_ms: 1_000 }
    }

    fn open(key: &str, until_ms: u64) -> Override {
        Override { key: key.into(), state: Forced::ForcedOpen, reason: "backpressure_critical".into(), until_ms }
    }

    fn view(overrides: Vec<Override>) -> RemoteView {
        RemoteView { version: 3, confirmed_ms: T0, overrides, ..RemoteView::default() }
    }

    #[test]
    fn parses_the_design_snapshot_and_ignores_unknown_fields() {
        let body = br#"{"version": 7, "generated_at": "2026-11-22T10:00:00Z", "extra": [1],
            "breakers": [{"key": "collab_ws", "state": "forced_open", "reason": "backpressure_critical",
                          "since": "2026-11-22T09:58:00Z", "until": "2026-11-22T10:00:00Z", "event_id": "e1"},
                         {"key": "*", "state": "forced_closed", "until": null}]}"#;
        let s = parse_snapshot(body).unwrap();
        assert_eq!(s.version, 7);
        assert_eq!(s.overrides[0], open("collab_ws", T0));
        assert_eq!(
            s.overrides[1],
            Override { key: "*".into(), state: Forced::ForcedClosed, reason: "forced".into(), until_ms: 0 }
        );
    }

    #[test]
    fn skips_entries_in_states_it_does_not_act_on() {
        let body = br#"{"version":2,"breakers":[{"key":"a","state":"reset","event_id":"e1"},
                                                {"key":"","state":"draining"},
                                                {"key":"b","state":"forced_open"}]}"#;
        let s = parse_snapshot(body).unwrap();
        assert_eq!(s.overrides.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn refuses_malformed_truncated_and_oversized_snapshots() {
        let good = br#"{"version":1,"breakers":[{"key":"a","state":"forced_open"}]}"#;
        assert!(parse_snapshot(good).is_ok());
        for bad in [
            &good[..good.len() - 3],
            br#"{"version":-1,"breakers":[]}"#.as_slice(),
            br#"{"version":1,"breakers":[{"key":"a","state":7}]}"#,
            br#"{"version":1,"breakers":[{"key":"","state":"forced_open"}]}"#,
            br#"{"version":1,"breakers":[{"key":"a","state":"forced_open","until":"tomorrow"}]}"#,
            br#"{"breakers":[]}"#,
            b"",
        ] {
            assert!(
                matches!(parse_snapshot(bad), Err(SnapshotError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut big = br#"{"version":1,"breakers":[],"pad":""#.to_vec();
        big.resize(MAX_SNAPSHOT_BYTES + 1, b'x');
        assert!(matches!(parse_snapshot(&big), Err(SnapshotError::TooLarge(_))));
    }

    #[test]
    fn a_key_override_wins_over_the_wildcard() {
        let mut closed = open("b", 0);
        closed.state = Forced::ForcedClosed;
        let v = view(vec![open("*", 0), closed]);
        let p = params(0);
        assert_eq!(decide(&v, "b", T0 + 1, &p, 0.5), RemoteDecision::Admit);
        assert_eq!(
            decide(&v, "a", T0 + 1, &p, 0.5),
            RemoteDecision::Refuse { reason: "backpressure_critical", retry_after_ms: 30_000 }
        );
    }

    #[test]
    fn an_expired_keyed_entry_falls_through_to_the_wildcard() {
        let v = view(vec![open("a", T0 + 1_000), Override { reason: "global".into(), ..open("*", 0) }]);
        let p = params(0);
        assert!(matches!(
            decide(&v, "a", T0 + 500, &p, 0.5),
            RemoteDecision::Refuse { reason: "backpressure_critical", .. }
        ));
        assert!(matches!(decide(&v, "a", T0 + 2_000, &p, 0.5), RemoteDecision::Refuse { reason: "global", .. }));
        let mut closed = open("a", T0 + 1_000);
        closed.state = Forced::ForcedClosed;
        let v = view(vec![closed, Override { reason: "global".into(), ..open("*", 0) }]);
        assert_eq!(decide(&v, "a", T0 + 500, &p, 0.5), RemoteDecision::Admit);
        assert!(matches!(decide(&v, "a", T0 + 2_000, &p, 0.5), RemoteDecision::Refuse { reason: "global", .. }));
    }

    #[test]
    fn a_clock_stepped_back_before_a_ramp_start_does_not_refuse() {
        let v = view(vec![open("a", T0 + 10_000)]);
        // Lapsed at T0 + 10 s; the clock is then stepped back to before that, past the entry's
        // confirmation: the entry holds again (live) — but a ramp never starts in the future.
        let mut ended = view(vec![]);
        ended.ended.push(Ended { key: "a".into(), at_ms: T0 + 50_000 });
        assert_eq!(decide(&ended, "a", T0 + 20_000, &params(60_000), 0.99), RemoteDecision::Local);
        assert!(matches!(decide(&v, "a", T0 + 5_000, &params(0), 0.5), RemoteDecision::Refuse { .. }));
    }

    #[test]
    fn forced_open_tells_clients_when_it_ends() {
        let v = view(vec![open("a", T0 + 10_000)]);
        let d = decide(&v, "a", T0 + 4_000, &params(0), 0.0);
        assert_eq!(d, RemoteDecision::Refuse { reason: "backpressure_critical", retry_after_ms: 6_000 });
        let jittered = DecideParams { jitter: 0.5, ..params(0) };
        assert_eq!(
            decide(&v, "a", T0 + 4_000, &jittered, 0.5),
            RemoteDecision::Refuse { reason: "backpressure_critical", retry_after_ms: 8_000 }
        );
        assert_eq!(decide(&v, "other", T0 + 4_000, &params(0), 0.0), RemoteDecision::Local);
    }

    #[test]
    fn an_expired_override_lapses_then_ramps() {
        let v = view(vec![open("a", T0 + 10_000)]);
        let p = params(10_000);
        // 2.5 s into a 10 s ramp: a quarter is admitted.
        assert_eq!(decide(&v, "a", T0 + 12_500, &p, 0.2), RemoteDecision::Local);
        assert_eq!(decide(&v, "a", T0 + 12_500, &p, 0.3), RemoteDecision::Ramp { retry_after_ms: 1_000 });
        assert_eq!(decide(&v, "a", T0 + 20_000, &p, 0.99), RemoteDecision::Local);
        assert_eq!(decide(&v, "a", T0 + 12_500, &params(0), 0.99), RemoteDecision::Local);
    }

    #[test]
    fn a_stale_view_lapses_every_override() {
        let v = view(vec![open("*", 0)]);
        assert!(matches!(decide(&v, "a", T0 + STALE - 1, &params(0), 0.5), RemoteDecision::Refuse { .. }));
        assert_eq!(decide(&v, "a", T0 + STALE, &params(0), 0.5), RemoteDecision::Local);
        assert_eq!(
            decide(&v, "a", T0 + STALE + 1_000, &params(10_000), 0.5),
            RemoteDecision::Ramp { retry_after_ms: 1_000 }
        );
        assert_eq!(decide(&RemoteView::default(), "a", T0, &params(10_000), 0.0), RemoteDecision::Local);
    }

    #[test]
    fn a_live_view_does_not_go_backwards_but_a_stale_one_starts_over() {
        let v = view(vec![]);
        let old = Snapshot { version: 2, overrides: vec![open("a", 0)], ..Snapshot::default() };
        assert_eq!(v.apply(old.clone(), T0 + 1, STALE), Err(SnapshotError::Backwards { got: 2, have: 3 }));
        let applied = v.apply(old, T0 + STALE, STALE).unwrap();
        assert_eq!((applied.version, applied.confirmed_ms), (2, T0 + STALE));
        assert_eq!(applied.overrides.len(), 1);
    }

    #[test]
    fn ending_a_forced_open_starts_its_ramp() {
        let v = view(vec![open("a", 0), open("b", 0)]);
        let next = v
            .apply(Snapshot { version: 4, overrides: vec![open("b", 0)], ..Snapshot::default() }, T0 + 5_000, STALE)
            .unwrap();
        assert_eq!(next.ended, vec![Ended { key: "a".into(), at_ms: T0 + 5_000 }]);
        let p = params(10_000);
        assert_eq!(decide(&next, "a", T0 + 6_000, &p, 0.5), RemoteDecision::Ramp { retry_after_ms: 1_000 });
        assert_eq!(decide(&next, "a", T0 + 6_000, &p, 0.05), RemoteDecision::Local);
        // Re-opened: the ramp is forgotten; long after: pruned.
        let again = next
            .apply(Snapshot { version: 5, overrides: vec![open("a", 0)], ..Snapshot::default() }, T0 + 7_000, STALE)
            .unwrap();
        assert_eq!(again.ended, vec![Ended { key: "b".into(), at_ms: T0 + 7_000 }]);
        let later = next
            .apply(Snapshot { version: 5, overrides: vec![], ..Snapshot::default() }, T0 + 5_000 + MAX_RAMP_MS, STALE)
            .unwrap();
        assert_eq!(later.ended.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn the_view_round_trips_through_json() {
        let mut v = view(vec![open("a", T0)]);
        v.ended.push(Ended { key: "*".into(), at_ms: 9 });
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(serde_json::from_slice::<RemoteView>(&bytes).unwrap(), v);
    }

    #[test]
    fn a_drain_entry_with_an_odd_per_second_is_skipped_and_the_rest_of_the_snapshot_applies() {
        for odd in ["2.5", "-1", "4294967296", "\"20\"", "null", "{}"] {
            let body = format!(
                r#"{{"version": 4, "breakers": [{{"key": "a", "state": "forced_open"}},
                {{"key": "b", "state": "draining", "per_second": {odd}, "until": "2026-11-22T10:00:10Z"}}]}}"#
            );
            let snap = parse_snapshot(body.as_bytes()).unwrap_or_else(|e| panic!("per_second {odd}: {e:?}"));
            assert_eq!((snap.overrides.len(), snap.drains.len()), (1, 0), "per_second {odd}");
        }
    }

    #[test]
    fn a_view_drains_what_its_snapshot_says_until_each_drain_ends_and_nothing_once_stale() {
        let body = br#"{"version": 4, "breakers": [
            {"key": "a", "state": "draining", "per_second": 20, "until": "2026-11-22T10:00:10Z", "event_id": "d1"},
            {"key": "b", "state": "draining", "per_second": 5, "until": "2026-11-22T10:01:00Z", "event_id": "d2"},
            {"key": "a", "state": "forced_open"}]}"#;
        let snap = parse_snapshot(body).unwrap();
        assert_eq!((snap.overrides.len(), snap.drains.len()), (1, 2));
        let v = RemoteView::default().apply(snap, T0, STALE).unwrap();
        let keys = |now: u64| v.draining(now, STALE).map(|d| d.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(T0 + 1_000), ["a", "b"]);
        assert_eq!(keys(T0 + 10_000), ["b"], "a's drain ended");
        assert!(keys(T0 + STALE).is_empty(), "a stale view drains nothing");
        // The next snapshot without them ends them at once.
        let next = v.apply(Snapshot { version: 5, ..Snapshot::default() }, T0 + 2_000, STALE).unwrap();
        assert_eq!(next.draining(T0 + 2_000, STALE).count(), 0);
        // Drains survive the trip through shared data.
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(serde_json::from_slice::<RemoteView>(&bytes).unwrap(), v);
    }
}
