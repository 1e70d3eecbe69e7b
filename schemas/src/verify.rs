//! The export verifier: checks every byte of an export against pinned keys.
//!
//! The checks, in the order `schemas/FORMAT.md` section 9 gives them:
//! 1. the directory holds exactly the files the checkpoint's size calls for;
//! 2. every entry parses (note syntax, header, canonical JSON, field rules);
//! 3. entry `i` has `seq == i`, `log == origin`, `prev` = leaf hash of `i-1`,
//!    a timestamp no earlier than its predecessor's, and an id never seen before;
//! 4. every entry is signed by the key in force (following `key.rotated`
//!    entries, which the new key must co-sign), within any pinned range;
//! 5. every tile equals the hashes recomputed from the entries, and the root
//!    equals the checkpoint's;
//! 6. the checkpoint is signed by the key in force at its size;
//! 7. a pinned anchor checkpoint is signed, no larger than the export, and its
//!    root equals the recomputed root at its size (else: truncation or fork);
//! 8. `entries.jsonl` is exactly the JSON Lines form of the entries.
//!
//! Parsing and signature verification (the costly part) run on worker threads
//! in bundles of 256 entries with batch verification; a failed batch falls
//! back to single strict verification to name the bad entry. Everything that
//! depends on order runs on the calling thread. Memory stays bounded: a
//! window of bundles in flight, plus 16 bytes per entry for the id set.

use crate::checkpoint::{Checkpoint, SignedCheckpoint};
use crate::event::{EntryError, EventId, MAX_ENTRY_SIZE, ParsedEntry};
use crate::export::{CHECKPOINT_FILE, JSONL_FILE, TileBuilder, write_jsonl_line};
use crate::keys::KeySet;
use crate::merkle::{Hash, leaf_hash};
use crate::note::VerifierKey;
use crate::tiles::{TILE_WIDTH, Tile, decode_bundle};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, mpsc};

/// Which check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Layout,
    Checkpoint,
    CheckpointSignature,
    EntryMissing,
    EntrySyntax,
    Origin,
    Sequence,
    PrevHash,
    Signature,
    KeyNotInForce,
    Timestamp,
    DuplicateId,
    Tile,
    Root,
    Anchor,
    Truncation,
    Fork,
    Jsonl,
    /// The checkpoint lacks the witness cosignatures the trust policy requires.
    WitnessQuorum,
}

impl Check {
    /// A stable machine-readable name.
    pub fn code(self) -> &'static str {
        match self {
            Check::Layout => "layout",
            Check::Checkpoint => "checkpoint",
            Check::CheckpointSignature => "checkpoint-signature",
            Check::EntryMissing => "entry-missing",
            Check::EntrySyntax => "entry-syntax",
            Check::Origin => "origin",
            Check::Sequence => "sequence",
            Check::PrevHash => "prev-hash",
            Check::Signature => "signature",
            Check::KeyNotInForce => "key-not-in-force",
            Check::Timestamp => "timestamp",
            Check::DuplicateId => "duplicate-id",
            Check::Tile => "tile",
            Check::Root => "root",
            Check::Anchor => "anchor",
            Check::Truncation => "truncation",
            Check::Fork => "fork",
            Check::Jsonl => "jsonl",
            Check::WitnessQuorum => "witness-quorum",
        }
    }
}

/// The first failure found: which check, at which entry or file, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{}", .seq.map(|s| format!("entry {s}: ")).unwrap_or_default(), .path.as_ref().map(|p| format!("{p}: ")).unwrap_or_default(), .reason)]
pub struct Failure {
    pub check: Check,
    pub seq: Option<u64>,
    pub path: Option<String>,
    pub reason: String,
}

fn fail<T>(check: Check, seq: Option<u64>, path: Option<&str>, reason: impl Into<String>) -> Result<T, Failure> {
    Err(Failure { check, seq, path: path.map(str::to_string), reason: reason.into() })
}

/// What a successful verification established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub checkpoint: Checkpoint,
    /// The first entry present in the export (0 unless a range export).
    pub first_entry: u64,
    pub entries_verified: u64,
    /// Each key in force and the first sequence number it signed.
    pub keys: Vec<(String, u64)>,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    /// The size of the anchor checkpoint the export was checked against.
    pub anchor_size: Option<u64>,
}

