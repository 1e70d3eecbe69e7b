//! The cluster reconciler: makes each active grant real as a Role and a
//! RoleBinding in its cluster, takes them away on time, and records what it
//! observed (applications, removals with their latency, drift, route changes,
//! standing access) as ledger events. See `run` for the tasks of one cluster.

pub mod config;
pub mod desired;
mod lease;
pub mod routes;
mod run;
pub mod standing;

use crate::workflow::Workflow;
use anyhow::Context as _;
use config::{ClusterConfig, ReconcilerConfig};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use portcullis_format::time::Timestamp;
use portcullis_projections::cluster::StandingBinding;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use run::{LATENCY_BUCKETS, Metrics, Status, actor};

/// The running reconciler of every configured cluster.
pub struct Reconciler {
    clusters: Vec<Arc<run::Cluster>>,
    stop: watch::Sender<bool>,
    leases: std::sync::Mutex<Vec<JoinHandle<()>>>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// The two clients of a cluster: one for actions, whose calls time out (so
/// a hung API server is retried, not waited on forever), and one for
/// long-running watches.
#[derive(Clone)]
pub struct Clients {
    pub act: Client,
    pub watch: Client,
    /// The API server's URL and the certificates that vouch for it (DER), for handed-out kubeconfigs.
    pub server: String,
    pub root_certs: Vec<Vec<u8>>,
}

/// How long one API call may take before it is abandoned and retried.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection settings of `cluster`: its kubeconfig (and context), or the in-cluster service account.
///
/// # Errors
/// When the kubeconfig cannot be read or names no usable context.
pub async fn config_for(cluster: &ClusterConfig) -> anyhow::Result<Config> {
    match &cluster.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cluster {}: reading {}", cluster.name, path.display()))?;
            let options = KubeConfigOptions { context: cluster.context.clone(), ..KubeConfigOptions::default() };
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| format!("cluster {}: kubeconfig {}", cluster.name, path.display()))
        }
        None => Config::incluster()
            .with_context(|| format!("cluster {}: no kubeconfig given and not running in a cluster", cluster.name)),
    }
}

/// The clients of `cluster`.
///
/// # Errors
/// As [`config_for`], or when a client cannot be built from the settings.
pub async fn clients_for(cluster: &ClusterConfig) -> anyhow::Result<Clients> {
    let config = config_for(cluster).await?;
    let server = config.cluster_url.to_string().trim_end_matches('/').to_string();
    let root_certs = config.root_cert.clone().unwrap_or_default();
    let mut act = config.clone();
    act.connect_timeout = Some(CALL_TIMEOUT);
    act.read_timeout = Some(CALL_TIMEOUT);
    act.write_timeout = Some(CALL_TIMEOUT);
    let mut watch = config;
    watch.connect_timeout = Some(CALL_TIMEOUT);
    // A watch ends server-side after at most 290 s (kube's default timeoutSeconds):
    // silence for longer means a dead connection.
    watch.read_timeout = Some(Duration::from_secs(330));
    let build =
        |c: Config| Client::try_from(c).with_context(|| format!("cluster {}: building the client", cluster.name));
    Ok(Clients { act: build(act)?, watch: build(watch)?, server, root_certs })
}

/// This replica's name in leader election: `POD_NAME` when set (the
/// Deployment sets it), else the host name and process id.
pub fn default_identity() -> String {
    std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        format!("{}-{}", if host.is_empty() { "portcullis" } else { &host }, std::process::id())
    })
}

/// A grant's ServiceAccount token, as a kubeconfig for its requester.
pub struct IssuedCredential {
    pub kubeconfig: String,
    pub service_account: String,
    pub expires_at: Timestamp,
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("cluster {0:?} is not configured here")]
    UnknownCluster(String),
    #[error("the grant's ServiceAccount is not in the cluster yet; retry in a moment")]
    NotApplied,
    #[error("the cluster's API server refused the token request: {0}")]
    Api(String),
}

/// The shortest token lifetime a Kubernetes API server issues.
pub const MIN_TOKEN_SECS: i64 = 600;

impl Drop for Reconciler {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for task in self.tasks.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            task.abort();
        }
    }
}

impl Reconciler {
    /// Builds a client per cluster and starts its tasks.
    ///
    /// # Errors
    /// When a cluster's kubeconfig cannot be used (an unreachable API server is not an error: it is retried).
    pub async fn start(
        config: &ReconcilerConfig,
        workflow: Arc<Workflow>,
        identity: String,
    ) -> anyhow::Result<Reconciler> {
        let (stop, stop_rx) = watch::channel(false);
        let (mut clusters, mut leases, mut all_tasks) = (Vec::new(), Vec::new(), Vec::new());
        for cluster in &config.clusters {
            let client = clients_for(cluster).await?;
            let (runtime, outbox) =
                run::Cluster::new(cluster.clone(), config.clone(), identity.clone(), client, Arc::clone(&workflow));
            let (lease, tasks) = runtime.spawn(outbox, stop_rx.clone());
            leases.push(lease);
            all_tasks.extend(tasks);
            clusters.push(runtime);
        }
        Ok(Reconciler {
            clusters,
            stop,
            leases: std::sync::Mutex::new(leases),
            tasks: std::sync::Mutex::new(all_tasks),
        })
    }

