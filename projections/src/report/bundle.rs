//! The files of a report bundle that are not the report itself: the signed
//! manifest, the range proof that ties the entries to the checkpoint, and the
//! entries file. `schemas/FORMAT.md` section 12 specifies them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use portcullis_format::merkle::{Frontier, Hash, HashReader, ProofError, verify_consistency};
use sha2::{Digest, Sha256};

/// The first line of a manifest's text. A checkpoint's second line is a
/// decimal size and an event's text starts with `portcullis/event/v1`, so a
/// manifest text can be neither (domain separation, FORMAT.md section 7.3).
pub const MANIFEST_HEADER: &str = "portcullis/report/v1";
/// The first line of the range proof file.
pub const PROOF_HEADER: &str = "portcullis/report-proof/v1";

pub const MANIFEST_FILE: &str = "manifest";
pub const CHECKPOINT_FILE: &str = "checkpoint";
pub const ENTRIES_FILE: &str = "entries";
pub const PROOF_FILE: &str = "proof";
pub const JSON_FILE: &str = "report.json";
pub const HTML_FILE: &str = "report.html";

/// The bundle path of a population's CSV file.
pub fn population_file(name: &str) -> String {
    format!("populations/{name}.csv")
}

/// Lowercase hex of `bytes` (a digest).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Why a bundle file is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct BundleFormatError {
    pub file: &'static str,
    pub reason: String,
}

fn bad(file: &'static str, reason: impl Into<String>) -> BundleFormatError {
    BundleFormatError { file, reason: reason.into() }
}

/// The manifest's content (its text, before the signature).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub origin: String,
    pub report: String,
    pub from: String,
    pub to: String,
    pub revoke_sla_ms: u64,
    /// The bundle's entries are `first_seq..end_seq`.
    pub first_seq: u64,
    pub end_seq: u64,
    pub checkpoint_size: u64,
    pub anchor_size: Option<u64>,
    /// `(sha256 hex, path)`, sorted by path; every file but the manifest.
    pub files: Vec<(String, String)>,
    /// `(name, definition)` of every population, in report order.
    pub populations: Vec<(String, String)>,
}

fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Manifest {
    /// The note text (ends in a newline).
    pub fn text(&self) -> String {
        let mut t = format!(
            "{MANIFEST_HEADER}\norigin {}\nreport {}\nfrom {}\nto {}\nrevoke_sla_ms {}\nentries {} {}\ncheckpoint {}\nanchor {}\n",
            self.origin,
            self.report,
            self.from,
            self.to,
            self.revoke_sla_ms,
            self.first_seq,
            self.end_seq,
            self.checkpoint_size,
            self.anchor_size.map_or_else(|| "none".to_string(), |a| a.to_string())
        );
        for (hash, path) in &self.files {
            t.push_str(&format!("file {hash} {path}\n"));
        }
        for (name, definition) in &self.populations {
            t.push_str(&format!("population {name} {definition}\n"));
        }
        t
    }

    /// Parses a manifest text.
    ///
    /// # Errors
    /// [`BundleFormatError`] naming the bad line.
    pub fn parse_text(text: &str) -> Result<Manifest, BundleFormatError> {
        let err = |line: usize, why: &str| bad(MANIFEST_FILE, format!("line {}: {why}", line + 1));
        let body = text.strip_suffix('\n').ok_or_else(|| err(0, "text must end in a newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        if lines.first() != Some(&MANIFEST_HEADER) {
            return Err(err(0, "the header must be portcullis/report/v1"));
        }
        let field = |i: usize, key: &str| -> Result<&str, BundleFormatError> {
            lines
                .get(i)
                .and_then(|l| l.strip_prefix(key))
                .and_then(|v| v.strip_prefix(' '))
                .ok_or_else(|| err(i, &format!("expected `{key} ...`")))
        };
        let number = |i: usize, v: &str| decimal(v).ok_or_else(|| err(i, "not a decimal number"));
        let origin = field(1, "origin")?.to_string();
        let report = field(2, "report")?.to_string();
        let from = field(3, "from")?.to_string();
        let to = field(4, "to")?.to_string();
        let revoke_sla_ms = number(5, field(5, "revoke_sla_ms")?)?;
        let (first, end) = field(6, "entries")?.split_once(' ').ok_or_else(|| err(6, "expected two numbers"))?;
        let (first_seq, end_seq) = (number(6, first)?, number(6, end)?);
        if end_seq <= first_seq {
            return Err(err(6, "the entry range is empty"));
        }
        let checkpoint_size = number(7, field(7, "checkpoint")?)?;
        let anchor = field(8, "anchor")?;
        let anchor_size = if anchor == "none" { None } else { Some(number(8, anchor)?) };
        let mut files = Vec::new();
        let mut populations = Vec::new();
        for (i, line) in lines.iter().enumerate().skip(9) {
            if let Some(rest) = line.strip_prefix("file ") {
                let (hash, path) = rest.split_once(' ').ok_or_else(|| err(i, "expected `file SHA256 PATH`"))?;
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(err(i, "the hash must be 64 lowercase hex digits"));
                }
                if !populations.is_empty() {
                    return Err(err(i, "file lines come before population lines"));
                }
                files.push((hash.to_string(), path.to_string()));
            } else if let Some(rest) = line.strip_prefix("population ") {
                let (name, definition) =
                    rest.split_once(' ').ok_or_else(|| err(i, "expected `population NAME DEFINITION`"))?;
                populations.push((name.to_string(), definition.to_string()));
            } else {
                return Err(err(i, "expected a file or population line"));
            }
        }
        if !files.windows(2).all(|w| w[0].1 < w[1].1) {
            return Err(bad(MANIFEST_FILE, "file lines must be sorted by path without repeats"));
        }
        Ok(Manifest {
            origin,
            report,
            from,
            to,
            revoke_sla_ms,
            first_seq,
            end_seq,
            checkpoint_size,
            anchor_size,
            files,
            populations,
        })
    }
}

