//! The HTTP API through the router, without a socket.

use crate::ledger::{close, draft, open, signer};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::BodyExt;
use portcullis::api::{AppState, app};
use portcullis_format::checkpoint::SignedCheckpoint;
use portcullis_format::keys::KeySet;
use portcullis_format::merkle::{self, Hash};
use portcullis_format::proof_file::ProofFile;
use std::sync::Arc;
use tower::ServiceExt;

async fn call(router: &axum::Router, path: &str) -> (StatusCode, String, Vec<u8>) {
    let response = router.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, content_type, body)
}

fn hashes(json: &serde_json::Value) -> Vec<Hash> {
    json["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| B64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_endpoints_serve_verifiable_proofs_tiles_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    for i in 0..299 {
        ledger.append(draft(i)).await.unwrap();
    }
    let (size, note) = ledger.checkpoint().await.unwrap();
    assert_eq!(size, 300);
    let root = SignedCheckpoint::parse(note.as_bytes()).unwrap().checkpoint.root;
    let router = app(Arc::new(AppState::ledger_only(ledger.clone())));

    let (status, content_type, body) = call(&router, "/checkpoint").await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, "text/plain; charset=utf-8"));
    assert_eq!(body, note.as_bytes());

    // Pages follow the cursor to the end without gaps.
    let mut cursor = None::<String>;
    let mut seen = 0u64;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/ledger/entries?limit=128&cursor={c}"),
            None => "/v1/ledger/entries?limit=128".to_string(),
        };
        let (status, _, body) = call(&router, &path).await;
        assert_eq!(status, StatusCode::OK);
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for item in page["entries"].as_array().unwrap() {
            assert_eq!(item["seq"], seen);
            seen += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, 300);

    let (_, _, entry_17) = call(&router, "/v1/ledger/entries/17").await;
    let (status, _, body) = call(&router, "/v1/ledger/proofs/inclusion?index=17&size=300").await;
    assert_eq!(status, StatusCode::OK);
    let proof: serde_json::Value = serde_json::from_slice(&body).unwrap();
    merkle::verify_inclusion(17, 300, &merkle::leaf_hash(&entry_17), &hashes(&proof), &root).unwrap();

    let old_root = merkle::range_hash(&portcullis::store::NodeReader(ledger.store().as_ref()), 0, 100).unwrap();
    let (status, _, body) = call(&router, "/v1/ledger/proofs/consistency?old=100&new=300").await;
    assert_eq!(status, StatusCode::OK);
    let proof: serde_json::Value = serde_json::from_slice(&body).unwrap();
    merkle::verify_consistency(100, 300, &old_root, &root, &hashes(&proof)).unwrap();

    let (status, _, body) = call(&router, "/v1/ledger/evidence/250").await;
    assert_eq!(status, StatusCode::OK);
    let verified = ProofFile::parse(&body).unwrap().verify(&KeySet::single(signer(1).verifier().clone())).unwrap();
    assert_eq!(verified.entry.event.seq, 250);

    // Tiles equal what an export writes.
    let export = dir.path().join("export");
    portcullis::export::export(ledger.store().as_ref(), &export, 0, None, &|_, _| {}).unwrap();
    for path in ["tile/0/000", "tile/0/001.p/44", "tile/1/000.p/1", "tile/entries/000", "tile/entries/001.p/44"] {
        let (status, content_type, body) = call(&router, &format!("/{path}")).await;
        assert_eq!((status, content_type.as_str()), (StatusCode::OK, "application/octet-stream"), "{path}");
        assert_eq!(body, std::fs::read(export.join(path)).unwrap(), "{path}");
    }
    close(ledger, thread).await;
}

