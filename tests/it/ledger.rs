//! The sequencer and the SQLite store, through the library's public API.

use portcullis::ledger::{AppendError, Ledger, LedgerConfig, LedgerError, SequencerThread, TailCheckError};
use portcullis::store::sqlite::SqliteStore;
use portcullis::store::{AppendBatch, KeyRecord, StoreError};
use portcullis::store::{NodeReader, Store};
use portcullis_format::checkpoint::SignedCheckpoint;
use portcullis_format::event::{Actor, EventDraft, EventId, ParsedEntry};
use portcullis_format::json::Json;
use portcullis_format::keys::KeySet;
use portcullis_format::merkle;
use portcullis_format::note::SignerKey;
use portcullis_format::verify::{Options, verify_export};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};

pub fn signer(seed: u8) -> SignerKey {
    SignerKey::from_seed("portcullis.test/ledger", &[seed; 32]).unwrap()
}

pub fn draft(n: u64) -> EventDraft {
    EventDraft {
        id: EventId::random().unwrap(),
        kind: "request.created".into(),
        v: 1,
        actor: Actor { sub: format!("user-{}", n % 7), groups: vec!["web".into()], via: "token".into() },
        data: Json::Obj(vec![
            ("reason".into(), Json::Str(format!("INC-{n}: fix the TLS host of shop/storefront"))),
            ("namespace".into(), Json::Str("shop".into())),
        ]),
    }
}

pub fn open(path: &Path, key: SignerKey) -> Result<(Ledger, SequencerThread), LedgerError> {
    let store = SqliteStore::open(&path.join("ledger.db"))?;
    Ledger::open(Arc::new(store), key, LedgerConfig::default())
}

pub async fn close(ledger: Ledger, thread: SequencerThread) {
    ledger.close().await;
    drop(ledger);
    tokio::task::spawn_blocking(move || thread.join()).await.unwrap();
}

pub fn verify_dir(
    export: &Path,
    keys: KeySet,
) -> Result<portcullis_format::verify::Summary, portcullis_format::verify::Failure> {
    verify_export(export, &Options { keys, anchor: None, allow_partial: false, threads: 2, progress: None })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_contiguous_receipts_and_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let mut tasks = Vec::new();
    for writer in 0..64u64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut receipts = Vec::new();
            for i in 0..20 {
                receipts.push(ledger.append(draft(writer * 100 + i)).await.unwrap());
            }
            receipts
        }));
    }
    let mut seqs: Vec<u64> = Vec::new();
    for task in tasks {
        seqs.extend(task.await.unwrap().iter().map(|r| r.seq));
    }
    seqs.sort_unstable();
    // Entry 0 is the ledger's creation; the 1280 appends follow without gaps or repeats.
    assert_eq!(seqs, (1..=1280).collect::<Vec<_>>());
    assert_eq!(ledger.head().size, 1281);
    close(ledger, thread).await;

    let export = dir.path().join("export");
    let store = SqliteStore::open(&dir.path().join("ledger.db")).unwrap();
    portcullis::export::export(&store, &export, 0, None, &|_, _| {}).unwrap();
    let summary = verify_dir(&export, KeySet::single(signer(1).verifier().clone())).unwrap();
    assert_eq!(summary.entries_verified, 1281);
}

#[tokio::test]
async fn a_rejected_event_is_not_appended_and_does_not_disturb_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let mut bad = draft(1);
    bad.kind = "Not A Kind".into();
    let both = ledger.append_all(vec![draft(2), bad]).await;
    assert!(matches!(both, Err(AppendError::Rejected(_))), "{both:?}");
    assert_eq!(ledger.head().size, 1, "an all-or-none request left nothing behind");
    let receipt = ledger.append(draft(3)).await.unwrap();
    assert_eq!(receipt.seq, 1);
    let mut float = draft(4);
    float.data = Json::Obj(vec![("n".into(), Json::Int(1 << 60))]);
    assert!(matches!(ledger.append(float).await, Err(AppendError::Rejected(_))));
    close(ledger, thread).await;
}

