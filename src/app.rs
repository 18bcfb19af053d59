//! The composition root: each role picks its backends here, in one place,
//! and its parts (API, worker, housekeeping) start and stop together.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ai::AiClient;
use crate::api::system::{probe_router, Backend, Probe, Runs, RuntimeSupport};
use crate::api::{self, middleware::hash_key, ApiSettings, ApiState};
use crate::backend::aws::{DynamoLogStore, DynamoRegistry, S3ArtifactStore, S3RecordStore, SqsQueue};
use crate::backend::embedded::{
    Db, EmbeddedLogStore, EmbeddedQueue, EmbeddedRecordStore, EmbeddedRegistry, EmbeddedResultBus, InProcessDirectory,
    InProcessJobCounter, InProcessRateLimiter, LocalArtifactStore, LocalChangeFeed,
};
use crate::backend::redis::{
    connect, RedisChangeFeed, RedisDirectory, RedisJobCounter, RedisRateLimiter, RedisResultBus,
};
use crate::backend::{
    self, ArtifactStore, ChangeFeed, FunctionRegistry, JobQueue, LogStore, Quota, RateLimiter, ResultBus,
    WorkerDirectory,
};
use crate::config::{AiConfig, ApiConfig, CloudConfig, HttpConfig, OperatorConfig, PoolConfig, UpConfig, WorkerConfig};
use crate::function::FunctionService;
use crate::jobs::{Jobs, Ledger};
use crate::metrics::Metrics;
use crate::model::JobRecord;
use crate::operator::leader::LeaseLock;
use crate::operator::Reconciler;
use crate::runtime::{Pool, PoolLimits, RuntimeConfig, Sandbox, UidPool, Users};
use crate::worker::cache::ArtifactCache;
use crate::worker::{Worker, WorkerBackends, WorkerSettings};

