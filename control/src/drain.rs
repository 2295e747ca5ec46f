//! Drains (`POST /api/v1/breakers/{key}/drain`): an operator empties a backend of its existing
//! WebSockets gradually. A drain is an entry of the snapshot, `{"key", "state": "draining",
//! "per_second", "since", "until", "event_id", ...}`, kept until `until`; while it holds, every
//! proxy closes its upgraded streams to the key (or to every key, `*`) at no more than
//! `per_second` per second. One drain per key: a new drain of a key replaces the one it has
//! (new pace, new end, new event id). Pure functions over the engine's [`State`], so both
//! stores run the same code.

use serde::{Deserialize, Serialize};

use crate::engine::{snapshot_len, Event, Outcome, Rules, Source, State};
use crate::rfc3339;
use floodgate_core::wire::{EntryState, SnapshotEntry, MAX_SNAPSHOT_BYTES};

/// The snapshot's state name for a drain.
pub const STATE: &str = floodgate_core::drain::STATE;
/// At most this many drains are in the snapshot at once (a new key beyond is refused).
pub const MAX_DRAINS: usize = 100;
/// Bounds on the request (each refused with 400 naming the field).
pub const MAX_PER_SECOND: u32 = 10_000;
pub const MAX_DURATION_S: u64 = 30 * 24 * 3600;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub key: String,
    pub event_id: String,
    pub reason: String,
    pub per_second: u32,
    pub since_ms: u64,
    pub until_ms: u64,
}

/// What an operator asks for (checked by the API against the bounds above).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub key: String,
    pub reason: String,
    pub per_second: u32,
    pub duration_ms: u64,
}

/// Records a drain of `key` (replacing the key's drain, if any) and its event; the snapshot
/// version moves so every proxy sees it.
pub fn apply(s: &mut State, rules: &Rules, r: Request, now: u64, events: &mut Vec<Event>) -> Outcome {
    s.drains.retain(|d| d.until_ms > now);
    let replaces = s.drains.iter().any(|d| d.key == r.key);
    if !replaces && s.drains.len() >= MAX_DRAINS {
        return Outcome::SnapshotFull;
    }
    let event_id = format!("drain-{}-{}", now, s.event_seq);
    let until_ms = now.saturating_add(r.duration_ms);
    let drain = Drain {
        key: r.key.clone(),
        event_id: event_id.clone(),
        reason: r.reason.clone(),
        per_second: r.per_second,
        since_ms: now,
        until_ms,
    };
    let before = std::mem::take(&mut s.drains);
    s.drains = before.iter().filter(|d| d.key != r.key).cloned().chain([drain]).collect();
    // Refuse a drain that would make the snapshot larger than proxies accept.
    if snapshot_len(s, rules, now) > MAX_SNAPSHOT_BYTES {
        s.drains = before;
        return Outcome::SnapshotFull;
    }
    s.event_seq += 1;
    let e = Event {
        event_id: event_id.clone(),
        kind: STATE.to_string(),
        key: r.key,
        reason: r.reason,
        source: Source::Manual,
        backpressure_level: None,
        timestamp_ms: now,
    };
    crate::engine::remember(s, e.clone());
    events.push(e);
    s.version = floodgate_core::version::next(s.version, now);
    Outcome::Draining { event_id, per_second: r.per_second, until: rfc3339(until_ms) }
}

/// Drops drains that ended; true when any left (the snapshot changed).
pub fn expire(s: &mut State, now: u64) -> bool {
    let before = s.drains.len();
    s.drains.retain(|d| d.until_ms > now);
    s.drains.len() != before
}

/// The snapshot entries of the drains that hold at `now`.
pub fn entries(s: &State, now: u64) -> impl Iterator<Item = SnapshotEntry> + '_ {
    s.drains.iter().filter(move |d| d.until_ms > now).map(|d| SnapshotEntry {
        key: d.key.clone(),
        state: EntryState::Other(STATE.to_string()),
        reason: Some(d.reason.clone()),
        since: Some(rfc3339(d.since_ms)),
        until: Some(rfc3339(d.until_ms)),
        event_id: Some(d.event_id.clone()),
        per_second: Some(d.per_second),
    })
}

