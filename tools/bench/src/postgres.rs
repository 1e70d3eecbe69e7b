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

fn open(url: &str, name: &str) -> anyhow::Result<(Ledger, portcullis::ledger::SequencerThread)> {
    let store = PostgresStore::open(url)?;
    Ok(Ledger::open(Arc::new(store), SignerKey::from_seed(name, &[42u8; 32])?, LedgerConfig::default())?)
}

pub async fn bench(url: &str, events: u64, writers: u64, out: &mut String) -> anyhow::Result<()> {
    let suffix = std::process::id();
    let names = [format!("bench_raw_{suffix}"), format!("bench_one_{suffix}"), format!("bench_two_{suffix}")];
    for name in &names {
        admin(url, &format!("CREATE DATABASE {name}"))?;
    }
    let result = run(url, &names, events, writers, out).await;
    for name in &names {
        let _ = admin(url, &format!("DROP DATABASE IF EXISTS {name}"));
    }
    result
}

async fn run(url: &str, names: &[String; 3], events: u64, writers: u64, out: &mut String) -> anyhow::Result<()> {
    let origin = "bench.portcullis.local/postgres";
    let raw_url = with_database(url, &names[0]);
    let baseline =
        tokio::task::spawn_blocking(move || baseline_single_row_commits(&raw_url, writers as usize, 5.0)).await??;

    let one_url = with_database(url, &names[1]);
    let (ledger, thread) = {
        let u = one_url.clone();
        tokio::task::spawn_blocking(move || open(&u, origin)).await??
    };
    let (elapsed, latencies) = append_load(&ledger, events, writers, 0).await?;
    let one_rate = events as f64 / elapsed.as_secs_f64();
    close(ledger, thread).await;

    // Two replicas: two sequencers, two stores, one database; half the writers each.
    let two_url = with_database(url, &names[2]);
    let (a, a_thread) = {
        let u = two_url.clone();
        tokio::task::spawn_blocking(move || open(&u, origin)).await??
    };
    let (b, b_thread) = {
        let u = two_url.clone();
        tokio::task::spawn_blocking(move || open(&u, origin)).await??
    };
    let start = Instant::now();
    let half = events / 2;
    let (ra, rb) = tokio::join!(
        append_load(&a, half, writers / 2, 1_000_000_000),
        append_load(&b, half, writers / 2, 2_000_000_000)
    );
    let two = match (ra, rb) {
        (Ok(_), Ok(_)) => Ok((2 * half) as f64 / start.elapsed().as_secs_f64()),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    close(a, a_thread).await;
    close(b, b_thread).await;

    let two_row = match two {
        Ok(two_rate) => format!("{two_rate:.0} events/s | one replica: {one_rate:.0}/s | {:.2}", two_rate / one_rate),
        Err(e) => format!("failed: {e} | one replica: {one_rate:.0}/s | -"),
    };
    out.push_str(&format!(
        "### PostgreSQL store ({events} events, {writers} concurrent writers, synchronous_commit as the server has it)\n\n\
         | figure | value | baseline in the same run | ratio |\n|---|---|---|---|\n\
         | throughput, one replica | {one_rate:.0} events/s | raw single-row INSERT commits, {writers} connections: {baseline:.0}/s | {:.2} |\n\
         | p50 / p99 append latency | {:.2} ms / {:.2} ms | | |\n\
         | throughput, two replicas on one database ({} writers each) | {two_row} |\n\n",
        one_rate / baseline,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        writers / 2,
    ));
    Ok(())
}