/// How long terminal job records are kept for `/status` by `infra up`.
const JOB_RETENTION: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// How long `infra up` keeps invocation logs.
const LOG_RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(7);
/// How long a leader's Lease holds without renewal.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// Deliveries after which a job is given up as LOST.
const MAX_ATTEMPTS: u32 = 5;
/// Where durable job records live in the artifacts bucket.
const RECORDS_PREFIX: &str = "records/";
/// How long `infra up` keeps each kind of durable job record (in S3 the
/// bucket's lifecycle rules decide; see docs/operations.md).
const RECORD_RETENTION: &[(&str, chrono::TimeDelta)] = &[
    ("results/", JOB_RETENTION),
    ("payloads/", JOB_RETENTION),
    ("idempotency/", crate::jobs::IDEMPOTENCY_WINDOW),
    ("dead-letters/", chrono::TimeDelta::days(14)),
];
/// Where programs' output files live in the artifact store.
const OUTPUTS_PREFIX: &str = "outputs/";
/// Most dead letters counted for the depth gauge.
const DEAD_LETTER_COUNT_LIMIT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("storage: {0}")]
    Backend(#[from] backend::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("API key file {path}")]
    ApiKeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    // The details come from the source chain (printed once by main).
    #[error("cannot reach Kubernetes (KUBECONFIG or the in-cluster config)")]
    Kube(#[source] kube::Error),
    #[error("operator: {0}")]
    Operator(#[from] crate::operator::controller::OperatorError),
    #[error("server: {0}")]
    Serve(#[source] std::io::Error),
    #[error("data dir {path}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("instance uid lock dir (INSTANCE_UID_LOCK_DIR) {path}")]
    UidLockDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running role.
pub struct Running {
    /// Where the HTTP server listens (the API; for a worker, its probes).
    pub addr: SocketAddr,
    /// The API key in force (API roles).
    pub api_key: Option<String>,
    /// True when the key was generated (and should be shown to the user once).
    pub api_key_generated: bool,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AppError>>,
}

impl Running {
    /// Begins a graceful shutdown: stop accepting, drain, stop.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Resolves when the role began stopping (asked to, or on its own).
    pub async fn stopping(&self) {
        self.shutdown.cancelled().await
    }

    /// Waits until everything has stopped.
    pub async fn wait(self) -> Result<(), AppError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(AppError::Serve(std::io::Error::other(e))),
        }
    }
}

/// What a role runs.
#[derive(Default)]
struct Parts {
    router: Option<axum::Router>,
    worker: Option<Arc<Worker>>,
    pool: Option<Arc<Pool>>,
    functions: Option<Arc<FunctionService>>,
    embedded_bus: Option<Arc<EmbeddedResultBus>>,
    embedded_logs: Option<Arc<EmbeddedLogStore>>,
    embedded_records: Option<Arc<EmbeddedRecordStore>>,
    /// The data dir's artifact store, whose program outputs expire here.
    embedded_artifacts: Option<Arc<LocalArtifactStore>>,
    /// The jobs whose dead letters and per-function load the API exports (API roles).
    jobs: Option<(Jobs, Arc<Metrics>)>,
    /// The Kubernetes controller (`infra operator`).
    operator: Option<(kube::Client, Reconciler, Arc<Metrics>, Option<LeaseLock>)>,
    /// A folder of Function resources (`infra up --functions DIR`).
    folder: Option<(std::path::PathBuf, Reconciler)>,
}

/// `infra up`: everything in this process, embedded backends.
pub async fn start_up(cfg: UpConfig) -> Result<Running, AppError> {
    crate::tls::install_crypto_provider();
    private_dir(&cfg.data_dir, data_dir_mode(&cfg.pool))?;
    let db = Db::open(&cfg.data_dir)?;
    let embedded_artifacts = Arc::new(LocalArtifactStore::open(cfg.data_dir.join("artifacts"))?);
    let artifacts: Arc<dyn ArtifactStore> = embedded_artifacts.clone();
    let registry: Arc<dyn FunctionRegistry> = Arc::new(EmbeddedRegistry::new(db.clone()));
    let (queue, recovered) = EmbeddedQueue::open(db.clone(), cfg.visibility_timeout).await?;
    let queue: Arc<dyn JobQueue> = Arc::new(queue);
    let embedded_bus = Arc::new(EmbeddedResultBus::new(db.clone()));
    // Jobs accepted before the last stop run again; show them as pending meanwhile.
    for job in &recovered.0 {
        embedded_bus.set_state(&JobRecord::pending(job)).await?;
    }
    if !recovered.0.is_empty() {
        tracing::info!(jobs = recovered.0.len(), "re-queued jobs left from the previous run");
    }
    let bus: Arc<dyn ResultBus> = embedded_bus.clone();
    let embedded_records = Arc::new(EmbeddedRecordStore::new(db.clone()));
    let jobs = Jobs::new(
        bus,
        Ledger::new(embedded_records.clone()),
        Arc::new(InProcessJobCounter::default()),
    );
    let limiters = Limiters::of(&cfg.http, |quota, _| {
        Arc::new(InProcessRateLimiter::new(quota)) as Arc<dyn RateLimiter>
    });
    let (api_key, generated) = resolve_api_key(&cfg.http, &cfg.data_dir)?;
    let metrics = Arc::new(Metrics::new()?);
    // One process holds every cache: an in-process feed reaches them all.
    let feed: Arc<dyn ChangeFeed> = Arc::new(LocalChangeFeed::default());
    let functions = Arc::new(FunctionService::new(artifacts.clone(), registry, Some(feed)));
    let directory: Arc<dyn WorkerDirectory> = Arc::new(InProcessDirectory::default());
    let embedded_logs = Arc::new(EmbeddedLogStore::new(db.clone()));
    let logs: Arc<dyn LogStore> = embedded_logs.clone();
    let parts = ApiParts {
        functions: functions.clone(),
        queue: queue.clone(),
        jobs: jobs.clone(),
        limiters,
        directory: directory.clone(),
        logs: Some(logs.clone()),
        runs: Some(runs(&cfg.pool)),
    };
    let router = api::router(api_state(&cfg.http, &cfg.ai, &api_key, parts, &metrics));
    let backends = WorkerBackends {
        queue,
        jobs: jobs.clone(),
        directory,
        logs: Some(logs),
        registry: Some(functions.registry().clone()),
        changes: Some(functions.changes()),
    };
    let runner = Runner {
        pool: &cfg.pool,
        ai: &cfg.ai,
        data_dir: &cfg.data_dir,
        visibility: cfg.visibility_timeout,
    };
    let (worker, pool) = runner.build(Duration::from_secs(1), backends, artifacts, metrics.clone())?;
    let parts = Parts {
        router: Some(router),
        worker: Some(worker),
        pool: Some(pool),
        folder: cfg
            .functions_dir
            .clone()
            .map(|dir| (dir, Reconciler::new(functions.clone()))),
        functions: Some(functions),
        embedded_bus: Some(embedded_bus),
        embedded_logs: Some(embedded_logs),
        embedded_records: Some(embedded_records),
        embedded_artifacts: Some(embedded_artifacts),
        jobs: Some((jobs.clone(), metrics.clone())),
        operator: None,
    };
    let mut running = launch(cfg.http.listen, parts, cfg.shutdown_timeout).await?;
    running.api_key = Some(api_key);
    running.api_key_generated = generated;
    Ok(running)
}

/// `infra api`: the HTTP API over S3, DynamoDB, SQS and Redis.
pub async fn start_api(cfg: ApiConfig) -> Result<Running, AppError> {
    let aws = &cfg.cloud.aws;
    let artifacts: Arc<dyn ArtifactStore> = Arc::new(S3ArtifactStore::new(aws, &cfg.cloud.bucket).await);
    let registry: Arc<dyn FunctionRegistry> = Arc::new(DynamoRegistry::new(aws, &cfg.table).await);
    // The API only sends; the visibility timeout matters to receivers.
    let queue: Arc<dyn JobQueue> = Arc::new(SqsQueue::new(aws, &cfg.cloud.sqs_url, Duration::from_secs(30)).await);
    let (bus, client, conn) = redis_bus(&cfg.cloud).await?;
    let counter = Arc::new(RedisJobCounter::new(conn.clone(), &cfg.cloud.redis_key_prefix));
    let jobs = Jobs::new(bus, ledger(&cfg.cloud).await, counter);
    let prefix = &cfg.cloud.redis_key_prefix;
    let feed: Arc<dyn ChangeFeed> = Arc::new(RedisChangeFeed::new(client, conn.clone(), prefix));
    let limiters = Limiters::of(&cfg.http, |quota, name| {
        Arc::new(RedisRateLimiter::new(
            conn.clone(),
            quota,
            &format!("{prefix}rl:{name}:"),
        )) as Arc<dyn RateLimiter>
    });
    let directory: Arc<dyn WorkerDirectory> = Arc::new(RedisDirectory::new(conn, prefix));
    let api_key = cfg.http.api_key.clone().unwrap_or_default();
    let metrics = Arc::new(Metrics::new()?);
    let functions = Arc::new(FunctionService::new(artifacts, registry, Some(feed)));
    let logs = logs_store(&cfg.cloud).await;
    let parts = ApiParts {
        functions: functions.clone(),
        queue,
        jobs: jobs.clone(),
        limiters,
        directory,
        logs,
        runs: None,
    };
    let router = api::router(api_state(&cfg.http, &cfg.ai, &api_key, parts, &metrics));
    let parts = Parts {
        router: Some(router),
        functions: Some(functions),
        jobs: Some((jobs.clone(), metrics.clone())),
        ..Parts::default()
    };
    let mut running = launch(cfg.http.listen, parts, cfg.shutdown_timeout).await?;
    running.api_key = Some(api_key);
    Ok(running)
}

/// `infra worker`: consume SQS, run functions, publish results to Redis.
pub async fn start_worker(cfg: WorkerConfig) -> Result<Running, AppError> {
    crate::tls::install_crypto_provider();
    private_dir(&cfg.data_dir, data_dir_mode(&cfg.pool))?;
    let aws = &cfg.cloud.aws;
    let artifacts: Arc<dyn ArtifactStore> = Arc::new(S3ArtifactStore::new(aws, &cfg.cloud.bucket).await);
    let queue: Arc<dyn JobQueue> = Arc::new(SqsQueue::new(aws, &cfg.cloud.sqs_url, cfg.visibility_timeout).await);
    let (bus, client, conn) = redis_bus(&cfg.cloud).await?;
    let counter = Arc::new(RedisJobCounter::new(conn.clone(), &cfg.cloud.redis_key_prefix));
    let jobs = Jobs::new(bus.clone(), ledger(&cfg.cloud).await, counter);
    let feed = RedisChangeFeed::new(client, conn.clone(), &cfg.cloud.redis_key_prefix);
    let changes = notify_on_changes(Arc::new(feed));
    let directory: Arc<dyn WorkerDirectory> = Arc::new(RedisDirectory::new(conn, &cfg.cloud.redis_key_prefix));
    let metrics = Arc::new(Metrics::new()?);
    let logs = logs_store(&cfg.cloud).await;
    let mut checks = vec![
        Backend::Artifacts(artifacts.clone()),
        Backend::Queue(queue.clone()),
        Backend::ResultBus(bus),
        Backend::Records(jobs.ledger().store().clone()),
    ];
    checks.extend(logs.clone().map(Backend::Logs));
    let probe = Arc::new(Probe {
        checks,
        metrics: metrics.clone(),
        runs: Some(runs(&cfg.pool)),
    });
    let registry = match &cfg.table {
        Some(table) => Some(Arc::new(DynamoRegistry::new(aws, table).await) as Arc<dyn FunctionRegistry>),
        None => None,
    };
    let backends = WorkerBackends {
        queue,
        jobs,
        directory,
        logs,
        registry,
        changes: Some(changes),
    };
    let runner = Runner {
        pool: &cfg.pool,
        ai: &cfg.ai,
        data_dir: &cfg.data_dir,
        visibility: cfg.visibility_timeout,
    };
    // SQS long polling: one request waits up to 20 s for work.
    let (worker, pool) = runner.build(Duration::from_secs(20), backends, artifacts, metrics)?;
    let parts = Parts {
        router: Some(probe_router(probe)),
        worker: Some(worker),
        pool: Some(pool),
        ..Parts::default()
    };
    launch(cfg.listen, parts, cfg.shutdown_timeout).await
}

/// `infra operator`: reconcile Function resources into S3 and DynamoDB.
pub async fn start_operator(cfg: OperatorConfig) -> Result<Running, AppError> {
    crate::tls::install_crypto_provider();
    let artifacts: Arc<dyn ArtifactStore> = Arc::new(S3ArtifactStore::new(&cfg.aws, &cfg.bucket).await);
    let registry: Arc<dyn FunctionRegistry> = Arc::new(DynamoRegistry::new(&cfg.aws, &cfg.table).await);
    let client = kube_client().await?;
    let metrics = Arc::new(Metrics::new()?);
    let probe = Arc::new(Probe {
        checks: vec![
            Backend::Artifacts(artifacts.clone()),
            Backend::Registry(registry.clone()),
        ],
        metrics: metrics.clone(),
        runs: None,
    });
    let feed = match &cfg.redis {
        Some((url, prefix)) => {
            let (client, conn) = connect(url).await?;
            Some(Arc::new(RedisChangeFeed::new(client, conn, prefix)) as Arc<dyn ChangeFeed>)
        }
        None => None,
    };
    let functions = Arc::new(FunctionService::new(artifacts, registry, feed));
    let lease = cfg.lease_namespace.as_deref().map(|ns| {
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("{}-{}", crate::worker::hostname(), std::process::id()));
        LeaseLock::new(client.clone(), ns, "infra-operator", &identity, LEASE_DURATION)
    });
    let parts = Parts {
        router: Some(probe_router(probe)),
        operator: Some((client, Reconciler::new(functions), metrics, lease)),
        ..Parts::default()
    };
    launch(cfg.listen, parts, cfg.shutdown_timeout).await
}

async fn logs_store(cloud: &CloudConfig) -> Option<Arc<dyn LogStore>> {
    let table = cloud.logs_table.as_ref()?;
    Some(Arc::new(
        DynamoLogStore::new(&cloud.aws, table, cloud.logs_retention).await,
    ))
}

/// Durable job records in the artifacts bucket, under `records/`.
async fn ledger(cloud: &CloudConfig) -> Ledger {
    Ledger::new(Arc::new(
        S3RecordStore::new(&cloud.aws, &cloud.bucket, RECORDS_PREFIX).await,
    ))
}

async fn redis_bus(
    cloud: &CloudConfig,
) -> Result<(Arc<dyn ResultBus>, redis::Client, redis::aio::ConnectionManager), AppError> {
    let (client, conn) = connect(&cloud.redis_url).await?;
    let bus = RedisResultBus::new(client.clone(), conn.clone(), cloud.job_ttl, &cloud.redis_key_prefix);
    if !bus.ready(Duration::from_secs(5)).await {
        tracing::warn!("the Redis result subscription is not connected yet; /health says so until it is");
    }
    Ok((Arc::new(bus), client, conn))
}

/// A worker follows the warm-pool spec as soon as a function changes
/// (its periodic poll stays as the fallback). Holds the feed for its life.
fn notify_on_changes(feed: Arc<dyn ChangeFeed>) -> Arc<tokio::sync::Notify> {
    let notify = Arc::new(tokio::sync::Notify::new());
    let mut heard = feed.subscribe();
    let wake = notify.clone();
    tokio::spawn(async move {
        let _feed = feed;
        while !matches!(
            heard.recv().await,
            Err(tokio::sync::broadcast::error::RecvError::Closed)
        ) {
            wake.notify_one();
        }
    });
    notify
}

/// The API's two request limits; `None` where disabled.
struct Limiters {
    runs: Option<Arc<dyn RateLimiter>>,
    auth_failures: Option<Arc<dyn RateLimiter>>,
}

impl Limiters {
    /// `make(quota, name)` builds one limiter; `name` tells their keys apart.
    fn of(http: &HttpConfig, make: impl Fn(Quota, &str) -> Arc<dyn RateLimiter>) -> Limiters {
        let per_minute = |limit: u32, name: &str| (limit > 0).then(|| make(Quota::per_minute(limit), name));
        Limiters {
            runs: per_minute(http.rate_limit_per_minute, "run"),
            auth_failures: per_minute(http.auth_failure_limit_per_minute, "authfail"),
        }
    }
}

/// The backends the API uses.
struct ApiParts {
    functions: Arc<FunctionService>,
    queue: Arc<dyn JobQueue>,
    jobs: Jobs,
    limiters: Limiters,
    directory: Arc<dyn WorkerDirectory>,
    logs: Option<Arc<dyn LogStore>>,
    /// How functions run, when this process runs them.
    runs: Option<Runs>,
}

fn api_state(
    http: &HttpConfig,
    ai: &AiConfig,
    api_key: &str,
    parts: ApiParts,
    metrics: &Arc<Metrics>,
) -> Arc<ApiState> {
    let ApiParts {
        functions,
        queue,
        jobs,
        limiters,
        directory,
        logs,
        runs,
    } = parts;
    let mut checks = vec![
        Backend::Artifacts(functions.artifacts().clone()),
        Backend::Registry(functions.registry().clone()),
        Backend::Queue(queue.clone()),
        Backend::ResultBus(jobs.bus().clone()),
        Backend::Records(jobs.ledger().store().clone()),
    ];
    // Both limiters use one backend: one check.
    let limiter_backend = limiters.runs.clone().or_else(|| limiters.auth_failures.clone());
    checks.extend(limiter_backend.map(Backend::RateLimiter));
    checks.extend(logs.clone().map(Backend::Logs));
    Arc::new(ApiState {
        functions,
        queue,
        jobs,
        limiter: limiters.runs,
        auth_limiter: limiters.auth_failures,
        metrics: metrics.clone(),
        probe: Arc::new(Probe {
            checks,
            metrics: metrics.clone(),
            runs,
        }),
        directory,
        logs,
        activity: Default::default(),
        ai: ai_client(ai),
        api_key_hash: hash_key(api_key),
        settings: ApiSettings {
            trust_forwarded_for: http.trust_forwarded_for,
            sync_timeout: http.sync_timeout,
            cors_origins: http.cors_origins.clone(),
        },
    })
}

fn pool(cfg: &PoolConfig, data_dir: &Path, metrics: &Arc<Metrics>) -> Result<Arc<Pool>, AppError> {
    let instances_dir = data_dir.join("instances");
    // Working dirs of instances from a previous run are garbage now.
    let _ = std::fs::remove_dir_all(&instances_dir);
    let users = instance_users(cfg)?;
    // Same rule as the data dir: traversable only for instance users without
    // a sandbox (with one, bubblewrap mounts their dirs); never listable.
    private_dir(&instances_dir, data_dir_mode(cfg))?;
    let sandbox = cfg.bwrap.clone().map(|bwrap| Sandbox {
        bwrap,
        layout: crate::runtime::host::layout(),
    });
    if matches!(users, Users::Root) {
        tracing::warn!("INSTANCE_USER=root: function instances run as root (without capabilities, with process, memory and disk limits)");
    }
    tracing::info!(isolation = isolation(cfg), "function isolation");
    let pool = Arc::new(Pool::new(
        RuntimeConfig {
            python: cfg.python.clone(),
            node: cfg.node.clone(),
            instances_dir,
            start_timeout: Duration::from_secs(10),
            sandbox,
            stem_cells: cfg.stem_cells,
            users,
            cgroups: cfg.cgroups.clone(),
            tmp_bytes: cfg.tmp_bytes,
        },
        PoolLimits {
            keep_alive: cfg.keep_alive,
            max_idle: cfg.max_warm_instances,
            memory_mb: cfg.memory_mb,
        },
        metrics.clone(),
    ));
    pool.refill_stem_cells();
    Ok(pool)
}

/// A client of the cluster (KUBECONFIG or in-cluster) that names itself: the
/// API server records a request without a User-Agent (the finalizer patches
/// of kube's helper) under the field manager `unknown`.
async fn kube_client() -> Result<kube::Client, AppError> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| AppError::Kube(kube::Error::InferConfig(e)))?;
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(concat!("infra-operator/", env!("CARGO_PKG_VERSION"))),
    ));
    kube::Client::try_from(config).map_err(AppError::Kube)
}

