//! Witnesses: Ed25519 cosignatures of checkpoints (C2SP tlog-cosignature,
//! `cosignature/v1`), the body of a witness's `add-checkpoint` request (C2SP
//! tlog-witness), and trust policies that say which witnesses must have
//! cosigned (C2SP tlog-policy).
//!
//! A cosignature says: as of its time, the largest tree the witness saw for
//! this log, consistent with everything it saw before, has this root. A log
//! that truncates or forks its history cannot get a cosignature for the new
//! tree from a witness that saw the old one, so a verifier that requires a
//! quorum of cosignatures catches it.

use crate::checkpoint::{CheckpointError, SignedCheckpoint};
use crate::merkle::Hash;
use crate::note::{self, Note, NoteSignature, SignerKey, VerifierKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signature type of Ed25519 cosignatures in vkeys and key IDs.
pub const ALG_COSIGNATURE_V1: u8 = 0x04;
/// The most consistency-proof lines an `add-checkpoint` request may carry.
pub const MAX_PROOF_LINES: usize = 63;

/// The key ID of a cosigner: `SHA-256(name || "\n" || 0x04 || key)[:4]`.
pub fn cosigner_key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', ALG_COSIGNATURE_V1])
        .chain_update(public_key)
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The message a `cosignature/v1` signs: the header, the time, the checkpoint text.
pub fn cosigned_message(checkpoint_text: &str, timestamp: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{checkpoint_text}").into_bytes()
}

/// A witness's public key, `<name>+<key id>+base64(0x04 || key)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosignerKey {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl CosignerKey {
    /// # Errors
    /// A message saying what is wrong with the key string.
    pub fn parse(s: &str) -> Result<CosignerKey, String> {
        let mut parts = s.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("{s:?} is not a cosigner key <name>+<key id>+<key>"));
        };
        let raw = B64.decode(key).map_err(|_| format!("{s:?}: the key is not base64"))?;
        if raw.len() != 33 || raw[0] != ALG_COSIGNATURE_V1 {
            return Err(format!("{s:?}: not an Ed25519 cosignature (type 0x04) key of 32 bytes"));
        }
        let bytes: [u8; 32] = raw[1..].try_into().map_err(|_| "key length".to_string())?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| format!("{s:?}: not a valid Ed25519 point"))?;
        let cosigner = CosignerKey::new(name, key)?;
        if format!("{:08x}", cosigner.key_id) != id {
            return Err(format!("{s:?}: the key id does not match the key"));
        }
        Ok(cosigner)
    }

    /// # Errors
    /// For a name that cannot be a key name, or a weak key.
    pub fn new(name: &str, key: VerifyingKey) -> Result<CosignerKey, String> {
        if !note::valid_key_name(name) {
            return Err(format!("{name:?} is not a valid key name"));
        }
        if key.is_weak() {
            return Err("weak (small-order) key refused".into());
        }
        Ok(CosignerKey { name: name.to_string(), key_id: cosigner_key_id(name, key.as_bytes()), key })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The time of this witness's valid cosignature of `checkpoint_text` among
    /// `signatures`, if there is one. Lines of other keys are ignored.
    pub fn cosigned(&self, checkpoint_text: &str, signatures: &[NoteSignature]) -> Option<u64> {
        signatures.iter().filter(|s| s.name == self.name && s.key_id == self.key_id).find_map(|s| {
            let (time, sig) = s.signature.split_at_checked(8)?;
            let timestamp = u64::from_be_bytes(time.try_into().ok()?);
            let sig = Signature::from_bytes(&<[u8; 64]>::try_from(sig).ok()?);
            let message = cosigned_message(checkpoint_text, timestamp);
            (timestamp < 1 << 63 && self.key.verify_strict(&message, &sig).is_ok()).then_some(timestamp)
        })
    }
}

impl std::fmt::Display for CosignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = vec![ALG_COSIGNATURE_V1];
        raw.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.key_id, B64.encode(raw))
    }
}

/// A witness's signing side, from an Ed25519 private key of the usual form.
pub struct Cosigner<'a> {
    signer: &'a SignerKey,
    public: CosignerKey,
}

