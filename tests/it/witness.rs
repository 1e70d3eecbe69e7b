//! Witnesses end to end: the service pushes its checkpoints to an
//! independent witness over HTTP, the cosignatures travel with the stored
//! checkpoint into exports, and a truncated, re-signed ledger is refused by
//! the witness and caught by the verifier's quorum policy.

use crate::ledger::{close, draft, open, signer};
use portcullis::witness::{Witness, WitnessTarget, router, run_pusher};
use portcullis_format::checkpoint::{Checkpoint, SignedCheckpoint};
use portcullis_format::note::SignerKey;
use portcullis_format::witness::{AddCheckpoint, Policy};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn witness_key() -> SignerKey {
    SignerKey::from_seed("witness.portcullis.test/w1", &[0x77; 32]).unwrap()
}

/// Serves a witness on 127.0.0.1 and a free port; its URL and handle.
async fn start_witness(state: &std::path::Path) -> (String, Arc<Witness>, tokio::task::JoinHandle<()>) {
    let witness =
        Arc::new(Witness::open(witness_key(), vec![signer(1).verifier().clone()], state.to_path_buf()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(Arc::clone(&witness));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, witness, task)
}

fn policy(witness: &Witness) -> Policy {
    let text = format!("log {}\nwitness w1 {}\nquorum w1\n", signer(1).verifier(), witness.cosigner_key());
    Policy::parse(&text).unwrap()
}

async fn cosigned_checkpoint(ledger: &portcullis::ledger::Ledger, size: u64) -> String {
    let start = Instant::now();
    loop {
        let (stored, note) = ledger.store().latest_checkpoint().unwrap().unwrap();
        if stored == size && note.matches('\u{2014}').count() >= 2 {
            return note;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no cosignature for size {size}: {note}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_cosigned_and_a_truncated_resigned_ledger_is_refused_and_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (url, witness, server) = start_witness(&dir.path().join("witness.json")).await;
    let policy = policy(&witness);

    // The service: a ledger whose checkpoints go to the witness.
    std::fs::create_dir_all(dir.path().join("log")).unwrap();
    let (ledger, thread) = open(&dir.path().join("log"), signer(1)).unwrap();
    let target = WitnessTarget { url: url.clone(), vkey: witness.cosigner_key().to_string() };
    target.validate().unwrap();
    let pusher = tokio::spawn(run_pusher(ledger.clone(), vec![target], Duration::from_millis(50)));
    for n in 0..20 {
        ledger.append(draft(n)).await.unwrap();
    }
    let (first, _) = ledger.checkpoint().await.unwrap();
    let note = cosigned_checkpoint(&ledger, first).await;
    policy.check(&note).unwrap();
    // Growth is proven consistent from the size the witness last cosigned.
    for n in 20..45 {
        ledger.append(draft(n)).await.unwrap();
    }
    let (size, _) = ledger.checkpoint().await.unwrap();
    let note = cosigned_checkpoint(&ledger, size).await;
    policy.check(&note).unwrap();
    SignedCheckpoint::parse(note.as_bytes()).unwrap().verify(signer(1).verifier()).unwrap();

    // An export carries the cosigned checkpoint, and the verifier enforces the quorum.
    let export = dir.path().join("export");
    let store = Arc::clone(ledger.store());
    portcullis::export::export(store.as_ref(), &export, 0, None, &|_, _| {}).unwrap();
    let policy_file = dir.path().join("witnesses.policy");
    std::fs::write(
        &policy_file,
        format!("log {}\nwitness w1 {}\nquorum w1\n", signer(1).verifier(), witness.cosigner_key()),
    )
    .unwrap();
    let run = |dir: &std::path::Path| {
        let args: Vec<String> = vec![
            dir.display().to_string(),
            "--key".into(),
            signer(1).verifier().to_string(),
            "--witness-policy".into(),
            policy_file.display().to_string(),
            "--json".into(),
        ];
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = portcullis_verify::run(&args, &mut out, &mut err);
        (status, String::from_utf8_lossy(&out).to_string())
    };
    let (status, out) = run(&export);
    assert_eq!(status, 0, "{out}");
    pusher.abort();
    close(ledger, thread).await;

    // The log rewrites history: the same key, a shorter ledger, re-signed.
    std::fs::create_dir_all(dir.path().join("truncated")).unwrap();
    let (forged, forged_thread) = open(&dir.path().join("truncated"), signer(1)).unwrap();
    for n in 0..10 {
        forged.append(draft(1000 + n)).await.unwrap();
    }
    let (short, forged_note) = forged.checkpoint().await.unwrap();
    assert!(short < size);
    // The witness refuses: its size is larger (409 tells it), and no proof leads back from it.
    let ask = |old: u64| AddCheckpoint { old, proof: Vec::new(), checkpoint: forged_note.clone() }.encode();
    let (status, _, answer) = witness.add_checkpoint(ask(0).as_bytes()).await;
    assert_eq!((status.as_u16(), answer.as_str()), (409, format!("{size}\n").as_str()));
    let (status, _, _) = witness.add_checkpoint(ask(size).as_bytes()).await;
    assert_eq!(status.as_u16(), 400, "a smaller tree is never cosigned");
    // A fork at the same size is refused too.
    let fork = Checkpoint { origin: signer(1).name().into(), size, root: [7; 32] }.sign(&signer(1));
    let body = AddCheckpoint { old: size, proof: Vec::new(), checkpoint: fork }.encode();
    assert_eq!(witness.add_checkpoint(body.as_bytes()).await.0.as_u16(), 409);
    // And the verifier, trusting the log key alone, would accept the forged export; the quorum catches it.
    let forged_export = dir.path().join("forged-export");
    portcullis::export::export(forged.store().as_ref(), &forged_export, 0, None, &|_, _| {}).unwrap();
    let (status, out) = run(&forged_export);
    assert_eq!(status, 1, "{out}");
    assert!(out.contains("witness-quorum"), "{out}");
    close(forged, forged_thread).await;

    // The witness remembers across a restart.
    server.abort();
    let reopened =
        Witness::open(witness_key(), vec![signer(1).verifier().clone()], dir.path().join("witness.json")).unwrap();
    assert_eq!(reopened.add_checkpoint(ask(0).as_bytes()).await.2, format!("{size}\n"));
}

#[tokio::test]
async fn a_witness_refuses_unknown_logs_bad_signatures_and_bad_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let witness =
        Witness::open(witness_key(), vec![signer(1).verifier().clone()], dir.path().join("state.json")).unwrap();
    let checkpoint = |key: &SignerKey, size: u64, root: u8| {
        Checkpoint { origin: key.name().into(), size, root: [root; 32] }.sign(key)
    };
    let body = |old, proof: Vec<[u8; 32]>, note: String| AddCheckpoint { old, proof, checkpoint: note }.encode();
    let other_log = SignerKey::from_seed("other.test/log", &[3; 32]).unwrap();
    assert_eq!(witness.add_checkpoint(body(0, vec![], checkpoint(&other_log, 5, 1)).as_bytes()).await.0.as_u16(), 404);
    let impostor = SignerKey::from_seed(signer(1).name(), &[9; 32]).unwrap();
    assert_eq!(witness.add_checkpoint(body(0, vec![], checkpoint(&impostor, 5, 1)).as_bytes()).await.0.as_u16(), 403);
    assert_eq!(witness.add_checkpoint(b"garbage").await.0.as_u16(), 400);
    assert_eq!(witness.add_checkpoint(body(6, vec![], checkpoint(&signer(1), 5, 1)).as_bytes()).await.0.as_u16(), 400);
    let (status, _, line) = witness.add_checkpoint(body(0, vec![], checkpoint(&signer(1), 5, 1)).as_bytes()).await;
    assert_eq!(status.as_u16(), 200);
    assert!(line.starts_with("\u{2014} witness.portcullis.test/w1 "), "{line}");
    // From 5 to 8 with a proof that does not hold: 422, and the state stays at 5.
    let bad = body(5, vec![[0; 32], [1; 32]], checkpoint(&signer(1), 8, 2));
    assert_eq!(witness.add_checkpoint(bad.as_bytes()).await.0.as_u16(), 422);
    let again = witness.add_checkpoint(body(0, vec![], checkpoint(&signer(1), 8, 2)).as_bytes()).await;
    assert_eq!((again.0.as_u16(), again.2.as_str()), (409, "5\n"));
    assert_eq!(again.1, portcullis::witness::SIZE_CONTENT_TYPE);
}

#[test]
fn the_witness_command_serves_add_checkpoint_and_refuses_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("witness.key");
    let out = std::process::Command::new(crate::cli::BIN)
        .args(["keygen", "--name", "witness.portcullis.test/w9", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = std::process::Command::new(crate::cli::BIN)
        .args(["witness", "--key", key.to_str().unwrap(), "--log-key", "not-a-key", "--state", "s.json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--log-key not-a-key"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let port = crate::cli::free_port();
    let mut child = std::process::Command::new(crate::cli::BIN)
        .args(["witness", "--listen", &format!("127.0.0.1:{port}"), "--key", key.to_str().unwrap()])
        .args(["--log-key", &signer(1).verifier().to_string(), "--state", "state.json"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while crate::cli::get(port, "/healthz").is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "the witness did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let note = Checkpoint { origin: signer(1).name().into(), size: 3, root: [3; 32] }.sign(&signer(1));
    let body = AddCheckpoint { old: 0, proof: Vec::new(), checkpoint: note }.encode();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read as _, Write as _};
    write!(
        stream,
        "POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\u{2014} witness.portcullis.test/w9 "), "{answer}");
    // SAFETY: signalling a child process this test owns.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(state.contains("\"size\": 3"), "{state}");
}
