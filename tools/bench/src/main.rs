//! Portcullis benchmarks and the synthetic ledger generator.
//!
//! Every figure is reported next to a baseline measured in the same run on
//! the same machine (the physical limit of the step), because this machine is
//! noisy and only ratios travel.
//!
//! ```text
//! portcullis-bench gen --events N --out DIR        a valid signed ledger (SQLite) and its export
//! portcullis-bench append [--events N] [--writers W]
//! portcullis-bench verify --export DIR --key VKEY  runs the portcullis-verify binary
//! portcullis-bench workflow [--events N] [--grants G]
//! portcullis-bench reconciler [--grants G] [--outage-secs S]   against the test API server
//! portcullis-bench report [--events N] [--grants G]    runs the portcullis and portcullis-verify binaries
//! portcullis-bench all [--events N]                all of the above, as Markdown
//! ```
//!
//! The generator is a tool of its own: nothing in the service's API can
//! produce synthetic events.

mod postgres;
mod reconciler;
mod report;
mod workflow;

use anyhow::{Context as _, bail};
use ed25519_dalek::{Signer as _, SigningKey};
use portcullis::ledger::{Ledger, LedgerConfig};
use portcullis::store::sqlite::SqliteStore;
use portcullis_format::event::{Actor, EventDraft, EventId};
use portcullis_format::json::Json;
use portcullis_format::note::SignerKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KINDS: [&str; 8] = [
    "request.created",
    "request.approved",
    "grant.activated",
    "binding.applied",
    "ingress.changed",
    "grant.ended",
    "binding.removed",
    "request.denied",
];

/// A realistic event of about 300 bytes of canonical JSON in total.
fn synthetic_draft(n: u64) -> EventDraft {
    let kind = KINDS[(n % KINDS.len() as u64) as usize];
    let user = format!("engineer-{:03}@example.com", n % 97);
    let data = Json::Obj(vec![
        ("request_id".into(), Json::Str(format!("req-{:012}", n / 8))),
        (
            "target".into(),
            Json::Obj(vec![
                ("cluster".into(), Json::Str(if n.is_multiple_of(3) { "prod" } else { "staging" }.into())),
                ("namespace".into(), Json::Str(format!("shop-{}", n % 13))),
                ("kind".into(), Json::Str("ingresses".into())),
                ("name".into(), Json::Str("storefront".into())),
                ("access".into(), Json::Str("edit".into())),
            ]),
        ),
        ("reason".into(), Json::Str(format!("INC-{}: fix TLS host", 4000 + n % 900))),
    ]);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8..].copy_from_slice(&0x5eed_u64.to_be_bytes());
    EventDraft {
        id: EventId(id),
        kind: kind.into(),
        v: 1,
        actor: Actor { sub: user, groups: vec!["web".into(), "sre".into()], via: "oidc".into() },
        data,
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> anyhow::Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => {
            let value = args.get(i + 1).with_context(|| format!("{name} needs a value"))?;
            value.parse().map_err(|_| anyhow::anyhow!("{name} {value}: not a valid value"))
        }
        None => Ok(default),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The bare single-core Ed25519 signing rate over messages of 490 bytes, the
/// size of the synthetic events' note texts (header and JSON line).
fn baseline_signing(count: usize) -> f64 {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let messages: Vec<Vec<u8>> = (0..256).map(|i| vec![b'a' + (i % 26) as u8; 490]).collect();
    let start = Instant::now();
    let mut sink = 0u8;
    for i in 0..count {
        sink ^= key.sign(&messages[i % 256]).to_bytes()[0];
    }
    std::hint::black_box(sink);
    count as f64 / start.elapsed().as_secs_f64()
}

/// Raw SQLite commits in WAL mode with synchronous=FULL: single-row transactions
/// from one connection, and 100-row transactions.
fn baseline_sqlite(dir: &Path, commits: usize) -> anyhow::Result<(f64, f64)> {
    let conn = rusqlite::Connection::open(dir.join("baseline.db"))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);",
    )?;
    let blob = vec![7u8; 450];
    let start = Instant::now();
    for i in 0..commits {
        conn.execute("INSERT INTO t (id, v) VALUES (?1, ?2)", rusqlite::params![i as i64, blob])?;
    }
    let single = commits as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut id = commits as i64;
    for _ in 0..commits {
        let tx = conn.unchecked_transaction()?;
        for _ in 0..100 {
            tx.execute("INSERT INTO t (id, v) VALUES (?1, ?2)", rusqlite::params![id, blob])?;
            id += 1;
        }
        tx.commit()?;
    }
    let batched = (commits * 100) as f64 / start.elapsed().as_secs_f64();
    Ok((single, batched))
}

fn open_ledger(dir: &Path, name: &str) -> anyhow::Result<(Ledger, portcullis::ledger::SequencerThread, SignerKey)> {
    std::fs::create_dir_all(dir)?;
    let key = SignerKey::from_seed(name, &[42u8; 32])?;
    let store = SqliteStore::open(&dir.join("ledger.db"))?;
    let (ledger, thread) =
        Ledger::open(Arc::new(store), SignerKey::from_seed(name, &[42u8; 32])?, LedgerConfig::default())?;
    Ok((ledger, thread, key))
}

