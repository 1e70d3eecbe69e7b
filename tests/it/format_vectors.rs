//! The checked-in known-answer vectors of `schemas/testdata/` (FORMAT.md section 11).
//!
//! The generator below builds them from fixed seeds and timestamps; the test
//! compares its output with the checked-in files byte for byte, so any change
//! to the format shows up as a diff. `PORTCULLIS_REGENERATE_VECTORS=1`
//! rewrites the files instead. Other tests check each recorded verdict against
//! the verifier, and the chain, checkpoints and proofs independently of it.

use crate::support::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use portcullis_format::checkpoint::SignedCheckpoint;
use portcullis_format::event::ParsedEntry;
use portcullis_format::keys::{KeySet, PinnedKey};
use portcullis_format::merkle::{self, Hash, consistency_proof, inclusion_proof, leaf_hash};
use portcullis_format::proof_file::{ProofFile, ProofFileError};
use portcullis_format::tiles::encode_bundle;
use serde_json::Value;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/testdata");
const REGENERATE: &str = "PORTCULLIS_REGENERATE_VECTORS";
/// Hand-written, so neither generated nor compared.
const README: &str = "README.md";

/// The vector ledger: 7 events of every kind, the key rotated at seq 5.
const SIZE: u64 = 7;
const ROTATION: u64 = 5;
/// The smaller checkpoint, for the consistency proof and the rolled-back export.
const OLD_SIZE: u64 = 3;

/// The expected outcome of verifying one vector, as recorded in `verdicts.json`.
struct Verdict {
    path: String,
    /// A `Check::code()` for exports; a proof-file error code (see [`proof_code`]) for tlog-proof files.
    check: Option<&'static str>,
    seq: Option<u64>,
    /// The file holding the pinned anchor checkpoint, if the export is verified against one.
    anchor: Option<String>,
}

fn valid(path: &str) -> Verdict {
    Verdict { path: path.into(), check: None, seq: None, anchor: None }
}

fn invalid(path: &str, check: &'static str, seq: Option<u64>) -> Verdict {
    Verdict { path: path.into(), check: Some(check), seq, anchor: None }
}

/// The stable code of a tlog-proof failure, named like the export checks where they match.
fn proof_code(error: &ProofFileError) -> &'static str {
    match error {
        ProofFileError::Malformed(_) => "malformed",
        ProofFileError::Checkpoint(_) => "checkpoint",
        ProofFileError::Entry(_) => "entry-syntax",
        ProofFileError::NoEntry => "no-entry",
        ProofFileError::EntryMismatch { .. } => "entry-mismatch",
        ProofFileError::CheckpointKey(_) => "checkpoint-signature",
        ProofFileError::EntrySignature(_) => "signature",
        ProofFileError::Inclusion(_) => "inclusion",
    }
}

fn write(out: &Path, relative: &str, bytes: impl AsRef<[u8]>) {
    let path = out.join(relative);
    fs::create_dir_all(path.parent().expect("has a parent")).expect("create directory");
    fs::write(path, bytes).expect("write vector");
}

fn proof_file(ledger: &Ledger, index: u64) -> ProofFile {
    ProofFile {
        extra: Some(ledger.entries[index as usize].clone()),
        index,
        proof: inclusion_proof(ledger.leaves().as_slice(), index, SIZE).expect("index in range"),
        checkpoint: ledger.checkpoint(SIZE).into_bytes(),
    }
}

