//! Request matching: hosts, paths (exact, prefix, templates with captures), methods, headers.

use std::borrow::Cow;

use crate::canonical;
use crate::compiled::{CompiledRule, Effect, HostPattern, PathParameters, PathPattern, Segment};
use crate::engine::Request;
use crate::upstream::IdentityHeaderNames;

/// Path variables captured while matching, in template order.
pub type Captures = Vec<(String, String)>;

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

/// How a path pattern compares text. Deny rules compare [`Spelling::Any`]: ASCII case and
/// one trailing `/` ignored, so a deny rule catches every spelling a lenient upstream
/// (ASP.NET, Spring MVC < 6, Express) routes to the same handler. Allow rules compare
/// [`Spelling::Exact`]: a spelling nobody allowed is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// Byte for byte.
    Exact,
    /// ASCII case-insensitively, one trailing `/` ignored.
    Any,
}

impl Spelling {
    fn eq(self, a: &str, b: &str) -> bool {
        match self {
            Spelling::Exact => a == b,
            Spelling::Any => a.eq_ignore_ascii_case(b),
        }
    }

    fn strip_prefix<'t>(self, text: &'t str, prefix: &str) -> Option<&'t str> {
        let head = text.get(..prefix.len())?;
        self.eq(head, prefix).then(|| text.get(prefix.len()..))?
    }

    fn strip_suffix<'t>(self, text: &'t str, suffix: &str) -> Option<&'t str> {
        let cut = text.len().checked_sub(suffix.len())?;
        let tail = text.get(cut..)?;
        self.eq(tail, suffix).then(|| text.get(..cut))?
    }
}

/// `/a/` → `/a`; `/` stays.
fn without_trailing_slash(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    }
}

fn segment_matches(
    segment: &Segment,
    text: &str,
    spelling: Spelling,
    captures: &mut Captures,
) -> bool {
    match segment {
        Segment::Literal(literal) => spelling.eq(literal, text),
        Segment::Capture {
            prefix,
            var,
            suffix,
        } => {
            let Some(inner) = spelling
                .strip_prefix(text, prefix)
                .and_then(|t| spelling.strip_suffix(t, suffix))
            else {
                return false;
            };
            if inner.is_empty() {
                return false;
            }
            captures.push((var.clone(), inner.to_owned()));
            true
        }
    }
}

