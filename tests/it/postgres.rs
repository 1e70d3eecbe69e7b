//! A real, throwaway PostgreSQL server for the tests, and the tests that
//! need the server itself (restart in the middle of a load, replicas).
//!
//! Each test starts its own cluster: the data directory is copied from a
//! template made once by `initdb` (cached in the temp dir), the server
//! listens on a free port of 127.0.0.1 and is stopped when the test ends.
//! Run as root, the server runs as the `postgres` OS user (PostgreSQL refuses
//! root). With `PORTCULLIS_TEST_POSTGRES_URL` set, no server is started: each
//! test gets a fresh database on that server instead.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const URL_VAR: &str = "PORTCULLIS_TEST_POSTGRES_URL";

/// The directory of PostgreSQL's programs (initdb, postgres).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: tools/test installs Debian's postgresql package")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no /usr/lib/postgresql/*/bin/postgres")
}

/// The OS user the server runs as: `postgres` when we are root, else ourselves.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output().expect("id");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("the postgres OS user exists")
    };
    Some((id("-u"), id("-g")))
}

fn as_server_user(command: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = server_user() {
        command.uid(uid).gid(gid);
    }
    command
}

fn chown_tree(path: &Path) {
    if let Some((uid, gid)) = server_user() {
        let status = Command::new("chown").args(["-R", &format!("{uid}:{gid}")]).arg(path).status().unwrap();
        assert!(status.success());
    }
}

