//! `[[rules]]`: what a rule matches (hosts, methods, paths, headers) and its name; whom it
//! names is [`super::principals`]. Header conditions are checked against what the engine
//! will see: headers under the identity prefix are stripped before matching (such a rule
//! could never match), and values must be visible ASCII (a non-UTF-8 request header is
//! matched through a lossy conversion, so a rule value must never contain what that
//! conversion produces).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;

use toml::Spanned;

use super::diagnostics::Context;
use super::principals::principal;
use crate::compiled::{
    CompiledRule, HeaderCondition, HostPattern, PathPattern, Segment, ValuePattern,
};
use crate::source::RuleSource;
use crate::{canonical, matcher};

/// Compiled rules, the role names they intern (index = role id), and each rule's name span.
pub(super) struct Rules {
    pub(super) rules: Vec<CompiledRule>,
    pub(super) roles: Vec<String>,
    pub(super) spans: Vec<Range<usize>>,
}

/// Compiles every rule; names must be unique. `identity_prefix` is the policy's (`None`
/// when it is itself invalid, which was reported).
pub(super) fn compile_rules(
    cx: &mut Context<'_>,
    sources: &[Spanned<RuleSource>],
    issuers: &HashMap<&str, u32>,
    identity_prefix: Option<&str>,
) -> Rules {
    let mut out = Rules {
        rules: Vec::new(),
        roles: Vec::new(),
        spans: Vec::new(),
    };
    let mut role_ids: HashMap<String, u32> = HashMap::new();
    let mut names: HashMap<String, Range<usize>> = HashMap::new();
    for rule in sources {
        let name = rule.get_ref().name.get_ref();
        if let Some(first) = names.get(name) {
            let (line, _) = cx.position(first.start);
            cx.error(
                "duplicate_rule",
                &rule.get_ref().name.span(),
                format!("rule name `{name}` is used twice"),
                format!("the first `{name}` is on line {line}; rule names must be unique"),
            );
            continue;
        }
        names.insert(name.clone(), rule.get_ref().name.span());
        let roles = &mut out.roles;
        let mut intern = |role: &str| {
            let next = u32::try_from(role_ids.len()).unwrap_or(u32::MAX);
            *role_ids.entry(role.to_owned()).or_insert_with(|| {
                roles.push(role.to_owned());
                next
            })
        };
        if let Some(compiled) = compile_rule(cx, rule, issuers, identity_prefix, &mut intern) {
            out.rules.push(compiled);
            out.spans.push(rule.get_ref().name.span());
        }
    }
    out
}

fn compile_rule(
    cx: &mut Context<'_>,
    spanned: &Spanned<RuleSource>,
    issuers: &HashMap<&str, u32>,
    identity_prefix: Option<&str>,
    intern: &mut dyn FnMut(&str) -> u32,
) -> Option<CompiledRule> {
    let rule = spanned.get_ref();
    let name = rule.name.get_ref().clone();
    let mark = cx.mark();
    if name.is_empty() {
        cx.error(
            "empty_rule_name",
            &rule.name.span(),
            "rule name is empty",
            "name the rule: the name appears in every decision and audit line",
        );
    }
    let hosts = host_patterns(cx, &rule.hosts);
    let not_hosts = host_patterns(cx, &rule.not_hosts);
    let methods = method_list(cx, &rule.methods);
    let not_methods = method_list(cx, &rule.not_methods);
    let mut paths = Vec::new();
    let mut variables: Option<BTreeSet<String>> = None;
    for path in &rule.paths {
        match parse_path(path.get_ref()) {
            Ok((pattern, vars)) => {
                let vars: BTreeSet<String> = vars.into_iter().collect();
                // A role template may only use variables every path captures.
                variables = Some(match variables {
                    None => vars,
                    Some(seen) => seen.intersection(&vars).cloned().collect(),
                });
                paths.push(pattern);
            }
            Err(error) => cx.error("bad_path", &path.span(), error.message, error.hint),
        }
    }
    let mut not_paths = Vec::new();
    for path in &rule.not_paths {
        match parse_path(path.get_ref()) {
            // An exclusion captures nothing: `{var}` in it only says "any segment".
            Ok((pattern, _)) => not_paths.push(pattern),
            Err(error) => cx.error("bad_path", &path.span(), error.message, error.hint),
        }
    }
    let variables = variables.unwrap_or_default();
    let headers = header_conditions(cx, rule, &rule.headers, identity_prefix);
    let not_headers = header_conditions(cx, rule, &rule.not_headers, identity_prefix);
    let (effect, principal) = principal(cx, rule, issuers, &variables, intern)?;
    if cx.errors_since(mark) {
        return None;
    }
    let compiled = CompiledRule {
        name,
        effect,
        hosts,
        not_hosts,
        methods,
        not_methods,
        paths,
        not_paths,
        headers,
        not_headers,
        principal,
        verify_token: rule.verify_token,
        audit: rule.audit,
    };
    check_exclusions(cx, rule, &compiled);
    if cx.errors_since(mark) {
        return None;
    }
    Some(compiled)
}

