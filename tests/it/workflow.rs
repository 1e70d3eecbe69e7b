//! The access workflow through the HTTP router: the README's flow, the
//! authentication edge, idempotent retries and racing commands.

use crate::ledger::{close, open, signer, verify_dir};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use portcullis::api::{AppState, app};
use portcullis::auth::Tokens;
use portcullis::policy::Policy;
use portcullis::workflow::Workflow;
use portcullis_format::keys::KeySet;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use tower::ServiceExt;

const EXAMPLE_POLICY: &str = include_str!("../../schemas/policy.example.yaml");

struct Service {
    router: axum::Router,
    tokens: HashMap<&'static str, String>,
    workflow: Arc<Workflow>,
}

async fn service(dir: &std::path::Path, ledger: portcullis::ledger::Ledger) -> Service {
    let path = dir.join("tokens");
    let mut tokens = HashMap::new();
    for (name, sub, groups) in [
        ("alice", "alice@example.com", vec!["web"]),
        ("lead1", "lead1@example.com", vec!["sre-leads"]),
        ("lead2", "lead2@example.com", vec!["sre-leads"]),
        ("carol", "carol@example.com", vec![]),
        ("admin", "root@example.com", vec!["platform-admins"]),
        ("stranger", "eve@example.com", vec!["marketing"]),
    ] {
        let groups: Vec<String> = groups.into_iter().map(str::to_string).collect();
        tokens.insert(name, portcullis::auth::create(&path, sub, &groups).unwrap());
    }
    let policy = Arc::new(Policy::parse(EXAMPLE_POLICY).unwrap());
    let workflow = Workflow::open(ledger.clone(), Some(policy)).await.unwrap();
    let state = AppState::new(ledger, Some(Arc::clone(&workflow)), Tokens::load(&path).unwrap());
    Service { router: app(Arc::new(state)), tokens, workflow }
}

