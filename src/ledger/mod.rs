//! The ledger sequencer: the only code that assigns `seq`, `prev` and `ts`,
//! signs entries and checkpoints, and appends to the store.
//!
//! One OS thread owns the signing key and the tree's right edge. Callers send
//! requests on a channel; the thread drains everything queued (up to
//! `max_batch` events), signs it in order, and appends it to the store in one
//! transaction: one fsync for the whole group (group commit). Receipts are
//! sent only after the commit returns, so an acknowledged event is durable.
//!
//! **Architecture Invariant:** nothing else signs or appends. If an append
//! fails, the thread reloads its state from the store before the next batch,
//! so it never signs on top of an entry that was not stored.

mod open;

use crate::lock;
use crate::store::{AppendBatch, Passed, Store, StoreError};
use portcullis_format::checkpoint::Checkpoint;
use portcullis_format::event::{
    Actor, EntryError, EventDraft, EventId, KIND_KEY_ROTATED, KIND_LEDGER_CREATED, ParsedEntry, PreparedEvent,
};
use portcullis_format::json::Json;
use portcullis_format::merkle::{Frontier, Hash, leaf_hash};
use portcullis_format::note::SignerKey;
use portcullis_format::time::Timestamp;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

pub use open::TailCheckError;

/// How many entries the start-up check re-verifies at the tail.
pub const TAIL_CHECK_ENTRIES: u64 = 1024;

/// Settings of the sequencer.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Most events signed and committed together.
    pub max_batch: usize,
    /// Requests that may wait in the queue before senders are slowed down.
    pub queue_depth: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig { max_batch: 4096, queue_depth: 65_536 }
    }
}

/// Proof that an event was appended durably.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub id: EventId,
    pub leaf_hash: Hash,
    pub ts: Timestamp,
}

/// The durable head of the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    pub root: Hash,
}

/// A rejected command and a failed store are different things all the way to the edge.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("event rejected: {0}")]
    Rejected(#[from] EntryError),
    #[error("the ledger store failed: {0}")]
    Store(String),
    #[error("the ledger is shutting down")]
    Closed,
    /// [`Ledger::append_all_after`]: another writer of a shared store
    /// appended at or after the size the events were decided at.
    #[error("another replica appended to the ledger after size {after}; decide again on the new state")]
    Stale { after: u64 },
}

