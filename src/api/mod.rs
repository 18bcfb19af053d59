//! The HTTP API (axum). Every route is served at `/…` and, for clients of the
//! original controller, at `/api/…`. The OpenAPI document is generated from
//! the same route registrations, so it cannot list a route that does not exist.

pub mod activity;
pub mod console;
mod dead_letters;
pub mod error;
mod functions;
pub mod middleware;
mod recommendation;
mod run;
pub mod system;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ai::AiClient;
use crate::backend::{JobQueue, LogStore, RateLimiter, WorkerDirectory};
use crate::function::package::MAX_UPLOAD_BYTES;
use crate::function::FunctionService;
use crate::metrics::Metrics;
use error::ApiError;

/// Bodies of JSON routes (the original controller's 10 MB).
pub const JSON_BODY_LIMIT: usize = 10 * 1024 * 1024;
/// Upload bodies: the file limit plus room for the other multipart fields.
const UPLOAD_BODY_LIMIT: usize = MAX_UPLOAD_BYTES + 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub trust_forwarded_for: bool,
    /// Upper bound on how long a synchronous `/run` waits for its result.
    pub sync_timeout: Duration,
    /// Who gets `Access-Control-Allow-Origin`.
    pub cors_origins: crate::config::CorsOrigins,
}

pub struct ApiState {
    pub functions: Arc<FunctionService>,
    pub queue: Arc<dyn JobQueue>,
    /// Job states and outcomes: the result bus backed by the durable ledger.
    pub jobs: crate::jobs::Jobs,
    /// Uploads and runs per client IP; `None` disables the limit.
    pub limiter: Option<Arc<dyn RateLimiter>>,
    /// Failed authentications per client IP (brute-force guard); `None` disables it.
    pub auth_limiter: Option<Arc<dyn RateLimiter>>,
    pub metrics: Arc<Metrics>,
    /// Backends `/health` checks.
    pub probe: Arc<system::Probe>,
    /// Worker heartbeats, for `/system/status`.
    pub directory: Arc<dyn WorkerDirectory>,
    /// Invocation logs, when enabled.
    pub logs: Option<Arc<dyn LogStore>>,
    /// Recent events of this process (`GET /logs`).
    pub activity: activity::Activity,
    pub ai: AiClient,
    pub api_key_hash: [u8; 32],
    pub settings: ApiSettings,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Infra Controller API",
        description = "Upload functions and run them from warm pools. Every path is also served under the `/api` prefix. \
                       Authenticate with the `x-api-key` header (all routes but health and metrics).",
    ),
    modifiers(&SecurityAddon),
    security(("api_key" = [])),
    tags(
        (name = "functions", description = "Register, inspect, update and delete functions"),
        (name = "jobs", description = "Run functions and follow their jobs"),
        (name = "system", description = "Health, metrics and the AI node"),
    )
)]
struct ApiDoc;

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

/// The error statuses every operation of a kind can answer, added to each
/// operation of the document (with the one error body), so a client or a
/// contract test meets no undocumented status; and the links a client
/// follows from an upload to a run to its status.
struct CommonResponses;

impl CommonResponses {
    fn error(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
            .into()
    }
}

impl CommonResponses {
    /// 429: uploads and runs over the limit, or too many failed keys from
    /// one address; `{"error": "Too Many Requests"}` with its headers.
    /// Adds the 429 of the limits, or its headers and words to an
    /// operation's own 429 (`/run`'s maxQueued).
    fn add_too_many(
        responses: &mut std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>>,
    ) {
        let common = Self::too_many();
        match responses.get_mut("429") {
            Some(utoipa::openapi::RefOr::T(own)) => {
                if let utoipa::openapi::RefOr::T(common) = common {
                    own.description = format!("{} Or: {}", own.description, common.description);
                    for (name, header) in common.headers {
                        own.headers.entry(name).or_insert(header);
                    }
                }
            }
            Some(_) => {}
            None => {
                responses.insert("429".to_string(), common);
            }
        }
    }

    fn too_many() -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, ResponseBuilder, Type};
        let integer = |description: &str| {
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer))
                .description(Some(description))
                .build()
        };
        ResponseBuilder::new()
            .description(
                "Too many uploads and runs from this address (`POST /upload`, `POST /run`), or too many failed \
                 keys from it: `{\"error\": \"Too Many Requests\"}`",
            )
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .header("Retry-After", integer("Seconds until a request is allowed again"))
            .header("X-RateLimit-Limit", integer("Requests allowed in any 60 s window"))
            .header("X-RateLimit-Remaining", integer("Requests left now (0)"))
            .build()
            .into()
    }
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        for (path, item) in openapi.paths.paths.iter_mut() {
            let public = middleware::is_public(path);
            for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                let body = op
                    .request_body
                    .as_ref()
                    .map(|b| b.content.keys().cloned().collect::<Vec<_>>());
                let params = op.parameters.clone().unwrap_or_default();
                let responses = &mut op.responses.responses;
                if !public {
                    Self::add_too_many(responses);
                }
                let mut add = |code: &str, description: &str| {
                    responses
                        .entry(code.to_string())
                        .or_insert_with(|| Self::error(description));
                };
                if !public {
                    add("401", "Missing or invalid x-api-key: `{\"error\": \"Unauthorized\"}`");
                }
                add("503", "A backend is unavailable; try again shortly");
                if let Some(types) = body {
                    add("400", "Invalid request");
                    add("413", "Request body too large");
                    add("415", "Unsupported content type");
                    if types.iter().any(|t| t == "application/json") {
                        add("422", "JSON of the wrong shape");
                    }
                }
                if params.iter().any(|p| p.parameter_in == ParameterIn::Path) {
                    add("400", "Invalid path parameter");
                    add("404", "Not found");
                }
                if params.iter().any(|p| p.parameter_in == ParameterIn::Query) {
                    add("400", "Invalid query parameter");
                }
            }
        }
        self.links(openapi);
    }
}