/// How many unprivileged uids instances may use at once.
const INSTANCE_UIDS: u32 = 1024;

/// Whom instances run as (the configuration already refused set-ups that
/// would make them root without `INSTANCE_USER=root`).
fn instance_users(cfg: &PoolConfig) -> Result<Users, AppError> {
    Ok(if !crate::runtime::host::is_root() {
        Users::Worker
    } else if cfg.instances_as_root {
        Users::Root
    } else {
        // Shared by every worker on the host; only root (the workers) uses it.
        use std::os::unix::fs::DirBuilderExt;
        let dir = &cfg.instance_uid_lock_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| AppError::UidLockDir {
                path: dir.display().to_string(),
                source,
            })?;
        root_only_dir(dir)?;
        let shared = crate::runtime::host::subuid_overlaps(cfg.instance_uid_base, INSTANCE_UIDS);
        if !shared.is_empty() {
            tracing::warn!(
                users = shared.join(", "),
                "INSTANCE_UID_BASE's range overlaps subordinate uids (/etc/subuid): those users' rootless containers would share uids with instances; choose another base"
            );
        }
        Users::Own(UidPool::new(
            cfg.instance_uid_base,
            INSTANCE_UIDS,
            cfg.instance_uid_lock_dir.clone(),
        ))
    })
}

