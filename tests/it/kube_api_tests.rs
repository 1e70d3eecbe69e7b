//! The Kubernetes-API-compatible test server (`kube_api`), driven by the kube 5 client the
//! reconciler uses: plain-HTTP connection from a kubeconfig, CRUD, server-side apply,
//! selectors, `kube::runtime::watcher` through cut streams and compaction, RBAC with
//! impersonation and ServiceAccount tokens, discovery, and the injected faults.

use crate::kube_api::TestApiServer;
use futures_util::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config, Discovery};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A client built the way the reconciler builds one: from a kubeconfig and a context.
async fn admin_client(server: &TestApiServer) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path, "test-cluster");
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let options = KubeConfigOptions { context: Some("test-cluster".into()), ..KubeConfigOptions::default() };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options).await.unwrap();
    assert_eq!(config.cluster_url.scheme_str(), Some("http"));
    Client::try_from(config).unwrap()
}

/// A client with `token`, optionally impersonating `user` in `groups`.
fn client_with(server: &TestApiServer, token: &str, impersonate: Option<(&str, &[&str])>) -> Client {
    let mut config = Config::new(server.url().parse().unwrap());
    config.auth_info.token = Some(token.to_string().into());
    if let Some((user, groups)) = impersonate {
        config.auth_info.impersonate = Some(user.to_string());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    }
    Client::try_from(config).unwrap()
}

fn from_json<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).unwrap()
}

/// The code and reason of a Status error.
fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone(), status.message.clone()),
        other => panic!("expected a Status error, got {other:?}"),
    }
}

fn config_map(namespace: &str, name: &str, labels: Value, data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": data,
    })
}

