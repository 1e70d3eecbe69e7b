//! Witnesses, both sides.
//!
//! - [`serve`]: `portcullis witness`, an independent witness (C2SP
//!   tlog-witness `add-checkpoint`). For each log it trusts it keeps the
//!   largest checkpoint it cosigned; it verifies the log's signature and the
//!   consistency proof from that size, persists the new size atomically
//!   (write, fsync, rename) before answering, answers 409 with its size on a
//!   mismatch, and never cosigns a smaller or inconsistent tree.
//! - [`run_pusher`]: the service's side. Every new checkpoint goes to the
//!   configured witnesses with a consistency proof from the size each last
//!   cosigned; valid cosignatures are appended to the stored checkpoint note,
//!   which `/checkpoint`, exports and reports then carry.

use crate::ledger::Ledger;
use crate::store::{NodeReader, Store};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::{BodyExt, Full};
use portcullis_format::checkpoint::SignedCheckpoint;
use portcullis_format::merkle::{self, Hash};
use portcullis_format::note::{self, Note, SignerKey, VerifierKey};
use portcullis_format::witness::{AddCheckpoint, Cosigner, CosignerKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The content type of a 409 answer: the witness's size.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

/// What a witness remembers of one log: the largest tree it cosigned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    size: u64,
    root: String,
}

/// A running witness.
pub struct Witness {
    key: SignerKey,
    public: CosignerKey,
    logs: Vec<VerifierKey>,
    state_path: PathBuf,
    /// Held from the check of the old size through persisting the new one.
    state: tokio::sync::Mutex<BTreeMap<String, Seen>>,
}

impl Witness {
    /// Opens a witness with its state file (created on first use).
    ///
    /// # Errors
    /// When the state file exists but cannot be read or parsed.
    pub fn open(key: SignerKey, logs: Vec<VerifierKey>, state_path: PathBuf) -> anyhow::Result<Witness> {
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("witness state {}: {e}", state_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => anyhow::bail!("witness state {}: {e}", state_path.display()),
        };
        let public = Cosigner::new(&key).map_err(|e| anyhow::anyhow!("witness key: {e}"))?.public().clone();
        Ok(Witness { key, public, logs, state_path, state: tokio::sync::Mutex::new(state) })
    }

    /// The witness's cosigner key, for trust policies.
    pub fn cosigner_key(&self) -> &CosignerKey {
        &self.public
    }

