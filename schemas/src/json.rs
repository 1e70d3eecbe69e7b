//! Strict JSON and its canonical form (RFC 8785, restricted to integers).
//!
//! The ledger stores every event as one line of canonical JSON. A verifier
//! never re-serializes to check a signature (the signature covers the stored
//! bytes), but it does check that the stored line is exactly the canonical
//! form of what it parses to, so that two different byte strings can never
//! denote the same event.
//!
//! The subset accepted here is RFC 8259 JSON with these restrictions:
//! - numbers are integers in `-(2^53-1) ..= 2^53-1`, without fraction or
//!   exponent (floats are not allowed anywhere in the ledger);
//! - object keys are unique;
//! - strings hold valid Unicode scalar values (no lone surrogates);
//! - nesting is at most [`MAX_DEPTH`] deep.
//!
//! The canonical serialization is RFC 8785 (JCS) for that subset: no
//! whitespace, object members sorted by the UTF-16 code units of their keys,
//! strings escaped exactly as ECMAScript's `JSON.stringify` does.

use std::fmt;

/// The deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 64;

/// The largest integer magnitude accepted (2^53 - 1), the range in which
/// every JSON implementation represents integers exactly.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A parsed JSON value of the strict subset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Arr(Vec<Json>),
    /// Members in the order they were parsed or built; canonical output sorts them.
    Obj(Vec<(String, Json)>),
}

/// Why a byte string is not strict JSON.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at byte {offset}")]
pub struct JsonError {
    /// Byte offset into the input where the problem was found.
    pub offset: usize,
    pub reason: JsonErrorReason,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonErrorReason {
    #[error("unexpected end of input")]
    UnexpectedEnd,
    #[error("unexpected character")]
    UnexpectedChar,
    #[error("trailing characters after the value")]
    TrailingCharacters,
    #[error("numbers must be integers (no fraction or exponent)")]
    NotAnInteger,
    #[error("integer outside the range -(2^53-1)..=2^53-1")]
    IntegerOutOfRange,
    #[error("invalid number")]
    InvalidNumber,
    #[error("invalid escape sequence")]
    InvalidEscape,
    #[error("unpaired UTF-16 surrogate in \\u escape")]
    LoneSurrogate,
    #[error("control character in string")]
    ControlCharacter,
    #[error("invalid UTF-8")]
    InvalidUtf8,
    #[error("duplicate object key {0:?}")]
    DuplicateKey(String),
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
}

impl Json {
    /// Parses strict JSON from `input`.
    ///
    /// # Errors
    /// [`JsonError`] naming the byte offset and the reason for the first violation.
    pub fn parse(input: &[u8]) -> Result<Json, JsonError> {
        let mut parser = Parser { input, pos: 0 };
        parser.skip_whitespace();
        let value = parser.value(0)?;
        parser.skip_whitespace();
        if parser.pos != input.len() {
            return Err(parser.error(JsonErrorReason::TrailingCharacters));
        }
        Ok(value)
    }

    /// The canonical (RFC 8785) serialization.
    pub fn to_canonical(&self) -> String {
        let mut out = String::new();
        self.write_canonical(&mut out);
        out
    }

