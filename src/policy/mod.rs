//! The access policy: who may ask for what, who approves it, and within which
//! limits (DESIGN.md section 5). Pure: no I/O, no clock.
//!
//! A policy is a YAML file (`schemas/policy.example.yaml` shows every key,
//! `schemas/policy.schema.json` is its JSON Schema) with a `version: 1`, an
//! ordered list of `rules` and the `admins` who may change it. It is parsed
//! once, with [`Policy::parse`], into types that can only hold a consistent
//! policy; a file that does not parse or is inconsistent is refused with a
//! [`PolicyError`] naming the line and the reason.
//!
//! # Evaluation
//! - **Deny by default.** [`Policy::match_request`] picks the *first* rule, in
//!   file order, whose `match` covers the target and whose `requesters`
//!   include the actor; with no such rule the request is denied.
//! - A normal request only considers rules with a normal path (`approvers` or
//!   `auto_approve`); a break-glass request only considers rules with
//!   `break_glass`.
//! - [`Rule::check_request`] then checks the duration, reason and ticket.
//! - [`Rule::may_approve`] and [`Rule::approvals_needed`] say who approves and
//!   how many distinct approvers are needed (N of M).
//!
//! # What this module does not enforce
//! **A requester never approves their own request, and no role is exempt**
//! (not admins, not approvers of the rule): the domain core enforces this,
//! and counts *distinct* approvers, because it alone sees who asked.
//! [`Rule::may_approve`] answers only whether the actor is among the rule's
//! approvers. Likewise a changed policy takes effect only once a second admin
//! approves it (four eyes); [`Policy::is_admin`] only says who is an admin.
//!
//! # Guarantees
//! Every decision should record the rule name ([`Rule::name`]) and
//! [`Policy::hash`], the SHA-256 of the exact file bytes, so a verifier can
//! re-check it against the policy in force at the time.

mod eval;
mod glob;
mod parse;
#[cfg(test)]
mod tests;
mod values;

pub use glob::Glob;

use crate::domain::types::{Access, Kind, Name, Span};
use portcullis_format::event::Actor;
use std::fmt;

/// A parsed, consistent policy, with the exact text it came from.
#[derive(Clone, Debug)]
pub struct Policy {
    text: String,
    hash: [u8; 32],
    rules: Vec<Rule>,
    admins: Principals,
}

/// Two policies are equal when their texts are byte for byte equal.
impl PartialEq for Policy {
    fn eq(&self, other: &Policy) -> bool {
        self.text == other.text
    }
}

impl Eq for Policy {}

impl Policy {
    /// The policy file exactly as given to [`Policy::parse`].
    pub fn text(&self) -> &str {
        &self.text
    }

    /// SHA-256 of the exact file bytes: any change, even of whitespace or a
    /// comment, is a different policy.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// [`Policy::hash`] as 64 lowercase hex digits.
    pub fn hash_hex(&self) -> String {
        self.hash.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The rules in file order; the first that applies wins.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule named `name`.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.name.as_str() == name)
    }

    /// Who may change the policy (subject to a second admin's approval).
    pub fn admins(&self) -> &Principals {
        &self.admins
    }

    /// Whether the actor is an admin, by user name or by group.
    pub fn is_admin(&self, actor: &Actor) -> bool {
        self.admins.includes(actor)
    }
}

/// One rule: what it matches, who may ask, who approves, and the limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    name: Name,
    matcher: Match,
    requesters: Principals,
    approvers: Option<Approvers>,
    max_duration: Option<Span>,
    reason: ReasonRule,
    ticket: TicketRule,
    pending_ttl: Span,
    auto_approve: bool,
    break_glass: Option<BreakGlass>,
    credential: Credential,
}

/// How a grant of a rule is made real in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A RoleBinding to the person's own Kubernetes identity (the default).
    Identity,
    /// A per-grant ServiceAccount bound to the Role, and a short-lived token
    /// for it handed to the requester once (`portcullis kubeconfig GRANT`).
    ServiceAccount,
}

impl Credential {
    /// As recorded in the grant event: absent for the default.
    pub fn recorded(self) -> Option<String> {
        match self {
            Credential::Identity => None,
            Credential::ServiceAccount => Some("service-account".into()),
        }
    }
}

impl Rule {
    /// How grants of this rule reach the cluster.
    pub fn credential(&self) -> Credential {
        self.credential
    }

