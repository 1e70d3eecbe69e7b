//! The production store: PostgreSQL, for several replicas on one database.
//!
//! # Schema
//! Versioned migrations ([`MIGRATIONS`]) run at open, inside one transaction
//! that holds an advisory lock, so replicas starting together apply each
//! migration once; the applied versions are in `portcullis_schema`. A
//! database of a newer version than this build knows is refused.
//!
//! # Appends
//! One transaction per batch (group commit): it locks the single row of
//! `ledger_head` (`SELECT ... FOR UPDATE`), which serialises the writers of
//! every replica, checks the expected position and the leaf before it
//! ([`AppendBatch::prev`]), inserts the entries, nodes, event ids and key
//! changes with one `UNNEST` statement each, moves the head and sends
//! `NOTIFY portcullis_ledger`. A writer that lost the race gets
//! [`StoreError::AppendConflict`] and nothing is written: the sequencer
//! re-signs its batch on top of the winner's entries.
//!
//! # The writers' turn
//! A session advisory lock on a connection of its own, taken before signing
//! and passed with the entries in flight (schema version 3, `TURN_PASSING`), so the next
//! replica signs while they commit. An append looks for a replica waiting for
//! the turn only when its batch asks ([`AppendBatch::watch_turn`], version 4).
//!
//! # Guarantees
//! - An append returns `Ok` only after its commit was confirmed by the server
//!   (`synchronous_commit` as configured on the server: `on` by default).
//! - When the connection fails, the store reconnects and retries for the retry
//!   window (30 s by default). An append whose commit outcome is unknown (the
//!   connection broke around `COMMIT`) is resolved by reading back the batch's
//!   first event id (and comparing the stored entry byte for byte) before it
//!   is answered: `Ok` if it was committed, retried if it was not. If the
//!   store stays unreachable for the whole window the append fails with
//!   [`StoreError::Unavailable`]: not acknowledged.
//! - Notifications are only a hint: [`Store::wait_for_growth`] also wakes
//!   on a timeout, and callers re-read the size, so a missed notification
//!   delays a follower, it never makes it skip an entry.

use super::{AppendBatch, KeyRecord, Passed, Store, StoreError, Turn, hex, lock, redact};
use portcullis_format::merkle::Hash;
use postgres::{Client, NoTls, Statement};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The schema's migrations, in order. A migration is never edited once
/// released: a change is a new version.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE ledger_head (only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row), size BIGINT NOT NULL);
     INSERT INTO ledger_head (only_row, size) VALUES (TRUE, 0);
     CREATE TABLE ledger_entries (seq BIGINT PRIMARY KEY, entry BYTEA NOT NULL);
     CREATE TABLE ledger_nodes (id BIGINT PRIMARY KEY, hash BYTEA NOT NULL);
     CREATE TABLE ledger_event_ids (id BYTEA PRIMARY KEY, seq BIGINT NOT NULL);
     CREATE TABLE ledger_checkpoints (size BIGINT PRIMARY KEY, note TEXT NOT NULL);
     CREATE TABLE ledger_keys (from_seq BIGINT PRIMARY KEY, vkey TEXT NOT NULL);",
    ),
    (2, APPEND_FUNCTIONS),
    (3, TURN_PASSING),
    (4, WATCH_WHEN_ASKED),
];

/// The part of every version's `portcullis_append` that writes a batch
/// whose position and leaf were checked: the event ids (a stored or repeated
/// one raises SQLSTATE `PCDUP`, nothing written), the entries, nodes and key
/// changes, the head's move, and the notification. A literal, so that each
/// version's text (a migration, never changed once released) is built from
/// the one copy.
macro_rules! append_rows {
    () => {
        "    INSERT INTO ledger_event_ids (id, seq)
        SELECT i.id, expected + i.n - 1 FROM unnest(ids) WITH ORDINALITY AS i(id, n)
        ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    IF inserted <> coalesce(cardinality(ids), 0) THEN
        SELECT e.id INTO dup FROM ledger_event_ids e WHERE e.id = ANY(ids) AND e.seq < expected LIMIT 1;
        IF dup IS NULL THEN
            SELECT r.x INTO dup FROM unnest(ids) AS r(x) GROUP BY r.x HAVING count(*) > 1 LIMIT 1;
        END IF;
        RAISE EXCEPTION 'event id % is already in the ledger', encode(dup, 'hex')
            USING ERRCODE = 'PCDUP', DETAIL = encode(dup, 'hex');
    END IF;
    INSERT INTO ledger_entries (seq, entry)
        SELECT expected + e.n - 1, e.entry FROM unnest(entries) WITH ORDINALITY AS e(entry, n);
    INSERT INTO ledger_nodes (id, hash) SELECT * FROM unnest(node_ids, node_hashes);
    INSERT INTO ledger_keys (from_seq, vkey) SELECT * FROM unnest(key_froms, key_vkeys);
    current := expected + cardinality(entries);
    UPDATE ledger_head SET size = current;
    PERFORM pg_notify('portcullis_ledger', current::text);
"
    };
}

