//! Shared helpers: deterministic ledgers, exports written with the format
//! crate alone, the verifier with fixed options, and the shared vectors.
//!
//! Everything here is deterministic (fixed seeds, fixed timestamps, ids
//! derived from the origin and sequence number), so the same call always
//! produces the same bytes: the checked-in vectors depend on it.

use portcullis_format::checkpoint::Checkpoint;
use portcullis_format::event::{Actor, Event, EventDraft, EventId, KIND_KEY_ROTATED, KIND_LEDGER_CREATED, ParsedEntry};
use portcullis_format::export::{CHECKPOINT_FILE, ExportWriter, JSONL_FILE, TileBuilder, write_jsonl_line};
use portcullis_format::json::Json;
use portcullis_format::keys::{KeySet, PinnedKey};
use portcullis_format::merkle::{self, Hash};
use portcullis_format::note::{self, SignerKey};
use portcullis_format::tiles::{TILE_WIDTH, Tile, decode_bundle, encode_bundle};
use portcullis_format::time::Timestamp;
use portcullis_format::verify::{self, Check, Failure, Options, Summary};
use std::fs;
use std::path::{Path, PathBuf};

/// The origin (log name) of the ledgers under test.
pub const ORIGIN: &str = "portcullis.example/ledger";
/// The origin of a second, unrelated log (for splice and replay attacks).
pub const OTHER_ORIGIN: &str = "staging.portcullis.example/ledger";

/// The seed of the log's first signing key.
pub const LOG_SEED: [u8; 32] = [0x11; 32];
/// The seed of the key a rotation introduces.
pub const ROTATED_SEED: [u8; 32] = [0x22; 32];
/// The seed of the other log's key.
pub const OTHER_LOG_SEED: [u8; 32] = [0x33; 32];
/// The seed of an attacker's key (named like the log's key, so only the key differs).
pub const ATTACKER_SEED: [u8; 32] = [0x66; 32];

/// The timestamp of entry 0; entry `n` is `n` times 1.5 seconds later.
pub const START: &str = "2026-11-28T10:00:00.000000Z";
const STEP_MICROS: i64 = 1_500_000;

/// A signer named after `origin`, from a fixed seed.
pub fn signer(origin: &str, seed: &[u8; 32]) -> SignerKey {
    SignerKey::from_seed(origin, seed).expect("fixed seeds and origins make valid keys")
}

/// What ledger to build.
#[derive(Clone, Debug)]
pub struct Spec {
    pub origin: String,
    pub size: u64,
    pub seed: [u8; 32],
    /// A `key.rotated` event at this sequence number, introducing the key of this seed.
    pub rotation: Option<(u64, [u8; 32])>,
    /// From this sequence number on, events carry different data: an alternative history.
    pub fork_at: Option<u64>,
}

impl Spec {
    pub fn new(size: u64) -> Spec {
        Spec { origin: ORIGIN.into(), size, seed: LOG_SEED, rotation: None, fork_at: None }
    }

    pub fn rotating_at(mut self, seq: u64) -> Spec {
        self.rotation = Some((seq, ROTATED_SEED));
        self
    }

    pub fn origin(mut self, origin: &str) -> Spec {
        self.origin = origin.into();
        self
    }

    pub fn seed(mut self, seed: [u8; 32]) -> Spec {
        self.seed = seed;
        self
    }

    pub fn forked_at(mut self, seq: u64) -> Spec {
        self.fork_at = Some(seq);
        self
    }
}

/// A built ledger: its keys, events and entry bytes.
pub struct Ledger {
    pub spec: Spec,
    pub initial: SignerKey,
    pub rotated: Option<SignerKey>,
    pub events: Vec<Event>,
    pub entries: Vec<Vec<u8>>,
}

/// The timestamp of entry `seq`.
pub fn timestamp(seq: u64) -> Timestamp {
    let start = Timestamp::parse(START).expect("START is a ledger timestamp");
    Timestamp::from_unix_micros(start.unix_micros() + seq as i64 * STEP_MICROS).expect("in range")
}

/// A deterministic event id: distinct per origin, sequence number and history.
pub fn event_id(origin: &str, seq: u64, forked: bool) -> EventId {
    let digest = merkle::leaf_hash(format!("event-id/{origin}/{seq}/{forked}").as_bytes());
    EventId(digest[..16].try_into().expect("16 bytes"))
}

