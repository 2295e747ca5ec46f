//! The `x-floodgate-breakers` fleet header as floodgate-control decodes it, and percent-decoding;
//! what decodes re-encodes to something that decodes the same.
#![no_main]
use floodgate_core::wire::{decode_fleet_header, encode_fleet_header, percent_decode, percent_encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = percent_decode(text);
    assert_eq!(percent_decode(&percent_encode(text)), text, "percent-encoding round-trips");
    let map = decode_fleet_header(text);
    let again = encode_fleet_header(map.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    // Entries past the header's size bound are dropped whole; the rest decode as they were.
    for (k, v) in decode_fleet_header(&again) {
        assert_eq!(map.get(&k), Some(&v), "the fleet header round-trips");
    }
});
