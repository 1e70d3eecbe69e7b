//! The populations and controls of a period, from its events. Each
//! population's `definition` is the exact rule below in words; the manifest
//! carries it, and the verifier recomputes every row with this code.

use super::{Bar, Control, Exception, Figure, LedgerFacts, Population, Report, RowSink, Settings, csv};
use crate::cluster::Observation;
use crate::events::{GrantActivated, Payload};
use crate::intern::Interned;
use portcullis_format::event::{Event, KIND_KEY_ROTATED};
use portcullis_format::time::Timestamp;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

const REQUESTS: &[&str] = &[
    "ledger_seq",
    "event_id",
    "event_time",
    "requester",
    "cluster",
    "namespace",
    "resource_kind",
    "resource_names",
    "access_level",
    "duration_seconds",
    "reason",
    "ticket",
    "break_glass",
    "approvals_required",
    "policy_rule",
    "policy_hash",
];
const APPROVALS: &[&str] = &[
    "ledger_seq",
    "event_id",
    "event_time",
    "decision",
    "request_id",
    "request_seq",
    "requester",
    "approver",
    "approver_is_requester",
    "comment",
    "policy_rule",
    "policy_hash",
];
const GRANTS: &[&str] = &[
    "ledger_seq",
    "grant_id",
    "event_time",
    "request_id",
    "request_seq",
    "requester",
    "approvers",
    "cluster",
    "namespace",
    "resource_kind",
    "resource_names",
    "access_level",
    "effective_rbac_rules",
    "start_time",
    "planned_end_time",
    "extended_end_time",
    "break_glass",
    "credential",
    "approval_evidence",
    "end_seq",
    "end_type",
    "end_time",
    "removal_seq",
    "removal_time",
    "time_to_revoke_ms",
    "policy_rule",
    "policy_hash",
];
const ENDINGS: &[&str] =
    &["ledger_seq", "event_id", "event_time", "end_type", "grant_id", "grant_seq", "actor", "comment"];
const REMOVALS: &[&str] = &[
    "ledger_seq",
    "event_id",
    "event_time",
    "grant_id",
    "grant_seq",
    "cluster",
    "namespace",
    "binding_name",
    "cause",
    "due_time",
    "removed_time",
    "time_to_revoke_ms",
    "sla_ms",
    "within_sla",
];
const EXTENSIONS: &[&str] = &[
    "ledger_seq",
    "event_id",
    "event_time",
    "event_type",
    "grant_id",
    "extension_id",
    "actor",
    "duration_seconds",
    "new_end_time",
    "reason_or_comment",
];
const BREAK_GLASS: &[&str] = &[
    "ledger_seq",
    "grant_id",
    "event_time",
    "requester",
    "cluster",
    "namespace",
    "resource_names",
    "review_due_time",
    "review_seq",
    "reviewer",
    "review_time",
    "review_comment",
    "reviewed",
];
const FINDINGS: &[&str] = &[
    "ledger_seq",
    "event_id",
    "event_time",
    "finding",
    "cluster",
    "namespace",
    "object_kind",
    "object_name",
    "grant_id",
    "role",
    "subjects",
    "detail",
];
const ROUTES: &[&str] = &[
    "ledger_seq",
    "event_id",
    "event_time",
    "cluster",
    "namespace",
    "resource_kind",
    "name",
    "change",
    "resource_version",
    "changed_paths",
    "field_managers",
    "covering_grants",
    "covered_by_grant",
];
const POLICIES: &[&str] = &[
    "ledger_seq",
    "event_id",
    "event_time",
    "event_type",
    "policy_hash",
    "actor",
    "proposed_by",
    "approved_by",
    "second_approver_distinct",
];
const KEYS: &[&str] = &["ledger_seq", "event_id", "event_time", "new_key", "actor"];