/// Matches one path pattern, returning the captures on success.
pub fn path_matches(pattern: &PathPattern, path: &str, spelling: Spelling) -> Option<Captures> {
    let path = match spelling {
        Spelling::Exact => path,
        Spelling::Any => without_trailing_slash(path),
    };
    match pattern {
        PathPattern::Exact(p) => match spelling {
            Spelling::Exact => (p == path).then(Vec::new),
            Spelling::Any => path
                .eq_ignore_ascii_case(without_trailing_slash(p))
                .then(Vec::new),
        },
        PathPattern::Prefix(prefix) => {
            let covered = spelling.strip_prefix(path, prefix).is_some()
                // `/admin/*` also covers `/admin` for a deny rule.
                || (spelling == Spelling::Any
                    && path.eq_ignore_ascii_case(without_trailing_slash(prefix)));
            covered.then(Vec::new)
        }
        PathPattern::Template {
            segments,
            open_ended,
        } => {
            let mut captures = Vec::new();
            let mut parts = path.strip_prefix('/')?.split('/');
            for segment in segments {
                let part = parts.next()?;
                if !segment_matches(segment, part, spelling, &mut captures) {
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
    // Envoy joins repeated copies of common headers with `,` before the filter runs, and a
    // server may split a value on `,`: a value counts as itself and as its elements.
    let mut values = request.values(name);
    match effect {
        Effect::Deny => {
            values.any(|v| v == value || v.split(',').map(str::trim).any(|e| e == value))
        }
        Effect::Allow => {
            let mut seen = false;
            for v in values {
                let joined = v.contains(',') && v.split(',').map(str::trim).all(|e| e == value);
                if v != value && !joined {
                    return false;
                }
                seen = true;
            }
            seen
        }
    }
}

/// Request-method override headers some frameworks honour (Rails, Laravel, ASP.NET, Express
/// `method-override`): the upstream may run the method they name.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether a rule's method list covers the request. A deny rule covers every method the
/// upstream might run: the request's, `GET` for `HEAD` (frameworks answer HEAD with the GET
/// handler) and any override header's. An allow rule must cover all of them.
fn methods_match(rule: &CompiledRule, method: &str, request: &Request<'_>) -> bool {
    if rule.methods.is_empty() {
        return true;
    }
    let listed = |m: &str| rule.methods.iter().any(|r| r.eq_ignore_ascii_case(m));
    let overrides = || {
        METHOD_OVERRIDES
            .iter()
            .flat_map(|name| request.values(name))
            .map(str::trim)
    };
    match rule.effect {
        Effect::Deny => {
            listed(method)
                || (method.eq_ignore_ascii_case("HEAD") && listed("GET"))
                || overrides().any(listed)
        }
        Effect::Allow => listed(method) && overrides().all(listed),
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
    if !methods_match(rule, method, request) {
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
    let spelling = match rule.effect {
        Effect::Deny => Spelling::Any,
        Effect::Allow => Spelling::Exact,
    };
    rule.paths
        .iter()
        .find_map(|p| path_matches(p, path, spelling))
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

    /// `/v1/models/{model}:predict`.
    fn kserve_v1() -> PathPattern {
        template(
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
        )
    }

    #[test]
    fn templates_capture_segments() {
        let kserve_v1 = kserve_v1();
        assert_eq!(
            path_matches(&kserve_v1, "/v1/models/fraud:predict", Spelling::Exact),
            Some(vec![("model".into(), "fraud".into())])
        );
        assert_eq!(
            path_matches(&kserve_v1, "/v1/models/:predict", Spelling::Exact),
            None
        );
        assert_eq!(
            path_matches(&kserve_v1, "/v1/models/fraud:explain", Spelling::Exact),
            None
        );
        assert_eq!(
            path_matches(&kserve_v1, "/v1/models/fraud:predict/x", Spelling::Exact),
            None
        );
    }

    #[test]
    fn prefixes_and_exact() {
        let matches =
            |pattern: PathPattern, path| path_matches(&pattern, path, Spelling::Exact).is_some();
        assert!(matches(
            PathPattern::Prefix("/v2/health/".into()),
            "/v2/health/ready"
        ));
        assert!(!matches(
            PathPattern::Prefix("/v2/health/".into()),
            "/v2/healthz"
        ));
        assert!(matches(PathPattern::Exact("/score".into()), "/score"));
        assert!(!matches(PathPattern::Exact("/score".into()), "/score/"));
    }

    #[test]
    fn deny_rules_catch_every_spelling_allow_rules_only_their_own() {
        let exact = PathPattern::Exact("/admin".into());
        let prefix = PathPattern::Prefix("/admin/".into());
        let kserve_v1 = kserve_v1();
        for path in ["/admin", "/admin/", "/Admin", "/ADMIN/"] {
            assert!(
                path_matches(&exact, path, Spelling::Any).is_some(),
                "{path}"
            );
        }
        for path in ["/admin", "/admin/", "/Admin/x", "/ADMIN"] {
            assert!(
                path_matches(&prefix, path, Spelling::Any).is_some(),
                "{path}"
            );
        }
        assert!(path_matches(&prefix, "/administrator", Spelling::Any).is_none());
        assert!(path_matches(&kserve_v1, "/V1/Models/legacy:PREDICT/", Spelling::Any).is_some());
        assert!(path_matches(&exact, "/Admin", Spelling::Exact).is_none());
        assert!(path_matches(&exact, "/admin/", Spelling::Exact).is_none());
        assert!(path_matches(&prefix, "/admin", Spelling::Exact).is_none());
        assert!(path_matches(&kserve_v1, "/v1/models/x:predict/", Spelling::Exact).is_none());
    }
}
