//! The report benchmark: a ledger of N workflow and reconciler events with G
//! grants (each requested, approved, activated, its binding applied, ended or
//! expired, its binding removed; denied requests and route changes between),
//! then the real `portcullis report soc2` and `portcullis-verify report`
//! binaries run on it as child processes, each timed and its peak memory read
//! with `wait4`. The baseline is bare Ed25519 batch verification of as many
//! signatures as the bundle holds entries, on all cores, in the same run.

use anyhow::{Context as _, bail};
use portcullis::domain::events::*;
use portcullis::domain::types::{Access, Kind};
use portcullis::ledger::{Ledger, LedgerConfig};
use portcullis::store::Store as _;
use portcullis::store::sqlite::SqliteStore;
use portcullis_format::event::{Actor, EventDraft, EventId, ParsedEntry};
use portcullis_format::note::SignerKey;
use portcullis_format::time::Timestamp;
use portcullis_projections::cluster::{
    BindingApplied, BindingRemoved, FieldManager, Observation, RouteChanged, SpecChange,
};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const ORIGIN: &str = "bench.portcullis.local/report";
const SEED: [u8; 32] = [11u8; 32];
/// Grants end this many cycles after they start (so ends interleave with later requests).
const END_LAG: usize = 64;

fn id(n: u64, salt: u8) -> EventId {
    let mut bytes = [salt; 16];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    EventId(bytes)
}

fn person(n: u64) -> Actor {
    Actor { sub: format!("engineer-{:03}@example.com", n % 500), groups: vec!["web".into()], via: "oidc".into() }
}

fn lead(n: u64) -> Actor {
    Actor { sub: format!("lead-{:02}@example.com", n % 20), groups: vec!["sre-leads".into()], via: "oidc".into() }
}

fn target(n: u64) -> TargetData {
    TargetData {
        cluster: if n.is_multiple_of(3) { "prod".into() } else { "staging".into() },
        namespace: format!("shop-{}", n % 13),
        kind: Kind::Ingresses,
        names: vec![format!("storefront-{}", n % 7)],
        access: Access::Edit,
    }
}

fn later(t: Timestamp, micros: i64) -> String {
    Timestamp::from_unix_micros(t.unix_micros() + micros).unwrap_or(t).to_string()
}

/// Request `n` (ticket `INC-<4000 + n>`), needing one approval.
fn request(n: u64, target: TargetData, duration_secs: u64, what: &str, now: Timestamp, basis: &Basis) -> Payload {
    Payload::RequestCreated(RequestCreated {
        target,
        duration_secs,
        reason: format!("INC-{}: {what}", 4000 + n),
        ticket: Some(format!("INC-{}", 4000 + n)),
        break_glass: false,
        approvals_needed: 1,
        pending_expires_at: later(now, 86_400_000_000),
        basis: basis.clone(),
    })
}

/// The events of one grant's end: its end (expired mostly) and its binding's removal.
fn ending(n: u64, grant_id: EventId, now: Timestamp, reconciler: &Actor) -> Vec<EventDraft> {
    let t = target(n);
    let (end, cause, who) = match n % 50 {
        0 => (
            Payload::GrantRevoked(GrantClosed { grant_id: grant_id.to_string(), comment: Some("offboarded".into()) }),
            "revoked",
            lead(n),
        ),
        1..=4 => (
            Payload::GrantEnded(GrantClosed { grant_id: grant_id.to_string(), comment: Some("done".into()) }),
            "ended",
            person(n),
        ),
        _ => (
            Payload::GrantExpired(GrantClosed { grant_id: grant_id.to_string(), comment: None }),
            "expired",
            reconciler.clone(),
        ),
    };
    // Mostly tens of milliseconds; one in 997 later than the default 1 s SLA.
    let latency = if n.is_multiple_of(997) { 1_500 + (n % 700) as i64 } else { 8 + (n * 37 % 180) as i64 };
    let removed = Observation::BindingRemoved(BindingRemoved {
        grant_id: grant_id.to_string(),
        cluster: t.cluster.clone(),
        namespace: t.namespace.clone(),
        name: format!("portcullis-{grant_id}"),
        cause: cause.into(),
        due_at: now.to_string(),
        observed_at: later(now, latency * 1000),
        latency_ms: latency,
        resource_version: Some(format!("{}", 900_000 + n)),
    });
    vec![end.to_draft(id(n, 5), &who), removed.to_draft(id(n, 6), reconciler)]
}

