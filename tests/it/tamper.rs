//! Attacks on an export, one test each: the verifier must refuse every one,
//! naming the check that caught it and, where there is one, the first bad entry.
//!
//! Each test starts from an export that verifies (given), applies one attack
//! (when), and asserts the verifier's verdict (then).

use crate::support::*;
use portcullis_format::keys::{KeySet, PinnedKey};
use portcullis_format::merkle::{self, inclusion_proof, leaf_hash, node_hash, root_of, verify_inclusion};
use portcullis_format::note::Note;
use portcullis_format::proof_file::{ProofFile, ProofFileError};
use portcullis_format::tiles::encode_bundle;
use portcullis_format::verify::Check;
use proptest::prelude::*;
use std::fs;
use std::path::Path;
use std::sync::OnceLock;

/// A ledger of `size` entries exported to a temporary directory, checked to verify.
fn given_export(spec: Spec) -> (Ledger, tempfile::TempDir) {
    let ledger = Ledger::build(spec);
    let dir = temp_dir();
    ledger.export(dir.path());
    let summary = verify(dir.path(), &ledger.keys()).expect("the untampered export verifies");
    assert_eq!(summary.entries_verified, ledger.size());
    (ledger, dir)
}

/// Writes `entries` as a fresh export whose checkpoint the log key signs (an insider's rewrite).
fn rewritten_export(ledger: &Ledger, entries: &[Vec<u8>]) -> tempfile::TempDir {
    let dir = temp_dir();
    let checkpoint = checkpoint_over(ORIGIN, entries, ledger.signer_at(entries.len() as u64));
    write_raw_export(dir.path(), entries, &checkpoint);
    dir
}

/// A tampering of raw entry bytes.
type EntryEdit = fn(&[u8]) -> Vec<u8>;
/// An edit of an entry's note text before it is signed again.
type TextEdit = fn(&str) -> String;

/// The offset of the base64 signature of an entry's last signature line.
fn signature_offset(entry: &[u8]) -> usize {
    entry.iter().rposition(|&b| b == b' ').expect("a signature line") + 1
}

#[test]
fn a_raw_export_of_an_honest_ledger_equals_the_export_writers() {
    // The attacker's writer used below must produce exactly what ExportWriter does.
    let (ledger, honest) = given_export(Spec::new(300).rotating_at(100));
    let raw = temp_dir();
    write_raw_export(raw.path(), &ledger.entries, &ledger.checkpoint(300));
    assert_eq!(files(raw.path()), files(honest.path()));
    for file in files(honest.path()) {
        assert_eq!(fs::read(raw.path().join(&file)).unwrap(), fs::read(honest.path().join(&file)).unwrap(), "{file}");
    }
}

#[test]
fn a_changed_json_value_in_an_entry_fails_that_entrys_signature() {
    let (ledger, dir) = given_export(Spec::new(6));
    modify_entry(dir.path(), 3, |entry| *entry = replace_once(entry, "\"ts\":\"2026", "\"ts\":\"2027"));
    let failure = assert_fails(verify(dir.path(), &ledger.keys()), Check::Signature, Some(3));
    assert!(failure.reason.contains("does not verify"), "{failure}");
}

#[test]
fn a_changed_json_byte_that_breaks_the_syntax_is_an_entry_syntax_error() {
    let (ledger, dir) = given_export(Spec::new(6));
    modify_entry(dir.path(), 2, |entry| *entry = replace_once(entry, "{\"actor\":", "[\"actor\":"));
    assert_fails(verify(dir.path(), &ledger.keys()), Check::EntrySyntax, Some(2));
}

#[test]
fn a_changed_byte_in_an_entry_signature_fails_that_entrys_signature() {
    let (ledger, dir) = given_export(Spec::new(6));
    modify_entry(dir.path(), 4, |entry| {
        let at = signature_offset(entry) + 20;
        entry[at] = if entry[at] == b'A' { b'B' } else { b'A' };
    });
    assert_fails(verify(dir.path(), &ledger.keys()), Check::Signature, Some(4));
}

