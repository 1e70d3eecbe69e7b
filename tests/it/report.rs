//! SOC 2 report bundles: generated from a ledger holding every kind of
//! workflow and reconciler event, byte-identical on a second run, verified by
//! `portcullis-verify report`, and every tampering caught by its failure code.

use portcullis::ledger::{Ledger, LedgerConfig, SequencerThread};
use portcullis::report::{ReportArgs, generate, generated_event};
use portcullis::store::Store;
use portcullis::store::sqlite::SqliteStore;
use portcullis_format::event::{Actor, EventId};
use portcullis_format::keys::{KeySet, PinnedKey};
use portcullis_format::note::SignerKey;
use portcullis_format::time::Timestamp;
use portcullis_projections::cluster::{
    BindingApplied, BindingRemoved, Drift, FieldManager, Observation, RouteChanged, SpecChange, StandingAccess,
    StandingBinding,
};
use portcullis_projections::events::{
    Basis, BreakGlassReviewed, ExtensionDecision, ExtensionRequested, GrantActivated, GrantClosed, GrantExtended,
    Payload, PolicyLoaded, PolicyProposed, RequestCreated, RequestDecision, TargetData,
};
use portcullis_projections::types::{Access, Kind};
use portcullis_verify::report::{ReportFailure, ReportOptions, ReportSummary, verify_report};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const ORIGIN: &str = "portcullis.test/report";

fn key(seed: u8) -> SignerKey {
    SignerKey::from_seed(ORIGIN, &[seed; 32]).unwrap()
}

pub(crate) fn person(sub: &str) -> Actor {
    Actor { sub: sub.into(), groups: vec!["web".into()], via: "token".into() }
}

fn basis() -> Basis {
    Basis { rule: "web-edit".into(), policy_hash: "ab".repeat(32) }
}

fn target(name: &str) -> TargetData {
    TargetData {
        cluster: "prod".into(),
        namespace: "shop".into(),
        kind: Kind::Ingresses,
        names: vec![name.into()],
        access: Access::Edit,
    }
}

/// Appends workflow events and observations to a ledger (also used by `python_verifier`).
pub(crate) struct Builder {
    pub(crate) ledger: Ledger,
}

impl Builder {
    async fn payload(&self, actor: &str, payload: Payload) -> String {
        let id = EventId::random().unwrap();
        self.ledger.append(payload.to_draft(id, &person(actor))).await.unwrap();
        id.to_string()
    }

    async fn observe(&self, observation: Observation) {
        let draft = observation.to_draft(EventId::random().unwrap(), &Actor::system());
        self.ledger.append(draft).await.unwrap();
    }

    pub(crate) async fn request(&self, requester: &str, name: &str, approvals: u32, break_glass: bool) -> String {
        self.payload(
            requester,
            Payload::RequestCreated(RequestCreated {
                target: target(name),
                duration_secs: 1800,
                reason: format!("INC-1: fix \"{name}\", now"),
                ticket: Some("INC-1".into()),
                break_glass,
                approvals_needed: approvals,
                pending_expires_at: "2099-01-01T00:00:00.000000Z".into(),
                basis: basis(),
            }),
        )
        .await
    }

    pub(crate) async fn approve(&self, approver: &str, request: &str) {
        let decision = RequestDecision { request_id: request.into(), comment: Some("ok".into()), basis: basis() };
        self.payload(approver, Payload::RequestApproved(decision)).await;
    }

    pub(crate) async fn grant(&self, request: &str, requester: &str, approvers: &[&str], break_glass: bool) -> String {
        self.payload(
            "system:portcullis",
            Payload::GrantActivated(GrantActivated {
                request_id: request.into(),
                requester: requester.into(),
                target: target("storefront"),
                starts_at: Timestamp::now().to_string(),
                expires_at: "2099-01-01T00:30:00.000000Z".into(),
                approvers: approvers.iter().map(|a| a.to_string()).collect(),
                break_glass,
                review_due: break_glass.then(|| "2099-01-02T00:00:00.000000Z".into()),
                rbac: portcullis_projections::rbac::effective_rules(&target("storefront").to_target().unwrap()),
                basis: basis(),
                credential: None,
                notify: Vec::new(),
            }),
        )
        .await
    }

