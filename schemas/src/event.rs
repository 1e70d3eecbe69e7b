//! Ledger entries: events as signed notes.
//!
//! An entry is a C2SP signed note whose text is exactly two lines:
//!
//! ```text
//! portcullis/event/v1
//! {"actor":{...},"data":{...},"id":"...","kind":"...","log":"...","prev":"...","seq":0,"ts":"...","v":1}
//!
//! — <log origin> <base64(key ID || Ed25519 signature)>
//! ```
//!
//! Line 2 is the RFC 8785 canonical JSON of the event. The stored bytes are
//! what is hashed and signed; see `schemas/FORMAT.md` for the full rules.

use crate::json::{Json, JsonError};
use crate::merkle::Hash;
use crate::note::{self, Note, NoteError, NoteSignature, SignerKey, VerifierKey};
use crate::time::Timestamp;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// The first line of every event note.
pub const EVENT_HEADER: &str = "portcullis/event/v1";

/// The largest entry, in bytes: tlog-tiles entry bundles prefix each entry with a uint16 length.
pub const MAX_ENTRY_SIZE: usize = 65_535;

/// The kind of the event that rotates the log's signing key.
pub const KIND_KEY_ROTATED: &str = "key.rotated";

/// The kind of the first event of a ledger.
pub const KIND_LEDGER_CREATED: &str = "ledger.created";

/// The top-level fields of an event, in canonical order.
pub const EVENT_FIELDS: [&str; 9] = ["actor", "data", "id", "kind", "log", "prev", "seq", "ts", "v"];

/// Who caused an event, exactly as authentication established it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Actor {
    /// The authenticated subject (user name, service account, or `system:portcullis`).
    pub sub: String,
    /// The groups the authentication asserted, in the order it gave them.
    pub groups: Vec<String>,
    /// How the actor was authenticated: `oidc`, `token`, `kubernetes` or `system`.
    pub via: String,
}

impl Actor {
    /// The actor of events the service records on its own behalf.
    pub fn system() -> Actor {
        Actor { sub: "system:portcullis".into(), groups: Vec::new(), via: "system".into() }
    }

    fn to_json(&self) -> Json {
        Json::Obj(vec![
            ("groups".into(), Json::Arr(self.groups.iter().cloned().map(Json::Str).collect())),
            ("sub".into(), Json::Str(self.sub.clone())),
            ("via".into(), Json::Str(self.via.clone())),
        ])
    }
}

/// A stable 128-bit event identifier, written as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    /// A random identifier.
    ///
    /// # Errors
    /// When the system has no randomness to give.
    pub fn random() -> Result<EventId, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        Ok(EventId(bytes))
    }

    pub fn parse(s: &str) -> Option<EventId> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(EventId(bytes))
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// What a command handler decides: an event before the sequencer places it in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventDraft {
    pub id: EventId,
    pub kind: String,
    pub v: u32,
    pub actor: Actor,
    /// The kind's data; must be a JSON object.
    pub data: Json,
}

/// A complete event: the draft plus what only the sequencer assigns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub log: String,
    pub seq: u64,
    /// The leaf hash of entry `seq - 1`, or 32 zero bytes for entry 0.
    pub prev: Hash,
    pub ts: Timestamp,
    pub draft: EventDraft,
}

