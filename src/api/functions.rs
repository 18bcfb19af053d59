//! `/upload` and `/functions`: register, list, inspect, update, delete.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::{Json, RequestExt};
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::ApiState;
use crate::function::package::MAX_UPLOAD_BYTES;
use crate::function::service::CodeUpload;
use crate::function::SettingsDraft;
use crate::model::{FunctionRecord, LogEntry};

const FIELD_TEXT_LIMIT: usize = 64 * 1024;
const ACCEPTED_FIELDS: &str =
    "file, name, description, runtime, memoryMb, timeoutMs, handler, envVars, minWarm, maxWarm, keepAliveSeconds, network, maxRetries, retryBackoffSeconds, retryOnOom, maxEventAgeSeconds, maxConcurrency, maxQueued";

/// Multipart fields of `POST /upload` (also accepted as query parameters;
/// `x-runtime`, `x-memory-mb`, `x-function-name` headers work too).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct UploadForm {
    /// A `.py`, `.js` or `.mjs` file (stored as the handler's module; its
    /// extension sets the runtime when none is given) or a `.zip` holding the handler module.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    name: Option<String>,
    description: Option<String>,
    /// `python` or `nodejs`.
    runtime: Option<String>,
    /// 128 to 10240.
    #[schema(value_type = Option<u32>)]
    memory_mb: Option<String>,
    /// 100 to 900000.
    #[schema(value_type = Option<u64>)]
    timeout_ms: Option<String>,
    /// `module.function`, default `main.handler` (Python) or `index.handler` (Node.js).
    handler: Option<String>,
    /// A JSON object of strings, e.g. `{"GREETING":"hi"}`.
    env_vars: Option<String>,
    /// Instances each worker keeps initialized, 0 to 100.
    #[schema(value_type = Option<u32>)]
    min_warm: Option<String>,
    /// Most idle instances per worker, 1 to 100.
    #[schema(value_type = Option<u32>)]
    max_warm: Option<String>,
    /// Idle time before an instance beyond minWarm stops, 1 to 86400.
    #[schema(value_type = Option<u64>)]
    keep_alive_seconds: Option<String>,
    /// `true` lets the function use the network (default: none in the sandbox).
    #[schema(value_type = Option<bool>)]
    network: Option<String>,
    /// Retries of a failed asynchronous run, 0 to 5 (default 2).
    #[schema(value_type = Option<u32>)]
    max_retries: Option<String>,
    /// Seconds before the first retry, doubled for each further one, 0 to 300 (default 1).
    #[schema(value_type = Option<u32>)]
    retry_backoff_seconds: Option<String>,
    /// `true` retries runs that ran out of memory too (default false).
    #[schema(value_type = Option<bool>)]
    retry_on_oom: Option<String>,
    /// An asynchronous job waiting longer than this is dead-lettered unrun, 60 to 21600 (default 21600).
    #[schema(value_type = Option<u64>)]
    max_event_age_seconds: Option<String>,
    /// Most runs at once across all workers, 1 to 10000 (default: unbounded; "" clears).
    #[schema(value_type = Option<u32>)]
    max_concurrency: Option<String>,
    /// Most accepted, unfinished jobs; beyond it /run answers 429, 1 to 1000000 (default: unbounded; "" clears).
    #[schema(value_type = Option<u32>)]
    max_queued: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadResponse {
    success: bool,
    function_id: String,
    function: FunctionRecord,
}

#[derive(Serialize, ToSchema)]
pub struct FunctionList {
    functions: Vec<FunctionRecord>,
    count: usize,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteResponse {
    success: bool,
    function_id: String,
}

/// `PUT /functions/{id}` as JSON: settings only.
#[derive(Deserialize, ToSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateRequest {
    name: Option<String>,
    description: Option<String>,
    runtime: Option<String>,
    #[schema(value_type = Option<u32>)]
    memory_mb: Option<serde_json::Value>,
    #[schema(value_type = Option<u64>)]
    timeout_ms: Option<serde_json::Value>,
    handler: Option<String>,
    #[schema(value_type = Option<Object>)]
    env_vars: Option<serde_json::Value>,
    #[schema(value_type = Option<u32>)]
    min_warm: Option<serde_json::Value>,
    #[schema(value_type = Option<u32>)]
    max_warm: Option<serde_json::Value>,
    #[schema(value_type = Option<u64>)]
    keep_alive_seconds: Option<serde_json::Value>,
    #[schema(value_type = Option<bool>)]
    network: Option<serde_json::Value>,
    #[schema(value_type = Option<u32>)]
    max_retries: Option<serde_json::Value>,
    #[schema(value_type = Option<u32>)]
    retry_backoff_seconds: Option<serde_json::Value>,
    #[schema(value_type = Option<bool>)]
    retry_on_oom: Option<serde_json::Value>,
    #[schema(value_type = Option<u64>)]
    max_event_age_seconds: Option<serde_json::Value>,
    #[schema(value_type = Option<u32>)]
    max_concurrency: Option<serde_json::Value>,
    #[schema(value_type = Option<u32>)]
    max_queued: Option<serde_json::Value>,
}

