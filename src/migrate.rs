//! `portcullis migrate --from URL --to URL`: copies a ledger between stores.
//!
//! # Guarantees
//! - Every entry copied is checked on the way (sequence, origin, `prev`
//!   chain, timestamps, signature by the key in force from the source's key
//!   history, co-signature of rotations), and the Merkle tree is recomputed
//!   from the entries themselves (the source's stored nodes are not copied).
//!   The copy ends at the source's latest checkpoint, whose signature is
//!   checked and whose root must equal the recomputed root before the
//!   checkpoint is written to the target.
//! - Resumable: entries go in batches, each one transaction at the target's
//!   expected position; a rerun after an interruption continues where the
//!   target stops, after checking that the target's tree is a prefix of the
//!   source's (equal roots at the target's size).
//! - A target that holds a different ledger (another origin, or a tree that
//!   is not a prefix of the source's) is refused, and nothing is written to it.

use crate::store::{AppendBatch, KeyRecord, NodeReader, Store, StoreError};
use portcullis_format::checkpoint::SignedCheckpoint;
use portcullis_format::event::ParsedEntry;
use portcullis_format::merkle::{Frontier, leaf_hash, range_hash};
use portcullis_format::note::VerifierKey;
use portcullis_format::time::Timestamp;

const BATCH: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the source has no checkpoint: start the service on it once (it signs one), then migrate")]
    NoCheckpoint,
    #[error("the source's latest checkpoint does not verify: {0}")]
    Checkpoint(String),
    #[error("the source does not verify at entry {seq}: {reason}")]
    Entry { seq: u64, reason: String },
    #[error("the target holds a different ledger: {0}")]
    DifferentLedger(String),
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Entries the target held before (resumed from).
    pub resumed_at: u64,
    /// Entries copied now.
    pub copied: u64,
    /// The checkpointed size the target now holds.
    pub size: u64,
    pub origin: String,
}

/// Options for tests and operators.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Stop after copying this many entries (an interruption, for tests).
    pub stop_after: Option<u64>,
}

fn key_at(keys: &[(u64, VerifierKey)], seq: u64) -> Option<&VerifierKey> {
    keys.iter().rev().find(|(from, _)| *from <= seq).map(|(_, k)| k)
}

