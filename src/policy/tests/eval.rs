//! Evaluation: which rule applies, the request checks, approvers, admins, hash.

use super::{actor, parsed, span, target};
use crate::domain::types::{Access, Kind};
use crate::policy::{Denial, Policy};

/// Rules, in order: shop edits approved by leads; a broader view rule for web;
/// break-glass for on-call; staging self-service for engineering, whole kinds allowed.
const POLICY: &str = r#"version: 1
rules:
  - name: shop-edit
    match: {clusters: [prod], namespaces: ["shop-*"], kinds: [ingresses, httproutes], access: [view, edit]}
    requesters: {groups: [web], users: [dana]}
    approvers: {groups: [leads], users: [lee], min: 2}
    max_duration: 2h
    reason: {min_length: 10}
    ticket: {required: true, pattern: "INC-[0-9]+"}
  - name: web-view
    match: {clusters: [prod], namespaces: ["*"], kinds: [ingresses, httproutes], access: [view]}
    requesters: {groups: [web, support]}
    approvers: {groups: [leads]}
    max_duration: 8h
    reason: {required: false}
  - name: break-glass
    match: {clusters: [prod], namespaces: ["*"], kinds: [ingresses, httproutes], access: [edit]}
    requesters: {groups: [oncall]}
    break_glass: {max_duration: 30m, notify: [security]}
  - name: staging
    match: {clusters: [staging], namespaces: ["team-?"], kinds: [ingresses], access: [view, edit], all_objects: true}
    requesters: {groups: [engineering]}
    auto_approve: true
    max_duration: 8h
    reason: {required: false}
admins: {groups: [platform-admins], users: [root]}
"#;

fn policy() -> Policy {
    parsed(POLICY)
}

fn rule_for(
    policy: &Policy,
    target: &crate::domain::types::Target,
    who: &[&str],
    break_glass: bool,
) -> Result<String, Denial> {
    policy.match_request(target, &actor("someone", who), break_glass).map(|rule| rule.name().to_string())
}

#[test]
fn requests_no_rule_covers_are_denied_by_default() {
    let policy = policy();
    let denial = rule_for(&policy, &target("dev", "shop-1", Kind::Ingresses, &["a"], Access::View), &["web"], false)
        .unwrap_err();
    assert_eq!(denial.field, None);
    assert_eq!(denial.rule, None);
    assert_eq!(
        denial.reason,
        "no rule matches view access to ingresses in namespace shop-1 of cluster dev: access is denied by default"
    );
    let gateways = target("prod", "shop-1", Kind::Gateways, &["a"], Access::View);
    assert!(rule_for(&policy, &gateways, &["web"], false).is_err());
    let manage = target("prod", "shop-1", Kind::Ingresses, &["a"], Access::Manage);
    assert!(rule_for(&policy, &manage, &["web"], false).is_err());
    let empty = Policy::parse("version: 1\nrules: []\nadmins: {users: [root]}\n").unwrap();
    assert!(rule_for(&empty, &manage, &["web"], false).is_err());
}

#[test]
fn the_first_matching_rule_wins() {
    let policy = policy();
    let view_shop = target("prod", "shop-1", Kind::Ingresses, &["storefront"], Access::View);
    assert_eq!(rule_for(&policy, &view_shop, &["web"], false).unwrap(), "shop-edit");
    // Not a requester of the first rule, so the next rule that lists them decides.
    assert_eq!(rule_for(&policy, &view_shop, &["support"], false).unwrap(), "web-view");
}

#[test]
fn namespace_globs_decide_which_rule_matches() {
    let policy = policy();
    let edit = |namespace: &str| target("prod", namespace, Kind::Httproutes, &["route"], Access::Edit);
    assert_eq!(rule_for(&policy, &edit("shop-eu"), &["web"], false).unwrap(), "shop-edit");
    assert!(rule_for(&policy, &edit("workshop-eu"), &["web"], false).is_err());
    let staging = |namespace: &str| target("staging", namespace, Kind::Ingresses, &[], Access::Edit);
    assert_eq!(rule_for(&policy, &staging("team-a"), &["engineering"], false).unwrap(), "staging");
    assert!(rule_for(&policy, &staging("team-ab"), &["engineering"], false).is_err());
}

