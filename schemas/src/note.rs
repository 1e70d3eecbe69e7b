//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys.
//!
//! A note is a text ending in a newline, a blank line, and one or more
//! signature lines `— <key name> <base64(key ID || signature)>`. The key ID of
//! an Ed25519 key is `SHA-256(name || 0x0A || 0x01 || public key)[:4]`.
//!
//! Keys are written as the Go `golang.org/x/mod/sumdb/note` strings:
//! verifier keys `<name>+<hex key ID>+<base64(0x01 || public key)>` and
//! signer keys `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signed-note signature type byte of Ed25519.
pub const ALG_ED25519: u8 = 0x01;

/// The most signature lines a note may carry; more is refused as malformed.
pub const MAX_SIGNATURES: usize = 64;

/// Why a note, a key or a signature is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("note is not valid UTF-8")]
    NotUtf8,
    #[error("note contains a control character other than newline at byte {0}")]
    ControlCharacter(usize),
    #[error("note has no blank line separating the text from the signatures")]
    NoSignatureBlock,
    #[error("note text does not end with a newline")]
    TextNotTerminated,
    #[error("malformed signature line {0}")]
    MalformedSignatureLine(usize),
    #[error("note has no signature lines")]
    NoSignatures,
    #[error("note has more than {MAX_SIGNATURES} signature lines")]
    TooManySignatures,
    #[error("malformed key: {0}")]
    MalformedKey(&'static str),
    #[error("key is weak (small-order point); refused")]
    WeakKey,
    #[error("key name {0:?} is not allowed: it must be non-empty without spaces or '+'")]
    BadKeyName(String),
}

/// A parsed signature line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: u32,
    /// The signature bytes after the key ID (64 for Ed25519).
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The signature line, with its trailing newline.
    pub fn to_line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&self.signature);
        format!("\u{2014} {} {}\n", self.name, B64.encode(raw))
    }

    /// The Ed25519 signature, if the bytes have the right length.
    pub fn ed25519(&self) -> Option<Signature> {
        let bytes: [u8; 64] = self.signature.as_slice().try_into().ok()?;
        Some(Signature::from_bytes(&bytes))
    }
}

/// A note split into its text and signature lines. The text borrows the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note<'a> {
    /// The text, including its final newline.
    pub text: &'a str,
    pub signatures: Vec<NoteSignature>,
}

impl<'a> Note<'a> {
    /// Splits a signed note. Checks the syntax only; signatures are verified by the caller.
    ///
    /// # Errors
    /// [`NoteError`] for invalid UTF-8, control characters, a missing blank
    /// line, or a malformed signature line.
    pub fn parse(input: &'a [u8]) -> Result<Note<'a>, NoteError> {
        let all = std::str::from_utf8(input).map_err(|_| NoteError::NotUtf8)?;
        if let Some(pos) = input.iter().position(|&b| b < 0x20 && b != b'\n') {
            return Err(NoteError::ControlCharacter(pos));
        }
        let split = all.rfind("\n\n").ok_or(NoteError::NoSignatureBlock)?;
        let text = &all[..split + 1];
        let block = &all[split + 2..];
        if block.is_empty() {
            return Err(NoteError::NoSignatures);
        }
        if !block.ends_with('\n') {
            return Err(NoteError::MalformedSignatureLine(1));
        }
        let mut signatures = Vec::new();
        for (i, line) in block[..block.len() - 1].split('\n').enumerate() {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::TooManySignatures);
            }
            signatures.push(parse_signature_line(line).ok_or(NoteError::MalformedSignatureLine(i + 1))?);
        }
        Ok(Note { text, signatures })
    }
}

fn parse_signature_line(line: &str) -> Option<NoteSignature> {
    let rest = line.strip_prefix("\u{2014} ")?;
    let (name, sig) = rest.split_once(' ')?;
    if !valid_key_name(name) || sig.contains(' ') {
        return None;
    }
    let raw = B64.decode(sig).ok()?;
    if raw.len() < 5 {
        return None;
    }
    Some(NoteSignature {
        name: name.to_string(),
        key_id: u32::from_be_bytes(raw[..4].try_into().ok()?),
        signature: raw[4..].to_vec(),
    })
}

