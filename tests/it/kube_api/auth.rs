//! Authentication (the admin bearer token, ServiceAccount tokens from TokenRequest),
//! impersonation, and RBAC authorization over the stored Roles, ClusterRoles,
//! RoleBindings and ClusterRoleBindings, as the Kubernetes RBAC authorizer decides.

use super::ops::{now, random_bytes};
use super::resources::{self, ResourceType};
use super::status::ApiError;
use super::store::{IssuedToken, Store};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

/// The bearer token of the cluster admin.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The user the admin token authenticates as.
pub const ADMIN_USER: &str = "test-admin";
/// Members of this group are allowed everything, as in Kubernetes.
const MASTERS: &str = "system:masters";
const AUTHENTICATED: &str = "system:authenticated";

/// Who a request is from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    fn admin() -> Identity {
        Identity { user: ADMIN_USER.into(), groups: vec![MASTERS.into(), AUTHENTICATED.into()] }
    }

    fn service_account(namespace: &str, name: &str) -> Identity {
        Identity {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                AUTHENTICATED.into(),
            ],
        }
    }
}

/// What a request does, in RBAC's terms.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// The identity of a request's bearer token.
///
/// # Errors
/// 401 for a missing, unknown or expired token, or one whose ServiceAccount is gone.
pub fn authenticate(store: &Store, authorization: Option<&str>) -> Result<Identity, ApiError> {
    let token = authorization
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(ApiError::unauthorized)?;
    if token == ADMIN_TOKEN {
        return Ok(Identity::admin());
    }
    let issued = store.tokens.get(token).ok_or_else(ApiError::unauthorized)?;
    let accounts = resources::by_plural("v1", "serviceaccounts").expect("served");
    let account_alive = store
        .get(accounts, Some(&issued.namespace), &issued.service_account)
        .and_then(|sa| sa.pointer("/metadata/uid"))
        .and_then(Value::as_str)
        == Some(issued.uid.as_str());
    if SystemTime::now() >= issued.expires || !account_alive {
        return Err(ApiError::unauthorized());
    }
    Ok(Identity::service_account(&issued.namespace, &issued.service_account))
}

/// Applies `Impersonate-User` / `Impersonate-Group`: the requester must be allowed to
/// `impersonate` the user (or ServiceAccount) and every group.
///
/// # Errors
/// 400 for groups without a user, 403 when impersonation is not allowed.
pub fn impersonate(
    store: &Store,
    requester: Identity,
    user: Option<&str>,
    groups: &[String],
) -> Result<Identity, ApiError> {
    let Some(user) = user else {
        if groups.is_empty() {
            return Ok(requester);
        }
        return Err(ApiError::bad_request("requested impersonation of groups without impersonating a user"));
    };
    let service_account = user.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split_once(':'));
    let user_attrs = match service_account {
        Some((namespace, name)) => Attributes {
            verb: "impersonate",
            group: "",
            resource: "serviceaccounts",
            subresource: None,
            namespace: Some(namespace),
            name: Some(name),
        },
        None => Attributes {
            verb: "impersonate",
            group: "",
            resource: "users",
            subresource: None,
            namespace: None,
            name: Some(user),
        },
    };
    let group_attrs = groups.iter().map(|g| Attributes {
        verb: "impersonate",
        group: "",
        resource: "groups",
        subresource: None,
        namespace: None,
        name: Some(g),
    });
    for attrs in std::iter::once(user_attrs).chain(group_attrs) {
        if !authorize(store, &requester, &attrs) {
            return Err(forbidden(&requester, &attrs));
        }
    }
    let mut identity = match service_account {
        Some((namespace, name)) => Identity::service_account(namespace, name),
        None => Identity { user: user.to_string(), groups: vec![AUTHENTICATED.into()] },
    };
    for group in groups {
        if !identity.groups.contains(group) {
            identity.groups.push(group.clone());
        }
    }
    Ok(identity)
}