#[test]
fn requesters_are_matched_by_user_and_by_group() {
    let policy = policy();
    let edit = target("prod", "shop-1", Kind::Ingresses, &["storefront"], Access::Edit);
    assert_eq!(policy.match_request(&edit, &actor("dana", &[]), false).unwrap().name(), "shop-edit");
    assert_eq!(policy.match_request(&edit, &actor("erin", &["other", "web"]), false).unwrap().name(), "shop-edit");
    let denial = policy.match_request(&edit, &actor("web", &["dana"]), false).unwrap_err();
    assert_eq!(
        denial.reason,
        "rule \"shop-edit\" matches edit access to ingresses in namespace shop-1 of cluster prod but you are not among its requesters"
    );
    let view = target("prod", "shop-1", Kind::Ingresses, &["storefront"], Access::View);
    let denial = policy.match_request(&view, &actor("mallory", &["sales"]), false).unwrap_err();
    assert!(denial.reason.starts_with("rules \"shop-edit\", \"web-view\" match view access"), "{denial}");
}

#[test]
fn object_names_are_required_unless_the_rule_allows_all_objects() {
    let policy = policy();
    let every_ingress = target("prod", "shop-1", Kind::Ingresses, &[], Access::Edit);
    let denial = rule_for(&policy, &every_ingress, &["web"], false).unwrap_err();
    assert_eq!(denial.field.as_deref(), Some("names"));
    assert_eq!(denial.rule.as_deref(), Some("shop-edit"));
    assert!(denial.to_string().starts_with("names: rule \"shop-edit\" does not allow"), "{denial}");
    let every_staging_ingress = target("staging", "team-a", Kind::Ingresses, &[], Access::View);
    assert_eq!(rule_for(&policy, &every_staging_ingress, &["engineering"], false).unwrap(), "staging");
}

#[test]
fn break_glass_only_considers_break_glass_rules() {
    let policy = policy();
    let edit = target("prod", "shop-1", Kind::Ingresses, &["storefront"], Access::Edit);
    // The first rule covers the target and lists web, but it has no break-glass.
    assert_eq!(rule_for(&policy, &edit, &["web", "oncall"], true).unwrap(), "break-glass");
    let denial = rule_for(&policy, &edit, &["web"], true).unwrap_err();
    assert!(denial.reason.starts_with("break-glass rule \"break-glass\" matches"), "{denial}");
    // A normal request never lands on a break-glass-only rule.
    let elsewhere = target("prod", "payments", Kind::Ingresses, &["api"], Access::Edit);
    let denial = rule_for(&policy, &elsewhere, &["oncall"], false).unwrap_err();
    assert!(denial.reason.starts_with("no rule matches"), "{denial}");
    let view = target("prod", "shop-1", Kind::Ingresses, &["storefront"], Access::View);
    let denial = rule_for(&policy, &view, &["oncall"], true).unwrap_err();
    assert!(denial.reason.starts_with("no break-glass rule matches"), "{denial}");
}

#[test]
fn durations_beyond_the_rule_are_denied_naming_the_field() {
    let policy = policy();
    let shop = policy.rule("shop-edit").unwrap();
    assert_eq!(shop.check_request(span("2h"), "rollback of bad release", Some("INC-1"), false), Ok(()));
    let denial = shop.check_request(span("2h1s"), "rollback of bad release", Some("INC-1"), false).unwrap_err();
    assert_eq!(denial.field.as_deref(), Some("duration"));
    assert_eq!(denial.rule.as_deref(), Some("shop-edit"));
    assert_eq!(denial.to_string(), "duration: 2h1s is longer than the 2h that rule \"shop-edit\" allows");
    let glass = policy.rule("break-glass").unwrap();
    assert_eq!(glass.check_request(span("30m"), "outage", None, true), Ok(()));
    let denial = glass.check_request(span("31m"), "outage", None, true).unwrap_err();
    assert_eq!(denial.field.as_deref(), Some("duration"));
    assert!(denial.reason.ends_with("for break-glass"), "{denial}");
    // The kind of request the rule does not offer is refused outright.
    assert_eq!(glass.check_request(span("10m"), "outage", None, false).unwrap_err().field, None);
    assert_eq!(
        shop.check_request(span("10m"), "rollback of bad release", Some("INC-1"), true).unwrap_err().field,
        None
    );
}

