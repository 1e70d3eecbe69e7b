//! `TestApiServer`: a Kubernetes-API-compatible test server written for Portcullis's
//! tests. It is not a Kubernetes API server; it speaks enough of the Kubernetes REST API,
//! the way a real one does, for kube-rs clients (the reconciler, `kube::runtime::watcher`)
//! to run against it end to end, and it lets tests inject faults.
//!
//! What it serves (see the [Kubernetes API concepts](https://kubernetes.io/docs/reference/using-api/api-concepts/)):
//!
//! - Namespaces, ServiceAccounts, Secrets, ConfigMaps; Roles, RoleBindings, ClusterRoles,
//!   ClusterRoleBindings; Ingresses; Gateway API HTTPRoutes, GRPCRoutes, Gateways,
//!   GatewayClasses; Leases; events.k8s.io Events (`resources.rs`). Objects get a uid,
//!   creationTimestamp, a resourceVersion from one global counter, a generation bumped when
//!   anything outside metadata and status changes, and managedFields.
//! - get, list, watch (history replay from a resourceVersion, bookmarks, `410 Expired` after
//!   [`TestApiServer::compact`], `timeoutSeconds`, streaming lists with
//!   `sendInitialEvents`), create, replace, merge/strategic/JSON patch, server-side apply
//!   with field managers and conflicts, delete (finalizers honoured), deletecollection,
//!   label and field selectors, `dryRun=All`, the `status` subresource.
//! - Bearer-token authentication (the admin token, ServiceAccount tokens from the
//!   TokenRequest subresource), impersonation, and RBAC authorization over the stored
//!   RBAC objects, also offered as SubjectAccessReview.
//! - Discovery (`/version`, `/api`, `/apis`, group versions, aggregated discovery v2).
//!
//! Where it knowingly differs from a real API server: lists ignore `limit` and return
//! everything; lists are atomic in server-side apply (no merge keys); strategic merge patch
//! is a merge patch; namespaces need not exist and deleting one deletes nothing in it;
//! TokenRequest accepts any positive `expirationSeconds` (a real server refuses below 600);
//! RBAC escalation checks (`escalate`/`bind`) and role aggregation are not done.

mod auth;
mod discovery;
mod fields;
mod http;
mod ops;
mod patch;
mod resources;
mod select;
mod status;
mod store;
mod watch;

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

/// One API request as the server answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub content_type: Option<String>,
    /// The HTTP status answered (200 for a watch that started streaming).
    pub status: u16,
    /// The user the request was authorized as (after impersonation); `None` when it was
    /// not authenticated (or failed by injection before authentication).
    pub user: Option<String>,
}

/// Faults and timing knobs.
struct Faults {
    fail_remaining: usize,
    fail_status: u16,
    delay: Duration,
    bookmark_interval: Duration,
}

/// What the server's tasks share.
struct Shared {
    address: SocketAddr,
    store: Mutex<store::Store>,
    faults: Mutex<Faults>,
    requests: Mutex<Vec<RequestRecord>>,
    paused: signal::Sender<bool>,
    down: signal::Sender<bool>,
    stopped: signal::Sender<bool>,
}

impl Shared {
    fn bookmark_interval(&self) -> Duration {
        self.faults.lock().expect("faults lock").bookmark_interval
    }

    /// The status to answer if this request is one of the `fail_next` ones.
    fn take_injected_failure(&self) -> Option<u16> {
        let mut faults = self.faults.lock().expect("faults lock");
        (faults.fail_remaining > 0).then(|| {
            faults.fail_remaining -= 1;
            faults.fail_status
        })
    }
}

/// A Kubernetes-API-compatible test server written for Portcullis's tests, serving
/// plain HTTP on `127.0.0.1` from background tokio tasks until dropped.
pub struct TestApiServer {
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl TestApiServer {
    /// The bearer token of a cluster admin (user `test-admin`, group `system:masters`).
    pub const ADMIN_TOKEN: &'static str = "test-admin-token";

    /// Binds `127.0.0.1:0` and serves in a background task of the current runtime.
    ///
    /// # Panics
    /// If no local port can be bound.
    pub async fn start() -> TestApiServer {
        debug_assert_eq!(Self::ADMIN_TOKEN, auth::ADMIN_TOKEN);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            address,
            store: Mutex::new(store::Store::new()),
            faults: Mutex::new(Faults {
                fail_remaining: 0,
                fail_status: 500,
                delay: Duration::ZERO,
                bookmark_interval: Duration::from_secs(1),
            }),
            requests: Mutex::new(Vec::new()),
            paused: signal::Sender::new(false),
            down: signal::Sender::new(false),
            stopped: signal::Sender::new(false),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        TestApiServer { shared, accept }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.address)
    }