/// What an exclusion says about its rule: nothing (it excludes nothing the rule matches),
/// or everything (the rule could never match).
fn check_exclusions(cx: &mut Context<'_>, source: &RuleSource, rule: &CompiledRule) {
    let name = source.name.get_ref();
    let useless = |cx: &mut Context<'_>, span: &Range<usize>, what: String| {
        cx.warn(
            "useless_exclusion",
            span,
            format!("rule `{name}`: {what}"),
            "remove the exclusion, or change it to what the rule's own list matches",
        );
    };
    let never = |cx: &mut Context<'_>, span: &Range<usize>, what: String| {
        cx.error(
            "exclusion_excludes_all",
            span,
            format!("rule `{name}` can never match: {what}"),
            "an exclusion narrows a rule; to stop every request, write a deny rule",
        );
    };
    // Methods.
    for (written, method) in source.not_methods.iter().zip(&rule.not_methods) {
        if !rule.methods.is_empty() && !rule.methods.contains(method) {
            useless(
                cx,
                &written.span(),
                format!("`not_methods` excludes `{method}`, which `methods` does not name"),
            );
        }
    }
    if !rule.methods.is_empty()
        && rule.methods.iter().all(|m| rule.not_methods.contains(m))
        && let Some(first) = source.not_methods.first()
    {
        never(
            cx,
            &first.span(),
            "`not_methods` excludes every method in `methods`".to_owned(),
        );
    }
    // Hosts.
    let every_host = rule.not_hosts.contains(&HostPattern::Any)
        || (!rule.hosts.is_empty() && rule.hosts.iter().all(|h| rule.not_hosts.contains(h)));
    if every_host && let Some(first) = source.not_hosts.first() {
        never(
            cx,
            &first.span(),
            "`not_hosts` excludes every host the rule names".to_owned(),
        );
    } else if !rule.hosts.is_empty() {
        for (written, pattern) in source.not_hosts.iter().zip(&rule.not_hosts) {
            if let HostPattern::Exact(host) = pattern
                && !rule
                    .hosts
                    .iter()
                    .any(|h| matcher::host_pattern_matches(h, host))
            {
                useless(
                    cx,
                    &written.span(),
                    format!("`not_hosts` excludes `{host}`, which `hosts` does not match"),
                );
            }
        }
    }
    // Paths.
    let every_path = rule.not_paths.contains(&PathPattern::Any)
        || (!rule.paths.is_empty() && rule.paths.iter().all(|p| rule.not_paths.contains(p)));
    if every_path && let Some(first) = source.not_paths.first() {
        never(
            cx,
            &first.span(),
            "`not_paths` excludes every path the rule names".to_owned(),
        );
    } else if !rule.paths.is_empty() {
        for (written, pattern) in source.not_paths.iter().zip(&rule.not_paths) {
            if let PathPattern::Exact(path) = pattern
                && !rule
                    .paths
                    .iter()
                    .any(|p| matcher::path_matches(p, path, matcher::Spelling::Any).is_some())
            {
                useless(
                    cx,
                    &written.span(),
                    format!("`not_paths` excludes `{path}`, which `paths` does not match"),
                );
            }
        }
    }
    // Headers: a pattern both required and excluded.
    for condition in &rule.not_headers {
        let required = rule.headers.iter().find(|c| c.name == condition.name);
        if let Some(required) = required
            && required
                .patterns
                .iter()
                .any(|p| condition.patterns.contains(p))
            && let Some(span) = source
                .not_headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&condition.name))
                .map(|(_, v)| v.span())
        {
            cx.warn(
                "contradictory_header",
                &span,
                format!(
                    "rule `{name}` both requires and excludes the same value of header `{}`",
                    condition.name
                ),
                "a request can then only match through another of the required values: remove the shared pattern from one side",
            );
        }
    }
}

