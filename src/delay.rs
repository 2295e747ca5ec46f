//! Upgrades the admission budget delayed (`admission.max_delay_ms`): each waits, paused on its
//! worker, until the token it took comes; the worker's tick resumes it then
//! (`proxy_set_effective_context`, then `proxy_continue_stream`). A delayed client sees a slow
//! handshake instead of a refusal, so it does not back off further (see BENCHMARKS.md, the storm).
//!
//! Waits are measured on the worker's own clock, which never steps back: a wall clock that steps
//! backwards counts as no time passing (as the bucket counts it), so no stream waits longer
//! than it was told plus the step's tick; one that steps forwards releases what it passes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU64;

use hashbrown::{HashMap, HashSet};

use crate::{host, vm};

/// Streams one worker keeps delayed at most: past it, an upgrade that finds no token is refused.
pub const MAX_DELAYED: usize = 16_384;

/// One worker's delayed streams.
#[derive(Default)]
pub struct Delayed {
    /// (start on the worker's clock, context id), soonest first. An entry whose stream ended
    /// stays until its start (at most `max_delay_ms`) and is skipped then.
    queue: BinaryHeap<Reverse<(u64, u32)>>,
    /// Streams still waiting.
    waiting: HashSet<u32>,
    /// The answer deadline of each waiting stream's call (`Calls`), moved to its resume.
    pending: HashMap<u32, NonZeroU64>,
    /// When (wall clock) each stream resumed, until its filter takes it (at its answer, or its
    /// end): its call's duration counts from then, not from its token (up to a tick earlier).
    resumed: HashMap<u32, u64>,
    clock: SteadyClock,
}

/// The wall clock with its backward steps taken out.
#[derive(Default)]
struct SteadyClock {
    steady_ms: u64,
    /// The wall clock when last read; 0 = never read.
    wall_ms: u64,
}

impl SteadyClock {
    fn read(&mut self, wall_ms: u64) -> u64 {
        if self.wall_ms == 0 {
            self.steady_ms = wall_ms;
        } else {
            self.steady_ms += wall_ms.saturating_sub(self.wall_ms);
        }
        self.wall_ms = wall_ms;
        self.steady_ms
    }
}