/// Each population: name, title, definition, columns.
pub const POPULATIONS: &[(&str, &str, &str, &[&str])] = &[
    (
        "access_requests",
        "Access requests",
        "Every request.created (v1) entry with event_time in the period, in ledger order; one row per entry with its target, reason, ticket, the policy rule and policy hash it was decided under.",
        REQUESTS,
    ),
    (
        "approvals",
        "Approvals and denials",
        "Every request.approved and request.denied (v1) entry in the period, in ledger order; request_seq and requester come from the request.created entry of request_id when it is earlier in the period (else empty); approver_is_requester is true when the approver's subject equals that requester.",
        APPROVALS,
    ),
    (
        "grants",
        "Grants",
        "Every grant.activated (v1) entry in the period, in ledger order; extended_end_time is the last grant.extended expires_at for it in the period; end_* is its first grant.ended, grant.revoked or grant.expired in the period; removal_* and time_to_revoke_ms are from its first binding.removed in the period (latency_ms); approval_evidence is break-glass, auto-approved (0 approvals required), in-period (request.created and enough distinct approvals earlier in the period), missing (request.created in the period without them: exception grant-without-approval), or before-period.",
        GRANTS,
    ),
    (
        "grant_endings",
        "Early ends, revocations and expiries",
        "Every grant.ended (end_type ended), grant.revoked (revoked) and grant.expired (expired) v1 entry in the period, in ledger order; grant_seq is the grant.activated entry when it is earlier in the period.",
        ENDINGS,
    ),
    (
        "removals",
        "Access removals (time to revoke)",
        "Every binding.removed (v1) entry in the period, in ledger order; time_to_revoke_ms is its latency_ms (removed_time minus due_time); within_sla is time_to_revoke_ms <= sla_ms.",
        REMOVALS,
    ),
    (
        "extensions",
        "Extensions",
        "Every grant.extension_requested, grant.extension_approved, grant.extension_denied and grant.extended (v1) entry in the period, in ledger order.",
        EXTENSIONS,
    ),
    (
        "break_glass",
        "Break-glass uses and reviews",
        "One row per grant.activated (v1) entry in the period with break_glass true, with its first grant.break_glass_reviewed in the period (reviewed true/false); then one row per other grant.break_glass_reviewed in the period (of a grant activated before the period or not break-glass, or a later review), whose ledger_seq and event_time are the review's.",
        BREAK_GLASS,
    ),
    (
        "cluster_findings",
        "Drift and standing access",
        "Every cluster.drift (v1) entry in the period (finding drift-removed or drift-restored), and for every cluster.standing_access (v1) entry one row per binding found (standing-found, in the order recorded) then per key gone (standing-gone), in ledger order.",
        FINDINGS,
    ),
    (
        "route_changes",
        "Ingress and route changes",
        "Every route.changed (v1) entry in the period, in ledger order, with the JSON pointers changed, the field managers, and the grants the reconciler recorded as covering the object then; covered_by_grant is false when that list is empty.",
        ROUTES,
    ),
    (
        "policy_changes",
        "Policy changes",
        "Every policy.proposed and policy.loaded (v1) entry in the period, in ledger order; second_approver_distinct is true when a loaded policy names an approver different from its proposer.",
        POLICIES,
    ),
    (
        "key_rotations",
        "Key rotations",
        "Every key.rotated entry in the period, in ledger order, with the new verifier key.",
        KEYS,
    ),
];

fn yes(b: bool) -> String {
    if b { "true".into() } else { "false".into() }
}

fn opt(s: Option<&str>) -> String {
    s.unwrap_or_default().to_string()
}

fn opt_num(n: Option<u64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_default()
}

/// The exception of an entry of a kind the report reads whose data it cannot read.
const UNREADABLE: &str = "unreadable-event";

/// The control whose populations an event kind feeds (`None` for kinds the report does not read).
fn control_of(kind: &str) -> Option<&'static str> {
    use crate::cluster::kind as observed;
    use crate::events::kind as workflow;
    match kind {
        workflow::REQUEST_CREATED
        | workflow::REQUEST_CANCELLED
        | workflow::REQUEST_EXPIRED
        | workflow::GRANT_ACTIVATED
        | workflow::EXTENSION_REQUESTED
        | workflow::EXTENSION_APPROVED
        | workflow::EXTENSION_DENIED
        | workflow::GRANT_EXTENDED => Some("CC6.1"),
        workflow::REQUEST_APPROVED | workflow::REQUEST_DENIED => Some("CC6.2"),
        workflow::GRANT_ENDED
        | workflow::GRANT_REVOKED
        | workflow::GRANT_EXPIRED
        | workflow::CREDENTIAL_ISSUED
        | observed::BINDING_APPLIED
        | observed::BINDING_REMOVED => Some("CC6.3"),
        workflow::BREAK_GLASS_REVIEWED | observed::DRIFT | observed::STANDING_ACCESS => Some("CC7.2"),
        workflow::POLICY_LOADED | workflow::POLICY_PROPOSED | observed::ROUTE_CHANGED => Some("CC8.1"),
        _ => None,
    }
}

/// The index of each population in [`POPULATIONS`].
const P_REQUESTS: usize = 0;
const P_APPROVALS: usize = 1;
const P_GRANTS: usize = 2;
const P_ENDINGS: usize = 3;
const P_REMOVALS: usize = 4;
const P_EXTENSIONS: usize = 5;
const P_BREAK_GLASS: usize = 6;
const P_FINDINGS: usize = 7;
const P_ROUTES: usize = 8;
const P_POLICIES: usize = 9;
const P_KEYS: usize = 10;

/// Encodes rows and hands them to the sink, counting them.
struct Emitter {
    scratch: String,
    counts: [usize; POPULATIONS.len()],
}

impl Emitter {
    fn emit(&mut self, sink: &mut dyn RowSink, population: usize, seq: u64, cells: &[String]) {
        self.scratch.clear();
        csv::fields(cells.iter().map(String::as_str), &mut self.scratch);
        self.counts[population] += 1;
        sink.row(population, seq, &self.scratch);
    }
}

