//! Given / when / then over events.

use super::decide::{Command, Context, Rejection, decide};
use super::events::{GrantId, RequestId, kind};
use super::state::{GrantStatus, RequestStatus, State};
use super::types::{Access, Kind, Name, Span, Target};
use crate::policy::Policy;
use portcullis_format::event::{Actor, Event, EventDraft};
use portcullis_format::time::Timestamp;

const POLICY: &str = include_str!("../../schemas/policy.example.yaml");

fn actor(sub: &str, groups: &[&str]) -> Actor {
    Actor { sub: sub.into(), groups: groups.iter().map(|g| g.to_string()).collect(), via: "token".into() }
}

fn alice() -> Actor {
    actor("alice", &["web", "sre-leads", "platform-admins"])
}
fn lead1() -> Actor {
    actor("lead1", &["sre-leads"])
}
fn lead2() -> Actor {
    actor("lead2", &["sre-leads"])
}
fn admin() -> Actor {
    actor("root", &["platform-admins"])
}

fn at(minutes: i64) -> Timestamp {
    Timestamp::from_unix_micros(1_800_000_000_000_000 + minutes * 60_000_000).unwrap()
}

fn target(cluster: &str, access: Access) -> Target {
    Target {
        cluster: Name::label("cluster", cluster).unwrap(),
        namespace: Name::label("namespace", "shop-eu").unwrap(),
        kind: Kind::Ingresses,
        names: vec![Name::subdomain("names", "storefront").unwrap()],
        access,
    }
}

/// A ledger in memory: the state and the events so far.
struct World {
    policy: Policy,
    state: State,
    events: Vec<Event>,
    seeds: u8,
}

impl World {
    fn new() -> World {
        World { policy: Policy::parse(POLICY).unwrap(), state: State::default(), events: Vec::new(), seeds: 0 }
    }

    fn when(&mut self, who: Actor, minute: i64, command: Command) -> Result<Vec<EventDraft>, Rejection> {
        self.seeds += 1;
        let ctx = Context { actor: who, now: at(minute), seed: [self.seeds; 16] };
        let drafts = decide(&self.state, Some(&self.policy), command, &ctx)?;
        for draft in &drafts {
            let event = Event {
                log: "test".into(),
                seq: self.events.len() as u64,
                prev: [0; 32],
                ts: at(minute),
                draft: draft.clone(),
            };
            self.state = std::mem::take(&mut self.state).evolve(&event);
            self.events.push(event);
        }
        Ok(drafts)
    }

    fn request(&mut self, who: Actor, minute: i64, target: Target, duration: &str) -> Result<RequestId, Rejection> {
        let command = Command::Request {
            target,
            duration: Span::parse("duration", duration).unwrap(),
            reason: "INC-4711: fix the TLS host".into(),
            ticket: Some("INC-4711".into()),
            break_glass: false,
        };
        Ok(self.when(who, minute, command)?[0].id)
    }

    fn grant_of(&self, request: RequestId) -> GrantId {
        self.state.requests[&request].grant.expect("a grant")
    }
}

fn kinds(drafts: &[EventDraft]) -> Vec<&str> {
    drafts.iter().map(|d| d.kind.as_str()).collect()
}

#[test]
fn two_distinct_approvers_activate_the_grant_and_its_time_starts_then() {
    let mut w = World::new();
    let request = w.request(alice(), 0, target("prod", Access::Edit), "2h").unwrap();
    let first = w.when(lead1(), 10, Command::Approve { request, comment: None }).unwrap();
    assert_eq!(kinds(&first), [kind::REQUEST_APPROVED]);
    let again = w.when(lead1(), 11, Command::Approve { request, comment: None });
    assert!(matches!(again, Err(Rejection::Conflict(_))), "{again:?}");
    let second = w.when(lead2(), 20, Command::Approve { request, comment: Some("ok".into()) }).unwrap();
    assert_eq!(kinds(&second), [kind::REQUEST_APPROVED, kind::GRANT_ACTIVATED]);
    let grant = &w.state.grants[&w.grant_of(request)];
    assert_eq!(grant.starts_at, at(20));
    assert_eq!(grant.expires_at, at(140));
    assert_eq!(grant.approvers, vec!["lead1", "lead2"]);
    assert_eq!(grant.basis.rule, "prod-ingress-edit");
    assert_eq!(grant.basis.policy_hash, w.policy.hash_hex());
}

#[test]
fn requester_cannot_approve_own_request_whatever_their_roles() {
    let mut w = World::new();
    // Alice is a requester, an approver and an admin at once.
    let request = w.request(alice(), 0, target("prod", Access::Edit), "1h").unwrap();
    let own = w.when(alice(), 1, Command::Approve { request, comment: None });
    assert!(matches!(own, Err(Rejection::Forbidden(_))), "{own:?}");
    let deny = w.when(alice(), 1, Command::Deny { request, comment: None });
    assert!(matches!(deny, Err(Rejection::Forbidden(_))), "{deny:?}");
}

