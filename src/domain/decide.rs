//! `decide(state, policy, command, context) -> events | rejection`: every
//! rule of the workflow, pure. Time, identity and fresh ids come in with the
//! context; the policy in force comes in as an argument.
//!
//! Rules that hold for every command: the requester never approves, denies or
//! reviews their own request or grant, whatever their role; every decision
//! records the rule and the hash of the policy it was made under; a grant's
//! duration starts when it is activated.

use super::events::*;
use super::rbac::effective_rules;
use super::state::{ExtensionStatus, GrantStatus, RequestStatus, State};
use super::types::{Span, Target};
use crate::policy::{Denial, Policy, Rule};
use portcullis_format::event::{Actor, EventDraft, EventId};
use portcullis_format::time::Timestamp;
use sha2::{Digest, Sha256};

/// Longest free-text fields.
pub const MAX_REASON: usize = 1000;
pub const MAX_COMMENT: usize = 1000;
pub const MAX_TICKET: usize = 100;
pub const MAX_NAMES: usize = 32;

/// Who acts, when, and the seed of the ids of the events the command produces.
#[derive(Clone, Debug)]
pub struct Context {
    pub actor: Actor,
    pub now: Timestamp,
    /// Fresh per command, or derived from an idempotency key so that a retried
    /// command produces the same event ids (which the ledger never stores twice).
    pub seed: [u8; 16],
}

impl Context {
    /// The id of the `n`-th event this command produces.
    pub fn id(&self, n: u8) -> EventId {
        let digest = Sha256::new().chain_update(self.seed).chain_update([n]).finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        EventId(id)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Request {
        target: Target,
        duration: Span,
        reason: String,
        ticket: Option<String>,
        break_glass: bool,
    },
    Approve {
        request: RequestId,
        comment: Option<String>,
    },
    Deny {
        request: RequestId,
        comment: Option<String>,
    },
    Cancel {
        request: RequestId,
    },
    /// The scheduler: a pending request's TTL has passed.
    ExpireRequest {
        request: RequestId,
    },
    /// The requester is done early.
    End {
        grant: GrantId,
        comment: Option<String>,
    },
    Revoke {
        grant: GrantId,
        reason: String,
    },
    /// The scheduler: a grant's time is up.
    ExpireGrant {
        grant: GrantId,
    },
    Extend {
        grant: GrantId,
        duration: Span,
        reason: String,
    },
    ApproveExtension {
        extension: EventId,
        comment: Option<String>,
    },
    DenyExtension {
        extension: EventId,
        comment: Option<String>,
    },
    ReviewBreakGlass {
        grant: GrantId,
        comment: String,
    },
    /// The requester takes the ServiceAccount token of their grant (credential
    /// mode), once. The token itself is never recorded.
    IssueCredential {
        grant: GrantId,
        service_account: String,
        token_expires_at: Timestamp,
    },
    /// An admin proposes a new policy (the text of the YAML file).
    ProposePolicy {
        text: String,
    },
    /// A second admin puts a proposed policy in force.
    ApprovePolicy {
        hash: String,
    },
}

/// Why a command was refused. Each maps to one HTTP status at the edge.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 403: the actor may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 409: the request or grant is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// 422: a field breaks a rule (of the API or of the policy).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// 403: the policy does not allow it.
    #[error("{0}")]
    Denied(Denial),
    /// 503: no policy is in force yet.
    #[error("no access policy is in force")]
    NoPolicy,
}

fn invalid(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::Invalid { field: field.to_string(), reason: reason.into() }
}

