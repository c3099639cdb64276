//! Finding the token in a request: headers with a prefix, query parameters, cookies (Istio
//! `fromHeaders`, `fromParams`, `fromCookies`), for the filter and `explain` alike.
//!
//! Every location any issuer reads from is searched (an issuer that names none reads the
//! policy's `[token]` locations). Where Envoy's `jwt_authn` takes the first of several
//! candidates, this is stricter: two or more *different* token values (two locations, a
//! repeated header, parameter or cookie) are a malformed, ambiguous request, because the
//! upstream may read another one than the filter verified; identical copies count once.
//!
//! - A header location matches a value that starts with its prefix, compared ASCII
//!   case-insensitively (`Bearer` is a case-insensitive auth scheme, RFC 7235); the rest,
//!   trimmed of spaces, is the token. When several prefixes are set for one header, the
//!   longest that matches wins, so an empty prefix only takes what no other prefix names.
//!   A value without a matching prefix is not a token. A token header present twice is
//!   ambiguous, token or not, even with identical copies (as before this module: Envoy
//!   joins them with `,`, a malformed token to `jwt_authn`).
//! - A query parameter is found by its percent-decoded name; its value is percent-decoded
//!   (as Envoy does); `+` stays `+` (no JWT holds one, so such a value is refused as malformed).
//! - Cookies are read from every `cookie` header (`name=value` pairs separated by `;`), a
//!   value in double quotes without them (as Envoy does). Cookie names compare exactly.
//!
//! A token found only at locations its issuer (by `iss`) does not read is refused as an
//! unknown issuer, as Envoy has no provider there with that issuer. Telling that needs the
//! token's `iss` before verification: the token is decoded here only when some issuer does
//! not read every location the token was found at.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use crate::compiled::{CompiledIssuer, CompiledPolicy, HeaderLocation, TokenLocations};
use crate::engine::Request;
use crate::keys::printable;
use crate::reason::{DenyReason, Malformed};
use crate::token;

/// The header cookies arrive in.
pub const COOKIE_HEADER: &str = "cookie";

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location<'p> {
    /// In a header, after a prefix.
    Header(&'p HeaderLocation),
    /// In a query parameter.
    Query(&'p str),
    /// In a cookie.
    Cookie(&'p str),
}

/// A token and every location it was found at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<'r, 'p> {
    /// The token text (percent-decoded when it came from the query).
    pub token: Cow<'r, str>,
    /// Where it was found (one entry per location holding it).
    pub locations: Vec<Location<'p>>,
}

/// The locations an issuer reads tokens from.
pub fn issuer_locations<'p>(
    policy: &'p CompiledPolicy,
    issuer: &'p CompiledIssuer,
) -> &'p TokenLocations {
    issuer.locations.as_ref().unwrap_or(&policy.token.locations)
}

/// Every set of locations searched: each issuer's, or the policy's when it has no issuers.
pub fn searched(policy: &CompiledPolicy) -> impl Iterator<Item = &TokenLocations> {
    let own = policy.issuers.is_empty().then_some(&policy.token.locations);
    policy
        .issuers
        .iter()
        .map(|issuer| issuer_locations(policy, issuer))
        .chain(own)
}

/// Whether a set of locations holds a location.
fn reads(locations: &TokenLocations, location: &Location<'_>) -> bool {
    match location {
        Location::Header(header) => locations
            .headers
            .iter()
            .any(|h| h.name == header.name && h.prefix.eq_ignore_ascii_case(&header.prefix)),
        Location::Query(name) => locations.query.iter().any(|q| q == name),
        Location::Cookie(name) => locations.cookies.iter().any(|c| c == name),
    }
}

/// The distinct names of every header, query parameter and cookie any issuer reads a token
/// from: derived once per policy ([`crate::engine::Engine::token_names`]), read per request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenNames {
    /// Header names, in policy order.
    pub headers: Vec<String>,
    /// Query parameter names.
    pub params: Vec<String>,
    /// Cookie names.
    pub cookies: Vec<String>,
}

impl TokenNames {
    /// The names a policy searches.
    pub fn of(policy: &CompiledPolicy) -> TokenNames {
        fn distinct<'p, I: IntoIterator<Item = &'p str>>(
            lists: impl Iterator<Item = I>,
        ) -> Vec<String> {
            let mut names: Vec<String> = Vec::new();
            for name in lists.flatten() {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
            names
        }
        TokenNames {
            headers: distinct(searched(policy).map(|l| l.headers.iter().map(|h| h.name.as_str()))),
            params: distinct(searched(policy).map(|l| l.query.iter().map(String::as_str))),
            cookies: distinct(searched(policy).map(|l| l.cookies.iter().map(String::as_str))),
        }
    }
}

/// The longest prefix set for `name` (what a value of it that is not text should be read
/// as, so it is refused as a malformed token rather than taken for no token).
pub fn longest_prefix<'p>(policy: &'p CompiledPolicy, name: &str) -> Option<&'p str> {
    searched(policy)
        .flat_map(|l| &l.headers)
        .filter(|h| crate::upstream::same_header_name(&h.name, name))
        .map(|h| h.prefix.as_str())
        .max_by_key(|p| p.len())
}

/// A header, an example a client would send a token in: the first header location searched
/// with its prefix (`authorization: Bearer <token>` when no header is a location).
pub fn example_header(policy: &CompiledPolicy, token: &str) -> (String, String) {
    searched(policy)
        .flat_map(|l| &l.headers)
        .next()
        .map_or_else(
            || ("authorization".to_owned(), format!("Bearer {token}")),
            |h| (h.name.clone(), format!("{}{token}", h.prefix)),
        )
}

/// The query of a path (`?…` up to a `#`), if any.
pub fn query_of(path: &str) -> Option<&str> {
    let (_, query) = path.split_once('?')?;
    Some(query.split_once('#').map_or(query, |(q, _)| q))
}

