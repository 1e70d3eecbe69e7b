//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! so a commit returns only after its WAL frames are fsynced.
//!
//! Writes go through one connection; reads use a second one, so the HTTP API
//! reads while the sequencer writes (WAL readers never block the writer).

use super::{AppendBatch, KeyRecord, Store, StoreError, lock};
use portcullis_format::merkle::Hash;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (id INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (from_seq INTEGER PRIMARY KEY, vkey TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS event_ids (id BLOB PRIMARY KEY) WITHOUT ROWID;
";

/// Full nodes are keyed by one integer: the level in the top 6 bits, the index below.
fn node_id(level: u8, index: u64) -> i64 {
    ((u64::from(level) << 57) | index) as i64
}

pub struct SqliteStore {
    path: std::path::PathBuf,
    /// Locked with [`lock`]: a panic while holding one leaves the connection
    /// usable, since SQLite rolls back an unfinished transaction when the next begins.
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the ledger database at `path`.
    ///
    /// # Errors
    /// [`StoreError::Open`] when the file cannot be opened or set up, or
    /// [`StoreError::SchemaVersion`] for a database of another version.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_err = |source| StoreError::Open { path: path.display().to_string(), source };
        let writer = Connection::open(path).map_err(open_err)?;
        writer.busy_timeout(Duration::from_secs(10)).map_err(open_err)?;
        writer
            .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(open_err)?;
        writer.execute_batch(SCHEMA).map_err(open_err)?;
        let version: Option<String> = writer
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .optional()
            .map_err(open_err)?;
        match version {
            None => {
                writer
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                        [SCHEMA_VERSION.to_string()],
                    )
                    .map_err(open_err)?;
            }
            Some(v) => {
                let found: i64 = v.parse().unwrap_or(-1);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaVersion { found, supported: SCHEMA_VERSION });
                }
            }
        }
        let reader =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(open_err)?;
        reader.busy_timeout(Duration::from_secs(10)).map_err(open_err)?;
        Ok(SqliteStore { path: path.to_path_buf(), writer: Mutex::new(writer), reader: Mutex::new(reader) })
    }
}

/// The size implied by the largest stored seq; a negative seq (a hostile or
/// corrupt file) is refused rather than wrapped or overflowed.
fn size_from_max(max: Option<i64>) -> Result<u64, StoreError> {
    match max {
        None => Ok(0),
        Some(m) => u64::try_from(m)
            .ok()
            .and_then(|m| m.checked_add(1))
            .ok_or_else(|| StoreError::Corrupt(format!("the entries table holds seq {m}"))),
    }
}

fn hash_from(bytes: Vec<u8>) -> Result<Hash, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt("a node hash is not 32 bytes".into()))
}

impl Store for SqliteStore {
    fn size(&self) -> Result<u64, StoreError> {
        let conn = lock(&self.reader);
        let max: Option<i64> = conn.query_row("SELECT max(seq) FROM entries", [], |r| r.get(0))?;
        size_from_max(max)
    }

    fn append(&self, batch: &AppendBatch) -> Result<(), StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let max: Option<i64> = tx.query_row("SELECT max(seq) FROM entries", [], |r| r.get(0))?;
        let actual = size_from_max(max)?;
        if actual != batch.expected_size {
            return Err(StoreError::AppendConflict { expected: batch.expected_size, actual });
        }
        if let Some((index, prev)) = batch.prev_leaf() {
            let stored: Option<Vec<u8>> = tx
                .prepare_cached("SELECT hash FROM nodes WHERE id = ?1")?
                .query_row([node_id(0, index)], |r| r.get(0))
                .optional()?;
            if stored.as_deref() != Some(prev.as_slice()) {
                return Err(StoreError::AppendConflict { expected: batch.expected_size, actual });
            }
        }
        {
            let mut insert = tx.prepare_cached("INSERT INTO entries (seq, entry) VALUES (?1, ?2)")?;
            for (i, entry) in batch.entries.iter().enumerate() {
                insert.execute(params![(batch.expected_size + i as u64) as i64, entry])?;
            }
            let mut insert = tx.prepare_cached("INSERT INTO nodes (id, hash) VALUES (?1, ?2)")?;
            for (level, index, hash) in &batch.nodes {
                insert.execute(params![node_id(*level, *index), hash.as_slice()])?;
            }
            let mut insert = tx.prepare_cached("INSERT INTO event_ids (id) VALUES (?1)")?;
            for id in &batch.ids {
                if let Err(e) = insert.execute([id.as_slice()]) {
                    return Err(match e.sqlite_error_code() {
                        Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::DuplicateEventId(*id),
                        _ => e.into(),
                    });
                }
            }
            let mut insert = tx.prepare_cached("INSERT INTO keys (from_seq, vkey) VALUES (?1, ?2)")?;
            for (from, vkey) in &batch.key_changes {
                insert.execute(params![*from as i64, vkey])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn entries(&self, from: u64, limit: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached("SELECT seq, entry FROM entries WHERE seq >= ?1 ORDER BY seq LIMIT ?2")?;
        let rows = stmt.query_map(params![from as i64, limit.min(i64::MAX as u64) as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for (i, row) in rows.enumerate() {
            let (seq, entry) = row?;
            if seq as u64 != from + i as u64 {
                return Err(StoreError::Corrupt(format!("entry {} is missing", from + i as u64)));
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        let conn = lock(&self.reader);
        let bytes: Option<Vec<u8>> = conn
            .prepare_cached("SELECT hash FROM nodes WHERE id = ?1")?
            .query_row([node_id(level, index)], |r| r.get(0))
            .optional()?;
        hash_from(bytes.ok_or(StoreError::MissingNode { level, index })?)
    }

    fn nodes(&self, level: u8, from: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached("SELECT id, hash FROM nodes WHERE id >= ?1 AND id < ?2 ORDER BY id")?;
        let rows = stmt.query_map(params![node_id(level, from), node_id(level, from + count)], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::with_capacity(count as usize);
        for (i, row) in rows.enumerate() {
            let (id, hash) = row?;
            if id != node_id(level, from + i as u64) {
                return Err(StoreError::MissingNode { level, index: from + i as u64 });
            }
            out.push(hash_from(hash)?);
        }
        if out.len() as u64 != count {
            return Err(StoreError::MissingNode { level, index: from + out.len() as u64 });
        }
        Ok(out)
    }

    fn put_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError> {
        let conn = lock(&self.writer);
        conn.execute(
            // A note that extends the stored one (the same note with witness
            // cosignatures appended) replaces it; anything else leaves it as it is.
            "INSERT INTO checkpoints (size, note) VALUES (?1, ?2) ON CONFLICT (size) DO UPDATE SET note = excluded.note \
             WHERE length(excluded.note) > length(checkpoints.note) \
             AND substr(excluded.note, 1, length(checkpoints.note)) = checkpoints.note",
            params![size as i64, note],
        )?;
        Ok(())
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        let conn = lock(&self.reader);
        Ok(conn
            .query_row("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .optional()?)
    }

    fn checkpoint_at(&self, size: u64) -> Result<Option<String>, StoreError> {
        let conn = lock(&self.reader);
        Ok(conn.query_row("SELECT note FROM checkpoints WHERE size = ?1", [size as i64], |r| r.get(0)).optional()?)
    }

    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached("SELECT from_seq, vkey FROM keys ORDER BY from_seq")?;
        let rows = stmt.query_map([], |r| Ok(KeyRecord { from_seq: r.get::<_, i64>(0)? as u64, vkey: r.get(1)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn describe(&self) -> String {
        format!("SQLite {}", self.path.display())
    }
}
