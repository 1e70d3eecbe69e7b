//! Crash safety: a process appending from 64 concurrent writers is killed
//! with SIGKILL, many times over; after each restart every acknowledged
//! append is present, the ledger opens (its tail verifies), and at the end
//! the whole ledger verifies.
//!
//! The appending process is this test binary itself, re-run with the
//! ignored test `crash_child_appender` selected, so no extra binary is built.

use crate::ledger::{close, draft, open, verify_dir};
use portcullis_format::event::{EventId, ParsedEntry};
use portcullis_format::keys::KeySet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const DIR_VAR: &str = "PORTCULLIS_CRASH_TEST_DIR";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of acknowledged_appends_survive_sigkill; that test runs it"]
async fn crash_child_appender() {
    let dir = std::path::PathBuf::from(std::env::var(DIR_VAR).expect("run by acknowledged_appends_survive_sigkill"));
    let key = portcullis::keyfile::load(&dir.join("log.key")).unwrap();
    let (ledger, _thread) = open(&dir, key).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for writer in 0..64u64 {
        let ledger = ledger.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let receipt = ledger.append(draft(writer * 1_000_000 + i)).await.unwrap();
                let _ = tx.send(format!("ACK {} {}\n", receipt.seq, receipt.id));
            }
        });
    }
    let mut out = std::io::stdout().lock();
    while let Some(line) = rx.recv().await {
        out.write_all(line.as_bytes()).unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let key = portcullis::keyfile::generate(&dir.path().join("log.key"), "portcullis.test/crash").unwrap();
    let vkey = key.verifier().clone();
    let mut acknowledged: Vec<(u64, EventId)> = Vec::new();
    let rounds = 10;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash::crash_child_appender", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Kill after a different number of acknowledgements each round, while 64 writers are mid-flight.
        let kill_after = 50 + round * 137;
        let mut seen = 0;
        let mut lines = BufReader::new(stdout).lines();
        while seen < kill_after {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(ack) = parse_ack(&line) {
                acknowledged.push(ack);
                seen += 1;
            }
        }
        child.kill().unwrap();
        // Acknowledgements already written to the pipe before the kill count too.
        for line in lines.map_while(Result::ok) {
            if let Some(ack) = parse_ack(&line) {
                acknowledged.push(ack);
            }
        }
        child.wait().unwrap();
        assert!(seen >= kill_after, "round {round}: the child stopped after {seen} acknowledgements");

        // Restart: the tail verifies, and every acknowledged append is there, unchanged.
        let key = portcullis::keyfile::load(&dir.path().join("log.key")).unwrap();
        let (ledger, thread) = open(dir.path(), key).unwrap_or_else(|e| panic!("round {round}: reopening failed: {e}"));
        let store = std::sync::Arc::clone(ledger.store());
        for (seq, id) in &acknowledged {
            let entry =
                store.entries(*seq, 1).unwrap().pop().unwrap_or_else(|| panic!("acknowledged entry {seq} was lost"));
            assert_eq!(ParsedEntry::parse(&entry).unwrap().event.draft.id, *id, "entry {seq} changed");
        }
        close(ledger, thread).await;
    }
    assert!(acknowledged.len() >= (0..rounds).map(|r| 50 + r * 137).sum::<usize>());

    let export = dir.path().join("export");
    let store = portcullis::store::sqlite::SqliteStore::open(&dir.path().join("ledger.db")).unwrap();
    portcullis::export::export(&store, &export, 0, None, &|_, _| {}).unwrap();
    let summary = verify_dir(&export, KeySet::single(vkey)).unwrap();
    assert!(summary.entries_verified as usize > acknowledged.len());
}

fn parse_ack(line: &str) -> Option<(u64, EventId)> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let seq = parts.next()?.parse().ok()?;
    let id = EventId::parse(parts.next()?)?;
    Some((seq, id))
}
