//! The per-breaker state shared by every worker, and its compact binary encoding.
//!
//! It is read on every guarded request and written with compare-and-swap on every outcome, so
//! the encoding is a fixed little-endian layout (no JSON): a version byte, the scalar fields,
//! the probe slots, then the window.
//!
//! A quiet state ([`BreakerState::is_quiet`]: closed, no streak, a count window full of
//! successes, not closed from half-open within the longest ramp a policy allows) is written as no
//! bytes at all. The state of a healthy
//! breaker is then read with nothing to copy back, which in Envoy spares the call into the
//! module's allocator that every non-empty answer of a host call costs (`make bench-host-calls`).
//! Empty bytes decode as the quiet state of the reader's policy ([`BreakerState::decode_for`]).

use super::policy::{Policy, WindowSpec, MAX_RECOVERY_RAMP_MS};
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

    /// Adapts a state written under another policy (a config reload): reshapes what no longer
    /// fits. A count window full of successes stays full of successes in its new size (as the
    /// empty encoding of a quiet state reads in any size); any other window starts afresh.
    pub fn conform(&mut self, policy: &Policy) {
        if !self.window.fits(policy.window) {
            self.window = match (self.window.is_full_of_successes(), policy.window) {
                (true, spec @ WindowSpec::Count { .. }) => Window::full_of_successes(spec),
                (_, spec) => Window::new(spec),
            };
        }
        let permits = usize::from(policy.half_open_permits);
        if self.probe_slots.len() != permits {
            self.probe_slots.resize(permits, 0);
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// The encoding's length in bytes.
    pub fn encoded_len(&self) -> usize {
        let window = match &self.window {
            Window::Count { failures, slow, .. } => 1 + 6 + failures.len() + slow.len(),
            Window::Time { .. } => 1 + 4 + TIME_BUCKETS * 10,
        };
        HEAD_LEN + 1 + 8 * self.probe_slots.len() + window
    }

    /// Appends the encoding to `out` (one buffer, sized once, for the caller to reuse).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
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
    }

    /// A closed breaker with nothing to remember: no failure streak, a count window full of
    /// successes, free probe slots.
    pub fn quiet(policy: &Policy) -> BreakerState {
        BreakerState { window: Window::full_of_successes(policy.window), ..BreakerState::new(policy) }
    }

    /// Whether this state may be written as no bytes: it is [`BreakerState::quiet`] but for
    /// when it closed and where its ring stands, and no recovery ramp any policy allows is
    /// running at `now_ms` (it closed more than [`MAX_RECOVERY_RAMP_MS`] ago, or never): a ramp
    /// needs the closing time, and a reload may turn one on. Only count windows: a time
    /// window's buckets carry their epochs.
    pub fn is_quiet(&self, now_ms: u64) -> bool {
        let ramp_over = ramp_over(self.closed_at_ms, now_ms);
        let window_quiet = self.window.is_full_of_successes();
        self.phase == Phase::Closed
            && self.reason == Reason::None
            && self.reopens == 0
            && self.consecutive_failures == 0
            && self.probe_successes == 0
            && self.probe_slots.iter().all(|&d| d == 0)
            && window_quiet
            && ramp_over
    }

    /// The encoding to write at `now_ms`: none for a quiet state, else [`BreakerState::encode`].
    pub fn encode_for(&self, now_ms: u64) -> Vec<u8> {
        if self.is_quiet(now_ms) {
            Vec::new()
        } else {
            self.encode()
        }
    }

    /// [`BreakerState::decode`], with empty bytes read as the quiet state in `policy`'s shape.
    pub fn decode_for(bytes: &[u8], policy: &Policy) -> Option<BreakerState> {
        if bytes.is_empty() {
            return Some(BreakerState::quiet(policy));
        }
        BreakerState::decode(bytes)
    }

    /// `None` for bytes this version did not write (they are then replaced by a fresh state),
    /// and for the empty encoding of a quiet state, which needs a policy ([`BreakerState::decode_for`]).
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
        let mut probe_slots = Vec::with_capacity(usize::from(slots));
        for _ in 0..slots {
            probe_slots.push(r.u64()?);
        }
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

/// Bytes before the probe slots: version, phase, reason, reopens, streak, probe successes and
/// the three times.
pub const HEAD_LEN: usize = 1 + 1 + 1 + 1 + 2 + 1 + 8 + 8 + 8;

/// The scalar fields of an encoded state, read in place (no allocation): what admission needs
/// while the breaker is closed or open, and what tells a success apart from a no-op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub phase: Phase,
    pub reason: Reason,
    pub consecutive_failures: u16,
    pub since_ms: u64,
    pub open_until_ms: u64,
    pub closed_at_ms: u64,
}

