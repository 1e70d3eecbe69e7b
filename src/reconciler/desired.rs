//! The desired state of a cluster, computed from the active grants: pure, no
//! I/O. Each grant gets its own Role and RoleBinding (named after the grant),
//! so ending one grant never takes away access another still justifies.

use super::config::{ClusterConfig, SubjectKind};
use crate::domain::state::{Grant, GrantStatus, State};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portcullis_format::time::Timestamp;
use std::collections::BTreeMap;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "portcullis";
/// The label that marks an object as managed by Portcullis.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "portcullis");
/// The label selector of managed objects.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=portcullis";
pub const GRANT_LABEL: &str = "portcullis.dev/grant";
pub const GRANT_ANNOTATION: &str = "portcullis.dev/grant-id";
pub const REQUEST_ANNOTATION: &str = "portcullis.dev/request-id";
pub const EXPIRES_ANNOTATION: &str = "portcullis.dev/expires-at";
pub const REQUESTER_ANNOTATION: &str = "portcullis.dev/requester";
/// On the objects of a grant in credential mode: its ServiceAccount goes with them.
pub const CREDENTIAL_ANNOTATION: &str = "portcullis.dev/credential";
/// The credential mode recorded in grants that hand out a ServiceAccount token.
pub const SERVICE_ACCOUNT: &str = "service-account";

/// The Role and RoleBinding of one grant.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub grant_id: String,
    pub namespace: String,
    /// The name of both objects.
    pub name: String,
    pub subject: String,
    pub expires_at: Timestamp,
    pub role: Role,
    pub binding: RoleBinding,
    /// In credential mode: the grant's own ServiceAccount, the binding's subject.
    pub service_account: Option<ServiceAccount>,
}

/// The name of a grant's Role and RoleBinding.
pub fn object_name(grant_id: &str) -> String {
    format!("portcullis-{grant_id}")
}

/// The objects of `grant` in `cluster`.
pub fn for_grant(grant: &Grant, cluster: &ClusterConfig) -> Desired {
    let grant_id = grant.id.to_string();
    let name = object_name(&grant_id);
    let namespace = grant.target.namespace.to_string();
    let expires_at = grant.expires_at;
    let credential_mode = grant.credential.as_deref() == Some(SERVICE_ACCOUNT);
    let mut annotations = BTreeMap::from([
        (GRANT_ANNOTATION.to_string(), grant_id.clone()),
        (REQUEST_ANNOTATION.to_string(), grant.request_id.to_string()),
        (EXPIRES_ANNOTATION.to_string(), expires_at.to_string()),
        (REQUESTER_ANNOTATION.to_string(), grant.requester.to_string()),
    ]);
    if credential_mode {
        annotations.insert(CREDENTIAL_ANNOTATION.to_string(), SERVICE_ACCOUNT.to_string());
    }
    let metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.clone()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
            (GRANT_LABEL.to_string(), grant_id.clone()),
        ])),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    };
    let rules = grant
        .rbac
        .iter()
        .map(|rule| PolicyRule {
            api_groups: Some(rule.api_groups.clone()),
            resources: Some(rule.resources.clone()),
            resource_names: (!rule.resource_names.is_empty()).then(|| rule.resource_names.clone()),
            verbs: rule.verbs.clone(),
            non_resource_urls: None,
        })
        .collect();
    let (subject, kind, subject_group, subject_namespace) = if credential_mode {
        (name.clone(), "ServiceAccount", None, Some(namespace.clone()))
    } else {
        let kind = match cluster.subject_kind {
            SubjectKind::User => "User",
            SubjectKind::Group => "Group",
        };
        (cluster.subject_name(&grant.requester), kind, Some("rbac.authorization.k8s.io".to_string()), None)
    };
    let role = Role { metadata: metadata.clone(), rules: Some(rules) };
    let service_account = credential_mode.then(|| ServiceAccount {
        metadata: metadata.clone(),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    });
    let binding = RoleBinding {
        metadata,
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: name.clone() },
        subjects: Some(vec![Subject {
            api_group: subject_group,
            kind: kind.into(),
            name: subject.clone(),
            namespace: subject_namespace,
        }]),
    };
    Desired { grant_id, namespace, name, subject, expires_at, role, binding, service_account }
}

/// Every grant of `cluster` that gives access at `now`, as objects, by grant id.
pub fn desired(state: &State, cluster: &ClusterConfig, now: Timestamp) -> BTreeMap<String, Desired> {
    state
        .grants
        .values()
        .filter(|g| g.status == GrantStatus::Active && g.target.cluster.as_str() == cluster.name && g.active_at(now))
        .map(|g| {
            let d = for_grant(g, cluster);
            (d.grant_id.clone(), d)
        })
        .collect()
}

/// Why a grant's objects must go: its cause for the record and when access was due to end.
pub fn end_of(grant: &Grant) -> (&'static str, Timestamp) {
    match (grant.status, &grant.ended) {
        (GrantStatus::Ended, Some(ended)) => ("ended", ended.at),
        (GrantStatus::Revoked, Some(ended)) => ("revoked", ended.at),
        _ => ("expired", grant.expires_at),
    }
}

/// The parts of a managed object that Portcullis sets, for comparing what is
/// observed with what is wanted (drift): rules, role reference, subjects,
/// and Portcullis's labels and annotations.
pub fn role_matches(observed: &Role, wanted: &Role) -> bool {
    observed.rules.clone().unwrap_or_default() == wanted.rules.clone().unwrap_or_default()
        && meta_matches(&observed.metadata, &wanted.metadata)
}

pub fn binding_matches(observed: &RoleBinding, wanted: &RoleBinding) -> bool {
    observed.role_ref == wanted.role_ref
        && observed.subjects.clone().unwrap_or_default() == wanted.subjects.clone().unwrap_or_default()
        && meta_matches(&observed.metadata, &wanted.metadata)
}

fn meta_matches(observed: &ObjectMeta, wanted: &ObjectMeta) -> bool {
    let contains = |have: &Option<BTreeMap<String, String>>, want: &Option<BTreeMap<String, String>>| {
        let have = have.clone().unwrap_or_default();
        want.iter().flatten().all(|(k, v)| have.get(k) == Some(v))
    };
    contains(&observed.labels, &wanted.labels) && contains(&observed.annotations, &wanted.annotations)
}

/// Whether a managed object belongs to a grant in credential mode.
pub fn has_service_account(metadata: &ObjectMeta) -> bool {
    metadata.annotations.as_ref().and_then(|a| a.get(CREDENTIAL_ANNOTATION)).is_some_and(|v| v == SERVICE_ACCOUNT)
}

/// The grant and expiry a managed object carries in its annotations.
pub fn annotations_of(metadata: &ObjectMeta) -> (Option<String>, Option<Timestamp>) {
    let annotations = metadata.annotations.as_ref();
    let grant = annotations.and_then(|a| a.get(GRANT_ANNOTATION)).cloned();
    let expires = annotations.and_then(|a| a.get(EXPIRES_ANNOTATION)).and_then(|s| Timestamp::parse(s).ok());
    (grant, expires)
}

#[cfg(test)]
mod tests;
