//! Parsing: what is accepted, the defaults, and every refusal with its line.

use super::{EXAMPLE, parsed, refused, span};
use crate::domain::types::{Access, Kind};

/// Lines 1 to 8 hold a valid policy with one rule; the second rule starts at
/// line 9 with `- name: second` and continues with `rest`.
fn with_second_rule(rest: &str) -> String {
    let mut text = String::from(
        "version: 1
admins: {groups: [platform-admins]}
rules:
  - name: first
    match: {clusters: [prod], namespaces: [\"*\"], kinds: [ingresses], access: [view]}
    requesters: {groups: [web]}
    approvers: {groups: [leads]}
    max_duration: 1h
  - name: second
",
    );
    for line in rest.lines() {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

const MATCH: &str = "match: {clusters: [prod], namespaces: [\"*\"], kinds: [ingresses], access: [view]}";

fn assert_refused_at(text: &str, line: usize, fragment: &str) {
    let error = refused(text);
    assert_eq!(error.line, Some(line), "{error}\n{text}");
    assert!(error.reason.contains(fragment), "{error:?} lacks {fragment:?}");
    assert!(!error.reason.contains('\u{1}'), "{error:?}");
}

#[test]
fn the_example_policy_parses() {
    let policy = parsed(EXAMPLE);
    let names: Vec<&str> = policy.rules().iter().map(|rule| rule.name()).collect();
    assert_eq!(names, ["prod-ingress-edit", "staging-self-service", "break-glass"]);
    let prod = &policy.rules()[0];
    assert_eq!(prod.matcher().kinds, [Kind::Ingresses, Kind::Httproutes]);
    assert_eq!(prod.approvals_needed(), 2);
    assert_eq!(prod.max_duration(), Some(span("2h")));
    assert_eq!(prod.ticket().pattern.as_ref().map(|p| p.as_str()), Some("INC-[0-9]+"));
    assert!(policy.rules()[1].auto_approve());
    assert!(policy.rules()[1].matcher().all_objects);
    let break_glass = policy.rules()[2].break_glass().unwrap();
    assert_eq!(break_glass.max_duration, span("30m"));
    assert_eq!(break_glass.notify, ["security", "#incidents"]);
    assert_eq!(policy.admins().users, ["root@example.com"]);
}

#[test]
fn the_design_example_parses_once_it_has_a_version() {
    let text = r#"version: 1
rules:
  - name: prod-ingress-edit
    match: {clusters: [prod], namespaces: ["shop-*"], kinds: [ingresses, httproutes], access: [view, edit]}
    requesters: {groups: [web, sre]}
    approvers: {groups: [sre-leads], min: 2}
    max_duration: 2h
    reason: {required: true, min_length: 10}
    ticket: {required: true, pattern: "^INC-[0-9]+$"}
    pending_ttl: 1h
  - name: staging-self-service
    match: {clusters: [staging], namespaces: ["*"], kinds: [ingresses], access: [view, edit]}
    requesters: {groups: [engineering]}
    auto_approve: true
    max_duration: 8h
  - name: break-glass
    match: {clusters: [prod], namespaces: ["*"], kinds: [ingresses, httproutes], access: [edit]}
    requesters: {groups: [oncall]}
    break_glass: {max_duration: 30m, notify: [security], review_within: 24h}
admins: {groups: [platform-admins]}
"#;
    assert_eq!(parsed(text).rules().len(), 3);
    let error = refused(text.strip_prefix("version: 1\n").unwrap());
    assert!(error.reason.contains("missing field `version`"), "{error}");
}

#[test]
fn left_out_keys_take_their_defaults() {
    let policy = parsed(&with_second_rule(&format!(
        "{MATCH}\nrequesters: {{users: [bob]}}\nauto_approve: true\nmax_duration: 2h"
    )));
    let first = &policy.rules()[0];
    assert!(first.reason().required);
    assert_eq!(first.reason().min_length, 0);
    assert!(!first.ticket().required);
    assert!(first.ticket().pattern.is_none());
    assert_eq!(first.pending_ttl(), span("1h"));
    assert_eq!(first.approvals_needed(), 1);
    assert!(!first.auto_approve());
    assert!(!first.matcher().all_objects);
    assert!(first.break_glass().is_none());
    assert_eq!(policy.rules()[1].approvals_needed(), 0);
    let policy = parsed(&with_second_rule(&format!(
        "{MATCH}\nrequesters: {{users: [bob]}}\nbreak_glass: {{max_duration: 1h, notify: [security]}}"
    )));
    assert_eq!(policy.rules()[1].break_glass().unwrap().review_within, span("24h"));
}

#[test]
fn kinds_and_access_levels_parse_in_every_accepted_form() {
    let policy = parsed(&with_second_rule(
        "match: {clusters: [prod], namespaces: [\"*\"], kinds: [ingresses.networking.k8s.io, grpcroutes.gateway.networking.k8s.io, gateways], access: [manage]}\nrequesters: {users: [bob]}\nauto_approve: true\nmax_duration: 2h",
    ));
    assert_eq!(policy.rules()[1].matcher().kinds, [Kind::Ingresses, Kind::Grpcroutes, Kind::Gateways]);
    assert_eq!(policy.rules()[1].matcher().access, [Access::Manage]);
}

#[test]
fn a_policy_may_have_no_rules_and_then_denies_everything() {
    assert!(parsed("version: 1\nrules: []\nadmins: {users: [root]}\n").rules().is_empty());
}

#[test]
fn a_duplicate_rule_name_is_refused_at_the_second_rule() {
    let text =
        with_second_rule(&format!("{MATCH}\nrequesters: {{users: [bob]}}\nauto_approve: true\nmax_duration: 2h"))
            .replace("- name: second", "- name: first");
    assert_refused_at(&text, 9, "rule name \"first\" is already used by an earlier rule");
}

#[test]
fn inconsistent_rules_are_refused_at_the_rule_line() {
    let requesters = "requesters: {groups: [web]}";
    for (rest, fragment) in [
        (
            format!("{MATCH}\n{requesters}\nmax_duration: 1h"),
            "has none of approvers, auto_approve: true and break_glass",
        ),
        (
            format!("{MATCH}\n{requesters}\napprovers: {{groups: [leads]}}\nauto_approve: true\nmax_duration: 1h"),
            "has both approvers and auto_approve",
        ),
        (
            format!("{MATCH}\n{requesters}\napprovers: {{users: [ann, ben], min: 3}}\nmax_duration: 1h"),
            "approvers.min is 3 but approvers lists only 2 users and no groups",
        ),
        (
            format!(
                "{MATCH}\nrequesters: {{users: [ann]}}\napprovers: {{users: [ann, ben], min: 2}}\nmax_duration: 1h"
            ),
            "requester \"ann\" may not approve their own request",
        ),
        (format!("{MATCH}\n{requesters}\napprovers: {{}}\nmax_duration: 1h"), "approvers lists no groups and no users"),
        (
            format!("{MATCH}\n{requesters}\nauto_approve: true\nmax_duration: 1h\ncredential: token"),
            "credential is \"token\"; it must be identity (the default) or service-account",
        ),
        (
            format!(
                "match: {{clusters: [], namespaces: [\"*\"], kinds: [ingresses], access: [view]}}\n{requesters}\nauto_approve: true\nmax_duration: 1h"
            ),
            "match.clusters is empty",
        ),
        (
            format!(
                "match: {{clusters: [prod], namespaces: [], kinds: [ingresses], access: [view]}}\n{requesters}\nauto_approve: true\nmax_duration: 1h"
            ),
            "match.namespaces is empty",
        ),
        (
            format!(
                "match: {{clusters: [prod], namespaces: [\"*\"], kinds: [], access: [view]}}\n{requesters}\nauto_approve: true\nmax_duration: 1h"
            ),
            "match.kinds is empty",
        ),
        (
            format!(
                "match: {{clusters: [prod], namespaces: [\"*\"], kinds: [ingresses], access: []}}\n{requesters}\nauto_approve: true\nmax_duration: 1h"
            ),
            "match.access is empty",
        ),
        (
            format!("{MATCH}\nrequesters: {{groups: [], users: []}}\nauto_approve: true\nmax_duration: 1h"),
            "requesters lists no groups and no users",
        ),
        (format!("{MATCH}\n{requesters}\nauto_approve: true"), "max_duration is missing"),
        (
            format!(
                "{MATCH}\n{requesters}\nauto_approve: true\nmax_duration: 1h\nbreak_glass: {{max_duration: 2h, notify: [security]}}"
            ),
            "break_glass.max_duration is 2h but max_duration is 1h",
        ),
        (
            format!("{MATCH}\n{requesters}\nbreak_glass: {{max_duration: 2h, notify: []}}"),
            "break_glass.notify is empty",
        ),
        (
            format!(
                "{MATCH}\n{requesters}\nauto_approve: true\nmax_duration: 1h\nreason: {{required: false, min_length: 5}}"
            ),
            "reason.min_length is 5 but reason.required is false",
        ),
    ] {
        let text = with_second_rule(&rest);
        assert_refused_at(&text, 9, fragment);
        assert!(refused(&text).to_string().starts_with("policy line 9: rule \"second\": "), "{}", refused(&text));
    }
}

#[test]
fn bad_values_are_refused_at_their_own_line() {
    let requesters = "requesters: {groups: [web]}";
    for (rest, line, fragment) in [
        (
            format!("{MATCH}\n{requesters}\napprovers: {{groups: [leads], min: 0}}\nmax_duration: 1h"),
            12,
            "approvers.min is 0",
        ),
        (
            format!("{MATCH}\n{requesters}\napprovers:\n  groups: [leads]\n  min: 17\nmax_duration: 1h"),
            14,
            "approvers.min is 17",
        ),
        (format!("{MATCH}\n{requesters}\nauto_approve: true\nmax_duration: 367d"), 13, "not a duration"),
        (format!("{MATCH}\n{requesters}\nauto_approve: true\nmax_duration: 2 hours"), 13, "not a duration"),
        (format!("{MATCH}\n{requesters}\nauto_approve: true\nmax_duration: 1h\npending_ttl: 0s"), 14, "not a duration"),
        (
            format!("{MATCH}\n{requesters}\nauto_approve: true\nmax_duration: 1h\nticket:\n  pattern: \"INC-[0-9\""),
            15,
            "\"INC-[0-9\" is not a valid regular expression",
        ),
        (
            format!("{MATCH}\n{requesters}\nauto_approve: true\nmax_duration: 1h\nreason: {{min_length: 5000}}"),
            14,
            "reason.min_length is 5000",
        ),
        (
            format!(
                "{MATCH}\n{requesters}\nauto_approve: true\nmax_duration: 1h\nbreak_glass: {{max_duration: 1h, notify: [\" security\"]}}"
            ),
            14,
            "is not a user or group name",
        ),
        (
            format!(
                "match:\n  clusters: [prod]\n  namespaces: [\"Shop-*\"]\n  kinds: [ingresses]\n  access: [view]\n{requesters}\nauto_approve: true\nmax_duration: 1h"
            ),
            12,
            "is not a namespace pattern",
        ),
        (
            format!(
                "match:\n  clusters: [prod]\n  namespaces: [\"*\"]\n  kinds: [secrets]\n  access: [view]\n{requesters}\nauto_approve: true\nmax_duration: 1h"
            ),
            13,
            "\"secrets\" is not one of ingresses",
        ),
        (
            format!(
                "match:\n  clusters: [Prod]\n  namespaces: [\"*\"]\n  kinds: [ingresses]\n  access: [admin]\n{requesters}\nauto_approve: true\nmax_duration: 1h"
            ),
            11,
            "\"Prod\" is not a DNS-1123 label",
        ),
        (format!("{MATCH}\n{requesters}\nauto_approve: yes\nmax_duration: 1h"), 12, "expected a boolean"),
    ] {
        assert_refused_at(&with_second_rule(&rest), line, fragment);
    }
    assert_refused_at(&with_second_rule("").replace("name: second", "name: Second"), 9, "not a DNS-1123 label");
}

#[test]
fn unknown_keys_are_refused_at_their_line() {
    let rule = format!("{MATCH}\nrequesters: {{groups: [web]}}\nauto_approve: true\nmax_duration: 1h");
    assert_refused_at(
        &with_second_rule(&format!("{rule}\napprover: {{groups: [leads]}}")),
        14,
        "unknown field `approver`",
    );
    assert_refused_at(
        &with_second_rule(&rule.replace("access: [view]}", "access: [view], names: [x]}")),
        10,
        "unknown field `names`",
    );
    assert_refused_at(
        &with_second_rule(&format!("{rule}\nreason: {{required: true, max_length: 3}}")),
        14,
        "unknown field `max_length`",
    );
    assert_refused_at(&format!("{}description: shop\n", with_second_rule(&rule)), 14, "unknown field `description`");
    let error = refused(&with_second_rule(&format!("{rule}\nmax_duration: 2h")));
    // serde notices a repeated key only once it has read the mapping, so the line is the rule's.
    assert_eq!(error.line, Some(9), "{error}");
    assert!(error.reason.contains("duplicate field `max_duration`"), "{error}");
}

#[test]
fn syntax_errors_are_refused_at_their_line() {
    let rule = format!("{MATCH}\nrequesters: {{groups: [web]}}\nauto_approve: true\nmax_duration: 1h");
    let text = with_second_rule(&rule)
        .replace("requesters: {groups: [web]}\n    auto", "requesters: {groups: [web]\n    auto");
    let error = refused(&text);
    assert!(matches!(error.line, Some(11..=13)), "{error}");
    let error = refused("version: 1\nrules: []\nadmins: {users: [root]}\n\t- x\n");
    assert_eq!((error.line, error.column), (Some(4), Some(1)), "{error}");
    assert!(error.reason.starts_with("found character that cannot start any token"), "{error}");
    let error = refused("version: 1\nrules: []\nadmins: {users: [root]\n");
    assert_eq!(error.line, Some(4), "{error}");
    assert!(error.reason.contains("while parsing a flow mapping at line 3 column 9"), "{error}");
    for empty in ["", " \n\n"] {
        assert_eq!(refused(empty).to_string(), "policy: the file is empty; a policy has version, rules and admins");
    }
    assert!(refused("just text").reason.contains("expected a policy"));
    // A key that smuggles in the marker of checked messages reads as it is.
    let error = refused("version: 1\nrules: []\nadmins: {users: [root]}\n\"\\x01a\\x01\": 1\n");
    assert!(error.reason.starts_with("unknown field `\u{1}a\u{1}`"), "{error:?}");
    let two_documents = "version: 1\nrules: []\nadmins: {users: [root]}\n---\nversion: 1\n";
    assert!(refused(two_documents).reason.contains("more than one document"), "{}", refused(two_documents));
}

#[test]
fn version_and_admins_are_required_and_checked() {
    assert_refused_at("version: 2\nrules: []\nadmins: {users: [root]}\n", 1, "version 2 is not supported");
    assert_refused_at("version: 1\nrules: []\nadmins: {groups: []}\n", 3, "admins lists no groups and no users");
    let error = refused("version: 1\nrules: []\n");
    assert!(error.reason.contains("missing field `admins`"), "{error}");
    assert_refused_at("version: 1\nrules: []\nadmins: {users: [root]}\nowner: me\n", 4, "unknown field `owner`");
}

#[test]
fn errors_read_as_one_sentence_with_the_line() {
    let text = with_second_rule(&format!(
        "{MATCH}\nrequesters: {{groups: [web]}}\napprovers: {{users: [ann, ben], min: 3}}\nmax_duration: 1h"
    ));
    assert_eq!(
        refused(&text).to_string(),
        "policy line 9: rule \"second\": approvers.min is 3 but approvers lists only 2 users and no groups, \
         so no request could ever be approved"
    );
    let error = refused(&with_second_rule(&format!(
        "{MATCH}\nrequesters: {{groups: [web]}}\nauto_approve: true\nmax_duration: 3x"
    )));
    assert_eq!(error.line, Some(13));
    assert_eq!(error.column, Some(19));
    assert!(
        error.to_string().starts_with("policy line 13: rules[1].max_duration: \"3x\" is not a duration"),
        "{error}"
    );
}
