//! What the harness test binaries share: the module under test, a configured worker, metrics by
//! their Envoy name, and a small seeded random source for model-based tests.
// Each test binary uses some of these.
#![allow(dead_code)]

use floodgate_harness::{built_module, Host, Worker};

/// A host running the built module.
pub fn host() -> Host {
    Host::new(&built_module()).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A worker of `host` whose HTTP root (`floodgate`) accepted `config`.
pub fn worker(host: &mut Host, config: &str) -> Worker {
    let mut w = host.worker().unwrap();
    assert!(w.configure("floodgate", config).unwrap(), "configuration refused: {:?}", host.logs());
    w
}

/// A metric by the name Envoy sees (labels in Istio's tag form); 0 when never defined.
pub fn metric(host: &Host, name: &str) -> i64 {
    host.metric(name).unwrap_or(0)
}

/// xorshift64: sequences that a seed reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
