//! Pinned keys: the verifier keys an auditor trusts, each optionally limited
//! to the range of entries it may sign.
//!
//! The key "in force" at sequence number `s` is the key that signs entry `s`;
//! the checkpoint of size `n` is signed by the key in force at `n`. A
//! `key.rotated` entry at `r` is signed by the key in force at `r` and by the
//! new key, which is in force from `r + 1`.

use crate::note::{NoteError, VerifierKey};

/// A trusted key and the half-open range of sequence numbers it may sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedKey {
    pub key: VerifierKey,
    pub from: u64,
    /// Exclusive end; `None` for open-ended.
    pub to: Option<u64>,
}

impl PinnedKey {
    /// Parses `VKEY`, `VKEY@FROM-` or `VKEY@FROM-TO` (sequence numbers, `TO` exclusive).
    ///
    /// # Errors
    /// [`NoteError::MalformedKey`] for a bad key or range.
    pub fn parse(s: &str) -> Result<PinnedKey, NoteError> {
        let s = s.trim();
        if let Some((key, range)) = s.rsplit_once('@')
            && let Some((from, to)) = range.split_once('-')
        {
            let from = decimal(from).ok_or(NoteError::MalformedKey("range start is not a decimal number"))?;
            let to = if to.is_empty() {
                None
            } else {
                Some(decimal(to).ok_or(NoteError::MalformedKey("range end is not a decimal number"))?)
            };
            if to.is_some_and(|to| to <= from) {
                return Err(NoteError::MalformedKey("key range is empty"));
            }
            return Ok(PinnedKey { key: VerifierKey::parse(key)?, from, to });
        }
        Ok(PinnedKey { key: VerifierKey::parse(s)?, from: 0, to: None })
    }

    pub fn covers(&self, seq: u64) -> bool {
        seq >= self.from && self.to.is_none_or(|to| seq < to)
    }
}

/// A decimal number without sign or leading zeroes (the one form the format
/// writes, in checkpoints, proof files and key ranges).
pub(crate) fn decimal(s: &str) -> Option<u64> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    s.parse().ok().filter(|_| canonical)
}

/// The set of pinned keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    pub keys: Vec<PinnedKey>,
}

impl KeySet {
    pub fn new(keys: Vec<PinnedKey>) -> KeySet {
        KeySet { keys }
    }

    /// A key set trusting one key for every sequence number.
    pub fn single(key: VerifierKey) -> KeySet {
        KeySet { keys: vec![PinnedKey { key, from: 0, to: None }] }
    }

    /// The pinned keys that may sign at `seq`.
    pub fn candidates(&self, seq: u64) -> impl Iterator<Item = &VerifierKey> {
        self.keys.iter().filter(move |p| p.covers(seq)).map(|p| &p.key)
    }

    /// Whether `key` may sign at `seq`, given which keys were in force before
    /// it in this verification (`was_earlier`).
    ///
    /// A pinned key may sign only within its range. A key that is not pinned
    /// (introduced by a verified rotation) may sign at `seq` only if every
    /// pinned key whose range covers `seq` is one of the earlier keys: so a
    /// leaked retired key cannot rotate to a key of its own choosing and sign
    /// where the auditor pinned another key.
    pub fn permits(&self, key: &VerifierKey, seq: u64, was_earlier: impl Fn(&VerifierKey) -> bool) -> bool {
        if self.is_pinned(key) {
            return self.keys.iter().any(|p| p.key == *key && p.covers(seq));
        }
        self.candidates(seq).all(was_earlier)
    }

    /// Whether `key` is pinned (for any range).
    pub fn is_pinned(&self, key: &VerifierKey) -> bool {
        self.keys.iter().any(|p| p.key == *key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::SignerKey;

    #[test]
    fn ranges_parse_and_limit_keys() {
        let signer = SignerKey::from_seed("log", &[1u8; 32]).unwrap();
        let vkey = signer.verifier().to_string();
        let pinned = PinnedKey::parse(&format!("{vkey}@10-20")).unwrap();
        assert!(pinned.covers(10) && pinned.covers(19) && !pinned.covers(20) && !pinned.covers(9));
        assert!(PinnedKey::parse(&format!("{vkey}@5-")).unwrap().covers(1 << 40));
        assert!(PinnedKey::parse(&format!("{vkey}@20-10")).is_err());
        assert!(PinnedKey::parse(&format!("{vkey}@+5-")).is_err());
        assert!(PinnedKey::parse(&format!("{vkey}@05-")).is_err());
        let set = KeySet::new(vec![pinned]);
        assert!(!set.permits(signer.verifier(), 25, |_| false));
    }
}
