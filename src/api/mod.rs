//! The HTTP interface. Only this module knows HTTP.
//!
//! [`app`] builds the whole router, so tests drive it with
//! `tower::ServiceExt::oneshot` without a socket. Errors are RFC 9457
//! problem+json with a stable `type`; 5xx bodies never carry internals (the
//! details go to the log).

mod clusters;
mod events;
pub mod idempotency;
mod ledger;
pub mod limit;
pub mod openapi;
mod reports;
mod workflow;

use crate::auth::Tokens;
use crate::ledger::Ledger;
use crate::workflow::Workflow;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// What every handler can reach.
pub struct AppState {
    pub ledger: Ledger,
    /// The access workflow, when a policy is configured.
    pub workflow: Option<Arc<Workflow>>,
    pub tokens: Tokens,
    /// OIDC bearer JWTs, when configured.
    pub oidc: Option<crate::oidc::Oidc>,
    pub limiter: limit::RateLimiter,
    pub idempotency: idempotency::IdempotencyCache,
    /// The cluster reconciler, when clusters are configured.
    pub reconciler: Option<Arc<crate::reconciler::Reconciler>>,
    /// Where `POST /v1/reports` writes bundles and the key it signs them with; `None`: not offered.
    pub reports: Option<crate::report::ReportSettings>,
}

impl AppState {
    /// A state with the default rate limits.
    pub fn new(ledger: Ledger, workflow: Option<Arc<Workflow>>, tokens: Tokens) -> AppState {
        AppState {
            ledger,
            workflow,
            tokens,
            oidc: None,
            limiter: limit::RateLimiter::default(),
            idempotency: idempotency::IdempotencyCache::default(),
            reconciler: None,
            reports: None,
        }
    }

    /// A state serving the ledger only.
    pub fn ledger_only(ledger: Ledger) -> AppState {
        AppState::new(ledger, None, Tokens::default())
    }
}

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The service's router.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(ledger::router())
        .merge(workflow::router())
        .merge(events::router())
        .merge(clusters::router())
        .merge(reports::router())
        .route("/v1/openapi.json", axum::routing::get(|| async { axum::Json(openapi::document()) }))
        .fallback(|| async { ApiError::NoRoute })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), idempotency::layer))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The one API error type; each variant documents its status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404: the resource does not exist (yet).
    #[error("{0}")]
    NotFound(String),
    /// 400: a parameter is malformed or out of range; names the parameter.
    #[error("parameter {name}: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    /// 401: no credentials, or credentials that do not authenticate.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated, but not allowed (by role or by policy).
    #[error("{0}")]
    Forbidden(String),
    /// 409: the request or grant is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// 422: a body field is missing or breaks a rule; names the field.
    #[error("{field}: {reason}")]
    Unprocessable { field: String, reason: String },
    /// 429: over the rate limit; retry after the given seconds.
    #[error("too many requests; retry in {0} s")]
    TooManyRequests(u64),
    /// 503: the ledger is shutting down or its store is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// 404: no such route (method and path).
    #[error("no such route; see /v1/openapi.json")]
    NoRoute,
    /// 500: anything else. The detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "no-route", "No such route"),
            ApiError::InvalidParameter { .. } => (StatusCode::BAD_REQUEST, "invalid-parameter", "Invalid parameter"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::Unprocessable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-field", "Invalid field"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        if let ApiError::Internal(detail) = &self {
            tracing::error!("internal error: {detail}");
        }
        let mut body = serde_json::json!({
            "type": format!("urn:portcullis:problem:{slug}"),
            "title": title,
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        if let ApiError::Unprocessable { field, .. } = &self {
            body["field"] = serde_json::Value::String(field.clone());
        }
        let mut response =
            (status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response();
        if let ApiError::TooManyRequests(seconds) = &self
            && let Ok(value) = header::HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::ledger::LedgerError> for ApiError {
    fn from(e: crate::ledger::LedgerError) -> Self {
        match e {
            crate::ledger::LedgerError::Closed => ApiError::Unavailable("the ledger is shutting down".into()),
            crate::ledger::LedgerError::Unsynced => ApiError::Unavailable("the ledger store is failing".into()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::Internal(format!("blocking task failed: {e}")))?
}
