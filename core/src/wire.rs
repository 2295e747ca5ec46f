//! The control contract on the wire, written once for both sides: the snapshot floodgate-control
//! serves and every proxy parses (DESIGN, "Snapshot body"), and the `x-floodgate-breakers` header
//! every proxy sends and floodgate-control reads for `GET /api/v1/fleet`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A snapshot larger than this is refused unread by proxies; the control plane never builds one.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024;
/// The header naming the polling proxy (Envoy's `node.id`).
pub const PROXY_HEADER: &str = "x-floodgate-proxy";
/// The header carrying the polling proxy's local breaker states.
pub const FLEET_HEADER: &str = "x-floodgate-breakers";
/// The fleet header is cut at this size (whole entries only).
pub const MAX_FLEET_HEADER_BYTES: usize = 8 * 1024;
/// The key of an override that applies to every breaker.
pub const WILDCARD: &str = "*";

/// What an activation forces on the proxies (open, unless it says otherwise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forced {
    #[default]
    ForcedOpen,
    ForcedClosed,
}

impl Forced {
    pub fn name(self) -> &'static str {
        match self {
            Forced::ForcedOpen => "forced_open",
            Forced::ForcedClosed => "forced_closed",
        }
    }
}

/// The state of one snapshot entry. States a proxy does not know (added by a newer control
/// plane) are kept as text so the proxy can skip that entry instead of refusing the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EntryState {
    Forced(Forced),
    Other(String),
}

/// One entry of the snapshot. Times are RFC 3339 (see [`crate::time`]); `until: null` means until
/// the control plane ends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    pub key: String,
    pub state: EntryState,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
    /// A drain's pace (`"state": "draining"`): upgraded streams closed per second per proxy.
    /// Anything but a whole number that fits is read as absent (that drain entry is skipped), so
    /// an odd value never costs the proxy the rest of the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_u32")]
    pub per_second: Option<u32>,
}

fn lenient_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_u64().and_then(|n| u32::try_from(n).ok()))
}

/// `GET /v1/snapshot`'s body. Unknown fields are ignored, so either side may add some.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBody {
    pub version: u64,
    #[serde(default)]
    pub generated_at: Option<String>,
    pub breakers: Vec<SnapshotEntry>,
}

/// `key=state,key=state` with keys percent-encoded, cut at [`MAX_FLEET_HEADER_BYTES`] between
/// entries. States are breaker phase names (`closed`, `half_open`, `open`).
pub fn encode_fleet_header<'a>(states: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (key, state) in states {
        let entry_len = percent_encoded_len(key) + 1 + state.len();
        let sep = usize::from(!out.is_empty());
        if out.len() + sep + entry_len > MAX_FLEET_HEADER_BYTES {
            break;
        }
        if sep == 1 {
            out.push(',');
        }
        percent_encode_into(key, &mut out);
        out.push('=');
        out.push_str(state);
    }
    out
}

/// The fleet header back into `key -> state`; malformed entries are skipped.
pub fn decode_fleet_header(header: &str) -> BTreeMap<String, String> {
    header
        .split(',')
        .filter_map(|kv| kv.trim().split_once('='))
        .map(|(k, v)| (percent_decode(k), v.to_string()))
        .collect()
}

fn keeps(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

fn percent_encoded_len(s: &str) -> usize {
    s.bytes().map(|b| if keeps(b) { 1 } else { 3 }).sum()
}

fn percent_encode_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if keeps(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

/// Every byte but RFC 3986's unreserved characters as `%XX`: safe in a header list and in a URL
/// path segment (breaker keys such as `outbound|80||collab.default.svc` or `*`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(percent_encoded_len(s));
    percent_encode_into(s, &mut out);
    out
}

/// `%XX` back into bytes; anything else, and a `%` not followed by two hex digits, as it is.
/// Bytes that are not UTF-8 become U+FFFD.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(hex_byte) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_byte(h: &str) -> Option<u8> {
    if h.bytes().all(|c| c.is_ascii_hexdigit()) {
        u8::from_str_radix(h, 16).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn percent_encoding_keeps_the_header_and_the_path_parseable() {
        assert_eq!(percent_encode("outbound|80||collab.default.svc"), "outbound%7C80%7C%7Ccollab.default.svc");
        assert_eq!(percent_encode("a=b,c"), "a%3Db%2Cc");
        assert_eq!(percent_encode("*"), "%2A");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%+1"), "%+1");
    }

    #[test]
    fn the_fleet_header_is_cut_between_entries() {
        let key = "k".repeat(1000);
        let states: Vec<(String, &str)> = (0..20).map(|i| (format!("{key}{i}"), "closed")).collect();
        let header = encode_fleet_header(states.iter().map(|(k, s)| (k.as_str(), *s)));
        assert!(header.len() <= MAX_FLEET_HEADER_BYTES);
        let decoded = decode_fleet_header(&header);
        assert_eq!(decoded.len(), 8, "eight entries of 1,008 bytes fit in 8 KiB, a ninth does not");
        assert!(decoded.values().all(|s| s == "closed"));
    }

    #[test]
    fn a_snapshot_entry_with_an_unknown_state_is_kept_as_text() {
        let body: SnapshotBody =
            serde_json::from_str(r#"{"version":1,"breakers":[{"key":"a","state":"reset","event_id":"e"}]}"#).unwrap();
        assert_eq!(body.breakers[0].state, EntryState::Other("reset".into()));
    }

    proptest! {
        #[test]
        fn every_fleet_header_a_proxy_sends_decodes_to_its_states(
            states in proptest::collection::btree_map(".{1,120}", prop_oneof!["closed", "open", "half_open"], 0..60)
        ) {
            let header = encode_fleet_header(states.iter().map(|(k, s)| (k.as_str(), s.as_str())));
            prop_assert!(header.len() <= MAX_FLEET_HEADER_BYTES);
            prop_assert!(header.bytes().all(|b| b.is_ascii_graphic()), "not a valid header value: {header:?}");
            // What fits is sent whole, in order; the cut drops only the entries that would not fit.
            let decoded = decode_fleet_header(&header);
            let sent: BTreeMap<String, String> = states.iter().take(decoded.len()).map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(&decoded, &sent);
            if let Some((next_key, next_state)) = states.iter().nth(decoded.len()) {
                let next_len = percent_encoded_len(next_key) + 1 + next_state.len() + usize::from(!header.is_empty());
                prop_assert!(header.len() + next_len > MAX_FLEET_HEADER_BYTES, "an entry that fits was cut");
            }
        }

        #[test]
        fn percent_decoding_inverts_encoding(s in ".{0,64}") {
            prop_assert_eq!(percent_decode(&percent_encode(&s)), s);
        }

        #[test]
        fn percent_decoding_never_panics(s in ".{0,64}") {
            let _ = percent_decode(&s);
        }
    }
}