/// A grant's row while later entries may still complete it: the fixed
/// columns already encoded, the others kept until the fold finishes. A
/// report over a hundred thousand grants holds this much per grant, not the
/// grant's event.
struct PendingGrant {
    seq: u64,
    /// Columns `ledger_seq` to `planned_end_time`, encoded.
    head: Box<str>,
    extended_end: Option<Box<str>>,
    /// Columns `break_glass` to `approval_evidence`, encoded.
    middle: Box<str>,
    /// `(end_seq, end_type, end_time)` of its first end in the period.
    end: Option<(u64, &'static str, Box<str>)>,
    /// `(removal_seq, removal_time, time_to_revoke_ms)` of its first removal in the period.
    removal: Option<(u64, Box<str>, i64)>,
    /// Columns `policy_rule` and `policy_hash`, encoded.
    tail: Box<str>,
}

impl PendingGrant {
    fn record(&self, out: &mut String) {
        out.clear();
        out.push_str(&self.head);
        out.push(',');
        csv::field(self.extended_end.as_deref().unwrap_or_default(), out);
        out.push(',');
        out.push_str(&self.middle);
        out.push(',');
        let (end_seq, end_type, end_time) = match &self.end {
            Some((seq, kind, time)) => (seq.to_string(), *kind, &**time),
            None => (String::new(), "", ""),
        };
        let (removal_seq, removal_time, latency) = match &self.removal {
            Some((seq, time, latency)) => (seq.to_string(), &**time, latency.to_string()),
            None => (String::new(), "", String::new()),
        };
        csv::fields([end_seq.as_str(), end_type, end_time, &removal_seq, removal_time, &latency], out);
        out.push(',');
        out.push_str(&self.tail);
    }
}

/// What the break-glass population needs of a break-glass grant.
struct BreakGlassUse {
    grant_id: String,
    time: String,
    cluster: String,
    namespace: String,
    names: String,
    review_due: String,
}

struct GrantInfo {
    seq: u64,
    /// Its row in `Fold::grant_rows`.
    row: usize,
    requester: Arc<str>,
    break_glass: Option<Box<BreakGlassUse>>,
}

/// A request of the period: its entry, requester and approvals required.
struct RequestInfo {
    seq: u64,
    requester: Arc<str>,
    required: u32,
}

/// A review of a break-glass grant: its entry, reviewer, time and comment.
type Review = (u64, Arc<str>, String, String);

/// The report, folded one entry at a time: what later entries refer to (the
/// period's requests, approvals and grants) is kept, compactly; the rows of
/// the populations go to a [`RowSink`] as they are made. The service and
/// the verifier stream a period's entries through it, so neither holds the
/// period's events.
pub struct Fold {
    settings: Settings,
    out: Emitter,
    people: Interned,
    by_kind: BTreeMap<String, u64>,
    requests: HashMap<String, RequestInfo>,
    approvals: HashMap<String, Vec<(u64, Arc<str>)>>,
    grants: HashMap<String, GrantInfo>,
    grant_rows: Vec<PendingGrant>,
    reviews: HashMap<String, Review>,
    /// Every other review (of a grant activated before the period or not
    /// break-glass, or a later review of one): `(seq, grant id, review)`.
    late_reviews: Vec<(u64, String, Review)>,
    latencies: Vec<i64>,
    exceptions: BTreeMap<&'static str, Vec<Exception>>,
    figures: BTreeMap<&'static str, i64>,
    grant_times: Vec<Timestamp>,
}

impl Fold {
    pub fn new(settings: &Settings) -> Fold {
        Fold {
            settings: settings.clone(),
            out: Emitter { scratch: String::new(), counts: [0; POPULATIONS.len()] },
            people: Interned::default(),
            by_kind: BTreeMap::new(),
            requests: HashMap::new(),
            approvals: HashMap::new(),
            grants: HashMap::new(),
            grant_rows: Vec::new(),
            reviews: HashMap::new(),
            late_reviews: Vec::new(),
            latencies: Vec::new(),
            exceptions: BTreeMap::new(),
            figures: BTreeMap::new(),
            grant_times: Vec::new(),
        }
    }

    fn count(&mut self, key: &'static str) {
        *self.figures.entry(key).or_insert(0) += 1;
    }

    fn exception(&mut self, control: &'static str, exception: Exception) {
        self.exceptions.entry(control).or_default().push(exception);
    }

    /// Folds the next entry's event (entries must come in ledger order; those
    /// outside the period are skipped).
    pub fn push(&mut self, event: &Event, sink: &mut dyn RowSink) {
        if event.ts < self.settings.from || event.ts >= self.settings.to {
            return;
        }
        match self.by_kind.get_mut(&event.draft.kind) {
            Some(count) => *count += 1,
            None => {
                self.by_kind.insert(event.draft.kind.clone(), 1);
            }
        }
        if event.draft.kind == KIND_KEY_ROTATED {
            let new_key = event.draft.data.get("new_key").and_then(|k| k.as_str()).unwrap_or_default().to_string();
            let cells = [
                event.seq.to_string(),
                event.draft.id.to_string(),
                event.ts.to_string(),
                new_key,
                event.draft.actor.sub.clone(),
            ];
            self.out.emit(sink, P_KEYS, event.seq, &cells);
            return;
        }
        if let Some(payload) = Payload::from_event(event) {
            self.workflow(event, payload, sink);
        } else if let Some(observation) = Observation::from_event(event) {
            self.observation(event, observation, sink);
        } else if let Some(control) = control_of(&event.draft.kind) {
            // A kind the report reads, in a form it cannot: the evidence has a hole the auditor must see.
            let detail = format!(
                "a {} entry (v{}) whose data is not the version 1 form this report reads: it is in no population",
                event.draft.kind, event.draft.v
            );
            self.exception(control, Exception { code: UNREADABLE, seq: event.seq, related: Vec::new(), detail });
        }
    }

