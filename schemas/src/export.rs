//! Writing an export: the ledger in the C2SP tlog-tiles layout, plus
//! `entries.jsonl` for people with `jq`.
//!
//! ```text
//! DIR/checkpoint                  the signed checkpoint of the exported size
//! DIR/tile/<L>/<N>[.p/<W>]        hash tiles of every level
//! DIR/tile/entries/<N>[.p/<W>]    entry bundles
//! DIR/entries.jsonl               one canonical JSON object per exported entry
//! ```
//!
//! Entries are streamed through [`ExportWriter`]; memory stays O(log n + 256).

use crate::event::ParsedEntry;
use crate::json::Json;
use crate::merkle::{Frontier, Hash, leaf_hash};
use crate::tiles::{TILE_HEIGHT, TILE_WIDTH, Tile, encode_bundle};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The name of the JSON Lines file in an export.
pub const JSONL_FILE: &str = "entries.jsonl";
/// The name of the checkpoint file in an export.
pub const CHECKPOINT_FILE: &str = "checkpoint";

/// Appends the `entries.jsonl` line of an entry and its LF to `out`: canonical JSON
/// `{"event":{...},"leaf_hash":"...","seq":N,"signatures":[{"key_id":"...","name":"...","signature":"..."}]}`.
/// The `event` member is the entry's own canonical JSON line, copied verbatim.
pub fn write_jsonl_line(parsed: &ParsedEntry, entry: &[u8], leaf: &Hash, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"event\":");
    out.extend_from_slice(parsed.json_line(entry));
    out.extend_from_slice(b",\"leaf_hash\":\"");
    let mut encoded = [0u8; 44];
    let n = B64.encode_slice(leaf, &mut encoded).unwrap_or(0);
    out.extend_from_slice(&encoded[..n]);
    out.extend_from_slice(format!("\",\"seq\":{},\"signatures\":[", parsed.event.seq).as_bytes());
    for (i, signature) in parsed.signatures.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut name = String::with_capacity(signature.name.len() + 2);
        Json::Str(signature.name.clone()).write_canonical(&mut name);
        out.extend_from_slice(
            format!("{{\"key_id\":\"{:08x}\",\"name\":{name},\"signature\":\"", signature.key_id).as_bytes(),
        );
        out.extend_from_slice(B64.encode(&signature.signature).as_bytes());
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"]}\n");
}

/// Builds the hash tiles of a tree as leaves arrive.
#[derive(Default)]
pub struct TileBuilder {
    frontier: Frontier,
    /// Pending hashes of the current (not yet full) tile at each tile level.
    pending: Vec<Vec<Hash>>,
}

