//! Standing access: RoleBindings and ClusterRoleBindings made outside
//! Portcullis that let someone write one of the managed kinds. They are
//! reported, never touched.

use super::desired::MANAGED_BY;
use crate::domain::types::Kind;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use portcullis_projections::cluster::StandingBinding;
use std::collections::BTreeMap;

const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// The managed kinds (as `resource.group`) a rule lets its holder write.
fn writable_kinds(rule: &PolicyRule) -> Vec<String> {
    let any = |list: &Option<Vec<String>>, value: &str| list.iter().flatten().any(|v| v == "*" || v == value);
    if !rule.verbs.iter().any(|v| v == "*" || WRITE_VERBS.contains(&v.as_str())) {
        return Vec::new();
    }
    Kind::ALL
        .into_iter()
        .filter(|k| any(&rule.api_groups, k.group()) && any(&rule.resources, k.resource()))
        .map(|k| format!("{}.{}", k.resource(), k.group()))
        .collect()
}

fn subject_text(s: &Subject) -> String {
    match (s.kind.as_str(), &s.namespace) {
        ("ServiceAccount", Some(ns)) => format!("ServiceAccount:{ns}/{}", s.name),
        (kind, _) => format!("{kind}:{}", s.name),
    }
}

fn managed(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.and_then(|l| l.get(MANAGED_BY.0)).is_some_and(|v| v == MANAGED_BY.1)
}

/// Everything the API server lists that bindings refer to.
#[derive(Default)]
pub struct RbacObjects {
    pub roles: Vec<Role>,
    pub cluster_roles: Vec<ClusterRole>,
    pub bindings: Vec<RoleBinding>,
    pub cluster_bindings: Vec<ClusterRoleBinding>,
}

/// The bindings outside Portcullis that allow writing a managed kind, sorted by key.
pub fn find(objects: &RbacObjects) -> Vec<StandingBinding> {
    let cluster_rules: BTreeMap<&str, &[PolicyRule]> = objects
        .cluster_roles
        .iter()
        .map(|r| (r.metadata.name.as_deref().unwrap_or(""), r.rules.as_deref().unwrap_or_default()))
        .collect();
    let role_rules: BTreeMap<(&str, &str), &[PolicyRule]> = objects
        .roles
        .iter()
        .filter(|r| !managed(r.metadata.labels.as_ref()))
        .map(|r| {
            let key = (r.metadata.namespace.as_deref().unwrap_or(""), r.metadata.name.as_deref().unwrap_or(""));
            (key, r.rules.as_deref().unwrap_or_default())
        })
        .collect();
    let rules_of = |namespace: &str, role: &RoleRef| -> &[PolicyRule] {
        match role.kind.as_str() {
            "ClusterRole" => cluster_rules.get(role.name.as_str()).copied().unwrap_or_default(),
            _ => role_rules.get(&(namespace, role.name.as_str())).copied().unwrap_or_default(),
        }
    };
    let mut out = Vec::new();
    let mut report =
        |binding_kind: &str, namespace: &str, name: &str, role: &RoleRef, subjects: &Option<Vec<Subject>>| {
            let mut kinds: Vec<String> = rules_of(namespace, role).iter().flat_map(writable_kinds).collect();
            kinds.sort();
            kinds.dedup();
            if kinds.is_empty() {
                return;
            }
            out.push(StandingBinding {
                binding_kind: binding_kind.into(),
                namespace: namespace.into(),
                name: name.into(),
                role: format!("{}/{}", role.kind, role.name),
                subjects: subjects.iter().flatten().map(subject_text).collect(),
                kinds,
            });
        };
    for b in objects.bindings.iter().filter(|b| !managed(b.metadata.labels.as_ref())) {
        let namespace = b.metadata.namespace.as_deref().unwrap_or("");
        report("RoleBinding", namespace, b.metadata.name.as_deref().unwrap_or(""), &b.role_ref, &b.subjects);
    }
    for b in objects.cluster_bindings.iter().filter(|b| !managed(b.metadata.labels.as_ref())) {
        report("ClusterRoleBinding", "", b.metadata.name.as_deref().unwrap_or(""), &b.role_ref, &b.subjects);
    }
    out.sort_by_key(StandingBinding::key);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(namespace: Option<&str>, name: &str, managed: bool) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: namespace.map(Into::into),
            labels: managed.then(|| BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())])),
            ..ObjectMeta::default()
        }
    }

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        let strings = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        PolicyRule {
            api_groups: strings(groups),
            resources: strings(resources),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            ..PolicyRule::default()
        }
    }

    fn role_ref(kind: &str, name: &str) -> RoleRef {
        RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: kind.into(), name: name.into() }
    }

    fn user(name: &str) -> Option<Vec<Subject>> {
        Some(vec![Subject { kind: "User".into(), name: name.into(), ..Subject::default() }])
    }

    #[test]
    fn bindings_that_let_people_write_managed_kinds_are_reported_and_ours_are_not() {
        let objects = RbacObjects {
            roles: vec![
                Role {
                    metadata: meta(Some("shop"), "route-editor", false),
                    rules: Some(vec![rule(&["gateway.networking.k8s.io"], &["httproutes"], &["patch"])]),
                },
                Role {
                    metadata: meta(Some("shop"), "viewer", false),
                    rules: Some(vec![rule(&["networking.k8s.io"], &["ingresses"], &["get", "list"])]),
                },
                Role {
                    metadata: meta(Some("shop"), "portcullis-1", true),
                    rules: Some(vec![rule(&["networking.k8s.io"], &["ingresses"], &["patch"])]),
                },
            ],
            cluster_roles: vec![ClusterRole {
                metadata: meta(None, "admin-ish", false),
                rules: Some(vec![rule(&["*"], &["*"], &["*"])]),
                ..ClusterRole::default()
            }],
            bindings: vec![
                RoleBinding {
                    metadata: meta(Some("shop"), "bob-routes", false),
                    role_ref: role_ref("Role", "route-editor"),
                    subjects: user("bob"),
                },
                RoleBinding {
                    metadata: meta(Some("shop"), "carol-view", false),
                    role_ref: role_ref("Role", "viewer"),
                    subjects: user("carol"),
                },
                RoleBinding {
                    metadata: meta(Some("shop"), "portcullis-1", true),
                    role_ref: role_ref("Role", "portcullis-1"),
                    subjects: user("alice"),
                },
            ],
            cluster_bindings: vec![ClusterRoleBinding {
                metadata: meta(None, "ops-admin", false),
                role_ref: role_ref("ClusterRole", "admin-ish"),
                subjects: Some(vec![Subject { kind: "Group".into(), name: "ops".into(), ..Subject::default() }]),
            }],
        };
        let found = find(&objects);
        let keys: Vec<String> = found.iter().map(StandingBinding::key).collect();
        assert_eq!(keys, vec!["ClusterRoleBinding//ops-admin", "RoleBinding/shop/bob-routes"]);
        assert_eq!(found[1].kinds, vec!["httproutes.gateway.networking.k8s.io"]);
        assert_eq!(found[1].subjects, vec!["User:bob"]);
        assert_eq!(found[0].kinds.len(), Kind::ALL.len(), "a wildcard role writes every managed kind");
    }
}