    async fn removed(&self, grant: &str, cause: &str, latency_ms: i64) {
        self.observe(Observation::BindingRemoved(BindingRemoved {
            grant_id: grant.into(),
            cluster: "prod".into(),
            namespace: "shop".into(),
            name: format!("portcullis-{grant}"),
            cause: cause.into(),
            due_at: "2026-11-28T10:00:00.000000Z".into(),
            observed_at: "2026-11-28T10:00:00.300000Z".into(),
            latency_ms,
            resource_version: Some("7".into()),
        }))
        .await;
    }

    async fn route(&self, grants: Vec<String>) {
        self.observe(Observation::RouteChanged(RouteChanged {
            cluster: "prod".into(),
            namespace: "shop".into(),
            kind: "ingresses".into(),
            name: "storefront".into(),
            change: "modified".into(),
            resource_version: "12".into(),
            diff: vec![SpecChange {
                path: "/tls/0/hosts/0".into(),
                from: Some("\"a\"".into()),
                to: Some("\"b\"".into()),
            }],
            spec: "{}".into(),
            managers: vec![FieldManager { manager: "kubectl-edit".into(), operation: "Update".into(), time: None }],
            grants,
            observed_at: Timestamp::now().to_string(),
        }))
        .await;
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    ledger: Ledger,
    thread: SequencerThread,
    store: Arc<dyn Store>,
    /// The key in force at the end (the ledger rotates once inside the period).
    signer: SignerKey,
    args: ReportArgs,
}

pub(crate) async fn pause() {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
}

/// A ledger with events before, inside and after the period; inside it, every
/// kind the report reads, including one exception for each control.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&data.join("ledger.db")).unwrap());
    let (ledger, thread) = Ledger::open(Arc::clone(&store), key(1), LedgerConfig::default()).unwrap();
    let b = Builder { ledger: ledger.clone() };
    let early = b.request("erin", "storefront", 1, false).await;
    b.approve("lead1", &early).await;
    pause().await;
    let from = Timestamp::now();
    pause().await;

    // An approved grant with an extension, ended early, removed in time.
    let r1 = b.request("alice", "storefront", 2, false).await;
    b.approve("lead1", &r1).await;
    b.approve("lead2", &r1).await;
    let g1 = b.grant(&r1, "alice", &["lead1", "lead2"], false).await;
    b.observe(Observation::BindingApplied(BindingApplied {
        grant_id: g1.clone(),
        cluster: "prod".into(),
        namespace: "shop".into(),
        name: format!("portcullis-{g1}"),
        subject: "alice".into(),
        expires_at: "2099-01-01T00:30:00.000000Z".into(),
        resource_version: "3".into(),
        observed_at: Timestamp::now().to_string(),
    }))
    .await;
    let extension = b
        .payload(
            "alice",
            Payload::ExtensionRequested(ExtensionRequested {
                grant_id: g1.clone(),
                duration_secs: 600,
                reason: "more time".into(),
                approvals_needed: 1,
                basis: basis(),
            }),
        )
        .await;
    let decision =
        ExtensionDecision { grant_id: g1.clone(), extension_id: extension.clone(), comment: None, basis: basis() };
    b.payload("lead1", Payload::ExtensionApproved(decision)).await;
    b.payload(
        "system:portcullis",
        Payload::GrantExtended(GrantExtended {
            grant_id: g1.clone(),
            extension_id: extension,
            expires_at: "2099-01-01T00:40:00.000000Z".into(),
        }),
    )
    .await;
    b.route(vec![g1.clone()]).await;
    b.payload("alice", Payload::GrantEnded(GrantClosed { grant_id: g1.clone(), comment: Some("done".into()) })).await;
    b.removed(&g1, "ended", 300).await;

    // The earlier request's grant: approval before the period.
    let g0 = b.grant(&early, "erin", &["lead1"], false).await;
    b.payload("system:portcullis", Payload::GrantExpired(GrantClosed { grant_id: g0.clone(), comment: None })).await;
    b.removed(&g0, "expired", 40).await;

    // A self-approval, so a grant without a valid approval, removed late.
    let r2 = b.request("bob", "storefront", 1, false).await;
    b.approve("bob", &r2).await;
    let g2 = b.grant(&r2, "bob", &["bob"], false).await;
    b.payload("system:portcullis", Payload::GrantExpired(GrantClosed { grant_id: g2.clone(), comment: None })).await;
    b.removed(&g2, "expired", 2500).await;

    // The log key rotates inside the period.
    b.ledger.rotate_key(key(2), person("admin1")).await.unwrap();

