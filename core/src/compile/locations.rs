//! Where tokens are read (`[token] headers/query/cookies`, an issuer's `from_headers`,
//! `from_params`, `from_cookies`) and what goes upstream from claims (`claims_to_headers`,
//! `payload_to_header`), with the checks that keep those names apart: a header the filter
//! sets is never a token location, never under the identity prefix, never one the proxy or
//! the connection owns, and never something a rule could match on (the filter removes every
//! client-sent copy before the rules see the request).

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use super::diagnostics::Context;
use crate::claims::ClaimPath;
use crate::compiled::{BEARER_PREFIX, CompiledIssuer, HeaderLocation, TokenLocations};
use crate::source::{HeaderLocationSource, IssuerSource, PolicySource, TokenSource};
use crate::upstream::same_header_name;

/// Longest header value prefix accepted.
const MAX_PREFIX_LEN: usize = 64;

/// Headers the filter may not set from claims: hop-by-hop headers (the connection's, not
/// the request's), the ones that frame or route the request, and `cookie`.
const RESERVED_UPSTREAM_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "host",
    "content-length",
    "content-type",
    "expect",
    "cookie",
];

fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A query parameter name as written in a URL (no `&`, `=`, `#`, `%`, `+`, `?`).
fn is_param_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"&=#%+?".contains(&b))
}

/// An RFC 6265 cookie name (an RFC 7230 token).
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// One header location, `None` (reported) when unusable.
fn header_location(
    cx: &mut Context<'_>,
    source: &Spanned<HeaderLocationSource>,
) -> Option<HeaderLocation> {
    let span = source.span();
    let (name, prefix) = match source.get_ref() {
        HeaderLocationSource::Name(name) => (name.as_str(), BEARER_PREFIX),
        HeaderLocationSource::Table(table) => (
            table.name.as_str(),
            table.prefix.as_deref().unwrap_or(BEARER_PREFIX),
        ),
    };
    let name = name.to_ascii_lowercase();
    if !is_header_name(&name) {
        cx.error(
            "bad_token_header",
            &span,
            format!("`{}` is not a header name", name.escape_default()),
            "name the header that carries the token, e.g. `authorization` or `{ name = \"x-jwt\", prefix = \"\" }`",
        );
        return None;
    }
    if name == "cookie" {
        cx.error(
            "bad_token_header",
            &span,
            "the `cookie` header holds many cookies: a token there is read by cookie name",
            "use `cookies = [\"NAME\"]` (or `from_cookies` in an issuer)",
        );
        return None;
    }
    if prefix.len() > MAX_PREFIX_LEN
        || !prefix.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
        || prefix.starts_with(' ')
    {
        cx.error(
            "bad_token_prefix",
            &span,
            format!(
                "token prefix `{}` cannot start a header value",
                prefix.escape_default()
            ),
            "a prefix is visible ASCII text (spaces inside or at the end), at most 64 bytes, e.g. `\"Token \"`; `\"\"` for a header that holds only the token",
        );
        return None;
    }
    Some(HeaderLocation {
        name,
        prefix: prefix.to_owned(),
    })
}

fn header_name(source: &HeaderLocationSource) -> &str {
    match source {
        HeaderLocationSource::Name(name) => name,
        HeaderLocationSource::Table(table) => &table.name,
    }
}

fn push_header(headers: &mut Vec<HeaderLocation>, location: HeaderLocation) {
    if !headers
        .iter()
        .any(|h| h.name == location.name && h.prefix.eq_ignore_ascii_case(&location.prefix))
    {
        headers.push(location);
    }
}

fn names(
    cx: &mut Context<'_>,
    list: &[Spanned<String>],
    valid: fn(&str) -> bool,
    kind: &'static str,
    hint: &str,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in list {
        let text = name.get_ref();
        if !valid(text) {
            cx.error(
                kind,
                &name.span(),
                format!("`{}` cannot be found in a request", text.escape_default()),
                hint,
            );
        } else if !out.contains(text) {
            out.push(text.clone());
        }
    }
    out
}

