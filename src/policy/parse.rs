//! Parsing a policy file: YAML into raw serde structs, then into the checked
//! types of [`super`].
//!
//! Every fault carries a line. Faults in one value (a bad duration, an
//! unknown key, a regex that does not compile) are raised while the YAML
//! library reads that value, so it reports the value's own line. Faults
//! between fields of a rule (`approvers` with `auto_approve`, a duplicate
//! name) are raised by the visitor of the rule's mapping, so the library
//! reports the line where the rule starts; so are missing and repeated keys,
//! which serde notices only once it has read the whole mapping.

use super::values::{ApproverMin, Parsed, ReasonMinLength, Version};
use super::{
    Approvers, BreakGlass, Glob, Match, Policy, PolicyError, Principals, ReasonRule, Rule, TicketPattern, TicketRule,
};
use crate::domain::types::{Access, Kind, Name, Span};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;

const DEFAULT_PENDING_TTL_SECS: u64 = 3_600;
const DEFAULT_REVIEW_WITHIN_SECS: u64 = 86_400;

/// Brackets the reason of a whole-mapping check inside the YAML library's
/// error message, so it can be cut out from the path the library puts before
/// it. Only such a check makes a message end with this control character:
/// the library's own messages end in fixed text, and the reasons of checks
/// quote only values already refused if they hold control characters.
const MARK: char = '\u{1}';

const EMPTY: &str = "the file is empty; a policy has version, rules and admins";

impl Policy {
    /// Parses and checks a policy file.
    ///
    /// # Errors
    /// A [`PolicyError`] with the line (and column) of the fault when the
    /// text is not YAML, has an unknown or missing key or a bad value, or is
    /// inconsistent: duplicate rule names, a rule nobody could be granted
    /// under, approvers together with auto-approve, an approver threshold that
    /// can never be met, empty lists, break-glass longer than the rule's
    /// `max_duration`, an invalid ticket pattern, or no admins.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.trim().is_empty() {
            return Err(PolicyError { line: None, column: None, reason: EMPTY.into() });
        }
        let RawPolicy { version: Version, rules, admins } = serde_yaml_ng::from_str(text).map_err(yaml_error)?;
        Ok(Policy {
            text: text.to_string(),
            hash: Sha256::digest(text.as_bytes()).into(),
            rules: rules.0,
            admins: admins.0,
        })
    }
}

fn yaml_error(error: serde_yaml_ng::Error) -> PolicyError {
    let location = error.location();
    let mut message = error.to_string();
    if let Some(location) = &location {
        message = message.replace(&format!(" at line {} column {}", location.line(), location.column()), "");
    }
    let checked = message.strip_suffix(MARK).and_then(|rest| rest.rsplit_once(MARK)).map(|(_, reason)| reason);
    let reason = match checked {
        Some(reason) => reason.to_string(),
        None if message == "EOF while parsing a value" => EMPTY.into(),
        None => message,
    };
    PolicyError { line: location.as_ref().map(|l| l.line()), column: location.as_ref().map(|l| l.column()), reason }
}

// ---- The file as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a policy: a mapping with version, rules and admins")]
pub(super) struct RawPolicy {
    version: Version,
    rules: Rules,
    admins: Admins,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a rule: a mapping with name, match, requesters and how access is granted")]
pub(super) struct RawRule {
    name: Parsed<Name>,
    #[serde(rename = "match")]
    matcher: RawMatch,
    requesters: RawPrincipals,
    #[serde(default)]
    approvers: Option<RawApprovers>,
    #[serde(default)]
    max_duration: Option<Parsed<Span>>,
    #[serde(default)]
    reason: RawReason,
    #[serde(default)]
    ticket: RawTicket,
    #[serde(default)]
    pending_ttl: Option<Parsed<Span>>,
    #[serde(default)]
    auto_approve: bool,
    #[serde(default)]
    break_glass: Option<RawBreakGlass>,
    #[serde(default)]
    credential: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a match: a mapping with clusters, namespaces, kinds and access")]
pub(super) struct RawMatch {
    clusters: Vec<Parsed<Name>>,
    namespaces: Vec<Parsed<Glob>>,
    kinds: Vec<Parsed<Kind>>,
    access: Vec<Parsed<Access>>,
    #[serde(default)]
    all_objects: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with groups and users")]
pub(super) struct RawPrincipals {
    #[serde(default)]
    groups: Vec<Parsed<String>>,
    #[serde(default)]
    users: Vec<Parsed<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "approvers: a mapping with groups, users and min")]
pub(super) struct RawApprovers {
    #[serde(default)]
    groups: Vec<Parsed<String>>,
    #[serde(default)]
    users: Vec<Parsed<String>>,
    #[serde(default = "ApproverMin::one")]
    min: ApproverMin,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "reason rules: a mapping with required and min_length")]
pub(super) struct RawReason {
    required: bool,
    min_length: ReasonMinLength,
}

impl Default for RawReason {
    fn default() -> RawReason {
        RawReason { required: true, min_length: ReasonMinLength(0) }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "ticket rules: a mapping with required and pattern")]
pub(super) struct RawTicket {
    required: bool,
    pattern: Option<Parsed<TicketPattern>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "break-glass terms: a mapping with max_duration, notify and review_within")]
