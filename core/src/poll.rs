//! The poller's decisions as pure functions: who polls (the lease), what to ask for, what a 304
//! confirms, when to retry after a failure, and when the view counts as stale. The poller in the
//! filter makes the host calls and follows what these return.

use crate::remote::RemoteView;

/// A lease not renewed for this long passes to another worker.
pub const LEASE_MS: u64 = 3_000;
/// The longest wait between failed polls (unless `retry_ms` itself is longer).
pub const MAX_BACKOFF_MS: u64 = 30_000;
/// How far in the future a time written by another worker may lie before it counts as written
/// before a clock step backwards (workers read the clock at slightly different moments).
pub const CLOCK_TOLERANCE_MS: u64 = 1_000;
/// Envoy always answers a dispatched call by its timeout; a callback later than this past the
/// timeout is taken as lost.
pub const CALLBACK_GRACE_MS: u64 = 5_000;

/// Which worker polls, and until when, as kept in shared data (`<worker>:<expires_ms>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub holder: u64,
    pub expires_ms: u64,
}

impl Lease {
    pub fn parse(b: &[u8]) -> Option<Lease> {
        let s = std::str::from_utf8(b).ok()?;
        let (w, e) = s.split_once(':')?;
        Some(Lease { holder: w.parse().ok()?, expires_ms: e.parse().ok()? })
    }

    pub fn encode(&self) -> String {
        format!("{}:{}", self.holder, self.expires_ms)
    }
}

/// What a worker does about the lease on its tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// It holds the lease, and more than half of it is left.
    Hold,
    /// Another worker holds it.
    Wait,
    /// Write this lease (compare-and-swap on what was read); the worker holds it if that succeeds.
    Take(Lease),
}

/// Takes a free or expired lease, renews one's own once half spent, else waits. An unreadable
/// lease counts as free.
pub fn lease_step(current: Option<Lease>, worker: u64, now_ms: u64) -> LeaseStep {
    let Lease { holder, expires_ms } = current.unwrap_or(Lease { holder: 0, expires_ms: 0 });
    // A lease that ends further away than a whole lease from now was taken before a clock step
    // backwards: it is free, or no worker would poll for as long as the step.
    let expires_ms = if expires_ms > now_ms.saturating_add(LEASE_MS + CLOCK_TOLERANCE_MS) { 0 } else { expires_ms };
    if holder == worker && expires_ms > now_ms.saturating_add(LEASE_MS / 2) {
        return LeaseStep::Hold;
    }
    if holder != worker && expires_ms > now_ms {
        return LeaseStep::Wait;
    }
    LeaseStep::Take(Lease { holder: worker, expires_ms: now_ms.saturating_add(LEASE_MS) })
}

/// One long-poll to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollRequest {
    /// The version the poll asks about; `None` asks for the snapshot at once.
    pub asked: Option<u64>,
    pub path: String,
}

/// A live view long-polls for a newer version than its own; without one (never fetched, or
/// stale), the poll asks for the snapshot at once.
pub fn poll_request(view: &RemoteView, now_ms: u64, stale_after_ms: u64, path: &str, wait_s: u64) -> PollRequest {
    let asked = view.live(now_ms, stale_after_ms).then_some(view.version);
    let path = match asked {
        Some(v) => format!("{path}?version={v}&wait={wait_s}"),
        None => path.to_string(),
    };
    PollRequest { asked, path }
}

/// What a 304 confirms: the view, if it still is the version the poll asked about (another
/// poller may have moved it meanwhile, then there is nothing to confirm).
pub fn confirm(view: &RemoteView, asked: Option<u64>, now_ms: u64) -> Option<RemoteView> {
    asked.is_some_and(|v| v == view.version).then(|| RemoteView { confirmed_ms: now_ms, ..view.clone() })
}

/// The wait before the next poll after `failures` failures in a row (at least 1): `retry_ms`
/// doubling up to [`MAX_BACKOFF_MS`], plus up to 50 % jitter (`unit` in [0, 1)) so the pollers of
/// many proxies do not return to a recovering control plane at once.
pub fn retry_delay_ms(retry_ms: u64, failures: u32, unit: f64) -> u64 {
    let doublings = failures.clamp(1, 16) - 1;
    let backoff = retry_ms.saturating_mul(1 << doublings).min(MAX_BACKOFF_MS.max(retry_ms));
    backoff.saturating_add((backoff as f64 * 0.5 * unit.clamp(0.0, 1.0)) as u64)
}

/// Whether a poll sent at `sent_ms` with `timeout_ms` should have been answered by now.
pub fn callback_overdue(sent_ms: u64, timeout_ms: u64, now_ms: u64) -> bool {
    now_ms >= sent_ms.saturating_add(timeout_ms).saturating_add(CALLBACK_GRACE_MS)
}