/// Refuses a lock dir that is a symbolic link or not root's, and makes a
/// root's one 0700: whoever else could write there could remove a lock file
/// another worker holds (two workers, one uid) or hold every lock.
fn root_only_dir(dir: &Path) -> Result<(), AppError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let failed = |source: std::io::Error| AppError::UidLockDir {
        path: dir.display().to_string(),
        source,
    };
    let refuse = |why: String| failed(std::io::Error::new(std::io::ErrorKind::PermissionDenied, why));
    let meta = std::fs::symlink_metadata(dir).map_err(failed)?;
    if !meta.file_type().is_dir() {
        return Err(refuse("not a directory (a symbolic link?)".into()));
    }
    if meta.uid() != 0 {
        return Err(refuse(format!("must be root's, is uid {}'s", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
    }
    Ok(())
}

/// Creates `dir` (and parents) and gives it `mode`: the platform's state is
/// the worker's alone.
fn private_dir(dir: &Path, mode: u32) -> Result<(), AppError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)))
        .map_err(|source| AppError::DataDir {
            path: dir.display().to_string(),
            source,
        })
}

/// The data dir's mode: 0700, or 0711 when instance users must traverse it to
/// reach their own dirs (no sandbox); every entry in it is private either way.
fn data_dir_mode(cfg: &PoolConfig) -> u32 {
    if cfg.bwrap.is_none() && crate::runtime::host::is_root() && !cfg.instances_as_root {
        0o711
    } else {
        0o700
    }
}