/// The entries file: each entry as a uint16 big-endian length and its bytes
/// (the tlog-tiles entry bundle encoding, for any number of entries).
pub fn encode_entries<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        out.extend_from_slice(&u16::try_from(entry.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(entry);
    }
    out
}

/// Splits the entries file.
///
/// # Errors
/// [`BundleFormatError`] when a length prefix runs past the end.
pub fn decode_entries(bytes: &[u8]) -> Result<Vec<&[u8]>, BundleFormatError> {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        if pos + 2 > bytes.len() {
            return Err(bad(ENTRIES_FILE, format!("truncated length prefix at byte {pos}")));
        }
        let len = usize::from(u16::from_be_bytes([bytes[pos], bytes[pos + 1]]));
        pos += 2;
        if pos + len > bytes.len() {
            return Err(bad(ENTRIES_FILE, format!("entry {} runs past the end of the file", entries.len())));
        }
        entries.push(&bytes[pos..pos + len]);
        pos += len;
    }
    Ok(entries)
}

/// The proof that entries `start..end` are leaves `start..end` of the tree of
/// `size` leaves: the frontier of the tree of `start` leaves (the roots of its
/// perfect subtrees, largest first), from which the entries' leaf hashes
/// rebuild the root of the tree of `end` leaves, and the RFC 9162 consistency
/// proof from that tree to the checkpoint's; plus, with an anchor, the
/// consistency proof from the anchor's size to `size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeProof {
    pub start: u64,
    pub end: u64,
    pub size: u64,
    pub left: Vec<Hash>,
    pub right: Vec<Hash>,
    pub anchor: Option<(u64, Vec<Hash>)>,
}

/// The `(level, index)` of each frontier node of a tree of `size` leaves, largest first.
pub fn frontier_nodes(size: u64) -> Vec<(u8, u64)> {
    let mut nodes = Vec::new();
    let mut start = 0u64;
    for level in (0..64u8).rev() {
        if size & (1 << level) != 0 {
            nodes.push((level, start >> level));
            start += 1 << level;
        }
    }
    nodes
}

struct Listed<'a>(&'a [(u8, u64)], &'a [Hash]);

impl HashReader for Listed<'_> {
    type Error = ();
    fn node(&self, level: u8, index: u64) -> Result<Hash, ()> {
        let i = self.0.iter().position(|n| *n == (level, index)).ok_or(())?;
        self.1.get(i).copied().ok_or(())
    }
}

