//! The warm pool: a function's instances are kept after an invocation and
//! reused by the next one (a warm start) until their keep-alive lapses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::instance::{Instance, InstanceSpec, RuntimeConfig};
use super::protocol::{InvokeRequest, Outcome};
use crate::ai::AiSession;
use crate::metrics::Metrics;
use crate::model::JobStatus;

/// Shortest time a handler import may take before it counts as hung.
const MIN_LOAD_TIMEOUT: Duration = Duration::from_secs(10);

struct Idle {
    instance: Instance,
    since: Instant,
}

/// The result of running one job through the pool.
#[derive(Debug)]
pub struct Invocation {
    pub outcome: Outcome,
    pub cold_start: bool,
    /// Process start + handler import, for cold starts.
    pub init_ms: Option<f64>,
}

pub struct Pool {
    cfg: RuntimeConfig,
    keep_alive: Duration,
    max_idle: usize,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    metrics: Arc<Metrics>,
}

impl Pool {
    pub fn new(cfg: RuntimeConfig, keep_alive: Duration, max_idle: usize, metrics: Arc<Metrics>) -> Self {
        Pool {
            cfg,
            keep_alive,
            max_idle,
            idle: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Runs the request on a warm instance of `spec` if one is idle, else on a
    /// fresh one; keeps the instance afterwards unless it broke a limit.
    pub async fn invoke(&self, spec: &InstanceSpec, req: &InvokeRequest, ai: &mut AiSession) -> Invocation {
        let key = spec.pool_key();
        let (mut instance, cold_start, init_ms) = match self.take_idle(&key) {
            Some(instance) => (instance, false, None),
            None => {
                let t0 = Instant::now();
                match self.start(spec, req).await {
                    Ok(instance) => {
                        let init = t0.elapsed().as_secs_f64();
                        self.metrics.init_duration.observe(init);
                        (instance, true, Some(init * 1000.0))
                    }
                    Err(outcome) => {
                        self.metrics.starts.with_label_values(&["cold"]).inc();
                        return Invocation {
                            outcome,
                            cold_start: true,
                            init_ms: None,
                        };
                    }
                }
            }
        };
        self.metrics
            .starts
            .with_label_values(&[if cold_start { "cold" } else { "warm" }])
            .inc();
        self.metrics.busy_instances.inc();
        let (outcome, reusable) = instance.invoke(req, ai).await;
        self.metrics.busy_instances.dec();
        if reusable {
            self.put_idle(key, instance);
        } else {
            tracing::info!(
                function_id = spec.function_id,
                status = outcome.status.as_str(),
                "discarding instance"
            );
        }
        Invocation {
            outcome,
            cold_start,
            init_ms,
        }
    }

    async fn start(&self, spec: &InstanceSpec, req: &InvokeRequest) -> Result<Instance, Outcome> {
        let mut instance = Instance::spawn(&self.cfg, spec).await.map_err(|e| {
            tracing::error!(function_id = spec.function_id, error = %e, "instance failed to start");
            Outcome::failed(JobStatus::Crashed, "RuntimeStartFailed", e.to_string())
        })?;
        let load_timeout = Duration::from_millis(req.timeout_ms).max(MIN_LOAD_TIMEOUT);
        instance.load(&spec.code_dir, &spec.handler, load_timeout).await?;
        Ok(instance)
    }

    fn take_idle(&self, key: &str) -> Option<Instance> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        // Most recently used first: it is the most likely to be hot in cache.
        let taken = list.pop().map(|i| i.instance);
        if list.is_empty() {
            idle.remove(key);
        }
        if taken.is_some() {
            self.metrics.warm_instances.dec();
        }
        taken
    }

    fn put_idle(&self, key: String, instance: Instance) {
        let Ok(mut idle) = self.idle.lock() else { return };
        idle.entry(key).or_default().push(Idle {
            instance,
            since: Instant::now(),
        });
        self.metrics.warm_instances.inc();
        let total: usize = idle.values().map(Vec::len).sum();
        if total > self.max_idle {
            // Over capacity: drop the least recently used instance.
            let oldest = idle
                .iter()
                .flat_map(|(k, v)| v.iter().enumerate().map(move |(i, e)| (e.since, k.clone(), i)))
                .min_by_key(|(since, _, _)| *since);
            if let Some((_, k, i)) = oldest {
                if let Some(list) = idle.get_mut(&k) {
                    list.remove(i);
                    self.metrics.warm_instances.dec();
                    if list.is_empty() {
                        idle.remove(&k);
                    }
                }
            }
        }
    }

    /// Stops instances idle for longer than the keep-alive; returns how many.
    pub fn evict_expired(&self) -> usize {
        let Ok(mut idle) = self.idle.lock() else { return 0 };
        let mut evicted = 0;
        idle.retain(|_, list| {
            let before = list.len();
            list.retain(|i| i.since.elapsed() < self.keep_alive);
            evicted += before - list.len();
            !list.is_empty()
        });
        self.metrics.warm_instances.sub(evicted as i64);
        evicted
    }

    /// Idle warm instances per function id.
    pub fn idle_by_function(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        if let Ok(idle) = self.idle.lock() {
            for (key, list) in idle.iter() {
                // Pool keys start with the function id (see InstanceSpec::pool_key).
                let function = key.split('|').next().unwrap_or_default().to_string();
                *out.entry(function).or_insert(0) += list.len();
            }
        }
        out
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.values().map(Vec::len).sum()).unwrap_or(0)
    }

    /// Stops every idle instance (at shutdown).
    pub fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            let n: usize = idle.values().map(Vec::len).sum();
            idle.clear();
            self.metrics.warm_instances.sub(n as i64);
        }
    }
}