fn rv(object: &impl kube::Resource) -> u64 {
    object.meta().resource_version.as_deref().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_client_connects_over_plain_http_from_a_kubeconfig() {
    let server = TestApiServer::start().await;
    let client = admin_client(&server).await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "33"));
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    let created =
        namespaces.create(&PostParams::default(), &from_json(json!({"metadata": {"name": "shop"}}))).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    assert!(server.get("v1", "namespaces", None, "shop").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_creates_and_a_repeated_apply_changes_nothing() {
    let server = TestApiServer::start().await;
    let roles: Api<Role> = Api::namespaced(admin_client(&server).await, "team");
    let params = PatchParams::apply("portcullis");
    let mut desired = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "grant-1", "labels": {"portcullis.dev/managed": "true", "portcullis.dev/grant": "g1"}},
        "rules": [{"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["get"]}],
    });

    let created = roles.patch("grant-1", &params, &Patch::Apply(&desired)).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let managed = created.metadata.managed_fields.clone().unwrap();
    assert_eq!(managed.len(), 1);
    assert_eq!((managed[0].manager.as_deref(), managed[0].operation.as_deref()), (Some("portcullis"), Some("Apply")));
    let owned = serde_json::to_value(managed[0].fields_v1.as_ref().unwrap()).unwrap();
    assert!(owned["f:metadata"]["f:labels"].get("f:portcullis.dev/grant").is_some(), "{owned}");
    assert!(owned.get("f:rules").is_some(), "{owned}");
    let last = server.requests().pop().unwrap();
    assert_eq!((last.method.as_str(), last.status), ("PATCH", 201));
    assert_eq!(last.content_type.as_deref(), Some("application/apply-patch+yaml"));
    assert!(last.path.contains("fieldManager=portcullis"), "{}", last.path);
    assert_eq!(last.user.as_deref(), Some("test-admin"));

    let again = roles.patch("grant-1", &params, &Patch::Apply(&desired)).await.unwrap();
    assert_eq!(rv(&again), rv(&created), "a no-op apply must not bump resourceVersion");

    desired["rules"][0]["verbs"] = json!(["get", "patch"]);
    let changed = roles.patch("grant-1", &params, &Patch::Apply(&desired)).await.unwrap();
    assert!(rv(&changed) > rv(&created));
    assert_eq!(changed.metadata.generation, Some(2));
    assert_eq!(changed.rules.unwrap()[0].verbs, ["get", "patch"]);

    // A label the manager no longer applies is removed.
    desired["metadata"]["labels"].as_object_mut().unwrap().remove("portcullis.dev/grant");
    let pruned = roles.patch("grant-1", &params, &Patch::Apply(&desired)).await.unwrap();
    let labels = pruned.metadata.labels.unwrap();
    assert!(!labels.contains_key("portcullis.dev/grant") && labels.contains_key("portcullis.dev/managed"));
    assert_eq!(pruned.metadata.generation, Some(2), "labels are metadata: generation stays");

    // The configuration may also be YAML.
    let yaml = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: from-yaml\nrules: []\n";
    let created =
        roles.patch("from-yaml", &params, &Patch::Apply(serde_yaml_ng::from_str::<Value>(yaml).unwrap())).await;
    assert_eq!(created.unwrap().metadata.name.as_deref(), Some("from-yaml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_conflicts_with_another_manager_unless_forced() {
    let server = TestApiServer::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "team");
    let desired = config_map("team", "settings", json!({"team": "a"}), json!({"mode": "strict", "level": "1"}));
    maps.patch("settings", &PatchParams::apply("portcullis"), &Patch::Apply(&desired)).await.unwrap();

    // Someone edits a field portcullis applied, as kubectl edit would.
    let mut edited = server.get("v1", "configmaps", Some("team"), "settings").unwrap();
    edited["data"]["mode"] = json!("lenient");
    let after_edit = server.put(edited, "kubectl-edit");
    let managers: Vec<&str> = after_edit["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, ["portcullis", "kubectl-edit"]);

    let (code, reason, message) =
        api_error(maps.patch("settings", &PatchParams::apply("portcullis"), &Patch::Apply(&desired)).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(message.contains("\"kubectl-edit\"") && message.contains(".data.mode"), "{message}");

    // Another applier setting the same label to another value conflicts with portcullis.
    let other = config_map("team", "settings", json!({"team": "b"}), json!({}));
    let (code, _, message) =
        api_error(maps.patch("settings", &PatchParams::apply("other"), &Patch::Apply(&other)).await);
    assert_eq!(code, 409);
    assert!(message.contains("\"portcullis\"") && message.contains(".metadata.labels.team"), "{message}");
    // Applying an equal value is shared ownership, not a conflict.
    let same = config_map("team", "settings", json!({"team": "a"}), json!({}));
    maps.patch("settings", &PatchParams::apply("other"), &Patch::Apply(&same)).await.unwrap();

    let forced =
        maps.patch("settings", &PatchParams::apply("portcullis").force(), &Patch::Apply(&desired)).await.unwrap();
    assert_eq!(forced.data.unwrap()["mode"], "strict");
    let managers: Vec<String> =
        forced.metadata.managed_fields.unwrap().into_iter().map(|e| e.manager.unwrap()).collect();
    assert!(!managers.contains(&"kubectl-edit".to_string()), "ownership moved: {managers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_list_with_label_and_field_selectors() {
    let server = TestApiServer::start().await;
    let client = admin_client(&server).await;
    server.put(config_map("sel", "a", json!({"app": "web", "tier": "front"}), json!({})), "test");
    server.put(config_map("sel", "b", json!({"app": "db"}), json!({})), "test");
    server.put(config_map("sel", "c", json!({}), json!({})), "test");
    server.put(config_map("elsewhere", "d", json!({"app": "web"}), json!({})), "test");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "sel");

    let names = |list: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        list.items.into_iter().map(|m| m.metadata.name.unwrap()).collect()
    };
    for (selector, expected) in [
        ("app=web", vec!["a"]),
        ("app==web", vec!["a"]),
        ("app!=web", vec!["b", "c"]),
        ("tier", vec!["a"]),
        ("!tier", vec!["b", "c"]),
        ("app in (web,db)", vec!["a", "b"]),
        ("app notin (web)", vec!["b", "c"]),
        ("app,app!=db", vec!["a"]),
    ] {
        let list = maps.list(&ListParams::default().labels(selector)).await.unwrap();
        assert_eq!(names(list), expected, "{selector}");
    }
    let list = maps.list(&ListParams::default().fields("metadata.name=b")).await.unwrap();
    assert!(list.metadata.resource_version.is_some());
    assert_eq!(names(list), ["b"]);
    let everywhere: Api<ConfigMap> = Api::all(client);
    assert_eq!(names(everywhere.list(&ListParams::default().labels("app=web")).await.unwrap()), ["d", "a"]);
    let (code, reason, _) = api_error(maps.list(&ListParams::default().fields("spec.x=1")).await);
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));

    assert_eq!(maps.get("a").await.unwrap().metadata.labels.unwrap()["tier"], "front");
    let (code, reason, message) = api_error(maps.get("nope").await);
    assert_eq!((code, reason.as_str(), message.as_str()), (404, "NotFound", "configmaps \"nope\" not found"));
    assert!(maps.get_opt("nope").await.unwrap().is_none());
}