    /// Appends the canonical serialization to `out`.
    pub fn write_canonical(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(true) => out.push_str("true"),
            Json::Bool(false) => out.push_str("false"),
            Json::Int(n) => {
                use fmt::Write;
                let _ = write!(out, "{n}");
            }
            Json::Str(s) => write_string(s, out),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_canonical(out);
                }
                out.push(']');
            }
            Json::Obj(members) => {
                let mut sorted: Vec<&(String, Json)> = members.iter().collect();
                sorted.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
                out.push('{');
                for (i, (key, value)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(key, out);
                    out.push(':');
                    value.write_canonical(out);
                }
                out.push('}');
            }
        }
    }

    /// Checks that a value built in code (not parsed) stays within the strict
    /// subset: safe integers, unique keys, nesting at most [`MAX_DEPTH`]
    /// counting from `depth` (the depth at which this value is nested).
    ///
    /// # Errors
    /// The [`JsonErrorReason`] of the first violation.
    pub fn check_strict(&self, depth: usize) -> Result<(), JsonErrorReason> {
        fn walk(value: &Json, depth: usize) -> Result<(), JsonErrorReason> {
            match value {
                Json::Int(n) if !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(n) => {
                    Err(JsonErrorReason::IntegerOutOfRange)
                }
                Json::Arr(_) | Json::Obj(_) if depth >= MAX_DEPTH => Err(JsonErrorReason::TooDeep),
                Json::Arr(items) => items.iter().try_for_each(|item| walk(item, depth + 1)),
                Json::Obj(members) => {
                    for (i, (key, item)) in members.iter().enumerate() {
                        if members[..i].iter().any(|(k, _)| k == key) {
                            return Err(JsonErrorReason::DuplicateKey(key.clone()));
                        }
                        walk(item, depth + 1)?;
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        walk(self, depth)
    }

    /// Looks up a member of an object; `None` for other values or a missing key.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Json::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// Converts a `serde_json` value, refusing what the strict subset forbids.
    ///
    /// # Errors
    /// [`FromSerdeError`] when the value holds a float or an integer outside
    /// the safe range.
    pub fn from_serde(value: &serde_json::Value) -> Result<Json, FromSerdeError> {
        Ok(match value {
            serde_json::Value::Null => Json::Null,
            serde_json::Value::Bool(b) => Json::Bool(*b),
            serde_json::Value::Number(n) => {
                let n = n.as_i64().ok_or(FromSerdeError::NotAnInteger)?;
                if !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&n) {
                    return Err(FromSerdeError::IntegerOutOfRange);
                }
                Json::Int(n)
            }
            serde_json::Value::String(s) => Json::Str(s.clone()),
            serde_json::Value::Array(items) => Json::Arr(items.iter().map(Json::from_serde).collect::<Result<_, _>>()?),
            serde_json::Value::Object(map) => {
                Json::Obj(map.iter().map(|(k, v)| Ok((k.clone(), Json::from_serde(v)?))).collect::<Result<_, _>>()?)
            }
        })
    }

    /// Converts to a `serde_json` value (always possible).
    pub fn to_serde(&self) -> serde_json::Value {
        match self {
            Json::Null => serde_json::Value::Null,
            Json::Bool(b) => serde_json::Value::Bool(*b),
            Json::Int(n) => serde_json::Value::from(*n),
            Json::Str(s) => serde_json::Value::String(s.clone()),
            Json::Arr(items) => serde_json::Value::Array(items.iter().map(Json::to_serde).collect()),
            Json::Obj(members) => {
                serde_json::Value::Object(members.iter().map(|(k, v)| (k.clone(), v.to_serde())).collect())
            }
        }
    }
}

/// Why a `serde_json` value cannot enter the ledger.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FromSerdeError {
    #[error("numbers in the ledger must be integers")]
    NotAnInteger,
    #[error("integer outside the range -(2^53-1)..=2^53-1")]
    IntegerOutOfRange,
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    // Copy runs that need no escaping in one go; escape the rest.
    let bytes = s.as_bytes();
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.push_str(&s[run_start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            0x09 => out.push_str("\\t"),
            0x0a => out.push_str("\\n"),
            0x0c => out.push_str("\\f"),
            0x0d => out.push_str("\\r"),
            _ => {
                use fmt::Write;
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        run_start = i + 1;
    }
    out.push_str(&s[run_start..]);
    out.push('"');
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: JsonErrorReason) -> JsonError {
        JsonError { offset: self.pos, reason }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect_literal(&mut self, literal: &[u8], value: Json) -> Result<Json, JsonError> {
        if self.input[self.pos..].starts_with(literal) {
            self.pos += literal.len();
            Ok(value)
        } else if self.input.len() - self.pos < literal.len() && literal.starts_with(&self.input[self.pos..]) {
            self.pos = self.input.len();
            Err(self.error(JsonErrorReason::UnexpectedEnd))
        } else {
            Err(self.error(JsonErrorReason::UnexpectedChar))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, JsonError> {
        match self.peek() {
            None => Err(self.error(JsonErrorReason::UnexpectedEnd)),
            Some(b'n') => self.expect_literal(b"null", Json::Null),
            Some(b't') => self.expect_literal(b"true", Json::Bool(true)),
            Some(b'f') => self.expect_literal(b"false", Json::Bool(false)),
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => {
                if depth >= MAX_DEPTH {
                    return Err(self.error(JsonErrorReason::TooDeep));
                }
                self.pos += 1;
                self.array(depth + 1)
            }
            Some(b'{') => {
                if depth >= MAX_DEPTH {
                    return Err(self.error(JsonErrorReason::TooDeep));
                }
                self.pos += 1;
                self.object(depth + 1)
            }
            Some(_) => Err(self.error(JsonErrorReason::UnexpectedChar)),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, JsonError> {
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Arr(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Arr(items));
                }
                None => return Err(self.error(JsonErrorReason::UnexpectedEnd)),
                Some(_) => return Err(self.error(JsonErrorReason::UnexpectedChar)),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, JsonError> {
        let mut members: Vec<(String, Json)> = Vec::new();
        let mut seen: Option<std::collections::HashSet<String>> = None;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Obj(members));
        }
        loop {
            self.skip_whitespace();
            let key_offset = self.pos;
            match self.peek() {
                Some(b'"') => {}
                None => return Err(self.error(JsonErrorReason::UnexpectedEnd)),
                Some(_) => return Err(self.error(JsonErrorReason::UnexpectedChar)),
            }
            let key = self.string()?;
            // Linear for small objects; a set once an object is large, so that
            // hostile input with thousands of keys stays linear too.
            let duplicate = match &mut seen {
                Some(seen) => !seen.insert(key.clone()),
                None => members.iter().any(|(k, _)| *k == key),
            };
            if seen.is_none() && members.len() >= 32 {
                seen = Some(members.iter().map(|(k, _)| k.clone()).chain(std::iter::once(key.clone())).collect());
            }
            if duplicate {
                return Err(JsonError { offset: key_offset, reason: JsonErrorReason::DuplicateKey(key) });
            }
            self.skip_whitespace();
            match self.peek() {
                Some(b':') => self.pos += 1,
                None => return Err(self.error(JsonErrorReason::UnexpectedEnd)),
                Some(_) => return Err(self.error(JsonErrorReason::UnexpectedChar)),
            }
            self.skip_whitespace();
            let value = self.value(depth)?;
            members.push((key, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Obj(members));
                }
                None => return Err(self.error(JsonErrorReason::UnexpectedEnd)),
                Some(_) => return Err(self.error(JsonErrorReason::UnexpectedChar)),
            }
        }
    }

    fn number(&mut self) -> Result<Json, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                }
            }
            None => return Err(self.error(JsonErrorReason::UnexpectedEnd)),
            Some(_) => return Err(self.error(JsonErrorReason::InvalidNumber)),
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return Err(JsonError { offset: start, reason: JsonErrorReason::NotAnInteger });
        }
        if let Some(b'0'..=b'9') = self.peek() {
            // A leading zero followed by more digits.
            return Err(self.error(JsonErrorReason::InvalidNumber));
        }
        let text = std::str::from_utf8(&self.input[start..self.pos])
            .map_err(|_| self.error(JsonErrorReason::InvalidNumber))?;
        let n: i64 =
            text.parse().map_err(|_| JsonError { offset: start, reason: JsonErrorReason::IntegerOutOfRange })?;
        if !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&n) {
            return Err(JsonError { offset: start, reason: JsonErrorReason::IntegerOutOfRange });
        }
        Ok(Json::Int(n))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits =
            self.input.get(self.pos..self.pos + 4).ok_or_else(|| self.error(JsonErrorReason::UnexpectedEnd))?;
        let mut value = 0u32;
        for &d in digits {
            let nibble = (d as char).to_digit(16).ok_or_else(|| self.error(JsonErrorReason::InvalidEscape))?;
            value = value * 16 + nibble;
        }
        self.pos += 4;
        Ok(value)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        // The caller has checked that the current byte is the opening quote.
        self.pos += 1;
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            let run = std::str::from_utf8(&self.input[run_start..self.pos])
                .map_err(|e| JsonError { offset: run_start + e.valid_up_to(), reason: JsonErrorReason::InvalidUtf8 })?;
            out.push_str(run);
            match self.peek() {
                None => return Err(self.error(JsonErrorReason::UnexpectedEnd)),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escape = self.peek().ok_or_else(|| self.error(JsonErrorReason::UnexpectedEnd))?;
                    self.pos += 1;
                    match escape {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{08}'),
                        b'f' => out.push('\u{0c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let unit = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&unit) {
                                if self.input.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return Err(self.error(JsonErrorReason::LoneSurrogate));
                                }
                                self.pos += 2;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(self.error(JsonErrorReason::LoneSurrogate));
                                }
                                0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&unit) {
                                return Err(self.error(JsonErrorReason::LoneSurrogate));
                            } else {
                                unit
                            };
                            out.push(char::from_u32(c).ok_or_else(|| self.error(JsonErrorReason::InvalidEscape))?);
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.error(JsonErrorReason::InvalidEscape));
                        }
                    }
                }
                Some(_) => return Err(self.error(JsonErrorReason::ControlCharacter)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(input: &str) -> String {
        Json::parse(input.as_bytes()).unwrap().to_canonical()
    }

    #[test]
    fn canonical_form_sorts_keys_by_utf16_and_drops_whitespace() {
        assert_eq!(canonical(r#"{ "b": 1, "a": [true, null, "x"] }"#), r#"{"a":[true,null,"x"],"b":1}"#);
        // U+1F600 (surrogate pair D83D..) sorts before U+FB01 in UTF-16 order,
        // although it sorts after it in UTF-8 byte order.
        assert_eq!(canonical("{\"\u{fb01}\":1,\"\u{1f600}\":2}"), "{\"\u{1f600}\":2,\"\u{fb01}\":1}");
    }

    #[test]
    fn duplicates_are_found_in_large_objects_too() {
        let mut text: String = (0..100).map(|i| format!("\"k{i}\":{i},")).collect();
        text.insert(0, '{');
        let unique = format!("{}\"z\":0}}", text);
        assert!(Json::parse(unique.as_bytes()).is_ok());
        let duplicate = format!("{}\"k7\":0}}", text);
        assert_eq!(Json::parse(duplicate.as_bytes()).unwrap_err().reason, JsonErrorReason::DuplicateKey("k7".into()));
    }

    #[test]
    fn canonical_strings_escape_like_json_stringify() {
        assert_eq!(canonical(r#""\u0041\u000b\/\n\u2028""#), "\"A\\u000b/\\n\u{2028}\"");
    }

    #[test]
    fn floats_duplicates_and_lone_surrogates_are_refused() {
        let reason = |s: &str| Json::parse(s.as_bytes()).unwrap_err().reason;
        assert_eq!(reason("1.0"), JsonErrorReason::NotAnInteger);
        assert_eq!(reason("1e3"), JsonErrorReason::NotAnInteger);
        assert_eq!(reason("9007199254740992"), JsonErrorReason::IntegerOutOfRange);
        assert_eq!(reason(r#"{"a":1,"a":2}"#), JsonErrorReason::DuplicateKey("a".into()));
        assert_eq!(reason(r#""\ud800""#), JsonErrorReason::LoneSurrogate);
        assert_eq!(reason("01"), JsonErrorReason::InvalidNumber);
        assert_eq!(reason("[1,]"), JsonErrorReason::UnexpectedChar);
        assert_eq!(reason("\"a\u{1}\""), JsonErrorReason::ControlCharacter);
        assert_eq!(reason(&"[".repeat(100)), JsonErrorReason::TooDeep);
        assert!(Json::parse(b"\"\xff\"").is_err());
    }
}