/// Writes `events` events with `grants` grant cycles spread evenly among denied requests and route changes.
async fn populate(ledger: &Ledger, events: u64, grants: u64) -> anyhow::Result<()> {
    let reconciler = Actor { sub: "reconciler".into(), groups: Vec::new(), via: "service".into() };
    let basis = Basis { rule: "prod-ingress-edit".into(), policy_hash: format!("{:064x}", 0x5eed_u64) };
    // Per grant: request, approval, grant, binding applied, end, removal (6), and a route change every 4th.
    let per_grant = 6 * 4 + 1;
    let grant_events = grants * per_grant / 4;
    let denials = events.saturating_sub(ledger.head().size + grant_events) / 2;
    let mut pending: VecDeque<(u64, EventId)> = VecDeque::new();
    let mut batch: Vec<EventDraft> = Vec::new();
    let mut denied = 0u64;
    for n in 0..grants {
        let now = Timestamp::now();
        let requester = person(n);
        let approver = lead(n);
        let request_id = id(n, 1);
        let t = target(n);
        batch.push(
            request(n, t.clone(), 3600, &format!("fix the TLS host of {}/{}", t.namespace, t.names[0]), now, &basis)
                .to_draft(request_id, &requester),
        );
        batch.push(
            Payload::RequestApproved(RequestDecision {
                request_id: request_id.to_string(),
                comment: Some("ok".into()),
                basis: basis.clone(),
            })
            .to_draft(id(n, 2), &approver),
        );
        let grant_id = id(n, 3);
        batch.push(
            Payload::GrantActivated(GrantActivated {
                request_id: request_id.to_string(),
                requester: requester.sub.clone(),
                target: t.clone(),
                starts_at: now.to_string(),
                expires_at: later(now, 3_600_000_000),
                approvers: vec![approver.sub.clone()],
                break_glass: false,
                review_due: None,
                rbac: vec![RbacRule {
                    api_groups: vec!["networking.k8s.io".into()],
                    resources: vec!["ingresses".into()],
                    resource_names: t.names.clone(),
                    verbs: vec!["get".into(), "list".into(), "watch".into(), "update".into(), "patch".into()],
                }],
                basis: basis.clone(),
                credential: None,
                notify: Vec::new(),
            })
            .to_draft(grant_id, &approver),
        );
        batch.push(
            Observation::BindingApplied(BindingApplied {
                grant_id: grant_id.to_string(),
                cluster: t.cluster.clone(),
                namespace: t.namespace.clone(),
                name: format!("portcullis-{grant_id}"),
                subject: requester.sub.clone(),
                expires_at: later(now, 3_600_000_000),
                resource_version: format!("{}", 100_000 + n),
                observed_at: later(now, 15_000),
            })
            .to_draft(id(n, 4), &reconciler),
        );
        pending.push_back((n, grant_id));
        if n.is_multiple_of(4) {
            // A route change: covered by the grant just applied, except one in 50.
            let covering = if n.is_multiple_of(200) { Vec::new() } else { vec![grant_id.to_string()] };
            batch.push(
                Observation::RouteChanged(RouteChanged {
                    cluster: t.cluster.clone(),
                    namespace: t.namespace.clone(),
                    kind: "ingresses".into(),
                    name: t.names[0].clone(),
                    change: "modified".into(),
                    resource_version: format!("{}", 500_000 + n),
                    diff: vec![SpecChange {
                        path: "/tls/0/hosts/0".into(),
                        from: Some("\"shop.example.com\"".into()),
                        to: Some(format!("\"shop-{}.example.com\"", n % 11)),
                    }],
                    spec: format!(
                        "{{\"rules\":[{{\"host\":\"shop-{}.example.com\"}}],\"tls\":[{{\"hosts\":[\"shop-{}.example.com\"]}}]}}",
                        n % 11,
                        n % 11
                    ),
                    managers: vec![FieldManager {
                        manager: "kubectl-edit".into(),
                        operation: "Update".into(),
                        time: Some(now.to_string()),
                    }],
                    grants: covering,
                    observed_at: later(now, 20_000),
                })
                .to_draft(id(n, 7), &reconciler),
            );
        }
        if pending.len() > END_LAG
            && let Some((m, grant)) = pending.pop_front()
        {
            batch.extend(ending(m, grant, now, &reconciler));
        }
        // Denied requests, spread evenly between the grant cycles.
        let due = denials * (n + 1) / grants;
        while denied < due {
            let k = grants + denied;
            let requester = person(k);
            let request_id = id(k, 1);
            batch.push(
                request(k, target(k), 1800, "look at the storefront logs", now, &basis)
                    .to_draft(request_id, &requester),
            );
            batch.push(
                Payload::RequestDenied(RequestDecision {
                    request_id: request_id.to_string(),
                    comment: Some("use the read-only rule".into()),
                    basis: basis.clone(),
                })
                .to_draft(id(k, 2), &lead(k)),
            );
            denied += 1;
        }
        if batch.len() >= 4096 {
            ledger.append_all(std::mem::take(&mut batch)).await?;
        }
    }
    let now = Timestamp::now();
    while let Some((m, grant)) = pending.pop_front() {
        batch.extend(ending(m, grant, now, &reconciler));
    }
    ledger.append_all(batch).await?;
    Ok(())
}