/// Options of [`verify_export`].
pub struct Options<'a> {
    pub keys: KeySet,
    /// A checkpoint note pinned earlier (its bytes).
    pub anchor: Option<Vec<u8>>,
    /// Accept an export whose leading entry bundles are absent (a range export).
    pub allow_partial: bool,
    /// Worker threads for parsing and signature verification (at least 1).
    pub threads: usize,
    /// Called with (entries checked, total) as the walk advances.
    pub progress: Option<&'a (dyn Fn(u64, u64) + Sync)>,
}

/// What a worker established about one entry, in a compact form: the main
/// thread receives plain data, so almost nothing allocated by a worker is
/// freed on the main thread (which would contend on the allocator's locks).
struct Facts {
    /// Why the entry does not parse; the other fields are meaningless then.
    syntax: Option<String>,
    seq: u64,
    /// `Some(log)` when the entry's log is not the export's origin.
    foreign_log: Option<String>,
    prev: Hash,
    ts: crate::time::Timestamp,
    id: EventId,
    leaf: Hash,
    signatures: [Option<SignatureFact>; 2],
    new_key: Option<VerifierKey>,
    /// The entry, kept only when a signature could not be checked by the worker.
    deferred: Option<Box<(Vec<u8>, ParsedEntry)>>,
    /// Length of this entry's expected line in the bundle's `entries.jsonl` text.
    jsonl_len: usize,
}

#[derive(Clone)]
struct SignatureFact {
    /// `None` when the name is the origin (the usual case).
    other_name: Option<String>,
    key_id: u32,
    /// The public key the worker checked it with, and the verdict.
    checked: Option<([u8; 32], bool)>,
}

struct WorkedBundle {
    facts: Vec<Facts>,
    /// The expected `entries.jsonl` lines of the bundle, each with its LF.
    jsonl: Vec<u8>,
}

enum BundleResult {
    Entries(WorkedBundle),
    Unreadable(String),
}

fn read_bundle(dir: &Path, tile: Tile, origin: &str, candidates: &RwLock<Vec<VerifierKey>>) -> BundleResult {
    let path = dir.join(tile.entries_path());
    let bytes = match read_limited(&path, tile.width * (MAX_ENTRY_SIZE as u64 + 2)) {
        Ok(bytes) => bytes,
        Err(e) => return BundleResult::Unreadable(e),
    };
    let entries = match decode_bundle(&bytes) {
        Ok(entries) => entries,
        Err(e) => return BundleResult::Unreadable(e.to_string()),
    };
    let parsed: Vec<Result<ParsedEntry, EntryError>> = entries.iter().map(|entry| ParsedEntry::parse(entry)).collect();
    for new_key in parsed.iter().filter_map(|p| p.as_ref().ok()?.new_key.as_ref()) {
        let mut keys = candidates.write().unwrap_or_else(|e| e.into_inner());
        if !keys.contains(new_key) {
            keys.push(new_key.clone());
        }
    }
    let verdicts = batch_verify(&entries, &parsed, &candidates.read().unwrap_or_else(|e| e.into_inner()));
    let mut jsonl = Vec::with_capacity(bytes.len() + entries.len() * 200);
    let facts = entries
        .iter()
        .zip(parsed)
        .zip(verdicts)
        .enumerate()
        .map(|(i, ((entry, parsed), verdicts))| {
            let leaf = leaf_hash(entry);
            let parsed = match parsed {
                Ok(parsed) => parsed,
                Err(e) => {
                    return Facts {
                        syntax: Some(e.to_string()),
                        seq: tile.index * TILE_WIDTH + i as u64,
                        foreign_log: None,
                        prev: [0u8; 32],
                        ts: crate::time::Timestamp::EPOCH,
                        id: EventId([0u8; 16]),
                        leaf,
                        signatures: [None, None],
                        new_key: None,
                        deferred: None,
                        jsonl_len: 0,
                    };
                }
            };
            let before = jsonl.len();
            write_jsonl_line(&parsed, entry, &leaf, &mut jsonl);
            let mut signatures = [None, None];
            for (slot, (signature, checked)) in signatures.iter_mut().zip(parsed.signatures.iter().zip(verdicts)) {
                *slot = Some(SignatureFact {
                    other_name: (signature.name != origin).then(|| signature.name.clone()),
                    key_id: signature.key_id,
                    checked,
                });
            }
            let unchecked = signatures.iter().flatten().any(|s| s.checked.is_none());
            let event = &parsed.event;
            Facts {
                syntax: None,
                seq: event.seq,
                foreign_log: (event.log != origin).then(|| event.log.clone()),
                prev: event.prev,
                ts: event.ts,
                id: event.draft.id,
                leaf,
                signatures,
                new_key: parsed.new_key.clone(),
                jsonl_len: jsonl.len() - before,
                deferred: unchecked.then(|| Box::new((entry.to_vec(), parsed))),
            }
        })
        .collect();
    BundleResult::Entries(WorkedBundle { facts, jsonl })
}

