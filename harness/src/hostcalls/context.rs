//! Which context host calls apply to, and a context's end.

use wasmtime::Linker;

use crate::abi::status;
use crate::state::WorkerState;

pub(super) fn link(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    host_call!(linker, "proxy_set_effective_context", |c, ctx: i32| {
        let st = c.data_mut();
        if !st.known_contexts.contains(&(ctx as u32)) {
            return Ok(status::BAD_ARGUMENT as i32);
        }
        st.current = ctx as u32;
        Ok(0)
    });
    host_call!(linker, "proxy_done", |c| { Ok(0) });
    Ok(())
}