impl Service {
    async fn call(
        &self,
        who: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(who) = who {
            let token = self.tokens.get(who).cloned().unwrap_or_else(|| who.to_string());
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let body = body.map_or(Body::empty(), |b| Body::from(b.to_string()));
        let response = self.router.clone().oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

fn prod_request() -> Value {
    json!({
        "cluster": "prod", "namespace": "shop-eu", "kind": "ingresses", "names": ["storefront"],
        "access": "edit", "duration": "30m", "reason": "INC-4711: fix the TLS host", "ticket": "INC-4711"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_two_approvals_grant_end_early_and_the_ledger_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;

    let (status, request) = s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), None).await;
    assert_eq!(status, StatusCode::CREATED, "{request}");
    assert_eq!(request["status"], "pending");
    assert_eq!(request["approvals_needed"], 2);
    assert_eq!(request["rule"], "prod-ingress-edit");
    let id = request["id"].as_str().unwrap().to_string();

    let (status, own) = s.call(Some("alice"), "POST", &format!("/v1/requests/{id}/approve"), None, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{own}");
    let (status, first) = s
        .call(Some("lead1"), "POST", &format!("/v1/requests/{id}/approve"), Some(json!({"comment": "ok"})), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(first["grant"].is_null());
    let (status, second) = s.call(Some("lead2"), "POST", &format!("/v1/requests/{id}/approve"), None, None).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let grant = &second["grant"];
    assert_eq!(grant["status"], "active");
    assert_eq!(grant["approvers"], json!(["lead1@example.com", "lead2@example.com"]));
    assert_eq!(grant["rbac"][1]["verbs"], json!(["list", "watch"]), "the grant shows what RBAC cannot restrict");
    let grant_id = grant["id"].as_str().unwrap().to_string();

    let (status, active) = s.call(Some("lead1"), "GET", "/v1/grants?active=true", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(active["items"].as_array().unwrap().len(), 1);
    let (status, who) = s
        .call(
            Some("alice"),
            "GET",
            "/v1/access?cluster=prod&namespace=shop-eu&kind=ingresses&name=storefront",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(who["grants"][0]["requester"], "alice@example.com");

    let (status, ended) = s
        .call(Some("alice"), "POST", &format!("/v1/grants/{grant_id}/end"), Some(json!({"comment": "done"})), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(ended["status"], "ended");
    let (status, again) = s.call(Some("alice"), "POST", &format!("/v1/grants/{grant_id}/end"), None, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");

    let store = Arc::clone(ledger.store());
    ledger.checkpoint().await.unwrap();
    drop(s);
    close(ledger, thread).await;
    let export = dir.path().join("export");
    portcullis::export::export(store.as_ref(), &export, 0, None, &|_, _| {}).unwrap();
    let summary = verify_dir(&export, KeySet::single(signer(1).verifier().clone())).unwrap();
    // ledger.created, policy.loaded, request, 2 approvals, grant, end
    assert_eq!(summary.entries_verified, 7);
}

#[tokio::test]
async fn every_route_refuses_missing_and_unknown_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;
    let id = "0".repeat(32);
    let routes = [
        ("GET", "/v1/whoami".to_string()),
        ("POST", "/v1/requests".to_string()),
        ("GET", "/v1/requests".to_string()),
        ("GET", format!("/v1/requests/{id}")),
        ("POST", format!("/v1/requests/{id}/approve")),
        ("POST", format!("/v1/requests/{id}/deny")),
        ("POST", format!("/v1/requests/{id}/cancel")),
        ("GET", "/v1/grants".to_string()),
        ("GET", format!("/v1/grants/{id}")),
        ("POST", format!("/v1/grants/{id}/end")),
        ("POST", format!("/v1/grants/{id}/extend")),
        ("POST", format!("/v1/grants/{id}/revoke")),
        ("POST", format!("/v1/grants/{id}/review")),
        ("POST", format!("/v1/extensions/{id}/approve")),
        ("POST", format!("/v1/extensions/{id}/deny")),
        ("GET", "/v1/access?cluster=prod&namespace=shop&kind=ingresses".to_string()),
    ];
    for (method, path) in &routes {
        for who in [None, Some("pcs_not-a-real-token")] {
            let (status, problem) = s.call(who, method, path, Some(prod_request()), None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} as {who:?}: {problem}");
            assert_eq!(problem["type"], "urn:portcullis:problem:unauthorized");
        }
    }
    assert_eq!(ledger.head().size, 2, "nothing but the ledger's creation and the policy was recorded");
    drop(s);
    close(ledger, thread).await;
}

#[tokio::test]
async fn bad_fields_are_named_and_nothing_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;
    let mut cases: Vec<(Value, &str)> = Vec::new();
    for (field, value) in [
        ("namespace", json!("Shop_EU")),
        ("cluster", json!("")),
        ("kind", json!("secrets")),
        ("access", json!("admin")),
        ("duration", json!("forever")),
        ("duration", json!("3h")),
        ("ticket", json!("JIRA-1")),
        ("reason", json!("short")),
        ("names", json!(["Not A Name"])),
    ] {
        let mut body = prod_request();
        body[field] = value;
        cases.push((body, field));
    }
    let mut unknown = prod_request();
    unknown["colour"] = json!("blue");
    cases.push((unknown, "body"));
    for (body, field) in cases {
        let (status, problem) = s.call(Some("alice"), "POST", "/v1/requests", Some(body.clone()), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {problem}");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let (status, problem) = s.call(Some("stranger"), "POST", "/v1/requests", Some(prod_request()), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(ledger.head().size, 2);
    drop(s);
    close(ledger, thread).await;
}

#[tokio::test]
async fn a_retried_post_with_the_same_idempotency_key_creates_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;
    let (first_status, first) =
        s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), Some("retry-1")).await;
    let (second_status, second) =
        s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), Some("retry-1")).await;
    assert_eq!((first_status, second_status), (StatusCode::CREATED, StatusCode::CREATED), "the first answer, replayed");
    assert_eq!(first["id"], second["id"]);
    let (_, other) = s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), Some("retry-2")).await;
    assert_ne!(first["id"], other["id"]);
    assert_eq!(s.workflow.current().await.unwrap().requests.len(), 2);
    drop(s);
    close(ledger, thread).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_approvals_give_one_grant_and_racing_revocations_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = Arc::new(service(dir.path(), ledger.clone()).await);
    let (_, request) = s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), None).await;
    let id = request["id"].as_str().unwrap().to_string();
    let approvals = ["lead1", "lead2", "carol"].map(|who| {
        let s = Arc::clone(&s);
        let path = format!("/v1/requests/{id}/approve");
        tokio::spawn(async move { s.call(Some(who), "POST", &path, None, None).await })
    });
    let mut outcomes = Vec::new();
    for task in approvals {
        outcomes.push(task.await.unwrap().0);
    }
    // Two approvals activate the grant; the third finds the request no longer pending.
    assert_eq!(outcomes.iter().filter(|s| **s == StatusCode::OK).count(), 2, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|s| **s == StatusCode::CONFLICT).count(), 1, "{outcomes:?}");
    let state = s.workflow.current().await.unwrap();
    assert_eq!(state.grants.len(), 1);
    let grant = *state.grants.keys().next().unwrap();
    drop(state);

    let revokes = ["lead1", "admin"].map(|who| {
        let s = Arc::clone(&s);
        let path = format!("/v1/grants/{grant}/revoke");
        tokio::spawn(
            async move { s.call(Some(who), "POST", &path, Some(json!({"reason": "suspicious"})), None).await.0 },
        )
    });
    let mut outcomes = Vec::new();
    for task in revokes {
        outcomes.push(task.await.unwrap());
    }
    outcomes.sort();
    assert_eq!(outcomes, vec![StatusCode::OK, StatusCode::CONFLICT]);
    drop(s);
    close(ledger, thread).await;
}

