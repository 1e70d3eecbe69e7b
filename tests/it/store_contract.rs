//! The store contract: one suite, run unchanged against every backend.
//!
//! Each case takes a [`Backend`], which makes fresh stores and reopens them.
//! The `contract!` macro instantiates every case for SQLite, PostgreSQL (a
//! throwaway server, see `postgres.rs`) and, in builds with the `kurrentdb`
//! feature, KurrentDB: against the server `PORTCULLIS_TEST_KURRENTDB_URL`
//! names (each case on streams of its own), or skipped, saying so, when it
//! names none. CI has no KurrentDB server.

use crate::ledger::{draft, signer, verify_dir};
use crate::postgres::TestPg;
use portcullis::ledger::{Ledger, LedgerConfig, SequencerThread};
use portcullis::store::{AppendBatch, KeyRecord, Passed, Store, StoreError};
use portcullis_format::event::{EventId, ParsedEntry};
use portcullis_format::keys::KeySet;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// Makes stores of one backend; every store it opens is the same ledger.
pub trait Backend {
    /// The store's URL (what `portcullis` takes in its config).
    fn url(&self) -> String;
    fn open(&self) -> Arc<dyn Store> {
        portcullis::store::open_url(&self.url()).unwrap_or_else(|e| panic!("opening {}: {e}", self.url()))
    }
    /// Why the cases cannot run here (no server), if they cannot.
    fn unavailable(&self) -> Option<String> {
        None
    }
}

/// A KurrentDB server named by `PORTCULLIS_TEST_KURRENTDB_URL`; every
/// backend made is a ledger on streams of its own.
#[cfg(feature = "kurrentdb")]
pub struct Kurrent(Option<String>);

#[cfg(feature = "kurrentdb")]
impl Kurrent {
    pub fn new() -> Kurrent {
        // The client brings a second rustls provider; the one every other client here uses serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = std::env::var("PORTCULLIS_TEST_KURRENTDB_URL").ok().filter(|u| !u.is_empty());
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix).unwrap();
        let stream = format!(
            "portcullis-test-{}-{}",
            std::process::id(),
            suffix.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        Kurrent(url.map(|u| format!("{u}{}stream={stream}", if u.contains('?') { '&' } else { '?' })))
    }
}

#[cfg(feature = "kurrentdb")]
impl Backend for Kurrent {
    fn url(&self) -> String {
        self.0.clone().unwrap_or_default()
    }
    fn unavailable(&self) -> Option<String> {
        self.0.is_none().then(|| "PORTCULLIS_TEST_KURRENTDB_URL names no KurrentDB server".to_string())
    }
}

pub struct Sqlite(tempfile::TempDir);

impl Sqlite {
    pub fn new() -> Sqlite {
        Sqlite(tempfile::tempdir().unwrap())
    }
}

impl Backend for Sqlite {
    fn url(&self) -> String {
        format!("sqlite:{}", self.0.path().join("ledger.db").display())
    }
}

pub struct Postgres {
    pub server: TestPg,
    url: String,
}

impl Postgres {
    pub fn new() -> Postgres {
        let server = TestPg::start();
        let url = server.database();
        Postgres { server, url }
    }
}

impl Backend for Postgres {
    fn url(&self) -> String {
        self.url.clone()
    }
}

fn id(n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8] = 0xee;
    id
}

/// The leaf hash `batch` gives entry `n`.
fn leaf(n: u64) -> [u8; 32] {
    [n as u8; 32]
}

/// A batch of `count` opaque entries at `at` (the store does not parse
/// entries), signed, as it were, on the leaf `batch` gave entry `at - 1`.
fn batch(at: u64, count: u64) -> AppendBatch {
    AppendBatch {
        expected_size: at,
        prev: at.checked_sub(1).map(leaf),
        entries: (at..at + count).map(|n| format!("entry {n}").into_bytes()).collect(),
        nodes: (at..at + count).map(|n| (0u8, n, leaf(n))).collect(),
        key_changes: Vec::new(),
        ids: (at..at + count).map(id).collect(),
        watch_turn: false,
    }
}