fn draft_slot<'a>(draft: &'a mut SettingsDraft, key: &str) -> Option<&'a mut Option<String>> {
    Some(match key {
        "name" | "functionName" => &mut draft.name,
        "description" => &mut draft.description,
        "runtime" => &mut draft.runtime,
        "memoryMb" | "memory_mb" | "memory" => &mut draft.memory_mb,
        "timeoutMs" | "timeout_ms" => &mut draft.timeout_ms,
        "handler" => &mut draft.handler,
        "envVars" | "env_vars" | "env" => &mut draft.env_vars,
        "minWarm" => &mut draft.min_warm,
        "maxWarm" => &mut draft.max_warm,
        "keepAliveSeconds" => &mut draft.keep_alive_seconds,
        "network" => &mut draft.network,
        "maxRetries" => &mut draft.max_retries,
        "retryBackoffSeconds" => &mut draft.retry_backoff_seconds,
        "retryOnOom" => &mut draft.retry_on_oom,
        "maxEventAgeSeconds" => &mut draft.max_event_age_seconds,
        "maxConcurrency" => &mut draft.max_concurrency,
        "maxQueued" => &mut draft.max_queued,
        _ => return None,
    })
}

fn from_query(query: HashMap<String, String>) -> Result<SettingsDraft, ApiError> {
    let mut draft = SettingsDraft::default();
    let mut unknown = Vec::new();
    for (k, v) in query {
        match draft_slot(&mut draft, &k) {
            Some(slot) => *slot = Some(v),
            None => unknown.push(k),
        }
    }
    if unknown.is_empty() {
        Ok(draft)
    } else {
        unknown.sort();
        Err(ApiError::bad_request(format!(
            "unknown query parameters: {}; accepted: {ACCEPTED_FIELDS}",
            unknown.join(", ")
        )))
    }
}

/// The original controller's headers.
fn from_headers(headers: &HeaderMap) -> SettingsDraft {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    SettingsDraft {
        runtime: get("x-runtime"),
        memory_mb: get("x-memory-mb"),
        name: get("x-function-name"),
        timeout_ms: get("x-timeout-ms"),
        ..SettingsDraft::default()
    }
}

