//! Cross-checks the format specification with an independent implementation,
//! `tools/python/portcullis_verify.py`: a verifier written from
//! `schemas/FORMAT.md` alone, Python standard library only (Ed25519 is
//! implemented in it, so nothing is installed with pip).
//!
//! - `tools/python/test_vectors.py` drives it over the checked-in vectors of
//!   `schemas/testdata/` and the worked examples of FORMAT.md, and fails on any
//!   verdict that differs from `schemas/testdata/verdicts.json`.
//! - Its `report` mode verifies a bundle made by the real generator from a
//!   small ledger with a key rotation inside the period, and names the check
//!   that fails on a tampered entry, manifest, listed file and checkpoint, an
//!   extra file, a wrong pinned key, and a missing or forked anchor.

use crate::report::{Builder, pause, person};
use portcullis::ledger::{Ledger, LedgerConfig};
use portcullis::report::{ReportArgs, generate};
use portcullis::store::sqlite::SqliteStore;
use portcullis::store::{NodeReader, Store};
use portcullis_format::checkpoint::Checkpoint;
use portcullis_format::merkle::range_hash;
use portcullis_format::note::SignerKey;
use portcullis_format::time::Timestamp;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

fn python(args: &[&std::ffi::OsStr]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    match Command::new("python3").args(args).current_dir(root).env("PYTHONDONTWRITEBYTECODE", "1").output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "python3 was not found on PATH: it is needed to run the independent Python verifier \
             (tools/python/); install Python 3.11 or later"
        ),
        Err(e) => panic!("could not start python3: {e}"),
    }
}

fn tools_python(file: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools").join("python").join(file);
    assert!(script.is_file(), "missing {}", script.display());
    script
}

