//! Plain serde types shared by every part of the platform: function records,
//! the job (task) wire format and job results.
//!
//! Field names follow the original Node controller/Python worker so mixed
//! fleets work both ways (docs/compat-wire.md): task JSON `requestId,
//! functionId, runtime, memoryMb, s3Bucket, s3Key, timeoutMs, input, modelId,
//! envVars` (everything else optional when read); result JSON `requestId,
//! functionId, workerId, status` (SUCCESS/FAILED/...), `exitCode, stdout,
//! stderr, durationMs, handlerDurationMs, peakMemoryBytes, allocatedMemoryMb,
//! optimizationTip, estimatedSavings, recommendedMemoryMb` (`finishedAt` and
//! this project's other fields optional when read, unknown fields kept).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Language runtimes a function can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    #[serde(alias = "python3")]
    Python,
    #[serde(alias = "node")]
    Nodejs,
}

impl Runtime {
    pub const ALL: &'static [Runtime] = &[Runtime::Python, Runtime::Nodejs];

    /// Also takes versioned names as the original dashboard and Lambda write
    /// them (`python3.11`, `nodejs20.x`): the version is the worker's.
    pub fn parse(s: &str) -> Option<Runtime> {
        let s = s.trim().to_ascii_lowercase();
        let versioned = |prefix: &str| {
            s.strip_prefix(prefix)
                .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.' || c == 'x'))
        };
        match s.as_str() {
            "python" | "python3" => Some(Runtime::Python),
            "nodejs" | "node" => Some(Runtime::Nodejs),
            _ if versioned("python3.") => Some(Runtime::Python),
            _ if versioned("nodejs") => Some(Runtime::Nodejs),
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

/// How a function is run: a *handler* (a function called in a warm
/// instance, one invocation after another) or a *program* (the original
/// platform's functions: a script started for each run, reading `PAYLOAD` or
/// `PAYLOAD_FILE`, printing its output and writing files to `OUTPUT_DIR`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FunctionStyle {
    #[default]
    Handler,
    Program,
}

impl FunctionStyle {
    pub fn parse(s: &str) -> Option<FunctionStyle> {
        match s.trim().to_ascii_lowercase().as_str() {
            "handler" => Some(FunctionStyle::Handler),
            "program" => Some(FunctionStyle::Program),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FunctionStyle::Handler => "handler",
            FunctionStyle::Program => "program",
        }
    }

    pub fn is_handler(&self) -> bool {
        *self == FunctionStyle::Handler
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
    /// `handler` (warm instances) or `program` (a process per run).
    #[serde(default)]
    pub style: FunctionStyle,
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
    /// Runs after the first one when it ends FAILED, TIMEOUT or CRASHED,
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
/// the original ignores). Read through [`JobWire`], so the original
/// controller's tasks (no `submittedAt`, `handler`, ...) are jobs too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", from = "JobWire")]
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
    /// `program` runs the function as a process of its own (absent: handler).
    #[serde(default, skip_serializing_if = "FunctionStyle::is_handler")]
    pub style: FunctionStyle,
    /// The HTTP `x-request-id` of the call that created the job, for tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub submitted_at: DateTime<Utc>,
    #[serde(flatten)]
    pub lifecycle: JobLifecycle,
    /// The message came from the original controller (it has no
    /// `submittedAt`): its `job:{id}` key must only ever hold the result,
    /// as the original's `/status` returns whatever is there. Not on the wire.
    #[serde(skip)]
    #[schema(ignore)]
    pub original_format: bool,
}

pub fn default_handler() -> String {
    "main.handler".to_string()
}

/// The original worker's defaults for a task (section 4.1 of the contract).
const ORIGINAL_DEFAULT_MEMORY_MB: u32 = 128;
const ORIGINAL_DEFAULT_TIMEOUT_MS: u64 = 300_000;

fn unknown_function() -> String {
    "unknown".to_string()
}

fn original_memory_mb() -> u32 {
    ORIGINAL_DEFAULT_MEMORY_MB
}

fn original_timeout_ms() -> u64 {
    ORIGINAL_DEFAULT_TIMEOUT_MS
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// The original sends `envVars` values of any JSON type and its worker
/// stringifies them; strings stay as they are, `null` is dropped, booleans
/// become `True`/`False` (Python's `str`, which the original's functions
/// saw), and numbers, arrays and objects their JSON text. Names an upload
/// here would refuse (not `[A-Za-z_][A-Za-z0-9_]*`, or reserved for the
/// loader and runtimes) and values with NUL are dropped, as the original
/// worker drops names that collide with its own: its controller checks
/// none of this, and this worker applies them inside the sandbox.
fn env_values<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: Option<BTreeMap<String, serde_json::Value>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !crate::function::settings::reserved_env_name(k)
        })
        .filter_map(|(k, v)| {
            let text = match v {
                serde_json::Value::Null => return None,
                serde_json::Value::String(s) => s,
                serde_json::Value::Bool(true) => "True".to_string(),
                serde_json::Value::Bool(false) => "False".to_string(),
                other => other.to_string(),
            };
            (!text.contains('\0')).then_some((k, text))
        })
        .collect())
}

