//! `portcullis-bench postgres --url URL`: the PostgreSQL store under load,
//! next to the raw commit rate of the same server in the same run.
//!
//! The URL names a database the benchmark may create databases from (it
//! creates `bench_*` databases and drops them at the end).

use crate::{append_load, close, ms, percentile};
use portcullis::ledger::{Ledger, LedgerConfig};
use portcullis::store::postgres::PostgresStore;
use portcullis_format::note::SignerKey;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn with_database(url: &str, name: &str) -> String {
    let (head, _) = url.rsplit_once('/').unwrap_or((url, ""));
    format!("{head}/{name}")
}

fn admin(url: &str, sql: &str) -> anyhow::Result<()> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || -> anyhow::Result<()> {
        let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
        client.batch_execute(&sql)?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("admin thread panicked"))?
}

/// Single-row INSERTs, each its own transaction (one commit each), from `clients` connections for `secs`.
fn baseline_single_row_commits(url: &str, clients: usize, secs: f64) -> anyhow::Result<f64> {
    admin(url, "CREATE TABLE raw_commits (id BIGINT PRIMARY KEY, payload BYTEA NOT NULL)")?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let url = url.to_string();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
                let insert = client.prepare("INSERT INTO raw_commits (id, payload) VALUES ($1, $2)")?;
                let payload = vec![7u8; 620];
                let mut n = 0u64;
                while Instant::now() < deadline {
                    client.execute(&insert, &[&((c as i64) << 32 | n as i64), &payload])?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t.join().map_err(|_| anyhow::anyhow!("baseline thread panicked"))??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Writes out what earlier phases left dirty (`CHECKPOINT`), so that a phase
/// does not pay for the one before it: otherwise the server's checkpoint,
/// due once ~1 GB of WAL is written, lands in whichever phase runs then.
/// Needs a superuser or `pg_checkpoint`; without, the run goes on and says so.
async fn checkpoint(url: &str) {
    let url = url.to_string();
    let done = tokio::task::spawn_blocking(move || admin(&url, "CHECKPOINT")).await;
    if let Ok(Err(e)) | Err(e) = done.map_err(anyhow::Error::from) {
        eprintln!("CHECKPOINT before a phase failed ({e}); phases may pay for each other's writes");
    }
}

/// The machine's CPU time so far, busy and in all (`/proc/stat`, in clock
/// ticks); `None` where there is no `/proc/stat`.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    let total: u64 = ticks.iter().take(8).sum();
    // idle and iowait
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// What a phase of the benchmark cost the whole machine (the server, the
/// replicas and the load together): the share of its CPUs that were busy,
/// and the CPU time per event.
#[derive(Clone, Copy, Default)]
struct Cpu {
    busy: f64,
    us_per_event: f64,
}

impl Cpu {
    fn between(start: Option<(u64, u64)>, end: Option<(u64, u64)>, events: u64) -> Cpu {
        let (Some((busy0, total0)), Some((busy1, total1))) = (start, end) else { return Cpu::default() };
        // SAFETY: sysconf only reads a configuration value.
        let tick = 1e6 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let (busy, total) = ((busy1 - busy0) as f64, (total1 - total0).max(1) as f64);
        Cpu { busy: busy / total, us_per_event: busy * tick / events.max(1) as f64 }
    }

    fn show(self) -> String {
        format!("{:.0}% busy, {:.1} µs/event", self.busy * 100.0, self.us_per_event)
    }
}

fn open(url: &str, name: &str) -> anyhow::Result<(Ledger, portcullis::ledger::SequencerThread)> {
    let store = PostgresStore::open(url)?;
    Ok(Ledger::open(Arc::new(store), SignerKey::from_seed(name, &[42u8; 32])?, LedgerConfig::default())?)
}

pub async fn bench(url: &str, events: u64, writers: u64, rounds: u64, out: &mut String) -> anyhow::Result<()> {
    let suffix = std::process::id();
    let mut names = vec![format!("bench_raw_{suffix}")];
    for round in 0..rounds {
        names.push(format!("bench_one_{suffix}_{round}"));
        names.push(format!("bench_two_{suffix}_{round}"));
    }
    for name in &names {
        admin(url, &format!("CREATE DATABASE {name}"))?;
    }
    let result = run(url, &names, events, writers, rounds, out).await;
    for name in &names {
        let _ = admin(url, &format!("DROP DATABASE IF EXISTS {name}"));
    }
    result
}

/// One replica with all the writers: its rate and its latencies.
async fn one_replica(url: &str, origin: &str, events: u64, writers: u64) -> anyhow::Result<(f64, Cpu, Vec<Duration>)> {
    let (ledger, thread) = {
        let (u, o) = (url.to_string(), origin.to_string());
        tokio::task::spawn_blocking(move || open(&u, &o)).await??
    };
    checkpoint(url).await;
    let before = cpu_ticks();
    let (elapsed, latencies) = append_load(&ledger, events, writers, 0).await?;
    let cpu = Cpu::between(before, cpu_ticks(), events);
    close(ledger, thread).await;
    Ok((events as f64 / elapsed.as_secs_f64(), cpu, latencies))
}

/// Two replicas (two sequencers, two stores, one database), half the writers each.
async fn two_replicas(url: &str, origin: &str, events: u64, writers: u64) -> anyhow::Result<(f64, Cpu)> {
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let (u, o) = (url.to_string(), origin.to_string());
        replicas.push(tokio::task::spawn_blocking(move || open(&u, &o)).await??);
    }
    checkpoint(url).await;
    let (start, before) = (Instant::now(), cpu_ticks());
    let half = events / 2;
    let (ra, rb) = tokio::join!(
        append_load(&replicas[0].0, half, writers / 2, 1_000_000_000),
        append_load(&replicas[1].0, half, writers / 2, 2_000_000_000)
    );
    let rate = (2 * half) as f64 / start.elapsed().as_secs_f64();
    let cpu = Cpu::between(before, cpu_ticks(), 2 * half);
    for (ledger, thread) in replicas {
        close(ledger, thread).await;
    }
    ra?;
    rb?;
    Ok((rate, cpu))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

async fn run(
    url: &str,
    names: &[String],
    events: u64,
    writers: u64,
    rounds: u64,
    out: &mut String,
) -> anyhow::Result<()> {
    let origin = "bench.portcullis.local/postgres";
    let raw_url = with_database(url, &names[0]);
    let baseline =
        tokio::task::spawn_blocking(move || baseline_single_row_commits(&raw_url, writers as usize, 5.0)).await??;

    // One replica and two replicas alternate, each round on fresh databases: the
    // server's rate drifts between runs by 10-20%, so each ratio compares neighbours.
    let (mut ones, mut twos, mut latencies, mut rows) = (Vec::new(), Vec::new(), Vec::new(), String::new());
    for round in 0..rounds as usize {
        let (one, one_cpu, round_latencies) =
            one_replica(&with_database(url, &names[1 + 2 * round]), origin, events, writers).await?;
        let (two, two_cpu) = two_replicas(&with_database(url, &names[2 + 2 * round]), origin, events, writers).await?;
        rows.push_str(&format!(
            "| {} | {one:.0} events/s ({}) | {two:.0} events/s ({}) | {:.2} |\n",
            round + 1,
            one_cpu.show(),
            two_cpu.show(),
            two / one
        ));
        ones.push(one);
        twos.push(two);
        latencies.extend(round_latencies);
    }
    latencies.sort_unstable();
    let ratios: Vec<f64> = ones.iter().zip(&twos).map(|(one, two)| two / one).collect();
    let (one, two) = (median(&ones), median(&twos));
    out.push_str(&format!(
        "### PostgreSQL store ({events} events, {writers} concurrent writers, synchronous_commit as the server has it)\n\n\
         | figure | value | baseline in the same run | ratio |\n|---|---|---|---|\n\
         | throughput, one replica (median of {rounds}) | {one:.0} events/s | raw single-row INSERT commits, {writers} connections: {baseline:.0}/s | {:.2} |\n\
         | p50 / p99 append latency, one replica | {:.2} ms / {:.2} ms | | |\n\
         | throughput, two replicas on one database, {} writers each (median of {rounds}) | {two:.0} events/s | one replica: {one:.0}/s | {:.2} (median of the rounds' ratios: {:.2}) |\n\n\
         | round | one replica (the machine's CPU) | two replicas (the machine's CPU) | two / one |\n|---|---|---|---|\n{rows}\n",
        one / baseline,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        writers / 2,
        two / one,
        median(&ratios),
    ));
    Ok(())
}
