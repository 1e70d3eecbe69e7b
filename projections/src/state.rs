//! The workflow's state and `evolve`: folding events into requests, grants
//! and extensions. Pure and total: an event the state cannot place (unknown
//! ids, other kinds) leaves it unchanged.
//!
//! Every request ever made stays in the state (the API answers for closed
//! ones too), so a request is a compact record: what many requests repeat
//! (the requester, the target, the rule and policy hash, who decided) is an
//! [`Arc`] to one shared value (see [`crate::intern`]), the free text is a
//! `Box<str>` without spare capacity, and the record itself is boxed so the
//! map's nodes, often half full, hold pointers rather than records.

use crate::events::{Basis, GrantId, Payload, RbacRule, RequestId, ts};
use crate::intern::Interned;
use crate::types::{Span, Target};
use portcullis_format::event::{Actor, Event, EventId};
use portcullis_format::time::Timestamp;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A decision or a closing: who, when, and what they said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    /// Shared with every other record by the same subject.
    pub by: Arc<str>,
    pub at: Timestamp,
    pub comment: Option<Box<str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestStatus {
    Pending,
    /// Approved (or auto-approved, or break-glass): a grant was activated.
    Granted,
    Denied,
    Cancelled,
    Expired,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Granted => "granted",
            RequestStatus::Denied => "denied",
            RequestStatus::Cancelled => "cancelled",
            RequestStatus::Expired => "expired",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    /// Shared with the requester's other requests.
    pub requester: Arc<Actor>,
    pub created_at: Timestamp,
    /// Shared with every request for the same target.
    pub target: Arc<Target>,
    pub duration: Span,
    pub reason: Box<str>,
    pub ticket: Option<Box<str>>,
    pub break_glass: bool,
    pub approvals_needed: u32,
    pub approvals: Box<[Approval]>,
    pub pending_expires_at: Timestamp,
    /// Shared with every request decided under the same rule and policy.
    pub basis: Arc<Basis>,
    pub status: RequestStatus,
    /// Who closed it (denied, cancelled) and when, with the comment.
    pub closed: Option<Approval>,
    pub grant: Option<GrantId>,
    /// The ledger position of the event that created it.
    pub seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantStatus {
    Active,
    Ended,
    Revoked,
    Expired,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Active => "active",
            GrantStatus::Ended => "ended",
            GrantStatus::Revoked => "revoked",
            GrantStatus::Expired => "expired",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: GrantId,
    pub request_id: RequestId,
    pub requester: String,
    pub target: Target,
    pub starts_at: Timestamp,
    pub expires_at: Timestamp,
    pub approvers: Vec<String>,
    pub break_glass: bool,
    pub review_due: Option<Timestamp>,
    pub reviewed: Option<Approval>,
    pub rbac: Vec<RbacRule>,
    pub basis: Basis,
    pub status: GrantStatus,
    /// How it ended: by whom (the requester, a revoker, or the system), when, why.
    pub ended: Option<Approval>,
    pub extensions: Vec<EventId>,
    pub seq: u64,
    /// `service-account` for a per-grant ServiceAccount token (see `events::GrantActivated`).
    pub credential: Option<String>,
    /// When its ServiceAccount token was handed out (it is handed out once).
    pub credential_issued: Option<Timestamp>,
}

impl Grant {
    /// Whether the grant gives access at `at` (by the record; the cluster may lag).
    pub fn active_at(&self, at: Timestamp) -> bool {
        self.starts_at <= at && at < self.expires_at && self.ended.as_ref().is_none_or(|e| at < e.at)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtensionStatus {
    Pending,
    Approved,
    Denied,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    pub id: EventId,
    pub grant_id: GrantId,
    pub requester: String,
    pub duration: Span,
    pub reason: String,
    pub approvals_needed: u32,
    pub approvals: Vec<Approval>,
    pub basis: Basis,
    pub status: ExtensionStatus,
}

/// Something whose deadline has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// A pending request past its TTL.
    Request(RequestId),
    /// An active grant past its expiry.
    Grant(GrantId),
}

/// Everything the workflow knows, folded from the ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Every request, open or closed. Boxed: see the module documentation.
    pub requests: BTreeMap<RequestId, Box<Request>>,
    pub grants: BTreeMap<GrantId, Grant>,
    pub extensions: BTreeMap<EventId, Extension>,
    /// Events folded (the next expected seq).
    pub size: u64,
    /// The policy in force: its hash and text.
    pub policy: Option<(String, String)>,
    /// Proposed policies by hash: text and proposer.
    pub proposals: BTreeMap<String, (String, String)>,
    /// The pending requests by the seq that created them: the expiry
    /// scheduler and the pending list read these, not every request ever
    /// made. Kept by `evolve`, so `requests` must change through it only.
    pending: BTreeMap<u64, RequestId>,
    /// The values the records share.
    interned: Interned,
}

fn id(s: &str) -> Option<EventId> {
    EventId::parse(s)
}

/// A decision by `sub` at `at`, the subject shared with their other decisions.
fn approval(interned: &mut Interned, sub: &str, at: Timestamp, comment: Option<String>) -> Approval {
    Approval { by: interned.sub(sub), at, comment: comment.map(String::into_boxed_str) }
}

impl State {
    /// Applies one ledger event. Events must come in ledger order (the
    /// sequencer guarantees it); one out of order is ignored.
    #[must_use]
    pub fn evolve(mut self, event: &Event) -> State {
        if event.seq != self.size {
            return self;
        }
        self.size += 1;
        if let Some(payload) = Payload::from_event(event) {
            self.apply(event, payload);
        }
        self
    }

    /// Rebuilds the state from events starting at entry 0.
    pub fn rebuild<'a>(events: impl IntoIterator<Item = &'a Event>) -> State {
        events.into_iter().fold(State::default(), State::evolve)
    }

    fn apply(&mut self, event: &Event, payload: Payload) -> Option<()> {
        let at = event.ts;
        let sub = &event.draft.actor.sub;
        match payload {
            Payload::RequestCreated(d) => {
                let (target, duration) = (d.target.to_target()?, Span::from_secs(d.duration_secs)?);
                let pending_expires_at = ts(&d.pending_expires_at)?;
                let request = Request {
                    id: event.draft.id,
                    requester: self.interned.actor(&event.draft.actor),
                    created_at: at,
                    target: self.interned.target(target),
                    duration,
                    reason: d.reason.into_boxed_str(),
                    ticket: d.ticket.map(String::into_boxed_str),
                    break_glass: d.break_glass,
                    approvals_needed: d.approvals_needed,
                    approvals: Box::default(),
                    pending_expires_at,
                    basis: self.interned.basis(d.basis),
                    status: RequestStatus::Pending,
                    closed: None,
                    grant: None,
                    seq: event.seq,
                };
                self.pending.insert(request.seq, request.id);
                self.requests.insert(request.id, Box::new(request));
            }
            Payload::RequestApproved(d) => {
                let request = self.requests.get_mut(&id(&d.request_id)?)?;
                // Approvals come one at a time and are few: the slice is rebuilt rather than kept with spare room.
                let mut approvals = std::mem::take(&mut request.approvals).into_vec();
                approvals.push(approval(&mut self.interned, sub, at, d.comment));
                request.approvals = approvals.into_boxed_slice();
            }
            Payload::RequestDenied(d) => {
                let request = self.requests.get_mut(&id(&d.request_id)?)?;
                self.pending.remove(&request.seq);
                request.status = RequestStatus::Denied;
                request.closed = Some(approval(&mut self.interned, sub, at, d.comment));
            }
            Payload::RequestCancelled(d) | Payload::RequestExpired(d) => {
                let request = self.requests.get_mut(&id(&d.request_id)?)?;
                self.pending.remove(&request.seq);
                request.status = if event.draft.kind == crate::events::kind::REQUEST_CANCELLED {
                    RequestStatus::Cancelled
                } else {
                    RequestStatus::Expired
                };
                request.closed = Some(approval(&mut self.interned, sub, at, None));
            }
            Payload::GrantActivated(d) => {
                let request_id = id(&d.request_id)?;
                let grant = Grant {
                    id: event.draft.id,
                    request_id,
                    requester: d.requester,
                    target: d.target.to_target()?,
                    starts_at: ts(&d.starts_at)?,
                    expires_at: ts(&d.expires_at)?,
                    approvers: d.approvers,
                    break_glass: d.break_glass,
                    review_due: d.review_due.as_deref().and_then(ts),
                    reviewed: None,
                    rbac: d.rbac,
                    basis: d.basis,
                    status: GrantStatus::Active,
                    ended: None,
                    extensions: Vec::new(),
                    seq: event.seq,
                    credential: d.credential,
                    credential_issued: None,
                };
                if let Some(request) = self.requests.get_mut(&request_id) {
                    self.pending.remove(&request.seq);
                    request.status = RequestStatus::Granted;
                    request.grant = Some(grant.id);
                }
                self.grants.insert(grant.id, grant);
            }
            Payload::GrantEnded(d) | Payload::GrantRevoked(d) | Payload::GrantExpired(d) => {
                let status = match event.draft.kind.as_str() {
                    crate::events::kind::GRANT_ENDED => GrantStatus::Ended,
                    crate::events::kind::GRANT_REVOKED => GrantStatus::Revoked,
                    _ => GrantStatus::Expired,
                };
                let grant = self.grants.get_mut(&id(&d.grant_id)?)?;
                grant.status = status;
                grant.ended = Some(approval(&mut self.interned, sub, at, d.comment));
            }
            Payload::ExtensionRequested(d) => {
                let grant_id = id(&d.grant_id)?;
                let extension = Extension {
                    id: event.draft.id,
                    grant_id,
                    requester: sub.clone(),
                    duration: Span::from_secs(d.duration_secs)?,
                    reason: d.reason,
                    approvals_needed: d.approvals_needed,
                    approvals: Vec::new(),
                    basis: d.basis,
                    status: ExtensionStatus::Pending,
                };
                self.grants.get_mut(&grant_id)?.extensions.push(extension.id);
                self.extensions.insert(extension.id, extension);
            }
            Payload::ExtensionApproved(d) => {
                let extension = self.extensions.get_mut(&id(&d.extension_id)?)?;
                extension.approvals.push(approval(&mut self.interned, sub, at, d.comment));
            }
            Payload::ExtensionDenied(d) => {
                self.extensions.get_mut(&id(&d.extension_id)?)?.status = ExtensionStatus::Denied;
            }
            Payload::GrantExtended(d) => {
                self.extensions.get_mut(&id(&d.extension_id)?)?.status = ExtensionStatus::Approved;
                self.grants.get_mut(&id(&d.grant_id)?)?.expires_at = ts(&d.expires_at)?;
            }
            Payload::PolicyLoaded(d) => {
                self.proposals.remove(&d.policy_hash);
                self.policy = Some((d.policy_hash, d.text));
            }
            Payload::PolicyProposed(d) => {
                self.proposals.insert(d.policy_hash, (d.text, sub.clone()));
            }
            Payload::BreakGlassReviewed(d) => {
                let grant = self.grants.get_mut(&id(&d.grant_id)?)?;
                grant.reviewed = Some(approval(&mut self.interned, sub, at, Some(d.comment)));
            }
            Payload::CredentialIssued(d) => {
                self.grants.get_mut(&id(&d.grant_id)?)?.credential_issued = Some(at);
            }
        }
        Some(())
    }

    /// The expirations due at `now`: pending requests past their TTL and
    /// active grants past their expiry, earliest first.
    pub fn due(&self, now: Timestamp) -> Vec<Due> {
        let mut due: Vec<(Timestamp, Due)> = self
            .pending_requests()
            .filter(|r| r.pending_expires_at <= now)
            .map(|r| (r.pending_expires_at, Due::Request(r.id)))
            .chain(
                self.grants
                    .values()
                    .filter(|g| g.status == GrantStatus::Active && g.expires_at <= now)
                    .map(|g| (g.expires_at, Due::Grant(g.id))),
            )
            .collect();
        due.sort_by_key(|(at, _)| *at);
        due.into_iter().map(|(_, due)| due).collect()
    }

    /// The next deadline after `now` the expiry scheduler must act on: the
    /// earliest pending-request expiry or active-grant expiry later than `now`.
    pub fn next_deadline_after(&self, now: Timestamp) -> Option<Timestamp> {
        let pending = self.pending_requests().map(|r| r.pending_expires_at);
        let grants = self.grants.values().filter(|g| g.status == GrantStatus::Active).map(|g| g.expires_at);
        pending.chain(grants).filter(|deadline| *deadline > now).min()
    }

    /// The pending requests, oldest first.
    fn pending_requests(&self) -> impl Iterator<Item = &Request> {
        self.pending
            .values()
            .filter_map(|id| self.requests.get(id))
            .map(|r| &**r)
            .filter(|r| r.status == RequestStatus::Pending)
    }
}