async fn close(ledger: Ledger, thread: portcullis::ledger::SequencerThread) {
    ledger.close().await;
    drop(ledger);
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
}

/// Appends `events` from `writers` concurrent tasks; returns each append's latency.
async fn append_load(
    ledger: &Ledger,
    events: u64,
    writers: u64,
    offset: u64,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = w;
            while n < events {
                let t = Instant::now();
                ledger.append(synthetic_draft(offset + n)).await?;
                latencies.push(t.elapsed());
                n += writers;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok((elapsed, latencies))
}

async fn bench_append(events: u64, writers: u64, out: &mut String) -> anyhow::Result<()> {
    let dir = tempdir("append")?;
    let signing = baseline_signing(40_000);
    let (sqlite_single, sqlite_batched) = baseline_sqlite(&dir, 2_000)?;
    let (ledger, thread, _) = open_ledger(&dir.join("ledger"), "bench.portcullis.local/append")?;
    let (elapsed, latencies) = append_load(&ledger, events, writers, 0).await?;
    let rate = events as f64 / elapsed.as_secs_f64();
    let (single_elapsed, single) = append_load(&ledger, 2_000, 1, events).await?;
    close(ledger, thread).await;
    let conn = rusqlite::Connection::open(dir.join("ledger").join("ledger.db"))?;
    let (entry_bytes, line_bytes): (f64, f64) = conn.query_row(
        "SELECT avg(length(entry)), avg(instr(entry, X'0A0A') - 21) FROM entries WHERE seq > 0",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    out.push_str(&format!(
        "### Durable appends ({events} events, {writers} concurrent writers, SQLite WAL synchronous=FULL)\n\n\
         Entries average {entry_bytes:.0} bytes: a canonical JSON event line of {line_bytes:.0} bytes plus the header and the signature line.\n\n\
         | figure | value | baseline in the same run | ratio |\n|---|---|---|---|\n\
         | throughput | {rate:.0} events/s | bare Ed25519 signing, one core: {signing:.0}/s | {:.2} |\n\
         | throughput vs raw SQLite single-row commits | {rate:.0} events/s | {sqlite_single:.0} commits/s | {:.1} |\n\
         | throughput vs raw SQLite 100-row transactions | {rate:.0} events/s | {sqlite_batched:.0} rows/s | {:.2} |\n\
         | p50 / p99 append latency ({writers} writers) | {:.2} ms / {:.2} ms | | |\n\
         | single writer: p50 / p99 latency, rate | {:.2} ms / {:.2} ms, {:.0} events/s | | |\n\n",
        rate / signing,
        rate / sqlite_single,
        rate / sqlite_batched,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&single, 0.5)),
        ms(percentile(&single, 0.99)),
        2_000.0 / single_elapsed.as_secs_f64(),
    ));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn tempdir(what: &str) -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("PORTCULLIS_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("portcullis-bench-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes a valid signed ledger of `events` events through the real sequencer, and exports it.
async fn generate(events: u64, out: &Path) -> anyhow::Result<String> {
    if out.exists() {
        bail!("{} exists; the generator writes a fresh directory", out.display());
    }
    let (ledger, thread, key) = open_ledger(&out.join("data"), "bench.portcullis.local/generated")?;
    let existing = ledger.head().size;
    // Entry 0 is the ledger's creation, so events - 1 more make `events` in all.
    let (elapsed, _) = append_load(&ledger, events.saturating_sub(existing), 64, 0).await?;
    ledger.checkpoint().await?;
    let store = Arc::clone(ledger.store());
    close(ledger, thread).await;
    eprintln!("generated {events} events in {:.1}s", elapsed.as_secs_f64());
    portcullis::export::export(store.as_ref(), &out.join("export"), 0, None, &|_, _| {})?;
    let vkey = key.verifier().to_string();
    std::fs::write(out.join("vkey"), format!("{vkey}\n"))?;
    Ok(vkey)
}

/// The bare batch-verification rate on `threads` cores: batches of 256 signatures
/// over 490-byte messages, like the verifier's bundles.
fn baseline_batch_verify(threads: usize, per_thread: usize) -> f64 {
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let messages: Vec<Vec<u8>> = (0..256).map(|i| format!("{i:0490}").into_bytes()).collect();
    let signatures: Vec<_> = messages.iter().map(|m| key.sign(m)).collect();
    let keys = vec![key.verifying_key(); 256];
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
                for _ in 0..per_thread / 256 {
                    ed25519_dalek::verify_batch(&refs, &signatures, &keys).expect("valid batch");
                }
            });
        }
    });
    (threads * (per_thread / 256) * 256) as f64 / start.elapsed().as_secs_f64()
}

