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

/// The cached keys of one configuration, by the bytes the host gives for them.
#[derive(Default)]
pub struct Keys(RefCell<HashMap<Box<[u8]>, Rc<Key>>>);

impl Keys {
    pub fn get(&self, name: &[u8]) -> Option<Rc<Key>> {
        self.0.borrow().get(name).cloned()
    }

    /// Caches a tracked key (the registry bounds how many there are).
    pub fn insert(&self, name: &str, policy: Rc<BreakerPolicy>) -> Rc<Key> {
        let key = Rc::new(Key::new(name, policy));
        self.0.borrow_mut().insert(name.as_bytes().into(), key.clone());
        key
    }

    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