/// Versions 3 and 4: the head row locked, the expected position and the leaf
/// the batch was signed on checked (see [`TURN_PASSING`]).
macro_rules! check_head {
    () => {
        "    SELECT h.size INTO current FROM ledger_head h FOR UPDATE;
    IF current <> expected OR (expected > 0 AND prev IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM ledger_nodes n WHERE n.id = expected - 1 AND n.hash = prev)) THEN
        RETURN QUERY SELECT FALSE, current, FALSE;
        RETURN;
    END IF;
"
    };
}

/// Version 2: an append in one statement (one round trip, committed on its
/// own), and the writers' turn. `portcullis_append` locks the head row,
/// checks the expected position, refuses a stored or repeated event id with
/// SQLSTATE `PCDUP` (the id in hex as the detail, nothing written), inserts
/// everything, moves the head, notifies, and says whether another session
/// waits for the turn (the advisory lock `(turn_class, turn_object)`, see
/// [`TURN_CLASS`]). `portcullis_take_turn` gives the turn up first when
/// `pass`, waits for it at most `wait_ms`, and returns the entries from
/// `known` on: one round trip from the turn to catching up.
const APPEND_FUNCTIONS: &str = concat!(
    "
CREATE FUNCTION portcullis_append(expected BIGINT, entries BYTEA[], ids BYTEA[], node_ids BIGINT[],
                                  node_hashes BYTEA[], key_froms BIGINT[], key_vkeys TEXT[],
                                  turn_class INT, turn_object INT)
RETURNS TABLE (appended BOOLEAN, head_size BIGINT, turn_wanted BOOLEAN) LANGUAGE plpgsql AS $$
DECLARE
    current BIGINT;
    inserted BIGINT;
    dup BYTEA;
BEGIN
    SELECT h.size INTO current FROM ledger_head h FOR UPDATE;
    IF current <> expected THEN
        RETURN QUERY SELECT FALSE, current, FALSE;
        RETURN;
    END IF;
",
    append_rows!(),
    "    RETURN QUERY SELECT TRUE, current, EXISTS (
        SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND NOT l.granted AND l.objsubid = 2
          AND l.classid = turn_class::oid AND l.objid = turn_object::oid
          AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()));
END $$;

CREATE FUNCTION portcullis_take_turn(turn_class INT, turn_object INT, wait_ms INT, pass BOOLEAN,
                                     known BIGINT, max_entries INT)
RETURNS TABLE (entry_seq BIGINT, entry_bytes BYTEA) LANGUAGE plpgsql AS $$
BEGIN
    IF pass THEN
        PERFORM pg_advisory_unlock(turn_class, turn_object);
    END IF;
    PERFORM set_config('lock_timeout', wait_ms::text, true);
    PERFORM pg_advisory_lock(turn_class, turn_object);
    -- A statement of its own, so a snapshot taken after the lock: every append before it.
    RETURN QUERY SELECT e.seq, e.entry FROM ledger_entries e WHERE e.seq >= known ORDER BY e.seq LIMIT max_entries;
END $$;
"
);

/// Version 3: the turn is passed together with the holder's signed but
/// uncommitted entries, so the next replica signs while they commit.
///
/// - `ledger_pending` (one row, `UNLOGGED`: a hint, never a record) holds
///   what the last holder of the turn had in flight when it passed it (see
///   [`Passed`]: the leaves, and the last entry whole).
/// - `portcullis_pass_turn` (a procedure) writes them, commits, and gives the
///   turn up, in one round trip: the next holder reads this pass, never an
///   earlier one.
/// - `portcullis_take_turn(5 arguments)` waits for the turn, then returns the
///   committed entries from `known` on (`part` = `entry`), followed, when
///   they reach that far, by what the last holder passed from there on: the
///   leaf before (`before`, which the taker checks is the one its state ends
///   on), the leaves (`leaf`) and the last entry (`last`). The taker signs on
///   top.
/// - `portcullis_append(10 arguments)` appends only if the stored leaf before
///   `expected` is `prev`, the leaf the batch was signed on: a batch signed on
///   passed entries that were then not committed, or committed differently,
///   is refused as a conflict. (A batch whose position is still ahead of the
///   head is refused too; the client tries it again for [`AHEAD_WAIT`], since
///   the entries it continues may be on their way.)
///
/// The version 2 functions stay, so replicas of the previous release keep
/// working until they are replaced (they neither pass nor read pending entries).
const TURN_PASSING: &str = concat!(
    "
CREATE UNLOGGED TABLE ledger_pending (only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
                                      from_seq BIGINT NOT NULL, before_leaf BYTEA NOT NULL,
                                      leaves BYTEA[] NOT NULL, last_entry BYTEA NOT NULL);

CREATE FUNCTION portcullis_append(expected BIGINT, prev BYTEA, entries BYTEA[], ids BYTEA[], node_ids BIGINT[],
                                  node_hashes BYTEA[], key_froms BIGINT[], key_vkeys TEXT[],
                                  turn_class INT, turn_object INT)
RETURNS TABLE (appended BOOLEAN, head_size BIGINT, turn_wanted BOOLEAN) LANGUAGE plpgsql AS $$
DECLARE
    current BIGINT;
    inserted BIGINT;
    dup BYTEA;
BEGIN
",
    check_head!(),
    append_rows!(),
    "    RETURN QUERY SELECT TRUE, current, EXISTS (
        SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND NOT l.granted AND l.objsubid = 2
          AND l.classid = turn_class::oid AND l.objid = turn_object::oid
          AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()));
