//! `portcullis report soc2` and `POST /v1/reports`: writes a SOC 2 evidence
//! bundle (`schemas/FORMAT.md` section 12) from the ledger.
//!
//! The figures, CSV, JSON and HTML come from the pure
//! `portcullis_projections::report`, which the auditor's verifier runs too.
//! This module does the I/O: it finds the period's entries (binary search on
//! the timestamps, which never decrease), reads them with one boundary entry
//! on each side, picks the checkpoint, builds the range and anchor proofs from
//! the stored Merkle nodes, and writes and signs the files.
//!
//! # Guarantees
//! - Deterministic: the bundle depends only on the ledger's entries up to the
//!   checkpoint it uses, the arguments and the log key; no clock is read.
//!   For a closed period (an entry after it exists) the checkpoint is the one
//!   of the tree ending at the boundary entry after the period, so a ledger
//!   that grew since (the `report.generated` event among others) gives the
//!   same bytes.
//! - Nothing is written when an argument is refused, and the bundle appears
//!   under its final name only when complete (written beside it, then renamed).

use crate::store::{NodeReader, Store, StoreError};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use portcullis_format::checkpoint::{Checkpoint, SignedCheckpoint};
use portcullis_format::event::{Actor, Event, EventDraft, EventId, ParsedEntry};
use portcullis_format::json::Json;
use portcullis_format::merkle::{consistency_proof, range_hash};
use portcullis_format::note::{self, SignerKey};
use portcullis_format::time::Timestamp;
use portcullis_projections::report::bundle::{
    self, CHECKPOINT_FILE, ENTRIES_FILE, HTML_FILE, JSON_FILE, MANIFEST_FILE, Manifest, PROOF_FILE, RangeProof,
};
use portcullis_projections::report::{KIND_REPORT_GENERATED, LedgerFacts, RowSink, Settings, compute, csv, html, json};
use std::path::{Path, PathBuf};

/// The revocation SLA when the reconciler's `revoke_sla_ms` is not configured.
pub const DEFAULT_REVOKE_SLA_MS: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the period is empty: --from {from} is not before --to {to}")]
    EmptyPeriod { from: Timestamp, to: Timestamp },
    #[error("the ledger is empty")]
    EmptyLedger,
    #[error("--anchor: {0}")]
    Anchor(String),
    #[error("the output {0} exists and is not an empty directory")]
    OutputExists(PathBuf),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the log key {0} is not the key in force; sign with the current log key")]
    NotKeyInForce(String),
    #[error("the ledger store is inconsistent: {0}")]
    Corrupt(String),
}

/// What a report is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportArgs {
    pub from: Timestamp,
    pub to: Timestamp,
    pub revoke_sla_ms: u64,
    /// A checkpoint note the auditor pinned earlier: the bundle carries a consistency proof from it.
    pub anchor: Option<String>,
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    pub dir: PathBuf,
    pub manifest_sha256: String,
    pub first_seq: u64,
    pub end_seq: u64,
    pub checkpoint_size: u64,
    pub period_closed: bool,
    pub exceptions: usize,
}

fn event_at(store: &dyn Store, seq: u64) -> Result<Event, ReportError> {
    let entry = store.entries(seq, 1)?.pop().ok_or_else(|| ReportError::Corrupt(format!("entry {seq} is missing")))?;
    ParsedEntry::parse(&entry).map(|p| p.event).map_err(|e| ReportError::Corrupt(format!("entry {seq}: {e}")))
}

