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
use crate::function::settings::{SettingField, SettingKind, SETTING_FIELDS};
use crate::function::SettingsDraft;
use crate::model::{FunctionRecord, LogEntry};

const FIELD_TEXT_LIMIT: usize = 64 * 1024;

/// The multipart form of `POST /upload` (and of `PUT` with new code): the
/// `file` and every setting, described from the one table of settings
/// (`function::settings::SETTING_FIELDS`). Settings are also taken as query
/// parameters, and `x-runtime`, `x-memory-mb`, `x-function-name` as headers.
pub struct UploadForm;

/// `PUT /functions/{id}` as JSON: any settings, from the same table. Unknown
/// members are ignored (named in the answer's `ignoredFields`), as by the
/// original controller.
pub struct UpdateRequest;

fn setting_schema(f: &SettingField, form: bool) -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let text = |b: ObjectBuilder| b.schema_type(SchemaType::new(Type::String));
    let b = ObjectBuilder::new().description(Some(f.doc));
    let b = match f.kind {
        SettingKind::Text { max_len } => text(b).max_length(Some(max_len)),
        SettingKind::Choice(words) => text(b).enum_values(Some(words.iter().copied())),
        SettingKind::Integer { min, max } => b
            .schema_type(SchemaType::new(Type::Integer))
            .minimum(Some(min as f64))
            .maximum(Some(max as f64)),
        SettingKind::Boolean => b.schema_type(SchemaType::new(Type::Boolean)),
        // A form field is text: the JSON object written out.
        SettingKind::Object if form => text(b),
        SettingKind::Object => b
            .schema_type(SchemaType::new(Type::Object))
            .additional_properties(Some(ObjectBuilder::new().schema_type(SchemaType::new(Type::String)))),
    };
    b.build().into()
}

fn settings_object(form: bool) -> utoipa::openapi::schema::ObjectBuilder {
    let mut b = utoipa::openapi::schema::ObjectBuilder::new();
    for f in SETTING_FIELDS {
        b = b.property(f.name, setting_schema(f, form));
    }
    b
}

impl utoipa::PartialSchema for UploadForm {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, SchemaType, Type};
        let file = ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::String))
            .format(Some(SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Binary)))
            .description(Some(
                "A `.py`, `.js` or `.mjs` file (stored as the handler's module; its extension sets the \
                 runtime when none is given) or a `.zip` holding the handler module. Without a filename, a \
                 zip is known by its signature and anything else is the runtime's source file.",
            ))
            .examples(["def handler(event, context):\n    return event\n"]);
        settings_object(true)
            .property("file", file)
            .required("file")
            .build()
            .into()
    }
}

impl utoipa::ToSchema for UploadForm {}

impl utoipa::PartialSchema for UpdateRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        settings_object(false).build().into()
    }
}

impl utoipa::ToSchema for UpdateRequest {}

/// A function as the API shows it: the original controller's fields first
/// (`id`, `functionId`, `name`, `description`, `runtime`, `memoryMb`,
/// `invocations`, `avgDuration`, `avgHandlerDuration`, `uploadedAt`,
/// `s3Key`), then this platform's. Environment variable values never leave
/// the server: only their names.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionView {
    /// Same as `functionId` (the original's `GET /functions/{id}` calls it `id`).
    id: String,
    function_id: String,
    name: String,
    description: String,
    runtime: crate::model::Runtime,
    memory_mb: u32,
    /// Runs accepted.
    invocations: u64,
    /// Mean `durationMs` of finished runs, rounded to ms (0 before the first).
    avg_duration: u64,
    /// Mean handler time in ms (3 decimals); null when no run reported it.
    avg_handler_duration: Option<f64>,
    uploaded_at: chrono::DateTime<chrono::Utc>,
    s3_key: String,
    original_name: String,
    sha256: String,
    size_bytes: u64,
    timeout_ms: u64,
    handler: String,
    /// Names of the function's environment variables (values are not shown).
    env_var_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<chrono::DateTime<chrono::Utc>>,
    warm_pool: crate::model::WarmPool,
    network: bool,
    /// `handler` or `program` (see the `style` setting).
    style: crate::model::FunctionStyle,
    /// `namespace/name` of the Function resource that owns it (read-only here).
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    retry: crate::model::RetryPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_queued: Option<u32>,
    /// Runs that reached an outcome.
    finished_runs: u64,
}