/// The public key a signature was checked with, and the verdict; `None` when the key was not known.
type Verdict = Option<([u8; 32], bool)>;

/// Verifies every signature whose key is known, in one batch; on a batch
/// failure, verifies each strictly to find the bad ones. Returns, per entry and
/// signature line, the key used and the verdict (`None`: key not known yet).
fn batch_verify(
    entries: &[&[u8]],
    parsed: &[Result<ParsedEntry, EntryError>],
    keys: &[VerifierKey],
) -> Vec<[Verdict; 2]> {
    let mut messages: Vec<&[u8]> = Vec::new();
    let mut signatures = Vec::new();
    let mut verifying = Vec::new();
    let mut slots = Vec::new();
    for (i, (entry, parsed)) in entries.iter().zip(parsed).enumerate() {
        let Ok(parsed) = parsed else { continue };
        for (j, signature) in parsed.signatures.iter().enumerate().take(2) {
            let Some(key) = keys.iter().find(|k| k.matches(signature)) else { continue };
            let Some(sig) = signature.ed25519() else { continue };
            messages.push(&entry[..parsed.text_len]);
            signatures.push(sig);
            verifying.push(*key.verifying_key());
            slots.push((i, j, key));
        }
    }
    let batch_ok = !signatures.is_empty() && ed25519_dalek::verify_batch(&messages, &signatures, &verifying).is_ok();
    let mut verdicts = vec![[None, None]; entries.len()];
    for (i, j, key) in slots {
        let ok = batch_ok || parsed[i].as_ref().is_ok_and(|p| key.verify(&entries[i][..p.text_len], &p.signatures[j]));
        verdicts[i][j] = Some((key.verifying_key().to_bytes(), ok));
    }
    verdicts
}

/// The in-order state of the walk.
struct Walk<'k> {
    keys: &'k KeySet,
    origin: String,
    tiles: TileBuilder,
    tile_error: Option<Failure>,
    prev: Hash,
    last_ts: Option<crate::time::Timestamp>,
    first_ts: Option<String>,
    ids: HashSet<[u8; 16]>,
    key_history: Vec<(VerifierKey, u64)>,
    anchor_size: Option<u64>,
    root_at_anchor: Option<Hash>,
    jsonl: Option<BufReader<fs::File>>,
    jsonl_line: Vec<u8>,
    dir: PathBuf,
    verified: u64,
}

