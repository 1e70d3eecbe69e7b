//! Known-answer tests from the shared vectors: the transparency-dev/merkle
//! RFC 9162 proof vectors and the C2SP signed-note example.

use crate::support::shared_vectors;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use portcullis_format::merkle::{self, Hash};
use portcullis_format::note::{self, Note, VerifierKey};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

/// The number of proof vector files the shared set holds.
const EXPECTED_VECTOR_FILES: usize = 196;

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let listing = fs::read_dir(&current).unwrap_or_else(|e| panic!("cannot list {}: {e}", current.display()));
        for entry in listing {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "json") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn bytes(case: &Value, field: &str) -> Vec<u8> {
    let text = case[field].as_str().unwrap_or_else(|| panic!("{field} is not a string"));
    B64.decode(text).unwrap_or_else(|e| panic!("{field} is not base64: {e}"))
}

fn number(case: &Value, field: &str) -> u64 {
    case[field].as_u64().unwrap_or_else(|| panic!("{field} is not an unsigned integer"))
}

/// The proof's hashes, or `None` when an element is not 32 bytes (which a verifier must reject).
fn proof(case: &Value) -> Option<Vec<Hash>> {
    match &case["proof"] {
        Value::Null => Some(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|item| B64.decode(item.as_str().expect("proof element is a string")).ok()?.try_into().ok())
            .collect(),
        other => panic!("proof is neither an array nor null: {other}"),
    }
}

/// Whether the verifier rejects an inclusion case.
fn inclusion_rejected(case: &Value) -> bool {
    let Ok(leaf) = Hash::try_from(bytes(case, "leafHash")) else {
        return true;
    };
    let Some(proof) = proof(case) else { return true };
    let root = bytes(case, "root");
    merkle::verify_inclusion(number(case, "leafIdx"), number(case, "treeSize"), &leaf, &proof, &root).is_err()
}

/// Whether the verifier rejects a consistency case.
fn consistency_rejected(case: &Value) -> bool {
    let Some(proof) = proof(case) else { return true };
    let (old, new) = (number(case, "size1"), number(case, "size2"));
    merkle::verify_consistency(old, new, &bytes(case, "root1"), &bytes(case, "root2"), &proof).is_err()
}

/// Runs every case of one kind; returns the number of files and the mismatches.
fn run(kind: &str, rejected: fn(&Value) -> bool) -> (usize, Vec<String>) {
    let dir = shared_vectors().join("rfc9162-merkle").join(kind);
    let files = json_files(&dir);
    let mut mismatches = Vec::new();
    for path in &files {
        let case: Value = serde_json::from_slice(&fs::read(path).expect("read vector")).expect("vector is JSON");
        let want_err = case["wantErr"].as_bool().expect("wantErr is a boolean");
        let got_err = rejected(&case);
        if got_err != want_err {
            let relative = path.strip_prefix(&dir).unwrap_or(path).display().to_string();
            mismatches.push(format!("{kind}/{relative} ({}): wantErr {want_err}, got {got_err}", case["desc"]));
        }
    }
    (files.len(), mismatches)
}

#[test]
fn every_rfc9162_proof_vector_gets_the_expected_verdict() {
    // Given the 196 shared proof vectors.
    // When each is verified.
    let (inclusion_files, mut mismatches) = run("inclusion", inclusion_rejected);
    let (consistency_files, more) = run("consistency", consistency_rejected);
    mismatches.extend(more);

    // Then every verdict matches wantErr, and none were skipped.
    assert!(inclusion_files > 0 && consistency_files > 0, "both kinds of vectors are present");
    assert_eq!(inclusion_files + consistency_files, EXPECTED_VECTOR_FILES, "vector files found");
    assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));
}

#[test]
fn rfc9162_vectors_include_accepted_and_rejected_cases_of_each_kind() {
    // A guard against a vacuous pass: the set must exercise both outcomes.
    for kind in ["inclusion", "consistency"] {
        let files = json_files(&shared_vectors().join("rfc9162-merkle").join(kind));
        let verdicts: Vec<bool> = files
            .iter()
            .map(|p| serde_json::from_slice::<Value>(&fs::read(p).expect("read")).expect("JSON")["wantErr"] == true)
            .collect();
        assert!(verdicts.contains(&true) && verdicts.contains(&false), "{kind} has both verdicts");
    }
}

/// The key and note of `signed-note.txt`: `vkey: <key>`, a `note:` line, then the note verbatim.
fn signed_note_example() -> (VerifierKey, Vec<u8>) {
    let path = shared_vectors().join("signed-note.txt");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (first, rest) = text.split_once('\n').expect("a vkey line");
    let vkey = first.strip_prefix("vkey: ").expect("vkey: prefix");
    let note = rest.strip_prefix("note:\n").expect("note: line");
    (VerifierKey::parse(vkey).expect("the example key parses"), note.as_bytes().to_vec())
}

fn note_accepted(key: &VerifierKey, bytes: &[u8]) -> bool {
    Note::parse(bytes).is_ok_and(|n| note::verify_note(&n, std::slice::from_ref(key)).is_ok())
}

#[test]
fn the_signed_note_example_verifies_with_its_key() {
    let (key, bytes) = signed_note_example();
    assert_eq!(key.key_id(), 0x530d_903a);
    assert_eq!(key.name(), "example.com/foo");
    let parsed = Note::parse(&bytes).expect("the example note parses");
    assert_eq!(parsed.text, "This is an example message.\n");
    assert_eq!(parsed.signatures.len(), 1);
    assert_eq!(parsed.signatures[0].key_id, 0x530d_903a);
    let signed = note::verify_note(&parsed, std::slice::from_ref(&key)).expect("the example note verifies");
    assert_eq!(signed, vec![&key]);
}

#[test]
fn flipping_any_byte_of_the_signed_note_example_makes_it_fail() {
    // Given the example note, which verifies.
    let (key, bytes) = signed_note_example();
    assert!(note_accepted(&key, &bytes));

    // When any single byte of the text or of the signature line is changed in any way.
    let mut accepted = Vec::new();
    for offset in 0..bytes.len() {
        for mask in 1..=255u8 {
            let mut tampered = bytes.clone();
            tampered[offset] ^= mask;
            if note_accepted(&key, &tampered) {
                accepted.push((offset, mask));
            }
        }
    }

    // Then the verifier rejects every variant.
    assert!(accepted.is_empty(), "tampered notes accepted at (offset, xor): {accepted:?}");
}

#[test]
fn the_signed_note_example_is_refused_under_another_key_or_name() {
    let (key, bytes) = signed_note_example();
    let parsed = Note::parse(&bytes).expect("parses");
    let other = crate::support::signer("example.com/foo", &[9u8; 32]);
    assert!(note::verify_note(&parsed, std::slice::from_ref(other.verifier())).is_err());
    let renamed = VerifierKey::new("example.com/bar", *key.verifying_key()).expect("valid key");
    assert!(note::verify_note(&parsed, std::slice::from_ref(&renamed)).is_err());
}