async fn read_text(mut field: Field<'_>, name: &str) -> Result<String, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = field.chunk().await? {
        if buf.len() + chunk.len() > FIELD_TEXT_LIMIT {
            return Err(ApiError::bad_request(format!(
                "form field {name} is longer than {FIELD_TEXT_LIMIT} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf.to_vec()).map_err(|_| ApiError::bad_request(format!("form field {name} is not UTF-8 text")))
}

/// Bytes of uploaded code this process holds in memory at once (checking,
/// hashing and storing need it whole). Uploads stream to disk first and wait
/// here for their turn, so memory stays flat under concurrent uploads.
const UPLOAD_MEMORY_BUDGET_KIB: usize = 96 * 1024;
static UPLOAD_MEMORY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(UPLOAD_MEMORY_BUDGET_KIB);
/// Longest an upload waits for its turn before a 503.
const UPLOAD_TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// An uploaded file, spooled to an unnamed temporary file while it arrived.
struct SpooledFile {
    file_name: String,
    file: tokio::fs::File,
    len: usize,
}

impl SpooledFile {
    /// Takes the file into memory once the process-wide upload budget has
    /// room for it; the permit is held until the upload is registered.
    async fn load(mut self) -> Result<(CodeUpload, tokio::sync::SemaphorePermit<'static>), ApiError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        // At most the whole budget (96 Ki), so the cast is exact.
        let kib = self.len.div_ceil(1024).clamp(1, UPLOAD_MEMORY_BUDGET_KIB) as u32;
        let permit = tokio::time::timeout(UPLOAD_TURN_WAIT, UPLOAD_MEMORY.acquire_many(kib))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many uploads in flight; retry in a moment",
                )
            })?
            .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"))?;
        let spool_err = |e: std::io::Error| {
            tracing::error!(error = %e, "cannot read a spooled upload");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the uploaded file")
        };
        self.file.rewind().await.map_err(spool_err)?;
        let mut data = Vec::with_capacity(self.len);
        self.file.read_to_end(&mut data).await.map_err(spool_err)?;
        Ok((
            CodeUpload {
                file_name: self.file_name,
                data: data.into(),
            },
            permit,
        ))
    }
}

/// Reads the multipart form: settings fields and at most one file, bounded;
/// the file goes to disk as it arrives.
async fn read_form(mut form: Multipart) -> Result<(SettingsDraft, Option<SpooledFile>), ApiError> {
    use tokio::io::AsyncWriteExt;
    let mut draft = SettingsDraft::default();
    let mut code = None;
    let mut unknown = Vec::new();
    while let Some(mut field) = form.next_field().await? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            if code.is_some() {
                return Err(ApiError::bad_request("upload exactly one file"));
            }
            // Keep only the base name: the client's path means nothing here.
            let file_name = field
                .file_name()
                .and_then(|n| std::path::Path::new(n).file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| !n.is_empty())
                .ok_or_else(|| ApiError::bad_request("the file field needs a filename ending in .py or .zip"))?;
            let spool_err = |e: std::io::Error| {
                tracing::error!(error = %e, "cannot spool an upload");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot store the upload temporarily")
            };
            let mut file = tokio::fs::File::from_std(tempfile::tempfile().map_err(spool_err)?);
            let mut len = 0usize;
            while let Some(chunk) = field.chunk().await? {
                if len + chunk.len() > MAX_UPLOAD_BYTES {
                    // Read the (bounded) rest, so the client gets this answer
                    // instead of a reset connection while still sending.
                    while let Ok(Some(_)) = field.chunk().await {}
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("file exceeds the upload limit of {MAX_UPLOAD_BYTES} bytes (50 MiB)"),
                    ));
                }
                len += chunk.len();
                file.write_all(&chunk).await.map_err(spool_err)?;
            }
            code = Some(SpooledFile { file_name, file, len });
        } else if draft_slot(&mut draft, &name).is_some() {
            let text = read_text(field, &name).await?;
            if let Some(slot) = draft_slot(&mut draft, &name) {
                *slot = Some(text);
            }
        } else {
            unknown.push(name);
        }
    }
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "unknown form fields: {}; accepted: {ACCEPTED_FIELDS}",
            unknown.join(", ")
        )));
    }
    Ok((draft, code))
}

/// Registers a function from a `.py` file or a `.zip`.
#[utoipa::path(
    post, path = "/upload", tag = "functions",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Registered", body = UploadResponse),
        (status = 400, description = "Invalid settings, file type or archive", body = super::ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = super::ErrorBody),
        (status = 413, description = "File over 50 MiB", body = super::ErrorBody),
        (status = 429, description = "Rate limit exceeded", body = super::ErrorBody),
        (status = 503, description = "Too many uploads in flight; retry", body = super::ErrorBody),
    )
)]
pub async fn upload(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<UploadResponse>), ApiError> {
    let query = from_query(query?.0)?;
    let (form_draft, code) = read_form(form?).await?;
    let code = code.ok_or_else(|| ApiError::bad_request("missing multipart field 'file' (a .py file or a .zip)"))?;
    let draft = form_draft.or(query).or(from_headers(&headers));
    let (code, _turn) = code.load().await?;
    let record = state.functions.create(&draft, code, None).await?;
    tracing::info!(
        function_id = record.function_id,
        sha256 = record.sha256,
        "function registered"
    );
    Ok((
        StatusCode::CREATED,
        Json(UploadResponse {
            success: true,
            function_id: record.function_id.clone(),
            function: record,
        }),
    ))
}

/// Lists functions with their invocation counts.
#[utoipa::path(get, path = "/functions", tag = "functions", responses((status = 200, body = FunctionList)))]
pub async fn list_functions(State(state): State<Arc<ApiState>>) -> Result<Json<FunctionList>, ApiError> {
    let functions = state.functions.list().await?;
    Ok(Json(FunctionList {
        count: functions.len(),
        functions,
    }))
}