/// A short description of watcher events, for assertions.
fn describe(event: &Result<watcher::Event<ConfigMap>, watcher::Error>) -> String {
    let name = |m: &ConfigMap| m.metadata.name.clone().unwrap_or_default();
    match event {
        Ok(watcher::Event::Init) => "init".into(),
        Ok(watcher::Event::InitApply(m)) => format!("init-apply {}", name(m)),
        Ok(watcher::Event::InitDone) => "init-done".into(),
        Ok(watcher::Event::Apply(m)) => format!("apply {}", name(m)),
        Ok(watcher::Event::Delete(m)) => format!("delete {}", name(m)),
        Err(e) => format!("error {e}"),
    }
}

/// Reads events until one described as `wanted` (all events read are returned).
async fn until(events: &mut tokio::sync::mpsc::UnboundedReceiver<String>, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => {
                let done = event == wanted;
                seen.push(event);
                if done {
                    return seen;
                }
            }
            _ => panic!("no {wanted:?} within 15 s; saw {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_follows_changes_and_recovers_from_cut_streams_and_compaction() {
    let server = TestApiServer::start().await;
    // No bookmark may move the watcher past the compaction below.
    server.set_bookmark_interval(Duration::from_secs(3600));
    let client = admin_client(&server).await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "w");
    server.put(config_map("w", "one", json!({}), json!({})), "test");
    server.put(config_map("other-namespace", "unseen", json!({}), json!({})), "test");

    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(maps.clone(), watcher::Config::default());
    let follower = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if tx.send(describe(&event)).is_err() {
                return;
            }
        }
    });
    assert_eq!(until(&mut events, "init-done").await, ["init", "init-apply one", "init-done"]);

    let two = config_map("w", "two", json!({}), json!({"k": "v"}));
    maps.patch("two", &PatchParams::apply("portcullis"), &Patch::Apply(&two)).await.unwrap();
    assert_eq!(until(&mut events, "apply two").await, ["apply two"]);
    maps.delete("one", &DeleteParams::default()).await.unwrap();
    assert_eq!(until(&mut events, "delete one").await, ["delete one"]);

    // A cut stream is resumed from the last resourceVersion: no re-list, nothing missed.
    server.drop_watches();
    server.put(config_map("w", "three", json!({}), json!({})), "test");
    // kube reads the cut (an unexpected EOF in the chunked body) as the end of the stream.
    assert_eq!(until(&mut events, "apply three").await, ["apply three"]);

    // After compaction the resumed watch gets 410 Expired, and the watcher re-lists.
    server.compact();
    server.drop_watches();
    server.put(config_map("w", "four", json!({}), json!({})), "test");
    let seen = until(&mut events, "init-done").await;
    assert!(seen.iter().any(|e| e.starts_with("error") && e.contains("Expired")), "{seen:?}");
    let relisted: Vec<&String> = seen.iter().skip_while(|e| *e != "init").collect();
    assert_eq!(relisted, ["init", "init-apply four", "init-apply three", "init-apply two", "init-done"]);

    maps.delete("two", &DeleteParams::default()).await.unwrap();
    assert_eq!(until(&mut events, "delete two").await, ["delete two"]);
    let watches: Vec<String> =
        server.requests().into_iter().filter(|r| r.path.contains("watch=true")).map(|r| r.path).collect();
    assert!(watches.len() >= 3, "{watches:?}");
    follower.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watcher_gets_the_initial_state_then_changes() {
    let server = TestApiServer::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "s");
    server.put(config_map("s", "first", json!({}), json!({})), "test");
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(maps.clone(), watcher::Config::default().streaming_lists());
    let follower = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let _ = tx.send(describe(&event));
        }
    });
    assert_eq!(until(&mut events, "init-done").await, ["init", "init-apply first", "init-done"]);
    server.put(config_map("s", "second", json!({}), json!({})), "test");
    assert_eq!(until(&mut events, "apply second").await, ["apply second"]);
    follower.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_replays_history_sends_bookmarks_and_ends_after_its_timeout() {
    let server = TestApiServer::start().await;
    server.set_bookmark_interval(Duration::from_millis(100));
    let maps: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "b");
    let first = server.put(config_map("b", "first", json!({}), json!({})), "test");
    server.put(config_map("b", "second", json!({}), json!({})), "test");
    let from = first["metadata"]["resourceVersion"].as_str().unwrap();

    let started = Instant::now();
    let stream = maps.watch(&WatchParams::default().timeout(1), from).await.unwrap();
    let events: Vec<WatchEvent<ConfigMap>> = stream.map(Result::unwrap).collect().await;
    assert!(started.elapsed() >= Duration::from_millis(900), "ended after {:?}", started.elapsed());
    match &events[0] {
        WatchEvent::Added(m) => assert_eq!(m.metadata.name.as_deref(), Some("second")),
        other => panic!("expected the change after {from}, got {other:?}"),
    }
    let bookmarks = events.iter().filter(|e| matches!(e, WatchEvent::Bookmark(_))).count();
    assert!(bookmarks >= 3, "{events:?}");

    // From before the retained history: one 410 ERROR event, then the end.
    server.compact();
    let events: Vec<_> = maps.watch(&WatchParams::default(), from).await.unwrap().collect().await;
    match &events[..] {
        [Ok(WatchEvent::Error(status))] => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => panic!("expected one 410 event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_conflicts_delete_of_absent_and_stale_replace_fail_as_in_kubernetes() {
    let server = TestApiServer::start().await;
    let client = admin_client(&server).await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "crud");
    let object: ConfigMap = from_json(config_map("crud", "x", json!({}), json!({"a": "1"})));
    let created = maps.create(&PostParams::default(), &object).await.unwrap();
    let (code, reason, _) = api_error(maps.create(&PostParams::default(), &object).await);
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    let (code, reason, _) = api_error(maps.delete("absent", &DeleteParams::default()).await);
    assert_eq!((code, reason.as_str()), (404, "NotFound"));

    let mut updated = created.clone();
    updated.data.as_mut().unwrap().insert("a".into(), "2".into());
    let replaced = maps.replace("x", &PostParams::default(), &updated).await.unwrap();
    assert!(rv(&replaced) > rv(&created));
    let (code, reason, message) = api_error(maps.replace("x", &PostParams::default(), &updated).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(message.contains("the object has been modified"), "{message}");

    let invalid: ConfigMap = from_json(config_map("crud", "Not_A_Name", json!({}), json!({})));
    let (code, reason, _) = api_error(maps.create(&PostParams::default(), &invalid).await);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));

    // Merge patch and JSON patch; a failed JSON patch test changes nothing.
    let patched = maps.patch("x", &PatchParams::default(), &Patch::Merge(json!({"data": {"b": "3", "a": null}}))).await;
    assert_eq!(patched.unwrap().data.unwrap().into_iter().collect::<Vec<_>>(), [("b".to_string(), "3".to_string())]);
    let json_patch = |ops: Value| {
        axum::http::Request::patch("/api/v1/namespaces/crud/configmaps/x")
            .header("content-type", "application/json-patch+json")
            .body(ops.to_string().into_bytes())
            .unwrap()
    };
    let add = json!([{"op": "test", "path": "/data/b", "value": "3"}, {"op": "add", "path": "/data/c", "value": "4"}]);
    let patched: ConfigMap = client.request(json_patch(add)).await.unwrap();
    assert_eq!(patched.data.unwrap()["c"], "4");
    let failing = json!([{"op": "test", "path": "/data/b", "value": "nope"}, {"op": "remove", "path": "/data/c"}]);
    assert_eq!(api_error(client.request::<ConfigMap>(json_patch(failing)).await).0, 422);
    assert_eq!(server.get("v1", "configmaps", Some("crud"), "x").unwrap()["data"]["c"], "4");

    let deleted = maps.delete("x", &DeleteParams::background()).await.unwrap();
    assert!(deleted.is_left());
    assert!(server.get("v1", "configmaps", Some("crud"), "x").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_ref_of_a_binding_is_immutable() {
    let server = TestApiServer::start().await;
    let bindings: Api<RoleBinding> = Api::namespaced(admin_client(&server).await, "team");
    let binding = |role: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "grant-1", "namespace": "team"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
        })
    };
    let params = PatchParams::apply("portcullis");
    bindings.patch("grant-1", &params, &Patch::Apply(binding("role-a"))).await.unwrap();
    let (code, reason, message) = api_error(bindings.patch("grant-1", &params, &Patch::Apply(binding("role-b"))).await);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(message.contains("cannot change roleRef"), "{message}");
    let merge = Patch::Merge(json!({"roleRef": {"name": "role-b"}}));
    assert_eq!(api_error(bindings.patch("grant-1", &PatchParams::default(), &merge).await).0, 422);
    // Subjects may change.
    let mut changed = binding("role-a");
    changed["subjects"][0]["name"] = json!("bob");
    bindings.patch("grant-1", &params, &Patch::Apply(changed)).await.unwrap();
}