impl FunctionView {
    pub fn of(r: &FunctionRecord) -> Self {
        FunctionView {
            id: r.function_id.clone(),
            function_id: r.function_id.clone(),
            name: r.name.clone(),
            description: r.description.clone(),
            runtime: r.runtime,
            memory_mb: r.memory_mb,
            invocations: r.invocations,
            avg_duration: r.avg_duration(),
            avg_handler_duration: r.avg_handler_duration(),
            uploaded_at: r.uploaded_at,
            s3_key: r.s3_key.clone(),
            original_name: r.original_name.clone(),
            sha256: r.sha256.clone(),
            size_bytes: r.size_bytes,
            timeout_ms: r.timeout_ms,
            handler: r.handler.clone(),
            env_var_names: r.env_vars.keys().cloned().collect(),
            updated_at: r.updated_at,
            warm_pool: r.warm_pool,
            network: r.network,
            style: r.style,
            owner: r.owner.clone(),
            retry: r.retry,
            max_concurrency: r.max_concurrency,
            max_queued: r.max_queued,
            finished_runs: r.finished_runs,
        }
    }
}

/// The original's `{success, functionId}`, plus the function registered.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadResponse {
    /// Always true.
    success: bool,
    function_id: String,
    function: FunctionView,
    /// Form fields and query parameters this server does not know; they were
    /// ignored, as the original controller ignores them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ignored_fields: Vec<String>,
}

/// The original's `{success, functionId}` with the function as it is now.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateResponse {
    /// Always true.
    success: bool,
    #[serde(flatten)]
    function: FunctionView,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ignored_fields: Vec<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteResponse {
    /// Always true.
    success: bool,
    /// The original controller's name for the id.
    deleted_id: String,
    function_id: String,
}

/// Settings from query parameters, and the names of those that are not settings.
fn from_query(query: HashMap<String, String>) -> (SettingsDraft, Vec<String>) {
    let mut draft = SettingsDraft::default();
    let mut unknown = Vec::new();
    for (k, v) in query {
        match SettingsDraft::field(&k) {
            Some(f) => *f.slot(&mut draft) = Some(v),
            None => unknown.push(k),
        }
    }
    unknown.sort();
    (draft, unknown)
}

/// The original controller's headers. `x-function-name` is percent-encoded
/// by its clients (a header holds no UTF-8), so it is decoded.
fn from_headers(headers: &HeaderMap) -> Result<SettingsDraft, ApiError> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let name = get("x-function-name")
        .map(|n| {
            percent_decode(&n).ok_or_else(|| {
                ApiError::bad_request("x-function-name is not valid percent-encoded UTF-8 (encodeURIComponent)")
            })
        })
        .transpose()?;
    Ok(SettingsDraft {
        runtime: get("x-runtime"),
        memory_mb: get("x-memory-mb"),
        name,
        timeout_ms: get("x-timeout-ms"),
        ..SettingsDraft::default()
    })
}

/// `%XX` sequences to bytes, then UTF-8; None when malformed.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
    /// None when the part had no filename (`curl -F file=<main.py`).
    file_name: Option<String>,
    file: tokio::fs::File,
    len: usize,
}

impl SpooledFile {
    /// Takes the file into memory once the process-wide upload budget has
    /// room for it; the permit is held until the upload is registered.
    async fn load(
        mut self,
        draft: &SettingsDraft,
    ) -> Result<(CodeUpload, tokio::sync::SemaphorePermit<'static>), ApiError> {
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
        let file_name = self
            .file_name
            .unwrap_or_else(|| unnamed_upload(&data, draft).to_string());
        Ok((
            CodeUpload {
                file_name,
                data: data.into(),
            },
            permit,
        ))
    }
}

/// The name an upload without a filename is taken under: a zip by its
/// signature, else the source file of the runtime asked for (Python by default).
fn unnamed_upload(data: &[u8], draft: &SettingsDraft) -> &'static str {
    if data.starts_with(b"PK\x03\x04") {
        "upload.zip"
    } else if draft.runtime.as_deref().map(str::trim) == Some("nodejs") {
        "index.js"
    } else {
        "main.py"
    }
}