/// Writes every vector into `out` and returns the verdicts it recorded.
fn generate(out: &Path) -> Vec<Verdict> {
    let ledger = Ledger::build(Spec::new(SIZE).rotating_at(ROTATION));
    let (old_key, new_key) = (ledger.initial.verifier(), ledger.rotated.as_ref().expect("rotates").verifier());
    write(out, "keys/log.vkey", format!("{old_key}\n"));
    write(out, "keys/rotated.vkey", format!("{new_key}\n"));
    let boundary = ROTATION + 1;
    write(out, "keys/pinned.txt", format!("{old_key}@0-{boundary}\n{new_key}@{boundary}-\n"));
    for (seq, entry) in ledger.entries.iter().enumerate() {
        write(out, &format!("entries/{seq}.entry"), entry);
    }
    write(out, &format!("checkpoint-{OLD_SIZE}"), ledger.checkpoint(OLD_SIZE));
    write(out, &format!("checkpoint-{SIZE}"), ledger.checkpoint(SIZE));
    let consistency = consistency_proof(ledger.leaves().as_slice(), OLD_SIZE, SIZE).expect("sizes");
    let mut text = format!("{OLD_SIZE}\n{SIZE}\n");
    consistency.iter().for_each(|h| writeln!(text, "{}", B64.encode(h)).expect("write to string"));
    write(out, &format!("consistency-{OLD_SIZE}-{SIZE}.txt"), text);

    let mut verdicts = Vec::new();
    for index in [2, 6] {
        let path = format!("inclusion-{index}.tlog-proof");
        write(out, &path, proof_file(&ledger, index).encode());
        verdicts.push(valid(&path));
    }
    ledger.export(&out.join("export"));
    verdicts.push(valid("export"));
    verdicts.extend(tampered_exports(&ledger, out));
    verdicts.extend(tampered_proofs(&ledger, out));
    verdicts.sort_by(|a, b| a.path.cmp(&b.path));
    write(out, "verdicts.json", render(&verdicts));
    verdicts
}

fn tampered_exports(ledger: &Ledger, out: &Path) -> Vec<Verdict> {
    let checkpoint = ledger.checkpoint(SIZE);
    let raw = |name: &str, entries: &[Vec<u8>], checkpoint: &str| {
        write_raw_export(&out.join("tampered").join(name), entries, checkpoint);
        format!("tampered/{name}")
    };
    let with = |seq: usize, entry: Vec<u8>| {
        let mut entries = ledger.entries.clone();
        entries[seq] = entry;
        entries
    };
    let mut verdicts = Vec::new();

    // Only the bundle is edited: a JSON value, then a signature byte.
    let dir = out.join("tampered/modified-byte");
    ledger.export(&dir);
    modify_entry(&dir, 3, |e| *e = replace_once(e, "\"ts\":\"2026", "\"ts\":\"2027"));
    verdicts.push(invalid("tampered/modified-byte", "signature", Some(3)));
    let dir = out.join("tampered/bad-signature");
    ledger.export(&dir);
    modify_entry(&dir, 1, |e| {
        let at = e.iter().rposition(|&b| b == b' ').expect("signature line") + 20;
        e[at] = if e[at] == b'A' { b'B' } else { b'A' };
    });
    verdicts.push(invalid("tampered/bad-signature", "signature", Some(1)));

    // Forgeries signed by the log key: only the format rules catch them.
    let escaped = resigned(ledger, 1, |t| t.replacen("web/admin", "web\\/admin", 1));
    verdicts.push(invalid(&raw("non-canonical-json", &with(1, escaped), &checkpoint), "entry-syntax", Some(1)));
    let duplicate = resigned(ledger, 2, |t| {
        t.replacen("\"request\":\"req-0001\"", "\"request\":\"req-0001\",\"request\":\"x\"", 1)
    });
    verdicts.push(invalid(&raw("duplicate-key", &with(2, duplicate), &checkpoint), "entry-syntax", Some(2)));
    let mut wrong_prev = ledger.events[4].clone();
    wrong_prev.prev = [0xff; 32];
    let wrong_prev = wrong_prev.sign(&[ledger.signer_at(4)]).expect("valid event");
    verdicts.push(invalid(&raw("wrong-prev", &with(4, wrong_prev), &checkpoint), "prev-hash", Some(4)));
    let mut swapped = ledger.entries.clone();
    swapped.swap(2, 3);
    verdicts.push(invalid(&raw("reordered", &swapped, &checkpoint), "sequence", Some(2)));
    let attacker = signer(ORIGIN, &ATTACKER_SEED);
    let unsigned = ledger.events[ROTATION as usize].sign(&[&ledger.initial, &attacker]).expect("valid event");
    let path = raw("rotation-not-cosigned", &with(ROTATION as usize, unsigned), &checkpoint);
    verdicts.push(invalid(&path, "signature", Some(ROTATION)));

    // Another log's entry, another key's ledger, a short bundle.
    let other = Ledger::build(Spec::new(SIZE).origin(OTHER_ORIGIN).seed(OTHER_LOG_SEED));
    let path = raw("other-log-entry", &with(2, other.entries[2].clone()), &checkpoint);
    verdicts.push(invalid(&path, "origin", Some(2)));
    Ledger::build(Spec::new(SIZE).seed(ATTACKER_SEED)).export(&out.join("tampered/key-substitution"));
    verdicts.push(invalid("tampered/key-substitution", "key-not-in-force", Some(0)));
    let dir = out.join("tampered/truncated");
    ledger.export(&dir);
    let (bundle, entries) = bundles(&dir).remove(0);
    fs::write(dir.join(bundle), encode_bundle(entries[..4].iter().map(Vec::as_slice))).expect("rewrite bundle");
    verdicts.push(invalid("tampered/truncated", "entry-missing", Some(4)));

    // Honest-looking exports that only the anchor (the larger checkpoint) exposes.
    let anchor = Some(format!("checkpoint-{SIZE}"));
    ledger.export_prefix(&out.join("tampered/rolled-back"), OLD_SIZE);
    verdicts.push(Verdict { anchor: anchor.clone(), ..invalid("tampered/rolled-back", "truncation", None) });
    Ledger::build(Spec::new(SIZE).rotating_at(ROTATION).forked_at(4)).export(&out.join("tampered/forked"));
    verdicts.push(Verdict { anchor, ..invalid("tampered/forked", "fork", Some(SIZE - 1)) });
    verdicts
}

