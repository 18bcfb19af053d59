//! `/health`, `/metrics`, `/models`, and the probe router workers serve.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use crate::ai::ModelsResponse;
use crate::backend::{self, ArtifactStore, FunctionRegistry, JobQueue, LogStore, RateLimiter, RecordStore, ResultBus};
use crate::function::{warm_pool_spec, WarmPoolSpec};
use crate::metrics::Metrics;
use crate::model::WorkerStatus;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A backend a process depends on, for health checks.
#[derive(Clone)]
pub enum Backend {
    Artifacts(Arc<dyn ArtifactStore>),
    Registry(Arc<dyn FunctionRegistry>),
    Queue(Arc<dyn JobQueue>),
    ResultBus(Arc<dyn ResultBus>),
    Records(Arc<dyn RecordStore>),
    RateLimiter(Arc<dyn RateLimiter>),
    Logs(Arc<dyn LogStore>),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Artifacts(_) => "artifacts",
            Backend::Registry(_) => "registry",
            Backend::Queue(_) => "queue",
            Backend::ResultBus(_) => "resultBus",
            Backend::Records(_) => "records",
            Backend::RateLimiter(_) => "rateLimiter",
            Backend::Logs(_) => "logs",
        }
    }

    async fn ping(&self) -> backend::Result<()> {
        match self {
            Backend::Artifacts(b) => b.ping().await,
            Backend::Registry(b) => b.ping().await,
            Backend::Queue(b) => b.ping().await,
            Backend::ResultBus(b) => b.ping().await,
            Backend::Records(r) => r.ping().await,
            Backend::RateLimiter(b) => b.ping().await,
            Backend::Logs(b) => b.ping().await,
        }
    }
}

/// What `/health` checks and `/metrics` shows, for the API and for workers.
pub struct Probe {
    pub checks: Vec<Backend>,
    pub metrics: Arc<Metrics>,
    /// How functions run here, for processes that run them.
    pub runs: Option<Runs>,
}

/// What a process that runs functions says about it in `/health`.
#[derive(Clone, Debug)]
pub struct Runs {
    /// How function processes are isolated.
    pub isolation: String,
    /// Each runtime of the original platform, and whether it runs here.
    pub runtimes: BTreeMap<&'static str, RuntimeSupport>,
}

/// Whether this process runs a runtime's functions.
#[derive(Serialize, ToSchema, Clone, Debug, PartialEq)]
pub struct RuntimeSupport {
    pub available: bool,
    /// Why not, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    ok: bool,
    latency_ms: f64,
    /// `unavailable` or `timeout`; details are in the server log.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    status: &'static str,
    checks: BTreeMap<&'static str, Check>,
    /// How function processes are isolated here (absent where none run).
    #[serde(skip_serializing_if = "Option::is_none")]
    isolation: Option<String>,
    /// The runtimes functions may use here, by name (absent where none run).
    #[serde(skip_serializing_if = "Option::is_none")]
    runtimes: Option<BTreeMap<&'static str, RuntimeSupport>>,
}

async fn check(backend: &Backend) -> (&'static str, Check) {
    let t0 = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, backend.ping()).await;
    let latency_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            tracing::warn!(backend = backend.name(), error = %e, "health check failed");
            Some("unavailable")
        }
        Err(_) => Some("timeout"),
    };
    (
        backend.name(),
        Check {
            ok: error.is_none(),
            latency_ms,
            error,
        },
    )
}

impl Probe {
    /// Pings every backend at once: 200 when all answer, 503 otherwise.
    pub async fn health(&self) -> (StatusCode, Json<Health>) {
        let checks: BTreeMap<_, _> = futures::future::join_all(self.checks.iter().map(check))
            .await
            .into_iter()
            .collect();
        let healthy = checks.values().all(|c| c.ok);
        let code = if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (
            code,
            Json(Health {
                status: if healthy { "ok" } else { "degraded" },
                checks,
                isolation: self.runs.as_ref().map(|r| r.isolation.clone()),
                runtimes: self.runs.as_ref().map(|r| r.runtimes.clone()),
            }),
        )
    }

    fn metrics(&self) -> impl IntoResponse {
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            self.metrics.render(),
        )
    }
}

/// `/health` and `/metrics` alone: what a worker serves.
pub fn probe_router(probe: Arc<Probe>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|State(p): State<Arc<Probe>>| async move { p.health().await }),
        )
        .route(
            "/metrics",
            get(|State(p): State<Arc<Probe>>| async move { p.metrics() }),
        )
        .with_state(probe)
}

/// Pings every backend: 200 when all answer, 503 otherwise.
#[utoipa::path(
    get, path = "/health", tag = "system", security(()),
    responses((status = 200, body = Health), (status = 503, body = Health))
)]
pub async fn health(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    state.probe.health().await
}

/// Prometheus text exposition.
#[utoipa::path(
    get, path = "/metrics", tag = "system", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    state.probe.metrics()
}