impl Head {
    /// The head of a quiet state (the empty encoding).
    pub const QUIET: Head = Head {
        phase: Phase::Closed,
        reason: Reason::None,
        consecutive_failures: 0,
        since_ms: 0,
        open_until_ms: 0,
        closed_at_ms: 0,
    };

    /// The head of bytes [`BreakerState::decode_for`] accepts (empty bytes: a quiet state's);
    /// `None` for anything it would not (the caller then takes the full path, which treats them
    /// as it always did).
    pub fn peek(bytes: &[u8]) -> Option<Head> {
        if bytes.is_empty() {
            return Some(Head::QUIET);
        }
        let (head, _) = bytes.split_first_chunk::<SLOTS_AT>()?;
        if head[0] != ENCODING_VERSION || !layout_ok(bytes, head[HEAD_LEN]) {
            return None;
        }
        let u64_at = |i: usize| head[i..].first_chunk::<8>().map_or(0, |b| u64::from_le_bytes(*b));
        Some(Head {
            phase: Phase::from_u8(head[1])?,
            reason: Reason::from_u8(head[2]),
            consecutive_failures: u16::from_le_bytes([head[4], head[5]]),
            since_ms: u64_at(7),
            open_until_ms: u64_at(15),
            closed_at_ms: u64_at(23),
        })
    }
}

/// Whether the bytes after the head (with `slots` probe slots) have the length and bounds
/// `decode` checks.
fn layout_ok(bytes: &[u8], slots: u8) -> bool {
    let at = SLOTS_AT + 8 * usize::from(slots);
    let Some((&kind, rest)) = bytes.get(at..).and_then(<[u8]>::split_first) else { return false };
    if slots > MAX_PERMITS {
        return false;
    }
    match kind {
        0 => match rest.first_chunk::<6>() {
            Some(&[s0, s1, x0, x1, f0, f1]) => {
                let (size, next, filled) =
                    (u16::from_le_bytes([s0, s1]), u16::from_le_bytes([x0, x1]), u16::from_le_bytes([f0, f1]));
                next < size.max(1) && filled <= size && rest.len() == 6 + 2 * usize::from(size).div_ceil(8)
            }
            None => false,
        },
        1 => rest.len() == 4 + TIME_BUCKETS * 10 && rest[..4] != [0; 4],
        _ => false,
    }
}

/// Whether one more success leaves every later decision as it is: a closed breaker with no
/// failure streak whose count window of `size` calls is full and holds no failure or slow call
/// (a success then only replaces a success), in the shape `permits` probe slots give. Read in
/// place (this runs on every success); `false` whenever unsure. Empty bytes are a quiet state,
/// whose success is a no-op in any shape.
pub fn success_is_noop(bytes: &[u8], permits: u8, size: u16) -> bool {
    if bytes.is_empty() {
        return true;
    }
    let at = SLOTS_AT + 8 * usize::from(permits);
    let n = usize::from(size).div_ceil(8);
    if bytes.len() != at + 7 + 2 * n || permits > MAX_PERMITS {
        return false;
    }
    let Some((head, rest)) = bytes.split_first_chunk::<SLOTS_AT>() else { return false };
    let closed = head[0] == ENCODING_VERSION && head[1] == Phase::Closed as u8;
    if !closed || head[4] | head[5] != 0 || head[HEAD_LEN] != permits {
        return false;
    }
    let Some((window, bits)) = rest[at - SLOTS_AT..].split_first_chunk::<7>() else { return false };
    let [kind, s0, s1, x0, x1, f0, f1] = *window;
    let (stored, next, filled) =
        (u16::from_le_bytes([s0, s1]), u16::from_le_bytes([x0, x1]), u16::from_le_bytes([f0, f1]));
    kind == 0 && stored == size && filled == size && next < size && all_zero(bits)
}