/// Why bytes are not a well-formed entry, or why an event cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("entry is {0} bytes, more than the limit of {MAX_ENTRY_SIZE}")]
    TooLarge(usize),
    #[error("malformed note: {0}")]
    Note(#[from] NoteError),
    #[error("note text must be exactly two lines: the header and the event JSON")]
    TextShape,
    #[error("header line is {0:?}, expected {EVENT_HEADER:?}")]
    Header(String),
    #[error("event line is not strict JSON: {0}")]
    Json(#[from] JsonError),
    #[error("event line is not in canonical form (RFC 8785)")]
    NotCanonical,
    #[error("field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("entry has {found} signature lines, expected {expected}")]
    SignatureCount { found: usize, expected: usize },
}

fn field_err(field: &'static str, reason: impl Into<String>) -> EntryError {
    EntryError::Field { field, reason: reason.into() }
}

/// Checks the rules of an event kind name: dot-separated lowercase words.
pub fn valid_kind(kind: &str) -> bool {
    kind.len() <= 64
        && kind.split('.').all(|word| {
            let mut chars = word.chars();
            chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

fn check_label(field: &'static str, s: &str, max: usize) -> Result<(), EntryError> {
    if s.is_empty() || s.chars().count() > max {
        return Err(field_err(field, format!("must be 1 to {max} characters")));
    }
    if s.chars().any(char::is_control) {
        return Err(field_err(field, "must not contain control characters"));
    }
    Ok(())
}

impl Event {
    /// The event as a JSON object (field order is irrelevant: output is canonical).
    pub fn to_json(&self) -> Json {
        Json::Obj(vec![
            ("actor".into(), self.draft.actor.to_json()),
            ("data".into(), self.draft.data.clone()),
            ("id".into(), Json::Str(self.draft.id.to_string())),
            ("kind".into(), Json::Str(self.draft.kind.clone())),
            ("log".into(), Json::Str(self.log.clone())),
            ("prev".into(), Json::Str(B64.encode(self.prev))),
            ("seq".into(), Json::Int(self.seq as i64)),
            ("ts".into(), Json::Str(self.ts.to_string())),
            ("v".into(), Json::Int(i64::from(self.draft.v))),
        ])
    }

    /// The note text: header line and canonical JSON line.
    pub fn text(&self) -> String {
        PreparedEvent::write(&self.draft, &self.log).text(self.seq, &self.prev, self.ts)
    }

    /// Checks the fields, signs the text with `signers` (the log key, and for a
    /// key rotation also the new key) and returns the entry bytes.
    ///
    /// # Errors
    /// [`EntryError`] when a field breaks the format's rules or the entry is too large.
    pub fn sign(&self, signers: &[&SignerKey]) -> Result<Vec<u8>, EntryError> {
        self.validate()?;
        PreparedEvent::write(&self.draft, &self.log).sign(self.seq, &self.prev, self.ts, signers)
    }

    /// Checks every field against the format's rules.
    ///
    /// # Errors
    /// [`EntryError::Field`] naming the first bad field.
    pub fn validate(&self) -> Result<(), EntryError> {
        check_seq(self.seq)?;
        self.draft.validate(&self.log)
    }

    /// The field rules, without walking `data` (which parsed JSON already satisfies).
    fn validate_fields(&self) -> Result<(), EntryError> {
        check_seq(self.seq)?;
        self.draft.validate_fields(&self.log)
    }
}

fn check_seq(seq: u64) -> Result<(), EntryError> {
    if seq > crate::json::MAX_SAFE_INTEGER as u64 {
        return Err(field_err("seq", "must be below 2^53"));
    }
    Ok(())
}

impl EventDraft {
    /// Checks the draft as an event of `log` (every rule but `seq`'s) and
    /// writes its part of the text, so that what is left for the sequencer
    /// is the three fields only it assigns and the signature.
    ///
    /// # Errors
    /// [`EntryError::Field`] naming the first bad field.
    pub fn prepare(&self, log: &str) -> Result<PreparedEvent, EntryError> {
        self.validate(log)?;
        Ok(PreparedEvent::write(self, log))
    }

    /// Every rule of an event of `log` but `seq`'s.
    fn validate(&self, log: &str) -> Result<(), EntryError> {
        self.validate_fields(log)?;
        // `data` is nested one level down in the event object.
        self.data.check_strict(1).map_err(|e| field_err("data", e.to_string()))
    }

    /// The field rules of an event of `log`, but for `seq` and without walking `data`.
    fn validate_fields(&self, log: &str) -> Result<(), EntryError> {
        if !note::valid_key_name(log) || log.len() > 255 {
            return Err(field_err("log", "must be 1 to 255 bytes without spaces or '+'"));
        }
        if !valid_kind(&self.kind) {
            return Err(field_err("kind", "must be dot-separated lowercase words, at most 64 bytes"));
        }
        if self.v == 0 || self.v > 65_535 {
            return Err(field_err("v", "must be 1 to 65535"));
        }
        check_label("actor.sub", &self.actor.sub, 256)?;
        if self.actor.groups.len() > 256 {
            return Err(field_err("actor.groups", "at most 256 groups"));
        }
        for group in &self.actor.groups {
            check_label("actor.groups", group, 256)?;
        }
        let via = &self.actor.via;
        if via.is_empty()
            || via.len() > 32
            || !via.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(field_err("actor.via", "must be 1 to 32 lowercase letters, digits or '-'"));
        }
        if !matches!(self.data, Json::Obj(_)) {
            return Err(field_err("data", "must be an object"));
        }
        if self.kind == KIND_KEY_ROTATED {
            rotation_key(&self.data, log)?;
        }
        Ok(())
    }
}

/// A draft checked and written out as an event of one log ([`EventDraft::prepare`]),
/// all but `prev`, `seq` and `ts`. The canonical order of the event's keys
/// ([`EVENT_FIELDS`]) puts those three between `log` and `v`, so the text is
/// `head`, then them, then `tail`: the same bytes as [`Event::text`], which is
/// written this way too. Callers prepare their drafts before they queue for
/// the sequencer, which then has only the chain and the signature left to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedEvent {
    id: EventId,
    log: String,
    /// The header line, and the JSON line from `{` to the comma after `log`'s value.
    head: String,
    /// From the comma before `"v"` to the end of the text (its newline).
    tail: String,
}

impl PreparedEvent {
    /// Writes the draft's part of the text, without checking it.
    fn write(draft: &EventDraft, log: &str) -> PreparedEvent {
        let mut head = String::with_capacity(512);
        head.push_str(EVENT_HEADER);
        head.push_str("\n{\"actor\":");
        draft.actor.to_json().write_canonical(&mut head);
        head.push_str(",\"data\":");
        draft.data.write_canonical(&mut head);
        head.push_str(",\"id\":");
        Json::Str(draft.id.to_string()).write_canonical(&mut head);
        head.push_str(",\"kind\":");
        Json::Str(draft.kind.clone()).write_canonical(&mut head);
        head.push_str(",\"log\":");
        Json::Str(log.to_string()).write_canonical(&mut head);
        head.push(',');
        let tail = format!(",\"v\":{}}}\n", draft.v);
        PreparedEvent { id: draft.id, log: log.to_string(), head, tail }
    }

    /// The draft's id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// The log it was prepared for.
    pub fn log(&self) -> &str {
        &self.log
    }

    /// The note text of the event at `seq` after the leaf `prev`, at `ts`.
    pub fn text(&self, seq: u64, prev: &Hash, ts: Timestamp) -> String {
        use std::fmt::Write as _;
        let mut text = String::with_capacity(self.head.len() + 120 + self.tail.len());
        text.push_str(&self.head);
        // Base64 and the timestamp's RFC 3339 form need no escaping.
        let _ = write!(text, "\"prev\":\"{}\",\"seq\":{seq},\"ts\":\"{ts}\"", B64.encode(prev));
        text.push_str(&self.tail);
        text
    }

    /// Signs the event at `seq` after `prev`, at `ts`, with `signers` (the
    /// log key, and for a key rotation also the new key) and returns the entry bytes.
    ///
    /// # Errors
    /// [`EntryError`] when `seq` is out of range or the entry is too large.
    pub fn sign(&self, seq: u64, prev: &Hash, ts: Timestamp, signers: &[&SignerKey]) -> Result<Vec<u8>, EntryError> {
        check_seq(seq)?;
        let text = self.text(seq, prev, ts);
        let signatures: Vec<NoteSignature> = signers.iter().map(|s| s.sign(text.as_bytes())).collect();
        let entry = note::assemble(&text, &signatures).into_bytes();
        if entry.len() > MAX_ENTRY_SIZE {
            return Err(EntryError::TooLarge(entry.len()));
        }
        Ok(entry)
    }
}

/// The new verifier key named by a `key.rotated` event's data.
///
/// # Errors
/// [`EntryError::Field`] when `data.new_key` is missing, malformed, weak, or
/// not named after the log.
pub fn rotation_key(data: &Json, log: &str) -> Result<VerifierKey, EntryError> {
    let text = data.get("new_key").and_then(Json::as_str).ok_or_else(|| field_err("data.new_key", "missing"))?;
    let key = VerifierKey::parse(text).map_err(|e| field_err("data.new_key", e.to_string()))?;
    if key.name() != log {
        return Err(field_err("data.new_key", "the new key must be named after the log"));
    }
    Ok(key)
}

/// An entry split and checked for syntax: the event and its signature lines.
/// Signatures are not verified here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedEntry {
    pub event: Event,
    pub signatures: Vec<NoteSignature>,
    /// Byte length of the note text (the signed message is `entry[..text_len]`).
    pub text_len: usize,
    /// For a key rotation, the new key.
    pub new_key: Option<VerifierKey>,
}

impl ParsedEntry {
    /// The canonical JSON line of the event, borrowed from the entry it was parsed from.
    pub fn json_line<'a>(&self, entry: &'a [u8]) -> &'a [u8] {
        &entry[EVENT_HEADER.len() + 1..self.text_len - 1]
    }

    /// Parses and checks an entry: note syntax, header, strict canonical JSON,
    /// every field's type and rules, and the number of signature lines.
    ///
    /// # Errors
    /// [`EntryError`] for the first rule broken.
    pub fn parse(entry: &[u8]) -> Result<ParsedEntry, EntryError> {
        if entry.len() > MAX_ENTRY_SIZE {
            return Err(EntryError::TooLarge(entry.len()));
        }
        let note = Note::parse(entry)?;
        let body = note.text.strip_suffix('\n').ok_or(EntryError::TextShape)?;
        let (header, line) = body.split_once('\n').ok_or(EntryError::TextShape)?;
        if header != EVENT_HEADER {
            return Err(EntryError::Header(header.to_string()));
        }
        if line.contains('\n') {
            return Err(EntryError::TextShape);
        }
        let json = Json::parse(line.as_bytes())?;
        let mut canonical = String::with_capacity(line.len());
        json.write_canonical(&mut canonical);
        if canonical != line {
            return Err(EntryError::NotCanonical);
        }
        let event = event_from_json(json)?;
        // The parser already enforced the strict JSON subset on `data`.
        event.validate_fields()?;
        let new_key = if event.draft.kind == KIND_KEY_ROTATED {
            Some(rotation_key(&event.draft.data, &event.log)?)
        } else {
            None
        };
        let expected = if new_key.is_some() { 2 } else { 1 };
        if note.signatures.len() != expected {
            return Err(EntryError::SignatureCount { found: note.signatures.len(), expected });
        }
        Ok(ParsedEntry { event, signatures: note.signatures, text_len: note.text.len(), new_key })
    }
}

