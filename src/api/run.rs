//! `POST /run` (sync or async) and `GET /status/{jobId}`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson};
use super::middleware::current_request_id;
use super::ApiState;
use crate::backend::Subscription;
use crate::jobs::{self, policy};
use crate::model::{Job, JobRecord, JobResult, JobStatus};

/// Time a sync caller waits beyond the function's timeout: queueing and a cold start.
const SYNC_MARGIN: Duration = Duration::from_secs(15);
/// Inputs larger than this travel beside the queue message, not in it (SQS
/// takes 256 KiB per message on older set-ups and some emulators, 1 MiB on
/// newer ones; the rest of the job needs room too).
const INLINE_INPUT_BYTES: usize = 128 * 1024;

/// Members other than these are ignored, as by the original controller.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRequest {
    /// Required (400 `functionId is required` without it).
    #[schema(required = true, min_length = 1, max_length = 128)]
    #[serde(default)]
    function_id: Option<String>,
    /// The event passed to the handler (any JSON; `{}` when absent).
    #[serde(default, alias = "input")]
    #[schema(value_type = Object)]
    input_data: Option<serde_json::Value>,
    /// The AI model the function may use (default from configuration).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    model_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// Always `ACCEPTED`.
    status: &'static str,
    job_id: String,
}

/// A finished job: the result plus its id.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinishedJob {
    job_id: String,
    #[serde(flatten)]
    result: JobResult,
}

/// A job that has not finished yet. `status` is `pending`, as the original
/// controller answers (its clients poll while it is); `state` tells queued
/// from running.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    /// Always `pending`.
    #[schema(example = "pending")]
    status: &'static str,
    /// `Queued` or `Running`.
    message: &'static str,
    /// `PENDING` or `RUNNING`.
    state: JobStatus,
    job_id: String,
    function_id: String,
    submitted_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A synchronous wait that ran out: answered 200 with `status: TIMEOUT`, as
/// the original controller does; the job goes on, and `jobId` finds it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncTimeout {
    /// Always `TIMEOUT`.
    status: &'static str,
    message: String,
    job_id: String,
    /// Poll this for the outcome.
    status_url: String,
}

/// What a synchronous run answers with.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum RunAnswer {
    Finished(Box<FinishedJob>),
    TimedOut(SyncTimeout),
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum JobView {
    Finished(Box<FinishedJob>),
    InProgress(JobProgress),
}

impl JobView {
    fn of(record: JobRecord) -> JobView {
        match record.result {
            Some(result) if record.status.is_terminal() => JobView::Finished(Box::new(FinishedJob {
                job_id: record.request_id,
                result,
            })),
            _ => JobView::InProgress(JobProgress {
                status: "pending",
                message: if record.status == JobStatus::Running {
                    "Running"
                } else {
                    "Queued"
                },
                state: record.status,
                job_id: record.request_id,
                function_id: record.function_id,
                submitted_at: record.submitted_at,
                updated_at: record.updated_at,
            }),
        }
    }
}