/// Compiles a `hosts` or `not_hosts` list.
fn host_patterns(cx: &mut Context<'_>, list: &[Spanned<String>]) -> Vec<HostPattern> {
    let mut out = Vec::new();
    for host in list {
        if let Some(pattern) = parse_host(cx, host)
            && !out.contains(&pattern)
        {
            out.push(pattern);
        }
    }
    out
}

fn method_list(cx: &mut Context<'_>, list: &[Spanned<String>]) -> Vec<String> {
    let mut methods = Vec::new();
    for method in list {
        let upper = method.get_ref().to_ascii_uppercase();
        if upper.is_empty() || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
            cx.error(
                "bad_method",
                &method.span(),
                format!("`{}` is not an HTTP method", method.get_ref()),
                "write a method name such as `POST` (compared case-insensitively)",
            );
        } else if !methods.contains(&upper) {
            methods.push(upper);
        }
    }
    methods
}

/// RFC 9110 `tchar`.
fn is_token_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Whether a header value can equal what the engine compares: visible ASCII, single spaces
/// inside only (Envoy trims the ends).
fn is_matchable_value(value: &str) -> bool {
    value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
        && !value.starts_with(' ')
        && !value.ends_with(' ')
}

/// Compiles `headers` or `not_headers`: each name with a value pattern or a list of them.
fn header_conditions(
    cx: &mut Context<'_>,
    rule: &RuleSource,
    table: &BTreeMap<String, Spanned<toml::Value>>,
    identity_prefix: Option<&str>,
) -> Vec<HeaderCondition> {
    let mut out: Vec<HeaderCondition> = Vec::new();
    for (name, value) in table {
        let Some(lower) = header_name(cx, rule, name, value, identity_prefix) else {
            continue;
        };
        let patterns = value_patterns(cx, &lower, value);
        if patterns.is_empty() {
            continue;
        }
        // `X-A` and `x_a` are one header to the engine (names fold `_` to `-`).
        match out
            .iter_mut()
            .find(|c| crate::upstream::same_header_name(&c.name, &lower))
        {
            Some(_) => cx.error(
                "duplicate_header",
                &value.span(),
                format!("header `{name}` is named twice in one table"),
                "header names compare case-insensitively, with `_` and `-` alike: write the patterns of both in one list",
            ),
            None => out.push(HeaderCondition {
                name: lower,
                patterns,
            }),
        }
    }
    out
}

