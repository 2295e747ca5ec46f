//! Upgrades the admission budget delayed (`admission.max_delay_ms`): each waits, paused on its
//! worker, until the token it took comes; the worker's tick resumes it then
//! (`proxy_set_effective_context`, then `proxy_continue_stream`). A delayed client sees a slow
//! handshake instead of a refusal, so it does not back off further (see BENCHMARKS.md, the storm).
//! A breaker that opened (or went half-open, or was forced open) while the call waited refuses
//! it instead: it is still a new upgrade, and the backend is failing.
//!
//! Waits are measured on the worker's own clock, which never steps back: a wall clock that steps
//! backwards counts as no time passing (as the bucket counts it), so no stream waits longer
//! than it was told plus the step's tick; one that steps forwards releases what it passes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU64;
use std::rc::Rc;

use hashbrown::{HashMap, HashSet};

use crate::config::Config;
use crate::keys::Key;
use crate::metrics::RejectKind;
use crate::{guard, host, http, vm};

/// Streams one worker keeps delayed at most: past it, an upgrade that finds no token is refused.
pub const MAX_DELAYED: usize = 16_384;

/// One worker's delayed streams.
#[derive(Default)]
pub struct Delayed {
    /// (start on the worker's clock, context id), soonest first. An entry whose stream ended
    /// stays until its start (at most `max_delay_ms`) and is skipped then.
    queue: BinaryHeap<Reverse<(u64, u32)>>,
    /// Streams still waiting.
    waiting: HashMap<u32, Waiting>,
    /// Streams refused when their wait ended (their breaker opened meanwhile), until they end:
    /// their filter then gives the call back instead of reading the local reply as an answer.
    refused: HashSet<u32>,
    /// When (wall clock) each stream resumed, until its filter takes it (at its answer, or its
    /// end): its call's duration counts from then, not from its token (up to a tick earlier).
    resumed: HashMap<u32, u64>,
    clock: SteadyClock,
}

/// A stream waiting for its token.
pub struct Waiting {
    /// The configuration of the stream's filter: every root context of the VM ticks (an HTTP
    /// filter's, a TCP filter's with the same `vm_id`), each with its own configuration; the
    /// stream is re-checked and refused as its own says (its control plane, its `reject`).
    pub config: Rc<Config>,
    pub key: Rc<Key>,
    /// What a refusal counts it as.
    pub kind: RejectKind,
    /// Its entry in the worker's calls in flight (answer deadline), if any.
    pub pending: Option<NonZeroU64>,
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

    /// Holds stream `ctx` for `wait_ms` from `now_ms`; false when there is no room.
    pub fn hold(&mut self, ctx: u32, waiting: Waiting, now_ms: u64, wait_ms: u64) -> bool {
        if !self.has_room() || self.waiting.contains_key(&ctx) {
            return false;
        }
        self.waiting.insert(ctx, waiting);
        let start = self.clock.read(now_ms).saturating_add(wait_ms);
        self.queue.push(Reverse((start, ctx)));
        true
    }

    /// Whether stream `ctx` still waits (not resumed yet).
    pub fn is_waiting(&self, ctx: u32) -> bool {
        self.waiting.contains_key(&ctx)
    }

    /// Stream `ctx` ended: it is not resumed. Whether it had been refused when its wait ended.
    pub fn forget(&mut self, ctx: u32) -> bool {
        self.waiting.remove(&ctx);
        self.resumed.remove(&ctx);
        self.refused.remove(&ctx)
    }

    /// When stream `ctx` was resumed (once).
    pub fn take_resumed(&mut self, ctx: u32) -> Option<u64> {
        self.resumed.remove(&ctx)
    }

    /// Whether stream `ctx` was refused when its wait ended (asked once, by its filter).
    pub fn take_refused(&mut self, ctx: u32) -> bool {
        self.refused.remove(&ctx)
    }

    /// The streams whose start came by `now_ms`, soonest first; they wait no more.
    pub fn due(&mut self, now_ms: u64) -> Vec<(u32, Waiting)> {
        let now = self.clock.read(now_ms);
        let mut due = Vec::new();
        while let Some(&Reverse((start, ctx))) = self.queue.peek() {
            if start > now {
                break;
            }
            self.queue.pop();
            if let Some(w) = self.waiting.remove(&ctx) {
                due.push((ctx, w));
            }
        }
        due
    }
}

