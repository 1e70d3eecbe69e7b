//! C2SP checkpoints (<https://c2sp.org/tlog-checkpoint>): signed tree heads.
//!
//! The note text is exactly three lines, `<origin>\n<size>\n<base64 root>\n`;
//! this format uses no extension lines. The log signs with its Ed25519 key
//! named after the origin. Witness cosignatures are further signature lines,
//! which verifiers that do not know the witness keys ignore.

use crate::merkle::Hash;
use crate::note::{self, Note, NoteError, NoteSignature, SignerKey, VerifierKey, VerifyNoteError};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// A tree head: the log's origin, its size and its root hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed checkpoint note: {0}")]
    Note(#[from] NoteError),
    #[error("checkpoint text must be exactly three lines: origin, size, root hash")]
    Shape,
    #[error("checkpoint origin {0:?} is not a valid log name")]
    Origin(String),
    #[error("checkpoint size {0:?} is not a decimal number without leading zeroes")]
    Size(String),
    #[error("checkpoint root {0:?} is not the base64 of 32 bytes")]
    Root(String),
    #[error("checkpoint signature: {0}")]
    Signature(#[from] VerifyNoteError),
}

impl Checkpoint {
    /// The note text.
    pub fn text(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// Signs the checkpoint with the log key and returns the note.
    pub fn sign(&self, signer: &SignerKey) -> String {
        let text = self.text();
        note::assemble(&text, &[signer.sign(text.as_bytes())])
    }

    /// Parses the text of a checkpoint note.
    ///
    /// # Errors
    /// [`CheckpointError`] naming the bad line.
    pub fn parse_text(text: &str) -> Result<Checkpoint, CheckpointError> {
        let body = text.strip_suffix('\n').ok_or(CheckpointError::Shape)?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [origin, size, root] = lines[..] else {
            return Err(CheckpointError::Shape);
        };
        if !note::valid_key_name(origin) {
            return Err(CheckpointError::Origin(origin.to_string()));
        }
        let size_num = crate::keys::decimal(size).ok_or_else(|| CheckpointError::Size(size.to_string()))?;
        let root_hash: Hash = B64
            .decode(root)
            .ok()
            .and_then(|b| b.try_into().ok())
            .filter(|_| root.len() == 44)
            .ok_or_else(|| CheckpointError::Root(root.to_string()))?;
        Ok(Checkpoint { origin: origin.to_string(), size: size_num, root: root_hash })
    }
}

/// A checkpoint note as read, before its signatures are trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub signatures: Vec<NoteSignature>,
    /// The note text as read (what the signatures cover).
    pub text: String,
}

impl SignedCheckpoint {
    /// Parses a checkpoint note without verifying it.
    ///
    /// # Errors
    /// [`CheckpointError`] for malformed notes or text.
    pub fn parse(note_bytes: &[u8]) -> Result<SignedCheckpoint, CheckpointError> {
        let note = Note::parse(note_bytes)?;
        let checkpoint = Checkpoint::parse_text(note.text)?;
        Ok(SignedCheckpoint { checkpoint, signatures: note.signatures, text: note.text.to_string() })
    }

    /// Verifies the log's signature with `key`, which must be named after the origin.
    ///
    /// # Errors
    /// [`CheckpointError::Signature`] when `key` did not sign it, or signed something else.
    pub fn verify(&self, key: &VerifierKey) -> Result<(), CheckpointError> {
        if key.name() != self.checkpoint.origin {
            return Err(CheckpointError::Signature(VerifyNoteError::NoTrustedSignature));
        }
        let note = Note { text: &self.text, signatures: self.signatures.clone() };
        note::verify_note(&note, std::slice::from_ref(key))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_refuses_leading_zeroes() {
        let signer = SignerKey::from_seed("example.com/log", &[5u8; 32]).unwrap();
        let checkpoint = Checkpoint { origin: "example.com/log".into(), size: 12, root: [1u8; 32] };
        let note = checkpoint.sign(&signer);
        let parsed = SignedCheckpoint::parse(note.as_bytes()).unwrap();
        assert_eq!(parsed.checkpoint, checkpoint);
        parsed.verify(signer.verifier()).unwrap();
        let bad = note.replacen("\n12\n", "\n012\n", 1);
        assert!(matches!(SignedCheckpoint::parse(bad.as_bytes()), Err(CheckpointError::Size(_))));
    }
}