/// The 403 a real API server answers for a denied request.
pub fn forbidden(who: &Identity, attrs: &Attributes) -> ApiError {
    let resource = match attrs.subresource {
        Some(sub) => format!("{}/{sub}", attrs.resource),
        None => attrs.resource.to_string(),
    };
    let qualified =
        if attrs.group.is_empty() { attrs.resource.to_string() } else { format!("{}.{}", attrs.resource, attrs.group) };
    let subject = match attrs.name {
        Some(name) => format!("{qualified} \"{name}\""),
        None => qualified,
    };
    let scope = match attrs.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let mut error = ApiError::forbidden(format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        who.user, attrs.verb, attrs.group
    ));
    let mut details = json!({"kind": attrs.resource});
    if let Some(name) = attrs.name {
        details["name"] = json!(name);
    }
    if !attrs.group.is_empty() {
        details["group"] = json!(attrs.group);
    }
    error.details = Some(details);
    error
}

/// The RBAC decision for `who` doing `attrs`. `system:masters` may do anything.
pub fn authorize(store: &Store, who: &Identity, attrs: &Attributes) -> bool {
    if who.groups.iter().any(|g| g == MASTERS) {
        return true;
    }
    let rbac = |plural: &str| resources::by_plural("rbac.authorization.k8s.io/v1", plural).expect("served");
    let allows = |role: Option<&Value>| {
        role.and_then(|r| r.get("rules"))
            .and_then(Value::as_array)
            .is_some_and(|rules| rules.iter().any(|r| rule_allows(r, attrs)))
    };
    let role_of = |binding: &Value| {
        let role_name = binding.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or("");
        let binding_ns = binding.pointer("/metadata/namespace").and_then(Value::as_str);
        match binding.pointer("/roleRef/kind").and_then(Value::as_str) {
            Some("ClusterRole") => store.get(rbac("clusterroles"), None, role_name),
            Some("Role") => store.get(rbac("roles"), binding_ns, role_name),
            _ => None,
        }
    };
    let cluster_wide = store.list(rbac("clusterrolebindings"), None).any(|b| binds(b, who, None) && allows(role_of(b)));
    cluster_wide
        || attrs.namespace.is_some_and(|ns| {
            store.list(rbac("rolebindings"), Some(ns)).any(|b| binds(b, who, Some(ns)) && allows(role_of(b)))
        })
}

/// Whether a binding (in `namespace`, for a RoleBinding) names `who` among its subjects.
fn binds(binding: &Value, who: &Identity, namespace: Option<&str>) -> bool {
    let subjects = binding.get("subjects").and_then(Value::as_array);
    subjects.into_iter().flatten().any(|subject| {
        let field = |key: &str| subject.get(key).and_then(Value::as_str).unwrap_or("");
        match field("kind") {
            "User" => field("name") == who.user,
            "Group" => who.groups.iter().any(|g| g == field("name")),
            "ServiceAccount" => {
                let sa_namespace = Some(field("namespace")).filter(|ns| !ns.is_empty()).or(namespace).unwrap_or("");
                who.user == format!("system:serviceaccount:{sa_namespace}:{}", field("name"))
            }
            _ => false,
        }
    })
}

fn rule_allows(rule: &Value, attrs: &Attributes) -> bool {
    let list = |key: &str| -> Vec<&str> {
        rule.get(key).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect()
    };
    let verbs = list("verbs");
    let groups = list("apiGroups");
    let names = list("resourceNames");
    let combined = match attrs.subresource {
        Some(sub) => format!("{}/{sub}", attrs.resource),
        None => attrs.resource.to_string(),
    };
    let resource_matches = list("resources")
        .iter()
        .any(|r| *r == "*" || *r == combined || attrs.subresource.is_some_and(|sub| r.strip_prefix("*/") == Some(sub)));
    verbs.iter().any(|v| *v == "*" || *v == attrs.verb)
        && groups.iter().any(|g| *g == "*" || *g == attrs.group)
        && resource_matches
        && (names.is_empty() || attrs.name.is_some_and(|n| names.contains(&n)))
}