fn is_async(headers: &HeaderMap) -> bool {
    headers
        .get("x-async")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Runs a function. Synchronous by default (the answer is the result); with
/// `x-async: true` the job is accepted (202) and followed with `/status/{jobId}`.
#[utoipa::path(
    post, path = "/run", tag = "jobs",
    request_body = RunRequest,
    params(
        ("x-async" = Option<bool>, Header, description = "true: answer 202 at once"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key with the same request within 24 h answers with the first request's job instead of running again (`idempotent-replayed: true`); with a different request, 422"),
    ),
    responses(
        (status = 200, description = "The finished job (sync), or `status: TIMEOUT` with the jobId when the wait ran out", body = RunAnswer),
        (status = 202, description = "Accepted (async)", body = Accepted),
        (status = 400, body = super::ErrorBody),
        (status = 404, description = "Unknown function", body = super::ErrorBody),
        (status = 422, description = "Idempotency-Key reused with a different request", body = super::ErrorBody),
        (status = 429, description = "The function's maxQueued is reached (Retry-After)", body = super::ErrorBody),
        (status = 503, description = "Queue or result bus unavailable", body = super::ErrorBody),
    )
)]
pub async fn run(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<ApiJson<RunRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(req) = body?;
    let function_id = match req.function_id.as_deref() {
        None | Some("") => return Err(ApiError::bad_request("functionId is required")),
        Some(id) if id.trim().is_empty() || id.len() > 128 => {
            return Err(ApiError::bad_request("functionId must be a non-empty function id"))
        }
        Some(id) => id,
    };
    if req.model_id.as_ref().is_some_and(|m| m.is_empty() || m.len() > 256) {
        return Err(ApiError::bad_request("modelId must be 1 to 256 characters"));
    }
    let looked_up = std::time::Instant::now();
    let function = state.functions.get(function_id).await?;
    state.metrics.stage("lookup", looked_up);
    if let Some(model) = &req.model_id {
        // Checked only when the node answers; when it is down the run is
        // accepted and an AI call inside the function fails with a clear error.
        if let Some(known) = state.ai.known_models().await {
            if !known.contains(model) {
                return Err(ApiError::bad_request(format!(
                    "model {model:?} is not available on the AI node; available: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
    }
    let asynchronous = is_async(&headers);
    let idempotency_key = idempotency_key(&headers)?;
    let input = req.input_data.unwrap_or_else(|| serde_json::json!({}));
    let model_id = Some(req.model_id.unwrap_or_else(|| state.ai.default_model().to_string()));
    let fingerprint = idempotency_key.as_ref().map(|_| {
        jobs::fingerprint(
            &function.function_id,
            &serde_json::json!({"input": &input, "modelId": &model_id}),
        )
    });
    let mut job = policy::new_job(
        &function,
        state.functions.artifacts().bucket(),
        policy::RunRequest {
            input,
            model_id,
            asynchronous,
            trace_id: current_request_id(),
        },
    );
    if let (Some(key), Some(fingerprint)) = (&idempotency_key, fingerprint) {
        let claim = jobs::IdempotencyClaim {
            job_id: job.request_id.clone(),
            fingerprint,
            asynchronous,
            created_at: job.submitted_at,
        };
        if let Some(first) = state.jobs.ledger().claim_idempotency_key(key, &claim).await? {
            if first.fingerprint != claim.fingerprint {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "this Idempotency-Key was used with a different request (function or body) in the last 24 h",
                ));
            }
            state.metrics.idempotent_replays.inc();
            return replay(&state, first.job_id, asynchronous, job.timeout_ms).await;
        }
    }
    match admit(&state, &mut job, asynchronous, function.max_queued).await {
        Ok(subscription) => {
            state.activity.info(
                "Run Request",
                &job.function_id,
                serde_json::json!({
                    "requestId": &job.request_id,
                    "modelId": &job.model_id,
                    "mode": if asynchronous { "ASYNC" } else { "SYNC" },
                }),
            );
            respond(&state, job, subscription).await
        }
        Err(e) => {
            if let Some(key) = &idempotency_key {
                // Nothing was accepted: the key is free for the caller's retry.
                if let Err(e) = state.jobs.ledger().release_idempotency_key(key).await {
                    tracing::warn!(error = %e, "could not release an idempotency key");
                }
            }
            Err(e)
        }
    }
}

/// The `Idempotency-Key` header, if any: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => {
            Ok(Some(k.to_string()))
        }
        _ => Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// Queues the job (its input kept aside when too large for a queue message);
/// for a sync run, the subscription to its result, made before it is queued
/// so a fast result cannot be missed.
pub(super) async fn admit(
    state: &ApiState,
    job: &mut Job,
    asynchronous: bool,
    max_queued: Option<u32>,
) -> Result<Option<Subscription>, ApiError> {
    if serde_json::to_vec(&job.input).map(|b| b.len()).unwrap_or(0) > INLINE_INPUT_BYTES {
        let input = std::mem::take(&mut job.input);
        let key = state.jobs.ledger().put_payload(&job.request_id, &input).await?;
        job.lifecycle.input_ref = Some(key);
    }
    let counter = state.jobs.counter();
    let pending = JobRecord::pending(job);
    let recording = std::time::Instant::now();
    match max_queued {
        // The bound must hold before anything else happens.
        Some(limit) => {
            if !counter.admit(&job.function_id, &job.request_id, Some(limit)).await? {
                return Err(ApiError {
                    retry_after: Some(1),
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "function {} has {limit} unfinished jobs (its maxQueued); retry later",
                            job.function_id
                        ),
                    )
                });
            }
            if let Err(e) = state.jobs.set_state(&pending).await {
                uncount(state, job).await;
                return Err(e.into());
            }
        }
        None => {
            let (counted, stated) = tokio::join!(
                counter.admit(&job.function_id, &job.request_id, None),
                state.jobs.set_state(&pending)
            );
            counted?;
            if let Err(e) = stated {
                uncount(state, job).await;
                return Err(e.into());
            }
        }
    }
    state.metrics.stage("record", recording);
    let subscription = if asynchronous {
        None
    } else {
        match state.jobs.subscribe(&job.request_id).await {
            Ok(s) => Some(s),
            Err(e) => {
                uncount(state, job).await;
                return Err(e.into());
            }
        }
    };
    let queueing = std::time::Instant::now();
    let sent = state.queue.send(job).await;
    state.metrics.stage("queue", queueing);
    if let Err(e) = sent {
        // Leave no job PENDING forever: record why it never ran.
        let failed = JobResult::platform(job, JobStatus::Error, "EnqueueFailed", "the job could not be queued");
        let _ = state.jobs.finish(job.submitted_at, &failed).await;
        return Err(e.into());
    }
    state.functions.record_invocation(&job.function_id);
    if let Some(model) = &job.model_id {
        state.ai.count_run(model);
    }
    state.metrics.jobs_admitted.inc();
    tracing::debug!(
        job_id = job.request_id,
        function_id = job.function_id,
        asynchronous,
        "job accepted"
    );
    Ok(subscription)
}