fn entry_texts(store: &dyn Store, from: u64, limit: u64) -> Vec<String> {
    store.entries(from, limit).unwrap().into_iter().map(|e| String::from_utf8(e).unwrap()).collect()
}

pub fn appends_in_order_at_the_expected_position(backend: &dyn Backend) {
    let store = backend.open();
    assert_eq!(store.size().unwrap(), 0);
    store.append(&batch(0, 3)).unwrap();
    store.append(&batch(3, 1)).unwrap();
    store.append(&batch(4, 100)).unwrap();
    assert_eq!(store.size().unwrap(), 104);
    let all = entry_texts(store.as_ref(), 0, 1000);
    assert_eq!(all, (0..104).map(|n| format!("entry {n}")).collect::<Vec<_>>());
}

pub fn a_stale_position_conflicts_and_writes_nothing(backend: &dyn Backend) {
    let store = backend.open();
    store.append(&batch(0, 5)).unwrap();
    for stale in [0, 4, 6] {
        let mut b = batch(stale, 2);
        b.ids = (0..2).map(|n| id(1000 + stale * 10 + n)).collect();
        match store.append(&b) {
            Err(StoreError::AppendConflict { expected, actual }) => assert_eq!((expected, actual), (stale, 5)),
            other => panic!("append at {stale} on a store of 5: {other:?}"),
        }
    }
    assert_eq!(store.size().unwrap(), 5);
    assert_eq!(entry_texts(store.as_ref(), 0, 100).len(), 5);
    // Nothing of a refused batch was kept: its ids are still free.
    let mut b = batch(5, 2);
    b.ids = vec![id(1040), id(1041)];
    store.append(&b).unwrap();
}

pub fn a_batch_signed_on_another_leaf_conflicts_and_writes_nothing(backend: &dyn Backend) {
    let store = backend.open();
    store.append(&batch(0, 3)).unwrap();
    let mut other = batch(3, 2);
    other.prev = Some([0xab; 32]);
    match store.append(&other) {
        Err(StoreError::AppendConflict { expected, actual }) => assert_eq!((expected, actual), (3, 3)),
        other => panic!("append on a leaf the store does not hold: {other:?}"),
    }
    assert_eq!(store.size().unwrap(), 3);
    // Signed on the stored leaf: appended, its ids free (nothing of the refused one was kept).
    store.append(&batch(3, 2)).unwrap();
    // Without a leaf to check, the position alone decides.
    let mut unchecked = batch(5, 1);
    unchecked.prev = None;
    store.append(&unchecked).unwrap();
    assert_eq!(entry_texts(store.as_ref(), 0, 100).len(), 6);
}

pub fn a_duplicate_event_id_is_refused_with_nothing_written(backend: &dyn Backend) {
    let store = backend.open();
    store.append(&batch(0, 3)).unwrap();
    let mut b = batch(3, 3);
    b.ids[2] = id(1);
    b.key_changes.push((4, "a key".into()));
    assert!(matches!(store.append(&b), Err(StoreError::DuplicateEventId(dup)) if dup == id(1)));
    let mut within = batch(3, 3);
    within.ids[2] = within.ids[0];
    assert!(matches!(store.append(&within), Err(StoreError::DuplicateEventId(_))));
    assert_eq!(store.size().unwrap(), 3);
    assert!(matches!(store.node(0, 3), Err(StoreError::MissingNode { .. })));
    assert!(store.keys().unwrap().is_empty(), "the refused batch's key change was not kept");
    store.append(&batch(3, 3)).unwrap();
}

pub fn reads_from_any_position(backend: &dyn Backend) {
    let store = backend.open();
    store.append(&batch(0, 300)).unwrap();
    for (from, limit) in [(0, 1), (1, 10), (255, 2), (299, 5), (100, 200)] {
        let expected: Vec<String> = (from..(from + limit).min(300)).map(|n| format!("entry {n}")).collect();
        assert_eq!(entry_texts(store.as_ref(), from, limit), expected, "from {from}, limit {limit}");
    }
    assert!(store.entries(300, 10).unwrap().is_empty());
    assert!(store.entries(10_000, 10).unwrap().is_empty());
}

