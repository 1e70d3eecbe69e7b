//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/{group}`, the resource lists
//! of each group version, and aggregated discovery (`apidiscovery.k8s.io/v2`) when the
//! client asks for it in `Accept`.

use super::resources::{self, RESOURCES, ResourceType};
use serde_json::{Value, json};

/// The content type of an aggregated discovery answer.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-portcullis-test",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group(name: &str) -> Value {
    let version = resources::version_of(name).unwrap_or("v1");
    let group_version = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"name": name, "versions": [group_version], "preferredVersion": group_version})
}

pub fn group_list() -> Value {
    let groups: Vec<Value> = resources::groups().into_iter().map(group).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`, if the group is served.
pub fn api_group(name: &str) -> Option<Value> {
    resources::version_of(name).map(|_| {
        let mut group = group(name);
        group["kind"] = json!("APIGroup");
        group["apiVersion"] = json!("v1");
        group
    })
}

/// The APIResourceList of a group version (`""` for core), if served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ResourceType> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for res in served {
        resources.push(json!({
            "name": res.plural,
            "singularName": res.singular,
            "namespaced": res.namespaced,
            "kind": res.kind,
            "verbs": res.verbs(),
        }));
        for sub in res.subresources {
            let (kind, verbs) = match *sub {
                "token" => ("TokenRequest", vec!["create"]),
                _ => (res.kind, vec!["get", "patch", "update"]),
            };
            resources.push(json!({
                "name": format!("{}/{sub}", res.plural),
                "singularName": "",
                "namespaced": res.namespaced,
                "kind": kind,
                "verbs": verbs,
            }));
        }
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

/// Aggregated discovery of the core group (`core`) or of every named group.
pub fn aggregated(core: bool) -> Value {
    let groups: Vec<&str> = if core { vec![""] } else { resources::groups() };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|group| {
            let served: Vec<&ResourceType> = RESOURCES.iter().filter(|r| r.group == group).collect();
            let version = served[0].version;
            let resources: Vec<Value> = served
                .iter()
                .map(|res| {
                    let kind = json!({"group": res.group, "version": res.version, "kind": res.kind});
                    let subresources: Vec<Value> = res
                        .subresources
                        .iter()
                        .map(|sub| match *sub {
                            "token" => json!({
                                "subresource": sub,
                                "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"},
                                "verbs": ["create"],
                            }),
                            _ => json!({"subresource": sub, "responseKind": kind, "verbs": ["get", "patch", "update"]}),
                        })
                        .collect();
                    json!({
                        "resource": res.plural,
                        "responseKind": kind,
                        "scope": if res.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": res.singular,
                        "verbs": res.verbs(),
                        "subresources": subresources,
                    })
                })
                .collect();
            json!({
                "metadata": {"name": group},
                "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
            })
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
