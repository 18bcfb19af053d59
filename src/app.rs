//! The composition root: backends are chosen here, in one place, and the
//! roles (API, worker, housekeeping) are started and stopped together.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ai::AiClient;
use crate::api::{self, middleware::hash_key, ApiSettings, ApiState};
use crate::backend::embedded::{
    Db, EmbeddedQueue, EmbeddedRegistry, EmbeddedResultBus, InProcessRateLimiter, LocalArtifactStore,
};
use crate::backend::{self, JobQueue, RateLimiter, ResultBus};
use crate::config::UpConfig;
use crate::function::FunctionService;
use crate::metrics::Metrics;
use crate::model::JobRecord;
use crate::runtime::{Pool, RuntimeConfig};
use crate::worker::cache::ArtifactCache;
use crate::worker::{Worker, WorkerConfig};

/// How long terminal job records are kept for `/status`.
const JOB_RETENTION: chrono::TimeDelta = chrono::TimeDelta::hours(24);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("storage: {0}")]
    Backend(#[from] backend::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("API key file {path}: {source}")]
    ApiKeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("server: {0}")]
    Serve(#[source] std::io::Error),
}

/// A running `infra up`.
pub struct Running {
    pub addr: SocketAddr,
    pub api_key: String,
    /// True when the key was generated (and should be shown to the user once).
    pub api_key_generated: bool,
    pub recovered_jobs: usize,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AppError>>,
}

impl Running {
    /// Begins a graceful shutdown: stop accepting, drain, stop.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until everything has stopped.
    pub async fn wait(self) -> Result<(), AppError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(AppError::Serve(std::io::Error::other(e))),
        }
    }
}

/// Starts the whole platform in this process with embedded backends.
pub async fn start_up(cfg: UpConfig) -> Result<Running, AppError> {
    let db = Db::open(&cfg.data_dir)?;
    let artifacts = Arc::new(LocalArtifactStore::open(cfg.data_dir.join("artifacts"))?);
    let registry = Arc::new(EmbeddedRegistry::new(db.clone()));
    let (queue, recovered) = EmbeddedQueue::open(db.clone(), cfg.visibility_timeout).await?;
    let queue: Arc<dyn JobQueue> = Arc::new(queue);
    let bus = Arc::new(EmbeddedResultBus::new(db.clone()));
    // Jobs accepted before the last stop run again; show them as pending meanwhile.
    for job in &recovered.0 {
        bus.set_state(&JobRecord::pending(job)).await?;
    }
    let recovered_jobs = recovered.0.len();
    if recovered_jobs > 0 {
        tracing::info!(jobs = recovered_jobs, "re-queued jobs left from the previous run");
    }
    let limiter = (cfg.rate_limit_per_minute > 0)
        .then(|| Arc::new(InProcessRateLimiter::new(cfg.rate_limit_per_minute)) as Arc<dyn RateLimiter>);
    let metrics = Arc::new(Metrics::new()?);
    let functions = Arc::new(FunctionService::new(artifacts.clone(), registry));
    let (api_key, api_key_generated) = resolve_api_key(&cfg)?;

    let state = Arc::new(ApiState {
        functions: functions.clone(),
        queue: queue.clone(),
        bus: bus.clone(),
        limiter,
        metrics: metrics.clone(),
        ai: AiClient::new(cfg.ai_node_url.clone(), cfg.default_model.clone()),
        api_key_hash: hash_key(&api_key),
        settings: ApiSettings {
            trust_forwarded_for: cfg.trust_forwarded_for,
            sync_timeout: cfg.sync_timeout,
        },
    });

    let instances_dir = cfg.data_dir.join("instances");
    // Working dirs of instances from a previous run are garbage now.
    let _ = std::fs::remove_dir_all(&instances_dir);
    let pool = Arc::new(Pool::new(
        RuntimeConfig {
            python: cfg.python.clone(),
            instances_dir,
            start_timeout: Duration::from_secs(10),
        },
        cfg.keep_alive,
        cfg.max_warm_instances,
        metrics.clone(),
    ));
    let worker = Arc::new(Worker::new(
        WorkerConfig {
            concurrency: cfg.worker_concurrency,
            receive_wait: Duration::from_secs(1),
            visibility: cfg.visibility_timeout,
            max_attempts: 5,
        },
        queue,
        bus.clone(),
        ArtifactCache::new(cfg.data_dir.join("cache"), artifacts),
        pool.clone(),
        metrics,
    ));

    let listener = TcpListener::bind(cfg.listen).await.map_err(|source| AppError::Listen {
        addr: cfg.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| AppError::Listen {
        addr: cfg.listen,
        source,
    })?;
    let shutdown = CancellationToken::new();
    let router = api::router(state);
    let task = tokio::spawn(serve(
        listener,
        router,
        worker,
        functions,
        pool,
        bus,
        shutdown.clone(),
        cfg.shutdown_timeout,
    ));
    tracing::info!(addr = %addr, data_dir = %cfg.data_dir.display(), "listening");
    Ok(Running {
        addr,
        api_key,
        api_key_generated,
        recovered_jobs,
        shutdown,
        task,
    })
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    worker: Arc<Worker>,
    functions: Arc<FunctionService>,
    pool: Arc<Pool>,
    bus: Arc<EmbeddedResultBus>,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), AppError> {
    let worker_task = tokio::spawn(worker.run(shutdown.clone(), drain));
    let housekeeping = tokio::spawn(housekeeping(functions.clone(), pool, bus, shutdown.clone()));
    // Small request/response exchanges: do not let Nagle hold back a response.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let mut server = std::pin::pin!(server.into_future());
    let served = tokio::select! {
        r = &mut server => r,
        _ = shutdown.cancelled() => {
            // In-flight requests get the drain time, then are cut.
            match tokio::time::timeout(drain, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("requests still open after the drain time; closing them");
                    Ok(())
                }
            }
        }
    };
    shutdown.cancel();
    let _ = worker_task.await;
    let _ = housekeeping.await;
    functions.flush_invocations().await;
    tracing::info!("stopped");
    served.map_err(AppError::Serve)
}

async fn housekeeping(
    functions: Arc<FunctionService>,
    pool: Arc<Pool>,
    bus: Arc<EmbeddedResultBus>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        n += 1;
        let evicted = pool.evict_expired();
        if evicted > 0 {
            tracing::debug!(evicted, "stopped idle instances past their keep-alive");
        }
        functions.flush_invocations().await;
        if n % 600 == 1 {
            match bus.purge_finished_before(chrono::Utc::now() - JOB_RETENTION).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "removed expired job records"),
                Err(e) => tracing::warn!(error = %e, "could not purge expired job records"),
            }
        }
    }
}

/// The configured key, or the one kept in the data dir, or a new one (saved
/// there with mode 0600 so restarts keep it).
fn resolve_api_key(cfg: &UpConfig) -> Result<(String, bool), AppError> {
    if let Some(k) = &cfg.api_key {
        return Ok((k.clone(), false));
    }
    let path = cfg.data_dir.join("api-key");
    let file_err = |source| AppError::ApiKeyFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(k) if k.trim().len() >= 16 => return Ok((k.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_err(e)),
    }
    let key = format!("ik_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    write_private(&path, &key).map_err(file_err)?;
    Ok((key, true))
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}