/// Copies the ledger of `from` (up to its latest checkpoint) into `to`.
///
/// # Errors
/// [`MigrateError`] naming what does not verify, or what differs in the target.
pub fn migrate(
    from: &dyn Store,
    to: &dyn Store,
    options: Options,
    progress: &dyn Fn(u64, u64),
) -> Result<Summary, MigrateError> {
    let (size, note) = from.latest_checkpoint()?.ok_or(MigrateError::NoCheckpoint)?;
    let signed = SignedCheckpoint::parse(note.as_bytes()).map_err(|e| MigrateError::Checkpoint(e.to_string()))?;
    let origin = signed.checkpoint.origin.clone();
    let records = from.keys()?;
    let keys: Vec<(u64, VerifierKey)> = records
        .iter()
        .map(|r| VerifierKey::parse(&r.vkey).map(|k| (r.from_seq, k)))
        .collect::<Result<_, _>>()
        .map_err(|e| MigrateError::Checkpoint(format!("the source's key history: {e}")))?;
    let checkpoint_key = key_at(&keys, size).ok_or_else(|| MigrateError::Checkpoint("no key in force".into()))?;
    signed.verify(checkpoint_key).map_err(|e| MigrateError::Checkpoint(e.to_string()))?;
    if signed.checkpoint.size != size {
        return Err(MigrateError::Checkpoint(format!("stored for size {size}, says {}", signed.checkpoint.size)));
    }

    // The target must be empty, or a prefix of this very ledger.
    let start = to.size()?;
    let target_keys = to.keys()?;
    if start > 0 {
        if start > from.size()? {
            return Err(MigrateError::DifferentLedger(format!(
                "it holds {start} entries, the source {}",
                from.size()?
            )));
        }
        let ours = range_hash(&NodeReader(from), 0, start)?;
        let theirs = range_hash(&NodeReader(to), 0, start)?;
        if ours != theirs {
            return Err(MigrateError::DifferentLedger(format!("its tree of {start} entries has another root")));
        }
        let first = to.entries(0, 1)?.pop().unwrap_or_default();
        match ParsedEntry::parse(&first) {
            Ok(parsed) if parsed.event.log == origin => {}
            Ok(parsed) => return Err(MigrateError::DifferentLedger(format!("its origin is {:?}", parsed.event.log))),
            Err(e) => return Err(MigrateError::DifferentLedger(format!("its entry 0 does not parse: {e}"))),
        }
        if !records.starts_with(&target_keys) {
            return Err(MigrateError::DifferentLedger("its key history differs".into()));
        }
    } else if !target_keys.is_empty() {
        return Err(MigrateError::DifferentLedger("it is empty but holds keys".into()));
    }
    let mut copied_keys: Vec<KeyRecord> = target_keys;

    let mut frontier = Frontier::load(start.min(size), &NodeReader(to))?;
    let (mut prev, mut last_ts) = if start == 0 {
        ([0u8; 32], Timestamp::EPOCH)
    } else {
        let last = to.entries(start - 1, 1)?.pop().unwrap_or_default();
        let parsed = ParsedEntry::parse(&last)
            .map_err(|e| MigrateError::DifferentLedger(format!("its entry {}: {e}", start - 1)))?;
        (leaf_hash(&last), parsed.event.ts)
    };

    let mut seq = start;
    let mut copied = 0u64;
    while seq < size {
        let mut count = (size - seq).min(BATCH);
        if let Some(stop) = options.stop_after {
            count = count.min(stop.saturating_sub(copied));
            if count == 0 {
                break;
            }
        }
        let entries = from.entries(seq, count)?;
        if entries.len() as u64 != count {
            return Err(MigrateError::Entry { seq: seq + entries.len() as u64, reason: "missing".into() });
        }
        let mut batch = AppendBatch { expected_size: seq, ..AppendBatch::default() };
        for (i, entry) in entries.into_iter().enumerate() {
            let n = seq + i as u64;
            let bad = |reason: String| MigrateError::Entry { seq: n, reason };
            let parsed = ParsedEntry::parse(&entry).map_err(|e| bad(e.to_string()))?;
            let event = &parsed.event;
            if event.seq != n || event.log != origin {
                return Err(bad(format!("entry says seq {} of log {:?}", event.seq, event.log)));
            }
            if event.prev != prev {
                return Err(bad("prev is not the leaf hash of the previous entry".into()));
            }
            if event.ts < last_ts {
                return Err(bad("timestamp is earlier than the previous entry's".into()));
            }
            let key = key_at(&keys, n).ok_or_else(|| bad("no key in force".into()))?;
            let text = &entry[..parsed.text_len];
            if !key.verify(text, &parsed.signatures[0]) {
                return Err(bad(format!("signature by the key in force {key} does not verify")));
            }
            if let Some(new_key) = &parsed.new_key
                && (parsed.signatures.len() < 2
                    || !new_key.verify(text, &parsed.signatures[1])
                    || key_at(&keys, n + 1) != Some(new_key))
            {
                return Err(bad("key rotation is not co-signed by the new key or not recorded".into()));
            }
            let leaf = leaf_hash(&entry);
            let nodes = &mut batch.nodes;
            frontier.push(leaf, |level, index, hash| nodes.push((level, index, *hash)));
            prev = leaf;
            last_ts = event.ts;
            batch.ids.push(event.draft.id.0);
            batch.entries.push(entry);
        }
        let end = seq + count;
        let new_keys: Vec<KeyRecord> =
            records.iter().filter(|r| r.from_seq <= end && !copied_keys.contains(r)).cloned().collect();
        for record in new_keys {
            batch.key_changes.push((record.from_seq, record.vkey.clone()));
            copied_keys.push(record);
        }
        to.append(&batch)?;
        seq = end;
        copied += count;
        progress(seq, size);
    }
    if seq == size {
        if frontier.root() != signed.checkpoint.root {
            return Err(MigrateError::Checkpoint(format!(
                "the tree recomputed from the {size} entries has another root than the checkpoint"
            )));
        }
        to.put_checkpoint(size, &note)?;
    }
    Ok(Summary { resumed_at: start, copied, size: seq, origin })
}
