//! Plain serde types shared by every part of the platform: function records,
//! the job (task) wire format and job results.
//!
//! Field names follow the original Node controller/worker so mixed fleets can
//! migrate: task JSON `requestId, functionId, runtime, memoryMb, s3Bucket,
//! s3Key, timeoutMs, input, modelId, envVars`; result JSON `functionId,
//! status, exitCode, stdout, stderr, durationMs, peakMemoryBytes`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Language runtimes a function can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Python,
    Nodejs,
}

impl Runtime {
    pub const ALL: &'static [Runtime] = &[Runtime::Python, Runtime::Nodejs];

    pub fn parse(s: &str) -> Option<Runtime> {
        match s.trim().to_ascii_lowercase().as_str() {
            "python" | "python3" => Some(Runtime::Python),
            "nodejs" | "node" => Some(Runtime::Nodejs),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python => "python",
            Runtime::Nodejs => "nodejs",
        }
    }

    /// The runtime a single uploaded source file is written in, by extension.
    pub fn of_file(name: &str) -> Option<Runtime> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".py") {
            Some(Runtime::Python)
        } else if lower.ends_with(".js") || lower.ends_with(".mjs") || lower.ends_with(".cjs") {
            Some(Runtime::Nodejs)
        } else {
            None
        }
    }

    /// `module.function` used when a function names none.
    pub fn default_handler(self) -> &'static str {
        match self {
            Runtime::Python => "main.handler",
            Runtime::Nodejs => "index.handler",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many initialized instances of a function workers keep, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmPool {
    /// Instances each worker keeps initialized (handler imported) at all
    /// times, so the first request is warm.
    #[serde(default)]
    pub min_warm: u32,
    /// Most idle instances of this function a worker keeps (default: the
    /// worker's MAX_WARM_INSTANCES).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_warm: Option<u32>,
    /// How long an idle instance beyond `minWarm` is kept (default: the
    /// worker's WARM_KEEP_ALIVE_SECONDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_seconds: Option<u64>,
}

/// A registered function, as stored in the `FunctionRegistry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionRecord {
    pub function_id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Artifact key in the `ArtifactStore`: `functions/{id}/{sha256}.zip`.
    pub s3_key: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub original_name: String,
    pub runtime: Runtime,
    pub memory_mb: u32,
    pub timeout_ms: u64,
    /// `module.function`, e.g. `main.handler`.
    pub handler: String,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    pub uploaded_at: DateTime<Utc>,
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub invocations: u64,
    #[serde(default)]
    pub warm_pool: WarmPool,
    /// The function may use the network (sandboxed functions have none otherwise).
    #[serde(default)]
    pub network: bool,
    /// Set when a Kubernetes `Function` resource owns this function
    /// (`namespace/name`); such functions are read-only over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What happens to an asynchronous run that fails.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Most runs of this function at once across all workers (none: unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Most accepted, unfinished jobs; beyond it `/run` answers 429 (none: unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u32>,
    /// Runs that reached an outcome (the denominator of the average duration).
    #[serde(default)]
    pub finished_runs: u64,
    /// Sum of those runs' `durationMs` (the original controller's `totalDuration`).
    #[serde(default)]
    pub total_duration: f64,
    /// Runs that reported the handler's own time, and its sum in ms (the
    /// original's `handlerInvocations` and `totalHandlerDuration`).
    #[serde(default)]
    pub handler_invocations: u64,
    #[serde(default)]
    pub total_handler_duration: f64,
}

/// Amounts added to a function's counters at once
/// (`FunctionRegistry::add_usage`): admissions and finished runs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UsageDelta {
    pub invocations: u64,
    pub finished_runs: u64,
    pub total_duration: f64,
    pub handler_invocations: u64,
    pub total_handler_duration: f64,
}

impl UsageDelta {
    /// One finished run of `duration_ms`, with the handler's own time when known.
    pub fn finished(duration_ms: f64, handler_ms: Option<f64>) -> Self {
        let handler_ms = handler_ms.filter(|h| h.is_finite() && *h >= 0.0);
        UsageDelta {
            finished_runs: 1,
            total_duration: if duration_ms.is_finite() {
                duration_ms.max(0.0)
            } else {
                0.0
            },
            handler_invocations: u64::from(handler_ms.is_some()),
            total_handler_duration: handler_ms.unwrap_or(0.0),
            ..UsageDelta::default()
        }
    }