impl From<StoreError> for AppendError {
    fn from(e: StoreError) -> Self {
        AppendError::Store(e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    TailCheck(#[from] TailCheckError),
    #[error("the ledger is shutting down")]
    Closed,
    #[error("the sequencer thread could not start: {0}")]
    Thread(std::io::Error),
    /// An append failed and the state could not be reloaded from the store
    /// since: signing now could commit to entries that were never stored.
    #[error("the ledger store failed and its state could not be reloaded yet; not signing")]
    Unsynced,
}

enum Request {
    Append {
        /// Checked and written out by the caller ([`EventDraft::prepare`]).
        events: Vec<PreparedEvent>,
        /// Append only if no other writer of the store appended at or after this size.
        after: Option<u64>,
        respond: Responder,
    },
    Checkpoint {
        respond: oneshot::Sender<Result<(u64, String), LedgerError>>,
    },
    Rotate {
        new_key: Box<SignerKey>,
        actor: Actor,
        respond: oneshot::Sender<Result<Receipt, AppendError>>,
    },
    /// Sent by the writer when it hands batches back to be signed again.
    Wake,
    /// Sent by the writer of a shared store when it had nothing to commit for
    /// [`TURN_IDLE`]: the sequencer gives the writers' turn up.
    Idle,
    Shutdown,
}

/// How long the writer of a shared store waits without a batch before the
/// turn is given up to other replicas.
const TURN_IDLE: Duration = Duration::from_millis(1);

/// How many times one request is signed again after losing a race to
/// another replica (or riding on a batch that failed) before it fails.
const MAX_ATTEMPTS: u32 = 64;

/// A handle to the ledger. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    requests: mpsc::Sender<Request>,
    head: watch::Receiver<Head>,
    /// To publish a head read from a shared store (see [`Ledger::refresh_head`]).
    head_sender: std::sync::Weak<watch::Sender<Head>>,
    store: Arc<dyn Store>,
    origin: String,
}

/// The sequencer thread, to be joined at shutdown.
pub struct SequencerThread(std::thread::JoinHandle<()>);

impl SequencerThread {
    /// Waits until every request queued before shutdown has been committed.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl Ledger {
    /// Opens the ledger on `store` with `signer`: checks the tail (chain,
    /// signatures, tree, latest checkpoint), creates the first entry of an
    /// empty ledger, and starts the sequencer thread.
    ///
    /// # Errors
    /// [`LedgerError::TailCheck`] naming the entry and the reason when the
    /// stored ledger does not verify or the key is not the one in force;
    /// [`LedgerError::Store`] when the store fails.
    pub fn open(
        store: Arc<dyn Store>,
        signer: SignerKey,
        config: LedgerConfig,
    ) -> Result<(Ledger, SequencerThread), LedgerError> {
        let state = open::check_and_load(store.as_ref(), &signer)?;
        let origin = signer.name().to_string();
        let (head_tx, head_rx) = watch::channel(Head { size: state.frontier.size(), root: state.frontier.root() });
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let (retry_tx, retry_rx) = std::sync::mpsc::channel();
        let head = Arc::new(head_tx);
        let head_sender = Arc::downgrade(&head);
        let stopped = Arc::new(AtomicBool::new(false));
        let mut sequencer = Sequencer {
            store: Arc::clone(&store),
            signer,
            durable: Arc::new(Mutex::new(state.clone())),
            state,
            head: Arc::clone(&head),
            config,
            epoch: Arc::new(AtomicU64::new(0)),
            seen_epoch: 0,
            in_flight: VecDeque::new(),
            peer_active: false,
            passed_end: 0,
            retry_tx,
            retry_rx,
            wake: tx.downgrade(),
            stopped: Arc::clone(&stopped),
            foreign_end: 0,
        };
        if sequencer.state.frontier.size() == 0 {
            sequencer
                .create_ledger()
                .map_err(|e| LedgerError::Store(StoreError::Corrupt(format!("creating the ledger: {e}"))))?;
        }
        let thread = std::thread::Builder::new()
            .name("portcullis-sequencer".into())
            .spawn(move || sequencer.run(rx))
            .map_err(LedgerError::Thread)?;
        if store.shared() {
            // Other replicas append too: follow the store's head, so readers
            // (the workflow, SSE, webhooks, the HTTP API) see their entries.
            let follower = Follower { store: Arc::clone(&store), head, stopped };
            std::thread::Builder::new()
                .name("portcullis-follower".into())
                .spawn(move || follower.run())
                .map_err(LedgerError::Thread)?;
        }
        Ok((Ledger { requests: tx, head: head_rx, head_sender, store, origin }, SequencerThread(thread)))
    }

    /// Appends one event and waits until it is durable.
    ///
    /// # Errors
    /// [`AppendError`]: rejected (bad event), store failure, or shutdown.
    pub async fn append(&self, draft: EventDraft) -> Result<Receipt, AppendError> {
        let mut receipts = self.append_all(vec![draft]).await?;
        receipts.pop().ok_or(AppendError::Closed)
    }

    /// Appends events contiguously and atomically (all or none), in order.
    ///
    /// # Errors
    /// As [`Ledger::append`].
    pub async fn append_all(&self, drafts: Vec<EventDraft>) -> Result<Vec<Receipt>, AppendError> {
        self.send_append(drafts, None).await
    }

    /// Appends events as [`Ledger::append_all`] does, but only if no other
    /// writer of a shared store (another replica) appended an entry at or
    /// after `size`: for events decided on the state of the first `size`
    /// entries, which an entry of another replica could make wrong (two
    /// grants for one request). This process's own appends do not count:
    /// its decisions are serialised by their caller. On a store no one else
    /// writes it is `append_all`.
    ///
    /// # Errors
    /// [`AppendError::Stale`] when another writer did (nothing is appended:
    /// decide again on the new state), else as [`Ledger::append`].
    pub async fn append_all_after(&self, drafts: Vec<EventDraft>, size: u64) -> Result<Vec<Receipt>, AppendError> {
        self.send_append(drafts, Some(size)).await
    }

    /// Checks and writes out the drafts here, on the caller's task, so the
    /// sequencer (one thread for the whole ledger, and with several replicas
    /// the one that holds the writers' turn) has only to chain and sign them.
    async fn send_append(&self, drafts: Vec<EventDraft>, after: Option<u64>) -> Result<Vec<Receipt>, AppendError> {
        let events = drafts.iter().map(|d| d.prepare(&self.origin)).collect::<Result<Vec<_>, _>>()?;
        let (respond, receive) = oneshot::channel();
        self.requests.send(Request::Append { events, after, respond }).await.map_err(|_| AppendError::Closed)?;
        receive.await.map_err(|_| AppendError::Closed)?
    }

    /// Signs (or returns) the checkpoint of the current durable size.
    ///
    /// # Errors
    /// [`LedgerError`] when the store fails or the ledger is closed.
    pub async fn checkpoint(&self) -> Result<(u64, String), LedgerError> {
        let (respond, receive) = oneshot::channel();
        self.requests.send(Request::Checkpoint { respond }).await.map_err(|_| LedgerError::Closed)?;
        receive.await.map_err(|_| LedgerError::Closed)?
    }

    /// Rotates the signing key: appends a `key.rotated` entry signed by the
    /// current and the new key, then signs with the new key. The caller must
    /// have stored the new private key durably first.
    ///
    /// # Errors
    /// As [`Ledger::append`].
    pub async fn rotate_key(&self, new_key: SignerKey, actor: Actor) -> Result<Receipt, AppendError> {
        let (respond, receive) = oneshot::channel();
        let request = Request::Rotate { new_key: Box::new(new_key), actor, respond };
        self.requests.send(request).await.map_err(|_| AppendError::Closed)?;
        receive.await.map_err(|_| AppendError::Closed)?
    }

    /// Asks the sequencer to finish what is queued and stop. Requests sent
    /// after this fail with `Closed`.
    pub async fn close(&self) {
        let _ = self.requests.send(Request::Shutdown).await;
    }

    /// The durable head, updated after every commit.
    pub fn head(&self) -> Head {
        *self.head.borrow()
    }

    /// A receiver that changes whenever the head moves.
    pub fn watch_head(&self) -> watch::Receiver<Head> {
        self.head.clone()
    }

    /// Entries `from..from+limit` (fewer at the end), read off the async threads.
    ///
    /// # Errors
    /// [`StoreError`] when the store fails or the read task is lost.
    pub async fn entries(&self, from: u64, limit: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.entries(from, limit))
            .await
            .map_err(|e| StoreError::Corrupt(format!("the read task failed: {e}")))?
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// On a store other replicas append to, reads the store's head now and
    /// publishes it (instead of waiting for the follower), so a command
    /// decides on everything committed before it. A no-op on a store of one writer.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn refresh_head(&self) -> Result<Head, StoreError> {
        if !self.store.shared() {
            return Ok(self.head());
        }
        let store = Arc::clone(&self.store);
        let known = self.head();
        let head = tokio::task::spawn_blocking(move || {
            let size = store.size()?;
            if size <= known.size {
                return Ok::<_, StoreError>(known);
            }
            let frontier = crate::store::load_frontier(store.as_ref(), size)?;
            Ok(Head { size, root: frontier.root() })
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("the read task failed: {e}")))??;
        if let Some(sender) = self.head_sender.upgrade() {
            publish_head(&sender, head);
        }
        Ok(self.head())
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Signs a checkpoint every `interval` while the ledger grows. Runs until the ledger closes.
    pub async fn run_checkpointer(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_size = None;
        loop {
            ticker.tick().await;
            let size = self.head().size;
            if last_size == Some(size) {
                continue;
            }
            match self.checkpoint().await {
                Ok((size, _)) => last_size = Some(size),
                Err(LedgerError::Closed) => return,
                Err(e) => tracing::warn!("checkpoint failed: {e}"),
            }
        }
    }
}

/// What the sequencer knows of the durable ledger.
#[derive(Clone, Debug)]
pub(crate) struct State {
    pub frontier: Frontier,
    pub prev: Hash,
    pub last_ts: Timestamp,
    pub checkpoint_size: Option<u64>,
}

type Responder = oneshot::Sender<Result<Vec<Receipt>, AppendError>>;

/// Entries signed but not yet committed.
struct Pending {
    batch: AppendBatch,
    /// The sequencer's state once this batch is durable.
    state: State,
    /// The ids of `batch.entries`, for duplicate checks.
    ids: HashSet<[u8; 16]>,
    responders: Vec<Waiting>,
}

/// A request signed into a batch: its receipts, sent once the batch is durable.
struct Waiting {
    respond: Responder,
    receipts: Vec<Receipt>,
    /// See [`Ledger::append_all_after`].
    after: Option<u64>,
    /// How many times it was signed.
    attempts: u32,
}

impl Pending {
    fn fail(self, error: AppendError) {
        let message = error.to_string();
        for waiting in self.responders {
            let _ = waiting.respond.send(Err(AppendError::Store(message.clone())));
        }
    }
}

/// Moves the published head forward; never back (the follower of a shared
/// store and the writer both publish, and either may be ahead).
fn publish_head(head: &watch::Sender<Head>, next: Head) {
    head.send_if_modified(|current| {
        let newer = next.size > current.size;
        if newer {
            *current = next;
        }
        newer
    });
}

fn publish(head: &watch::Sender<Head>, state: &State) {
    publish_head(head, Head { size: state.frontier.size(), root: state.frontier.root() });
}

/// Follows the head of a store other replicas append to: waits for a
/// notification (or a short timeout, so a missed one only delays), reads
/// the size, and publishes the head with its root. Under load it looks at
/// most once per [`Follower::GAP`]: every append notifies every replica, and
/// loading the root reads a full node per level of the tree (in one query
/// where the store can, see [`crate::store::load_frontier`]).
struct Follower {
    store: Arc<dyn Store>,
    head: Arc<watch::Sender<Head>>,
    stopped: Arc<AtomicBool>,
}

impl Follower {
    const POLL: Duration = Duration::from_millis(250);
    const GAP: Duration = Duration::from_millis(20);

    fn run(self) {
        let mut last_look = std::time::Instant::now();
        while !self.stopped.load(Ordering::Acquire) {
            let known = self.head.borrow().size;
            self.store.wait_for_growth(known, Self::POLL);
            std::thread::sleep(Self::GAP.saturating_sub(last_look.elapsed()));
            last_look = std::time::Instant::now();
            let size = match self.store.size() {
                Ok(size) => size,
                Err(e) => {
                    tracing::warn!("following the ledger store: {e}");
                    continue;
                }
            };
            if size <= self.head.borrow().size {
                continue;
            }
            match crate::store::load_frontier(self.store.as_ref(), size) {
                Ok(frontier) => publish_head(&self.head, Head { size, root: frontier.root() }),
                Err(e) => tracing::warn!("following the ledger store: {e}"),
            }
        }
    }
}

enum WriterMsg {
    Batch { pending: Box<Pending>, epoch: u64 },
    Barrier(std::sync::mpsc::SyncSender<()>),
}

/// The writer thread: commits batches in order, one transaction (one fsync)
/// each, and answers their senders only after the commit.
struct Writer {
    store: Arc<dyn Store>,
    head: Arc<watch::Sender<Head>>,
    epoch: Arc<AtomicU64>,
    /// The sequencer's state after the last batch this writer committed.
    durable: Arc<Mutex<State>>,
    /// Batches that were not written (a lost race, or signed on top of a
    /// batch that failed) go back to the sequencer to be signed again.
    retry: std::sync::mpsc::Sender<Box<Pending>>,
    wake: mpsc::WeakSender<Request>,
}

impl Writer {
    fn run(self, rx: std::sync::mpsc::Receiver<WriterMsg>) {
        // Whether a batch was committed since the sequencer was last told the writer is idle.
        let mut busy = false;
        loop {
            let message = if self.store.shared() && busy {
                match rx.recv_timeout(TURN_IDLE) {
                    Ok(message) => message,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        // Nothing to commit: let the sequencer give the turn up (if it
                        // holds it: else a wake-up for nothing), then wait.
                        busy = false;
                        if self.store.holds_turn()
                            && let Some(wake) = self.wake.upgrade()
                        {
                            let _ = wake.try_send(Request::Idle);
                        }
                        match rx.recv() {
                            Ok(message) => message,
                            Err(_) => break,
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(message) => message,
                    Err(_) => break,
                }
            };
            match message {
                WriterMsg::Barrier(done) => {
                    let _ = done.send(());
                }
                WriterMsg::Batch { pending, epoch } => {
                    busy = true;
                    if epoch != self.epoch.load(Ordering::Acquire) {
                        // Signed on top of a batch that was not written: its chain is
                        // broken, and it was not written either. Sign it again.
                        self.send_back(pending);
                        continue;
                    }
                    match self.store.append(&pending.batch) {
                        Ok(()) => {
                            *lock(&self.durable) = pending.state.clone();
                            publish(&self.head, &pending.state);
                            for waiting in pending.responders {
                                let _ = waiting.respond.send(Ok(waiting.receipts));
                            }
                        }
                        Err(StoreError::AppendConflict { expected, actual }) => {
                            // Another replica appended first; nothing of this batch was written.
                            tracing::debug!("append at {expected} lost to another writer (the store holds {actual})");
                            self.epoch.fetch_add(1, Ordering::AcqRel);
                            self.send_back(pending);
                        }
                        Err(e) => {
                            tracing::error!("append of {} entries failed: {e}", pending.batch.entries.len());
                            self.epoch.fetch_add(1, Ordering::AcqRel);
                            pending.fail(AppendError::Store(e.to_string()));
                        }
                    }
                }
            }
        }
    }

    fn send_back(&self, pending: Box<Pending>) {
        if self.retry.send(pending).is_ok()
            && let Some(wake) = self.wake.upgrade()
        {
            // A full queue wakes the sequencer anyway.
            let _ = wake.try_send(Request::Wake);
        }
    }
}

/// A batch handed to the writer: its ids (to refuse a repeated one early),
/// and its leaves and last entry (passed with the turn, see [`Store::pass_turn`]).
struct InFlight {
    ids: HashSet<[u8; 16]>,
    from: u64,
    /// The leaf it was signed on.
    before: Hash,
    leaves: Vec<Hash>,
    last: Vec<u8>,
}

struct Sequencer {
    store: Arc<dyn Store>,
    signer: SignerKey,
    state: State,
    head: Arc<watch::Sender<Head>>,
    config: LedgerConfig,
    /// Bumped by the writer when a commit fails; batches signed before that are refused.
    epoch: Arc<AtomicU64>,
    seen_epoch: u64,
    /// The batches handed to the writer and maybe not yet committed.
    in_flight: VecDeque<InFlight>,
    /// Whether another replica appended, or waited for the turn, since this
    /// one last took it: the turn is then passed after every batch (see
    /// [`Sequencer::take_turn`]).
    peer_active: bool,
    /// The end of the entries passed with the turn that the state rests on
    /// (0: none); they are not known to be committed while the durable state
    /// is shorter.
    passed_end: u64,
    /// The state after the last batch the writer committed (see [`Writer::durable`]).
    durable: Arc<Mutex<State>>,
    retry_tx: std::sync::mpsc::Sender<Box<Pending>>,
    retry_rx: std::sync::mpsc::Receiver<Box<Pending>>,
    wake: mpsc::WeakSender<Request>,
    /// Set when the sequencer stops, for the follower thread.
    stopped: Arc<AtomicBool>,
    /// The size after the last entries this sequencer took into its state
    /// without signing them (another replica's, or after a reload):
    /// conditional appends decided on fewer entries are stale.
    foreign_end: u64,
}

impl Sequencer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        // The writer commits batch k while this thread signs batch k+1; the
        // channel holds one batch, so at most two are signed but not durable.
        let (writer_tx, writer_rx) = std::sync::mpsc::sync_channel::<WriterMsg>(1);
        let writer = Writer {
            store: Arc::clone(&self.store),
            head: Arc::clone(&self.head),
            epoch: Arc::clone(&self.epoch),
            durable: Arc::clone(&self.durable),
            retry: self.retry_tx.clone(),
            wake: self.wake.clone(),
        };
        let writer_thread =
            match std::thread::Builder::new().name("portcullis-writer".into()).spawn(move || writer.run(writer_rx)) {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::error!("the ledger writer thread could not start: {e}");
                    return;
                }
            };
        let mut stopping = false;
        while !stopping {
            let Some(first) = rx.blocking_recv() else { break };
            // The turn first: what arrives while waiting for it joins this batch.
            if matches!(first, Request::Append { .. } | Request::Wake) {
                self.take_turn(&writer_tx);
            }
            let mut requests = vec![first];
            let mut events = 0usize;
            while events < self.config.max_batch {
                match rx.try_recv() {
                    Ok(request) => {
                        if let Request::Append { events: prepared, .. } = &request {
                            events += prepared.len();
                        }
                        requests.push(request);
                    }
                    Err(_) => break,
                }
            }
            if requests.iter().any(|r| matches!(r, Request::Append { .. } | Request::Wake)) {
                self.take_turn(&writer_tx);
            }
            let conditional = requests.iter().any(|r| matches!(r, Request::Append { after: Some(_), .. }));
            if self.epoch.load(Ordering::Acquire) != self.seen_epoch || (conditional && self.rests_on_passed()) {
                // A conditional request is decided on committed entries: it is checked
                // against those, not against passed entries that may never commit.
                self.sync(&writer_tx);
            }
            let mut pending = self.start_batch();
            // What came back from the writer goes first, in its order.
            self.resign_returned(&mut pending);
            for request in requests {
                match request {
                    Request::Append { events, after, respond } => {
                        self.sign_into(&mut pending, events, after, respond, 1);
                    }
                    Request::Wake | Request::Idle => {}
                    Request::Checkpoint { respond } => {
                        self.dispatch(pending, &writer_tx);
                        self.sync(&writer_tx);
                        self.follow_store();
                        let _ = respond.send(self.sign_checkpoint());
                        pending = self.start_batch();
                    }
                    Request::Rotate { new_key, actor, respond } => {
                        self.dispatch(pending, &writer_tx);
                        self.sync(&writer_tx);
                        // Signed under the turn, like any batch (its own append checks the leaf).
                        self.take_turn(&writer_tx);
                        let _ = respond.send(self.rotate(*new_key, actor));
                        pending = self.start_batch();
                    }
                    Request::Shutdown => stopping = true,
                }
            }
            let signed = !pending.batch.entries.is_empty();
            self.dispatch(pending, &writer_tx);
            // The turn is kept only by a replica that signs, alone, and is not waited for.
            if !signed || self.peer_active || self.store.turn_wanted() {
                self.pass_turn();
            }
        }
        // Refuse what arrives from now on, let the writer finish, then leave a
        // checkpoint of the final state.
        rx.close();
        while let Ok(request) = rx.try_recv() {
            if let Request::Append { respond, .. } = request {
                let _ = respond.send(Err(AppendError::Closed));
            }
        }
        // What the writer hands back is still signed and committed (each request a bounded number of times).
        loop {
            self.sync(&writer_tx);
            let mut pending = self.start_batch();
            self.resign_returned(&mut pending);
            if pending.batch.entries.is_empty() {
                break;
            }
            self.dispatch(pending, &writer_tx);
        }
        self.sync(&writer_tx);
        self.pass_turn();
        drop(writer_tx);
        self.stopped.store(true, Ordering::Release);
        let _ = writer_thread.join();
        if let Err(e) = self.sign_checkpoint() {
            tracing::warn!("final checkpoint failed: {e}");
        }
    }

