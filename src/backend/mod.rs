//! Backend traits: small, object-safe, with a semantic error enum so callers
//! never see a storage-specific error type. Each trait has an embedded
//! implementation (`embedded`) and is exercised by the shared `conformance`
//! suite, which every further implementation must pass too.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::model::{FunctionRecord, Job, JobRecord, JobResult, LogEntry, WorkerStatus};

pub mod aws;
pub mod conformance;
pub mod embedded;
pub mod fanout;
pub mod redis;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong in a backend, in terms the API and worker can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("backend unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    pub fn unavailable(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Stores function code archives by key.
#[async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    /// Stores `data` under `key`, replacing any previous value atomically.
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;
    /// `Error::NotFound` when absent.
    async fn get(&self, key: &str) -> Result<Bytes>;
    /// Idempotent: deleting a missing key succeeds.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Keys starting with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// The bucket name put into jobs (`s3Bucket`).
    fn bucket(&self) -> &str;
    async fn ping(&self) -> Result<()>;
}

/// Stores function records.
#[async_trait]
pub trait FunctionRegistry: Send + Sync + 'static {
    /// Creates or replaces the record.
    async fn put(&self, record: &FunctionRecord) -> Result<()>;
    /// `Error::NotFound` when absent.
    async fn get(&self, function_id: &str) -> Result<FunctionRecord>;
    /// All records, sorted by function id.
    async fn list(&self) -> Result<Vec<FunctionRecord>>;
    /// `Error::NotFound` when absent.
    async fn delete(&self, function_id: &str) -> Result<()>;
    /// Atomically adds to the function's counters; a missing function is ignored.
    async fn add_usage(&self, function_id: &str, delta: &crate::model::UsageDelta) -> Result<()>;
    async fn ping(&self) -> Result<()>;
}

/// A change to the function records seen by a `ChangeFeed` subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionChange {
    /// The record of this function was written or deleted somewhere.
    Changed(String),
    /// Changes may have been missed (the feed (re)connected or the
    /// subscriber lagged): forget everything cached.
    Resync,
}

/// Tells every process holding function records when one changes, so their
/// caches need no short expiry (Redis pub/sub across processes).
#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Announces that `function_id`'s record was written or deleted.
    async fn publish(&self, function_id: &str) -> Result<()>;
    /// Changes from now on, by this process and every other one.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<FunctionChange>;
    /// Whether changes are being received right now; while not, a cache
    /// must fall back to a short expiry.
    fn is_live(&self) -> bool;
}

/// A received job: acknowledge it with its receipt once its result is stored.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub job: Job,
    pub receipt: String,
    /// 1 on the first delivery; grows with every redelivery.
    pub attempt: u32,
    /// Set when the message was not a valid job: `job` then holds only the
    /// identity that could be recovered, and the job must end as FAILED.
    pub defect: Option<String>,
}

/// An at-least-once job queue with visibility timeouts (SQS semantics).
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Durably enqueues the job before returning.
    async fn send(&self, job: &Job) -> Result<()>;
    /// As `send`, but the job becomes receivable only after `delay` (at most
    /// 15 minutes, SQS's limit; longer delays are cut to it).
    async fn send_delayed(&self, job: &Job, delay: Duration) -> Result<()>;
    /// Up to `max` jobs, waiting at most `wait` for the first one. Received jobs
    /// are invisible to other receivers until acked or their visibility lapses.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>>;
    /// Keeps a received job invisible for `by` from now.
    async fn extend(&self, receipt: &str, by: Duration) -> Result<()>;
    /// Removes the job for good. Idempotent.
    async fn ack(&self, receipt: &str) -> Result<()>;
    async fn ping(&self) -> Result<()>;
}

/// A one-shot wait for a job's result, registered before the job is enqueued.
pub struct Subscription {
    rx: oneshot::Receiver<JobResult>,
    // Unregisters the waiter when the subscription is dropped.
    _guard: Box<dyn Send + Sync>,
}

impl Subscription {
    pub fn new(rx: oneshot::Receiver<JobResult>, guard: Box<dyn Send + Sync>) -> Self {
        Subscription { rx, _guard: guard }
    }

    /// The result, or `None` if the bus went away.
    pub async fn recv(self) -> Option<JobResult> {
        self.rx.await.ok()
    }
}

/// Job states for `/status`, and result fan-out to waiting callers.
#[async_trait]
pub trait ResultBus: Send + Sync + 'static {
    /// Records a non-terminal state. Ignored when the job is already terminal,
    /// so a late "RUNNING" can never hide a result.
    async fn set_state(&self, record: &JobRecord) -> Result<()>;
    async fn get(&self, request_id: &str) -> Result<Option<JobRecord>>;
    /// Stores the terminal result and wakes subscribers. The first terminal
    /// result wins: a redelivered job cannot produce a second outcome; the
    /// stored (winning) record is returned.
    async fn publish(&self, submitted_at: chrono::DateTime<chrono::Utc>, result: &JobResult) -> Result<JobRecord>;
    async fn subscribe(&self, request_id: &str) -> Result<Subscription>;
    async fn ping(&self) -> Result<()>;
    /// True when terminal records published here survive any restart (then
    /// they need no second, durable copy).
    fn is_durable(&self) -> bool {
        false
    }
}

