//! Fleet-wide resets, the proxy's side: a snapshot entry `{"key", "state": "reset", "event_id"}`
//! closes this proxy's local breaker(s) for the key (or every key, `*`) once, through the
//! recovery ramp. Pure: which entries are resets, which event ids are new (against a bounded
//! list of applied ids the caller keeps in shared data), and what a reset does to a breaker.

use crate::breaker::Transition;
use crate::state::{BreakerState, Phase};
use crate::wire::{EntryState, SnapshotBody};

/// The snapshot's state name for a reset.
pub const STATE: &str = "reset";
/// How many applied event ids a proxy remembers (a reset stays in the snapshot for minutes;
/// the control plane keeps at most 100 at once).
pub const MAX_APPLIED: usize = 256;
/// Event ids longer than this are ignored (a proxy keeps every id it applied).
pub const MAX_EVENT_ID: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetEntry {
    pub key: String,
    pub event_id: String,
}

/// The reset entries of a snapshot body, in order. Entries without an event id, or with an id
/// that cannot be remembered (too long, or containing a newline), are skipped.
pub fn parse_resets(body: &[u8]) -> Vec<ResetEntry> {
    let Ok(raw) = serde_json::from_slice::<SnapshotBody>(body) else { return vec![] };
    raw.breakers
        .into_iter()
        .filter(|e| matches!(&e.state, EntryState::Other(s) if s == STATE))
        .filter_map(|e| {
            let id = e.event_id.filter(|id| !id.is_empty() && id.len() <= MAX_EVENT_ID && !id.contains('\n'))?;
            (!e.key.is_empty()).then_some(ResetEntry { key: e.key, event_id: id })
        })
        .collect()
}

/// The event ids this proxy has applied, oldest first, as shared data holds them
/// (`\n`-separated).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied(Vec<String>);

impl Applied {
    pub fn decode(bytes: &[u8]) -> Applied {
        let text = String::from_utf8_lossy(bytes);
        Applied(text.split('\n').filter(|s| !s.is_empty()).map(str::to_string).collect())
    }

    pub fn encode(&self) -> Vec<u8> {
        self.0.join("\n").into_bytes()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.iter().any(|a| a == id)
    }

    /// Remembers `id`; false when it was already applied. The oldest ids are forgotten past
    /// [`MAX_APPLIED`].
    pub fn insert(&mut self, id: &str) -> bool {
        if self.contains(id) {
            return false;
        }
        self.0.push(id.to_string());
        let excess = self.0.len().saturating_sub(MAX_APPLIED);
        self.0.drain(..excess);
        true
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Closes an open or half-open breaker as if its probes had succeeded at `now_ms`: the recovery
/// ramp starts, the open-time backoff starts over, the window is cleared. A closed breaker is
/// left as it is (no ramp for a breaker that was not refusing).
pub fn close(s: &mut BreakerState, now_ms: u64) -> Option<Transition> {
    if s.phase == Phase::Closed {
        return None;
    }
    let transition = crate::breaker::enter_closed(s, now_ms);
    s.open_until_ms = 0;
    Some(transition)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::state::Reason;
    use crate::{admit, record, Call, Decision};

    #[test]
    fn reset_entries_are_picked_from_the_snapshot_and_others_skipped() {
        let body = br#"{"version":3,"breakers":[
            {"key":"a","state":"forced_open","event_id":"e1"},
            {"key":"b","state":"reset","event_id":"r1"},
            {"key":"*","state":"reset","event_id":"r2","until":"2026-11-22T10:05:00Z"},
            {"key":"c","state":"reset"},
            {"key":"d","state":"draining","event_id":"x"}]}"#;
        assert_eq!(
            parse_resets(body),
            [
                ResetEntry { key: "b".into(), event_id: "r1".into() },
                ResetEntry { key: "*".into(), event_id: "r2".into() }
            ]
        );
        assert!(parse_resets(b"{nope").is_empty());
        let long =
            format!(r#"{{"version":1,"breakers":[{{"key":"b","state":"reset","event_id":"{}"}}]}}"#, "x".repeat(129));
        assert!(parse_resets(long.as_bytes()).is_empty());
    }

    #[test]
    fn applied_ids_are_remembered_once_and_bounded() {
        let mut a = Applied::default();
        assert!(a.insert("r1"));
        assert!(!a.insert("r1"));
        let round = Applied::decode(&a.encode());
        assert_eq!(round, a);
        for i in 0..MAX_APPLIED + 10 {
            a.insert(&format!("id{i}"));
        }
        assert_eq!(a.len(), MAX_APPLIED);
        assert!(!a.contains("r1"), "the oldest is forgotten first");
        assert!(a.contains(&format!("id{}", MAX_APPLIED + 9)));
    }

    #[test]
    fn a_reset_closes_an_open_breaker_into_its_ramp_and_leaves_a_closed_one_alone() {
        let p = Policy { consecutive_failures: 1, recovery_ramp_ms: 10_000, open_jitter: 0.0, ..Policy::default() };
        let mut s = BreakerState::new(&p);
        assert_eq!(close(&mut s, 5), None);
        assert_eq!(s.closed_at_ms, 0, "a closed breaker starts no ramp");
        record(&mut s, &p, 1_000, Call { failure: true, slow: false }, None, 0.5);
        s.reopens = 3;
        assert_eq!(s.phase, Phase::Open);
        let t = close(&mut s, 2_000).unwrap();
        assert_eq!((t.from, t.to, t.reason), (Phase::Open, Phase::Closed, Reason::ConsecutiveFailures));
        assert_eq!((s.phase, s.reopens, s.closed_at_ms), (Phase::Closed, 0, 2_000));
        // Through the ramp: at its start, (almost) everything is refused; at its end, nothing.
        let (d, _) = admit(&mut s, &p, 2_001, 0.5);
        assert!(matches!(d, Decision::Refuse(r) if r.reason == Reason::RecoveryRamp));
        let (d, _) = admit(&mut s, &p, 12_000, 0.99);
        assert!(matches!(d, Decision::Admit { .. }));
    }
}
