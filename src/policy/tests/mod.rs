//! Tests of the policy module: parsing and refusal (with lines), evaluation,
//! and the committed example and JSON Schema.

mod eval;
mod parse;
mod schema;

use super::{Policy, PolicyError};
use crate::domain::types::{Access, Kind, Name, Span, Target};
use portcullis_format::event::Actor;

fn actor(sub: &str, groups: &[&str]) -> Actor {
    Actor { sub: sub.into(), groups: groups.iter().map(|g| g.to_string()).collect(), via: "token".into() }
}

fn target(cluster: &str, namespace: &str, kind: Kind, names: &[&str], access: Access) -> Target {
    Target {
        cluster: Name::label("cluster", cluster).unwrap(),
        namespace: Name::label("namespace", namespace).unwrap(),
        kind,
        names: names.iter().map(|n| Name::subdomain("names", n).unwrap()).collect(),
        access,
    }
}

fn span(s: &str) -> Span {
    Span::parse("duration", s).unwrap()
}

fn parsed(text: &str) -> Policy {
    match Policy::parse(text) {
        Ok(policy) => policy,
        Err(error) => panic!("{error}\n{text}"),
    }
}

fn refused(text: &str) -> PolicyError {
    match Policy::parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(error) => error,
    }
}

const EXAMPLE: &str = include_str!("../../../schemas/policy.example.yaml");