#[test]
fn someone_who_is_not_an_approver_of_the_rule_cannot_approve() {
    let mut w = World::new();
    let request = w.request(alice(), 0, target("prod", Access::Edit), "1h").unwrap();
    let outsider = w.when(actor("bob", &["web"]), 1, Command::Approve { request, comment: None });
    assert!(matches!(outsider, Err(Rejection::Forbidden(_))), "{outsider:?}");
}

#[test]
fn policy_denies_by_default_and_names_the_field_it_refuses() {
    let mut w = World::new();
    let stranger = w.request(actor("eve", &["marketing"]), 0, target("prod", Access::Edit), "1h");
    assert!(matches!(stranger, Err(Rejection::Denied(_))), "{stranger:?}");
    let too_long = w.request(alice(), 0, target("prod", Access::Edit), "3h");
    assert!(matches!(&too_long, Err(Rejection::Invalid { field, .. }) if field == "duration"), "{too_long:?}");
    let manage = w.request(alice(), 0, target("prod", Access::Manage), "1h");
    assert!(manage.is_err());
    assert!(w.events.is_empty(), "nothing was recorded");
}

#[test]
fn auto_approved_requests_are_granted_at_once() {
    let mut w = World::new();
    let request = w.request(actor("dev", &["engineering"]), 5, target("staging", Access::Edit), "8h").unwrap();
    let grant = &w.state.grants[&w.grant_of(request)];
    assert_eq!((grant.starts_at, grant.expires_at), (at(5), at(5 + 480)));
    assert!(grant.approvers.is_empty());
}

#[test]
fn break_glass_is_self_granted_flagged_and_needs_a_later_review_by_someone_else() {
    let mut w = World::new();
    let oncall = actor("pager", &["oncall"]);
    let command = Command::Request {
        target: target("prod", Access::Edit),
        duration: Span::parse("d", "30m").unwrap(),
        reason: "outage".into(),
        ticket: None,
        break_glass: true,
    };
    let drafts = w.when(oncall.clone(), 0, command).unwrap();
    assert_eq!(kinds(&drafts), [kind::REQUEST_CREATED, kind::GRANT_ACTIVATED]);
    let grant_id = drafts[1].id;
    let grant = &w.state.grants[&grant_id];
    assert!(grant.break_glass);
    assert_eq!(grant.review_due, Some(at(24 * 60)));
    // Who must hear of it is recorded in the grant event, for the notifier and the auditor.
    let data = drafts[1].data.to_serde();
    assert_eq!(data["notify"], serde_json::json!(["security", "#incidents"]));
    let own = w.when(oncall, 40, Command::ReviewBreakGlass { grant: grant_id, comment: "fine".into() });
    assert!(matches!(own, Err(Rejection::Forbidden(_))), "{own:?}");
    w.when(admin(), 40, Command::ReviewBreakGlass { grant: grant_id, comment: "justified by INC-1".into() }).unwrap();
    assert!(w.state.grants[&grant_id].reviewed.is_some());
}

#[test]
fn a_pending_request_expires_after_its_ttl_and_cannot_be_approved_then() {
    let mut w = World::new();
    let request = w.request(alice(), 0, target("prod", Access::Edit), "1h").unwrap();
    let early = w.when(Actor::system(), 59, Command::ExpireRequest { request });
    assert!(matches!(early, Err(Rejection::Conflict(_))));
    let late_approval = w.when(lead1(), 60, Command::Approve { request, comment: None });
    assert!(matches!(late_approval, Err(Rejection::Conflict(_))));
    w.when(Actor::system(), 60, Command::ExpireRequest { request }).unwrap();
    assert_eq!(w.state.requests[&request].status, RequestStatus::Expired);
}

#[test]
fn cancel_is_for_the_requester_and_only_while_pending() {
    let mut w = World::new();
    let request = w.request(alice(), 0, target("prod", Access::Edit), "1h").unwrap();
    assert!(matches!(w.when(lead1(), 1, Command::Cancel { request }), Err(Rejection::Forbidden(_))));
    w.when(alice(), 2, Command::Cancel { request }).unwrap();
    assert!(matches!(w.when(alice(), 3, Command::Cancel { request }), Err(Rejection::Conflict(_))));
    assert!(matches!(w.when(lead1(), 3, Command::Approve { request, comment: None }), Err(Rejection::Conflict(_))));
}

fn granted(w: &mut World) -> GrantId {
    let request = w.request(alice(), 0, target("prod", Access::Edit), "1h").unwrap();
    w.when(lead1(), 1, Command::Approve { request, comment: None }).unwrap();
    w.when(lead2(), 2, Command::Approve { request, comment: None }).unwrap();
    w.grant_of(request)
}

#[test]
fn the_requester_ends_early_and_nobody_ends_it_twice() {
    let mut w = World::new();
    let grant = granted(&mut w);
    assert!(matches!(w.when(lead1(), 10, Command::End { grant, comment: None }), Err(Rejection::Forbidden(_))));
    w.when(alice(), 10, Command::End { grant, comment: Some("done".into()) }).unwrap();
    assert_eq!(w.state.grants[&grant].status, GrantStatus::Ended);
    assert!(matches!(w.when(alice(), 11, Command::End { grant, comment: None }), Err(Rejection::Conflict(_))));
}

