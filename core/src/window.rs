//! Sliding windows of call outcomes, small enough to live in Envoy shared data.

use super::policy::WindowSpec;

/// Buckets of a time window: a finer split costs shared-data bytes for little accuracy.
pub const TIME_BUCKETS: usize = 10;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Which bucket-length period of the clock this bucket holds (now / bucket_ms).
    pub epoch: u32,
    pub calls: u16,
    pub failures: u16,
    pub slow: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Window {
    /// A ring of the last `size` outcomes as two bitsets (failure, slow).
    Count {
        size: u16,
        next: u16,
        filled: u16,
        failures: Vec<u8>,
        slow: Vec<u8>,
    },
    Time {
        bucket_ms: u32,
        buckets: [Bucket; TIME_BUCKETS],
    },
}

fn set_bit(bits: &mut [u8], i: usize, on: bool) {
    if let Some(b) = bits.get_mut(i / 8) {
        if on {
            *b |= 1 << (i % 8);
        } else {
            *b &= !(1 << (i % 8));
        }
    }
}

impl Window {
    pub fn new(spec: WindowSpec) -> Window {
        match spec {
            WindowSpec::Count { size } => {
                let bytes = usize::from(size).div_ceil(8);
                Window::Count { size, next: 0, filled: 0, failures: vec![0; bytes], slow: vec![0; bytes] }
            }
            WindowSpec::Time { seconds } => Window::Time {
                bucket_ms: (u32::from(seconds) * 1000).div_ceil(TIME_BUCKETS as u32).max(1),
                buckets: [Bucket::default(); TIME_BUCKETS],
            },
        }
    }

    /// A count window of `spec`'s size full of successes; a time window as [`Window::new`].
    pub fn full_of_successes(spec: WindowSpec) -> Window {
        let mut w = Window::new(spec);
        if let Window::Count { size, filled, .. } = &mut w {
            *filled = *size;
        }
        w
    }

    /// Whether this is a (non-empty) count window full of successes.
    pub fn is_full_of_successes(&self) -> bool {
        match self {
            Window::Count { size, filled, failures, slow, .. } => {
                *size > 0 && filled == size && failures.iter().chain(slow).all(|&b| b == 0)
            }
            Window::Time { .. } => false,
        }
    }

    /// Whether this window was built for `spec` (a config reload may change it).
    pub fn fits(&self, spec: WindowSpec) -> bool {
        match (self, spec) {
            (Window::Count { size, .. }, WindowSpec::Count { size: s }) => *size == s,
            (Window::Time { bucket_ms, .. }, WindowSpec::Time { seconds }) => {
                *bucket_ms == (u32::from(seconds) * 1000).div_ceil(TIME_BUCKETS as u32).max(1)
            }
            _ => false,
        }
    }

    pub fn record(&mut self, now_ms: u64, failure: bool, slow: bool) {
        match self {
            Window::Count { size, next, filled, failures, slow: slow_bits } => {
                if *size == 0 {
                    return;
                }
                let i = usize::from(*next);
                set_bit(failures, i, failure);
                set_bit(slow_bits, i, slow);
                *next = (*next + 1) % *size;
                *filled = (*filled + 1).min(*size);
            }
            Window::Time { bucket_ms, buckets } => {
                let epoch = (now_ms / u64::from(*bucket_ms)) as u32;
                let b = &mut buckets[epoch as usize % TIME_BUCKETS];
                if b.epoch != epoch {
                    *b = Bucket { epoch, ..Bucket::default() };
                }
                if b.calls == u16::MAX {
                    // Halve the bucket rather than saturate one count: the rates stay right.
                    b.calls /= 2;
                    b.failures /= 2;
                    b.slow /= 2;
                }
                b.calls = b.calls.saturating_add(1);
                b.failures = b.failures.saturating_add(u16::from(failure));
                b.slow = b.slow.saturating_add(u16::from(slow));
            }
        }
    }

    pub fn counts(&self, now_ms: u64) -> Counts {
        match self {
            Window::Count { filled, failures, slow, .. } => {
                let n = usize::from(*filled);
                // Bits past `filled` are still zero, so whole-byte popcounts are exact.
                let ones = |bits: &[u8]| bits.iter().map(|b| b.count_ones()).sum::<u32>();
                Counts { calls: n as u32, failures: ones(failures), slow: ones(slow) }
            }
            Window::Time { bucket_ms, buckets } => {
                let now_epoch = (now_ms / u64::from(*bucket_ms)) as u32;
                let oldest = now_epoch.saturating_sub(TIME_BUCKETS as u32 - 1);
                buckets.iter().filter(|b| b.epoch >= oldest && b.epoch <= now_epoch && b.calls > 0).fold(
                    Counts::default(),
                    |c, b| Counts {
                        calls: c.calls + u32::from(b.calls),
                        failures: c.failures + u32::from(b.failures),
                        slow: c.slow + u32::from(b.slow),
                    },
                )
            }
        }
    }

    pub fn clear(&mut self) {
        match self {
            Window::Count { next, filled, failures, slow, .. } => {
                *next = 0;
                *filled = 0;
                failures.iter_mut().for_each(|b| *b = 0);
                slow.iter_mut().for_each(|b| *b = 0);
            }
            Window::Time { buckets, .. } => *buckets = [Bucket::default(); TIME_BUCKETS],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_forgets_the_oldest_call() {
        let mut w = Window::new(WindowSpec::Count { size: 3 });
        w.record(0, true, false);
        w.record(0, false, true);
        w.record(0, false, false);
        assert_eq!(w.counts(0), Counts { calls: 3, failures: 1, slow: 1 });
        w.record(0, false, false); // overwrites the failure
        assert_eq!(w.counts(0), Counts { calls: 3, failures: 0, slow: 1 });
    }

    #[test]
    fn time_window_drops_buckets_older_than_the_window() {
        let mut w = Window::new(WindowSpec::Time { seconds: 10 });
        w.record(0, true, false);
        w.record(5_000, false, false);
        assert_eq!(w.counts(5_000).calls, 2);
        assert_eq!(w.counts(10_500), Counts { calls: 1, failures: 0, slow: 0 });
        assert_eq!(w.counts(20_000).calls, 0);
    }

    #[test]
    fn time_window_survives_a_clock_jump_of_hours() {
        let mut w = Window::new(WindowSpec::Time { seconds: 10 });
        w.record(1_000, true, false);
        w.record(3_600_000 * 5, false, false);
        assert_eq!(w.counts(3_600_000 * 5), Counts { calls: 1, failures: 0, slow: 0 });
    }
}