    /// The rule's name, unique in its policy; decisions record it.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn matcher(&self) -> &Match {
        &self.matcher
    }

    pub fn requesters(&self) -> &Principals {
        &self.requesters
    }

    /// `None` for rules that auto-approve or only allow break-glass.
    pub fn approvers(&self) -> Option<&Approvers> {
        self.approvers.as_ref()
    }

    /// The longest grant a normal request may ask for; `None` only for a
    /// break-glass-only rule.
    pub fn max_duration(&self) -> Option<Span> {
        self.max_duration
    }

    pub fn reason(&self) -> &ReasonRule {
        &self.reason
    }

    pub fn ticket(&self) -> &TicketRule {
        &self.ticket
    }

    /// How long a request waits for approval before it expires.
    pub fn pending_ttl(&self) -> Span {
        self.pending_ttl
    }

    /// Whether a request is granted without approvers.
    pub fn auto_approve(&self) -> bool {
        self.auto_approve
    }

    /// The break-glass terms, if the rule allows break-glass.
    pub fn break_glass(&self) -> Option<&BreakGlass> {
        self.break_glass.as_ref()
    }

    /// Whether normal (not break-glass) requests may use this rule: it has
    /// approvers or auto-approves.
    pub fn has_normal_path(&self) -> bool {
        self.approvers.is_some() || self.auto_approve
    }
}

/// What a rule covers. Every list is non-empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// Cluster names, matched exactly.
    pub clusters: Vec<Name>,
    /// Namespace globs.
    pub namespaces: Vec<Glob>,
    pub kinds: Vec<Kind>,
    /// The access levels that may be asked for, each matched exactly: a rule
    /// listing only `edit` does not cover a request for `view`.
    pub access: Vec<Access>,
    /// Whether a request may omit object names and so cover every object of
    /// the kind in the namespace.
    pub all_objects: bool,
}

/// A set of people: user names (the authenticated `sub`) and groups. Entries
/// are matched exactly; there are no wildcards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principals {
    pub groups: Vec<String>,
    pub users: Vec<String>,
}

impl Principals {
    /// Whether the actor is listed by user name or belongs to a listed group.
    pub fn includes(&self, actor: &Actor) -> bool {
        self.users.contains(&actor.sub) || actor.groups.iter().any(|group| self.groups.contains(group))
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.users.is_empty()
    }
}

/// Who approves and how many distinct approvers a request needs (N of M).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approvers {
    pub who: Principals,
    /// Between 1 and 16.
    pub min: u32,
}

/// Rules for the request's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReasonRule {
    pub required: bool,
    /// Minimum length in characters, after trimming surrounding whitespace.
    pub min_length: u32,
}

/// Rules for the request's ticket reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketRule {
    pub required: bool,
    /// A ticket, when given, must match this pattern as a whole.
    pub pattern: Option<TicketPattern>,
}

/// A regular expression that must match the whole ticket.
#[derive(Clone, Debug)]
pub struct TicketPattern {
    source: String,
    anchored: regex::Regex,
}

impl TicketPattern {
    /// The pattern as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `ticket` matches.
    pub fn matches(&self, ticket: &str) -> bool {
        self.anchored.is_match(ticket)
    }
}

impl PartialEq for TicketPattern {
    fn eq(&self, other: &TicketPattern) -> bool {
        self.source == other.source
    }
}

impl Eq for TicketPattern {}

/// Break-glass terms: a self-granted, flagged grant, announced to `notify`
/// and needing a review within `review_within`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakGlass {
    pub max_duration: Span,
    /// Who is told (groups or channels); never empty.
    pub notify: Vec<String>,
    pub review_within: Span,
}

/// Why a policy file was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// 1-based line, when the fault has a place in the file.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    pub reason: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "policy line {line}: {}", self.reason),
            None => write!(f, "policy: {}", self.reason),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Why the policy refuses a request: the field at fault, if one is, and the
/// rule that decided, if one did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// `duration`, `reason`, `ticket`, `names` or `None` when no single field is at fault.
    pub field: Option<String>,
    pub reason: String,
    pub rule: Option<String>,
}

impl Denial {
    fn new(field: Option<&str>, rule: Option<&Rule>, reason: impl Into<String>) -> Denial {
        Denial { field: field.map(str::to_string), reason: reason.into(), rule: rule.map(|r| r.name().to_string()) }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for Denial {}