/// What `/health` says about running functions here.
fn runs(cfg: &PoolConfig) -> Runs {
    Runs {
        isolation: isolation(cfg),
        runtimes: runtime_support(cfg.node.is_some()),
    }
}

/// The original platform's four runtimes and whether they run here: Python
/// always (the configuration refuses to start without an interpreter),
/// Node.js with a node binary.
fn runtime_support(has_node: bool) -> BTreeMap<&'static str, RuntimeSupport> {
    let yes = || RuntimeSupport {
        available: true,
        reason: None,
    };
    let no = |why: &str| RuntimeSupport {
        available: false,
        reason: Some(why.to_string()),
    };
    let not_yet = "not run by Infra Controller yet";
    BTreeMap::from([
        ("python", yes()),
        (
            "nodejs",
            if has_node {
                yes()
            } else {
                no("no node binary on this worker (NODE_BIN)")
            },
        ),
        ("go", no(not_yet)),
        ("cpp", no(not_yet)),
    ])
}

/// What `/health` and the start-up log say about function isolation.
fn isolation(cfg: &PoolConfig) -> String {
    let view = if cfg.bwrap.is_some() {
        "bwrap: minimal view (system dirs, own code read-only, bounded /tmp), no network unless asked, no capabilities"
    } else {
        "none: no sandbox (process limits only)"
    };
    let user = match (crate::runtime::host::is_root(), cfg.instances_as_root) {
        (true, false) => "own unprivileged uid per instance",
        (true, true) => "ROOT: instances run as root (INSTANCE_USER=root)",
        (false, _) => "the worker's user",
    };
    let limits = match cfg.cgroups.as_ref() {
        Some(cg) => {
            let version = match cg.version() {
                crate::runtime::cgroup::Version::V2 => "v2",
                crate::runtime::cgroup::Version::V1 => "v1",
            };
            match (cg.has_memory(), cg.has_pids()) {
                (true, true) => format!("memory and process cgroups ({version}) per instance, plus rlimits"),
                (true, false) => format!("memory cgroup ({version}) per instance, plus rlimits"),
                (false, true) => format!("process cgroup ({version}) per instance; memory: rlimits only"),
                (false, false) => "rlimits only".to_string(),
            }
        }
        None => "memory: rlimits only (no cgroups)".to_string(),
    };
    format!("{view}; {user}; {limits}")
}

