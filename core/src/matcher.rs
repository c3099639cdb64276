//! Request matching: hosts, paths (exact, prefix, templates with captures), methods, headers.

use crate::compiled::{CompiledRule, HostPattern, PathPattern, Segment};

/// Path variables captured while matching, in template order.
pub type Captures = Vec<(String, String)>;

/// Lower-cases a host and drops the port (`[::1]:8080` → `[::1]`).
pub fn normalize_host(host: &str) -> String {
    let without_port = if host.starts_with('[') {
        host.find(']')
            .and_then(|end| host.get(..=end))
            .unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// The path without query or fragment.
pub fn strip_query(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    path.get(..end).unwrap_or(path)
}

/// Whether a path could be read differently by the upstream than by the matcher: dot
/// segments, empty segments, backslashes or encoded separators. Such paths are refused
/// rather than guessed at (a deny rule must not be sidestepped by `/a/../b`).
pub fn is_unnormalized(path: &str) -> bool {
    if !path.starts_with('/') {
        return true;
    }
    if path.contains('\\') || path.contains("//") {
        return true;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%2e") {
        return true;
    }
    path.split('/')
        .any(|segment| segment == "." || segment == "..")
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

/// Matches a rule against a request; `host` is normalised, `path` stripped of its query.
pub fn rule_matches<'h>(
    rule: &CompiledRule,
    method: &str,
    host: &str,
    path: &str,
    header: impl Fn(&str) -> Option<&'h str>,
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
        .all(|(name, value)| header(name) == Some(value.as_str()))
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
    fn hosts_are_normalised() {
        assert_eq!(
            normalize_host("Fraud.WestEurope.inference.ml.azure.com:443"),
            "fraud.westeurope.inference.ml.azure.com"
        );
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("example.com."), "example.com");
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

    #[test]
    fn unnormalized_paths_are_detected() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "//a",
            "/a%2fb",
            "/a%2E%2E/b",
            "a",
            "/a\\b",
            "/..",
        ] {
            assert!(is_unnormalized(bad), "{bad}");
        }
        for good in ["/", "/score", "/v1/models/m:predict", "/a.b/c..d"] {
            assert!(!is_unnormalized(good), "{good}");
        }
    }
}
