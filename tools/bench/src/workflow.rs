//! The workflow benchmark: a ledger of N events with G active grants; cold
//! start (every projection rebuilt from entry 0), `GET /v1/grants?active=true`
//! latency at a fixed rate, and request-approve-approve cycles at a fixed rate,
//! each next to its baseline measured in the same run.

use anyhow::Context as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis::api::{AppState, app};
use portcullis::auth::Tokens;
use portcullis::domain::events::*;
use portcullis::domain::types::{Access, Kind};
use portcullis::ledger::{Ledger, LedgerConfig};
use portcullis::policy::Policy;
use portcullis::store::sqlite::SqliteStore;
use portcullis::workflow::Workflow;
use portcullis_format::event::{Actor, EventDraft, EventId, ParsedEntry};
use portcullis_format::note::SignerKey;
use portcullis_format::time::Timestamp;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLICY: &str = include_str!("../../../schemas/policy.example.yaml");

type Client = HyperClient<HttpConnector, Full<Bytes>>;

fn id(n: u64, salt: u8) -> EventId {
    let mut bytes = [salt; 16];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    EventId(bytes)
}

/// Writes `events` workflow events: `grants` requests with active grants, the
/// rest requests and their denials.
async fn populate(ledger: &Ledger, policy: &Policy, events: u64, grants: u64) -> anyhow::Result<()> {
    let actor = Actor { sub: "alice@example.com".into(), groups: vec!["web".into()], via: "token".into() };
    let approver = Actor { sub: "lead1@example.com".into(), groups: vec!["sre-leads".into()], via: "token".into() };
    let basis = Basis { rule: "prod-ingress-edit".into(), policy_hash: policy.hash_hex() };
    let target = TargetData {
        cluster: "prod".into(),
        namespace: "shop-eu".into(),
        kind: Kind::Ingresses,
        names: vec!["storefront".into()],
        access: Access::Edit,
    };
    let now = Timestamp::now();
    let far = Timestamp::from_unix_micros(now.unix_micros() + 30 * 86_400_000_000).context("time")?;
    let mut batch: Vec<EventDraft> = Vec::new();
    let mut written = ledger.head().size;
    let mut n = 0u64;
    while written < events {
        let request_id = id(n, 1);
        batch.push(
            Payload::RequestCreated(RequestCreated {
                target: target.clone(),
                duration_secs: 1800,
                reason: format!("INC-{n}: fix the TLS host of shop/storefront"),
                ticket: Some(format!("INC-{n}")),
                break_glass: false,
                approvals_needed: 1,
                pending_expires_at: far.to_string(),
                basis: basis.clone(),
            })
            .to_draft(request_id, &actor),
        );
        let second = if n < grants {
            Payload::GrantActivated(GrantActivated {
                request_id: request_id.to_string(),
                requester: actor.sub.clone(),
                target: target.clone(),
                starts_at: now.to_string(),
                expires_at: far.to_string(),
                approvers: vec![approver.sub.clone()],
                break_glass: false,
                review_due: None,
                rbac: Vec::new(),
                basis: basis.clone(),
                credential: None,
                notify: Vec::new(),
            })
        } else {
            Payload::RequestDenied(RequestDecision {
                request_id: request_id.to_string(),
                comment: Some("no".into()),
                basis: basis.clone(),
            })
        };
        batch.push(second.to_draft(id(n, 2), &approver));
        n += 1;
        written += 2;
        if batch.len() >= 4096 || written >= events {
            ledger.append_all(std::mem::take(&mut batch)).await?;
        }
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted.get(((sorted.len().max(1) - 1) as f64 * p).round() as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn call(
    client: &Client,
    method: &str,
    url: &str,
    token: &str,
    body: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = client.request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "{url}: {status}: {}", String::from_utf8_lossy(&bytes));
    Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// Issues `job` at `rate` per second for `seconds`; returns each job's latency.
async fn at_rate<F, Fut>(rate: u64, seconds: u64, job: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for _ in 0..rate * seconds {
        ticker.tick().await;
        let started = Instant::now();
        let fut = job();
        tasks.push(tokio::spawn(async move { fut.await.map(|()| started.elapsed()) }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.push(task.await??);
    }
    latencies.sort_unstable();
    Ok(latencies)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

pub async fn bench(dir: &Path, events: u64, grants: u64, out: &mut String) -> anyhow::Result<()> {
    let key = || SignerKey::from_seed("bench.portcullis.local/workflow", &[7u8; 32]);
    let policy = Arc::new(Policy::parse(POLICY).map_err(|e| anyhow::anyhow!("{e}"))?);
    std::fs::create_dir_all(dir)?;
    {
        let (ledger, thread) =
            Ledger::open(Arc::new(SqliteStore::open(&dir.join("ledger.db"))?), key()?, LedgerConfig::default())?;
        let started = Instant::now();
        populate(&ledger, &policy, events, grants).await?;
        eprintln!("wrote {events} workflow events in {:.1}s", started.elapsed().as_secs_f64());
        ledger.close().await;
        drop(ledger);
        tokio::task::spawn_blocking(move || thread.join()).await?;
    }

    // Baseline: reading and parsing every entry, the least a rebuild must do.
    let store = SqliteStore::open(&dir.join("ledger.db"))?;
    let started = Instant::now();
    let mut from = 0;
    loop {
        let entries = portcullis::store::Store::entries(&store, from, 8192)?;
        if entries.is_empty() {
            break;
        }
        from += entries.len() as u64;
        for entry in &entries {
            std::hint::black_box(ParsedEntry::parse(entry).ok());
        }
    }
    let parse_only = started.elapsed();
    drop(store);

    let started = Instant::now();
    let (ledger, thread) =
        Ledger::open(Arc::new(SqliteStore::open(&dir.join("ledger.db"))?), key()?, LedgerConfig::default())?;
    let workflow = Workflow::open(ledger.clone(), Some(Arc::clone(&policy))).await?;
    let cold = started.elapsed();
    // What the service holds once started, before the load generator opens any connection.
    let rss_started = rss_mib();
    let active = workflow
        .current()
        .await?
        .grants
        .values()
        .filter(|g| g.status == portcullis::domain::state::GrantStatus::Active)
        .count();

    let tokens_path = dir.join("tokens");
    let _ = std::fs::remove_file(&tokens_path);
    let alice = portcullis::auth::create(&tokens_path, "alice@example.com", &["web".into()])?;
    let lead1 = portcullis::auth::create(&tokens_path, "lead1@example.com", &["sre-leads".into()])?;
    let lead2 = portcullis::auth::create(&tokens_path, "lead2@example.com", &["sre-leads".into()])?;
    // The load comes from three identities at 1,000 requests/s: above the per-identity
    // default limit on purpose, so the benchmark lifts it.
    let state = Arc::new(AppState {
        ledger: ledger.clone(),
        workflow: Some(Arc::clone(&workflow)),
        tokens: Tokens::load(&tokens_path)?,
        oidc: None,
        limiter: portcullis::api::limit::RateLimiter::new(1e9, 1e9),
        idempotency: Default::default(),
        reconciler: None,
        reports: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app(state)).await });
    let bare = axum::Router::new().route(
        "/bare",
        axum::routing::get(|| async { axum::Json(serde_json::json!({"items": [], "next_cursor": null})) }),
    );
    let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_url = format!("http://{}/bare", bare_listener.local_addr()?);
    let bare_server = tokio::spawn(async move { axum::serve(bare_listener, bare).await });
    let client: Client = HyperClient::builder(TokioExecutor::new()).build_http();

    let job = |url: String, token: String| {
        let client = client.clone();
        move || {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            async move { call(&client, "GET", &url, &token, None).await.map(|_| ()) }
        }
    };
    let baseline = at_rate(1000, 5, job(bare_url, alice.clone())).await?;
    let grants_latency = at_rate(1000, 5, job(format!("{base}/v1/grants?active=true"), alice.clone())).await?;

    let cycle = {
        let client = client.clone();
        let base = base.clone();
        move || {
            let (client, base, alice, lead1, lead2) =
                (client.clone(), base.clone(), alice.clone(), lead1.clone(), lead2.clone());
            async move {
                let body = serde_json::json!({"cluster": "prod", "namespace": "shop-eu", "kind": "ingresses", "names": ["storefront"], "access": "edit", "duration": "30m", "reason": "INC-4711: fix the TLS host", "ticket": "INC-4711"});
                let request =
                    call(&client, "POST", &format!("{base}/v1/requests"), &alice, Some(body.to_string())).await?;
                let id = request["id"].as_str().context("id")?.to_string();
                call(&client, "POST", &format!("{base}/v1/requests/{id}/approve"), &lead1, None).await?;
                let done = call(&client, "POST", &format!("{base}/v1/requests/{id}/approve"), &lead2, None).await?;
                anyhow::ensure!(done["grant"]["status"] == "active", "no active grant");
                Ok(())
            }
        }
    };
    let cycles = at_rate(100, 5, cycle).await?;
    let rss = rss_mib();
    server.abort();
    bare_server.abort();
    drop(workflow);
    ledger.close().await;
    drop(ledger);
    tokio::task::spawn_blocking(move || thread.join()).await?;

    out.push_str(&format!(
        "### Workflow ({events} events, {active} active grants)\n\n\
         | figure | value | baseline in the same run | ratio | target |\n|---|---|---|---|---|\n\
         | cold start: tail check + every projection rebuilt | {:.2} s | reading and parsing every entry: {:.2} s | {:.2} | < 10 s |\n\
         | `GET /v1/grants?active=true` at 1,000/s for 5 s | p50 {:.2} ms, p99 {:.2} ms | bare axum handler: p50 {:.2} ms, p99 {:.2} ms | p99 {:.1}x | p99 < 5 ms |\n\
         | request, approve, approve, grant active at 100 cycles/s | p50 {:.2} ms, p99 {:.2} ms | | | p99 < 20 ms |\n\
         | resident memory of the process (service and load generator) | {rss:.0} MiB | | | < 300 MiB |\n\
         | resident memory after the cold start, before any load | {rss_started:.0} MiB | | | |\n\n",
        cold.as_secs_f64(),
        parse_only.as_secs_f64(),
        cold.as_secs_f64() / parse_only.as_secs_f64().max(1e-9),
        percentile(&grants_latency, 0.5),
        percentile(&grants_latency, 0.99),
        percentile(&baseline, 0.5),
        percentile(&baseline, 0.99),
        percentile(&grants_latency, 0.99) / percentile(&baseline, 0.99).max(1e-9),
        percentile(&cycles, 0.5),
        percentile(&cycles, 0.99),
    ));
    Ok(())
}