/// Reads the multipart form: settings fields and at most one file, bounded;
/// the file goes to disk as it arrives.
async fn read_form(mut form: Multipart) -> Result<(SettingsDraft, Option<SpooledFile>, Vec<String>), ApiError> {
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
                .filter(|n| !n.is_empty());
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
        } else if let Some(setting) = SettingsDraft::field(&name) {
            *setting.slot(&mut draft) = Some(read_text(field, &name).await?);
        } else {
            // Drain it (bounded, like a setting) and ignore it, as the
            // original controller does: its dashboard sends functionId too.
            read_text(field, &name).await?;
            unknown.push(name);
        }
    }
    Ok((draft, code, unknown))
}

/// Registers a function from a `.py` file or a `.zip`.
#[utoipa::path(
    post, path = "/upload", tag = "functions",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Registered", body = UploadResponse),
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
) -> Result<Json<UploadResponse>, ApiError> {
    let (query, mut ignored) = from_query(query?.0);
    // The body is read before anything else can refuse the request, so the
    // client reads the answer rather than a connection closed mid-upload.
    let (form_draft, code, unknown_fields) = read_form(form?).await?;
    ignored.extend(unknown_fields);
    let from_headers = from_headers(&headers)?;
    let code = code.ok_or_else(|| {
        ApiError::bad_request("No file provided: missing multipart field 'file' (a .py file or a .zip)")
    })?;
    // The original controller's headers are its only source of settings and
    // win here: its dashboard also sends form fields it never meant to be
    // read (`runtime=python3.11`). An empty field on an upload is no value.
    let draft = from_headers.or(form_draft.without_empty()).or(query.without_empty());
    let (code, _turn) = code.load(&draft).await?;
    let record = state.functions.create(&draft, code, None).await?;
    tracing::info!(
        function_id = record.function_id,
        sha256 = record.sha256,
        "function registered"
    );
    state
        .activity
        .info("Upload Success", &record.function_id, serde_json::json!({}));
    // 200, not 201: the original's clients check for it.
    Ok(Json(UploadResponse {
        success: true,
        function_id: record.function_id.clone(),
        function: FunctionView::of(&record),
        ignored_fields: ignored,
    }))
}

/// Lists functions: a bare array, as the original controller answers.
#[utoipa::path(get, path = "/functions", tag = "functions", responses((status = 200, body = Vec<FunctionView>)))]
pub async fn list_functions(State(state): State<Arc<ApiState>>) -> Result<Json<Vec<FunctionView>>, ApiError> {
    let functions = state.functions.list().await?;
    Ok(Json(functions.iter().map(FunctionView::of).collect()))
}

/// One function.
#[utoipa::path(
    get, path = "/functions/{id}", tag = "functions",
    params(("id" = String, Path, description = "Function id")),
    responses((status = 200, body = FunctionView), (status = 404, body = super::ErrorBody))
)]
pub async fn get_function(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<FunctionView>, ApiError> {
    Ok(Json(FunctionView::of(&state.functions.fetch(&id).await?)))
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
        (status = 200, body = UpdateResponse),
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
) -> Result<Json<UpdateResponse>, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (draft, code, ignored_fields) = if content_type.starts_with("multipart/form-data") {
        let form: Multipart = req.extract().await?;
        read_form(form).await?
    } else {
        let super::error::ApiJson(body): super::error::ApiJson<serde_json::Map<String, serde_json::Value>> =
            req.extract().await?;
        let (draft, ignored) = json_draft(body)?;
        (draft, None, ignored)
    };
    let answer = |record: &FunctionRecord, ignored_fields: Vec<String>| {
        Json(UpdateResponse {
            success: true,
            function: FunctionView::of(record),
            ignored_fields,
        })
    };
    if draft.is_empty() && code.is_none() {
        // Nothing to change: answered like any update (the function as it is),
        // so a client sending an unchanged form does not need a special case.
        return Ok(answer(&state.functions.fetch(&id).await?, ignored_fields));
    }
    let (code, _turn) = match code {
        Some(spooled) => {
            let (code, turn) = spooled.load(&draft).await?;
            (Some(code), Some(turn))
        }
        None => (None, None),
    };
    let record = state.functions.update(&id, &draft, code, None).await?;
    tracing::info!(function_id = id, sha256 = record.sha256, "function updated");
    state.activity.info("Function Updated", &id, serde_json::json!({}));
    Ok(answer(&record, ignored_fields))
}