pub fn nodes_checkpoints_and_keys(backend: &dyn Backend) {
    let store = backend.open();
    let mut b = batch(0, 4);
    b.nodes.push((1, 0, [0xa1; 32]));
    b.nodes.push((1, 1, [0xa2; 32]));
    b.nodes.push((2, 0, [0xb1; 32]));
    b.key_changes.push((0, "key-0".into()));
    store.append(&b).unwrap();
    assert_eq!(store.node(1, 1).unwrap(), [0xa2; 32]);
    assert_eq!(store.node(2, 0).unwrap(), [0xb1; 32]);
    assert_eq!(store.nodes(0, 1, 3).unwrap(), vec![[1u8; 32], [2; 32], [3; 32]]);
    assert!(matches!(store.nodes(0, 2, 3), Err(StoreError::MissingNode { level: 0, index: 4 })));
    assert!(matches!(store.node(3, 0), Err(StoreError::MissingNode { level: 3, index: 0 })));

    let mut rotation = batch(4, 1);
    rotation.key_changes.push((5, "key-5".into()));
    store.append(&rotation).unwrap();
    assert_eq!(
        store.keys().unwrap(),
        vec![KeyRecord { from_seq: 0, vkey: "key-0".into() }, KeyRecord { from_seq: 5, vkey: "key-5".into() }]
    );

    assert_eq!(store.latest_checkpoint().unwrap(), None);
    store.put_checkpoint(2, "note at 2").unwrap();
    store.put_checkpoint(4, "note at 4").unwrap();
    store.put_checkpoint(4, "another note at 4").unwrap();
    assert_eq!(store.latest_checkpoint().unwrap(), Some((4, "note at 4".into())), "the first note of a size stays");
    assert_eq!(store.checkpoint_at(2).unwrap().as_deref(), Some("note at 2"));
    assert_eq!(store.checkpoint_at(3).unwrap(), None);
}

/// The backend, or `None` (saying why) when its cases cannot run here.
pub fn runnable<B: Backend>(backend: B) -> Option<B> {
    match backend.unavailable() {
        Some(why) => {
            eprintln!("skipped: {why}");
            None
        }
        None => Some(backend),
    }
}

fn open_ledger(store: Arc<dyn Store>) -> (Ledger, SequencerThread) {
    Ledger::open(store, signer(1), LedgerConfig::default()).unwrap()
}

async fn close(ledger: Ledger, thread: SequencerThread) {
    crate::ledger::close(ledger, thread).await;
}

/// Exports the ledger (at its latest checkpoint) and verifies all of it.
fn verify_store(store: &dyn Store) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    portcullis::export::export(store, &export, 0, None, &|_, _| {}).unwrap();
    verify_dir(&export, KeySet::single(signer(1).verifier().clone())).unwrap().entries_verified
}

pub async fn concurrent_appends_are_group_committed(backend: &dyn Backend) {
    let (ledger, thread) = open_ledger(backend.open());
    let mut tasks = Vec::new();
    for writer in 0..64u64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..20 {
                seqs.push(ledger.append(draft(writer * 100 + i)).await.unwrap().seq);
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.extend(task.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=1280).collect::<Vec<_>>());
    let store = Arc::clone(ledger.store());
    close(ledger, thread).await;
    assert_eq!(verify_store(store.as_ref()), 1281);
}

pub async fn reopening_continues_the_ledger(backend: &dyn Backend) {
    let (ledger, thread) = open_ledger(backend.open());
    for i in 0..50 {
        ledger.append(draft(i)).await.unwrap();
    }
    close(ledger, thread).await;
    let (ledger, thread) = open_ledger(backend.open());
    assert_eq!(ledger.head().size, 51);
    assert_eq!(ledger.append(draft(99)).await.unwrap().seq, 51);
    let store = Arc::clone(ledger.store());
    close(ledger, thread).await;
    assert_eq!(verify_store(backend.open().as_ref()), 52);
    drop(store);
}

