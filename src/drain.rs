//! Drains in this proxy (DESIGN, "draining"): each worker knows its live upgraded streams per
//! key (registered in memory on the backend's 101, no host call), and on its tick, for each
//! drain the control plane's view holds, takes tokens from the drain's bucket in shared data
//! (`floodgate/d/<key>`, shared by every worker, so the proxy closes at most `per_second` a
//! second) and chooses that many of its oldest streams to the key. In server data that passes a
//! chosen stream, a close frame with code 1012 (Service Restart) goes in at the first WebSocket
//! frame boundary and the rest is dropped; at the next tick
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
use floodgate_core::drain::{self, Data, DrainBucket, DrainEntry, Ended, FrameCursor};
use floodgate_core::handshake;

/// The prefix of each drained key's bucket in shared data.
pub const BUCKET_PREFIX: &str = "floodgate/d/";

/// The drain's side of one HTTP stream, held by the HTTP filter.
pub struct Stream {
    ctx: u32,
    /// Registered as a live upgraded stream of this worker.
    tracked: bool,
    /// Where the server's bytes are in their WebSocket frames (the close frame goes in between
    /// two); `None` once a chunk could not be read (then no close frame: the close alone).
    frames: Option<FrameCursor>,
}

impl Stream {
    pub fn new(ctx: u32) -> Stream {
        Stream { ctx, tracked: false, frames: Some(FrameCursor::default()) }
    }

    /// The backend answered the WebSocket upgrade of a call to `key` made at `since_ms` (admitted
    /// or let through unguarded): in memory only.
    pub fn upgraded(&mut self, key: &str, since_ms: u64) {
        self.tracked = vm::with(|vm| vm.live.insert(self.ctx, key, since_ms));
    }

    /// Server data of `size` bytes passes: on a chosen stream, the close frame goes in at the
    /// first frame boundary (what came before it in the chunk passes, the rest is dropped), and
    /// later chunks are dropped (nothing may follow a close frame). The chunk is read only when a
    /// frame may start in it.
    pub fn on_server_data(&mut self, size: usize) -> Action {
        if !self.tracked {
            return Action::Continue;
        }
        let (boundary, chunk) = match self.frames.as_mut() {
            Some(f) if f.inside(size) => {
                f.skip(size);
                (None, vec![])
            }
            Some(f) => match host::buffer(host::Buffer::HttpResponseBody, size) {
                Ok(b) => {
                    let b = b.unwrap_or_default();
                    (f.advance(&b), b)
                }
                Err(e) => {
                    log::debug!("drain: server data not read on stream {}: {e:?}", self.ctx);
                    self.frames = None;
                    (None, vec![])
                }
            },
            None => (None, vec![]),
        };
        let replacement = match (vm::with(|vm| vm.live.on_server_data(self.ctx, boundary.is_some())), boundary) {
            (Data::Pass, _) => return Action::Continue,
            (Data::Frame, Some(at)) => {
                let mut out = chunk.get(..at).unwrap_or_default().to_vec();
                out.extend(handshake::close_frame(drain::SERVICE_RESTART, drain::CLOSE_REASON));
                out
            }
            (Data::Frame, None) | (Data::Drop, _) => vec![],
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
                let label = label(vm, &key);
                vm.metrics.drained(&label);
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

/// The `breaker` label a drained stream to `key` is counted under: its key when this worker
/// tracks it or a drain names it (keys an operator chose), otherwise `*` (a key a client may have
/// chosen, past `max_breakers` or not guarded, reached by a wildcard drain: no series of its own).
fn label(vm: &vm::Vm, key: &str) -> String {
    if vm.registry.knows(key) || vm.remote.view.drains.iter().any(|d| d.key == key) {
        key.to_string()
    } else {
        floodgate_core::wire::WILDCARD.to_string()
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
            Ok(()) => vm::with(|vm| {
                let label = label(vm, &key);
                vm.metrics.drained(&label);
            }),
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
