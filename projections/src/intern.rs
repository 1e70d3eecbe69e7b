//! Values that many records repeat, kept once. Every request of a ledger
//! names its requester (with their groups), a target and the rule and policy
//! hash it was decided under, and every decision names who made it; a
//! handful of people, targets and rules account for hundreds of thousands of
//! records, so the state holds each distinct value once and the records hold
//! an [`Arc`] to it.
//!
//! The sets only grow, and they hold exactly the distinct values folded so
//! far, so rebuilding from entry 0 and applying incrementally give equal sets.

use crate::events::Basis;
use crate::types::Target;
use portcullis_format::event::Actor;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The distinct values the state's records share.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interned {
    actors: BTreeSet<Arc<Actor>>,
    targets: BTreeSet<Arc<Target>>,
    bases: BTreeSet<Arc<Basis>>,
    subs: BTreeSet<Arc<str>>,
}

fn share<T: Ord>(set: &mut BTreeSet<Arc<T>>, value: T) -> Arc<T> {
    if let Some(known) = set.get(&value) {
        return Arc::clone(known);
    }
    let value = Arc::new(value);
    set.insert(Arc::clone(&value));
    value
}

impl Interned {
    pub fn actor(&mut self, actor: &Actor) -> Arc<Actor> {
        match self.actors.get(actor) {
            Some(known) => Arc::clone(known),
            None => share(&mut self.actors, actor.clone()),
        }
    }

    pub fn target(&mut self, target: Target) -> Arc<Target> {
        share(&mut self.targets, target)
    }

    pub fn basis(&mut self, basis: Basis) -> Arc<Basis> {
        share(&mut self.bases, basis)
    }

    /// A subject (who approved, denied, ended).
    pub fn sub(&mut self, sub: &str) -> Arc<str> {
        if let Some(known) = self.subs.get(sub) {
            return Arc::clone(known);
        }
        let sub: Arc<str> = Arc::from(sub);
        self.subs.insert(Arc::clone(&sub));
        sub
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_allocation() {
        let mut interned = Interned::default();
        let (a, b) = (interned.sub("alice"), interned.sub(&String::from("alice")));
        assert!(Arc::ptr_eq(&a, &b));
        let basis = || Basis { rule: "r".into(), policy_hash: "h".into() };
        assert!(Arc::ptr_eq(&interned.basis(basis()), &interned.basis(basis())));
        assert!(!Arc::ptr_eq(&interned.sub("bob"), &a));
        assert_eq!(interned.subs.len(), 2);
    }
}
