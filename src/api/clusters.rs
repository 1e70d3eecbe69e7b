//! `GET /v1/clusters`: each configured cluster's reconciler (leadership,
//! sync, last error, counters). `GET /v1/clusters/{cluster}/standing-access`:
//! bindings made outside Portcullis that let people edit the managed kinds.

use super::{ApiError, AppState};
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::Arc;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/clusters", get(clusters))
        .route("/v1/clusters/{cluster}/standing-access", get(standing_access))
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
