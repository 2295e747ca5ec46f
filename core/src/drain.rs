//! Drains (DESIGN, "draining"), the proxy's side as pure logic: the snapshot's drain entries,
//! the shared bucket that paces a drain across the workers of one proxy, and the live upgraded
//! streams a worker holds, which of them a drain closes next (its oldest, for the drained key
//! only), and how each ends, so a stream is closed at most once and counted in
//! `floodgate_drained_total` at most once.
//!
//! A drain closes in two steps, as checked in Envoy 1.36.4 and 1.40: on a tick the worker
//! [`LiveStreams::choose`]s streams (as many as the drain's shared bucket granted); a 1012 close
//! frame goes in at the first WebSocket frame boundary ([`FrameCursor`]) of the server data that
//! passes a chosen stream before the next tick ([`LiveStreams::on_server_data`]); at the next tick the worker closes the chosen streams
//! ([`LiveStreams::take_chosen`]).

use std::collections::BTreeMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::admission::{Bucket, Budget, MILLI};
use crate::time::parse_rfc3339_ms;
use crate::wire::{EntryState, SnapshotBody, WILDCARD};

/// The snapshot's state name for a drain.
pub const STATE: &str = "draining";
/// Close code 1012, Service Restart: what a client of a drained stream reads.
pub const SERVICE_RESTART: u16 = 1012;
/// The close frame's reason.
pub const CLOSE_REASON: &str = r#"{"reason":"draining"}"#;
/// A worker tracks at most this many live upgraded streams; later ones are not drained.
pub const MAX_STREAMS: usize = 65_536;
/// At most this many drains are acted on from one snapshot (the control plane keeps 100).
pub const MAX_DRAINS: usize = 128;
/// Event ids longer than this (in characters) are cut (they only tell one drain of a key from the next).
pub const MAX_EVENT_ID: usize = 128;

/// One drain as the proxy keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainEntry {
    pub key: String,
    pub event_id: String,
    pub per_second: u32,
    pub until_ms: u64,
}

impl DrainEntry {
    pub fn holds(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms
    }

    /// Whether a stream to `key` is this drain's to close.
    pub fn covers(&self, key: &str) -> bool {
        self.key == WILDCARD || self.key == key
    }
}

/// The well-formed drain entries of a snapshot (a key, `per_second` > 0 and an RFC 3339
/// `until`), at most [`MAX_DRAINS`]; the others are skipped, never refused.
pub fn parse_drains(body: &[u8]) -> Vec<DrainEntry> {
    let Ok(raw) = serde_json::from_slice::<SnapshotBody>(body) else { return vec![] };
    drains_of(raw.breakers)
}

/// [`parse_drains`] over parsed entries.
pub fn drains_of(entries: Vec<crate::wire::SnapshotEntry>) -> Vec<DrainEntry> {
    entries
        .into_iter()
        .filter(|e| matches!(&e.state, EntryState::Other(s) if s == STATE))
        .filter_map(|e| {
            let until_ms = parse_rfc3339_ms(e.until.as_deref()?)?;
            let per_second = e.per_second.filter(|&p| p > 0)?;
            let event_id: String = e.event_id.unwrap_or_default().chars().take(MAX_EVENT_ID).collect();
            (!e.key.is_empty()).then_some(DrainEntry { key: e.key, event_id, per_second, until_ms })
        })
        .take(MAX_DRAINS)
        .collect()
}

/// The budget that paces a drain: `per_second` tokens a second, holding at most what one tick of
/// `tick_ms` earns (at least one token), so no burst builds up while a worker waits: in any
/// second a drain takes at most `per_second` tokens, plus at most one tick's worth when its
/// ticks are late.
pub fn budget(per_second: u32, tick_ms: u32) -> Budget {
    let burst = (u64::from(per_second) * u64::from(tick_ms)).div_ceil(1000).max(1);
    Budget { per_second, burst: u32::try_from(burst).unwrap_or(u32::MAX), max_delay_ms: 0 }
}

/// The longest the record of a drain's recent grants gets (entries within the last second; each
/// grant of at least one stream adds one).
pub const MAX_RECENT: usize = 1024;

