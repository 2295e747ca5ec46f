//! The per-breaker state shared by every worker, and its compact binary encoding.
//!
//! It is read on every guarded request and written with compare-and-swap on every outcome, so
//! the encoding is a fixed little-endian layout (no JSON): a version byte, the scalar fields,
//! the probe slots, then the window.

use super::policy::{Policy, WindowSpec};
use super::window::{Bucket, Window, TIME_BUCKETS};

pub const ENCODING_VERSION: u8 = 1;
/// Upper bound on `half_open.permits`, so the probe slots stay a small fixed array.
pub const MAX_PERMITS: u8 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::HalfOpen => "half_open",
            Phase::Open => "open",
        }
    }
    fn from_u8(v: u8) -> Option<Phase> {
        match v {
            0 => Some(Phase::Closed),
            1 => Some(Phase::HalfOpen),
            2 => Some(Phase::Open),
            _ => None,
        }
    }
}

/// Why a breaker is open or refusing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    None = 0,
    ConsecutiveFailures = 1,
    FailureRate = 2,
    SlowCallRate = 3,
    ProbeFailed = 4,
    Forced = 5,
    RecoveryRamp = 6,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::ConsecutiveFailures => "consecutive_failures",
            Reason::FailureRate => "failure_rate",
            Reason::SlowCallRate => "slow_call_rate",
            Reason::ProbeFailed => "probe_failed",
            Reason::Forced => "forced",
            Reason::RecoveryRamp => "recovery_ramp",
        }
    }
    fn from_u8(v: u8) -> Reason {
        match v {
            1 => Reason::ConsecutiveFailures,
            2 => Reason::FailureRate,
            3 => Reason::SlowCallRate,
            4 => Reason::ProbeFailed,
            5 => Reason::Forced,
            6 => Reason::RecoveryRamp,
            _ => Reason::None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerState {
    pub phase: Phase,
    pub reason: Reason,
    /// Times the breaker re-opened from half-open since it last closed (the backoff exponent).
    pub reopens: u8,
    pub consecutive_failures: u16,
    pub probe_successes: u8,
    /// When the current phase began.
    pub since_ms: u64,
    /// While open: when it may move to half-open.
    pub open_until_ms: u64,
    /// When it last closed from half-open (start of the recovery ramp); 0 = never.
    pub closed_at_ms: u64,
    /// Half-open probe slots: 0 = free, else the deadline after which the slot is reclaimed.
    pub probe_slots: Vec<u64>,
    pub window: Window,
}

impl BreakerState {
    pub fn new(policy: &Policy) -> BreakerState {
        BreakerState {
            phase: Phase::Closed,
            reason: Reason::None,
            reopens: 0,
            consecutive_failures: 0,
            probe_successes: 0,
            since_ms: 0,
            open_until_ms: 0,
            closed_at_ms: 0,
            probe_slots: vec![0; usize::from(policy.half_open_permits)],
            window: Window::new(policy.window),
        }
    }

    /// Adapts a state written under another policy (a config reload): reshapes what no longer fits.
    pub fn conform(&mut self, policy: &Policy) {
        if !self.window.fits(policy.window) {
            self.window = Window::new(policy.window);
        }
        let permits = usize::from(policy.half_open_permits);
        if self.probe_slots.len() != permits {
            self.probe_slots.resize(permits, 0);
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(ENCODING_VERSION);
        out.push(self.phase as u8);
        out.push(self.reason as u8);
        out.push(self.reopens);
        out.extend_from_slice(&self.consecutive_failures.to_le_bytes());
        out.push(self.probe_successes);
        out.extend_from_slice(&self.since_ms.to_le_bytes());
        out.extend_from_slice(&self.open_until_ms.to_le_bytes());
        out.extend_from_slice(&self.closed_at_ms.to_le_bytes());
        out.push(self.probe_slots.len() as u8);
        for slot in &self.probe_slots {
            out.extend_from_slice(&slot.to_le_bytes());
        }
        match &self.window {
            Window::Count { size, next, filled, failures, slow } => {
                out.push(0);
                for v in [*size, *next, *filled] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(failures);
                out.extend_from_slice(slow);
            }
            Window::Time { bucket_ms, buckets } => {
                out.push(1);
                out.extend_from_slice(&bucket_ms.to_le_bytes());
                for b in buckets {
                    out.extend_from_slice(&b.epoch.to_le_bytes());
                    for v in [b.calls, b.failures, b.slow] {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        out
    }

    /// `None` for bytes this version did not write (they are then replaced by a fresh state).
    pub fn decode(bytes: &[u8]) -> Option<BreakerState> {
        let mut r = Reader(bytes);
        if r.u8()? != ENCODING_VERSION {
            return None;
        }
        let phase = Phase::from_u8(r.u8()?)?;
        let reason = Reason::from_u8(r.u8()?);
        let reopens = r.u8()?;
        let consecutive_failures = r.u16()?;
        let probe_successes = r.u8()?;
        let since_ms = r.u64()?;
        let open_until_ms = r.u64()?;
        let closed_at_ms = r.u64()?;
        let slots = r.u8()?;
        if slots > MAX_PERMITS {
            return None;
        }
        let probe_slots = (0..slots).map(|_| r.u64()).collect::<Option<Vec<u64>>>()?;
        let window = match r.u8()? {
            0 => {
                let (size, next, filled) = (r.u16()?, r.u16()?, r.u16()?);
                if next >= size.max(1) || filled > size {
                    return None;
                }
                let n = usize::from(size).div_ceil(8);
                Window::Count { size, next, filled, failures: r.bytes(n)?.to_vec(), slow: r.bytes(n)?.to_vec() }
            }
            1 => {
                let bucket_ms = r.u32()?;
                if bucket_ms == 0 {
                    return None;
                }
                let mut buckets = [Bucket::default(); TIME_BUCKETS];
                for b in buckets.iter_mut() {
                    *b = Bucket { epoch: r.u32()?, calls: r.u16()?, failures: r.u16()?, slow: r.u16()? };
                }
                Window::Time { bucket_ms, buckets }
            }
            _ => return None,
        };
        if !r.0.is_empty() {
            return None;
        }
        Some(BreakerState {
            phase,
            reason,
            reopens,
            consecutive_failures,
            probe_successes,
            since_ms,
            open_until_ms,
            closed_at_ms,
            probe_slots,
            window,
        })
    }

    /// The window spec this state was built for (for tests and diagnostics).
    pub fn window_spec(&self) -> WindowSpec {
        match &self.window {
            Window::Count { size, .. } => WindowSpec::Count { size: *size },
            Window::Time { bucket_ms, .. } => {
                WindowSpec::Time { seconds: ((*bucket_ms * TIME_BUCKETS as u32) / 1000) as u16 }
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes(2)?.try_into().ok().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.bytes(8)?.try_into().ok().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_both_window_kinds() {
        for window in [WindowSpec::Count { size: 100 }, WindowSpec::Time { seconds: 30 }] {
            let policy = Policy { window, ..Policy::default() };
            let mut s = BreakerState::new(&policy);
            s.window.record(12_345, true, true);
            s.phase = Phase::Open;
            s.reason = Reason::FailureRate;
            s.open_until_ms = 99;
            s.probe_slots[1] = 7;
            assert_eq!(BreakerState::decode(&s.encode()), Some(s.clone()));
        }
    }

    #[test]
    fn default_state_is_small() {
        let s = BreakerState::new(&Policy::default());
        assert!(s.encode().len() <= 96, "{} bytes", s.encode().len());
    }

    #[test]
    fn decode_rejects_truncated_and_foreign_bytes() {
        let bytes = BreakerState::new(&Policy::default()).encode();
        for n in 0..bytes.len() {
            assert_eq!(BreakerState::decode(&bytes[..n]), None, "prefix of {n} bytes");
        }
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(BreakerState::decode(&v2), None);
        let mut longer = bytes;
        longer.push(0);
        assert_eq!(BreakerState::decode(&longer), None);
    }
}