#[test]
fn a_changed_key_id_in_an_entry_signature_is_not_the_key_in_force() {
    let (ledger, dir) = given_export(Spec::new(6));
    modify_entry(dir.path(), 1, |entry| {
        let at = signature_offset(entry);
        entry[at] = if entry[at] == b'A' { b'B' } else { b'A' };
    });
    let failure = assert_fails(verify(dir.path(), &ledger.keys()), Check::Signature, Some(1));
    assert!(failure.reason.contains("not by the key in force"), "{failure}");
}

#[test]
fn a_deleted_entry_breaks_the_sequence_at_its_position() {
    // Given an insider who deletes entry 2, recomputes everything and signs a new checkpoint.
    let (ledger, _) = given_export(Spec::new(6));
    let mut entries = ledger.entries.clone();
    entries.remove(2);
    let dir = rewritten_export(&ledger, &entries);
    // Then entry 3 now sits at position 2.
    let failure = assert_fails(verify(dir.path(), &ledger.keys()), Check::Sequence, Some(2));
    assert!(failure.reason.contains("seq 3"), "{failure}");
}

#[test]
fn a_deleted_entry_under_the_old_checkpoint_leaves_the_bundle_short() {
    let (ledger, dir) = given_export(Spec::new(6));
    let (path, mut entries) = bundles(dir.path()).remove(0);
    entries.remove(2);
    fs::write(dir.path().join(path), encode_bundle(entries.iter().map(Vec::as_slice))).unwrap();
    assert_fails(verify(dir.path(), &ledger.keys()), Check::EntryMissing, Some(5));
}

#[test]
fn an_inserted_entry_signed_by_an_attacker_key_fails_its_signature() {
    let (ledger, _) = given_export(Spec::new(6));
    let attacker = signer(ORIGIN, &ATTACKER_SEED);
    let forged = event(ORIGIN, 2, leaf_hash(&ledger.entries[1])).sign(&[&attacker]).unwrap();
    let mut entries = ledger.entries.clone();
    entries.insert(2, forged);
    let dir = temp_dir();
    write_raw_export(dir.path(), &entries, &checkpoint_over(ORIGIN, &entries, &attacker));
    assert_fails(verify(dir.path(), &ledger.keys()), Check::Signature, Some(2));
}

#[test]
fn an_inserted_entry_signed_by_the_log_key_breaks_the_chain_after_it() {
    // Given an insider who inserts a validly signed, validly chained entry at 2.
    let (ledger, _) = given_export(Spec::new(6));
    let mut forged_event = event(ORIGIN, 2, leaf_hash(&ledger.entries[1]));
    forged_event.draft.id.0[0] ^= 0xff;
    let forged = forged_event.sign(&[&ledger.initial]).unwrap();
    let mut entries = ledger.entries.clone();
    entries.insert(2, forged);
    let dir = rewritten_export(&ledger, &entries);
    // Then the old entry 2, now at position 3, no longer fits.
    assert_fails(verify(dir.path(), &ledger.keys()), Check::Sequence, Some(3));
}

#[test]
fn an_entry_appended_beyond_the_checkpoint_is_not_committed() {
    let (ledger, _) = given_export(Spec::new(7));
    let dir = temp_dir();
    write_raw_export(dir.path(), &ledger.entries, &ledger.checkpoint(6));
    let failure = assert_fails(verify(dir.path(), &ledger.keys()), Check::Layout, None);
    assert!(failure.path.is_some(), "{failure:?}");
}

/// Regression: an extra file named like a tile of index near 2^64 made the
/// verifier multiply the index by 256 and overflow (a panic) while naming the layout error.
#[test]
fn an_extra_tile_with_a_huge_index_is_a_layout_error_not_an_overflow() {
    let (ledger, dir) = given_export(Spec::new(3));
    for path in ["tile/entries/x018/x446/x744/x073/x709/x551/615", "tile/0/x018/x446/x744/x073/x709/x551/615.p/3"] {
        let file = dir.path().join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, b"x").unwrap();
        let failure = assert_fails(verify(dir.path(), &ledger.keys()), Check::Layout, None);
        assert_eq!(failure.path.as_deref(), Some(path));
        fs::remove_file(&file).unwrap();
    }
}

