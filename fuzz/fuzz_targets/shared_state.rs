//! What workers read from shared data, whoever wrote it: the breaker state encoding, the shared
//! control view (JSON), the poller lease; a decoded breaker state runs through the state machine.
#![no_main]
use floodgate_core::poll::Lease;
use floodgate_core::remote::RemoteView;
use floodgate_core::{admit, record, timeout, BreakerState, Call, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Lease::parse(data);
    let _ = serde_json::from_slice::<RemoteView>(data);
    if let Some(mut s) = BreakerState::decode(data) {
        assert_eq!(BreakerState::decode(&s.encode()).as_ref(), Some(&s), "decode/encode round-trips");
        let p = Policy::default();
        s.conform(&p);
        for now in [0, 1, s.open_until_ms, s.since_ms, u64::MAX / 2, u64::MAX] {
            let (d, _) = admit(&mut s, &p, now, 0.5);
            if let floodgate_core::Decision::Admit { probe } = d {
                record(&mut s, &p, now, Call { failure: true, slow: false }, probe, 0.5);
                timeout(&mut s, &p, now, probe, 0.5);
            }
        }
    }
});