/// The first seq in `0..size` whose timestamp is at or after `at` (`size` if none).
fn first_at_or_after(store: &dyn Store, size: u64, at: Timestamp) -> Result<u64, ReportError> {
    let (mut low, mut high) = (0u64, size);
    while low < high {
        let middle = low + (high - low) / 2;
        if event_at(store, middle)?.ts < at {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

fn write(dir: &Path, relative: &str, bytes: &[u8]) -> Result<(), ReportError> {
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ReportError::Write { path: parent.to_path_buf(), source })?;
    }
    std::fs::write(&path, bytes).map_err(|source| ReportError::Write { path, source })
}

/// The checkpoint of size `size`: the stored note (with any cosignatures), or
/// one signed now with the log key, which must be the key in force at `size`.
fn checkpoint_of(store: &dyn Store, signer: &SignerKey, size: u64) -> Result<Option<String>, ReportError> {
    let current = signer.verifier().to_string();
    let in_force = store.keys()?.into_iter().rev().find(|k| k.from_seq <= size).map(|k| k.vkey);
    if in_force.as_deref() != Some(current.as_str()) {
        return Ok(None);
    }
    if let Some(note) = store.checkpoint_at(size)? {
        return Ok(Some(note));
    }
    let root = range_hash(&NodeReader(store), 0, size)?;
    let note = Checkpoint { origin: signer.name().to_string(), size, root }.sign(signer);
    // A checkpoint of an earlier size of the durable tree is consistent with every later one.
    store.put_checkpoint(size, &note)?;
    Ok(Some(note))
}

/// Writes the bundle for `args` into `out` (absent or an empty directory).
///
/// # Errors
/// [`ReportError`]; nothing is left at `out` on failure.
pub fn generate(
    store: &dyn Store,
    signer: &SignerKey,
    args: &ReportArgs,
    out: &Path,
) -> Result<Generated, ReportError> {
    if args.from >= args.to {
        return Err(ReportError::EmptyPeriod { from: args.from, to: args.to });
    }
    if out.exists() && std::fs::read_dir(out).map_or(true, |mut d| d.next().is_some()) {
        return Err(ReportError::OutputExists(out.to_path_buf()));
    }
    let size = store.size()?;
    if size == 0 {
        return Err(ReportError::EmptyLedger);
    }
    let origin = signer.name().to_string();
    let reader = NodeReader(store);
    let anchor = match &args.anchor {
        Some(text) => {
            let anchor = SignedCheckpoint::parse(text.as_bytes()).map_err(|e| ReportError::Anchor(e.to_string()))?;
            let m = anchor.checkpoint.size;
            if anchor.checkpoint.origin != origin {
                return Err(ReportError::Anchor(format!("it is a checkpoint of {:?}", anchor.checkpoint.origin)));
            }
            if m == 0 || m > size {
                return Err(ReportError::Anchor(format!("its size {m} is not within this ledger's 1..={size}")));
            }
            if range_hash(&reader, 0, m)? != anchor.checkpoint.root {
                return Err(ReportError::Anchor(format!(
                    "its root differs from this ledger's tree of size {m}: it is not a checkpoint of this ledger's history"
                )));
            }
            Some(m)
        }
        None => None,
    };

    // The period's entries and one boundary entry on each side.
    let period_first = first_at_or_after(store, size, args.from)?;
    let period_end = first_at_or_after(store, size, args.to)?;
    let first_seq = period_first.saturating_sub(1);
    let end_seq = if period_end < size { period_end + 1 } else { size };
    let target = end_seq.max(anchor.unwrap_or(0));
    let (checkpoint_size, checkpoint_note) = match checkpoint_of(store, signer, target)? {
        Some(note) => (target, note),
        None => match checkpoint_of(store, signer, size)? {
            Some(note) => (size, note),
            None => return Err(ReportError::NotKeyInForce(signer.verifier().to_string())),
        },
    };
    let checkpoint = SignedCheckpoint::parse(checkpoint_note.as_bytes())
        .map_err(|e| ReportError::Corrupt(format!("stored checkpoint of size {checkpoint_size}: {e}")))?;

    // Written beside the target, then renamed into place (onto an empty directory too).
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "report".into());
    let staging = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let result = write_bundle(
        store,
        signer,
        args,
        &staging,
        out,
        Period {
            origin,
            first_seq,
            end_seq,
            period_first,
            period_end,
            checkpoint_size,
            checkpoint,
            checkpoint_note,
            anchor,
        },
    );
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// What `generate` settled before reading the period's entries.
struct Period {
    origin: String,
    first_seq: u64,
    end_seq: u64,
    period_first: u64,
    period_end: u64,
    checkpoint_size: u64,
    checkpoint: SignedCheckpoint,
    checkpoint_note: String,
    anchor: Option<u64>,
}

/// A bundle file written through a buffer and hashed as it is written.
struct HashedFile {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    hash: sha2::Sha256,
}

impl HashedFile {
    fn create(dir: &Path, relative: &str) -> Result<HashedFile, ReportError> {
        use sha2::Digest as _;
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|source| ReportError::Write { path: parent.to_path_buf(), source })?;
        }
        let file = std::fs::File::create(&path).map_err(|source| ReportError::Write { path: path.clone(), source })?;
        Ok(HashedFile { path, file: std::io::BufWriter::with_capacity(1 << 16, file), hash: sha2::Sha256::new() })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ReportError> {
        use sha2::Digest as _;
        use std::io::Write as _;
        self.hash.update(bytes);
        self.file.write_all(bytes).map_err(|source| ReportError::Write { path: self.path.clone(), source })
    }

    /// Flushes and syncs the file; returns its SHA-256 (hex).
    fn finish(self) -> Result<String, ReportError> {
        use sha2::Digest as _;
        let HashedFile { path, file, hash } = self;
        file.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(|source| ReportError::Write { path, source })?;
        Ok(bundle::hex(&hash.finalize()))
    }
}