fn ai_client(cfg: &AiConfig) -> AiClient {
    AiClient::new(cfg.node_url.clone(), cfg.default_model.clone())
}

/// What a role needs to run functions: the worker and its warm pool.
struct Runner<'a> {
    pool: &'a PoolConfig,
    ai: &'a AiConfig,
    data_dir: &'a Path,
    visibility: Duration,
}

impl Runner<'_> {
    fn build(
        &self,
        receive_wait: Duration,
        backends: WorkerBackends,
        artifacts: Arc<dyn ArtifactStore>,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<Worker>, Arc<Pool>), AppError> {
        let pool = pool(self.pool, self.data_dir, &metrics)?;
        let settings = WorkerSettings {
            concurrency: self.pool.worker_concurrency,
            receive_wait,
            visibility: self.visibility,
            max_attempts: MAX_ATTEMPTS,
            ai: ai_client(self.ai),
            ai_max_calls: self.ai.max_calls,
        };
        let cache = ArtifactCache::new(self.data_dir.join("cache"), artifacts);
        Ok((
            Arc::new(Worker::new(settings, backends, cache, pool.clone(), metrics)),
            pool,
        ))
    }
}

async fn launch(listen: SocketAddr, parts: Parts, drain: Duration) -> Result<Running, AppError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| AppError::Listen { addr: listen, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| AppError::Listen { addr: listen, source })?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, parts, shutdown.clone(), drain));
    tracing::info!(addr = %addr, "listening");
    Ok(Running {
        addr,
        api_key: None,
        api_key_generated: false,
        shutdown,
        task,
    })
}

