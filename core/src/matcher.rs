//! Request matching: hosts, paths (exact, prefixes, suffixes, templates with captures),
//! methods, headers, and the exclusions of each.

use std::borrow::Cow;

use crate::canonical;
use crate::compiled::{
    CompiledRule, Effect, HeaderCondition, HostPattern, PathParameters, PathPattern, Segment,
    ValuePattern,
};
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

/// Whether a host pattern matches a canonical host.
pub fn host_pattern_matches(pattern: &HostPattern, host: &str) -> bool {
    match pattern {
        HostPattern::Exact(h) => h == host,
        HostPattern::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        HostPattern::Prefix(prefix) => host.starts_with(prefix.as_str()),
        HostPattern::Any => true,
    }
}

/// How widely a condition reads the request: the reading that cannot widen access. A
/// rule's own conditions read [`Reading::Narrow`] for an allow rule and [`Reading::Wide`]
/// for a deny rule; its exclusions (`not_…`) read the opposite way, so an exclusion is never
/// a way around a deny rule, and a spelling an allow rule excludes stays excluded however
/// the upstream reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Only what the request says exactly: every copy of a header, the request's own
    /// method, the exact spelling of the path.
    Narrow,
    /// Everything the upstream might make of the request: any copy of a header, any method
    /// it might run, any spelling of the path it routes to the same handler.
    Wide,
}

impl Reading {
    /// How a rule reads its own conditions.
    pub fn of_conditions(effect: Effect) -> Reading {
        match effect {
            Effect::Allow => Reading::Narrow,
            Effect::Deny => Reading::Wide,
        }
    }

    /// How a rule reads its exclusions: the opposite of its conditions.
    pub fn of_exclusions(effect: Effect) -> Reading {
        match Reading::of_conditions(effect) {
            Reading::Narrow => Reading::Wide,
            Reading::Wide => Reading::Narrow,
        }
    }

    /// The path spelling this reading compares.
    pub fn spelling(self) -> Spelling {
        match self {
            Reading::Narrow => Spelling::Exact,
            Reading::Wide => Spelling::Any,
        }
    }
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
    let raw = path;
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
        // INVARIANT: a text prefix never ends with `/` (`/a/*` is a `Prefix`), so the path
        // without its trailing `/` still starts with it whenever the path does.
        PathPattern::TextPrefix(prefix) => spelling.strip_prefix(path, prefix).map(|_| Vec::new()),
        PathPattern::Suffix(suffix) => {
            let covered = spelling.strip_suffix(raw, suffix).is_some()
                // `*.json/` also covers `/a.json` for a deny rule.
                || (spelling == Spelling::Any
                    && spelling
                        .strip_suffix(path, without_trailing_slash(suffix))
                        .is_some());
            covered.then(Vec::new)
        }
        PathPattern::Any => Some(Vec::new()),
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

impl ValuePattern {
    /// Whether one value (or one element of a `,`-list) matches; case-sensitive, as Istio.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValuePattern::Exact(text) => value == text,
            ValuePattern::Prefix(text) => value.starts_with(text.as_str()),
            ValuePattern::Suffix(text) => value.ends_with(text.as_str()),
            ValuePattern::Present => true,
        }
    }

    /// Whether one claim value matches: as [`ValuePattern::matches`], except that `*` needs a
    /// non-empty value (Istio compiles a claim's `*` to the regex `.+`).
    pub fn matches_claim(&self, value: &str) -> bool {
        match self {
            ValuePattern::Present => !value.is_empty(),
            other => other.matches(value),
        }
    }
}

/// Whether one header value matches any of the patterns, in the given reading.
///
/// Envoy joins repeated copies of common headers with `,` before the filter runs, and a
/// server may split a value on `,`: the wide reading takes a value as itself and as each of
/// its elements; the narrow one needs the whole value to match, or every element of it.
/// A value that was not UTF-8 (read with U+FFFD in it) is not what any pattern says: the
/// narrow reading never takes it, the wide one compares the readable rest (so it is present,
/// and its ASCII prefix or suffix counts).
fn value_matches(patterns: &[ValuePattern], value: &str, reading: Reading) -> bool {
    let any = |text: &str| patterns.iter().any(|p| p.matches(text));
    let mut elements = value.split(',').map(str::trim);
    match reading {
        Reading::Wide => any(value) || (value.contains(',') && elements.any(any)),
        Reading::Narrow if value.contains('\u{FFFD}') => false,
        Reading::Narrow if value.contains(',') => {
            patterns.iter().any(|p| match p {
                ValuePattern::Exact(text) => text == value,
                ValuePattern::Present => true,
                ValuePattern::Prefix(_) | ValuePattern::Suffix(_) => false,
            }) || elements.all(any)
        }
        Reading::Narrow => any(value),
    }
}