/// Runs the standalone verifier on an export; returns (seconds, peak RSS in KiB, entries).
fn run_verifier(export: &Path, vkey: &str) -> anyhow::Result<(f64, u64, u64)> {
    let exe = std::env::current_exe()?.with_file_name("portcullis-verify");
    if !exe.exists() {
        bail!("{} is missing; build it with cargo build --release -p portcullis-verify", exe.display());
    }
    let start = Instant::now();
    let output = std::process::Command::new(&exe).arg(export).args(["--key", vkey, "--json"]).output()?;
    let seconds = start.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!("the verifier failed: {}", String::from_utf8_lossy(&output.stdout));
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    // SAFETY: getrusage only writes the struct we pass.
    let peak_kib = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss as u64
    };
    Ok((seconds, peak_kib, report["entries_verified"].as_u64().unwrap_or(0)))
}

fn bench_verify(export: &Path, vkey: &str, out: &mut String) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let batch = baseline_batch_verify(threads, 100_000);
    let (seconds, peak_kib, entries) = run_verifier(export, vkey)?;
    let rate = entries as f64 / seconds;
    out.push_str(&format!(
        "### Verification of an export ({entries} events, portcullis-verify on {threads} threads)\n\n\
         | figure | value | baseline in the same run | ratio |\n|---|---|---|---|\n\
         | verification rate | {rate:.0} events/s ({seconds:.1} s) | bare Ed25519 batch verification on {threads} cores: {batch:.0}/s | {:.2} |\n\
         | verifier peak memory (max RSS) | {:.1} MiB | | |\n\n",
        rate / batch,
        peak_kib as f64 / 1024.0,
    ));
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = String::new();
    match args.first().map(String::as_str) {
        Some("gen") => {
            let events = arg(&args, "--events", 100_000u64)?;
            let dir: PathBuf = arg(&args, "--out", PathBuf::new())?;
            if dir.as_os_str().is_empty() {
                bail!("--out DIR is required");
            }
            let vkey = generate(events, &dir).await?;
            println!("{vkey}");
        }
        Some("append") => {
            let events = arg(&args, "--events", 200_000u64)?;
            let writers = arg(&args, "--writers", 64u64)?;
            bench_append(events, writers, &mut out).await?;
        }
        Some("verify") => {
            let export: PathBuf = arg(&args, "--export", PathBuf::new())?;
            let vkey: String = arg(&args, "--key", String::new())?;
            bench_verify(&export, &vkey, &mut out)?;
        }
        Some("postgres") => {
            let url: String = arg(&args, "--url", String::new())?;
            if url.is_empty() {
                bail!("--url postgres://USER@HOST:PORT/DB is required (see tools/pg-throwaway)");
            }
            let events = arg(&args, "--events", 200_000u64)?;
            let writers = arg(&args, "--writers", 64u64)?;
            let rounds = arg(&args, "--rounds", 3u64)?;
            if !(1..=20).contains(&rounds) || writers < 2 {
                bail!("--rounds must be 1 to 20 and --writers at least 2");
            }
            out.push_str(&format!("Machine: {}\n\n", machine()));
            postgres::bench(&url, events, writers, rounds, &mut out).await?;
        }
        Some("workflow") => {
            let events = arg(&args, "--events", 1_000_000u64)?;
            let grants = arg(&args, "--grants", 10_000u64)?;
            let dir = tempdir("workflow")?;
            let result = workflow::bench(&dir.join("ledger"), events, grants, &mut out).await;
            let _ = std::fs::remove_dir_all(&dir);
            result?;
        }
        Some("report") => {
            let events = arg(&args, "--events", 1_000_000u64)?;
            let grants = arg(&args, "--grants", 100_000u64)?;
            let dir = tempdir("report")?;
            let result = report::bench(&dir, events, grants, &mut out).await;
            if args.iter().any(|a| a == "--keep") {
                eprintln!("kept the ledger and the bundle in {}", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
            result?;
        }
        Some("reconciler") => {
            let grants = arg(&args, "--grants", 1_000u64)?;
            let outage = arg(&args, "--outage-secs", 60u64)?;
            let dir = tempdir("reconciler")?;
            let result = reconciler::bench(&dir, grants, outage, &mut out).await;
            let _ = std::fs::remove_dir_all(&dir);
            result?;
        }
        Some("all") => {
            let events = arg(&args, "--events", 1_000_000u64)?;
            out.push_str(&format!("Machine: {}\n\n", machine()));
            bench_append(200_000, 64, &mut out).await?;
            let dir = tempdir("generated")?.join("ledger");
            let start = Instant::now();
            let vkey = generate(events, &dir).await?;
            out.push_str(&format!(
                "Synthetic ledger of {events} events generated and exported in {:.1} s.\n\n",
                start.elapsed().as_secs_f64()
            ));
            bench_verify(&dir.join("export"), &vkey, &mut out)?;
            let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
        }
        _ => {
            eprintln!(
                "usage: portcullis-bench gen --events N --out DIR | append [--events N] [--writers W] | verify --export DIR --key VKEY | postgres --url URL [--events N] [--writers W] [--rounds R] | workflow [--events N] [--grants G] | reconciler [--grants G] [--outage-secs S] | report [--events N] [--grants G] [--keep] | all [--events N]"
            );
            std::process::exit(2);
        }
    }
    print!("{out}");
    Ok(())
}