/// Two ledgers (two sequencers, as two replicas would run) on one store,
/// appending at once: one chain, no gap, no duplicate seq; every receipt's
/// event is at its seq.
pub async fn two_writers_keep_one_chain(backend: &dyn Backend) {
    let (first, first_thread) = open_ledger(backend.open());
    let (second, second_thread) = open_ledger(backend.open());
    let mut tasks = Vec::new();
    for writer in 0..32u64 {
        let ledger = if writer % 2 == 0 { first.clone() } else { second.clone() };
        tasks.push(tokio::spawn(async move {
            let mut receipts = Vec::new();
            for i in 0..15 {
                receipts.push(ledger.append(draft(writer * 100 + i)).await.unwrap());
            }
            receipts
        }));
    }
    let mut receipts = Vec::new();
    for task in tasks {
        receipts.extend(task.await.unwrap());
    }
    let seqs: HashSet<u64> = receipts.iter().map(|r| r.seq).collect();
    assert_eq!(seqs.len(), receipts.len(), "no seq was acknowledged twice");
    let store = backend.open();
    for receipt in &receipts {
        let entry = store.entries(receipt.seq, 1).unwrap().pop().unwrap();
        assert_eq!(ParsedEntry::parse(&entry).unwrap().event.draft.id, receipt.id);
    }
    first.checkpoint().await.unwrap();
    close(first, first_thread).await;
    second.checkpoint().await.unwrap();
    close(second, second_thread).await;
    assert_eq!(verify_store(store.as_ref()), 481);
}

// --- Crash: a process appending through the store is killed with SIGKILL. ---