fn obj(members: &[(&str, Json)]) -> Json {
    Json::Obj(members.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect())
}

fn text(s: &str) -> Json {
    Json::Str(s.to_string())
}

fn person(sub: &str, group: &str) -> Actor {
    Actor { sub: sub.into(), groups: vec![group.into()], via: "oidc".into() }
}

/// The draft of event `seq`, at position `slot` of a realistic request /
/// approval / grant cycle (a rotation takes no slot, so the cycle resumes after it).
fn draft(origin: &str, seq: u64, slot: u64, forked: bool) -> EventDraft {
    let n = (slot.saturating_sub(1)) / 4 + 1;
    let request = format!("req-{n:04}");
    let grant = format!("grant-{n:04}");
    let (kind, actor, mut data) = if slot == 0 {
        (KIND_LEDGER_CREATED, Actor::system(), obj(&[("origin", text(origin)), ("version", text("0.1.0"))]))
    } else {
        match (slot - 1) % 4 {
            0 => (
                "request.created",
                person("alice@example.com", "sre"),
                obj(&[
                    ("duration_s", Json::Int(3600)),
                    ("namespace", text("web")),
                    ("reason", text("INC-4711: rotate the TLS certificate of web/admin")),
                    ("request", text(&request)),
                    ("route", text("web/admin")),
                ]),
            ),
            1 => ("request.approved", person("bob@example.com", "sre-leads"), obj(&[("request", text(&request))])),
            2 => {
                let expires =
                    Timestamp::from_unix_micros(timestamp(seq).unix_micros() + 3_600_000_000).expect("in range");
                (
                    "grant.activated",
                    Actor::system(),
                    obj(&[
                        ("expires_at", text(&expires.to_string())),
                        ("grant", text(&grant)),
                        ("request", text(&request)),
                    ]),
                )
            }
            _ => ("grant.expired", Actor::system(), obj(&[("grant", text(&grant))])),
        }
    };
    if let (true, Json::Obj(members)) = (forked, &mut data) {
        members.push(("history".into(), text("alternative")));
    }
    EventDraft { id: event_id(origin, seq, forked), kind: kind.into(), v: 1, actor, data }
}

/// Event `seq` of `origin` with the given `prev`, ready to sign.
pub fn event(origin: &str, seq: u64, prev: Hash) -> Event {
    Event { log: origin.into(), seq, prev, ts: timestamp(seq), draft: draft(origin, seq, seq, false) }
}

impl Ledger {
    /// Builds the ledger: events chained by `prev`, each signed by the key in force.
    pub fn build(spec: Spec) -> Ledger {
        let initial = signer(&spec.origin, &spec.seed);
        let rotated = spec.rotation.map(|(_, seed)| signer(&spec.origin, &seed));
        let mut events = Vec::new();
        let mut entries: Vec<Vec<u8>> = Vec::new();
        let mut prev = [0u8; 32];
        for seq in 0..spec.size {
            let forked = spec.fork_at.is_some_and(|f| seq >= f);
            let slot = seq - u64::from(spec.rotation.is_some_and(|(r, _)| seq > r));
            let mut event = Event {
                log: spec.origin.clone(),
                seq,
                prev,
                ts: timestamp(seq),
                draft: draft(&spec.origin, seq, slot, forked),
            };
            let entry = match (spec.rotation, &rotated) {
                (Some((r, _)), Some(new)) if seq == r => {
                    event.draft.kind = KIND_KEY_ROTATED.into();
                    event.draft.actor = Actor::system();
                    event.draft.data = obj(&[("new_key", text(&new.verifier().to_string()))]);
                    event.sign(&[&initial, new])
                }
                (Some((r, _)), Some(new)) if seq > r => event.sign(&[new]),
                _ => event.sign(&[&initial]),
            }
            .expect("generated events are valid");
            prev = merkle::leaf_hash(&entry);
            events.push(event);
            entries.push(entry);
        }
        Ledger { spec, initial, rotated, events, entries }
    }