/// Checks a header name a rule matches on; returns it in lower case.
fn header_name(
    cx: &mut Context<'_>,
    rule: &RuleSource,
    name: &str,
    value: &Spanned<toml::Value>,
    identity_prefix: Option<&str>,
) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with(':') {
        // Pseudo-headers carry the raw request line, which the engine matches through
        // `hosts`, `methods` and `paths` after canonicalising it; `explain` has none.
        cx.error(
            "pseudo_header_rule",
            &value.span(),
            format!(
                "rule `{}` matches the pseudo-header `{lower}`",
                rule.name.get_ref()
            ),
            "match the request line with `hosts`, `methods` and `paths`: they see the canonical form the upstream reads",
        );
        return None;
    }
    if lower == "host" {
        // Envoy turns `Host` into `:authority` before any filter runs: a rule on `host`
        // would match in `explain` and never in Envoy.
        cx.error(
            "host_header_rule",
            &value.span(),
            format!(
                "rule `{}` matches the header `host`, which Envoy only carries as `:authority`: the rule could never match",
                rule.name.get_ref()
            ),
            "match the host with `hosts = [\"…\"]`: it sees the host without port, lower-cased, as every request carries it",
        );
        return None;
    }
    if lower.is_empty() || !lower.bytes().all(is_token_char) {
        cx.error(
            "bad_header_name",
            &value.span(),
            format!("`{name}` is not an HTTP header name"),
            "header names are letters, digits and `-`, e.g. `azureml-model-deployment`",
        );
        return None;
    }
    if let Some(prefix) = identity_prefix.filter(|p| {
        lower
            .get(..p.len())
            .is_some_and(|start| crate::upstream::same_header_name(start, p))
    }) {
        cx.error(
            "identity_header_rule",
            &value.span(),
            format!(
                "rule `{}` matches header `{lower}`, but headers starting with `{prefix}` are removed from every request before rules are matched: the rule could never match",
                rule.name.get_ref()
            ),
            "the identity headers are claimgate's own output to the upstream; match the caller with `allow`/`deny` (issuers, subjects, roles, scopes) instead",
        );
        return None;
    }
    Some(lower)
}

const VALUE_FORMS: &str = "a header value pattern is exact (`blue`), a prefix (`blue*`), a suffix (`*-green`) or `*` (present with any value)";

/// Compiles a header condition's value: a pattern or a non-empty list of them (any of).
fn value_patterns(
    cx: &mut Context<'_>,
    name: &str,
    value: &Spanned<toml::Value>,
) -> Vec<ValuePattern> {
    let texts: Vec<&str> = match value.get_ref() {
        toml::Value::String(text) => vec![text.as_str()],
        toml::Value::Array(items) if !items.is_empty() => {
            let texts: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
            let Some(texts) = texts else {
                cx.error(
                    "bad_header_value",
                    &value.span(),
                    format!("the values for header `{name}` must be strings"),
                    VALUE_FORMS,
                );
                return Vec::new();
            };
            texts
        }
        toml::Value::Array(_) => {
            cx.error(
                "bad_header_value",
                &value.span(),
                format!("the list of values for header `{name}` is empty: no value could match"),
                "write at least one pattern; `\"*\"` stands for any value",
            );
            return Vec::new();
        }
        _ => {
            cx.error(
                "bad_header_value",
                &value.span(),
                format!("the value for header `{name}` must be a string or a list of strings"),
                VALUE_FORMS,
            );
            return Vec::new();
        }
    };
    let mut patterns = Vec::new();
    for text in texts {
        match parse_value_pattern(text) {
            Ok(pattern) => {
                if !patterns.contains(&pattern) {
                    patterns.push(pattern);
                }
            }
            Err((message, hint)) => {
                let span = cx.narrow(&value.span(), text);
                cx.error(
                    "bad_header_value",
                    &span,
                    format!("header `{name}`: {message}"),
                    hint,
                );
            }
        }
    }
    patterns
}

/// Parses one header value pattern (Istio's string match).
pub fn parse_value_pattern(text: &str) -> Result<ValuePattern, (String, &'static str)> {
    if text.is_empty() {
        return Err((
            "the value pattern is empty".to_owned(),
            "write `\"*\"` for a header present with any value, or use `not_headers = { NAME = \"*\" }` for an absent header",
        ));
    }
    if text == "*" {
        return Ok(ValuePattern::Present);
    }
    let (pattern, probe) = if let Some(suffix) = text.strip_prefix('*') {
        (
            ValuePattern::Suffix(suffix.to_owned()),
            format!("x{suffix}"),
        )
    } else if let Some(prefix) = text.strip_suffix('*') {
        (
            ValuePattern::Prefix(prefix.to_owned()),
            format!("{prefix}x"),
        )
    } else {
        (ValuePattern::Exact(text.to_owned()), text.to_owned())
    };
    if probe.contains('*') {
        return Err((
            format!("`{text}`: `*` may only start or end a value pattern, or stand alone"),
            "header value patterns have no wildcard inside (as Istio): split it into a prefix `a*` and a suffix `*b` condition, or match one of them",
        ));
    }
    if !is_matchable_value(&probe) {
        return Err((
            format!("`{text}` is not visible ASCII"),
            "use printable ASCII (spaces only between words): request values outside it never match",
        ));
    }
    Ok(pattern)
}

