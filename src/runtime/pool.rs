//! The warm pool: a function's instances are kept after an invocation and
//! reused by the next one (a warm start) until their keep-alive lapses;
//! functions with `minWarm` have instances started before any request; stem
//! cells per runtime make the remaining cold starts cheap. Every live
//! instance holds a memory reservation (its function's memoryMb, a fixed
//! share for a stem cell), and reservations never exceed the capacity.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::instance::{Instance, InstanceSpec, RuntimeConfig};
use super::protocol::{InvokeRequest, Outcome};
use crate::ai::AiSession;
use crate::metrics::Metrics;
use crate::model::{JobStatus, Runtime, WarmPool};

/// Shortest time a handler import may take before it counts as hung.
const MIN_LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a job waits for pool memory before it ends with a clear error.
const CAPACITY_WAIT: Duration = Duration::from_secs(60);

/// Memory set aside for one stem cell (an idle interpreter with the bootstrap).
fn stem_reserve_mb(runtime: Runtime) -> u64 {
    match runtime {
        Runtime::Python => 32,
        Runtime::Nodejs => 64,
    }
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

/// Limits of the whole pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Default idle time before an instance stops.
    pub keep_alive: Duration,
    /// Most idle instances over all functions.
    pub max_idle: usize,
    /// Memory (MB) all live instances together may reserve.
    pub memory_mb: u64,
}

/// A function the pool keeps warm: its instance spec and pool settings.
#[derive(Debug, Clone)]
pub struct WarmTarget {
    pub spec: InstanceSpec,
    pub warm_pool: WarmPool,
}

/// A snapshot of the pool, for `/health`, heartbeats and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStats {
    pub capacity_mb: u64,
    pub reserved_mb: u64,
    /// Stem cells this worker keeps per runtime (STEM_CELLS).
    pub stem_cells_per_runtime: usize,
    /// Highest reservation since the worker started.
    pub peak_reserved_mb: u64,
    pub idle_instances: usize,
    pub busy_instances: usize,
    /// Ready stem cells per runtime.
    pub stem_cells: BTreeMap<String, usize>,
    /// Idle instances per function id.
    pub idle_by_function: BTreeMap<String, usize>,
    /// Idle instances per runtime (absent from older workers' reports).
    #[serde(default)]
    pub idle_by_runtime: BTreeMap<String, usize>,
    /// Functions below their minWarm (capacity too small, or starting).
    pub short_of_min_warm: BTreeMap<String, u32>,
}

struct Idle {
    instance: Instance,
    since: Instant,
    memory_mb: u64,
    keep_alive: Duration,
    function_id: String,
    runtime: Runtime,
}

#[derive(Default)]
struct State {
    idle: HashMap<String, Vec<Idle>>,
    stems: HashMap<Runtime, Vec<Instance>>,
    stems_starting: HashMap<Runtime, usize>,
    /// Pre-warm starts under way per pool key.
    prewarming: HashMap<String, usize>,
    /// minWarm per pool key of the current targets: these instances are
    /// neither expired nor evicted for other functions.
    protected: HashMap<String, u32>,
    short: BTreeMap<String, u32>,
    reserved_mb: u64,
    peak_mb: u64,
    busy: usize,
}

impl State {
    fn reserve(&mut self, mb: u64, capacity: u64) -> bool {
        if self.reserved_mb + mb > capacity {
            return false;
        }
        self.reserved_mb += mb;
        self.peak_mb = self.peak_mb.max(self.reserved_mb);
        true
    }

    fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }

    /// Stops the least recently used idle instance that is not protected by
    /// a minWarm (or any, with `any`); returns whether one was stopped.
    fn evict_lru(&mut self, any: bool) -> bool {
        let candidate = self
            .idle
            .iter()
            .filter(|(key, list)| any || list.len() > self.protected.get(*key).copied().unwrap_or(0) as usize)
            .flat_map(|(key, list)| list.iter().enumerate().map(move |(i, e)| (e.since, key.clone(), i)))
            .min_by_key(|(since, _, _)| *since);
        let Some((_, key, i)) = candidate else { return false };
        self.remove_idle(&key, i);
        true
    }

    fn remove_idle(&mut self, key: &str, i: usize) {
        if let Some(list) = self.idle.get_mut(key) {
            if i < list.len() {
                let gone = list.remove(i);
                self.reserved_mb = self.reserved_mb.saturating_sub(gone.memory_mb);
            }
            if list.is_empty() {
                self.idle.remove(key);
            }
        }
    }
}