#[test]
fn approvers_and_admins_revoke_once_with_a_reason() {
    let mut w = World::new();
    let grant = granted(&mut w);
    let stranger = w.when(actor("bob", &["web"]), 5, Command::Revoke { grant, reason: "why not".into() });
    assert!(matches!(stranger, Err(Rejection::Forbidden(_))));
    assert!(matches!(
        w.when(admin(), 5, Command::Revoke { grant, reason: " ".into() }),
        Err(Rejection::Invalid { .. })
    ));
    w.when(admin(), 5, Command::Revoke { grant, reason: "suspicious change".into() }).unwrap();
    let twice = w.when(lead1(), 6, Command::Revoke { grant, reason: "again".into() });
    assert!(matches!(twice, Err(Rejection::Conflict(_))), "{twice:?}");
    assert_eq!(w.state.grants[&grant].status, GrantStatus::Revoked);
}

#[test]
fn a_grant_expires_on_time_and_an_extension_cannot_race_past_it() {
    let mut w = World::new();
    let grant = granted(&mut w); // active from minute 2 to 62
    let extend = |w: &mut World, minute| {
        w.when(
            alice(),
            minute,
            Command::Extend { grant, duration: Span::parse("d", "30m").unwrap(), reason: "INC-4711 still open".into() },
        )
    };
    let extension = extend(&mut w, 30).unwrap()[0].id;
    assert!(matches!(extend(&mut w, 31), Err(Rejection::Conflict(_))), "one pending extension at a time");
    w.when(lead1(), 40, Command::ApproveExtension { extension, comment: None }).unwrap();
    w.when(Actor::system(), 62, Command::ExpireGrant { grant }).unwrap();
    let late = w.when(lead2(), 63, Command::ApproveExtension { extension, comment: None });
    assert!(matches!(late, Err(Rejection::Conflict(_))), "{late:?}");
    assert_eq!(w.state.grants[&grant].status, GrantStatus::Expired);
}

#[test]
fn an_approved_extension_moves_the_expiry_and_stays_within_the_rule() {
    let mut w = World::new();
    let grant = granted(&mut w); // 60 minutes of a 2h maximum
    let too_much = w.when(
        alice(),
        10,
        Command::Extend { grant, duration: Span::parse("d", "61m").unwrap(), reason: "INC-4711 still open".into() },
    );
    assert!(matches!(&too_much, Err(Rejection::Invalid { field, .. }) if field == "duration"), "{too_much:?}");
    let extension = w
        .when(
            alice(),
            10,
            Command::Extend { grant, duration: Span::parse("d", "60m").unwrap(), reason: "INC-4711 still open".into() },
        )
        .unwrap()[0]
        .id;
    w.when(lead1(), 11, Command::ApproveExtension { extension, comment: None }).unwrap();
    let done = w.when(lead2(), 12, Command::ApproveExtension { extension, comment: None }).unwrap();
    assert_eq!(kinds(&done), [kind::EXTENSION_APPROVED, kind::GRANT_EXTENDED]);
    assert_eq!(w.state.grants[&grant].expires_at, at(122));
    assert!(matches!(w.when(Actor::system(), 62, Command::ExpireGrant { grant }), Err(Rejection::Conflict(_))));
}

#[test]
fn rebuilding_from_the_events_gives_the_same_state() {
    let mut w = World::new();
    granted(&mut w);
    let grant = granted(&mut w);
    w.when(alice(), 30, Command::End { grant, comment: None }).unwrap();
    assert_eq!(State::rebuild(&w.events), w.state);
}

#[test]
fn a_request_replayed_with_the_same_seed_is_a_conflict_not_a_second_append() {
    let mut w = World::new();
    let first = w.request(alice(), 0, target("prod", Access::Edit), "30m").unwrap();
    // The same seed again, as a concurrent retry with the same Idempotency-Key produces.
    let ctx = Context { actor: alice(), now: at(1), seed: [w.seeds; 16] };
    assert_eq!(ctx.id(0), first);
    let command = Command::Request {
        target: target("prod", Access::Edit),
        duration: Span::parse("duration", "30m").unwrap(),
        reason: "INC-4711: fix the TLS host".into(),
        ticket: Some("INC-4711".into()),
        break_glass: false,
    };
    assert!(matches!(decide(&w.state, Some(&w.policy), command, &ctx), Err(Rejection::Conflict(_))));
}

#[test]
fn grants_expire_on_time_even_when_no_policy_is_in_force() {
    let mut w = World::new();
    let grant = granted(&mut w); // active from minute 2 to 62
    let ctx = Context { actor: Actor::system(), now: at(62), seed: [99; 16] };
    let drafts = decide(&w.state, None, Command::ExpireGrant { grant }, &ctx).unwrap();
    assert_eq!(kinds(&drafts), [kind::GRANT_EXPIRED]);
    let request = Command::Cancel { request: w.state.grants[&grant].request_id };
    assert_eq!(decide(&w.state, None, request, &ctx), Err(Rejection::NoPolicy));
}