/// Stops counting a job that was not queued after all, so it cannot hold a
/// place under the function's maxQueued until its count lapses.
async fn uncount(state: &ApiState, job: &Job) {
    if let Err(e) = state.jobs.counter().done(&job.function_id, &job.request_id).await {
        tracing::warn!(error = %e, "could not uncount a job that was not queued");
    }
}

/// The answer to a repeated request under an idempotency key: the first
/// request's job (its result, for a sync run, once it is there).
async fn replay(state: &ApiState, job_id: String, asynchronous: bool, timeout_ms: u64) -> Result<Response, ApiError> {
    let replayed = [("idempotent-replayed", "true")];
    if asynchronous {
        return Ok((
            StatusCode::ACCEPTED,
            replayed,
            Json(Accepted {
                status: "ACCEPTED",
                job_id,
            }),
        )
            .into_response());
    }
    let subscription = state.jobs.subscribe(&job_id).await?;
    // The first request's job may be long done.
    if let Ok(Some(record)) = state.jobs.get(&job_id).await {
        if let (true, Some(result)) = (record.status.is_terminal(), record.result) {
            return Ok((replayed, Json(FinishedJob { job_id, result })).into_response());
        }
    }
    let response = wait_for(state, job_id, Some(subscription), timeout_ms).await?;
    Ok((replayed, response).into_response())
}

async fn respond(state: &ApiState, job: Job, subscription: Option<Subscription>) -> Result<Response, ApiError> {
    let Some(subscription) = subscription else {
        return Ok((
            StatusCode::ACCEPTED,
            Json(Accepted {
                status: "ACCEPTED",
                job_id: job.request_id,
            }),
        )
            .into_response());
    };
    wait_for(state, job.request_id, Some(subscription), job.timeout_ms).await
}