impl<'a> Cosigner<'a> {
    /// # Errors
    /// Never for a key that parsed; kept fallible for weak keys.
    pub fn new(signer: &'a SignerKey) -> Result<Cosigner<'a>, String> {
        let public = CosignerKey::new(signer.name(), *signer.verifier().verifying_key())?;
        Ok(Cosigner { signer, public })
    }

    pub fn public(&self) -> &CosignerKey {
        &self.public
    }

    /// The cosignature line of `checkpoint_text` at `timestamp` (POSIX seconds).
    pub fn cosign(&self, checkpoint_text: &str, timestamp: u64) -> NoteSignature {
        let signature = self.signer.signing_key().sign(&cosigned_message(checkpoint_text, timestamp));
        let mut raw = timestamp.to_be_bytes().to_vec();
        raw.extend_from_slice(&signature.to_bytes());
        NoteSignature { name: self.public.name.clone(), key_id: self.public.key_id, signature: raw }
    }
}

/// An `add-checkpoint` request: the size the witness last cosigned, a
/// consistency proof from it, and the new checkpoint note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old: u64,
    pub proof: Vec<Hash>,
    pub checkpoint: String,
}

impl AddCheckpoint {
    pub fn encode(&self) -> String {
        let mut out = format!("old {}\n", self.old);
        for hash in &self.proof {
            out.push_str(&B64.encode(hash));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    /// # Errors
    /// A message naming the malformed line.
    pub fn parse(body: &[u8]) -> Result<AddCheckpoint, String> {
        let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
        let (head, checkpoint) = text.split_once("\n\n").ok_or("no empty line before the checkpoint")?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .and_then(crate::keys::decimal)
            .ok_or("the first line must be `old <size>` in decimal without leading zeroes")?;
        let mut proof = Vec::new();
        for (i, line) in lines.enumerate() {
            if proof.len() == MAX_PROOF_LINES {
                return Err(format!("more than {MAX_PROOF_LINES} proof lines"));
            }
            let hash: Hash = B64
                .decode(line)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("proof line {} is not the base64 of 32 bytes", i + 1))?;
            proof.push(hash);
        }
        Ok(AddCheckpoint { old, proof, checkpoint: checkpoint.to_string() })
    }
}

/// Why a checkpoint does not satisfy a policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("witness policy line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the checkpoint is not signed by a log the policy lists for origin {0:?}")]
    Log(String),
    #[error("the witness quorum is not met: cosigned by [{cosigned}]; the policy requires {required}")]
    Quorum { cosigned: String, required: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Quorum {
    None,
    Witness(usize),
    Group { name: String, k: usize, members: Vec<Quorum> },
}

/// A trust policy in the C2SP tlog-policy form: `log <vkey> [url]`,
/// `witness <name> <vkey> [url]`, `group <name> all|any|<k> <member>...`,
/// `quorum <name>|none`, comments with `#`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    logs: Vec<VerifierKey>,
    witnesses: Vec<(String, CosignerKey, Option<String>)>,
    quorum: Quorum,
}

impl Policy {
    /// # Errors
    /// [`PolicyError::Syntax`] naming the line.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let mut logs = Vec::new();
        let mut witnesses: Vec<(String, CosignerKey, Option<String>)> = Vec::new();
        let mut groups: Vec<(String, Quorum)> = Vec::new();
        let mut quorum = None;
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            let err = |reason: String| PolicyError::Syntax { line, reason };
            if raw.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                return Err(err("control characters other than tab are not allowed".into()));
            }
            let words: Vec<&str> = raw.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
            if words.first().is_none_or(|w| w.starts_with('#')) {
                continue;
            }
            let known = |name: &str| witnesses.iter().any(|w| w.0 == name) || groups.iter().any(|g| g.0 == name);
            match words[..] {
                ["log", vkey] | ["log", vkey, _] => {
                    let key = VerifierKey::parse(vkey).map_err(|e| err(format!("log key: {e}")))?;
                    if logs.iter().any(|l: &VerifierKey| l.verifying_key() == key.verifying_key()) {
                        return Err(err("duplicate log key".into()));
                    }
                    logs.push(key);
                }
                ["witness", name, vkey] | ["witness", name, vkey, _] => {
                    if name == "none" || known(name) {
                        return Err(err(format!("the name {name:?} is taken")));
                    }
                    let key = CosignerKey::parse(vkey).map_err(|e| err(format!("witness key: {e}")))?;
                    if witnesses.iter().any(|w| w.1.key == key.key) {
                        return Err(err("duplicate witness key".into()));
                    }
                    witnesses.push((name.to_string(), key, words.get(3).map(|u| u.to_string())));
                }
                ["group", name, threshold, ref members @ ..] if !members.is_empty() => {
                    if name == "none" || known(name) {
                        return Err(err(format!("the name {name:?} is taken")));
                    }
                    let mut nodes = Vec::new();
                    for (j, member) in members.iter().enumerate() {
                        if members[..j].contains(member) {
                            return Err(err(format!("{member:?} is listed twice")));
                        }
                        nodes.push(resolve(member, &witnesses, &groups).ok_or_else(|| {
                            err(format!("{member:?} is not a witness or group defined on an earlier line"))
                        })?);
                    }
                    let k = match threshold {
                        "all" => nodes.len(),
                        "any" => 1,
                        k => crate::keys::decimal(k)
                            .and_then(|k| usize::try_from(k).ok())
                            .filter(|k| (1..=nodes.len()).contains(k))
                            .ok_or_else(|| err(format!("threshold {k:?} must be all, any or 1 to {}", nodes.len())))?,
                    };
                    groups.push((name.to_string(), Quorum::Group { name: name.to_string(), k, members: nodes }));
                }
                ["quorum", name] => {
                    if quorum.is_some() {
                        return Err(err("a second quorum line".into()));
                    }
                    quorum = Some(if name == "none" {
                        Quorum::None
                    } else {
                        resolve(name, &witnesses, &groups)
                            .ok_or_else(|| err(format!("{name:?} is not defined on an earlier line")))?
                    });
                }
                _ => return Err(err(format!("not a log, witness, group or quorum line: {:?}", raw.trim()))),
            }
        }
        let quorum = quorum.ok_or(PolicyError::Syntax { line: 0, reason: "no quorum line".into() })?;
        Ok(Policy { logs, witnesses, quorum })
    }

    /// The witnesses with their submission URLs, when given.
    pub fn witnesses(&self) -> impl Iterator<Item = (&CosignerKey, Option<&str>)> {
        self.witnesses.iter().map(|(_, key, url)| (key, url.as_deref()))
    }

    /// Checks a checkpoint note against the policy: signed by a listed log
    /// (when logs are listed; the caller verifies the log key it pins either
    /// way), and cosigned by a quorum of witnesses.
    ///
    /// # Errors
    /// [`PolicyError`] saying what is missing.
    pub fn check(&self, checkpoint_note: &str) -> Result<(), PolicyError> {
        let signed = SignedCheckpoint::parse(checkpoint_note.as_bytes())?;
        if !self.logs.is_empty() {
            let note = Note { text: &signed.text, signatures: signed.signatures.clone() };
            let origin = &signed.checkpoint.origin;
            let of_origin: Vec<VerifierKey> = self.logs.iter().filter(|k| k.name() == origin).cloned().collect();
            note::verify_note(&note, &of_origin).map_err(|_| PolicyError::Log(origin.clone()))?;
        }
        let cosigned: Vec<bool> =
            self.witnesses.iter().map(|(_, key, _)| key.cosigned(&signed.text, &signed.signatures).is_some()).collect();
        if satisfied(&self.quorum, &cosigned) {
            return Ok(());
        }
        let names: Vec<&str> =
            self.witnesses.iter().zip(&cosigned).filter(|(_, c)| **c).map(|(w, _)| w.0.as_str()).collect();
        Err(PolicyError::Quorum { cosigned: names.join(", "), required: self.describe(&self.quorum) })
    }

    fn describe(&self, quorum: &Quorum) -> String {
        match quorum {
            Quorum::None => "nothing".into(),
            Quorum::Witness(i) => format!("witness {}", self.witnesses[*i].0),
            Quorum::Group { name, k, members } => format!("group {name} ({k} of {})", members.len()),
        }
    }
}