    pub fn size(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn leaves(&self) -> Vec<Hash> {
        self.entries.iter().map(|e| merkle::leaf_hash(e)).collect()
    }

    /// The key in force at `n`: the signer of entry `n`, and of the checkpoint of size `n`.
    pub fn signer_at(&self, n: u64) -> &SignerKey {
        match (self.spec.rotation, &self.rotated) {
            (Some((r, _)), Some(new)) if n > r => new,
            _ => &self.initial,
        }
    }

    /// The checkpoint of the first `size` entries, signed by the key in force at `size`.
    pub fn checkpoint(&self, size: u64) -> String {
        let root = merkle::root_of(&self.leaves()[..size as usize]);
        Checkpoint { origin: self.spec.origin.clone(), size, root }.sign(self.signer_at(size))
    }

    /// The first `size` raw entries and their signed checkpoint (an anchor, or a smaller export).
    pub fn prefix(&self, size: u64) -> (Vec<Vec<u8>>, String) {
        (self.entries[..size as usize].to_vec(), self.checkpoint(size))
    }

    /// The pinned keys an auditor holds: each key of the ledger with the range it signs.
    pub fn keys(&self) -> KeySet {
        match (self.spec.rotation, &self.rotated) {
            (Some((r, _)), Some(new)) => KeySet::new(vec![
                PinnedKey { key: self.initial.verifier().clone(), from: 0, to: Some(r + 1) },
                PinnedKey { key: new.verifier().clone(), from: r + 1, to: None },
            ]),
            _ => KeySet::single(self.initial.verifier().clone()),
        }
    }

    /// Writes the export of the first `size` entries with [`ExportWriter`].
    pub fn export_prefix(&self, dir: &Path, size: u64) {
        let (entries, checkpoint) = self.prefix(size);
        let mut writer = ExportWriter::create(dir).expect("export directory");
        for entry in entries {
            writer.push(entry).expect("valid entry");
        }
        writer.finish(&checkpoint).expect("export written");
    }

    /// Writes a range export of the whole ledger: entries before `first` (a
    /// multiple of 256) are present only as leaf hashes in the tiles.
    pub fn export_range(&self, dir: &Path, first: u64) {
        let mut writer = ExportWriter::create(dir).expect("export directory");
        for entry in &self.entries[..first as usize] {
            writer.push_hash_only(merkle::leaf_hash(entry)).expect("tile written");
        }
        for entry in &self.entries[first as usize..] {
            writer.push(entry.clone()).expect("valid entry");
        }
        writer.finish(&self.checkpoint(self.size())).expect("export written");
    }

    /// Writes the export of the whole ledger.
    pub fn export(&self, dir: &Path) {
        self.export_prefix(dir, self.size());
    }
}

/// The checkpoint over `entries` signed by `signer`: what whoever holds a log key can produce.
pub fn checkpoint_over(origin: &str, entries: &[Vec<u8>], signer: &SignerKey) -> String {
    let leaves: Vec<Hash> = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
    Checkpoint { origin: origin.into(), size: leaves.len() as u64, root: merkle::root_of(&leaves) }.sign(signer)
}

/// Entry `seq` of `ledger` with its note text edited by `edit`, then signed
/// again by the key(s) in force: a forgery only the key holder could make.
pub fn resigned(ledger: &Ledger, seq: u64, edit: impl FnOnce(&str) -> String) -> Vec<u8> {
    let text = edit(&ledger.events[seq as usize].text());
    let signatures: Vec<_> = match (ledger.spec.rotation, &ledger.rotated) {
        (Some((r, _)), Some(new)) if seq == r => vec![ledger.initial.sign(text.as_bytes()), new.sign(text.as_bytes())],
        _ => vec![ledger.signer_at(seq).sign(text.as_bytes())],
    };
    note::assemble(&text, &signatures).into_bytes()
}

/// `bytes` with the first occurrence of `from` replaced by `to`; panics when `from` is absent.
#[track_caller]
pub fn replace_once(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = std::str::from_utf8(bytes).expect("UTF-8");
    assert!(text.contains(from), "{from:?} not found in {text:?}");
    text.replacen(from, to, 1).into_bytes()
}

/// Writes an export the way an attacker who can rewrite files would: bundles,
/// every hash tile and `entries.jsonl` recomputed from `entries` (which need
/// not be valid), plus the given checkpoint note verbatim.
pub fn write_raw_export(dir: &Path, entries: &[Vec<u8>], checkpoint_note: &str) {
    fs::create_dir_all(dir).expect("export directory");
    let write = |relative: &str, bytes: &[u8]| {
        let path = dir.join(relative);
        fs::create_dir_all(path.parent().expect("has a parent")).expect("tile directory");
        fs::write(path, bytes).expect("write export file");
    };
    let mut tiles = TileBuilder::default();
    let mut jsonl = Vec::new();
    for entry in entries {
        let leaf = merkle::leaf_hash(entry);
        match ParsedEntry::parse(entry) {
            Ok(parsed) => write_jsonl_line(&parsed, entry, &leaf, &mut jsonl),
            Err(_) => jsonl.extend_from_slice(b"{}\n"),
        }
        tiles.push(leaf, |tile, hashes| write(&tile.path(), &hashes.concat()));
    }
    for (tile, hashes) in tiles.partial_tiles() {
        write(&tile.path(), &hashes.concat());
    }
    for (index, chunk) in entries.chunks(TILE_WIDTH as usize).enumerate() {
        let tile = Tile { level: 0, index: index as u64, width: chunk.len() as u64 };
        write(&tile.entries_path(), &encode_bundle(chunk.iter().map(Vec::as_slice)));
    }
    write(JSONL_FILE, &jsonl);
    write(CHECKPOINT_FILE, checkpoint_note.as_bytes());
}

/// The entry bundles of an export, in order, as (relative path, entries).
pub fn bundles(dir: &Path) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut found: Vec<(u64, String)> = files(dir)
        .into_iter()
        .filter_map(|p| Tile::parse_path(&p).filter(|(_, is_bundle)| *is_bundle).map(|(t, _)| (t.index, p)))
        .collect();
    found.sort();
    found
        .into_iter()
        .map(|(_, path)| {
            let bytes = fs::read(dir.join(&path)).expect("read bundle");
            let entries = decode_bundle(&bytes).expect("bundle decodes").into_iter().map(<[u8]>::to_vec).collect();
            (path, entries)
        })
        .collect()
}