/// Runs `exe args` to completion; returns (seconds, peak RSS in KiB, stdout). Fails on a non-zero exit.
fn run_measured(exe: &Path, args: &[&str], log: &Path) -> anyhow::Result<(f64, u64, String)> {
    if !exe.exists() {
        bail!("{} is missing; build it with cargo build --release -p portcullis -p portcullis-verify", exe.display());
    }
    let stdout_path = log.with_extension("out");
    let stderr_path = log.with_extension("err");
    let start = Instant::now();
    let child = std::process::Command::new(exe)
        .args(args)
        .stdout(std::fs::File::create(&stdout_path)?)
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 writes only the status and the rusage struct we pass; the
    // child is ours and is reaped here (the std handle is never waited on).
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::wait4(pid, &mut status, 0, &mut usage) != pid {
            bail!("wait4 failed: {}", std::io::Error::last_os_error());
        }
        usage
    };
    let seconds = start.elapsed().as_secs_f64();
    drop(child);
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "{} {:?} failed (status {status}): {stdout}{}",
            exe.display(),
            args,
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
    }
    Ok((seconds, usage.ru_maxrss as u64, stdout))
}

fn ts_at(store: &SqliteStore, seq: u64) -> anyhow::Result<Timestamp> {
    let entry = store.entries(seq, 1)?.pop().context("entry missing")?;
    Ok(ParsedEntry::parse(&entry).map_err(|e| anyhow::anyhow!("entry {seq}: {e}"))?.event.ts)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

pub async fn bench(dir: &Path, events: u64, grants: u64, out: &mut String) -> anyhow::Result<()> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    portcullis::keyfile::write(&data.join("log.key"), &SignerKey::from_seed(ORIGIN, &SEED)?)?;
    let vkey = SignerKey::from_seed(ORIGIN, &SEED)?.verifier().to_string();
    let started = Instant::now();
    {
        let store = SqliteStore::open(&data.join("ledger.db"))?;
        let (ledger, thread) =
            Ledger::open(Arc::new(store), SignerKey::from_seed(ORIGIN, &SEED)?, LedgerConfig::default())?;
        populate(&ledger, events, grants).await?;
        ledger.close().await;
        drop(ledger);
        tokio::task::spawn_blocking(move || thread.join()).await?;
    }
    let store = SqliteStore::open(&data.join("ledger.db"))?;
    let size = store.size()?;
    eprintln!("wrote {size} events in {:.1}s", started.elapsed().as_secs_f64());
    // The period: from the entry at 1% to the one at 99% of the ledger (strictly later timestamps,
    // so the period holds ~98% of the entries plus what shares the boundary timestamps).
    let from = ts_at(&store, size / 100)?;
    let to = ts_at(&store, size - size / 100)?;
    drop(store);

    let portcullis_exe = std::env::current_exe()?.with_file_name("portcullis");
    let verify_exe = std::env::current_exe()?.with_file_name("portcullis-verify");
    let bundle = dir.join("bundle");
    let (from_s, to_s) = (from.to_string(), to.to_string());
    let (gen_seconds, gen_kib, gen_out) = run_measured(
        &portcullis_exe,
        &[
            "report",
            "soc2",
            "--from",
            &from_s,
            "--to",
            &to_s,
            "--data-dir",
            &data.to_string_lossy(),
            &bundle.to_string_lossy(),
        ],
        &dir.join("generate"),
    )?;
    eprintln!("{}", gen_out.trim());
    let bundle_bytes = dir_bytes(&bundle);
    let (verify_seconds, verify_kib, verify_out) = run_measured(
        &verify_exe,
        &["report", &bundle.to_string_lossy(), "--key", &vkey, "--json"],
        &dir.join("verify"),
    )?;
    let summary: serde_json::Value = serde_json::from_str(&verify_out)?;
    let first = summary["entries"]["first_seq"].as_u64().unwrap_or(0);
    let end = summary["entries"]["end_seq"].as_u64().unwrap_or(0);
    let entries = end - first;
    let rows: u64 = summary["populations"].as_array().map_or(0, |p| p.iter().filter_map(|p| p["rows"].as_u64()).sum());
    let exceptions: u64 =
        summary["controls"].as_array().map_or(0, |c| c.iter().filter_map(|c| c["exceptions"].as_u64()).sum());

    // Baseline: bare batch verification of as many signatures as the bundle has entries, on all cores.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rate = super::baseline_batch_verify(threads, (entries as usize).div_ceil(threads));
    let bare = entries as f64 / rate;
    let mib = |kib: u64| kib as f64 / 1024.0;
    out.push_str(&format!(
        "### SOC 2 report over {size} events, {grants} grants ({})\n\n\
         Period {from_s} .. {to_s}: bundle entries {first}..{end} ({entries} entries), {rows} population rows, \
         {exceptions} exceptions, {:.0} MiB on disk.\n\n\
         | figure | value | baseline in the same run | ratio |\n|---|---|---|---|\n\
         | generation (`portcullis report soc2`, child process) | {gen_seconds:.1} s | | |\n\
         | generation peak memory (max RSS) | {:.1} MiB | | |\n\
         | verification (`portcullis-verify report`, child process) | {verify_seconds:.1} s | bare Ed25519 batch verification of {entries} signatures on {threads} cores: {bare:.1} s ({rate:.0}/s) | {:.2} |\n\
         | verification peak memory (max RSS) | {:.1} MiB | | |\n\n",
        super::machine(),
        bundle_bytes as f64 / 1048576.0,
        mib(gen_kib),
        verify_seconds / bare,
        mib(verify_kib),
    ));
    Ok(())
}