const CRASH_URL_VAR: &str = "PORTCULLIS_CONTRACT_CRASH_URL";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of the contract's crash case; that case runs it"]
async fn crash_child() {
    let url = std::env::var(CRASH_URL_VAR).expect("run by the crash case");
    let store = portcullis::store::open_url(&url).unwrap();
    let (ledger, _thread) = open_ledger(store);
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

pub async fn acknowledged_appends_survive_a_killed_process(backend: &dyn Backend) {
    let mut acknowledged: Vec<(u64, EventId)> = Vec::new();
    for round in 0..4 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["store_contract::crash_child", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(CRASH_URL_VAR, backend.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let kill_after = 100 + round * 211;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen < kill_after {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(ack) = parse_ack(&line) {
                acknowledged.push(ack);
                seen += 1;
            }
        }
        child.kill().unwrap();
        acknowledged.extend(lines.map_while(Result::ok).filter_map(|l| parse_ack(&l)));
        child.wait().unwrap();
        assert!(seen >= kill_after, "round {round}: the child stopped after {seen} acknowledgements");

        let (ledger, thread) = open_ledger(backend.open());
        let store = Arc::clone(ledger.store());
        for (seq, id) in &acknowledged {
            let entry = store.entries(*seq, 1).unwrap().pop().unwrap_or_else(|| panic!("acknowledged {seq} lost"));
            assert_eq!(ParsedEntry::parse(&entry).unwrap().event.draft.id, *id, "entry {seq} changed");
        }
        ledger.checkpoint().await.unwrap();
        close(ledger, thread).await;
    }
    assert!(verify_store(backend.open().as_ref()) as usize > acknowledged.len());
}

fn parse_ack(line: &str) -> Option<(u64, EventId)> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let seq = parts.next()?.parse().ok()?;
    let id = EventId::parse(parts.next()?)?;
    Some((seq, id))
}

macro_rules! contract {
    ($name:ident, $backend:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn appends_in_order_at_the_expected_position() {
                let Some(backend) = runnable($backend) else { return };
                super::appends_in_order_at_the_expected_position(&backend);
            }
            #[test]
            fn a_stale_position_conflicts_and_writes_nothing() {
                let Some(backend) = runnable($backend) else { return };
                super::a_stale_position_conflicts_and_writes_nothing(&backend);
            }
            #[test]
            fn a_duplicate_event_id_is_refused_with_nothing_written() {
                let Some(backend) = runnable($backend) else { return };
                super::a_duplicate_event_id_is_refused_with_nothing_written(&backend);
            }
            #[test]
            fn a_batch_signed_on_another_leaf_conflicts_and_writes_nothing() {
                let Some(backend) = runnable($backend) else { return };
                super::a_batch_signed_on_another_leaf_conflicts_and_writes_nothing(&backend);
            }
            #[test]
            fn reads_from_any_position() {
                let Some(backend) = runnable($backend) else { return };
                super::reads_from_any_position(&backend);
            }
            #[test]
            fn nodes_checkpoints_and_keys() {
                let Some(backend) = runnable($backend) else { return };
                super::nodes_checkpoints_and_keys(&backend);
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_appends_are_group_committed() {
                let Some(backend) = runnable($backend) else { return };
                super::concurrent_appends_are_group_committed(&backend).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reopening_continues_the_ledger() {
                let Some(backend) = runnable($backend) else { return };
                super::reopening_continues_the_ledger(&backend).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_writers_keep_one_chain() {
                let Some(backend) = runnable($backend) else { return };
                super::two_writers_keep_one_chain(&backend).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn acknowledged_appends_survive_a_killed_process() {
                let Some(backend) = runnable($backend) else { return };
                super::acknowledged_appends_survive_a_killed_process(&backend).await;
            }
        }
    };
}

contract!(sqlite, Sqlite::new());
contract!(postgres, Postgres::new());
#[cfg(feature = "kurrentdb")]
contract!(kurrentdb, Kurrent::new());

/// PostgreSQL passes the writers' turn with what its holder has in flight:
/// the next holder reads it, appends on top of it once it commits, and is
/// refused when it never commits or commits as other entries.
#[test]
fn postgres_passes_the_turn_with_the_entries_in_flight() {
    let backend = Postgres::new();
    let (a, b) = (backend.open(), backend.open());
    assert!(a.take_turn(0).unwrap().is_some(), "a free turn is taken");
    a.append(&batch(0, 2)).unwrap();
    // `a` signed entries 2 and 3 and passes the turn before they commit.
    let in_flight = batch(2, 2);
    let passed = Passed { before: leaf(1), leaves: vec![leaf(2), leaf(3)], last: in_flight.entries[1].clone() };
    a.pass_turn(2, &passed).unwrap();
    assert!(!a.holds_turn());
    let turn = b.take_turn(0).unwrap().expect("the passed turn is taken");
    assert_eq!(entry_texts_of(&turn.committed), ["entry 0", "entry 1"]);
    assert_eq!(turn.passed, passed);
    // `b` signs on top; its append comes first, finds the passed entries not there
    // yet, and waits for them (appends are held back until both are queued).
    let hold = HeadRowHold::new(&backend.url());
    let waiting = {
        let b = Arc::clone(&b);
        std::thread::spawn(move || b.append(&batch(4, 1)))
    };
    wait_for_lock_waiters(&backend.url(), 1);
    let committing = {
        let a = Arc::clone(&a);
        std::thread::spawn(move || a.append(&in_flight))
    };
    wait_for_lock_waiters(&backend.url(), 2);
    hold.release();
    committing.join().unwrap().unwrap();
    waiting.join().unwrap().unwrap();
    assert_eq!(b.size().unwrap(), 5);

    // `b` passes entry 5, which then never commits: a batch signed on it waits and is refused.
    b.pass_turn(5, &Passed { before: leaf(4), leaves: vec![leaf(5)], last: b"entry 5".to_vec() }).unwrap();
    let turn = a.take_turn(2).unwrap().expect("taken back");
    assert_eq!(turn.committed.len(), 3, "entries 2 to 4, committed since");
    assert_eq!((turn.passed.before, turn.passed.leaves), (leaf(4), vec![leaf(5)]));
    let started = std::time::Instant::now();
    match a.append(&batch(6, 1)) {
        Err(StoreError::AppendConflict { expected: 6, actual: 5 }) => {}
        other => panic!("an append on entries that never came: {other:?}"),
    }
    assert!(started.elapsed() >= std::time::Duration::from_millis(40), "it waited for them first");
    // Other entries land at 5: a batch signed on the passed leaf is refused, though its position is free.
    let mut replaced = batch(5, 1);
    replaced.nodes[0].2 = [0xcd; 32];
    a.append(&replaced).unwrap();
    assert!(matches!(a.append(&batch(6, 1)), Err(StoreError::AppendConflict { expected: 6, actual: 6 })));
    a.pass_turn(6, &Passed::default()).unwrap();
    // Nothing passed continues the store now: the next holder reads committed entries only.
    let turn = b.take_turn(5).unwrap().expect("taken");
    assert_eq!((turn.committed.len(), turn.passed), (1, Passed::default()));
    assert_eq!(b.size().unwrap(), 6);

    // A pass that began before the taker's position: the leaf the returned ones continue is
    // the pass's own, for the taker to check against the leaf its state ends on.
    let ours = [[0x61; 32], [0x62; 32], [0x63; 32]];
    b.pass_turn(6, &Passed { before: leaf(5), leaves: ours.to_vec(), last: b"entry 8".to_vec() }).unwrap();
    let turn = a.take_turn(7).unwrap().expect("taken");
    assert!(turn.committed.is_empty());
    assert_eq!((turn.passed.before, turn.passed.leaves), (ours[0], ours[1..].to_vec()));
}

/// An append tells whether another replica waits for the turn only when its
/// batch asks (the answer costs a scan of the server's lock table).
#[test]
fn postgres_reports_a_waiting_replica_when_asked() {
    let backend = Postgres::new();
    let (a, b) = (backend.open(), backend.open());
    assert!(a.take_turn(0).unwrap().is_some());
    let mut first = batch(0, 1);
    first.watch_turn = true;
    a.append(&first).unwrap();
    assert!(!a.turn_wanted(), "nobody waits yet");
    let taking = {
        let b = Arc::clone(&b);
        std::thread::spawn(move || b.take_turn(0))
    };
    wait_for_lock_waiters(&backend.url(), 1);
    a.append(&batch(1, 1)).unwrap();
    assert!(!a.turn_wanted(), "not asked");
    let mut watching = batch(2, 1);
    watching.watch_turn = true;
    a.append(&watching).unwrap();
    assert!(a.turn_wanted(), "asked, and b waits");
    a.pass_turn(3, &Passed::default()).unwrap();
    let turn = taking.join().unwrap().unwrap().expect("b takes the turn a gave up");
    assert_eq!(turn.committed.len(), 3);
}

fn entry_texts_of(entries: &[Vec<u8>]) -> Vec<String> {
    entries.iter().map(|e| String::from_utf8(e.clone()).unwrap()).collect()
}

/// A replica that passed the turn with entries that then never commit (it
/// died, or its batch failed) holds nothing up on the next holder: a command
/// decided on the committed ledger is appended there, not refused as stale
/// against the passed entries, and plain appends go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_entries_passed_that_never_commit_hold_nothing_up() {
    let backend = Postgres::new();
    let (ledger, thread) = open_ledger(backend.open());
    ledger.append(draft(1)).await.unwrap();
    let size = ledger.refresh_head().await.unwrap().size;
    let other = backend.open();
    tokio::task::spawn_blocking(move || pass_a_signed_entry(other.as_ref(), size)).await.unwrap();
    let decided = ledger.append_all_after(vec![draft(3)], size).await.expect("appended on the committed ledger");
    assert_eq!(decided[0].seq, size);
    assert_eq!(ledger.append(draft(4)).await.unwrap().seq, size + 1);
    ledger.checkpoint().await.unwrap();
    close(ledger, thread).await;
    assert_eq!(verify_store(backend.open().as_ref()), size + 2);
}

/// A command decided before entries another replica passed with the turn is
/// not appended after them when they commit: the holder checks it against
/// committed entries only, so it is signed where they go, loses to them, and
/// is refused as stale (decide again), as if they had been committed before
/// it took the turn. Appends are held back by a lock on the head row so that
/// the passed entries commit after the turn was taken and before the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_command_decided_before_passed_entries_that_commit_is_stale() {
    let backend = Postgres::new();
    let (ledger, thread) = open_ledger(backend.open());
    ledger.append(draft(1)).await.unwrap();
    let size = ledger.refresh_head().await.unwrap().size;
    let hold = HeadRowHold::new(&backend.url());
    let other = backend.open();
    let committing = tokio::task::spawn_blocking(move || {
        // Queued on the head row first, so it commits first.
        other.append(&pass_a_signed_entry(other.as_ref(), size))
    });
    let url = backend.url();
    tokio::task::spawn_blocking(move || wait_for_lock_waiters(&url, 1)).await.unwrap();
    let decided = {
        let ledger = ledger.clone();
        tokio::spawn(async move { ledger.append_all_after(vec![draft(3)], size).await })
    };
    let url = backend.url();
    tokio::task::spawn_blocking(move || wait_for_lock_waiters(&url, 2)).await.unwrap();
    tokio::task::spawn_blocking(move || hold.release()).await.unwrap();
    committing.await.unwrap().expect("the passed entry commits");
    match decided.await.unwrap() {
        Err(portcullis::ledger::AppendError::Stale { after }) => assert_eq!(after, size),
        other => panic!("a command decided before a committed entry: {other:?}"),
    }
    assert_eq!(ledger.append(draft(4)).await.unwrap().seq, size + 1);
    ledger.checkpoint().await.unwrap();
    close(ledger, thread).await;
    assert_eq!(verify_store(backend.open().as_ref()), size + 2);
}

/// Waits until `n` sessions of the database at `url` wait for a lock.
fn wait_for_lock_waiters(url: &str, n: i64) {
    let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()";
    for _ in 0..1000 {
        if client.query_one(sql, &[]).unwrap().get::<_, i64>(0) >= n {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("fewer than {n} sessions came to wait for a lock");
}

/// A transaction holding the lock of the ledger's head row, which every
/// append takes: appends queue behind it, in order, until it is released.
struct HeadRowHold {
    release: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl HeadRowHold {
    fn new(url: &str) -> HeadRowHold {
        let url = url.to_string();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (held, is_held) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
            let mut tx = client.transaction().unwrap();
            tx.query("SELECT size FROM ledger_head FOR UPDATE", &[]).unwrap();
            held.send(()).unwrap();
            let _ = released.recv();
            tx.commit().unwrap();
        });
        is_held.recv().unwrap();
        HeadRowHold { release, thread }
    }

    fn release(self) {
        self.release.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

/// Takes the writers' turn on `store` (whose ledger holds `size` entries,
/// signed by `signer(1)`), passes one entry signed on top of them, and returns
/// it as the batch that would commit it.
fn pass_a_signed_entry(store: &dyn Store, size: u64) -> AppendBatch {
    // A ledger holding the turn gives it up once its writer is idle.
    while store.take_turn(size).unwrap().is_none() {}
    let last = store.entries(size - 1, 1).unwrap().pop().unwrap();
    let prev = portcullis_format::merkle::leaf_hash(&last);
    let event = portcullis_format::event::Event {
        log: signer(1).name().into(),
        seq: size,
        prev,
        ts: portcullis_format::time::Timestamp::now(),
        draft: draft(2),
    };
    let entry = event.sign(&[&signer(1)]).unwrap();
    let leaf = portcullis_format::merkle::leaf_hash(&entry);
    store.pass_turn(size, &Passed { before: prev, leaves: vec![leaf], last: entry.clone() }).unwrap();
    AppendBatch {
        expected_size: size,
        prev: Some(prev),
        entries: vec![entry],
        nodes: vec![(0, size, leaf)],
        key_changes: Vec::new(),
        ids: vec![event.draft.id.0],
        watch_turn: false,
    }
}
