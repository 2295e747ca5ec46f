//! A control-plane snapshot body as the poller receives it, folded into a view, the view
//! written to and read back from shared data, and every decision taken from it.
#![no_main]
use floodgate_core::remote::{decide, parse_snapshot, DecideParams, RemoteView};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(snap) = parse_snapshot(data) else { return };
    let now = 1_795_341_600_000;
    let Ok(view) = RemoteView::default().apply(snap, now, 120_000) else { return };
    let bytes = serde_json::to_vec(&view).unwrap_or_default();
    let back: RemoteView = serde_json::from_slice(&bytes).unwrap_or_default();
    assert_eq!(back, view, "the shared view round-trips");
    let p = DecideParams {
        stale_after_ms: 120_000,
        ramp_ms: 10_000,
        open_retry_ms: 30_000,
        jitter: 0.1,
        short_retry_ms: 1_000,
    };
    for o in &view.overrides {
        for t in [0, now, o.until_ms, o.until_ms.saturating_sub(1), u64::MAX] {
            let _ = decide(&view, &o.key, t, &p, 0.5);
        }
    }
});
