//! The validated, typed policy of one breaker. Built by `crate::config`; read by the state machine.

/// How a breaker behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Decide and refuse.
    Enforce,
    /// Count, transition and report, never refuse.
    DryRun,
    /// Refuse every new upgrade, whatever the state.
    ForcedOpen,
    /// Always admit, record nothing.
    Disabled,
}

/// The sliding window the rates are computed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowSpec {
    /// The last `size` calls.
    Count { size: u16 },
    /// The calls of the last `seconds` seconds, in buckets.
    Time { seconds: u16 },
}

/// The longest `recovery_ramp_ms` a configuration may set (one hour).
pub const MAX_RECOVERY_RAMP_MS: u64 = 3_600_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub mode: Mode,
    /// 0 = off.
    pub consecutive_failures: u32,
    /// Trip when failures / calls >= this (in (0, 1]).
    pub failure_rate: f64,
    /// 0 = slow calls are not tracked.
    pub slow_call_ms: u64,
    pub slow_call_rate: f64,
    pub window: WindowSpec,
    pub minimum_calls: u32,
    pub open_base_ms: u64,
    pub open_max_ms: u64,
    pub open_multiplier: f64,
    pub open_jitter: f64,
    pub half_open_permits: u8,
    pub half_open_successes: u8,
    pub recovery_ramp_ms: u64,
    /// An admitted call with no upstream answer after this long is a failure (0 = off). A
    /// half-open probe holds its slot at most this long.
    pub answer_timeout_ms: u64,
}

impl Default for Policy {
    /// DESIGN.md's defaults.
    fn default() -> Self {
        Policy {
            mode: Mode::Enforce,
            consecutive_failures: 5,
            failure_rate: 0.5,
            slow_call_ms: 0,
            slow_call_rate: 1.0,
            window: WindowSpec::Count { size: 100 },
            minimum_calls: 10,
            open_base_ms: 30_000,
            open_max_ms: 300_000,
            open_multiplier: 2.0,
            open_jitter: 0.1,
            half_open_permits: 3,
            half_open_successes: 2,
            recovery_ramp_ms: 0,
            answer_timeout_ms: 10_000,
        }
    }
}

impl Policy {
    /// Open time after `reopens` re-openings from half-open, before jitter, capped at `open_max_ms`.
    pub fn open_duration_ms(&self, reopens: u8) -> u64 {
        let factor = self.open_multiplier.powi(i32::from(reopens));
        let ms = (self.open_base_ms as f64) * factor;
        if !ms.is_finite() || ms >= self.open_max_ms as f64 {
            self.open_max_ms
        } else {
            ms as u64
        }
    }

    /// How long a half-open probe holds its slot: `answer_timeout_ms`, or when that is off, the
    /// lease that reclaims the slot of a probe whose worker went away.
    pub fn probe_lease_ms(&self) -> u64 {
        if self.answer_timeout_ms > 0 {
            self.answer_timeout_ms
        } else {
            crate::breaker::PROBE_LEASE_MS
        }
    }

    /// The longest an open time can be: `open_max_ms` spread by the jitter. A state that says
    /// more (a wall clock stepped backwards) is clamped to this.
    pub fn longest_open_ms(&self) -> u64 {
        let ms = self.open_max_ms as f64 * (1.0 + self.open_jitter.max(0.0));
        if ms.is_finite() && ms < u64::MAX as f64 {
            ms as u64
        } else {
            u64::MAX
        }
    }

    /// `base` spread by +-jitter, never above `open_max_ms`; `unit` is a uniform value in [0, 1).
    pub fn jittered(&self, base_ms: u64, unit: f64) -> u64 {
        let spread = 1.0 + self.open_jitter * (2.0 * unit - 1.0);
        let ms = (base_ms as f64 * spread).max(1.0) as u64;
        ms.min(self.open_max_ms.max(base_ms))
    }
}