/// The population CSV files, written row by row as the fold makes them.
struct CsvFiles {
    files: Vec<HashedFile>,
    /// The first write that failed; later rows are dropped and the bundle is abandoned.
    error: Option<ReportError>,
}

impl RowSink for CsvFiles {
    fn row(&mut self, population: usize, _seq: u64, record: &str) {
        if self.error.is_some() {
            return;
        }
        let file = &mut self.files[population];
        if let Err(e) = file.write(record.as_bytes()).and_then(|()| file.write(b"\r\n")) {
            self.error = Some(e);
        }
    }
}

/// Streams the period's entries from the store into the entries file and
/// through the report's fold, which writes the population CSVs as it goes
/// (neither the entries nor their events are ever all in memory), writes the
/// other files, signs the manifest and renames `staging` to `out`.
fn write_bundle(
    store: &dyn Store,
    signer: &SignerKey,
    args: &ReportArgs,
    staging: &Path,
    out: &Path,
    period: Period,
) -> Result<Generated, ReportError> {
    let Period {
        origin,
        first_seq,
        end_seq,
        period_first,
        period_end,
        checkpoint_size,
        checkpoint,
        checkpoint_note,
        anchor,
    } = period;
    let reader = NodeReader(store);
    std::fs::create_dir_all(staging).map_err(|source| ReportError::Write { path: staging.to_path_buf(), source })?;
    let settings = Settings { from: args.from, to: args.to, revoke_sla_ms: args.revoke_sla_ms };
    let mut fold = compute::Fold::new(&settings);
    let mut csvs = CsvFiles { files: Vec::with_capacity(compute::POPULATIONS.len()), error: None };
    for (name, _, _, columns) in compute::POPULATIONS {
        let mut file = HashedFile::create(staging, &bundle::population_file(name))?;
        file.write(csv::header(columns).as_bytes())?;
        csvs.files.push(file);
    }
    let mut entries_file = HashedFile::create(staging, ENTRIES_FILE)?;
    let mut next = first_seq;
    while next < end_seq {
        let chunk = store.entries(next, (end_seq - next).min(4096))?;
        if chunk.is_empty() {
            return Err(ReportError::Corrupt(format!("entry {next} is missing")));
        }
        entries_file.write(&bundle::encode_entries(chunk.iter().map(Vec::as_slice)))?;
        for entry in &chunk {
            let parsed = ParsedEntry::parse(entry).map_err(|e| ReportError::Corrupt(format!("entry {next}: {e}")))?;
            fold.push(&parsed.event, &mut csvs);
            next += 1;
        }
        if let Some(e) = csvs.error.take() {
            return Err(e);
        }
    }
    let mut hashes: Vec<(String, String)> = vec![(entries_file.finish()?, ENTRIES_FILE.into())];

    let left = bundle::frontier_nodes(first_seq)
        .into_iter()
        .map(|(level, index)| store.node(level, index))
        .collect::<Result<Vec<_>, _>>()?;
    let prove = |old: u64| -> Result<Vec<[u8; 32]>, ReportError> {
        if old == checkpoint_size {
            return Ok(Vec::new());
        }
        consistency_proof(&reader, old, checkpoint_size).map_err(|e| ReportError::Corrupt(e.to_string()))
    };
    let proof = RangeProof {
        start: first_seq,
        end: end_seq,
        size: checkpoint_size,
        left,
        right: prove(end_seq)?,
        anchor: anchor.map(|m| prove(m).map(|p| (m, p))).transpose()?,
    };

    let facts = LedgerFacts {
        origin: origin.clone(),
        first_seq,
        end_seq,
        period_first_seq: period_first.max(first_seq),
        period_end_seq: period_end.min(end_seq),
        checkpoint_size,
        checkpoint_root: B64.encode(checkpoint.checkpoint.root),
        anchor_size: anchor,
    };
    let report = fold.finish(facts, &mut csvs);
    if let Some(e) = csvs.error.take() {
        return Err(e);
    }
    for (file, (name, ..)) in csvs.files.into_iter().zip(compute::POPULATIONS) {
        hashes.push((file.finish()?, bundle::population_file(name)));
    }

    let files: Vec<(String, Vec<u8>)> = vec![
        (CHECKPOINT_FILE.into(), checkpoint_note.into_bytes()),
        (PROOF_FILE.into(), proof.encode().into_bytes()),
        (JSON_FILE.into(), json::render(&report).into_bytes()),
        (HTML_FILE.into(), html::render(&report).into_bytes()),
    ];
    hashes.extend(files.iter().map(|(path, bytes)| (bundle::sha256_hex(bytes), path.clone())));
    hashes.sort_by(|a, b| a.1.cmp(&b.1));
    let manifest = Manifest {
        origin: origin.clone(),
        report: "soc2".into(),
        from: args.from.to_string(),
        to: args.to.to_string(),
        revoke_sla_ms: args.revoke_sla_ms,
        first_seq,
        end_seq,
        checkpoint_size,
        anchor_size: anchor,
        files: hashes,
        populations: report.populations.iter().map(|p| (p.name.to_string(), p.definition.to_string())).collect(),
    };
    let text = manifest.text();
    let manifest_note = note::assemble(&text, &[signer.sign(text.as_bytes())]);
    files.iter().try_for_each(|(path, bytes)| write(staging, path, bytes))?;
    write(staging, MANIFEST_FILE, manifest_note.as_bytes())?;
    std::fs::rename(staging, out).map_err(|source| ReportError::Write { path: out.to_path_buf(), source })?;
    Ok(Generated {
        dir: out.to_path_buf(),
        manifest_sha256: bundle::sha256_hex(manifest_note.as_bytes()),
        first_seq,
        end_seq,
        checkpoint_size,
        period_closed: report.ledger.period_closed(),
        exceptions: report.controls.iter().map(|c| c.exceptions.len()).sum(),
    })
}