/// `null` read as the type's default (the original worker writes `null`
/// for metrics it could not take).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A task as read from the queue: ours, or the original controller's
/// `{requestId, functionId, runtime, memoryMb, s3Bucket, s3Key, timeoutMs,
/// input, modelId, envVars}` with the original worker's defaults for what
/// is missing. `requestId` and `s3Key` are required, as there.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobWire {
    request_id: String,
    #[serde(default = "unknown_function", deserialize_with = "string_or_unknown")]
    function_id: String,
    #[serde(default)]
    runtime: Option<Runtime>,
    #[serde(default = "original_memory_mb")]
    memory_mb: u32,
    #[serde(default, deserialize_with = "null_default")]
    s3_bucket: String,
    s3_key: String,
    #[serde(default = "original_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "empty_object")]
    input: serde_json::Value,
    #[serde(default)]
    model_id: Option<String>,
    #[serde(default, deserialize_with = "env_values")]
    env_vars: BTreeMap<String, String>,
    #[serde(default)]
    handler: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    sha256: String,
    #[serde(default)]
    warm_pool: WarmPool,
    #[serde(default)]
    network: bool,
    #[serde(default)]
    style: FunctionStyle,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    submitted_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    lifecycle: JobLifecycle,
}

fn string_or_unknown<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_else(unknown_function))
}

impl From<JobWire> for Job {
    fn from(w: JobWire) -> Job {
        let runtime = w.runtime.unwrap_or(Runtime::Python);
        Job {
            request_id: w.request_id,
            function_id: w.function_id,
            runtime,
            memory_mb: if w.memory_mb == 0 {
                ORIGINAL_DEFAULT_MEMORY_MB
            } else {
                w.memory_mb
            },
            s3_bucket: w.s3_bucket,
            s3_key: w.s3_key,
            timeout_ms: w.timeout_ms,
            input: w.input,
            model_id: w.model_id,
            env_vars: w.env_vars,
            // The original names no handler: its Python functions are
            // `main.handler`, its Node ones `index.js`.
            handler: w
                .handler
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| runtime.default_handler().to_string()),
            sha256: w.sha256,
            warm_pool: w.warm_pool,
            network: w.network,
            style: w.style,
            trace_id: w.trace_id,
            original_format: w.submitted_at.is_none(),
            // The original's tasks carry no time: they count from receipt.
            submitted_at: w.submitted_at.unwrap_or_else(Utc::now),
            lifecycle: w.lifecycle,
        }
    }
}

/// Lifecycle of a job. Everything from `Success` on is terminal.
///
/// A failed run is `FAILED`, as the original worker says it; `ERROR` (what
/// this platform wrote before) is still read, so stored records stay readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Pending,
    Running,
    Success,
    #[serde(rename = "FAILED", alias = "ERROR")]
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
            JobStatus::Error => "FAILED",
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

/// What a run used, where the worker could measure it (absent otherwise).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// The run's peak resident memory (`peakMemoryBytes` in MB).
    pub memory_used_mb: f64,
    /// CPU time of the instance's processes over the handler's time, in
    /// percent (above 100 with several cores busy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usage_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_rx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_tx_bytes: Option<u64>,
}

/// The memory recommendation for the function (see `function::tuner`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoTunerAdvice {
    /// None in the comfortable band (30 % to 85 % of the allocation).
    pub recommended_memory_mb: Option<u32>,
    /// E.g. `"$0.16/month"`, when the recommendation is below the allocation.
    pub estimated_savings: Option<String>,
    pub tip: Option<String>,
    /// The highest peak among the runs looked at, in MB.
    pub peak_memory_mb: f64,
    /// How many recent runs with a measured peak it is based on.
    pub based_on_runs: usize,
}