/// One drain's pacing state as shared data holds it: a token bucket that spreads the closes, the
/// grants of the last second (so no window of one second ever sees more than `per_second`, however
/// late the workers' ticks come), and the event id of the drain it paces (a new drain of the key
/// starts over, empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainBucket {
    pub bucket: Bucket,
    /// `(ms, streams granted)` of the grants of the last second, oldest first.
    pub recent: Vec<(u64, u32)>,
    pub event_id: String,
}

impl DrainBucket {
    /// Takes up to `want` tokens for drain `d` at `now_ms`: how many it got, and the state to
    /// write back. The state of another drain (or unreadable bytes) starts empty now: a drain
    /// never begins with a burst, however late its snapshot arrived.
    pub fn take(bytes: Option<&[u8]>, d: &DrainEntry, tick_ms: u32, now_ms: u64, want: u32) -> (u32, DrainBucket) {
        let mut b =
            bytes.and_then(DrainBucket::decode).filter(|b| b.event_id == d.event_id).unwrap_or_else(|| DrainBucket {
                bucket: Bucket { tokens: 0, last_ms: now_ms.max(1) },
                recent: vec![],
                event_id: d.event_id.clone(),
            });
        // Grants of the last second (and any "in the future": a clock that stepped back by less
        // than a second keeps them; more than that, they are forgotten).
        b.recent.retain(|&(t, _)| t + 1000 > now_ms && t <= now_ms + 1000);
        let used: u64 = b.recent.iter().map(|&(_, n)| u64::from(n)).sum();
        let room = u64::from(d.per_second).saturating_sub(used);
        let room = if b.recent.len() >= MAX_RECENT { 0 } else { u32::try_from(room).unwrap_or(u32::MAX) };
        let got = b.bucket.take_up_to(budget(d.per_second, tick_ms), now_ms, want.min(room));
        if got > 0 {
            b.recent.push((now_ms, got));
        }
        (got, b)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.bucket.encode();
        let n = u16::try_from(self.recent.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_le_bytes());
        for &(t, c) in self.recent.iter().take(usize::from(n)) {
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&c.to_le_bytes());
        }
        out.extend_from_slice(self.event_id.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<DrainBucket> {
        let bucket = Bucket::decode(bytes.get(..17)?)?;
        let n = usize::from(u16::from_le_bytes(bytes.get(17..19)?.try_into().ok()?));
        let mut recent = Vec::with_capacity(n.min(MAX_RECENT));
        let mut at = 19;
        for _ in 0..n {
            let t = u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?);
            let c = u32::from_le_bytes(bytes.get(at + 8..at + 12)?.try_into().ok()?);
            recent.push((t, c));
            at += 12;
        }
        let event_id = String::from_utf8(bytes.get(at..)?.to_vec()).ok()?;
        Some(DrainBucket { bucket, recent, event_id })
    }
}

impl Bucket {
    /// Takes up to `want` whole tokens at `now_ms` and re-anchors the bucket there; returns how
    /// many it took. Refills as [`Bucket::take`] does (a clock that went backwards refills
    /// nothing).
    pub fn take_up_to(&mut self, budget: Budget, now_ms: u64, want: u32) -> u32 {
        self.refill(budget, now_ms);
        // A drain's bucket is never in debt (refill cuts a foreign one to zero: no delays).
        let got = (self.tokens.max(0).unsigned_abs() / MILLI).min(u64::from(want));
        self.tokens -= (got * MILLI) as i64;
        self.last_ms = now_ms.max(1);
        u32::try_from(got).unwrap_or(0)
    }
}

/// Where a server's WebSocket byte stream is (RFC 6455, section 5.2), so a close frame goes in
/// between two frames, never into the middle of one: Envoy hands the filter the server's bytes in
/// chunks that need not start or end at a frame's edge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameCursor {
    /// The next frame's header bytes read so far (a header is 2 to 14 bytes).
    header: [u8; 14],
    have: u8,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
}