impl Walk<'_> {
    /// The keys that were in force before `key` in this verification.
    fn permits(&self, key: &VerifierKey, seq: u64) -> bool {
        let position = self.key_history.iter().position(|(k, _)| k == key).unwrap_or(self.key_history.len());
        let earlier = &self.key_history[..position];
        self.keys.permits(key, seq, |pinned| earlier.iter().any(|(k, _)| k == pinned))
    }

    fn push_leaf(&mut self, leaf: Hash) {
        let dir = &self.dir;
        let tile_error = &mut self.tile_error;
        self.tiles.push(leaf, |tile, hashes| {
            if tile_error.is_none() {
                *tile_error = compare_tile(dir, tile, hashes).err();
            }
        });
        self.prev = leaf;
        if Some(self.tiles.size()) == self.anchor_size {
            self.root_at_anchor = Some(self.tiles.root());
        }
    }

    fn check_entry(&mut self, seq: u64, facts: Facts, expected_jsonl: &[u8]) -> Result<(), Failure> {
        if let Some(reason) = facts.syntax {
            return fail(Check::EntrySyntax, Some(seq), None, reason);
        }
        if facts.seq != seq {
            return fail(
                Check::Sequence,
                Some(seq),
                None,
                format!("entry says seq {}, but it is at position {seq}", facts.seq),
            );
        }
        if let Some(log) = &facts.foreign_log {
            return fail(
                Check::Origin,
                Some(seq),
                None,
                format!("entry belongs to log {log:?}, not {:?}", self.origin),
            );
        }
        if facts.prev != self.prev {
            return fail(Check::PrevHash, Some(seq), None, "prev is not the leaf hash of the previous entry");
        }
        if self.last_ts.is_some_and(|last| facts.ts < last) {
            return fail(
                Check::Timestamp,
                Some(seq),
                None,
                format!("timestamp {} is earlier than the previous entry's", facts.ts),
            );
        }
        if !self.ids.insert(facts.id.0) {
            return fail(
                Check::DuplicateId,
                Some(seq),
                None,
                format!("event id {} was used by an earlier entry", facts.id),
            );
        }
        let [first, second] = &facts.signatures;
        let first = first.as_ref().ok_or_else(|| Failure {
            check: Check::EntrySyntax,
            seq: Some(seq),
            path: None,
            reason: "no signature line".into(),
        })?;
        if self.key_history.is_empty() {
            // The first present entry: its key must be pinned for this seq.
            let Some(key) = self
                .keys
                .candidates(seq)
                .find(|k| first.other_name.is_none() && k.name() == self.origin && k.key_id() == first.key_id)
                .cloned()
            else {
                return fail(
                    Check::KeyNotInForce,
                    Some(seq),
                    None,
                    "not signed by a key pinned for this sequence number",
                );
            };
            self.key_history.push((key, seq));
        }
        // The key in force is the last one the history names.
        let Some((current, _)) = self.key_history.last() else {
            return fail(Check::KeyNotInForce, Some(seq), None, "no key in force");
        };
        check_signature(current, first, 0, facts.deferred.as_deref(), seq)?;
        if !self.permits(current, seq) {
            return fail(
                Check::KeyNotInForce,
                Some(seq),
                None,
                format!("key {current} is pinned for other sequence numbers"),
            );
        }
        if let Some(new_key) = facts.new_key {
            let second = second.as_ref().ok_or_else(|| Failure {
                check: Check::Signature,
                seq: Some(seq),
                path: None,
                reason: "a key rotation must be signed by the new key too".into(),
            })?;
            check_signature(&new_key, second, 1, facts.deferred.as_deref(), seq)?;
            self.key_history.push((new_key, seq + 1));
        }
        if let Some(jsonl) = &mut self.jsonl {
            // Byte-exact: the canonical line and a single LF.
            self.jsonl_line.clear();
            // A line longer than the expected one cannot match: read no more than that.
            match jsonl.by_ref().take(expected_jsonl.len() as u64 + 1).read_until(b'\n', &mut self.jsonl_line) {
                Ok(0) => return fail(Check::Jsonl, Some(seq), Some(JSONL_FILE), "line missing"),
                Ok(_) if self.jsonl_line == expected_jsonl => {}
                Ok(_) => return fail(Check::Jsonl, Some(seq), Some(JSONL_FILE), "line does not match the entry"),
                Err(e) => return fail(Check::Jsonl, Some(seq), Some(JSONL_FILE), format!("cannot read: {e}")),
            }
        }
        if self.first_ts.is_none() {
            self.first_ts = Some(facts.ts.to_string());
        }
        self.last_ts = Some(facts.ts);
        self.verified += 1;
        self.push_leaf(facts.leaf);
        Ok(())
    }
}

fn check_signature(
    key: &VerifierKey,
    signature: &SignatureFact,
    line: usize,
    deferred: Option<&(Vec<u8>, ParsedEntry)>,
    seq: u64,
) -> Result<(), Failure> {
    let name = signature.other_name.as_deref().unwrap_or(key.name());
    if name != key.name() || signature.key_id != key.key_id() {
        let what = if line == 0 { "the key in force" } else { "the new key" };
        return fail(
            Check::Signature,
            Some(seq),
            None,
            format!("signature line {} is by {name}+{:08x}, not by {what} {key}", line + 1, signature.key_id),
        );
    }
    // A worker's verdict counts only if it was reached with this very key
    // (a name and 32-bit key ID can collide).
    let ok = match (signature.checked, deferred) {
        (Some((checked_with, ok)), _) if checked_with == key.verifying_key().to_bytes() => ok,
        (_, Some((entry, parsed))) => key.verify(&entry[..parsed.text_len], &parsed.signatures[line]),
        _ => false,
    };
    if !ok {
        return fail(Check::Signature, Some(seq), None, format!("signature by {key} does not verify"));
    }
    Ok(())
}