END $$;

CREATE PROCEDURE portcullis_pass_turn(passed_from BIGINT, before_leaf BYTEA, leaves BYTEA[], last_entry BYTEA,
                                      turn_class INT, turn_object INT)
LANGUAGE plpgsql AS $$
BEGIN
    -- The row is a hint (unlogged): its commit need not wait for the disk.
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO ledger_pending (only_row, from_seq, before_leaf, leaves, last_entry)
        VALUES (TRUE, passed_from, before_leaf, leaves, last_entry)
        ON CONFLICT (only_row) DO UPDATE
        SET from_seq = excluded.from_seq, before_leaf = excluded.before_leaf, leaves = excluded.leaves,
            last_entry = excluded.last_entry;
    -- Committed before the turn is free, so the next holder reads this pass.
    COMMIT;
    PERFORM pg_advisory_unlock(turn_class, turn_object);
END $$;

CREATE FUNCTION portcullis_take_turn(turn_class INT, turn_object INT, wait_ms INT, known BIGINT, max_entries INT)
RETURNS TABLE (entry_seq BIGINT, entry_bytes BYTEA, part TEXT) LANGUAGE plpgsql AS $$
DECLARE
    passed_from BIGINT;
    passed_before BYTEA;
    passed_leaves BYTEA[];
    passed_last BYTEA;
    passed_end BIGINT;
    head BIGINT;
    start BIGINT;
BEGIN
    PERFORM set_config('lock_timeout', wait_ms::text, true);
    PERFORM pg_advisory_lock(turn_class, turn_object);
    SELECT p.from_seq, p.before_leaf, p.leaves, p.last_entry
        INTO passed_from, passed_before, passed_leaves, passed_last FROM ledger_pending p;
    SELECT h.size INTO head FROM ledger_head h;
    RETURN QUERY SELECT e.seq, e.entry, 'entry' FROM ledger_entries e
        WHERE e.seq >= known AND e.seq < head ORDER BY e.seq LIMIT max_entries;
    start := greatest(known, head);
    passed_end := passed_from + coalesce(cardinality(passed_leaves), 0);
    IF head - known <= max_entries AND passed_from <= start AND passed_end > start THEN
        -- The leaf the returned ones continue, for the taker to check against its own.
        RETURN QUERY SELECT start, CASE WHEN start = passed_from THEN passed_before
                                        ELSE passed_leaves[start - passed_from] END, 'before';
        RETURN QUERY SELECT passed_from + l.n - 1, l.leaf, 'leaf'
            FROM unnest(passed_leaves) WITH ORDINALITY AS l(leaf, n)
            WHERE passed_from + l.n - 1 >= start ORDER BY l.n;
        RETURN QUERY SELECT passed_end - 1, passed_last, 'last';
    END IF;
END $$;
"
);

/// Version 4: `portcullis_append(11 arguments)` is version 3's with one
/// more, `watch_turn`: it looks for a session waiting for the turn (a scan
/// of `pg_locks`, ~50 µs on an idle server) only when asked, and before it
/// locks the head row, so the scan is no longer inside the section that
/// every replica's commit waits for. Version 3's function stays for replicas
/// of the previous release.
const WATCH_WHEN_ASKED: &str = concat!(
    "
CREATE FUNCTION portcullis_append(expected BIGINT, prev BYTEA, entries BYTEA[], ids BYTEA[], node_ids BIGINT[],
                                  node_hashes BYTEA[], key_froms BIGINT[], key_vkeys TEXT[],
                                  turn_class INT, turn_object INT, watch_turn BOOLEAN)
RETURNS TABLE (appended BOOLEAN, head_size BIGINT, turn_wanted BOOLEAN) LANGUAGE plpgsql AS $$
DECLARE
    current BIGINT;
    inserted BIGINT;
    dup BYTEA;
    wanted BOOLEAN := FALSE;
BEGIN
    IF watch_turn THEN
        wanted := EXISTS (
            SELECT 1 FROM pg_locks l
            WHERE l.locktype = 'advisory' AND NOT l.granted AND l.objsubid = 2
              AND l.classid = turn_class::oid AND l.objid = turn_object::oid
              AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()));
    END IF;