/// Durable documents by key: terminal job records, idempotency claims, dead
/// letters and inputs too large for a queue message. Unlike the result bus
/// (a fast, possibly volatile path) what is here survives any restart.
#[async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Stores `value` under `key` unless the key exists. `None` when stored;
    /// otherwise the value already there (the first writer wins, atomically,
    /// across processes).
    async fn create(&self, key: &str, value: Bytes) -> Result<Option<Bytes>>;
    /// Stores `value` under `key`, replacing any previous value.
    async fn put(&self, key: &str, value: Bytes) -> Result<()>;
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;
    /// Idempotent: deleting a missing key succeeds.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Up to `limit` keys starting with `prefix`, sorted.
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>>;
    async fn ping(&self) -> Result<()>;
}

/// What a function has in flight across the platform.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionLoad {
    /// Accepted jobs not finished yet (waiting, running or between retries).
    pub jobs: u64,
    /// Run slots held (jobs running under a `maxConcurrency`).
    pub running: u64,
}

/// Per-function counts shared by every API process and worker: accepted,
/// unfinished jobs (bounded by `maxQueued` at admission) and run slots
/// (bounded by `maxConcurrency`). Slots are leases: a worker that dies stops
/// renewing, and its slots come free when the lease lapses.
#[async_trait]
pub trait JobCounter: Send + Sync + 'static {
    /// Counts the job as accepted unless `limit` jobs of the function are
    /// counted already; false when refused. Counting the same job twice is a
    /// no-op (true).
    async fn admit(&self, function_id: &str, job_id: &str, limit: Option<u32>) -> Result<bool>;
    /// Stops counting the job (finished, or never queued after all).
    async fn done(&self, function_id: &str, job_id: &str) -> Result<()>;
    /// Takes one of `max` run slots for `lease`; false when all are held.
    /// Taking a slot the job holds already renews it.
    async fn acquire(&self, function_id: &str, job_id: &str, max: u32, lease: Duration) -> Result<bool>;
    async fn release(&self, function_id: &str, job_id: &str) -> Result<()>;
    /// Every function with jobs counted or slots held.
    async fn load(&self) -> Result<std::collections::BTreeMap<String, FunctionLoad>>;
}

/// Accepted jobs stop counting after this even if no `done` came (a job
/// lost with its record): the longest a job may wait (maxEventAgeSeconds).
pub const JOB_COUNT_HORIZON: Duration = Duration::from_secs(6 * 3600 + 600);

/// How many requests a key may make within any window of `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub window: Duration,
}

impl Quota {
    pub fn per_minute(limit: u32) -> Quota {
        Quota {
            limit,
            window: Duration::from_secs(60),
        }
    }
}

/// The outcome of one rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    /// Requests the key may still make now.
    pub remaining: u32,
    /// Seconds (rounded up) until the whole budget is back: the newest
    /// counted request leaves the window.
    pub reset_secs: u64,
    /// Seconds (rounded up, at least 1) until the next request would be
    /// allowed: the oldest counted request leaves the window. 0 when allowed.
    pub retry_after_secs: u64,
}

/// A sliding-window limit per key (a client IP): at most `limit` allowed
/// requests within ANY trailing window, so no burst of twice the limit can
/// straddle a window boundary (as a fixed window allows). Only allowed
/// requests are counted: a refused one does not extend the wait.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    async fn check(&self, key: &str) -> Result<RateDecision>;
    fn quota(&self) -> Quota;
    async fn ping(&self) -> Result<()>;
}

/// A decision from the requests counted in the window (their ages) — the
/// arithmetic both limiters share.
pub fn rate_decision(
    quota: Quota,
    allowed: bool,
    counted: u32,
    oldest_left: Duration,
    newest_left: Duration,
) -> RateDecision {
    let secs = |d: Duration| d.as_millis().div_ceil(1000) as u64;
    RateDecision {
        allowed,
        limit: quota.limit,
        remaining: quota.limit.saturating_sub(counted),
        reset_secs: secs(newest_left),
        retry_after_secs: if allowed { 0 } else { secs(oldest_left).max(1) },
    }
}

/// Where workers report that they are alive, and what they run.
#[async_trait]
pub trait WorkerDirectory: Send + Sync + 'static {
    /// Records the worker's status; it counts as offline after `ttl`
    /// without another report.
    async fn report(&self, status: &WorkerStatus, ttl: Duration) -> Result<()>;
    /// Every worker that reported within its ttl, sorted by id.
    async fn list(&self) -> Result<Vec<WorkerStatus>>;
    /// Removes a worker that is stopping.
    async fn remove(&self, worker_id: &str) -> Result<()>;
}

/// Invocation logs per function, kept for a limited time.
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Stores (or replaces) the entry of `entry.request_id`.
    async fn put(&self, entry: &LogEntry) -> Result<()>;
    /// The function's most recent entries, newest first.
    async fn list(&self, function_id: &str, limit: usize) -> Result<Vec<LogEntry>>;
    /// `Error::NotFound` when absent.
    async fn get(&self, function_id: &str, request_id: &str) -> Result<LogEntry>;
    async fn ping(&self) -> Result<()>;
}

/// The `limit` most recent entries, newest first (for `LogStore::list`).
pub fn newest_logs(mut entries: Vec<LogEntry>, limit: usize) -> Vec<LogEntry> {
    entries.sort_by_key(|e| std::cmp::Reverse(e.finished_at));
    entries.truncate(limit);
    entries
}