    pub fn merge(&mut self, other: &UsageDelta) {
        self.invocations = self.invocations.saturating_add(other.invocations);
        self.finished_runs = self.finished_runs.saturating_add(other.finished_runs);
        self.total_duration += other.total_duration;
        self.handler_invocations = self.handler_invocations.saturating_add(other.handler_invocations);
        self.total_handler_duration += other.total_handler_duration;
    }

    pub fn apply_to(&self, record: &mut FunctionRecord) {
        record.invocations = record.invocations.saturating_add(self.invocations);
        record.finished_runs = record.finished_runs.saturating_add(self.finished_runs);
        record.total_duration += self.total_duration;
        record.handler_invocations = record.handler_invocations.saturating_add(self.handler_invocations);
        record.total_handler_duration += self.total_handler_duration;
    }
}

impl FunctionRecord {
    /// Mean `durationMs` of finished runs, rounded (0 before the first).
    pub fn avg_duration(&self) -> u64 {
        if self.finished_runs == 0 {
            return 0;
        }
        (self.total_duration / self.finished_runs as f64).round().max(0.0) as u64
    }

    /// Mean handler time in ms to three decimals, when any run reported it.
    pub fn avg_handler_duration(&self) -> Option<f64> {
        (self.handler_invocations > 0)
            .then(|| (self.total_handler_duration / self.handler_invocations as f64 * 1000.0).round() / 1000.0)
    }
}

/// Retries and dead-lettering of asynchronous runs (Lambda's asynchronous
/// invocation settings). Synchronous runs are never retried: their caller
/// holds the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryPolicy {
    /// Runs after the first one when it ends ERROR, TIMEOUT or CRASHED,
    /// 0 to 5 (default 2, as Lambda). A job out of retries is dead-lettered.
    pub max_retries: u32,
    /// Wait before the first retry in seconds, doubled for each further one
    /// (0 to 300, default 1).
    pub backoff_seconds: u32,
    /// Retry runs that ran out of memory too (default false: the same input
    /// would most likely run out again).
    pub retry_on_oom: bool,
    /// A job still waiting this long after it was accepted is dead-lettered
    /// without running (60 to 21600, default 21600 = 6 h, as Lambda).
    pub max_event_age_seconds: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            backoff_seconds: 1,
            retry_on_oom: false,
            max_event_age_seconds: 21_600,
        }
    }
}

/// One failed run of a job, kept on the job for its retries and dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptFailure {
    pub attempt: u32,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    pub finished_at: DateTime<Utc>,
}

/// Where a job is in its life beyond the original task fields: how it was
/// run, which run this is, what failed before. All optional on the wire, so
/// the original's tasks read as first runs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobLifecycle {
    /// An `x-async` run: only these are retried and dead-lettered.
    #[serde(default, rename = "async", skip_serializing_if = "std::ops::Not::not")]
    pub asynchronous: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The run this message starts (1 for the first; 0 on the wire means 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// Earlier runs that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<AttemptFailure>,
    /// The input, when too large for a queue message, is stored under this
    /// key of the record store (`input` is then null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_ref: Option<String>,
    /// The dead-lettered job this one re-runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive_of: Option<String>,
    /// The function's `maxConcurrency` when the job was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl JobLifecycle {
    /// The number of the run this message starts.
    pub fn first_attempt(&self) -> u32 {
        self.attempt.max(1)
    }
}

/// One unit of work on the queue (the original "task" JSON, plus a few fields
/// the original ignores).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub request_id: String,
    pub function_id: String,
    pub runtime: Runtime,
    pub memory_mb: u32,
    pub s3_bucket: String,
    pub s3_key: String,
    pub timeout_ms: u64,
    #[serde(default)]
    pub input: serde_json::Value,
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    #[serde(default = "default_handler")]
    pub handler: String,
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub warm_pool: WarmPool,
    #[serde(default)]
    pub network: bool,
    /// The HTTP `x-request-id` of the call that created the job, for tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub submitted_at: DateTime<Utc>,
    #[serde(flatten)]
    pub lifecycle: JobLifecycle,
}

pub fn default_handler() -> String {
    "main.handler".to_string()
}