/// A data directory made by initdb once, then copied for every server.
fn template() -> PathBuf {
    let bin = bin_dir();
    let version = bin.parent().and_then(|p| p.file_name()).unwrap().to_string_lossy().to_string();
    let template = std::env::temp_dir().join(format!("portcullis-test-pg{version}-template"));
    if template.join("PG_VERSION").exists() {
        return template;
    }
    let staging = std::env::temp_dir().join(format!("portcullis-test-pg-initdb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).unwrap();
    chown_tree(&staging);
    let out = as_server_user(&mut Command::new(bin.join("initdb")))
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D"])
        .arg(staging.join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    // Another test process may have won the race: either template is fine.
    if std::fs::rename(staging.join("data"), &template).is_err() {
        assert!(template.join("PG_VERSION").exists());
    }
    let _ = std::fs::remove_dir_all(&staging);
    template
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A PostgreSQL server for one test; stopped (and its files removed) on drop.
pub struct TestPg {
    /// `None` when the server is external (`PORTCULLIS_TEST_POSTGRES_URL`).
    server: Option<Server>,
    base_url: String,
    next_db: std::sync::atomic::AtomicU32,
}

struct Server {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl TestPg {
    pub fn start() -> TestPg {
        if let Ok(url) = std::env::var(URL_VAR) {
            return TestPg { server: None, base_url: url, next_db: 0.into() };
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let status = Command::new("cp").arg("-a").arg(template()).arg(&data).status().unwrap();
        assert!(status.success());
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown_tree(dir.path());
        let port = free_port();
        let mut pg = TestPg {
            server: Some(Server { dir, port, child: None }),
            base_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            next_db: 0.into(),
        };
        pg.start_server();
        pg
    }

    /// Whether the tests own the server (and may stop, kill and restart it).
    pub fn owned(&self) -> bool {
        self.server.is_some()
    }

    fn start_server(&mut self) {
        let server = self.server.as_mut().expect("an owned server");
        let data = server.dir.path().join("data");
        let log = std::fs::File::create(server.dir.path().join("server.log")).unwrap();
        let child = as_server_user(&mut Command::new(bin_dir().join("postgres")))
            .arg("-D")
            .arg(&data)
            .args(["-p", &server.port.to_string(), "-k"])
            .arg(server.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "fsync=on"])
            .args(["-c", "synchronous_commit=on"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        server.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match off_runtime(|| postgres::Client::connect(&self.base_url, postgres::NoTls).map(drop)) {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!("the test PostgreSQL did not start: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn signal(&mut self, signal: i32) {
        let server = self.server.as_mut().expect("an owned server");
        if let Some(mut child) = server.child.take() {
            // SAFETY: the pid is our child's, not yet reaped.
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
    }

    /// Stops the server the hard way (SIGQUIT: no checkpoint, recovery at the next start), as a crash would.
    pub fn crash(&mut self) {
        self.signal(libc::SIGQUIT);
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.start_server();
    }

    /// A new, empty database on the server; its URL.
    pub fn database(&self) -> String {
        let n = self.next_db.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("portcullis_test_{}_{n}_{}", std::process::id(), random_suffix());
        off_runtime(|| {
            let mut client =
                postgres::Client::connect(&self.base_url, postgres::NoTls).expect("connecting to the test server");
            client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        });
        let (head, _) = self.base_url.rsplit_once('/').unwrap();
        format!("{head}/{name}")
    }
}

/// The synchronous client cannot run on an async runtime's thread: run `f` on a thread of its own.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(f).join().unwrap())
}

fn random_suffix() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if self.server.is_some() {
            // SIGINT: fast shutdown.
            self.signal(libc::SIGINT);
        }
    }
}

/// The database server crashes (SIGQUIT: no shutdown checkpoint) in the
/// middle of a load and comes back: the ledger reconnects, appends go on,
/// every acknowledged event is present and the whole ledger verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_in_the_middle_of_a_load_loses_nothing_acknowledged() {
    use crate::store_contract::{Backend, Postgres};
    use portcullis_format::event::ParsedEntry;
    let mut backend = Postgres::new();
    if !backend.server.owned() {
        eprintln!("skipped: {URL_VAR} names a server this test cannot restart");
        return;
    }
    let store = backend.open();
    let (ledger, thread) =
        portcullis::ledger::Ledger::open(store, crate::ledger::signer(1), Default::default()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for writer in 0..16u64 {
        let ledger = ledger.clone();
        let stop = std::sync::Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0);
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let draft = crate::ledger::draft(writer * 1_000_000 + i);
                match ledger.append(draft).await {
                    Ok(receipt) => acked.push((receipt.seq, receipt.id)),
                    Err(_) => failed += 1,
                }
            }
            (acked, failed)
        }));
    }
    let acked_before = || ledger.head().size;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = acked_before();
    assert!(before > 50, "appends ran before the crash ({before})");
    tokio::task::block_in_place(|| {
        backend.server.crash();
        std::thread::sleep(Duration::from_millis(1500));
        backend.server.restart();
    });
    let restarted_at = ledger.head().size;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for task in tasks {
        let (acked, _failed) = task.await.unwrap();
        acknowledged.extend(acked);
    }
    assert!(ledger.head().size > restarted_at + 50, "appends went on after the restart");
    ledger.checkpoint().await.unwrap();
    let store = std::sync::Arc::clone(ledger.store());
    crate::ledger::close(ledger, thread).await;
    let seqs: std::collections::HashSet<u64> = acknowledged.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs.len(), acknowledged.len(), "no seq acknowledged twice");
    let check = std::sync::Arc::clone(&store);
    let acked = acknowledged.clone();
    tokio::task::spawn_blocking(move || {
        for (seq, id) in &acked {
            let entry = check.entries(*seq, 1).unwrap().pop().unwrap_or_else(|| panic!("acknowledged {seq} lost"));
            assert_eq!(ParsedEntry::parse(&entry).unwrap().event.draft.id, *id);
        }
        let dir = tempfile::tempdir().unwrap();
        portcullis::export::export(check.as_ref(), &dir.path().join("e"), 0, None, &|_, _| {}).unwrap();
        let keys = portcullis_format::keys::KeySet::single(crate::ledger::signer(1).verifier().clone());
        let summary = crate::ledger::verify_dir(&dir.path().join("e"), keys).unwrap();
        assert!(summary.entries_verified as usize > acked.len());
    })
    .await
    .unwrap();
    drop(store);
}

/// `migrate` copies a SQLite ledger to PostgreSQL, verifying as it goes;
/// an interrupted copy resumes; a target holding another ledger is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_resumes_and_refuses_another_ledger() {
    use crate::store_contract::{Backend, Postgres, Sqlite};
    use portcullis::migrate::{MigrateError, Options, migrate};
    let source = Sqlite::new();
    let (ledger, thread) =
        portcullis::ledger::Ledger::open(source.open(), crate::ledger::signer(1), Default::default()).unwrap();
    for i in 0..5000 {
        ledger.append(crate::ledger::draft(i)).await.unwrap();
    }
    let (size, _) = ledger.checkpoint().await.unwrap();
    crate::ledger::close(ledger, thread).await;
    let target = Postgres::new();
    let other = Sqlite::new();
    let (ledger, thread) =
        portcullis::ledger::Ledger::open(other.open(), crate::ledger::signer(2), Default::default()).unwrap();
    ledger.append(crate::ledger::draft(1)).await.unwrap();
    ledger.checkpoint().await.unwrap();
    crate::ledger::close(ledger, thread).await;

    tokio::task::spawn_blocking(move || {
        let (from, to) = (source.open(), target.open());
        // Interrupted after 4200 entries (one full batch and part of the next).
        let first = migrate(from.as_ref(), to.as_ref(), Options { stop_after: Some(4200) }, &|_, _| {}).unwrap();
        assert_eq!((first.resumed_at, first.copied), (0, 4200));
        assert_eq!(to.latest_checkpoint().unwrap(), None, "no checkpoint before the copy is complete");
        let second = migrate(from.as_ref(), to.as_ref(), Options::default(), &|_, _| {}).unwrap();
        assert_eq!((second.resumed_at, second.copied, second.size), (4200, size - 4200, size));
        assert_eq!(to.latest_checkpoint().unwrap(), from.latest_checkpoint().unwrap());
        // A rerun has nothing to copy.
        let third = migrate(from.as_ref(), to.as_ref(), Options::default(), &|_, _| {}).unwrap();
        assert_eq!(third.copied, 0);
        // Another ledger into the same target: refused, nothing written.
        let refused = migrate(other.open().as_ref(), to.as_ref(), Options::default(), &|_, _| {});
        assert!(matches!(refused, Err(MigrateError::DifferentLedger(_))), "{refused:?}");
        assert_eq!(to.size().unwrap(), size);
        // The copy verifies in full, and the service opens on it.
        let dir = tempfile::tempdir().unwrap();
        portcullis::export::export(to.as_ref(), &dir.path().join("e"), 0, None, &|_, _| {}).unwrap();
        let keys = portcullis_format::keys::KeySet::single(crate::ledger::signer(1).verifier().clone());
        assert_eq!(crate::ledger::verify_dir(&dir.path().join("e"), keys).unwrap().entries_verified, size);
        target
    })
    .await
    .unwrap();
}

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_string())
}