#[tokio::test]
async fn without_a_policy_the_workflow_answers_503_and_the_ledger_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let path = dir.path().join("tokens");
    let token = portcullis::auth::create(&path, "alice", &[]).unwrap();
    let state = AppState::new(ledger.clone(), None, Tokens::load(&path).unwrap());
    let router = app(Arc::new(state));
    let request = Request::post("/v1/requests")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(prod_request().to_string()))
        .unwrap();
    assert_eq!(router.clone().oneshot(request).await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        router.oneshot(Request::get("/checkpoint").body(Body::empty()).unwrap()).await.unwrap().status(),
        StatusCode::OK
    );
    close(ledger, thread).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_wakes_exactly_at_the_next_deadline_and_expires_what_passed_while_down() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;
    let (_, request) = s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), None).await;
    let id = portcullis_format::event::EventId::parse(request["id"].as_str().unwrap()).unwrap();
    let created = portcullis_format::time::Timestamp::parse(request["created_at"].as_str().unwrap()).unwrap();
    let expires = portcullis_format::time::Timestamp::parse(request["pending_expires_at"].as_str().unwrap()).unwrap();

    // The plan sleeps until the exact deadline, to the microsecond, and expires it then.
    let state = s.workflow.current().await.unwrap();
    let before = portcullis::workflow::plan(&state, created);
    assert!(before.due.is_empty());
    assert_eq!(before.wait.as_micros() as i64, expires.unix_micros() - created.unix_micros());
    let at_deadline = portcullis::workflow::plan(&state, expires);
    assert_eq!(at_deadline.due.len(), 1);
    drop(state);
    drop(s);

    // A restart two hours later: the scheduler expires the request at once.
    let policy = Arc::new(Policy::parse(EXAMPLE_POLICY).unwrap());
    let later = portcullis_format::time::Timestamp::from_unix_micros(expires.unix_micros() + 3_600_000_000).unwrap();
    let workflow = Workflow::open_with_clock(ledger.clone(), Some(policy), Arc::new(move || later)).await.unwrap();
    let scheduler = tokio::spawn(Arc::clone(&workflow).run_scheduler());
    let mut expired = false;
    for _ in 0..500 {
        if workflow.current().await.unwrap().requests[&id].status == portcullis::domain::state::RequestStatus::Expired {
            expired = true;
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(expired, "the request that expired while the service was down was expired at start");
    scheduler.abort();
    drop(workflow);
    close(ledger, thread).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_policy_takes_effect_only_when_a_second_admin_approves_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;
    let original = s.workflow.policy().unwrap().hash_hex();

    // A restart with an edited policy file only proposes it.
    let edited = EXAMPLE_POLICY.replace("max_duration: 2h", "max_duration: 4h");
    let edited_policy = Arc::new(Policy::parse(&edited).unwrap());
    let restarted = Workflow::open(ledger.clone(), Some(Arc::clone(&edited_policy))).await.unwrap();
    assert_eq!(restarted.policy().unwrap().hash_hex(), original, "the old policy stays in force");
    let (status, shown) = s.call(Some("admin"), "GET", "/v1/policy", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["proposals"][0]["hash"], edited_policy.hash_hex());
    assert_eq!(shown["proposals"][0]["proposed_by"], portcullis::workflow::CONFIG_PROPOSER);

    // Requesters and broken policies are refused; a second admin puts it in force.
    let path = format!("/v1/policy/{}/approve", edited_policy.hash_hex());
    let (status, _) = s.call(Some("alice"), "POST", &path, None, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, problem) =
        s.call(Some("admin"), "POST", "/v1/policy", Some(json!({"text": "version: 1\nrules: [\n"})), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("line"), "{problem}");
    let (status, approved) = s.call(Some("admin"), "POST", &path, None, None).await;
    assert_eq!(status, StatusCode::OK, "{approved}");
    assert_eq!(s.workflow.current().await.unwrap().policy.as_ref().unwrap().0, edited_policy.hash_hex());
    assert_eq!(s.workflow.policy().unwrap().hash_hex(), edited_policy.hash_hex());

    // The admin who proposes through the API cannot also approve.
    let third = EXAMPLE_POLICY.replace("max_duration: 2h", "max_duration: 1h");
    let (status, proposed) = s.call(Some("admin"), "POST", "/v1/policy", Some(json!({"text": third})), None).await;
    assert_eq!(status, StatusCode::CREATED, "{proposed}");
    let path = format!("/v1/policy/{}/approve", proposed["hash"].as_str().unwrap());
    let (status, own) = s.call(Some("admin"), "POST", &path, None, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{own}");
    drop((s, restarted));
    close(ledger, thread).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_replays_from_a_cursor_then_follows_live_and_metrics_count() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;
    let (_, request) = s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), None).await;
    let token = s.tokens["lead1"].clone();
    let stream_request = Request::get("/v1/events?cursor=1")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let response = s.router.clone().oneshot(stream_request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut text = String::new();
    let mut next_frame = async |text: &mut String| {
        let frame =
            tokio::time::timeout(std::time::Duration::from_secs(10), body.frame()).await.unwrap().unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap()));
    };
    while !text.contains("event: request.created") {
        next_frame(&mut text).await;
    }
    assert!(text.contains("id: 1\n") && text.contains("event: policy.loaded"), "{text}");
    assert!(!text.contains("id: 0\n"), "the cursor skips what came before");
    // A new event arrives live.
    let id = request["id"].as_str().unwrap();
    s.call(Some("lead1"), "POST", &format!("/v1/requests/{id}/approve"), None, None).await;
    while !text.contains("event: request.approved") {
        next_frame(&mut text).await;
    }
    assert!(text.contains("id: 3\n"), "{text}");

    let response = s.router.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let metrics = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(metrics.contains("portcullis_requests{status=\"pending\"} 1"), "{metrics}");
    assert!(metrics.contains("portcullis_ledger_entries 4"), "{metrics}");
    drop(s);
    close(ledger, thread).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_signed_events_and_resume_from_their_cursor() {
    use axum::http::HeaderMap;
    type Deliveries = Arc<tokio::sync::Mutex<Vec<(HeaderMap, Vec<u8>)>>>;
    let received: Deliveries = Arc::default();
    let sink = Arc::clone(&received);
    let failures = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = Arc::clone(&failures);
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let sink = Arc::clone(&sink);
            let flag = Arc::clone(&flag);
            async move {
                // The first delivery fails once: the notifier must retry it.
                if flag.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                sink.lock().await.push((headers, body.to_vec()));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, receiver).await });

    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;
    let secret = "a-secret-of-at-least-16-characters";
    let webhook = portcullis::notify::Webhook {
        name: None,
        url: format!("http://{address}/hook"),
        secret: secret.into(),
        format: portcullis::notify::Format::Generic,
        events: vec![],
    };
    let cursor = dir.path().join("webhooks.cursor");
    let notifier = tokio::spawn(portcullis::notify::run(ledger.clone(), vec![webhook], cursor.clone()));
    let (_, request) = s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), None).await;
    let mut waited = 0;
    while received.lock().await.is_empty() && waited < 1000 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        waited += 1;
    }
    let deliveries = received.lock().await.clone();
    assert_eq!(deliveries.len(), 1, "one delivery after one retry; ledger.created and policy.loaded are not sent");
    let (headers, body) = &deliveries[0];
    assert_eq!(headers["x-portcullis-event"], "request.created");
    assert_eq!(headers["x-portcullis-delivery"], request["id"].as_str().unwrap());
    assert_eq!(headers["x-portcullis-signature"].to_str().unwrap(), portcullis::notify::signature(secret, body));
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["event"]["data"]["reason"], "INC-4711: fix the TLS host");
    // The cursor is written after the delivery is taken: wait for it.
    let mut waited = 0;
    while std::fs::read_to_string(&cursor).map(|c| c.trim().to_string()).unwrap_or_default() != "3" && waited < 500 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(std::fs::read_to_string(&cursor).unwrap().trim(), "3");
    notifier.abort();
    server.abort();
    drop(s);
    close(ledger, thread).await;
}