#[tokio::test]
async fn reopening_continues_the_chain_and_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    for i in 0..300 {
        ledger.append(draft(i)).await.unwrap();
    }
    let (size_before, _) = ledger.checkpoint().await.unwrap();
    close(ledger, thread).await;

    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    assert_eq!(ledger.head().size, size_before);
    let receipt = ledger.append(draft(999)).await.unwrap();
    assert_eq!(receipt.seq, size_before);
    let (size, note) = ledger.checkpoint().await.unwrap();
    let store = Arc::clone(ledger.store());
    close(ledger, thread).await;

    // The new checkpoint is consistent with the old one, and the tree gives proofs in O(log n) reads.
    let checkpoint = SignedCheckpoint::parse(note.as_bytes()).unwrap();
    checkpoint.verify(signer(1).verifier()).unwrap();
    let old = SignedCheckpoint::parse(store.checkpoint_at(size_before).unwrap().unwrap().as_bytes()).unwrap();
    let reader = NodeReader(store.as_ref());
    let proof = merkle::consistency_proof(&reader, size_before, size).unwrap();
    merkle::verify_consistency(size_before, size, &old.checkpoint.root, &checkpoint.checkpoint.root, &proof).unwrap();
    let entry = store.entries(receipt.seq, 1).unwrap().pop().unwrap();
    let inclusion = merkle::inclusion_proof(&reader, receipt.seq, size).unwrap();
    merkle::verify_inclusion(receipt.seq, size, &merkle::leaf_hash(&entry), &inclusion, &checkpoint.checkpoint.root)
        .unwrap();
    let parsed = ParsedEntry::parse(&entry).unwrap();
    assert_eq!(parsed.event.prev, store.node(0, receipt.seq - 1).unwrap());
}

#[tokio::test]
async fn the_service_refuses_a_ledger_whose_tail_was_altered_and_names_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    for i in 0..10 {
        ledger.append(draft(i)).await.unwrap();
    }
    close(ledger, thread).await;

    alter_entry_on_disk(&dir.path().join("ledger.db"), 7);
    let err = open(dir.path(), signer(1)).err().expect("an altered ledger must be refused");
    let text = err.to_string();
    assert!(matches!(err, LedgerError::TailCheck(TailCheckError::Entry { seq: 7, .. })), "{text}");
    assert!(text.contains("entry 7"), "{text}");
}

/// Changes entry `seq` in the database file, as an attacker with write access
/// to the disk would. The store type offers no update (that is the point), so
/// the test reaches under it with SQL.
fn alter_entry_on_disk(db: &Path, seq: u64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let entry: Vec<u8> =
        conn.query_row("SELECT entry FROM entries WHERE seq = ?1", [seq as i64], |r| r.get(0)).unwrap();
    let text = String::from_utf8(entry).unwrap();
    let altered = text.replacen("INC-", "INK-", 1);
    assert_ne!(altered, text);
    conn.execute("UPDATE entries SET entry = ?1 WHERE seq = ?2", rusqlite::params![altered.as_bytes(), seq as i64])
        .unwrap();
}

#[tokio::test]
async fn the_service_refuses_to_sign_with_a_key_that_is_not_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    close(ledger, thread).await;
    let err = open(dir.path(), signer(2)).err().expect("another key must be refused");
    assert!(matches!(err, LedgerError::TailCheck(TailCheckError::WrongKey { .. })), "{err}");
}

#[tokio::test]
async fn a_rotated_key_signs_from_the_next_entry_and_the_export_verifies_with_the_first_key_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    for i in 0..5 {
        ledger.append(draft(i)).await.unwrap();
    }
    let rotation = ledger.rotate_key(signer(2), Actor::system()).await.unwrap();
    for i in 5..10 {
        ledger.append(draft(i)).await.unwrap();
    }
    ledger.checkpoint().await.unwrap();
    close(ledger, thread).await;
    assert!(open(dir.path(), signer(1)).is_err(), "the old key is no longer in force");
    let (ledger, thread) = open(dir.path(), signer(2)).unwrap();
    close(ledger, thread).await;

    let export = dir.path().join("export");
    let store = SqliteStore::open(&dir.path().join("ledger.db")).unwrap();
    portcullis::export::export(&store, &export, 0, None, &|_, _| {}).unwrap();
    let summary = verify_dir(&export, KeySet::single(signer(1).verifier().clone())).unwrap();
    assert_eq!(summary.keys.len(), 2);
    assert_eq!(summary.keys[1].1, rotation.seq + 1);
    let keys = store.keys().unwrap();
    assert_eq!(keys.iter().map(|k| k.from_seq).collect::<Vec<_>>(), vec![0, rotation.seq + 1]);
}

/// A store with faults injected on demand, over SQLite: every `fail_every`-th
/// append fails (a full disk, a lost connection), the next append fails or
/// panics (a backend bug), and the next `size()` reads fail.
struct FaultyStore {
    inner: SqliteStore,
    appends: AtomicU64,
    fail_every: u64,
    fail_next_append: AtomicBool,
    panic_next_append: AtomicBool,
    failing_size_reads: AtomicU64,
}

