//! The resource types the test server serves, and object-name validation.

/// One served resource: where it lives in the REST API and what its objects are.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Subresources served besides the object itself (`status`, `token`).
    pub subresources: &'static [&'static str],
    pub names: NameRule,
    /// Review kinds (SubjectAccessReview...) are only ever created, never stored.
    pub review: bool,
}

/// How object names of a kind are validated (as in Kubernetes' apimachinery validation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 characters.
    Subdomain,
    /// RFC 1123 label: lowercase alphanumerics and `-`, at most 63 characters (namespaces).
    Label,
    /// Any path segment: not `.`/`..`, no `/` or `%` (RBAC kinds, which allow `system:` names).
    PathSegment,
}

const STORED: ResourceType = ResourceType {
    group: "",
    version: "v1",
    plural: "",
    singular: "",
    kind: "",
    namespaced: true,
    subresources: &[],
    names: NameRule::Subdomain,
    review: false,
};

const RBAC: &str = "rbac.authorization.k8s.io";
const GATEWAY: &str = "gateway.networking.k8s.io";
const AUTHZ: &str = "authorization.k8s.io";

/// Every resource type the server knows, grouped by API group in discovery order.
pub static RESOURCES: &[ResourceType] = &[
    ResourceType {
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        subresources: &["status"],
        names: NameRule::Label,
        ..STORED
    },
    ResourceType {
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        subresources: &["token"],
        ..STORED
    },
    ResourceType { plural: "secrets", singular: "secret", kind: "Secret", ..STORED },
    ResourceType { plural: "configmaps", singular: "configmap", kind: "ConfigMap", ..STORED },
    ResourceType {
        group: RBAC,
        plural: "roles",
        singular: "role",
        kind: "Role",
        names: NameRule::PathSegment,
        ..STORED
    },
    ResourceType {
        group: RBAC,
        plural: "rolebindings",
        singular: "rolebinding",
        kind: "RoleBinding",
        names: NameRule::PathSegment,
        ..STORED
    },
    ResourceType {
        group: RBAC,
        plural: "clusterroles",
        singular: "clusterrole",
        kind: "ClusterRole",
        namespaced: false,
        names: NameRule::PathSegment,
        ..STORED
    },
    ResourceType {
        group: RBAC,
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        kind: "ClusterRoleBinding",
        namespaced: false,
        names: NameRule::PathSegment,
        ..STORED
    },
    ResourceType {
        group: "networking.k8s.io",
        plural: "ingresses",
        singular: "ingress",
        kind: "Ingress",
        subresources: &["status"],
        ..STORED
    },
    ResourceType {
        group: GATEWAY,
        plural: "httproutes",
        singular: "httproute",
        kind: "HTTPRoute",
        subresources: &["status"],
        ..STORED
    },
    ResourceType {
        group: GATEWAY,
        plural: "grpcroutes",
        singular: "grpcroute",
        kind: "GRPCRoute",
        subresources: &["status"],
        ..STORED
    },
    ResourceType {
        group: GATEWAY,
        plural: "gateways",
        singular: "gateway",
        kind: "Gateway",
        subresources: &["status"],
        ..STORED
    },
    ResourceType {
        group: GATEWAY,
        plural: "gatewayclasses",
        singular: "gatewayclass",
        kind: "GatewayClass",
        namespaced: false,
        subresources: &["status"],
        ..STORED
    },
    ResourceType { group: "coordination.k8s.io", plural: "leases", singular: "lease", kind: "Lease", ..STORED },
    ResourceType { group: "events.k8s.io", plural: "events", singular: "event", kind: "Event", ..STORED },
    ResourceType {
        group: AUTHZ,
        plural: "subjectaccessreviews",
        singular: "subjectaccessreview",
        kind: "SubjectAccessReview",
        namespaced: false,
        review: true,
        ..STORED
    },
    ResourceType {
        group: AUTHZ,
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
        review: true,
        ..STORED
    },
    ResourceType {
        group: AUTHZ,
        plural: "localsubjectaccessreviews",
        singular: "localsubjectaccessreview",
        kind: "LocalSubjectAccessReview",
        review: true,
        ..STORED
    },
];

impl ResourceType {
    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `plural.group` (just `plural` in the core group), as in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// The verbs discovery advertises.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.review {
            &["create"]
        } else {
            &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        }
    }

    /// Why `name` is not a valid object name of this kind, if it is not.
    pub fn name_error(&self, name: &str) -> Option<String> {
        match self.names {
            NameRule::Subdomain => subdomain_error(name),
            NameRule::Label => label_error(name),
            NameRule::PathSegment => {
                if name == "." || name == ".." {
                    Some(format!("may not be '{name}'"))
                } else if name.contains('/') || name.contains('%') {
                    Some("may not contain '/' or '%'".to_string())
                } else {
                    None
                }
            }
        }
    }
}

/// The resource `plural` of `api_version` (`v1`, `group/version`).
pub fn by_plural(api_version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.plural == plural && r.api_version() == api_version)
}

/// The resource of objects of `kind` in `api_version`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The API groups served (excluding the core group), in discovery order.
pub fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for res in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !groups.contains(&res.group) {
            groups.push(res.group);
        }
    }
    groups
}

/// The version served for `group` (one per group).
pub fn version_of(group: &str) -> Option<&'static str> {
    RESOURCES.iter().find(|r| r.group == group).map(|r| r.version)
}

const SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";

fn subdomain_error(name: &str) -> Option<String> {
    if name.len() > 253 {
        return Some("must be no more than 253 characters".to_string());
    }
    let ok = name.split('.').all(is_label_shaped);
    (!ok).then(|| SUBDOMAIN_MESSAGE.to_string())
}

/// Lowercase alphanumerics and `-`, starting and ending with an alphanumeric (any length).
fn is_label_shaped(part: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
        && alnum(&bytes[0])
        && alnum(&bytes[bytes.len() - 1])
}

fn label_error(name: &str) -> Option<String> {
    let ok = name.len() <= 63 && is_label_shaped(name);
    (!ok).then(|| {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (at most 63 characters)".to_string()
    })
}