/// A client must send a request's headers within this time, or its
/// connection is closed (also an idle keep-alive connection), so slow or
/// silent clients cannot hold connections open for ever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Accepts connections until `shutdown`, serving each with HTTP/1.1 (with
/// the header read timeout above; no upgrades: nothing here uses them); returns the handle that drains them.
async fn accept(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> hyper_util::server::graceful::GracefulShutdown {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return graceful,
        };
        // Small request/response exchanges: do not let Nagle hold back a response.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = router
            .clone()
            .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(remote));
                req.map(axum::body::Body::new)
            });
        let conn = http.serve_connection(
            TokioIo::new(tcp),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

async fn serve(
    listener: TcpListener,
    parts: Parts,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), AppError> {
    let worker_task = parts.worker.map(|w| tokio::spawn(w.run(shutdown.clone(), drain)));
    let folder_task = parts
        .folder
        .map(|(dir, reconciler)| tokio::spawn(crate::operator::folder::watch(dir, reconciler, shutdown.clone())));
    let operator_task = parts.operator.map(|(client, reconciler, metrics, lease)| {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let result = crate::operator::controller::run(client, reconciler, metrics, lease, stop.clone()).await;
            // Without its controller the operator is useless: stop the process.
            stop.cancel();
            result
        })
    });
    let embedded = Embedded {
        bus: parts.embedded_bus,
        logs: parts.embedded_logs,
        records: parts.embedded_records,
        artifacts: parts.embedded_artifacts,
    };
    let housekeeping = tokio::spawn(housekeeping(
        parts.functions.clone(),
        parts.pool,
        embedded,
        parts.jobs,
        shutdown.clone(),
    ));
    match parts.router {
        Some(router) => {
            let graceful = accept(listener, router, shutdown.clone()).await;
            // In-flight requests get the drain time, then are cut.
            if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
                tracing::warn!("requests still open after the drain time; closing them");
            }
        }
        None => shutdown.cancelled().await,
    }
    shutdown.cancel();
    for t in [worker_task, folder_task].into_iter().flatten() {
        let _ = t.await;
    }
    if let Some(t) = operator_task {
        if let Ok(Err(e)) = t.await {
            return Err(AppError::Operator(e));
        }
    }
    let _ = housekeeping.await;
    if let Some(f) = parts.functions {
        f.flush_invocations().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The embedded stores housekeeping expires (`infra up`).
struct Embedded {
    bus: Option<Arc<EmbeddedResultBus>>,
    logs: Option<Arc<EmbeddedLogStore>>,
    records: Option<Arc<EmbeddedRecordStore>>,
    artifacts: Option<Arc<LocalArtifactStore>>,
}

async fn housekeeping(
    functions: Option<Arc<FunctionService>>,
    pool: Option<Arc<Pool>>,
    embedded: Embedded,
    jobs: Option<(Jobs, Arc<Metrics>)>,
    shutdown: CancellationToken,
) {
    let Embedded {
        bus: embedded_bus,
        logs: embedded_logs,
        records: embedded_records,
        artifacts: embedded_artifacts,
    } = embedded;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        n += 1;
        if let Some(pool) = &pool {
            let evicted = pool.evict_expired();
            // Stem cells skipped while the pool was full come back as memory frees up.
            pool.refill_stem_cells();
            if evicted > 0 {
                tracing::debug!(evicted, "stopped idle instances past their keep-alive");
            }
        }
        if let Some(functions) = &functions {
            functions.flush_invocations().await;
        }
        // Redis expires job records itself; the embedded bus purges them here.
        if let (Some(bus), 1) = (&embedded_bus, n % 600) {
            match bus.purge_finished_before(chrono::Utc::now() - JOB_RETENTION).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "removed expired job records"),
                Err(e) => tracing::warn!(error = %e, "could not purge expired job records"),
            }
        }
        if let (Some(records), 1) = (&embedded_records, n % 600) {
            let now = chrono::Utc::now();
            for (prefix, keep) in RECORD_RETENTION {
                match records.purge_before(prefix, now - *keep).await {
                    Ok(0) => {}
                    Ok(purged) => tracing::info!(purged, prefix, "removed expired job records"),
                    Err(e) => tracing::warn!(error = %e, "could not purge expired job records"),
                }
            }
        }
        if let (Some((jobs, metrics)), 1) = (&jobs, n % 5) {
            match jobs.counter().load().await {
                Ok(load) => {
                    metrics.function_jobs.reset();
                    for (f, l) in load {
                        metrics
                            .function_jobs
                            .with_label_values(&[&f, "unfinished"])
                            .set(l.jobs as i64);
                        metrics
                            .function_jobs
                            .with_label_values(&[&f, "running"])
                            .set(l.running as i64);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "could not read the per-function load"),
            }
        }
        if let (Some((jobs, metrics)), 1) = (&jobs, n % 30) {
            match jobs.ledger().count_dead_letters(DEAD_LETTER_COUNT_LIMIT).await {
                Ok(depth) => metrics.dead_letter_depth.set(depth as i64),
                Err(e) => tracing::debug!(error = %e, "could not count dead letters"),
            }
        }
        // Programs' output files go with their job records.
        if let (Some(artifacts), 1) = (&embedded_artifacts, n % 600) {
            let cutoff = std::time::SystemTime::now() - JOB_RETENTION.to_std().unwrap_or_default();
            match artifacts.purge_before(OUTPUTS_PREFIX, cutoff).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "removed expired program output files"),
                Err(e) => tracing::warn!(error = %e, "could not purge expired program output files"),
            }
        }
        if let (Some(logs), 1) = (&embedded_logs, n % 600) {
            match logs.purge_before(chrono::Utc::now() - LOG_RETENTION).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "removed expired invocation logs"),
                Err(e) => tracing::warn!(error = %e, "could not purge expired invocation logs"),
            }
        }
    }
}