    fn workflow(&mut self, event: &Event, payload: Payload, sink: &mut dyn RowSink) {
        let seq = event.seq;
        let id = event.draft.id.to_string();
        let time = event.ts.to_string();
        let actor = event.draft.actor.sub.clone();
        match payload {
            Payload::RequestCreated(d) => {
                self.count("requests");
                let requester = self.people.sub(&actor);
                self.requests.insert(id.clone(), RequestInfo { seq, requester, required: d.approvals_needed });
                let cells = [
                    seq.to_string(),
                    id,
                    time,
                    actor,
                    d.target.cluster,
                    d.target.namespace,
                    d.target.kind.to_string(),
                    d.target.names.join("; "),
                    d.target.access.to_string(),
                    d.duration_secs.to_string(),
                    d.reason,
                    opt(d.ticket.as_deref()),
                    yes(d.break_glass),
                    d.approvals_needed.to_string(),
                    d.basis.rule,
                    d.basis.policy_hash,
                ];
                self.out.emit(sink, P_REQUESTS, seq, &cells);
            }
            Payload::RequestApproved(d) | Payload::RequestDenied(d) => {
                let approved = event.draft.kind == crate::events::kind::REQUEST_APPROVED;
                self.count(if approved { "approvals" } else { "denials" });
                let request = self.requests.get(&d.request_id).map(|r| (r.seq, Arc::clone(&r.requester)));
                let self_approval = request.as_ref().is_some_and(|(_, requester)| **requester == *actor);
                if approved {
                    let approver = self.people.sub(&actor);
                    self.approvals.entry(d.request_id.clone()).or_default().push((seq, approver));
                    if self_approval {
                        let request_seq = request.as_ref().map(|r| r.0).unwrap_or_default();
                        self.exception(
                            "CC6.2",
                            Exception {
                                code: "self-approval",
                                seq,
                                related: vec![request_seq],
                                detail: format!("{actor} approved their own request {}", d.request_id),
                            },
                        );
                    }
                }
                let cells = [
                    seq.to_string(),
                    id,
                    time,
                    if approved { "approved" } else { "denied" }.into(),
                    d.request_id,
                    opt_num(request.as_ref().map(|r| r.0)),
                    opt(request.as_ref().map(|r| &*r.1)),
                    actor,
                    if request.is_some() { yes(self_approval) } else { String::new() },
                    opt(d.comment.as_deref()),
                    d.basis.rule,
                    d.basis.policy_hash,
                ];
                self.out.emit(sink, P_APPROVALS, seq, &cells);
            }
            Payload::GrantActivated(d) => self.grant_activated(event, d),
            Payload::GrantEnded(d) | Payload::GrantRevoked(d) | Payload::GrantExpired(d) => {
                let end_type = match event.draft.kind.as_str() {
                    crate::events::kind::GRANT_ENDED => "ended",
                    crate::events::kind::GRANT_REVOKED => "revoked",
                    _ => "expired",
                };
                self.count(match end_type {
                    "ended" => "grants_ended_early",
                    "revoked" => "grants_revoked",
                    _ => "grants_expired",
                });
                let grant_seq = self.grants.get(&d.grant_id).map(|grant| {
                    let row = &mut self.grant_rows[grant.row];
                    row.end.get_or_insert_with(|| (seq, end_type, time.clone().into_boxed_str()));
                    grant.seq
                });
                let cells = [
                    seq.to_string(),
                    id,
                    time,
                    end_type.into(),
                    d.grant_id,
                    opt_num(grant_seq),
                    actor,
                    opt(d.comment.as_deref()),
                ];
                self.out.emit(sink, P_ENDINGS, seq, &cells);
            }
            Payload::ExtensionRequested(d) => {
                let cells = [
                    seq.to_string(),
                    id.clone(),
                    time,
                    "requested".into(),
                    d.grant_id,
                    id,
                    actor,
                    d.duration_secs.to_string(),
                    String::new(),
                    d.reason,
                ];
                self.out.emit(sink, P_EXTENSIONS, seq, &cells);
            }
            Payload::ExtensionApproved(d) | Payload::ExtensionDenied(d) => {
                let approved = event.draft.kind == crate::events::kind::EXTENSION_APPROVED;
                let cells = [
                    seq.to_string(),
                    id,
                    time,
                    if approved { "approved" } else { "denied" }.into(),
                    d.grant_id,
                    d.extension_id,
                    actor,
                    String::new(),
                    String::new(),
                    opt(d.comment.as_deref()),
                ];
                self.out.emit(sink, P_EXTENSIONS, seq, &cells);
            }
            Payload::GrantExtended(d) => {
                if let Some(grant) = self.grants.get(&d.grant_id) {
                    self.grant_rows[grant.row].extended_end = Some(d.expires_at.clone().into_boxed_str());
                }
                let cells = [
                    seq.to_string(),
                    id,
                    time,
                    "extended".into(),
                    d.grant_id,
                    d.extension_id,
                    actor,
                    String::new(),
                    d.expires_at,
                    String::new(),
                ];
                self.out.emit(sink, P_EXTENSIONS, seq, &cells);
            }
            Payload::BreakGlassReviewed(d) => {
                self.count("break_glass_reviews");
                let review = (seq, self.people.sub(&actor), time, d.comment);
                let first_of_use = self.grants.get(&d.grant_id).is_some_and(|g| g.break_glass.is_some())
                    && !self.reviews.contains_key(&d.grant_id);
                if first_of_use {
                    self.reviews.insert(d.grant_id, review);
                } else {
                    self.late_reviews.push((seq, d.grant_id, review));
                }
            }
            Payload::PolicyLoaded(d) => {
                self.count("policy_changes");
                let distinct = match (&d.proposed_by, &d.approved_by) {
                    (Some(p), Some(a)) => p != a,
                    _ => false,
                };
                if distinct {
                    self.count("policy_changes_second_approver");
                }
                let cells = [
                    seq.to_string(),
                    id,
                    time,
                    "loaded".into(),
                    d.policy_hash,
                    actor,
                    opt(d.proposed_by.as_deref()),
                    opt(d.approved_by.as_deref()),
                    yes(distinct),
                ];
                self.out.emit(sink, P_POLICIES, seq, &cells);
            }
            Payload::PolicyProposed(d) => {
                let cells = [
                    seq.to_string(),
                    id,
                    time,
                    "proposed".into(),
                    d.policy_hash,
                    actor.clone(),
                    actor,
                    String::new(),
                    String::new(),
                ];
                self.out.emit(sink, P_POLICIES, seq, &cells);
            }
            Payload::CredentialIssued(_) | Payload::RequestCancelled(_) | Payload::RequestExpired(_) => {}
        }
    }

