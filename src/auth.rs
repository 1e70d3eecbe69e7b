//! Authentication by static bearer tokens, stored only as SHA-256 hashes.
//!
//! The tokens file holds one token a line: `<sha256 hex> <subject> [group,group,...]`,
//! `#` comments allowed. `portcullis token create` appends a line and prints
//! the token once; the service never stores or logs a token itself. The actor
//! of every event is what this module established, never what a body claims.

use portcullis_format::event::Actor;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The prefix of every token, so they are recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "pcs_";

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("tokens file {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("tokens file {path} line {line}: {reason}")]
    Line { path: String, line: usize, reason: String },
    #[error("{0}")]
    Invalid(String),
}

/// The known tokens, by hash.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Actor>,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn valid_subject(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',')
}

impl Tokens {
    /// Reads a tokens file; a missing file is an empty set.
    ///
    /// # Errors
    /// [`TokenFileError`] naming the file and line.
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let name = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tokens::default()),
            Err(e) => return Err(TokenFileError::Io { path: name, reason: e.to_string() }),
        };
        let mut tokens = Tokens::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| TokenFileError::Line { path: name.clone(), line: i + 1, reason: reason.into() };
            let mut parts = line.split_whitespace();
            let (Some(hex), Some(sub)) = (parts.next(), parts.next()) else {
                return Err(bad("expected: <sha256 hex> <subject> [groups]"));
            };
            let groups: Vec<String> =
                parts.next().map(|g| g.split(',').map(str::to_string).collect()).unwrap_or_default();
            if parts.next().is_some() {
                return Err(bad("too many fields"));
            }
            let digest = decode_hex(hex).ok_or_else(|| bad("the hash is not 64 hex digits"))?;
            if !valid_subject(sub) || !groups.iter().all(|g| valid_subject(g)) {
                return Err(bad("subjects and groups are non-empty, without spaces or commas"));
            }
            tokens.by_hash.insert(digest, Actor { sub: sub.to_string(), groups, via: "token".into() });
        }
        Ok(tokens)
    }

    /// The actor a presented token stands for.
    pub fn authenticate(&self, token: &str) -> Option<&Actor> {
        self.by_hash.get(&hash(token))
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Creates a token for `sub` with `groups`, appends its hash to the file
/// (created with mode 0600), and returns the token.
///
/// # Errors
/// [`TokenFileError`] for a bad subject or group, or an I/O failure.
pub fn create(path: &Path, sub: &str, groups: &[String]) -> Result<String, TokenFileError> {
    if !valid_subject(sub) || !groups.iter().all(|g| valid_subject(g)) {
        return Err(TokenFileError::Invalid("subjects and groups are non-empty, without spaces or commas".into()));
    }
    let io = |e: std::io::Error| TokenFileError::Io { path: path.display().to_string(), reason: e.to_string() };
    let mut secret = [0u8; 24];
    getrandom::fill(&mut secret).map_err(|e| TokenFileError::Invalid(format!("no system randomness: {e}")))?;
    let token = format!("{TOKEN_PREFIX}{}", secret.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let digest: String = hash(&token).iter().map(|b| format!("{b:02x}")).collect();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(io)?;
    writeln!(file, "{digest} {sub} {}", groups.join(",")).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_tokens_authenticate_and_only_their_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let token = create(&path, "alice", &["web".into(), "sre".into()]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token));
        let tokens = Tokens::load(&path).unwrap();
        let actor = tokens.authenticate(&token).unwrap();
        assert_eq!((actor.sub.as_str(), actor.groups.len(), actor.via.as_str()), ("alice", 2, "token"));
        assert!(tokens.authenticate("pcs_wrong").is_none());
    }

    #[test]
    fn a_bad_line_is_refused_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# comment\nnot-a-hash alice\n").unwrap();
        let err = Tokens::load(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
