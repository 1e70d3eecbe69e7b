//! Outbound webhooks: every workflow event of interest is POSTed to the
//! configured URLs, signed with HMAC-SHA256, retried with backoff until it is
//! taken, and never in the way of a command: the notifier follows the ledger on its own task,
//! from a cursor it keeps in a file, so a restart resumes where it stopped
//! (deliveries are at least once; receivers dedupe by `X-Portcullis-Delivery`).
//!
//! ```toml
//! [[webhooks]]
//! url = "http://chat-bridge.internal:8080/portcullis"
//! secret = "a long random string"          # signs every body: X-Portcullis-Signature: sha256=<hex>
//! format = "generic"                       # or "slack": {"text": "..."}
//! events = ["request.created", "grant.activated"]   # default: requests, decisions, grants, revocations
//! ```

use crate::ledger::Ledger;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Bytes;
use portcullis_format::event::ParsedEntry;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The events sent when a webhook lists none.
pub const DEFAULT_EVENTS: &[&str] = &[
    "request.created",
    "request.approved",
    "request.denied",
    "request.expired",
    "grant.activated",
    "grant.ended",
    "grant.revoked",
    "grant.expired",
    "grant.extended",
    EXPIRING,
];

/// The kind of the warning sent before a grant expires (a notification, not a ledger event).
pub const EXPIRING: &str = "grant.expiring";

/// How long before a grant's expiry the warning is sent.
pub const WARNING_LEAD: Duration = Duration::from_secs(300);

/// The longest wait between two attempts of one delivery.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// A name break-glass rules can address in their `notify` list.
    #[serde(default)]
    pub name: Option<String>,
    pub url: String,
    pub secret: String,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Generic,
    Slack,
}

