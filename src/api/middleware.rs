//! Request id, access log and metrics for every request; rate limit and
//! API-key check for every route but the public ones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::Instrument;

use super::error::ApiError;
use super::ApiState;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served (set by `observe`).
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Routes reachable without an API key and outside the rate limit: probes and scrapers.
const PUBLIC_ROUTES: &[&str] = &[
    "/health",
    "/metrics",
    "/openapi.json",
    "/api/health",
    "/api/metrics",
    "/api/openapi.json",
];

/// True for a documented path (no `/api` prefix) that needs no key.
pub fn is_public(path: &str) -> bool {
    PUBLIC_ROUTES.contains(&path)
}

/// Accepts a caller's `x-request-id` when it is short and plain; otherwise makes one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn route_of(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string())
}

pub async fn observe(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let id = request_id(req.headers());
    let method = req.method().clone();
    let route = route_of(&req);
    let started = Instant::now();
    let span = tracing::info_span!("http", request_id = %id, method = %method, route = %route);
    let mut resp = REQUEST_ID
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;
    if resp.status().is_client_error() || resp.status().is_server_error() {
        resp = REQUEST_ID.scope(id.clone(), as_json_error(resp)).await;
    }
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    state
        .metrics
        .http_duration
        .with_label_values(&[method.as_str(), route.as_str(), &status.to_string()])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| tracing::debug!(status, latency_ms = elapsed.as_secs_f64() * 1000.0, "request served"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Most of a plain-text error body kept as the JSON error's message.
const PLAIN_ERROR_MAX: usize = 1024;

/// Every error leaves as the one JSON error body: rejections produced outside
/// the handlers (axum's extractors, body limits) come as plain text.
async fn as_json_error(resp: Response) -> Response {
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, PLAIN_ERROR_MAX * 4).await {
        Ok(b) => String::from_utf8_lossy(&b)
            .trim()
            .chars()
            .take(PLAIN_ERROR_MAX)
            .collect::<String>(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        parts.status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut out = ApiError::new(parts.status, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// The client address used for rate limiting: the peer, or the first
/// `X-Forwarded-For` hop when the API sits behind a trusted proxy.
fn client_ip(req: &Request, trust_forwarded_for: bool) -> String {
    if trust_forwarded_for {
        if let Some(first) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            return first.to_string();
        }
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Constant-time: both sides are hashed first, so neither content nor length leaks.
fn authorized(headers: &HeaderMap, key_hash: &[u8; 32]) -> bool {
    headers
        .get("x-api-key")
        .map(|v| bool::from(hash_key_bytes(v.as_bytes()).ct_eq(key_hash)))
        .unwrap_or(false)
}

fn hash_key_bytes(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

pub async fn guard(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let route = route_of(&req);
    if PUBLIC_ROUTES.contains(&route.as_str()) {
        return next.run(req).await;
    }
    let decision = match &state.limiter {
        Some(limiter) => match limiter
            .check(&client_ip(&req, state.settings.trust_forwarded_for))
            .await
        {
            Ok(d) => Some(d),
            Err(e) => return ApiError::from(e).into_response(),
        },
        None => None,
    };
    let mut resp = match decision {
        Some(d) if !d.allowed => {
            let mut r = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "rate limit exceeded: {} requests per minute; retry in {} s",
                    d.limit, d.reset_secs
                ),
            )
            .into_response();
            r.headers_mut().insert("retry-after", HeaderValue::from(d.reset_secs));
            r
        }
        _ if !authorized(req.headers(), &state.api_key_hash) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid x-api-key header").into_response()
        }
        _ => next.run(req).await,
    };
    if let Some(d) = decision {
        let h = resp.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(d.reset_secs));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_accepted_only_when_plain() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("bad id with spaces"));
        assert_ne!(request_id(&h), "bad id with spaces");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }

    #[test]
    fn api_key_check() {
        let key = hash_key("secret-key");
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, &key));
        h.insert("x-api-key", HeaderValue::from_static("secret-ke"));
        assert!(!authorized(&h, &key));
        h.insert("x-api-key", HeaderValue::from_static("secret-key"));
        assert!(authorized(&h, &key));
    }
}
