//! The WebSocket pieces of a `close_frame` refusal (RFC 6455): the `sec-websocket-accept` value
//! for a client's `sec-websocket-key`, and a server close frame with a code and a reason of at
//! most 123 bytes. Small SHA-1 and base64 implementations live here because the filter may not
//! depend on crates for them; the tests hold them to RFC 3174, RFC 4648 and the `sha1`/`base64`
//! crates.

/// RFC 6455 section 1.3: the GUID appended to the key before hashing.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Close code 1013, Try Again Later.
pub const TRY_AGAIN_LATER: u16 = 1013;

/// A close frame's reason is at most 123 bytes (125 bytes of control-frame payload, 2 of code).
pub const MAX_REASON: usize = 123;

/// SHA-1 (RFC 3174) of `data`.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];
    let bit_len = (data.len() as u64).wrapping_mul(8);
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, v) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 section 4).
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A valid `sec-websocket-key`: base64 of 16 bytes (RFC 6455 section 4.1), that is 22 base64
/// characters (the last one carrying only 2 bits) and `==`, surrounding whitespace allowed.
pub fn valid_key(key: &[u8]) -> bool {
    let key = key.trim_ascii();
    if key.len() != 24 || &key[22..] != b"==" {
        return false;
    }
    let Some(last) = ALPHABET.iter().position(|&c| c == key[21]) else {
        return false;
    };
    key[..21].iter().all(|c| ALPHABET.contains(c)) && last % 16 == 0
}

/// `sec-websocket-accept` for a client's `sec-websocket-key`; `None` for an invalid key.
pub fn accept(key: &[u8]) -> Option<String> {
    if !valid_key(key) {
        return None;
    }
    let mut input = key.trim_ascii().to_vec();
    input.extend_from_slice(GUID);
    Some(base64(&sha1(&input)))
}

/// The close reason Floodgate sends: compact JSON `{"reason":"...","retry_after_s":N}`, at most
/// [`MAX_REASON`] bytes. A reason too long for that (a control plane's may be 128 bytes) is cut
/// at a character boundary.
pub fn close_reason(reason: &str, retry_after_s: u64) -> String {
    let mut cut = reason;
    loop {
        let json = serde_json::json!({"reason": cut, "retry_after_s": retry_after_s}).to_string();
        if json.len() <= MAX_REASON {
            return json;
        }
        let mut end = cut.len().saturating_sub(1);
        while !cut.is_char_boundary(end) {
            end -= 1;
        }
        cut = &cut[..end];
    }
}

/// An unmasked server close frame (FIN, opcode 8) with `code` and `reason`, the reason cut to
/// [`MAX_REASON`] bytes at a character boundary.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.push(0x88);
    frame.push((2 + reason.len()) as u8);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02X}")).collect()
    }

    #[test]
    fn rfc6455_example_key() {
        // RFC 6455 section 1.3 (its text, not a paraphrase: the value ends in "RbK+xOo=").
        assert_eq!(accept(b"dGhlIHNhbXBsZSBub25jZQ==").as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(accept(b" dGhlIHNhbXBsZSBub25jZQ== ").as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }

    #[test]
    fn invalid_keys_get_no_accept() {
        for key in [
            &b""[..],
            b"short",
            b"dGhlIHNhbXBsZSBub25jZQ=",
            b"dGhlIHNhbXBsZSBub25jZQ===",
            b"dGhlIHNhbXBsZSBub25j!Q==",
            b"dGhlIHNhbXBsZSBub25jZR==",
        ] {
            assert_eq!(accept(key), None, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn rfc3174_vectors() {
        assert_eq!(hex(&sha1(b"abc")), "A9993E364706816ABA3E25717850C26C9CD0D89D");
        assert_eq!(
            hex(&sha1(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "84983E441C3BD26EBAAE4AA1F95129E5E54670F1"
        );
        assert_eq!(hex(&sha1(&vec![b'a'; 1_000_000])), "34AA973CD4C4DAA4F61EEB2BDBAD27316534016F");
        let test4 = b"0123456701234567012345670123456701234567012345670123456701234567".repeat(10);
        assert_eq!(hex(&sha1(&test4)), "DEA356A2CDDD90C7A7ECEDC5EBB563934F460452");
        assert_eq!(hex(&sha1(b"")), "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709");
    }

    #[test]
    fn rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn close_frame_bytes() {
        let f = close_frame(TRY_AGAIN_LATER, r#"{"reason":"failure_rate","retry_after_s":12}"#);
        assert_eq!(&f[..4], &[0x88, 2 + 44, 0x03, 0xF5]);
        assert_eq!(&f[4..], br#"{"reason":"failure_rate","retry_after_s":12}"#);
        assert_eq!(close_reason("failure_rate", 12), r#"{"reason":"failure_rate","retry_after_s":12}"#);
    }

    #[test]
    fn long_reasons_are_cut_to_fit() {
        let long = "é".repeat(128);
        let r = close_reason(&long, u64::MAX);
        assert!(r.len() <= MAX_REASON, "{}", r.len());
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(v["retry_after_s"], u64::MAX);
        assert!(long.starts_with(v["reason"].as_str().unwrap()));
        assert_eq!(close_frame(1013, &"x".repeat(200)).len(), 2 + 2 + MAX_REASON);
    }

    proptest! {
        #[test]
        fn sha1_and_base64_match_the_crates(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            use ::base64::Engine;
            use ::sha1::Digest;
            let want: [u8; 20] = ::sha1::Sha1::digest(&data).into();
            prop_assert_eq!(sha1(&data), want);
            prop_assert_eq!(base64(&data), ::base64::engine::general_purpose::STANDARD.encode(&data));
        }

        #[test]
        fn accept_matches_the_crates_for_every_16_byte_key(nonce in any::<[u8; 16]>()) {
            use ::base64::Engine;
            use ::sha1::Digest;
            let key = ::base64::engine::general_purpose::STANDARD.encode(nonce);
            let mut h = ::sha1::Sha1::new();
            h.update(key.as_bytes());
            h.update(GUID);
            let want = ::base64::engine::general_purpose::STANDARD.encode(h.finalize());
            prop_assert_eq!(accept(key.as_bytes()), Some(want));
        }

        #[test]
        fn close_reasons_always_fit(reason in "\\PC{0,130}", retry in any::<u64>()) {
            let r = close_reason(&reason, retry);
            prop_assert!(r.len() <= MAX_REASON);
            let v: serde_json::Value = serde_json::from_str(&r).unwrap();
            prop_assert_eq!(v["retry_after_s"].as_u64(), Some(retry));
            prop_assert!(reason.starts_with(v["reason"].as_str().unwrap()));
        }
    }
}
