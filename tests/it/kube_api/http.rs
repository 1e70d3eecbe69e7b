//! One HTTP request through the server: faults, authentication, impersonation, routing,
//! authorization, then the operation, answered as JSON (errors as `Status` objects).

use super::auth::{self, Attributes, Identity};
use super::discovery;
use super::ops::{self, Deleted, PatchKind, WriteRequest};
use super::resources::{self, ResourceType};
use super::select::Selector;
use super::status::ApiError;
use super::store::{Store, WatchFilter};
use super::watch::{self, WatchRequest};
use super::{RequestRecord, Shared};
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{HeaderMap, Request, Response};
use serde_json::{Value, json};
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// An answer before it becomes a response.
struct Reply {
    status: u16,
    body: ReplyBody,
    headers: Vec<(&'static str, String)>,
}

enum ReplyBody {
    Json(Value, &'static str),
    Text(&'static str),
    Stream(Body),
}

impl Reply {
    fn json(status: u16, value: Value) -> Reply {
        Reply { status, body: ReplyBody::Json(value, "application/json"), headers: Vec::new() }
    }

    fn error(error: ApiError) -> Reply {
        Reply::json(error.code, error.to_status())
    }

    fn into_response(self) -> Response<Body> {
        let mut builder = Response::builder().status(self.status);
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        let (content_type, body) = match self.body {
            ReplyBody::Json(value, content_type) => (content_type, Body::from(value.to_string())),
            ReplyBody::Text(text) => ("text/plain; charset=utf-8", Body::from(text)),
            ReplyBody::Stream(body) => ("application/json", body),
        };
        builder.header("content-type", content_type).body(body).expect("valid response parts")
    }
}

fn down() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the test server is down")
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Serves one request. An `Err` makes hyper drop the connection without an answer
/// (the server is down).
pub async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<Body>, io::Error> {
    if *shared.down.borrow() {
        return Err(down());
    }
    let mut paused = shared.paused.subscribe();
    let mut is_down = shared.down.subscribe();
    tokio::select! {
        _ = paused.wait_for(|p| !*p) => {}
        _ = is_down.wait_for(|d| *d) => return Err(down()),
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    let (reply, user) = respond(&shared, &parts, &body);
    let delay = shared.faults.lock().expect("faults lock").delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if *shared.down.borrow() {
        return Err(down());
    }
    shared.requests.lock().expect("requests lock").push(RequestRecord {
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_string(), |pq| pq.as_str().to_string()),
        content_type: header(&parts.headers, "content-type").map(str::to_string),
        status: reply.status,
        user,
    });
    Ok(reply.into_response())
}

/// The answer, and the user it was given to (after impersonation; `None` when the
/// request was not authenticated).
fn respond(shared: &Arc<Shared>, parts: &Parts, body: &[u8]) -> (Reply, Option<String>) {
    let segments: Vec<&str> = parts.uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // Health endpoints are not API requests: no faults, no authentication.
    if let ["healthz" | "readyz" | "livez"] = segments.as_slice() {
        return (Reply { status: 200, body: ReplyBody::Text("ok"), headers: Vec::new() }, None);
    }
    if let Some(code) = shared.take_injected_failure() {
        let mut reply = Reply::error(ApiError::injected(code));
        if matches!(code, 429 | 503) {
            reply.headers.push(("retry-after", "1".into()));
        }
        return (reply, None);
    }
    if segments == ["version"] {
        return (Reply::json(200, discovery::version()), None);
    }
    let mut store = shared.store.lock().expect("store lock");
    let requester = match auth::authenticate(&store, header(&parts.headers, "authorization")) {
        Ok(identity) => identity,
        Err(error) => return (Reply::error(error), None),
    };
    let groups: Vec<String> =
        parts.headers.get_all("impersonate-group").iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect();
    let user = header(&parts.headers, "impersonate-user");
    let who = match auth::impersonate(&store, requester.clone(), user, &groups) {
        Ok(identity) => identity,
        Err(error) => return (Reply::error(error), Some(requester.user)),
    };
    let reply = serve(shared, &mut store, &who, parts, body, &segments).unwrap_or_else(Reply::error);
    (reply, Some(who.user))
}

/// Query parameters, percent-decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Query {
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Query(pairs)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn percent_decode(text: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A resource request's target.
struct Target {
    res: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// `/api/v1/...` and `/apis/{group}/{version}/...` paths to a collection, object or subresource.
fn parse_target(segments: &[&str]) -> Option<Target> {
    let (api_version, rest) = match segments {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let namespaced = |plural: &str| resources::by_plural(&api_version, plural).filter(|r| r.namespaced);
    let (res, namespace, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced(plural).is_some() => {
            (namespaced(plural)?, Some(ns.to_string()), tail)
        }
        [plural, tail @ ..] => {
            let res = resources::by_plural(&api_version, plural)?;
            if res.namespaced && !tail.is_empty() {
                return None;
            }
            (res, None, tail)
        }
        [] => return None,
    };
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Target { res, namespace, name, subresource })
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// An apply configuration: YAML, of which JSON is a subset.
fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml_ng::from_slice::<Value>(body))
        .map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}")))
}

fn serve(
    shared: &Arc<Shared>,
    store: &mut Store,
    who: &Identity,
    parts: &Parts,
    body: &[u8],
    segments: &[&str],
) -> Result<Reply, ApiError> {
    let aggregated = header(&parts.headers, "accept").is_some_and(|a| a.contains("as=APIGroupDiscoveryList"));
    let discovered = |value: Option<Value>| {
        value.map(|v| Reply::json(200, v)).ok_or_else(|| ApiError::unknown_path(parts.uri.path()))
    };
    match segments {
        [] => return Ok(Reply::json(200, json!({"paths": ["/api", "/apis", "/healthz", "/readyz", "/version"]}))),
        ["api"] | ["apis"] if aggregated => {
            let mut reply = Reply::json(200, discovery::aggregated(segments == ["api"]));
            reply.body = match reply.body {
                ReplyBody::Json(value, _) => ReplyBody::Json(value, discovery::AGGREGATED),
                other => other,
            };
            return Ok(reply);
        }
        ["api"] => return Ok(Reply::json(200, discovery::core_versions(&shared.address.to_string()))),
        ["apis"] => return Ok(Reply::json(200, discovery::group_list())),
        ["api", "v1"] => return discovered(discovery::resource_list("", "v1")),
        ["apis", group] => return discovered(discovery::api_group(group)),
        ["apis", group, version] => return discovered(discovery::resource_list(group, version)),
        _ => {}
    }
    let target = parse_target(segments).ok_or_else(|| ApiError::unknown_path(parts.uri.path()))?;
    let query = Query::parse(parts.uri.query().unwrap_or(""));
    let (res, ns, name, sub) =
        (target.res, target.namespace.as_deref(), target.name.as_deref(), target.subresource.as_deref());
    if let Some(sub) = sub
        && !res.subresources.contains(&sub)
    {
        return Err(ApiError::unknown_path(parts.uri.path()));
    }
    let watching = query.flag("watch");
    let verb = match (parts.method.as_str(), name.is_some(), sub) {
        ("GET", _, None) if watching => "watch",
        ("GET", false, None) => "list",
        ("GET", true, None | Some("status")) => "get",
        ("POST", false, None) => "create",
        ("POST", true, Some("token")) => "create",
        ("PUT", true, None | Some("status")) => "update",
        ("PATCH", true, None | Some("status")) => "patch",
        ("DELETE", true, None) => "delete",
        ("DELETE", false, None) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    // A namespaced resource is only listed and watched across namespaces.
    if res.namespaced && ns.is_none() && !matches!(verb, "list" | "watch") {
        return Err(ApiError::method_not_allowed());
    }
    if res.review && verb != "create" {
        return Err(ApiError::method_not_allowed());
    }
    let attrs = Attributes { verb, group: res.group, resource: res.plural, subresource: sub, namespace: ns, name };
    // Anyone may ask what they themselves may do (the system:basic-user role of Kubernetes).
    let self_review = res.kind == "SelfSubjectAccessReview";
    if !self_review && !auth::authorize(store, who, &attrs) {
        return Err(auth::forbidden(who, &attrs));
    }
    if res.review {
        return Ok(Reply::json(201, auth::access_review(store, res, who, ns, parse_json(body)?)?));
    }

    let selector = || Selector::parse(query.get("labelSelector"), query.get("fieldSelector"));
    let user_agent = header(&parts.headers, "user-agent").and_then(|ua| ua.split('/').next()).filter(|m| !m.is_empty());
    let manager = query.get("fieldManager").or(user_agent).unwrap_or("unknown");
    let w = WriteRequest {
        res,
        namespace: ns,
        manager,
        subresource: sub,
        dry_run: query.get("dryRun") == Some("All"),
        keep_status: false,
    };
    let name = name.unwrap_or("");
    match verb {
        "get" => {
            store.get(res, ns, name).cloned().map(|o| Reply::json(200, o)).ok_or_else(|| ApiError::not_found(res, name))
        }
        "list" => {
            let selector = selector()?;
            let items: Vec<Value> = store.list(res, ns).filter(|o| selector.matches(o)).cloned().collect();
            Ok(Reply::json(200, list(res, store.resource_version(), items)))
        }
        "watch" => {
            let timeout = query.get("timeoutSeconds").and_then(|t| t.parse().ok()).map(Duration::from_secs);
            let request = WatchRequest {
                filter: WatchFilter { res, namespace: ns.map(str::to_string), selector: selector()? },
                resource_version: query.get("resourceVersion").map(str::to_string),
                bookmarks: query.flag("allowWatchBookmarks"),
                send_initial_events: query.flag("sendInitialEvents"),
                timeout,
            };
            let body = watch::start(shared, store, request)?;
            Ok(Reply { status: 200, body: ReplyBody::Stream(body), headers: Vec::new() })
        }
        "create" if sub == Some("token") => {
            Ok(Reply::json(201, auth::token_request(store, ns.unwrap_or("default"), name, &parse_json(body)?)?))
        }
        "create" => Ok(Reply::json(201, ops::create(store, &w, parse_json(body)?)?)),
        "update" => Ok(Reply::json(200, ops::replace(store, &w, name, parse_json(body)?)?)),
        "patch" => {
            let content_type = header(&parts.headers, "content-type").unwrap_or("");
            let media_type = content_type.split(';').next().unwrap_or("").trim();
            let kind = match media_type {
                "application/apply-patch+yaml" => {
                    if query.get("fieldManager").is_none_or(str::is_empty) {
                        return Err(ApiError::bad_request(
                            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                        ));
                    }
                    let existed = store.get(res, ns, name).is_some();
                    let applied = ops::apply(store, &w, name, parse_yaml(body)?, query.flag("force"))?;
                    return Ok(Reply::json(if existed { 200 } else { 201 }, applied));
                }
                "application/merge-patch+json" => PatchKind::Merge,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/json-patch+json" => PatchKind::Json,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            Ok(Reply::json(200, ops::patch(store, &w, name, kind, &parse_json(body)?)?))
        }
        "delete" => {
            // DeleteOptions (propagationPolicy, gracePeriodSeconds, preconditions) may come
            // in the body; only the preconditions matter here.
            let options = if body.is_empty() { json!({}) } else { parse_json(body)? };
            match ops::delete(store, &w, name, &options)? {
                Deleted::Gone(object) => Ok(Reply::json(200, object)),
                Deleted::Pending(object) => Ok(Reply::json(202, object)),
            }
        }
        "deletecollection" => {
            let selector = selector()?;
            let names: Vec<(Option<String>, String)> = store
                .list(res, ns)
                .filter(|o| selector.matches(o))
                .map(|o| {
                    let text = |p: &str| o.pointer(p).and_then(Value::as_str).map(str::to_string);
                    (text("/metadata/namespace"), text("/metadata/name").unwrap_or_default())
                })
                .collect();
            let mut items = Vec::new();
            for (namespace, name) in names {
                let w = WriteRequest { namespace: namespace.as_deref(), ..w };
                match ops::delete(store, &w, &name, &json!({}))? {
                    Deleted::Gone(object) | Deleted::Pending(object) => items.push(object),
                }
            }
            Ok(Reply::json(200, list(res, store.resource_version(), items)))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn list(res: &ResourceType, resource_version: u64, items: Vec<Value>) -> Value {
    json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.api_version(),
        "metadata": {"resourceVersion": resource_version.to_string()},
        "items": items,
    })
}
