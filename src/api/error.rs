//! API errors: JSON `{error, requestId}`; precise for 4xx, opaque for 5xx.

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::middleware::current_request_id;
use crate::backend;
use crate::function::ServiceError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub details: Vec<String>,
    pub job_id: Option<String>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            details: Vec::new(),
            job_id: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A server-side failure: logged in full, answered opaquely.
    pub fn internal(status: StatusCode, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, status = status.as_u16(), "request failed");
        let message = if status == StatusCode::SERVICE_UNAVAILABLE {
            "a backend is unavailable; try again shortly"
        } else {
            "internal error"
        };
        Self::new(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message, "requestId": current_request_id() });
        if !self.details.is_empty() {
            body["details"] = json!(self.details);
        }
        if let Some(job_id) = self.job_id {
            body["jobId"] = json!(job_id);
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(secs));
        }
        response
    }
}

impl From<backend::Error> for ApiError {
    fn from(e: backend::Error) -> Self {
        match e {
            backend::Error::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            backend::Error::Conflict(what) => ApiError::new(StatusCode::CONFLICT, what),
            backend::Error::Unavailable { .. } => ApiError::internal(StatusCode::SERVICE_UNAVAILABLE, &e),
            backend::Error::Invalid(_) => ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, &e),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(v) => ApiError {
                details: v.0.clone(),
                ..ApiError::bad_request(format!("invalid function settings: {v}"))
            },
            ServiceError::Package(p) if p.is_too_large() => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, p.to_string()),
            ServiceError::Package(p) => ApiError::bad_request(p.to_string()),
            ServiceError::NotFound(_) => ApiError::not_found(e.to_string()),
            ServiceError::Owned { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            ServiceError::Backend(b) => b.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(r.status(), r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(r.status(), r.body_text())
    }
}

impl From<MultipartRejection> for ApiError {
    fn from(r: MultipartRejection) -> Self {
        ApiError::new(r.status(), r.body_text())
    }
}

impl From<MultipartError> for ApiError {
    fn from(e: MultipartError) -> Self {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(status, "request body too large: uploads are limited to 50 MiB");
        }
        ApiError::new(status, format!("malformed multipart body: {}", e.body_text()))
    }
}

/// A JSON object body of type `T`, whose rejections are JSON errors too.
/// Only an object is taken (serde would also build a struct from an array).
pub struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
            .is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Expected request with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::new(r.status(), r.body_text()))?;
        // One parse, straight into `T`: the first byte tells an object apart.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            let valid_json = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
            return Err(if valid_json {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "the body must be a JSON object")
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "the body is not valid JSON")
            });
        }
        let Json(value) = Json::<T>::from_bytes(&bytes)?;
        Ok(ApiJson(value))
    }
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}