    /// On a store several replicas share, makes sure this replica holds the
    /// writers' turn before it signs, so the batch is signed on the store's
    /// true head and appended as signed.
    ///
    /// The turn goes from replica to replica with the entries its holder
    /// signed and has in flight (see [`Sequencer::pass_turn`]), so the next
    /// replica signs on top of them while they commit, and its commit follows
    /// theirs at once: under load from several replicas, signing stays off
    /// the path from one commit to the next, as it is within one replica.
    /// A replica passes after every batch while another one is active;
    /// alone, it keeps the turn until another one waits for it (seen at an
    /// append) or a round signs nothing (its writer fell idle, or every
    /// request was refused). Turns are first come, first served in the
    /// server, so they alternate under load.
    fn take_turn(&mut self, writer: &std::sync::mpsc::SyncSender<WriterMsg>) {
        if !self.store.shared() {
            return;
        }
        if self.store.holds_turn() {
            if !self.store.turn_wanted() {
                return;
            }
            // Another replica waits: it goes first, this one queues behind it.
            self.pass_turn();
        }
        match self.store.take_turn(self.state.frontier.size()) {
            Ok(None) => {}
            Ok(Some(turn)) if self.synced() => self.add_turn(turn, writer),
            // Not synced: the next sync reloads the state from the store.
            Ok(Some(_)) => {}
            // Appends stay safe without the turn (the store checks the position and the leaf before it).
            Err(e) => tracing::warn!("taking the writers' turn: {e}"),
        }
    }