fn denied(denial: Denial) -> Rejection {
    match &denial.field {
        Some(field) => Rejection::Invalid { field: field.clone(), reason: denial.to_string() },
        None => Rejection::Denied(denial),
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.chars().count() > max {
        return Err(invalid(field, format!("at most {max} characters")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn check_comment(comment: &Option<String>) -> Result<(), Rejection> {
    comment.as_deref().map_or(Ok(()), |c| check_text("comment", c, MAX_COMMENT))
}

fn basis(rule: &Rule, policy: &Policy) -> Basis {
    Basis { rule: rule.name().to_string(), policy_hash: policy.hash_hex() }
}

/// Decides a command against the state and the policy in force.
///
/// # Errors
/// A [`Rejection`] saying why, with nothing decided.
pub fn decide(
    state: &State,
    policy: Option<&Policy>,
    command: Command,
    ctx: &Context,
) -> Result<Vec<EventDraft>, Rejection> {
    // Expiry needs no policy: time alone decides it, so requests and grants
    // end on time even when no policy is in force.
    match command {
        Command::ExpireRequest { request } => return expire_request(state, request, ctx),
        Command::ExpireGrant { grant } => return expire_grant(state, grant, ctx),
        _ => {}
    }
    let policy = policy.ok_or(Rejection::NoPolicy)?;
    let actor = &ctx.actor;
    let draft = |n: u8, payload: Payload| payload.to_draft(ctx.id(n), actor);
    match command {
        Command::Request { target, duration, reason, ticket, break_glass } => {
            // A retry (same Idempotency-Key, so the same seed) of a request already recorded.
            if state.requests.contains_key(&ctx.id(0)) {
                return Err(Rejection::Conflict(format!("request {} already exists", ctx.id(0))));
            }
            check_text("reason", &reason, MAX_REASON)?;
            if let Some(ticket) = &ticket {
                check_text("ticket", ticket, MAX_TICKET)?;
                // One line: a pattern with (?m) must not be satisfiable by one line of many.
                if ticket.contains('\n') {
                    return Err(invalid("ticket", "must be one line"));
                }
            }
            if target.names.len() > MAX_NAMES {
                return Err(invalid("target.names", format!("at most {MAX_NAMES} names")));
            }
            let rule = policy.match_request(&target, actor, break_glass).map_err(denied)?;
            rule.check_request(duration, &reason, ticket.as_deref(), break_glass).map_err(denied)?;
            let approvals_needed = if break_glass { 0 } else { rule.approvals_needed() };
            let created = RequestCreated {
                target: TargetData::from(&target),
                duration_secs: duration.secs(),
                reason,
                ticket,
                break_glass,
                approvals_needed,
                pending_expires_at: after(ctx.now, rule.pending_ttl()).to_string(),
                basis: basis(rule, policy),
            };
            let request_id = ctx.id(0);
            let mut events = vec![draft(0, Payload::RequestCreated(created))];
            if approvals_needed == 0 {
                let review_due =
                    if break_glass { rule.break_glass().map(|b| after(ctx.now, b.review_within)) } else { None };
                events.push(draft(
                    1,
                    Payload::GrantActivated(activation(
                        request_id,
                        &actor.sub,
                        &target,
                        duration,
                        ctx.now,
                        Vec::new(),
                        break_glass,
                        review_due,
                        basis(rule, policy),
                        rule.credential().recorded(),
                        if break_glass {
                            rule.break_glass().map(|b| b.notify.clone()).unwrap_or_default()
                        } else {
                            Vec::new()
                        },
                    )),
                ));
            }
            Ok(events)
        }
        Command::Approve { request, comment } => {
            check_comment(&comment)?;
            let (request, rule) = pending_request(state, policy, request, ctx)?;
            if !rule.may_approve(actor) {
                return Err(Rejection::Forbidden(format!("you are not an approver of rule {:?}", rule.name())));
            }
            if request.approvals.iter().any(|a| *a.by == actor.sub) {
                return Err(Rejection::Conflict("you have already approved this request".into()));
            }
            let decision = RequestDecision { request_id: request.id.to_string(), comment, basis: basis(rule, policy) };
            let mut events = vec![draft(0, Payload::RequestApproved(decision))];
            // N distinct approvers: this approval plus the earlier ones (all distinct, checked above).
            if request.approvals.len() as u32 + 1 >= request.approvals_needed {
                let mut approvers: Vec<String> = request.approvals.iter().map(|a| a.by.to_string()).collect();
                approvers.push(actor.sub.clone());
                let activated = activation(
                    request.id,
                    &request.requester.sub,
                    &request.target,
                    request.duration,
                    ctx.now,
                    approvers,
                    false,
                    None,
                    basis(rule, policy),
                    rule.credential().recorded(),
                    Vec::new(),
                );
                events.push(draft(1, Payload::GrantActivated(activated)));
            }
            Ok(events)
        }
        Command::Deny { request, comment } => {
            check_comment(&comment)?;
            let (request, rule) = pending_request(state, policy, request, ctx)?;
            if !rule.may_approve(actor) && !policy.is_admin(actor) {
                return Err(Rejection::Forbidden(format!("you are not an approver of rule {:?}", rule.name())));
            }
            let decision = RequestDecision { request_id: request.id.to_string(), comment, basis: basis(rule, policy) };
            Ok(vec![draft(0, Payload::RequestDenied(decision))])
        }
        Command::Cancel { request } => {
            let request = state.requests.get(&request).ok_or_else(|| not_found("request", request))?;
            if request.requester.sub != actor.sub {
                return Err(Rejection::Forbidden("only the requester can cancel a request".into()));
            }
            if request.status != RequestStatus::Pending {
                return Err(Rejection::Conflict(format!("the request is {}, not pending", request.status.as_str())));
            }
            Ok(vec![draft(0, Payload::RequestCancelled(RequestClosed { request_id: request.id.to_string() }))])
        }
        Command::ExpireRequest { request } => expire_request(state, request, ctx),
        Command::End { grant, comment } => {
            check_comment(&comment)?;
            let grant = active_grant(state, grant, ctx)?;
            if grant.requester != actor.sub {
                return Err(Rejection::Forbidden(
                    "only the requester can end their grant; approvers and admins revoke".into(),
                ));
            }
            Ok(vec![draft(0, Payload::GrantEnded(GrantClosed { grant_id: grant.id.to_string(), comment }))])
        }
        Command::Revoke { grant, reason } => {
            check_text("reason", &reason, MAX_REASON)?;
            if reason.trim().is_empty() {
                return Err(invalid("reason", "a revocation needs a reason"));
            }
            let grant = active_grant(state, grant, ctx)?;
            let approver = policy.rule(&grant.basis.rule).is_some_and(|rule| rule.may_approve(actor));
            if !approver && !policy.is_admin(actor) {
                return Err(Rejection::Forbidden(
                    "only an approver of the grant's rule or an admin can revoke it".into(),
                ));
            }
            Ok(vec![draft(
                0,
                Payload::GrantRevoked(GrantClosed { grant_id: grant.id.to_string(), comment: Some(reason) }),
            )])
        }
        Command::ExpireGrant { grant } => expire_grant(state, grant, ctx),
        Command::Extend { grant, duration, reason } => {
            check_text("reason", &reason, MAX_REASON)?;
            let grant = active_grant(state, grant, ctx)?;
            if grant.requester != actor.sub {
                return Err(Rejection::Forbidden("only the requester can extend their grant".into()));
            }
            if grant.break_glass {
                return Err(Rejection::Conflict("a break-glass grant cannot be extended; request access again".into()));
            }
            if grant
                .extensions
                .iter()
                .any(|e| state.extensions.get(e).is_some_and(|x| x.status == ExtensionStatus::Pending))
            {
                return Err(Rejection::Conflict("an extension of this grant is already pending".into()));
            }
            let rule = policy.rule(&grant.basis.rule).ok_or_else(|| {
                Rejection::Conflict(format!(
                    "rule {:?} is no longer in the policy; request access again",
                    grant.basis.rule
                ))
            })?;
            // The whole grant, extension included, stays within the rule's maximum.
            let total =
                (grant.expires_at.unix_micros() - grant.starts_at.unix_micros()) / 1_000_000 + duration.secs() as i64;
            let total = Span::from_secs(total.max(1) as u64)
                .ok_or_else(|| invalid("duration", "the extended grant would be too long"))?;
            let ticket = state.requests.get(&grant.request_id).and_then(|r| r.ticket.clone());
            rule.check_request(total, &reason, ticket.as_deref(), false).map_err(denied)?;
            let approvals_needed = rule.approvals_needed();
            let requested = ExtensionRequested {
                grant_id: grant.id.to_string(),
                duration_secs: duration.secs(),
                reason,
                approvals_needed,
                basis: basis(rule, policy),
            };
            let mut events = vec![draft(0, Payload::ExtensionRequested(requested))];
            if approvals_needed == 0 {
                let extended = GrantExtended {
                    grant_id: grant.id.to_string(),
                    extension_id: ctx.id(0).to_string(),
                    expires_at: after(grant.expires_at, duration).to_string(),
                };
                events.push(draft(1, Payload::GrantExtended(extended)));
            }
            Ok(events)
        }
        Command::ApproveExtension { extension, comment } => {
            check_comment(&comment)?;
            let (extension, grant, rule) = pending_extension(state, policy, extension, ctx)?;
            if !rule.may_approve(actor) {
                return Err(Rejection::Forbidden(format!("you are not an approver of rule {:?}", rule.name())));
            }
            if extension.approvals.iter().any(|a| *a.by == actor.sub) {
                return Err(Rejection::Conflict("you have already approved this extension".into()));
            }
            let decision = ExtensionDecision {
                grant_id: grant.id.to_string(),
                extension_id: extension.id.to_string(),
                comment,
                basis: basis(rule, policy),
            };
            let mut events = vec![draft(0, Payload::ExtensionApproved(decision))];
            if extension.approvals.len() as u32 + 1 >= extension.approvals_needed {
                let extended = GrantExtended {
                    grant_id: grant.id.to_string(),
                    extension_id: extension.id.to_string(),
                    expires_at: after(grant.expires_at, extension.duration).to_string(),
                };
                events.push(draft(1, Payload::GrantExtended(extended)));
            }
            Ok(events)
        }
        Command::DenyExtension { extension, comment } => {
            check_comment(&comment)?;
            let (extension, grant, rule) = pending_extension(state, policy, extension, ctx)?;
            if !rule.may_approve(actor) && !policy.is_admin(actor) {
                return Err(Rejection::Forbidden(format!("you are not an approver of rule {:?}", rule.name())));
            }
            let decision = ExtensionDecision {
                grant_id: grant.id.to_string(),
                extension_id: extension.id.to_string(),
                comment,
                basis: basis(rule, policy),
            };
            Ok(vec![draft(0, Payload::ExtensionDenied(decision))])
        }
        Command::ProposePolicy { text } => {
            if !policy.is_admin(actor) && actor.via != "system" {
                return Err(Rejection::Forbidden("only an admin of the policy in force can propose a policy".into()));
            }
            let proposed = Policy::parse(&text).map_err(|e| invalid("policy", e.to_string()))?;
            let hash = proposed.hash_hex();
            if hash == policy.hash_hex() {
                return Err(Rejection::Conflict("this policy is already in force".into()));
            }
            if state.proposals.contains_key(&hash) {
                return Err(Rejection::Conflict(format!("policy {hash} is already proposed")));
            }
            Ok(vec![draft(0, Payload::PolicyProposed(PolicyProposed { policy_hash: hash, text }))])
        }
        Command::ApprovePolicy { hash } => {
            if !policy.is_admin(actor) {
                return Err(Rejection::Forbidden("only an admin of the policy in force can approve a policy".into()));
            }
            let (text, proposer) =
                state.proposals.get(&hash).ok_or_else(|| Rejection::NotFound(format!("no proposed policy {hash}")))?;
            // Four eyes: the proposer never approves their own change.
            if *proposer == actor.sub {
                return Err(Rejection::Forbidden("a policy change needs a second admin: you proposed it".into()));
            }
            let loaded = PolicyLoaded {
                policy_hash: hash,
                text: text.clone(),
                proposed_by: Some(proposer.clone()),
                approved_by: Some(actor.sub.clone()),
            };
            Ok(vec![draft(0, Payload::PolicyLoaded(loaded))])
        }
        Command::IssueCredential { grant, service_account, token_expires_at } => {
            let grant = active_grant(state, grant, ctx)?;
            check_credential(grant, actor)?;
            Ok(vec![draft(
                0,
                Payload::CredentialIssued(CredentialIssued {
                    grant_id: grant.id.to_string(),
                    service_account,
                    token_expires_at: token_expires_at.to_string(),
                }),
            )])
        }
        Command::ReviewBreakGlass { grant, comment } => {
            check_text("comment", &comment, MAX_COMMENT)?;
            if comment.trim().is_empty() {
                return Err(invalid("comment", "a review needs a comment"));
            }
            let grant = state.grants.get(&grant).ok_or_else(|| not_found("grant", grant))?;
            if !grant.break_glass {
                return Err(Rejection::Conflict("the grant is not a break-glass grant".into()));
            }
            if grant.reviewed.is_some() {
                return Err(Rejection::Conflict("the break-glass use has already been reviewed".into()));
            }
            if grant.requester == actor.sub {
                return Err(Rejection::Forbidden("nobody reviews their own break-glass use".into()));
            }
            let approver = policy.rule(&grant.basis.rule).is_some_and(|rule| rule.may_approve(actor));
            if !approver && !policy.is_admin(actor) {
                return Err(Rejection::Forbidden(
                    "only an approver of the rule or an admin can review a break-glass use".into(),
                ));
            }
            Ok(vec![draft(
                0,
                Payload::BreakGlassReviewed(BreakGlassReviewed { grant_id: grant.id.to_string(), comment }),
            )])
        }
    }
}

/// A pending request whose TTL has passed expires.
fn expire_request(state: &State, request: RequestId, ctx: &Context) -> Result<Vec<EventDraft>, Rejection> {
    let request = state.requests.get(&request).ok_or_else(|| not_found("request", request))?;
    if request.status != RequestStatus::Pending {
        return Err(Rejection::Conflict(format!("the request is {}, not pending", request.status.as_str())));
    }
    if ctx.now < request.pending_expires_at {
        return Err(Rejection::Conflict(format!("the request is pending until {}", request.pending_expires_at)));
    }
    let payload = Payload::RequestExpired(RequestClosed { request_id: request.id.to_string() });
    Ok(vec![payload.to_draft(ctx.id(0), &ctx.actor)])
}

/// An active grant whose time is up expires.
fn expire_grant(state: &State, grant: GrantId, ctx: &Context) -> Result<Vec<EventDraft>, Rejection> {
    let grant = state.grants.get(&grant).ok_or_else(|| not_found("grant", grant))?;
    if grant.status != GrantStatus::Active {
        return Err(Rejection::Conflict(format!("the grant is {}, not active", grant.status.as_str())));
    }
    if ctx.now < grant.expires_at {
        return Err(Rejection::Conflict(format!("the grant is active until {}", grant.expires_at)));
    }
    let payload = Payload::GrantExpired(GrantClosed { grant_id: grant.id.to_string(), comment: None });
    Ok(vec![payload.to_draft(ctx.id(0), &ctx.actor)])
}

fn not_found(what: &str, id: EventId) -> Rejection {
    Rejection::NotFound(format!("no {what} {id}"))
}

/// A request that can still be decided, and the rule it is decided under (in the policy in force).
fn pending_request<'a>(
    state: &'a State,
    policy: &'a Policy,
    id: RequestId,
    ctx: &Context,
) -> Result<(&'a super::state::Request, &'a Rule), Rejection> {
    let request = state.requests.get(&id).ok_or_else(|| not_found("request", id))?;
    if request.requester.sub == ctx.actor.sub {
        return Err(Rejection::Forbidden("a requester never decides their own request".into()));
    }
    if request.status != RequestStatus::Pending {
        return Err(Rejection::Conflict(format!("the request is {}, not pending", request.status.as_str())));
    }
    if ctx.now >= request.pending_expires_at {
        return Err(Rejection::Conflict("the request has expired".into()));
    }
    let rule = policy.rule(&request.basis.rule).ok_or_else(|| {
        Rejection::Conflict(format!("rule {:?} is no longer in the policy; request access again", request.basis.rule))
    })?;
    Ok((request, rule))
}

/// A pending extension of an active grant, not the actor's own, and its rule.
fn pending_extension<'a>(
    state: &'a State,
    policy: &'a Policy,
    id: EventId,
    ctx: &Context,
) -> Result<(&'a super::state::Extension, &'a super::state::Grant, &'a Rule), Rejection> {
    let extension = state.extensions.get(&id).ok_or_else(|| not_found("extension", id))?;
    if extension.requester == ctx.actor.sub {
        return Err(Rejection::Forbidden("a requester never decides their own extension".into()));
    }
    if extension.status != ExtensionStatus::Pending {
        return Err(Rejection::Conflict("the extension has already been decided".into()));
    }
    let grant = active_grant(state, extension.grant_id, ctx)?;
    let rule = policy
        .rule(&extension.basis.rule)
        .ok_or_else(|| Rejection::Conflict(format!("rule {:?} is no longer in the policy", extension.basis.rule)))?;
    Ok((extension, grant, rule))
}

/// A grant that is active at the context's time.
/// Whether `actor` may take the ServiceAccount token of `grant`: their own
/// grant, in credential mode, not taken before.
///
/// # Errors
/// The [`Rejection`] saying why not.
pub fn check_credential(grant: &super::state::Grant, actor: &Actor) -> Result<(), Rejection> {
    if grant.requester != actor.sub {
        return Err(Rejection::Forbidden("only the requester takes the credential of a grant".into()));
    }
    if grant.credential.as_deref() != Some("service-account") {
        return Err(Rejection::Conflict(
            "the grant binds your own identity; use your usual kubeconfig (its rule has no credential: service-account)"
                .into(),
        ));
    }
    if grant.credential_issued.is_some() {
        return Err(Rejection::Conflict("the grant's credential was already taken; it is handed out once".into()));
    }
    Ok(())
}

fn active_grant<'a>(state: &'a State, id: GrantId, ctx: &Context) -> Result<&'a super::state::Grant, Rejection> {
    let grant = state.grants.get(&id).ok_or_else(|| not_found("grant", id))?;
    if grant.status != GrantStatus::Active || ctx.now >= grant.expires_at {
        let status = if grant.status == GrantStatus::Active { "expired" } else { grant.status.as_str() };
        return Err(Rejection::Conflict(format!("the grant is {status}, not active")));
    }
    Ok(grant)
}

#[allow(clippy::too_many_arguments)]
fn activation(
    request_id: RequestId,
    requester: &str,
    target: &Target,
    duration: Span,
    now: Timestamp,
    approvers: Vec<String>,
    break_glass: bool,
    review_due: Option<Timestamp>,
    basis: Basis,
    credential: Option<String>,
    notify: Vec<String>,
) -> GrantActivated {
    GrantActivated {
        request_id: request_id.to_string(),
        requester: requester.to_string(),
        target: TargetData::from(target),
        starts_at: now.to_string(),
        expires_at: after(now, duration).to_string(),
        approvers,
        break_glass,
        review_due: review_due.map(|t| t.to_string()),
        rbac: effective_rules(target),
        basis,
        credential,
        notify,
    }
}
