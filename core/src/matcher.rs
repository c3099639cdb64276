//! Request matching: hosts, paths (exact, prefix, templates with captures), methods, headers.

use std::borrow::Cow;

use crate::canonical;
use crate::compiled::{CompiledRule, Effect, HostPattern, PathParameters, PathPattern, Segment};
use crate::engine::Request;
use crate::upstream::IdentityHeaderNames;

/// Path variables captured while matching, in template order.
pub type Captures = Vec<(String, String)>;

/// The path without query or fragment.
pub fn strip_query(path: &str) -> &str {
    canonical::strip_query(path)
}

/// Whether a path is not already in the form rules are matched on (see
/// [`crate::canonical`]): such a path in a rule could never match.
pub fn is_unnormalized(path: &str) -> bool {
    !matches!(
        canonical::canonical_path(path, PathParameters::Reject),
        Ok(Cow::Borrowed(canonical)) if canonical == path
    )
}

/// The first segment of a path: the index key.
pub fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').next().unwrap_or("")
}

fn host_matches(patterns: &[HostPattern], host: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        })
}

fn segment_matches(segment: &Segment, text: &str, captures: &mut Captures) -> bool {
    match segment {
        Segment::Literal(literal) => literal == text,
        Segment::Capture {
            prefix,
            var,
            suffix,
        } => {
            let Some(inner) = text
                .strip_prefix(prefix.as_str())
                .and_then(|t| t.strip_suffix(suffix.as_str()))
            else {
                return false;
            };
            if inner.is_empty() || text.len() < prefix.len() + suffix.len() {
                return false;
            }
            captures.push((var.clone(), inner.to_owned()));
            true
        }
    }
}

/// Matches one path pattern, returning the captures on success.
pub fn path_matches(pattern: &PathPattern, path: &str) -> Option<Captures> {
    match pattern {
        PathPattern::Exact(p) => (p == path).then(Vec::new),
        PathPattern::Prefix(prefix) => path.starts_with(prefix.as_str()).then(Vec::new),
        PathPattern::Template {
            segments,
            open_ended,
        } => {
            let mut captures = Vec::new();
            let mut parts = path.strip_prefix('/')?.split('/');
            for segment in segments {
                let part = parts.next()?;
                if !segment_matches(segment, part, &mut captures) {
                    return None;
                }
            }
            match parts.next() {
                None => Some(captures),
                Some(_) if *open_ended => Some(captures),
                Some(_) => None,
            }
        }
    }
}

/// Whether a rule's header condition holds. A repeated header is read the way that cannot
/// widen access: a deny rule holds if any value matches, an allow rule only if every value
/// does. The filter's own identity headers never hold (client-sent copies are dropped).
fn header_holds(
    effect: Effect,
    request: &Request<'_>,
    names: &IdentityHeaderNames,
    name: &str,
    value: &str,
) -> bool {
    if names.owns(name) {
        return false;
    }
    let mut values = request.values(name);
    match effect {
        Effect::Deny => values.any(|v| v == value),
        Effect::Allow => {
            let mut seen = false;
            for v in values {
                if v != value {
                    return false;
                }
                seen = true;
            }
            seen
        }
    }
}

/// Matches a rule against a request; `host` and `path` are canonical (see
/// [`crate::canonical`]).
pub fn rule_matches(
    rule: &CompiledRule,
    method: &str,
    host: &str,
    path: &str,
    request: &Request<'_>,
    names: &IdentityHeaderNames,
) -> Option<Captures> {
    if !rule.methods.is_empty() && !rule.methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
        return None;
    }
    if !host_matches(&rule.hosts, host) {
        return None;
    }
    if !rule
        .headers
        .iter()
        .all(|(name, value)| header_holds(rule.effect, request, names, name, value))
    {
        return None;
    }
    if rule.paths.is_empty() {
        return Some(Vec::new());
    }
    rule.paths.iter().find_map(|p| path_matches(p, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(segments: Vec<Segment>, open_ended: bool) -> PathPattern {
        PathPattern::Template {
            segments,
            open_ended,
        }
    }

    #[test]
    fn templates_capture_segments() {
        let kserve_v1 = template(
            vec![
                Segment::Literal("v1".into()),
                Segment::Literal("models".into()),
                Segment::Capture {
                    prefix: String::new(),
                    var: "model".into(),
                    suffix: ":predict".into(),
                },
            ],
            false,
        );
        assert_eq!(
            path_matches(&kserve_v1, "/v1/models/fraud:predict"),
            Some(vec![("model".into(), "fraud".into())])
        );
        assert_eq!(path_matches(&kserve_v1, "/v1/models/:predict"), None);
        assert_eq!(path_matches(&kserve_v1, "/v1/models/fraud:explain"), None);
        assert_eq!(path_matches(&kserve_v1, "/v1/models/fraud:predict/x"), None);
    }

    #[test]
    fn prefixes_and_exact() {
        assert!(
            path_matches(
                &PathPattern::Prefix("/v2/health/".into()),
                "/v2/health/ready"
            )
            .is_some()
        );
        assert!(path_matches(&PathPattern::Prefix("/v2/health/".into()), "/v2/healthz").is_none());
        assert!(path_matches(&PathPattern::Exact("/score".into()), "/score").is_some());
        assert!(path_matches(&PathPattern::Exact("/score".into()), "/score/").is_none());
    }
}
