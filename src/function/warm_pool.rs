//! The warm-pool spec: what every worker should keep started, derived from
//! the function records (pure). Workers follow it; the aggregate per runtime
//! tells an autoscaler how much memory and how many slots a worker needs.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::Metrics;
use crate::model::{FunctionRecord, Runtime};

/// One function's wish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmFunction {
    pub function_id: String,
    pub runtime: Runtime,
    pub min_warm: u32,
    pub memory_mb: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Totals for one runtime, per worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeDemand {
    /// Generic pre-started instances (STEM_CELLS).
    pub stem_cells: usize,
    /// Sum of minWarm.
    pub warm_instances: u64,
    /// Sum of minWarm x memoryMb.
    pub warm_memory_mb: u64,
    /// Instances a worker keeps started in all: warm instances plus stem cells.
    pub slots: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmPoolSpec {
    pub functions: Vec<WarmFunction>,
    /// Keyed by runtime name.
    pub runtimes: BTreeMap<String, RuntimeDemand>,
}

/// The spec for `functions`, with `stem_cells` generic instances per runtime.
pub fn warm_pool_spec(functions: &[FunctionRecord], stem_cells: usize) -> WarmPoolSpec {
    let mut runtimes: BTreeMap<String, RuntimeDemand> = Runtime::ALL
        .iter()
        .map(|r| {
            (
                r.as_str().to_string(),
                RuntimeDemand {
                    stem_cells,
                    slots: stem_cells as u64,
                    ..RuntimeDemand::default()
                },
            )
        })
        .collect();
    let mut wanted: Vec<WarmFunction> = functions
        .iter()
        // Programs start per run: nothing of theirs is kept warm.
        .filter(|f| f.warm_pool.min_warm > 0 && f.style.is_handler())
        .map(|f| WarmFunction {
            function_id: f.function_id.clone(),
            runtime: f.runtime,
            min_warm: f.warm_pool.min_warm,
            memory_mb: f.memory_mb,
            owner: f.owner.clone(),
        })
        .collect();
    wanted.sort_by(|a, b| a.function_id.cmp(&b.function_id));
    for f in &wanted {
        let d = runtimes.entry(f.runtime.as_str().to_string()).or_default();
        d.warm_instances += u64::from(f.min_warm);
        d.warm_memory_mb += u64::from(f.min_warm) * u64::from(f.memory_mb);
        d.slots += u64::from(f.min_warm);
    }
    WarmPoolSpec {
        functions: wanted,
        runtimes,
    }
}

impl WarmPoolSpec {
    /// Sets the `infra_warm_pool_wanted_*` gauges.
    pub fn export(&self, metrics: &Metrics) {
        for (runtime, d) in &self.runtimes {
            metrics
                .pool_wanted_slots
                .with_label_values(&[runtime])
                .set(d.slots as i64);
            metrics
                .pool_wanted_mb
                .with_label_values(&[runtime])
                .set(d.warm_memory_mb as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::conformance::sample_function;
    use crate::model::WarmPool;

    #[test]
    fn totals_per_runtime() {
        let mut a = sample_function("a");
        a.warm_pool = WarmPool {
            min_warm: 2,
            ..WarmPool::default()
        };
        a.memory_mb = 256;
        let mut b = sample_function("b");
        b.runtime = Runtime::Nodejs;
        b.warm_pool = WarmPool {
            min_warm: 1,
            ..WarmPool::default()
        };
        let mut c = sample_function("c");
        c.warm_pool = WarmPool::default();
        let spec = warm_pool_spec(&[c, b, a], 2);
        assert_eq!(
            spec.functions
                .iter()
                .map(|f| f.function_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        let py = &spec.runtimes["python"];
        assert_eq!((py.warm_instances, py.warm_memory_mb, py.slots), (2, 512, 4));
        let node = &spec.runtimes["nodejs"];
        assert_eq!((node.warm_instances, node.warm_memory_mb, node.slots), (1, 128, 3));
    }
}