/// Regression: the verifier followed symbolic links into directories (two
/// links to the parent made the walk exponential: a hang) and read a FIFO
/// named like a tile (blocking forever). Both are layout errors now.
#[test]
fn a_symlink_loop_or_a_fifo_in_an_export_is_a_layout_error_not_a_hang() {
    let (ledger, dir) = given_export(Spec::new(3));
    for link in ["tile/a", "tile/b"] {
        std::os::unix::fs::symlink("..", dir.path().join(link)).unwrap();
    }
    let failure = assert_fails(verify(dir.path(), &ledger.keys()), Check::Layout, None);
    assert_eq!(failure.path.as_deref(), Some("tile/a"));
    for link in ["tile/a", "tile/b"] {
        fs::remove_file(dir.path().join(link)).unwrap();
    }

    let tile = dir.path().join("tile/0/000.p/3");
    fs::remove_file(&tile).unwrap();
    let c_path = std::ffi::CString::new(tile.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path and touches no memory of ours.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let failure = assert_fails(verify(dir.path(), &ledger.keys()), Check::Layout, None);
    assert_eq!(failure.path.as_deref(), Some("tile/0/000.p/3"));
}

#[test]
fn two_swapped_entries_break_the_sequence_at_the_first() {
    let (ledger, dir) = given_export(Spec::new(6));
    let (path, mut entries) = bundles(dir.path()).remove(0);
    entries.swap(2, 3);
    fs::write(dir.path().join(path), encode_bundle(entries.iter().map(Vec::as_slice))).unwrap();
    assert_fails(verify(dir.path(), &ledger.keys()), Check::Sequence, Some(2));
    // Recomputing the tiles and re-signing the checkpoint does not help.
    let rewritten = rewritten_export(&ledger, &entries);
    assert_fails(verify(rewritten.path(), &ledger.keys()), Check::Sequence, Some(2));
}

#[test]
fn a_tail_truncated_export_is_refused_against_a_larger_pinned_checkpoint() {
    // Given a ledger of 8 and an auditor who pinned its checkpoint at 8.
    let ledger = Ledger::build(Spec::new(8));
    let (_, anchor) = ledger.prefix(8);
    // When the export offered is an honest-looking prefix of 5.
    let dir = temp_dir();
    ledger.export_prefix(dir.path(), 5);
    verify(dir.path(), &ledger.keys()).expect("the prefix alone verifies");
    // Then only the anchor reveals the truncation.
    assert_fails(verify_with(dir.path(), &ledger.keys(), Some(anchor.as_bytes()), false), Check::Truncation, None);
    // And a smaller anchor of the same log is consistent with it.
    let summary = verify_with(dir.path(), &ledger.keys(), Some(ledger.checkpoint(3).as_bytes()), false).unwrap();
    assert_eq!(summary.anchor_size, Some(3));
}

#[test]
fn removed_entries_under_the_old_checkpoint_are_missing() {
    let (ledger, dir) = given_export(Spec::new(6));
    let (path, mut entries) = bundles(dir.path()).remove(0);
    entries.truncate(3);
    fs::write(dir.path().join(path), encode_bundle(entries.iter().map(Vec::as_slice))).unwrap();
    assert_fails(verify(dir.path(), &ledger.keys()), Check::EntryMissing, Some(3));
}

#[test]
fn a_removed_entry_bundle_is_missing_from_its_first_entry() {
    let (ledger, dir) = given_export(Spec::new(300));
    fs::remove_file(dir.path().join("tile/entries/001.p/44")).unwrap();
    assert_fails(verify(dir.path(), &ledger.keys()), Check::EntryMissing, Some(256));
}

#[test]
fn an_anchor_of_the_same_size_with_another_root_is_a_fork() {
    // Given the log signed an alternative history from entry 3 on.
    let (ledger, dir) = given_export(Spec::new(6));
    let other = Ledger::build(Spec::new(6).forked_at(3));
    let failure = verify_with(dir.path(), &ledger.keys(), Some(other.checkpoint(6).as_bytes()), false);
    assert_fails(failure, Check::Fork, Some(5));
}

#[test]
fn an_anchor_of_a_smaller_size_with_another_root_is_a_fork() {
    let (ledger, dir) = given_export(Spec::new(6));
    let other = Ledger::build(Spec::new(6).forked_at(1));
    let anchor = other.checkpoint(3);
    assert_fails(verify_with(dir.path(), &ledger.keys(), Some(anchor.as_bytes()), false), Check::Fork, Some(2));
}

#[test]
fn an_anchor_not_signed_by_the_pinned_key_is_refused() {
    let (ledger, dir) = given_export(Spec::new(6));
    let forged = Ledger::build(Spec::new(6).seed(ATTACKER_SEED)).checkpoint(3);
    assert_fails(verify_with(dir.path(), &ledger.keys(), Some(forged.as_bytes()), false), Check::Anchor, None);
}

#[test]
fn a_stale_checkpoint_is_refused_against_a_newer_anchor() {
    // Given a full export of 6 whose checkpoint file is replaced by the older one of size 4.
    let (ledger, dir) = given_export(Spec::new(6));
    fs::write(dir.path().join("checkpoint"), ledger.checkpoint(4)).unwrap();
    // Then against the anchor at 6 it is stale; without one, the files do not fit its size.
    let anchor = ledger.checkpoint(6);
    assert_fails(verify_with(dir.path(), &ledger.keys(), Some(anchor.as_bytes()), false), Check::Truncation, None);
    assert_fails(verify(dir.path(), &ledger.keys()), Check::Layout, None);
}

#[test]
fn an_entry_spliced_from_another_log_fails_the_origin_check() {
    let (ledger, dir) = given_export(Spec::new(6));
    let other = Ledger::build(Spec::new(6).origin(OTHER_ORIGIN).seed(OTHER_LOG_SEED));
    modify_entry(dir.path(), 2, |entry| *entry = other.entries[2].clone());
    assert_fails(verify(dir.path(), &ledger.keys()), Check::Origin, Some(2));
}

#[test]
fn an_entry_from_a_log_of_the_same_name_but_another_key_breaks_the_chain() {
    let (ledger, dir) = given_export(Spec::new(6));
    let other = Ledger::build(Spec::new(6).seed(OTHER_LOG_SEED));
    modify_entry(dir.path(), 2, |entry| *entry = other.entries[2].clone());
    assert_fails(verify(dir.path(), &ledger.keys()), Check::PrevHash, Some(2));
}

#[test]
fn a_whole_export_replayed_from_another_log_is_refused() {
    let (ledger, _) = given_export(Spec::new(6));
    let (other, other_dir) = given_export(Spec::new(6).origin(OTHER_ORIGIN).seed(OTHER_LOG_SEED));
    // Its own checkpoint: no pinned key signed any of it.
    assert_fails(verify(other_dir.path(), &ledger.keys()), Check::KeyNotInForce, Some(0));
    // Under this log's checkpoint: the first entry belongs to another log.
    let dir = temp_dir();
    write_raw_export(dir.path(), &other.entries, &ledger.checkpoint(6));
    assert_fails(verify(dir.path(), &ledger.keys()), Check::Origin, Some(0));
}

#[test]
fn a_ledger_resigned_with_an_attacker_key_is_refused_by_the_pinned_key() {
    let (ledger, _) = given_export(Spec::new(6));
    let (_, forged) = given_export(Spec::new(6).seed(ATTACKER_SEED));
    assert_fails(verify(forged.path(), &ledger.keys()), Check::KeyNotInForce, Some(0));
}

#[test]
fn a_checkpoint_resigned_with_an_attacker_key_is_refused() {
    let (ledger, dir) = given_export(Spec::new(6));
    let forged = checkpoint_over(ORIGIN, &ledger.entries, &signer(ORIGIN, &ATTACKER_SEED));
    fs::write(dir.path().join("checkpoint"), forged).unwrap();
    assert_fails(verify(dir.path(), &ledger.keys()), Check::CheckpointSignature, None);
}

#[test]
fn entries_resigned_with_an_attacker_key_from_the_middle_on_fail_at_the_first() {
    let (ledger, _) = given_export(Spec::new(6));
    let attacker = signer(ORIGIN, &ATTACKER_SEED);
    let mut entries = ledger.entries[..3].to_vec();
    for seq in 3..6 {
        let prev = leaf_hash(entries.last().unwrap());
        entries.push(event(ORIGIN, seq, prev).sign(&[&attacker]).unwrap());
    }
    let dir = temp_dir();
    write_raw_export(dir.path(), &entries, &checkpoint_over(ORIGIN, &entries, &attacker));
    assert_fails(verify(dir.path(), &ledger.keys()), Check::Signature, Some(3));
}

#[test]
fn a_node_hash_cannot_pass_as_a_leaf_at_the_checkpoints_size() {
    // Given a tree of 4 entries: node n01 = H(0x01 || l0 || l1) is "leaf 0" of a 2-leaf tree with the same root.
    let ledger = Ledger::build(Spec::new(4));
    let leaves = ledger.leaves();
    let (n01, n23) = (node_hash(&leaves[0], &leaves[1]), node_hash(&leaves[2], &leaves[3]));
    let root = root_of(&leaves);
    assert!(verify_inclusion(0, 2, &n01, &[n23], &root).is_ok(), "the hazard the checks below guard against");
    // Then the proof fails at the size the checkpoint commits to,
    assert!(verify_inclusion(0, 4, &n01, &[n23], &root).is_err());
    // and no entry bytes have the node's hash as their leaf hash.
    let children = [leaves[0], leaves[1]].concat();
    let prefixed = [&[0x01][..], &children].concat();
    for bytes in [&children, &prefixed] {
        assert_ne!(leaf_hash(bytes), n01);
        assert!(verify_inclusion(0, 2, &leaf_hash(bytes), &[n23], &root).is_err());
    }
}

#[test]
fn a_tlog_proof_presenting_a_node_as_an_entry_is_refused() {
    let ledger = Ledger::build(Spec::new(4));
    let leaves = ledger.leaves();
    let n23 = node_hash(&leaves[2], &leaves[3]);
    let checkpoint = ledger.checkpoint(4).into_bytes();
    let proof_of = |extra: Vec<u8>, proof: Vec<merkle::Hash>| {
        let file = ProofFile { extra: Some(extra), index: 0, proof, checkpoint: checkpoint.clone() };
        ProofFile::parse(file.encode().as_bytes()).unwrap().verify(&ledger.keys())
    };
    // Given the honest proof of entry 0 verifies.
    proof_of(ledger.entries[0].clone(), inclusion_proof(leaves.as_slice(), 0, 4).unwrap()).unwrap();
    // When the "entry" is the node's children, with the half-size proof: not an entry.
    let children = [leaves[0], leaves[1]].concat();
    assert!(matches!(proof_of(children, vec![n23]), Err(ProofFileError::Entry(_))));
    // When a real entry comes with the half-size proof: wrong length for the checkpoint's size.
    assert!(matches!(proof_of(ledger.entries[0].clone(), vec![n23]), Err(ProofFileError::Inclusion(_))));
}

#[test]
fn a_level_0_tile_holding_a_node_hash_in_place_of_a_leaf_does_not_reach_the_root() {
    // Given a range export (first bundle absent) whose leaves before the range come from tile/0/000.
    let ledger = Ledger::build(Spec::new(300));
    let dir = temp_dir();
    ledger.export_range(dir.path(), 256);
    assert!(!dir.path().join("tile/entries/000").exists());
    let summary = verify_with(dir.path(), &ledger.keys(), None, true).expect("the range export verifies");
    assert_eq!(summary.first_entry, 256);
    // When leaf 0 is replaced by the node over leaves 0 and 1, and the level-1 tile recomputed to match.
    let mut leaves = ledger.leaves();
    leaves[0] = node_hash(&leaves[0], &leaves[1]);
    fs::write(dir.path().join("tile/0/000"), leaves[..256].concat()).unwrap();
    fs::write(dir.path().join("tile/1/000.p/1"), root_of(&leaves[..256])).unwrap();
    // Then the recomputed root is not the checkpoint's.
    assert_fails(verify_with(dir.path(), &ledger.keys(), None, true), Check::Root, None);
}

#[test]
fn malformed_entry_notes_are_entry_syntax_errors() {
    let cases: [(&str, EntryEdit); 4] = [
        ("missing blank line", |e| replace_once(e, "\n\n\u{2014} ", "\n\u{2014} ")),
        ("signature not base64", |e| {
            let mut e = e.to_vec();
            let at = signature_offset(&e) + 10;
            e[at] = b'*';
            e
        }),
        ("control character", |e| replace_once(e, "INC-4711: rotate", "INC-4711:\trotate")),
        ("no signature line", |e| {
            let text = std::str::from_utf8(e).unwrap();
            text.as_bytes()[..text.rfind("\n\n").unwrap() + 2].to_vec()
        }),
    ];
    for (name, tamper) in cases {
        let (ledger, dir) = given_export(Spec::new(6));
        modify_entry(dir.path(), 1, |entry| *entry = tamper(entry));
        let failure = verify(dir.path(), &ledger.keys()).expect_err(name);
        assert_eq!((failure.check, failure.seq), (Check::EntrySyntax, Some(1)), "{name}: {failure}");
    }
}

#[test]
fn malformed_checkpoint_notes_are_refused() {
    let (ledger, dir) = given_export(Spec::new(6));
    let good = ledger.checkpoint(6);
    let at = good.rfind(' ').unwrap() + 10;
    let variants = [
        ("missing blank line", good.replacen("\n\n", "\n", 1)),
        ("signature not base64", format!("{}*{}", &good[..at], &good[at + 1..])),
        ("control character", good.replacen("ledger\n", "ledger\u{7}\n", 1)),
    ];
    for (name, bad) in variants {
        fs::write(dir.path().join("checkpoint"), &bad).unwrap();
        assert_fails(verify(dir.path(), &ledger.keys()), Check::Checkpoint, None);
        assert!(Note::parse(bad.as_bytes()).is_err(), "{name}");
        fs::write(dir.path().join("checkpoint"), &good).unwrap();
        assert_fails(verify_with(dir.path(), &ledger.keys(), Some(bad.as_bytes()), false), Check::Anchor, None);
    }
}

#[test]
fn malformed_or_mismatched_tlog_proofs_are_refused() {
    let ledger = Ledger::build(Spec::new(6));
    let leaves = ledger.leaves();
    let file = |index: u64, entry: u64| ProofFile {
        extra: Some(ledger.entries[entry as usize].clone()),
        index,
        proof: inclusion_proof(leaves.as_slice(), entry, 6).unwrap(),
        checkpoint: ledger.checkpoint(6).into_bytes(),
    };
    let good = file(2, 2).encode();
    ProofFile::parse(good.as_bytes()).unwrap().verify(&ledger.keys()).expect("the honest proof verifies");
    for (name, bad) in [
        ("garbage line", good.replacen("\n\n", "\nnot a hash\n\n", 1)),
        ("hash of 33 bytes", good.replacen("\n\n", "\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n\n", 1)),
        ("leading zero index", good.replacen("index 2\n", "index 02\n", 1)),
        ("no header", good.replacen("c2sp.org/tlog-proof@v1\n", "", 1)),
        ("no blank line", good.replacen("\n\n", "\n", 1)),
    ] {
        assert!(matches!(ProofFile::parse(bad.as_bytes()), Err(ProofFileError::Malformed(_))), "{name}");
    }
    let verdict = |f: ProofFile| ProofFile::parse(f.encode().as_bytes()).unwrap().verify(&ledger.keys());
    assert!(matches!(verdict(file(3, 2)), Err(ProofFileError::EntryMismatch { .. })), "wrong index");
    let mut short = file(2, 2);
    short.proof.pop();
    assert!(matches!(verdict(short), Err(ProofFileError::Inclusion(_))), "truncated proof");
    let mut wrong_entry = file(2, 2);
    wrong_entry.proof = inclusion_proof(leaves.as_slice(), 3, 6).unwrap();
    assert!(matches!(verdict(wrong_entry), Err(ProofFileError::Inclusion(_))), "another entry's proof");
    let other = Ledger::build(Spec::new(6).origin(OTHER_ORIGIN).seed(OTHER_LOG_SEED));
    let mut spliced = file(2, 2);
    spliced.extra = Some(other.entries[2].clone());
    assert!(matches!(verdict(spliced), Err(ProofFileError::EntryMismatch { .. })), "another log's entry");
}

#[test]
fn non_canonical_json_signed_by_the_log_key_is_an_entry_syntax_error() {
    let (ledger, _) = given_export(Spec::new(6));
    let edits: [(&str, TextEdit); 3] = [
        ("whitespace", |t| t.replacen("{\"actor\":", "{ \"actor\":", 1)),
        ("unsorted keys", |t| t.replacen(",\"v\":1}", "}", 1).replacen("{\"actor\":", "{\"v\":1,\"actor\":", 1)),
        ("escaped slash", |t| t.replacen("web/admin", "web\\/admin", 1)),
    ];
    for (name, edit) in edits {
        let mut entries = ledger.entries.clone();
        entries[1] = resigned(&ledger, 1, edit);
        assert_ne!(entries[1], ledger.entries[1], "{name} changed the entry");
        let dir = rewritten_export(&ledger, &entries);
        let failure = verify(dir.path(), &ledger.keys()).expect_err(name);
        assert_eq!((failure.check, failure.seq), (Check::EntrySyntax, Some(1)), "{name}: {failure}");
        assert!(failure.reason.contains("canonical"), "{name}: {failure}");
    }
}

#[test]
fn duplicate_json_keys_signed_by_the_log_key_are_an_entry_syntax_error() {
    let (ledger, _) = given_export(Spec::new(6));
    let edits: [(&str, TextEdit); 2] = [
        ("top level", |t| t.replacen(",\"v\":1}", ",\"v\":1,\"v\":1}", 1)),
        ("in data", |t| t.replacen("\"request\":\"req-0001\"", "\"request\":\"req-0001\",\"request\":\"req-0002\"", 1)),
    ];
    for (name, edit) in edits {
        let mut entries = ledger.entries.clone();
        entries[2] = resigned(&ledger, 2, edit);
        let dir = rewritten_export(&ledger, &entries);
        let failure = verify(dir.path(), &ledger.keys()).expect_err(name);
        assert_eq!((failure.check, failure.seq), (Check::EntrySyntax, Some(2)), "{name}: {failure}");
        assert!(failure.reason.contains("duplicate"), "{name}: {failure}");
    }
}

#[test]
fn a_key_rotation_the_new_key_did_not_cosign_is_refused() {
    let (ledger, _) = given_export(Spec::new(6).rotating_at(2));
    let new = ledger.rotated.as_ref().unwrap();
    let attacker = signer(ORIGIN, &ATTACKER_SEED);
    let event = &ledger.events[2];
    let variants = [
        ("cosigned by a third key", event.sign(&[&ledger.initial, &attacker]).unwrap(), Check::Signature),
        ("old key twice", event.sign(&[&ledger.initial, &ledger.initial]).unwrap(), Check::Signature),
        ("new key first", event.sign(&[new, &ledger.initial]).unwrap(), Check::Signature),
        ("old key alone", event.sign(&[&ledger.initial]).unwrap(), Check::EntrySyntax),
    ];
    for (name, entry, check) in variants {
        let mut entries = ledger.entries.clone();
        entries[2] = entry;
        let dir = rewritten_export(&ledger, &entries);
        let failure = verify(dir.path(), &KeySet::single(ledger.initial.verifier().clone())).expect_err(name);
        assert_eq!((failure.check, failure.seq), (check, Some(2)), "{name}: {failure}");
    }
}

#[test]
fn a_pinned_key_range_that_excludes_the_signing_seq_is_refused() {
    let (ledger, dir) = given_export(Spec::new(6));
    let key = ledger.initial.verifier().clone();
    let ending = KeySet::new(vec![PinnedKey { key: key.clone(), from: 0, to: Some(3) }]);
    assert_fails(verify(dir.path(), &ending), Check::KeyNotInForce, Some(3));
    let starting = KeySet::new(vec![PinnedKey { key, from: 2, to: None }]);
    assert_fails(verify(dir.path(), &starting), Check::KeyNotInForce, Some(0));
}

#[test]
fn a_rotated_key_pinned_for_later_entries_only_is_refused_where_it_first_signs() {
    let (ledger, dir) = given_export(Spec::new(6).rotating_at(2));
    let mut keys = ledger.keys();
    keys.keys[1].from = 5;
    assert_fails(verify(dir.path(), &keys), Check::KeyNotInForce, Some(3));
}

/// Each file of an export: its relative path and its bytes.
type ExportFiles = Vec<(String, Vec<u8>)>;

/// The files of a 300-entry export with a key rotation (partial tiles at two levels).
fn base_export() -> &'static (ExportFiles, KeySet) {
    static BASE: OnceLock<(ExportFiles, KeySet)> = OnceLock::new();
    BASE.get_or_init(|| {
        let (ledger, dir) = given_export(Spec::new(300).rotating_at(100));
        let contents =
            files(dir.path()).into_iter().map(|f| (f.clone(), fs::read(dir.path().join(&f)).unwrap())).collect();
        (contents, ledger.keys())
    })
}