/// The configured key, or the one kept in the data dir, or a new one (saved
/// there with mode 0600 so restarts keep it).
fn resolve_api_key(http: &HttpConfig, data_dir: &Path) -> Result<(String, bool), AppError> {
    if let Some(k) = &http.api_key {
        return Ok((k.clone(), false));
    }
    let path = data_dir.join("api-key");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_names_every_runtime_of_the_original_and_why_one_is_missing() {
        let with_node = runtime_support(true);
        assert_eq!(
            with_node.keys().copied().collect::<Vec<_>>(),
            ["cpp", "go", "nodejs", "python"]
        );
        assert!(with_node["python"].available && with_node["nodejs"].available);
        assert!(!with_node["go"].available && !with_node["cpp"].available);
        let without = runtime_support(false);
        assert!(!without["nodejs"].available);
        assert!(without["nodejs"].reason.as_deref().unwrap_or("").contains("NODE_BIN"));
        assert!(without["python"].available);
    }

    #[test]
    fn the_uid_lock_dir_must_be_roots_alone_and_no_link() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: only a root worker uses the lock dir");
            return;
        }
        let reason = |e: AppError| std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("uids");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(root_only_dir(&dir).is_ok());
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "root's dir is made root's alone");
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(reason(root_only_dir(&link).unwrap_err()).contains("not a directory"));
        let theirs = base.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(4_000_000), None).unwrap();
        assert!(reason(root_only_dir(&theirs).unwrap_err()).contains("must be root's"));
    }
}