/// POST `serviceaccounts/{name}/token`: issues a token for the ServiceAccount.
///
/// Unlike a real API server, which refuses `expirationSeconds` below 600, any positive
/// value is accepted, so tests can watch a token expire.
///
/// # Errors
/// 404 when the ServiceAccount does not exist, 422 for a non-positive expiration.
pub fn token_request(store: &mut Store, namespace: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
    let accounts = resources::by_plural("v1", "serviceaccounts").expect("served");
    let uid = store
        .get(accounts, Some(namespace), name)
        .and_then(|sa| sa.pointer("/metadata/uid"))
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::not_found(accounts, name))?
        .to_string();
    let seconds = body.pointer("/spec/expirationSeconds").and_then(Value::as_i64).unwrap_or(3600);
    if seconds <= 0 {
        return Err(ApiError::new(422, "Invalid", "spec.expirationSeconds: Invalid value: must be positive"));
    }
    let seconds = seconds as u64;
    let token: String = random_bytes::<24>().iter().map(|b| format!("{b:02x}")).collect();
    let token = format!("test-sa-token-{token}");
    let expires = SystemTime::now() + Duration::from_secs(seconds);
    let expires_text = {
        let unix = expires.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        let text = portcullis_format::time::Timestamp::from_unix_micros(unix as i64)
            .map(|t| t.to_string())
            .unwrap_or_default();
        format!("{}Z", &text[..19.min(text.len())])
    };
    store
        .tokens
        .insert(token.clone(), IssuedToken { namespace: namespace.into(), service_account: name.into(), uid, expires });
    let mut spec = body.get("spec").cloned().unwrap_or(json!({}));
    spec["expirationSeconds"] = json!(seconds);
    if spec.get("audiences").is_none() {
        spec["audiences"] = json!(["https://kubernetes.default.svc.cluster.local"]);
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": now()},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expires_text},
    }))
}

/// POST of a SubjectAccessReview, SelfSubjectAccessReview or LocalSubjectAccessReview:
/// answers `status.allowed` with the same evaluation as for requests.
///
/// # Errors
/// 400 when the review has no resource attributes or a local review names another namespace.
pub fn access_review(
    store: &Store,
    res: &ResourceType,
    requester: &Identity,
    namespace: Option<&str>,
    mut review: Value,
) -> Result<Value, ApiError> {
    let spec = review.get("spec").cloned().unwrap_or(json!({}));
    let text = |pointer: &str| spec.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty());
    let who = match res.kind {
        "SelfSubjectAccessReview" => requester.clone(),
        _ => Identity {
            user: text("/user").unwrap_or("").to_string(),
            groups: spec
                .get("groups")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        },
    };
    if spec.get("resourceAttributes").is_none() {
        return Err(ApiError::bad_request("only resourceAttributes reviews are supported"));
    }
    let review_ns = text("/resourceAttributes/namespace");
    if res.kind == "LocalSubjectAccessReview" && review_ns != namespace {
        return Err(ApiError::bad_request("spec.resourceAttributes.namespace must match metadata.namespace"));
    }
    let attrs = Attributes {
        verb: text("/resourceAttributes/verb").unwrap_or(""),
        group: text("/resourceAttributes/group").unwrap_or(""),
        resource: text("/resourceAttributes/resource").unwrap_or(""),
        subresource: text("/resourceAttributes/subresource"),
        namespace: review_ns,
        name: text("/resourceAttributes/name"),
    };
    let allowed = authorize(store, &who, &attrs);
    review["apiVersion"] = json!(res.api_version());
    review["kind"] = json!(res.kind);
    if review.get("metadata").is_none() {
        review["metadata"] = json!({});
    }
    review["status"] =
        if allowed { json!({"allowed": true, "reason": "allowed by RBAC"}) } else { json!({"allowed": false}) };
    Ok(review)
}
