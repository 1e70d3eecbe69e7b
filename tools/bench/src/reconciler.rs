//! The reconciler benchmark, against the Kubernetes-API-compatible test
//! server of the integration tests (`tests/it/kube_api`, compiled in here by
//! path): G grants expiring within one minute, the time from each expiry to
//! the moment its RoleBinding is gone from the API server (watched from the
//! server's own store every 2 ms, independently of the reconciler), next to
//! the bare DELETE round trip measured in the same run; then an API outage of
//! S seconds during which grants expire, and how long after the API's return
//! they are gone.

#[allow(dead_code)]
#[path = "../../../tests/it/kube_api/mod.rs"]
mod kube_api;

use anyhow::Context as _;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, PostParams};
use kube_api::TestApiServer;
use portcullis::domain::decide::Command;
use portcullis::domain::types::{Access, Kind, Name, Span, Target};
use portcullis::ledger::{Ledger, LedgerConfig};
use portcullis::policy::Policy;
use portcullis::reconciler::Reconciler;
use portcullis::reconciler::config::{ClusterConfig, ReconcilerConfig, SubjectKind};
use portcullis::store::sqlite::SqliteStore;
use portcullis::workflow::{Workflow, random_seed};
use portcullis_format::event::Actor;
use portcullis_format::note::SignerKey;
use portcullis_format::time::Timestamp;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLICY: &str = r#"
version: 1
rules:
  - name: bench
    match: {clusters: [bench], namespaces: ["*"], kinds: [ingresses], access: [edit]}
    requesters: {groups: [engineering]}
    auto_approve: true
    max_duration: 1h
    reason: {required: false}
admins:
  groups: [admins]
"#;

const NAMESPACE: &str = "bench";
const RBAC: &str = "rbac.authorization.k8s.io/v1";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Setup {
    server: TestApiServer,
    workflow: Arc<Workflow>,
    ledger: Ledger,
    config: ReconcilerConfig,
}

async fn setup(dir: &Path) -> anyhow::Result<Setup> {
    let server = TestApiServer::start().await;
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig, "bench");
    let key = SignerKey::from_seed("bench.portcullis.example/ledger", &[43u8; 32])?;
    let store = Arc::new(SqliteStore::open(&dir.join("ledger.db"))?);
    let (ledger, thread) = Ledger::open(store, key, LedgerConfig::default())?;
    let workflow = Workflow::open(ledger.clone(), Some(Arc::new(Policy::parse(POLICY)?))).await?;
    let config = ReconcilerConfig {
        lease_namespace: NAMESPACE.into(),
        lease_name: "portcullis-bench".into(),
        revoke_sla_ms: 1000,
        lease_duration_secs: 15,
        standing_scan_secs: 3600,
        clusters: vec![ClusterConfig {
            name: "bench".into(),
            kubeconfig: Some(kubeconfig),
            context: Some("bench".into()),
            subject_kind: SubjectKind::User,
            subject_template: "{sub}".into(),
            namespaces: vec![NAMESPACE.into()],
        }],
    };
    // The sequencer thread ends when the ledger closes at the end of the run.
    drop(thread);
    Ok(Setup { server, workflow, ledger, config })
}

/// Grants for `grants` people, the i-th expiring `first + i * spread / grants` seconds from now.
async fn grant_all(
    workflow: &Workflow,
    grants: u64,
    first: u64,
    spread: u64,
) -> anyhow::Result<BTreeMap<String, Timestamp>> {
    let start = Instant::now();
    for i in 0..grants {
        let elapsed = start.elapsed().as_secs();
        let duration = (first + i * spread / grants.max(1)).saturating_sub(elapsed).max(1);
        let target = Target {
            cluster: Name::label("cluster", "bench")?,
            namespace: Name::label("namespace", NAMESPACE)?,
            kind: Kind::Ingresses,
            names: vec![Name::subdomain("names", "storefront")?],
            access: Access::Edit,
        };
        let command = Command::Request {
            target,
            duration: Span::from_secs(duration).context("duration")?,
            reason: String::new(),
            ticket: None,
            break_glass: false,
        };
        let actor =
            Actor { sub: format!("engineer-{i}@example.com"), groups: vec!["engineering".into()], via: "token".into() };
        workflow.execute(command, actor, random_seed()).await?;
    }
    let state = workflow.current().await?;
    Ok(state
        .grants
        .values()
        .filter(|g| g.status == portcullis::domain::state::GrantStatus::Active)
        .map(|g| (portcullis::reconciler::desired::object_name(&g.id.to_string()), g.expires_at))
        .collect())
}