/// Whether a header condition holds in the given reading: the wide reading if any copy of
/// the header matches, the narrow one if there is a copy and every copy matches. The
/// filter's own identity headers never match (client-sent copies are dropped).
pub fn header_matches(
    condition: &HeaderCondition,
    request: &Request<'_>,
    names: &IdentityHeaderNames,
    reading: Reading,
) -> bool {
    if names.owns(&condition.name) {
        return false;
    }
    let mut values = request.values(&condition.name);
    match reading {
        Reading::Wide => values.any(|v| value_matches(&condition.patterns, v, reading)),
        Reading::Narrow => {
            // Every copy under any spelling must match (an upstream may read `x_a` as `x-a`),
            // and one copy must carry the name as written: Envoy and Istio compare names
            // exactly, and an edge proxy that strips `x-a` may let `x_a` through.
            let as_written = request
                .headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(&condition.name));
            if !as_written {
                return false;
            }
            let mut seen = false;
            for value in values {
                if !value_matches(&condition.patterns, value, reading) {
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
pub const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether a method list names the request's method. The wide reading takes every method the
/// upstream might run: the request's, `GET` for `HEAD` (frameworks answer HEAD with the GET
/// handler) and any override header's; the narrow one needs the request's and every
/// override's.
fn methods_listed(list: &[String], method: &str, request: &Request<'_>, reading: Reading) -> bool {
    let listed = |m: &str| list.iter().any(|r| r.eq_ignore_ascii_case(m));
    let overrides = || {
        METHOD_OVERRIDES
            .iter()
            .flat_map(|name| request.values(name))
            .map(str::trim)
    };
    match reading {
        Reading::Wide => {
            listed(method)
                || (method.eq_ignore_ascii_case("HEAD") && listed("GET"))
                || overrides().any(listed)
        }
        Reading::Narrow => listed(method) && overrides().all(listed),
    }
}

/// Whether a request is a CORS preflight as Envoy's `jwt_authn` tells one
/// (`bypass_cors_preflight`): method `OPTIONS` with non-empty `origin` and
/// `access-control-request-method` headers (names exactly as Envoy's). A method override
/// header disqualifies it: the upstream might run the method it names, with no token asked.
pub fn is_cors_preflight(request: &Request<'_>) -> bool {
    let present = |name: &str| {
        request
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && !v.is_empty())
    };
    request.method == "OPTIONS"
        && present("origin")
        && present("access-control-request-method")
        && !METHOD_OVERRIDES
            .iter()
            .any(|name| request.values(name).next().is_some())
}

/// Matches a rule against a request; `host` and `path` are canonical (see
/// [`crate::canonical`]). A rule matches when each of its lists matches (or is empty) and
/// none of its exclusions does.
pub fn rule_matches(
    rule: &CompiledRule,
    method: &str,
    host: &str,
    path: &str,
    request: &Request<'_>,
    names: &IdentityHeaderNames,
) -> Option<Captures> {
    let own = Reading::of_conditions(rule.effect);
    let exclusion = Reading::of_exclusions(rule.effect);
    let included = (rule.methods.is_empty() || methods_listed(&rule.methods, method, request, own))
        && (rule.hosts.is_empty() || rule.hosts.iter().any(|p| host_pattern_matches(p, host)))
        && rule
            .headers
            .iter()
            .all(|condition| header_matches(condition, request, names, own));
    let excluded = || {
        (!rule.not_methods.is_empty()
            && methods_listed(&rule.not_methods, method, request, exclusion))
            || rule.not_hosts.iter().any(|p| host_pattern_matches(p, host))
            || rule
                .not_headers
                .iter()
                .any(|condition| header_matches(condition, request, names, exclusion))
            || rule
                .not_paths
                .iter()
                .any(|p| path_matches(p, path, exclusion.spelling()).is_some())
    };
    if !included || excluded() {
        return None;
    }
    if rule.paths.is_empty() {
        return Some(Vec::new());
    }
    rule.paths
        .iter()
        .find_map(|p| path_matches(p, path, own.spelling()))
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
