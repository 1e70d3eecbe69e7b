//! `portcullis-verify report BUNDLE`: verifies a SOC 2 report bundle
//! (`schemas/FORMAT.md` section 12) trusting only the pinned keys.
//!
//! It checks every entry (syntax, sequence, origin, chain, timestamps, ids,
//! signatures by the key in force), the checkpoint and the manifest
//! signatures, that the entries are the whole period with one boundary entry
//! on each side, the range proof to the checkpoint, the anchor's consistency,
//! then recomputes every population CSV, the JSON and the HTML from the
//! entries and compares them byte for byte, and last every file's SHA-256
//! against the signed manifest. The first failing check is reported with its
//! code; the recomputation reports every differing file and row.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use portcullis_format::checkpoint::SignedCheckpoint;
use portcullis_format::event::ParsedEntry;
use portcullis_format::keys::{KeySet, PinnedKey};
use portcullis_format::merkle::{Frontier, Hash, leaf_hash, verify_consistency};
use portcullis_format::note::{self, Note, VerifierKey};
use portcullis_format::time::Timestamp;
use portcullis_projections::report::bundle::{
    self, CHECKPOINT_FILE, ENTRIES_FILE, HTML_FILE, JSON_FILE, MANIFEST_FILE, Manifest, PROOF_FILE, RangeProof,
};
use portcullis_projections::report::{LedgerFacts, Report, RowSink, Settings, compute, csv, html, json};
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

/// The command line of `portcullis-verify report`.
pub struct CliArgs<'a> {
    pub keys: &'a [PinnedKey],
    pub anchor: Option<&'a Path>,
    pub witness_policy: Option<&'a Path>,
    pub json: bool,
}

/// What to verify a bundle with.
pub struct ReportOptions {
    pub keys: KeySet,
    /// A checkpoint note pinned earlier (its bytes).
    pub anchor: Option<Vec<u8>>,
    /// A witness policy (C2SP tlog-policy) the checkpoint's cosignatures must satisfy.
    pub witness_policy: Option<portcullis_format::witness::Policy>,
}

/// One difference between a file of the bundle and its recomputation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub file: String,
    /// 1-based record (CSV, the header is record 1) or line (JSON, HTML) number.
    pub row: usize,
    /// The ledger entry the expected row is tied to (CSV).
    pub seq: Option<u64>,
    pub expected: Option<String>,
    pub found: Option<String>,
}

/// The first failed check (and for the recomputation, every difference).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFailure {
    pub code: &'static str,
    pub file: Option<String>,
    pub seq: Option<u64>,
    pub reason: String,
    pub differences: Vec<Difference>,
}

impl std::fmt::Display for ReportFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if let Some(seq) = self.seq {
            write!(f, "entry {seq}: ")?;
        }
        write!(f, "{}", self.reason)
    }
}

fn fail<T>(
    code: &'static str,
    file: Option<&str>,
    seq: Option<u64>,
    reason: impl Into<String>,
) -> Result<T, ReportFailure> {
    Err(ReportFailure { code, file: file.map(str::to_string), seq, reason: reason.into(), differences: Vec::new() })
}

/// What a verified bundle established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportSummary {
    pub origin: String,
    pub from: String,
    pub to: String,
    pub first_seq: u64,
    pub end_seq: u64,
    pub period_closed: bool,
    pub checkpoint_size: u64,
    pub checkpoint_root: String,
    pub anchor_size: Option<u64>,
    pub files: usize,
    /// `(population, rows)`.
    pub populations: Vec<(String, usize)>,
    /// `(control, exceptions)`.
    pub controls: Vec<(String, usize)>,
    pub manifest_sha256: String,
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, ReportFailure> {
    std::fs::read(dir.join(name)).or_else(|e| fail("layout", Some(name), None, format!("cannot read: {e}")))
}

