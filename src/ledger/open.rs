//! The start-up check: the service refuses to run on a ledger whose tail
//! does not verify, and says exactly where and why.
//!
//! It re-verifies the last [`super::TAIL_CHECK_ENTRIES`] entries (syntax,
//! sequence, origin, `prev` chain, signature by the key in force, timestamps,
//! stored leaf hashes), recomputes the small right-edge subtrees from the
//! stored leaves, and checks the latest checkpoint's signature and root
//! against the stored tree. A full check of every entry is `portcullis export`
//! followed by `portcullis verify`.

use super::{State, TAIL_CHECK_ENTRIES};
use crate::store::{KeyRecord, NodeReader, Passed, Store, StoreError};
use portcullis_format::checkpoint::SignedCheckpoint;
use portcullis_format::event::ParsedEntry;
use portcullis_format::merkle::{Frontier, Hash, leaf_hash, range_hash, root_of};
use portcullis_format::note::{SignerKey, VerifierKey};
use portcullis_format::time::Timestamp;

/// Why the stored ledger is refused.
#[derive(Debug, thiserror::Error)]
pub enum TailCheckError {
    #[error("the ledger does not verify at entry {seq}: {reason}")]
    Entry { seq: u64, reason: String },
    #[error("the ledger's Merkle tree does not verify: {0}")]
    Tree(String),
    #[error("the latest checkpoint does not verify: {0}")]
    Checkpoint(String),
    #[error(
        "the ledger is signed by {in_force}, but the loaded key is {loaded}; load the key in force (or finish a rotation)"
    )]
    WrongKey { in_force: String, loaded: String },
    #[error("the ledger's key history is unreadable: {0}")]
    Keys(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn key_at(keys: &[(u64, VerifierKey)], seq: u64) -> Option<&VerifierKey> {
    keys.iter().rev().find(|(from, _)| *from <= seq).map(|(_, k)| k)
}

fn parse_keys(records: &[KeyRecord]) -> Result<Vec<(u64, VerifierKey)>, TailCheckError> {
    records
        .iter()
        .map(|r| {
            VerifierKey::parse(&r.vkey)
                .map(|k| (r.from_seq, k))
                .map_err(|e| TailCheckError::Keys(format!("key from seq {}: {e}", r.from_seq)))
        })
        .collect()
}

pub(crate) fn check_and_load(store: &dyn Store, signer: &SignerKey) -> Result<State, TailCheckError> {
    let size = store.size()?;
    let keys = parse_keys(&store.keys()?)?;
    if size == 0 {
        return Ok(State {
            frontier: Frontier::default(),
            prev: [0u8; 32],
            last_ts: Timestamp::EPOCH,
            checkpoint_size: None,
        });
    }
    let in_force = key_at(&keys, size).ok_or_else(|| TailCheckError::Keys("no key is recorded".into()))?;
    if in_force != signer.verifier() {
        return Err(TailCheckError::WrongKey { in_force: in_force.to_string(), loaded: signer.verifier().to_string() });
    }
    let origin = signer.name();
    let reader = NodeReader(store);
    let frontier = Frontier::load(size, &reader)?;

    let from = size.saturating_sub(TAIL_CHECK_ENTRIES);
    let entries = store.entries(from, size - from)?;
    let leaves = store.nodes(0, from, size - from)?;
    let mut prev = if from == 0 { [0u8; 32] } else { store.node(0, from - 1)? };
    let mut last_ts = Timestamp::EPOCH;
    for (i, entry) in entries.iter().enumerate() {
        let seq = from + i as u64;
        let bad = |reason: String| TailCheckError::Entry { seq, reason };
        let parsed = ParsedEntry::parse(entry).map_err(|e| bad(e.to_string()))?;
        let event = &parsed.event;
        if event.seq != seq {
            return Err(bad(format!("entry says seq {}", event.seq)));
        }
        if event.log != origin {
            return Err(bad(format!("entry belongs to log {:?}, not {origin:?}", event.log)));
        }
        if event.prev != prev {
            return Err(bad("prev is not the leaf hash of the previous entry".into()));
        }
        if event.ts < last_ts {
            return Err(bad("timestamp is earlier than the previous entry's".into()));
        }
        let key = key_at(&keys, seq).ok_or_else(|| bad("no key in force".into()))?;
        let text = &entry[..parsed.text_len];
        if !key.verify(text, &parsed.signatures[0]) {
            return Err(bad(format!("signature by the key in force {key} does not verify")));
        }
        if let Some(new_key) = &parsed.new_key
            && (!new_key.verify(text, &parsed.signatures[1]) || key_at(&keys, seq + 1) != Some(new_key))
        {
            return Err(bad("key rotation is not co-signed by the new key or not recorded".into()));
        }
        let leaf = leaf_hash(entry);
        if leaf != leaves[i] {
            return Err(bad("the stored leaf hash differs from the entry's".into()));
        }
        prev = leaf;
        last_ts = event.ts;
    }

    // The right-edge subtrees that lie within the checked tail are recomputed from its leaves.
    let mut start = 0u64;
    for level in (0..64u8).rev() {
        if size & (1 << level) == 0 {
            continue;
        }
        let span = 1u64 << level;
        if start >= from {
            let local = (start - from) as usize;
            let expected = root_of(&leaves[local..local + span as usize]);
            if store.node(level, start >> level)? != expected {
                return Err(TailCheckError::Tree(format!(
                    "node ({level}, {}) differs from its leaves",
                    start >> level
                )));
            }
        }
        start += span;
    }

    let checkpoint_size = match store.latest_checkpoint()? {
        None => None,
        Some((cp_size, note)) => {
            let signed =
                SignedCheckpoint::parse(note.as_bytes()).map_err(|e| TailCheckError::Checkpoint(e.to_string()))?;
            let checkpoint = &signed.checkpoint;
            if checkpoint.size != cp_size || checkpoint.size > size || checkpoint.origin != origin {
                return Err(TailCheckError::Checkpoint(format!(
                    "checkpoint of size {} does not fit a ledger of {size}",
                    checkpoint.size
                )));
            }
            let key = key_at(&keys, cp_size).ok_or_else(|| TailCheckError::Keys("no key in force".into()))?;
            signed.verify(key).map_err(|e| TailCheckError::Checkpoint(e.to_string()))?;
            let root =
                if cp_size == 0 { portcullis_format::merkle::EMPTY_ROOT } else { range_hash(&reader, 0, cp_size)? };
            if root != checkpoint.root {
                return Err(TailCheckError::Checkpoint(format!(
                    "the stored tree at size {cp_size} has a different root than the signed checkpoint"
                )));
            }
            Some(cp_size)
        }
    };
    Ok(State { frontier, prev, last_ts, checkpoint_size })
}

/// Adds to `state` the entries other writers appended to the store since
/// `state` was durable, checking each as the start-up check does (sequence,
/// origin, `prev` chain, timestamps), and the signature by the loaded key of
/// the last entry of every read: its `prev` commits to the exact bytes of
/// every entry before it back to `state.prev`, so one valid signature vouches
/// for the whole run, and a replica catching up costs one verification per
/// turn rather than one per entry. Used by replicas sharing one store.
///
/// # Errors
/// [`TailCheckError`] naming the entry; [`TailCheckError::WrongKey`] when
/// another writer rotated the key (this process must restart with the new one).
pub(crate) fn catch_up(store: &dyn Store, signer: &SignerKey, state: &mut State) -> Result<(), TailCheckError> {
    let size = store.size()?;
    while state.frontier.size() < size {
        let from = state.frontier.size();
        let entries = store.entries(from, (size - from).min(4096))?;
        if entries.is_empty() {
            return Err(TailCheckError::Entry { seq: from, reason: "missing from the store".into() });
        }
        add_entries(signer, state, entries)?;
    }
    Ok(())
}

/// Adds consecutive entries, read from the store from `state`'s size on, to
/// `state`, checked as [`catch_up`] describes (the signature of the last one).
pub(crate) fn add_entries(signer: &SignerKey, state: &mut State, entries: Vec<Vec<u8>>) -> Result<(), TailCheckError> {
    let last = entries.len().saturating_sub(1);
    for (i, entry) in entries.into_iter().enumerate() {
        let (leaf, ts) = check_next(signer, state.frontier.size(), &state.prev, state.last_ts, &entry, i == last)?;
        state.frontier.push(leaf, |_, _, _| {});
        state.prev = leaf;
        state.last_ts = ts;
    }
    Ok(())
}

/// Adds to `state` the entries another replica passed with the writers' turn
/// (signed, maybe not yet committed; see [`crate::store::Passed`]): they
/// must continue the leaf `state` ends on; the last of them, whole, is
/// checked as [`add_entries`] checks the last entry of a read, and its `prev`
/// must be the leaf before it. The others are known by their leaves only:
/// the store appends on top of them only if it holds the last one, byte for
/// byte, at its position.
pub(crate) fn add_passed(signer: &SignerKey, state: &mut State, passed: &Passed) -> Result<(), TailCheckError> {
    let Some((&last_leaf, before)) = passed.leaves.split_last() else { return Ok(()) };
    let seq = state.frontier.size() + before.len() as u64;
    if passed.before != state.prev {
        let first = state.frontier.size();
        return Err(TailCheckError::Entry { seq: first, reason: "the passed entries continue another leaf".into() });
    }
    let prev = before.last().unwrap_or(&state.prev);
    let (leaf, ts) = check_next(signer, seq, prev, state.last_ts, &passed.last, true)?;
    if leaf != last_leaf {
        return Err(TailCheckError::Entry { seq, reason: "the passed entry is not its passed leaf".into() });
    }
    for leaf in &passed.leaves {
        state.frontier.push(*leaf, |_, _, _| {});
    }
    state.prev = last_leaf;
    state.last_ts = ts;
    Ok(())
}

/// Checks `entry` as entry `seq` of the log `signer` signs, following the leaf
/// `prev` and the time `last_ts` (and, with `verify`, its signature by the
/// key in force); returns its leaf hash and timestamp.
fn check_next(
    signer: &SignerKey,
    seq: u64,
    prev: &Hash,
    last_ts: Timestamp,
    entry: &[u8],
    verify: bool,
) -> Result<(Hash, Timestamp), TailCheckError> {
    let bad = |reason: String| TailCheckError::Entry { seq, reason };
    let parsed = ParsedEntry::parse(entry).map_err(|e| bad(e.to_string()))?;
    let event = &parsed.event;
    if event.seq != seq || event.log != signer.name() {
        return Err(bad(format!("entry says seq {} of log {:?}", event.seq, event.log)));
    }
    if event.prev != *prev {
        return Err(bad("prev is not the leaf hash of the previous entry".into()));
    }
    if event.ts < last_ts {
        return Err(bad("timestamp is earlier than the previous entry's".into()));
    }
    if parsed.new_key.is_some() {
        let in_force = parsed.new_key.as_ref().map(ToString::to_string).unwrap_or_default();
        return Err(TailCheckError::WrongKey { in_force, loaded: signer.verifier().to_string() });
    }
    if verify && !signer.verifier().verify(&entry[..parsed.text_len], &parsed.signatures[0]) {
        return Err(bad(format!("signature by the key in force {} does not verify", signer.verifier())));
    }
    Ok((leaf_hash(entry), event.ts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_format::event::{Actor, Event, EventDraft, EventId};
    use portcullis_format::json::Json;

    fn signer() -> SignerKey {
        SignerKey::from_seed("portcullis.test/open", &[7; 32]).unwrap()
    }

    /// `count` signed entries continuing `state`, and the state after them.
    fn entries(signer: &SignerKey, state: &State, count: u64) -> (Vec<Vec<u8>>, State) {
        let mut next = state.clone();
        let mut out = Vec::new();
        for _ in 0..count {
            let draft = EventDraft {
                id: EventId::random().unwrap(),
                kind: "request.created".into(),
                v: 1,
                actor: Actor { sub: "ana".into(), groups: vec![], via: "token".into() },
                data: Json::Obj(vec![("reason".into(), Json::Str("INC-1".into()))]),
            };
            let seq = next.frontier.size();
            let ts = Timestamp::from_unix_micros(1_000_000 + seq as i64).unwrap();
            let entry = Event { log: signer.name().into(), seq, prev: next.prev, ts, draft }.sign(&[signer]).unwrap();
            next.prev = leaf_hash(&entry);
            next.frontier.push(next.prev, |_, _, _| {});
            next.last_ts = ts;
            out.push(entry);
        }
        (out, next)
    }

    fn passed(entries: &[Vec<u8>], before: Hash) -> Passed {
        Passed { before, leaves: entries.iter().map(|e| leaf_hash(e)).collect(), last: entries.last().unwrap().clone() }
    }

    /// A state of three entries, signed by `signer`.
    fn three(signer: &SignerKey) -> State {
        let empty =
            State { frontier: Frontier::default(), prev: [0; 32], last_ts: Timestamp::EPOCH, checkpoint_size: None };
        entries(signer, &empty, 3).1
    }

    #[test]
    fn passed_entries_that_continue_the_state_are_taken_by_their_leaves() {
        let signer = signer();
        let state = three(&signer);
        let (next, after) = entries(&signer, &state, 4);
        let mut taken = state.clone();
        add_passed(&signer, &mut taken, &passed(&next, state.prev)).unwrap();
        assert_eq!(
            (taken.frontier.root(), taken.prev, taken.last_ts),
            (after.frontier.root(), after.prev, after.last_ts)
        );
        // Nothing passed: nothing changes.
        let mut same = state.clone();
        add_passed(&signer, &mut same, &Passed::default()).unwrap();
        assert_eq!(same.frontier.size(), 3);
    }

    #[test]
    fn passed_entries_on_another_leaf_or_badly_signed_are_refused() {
        let signer = signer();
        let state = three(&signer);
        let (next, _) = entries(&signer, &state, 2);
        // They continue another leaf than the one the state ends on.
        let mut taken = state.clone();
        assert!(add_passed(&signer, &mut taken, &passed(&next, [9; 32])).is_err());
        assert_eq!(taken.frontier.size(), 3, "the state is left as it was");
        // The last leaf is not the last entry's.
        let mut wrong_leaf = passed(&next, state.prev);
        wrong_leaf.leaves[1] = [8; 32];
        assert!(add_passed(&signer, &mut state.clone(), &wrong_leaf).is_err());
        // Signed by another key.
        let other = SignerKey::from_seed("portcullis.test/open", &[8; 32]).unwrap();
        let (foreign, _) = entries(&other, &state, 2);
        assert!(add_passed(&signer, &mut state.clone(), &passed(&foreign, state.prev)).is_err());
        // The last entry's prev is not the leaf passed before it.
        let mut unchained = passed(&next, state.prev);
        unchained.leaves.insert(0, [7; 32]);
        assert!(add_passed(&signer, &mut state.clone(), &unchained).is_err());
    }
}
