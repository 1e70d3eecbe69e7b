//! The `portcullis` binary end to end: serve on the embedded default, read
//! the ledger over HTTP, stop with SIGTERM, export, verify; and the key files.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn portcullis(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN).args(args).current_dir(cwd).output().unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A minimal HTTP/1.1 GET over loopback; returns (status, body).
pub fn get(port: u16, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or(std::io::ErrorKind::InvalidData)?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(std::io::ErrorKind::InvalidData)?;
    Ok((status, response[split + 4..].to_vec()))
}

pub fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if matches!(get(port, "/readyz"), Ok((200, _))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the service did not become ready");
}

/// Starts `portcullis serve` on `data` in `dir` and a free port, and waits until it is ready.
fn spawn_serve(dir: &Path, extra: &[&str]) -> (std::process::Child, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(BIN)
        .args(["serve", "--data-dir", "data", "--listen", &listen])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(port);
    (child, port)
}

#[test]
fn serve_on_a_fresh_directory_then_sigterm_export_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = spawn_serve(dir.path(), &["--origin", "portcullis.test/cli"]);

    let (status, checkpoint) = get(port, "/checkpoint").unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&checkpoint).starts_with("portcullis.test/cli\n1\n"));
    let (status, bundle) = get(port, "/tile/entries/000.p/1").unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&bundle).contains("ledger.created"));
    let (status, problem) = get(port, "/v1/ledger/entries/99").unwrap();
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&problem).contains("urn:portcullis:problem:not-found"));
    let (status, evidence) = get(port, "/v1/ledger/evidence/0").unwrap();
    assert_eq!(status, 200);
    std::fs::write(dir.path().join("entry0.tlog-proof"), &evidence).unwrap();

    // SIGTERM: a clean stop with a final checkpoint.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    assert!(status.success(), "exit {status:?}");
    assert!(stdout.contains("verifier key: portcullis.test/cli+"), "{stdout}");
    assert!(stdout.contains("not configured"), "{stdout}");
    assert!(stdout.contains("stopped cleanly"), "{stdout}");

    let mode = std::fs::metadata(dir.path().join("data/log.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let vkey = std::fs::read_to_string(dir.path().join("data/log.key.pub")).unwrap();

    let out = portcullis(&["export", "exported", "--data-dir", "data"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = portcullis(&["verify", "exported", "--key", vkey.trim(), "--json"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["entries_verified"], 1);
    let out = portcullis(&["verify", "proof", "entry0.tlog-proof", "--key", "data/log.key.pub"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // Exporting into a non-empty directory is refused and changes nothing.
    let out = portcullis(&["export", "exported", "--data-dir", "data"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

#[test]
fn keygen_writes_a_private_key_only_the_owner_can_read_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(&["keygen", "--name", "portcullis.test/keys", "--out", "k/log.key"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vkey = String::from_utf8(out.stdout).unwrap();
    assert!(portcullis_format::note::VerifierKey::parse(vkey.trim()).is_ok(), "{vkey}");
    let key = dir.path().join("k/log.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(dir.path().join("k/log.key.pub")).unwrap(), vkey);

    let before = std::fs::read(&key).unwrap();
    let out = portcullis(&["keygen", "--name", "portcullis.test/keys", "--out", "k/log.key"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&key).unwrap(), before);

    let out = portcullis(&["keygen", "--name", "has space", "--out", "k/other.key"], dir.path());
    assert!(!out.status.success());
    assert!(!dir.path().join("k/other.key").exists());
}

#[test]
fn a_private_key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    portcullis::keyfile::generate(&data.join("log.key"), "portcullis.test/perm").unwrap();
    std::fs::set_permissions(data.join("log.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = portcullis(&["serve", "--data-dir", "data", "--listen", "127.0.0.1:0"], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("readable by group or others"), "{stderr}");
    assert!(!data.join("ledger.db").exists(), "nothing was created");
}

#[test]
fn bad_flags_and_config_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(&["serve", "--listen", "not-an-address"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));

    std::fs::write(dir.path().join("bad.toml"), "data_dir = \"x\"\nlisten_addr = \"127.0.0.1:1\"\n").unwrap();
    let out = portcullis(&["serve", "--config", "bad.toml"], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml") && stderr.contains("listen_addr"), "{stderr}");

    std::fs::write(dir.path().join("interval.toml"), "checkpoint_interval_secs = 0\n").unwrap();
    let out = portcullis(&["serve", "--config", "interval.toml"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checkpoint_interval_secs"));
    assert!(!dir.path().join("x").exists() && !dir.path().join("portcullis-data").exists(), "nothing was created");

    let out = portcullis(&["verify", "nowhere", "--key", "not-a-key"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let out = portcullis(&["export", "out", "--data-dir", "missing"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no ledger"));
}

#[test]
fn the_cli_client_runs_the_workflow_with_exit_codes_scripts_can_rely_on() {
    let dir = tempfile::tempdir().unwrap();
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/policy.example.yaml");
    let token = |sub: &str, groups: &str| {
        let out = portcullis(&["token", "create", "--data-dir", "data", "--sub", sub, "--groups", groups], dir.path());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let alice = token("alice@example.com", "web");
    let lead1 = token("lead1@example.com", "sre-leads");
    let lead2 = token("lead2@example.com", "sre-leads");
    let (mut child, port) = spawn_serve(dir.path(), &["--policy", policy]);
    let server = format!("http://127.0.0.1:{port}");
    let client = |token: &str, args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("PORTCULLIS_SERVER", &server)
            .env("PORTCULLIS_TOKEN", token)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = client(
        &alice,
        &[
            "request",
            "--cluster",
            "prod",
            "--namespace",
            "shop-eu",
            "--kind",
            "ingresses",
            "--name",
            "storefront",
            "--duration",
            "30m",
            "--reason",
            "INC-4711: fix the TLS host",
            "--ticket",
            "INC-4711",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let request: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = request["id"].as_str().unwrap().to_string();

    assert_eq!(client(&alice, &["approve", &id]).status.code(), Some(3), "no self-approval");
    assert_eq!(client(&lead1, &["approve", &"0".repeat(32)]).status.code(), Some(4));
    assert!(client(&lead1, &["approve", &id, "--comment", "ok"]).status.success());
    let out = client(&lead2, &["approve", &id]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("active"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = client(&alice, &["grants", "--active", "--json"]);
    let grants: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let grant = grants["items"][0]["id"].as_str().unwrap().to_string();
    assert!(String::from_utf8_lossy(&client(&alice, &["whoami"]).stdout).contains("alice@example.com"));
    assert!(client(&alice, &["end", &grant]).status.success());
    assert_eq!(client(&alice, &["end", &grant]).status.code(), Some(5), "already ended");
    let bad = client(
        &alice,
        &["request", "--cluster", "prod", "--namespace", "Bad_NS", "--kind", "ingresses", "--duration", "30m"],
    );
    assert_eq!(bad.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("namespace"));
    assert_eq!(client("pcs_wrong", &["whoami"]).status.code(), Some(3));

    // `watch` replays the ledger and follows it.
    let mut watch = Command::new(BIN)
        .args(["watch", "--json"])
        .env("PORTCULLIS_SERVER", &server)
        .env("PORTCULLIS_TOKEN", &lead1)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().unwrap()));
    let kinds: Vec<String> = lines
        .map_while(Result::ok)
        .map(|line| serde_json::from_str::<serde_json::Value>(&line).unwrap()["kind"].as_str().unwrap().to_string())
        .take_while(|kind| kind != "grant.ended")
        .collect();
    watch.kill().unwrap();
    watch.wait().unwrap();
    assert_eq!(kinds[..3], ["ledger.created", "policy.loaded", "request.created"], "{kinds:?}");

    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(client(&alice, &["whoami"]).status.code(), Some(7), "server down");
}