impl FrameCursor {
    /// The header's length as far as its first `have` bytes tell (2 until the second is known).
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let ext = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => self.header[2..10].iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)),
            n => u64::from(n),
        }
    }

    /// Whether the next `size` bytes all belong to the current frame's payload (then
    /// [`FrameCursor::skip`] is all there is to do, without reading them).
    pub fn inside(&self, size: usize) -> bool {
        self.remaining >= size as u64 && size > 0
    }

    /// Passes `size` bytes of payload (only when [`FrameCursor::inside`] said so).
    pub fn skip(&mut self, size: usize) {
        self.remaining = self.remaining.saturating_sub(size as u64);
    }

    /// Moves over `data`, the next bytes of the stream; returns the first offset in it (from 0
    /// to `data.len()`) where a frame starts, if any.
    pub fn advance(&mut self, data: &[u8]) -> Option<usize> {
        let mut first = None;
        let mut i = 0;
        loop {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(data.len() - i);
                self.remaining -= n as u64;
                i += n;
                if self.remaining > 0 {
                    return first;
                }
            }
            if self.have == 0 && first.is_none() {
                first = Some(i);
            }
            if i == data.len() {
                return first;
            }
            while usize::from(self.have) < self.header_len() && i < data.len() {
                self.header[usize::from(self.have)] = data[i];
                self.have += 1;
                i += 1;
            }
            if usize::from(self.have) < self.header_len() {
                return first;
            }
            self.remaining = self.payload_len();
            self.have = 0;
        }
    }
}

/// Where a live stream is in a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Live,
    /// To be closed at the next tick.
    Chosen,
    /// Chosen, and the client was sent the 1012 close frame.
    Framed,
}

#[derive(Clone, Debug)]
struct Live {
    key: Rc<str>,
    since_ms: u64,
    step: Step,
}

fn went_live(live: &mut BTreeMap<Rc<str>, usize>, total: &mut usize, key: &Rc<str>) {
    *live.entry(key.clone()).or_insert(0) += 1;
    *total += 1;
}

/// How a stream left [`LiveStreams`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It was not (or no longer) tracked: nothing to count.
    Unknown,
    /// It ended by itself (client, server, or a chosen stream that ended before its close).
    ByItself,
    /// It ended after the drain's 1012 close frame reached it: the drain's doing, counted once.
    Drained(Rc<str>),
}

/// What to do with server data passing a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data {
    Pass,
    /// Replace it by the 1012 close frame (the stream is chosen).
    Frame,
    /// Drop it: the close frame went out, nothing may follow it.
    Drop,
}

/// The live upgraded streams of one worker, bounded by [`MAX_STREAMS`]. One map by context id,
/// so registering a stream on its 101 costs one insert; only a drain's tick looks for the oldest.
#[derive(Clone, Debug, Default)]
pub struct LiveStreams {
    streams: BTreeMap<u32, Live>,
    /// How many live (not chosen) streams each key has, so a tick learns what a drain has to do
    /// without a pass over every stream (a drain of a key with no streams costs a lookup), and
    /// each key is kept once, shared by its streams.
    live: BTreeMap<Rc<str>, usize>,
    /// Live (not chosen) streams, all keys.
    live_total: usize,
    /// How many streams are chosen or framed (the tick skips closing, and server data skips the
    /// lookup, when 0).
    chosen: usize,
}