impl Delayed {
    pub fn has_room(&self) -> bool {
        self.queue.len() < MAX_DELAYED
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Streams waiting now.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Holds stream `ctx` for `wait_ms` from `now_ms` (`pending`: its call's entry in `Calls`);
    /// false when there is no room.
    pub fn hold(&mut self, ctx: u32, now_ms: u64, wait_ms: u64, pending: Option<NonZeroU64>) -> bool {
        if !self.has_room() || !self.waiting.insert(ctx) {
            return false;
        }
        if let Some(id) = pending {
            self.pending.insert(ctx, id);
        }
        let start = self.clock.read(now_ms).saturating_add(wait_ms);
        self.queue.push(Reverse((start, ctx)));
        true
    }

    /// Whether stream `ctx` still waits (not resumed yet).
    pub fn is_waiting(&self, ctx: u32) -> bool {
        self.waiting.contains(&ctx)
    }

    /// Stream `ctx` ended: it is not resumed.
    pub fn forget(&mut self, ctx: u32) {
        self.waiting.remove(&ctx);
        self.pending.remove(&ctx);
        self.resumed.remove(&ctx);
    }

    /// The call entry of stream `ctx`, resumed now (once).
    fn take_pending(&mut self, ctx: u32) -> Option<NonZeroU64> {
        self.pending.remove(&ctx)
    }

    /// When stream `ctx` was resumed (once).
    pub fn take_resumed(&mut self, ctx: u32) -> Option<u64> {
        self.resumed.remove(&ctx)
    }

    /// The streams whose start came by `now_ms`, soonest first; they wait no more.
    pub fn due(&mut self, now_ms: u64) -> Vec<u32> {
        let now = self.clock.read(now_ms);
        let mut due = Vec::new();
        while let Some(&Reverse((start, ctx))) = self.queue.peek() {
            if start > now {
                break;
            }
            self.queue.pop();
            if self.waiting.remove(&ctx) {
                self.resumed.insert(ctx, now_ms);
                due.push(ctx);
            }
        }
        due
    }
}

/// On the worker's tick: resumes the delayed streams whose start came, then acts as the root
/// context `root` again.
pub fn on_tick(root: u32) {
    if vm::with(|vm| vm.delayed.is_empty()) {
        return;
    }
    let Ok(now) = host::now_ms() else { return };
    let due = vm::with(|vm| {
        let due = vm.delayed.due(now);
        // Each call reaches the backend now, up to a tick after its token: its answer deadline
        // counts from now.
        for &ctx in &due {
            if let Some(id) = vm.delayed.take_pending(ctx) {
                vm.calls.postpone(id, now);
            }
        }
        due
    });
    if due.is_empty() {
        return;
    }
    // Outside any borrow of the VM's state: Envoy may run the stream's callbacks on resuming.
    for ctx in due {
        if let Err(e) = host::set_effective_context(ctx).and_then(|()| host::resume_http_request()) {
            log::debug!("delayed stream {ctx} not resumed (gone?): {e:?}");
        }
    }
    if let Err(e) = host::set_effective_context(root) {
        log::warn!("delay: cannot act as the root context again: {e:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_start_in_order_and_an_ended_one_is_skipped() {
        let mut d = Delayed::default();
        assert!(d.hold(1, 1_000, 300, None));
        assert!(d.hold(2, 1_000, 100, None));
        assert!(d.hold(3, 1_050, 100, None));
        assert!(!d.hold(3, 1_050, 100, None), "a stream is held once");
        d.forget(3);
        assert_eq!(d.due(1_099), Vec::<u32>::new());
        assert_eq!(d.due(1_150), [2]);
        assert_eq!(d.due(1_300), [1]);
        assert!(d.is_empty());
        assert_eq!((d.take_resumed(2), d.take_resumed(2), d.take_resumed(3)), (Some(1_150), None, None));
        d.forget(1);
        assert_eq!(d.take_resumed(1), None);
    }

    #[test]
    fn a_clock_stepping_back_counts_as_no_time_passing() {
        let mut d = Delayed::default();
        let t0 = 100_000_000;
        assert!(d.hold(1, t0, 500, None));
        assert_eq!(d.due(t0 + 100), Vec::<u32>::new());
        // The next tick, 100 ms later, reads the clock an hour back: that tick's 100 ms are
        // lost, nothing more; the stream starts 500 ms of counted time after it was held.
        let back = t0 + 200 - 3_600_000;
        assert_eq!(d.due(back), Vec::<u32>::new());
        assert_eq!(d.due(back + 399), Vec::<u32>::new());
        assert_eq!(d.due(back + 400), [1]);
    }

    #[test]
    fn a_clock_stepping_forward_starts_what_it_passes() {
        let mut d = Delayed::default();
        assert!(d.hold(1, 10_000, 500, None));
        assert!(d.hold(2, 10_000, 5_000, None));
        assert_eq!(d.due(10_000 + 3_600_000), [1, 2]);
    }

    #[test]
    fn a_full_worker_holds_no_more() {
        let mut d = Delayed::default();
        for ctx in 0..MAX_DELAYED as u32 {
            assert!(d.hold(ctx, 1_000, 100, None));
        }
        assert!(!d.has_room());
        assert!(!d.hold(u32::MAX, 1_000, 100, None));
        // Ended streams still count until their start: the queue stays bounded.
        d.forget(0);
        assert!(!d.hold(u32::MAX, 1_000, 100, None));
        assert_eq!(d.due(1_100).len(), MAX_DELAYED - 1);
        assert!(d.hold(u32::MAX, 1_100, 100, None));
    }
}