/// Models of the AI node (`AI_NODE_URL`); a marked fallback (still 200, with
/// a `warning`) when it is unset or down. Needs no key, as in the original v2.4.
#[utoipa::path(get, path = "/models", tag = "system", security(()), responses((status = 200, body = ModelsResponse)))]
pub async fn models(State(state): State<Arc<ApiState>>) -> Json<ModelsResponse> {
    Json(state.ai.models().await)
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    workers: usize,
    concurrency: usize,
    active_jobs: usize,
    warm_instances: usize,
}

/// The original's runtimes: `pools` always has these keys.
const POOL_RUNTIMES: [&str; 4] = ["python", "nodejs", "cpp", "go"];

/// The original's `/system/status` fields (snake case, as it sends them)
/// with this platform's `totals`, `workers` and `functions` beside them.
#[derive(Serialize, ToSchema)]
pub struct SystemStatus {
    /// `online` when at least one worker reported recently, else `offline`.
    status: &'static str,
    /// Per runtime, summed over live workers: started processes ready to
    /// serve without a fresh start (idle warm instances and ready stem
    /// cells). `python`, `nodejs`, `cpp` and `go` are always present (0
    /// where this platform has no such runtime).
    #[schema(value_type = BTreeMap<String, usize>)]
    pools: BTreeMap<String, usize>,
    /// Jobs running on live workers.
    active_jobs: usize,
    /// Live workers (reported within their heartbeat ttl).
    worker_count: usize,
    /// The longest-running live worker's uptime; 0 when offline.
    uptime_seconds: f64,
    /// When this answer was made: epoch seconds (fractional).
    timestamp: f64,
    totals: Totals,
    workers: Vec<WorkerStatus>,
    /// Per function with unfinished jobs: `jobs` accepted and not finished
    /// (queued, running or between retries), `running` holding a run slot
    /// (counted for functions with a maxConcurrency). The signal to scale
    /// workers on.
    functions: std::collections::BTreeMap<String, crate::backend::FunctionLoad>,
}

/// Idle warm instances and stem cells per runtime over `workers`.
fn pools_of(workers: &[WorkerStatus]) -> BTreeMap<String, usize> {
    let mut pools: BTreeMap<String, usize> = POOL_RUNTIMES.iter().map(|r| (r.to_string(), 0)).collect();
    for pool in workers.iter().filter_map(|w| w.pool.as_ref()) {
        for (runtime, n) in pool.idle_by_runtime.iter().chain(pool.stem_cells.iter()) {
            *pools.entry(runtime.clone()).or_insert(0) += n;
        }
    }
    pools
}

/// Workers that reported recently, their warm pools and running jobs. The
/// original v2.8 requires the key here too.
#[utoipa::path(
    get, path = "/system/status", tag = "system",
    responses((status = 200, body = SystemStatus), (status = 503, body = super::ErrorBody))
)]
pub async fn system_status(State(state): State<Arc<ApiState>>) -> Result<Json<SystemStatus>, super::error::ApiError> {
    let workers = state.directory.list().await?;
    let totals = Totals {
        workers: workers.len(),
        concurrency: workers.iter().map(|w| w.concurrency).sum(),
        active_jobs: workers.iter().map(|w| w.active_jobs).sum(),
        warm_instances: workers.iter().map(|w| w.warm_instances).sum(),
    };
    let functions = state.jobs.counter().load().await?;
    let now = chrono::Utc::now();
    let uptime_seconds = workers
        .iter()
        .map(|w| (now - w.started_at).num_milliseconds().max(0) as f64 / 1000.0)
        .fold(0.0, f64::max);
    Ok(Json(SystemStatus {
        status: if workers.is_empty() { "offline" } else { "online" },
        pools: pools_of(&workers),
        active_jobs: totals.active_jobs,
        worker_count: totals.workers,
        uptime_seconds,
        timestamp: now.timestamp_micros() as f64 / 1_000_000.0,
        totals,
        workers,
        functions,
    }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerCapacity {
    workers: usize,
    /// Sum of the workers' pool memory (WORKER_MEMORY_MB).
    capacity_mb: u64,
    reserved_mb: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmPoolView {
    /// What each worker should keep started (from the functions' warmPool settings).
    spec: WarmPoolSpec,
    /// What the workers that reported recently offer.
    capacity: WorkerCapacity,
}

/// The warm-pool spec every worker follows, with per-runtime totals (slots and
/// memory per worker) for sizing the worker group, and the capacity on hand.
#[utoipa::path(
    get, path = "/warm-pool", tag = "system",
    responses((status = 200, body = WarmPoolView), (status = 503, body = super::ErrorBody))
)]
pub async fn warm_pool(State(state): State<Arc<ApiState>>) -> Result<Json<WarmPoolView>, super::error::ApiError> {
    let functions = state.functions.list().await?;
    let workers = state.directory.list().await?;
    let pools = workers.iter().filter_map(|w| w.pool.as_ref());
    let stem_cells = pools.clone().map(|p| p.stem_cells_per_runtime).max().unwrap_or(0);
    Ok(Json(WarmPoolView {
        spec: warm_pool_spec(&functions, stem_cells),
        capacity: WorkerCapacity {
            workers: workers.len(),
            capacity_mb: pools.clone().map(|p| p.capacity_mb).sum(),
            reserved_mb: pools.map(|p| p.reserved_mb).sum(),
        },
    }))
}