pub(super) struct RawBreakGlass {
    max_duration: Parsed<Span>,
    notify: Vec<Parsed<String>>,
    #[serde(default)]
    review_within: Option<Parsed<Span>>,
}

// ---- Checks across the fields of a mapping ----

/// The ordered rules; each rule is checked against the ones before it.
struct Rules(Vec<Rule>);

impl<'de> Deserialize<'de> for Rules {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Rules, D::Error> {
        struct RulesVisitor;
        impl<'de> Visitor<'de> for RulesVisitor {
            type Value = Rules;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of rules")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Rules, A::Error> {
                let mut rules = Vec::new();
                let mut names = BTreeSet::new();
                while let Some(rule) = seq.next_element_seed(RuleSeed { earlier: &names })? {
                    names.insert(rule.name.clone());
                    rules.push(rule);
                }
                Ok(Rules(rules))
            }
        }
        deserializer.deserialize_seq(RulesVisitor)
    }
}

struct RuleSeed<'a> {
    /// The names of the rules before this one.
    earlier: &'a BTreeSet<Name>,
}

impl<'de> DeserializeSeed<'de> for RuleSeed<'_> {
    type Value = Rule;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Rule, D::Error> {
        let earlier = self.earlier;
        deserializer.deserialize_map(Checked::new("a rule: a mapping with name, match, requesters and more", |raw| {
            check_rule(raw, earlier)
        }))
    }
}

struct Admins(Principals);

impl<'de> Deserialize<'de> for Admins {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Admins, D::Error> {
        deserializer.deserialize_map(Checked::new("admins: a mapping with groups and users", |raw: RawPrincipals| {
            let admins = raw.into_principals();
            if admins.is_empty() {
                return Err("admins lists no groups and no users; a policy needs an admin to change it".to_string());
            }
            Ok(Admins(admins))
        }))
    }
}

/// Visits a mapping as `R`, then checks it as a whole with `check`; a
/// failed check is reported at the line where the mapping starts.
struct Checked<R, F> {
    expecting: &'static str,
    check: F,
    raw: PhantomData<fn() -> R>,
}

impl<R, F> Checked<R, F> {
    fn new(expecting: &'static str, check: F) -> Checked<R, F> {
        Checked { expecting, check, raw: PhantomData }
    }
}

impl<'de, R: Deserialize<'de>, T, F: FnOnce(R) -> Result<T, String>> Visitor<'de> for Checked<R, F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let raw = R::deserialize(MapAccessDeserializer::new(map))?;
        (self.check)(raw).map_err(|reason| de::Error::custom(format!("{MARK}{reason}{MARK}")))
    }
}

impl RawPrincipals {
    fn into_principals(self) -> Principals {
        Principals { groups: unwrap_all(self.groups), users: unwrap_all(self.users) }
    }
}

fn unwrap_all<T>(values: Vec<Parsed<T>>) -> Vec<T> {
    values.into_iter().map(|Parsed(value)| value).collect()
}

fn check_rule(raw: RawRule, earlier: &BTreeSet<Name>) -> Result<Rule, String> {
    let name = raw.name.0.clone();
    if earlier.contains(&name) {
        return Err(format!(
            "rule name {:?} is already used by an earlier rule; rule names must be unique",
            name.as_str()
        ));
    }
    check_rule_terms(raw).map_err(|reason| format!("rule {:?}: {reason}", name.as_str()))
}