impl FaultyStore {
    fn new(dir: &Path, fail_every: u64) -> FaultyStore {
        FaultyStore {
            inner: SqliteStore::open(&dir.join("ledger.db")).unwrap(),
            appends: AtomicU64::new(0),
            fail_every,
            fail_next_append: AtomicBool::new(false),
            panic_next_append: AtomicBool::new(false),
            failing_size_reads: AtomicU64::new(0),
        }
    }
}

impl Store for FaultyStore {
    fn size(&self) -> Result<u64, StoreError> {
        let failing = self.failing_size_reads.load(SeqCst);
        if failing > 0 {
            self.failing_size_reads.store(failing - 1, SeqCst);
            return Err(StoreError::Corrupt("injected read failure".into()));
        }
        self.inner.size()
    }
    fn append(&self, batch: &AppendBatch) -> Result<(), StoreError> {
        if self.panic_next_append.swap(false, SeqCst) {
            panic!("injected panic in the store's append");
        }
        let n = self.appends.fetch_add(1, SeqCst);
        if self.fail_next_append.swap(false, SeqCst)
            || (self.fail_every > 0 && n > 0 && n.is_multiple_of(self.fail_every))
        {
            return Err(StoreError::Corrupt("injected append failure".into()));
        }
        self.inner.append(batch)
    }
    fn entries(&self, from: u64, limit: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.entries(from, limit)
    }
    fn node(&self, level: u8, index: u64) -> Result<merkle::Hash, StoreError> {
        self.inner.node(level, index)
    }
    fn nodes(&self, level: u8, from: u64, count: u64) -> Result<Vec<merkle::Hash>, StoreError> {
        self.inner.nodes(level, from, count)
    }
    fn put_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError> {
        self.inner.put_checkpoint(size, note)
    }
    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.inner.latest_checkpoint()
    }
    fn checkpoint_at(&self, size: u64) -> Result<Option<String>, StoreError> {
        self.inner.checkpoint_at(size)
    }
    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.keys()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commits_are_never_acknowledged_and_the_chain_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = FaultyStore::new(dir.path(), 3);
    let config = LedgerConfig { max_batch: 16, ..LedgerConfig::default() };
    let (ledger, thread) = Ledger::open(Arc::new(store), signer(1), config).unwrap();
    let mut tasks = Vec::new();
    for writer in 0..32u64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..30 {
                let draft = draft(writer * 100 + i);
                let id = draft.id;
                outcomes.push((id, ledger.append(draft).await));
            }
            outcomes
        }));
    }
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for task in tasks {
        for (id, outcome) in task.await.unwrap() {
            match outcome {
                Ok(receipt) => acknowledged.push((receipt.seq, id)),
                Err(AppendError::Store(_)) => failed += 1,
                Err(other) => panic!("unexpected error {other}"),
            }
        }
    }
    assert!(failed > 0, "the injected failures were hit");
    assert!(!acknowledged.is_empty());
    let store = Arc::clone(ledger.store());
    close(ledger, thread).await;
    for (seq, id) in &acknowledged {
        let entry = store.entries(*seq, 1).unwrap().pop().expect("acknowledged entries are stored");
        assert_eq!(ParsedEntry::parse(&entry).unwrap().event.draft.id, *id);
    }
    assert_eq!(
        store.size().unwrap(),
        acknowledged.len() as u64 + 1,
        "only acknowledged events (and entry 0) were stored"
    );
    let export = dir.path().join("export");
    portcullis::export::export(store.as_ref(), &export, 0, None, &|_, _| {}).unwrap();
    verify_dir(&export, KeySet::single(signer(1).verifier().clone())).unwrap();
}