#[test]
fn reasons_are_checked_naming_the_field() {
    let policy = policy();
    let shop = policy.rule("shop-edit").unwrap();
    for reason in ["", "   "] {
        let denial = shop.check_request(span("1h"), reason, Some("INC-1"), false).unwrap_err();
        assert_eq!(denial.field.as_deref(), Some("reason"), "{reason:?}");
    }
    // Counted in characters, after trimming: eight characters are two too few.
    let denial = shop.check_request(span("1h"), "  héllo wö  ", Some("INC-1"), false).unwrap_err();
    assert_eq!(denial.field.as_deref(), Some("reason"));
    assert_eq!(denial.reason, "the reason is 8 characters long but rule \"shop-edit\" requires at least 10");
    assert_eq!(shop.check_request(span("1h"), "héllo wörld", Some("INC-1"), false), Ok(()));
    let view = policy.rule("web-view").unwrap();
    assert_eq!(view.check_request(span("1h"), "", None, false), Ok(()));
    // Break-glass always needs a reason, whatever the rule says.
    let staging_glass = Policy::parse(
        "version: 1\nrules:\n  - name: g\n    match: {clusters: [a], namespaces: [\"*\"], kinds: [ingresses], access: [edit]}\n    requesters: {users: [u]}\n    reason: {required: false}\n    break_glass: {max_duration: 1h, notify: [sec]}\nadmins: {users: [root]}\n",
    )
    .unwrap();
    let denial = staging_glass.rules()[0].check_request(span("1h"), " ", None, true).unwrap_err();
    assert_eq!(denial.to_string(), "reason: a reason is required for break-glass");
}

#[test]
fn tickets_are_checked_against_the_whole_pattern_naming_the_field() {
    let policy = policy();
    let shop = policy.rule("shop-edit").unwrap();
    let check = |ticket: Option<&str>| shop.check_request(span("1h"), "rollback of bad release", ticket, false);
    assert_eq!(check(Some("INC-42")), Ok(()));
    for missing in [None, Some(""), Some("  ")] {
        let denial = check(missing).unwrap_err();
        assert_eq!(denial.field.as_deref(), Some("ticket"), "{missing:?}");
        assert_eq!(denial.reason, "rule \"shop-edit\" requires a ticket");
    }
    for bad in ["INC-", "XINC-42", "INC-42x", "inc-42", "INC-42\n"] {
        let denial = check(Some(bad)).unwrap_err();
        assert_eq!(denial.field.as_deref(), Some("ticket"), "{bad:?}");
        assert!(denial.reason.contains("does not match the pattern \"INC-[0-9]+\""), "{denial}");
    }
    let view = policy.rule("web-view").unwrap();
    assert_eq!(view.check_request(span("1h"), "", Some("anything"), false), Ok(()));
}

#[test]
fn approvers_and_admins_come_from_the_policy() {
    let policy = policy();
    let shop = policy.rule("shop-edit").unwrap();
    assert!(shop.may_approve(&actor("lee", &[])));
    assert!(shop.may_approve(&actor("kim", &["leads"])));
    assert!(!shop.may_approve(&actor("dana", &["web"])));
    assert!(!shop.may_approve(&actor("root", &["platform-admins"])), "admins are not approvers");
    assert_eq!(shop.approvals_needed(), 2);
    assert_eq!(policy.rule("web-view").unwrap().approvals_needed(), 1);
    assert_eq!(policy.rule("staging").unwrap().approvals_needed(), 0);
    assert!(!policy.rule("staging").unwrap().may_approve(&actor("lee", &["leads"])));
    assert_eq!(policy.rule("break-glass").unwrap().approvals_needed(), u32::MAX);
    assert!(policy.is_admin(&actor("root", &[])));
    assert!(policy.is_admin(&actor("pat", &["platform-admins"])));
    assert!(!policy.is_admin(&actor("lee", &["leads"])));
    assert!(policy.rule("missing").is_none());
}

#[test]
fn the_hash_is_over_the_exact_bytes() {
    let text = "version: 1\nrules: []\nadmins: {groups: [a]}\n";
    let policy = parsed(text);
    assert_eq!(policy.hash_hex(), "4a868e37f433ef3a423140a30de9e21b1666776e5ec79fc32de42c3f7ac0b3e1");
    assert_eq!(policy.text(), text);
    let spaced = parsed(&text.replace("rules: []", "rules:  []"));
    assert_ne!(spaced.hash(), policy.hash());
    assert_ne!(spaced, policy);
    let commented = parsed(&format!("# a comment\n{text}"));
    assert_ne!(commented.hash(), policy.hash());
    assert_eq!(parsed(text).hash(), policy.hash());
    assert_eq!(parsed(text), policy);
}