/// Compiles a `hosts` entry to what [`canonical::canonical_host`] makes of a request's host:
/// a pattern that no canonical host can equal could never match, so it is refused. ASCII
/// case and one trailing dot are normalised away, as they are from requests.
fn parse_host(cx: &mut Context<'_>, host: &Spanned<String>) -> Option<HostPattern> {
    let written = host.get_ref();
    let lower = written.to_ascii_lowercase();
    if lower == "*" {
        return Some(HostPattern::Any);
    }
    let text = lower.strip_suffix('.').unwrap_or(&lower);
    let (form, name) = if let Some(suffix) = text.strip_prefix("*.") {
        (HostForm::Suffix, suffix)
    } else if let Some(prefix) = lower.strip_suffix('*') {
        (HostForm::Prefix, prefix)
    } else {
        (HostForm::Exact, text)
    };
    // What a request's host must look like for the pattern to match: a prefix is checked
    // as the start of a host name.
    let probe = match form {
        HostForm::Prefix => format!("{name}x"),
        HostForm::Exact | HostForm::Suffix => name.to_owned(),
    };
    let problem = if !written.is_ascii() {
        Some((
            format!(
                "`{written}` is not ASCII: Envoy passes international host names in their punycode form (`xn--…`), so this pattern could never match"
            ),
            "write the punycode form of the name (e.g. `xn--bcher-kva.example` for `bücher.example`)",
        ))
    } else if name.contains('/')
        || (!name.starts_with('[') && name.contains(':'))
        || name.contains("]:")
    {
        Some((
            format!("`{written}` is not a host name (no port, scheme or path)"),
            "write the host alone, e.g. `fraud.westeurope.inference.ml.azure.com`; ports never take part in matching",
        ))
    } else if name.contains('*') {
        Some((
            format!(
                "`{written}`: `*` may only stand first (`*.example.com`), last (`api.*`) or alone (`*`)"
            ),
            "write e.g. `*.example.com`, `models-*` or `*`",
        ))
    } else if (form == HostForm::Suffix && name.starts_with('['))
        || name.is_empty()
        || !canonical::canonical_host(&probe).is_ok_and(|canonical| canonical == probe)
    {
        Some((
            format!(
                "`{written}` is not a host name a request can carry, so this pattern could never match"
            ),
            "hosts are dot-separated labels of letters, digits, `-` and `_` (or an `[IPv6]` literal), with no spaces, `@` or empty labels",
        ))
    } else {
        None
    };
    if let Some((message, hint)) = problem {
        cx.error("bad_host", &host.span(), message, hint);
        return None;
    }
    Some(match form {
        HostForm::Suffix => HostPattern::Suffix(format!(".{name}")),
        HostForm::Prefix => HostPattern::Prefix(name.to_owned()),
        HostForm::Exact => HostPattern::Exact(name.to_owned()),
    })
}

/// The forms of a written host pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostForm {
    Exact,
    Suffix,
    Prefix,
}

/// Whether `name` can name a path variable.
pub(super) fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Why a path pattern is refused, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    /// What is wrong with the pattern.
    pub message: String,
    /// How to write it.
    pub hint: &'static str,
}

const PATH_FORMS: &str = "paths are exact (`/score`), prefixes (`/v2/health/*`, or `/v2/mod*` without a segment boundary), suffixes (`*/infer`, `*.json`), templates (`/v2/models/{model}/infer`) or `*` (every path)";

