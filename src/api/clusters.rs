//! `GET /v1/clusters`: each configured cluster's reconciler (leadership,
//! sync, last error, counters). `GET /v1/clusters/{cluster}/standing-access`:
//! bindings made outside Portcullis that let people edit the managed kinds.
//! `POST /v1/grants/{id}/kubeconfig`: the requester's one-time kubeconfig for
//! a grant in credential mode.

use super::{ApiError, AppState};
use crate::domain::decide::{Command, check_credential};
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use portcullis_format::time::Timestamp;
use serde_json::{Value, json};
use std::sync::Arc;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/clusters", get(clusters))
        .route("/v1/clusters/{cluster}/standing-access", get(standing_access))
        .route("/v1/grants/{id}/kubeconfig", post(kubeconfig))
}

/// Mints the grant's ServiceAccount token, records that it was taken (never
/// the token), and answers the kubeconfig once, marked `no-store`.
async fn kubeconfig(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let actor = super::workflow::authenticate(&state, &headers)?;
    let workflow = state.workflow.as_ref().ok_or_else(|| ApiError::Unavailable("no policy is configured".into()))?;
    let id = super::workflow::parse_id("grant", &id)?;
    let grant = {
        let current = workflow.current().await?;
        current.grants.get(&id).cloned().ok_or_else(|| ApiError::NotFound(format!("no grant {id}")))?
    };
    check_credential(&grant, &actor).map_err(crate::workflow::WorkflowError::from)?;
    let reconciler = state
        .reconciler
        .as_ref()
        .ok_or_else(|| ApiError::Conflict("no clusters are configured here, so there is no credential".into()))?;
    let issued = reconciler.issue_credential(&grant, Timestamp::now()).await.map_err(|e| match e {
        crate::reconciler::IssueError::UnknownCluster(_) => ApiError::Conflict(e.to_string()),
        crate::reconciler::IssueError::NotApplied => ApiError::Unavailable(e.to_string()),
        crate::reconciler::IssueError::Api(_) => ApiError::Unavailable(e.to_string()),
    })?;
    let command = Command::IssueCredential {
        grant: id,
        service_account: issued.service_account.clone(),
        token_expires_at: issued.expires_at,
    };
    workflow.execute(command, actor, crate::workflow::random_seed()).await?;
    let body = json!({
        "grant_id": id.to_string(),
        "service_account": issued.service_account,
        "expires_at": issued.expires_at.to_string(),
        "kubeconfig": issued.kubeconfig,
    });
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

async fn clusters(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    super::workflow::authenticate(&state, &headers)?;
    let items: Vec<Value> = state
        .reconciler
        .iter()
        .flat_map(|r| r.status())
        .map(|(name, s)| {
            json!({
                "name": name,
                "leader": s.leader,
                "synced": s.synced,
                "last_error": s.last_error,
                "applied": s.metrics.applied,
                "removed": s.metrics.removed,
                "removed_late": s.metrics.late,
                "drift": s.metrics.drift,
                "standing_access": s.standing.len(),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn standing_access(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(cluster): Path<String>,
) -> Result<Json<Value>, ApiError> {
    super::workflow::authenticate(&state, &headers)?;
    let status = state
        .reconciler
        .as_ref()
        .and_then(|r| r.status().into_iter().find(|(name, _)| *name == cluster))
        .map(|(_, s)| s)
        .ok_or_else(|| ApiError::NotFound(format!("no cluster {cluster:?} is configured")))?;
    let items = serde_json::to_value(&status.standing).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({
        "cluster": cluster,
        "scanned_at": status.standing_scanned_at.map(|t| t.to_string()),
        "items": items,
    })))
}
