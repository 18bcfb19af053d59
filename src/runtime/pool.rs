//! The warm pool: a function's instances are kept after an invocation and
//! reused by the next one (a warm start) until their keep-alive lapses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

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

/// How the instance that ran a job came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartKind {
    /// An idle instance of the same function version, reused.
    Warm,
    /// A pre-started stem cell that was given the function's code.
    Stem,
    /// A new process started for the job.
    Fresh,
}

impl StartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Warm => "warm",
            StartKind::Stem => "stem",
            StartKind::Fresh => "fresh",
        }
    }
}

/// The result of running one job through the pool.
#[derive(Debug)]
pub struct Invocation {
    pub outcome: Outcome,
    pub start_kind: StartKind,
    pub cold_start: bool,
    /// Process start + handler import, for cold starts.
    pub init_ms: Option<f64>,
}

pub struct Pool {
    cfg: RuntimeConfig,
    keep_alive: Duration,
    max_idle: usize,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    stems: Arc<Mutex<Vec<Instance>>>,
    /// Stem cells being started right now.
    stems_starting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Pool {
    pub fn new(cfg: RuntimeConfig, keep_alive: Duration, max_idle: usize, metrics: Arc<Metrics>) -> Self {
        Pool {
            cfg,
            keep_alive,
            max_idle,
            idle: Mutex::new(HashMap::new()),
            stems: Arc::new(Mutex::new(Vec::new())),
            stems_starting: Arc::new(AtomicUsize::new(0)),
            metrics,
        }
    }

    /// Starts stem cells in the background until `stem_cells` are ready or starting.
    pub fn refill_stem_cells(&self) {
        let ready = self.stems.lock().map(|s| s.len()).unwrap_or(0);
        let missing = self
            .cfg
            .stem_cells
            .saturating_sub(ready + self.stems_starting.load(Ordering::Relaxed));
        for _ in 0..missing {
            self.stems_starting.fetch_add(1, Ordering::Relaxed);
            let (cfg, stems, starting, metrics) = (
                self.cfg.clone(),
                self.stems.clone(),
                self.stems_starting.clone(),
                self.metrics.clone(),
            );
            tokio::spawn(async move {
                match Instance::spawn_stem(&cfg).await {
                    Ok(stem) => {
                        if let Ok(mut s) = stems.lock() {
                            s.push(stem);
                            metrics.stem_cells.set(s.len() as i64);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not start a stem cell"),
                }
                starting.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    fn take_stem(&self) -> Option<Instance> {
        let stem = self.stems.lock().ok().and_then(|mut s| {
            let stem = s.pop();
            self.metrics.stem_cells.set(s.len() as i64);
            stem
        });
        if stem.is_some() {
            self.refill_stem_cells();
        }
        stem
    }

    /// Runs the request on a warm instance of `spec` if one is idle, else on a
    /// fresh one; keeps the instance afterwards unless it broke a limit.
    pub async fn invoke(&self, spec: &InstanceSpec, req: &InvokeRequest, ai: &mut AiSession) -> Invocation {
        let key = spec.pool_key();
        let (mut instance, start_kind, init_ms) = match self.take_idle(&key) {
            Some(instance) => (instance, StartKind::Warm, None),
            None => {
                let t0 = Instant::now();
                let load_timeout = Duration::from_millis(req.timeout_ms).max(MIN_LOAD_TIMEOUT);
                let started = match self.take_stem() {
                    Some(mut stem) => stem
                        .load_stem(spec, load_timeout)
                        .await
                        .map(|_| (stem, StartKind::Stem)),
                    None => self.start(spec, load_timeout).await.map(|i| (i, StartKind::Fresh)),
                };
                match started {
                    Ok((instance, kind)) => {
                        let init = t0.elapsed().as_secs_f64();
                        self.metrics
                            .init_duration
                            .with_label_values(&[kind.as_str()])
                            .observe(init);
                        (instance, kind, Some(init * 1000.0))
                    }
                    Err(outcome) => {
                        self.metrics.starts.with_label_values(&["fresh"]).inc();
                        return Invocation {
                            outcome,
                            start_kind: StartKind::Fresh,
                            cold_start: true,
                            init_ms: None,
                        };
                    }
                }
            }
        };
        let cold_start = start_kind != StartKind::Warm;
        self.metrics.starts.with_label_values(&[start_kind.as_str()]).inc();
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
            start_kind,
            cold_start,
            init_ms,
        }
    }

    async fn start(&self, spec: &InstanceSpec, load_timeout: Duration) -> Result<Instance, Outcome> {
        let mut instance = Instance::spawn(&self.cfg, spec).await.map_err(|e| {
            tracing::error!(function_id = spec.function_id, error = %e, "instance failed to start");
            Outcome::failed(JobStatus::Crashed, "RuntimeStartFailed", e.to_string())
        })?;
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

    /// Stops every idle instance and stem cell (at shutdown).
    pub fn clear(&self) {
        if let Ok(mut stems) = self.stems.lock() {
            stems.clear();
            self.metrics.stem_cells.set(0);
        }
        if let Ok(mut idle) = self.idle.lock() {
            let n: usize = idle.values().map(Vec::len).sum();
            idle.clear();
            self.metrics.warm_instances.sub(n as i64);
        }
    }
}
