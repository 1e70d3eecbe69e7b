//! What the reconciler observed in the clusters, as events (version 1), and
//! the fold of them it resumes from after a restart or a change of leader:
//! which grants' bindings were applied and removed, the last recorded version
//! of every watched route, and the standing access last reported.

use portcullis_format::event::{Actor, Event, EventDraft, EventId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Event kinds of the reconciler, version 1.
pub mod kind {
    pub const BINDING_APPLIED: &str = "binding.applied";
    pub const BINDING_REMOVED: &str = "binding.removed";
    pub const DRIFT: &str = "cluster.drift";
    pub const STANDING_ACCESS: &str = "cluster.standing_access";
    pub const ROUTE_CHANGED: &str = "route.changed";
    pub const LEADER: &str = "reconciler.leader";
}

/// A grant's Role and RoleBinding as the API server accepted them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingApplied {
    pub grant_id: String,
    pub cluster: String,
    pub namespace: String,
    /// The name of both the Role and the RoleBinding.
    pub name: String,
    pub subject: String,
    pub expires_at: String,
    pub resource_version: String,
    pub observed_at: String,
}

/// A grant's Role and RoleBinding gone from the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingRemoved {
    pub grant_id: String,
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    /// `expired`, `ended`, `revoked`, or `absent` (found already gone).
    pub cause: String,
    /// When access was due to end: the expiry, or the time of the end or revocation.
    pub due_at: String,
    pub observed_at: String,
    /// `observed_at - due_at` in milliseconds (negative: removed before it was due, e.g. an extension refused).
    pub latency_ms: i64,
    /// The resource version of the deletion, when the API server gave one.
    pub resource_version: Option<String>,
}

/// A managed object no active grant justifies (removed), or one that was
/// edited outside Portcullis (restored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drift {
    pub cluster: String,
    pub namespace: String,
    /// `Role` or `RoleBinding`.
    pub object_kind: String,
    pub name: String,
    pub grant_id: Option<String>,
    /// `removed` or `restored`.
    pub action: String,
    pub detail: String,
    pub resource_version: String,
    pub observed_at: String,
}

/// A binding outside Portcullis that lets someone edit a managed kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandingBinding {
    /// `RoleBinding` or `ClusterRoleBinding`.
    pub binding_kind: String,
    /// Empty for a ClusterRoleBinding.
    pub namespace: String,
    pub name: String,
    /// `Role/<name>` or `ClusterRole/<name>`.
    pub role: String,
    /// `User:alice`, `Group:ops`, `ServiceAccount:ns/name`.
    pub subjects: Vec<String>,
    /// The kinds it lets them edit, as `resource.group`.
    pub kinds: Vec<String>,
}

impl StandingBinding {
    /// The key that identifies the binding across reports.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.binding_kind, self.namespace, self.name)
    }
}

/// The standing access of a cluster changed: what appeared and what went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandingAccess {
    pub cluster: String,
    pub found: Vec<StandingBinding>,
    /// Keys ([`StandingBinding::key`]) of bindings reported before and now gone.
    pub gone: Vec<String>,
    pub observed_at: String,
}

/// Who last wrote which fields of an object (from `metadata.managedFields`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldManager {
    pub manager: String,
    pub operation: String,
    pub time: Option<String>,
}

/// One changed path of a route's spec; values as canonical JSON text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecChange {
    /// A JSON pointer into the spec (RFC 6901).
    pub path: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// A watched Ingress or route was created, changed or deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteChanged {
    pub cluster: String,
    pub namespace: String,
    /// The resource, as in requests: `ingresses`, `httproutes`, `grpcroutes`, `gateways`.
    pub kind: String,
    pub name: String,
    /// `added`, `modified` or `deleted`.
    pub change: String,
    pub resource_version: String,
    pub diff: Vec<SpecChange>,
    /// The whole spec after the change, canonical JSON (so the next diff can be made after a restart).
    pub spec: String,
    pub managers: Vec<FieldManager>,
    /// The grants active for this object at the time.
    pub grants: Vec<String>,
    pub observed_at: String,
}

/// A replica took or gave up leadership for a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leader {
    pub cluster: String,
    pub identity: String,
    /// `acquired` or `released`.
    pub change: String,
    pub at: String,
}