",
    check_head!(),
    append_rows!(),
    "    RETURN QUERY SELECT TRUE, current, wanted;
END $$;
"
);

/// The advisory lock of the writers' turn: `pg_advisory_lock(TURN_CLASS, TURN_OBJECT)`
/// ("port", "turn" in ASCII).
const TURN_CLASS: i32 = 0x706f_7274;
const TURN_OBJECT: i32 = 0x7475_726e;

/// How long a writer waits for its turn before it appends without it (still
/// safe: the head row lock, the expected position and the leaf before it decide).
const TURN_WAIT: Duration = Duration::from_secs(2);

/// How long an append whose position is ahead of the head waits for the
/// entries it continues (passed with the turn, still being committed by the
/// replica that signed them) before it is refused as a conflict.
const AHEAD_WAIT: Duration = Duration::from_millis(50);

/// The schema version this build writes and reads.
pub fn schema_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// The advisory lock key the migrations hold ("portcul" in ASCII).
const MIGRATION_LOCK: i64 = 0x0070_6f72_7463_756c;
const CHANNEL: &str = "portcullis_ledger";

/// Full nodes are keyed by one integer: the level in the top 6 bits, the index below.
fn node_id(level: u8, index: u64) -> i64 {
    ((u64::from(level) << 57) | index) as i64
}

/// A connection and the statements prepared on it (one round trip per
/// statement afterwards, instead of a parse and an execute).
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    fn new(client: Client) -> Conn {
        Conn { client, statements: HashMap::new() }
    }

    /// `sql` prepared on this connection, prepared once.
    fn prepared(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.client.query(&statement, params)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Option<postgres::Row>, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.client.query_opt(&statement, params)
    }

    fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<postgres::Row, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.client.query_one(&statement, params)
    }
}

pub struct PostgresStore {
    config: postgres::Config,
    url: String,
    writer: Mutex<Option<Conn>>,
    reader: Mutex<Option<Conn>>,
    /// The session that holds the writers' turn, apart from the writer's, so
    /// the turn can be passed while the writer commits.
    turn: Mutex<Option<Conn>>,
    listener: Mutex<Option<Client>>,
    retry_for: Duration,
    /// Whether the turn connection holds the writers' turn (the session
    /// advisory lock). Changed only with `turn` locked; cleared when that
    /// connection is replaced, since the server released the lock with it.
    turn_held: AtomicBool,
    /// Whether the last append saw another session waiting for the turn.
    turn_wanted: AtomicBool,
}

/// Whether an error may go away by reconnecting and trying again: the
/// connection broke, or the server is shutting down, starting, or overloaded.
fn transient(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || code.starts_with("57P") || code == "53300" || code == "40001" || code == "40P01"
        }
        // No SQLSTATE: an I/O or protocol failure of the connection, or a timeout.
        None => {
            let text = e.to_string();
            !text.contains("error serializing") && !text.contains("error deserializing")
        }
    }
}

/// An error's text with the server's message: the client's own text for a
/// server error is only "db error".
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Runs `f` where the synchronous client may block: the client drives its
/// own small runtime, which cannot start on a thread of an async runtime, so
/// from such a thread (an async caller, or `spawn_blocking`) the call moves to
/// a short-lived thread of its own. The sequencer's threads call directly.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// What one try of an append came to, short of a connection failure.
enum Attempt {
    Done,
    Refused(StoreError),
}