/// Every regular file under `dir`, relative, with `/` separators, sorted.
fn list_files(dir: &Path) -> Result<Vec<String>, ReportFailure> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = std::fs::read_dir(&current)
            .or_else(|e| fail("layout", Some(&current.display().to_string()), None, format!("cannot list: {e}")))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let relative = path.strip_prefix(dir).unwrap_or(&path);
            let name = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            let kind = entry.file_type().ok();
            if kind.is_some_and(|k| k.is_dir()) {
                stack.push(path);
            } else if kind.is_some_and(|k| k.is_file()) {
                files.push(name);
            } else {
                return fail("layout", Some(&name), None, "not a regular file");
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Entries read, checked and folded per round: the raw entries and their
/// parsed events of one round are all that is held of them.
const ROUND: usize = 2048;

/// The longest CSV record kept for comparison and shown in a difference.
const MAX_RECORD: usize = 1 << 20;

/// What the walk over the entries established.
struct Walked {
    /// `(seq, ts)` of the first and the last entry.
    first: Option<(u64, Timestamp)>,
    last: Option<(u64, Timestamp)>,
    count: u64,
    /// The leaf hash of the last entry.
    last_leaf: Hash,
    key_history: Vec<(VerifierKey, u64)>,
    /// Index of the first entry at or after the period's start and end.
    period_first: Option<u64>,
    period_end: Option<u64>,
    /// SHA-256 (hex) of the entries file.
    sha256: String,
}

/// The entries file, read one round at a time.
struct EntryReader {
    reader: std::io::BufReader<std::fs::File>,
    hash: sha2::Sha256,
    /// Bytes consumed so far, and entries read so far.
    offset: u64,
    entries: u64,
}

impl EntryReader {
    /// Reads up to `max` entries into `buf`, returning their ranges in it.
    fn round(&mut self, buf: &mut Vec<u8>, max: usize) -> Result<Vec<std::ops::Range<usize>>, ReportFailure> {
        use sha2::Digest as _;
        buf.clear();
        let mut ranges = Vec::with_capacity(max);
        let io = |e: std::io::Error| ReportFailure {
            code: "layout",
            file: Some(ENTRIES_FILE.into()),
            seq: None,
            reason: format!("cannot read: {e}"),
            differences: Vec::new(),
        };
        while ranges.len() < max {
            let mut prefix = [0u8; 2];
            let got = read_full(&mut self.reader, &mut prefix).map_err(io)?;
            if got == 0 {
                break;
            }
            if got < 2 {
                return fail(
                    "entry-syntax",
                    Some(ENTRIES_FILE),
                    None,
                    format!("truncated length prefix at byte {}", self.offset),
                );
            }
            let len = usize::from(u16::from_be_bytes(prefix));
            let start = buf.len();
            buf.resize(start + len, 0);
            if read_full(&mut self.reader, &mut buf[start..]).map_err(io)? < len {
                return fail(
                    "entry-syntax",
                    Some(ENTRIES_FILE),
                    None,
                    format!("entry {} runs past the end of the file", self.entries),
                );
            }
            self.hash.update(prefix);
            self.hash.update(&buf[start..]);
            self.offset += 2 + len as u64;
            self.entries += 1;
            ranges.push(start..start + len);
        }
        Ok(ranges)
    }
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_full(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The entry checks of FORMAT.md section 9 step 5, over the bundle's
/// contiguous run of entries that starts at any seq (like a range export),
/// streamed one round at a time; each verified event of the period goes to
/// `fold` (with its rows to `sink`) when the period is known.
fn walk_entries(
    dir: &Path,
    origin: &str,
    keys: &KeySet,
    expected: u64,
    period: Option<(Timestamp, Timestamp)>,
    mut frontier: Option<&mut Frontier>,
    mut fold: Option<(&mut compute::Fold, &mut dyn RowSink)>,
) -> Result<Walked, ReportFailure> {
    use sha2::Digest as _;
    let file = std::fs::File::open(dir.join(ENTRIES_FILE))
        .or_else(|e| fail("layout", Some(ENTRIES_FILE), None, format!("cannot read: {e}")))?;
    let file_len = file.metadata().ok().map(|m| m.len());
    let mut reader = EntryReader {
        reader: std::io::BufReader::with_capacity(1 << 20, file),
        hash: sha2::Sha256::new(),
        offset: 0,
        entries: 0,
    };
    let mut walked = Walked {
        first: None,
        last: None,
        count: 0,
        last_leaf: [0u8; 32],
        key_history: Vec::new(),
        period_first: None,
        period_end: None,
        sha256: String::new(),
    };
    // Room for the entries the manifest names, if the file can hold them (an
    // entry is more than 64 bytes): no rehashing midway.
    let room = file_len.map_or(0, |len| expected.min(len / 64));
    let mut ids = HashSet::with_capacity(usize::try_from(room).unwrap_or(0));
    let file = Some(ENTRIES_FILE);
    std::thread::scope(|scope| {
        // One thread reads and prepares round k+1 (on all cores) while this
        // one runs the order-dependent checks and the fold over round k.
        let (sender, rounds) = std::sync::mpsc::sync_channel::<Result<Round, ReportFailure>>(1);
        let producer = scope.spawn(move || {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16);
            let mut presumed: Option<VerifierKey> = None;
            loop {
                let mut buf = Vec::new();
                let ranges = match reader.round(&mut buf, ROUND) {
                    Ok(ranges) if ranges.is_empty() => break,
                    Ok(ranges) => ranges,
                    Err(failure) => {
                        let _ = sender.send(Err(failure));
                        break;
                    }
                };
                if presumed.is_none() {
                    presumed = ParsedEntry::parse(&buf[ranges[0].clone()]).ok().and_then(|p| {
                        keys.candidates(p.event.seq)
                            .find(|k| k.name() == origin && k.matches(&p.signatures[0]))
                            .cloned()
                    });
                }
                let prepared = prepare(&buf, &ranges, presumed.as_ref(), threads);
                if sender.send(Ok(Round { buf, ranges, prepared, presumed: presumed.clone() })).is_err() {
                    break; // the checks stopped at a failure
                }
            }
            reader.hash
        });
        for round in rounds {
            let Round { buf, ranges, prepared, presumed } = round?;
            let entries = ranges.iter().map(|r| &buf[r.clone()]);
            for (entry, (parsed, leaf, presumed_ok)) in entries.zip(prepared) {
                let i = walked.count;
                let parsed = parsed.or_else(|e| fail("entry-syntax", file, walked.last.map(|(seq, _)| seq + 1), e))?;
                let event = &parsed.event;
                let seq = event.seq;
                if let Some((previous_seq, previous_ts)) = walked.last {
                    if seq != previous_seq + 1 {
                        return fail(
                            "sequence",
                            file,
                            Some(seq),
                            format!("entry {i} of the file says seq {seq}, expected {}", previous_seq + 1),
                        );
                    }
                    if event.prev != walked.last_leaf {
                        return fail("prev-hash", file, Some(seq), "prev is not the leaf hash of the previous entry");
                    }
                    if event.ts < previous_ts {
                        return fail(
                            "timestamp",
                            file,
                            Some(seq),
                            format!("timestamp {} is earlier than the previous entry's", event.ts),
                        );
                    }
                } else if seq == 0 && event.prev != [0u8; 32] {
                    return fail("prev-hash", file, Some(seq), "entry 0 must have 32 zero bytes as prev");
                }
                if event.log != origin {
                    return fail(
                        "origin",
                        file,
                        Some(seq),
                        format!("entry belongs to log {:?}, not {origin:?}", event.log),
                    );
                }
                if !ids.insert(event.draft.id) {
                    return fail("duplicate-id", file, Some(seq), format!("event id {} is repeated", event.draft.id));
                }
                let first = &parsed.signatures[0];
                if walked.key_history.is_empty() {
                    let Some(key) = keys.candidates(seq).find(|k| k.name() == origin && k.matches(first)).cloned()
                    else {
                        return fail(
                            "key-not-in-force",
                            file,
                            Some(seq),
                            "not signed by a key pinned for this sequence number",
                        );
                    };
                    walked.key_history.push((key, seq));
                }
                let history = &walked.key_history;
                let (current, _) = &history[history.len() - 1];
                let verified = if presumed.as_ref() == Some(current) {
                    presumed_ok
                } else {
                    current.matches(first) && current.verify(&entry[..parsed.text_len], first)
                };
                if !verified {
                    return fail(
                        "signature",
                        file,
                        Some(seq),
                        format!("signature line 1 does not verify under the key in force {current}"),
                    );
                }
                let earlier = &history[..history.len() - 1];
                if !keys.permits(current, seq, |pinned| earlier.iter().any(|(k, _)| k == pinned)) {
                    return fail(
                        "key-not-in-force",
                        file,
                        Some(seq),
                        format!("key {current} is pinned for other sequence numbers"),
                    );
                }
                if let Some(new_key) = &parsed.new_key {
                    let second = &parsed.signatures[1];
                    if !new_key.matches(second) || !new_key.verify(&entry[..parsed.text_len], second) {
                        return fail("signature", file, Some(seq), "a key rotation must be signed by the new key");
                    }
                    walked.key_history.push((new_key.clone(), seq + 1));
                }
                if let Some((from, to)) = period {
                    if walked.period_first.is_none() && event.ts >= from {
                        walked.period_first = Some(i);
                    }
                    if walked.period_end.is_none() && event.ts >= to {
                        walked.period_end = Some(i);
                    }
                }
                if let Some((fold, sink)) = fold.as_mut() {
                    fold.push(event, &mut **sink);
                }
                walked.first.get_or_insert((seq, event.ts));
                walked.last = Some((seq, event.ts));
                if let Some(frontier) = frontier.as_mut() {
                    frontier.push(leaf, |_, _, _| {});
                }
                walked.last_leaf = leaf;
                walked.count += 1;
            }
        }
        // A producer's panic is the verifier's: never a shorter walk.
        let hash = producer.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        walked.sha256 = bundle::hex(&hash.finalize());
        Ok(walked)
    })
}

/// A round of entries read from the file and prepared: the raw bytes, each
/// entry's range in them, and for each entry its parse, its leaf hash and
/// whether signature line 1 verifies under the presumed key.
struct Round {
    buf: Vec<u8>,
    ranges: Vec<std::ops::Range<usize>>,
    prepared: Vec<(Result<ParsedEntry, String>, Hash, bool)>,
    presumed: Option<VerifierKey>,
}

/// Parses the entries of a round, hashes them and verifies signature line 1
/// under the key presumed in force (the pinned key the first entry is signed
/// by), on `threads` threads; the walk then verifies again, one at a time,
/// only entries signed after a key rotation.
fn prepare(
    buf: &[u8],
    ranges: &[std::ops::Range<usize>],
    presumed: Option<&VerifierKey>,
    threads: usize,
) -> Vec<(Result<ParsedEntry, String>, Hash, bool)> {
    let chunk = ranges.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = ranges
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|range| {
                            let entry = &buf[range.clone()];
                            match ParsedEntry::parse(entry) {
                                Ok(p) => {
                                    let first = &p.signatures[0];
                                    let ok = presumed
                                        .is_some_and(|k| k.matches(first) && k.verify(&entry[..p.text_len], first));
                                    (Ok(p), leaf_hash(entry), ok)
                                }
                                Err(e) => (Err(e.to_string()), [0u8; 32], false),
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // A worker's panic is the verifier's: never a shorter list of entries.
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    })
}

/// A population's CSV file in the bundle, read record by record as the fold
/// makes the expected rows, and hashed as it is read.
struct CsvCursor {
    reader: std::io::BufReader<std::fs::File>,
    hash: sha2::Sha256,
}

impl CsvCursor {
    /// Reads the next record with its line end into `out` (at most
    /// [`MAX_RECORD`] bytes of it kept); false at the end of the file. A
    /// line break inside a quoted field does not end the record.
    fn next_record(&mut self, out: &mut Vec<u8>) -> std::io::Result<bool> {
        use sha2::Digest as _;
        use std::io::BufRead as _;
        out.clear();
        let mut quoted = false;
        let mut any = false;
        loop {
            let available = self.reader.fill_buf()?;
            if available.is_empty() {
                return Ok(any);
            }
            any = true;
            let mut end = None;
            for (i, byte) in available.iter().enumerate() {
                match byte {
                    b'"' => quoted = !quoted,
                    b'\n' if !quoted => {
                        end = Some(i + 1);
                        break;
                    }
                    _ => {}
                }
            }
            let take = end.unwrap_or(available.len());
            let keep = take.min(MAX_RECORD.saturating_sub(out.len()));
            out.extend_from_slice(&available[..keep]);
            self.hash.update(&available[..take]);
            self.reader.consume(take);
            if end.is_some() {
                return Ok(true);
            }
        }
    }
}

/// One population file being compared with its recomputation.
struct CsvCheck {
    file: String,
    cursor: Result<CsvCursor, String>,
    /// Records compared so far (the header is record 1).
    records: usize,
    differences: Vec<Difference>,
    found: Vec<u8>,
}

impl CsvCheck {
    fn open(dir: &Path, name: &str, columns: &[&str]) -> CsvCheck {
        use sha2::Digest as _;
        let file = bundle::population_file(name);
        let cursor = std::fs::File::open(dir.join(&file))
            .map(|f| CsvCursor { reader: std::io::BufReader::with_capacity(1 << 16, f), hash: sha2::Sha256::new() })
            .map_err(|e| format!("cannot read: {e}"));
        let mut check = CsvCheck { file, cursor, records: 0, differences: Vec::new(), found: Vec::new() };
        check.compare(None, Some(&csv::header(columns)));
        check
    }

    /// Compares the next record of the file with `expected` (with its line
    /// end; `None` past the expected rows). Returns whether the file had one.
    fn compare(&mut self, seq: Option<u64>, expected: Option<&str>) -> bool {
        let Ok(cursor) = &mut self.cursor else { return false };
        let found = match cursor.next_record(&mut self.found) {
            Ok(true) => Some(&self.found),
            Ok(false) => None,
            Err(e) => {
                self.cursor = Err(format!("cannot read: {e}"));
                return false;
            }
        };
        let had_one = found.is_some();
        self.records += 1;
        if expected.map(str::as_bytes) == found.map(Vec::as_slice) || self.differences.len() >= 50 {
            return had_one;
        }
        let shown = |bytes: &[u8]| {
            let text = String::from_utf8_lossy(bytes);
            text.strip_suffix("\r\n").or_else(|| text.strip_suffix('\n')).unwrap_or(&text).to_string()
        };
        self.differences.push(Difference {
            file: self.file.clone(),
            row: self.records,
            seq,
            expected: expected.map(|e| shown(e.as_bytes())),
            found: found.map(|f| shown(f)),
        });
        had_one
    }

    /// Compares what is left of the file with nothing; returns its SHA-256
    /// (hex) and the differences.
    fn finish(mut self) -> Result<(String, Vec<Difference>), ReportFailure> {
        use sha2::Digest as _;
        while self.compare(None, None) {}
        match self.cursor {
            Ok(cursor) => Ok((bundle::hex(&cursor.hash.finalize()), self.differences)),
            Err(reason) => fail("layout", Some(&self.file), None, reason),
        }
    }
}

/// The population files, compared row by row as the fold makes the rows.
struct CsvChecks {
    checks: Vec<CsvCheck>,
    /// The record being compared, with its line end.
    expected: String,
}

impl RowSink for CsvChecks {
    fn row(&mut self, population: usize, seq: u64, record: &str) {
        self.expected.clear();
        self.expected.push_str(record);
        self.expected.push_str("\r\n");
        self.checks[population].compare(Some(seq), Some(&self.expected));
    }
}

/// Compares a recomputed file with the bundle's, line by line.
fn compare(file: &str, expected: &str, found: &[u8], out: &mut Vec<Difference>) {
    let found = String::from_utf8_lossy(found);
    if expected.as_bytes() == found.as_bytes() {
        return;
    }
    let (want, got): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), found.lines().collect());
    let before = out.len();
    for row in 0..want.len().max(got.len()) {
        let (w, g) = (want.get(row), got.get(row));
        if w != g {
            let (expected, found) = (w.map(|s| s.to_string()), g.map(|s| s.to_string()));
            out.push(Difference { file: file.to_string(), row: row + 1, seq: None, expected, found });
            if out.len() - before >= 50 {
                break;
            }
        }
    }
    if out.len() == before {
        // Same lines, different bytes (line ends, a final newline).
        out.push(Difference { file: file.to_string(), row: want.len().max(1), seq: None, expected: None, found: None });
    }
}

