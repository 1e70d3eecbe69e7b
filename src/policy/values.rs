//! Single values of a policy file, checked while the YAML library reads
//! them, so that a fault is reported at the value's own line.

use super::{Glob, TicketPattern};
use crate::domain::types::{Access, Kind, Name, Span};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// The most distinct approvers a rule may require.
pub(super) const MAX_APPROVERS: u64 = 16;
/// The longest minimum length a reason rule may set, in characters.
const MAX_REASON_MIN_LENGTH: u64 = 1024;
/// The longest ticket pattern, in bytes.
const MAX_PATTERN_LENGTH: usize = 1024;
/// The longest user, group or notification target name, in bytes.
const MAX_PRINCIPAL_LENGTH: usize = 256;

/// A value parsed from one YAML string; a fault is reported at its line.
pub(super) struct Parsed<T>(pub(super) T);

trait FromYamlStr: Sized {
    const EXPECTING: &'static str;
    fn from_yaml_str(s: &str) -> Result<Self, String>;
}

impl<'de, T: FromYamlStr> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Parsed<T>, D::Error> {
        struct StrVisitor<T>(PhantomData<T>);
        impl<T: FromYamlStr> Visitor<'_> for StrVisitor<T> {
            type Value = Parsed<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Parsed<T>, E> {
                T::from_yaml_str(s).map(Parsed).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(StrVisitor(PhantomData))
    }
}

impl FromYamlStr for Name {
    const EXPECTING: &'static str = "a DNS-1123 label";
    fn from_yaml_str(s: &str) -> Result<Name, String> {
        Name::label("name", s).map_err(|e| e.reason)
    }
}

impl FromYamlStr for Glob {
    const EXPECTING: &'static str = "a namespace pattern";
    fn from_yaml_str(s: &str) -> Result<Glob, String> {
        Glob::parse("namespaces", s).map_err(|e| e.reason)
    }
}

impl FromYamlStr for Kind {
    const EXPECTING: &'static str = "a kind";
    fn from_yaml_str(s: &str) -> Result<Kind, String> {
        Kind::parse("kinds", s).map_err(|e| e.reason)
    }
}

impl FromYamlStr for Access {
    const EXPECTING: &'static str = "an access level";
    fn from_yaml_str(s: &str) -> Result<Access, String> {
        Access::parse("access", s).map_err(|e| e.reason)
    }
}

impl FromYamlStr for Span {
    const EXPECTING: &'static str = "a duration like 30m, 2h or 1d";
    fn from_yaml_str(s: &str) -> Result<Span, String> {
        Span::parse("duration", s).map_err(|e| e.reason)
    }
}

impl FromYamlStr for TicketPattern {
    const EXPECTING: &'static str = "a regular expression";
    fn from_yaml_str(s: &str) -> Result<TicketPattern, String> {
        if s.is_empty() || s.len() > MAX_PATTERN_LENGTH {
            return Err(format!("a ticket pattern is 1 to {MAX_PATTERN_LENGTH} bytes long"));
        }
        let compile = |pattern: &str| regex::RegexBuilder::new(pattern).size_limit(1 << 20).build();
        // Compile the pattern as written first, so an error points into it.
        if let Err(error) = compile(s) {
            return Err(format!("{s:?} is not a valid regular expression: {}", regex_error(&error)));
        }
        let anchored = compile(&format!("^(?:{s})$"))
            .map_err(|error| format!("{s:?} is not a valid regular expression: {}", regex_error(&error)))?;
        Ok(TicketPattern { source: s.to_string(), anchored })
    }
}

/// The regex crate's error on one line: the line that says what is wrong.
fn regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    match text.lines().find_map(|line| line.strip_prefix("error: ")) {
        Some(what) => what.to_string(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// A user, group or notification target.
impl FromYamlStr for String {
    const EXPECTING: &'static str = "a user or group name";
    fn from_yaml_str(s: &str) -> Result<String, String> {
        if s.is_empty() || s.len() > MAX_PRINCIPAL_LENGTH || s.trim() != s || s.chars().any(char::is_control) {
            return Err(format!(
                "{s:?} is not a user or group name (1 to {MAX_PRINCIPAL_LENGTH} bytes, without surrounding spaces or control characters)"
            ));
        }
        Ok(s.to_string())
    }
}

/// A whole number checked as it is read.
struct NumberVisitor<T> {
    expecting: &'static str,
    check: fn(u64) -> Result<T, String>,
}

impl<T> Visitor<'_> for NumberVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        (self.check)(n).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        match u64::try_from(n) {
            Ok(n) => self.visit_u64(n),
            Err(_) => Err(E::custom(format!("{n} is negative; expected {}", self.expecting))),
        }
    }
}

pub(super) struct Version;

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Version, D::Error> {
        deserializer.deserialize_u64(NumberVisitor {
            expecting: "the policy format version, 1",
            check: |n| match n {
                1 => Ok(Version),
                _ => Err(format!("version {n} is not supported; the only policy version is 1")),
            },
        })
    }
}

pub(super) struct ApproverMin(pub(super) u32);

impl ApproverMin {
    pub(super) fn one() -> ApproverMin {
        ApproverMin(1)
    }
}

impl<'de> Deserialize<'de> for ApproverMin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ApproverMin, D::Error> {
        deserializer.deserialize_u64(NumberVisitor {
            expecting: "the number of distinct approvers, 1 to 16",
            check: |n| match u32::try_from(n) {
                Ok(min) if (1..=MAX_APPROVERS).contains(&n) => Ok(ApproverMin(min)),
                _ => Err(format!("approvers.min is {n}; it must be between 1 and {MAX_APPROVERS}")),
            },
        })
    }
}

pub(super) struct ReasonMinLength(pub(super) u32);

impl<'de> Deserialize<'de> for ReasonMinLength {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ReasonMinLength, D::Error> {
        deserializer.deserialize_u64(NumberVisitor {
            expecting: "a number of characters",
            check: |n| match u32::try_from(n) {
                Ok(length) if n <= MAX_REASON_MIN_LENGTH => Ok(ReasonMinLength(length)),
                _ => Err(format!("reason.min_length is {n}; it must be at most {MAX_REASON_MIN_LENGTH} characters")),
            },
        })
    }
}
