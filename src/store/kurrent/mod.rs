//! The KurrentDB (formerly EventStoreDB) backend, through the `eventstore`
//! gRPC client. The client (`client.rs`) is built only with `--features
//! kurrentdb`; the stream layout, the URL and the cache below are built and
//! tested in every build.
//!
//! # Layout
//! - The stream `<name>-entries` holds one event per ledger entry: event
//!   number = `seq`, data = the entry's bytes, event id = the ledger event's
//!   16-byte id (as a UUID). A batch is one append with the expected revision
//!   of the entry before it (`NoStream` for entry 0), so KurrentDB itself
//!   keeps the chain linear: a stale position is refused with "wrong expected
//!   version", whoever else appended.
//! - The last event of each batch carries, as its custom metadata, the full
//!   Merkle nodes the batch completes and any key change, so an append is one
//!   atomic write and nothing is derived outside it.
//! - The stream `<name>-checkpoints` holds one event per stored checkpoint
//!   note; folded in stream order with the rule of every store (a note for a
//!   size replaces the stored one only when it extends it).
//!
//! The store keeps in memory what the `Store` trait answers without a round
//! trip: the size, the nodes (two hashes per entry), the ids (for duplicate
//! checks) and the keys. It is filled by reading the entries stream from its
//! start when the store opens, and brought up to date from the stream before
//! every append and size query, so replicas sharing the streams see each
//! other.
//!
//! # Guarantees
//! - An append is acknowledged only after KurrentDB acknowledged the write.
//!   After a connection failure it is retried with the same event ids and
//!   expected revision for up to 30 s (`RETRY_WINDOW`); a retry that meets "wrong
//!   expected version" reads the stream back and succeeds only if the events
//!   at those positions are this batch's (the first try committed).
//! - An event id already in the ledger is refused before the write, against
//!   the ids read up to the stream's end; the expected revision makes the
//!   check and the write atomic (anything appended between them makes the
//!   write fail as a conflict).
//!
//! CI has no KurrentDB server: the contract suite runs against this store
//! only when `PORTCULLIS_TEST_KURRENTDB_URL` names one (see the README).

#![cfg_attr(not(feature = "kurrentdb"), allow(dead_code))]

#[cfg(feature = "kurrentdb")]
mod client;
#[cfg(feature = "kurrentdb")]
pub use client::{KurrentStore, RETRY_WINDOW};

use super::{KeyRecord, StoreError, redact};
use portcullis_format::merkle::Hash;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// The custom metadata of a batch's last event.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct BatchMeta {
    /// `(level, index, hash in hex)` of every full node the batch completes.
    pub(crate) nodes: Vec<(u8, u64, String)>,
    /// `(first seq, verifier key)` of every key the batch puts in force.
    pub(crate) keys: Vec<(u64, String)>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct CheckpointEvent {
    pub(crate) size: u64,
    pub(crate) note: String,
}

/// What the store knows of its streams.
#[derive(Default)]
pub(crate) struct Cache {
    /// Entries read (the next event number of the entries stream).
    pub(crate) size: u64,
    /// Full nodes by level, densely from index 0 (the ledger completes them in order).
    pub(crate) levels: Vec<Vec<Hash>>,
    /// Nodes that did not arrive in order (none from the ledger; kept for other writers).
    pub(crate) sparse: BTreeMap<(u8, u64), Hash>,
    pub(crate) ids: HashSet<[u8; 16]>,
    pub(crate) keys: Vec<KeyRecord>,
    /// Checkpoint notes by size, and the next event number of the checkpoints stream.
    pub(crate) checkpoints: BTreeMap<u64, String>,
    pub(crate) checkpoints_read: u64,
}

impl Cache {
    pub(crate) fn add_node(&mut self, level: u8, index: u64, hash: Hash) {
        let depth = usize::from(level);
        if self.levels.len() <= depth {
            self.levels.resize_with(depth + 1, Vec::new);
        }
        let row = &mut self.levels[depth];
        if index == row.len() as u64 {
            row.push(hash);
        } else if index > row.len() as u64 {
            self.sparse.insert((level, index), hash);
        }
    }

    pub(crate) fn node(&self, level: u8, index: u64) -> Option<Hash> {
        let dense = self.levels.get(usize::from(level)).and_then(|row| row.get(usize::try_from(index).ok()?));
        dense.copied().or_else(|| self.sparse.get(&(level, index)).copied())
    }

