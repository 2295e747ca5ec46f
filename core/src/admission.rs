//! The admission budget: a token bucket of new upgrades per breaker, shared by every worker of
//! one Envoy (DESIGN, `admission`). Pure: the caller passes the time, reads the bucket from
//! shared data, and writes it back with compare-and-swap when [`Bucket::take`] says it changed.
//!
//! Tokens are counted in thousandths (`MILLI` per token) and refill by `per_second` thousandths
//! per millisecond, so refilling is exact integer arithmetic: refilling over `[a, b]` then
//! `[b, c]` gives what refilling over `[a, c]` gives, and a refusal need not be written back.
//!
//! Delays (`max_delay_ms`): a call that finds no token may take one the bucket does not have yet,
//! as nginx's `limit_req` delays requests past its rate: the bucket goes into debt (tokens below
//! zero) and the call waits until its token would have come. Its start is then where a token
//! bucket without delays would have admitted it, so every start, at once or delayed, keeps
//! `burst` plus `per_second` per second over any interval.
//!
//! Clock steps: a clock that steps backwards re-anchors the bucket without refilling it, so the
//! bucket decides exactly as if the step had lasted no time at all. It never refuses more than
//! with a clock that stood still, and it never admits more than its budget over the real time
//! that passed.

/// Thousandths of a token per token.
pub const MILLI: u64 = 1000;
/// The encoding's version byte (2: tokens are signed, a bucket in debt holds delayed calls).
pub const ENCODING_VERSION: u8 = 2;
/// Version 1 wrote the same layout with unsigned tokens (never in debt): still read.
const ENCODING_VERSION_UNSIGNED: u8 = 1;
/// Bounds on the configuration (validated by the filter's config).
pub const MAX_PER_SECOND: u32 = 1_000_000;
pub const MAX_BURST: u32 = 10_000_000;
/// At most this long a call may be delayed (well below Envoy's 15 s default route timeout and
/// the handshake timeouts of WebSocket client libraries).
pub const MAX_DELAY_MS: u32 = 10_000;

/// `per_second` new upgrades per second, at most `burst` at once; a call beyond them waits up to
/// `max_delay_ms` for its token instead of being refused (0: refused at once). `per_second == 0`
/// is off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub per_second: u32,
    pub burst: u32,
    pub max_delay_ms: u32,
}

impl Budget {
    pub fn is_off(self) -> bool {
        self.per_second == 0
    }

    /// The bucket's capacity in thousandths (a burst of 0 means one second's worth).
    pub fn capacity(self) -> u64 {
        u64::from(self.effective_burst()) * MILLI
    }

    fn capacity_signed(self) -> i64 {
        // At most MAX_BURST thousand (10^10): fits.
        i64::from(self.effective_burst()) * MILLI as i64
    }

    /// `burst`, or `per_second` when `burst` is 0.
    pub fn effective_burst(self) -> u32 {
        if self.burst == 0 {
            self.per_second
        } else {
            self.burst
        }
    }

    /// Milliseconds an empty bucket takes to fill up again, at least one second: the window
    /// refused clients are spread over.
    pub fn refill_window_ms(self) -> u64 {
        if self.is_off() {
            return 1000;
        }
        (u64::from(self.effective_burst()) * 1000).div_ceil(u64::from(self.per_second)).max(1000)
    }
}

/// One breaker's bucket as shared data holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Thousandths of a token available at `last_ms`; below zero, owed to delayed calls.
    pub tokens: i64,
    /// The time of the last step; 0 = never stepped (the bucket starts full).
    pub last_ms: u64,
}

/// What the bucket says about one new upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    Admit,
    /// Admitted to start `wait_ms` from now, when its token comes (at most `max_delay_ms`).
    Delay {
        wait_ms: u64,
    },
    /// No token: the next call admitted or delayed is `wait_ms` away.
    Refuse {
        wait_ms: u64,
    },
}

