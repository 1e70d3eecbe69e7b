//! The KurrentDB client side of the store (see the module above for the
//! layout and the guarantees).

use super::{BatchMeta, Cache, CheckpointEvent, parse_url, unhex};
use crate::store::{AppendBatch, KeyRecord, Store, StoreError, hex, lock, redact};
use eventstore::{
    AppendToStreamOptions, Client, ClientSettings, EventData, ExpectedRevision, ReadStreamOptions, StreamPosition,
};
use portcullis_format::merkle::Hash;
use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a failing call is retried before it fails.
pub const RETRY_WINDOW: Duration = Duration::from_secs(30);

/// Events read per request when catching up.
const READ_CHUNK: usize = 4096;

/// One event of the entries stream.
struct ReadEntry {
    revision: u64,
    id: [u8; 16],
    data: Vec<u8>,
    meta: Vec<u8>,
}

/// A ledger in KurrentDB streams.
pub struct KurrentStore {
    client: Client,
    /// Drives the client; calls block on it from the caller's thread. Taken
    /// when the store is dropped (see `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
    entries_stream: String,
    checkpoints_stream: String,
    shown: String,
    cache: Mutex<Cache>,
}

fn backend(e: eventstore::Error) -> StoreError {
    StoreError::Backend(format!("KurrentDB: {e}"))
}

/// Whether a failed call may succeed when tried again.
fn transient(e: &eventstore::Error) -> bool {
    use eventstore::Error as E;
    matches!(
        e,
        E::GrpcConnectionError(_)
            | E::ConnectionClosed
            | E::DeadlineExceeded
            | E::ServerError(_)
            | E::NotLeaderException(_)
            | E::Grpc { .. }
    )
}

impl KurrentStore {
    /// Connects and reads the ledger's streams. Fails at once when the
    /// server cannot be reached, so a wrong URL is reported at start.
    ///
    /// # Errors
    /// [`StoreError::BadUrl`], [`StoreError::Connect`] or [`StoreError::Corrupt`].
    pub fn open(url: &str) -> Result<KurrentStore, StoreError> {
        let shown = redact(url);
        let (connection, stream) = parse_url(url)?;
        let settings: ClientSettings = connection.parse().map_err(|e: eventstore::ClientSettingsParseError| {
            StoreError::BadUrl { url: shown.clone(), reason: e.to_string() }
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-kurrentdb")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Connect { url: shown.clone(), reason: e.to_string() })?;
        let client = Client::with_runtime_handle(runtime.handle().clone(), settings)
            .map_err(|e| StoreError::Connect { url: shown.clone(), reason: e.to_string() })?;
        let store = KurrentStore {
            client,
            runtime: Some(runtime),
            entries_stream: format!("{stream}-entries"),
            checkpoints_stream: format!("{stream}-checkpoints"),
            shown: format!("KurrentDB {shown} (streams {stream}-entries, {stream}-checkpoints)"),
            cache: Mutex::new(Cache::default()),
        };
        let mut cache = lock(&store.cache);
        store.catch_up(&mut cache, Duration::ZERO).map_err(|e| match e {
            StoreError::Corrupt(_) => e,
            other => StoreError::Connect { url: shown.clone(), reason: other.to_string() },
        })?;
        drop(cache);
        Ok(store)
    }

    /// Runs `future` on the client's runtime and waits for it; callable from
    /// any thread, an async runtime's included (the caller blocks, as every
    /// store call does).
    fn run<T: Send + 'static>(
        &self,
        future: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let stopped = || StoreError::Backend("the KurrentDB client's runtime stopped".into());
        let runtime = self.runtime.as_ref().ok_or_else(stopped)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().map_err(|_| stopped())
    }

    /// Calls `call` until it succeeds, fails for good, or `window` passes.
    fn retry<T>(
        &self,
        window: Duration,
        mut call: impl FnMut() -> Result<Result<T, eventstore::Error>, StoreError>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match call()? {
                Ok(value) => return Ok(value),
                Err(e) if transient(&e) && started.elapsed() < window => {
                    tracing::warn!("{}: {e}; retrying", self.shown);
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) if transient(&e) => {
                    return Err(StoreError::Unavailable { secs: window.as_secs(), reason: e.to_string() });
                }
                Err(e) => return Err(backend(e)),
            }
        }
    }

