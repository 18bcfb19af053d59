//! `/health`, `/metrics`, `/models`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use crate::ai::ModelsResponse;
use crate::backend;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    ok: bool,
    latency_ms: f64,
    /// `unavailable` or `timeout`; details are in the server log.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    status: &'static str,
    checks: BTreeMap<&'static str, Check>,
}

async fn check(name: &'static str, ping: impl Future<Output = backend::Result<()>>) -> (&'static str, Check) {
    let t0 = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, ping).await;
    let latency_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            tracing::warn!(backend = name, error = %e, "health check failed");
            Some("unavailable")
        }
        Err(_) => Some("timeout"),
    };
    (
        name,
        Check {
            ok: error.is_none(),
            latency_ms,
            error,
        },
    )
}

/// Pings every backend: 200 when all answer, 503 otherwise.
#[utoipa::path(
    get, path = "/health", tag = "system", security(()),
    responses((status = 200, body = Health), (status = 503, body = Health))
)]
pub async fn health(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    let artifacts = state.functions.artifacts().clone();
    let registry = state.functions.registry().clone();
    let (a, r, q, b) = tokio::join!(
        check("artifacts", artifacts.ping()),
        check("registry", registry.ping()),
        check("queue", state.queue.ping()),
        check("resultBus", state.bus.ping()),
    );
    let mut checks: BTreeMap<_, _> = [a, r, q, b].into_iter().collect();
    if let Some(limiter) = &state.limiter {
        let (name, c) = check("rateLimiter", limiter.ping()).await;
        checks.insert(name, c);
    }
    let healthy = checks.values().all(|c| c.ok);
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Health {
            status: if healthy { "ok" } else { "degraded" },
            checks,
        }),
    )
}

/// Prometheus text exposition.
#[utoipa::path(
    get, path = "/metrics", tag = "system", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Models of the AI node (`AI_NODE_URL`); a marked fallback when it is unset or down.
#[utoipa::path(get, path = "/models", tag = "system", responses((status = 200, body = ModelsResponse)))]
pub async fn models(State(state): State<Arc<ApiState>>) -> Json<ModelsResponse> {
    Json(state.ai.models().await)
}
