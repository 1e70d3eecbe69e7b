//! Read-only ledger endpoints: the C2SP tlog-tiles paths (`/checkpoint`,
//! `/tile/...`) and the JSON API under `/v1/ledger`.

use super::{ApiError, AppState, blocking};
use crate::store::NodeReader;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use portcullis_format::merkle::{self, leaf_hash};
use portcullis_format::proof_file::ProofFile;
use portcullis_format::tiles::{TILE_HEIGHT, TILE_WIDTH, Tile, encode_bundle};
use std::sync::Arc;

type AppStateRef = State<Arc<AppState>>;

/// The most entries one page of `/v1/ledger/entries` returns.
pub const MAX_PAGE: u64 = 1000;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/checkpoint", get(checkpoint))
        .route("/tile/{*path}", get(tile))
        .route("/v1/ledger", get(summary))
        .route("/v1/ledger/checkpoint", get(checkpoint))
        .route("/v1/ledger/keys", get(keys))
        .route("/v1/ledger/entries", get(entries))
        .route("/v1/ledger/entries/{seq}", get(entry))
        .route("/v1/ledger/proofs/inclusion", get(inclusion))
        .route("/v1/ledger/proofs/consistency", get(consistency))
        .route("/v1/ledger/evidence/{seq}", get(evidence))
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

pub(super) fn parse_u64(name: &'static str, value: &str) -> Result<u64, ApiError> {
    let ok = !value.is_empty() && value.len() <= 16 && value.bytes().all(|b| b.is_ascii_digit());
    value
        .parse()
        .ok()
        .filter(|_| ok)
        .ok_or_else(|| ApiError::InvalidParameter { name, reason: format!("{value:?} is not a non-negative integer") })
}

/// Parses a query string strictly: only the named parameters, each at most once.
pub(super) fn query_params(
    raw: Option<String>,
    allowed: &[&'static str],
) -> Result<Vec<(&'static str, String)>, ApiError> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    let raw = raw.unwrap_or_default();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(name) = allowed.iter().find(|a| **a == key) else {
            return Err(ApiError::InvalidParameter { name: "query", reason: format!("unknown parameter {key:?}") });
        };
        if out.iter().any(|(n, _)| n == name) {
            return Err(ApiError::InvalidParameter { name, reason: "given more than once".into() });
        }
        out.push((name, value.to_string()));
    }
    Ok(out)
}

fn required(params: &[(&'static str, String)], name: &'static str) -> Result<u64, ApiError> {
    let value = params
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| ApiError::InvalidParameter { name, reason: "required".into() })?;
    parse_u64(name, &value.1)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): AppStateRef) -> Result<&'static str, ApiError> {
    let store = Arc::clone(state.ledger.store());
    blocking(move || {
        store.size().map_err(|e| ApiError::Unavailable(format!("the ledger store is not readable: {e}")))?;
        Ok(())
    })
    .await?;
    Ok("ready\n")
}

async fn checkpoint(State(state): AppStateRef) -> Result<Response, ApiError> {
    let store = Arc::clone(state.ledger.store());
    let latest = blocking(move || Ok(store.latest_checkpoint()?)).await?;
    let (_, note) = latest.ok_or_else(|| ApiError::NotFound("no checkpoint has been signed yet".into()))?;
    Ok(([(header::CACHE_CONTROL, "no-cache")], text(note)).into_response())
}

async fn tile(State(state): AppStateRef, Path(path): Path<String>) -> Result<Response, ApiError> {
    let full = format!("tile/{path}");
    let (tile, is_bundle) =
        Tile::parse_path(&full).ok_or_else(|| ApiError::NotFound(format!("{full} is not a tile path")))?;
    let size = state.ledger.head().size;
    let store = Arc::clone(state.ledger.store());
    // Tile levels go up to 63 in a path, but a u64 tree has hashes at tile levels 0 to 7 only:
    // shifting by 64 or more would overflow (a panic, or in release a wrong, cached-forever tile).
    let hashes_at_level = size
        .checked_shr(u32::from(tile.level) * u32::from(TILE_HEIGHT))
        .ok_or_else(|| ApiError::NotFound(format!("{full} does not exist")))?;
    let start =
        tile.index.checked_mul(TILE_WIDTH).ok_or_else(|| ApiError::NotFound(format!("{full} does not exist")))?;
    if start.saturating_add(tile.width) > hashes_at_level {
        return Err(ApiError::NotFound(format!("{full} does not exist at tree size {size}")));
    }
    let body = blocking(move || {
        if is_bundle {
            let entries = store.entries(start, tile.width)?;
            Ok(encode_bundle(entries.iter().map(Vec::as_slice)))
        } else {
            Ok(store.nodes(tile.tree_level(), start, tile.width)?.concat())
        }
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response())
}

async fn summary(State(state): AppStateRef) -> Result<Response, ApiError> {
    let head = state.ledger.head();
    let store = Arc::clone(state.ledger.store());
    let (checkpoint_size, keys) = blocking(move || {
        let checkpoint = store.latest_checkpoint()?.map(|(size, _)| size);
        Ok((checkpoint, store.keys()?))
    })
    .await?;
    let body = serde_json::json!({
        "origin": state.ledger.origin(),
        "size": head.size,
        "root": B64.encode(head.root),
        "checkpoint_size": checkpoint_size,
        "verifier_key": keys.last().map(|k| k.vkey.clone()),
    });
    Ok(axum::Json(body).into_response())
}

async fn keys(State(state): AppStateRef) -> Result<Response, ApiError> {
    let store = Arc::clone(state.ledger.store());
    let keys = blocking(move || Ok(store.keys()?)).await?;
    let body: Vec<_> = keys.iter().map(|k| serde_json::json!({"vkey": k.vkey, "from_seq": k.from_seq})).collect();
    Ok(axum::Json(serde_json::json!({ "keys": body })).into_response())
}

struct EntriesQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

async fn entries(State(state): AppStateRef, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let params = query_params(raw, &["cursor", "limit"])?;
    let query = EntriesQuery {
        cursor: params.iter().find(|(n, _)| *n == "cursor").map(|(_, v)| v.clone()),
        limit: params.iter().find(|(n, _)| *n == "limit").map(|(_, v)| v.clone()),
    };
    let from = query.cursor.as_deref().map(|c| parse_u64("cursor", c)).transpose()?.unwrap_or(0);
    let limit = query.limit.as_deref().map(|l| parse_u64("limit", l)).transpose()?.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::InvalidParameter { name: "limit", reason: format!("must be 1 to {MAX_PAGE}") });
    }
    let size = state.ledger.head().size;
    let store = Arc::clone(state.ledger.store());
    let count = limit.min(size.saturating_sub(from));
    let rows = blocking(move || Ok(store.entries(from, count)?)).await?;
    let next = from + rows.len() as u64;
    let items: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            serde_json::json!({
                "seq": from + i as u64,
                "leaf_hash": B64.encode(leaf_hash(entry)),
                "entry": String::from_utf8_lossy(entry),
            })
        })
        .collect();
    let body = serde_json::json!({
        "entries": items,
        "next_cursor": (next < size).then(|| next.to_string()),
    });
    Ok(axum::Json(body).into_response())
}