impl PostgresStore {
    /// Connects, runs the pending migrations, and returns the store. Fails at
    /// once (no retry window) when the server cannot be reached, so a wrong
    /// URL is reported at start.
    ///
    /// # Errors
    /// [`StoreError::BadUrl`], [`StoreError::Connect`],
    /// [`StoreError::SchemaVersion`] or [`StoreError::Backend`].
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let shown = redact(url);
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| StoreError::BadUrl { url: shown.clone(), reason: e.to_string() })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("portcullis");
        }
        let store = PostgresStore {
            config,
            url: shown,
            writer: Mutex::new(None),
            reader: Mutex::new(None),
            turn: Mutex::new(None),
            listener: Mutex::new(None),
            retry_for: Duration::from_secs(30),
            turn_held: AtomicBool::new(false),
            turn_wanted: AtomicBool::new(false),
        };
        off_runtime(|| {
            let mut client = store.connect()?;
            store.migrate(&mut client)?;
            *lock(&store.writer) = Some(Conn::new(client));
            Ok::<_, StoreError>(())
        })?;
        Ok(store)
    }

    /// How long a failed connection is retried before an operation fails.
    pub fn with_retry_window(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    fn connect(&self) -> Result<Client, StoreError> {
        self.config.connect(NoTls).map_err(|e| StoreError::Connect { url: self.url.clone(), reason: e.to_string() })
    }

    fn migrate(&self, client: &mut Client) -> Result<(), StoreError> {
        let backend = |e: postgres::Error| StoreError::Backend(format!("migrating the schema: {e}"));
        let mut tx = client.transaction().map_err(backend)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(backend)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS portcullis_schema (
                 version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .map_err(backend)?;
        let current: i32 =
            tx.query_one("SELECT coalesce(max(version), 0) FROM portcullis_schema", &[]).map_err(backend)?.get(0);
        if current > schema_version() {
            return Err(StoreError::SchemaVersion { found: current.into(), supported: schema_version().into() });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql).map_err(backend)?;
            tx.execute("INSERT INTO portcullis_schema (version) VALUES ($1)", &[version]).map_err(backend)?;
            tracing::info!("ledger store {}: applied schema migration {version}", self.url);
        }
        tx.commit().map_err(backend)
    }

    /// Runs `op` on the connection in `slot`, reconnecting and retrying on
    /// transient failures until the retry window has passed.
    fn with_client<T: Send>(
        &self,
        slot: &Mutex<Option<Conn>>,
        op: impl FnMut(&mut Conn) -> Result<T, postgres::Error> + Send,
    ) -> Result<T, StoreError> {
        off_runtime(|| self.with_client_here(slot, op))
    }

    fn with_client_here<T>(
        &self,
        slot: &Mutex<Option<Conn>>,
        mut op: impl FnMut(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(20);
        loop {
            let error = {
                let mut guard = lock(slot);
                match self.ensure(slot, &mut guard) {
                    Err(e) => e.to_string(),
                    Ok(client) => match op(client) {
                        Ok(value) => return Ok(value),
                        Err(e) if transient(&e) => {
                            self.drop_conn(slot, &mut guard);
                            describe(&e)
                        }
                        Err(e) => return Err(StoreError::Backend(describe(&e))),
                    },
                }
            };
            if Instant::now() >= deadline {
                return Err(StoreError::Unavailable { secs: self.retry_for.as_secs(), reason: error });
            }
            tracing::warn!("ledger store {}: {error}; retrying", self.url);
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    fn ensure<'a>(
        &self,
        slot: &Mutex<Option<Conn>>,
        guard: &'a mut MutexGuard<'_, Option<Conn>>,
    ) -> Result<&'a mut Conn, StoreError> {
        if guard.as_ref().is_none_or(|conn| conn.client.is_closed()) {
            self.drop_conn(slot, guard);
            **guard = Some(Conn::new(self.connect()?));
        }
        Ok(guard.as_mut().expect("just connected"))
    }

    /// Forgets a broken connection. The server releases a session's advisory
    /// locks when it ends, so the turn is no longer held.
    fn drop_conn(&self, slot: &Mutex<Option<Conn>>, guard: &mut MutexGuard<'_, Option<Conn>>) {
        if std::ptr::eq(slot, &self.turn) {
            self.turn_held.store(false, Ordering::Release);
        }
        **guard = None;
    }

    /// Takes the writers' turn on the turn connection unless it holds it
    /// (see [`Store::take_turn`]): waits (in the server's queue, first come
    /// first served) at most [`TURN_WAIT`]. `None` also when the wait timed
    /// out, and the caller signs without it.
    fn take_turn_on(&self, conn: &mut Conn, from: u64) -> Result<Option<Turn>, postgres::Error> {
        if self.turn_held.load(Ordering::Acquire) {
            return Ok(None);
        }
        let wait_ms = TURN_WAIT.as_millis() as i32;
        let (known, limit) = (from as i64, crate::store::TURN_ENTRIES as i32);
        match conn.query(
            "SELECT entry_seq, entry_bytes, part FROM portcullis_take_turn($1, $2, $3, $4, $5)",
            &[&TURN_CLASS, &TURN_OBJECT, &wait_ms, &known, &limit],
        ) {
            Ok(rows) => {
                self.turn_held.store(true, Ordering::Release);
                self.turn_wanted.store(false, Ordering::Release);
                let mut turn = Turn::default();
                let mut next = known;
                let mut passing = false;
                for row in &rows {
                    let (seq, bytes, part): (i64, Vec<u8>, &str) = (row.get(0), row.get(1), row.get(2));
                    let leaf = || Hash::try_from(bytes.as_slice()).ok();
                    // Rows out of order (a gap) are left to the caller's reads, which name
                    // the missing entry; passed rows then count for nothing.
                    let in_order = match part {
                        "entry" if seq == next && !passing => {
                            turn.committed.push(bytes);
                            true
                        }
                        "before" if seq == next && !passing => leaf().map(|l| turn.passed.before = l).is_some(),
                        "leaf" if seq == next && passing => leaf().map(|l| turn.passed.leaves.push(l)).is_some(),
                        "last" if seq == next - 1 && !turn.passed.leaves.is_empty() => {
                            turn.passed.last = bytes;
                            true
                        }
                        _ => false,
                    };
                    if !in_order {
                        turn.passed = Passed::default();
                        break;
                    }
                    passing |= part == "before";
                    next += i64::from(matches!(part, "entry" | "leaf"));
                }
                if turn.passed.last.is_empty() {
                    turn.passed.leaves.clear();
                }
                Ok(Some(turn))
            }
            Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                tracing::warn!("ledger store {}: another writer kept the turn for {TURN_WAIT:?}", self.url);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// One append in one statement, committed on its own (no explicit
    /// transaction): one round trip. The answer arrives only after the
    /// commit (the client reads up to the server's ReadyForQuery).
    fn try_append(&self, conn: &mut Conn, batch: &AppendBatch) -> Result<Attempt, postgres::Error> {
        let expected = batch.expected_size as i64;
        let entries: Vec<&[u8]> = batch.entries.iter().map(Vec::as_slice).collect();
        let ids: Vec<&[u8]> = batch.ids.iter().map(|id| id.as_slice()).collect();
        let node_ids: Vec<i64> = batch.nodes.iter().map(|(l, i, _)| node_id(*l, *i)).collect();
        let hashes: Vec<&[u8]> = batch.nodes.iter().map(|(_, _, h)| h.as_slice()).collect();
        let key_froms: Vec<i64> = batch.key_changes.iter().map(|(from, _)| *from as i64).collect();
        let key_vkeys: Vec<&str> = batch.key_changes.iter().map(|(_, vkey)| vkey.as_str()).collect();
        let prev = batch.prev.as_ref().map(|h| h.as_slice());
        let result = conn.query_one(
            "SELECT appended, head_size, turn_wanted \
             FROM portcullis_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &expected,
                &prev,
                &entries,
                &ids,
                &node_ids,
                &hashes,
                &key_froms,
                &key_vkeys,
                &TURN_CLASS,
                &TURN_OBJECT,
                &batch.watch_turn,
            ],
        );
        let row = match result {
            Ok(row) => row,
            Err(e) if e.as_db_error().is_some_and(|db| db.code().code() == "PCDUP") => {
                let detail = e.as_db_error().and_then(|db| db.detail()).unwrap_or_default();
                let dup = batch.ids.iter().find(|id| hex(id.as_slice()) == detail).copied();
                return Ok(Attempt::Refused(StoreError::DuplicateEventId(dup.unwrap_or(batch.ids[0]))));
            }
            Err(e) => return Err(e),
        };
        let (appended, actual, wanted): (bool, i64, bool) = (row.get(0), row.get(1), row.get(2));
        if !appended {
            return Ok(Attempt::Refused(StoreError::AppendConflict {
                expected: batch.expected_size,
                actual: actual as u64,
            }));
        }
        self.turn_wanted.store(wanted, Ordering::Release);
        Ok(Attempt::Done)
    }

    /// After a connection failure during an append: was the batch committed?
    fn committed(conn: &mut Conn, batch: &AppendBatch) -> Result<bool, postgres::Error> {
        let expected = batch.expected_size as i64;
        if let Some(id) = batch.ids.first() {
            let row = conn.query_opt("SELECT seq FROM ledger_event_ids WHERE id = $1", &[&id.as_slice()])?;
            match row.map(|r| r.get::<_, i64>(0)) {
                None => return Ok(false),
                Some(seq) if seq != expected => return Ok(false),
                Some(_) => {}
            }
        }
        let Some(first) = batch.entries.first() else { return Ok(true) };
        let row = conn.query_opt("SELECT entry FROM ledger_entries WHERE seq = $1", &[&expected])?;
        Ok(row.is_some_and(|r| r.get::<_, &[u8]>(0) == first.as_slice()))
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Closing a client blocks on its runtime, so it must not happen on an async runtime's thread.
        let mut clients: Vec<Client> = [&self.writer, &self.reader, &self.turn]
            .into_iter()
            .filter_map(|slot| lock(slot).take().map(|c| c.client))
            .collect();
        clients.extend(lock(&self.listener).take());
        if !clients.is_empty() {
            off_runtime(move || drop(clients));
        }
    }
}

fn hash_from(bytes: &[u8]) -> Result<Hash, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt("a node hash is not 32 bytes".into()))
}