fn resolve(
    name: &str,
    witnesses: &[(String, CosignerKey, Option<String>)],
    groups: &[(String, Quorum)],
) -> Option<Quorum> {
    if let Some(i) = witnesses.iter().position(|w| w.0 == name) {
        return Some(Quorum::Witness(i));
    }
    groups.iter().find(|g| g.0 == name).map(|g| g.1.clone())
}

fn satisfied(quorum: &Quorum, cosigned: &[bool]) -> bool {
    match quorum {
        Quorum::None => true,
        Quorum::Witness(i) => cosigned[*i],
        Quorum::Group { k, members, .. } => members.iter().filter(|m| satisfied(m, cosigned)).count() >= *k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;

    fn log() -> SignerKey {
        SignerKey::from_seed("example.com/log", &[1; 32]).unwrap()
    }

    fn witness(n: u8) -> SignerKey {
        SignerKey::from_seed(&format!("witness.example/w{n}"), &[n + 10; 32]).unwrap()
    }

    fn checkpoint(size: u64) -> String {
        Checkpoint { origin: "example.com/log".into(), size, root: [size as u8; 32] }.sign(&log())
    }

    fn cosign(note: &str, signers: &[&SignerKey]) -> String {
        let text = SignedCheckpoint::parse(note.as_bytes()).unwrap().text;
        let mut out = note.to_string();
        for s in signers {
            out.push_str(&Cosigner::new(s).unwrap().cosign(&text, 1_800_000_000).to_line());
        }
        out
    }

    fn policy(quorum: &str) -> Policy {
        let w = |n| Cosigner::new(&witness(n)).unwrap().public().to_string();
        let text = format!(
            "# three witnesses, two organisations\nlog {}\nwitness A1 {}\nwitness A2 {} https://a2.example/\n\
             witness B1 {}\ngroup A 2 A1 A2\ngroup A-and-B all A B1\nquorum {quorum}\n",
            log().verifier(),
            w(1),
            w(2),
            w(3)
        );
        Policy::parse(&text).unwrap()
    }

    #[test]
    fn cosigner_keys_round_trip_and_cosignatures_verify_with_their_time() {
        let w = witness(1);
        let cosigner = Cosigner::new(&w).unwrap();
        let vkey = cosigner.public().to_string();
        assert_eq!(CosignerKey::parse(&vkey).unwrap(), *cosigner.public());
        assert!(CosignerKey::parse(&w.verifier().to_string()).is_err(), "a note key (0x01) is not a cosigner key");
        let note = cosign(&checkpoint(5), &[&w]);
        let signed = SignedCheckpoint::parse(note.as_bytes()).unwrap();
        assert_eq!(cosigner.public().cosigned(&signed.text, &signed.signatures), Some(1_800_000_000));
        // The log key verifies the note as before: cosignature lines are ignored.
        signed.verify(log().verifier()).unwrap();
        let other = SignedCheckpoint::parse(checkpoint(6).as_bytes()).unwrap();
        assert_eq!(cosigner.public().cosigned(&other.text, &signed.signatures), None, "bound to its checkpoint");
    }

    #[test]
    fn a_quorum_of_groups_is_met_only_by_enough_cosignatures() {
        let (w1, w2, w3) = (witness(1), witness(2), witness(3));
        let p = policy("A-and-B");
        assert!(p.check(&cosign(&checkpoint(9), &[&w1, &w2, &w3])).is_ok());
        let short = p.check(&cosign(&checkpoint(9), &[&w1, &w3])).unwrap_err();
        assert!(matches!(&short, PolicyError::Quorum { cosigned, .. } if cosigned == "A1, B1"), "{short}");
        assert!(policy("A").check(&cosign(&checkpoint(9), &[&w2, &w1])).is_ok());
        assert!(policy("none").check(&checkpoint(9)).is_ok());
        let stranger = SignerKey::from_seed("example.com/log", &[99; 32]).unwrap();
        let forged = Checkpoint { origin: "example.com/log".into(), size: 9, root: [9; 32] }.sign(&stranger);
        assert!(matches!(policy("none").check(&forged), Err(PolicyError::Log(_))));
    }

    #[test]
    fn bad_policies_are_refused_with_their_line() {
        let w1 = Cosigner::new(&witness(1)).unwrap().public().to_string();
        for (text, line) in [
            (format!("witness A {w1}\nquorum B\n"), 2),
            (format!("witness A {w1}\ngroup G 2 A\nquorum G\n"), 2),
            (format!("witness A {w1}\nwitness B {w1}\nquorum A\n"), 2),
            (format!("witness A {w1}\ngroup G any A A\nquorum G\n"), 2),
            ("quorum none\nquorum none\n".to_string(), 2),
            ("frobnicate\nquorum none\n".to_string(), 1),
            (format!("witness none {w1}\nquorum none\n"), 1),
        ] {
            match Policy::parse(&text) {
                Err(PolicyError::Syntax { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(Policy::parse("# empty\n"), Err(PolicyError::Syntax { line: 0, .. })));
    }

    #[test]
    fn add_checkpoint_bodies_round_trip_and_bad_ones_are_refused() {
        let request = AddCheckpoint { old: 20, proof: vec![[1; 32], [2; 32]], checkpoint: checkpoint(30) };
        assert_eq!(AddCheckpoint::parse(request.encode().as_bytes()).unwrap(), request);
        for bad in ["old 01\n\nx", "old 5\nnot-base64\n\nx", "new 5\n\nx", "old 5\n"] {
            assert!(AddCheckpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
