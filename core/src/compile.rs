//! TOML policy → [`CompiledPolicy`], with every problem reported at its place in the file.
//!
//! The compiler gathers all errors it can find in one pass (a syntax error stops it early,
//! since nothing after it can be trusted). Warnings (an issuer no rule uses, a rule another
//! rule shadows) do not stop compilation.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;
use toml::Spanned;

use crate::algorithm::Algorithm;
use crate::claims::ClaimPath;
use crate::compiled::{
    CompiledIssuer, CompiledPolicy, CompiledRule, Effect, HostPattern, PathIndex, PathPattern,
    Principal, RemoteJwks, Requirement, Revocations, RoleRef, ScopedSubject, Segment, TemplatePart,
    TokenSettings,
};
use crate::keys::{JwkKey, parse_jwks};
use crate::matcher;
use crate::source::{
    IssuerSource, JwksSource, PolicySource, PrincipalSource, RevokedSubjects, RuleSource,
};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy does not compile.
    Error,
    /// The policy compiles, but probably not as meant.
    Warning,
}

/// A problem found in a policy, with its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Stable kind, e.g. `unknown_issuer`.
    pub kind: &'static str,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// File name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}[{}]: {}",
            self.file, self.line, self.column, self.kind, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// A successful compilation.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The policy.
    pub policy: CompiledPolicy,
    /// Warnings found on the way.
    pub warnings: Vec<Diagnostic>,
}

/// Reads a file named in the policy (a JWKS), relative to the policy file. The core does no
/// I/O itself: the CLI passes a reader, tests pass a map.
pub type FileReader<'a> = dyn Fn(&str) -> Result<String, String> + 'a;

struct Context<'a> {
    file: &'a str,
    text: &'a str,
    diagnostics: Vec<Diagnostic>,
}

impl Context<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = self.text.get(..offset.min(self.text.len())).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    fn push(
        &mut self,
        severity: Severity,
        kind: &'static str,
        span: &Range<usize>,
        message: String,
        hint: Option<String>,
    ) {
        let (line, column) = self.position(span.start);
        self.diagnostics.push(Diagnostic {
            severity,
            kind,
            message,
            hint,
            file: self.file.to_owned(),
            line,
            column,
        });
    }

    fn error(
        &mut self,
        kind: &'static str,
        span: &Range<usize>,
        message: impl Into<String>,
        hint: Option<&str>,
    ) {
        self.push(
            Severity::Error,
            kind,
            span,
            message.into(),
            hint.map(str::to_owned),
        );
    }

    fn warn(
        &mut self,
        kind: &'static str,
        span: &Range<usize>,
        message: impl Into<String>,
        hint: Option<&str>,
    ) {
        self.push(
            Severity::Warning,
            kind,
            span,
            message.into(),
            hint.map(str::to_owned),
        );
    }

    fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// Parses a duration such as `60s`, `10m`, `1h30m`, `500ms`, `1d`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("`{text}` is not a duration (use e.g. `30s`, `10m`, `1h30m`, `500ms`)");
    let mut total_ms: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let value: u64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let factor = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        total_ms = value
            .checked_mul(factor)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(bad)?;
        rest = next;
    }
    Ok(std::time::Duration::from_millis(total_ms))
}

