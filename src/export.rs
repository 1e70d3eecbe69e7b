//! `portcullis export`: the ledger (or a range of it) as a tlog-tiles
//! directory with its checkpoint and `entries.jsonl`.
//!
//! Exports are always of a checkpointed size: the latest signed checkpoint,
//! or the one stored for `--to`. A range export (`--from`) starts at a
//! multiple of 256 and carries every hash tile, so the verifier still
//! recomputes the root of the whole tree.

use crate::store::{Store, StoreError};
use portcullis_format::checkpoint::SignedCheckpoint;
use portcullis_format::export::{ExportError, ExportWriter};
use portcullis_format::tiles::TILE_WIDTH;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ExportLedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] ExportError),
    #[error("the ledger has no signed checkpoint yet; run `portcullis checkpoint` or start `portcullis serve`")]
    NoCheckpoint,
    #[error("no checkpoint is stored for size {0}; the latest is for size {1}")]
    NoCheckpointAt(u64, u64),
    #[error("--from {from} is beyond the exported size {size}")]
    FromBeyondSize { from: u64, size: u64 },
    #[error("the stored checkpoint is unreadable: {0}")]
    BadCheckpoint(String),
    #[error("the exported tree's root differs from the checkpoint's: the store is corrupt")]
    RootMismatch,
}

/// What was exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    pub size: u64,
    pub first_entry: u64,
    pub entries: u64,
    /// Entries in the store after the exported checkpoint.
    pub not_checkpointed: u64,
}

/// Exports entries `from..size` of the checkpoint of size `to` (or the latest).
///
/// # Errors
/// [`ExportLedgerError`] for a missing checkpoint, a bad range, a store
/// failure, or a non-empty target directory.
pub fn export(
    store: &dyn Store,
    dir: &Path,
    from: u64,
    to: Option<u64>,
    progress: &dyn Fn(u64, u64),
) -> Result<ExportSummary, ExportLedgerError> {
    let (latest_size, latest_note) = store.latest_checkpoint()?.ok_or(ExportLedgerError::NoCheckpoint)?;
    let (size, note) = match to {
        None => (latest_size, latest_note),
        Some(to) => (to, store.checkpoint_at(to)?.ok_or(ExportLedgerError::NoCheckpointAt(to, latest_size))?),
    };
    if from > size || (from == size && size > 0) {
        return Err(ExportLedgerError::FromBeyondSize { from, size });
    }
    let checkpoint =
        SignedCheckpoint::parse(note.as_bytes()).map_err(|e| ExportLedgerError::BadCheckpoint(e.to_string()))?;
    let start = from / TILE_WIDTH * TILE_WIDTH;
    let mut writer = ExportWriter::create(dir)?;
    const CHUNK: u64 = 4096;
    let mut seq = 0u64;
    while seq < start {
        let count = CHUNK.min(start - seq);
        for hash in store.nodes(0, seq, count)? {
            writer.push_hash_only(hash)?;
        }
        seq += count;
    }
    while seq < size {
        let entries = store.entries(seq, CHUNK.min(size - seq))?;
        if entries.is_empty() {
            return Err(StoreError::Corrupt(format!("entry {seq} is missing")).into());
        }
        seq += entries.len() as u64;
        for entry in entries {
            writer.push(entry)?;
        }
        progress(seq, size);
    }
    if writer.root() != checkpoint.checkpoint.root {
        return Err(ExportLedgerError::RootMismatch);
    }
    writer.finish(&note)?;
    Ok(ExportSummary {
        size,
        first_entry: start,
        entries: size - start,
        not_checkpointed: store.size()? - latest_size.min(store.size()?),
    })
}