#[tokio::test]
async fn bad_parameters_get_problem_json_naming_the_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let router = app(Arc::new(AppState::ledger_only(ledger.clone())));
    let cases = [
        ("/v1/ledger/entries?limit=0", StatusCode::BAD_REQUEST, "limit"),
        ("/v1/ledger/entries?limit=abc", StatusCode::BAD_REQUEST, "limit"),
        ("/v1/ledger/entries?cursor=-1", StatusCode::BAD_REQUEST, "cursor"),
        ("/v1/ledger/entries?limit=5&limit=6", StatusCode::BAD_REQUEST, "limit"),
        ("/v1/ledger/entries?colour=blue", StatusCode::BAD_REQUEST, "colour"),
        ("/v1/ledger/entries/99999999999999999999", StatusCode::BAD_REQUEST, "seq"),
        ("/v1/ledger/entries/5", StatusCode::NOT_FOUND, "entry 5"),
        ("/v1/ledger/proofs/inclusion?index=0", StatusCode::BAD_REQUEST, "size"),
        ("/v1/ledger/proofs/inclusion?index=1&size=1", StatusCode::BAD_REQUEST, "index"),
        ("/v1/ledger/proofs/inclusion?index=0&size=2", StatusCode::BAD_REQUEST, "size"),
        ("/v1/ledger/proofs/consistency?old=0&new=1", StatusCode::BAD_REQUEST, "old"),
        ("/v1/ledger/evidence/1", StatusCode::NOT_FOUND, "entry 1"),
        ("/tile/0/000", StatusCode::NOT_FOUND, "tile/0/000"),
        ("/tile/0/x000/000", StatusCode::NOT_FOUND, "not a tile path"),
        ("/tile/entries/000.p/2", StatusCode::NOT_FOUND, "does not exist"),
    ];
    for (path, expected, mentions) in cases {
        let (status, content_type, body) = call(&router, path).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, expected, "{path}: {text}");
        assert_eq!(content_type, "application/problem+json", "{path}");
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(problem["type"].as_str().unwrap().starts_with("urn:portcullis:problem:"), "{path}");
        assert_eq!(problem["status"], expected.as_u16());
        assert!(problem["detail"].as_str().unwrap().contains(mentions), "{path}: {text}");
    }
    assert_eq!(ledger.head().size, 1, "reads changed nothing");
    close(ledger, thread).await;
}

/// Regression: tile levels 8 to 63 parse, and the handler shifted the tree size
/// by 64 or more bits: a panic in debug builds; in release a masked shift that
/// served level-0 hashes as a level-32 tile, marked immutable.
#[tokio::test]
async fn a_tile_above_level_7_is_not_found_instead_of_a_shift_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let router = app(Arc::new(AppState::ledger_only(ledger.clone())));
    for path in ["/tile/8/000.p/1", "/tile/32/000.p/1", "/tile/63/000", "/tile/0/x018/x446/x744/x073/x709/x551/615"] {
        let (status, content_type, body) = call(&router, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {}", String::from_utf8_lossy(&body));
        assert_eq!(content_type, "application/problem+json", "{path}");
    }
    let (status, _, _) = call(&router, "/tile/0/000.p/1").await;
    assert_eq!(status, StatusCode::OK, "the one real tile is still served");
    close(ledger, thread).await;
}

#[tokio::test]
async fn the_committed_openapi_document_is_the_served_one_and_names_only_real_routes() {
    let generated = serde_json::to_string_pretty(&portcullis::api::openapi::document()).unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/openapi.json");
    if std::env::var_os("PORTCULLIS_REGENERATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "schemas/openapi.json drifted from the code; regenerate with PORTCULLIS_REGENERATE_OPENAPI=1"
    );

    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let router = app(Arc::new(AppState::ledger_only(ledger.clone())));
    let (status, _, served) = call(&router, "/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&served).unwrap(), portcullis::api::openapi::document());
    for operation in portcullis::api::openapi::OPERATIONS {
        let path = operation
            .path
            .replace("{path}", "0/000")
            .replace("{seq}", "0")
            .replace("{hash}", "00")
            .replace("{id}", &"0".repeat(32));
        let request =
            Request::builder().method(operation.method.to_uppercase().as_str()).uri(&path).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(status != StatusCode::METHOD_NOT_ALLOWED, "{} {path}: {status}", operation.method);
        assert!(
            !String::from_utf8_lossy(&body).contains("no-route"),
            "{} {path} is documented but not routed",
            operation.method
        );
    }
    let (status, _, body) = call(&router, "/v1/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("urn:portcullis:problem:no-route"));
    close(ledger, thread).await;
}