/// Settings from a JSON object: scalars as their text (null clears an
/// optional setting), `envVars` as an object; unknown members are named.
fn json_draft(body: serde_json::Map<String, serde_json::Value>) -> Result<(SettingsDraft, Vec<String>), ApiError> {
    let mut draft = SettingsDraft::default();
    let mut ignored = Vec::new();
    for (key, value) in body {
        let Some(setting) = SettingsDraft::field(&key) else {
            ignored.push(key);
            continue;
        };
        let text = match (setting.kind, value) {
            (SettingKind::Object, v @ serde_json::Value::Object(_)) => v.to_string(),
            (SettingKind::Object, serde_json::Value::Null) => String::new(),
            (SettingKind::Object, _) => {
                return Err(ApiError::bad_request(format!("{key} must be a JSON object of strings")))
            }
            (_, serde_json::Value::String(s)) => s,
            (_, serde_json::Value::Null) => String::new(),
            (_, other) => other.to_string(),
        };
        *setting.slot(&mut draft) = Some(text);
    }
    ignored.sort();
    Ok((draft, ignored))
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
    state.activity.info("Function Deleted", &id, serde_json::json!({}));
    Ok(Json(DeleteResponse {
        success: true,
        deleted_id: id.clone(),
        function_id: id,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct LogsQuery {
    /// Most entries returned, newest first (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Only invocations that finished at or after this time (RFC 3339, e.g. `2026-12-01T00:00:00Z`).
    #[param(value_type = Option<String>, format = DateTime)]
    start_time: Option<String>,
}

/// Most characters of output in a list entry's `message`.
const LIST_MESSAGE_CHARS: usize = 200;

/// One invocation in a function's log list: the original controller's
/// fields (`id`, `requestId`, `timestamp`, `status`, `duration`,
/// `handlerDurationMs`, `memory`, `message`), then this platform's. The full
/// output is at `/functions/{id}/logs/{requestId}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvocationLog {
    /// Same as `requestId`.
    id: String,
    request_id: String,
    /// When the run finished.
    timestamp: chrono::DateTime<chrono::Utc>,
    status: crate::model::JobStatus,
    /// ms, rounded.
    duration: u64,
    handler_duration_ms: Option<f64>,
    /// Peak memory in MB, rounded.
    memory: u64,
    /// The start of `stderr`, else `stdout` (200 characters, then `...`).
    message: String,
    function_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<crate::model::ErrorInfo>,
    cold_start: bool,
    attempt: u32,
}

impl InvocationLog {
    fn of(e: LogEntry) -> Self {
        let text = if e.stderr.is_empty() { &e.stdout } else { &e.stderr };
        let mut message: String = text.chars().take(LIST_MESSAGE_CHARS).collect();
        if message.len() < text.len() {
            message.push_str("...");
        }
        InvocationLog {
            id: e.request_id.clone(),
            request_id: e.request_id,
            timestamp: e.finished_at,
            status: e.status,
            duration: e.duration_ms.max(0.0).round() as u64,
            handler_duration_ms: e.handler_duration_ms,
            memory: (e.peak_memory_bytes as f64 / 1_048_576.0).round() as u64,
            message,
            function_id: e.function_id,
            error: e.error,
            cold_start: e.cold_start,
            attempt: e.attempt,
        }
    }
}

/// One invocation's full log: the original's `{message}` (all of `stderr`,
/// else `stdout`), and the entry.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvocationLogDetail {
    message: String,
    #[serde(flatten)]
    entry: LogEntry,
}

fn log_store(state: &ApiState) -> Result<&Arc<dyn crate::backend::LogStore>, ApiError> {
    state
        .logs
        .as_ref()
        .ok_or_else(|| ApiError::not_found("invocation logs are not enabled (set LOGS_TABLE_NAME)"))
}

/// The function's recent invocations, newest first: a bare array, as the
/// original controller answers.
#[utoipa::path(
    get, path = "/functions/{id}/logs", tag = "functions",
    params(("id" = String, Path, description = "Function id"), LogsQuery),
    responses((status = 200, body = Vec<InvocationLog>), (status = 404, body = super::ErrorBody))
)]
pub async fn list_logs(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<Vec<InvocationLog>>, ApiError> {
    let query = query?.0;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be from 1 to 1000"));
    }
    let since = query
        .start_time
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| ApiError::bad_request("startTime must be an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"))
        })
        .transpose()?;
    let store = log_store(&state)?;
    state.functions.get(&id).await?;
    // Newest first, so the newest `limit` that are recent enough are these.
    let logs = store.list(&id, limit).await?;
    Ok(Json(
        logs.into_iter()
            .filter(|e| since.is_none_or(|s| e.finished_at >= s))
            .map(InvocationLog::of)
            .collect(),
    ))
}

