//! Drains in this proxy (DESIGN, "draining"): each worker knows its live upgraded streams per
//! key (registered in memory on the backend's 101, no host call), and on its tick, for each
//! drain the control plane's view holds, takes tokens from the drain's bucket in shared data
//! (`floodgate/d/<key>`, shared by every worker, so the proxy closes at most `per_second` a
//! second) and chooses that many of its oldest streams to the key. Server data that passes a
//! chosen stream is replaced by a close frame with code 1012 (Service Restart); at the next tick
//! the worker closes its chosen streams, acting as each stream's context
//! (`proxy_set_effective_context`, then `proxy_close_stream`). `floodgate_drained_total` counts
//! each closed stream once. Every failure closes nothing (fail open). The logic is pure, in
//! `floodgate_core::drain`.

use std::rc::Rc;

use proxy_wasm::types::Action;

use crate::host;
use crate::poller::TICK_MS;
use crate::store::{self, Step, StoreError};
use crate::vm;
use floodgate_core::drain::{self, Data, DrainBucket, DrainEntry, Ended};
use floodgate_core::handshake;

/// The prefix of each drained key's bucket in shared data.
pub const BUCKET_PREFIX: &str = "floodgate/d/";

/// The drain's side of one HTTP stream, held by the HTTP filter.
pub struct Stream {
    ctx: u32,
    /// Registered as a live upgraded stream of this worker.
    tracked: bool,
}

impl Stream {
    pub fn new(ctx: u32) -> Stream {
        Stream { ctx, tracked: false }
    }

    /// The backend answered the upgrade of a call to `key` admitted at `since_ms`: in memory only.
    pub fn upgraded(&mut self, key: &str, since_ms: u64) {
        self.tracked = vm::with(|vm| vm.live.insert(self.ctx, key, since_ms));
    }

    /// Server data of `size` bytes passes: a chosen stream's first chunk becomes the 1012 close
    /// frame, later ones are dropped (nothing may follow a close frame).
    pub fn on_server_data(&mut self, size: usize) -> Action {
        if !self.tracked {
            return Action::Continue;
        }
        let replacement = match vm::with(|vm| vm.live.on_server_data(self.ctx)) {
            Data::Pass => return Action::Continue,
            Data::Frame => handshake::close_frame(drain::SERVICE_RESTART, drain::CLOSE_REASON),
            Data::Drop => vec![],
        };
        if let Err(e) = host::replace_response_body(size, &replacement) {
            log::debug!("drain: server data not replaced on stream {}: {e:?}", self.ctx);
        }
        Action::Continue
    }

    /// The stream ended (its log callback): forgotten, and counted when the drain's close frame
    /// had reached it.
    pub fn ended(&mut self) {
        if !std::mem::take(&mut self.tracked) {
            return;
        }
        vm::with(|vm| {
            if let Ended::Drained(key) = vm.live.remove(self.ctx) {
                vm.metrics.drained(&key);
            }
        });
    }
}

/// The worker's tick (root context `root`): closes the streams chosen at the last tick, then
/// chooses the next ones for every drain that holds.
pub fn on_tick(root: u32, stale_after_ms: u64) {
    let Ok(now) = host::now_ms() else { return };
    let (due, drains) = vm::with(|vm| {
        let view = vm.remote.view.clone();
        let drains: Vec<DrainEntry> = view.draining(now, stale_after_ms).cloned().collect();
        let due = vm.live.take_chosen(|key| drains.iter().any(|d| d.covers(key)));
        (due, drains)
    });
    close(root, due);
    for d in &drains {
        choose(d, now);
    }
}

/// Closes each stream as its own context, then acts as the root context again.
fn close(root: u32, due: Vec<(u32, Rc<str>)>) {
    if due.is_empty() {
        return;
    }
    for (ctx, key) in due {
        // Outside any borrow of the VM's state: Envoy may run the stream's end callbacks inside
        // the close.
        match host::set_effective_context(ctx).and_then(|()| host::close_http_stream()) {
            Ok(()) => vm::with(|vm| vm.metrics.drained(&key)),
            Err(e) => log::debug!("drain: stream {ctx} to {key} not closed (gone?): {e:?}"),
        }
    }
    if let Err(e) = host::set_effective_context(root) {
        log::warn!("drain: cannot act as the root context again: {e:?}");
    }
}

/// Takes tokens from `d`'s shared bucket for this worker's live streams it covers, and chooses
/// that many of them (oldest first) to close at the next tick.
fn choose(d: &DrainEntry, now: u64) {
    let pending = vm::with(|vm| vm.live.pending(d));
    if pending == 0 {
        return;
    }
    let want = u32::try_from(pending).unwrap_or(u32::MAX);
    match take(d, now, want) {
        Ok(0) => {}
        Ok(got) => {
            let chosen = vm::with(|vm| vm.live.choose(d, got as usize));
            // One line per tick that chose (tests read the pace from it).
            log::debug!("drain of {}: chose {chosen} stream(s) at {now}", d.key);
        }
        Err(e) => log::debug!("drain of {}: bucket not updated, nothing closed: {e:?}", d.key),
    }
}

/// Up to `want` tokens of `d`'s bucket at `now`, exact across workers (compare-and-swap).
pub fn take(d: &DrainEntry, now: u64, want: u32) -> Result<u32, StoreError> {
    store::cas_update(&store::prefixed(BUCKET_PREFIX, &d.key), None, |bytes| {
        let (got, bucket) = DrainBucket::take(bytes, d, TICK_MS, now, want);
        Ok::<_, StoreError>(Step::Write(bucket.encode(), got))
    })
}
