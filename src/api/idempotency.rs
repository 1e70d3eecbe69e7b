//! `Idempotency-Key` on every POST: the first successful answer to a key is
//! kept (per credential, method and path) and replayed to retries, so a client
//! that retries after a lost answer gets that answer, not a 409. Request
//! creation is also idempotent through the ledger itself (its event ids derive
//! from the key), which survives restarts; this cache does not.

use super::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many answers are kept, and for how long.
pub const CAPACITY: usize = 10_000;
pub const KEEP: Duration = Duration::from_secs(24 * 3600);
/// The largest answer kept (bigger ones are not replayed).
const MAX_BODY: usize = 256 * 1024;

/// A kept answer: when, its status, its content type and its body.
type Answer = (Instant, StatusCode, Option<HeaderValue>, axum::body::Bytes);

/// The answers by key, and the keys oldest first (for eviction).
#[derive(Default)]
struct Answers {
    by_key: HashMap<[u8; 32], Answer>,
    order: VecDeque<[u8; 32]>,
}

#[derive(Default)]
pub struct IdempotencyCache {
    answers: Mutex<Answers>,
}

impl IdempotencyCache {
    fn get(&self, key: &[u8; 32]) -> Option<Response> {
        let answers = crate::lock(&self.answers);
        let (at, status, content_type, body) = answers.by_key.get(key)?;
        if at.elapsed() > KEEP {
            return None;
        }
        let mut response = (*status, body.clone()).into_response();
        if let Some(content_type) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
        }
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        Some(response)
    }

    fn put(&self, key: [u8; 32], status: StatusCode, content_type: Option<HeaderValue>, body: axum::body::Bytes) {
        let mut answers = crate::lock(&self.answers);
        let answers = &mut *answers;
        if answers.by_key.insert(key, (Instant::now(), status, content_type, body)).is_none() {
            answers.order.push_back(key);
        }
        while answers.order.len() > CAPACITY {
            if let Some(oldest) = answers.order.pop_front() {
                answers.by_key.remove(&oldest);
            }
        }
    }
}

/// The middleware: only POSTs carrying both a credential and an `Idempotency-Key`.
pub async fn layer(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let headers = request.headers();
    let (Some(credential), Some(key)) = (headers.get(header::AUTHORIZATION), headers.get("idempotency-key")) else {
        return next.run(request).await;
    };
    let id: [u8; 32] = Sha256::new()
        .chain_update(credential.as_bytes())
        .chain_update([0])
        .chain_update(request.uri().path())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize()
        .into();
    if let Some(replay) = state.idempotency.get(&id) {
        return replay;
    }
    let response = next.run(request).await;
    // An answer marked no-store carries a secret handed out once (a grant's token): never kept.
    let secret = response.headers().get(header::CACHE_CONTROL).is_some_and(|v| v.as_bytes() == b"no-store");
    if !response.status().is_success() || secret {
        return response;
    }
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => {
            state.idempotency.put(id, parts.status, parts.headers.get(header::CONTENT_TYPE).cloned(), bytes.clone());
            Response::from_parts(parts, Body::from(bytes))
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "the answer was too large to keep").into_response(),
    }
}