/// Compiles a policy file's text. `file` names it in diagnostics; `read` loads JWKS files.
pub fn compile(text: &str, file: &str, read: &FileReader<'_>) -> Result<Compiled, Vec<Diagnostic>> {
    let mut cx = Context {
        file,
        text,
        diagnostics: Vec::new(),
    };
    let source: PolicySource = match toml::from_str(text) {
        Ok(source) => source,
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            let message = error.message().to_owned();
            let hint = if message.contains("unknown field") {
                Some("check the spelling against the policy language in README.md")
            } else {
                None
            };
            cx.error("syntax", &span, message, hint);
            return Err(cx.diagnostics);
        }
    };
    if *source.version.get_ref() != 1 {
        cx.error(
            "version",
            &source.version.span(),
            format!(
                "policy language version {} is not supported",
                source.version.get_ref()
            ),
            Some("write `version = 1`"),
        );
    }

    let issuer_names: Vec<&String> = source.issuers.keys().collect();
    let issuers: Vec<CompiledIssuer> = source
        .issuers
        .iter()
        .filter_map(|(name, issuer)| compile_issuer(&mut cx, name, issuer, read))
        .collect();
    let issuer_index: HashMap<&str, u32> = issuer_names
        .iter()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i as u32))
        .collect();
    let revoked_subjects = compile_revoked_subjects(&mut cx, &source, &issuer_index);

    let mut roles = Vec::new();
    let mut role_ids: HashMap<String, u32> = HashMap::new();
    let mut rules = Vec::new();
    let mut rule_spans = Vec::new();
    let mut names: HashMap<String, Range<usize>> = HashMap::new();
    for rule in &source.rules {
        let name = rule.get_ref().name.get_ref();
        if let Some(first) = names.get(name) {
            let (line, _) = cx.position(first.start);
            cx.error(
                "duplicate_rule",
                &rule.get_ref().name.span(),
                format!("rule name `{name}` is used twice"),
                Some(&format!(
                    "the first `{name}` is on line {line}; rule names must be unique"
                )),
            );
            continue;
        }
        names.insert(name.clone(), rule.get_ref().name.span());
        let mut interner = |role: &str| {
            let next = role_ids.len() as u32;
            *role_ids.entry(role.to_owned()).or_insert_with(|| {
                roles.push(role.to_owned());
                next
            })
        };
        if let Some(compiled) = compile_rule(&mut cx, rule, &issuer_index, &mut interner) {
            rules.push(compiled);
            rule_spans.push(rule.get_ref().name.span());
        }
    }
    if cx.has_errors() {
        return Err(cx.diagnostics);
    }
    if issuers.len() != source.issuers.len() {
        return Err(cx.diagnostics);
    }

    // Warnings: issuers no rule can use, rules that can never decide.
    let open_rule = rules
        .iter()
        .any(|r| matches!(&r.principal, Principal::Authenticated(req) if req.issuers.is_empty()));
    for (i, (name, issuer)) in source.issuers.iter().enumerate() {
        let used = open_rule
            || rules
                .iter()
                .any(|r| matches!(&r.principal, Principal::Authenticated(req) if req.issuers.contains(&(i as u32))));
        if !used {
            cx.warn(
                "unused_issuer",
                &issuer.span(),
                format!("issuer `{name}` is not used by any rule"),
                Some("name it in a rule's `issuers`, or remove it"),
            );
        }
    }
    for (b_index, b) in rules.iter().enumerate() {
        for (a_index, a) in rules.iter().enumerate() {
            if a_index == b_index || a.principal != Principal::Anyone {
                continue;
            }
            let shadows = match (a.effect, b.effect) {
                (Effect::Deny, _) => true,
                (Effect::Allow, Effect::Allow) => b.principal != Principal::Anyone,
                (Effect::Allow, Effect::Deny) => false,
            };
            if shadows && covers(a, b) {
                let what = if a.effect == Effect::Deny {
                    "every request it matches is denied by"
                } else {
                    "every request it matches is already allowed to anyone by"
                };
                if let Some(span) = rule_spans.get(b_index) {
                    cx.warn(
                        "shadowed_rule",
                        span,
                        format!("rule `{}` is shadowed: {what} rule `{}`", b.name, a.name),
                        Some("narrow the other rule's hosts, methods, paths or headers, or remove this one"),
                    );
                }
                break;
            }
        }
    }
    let path_index = build_index(&rules);
    let identity_header_prefix = source
        .token
        .identity_header_prefix
        .get_ref()
        .to_ascii_lowercase();
    if identity_header_prefix.len() < 3
        || !identity_header_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        cx.error(
            "identity_header_prefix",
            &source.token.identity_header_prefix.span(),
            format!("`{identity_header_prefix}` is not a usable header prefix"),
            Some("use letters, digits and dashes, e.g. `x-claimgate-`"),
        );
        return Err(cx.diagnostics);
    }
    let name = source.name.clone().unwrap_or_else(|| {
        std::path::Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "policy".to_owned())
    });
    let policy = CompiledPolicy {
        name,
        mode: source.mode,
        default: source.default,
        issuers,
        rules,
        roles,
        path_index,
        path_parameters: source.path_parameters,
        revoked: Revocations {
            subjects: revoked_subjects,
            token_ids: source.revoked.token_ids.clone(),
        },
        token: TokenSettings {
            headers: source
                .token
                .headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            forward_token: source.token.forward,
            identity_header_prefix,
        },
    };
    Ok(Compiled {
        policy,
        warnings: cx.diagnostics,
    })
}

