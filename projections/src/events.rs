//! The workflow's events: one serde struct per kind, version 1. They enter
//! the ledger as the `data` of an [`EventDraft`] and come back out of it
//! through [`Payload::from_event`].

use crate::types::{Access, Kind, Name, Span, Target};
use portcullis_format::event::{Actor, Event, EventDraft, EventId};
use portcullis_format::json::Json;
use portcullis_format::time::Timestamp;
use serde::{Deserialize, Serialize};

/// A request's or a grant's identifier: the id of the event that created it.
pub type RequestId = EventId;
pub type GrantId = EventId;

/// The target as recorded in events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetData {
    pub cluster: String,
    pub namespace: String,
    pub kind: Kind,
    pub names: Vec<String>,
    pub access: Access,
}

impl From<&Target> for TargetData {
    fn from(t: &Target) -> Self {
        TargetData {
            cluster: t.cluster.to_string(),
            namespace: t.namespace.to_string(),
            kind: t.kind,
            names: t.names.iter().map(ToString::to_string).collect(),
            access: t.access,
        }
    }
}

impl TargetData {
    /// Back to a validated target (events written by this code always convert).
    pub fn to_target(&self) -> Option<Target> {
        Some(Target {
            cluster: Name::label("cluster", &self.cluster).ok()?,
            namespace: Name::label("namespace", &self.namespace).ok()?,
            kind: self.kind,
            names: self.names.iter().map(|n| Name::subdomain("names", n).ok()).collect::<Option<_>>()?,
            access: self.access,
        })
    }
}

/// One RBAC policy rule as it will be applied, recorded in the grant so the
/// requester and the auditor see exactly what was given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacRule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    /// Empty: every object of the resources in the namespace.
    pub resource_names: Vec<String>,
    pub verbs: Vec<String>,
}

