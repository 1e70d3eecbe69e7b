//! The desired-state computation, without a cluster.

use super::*;
use crate::domain::events::Basis;
use crate::domain::rbac::effective_rules;
use crate::domain::state::Approval;
use crate::domain::types::{Access, Kind, Name, Target};
use portcullis_format::event::EventId;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_unix_micros(1_800_000_000_000_000 + secs * 1_000_000).unwrap()
}

fn cluster() -> ClusterConfig {
    ClusterConfig {
        name: "prod".into(),
        kubeconfig: None,
        context: None,
        subject_kind: SubjectKind::User,
        subject_template: "oidc:{sub}".into(),
        namespaces: vec!["shop".into()],
    }
}

fn grant(n: u8, cluster: &str, names: &[&str], expires: i64) -> Grant {
    let target = Target {
        cluster: Name::label("cluster", cluster).unwrap(),
        namespace: Name::label("namespace", "shop").unwrap(),
        kind: Kind::Ingresses,
        names: names.iter().map(|n| Name::subdomain("names", n).unwrap()).collect(),
        access: Access::Edit,
    };
    Grant {
        id: EventId([n; 16]),
        request_id: EventId([n + 100; 16]),
        requester: "alice".into(),
        rbac: effective_rules(&target),
        target,
        starts_at: at(0),
        expires_at: at(expires),
        approvers: vec!["lead1".into(), "lead2".into()],
        break_glass: false,
        review_due: None,
        reviewed: None,
        basis: Basis { rule: "web".into(), policy_hash: "00".repeat(32) },
        status: GrantStatus::Active,
        ended: None,
        extensions: Vec::new(),
        seq: u64::from(n),
        credential: None,
        credential_issued: None,
    }
}

fn state(grants: Vec<Grant>) -> State {
    let mut state = State::default();
    for g in grants {
        state.grants.insert(g.id, g);
    }
    state
}

#[test]
fn a_grant_becomes_a_role_with_its_rules_and_a_binding_to_the_templated_subject() {
    let g = grant(1, "prod", &["storefront"], 600);
    let d = for_grant(&g, &cluster());
    assert_eq!(d.name, format!("portcullis-{}", g.id));
    assert_eq!(d.namespace, "shop");
    let rules = d.role.rules.as_ref().unwrap();
    assert_eq!(rules.len(), g.rbac.len());
    assert_eq!(rules[0].resource_names.as_deref(), Some(&["storefront".to_string()][..]));
    assert_eq!(rules[0].verbs, vec!["get", "update", "patch"]);
    assert_eq!(rules[1].resource_names, None, "list and watch cannot be limited by name");
    let subject = &d.binding.subjects.as_ref().unwrap()[0];
    assert_eq!((subject.kind.as_str(), subject.name.as_str()), ("User", "oidc:alice"));
    assert_eq!(d.binding.role_ref.name, d.name);
    let annotations = d.binding.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations[EXPIRES_ANNOTATION], at(600).to_string());
    assert_eq!(annotations[REQUEST_ANNOTATION], g.request_id.to_string());
    assert_eq!(annotations_of(&d.binding.metadata), (Some(g.id.to_string()), Some(at(600))));
}

#[test]
fn overlapping_grants_for_the_same_person_and_object_are_separate_objects() {
    let s = state(vec![grant(1, "prod", &["storefront"], 600), grant(2, "prod", &["storefront"], 900)]);
    let wanted = desired(&s, &cluster(), at(10));
    assert_eq!(wanted.len(), 2);
    let names: std::collections::BTreeSet<_> = wanted.values().map(|d| d.name.clone()).collect();
    assert_eq!(names.len(), 2, "each grant has objects of its own");
    // Ending the first leaves the second's objects wanted, unchanged.
    let mut ended = s.clone();
    let first = ended.grants.get_mut(&EventId([1; 16])).unwrap();
    first.status = GrantStatus::Ended;
    first.ended = Some(Approval { by: "alice".into(), at: at(20), comment: None });
    let after = desired(&ended, &cluster(), at(30));
    assert_eq!(after.len(), 1);
    assert_eq!(after.values().next(), wanted.get(&EventId([2; 16]).to_string()));
}

#[test]
fn only_grants_of_this_cluster_that_give_access_now_are_wanted() {
    let s = state(vec![grant(1, "prod", &[], 600), grant(2, "staging", &[], 600), grant(3, "prod", &[], 5)]);
    let wanted = desired(&s, &cluster(), at(10));
    assert_eq!(wanted.keys().cloned().collect::<Vec<_>>(), vec![EventId([1; 16]).to_string()]);
    assert!(desired(&s, &cluster(), at(600)).is_empty(), "at the expiry instant access is gone");
}

#[test]
fn drift_is_any_change_to_what_portcullis_sets() {
    let d = for_grant(&grant(1, "prod", &["storefront"], 600), &cluster());
    assert!(role_matches(&d.role, &d.role));
    assert!(binding_matches(&d.binding, &d.binding));
    let mut widened = d.role.clone();
    widened.rules.as_mut().unwrap()[0].resource_names = None;
    assert!(!role_matches(&widened, &d.role));
    let mut extra = d.binding.clone();
    extra.subjects.as_mut().unwrap()[0].name = "mallory".into();
    assert!(!binding_matches(&extra, &d.binding));
    let mut relabelled = d.binding.clone();
    relabelled.metadata.annotations.as_mut().unwrap().insert(EXPIRES_ANNOTATION.into(), at(99_999).to_string());
    assert!(!binding_matches(&relabelled, &d.binding), "a pushed-out expiry is drift");
    // Fields the API server adds (resource version, other labels) are not drift.
    let mut served = d.binding.clone();
    served.metadata.resource_version = Some("42".into());
    served.metadata.labels.as_mut().unwrap().insert("team".into(), "web".into());
    assert!(binding_matches(&served, &d.binding));
}

#[test]
fn the_cause_and_due_time_of_a_removal() {
    let mut g = grant(1, "prod", &[], 600);
    assert_eq!(end_of(&g), ("expired", at(600)));
    g.status = GrantStatus::Revoked;
    g.ended = Some(Approval { by: "lead1".into(), at: at(60), comment: None });
    assert_eq!(end_of(&g), ("revoked", at(60)));
}

#[test]
fn in_credential_mode_the_binding_names_the_grants_own_service_account() {
    let mut g = grant(1, "prod", &["storefront"], 600);
    g.credential = Some(SERVICE_ACCOUNT.into());
    let d = for_grant(&g, &cluster());
    let account = d.service_account.as_ref().expect("a ServiceAccount");
    assert_eq!(account.metadata.name.as_deref(), Some(d.name.as_str()));
    assert_eq!(account.automount_service_account_token, Some(false));
    let subject = &d.binding.subjects.as_ref().unwrap()[0];
    assert_eq!((subject.kind.as_str(), subject.name.as_str()), ("ServiceAccount", d.name.as_str()));
    assert_eq!(subject.namespace.as_deref(), Some("shop"));
    assert!(has_service_account(&d.binding.metadata));
    assert!(!has_service_account(&for_grant(&grant(2, "prod", &[], 600), &cluster()).binding.metadata));
}
