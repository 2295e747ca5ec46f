//! Metrics, shared by every worker of the host: counters, gauges and histograms.

use wasmtime::Linker;

use super::memory::{read_str, write, write_u32};
use crate::abi::status;
use crate::state::{lock, Metric, MetricKind, WorkerState};

pub(super) fn link(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    host_call!(linker, "proxy_define_metric", |c, kind: i32, n: i32, nl: i32, id_out: i32| {
        let name = read_str(&mut c, n, nl)?;
        let kind = match kind {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            2 => MetricKind::Histogram,
            _ => return Ok(status::BAD_ARGUMENT as i32),
        };
        let id = {
            let mut s = lock(&c.data().shared);
            match s.metric_ids.get(&name) {
                Some(&id) => id,
                None => {
                    let id = s.metrics.len() as u32;
                    s.metrics.push(Metric { name: name.clone(), kind, value: 0, samples: vec![] });
                    s.metric_ids.insert(name, id);
                    id
                }
            }
        };
        write_u32(&mut c, id_out, id)?;
        Ok(0)
    });
    host_call!(linker, "proxy_increment_metric", |c, id: i32, offset: i64| {
        let mut s = lock(&c.data().shared);
        let Some(m) = s.metrics.get_mut(id as u32 as usize) else { return Ok(status::NOT_FOUND as i32) };
        match m.kind {
            MetricKind::Counter if offset < 0 => Ok(status::BAD_ARGUMENT as i32),
            MetricKind::Counter | MetricKind::Gauge => {
                m.value += offset;
                Ok(0)
            }
            MetricKind::Histogram => Ok(status::BAD_ARGUMENT as i32),
        }
    });
    host_call!(linker, "proxy_record_metric", |c, id: i32, value: i64| {
        let mut s = lock(&c.data().shared);
        let Some(m) = s.metrics.get_mut(id as u32 as usize) else { return Ok(status::NOT_FOUND as i32) };
        match m.kind {
            MetricKind::Counter => m.value += value,
            MetricKind::Gauge => m.value = value,
            MetricKind::Histogram => m.samples.push(value as u64),
        }
        Ok(0)
    });
    host_call!(linker, "proxy_get_metric", |c, id: i32, out: i32| {
        let value = lock(&c.data().shared).metrics.get(id as u32 as usize).map(|m| m.value);
        match value {
            Some(v) => {
                write(&mut c, out, &(v as u64).to_le_bytes())?;
                Ok(0)
            }
            None => Ok(status::NOT_FOUND as i32),
        }
    });
    Ok(())
}