async fn entry(State(state): AppStateRef, Path(seq): Path<String>) -> Result<Response, ApiError> {
    let seq = parse_u64("seq", &seq)?;
    let size = state.ledger.head().size;
    if seq >= size {
        return Err(ApiError::NotFound(format!("entry {seq} does not exist; the ledger holds {size} entries")));
    }
    let store = Arc::clone(state.ledger.store());
    let mut rows = blocking(move || Ok(store.entries(seq, 1)?)).await?;
    let entry = rows.pop().ok_or_else(|| ApiError::NotFound(format!("entry {seq} does not exist")))?;
    Ok(text(String::from_utf8_lossy(&entry).into_owned()))
}

async fn inclusion(State(state): AppStateRef, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let params = query_params(raw, &["index", "size"])?;
    let (index, size) = (required(&params, "index")?, required(&params, "size")?);
    let head = state.ledger.head().size;
    if size > head {
        return Err(ApiError::InvalidParameter { name: "size", reason: format!("the ledger holds {head} entries") });
    }
    if index >= size {
        return Err(ApiError::InvalidParameter { name: "index", reason: format!("must be below size {size}") });
    }
    let store = Arc::clone(state.ledger.store());
    let (hashes, root) = blocking(move || {
        let reader = NodeReader(store.as_ref());
        let proof = merkle::inclusion_proof(&reader, index, size).map_err(|e| ApiError::Internal(e.to_string()))?;
        let root = merkle::range_hash(&reader, 0, size)?;
        Ok((proof, root))
    })
    .await?;
    let body = serde_json::json!({
        "index": index,
        "size": size,
        "root": B64.encode(root),
        "hashes": hashes.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
    });
    Ok(axum::Json(body).into_response())
}

async fn consistency(State(state): AppStateRef, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let params = query_params(raw, &["old", "new"])?;
    let (old, new) = (required(&params, "old")?, required(&params, "new")?);
    let head = state.ledger.head().size;
    if new > head {
        return Err(ApiError::InvalidParameter { name: "new", reason: format!("the ledger holds {head} entries") });
    }
    if old == 0 || old > new {
        return Err(ApiError::InvalidParameter { name: "old", reason: format!("must be 1 to new ({new})") });
    }
    let store = Arc::clone(state.ledger.store());
    let hashes = blocking(move || {
        merkle::consistency_proof(&NodeReader(store.as_ref()), old, new).map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await?;
    let body = serde_json::json!({
        "old": old,
        "new": new,
        "hashes": hashes.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
    });
    Ok(axum::Json(body).into_response())
}

/// The tlog-proof evidence file of one entry against a checkpoint that covers it.
async fn evidence(State(state): AppStateRef, Path(seq): Path<String>) -> Result<Response, ApiError> {
    let seq = parse_u64("seq", &seq)?;
    let head = state.ledger.head().size;
    if seq >= head {
        return Err(ApiError::NotFound(format!("entry {seq} does not exist; the ledger holds {head} entries")));
    }
    let store = Arc::clone(state.ledger.store());
    let latest = {
        let store = Arc::clone(&store);
        blocking(move || Ok(store.latest_checkpoint()?)).await?
    };
    let (size, note) = match latest {
        Some((size, note)) if size > seq => (size, note),
        _ => state.ledger.checkpoint().await?,
    };
    let file = blocking(move || {
        let mut rows = store.entries(seq, 1)?;
        let entry = rows.pop().ok_or_else(|| ApiError::NotFound(format!("entry {seq} does not exist")))?;
        let proof = merkle::inclusion_proof(&NodeReader(store.as_ref()), seq, size)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(ProofFile { extra: Some(entry), index: seq, proof, checkpoint: note.into_bytes() })
    })
    .await?;
    Ok(text(file.encode()))
}