/// Queries over the state: the projections the API and reports read.
impl State {
    /// Pending requests, oldest first.
    pub fn pending(&self) -> Vec<&Request> {
        self.pending_requests().collect()
    }

    /// One person's requests and grants, in ledger order.
    pub fn history(&self, sub: &str) -> (Vec<&Request>, Vec<&Grant>) {
        let mut requests: Vec<&Request> =
            self.requests.values().map(|r| &**r).filter(|r| r.requester.sub == sub).collect();
        requests.sort_by_key(|r| r.seq);
        let mut grants: Vec<&Grant> = self.grants.values().filter(|g| g.requester == sub).collect();
        grants.sort_by_key(|g| g.seq);
        (requests, grants)
    }

    /// The grants that gave access to an object (or to any object of the kind
    /// when `name` is `None`) at `at`, by the record.
    pub fn access_at(
        &self,
        cluster: &crate::types::Name,
        namespace: &crate::types::Name,
        kind: crate::types::Kind,
        name: Option<&crate::types::Name>,
        at: Timestamp,
    ) -> Vec<&Grant> {
        let mut holders: Vec<&Grant> = self
            .grants
            .values()
            .filter(|g| g.active_at(at) && g.target.cluster == *cluster && g.target.namespace == *namespace)
            .filter(|g| g.target.kind == kind)
            // Named grants cover their names; grants on all objects cover every name.
            .filter(|g| name.is_none_or(|name| g.target.names.is_empty() || g.target.names.contains(name)))
            .collect();
        holders.sort_by_key(|g| g.seq);
        holders
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::*;
    use crate::types::{Access, Kind, Name};
    use portcullis_format::event::Actor;
    use proptest::prelude::*;

    fn at(n: u64) -> Timestamp {
        Timestamp::from_unix_micros(1_800_000_000_000_000 + n as i64 * 1_000_000).unwrap()
    }

    fn basis() -> Basis {
        Basis { rule: "r".into(), policy_hash: "h".into() }
    }

    /// A random but well-formed workflow history: each op byte picks an action
    /// and which earlier request or grant it applies to.
    fn history(ops: &[(u8, u8)]) -> Vec<Event> {
        let target = TargetData {
            cluster: "prod".into(),
            namespace: "shop".into(),
            kind: Kind::Ingresses,
            names: vec!["web".into()],
            access: Access::Edit,
        };
        let mut events: Vec<Event> = Vec::new();
        let (mut requests, mut grants, mut extensions) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (op, pick)) in ops.iter().enumerate() {
            let seq = events.len() as u64;
            let pick_from = |ids: &Vec<String>| ids.get(*pick as usize % ids.len().max(1)).cloned();
            let payload = match op % 12 {
                0 | 1 => Some(Payload::RequestCreated(RequestCreated {
                    target: target.clone(),
                    duration_secs: 600,
                    reason: format!("reason {i}"),
                    ticket: None,
                    break_glass: false,
                    approvals_needed: 1,
                    pending_expires_at: at(seq + 60).to_string(),
                    basis: basis(),
                })),
                2 => pick_from(&requests).map(|r| {
                    Payload::RequestApproved(RequestDecision { request_id: r, comment: None, basis: basis() })
                }),
                3 => pick_from(&requests).map(|r| {
                    Payload::GrantActivated(GrantActivated {
                        request_id: r,
                        requester: "alice".into(),
                        target: target.clone(),
                        starts_at: at(seq).to_string(),
                        expires_at: at(seq + 600).to_string(),
                        approvers: vec!["bob".into()],
                        break_glass: false,
                        review_due: None,
                        rbac: Vec::new(),
                        basis: basis(),
                        credential: seq.is_multiple_of(2).then(|| "service-account".into()),
                        notify: Vec::new(),
                    })
                }),
                4 => pick_from(&grants).map(|g| Payload::GrantEnded(GrantClosed { grant_id: g, comment: None })),
                5 => pick_from(&grants)
                    .map(|g| Payload::GrantRevoked(GrantClosed { grant_id: g, comment: Some("x".into()) })),
                6 => pick_from(&requests).map(|r| Payload::RequestCancelled(RequestClosed { request_id: r })),
                7 => pick_from(&grants).map(|g| {
                    Payload::ExtensionRequested(ExtensionRequested {
                        grant_id: g,
                        duration_secs: 60,
                        reason: "more".into(),
                        approvals_needed: 1,
                        basis: basis(),
                    })
                }),
                9 => pick_from(&requests).map(|r| {
                    Payload::RequestDenied(RequestDecision {
                        request_id: r,
                        comment: Some("no".into()),
                        basis: basis(),
                    })
                }),
                10 => pick_from(&requests).map(|r| Payload::RequestExpired(RequestClosed { request_id: r })),
                11 => pick_from(&grants).map(|g| {
                    Payload::CredentialIssued(CredentialIssued {
                        grant_id: g,
                        service_account: "shop/portcullis-x".into(),
                        token_expires_at: at(seq + 600).to_string(),
                    })
                }),
                _ => pick_from(&extensions).and_then(|x: String| {
                    let grant = grants.first().cloned()?;
                    Some(Payload::GrantExtended(GrantExtended {
                        grant_id: grant,
                        extension_id: x,
                        expires_at: at(seq + 900).to_string(),
                    }))
                }),
            };
            let Some(payload) = payload else { continue };
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&seq.to_be_bytes());
            let draft =
                payload.to_draft(EventId(id), &Actor { sub: "alice".into(), groups: vec![], via: "token".into() });
            match payload {
                Payload::RequestCreated(_) => requests.push(EventId(id).to_string()),
                Payload::GrantActivated(_) => grants.push(EventId(id).to_string()),
                Payload::ExtensionRequested(_) => extensions.push(EventId(id).to_string()),
                _ => {}
            }
            events.push(Event { log: "test".into(), seq, prev: [0; 32], ts: at(seq), draft });
        }
        events
    }

    proptest! {
        #[test]
        fn replay_from_any_prefix_equals_full_replay(ops in proptest::collection::vec(any::<(u8, u8)>(), 0..80), cut in any::<prop::sample::Index>()) {
            let events = history(&ops);
            let cut = cut.index(events.len() + 1);
            let resumed = events[cut..].iter().fold(State::rebuild(&events[..cut]), State::evolve);
            prop_assert_eq!(resumed, State::rebuild(&events));
        }

        #[test]
        fn the_pending_index_holds_exactly_the_pending_requests(ops in proptest::collection::vec(any::<(u8, u8)>(), 0..80)) {
            let state = State::rebuild(&history(&ops));
            let mut scanned: Vec<&Request> =
                state.requests.values().map(|r| &**r).filter(|r| r.status == RequestStatus::Pending).collect();
            scanned.sort_by_key(|r| r.seq);
            prop_assert_eq!(state.pending(), scanned.clone());
            let late = at(10_000);
            let due_requests: Vec<RequestId> =
                state.due(late).into_iter().filter_map(|d| if let Due::Request(id) = d { Some(id) } else { None }).collect();
            prop_assert_eq!(due_requests, scanned.iter().map(|r| r.id).collect::<Vec<_>>());
        }
    }

    #[test]
    fn access_at_a_time_follows_the_grant_lifetime() {
        let events = history(&[(0, 0), (3, 0), (4, 0)]);
        let state = State::rebuild(&events);
        let (cluster, namespace) = (Name::label("c", "prod").unwrap(), Name::label("n", "shop").unwrap());
        let web = Name::subdomain("n", "web").unwrap();
        assert_eq!(state.access_at(&cluster, &namespace, Kind::Ingresses, Some(&web), at(1)).len(), 1);
        assert_eq!(state.access_at(&cluster, &namespace, Kind::Ingresses, Some(&web), at(2)).len(), 0, "ended early");
        assert_eq!(
            state.access_at(&cluster, &namespace, Kind::Ingresses, Some(&web), at(0)).len(),
            0,
            "not yet granted"
        );
        assert_eq!(state.history("alice").0.len(), 1);
        assert!(state.pending().is_empty());
    }
}
