//! The RBAC rules a grant gives, computed from its target. Kubernetes RBAC
//! cannot restrict `list`, `watch` or `create` by `resourceNames`, so a grant
//! on named objects still lists, watches (and, with `manage`, creates) every
//! object of the kind in the namespace. The rules are recorded in the grant
//! event and shown to the requester, so nobody is misled about that.

use crate::events::RbacRule;
use crate::types::Target;

const NAMEABLE: [&str; 4] = ["get", "update", "patch", "delete"];

/// The effective rules of a grant on `target`.
pub fn effective_rules(target: &Target) -> Vec<RbacRule> {
    let rule = |verbs: Vec<&str>, names: &[String]| RbacRule {
        api_groups: vec![target.kind.group().to_string()],
        resources: vec![target.kind.resource().to_string()],
        resource_names: names.to_vec(),
        verbs: verbs.into_iter().map(str::to_string).collect(),
    };
    let verbs = target.access.verbs();
    if target.names.is_empty() {
        return vec![rule(verbs.to_vec(), &[])];
    }
    let names: Vec<String> = target.names.iter().map(ToString::to_string).collect();
    let (named, unnamed): (Vec<&str>, Vec<&str>) = verbs.iter().copied().partition(|v| NAMEABLE.contains(v));
    let mut rules = vec![rule(named, &names)];
    if !unnamed.is_empty() {
        rules.push(rule(unnamed, &[]));
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Access, Kind, Name};

    #[test]
    fn named_edit_still_lists_and_watches_every_object_and_says_so() {
        let target = Target {
            cluster: Name::label("c", "prod").unwrap(),
            namespace: Name::label("n", "shop").unwrap(),
            kind: Kind::Ingresses,
            names: vec![Name::subdomain("n", "storefront").unwrap()],
            access: Access::Edit,
        };
        let rules = effective_rules(&target);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].resource_names, vec!["storefront"]);
        assert_eq!(rules[0].verbs, vec!["get", "update", "patch"]);
        assert!(rules[1].resource_names.is_empty());
        assert_eq!(rules[1].verbs, vec!["list", "watch"]);
        assert_eq!(rules[0].api_groups, vec!["networking.k8s.io"]);
    }
}