/// Waits for a sync job's result: the subscription, else the stored record.
async fn wait_for(
    state: &ApiState,
    job_id: String,
    subscription: Option<Subscription>,
    timeout_ms: u64,
) -> Result<Response, ApiError> {
    let finished = |result: JobResult| {
        executed(state, &result);
        Json(RunAnswer::Finished(Box::new(FinishedJob {
            job_id: job_id.clone(),
            result,
        })))
        .into_response()
    };
    let wait = (Duration::from_millis(timeout_ms) + SYNC_MARGIN).min(state.settings.sync_timeout);
    if let Some(subscription) = subscription {
        match tokio::time::timeout(wait, subscription.recv()).await {
            Ok(Some(result)) => return Ok(finished(result)),
            Ok(None) => {
                return Err(ApiError::internal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &"result bus closed the subscription",
                ))
            }
            Err(_) => {}
        }
    }
    // A notification can be missed (a subscriber reconnecting, a bus that
    // was down when the result came): the stored record is the truth, so
    // look once before giving up.
    let mut function_id = String::new();
    if let Ok(Some(record)) = state.jobs.get(&job_id).await {
        if let (true, Some(result)) = (record.status.is_terminal(), record.result) {
            return Ok(finished(result));
        }
        function_id = record.function_id;
    }
    state.activity.warn(
        &format!("Timeout: {function_id}"),
        &function_id,
        serde_json::json!({"requestId": &job_id}),
    );
    Ok(Json(RunAnswer::TimedOut(SyncTimeout {
        status: "TIMEOUT",
        message: format!(
            "Processing timed out: no result within {} ms; the job continues: poll /status/{job_id}",
            wait.as_millis()
        ),
        status_url: format!("/status/{job_id}"),
        job_id,
    }))
    .into_response())
}

/// The original controller's "Function Executed" activity entry.
fn executed(state: &ApiState, result: &JobResult) {
    let context = serde_json::json!({
        "functionId": &result.function_id,
        "requestId": &result.request_id,
        "duration": result.duration_ms.round(),
        "memory": (result.peak_memory_bytes as f64 / 1_048_576.0).round(),
        "status": result.status,
        "exitCode": result.exit_code,
    });
    let msg = format!("Function Executed: {}", result.function_id);
    if result.status == JobStatus::Success {
        state.activity.info(&msg, &result.function_id, context);
    } else {
        state.activity.error(&msg, &result.function_id, context);
    }
}

/// A job's state, and its full result once finished.
#[utoipa::path(
    get, path = "/status/{jobId}", tag = "jobs",
    params(("jobId" = String, Path, description = "The jobId from /run")),
    responses((status = 200, body = JobView), (status = 404, body = super::ErrorBody))
)]
pub async fn status(State(state): State<Arc<ApiState>>, Path(job_id): Path<String>) -> Result<Json<JobView>, ApiError> {
    match state.jobs.get(&job_id).await? {
        Some(record) => Ok(Json(JobView::of(record))),
        None => Err(ApiError::not_found(format!("job {job_id} not found"))),
    }
}

/// A file a program-style run left in its output dir (listed in the
/// result's `artifacts` and, by top-level name, `outputFiles`).
#[utoipa::path(
    get, path = "/status/{jobId}/files/{path}", tag = "jobs",
    params(
        ("jobId" = String, Path, description = "The jobId from /run"),
        ("path" = String, Path, description = "The file's path in the output dir, as in the result's `artifacts` (one segment: a nested path's `/` is sent as `%2F`)"),
    ),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "Unknown job, or no such output file", body = super::ErrorBody),
    )
)]
pub async fn output_file(
    State(state): State<Arc<ApiState>>,
    Path((job_id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let Some(record) = state.jobs.get(&job_id).await? else {
        return Err(ApiError::not_found(format!("job {job_id} not found")));
    };
    // Only what the run listed: no probing of other keys through this route.
    let listed = record
        .result
        .as_ref()
        .is_some_and(|r| r.artifacts.iter().any(|a| a.path == path));
    if !listed {
        return Err(ApiError::not_found(format!("job {job_id} has no output file {path:?}")));
    }
    let key = crate::worker::output_key(&job_id, &path);
    let bytes = match state.functions.artifacts().get(&key).await {
        Ok(b) => b,
        Err(crate::backend::Error::NotFound(_)) => {
            return Err(ApiError::not_found(format!(
                "output file {path:?} of job {job_id} is gone"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let name = path.rsplit('/').next().unwrap_or(&path).to_string();
    let headers = [
        (axum::http::header::CONTENT_TYPE, content_type(&name).to_string()),
        // Listed paths hold letters, digits, '.', '-' and '_' only: safe to quote.
        (
            axum::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ),
        (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
    ];
    Ok((StatusCode::OK, headers, bytes).into_response())
}

/// A content type from the file name's extension (downloads either way).
fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "json" => "application/json",
        "txt" | "log" | "md" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}
