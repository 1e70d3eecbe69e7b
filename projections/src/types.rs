//! Value types of the access workflow, parsed once at the edge: a value of
//! these types is always valid ("parse, don't validate").

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a value was refused; names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidValue {
    pub field: String,
    pub reason: String,
}

impl InvalidValue {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> InvalidValue {
        InvalidValue { field: field.into(), reason: reason.into() }
    }
}

/// A Kubernetes name per DNS-1123: a label (namespaces, clusters: at most 63
/// characters, `[a-z0-9]([-a-z0-9]*[a-z0-9])?`) or a subdomain (object names:
/// at most 253 characters, labels joined by dots).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

fn is_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

impl Name {
    /// A DNS-1123 label (namespace, cluster).
    ///
    /// # Errors
    /// [`InvalidValue`] naming `field`.
    pub fn label(field: &str, s: &str) -> Result<Name, InvalidValue> {
        if is_label(s) {
            Ok(Name(s.to_string()))
        } else {
            Err(InvalidValue::new(
                field,
                format!(
                    "{s:?} is not a DNS-1123 label (lowercase letters, digits and '-', 1 to 63 characters, starting and ending with a letter or digit)"
                ),
            ))
        }
    }

    /// A DNS-1123 subdomain (object names).
    ///
    /// # Errors
    /// [`InvalidValue`] naming `field`.
    pub fn subdomain(field: &str, s: &str) -> Result<Name, InvalidValue> {
        if s.len() <= 253 && s.split('.').all(is_label) {
            Ok(Name(s.to_string()))
        } else {
            Err(InvalidValue::new(
                field,
                format!("{s:?} is not a DNS-1123 subdomain (dot-separated labels, at most 253 characters)"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kinds of object Portcullis grants access to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `ingresses.networking.k8s.io`
    Ingresses,
    /// `httproutes.gateway.networking.k8s.io`
    Httproutes,
    /// `grpcroutes.gateway.networking.k8s.io`
    Grpcroutes,
    /// `gateways.gateway.networking.k8s.io`
    Gateways,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Ingresses, Kind::Httproutes, Kind::Grpcroutes, Kind::Gateways];

    /// The resource name (plural) as RBAC writes it.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Ingresses => "ingresses",
            Kind::Httproutes => "httproutes",
            Kind::Grpcroutes => "grpcroutes",
            Kind::Gateways => "gateways",
        }
    }

    /// The API group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::Ingresses => "networking.k8s.io",
            _ => "gateway.networking.k8s.io",
        }
    }

    /// Parses a resource name, with or without its group (`ingresses`, `ingresses.networking.k8s.io`).
    ///
    /// # Errors
    /// [`InvalidValue`] naming `field` and listing the accepted kinds.
    pub fn parse(field: &str, s: &str) -> Result<Kind, InvalidValue> {
        Kind::ALL.into_iter().find(|k| s == k.resource() || s == format!("{}.{}", k.resource(), k.group())).ok_or_else(
            || InvalidValue::new(field, format!("{s:?} is not one of ingresses, httproutes, grpcroutes, gateways")),
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.resource())
    }
}

/// Access levels, each including the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// get, list, watch
    View,
    /// view + update, patch
    Edit,
    /// edit + create, delete
    Manage,
}

impl Access {
    pub const ALL: [Access; 3] = [Access::View, Access::Edit, Access::Manage];

    /// The RBAC verbs of this level.
    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Access::View => &["get", "list", "watch"],
            Access::Edit => &["get", "list", "watch", "update", "patch"],
            Access::Manage => &["get", "list", "watch", "update", "patch", "create", "delete"],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Access::View => "view",
            Access::Edit => "edit",
            Access::Manage => "manage",
        }
    }

    /// # Errors
    /// [`InvalidValue`] naming `field`.
    pub fn parse(field: &str, s: &str) -> Result<Access, InvalidValue> {
        Access::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| InvalidValue::new(field, format!("{s:?} is not one of view, edit, manage")))
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A length of time in whole seconds, written `90s`, `30m`, `2h`, `1h30m` or `1d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(u64);

impl Span {
    /// The longest span accepted anywhere: 366 days.
    pub const MAX: Span = Span(366 * 86_400);

    pub fn from_secs(secs: u64) -> Option<Span> {
        (secs > 0 && secs <= Span::MAX.0).then_some(Span(secs))
    }

    pub fn secs(self) -> u64 {
        self.0
    }

    pub fn micros(self) -> i64 {
        self.0 as i64 * 1_000_000
    }

    /// # Errors
    /// [`InvalidValue`] naming `field`.
    pub fn parse(field: &str, s: &str) -> Result<Span, InvalidValue> {
        let bad =
            || InvalidValue::new(field, format!("{s:?} is not a duration like 30m, 2h, 1h30m or 1d (at most 366d)"));
        let mut total: u64 = 0;
        let mut digits = String::new();
        let mut last_unit = u64::MAX;
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                'd' => 86_400,
                'h' => 3_600,
                'm' => 60,
                's' => 1,
                _ => return Err(bad()),
            };
            // Units in decreasing order, each once.
            if digits.is_empty() || digits.len() > 9 || unit >= last_unit {
                return Err(bad());
            }
            total = total.checked_add(digits.parse::<u64>().map_err(|_| bad())? * unit).ok_or_else(bad)?;
            digits.clear();
            last_unit = unit;
        }
        if !digits.is_empty() {
            return Err(bad());
        }
        Span::from_secs(total).ok_or_else(bad)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (d, h, m, s) = (self.0 / 86_400, self.0 % 86_400 / 3_600, self.0 % 3_600 / 60, self.0 % 60);
        let mut out = String::new();
        for (value, unit) in [(d, 'd'), (h, 'h'), (m, 'm'), (s, 's')] {
            if value > 0 {
                out.push_str(&format!("{value}{unit}"));
            }
        }
        f.write_str(&out)
    }
}

/// What is asked for: which objects, in which cluster and namespace, at which level.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Target {
    pub cluster: Name,
    pub namespace: Name,
    pub kind: Kind,
    /// Specific objects, or empty for every object of the kind in the namespace.
    pub names: Vec<Name>,
    pub access: Access,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_1123() {
        assert!(Name::label("namespace", "shop-1").is_ok());
        for bad in ["", "Shop", "-shop", "shop-", "shop_1", &"a".repeat(64)] {
            assert!(Name::label("namespace", bad).is_err(), "{bad}");
        }
        assert!(Name::subdomain("name", "storefront.v2").is_ok());
        assert!(Name::subdomain("name", "storefront..v2").is_err());
    }

    #[test]
    fn spans_parse_in_decreasing_units() {
        assert_eq!(Span::parse("d", "1h30m").unwrap().secs(), 5_400);
        assert_eq!(Span::parse("d", "2h").unwrap().to_string(), "2h");
        for bad in ["", "0s", "30", "m30", "30m1h", "1h1h", "367d", "1.5h", "-1h", "99999999999999999999s"] {
            assert!(Span::parse("duration", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_parse_with_or_without_group() {
        assert_eq!(Kind::parse("kind", "ingresses.networking.k8s.io").unwrap(), Kind::Ingresses);
        assert_eq!(Kind::parse("kind", "httproutes").unwrap(), Kind::Httproutes);
        assert!(Kind::parse("kind", "httproutes.networking.k8s.io").is_err());
        assert!(Kind::parse("kind", "secrets").is_err());
    }
}