/// Regression: after a failed append, a reload that failed too left the
/// sequencer's state holding the lost entries, and the next checkpoint signed
/// that tree: a signed checkpoint inconsistent with every later one (a fork
/// signed by the log itself), which also made the ledger refuse to reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_checkpoint_is_signed_over_a_failed_append_when_the_reload_fails_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::new(dir.path(), 0));
    let (ledger, thread) =
        Ledger::open(Arc::clone(&store) as Arc<dyn Store>, signer(1), LedgerConfig::default()).unwrap();
    for i in 0..3 {
        ledger.append(draft(i)).await.unwrap();
    }
    let durable = ledger.head().size;
    assert_eq!(durable, 4);

    // Given an append whose commit fails, and a store that cannot be read right after.
    store.fail_next_append.store(true, SeqCst);
    store.failing_size_reads.store(2, SeqCst);
    assert!(matches!(ledger.append(draft(3)).await, Err(AppendError::Store(_))));

    // When a checkpoint is asked for: it is refused, or it is of the durable tree.
    let mut signed = Vec::new();
    match ledger.checkpoint().await {
        Ok((size, note)) => {
            assert_eq!(size, durable, "a checkpoint over an entry that was never stored");
            signed.push(note);
        }
        Err(e) => assert!(matches!(e, LedgerError::Unsynced), "{e}"),
    }
    // Once the store reads again, the ledger continues on what it holds.
    let (size, note) = ledger.checkpoint().await.unwrap();
    assert_eq!(size, durable);
    signed.push(note);
    assert_eq!(ledger.append(draft(4)).await.unwrap().seq, durable);
    signed.push(ledger.checkpoint().await.unwrap().1);
    close(ledger, thread).await;

    // Then every checkpoint the ledger handed out is consistent with the ledger: it reopens and verifies against each.
    let (ledger, thread) = open(dir.path(), signer(1)).expect("the ledger reopens");
    close(ledger, thread).await;
    let export = dir.path().join("export");
    portcullis::export::export(store.as_ref(), &export, 0, None, &|_, _| {}).unwrap();
    for note in signed {
        let options = Options {
            keys: KeySet::single(signer(1).verifier().clone()),
            anchor: Some(note.into_bytes()),
            allow_partial: false,
            threads: 2,
            progress: None,
        };
        verify_export(&export, &options).unwrap();
    }
}

/// Regression: a hostile database whose entries table holds a negative seq made
/// the store compute its size as `-1 as u64 + 1`: an overflow panic (or, in
/// release, size 0 and a second "first" entry written over a non-empty table).
#[tokio::test]
async fn a_negative_seq_in_a_hostile_database_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    close(ledger, thread).await;
    let conn = rusqlite::Connection::open(dir.path().join("ledger.db")).unwrap();
    conn.execute("UPDATE entries SET seq = -1 WHERE seq = 0", []).unwrap();
    drop(conn);
    let err = open(dir.path(), signer(1)).err().expect("a negative seq must be refused");
    assert!(err.to_string().contains("seq -1"), "{err}");
}

/// Regression: when the writer thread died (a panic in the store) holding a
/// batch, the sequencer's barrier failed silently, the state still held the
/// batch, and the next checkpoint signed a tree whose entries were never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_checkpoint_is_signed_over_a_batch_the_writer_died_with() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FaultyStore::new(dir.path(), 0));
    let (ledger, thread) =
        Ledger::open(Arc::clone(&store) as Arc<dyn Store>, signer(1), LedgerConfig::default()).unwrap();
    ledger.append(draft(0)).await.unwrap();
    let durable = ledger.head().size;

    // Given an append during which the writer thread dies.
    store.panic_next_append.store(true, SeqCst);
    assert!(ledger.append(draft(1)).await.is_err(), "an append the writer died with is not acknowledged");

    // Then a checkpoint, if one is signed at all, is of what the store holds.
    if let Ok((size, note)) = ledger.checkpoint().await {
        assert_eq!(size, durable, "a checkpoint over an entry that was never stored");
        assert_eq!(Some(note), store.checkpoint_at(durable).unwrap());
    }
    assert!(ledger.append(draft(2)).await.is_err(), "no writer, no acknowledgement");
    close(ledger, thread).await;
    let (ledger, thread) = open(dir.path(), signer(1)).expect("the ledger reopens: its checkpoints fit its tree");
    assert_eq!(ledger.head().size, durable);
    close(ledger, thread).await;
}

#[tokio::test]
async fn an_event_id_is_never_used_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let first = draft(1);
    let id = first.id;
    ledger.append(first.clone()).await.unwrap();
    // Twice in one request, and again later: refused, and nothing else of the request is stored.
    let mut again = draft(2);
    again.id = id;
    let twice = ledger.append_all(vec![draft(3), again.clone()]).await;
    assert!(matches!(twice, Err(AppendError::Rejected(_))), "{twice:?}");
    let size = ledger.head().size;
    close(ledger, thread).await;
    // After a restart the check is the store's: the batch fails and nothing is appended.
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let err = ledger.append(again).await.expect_err("a stored id is refused");
    assert!(err.to_string().contains("already in the ledger"), "{err}");
    assert_eq!(ledger.head().size, size);
    ledger.append(draft(4)).await.unwrap();
    close(ledger, thread).await;
}