    /// Requests a token for the ServiceAccount of `grant` (credential mode) that
    /// expires with the grant (Kubernetes issues nothing shorter than ten
    /// minutes; the ServiceAccount is deleted when the grant ends, which
    /// invalidates the token at once), and wraps it in a kubeconfig.
    ///
    /// # Errors
    /// [`IssueError`].
    pub async fn issue_credential(
        &self,
        grant: &crate::domain::state::Grant,
        now: Timestamp,
    ) -> Result<IssuedCredential, IssueError> {
        let cluster = grant.target.cluster.to_string();
        let runtime = self
            .clusters
            .iter()
            .find(|c| c.config.name == cluster)
            .ok_or(IssueError::UnknownCluster(cluster.clone()))?;
        let name = desired::object_name(&grant.id.to_string());
        let namespace = grant.target.namespace.to_string();
        let remaining = (grant.expires_at.unix_micros() - now.unix_micros()) / 1_000_000;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(remaining.max(MIN_TOKEN_SECS)),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(runtime.clients.act.clone(), &namespace);
        let issued = match accounts.create_token_request(&name, &kube::api::PostParams::default(), &request).await {
            Ok(issued) => issued,
            Err(kube::Error::Api(status)) if status.code == 404 => return Err(IssueError::NotApplied),
            Err(e) => return Err(IssueError::Api(e.to_string())),
        };
        let status = issued.status.ok_or_else(|| IssueError::Api("no token in the answer".into()))?;
        let expires_at =
            Timestamp::from_unix_micros(status.expiration_timestamp.0.as_microsecond()).unwrap_or(grant.expires_at);
        let kubeconfig = kubeconfig_text(&runtime.clients, &cluster, &namespace, &name, &status.token);
        Ok(IssuedCredential { kubeconfig, service_account: format!("{namespace}/{name}"), expires_at })
    }

    /// The configured clusters' names with their status.
    pub fn status(&self) -> Vec<(String, Status)> {
        self.clusters.iter().map(|c| (c.config.name.clone(), crate::lock(&c.status).clone())).collect()
    }

    /// The standing access last found in `cluster`, or None for an unknown cluster.
    pub fn standing_access(&self, cluster: &str) -> Option<Vec<StandingBinding>> {
        self.status().into_iter().find(|(name, _)| name == cluster).map(|(_, s)| s.standing)
    }

    /// Appends the reconciler's Prometheus metrics to `out`.
    pub fn render_metrics(&self, out: &mut String) {
        let status = self.status();
        let counters = [
            (
                "portcullis_bindings_applied_total",
                "Grant bindings applied.",
                (|m: &Metrics| m.applied) as fn(&Metrics) -> u64,
            ),
            ("portcullis_bindings_removed_total", "Grant bindings removed.", |m| m.removed),
            ("portcullis_bindings_removed_late_total", "Removals later than the revocation SLA.", |m| m.late),
            ("portcullis_drift_total", "Managed objects restored or removed for drift.", |m| m.drift),
            ("portcullis_cluster_api_errors_total", "Failed calls to cluster API servers.", |m| m.api_errors),
        ];
        for (name, help, get) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (cluster, s) in &status {
                let _ = writeln!(out, "{name}{{cluster=\"{cluster}\"}} {}", get(&s.metrics));
            }
        }
        let _ = writeln!(out, "# HELP portcullis_cluster_leader 1 when this replica leads the cluster's reconciler.");
        let _ = writeln!(out, "# TYPE portcullis_cluster_leader gauge");
        for (cluster, s) in &status {
            let _ = writeln!(out, "portcullis_cluster_leader{{cluster=\"{cluster}\"}} {}", u8::from(s.leader));
        }
        let name = "portcullis_revocation_latency_seconds";
        let _ = writeln!(out, "# HELP {name} From when access was due to end to when its binding was gone.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (cluster, s) in &status {
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(s.metrics.latency_buckets) {
                cumulative += count;
                let _ = writeln!(out, "{name}_bucket{{cluster=\"{cluster}\",le=\"{bound}\"}} {cumulative}");
            }
            let m = &s.metrics;
            let _ = writeln!(out, "{name}_bucket{{cluster=\"{cluster}\",le=\"+Inf\"}} {}", m.latency_count);
            let _ = writeln!(out, "{name}_sum{{cluster=\"{cluster}\"}} {}", m.latency_sum);
            let _ = writeln!(out, "{name}_count{{cluster=\"{cluster}\"}} {}", m.latency_count);
        }
    }

    /// Stops: releases the leases (so another replica takes over at once),
    /// lets queued observations reach the ledger for up to two seconds, and
    /// ends every task.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let leases = std::mem::take(&mut *crate::lock(&self.leases));
        for lease in leases {
            let _ = tokio::time::timeout(Duration::from_secs(5), lease).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.clusters.iter().any(|c| c.outbox_len() > 0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in crate::lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

/// A kubeconfig that reaches `server` as the holder of `token`.
fn kubeconfig_text(clients: &Clients, cluster: &str, namespace: &str, user: &str, token: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut pem = String::new();
    for der in &clients.root_certs {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = b64.encode(der);
        for line in encoded.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    let mut cluster_entry = serde_json::json!({"server": clients.server});
    if !pem.is_empty() {
        cluster_entry["certificate-authority-data"] = serde_json::Value::String(b64.encode(pem));
    }
    let context = format!("portcullis-{cluster}");
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": cluster_entry}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user, "namespace": namespace}}],
        "current-context": context,
    });
    serde_yaml_ng::to_string(&doc).unwrap_or_default()
}