    fn grant_activated(&mut self, event: &Event, d: GrantActivated) {
        let seq = event.seq;
        let id = event.draft.id.to_string();
        let time = event.ts.to_string();
        self.count("grants");
        self.grant_times.push(event.ts);
        let evidence = self.grant_evidence(&d, seq);
        if d.break_glass {
            self.count("break_glass_uses");
        }
        let request_seq = self.requests.get(&d.request_id).map(|r| r.seq);
        let rbac: Vec<String> = d
            .rbac
            .iter()
            .map(|r| {
                format!(
                    "{} {} [{}] names=[{}]",
                    r.verbs.join(","),
                    r.resources.join(","),
                    r.api_groups.join(","),
                    r.resource_names.join(",")
                )
            })
            .collect();
        let names = d.target.names.join("; ");
        let encode = |cells: &[&str]| {
            let mut out = String::new();
            csv::fields(cells.iter().copied(), &mut out);
            out.into_boxed_str()
        };
        let row = PendingGrant {
            seq,
            head: encode(&[
                &seq.to_string(),
                &id,
                &time,
                &d.request_id,
                &opt_num(request_seq),
                &d.requester,
                &d.approvers.join("; "),
                &d.target.cluster,
                &d.target.namespace,
                &d.target.kind.to_string(),
                &names,
                &d.target.access.to_string(),
                &rbac.join("; "),
                &d.starts_at,
                &d.expires_at,
            ]),
            extended_end: None,
            middle: encode(&[&yes(d.break_glass), d.credential.as_deref().unwrap_or_default(), evidence]),
            end: None,
            removal: None,
            tail: encode(&[&d.basis.rule, &d.basis.policy_hash]),
        };
        let break_glass = d.break_glass.then(|| {
            Box::new(BreakGlassUse {
                grant_id: id.clone(),
                time,
                cluster: d.target.cluster.clone(),
                namespace: d.target.namespace.clone(),
                names,
                review_due: d.review_due.clone().unwrap_or_default(),
            })
        });
        let requester = self.people.sub(&d.requester);
        self.grants.insert(id, GrantInfo { seq, row: self.grant_rows.len(), requester, break_glass });
        self.grant_rows.push(row);
    }

    /// How the grant's approval is evidenced, recording an exception when it is missing.
    fn grant_evidence(&mut self, grant: &GrantActivated, seq: u64) -> &'static str {
        if grant.approvers.contains(&grant.requester) {
            self.exception(
                "CC6.2",
                Exception {
                    code: "self-approval",
                    seq,
                    related: Vec::new(),
                    detail: format!("grant names its requester {} among its approvers", grant.requester),
                },
            );
        }
        if grant.break_glass {
            return "break-glass";
        }
        let Some(request) = self.requests.get(&grant.request_id) else {
            return "before-period";
        };
        if request.required == 0 {
            return "auto-approved";
        }
        let recorded = self.approvals.get(&grant.request_id).map(Vec::as_slice).unwrap_or_default();
        let distinct: BTreeSet<&str> =
            recorded.iter().filter(|(_, a)| *a != request.requester).map(|(_, a)| &**a).collect();
        if distinct.len() < request.required as usize {
            let mut related = vec![request.seq];
            related.extend(recorded.iter().map(|(s, _)| *s));
            let detail = format!(
                "grant for request {} has {} distinct approval(s) by others than the requester recorded, {} required",
                grant.request_id,
                distinct.len(),
                request.required
            );
            self.exception("CC6.1", Exception { code: "grant-without-approval", seq, related, detail });
            return "missing";
        }
        "in-period"
    }