    /// Events `from..from+limit` of `stream` (fewer at its end; none when it does not exist).
    fn read(&self, stream: &str, from: u64, limit: usize, window: Duration) -> Result<Vec<ReadEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.retry(window, || {
            let client = self.client.clone();
            let stream = stream.to_string();
            let options =
                ReadStreamOptions::default().forwards().position(StreamPosition::Position(from)).max_count(limit);
            self.run(async move {
                let mut events = Vec::new();
                let mut reader = match client.read_stream(stream, &options).await {
                    Ok(reader) => reader,
                    Err(eventstore::Error::ResourceNotFound) => return Ok(events),
                    Err(e) => return Err(e),
                };
                loop {
                    match reader.next().await {
                        Ok(Some(resolved)) => {
                            let event = resolved.get_original_event();
                            events.push(ReadEntry {
                                revision: event.revision,
                                id: *event.id.as_bytes(),
                                data: event.data.to_vec(),
                                meta: event.custom_metadata.to_vec(),
                            });
                        }
                        Ok(None) => return Ok(events),
                        Err(eventstore::Error::ResourceNotFound) => return Ok(events),
                        Err(e) => return Err(e),
                    }
                }
            })
        })
    }

    /// Reads what the entries and checkpoints streams gained since the cache was filled.
    fn catch_up(&self, cache: &mut Cache, window: Duration) -> Result<(), StoreError> {
        loop {
            let events = self.read(&self.entries_stream, cache.size, READ_CHUNK, window)?;
            let done = events.len() < READ_CHUNK;
            for event in events {
                if event.revision != cache.size {
                    return Err(StoreError::Corrupt(format!(
                        "{}: event {} where entry {} was expected",
                        self.entries_stream, event.revision, cache.size
                    )));
                }
                if !event.meta.is_empty() {
                    let meta: BatchMeta = serde_json::from_slice(&event.meta).map_err(|e| {
                        StoreError::Corrupt(format!("{} event {}: metadata: {e}", self.entries_stream, event.revision))
                    })?;
                    for (level, index, hash) in meta.nodes {
                        let hash = unhex(&hash).ok_or_else(|| {
                            StoreError::Corrupt(format!(
                                "{} event {}: a node hash",
                                self.entries_stream, event.revision
                            ))
                        })?;
                        cache.add_node(level, index, hash);
                    }
                    cache.keys.extend(meta.keys.into_iter().map(|(from_seq, vkey)| KeyRecord { from_seq, vkey }));
                }
                cache.ids.insert(event.id);
                cache.size += 1;
            }
            if done {
                break;
            }
        }
        loop {
            let events = self.read(&self.checkpoints_stream, cache.checkpoints_read, READ_CHUNK, window)?;
            let done = events.len() < READ_CHUNK;
            for event in events {
                let checkpoint: CheckpointEvent = serde_json::from_slice(&event.data).map_err(|e| {
                    StoreError::Corrupt(format!("{} event {}: {e}", self.checkpoints_stream, event.revision))
                })?;
                cache.add_checkpoint(checkpoint.size, checkpoint.note);
                cache.checkpoints_read = event.revision + 1;
            }
            if done {
                return Ok(());
            }
        }
    }

    fn current(&self) -> Result<MutexGuard<'_, Cache>, StoreError> {
        let mut cache = lock(&self.cache);
        self.catch_up(&mut cache, RETRY_WINDOW)?;
        Ok(cache)
    }

    /// Whether the entries stream holds exactly `batch` at its positions (an
    /// append whose acknowledgement was lost did commit).
    fn holds(&self, batch: &AppendBatch) -> Result<bool, StoreError> {
        let stored = self.read(&self.entries_stream, batch.expected_size, batch.entries.len(), RETRY_WINDOW)?;
        Ok(stored.len() == batch.entries.len()
            && stored.iter().zip(&batch.entries).zip(&batch.ids).all(|((s, e), id)| s.data == *e && s.id == *id))
    }
}

impl Store for KurrentStore {
    fn size(&self) -> Result<u64, StoreError> {
        Ok(self.current()?.size)
    }