impl Store for PostgresStore {
    fn size(&self) -> Result<u64, StoreError> {
        let size: i64 =
            self.with_client(&self.reader, |c| Ok(c.query_one("SELECT size FROM ledger_head", &[])?.get(0)))?;
        u64::try_from(size).map_err(|_| StoreError::Corrupt(format!("the head says size {size}")))
    }

    fn append(&self, batch: &AppendBatch) -> Result<(), StoreError> {
        if batch.entries.is_empty() {
            return Ok(());
        }
        if batch.ids.len() > batch.entries.len() {
            return Err(StoreError::Corrupt("a batch holds more ids than entries".into()));
        }
        // `unknown` is set once a try failed in a way that may have committed it.
        let mut unknown = false;
        self.with_client(&self.writer, |conn| {
            if unknown {
                if Self::committed(conn, batch)? {
                    return Ok(Ok(()));
                }
                unknown = false;
            }
            // A position ahead of the head: the entries the batch continues (passed
            // with the turn) may still be on their way; try again for a while.
            let deadline = Instant::now() + AHEAD_WAIT;
            let mut pause = Duration::from_micros(50);
            loop {
                match self.try_append(conn, batch) {
                    Ok(Attempt::Done) => return Ok(Ok(())),
                    Ok(Attempt::Refused(StoreError::AppendConflict { actual, .. }))
                        if actual < batch.expected_size && Instant::now() < deadline =>
                    {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(5));
                    }
                    Ok(Attempt::Refused(e)) => return Ok(Err(e)),
                    Err(e) => {
                        unknown = true;
                        return Err(e);
                    }
                }
            }
        })?
    }

    fn entries(&self, from: u64, limit: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let limit = limit.min(1 << 20) as i64;
        let rows = self.with_client(&self.reader, |c| {
            c.query(
                "SELECT seq, entry FROM ledger_entries WHERE seq >= $1 AND seq < $1 + $2 ORDER BY seq",
                &[&(from as i64), &limit],
            )
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let seq: i64 = row.get(0);
            if seq as u64 != from + i as u64 {
                return Err(StoreError::Corrupt(format!("entry {} is missing", from + i as u64)));
            }
            out.push(row.get::<_, Vec<u8>>(1));
        }
        Ok(out)
    }

    fn node(&self, level: u8, index: u64) -> Result<Hash, StoreError> {
        let row = self.with_client(&self.reader, |c| {
            c.query_opt("SELECT hash FROM ledger_nodes WHERE id = $1", &[&node_id(level, index)])
        })?;
        hash_from(row.ok_or(StoreError::MissingNode { level, index })?.get(0))
    }

    fn nodes(&self, level: u8, from: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        let rows = self.with_client(&self.reader, |c| {
            c.query(
                "SELECT id, hash FROM ledger_nodes WHERE id >= $1 AND id < $2 ORDER BY id",
                &[&node_id(level, from), &node_id(level, from + count)],
            )
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            if row.get::<_, i64>(0) != node_id(level, from + i as u64) {
                return Err(StoreError::MissingNode { level, index: from + i as u64 });
            }
            out.push(hash_from(row.get(1))?);
        }
        if out.len() as u64 != count {
            return Err(StoreError::MissingNode { level, index: from + out.len() as u64 });
        }
        Ok(out)
    }

    fn nodes_at(&self, wanted: &[(u8, u64)]) -> Result<Vec<Hash>, StoreError> {
        let ids: Vec<i64> = wanted.iter().map(|&(level, index)| node_id(level, index)).collect();
        let rows = self
            .with_client(&self.reader, |c| c.query("SELECT id, hash FROM ledger_nodes WHERE id = ANY($1)", &[&ids]))?;
        let found: HashMap<i64, &[u8]> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut out = Vec::with_capacity(wanted.len());
        for (&(level, index), id) in wanted.iter().zip(&ids) {
            out.push(hash_from(found.get(id).ok_or(StoreError::MissingNode { level, index })?)?);
        }
        Ok(out)
    }

    fn put_checkpoint(&self, size: u64, note: &str) -> Result<(), StoreError> {
        self.with_client(&self.writer, |c| {
            c.client.execute(
                // A note that extends the stored one (witness cosignatures appended) replaces it.
                "INSERT INTO ledger_checkpoints (size, note) VALUES ($1, $2) ON CONFLICT (size) DO UPDATE \
                 SET note = excluded.note WHERE length(excluded.note) > length(ledger_checkpoints.note) \
                 AND left(excluded.note, length(ledger_checkpoints.note)) = ledger_checkpoints.note",
                &[&(size as i64), &note],
            )
        })?;
        Ok(())
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        let row = self.with_client(&self.reader, |c| {
            c.query_opt("SELECT size, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1", &[])
        })?;
        Ok(row.map(|r| (r.get::<_, i64>(0) as u64, r.get(1))))
    }

    fn checkpoint_at(&self, size: u64) -> Result<Option<String>, StoreError> {
        let row = self.with_client(&self.reader, |c| {
            c.query_opt("SELECT note FROM ledger_checkpoints WHERE size = $1", &[&(size as i64)])
        })?;
        Ok(row.map(|r| r.get(0)))
    }

    fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = self
            .with_client(&self.reader, |c| c.query("SELECT from_seq, vkey FROM ledger_keys ORDER BY from_seq", &[]))?;
        Ok(rows.iter().map(|r| KeyRecord { from_seq: r.get::<_, i64>(0) as u64, vkey: r.get(1) }).collect())
    }

    fn shared(&self) -> bool {
        true
    }

    fn take_turn(&self, from: u64) -> Result<Option<Turn>, StoreError> {
        self.with_client(&self.turn, |conn| self.take_turn_on(conn, from))
    }

    fn holds_turn(&self) -> bool {
        self.turn_held.load(Ordering::Acquire)
    }

    fn pass_turn(&self, from: u64, in_flight: &Passed) -> Result<(), StoreError> {
        if !self.turn_held.load(Ordering::Acquire) {
            return Ok(());
        }
        self.with_client(&self.turn, |conn| {
            if self.turn_held.load(Ordering::Acquire) {
                let leaves: Vec<&[u8]> = in_flight.leaves.iter().map(|l| l.as_slice()).collect();
                conn.query(
                    "CALL portcullis_pass_turn($1, $2, $3, $4, $5, $6)",
                    &[
                        &(from as i64),
                        &in_flight.before.as_slice(),
                        &leaves,
                        &in_flight.last,
                        &TURN_CLASS,
                        &TURN_OBJECT,
                    ],
                )?;
                self.turn_held.store(false, Ordering::Release);
            }
            Ok(())
        })
    }

    fn turn_wanted(&self) -> bool {
        self.turn_wanted.load(Ordering::Acquire)
    }

    fn wait_for_growth(&self, _size: u64, timeout: Duration) {
        off_runtime(|| self.wait_here(timeout));
    }

    fn describe(&self) -> String {
        format!("PostgreSQL {}", self.url)
    }
}