fn duration_secs(
    cx: &mut Context<'_>,
    value: Option<&Spanned<String>>,
    default: u64,
    what: &str,
) -> Option<u64> {
    let Some(value) = value else {
        return Some(default);
    };
    match parse_duration(value.get_ref()) {
        Ok(d) => Some(d.as_secs()),
        Err(message) => {
            cx.error(
                "bad_duration",
                &value.span(),
                format!("{what}: {message}"),
                None,
            );
            None
        }
    }
}

fn claim_path(cx: &mut Context<'_>, text: &Spanned<String>) -> Option<ClaimPath> {
    match ClaimPath::parse(text.get_ref()) {
        Ok(path) => Some(path),
        Err(error) => {
            cx.error(
                "bad_claim_path",
                &text.span(),
                error.to_string(),
                Some("separate levels with `.`; quote a key that contains dots: `resource_access.\"my.app\".roles`"),
            );
            None
        }
    }
}

fn compile_issuer(
    cx: &mut Context<'_>,
    name: &str,
    spanned: &Spanned<IssuerSource>,
    read: &FileReader<'_>,
) -> Option<CompiledIssuer> {
    let source = spanned.get_ref();
    let errors_before = cx.diagnostics.len();
    if source.issuer.get_ref().is_empty() {
        cx.error(
            "empty_issuer",
            &source.issuer.span(),
            format!("issuer `{name}` has an empty `issuer`"),
            None,
        );
    }
    let mut algorithms = Vec::new();
    for alg in source.algorithms.get_ref() {
        match alg.get_ref().parse::<Algorithm>() {
            Ok(a) if !algorithms.contains(&a) => algorithms.push(a),
            Ok(_) => {}
            Err(_) if alg.get_ref().eq_ignore_ascii_case("none") => cx.error(
                "algorithm_none",
                &alg.span(),
                "`none` can never be allowed: unsigned tokens prove nothing",
                None,
            ),
            Err(e) => cx.error(
                "unknown_algorithm",
                &alg.span(),
                e.to_string(),
                Some("use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (HS256/384/512 with `hmac_secret`)"),
            ),
        }
    }
    if source.algorithms.get_ref().is_empty() {
        cx.error(
            "no_algorithm",
            &source.algorithms.span(),
            format!("issuer `{name}` allows no algorithm"),
            None,
        );
    }
    let wants_hmac = algorithms.iter().any(|a| a.is_hmac());
    let hmac_secret = match (&source.hmac_secret, wants_hmac) {
        (Some(secret), true) => {
            let text = secret.get_ref().trim_end_matches('=');
            match URL_SAFE_NO_PAD
                .decode(text)
                .or_else(|_| STANDARD.decode(secret.get_ref()))
            {
                Ok(bytes) if bytes.len() >= 32 => Some(bytes),
                Ok(bytes) => {
                    cx.error(
                        "weak_hmac_secret",
                        &secret.span(),
                        format!(
                            "HMAC secret is {} bytes; at least 32 are required",
                            bytes.len()
                        ),
                        None,
                    );
                    None
                }
                Err(_) => {
                    cx.error(
                        "bad_hmac_secret",
                        &secret.span(),
                        "HMAC secret is not base64",
                        None,
                    );
                    None
                }
            }
        }
        (Some(secret), false) => {
            cx.error(
                "hmac_without_algorithm",
                &secret.span(),
                "`hmac_secret` is set but no HS256/HS384/HS512 algorithm is allowed",
                None,
            );
            None
        }
        (None, true) => {
            cx.error(
                "hmac_without_secret",
                &source.algorithms.span(),
                "HMAC algorithms need an explicit inline `hmac_secret`; keys from a JWKS are never used as HMAC secrets",
                None,
            );
            None
        }
        (None, false) => None,
    };
    let (keys, remote_jwks) = match &source.jwks {
        Some(jwks) => compile_jwks(cx, name, jwks, read, &algorithms),
        None => (Vec::new(), None),
    };
    let needs_keys = algorithms.iter().any(|a| !a.is_hmac());
    if needs_keys
        && keys.is_empty()
        && remote_jwks.is_none()
        && cx.diagnostics.len() == errors_before
    {
        cx.error(
            "no_keys",
            &spanned.span(),
            format!("issuer `{name}` has no keys"),
            Some("add `[issuers.NAME.jwks]` with `file`, `inline`, or `uri` + `cluster`"),
        );
    }
    let clock_skew_secs = duration_secs(cx, source.clock_skew.as_ref(), 60, "clock_skew");
    if let (Some(skew), Some(span)) = (clock_skew_secs, source.clock_skew.as_ref()) {
        if skew > 600 {
            cx.error(
                "clock_skew_too_large",
                &span.span(),
                format!("clock skew of {skew}s is more than 10 minutes"),
                None,
            );
        }
    }
    let max_lifetime_secs = match &source.max_lifetime {
        Some(value) => duration_secs(cx, Some(value), 0, "max_lifetime").map(Some),
        None => Some(None),
    };
    let mut paths = |list: &[Spanned<String>]| -> Vec<ClaimPath> {
        list.iter().filter_map(|p| claim_path(cx, p)).collect()
    };
    let role_claims = paths(&source.roles);
    let scope_claims = paths(&source.scopes);
    let audience_claims = match &source.audience_claims {
        Some(list) => paths(list),
        None => vec![ClaimPath::top("aud")],
    };
    let client_claims = match &source.client_claims {
        Some(list) => paths(list),
        None => ["azp", "client_id", "appid"]
            .into_iter()
            .map(ClaimPath::top)
            .collect(),
    };
    let subject_claim = match &source.subject_claim {
        Some(text) => claim_path(cx, text),
        None => Some(ClaimPath::top("sub")),
    };
    if source.audiences.is_empty() {
        cx.warn(
            "no_audience",
            &source.issuer.span(),
            format!("issuer `{name}` checks no audience: tokens minted for any other service are accepted"),
            Some("set `audiences` (and `audience_claims = [\"azp\"]` for Keycloak tokens whose `aud` is `account`)"),
        );
    }
    if cx
        .diagnostics
        .iter()
        .skip(errors_before)
        .any(|d| d.severity == Severity::Error)
    {
        return None;
    }
    Some(CompiledIssuer {
        name: name.to_owned(),
        issuer: source.issuer.get_ref().clone(),
        audiences: source.audiences.clone(),
        audience_claims,
        algorithms,
        keys,
        hmac_secret,
        remote_jwks,
        clock_skew_secs: clock_skew_secs?,
        require_expiry: source.require_expiry,
        max_lifetime_secs: max_lifetime_secs?,
        role_claims,
        scope_claims,
        subject_claim: subject_claim?,
        client_claims,
    })
}