/// Rewrites the bundle holding entry `seq` after `change` edits that entry;
/// tiles, `entries.jsonl` and the checkpoint are left as they were.
pub fn modify_entry(dir: &Path, seq: u64, change: impl FnOnce(&mut Vec<u8>)) {
    let (path, mut entries) = bundles(dir).into_iter().nth((seq / TILE_WIDTH) as usize).expect("bundle of seq");
    change(&mut entries[(seq % TILE_WIDTH) as usize]);
    fs::write(dir.join(path), encode_bundle(entries.iter().map(Vec::as_slice))).expect("rewrite bundle");
}

/// Every regular file under `dir`, relative, with `/` separators, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in fs::read_dir(&current).expect("list directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(dir).expect("under dir");
                let parts: Vec<String> =
                    relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    out
}

/// A fresh temporary directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// Runs the verifier with two worker threads.
pub fn verify_with(dir: &Path, keys: &KeySet, anchor: Option<&[u8]>, allow_partial: bool) -> Result<Summary, Failure> {
    let options =
        Options { keys: keys.clone(), anchor: anchor.map(<[u8]>::to_vec), allow_partial, threads: 2, progress: None };
    verify::verify_export(dir, &options)
}

/// Runs the verifier on a full export without an anchor.
pub fn verify(dir: &Path, keys: &KeySet) -> Result<Summary, Failure> {
    verify_with(dir, keys, None, false)
}

/// Asserts that verification failed with `check` at entry `seq` (or at no entry), and returns the failure.
#[track_caller]
pub fn assert_fails(result: Result<Summary, Failure>, check: Check, seq: Option<u64>) -> Failure {
    match result {
        Ok(summary) => panic!("expected {check:?} at {seq:?}, but the export verified: {summary:?}"),
        Err(failure) => {
            assert_eq!((failure.check, failure.seq), (check, seq), "unexpected failure: {failure} ({failure:?})");
            failure
        }
    }
}

/// The shared test vectors: `$PORTCULLIS_SHARED_VECTORS`, or `../shared/vectors` next to the repository.
pub fn shared_vectors() -> PathBuf {
    std::env::var_os("PORTCULLIS_SHARED_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors")))
}