#[tokio::test]
async fn request_pages_follow_the_cursor_in_ledger_order() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;
    let mut created = Vec::new();
    for _ in 0..5 {
        let (_, request) = s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), None).await;
        created.push(request["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut path = "/v1/requests?status=pending&limit=2".to_string();
    loop {
        let (status, page) = s.call(Some("lead1"), "GET", &path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|r| r["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/requests?status=pending&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, created);
    drop(s);
    close(ledger, thread).await;
}

/// An approval whose caller goes away (an HTTP client hanging up) after its
/// append was sent must still be seen by the next command: otherwise a
/// second approver decides on a state without the first grant and a second
/// grant is activated for the same request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_approval_still_orders_before_the_next_command() {
    use futures_util::FutureExt;
    use portcullis::domain::decide::{Command, Rejection};
    use portcullis::workflow::{WorkflowError, random_seed};
    use portcullis_format::event::Actor;
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;
    let lead = |sub: &str| Actor { sub: sub.into(), groups: vec!["sre-leads".into()], via: "token".into() };
    for round in 0..5 {
        let (_, request) = s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), None).await;
        let request = portcullis_format::event::EventId::parse(request["id"].as_str().unwrap()).unwrap();
        let approve = || Command::Approve { request, comment: None };
        s.workflow.execute(approve(), lead("lead1@example.com"), random_seed()).await.unwrap();
        // Polled once (up to the append), then dropped.
        let abandoned = s.workflow.execute(approve(), lead("lead2@example.com"), random_seed()).now_or_never();
        assert!(abandoned.is_none(), "round {round}: the approval finished in one poll");
        let third = s.workflow.execute(approve(), lead("lead3@example.com"), random_seed()).await;
        assert!(matches!(third, Err(WorkflowError::Rejected(Rejection::Conflict(_)))), "round {round}: {third:?}");
        let state = s.workflow.current().await.unwrap();
        assert_eq!(state.grants.values().filter(|g| g.request_id == request).count(), 1, "round {round}");
    }
    drop(s);
    close(ledger, thread).await;
}

/// Two concurrent POSTs with the same Idempotency-Key: one request, and both
/// answered 2xx (the loser used to get a 500 from the ledger's duplicate-id check).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_with_one_idempotency_key_both_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = Arc::new(service(dir.path(), ledger.clone()).await);
    for round in 0..40 {
        let key = format!("race-{round}");
        let calls = [0, 1].map(|_| {
            let (s, key) = (Arc::clone(&s), key.clone());
            tokio::spawn(async move {
                s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), Some(&key)).await
            })
        });
        let mut ids = Vec::new();
        for call in calls {
            let (status, body) = call.await.unwrap();
            assert!(status.is_success(), "round {round}: {status} {body}");
            ids.push(body["id"].clone());
        }
        assert_eq!(ids[0], ids[1]);
    }
    assert_eq!(s.workflow.current().await.unwrap().requests.len(), 40);
    drop(s);
    close(ledger, thread).await;
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after_and_others_are_not_slowed() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;
    let burst = portcullis::api::limit::DEFAULT_BURST as usize;
    let mut limited = None;
    for i in 0..burst + 50 {
        let (status, problem) = s.call(Some("alice"), "GET", "/v1/whoami", None, None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(problem["type"], "urn:portcullis:problem:rate-limited");
            limited = Some(i);
            break;
        }
    }
    assert!(limited.is_some_and(|i| i >= burst), "limited after {limited:?} calls");
    let (status, _) = s.call(Some("lead1"), "GET", "/v1/whoami", None, None).await;
    assert_eq!(status, StatusCode::OK);
    drop(s);
    close(ledger, thread).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_warned_before_a_grant_expires() {
    let kinds: Arc<tokio::sync::Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&kinds);
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().await.push(headers["x-portcullis-event"].to_str().unwrap().to_string());
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, receiver).await });

    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;
    let (_, request) = s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), None).await;
    let id = request["id"].as_str().unwrap();
    s.call(Some("lead1"), "POST", &format!("/v1/requests/{id}/approve"), None, None).await;
    s.call(Some("lead2"), "POST", &format!("/v1/requests/{id}/approve"), None, None).await;
    let webhook = portcullis::notify::Webhook {
        name: None,
        url: format!("http://{address}/hook"),
        secret: "a-secret-of-at-least-16-characters".into(),
        format: portcullis::notify::Format::Slack,
        events: vec![portcullis::notify::EXPIRING.into()],
    };
    // A lead longer than the grant: it is inside its warning window at once.
    let lead = std::time::Duration::from_secs(86_400);
    let warnings = tokio::spawn(portcullis::notify::run_warnings(Arc::clone(&s.workflow), vec![webhook], lead));
    let mut waited = 0;
    while kinds.lock().await.is_empty() && waited < 1000 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(*kinds.lock().await, vec![portcullis::notify::EXPIRING.to_string()]);
    warnings.abort();
    server.abort();
    drop(s);
    close(ledger, thread).await;
}

