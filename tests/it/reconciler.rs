//! The reconciler end to end: the real reconciler against the
//! Kubernetes-API-compatible test server of `kube_api`, or against a real
//! cluster when `PORTCULLIS_TEST_KUBECONFIG` names a kubeconfig (with
//! `PORTCULLIS_TEST_CONTEXT` for its context). Access is checked the way the
//! person would meet it: by patching the Ingress as them (impersonation),
//! with RBAC deciding. Tests that need fault injection run on the test server
//! only and say so when skipped.

use crate::kube_api::TestApiServer;
use crate::ledger::{close, open, signer};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use portcullis::domain::decide::Command;
use portcullis::domain::types::{Access, Kind, Name, Span, Target};
use portcullis::ledger::{Ledger, SequencerThread};
use portcullis::policy::Policy;
use portcullis::reconciler::config::{ClusterConfig, ReconcilerConfig, SubjectKind};
use portcullis::reconciler::{Reconciler, desired};
use portcullis::workflow::{Workflow, random_seed};
use portcullis_format::event::{Actor, EventId, ParsedEntry};
use portcullis_projections::cluster::Observation;
use serde_json::json;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLICY: &str = r#"
version: 1
rules:
  - name: e2e-credentials
    match: {clusters: [e2e], namespaces: ["*"], kinds: [ingresses], access: [manage]}
    requesters: {groups: [engineering]}
    auto_approve: true
    max_duration: 1h
    reason: {required: false}
    credential: service-account
  - name: e2e-self-service
    match: {clusters: [e2e], namespaces: ["*"], kinds: [ingresses, httproutes], access: [view, edit, manage]}
    requesters: {groups: [engineering]}
    auto_approve: true
    max_duration: 1h
    reason: {required: false}
admins:
  groups: [admins]
"#;

/// Where the tests run: the test server, or a real cluster.
struct Cluster {
    server: Option<TestApiServer>,
    kubeconfig: PathBuf,
    context: Option<String>,
    namespace: String,
    admin: kube::Client,
}

impl Cluster {
    async fn start(dir: &std::path::Path) -> Cluster {
        let suffix = hex(&random_seed()[..4]);
        let (server, kubeconfig, context) = match std::env::var_os("PORTCULLIS_TEST_KUBECONFIG") {
            Some(path) => (None, PathBuf::from(path), std::env::var("PORTCULLIS_TEST_CONTEXT").ok()),
            None => {
                let server = TestApiServer::start().await;
                let path = dir.join("kubeconfig");
                server.write_kubeconfig(&path, "test");
                (Some(server), path, Some("test".to_string()))
            }
        };
        let namespace = format!("portcullis-e2e-{suffix}");
        let admin = client(&kubeconfig, context.clone(), None).await;
        let ns = Namespace {
            metadata: kube::api::ObjectMeta { name: Some(namespace.clone()), ..Default::default() },
            ..Default::default()
        };
        Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        let cluster = Cluster { server, kubeconfig, context, namespace, admin };
        for name in ["storefront", "checkout"] {
            cluster.create_ingress(name).await;
        }
        cluster
    }

    fn real(&self) -> bool {
        self.server.is_none()
    }

    /// The test server, or None (with the reason printed) on a real cluster.
    fn server(&self, test: &str) -> Option<&TestApiServer> {
        if self.server.is_none() {
            println!("{test}: skipped on a real cluster (it injects faults into the API server)");
        }
        self.server.as_ref()
    }