/// The terminal outcome of a job, as published on `result:{requestId}` and
/// kept at `job:{requestId}`: the original worker's result JSON, plus this
/// platform's fields beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    pub request_id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub function_id: String,
    /// The worker that ran it (its id in `/system/status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    pub status: JobStatus,
    /// The handler's return value (JSON). Also printed at the end of
    /// `stdout`, where the original's clients look for it.
    #[serde(default)]
    pub result: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// What the handler printed, then its return value on a line of its own
    /// (strings as they are, other values as JSON), as the original's runner prints it.
    #[serde(default, deserialize_with = "null_default")]
    pub stdout: String,
    #[serde(default, deserialize_with = "null_default")]
    pub stderr: String,
    /// The worker's time for the run: code, instance (start or reuse) and
    /// handler, as the original worker measures it.
    #[serde(default, deserialize_with = "null_default")]
    pub duration_ms: f64,
    /// Time spent in the handler itself, measured inside the instance.
    #[serde(default)]
    pub handler_duration_ms: Option<f64>,
    #[serde(default, deserialize_with = "null_default")]
    pub peak_memory_bytes: u64,
    /// The function's `memoryMb` for this run.
    #[serde(default)]
    pub allocated_memory_mb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// The auto-tuner's advice from the function's recent peaks (also flat
    /// below, where the original's dashboard reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_tuner: Option<AutoTunerAdvice>,
    #[serde(default)]
    pub optimization_tip: Option<String>,
    #[serde(default)]
    pub estimated_savings: Option<String>,
    #[serde(default)]
    pub recommended_memory_mb: Option<u32>,
    #[serde(default, deserialize_with = "null_default")]
    pub cold_start: bool,
    /// `warm`, `stem` or `fresh` (see `runtime::StartKind`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_kind: Option<crate::runtime::StartKind>,
    /// Time the instance spent starting and importing the handler (cold starts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_ms: Option<f64>,
    #[serde(default, deserialize_with = "null_default")]
    pub attempt: u32,
    /// Tokens the function used on the AI node, when it called it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::ai::Usage>,
    /// When the result was made; a result of the original worker has none
    /// and reads as made when it was read.
    #[serde(default = "Utc::now")]
    pub finished_at: DateTime<Utc>,
    /// Earlier runs of this job that failed (retries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptFailure>,
    /// The job ran out of retries (or age) and is kept among the dead letters.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dead_lettered: bool,
    /// Top-level names of the files a program left in its output dir, and
    /// `stdout.log`, its output (the original's `outputFiles`); absent for
    /// handler-style runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_files: Option<Vec<String>>,
    /// Every file kept from a program's output dir, with its download URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<OutputArtifact>,
    /// Fields this platform does not know, kept as they came: an original
    /// worker's `cpuUsage`, `networkRx`, `diskRead`, `outputFiles`,
    /// `llm_token_count`, ... reach the original's clients unchanged.
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(ignore)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl JobResult {
    /// A result produced by the platform rather than by the handler.
    pub fn platform(job: &Job, status: JobStatus, error_type: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        JobResult {
            request_id: job.request_id.clone(),
            function_id: job.function_id.clone(),
            worker_id: None,
            status,
            result: serde_json::Value::Null,
            exit_code: None,
            stdout: String::new(),
            // Where the original's clients read a failure (its worker puts
            // the exception text here).
            stderr: format!("{error_type}: {message}"),
            error: Some(ErrorInfo {
                error_type: error_type.to_string(),
                message,
                traceback: None,
            }),
            duration_ms: 0.0,
            handler_duration_ms: None,
            peak_memory_bytes: 0,
            allocated_memory_mb: (job.memory_mb > 0).then_some(job.memory_mb),
            resources: None,
            auto_tuner: None,
            optimization_tip: None,
            estimated_savings: None,
            recommended_memory_mb: None,
            cold_start: false,
            start_kind: None,
            init_ms: None,
            attempt: job.lifecycle.first_attempt(),
            usage: None,
            finished_at: Utc::now(),
            attempts: job.lifecycle.failures.clone(),
            dead_lettered: false,
            output_files: None,
            artifacts: Vec::new(),
            extra: serde_json::Map::new(),
        }
    }

    /// Puts the auto-tuner's advice on the result, nested and flat.
    pub fn set_advice(&mut self, advice: Option<AutoTunerAdvice>) {
        self.optimization_tip = advice.as_ref().and_then(|a| a.tip.clone());
        self.estimated_savings = advice.as_ref().and_then(|a| a.estimated_savings.clone());
        self.recommended_memory_mb = advice.as_ref().and_then(|a| a.recommended_memory_mb);
        self.auto_tuner = advice;
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

/// A file a program wrote to its output dir, kept in the artifact store
/// under `outputs/{requestId}/{path}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputArtifact {
    /// Path relative to the output dir, `/`-separated.
    pub path: String,
    pub size_bytes: u64,
    /// Where to download it: `/status/{jobId}/files/{path}` (the path
    /// percent-encoded as one segment, `/` as `%2F`).
    pub url: String,
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
    /// The worker's time for the run (the result's `durationMs`).
    pub duration_ms: f64,
    /// The handler's own time, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler_duration_ms: Option<f64>,
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
            handler_duration_ms: result.handler_duration_ms,
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

/// The task fields the original worker agent reads (its contract, section
/// 4.1): every task this controller sends has them.
pub const ORIGINAL_TASK_FIELDS: &[&str] = &[
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
];

/// The result fields the original controller, its dashboard and scripts
/// read (its contract, sections 4.2 and 5.3): every result has them.
pub const ORIGINAL_RESULT_FIELDS: &[&str] = &[
    "requestId",
    "functionId",
    "workerId",
    "status",
    "exitCode",
    "stdout",
    "stderr",
    "durationMs",
    "handlerDurationMs",
    "peakMemoryBytes",
    "allocatedMemoryMb",
    "optimizationTip",
    "estimatedSavings",
    "recommendedMemoryMb",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_are_read_with_or_without_a_version() {
        for (name, want) in [
            ("python", Some(Runtime::Python)),
            ("python3.11", Some(Runtime::Python)),
            ("nodejs20.x", Some(Runtime::Nodejs)),
            ("Node", Some(Runtime::Nodejs)),
            ("python2.7", None),
            ("nodejs", Some(Runtime::Nodejs)),
            ("nodejs-evil", None),
            ("ruby", None),
        ] {
            assert_eq!(Runtime::parse(name), want, "{name}");
        }
    }

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
            style: Default::default(),
            trace_id: None,
            submitted_at: Utc::now(),
            lifecycle: JobLifecycle::default(),
            original_format: false,
        };
        let v = serde_json::to_value(&job).unwrap();
        for key in ORIGINAL_TASK_FIELDS {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["runtime"], "python");
    }

    #[test]
    fn failed_is_written_and_error_still_read() {
        assert_eq!(serde_json::to_value(JobStatus::Error).unwrap(), "FAILED");
        for s in ["\"FAILED\"", "\"ERROR\""] {
            assert_eq!(serde_json::from_str::<JobStatus>(s).unwrap(), JobStatus::Error);
        }
        // A record stored before the rename.
        let old = r#"{"requestId":"r","functionId":"f","status":"ERROR","submittedAt":"2026-01-01T00:00:00Z","updatedAt":"2026-01-01T00:00:01Z"}"#;
        assert_eq!(serde_json::from_str::<JobRecord>(old).unwrap().status, JobStatus::Error);
    }

    #[test]
    fn the_original_controllers_task_is_a_job() {
        // The original controller's task (contract 4.1): no submittedAt, handler, sha256.
        let task = r#"{"requestId":"6f1c2a52-1111-4aaa-8bbb-000000000001","functionId":"fn-1","runtime":"python",
            "memoryMb":256,"s3Bucket":"faas-code","s3Key":"functions/fn-1/v1.zip","timeoutMs":300000,
            "input":{"name":"Ada"},"modelId":"llama3:8b","envVars":{"A":"x","N":3,"B":true,"Z":null,"LD_PRELOAD":"/tmp/x.so","bad-name":"x"}}"#;
        let before = Utc::now();
        let job: Job = serde_json::from_str(task).unwrap();
        assert!(job.original_format);
        assert!(job.submitted_at >= before);
        assert_eq!(job.handler, "main.handler");
        assert_eq!(job.memory_mb, 256);
        assert_eq!(job.s3_bucket, "faas-code");
        assert_eq!(job.input["name"], "Ada");
        assert_eq!(job.env_vars.get("N").map(String::as_str), Some("3"));
        assert_eq!(job.env_vars.get("B").map(String::as_str), Some("True"));
        assert!(!job.env_vars.contains_key("Z"));
        assert_eq!(job.env_vars.len(), 3, "{:?}", job.env_vars);
        assert_eq!(job.lifecycle.first_attempt(), 1);

        // v2.4: no envVars; the worker's defaults for everything optional.
        let minimal = r#"{"requestId":"r2","s3Key":"functions/x/v1.zip","runtime":"nodejs","s3Bucket":null}"#;
        let job: Job = serde_json::from_str(minimal).unwrap();
        assert_eq!(job.function_id, "unknown");
        assert_eq!(job.handler, "index.handler");
        assert_eq!((job.memory_mb, job.timeout_ms), (128, 300_000));
        assert_eq!(job.input, serde_json::json!({}));
        assert_eq!(job.s3_bucket, "");

        // Required there, required here.
        assert!(serde_json::from_str::<Job>(r#"{"s3Key":"k"}"#).is_err());
        assert!(serde_json::from_str::<Job>(r#"{"requestId":"r"}"#).is_err());
    }

    #[test]
    fn our_jobs_round_trip_unchanged() {
        let job = crate::backend::conformance::sample_job("f");
        let back: Job = serde_json::from_str(&serde_json::to_string(&job).unwrap()).unwrap();
        assert_eq!(back, job);
        assert!(!back.original_format);
    }

    #[test]
    fn the_original_workers_result_is_a_result() {
        // The original worker's result JSON (contract 4.2): no finishedAt,
        // nulls for what it could not measure, snake_case llm_token_count.
        let raw = r#"{"requestId":"r1","functionId":"fn-1","workerId":"ip-10-0-1-5","status":"FAILED",
            "exitCode":-1,"stdout":"","stderr":"Execution timed out after 300000ms","durationMs":300012,
            "handlerDurationMs":null,"peakMemoryBytes":null,"allocatedMemoryMb":null,"optimizationTip":null,
            "estimatedSavings":null,"recommendedMemoryMb":null,"cpuUsage":0.0,"networkRx":0,"networkTx":0,
            "diskRead":0,"diskWrite":0,"outputFiles":[],"llm_token_count":0}"#;
        let before = Utc::now();
        let r: JobResult = serde_json::from_str(raw).unwrap();
        assert_eq!(r.status, JobStatus::Error);
        assert_eq!(r.worker_id.as_deref(), Some("ip-10-0-1-5"));
        assert_eq!(r.exit_code, Some(-1));
        assert_eq!(r.duration_ms, 300012.0);
        assert_eq!(r.peak_memory_bytes, 0);
        assert!(r.finished_at >= before);
        // What this platform does not know is passed on as it came.
        let again = serde_json::to_value(&r).unwrap();
        for key in ["cpuUsage", "networkRx", "diskWrite", "outputFiles", "llm_token_count"] {
            assert!(again.get(key).is_some(), "{key} lost: {again}");
        }
        assert_eq!(again["status"], "FAILED");

        let ok = r#"{"requestId":"r2","functionId":"fn-1","workerId":"w","status":"SUCCESS","exitCode":0,
            "stdout":"{\"hello\": \"Ada\"}\n","stderr":"","durationMs":412,"handlerDurationMs":3.214,
            "peakMemoryBytes":22020096,"allocatedMemoryMb":128,"optimizationTip":"Reduce to 42MB",
            "estimatedSavings":"$3.14/month","recommendedMemoryMb":42}"#;
        let r: JobResult = serde_json::from_str(ok).unwrap();
        assert_eq!(r.status, JobStatus::Success);
        assert_eq!(r.handler_duration_ms, Some(3.214));
        assert_eq!(r.allocated_memory_mb, Some(128));
        assert_eq!(r.recommended_memory_mb, Some(42));
        assert!(r.extra.is_empty(), "{:?}", r.extra);
    }

    #[test]
    fn our_results_have_the_original_fields() {
        let job = crate::backend::conformance::sample_job("f");
        let r = JobResult::platform(&job, JobStatus::Error, "CodeUnavailable", "gone");
        let v = serde_json::to_value(&r).unwrap();
        // workerId is stamped by the worker that finishes the job.
        for key in ORIGINAL_RESULT_FIELDS.iter().filter(|k| **k != "workerId") {
            assert!(v.get(key).is_some(), "missing {key}: {v}");
        }
        assert_eq!(v["status"], "FAILED");
        assert_eq!(v["stderr"], "CodeUnavailable: gone");
        let back: JobResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
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
