//! The HTTP API (axum). Every route is served at `/…` and, for clients of the
//! original controller, at `/api/…`. The OpenAPI document is generated from
//! the same route registrations, so it cannot list a route that does not exist.

mod dead_letters;
pub mod error;
mod functions;
pub mod middleware;
mod run;
pub mod system;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
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

/// Bodies of JSON routes (Lambda's synchronous payload limit).
pub const JSON_BODY_LIMIT: usize = 6 * 1024 * 1024;
/// Upload bodies: the file limit plus room for the other multipart fields.
const UPLOAD_BODY_LIMIT: usize = MAX_UPLOAD_BYTES + 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub trust_forwarded_for: bool,
    /// Upper bound on how long a synchronous `/run` waits for its result.
    pub sync_timeout: Duration,
}

pub struct ApiState {
    pub functions: Arc<FunctionService>,
    pub queue: Arc<dyn JobQueue>,
    /// Job states and outcomes: the result bus backed by the durable ledger.
    pub jobs: crate::jobs::Jobs,
    /// `None` disables rate limiting.
    pub limiter: Option<Arc<dyn RateLimiter>>,
    pub metrics: Arc<Metrics>,
    /// Backends `/health` checks.
    pub probe: Arc<system::Probe>,
    /// Worker heartbeats, for `/system/status`.
    pub directory: Arc<dyn WorkerDirectory>,
    /// Invocation logs, when enabled.
    pub logs: Option<Arc<dyn LogStore>>,
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
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(functions::list_functions))
        .routes(routes!(run::run))
        .routes(routes!(run::status))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::redrive))
        .routes(routes!(system::health))
        .routes(routes!(system::metrics))
        .routes(routes!(system::models))
        .routes(routes!(system::system_status))
        .routes(routes!(system::warm_pool))
        .routes(routes!(functions::list_logs))
        .routes(routes!(functions::get_log))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .merge(uploads)
        .split_for_parts()
}

/// The OpenAPI 3 document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

pub fn router(state: Arc<ApiState>) -> Router {
    let (api, doc) = routes();
    let doc = Arc::new(doc);
    let api = api.route("/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }));
    Router::new()
        .merge(api.clone())
        .nest("/api", api)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::guard))
        // A bug must cost one request an opaque 500, never the server.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::observe))
        .with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, &"a request handler panicked").into_response()
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The error body every failure has.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error: String,
    pub request_id: Option<String>,
    /// Every validation problem, when there are several.
    pub details: Option<Vec<String>>,
    /// Present on 504: the job still runs and can be polled.
    pub job_id: Option<String>,
}
