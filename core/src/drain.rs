//! Drains (DESIGN, "draining"), the per-worker part as pure logic: the live upgraded streams a
//! worker holds, which of them a drain closes next (its oldest, for the drained key only), and
//! how each ends, so a stream is closed at most once and counted in `floodgate_drained_total`
//! only when the drain closed it.
//!
//! A drain closes in two steps, as checked in Envoy 1.36.4 and 1.40: on a tick the worker
//! [`LiveStreams::choose`]s streams (as many as the drain's shared bucket granted); server data
//! that passes a chosen stream before the next tick carries a 1012 close frame instead; at the
//! next tick the worker closes the chosen streams ([`LiveStreams::take_chosen`]).
//! The shared bucket that paces drains across workers is the admission budget's, not this file's.

use std::collections::BTreeMap;

/// One live upgraded stream.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Live {
    key: String,
    since_ms: u64,
    chosen: bool,
}

/// How a stream left [`LiveStreams`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It was not (or no longer) tracked: nothing to count.
    Unknown,
    /// It ended by itself (client, server, or a chosen stream that ended before its close).
    ByItself,
}

/// The live upgraded streams of one worker, by context id.
#[derive(Clone, Debug, Default)]
pub struct LiveStreams {
    streams: BTreeMap<u32, Live>,
}

impl LiveStreams {
    /// A stream that just upgraded (101 from the backend).
    pub fn insert(&mut self, ctx: u32, key: &str, now_ms: u64) {
        self.streams.insert(ctx, Live { key: key.to_string(), since_ms: now_ms, chosen: false });
    }

    /// The stream ended by itself (its log callback). A chosen stream that ends before the drain
    /// closed it is not the drain's doing: it is forgotten, not counted.
    pub fn remove(&mut self, ctx: u32) -> Ended {
        match self.streams.remove(&ctx) {
            Some(_) => Ended::ByItself,
            None => Ended::Unknown,
        }
    }

    /// Whether server data on `ctx` should carry a 1012 close frame (the stream is to be closed).
    pub fn is_chosen(&self, ctx: u32) -> bool {
        self.streams.get(&ctx).is_some_and(|s| s.chosen)
    }

    /// Chooses up to `n` of the oldest not yet chosen streams to `key` (`*`: every key); returns
    /// how many it chose (the caller gives unused tokens back to the shared bucket).
    pub fn choose(&mut self, key: &str, n: usize) -> usize {
        let mut candidates: Vec<(u64, u32)> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.chosen && (key == "*" || s.key == key))
            .map(|(&ctx, s)| (s.since_ms, ctx))
            .collect();
        candidates.sort_unstable();
        let mut chosen = 0;
        for (_, ctx) in candidates.into_iter().take(n) {
            if let Some(s) = self.streams.get_mut(&ctx) {
                s.chosen = true;
                chosen += 1;
            }
        }
        chosen
    }

    /// The chosen streams to close now, with their keys; they leave the registry, so each is
    /// closed and counted once. `draining(key)` says whether the drain for `key` still holds: a
    /// stream chosen by a drain that has ended since is not closed, it goes back to live.
    pub fn take_chosen(&mut self, draining: impl Fn(&str) -> bool) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        self.streams.retain(|&ctx, s| {
            if !s.chosen {
                return true;
            }
            if draining(&s.key) {
                out.push((ctx, std::mem::take(&mut s.key)));
                false
            } else {
                s.chosen = false;
                true
            }
        });
        out
    }

    /// Live streams to `key`.
    pub fn count(&self, key: &str) -> usize {
        self.streams.values().filter(|s| s.key == key).count()
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

    #[test]
    fn chooses_the_oldest_of_the_drained_key_only() {
        let mut l = LiveStreams::default();
        l.insert(1, "a", 30);
        l.insert(2, "b", 10);
        l.insert(3, "a", 20);
        l.insert(4, "a", 40);
        assert_eq!(l.choose("a", 2), 2);
        assert!(l.is_chosen(3) && l.is_chosen(1) && !l.is_chosen(4) && !l.is_chosen(2));
        assert_eq!(l.take_chosen(|_| true), vec![(1, "a".to_string()), (3, "a".to_string())]);
        assert_eq!((l.count("a"), l.count("b")), (1, 1));
        assert_eq!(l.choose("a", 5), 1, "only what is left");
        assert_eq!(l.choose("*", 5), 1, "the wildcard reaches the other key");
    }

    #[test]
    fn a_chosen_stream_that_ends_by_itself_is_not_closed_or_counted() {
        let mut l = LiveStreams::default();
        l.insert(1, "a", 0);
        assert_eq!(l.choose("a", 1), 1);
        assert_eq!(l.remove(1), Ended::ByItself);
        assert!(l.take_chosen(|_| true).is_empty());
        assert_eq!(l.remove(1), Ended::Unknown);
    }

    #[test]
    fn a_drain_that_ended_stops_closing() {
        let mut l = LiveStreams::default();
        l.insert(1, "a", 0);
        l.choose("a", 1);
        assert!(l.take_chosen(|_| false).is_empty());
        assert!(!l.is_chosen(1), "back to live");
        assert_eq!(l.count("a"), 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, bool),
        End(u8),
        Choose(bool, u8),
        Close(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<bool>()).prop_map(|(c, k)| Op::Insert(c, k)),
            any::<u8>().prop_map(Op::End),
            (any::<bool>(), 0u8..5).prop_map(|(k, n)| Op::Choose(k, n)),
            any::<bool>().prop_map(Op::Close),
        ]
    }

    proptest! {
        /// Whatever happens: a stream is closed at most once, only streams of the drained key are
        /// closed, never more than chosen, and closed + ended by itself + live = inserted.
        #[test]
        fn every_stream_is_closed_at_most_once_and_only_for_its_key(ops in proptest::collection::vec(op(), 0..200)) {
            let mut l = LiveStreams::default();
            let mut inserted = BTreeSet::new();
            let (mut closed, mut ended) = (BTreeSet::new(), 0usize);
            let mut chosen_total = 0usize;
            for (t, o) in ops.into_iter().enumerate() {
                match o {
                    Op::Insert(c, k) => {
                        // Context ids are not reused by Envoy within a VM's life.
                        let ctx = u32::from(c) + 1000 * t as u32;
                        inserted.insert(ctx);
                        l.insert(ctx, if k { "a" } else { "b" }, t as u64);
                    }
                    Op::End(i) => {
                        if let Some(&ctx) = inserted.iter().nth(usize::from(i) % inserted.len().max(1)) {
                            if l.remove(ctx) == Ended::ByItself {
                                ended += 1;
                            }
                        }
                    }
                    Op::Choose(k, n) => chosen_total += l.choose(if k { "a" } else { "*" }, usize::from(n)),
                    Op::Close(holds) => {
                        for (ctx, key) in l.take_chosen(|_| holds) {
                            prop_assert!(closed.insert(ctx), "closed twice: {ctx}");
                            prop_assert!(key == "a" || key == "b");
                        }
                    }
                }
                prop_assert!(closed.len() <= chosen_total);
                prop_assert_eq!(closed.len() + ended + l.len(), inserted.len());
            }
        }
    }
}