fn bad_path(message: String) -> PathError {
    PathError {
        message,
        hint: PATH_FORMS,
    }
}

/// Refuses what a matched (decoded, parameter-free) request path never holds.
fn check_path_text(text: &str) -> Result<(), PathError> {
    if text.contains(['?', '#']) {
        return Err(bad_path(format!(
            "`{text}`: paths are matched without query or fragment"
        )));
    }
    if text.contains('%') {
        return Err(PathError {
            message: format!(
                "`{text}` contains `%`: rules are matched on the decoded request path, which never holds a `%`, so this pattern could never match"
            ),
            hint: "write the path decoded, as the upstream reads it: `/models/my model`, not `/models/my%20model`",
        });
    }
    if text.contains(';') {
        return Err(PathError {
            message: format!(
                "`{text}` contains `;`: requests with path parameters are refused (or, with `path_parameters = \"strip\"`, matched without them), so this pattern could never match"
            ),
            hint: "write the path without its `;…` parameters",
        });
    }
    Ok(())
}

/// Parses a path pattern; returns it and the variables it captures.
///
/// Patterns are written as [`canonical::canonical_path`] leaves a request path: decoded,
/// without path parameters, without `.`/`..` or empty segments. Anything else could never
/// match, so it is refused.
pub fn parse_path(text: &str) -> Result<(PathPattern, Vec<String>), PathError> {
    if text == "*" {
        return Ok((PathPattern::Any, Vec::new()));
    }
    if text.is_empty() {
        return Err(bad_path("the path is empty".to_owned()));
    }
    if let Some(suffix) = text.strip_prefix('*') {
        check_path_text(text)?;
        if suffix.contains(['*', '{', '}']) {
            return Err(bad_path(format!(
                "`{text}`: a suffix pattern (`*…`) has no other `*` and no `{{variable}}`"
            )));
        }
        // The suffix must be the end of some normalised path.
        let probe = if suffix.starts_with('/') {
            format!("/x{suffix}")
        } else {
            format!("/x/x{suffix}")
        };
        if matcher::is_unnormalized(&probe) {
            return Err(bad_path(format!(
                "`{text}` can never end a normalised path (no `.`/`..` or empty segments, `\\` or control characters)"
            )));
        }
        return Ok((PathPattern::Suffix(suffix.to_owned()), Vec::new()));
    }
    if !text.starts_with('/') {
        return Err(bad_path(format!("`{text}` must start with `/`")));
    }
    check_path_text(text)?;
    if let Some(prefix) = text.strip_suffix('*')
        && !prefix.ends_with('/')
    {
        if prefix.contains(['*', '{', '}']) {
            return Err(bad_path(format!(
                "`{text}`: a prefix pattern (`/…*`) has no other `*` and no `{{variable}}`"
            )));
        }
        // The prefix must be the start of some normalised path.
        if matcher::is_unnormalized(&format!("{prefix}x")) {
            return Err(bad_path(format!(
                "`{text}` can never start a normalised path (no `.`/`..` or empty segments, `\\` or control characters)"
            )));
        }
        return Ok((PathPattern::TextPrefix(prefix.to_owned()), Vec::new()));
    }
    let (base, open_ended) = match text.strip_suffix("/*") {
        Some(base) => (base, true),
        None => (text, false),
    };
    if base.contains('*') {
        return Err(bad_path(format!(
            "`{text}`: `*` may only end a path (`/a/*`, `/a*`), start it (`*/a`, `*.json`) or stand alone (`*`)"
        )));
    }
    // `/a//*` would need a path with an empty segment: probe what follows the prefix too.
    let probe = if open_ended {
        format!("{base}/x")
    } else {
        base.to_owned()
    };
    if matcher::is_unnormalized(&probe) {
        return Err(bad_path(format!(
            "`{text}` is not a normalised path (no `.`/`..` or empty segments, `\\` or control characters)"
        )));
    }
    if !base.contains(['{', '}']) {
        return Ok((
            if open_ended {
                PathPattern::Prefix(format!("{base}/"))
            } else {
                PathPattern::Exact(base.to_owned())
            },
            Vec::new(),
        ));
    }
    let mut segments = Vec::new();
    let mut vars = Vec::new();
    for segment in base.trim_start_matches('/').split('/') {
        match (segment.find('{'), segment.find('}')) {
            (None, None) => segments.push(Segment::Literal(segment.to_owned())),
            (Some(open), Some(close)) if open < close => {
                let prefix = segment.get(..open).unwrap_or("");
                let var = segment.get(open + 1..close).unwrap_or("");
                let suffix = segment.get(close + 1..).unwrap_or("");
                if suffix.contains(['{', '}']) {
                    return Err(bad_path(format!(
                        "`{text}`: one `{{variable}}` per segment"
                    )));
                }
                if !is_variable_name(var) {
                    return Err(bad_path(format!(
                        "`{text}`: `{{{var}}}` is not a variable name"
                    )));
                }
                if vars.iter().any(|v| v == var) {
                    return Err(bad_path(format!("`{text}`: `{{{var}}}` is captured twice")));
                }
                vars.push(var.to_owned());
                segments.push(Segment::Capture {
                    prefix: prefix.to_owned(),
                    var: var.to_owned(),
                    suffix: suffix.to_owned(),
                });
            }
            _ => return Err(bad_path(format!("`{text}`: unbalanced braces"))),
        }
    }
    Ok((
        PathPattern::Template {
            segments,
            open_ended,
        },
        vars,
    ))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{compiled, errors_of, kinds_of};
    use super::*;

    fn rule(body: &str) -> String {
        format!(
            "version = 1\n[[rules]]\nname = \"r\"\npaths = [\"/*\"]\nallow = \"anyone\"\n{body}\n"
        )
    }

    /// Issue 8, defect 10: a rule on the filter's own `x-claimgate-*` headers matched in
    /// `explain` but never in Envoy (the headers are stripped first).
    #[test]
    fn rules_on_identity_headers_are_refused() {
        let errors = errors_of(&rule("headers = { \"X-Claimgate-Subject\" = \"admin\" }"));
        assert_eq!(kinds_of(&errors), ["identity_header_rule"]);
        assert_eq!((errors[0].line, errors[0].column), (6, 37));
        let custom = "[token]\nidentity_header_prefix = \"x-auth-\"\n";
        let text =
            format!(
                "version = 1\n{custom}{}",
                rule("headers = { \"x-auth-user\" = \"a\", \"x-claimgate-user\" = \"b\" }")
                    .replacen("version = 1\n", "", 1)
            );
        assert_eq!(kinds_of(&errors_of(&text)), ["identity_header_rule"]);
    }

    #[test]
    fn header_values_must_be_visible_ascii() {
        for value in [
            "bl\\u00e9",
            "\\u0000",
            " blue",
            "blue ",
            "\\t",
            "\\r\\nx: y",
        ] {
            let text = rule(&format!("headers = {{ \"deployment\" = \"{value}\" }}"));
            assert_eq!(kinds_of(&errors_of(&text)), ["bad_header_value"], "{value}");
        }
        let text = rule("headers = { \"bad name\" = \"x\" }");
        assert_eq!(kinds_of(&errors_of(&text)), ["bad_header_name"]);
        let ok = compiled(&rule(
            "headers = { \"AzureML-Model-Deployment\" = \"blue green\", \"x-tenant\" = \"a.b\" }",
        ));
        let texts: Vec<String> = ok.policy.rules[0]
            .headers
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            texts,
            ["azureml-model-deployment=blue green", "x-tenant=a.b"]
        );
        let text = rule("headers = { \"HOST\" = \"a.example.com\" }");
        assert_eq!(kinds_of(&errors_of(&text)), ["host_header_rule"]);
        let text = rule("headers = { \":path\" = \"/admin\", \":Authority\" = \"a\" }");
        assert_eq!(
            kinds_of(&errors_of(&text)),
            ["pseudo_header_rule", "pseudo_header_rule"]
        );
    }

    #[test]
    fn hosts_and_methods() {
        let ok = compiled(&rule(
            "hosts = [\"A.Example.com.\", \"*.Svc.\"]\nmethods = [\"post\", \"POST\"]",
        ));
        let r = &ok.policy.rules[0];
        assert_eq!(
            r.hosts,
            [
                HostPattern::Exact("a.example.com".into()),
                HostPattern::Suffix(".svc".into())
            ]
        );
        assert_eq!(r.methods, ["POST"]);
        let errors = errors_of(&rule(
            "hosts = [\"a.com:80\", \"a.*.com\", \"**\"]\nmethods = [\"GE T\"]",
        ));
        assert_eq!(
            kinds_of(&errors),
            ["bad_host", "bad_host", "bad_host", "bad_method"]
        );
        // Only what `canonical_host` can produce from a request could ever match.
        for bad in [
            "b\u{fc}cher.example",
            "a b.com",
            "u@a.com",
            "a.com/x",
            "a..com",
            "a.com..",
            "",
            ".",
            "*.",
            "*.[::1]",
            "[::1]:80",
            "[zz]",
        ] {
            let errors = errors_of(&rule(&format!("hosts = [\"{bad}\"]")));
            assert_eq!(kinds_of(&errors), ["bad_host"], "{bad}");
        }
        let ok = compiled(&rule(
            "hosts = [\"[::1]\", \"XN--BCHER-KVA.example\", \"my_svc.ns\"]",
        ));
        assert_eq!(
            ok.policy.rules[0].hosts,
            [
                HostPattern::Exact("[::1]".into()),
                HostPattern::Exact("xn--bcher-kva.example".into()),
                HostPattern::Exact("my_svc.ns".into())
            ]
        );
    }

    #[test]
    fn path_patterns() {
        assert_eq!(
            parse_path("/score").unwrap().0,
            PathPattern::Exact("/score".into())
        );
        assert_eq!(
            parse_path("/v2/*").unwrap().0,
            PathPattern::Prefix("/v2/".into())
        );
        let (pattern, vars) = parse_path("/v1/models/{model}:predict").unwrap();
        assert_eq!(vars, ["model"]);
        assert!(matches!(
            pattern,
            PathPattern::Template {
                open_ended: false,
                ..
            }
        ));
        for bad in [
            "score", "/a?b", "/a/*/b", "/a/../b", "/{x}/{x}", "/{1x}", "/{a", "//a", "/a\\b",
        ] {
            assert_eq!(parse_path(bad).unwrap_err().hint, PATH_FORMS, "{bad}");
        }
        for bad in ["/a%20b", "/a%2fb/*", "/{m}%3Apredict", "/%"] {
            assert!(
                parse_path(bad).unwrap_err().hint.contains("decoded"),
                "{bad}"
            );
        }
        for bad in ["/a;b", "/admin;x=1/*"] {
            assert!(parse_path(bad).unwrap_err().hint.contains("`;"), "{bad}");
        }
        // Spaces and non-ASCII are written as the decoded path holds them.
        assert!(parse_path("/models/my model/caf\u{e9}").is_ok());
    }

    #[test]
    fn rule_names_are_unique_and_every_rule_error_is_reported() {
        let text = "version = 1\n[[rules]]\nname = \"r\"\nallow = \"anyone\"\n[[rules]]\nname = \"r\"\nallow = \"anyone\"\n[[rules]]\nname = \"\"\npaths = [\"x\"]\nmethods = [\"1\"]\nallow = \"anyone\"\n";
        let errors = errors_of(text);
        assert_eq!(
            kinds_of(&errors),
            [
                "duplicate_rule",
                "empty_rule_name",
                "bad_method",
                "bad_path"
            ]
        );
        assert!(errors[0].hint.as_deref().unwrap().contains("line 3"));
    }
}
