//! `POST /v1/reports`: an admin asks for a SOC 2 evidence bundle.
//!
//! The bundle is written under the data directory (`reports/soc2-<first 16
//! hex digits of the manifest hash>`), and the answer names its path and its
//! manifest hash. A directory, not a tar in the response: a bundle over a
//! large period holds the period's entries and can be far larger than is
//! reasonable to hold in memory or to stream through a request timeout; the
//! operator hands the directory to the auditor, who checks it against the
//! manifest hash recorded in the ledger's `report.generated` event. The same
//! ledger and arguments give the same bundle, so a repeated request answers
//! with the existing directory (and records the request again).

use super::{ApiError, AppState};
use crate::report::{ReportArgs, ReportError};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use portcullis_format::event::EventId;
use serde_json::{Value, json};
use std::sync::Arc;

pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/v1/reports", post(create))
}

fn field(name: &str, reason: impl Into<String>) -> ApiError {
    ApiError::Unprocessable { field: name.into(), reason: reason.into() }
}

async fn create(
    AxumState(state): AxumState<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let actor = super::workflow::authenticate(&state, &headers)?;
    let policy = state
        .workflow
        .as_ref()
        .and_then(|w| w.policy())
        .ok_or_else(|| ApiError::Unavailable("no policy is in force, so no one is an admin".into()))?;
    if !policy.is_admin(&actor) {
        return Err(ApiError::Forbidden("only admins may generate reports".into()));
    }
    let settings = state
        .reports
        .clone()
        .ok_or_else(|| ApiError::Unavailable("reports are not configured on this server".into()))?;
    let body: Value = serde_json::from_slice(&body).map_err(|e| field("body", format!("not JSON: {e}")))?;
    let text = |name: &'static str| -> Result<Option<String>, ApiError> {
        match body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(field(name, "must be a string")),
        }
    };
    if let Some(report) = text("report")?
        && report != "soc2"
    {
        return Err(field("report", "the only report is soc2"));
    }
    let date = |name: &'static str| -> Result<portcullis_format::time::Timestamp, ApiError> {
        let value = text(name)?.ok_or_else(|| field(name, "required"))?;
        portcullis_projections::report::date::parse(&value).map_err(|e| field(name, e.to_string()))
    };
    let args = ReportArgs {
        from: date("from")?,
        to: date("to")?,
        revoke_sla_ms: settings.revoke_sla_ms,
        anchor: text("anchor")?,
    };
    if args.from >= args.to {
        return Err(field("to", "must be after from"));
    }
    let store = Arc::clone(state.ledger.store());
    let task_args = args.clone();
    let generated = super::blocking(move || {
        let signer = crate::keyfile::load(&settings.key_path).map_err(|e| ApiError::Internal(e.to_string()))?;
        std::fs::create_dir_all(&settings.dir).map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| ApiError::Internal(e.to_string()))?;
        let staging =
            settings.dir.join(format!(".new-{}", nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()));
        let mut generated =
            crate::report::generate(store.as_ref(), &signer, &task_args, &staging).map_err(|e| match e {
                ReportError::Anchor(reason) => field("anchor", reason),
                ReportError::EmptyPeriod { .. } => field("to", "must be after from"),
                ReportError::EmptyLedger => ApiError::Conflict("the ledger is empty".into()),
                other => ApiError::Internal(other.to_string()),
            })?;
        let target = settings.dir.join(format!("soc2-{}", &generated.manifest_sha256[..16]));
        if target.exists() {
            // The same bundle, byte for byte (its manifest hash names it).
            let _ = std::fs::remove_dir_all(&staging);
        } else {
            std::fs::rename(&staging, &target).map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        generated.dir = target;
        Ok(generated)
    })
    .await?;
    let path = generated.dir.display().to_string();
    let id = EventId::random().map_err(|e| ApiError::Internal(e.to_string()))?;
    let draft = crate::report::generated_event(&generated, &args, &path, id, &actor);
    let receipt = state.ledger.append(draft).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let answer = json!({
        "path": path,
        "manifest_sha256": generated.manifest_sha256,
        "entries": {"first_seq": generated.first_seq, "end_seq": generated.end_seq},
        "checkpoint_size": generated.checkpoint_size,
        "period_closed": generated.period_closed,
        "exceptions": generated.exceptions,
        "event_seq": receipt.seq,
    });
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}
