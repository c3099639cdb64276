//! Claim paths (`realm_access.roles`, `resource_access."my.client".roles`) and reading
//! string sets out of a claims object.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A path into the claims object: one key per nesting level.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimPath(pub Vec<String>);

/// A claim path that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid claim path `{path}`: {problem}")]
pub struct ClaimPathError {
    /// The text given.
    pub path: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl ClaimPath {
    /// Parses `a.b."c.d"`: dots separate levels; a double-quoted part may contain dots.
    pub fn parse(text: &str) -> Result<Self, ClaimPathError> {
        let error = |problem| ClaimPathError {
            path: text.to_owned(),
            problem,
        };
        let mut parts = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => part.push(c),
                        None => return Err(error("unterminated quote")),
                    }
                }
                match chars.peek() {
                    None | Some('.') => {}
                    Some(_) => {
                        return Err(error("a quoted part must be followed by `.` or the end"));
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if c == '"' {
                        return Err(error("a quote may only open a part"));
                    }
                    part.push(c);
                    chars.next();
                }
            }
            if part.is_empty() {
                return Err(error("empty part"));
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some(_) => continue, // the `.` separator
            }
        }
        Ok(ClaimPath(parts))
    }

    /// A single top-level claim.
    pub fn top(name: &str) -> Self {
        ClaimPath(vec![name.to_owned()])
    }

    /// Finds the value at this path.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.0.split_first()?;
        let mut value = claims.get(first)?;
        for key in rest {
            value = value.as_object()?.get(key)?;
        }
        Some(value)
    }

    /// The top-level claim name (used for Entra's `_claim_names` overage marker).
    pub fn first(&self) -> &str {
        self.0.first().map(String::as_str).unwrap_or("")
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            if part.contains('.') {
                write!(f, "\"{part}\"")?;
            } else {
                f.write_str(part)?;
            }
        }
        Ok(())
    }
}

/// Collects strings from a claim value: an array of strings, or a space-separated string.
/// Non-string array members are ignored (they cannot name a role).
pub fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.extend(s.split_whitespace().map(str::to_owned)),
        Value::Array(items) => {
            out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned))
        }
        _ => {}
    }
}

/// Claims whose string value Istio splits on spaces before matching (Envoy `jwt_authn`
/// `normalize_payload_in_metadata.space_delimited_claims`, which Istio sets to these).
const SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// The values a `claims` condition compares, as Istio's `request.auth.claims[…]` reads them:
/// a string is one value (top-level `scope` and `permission` split on spaces), an array each
/// of its string elements; any other JSON type (number, bool, object, null) gives no value,
/// so it never matches (nor trips a `not_claims`).
pub fn condition_values(path: &ClaimPath, claims: &Map<String, Value>) -> Vec<String> {
    match path.lookup(claims) {
        Some(Value::String(s)) if path.0.len() == 1 && SPACE_DELIMITED.contains(&path.first()) => s
            .split(' ')
            .filter(|part| !part.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_quoted_paths() {
        assert_eq!(
            ClaimPath::parse("realm_access.roles").unwrap().0,
            vec!["realm_access", "roles"]
        );
        assert_eq!(
            ClaimPath::parse("resource_access.\"ml.client\".roles")
                .unwrap()
                .0,
            vec!["resource_access", "ml.client", "roles"]
        );
        assert_eq!(
            ClaimPath::parse("cognito:groups").unwrap().0,
            vec!["cognito:groups"]
        );
        assert!(ClaimPath::parse("a..b").is_err());
        assert!(ClaimPath::parse("\"a").is_err());
        assert!(ClaimPath::parse("").is_err());
        assert!(ClaimPath::parse("a.").is_err());
    }

    #[test]
    fn condition_values_read_claims_as_istio_does() {
        let claims = serde_json::json!({
            "tid": "t1", "scope": "a  b", "groups": ["g1", 2, "g2"], "n": 5, "b": true,
            "o": {"scope": "x y", "deep": ["d"]}, "permission": "p q"
        });
        let claims = claims.as_object().unwrap();
        let values = |p: &str| condition_values(&ClaimPath::parse(p).unwrap(), claims);
        assert_eq!(values("tid"), ["t1"]);
        assert_eq!(values("scope"), ["a", "b"]);
        assert_eq!(values("permission"), ["p", "q"]);
        assert_eq!(values("groups"), ["g1", "g2"]);
        assert_eq!(values("o.scope"), ["x y"]);
        assert_eq!(values("o.deep"), ["d"]);
        assert!(values("n").is_empty() && values("b").is_empty() && values("o").is_empty());
        assert!(values("missing").is_empty());
    }

    #[test]
    fn display_round_trips() {
        for text in ["a", "a.b", "resource_access.\"x.y\".roles"] {
            assert_eq!(ClaimPath::parse(text).unwrap().to_string(), text);
        }
    }
}