    /// Writes a kubeconfig (YAML) with one cluster, user and context, all named `context`,
    /// pointing at this server with the admin token.
    ///
    /// # Panics
    /// If the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path, context: &str) {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"{context}\"\n  cluster:\n    server: \"{url}\"\n\
             users:\n- name: \"{context}\"\n  user:\n    token: \"{token}\"\n\
             contexts:\n- name: \"{context}\"\n  context:\n    cluster: \"{context}\"\n    user: \"{context}\"\n    namespace: default\n\
             current-context: \"{context}\"\n",
            url = self.url(),
            token = Self::ADMIN_TOKEN,
        );
        std::fs::write(path, kubeconfig).expect("write kubeconfig");
    }

    fn store(&self) -> std::sync::MutexGuard<'_, store::Store> {
        self.shared.store.lock().expect("store lock")
    }

    /// The stored object, bypassing authentication and faults. `api_version` is `v1` or
    /// `group/version`; `plural` the resource (`rolebindings`).
    ///
    /// # Panics
    /// For a resource the server does not serve.
    pub fn get(&self, api_version: &str, plural: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.store().get(resource(api_version, plural), namespace, name).cloned()
    }

    /// The stored objects of a resource in `namespace` (every namespace when `None`).
    ///
    /// # Panics
    /// For a resource the server does not serve.
    pub fn list(&self, api_version: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        self.store().list(resource(api_version, plural), namespace).cloned().collect()
    }

    /// Creates or replaces `object` as another client would (field manager `manager`,
    /// operation Update): bumps resourceVersion, emits watch events, keeps uid and
    /// creationTimestamp of a replaced object. A resourceVersion in `object` is ignored, and
    /// its status is kept as given. Namespaced objects without a namespace go to `default`.
    ///
    /// # Panics
    /// For an unknown apiVersion/kind, or an object a real server would refuse (an invalid
    /// name, a changed roleRef).
    pub fn put(&self, mut object: Value, manager: &str) -> Value {
        let res = store::resource_of(&object).unwrap_or_else(|| panic!("put: unknown apiVersion/kind in {object}"));
        let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("resourceVersion");
        }
        let w = ops::WriteRequest {
            res,
            namespace: res.namespaced.then_some(namespace.as_str()),
            manager,
            subresource: None,
            dry_run: false,
            keep_status: true,
        };
        let mut store = self.store();
        let result = if store.get(res, w.namespace, &name).is_some() {
            ops::replace(&mut store, &w, &name, object)
        } else {
            ops::create(&mut store, &w, object)
        };
        result.unwrap_or_else(|e| panic!("put: {} {}", e.code, e.message))
    }

    /// Deletes an object as a client would (finalizers, if any, only mark it for deletion).
    /// Returns whether it existed.
    ///
    /// # Panics
    /// For a resource the server does not serve.
    pub fn delete(&self, api_version: &str, plural: &str, namespace: Option<&str>, name: &str) -> bool {
        let res = resource(api_version, plural);
        let w = ops::WriteRequest { res, namespace, manager: "", subresource: None, dry_run: false, keep_status: true };
        ops::delete(&mut self.store(), &w, name, &Value::Null).is_ok()
    }

    /// The RBAC decision the server makes for a request by `user` in `groups`.
    /// `resource` may name a subresource as `resource/subresource`.
    #[allow(clippy::too_many_arguments)]
    pub fn allowed(
        &self,
        user: &str,
        groups: &[&str],
        verb: &str,
        api_group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> bool {
        let (resource, subresource) = match resource.split_once('/') {
            Some((resource, sub)) => (resource, Some(sub)),
            None => (resource, None),
        };
        let who = auth::Identity { user: user.into(), groups: groups.iter().map(|g| g.to_string()).collect() };
        let attrs = auth::Attributes { verb, group: api_group, resource, subresource, namespace, name };
        auth::authorize(&self.store(), &who, &attrs)
    }

    /// The next `n` API requests are answered `status` with a Status body (429 and 503
    /// with `Retry-After: 1`). Health endpoints do not count.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut faults = self.shared.faults.lock().expect("faults lock");
        faults.fail_remaining = n;
        faults.fail_status = status;
    }

    /// While paused, requests hang without an answer and open watches deliver nothing;
    /// both resume when unpaused.
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.send_replace(paused);
    }

    /// While down, connections are accepted and closed at once without an answer, open
    /// connections are closed and open watch streams are cut.
    pub fn set_down(&self, down: bool) {
        self.shared.down.send_replace(down);
        if down {
            self.store().cut_watches();
        }
    }

    /// Delays every answer by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.faults.lock().expect("faults lock").delay = delay;
    }

    /// Cuts every open watch stream abruptly (no final event, no final chunk).
    pub fn drop_watches(&self) {
        self.store().cut_watches();
    }

    /// Forgets the watch history: a watch from a resourceVersion issued before this call
    /// then gets one ERROR event (a Status 410 Expired) and ends. Open watches go on.
    pub fn compact(&self) {
        self.store().compact();
    }

    /// How often watches that allow bookmarks get one (default 1 s); applies to each
    /// watch from its next bookmark on.
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.shared.faults.lock().expect("faults lock").bookmark_interval = every;
    }

    /// The API requests answered so far, in order of answer.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests.lock().expect("requests lock").clone()
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.shared.stopped.send_replace(true);
        self.accept.abort();
        if let Ok(mut store) = self.shared.store.lock() {
            store.cut_watches();
        }
    }
}

fn resource(api_version: &str, plural: &str) -> &'static resources::ResourceType {
    resources::by_plural(api_version, plural)
        .unwrap_or_else(|| panic!("the test server does not serve {plural} in {api_version}"))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or similar: try again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if *shared.down.borrow() {
            drop(stream);
            continue;
        }
        tokio::spawn(serve_connection(stream, shared.clone()));
    }
}

/// Serves one connection until it ends, the server goes down or is dropped (then the
/// connection is closed mid-whatever).
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut down = shared.down.subscribe();
    let mut stopped = shared.stopped.subscribe();
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |request| http::handle(shared.clone(), request))
    };
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        _ = down.wait_for(|d| *d) => {}
        _ = stopped.wait_for(|s| *s) => {}
    }
}