impl LiveStreams {
    /// A stream that just upgraded (101 from the backend); false when the worker tracks
    /// [`MAX_STREAMS`] already (that stream is not drained).
    pub fn insert(&mut self, ctx: u32, key: &str, since_ms: u64) -> bool {
        if self.streams.len() >= MAX_STREAMS && !self.streams.contains_key(&ctx) {
            return false;
        }
        let key = match self.live.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Rc::from(key),
        };
        self.went_live(&key);
        match self.streams.insert(ctx, Live { key, since_ms, step: Step::Live }) {
            Some(old) if old.step != Step::Live => self.chosen -= 1,
            Some(old) => self.left_live(&old.key),
            None => {}
        }
        true
    }

    fn went_live(&mut self, key: &Rc<str>) {
        went_live(&mut self.live, &mut self.live_total, key);
    }

    fn left_live(&mut self, key: &str) {
        if let Some(n) = self.live.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.live.remove(key);
            }
        }
        self.live_total = self.live_total.saturating_sub(1);
    }

    /// The stream ended (its log callback). A chosen stream that ends before the drain closed it
    /// is forgotten, not counted; one that got the 1012 close frame is the drain's.
    pub fn remove(&mut self, ctx: u32) -> Ended {
        let Some(s) = self.streams.remove(&ctx) else { return Ended::Unknown };
        if s.step != Step::Live {
            self.chosen -= 1;
        } else {
            self.left_live(&s.key);
        }
        match s.step {
            Step::Framed => Ended::Drained(s.key),
            _ => Ended::ByItself,
        }
    }

    /// Server data passes `ctx`: whether it goes through, becomes the close frame, or is dropped.
    /// `boundary`: whether a frame starts somewhere in it (the close frame goes in there; without
    /// one, a chosen stream's data passes and the close frame waits for the next chunk).
    pub fn on_server_data(&mut self, ctx: u32, boundary: bool) -> Data {
        if self.chosen == 0 {
            return Data::Pass; // no drain has chosen anything: the common case, no lookup
        }
        match self.streams.get_mut(&ctx) {
            Some(s) if s.step == Step::Chosen && boundary => {
                s.step = Step::Framed;
                Data::Frame
            }
            Some(s) if s.step == Step::Framed => Data::Drop,
            _ => Data::Pass,
        }
    }

    /// Live (not chosen) streams `drain` covers (no pass over the streams).
    pub fn pending(&self, drain: &DrainEntry) -> usize {
        if drain.key == WILDCARD {
            self.live_total
        } else {
            self.live.get(drain.key.as_str()).copied().unwrap_or(0)
        }
    }

    /// Chooses up to `n` of the oldest live streams `drain` covers (by admission time, then
    /// context id); returns how many it chose. Linear in the worker's streams.
    pub fn choose(&mut self, drain: &DrainEntry, n: usize) -> usize {
        let mut candidates: Vec<(u64, u32)> = self
            .streams
            .iter()
            .filter(|(_, s)| s.step == Step::Live && drain.covers(&s.key))
            .map(|(&ctx, s)| (s.since_ms, ctx))
            .collect();
        let n = n.min(candidates.len());
        if n == 0 {
            return 0;
        }
        if n < candidates.len() {
            candidates.select_nth_unstable(n - 1);
        }
        for (_, ctx) in &candidates[..n] {
            if let Some(s) = self.streams.get_mut(ctx) {
                s.step = Step::Chosen;
                let key = s.key.clone();
                self.left_live(&key);
            }
        }
        self.chosen += n;
        n
    }

    /// The chosen streams to close now, oldest first, with their keys; they leave the registry,
    /// so each is closed and counted once. `draining(key)` says whether a drain still covers
    /// `key`: a stream chosen by a drain that has ended since goes back to live, unless it was
    /// already sent the close frame (then it is closed: its client was told).
    pub fn take_chosen(&mut self, draining: impl Fn(&str) -> bool) -> Vec<(u32, Rc<str>)> {
        if self.chosen == 0 {
            return vec![];
        }
        let mut out = Vec::new();
        let (live, live_total) = (&mut self.live, &mut self.live_total);
        self.streams.retain(|&ctx, s| match s.step {
            Step::Live => true,
            Step::Chosen if !draining(&s.key) => {
                s.step = Step::Live;
                went_live(live, live_total, &s.key);
                true
            }
            _ => {
                out.push((s.since_ms, ctx, s.key.clone()));
                false
            }
        });
        self.chosen = 0;
        out.sort_unstable_by_key(|&(since, ctx, _)| (since, ctx));
        out.into_iter().map(|(_, ctx, key)| (ctx, key)).collect()
    }

    /// Live streams to `key`.
    pub fn count(&self, key: &str) -> usize {
        self.streams.values().filter(|s| &*s.key == key).count()
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn drain(key: &str) -> DrainEntry {
        DrainEntry { key: key.into(), event_id: "e1".into(), per_second: 20, until_ms: u64::MAX }
    }

    #[test]
    fn chooses_the_oldest_of_the_drained_key_only() {
        let mut l = LiveStreams::default();
        l.insert(1, "a", 30);
        l.insert(2, "b", 10);
        l.insert(3, "a", 20);
        l.insert(4, "a", 40);
        assert_eq!(l.pending(&drain("a")), 3);
        assert_eq!(l.choose(&drain("a"), 2), 2);
        assert_eq!(l.pending(&drain("a")), 1);
        let closed: Vec<(u32, String)> = l.take_chosen(|_| true).into_iter().map(|(c, k)| (c, k.to_string())).collect();
        assert_eq!(closed, vec![(3, "a".to_string()), (1, "a".to_string())], "oldest first");
        assert_eq!((l.count("a"), l.count("b")), (1, 1));
        assert_eq!(l.choose(&drain("a"), 5), 1, "only what is left");
        assert_eq!(l.choose(&drain("*"), 5), 1, "the wildcard reaches the other key");
    }

    #[test]
    fn a_chosen_stream_that_ends_by_itself_is_not_closed_or_counted() {
        let mut l = LiveStreams::default();
        l.insert(1, "a", 0);
        assert_eq!(l.choose(&drain("a"), 1), 1);
        assert_eq!(l.remove(1), Ended::ByItself);
        assert!(l.take_chosen(|_| true).is_empty());
        assert_eq!(l.remove(1), Ended::Unknown);
    }

    #[test]
    fn server_data_on_a_chosen_stream_becomes_one_close_frame_then_nothing() {
        let mut l = LiveStreams::default();
        l.insert(1, "a", 0);
        l.insert(2, "a", 1);
        assert_eq!(l.on_server_data(1, true), Data::Pass, "not chosen yet");
        l.choose(&drain("a"), 1);
        assert_eq!(l.on_server_data(1, true), Data::Frame);
        assert_eq!(l.on_server_data(1, true), Data::Drop);
        assert_eq!(l.on_server_data(2, true), Data::Pass);
        // A framed stream whose client closes before the tick is the drain's, counted once.
        assert_eq!(l.remove(1), Ended::Drained(Rc::from("a")));
        assert!(l.take_chosen(|_| true).is_empty());
    }

    #[test]
    fn a_drain_that_ended_stops_closing_but_a_framed_stream_is_still_closed() {
        let mut l = LiveStreams::default();
        l.insert(1, "a", 0);
        l.insert(2, "a", 1);
        l.choose(&drain("a"), 2);
        l.on_server_data(2, true);
        let closed: Vec<u32> = l.take_chosen(|_| false).into_iter().map(|(c, _)| c).collect();
        assert_eq!(closed, [2], "its client was sent the close frame");
        assert_eq!(l.pending(&drain("a")), 1, "the other is live again");
    }

    #[test]
    fn the_frame_cursor_finds_where_frames_start_across_chunks() {
        let mut c = FrameCursor::default();
        assert_eq!(c.advance(b""), Some(0));
        assert_eq!(c.advance(b"\x81\x0ahel"), Some(0), "a frame starts the stream");
        assert_eq!(c.advance(b"lo"), None);
        assert!(c.inside(5) && !c.inside(6));
        assert_eq!(c.advance(b"world\x81"), Some(5), "the next frame starts after the payload");
        assert_eq!(c.advance(b"\x7e\x01"), None, "a 16-bit length, read in two chunks");
        assert_eq!(c.advance(&[0; 1]), None);
        c.skip(256);
        assert_eq!(c.advance(b"\x88\x80\x01\x02\x03\x04\x89\x00"), Some(0), "masked, then empty");
        assert_eq!(c.advance(b""), Some(0), "at a frame's edge again");
        let mut c = FrameCursor::default();
        assert_eq!(c.advance(&[0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0]), Some(0));
        assert!(c.inside(1 << 32) && !c.inside((1 << 32) + 1), "a 64-bit length");
    }

    #[test]
    fn a_chosen_stream_waits_for_a_frame_boundary_before_its_close_frame() {
        let mut l = LiveStreams::default();
        l.insert(1, "a", 0);
        l.choose(&drain("a"), 1);
        assert_eq!(l.on_server_data(1, false), Data::Pass, "inside a frame: passes");
        assert_eq!(l.on_server_data(1, true), Data::Frame);
        assert_eq!(l.on_server_data(1, false), Data::Drop);
    }

    #[test]
    fn what_a_drain_has_to_do_is_known_without_a_pass_over_the_streams_and_follows_each_step() {
        let mut l = LiveStreams::default();
        l.insert(1, "a", 0);
        l.insert(1, "b", 0); // the same context again: it counts once, under its new key
        l.insert(2, "b", 1);
        assert_eq!((l.pending(&drain("a")), l.pending(&drain("b")), l.pending(&drain("*"))), (0, 2, 2));
        l.choose(&drain("b"), 1);
        assert_eq!((l.pending(&drain("b")), l.pending(&drain("*"))), (1, 1));
        l.take_chosen(|_| false); // the drain ended: live again
        assert_eq!(l.pending(&drain("b")), 2);
        l.choose(&drain("*"), 2);
        assert_eq!(l.pending(&drain("*")), 0);
        assert_eq!(l.take_chosen(|_| true).len(), 2);
        assert!(l.live.is_empty() && l.is_empty());
    }

    #[test]
    fn the_registry_is_bounded() {
        let mut l = LiveStreams::default();
        for ctx in 0..MAX_STREAMS as u32 {
            assert!(l.insert(ctx, "a", 0));
        }
        assert!(!l.insert(u32::MAX, "a", 0));
        assert_eq!(l.len(), MAX_STREAMS);
        assert_eq!(l.remove(0), Ended::ByItself);
        assert!(l.insert(u32::MAX, "a", 0));
    }

    #[test]
    fn drain_entries_are_picked_from_the_snapshot_and_malformed_ones_skipped() {
        let body = br#"{"version":3,"breakers":[
            {"key":"a","state":"forced_open"},
            {"key":"b","state":"draining","per_second":20,"until":"2026-11-22T10:00:00Z","event_id":"d1"},
            {"key":"c","state":"draining","until":"2026-11-22T10:00:00Z"},
            {"key":"d","state":"draining","per_second":0,"until":"2026-11-22T10:00:00Z"},
            {"key":"e","state":"draining","per_second":5,"until":"soon"},
            {"key":"","state":"draining","per_second":5,"until":"2026-11-22T10:00:00Z"}]}"#;
        let d = parse_drains(body);
        assert_eq!(
            d,
            [DrainEntry { key: "b".into(), event_id: "d1".into(), per_second: 20, until_ms: 1_795_341_600_000 }]
        );
        assert!(parse_drains(b"{nope").is_empty());
    }

    #[test]
    fn a_drain_bucket_starts_empty_and_never_gives_more_than_its_pace() {
        let d = DrainEntry { key: "a".into(), event_id: "e1".into(), per_second: 20, until_ms: u64::MAX };
        let (got, b) = DrainBucket::take(None, &d, 100, 1_000, 1_000);
        assert_eq!(got, 0, "no burst at the start");
        let mut bytes = b.encode();
        let mut total = 0;
        for t in 1..=100u64 {
            let (got, b) = DrainBucket::take(Some(&bytes), &d, 100, 1_000 + t * 100, 1_000);
            total += got;
            bytes = b.encode();
        }
        assert_eq!(total, 200, "20 a second for 10 s");
        // A late tick earns no more than one tick's worth.
        let (got, _) = DrainBucket::take(Some(&bytes), &d, 100, 1_000 + 100 * 100 + 5_000, 1_000);
        assert_eq!(got, 2);
        // However late and bunched the ticks, no window of one second gets more than 20.
        let mut grants = vec![];
        let mut t = 20_000;
        // A late tick finds a full bucket (two tokens), then ticks come every 50 ms: a bucket alone
        // would give 2 + 19 within 950 ms.
        for gap in [1_000u64].into_iter().chain([50; 19]).chain([10, 990, 5, 5, 700, 300, 1]) {
            t += gap;
            let (got, b) = DrainBucket::take(Some(&bytes), &d, 100, t, 1_000);
            grants.push((t, got));
            bytes = b.encode();
        }
        for &(a, _) in &grants {
            let in_window: u32 = grants.iter().filter(|(b, _)| *b >= a && *b < a + 1_000).map(|(_, n)| n).sum();
            assert!(in_window <= 20, "{in_window} in the second from {a}: {grants:?}");
        }
        assert_eq!(DrainBucket::decode(&bytes).map(|b| b.encode()), Some(bytes.clone()), "round trip");
        // Another drain of the key starts over, empty.
        let other = DrainEntry { event_id: "e2".into(), ..d };
        assert_eq!(DrainBucket::take(Some(&bytes), &other, 100, 20_000, 1_000).0, 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, bool),
        End(u8),
        Data(u8),
        Choose(bool, u8),
        Close(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<bool>()).prop_map(|(c, k)| Op::Insert(c, k)),
            any::<u8>().prop_map(Op::End),
            any::<u8>().prop_map(Op::Data),
            (any::<bool>(), 0u8..5).prop_map(|(k, n)| Op::Choose(k, n)),
            any::<bool>().prop_map(Op::Close),
        ]
    }

    proptest! {
        /// Whatever happens: a stream is closed at most once, counted as drained at most once, only
        /// streams of the drained key are closed, never more than chosen, and closed + ended +
        /// live = inserted.
        #[test]
        fn every_stream_is_closed_and_counted_at_most_once(ops in proptest::collection::vec(op(), 0..200)) {
            let mut l = LiveStreams::default();
            let mut inserted = BTreeSet::new();
            let (mut closed, mut ended, mut drained) = (BTreeSet::new(), 0usize, BTreeSet::new());
            let mut chosen_total = 0usize;
            let pick = |set: &BTreeSet<u32>, i: u8| set.iter().nth(usize::from(i) % set.len().max(1)).copied();
            for (t, o) in ops.into_iter().enumerate() {
                match o {
                    Op::Insert(c, k) => {
                        // Context ids are not reused by Envoy within a VM's life.
                        let ctx = u32::from(c) + 1000 * t as u32;
                        inserted.insert(ctx);
                        l.insert(ctx, if k { "a" } else { "b" }, t as u64);
                    }
                    Op::End(i) => match pick(&inserted, i).map(|ctx| (ctx, l.remove(ctx))) {
                        Some((ctx, Ended::Drained(_))) => prop_assert!(drained.insert(ctx), "counted twice: {ctx}"),
                        Some((_, Ended::ByItself)) => ended += 1,
                        _ => {}
                    },
                    Op::Data(i) => {
                        if let Some(ctx) = pick(&inserted, i) {
                            l.on_server_data(ctx, true);
                        }
                    }
                    Op::Choose(k, n) => chosen_total += l.choose(&drain(if k { "a" } else { "*" }), usize::from(n)),
                    Op::Close(holds) => {
                        for (ctx, key) in l.take_chosen(|_| holds) {
                            prop_assert!(closed.insert(ctx), "closed twice: {ctx}");
                            prop_assert!(!drained.contains(&ctx), "closed after it was counted: {ctx}");
                            prop_assert!(&*key == "a" || &*key == "b");
                        }
                    }
                }
                for d in [drain("a"), drain("b"), drain("*"), drain("c")] {
                    let brute = l.streams.values().filter(|s| s.step == Step::Live && d.covers(&s.key)).count();
                    prop_assert_eq!(l.pending(&d), brute, "pending({})", d.key);
                }
                prop_assert!(l.live.values().all(|&n| n > 0), "no key kept without live streams");
                prop_assert!(closed.len() + drained.len() <= chosen_total);
                prop_assert_eq!(closed.len() + drained.len() + ended + l.len(), inserted.len());
            }
        }
    }
}