/// A reconciler event, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    BindingApplied(BindingApplied),
    BindingRemoved(BindingRemoved),
    Drift(Drift),
    StandingAccess(StandingAccess),
    RouteChanged(RouteChanged),
    Leader(Leader),
}

impl Observation {
    pub fn kind(&self) -> &'static str {
        match self {
            Observation::BindingApplied(_) => kind::BINDING_APPLIED,
            Observation::BindingRemoved(_) => kind::BINDING_REMOVED,
            Observation::Drift(_) => kind::DRIFT,
            Observation::StandingAccess(_) => kind::STANDING_ACCESS,
            Observation::RouteChanged(_) => kind::ROUTE_CHANGED,
            Observation::Leader(_) => kind::LEADER,
        }
    }

    fn data(&self) -> serde_json::Result<serde_json::Value> {
        match self {
            Observation::BindingApplied(d) => serde_json::to_value(d),
            Observation::BindingRemoved(d) => serde_json::to_value(d),
            Observation::Drift(d) => serde_json::to_value(d),
            Observation::StandingAccess(d) => serde_json::to_value(d),
            Observation::RouteChanged(d) => serde_json::to_value(d),
            Observation::Leader(d) => serde_json::to_value(d),
        }
    }

    /// The draft that records this observation, by `actor`, with event id `id`.
    pub fn to_draft(&self, id: EventId, actor: &Actor) -> EventDraft {
        crate::events::draft(self.kind(), self.data(), id, actor)
    }

    /// Reads a reconciler event; `None` for other kinds or other versions.
    pub fn from_event(event: &Event) -> Option<Observation> {
        if event.draft.v != 1 {
            return None;
        }
        let value = event.draft.data.to_serde();
        Some(match event.draft.kind.as_str() {
            kind::BINDING_APPLIED => Observation::BindingApplied(serde_json::from_value(value).ok()?),
            kind::BINDING_REMOVED => Observation::BindingRemoved(serde_json::from_value(value).ok()?),
            kind::DRIFT => Observation::Drift(serde_json::from_value(value).ok()?),
            kind::STANDING_ACCESS => Observation::StandingAccess(serde_json::from_value(value).ok()?),
            kind::ROUTE_CHANGED => Observation::RouteChanged(serde_json::from_value(value).ok()?),
            kind::LEADER => Observation::Leader(serde_json::from_value(value).ok()?),
            _ => return None,
        })
    }
}

/// A watched object: cluster, namespace, resource, name.
pub type RouteKey = (String, String, String, String);

/// The last recorded state of a route: resource version and spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRecord {
    pub resource_version: String,
    pub spec: String,
    pub deleted: bool,
}

/// The fold of the reconciler's events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterRecord {
    /// Events folded (the next expected seq).
    pub size: u64,
    /// Per grant: the expiry its binding was last applied with.
    pub applied: BTreeMap<String, String>,
    /// Grants whose binding removal is recorded.
    pub removed: BTreeSet<String>,
    pub routes: BTreeMap<RouteKey, RouteRecord>,
    /// Per cluster: the standing access in force by key.
    pub standing: BTreeMap<String, BTreeMap<String, StandingBinding>>,
}

impl ClusterRecord {
    /// Applies one ledger event (in ledger order; one out of order is ignored).
    #[must_use]
    pub fn evolve(mut self, event: &Event) -> ClusterRecord {
        if event.seq != self.size {
            return self;
        }
        self.size += 1;
        if let Some(observation) = Observation::from_event(event) {
            self.apply(observation);
        }
        self
    }