fn locations(
    cx: &mut Context<'_>,
    headers: &[Spanned<HeaderLocationSource>],
    query: &[Spanned<String>],
    cookies: &[Spanned<String>],
) -> TokenLocations {
    let mut out = TokenLocations::default();
    for header in headers {
        if let Some(location) = header_location(cx, header) {
            push_header(&mut out.headers, location);
        }
    }
    out.query = names(
        cx,
        query,
        is_param_name,
        "bad_token_param",
        "a query parameter name is visible ASCII without `&`, `=`, `#`, `%`, `+` or `?`, e.g. `access_token`",
    );
    out.cookies = names(
        cx,
        cookies,
        is_cookie_name,
        "bad_token_cookie",
        "a cookie name is visible ASCII without separators such as `;`, `=`, `,` or spaces",
    );
    out
}

/// `[token] headers/query/cookies`. `at` places the error when none is left.
pub(super) fn policy_locations(
    cx: &mut Context<'_>,
    source: &TokenSource,
    at: &Range<usize>,
    identity_prefix: &str,
) -> TokenLocations {
    let out = locations(cx, &source.headers, &source.query, &source.cookies);
    for header in &source.headers {
        let name = header_name(header.get_ref()).to_ascii_lowercase();
        if name.starts_with(identity_prefix) {
            cx.error(
                "bad_token_header",
                &header.span(),
                format!("token header `{name}` starts with the identity prefix `{identity_prefix}`, whose headers are removed from every request"),
                "read the token from another header, or change `identity_header_prefix`",
            );
        }
    }
    if source.headers.is_empty() && source.query.is_empty() && source.cookies.is_empty() {
        cx.error(
            "bad_token_header",
            at,
            "`[token]` names no header, query parameter or cookie: no token could ever be read",
            "leave `headers` out for `[\"authorization\"]`",
        );
    }
    out
}

/// An issuer's own locations: `None` when it names none (the policy's apply).
pub(super) fn issuer_locations(
    cx: &mut Context<'_>,
    name: &str,
    source: &Spanned<IssuerSource>,
) -> Option<TokenLocations> {
    let issuer = source.get_ref();
    if issuer.from_headers.is_none()
        && issuer.from_params.is_none()
        && issuer.from_cookies.is_none()
    {
        return None;
    }
    let out = locations(
        cx,
        issuer.from_headers.as_deref().unwrap_or_default(),
        issuer.from_params.as_deref().unwrap_or_default(),
        issuer.from_cookies.as_deref().unwrap_or_default(),
    );
    let given = issuer.from_headers.as_ref().map_or(0, Vec::len)
        + issuer.from_params.as_ref().map_or(0, Vec::len)
        + issuer.from_cookies.as_ref().map_or(0, Vec::len);
    if given == 0 {
        cx.error(
            "bad_token_header",
            &source.span(),
            format!("issuer `{name}`'s `from_headers`, `from_params` and `from_cookies` are empty: its tokens could never be read"),
            "name where its tokens come from, or leave all three out for the `[token]` locations",
        );
    }
    Some(out)
}

/// An issuer's `claims_to_headers` and `payload_to_header`, names lower case.
pub(super) fn upstream_claims(
    cx: &mut Context<'_>,
    name: &str,
    source: &IssuerSource,
) -> (Vec<(String, ClaimPath)>, Option<String>) {
    let mut claims = Vec::new();
    let header_ok = |cx: &mut Context<'_>, header: &str, span: &Range<usize>| {
        let ok = is_header_name(header);
        if !ok {
            cx.error(
                "bad_claim_header",
                span,
                format!(
                    "issuer `{name}`: `{}` is not a header name",
                    header.escape_default()
                ),
                "use letters, digits and dashes, e.g. `x-tenant`",
            );
        }
        ok
    };
    for (header, claim) in &source.claims_to_headers {
        let lower = header.to_ascii_lowercase();
        let header_valid = header_ok(cx, &lower, &claim.span());
        let path = match ClaimPath::parse(claim.get_ref()) {
            Ok(path) => Some(path),
            Err(error) => {
                cx.error(
                    "bad_claim_path",
                    &claim.span(),
                    error.to_string(),
                    "separate levels with `.`; quote a key that contains dots: `resource_access.\"my.app\".roles`",
                );
                None
            }
        };
        if let (true, Some(path)) = (header_valid, path) {
            claims.push((lower, path));
        }
    }
    let payload = source.payload_to_header.as_ref().and_then(|header| {
        let lower = header.get_ref().to_ascii_lowercase();
        header_ok(cx, &lower, &header.span()).then_some(lower)
    });
    (claims, payload)
}

