//! The plugin configuration as Envoy hands it to `on_configure`, for each filter kind: an error
//! or a config, never a panic; a config that parses re-validates the same.
#![no_main]
use floodgate::config::{parse, FilterKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in [FilterKind::Http, FilterKind::Tcp, FilterKind::Poller] {
        if let Ok(c) = parse(data, kind) {
            let _ = c.forced_keys();
            let _ = c.answer_timeouts();
        }
    }
});
