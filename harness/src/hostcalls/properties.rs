//! `proxy_get_property`: the current context's own properties first, then the worker's.

use wasmtime::Linker;

use super::memory::{give, read_str};
use crate::abi::status;
use crate::state::WorkerState;

pub(super) fn link(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    host_call!(linker, "proxy_get_property", |c, path: i32, path_len: i32, ptr_out: i32, size_out: i32| {
        // Segments are `\0`-separated; the SDK also ends the path with one.
        let path = read_str(&mut c, path, path_len)?.trim_end_matches('\0').to_string();
        let st = c.data();
        let value = st
            .streams
            .get(&st.current)
            .and_then(|s| s.properties.get(&path))
            .or_else(|| st.properties.get(&path))
            .cloned();
        match value {
            Some(v) => {
                give(&mut c, &v, ptr_out, size_out)?;
                Ok(0)
            }
            None => Ok(status::NOT_FOUND as i32),
        }
    });
    Ok(())
}