/// Ready stem cells, in all and per runtime.
fn stem_gauges(metrics: &Metrics, st: &State) {
    metrics
        .stem_cells
        .set(st.stems.values().map(Vec::len).sum::<usize>() as i64);
    for runtime in Runtime::ALL {
        let n = st.stems.get(runtime).map_or(0, Vec::len);
        metrics
            .pool_stem_cells
            .with_label_values(&[runtime.as_str()])
            .set(n as i64);
    }
}

pub struct Pool {
    cfg: RuntimeConfig,
    limits: PoolLimits,
    state: Arc<Mutex<State>>,
    /// Signalled whenever memory is released or an instance becomes idle.
    freed: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl Pool {
    pub fn new(cfg: RuntimeConfig, limits: PoolLimits, metrics: Arc<Metrics>) -> Self {
        metrics.pool_capacity_mb.set(limits.memory_mb as i64);
        Pool {
            cfg,
            limits,
            state: Arc::new(Mutex::new(State::default())),
            freed: Arc::new(Notify::new()),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind: keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn stem_cells(&self) -> usize {
        self.cfg.stem_cells
    }

    pub fn has_runtime(&self, runtime: Runtime) -> bool {
        self.runtimes().contains(&runtime)
    }

    /// The runtimes this worker can start.
    fn runtimes(&self) -> Vec<Runtime> {
        let mut r = vec![Runtime::Python];
        if self.cfg.node.is_some() {
            r.push(Runtime::Nodejs);
        }
        r
    }

    /// Starts stem cells in the background until `stem_cells` per runtime are
    /// ready or starting (as far as memory allows).
    pub fn refill_stem_cells(&self) {
        for runtime in self.runtimes() {
            self.refill(runtime);
        }
    }

    fn refill(&self, runtime: Runtime) {
        let reserve = stem_reserve_mb(runtime);
        loop {
            {
                let mut st = self.lock();
                let have =
                    st.stems.get(&runtime).map_or(0, Vec::len) + st.stems_starting.get(&runtime).copied().unwrap_or(0);
                if have >= self.cfg.stem_cells || !st.reserve(reserve, self.limits.memory_mb) {
                    return;
                }
                *st.stems_starting.entry(runtime).or_default() += 1;
            }
            let (cfg, state, metrics, freed) = (
                self.cfg.clone(),
                self.state.clone(),
                self.metrics.clone(),
                self.freed.clone(),
            );
            tokio::spawn(async move {
                let started = Instance::spawn_stem(&cfg, runtime).await;
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(n) = st.stems_starting.get_mut(&runtime) {
                    *n = n.saturating_sub(1);
                }
                match started {
                    Ok(stem) => st.stems.entry(runtime).or_default().push(stem),
                    Err(e) => {
                        st.reserved_mb = st.reserved_mb.saturating_sub(reserve);
                        freed.notify_waiters();
                        tracing::warn!(runtime = runtime.as_str(), error = %e, "could not start a stem cell");
                    }
                }
                stem_gauges(&metrics, &st);
            });
        }
    }

    /// A stem cell of `runtime`, its reservation turned into `memory_mb`
    /// (already reserved by the caller, so the stem's share is released).
    /// The caller refills once its cold start is done: a new process
    /// starting meanwhile would compete with it for the CPU.
    fn take_stem(&self, runtime: Runtime) -> Option<Instance> {
        let mut st = self.lock();
        let stem = st.stems.get_mut(&runtime).and_then(Vec::pop);
        if stem.is_some() {
            st.reserved_mb = st.reserved_mb.saturating_sub(stem_reserve_mb(runtime));
        }
        stem_gauges(&self.metrics, &st);
        stem
    }

    /// Runs a program-style function once (a fresh sandboxed process, never
    /// kept), once the pool has memory for it: its memoryMb is held for the
    /// run as a fresh instance's would be.
    pub async fn run_program(
        &self,
        spec: &super::program::ProgramSpec,
        req: &super::program::ProgramRequest<'_>,
    ) -> Result<super::program::ProgramRun, Outcome> {
        // No idle list is ever kept under this key: acquiring only reserves memory.
        self.acquire(spec.memory_mb, "program|").await?;
        let run = super::program::run_program(&self.cfg, spec, req).await;
        self.release(u64::from(spec.memory_mb));
        self.metrics
            .starts
            .with_label_values(&[StartKind::Fresh.as_str()])
            .inc();
        run.map_err(|e| {
            tracing::error!(error = %e, "program failed to start");
            Outcome::failed(JobStatus::Crashed, "RuntimeStartFailed", e.to_string())
        })
    }

    /// Runs the request on a warm instance of `spec` if one is idle, else on a
    /// stem cell or a fresh instance, once the pool has memory for it; keeps
    /// the instance afterwards unless it broke a limit.
    pub async fn invoke(
        &self,
        spec: &InstanceSpec,
        warm_pool: &WarmPool,
        req: &InvokeRequest,
        ai: &mut AiSession,
    ) -> Invocation {
        let key = spec.pool_key();
        let (mut instance, start_kind, init_ms) = match self.acquire(spec.memory_mb, &key).await {
            Ok(Some(instance)) => (instance, StartKind::Warm, None),
            Ok(None) => {
                let t0 = Instant::now();
                let load_timeout = Duration::from_millis(req.timeout_ms).max(MIN_LOAD_TIMEOUT);
                match self.start_instance(spec, load_timeout).await {
                    Ok((instance, kind)) => {
                        let init = t0.elapsed().as_secs_f64();
                        (instance, kind, Some(init * 1000.0))
                    }
                    Err((outcome, kind)) => {
                        self.release(u64::from(spec.memory_mb));
                        self.refill(spec.runtime);
                        self.metrics.starts.with_label_values(&[kind.as_str()]).inc();
                        return Invocation {
                            outcome,
                            start_kind: kind,
                            cold_start: true,
                            init_ms: None,
                        };
                    }
                }
            }
            Err(outcome) => {
                return Invocation {
                    outcome,
                    start_kind: StartKind::Fresh,
                    cold_start: true,
                    init_ms: None,
                }
            }
        };
        let cold_start = start_kind != StartKind::Warm;
        self.metrics.starts.with_label_values(&[start_kind.as_str()]).inc();
        self.set_busy(1);
        let (outcome, reusable) = instance.invoke(req, ai).await;
        self.set_busy(-1);
        if start_kind == StartKind::Stem {
            self.refill(spec.runtime);
        }
        if reusable && !instance.is_out_of_step() {
            self.put_idle(key, spec, warm_pool, instance);
        } else {
            drop(instance);
            self.release(u64::from(spec.memory_mb));
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

    fn gauges(&self, st: &State) {
        self.metrics.pool_reserved_mb.set(st.reserved_mb as i64);
        self.metrics.pool_peak_mb.set(st.peak_mb as i64);
    }

    fn set_busy(&self, delta: isize) {
        let mut st = self.lock();
        st.busy = st.busy.saturating_add_signed(delta);
        self.metrics.busy_instances.set(st.busy as i64);
    }

    /// An idle instance of `key`, or (None) memory reserved for a new one:
    /// idle instances of other functions are stopped to make room, and
    /// failing that the job waits for running ones to finish.
    async fn acquire(&self, memory_mb: u32, key: &str) -> Result<Option<Instance>, Outcome> {
        let need = u64::from(memory_mb);
        if need > self.limits.memory_mb {
            return Err(Outcome::failed(
                JobStatus::Error,
                "CapacityExceeded",
                format!(
                    "the function needs {need} MB but this worker's pool has {} MB (WORKER_MEMORY_MB)",
                    self.limits.memory_mb
                ),
            ));
        }
        let deadline = tokio::time::Instant::now() + CAPACITY_WAIT;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut st = self.lock();
                if let Some(list) = st.idle.get_mut(key) {
                    // Most recently used first: it is the most likely to be hot in cache.
                    let mut retired_mb = 0;
                    let mut found = None;
                    while let Some(idle) = list.pop() {
                        if idle.instance.is_out_of_step() {
                            // It spoke while idle: retire it and free its memory.
                            retired_mb += idle.memory_mb;
                            continue;
                        }
                        found = Some(idle.instance);
                        break;
                    }
                    if list.is_empty() {
                        st.idle.remove(key);
                    }
                    st.reserved_mb = st.reserved_mb.saturating_sub(retired_mb);
                    self.gauges(&st);
                    self.metrics.warm_instances.set(st.idle_count() as i64);
                    if found.is_some() {
                        return Ok(found);
                    }
                }
                loop {
                    if st.reserve(need, self.limits.memory_mb) {
                        self.gauges(&st);
                        return Ok(None);
                    }
                    // Room is made from idle instances: first those beyond
                    // any minWarm, then (a running job wins) protected ones.
                    if !(st.evict_lru(false) || st.evict_lru(true)) {
                        break;
                    }
                    self.metrics.warm_instances.set(st.idle_count() as i64);
                }
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                let st = self.lock();
                return Err(Outcome::failed(
                    JobStatus::Error,
                    "CapacityExceeded",
                    format!(
                        "no pool memory for {need} MB within {} s ({} of {} MB held by running instances)",
                        CAPACITY_WAIT.as_secs(),
                        st.reserved_mb,
                        self.limits.memory_mb
                    ),
                ));
            }
        }
    }

    fn release(&self, mb: u64) {
        let mut st = self.lock();
        st.reserved_mb = st.reserved_mb.saturating_sub(mb);
        self.gauges(&st);
        drop(st);
        self.freed.notify_waiters();
    }

    /// A new instance for `spec` (memory already reserved): a stem cell given
    /// the code, or a fresh process.
    async fn start_instance(
        &self,
        spec: &InstanceSpec,
        load_timeout: Duration,
    ) -> Result<(Instance, StartKind), (Outcome, StartKind)> {
        let t0 = Instant::now();
        // Stem cells have no network; functions allowed one start fresh.
        let stem = if spec.network {
            None
        } else {
            self.take_stem(spec.runtime)
        };
        let started = match stem {
            Some(mut stem) => match stem.load_stem(spec, load_timeout).await {
                Ok(_) => Ok((stem, StartKind::Stem)),
                Err(outcome) => Err((outcome, StartKind::Stem)),
            },
            None => match self.start(spec, load_timeout).await {
                Ok(instance) => Ok((instance, StartKind::Fresh)),
                Err(outcome) => Err((outcome, StartKind::Fresh)),
            },
        };
        if let Ok((_, kind)) = &started {
            self.metrics
                .init_duration
                .with_label_values(&[kind.as_str()])
                .observe(t0.elapsed().as_secs_f64());
        }
        started
    }

    async fn start(&self, spec: &InstanceSpec, load_timeout: Duration) -> Result<Instance, Outcome> {
        let mut instance = Instance::spawn(&self.cfg, spec).await.map_err(|e| {
            tracing::error!(function_id = spec.function_id, error = %e, "instance failed to start");
            Outcome::failed(JobStatus::Crashed, "RuntimeStartFailed", e.to_string())
        })?;
        instance.load(spec, load_timeout).await?;
        Ok(instance)
    }

    fn put_idle(&self, key: String, spec: &InstanceSpec, warm_pool: &WarmPool, instance: Instance) {
        let mut st = self.lock();
        let list = st.idle.entry(key.clone()).or_default();
        list.push(Idle {
            instance,
            since: Instant::now(),
            memory_mb: u64::from(spec.memory_mb),
            keep_alive: warm_pool
                .keep_alive_seconds
                .map(Duration::from_secs)
                .unwrap_or(self.limits.keep_alive),
            function_id: spec.function_id.clone(),
            runtime: spec.runtime,
        });
        // Beyond the function's maxWarm: the oldest of its instances goes.
        let max_warm = warm_pool.max_warm.map(|m| m as usize).unwrap_or(usize::MAX);
        if list.len() > max_warm {
            st.remove_idle(&key, 0);
        }
        // Beyond the pool's idle cap: the least recently used of any function goes.
        while st.idle_count() > self.limits.max_idle {
            if !(st.evict_lru(false) || st.evict_lru(true)) {
                break;
            }
        }
        self.metrics.warm_instances.set(st.idle_count() as i64);
        self.gauges(&st);
        drop(st);
        self.freed.notify_waiters();
    }

    /// Makes the pool follow the warm-pool spec: each target keeps
    /// `minWarm` idle instances (started now if missing, within capacity).
    /// Targets no longer listed lose their protection, and their idle
    /// instances of other code versions are stopped. Returns the functions
    /// still short of their minWarm.
    pub async fn set_targets(&self, targets: &[WarmTarget]) -> BTreeMap<String, u32> {
        let wanted: HashMap<String, u32> = targets
            .iter()
            .filter(|t| t.warm_pool.min_warm > 0)
            .map(|t| (t.spec.pool_key(), t.warm_pool.min_warm))
            .collect();
        let mut starts = Vec::new();
        let mut short = BTreeMap::new();
        {
            let mut st = self.lock();
            let stale: Vec<String> = st
                .protected
                .keys()
                .filter(|k| !wanted.contains_key(*k))
                .cloned()
                .collect();
            st.protected = wanted.clone();
            for key in stale {
                // An old version or a function that no longer wants warm instances.
                while st.idle.contains_key(&key) {
                    st.remove_idle(&key, 0);
                }
            }
            for target in targets.iter().filter(|t| t.warm_pool.min_warm > 0) {
                let key = target.spec.pool_key();
                let have = st.idle.get(&key).map_or(0, Vec::len) + st.prewarming.get(&key).copied().unwrap_or(0);
                let missing = (target.warm_pool.min_warm as usize).saturating_sub(have);
                let mut started = 0;
                for _ in 0..missing {
                    let need = u64::from(target.spec.memory_mb);
                    let mut ok = st.reserve(need, self.limits.memory_mb);
                    // Make room from instances nobody asked to keep.
                    while !ok && st.evict_lru(false) {
                        ok = st.reserve(need, self.limits.memory_mb);
                    }
                    if !ok {
                        break;
                    }
                    *st.prewarming.entry(key.clone()).or_default() += 1;
                    starts.push(target.clone());
                    started += 1;
                }
                if missing > started {
                    short.insert(target.spec.function_id.clone(), (missing - started) as u32);
                }
            }
            st.short = short.clone();
            self.gauges(&st);
        }
        let prewarm = starts.iter().map(|target| async move {
            let key = target.spec.pool_key();
            let started = self.start_instance(&target.spec, MIN_LOAD_TIMEOUT).await;
            {
                let mut st = self.lock();
                if let Some(n) = st.prewarming.get_mut(&key) {
                    *n = n.saturating_sub(1);
                }
            }
            match started {
                Ok((instance, _)) => self.put_idle(key, &target.spec, &target.warm_pool, instance),
                Err((o, _)) => {
                    self.release(u64::from(target.spec.memory_mb));
                    tracing::warn!(
                        function_id = target.spec.function_id,
                        error = ?o.error,
                        "could not pre-warm an instance"
                    );
                }
            }
        });
        futures::future::join_all(prewarm).await;
        if !starts.is_empty() {
            self.refill_stem_cells();
        }
        short
    }

    /// Stops instances idle for longer than their keep-alive (keeping each
    /// function's minWarm); returns how many.
    pub fn evict_expired(&self) -> usize {
        let mut st = self.lock();
        let mut expired = Vec::new();
        for (key, list) in &st.idle {
            let keep = st.protected.get(key).copied().unwrap_or(0) as usize;
            // Oldest first; the newest `keep` stay whatever their age.
            let removable = list.len().saturating_sub(keep);
            for (i, idle) in list.iter().enumerate().take(removable) {
                if idle.since.elapsed() >= idle.keep_alive {
                    expired.push((key.clone(), i));
                }
            }
        }
        // Remove from the back so earlier indexes stay valid.
        expired.sort_by_key(|e| std::cmp::Reverse(e.1));
        for (key, i) in &expired {
            st.remove_idle(key, *i);
        }
        self.metrics.warm_instances.set(st.idle_count() as i64);
        self.gauges(&st);
        drop(st);
        if !expired.is_empty() {
            self.freed.notify_waiters();
        }
        expired.len()
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.lock();
        let mut idle_by_function = BTreeMap::new();
        let mut idle_by_runtime = BTreeMap::new();
        let mut by_runtime: BTreeMap<(String, String), i64> = BTreeMap::new();
        for list in st.idle.values() {
            for idle in list {
                *idle_by_function.entry(idle.function_id.clone()).or_insert(0) += 1;
                *idle_by_runtime.entry(idle.runtime.as_str().to_string()).or_insert(0) += 1;
                *by_runtime
                    .entry((idle.runtime.as_str().to_string(), idle.function_id.clone()))
                    .or_insert(0) += 1;
            }
        }
        self.metrics.pool_idle.reset();
        for ((runtime, function), n) in by_runtime {
            self.metrics.pool_idle.with_label_values(&[&runtime, &function]).set(n);
        }
        self.metrics.pool_peak_mb.set(st.peak_mb as i64);
        PoolStats {
            capacity_mb: self.limits.memory_mb,
            reserved_mb: st.reserved_mb,
            stem_cells_per_runtime: self.cfg.stem_cells,
            peak_reserved_mb: st.peak_mb,
            idle_instances: st.idle_count(),
            busy_instances: st.busy,
            stem_cells: st
                .stems
                .iter()
                .map(|(r, s)| (r.as_str().to_string(), s.len()))
                .collect(),
            idle_by_function,
            idle_by_runtime,
            short_of_min_warm: st.short.clone(),
        }
    }

    /// Stops every idle instance and stem cell (at shutdown).
    pub fn clear(&self) {
        let mut st = self.lock();
        st.stems.clear();
        st.idle.clear();
        st.protected.clear();
        stem_gauges(&self.metrics, &st);
        self.metrics.warm_instances.set(0);
    }
}
