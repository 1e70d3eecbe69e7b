//! The CLI client of the workflow API: `portcullis request`, `approve`, ...
//!
//! The server and token come from `--server`/`--token`, then the
//! `PORTCULLIS_SERVER`/`PORTCULLIS_TOKEN` environment variables, then the
//! client config file (`$XDG_CONFIG_HOME/portcullis/client.toml` or
//! `~/.config/portcullis/client.toml`: `server = "..."`, `token = "..."`).
//! Plain HTTP only in this build: reach a remote server through a TLS
//! terminating proxy on loopback, or an SSH tunnel.
//!
//! Exit codes scripts can rely on: 0 success, 2 bad usage, 3 not authenticated
//! or not allowed (401, 403), 4 not found (404), 5 conflict (409: the request or
//! grant changed state), 6 refused input (400, 422), 7 the server or the
//! network failed (5xx, unreachable).

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// Where to reach the server and as whom.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: crate::http::Client,
}

/// A failed call, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("the server answered {status}: {detail}")]
    Refused { status: StatusCode, detail: String },
    #[error("cannot reach {server}: {reason}")]
    Network { server: String, reason: String },
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => 2,
            ClientError::Refused { status, .. } => match status.as_u16() {
                401 | 403 => 3,
                404 => 4,
                409 => 5,
                400 | 413 | 422 => 6,
                _ => 7,
            },
            ClientError::Network { .. } => 7,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    server: Option<String>,
    token: Option<String>,
}

fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("portcullis").join("client.toml"))
}

impl Client {
    /// Resolves server and token from flags, environment and the config file.
    ///
    /// # Errors
    /// [`ClientError::Usage`] for a malformed config file or server address.
    pub fn resolve(server: Option<String>, token: Option<String>) -> Result<Client, ClientError> {
        let file = match config_path().filter(|p| p.exists()) {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
                toml::from_str::<ClientFile>(&text)
                    .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?
            }
            None => ClientFile::default(),
        };
        let server = server
            .or_else(|| std::env::var("PORTCULLIS_SERVER").ok())
            .or(file.server)
            .unwrap_or_else(|| "http://127.0.0.1:8480".into());
        let token = token.or_else(|| std::env::var("PORTCULLIS_TOKEN").ok()).or(file.token);
        let base = server.trim_end_matches('/').to_string();
        if !crate::http::valid_url(&base) {
            return Err(ClientError::Usage(format!("server {server:?} must be an http:// or https:// URL")));
        }
        Ok(Client { base, token, http: crate::http::client() })
    }

    /// Calls the API; returns the JSON body of a 2xx answer.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with the problem's detail for 4xx/5xx, or
    /// [`ClientError::Network`].
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let network = |reason: String| ClientError::Network { server: self.base.clone(), reason };
        let mut request = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let request = request
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.http.request(request))
            .await
            .map_err(|_| network("no answer within 30 s".into()))?
            .map_err(|e| network(crate::http::error_chain(&e)))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| network(crate::http::error_chain(&e)))?.to_bytes();
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(json);
        }
        let detail =
            json["detail"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(ClientError::Refused { status, detail })
    }
}

impl Client {
    /// Follows the event stream from `cursor`, calling `each(id, kind, data)`
    /// per event, until the server closes it.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn watch(&self, cursor: u64, mut each: impl FnMut(&str, &str, &str)) -> Result<(), ClientError> {
        let network = |reason: String| ClientError::Network { server: self.base.clone(), reason };
        let mut request =
            Request::builder().method(Method::GET).uri(format!("{}/v1/events?cursor={cursor}", self.base));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::new())).map_err(|e| ClientError::Usage(e.to_string()))?;
        let response = self.http.request(request).await.map_err(|e| network(crate::http::error_chain(&e)))?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map_err(|e| network(crate::http::error_chain(&e)))?.to_bytes();
            let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let detail = json["detail"].as_str().unwrap_or("").to_string();
            return Err(ClientError::Refused { status, detail });
        }
        // Server-Sent Events: blocks of `field: value` lines separated by a blank line.
        let mut pending = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| network(crate::http::error_chain(&e)))?;
            let Ok(data) = frame.into_data() else { continue };
            pending.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                let field = |name: &str| {
                    block.lines().find_map(|l| l.strip_prefix(name)).map(str::trim_start).unwrap_or("").to_string()
                };
                if !block.starts_with(':') {
                    each(&field("id:"), &field("event:"), &field("data:"));
                }
            }
        }
        Ok(())
    }
}

/// A short table row of a request, for people.
pub fn request_row(r: &Value) -> String {
    let t = &r["target"];
    format!(
        "{}  {:<9} {:<24} {}/{}/{} {}  {} ({}/{} approvals)",
        r["id"].as_str().unwrap_or(""),
        r["status"].as_str().unwrap_or(""),
        r["requester"]["sub"].as_str().unwrap_or(""),
        t["cluster"].as_str().unwrap_or(""),
        t["namespace"].as_str().unwrap_or(""),
        t["kind"].as_str().unwrap_or(""),
        t["access"].as_str().unwrap_or(""),
        r["duration"].as_str().unwrap_or(""),
        r["approvals"].as_array().map_or(0, Vec::len),
        r["approvals_needed"],
    )
}

/// A short table row of a grant, for people.
pub fn grant_row(g: &Value) -> String {
    let t = &g["target"];
    format!(
        "{}  {:<8} {:<24} {}/{}/{} {}  until {}",
        g["id"].as_str().unwrap_or(""),
        g["status"].as_str().unwrap_or(""),
        g["requester"].as_str().unwrap_or(""),
        t["cluster"].as_str().unwrap_or(""),
        t["namespace"].as_str().unwrap_or(""),
        t["kind"].as_str().unwrap_or(""),
        t["access"].as_str().unwrap_or(""),
        g["expires_at"].as_str().unwrap_or(""),
    )
}
