//! Body and data buffers of the current context; the configurations live on the root.

use wasmtime::Linker;

use super::memory::{give, read};
use crate::abi::{buffer, status};
use crate::state::WorkerState;

pub(super) fn link(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    host_call!(linker, "proxy_get_buffer_bytes", |c, kind: i32, start: i32, max: i32, ptr_out: i32, size_out: i32| {
        let st = c.data();
        let kind = kind as u32;
        let buf = if kind == buffer::VM_CONFIGURATION || kind == buffer::PLUGIN_CONFIGURATION {
            st.root_buffers.get(&kind).cloned()
        } else {
            st.streams.get(&st.current).and_then(|s| s.buffers.get(&kind)).cloned()
        };
        let Some(buf) = buf else { return Ok(status::NOT_FOUND as i32) };
        let start = (start as u32 as usize).min(buf.len());
        let end = start.saturating_add(max as u32 as usize).min(buf.len());
        give(&mut c, &buf[start..end], ptr_out, size_out)?;
        Ok(0)
    });
    host_call!(linker, "proxy_set_buffer_bytes", |c, kind: i32, _start: i32, _len: i32, ptr: i32, size: i32| {
        let bytes = read(&mut c, ptr, size)?;
        let st = c.data_mut();
        let cur = st.current;
        st.streams.entry(cur).or_default().buffers.insert(kind as u32, bytes);
        Ok(0)
    });
    Ok(())
}