    async fn create_ingress(&self, name: &str) {
        let ingress: Ingress = serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
        }))
        .unwrap();
        Api::<Ingress>::namespaced(self.admin.clone(), &self.namespace)
            .create(&PostParams::default(), &ingress)
            .await
            .expect("create ingress");
    }

    fn config(&self) -> ReconcilerConfig {
        ReconcilerConfig {
            lease_namespace: self.namespace.clone(),
            lease_name: "portcullis-e2e".into(),
            revoke_sla_ms: 1000,
            lease_duration_secs: 2,
            standing_scan_secs: 1,
            clusters: vec![ClusterConfig {
                name: "e2e".into(),
                kubeconfig: Some(self.kubeconfig.clone()),
                context: self.context.clone(),
                subject_kind: SubjectKind::User,
                subject_template: "{sub}".into(),
                namespaces: vec![self.namespace.clone()],
            }],
        }
    }

    /// Whether `user` may patch the Ingress `name`, asked of the API server as that user.
    async fn can_patch(&self, user: &str, name: &str) -> bool {
        let as_user = client(&self.kubeconfig, self.context.clone(), Some(user)).await;
        let patch = json!({"metadata": {"annotations": {"e2e.portcullis.dev/touched": "yes"}}});
        let result = Api::<Ingress>::namespaced(as_user, &self.namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        match result {
            Ok(_) => true,
            Err(kube::Error::Api(status)) if status.code == 403 => false,
            Err(e) => panic!("patching {name} as {user}: {e}"),
        }
    }

    async fn managed(&self) -> Vec<RoleBinding> {
        let params = ListParams::default().labels(desired::MANAGED_SELECTOR);
        Api::<RoleBinding>::namespaced(self.admin.clone(), &self.namespace).list(&params).await.unwrap().items
    }

    async fn cleanup(self) {
        if self.real() {
            let _ = Api::<Namespace>::all(self.admin.clone()).delete(&self.namespace, &DeleteParams::default()).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn client(kubeconfig: &std::path::Path, context: Option<String>, user: Option<&str>) -> kube::Client {
    let settings = ClusterConfig {
        name: "e2e".into(),
        kubeconfig: Some(kubeconfig.to_path_buf()),
        context,
        subject_kind: SubjectKind::User,
        subject_template: "{sub}".into(),
        namespaces: Vec::new(),
    };
    let mut config = portcullis::reconciler::config_for(&settings).await.unwrap();
    config.auth_info.impersonate = user.map(str::to_string);
    config.auth_info.impersonate_groups = user.map(|_| vec!["system:authenticated".to_string()]);
    kube::Client::try_from(config).unwrap()
}

/// The service side: a ledger, the workflow on the test policy.
struct Service {
    _dir: tempfile::TempDir,
    ledger: Ledger,
    thread: SequencerThread,
    workflow: Arc<Workflow>,
}

impl Service {
    async fn start() -> Service {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, thread) = open(dir.path(), signer(7)).unwrap();
        let policy = Arc::new(Policy::parse(POLICY).unwrap());
        let workflow = Workflow::open(ledger.clone(), Some(policy)).await.unwrap();
        Service { _dir: dir, ledger, thread, workflow }
    }

    /// `user` asks to edit `names` for `duration`; auto-approved into a grant.
    async fn grant(&self, cluster: &Cluster, user: &str, names: &[&str], duration: &str) -> EventId {
        self.grant_access(cluster, user, names, duration, Access::Edit).await
    }

    async fn grant_access(
        &self,
        cluster: &Cluster,
        user: &str,
        names: &[&str],
        duration: &str,
        access: Access,
    ) -> EventId {
        let target = Target {
            cluster: Name::label("cluster", "e2e").unwrap(),
            namespace: Name::label("namespace", &cluster.namespace).unwrap(),
            kind: Kind::Ingresses,
            names: names.iter().map(|n| Name::subdomain("names", n).unwrap()).collect(),
            access,
        };
        let command = Command::Request {
            target,
            duration: Span::parse("duration", duration).unwrap(),
            reason: "e2e".into(),
            ticket: None,
            break_glass: false,
        };
        self.workflow.execute(command, person(user, "engineering"), random_seed()).await.unwrap();
        let state = self.workflow.current().await.unwrap();
        state.grants.values().max_by_key(|g| g.seq).map(|g| g.id).expect("auto-approved into a grant")
    }

    async fn observations(&self) -> Vec<Observation> {
        let head = self.ledger.head().size;
        let entries = self.ledger.entries(0, head).await.unwrap();
        entries
            .iter()
            .filter_map(|e| ParsedEntry::parse(e).ok())
            .filter_map(|p| Observation::from_event(&p.event))
            .collect()
    }

    async fn stop(self) {
        drop(self.workflow);
        close(self.ledger, self.thread).await;
    }
}

fn person(sub: &str, group: &str) -> Actor {
    Actor { sub: sub.into(), groups: vec![group.into()], via: "token".into() }
}

/// Polls `check` every 20 ms until it holds or `limit` passes; returns how long it took.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_reconciler(cluster: &Cluster, service: &Service, identity: &str) -> Reconciler {
    Reconciler::start(&cluster.config(), Arc::clone(&service.workflow), identity.into()).await.unwrap()
}

/// A cluster, the service, and a reconciler that leads it.
async fn scene() -> (tempfile::TempDir, Cluster, Service, Reconciler) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path()).await;
    let service = Service::start().await;
    let reconciler = start_reconciler(&cluster, &service, "replica-a").await;
    eventually(Duration::from_secs(10), "leadership", || leading(&reconciler)).await;
    (dir, cluster, service, reconciler)
}