    /// Adds to the state what other replicas appended, and then what the
    /// last holder of the turn passed with it. Passed entries are signed on
    /// but are not durable: they are neither published nor kept as the
    /// durable state, and if they never commit, the next append is refused
    /// (the store checks the leaf it was signed on) and signed again.
    fn add_turn(&mut self, turn: crate::store::Turn, writer: &std::sync::mpsc::SyncSender<WriterMsg>) {
        let before = self.state.frontier.size();
        let complete = (turn.committed.len() as u64) < crate::store::TURN_ENTRIES;
        let mut state = self.state.clone();
        if let Err(e) = open::add_entries(&self.signer, &mut state, turn.committed) {
            // What this replica has in flight may have failed: settle it, then read the store.
            tracing::warn!("catching up with the ledger store: {e}");
            self.sync(writer);
            self.follow_store();
            return;
        }
        let committed_end = state.frontier.size();
        {
            let mut durable = lock(&self.durable);
            if durable.frontier.size() == before {
                // Nothing of this replica's is in flight: what was read is the durable state.
                *durable = state.clone();
                publish(&self.head, &state);
            }
        }
        if committed_end > before {
            // Committed on top of the state: what it rested on is committed too (the chain says so).
            self.foreign_end = committed_end;
            self.passed_end = 0;
        }
        self.state = state;
        if !complete {
            self.sync(writer);
            self.follow_store();
            self.peer_active = true;
            return;
        }
        if !turn.passed.leaves.is_empty() {
            let mut with_passed = self.state.clone();
            match open::add_passed(&self.signer, &mut with_passed, &turn.passed) {
                Ok(()) => {
                    self.state = with_passed;
                    self.passed_end = self.state.frontier.size();
                }
                Err(e) => tracing::debug!("not signing on the entries passed with the turn: {e}"),
            }
        }
        self.peer_active = self.state.frontier.size() > before;
    }

