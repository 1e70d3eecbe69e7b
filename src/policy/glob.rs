//! Namespace globs: a DNS-1123 label in which `*` stands for any run of
//! characters (including none) and `?` for exactly one.

use crate::domain::types::InvalidValue;
use std::fmt;

/// A namespace pattern such as `shop-*`, `team-?-prod` or `*`.
///
/// # Guarantees
/// A `Glob` is 1 to 63 characters of `[a-z0-9-*?]` that neither starts nor
/// ends with `-`, so every glob can match at least one DNS-1123 label.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Glob(String);

impl Glob {
    /// # Errors
    /// [`InvalidValue`] naming `field` when the pattern could match no namespace.
    pub fn parse(field: &str, s: &str) -> Result<Glob, InvalidValue> {
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '*' | '?');
        if s.is_empty() || s.len() > 63 || !s.chars().all(allowed) || s.starts_with('-') || s.ends_with('-') {
            return Err(InvalidValue::new(
                field,
                format!(
                    "{s:?} is not a namespace pattern (a DNS-1123 label of lowercase letters, digits and '-', \
                     1 to 63 characters, in which '*' matches any run of characters and '?' exactly one)"
                ),
            ));
        }
        Ok(Glob(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        wildcard_match(self.0.as_bytes(), name.as_bytes())
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Iterative wildcard matching with backtracking to the last `*` only, so it
/// runs in O(pattern × text) at worst, never exponentially. Patterns are ASCII,
/// so matching bytes is matching characters for any text a pattern can match.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was and the text position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(b'?') => {
                p += 1;
                t += 1;
            }
            Some(c) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character and retry.
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(s: &str) -> Glob {
        Glob::parse("namespaces", s).unwrap()
    }

    #[test]
    fn star_matches_any_run_including_none() {
        assert!(glob("shop-*").matches("shop-"));
        assert!(glob("shop-*").matches("shop-eu-1"));
        assert!(!glob("shop-*").matches("shop"));
        assert!(!glob("shop-*").matches("workshop-1"));
        assert!(glob("*").matches("anything"));
        assert!(glob("*-prod").matches("shop-prod"));
        assert!(glob("a*b*c").matches("aXbYbZc"));
        assert!(!glob("a*b*c").matches("aXbYbZ"));
    }

    #[test]
    fn question_mark_matches_exactly_one_character() {
        assert!(glob("team-?").matches("team-a"));
        assert!(!glob("team-?").matches("team-"));
        assert!(!glob("team-?").matches("team-ab"));
    }

    #[test]
    fn patterns_without_wildcards_match_exactly() {
        assert!(glob("shop").matches("shop"));
        assert!(!glob("shop").matches("shop-1"));
        assert!(!glob("shop").matches("Shop"));
    }

    #[test]
    fn patterns_that_can_match_no_namespace_are_refused() {
        for bad in ["", "Shop-*", "-shop", "shop-", "shop_*", "shop.*", &"a".repeat(64)] {
            assert!(Glob::parse("namespaces", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn many_stars_do_not_take_exponential_time() {
        let pattern = glob(&format!("{}c", "a*".repeat(20)));
        assert!(!pattern.matches(&format!("{}b", "a".repeat(60))));
    }
}
