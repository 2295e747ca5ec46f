//! `proxy_log`: captured into the host's logs, with the worker that wrote it.

use wasmtime::Linker;

use super::memory::read_str;
use crate::state::{lock, LogLine, WorkerState};

pub(super) fn link(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    host_call!(linker, "proxy_log", |c, level: i32, ptr: i32, len: i32| {
        let message = read_str(&mut c, ptr, len)?;
        let worker = c.data().index;
        lock(&c.data().shared).logs.push(LogLine { worker, level: level as u32, message });
        Ok(0)
    });
    Ok(())
}
