//! Fleet-wide resets (`POST /api/v1/breakers/{key}/reset`): an operator who fixed a backend
//! closes every proxy's local breaker(s) for a key (or all, `*`) without waiting out an open
//! time that grew to minutes. A reset is an entry of the snapshot, `{"key", "state": "reset",
//! "event_id", ...}`, kept for [`RESET_KEEP_MS`]; each proxy applies a given `event_id` once.
//! Pure functions over the engine's [`State`], so both stores run the same code.

use serde::{Deserialize, Serialize};

use crate::engine::{Event, Outcome, Source, State};
use crate::rfc3339;
use floodgate_core::wire::{EntryState, SnapshotEntry};

/// How long a reset stays in the snapshot (DESIGN: "a few minutes"): every proxy that polls
/// within it applies the reset; proxies remember applied event ids, so it is applied once.
pub const RESET_KEEP_MS: u64 = 5 * 60_000;
/// At most this many resets are in the snapshot at once (older ones leave first).
pub const RESETS_KEPT: usize = 100;
/// The snapshot's state name for a reset.
pub const STATE: &str = "reset";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reset {
    pub key: String,
    pub event_id: String,
    pub reason: String,
    pub at_ms: u64,
}

/// Records a reset of `key` and its event; the snapshot version moves so every proxy sees it.
pub fn apply(s: &mut State, key: String, reason: String, now: u64, events: &mut Vec<Event>) -> Outcome {
    let event_id = format!("reset-{}-{}", now, s.event_seq);
    s.event_seq += 1;
    let e = Event {
        event_id: event_id.clone(),
        kind: STATE.to_string(),
        key: key.clone(),
        reason: reason.clone(),
        source: Source::Manual,
        backpressure_level: None,
        timestamp_ms: now,
    };
    crate::engine::remember(s, e.clone());
    events.push(e);
    s.resets.retain(|r| r.at_ms + RESET_KEEP_MS > now);
    s.resets.push(Reset { key, event_id: event_id.clone(), reason, at_ms: now });
    let excess = s.resets.len().saturating_sub(RESETS_KEPT);
    s.resets.drain(..excess);
    s.version = floodgate_core::version::next(s.version, now);
    Outcome::Reset { event_id }
}

/// Drops resets older than [`RESET_KEEP_MS`]; true when any left (the snapshot changed).
pub fn expire(s: &mut State, now: u64) -> bool {
    let before = s.resets.len();
    s.resets.retain(|r| r.at_ms + RESET_KEEP_MS > now);
    s.resets.len() != before
}

/// The snapshot entries of the resets still kept.
pub fn entries(s: &State, now: u64) -> impl Iterator<Item = SnapshotEntry> + '_ {
    s.resets.iter().filter(move |r| r.at_ms + RESET_KEEP_MS > now).map(|r| SnapshotEntry {
        key: r.key.clone(),
        state: EntryState::Other(STATE.to_string()),
        reason: Some(r.reason.clone()),
        since: Some(rfc3339(r.at_ms)),
        until: Some(rfc3339(r.at_ms + RESET_KEEP_MS)),
        event_id: Some(r.event_id.clone()),
        per_second: None,
    })
}

/// DESIGN's bounds on a breaker key: 1 to 256 bytes of printable ASCII without spaces.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 256 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("key: must be 1 to 256 bytes of printable ASCII without spaces, got {key:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{apply as run, Command, Rules};

    fn reset(key: &str) -> Command {
        Command::Reset { key: key.into(), reason: "fixed".into() }
    }

    #[test]
    fn a_reset_is_in_the_snapshot_for_a_few_minutes_then_leaves() {
        let r = Rules::default();
        let mut s = State::default();
        let (outcome, events) = run(&mut s, reset("collab_ws"), &r, 1_000);
        let Outcome::Reset { event_id } = outcome else { panic!("{outcome:?}") };
        assert_eq!(events[0].kind, "reset");
        assert!(s.version > 0, "a reset moves the version");
        let listed: Vec<_> = entries(&s, 2_000).collect();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, EntryState::Other("reset".into()));
        assert_eq!(listed[0].event_id.as_deref(), Some(event_id.as_str()));
        // A second reset of the same key is another event.
        let (again, _) = run(&mut s, reset("collab_ws"), &r, 1_500);
        assert_ne!(again, Outcome::Reset { event_id: event_id.clone() });
        assert_eq!(entries(&s, 2_000).count(), 2);
        // Expiry removes them and moves the version so proxies see the change.
        let v = s.version;
        run(&mut s, Command::Expire, &r, 1_000 + RESET_KEEP_MS - 1);
        assert_eq!(s.resets.len(), 2);
        assert_eq!(s.version, v, "nothing left the snapshot");
        run(&mut s, Command::Expire, &r, 1_500 + RESET_KEEP_MS);
        assert!(s.resets.is_empty());
        assert!(s.version > v, "the resets' leaving moves the version");
        assert_eq!(entries(&s, 1_500 + RESET_KEEP_MS).count(), 0);
    }

    #[test]
    fn resets_are_bounded() {
        let r = Rules::default();
        let mut s = State::default();
        for i in 0..(RESETS_KEPT as u64 + 20) {
            run(&mut s, reset(&format!("k{i}")), &r, 1_000 + i);
        }
        assert_eq!(s.resets.len(), RESETS_KEPT);
        assert_eq!(s.resets[0].key, "k20");
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("*").is_ok());
        assert!(check_key("outbound|80||collab.default.svc").is_ok());
        for bad in ["", "a b", "é", &"k".repeat(257)] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }
}
