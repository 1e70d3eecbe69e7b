//! Change capture: what changed in a route's spec (a diff by JSON pointer),
//! who manages its fields, and which grants covered the object at the time.

use crate::domain::state::{GrantStatus, State};
use crate::domain::types::Kind;
use portcullis_format::time::Timestamp;
use portcullis_projections::cluster::{FieldManager, SpecChange};
use serde_json::Value;

/// Deterministic text of a spec (keys sorted, as serde_json writes maps).
pub fn spec_text(spec: &Value) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The changed paths from `from` to `to`: objects compared member by member,
/// arrays element by element when their lengths agree (else as a whole).
pub fn diff(from: &Value, to: &Value) -> Vec<SpecChange> {
    let mut out = Vec::new();
    walk("", from, to, &mut out);
    out
}

fn walk(path: &str, from: &Value, to: &Value, out: &mut Vec<SpecChange>) {
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let sub = format!("{path}/{}", escape(key));
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => walk(&sub, x, y, out),
                    (x, y) => out.push(SpecChange { path: sub, from: x.map(spec_text), to: y.map(spec_text) }),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(&format!("{path}/{i}"), x, y, out);
            }
        }
        _ => out.push(SpecChange { path: path.to_string(), from: Some(spec_text(from)), to: Some(spec_text(to)) }),
    }
}

/// The field managers of an object, from `metadata.managedFields`.
pub fn managers(
    managed: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry]>,
) -> Vec<FieldManager> {
    managed
        .unwrap_or_default()
        .iter()
        .map(|entry| FieldManager {
            manager: entry.manager.clone().unwrap_or_default(),
            operation: entry.operation.clone().unwrap_or_default(),
            time: entry.time.as_ref().map(|t| t.0.to_string()),
        })
        .collect()
}

/// The grants of `cluster` that give access to the object at `at`.
pub fn covering_grants(
    state: &State,
    cluster: &str,
    namespace: &str,
    kind: Kind,
    name: &str,
    at: Timestamp,
) -> Vec<String> {
    state
        .grants
        .values()
        .filter(|g| {
            g.target.cluster.as_str() == cluster
                && g.target.namespace.as_str() == namespace
                && g.target.kind == kind
                && (g.target.names.is_empty() || g.target.names.iter().any(|n| n.as_str() == name))
                && (g.status == GrantStatus::Active || g.ended.is_some())
                && g.active_at(at)
        })
        .map(|g| g.id.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_names_each_changed_path_with_both_values() {
        let from = json!({"rules": [{"host": "shop.example", "paths": [{"path": "/", "backend": "a"}]}], "tls": []});
        let to = json!({"rules": [{"host": "shop.example", "paths": [{"path": "/", "backend": "b"}]}], "class/x": 1});
        let changes = diff(&from, &to);
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, vec!["/class~1x", "/rules/0/paths/0/backend", "/tls"]);
        assert_eq!(changes[1].from.as_deref(), Some("\"a\""));
        assert_eq!(changes[1].to.as_deref(), Some("\"b\""));
        assert_eq!(changes[0].from, None);
        assert_eq!(changes[2].to, None);
        assert!(diff(&to, &to).is_empty());
    }

    #[test]
    fn arrays_of_another_length_change_as_a_whole() {
        let changes = diff(&json!({"a": [1, 2]}), &json!({"a": [1, 2, 3]}));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].path, "/a");
        assert_eq!(changes[0].to.as_deref(), Some("[1,2,3]"));
    }
}