    // Break-glass: one reviewed (and revoked), one never reviewed.
    let r3 = b.request("carol", "storefront", 0, true).await;
    let g3 = b.grant(&r3, "carol", &[], true).await;
    let r4 = b.request("dave", "storefront", 0, true).await;
    let g4 = b.grant(&r4, "dave", &[], true).await;
    b.payload(
        "lead1",
        Payload::BreakGlassReviewed(BreakGlassReviewed { grant_id: g4.clone(), comment: "justified".into() }),
    )
    .await;
    b.payload("lead1", Payload::GrantRevoked(GrantClosed { grant_id: g4.clone(), comment: Some("over".into()) })).await;
    // A second review of the same use is a row of its own.
    b.payload(
        "lead2",
        Payload::BreakGlassReviewed(BreakGlassReviewed { grant_id: g4.clone(), comment: "agreed".into() }),
    )
    .await;
    let _ = g3;

    // A denial, a route change nobody was granted, drift, standing access, a policy change.
    let r5 = b.request("frank", "checkout", 1, false).await;
    let denial = RequestDecision { request_id: r5, comment: Some("no ticket".into()), basis: basis() };
    b.payload("lead2", Payload::RequestDenied(denial)).await;
    b.route(Vec::new()).await;
    b.observe(Observation::Drift(Drift {
        cluster: "prod".into(),
        namespace: "shop".into(),
        object_kind: "RoleBinding".into(),
        name: "portcullis-x".into(),
        grant_id: None,
        action: "removed".into(),
        detail: "no active grant justifies it".into(),
        resource_version: "20".into(),
        observed_at: Timestamp::now().to_string(),
    }))
    .await;
    b.observe(Observation::StandingAccess(StandingAccess {
        cluster: "prod".into(),
        found: vec![StandingBinding {
            binding_kind: "ClusterRoleBinding".into(),
            namespace: String::new(),
            name: "ops-admin".into(),
            role: "ClusterRole/admin".into(),
            subjects: vec!["Group:ops".into()],
            kinds: vec!["ingresses.networking.k8s.io".into()],
        }],
        gone: vec!["RoleBinding/shop/old".into()],
        observed_at: Timestamp::now().to_string(),
    }))
    .await;
    b.payload(
        "admin1",
        Payload::PolicyProposed(PolicyProposed { policy_hash: "cd".repeat(32), text: "rules: []".into() }),
    )
    .await;
    b.payload(
        "admin2",
        Payload::PolicyLoaded(PolicyLoaded {
            policy_hash: "cd".repeat(32),
            text: "rules: []".into(),
            proposed_by: Some("admin1".into()),
            approved_by: Some("admin2".into()),
        }),
    )
    .await;
    // A grant.activated whose data the report cannot read: an exception, not silence.
    let unreadable = portcullis_format::event::EventDraft {
        id: EventId::random().unwrap(),
        kind: "grant.activated".into(),
        v: 1,
        actor: person("mallory"),
        data: portcullis_format::json::Json::Obj(vec![(
            "request_id".into(),
            portcullis_format::json::Json::Str("r".into()),
        )]),
    };
    ledger.append(unreadable).await.unwrap();
    pause().await;
    let to = Timestamp::now();
    pause().await;
    b.request("gina", "storefront", 1, false).await;
    b.request("hank", "storefront", 1, false).await;
    ledger.checkpoint().await.unwrap();
    let args = ReportArgs { from, to, revoke_sla_ms: 1000, anchor: None };
    Fixture { _dir: dir, data, ledger, thread, store, signer: key(2), args }
}

fn pinned() -> KeySet {
    KeySet::new(vec![PinnedKey::parse(&key(1).verifier().to_string()).unwrap()])
}

