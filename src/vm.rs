//! What one VM (one Envoy worker) keeps between requests: cached metric ids, the tracked-key
//! registry, and a cheap random source for jitter.

use std::cell::RefCell;
use std::rc::Rc;

use crate::metrics::Metrics;
use crate::store::Registry;
use floodgate_core::remote::RemoteView;

#[derive(Default)]
pub struct Vm {
    pub metrics: Metrics,
    pub registry: Registry,
    /// This worker's copy of the control plane's view, refreshed on ticks.
    pub remote: RemoteCache,
    rng: u64,
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
            self.rng = now_ms ^ 0x9E37_79B9_7F4A_7C15;
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
    static VM: RefCell<Vm> = RefCell::new(Vm::default());
}

/// Runs `f` with this VM's state. Callbacks never nest, so the borrow cannot conflict.
pub fn with<T>(f: impl FnOnce(&mut Vm) -> T) -> T {
    VM.with(|vm| match vm.try_borrow_mut() {
        Ok(mut vm) => f(&mut vm),
        // Unreachable in practice; a fresh state only loses cached ids.
        Err(_) => f(&mut Vm::default()),
    })
}