/// Watches the server's own store until every binding of `expiries` is gone;
/// returns each one's latency from its expiry in milliseconds.
async fn removal_latencies(
    server: &TestApiServer,
    expiries: &BTreeMap<String, Timestamp>,
    limit: Duration,
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::with_capacity(expiries.len());
    let mut pending = expiries.clone();
    let start = Instant::now();
    while !pending.is_empty() {
        anyhow::ensure!(start.elapsed() < limit, "{} bindings still present after {limit:?}", pending.len());
        let present: std::collections::BTreeSet<String> = server
            .list(RBAC, "rolebindings", Some(NAMESPACE))
            .iter()
            .filter_map(|b| b["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        let now = Timestamp::now();
        pending.retain(|name, expires| {
            if present.contains(name) {
                return true;
            }
            latencies.push((now.unix_micros() - expires.unix_micros()) as f64 / 1000.0);
            false
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// The bare DELETE round trip of a RoleBinding on the same server, in milliseconds, sorted.
async fn delete_round_trips(setup: &Setup, count: usize) -> anyhow::Result<Vec<f64>> {
    let client = portcullis::reconciler::clients_for(&setup.config.clusters[0]).await?.act;
    let api: Api<RoleBinding> = Api::namespaced(client, NAMESPACE);
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let binding: RoleBinding = serde_json::from_value(serde_json::json!({
            "apiVersion": RBAC, "kind": "RoleBinding",
            "metadata": {"name": format!("baseline-{i}"), "namespace": NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "none"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "nobody"}],
        }))?;
        api.create(&PostParams::default(), &binding).await?;
        let start = Instant::now();
        api.delete(&format!("baseline-{i}"), &DeleteParams::default()).await?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

pub async fn bench(dir: &Path, grants: u64, outage_secs: u64, out: &mut String) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let setup = setup(dir).await?;
    let reconciler = Reconciler::start(&setup.config, Arc::clone(&setup.workflow), "bench".into()).await?;
    let baseline = delete_round_trips(&setup, 500).await?;

    // 1. G grants expiring within one minute.
    let spread = 50;
    let expiries = grant_all(&setup.workflow, grants, 20, spread).await?;
    anyhow::ensure!(expiries.len() as u64 == grants, "{} of {grants} grants active", expiries.len());
    let start = Instant::now();
    while (setup.server.list(RBAC, "rolebindings", Some(NAMESPACE)).len() as u64) < grants {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "bindings not all applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latencies = removal_latencies(&setup.server, &expiries, Duration::from_secs(120)).await?;
    let (p50, p99, max) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0), percentile(&latencies, 100.0));
    let (b50, b99) = (percentile(&baseline, 50.0), percentile(&baseline, 99.0));
    out.push_str(&format!(
        "Reconciler: {grants} grants expiring within {spread} s, removal latency from expiry (watched on the API server): \
         p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (target p99 < 1000 ms). \
         Bare DELETE round trip on the same server: p50 {b50:.2} ms, p99 {b99:.2} ms; \
         ratio of p99 removal latency to p99 DELETE round trip: {:.1}.\n\n",
        p99 / b99
    ));

    // 2. An API outage during which grants expire.
    let during = (grants / 10).max(1);
    let expiries = grant_all(&setup.workflow, during, 5, outage_secs / 2).await?;
    let start = Instant::now();
    while (setup.server.list(RBAC, "rolebindings", Some(NAMESPACE)).len() as u64) < during {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "bindings not all applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    setup.server.set_down(true);
    tokio::time::sleep(Duration::from_secs(outage_secs)).await;
    setup.server.set_down(false);
    let back = Instant::now();
    removal_latencies(&setup.server, &expiries, Duration::from_secs(60)).await?;
    let after = back.elapsed().as_secs_f64();
    out.push_str(&format!(
        "Reconciler: API server down for {outage_secs} s while {during} grants expired; all removed {:.2} s after it \
         came back (target < 2 s).\n\n",
        after
    ));
    let recorded = setup.workflow.current().await.map(|s| s.size).unwrap_or(0);
    out.push_str(&format!(
        "(ledger holds {recorded} events after the run; its observations include every removal)\n\n"
    ));
    reconciler.shutdown().await;
    setup.ledger.close().await;
    drop(setup.server);
    Ok(())
}