/// Where a decision came from: the policy rule and the policy's hash.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Basis {
    pub rule: String,
    pub policy_hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestCreated {
    pub target: TargetData,
    pub duration_secs: u64,
    pub reason: String,
    pub ticket: Option<String>,
    pub break_glass: bool,
    pub approvals_needed: u32,
    pub pending_expires_at: String,
    pub basis: Basis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDecision {
    pub request_id: String,
    pub comment: Option<String>,
    pub basis: Basis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestClosed {
    pub request_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantActivated {
    pub request_id: String,
    pub requester: String,
    pub target: TargetData,
    pub starts_at: String,
    pub expires_at: String,
    pub approvers: Vec<String>,
    pub break_glass: bool,
    /// For break-glass grants: when the after-the-fact review is due.
    pub review_due: Option<String>,
    pub rbac: Vec<RbacRule>,
    pub basis: Basis,
    /// `service-account` when the rule hands out a per-grant ServiceAccount
    /// token instead of binding the requester's identity; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// For break-glass grants: who the rule says must hear of it (webhooks
    /// whose `name` is listed get the event, whatever their `events`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantClosed {
    pub grant_id: String,
    pub comment: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionRequested {
    pub grant_id: String,
    pub duration_secs: u64,
    pub reason: String,
    pub approvals_needed: u32,
    pub basis: Basis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionDecision {
    pub grant_id: String,
    pub extension_id: String,
    pub comment: Option<String>,
    pub basis: Basis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantExtended {
    pub grant_id: String,
    pub extension_id: String,
    pub expires_at: String,
}

/// A policy put in force, recorded whole so a verifier can re-check every
/// decision against the policy in force when it was made. The first policy of
/// a ledger is loaded by the service; every later one is a proposal approved
/// by a second admin (`approved_by`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyLoaded {
    pub policy_hash: String,
    pub text: String,
    pub proposed_by: Option<String>,
    pub approved_by: Option<String>,
}

/// A policy change waiting for a second admin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyProposed {
    pub policy_hash: String,
    pub text: String,
}

/// A grant's ServiceAccount token was handed to its requester (the token itself is never recorded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialIssued {
    pub grant_id: String,
    pub service_account: String,
    pub token_expires_at: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassReviewed {
    pub grant_id: String,
    pub comment: String,
}

/// Event kinds of the workflow, version 1.
pub mod kind {
    pub const REQUEST_CREATED: &str = "request.created";
    pub const REQUEST_APPROVED: &str = "request.approved";
    pub const REQUEST_DENIED: &str = "request.denied";
    pub const REQUEST_CANCELLED: &str = "request.cancelled";
    pub const REQUEST_EXPIRED: &str = "request.expired";
    pub const GRANT_ACTIVATED: &str = "grant.activated";
    pub const GRANT_ENDED: &str = "grant.ended";
    pub const GRANT_REVOKED: &str = "grant.revoked";
    pub const GRANT_EXPIRED: &str = "grant.expired";
    pub const EXTENSION_REQUESTED: &str = "grant.extension_requested";
    pub const EXTENSION_APPROVED: &str = "grant.extension_approved";
    pub const EXTENSION_DENIED: &str = "grant.extension_denied";
    pub const GRANT_EXTENDED: &str = "grant.extended";
    pub const BREAK_GLASS_REVIEWED: &str = "grant.break_glass_reviewed";
    pub const POLICY_LOADED: &str = "policy.loaded";
    pub const POLICY_PROPOSED: &str = "policy.proposed";
    pub const CREDENTIAL_ISSUED: &str = "grant.credential_issued";
}

/// A workflow event, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    RequestCreated(RequestCreated),
    RequestApproved(RequestDecision),
    RequestDenied(RequestDecision),
    RequestCancelled(RequestClosed),
    RequestExpired(RequestClosed),
    GrantActivated(GrantActivated),
    GrantEnded(GrantClosed),
    GrantRevoked(GrantClosed),
    GrantExpired(GrantClosed),
    ExtensionRequested(ExtensionRequested),
    ExtensionApproved(ExtensionDecision),
    ExtensionDenied(ExtensionDecision),
    GrantExtended(GrantExtended),
    BreakGlassReviewed(BreakGlassReviewed),
    PolicyLoaded(PolicyLoaded),
    PolicyProposed(PolicyProposed),
    CredentialIssued(CredentialIssued),
}

impl Payload {
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::RequestCreated(_) => kind::REQUEST_CREATED,
            Payload::RequestApproved(_) => kind::REQUEST_APPROVED,
            Payload::RequestDenied(_) => kind::REQUEST_DENIED,
            Payload::RequestCancelled(_) => kind::REQUEST_CANCELLED,
            Payload::RequestExpired(_) => kind::REQUEST_EXPIRED,
            Payload::GrantActivated(_) => kind::GRANT_ACTIVATED,
            Payload::GrantEnded(_) => kind::GRANT_ENDED,
            Payload::GrantRevoked(_) => kind::GRANT_REVOKED,
            Payload::GrantExpired(_) => kind::GRANT_EXPIRED,
            Payload::ExtensionRequested(_) => kind::EXTENSION_REQUESTED,
            Payload::ExtensionApproved(_) => kind::EXTENSION_APPROVED,
            Payload::ExtensionDenied(_) => kind::EXTENSION_DENIED,
            Payload::GrantExtended(_) => kind::GRANT_EXTENDED,
            Payload::BreakGlassReviewed(_) => kind::BREAK_GLASS_REVIEWED,
            Payload::PolicyLoaded(_) => kind::POLICY_LOADED,
            Payload::PolicyProposed(_) => kind::POLICY_PROPOSED,
            Payload::CredentialIssued(_) => kind::CREDENTIAL_ISSUED,
        }
    }

    fn data(&self) -> serde_json::Result<serde_json::Value> {
        match self {
            Payload::RequestCreated(d) => serde_json::to_value(d),
            Payload::RequestApproved(d) | Payload::RequestDenied(d) => serde_json::to_value(d),
            Payload::RequestCancelled(d) | Payload::RequestExpired(d) => serde_json::to_value(d),
            Payload::GrantActivated(d) => serde_json::to_value(d),
            Payload::GrantEnded(d) | Payload::GrantRevoked(d) | Payload::GrantExpired(d) => serde_json::to_value(d),
            Payload::ExtensionRequested(d) => serde_json::to_value(d),
            Payload::ExtensionApproved(d) | Payload::ExtensionDenied(d) => serde_json::to_value(d),
            Payload::GrantExtended(d) => serde_json::to_value(d),
            Payload::BreakGlassReviewed(d) => serde_json::to_value(d),
            Payload::PolicyLoaded(d) => serde_json::to_value(d),
            Payload::PolicyProposed(d) => serde_json::to_value(d),
            Payload::CredentialIssued(d) => serde_json::to_value(d),
        }
    }

    /// The draft that records this payload, by `actor`, with event id `id`.
    ///
    /// # Panics
    /// Never: every payload serializes to a JSON object of strings, integers and booleans.
    pub fn to_draft(&self, id: EventId, actor: &Actor) -> EventDraft {
        draft(self.kind(), self.data(), id, actor)
    }

    /// Reads the payload of a workflow event; `None` for other kinds or data
    /// that is not this version's (the domain ignores what it does not know).
    pub fn from_event(event: &Event) -> Option<Payload> {
        if event.draft.v != 1 {
            return None;
        }
        let value = event.draft.data.to_serde();
        let parse = |v: serde_json::Value| -> Option<Payload> {
            Some(match event.draft.kind.as_str() {
                kind::REQUEST_CREATED => Payload::RequestCreated(serde_json::from_value(v).ok()?),
                kind::REQUEST_APPROVED => Payload::RequestApproved(serde_json::from_value(v).ok()?),
                kind::REQUEST_DENIED => Payload::RequestDenied(serde_json::from_value(v).ok()?),
                kind::REQUEST_CANCELLED => Payload::RequestCancelled(serde_json::from_value(v).ok()?),
                kind::REQUEST_EXPIRED => Payload::RequestExpired(serde_json::from_value(v).ok()?),
                kind::GRANT_ACTIVATED => Payload::GrantActivated(serde_json::from_value(v).ok()?),
                kind::GRANT_ENDED => Payload::GrantEnded(serde_json::from_value(v).ok()?),
                kind::GRANT_REVOKED => Payload::GrantRevoked(serde_json::from_value(v).ok()?),
                kind::GRANT_EXPIRED => Payload::GrantExpired(serde_json::from_value(v).ok()?),
                kind::EXTENSION_REQUESTED => Payload::ExtensionRequested(serde_json::from_value(v).ok()?),
                kind::EXTENSION_APPROVED => Payload::ExtensionApproved(serde_json::from_value(v).ok()?),
                kind::EXTENSION_DENIED => Payload::ExtensionDenied(serde_json::from_value(v).ok()?),
                kind::GRANT_EXTENDED => Payload::GrantExtended(serde_json::from_value(v).ok()?),
                kind::BREAK_GLASS_REVIEWED => Payload::BreakGlassReviewed(serde_json::from_value(v).ok()?),
                kind::POLICY_LOADED => Payload::PolicyLoaded(serde_json::from_value(v).ok()?),
                kind::POLICY_PROPOSED => Payload::PolicyProposed(serde_json::from_value(v).ok()?),
                kind::CREDENTIAL_ISSUED => Payload::CredentialIssued(serde_json::from_value(v).ok()?),
                _ => return None,
            })
        };
        parse(value)
    }
}

/// The version-1 draft of an event of `kind` whose data serialized to `data`.
/// Every payload of this crate serializes to a JSON object of strings,
/// integers, booleans, arrays and objects, so the fallback is never taken.
pub fn draft(kind: &str, data: serde_json::Result<serde_json::Value>, id: EventId, actor: &Actor) -> EventDraft {
    let value = data.unwrap_or(serde_json::Value::Null);
    let data = Json::from_serde(&value).unwrap_or(Json::Obj(Vec::new()));
    EventDraft { id, kind: kind.to_string(), v: 1, actor: actor.clone(), data }
}

/// Adds a span to an instant, saturating at the latest ledger time.
pub fn after(at: Timestamp, span: Span) -> Timestamp {
    Timestamp::from_unix_micros(at.unix_micros().saturating_add(span.micros()))
        .or_else(|| Timestamp::from_unix_micros(253_402_300_799_999_999))
        .unwrap_or(at)
}

/// Parses a timestamp written by this code.
pub fn ts(s: &str) -> Option<Timestamp> {
    Timestamp::parse(s).ok()
}