fn verify(dir: &Path) -> Result<ReportSummary, ReportFailure> {
    verify_report(dir, &ReportOptions { keys: pinned(), anchor: None, witness_policy: None })
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

pub(crate) fn copy(from: &Path, to: &Path) {
    for (name, bytes) in files(from) {
        let path = to.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn edit(dir: &Path, file: &str, change: impl FnOnce(String) -> String) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = change(text.clone());
    assert_ne!(changed, text, "the edit of {file} changed nothing");
    std::fs::write(path, changed).unwrap();
}

fn code(result: Result<ReportSummary, ReportFailure>) -> ReportFailure {
    match result {
        Ok(_) => panic!("the tampered bundle verified"),
        Err(failure) => failure,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_bundle_is_deterministic_verifies_and_every_tampering_is_caught() {
    let f = fixture().await;
    let out = tempfile::tempdir().unwrap();
    let first = out.path().join("first");
    let generated = generate(f.store.as_ref(), &f.signer, &f.args, &first).unwrap();
    assert!(generated.period_closed);

    // The generation is recorded; the ledger grows, the bundle does not change.
    let draft = generated_event(&generated, &f.args, "first", EventId::random().unwrap(), &person("auditor-helper"));
    let receipt = f.ledger.append(draft).await.unwrap();
    let entry = f.store.entries(receipt.seq, 1).unwrap().pop().unwrap();
    assert!(String::from_utf8_lossy(&entry).contains(&generated.manifest_sha256));
    f.ledger.checkpoint().await.unwrap();
    let second = out.path().join("second");
    generate(f.store.as_ref(), &f.signer, &f.args, &second).unwrap();
    assert_eq!(files(&first), files(&second), "the same ledger and arguments gave different bundles");

    // It verifies, and the figures are the ones the events say.
    let summary = verify(&first).unwrap();
    let controls: Vec<(String, usize)> = summary.controls.clone();
    assert_eq!(
        controls,
        vec![("CC6.1".into(), 2), ("CC6.2".into(), 2), ("CC6.3".into(), 1), ("CC7.2".into(), 1), ("CC8.1".into(), 1)]
    );
    let rows = |name: &str| summary.populations.iter().find(|(n, _)| n == name).unwrap().1;
    assert_eq!(rows("access_requests"), 5);
    assert_eq!(rows("approvals"), 4);
    assert_eq!(rows("grants"), 5);
    assert_eq!(rows("removals"), 3);
    assert_eq!(rows("break_glass"), 3);
    assert_eq!(rows("route_changes"), 2);
    assert_eq!(rows("key_rotations"), 1);
    assert_eq!(rows("cluster_findings"), 3);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(first.join("report.json")).unwrap()).unwrap();
    let codes: Vec<&str> = report["controls"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["exceptions"].as_array().unwrap().iter().map(|e| e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            "grant-without-approval",
            "unreadable-event",
            "self-approval",
            "self-approval",
            "removal-late",
            "break-glass-unreviewed",
            "route-change-without-grant"
        ]
    );
    // report.json is valid under its published JSON Schema (and the check can fail).
    let schema: serde_json::Value = serde_json::from_str(include_str!("../../schemas/report.schema.json")).unwrap();
    assert_eq!(schema_violation(&schema, &schema, &report, ""), None);
    let mut broken = report.clone();
    broken["controls"][0]["exceptions"][0]["code"] = serde_json::json!("made-up");
    assert!(
        schema_violation(&schema, &schema, &broken, "").is_some_and(|v| v.contains("/controls/0/exceptions/0/code"))
    );
    let grants = std::fs::read_to_string(first.join("populations/grants.csv")).unwrap();
    assert!(grants.lines().nth(1).unwrap().contains(",2099-01-01T00:40:00.000000Z,"), "{grants}");
    assert!(grants.contains(",before-period,"));
    let html = std::fs::read_to_string(first.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 2, "two inline charts");
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("https://"));

    // Each tampering, caught by name.
    let tamper = |name: &str, change: &dyn Fn(&Path)| -> ReportFailure {
        let dir = out.path().join(name);
        copy(&first, &dir);
        change(&dir);
        code(verify(&dir))
    };
    let altered = tamper("altered-row", &|d| edit(d, "populations/removals.csv", |t| t.replacen(",2500,", ",250,", 1)));
    assert_eq!(altered.code, "csv");
    assert_eq!(altered.differences[0].file, "populations/removals.csv");
    assert!(altered.differences[0].seq.is_some(), "{altered:?}");
    let dropped = tamper("dropped-row", &|d| {
        edit(d, "populations/approvals.csv", |t| {
            let mut lines: Vec<&str> = t.split_inclusive("\r\n").collect();
            lines.remove(2);
            lines.concat()
        })
    });
    assert_eq!(
        (dropped.code, dropped.differences[0].file.as_str(), dropped.differences[0].row),
        ("csv", "populations/approvals.csv", 3)
    );
    let html_figure = tamper("html-figure", &|d| {
        edit(d, "report.html", |t| {
            t.replacen("data-figure=\"CC6.3.removals\">3<", "data-figure=\"CC6.3.removals\">2<", 1)
        })
    });
    assert_eq!((html_figure.code, html_figure.differences[0].file.as_str()), ("report-html", "report.html"));
    let json_figure = tamper("json-figure", &|d| {
        edit(d, "report.json", |t| {
            let mut v: serde_json::Value = serde_json::from_str(&t).unwrap();
            v["controls"][2]["figures"][3]["value"] = serde_json::json!(2);
            serde_json::to_string_pretty(&v).unwrap() + "\n"
        })
    });
    assert_eq!((json_figure.code, json_figure.differences[0].file.as_str()), ("report-json", "report.json"));
    let later = f.store.latest_checkpoint().unwrap().unwrap().1;
    let swapped = tamper("swapped-checkpoint", &|d| std::fs::write(d.join("checkpoint"), &later).unwrap());
    assert_eq!(swapped.code, "proof", "{swapped:?}");
    let cut = tamper("cut-boundaries", &|d| {
        let bytes = std::fs::read(d.join("entries")).unwrap();
        let entries = portcullis_projections::report::bundle::decode_entries(&bytes).unwrap();
        let inner =
            portcullis_projections::report::bundle::encode_entries(entries[1..entries.len() - 1].iter().copied());
        std::fs::write(d.join("entries"), inner).unwrap();
    });
    assert_eq!(cut.code, "boundary", "{cut:?}");
    let cut_end = tamper("cut-end-boundary", &|d| {
        let bytes = std::fs::read(d.join("entries")).unwrap();
        let entries = portcullis_projections::report::bundle::decode_entries(&bytes).unwrap();
        let inner =
            portcullis_projections::report::bundle::encode_entries(entries[..entries.len() - 1].iter().copied());
        std::fs::write(d.join("entries"), inner).unwrap();
    });
    assert_eq!(cut_end.code, "boundary", "{cut_end:?}");
    let entry = tamper("edited-entry", &|d| {
        let mut bytes = std::fs::read(d.join("entries")).unwrap();
        let at = bytes.windows(5).position(|w| w == b"alice").unwrap();
        bytes[at] = b'A';
        std::fs::write(d.join("entries"), bytes).unwrap();
    });
    assert_eq!(entry.code, "signature");
    let extra = tamper("extra-file", &|d| std::fs::write(d.join("populations/extra.csv"), "a\r\n").unwrap());
    assert_eq!(extra.code, "layout");
    // A row added at the end of a population: reported as found where nothing was expected.
    let added = tamper("added-row", &|d| edit(d, "populations/grant_endings.csv", |t| t + "999,x,y\r\n"));
    let last = added.differences.last().unwrap();
    assert_eq!((added.code, last.expected.as_deref(), last.found.as_deref()), ("csv", None, Some("999,x,y")));
    // A line end changed: the same text, other bytes.
    let line_end = tamper("line-end", &|d| edit(d, "populations/approvals.csv", |t| t.replacen("\r\n", "\n", 1)));
    assert_eq!((line_end.code, line_end.differences[0].row), ("csv", 1));
    let missing = tamper("missing-population", &|d| std::fs::remove_file(d.join("populations/removals.csv")).unwrap());
    assert_eq!((missing.code, missing.file.as_deref()), ("layout", Some("populations/removals.csv")));
    let truncated = tamper("truncated-entries", &|d| {
        let bytes = std::fs::read(d.join("entries")).unwrap();
        std::fs::write(d.join("entries"), &bytes[..bytes.len() - 7]).unwrap();
    });
    assert_eq!(truncated.code, "entry-syntax", "{truncated:?}");
    let empty = tamper("no-entries", &|d| std::fs::write(d.join("entries"), b"").unwrap());
    assert_eq!(empty.code, "boundary", "{empty:?}");
    let wrong_key = verify_report(
        &first,
        &ReportOptions {
            keys: KeySet::new(vec![PinnedKey::parse(&key(9).verifier().to_string()).unwrap()]),
            anchor: None,
            witness_policy: None,
        },
    );
    assert_eq!(code(wrong_key).code, "key-not-in-force");

    // An anchor the auditor pinned before the period: the bundle carries the proof from it.
    let anchor_size = generated.first_seq;
    let anchor_note = {
        let root =
            portcullis_format::merkle::range_hash(&portcullis::store::NodeReader(f.store.as_ref()), 0, anchor_size)
                .unwrap();
        portcullis_format::checkpoint::Checkpoint { origin: ORIGIN.into(), size: anchor_size, root }.sign(&key(1))
    };
    let anchored = out.path().join("anchored");
    let args = ReportArgs { anchor: Some(anchor_note.clone()), ..f.args.clone() };
    generate(f.store.as_ref(), &f.signer, &args, &anchored).unwrap();
    let with_anchor = |dir: &Path, anchor: &str| {
        verify_report(
            dir,
            &ReportOptions { keys: pinned(), anchor: Some(anchor.as_bytes().to_vec()), witness_policy: None },
        )
    };
    assert_eq!(with_anchor(&anchored, &anchor_note).unwrap().anchor_size, Some(anchor_size));
    assert_eq!(code(with_anchor(&first, &anchor_note)).code, "anchor");
    let forked =
        portcullis_format::checkpoint::Checkpoint { origin: ORIGIN.into(), size: anchor_size, root: [7u8; 32] }
            .sign(&key(1));
    assert_eq!(code(with_anchor(&anchored, &forked)).code, "fork");
    let big = generated.checkpoint_size + 100;
    let ahead =
        portcullis_format::checkpoint::Checkpoint { origin: ORIGIN.into(), size: big, root: [7u8; 32] }.sign(&key(1));
    assert_eq!(code(with_anchor(&first, &ahead)).code, "truncation");

    // Bad arguments change nothing.
    let refused = out.path().join("refused");
    let reversed = ReportArgs { from: f.args.to, to: f.args.from, ..f.args.clone() };
    assert!(generate(f.store.as_ref(), &f.signer, &reversed, &refused).is_err());
    let foreign = ReportArgs { anchor: Some(forked), ..f.args.clone() };
    assert!(generate(f.store.as_ref(), &f.signer, &foreign, &refused).is_err());
    assert!(generate(f.store.as_ref(), &f.signer, &f.args, &first).is_err(), "an existing bundle was overwritten");
    assert!(!refused.exists());
    let _ = &f.data;
    f.ledger.close().await;
    drop(f.ledger);
    tokio::task::spawn_blocking(move || f.thread.join()).await.unwrap();
}

/// The first place where `value` breaks `schema`, checked with the part of
/// JSON Schema that `schemas/report.schema.json` uses: `$ref` into `$defs`,
/// `const`, `enum`, `type`, `minimum`, `pattern`, `required`, `properties`,
/// `additionalProperties: false` and `items`.
fn schema_violation(
    schema: &serde_json::Value,
    root: &serde_json::Value,
    value: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value;
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.strip_prefix("#/$defs/").expect("only local references");
        if let Some(violation) = schema_violation(&root["$defs"][name], root, value, path) {
            return Some(violation);
        }
    }
    if schema.get("const").is_some_and(|c| c != value) {
        return Some(format!("{path}: {value} is not the constant"));
    }
    if schema.get("enum").and_then(Value::as_array).is_some_and(|e| !e.contains(value)) {
        return Some(format!("{path}: {value} is not one of the listed values"));
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            other => other.as_array().into_iter().flatten().filter_map(Value::as_str).collect(),
        };
        let fits = |t: &str| match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        };
        if !types.iter().any(|t| fits(t)) {
            return Some(format!("{path}: {value} is not of type {types:?}"));
        }
    }
    if let (Some(minimum), Some(n)) = (schema.get("minimum").and_then(Value::as_i64), value.as_i64())
        && n < minimum
    {
        return Some(format!("{path}: {n} is below {minimum}"));
    }
    if let (Some(pattern), Some(text)) = (schema.get("pattern").and_then(Value::as_str), value.as_str())
        && !regex::Regex::new(pattern).unwrap().is_match(text)
    {
        return Some(format!("{path}: {text:?} does not match {pattern}"));
    }
    if let Some(object) = value.as_object() {
        for key in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !object.contains_key(key) {
                return Some(format!("{path}: {key} is missing"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (key, member) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(sub) => {
                    if let Some(violation) = schema_violation(sub, root, member, &format!("{path}/{key}")) {
                        return Some(violation);
                    }
                }
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Some(format!("{path}: {key} is not allowed"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            if let Some(violation) = schema_violation(items, root, item, &format!("{path}/{i}")) {
                return Some(violation);
            }
        }
    }
    None
}
