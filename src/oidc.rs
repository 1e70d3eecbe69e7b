//! OIDC bearer tokens: JWTs (compact JWS) checked against a JWKS, read from
//! a file or fetched from the provider's URL (and fetched again every
//! `jwks_refresh_secs`, and soon after a token names a key id not yet known,
//! so the provider's key rotations need no restart).
//!
//! A token is accepted only if: its header's `alg` is on the allow-list (never
//! `none`) and matches its key; its `kid` names a key of the JWKS (or the JWKS
//! has one key); the signature verifies; `iss` equals the issuer; `aud` (a
//! string or an array) contains the audience; `exp` is in the future and `nbf`
//! (when present) in the past, both with a small leeway; `sub` is present.
//! Groups come from a configurable claim (an array of strings).
//!
//! ```toml
//! [oidc]
//! issuer = "https://dex.example.com"
//! audience = "portcullis"
//! jwks_url = "https://dex.example.com/keys"  # the provider's keys; or jwks_file = "jwks.json"
//! jwks_refresh_secs = 600           # default; how often jwks_url is fetched again
//! groups_claim = "groups"           # default
//! algorithms = ["RS256", "ES256", "EdDSA"]   # default
//! leeway_secs = 60                  # default
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use portcullis_format::event::Actor;
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    /// The provider's keys as a file (read at start)...
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// ...or as a URL (fetched at start and refreshed).
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "default_refresh")]
    pub jwks_refresh_secs: u64,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}

fn default_leeway() -> u64 {
    60
}

fn default_refresh() -> u64 {
    600
}

/// The shortest time between two fetches of the JWKS URL.
const MIN_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);
/// The largest JWKS document accepted.
const MAX_JWKS: usize = 1024 * 1024;

#[derive(Clone, Debug)]
enum Key {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl Key {
    fn algorithm(&self) -> &'static str {
        match self {
            Key::Rsa(_) => "RS256",
            Key::P256(_) => "ES256",
            Key::Ed25519(_) => "EdDSA",
        }
    }
}

type Keys = Vec<(Option<String>, Key)>;

/// The checker: configuration plus the parsed JWKS (shared by clones, replaced on refresh).
#[derive(Clone, Debug)]
pub struct Oidc {
    config: OidcConfig,
    keys: Arc<RwLock<Arc<Keys>>>,
    /// Woken when a token names an unknown key id: the refresher fetches the JWKS again.
    unknown_kid: Arc<tokio::sync::Notify>,
}

/// Parses a JWKS document; `source` names it in errors.
fn parse_jwks(text: &str, source: &str) -> Result<Keys, String> {
    let jwks: Value = serde_json::from_str(text).map_err(|e| format!("{source}: {e}"))?;
    let entries = jwks["keys"].as_array().ok_or_else(|| format!("{source}: no \"keys\" array"))?;
    let mut keys = Vec::new();
    for (i, jwk) in entries.iter().enumerate() {
        // Encryption keys and keys of other algorithms are not for us; skip them.
        if jwk["use"].as_str().is_some_and(|u| u != "sig") {
            continue;
        }
        let key = parse_key(jwk).map_err(|e| format!("{source} key {i}: {e}"))?;
        keys.push((jwk["kid"].as_str().map(str::to_string), key));
    }
    if keys.is_empty() {
        return Err(format!("{source}: no signing keys"));
    }
    Ok(keys)
}

/// Fetches and parses the JWKS at `url`.
async fn fetch_jwks(url: &str) -> Result<Keys, String> {
    use http_body_util::BodyExt as _;
    let request = hyper::Request::get(url)
        .header("accept", "application/json")
        .body(http_body_util::Full::new(hyper::body::Bytes::new()))
        .map_err(|e| format!("{url}: {e}"))?;
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), crate::http::client().request(request))
        .await
        .map_err(|_| format!("{url}: no answer within 10 s"))?
        .map_err(|e| format!("{url}: {}", crate::http::error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!("{url}: answered {}", response.status()));
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS)
        .collect()
        .await
        .map_err(|e| format!("{url}: {e} (the limit is {MAX_JWKS} bytes)"))?
        .to_bytes();
    parse_jwks(&String::from_utf8_lossy(&body), url)
}

