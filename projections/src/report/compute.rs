//! The populations and controls of a period, from its events. Each
//! population's `definition` is the exact rule below in words; the manifest
//! carries it, and the verifier recomputes every row with this code.

use super::{Bar, Control, Exception, Figure, LedgerFacts, Population, Report, Row, Settings};
use crate::cluster::Observation;
use crate::events::{GrantActivated, Payload};
use portcullis_format::event::{Event, KIND_KEY_ROTATED};
use portcullis_format::time::Timestamp;
use std::collections::{BTreeMap, BTreeSet};

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
        "Every request.approved and request.denied (v1) entry in the period, in ledger order; request_seq and requester come from the request.created entry of request_id when it is in the bundle (else empty); approver_is_requester is true when the approver's subject equals that requester.",
        APPROVALS,
    ),
    (
        "grants",
        "Grants",
        "Every grant.activated (v1) entry in the period, in ledger order; extended_end_time is the last grant.extended expires_at for it in the period; end_* is its first grant.ended, grant.revoked or grant.expired in the period; removal_* and time_to_revoke_ms are from its first binding.removed in the period (latency_ms); approval_evidence is break-glass, auto-approved (0 approvals required), in-period (request.created in the period), or before-period.",
        GRANTS,
    ),
    (
        "grant_endings",
        "Early ends, revocations and expiries",
        "Every grant.ended (end_type ended), grant.revoked (revoked) and grant.expired (expired) v1 entry in the period, in ledger order; grant_seq is the grant.activated entry when it is in the bundle.",
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
        "One row per grant.activated (v1) entry in the period with break_glass true, with its first grant.break_glass_reviewed in the period (reviewed true/false); then one row per grant.break_glass_reviewed in the period whose grant was activated before the period.",
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

struct Builder {
    rows: BTreeMap<&'static str, Vec<Row>>,
}

impl Builder {
    fn push(&mut self, population: &'static str, seq: u64, cells: Vec<String>) {
        self.rows.entry(population).or_default().push(Row::new(seq, cells.iter().map(String::as_str)));
    }
}

struct GrantInfo {
    seq: u64,
    row: usize,
    requester: String,
    break_glass: bool,
}

/// Computes the report over `events` (the bundle's entries, boundaries included; only those in the period count).
pub fn report(events: &[Event], settings: &Settings, ledger: LedgerFacts) -> Report {
    let in_period: Vec<&Event> = events.iter().filter(|e| e.ts >= settings.from && e.ts < settings.to).collect();
    let mut b = Builder { rows: BTreeMap::new() };
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    // request id -> (seq, requester, approvals required, break glass)
    let mut requests: BTreeMap<String, (u64, String, u32)> = BTreeMap::new();
    // request id -> [(seq, approver)]
    let mut approvals: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    let mut grants: BTreeMap<String, GrantInfo> = BTreeMap::new();
    let mut grant_rows: Vec<Vec<String>> = Vec::new();
    let mut grant_seqs: Vec<u64> = Vec::new();
    let mut reviews: BTreeMap<String, (u64, String, String, String)> = BTreeMap::new();
    let mut late_reviews: Vec<(u64, String, String, String, String)> = Vec::new();
    let mut latencies: Vec<i64> = Vec::new();
    let mut exceptions: BTreeMap<&'static str, Vec<Exception>> = BTreeMap::new();
    let mut figures: BTreeMap<&'static str, i64> = BTreeMap::new();
    let mut count = |key: &'static str| *figures.entry(key).or_insert(0) += 1;
    let mut grant_times: Vec<Timestamp> = Vec::new();

    for event in &in_period {
        *by_kind.entry(event.draft.kind.clone()).or_insert(0) += 1;
        let seq = event.seq;
        let id = event.draft.id.to_string();
        let time = event.ts.to_string();
        let actor = event.draft.actor.sub.clone();
        if event.draft.kind == KIND_KEY_ROTATED {
            let new_key = event.draft.data.get("new_key").and_then(|k| k.as_str()).unwrap_or_default().to_string();
            b.push("key_rotations", seq, vec![seq.to_string(), id, time, new_key, actor]);
            continue;
        }
        if let Some(payload) = Payload::from_event(event) {
            match payload {
                Payload::RequestCreated(d) => {
                    count("requests");
                    requests.insert(id.clone(), (seq, actor.clone(), d.approvals_needed));
                    b.push(
                        "access_requests",
                        seq,
                        vec![
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
                        ],
                    );
                }
                Payload::RequestApproved(d) | Payload::RequestDenied(d) => {
                    let approved = event.draft.kind == crate::events::kind::REQUEST_APPROVED;
                    count(if approved { "approvals" } else { "denials" });
                    let request = requests.get(&d.request_id);
                    let self_approval = request.is_some_and(|(_, requester, _)| *requester == actor);
                    if approved {
                        approvals.entry(d.request_id.clone()).or_default().push((seq, actor.clone()));
                        if self_approval {
                            let request_seq = request.map(|r| r.0).unwrap_or_default();
                            exceptions.entry("CC6.2").or_default().push(Exception {
                                code: "self-approval",
                                seq,
                                related: vec![request_seq],
                                detail: format!("{actor} approved their own request {}", d.request_id),
                            });
                        }
                    }
                    b.push(
                        "approvals",
                        seq,
                        vec![
                            seq.to_string(),
                            id,
                            time,
                            if approved { "approved" } else { "denied" }.into(),
                            d.request_id.clone(),
                            opt_num(request.map(|r| r.0)),
                            opt(request.map(|r| r.1.as_str())),
                            actor,
                            if request.is_some() { yes(self_approval) } else { String::new() },
                            opt(d.comment.as_deref()),
                            d.basis.rule,
                            d.basis.policy_hash,
                        ],
                    );
                }
                Payload::GrantActivated(d) => {
                    count("grants");
                    grant_times.push(event.ts);
                    let evidence = grant_evidence(&d, seq, &requests, &approvals, &mut exceptions);
                    if d.break_glass {
                        count("break_glass_uses");
                    }
                    let request_seq = requests.get(&d.request_id).map(|r| r.0);
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
                    grants.insert(
                        id.clone(),
                        GrantInfo {
                            seq,
                            row: grant_rows.len(),
                            requester: d.requester.clone(),
                            break_glass: d.break_glass,
                        },
                    );
                    grant_seqs.push(seq);
                    grant_rows.push(vec![
                        seq.to_string(),
                        id,
                        time,
                        d.request_id.clone(),
                        opt_num(request_seq),
                        d.requester.clone(),
                        d.approvers.join("; "),
                        d.target.cluster.clone(),
                        d.target.namespace.clone(),
                        d.target.kind.to_string(),
                        d.target.names.join("; "),
                        d.target.access.to_string(),
                        rbac.join("; "),
                        d.starts_at.clone(),
                        d.expires_at.clone(),
                        String::new(),
                        yes(d.break_glass),
                        opt(d.credential.as_deref()),
                        evidence.into(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        d.basis.rule.clone(),
                        d.basis.policy_hash.clone(),
                    ]);
                }
                Payload::GrantEnded(d) | Payload::GrantRevoked(d) | Payload::GrantExpired(d) => {
                    let end_type = match event.draft.kind.as_str() {
                        crate::events::kind::GRANT_ENDED => "ended",
                        crate::events::kind::GRANT_REVOKED => "revoked",
                        _ => "expired",
                    };
                    count(match end_type {
                        "ended" => "grants_ended_early",
                        "revoked" => "grants_revoked",
                        _ => "grants_expired",
                    });
                    let grant = grants.get(&d.grant_id);
                    if let Some(grant) = grant {
                        let row = &mut grant_rows[grant.row];
                        if row[19].is_empty() {
                            row[19] = seq.to_string();
                            row[20] = end_type.into();
                            row[21] = time.clone();
                        }
                    }
                    b.push(
                        "grant_endings",
                        seq,
                        vec![
                            seq.to_string(),
                            id,
                            time,
                            end_type.into(),
                            d.grant_id.clone(),
                            opt_num(grant.map(|g| g.seq)),
                            actor,
                            opt(d.comment.as_deref()),
                        ],
                    );
                }
                Payload::ExtensionRequested(d) => b.push(
                    "extensions",
                    seq,
                    vec![
                        seq.to_string(),
                        id,
                        time,
                        "requested".into(),
                        d.grant_id,
                        event.draft.id.to_string(),
                        actor,
                        d.duration_secs.to_string(),
                        String::new(),
                        d.reason,
                    ],
                ),
                Payload::ExtensionApproved(d) | Payload::ExtensionDenied(d) => {
                    let approved = event.draft.kind == crate::events::kind::EXTENSION_APPROVED;
                    b.push(
                        "extensions",
                        seq,
                        vec![
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
                        ],
                    );
                }
                Payload::GrantExtended(d) => {
                    if let Some(grant) = grants.get(&d.grant_id) {
                        grant_rows[grant.row][15] = d.expires_at.clone();
                    }
                    b.push(
                        "extensions",
                        seq,
                        vec![
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
                        ],
                    );
                }
                Payload::BreakGlassReviewed(d) => {
                    count("break_glass_reviews");
                    match grants.get(&d.grant_id) {
                        Some(_) => {
                            reviews.entry(d.grant_id.clone()).or_insert((seq, actor, time, d.comment));
                        }
                        None => late_reviews.push((seq, d.grant_id, actor, time, d.comment)),
                    }
                }
                Payload::PolicyLoaded(d) => {
                    count("policy_changes");
                    let distinct = match (&d.proposed_by, &d.approved_by) {
                        (Some(p), Some(a)) => p != a,
                        _ => false,
                    };
                    if distinct {
                        count("policy_changes_second_approver");
                    }
                    b.push(
                        "policy_changes",
                        seq,
                        vec![
                            seq.to_string(),
                            id,
                            time,
                            "loaded".into(),
                            d.policy_hash,
                            actor,
                            opt(d.proposed_by.as_deref()),
                            opt(d.approved_by.as_deref()),
                            yes(distinct),
                        ],
                    );
                }
                Payload::PolicyProposed(d) => b.push(
                    "policy_changes",
                    seq,
                    vec![
                        seq.to_string(),
                        id,
                        time,
                        "proposed".into(),
                        d.policy_hash,
                        actor.clone(),
                        actor,
                        String::new(),
                        String::new(),
                    ],
                ),
                Payload::CredentialIssued(_) | Payload::RequestCancelled(_) | Payload::RequestExpired(_) => {}
            }
            continue;
        }
        let Some(observation) = Observation::from_event(event) else { continue };
        match observation {
            Observation::BindingRemoved(d) => {
                count("removals");
                latencies.push(d.latency_ms);
                let within = d.latency_ms <= i64::try_from(settings.revoke_sla_ms).unwrap_or(i64::MAX);
                if within {
                    count("removals_within_sla");
                } else {
                    exceptions.entry("CC6.3").or_default().push(Exception {
                        code: "removal-late",
                        seq,
                        related: grants.get(&d.grant_id).map(|g| vec![g.seq]).unwrap_or_default(),
                        detail: format!(
                            "access of grant {} in {}/{} was removed {} ms after it was due, over the SLA of {} ms",
                            d.grant_id, d.cluster, d.namespace, d.latency_ms, settings.revoke_sla_ms
                        ),
                    });
                }
                let grant = grants.get(&d.grant_id);
                if let Some(grant) = grant {
                    let row = &mut grant_rows[grant.row];
                    if row[22].is_empty() {
                        row[22] = seq.to_string();
                        row[23] = d.observed_at.clone();
                        row[24] = d.latency_ms.to_string();
                    }
                }
                b.push(
                    "removals",
                    seq,
                    vec![
                        seq.to_string(),
                        id,
                        time,
                        d.grant_id.clone(),
                        opt_num(grant.map(|g| g.seq)),
                        d.cluster,
                        d.namespace,
                        d.name,
                        d.cause,
                        d.due_at,
                        d.observed_at,
                        d.latency_ms.to_string(),
                        settings.revoke_sla_ms.to_string(),
                        yes(within),
                    ],
                );
            }
            Observation::Drift(d) => {
                count("drift_findings");
                b.push(
                    "cluster_findings",
                    seq,
                    vec![
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
                    ],
                );
            }
            Observation::StandingAccess(d) => {
                for found in &d.found {
                    count("standing_access_found");
                    b.push(
                        "cluster_findings",
                        seq,
                        vec![
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
                        ],
                    );
                }
                for gone in &d.gone {
                    b.push(
                        "cluster_findings",
                        seq,
                        vec![
                            seq.to_string(),
                            id.clone(),
                            time.clone(),
                            "standing-gone".into(),
                            d.cluster.clone(),
                            String::new(),
                            String::new(),
                            gone.clone(),
                            String::new(),
                            String::new(),
                            String::new(),
                            String::new(),
                        ],
                    );
                }
            }
            Observation::RouteChanged(d) => {
                count("route_changes");
                let covered = !d.grants.is_empty();
                if covered {
                    count("route_changes_covered");
                } else {
                    exceptions.entry("CC8.1").or_default().push(Exception {
                        code: "route-change-without-grant",
                        seq,
                        related: Vec::new(),
                        detail: format!(
                            "{} {}/{}/{} was {} while no grant covered it (field managers: {})",
                            d.kind,
                            d.cluster,
                            d.namespace,
                            d.name,
                            d.change,
                            d.managers.iter().map(|m| m.manager.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                b.push(
                    "route_changes",
                    seq,
                    vec![
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
                    ],
                );
            }
            Observation::BindingApplied(_) | Observation::Leader(_) => {}
        }
    }

    // Break-glass: every use in the period, with its review; then reviews of earlier uses.
    let mut grant_list: Vec<(&String, &GrantInfo)> = grants.iter().collect();
    grant_list.sort_by_key(|(_, g)| g.seq);
    for (grant_id, grant) in grant_list.iter().filter(|(_, g)| g.break_glass) {
        let row = &grant_rows[grant.row];
        let review = reviews.get(*grant_id);
        if review.is_none() {
            exceptions.entry("CC7.2").or_default().push(Exception {
                code: "break-glass-unreviewed",
                seq: grant.seq,
                related: Vec::new(),
                detail: format!(
                    "break-glass grant {grant_id} of {} has no review recorded in the period",
                    grant.requester
                ),
            });
        }
        let review_due = grant_review_due(events, grant.seq);
        b.push(
            "break_glass",
            grant.seq,
            vec![
                grant.seq.to_string(),
                (*grant_id).clone(),
                row[2].clone(),
                grant.requester.clone(),
                row[7].clone(),
                row[8].clone(),
                row[10].clone(),
                review_due,
                opt_num(review.map(|r| r.0)),
                opt(review.map(|r| r.1.as_str())),
                opt(review.map(|r| r.2.as_str())),
                opt(review.map(|r| r.3.as_str())),
                yes(review.is_some()),
            ],
        );
    }
    for (seq, grant_id, reviewer, time, comment) in late_reviews {
        b.push(
            "break_glass",
            seq,
            vec![
                String::new(),
                grant_id,
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                seq.to_string(),
                reviewer,
                time,
                comment,
                "true".into(),
            ],
        );
    }
    for (row, seq) in grant_rows.into_iter().zip(grant_seqs) {
        b.push("grants", seq, row);
    }

    let populations = POPULATIONS
        .iter()
        .map(|(name, title, definition, columns)| Population {
            name,
            title,
            definition,
            columns,
            rows: b.rows.remove(name).unwrap_or_default(),
        })
        .collect();
    let controls = controls(&figures, &mut exceptions, &latencies, settings);
    Report {
        settings: settings.clone(),
        ledger,
        populations,
        controls,
        events_by_kind: by_kind.into_iter().collect(),
        grants_over_time: grants_over_time(&grant_times, settings),
        time_to_revoke: time_to_revoke(&latencies, settings.revoke_sla_ms),
    }
}

/// The `review_due` of the grant activated at `seq` (for the break-glass population).
fn grant_review_due(events: &[Event], seq: u64) -> String {
    events
        .iter()
        .find(|e| e.seq == seq)
        .and_then(Payload::from_event)
        .and_then(|p| match p {
            Payload::GrantActivated(d) => d.review_due,
            _ => None,
        })
        .unwrap_or_default()
}

/// How the grant's approval is evidenced, recording an exception when it is missing.
fn grant_evidence(
    grant: &GrantActivated,
    seq: u64,
    requests: &BTreeMap<String, (u64, String, u32)>,
    approvals: &BTreeMap<String, Vec<(u64, String)>>,
    exceptions: &mut BTreeMap<&'static str, Vec<Exception>>,
) -> &'static str {
    if grant.approvers.contains(&grant.requester) {
        exceptions.entry("CC6.2").or_default().push(Exception {
            code: "self-approval",
            seq,
            related: Vec::new(),
            detail: format!("grant names its requester {} among its approvers", grant.requester),
        });
    }
    if grant.break_glass {
        return "break-glass";
    }
    let Some((request_seq, requester, required)) = requests.get(&grant.request_id) else {
        return "before-period";
    };
    if *required == 0 {
        return "auto-approved";
    }
    let recorded = approvals.get(&grant.request_id).map(Vec::as_slice).unwrap_or_default();
    let distinct: BTreeSet<&str> = recorded.iter().filter(|(_, a)| a != requester).map(|(_, a)| a.as_str()).collect();
    if distinct.len() < *required as usize {
        let mut related = vec![*request_seq];
        related.extend(recorded.iter().map(|(s, _)| *s));
        exceptions.entry("CC6.1").or_default().push(Exception {
            code: "grant-without-approval",
            seq,
            related,
            detail: format!(
                "grant for request {} has {} distinct approval(s) by others than the requester recorded, {} required",
                grant.request_id,
                distinct.len(),
                required
            ),
        });
        return "missing";
    }
    "in-period"
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
    let mut take = |id: &str| exceptions.remove(id).unwrap_or_default();
    let count_of = |list: &[Exception]| Some(list.len() as i64);
    let cc61 = take("CC6.1");
    let cc62 = take("CC6.2");
    let cc63 = take("CC6.3");
    let cc72 = take("CC7.2");
    let cc81 = take("CC8.1");
    vec![
        Control {
            id: "CC6.1",
            title: "Logical access is restricted to approved, time-bound grants",
            test: "Every grant.activated that is not break-glass and whose request needs approvals must be preceded, in the period, by request.approved entries for its request from at least approvals_required distinct subjects other than the requester; else exception grant-without-approval. Grants whose request.created precedes the period are counted, not tested.",
            populations: &["access_requests", "grants", "approvals"],
            figures: vec![
                fig("requests", "Access requests", get("requests")),
                fig("grants", "Grants activated", get("grants")),
                fig("exceptions", "Grants without a matching approval", count_of(&cc61)),
            ],
            exceptions: cc61,
        },
        Control {
            id: "CC6.2",
            title: "Access is authorized by someone other than the requester",
            test: "A request.approved whose approver is the requester of the request (when the request is in the bundle), or a grant.activated listing its requester among its approvers, is exception self-approval.",
            populations: &["approvals", "grants"],
            figures: vec![
                fig("approvals", "Approvals", get("approvals")),
                fig("denials", "Denials", get("denials")),
                fig("exceptions", "Approvals by the requester", count_of(&cc62)),
            ],
            exceptions: cc62,
        },
        Control {
            id: "CC6.3",
            title: "Access is removed when it ends",
            test: "Every binding.removed whose time_to_revoke_ms (latency_ms) exceeds the SLA in the manifest is exception removal-late. Percentiles are nearest-rank over the removals of the period.",
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
                fig("exceptions", "Removals later than the SLA", count_of(&cc63)),
            ],
            exceptions: cc63,
        },
        Control {
            id: "CC7.2",
            title: "Anomalies are detected and reviewed",
            test: "Every break-glass grant.activated in the period without a grant.break_glass_reviewed for it in the period is exception break-glass-unreviewed. Drift repaired and standing access found are counted.",
            populations: &["break_glass", "cluster_findings"],
            figures: vec![
                fig("break_glass_uses", "Break-glass uses", get("break_glass_uses")),
                fig("break_glass_reviews", "Break-glass reviews", get("break_glass_reviews")),
                fig("drift_findings", "Drift findings repaired", get("drift_findings")),
                fig("standing_access_found", "Standing access bindings found", get("standing_access_found")),
                fig("exceptions", "Break-glass uses without review", count_of(&cc72)),
            ],
            exceptions: cc72,
        },
        Control {
            id: "CC8.1",
            title: "Changes to routes and to the policy are authorized",
            test: "Every route.changed whose recorded covering grants are empty is exception route-change-without-grant. Policy changes are counted with whether a second admin approved them.",
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
        (MICROS_PER_SECOND, 20),
        (60 * MICROS_PER_SECOND, 17),
        (3_600 * MICROS_PER_SECOND, 14),
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