/// Reads a file that may hold at most `limit` bytes, without reading more.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let file = fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("file is larger than the {limit} bytes its layout allows"));
    }
    Ok(bytes)
}

fn compare_tile(dir: &Path, tile: Tile, hashes: &[Hash]) -> Result<(), Failure> {
    let path = tile.path();
    match read_limited(&dir.join(&path), TILE_WIDTH * 32) {
        Ok(bytes) if bytes == hashes.concat() => Ok(()),
        Ok(_) => fail(Check::Tile, None, Some(&path), "tile does not match the hashes recomputed from the entries"),
        Err(e) => fail(Check::Layout, None, Some(&path), e),
    }
}

/// Lists every regular file under `dir` as a relative path with `/` separators.
/// Symbolic links are never followed into directories (a link loop would make
/// the walk endless), and anything that is not a regular file or a link to one
/// (a FIFO would block its read forever) is a layout error, the first in path order.
fn list_files(dir: &Path) -> Result<Vec<String>, Failure> {
    let layout = |path: String, reason: String| Failure { check: Check::Layout, seq: None, path: Some(path), reason };
    let mut files = Vec::new();
    let mut irregular = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let listing_failed = |e: std::io::Error| layout(current.display().to_string(), format!("cannot list: {e}"));
        for entry in fs::read_dir(&current).map_err(listing_failed)? {
            let entry = entry.map_err(listing_failed)?;
            let path = entry.path();
            if entry.file_type().map_err(listing_failed)?.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(dir).unwrap_or(&path);
            let name = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                files.push(name);
            } else {
                irregular.push(name);
            }
        }
    }
    irregular.sort();
    if let Some(name) = irregular.into_iter().next() {
        return Err(layout(
            name,
            "not a regular file (a link to a directory or to nothing, a FIFO or a device)".into(),
        ));
    }
    files.sort();
    Ok(files)
}