/// DESIGN's drain body bounds: `per_second` from 1 to [`MAX_PER_SECOND`], `duration_s` from 1 to
/// 30 days. The error names the field.
pub fn check(per_second: u64, duration_s: u64) -> Result<(u32, u64), String> {
    let per_second = u32::try_from(per_second)
        .ok()
        .filter(|p| (1..=MAX_PER_SECOND).contains(p))
        .ok_or_else(|| format!("per_second: from 1 to {MAX_PER_SECOND}, got {per_second}"))?;
    if !(1..=MAX_DURATION_S).contains(&duration_s) {
        return Err(format!("duration_s: from 1 to {MAX_DURATION_S} (30 days), got {duration_s}"));
    }
    Ok((per_second, duration_s * 1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{apply as run, Command, Rules};

    fn drain(key: &str, per_second: u32, duration_ms: u64) -> Command {
        Command::Drain(Request { key: key.into(), reason: "deploy".into(), per_second, duration_ms })
    }

    #[test]
    fn a_drain_is_in_the_snapshot_until_it_ends_then_leaves_and_moves_the_version() {
        let r = Rules::default();
        let mut s = State::default();
        let (outcome, events) = run(&mut s, drain("collab_ws", 20, 10_000), &r, 1_000);
        let Outcome::Draining { event_id, per_second, .. } = outcome else { panic!("{outcome:?}") };
        assert_eq!((per_second, events[0].kind.as_str()), (20, "draining"));
        let listed: Vec<_> = entries(&s, 2_000).collect();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, EntryState::Other("draining".into()));
        assert_eq!((listed[0].per_second, listed[0].event_id.as_deref()), (Some(20), Some(event_id.as_str())));
        let v = s.version;
        run(&mut s, Command::Expire, &r, 10_999);
        assert_eq!((s.drains.len(), s.version), (1, v), "still holds: nothing changed");
        run(&mut s, Command::Expire, &r, 11_000);
        assert!(s.drains.is_empty());
        assert!(s.version > v, "its end moves the version");
    }

    #[test]
    fn a_second_drain_of_a_key_replaces_the_first() {
        let r = Rules::default();
        let mut s = State::default();
        run(&mut s, drain("k", 20, 10_000), &r, 1_000);
        let first = s.drains[0].event_id.clone();
        run(&mut s, drain("k", 5, 60_000), &r, 2_000);
        assert_eq!(s.drains.len(), 1);
        assert_ne!(s.drains[0].event_id, first);
        assert_eq!((s.drains[0].per_second, s.drains[0].until_ms), (5, 62_000));
    }

    #[test]
    fn drains_are_bounded() {
        let r = Rules::default();
        let mut s = State::default();
        for i in 0..MAX_DRAINS {
            assert!(matches!(run(&mut s, drain(&format!("k{i}"), 1, 60_000), &r, 1_000).0, Outcome::Draining { .. }));
        }
        assert_eq!(run(&mut s, drain("one_more", 1, 60_000), &r, 1_000).0, Outcome::SnapshotFull);
        assert!(
            matches!(run(&mut s, drain("k0", 2, 60_000), &r, 1_000).0, Outcome::Draining { .. }),
            "a replacement fits"
        );
        assert!(
            matches!(run(&mut s, drain("one_more", 1, 60_000), &r, 61_000).0, Outcome::Draining { .. }),
            "room again once they ended"
        );
    }

    #[test]
    fn bounds_name_the_field() {
        assert_eq!(check(20, 10), Ok((20, 10_000)));
        assert!(check(0, 10).unwrap_err().starts_with("per_second:"));
        assert!(check(u64::from(MAX_PER_SECOND) + 1, 10).unwrap_err().starts_with("per_second:"));
        assert!(check(u64::MAX, 10).unwrap_err().starts_with("per_second:"));
        assert!(check(1, 0).unwrap_err().starts_with("duration_s:"));
        assert!(check(1, MAX_DURATION_S + 1).unwrap_err().starts_with("duration_s:"));
    }
}
