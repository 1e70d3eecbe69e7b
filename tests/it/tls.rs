//! The outbound client speaks TLS: the CLI against an `https://` server whose
//! certificate the system trusts (here: `SSL_CERT_FILE` naming the test
//! certificate), and a clear failure when it does not.

use http_body_util::Full;
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/testdata").join(name)
}

/// An HTTPS server on 127.0.0.1 answering every request with a whoami body; its port.
async fn https_server() -> u16 {
    let certs = vec![CertificateDer::from_pem_file(testdata("tls-test.crt")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(testdata("tls-test.key")).unwrap();
    let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(|_request| async {
                    let body = r#"{"sub":"alice@example.com","groups":["web"],"via":"token","admin":false}"#;
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_client_speaks_https_and_refuses_an_untrusted_certificate() {
    let port = https_server().await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_path_buf();
    let trusted = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::cli::BIN)
            .args(["whoami", "--json"])
            .env("PORTCULLIS_SERVER", format!("https://localhost:{port}"))
            .env("PORTCULLIS_TOKEN", "pcs_test")
            .env("HOME", &home)
            .env("SSL_CERT_FILE", testdata("tls-test.crt"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    assert!(String::from_utf8_lossy(&trusted.stdout).contains("alice@example.com"));
    let dir2 = tempfile::tempdir().unwrap();
    let untrusted = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::cli::BIN)
            .args(["whoami"])
            .env("PORTCULLIS_SERVER", format!("https://localhost:{port}"))
            .env("PORTCULLIS_TOKEN", "pcs_test")
            .env("HOME", dir2.path())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(untrusted.status.code(), Some(7), "the system does not trust the test certificate");
    let stderr = String::from_utf8_lossy(&untrusted.stderr).to_lowercase();
    assert!(stderr.contains("certificate") || stderr.contains("issuer"), "{stderr}");
}
