//! Event stores: entries in order, appended only at an expected position.
//!
//! A store keeps the signed entries, the full Merkle nodes (so proofs and
//! tiles are O(log n) reads), the signed checkpoints, and the history of the
//! log's keys. It knows nothing of signing or event content: the sequencer
//! decides what to append, the store makes it durable atomically.
//!
//! **Architecture Invariant:** an append either makes every entry, node and key
//! change of the batch durable, or none of them; and it succeeds only if the
//! store's size equals the expected position (optimistic concurrency) and no
//! event id of the batch is already stored.

pub mod kurrent;
pub mod postgres;
pub mod sqlite;

use portcullis_format::merkle::{Frontier, Hash};
use std::sync::Arc;
use std::time::Duration;

/// The most entries [`Store::take_turn`] returns.
pub const TURN_ENTRIES: u64 = 4096;

/// One append: entries starting at `expected_size`, the full nodes they complete,
/// and (for a key rotation) the new key in force from a sequence number.
#[derive(Debug, Default)]
pub struct AppendBatch {
    pub expected_size: u64,
    /// The leaf hash of the entry before `expected_size`, which the batch was
    /// signed on. When given, the store refuses the batch as a conflict unless
    /// it holds that leaf there: a batch signed on entries that another
    /// replica passed with the turn but did not commit (or committed
    /// differently) is never appended on other entries.
    pub prev: Option<Hash>,
    pub entries: Vec<Vec<u8>>,
    pub nodes: Vec<(u8, u64, Hash)>,
    pub key_changes: Vec<(u64, String)>,
    /// The event ids of `entries`; the store refuses an id it already holds.
    pub ids: Vec<[u8; 16]>,
    /// Whether the append should also find out whether another writer waits
    /// for the turn (see [`Store::turn_wanted`]). A writer that passes the
    /// turn after every batch anyway need not ask: on PostgreSQL the answer
    /// costs a scan of the server's lock table.
    pub watch_turn: bool,
}

impl AppendBatch {
    /// The index and hash of the leaf the store must hold for this batch, if any
    /// (see [`AppendBatch::prev`]).
    pub(crate) fn prev_leaf(&self) -> Option<(u64, Hash)> {
        Some((self.expected_size.checked_sub(1)?, self.prev?))
    }
}

/// What [`Store::take_turn`] read when it took the turn.
#[derive(Debug, Default)]
pub struct Turn {
    /// The committed entries from the caller's position on (at most [`TURN_ENTRIES`]).
    pub committed: Vec<Vec<u8>>,
    /// What the last holder passed with the turn (see [`Store::pass_turn`])
    /// that continues `committed`; empty when nothing does.
    pub passed: Passed,
}

/// Entries the holder of the writers' turn signed and has in flight, passed
/// with the turn so the next holder signs on top of them while they commit:
/// their leaf hashes, and the last of them whole (the next holder checks it
/// and signs on its leaf). They may not be committed yet, or ever: the
/// store's check of [`AppendBatch::prev`] refuses what is signed on entries
/// that did not become the store's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Passed {
    /// The leaf before the first of `leaves`: the next holder takes the
    /// entries only if it is the leaf its own state ends on.
    pub before: Hash,
    /// The leaf hashes of the entries, in order.
    pub leaves: Vec<Hash>,
    /// The last entry (empty when `leaves` is).
    pub last: Vec<u8>,
}

/// A key of the log and the first sequence number it signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub from_seq: u64,
    pub vkey: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("append conflict: expected the ledger to hold {expected} entries, it holds {actual}")]
    AppendConflict { expected: u64, actual: u64 },
    #[error("ledger store {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("ledger store schema version {found} is not supported (this build knows version {supported})")]
    SchemaVersion { found: i64, supported: i64 },
    #[error("ledger store query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("event id {} is already in the ledger", .0.iter().map(|b| format!("{b:02x}")).collect::<String>())]
    DuplicateEventId([u8; 16]),
    #[error("ledger store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("ledger store {url}: cannot connect: {reason}")]
    Connect { url: String, reason: String },
    #[error("ledger store query failed: {0}")]
    Backend(String),
    /// The store stayed unreachable for the whole retry window; for an append,
    /// whether it committed could not be established, so it is not acknowledged.
    #[error("ledger store unavailable (retried for {secs}s): {reason}")]
    Unavailable { secs: u64, reason: String },
    #[error("ledger store is missing Merkle node ({level}, {index})")]
    MissingNode { level: u8, index: u64 },
    #[error("ledger store holds a corrupt value: {0}")]
    Corrupt(String),
}