fn compile_jwks(
    cx: &mut Context<'_>,
    issuer: &str,
    spanned: &Spanned<JwksSource>,
    read: &FileReader<'_>,
    algorithms: &[Algorithm],
) -> (Vec<JwkKey>, Option<RemoteJwks>) {
    let source = spanned.get_ref();
    let mut keys = Vec::new();
    let documents = [
        source.file.as_ref().map(|f| (f, read(f.get_ref()))),
        source.inline.as_ref().map(|i| (i, Ok(i.get_ref().clone()))),
    ];
    for (spanned_text, document) in documents.into_iter().flatten() {
        let text = match document {
            Ok(text) => text,
            Err(error) => {
                cx.error(
                    "jwks_file",
                    &spanned_text.span(),
                    format!("cannot read `{}`: {error}", spanned_text.get_ref()),
                    None,
                );
                continue;
            }
        };
        match parse_jwks(&text) {
            Ok(parsed) => {
                // The same summary the filter logs for a fetched set: one line, bounded.
                if !parsed.skipped.is_empty() {
                    cx.warn(
                        "skipped_keys",
                        &spanned_text.span(),
                        format!("issuer `{issuer}`: {}", parsed.skipped),
                        Some("only public signature keys are used (`use` = `sig` or absent; RSA, P-256, P-384, Ed25519)"),
                    );
                }
                keys.extend(parsed.keys);
            }
            Err(error) => cx.error(
                "bad_jwks",
                &spanned_text.span(),
                format!("issuer `{issuer}`: {error}"),
                None,
            ),
        }
    }
    if !keys.is_empty() && !keys.iter().any(|k| algorithms.iter().any(|a| k.fits(*a))) {
        cx.error(
            "keys_fit_no_algorithm",
            &spanned.span(),
            format!("issuer `{issuer}`: no key fits any allowed algorithm {algorithms:?}"),
            None,
        );
    }
    let remote = match (&source.uri, &source.cluster) {
        (Some(uri), cluster) => {
            // Without an explicit cluster, the one istiod builds for the URL's host.
            let endpoint = match crate::mesh::HttpEndpoint::parse(uri.get_ref()) {
                Ok(endpoint) => Some(endpoint),
                Err(message) => {
                    cx.error("bad_jwks_uri", &uri.span(), message, None);
                    None
                }
            };
            let cluster_name = match cluster {
                Some(cluster) => {
                    if cluster.get_ref().is_empty() {
                        cx.error("bad_cluster", &cluster.span(), "`cluster` is empty", None);
                    }
                    Some(cluster.get_ref().clone())
                }
                None => endpoint
                    .as_ref()
                    .map(crate::mesh::HttpEndpoint::istio_cluster),
            };
            let refresh_secs = duration_secs(cx, source.refresh.as_ref(), 600, "refresh");
            let timeout = match &source.timeout {
                Some(t) => match parse_duration(t.get_ref()) {
                    Ok(d) => Some(d.as_millis() as u64),
                    Err(message) => {
                        cx.error(
                            "bad_duration",
                            &t.span(),
                            format!("timeout: {message}"),
                            None,
                        );
                        None
                    }
                },
                None => Some(5_000),
            };
            if let (Some(refresh), Some(span)) = (refresh_secs, source.refresh.as_ref()) {
                if refresh < 10 {
                    cx.error(
                        "refresh_too_short",
                        &span.span(),
                        "refresh must be at least 10s",
                        None,
                    );
                }
            }
            match (refresh_secs, timeout, cluster_name) {
                (Some(refresh_secs), Some(timeout_ms), Some(cluster)) => Some(RemoteJwks {
                    uri: uri.get_ref().clone(),
                    cluster,
                    refresh_secs,
                    timeout_ms,
                    before_first_fetch: source.before_first_fetch,
                }),
                _ => None,
            }
        }
        (None, Some(cluster)) => {
            cx.error(
                "cluster_without_uri",
                &cluster.span(),
                "`cluster` is set but `uri` is not",
                None,
            );
            None
        }
        (None, None) => None,
    };
    (keys, remote)
}