    /// Whether the state rests on passed entries not yet known to be committed.
    fn rests_on_passed(&self) -> bool {
        self.passed_end > lock(&self.durable).frontier.size()
    }

    /// Gives the writers' turn up, passing the entries this replica signed
    /// that may not be committed yet: the batches in flight that end where
    /// the state ends (none once the state has moved past them).
    fn pass_turn(&mut self) {
        if !self.store.shared() || !self.store.holds_turn() {
            return;
        }
        let durable = lock(&self.durable).frontier.size();
        let mut end = self.state.frontier.size();
        let mut tail = Vec::new();
        if self.synced() {
            for batch in self.in_flight.iter().rev() {
                if batch.from + batch.leaves.len() as u64 != end || end <= durable {
                    break;
                }
                tail.push(batch);
                end = batch.from;
            }
        }
        let in_flight = Passed {
            before: tail.last().map(|b| b.before).unwrap_or_default(),
            leaves: tail.iter().rev().flat_map(|b| b.leaves.iter().copied()).collect(),
            last: tail.first().map(|b| b.last.clone()).unwrap_or_default(),
        };
        if let Err(e) = self.store.pass_turn(end, &in_flight) {
            tracing::warn!("giving the writers' turn up: {e}");
        }
    }

    fn start_batch(&self) -> Pending {
        Pending {
            batch: AppendBatch {
                expected_size: self.state.frontier.size(),
                prev: Some(self.state.prev),
                // While another replica is active the turn is passed after every batch.
                watch_turn: !self.peer_active,
                ..AppendBatch::default()
            },
            state: self.state.clone(),
            ids: HashSet::new(),
            responders: Vec::new(),
        }
    }