/// The operations every backend provides. Calls block; async callers use
/// `spawn_blocking`.
pub trait Store: Send + Sync {
    /// The number of entries.
    fn size(&self) -> Result<u64, StoreError>;
    /// Appends atomically at `batch.expected_size`.
    fn append(&self, batch: &AppendBatch) -> Result<(), StoreError>;
    /// Entries `from..from+limit` (fewer at the end).
    fn entries(&self, from: u64, limit: u64) -> Result<Vec<Vec<u8>>, StoreError>;
    /// A full node's hash.
    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError>;
    /// Consecutive full nodes of one level.
    fn nodes(&self, level: u8, from: u64, count: u64) -> Result<Vec<Hash>, StoreError>;
    /// The full nodes `wanted` names (level, index), in its order. A store
    /// with a round trip per read answers it in one (see [`load_frontier`]).
    fn nodes_at(&self, wanted: &[(u8, u64)]) -> Result<Vec<Hash>, StoreError> {
        wanted.iter().map(|&(level, index)| self.node(level, index)).collect()
    }
    /// Stores a signed checkpoint note for `size`. A note for a size already
    /// stored replaces it only when it extends it (the same note with more
    /// signature lines: witness cosignatures); anything else is ignored.
    fn put_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError>;
    /// The checkpoint of the largest size.
    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// The checkpoint stored for exactly `size`.
    fn checkpoint_at(&self, size: u64) -> Result<Option<String>, StoreError>;
    /// The keys of the log, in order.
    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Whether other processes may append to this store too (replicas on
    /// one database): the ledger then follows the store's head and re-signs
    /// a batch that lost a race on top of the winner's entries.
    fn shared(&self) -> bool {
        false
    }
    /// Takes this writer's turn on a store several writers share: waits
    /// (first come, first served) until no other writer holds it, and keeps
    /// it until [`Store::pass_turn`]. While it is held no other writer signs,
    /// so a batch signed on the head it returns is appended as signed.
    ///
    /// Returns `Some(turn)` when the turn was taken by this call: what others
    /// appended from `from` on while this writer had not the turn, and what
    /// the last holder passed with it, read in the same round trip. `None`
    /// when it was already held, or could not be had in time (appends stay
    /// safe without it: the expected position and the leaf before it
    /// decide). Single-writer stores: always `None`.
    fn take_turn(&self, from: u64) -> Result<Option<Turn>, StoreError> {
        let _ = from;
        Ok(None)
    }
    /// Whether this writer holds the turn (single-writer stores: always).
    fn holds_turn(&self) -> bool {
        true
    }
    /// Gives the turn up (a no-op when it is not held), handing the next
    /// holder `in_flight`: the entries from `from` on that this writer signed
    /// and has not seen committed yet.
    fn pass_turn(&self, from: u64, in_flight: &Passed) -> Result<(), StoreError> {
        let _ = (from, in_flight);
        Ok(())
    }
    /// Whether another writer waited for the turn at this writer's last append
    /// (`false` when that append did not ask, see [`AppendBatch::watch_turn`]).
    fn turn_wanted(&self) -> bool {
        false
    }
    /// Blocks until the store may have grown past `size`, or `timeout`
    /// passes. Only a hint (a notification may be missed): callers re-read
    /// the size afterwards. The default just sleeps.
    fn wait_for_growth(&self, size: u64, timeout: Duration) {
        let _ = size;
        std::thread::sleep(timeout);
    }
    /// A short description for logs and the start-up printout, without credentials.
    fn describe(&self) -> String {
        "store".into()
    }
}

/// The store a URL names:
/// - `postgres://user@host:port/db` or `postgresql://...` (libpq-style URL): PostgreSQL;
/// - `kurrentdb://host:2113?tls=false&stream=NAME` (also `kurrentdb+discover://`, `esdb://`,
///   `esdb+discover://`): KurrentDB, in builds with the `kurrentdb` feature;
/// - `sqlite:PATH` or `sqlite://PATH`, or a plain path: the embedded SQLite file.
///
/// # Errors
/// [`StoreError::BadUrl`] for an unknown scheme, or the backend's open error.
pub fn open_url(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(postgres::PostgresStore::open(url)?));
    }
    if ["kurrentdb://", "kurrentdb+discover://", "esdb://", "esdb+discover://"].iter().any(|s| url.starts_with(s)) {
        #[cfg(feature = "kurrentdb")]
        return Ok(Arc::new(kurrent::KurrentStore::open(url)?));
        #[cfg(not(feature = "kurrentdb"))]
        return Err(StoreError::BadUrl {
            url: redact(url),
            reason: "this build has no KurrentDB store: build with `cargo build --release --features kurrentdb`".into(),
        });
    }
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err(StoreError::BadUrl { url: url.into(), reason: "no file path after sqlite:".into() });
        }
        return Ok(Arc::new(sqlite::SqliteStore::open(std::path::Path::new(path))?));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(StoreError::BadUrl {
            url: redact(url),
            reason: format!("unknown scheme {scheme:?}: use postgres://, kurrentdb://, sqlite: or a file path"),
        });
    }
    if url.is_empty() {
        return Err(StoreError::BadUrl { url: url.into(), reason: "empty".into() });
    }
    Ok(Arc::new(sqlite::SqliteStore::open(std::path::Path::new(url))?))
}

pub(crate) use crate::lock;

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A URL with its password (if any) replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    match path {
        Some(p) => format!("{scheme}://{authority}/{p}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// The frontier of the tree of the first `size` entries, its full nodes (one
/// per set bit of `size`) read with one [`Store::nodes_at`].
///
/// # Errors
/// [`StoreError::MissingNode`] when the store lacks one, or the read fails.
pub fn load_frontier(store: &dyn Store, size: u64) -> Result<Frontier, StoreError> {
    let hashes = store.nodes_at(&Frontier::edge(size))?;
    Frontier::from_edge(size, hashes).ok_or_else(|| StoreError::Corrupt("the store answered for other nodes".into()))
}

/// Adapts a store to the format crate's node reader for proof generation.
pub struct NodeReader<'a>(pub &'a dyn Store);

impl portcullis_format::merkle::HashReader for NodeReader<'_> {
    type Error = StoreError;
    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        self.0.node(level, index)
    }
}
