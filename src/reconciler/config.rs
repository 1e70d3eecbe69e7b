//! The `[reconciler]` section of the config file: which clusters grants are
//! made real in, and how a person's identity becomes a Kubernetes subject.
//!
//! ```toml
//! [reconciler]
//! lease_namespace = "portcullis"          # where each cluster's Lease lives (leader election)
//! lease_name = "portcullis-reconciler"
//! revoke_sla_ms = 1000                    # a removal later than this after expiry is reported
//! lease_duration_secs = 15                # a leader silent this long is replaced
//! standing_scan_secs = 60                 # how often bindings made outside Portcullis are looked for
//!
//! [[reconciler.clusters]]
//! name = "prod"                           # the `cluster` of requests
//! kubeconfig = "/etc/portcullis/kubeconfig" # omitted: the in-cluster service account
//! context = "prod"                        # omitted: the kubeconfig's current context
//! subject_kind = "User"                   # or "Group"
//! subject_template = "oidc:{sub}"         # {sub}: the authenticated subject of the requester
//! namespaces = ["shop", "payments"]       # watched for route changes and standing access
//! ```

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReconcilerConfig {
    #[serde(default = "default_lease_namespace")]
    pub lease_namespace: String,
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    #[serde(default = "default_sla")]
    pub revoke_sla_ms: u64,
    /// How long a Lease holds without renewal before another replica may take it.
    #[serde(default = "default_lease_duration")]
    pub lease_duration_secs: u64,
    /// How often bindings made outside Portcullis are looked for.
    #[serde(default = "default_standing_scan")]
    pub standing_scan_secs: u64,
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
}

/// How a grant's requester is named in the cluster's RoleBinding.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum SubjectKind {
    User,
    Group,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    #[serde(default = "default_subject_kind")]
    pub subject_kind: SubjectKind,
    #[serde(default = "default_subject_template")]
    pub subject_template: String,
    #[serde(default)]
    pub namespaces: Vec<String>,
}

fn default_lease_namespace() -> String {
    "portcullis".into()
}

fn default_lease_name() -> String {
    "portcullis-reconciler".into()
}

fn default_sla() -> u64 {
    1000
}

fn default_lease_duration() -> u64 {
    15
}

fn default_standing_scan() -> u64 {
    60
}

fn default_subject_kind() -> SubjectKind {
    SubjectKind::User
}

fn default_subject_template() -> String {
    "{sub}".into()
}

impl ClusterConfig {
    /// The Kubernetes subject name of the authenticated subject `sub`.
    pub fn subject_name(&self, sub: &str) -> String {
        self.subject_template.replace("{sub}", sub)
    }
}

impl ReconcilerConfig {
    /// Checks names and values; the error names the cluster and the field.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let dns_label = |field: &str, value: &str| {
            portcullis_projections::types::Name::label(field, value).map(|_| ()).map_err(|e| e.to_string())
        };
        dns_label("reconciler.lease_namespace", &self.lease_namespace)?;
        portcullis_projections::types::Name::subdomain("reconciler.lease_name", &self.lease_name)
            .map_err(|e| e.to_string())?;
        if !(1..=3_600_000).contains(&self.revoke_sla_ms) {
            return Err(format!("reconciler.revoke_sla_ms must be 1 to 3600000, not {}", self.revoke_sla_ms));
        }
        if !(2..=300).contains(&self.lease_duration_secs) {
            return Err(format!("reconciler.lease_duration_secs must be 2 to 300, not {}", self.lease_duration_secs));
        }
        if !(1..=86_400).contains(&self.standing_scan_secs) {
            return Err(format!("reconciler.standing_scan_secs must be 1 to 86400, not {}", self.standing_scan_secs));
        }
        let mut seen = std::collections::BTreeSet::new();
        for cluster in &self.clusters {
            dns_label("reconciler.clusters.name", &cluster.name)?;
            if !seen.insert(&cluster.name) {
                return Err(format!("reconciler.clusters: cluster {:?} is configured twice", cluster.name));
            }
            if !cluster.subject_template.contains("{sub}") {
                return Err(format!(
                    "reconciler.clusters {:?}: subject_template {:?} must contain {{sub}}",
                    cluster.name, cluster.subject_template
                ));
            }
            for namespace in &cluster.namespaces {
                dns_label("reconciler.clusters.namespaces", namespace)
                    .map_err(|e| format!("reconciler.clusters {:?}: {e}", cluster.name))?;
            }
        }
        Ok(())
    }
}