    fn persist(&self, state: &BTreeMap<String, Seen>) -> std::io::Result<()> {
        use std::io::Write as _;
        let tmp = self.state_path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(state).unwrap_or_default())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.state_path)?;
        if let Some(dir) = self.state_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Handles one `add-checkpoint` body: the status and the answer.
    pub async fn add_checkpoint(&self, body: &[u8]) -> (StatusCode, &'static str, String) {
        let text = |status, message: String| (status, "text/plain; charset=utf-8", message + "\n");
        let request = match AddCheckpoint::parse(body) {
            Ok(r) => r,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let signed = match SignedCheckpoint::parse(request.checkpoint.as_bytes()) {
            Ok(s) => s,
            Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let origin = signed.checkpoint.origin.clone();
        let keys: Vec<VerifierKey> = self.logs.iter().filter(|k| k.name() == origin).cloned().collect();
        if keys.is_empty() {
            return text(StatusCode::NOT_FOUND, format!("unknown log {origin:?}"));
        }
        let note = Note { text: &signed.text, signatures: signed.signatures.clone() };
        if note::verify_note(&note, &keys).is_err() {
            return text(StatusCode::FORBIDDEN, "no valid signature by a trusted key of the log".into());
        }
        let (size, root) = (signed.checkpoint.size, signed.checkpoint.root);
        if request.old > size {
            return text(StatusCode::BAD_REQUEST, format!("old size {} is larger than the checkpoint", request.old));
        }
        let mut state = self.state.lock().await;
        let seen = state.get(&origin).cloned();
        let seen_size = seen.as_ref().map_or(0, |s| s.size);
        if request.old != seen_size {
            return (StatusCode::CONFLICT, SIZE_CONTENT_TYPE, format!("{seen_size}\n"));
        }
        let seen_root: Option<Hash> =
            seen.as_ref().and_then(|s| B64.decode(&s.root).ok()).and_then(|r| r.try_into().ok());
        if request.old == size && size > 0 {
            if seen_root != Some(root) {
                return (StatusCode::CONFLICT, SIZE_CONTENT_TYPE, format!("{seen_size}\n"));
            }
        } else if request.old == 0 {
            if !request.proof.is_empty() {
                return text(StatusCode::BAD_REQUEST, "the proof must be empty from size 0".into());
            }
        } else {
            let Some(old_root) = seen_root else {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "the stored root is unreadable".into());
            };
            if let Err(e) = merkle::verify_consistency(request.old, size, &old_root, &root, &request.proof) {
                tracing::warn!("log {origin}: inconsistent checkpoint of size {size} refused: {e}");
                return text(StatusCode::UNPROCESSABLE_ENTITY, format!("consistency proof: {e}"));
            }
        }
        let mut next = state.clone();
        next.insert(origin.clone(), Seen { size, root: B64.encode(root) });
        if let Err(e) = self.persist(&next) {
            tracing::error!("witness state {}: {e}", self.state_path.display());
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot persist the witness state".into());
        }
        *state = next;
        drop(state);
        let now = portcullis_format::time::Timestamp::now().unix_micros().max(0) as u64 / 1_000_000;
        match Cosigner::new(&self.key) {
            Ok(cosigner) => (StatusCode::OK, "text/plain; charset=utf-8", cosigner.cosign(&signed.text, now).to_line()),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
}

async fn add_checkpoint(State(witness): State<Arc<Witness>>, body: Bytes) -> Response {
    let (status, content_type, answer) = witness.add_checkpoint(&body).await;
    (status, [(header::CONTENT_TYPE, content_type)], answer).into_response()
}

/// The witness's HTTP interface: `POST /add-checkpoint` (and `/healthz`).
pub fn router(witness: Arc<Witness>) -> Router {
    Router::new()
        .route("/add-checkpoint", axum::routing::post(add_checkpoint))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(witness)
}

/// A witness the service pushes its checkpoints to (`[[witnesses]]` in the config).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WitnessTarget {
    /// The submission prefix: `add-checkpoint` is appended.
    pub url: String,
    /// The witness's cosigner key (`<name>+<id>+<base64(0x04 || key)>`).
    pub vkey: String,
}

impl WitnessTarget {
    /// # Errors
    /// A message naming the bad field.
    pub fn validate(&self) -> Result<CosignerKey, String> {
        if !crate::http::valid_url(&self.url) {
            return Err(format!("witnesses.url {:?} must be an http:// or https:// URL", self.url));
        }
        CosignerKey::parse(&self.vkey).map_err(|e| format!("witnesses.vkey: {e}"))
    }
}

use crate::http::Client;

/// One witness as the pusher tracks it.
struct Pushed {
    target: WitnessTarget,
    key: CosignerKey,
    /// The size the witness last cosigned, as far as we know.
    size: u64,
}

/// Pushes every new checkpoint to `targets`, appending their cosignatures to
/// the stored note. Runs until the ledger closes.
pub async fn run_pusher(ledger: Ledger, targets: Vec<WitnessTarget>, every: Duration) {
    let client = crate::http::client();
    let mut witnesses: Vec<Pushed> = targets
        .into_iter()
        .filter_map(|target| target.validate().ok().map(|key| Pushed { target, key, size: 0 }))
        .collect();
    let mut done = 0u64;
    let mut head = ledger.watch_head();
    loop {
        let store = Arc::clone(ledger.store());
        let latest = tokio::task::spawn_blocking(move || store.latest_checkpoint()).await.ok().and_then(Result::ok);
        if let Some((size, note)) = latest.flatten()
            && size > done
        {
            let mut cosigned = note.clone();
            for witness in &mut witnesses {
                if let Some(line) = push_one(&client, ledger.store(), witness, size, &note).await {
                    cosigned.push_str(&line);
                }
            }
            if cosigned != note {
                let store = Arc::clone(ledger.store());
                let stored = tokio::task::spawn_blocking(move || store.put_checkpoint(size, &cosigned)).await;
                if !matches!(stored, Ok(Ok(()))) {
                    tracing::warn!("storing the cosigned checkpoint of size {size} failed");
                }
            }
            if witnesses.iter().all(|w| w.size >= size) {
                done = size;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            changed = head.changed() => if changed.is_err() { return },
        }
    }
}

/// Asks one witness to cosign; its verified cosignature line, if it gave one.
async fn push_one(
    client: &Client,
    store: &Arc<dyn Store>,
    witness: &mut Pushed,
    size: u64,
    note: &str,
) -> Option<String> {
    let signed = SignedCheckpoint::parse(note.as_bytes()).ok()?;
    // At most twice: a 409 tells the witness's size, and the second attempt proves from it.
    for _ in 0..2 {
        let old = witness.size;
        if old > size {
            return None;
        }
        let proof = if old == 0 || old == size {
            Vec::new()
        } else {
            let store = Arc::clone(store);
            tokio::task::spawn_blocking(move || merkle::consistency_proof(&NodeReader(store.as_ref()), old, size))
                .await
                .ok()?
                .ok()?
        };
        let body = AddCheckpoint { old, proof, checkpoint: note.to_string() }.encode();
        let url = format!("{}/add-checkpoint", witness.target.url.trim_end_matches('/'));
        let request = hyper::Request::post(&url).body(Full::new(Bytes::from(body))).ok()?;
        let response = match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::warn!("witness {url}: {e}");
                return None;
            }
            Err(_) => {
                tracing::warn!("witness {url}: no answer in 10 s");
                return None;
            }
        };
        let status = response.status();
        let answer = response.into_body().collect().await.ok()?.to_bytes();
        let answer = String::from_utf8_lossy(&answer);
        match status {
            StatusCode::OK => {
                let mut lines = String::new();
                for line in answer.lines() {
                    let with_line = format!("{}{line}\n", signed_note_prefix(note));
                    let Ok(parsed) = SignedCheckpoint::parse(with_line.as_bytes()) else { continue };
                    if witness.key.cosigned(&signed.text, &parsed.signatures).is_some() {
                        lines.push_str(line);
                        lines.push('\n');
                    }
                }
                if lines.is_empty() {
                    tracing::warn!("witness {url}: answered without a valid cosignature by {}", witness.key);
                    return None;
                }
                witness.size = size;
                return Some(lines);
            }
            StatusCode::CONFLICT => match answer.trim().parse::<u64>() {
                Ok(theirs) if theirs != old => witness.size = theirs,
                _ => {
                    tracing::error!(
                        "witness {url}: refuses checkpoint {size}: it holds an inconsistent tree ({answer})"
                    );
                    return None;
                }
            },
            other => {
                tracing::warn!("witness {url}: answered {other}: {}", answer.trim());
                return None;
            }
        }
    }
    None
}

/// The note with its text and the blank line but no signature lines, so a
/// single line can be appended and parsed as a note.
fn signed_note_prefix(note: &str) -> &str {
    note.rfind("\n\n").map_or(note, |i| &note[..i + 2])
}

/// Runs `portcullis witness` until Ctrl-C or SIGTERM.
///
/// # Errors
/// When the state cannot be read or the address cannot be bound.
pub async fn serve(
    listen: std::net::SocketAddr,
    key: SignerKey,
    logs: Vec<VerifierKey>,
    state: &Path,
) -> anyhow::Result<()> {
    let witness = Arc::new(Witness::open(key, logs, state.to_path_buf())?);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("portcullis witness on http://{}", listener.local_addr()?);
    println!("  cosigner key: {}", witness.cosigner_key());
    for log in &witness.logs {
        println!("  trusts log:   {log}");
    }
    println!("  state:        {}", witness.state_path.display());
    axum::serve(listener, router(witness)).with_graceful_shutdown(crate::serve::shutdown_signal()).await?;
    Ok(())
}