    fn observation(&mut self, event: &Event, observation: Observation, sink: &mut dyn RowSink) {
        let seq = event.seq;
        let id = event.draft.id.to_string();
        let time = event.ts.to_string();
        match observation {
            Observation::BindingRemoved(d) => {
                self.count("removals");
                self.latencies.push(d.latency_ms);
                let sla = self.settings.revoke_sla_ms;
                let within = d.latency_ms <= i64::try_from(sla).unwrap_or(i64::MAX);
                let grant_seq = self.grants.get(&d.grant_id).map(|grant| {
                    let row = &mut self.grant_rows[grant.row];
                    row.removal.get_or_insert_with(|| (seq, d.observed_at.clone().into_boxed_str(), d.latency_ms));
                    grant.seq
                });
                if within {
                    self.count("removals_within_sla");
                } else {
                    let detail = format!(
                        "access of grant {} in {}/{} was removed {} ms after it was due, over the SLA of {sla} ms",
                        d.grant_id, d.cluster, d.namespace, d.latency_ms
                    );
                    let related = grant_seq.into_iter().collect();
                    self.exception("CC6.3", Exception { code: "removal-late", seq, related, detail });
                }
                let cells = [
                    seq.to_string(),
                    id,
                    time,
                    d.grant_id,
                    opt_num(grant_seq),
                    d.cluster,
                    d.namespace,
                    d.name,
                    d.cause,
                    d.due_at,
                    d.observed_at,
                    d.latency_ms.to_string(),
                    sla.to_string(),
                    yes(within),
                ];
                self.out.emit(sink, P_REMOVALS, seq, &cells);
            }
            Observation::Drift(d) => {
                self.count("drift_findings");
                let cells = [
                    seq.to_string(),
                    id,
                    time,
                    format!("drift-{}", d.action),
                    d.cluster,
                    d.namespace,
                    d.object_kind,
                    d.name,
                    opt(d.grant_id.as_deref()),
                    String::new(),
                    String::new(),
                    d.detail,
                ];
                self.out.emit(sink, P_FINDINGS, seq, &cells);
            }
            Observation::StandingAccess(d) => {
                for found in &d.found {
                    self.count("standing_access_found");
                    let cells = [
                        seq.to_string(),
                        id.clone(),
                        time.clone(),
                        "standing-found".into(),
                        d.cluster.clone(),
                        found.namespace.clone(),
                        found.binding_kind.clone(),
                        found.name.clone(),
                        String::new(),
                        found.role.clone(),
                        found.subjects.join("; "),
                        format!("can edit {}", found.kinds.join(", ")),
                    ];
                    self.out.emit(sink, P_FINDINGS, seq, &cells);
                }
                for gone in &d.gone {
                    let mut cells: [String; 12] = Default::default();
                    cells[0] = seq.to_string();
                    cells[1] = id.clone();
                    cells[2] = time.clone();
                    cells[3] = "standing-gone".into();
                    cells[4] = d.cluster.clone();
                    cells[7] = gone.clone();
                    self.out.emit(sink, P_FINDINGS, seq, &cells);
                }
            }
            Observation::RouteChanged(d) => {
                self.count("route_changes");
                let covered = !d.grants.is_empty();
                if covered {
                    self.count("route_changes_covered");
                } else {
                    let detail = format!(
                        "{} {}/{}/{} was {} while no grant covered it (field managers: {})",
                        d.kind,
                        d.cluster,
                        d.namespace,
                        d.name,
                        d.change,
                        d.managers.iter().map(|m| m.manager.as_str()).collect::<Vec<_>>().join(", ")
                    );
                    let exception = Exception { code: "route-change-without-grant", seq, related: Vec::new(), detail };
                    self.exception("CC8.1", exception);
                }
                let cells = [
                    seq.to_string(),
                    id,
                    time,
                    d.cluster,
                    d.namespace,
                    d.kind,
                    d.name,
                    d.change,
                    d.resource_version,
                    d.diff.iter().map(|c| c.path.as_str()).collect::<Vec<_>>().join("; "),
                    d.managers
                        .iter()
                        .map(|m| format!("{} ({})", m.manager, m.operation))
                        .collect::<Vec<_>>()
                        .join("; "),
                    d.grants.join("; "),
                    yes(covered),
                ];
                self.out.emit(sink, P_ROUTES, seq, &cells);
            }
            Observation::BindingApplied(_) | Observation::Leader(_) => {}
        }
    }