/// Whether bytes [`success_is_noop`] accepted (non-empty) hold a state that is quiet at `now_ms`
/// ([`BreakerState::is_quiet`]), so that they may be written as no bytes: no reason, reopens or
/// probe successes left, every probe slot free, and no ramp possibly running. Read in place.
pub fn noop_is_quiet(bytes: &[u8], now_ms: u64) -> bool {
    let Some(h) = Head::peek(bytes) else { return false };
    let Some(head) = bytes.first_chunk::<SLOTS_AT>() else { return false };
    let ramp_over = ramp_over(h.closed_at_ms, now_ms);
    let slots_free = bytes.get(SLOTS_AT..SLOTS_AT + 8 * usize::from(head[HEAD_LEN])).is_some_and(all_zero);
    head[2] == 0 && head[3] == 0 && head[PROBE_SUCCESSES_AT] == 0 && slots_free && ramp_over
}

/// Whether no recovery ramp any policy allows still runs at `now_ms` for a breaker that closed
/// at `closed_at_ms` (0: it never closed from half-open).
fn ramp_over(closed_at_ms: u64, now_ms: u64) -> bool {
    closed_at_ms == 0 || now_ms >= closed_at_ms.saturating_add(MAX_RECOVERY_RAMP_MS)
}

/// Whether every byte is 0, eight at a time (from 8 bytes on, the last word overlaps the one
/// before it instead of a byte-by-byte tail).
fn all_zero(bytes: &[u8]) -> bool {
    let Some(last) = bytes.last_chunk::<8>() else { return bytes.iter().all(|&b| b == 0) };
    let words = bytes.chunks_exact(8);
    let word = |w: &[u8]| w.first_chunk::<8>().map_or(0, |w| u64::from_le_bytes(*w));
    words.fold(u64::from_le_bytes(*last), |any, w| any | word(w)) == 0
}

/// The probe slots of encoded bytes (which [`Head::peek`] accepted), in order.
/// None for bytes too short to hold them (the empty encoding of a quiet state has no slots).
pub fn slot_deadlines(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let n = usize::from(bytes.get(HEAD_LEN).copied().unwrap_or(0));
    bytes
        .get(SLOTS_AT..SLOTS_AT + 8 * n)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
}

/// Where the probe slots start, and the byte before them that counts them.
const SLOTS_AT: usize = HEAD_LEN + 1;
const PROBE_SUCCESSES_AT: usize = 6;

/// Whether encoded bytes (which [`Head::peek`] accepted) already have the shape `policy` asks
/// for: as many probe slots as permits, and its window. Else `conform` would reshape them, and
/// only the full step does that.
/// `false` for bytes too short to be checked: the empty encoding of a quiet state has no
/// layout to step in place (the full step reads it as the quiet state of `policy`).
pub fn fits(bytes: &[u8], policy: &Policy) -> bool {
    let Some(&slots) = bytes.get(HEAD_LEN) else { return false };
    let slots = usize::from(slots);
    if slots != usize::from(policy.half_open_permits) {
        return false;
    }
    let at = SLOTS_AT + 8 * slots;
    let (Some(&kind), Some(rest)) = (bytes.get(at), bytes.get(at + 1..)) else { return false };
    match (kind, policy.window) {
        (0, WindowSpec::Count { size }) => rest.first_chunk::<2>().is_some_and(|s| u16::from_le_bytes(*s) == size),
        (1, spec @ WindowSpec::Time { .. }) => match rest.first_chunk::<4>() {
            Some(b) => Window::Time { bucket_ms: u32::from_le_bytes(*b), buckets: [Bucket::default(); TIME_BUCKETS] }
                .fits(spec),
            None => false,
        },
        _ => false,
    }
}

