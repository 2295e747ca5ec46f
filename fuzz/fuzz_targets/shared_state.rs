//! What workers read from shared data, whoever wrote it: the breaker state encoding, the shared
//! control view (JSON), the poller lease; a decoded breaker state runs through the state machine,
//! and the lean shortcuts step the bytes in place (the empty value of a quiet state among them)
//! without ever indexing past them.
#![no_main]
use floodgate_core::poll::Lease;
use floodgate_core::remote::RemoteView;
use floodgate_core::breaker::{admit_probe_in_place, record_probe_success_in_place};
use floodgate_core::state::{self, Head};
use floodgate_core::{admit, record, timeout, BreakerState, Call, Policy, ProbeTicket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Lease::parse(data);
    let _ = serde_json::from_slice::<RemoteView>(data);
    let p = Policy::default();
    let _ = Head::peek(data);
    let _ = (state::success_is_noop(data, 3, 100), state::noop_is_quiet(data, 1_000), state::fits(data, &p));
    let mut bytes = data.to_vec();
    let _ = admit_probe_in_place(&mut bytes, &p, 1_000, || 0.5);
    let ticket = ProbeTicket { slot: data.first().copied().unwrap_or(0) % 4, deadline_ms: 5_000 };
    let _ = record_probe_success_in_place(&mut bytes, &p, 1_000, ticket);
    if let Some(s) = BreakerState::decode_for(data, &p) {
        let again = BreakerState::decode_for(&s.encode_for(1_000), &p);
        assert!(again.is_some(), "the encoding written for a state reads back");
    }
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
