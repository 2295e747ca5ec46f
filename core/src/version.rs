//! Snapshot versions that only grow for the life of a deployment.
//!
//! A version is `epoch_ms * 1000 + n`: a store that starts empty (a restarted in-memory service,
//! a Redis that lost its data) starts at its creation time in ms times 1000, above every version
//! issued before unless those were issued faster than 1,000 per millisecond on average. Every
//! change takes `max(previous + 1, now_ms * 1000)`, so versions track the clock and a later epoch
//! always wins. Values stay below 2^53 until the year 2255, so they are exact in JSON numbers and
//! in floating-point gauges.

/// Versions per millisecond of epoch.
pub const PER_MS: u64 = 1000;

/// The first version of a store created at `now_ms`.
pub fn epoch_start(now_ms: u64) -> u64 {
    now_ms.saturating_mul(PER_MS)
}

/// The version after `previous`, at `now_ms`: never `previous` again. Strictly greater, and at
/// least [`epoch_start`], for every `previous` below `u64::MAX`; `u64::MAX` (only a forged or
/// corrupt number: real versions stay below 2^53 until the year 2255) has nothing above it, so
/// the numbering starts over at the epoch of `now_ms`, which a live proxy refuses as going back
/// until its view is stale, rather than a repeat it would take for the content it holds.
pub fn next(previous: u64, now_ms: u64) -> u64 {
    match previous.checked_add(1) {
        Some(v) => v.max(epoch_start(now_ms)),
        None => epoch_start(now_ms).min(u64::MAX - 1),
    }
}

/// The highest version a client may ask a control plane to lift its numbering to at `now_ms`
/// (a proxy holding a version above a restarted control plane's): a day of clock ahead, so a
/// forged number cannot push versions towards `u64::MAX`.
pub fn floor_cap(now_ms: u64) -> u64 {
    epoch_start(now_ms.saturating_add(24 * 3_600_000))
}

/// The epoch (ms since the Unix epoch) a version was issued in, for logs and the UI.
pub fn epoch_ms(version: u64) -> u64 {
    version / PER_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_and_a_later_epoch_wins() {
        let t0 = 1_795_341_600_000;
        let v0 = epoch_start(t0);
        let v1 = next(v0, t0);
        assert_eq!(v1, v0 + 1);
        let burst = (0..500).fold(v1, |v, _| next(v, t0));
        assert!(next(burst, t0 + 1) > burst);
        // A store created a second later starts above all of that.
        assert!(epoch_start(t0 + 1_000) > burst);
        // A clock that went backwards never makes a version go backwards.
        assert!(next(burst, t0 - 60_000) > burst);
        assert!(epoch_start(t0) < 1 << 53);
        assert_eq!(epoch_ms(v1), t0);
        // Never a repeat, even where nothing is greater.
        assert_ne!(next(u64::MAX, 0), u64::MAX);
        assert_ne!(next(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(next(u64::MAX - 1, 0), u64::MAX);
        assert!(floor_cap(t0) > epoch_start(t0) && floor_cap(t0) < 1 << 53);
    }
}
