//! Valid exports at the edges of the format, which the verifier must accept:
//! empty and one-entry ledgers, partial tiles at each boundary, anchors of
//! size 0, 1 and equal to the export, range exports with anchors before,
//! inside and at the end of the range, and rotations at the first and last
//! entries. (The attacks are in `tamper.rs`.)

use crate::support::*;
use portcullis_format::keys::KeySet;
use portcullis_format::merkle::inclusion_proof;
use portcullis_format::proof_file::ProofFile;
use portcullis_format::verify::Summary;

#[track_caller]
fn accept(dir: &std::path::Path, keys: &KeySet, anchor: Option<String>, partial: bool, what: &str) -> Summary {
    verify_with(dir, keys, anchor.as_deref().map(str::as_bytes), partial)
        .unwrap_or_else(|failure| panic!("{what}: a valid export was refused: {failure} ({failure:?})"))
}

#[test]
fn exports_of_every_edge_size_verify_with_anchors_from_0_to_their_size() {
    for size in [0u64, 1, 2, 3, 255, 256, 257, 511, 512, 513] {
        let ledger = Ledger::build(Spec::new(size));
        let dir = temp_dir();
        ledger.export(dir.path());
        let summary = accept(dir.path(), &ledger.keys(), None, false, &format!("size {size}"));
        assert_eq!((summary.checkpoint.size, summary.entries_verified), (size, size));
        for anchor in [0, 1, size / 2, size.saturating_sub(1), size] {
            let anchor = anchor.min(size);
            let what = format!("size {size}, anchor {anchor}");
            let summary = accept(dir.path(), &ledger.keys(), Some(ledger.checkpoint(anchor)), false, &what);
            assert_eq!(summary.anchor_size, Some(anchor), "{what}");
        }
    }
}

#[test]
fn range_exports_verify_with_anchors_before_inside_and_at_the_end_of_the_range() {
    for (size, first) in [(600u64, 256u64), (600, 512), (512, 512), (513, 512)] {
        let ledger = Ledger::build(Spec::new(size).rotating_at(300));
        let dir = temp_dir();
        ledger.export_range(dir.path(), first);
        let what = format!("size {size} from {first}");
        let summary = accept(dir.path(), &ledger.keys(), None, true, &what);
        assert_eq!((summary.first_entry, summary.entries_verified), (first, size - first), "{what}");
        for anchor in [0, 1, 100, 300, 301, first, first + 1, size] {
            let anchor = anchor.min(size);
            accept(
                dir.path(),
                &ledger.keys(),
                Some(ledger.checkpoint(anchor)),
                true,
                &format!("{what}, anchor {anchor}"),
            );
        }
    }
}

#[test]
fn rotations_at_the_first_and_last_entries_verify_with_checkpoints_on_both_sides() {
    for (size, rotation) in [(5u64, 0u64), (5, 4), (257, 255), (257, 256)] {
        let ledger = Ledger::build(Spec::new(size).rotating_at(rotation));
        let dir = temp_dir();
        ledger.export(dir.path());
        let what = format!("size {size}, rotation at {rotation}");
        // With each key pinned to its range, and with only the first key pinned (the rotation introduces the second).
        let first_only = KeySet::single(ledger.initial.verifier().clone());
        for keys in [ledger.keys(), first_only] {
            let summary = accept(dir.path(), &keys, None, false, &what);
            assert_eq!(summary.keys.len(), 2, "{what}");
            assert_eq!(summary.keys[1].1, rotation + 1, "{what}");
            for anchor in [rotation, rotation + 1, size] {
                let anchor = anchor.min(size);
                accept(dir.path(), &keys, Some(ledger.checkpoint(anchor)), false, &format!("{what}, anchor {anchor}"));
            }
        }
        // Every entry's tlog-proof verifies against the final checkpoint, signed by the key in force at its size.
        let leaves = ledger.leaves();
        for index in 0..size {
            let file = ProofFile {
                extra: Some(ledger.entries[index as usize].clone()),
                index,
                proof: inclusion_proof(leaves.as_slice(), index, size).unwrap(),
                checkpoint: ledger.checkpoint(size).into_bytes(),
            };
            let parsed = ProofFile::parse(file.encode().as_bytes()).unwrap();
            parsed.verify(&ledger.keys()).unwrap_or_else(|e| panic!("{what}: proof of {index}: {e}"));
        }
    }
}