impl Bucket {
    /// A bucket never used: full.
    pub fn full(budget: Budget) -> Bucket {
        Bucket { tokens: budget.capacity_signed(), last_ms: 0 }
    }

    /// The most this budget's delays can owe: `max_delay_ms` of refill (in thousandths).
    fn debt_limit(budget: Budget) -> i64 {
        // At most MAX_DELAY_MS * MAX_PER_SECOND (10^10): fits.
        -(i64::from(budget.max_delay_ms) * i64::from(budget.per_second))
    }

    /// Refills the bucket up to `now_ms` (a clock that went backwards refills nothing). A debt
    /// deeper than this budget's delays can take (one taken under a larger budget, since
    /// lowered, or bytes this module did not write) is cut to it: the next call never waits
    /// longer than the current budget allows.
    pub fn refill(&mut self, budget: Budget, now_ms: u64) {
        let cap = budget.capacity_signed();
        self.tokens = self.tokens.max(Self::debt_limit(budget));
        if self.last_ms == 0 {
            self.tokens = self.tokens.min(cap);
        } else {
            let elapsed = now_ms.saturating_sub(self.last_ms);
            let refill = elapsed.saturating_mul(u64::from(budget.per_second));
            self.tokens = self.tokens.saturating_add(i64::try_from(refill).unwrap_or(i64::MAX)).min(cap);
        }
    }

    /// Takes a token if there is one at `now_ms`; else, when `may_delay`, one that comes within
    /// the budget's `max_delay_ms`. Returns the decision and whether the bucket must be written
    /// back (a refusal on a forward clock changes nothing that matters).
    pub fn take(&mut self, budget: Budget, now_ms: u64, may_delay: bool) -> (Take, bool) {
        let before = *self;
        self.refill(budget, now_ms);
        const TOKEN: i64 = MILLI as i64;
        if self.tokens >= TOKEN {
            self.tokens -= TOKEN;
            self.last_ms = now_ms.max(1);
            return (Take::Admit, true);
        }
        // The bucket holds less than a token (or owes some): this call's token comes when the
        // refill has made up what is missing.
        let missing = (TOKEN - self.tokens).unsigned_abs();
        let wait_ms = missing.div_ceil(u64::from(budget.per_second.max(1)));
        let max_delay_ms = if may_delay { u64::from(budget.max_delay_ms) } else { 0 };
        if wait_ms <= max_delay_ms {
            self.tokens -= TOKEN;
            self.last_ms = now_ms.max(1);
            return (Take::Delay { wait_ms }, true);
        }
        let wait_ms = wait_ms - max_delay_ms;
        // Refilling is linear, so leaving the bucket as it was read decides the same later, as
        // long as the clock moved forward; a backward step must re-anchor it.
        let backwards = before.last_ms != 0 && now_ms < before.last_ms;
        if backwards || before.last_ms == 0 {
            self.last_ms = now_ms.max(1);
            (Take::Refuse { wait_ms }, true)
        } else {
            *self = before;
            (Take::Refuse { wait_ms }, false)
        }
    }

    /// Version 1 when the bucket owes nothing (what version 1 can say), so a module from before
    /// delays, sharing the Envoy's shared data during a rolling update, reads it instead of
    /// taking a full bucket; version 2 only for a bucket in debt.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        out.push(if self.tokens >= 0 { ENCODING_VERSION_UNSIGNED } else { ENCODING_VERSION });
        out.extend_from_slice(&self.tokens.to_le_bytes());
        out.extend_from_slice(&self.last_ms.to_le_bytes());
        out
    }

    /// `None` for bytes this version did not write (the bucket then starts full again).
    pub fn decode(bytes: &[u8]) -> Option<Bucket> {
        if bytes.len() != 17 {
            return None;
        }
        let word = |at: usize| bytes.get(at..at + 8).and_then(|b| b.try_into().ok());
        let tokens = match bytes[0] {
            ENCODING_VERSION => i64::from_le_bytes(word(1)?),
            ENCODING_VERSION_UNSIGNED => i64::try_from(u64::from_le_bytes(word(1)?)).ok()?,
            _ => return None,
        };
        let last_ms = u64::from_le_bytes(word(9)?);
        Some(Bucket { tokens, last_ms })
    }
}