impl TileBuilder {
    /// Appends a leaf; calls `full_tile` for every tile it completes.
    pub fn push(&mut self, leaf: Hash, mut full_tile: impl FnMut(Tile, &[Hash])) {
        let pending = &mut self.pending;
        self.frontier.push(leaf, |level, index, hash| {
            if level % TILE_HEIGHT != 0 {
                return;
            }
            let tile_level = level / TILE_HEIGHT;
            if pending.len() <= usize::from(tile_level) {
                pending.resize_with(usize::from(tile_level) + 1, Vec::new);
            }
            let buffer = &mut pending[usize::from(tile_level)];
            buffer.push(*hash);
            if buffer.len() as u64 == TILE_WIDTH {
                full_tile(Tile { level: tile_level, index: index / TILE_WIDTH, width: TILE_WIDTH }, buffer);
                buffer.clear();
            }
        });
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The partial tiles at the current size, lowest level first.
    pub fn partial_tiles(&self) -> Vec<(Tile, &[Hash])> {
        let size = self.frontier.size();
        self.pending
            .iter()
            .enumerate()
            .filter(|(_, hashes)| !hashes.is_empty())
            .map(|(level, hashes)| {
                let level = level as u8;
                let per_tile = TILE_WIDTH.pow(u32::from(level) + 1);
                (Tile { level, index: size / per_tile, width: hashes.len() as u64 }, hashes.as_slice())
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("entry {seq} does not parse: {source}")]
    Entry { seq: u64, source: crate::event::EntryError },
    #[error("export directory {0} is not empty")]
    NotEmpty(PathBuf),
    #[error("export range: {0}")]
    Range(String),
}

/// Streams a ledger into an export directory.
pub struct ExportWriter {
    dir: PathBuf,
    tiles: TileBuilder,
    bundle: Vec<Vec<u8>>,
    jsonl: BufWriter<fs::File>,
    line: Vec<u8>,
    entries_pushed: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io { path: path.to_path_buf(), source }
}

fn write_file(dir: &Path, relative: &str, bytes: &[u8]) -> Result<(), ExportError> {
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    fs::write(&path, bytes).map_err(io_err(&path))
}

impl ExportWriter {
    /// Starts an export into `dir`, which must be absent or empty.
    ///
    /// # Errors
    /// [`ExportError::NotEmpty`] or an I/O failure.
    pub fn create(dir: &Path) -> Result<ExportWriter, ExportError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        if fs::read_dir(dir).map_err(io_err(dir))?.next().is_some() {
            return Err(ExportError::NotEmpty(dir.to_path_buf()));
        }
        let jsonl_path = dir.join(JSONL_FILE);
        let jsonl = BufWriter::new(fs::File::create(&jsonl_path).map_err(io_err(&jsonl_path))?);
        Ok(ExportWriter {
            dir: dir.to_path_buf(),
            tiles: TileBuilder::default(),
            bundle: Vec::new(),
            jsonl,
            line: Vec::new(),
            entries_pushed: false,
        })
    }

    /// Adds a leaf whose entry is not exported (before the start of a range export).
    ///
    /// # Errors
    /// An I/O failure writing a completed tile.
    pub fn push_hash_only(&mut self, leaf: Hash) -> Result<(), ExportError> {
        if self.entries_pushed {
            return Err(ExportError::Range("hash-only leaves must all come before the first exported entry".into()));
        }
        self.push_leaf(leaf)
    }

    fn push_leaf(&mut self, leaf: Hash) -> Result<(), ExportError> {
        let mut result = Ok(());
        let dir = self.dir.clone();
        self.tiles.push(leaf, |tile, hashes| {
            if result.is_ok() {
                result = write_file(&dir, &tile.path(), &hashes.concat());
            }
        });
        result
    }

    /// Adds the next entry.
    ///
    /// # Errors
    /// [`ExportError::Entry`] when the entry does not parse, or an I/O failure.
    pub fn push(&mut self, entry: Vec<u8>) -> Result<(), ExportError> {
        let seq = self.tiles.size();
        if !self.entries_pushed && !seq.is_multiple_of(TILE_WIDTH) {
            return Err(ExportError::Range(format!(
                "a range export must start at a multiple of {TILE_WIDTH}, not {seq}"
            )));
        }
        self.entries_pushed = true;
        let parsed = ParsedEntry::parse(&entry).map_err(|source| ExportError::Entry { seq, source })?;
        let leaf = leaf_hash(&entry);
        self.line.clear();
        write_jsonl_line(&parsed, &entry, &leaf, &mut self.line);
        let jsonl_path = self.dir.join(JSONL_FILE);
        self.jsonl.write_all(&self.line).map_err(io_err(&jsonl_path))?;
        self.push_leaf(leaf)?;
        self.bundle.push(entry);
        if self.tiles.size().is_multiple_of(TILE_WIDTH) {
            self.flush_bundle(TILE_WIDTH)?;
        }
        Ok(())
    }

    fn flush_bundle(&mut self, width: u64) -> Result<(), ExportError> {
        if self.bundle.is_empty() {
            return Ok(());
        }
        let index = (self.tiles.size() - 1) / TILE_WIDTH;
        let tile = Tile { level: 0, index, width };
        write_file(&self.dir, &tile.entries_path(), &encode_bundle(self.bundle.iter().map(Vec::as_slice)))?;
        self.bundle.clear();
        Ok(())
    }

    /// The number of leaves so far.
    pub fn size(&self) -> u64 {
        self.tiles.size()
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        self.tiles.root()
    }

    /// Writes the partial tiles and bundle and the checkpoint note, which must
    /// be for the current size and root (the caller signs it).
    ///
    /// # Errors
    /// An I/O failure.
    pub fn finish(mut self, checkpoint_note: &str) -> Result<(), ExportError> {
        let width = self.tiles.size() % TILE_WIDTH;
        if width != 0 {
            self.flush_bundle(width)?;
        }
        for (tile, hashes) in self.tiles.partial_tiles() {
            write_file(&self.dir, &tile.path(), &hashes.concat())?;
        }
        let jsonl_path = self.dir.join(JSONL_FILE);
        self.jsonl.flush().map_err(io_err(&jsonl_path))?;
        write_file(&self.dir, CHECKPOINT_FILE, checkpoint_note.as_bytes())
    }
}