/// Every header the filter sets from claims, with where it was written.
fn upstream_names(source: &PolicySource) -> Vec<(String, &str, Range<usize>)> {
    let mut out = Vec::new();
    for (issuer, spanned) in &source.issuers {
        let spanned_issuer = spanned.get_ref();
        for (header, claim) in &spanned_issuer.claims_to_headers {
            out.push((header.to_ascii_lowercase(), issuer.as_str(), claim.span()));
        }
        if let Some(header) = &spanned_issuer.payload_to_header {
            out.push((
                header.get_ref().to_ascii_lowercase(),
                issuer.as_str(),
                header.span(),
            ));
        }
    }
    out
}

/// Cross checks once everything compiled: the headers set from claims against the identity
/// prefix, the reserved headers, every token header, each other (within one issuer), and
/// the rules; issuer token headers against the identity prefix.
pub(super) fn check_names(
    cx: &mut Context<'_>,
    source: &PolicySource,
    issuers: &[CompiledIssuer],
    policy_locations: &TokenLocations,
    identity_prefix: Option<&str>,
) {
    let token_headers: Vec<&str> = issuers
        .iter()
        .filter_map(|i| i.locations.as_ref())
        .chain(std::iter::once(policy_locations))
        .flat_map(|l| l.headers.iter().map(|h| h.name.as_str()))
        .collect();
    let under_prefix = |name: &str| {
        identity_prefix.is_some_and(|prefix| {
            name.get(..prefix.len())
                .is_some_and(|start| same_header_name(start, prefix))
        })
    };
    for (name, spanned) in &source.issuers {
        for header in spanned.get_ref().from_headers.iter().flatten() {
            let header_name = header_name(header.get_ref());
            if under_prefix(header_name) {
                cx.error(
                    "bad_token_header",
                    &header.span(),
                    format!("issuer `{name}` reads tokens from `{header_name}`, under the identity prefix, whose headers are removed from every request"),
                    "read the token from another header, or change `identity_header_prefix`",
                );
            }
        }
    }
    let upstream = upstream_names(source);
    let mut first_by_issuer: BTreeMap<(&str, String), ()> = BTreeMap::new();
    for (header, issuer, span) in &upstream {
        let why = if under_prefix(header) {
            Some("is under the identity prefix, whose headers only the filter sets".to_owned())
        } else if RESERVED_UPSTREAM_HEADERS
            .iter()
            .any(|r| same_header_name(r, header))
        {
            Some("belongs to the connection or frames the request".to_owned())
        } else if crate::matcher::METHOD_OVERRIDES
            .iter()
            .any(|m| same_header_name(m, header))
        {
            // The filter sets it after deciding on the request's method: a claim would then
            // choose the method the upstream runs.
            Some("overrides the method the upstream runs".to_owned())
        } else if token_headers.iter().any(|t| same_header_name(t, header)) {
            Some("is a header tokens are read from".to_owned())
        } else {
            let folded = header.replace('_', "-");
            first_by_issuer
                .insert((issuer, folded), ())
                .map(|()| "is set twice by this issuer".to_owned())
        };
        if let Some(why) = why {
            cx.error(
                "bad_claim_header",
                span,
                format!("issuer `{issuer}` sets header `{header}`, which {why}"),
                "name another header, e.g. `x-jwt-tenant`",
            );
        }
    }
    for rule in &source.rules {
        let rule = rule.get_ref();
        for (header, value) in &rule.headers {
            if let Some((_, issuer, _)) = upstream
                .iter()
                .find(|(owned, _, _)| same_header_name(owned, header))
            {
                cx.error(
                    "header_never_seen",
                    &value.span(),
                    format!(
                        "rule `{}` matches header `{header}`, which issuer `{issuer}` sets from claims: the filter removes every client-sent copy before rules are matched, so the rule could never match",
                        rule.name.get_ref()
                    ),
                    "match on the claim itself in `allow`/`deny`, or on another header",
                );
            }
        }
    }
}
