//! OIDC bearer JWTs: the checks, and the authorization matrix through the router.

use crate::ledger::{close, open, signer};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use http_body_util::BodyExt;
use portcullis::api::{AppState, app};
use portcullis::auth::Tokens;
use portcullis::oidc::{Oidc, OidcConfig};
use portcullis::policy::Policy;
use portcullis::workflow::Workflow;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;

// Two 1024-bit primes made with `openssl prime -generate` for these tests only.
const P: &str = "F532658573DA9CFD58D60A21458FCDBA9ACA4B8DE8744C59D9DDC6E0589ABD78D9C23254A4779B5E64AC00D3CB1BB41C1125117DE34745245353959F9CE73A7D3CBC74A28854034801CF87F74107462BB67FD69A26435930D13B2A787FDC4365C92FA9A987ABAA143F3C52143D17DDFABE396BB0A68D8EA25898C3D64037CB33";
const Q: &str = "CB09B6FE1123FCD31A254FA14CA551E7B95D4439912365C086E452646C35A39A83C89BC7108E859C937906E7B36E47564143A7ACE8DC51C1B1BC0796666169E1ADB95E7DB9B6BA366EB99F89F49A97800437FECC7ED1DF9283331DFE114752CCB8A4066F1CFCCA92790411816028D6EE2512D11D04B7510115D9C48F8D439389";
const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "portcullis";
const NOW: i64 = 1_800_000_000;

struct Keys {
    rsa: rsa::RsaPrivateKey,
    ec: p256::ecdsa::SigningKey,
    ed: ed25519_dalek::SigningKey,
}

fn keys() -> Keys {
    let prime = |hex: &str| rsa::BigUint::parse_bytes(hex.as_bytes(), 16).unwrap();
    Keys {
        rsa: rsa::RsaPrivateKey::from_p_q(prime(P), prime(Q), rsa::BigUint::from(65_537u32)).unwrap(),
        ec: p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).unwrap(),
        ed: ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]),
    }
}

fn jwks(keys: &Keys) -> Value {
    use rsa::traits::PublicKeyParts;
    let public = keys.rsa.to_public_key();
    let point = keys.ec.verifying_key().to_encoded_point(false);
    json!({"keys": [
        {"kty": "RSA", "kid": "rsa", "use": "sig", "n": B64URL.encode(public.n().to_bytes_be()), "e": B64URL.encode(public.e().to_bytes_be())},
        {"kty": "EC", "kid": "ec", "crv": "P-256", "x": B64URL.encode(point.x().unwrap()), "y": B64URL.encode(point.y().unwrap())},
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": B64URL.encode(keys.ed.verifying_key().as_bytes())},
    ]})
}

/// A JWT with header `alg`/`kid`, signed by the key of `kid`.
fn jwt(keys: &Keys, alg: &str, kid: &str, claims: &Value) -> String {
    let header = B64URL.encode(json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string());
    let body = B64URL.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let signature = match kid {
        "rsa" => rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(keys.rsa.clone()).sign(signed.as_bytes()).to_vec(),
        "ec" => {
            let signature: p256::ecdsa::Signature = keys.ec.sign(signed.as_bytes());
            signature.to_bytes().to_vec()
        }
        _ => ed25519_dalek::Signer::sign(&keys.ed, signed.as_bytes()).to_bytes().to_vec(),
    };
    format!("{signed}.{}", B64URL.encode(signature))
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": [AUDIENCE, "other"], "sub": "alice@example.com", "groups": ["web"], "exp": NOW + 600, "nbf": NOW - 60})
}

fn checker(dir: &std::path::Path, keys: &Keys) -> Oidc {
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks(keys).to_string()).unwrap();
    let config = OidcConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_file: Some(path),
        jwks_url: None,
        jwks_refresh_secs: 600,
        groups_claim: "groups".into(),
        algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        leeway_secs: 60,
    };
    Oidc::load(config).unwrap()
}

#[test]
fn tokens_of_every_allowed_algorithm_authenticate_with_their_groups() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let oidc = checker(dir.path(), &keys);
    for (alg, kid) in [("RS256", "rsa"), ("ES256", "ec"), ("EdDSA", "ed")] {
        let actor = oidc.authenticate(&jwt(&keys, alg, kid, &claims()), NOW).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(
            (actor.sub.as_str(), actor.groups.clone(), actor.via.as_str()),
            ("alice@example.com", vec!["web".to_string()], "oidc")
        );
    }
}

