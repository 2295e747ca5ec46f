//! What one VM (one Envoy worker) keeps between requests: cached metric ids, the tracked-key
//! registry, and a cheap random source for jitter.

use std::cell::Cell;
use std::num::NonZeroU64;
use std::rc::Rc;

use crate::host;
use crate::keys::Key;
use crate::metrics::Metrics;
use crate::store::Registry;
use floodgate_core::remote::RemoteView;
use floodgate_core::ProbeTicket;

#[derive(Default)]
pub struct Vm {
    pub metrics: Metrics,
    pub registry: Registry,
    /// This worker's copy of the control plane's view, refreshed on ticks.
    pub remote: RemoteCache,
    /// Admitted calls waiting for their upstream answer (for `answer_timeout_ms`).
    pub calls: Calls,
    /// This worker's live upgraded streams, for drains.
    pub live: floodgate_core::drain::LiveStreams,
    /// Upgrades the admission budget delayed on this worker.
    pub delayed: crate::delay::Delayed,
    /// Keys with successes counted since the last tick, each once (see `guard::flush_successes`).
    pub successes: Vec<Rc<Key>>,
    rng: u64,
}

/// Calls in flight on this worker that have an answer deadline, bounded: past
/// [`MAX_IN_FLIGHT`], a new call is not tracked (its outcome is still recorded when it comes).
/// A slab: a call's id is its slot and the slot's generation, so tracking and settling index a
/// vector instead of hashing, and an id never settles a later call in the same slot.
#[derive(Default)]
pub struct Calls {
    slots: Vec<Slot>,
    /// Slots free for reuse.
    free: Vec<u32>,
    live: usize,
}

#[derive(Default)]
struct Slot {
    /// Counts the slot's calls, modulo 2^48 (an id is the generation above 16 bits of index:
    /// a slot is reused 2^48 times before an old id could match again).
    generation: u64,
    call: Option<Pending>,
}

/// Calls one worker tracks for their answer deadline at most.
pub const MAX_IN_FLIGHT: usize = 16_384;
/// Bits of an id that hold the slot's index; the generation takes the 48 above.
const INDEX_BITS: u32 = 16;
const _: () = assert!(MAX_IN_FLIGHT <= 1 << INDEX_BITS);

/// An admitted call waiting for its answer.
#[derive(Clone)]
pub struct Pending {
    pub key: Rc<Key>,
    pub probe: Option<ProbeTicket>,
    /// When it was admitted (a delayed call starts later: only its deadline moves).
    pub start_ms: u64,
    pub deadline_ms: u64,
}

impl Calls {
    /// Tracks a call; `None` when the table is full.
    pub fn track(&mut self, call: Pending) -> Option<NonZeroU64> {
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None if self.slots.len() < MAX_IN_FLIGHT => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
            None => return None,
        };
        let slot = self.slots.get_mut(index)?;
        slot.generation = (slot.generation + 1) & (u64::MAX >> INDEX_BITS);
        slot.call = Some(call);
        self.live += 1;
        // The generation is at least 1 after the increment, so an id is never 0.
        slot.generation = slot.generation.max(1);
        NonZeroU64::new(slot.generation << INDEX_BITS | index as u64)
    }

    /// Stops tracking a call: its deadline, or `None` when it is not tracked any more (it
    /// timed out).
    pub fn settle(&mut self, id: NonZeroU64) -> Option<u64> {
        let (index, slot) = self.slot(id)?;
        // Read in place and dropped in place: the call is not copied out of its slot.
        let deadline_ms = slot.call.as_ref()?.deadline_ms;
        slot.call = None;
        self.free.push(index as u32);
        self.live -= 1;
        Some(deadline_ms)
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The slot call `id` was given, while no later call took it: its index and the slot.
    fn slot(&mut self, id: NonZeroU64) -> Option<(usize, &mut Slot)> {
        let id = id.get();
        let index = (id & ((1 << INDEX_BITS) - 1)) as usize;
        let slot = self.slots.get_mut(index).filter(|s| s.generation == id >> INDEX_BITS)?;
        Some((index, slot))
    }

    /// A call delayed to start at `start_ms`: its answer deadline is `answer_timeout_ms` from
    /// then (postponed again when it is resumed). Its own `start_ms` stays its admission (a clock
    /// reading): [`Calls::take_overdue`] takes a start after now for a clock that stepped back,
    /// and a postponed start is no such thing.
    pub fn postpone(&mut self, id: NonZeroU64, start_ms: u64) {
        let Some(c) = self.slot(id).and_then(|(_, s)| s.call.as_mut()) else { return };
        c.deadline_ms = start_ms.max(c.start_ms).saturating_add(c.key.policy.policy.answer_timeout_ms);
    }

    pub fn len(&self) -> usize {
        self.live
    }

    /// Removes and returns the calls whose deadline passed. A call that started after `now_ms`
    /// (the wall clock stepped backwards) keeps its full timeout from now.
    pub fn take_overdue(&mut self, now_ms: u64) -> Vec<Pending> {
        let mut due = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(c) = slot.call.as_mut() else { continue };
            if c.start_ms > now_ms {
                c.deadline_ms = now_ms.saturating_add(c.deadline_ms.saturating_sub(c.start_ms));
                c.start_ms = now_ms;
            }
            if c.deadline_ms <= now_ms {
                due.extend(slot.call.take());
                self.free.push(index as u32);
            }
        }
        self.live -= due.len();
        due
    }
}