/// `retry-after` for a refusal, in milliseconds that are whole seconds (at least one): the
/// time to the next token, rounded up, plus a share of the bucket's refill window picked by
/// `unit` (uniform in [0, 1)). Whole seconds are drawn directly, so the spread survives the
/// rounding a `retry-after` header imposes: clients refused together come back spread over the
/// seconds the bucket needs to admit them.
pub fn retry_after_ms(budget: Budget, wait_ms: u64, unit: f64) -> u64 {
    let base_s = wait_ms.div_ceil(1000).max(1);
    let window_s = budget.refill_window_ms().div_ceil(1000);
    let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
    let extra_s = ((unit * (window_s + 1) as f64) as u64).min(window_s);
    (base_s + extra_s) * 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(budget: Budget, times: &[u64]) -> Vec<bool> {
        let mut b = Bucket::full(budget);
        times
            .iter()
            .map(|&t| {
                let (take, changed) = b.take(budget, t, false);
                // What shared data holds must decide the same as what the caller kept.
                if changed {
                    b = Bucket::decode(&b.encode()).unwrap();
                }
                take == Take::Admit
            })
            .collect()
    }

    #[test]
    fn a_full_bucket_admits_its_burst_at_once_then_refills_with_time() {
        let budget = Budget { per_second: 10, burst: 5, max_delay_ms: 0 };
        let mut b = Bucket::full(budget);
        let t0 = 1_000_000;
        for _ in 0..5 {
            assert_eq!(b.take(budget, t0, false).0, Take::Admit);
        }
        assert_eq!(b.take(budget, t0, false), (Take::Refuse { wait_ms: 100 }, false));
        assert_eq!(b.take(budget, t0 + 99, false).0, Take::Refuse { wait_ms: 1 });
        assert_eq!(b.take(budget, t0 + 100, false).0, Take::Admit);
        // A long idle time refills to the burst, not beyond.
        let admitted = (0..20).filter(|_| b.take(budget, t0 + 3_600_000, false).0 == Take::Admit).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn a_call_past_the_burst_waits_for_its_token_then_one_past_max_delay_is_refused() {
        let budget = Budget { per_second: 10, burst: 2, max_delay_ms: 500 };
        let mut b = Bucket::full(budget);
        let t0 = 1_000_000;
        let takes: Vec<Take> = (0..8).map(|_| b.take(budget, t0, true).0).collect();
        let delay = |wait_ms| Take::Delay { wait_ms };
        assert_eq!(
            takes,
            [
                Take::Admit,
                Take::Admit,
                delay(100),
                delay(200),
                delay(300),
                delay(400),
                delay(500),
                Take::Refuse { wait_ms: 100 }
            ]
        );
        assert_eq!(b.tokens, -5 * MILLI as i64, "five tokens owed, the refusal took none");
        // A refusal's wait is the time until a call would be delayed no more than max_delay_ms.
        assert_eq!(b.take(budget, t0 + 99, true).0, Take::Refuse { wait_ms: 1 });
        assert_eq!(b.take(budget, t0 + 100, true).0, delay(500));
        // Without may_delay the same bucket refuses until the debt is paid and a token is back.
        assert_eq!(b.take(budget, t0 + 100, false).0, Take::Refuse { wait_ms: 600 });
        let (take, changed) = b.take(budget, t0 + 700, false);
        assert_eq!((take, changed), (Take::Admit, true));
    }

    #[test]
    fn burst_zero_means_one_seconds_worth() {
        let budget = Budget { per_second: 3, burst: 0, max_delay_ms: 0 };
        assert_eq!(run(budget, &[7; 5]), [true, true, true, false, false]);
        assert_eq!(budget.refill_window_ms(), 1000);
        assert_eq!(Budget { per_second: 10, burst: 50, max_delay_ms: 0 }.refill_window_ms(), 5000);
    }

    #[test]
    fn decode_rejects_foreign_bytes() {
        let b = Bucket { tokens: 12_345, last_ms: 99 };
        assert_eq!(Bucket::decode(&b.encode()), Some(b));
        let bytes = b.encode();
        for n in 0..bytes.len() {
            assert_eq!(Bucket::decode(&bytes[..n]), None);
        }
        let mut v3 = bytes.clone();
        v3[0] = 3;
        assert_eq!(Bucket::decode(&v3), None);
        // Version 1 (unsigned tokens) is still read; a bucket in debt round-trips.
        let mut v1 = bytes.clone();
        v1[0] = 1;
        assert_eq!(Bucket::decode(&v1), Some(b));
        let owed = Bucket { tokens: -7_500, last_ms: 42 };
        assert_eq!(Bucket::decode(&owed.encode()), Some(owed));
        let mut huge = Bucket { tokens: 0, last_ms: 1 }.encode();
        huge[0] = 1;
        huge[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Bucket::decode(&huge), None, "an unsigned count past i64 is not ours");
    }

    #[test]
    fn retry_after_is_whole_seconds_spread_over_the_refill_window() {
        let budget = Budget { per_second: 100, burst: 300, max_delay_ms: 0 };
        let values: std::collections::BTreeSet<u64> =
            (0..1000).map(|i| retry_after_ms(budget, 7, f64::from(i) / 1000.0)).collect();
        assert_eq!(values.into_iter().collect::<Vec<_>>(), [1000, 2000, 3000, 4000]);
        assert_eq!(retry_after_ms(budget, 1500, 0.0), 2000);
        assert_eq!(retry_after_ms(budget, 0, f64::NAN), 1000);
    }

    /// What the module before delays (encoding version 1) read: unsigned tokens, version 1 only.
    /// During a rolling update it shares the Envoy's shared data with this one.
    fn decode_version_1(bytes: &[u8]) -> Option<(u64, u64)> {
        if bytes.len() != 17 || bytes[0] != 1 {
            return None;
        }
        Some((u64::from_le_bytes(bytes[1..9].try_into().ok()?), u64::from_le_bytes(bytes[9..17].try_into().ok()?)))
    }

    /// An Envoy running the previous module (a listener draining after a config update; shared
    /// data outlives it) reads bytes it cannot decode as a full bucket: each write of this module
    /// would hand it its whole burst again. A bucket not in debt (every drain's, and every
    /// admission bucket without `max_delay_ms`) needs nothing version 1 cannot say.
    #[test]
    fn a_bucket_not_in_debt_is_written_so_the_previous_module_reads_it() {
        let budget = Budget { per_second: 10, burst: 5, max_delay_ms: 0 };
        let mut b = Bucket::full(budget);
        for _ in 0..5 {
            b.take(budget, 1_000, false);
        }
        assert_eq!(b.tokens, 0);
        assert_eq!(decode_version_1(&b.encode()), Some((0, 1_000)), "an empty bucket read as full by version 1");
        let half = Bucket { tokens: 2_500, last_ms: 42 };
        assert_eq!(decode_version_1(&half.encode()), Some((2_500, 42)));
        assert_eq!(Bucket::decode(&half.encode()), Some(half));
    }

    /// A budget lowered (configuration update; the bucket in shared data stays) while the bucket
    /// owes what the old budget delayed: the debt is paid back at the new rate. From 100/s with up
    /// to 10 s of delay to 1/s, it owes 1,000 tokens, about 17 minutes of refusals, where the new
    /// budget alone never makes a call wait more than its `max_delay_ms` plus one token's refill.
    #[test]
    fn a_debt_taken_under_a_larger_budget_is_not_paid_back_at_a_smaller_ones_rate() {
        let old = Budget { per_second: 100, burst: 1, max_delay_ms: 10_000 };
        let new = Budget { per_second: 1, burst: 1, max_delay_ms: 10_000 };
        let mut b = Bucket::full(old);
        let t0 = 1_000_000;
        while b.take(old, t0, true).0 != (Take::Refuse { wait_ms: 10 }) {}
        assert_eq!(b.tokens, -1_000 * MILLI as i64);
        // 20 s later (every old delay started long ago), under the new budget.
        match b.take(new, t0 + 20_000, true).0 {
            Take::Admit | Take::Delay { .. } => {}
            Take::Refuse { wait_ms } => panic!("refused, the next call in {wait_ms} ms"),
        }
    }

    /// Arrival gaps in ms, some bursts (gap 0), some long idles.
    fn gaps() -> impl Strategy<Value = Vec<u64>> {
        proptest::collection::vec(prop_oneof![Just(0u64), 0u64..50, 0u64..2_000, Just(10_000)], 1..200)
    }

    fn times(start: u64, gaps: &[u64]) -> Vec<u64> {
        gaps.iter()
            .scan(start, |t, g| {
                *t += g;
                Some(*t)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn never_more_than_burst_plus_rate_times_t_over_any_interval(
            per_second in 1u32..500, burst in 0u32..50, gaps in gaps()
        ) {
            let budget = Budget { per_second, burst, max_delay_ms: 0 };
            let ts = times(1_000, &gaps);
            let admitted = run(budget, &ts);
            for i in 0..ts.len() {
                let mut n = 0u64;
                for j in i..ts.len() {
                    n += u64::from(admitted[j]);
                    let allowance = budget.capacity() + (ts[j] - ts[i]) * u64::from(per_second);
                    prop_assert!(n * MILLI <= allowance, "{n} admitted in [{}, {}] ms", ts[i], ts[j]);
                }
            }
        }

        /// Delays keep the budget: every call's start (at once, or when its delay ends) keeps
        /// `burst + per_second * t` over any interval, no delay passes `max_delay_ms`, and a call
        /// is refused only when its wait would have passed it. A delay is whole milliseconds,
        /// rounded up: a delayed start is up to 1 ms after its token came, hence the `+ 1`.
        #[test]
        fn delayed_starts_keep_the_budget_over_any_interval_and_never_wait_past_max_delay(
            per_second in 1u32..500, burst in 0u32..50, max_delay_ms in 0u32..3_000, gaps in gaps()
        ) {
            let budget = Budget { per_second, burst, max_delay_ms };
            let mut b = Bucket::full(budget);
            let mut starts = vec![];
            for t in times(1_000, &gaps) {
                let (take, changed) = b.take(budget, t, true);
                if changed {
                    b = Bucket::decode(&b.encode()).unwrap();
                }
                match take {
                    Take::Admit => starts.push(t),
                    Take::Delay { wait_ms } => {
                        prop_assert!(wait_ms >= 1 && wait_ms <= u64::from(max_delay_ms));
                        starts.push(t + wait_ms);
                    }
                    Take::Refuse { wait_ms } => prop_assert!(wait_ms >= 1),
                }
            }
            starts.sort_unstable();
            for i in 0..starts.len() {
                for j in i..starts.len() {
                    let n = (j - i + 1) as u64;
                    let allowance = budget.capacity() + (starts[j] - starts[i] + 1) * u64::from(per_second);
                    prop_assert!(n * MILLI <= allowance, "{n} started in [{}, {}] ms", starts[i], starts[j]);
                }
            }
        }

        /// `max_delay_ms: 0`, or a caller that may not wait (a probe, a TCP connection), decides
        /// exactly as the budget without delays.
        #[test]
        fn no_delay_allowed_decides_as_a_plain_token_bucket(
            per_second in 1u32..500, burst in 0u32..50, max_delay_ms in 0u32..3_000, gaps in gaps()
        ) {
            let plain = Budget { per_second, burst, max_delay_ms: 0 };
            let delaying = Budget { max_delay_ms, ..plain };
            let (mut a, mut b, mut c) = (Bucket::full(plain), Bucket::full(plain), Bucket::full(delaying));
            for t in times(1_000, &gaps) {
                let expected = a.take(plain, t, false);
                prop_assert_eq!(b.take(plain, t, true), expected);
                prop_assert_eq!(c.take(delaying, t, false), expected);
            }
        }

        #[test]
        fn calls_at_or_below_the_rate_are_all_admitted(per_second in 1u32..500, burst in 1u32..50, n in 1usize..100) {
            let budget = Budget { per_second, burst, max_delay_ms: 0 };
            let gap = 1000u64.div_ceil(u64::from(per_second));
            let ts: Vec<u64> = (0..n as u64).map(|i| 5_000 + i * gap).collect();
            prop_assert!(run(budget, &ts).into_iter().all(|a| a));
        }

        /// The budget holds whatever the clock does: a clock that steps back never admits more
        /// than the same clock with every backward step replaced by no step. (It may admit a
        /// little less: a step back that stays after the bucket's last anchor costs the bucket
        /// that much refill, at most the size of the step.)
        #[test]
        fn a_clock_stepping_backwards_never_admits_more_than_one_that_stood_still(
            per_second in 1u32..500, burst in 0u32..50,
            steps in proptest::collection::vec(-5_000i64..3_000, 1..200)
        ) {
            let budget = Budget { per_second, burst, max_delay_ms: 0 };
            let (mut read, mut still) = (1_000_000i64, 1_000_000u64);
            let (mut reads, mut stills) = (vec![], vec![]);
            for s in steps {
                read = (read + s).max(1);
                still += s.max(0) as u64;
                reads.push(read as u64);
                stills.push(still);
            }
            let stepping = run(budget, &reads).into_iter().filter(|a| *a).count();
            let standing = run(budget, &stills).into_iter().filter(|a| *a).count();
            prop_assert!(stepping <= standing, "{stepping} admitted with steps back, {standing} standing still");
        }

        /// Whatever bytes shared data holds under a bucket's key (another module's, a budget
        /// since changed), taking from it never panics and never makes a call wait longer than the
        /// current budget could: `max_delay_ms` plus one token's refill.
        #[test]
        fn any_bytes_take_without_panic_and_wait_no_longer_than_the_budget_allows(
            per_second in 1u32..1_000_000, burst in 0u32..1_000, max_delay_ms in 0u32..=MAX_DELAY_MS,
            version in 1u8..=2, tokens in any::<u64>(), last_ms in 0u64..2_000_000, now_ms in 1u64..2_000_000,
            may_delay in any::<bool>()
        ) {
            let budget = Budget { per_second, burst, max_delay_ms };
            let mut bytes = vec![version];
            bytes.extend_from_slice(&tokens.to_le_bytes());
            bytes.extend_from_slice(&last_ms.to_le_bytes());
            let mut b = Bucket::decode(&bytes).unwrap_or_else(|| Bucket::full(budget));
            let horizon = u64::from(max_delay_ms) + MILLI.div_ceil(u64::from(per_second));
            match b.take(budget, now_ms, may_delay).0 {
                Take::Admit => {}
                Take::Delay { wait_ms } => prop_assert!(wait_ms <= u64::from(max_delay_ms)),
                Take::Refuse { wait_ms } => prop_assert!(wait_ms <= horizon, "the next call in {wait_ms} ms"),
            }
        }

        #[test]
        fn retry_after_is_at_least_the_wait_and_whole_seconds(
            per_second in 1u32..1000, burst in 0u32..1000, wait in 0u64..100_000, unit in 0.0f64..1.0
        ) {
            let budget = Budget { per_second, burst, max_delay_ms: 0 };
            let r = retry_after_ms(budget, wait, unit);
            prop_assert!(r >= 1000 && r % 1000 == 0 && r >= wait);
            prop_assert!(r <= wait.div_ceil(1000).max(1) * 1000 + budget.refill_window_ms().div_ceil(1000) * 1000);
        }
    }
}