#[test]
fn expired_early_foreign_forged_and_malformed_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let oidc = checker(dir.path(), &keys);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims();
        change(&mut c);
        jwt(&keys, "ES256", "ec", &c)
    };
    let mut forged = jwt(&keys, "EdDSA", "ed", &claims());
    forged.replace_range(forged.len() - 6..forged.len() - 4, if forged.ends_with("AA") { "BB" } else { "AA" });
    let tampered = {
        let token = jwt(&keys, "ES256", "ec", &claims());
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = claims();
        c["groups"] = json!(["platform-admins"]);
        format!("{}.{}.{}", parts[0], B64URL.encode(c.to_string()), parts[2])
    };
    let none = format!("{}.{}.", B64URL.encode(r#"{"alg":"none"}"#), B64URL.encode(claims().to_string()));
    let cases = [
        ("expired", with(&|c| c["exp"] = json!(NOW - 61)), "expired"),
        ("not yet valid", with(&|c| c["nbf"] = json!(NOW + 61)), "not valid yet"),
        ("wrong audience", with(&|c| c["aud"] = json!("someone-else")), "audience"),
        ("wrong issuer", with(&|c| c["iss"] = json!("https://evil.example.com")), "issuer"),
        ("no exp", with(&|c| c.as_object_mut().unwrap().remove("exp").map(|_| ()).unwrap()), "exp"),
        ("no sub", with(&|c| c.as_object_mut().unwrap().remove("sub").map(|_| ()).unwrap()), "sub"),
        ("forged signature", forged, "signature"),
        ("tampered claims", tampered, "signature"),
        ("alg none", none, "not allowed"),
        ("alg swapped", jwt(&keys, "RS256", "ec", &claims()), "the key is for"),
        (
            "unknown kid",
            jwt(&keys, "ES256", "ec", &claims()).replacen(
                &B64URL.encode(json!({"alg": "ES256", "kid": "ec", "typ": "JWT"}).to_string()),
                &B64URL.encode(json!({"alg": "ES256", "kid": "zz", "typ": "JWT"}).to_string()),
                1,
            ),
            "kid",
        ),
        ("two parts", "abc.def".to_string(), "not a JWT"),
    ];
    for (name, token, reason) in cases {
        let err = oidc.authenticate(&token, NOW).expect_err(name);
        assert!(err.contains(reason), "{name}: {err}");
    }
}

#[tokio::test]
async fn the_router_takes_oidc_tokens_and_refuses_bad_ones_on_every_workflow_route() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let policy = Arc::new(Policy::parse(include_str!("../../schemas/policy.example.yaml")).unwrap());
    let workflow = Workflow::open(ledger.clone(), Some(policy)).await.unwrap();
    let mut state = AppState::new(ledger.clone(), Some(workflow), Tokens::default());
    state.oidc = Some(checker(dir.path(), &keys));
    let router = app(Arc::new(state));
    // Real time: tokens valid now, and the same expired an hour ago.
    let now = portcullis_format::time::Timestamp::now().unix_micros() / 1_000_000;
    let mut good = claims();
    good["exp"] = json!(now + 600);
    good["nbf"] = json!(now - 60);
    let mut expired = good.clone();
    expired["exp"] = json!(now - 3600);
    let mut foreign = good.clone();
    foreign["aud"] = json!("another-service");
    let call = |token: String, method: &'static str, path: String| {
        let router = router.clone();
        async move {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null))
        }
    };
    let (status, me) = call(jwt(&keys, "RS256", "rsa", &good), "GET", "/v1/whoami".into()).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!((me["sub"].as_str(), me["via"].as_str()), (Some("alice@example.com"), Some("oidc")));
    let id = "0".repeat(32);
    for (method, path) in [
        ("GET", "/v1/whoami".to_string()),
        ("GET", "/v1/requests".to_string()),
        ("POST", format!("/v1/requests/{id}/approve")),
        ("GET", "/v1/grants".to_string()),
        ("POST", format!("/v1/grants/{id}/revoke")),
        ("GET", "/v1/policy".to_string()),
        ("GET", "/v1/events".to_string()),
    ] {
        for (name, token) in
            [("expired", jwt(&keys, "ES256", "ec", &expired)), ("wrong audience", jwt(&keys, "EdDSA", "ed", &foreign))]
        {
            let (status, problem) = call(token, method, path.clone()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with a token {name}: {problem}");
        }
    }
    close(ledger, thread).await;
}

/// Serves `document` (replaceable) as JSON at `/keys` on 127.0.0.1; the URL.
async fn jwks_server(document: Arc<std::sync::Mutex<String>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/keys", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/keys",
        axum::routing::get(move || {
            let document = Arc::clone(&document);
            async move { document.lock().unwrap().clone() }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_url_are_fetched_and_a_rotated_key_is_picked_up() {
    let keys = keys();
    let only_rsa = json!({"keys": [jwks(&keys)["keys"][0].clone()]});
    let document = Arc::new(std::sync::Mutex::new(only_rsa.to_string()));
    let url = jwks_server(Arc::clone(&document)).await;
    let config = |url: &str| OidcConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_file: None,
        jwks_url: Some(url.to_string()),
        jwks_refresh_secs: 600,
        groups_claim: "groups".into(),
        algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        leeway_secs: 60,
    };
    let oidc = Oidc::open(config(&url)).await.unwrap();
    let refresher = tokio::spawn(oidc.clone().run_refresher());
    oidc.authenticate(&jwt(&keys, "RS256", "rsa", &claims()), NOW).unwrap();
    // The provider rotates in a new key: the first token naming it fails and
    // triggers a fetch (later ones at most every 30 s).
    *document.lock().unwrap() = jwks(&keys).to_string();
    let token = jwt(&keys, "EdDSA", "ed", &claims());
    assert!(oidc.authenticate(&token, NOW).is_err(), "not known yet");
    let start = std::time::Instant::now();
    while oidc.authenticate(&token, NOW).is_err() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "the rotated key was never fetched");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    refresher.abort();

    // Bad URLs and bad documents are refused at start with the reason.
    let missing = format!("{}-missing", url);
    assert!(Oidc::open(config(&missing)).await.unwrap_err().contains("404"));
    assert!(Oidc::open(config("ftp://idp.example.com/keys")).await.unwrap_err().contains("http"));
    *document.lock().unwrap() = "{\"keys\": 5}".into();
    assert!(Oidc::open(config(&url)).await.unwrap_err().contains("keys"));
    let mut both = config(&url);
    both.jwks_file = Some("jwks.json".into());
    assert!(Oidc::open(both).await.unwrap_err().contains("exactly one"));
}
