//! `GET /v1/events`: the ledger as a Server-Sent Events stream, from a cursor
//! (the `cursor` parameter or the `Last-Event-ID` header) and then live, in
//! order, without gaps or repeats. `GET /metrics`: Prometheus gauges.

use super::ledger::{parse_u64, query_params};
use super::{ApiError, AppState};
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::{self, Stream};
use portcullis_format::event::ParsedEntry;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/v1/events", get(events)).route("/metrics", get(metrics))
}

/// What the stream carries for one entry: the event as canonical JSON, under its seq and kind.
fn sse_event(seq: u64, entry: &[u8]) -> SseEvent {
    match ParsedEntry::parse(entry) {
        Ok(parsed) => SseEvent::default()
            .id(seq.to_string())
            .event(parsed.event.draft.kind.clone())
            .data(String::from_utf8_lossy(parsed.json_line(entry))),
        Err(e) => SseEvent::default().id(seq.to_string()).event("unreadable").data(e.to_string()),
    }
}

struct Tail {
    state: Arc<AppState>,
    next: u64,
    buffer: VecDeque<(u64, Vec<u8>)>,
    head: tokio::sync::watch::Receiver<crate::ledger::Head>,
}

async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    super::workflow::authenticate(&state, &headers)?;
    let params = query_params(raw, &["cursor"])?;
    let from_query = params.first().map(|(name, value)| parse_u64(name, value)).transpose()?;
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_u64("Last-Event-ID", v).map(|seq| seq + 1))
        .transpose()?;
    let next = from_query.or(from_header).unwrap_or(0);
    let head = state.ledger.watch_head();
    let tail = Tail { state, next, buffer: VecDeque::new(), head };
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> =
        Box::pin(stream::unfold(tail, |mut tail| async move {
            loop {
                if let Some((seq, entry)) = tail.buffer.pop_front() {
                    return Some((Ok(sse_event(seq, &entry)), tail));
                }
                if tail.head.borrow().size > tail.next {
                    let entries = tail.state.ledger.entries(tail.next, 256).await.ok()?;
                    for entry in entries {
                        tail.buffer.push_back((tail.next, entry));
                        tail.next += 1;
                    }
                    continue;
                }
                // Wait for the ledger to grow; the stream ends when the ledger closes.
                tail.head.changed().await.ok()?;
            }
        }));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let mut out = String::new();
    let head = state.ledger.head();
    let _ = writeln!(
        out,
        "# HELP portcullis_ledger_entries Entries in the ledger.\n# TYPE portcullis_ledger_entries gauge"
    );
    let _ = writeln!(out, "portcullis_ledger_entries {}", head.size);
    let store = Arc::clone(state.ledger.store());
    let checkpoint = tokio::task::spawn_blocking(move || store.latest_checkpoint())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??
        .map_or(0, |(size, _)| size);
    let _ = writeln!(
        out,
        "# HELP portcullis_checkpoint_size Size of the latest signed checkpoint.\n# TYPE portcullis_checkpoint_size gauge"
    );
    let _ = writeln!(out, "portcullis_checkpoint_size {checkpoint}");
    if let Some(workflow) = &state.workflow {
        let current = workflow.current().await?;
        let _ =
            writeln!(out, "# HELP portcullis_requests Access requests by status.\n# TYPE portcullis_requests gauge");
        for status in ["pending", "granted", "denied", "cancelled", "expired"] {
            let count = current.requests.values().filter(|r| r.status.as_str() == status).count();
            let _ = writeln!(out, "portcullis_requests{{status=\"{status}\"}} {count}");
        }
        let _ = writeln!(out, "# HELP portcullis_grants Grants by status.\n# TYPE portcullis_grants gauge");
        for status in ["active", "ended", "revoked", "expired"] {
            let count = current.grants.values().filter(|g| g.status.as_str() == status).count();
            let _ = writeln!(out, "portcullis_grants{{status=\"{status}\"}} {count}");
        }
        let unreviewed = current.grants.values().filter(|g| g.break_glass && g.reviewed.is_none()).count();
        let _ = writeln!(
            out,
            "# HELP portcullis_break_glass_unreviewed Break-glass grants not yet reviewed.\n# TYPE portcullis_break_glass_unreviewed gauge"
        );
        let _ = writeln!(out, "portcullis_break_glass_unreviewed {unreviewed}");
    }
    if let Some(reconciler) = &state.reconciler {
        reconciler.render_metrics(&mut out);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response())
}