fn event_from_json(mut json: Json) -> Result<Event, EntryError> {
    // Take `data` out instead of cloning it: it can be most of the event.
    let data = match &mut json {
        Json::Obj(members) => match members.iter_mut().find(|(k, _)| k == "data") {
            Some((_, value)) => std::mem::replace(value, Json::Null),
            None => return Err(field_err("data", "missing")),
        },
        _ => return Err(field_err("event", "must be a JSON object")),
    };
    let json = &json;
    let Json::Obj(members) = json else {
        return Err(field_err("event", "must be a JSON object"));
    };
    for (key, _) in members {
        if !EVENT_FIELDS.contains(&key.as_str()) {
            return Err(EntryError::Field { field: "event", reason: format!("unknown field {key:?}") });
        }
    }
    let get = |field: &'static str| json.get(field).ok_or_else(|| field_err(field, "missing"));
    let string = |field: &'static str| get(field)?.as_str().ok_or_else(|| field_err(field, "must be a string"));
    let integer = |field: &'static str| {
        get(field)?.as_i64().filter(|n| *n >= 0).ok_or_else(|| field_err(field, "must be a non-negative integer"))
    };

    let log = string("log")?.to_string();
    let seq = integer("seq")? as u64;
    let prev_text = string("prev")?;
    let prev: Hash = B64
        .decode(prev_text)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .filter(|_| prev_text.len() == 44)
        .ok_or_else(|| field_err("prev", "must be the base64 of 32 bytes"))?;
    let ts = Timestamp::parse(string("ts")?).map_err(|e| field_err("ts", e.to_string()))?;
    let kind = string("kind")?.to_string();
    let v = u32::try_from(integer("v")?).map_err(|_| field_err("v", "must be 1 to 65535"))?;
    let id = EventId::parse(string("id")?).ok_or_else(|| field_err("id", "must be 32 lowercase hex digits"))?;
    let actor = actor_from_json(get("actor")?)?;
    Ok(Event { log, seq, prev, ts, draft: EventDraft { id, kind, v, actor, data } })
}

