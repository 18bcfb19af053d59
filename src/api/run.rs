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
use crate::model::{Job, JobRecord, JobResult, JobStatus};

/// Time a sync caller waits beyond the function's timeout: queueing and a cold start.
const SYNC_MARGIN: Duration = Duration::from_secs(15);

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunRequest {
    function_id: String,
    /// The event passed to the handler (any JSON; `{}` when absent).
    #[serde(default, alias = "input")]
    #[schema(value_type = Object)]
    input_data: Option<serde_json::Value>,
    /// The AI model the function may use (default from configuration).
    #[serde(default)]
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

/// A job that has not finished yet.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    job_id: String,
    function_id: String,
    /// `PENDING` or `RUNNING`.
    status: JobStatus,
    submitted_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
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
                job_id: record.request_id,
                function_id: record.function_id,
                status: record.status,
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
    params(("x-async" = Option<bool>, Header, description = "true: answer 202 at once")),
    responses(
        (status = 200, description = "The finished job (sync)", body = FinishedJob),
        (status = 202, description = "Accepted (async)", body = Accepted),
        (status = 400, body = super::ErrorBody),
        (status = 404, description = "Unknown function", body = super::ErrorBody),
        (status = 503, description = "Queue or result bus unavailable", body = super::ErrorBody),
        (status = 504, description = "Sync wait over; the job goes on (jobId)", body = super::ErrorBody),
    )
)]
pub async fn run(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<ApiJson<RunRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(req) = body?;
    if req.function_id.trim().is_empty() || req.function_id.len() > 128 {
        return Err(ApiError::bad_request("functionId must be a non-empty function id"));
    }
    if req.model_id.as_ref().is_some_and(|m| m.is_empty() || m.len() > 256) {
        return Err(ApiError::bad_request("modelId must be 1 to 256 characters"));
    }
    let function = state.functions.get(&req.function_id).await?;
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
    let job = Job {
        request_id: uuid::Uuid::new_v4().to_string(),
        function_id: function.function_id.clone(),
        runtime: function.runtime,
        memory_mb: function.memory_mb,
        s3_bucket: state.functions.artifacts().bucket().to_string(),
        s3_key: function.s3_key.clone(),
        timeout_ms: function.timeout_ms,
        input: req.input_data.unwrap_or_else(|| serde_json::json!({})),
        model_id: Some(req.model_id.unwrap_or_else(|| state.ai.default_model().to_string())),
        env_vars: function.env_vars.clone(),
        handler: function.handler.clone(),
        sha256: function.sha256.clone(),
        warm_pool: function.warm_pool,
        network: function.network,
        trace_id: current_request_id(),
        submitted_at: Utc::now(),
    };
    state.bus.set_state(&JobRecord::pending(&job)).await?;
    let asynchronous = is_async(&headers);
    // Subscribe before enqueueing, so a fast result cannot be missed.
    let subscription = if asynchronous {
        None
    } else {
        Some(state.bus.subscribe(&job.request_id).await?)
    };
    if let Err(e) = state.queue.send(&job).await {
        // Leave no job PENDING forever: record why it never ran.
        let failed = JobResult::platform(&job, JobStatus::Error, "EnqueueFailed", "the job could not be queued");
        let _ = state.bus.publish(job.submitted_at, &failed).await;
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
    let wait = (Duration::from_millis(job.timeout_ms) + SYNC_MARGIN).min(state.settings.sync_timeout);
    match tokio::time::timeout(wait, subscription.recv()).await {
        Ok(Some(result)) => Ok(Json(FinishedJob {
            job_id: job.request_id,
            result,
        })
        .into_response()),
        Ok(None) => Err(ApiError::internal(
            StatusCode::SERVICE_UNAVAILABLE,
            &"result bus closed the subscription",
        )),
        Err(_) => {
            // A notification can be missed (a subscriber reconnecting): the
            // stored record is the truth, so look once before giving up.
            if let Ok(Some(record)) = state.bus.get(&job.request_id).await {
                if let (true, Some(result)) = (record.status.is_terminal(), record.result) {
                    return Ok(Json(FinishedJob {
                        job_id: job.request_id,
                        result,
                    })
                    .into_response());
                }
            }
            Err(ApiError {
                job_id: Some(job.request_id.clone()),
                ..ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "no result within {} ms; the job continues: poll /status/{}",
                        wait.as_millis(),
                        job.request_id
                    ),
                )
            })
        }
    }
}

/// A job's state, and its full result once finished.
#[utoipa::path(
    get, path = "/status/{jobId}", tag = "jobs",
    params(("jobId" = String, Path, description = "The jobId from /run")),
    responses((status = 200, body = JobView), (status = 404, body = super::ErrorBody))
)]
pub async fn status(State(state): State<Arc<ApiState>>, Path(job_id): Path<String>) -> Result<Json<JobView>, ApiError> {
    match state.bus.get(&job_id).await? {
        Some(record) => Ok(Json(JobView::of(record))),
        None => Err(ApiError::not_found(format!("job {job_id} not found"))),
    }
}