/// On the worker's tick: resumes the delayed streams whose start came (or refuses those whose
/// breaker no longer admits new calls), then acts as the root context `root` again.
pub fn on_tick(root: u32) {
    if vm::with(|vm| vm.delayed.is_empty()) {
        return;
    }
    let Ok(now) = host::now_ms() else { return };
    let due = vm::with(|vm| vm.delayed.due(now));
    if due.is_empty() {
        return;
    }
    // Outside any borrow of the VM's state: Envoy may run the stream's callbacks on resuming.
    for (ctx, w) in due {
        let refusal = guard::refusal_after_delay(&w.config, &w.key, now);
        if let Err(e) = host::set_effective_context(ctx) {
            log::debug!("delayed stream {ctx} not resumed (gone?): {e:?}");
            continue;
        }
        let refused = match &refusal {
            Some(r) => http::send_refusal(&w.config, w.key.name.as_bytes(), r)
                .map_err(|e| log::warn!("delayed stream {ctx}: local reply failed ({e:?}): resumed"))
                .is_ok(),
            None => false,
        };
        if refused {
            // Never sent: its answer deadline goes with it now (this tick's `expire_overdue`
            // would take a deadline already past for a timeout, a failure of the backend).
            vm::with(|vm| {
                vm.metrics.rejected(&w.key.name, w.kind);
                vm.delayed.refused.insert(ctx);
                if let Some(id) = w.pending {
                    vm.calls.settle(id);
                }
            });
            continue;
        }
        match host::resume_http_request() {
            // Sent now: its answer deadline and its duration count from now, not from its
            // token (up to a tick earlier, or further when the clock jumped).
            Ok(()) => vm::with(|vm| {
                vm.delayed.resumed.insert(ctx, now);
                if let Some(id) = w.pending {
                    vm.calls.postpone(id, now);
                }
            }),
            Err(e) => log::debug!("delayed stream {ctx} not resumed (gone?): {e:?}"),
        }
    }
    if let Err(e) = host::set_effective_context(root) {
        log::warn!("delay: cannot act as the root context again: {e:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BreakerPolicy;

    fn waiting() -> Waiting {
        let policy =
            BreakerPolicy { policy: Default::default(), failure: Default::default(), admission: Default::default() };
        let config = Rc::new(crate::config::parse(b"{}", crate::config::FilterKind::Http).expect("valid"));
        Waiting { config, key: Rc::new(Key::new("k", Rc::new(policy))), kind: RejectKind::WebSocket, pending: None }
    }

    fn ids(due: Vec<(u32, Waiting)>) -> Vec<u32> {
        due.into_iter().map(|(ctx, _)| ctx).collect()
    }

    #[test]
    fn streams_start_in_order_and_an_ended_one_is_skipped() {
        let mut d = Delayed::default();
        assert!(d.hold(1, waiting(), 1_000, 300));
        assert!(d.hold(2, waiting(), 1_000, 100));
        assert!(d.hold(3, waiting(), 1_050, 100));
        assert!(!d.hold(3, waiting(), 1_050, 100), "a stream is held once");
        d.forget(3);
        assert_eq!(ids(d.due(1_099)), Vec::<u32>::new());
        assert_eq!(ids(d.due(1_150)), [2]);
        assert_eq!(ids(d.due(1_300)), [1]);
        assert!(d.is_empty());
    }

    #[test]
    fn a_clock_stepping_back_counts_as_no_time_passing() {
        let mut d = Delayed::default();
        let t0 = 100_000_000;
        assert!(d.hold(1, waiting(), t0, 500));
        assert_eq!(ids(d.due(t0 + 100)), Vec::<u32>::new());
        // The next tick, 100 ms later, reads the clock an hour back: that tick's 100 ms are
        // lost, nothing more; the stream starts 500 ms of counted time after it was held.
        let back = t0 + 200 - 3_600_000;
        assert_eq!(ids(d.due(back)), Vec::<u32>::new());
        assert_eq!(ids(d.due(back + 399)), Vec::<u32>::new());
        assert_eq!(ids(d.due(back + 400)), [1]);
    }

    #[test]
    fn a_clock_stepping_forward_starts_what_it_passes() {
        let mut d = Delayed::default();
        assert!(d.hold(1, waiting(), 10_000, 500));
        assert!(d.hold(2, waiting(), 10_000, 5_000));
        assert_eq!(ids(d.due(10_000 + 3_600_000)), [1, 2]);
    }

    #[test]
    fn a_full_worker_holds_no_more() {
        let mut d = Delayed::default();
        for ctx in 0..MAX_DELAYED as u32 {
            assert!(d.hold(ctx, waiting(), 1_000, 100));
        }
        assert!(!d.has_room());
        assert!(!d.hold(u32::MAX, waiting(), 1_000, 100));
        // Ended streams still count until their start: the queue stays bounded.
        d.forget(0);
        assert!(!d.hold(u32::MAX, waiting(), 1_000, 100));
        assert_eq!(d.due(1_100).len(), MAX_DELAYED - 1);
        assert!(d.hold(u32::MAX, waiting(), 1_100, 100));
    }
}