fn spawn_replica(dir: &Path, store: &str) -> (Child, u16) {
    let port = free_port();
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/policy.example.yaml");
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir", "data", "--listen", &format!("127.0.0.1:{port}"), "--store", store])
        .args(["--policy", policy, "--origin", "portcullis.test/replicas"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", None, None).0 == 200
        {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the replica did not become ready");
}

const REQUEST: &str = r#"{"cluster":"prod","namespace":"shop-eu","kind":"ingresses","names":["storefront"],"access":"edit","duration":"30m","reason":"INC-4711: fix the TLS host","ticket":"INC-4711"}"#;

/// Two `portcullis serve` processes on one PostgreSQL database: a command on
/// either is seen by both, their checkpoints agree, and killing one (SIGKILL)
/// loses nothing it acknowledged.
#[test]
fn two_replicas_serve_one_ledger_and_killing_one_loses_nothing() {
    use crate::store_contract::{Backend, Postgres};
    let pg = Postgres::new();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let token = |sub: &str, groups: &str| {
        let out = Command::new(BIN)
            .args(["token", "create", "--data-dir", "data", "--sub", sub, "--groups", groups])
            .current_dir(a_dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let alice = token("alice@example.com", "web");
    let lead1 = token("lead1@example.com", "sre-leads");
    let lead2 = token("lead2@example.com", "sre-leads");
    let (mut a, a_port) = spawn_replica(a_dir.path(), &pg.url());
    // Every replica needs the log key and the same tokens.
    std::fs::create_dir_all(b_dir.path().join("data")).unwrap();
    for file in ["log.key", "log.key.pub", "tokens"] {
        std::fs::copy(a_dir.path().join("data").join(file), b_dir.path().join("data").join(file)).unwrap();
    }
    let (mut b, b_port) = spawn_replica(b_dir.path(), &pg.url());

    // A request on A, approved on B and on A: active on both.
    let (status, body) = http(a_port, "POST", "/v1/requests", Some(&alice), Some(REQUEST));
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_str().unwrap().to_string();
    let (status, body) = http(b_port, "POST", &format!("/v1/requests/{id}/approve"), Some(&lead1), Some("{}"));
    assert_eq!(status, 200, "the request made on A is seen on B at once: {body}");
    let (status, body) = http(a_port, "POST", &format!("/v1/requests/{id}/approve"), Some(&lead2), Some("{}"));
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(b_port, "GET", &format!("/v1/requests/{id}"), Some(&alice), None);
    assert_eq!(status, 200, "{body}");

    // Both replicas take requests at once.
    let mut acknowledged = Vec::new();
    std::thread::scope(|scope| {
        let workers: Vec<_> = [a_port, b_port, a_port, b_port]
            .into_iter()
            .map(|port| {
                let alice = alice.clone();
                scope.spawn(move || {
                    (0..10)
                        .map(|_| {
                            let (status, body) = http(port, "POST", "/v1/requests", Some(&alice), Some(REQUEST));
                            assert_eq!(status, 201, "{body}");
                            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                            v["id"].as_str().unwrap().to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for worker in workers {
            acknowledged.extend(worker.join().unwrap());
        }
    });

    // Checkpoints of both agree (the same tree once both have signed the same size).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, at_a) = http(a_port, "GET", "/checkpoint", None, None);
        let (_, at_b) = http(b_port, "GET", "/checkpoint", None, None);
        if at_a == at_b {
            break;
        }
        assert!(Instant::now() < deadline, "checkpoints differ:\n{at_a}\n{at_b}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Kill A; B still serves everything A acknowledged, and takes commands.
    a.kill().unwrap();
    a.wait().unwrap();
    for id in acknowledged.iter().chain([&id]) {
        let (status, body) = http(b_port, "GET", &format!("/v1/requests/{id}"), Some(&alice), None);
        assert_eq!(status, 200, "request {id}: {body}");
    }
    let (status, body) = http(b_port, "POST", "/v1/requests", Some(&alice), Some(REQUEST));
    assert_eq!(status, 201, "{body}");
    // SAFETY: our child's pid.
    unsafe { libc::kill(b.id() as i32, libc::SIGTERM) };
    assert!(b.wait().unwrap().success());

    // The whole ledger verifies.
    let store = pg.open();
    let dir = tempfile::tempdir().unwrap();
    portcullis::export::export(store.as_ref(), &dir.path().join("e"), 0, None, &|_, _| {}).unwrap();
    let vkey = std::fs::read_to_string(a_dir.path().join("data/log.key.pub")).unwrap();
    let key = portcullis_format::note::VerifierKey::parse(vkey.trim()).unwrap();
    let summary =
        crate::ledger::verify_dir(&dir.path().join("e"), portcullis_format::keys::KeySet::single(key)).unwrap();
    assert!(summary.entries_verified >= 44, "{}", summary.entries_verified);
}

/// Two replicas (two ledgers, each with its own connections, on one
/// database) under full load, 32 writers each: every append is acknowledged
/// (none gives up after losing races: the writers' turn makes them take turns),
/// and the store holds one linear chain that verifies, with every acknowledged
/// event at its seq, no seq twice and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_under_full_load_make_one_chain_with_every_acknowledged_event() {
    use crate::store_contract::{Backend, Postgres};
    use portcullis_format::event::ParsedEntry;
    const WRITERS: u64 = 32;
    const APPENDS: u64 = 60;
    let backend = Postgres::new();
    let open = || portcullis::ledger::Ledger::open(backend.open(), crate::ledger::signer(1), Default::default());
    let (first, first_thread) = open().unwrap();
    let (second, second_thread) = open().unwrap();
    let mut tasks = Vec::new();
    for (replica, ledger) in [&first, &second].into_iter().enumerate() {
        for writer in 0..WRITERS {
            let ledger = ledger.clone();
            let base = (replica as u64 * WRITERS + writer) * 1_000_000;
            tasks.push(tokio::spawn(async move {
                let mut receipts = Vec::new();
                for i in 0..APPENDS {
                    let receipt = ledger.append(crate::ledger::draft(base + i)).await;
                    receipts.push(receipt.unwrap_or_else(|e| panic!("replica {replica} writer {writer}: {e}")));
                }
                (replica, receipts)
            }));
        }
    }
    let mut receipts = Vec::new();
    let mut per_replica = [0u64; 2];
    for task in tasks {
        let (replica, done) = task.await.unwrap();
        per_replica[replica] += done.len() as u64;
        receipts.extend(done);
    }
    assert_eq!(per_replica, [WRITERS * APPENDS; 2]);
    let seqs: std::collections::HashSet<u64> = receipts.iter().map(|r| r.seq).collect();
    assert_eq!(seqs.len(), receipts.len(), "no seq acknowledged twice");
    first.checkpoint().await.unwrap();
    second.checkpoint().await.unwrap();
    let store = std::sync::Arc::clone(first.store());
    crate::ledger::close(first, first_thread).await;
    crate::ledger::close(second, second_thread).await;
    tokio::task::spawn_blocking(move || {
        let total = 1 + 2 * WRITERS * APPENDS;
        assert_eq!(store.size().unwrap(), total, "nothing but the acknowledged events (and entry 0)");
        for receipt in &receipts {
            let entry = store.entries(receipt.seq, 1).unwrap().pop().expect("acknowledged entry present");
            assert_eq!(ParsedEntry::parse(&entry).unwrap().event.draft.id, receipt.id, "entry {}", receipt.seq);
        }
        let dir = tempfile::tempdir().unwrap();
        portcullis::export::export(store.as_ref(), &dir.path().join("e"), 0, None, &|_, _| {}).unwrap();
        let keys = portcullis_format::keys::KeySet::single(crate::ledger::signer(1).verifier().clone());
        let summary = crate::ledger::verify_dir(&dir.path().join("e"), keys).unwrap();
        assert_eq!(summary.entries_verified, total, "the export of the final checkpoint is the whole chain");
    })
    .await
    .unwrap();
}

/// The frontier read in one query (`nodes_at`, which PostgreSQL answers with
/// one `ANY`) is the frontier read node by node, at every size; past the
/// tree it is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frontier_read_in_one_query_is_the_frontier_read_node_by_node() {
    use crate::store_contract::{Backend, Postgres, Sqlite};
    use portcullis::store::{NodeReader, StoreError, load_frontier};
    use portcullis_format::merkle::Frontier;
    for store in [Postgres::new().open(), Sqlite::new().open()] {
        let (ledger, thread) =
            portcullis::ledger::Ledger::open(store.clone(), crate::ledger::signer(1), Default::default()).unwrap();
        for i in 0..40 {
            ledger.append(crate::ledger::draft(i)).await.unwrap();
        }
        crate::ledger::close(ledger, thread).await;
        let size = store.size().unwrap();
        assert!(size > 40, "the ledger's own first entry, the 40 events");
        for at in 1..=size {
            let one_by_one = Frontier::load(at, &NodeReader(store.as_ref())).unwrap();
            let at_once = load_frontier(store.as_ref(), at).unwrap();
            assert_eq!(at_once.root(), one_by_one.root(), "{} at size {at}", store.describe());
            assert_eq!(at_once.size(), at);
        }
        assert!(matches!(load_frontier(store.as_ref(), size + 1), Err(StoreError::MissingNode { .. })));
    }
}