/// Whether the poller reports the view as stale: no confirmation (or, before the first one, no
/// poller start) within `stale_after_ms`.
pub fn is_stale(confirmed_ms: u64, started_ms: u64, now_ms: u64, stale_after_ms: u64) -> bool {
    let since = confirmed_ms.max(started_ms);
    // A confirmation in the future was made before a clock step backwards: stale until the next
    // poll confirms again (as `RemoteView::live` says).
    since > now_ms.saturating_add(CLOCK_TOLERANCE_MS) || now_ms >= since.saturating_add(stale_after_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STALE: u64 = 120_000;

    fn view(version: u64, confirmed_ms: u64) -> RemoteView {
        RemoteView { version, confirmed_ms, ..RemoteView::default() }
    }

    #[test]
    fn leases_parse_or_are_treated_as_free() {
        assert_eq!(Lease::parse(b"3:1000"), Some(Lease { holder: 3, expires_ms: 1000 }));
        assert_eq!(Lease::parse(b"garbage"), None);
        assert_eq!(Lease::parse(b"3:"), None);
        assert_eq!(lease_step(None, 1, 10), LeaseStep::Take(Lease { holder: 1, expires_ms: 10 + LEASE_MS }));
    }

    #[test]
    fn a_clock_stepped_back_frees_the_lease_and_makes_the_view_stale_at_once() {
        let hour = 3_600_000;
        // Worker 1 took the lease, then the clock went back an hour and worker 1 is gone.
        let taken = Lease { holder: 1, expires_ms: 10 * hour + LEASE_MS };
        assert!(matches!(lease_step(Some(taken), 2, 9 * hour), LeaseStep::Take(_)));
        assert_eq!(lease_step(Some(taken), 2, 10 * hour), LeaseStep::Wait);
        // A view confirmed "in the future" is not live (its overrides lapse) until a poll confirms it.
        let v = view(3, 10 * hour);
        assert!(!v.live(9 * hour, STALE));
        assert!(v.live(10 * hour - 500, STALE), "within the tolerance of workers' clocks");
        assert!(is_stale(10 * hour, 0, 9 * hour, STALE));
        assert!(!is_stale(10 * hour, 0, 10 * hour + 1, STALE));
    }

    #[test]
    fn a_live_view_long_polls_for_its_version_and_a_stale_one_asks_at_once() {
        let live = poll_request(&view(7, 1_000), 2_000, STALE, "/v1/snapshot", 25);
        assert_eq!(live, PollRequest { asked: Some(7), path: "/v1/snapshot?version=7&wait=25".into() });
        let stale = poll_request(&view(7, 1_000), 1_000 + STALE, STALE, "/v1/snapshot", 25);
        assert_eq!(stale, PollRequest { asked: None, path: "/v1/snapshot".into() });
        assert_eq!(poll_request(&RemoteView::default(), 5, STALE, "/p", 1).asked, None);
    }

    #[test]
    fn a_304_confirms_only_the_version_it_asked_about() {
        let v = view(4, 1_000);
        assert_eq!(confirm(&v, Some(4), 9_000), Some(view(4, 9_000)));
        assert_eq!(confirm(&v, Some(3), 9_000), None);
        assert_eq!(confirm(&v, None, 9_000), None);
    }

    #[test]
    fn retries_back_off_from_retry_ms_doubling_to_thirty_seconds() {
        let delays: Vec<u64> = (1..=7).map(|f| retry_delay_ms(1_000, f, 0.0)).collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
        assert_eq!(retry_delay_ms(1_000, 1, 0.999_999), 1_499);
        assert_eq!(retry_delay_ms(60_000, 3, 0.0), 60_000);
    }

    #[test]
    fn the_view_is_stale_once_unconfirmed_for_stale_after() {
        assert!(!is_stale(0, 1_000, 1_000 + STALE - 1, STALE));
        assert!(is_stale(0, 1_000, 1_000 + STALE, STALE));
        assert!(!is_stale(50_000, 1_000, 50_000 + STALE - 1, STALE));
    }

    proptest! {
        #[test]
        fn the_backoff_grows_and_stays_bounded(retry_ms in 1u64..100_000, failures in 1u32..100, unit in 0.0f64..1.0) {
            let d = retry_delay_ms(retry_ms, failures, unit);
            let cap = MAX_BACKOFF_MS.max(retry_ms);
            prop_assert!(d >= retry_ms.min(cap));
            prop_assert!(d <= cap + cap / 2);
            prop_assert!(retry_delay_ms(retry_ms, failures + 1, unit) >= d);
        }

        /// Workers tick in any order at non-decreasing times, taking the lease whenever
        /// `lease_step` says so (each write succeeds only on the value it read, as a CAS does):
        /// no two workers ever hold the lease at the same time.
        #[test]
        fn at_most_one_worker_holds_the_lease(ticks in proptest::collection::vec((1u64..5, 0u64..2_000), 1..200)) {
            let mut stored: Option<Lease> = None;
            let mut now = 0u64;
            let mut last_grant: Option<(u64, u64)> = None;
            for (worker, advance) in ticks {
                now += advance;
                let held = match lease_step(stored, worker, now) {
                    LeaseStep::Hold => true,
                    LeaseStep::Wait => false,
                    LeaseStep::Take(l) => {
                        stored = Some(l);
                        true
                    }
                };
                if held {
                    if let Some((other, until)) = last_grant {
                        prop_assert!(other == worker || until <= now, "worker {worker} took a lease {other} holds until {until} at {now}");
                    }
                    let until = stored.map(|l| l.expires_ms).unwrap_or(0);
                    last_grant = Some((worker, until));
                }
            }
        }

        #[test]
        fn lease_parsing_never_panics(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Lease::parse(&b);
        }
    }
}