#[tokio::test]
async fn a_retried_post_with_its_idempotency_key_gets_the_first_answer_again() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;
    let (_, request) = s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), None).await;
    let path = format!("/v1/requests/{}/approve", request["id"].as_str().unwrap());
    let (first_status, first) = s.call(Some("lead1"), "POST", &path, None, Some("approve-1")).await;
    let size = ledger.head().size;
    let (again_status, again) = s.call(Some("lead1"), "POST", &path, None, Some("approve-1")).await;
    assert_eq!((first_status, again_status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(first, again, "the same answer");
    assert_eq!(ledger.head().size, size, "nothing appended by the retry");
    let (status, _) = s.call(Some("lead1"), "POST", &path, None, Some("approve-2")).await;
    assert_eq!(status, StatusCode::CONFLICT, "a new key is a new command");
    let (status, _) = s.call(Some("lead2"), "POST", &path, None, Some("approve-1")).await;
    assert_eq!(status, StatusCode::OK, "keys are per credential");
    drop(s);
    close(ledger, thread).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_glass_grant_reaches_the_webhooks_its_rule_names_whatever_their_filters() {
    use std::sync::Mutex;
    let kinds: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sink = Arc::clone(&kinds);
    let receiver = axum::Router::new().route(
        "/{hook}",
        axum::routing::post(
            move |axum::extract::Path(hook): axum::extract::Path<String>, headers: axum::http::HeaderMap| {
                let sink = Arc::clone(&sink);
                async move {
                    let kind = headers["x-portcullis-event"].to_str().unwrap().to_string();
                    sink.lock().unwrap().push((hook, kind));
                    StatusCode::NO_CONTENT
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, receiver).await });
    let dir = tempfile::tempdir().unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let s = service(dir.path(), ledger.clone()).await;
    let hook = |name: Option<&str>, path: &str| portcullis::notify::Webhook {
        name: name.map(str::to_string),
        url: format!("http://{address}/{path}"),
        secret: "a-secret-of-at-least-16-characters".into(),
        format: portcullis::notify::Format::Generic,
        // Only request.created: the break-glass grant must still reach "security".
        events: vec!["request.created".into()],
    };
    let hooks = vec![hook(Some("security"), "security"), hook(Some("finance"), "finance")];
    let notifier = tokio::spawn(portcullis::notify::run(ledger.clone(), hooks, dir.path().join("cursor")));
    let path = dir.path().join("tokens");
    let oncall = portcullis::auth::create(&path, "pager@example.com", &["oncall".to_string()]).unwrap();
    let s = Service { tokens: [("oncall", oncall)].into_iter().collect(), ..s };
    let s = Service {
        router: app(Arc::new(AppState::new(
            ledger.clone(),
            Some(Arc::clone(&s.workflow)),
            Tokens::load(&path).unwrap(),
        ))),
        ..s
    };
    let body = json!({"cluster": "prod", "namespace": "shop-eu", "kind": "ingresses", "names": ["storefront"],
        "access": "edit", "duration": "30m", "reason": "outage: checkout down", "break_glass": true});
    let (status, created) = s.call(Some("oncall"), "POST", "/v1/requests", Some(body), None).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let start = std::time::Instant::now();
    while kinds.lock().unwrap().len() < 3 {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "{:?}", kinds.lock().unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut got = kinds.lock().unwrap().clone();
    got.sort();
    let expected = [("finance", "request.created"), ("security", "grant.activated"), ("security", "request.created")];
    assert_eq!(got, expected.map(|(h, k)| (h.to_string(), k.to_string())), "only the named webhook gets the grant");
    notifier.abort();
    server.abort();
    drop(s);
    close(ledger, thread).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_gets_a_report_bundle_that_verifies_and_refused_requests_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("log.key");
    portcullis::keyfile::write(&key_path, &signer(1)).unwrap();
    let (ledger, thread) = open(dir.path(), signer(1)).unwrap();
    let mut s = service(dir.path(), ledger.clone()).await;
    let reports = dir.path().join("reports");
    let mut state =
        AppState::new(ledger.clone(), Some(Arc::clone(&s.workflow)), Tokens::load(&dir.path().join("tokens")).unwrap());
    state.reports = Some(portcullis::report::ReportSettings { dir: reports.clone(), key_path, revoke_sla_ms: 1000 });
    s.router = app(Arc::new(state));

    // Given a request approved twice into a grant, then ended early.
    let (_, request) = s.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), None).await;
    let id = request["id"].as_str().unwrap().to_string();
    s.call(Some("lead1"), "POST", &format!("/v1/requests/{id}/approve"), None, None).await;
    let (_, second) = s.call(Some("lead2"), "POST", &format!("/v1/requests/{id}/approve"), None, None).await;
    let grant_id = second["grant"]["id"].as_str().unwrap().to_string();
    let (status, _) = s.call(Some("alice"), "POST", &format!("/v1/grants/{grant_id}/end"), None, None).await;
    assert_eq!(status, StatusCode::OK);
    let size = ledger.head().size;

    // When requests are refused: by someone who is not an admin, or with bad fields.
    let period = json!({"report": "soc2", "from": "2000-01-01", "to": "2100-01-01"});
    let (status, body) = s.call(Some("alice"), "POST", "/v1/reports", Some(period.clone()), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for (body, field) in [
        (json!({"to": "2100-01-01"}), "from"),
        (json!({"from": "2000-01-01", "to": "1999-12-31"}), "to"),
        (json!({"from": "2000-13-01", "to": "2100-01-01"}), "from"),
        (json!({"report": "iso27001", "from": "2000-01-01", "to": "2100-01-01"}), "report"),
        (json!({"from": 2000, "to": "2100-01-01"}), "from"),
        (json!({"from": "2000-01-01", "to": "2100-01-01", "anchor": "not a checkpoint"}), "anchor"),
    ] {
        let (status, answer) = s.call(Some("admin"), "POST", "/v1/reports", Some(body.clone()), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {answer}");
        assert_eq!(answer["field"], field, "{body} -> {answer}");
    }
    // Then nothing was written or recorded.
    let bundles = |dir: &std::path::Path| std::fs::read_dir(dir).map_or(0, |d| d.count());
    assert_eq!(bundles(&reports), 0, "a refused request leaves no bundle, not even a partial one");
    assert_eq!(ledger.head().size, size, "a refused request records nothing");

    // When an admin asks for the period.
    let (status, answer) = s.call(Some("admin"), "POST", "/v1/reports", Some(period), None).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");

    // Then the bundle is in the reports directory and verifies with the log key, with the workflow's rows.
    let path = std::path::PathBuf::from(answer["path"].as_str().unwrap());
    assert!(path.starts_with(&reports), "{answer}");
    let keys = KeySet::new(vec![portcullis_format::keys::PinnedKey::parse(&signer(1).verifier().to_string()).unwrap()]);
    let options = portcullis_verify::report::ReportOptions { keys, anchor: None, witness_policy: None };
    let summary = portcullis_verify::report::verify_report(&path, &options).unwrap();
    let rows = |name: &str| summary.populations.iter().find(|(n, _)| n == name).map(|(_, rows)| *rows);
    assert_eq!(rows("access_requests"), Some(1));
    assert_eq!(rows("approvals"), Some(2));
    assert_eq!(rows("grants"), Some(1));
    assert_eq!(rows("grant_endings"), Some(1));
    assert_eq!(summary.manifest_sha256, answer["manifest_sha256"].as_str().unwrap());
    assert!(!summary.period_closed, "the ledger ends inside the period");

    // And its generation is recorded in the ledger, naming the manifest.
    let seq = answer["event_seq"].as_u64().unwrap();
    assert_eq!(seq, size, "report.generated is the next entry");
    let entry = portcullis::store::Store::entries(ledger.store().as_ref(), seq, 1).unwrap().pop().unwrap();
    let event = portcullis_format::event::ParsedEntry::parse(&entry).unwrap().event;
    assert_eq!(event.draft.kind, "report.generated");
    assert_eq!(event.draft.actor.sub, "root@example.com");
    assert_eq!(event.draft.data.get("manifest_sha256").and_then(|v| v.as_str()), answer["manifest_sha256"].as_str());
    close(ledger, thread).await;
}

/// Two replicas on one PostgreSQL database, each with its own workflow: the
/// same approver's second approval reaches both at once. Decided on states
/// that lack each other's entries, both would activate a grant; the
/// conditional append makes the later one decide again, on the state with
/// the first, and refuse the repeated approval as one replica would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_approvals_on_two_replicas_give_one_grant() {
    use crate::store_contract::{Backend, Postgres};
    const REQUESTS: usize = 8;
    let backend = Postgres::new();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ledger_a, thread_a) = portcullis::ledger::Ledger::open(backend.open(), signer(1), Default::default()).unwrap();
    let (ledger_b, thread_b) = portcullis::ledger::Ledger::open(backend.open(), signer(1), Default::default()).unwrap();
    let a = Arc::new(service(dir_a.path(), ledger_a.clone()).await);
    let b = Arc::new(service(dir_b.path(), ledger_b.clone()).await);
    let mut outcomes = Vec::new();
    for _ in 0..REQUESTS {
        let (status, request) = a.call(Some("alice"), "POST", "/v1/requests", Some(prod_request()), None).await;
        assert_eq!(status, StatusCode::CREATED, "{request}");
        let approve = format!("/v1/requests/{}/approve", request["id"].as_str().unwrap());
        let (status, first) = b.call(Some("lead1"), "POST", &approve, None, None).await;
        assert_eq!(status, StatusCode::OK, "the request made on one replica is approved on the other: {first}");
        let race = |s: Arc<Service>, path: String| {
            tokio::spawn(async move { s.call(Some("lead2"), "POST", &path, None, None).await })
        };
        let (on_a, on_b) = (race(Arc::clone(&a), approve.clone()), race(Arc::clone(&b), approve.clone()));
        let (on_a, on_b) = (on_a.await.unwrap(), on_b.await.unwrap());
        let mut statuses = [on_a.0, on_b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "one approval wins, the other is refused: {on_a:?} {on_b:?}"
        );
        outcomes.push(request["id"].as_str().unwrap().to_string());
    }
    // Then the ledger holds exactly one grant per request, and both replicas list them all.
    let store = Arc::clone(ledger_a.store());
    let entries = tokio::task::spawn_blocking(move || store.entries(0, 1 << 20).unwrap()).await.unwrap();
    let mut grants_per_request: HashMap<String, usize> = HashMap::new();
    for entry in &entries {
        let event = portcullis_format::event::ParsedEntry::parse(entry).unwrap().event;
        if event.draft.kind == "grant.activated" {
            let request = event.draft.data.get("request_id").and_then(|v| v.as_str()).unwrap().to_string();
            *grants_per_request.entry(request).or_default() += 1;
        }
    }
    for request in &outcomes {
        assert_eq!(grants_per_request.get(request), Some(&1), "request {request}: {grants_per_request:?}");
    }
    for s in [&a, &b] {
        let (status, active) = s.call(Some("lead1"), "GET", "/v1/grants?active=true", None, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(active["items"].as_array().unwrap().len(), REQUESTS, "{active}");
    }
    drop((a, b));
    close(ledger_a, thread_a).await;
    close(ledger_b, thread_b).await;
}