fn parse_host(cx: &mut Context<'_>, host: &Spanned<String>) -> Option<HostPattern> {
    let text = host.get_ref().to_ascii_lowercase();
    if text.contains(':') || text.contains('/') || text.is_empty() {
        cx.error(
            "bad_host",
            &host.span(),
            format!("`{text}` is not a host name (no port, scheme or path)"),
            None,
        );
        return None;
    }
    if let Some(suffix) = text.strip_prefix("*.") {
        if suffix.contains('*') || suffix.is_empty() {
            cx.error(
                "bad_host",
                &host.span(),
                format!("`{text}`: `*` may only stand first, as `*.`"),
                None,
            );
            return None;
        }
        return Some(HostPattern::Suffix(format!(".{suffix}")));
    }
    if text.contains('*') {
        cx.error(
            "bad_host",
            &host.span(),
            format!("`{text}`: `*` may only stand first, as `*.`"),
            Some("to match every host, leave `hosts` out"),
        );
        return None;
    }
    Some(HostPattern::Exact(text))
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses a path pattern; returns it and the variables it captures.
pub fn parse_path(text: &str) -> Result<(PathPattern, Vec<String>), String> {
    if !text.starts_with('/') {
        return Err(format!("`{text}` must start with `/`"));
    }
    if text.contains(['?', '#']) {
        return Err(format!(
            "`{text}`: paths are matched without query or fragment"
        ));
    }
    let (base, open_ended) = match text.strip_suffix("/*") {
        Some(base) => (base, true),
        None => (text, false),
    };
    if base.contains('*') {
        return Err(format!("`{text}`: `*` may only end a path, as `/*`"));
    }
    let probe = if base.is_empty() { "/" } else { base };
    if matcher::is_unnormalized(probe) {
        return Err(format!(
            "`{text}` is not a normalised path (no `.`/`..` or empty segments)"
        ));
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
                    return Err(format!("`{text}`: one `{{variable}}` per segment"));
                }
                if !is_variable_name(var) {
                    return Err(format!("`{text}`: `{{{var}}}` is not a variable name"));
                }
                if vars.iter().any(|v| v == var) {
                    return Err(format!("`{text}`: `{{{var}}}` is captured twice"));
                }
                vars.push(var.to_owned());
                segments.push(Segment::Capture {
                    prefix: prefix.to_owned(),
                    var: var.to_owned(),
                    suffix: suffix.to_owned(),
                });
            }
            _ => return Err(format!("`{text}`: unbalanced braces")),
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

fn parse_template(text: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let close = rest
            .get(open..)
            .and_then(|r| r.find('}'))
            .map(|c| c + open)
            .ok_or_else(|| format!("`{text}`: unbalanced braces"))?;
        let before = rest.get(..open).unwrap_or("");
        let var = rest.get(open + 1..close).unwrap_or("");
        if before.contains('}') || !is_variable_name(var) {
            return Err(format!("`{text}`: `{{{var}}}` is not a variable name"));
        }
        if !before.is_empty() {
            parts.push(TemplatePart::Text(before.to_owned()));
        }
        parts.push(TemplatePart::Var(var.to_owned()));
        rest = rest.get(close + 1..).unwrap_or("");
    }
    if rest.contains('}') {
        return Err(format!("`{text}`: unbalanced braces"));
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_owned()));
    }
    Ok(parts)
}

