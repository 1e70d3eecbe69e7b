//! OIDC bearer tokens: JWTs (compact JWS) checked against a JWKS file.
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
//! jwks_file = "jwks.json"           # the provider's keys (refresh the file to rotate)
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

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks_file: PathBuf,
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

/// The checker: configuration plus the parsed JWKS.
#[derive(Clone, Debug)]
pub struct Oidc {
    config: OidcConfig,
    keys: Vec<(Option<String>, Key)>,
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
        if let Some(bad) = config.algorithms.iter().find(|a| !["RS256", "ES256", "EdDSA"].contains(&a.as_str())) {
            return Err(format!("oidc.algorithms: {bad:?} is not one of RS256, ES256, EdDSA"));
        }
        if config.issuer.is_empty() || config.audience.is_empty() {
            return Err("oidc: issuer and audience are required".into());
        }
        let text =
            std::fs::read_to_string(&config.jwks_file).map_err(|e| format!("{}: {e}", config.jwks_file.display()))?;
        let jwks: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config.jwks_file.display()))?;
        let entries =
            jwks["keys"].as_array().ok_or_else(|| format!("{}: no \"keys\" array", config.jwks_file.display()))?;
        let mut keys = Vec::new();
        for (i, jwk) in entries.iter().enumerate() {
            // Encryption keys and keys of other algorithms are not for us; skip them.
            if jwk["use"].as_str().is_some_and(|u| u != "sig") {
                continue;
            }
            let key = parse_key(jwk).map_err(|e| format!("{} key {i}: {e}", config.jwks_file.display()))?;
            keys.push((jwk["kid"].as_str().map(str::to_string), key));
        }
        if keys.is_empty() {
            return Err(format!("{}: no signing keys", config.jwks_file.display()));
        }
        Ok(Oidc { config, keys })
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
        let key = match header["kid"].as_str() {
            Some(kid) => self.keys.iter().find(|(k, _)| k.as_deref() == Some(kid)).map(|(_, key)| key),
            None if self.keys.len() == 1 => Some(&self.keys[0].1),
            None => None,
        }
        .ok_or("no key of the issuer matches the token's kid")?;
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
