//! CORS for every response; request id, access log and metrics for every
//! request; API-key check for every route but the public ones, with a
//! brute-force guard on failed keys; a rate limit on uploads and runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::Instrument;

use super::error::ApiError;
use super::ApiState;
use crate::config::CorsOrigins;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served (set by `observe`).
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Routes reachable without an API key: probes, scrapers, the document,
/// and the AI node's model list (public in the original v2.4, which the
/// dashboard's model picker reads before any key is entered; it names
/// models, nothing of the functions).
const PUBLIC_ROUTES: &[&str] = &[
    "/health",
    "/metrics",
    "/openapi.json",
    "/models",
    "/api/health",
    "/api/metrics",
    "/api/openapi.json",
    "/api/models",
    // The web console's files (its API calls carry the key).
    "/ui",
    "/ui/",
    "/ui/{file}",
];

/// The routes whose `POST` is rate limited (as the original scoped it):
/// uploads and runs, the calls that cost work.
const LIMITED_ROUTES: &[&str] = &["/upload", "/run", "/api/upload", "/api/run"];

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
        .with_label_values(&[method_label(&method), route.as_str(), &status.to_string()])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| tracing::debug!(status, latency_ms = elapsed.as_secs_f64() * 1000.0, "request served"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The method as a metric label: the standard ones by name, anything else
/// (any token is a valid method) as `other`, so nobody can grow the
/// metrics without bound by inventing methods.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
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

/// The client address used for rate limiting: the peer, or, behind a
/// trusted proxy, the address that proxy appended to `X-Forwarded-For` (the
/// last hop: the ones before it are whatever the client sent). Only a valid
/// IP address is taken; anything else falls back to the peer.
fn client_ip(req: &Request, trust_forwarded_for: bool) -> String {
    if trust_forwarded_for {
        if let Some(ip) = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|hop| hop.trim().parse::<std::net::IpAddr>().ok())
        {
            return ip.to_string();
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
    // One budget per client address: there is one API key, so a budget per
    // key would be one for everybody. Behind a proxy without
    // TRUST_FORWARDED_FOR every client shares the proxy's budget (as in the
    // original), since a forwarded address cannot be trusted then.
    let ip = client_ip(&req, state.settings.trust_forwarded_for);
    if !authorized(req.headers(), &state.api_key_hash) {
        // Counted per address; the right key is never checked against this
        // budget, so a guessing neighbour cannot lock a caller out.
        let resp = match check(&state, state.auth_limiter.as_ref(), &ip, "auth_failures").await {
            Some(d) if !d.allowed => too_many(
                &d,
                format!(
                    "too many failed authentications from this address ({} per minute); retry in {} s",
                    d.limit, d.retry_after_secs
                ),
            ),
            _ => {
                // The original's /logs entry; the address only, never the key sent.
                state
                    .activity
                    .warn("Unauthorized access", "", serde_json::json!({ "ip": &ip }));
                refusal(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "missing or invalid x-api-key header",
                )
            }
        };
        return drain_then(req, resp).await;
    }
    let limited = req.method() == Method::POST && LIMITED_ROUTES.contains(&route.as_str());
    let decision = if limited {
        check(&state, state.limiter.as_ref(), &ip, "runs").await
    } else {
        None
    };
    let mut resp = match decision {
        Some(d) if !d.allowed => {
            let resp = too_many(
                &d,
                format!(
                    "rate limit exceeded: {} uploads and runs per minute; retry in {} s",
                    d.limit, d.retry_after_secs
                ),
            );
            return drain_then(req, resp).await;
        }
        _ => next.run(req).await,
    };
    if let Some(d) = decision {
        rate_headers(resp.headers_mut(), &d);
    }
    resp
}

/// A limiter's decision; `None` when there is no limiter or it failed.
/// A failing limiter lets requests through (as the original does): the
/// limit guards against abuse, and an outage of its store (Redis) must not
/// refuse the uploads that need no Redis; the failure shows in /health,
/// the log and `infra_rate_limiter_errors_total`.
async fn check(
    state: &ApiState,
    limiter: Option<&Arc<dyn crate::backend::RateLimiter>>,
    ip: &str,
    limit: &str,
) -> Option<crate::backend::RateDecision> {
    let limiter = limiter?;
    match limiter.check(ip).await {
        Ok(d) => {
            if !d.allowed {
                state.metrics.rate_limited.with_label_values(&[limit]).inc();
            }
            Some(d)
        }
        Err(e) => {
            state.metrics.rate_limiter_errors.inc();
            tracing::warn!(error = %e, limit, "rate limiter unavailable; request let through");
            None
        }
    }
}

/// The original's error body (`error` is its exact text, which clients
/// compare) with this platform's detail and request id beside it.
fn refusal(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    refusal_with(status, error, message, None)
}

fn refusal_with(status: StatusCode, error: &str, message: impl Into<String>, retry_after: Option<u64>) -> Response {
    let mut body = serde_json::json!({
        "error": error,
        "message": message.into(),
        "requestId": current_request_id(),
    });
    if let Some(secs) = retry_after {
        body["retryAfter"] = secs.into();
    }
    (status, axum::Json(body)).into_response()
}

fn too_many(d: &crate::backend::RateDecision, message: String) -> Response {
    let retry_after = d.retry_after_secs.max(1);
    let mut resp = refusal_with(
        StatusCode::TOO_MANY_REQUESTS,
        "Too Many Requests",
        message,
        Some(retry_after),
    );
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    rate_headers(h, d);
    resp
}

fn rate_headers(h: &mut HeaderMap, d: &crate::backend::RateDecision) {
    h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(d.reset_secs));
}

/// Most of a refused request's body read before answering, and for how long.
const DRAIN_MAX_BYTES: u64 = 8 * 1024 * 1024;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// Answers a refused request (401, 429) only after reading its body, up to
/// a bound: a client still sending an upload when the connection closes
/// gets a broken pipe instead of the status (Node's fetch reports EPIPE).
/// Past the bound the answer says `Connection: close`, so the connection is
/// not reused with a half-read body in it. A client that asked for
/// `100-continue` has sent nothing yet and is answered at once.
pub(super) async fn drain_then(req: Request, mut resp: Response) -> Response {
    let headers = req.headers();
    let declared: Option<u64> = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let has_body = declared.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING);
    let expects_continue = headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if !has_body || expects_continue {
        return resp;
    }
    let drained = declared.is_none_or(|n| n <= DRAIN_MAX_BYTES)
        && tokio::time::timeout(DRAIN_MAX_TIME, drain(req.into_body()))
            .await
            .unwrap_or(false);
    if !drained {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Reads and drops the body; false when it is larger than the bound or broken.
async fn drain(body: axum::body::Body) -> bool {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut read: u64 = 0;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                read += c.len() as u64;
                if read > DRAIN_MAX_BYTES {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// Methods a preflight allows (the original's, the `cors` package's default).
const CORS_METHODS: &str = "GET,HEAD,PUT,PATCH,POST,DELETE";
/// Headers a page may read from an answer (beyond the safelisted ones).
const CORS_EXPOSE: &str = "x-request-id,retry-after,x-ratelimit-limit,x-ratelimit-remaining,x-ratelimit-reset";

/// CORS on every response, outside everything else: a preflight (`OPTIONS`
/// on any path) is answered 204 here, before the key check, and errors
/// carry the headers too, so a page can read them. Credentials are never
/// allowed: the only credential is the `x-api-key` header a page sends
/// explicitly, no cookie.
pub async fn cors(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let origins = &state.settings.cors_origins;
    let allow = allowed_origin(origins, req.headers().get(header::ORIGIN));
    let mut resp = if req.method() == Method::OPTIONS {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(CORS_METHODS),
        );
        if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            h.append(header::VARY, HeaderValue::from_static("Access-Control-Request-Headers"));
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(600));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        resp
    } else {
        let mut resp = next.run(req).await;
        resp.headers_mut().insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(CORS_EXPOSE),
        );
        resp
    };
    let h = resp.headers_mut();
    if let Some(origin) = allow {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    if matches!(origins, CorsOrigins::List(_)) {
        // The answer depends on the Origin: caches must keep them apart.
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

fn allowed_origin(origins: &CorsOrigins, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
    match origins {
        CorsOrigins::Any => Some(HeaderValue::from_static("*")),
        CorsOrigins::List(list) => {
            let origin = origin?;
            let text = origin.to_str().ok()?.to_ascii_lowercase();
            list.contains(&text).then(|| origin.clone())
        }
    }
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
    fn forwarded_for_takes_the_hop_the_proxy_appended() {
        let req = |xff: &[&str]| {
            let mut b = Request::builder().uri("/run");
            for v in xff {
                b = b.header("x-forwarded-for", *v);
            }
            let mut r = b.body(axum::body::Body::empty()).unwrap();
            r.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 9], 4000))));
            r
        };
        // The client wrote the first hops; the trusted proxy appended the last.
        assert_eq!(client_ip(&req(&["1.2.3.4, 203.0.113.7"]), true), "203.0.113.7");
        assert_eq!(client_ip(&req(&["1.2.3.4", "203.0.113.8"]), true), "203.0.113.8");
        assert_eq!(client_ip(&req(&["garbage<script>"]), true), "10.0.0.9");
        assert_eq!(client_ip(&req(&["1.2.3.4, 203.0.113.7"]), false), "10.0.0.9");
        assert_eq!(client_ip(&req(&[" 2001:db8::1 "]), true), "2001:db8::1");
    }

    #[test]
    fn invented_methods_share_one_metric_label() {
        let m = |s: &str| axum::http::Method::from_bytes(s.as_bytes()).unwrap();
        assert_eq!(method_label(&m("GET")), "GET");
        assert_eq!(method_label(&m("MADEUP")), "other");
        assert_eq!(method_label(&m(&"Q".repeat(4000))), "other");
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