    fn append(&self, batch: &AppendBatch) -> Result<(), StoreError> {
        if batch.entries.is_empty() {
            return Ok(());
        }
        if batch.ids.len() != batch.entries.len() {
            return Err(StoreError::Backend(format!(
                "a batch of {} entries with {} ids",
                batch.entries.len(),
                batch.ids.len()
            )));
        }
        let mut cache = self.current()?;
        let other_leaf = batch.prev_leaf().is_some_and(|(index, prev)| cache.node(0, index) != Some(prev));
        if cache.size != batch.expected_size || other_leaf {
            return Err(StoreError::AppendConflict { expected: batch.expected_size, actual: cache.size });
        }
        let mut seen = HashSet::with_capacity(batch.ids.len());
        if let Some(id) = batch.ids.iter().find(|id| cache.ids.contains(*id) || !seen.insert(**id)) {
            return Err(StoreError::DuplicateEventId(*id));
        }
        let meta = BatchMeta {
            nodes: batch.nodes.iter().map(|(level, index, hash)| (*level, *index, hex(hash))).collect(),
            keys: batch.key_changes.clone(),
        };
        let meta = serde_json::to_vec(&meta).map_err(|e| StoreError::Backend(e.to_string()))?;
        let last = batch.entries.len() - 1;
        let events: Vec<EventData> = batch
            .entries
            .iter()
            .zip(&batch.ids)
            .enumerate()
            .map(|(i, (entry, id))| {
                let event = EventData::binary("portcullis-entry", bytes::Bytes::from(entry.clone()))
                    .id(uuid::Uuid::from_bytes(*id));
                if i == last { event.metadata(bytes::Bytes::from(meta.clone())) } else { event }
            })
            .collect();
        let expected = match batch.expected_size {
            0 => ExpectedRevision::NoStream,
            n => ExpectedRevision::Exact(n - 1),
        };
        let options = AppendToStreamOptions::default().expected_revision(expected);
        let mut tries = 0u32;
        let written = self.retry(RETRY_WINDOW, || {
            let (client, stream, options, events) =
                (self.client.clone(), self.entries_stream.clone(), options.clone(), events.clone());
            tries += 1;
            self.run(async move {
                match client.append_to_stream(stream, &options, events).await {
                    Ok(_) => Ok(true),
                    Err(eventstore::Error::WrongExpectedVersion { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            })
        })?;
        // Refused as stale: a conflict, unless an earlier try whose answer was
        // lost had written exactly this batch there.
        let committed = written || (tries > 1 && self.holds(batch)?);
        if !committed {
            drop(cache);
            let actual = self.current()?.size;
            return Err(StoreError::AppendConflict { expected: batch.expected_size, actual });
        }
        // Written at the expected revision, so right after what the cache holds.
        for (level, index, hash) in &batch.nodes {
            cache.add_node(*level, *index, *hash);
        }
        cache.keys.extend(
            batch.key_changes.iter().map(|(from_seq, vkey)| KeyRecord { from_seq: *from_seq, vkey: vkey.clone() }),
        );
        cache.ids.extend(batch.ids.iter().copied());
        cache.size += batch.entries.len() as u64;
        Ok(())
    }

    fn entries(&self, from: u64, limit: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(READ_CHUNK * 4);
        let events = self.read(&self.entries_stream, from, limit, RETRY_WINDOW)?;
        let mut out = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            if event.revision != from + i as u64 {
                return Err(StoreError::Corrupt(format!("entry {} is missing", from + i as u64)));
            }
            out.push(event.data);
        }
        Ok(out)
    }

    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        if let Some(hash) = lock(&self.cache).node(level, index) {
            return Ok(hash);
        }
        self.current()?.node(level, index).ok_or(StoreError::MissingNode { level, index })
    }

    fn nodes(&self, level: u8, from: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        (from..from.saturating_add(count)).map(|index| self.node(level, index)).collect()
    }

    fn put_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError> {
        let cache = self.current()?;
        if let Some(stored) = cache.checkpoints.get(&size)
            && !(note.len() > stored.len() && note.starts_with(stored.as_str()))
        {
            return Ok(());
        }
        drop(cache);
        let event = EventData::json("portcullis-checkpoint", &CheckpointEvent { size, note: note.to_string() })
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        self.retry(RETRY_WINDOW, || {
            let (client, stream, event) = (self.client.clone(), self.checkpoints_stream.clone(), event.clone());
            self.run(async move { client.append_to_stream(stream, &AppendToStreamOptions::default(), event).await })
        })?;
        // Whatever another replica stored first for this size wins, as in the other stores.
        drop(self.current()?);
        Ok(())
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self.current()?.checkpoints.last_key_value().map(|(size, note)| (*size, note.clone())))
    }

    fn checkpoint_at(&self, size: u64) -> Result<Option<String>, StoreError> {
        Ok(self.current()?.checkpoints.get(&size).cloned())
    }

    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self.current()?.keys.clone())
    }

    fn shared(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }
}

impl Drop for KurrentStore {
    /// A runtime cannot be dropped where blocking is not allowed (the last
    /// reference may go on an async task): it is shut down in the background.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
