//! Acting on the current stream: a local reply, closing (an HTTP stream or a TCP side) or
//! continuing it.

use wasmtime::Linker;

use super::memory::{read, read_str};
use crate::abi::{deserialize_map, status};
use crate::state::{LocalResponse, WorkerState};

pub(super) fn link(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    host_call!(linker, "proxy_send_local_response", |c,
                                                     code: i32,
                                                     d: i32,
                                                     dl: i32,
                                                     b: i32,
                                                     bl: i32,
                                                     h: i32,
                                                     hl: i32,
                                                     _grpc: i32| {
        let details = read_str(&mut c, d, dl)?;
        let body = read(&mut c, b, bl)?;
        let raw = read(&mut c, h, hl)?;
        let Some(headers) = deserialize_map(&raw) else { return Ok(status::BAD_ARGUMENT as i32) };
        let st = c.data_mut();
        let cur = st.current;
        st.streams.entry(cur).or_default().local_response =
            Some(LocalResponse { status: code as u32, details, headers, body });
        Ok(0)
    });
    host_call!(linker, "proxy_close_stream", |c, kind: i32| {
        let st = c.data_mut();
        let cur = st.current;
        let stream = st.streams.entry(cur).or_default();
        match kind {
            // HttpRequest, HttpResponse: Envoy resets the HTTP stream.
            0 | 1 => stream.closed_http = true,
            2 => stream.closed_downstream = true,
            3 => stream.closed_upstream = true,
            _ => return Ok(status::BAD_ARGUMENT as i32),
        }
        Ok(0)
    });
    host_call!(linker, "proxy_continue_stream", |c, kind: i32| {
        let st = c.data_mut();
        let cur = st.current;
        if !st.known_contexts.contains(&cur) {
            return Ok(status::NOT_FOUND as i32);
        }
        let stream = st.streams.entry(cur).or_default();
        match kind {
            0 => stream.resumed_request += 1,
            1 => stream.resumed_response += 1,
            _ => return Ok(status::BAD_ARGUMENT as i32),
        }
        Ok(0)
    });
    Ok(())
}