/// Whether `name` may be a key name: non-empty, no Unicode white space, no '+'.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The signed-note key ID of an Ed25519 public key under `name`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ALG_ED25519]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A named Ed25519 public key that verifies note signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl VerifierKey {
    /// Builds a verifier key, refusing weak (small-order) keys.
    ///
    /// # Errors
    /// [`NoteError::BadKeyName`] or [`NoteError::WeakKey`].
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        if !valid_key_name(name) {
            return Err(NoteError::BadKeyName(name.to_string()));
        }
        if key.is_weak() {
            return Err(NoteError::WeakKey);
        }
        Ok(VerifierKey { name: name.to_string(), key_id: key_id(name, key.as_bytes()), key })
    }

    /// Parses `<name>+<hex key ID>+<base64(0x01 || public key)>`.
    ///
    /// # Errors
    /// [`NoteError::MalformedKey`] when the string is not of that form or the
    /// key ID does not match the key; [`NoteError::WeakKey`] for a weak key.
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        // Names cannot contain '+', but base64 keys can: split from the left.
        let mut parts = s.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::MalformedKey("expected <name>+<key id>+<key>"));
        };
        if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(NoteError::MalformedKey("key id must be 8 lowercase hex digits"));
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| NoteError::MalformedKey("key id is not hex"))?;
        let raw = B64.decode(key).map_err(|_| NoteError::MalformedKey("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(NoteError::MalformedKey("key is not an Ed25519 (type 0x01) key of 32 bytes"));
        }
        let bytes: [u8; 32] = raw[1..].try_into().map_err(|_| NoteError::MalformedKey("key length"))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| NoteError::MalformedKey("not a valid Ed25519 point"))?;
        let verifier = VerifierKey::new(name, key)?;
        if verifier.key_id != id {
            return Err(NoteError::MalformedKey("key id does not match the key"));
        }
        Ok(verifier)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Whether the signature line was made by this key (same name and key ID).
    pub fn matches(&self, signature: &NoteSignature) -> bool {
        signature.name == self.name && signature.key_id == self.key_id
    }

    /// Verifies one signature over `text` strictly (RFC 8032 with canonical
    /// encodings and no small-order components).
    pub fn verify(&self, text: &[u8], signature: &NoteSignature) -> bool {
        self.matches(signature) && signature.ed25519().is_some_and(|sig| self.key.verify_strict(text, &sig).is_ok())
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.key_id, B64.encode(raw))
    }
}

/// A named Ed25519 private key that signs notes.
pub struct SignerKey {
    name: String,
    key: SigningKey,
    verifier: VerifierKey,
}

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("SignerKey").field("verifier", &self.verifier.to_string()).finish()
    }
}

impl SignerKey {
    /// A signer from a 32-byte Ed25519 seed.
    ///
    /// # Errors
    /// [`NoteError::BadKeyName`]; [`NoteError::WeakKey`] cannot happen for a
    /// key derived from a seed but is checked all the same.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        let key = SigningKey::from_bytes(seed);
        let verifier = VerifierKey::new(name, key.verifying_key())?;
        Ok(SignerKey { name: name.to_string(), key, verifier })
    }

    /// A new random key from the operating system's generator.
    ///
    /// # Errors
    /// [`NoteError::BadKeyName`], or [`NoteError::MalformedKey`] when the
    /// system has no randomness to give.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| NoteError::MalformedKey("no system randomness"))?;
        Self::from_seed(name, &seed)
    }

    /// Parses `PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>`.
    ///
    /// # Errors
    /// [`NoteError::MalformedKey`] when the string is not of that form or the key ID does not match.
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        let rest = s
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::MalformedKey("expected PRIVATE+KEY+<name>+<key id>+<key>"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::MalformedKey("expected PRIVATE+KEY+<name>+<key id>+<key>"));
        };
        if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(NoteError::MalformedKey("key id must be 8 lowercase hex digits"));
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| NoteError::MalformedKey("key id is not hex"))?;
        let raw = B64.decode(key).map_err(|_| NoteError::MalformedKey("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(NoteError::MalformedKey("key is not an Ed25519 (type 0x01) seed of 32 bytes"));
        }
        let seed: [u8; 32] = raw[1..].try_into().map_err(|_| NoteError::MalformedKey("key length"))?;
        let signer = Self::from_seed(name, &seed)?;
        if signer.verifier.key_id != id {
            return Err(NoteError::MalformedKey("key id does not match the key"));
        }
        Ok(signer)
    }

    /// The private key string. Handle with care: it is the log's identity.
    pub fn to_private_string(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!("PRIVATE+KEY+{}+{:08x}+{}", self.name, self.verifier.key_id, B64.encode(raw))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn verifier(&self) -> &VerifierKey {
        &self.verifier
    }

    /// The key itself, for signatures of other formats (witness cosignatures).
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs `text` and returns the signature line.
    pub fn sign(&self, text: &[u8]) -> NoteSignature {
        NoteSignature {
            name: self.name.clone(),
            key_id: self.verifier.key_id,
            signature: self.key.sign(text).to_bytes().to_vec(),
        }
    }
}