async fn finish(reconciler: &Reconciler, service: Service, cluster: Cluster) {
    reconciler.shutdown().await;
    service.stop().await;
    cluster.cleanup().await;
}

async fn leading(reconciler: &Reconciler) -> bool {
    reconciler.status().iter().all(|(_, s)| s.leader && s.synced)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_lets_the_person_edit_exactly_the_named_ingress_until_they_end_it() {
    let (_dir, cluster, service, reconciler) = scene().await;

    assert!(!cluster.can_patch("alice", "storefront").await, "no access before a grant");
    let grant = service.grant(&cluster, "alice", &["storefront"], "1h").await;
    eventually(Duration::from_secs(5), "the grant's binding", || cluster.can_patch("alice", "storefront")).await;
    assert!(!cluster.can_patch("alice", "checkout").await, "only the named Ingress");
    assert!(!cluster.can_patch("bob", "storefront").await, "only the requester");
    let bindings = cluster.managed().await;
    assert_eq!(bindings.len(), 1);
    let annotations = bindings[0].metadata.annotations.clone().unwrap();
    assert_eq!(annotations[desired::GRANT_ANNOTATION], grant.to_string());
    assert!(annotations.contains_key(desired::EXPIRES_ANNOTATION));

    let end = Command::End { grant, comment: Some("done".into()) };
    service.workflow.execute(end, person("alice", "engineering"), random_seed()).await.unwrap();
    let took = eventually(Duration::from_secs(2), "access gone after ending", || async {
        !cluster.can_patch("alice", "storefront").await
    })
    .await;
    println!("access gone {took:?} after the grant ended");
    let grant_id = grant.to_string();
    let observations = service.observations().await;
    let applied = observations.iter().filter(|o| matches!(o, Observation::BindingApplied(a) if a.grant_id == grant_id));
    assert_eq!(applied.count(), 1);
    eventually(Duration::from_secs(3), "the removal recorded", || async {
        service
            .observations()
            .await
            .iter()
            .any(|o| matches!(o, Observation::BindingRemoved(r) if r.grant_id == grant_id && r.cause == "ended"))
    })
    .await;
    finish(&reconciler, service, cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_removes_the_binding_within_a_second_and_overlapping_grants_stand_alone() {
    let (_dir, cluster, service, reconciler) = scene().await;

    let short = service.grant(&cluster, "alice", &["storefront"], "3s").await;
    let long = service.grant(&cluster, "alice", &["storefront"], "1h").await;
    eventually(Duration::from_secs(5), "both bindings", || async { cluster.managed().await.len() == 2 }).await;
    let short_id = short.to_string();
    let removal = eventually(Duration::from_secs(6), "the short grant's removal", || async {
        service
            .observations()
            .await
            .iter()
            .any(|o| matches!(o, Observation::BindingRemoved(r) if r.grant_id == short_id))
    })
    .await;
    println!("short grant removed after {removal:?}");
    let observations = service.observations().await;
    let latency = observations
        .iter()
        .find_map(|o| match o {
            Observation::BindingRemoved(r) if r.grant_id == short_id => Some((r.cause.clone(), r.latency_ms)),
            _ => None,
        })
        .unwrap();
    assert_eq!(latency.0, "expired");
    assert!((0..1000).contains(&latency.1), "removed {} ms after expiry", latency.1);
    // The long grant still justifies access: ending one grant took nothing from the other.
    assert!(cluster.can_patch("alice", "storefront").await);
    let remaining = cluster.managed().await;
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0].metadata.name.as_deref(), Some(desired::object_name(&long.to_string()).as_str()));

    let revoke = Command::Revoke { grant: long, reason: "incident over".into() };
    service.workflow.execute(revoke, person("root", "admins"), random_seed()).await.unwrap();
    eventually(Duration::from_secs(2), "access gone after revocation", || async {
        !cluster.can_patch("alice", "storefront").await
    })
    .await;
    finish(&reconciler, service, cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_restored_or_removed_and_recorded_and_standing_access_reported() {
    let (_dir, cluster, service, reconciler) = scene().await;
    let grant = service.grant(&cluster, "alice", &["storefront"], "1h").await;
    let name = desired::object_name(&grant.to_string());
    eventually(Duration::from_secs(5), "the binding", || async { cluster.managed().await.len() == 1 }).await;

    // Someone adds themselves to the grant's binding: restored.
    let bindings = Api::<RoleBinding>::namespaced(cluster.admin.clone(), &cluster.namespace);
    let widen = json!({"subjects": [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"},
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"},
    ]});
    bindings.patch(&name, &PatchParams::default(), &Patch::Merge(&widen)).await.unwrap();
    eventually(Duration::from_secs(5), "the edit undone", || async {
        let b = bindings.get(&name).await.unwrap();
        b.subjects.unwrap_or_default().len() == 1
    })
    .await;
    assert!(!cluster.can_patch("mallory", "storefront").await);

    // A managed-looking binding no grant justifies: removed.
    let forged: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "portcullis-forged", "namespace": cluster.namespace,
                     "labels": {"app.kubernetes.io/managed-by": "portcullis"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}],
    }))
    .unwrap();
    bindings.create(&PostParams::default(), &forged).await.unwrap();
    eventually(Duration::from_secs(5), "the forged binding removed", || async {
        bindings.get_opt("portcullis-forged").await.unwrap().is_none()
    })
    .await;

    // Standing access made outside Portcullis: reported, not touched.
    let role: Role = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "route-editors", "namespace": cluster.namespace},
        "rules": [{"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["get", "patch"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(cluster.admin.clone(), &cluster.namespace)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let standing: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "bob-edits-routes", "namespace": cluster.namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "route-editors"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}],
    }))
    .unwrap();
    bindings.create(&PostParams::default(), &standing).await.unwrap();
    let key = format!("RoleBinding/{}/bob-edits-routes", cluster.namespace);
    eventually(Duration::from_secs(5), "standing access reported", || async {
        reconciler.standing_access("e2e").unwrap_or_default().iter().any(|b| b.key() == key)
    })
    .await;
    assert!(bindings.get_opt("bob-edits-routes").await.unwrap().is_some(), "reported, not touched");

    eventually(Duration::from_secs(3), "drift and standing access recorded", || async {
        let observations = service.observations().await;
        let restored =
            observations.iter().any(|o| matches!(o, Observation::Drift(d) if d.action == "restored" && d.name == name));
        let removed = observations
            .iter()
            .any(|o| matches!(o, Observation::Drift(d) if d.action == "removed" && d.name == "portcullis-forged"));
        let standing = observations
            .iter()
            .any(|o| matches!(o, Observation::StandingAccess(s) if s.found.iter().any(|b| b.key() == key)));
        restored && removed && standing
    })
    .await;
    finish(&reconciler, service, cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_changes_are_recorded_with_a_diff_and_the_grants_that_covered_them() {
    let (_dir, cluster, service, reconciler) = scene().await;
    let grant = service.grant(&cluster, "alice", &["storefront"], "1h").await;
    eventually(Duration::from_secs(5), "the grant's binding", || cluster.can_patch("alice", "storefront")).await;

    let as_alice = client(&cluster.kubeconfig, cluster.context.clone(), Some("alice")).await;
    let change = json!({"spec": {"defaultBackend": {"service": {"name": "web-v2", "port": {"number": 80}}}}});
    Api::<Ingress>::namespaced(as_alice, &cluster.namespace)
        .patch("storefront", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    let grant_id = grant.to_string();
    eventually(Duration::from_secs(5), "the change recorded", || async {
        service.observations().await.iter().any(|o| {
            matches!(o, Observation::RouteChanged(r)
                if r.name == "storefront" && r.change == "modified"
                    && r.grants == vec![grant_id.clone()]
                    && r.diff.iter().any(|d| d.path == "/defaultBackend/service/name" && d.to.as_deref() == Some("\"web-v2\"")))
        })
    })
    .await;
    let observations = service.observations().await;
    let added =
        observations.iter().filter(|o| matches!(o, Observation::RouteChanged(r) if r.change == "added")).count();
    assert_eq!(added, 2, "both Ingresses were recorded when first seen");
    reconciler.shutdown().await;

    // A restart records nothing twice, and a change made while down is caught on return.
    let before = service.observations().await.len();
    let change = json!({"spec": {"defaultBackend": {"service": {"name": "web-v3", "port": {"number": 80}}}}});
    Api::<Ingress>::namespaced(cluster.admin.clone(), &cluster.namespace)
        .patch("checkout", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    let restarted = start_reconciler(&cluster, &service, "replica-a").await;
    eventually(Duration::from_secs(10), "the change made while down", || async {
        service
            .observations()
            .await
            .iter()
            .any(|o| matches!(o, Observation::RouteChanged(r) if r.name == "checkout" && r.change == "modified"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<Observation> = service.observations().await.into_iter().skip(before).collect();
    let repeated = after.iter().filter(|o| matches!(o, Observation::BindingApplied(_))).count()
        + after.iter().filter(|o| matches!(o, Observation::RouteChanged(r) if r.name == "storefront")).count();
    assert_eq!(repeated, 0, "nothing recorded twice after a restart: {after:?}");
    restarted.shutdown().await;
    service.stop().await;
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_hand_over_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path()).await;
    let service = Service::start().await;
    let a = start_reconciler(&cluster, &service, "replica-a").await;
    eventually(Duration::from_secs(10), "a leads", || leading(&a)).await;
    let b = start_reconciler(&cluster, &service, "replica-b").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!b.status()[0].1.leader, "one leader at a time");
    a.shutdown().await;
    let took = eventually(Duration::from_secs(5), "b takes over", || leading(&b)).await;
    println!("hand-over took {took:?}");
    service.grant(&cluster, "alice", &["storefront"], "1h").await;
    eventually(Duration::from_secs(5), "the new leader applies grants", || cluster.can_patch("alice", "storefront"))
        .await;
    b.shutdown().await;
    service.stop().await;
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_removes_on_time_while_the_ledger_is_down() {
    let (_dir, cluster, service, reconciler) = scene().await;
    service.grant(&cluster, "alice", &["storefront"], "3s").await;
    eventually(Duration::from_secs(5), "the binding", || cluster.can_patch("alice", "storefront")).await;
    let expires = Instant::now() + Duration::from_secs(2);
    // The store goes away: nothing more can be recorded or read from the ledger.
    service.ledger.close().await;
    eventually(Duration::from_secs(5), "access gone though the ledger is down", || async {
        !cluster.can_patch("alice", "storefront").await
    })
    .await;
    let late = Instant::now().saturating_duration_since(expires);
    println!("removed about {late:?} after expiry with the ledger closed");
    assert!(late < Duration::from_millis(1500), "removed {late:?} after expiry");
    drop(reconciler);
    service.stop().await;
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_delays_removal_only_until_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path()).await;
    let Some(server) = cluster.server("an_api_server_outage_delays_removal_only_until_it_returns") else { return };
    let service = Service::start().await;
    let reconciler = start_reconciler(&cluster, &service, "replica-a").await;
    eventually(Duration::from_secs(10), "leadership", || leading(&reconciler)).await;
    // Failures while applying are retried.
    server.fail_next(3, 500);
    let grant = service.grant(&cluster, "alice", &["storefront"], "2s").await;
    let name = desired::object_name(&grant.to_string());
    eventually(Duration::from_secs(5), "applied despite 500s", || async {
        server.get("rbac.authorization.k8s.io/v1", "rolebindings", Some(&cluster.namespace), &name).is_some()
    })
    .await;
    server.set_down(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(server.get("rbac.authorization.k8s.io/v1", "rolebindings", Some(&cluster.namespace), &name).is_some());
    server.set_down(false);
    let took = eventually(Duration::from_secs(2), "removed within 2 s of the API's return", || async {
        server.get("rbac.authorization.k8s.io/v1", "rolebindings", Some(&cluster.namespace), &name).is_none()
    })
    .await;
    println!("removed {took:?} after the API server came back");
    // Drops the watches as well: the cache recovers and nothing is recorded twice.
    server.drop_watches();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grant_id = grant.to_string();
    eventually(Duration::from_secs(3), "the removal recorded once", || async {
        let observations = service.observations().await;
        observations.iter().filter(|o| matches!(o, Observation::BindingRemoved(r) if r.grant_id == grant_id)).count()
            == 1
    })
    .await;
    finish(&reconciler, service, cluster).await;
}

/// POSTs to the service's router as `token`; the status and JSON body.
async fn post(router: &axum::Router, token: &str, path: &str) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let request = axum::http::Request::builder()
        .method("POST")
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("idempotency-key", "take-it-once")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let no_store = response.headers().get("cache-control").is_some_and(|v| v == "no-store");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if status == 200 {
        assert!(no_store, "a credential is never cached");
    }
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_mode_hands_a_grant_token_out_once_and_revocation_kills_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path()).await;
    let service = Service::start().await;
    let reconciler = Arc::new(start_reconciler(&cluster, &service, "replica-a").await);
    eventually(Duration::from_secs(10), "leadership", || leading(&reconciler)).await;
    let tokens_path = dir.path().join("tokens");
    let alice = portcullis::auth::create(&tokens_path, "alice", &["engineering".to_string()]).unwrap();
    let bob = portcullis::auth::create(&tokens_path, "bob", &["engineering".to_string()]).unwrap();
    let tokens = portcullis::auth::Tokens::load(&tokens_path).unwrap();
    let mut state = portcullis::api::AppState::new(service.ledger.clone(), Some(Arc::clone(&service.workflow)), tokens);
    state.reconciler = Some(Arc::clone(&reconciler));
    let router = portcullis::api::app(Arc::new(state));

    let grant = service.grant_access(&cluster, "alice", &["storefront"], "1h", Access::Manage).await;
    let name = desired::object_name(&grant.to_string());
    let path = format!("/v1/grants/{grant}/kubeconfig");
    let (status, taken) = eventually_taken(&router, &alice, &path).await;
    assert_eq!(status, 200, "{taken}");
    let (status, again) = post(&router, &alice, &path).await;
    assert_eq!(status, 409, "handed out once, even to a retry with the same key: {again}");
    let (status, theirs) = post(&router, &bob, &path).await;
    assert_eq!(status, 403, "only the requester: {theirs}");
    assert_eq!(taken["service_account"], format!("{}/{name}", cluster.namespace));

    // The person's own identity has no access; the handed-out kubeconfig has exactly the grant's.
    assert!(!cluster.can_patch("alice", "storefront").await);
    let file = dir.path().join("grant.kubeconfig");
    std::fs::write(&file, taken["kubeconfig"].as_str().unwrap()).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&file).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    let as_grant = kube::Client::try_from(config).unwrap();
    let ingresses = Api::<Ingress>::namespaced(as_grant, &cluster.namespace);
    let touch = json!({"metadata": {"annotations": {"e2e.portcullis.dev/touched": "yes"}}});
    ingresses
        .patch("storefront", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .expect("the grant's token edits its Ingress");
    let other = ingresses.patch("checkout", &PatchParams::default(), &Patch::Merge(&touch)).await;
    assert!(matches!(&other, Err(kube::Error::Api(s)) if s.code == 403), "{other:?}");

    let revoke = Command::Revoke { grant, reason: "done".into() };
    service.workflow.execute(revoke, person("root", "admins"), random_seed()).await.unwrap();
    eventually(Duration::from_secs(5), "the token dead with its ServiceAccount", || async {
        matches!(ingresses.patch("storefront", &PatchParams::default(), &Patch::Merge(&touch)).await,
            Err(kube::Error::Api(s)) if s.code == 401 || s.code == 403)
    })
    .await;
    let accounts =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(cluster.admin.clone(), &cluster.namespace);
    // The binding goes first (403), then the ServiceAccount with every token of it.
    eventually(Duration::from_secs(5), "the ServiceAccount deleted", || async {
        accounts.get_opt(&name).await.unwrap().is_none()
    })
    .await;
    // The ledger records that the credential was taken, never the token.
    let head = service.ledger.head().size;
    let entries = service.ledger.entries(0, head).await.unwrap();
    let token = taken["kubeconfig"]
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .to_string();
    assert!(entries.iter().all(|e| !String::from_utf8_lossy(e).contains(&token)));
    assert!(entries.iter().any(|e| String::from_utf8_lossy(e).contains("grant.credential_issued")));
    drop(router);
    finish(&reconciler, service, cluster).await;
}

/// Takes the credential once the reconciler has made the ServiceAccount (503 until then).
async fn eventually_taken(router: &axum::Router, token: &str, path: &str) -> (u16, serde_json::Value) {
    let start = Instant::now();
    loop {
        let (status, body) = post(router, token, path).await;
        if status != 503 || start.elapsed() > Duration::from_secs(5) {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client command of the built binary against `server` as `token`.
fn cli(dir: &std::path::Path, server: &str, token: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::cli::BIN)
        .args(args)
        .env("PORTCULLIS_SERVER", server)
        .env("PORTCULLIS_TOKEN", token)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_cluster_in_its_config_makes_grants_real_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path()).await;
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let context = cluster.context.as_deref().map(|c| format!("context = \"{c}\"\n")).unwrap_or_default();
    let config = format!(
        "data_dir = \"data\"\npolicy = \"{}\"\n\n[reconciler]\nlease_namespace = \"{ns}\"\nlease_duration_secs = 2\n\n\
         [[reconciler.clusters]]\nname = \"e2e\"\nkubeconfig = \"{}\"\n{context}namespaces = [\"{ns}\"]\n",
        policy.display(),
        cluster.kubeconfig.display(),
        ns = cluster.namespace,
    );
    std::fs::write(dir.path().join("portcullis.toml"), config).unwrap();
    let out = std::process::Command::new(crate::cli::BIN)
        .args(["token", "create", "--data-dir", "data", "--sub", "alice", "--groups", "engineering"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let alice = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let port = crate::cli::free_port();
    let mut serve = std::process::Command::new(crate::cli::BIN)
        .args(["serve", "--config", "portcullis.toml", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    crate::cli::wait_ready(port);
    let server = format!("http://127.0.0.1:{port}");

    let ns = cluster.namespace.clone();
    let request = [
        "request",
        "--cluster",
        "e2e",
        "--namespace",
        &ns,
        "--kind",
        "ingresses",
        "--name",
        "storefront",
        "--access",
        "manage",
        "--duration",
        "1h",
        "--json",
    ];
    let out = cli(dir.path(), &server, &alice, &request);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let grant = answer["grant_id"].as_str().expect("auto-approved into a grant").to_string();

    // The credential is taken once the reconciler has made the ServiceAccount (exit 7 while the service answers 503).
    let file = dir.path().join("grant.kubeconfig");
    let start = Instant::now();
    loop {
        let out = cli(dir.path(), &server, &alice, &["kubeconfig", &grant, "--output", file.to_str().unwrap()]);
        if out.status.success() {
            break;
        }
        assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!file.exists(), "a failed take leaves no file behind");
        assert!(start.elapsed() < Duration::from_secs(10), "{}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let again = cli(dir.path(), &server, &alice, &["kubeconfig", &grant]);
    assert_eq!(again.status.code(), Some(5), "handed out once");
    let kubeconfig = kube::config::Kubeconfig::read_from(&file).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    let touch = json!({"metadata": {"annotations": {"e2e.portcullis.dev/touched": "yes"}}});
    Api::<Ingress>::namespaced(kube::Client::try_from(config).unwrap(), &ns)
        .patch("storefront", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .expect("the handed-out kubeconfig edits the granted Ingress");
    let (status, body) = crate::cli::get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&body);
    assert!(metrics.contains("portcullis_cluster_leader{cluster=\"e2e\"} 1"), "{metrics}");
    assert!(metrics.contains("portcullis_revocation_latency_seconds_count{cluster=\"e2e\"}"), "{metrics}");

    // A clean stop hands the Lease back at once.
    // SAFETY: sending SIGTERM to a child process we own.
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    assert!(serve.wait().unwrap().success());
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(cluster.admin.clone(), &ns);
    let lease = leases.get("portcullis-reconciler-e2e").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity, None, "released on a clean stop");
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cluster_is_reconciled_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path()).await;
    let Some(_) = cluster.server("each_cluster_is_reconciled_on_its_own") else { return };
    // A second cluster, down from the start: the first is reconciled regardless.
    let other = TestApiServer::start().await;
    let other_kubeconfig = dir.path().join("other.kubeconfig");
    other.write_kubeconfig(&other_kubeconfig, "other");
    other.set_down(true);
    let service = Service::start().await;
    let mut config = cluster.config();
    config.clusters.push(ClusterConfig {
        name: "e2e-other".into(),
        kubeconfig: Some(other_kubeconfig),
        context: Some("other".into()),
        subject_kind: SubjectKind::Group,
        subject_template: "team:{sub}".into(),
        namespaces: Vec::new(),
    });
    let reconciler = Reconciler::start(&config, Arc::clone(&service.workflow), "replica-a".into()).await.unwrap();
    let first_leads = || async { reconciler.status().iter().any(|(name, s)| name == "e2e" && s.leader && s.synced) };
    eventually(Duration::from_secs(10), "the first cluster leads", first_leads).await;
    service.grant(&cluster, "alice", &["storefront"], "1h").await;
    eventually(Duration::from_secs(5), "applied in the first cluster", || cluster.can_patch("alice", "storefront"))
        .await;
    let status = reconciler.status();
    let (_, down) = status.iter().find(|(name, _)| name == "e2e-other").unwrap();
    assert!(!down.synced, "the unreachable cluster is reported as not synced");
    assert_eq!(other.list("rbac.authorization.k8s.io/v1", "rolebindings", None).len(), 0);
    // It comes back and is reconciled too (nothing of the first cluster's grant lands there).
    other.set_down(false);
    eventually(Duration::from_secs(10), "the second cluster syncs", || async {
        reconciler.status().iter().any(|(name, s)| name == "e2e-other" && s.leader && s.synced)
    })
    .await;
    assert_eq!(other.list("rbac.authorization.k8s.io/v1", "rolebindings", None).len(), 0);
    finish(&reconciler, service, cluster).await;
}