/// The `name=value` pairs of a query, raw (not decoded).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// A percent-decoded query component (invalid UTF-8 replaced: such a token is malformed).
pub fn decode_component(text: &str) -> Cow<'_, str> {
    percent_decode_str(text).decode_utf8_lossy()
}

/// The `name=value` pairs of every `cookie` header value, names and values trimmed, double
/// quotes around a value removed.
pub fn cookie_pairs<'r>(
    values: impl Iterator<Item = &'r str>,
) -> impl Iterator<Item = (&'r str, &'r str)> {
    values
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.trim(), value))
        })
}

/// The `cookie` header without the named cookies, for `forward = false`: `None` when no
/// value holds one (nothing to change), else the remaining cookies joined with `; ` (empty:
/// remove the header).
pub fn cookie_header_without<'r>(
    values: impl Iterator<Item = &'r str> + Clone,
    names: &[String],
) -> Option<String> {
    let removes = |name: &str| names.iter().any(|n| n == name.trim());
    let any = values
        .clone()
        .flat_map(|value| value.split(';'))
        .any(|pair| pair.split_once('=').is_some_and(|(name, _)| removes(name)));
    if !any {
        return None;
    }
    let kept: Vec<&str> = values
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| !pair.split_once('=').is_some_and(|(name, _)| removes(name)))
        .collect();
    Some(kept.join("; "))
}

/// Collects candidate tokens; refuses two different ones.
struct Found<'r, 'p> {
    located: Option<Located<'r, 'p>>,
}

impl<'r, 'p> Found<'r, 'p> {
    fn add(&mut self, token: Cow<'r, str>, location: Location<'p>) -> Result<(), DenyReason> {
        match &mut self.located {
            None => {
                self.located = Some(Located {
                    token,
                    locations: vec![location],
                });
                Ok(())
            }
            Some(located) if located.token == token => {
                if !located.locations.contains(&location) {
                    located.locations.push(location);
                }
                Ok(())
            }
            Some(_) => Err(DenyReason::Malformed(Malformed::Ambiguous)),
        }
    }
}

/// The token of a request, if it carries one, and where it was found.
pub fn locate<'r, 'p>(
    policy: &'p CompiledPolicy,
    names: &'p TokenNames,
    request: &Request<'r>,
) -> Result<Option<Located<'r, 'p>>, DenyReason> {
    let mut found = Found { located: None };
    for name in &names.headers {
        // Envoy drops empty header values; so does the engine, for `explain` to agree.
        let mut values = request
            .values(name)
            .map(|v| v.trim_matches(' '))
            .filter(|v| !v.is_empty());
        let Some(value) = values.next() else {
            continue;
        };
        // A repeated token header: Envoy joins the copies with `,` (a malformed token to
        // `jwt_authn`), and the upstream may read either. Refused even when identical.
        if values.next().is_some() {
            return Err(DenyReason::Malformed(Malformed::Ambiguous));
        }
        let best = searched(policy)
            .flat_map(|l| &l.headers)
            .filter(|h| h.name == *name)
            .filter(|h| {
                value
                    .as_bytes()
                    .get(..h.prefix.len())
                    .is_some_and(|start| start.eq_ignore_ascii_case(h.prefix.as_bytes()))
            })
            .max_by_key(|h| h.prefix.len());
        if let Some(location) = best {
            let token = value
                .get(location.prefix.len()..)
                .unwrap_or("")
                .trim_matches(' ');
            if !token.is_empty() {
                found.add(Cow::Borrowed(token), Location::Header(location))?;
            }
        }
    }
    let params = &names.params;
    if !params.is_empty()
        && let Some(query) = query_of(request.path)
    {
        for (name, value) in query_pairs(query) {
            let name = decode_component(name);
            if let Some(param) = params.iter().find(|p| **p == name) {
                let token = match decode_component(value) {
                    Cow::Borrowed(text) => Cow::Borrowed(text.trim_matches(' ')),
                    Cow::Owned(text) => Cow::Owned(text.trim_matches(' ').to_owned()),
                };
                if !token.is_empty() {
                    found.add(token, Location::Query(param))?;
                }
            }
        }
    }
    let cookies = &names.cookies;
    if !cookies.is_empty() {
        for (name, value) in cookie_pairs(request.values(COOKIE_HEADER)) {
            if let Some(cookie) = cookies.iter().find(|c| **c == name)
                && !value.is_empty()
            {
                found.add(Cow::Borrowed(value), Location::Cookie(cookie))?;
            }
        }
    }
    let Some(located) = found.located else {
        return Ok(None);
    };
    check_issuer_reads(policy, &located)?;
    Ok(Some(located))
}

/// Refuses a token found only at locations its issuer does not read. Decodes the token only
/// when some issuer does not read all of them; a token that does not decode is left to
/// authentication, which decodes it the same way and refuses it.
fn check_issuer_reads(
    policy: &CompiledPolicy,
    located: &Located<'_, '_>,
) -> Result<(), DenyReason> {
    let reads_any = |issuer: &CompiledIssuer| {
        let locations = issuer_locations(policy, issuer);
        located.locations.iter().any(|l| reads(locations, l))
    };
    if policy.issuers.iter().all(reads_any) {
        return Ok(());
    }
    let Ok(decoded) = token::decode(&located.token) else {
        return Ok(());
    };
    let Some(iss) = decoded.issuer() else {
        return Ok(());
    };
    match policy.issuers.iter().find(|issuer| issuer.issuer == iss) {
        Some(issuer) if !reads_any(issuer) => Err(DenyReason::UnknownIssuer {
            iss: printable(iss, 256),
        }),
        _ => Ok(()),
    }
}