/// Lifecycle of a job. Everything from `Success` on is terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Pending,
    Running,
    Success,
    Error,
    Timeout,
    Oom,
    Crashed,
    Lost,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Pending | JobStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "PENDING",
            JobStatus::Running => "RUNNING",
            JobStatus::Success => "SUCCESS",
            JobStatus::Error => "ERROR",
            JobStatus::Timeout => "TIMEOUT",
            JobStatus::Oom => "OOM",
            JobStatus::Crashed => "CRASHED",
            JobStatus::Lost => "LOST",
        }
    }
}

/// Why a job did not succeed: the handler's exception, or the platform's reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorInfo {
    #[serde(rename = "type")]
    pub error_type: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

/// The terminal outcome of a job, as published on `result:{requestId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    pub request_id: String,
    pub function_id: String,
    pub status: JobStatus,
    /// The handler's return value (JSON).
    #[serde(default)]
    pub result: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Time spent in the handler itself, measured inside the instance.
    #[serde(default)]
    pub duration_ms: f64,
    #[serde(default)]
    pub peak_memory_bytes: u64,
    #[serde(default)]
    pub cold_start: bool,
    /// `warm`, `stem` or `fresh` (see `runtime::StartKind`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_kind: Option<crate::runtime::StartKind>,
    /// Time the instance spent starting and importing the handler (cold starts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_ms: Option<f64>,
    #[serde(default)]
    pub attempt: u32,
    /// Tokens the function used on the AI node, when it called it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::ai::Usage>,
    pub finished_at: DateTime<Utc>,
    /// Earlier runs of this job that failed (retries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptFailure>,
    /// The job ran out of retries (or age) and is kept among the dead letters.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead_lettered: bool,
}

impl JobResult {
    /// A result produced by the platform rather than by the handler.
    pub fn platform(job: &Job, status: JobStatus, error_type: &str, message: impl Into<String>) -> Self {
        JobResult {
            request_id: job.request_id.clone(),
            function_id: job.function_id.clone(),
            status,
            result: serde_json::Value::Null,
            error: Some(ErrorInfo {
                error_type: error_type.to_string(),
                message: message.into(),
                traceback: None,
            }),
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            duration_ms: 0.0,
            peak_memory_bytes: 0,
            cold_start: false,
            start_kind: None,
            init_ms: None,
            attempt: job.lifecycle.first_attempt(),
            usage: None,
            finished_at: Utc::now(),
            attempts: job.lifecycle.failures.clone(),
            dead_lettered: false,
        }
    }

    /// This result as one failed run, for the job's history.
    pub fn as_failure(&self) -> AttemptFailure {
        AttemptFailure {
            attempt: self.attempt,
            status: self.status,
            error: self.error.clone(),
            finished_at: self.finished_at,
        }
    }
}

/// A job that ran out of retries or age, with everything needed to run it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub job_id: String,
    pub function_id: String,
    /// Why it was given up.
    pub reason: String,
    /// The last run's status.
    pub status: JobStatus,
    /// The input the job was given.
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    /// Every failed run, oldest first.
    pub attempts: Vec<AttemptFailure>,
    pub submitted_at: DateTime<Utc>,
    pub dead_lettered_at: DateTime<Utc>,
}

/// What `/status/{jobId}` knows about a job: its state, and the result once terminal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub request_id: String,
    pub function_id: String,
    pub status: JobStatus,
    pub submitted_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
}

impl JobRecord {
    pub fn pending(job: &Job) -> Self {
        JobRecord {
            request_id: job.request_id.clone(),
            function_id: job.function_id.clone(),
            status: JobStatus::Pending,
            submitted_at: job.submitted_at,
            updated_at: Utc::now(),
            result: None,
        }
    }

    pub fn with_status(&self, status: JobStatus) -> Self {
        JobRecord {
            status,
            updated_at: Utc::now(),
            ..self.clone()
        }
    }

    pub fn finished(submitted_at: DateTime<Utc>, result: JobResult) -> Self {
        JobRecord {
            request_id: result.request_id.clone(),
            function_id: result.function_id.clone(),
            status: result.status,
            submitted_at,
            updated_at: result.finished_at,
            result: Some(result),
        }
    }
}

/// One invocation's log, kept for a while per function (logs table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    pub function_id: String,
    pub request_id: String,
    pub status: JobStatus,
    pub stdout: String,
    pub stderr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    pub duration_ms: f64,
    pub peak_memory_bytes: u64,
    pub cold_start: bool,
    pub attempt: u32,
    pub finished_at: DateTime<Utc>,
    /// True when output was cut to fit the store's item size.
    #[serde(default)]
    pub truncated: bool,
}