impl RangeProof {
    pub fn encode(&self) -> String {
        let mut t = format!("{PROOF_HEADER}\nstart {}\nend {}\nsize {}\n", self.start, self.end, self.size);
        for h in &self.left {
            t.push_str(&format!("left {}\n", B64.encode(h)));
        }
        for h in &self.right {
            t.push_str(&format!("right {}\n", B64.encode(h)));
        }
        if let Some((size, proof)) = &self.anchor {
            t.push_str(&format!("anchor-size {size}\n"));
            for h in proof {
                t.push_str(&format!("anchor {}\n", B64.encode(h)));
            }
        }
        t
    }

    /// Parses the proof file.
    ///
    /// # Errors
    /// [`BundleFormatError`] naming the bad line.
    pub fn parse(text: &str) -> Result<RangeProof, BundleFormatError> {
        let err = |line: usize, why: &str| bad(PROOF_FILE, format!("line {}: {why}", line + 1));
        let body = text.strip_suffix('\n').ok_or_else(|| err(0, "must end in a newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        if lines.first() != Some(&PROOF_HEADER) {
            return Err(err(0, "the header must be portcullis/report-proof/v1"));
        }
        let number = |i: usize, key: &str| {
            lines
                .get(i)
                .and_then(|l| l.strip_prefix(key))
                .and_then(|v| v.strip_prefix(' '))
                .and_then(decimal)
                .ok_or_else(|| err(i, &format!("expected `{key} N`")))
        };
        let (start, end, size) = (number(1, "start")?, number(2, "end")?, number(3, "size")?);
        let hash = |i: usize, v: &str| -> Result<Hash, BundleFormatError> {
            B64.decode(v)
                .ok()
                .filter(|_| v.len() == 44)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| err(i, "not the base64 of 32 bytes"))
        };
        let (mut left, mut right, mut anchor) = (Vec::new(), Vec::new(), None::<(u64, Vec<Hash>)>);
        for (i, line) in lines.iter().enumerate().skip(4) {
            let (key, value) = line.split_once(' ').ok_or_else(|| err(i, "expected `KEY VALUE`"))?;
            match (key, &mut anchor) {
                ("left", None) if right.is_empty() => left.push(hash(i, value)?),
                ("right", None) => right.push(hash(i, value)?),
                ("anchor-size", None) => {
                    anchor = Some((decimal(value).ok_or_else(|| err(i, "not a number"))?, Vec::new()))
                }
                ("anchor", Some((_, proof))) => proof.push(hash(i, value)?),
                _ => return Err(err(i, "unexpected line here")),
            }
        }
        Ok(RangeProof { start, end, size, left, right, anchor })
    }

    /// The frontier of the tree of `start` leaves that the proof gives; the
    /// leaf hashes of the bundle's entries are pushed onto it, in order, and
    /// [`RangeProof::verify_frontier`] then checks where they lead.
    ///
    /// # Errors
    /// A text naming what does not hold.
    pub fn frontier(&self) -> Result<Frontier, String> {
        let nodes = frontier_nodes(self.start);
        if nodes.len() != self.left.len() {
            return Err(format!(
                "a tree of {} leaves has {} frontier hashes, the proof gives {}",
                self.start,
                nodes.len(),
                self.left.len()
            ));
        }
        Frontier::load(self.start, &Listed(&nodes, &self.left))
            .map_err(|()| "the frontier hashes do not fit the start".to_string())
    }

    /// Checks that `frontier` (this proof's [`RangeProof::frontier`] with the
    /// leaf hashes of entries `start..end` pushed) is in the tree of `size`
    /// leaves whose root is `root`.
    ///
    /// # Errors
    /// A text naming what does not hold.
    pub fn verify_frontier(&self, frontier: &Frontier, root: &Hash) -> Result<(), String> {
        if frontier.size() != self.end || self.end > self.size {
            return Err(format!(
                "the proof is for entries {}..{} of a tree of size {}, the bundle holds {} entries",
                self.start,
                self.end,
                self.size,
                frontier.size().saturating_sub(self.start)
            ));
        }
        verify_consistency(self.end, self.size, &frontier.root(), root, &self.right)
            .map_err(|e: ProofError| format!("the entries do not lead to the checkpoint's root through the proof: {e}"))
    }
}