/// The decoded view and the shared-data CAS it was read at (decode again only when it moves).
#[derive(Default)]
pub struct RemoteCache {
    pub cas: u32,
    pub view: Rc<RemoteView>,
}

impl Vm {
    /// Uniform in [0, 1). xorshift64*: jitter needs spread, not cryptographic randomness.
    pub fn unit(&mut self, now_ms: u64) -> f64 {
        if self.rng == 0 {
            // Seeded from the host's randomness, so workers started together spread differently.
            self.rng = host::random_u64().unwrap_or(now_ms) | 1;
        }
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

thread_local! {
    /// This VM's state, out of its slot while a callback uses it.
    static VM: Cell<Option<Box<Vm>>> = const { Cell::new(None) };
}

/// Runs `f` with this VM's state. The state is taken out of its slot for `f` and put back
/// after: one path into `f` (inlined into its caller), no lazy initialisation check. A call
/// nested in `f` (a host call that runs another callback) finds the slot empty and gets a fresh
/// state, dropped when the outer call puts its own back: it only loses cached ids.
pub fn with<T>(f: impl FnOnce(&mut Vm) -> T) -> T {
    VM.with(|slot| {
        let mut vm = slot.take().unwrap_or_default();
        let out = f(&mut vm);
        drop(slot.replace(Some(vm)));
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BreakerPolicy;

    fn pending(deadline_ms: u64) -> Pending {
        let policy = Rc::new(BreakerPolicy {
            policy: Default::default(),
            failure: Default::default(),
            admission: Default::default(),
        });
        Pending { key: Rc::new(Key::new("k", policy)), probe: None, start_ms: 0, deadline_ms }
    }

    #[test]
    fn a_postponed_call_is_not_taken_for_a_backward_clock_step_and_keeps_its_deadline() {
        let mut calls = Calls::default();
        let mut p = pending(0);
        let timeout = p.key.policy.policy.answer_timeout_ms;
        assert!(timeout > 0);
        (p.start_ms, p.deadline_ms) = (1_000, 1_000 + timeout);
        let id = calls.track(p).unwrap();
        // Delayed 5 s: it starts at 6,000 and has its whole timeout from then; resumed 50 ms
        // late, from then.
        calls.postpone(id, 6_000);
        assert!(calls.take_overdue(1_100).is_empty());
        calls.postpone(id, 6_050);
        assert!(calls.take_overdue(6_049 + timeout).is_empty(), "timed out before its start plus its timeout");
        assert_eq!(calls.take_overdue(6_050 + timeout).len(), 1);
    }

    #[test]
    fn an_id_taken_overdue_never_settles_a_later_call_in_its_slot_after_four_billion_reuses() {
        let mut calls = Calls::default();
        let old = calls.track(pending(10)).unwrap();
        assert_eq!(calls.take_overdue(10).len(), 1);
        // The same slot reused 2^32 times while the old stream (hung past its deadline) still
        // holds its id: days at a few thousand calls a second on one worker.
        calls.slots[0].generation = u32::MAX.into();
        let new = calls.track(pending(20)).unwrap();
        assert_ne!(old, new, "a later call in the same slot got the old call's id");
        assert_eq!(calls.settle(old), None, "the old call's late answer settled the new call");
        assert_eq!(calls.settle(new), Some(20));
    }
}