    /// Emits the rows later entries completed (grants, break-glass uses and
    /// their reviews) and computes the controls and charts.
    pub fn finish(mut self, ledger: LedgerFacts, sink: &mut dyn RowSink) -> Report {
        // Break-glass: every use in the period, in ledger order, with its review; then reviews of earlier uses.
        let grants = std::mem::take(&mut self.grants);
        let mut uses: Vec<&GrantInfo> = grants.values().filter(|g| g.break_glass.is_some()).collect();
        uses.sort_by_key(|g| g.seq);
        for grant in uses {
            let Some(info) = grant.break_glass.as_deref() else { continue };
            let review = self.reviews.get(&info.grant_id);
            if review.is_none() {
                let detail = format!(
                    "break-glass grant {} of {} has no review recorded in the period",
                    info.grant_id, grant.requester
                );
                let exception =
                    Exception { code: "break-glass-unreviewed", seq: grant.seq, related: Vec::new(), detail };
                self.exceptions.entry("CC7.2").or_default().push(exception);
            }
            let cells = [
                grant.seq.to_string(),
                info.grant_id.clone(),
                info.time.clone(),
                grant.requester.to_string(),
                info.cluster.clone(),
                info.namespace.clone(),
                info.names.clone(),
                info.review_due.clone(),
                opt_num(review.map(|r| r.0)),
                opt(review.map(|r| &*r.1)),
                opt(review.map(|r| r.2.as_str())),
                opt(review.map(|r| r.3.as_str())),
                yes(review.is_some()),
            ];
            self.out.emit(sink, P_BREAK_GLASS, grant.seq, &cells);
        }
        for (seq, grant_id, (_, reviewer, time, comment)) in std::mem::take(&mut self.late_reviews) {
            let mut cells: [String; 13] = Default::default();
            cells[0] = seq.to_string();
            cells[1] = grant_id;
            cells[2] = time.clone();
            cells[8] = seq.to_string();
            cells[9] = reviewer.to_string();
            cells[10] = time;
            cells[11] = comment;
            cells[12] = "true".into();
            self.out.emit(sink, P_BREAK_GLASS, seq, &cells);
        }
        let mut record = String::new();
        for row in &self.grant_rows {
            row.record(&mut record);
            self.out.counts[P_GRANTS] += 1;
            sink.row(P_GRANTS, row.seq, &record);
        }

        let populations = POPULATIONS
            .iter()
            .zip(self.out.counts)
            .map(|((name, title, definition, columns), rows)| Population { name, title, definition, columns, rows })
            .collect();
        let controls = controls(&self.figures, &mut self.exceptions, &self.latencies, &self.settings);
        Report {
            grants_over_time: grants_over_time(&self.grant_times, &self.settings),
            time_to_revoke: time_to_revoke(&self.latencies, self.settings.revoke_sla_ms),
            settings: self.settings,
            ledger,
            populations,
            controls,
            events_by_kind: self.by_kind.into_iter().collect(),
        }
    }
}

