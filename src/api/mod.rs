//! The HTTP interface. Only this module knows HTTP.
//!
//! [`app`] builds the whole router, so tests drive it with
//! `tower::ServiceExt::oneshot` without a socket. Errors are RFC 9457
//! problem+json with a stable `type`; 5xx bodies never carry internals (the
//! details go to the log).

mod ledger;

use crate::ledger::Ledger;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// What every handler can reach.
pub struct AppState {
    pub ledger: Ledger,
}

/// The service's router.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new().merge(ledger::router()).with_state(state)
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
    /// 503: the ledger is shutting down or its store is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// 500: anything else. The detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::InvalidParameter { .. } => (StatusCode::BAD_REQUEST, "invalid-parameter", "Invalid parameter"),
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
        let body = serde_json::json!({
            "type": format!("urn:portcullis:problem:{slug}"),
            "title": title,
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        (status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
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