impl Webhook {
    /// Checks the settings.
    ///
    /// # Errors
    /// A sentence naming the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if !crate::http::valid_url(&self.url) {
            return Err(format!("webhook url {:?} must be an http:// or https:// URL", self.url));
        }
        if self.secret.len() < 16 {
            return Err(format!("webhook {}: the secret must be at least 16 characters", self.url));
        }
        Ok(())
    }

    fn wants(&self, kind: &str) -> bool {
        if self.events.is_empty() { DEFAULT_EVENTS.contains(&kind) } else { self.events.iter().any(|e| e == kind) }
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The body sent for an event.
fn payload(format: Format, seq: u64, event: &Value) -> Value {
    match format {
        Format::Generic => json!({"seq": seq, "event": event}),
        Format::Slack => {
            let data = &event["data"];
            let target = &data["target"];
            let what = if target.is_object() {
                format!(
                    " {} {}/{}/{}",
                    target["access"].as_str().unwrap_or(""),
                    target["cluster"].as_str().unwrap_or(""),
                    target["namespace"].as_str().unwrap_or(""),
                    target["kind"].as_str().unwrap_or("")
                )
            } else {
                String::new()
            };
            let reason = data["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
            json!({"text": format!("Portcullis {} by {}{what}{reason} (entry {seq})", event["kind"].as_str().unwrap_or(""), event["actor"]["sub"].as_str().unwrap_or(""))})
        }
    }
}

/// Follows the ledger and delivers events to the webhooks. Runs until the ledger closes.
pub async fn run(ledger: Ledger, webhooks: Vec<Webhook>, cursor_file: PathBuf) {
    let client = crate::http::client();
    let webhooks = Arc::new(webhooks);
    let mut next: u64 = std::fs::read_to_string(&cursor_file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let mut head = ledger.watch_head();
    loop {
        while ledger.head().size > next {
            let Ok(entries) = ledger.entries(next, 256).await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            for entry in entries {
                if let Ok(parsed) = ParsedEntry::parse(&entry) {
                    let kind = parsed.event.draft.kind.clone();
                    let event: Value = serde_json::from_slice(parsed.json_line(&entry)).unwrap_or(Value::Null);
                    let notify = &event["data"]["notify"];
                    let named = |w: &Webhook| {
                        w.name.as_ref().is_some_and(|n| notify.as_array().is_some_and(|l| l.iter().any(|x| x == n)))
                    };
                    for webhook in webhooks.iter().filter(|w| w.wants(&kind) || named(w)) {
                        deliver(&client, webhook, next, &parsed.event.draft.id.to_string(), &kind, &event).await;
                    }
                }
                next += 1;
                // The cursor is written after the deliveries: at least once, never lost.
                if let Err(e) = std::fs::write(&cursor_file, format!("{next}\n")) {
                    tracing::warn!("webhooks: cannot save the cursor to {}: {e}", cursor_file.display());
                }
            }
        }
        if head.changed().await.is_err() {
            return;
        }
    }
}

/// Warns the webhooks `lead` before each active grant expires (again after an
/// extension moves the expiry). Warnings follow the workflow's state, so after a
/// restart a grant already inside its warning window is warned again (at least
/// once). Runs until the ledger closes.
pub async fn run_warnings(workflow: Arc<crate::workflow::Workflow>, webhooks: Vec<Webhook>, lead: Duration) {
    let client = crate::http::client();
    let mut warned: std::collections::HashSet<(portcullis_format::event::EventId, i64)> = Default::default();
    let mut head = workflow.ledger().watch_head();
    let lead_micros = lead.as_micros() as i64;
    loop {
        let now = portcullis_format::time::Timestamp::now().unix_micros();
        let mut due = Vec::new();
        let mut next: Option<i64> = None;
        match workflow.current().await {
            Ok(state) => {
                for grant in state.grants.values().filter(|g| g.status == crate::domain::state::GrantStatus::Active) {
                    let expires = grant.expires_at.unix_micros();
                    let warn_at = expires - lead_micros;
                    if warn_at <= now && now < expires && !warned.contains(&(grant.id, expires)) {
                        let data = json!({
                            "grant_id": grant.id.to_string(), "requester": grant.requester,
                            "expires_at": grant.expires_at.to_string(), "break_glass": grant.break_glass,
                            "target": {"cluster": grant.target.cluster, "namespace": grant.target.namespace, "kind": grant.target.kind, "access": grant.target.access},
                        });
                        let event = json!({"kind": EXPIRING, "actor": {"sub": "system:portcullis"}, "data": data});
                        due.push((grant.id, expires, grant.seq, event));
                    } else if warn_at > now {
                        next = Some(next.map_or(warn_at, |n| n.min(warn_at)));
                    }
                }
            }
            Err(e) => tracing::warn!("expiry warnings: {e}"),
        }
        for (grant, expires, seq, event) in due {
            let id = format!("{grant}-expiring-{expires}");
            for webhook in webhooks.iter().filter(|w| w.wants(EXPIRING)) {
                deliver(&client, webhook, seq, &id, EXPIRING, &event).await;
            }
            warned.insert((grant, expires));
        }
        let wait = next.map_or(Duration::from_secs(3600), |at| Duration::from_micros((at - now).max(0) as u64));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = head.changed() => if changed.is_err() { return },
        }
    }
}

/// One delivery, retried until it succeeds, waiting 1 s, 2 s, 4 s ... up to
/// a minute between attempts. Deliveries are in ledger order, so a webhook
/// that stays down holds back the ones after it (none is skipped or lost);
/// shutting the service down stops the retries, and the cursor resumes them.
async fn deliver(client: &crate::http::Client, webhook: &Webhook, seq: u64, id: &str, kind: &str, event: &Value) {
    let body = payload(webhook.format, seq, event).to_string();
    let signature = signature(&webhook.secret, body.as_bytes());
    let mut wait = Duration::from_secs(1);
    for attempt in 1u64.. {
        let request = hyper::Request::post(&webhook.url)
            .header("content-type", "application/json")
            .header("x-portcullis-event", kind)
            .header("x-portcullis-delivery", id)
            .header("x-portcullis-signature", &signature)
            .body(Full::new(Bytes::from(body.clone())));
        let Ok(request) = request else {
            tracing::error!("webhook {}: entry {seq}: cannot build the request; skipped", webhook.url);
            return;
        };
        match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => return,
            Ok(Ok(response)) => tracing::warn!(
                "webhook {}: entry {seq}: answered {} (attempt {attempt})",
                webhook.url,
                response.status()
            ),
            Ok(Err(e)) => tracing::warn!("webhook {}: entry {seq}: {e} (attempt {attempt})", webhook.url),
            Err(_) => tracing::warn!("webhook {}: entry {seq}: no answer in 10 s (attempt {attempt})", webhook.url),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn short_secrets_and_other_schemes_are_refused() {
        let hook = |url: &str, secret: &str| Webhook {
            name: None,
            url: url.into(),
            secret: secret.into(),
            format: Format::Generic,
            events: vec![],
        };
        assert!(hook("http://127.0.0.1:9/x", "0123456789abcdef").validate().is_ok());
        assert!(hook("https://example.com/x", "0123456789abcdef").validate().is_ok());
        assert!(hook("ftp://example.com/x", "0123456789abcdef").validate().is_err());
        assert!(hook("http:///x", "0123456789abcdef").validate().is_err());
        assert!(hook("http://127.0.0.1:9/x", "short").validate().is_err());
    }
}