fn b64(field: &str, value: &Value) -> Result<Vec<u8>, String> {
    let text = value.as_str().ok_or_else(|| format!("{field} is missing"))?;
    B64URL.decode(text).map_err(|_| format!("{field} is not base64url"))
}

fn parse_key(jwk: &Value) -> Result<Key, String> {
    match jwk["kty"].as_str() {
        Some("RSA") => {
            let n = rsa::BigUint::from_bytes_be(&b64("n", &jwk["n"])?);
            let e = rsa::BigUint::from_bytes_be(&b64("e", &jwk["e"])?);
            let key = rsa::RsaPublicKey::new(n, e).map_err(|e| format!("RSA key: {e}"))?;
            if rsa::traits::PublicKeyParts::size(&key) < 256 {
                return Err("RSA keys shorter than 2048 bits are refused".into());
            }
            Ok(Key::Rsa(key))
        }
        Some("EC") if jwk["crv"] == "P-256" => {
            let mut point = vec![0x04];
            point.extend(b64("x", &jwk["x"])?);
            point.extend(b64("y", &jwk["y"])?);
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).map(Key::P256).map_err(|_| "not a P-256 point".into())
        }
        Some("OKP") if jwk["crv"] == "Ed25519" => {
            let bytes: [u8; 32] = b64("x", &jwk["x"])?.try_into().map_err(|_| "an Ed25519 key is 32 bytes")?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| "not an Ed25519 point")?;
            if key.is_weak() {
                return Err("weak Ed25519 key refused".into());
            }
            Ok(Key::Ed25519(key))
        }
        other => Err(format!("unsupported key type {other:?} (RSA, EC P-256 and OKP Ed25519 are)")),
    }
}