    /// Hands a signed batch to the writer and continues on top of it.
    fn dispatch(&mut self, pending: Pending, writer: &std::sync::mpsc::SyncSender<WriterMsg>) {
        if pending.batch.entries.is_empty() {
            return;
        }
        let state = pending.state.clone();
        // At most two batches are between here and the store: one queued, one committing.
        if self.in_flight.len() == 2 {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back(InFlight {
            ids: pending.ids.clone(),
            from: pending.batch.expected_size,
            before: pending.batch.prev.unwrap_or_default(),
            leaves: pending.batch.nodes.iter().filter(|(level, _, _)| *level == 0).map(|(_, _, leaf)| *leaf).collect(),
            last: pending.batch.entries.last().cloned().unwrap_or_default(),
        });
        if let Err(std::sync::mpsc::SendError(WriterMsg::Batch { pending, .. })) =
            writer.send(WriterMsg::Batch { pending: Box::new(pending), epoch: self.seen_epoch })
        {
            pending.fail(AppendError::Store("the ledger writer stopped".into()));
            return;
        }
        self.state = state;
    }

    /// Waits until the writer has handled every batch sent so far; if one
    /// failed, reloads the state from the store. When the reload fails too,
    /// the epoch stays unseen: the state may hold entries that were never
    /// stored, so nothing is signed on it (see [`Sequencer::synced`]) and
    /// batches signed on it are refused by the writer, until a reload succeeds.
    fn sync(&mut self, writer: &std::sync::mpsc::SyncSender<WriterMsg>) {
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let writer_alive = writer.send(WriterMsg::Barrier(done_tx)).is_ok() && done_rx.recv().is_ok();
        if !writer_alive {
            // The writer died (a panic) holding batches that may or may not be stored:
            // treat it as a failed append, so the state is reloaded before anything is signed.
            self.epoch.fetch_add(1, Ordering::AcqRel);
        } else {
            // Everything sent is now committed (its ids guarded by the store) or failed.
            self.in_flight.clear();
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        if epoch != self.seen_epoch {
            // A batch failed: the turn may have been lost with its connection, or
            // passed entries did not commit. Give it up; the next take starts afresh.
            self.pass_turn();
            if self.resume_from_durable() || self.reload() {
                self.seen_epoch = epoch;
            }
        } else if lock(&self.durable).frontier.size() != self.state.frontier.size() {
            // The state holds entries this replica neither committed nor read
            // committed (passed with the turn): the durable state, plus what
            // the store now holds, is what a checkpoint or a rotation may rest on.
            if !self.resume_from_durable() {
                self.state = lock(&self.durable).clone();
                self.passed_end = 0;
            }
        }
    }

    /// After a lost race or a failed append: continue from the last state
    /// this process committed, and add what other writers appended since
    /// (verified, see [`open::catch_up`]). Cheaper than a full reload, which
    /// is the fallback. Returns whether it succeeded.
    fn resume_from_durable(&mut self) -> bool {
        let durable = lock(&self.durable).clone();
        self.catch_up_from(durable)
    }

    /// Adds to `state` what the store holds after it (verified, see
    /// [`open::catch_up`]) and makes the result the state, durable and
    /// published. Returns whether it succeeded; on failure nothing changes.
    fn catch_up_from(&mut self, mut state: State) -> bool {
        let before = state.frontier.size();
        match open::catch_up(self.store.as_ref(), &self.signer, &mut state) {
            Ok(()) => {
                self.state = state;
                self.passed_end = 0;
                self.took_unsigned(before);
                *lock(&self.durable) = self.state.clone();
                self.publish_head();
                true
            }
            Err(e) => {
                tracing::warn!("catching up with the ledger store: {e}");
                false
            }
        }
    }

    /// On a store other replicas append to, adds their entries to the state
    /// before a checkpoint is signed, so the checkpoint covers the latest tree.
    /// Only when synced and nothing is in flight (the caller has synced).
    fn follow_store(&mut self) {
        if !self.store.shared() || !self.synced() {
            return;
        }
        let state = self.state.clone();
        self.catch_up_from(state);
    }

    /// Records that the state grew from `before` entries by entries this
    /// sequencer did not sign (see `foreign_end`).
    fn took_unsigned(&mut self, before: u64) {
        if self.state.frontier.size() > before {
            self.foreign_end = self.state.frontier.size();
        }
    }

    /// Signs again, on the current state, the requests of batches the writer
    /// handed back. A request signed [`MAX_ATTEMPTS`] times fails.
    fn resign_returned(&mut self, pending: &mut Pending) {
        while let Ok(returned) = self.retry_rx.try_recv() {
            let expected = returned.batch.expected_size;
            for waiting in returned.responders {
                if waiting.attempts >= MAX_ATTEMPTS || !self.synced() {
                    let _ = waiting.respond.send(Err(AppendError::Store(
                        "the append kept losing to other writers of the ledger store; retry".into(),
                    )));
                    continue;
                }
                let events: Result<Vec<PreparedEvent>, _> = waiting
                    .receipts
                    .iter()
                    .map(|r| {
                        let entry = &returned.batch.entries[(r.seq - expected) as usize];
                        ParsedEntry::parse(entry).and_then(|p| p.event.draft.prepare(self.signer.name()))
                    })
                    .collect();
                match events {
                    Ok(events) => self.sign_into(pending, events, waiting.after, waiting.respond, waiting.attempts + 1),
                    Err(e) => {
                        let _ = waiting.respond.send(Err(AppendError::Rejected(e)));
                    }
                }
            }
        }
    }

    /// Whether the state is the store's: no failed append since the last successful reload.
    fn synced(&self) -> bool {
        self.epoch.load(Ordering::Acquire) == self.seen_epoch
    }

    /// Signs one request's events into the pending batch, all or none.
    fn sign_into(
        &self,
        pending: &mut Pending,
        events: Vec<PreparedEvent>,
        after: Option<u64>,
        respond: Responder,
        attempts: u32,
    ) {
        // Decided on fewer entries than another writer has since appended:
        // refused, whatever batch it would ride in. If the batch then loses a
        // race, it is signed again after catching up, and checked again.
        if let Some(after) = after
            && after < self.foreign_end
        {
            let _ = respond.send(Err(AppendError::Stale { after }));
            return;
        }
        // Ids must be unique in the ledger: the store refuses a stored one; here the
        // batch and the batches still on their way to the store are checked, so a
        // duplicate is rejected alone instead of failing its whole batch.
        for (i, event) in events.iter().enumerate() {
            let id = event.id().0;
            let repeated = events[..i].iter().any(|e| e.id().0 == id);
            if repeated || pending.ids.contains(&id) || self.in_flight.iter().any(|b| b.ids.contains(&id)) {
                let reason = format!("event id {} is already used by another event", event.id());
                let _ = respond.send(Err(AppendError::Rejected(EntryError::Field { field: "id", reason })));
                return;
            }
        }
        let saved = (pending.state.clone(), pending.batch.entries.len(), pending.batch.nodes.len());
        let mut receipts = Vec::with_capacity(events.len());
        for event in &events {
            match self.sign_one(pending, event, &[&self.signer]) {
                Ok(receipt) => receipts.push(receipt),
                Err(e) => {
                    pending.state = saved.0;
                    pending.batch.entries.truncate(saved.1);
                    pending.batch.nodes.truncate(saved.2);
                    pending.batch.ids.truncate(saved.1);
                    let _ = respond.send(Err(AppendError::Rejected(e)));
                    return;
                }
            }
        }
        pending.responders.push(Waiting { respond, receipts, after, attempts });
    }

    fn sign_one(
        &self,
        pending: &mut Pending,
        event: &PreparedEvent,
        signers: &[&SignerKey],
    ) -> Result<Receipt, EntryError> {
        if event.log() != self.signer.name() {
            let reason = format!("prepared for the log {:?}, not {:?}", event.log(), self.signer.name());
            return Err(EntryError::Field { field: "log", reason });
        }
        let state = &mut pending.state;
        let ts = Timestamp::now().max(state.last_ts);
        let seq = state.frontier.size();
        let entry = event.sign(seq, &state.prev, ts, signers)?;
        let leaf = leaf_hash(&entry);
        let nodes = &mut pending.batch.nodes;
        state.frontier.push(leaf, |level, index, hash| nodes.push((level, index, *hash)));
        state.prev = leaf;
        state.last_ts = ts;
        pending.batch.entries.push(entry);
        pending.batch.ids.push(event.id().0);
        pending.ids.insert(event.id().0);
        Ok(Receipt { seq, id: event.id(), leaf_hash: leaf, ts })
    }

    fn publish_head(&self) {
        publish(&self.head, &self.state);
    }

    /// After a failed append, trust only what the store holds. Returns whether the reload succeeded.
    fn reload(&mut self) -> bool {
        match open::check_and_load(self.store.as_ref(), &self.signer) {
            Ok(state) => {
                self.state = state;
                self.passed_end = 0;
                // Whose entries the store holds is unknown after a failure: all count as unsigned here.
                self.foreign_end = self.state.frontier.size();
                *lock(&self.durable) = self.state.clone();
                self.publish_head();
                true
            }
            Err(e) => {
                tracing::error!("reloading the ledger state after a failed append: {e}");
                false
            }
        }
    }

    /// Signs the checkpoint of the current state, which must be the durable one
    /// (the caller has synced): never a tree holding entries that failed to commit.
    fn sign_checkpoint(&mut self) -> Result<(u64, String), LedgerError> {
        if !self.synced() {
            return Err(LedgerError::Unsynced);
        }
        let size = self.state.frontier.size();
        if self.state.checkpoint_size == Some(size)
            && let Some(note) = self.store.checkpoint_at(size)?
        {
            return Ok((size, note));
        }
        let checkpoint = Checkpoint { origin: self.signer.name().to_string(), size, root: self.state.frontier.root() };
        let note = checkpoint.sign(&self.signer);
        self.store.put_checkpoint(size, &note)?;
        self.state.checkpoint_size = Some(size);
        Ok((size, note))
    }

    fn system_event(&self, kind: &str, data: Json, actor: Actor) -> Result<PreparedEvent, AppendError> {
        let id = EventId::random().map_err(|e| AppendError::Store(format!("no system randomness: {e}")))?;
        Ok(EventDraft { id, kind: kind.to_string(), v: 1, actor, data }.prepare(self.signer.name())?)
    }

    fn create_ledger(&mut self) -> Result<(), AppendError> {
        let vkey = self.signer.verifier().to_string();
        let data = Json::Obj(vec![
            ("format".into(), Json::Str(portcullis_format::event::EVENT_HEADER.into())),
            ("key".into(), Json::Str(vkey.clone())),
        ]);
        let event = self.system_event(KIND_LEDGER_CREATED, data, Actor::system())?;
        let mut pending = self.start_batch();
        self.sign_one(&mut pending, &event, &[&self.signer])?;
        pending.batch.key_changes.push((0, vkey));
        match self.store.append(&pending.batch) {
            Ok(()) => self.state = pending.state,
            // Another replica created the ledger first: continue on its entry 0.
            Err(StoreError::AppendConflict { .. }) => {
                self.state = open::check_and_load(self.store.as_ref(), &self.signer)
                    .map_err(|e| AppendError::Store(e.to_string()))?;
            }
            Err(e) => return Err(e.into()),
        }
        *lock(&self.durable) = self.state.clone();
        self.publish_head();
        self.sign_checkpoint().map_err(|e| AppendError::Store(e.to_string()))?;
        Ok(())
    }

    fn rotate(&mut self, new_key: SignerKey, actor: Actor) -> Result<Receipt, AppendError> {
        if !self.synced() {
            return Err(AppendError::Store(LedgerError::Unsynced.to_string()));
        }
        let vkey = new_key.verifier().to_string();
        let data = Json::Obj(vec![("new_key".into(), Json::Str(vkey.clone()))]);
        let event = self.system_event(KIND_KEY_ROTATED, data, actor)?;
        let mut pending = self.start_batch();
        let receipt = self.sign_one(&mut pending, &event, &[&self.signer, &new_key])?;
        pending.batch.key_changes.push((receipt.seq + 1, vkey));
        if let Err(e) = self.store.append(&pending.batch) {
            self.reload();
            return Err(e.into());
        }
        self.state = pending.state;
        *lock(&self.durable) = self.state.clone();
        self.signer = new_key;
        self.publish_head();
        Ok(receipt)
    }
}