fn percentile(sorted: &[i64], percent: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank: the smallest value with at least `percent`% of values at or below it.
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

fn controls(
    figures: &BTreeMap<&'static str, i64>,
    exceptions: &mut BTreeMap<&'static str, Vec<Exception>>,
    latencies: &[i64],
    settings: &Settings,
) -> Vec<Control> {
    let get = |key: &str| Some(figures.get(key).copied().unwrap_or(0));
    let fig = |key: &'static str, label: &'static str, value: Option<i64>| Figure { key, label, value, unit: "count" };
    let ms = |key: &'static str, label: &'static str, value: Option<i64>| Figure { key, label, value, unit: "ms" };
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    // Each control's exceptions in ledger order.
    let mut take = |id: &str| {
        let mut list = exceptions.remove(id).unwrap_or_default();
        list.sort_by_key(|e| e.seq);
        list
    };
    let count_of = |list: &[Exception]| Some(list.iter().filter(|e| e.code != UNREADABLE).count() as i64);
    let unreadable = |list: &[Exception]| {
        let count = list.iter().filter(|e| e.code == UNREADABLE).count() as i64;
        fig("unreadable_events", "Entries of its kinds in a form not read (exception unreadable-event)", Some(count))
    };
    let cc61 = take("CC6.1");
    let cc62 = take("CC6.2");
    let cc63 = take("CC6.3");
    let cc72 = take("CC7.2");
    let cc81 = take("CC8.1");
    vec![
        Control {
            id: "CC6.1",
            title: "Logical access is restricted to approved, time-bound grants",
            test: "Every grant.activated that is not break-glass and whose request needs approvals must be preceded, in the period, by request.approved entries for its request from at least approvals_required distinct subjects other than the requester; else exception grant-without-approval. Grants whose request.created precedes the period are counted, not tested. An entry of a kind it reads whose data is not in that version 1 form is exception unreadable-event.",
            populations: &["access_requests", "grants", "approvals"],
            figures: vec![
                fig("requests", "Access requests", get("requests")),
                fig("grants", "Grants activated", get("grants")),
                unreadable(&cc61),
                fig("exceptions", "Grants without a matching approval", count_of(&cc61)),
            ],
            exceptions: cc61,
        },
        Control {
            id: "CC6.2",
            title: "Access is authorized by someone other than the requester",
            test: "A request.approved whose approver is the requester of the request (when the request is earlier in the period), or a grant.activated listing its requester among its approvers, is exception self-approval. An entry of a kind it reads whose data is not in that version 1 form is exception unreadable-event.",
            populations: &["approvals", "grants"],
            figures: vec![
                fig("approvals", "Approvals", get("approvals")),
                fig("denials", "Denials", get("denials")),
                unreadable(&cc62),
                fig("exceptions", "Approvals by the requester", count_of(&cc62)),
            ],
            exceptions: cc62,
        },
        Control {
            id: "CC6.3",
            title: "Access is removed when it ends",
            test: "Every binding.removed whose time_to_revoke_ms (latency_ms) exceeds the SLA in the manifest is exception removal-late. Percentiles are nearest-rank over the removals of the period. An entry of a kind it reads whose data is not in that version 1 form is exception unreadable-event.",
            populations: &["removals", "grant_endings", "grants"],
            figures: vec![
                fig("grants_ended_early", "Grants ended early", get("grants_ended_early")),
                fig("grants_revoked", "Grants revoked", get("grants_revoked")),
                fig("grants_expired", "Grants expired", get("grants_expired")),
                fig("removals", "Access removals observed", get("removals")),
                fig("removals_within_sla", "Removals within the SLA", get("removals_within_sla")),
                ms("revoke_sla_ms", "SLA", Some(i64::try_from(settings.revoke_sla_ms).unwrap_or(i64::MAX))),
                ms("time_to_revoke_p50_ms", "Time to revoke, median", percentile(&sorted, 50)),
                ms("time_to_revoke_p95_ms", "Time to revoke, 95th percentile", percentile(&sorted, 95)),
                ms("time_to_revoke_max_ms", "Time to revoke, maximum", sorted.last().copied()),
                unreadable(&cc63),
                fig("exceptions", "Removals later than the SLA", count_of(&cc63)),
            ],
            exceptions: cc63,
        },
        Control {
            id: "CC7.2",
            title: "Anomalies are detected and reviewed",
            test: "Every break-glass grant.activated in the period without a grant.break_glass_reviewed for it in the period is exception break-glass-unreviewed. Drift repaired and standing access found are counted. An entry of a kind it reads whose data is not in that version 1 form is exception unreadable-event.",
            populations: &["break_glass", "cluster_findings"],
            figures: vec![
                fig("break_glass_uses", "Break-glass uses", get("break_glass_uses")),
                fig("break_glass_reviews", "Break-glass reviews", get("break_glass_reviews")),
                fig("drift_findings", "Drift findings (restored or removed)", get("drift_findings")),
                fig("standing_access_found", "Standing access bindings found", get("standing_access_found")),
                unreadable(&cc72),
                fig("exceptions", "Break-glass uses without review", count_of(&cc72)),
            ],
            exceptions: cc72,
        },
        Control {
            id: "CC8.1",
            title: "Changes to routes and to the policy are authorized",
            test: "Every route.changed whose recorded covering grants are empty is exception route-change-without-grant. Policy changes are counted with whether a second admin approved them. An entry of a kind it reads whose data is not in that version 1 form is exception unreadable-event.",
            populations: &["route_changes", "policy_changes", "key_rotations"],
            figures: vec![
                fig("route_changes", "Ingress and route changes", get("route_changes")),
                fig("route_changes_covered", "Changes covered by a grant", get("route_changes_covered")),
                fig("policy_changes", "Policies put in force", get("policy_changes")),
                fig(
                    "policy_changes_second_approver",
                    "Policies approved by a second admin",
                    get("policy_changes_second_approver"),
                ),
                unreadable(&cc81),
                fig("exceptions", "Changes while no grant covered the route", count_of(&cc81)),
            ],
            exceptions: cc81,
        },
    ]
}

const MICROS_PER_SECOND: i64 = 1_000_000;

fn ceil_div(a: i64, b: i64) -> i64 {
    if a <= 0 { 0 } else { (a + b - 1) / b }
}

fn grants_over_time(times: &[Timestamp], settings: &Settings) -> Vec<Bar> {
    let span = settings.to.unix_micros() - settings.from.unix_micros();
    let units: [(i64, usize); 6] = [
        (MICROS_PER_SECOND, 19),
        (60 * MICROS_PER_SECOND, 16),
        (3_600 * MICROS_PER_SECOND, 13),
        (86_400 * MICROS_PER_SECOND, 10),
        (7 * 86_400 * MICROS_PER_SECOND, 10),
        (30 * 86_400 * MICROS_PER_SECOND, 10),
    ];
    let (unit, label_len) =
        units.iter().copied().find(|(unit, _)| ceil_div(span, *unit) <= 60).unwrap_or((ceil_div(span, 60).max(1), 10));
    let buckets = ceil_div(span, unit).max(1) as usize;
    let mut counts = vec![0u64; buckets];
    for t in times {
        let index = ((t.unix_micros() - settings.from.unix_micros()) / unit) as usize;
        if let Some(c) = counts.get_mut(index) {
            *c += 1;
        }
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, count)| {
            let start = Timestamp::from_unix_micros(settings.from.unix_micros() + i as i64 * unit)
                .map(|t| t.to_string())
                .unwrap_or_default();
            Bar { label: start[..label_len.min(start.len())].to_string(), count }
        })
        .collect()
}

fn time_to_revoke(latencies: &[i64], sla: u64) -> Vec<Bar> {
    let sla = i64::try_from(sla).unwrap_or(i64::MAX);
    let mut bounds: Vec<i64> = vec![0, 100, 250, 500, 1_000, 2_000, 5_000, 30_000];
    if !bounds.contains(&sla) {
        bounds.push(sla);
        bounds.sort_unstable();
    }
    let mut bars: Vec<Bar> = Vec::new();
    let mut lower: Option<i64> = None;
    for bound in &bounds {
        let label = match lower {
            None => format!("<= {bound} ms"),
            Some(low) => format!("{}-{bound} ms", low + 1),
        };
        let count = latencies.iter().filter(|l| **l <= *bound && lower.is_none_or(|low| **l > low)).count() as u64;
        bars.push(Bar { label, count });
        lower = Some(*bound);
    }
    let last = *bounds.last().unwrap_or(&0);
    bars.push(Bar { label: format!("> {last} ms"), count: latencies.iter().filter(|l| **l > last).count() as u64 });
    bars
}