    pub(crate) fn add_checkpoint(&mut self, size: u64, note: String) {
        match self.checkpoints.get(&size) {
            Some(stored) if !(note.len() > stored.len() && note.starts_with(stored.as_str())) => {}
            _ => {
                self.checkpoints.insert(size, note);
            }
        }
    }
}

pub(crate) fn unhex(text: &str) -> Option<Hash> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Splits the store URL into the client's connection string and the stream
/// name (`stream=` in the query, `portcullis` when absent); `kurrentdb://`
/// is the client's `esdb://`.
pub(crate) fn parse_url(url: &str) -> Result<(String, String), StoreError> {
    let bad = |reason: &str| StoreError::BadUrl { url: redact(url), reason: reason.into() };
    let rest = if let Some(rest) = url.strip_prefix("kurrentdb://") {
        format!("esdb://{rest}")
    } else if let Some(rest) = url.strip_prefix("kurrentdb+discover://") {
        format!("esdb+discover://{rest}")
    } else if url.starts_with("esdb://") || url.starts_with("esdb+discover://") {
        url.to_string()
    } else {
        return Err(bad("not a kurrentdb://, kurrentdb+discover://, esdb:// or esdb+discover:// URL"));
    };
    let (base, query) = match rest.split_once('?') {
        Some((base, query)) => (base.to_string(), query.to_string()),
        None => (rest, String::new()),
    };
    let mut stream = "portcullis".to_string();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("stream=") {
            Some(name) => {
                let valid = !name.is_empty()
                    && name.len() <= 200
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                    && !name.starts_with('$');
                if !valid {
                    return Err(bad("stream= must be 1 to 200 letters, digits, '-', '_' or '.'"));
                }
                stream = name.to_string();
            }
            None => kept.push(pair),
        }
    }
    let connection = if kept.is_empty() { base } else { format!("{base}?{}", kept.join("&")) };
    Ok((connection, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "kurrentdb"))]
    #[test]
    fn without_the_feature_a_kurrentdb_url_says_how_to_build_with_it() {
        match crate::store::open_url("kurrentdb://localhost:2113?tls=false").err() {
            Some(StoreError::BadUrl { reason, .. }) => assert!(reason.contains("--features kurrentdb"), "{reason}"),
            other => panic!("expected BadUrl, got {other:?}"),
        }
    }

    #[test]
    fn urls_name_the_server_and_the_stream() {
        assert_eq!(
            parse_url("kurrentdb://admin:changeit@localhost:2113?tls=false&stream=shop").unwrap(),
            ("esdb://admin:changeit@localhost:2113?tls=false".to_string(), "shop".to_string())
        );
        assert_eq!(
            parse_url("esdb+discover://a:2113,b:2113").unwrap(),
            ("esdb+discover://a:2113,b:2113".to_string(), "portcullis".to_string())
        );
        for bad in ["kurrentdb://h?stream=", "kurrentdb://h?stream=$all", "kurrentdb://h?stream=a/b", "http://h"] {
            assert!(matches!(parse_url(bad), Err(StoreError::BadUrl { .. })), "{bad}");
        }
    }

    #[test]
    fn a_checkpoint_note_is_replaced_only_by_one_that_extends_it() {
        let mut cache = Cache::default();
        cache.add_checkpoint(4, "note".into());
        cache.add_checkpoint(4, "other".into());
        assert_eq!(cache.checkpoints[&4], "note");
        cache.add_checkpoint(4, "note\n— witness".into());
        assert_eq!(cache.checkpoints[&4], "note\n— witness");
    }

    #[test]
    fn nodes_out_of_order_are_kept_too() {
        let mut cache = Cache::default();
        cache.add_node(0, 0, [1; 32]);
        cache.add_node(0, 2, [3; 32]);
        cache.add_node(1, 0, [9; 32]);
        assert_eq!(cache.node(0, 0), Some([1; 32]));
        assert_eq!(cache.node(0, 1), None);
        assert_eq!(cache.node(0, 2), Some([3; 32]));
        assert_eq!(cache.node(1, 0), Some([9; 32]));
        assert_eq!(unhex(&crate::store::hex(&[0xab; 32])), Some([0xab; 32]));
        assert_eq!(unhex("zz"), None);
    }
}