impl PostgresStore {
    fn wait_here(&self, timeout: Duration) {
        let mut guard = lock(&self.listener);
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = None;
            match self.connect() {
                Ok(mut client) => match client.batch_execute(&format!("LISTEN {CHANNEL}")) {
                    Ok(()) => *guard = Some(client),
                    Err(e) => tracing::debug!("ledger store {}: LISTEN failed: {e}", self.url),
                },
                Err(e) => tracing::debug!("ledger store {}: {e}", self.url),
            }
        }
        let Some(client) = guard.as_mut() else {
            drop(guard);
            std::thread::sleep(timeout);
            return;
        };
        let woke = {
            let mut notifications = client.notifications();
            let first = postgres::fallible_iterator::FallibleIterator::next(&mut notifications.timeout_iter(timeout));
            // Drain what else is queued: one wake-up per burst is enough.
            let mut queued = notifications.iter();
            while let Ok(Some(_)) = postgres::fallible_iterator::FallibleIterator::next(&mut queued) {}
            first
        };
        if woke.is_err() {
            *guard = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// A migration runs once per database, so its text is never changed once
    /// released (the shared fragments it is built from included): a change
    /// is a new version. The SHA-256 of each released text.
    #[test]
    fn released_migrations_are_never_edited() {
        let released = [
            (1, "9981059e9975ec9b10fe205a3ffd63a2ce3ce6ee6e37d88bdcc360da2692c3d8"),
            (2, "28686264f5915ac1760cc50f614e7f91ec8a1535634ad05d18caf2ca60c2e2eb"),
            (3, "12d3fd550fccb8d3afc11c7674863e0a14e646d76110873e91676ef912d240c9"),
            (4, "c5509a0111ee79e2a2491def67e18d217ce9fb3918db837345a64516aab4d0f0"),
        ];
        assert_eq!(super::MIGRATIONS.len(), released.len(), "a new version is pinned here once released");
        for ((version, sql), (expected_version, expected)) in super::MIGRATIONS.iter().zip(released) {
            assert_eq!(*version, expected_version);
            assert_eq!(super::hex(&Sha256::digest(sql.as_bytes())), expected, "migration {version}");
        }
    }
}