/// Assembles a signed note from its text (ending in a newline) and signatures.
pub fn assemble(text: &str, signatures: &[NoteSignature]) -> String {
    let mut out = String::with_capacity(text.len() + 1 + signatures.len() * 110);
    out.push_str(text);
    out.push('\n');
    for signature in signatures {
        out.push_str(&signature.to_line());
    }
    out
}

/// Verifies a note the C2SP way against a set of trusted keys: signatures by
/// unknown keys are ignored, every signature by a known key must verify, and
/// at least one must. Returns the keys that signed.
///
/// # Errors
/// [`VerifyNoteError`] naming the first failure.
pub fn verify_note<'k>(note: &Note<'_>, keys: &'k [VerifierKey]) -> Result<Vec<&'k VerifierKey>, VerifyNoteError> {
    let mut signed = Vec::new();
    for signature in &note.signatures {
        if let Some(key) = keys.iter().find(|k| k.matches(signature)) {
            if !key.verify(note.text.as_bytes(), signature) {
                return Err(VerifyNoteError::BadSignature { key: key.to_string() });
            }
            signed.push(key);
        }
    }
    if signed.is_empty() {
        return Err(VerifyNoteError::NoTrustedSignature);
    }
    Ok(signed)
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyNoteError {
    #[error("signature by {key} does not verify")]
    BadSignature { key: String },
    #[error("no signature by a trusted key")]
    NoTrustedSignature,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_strings_round_trip_and_ids_are_checked() {
        let signer = SignerKey::from_seed("example.com/log", &[7u8; 32]).unwrap();
        let again = SignerKey::parse(&signer.to_private_string()).unwrap();
        assert_eq!(again.verifier(), signer.verifier());
        let vkey = signer.verifier().to_string();
        assert_eq!(VerifierKey::parse(&vkey).unwrap(), *signer.verifier());
        let wrong_id = vkey.replacen(&format!("{:08x}", signer.verifier().key_id()), "00000000", 1);
        assert!(VerifierKey::parse(&wrong_id).is_err());
    }

    #[test]
    fn keys_whose_base64_contains_plus_signs_parse() {
        // Regression: splitting from the right broke on '+' inside the base64 key.
        let with_plus = (0u8..=255)
            .map(|i| SignerKey::from_seed("example.com/log", &[i; 32]).unwrap())
            .find(|k| k.to_private_string().rsplit('+').next().is_some_and(|b| b.len() < 40))
            .expect("some seed gives a key whose base64 has a '+'");
        assert_eq!(SignerKey::parse(&with_plus.to_private_string()).unwrap().verifier(), with_plus.verifier());
        assert_eq!(VerifierKey::parse(&with_plus.verifier().to_string()).unwrap(), *with_plus.verifier());
    }

    #[test]
    fn weak_keys_are_refused() {
        // The identity point is of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let key = VerifyingKey::from_bytes(&identity).unwrap();
        assert_eq!(VerifierKey::new("x", key), Err(NoteError::WeakKey));
    }

    #[test]
    fn signature_block_is_split_at_the_last_blank_line() {
        let signer = SignerKey::from_seed("a", &[1u8; 32]).unwrap();
        let text = "one\n\ntwo\n";
        let note = assemble(text, &[signer.sign(text.as_bytes())]);
        let parsed = Note::parse(note.as_bytes()).unwrap();
        assert_eq!(parsed.text, text);
        assert!(verify_note(&parsed, std::slice::from_ref(signer.verifier())).is_ok());
    }
}
