//! Header and trailer maps of the current context (and of HTTP call responses).

use wasmtime::Linker;

use super::memory::{give, read, read_str};
use crate::abi::{deserialize_map, serialize_map, status};
use crate::state::WorkerState;

pub(super) fn link(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    host_call!(
        linker,
        "proxy_get_header_map_value",
        |c, kind: i32, key: i32, key_len: i32, ptr_out: i32, size_out: i32| {
            let key = read_str(&mut c, key, key_len)?.to_ascii_lowercase();
            let st = c.data();
            let Some(map) = st.streams.get(&st.current).and_then(|s| s.maps.get(&(kind as u32))) else {
                return Ok(status::NOT_FOUND as i32);
            };
            match map.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()) {
                Some(v) => {
                    give(&mut c, v.as_bytes(), ptr_out, size_out)?;
                    Ok(0)
                }
                None => Ok(status::NOT_FOUND as i32),
            }
        }
    );
    host_call!(linker, "proxy_get_header_map_pairs", |c, kind: i32, ptr_out: i32, size_out: i32| {
        let st = c.data();
        let map = st.streams.get(&st.current).and_then(|s| s.maps.get(&(kind as u32))).cloned().unwrap_or_default();
        give(&mut c, &serialize_map(&map), ptr_out, size_out)?;
        Ok(0)
    });
    host_call!(linker, "proxy_set_header_map_pairs", |c, kind: i32, ptr: i32, len: i32| {
        let bytes = read(&mut c, ptr, len)?;
        let Some(pairs) = deserialize_map(&bytes) else { return Ok(status::BAD_ARGUMENT as i32) };
        let st = c.data_mut();
        let cur = st.current;
        st.streams.entry(cur).or_default().maps.insert(kind as u32, pairs);
        Ok(0)
    });
    for (name, replace) in [("proxy_add_header_map_value", false), ("proxy_replace_header_map_value", true)] {
        host_call!(linker, name, |c, kind: i32, k: i32, kl: i32, v: i32, vl: i32| {
            let key = read_str(&mut c, k, kl)?.to_ascii_lowercase();
            let value = read_str(&mut c, v, vl)?;
            let st = c.data_mut();
            let cur = st.current;
            let map = st.streams.entry(cur).or_default().maps.entry(kind as u32).or_default();
            if replace {
                map.retain(|(x, _)| *x != key);
            }
            map.push((key, value));
            Ok(0)
        });
    }
    host_call!(linker, "proxy_remove_header_map_value", |c, kind: i32, k: i32, kl: i32| {
        let key = read_str(&mut c, k, kl)?.to_ascii_lowercase();
        let st = c.data_mut();
        let cur = st.current;
        if let Some(map) = st.streams.entry(cur).or_default().maps.get_mut(&(kind as u32)) {
            map.retain(|(x, _)| *x != key);
        }
        Ok(0)
    });
    Ok(())
}
