//! What the request path needs per breaker key, built at the key's first use under a
//! configuration and reused by every later request: its shared-data keys, its policy, whether a
//! success can be judged without the clock. Only tracked keys are cached (at most `max_breakers`
//! plus the keys named in `breakers`), so the cache is bounded whatever keys clients send.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

use hashbrown::HashMap;

use crate::config::BreakerPolicy;
use crate::store;
use floodgate_core::{Mode, WindowSpec};

pub struct Key {
    pub name: String,
    pub state_key: String,
    pub bucket_key: String,
    pub policy: Rc<BreakerPolicy>,
    /// `Some(size)` when a success needs neither the clock nor, on a full clean window, a write:
    /// an enforcing or dry-run breaker with a count window of `size` calls and no slow calls.
    pub lean: Option<u16>,
    /// Successes counted on this worker since its last tick, for `floodgate_calls_total`.
    pub successes: Cell<u32>,
    /// The breaker's state gauge was set on this worker.
    pub touched: Cell<bool>,
}

impl Key {
    pub fn new(name: &str, policy: Rc<BreakerPolicy>) -> Key {
        let p = &policy.policy;
        let lean = match p.window {
            WindowSpec::Count { size } if p.slow_call_ms == 0 && matches!(p.mode, Mode::Enforce | Mode::DryRun) => {
                Some(size)
            }
            _ => None,
        };
        Key {
            name: name.to_string(),
            state_key: store::state_key(name),
            bucket_key: crate::admission::bucket_key(name),
            policy,
            lean,
            successes: Cell::new(0),
            touched: Cell::new(false),
        }
    }
}

/// The cached keys of one configuration, by the bytes the host gives for them, and the last
/// one used (most requests on a worker go to the key the previous one went to: a comparison
/// instead of a hash).
#[derive(Default)]
pub struct Keys {
    /// Tracked keys only (bounded by the registry).
    map: RefCell<HashMap<Box<[u8]>, Rc<Key>>>,
    last: RefCell<Option<Rc<Key>>>,
}

impl Keys {
    pub fn get(&self, name: &[u8]) -> Option<Rc<Key>> {
        if let Some(last) = self.last.borrow().as_ref().filter(|k| same(k.name.as_bytes(), name)) {
            return Some(last.clone());
        }
        let key = self.map.borrow().get(name).cloned()?;
        *self.last.borrow_mut() = Some(key.clone());
        Some(key)
    }

    /// Caches a tracked key (the registry bounds how many there are).
    pub fn insert(&self, name: &str, policy: Rc<BreakerPolicy>) -> Rc<Key> {
        let key = Rc::new(Key::new(name, policy));
        self.map.borrow_mut().insert(name.as_bytes().into(), key.clone());
        key
    }

    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Byte equality eight bytes at a time (the request path compares every request's key); from 8
/// bytes on, the last word overlaps the one before it instead of a byte-by-byte tail.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |s: &[u8], i: usize| s.get(i..).and_then(|s| s.first_chunk::<8>()).map(|w| u64::from_le_bytes(*w));
    let Some(last) = a.len().checked_sub(8) else { return a == b };
    let mut i = 0;
    while i < last {
        if word(a, i) != word(b, i) {
            return false;
        }
        i += 8;
    }
    word(a, last) == word(b, last)
}

/// A copy of a configuration starts with an empty cache: it is only a cache.
impl Clone for Keys {
    fn clone(&self) -> Self {
        Keys::default()
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys({} cached)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_equal_only_when_every_byte_is() {
        let long = "outbound|8080||collab.default.svc.cluster.local";
        assert!(same(long.as_bytes(), long.as_bytes()));
        assert!(same(b"", b""));
        for (i, _) in long.char_indices() {
            let mut other = long.as_bytes().to_vec();
            other[i] ^= 1;
            assert!(!same(long.as_bytes(), &other), "byte {i}");
        }
        assert!(!same(b"collab_ws", b"collab_w"));
    }
}
