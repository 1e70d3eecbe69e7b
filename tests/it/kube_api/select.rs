//! Label and field selectors of list and watch requests.
//!
//! Label selectors take the full Kubernetes syntax: `k=v`, `k==v`, `k!=v`, `k`, `!k`,
//! `k in (a,b)`, `k notin (a,b)`, comma-separated and all required. Field selectors take
//! `metadata.name` and `metadata.namespace` with `=`, `==` and `!=`.

use super::status::ApiError;
use serde_json::Value;

/// What a list or watch request selects.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
}

#[derive(Clone, Debug)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Clone, Debug)]
struct FieldRequirement {
    field: Field,
    equals: bool,
    value: String,
}

#[derive(Clone, Copy, Debug)]
enum Field {
    Name,
    Namespace,
}

impl Selector {
    /// Parses the `labelSelector` and `fieldSelector` query parameters.
    ///
    /// # Errors
    /// 400 BadRequest for a malformed selector or an unsupported field.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selector, ApiError> {
        let mut selector = Selector::default();
        for term in split_terms(labels.unwrap_or("")) {
            selector.labels.push(parse_label_term(term)?);
        }
        for term in fields.unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
            selector.fields.push(parse_field_term(term)?);
        }
        Ok(selector)
    }

    /// Whether `object` satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        let labels_match = self.labels.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            LabelRequirement::In(k, values) => label(k).is_some_and(|l| values.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, values) => !label(k).is_some_and(|l| values.iter().any(|v| v == l)),
            LabelRequirement::Exists(k) => label(k).is_some(),
            LabelRequirement::NotExists(k) => label(k).is_none(),
        });
        labels_match
            && self.fields.iter().all(|req| {
                let pointer = match req.field {
                    Field::Name => "/metadata/name",
                    Field::Namespace => "/metadata/namespace",
                };
                let actual = object.pointer(pointer).and_then(Value::as_str).unwrap_or("");
                (actual == req.value) == req.equals
            })
    }
}

/// Splits at the commas that are not inside a parenthesised value set.
fn split_terms(selector: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn parse_label_term(term: &str) -> Result<LabelRequirement, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("unable to parse requirement: {why}: {term:?}"));
    let key = |k: &str| {
        let k = k.trim();
        if k.is_empty() || k.contains(char::is_whitespace) { Err(bad("invalid label key")) } else { Ok(k.to_string()) }
    };
    if let Some(rest) = term.strip_prefix('!') {
        return Ok(LabelRequirement::NotExists(key(rest)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(LabelRequirement::NotEquals(key(k)?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once("==") {
        return Ok(LabelRequirement::Equals(key(k)?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once('=') {
        return Ok(LabelRequirement::Equals(key(k)?, v.trim().to_string()));
    }
    if let Some(open) = term.find('(') {
        let mut words = term[..open].split_whitespace();
        let (Some(k), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad("expected `key in (values)` or `key notin (values)`"));
        };
        let Some(inner) = term[open + 1..].strip_suffix(')') else {
            return Err(bad("unclosed value set"));
        };
        let values = inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
        return match op {
            "in" => Ok(LabelRequirement::In(key(k)?, values)),
            "notin" => Ok(LabelRequirement::NotIn(key(k)?, values)),
            _ => Err(bad("unknown operator")),
        };
    }
    Ok(LabelRequirement::Exists(key(term)?))
}

fn parse_field_term(term: &str) -> Result<FieldRequirement, ApiError> {
    let (name, equals, value) = if let Some((k, v)) = term.split_once("!=") {
        (k, false, v)
    } else if let Some((k, v)) = term.split_once("==") {
        (k, true, v)
    } else if let Some((k, v)) = term.split_once('=') {
        (k, true, v)
    } else {
        return Err(ApiError::bad_request(format!("invalid field selector: {term:?}")));
    };
    let field = match name.trim() {
        "metadata.name" => Field::Name,
        "metadata.namespace" => Field::Namespace,
        other => return Err(ApiError::bad_request(format!("field label not supported: {other}"))),
    };
    Ok(FieldRequirement { field, equals, value: value.trim().to_string() })
}
