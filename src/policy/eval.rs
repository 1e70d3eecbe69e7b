//! Evaluating requests against a policy: which rule applies, whether the
//! request stays within its limits, who approves.

use super::{Denial, Match, Policy, Rule};
use crate::domain::types::{Span, Target};
use portcullis_format::event::Actor;

impl Policy {
    /// The rule that governs a request: the first, in file order, whose match
    /// covers the target and whose requesters include the actor.
    ///
    /// When `break_glass` is true only rules with `break_glass` are
    /// considered; otherwise only rules with a normal path (approvers or
    /// auto-approve), so a break-glass-only rule never captures a normal request.
    ///
    /// # Errors
    /// A [`Denial`] when no rule applies (deny by default), saying whether no
    /// rule matches the target, the matching rules do not list the actor as a
    /// requester, or (field `names`) the request omits object names where no
    /// rule allows that.
    pub fn match_request(&self, target: &Target, actor: &Actor, break_glass: bool) -> Result<&Rule, Denial> {
        let eligible = |rule: &&Rule| if break_glass { rule.break_glass.is_some() } else { rule.has_normal_path() };
        let covering: Vec<&Rule> =
            self.rules.iter().filter(eligible).filter(|rule| rule.matcher.covers(target)).collect();
        if let Some(rule) = covering.iter().find(|rule| rule.requesters.includes(actor)) {
            return Ok(rule);
        }
        let kind_of_rule = if break_glass { "break-glass rule" } else { "rule" };
        if !covering.is_empty() {
            let names: Vec<String> = covering.iter().map(|rule| format!("{:?}", rule.name())).collect();
            let (verb, their) = if names.len() == 1 { ("matches", "its") } else { ("match", "their") };
            return Err(Denial::new(
                None,
                None,
                format!(
                    "{kind_of_rule}{} {} {verb} {} but you are not among {their} requesters",
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", "),
                    describe(target),
                ),
            ));
        }
        if target.names.is_empty()
            && let Some(rule) = self
                .rules
                .iter()
                .filter(eligible)
                .find(|rule| rule.matcher.covers_ignoring_names(target) && rule.requesters.includes(actor))
        {
            return Err(Denial::new(
                Some("names"),
                Some(rule),
                format!(
                    "{kind_of_rule} {:?} does not allow a request for every object of a kind (all_objects is false): name the objects",
                    rule.name()
                ),
            ));
        }
        Err(Denial::new(
            None,
            None,
            format!("no {kind_of_rule} matches {}: access is denied by default", describe(target)),
        ))
    }
}

impl Rule {
    /// Checks a request's duration, reason and ticket against this rule.
    ///
    /// - `duration` must not exceed `max_duration`, or `break_glass.max_duration`
    ///   for a break-glass request.
    /// - The reason, trimmed of surrounding whitespace, must be present when
    ///   `reason.required` (and always for break-glass, which is reviewed
    ///   later) and at least `reason.min_length` characters long.
    /// - A ticket must be present when `ticket.required`; a ticket given must
    ///   match `ticket.pattern` as a whole. A blank ticket counts as none.
    ///
    /// The rule's reason and ticket terms apply to break-glass requests too.
    ///
    /// # Errors
    /// The first failure, as a [`Denial`] naming the field (`duration`,
    /// `reason` or `ticket`), or naming none when the rule does not offer
    /// the kind of request (normal or break-glass) at all.
    pub fn check_request(
        &self,
        duration: Span,
        reason: &str,
        ticket: Option<&str>,
        break_glass: bool,
    ) -> Result<(), Denial> {
        let limit = match (break_glass, &self.break_glass, self.max_duration) {
            (true, Some(terms), _) => terms.max_duration,
            (true, None, _) => {
                return Err(Denial::new(
                    None,
                    Some(self),
                    format!("rule {:?} does not allow break-glass", self.name()),
                ));
            }
            (false, _, Some(max)) if self.has_normal_path() => max,
            (false, _, _) => {
                return Err(Denial::new(
                    None,
                    Some(self),
                    format!("rule {:?} only allows break-glass requests", self.name()),
                ));
            }
        };
        if duration > limit {
            return Err(Denial::new(
                Some("duration"),
                Some(self),
                format!(
                    "{duration} is longer than the {limit} that rule {:?} allows{}",
                    self.name(),
                    if break_glass { " for break-glass" } else { "" }
                ),
            ));
        }

        let reason = reason.trim();
        if reason.is_empty() && (self.reason.required || break_glass) {
            return Err(Denial::new(
                Some("reason"),
                Some(self),
                format!("a reason is required{}", if break_glass { " for break-glass" } else { "" }),
            ));
        }
        let length = reason.chars().count();
        let min_length = self.reason.min_length as usize;
        if !reason.is_empty() && length < min_length {
            return Err(Denial::new(
                Some("reason"),
                Some(self),
                format!(
                    "the reason is {length} characters long but rule {:?} requires at least {min_length}",
                    self.name()
                ),
            ));
        }

        match (ticket.filter(|t| !t.trim().is_empty()), &self.ticket.pattern) {
            (None, _) if self.ticket.required => {
                Err(Denial::new(Some("ticket"), Some(self), format!("rule {:?} requires a ticket", self.name())))
            }
            (Some(ticket), Some(pattern)) if !pattern.matches(ticket) => Err(Denial::new(
                Some("ticket"),
                Some(self),
                format!(
                    "{ticket:?} does not match the pattern {:?} that rule {:?} requires",
                    pattern.as_str(),
                    self.name()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Whether the actor is among this rule's approvers.
    ///
    /// This does not exclude the requester: the domain core refuses an
    /// approval by the request's own requester, whatever their role.
    pub fn may_approve(&self, actor: &Actor) -> bool {
        self.approvers.as_ref().is_some_and(|approvers| approvers.who.includes(actor))
    }

    /// How many distinct approvers a normal request needs: 0 when the rule
    /// auto-approves, `approvers.min` otherwise.
    ///
    /// A break-glass-only rule has no normal path and returns `u32::MAX`, a
    /// threshold no count of approvals meets (fail closed); break-glass is
    /// self-granted and never counts approvals.
    pub fn approvals_needed(&self) -> u32 {
        match (&self.approvers, self.auto_approve) {
            (_, true) => 0,
            (Some(approvers), false) => approvers.min,
            (None, false) => u32::MAX,
        }
    }
}

impl Match {
    /// Whether the target falls under this match, object names included.
    pub fn covers(&self, target: &Target) -> bool {
        self.covers_ignoring_names(target) && (self.all_objects || !target.names.is_empty())
    }

    fn covers_ignoring_names(&self, target: &Target) -> bool {
        self.clusters.contains(&target.cluster)
            && self.namespaces.iter().any(|glob| glob.matches(target.namespace.as_str()))
            && self.kinds.contains(&target.kind)
            && self.access.contains(&target.access)
    }
}

fn describe(target: &Target) -> String {
    format!(
        "{} access to {} in namespace {} of cluster {}",
        target.access, target.kind, target.namespace, target.cluster
    )
}
