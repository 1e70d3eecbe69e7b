//! Evidence for one event: a C2SP tlog-proof file (<https://c2sp.org/tlog-proof>).
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! extra <base64 of the entry bytes>
//! index <seq>
//! <inclusion proof hashes, one base64 hash a line>
//!
//! <the checkpoint note, verbatim>
//! ```
//!
//! The `extra` line carries the entry itself, so the file alone proves the
//! event's content, its signature, and its inclusion in a signed tree.

use crate::checkpoint::{CheckpointError, SignedCheckpoint};
use crate::event::{EntryError, ParsedEntry};
use crate::keys::KeySet;
use crate::merkle::{self, Hash, ProofError};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// The first line of a tlog-proof file.
pub const PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

/// A parsed tlog-proof file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProofFile {
    pub extra: Option<Vec<u8>>,
    pub index: u64,
    pub proof: Vec<Hash>,
    pub checkpoint: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofFileError {
    #[error("proof file is malformed: {0}")]
    Malformed(&'static str),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("entry: {0}")]
    Entry(#[from] EntryError),
    #[error("the proof file carries no entry (no extra line)")]
    NoEntry,
    #[error("the entry says seq {found} and log {log:?}, but the proof is for index {index} of {origin:?}")]
    EntryMismatch { found: u64, log: String, index: u64, origin: String },
    #[error("no pinned key signed the checkpoint at size {0}")]
    CheckpointKey(u64),
    #[error("the entry's signature is not by a pinned key valid at seq {0}, or does not verify")]
    EntrySignature(u64),
    #[error("inclusion proof: {0}")]
    Inclusion(#[from] ProofError),
}

impl ProofFile {
    /// The file's text.
    pub fn encode(&self) -> String {
        let mut out = format!("{PROOF_HEADER}\n");
        if let Some(extra) = &self.extra {
            out.push_str(&format!("extra {}\n", B64.encode(extra)));
        }
        out.push_str(&format!("index {}\n", self.index));
        for hash in &self.proof {
            out.push_str(&B64.encode(hash));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&String::from_utf8_lossy(&self.checkpoint));
        out
    }

    /// Parses a proof file.
    ///
    /// # Errors
    /// [`ProofFileError::Malformed`] naming the bad part.
    pub fn parse(input: &[u8]) -> Result<ProofFile, ProofFileError> {
        let text = std::str::from_utf8(input).map_err(|_| ProofFileError::Malformed("not UTF-8"))?;
        let (head, checkpoint) =
            text.split_once("\n\n").ok_or(ProofFileError::Malformed("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(PROOF_HEADER) {
            return Err(ProofFileError::Malformed("first line is not c2sp.org/tlog-proof@v1"));
        }
        let mut line = lines.next().ok_or(ProofFileError::Malformed("no index line"))?;
        let mut extra = None;
        if let Some(data) = line.strip_prefix("extra ") {
            extra = Some(B64.decode(data).map_err(|_| ProofFileError::Malformed("extra is not base64"))?);
            line = lines.next().ok_or(ProofFileError::Malformed("no index line"))?;
        }
        let index_text = line.strip_prefix("index ").ok_or(ProofFileError::Malformed("expected an index line"))?;
        let index = crate::keys::decimal(index_text)
            .ok_or(ProofFileError::Malformed("index is not a decimal number without leading zeroes"))?;
        let proof = lines
            .map(|l| {
                B64.decode(l)
                    .ok()
                    .and_then(|b| Hash::try_from(b).ok())
                    .filter(|_| l.len() == 44)
                    .ok_or(ProofFileError::Malformed("a proof line is not the base64 of 32 bytes"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ProofFile { extra, index, proof, checkpoint: checkpoint.as_bytes().to_vec() })
    }

    /// Verifies the file against pinned keys: the checkpoint's signature, the
    /// entry (syntax, origin, seq, signature) and its inclusion.
    ///
    /// # Errors
    /// [`ProofFileError`] for the first failed check.
    pub fn verify(&self, keys: &KeySet) -> Result<VerifiedProof, ProofFileError> {
        let checkpoint = SignedCheckpoint::parse(&self.checkpoint)?;
        let size = checkpoint.checkpoint.size;
        if !keys.candidates(size).any(|key| checkpoint.verify(key).is_ok()) {
            return Err(ProofFileError::CheckpointKey(size));
        }
        let entry = self.extra.as_deref().ok_or(ProofFileError::NoEntry)?;
        let parsed = ParsedEntry::parse(entry)?;
        let origin = &checkpoint.checkpoint.origin;
        if parsed.event.seq != self.index || parsed.event.log != *origin {
            return Err(ProofFileError::EntryMismatch {
                found: parsed.event.seq,
                log: parsed.event.log.clone(),
                index: self.index,
                origin: origin.clone(),
            });
        }
        let text = &entry[..parsed.text_len];
        let signed =
            keys.candidates(self.index).any(|key| key.name() == origin && key.verify(text, &parsed.signatures[0]));
        // A key rotation must also carry the new key's signature (proof of possession).
        let cosigned = parsed.new_key.as_ref().is_none_or(|new_key| new_key.verify(text, &parsed.signatures[1]));
        if !signed || !cosigned {
            return Err(ProofFileError::EntrySignature(self.index));
        }
        merkle::verify_inclusion(
            self.index,
            size,
            &merkle::leaf_hash(entry),
            &self.proof,
            &checkpoint.checkpoint.root,
        )?;
        Ok(VerifiedProof { entry: parsed, checkpoint: checkpoint.checkpoint })
    }
}

/// What a verified proof file establishes.
#[derive(Clone, Debug)]
pub struct VerifiedProof {
    pub entry: ParsedEntry,
    pub checkpoint: crate::checkpoint::Checkpoint,
}
