//! `proxy_http_call`: recorded for the test to answer, fail or time out.

use wasmtime::Linker;

use super::memory::{read, read_str, write_u32};
use crate::abi::{deserialize_map, status};
use crate::state::{lock, HttpCall, WorkerState};

pub(super) fn link(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    host_call!(linker, "proxy_http_call", |c,
                                           up: i32,
                                           upl: i32,
                                           h: i32,
                                           hl: i32,
                                           b: i32,
                                           bl: i32,
                                           _t: i32,
                                           _tl: i32,
                                           timeout: i32,
                                           token_out: i32| {
        let cluster = read_str(&mut c, up, upl)?;
        let raw = read(&mut c, h, hl)?;
        let body = read(&mut c, b, bl)?;
        let Some(headers) = deserialize_map(&raw) else { return Ok(status::BAD_ARGUMENT as i32) };
        // Envoy: an unknown cluster, or a request without :method/:path/:authority.
        let has = |n: &str| headers.iter().any(|(k, _)| k == n);
        if !(c.data().clusters.contains(&cluster) && has(":method") && has(":path") && has(":authority")) {
            return Ok(status::BAD_ARGUMENT as i32);
        }
        let token = {
            let mut s = lock(&c.data().shared);
            s.next_http_token += 1;
            s.next_http_token
        };
        c.data_mut().http_calls.push(HttpCall { token, cluster, headers, body, timeout_ms: timeout as u32 });
        write_u32(&mut c, token_out, token)?;
        Ok(0)
    });
    Ok(())
}