/// Verifies the bundle in `dir`.
///
/// # Errors
/// The first [`ReportFailure`].
pub fn verify_report(dir: &Path, options: &ReportOptions) -> Result<ReportSummary, ReportFailure> {
    // 1. The fixed files.
    let manifest_bytes = read(dir, MANIFEST_FILE)?;
    let checkpoint_bytes = read(dir, CHECKPOINT_FILE)?;
    let proof_bytes = read(dir, PROOF_FILE)?;

    // 2. The checkpoint and the manifest parse.
    let checkpoint = SignedCheckpoint::parse(&checkpoint_bytes)
        .or_else(|e| fail("checkpoint", Some(CHECKPOINT_FILE), None, e.to_string()))?;
    let origin = checkpoint.checkpoint.origin.clone();
    let size = checkpoint.checkpoint.size;
    let manifest_note =
        Note::parse(&manifest_bytes).or_else(|e| fail("manifest", Some(MANIFEST_FILE), None, e.to_string()))?;
    let manifest =
        Manifest::parse_text(manifest_note.text).or_else(|e| fail("manifest", Some(MANIFEST_FILE), None, e.reason))?;

    // 3. Every entry, streamed: each is checked, then folded into the report,
    // whose rows are compared with the population files as they are made
    // (the differences are reported at step 9, after the entries' checks).
    let period = Timestamp::parse(&manifest.from).ok().zip(Timestamp::parse(&manifest.to).ok());
    let settings = period.map(|(from, to)| Settings { from, to, revoke_sla_ms: manifest.revoke_sla_ms });
    let mut fold = settings.as_ref().map(compute::Fold::new);
    let checks = compute::POPULATIONS.iter().map(|(name, _, _, columns)| CsvCheck::open(dir, name, columns)).collect();
    let mut checks = CsvChecks { checks, expected: String::new() };
    // The range proof's frontier takes each entry's leaf hash as it passes (step 6 checks where they lead).
    let proof = std::str::from_utf8(&proof_bytes)
        .or_else(|_| fail("proof", Some(PROOF_FILE), None, "not UTF-8"))
        .and_then(|text| RangeProof::parse(text).or_else(|e| fail("proof", Some(PROOF_FILE), None, e.reason)));
    let mut frontier = proof.as_ref().ok().map(RangeProof::frontier);
    let walked = walk_entries(
        dir,
        &origin,
        &options.keys,
        manifest.end_seq.saturating_sub(manifest.first_seq),
        period,
        frontier.as_mut().and_then(|f| f.as_mut().ok()),
        fold.as_mut().map(|fold| (fold, &mut checks as &mut dyn RowSink)),
    )?;
    let (Some((first_seq, first_ts)), Some((last_seq, last_ts))) = (walked.first, walked.last) else {
        return fail("boundary", Some(ENTRIES_FILE), None, "the bundle holds no entries");
    };
    let end_seq = last_seq + 1;

    // 4. The checkpoint and the manifest are signed by the key in force at the checkpoint's size.
    let key_at = walked.key_history.iter().rev().find(|(_, from)| *from <= size).map(|(k, _)| k);
    let earlier = |key: &VerifierKey| {
        let position = walked.key_history.iter().position(|(k, _)| k == key).unwrap_or(0);
        walked.key_history[..position].iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
    };
    let signer = key_at
        .filter(|k| checkpoint.verify(k).is_ok() && options.keys.permits(k, size, |p| earlier(k).contains(p)))
        .or_else(|| options.keys.candidates(size).find(|k| checkpoint.verify(k).is_ok()))
        .cloned();
    let Some(signer) = signer else {
        return fail("checkpoint-signature", Some(CHECKPOINT_FILE), None, "not signed by the key in force at its size");
    };
    if note::verify_note(&manifest_note, std::slice::from_ref(&signer)).is_err() {
        return fail("manifest-signature", Some(MANIFEST_FILE), None, format!("not signed by the log key {signer}"));
    }
    if manifest.origin != origin || manifest.report != "soc2" {
        return fail(
            "manifest",
            Some(MANIFEST_FILE),
            None,
            format!(
                "the manifest is for {} report {:?}, the checkpoint for {origin}",
                manifest.origin, manifest.report
            ),
        );
    }
    let parse_time =
        |s: &str| Timestamp::parse(s).or_else(|e| fail("manifest", Some(MANIFEST_FILE), None, e.to_string()));
    let (from, to) = (parse_time(&manifest.from)?, parse_time(&manifest.to)?);
    if from >= to {
        return fail("manifest", Some(MANIFEST_FILE), None, "the period is empty");
    }

    // 5. The entries are the whole period plus one boundary entry on each side.
    let count = walked.count;
    let period_first = walked.period_first.unwrap_or(count);
    let period_end = walked.period_end.unwrap_or(count);
    match period_first {
        0 if first_seq != 0 => {
            return fail(
                "boundary",
                Some(ENTRIES_FILE),
                Some(first_seq),
                format!(
                    "the first entry ({}) is inside the period and is not entry 0: the boundary entry before the period is missing, so earlier entries of the period may be left out",
                    first_ts
                ),
            );
        }
        n if n > 1 => {
            return fail("boundary", Some(ENTRIES_FILE), Some(first_seq), "more than one entry before the period");
        }
        _ => {}
    }
    if period_end == count && end_seq != size {
        return fail(
            "boundary",
            Some(ENTRIES_FILE),
            Some(end_seq - 1),
            format!(
                "the last entry ({}) is inside the period and the checkpoint has later entries: the boundary entry after the period is missing",
                last_ts
            ),
        );
    }
    if period_end + 1 < count {
        return fail(
            "boundary",
            Some(ENTRIES_FILE),
            Some(first_seq + period_end + 1),
            "more than one entry after the period",
        );
    }

    // 6. The range proof ties the entries to the checkpoint.
    let proof = proof?;
    if proof.start != first_seq || proof.size != size {
        return fail(
            "proof",
            Some(PROOF_FILE),
            None,
            format!(
                "the proof is for entries from {} in a tree of size {}; the bundle's entries start at {first_seq} and its checkpoint has size {size}",
                proof.start, proof.size
            ),
        );
    }
    frontier
        .unwrap_or_else(|| proof.frontier())
        .and_then(|frontier| proof.verify_frontier(&frontier, &checkpoint.checkpoint.root))
        .or_else(|reason| fail("proof", Some(PROOF_FILE), None, reason))?;
    if (manifest.first_seq, manifest.end_seq, manifest.checkpoint_size) != (first_seq, end_seq, size) {
        return fail(
            "manifest",
            Some(MANIFEST_FILE),
            None,
            format!(
                "the manifest names entries {}..{} and checkpoint size {}; the bundle holds {first_seq}..{end_seq} and size {size}",
                manifest.first_seq, manifest.end_seq, manifest.checkpoint_size
            ),
        );
    }
    if manifest.anchor_size != proof.anchor.as_ref().map(|(m, _)| *m) {
        return fail("manifest", Some(MANIFEST_FILE), None, "the manifest's anchor size differs from the proof's");
    }

    // 7. The auditor's anchor.
    let mut anchor_checked = None;
    if let Some(bytes) = &options.anchor {
        let anchor = SignedCheckpoint::parse(bytes).or_else(|e| fail("anchor", Some("anchor"), None, e.to_string()))?;
        if anchor.checkpoint.origin != origin {
            return fail(
                "anchor",
                Some("anchor"),
                None,
                format!("the anchor is for log {:?}", anchor.checkpoint.origin),
            );
        }
        let m = anchor.checkpoint.size;
        if !options.keys.candidates(m).any(|k| anchor.verify(k).is_ok()) {
            return fail("anchor", Some("anchor"), None, "the anchor is not signed by a key pinned for its size");
        }
        if m > size {
            return fail(
                "truncation",
                Some(CHECKPOINT_FILE),
                None,
                format!(
                    "the bundle's checkpoint has size {size}, smaller than the pinned checkpoint's {m}: the ledger was truncated or rolled back, or the checkpoint is stale"
                ),
            );
        }
        let consistent = if m == size {
            anchor.checkpoint.root == checkpoint.checkpoint.root
        } else {
            match &proof.anchor {
                Some((proved, hashes)) if *proved == m => {
                    verify_consistency(m, size, &anchor.checkpoint.root, &checkpoint.checkpoint.root, hashes).is_ok()
                }
                _ => {
                    return fail(
                        "anchor",
                        Some(PROOF_FILE),
                        None,
                        format!(
                            "the bundle carries no consistency proof from size {m}; generate it with --anchor set to this checkpoint"
                        ),
                    );
                }
            }
        };
        if !consistent {
            return fail(
                "fork",
                Some(PROOF_FILE),
                Some(m.saturating_sub(1)),
                format!(
                    "the checkpoint of size {size} is not consistent with the pinned checkpoint of size {m}: the log signed two inconsistent histories"
                ),
            );
        }
        anchor_checked = Some(m);
    }

    // 8. Witnesses.
    if let Some(policy) = &options.witness_policy {
        // The checkpoint file is the note as stored, cosignature lines included.
        let note_text = String::from_utf8_lossy(&checkpoint_bytes);
        if let Err(e) = policy.check(&note_text) {
            return fail("witness-quorum", Some(CHECKPOINT_FILE), None, e.to_string());
        }
    }

    // 9. Finish the recomputation: the rows later entries completed, the
    // rest of each population file, the JSON and the HTML.
    let Some(fold) = fold else {
        return fail("manifest", Some(MANIFEST_FILE), None, "the period cannot be read");
    };
    let facts = LedgerFacts {
        origin: origin.clone(),
        first_seq,
        end_seq,
        period_first_seq: first_seq + period_first,
        period_end_seq: first_seq + period_end,
        checkpoint_size: size,
        checkpoint_root: B64.encode(checkpoint.checkpoint.root),
        anchor_size: manifest.anchor_size,
    };
    let report: Report = fold.finish(facts, &mut checks);
    let definitions: Vec<(String, String)> =
        report.populations.iter().map(|p| (p.name.to_string(), p.definition.to_string())).collect();
    if manifest.populations != definitions {
        return fail("manifest", Some(MANIFEST_FILE), None, "the population definitions differ from this verifier's");
    }
    let mut differences = Vec::new();
    let mut first_code = None;
    let mut hashes: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    hashes.insert(ENTRIES_FILE.into(), walked.sha256.clone());
    for check in checks.checks {
        let file = check.file.clone();
        let (hash, found) = check.finish()?;
        if !found.is_empty() && first_code.is_none() {
            first_code = Some("csv");
        }
        differences.extend(found);
        hashes.insert(file, hash);
    }
    let before = differences.len();
    compare(JSON_FILE, &json::render(&report), &read(dir, JSON_FILE)?, &mut differences);
    if differences.len() > before && first_code.is_none() {
        first_code = Some("report-json");
    }
    let before = differences.len();
    compare(HTML_FILE, &html::render(&report), &read(dir, HTML_FILE)?, &mut differences);
    if differences.len() > before && first_code.is_none() {
        first_code = Some("report-html");
    }
    if let Some(code) = first_code {
        let files: Vec<String> =
            differences.iter().map(|d| d.file.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        return Err(ReportFailure {
            code,
            file: differences.first().map(|d| d.file.clone()),
            seq: None,
            reason: format!("{} difference(s) from the recomputation, in {}", differences.len(), files.join(", ")),
            differences,
        });
    }

    // 10. Every file against the manifest, and no other file.
    let mut expected_files: Vec<String> =
        [CHECKPOINT_FILE, ENTRIES_FILE, HTML_FILE, JSON_FILE, PROOF_FILE].iter().map(|s| s.to_string()).collect();
    expected_files.extend(report.populations.iter().map(|p| p.file()));
    expected_files.sort();
    let listed: Vec<String> = manifest.files.iter().map(|(_, path)| path.clone()).collect();
    if listed != expected_files {
        return fail("manifest", Some(MANIFEST_FILE), None, "the manifest does not list exactly the bundle's files");
    }
    for (hash, path) in &manifest.files {
        let actual = match hashes.get(path) {
            Some(streamed) => streamed.clone(),
            None => bundle::sha256_hex(&read(dir, path)?),
        };
        if actual != *hash {
            return fail("file-hash", Some(path), None, "SHA-256 differs from the manifest's");
        }
    }
    let present = list_files(dir)?;
    if let Some(extra) = present.iter().find(|p| *p != MANIFEST_FILE && !expected_files.contains(p)) {
        return fail("layout", Some(extra), None, "a file the manifest does not list");
    }

    Ok(ReportSummary {
        origin,
        from: manifest.from.clone(),
        to: manifest.to.clone(),
        first_seq,
        end_seq,
        period_closed: report.ledger.period_closed(),
        checkpoint_size: size,
        checkpoint_root: B64.encode(checkpoint.checkpoint.root),
        anchor_size: anchor_checked,
        files: manifest.files.len() + 1,
        populations: report.populations.iter().map(|p| (p.name.to_string(), p.rows)).collect(),
        controls: report.controls.iter().map(|c| (c.id.to_string(), c.exceptions.len())).collect(),
        manifest_sha256: bundle::sha256_hex(&manifest_bytes),
    })
}

/// Runs `portcullis-verify report`; returns the exit status (0 verified, 1 failed, 2 bad usage).
pub fn run(args: &CliArgs<'_>, dir: &Path, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let read = |flag: &str, path: Option<&Path>| -> Result<Option<Vec<u8>>, String> {
        match path {
            Some(path) => std::fs::read(path).map(Some).map_err(|e| format!("{flag} {}: {e}", path.display())),
            None => Ok(None),
        }
    };
    let inputs =
        read("--anchor", args.anchor).and_then(|anchor| Ok((anchor, crate::read_witness_policy(args.witness_policy)?)));
    let (anchor, policy) = match inputs {
        Ok(inputs) => inputs,
        Err(message) => {
            let _ = writeln!(err, "portcullis-verify: {message}");
            return 2;
        }
    };
    if !dir.is_dir() {
        let _ = writeln!(err, "portcullis-verify: {} is not a directory", dir.display());
        return 2;
    }
    let options = ReportOptions { keys: KeySet::new(args.keys.to_vec()), anchor, witness_policy: policy };
    match verify_report(dir, &options) {
        Ok(summary) => {
            if args.json {
                let body = serde_json::json!({
                    "ok": true,
                    "origin": summary.origin,
                    "from": summary.from,
                    "to": summary.to,
                    "entries": {"first_seq": summary.first_seq, "end_seq": summary.end_seq},
                    "period_closed": summary.period_closed,
                    "checkpoint": {"size": summary.checkpoint_size, "root": summary.checkpoint_root},
                    "anchor_size": summary.anchor_size,
                    "files": summary.files,
                    "manifest_sha256": summary.manifest_sha256,
                    "populations": summary.populations.iter().map(|(n, rows)| serde_json::json!({"name": n, "rows": rows})).collect::<Vec<_>>(),
                    "controls": summary.controls.iter().map(|(id, n)| serde_json::json!({"id": id, "exceptions": n})).collect::<Vec<_>>(),
                });
                let _ = writeln!(out, "{body}");
            } else {
                let _ = writeln!(out, "OK: report bundle {} verified", dir.display());
                let _ = writeln!(out, "  log:        {}", summary.origin);
                let _ = writeln!(out, "  period:     {} .. {}", summary.from, summary.to);
                let closed = if summary.period_closed { "" } else { " (the ledger ends inside the period)" };
                let _ = writeln!(
                    out,
                    "  entries:    {}..{} with their boundaries{closed}",
                    summary.first_seq, summary.end_seq
                );
                let _ =
                    writeln!(out, "  checkpoint: size {} root {}", summary.checkpoint_size, summary.checkpoint_root);
                if let Some(anchor) = summary.anchor_size {
                    let _ = writeln!(out, "  anchor:     consistent with the pinned checkpoint of size {anchor}");
                }
                for (name, rows) in &summary.populations {
                    let _ = writeln!(out, "  population: {name} ({rows} rows) recomputed");
                }
                for (id, exceptions) in &summary.controls {
                    let _ = writeln!(out, "  control:    {id}: {exceptions} exception(s)");
                }
                let _ = writeln!(out, "  manifest:   sha256 {} ({} files)", summary.manifest_sha256, summary.files);
            }
            0
        }
        Err(failure) => {
            if args.json {
                let body = serde_json::json!({
                    "ok": false,
                    "check": failure.code,
                    "file": failure.file,
                    "seq": failure.seq,
                    "reason": failure.reason,
                    "differences": failure.differences.iter().map(|d| serde_json::json!({
                        "file": d.file, "row": d.row, "seq": d.seq, "expected": d.expected, "found": d.found,
                    })).collect::<Vec<_>>(),
                });
                let _ = writeln!(out, "{body}");
            } else {
                let _ = writeln!(out, "FAILED [{}]: {failure}", failure.code);
                for d in &failure.differences {
                    let seq = d.seq.map(|s| format!(" (entry {s})")).unwrap_or_default();
                    let _ = writeln!(out, "  {} row {}{seq}:", d.file, d.row);
                    let _ = writeln!(out, "    expected: {}", d.expected.as_deref().unwrap_or("(nothing)"));
                    let _ = writeln!(out, "    found:    {}", d.found.as_deref().unwrap_or("(nothing)"));
                }
            }
            1
        }
    }
}
