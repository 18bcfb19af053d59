//! `GET /dead-letters` and `POST /dead-letters/redrive`: jobs that failed for
//! good, and running them again (with the function's current code and settings).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson};
use super::middleware::current_request_id;
use super::ApiState;
use crate::jobs::policy;
use crate::model::DeadLetter;

/// Most dead letters one call lists or redrives.
const MAX_BATCH: usize = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(rename_all = "camelCase", parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Only this function's dead letters.
    function_id: Option<String>,
    /// Most returned, oldest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterList {
    count: usize,
    dead_letters: Vec<DeadLetter>,
}

/// Dead letters: asynchronous jobs that ran out of retries or age, or were
/// lost, with their input and every failed run.
#[utoipa::path(
    get, path = "/dead-letters", tag = "jobs",
    params(DeadLetterQuery),
    responses((status = 200, body = DeadLetterList), (status = 400, body = super::ErrorBody))
)]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let query = query?.0;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_BATCH).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be from 1 to {MAX_BATCH}")));
    }
    let letters = state
        .jobs
        .ledger()
        .dead_letters(query.function_id.as_deref(), limit)
        .await?;
    Ok(Json(DeadLetterList {
        count: letters.len(),
        dead_letters: letters,
    }))
}

/// Which dead letters to run again: all, one function's, or given jobs.
#[derive(Deserialize, ToSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedriveRequest {
    function_id: Option<String>,
    job_ids: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Redriven {
    /// The dead-lettered job.
    job_id: String,
    /// The new job running it again (follow it with /status).
    new_job_id: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotRedriven {
    job_id: String,
    error: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedriveResponse {
    redriven: Vec<Redriven>,
    /// Dead letters that stay (e.g. their function was deleted).
    failed: Vec<NotRedriven>,
}

/// Runs dead letters again as new asynchronous jobs of the function as it is
/// now (so a fix deployed meanwhile applies); each leaves the dead letters
/// once its new job is queued.
#[utoipa::path(
    post, path = "/dead-letters/redrive", tag = "jobs",
    request_body = RedriveRequest,
    responses((status = 200, body = RedriveResponse), (status = 400, body = super::ErrorBody))
)]
pub async fn redrive(
    State(state): State<Arc<ApiState>>,
    body: Result<ApiJson<RedriveRequest>, ApiError>,
) -> Result<Json<RedriveResponse>, ApiError> {
    let ApiJson(req) = body?;
    let ledger = state.jobs.ledger();
    let letters = ledger.dead_letters(req.function_id.as_deref(), MAX_BATCH).await?;
    let letters: Vec<DeadLetter> = match &req.job_ids {
        Some(ids) => letters.into_iter().filter(|l| ids.contains(&l.job_id)).collect(),
        None => letters,
    };
    let mut out = RedriveResponse {
        redriven: Vec::new(),
        failed: Vec::new(),
    };
    for letter in letters {
        match redrive_one(&state, &letter).await {
            Ok(new_job_id) => out.redriven.push(Redriven {
                job_id: letter.job_id,
                new_job_id,
            }),
            Err(e) => out.failed.push(NotRedriven {
                job_id: letter.job_id,
                error: e.message,
            }),
        }
    }
    tracing::info!(
        redriven = out.redriven.len(),
        failed = out.failed.len(),
        "dead letters redriven"
    );
    Ok(Json(out))
}

async fn redrive_one(state: &ApiState, letter: &DeadLetter) -> Result<String, ApiError> {
    let function = state.functions.get(&letter.function_id).await?;
    let mut job = policy::new_job(
        &function,
        state.functions.artifacts().bucket(),
        policy::RunRequest {
            input: letter.input.clone(),
            model_id: Some(state.ai.default_model().to_string()),
            asynchronous: true,
            trace_id: current_request_id(),
        },
    );
    job.lifecycle.redrive_of = Some(letter.job_id.clone());
    super::run::admit(state, &mut job, true, function.max_queued).await?;
    state
        .jobs
        .ledger()
        .remove_dead_letter(&letter.function_id, &letter.job_id)
        .await?;
    Ok(job.request_id)
}