/// Keeps at most `max` bytes of `s` (on a char boundary); true if it cut.
fn clip(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_string(), false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (format!("{}\n[truncated {} bytes]", &s[..end], s.len() - end), true)
}

impl LogEntry {
    /// The log of a result, each output stream cut to `max_stream_bytes`.
    pub fn of(result: &JobResult, max_stream_bytes: usize) -> LogEntry {
        let (stdout, cut_out) = clip(&result.stdout, max_stream_bytes);
        let (stderr, cut_err) = clip(&result.stderr, max_stream_bytes);
        let error = result.error.clone().map(|mut e| {
            if let Some(tb) = &e.traceback {
                e.traceback = Some(clip(tb, max_stream_bytes / 4).0);
            }
            e.message = clip(&e.message, max_stream_bytes / 4).0;
            e
        });
        LogEntry {
            function_id: result.function_id.clone(),
            request_id: result.request_id.clone(),
            status: result.status,
            stdout,
            stderr,
            error,
            duration_ms: result.duration_ms,
            peak_memory_bytes: result.peak_memory_bytes,
            cold_start: result.cold_start,
            attempt: result.attempt,
            finished_at: result.finished_at,
            truncated: cut_out || cut_err,
        }
    }
}

/// What a worker reports about itself (heartbeat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    pub worker_id: String,
    pub hostname: String,
    pub started_at: DateTime<Utc>,
    pub reported_at: DateTime<Utc>,
    pub concurrency: usize,
    pub active_jobs: usize,
    pub warm_instances: usize,
    /// Idle warm instances per function id.
    pub pools: BTreeMap<String, usize>,
    /// The warm pool's memory and instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<crate::runtime::PoolStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_wire_format_matches_the_original_names() {
        let job = Job {
            request_id: "r".into(),
            function_id: "f".into(),
            runtime: Runtime::Python,
            memory_mb: 128,
            s3_bucket: "b".into(),
            s3_key: "k".into(),
            timeout_ms: 1000,
            input: serde_json::json!({"a": 1}),
            model_id: None,
            env_vars: BTreeMap::new(),
            handler: default_handler(),
            sha256: String::new(),
            warm_pool: WarmPool::default(),
            network: false,
            trace_id: None,
            submitted_at: Utc::now(),
            lifecycle: JobLifecycle::default(),
        };
        let v = serde_json::to_value(&job).unwrap();
        for key in [
            "requestId",
            "functionId",
            "runtime",
            "memoryMb",
            "s3Bucket",
            "s3Key",
            "timeoutMs",
            "input",
            "modelId",
            "envVars",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["runtime"], "python");
    }

    #[test]
    fn log_entries_are_cut_to_size_on_char_boundaries() {
        let job = crate::backend::conformance::sample_job("f");
        let mut r = JobResult::platform(&job, JobStatus::Error, "E", "m".repeat(1000));
        r.stdout = "é".repeat(100); // 200 bytes
        r.stderr = "short".into();
        let e = LogEntry::of(&r, 51);
        assert!(e.truncated);
        assert!(
            e.stdout.starts_with(&"é".repeat(25)) && e.stdout.contains("[truncated 150 bytes]"),
            "{}",
            e.stdout
        );
        assert_eq!(e.stderr, "short");
        assert!(e.error.unwrap().message.len() < 100);
        assert!(!LogEntry::of(&r, 1000).truncated);
    }

    #[test]
    fn terminal_statuses() {
        assert!(!JobStatus::Pending.is_terminal());
        assert!(!JobStatus::Running.is_terminal());
        for s in [
            JobStatus::Success,
            JobStatus::Error,
            JobStatus::Timeout,
            JobStatus::Oom,
            JobStatus::Crashed,
            JobStatus::Lost,
        ] {
            assert!(s.is_terminal());
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn runtime_parse_is_lenient_on_case_only() {
        assert_eq!(Runtime::parse("Python"), Some(Runtime::Python));
        assert_eq!(Runtime::parse("ruby"), None);
        assert_eq!(Runtime::parse("node"), Some(Runtime::Nodejs));
        assert_eq!(Runtime::of_file("index.MJS"), Some(Runtime::Nodejs));
    }
}