fn ingress(name: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"rules": [{"host": format!("{name}.example.com")}]},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonated_user_may_patch_exactly_the_ingress_named_in_the_role() {
    let server = TestApiServer::start().await;
    let admin = admin_client(&server).await;
    server.put(ingress("storefront"), "test");
    server.put(ingress("checkout"), "test");
    let roles: Api<Role> = Api::namespaced(admin.clone(), "shop");
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "edit-storefront"},
        "rules": [{
            "apiGroups": ["networking.k8s.io"],
            "resources": ["ingresses"],
            "verbs": ["get", "patch"],
            "resourceNames": ["storefront"],
        }],
    });
    roles.patch("edit-storefront", &PatchParams::apply("portcullis"), &Patch::Apply(role)).await.unwrap();
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "edit-storefront-alice"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "edit-storefront"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
    });
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), "shop");
    bindings.patch("edit-storefront-alice", &PatchParams::apply("portcullis"), &Patch::Apply(binding)).await.unwrap();

    let alice = client_with(&server, TestApiServer::ADMIN_TOKEN, Some(("alice", &["developers"])));
    let ingresses: Api<Ingress> = Api::namespaced(alice, "shop");
    let annotate = Patch::Merge(json!({"metadata": {"annotations": {"touched-by": "alice"}}}));
    let patched = ingresses.patch("storefront", &PatchParams::default(), &annotate).await.unwrap();
    assert_eq!(patched.metadata.annotations.unwrap()["touched-by"], "alice");
    let last = server.requests().pop().unwrap();
    assert_eq!((last.user.as_deref(), last.status), (Some("alice"), 200));

    let (code, reason, message) = api_error(ingresses.patch("checkout", &PatchParams::default(), &annotate).await);
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert!(message.contains("User \"alice\" cannot patch resource \"ingresses\""), "{message}");
    assert_eq!(api_error(ingresses.list(&ListParams::default()).await).0, 403, "a list has no name");
    assert_eq!(api_error(ingresses.delete("storefront", &DeleteParams::default()).await).0, 403);

    assert!(server.allowed("alice", &[], "patch", "networking.k8s.io", "ingresses", Some("shop"), Some("storefront")));
    assert!(!server.allowed("alice", &[], "patch", "networking.k8s.io", "ingresses", Some("shop"), Some("checkout")));
    assert!(!server.allowed(
        "alice",
        &[],
        "patch",
        "networking.k8s.io",
        "ingresses",
        Some("other"),
        Some("storefront")
    ));
    assert!(!server.allowed("bob", &[], "get", "networking.k8s.io", "ingresses", Some("shop"), Some("storefront")));
    assert!(server.allowed("root", &["system:masters"], "delete", "", "secrets", Some("x"), None));

    // SubjectAccessReview makes the same decision.
    let reviews: Api<SubjectAccessReview> = Api::all(admin);
    let review = |name: &str| -> SubjectAccessReview {
        from_json(json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": "alice", "resourceAttributes": {
                "namespace": "shop", "verb": "patch", "group": "networking.k8s.io", "resource": "ingresses", "name": name,
            }},
        }))
    };
    let answer = reviews.create(&PostParams::default(), &review("storefront")).await.unwrap();
    assert!(answer.status.unwrap().allowed);
    let answer = reviews.create(&PostParams::default(), &review("checkout")).await.unwrap();
    assert!(!answer.status.unwrap().allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_request_token_authenticates_until_its_service_account_is_deleted() {
    let server = TestApiServer::start().await;
    let admin = admin_client(&server).await;
    server.put(config_map("apps", "settings", json!({}), json!({})), "test");
    server.put(
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "read-config", "namespace": "apps"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        }),
        "test",
    );
    server.put(
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "robot-reads", "namespace": "apps"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-config"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "apps"}],
        }),
        "test",
    );
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "apps");
    let request = |seconds: i64| TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(seconds), ..TokenRequestSpec::default() },
        ..TokenRequest::default()
    };
    let (code, _, _) = api_error(accounts.create_token_request("robot", &PostParams::default(), &request(600)).await);
    assert_eq!(code, 404, "no such ServiceAccount yet");
    accounts.create(&PostParams::default(), &from_json(json!({"metadata": {"name": "robot"}}))).await.unwrap();
    let issued = accounts.create_token_request("robot", &PostParams::default(), &request(600)).await.unwrap();
    let status = issued.status.unwrap();
    assert!(!status.token.is_empty());

    let robot = client_with(&server, &status.token, None);
    let maps: Api<ConfigMap> = Api::namespaced(robot.clone(), "apps");
    maps.get("settings").await.unwrap();
    assert_eq!(server.requests().pop().unwrap().user.as_deref(), Some("system:serviceaccount:apps:robot"));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(robot, "apps");
    assert_eq!(api_error(secrets.list(&ListParams::default()).await).0, 403);
    // Only the admin may impersonate.
    let impersonating = client_with(&server, &status.token, Some(("alice", &[])));
    assert_eq!(api_error(Api::<ConfigMap>::namespaced(impersonating, "apps").get("settings").await).0, 403);

    accounts.delete("robot", &DeleteParams::default()).await.unwrap();
    let (code, reason, _) = api_error(maps.get("settings").await);
    assert_eq!((code, reason.as_str()), (401, "Unauthorized"));

    // A token also dies when it expires.
    accounts.create(&PostParams::default(), &from_json(json!({"metadata": {"name": "robot"}}))).await.unwrap();
    let short = accounts.create_token_request("robot", &PostParams::default(), &request(1)).await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client_with(&server, &short.status.unwrap().token, None), "apps");
    maps.get("settings").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(api_error(maps.get("settings").await).0, 401);
    // An unknown token never worked.
    let stranger: Api<ConfigMap> = Api::namespaced(client_with(&server, "not-a-token", None), "apps");
    assert_eq!(api_error(stranger.get("settings").await).0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_failures_reach_the_client_and_retryable_ones_are_retried_by_kube() {
    let server = TestApiServer::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "f");
    server.put(config_map("f", "x", json!({}), json!({})), "test");

    server.fail_next(1, 500);
    let (code, reason, _) = api_error(maps.get("x").await);
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    maps.get("x").await.unwrap();

    // kube 5 retries 429/503/504 itself (honouring Retry-After), so the caller sees success.
    server.fail_next(1, 503);
    maps.get("x").await.unwrap();
    let statuses: Vec<u16> = server.requests().iter().rev().take(2).map(|r| r.status).collect();
    assert_eq!(statuses, [200, 503]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_server_fails_requests_and_they_succeed_again_when_it_is_back() {
    let server = TestApiServer::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "d");
    server.put(config_map("d", "x", json!({}), json!({})), "test");
    maps.get("x").await.unwrap();

    server.set_down(true);
    match maps.get("x").await {
        Err(kube::Error::Api(status)) => panic!("a down server gives no HTTP answer, got {status:?}"),
        Err(_) => {}
        Ok(_) => panic!("a down server answered"),
    }
    server.set_down(false);
    maps.get("x").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_holds_requests_and_a_delay_slows_every_answer() {
    let server = TestApiServer::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "p");
    server.put(config_map("p", "x", json!({}), json!({})), "test");

    server.set_paused(true);
    let pending = tokio::spawn({
        let maps = maps.clone();
        async move { maps.get("x").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "a paused server must not answer");
    server.set_paused(false);
    pending.await.unwrap().unwrap();

    server.set_delay(Duration::from_millis(300));
    let started = Instant::now();
    maps.get("x").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.set_delay(Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_served_groups() {
    let server = TestApiServer::start().await;
    let client = admin_client(&server).await;
    for discovery in
        [Discovery::new(client.clone()).run().await.unwrap(), Discovery::new(client).run_aggregated().await.unwrap()]
    {
        let (resource, capabilities) = discovery
            .resolve_gvk(&kube::api::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"))
            .unwrap();
        assert_eq!(resource.plural, "httproutes");
        assert_eq!(capabilities.scope, kube::discovery::Scope::Namespaced);
        assert!(discovery.has_group("rbac.authorization.k8s.io"));
        assert!(discovery.has_group(""), "the core group");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_a_subresource_and_finalizers_hold_a_deletion() {
    let server = TestApiServer::start().await;
    let ingresses: Api<Ingress> = Api::namespaced(admin_client(&server).await, "shop");
    let mut with_status = ingress("storefront");
    with_status["status"] = json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}});
    let created = ingresses.create(&PostParams::default(), &from_json(with_status)).await.unwrap();
    assert!(created.status.is_none_or(|s| s.load_balancer.is_none_or(|lb| lb.ingress.is_none())));

    let status = Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.2"}]}}}));
    let patched = ingresses.patch_status("storefront", &PatchParams::default(), &status).await.unwrap();
    assert_eq!(patched.metadata.generation, Some(1), "status is not spec");
    let ip = |i: &Ingress| i.status.clone().unwrap().load_balancer.unwrap().ingress.unwrap()[0].ip.clone();
    assert_eq!(ip(&patched).as_deref(), Some("10.0.0.2"));
    // Status sent to the main resource is ignored.
    let main = Patch::Merge(
        json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.9.9.9"}]}}, "spec": {"ingressClassName": "nginx"}}),
    );
    let patched = ingresses.patch("storefront", &PatchParams::default(), &main).await.unwrap();
    assert_eq!(ip(&patched).as_deref(), Some("10.0.0.2"));
    assert_eq!(patched.metadata.generation, Some(2));

    let held = Patch::Merge(json!({"metadata": {"finalizers": ["portcullis.dev/cleanup"]}}));
    ingresses.patch("storefront", &PatchParams::default(), &held).await.unwrap();
    assert!(ingresses.delete("storefront", &DeleteParams::default()).await.unwrap().is_left());
    let marked = server.get("networking.k8s.io/v1", "ingresses", Some("shop"), "storefront").unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let released = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    ingresses.patch("storefront", &PatchParams::default(), &released).await.unwrap();
    assert!(server.get("networking.k8s.io/v1", "ingresses", Some("shop"), "storefront").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_inspection_bypasses_authentication_and_faults() {
    let server = TestApiServer::start().await;
    let first = server.put(config_map("direct", "x", json!({"a": "1"}), json!({})), "seeder");
    assert_eq!(first["metadata"]["managedFields"][0]["manager"], "seeder");
    assert_eq!(first["metadata"]["managedFields"][0]["operation"], "Update");
    server.set_down(true);
    server.fail_next(5, 500);
    let second = server.put(config_map("direct", "x", json!({"a": "2"}), json!({})), "seeder");
    assert_eq!(second["metadata"]["uid"], first["metadata"]["uid"]);
    let bumped = |v: &Value| v["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap();
    assert!(bumped(&second) > bumped(&first));
    assert_eq!(server.list("v1", "configmaps", Some("direct")).len(), 1);
    assert_eq!(server.list("v1", "configmaps", None).len(), 1);
    assert!(server.delete("v1", "configmaps", Some("direct"), "x"));
    assert!(!server.delete("v1", "configmaps", Some("direct"), "x"));
    assert!(server.get("v1", "configmaps", Some("direct"), "x").is_none());
    assert!(server.requests().is_empty());
    server.set_down(false);

    // The faults are still armed for the first API requests.
    let maps: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "direct");
    assert_eq!(api_error(maps.get("x").await).0, 500);
    let recorded = server.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        (recorded[0].method.as_str(), recorded[0].path.as_str()),
        ("GET", "/api/v1/namespaces/direct/configmaps/x")
    );
    assert_eq!(
        (recorded[0].status, recorded[0].user.as_deref(), recorded[0].content_type.as_deref()),
        (500, None, None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_watch_events_back_and_going_down_cuts_the_stream() {
    let server = TestApiServer::start().await;
    server.set_bookmark_interval(Duration::from_secs(3600));
    let maps: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "pw");
    let mut stream = maps.watch(&WatchParams::default(), "0").await.unwrap().boxed();

    server.set_paused(true);
    server.put(config_map("pw", "held", json!({}), json!({})), "test");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next()).await.is_err(),
        "paused: nothing delivered"
    );
    server.set_paused(false);
    match stream.next().await {
        Some(Ok(WatchEvent::Added(m))) => assert_eq!(m.metadata.name.as_deref(), Some("held")),
        other => panic!("expected the held event, got {other:?}"),
    }

    server.set_down(true);
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("the stream must end");
    assert!(!matches!(end, Some(Ok(_))), "no event after going down: {end:?}");
    server.set_down(false);
}