fn write_files(dir: &Path, contents: &[(String, Vec<u8>)]) {
    for (name, bytes) in contents {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
}

#[test]
fn the_proptest_base_export_has_partial_tiles_at_two_levels() {
    let (contents, _) = base_export();
    let names: Vec<&str> = contents.iter().map(|(n, _)| n.as_str()).collect();
    for expected in ["checkpoint", "entries.jsonl", "tile/0/001.p/44", "tile/1/000.p/1", "tile/entries/001.p/44"] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_single_byte_change_to_any_export_file_is_detected(
        file in any::<prop::sample::Index>(),
        offset in any::<prop::sample::Index>(),
        mask in 1..=255u8,
    ) {
        let (contents, keys) = base_export();
        let mut tampered = contents.clone();
        let (name, bytes) = &mut tampered[file.index(contents.len())];
        let name = name.clone();
        let at = offset.index(bytes.len());
        bytes[at] ^= mask;
        let dir = temp_dir();
        write_files(dir.path(), &tampered);
        let result = verify(dir.path(), keys);
        prop_assert!(result.is_err(), "xor {:#04x} at byte {} of {} went undetected", mask, at, name);
    }
}

#[test]
fn the_untampered_proptest_base_export_verifies() {
    // The control for the property above: without the change, the same files verify.
    let (contents, keys) = base_export();
    let dir = temp_dir();
    write_files(dir.path(), contents);
    let summary = verify(dir.path(), keys).unwrap();
    assert_eq!(summary.checkpoint.size, 300);
    assert_eq!((summary.entries_verified, summary.keys.len()), (300, 2));
}

#[test]
fn a_leaked_retired_key_cannot_rotate_to_its_own_key_past_its_pinned_range() {
    // The auditor pinned the first key for entries 0..6 and another key from 6 on. Whoever holds
    // the first key forges a rotation at 3 to a key of their own, which then signs everything after.
    let (forged, dir) = given_export(Spec::new(12).rotating_at(3));
    let first = forged.initial.verifier().clone();
    let next = signer(ORIGIN, &ATTACKER_SEED).verifier().clone();
    let pinned =
        KeySet::new(vec![PinnedKey { key: first, from: 0, to: Some(6) }, PinnedKey { key: next, from: 6, to: None }]);
    assert_fails(verify(dir.path(), &pinned), Check::KeyNotInForce, Some(6));
}

#[test]
fn a_rotation_the_auditor_pinned_both_keys_for_verifies() {
    let (ledger, dir) = given_export(Spec::new(12).rotating_at(5));
    let pinned = KeySet::new(vec![
        PinnedKey { key: ledger.initial.verifier().clone(), from: 0, to: Some(6) },
        PinnedKey { key: ledger.rotated.as_ref().unwrap().verifier().clone(), from: 6, to: None },
    ]);
    assert_eq!(verify(dir.path(), &pinned).unwrap().entries_verified, 12);
}