fn compile_rule(
    cx: &mut Context<'_>,
    spanned: &Spanned<RuleSource>,
    issuers: &HashMap<&str, u32>,
    intern: &mut dyn FnMut(&str) -> u32,
) -> Option<CompiledRule> {
    let rule = spanned.get_ref();
    let name = rule.name.get_ref().clone();
    let errors_before = cx.diagnostics.len();
    if name.is_empty() {
        cx.error(
            "empty_rule_name",
            &rule.name.span(),
            "rule name is empty",
            None,
        );
    }
    let hosts: Vec<HostPattern> = rule
        .hosts
        .iter()
        .filter_map(|h| parse_host(cx, h))
        .collect();
    let mut methods = Vec::new();
    for method in &rule.methods {
        let upper = method.get_ref().to_ascii_uppercase();
        if upper.is_empty() || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
            cx.error(
                "bad_method",
                &method.span(),
                format!("`{}` is not an HTTP method", method.get_ref()),
                None,
            );
        } else {
            methods.push(upper);
        }
    }
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
            Err(message) => cx.error("bad_path", &path.span(), message, Some("paths are exact (`/score`), prefixes (`/v2/health/*`) or templates (`/v2/models/{model}/infer`)")),
        }
    }
    let variables = variables.unwrap_or_default();
    let headers = rule
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let (effect, principal_value) = match (&rule.allow, &rule.deny) {
        (Some(allow), None) => (Effect::Allow, allow),
        (None, Some(deny)) => (Effect::Deny, deny),
        (Some(_), Some(deny)) => {
            cx.error(
                "allow_and_deny",
                &deny.span(),
                format!("rule `{name}` has both `allow` and `deny`"),
                Some("split it into two rules"),
            );
            return None;
        }
        (None, None) => {
            cx.error(
                "no_principal",
                &rule.name.span(),
                format!("rule `{name}` has neither `allow` nor `deny`"),
                Some("add e.g. `allow = { roles_any = [\"ml-scorer\"] }` or `allow = \"anyone\"`"),
            );
            return None;
        }
    };
    let span = principal_value.span();
    let principal = match principal_value.get_ref() {
        toml::Value::String(word) if word == "anyone" => Principal::Anyone,
        toml::Value::String(word) if word == "authenticated" => {
            Principal::Authenticated(Requirement::default())
        }
        toml::Value::String(word) => {
            cx.error(
                "bad_principal",
                &span,
                format!("`{word}` is not `anyone`, `authenticated` or a table"),
                None,
            );
            return None;
        }
        value => match value.clone().try_into::<PrincipalSource>() {
            Ok(table) => Principal::Authenticated(compile_requirement(
                cx, &name, &span, table, issuers, &variables, intern,
            )?),
            Err(error) => {
                cx.error(
                    "bad_principal",
                    &span,
                    format!("rule `{name}`: {}", error.message()),
                    Some("fields: issuers, subjects, roles_any, roles_all, scopes_any, scopes_all"),
                );
                return None;
            }
        },
    };
    if cx.diagnostics.len() > errors_before {
        return None;
    }
    Some(CompiledRule {
        name,
        effect,
        hosts,
        methods,
        paths,
        headers,
        principal,
        audit: rule.audit,
    })
}