/// One function.
#[utoipa::path(
    get, path = "/functions/{id}", tag = "functions",
    params(("id" = String, Path, description = "Function id")),
    responses((status = 200, body = FunctionRecord), (status = 404, body = super::ErrorBody))
)]
pub async fn get_function(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<FunctionRecord>, ApiError> {
    Ok(Json(state.functions.fetch(&id).await?))
}

/// Changes a function: multipart (new `file` and/or settings fields) or JSON
/// (settings only). A replaced artifact is removed.
#[utoipa::path(
    put, path = "/functions/{id}", tag = "functions",
    params(("id" = String, Path, description = "Function id")),
    request_body(content(
        (UpdateRequest = "application/json"),
        (UploadForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, body = FunctionRecord),
        (status = 400, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "Owned by a Function resource", body = super::ErrorBody),
        (status = 413, body = super::ErrorBody),
        (status = 503, description = "Too many uploads in flight; retry", body = super::ErrorBody),
    )
)]
pub async fn update_function(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<FunctionRecord>, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (draft, code) = if content_type.starts_with("multipart/form-data") {
        let form: Multipart = req.extract().await?;
        read_form(form).await?
    } else {
        let super::error::ApiJson(body): super::error::ApiJson<UpdateRequest> = req.extract().await?;
        (json_draft(body)?, None)
    };
    if draft.is_empty() && code.is_none() {
        // Nothing to change: answered like any update (the function as it is),
        // so a client sending an unchanged form does not need a special case.
        return Ok(Json(state.functions.get(&id).await?.as_ref().clone()));
    }
    let (code, _turn) = match code {
        Some(spooled) => {
            let (code, turn) = spooled.load().await?;
            (Some(code), Some(turn))
        }
        None => (None, None),
    };
    let record = state.functions.update(&id, &draft, code, None).await?;
    tracing::info!(function_id = id, sha256 = record.sha256, "function updated");
    Ok(Json(record))
}

fn json_draft(body: UpdateRequest) -> Result<SettingsDraft, ApiError> {
    let scalar = |v: Option<serde_json::Value>| {
        v.map(|v| match v {
            serde_json::Value::String(s) => s,
            // null clears an optional setting.
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        })
    };
    let env_vars = match body.env_vars {
        Some(v @ serde_json::Value::Object(_)) => Some(v.to_string()),
        Some(_) => return Err(ApiError::bad_request("envVars must be a JSON object of strings")),
        None => None,
    };
    Ok(SettingsDraft {
        name: body.name,
        description: body.description,
        runtime: body.runtime,
        memory_mb: scalar(body.memory_mb),
        timeout_ms: scalar(body.timeout_ms),
        handler: body.handler,
        env_vars,
        min_warm: scalar(body.min_warm),
        max_warm: scalar(body.max_warm),
        keep_alive_seconds: scalar(body.keep_alive_seconds),
        network: scalar(body.network),
        max_retries: scalar(body.max_retries),
        retry_backoff_seconds: scalar(body.retry_backoff_seconds),
        retry_on_oom: scalar(body.retry_on_oom),
        max_event_age_seconds: scalar(body.max_event_age_seconds),
        max_concurrency: scalar(body.max_concurrency),
        max_queued: scalar(body.max_queued),
    })
}

/// Deletes a function: its record and every artifact.
#[utoipa::path(
    delete, path = "/functions/{id}", tag = "functions",
    params(("id" = String, Path, description = "Function id")),
    responses(
        (status = 200, body = DeleteResponse),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "Owned by a Function resource", body = super::ErrorBody),
    )
)]
pub async fn delete_function(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<DeleteResponse>, ApiError> {
    state.functions.delete(&id, None).await?;
    tracing::info!(function_id = id, "function deleted");
    Ok(Json(DeleteResponse {
        success: true,
        function_id: id,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Most entries returned, newest first (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogList {
    function_id: String,
    count: usize,
    logs: Vec<LogEntry>,
}

fn log_store(state: &ApiState) -> Result<&Arc<dyn crate::backend::LogStore>, ApiError> {
    state
        .logs
        .as_ref()
        .ok_or_else(|| ApiError::not_found("invocation logs are not enabled (set LOGS_TABLE_NAME)"))
}

/// The function's recent invocation logs.
#[utoipa::path(
    get, path = "/functions/{id}/logs", tag = "functions",
    params(("id" = String, Path, description = "Function id"), LogsQuery),
    responses((status = 200, body = LogList), (status = 404, body = super::ErrorBody))
)]
pub async fn list_logs(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<LogList>, ApiError> {
    let limit = query?.0.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be from 1 to 500"));
    }
    let store = log_store(&state)?;
    state.functions.get(&id).await?;
    let logs = store.list(&id, limit).await?;
    Ok(Json(LogList {
        function_id: id,
        count: logs.len(),
        logs,
    }))
}

/// One invocation's log.
#[utoipa::path(
    get, path = "/functions/{id}/logs/{requestId}", tag = "functions",
    params(("id" = String, Path, description = "Function id"), ("requestId" = String, Path, description = "Job id")),
    responses((status = 200, body = LogEntry), (status = 404, body = super::ErrorBody))
)]
pub async fn get_log(
    State(state): State<Arc<ApiState>>,
    Path((id, request_id)): Path<(String, String)>,
) -> Result<Json<LogEntry>, ApiError> {
    Ok(Json(log_store(&state)?.get(&id, &request_id).await?))
}