#[test]
fn independent_python_verifier_agrees_on_the_vectors() {
    let script = tools_python("test_vectors.py");
    let output = python(&[script.as_os_str()]);
    assert!(
        output.status.success(),
        "the independent Python verifier disagrees with the vectors ({}): python3 {}\n\
         --- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        script.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

const ORIGIN: &str = "portcullis.test/python-report";

fn key(seed: u8) -> SignerKey {
    SignerKey::from_seed(ORIGIN, &[seed; 32]).unwrap()
}

/// Runs `portcullis_verify.py report DIR --key VKEY --json [EXTRA...]`;
/// returns its exit code and JSON verdict.
fn verify_with_python(dir: &Path, vkey: &str, extra: &[&std::ffi::OsStr]) -> (i32, serde_json::Value) {
    let script = tools_python("portcullis_verify.py");
    let mut args = vec![script.as_os_str(), "report".as_ref(), dir.as_os_str(), "--key".as_ref(), vkey.as_ref()];
    args.push("--json".as_ref());
    args.extend_from_slice(extra);
    let output = python(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let verdict = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "the Python verifier printed no JSON verdict ({e}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), verdict)
}

/// Replaces the first `old` in `file` by `new` (same length or not).
fn replace_in(dir: &Path, file: &str, old: &[u8], new: &[u8]) {
    let path = dir.join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(old.len()).position(|w| w == old).unwrap_or_else(|| panic!("{file} has no {old:?}"));
    bytes.splice(at..at + old.len(), new.iter().copied());
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_python_verifier_checks_a_generated_report_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("ledger.db")).unwrap());
    let (ledger, thread) = Ledger::open(Arc::clone(&store), key(1), LedgerConfig::default()).unwrap();
    let events = Builder { ledger: ledger.clone() };
    let request = |requester: &'static str| events.request(requester, "storefront", 1, false);
    let approve_and_grant = |request: String, requester: &'static str, approver: &'static str| {
        let events = &events;
        async move {
            events.approve(approver, &request).await;
            events.grant(&request, requester, &[approver], false).await;
        }
    };

    // Before the period, inside it (with a key rotation and a self-approval), after it.
    request("erin").await;
    pause().await;
    let from = Timestamp::now();
    pause().await;
    let r1 = request("alice").await;
    approve_and_grant(r1, "alice", "lead1").await;
    ledger.rotate_key(key(2), person("admin1")).await.unwrap();
    let r2 = request("bob").await;
    approve_and_grant(r2, "bob", "bob").await;
    pause().await;
    let to = Timestamp::now();
    pause().await;
    request("gina").await;
    request("hank").await;
    ledger.checkpoint().await.unwrap();

    let bundle = dir.path().join("bundle");
    let args = ReportArgs { from, to, revoke_sla_ms: 1000, anchor: None };
    let generated = generate(store.as_ref(), &key(2), &args, &bundle).unwrap();
    assert!(generated.period_closed);
    assert!(generated.first_seq > 0, "the bundle starts after entry 0, so the proof has left hashes");

    // A later checkpoint, by the new key, to swap in.
    request("ivan").await;
    ledger.checkpoint().await.unwrap();
    let later = store.latest_checkpoint().unwrap().unwrap().1;

    // The bundle verifies with only the first key pinned: the rotation is followed.
    let pinned = key(1).verifier().to_string();
    let (status, verdict) = verify_with_python(&bundle, &pinned, &[]);
    assert_eq!(status, 0, "the Python verifier refused a generated bundle: {verdict}");
    assert_eq!(verdict["ok"], true);
    assert_eq!(verdict["size"], generated.checkpoint_size);
    assert_eq!(verdict["entries_verified"], generated.end_seq - generated.first_seq);

    // Each tampering fails with the check that catches it, and exit status 1.
    let tampered = |name: &str, change: &dyn Fn(&Path)| -> serde_json::Value {
        let copy = dir.path().join(name);
        crate::report::copy(&bundle, &copy);
        change(&copy);
        let (status, verdict) = verify_with_python(&copy, &pinned, &[]);
        assert_eq!((status, &verdict["ok"]), (1, &serde_json::json!(false)), "{name}: {verdict}");
        verdict
    };
    let check = |v: &serde_json::Value| (v["check"].as_str().unwrap().to_string(), v["file"].clone());
    let file = |f: &str| serde_json::json!(f);

    let entry = tampered("edited-entry", &|d| replace_in(d, "entries", b"\"sub\":\"alice\"", b"\"sub\":\"Alice\""));
    assert_eq!(check(&entry), ("signature".into(), file("entries")), "{entry}");
    assert!(entry["seq"].as_u64().unwrap() > generated.first_seq, "{entry}");
    let manifest =
        tampered("edited-manifest", &|d| replace_in(d, "manifest", b"revoke_sla_ms 1000", b"revoke_sla_ms 9000"));
    assert_eq!(check(&manifest), ("manifest-signature".into(), file("manifest")), "{manifest}");
    let listed = tampered("edited-html", &|d| replace_in(d, "report.html", b"<", b"<!-- x --><"));
    assert_eq!(check(&listed), ("file-hash".into(), file("report.html")), "{listed}");
    let csv = tampered("edited-csv", &|d| replace_in(d, "populations/approvals.csv", b"lead1", b"lead9"));
    assert_eq!(check(&csv), ("file-hash".into(), file("populations/approvals.csv")), "{csv}");
    let swapped = tampered("swapped-checkpoint", &|d| std::fs::write(d.join("checkpoint"), &later).unwrap());
    assert_eq!(check(&swapped), ("proof".into(), file("proof")), "{swapped}");
    let resigned = tampered("edited-checkpoint", &|d| {
        let text = std::fs::read_to_string(d.join("checkpoint")).unwrap();
        let root = text.lines().nth(2).unwrap().to_string();
        let other = if root.starts_with('A') { root.replacen('A', "B", 1) } else { format!("A{}", &root[1..]) };
        std::fs::write(d.join("checkpoint"), text.replacen(&root, &other, 1)).unwrap();
    });
    assert_eq!(check(&resigned), ("checkpoint-signature".into(), file("checkpoint")), "{resigned}");
    let extra = tampered("extra-file", &|d| std::fs::write(d.join("populations/extra.csv"), "a\r\n").unwrap());
    assert_eq!(check(&extra), ("layout".into(), file("populations/extra.csv")), "{extra}");

    // A key pinned for nothing here: no entry is signed by it.
    let (status, verdict) = verify_with_python(&bundle, &key(9).verifier().to_string(), &[]);
    assert_eq!((status, verdict["check"].as_str()), (1, Some("key-not-in-force")), "{verdict}");

    // An anchor pinned before the period: the bundle generated with it carries the
    // consistency proof, the plain one does not, and a forked anchor is caught.
    let anchor_size = generated.first_seq;
    let sign_anchor = |root| Checkpoint { origin: ORIGIN.into(), size: anchor_size, root }.sign(&key(1));
    let anchor = sign_anchor(range_hash(&NodeReader(store.as_ref()), 0, anchor_size).unwrap());
    let anchored = dir.path().join("anchored");
    generate(store.as_ref(), &key(2), &ReportArgs { anchor: Some(anchor.clone()), ..args.clone() }, &anchored).unwrap();
    let with_anchor = |bundle: &Path, note: &str, name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, note).unwrap();
        verify_with_python(bundle, &pinned, &["--anchor".as_ref(), path.as_os_str()])
    };
    let (status, verdict) = with_anchor(&anchored, &anchor, "anchor");
    assert_eq!(status, 0, "{verdict}");
    let (_, verdict) = with_anchor(&bundle, &anchor, "anchor");
    assert_eq!(verdict["check"], "anchor", "{verdict}");
    let (_, verdict) = with_anchor(&anchored, &sign_anchor([7u8; 32]), "forked");
    assert_eq!(verdict["check"], "fork", "{verdict}");

    ledger.close().await;
    drop(ledger);
    tokio::task::spawn_blocking(move || thread.join()).await.unwrap();
}