/// Verifies the export in `dir`.
///
/// # Errors
/// The first [`Failure`] found.
pub fn verify_export(dir: &Path, options: &Options<'_>) -> Result<Summary, Failure> {
    let checkpoint_bytes = fs::read(dir.join(CHECKPOINT_FILE))
        .or_else(|e| fail(Check::Layout, None, Some(CHECKPOINT_FILE), format!("cannot read: {e}")))?;
    let signed = SignedCheckpoint::parse(&checkpoint_bytes)
        .or_else(|e| fail(Check::Checkpoint, None, Some(CHECKPOINT_FILE), e.to_string()))?;
    let checkpoint = signed.checkpoint.clone();
    let size = checkpoint.size;

    let anchor = match &options.anchor {
        Some(bytes) => {
            let anchor =
                SignedCheckpoint::parse(bytes).or_else(|e| fail(Check::Anchor, None, Some("anchor"), e.to_string()))?;
            if anchor.checkpoint.origin != checkpoint.origin {
                return fail(
                    Check::Anchor,
                    None,
                    Some("anchor"),
                    format!("anchor is for log {:?}, not {:?}", anchor.checkpoint.origin, checkpoint.origin),
                );
            }
            if anchor.checkpoint.size > size {
                // The anchor's signature is checked below only when its size is covered.
                let key_ok = options.keys.candidates(anchor.checkpoint.size).any(|k| anchor.verify(k).is_ok());
                if !key_ok {
                    return fail(Check::Anchor, None, Some("anchor"), "anchor is not signed by a pinned key");
                }
                return fail(
                    Check::Truncation,
                    None,
                    Some(CHECKPOINT_FILE),
                    format!(
                        "the export's checkpoint has size {size}, smaller than the pinned checkpoint's {}: the ledger was truncated or rolled back, or the checkpoint is stale",
                        anchor.checkpoint.size
                    ),
                );
            }
            Some(anchor)
        }
        None => None,
    };

    // 1. Layout: exactly the files this size calls for.
    let tiles = Tile::all_for_size(size);
    let bundles: Vec<Tile> = tiles.iter().filter(|t| t.level == 0).copied().collect();
    let present = list_files(dir)?;
    let present_set: HashSet<&str> = present.iter().map(String::as_str).collect();
    let mut expected: HashSet<String> = tiles.iter().map(Tile::path).collect();
    expected.insert(CHECKPOINT_FILE.into());
    expected.insert(JSONL_FILE.into());
    for tile in &tiles {
        if !present_set.contains(tile.path().as_str()) {
            return fail(Check::Layout, None, Some(&tile.path()), "hash tile is missing");
        }
    }
    let first_bundle =
        bundles.iter().position(|b| present_set.contains(b.entries_path().as_str())).unwrap_or(bundles.len());
    if first_bundle > 0 && !options.allow_partial {
        let missing = bundles[0];
        return fail(
            Check::EntryMissing,
            Some(missing.index * TILE_WIDTH),
            Some(&missing.entries_path()),
            "entry bundle is missing (pass --allow-partial to verify a range export)",
        );
    }
    for bundle in &bundles[first_bundle..] {
        let path = bundle.entries_path();
        if !present_set.contains(path.as_str()) {
            return fail(Check::EntryMissing, Some(bundle.index * TILE_WIDTH), Some(&path), "entry bundle is missing");
        }
        expected.insert(path);
    }
    if let Some(extra) = present.iter().find(|p| !expected.contains(p.as_str())) {
        let reason = match Tile::parse_path(extra) {
            Some((tile, _))
                if tile.index.checked_mul(TILE_WIDTH).is_none_or(|start| start >= size) || tile.width < TILE_WIDTH =>
            {
                "file is not part of a tree of the checkpoint's size: entries beyond the checkpoint are not committed"
            }
            _ => "unexpected file in the export",
        };
        return fail(Check::Layout, None, Some(extra), reason);
    }

    let jsonl = match fs::File::open(dir.join(JSONL_FILE)) {
        Ok(file) => Some(BufReader::new(file)),
        Err(e) => return fail(Check::Layout, None, Some(JSONL_FILE), format!("cannot read: {e}")),
    };
    let mut walk = Walk {
        keys: &options.keys,
        origin: checkpoint.origin.clone(),
        tiles: TileBuilder::default(),
        tile_error: None,
        prev: [0u8; 32],
        last_ts: None,
        first_ts: None,
        ids: HashSet::new(),
        key_history: Vec::new(),
        anchor_size: anchor.as_ref().map(|a| a.checkpoint.size),
        root_at_anchor: None,
        jsonl,
        jsonl_line: Vec::new(),
        dir: dir.to_path_buf(),
        verified: 0,
    };
    if walk.anchor_size == Some(0) {
        walk.root_at_anchor = Some(crate::merkle::EMPTY_ROOT);
    }

    // Leaves before a range export's first bundle come from the level-0 tiles.
    for bundle in &bundles[..first_bundle] {
        let path = bundle.path();
        let bytes = fs::read(dir.join(&path))
            .or_else(|e| fail(Check::Layout, None, Some(&path), format!("cannot read tile: {e}")))?;
        if bytes.len() as u64 != bundle.width * 32 {
            return fail(Check::Tile, None, Some(&path), "tile has the wrong length");
        }
        for chunk in bytes.chunks_exact(32) {
            walk.push_leaf(chunk.try_into().unwrap_or([0u8; 32]));
        }
    }

    // 2-4. The entries, parsed and signature-checked in parallel, checked in order.
    let candidates = Arc::new(RwLock::new(options.keys.keys.iter().map(|p| p.key.clone()).collect::<Vec<_>>()));
    let work: Vec<Tile> = bundles[first_bundle..].to_vec();
    let threads = options.threads.max(1);
    let window = threads * 4;
    let mut outcome: Result<(), Failure> = Ok(());
    let origin = checkpoint.origin.as_str();
    std::thread::scope(|scope| {
        let (job_tx, job_rx) = mpsc::channel::<(usize, Tile)>();
        let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
        let (result_tx, result_rx) = mpsc::channel::<(usize, BundleResult)>();
        for _ in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let result_tx = result_tx.clone();
            let candidates = Arc::clone(&candidates);
            scope.spawn(move || {
                loop {
                    let job = job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((n, tile)) = job else { break };
                    if result_tx
                        .send((
                            n,
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                read_bundle(dir, tile, origin, &candidates)
                            }))
                            .unwrap_or_else(|_| BundleResult::Unreadable("the verifier failed on this bundle".into())),
                        ))
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        drop(result_tx);
        let mut submitted = 0usize;
        let mut next = 0usize;
        let mut ready: BTreeMap<usize, BundleResult> = BTreeMap::new();
        while submitted < work.len() && submitted < window {
            let _ = job_tx.send((submitted, work[submitted]));
            submitted += 1;
        }
        while next < work.len() {
            let Ok((n, result)) = result_rx.recv() else { break };
            ready.insert(n, result);
            while let Some(result) = ready.remove(&next) {
                let tile = work[next];
                if let Err(e) = check_bundle(&mut walk, tile, result) {
                    outcome = Err(e);
                    drop(job_tx);
                    return;
                }
                next += 1;
                if submitted < work.len() {
                    let _ = job_tx.send((submitted, work[submitted]));
                    submitted += 1;
                }
                if let Some(progress) = options.progress {
                    progress(walk.tiles.size(), size);
                }
            }
        }
        drop(job_tx);
    });
    outcome?;
    if let Some(e) = walk.tile_error.take() {
        return Err(e);
    }

    // 5. Partial tiles and the root.
    for (tile, hashes) in walk.tiles.partial_tiles() {
        compare_tile(dir, tile, hashes)?;
    }
    if walk.tiles.root() != checkpoint.root {
        return fail(
            Check::Root,
            None,
            Some(CHECKPOINT_FILE),
            "the root recomputed from the entries differs from the checkpoint's",
        );
    }
    if let Some(jsonl) = &mut walk.jsonl {
        let mut rest = [0u8; 1];
        if jsonl.read(&mut rest).map_or(true, |n| n > 0) {
            return fail(Check::Jsonl, None, Some(JSONL_FILE), "more lines than entries");
        }
    }

    // 6. The checkpoint's signature, by the key in force at its size.
    let key_at =
        |n: u64| -> Option<&VerifierKey> { walk.key_history.iter().rev().find(|(_, from)| *from <= n).map(|(k, _)| k) };
    let checkpoint_key_ok = match key_at(size) {
        Some(key) => signed.verify(key).is_ok() && walk.permits(key, size),
        None => options.keys.candidates(size).any(|k| signed.verify(k).is_ok()),
    };
    if !checkpoint_key_ok {
        return fail(
            Check::CheckpointSignature,
            None,
            Some(CHECKPOINT_FILE),
            "not signed by the key in force at its size",
        );
    }

    // 7. The anchor: same tree at its size.
    if let Some(anchor) = &anchor {
        let anchor_size = anchor.checkpoint.size;
        let key_ok = match key_at(anchor_size) {
            Some(key) => anchor.verify(key).is_ok() && walk.permits(key, anchor_size),
            None => options.keys.candidates(anchor_size).any(|k| anchor.verify(k).is_ok()),
        };
        if !key_ok {
            return fail(Check::Anchor, None, Some("anchor"), "anchor is not signed by the key in force at its size");
        }
        if walk.root_at_anchor != Some(anchor.checkpoint.root) {
            return fail(
                Check::Fork,
                Some(anchor_size.saturating_sub(1)),
                Some("anchor"),
                format!(
                    "the log signed two inconsistent checkpoints: the tree of size {anchor_size} in this export has a different root than the pinned checkpoint"
                ),
            );
        }
    }

    Ok(Summary {
        checkpoint,
        first_entry: first_bundle as u64 * TILE_WIDTH,
        entries_verified: walk.verified,
        keys: walk.key_history.iter().map(|(k, from)| (k.to_string(), *from)).collect(),
        first_ts: walk.first_ts.clone(),
        last_ts: walk.last_ts.map(|t| t.to_string()),
        anchor_size: anchor.map(|a| a.checkpoint.size),
    })
}

fn check_bundle(walk: &mut Walk<'_>, tile: Tile, result: BundleResult) -> Result<(), Failure> {
    let start = tile.index * TILE_WIDTH;
    let bundle = match result {
        BundleResult::Entries(bundle) => bundle,
        BundleResult::Unreadable(reason) => {
            return fail(Check::EntrySyntax, Some(start), Some(&tile.entries_path()), reason);
        }
    };
    if bundle.facts.len() as u64 != tile.width {
        let seq = start + (bundle.facts.len() as u64).min(tile.width);
        return fail(
            Check::EntryMissing,
            Some(seq),
            Some(&tile.entries_path()),
            format!("bundle holds {} entries, expected {}", bundle.facts.len(), tile.width),
        );
    }
    let mut offset = 0;
    for (i, facts) in bundle.facts.into_iter().enumerate() {
        let expected = &bundle.jsonl[offset..offset + facts.jsonl_len];
        offset += facts.jsonl_len;
        walk.check_entry(start + i as u64, facts, expected)?;
        if let Some(e) = walk.tile_error.take() {
            return Err(e);
        }
    }
    Ok(())
}