fn actor_from_json(json: &Json) -> Result<Actor, EntryError> {
    let Json::Obj(members) = json else {
        return Err(field_err("actor", "must be an object"));
    };
    for (key, _) in members {
        if !["groups", "sub", "via"].contains(&key.as_str()) {
            return Err(EntryError::Field { field: "actor", reason: format!("unknown field {key:?}") });
        }
    }
    let sub = json.get("sub").and_then(Json::as_str).ok_or_else(|| field_err("actor.sub", "must be a string"))?;
    let via = json.get("via").and_then(Json::as_str).ok_or_else(|| field_err("actor.via", "must be a string"))?;
    let Some(Json::Arr(items)) = json.get("groups") else {
        return Err(field_err("actor.groups", "must be an array of strings"));
    };
    let groups = items
        .iter()
        .map(|g| g.as_str().map(str::to_string).ok_or_else(|| field_err("actor.groups", "must be an array of strings")))
        .collect::<Result<_, _>>()?;
    Ok(Actor { sub: sub.to_string(), groups, via: via.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(signer: &SignerKey) -> Event {
        Event {
            log: signer.name().to_string(),
            seq: 3,
            prev: [9u8; 32],
            ts: Timestamp::parse("2026-11-28T10:00:00.000001Z").unwrap(),
            draft: EventDraft {
                id: EventId([0xab; 16]),
                kind: "request.created".into(),
                v: 1,
                actor: Actor { sub: "alice".into(), groups: vec!["web".into()], via: "token".into() },
                data: Json::parse(br#"{"reason":"INC-4711: fix TLS host"}"#).unwrap(),
            },
        }
    }

    #[test]
    fn sign_then_parse_is_identity() {
        let signer = SignerKey::from_seed("portcullis.example/ledger", &[3u8; 32]).unwrap();
        let event = sample(&signer);
        let entry = event.sign(&[&signer]).unwrap();
        let parsed = ParsedEntry::parse(&entry).unwrap();
        assert_eq!(parsed.event, event);
        assert!(signer.verifier().verify(&entry[..parsed.text_len], &parsed.signatures[0]));
    }

    /// The text as the canonical writer gives it for the whole event object,
    /// the path [`PreparedEvent`] must match byte for byte.
    fn canonical_text(event: &Event) -> String {
        let mut text = format!("{EVENT_HEADER}\n");
        event.to_json().write_canonical(&mut text);
        text.push('\n');
        text
    }

    #[test]
    fn prepared_text_is_the_canonical_text() {
        let signer = SignerKey::from_seed("portcullis.example/ledger", &[3u8; 32]).unwrap();
        let mut event = sample(&signer);
        assert_eq!(event.text(), canonical_text(&event));
        // Keys that sort differently in UTF-16 than in UTF-8, escapes, nesting, empty and odd values.
        event.draft.data = Json::parse(
            "{\"\u{e9}\":1,\"\u{1f600}\":\"\\u0001\\\"\\\\\",\"\u{ff61}\":[true,null,{\"b\":{},\"a\":[]}],\"Z\":-9007199254740991}"
                .as_bytes(),
        )
        .unwrap();
        event.draft.actor = Actor { sub: "bob \"the\" builder\u{2028}".into(), groups: vec![], via: "oidc".into() };
        event.draft.v = 65_535;
        event.seq = crate::json::MAX_SAFE_INTEGER as u64;
        event.prev = [0xff; 32];
        event.ts = Timestamp::parse("1999-12-31T23:59:59.999999Z").unwrap();
        assert_eq!(event.text(), canonical_text(&event));
        let prepared = event.draft.prepare(&event.log).unwrap();
        assert_eq!(prepared.text(event.seq, &event.prev, event.ts), canonical_text(&event));
        assert_eq!(prepared.id(), event.draft.id);
        assert_eq!(prepared.sign(event.seq, &event.prev, event.ts, &[&signer]), event.sign(&[&signer]));
    }

    #[test]
    fn prepare_refuses_what_validate_refuses() {
        let signer = SignerKey::from_seed("portcullis.example/ledger", &[3u8; 32]).unwrap();
        let good = sample(&signer);
        let mut cases = Vec::new();
        for change in 0..5 {
            let mut event = good.clone();
            match change {
                0 => event.draft.kind = "Request Created".into(),
                1 => event.draft.v = 0,
                2 => event.draft.actor.via = String::new(),
                3 => event.draft.data = Json::Arr(Vec::new()),
                _ => event.log = "two words".into(),
            }
            cases.push(event);
        }
        for event in cases {
            let refused = event.validate().unwrap_err();
            assert_eq!(event.draft.prepare(&event.log), Err(refused));
        }
        let prepared = good.draft.prepare(&good.log).unwrap();
        let too_far = crate::json::MAX_SAFE_INTEGER as u64 + 1;
        assert!(matches!(
            prepared.sign(too_far, &good.prev, good.ts, &[&signer]),
            Err(EntryError::Field { field: "seq", .. })
        ));
    }

    #[test]
    fn unknown_fields_and_non_canonical_lines_are_refused() {
        let signer = SignerKey::from_seed("l", &[3u8; 32]).unwrap();
        let text = String::from_utf8(sample(&signer).sign(&[&signer]).unwrap()).unwrap();
        let spaced = text.replacen("{\"actor\":", "{ \"actor\":", 1);
        assert_eq!(ParsedEntry::parse(spaced.as_bytes()), Err(EntryError::NotCanonical));
        let extra = text.replacen("\"v\":1}", "\"v\":1,\"z\":0}", 1);
        assert!(matches!(ParsedEntry::parse(extra.as_bytes()), Err(EntryError::Field { field: "event", .. })));
    }
}