/// One invocation's log.
#[utoipa::path(
    get, path = "/functions/{id}/logs/{requestId}", tag = "functions",
    params(("id" = String, Path, description = "Function id"), ("requestId" = String, Path, description = "Job id")),
    responses((status = 200, body = InvocationLogDetail), (status = 404, body = super::ErrorBody))
)]
pub async fn get_log(
    State(state): State<Arc<ApiState>>,
    Path((id, request_id)): Path<(String, String)>,
) -> Result<Json<InvocationLogDetail>, ApiError> {
    let entry = log_store(&state)?.get(&id, &request_id).await?;
    let message = if entry.stderr.is_empty() {
        entry.stdout.clone()
    } else {
        entry.stderr.clone()
    };
    Ok(Json(InvocationLogDetail { message, entry }))
}

/// The files of the function's current code.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CodeListing {
    function_id: String,
    sha256: String,
    /// Sorted by path, 500 at most; UTF-8 files up to 256 KiB with their text
    /// (1 MiB of text in all).
    files: Vec<crate::function::package::CodeFile>,
    /// Files in the code (more than `files` holds when above 500).
    total_files: usize,
}

/// The function's code: its files, and the text of the small ones (the
/// console's code view).
#[utoipa::path(
    get, path = "/functions/{id}/code", tag = "functions",
    params(("id" = String, Path, description = "Function id")),
    responses((status = 200, body = CodeListing), (status = 404, body = super::ErrorBody))
)]
pub async fn function_code(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<CodeListing>, ApiError> {
    let record = state.functions.fetch(&id).await?;
    let data = state.functions.artifacts().get(&record.s3_key).await?;
    let listing = tokio::task::spawn_blocking(move || crate::function::package::list_files(&data))
        .await
        .map_err(|e| ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, &e))?
        .map_err(|e| ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, &e))?;
    Ok(Json(CodeListing {
        function_id: record.function_id,
        sha256: record.sha256,
        files: listing.files,
        total_files: listing.total,
    }))
}

/// The newest logged runs the figures are computed from.
const STATS_RUNS: usize = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct StatsQuery {
    /// How far back, in minutes (default 60).
    #[param(minimum = 1, maximum = 1440)]
    minutes: Option<u32>,
}

/// The function's recent figures from its invocation logs (the newest 1,000
/// runs at most; `complete` is false when the window holds more): runs,
/// error rate, cold-start share, duration p50/p99, and a series of them per
/// interval for charts.
#[utoipa::path(
    get, path = "/functions/{id}/stats", tag = "functions",
    params(("id" = String, Path, description = "Function id"), StatsQuery),
    responses(
        (status = 200, body = crate::function::stats::FunctionStats),
        (status = 400, body = super::ErrorBody),
        (status = 404, description = "Unknown function, or logs not enabled", body = super::ErrorBody),
    )
)]
pub async fn function_stats(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<crate::function::stats::FunctionStats>, ApiError> {
    use crate::function::stats;
    let minutes = query?.0.minutes.unwrap_or(60);
    if !(1..=stats::MAX_WINDOW_MINUTES).contains(&minutes) {
        return Err(ApiError::bad_request(format!(
            "minutes must be from 1 to {}",
            stats::MAX_WINDOW_MINUTES
        )));
    }
    let store = log_store(&state)?;
    state.functions.get(&id).await?;
    let logs = store.list(&id, STATS_RUNS).await?;
    let window = chrono::Duration::minutes(i64::from(minutes));
    Ok(Json(stats::compute(
        &logs,
        STATS_RUNS,
        chrono::Utc::now(),
        window,
        stats::bucket_for(window),
    )))
}

/// What this API process did lately (runs requested, results delivered,
/// uploads, changes), newest first, at most 100: the original controller's
/// activity list.
#[utoipa::path(
    get, path = "/logs", tag = "system",
    responses((status = 200, body = Vec<super::activity::ActivityEntry>))
)]
pub async fn recent_activity(State(state): State<Arc<ApiState>>) -> Json<Vec<super::activity::ActivityEntry>> {
    Json(state.activity.recent())
}