fn tampered_proofs(ledger: &Ledger, out: &Path) -> Vec<Verdict> {
    let mut files: Vec<(&str, String, &'static str)> = Vec::new();
    let good = proof_file(ledger, 2);
    let mut wrong_index = good.clone();
    wrong_index.index = 3;
    files.push(("wrong-index", wrong_index.encode(), "entry-mismatch"));
    let mut truncated = good.clone();
    truncated.proof.pop();
    files.push(("truncated-proof", truncated.encode(), "inclusion"));
    let mut modified = good.clone();
    modified.extra = Some(replace_once(&ledger.entries[2], "\"ts\":\"2026", "\"ts\":\"2027"));
    files.push(("modified-entry", modified.encode(), "signature"));
    let mut spliced = good.clone();
    spliced.extra = Some(Ledger::build(Spec::new(SIZE).origin(OTHER_ORIGIN).seed(OTHER_LOG_SEED)).entries[2].clone());
    files.push(("other-log-entry", spliced.encode(), "entry-mismatch"));
    let mut forged = good.clone();
    forged.checkpoint = checkpoint_over(ORIGIN, &ledger.entries, &signer(ORIGIN, &ATTACKER_SEED)).into_bytes();
    files.push(("forged-checkpoint", forged.encode(), "checkpoint-signature"));
    files.push(("garbage-line", good.encode().replacen("\n\n", "\nnot a hash\n\n", 1), "malformed"));
    // Leaf/node confusion: the children of node (0, 1) offered as the entry at index 0, with
    // the proof that node would have as leaf 0 of a half-size tree.
    let leaves = ledger.leaves();
    let node_pair = ProofFile {
        extra: Some([leaves[0], leaves[1]].concat()),
        index: 0,
        proof: vec![merkle::node_hash(&leaves[2], &leaves[3]), merkle::root_of(&leaves[4..])],
        checkpoint: ledger.checkpoint(SIZE).into_bytes(),
    };
    files.push(("node-as-entry", node_pair.encode(), "entry-syntax"));
    files
        .into_iter()
        .map(|(name, text, code)| {
            let path = format!("tampered-proofs/{name}.tlog-proof");
            write(out, &path, text);
            invalid(&path, code, None)
        })
        .collect()
}

fn render(verdicts: &[Verdict]) -> String {
    let mut out = String::from("{\n");
    for (i, v) in verdicts.iter().enumerate() {
        let check = v.check.map_or("null".to_string(), |c| format!("\"{c}\""));
        write!(out, "  \"{}\": {{\"valid\": {}, \"check\": {check}", v.path, v.check.is_none()).expect("write");
        if let Some(seq) = v.seq {
            write!(out, ", \"seq\": {seq}").expect("write");
        }
        if let Some(anchor) = &v.anchor {
            write!(out, ", \"anchor\": \"{anchor}\"").expect("write");
        }
        out.push_str(if i + 1 < verdicts.len() { "},\n" } else { "}\n" });
    }
    out.push_str("}\n");
    out
}

/// The checked-in files, except the hand-written README.
fn checked_in() -> Vec<String> {
    if !Path::new(TESTDATA).is_dir() {
        return Vec::new();
    }
    files(Path::new(TESTDATA)).into_iter().filter(|f| f != README).collect()
}

/// Makes `schemas/testdata` equal `generated`: writes only what differs, removes what is stale.
fn regenerate(generated: &Path, stale: &[String]) {
    let testdata = Path::new(TESTDATA);
    for file in files(generated) {
        let bytes = fs::read(generated.join(&file)).expect("read generated");
        if fs::read(testdata.join(&file)).ok().as_ref() != Some(&bytes) {
            write(testdata, &file, bytes);
            eprintln!("wrote schemas/testdata/{file}");
        }
    }
    for file in stale {
        fs::remove_file(testdata.join(file)).expect("remove stale vector");
        eprintln!("removed schemas/testdata/{file}");
        let mut dir = testdata.join(file);
        while dir.pop() && dir != testdata && fs::remove_dir(&dir).is_ok() {}
    }
}

#[test]
fn checked_in_vectors_match_the_generator() {
    // Given the vectors generated afresh from fixed seeds and timestamps.
    let generated = temp_dir();
    generate(generated.path());
    let fresh = files(generated.path());
    let stored = checked_in();
    let stale: Vec<String> = stored.iter().filter(|f| !fresh.contains(f)).cloned().collect();

    if std::env::var(REGENERATE).is_ok_and(|v| v == "1") {
        regenerate(generated.path(), &stale);
        return;
    }
    // Then the checked-in files are exactly those, byte for byte.
    let mut differences: Vec<String> =
        stale.iter().map(|f| format!("{f}: checked in but no longer generated")).collect();
    for file in &fresh {
        match fs::read(Path::new(TESTDATA).join(file)) {
            Err(_) => differences.push(format!("{file}: generated but not checked in")),
            Ok(bytes) if bytes != fs::read(generated.path().join(file)).expect("read generated") => {
                differences.push(format!("{file}: differs from the generator's output"));
            }
            Ok(_) => {}
        }
    }
    assert!(
        differences.is_empty(),
        "schemas/testdata is out of date ({} files); after an intended format change, run\n  \
         {REGENERATE}=1 cargo nextest run --test it -E 'test(=format_vectors::checked_in_vectors_match_the_generator)'\n{}",
        differences.len(),
        differences.join("\n")
    );
}

#[test]
fn the_generator_is_deterministic() {
    let (first, second) = (temp_dir(), temp_dir());
    generate(first.path());
    generate(second.path());
    let names = files(first.path());
    assert_eq!(names, files(second.path()));
    for name in names {
        assert_eq!(fs::read(first.path().join(&name)).unwrap(), fs::read(second.path().join(&name)).unwrap(), "{name}");
    }
}

fn pinned_keys() -> KeySet {
    let text = fs::read_to_string(Path::new(TESTDATA).join("keys/pinned.txt")).expect("keys/pinned.txt");
    KeySet::new(text.lines().map(|line| PinnedKey::parse(line).expect("pinned key")).collect())
}

/// Verifies one vector; returns the failure code and seq, or `None` when it verifies.
fn outcome(path: &str, anchor: Option<&str>, keys: &KeySet) -> Option<(String, Option<u64>)> {
    let target = Path::new(TESTDATA).join(path);
    if path.ends_with(".tlog-proof") {
        let bytes = fs::read(&target).expect("read proof file");
        let result = ProofFile::parse(&bytes).and_then(|file| file.verify(keys).map(|_| ()));
        return result.err().map(|e| (proof_code(&e).to_string(), None));
    }
    let anchor = anchor.map(|a| fs::read(Path::new(TESTDATA).join(a)).expect("read anchor"));
    verify_with(&target, keys, anchor.as_deref(), false).err().map(|f| (f.check.code().to_string(), f.seq))
}

#[test]
fn every_checked_in_vector_gets_its_recorded_verdict() {
    // Given the recorded verdicts and the pinned keys.
    let text = fs::read(Path::new(TESTDATA).join("verdicts.json")).expect("verdicts.json is checked in");
    let verdicts: Value = serde_json::from_slice(&text).expect("verdicts.json is JSON");
    let verdicts = verdicts.as_object().expect("an object");
    let keys = pinned_keys();

    // When each vector is verified.
    let mut mismatches = Vec::new();
    for (path, verdict) in verdicts {
        let want_valid = verdict["valid"].as_bool().expect("valid is a boolean");
        let want = verdict["check"].as_str().map(|c| (c.to_string(), verdict["seq"].as_u64()));
        assert_eq!(want_valid, want.is_none(), "{path}: valid and check agree");
        let got = outcome(path, verdict["anchor"].as_str(), &keys);
        if got != want {
            mismatches.push(format!("{path}: recorded {want:?}, verifier says {got:?}"));
        }
    }

    // Then every verdict holds, and the set covers every vector of both outcomes.
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    let valid_count = verdicts.values().filter(|v| v["valid"] == true).count();
    assert!(valid_count >= 3 && verdicts.len() - valid_count >= 15, "{valid_count} of {}", verdicts.len());
    let inputs = ["keys/", "entries/", "checkpoint-", "consistency-", "verdicts.json"];
    for name in checked_in() {
        let covered = verdicts.keys().any(|k| name == *k || name.starts_with(&format!("{k}/")));
        assert!(covered || inputs.iter().any(|p| name.starts_with(p)), "{name} has no verdict");
    }
}

#[test]
fn checked_in_entries_form_a_signed_chain_under_the_checkpoints() {
    // Checked without the export verifier: entry by entry, then the tree.
    let keys = pinned_keys();
    let mut leaves: Vec<Hash> = Vec::new();
    for seq in 0..SIZE {
        let entry = fs::read(Path::new(TESTDATA).join(format!("entries/{seq}.entry"))).expect("entry");
        let parsed = ParsedEntry::parse(&entry).expect("entry parses");
        assert_eq!(parsed.event.seq, seq);
        assert_eq!(parsed.event.log, ORIGIN);
        assert_eq!(parsed.event.prev, leaves.last().copied().unwrap_or([0; 32]), "prev of {seq}");
        let text = &entry[..parsed.text_len];
        assert!(keys.candidates(seq).any(|k| k.verify(text, &parsed.signatures[0])), "signature of {seq}");
        if let Some(new_key) = &parsed.new_key {
            assert_eq!(seq, ROTATION);
            assert!(new_key.verify(text, &parsed.signatures[1]), "the new key co-signs the rotation");
            assert!(keys.candidates(seq + 1).any(|k| k == new_key), "the new key is pinned from {}", seq + 1);
        }
        leaves.push(leaf_hash(&entry));
    }
    let mut roots = Vec::new();
    for size in [OLD_SIZE, SIZE] {
        let note = fs::read(Path::new(TESTDATA).join(format!("checkpoint-{size}"))).expect("checkpoint");
        let signed = SignedCheckpoint::parse(&note).expect("checkpoint parses");
        assert!(keys.candidates(size).any(|k| signed.verify(k).is_ok()), "checkpoint-{size} is signed");
        assert_eq!(signed.checkpoint.size, size);
        assert_eq!(signed.checkpoint.root, merkle::root_of(&leaves[..size as usize]), "root of {size}");
        roots.push(signed.checkpoint.root);
    }
    let text = fs::read_to_string(Path::new(TESTDATA).join(format!("consistency-{OLD_SIZE}-{SIZE}.txt"))).unwrap();
    let mut lines = text.lines();
    let old: u64 = lines.next().and_then(|l| l.parse().ok()).expect("old size");
    let new: u64 = lines.next().and_then(|l| l.parse().ok()).expect("new size");
    let proof: Vec<Hash> = lines.map(|l| B64.decode(l).unwrap().try_into().expect("32 bytes")).collect();
    assert_eq!((old, new), (OLD_SIZE, SIZE));
    merkle::verify_consistency(old, new, &roots[0], &roots[1], &proof).expect("the consistency proof verifies");
    let mut forged = proof.clone();
    forged[0][0] ^= 1;
    assert!(merkle::verify_consistency(old, new, &roots[0], &roots[1], &forged).is_err());
}