fn check_rule_terms(raw: RawRule) -> Result<Rule, String> {
    let matcher = Match {
        clusters: non_empty("match.clusters", "cluster", unwrap_all(raw.matcher.clusters))?,
        namespaces: non_empty("match.namespaces", "namespace pattern", unwrap_all(raw.matcher.namespaces))?,
        kinds: non_empty("match.kinds", "kind", unwrap_all(raw.matcher.kinds))?,
        access: non_empty("match.access", "access level", unwrap_all(raw.matcher.access))?,
        all_objects: raw.matcher.all_objects,
    };
    let requesters = raw.requesters.into_principals();
    if requesters.is_empty() {
        return Err("requesters lists no groups and no users, so nobody could use the rule".into());
    }
    let auto_approve = raw.auto_approve;
    if raw.approvers.is_none() && !auto_approve && raw.break_glass.is_none() {
        return Err(
            "has none of approvers, auto_approve: true and break_glass, so nobody could be granted access under it"
                .into(),
        );
    }
    if raw.approvers.is_some() && auto_approve {
        return Err(
            "has both approvers and auto_approve: true; choose one (an auto-approved request waits for no approver)"
                .into(),
        );
    }
    let approvers = raw.approvers.map(|raw| check_approvers(raw, &requesters)).transpose()?;

    let max_duration = raw.max_duration.map(|Parsed(span)| span);
    if max_duration.is_none() && (approvers.is_some() || auto_approve) {
        return Err("max_duration is missing; a rule with approvers or auto_approve must bound its grants".into());
    }
    let break_glass = match raw.break_glass {
        None => None,
        Some(raw) => Some(check_break_glass(raw, max_duration)?),
    };

    let reason = ReasonRule { required: raw.reason.required, min_length: raw.reason.min_length.0 };
    if !reason.required && reason.min_length > 0 {
        return Err(format!(
            "reason.min_length is {} but reason.required is false; a minimum length needs a required reason",
            reason.min_length
        ));
    }
    let ticket = TicketRule { required: raw.ticket.required, pattern: raw.ticket.pattern.map(|Parsed(p)| p) };
    let credential = match raw.credential.as_deref() {
        None | Some("identity") => super::Credential::Identity,
        Some("service-account") => super::Credential::ServiceAccount,
        Some(other) => {
            return Err(format!("credential is {other:?}; it must be identity (the default) or service-account"));
        }
    };
    let pending_ttl = match raw.pending_ttl {
        Some(Parsed(span)) => span,
        None => Span::from_secs(DEFAULT_PENDING_TTL_SECS).ok_or("the default pending_ttl is out of range")?,
    };
    Ok(Rule {
        name: raw.name.0,
        matcher,
        requesters,
        approvers,
        max_duration,
        reason,
        ticket,
        pending_ttl,
        auto_approve,
        break_glass,
        credential,
    })
}

fn non_empty<T>(field: &str, what: &str, values: Vec<T>) -> Result<Vec<T>, String> {
    if values.is_empty() {
        return Err(format!("{field} is empty; list at least one {what}"));
    }
    Ok(values)
}

fn check_approvers(raw: RawApprovers, requesters: &Principals) -> Result<Approvers, String> {
    let who = Principals { groups: unwrap_all(raw.groups), users: unwrap_all(raw.users) };
    let min = raw.min.0;
    if who.is_empty() {
        return Err("approvers lists no groups and no users, so no request could be approved".into());
    }
    if who.groups.is_empty() {
        // Only named users approve, so their number is known: the threshold
        // must be reachable, and reachable without the requester's own approval.
        let mut distinct = who.users.clone();
        distinct.sort();
        distinct.dedup();
        let count = distinct.len();
        if count < min as usize {
            return Err(format!(
                "approvers.min is {min} but approvers lists only {count} user{} and no groups, so no request could ever be approved",
                if count == 1 { "" } else { "s" }
            ));
        }
        if let Some(user) = distinct.iter().find(|user| requesters.users.contains(user))
            && count - 1 < min as usize
        {
            return Err(format!(
                "approvers.min is {min} but approvers lists only {count} user{} and no groups, and requester {user:?} \
                 may not approve their own request, so their requests could never be approved",
                if count == 1 { "" } else { "s" }
            ));
        }
    }
    Ok(Approvers { who, min })
}

fn check_break_glass(raw: RawBreakGlass, max_duration: Option<Span>) -> Result<BreakGlass, String> {
    let terms = BreakGlass {
        max_duration: raw.max_duration.0,
        notify: unwrap_all(raw.notify),
        review_within: match raw.review_within {
            Some(Parsed(span)) => span,
            None => Span::from_secs(DEFAULT_REVIEW_WITHIN_SECS).ok_or("the default review_within is out of range")?,
        },
    };
    if terms.notify.is_empty() {
        return Err("break_glass.notify is empty; break-glass must notify someone".into());
    }
    if let Some(max) = max_duration
        && terms.max_duration > max
    {
        return Err(format!(
            "break_glass.max_duration is {} but max_duration is {max}; break-glass may not outlast a normal grant",
            terms.max_duration
        ));
    }
    Ok(terms)
}
