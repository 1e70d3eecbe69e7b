//! The one outbound HTTP client of the service and the CLI: HTTP/1.1 over
//! plain TCP for `http://` URLs and over TLS (rustls, the system's CA
//! certificates) for `https://` ones. Used by the CLI client, webhooks, the
//! witness pusher and the OIDC key fetcher.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The client type.
pub type Client = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client trusting the system's CA certificates. Without any (a bare
/// container), `https://` URLs fail at the handshake with a clear error
/// while `http://` ones still work.
pub fn client() -> Client {
    let builder = match HttpsConnectorBuilder::new().with_native_roots() {
        Ok(builder) => builder,
        Err(e) => {
            tracing::warn!("no system CA certificates ({e}); https:// URLs will fail to verify");
            let empty = rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            HttpsConnectorBuilder::new().with_tls_config(empty)
        }
    };
    HyperClient::builder(TokioExecutor::new()).build(builder.https_or_http().enable_http1().build())
}

/// Whether `url` is an absolute `http://` or `https://` URL with a host.
pub fn valid_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url.parse::<hyper::Uri>().is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()))
}

/// An error with its causes, `outer: inner: innermost` (hyper's own text
/// hides why a connection failed, e.g. an untrusted certificate).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