    /// Rebuilds the record from events starting at entry 0.
    pub fn rebuild<'a>(events: impl IntoIterator<Item = &'a Event>) -> ClusterRecord {
        events.into_iter().fold(ClusterRecord::default(), ClusterRecord::evolve)
    }

    fn apply(&mut self, observation: Observation) {
        match observation {
            Observation::BindingApplied(d) => {
                self.applied.insert(d.grant_id, d.expires_at);
            }
            Observation::BindingRemoved(d) => {
                self.removed.insert(d.grant_id);
            }
            Observation::RouteChanged(d) => {
                let record =
                    RouteRecord { resource_version: d.resource_version, spec: d.spec, deleted: d.change == "deleted" };
                self.routes.insert((d.cluster, d.namespace, d.kind, d.name), record);
            }
            Observation::StandingAccess(d) => {
                let standing = self.standing.entry(d.cluster).or_default();
                for key in d.gone {
                    standing.remove(&key);
                }
                for binding in d.found {
                    standing.insert(binding.key(), binding);
                }
            }
            Observation::Drift(_) | Observation::Leader(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_format::time::Timestamp;
    use proptest::prelude::*;

    fn event(seq: u64, observation: &Observation) -> Event {
        let draft = observation.to_draft(EventId([seq as u8; 16]), &Actor::system());
        Event {
            seq,
            log: "portcullis.example/ledger".into(),
            ts: Timestamp::from_unix_micros(1_800_000_000_000_000 + seq as i64).expect("in range"),
            prev: [0; 32],
            draft,
        }
    }

    fn observation(choice: u8, grant: u8, rv: u8) -> Observation {
        let grant_id = format!("{grant:032x}");
        match choice % 4 {
            0 => Observation::BindingApplied(BindingApplied {
                grant_id,
                cluster: "prod".into(),
                namespace: "shop".into(),
                name: "portcullis-x".into(),
                subject: "alice".into(),
                expires_at: format!("2026-11-28T10:00:{:02}.000000Z", rv % 60),
                resource_version: rv.to_string(),
                observed_at: "2026-11-28T10:00:00.000000Z".into(),
            }),
            1 => Observation::BindingRemoved(BindingRemoved {
                grant_id,
                cluster: "prod".into(),
                namespace: "shop".into(),
                name: "portcullis-x".into(),
                cause: "expired".into(),
                due_at: "2026-11-28T10:00:00.000000Z".into(),
                observed_at: "2026-11-28T10:00:00.300000Z".into(),
                latency_ms: 300,
                resource_version: None,
            }),
            2 => Observation::RouteChanged(RouteChanged {
                cluster: "prod".into(),
                namespace: "shop".into(),
                kind: "ingresses".into(),
                name: format!("route-{}", grant % 3),
                change: if rv.is_multiple_of(5) { "deleted" } else { "modified" }.into(),
                resource_version: rv.to_string(),
                diff: Vec::new(),
                spec: "{}".into(),
                managers: Vec::new(),
                grants: vec![grant_id],
                observed_at: "2026-11-28T10:00:00.000000Z".into(),
            }),
            _ => {
                let binding = StandingBinding {
                    binding_kind: "RoleBinding".into(),
                    namespace: "shop".into(),
                    name: format!("b{}", grant % 4),
                    role: "ClusterRole/edit".into(),
                    subjects: vec!["User:bob".into()],
                    kinds: vec!["ingresses.networking.k8s.io".into()],
                };
                let (found, gone) =
                    if rv.is_multiple_of(2) { (vec![binding], Vec::new()) } else { (Vec::new(), vec![binding.key()]) };
                Observation::StandingAccess(StandingAccess {
                    cluster: "prod".into(),
                    found,
                    gone,
                    observed_at: "2026-11-28T10:00:00.000000Z".into(),
                })
            }
        }
    }

    #[test]
    fn every_observation_reads_back_as_itself() {
        for choice in 0..4 {
            let o = observation(choice, 7, 10);
            assert_eq!(Observation::from_event(&event(0, &o)), Some(o));
        }
    }

    proptest! {
        #[test]
        fn rebuild_equals_incremental_application(steps in proptest::collection::vec((0u8..4, 0u8..6, 0u8..40), 0..60)) {
            let events: Vec<Event> =
                steps.iter().enumerate().map(|(i, &(c, g, r))| event(i as u64, &observation(c, g, r))).collect();
            let rebuilt = ClusterRecord::rebuild(&events);
            let mut incremental = ClusterRecord::default();
            for e in &events {
                incremental = incremental.evolve(e);
                // Replaying an event already folded changes nothing.
                incremental = incremental.evolve(e);
            }
            prop_assert_eq!(rebuilt, incremental);
        }
    }
}