impl CommonResponses {
    /// upload → get/run the function; run (async) → its status.
    fn links(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::link::LinkBuilder;
        let link_to = |path: &str, code: &str, name: &str, link: utoipa::openapi::link::Link| {
            (path.to_string(), code.to_string(), name.to_string(), link)
        };
        let links = [
            link_to(
                "/upload",
                "200",
                "GetFunction",
                LinkBuilder::new()
                    .operation_id("get_function")
                    .parameter("id", "$response.body#/functionId")
                    .build(),
            ),
            link_to(
                "/upload",
                "200",
                "RunFunction",
                LinkBuilder::new()
                    .operation_id("run")
                    .request_body(Some(serde_json::json!({"functionId": "$response.body#/functionId"})))
                    .build(),
            ),
            link_to(
                "/run",
                "202",
                "JobStatus",
                LinkBuilder::new()
                    .operation_id("status")
                    .parameter("jobId", "$response.body#/jobId")
                    .build(),
            ),
            link_to(
                "/run",
                "200",
                "JobStatus",
                LinkBuilder::new()
                    .operation_id("status")
                    .parameter("jobId", "$response.body#/jobId")
                    .build(),
            ),
        ];
        for (path, code, name, link) in links {
            let Some(item) = openapi.paths.paths.get_mut(&path) else {
                continue;
            };
            for op in [&mut item.get, &mut item.post, &mut item.put].into_iter().flatten() {
                if let Some(utoipa::openapi::RefOr::T(resp)) = op.responses.responses.get_mut(&code) {
                    resp.links.insert(name.clone(), link.clone().into());
                }
            }
        }
    }
}

/// The routes and their OpenAPI description, from one registration.
fn routes() -> (Router<Arc<ApiState>>, utoipa::openapi::OpenApi) {
    let uploads = OpenApiRouter::new()
        .routes(routes!(functions::upload))
        .routes(routes!(
            functions::get_function,
            functions::update_function,
            functions::delete_function
        ))
        .layer(DefaultBodyLimit::max(UPLOAD_BODY_LIMIT));
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(functions::list_functions))
        .routes(routes!(run::run))
        .routes(routes!(run::status))
        .routes(routes!(run::output_file))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::redrive))
        .routes(routes!(system::health))
        .routes(routes!(system::metrics))
        .routes(routes!(system::models))
        .routes(routes!(system::system_status))
        .routes(routes!(system::warm_pool))
        .routes(routes!(recommendation::recommendation))
        .routes(routes!(functions::list_logs))
        .routes(routes!(functions::get_log))
        .routes(routes!(functions::function_stats))
        .routes(routes!(functions::function_code))
        .routes(routes!(functions::recent_activity))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .merge(uploads)
        .split_for_parts();
    // After the routes are in: the modifier walks their operations.
    let (router, mut doc) = (router, doc);
    CommonResponses.modify(&mut doc);
    (router, doc)
}

/// The document as served. utoipa 5.5 writes a link's fields in snake case
/// (`operation_id`, `request_body`); OpenAPI spells them `operationId` and
/// `requestBody`, so links are mended here.
pub fn document_json(doc: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut value = serde_json::to_value(doc).unwrap_or_default();
    if let Some(paths) = value.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for item in paths.values_mut().filter_map(|i| i.as_object_mut()) {
            for op in item.values_mut().filter_map(|o| o.as_object_mut()) {
                let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) else {
                    continue;
                };
                for resp in responses.values_mut() {
                    let Some(links) = resp.get_mut("links").and_then(|l| l.as_object_mut()) else {
                        continue;
                    };
                    for link in links.values_mut().filter_map(|l| l.as_object_mut()) {
                        for (from, to) in [("operation_id", "operationId"), ("request_body", "requestBody")] {
                            if let Some(v) = link.remove(from) {
                                link.insert(to.to_string(), v);
                            }
                        }
                    }
                }
            }
        }
    }
    value
}

/// The OpenAPI 3 document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

pub fn router(state: Arc<ApiState>) -> Router {
    let (api, doc) = routes();
    let doc = Arc::new(document_json(&doc));
    let api = api.route("/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }));
    Router::new()
        .merge(api.clone())
        .nest("/api", api)
        .merge(console::router())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::guard))
        // A bug must cost one request an opaque 500, never the server.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::observe))
        // Outermost: preflights are answered before the key check, and every
        // answer (errors too) carries the CORS headers.
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::cors))
        .with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, &"a request handler panicked").into_response()
}

/// Like every refusal made before a handler, answered after a bounded read of
/// the body, so a client still sending (an upload to a wrong path) reads it.
async fn no_route(req: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let err = ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.uri().path()),
    );
    middleware::drain_then(req, err.into_response()).await
}

async fn method_not_allowed(req: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let err = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    );
    middleware::drain_then(req, err.into_response()).await
}

/// The error body every failure has. A 401 and a 429 carry the original's
/// exact `error` text (`Unauthorized`, `Too Many Requests`) with the detail
/// in `message`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error: String,
    /// The detail, where `error` is the original's fixed text (401, 429).
    pub message: Option<String>,
    /// On 429: seconds until a request is allowed again (as `Retry-After`).
    pub retry_after: Option<u64>,
    pub request_id: Option<String>,
    /// Every validation problem, when there are several.
    pub details: Option<Vec<String>>,
    /// Present on 504: the job still runs and can be polled.
    pub job_id: Option<String>,
}