impl Oidc {
    /// Loads the JWKS file and checks the configuration.
    ///
    /// # Errors
    /// A sentence naming the file or the setting.
    pub fn load(config: OidcConfig) -> Result<Oidc, String> {
        Oidc::load_checks(&config)?;
        let keys = match (&config.jwks_file, &config.jwks_url) {
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                parse_jwks(&text, &path.display().to_string())?
            }
            (None, Some(_)) => return Err("oidc.jwks_url is fetched: use Oidc::open".into()),
            _ => return Err("oidc: give exactly one of jwks_file and jwks_url".into()),
        };
        Ok(Oidc::with_keys(config, keys))
    }

    fn load_checks(config: &OidcConfig) -> Result<(), String> {
        if let Some(bad) = config.algorithms.iter().find(|a| !["RS256", "ES256", "EdDSA"].contains(&a.as_str())) {
            return Err(format!("oidc.algorithms: {bad:?} is not one of RS256, ES256, EdDSA"));
        }
        if config.issuer.is_empty() || config.audience.is_empty() {
            return Err("oidc: issuer and audience are required".into());
        }
        Ok(())
    }

    fn with_keys(config: OidcConfig, keys: Keys) -> Oidc {
        Oidc { config, keys: Arc::new(RwLock::new(Arc::new(keys))), unknown_kid: Arc::new(tokio::sync::Notify::new()) }
    }

    /// Loads the keys from `jwks_file`, or fetches them from `jwks_url`.
    ///
    /// # Errors
    /// As [`Oidc::load`]; for a URL, when it cannot be fetched or parsed.
    pub async fn open(config: OidcConfig) -> Result<Oidc, String> {
        let Some(url) = config.jwks_url.clone() else { return Oidc::load(config) };
        if config.jwks_file.is_some() {
            return Err("oidc: give exactly one of jwks_file and jwks_url".into());
        }
        if !crate::http::valid_url(&url) {
            return Err(format!("oidc.jwks_url {url:?} must be an http:// or https:// URL"));
        }
        if !(30..=86_400).contains(&config.jwks_refresh_secs) {
            return Err(format!("oidc.jwks_refresh_secs must be 30 to 86400, not {}", config.jwks_refresh_secs));
        }
        Oidc::load_checks(&config)?;
        let keys = fetch_jwks(&url).await?;
        Ok(Oidc::with_keys(config, keys))
    }

    /// Fetches `jwks_url` again every `jwks_refresh_secs`, and (at most every
    /// 30 s) when a token names an unknown key id. A failed fetch keeps the
    /// keys in hand. Returns at once for a `jwks_file`.
    pub async fn run_refresher(self) {
        let Some(url) = self.config.jwks_url.clone() else { return };
        let every = std::time::Duration::from_secs(self.config.jwks_refresh_secs);
        // The first fetch for an unknown key id may come at once; later ones are spaced.
        let now = tokio::time::Instant::now();
        let mut last = now.checked_sub(MIN_REFRESH).unwrap_or(now);
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.unknown_kid.notified() => {
                    tokio::time::sleep_until(last + MIN_REFRESH.min(every)).await;
                }
            }
            last = tokio::time::Instant::now();
            match fetch_jwks(&url).await {
                Ok(keys) => *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys),
                Err(e) => tracing::warn!("oidc: refreshing the keys failed, keeping the current ones: {e}"),
            }
        }
    }

    /// Checks a JWT at `now` (Unix seconds) and returns the actor it authenticates.
    ///
    /// # Errors
    /// A short reason, safe to show the client.
    pub fn authenticate(&self, token: &str, now: i64) -> Result<Actor, String> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT".into());
        };
        let header: Value =
            B64URL.decode(header).ok().and_then(|h| serde_json::from_slice(&h).ok()).ok_or("malformed JWT header")?;
        let alg = header["alg"].as_str().ok_or("JWT header has no alg")?;
        if !self.config.algorithms.iter().any(|a| a == alg) {
            return Err(format!("algorithm {alg:?} is not allowed"));
        }
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner));
        let key = match header["kid"].as_str() {
            Some(kid) => keys.iter().find(|(k, _)| k.as_deref() == Some(kid)).map(|(_, key)| key),
            None if keys.len() == 1 => Some(&keys[0].1),
            None => None,
        };
        let Some(key) = key else {
            // Perhaps the provider rotated its keys: fetch them again soon.
            self.unknown_kid.notify_one();
            return Err("no key of the issuer matches the token's kid".into());
        };
        if key.algorithm() != alg {
            return Err(format!("the key is for {}, the token says {alg}", key.algorithm()));
        }
        let signature = B64URL.decode(signature).map_err(|_| "malformed JWT signature")?;
        let signed = &token[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1];
        let verified = match key {
            Key::Rsa(key) => {
                let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key.clone());
                rsa::pkcs1v15::Signature::try_from(signature.as_slice())
                    .is_ok_and(|s| rsa::signature::Verifier::verify(&verifier, signed.as_bytes(), &s).is_ok())
            }
            Key::P256(key) => p256::ecdsa::Signature::from_slice(&signature)
                .is_ok_and(|s| p256::ecdsa::signature::Verifier::verify(key, signed.as_bytes(), &s).is_ok()),
            Key::Ed25519(key) => <[u8; 64]>::try_from(signature.as_slice())
                .is_ok_and(|s| key.verify_strict(signed.as_bytes(), &ed25519_dalek::Signature::from_bytes(&s)).is_ok()),
        };
        if !verified {
            return Err("the token's signature does not verify".into());
        }
        let claims: Value =
            B64URL.decode(payload).ok().and_then(|p| serde_json::from_slice(&p).ok()).ok_or("malformed JWT claims")?;
        if claims["iss"].as_str() != Some(self.config.issuer.as_str()) {
            return Err("wrong issuer".into());
        }
        let audience = &self.config.audience;
        let aud_ok = match &claims["aud"] {
            Value::String(aud) => aud == audience,
            Value::Array(auds) => auds.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !aud_ok {
            return Err("wrong audience".into());
        }
        let leeway = self.config.leeway_secs as i64;
        let exp = claims["exp"].as_i64().ok_or("the token has no exp")?;
        if now > exp.saturating_add(leeway) {
            return Err("the token has expired".into());
        }
        if claims["nbf"].as_i64().is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
            return Err("the token is not valid yet".into());
        }
        let sub = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control))
            .ok_or("the token has no usable sub")?;
        let groups = match &claims[self.config.groups_claim.as_str()] {
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .filter(|g| !g.is_empty() && g.len() <= 256 && !g.chars().any(char::is_control))
                .take(256)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        Ok(Actor { sub: sub.to_string(), groups, via: "oidc".into() })
    }
}