/// Probe slot `i` of encoded bytes (which [`Head::peek`] accepted and that have `i` slots at least).
/// Probe slot `i`'s deadline (0 past the bytes: no slot there is taken).
pub fn slot(bytes: &[u8], i: usize) -> u64 {
    let at = SLOTS_AT + 8 * i;
    bytes.get(at..).and_then(<[u8]>::first_chunk::<8>).map_or(0, |b| u64::from_le_bytes(*b))
}

/// Sets probe slot `i`'s deadline; nothing past the bytes.
pub fn set_slot(bytes: &mut [u8], i: usize, deadline_ms: u64) {
    let at = SLOTS_AT + 8 * i;
    if let Some(slot) = bytes.get_mut(at..at + 8) {
        slot.copy_from_slice(&deadline_ms.to_le_bytes());
    }
}

pub fn slots(bytes: &[u8]) -> usize {
    usize::from(bytes.get(HEAD_LEN).copied().unwrap_or(0))
}

pub fn probe_successes(bytes: &[u8]) -> u8 {
    bytes.get(PROBE_SUCCESSES_AT).copied().unwrap_or(0)
}

pub fn set_probe_successes(bytes: &mut [u8], n: u8) {
    if let Some(b) = bytes.get_mut(PROBE_SUCCESSES_AT) {
        *b = n;
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
    fn the_head_is_read_in_place_from_exactly_the_bytes_decode_accepts() {
        for window in [WindowSpec::Count { size: 100 }, WindowSpec::Time { seconds: 30 }] {
            let policy = Policy { window, ..Policy::default() };
            let mut s = BreakerState::new(&policy);
            s.phase = Phase::Open;
            s.reason = Reason::ProbeFailed;
            s.consecutive_failures = 7;
            (s.since_ms, s.open_until_ms, s.closed_at_ms) = (11, 22, 33);
            let bytes = s.encode();
            assert_eq!(bytes.len(), s.encoded_len());
            let head = Head::peek(&bytes).unwrap();
            assert_eq!((head.phase, head.reason, head.consecutive_failures), (Phase::Open, Reason::ProbeFailed, 7));
            assert_eq!((head.since_ms, head.open_until_ms, head.closed_at_ms), (11, 22, 33));
            // No prefix but the empty one (a quiet state's encoding) has a head.
            assert_eq!(Head::peek(&[]), Some(Head::QUIET));
            for n in 1..bytes.len() {
                assert_eq!(Head::peek(&bytes[..n]), None, "prefix of {n} bytes");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Head::peek(&longer), None);
        }
    }

    #[test]
    fn a_success_is_a_noop_only_on_a_full_clean_count_window_with_no_streak() {
        let policy = Policy { window: WindowSpec::Count { size: 10 }, ..Policy::default() };
        let mut s = BreakerState::new(&policy);
        for _ in 0..9 {
            s.window.record(0, false, false);
        }
        assert!(!success_is_noop(&s.encode(), 3, 10), "a window still filling counts every call");
        s.window.record(0, false, false);
        assert!(success_is_noop(&s.encode(), 3, 10));
        assert!(!success_is_noop(&s.encode(), 3, 20), "a window of another size is rebuilt");
        assert!(!success_is_noop(&s.encode(), 2, 10), "a state of another shape is rebuilt");
        let mut streak = s.clone();
        streak.consecutive_failures = 1;
        assert!(!success_is_noop(&streak.encode(), 3, 10), "a success ends a streak");
        let mut failed = s.clone();
        failed.window.record(0, true, false);
        assert!(!success_is_noop(&failed.encode(), 3, 10), "a success pushes a failure out");
        let mut slow = s.clone();
        slow.window.record(0, false, true);
        assert!(!success_is_noop(&slow.encode(), 3, 10), "a success pushes a slow call out");
        let mut half_open = s.clone();
        half_open.phase = Phase::HalfOpen;
        assert!(!success_is_noop(&half_open.encode(), 3, 10));
        let time = BreakerState::new(&Policy { window: WindowSpec::Time { seconds: 10 }, ..Policy::default() });
        assert!(!success_is_noop(&time.encode(), 3, 10), "a time window counts every call");
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