/// The `report.generated` event recording a bundle's generation (appended
/// after the bundle is written; it is never part of it).
pub fn generated_event(
    generated: &Generated,
    args: &ReportArgs,
    output: &str,
    id: EventId,
    actor: &Actor,
) -> EventDraft {
    let anchor_size = args
        .anchor
        .as_deref()
        .and_then(|a| SignedCheckpoint::parse(a.as_bytes()).ok())
        .map_or(Json::Null, |a| Json::Int(a.checkpoint.size as i64));
    let data = Json::Obj(vec![
        ("anchor_size".into(), anchor_size),
        ("checkpoint_size".into(), Json::Int(generated.checkpoint_size as i64)),
        ("entries_end_seq".into(), Json::Int(generated.end_seq as i64)),
        ("entries_first_seq".into(), Json::Int(generated.first_seq as i64)),
        ("exceptions".into(), Json::Int(generated.exceptions as i64)),
        ("from".into(), Json::Str(args.from.to_string())),
        ("manifest_sha256".into(), Json::Str(generated.manifest_sha256.clone())),
        ("output".into(), Json::Str(output.to_string())),
        ("report".into(), Json::Str("soc2".into())),
        ("revoke_sla_ms".into(), Json::Int(args.revoke_sla_ms as i64)),
        ("to".into(), Json::Str(args.to.to_string())),
    ]);
    EventDraft { id, kind: KIND_REPORT_GENERATED.into(), v: 1, actor: actor.clone(), data }
}

/// The SLA a report uses: the reconciler's `revoke_sla_ms`, else [`DEFAULT_REVOKE_SLA_MS`].
pub fn revoke_sla_ms(config: &crate::config::ServeConfig) -> u64 {
    config.reconciler.as_ref().map_or(DEFAULT_REVOKE_SLA_MS, |r| r.revoke_sla_ms)
}

/// What the HTTP API needs to write reports: set by `serve`.
#[derive(Clone, Debug)]
pub struct ReportSettings {
    /// Bundles are written under this directory (`DATA_DIR/reports`).
    pub dir: PathBuf,
    pub key_path: PathBuf,
    pub revoke_sla_ms: u64,
}

impl ReportSettings {
    pub fn new(config: &crate::config::ServeConfig) -> ReportSettings {
        ReportSettings {
            dir: config.data_dir.join("reports"),
            key_path: config.key_path(),
            revoke_sla_ms: revoke_sla_ms(config),
        }
    }
}