/// `[revoked] subjects`, scoped by issuer like rule subjects.
fn compile_revoked_subjects(
    cx: &mut Context<'_>,
    source: &PolicySource,
    issuers: &HashMap<&str, u32>,
) -> Vec<ScopedSubject> {
    let Some(subjects) = &source.revoked.subjects else {
        return Vec::new();
    };
    let span = subjects.span();
    let mut out = Vec::new();
    let mut push = |cx: &mut Context<'_>, issuer: u32, subject: &str| {
        if subject.is_empty() {
            cx.error(
                "empty_subject",
                &span,
                "`[revoked] subjects` names an empty subject".to_owned(),
                Some("remove `\"\"`"),
            );
        } else {
            out.push(ScopedSubject {
                issuer,
                subject: subject.to_owned(),
            });
        }
    };
    match subjects.get_ref() {
        RevokedSubjects::List(list) => {
            let only: Vec<u32> = issuers.values().copied().collect();
            match only.as_slice() {
                [issuer] => {
                    for subject in list {
                        push(cx, *issuer, subject);
                    }
                }
                _ if list.is_empty() => {}
                _ => cx.error(
                    "unscoped_subjects",
                    &span,
                    "`[revoked] subjects` is a plain list, but the policy has several issuers and `sub` is unique per issuer only".to_owned(),
                    Some("write `[revoked.subjects]` with one list per issuer, e.g. `keycloak = [\"svc-old\"]`"),
                ),
            }
        }
        RevokedSubjects::ByIssuer(by_issuer) => {
            for (name, list) in by_issuer {
                match issuers.get(name.as_str()) {
                    Some(&issuer) => {
                        for subject in list {
                            push(cx, issuer, subject);
                        }
                    }
                    None => {
                        let known: Vec<&&str> = issuers.keys().collect();
                        cx.error(
                            "unknown_issuer",
                            &span,
                            format!("`[revoked.subjects]` names unknown issuer `{name}`"),
                            Some(&format!("known issuers: {known:?}")),
                        );
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn compile_requirement(
    cx: &mut Context<'_>,
    rule: &str,
    span: &Range<usize>,
    table: PrincipalSource,
    issuers: &HashMap<&str, u32>,
    variables: &BTreeSet<String>,
    intern: &mut dyn FnMut(&str) -> u32,
) -> Option<Requirement> {
    let mut ok = true;
    let mut issuer_ids = Vec::new();
    for name in &table.issuers {
        match issuers.get(name.as_str()) {
            Some(&id) => issuer_ids.push(id),
            None => {
                let known: Vec<&&str> = issuers.keys().collect();
                cx.error(
                    "unknown_issuer",
                    span,
                    format!("rule `{rule}` names unknown issuer `{name}`"),
                    Some(&format!("known issuers: {known:?}")),
                );
                ok = false;
            }
        }
    }
    let mut roles = |list: &[String]| -> Vec<RoleRef> {
        let mut out = Vec::new();
        for role in list {
            if !role.contains(['{', '}']) {
                out.push(RoleRef::Interned(intern(role)));
                continue;
            }
            match parse_template(role) {
                Ok(parts) => {
                    let undefined: Vec<&String> = parts
                        .iter()
                        .filter_map(|p| match p {
                            TemplatePart::Var(v) if !variables.contains(v) => Some(v),
                            _ => None,
                        })
                        .collect();
                    if let Some(var) = undefined.first() {
                        cx.error(
                            "undefined_variable",
                            span,
                            format!("rule `{rule}`: role template `{role}` uses `{{{var}}}`, which not every path of the rule captures"),
                            Some(&format!("variables captured by every path: {variables:?}")),
                        );
                        ok = false;
                    } else {
                        out.push(RoleRef::Template(parts));
                    }
                }
                Err(message) => {
                    cx.error("bad_template", span, message, None);
                    ok = false;
                }
            }
        }
        out
    };
    let roles_any = roles(&table.roles_any);
    let roles_all = roles(&table.roles_all);
    // `sub` is unique per issuer only: a subject names a caller of the rule's issuers, or of
    // the policy's only issuer.
    let subject_issuers: Vec<u32> = if !issuer_ids.is_empty() {
        issuer_ids.clone()
    } else if issuers.len() == 1 {
        issuers.values().copied().collect()
    } else {
        Vec::new()
    };
    if !table.subjects.is_empty() && subject_issuers.is_empty() {
        cx.error(
            "unscoped_subjects",
            span,
            format!(
                "rule `{rule}` names subjects without saying whose: `sub` is unique per issuer only"
            ),
            Some("add `issuers = [\"…\"]` to the same table"),
        );
        ok = false;
    }
    if table.subjects.iter().any(String::is_empty) {
        cx.error(
            "empty_subject",
            span,
            format!("rule `{rule}` names an empty subject"),
            Some("remove `\"\"` from `subjects`"),
        );
        ok = false;
    }
    let subjects = subject_issuers
        .iter()
        .flat_map(|&issuer| {
            table.subjects.iter().map(move |subject| ScopedSubject {
                issuer,
                subject: subject.clone(),
            })
        })
        .collect();
    ok.then_some(Requirement {
        issuers: issuer_ids,
        subjects,
        roles_any,
        roles_all,
        scopes_any: table.scopes_any,
        scopes_all: table.scopes_all,
    })
}

fn index_key(pattern: &PathPattern) -> Option<String> {
    match pattern {
        PathPattern::Exact(p) => Some(matcher::first_segment(p).to_owned()),
        PathPattern::Prefix(p) => {
            // `/v2/` indexes under `v2`; `/` (from `/*`) can match anything.
            let rest = p.strip_prefix('/')?;
            let (first, _) = rest.split_once('/')?;
            Some(first.to_owned())
        }
        PathPattern::Template { segments, .. } => match segments.first()? {
            Segment::Literal(l) => Some(l.clone()),
            Segment::Capture { .. } => None,
        },
    }
}

fn build_index(rules: &[CompiledRule]) -> PathIndex {
    let mut by_segment: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    let mut any = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let keys: Option<Vec<String>> = if rule.paths.is_empty() {
            None
        } else {
            rule.paths.iter().map(index_key).collect()
        };
        match keys {
            Some(keys) => {
                for key in keys {
                    let ids = by_segment.entry(key).or_default();
                    if ids.last() != Some(&(i as u32)) {
                        ids.push(i as u32);
                    }
                }
            }
            None => any.push(i as u32),
        }
    }
    PathIndex {
        by_first_segment: by_segment.into_iter().collect(),
        any,
    }
}

/// Literal text every path the pattern matches starts with.
fn literal_prefix(pattern: &PathPattern) -> (String, bool) {
    match pattern {
        PathPattern::Exact(p) => (p.clone(), true),
        PathPattern::Prefix(p) => (p.clone(), false),
        PathPattern::Template { segments, .. } => {
            let mut prefix = String::from("/");
            for segment in segments {
                match segment {
                    Segment::Literal(l) => {
                        prefix.push_str(l);
                        prefix.push('/');
                    }
                    Segment::Capture { prefix: p, .. } => {
                        prefix.push_str(p);
                        break;
                    }
                }
            }
            (prefix, false)
        }
    }
}

fn path_covers(a: &PathPattern, b: &PathPattern) -> bool {
    if a == b {
        return true;
    }
    match a {
        PathPattern::Prefix(p) => literal_prefix(b).0.starts_with(p.as_str()),
        PathPattern::Exact(_) | PathPattern::Template { .. } => false,
    }
}

/// Whether every request `b` matches is also matched by `a` (conservative: may say no).
fn covers(a: &CompiledRule, b: &CompiledRule) -> bool {
    let hosts = a.hosts.is_empty()
        || (!b.hosts.is_empty()
            && b.hosts.iter().all(|bh| {
                a.hosts.iter().any(|ah| match (ah, bh) {
                    (HostPattern::Exact(x), HostPattern::Exact(y)) => x == y,
                    (HostPattern::Suffix(s), HostPattern::Exact(y)) => {
                        y.len() > s.len() && y.ends_with(s.as_str())
                    }
                    (HostPattern::Suffix(s), HostPattern::Suffix(t)) => t.ends_with(s.as_str()),
                    (HostPattern::Exact(_), HostPattern::Suffix(_)) => false,
                })
            }));
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    let headers = a.headers.iter().all(|h| b.headers.contains(h));
    let paths = a.paths.is_empty()
        || (!b.paths.is_empty()
            && b.paths
                .iter()
                .all(|bp| a.paths.iter().any(|ap| path_covers(ap, bp))));
    hosts && methods && headers && paths
}
