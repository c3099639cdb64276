//! What the upstream learns about an allowed caller: identity headers, named once per policy,
//! with values in one encoding that can neither be refused by the proxy nor misread.
//!
//! A signed claim may hold any Unicode text, CR, LF or NUL: set as a header value as is,
//! Envoy refuses it (a 5xx for a caller the policy allowed), and a role holding `,` would
//! split into two roles once joined. So every value is percent-encoded (RFC 3986 §2.1): each
//! byte outside visible ASCII, and `%` and `,`, becomes `%XX` of its UTF-8 bytes; roles are
//! joined with `,` after encoding each. Plain values (the usual case) are not copied.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::compiled::{CompiledIssuer, CompiledPolicy, IdentityHeader};
use crate::engine::{Engine, Identity};
use crate::token::DecodedToken;

/// Whether a byte is sent as is.
fn is_plain(byte: u8) -> bool {
    (0x21..=0x7e).contains(&byte) && byte != b'%' && byte != b','
}

/// Percent-encodes a value for an identity header; borrows when nothing needs encoding.
pub fn encode_value(value: &str) -> Cow<'_, str> {
    if value.bytes().all(is_plain) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for byte in value.bytes() {
        if is_plain(byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    Cow::Owned(out)
}

/// Encodes each item and joins them with `,`.
pub fn encode_list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let mut out = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&encode_value(item));
    }
    out
}

/// The request headers the filter owns, named once per policy (`<prefix><field>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaderNames {
    /// The prefix every name starts with: client-sent headers under it are dropped.
    pub prefix: String,
    /// Verified subject.
    pub subject: String,
    /// Issuer's policy name.
    pub issuer: String,
    /// Calling client, when the token names one.
    pub client: String,
    /// Roles and groups, encoded and joined with `,`.
    pub roles: String,
    /// The rule that allowed the request.
    pub rule: String,
    /// The policy digest.
    pub policy_version: String,
    /// Every header an issuer sets from claims (`claims_to_headers`, `payload_to_header`),
    /// lower case: client-sent copies are dropped like those under the prefix.
    pub claim_headers: Vec<String>,
}

impl IdentityHeaderNames {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> IdentityHeaderNames {
        IdentityHeaderNames {
            prefix: prefix.to_owned(),
            subject: format!("{prefix}subject"),
            issuer: format!("{prefix}issuer"),
            client: format!("{prefix}client"),
            roles: format!("{prefix}roles"),
            rule: format!("{prefix}rule"),
            policy_version: format!("{prefix}policy-version"),
            claim_headers: Vec::new(),
        }
    }

    /// The name of one identity header.
    pub fn name_of(&self, header: IdentityHeader) -> &str {
        match header {
            IdentityHeader::Subject => &self.subject,
            IdentityHeader::Issuer => &self.issuer,
            IdentityHeader::Client => &self.client,
            IdentityHeader::Roles => &self.roles,
            IdentityHeader::Rule => &self.rule,
            IdentityHeader::PolicyVersion => &self.policy_version,
        }
    }

    /// The names a policy owns: its identity prefix and every header its issuers set from
    /// claims.
    pub fn for_policy(policy: &CompiledPolicy) -> IdentityHeaderNames {
        let mut names = IdentityHeaderNames::new(&policy.token.identity_header_prefix);
        for issuer in &policy.issuers {
            let set = issuer
                .claims_to_headers
                .iter()
                .map(|(header, _)| header)
                .chain(&issuer.payload_to_header);
            for header in set {
                if !names.claim_headers.contains(header) {
                    names.claim_headers.push(header.clone());
                }
            }
        }
        names
    }

    /// Whether a request header is one of the filter's own (client-sent copies are dropped).
    /// `_` counts as `-`: many servers (WSGI/CGI, older gunicorn and Puma) read
    /// `x_claimgate_subject` as `x-claimgate-subject`.
    pub fn owns(&self, header: &str) -> bool {
        self.owns_bytes(header.as_bytes())
    }

    /// [`IdentityHeaderNames::owns`] on a name as the host gives it (any bytes).
    pub fn owns_bytes(&self, header: &[u8]) -> bool {
        header
            .get(..self.prefix.len())
            .is_some_and(|start| same_header_name_bytes(start, self.prefix.as_bytes()))
            || self
                .claim_headers
                .iter()
                .any(|owned| same_header_name_bytes(header, owned.as_bytes()))
    }
}

fn fold(byte: u8) -> u8 {
    match byte {
        b'_' => b'-',
        other => other.to_ascii_lowercase(),
    }
}

/// [`same_header_name`] on names as the host gives them (any bytes).
pub fn same_header_name_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x) == fold(*y))
}

/// Whether two header names are the same to some server that may read the request: ASCII
/// case-insensitive, with `_` and `-` alike (CGI/WSGI map both to `_`).
pub fn same_header_name(a: &str, b: &str) -> bool {
    same_header_name_bytes(a.as_bytes(), b.as_bytes())
}

/// What a verified token sends upstream besides the identity headers, read when the token is
/// verified (the filter caches identities, not tokens): one value per `claims_to_headers`
/// entry whose claim the token holds, and the payload for `payload_to_header`.
#[derive(Clone, PartialEq, Eq, Default, Serialize)]
pub struct UpstreamClaims {
    /// Index into the issuer's `claims_to_headers`, and the encoded value.
    pub values: Vec<(usize, String)>,
    /// The token's payload segment (base64url), when the issuer sets `payload_to_header`.
    /// Never serialized nor debug-printed: it is the caller's claims in full.
    #[serde(skip)]
    pub payload: Option<String>,
}

impl std::fmt::Debug for UpstreamClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClaims")
            .field("values", &self.values)
            .field("payload", &self.payload.as_ref().map(|p| p.len()))
            .finish()
    }
}

/// A claim as a header value: a string encoded ([`encode_value`]), numbers and booleans as
/// JSON text, an array as its encoded elements joined with `,` (elements that are objects,
/// arrays or null left out); `None` for objects, null and arrays with nothing to send.
pub fn claim_value(value: &Value) -> Option<String> {
    let scalar = |value: &Value| match value {
        Value::String(text) => Some(encode_value(text).into_owned()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    };
    match value {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(scalar).collect();
            (!parts.is_empty()).then(|| parts.join(","))
        }
        other => scalar(other),
    }
}

/// Reads what `issuer` sends upstream out of a verified token.
pub fn upstream_claims(issuer: &CompiledIssuer, decoded: &DecodedToken<'_>) -> UpstreamClaims {
    let values = issuer
        .claims_to_headers
        .iter()
        .enumerate()
        .filter_map(|(i, (_, path))| Some((i, claim_value(path.lookup(&decoded.claims)?)?)))
        .collect();
    let payload = issuer
        .payload_to_header
        .as_ref()
        .and_then(|_| decoded.raw.split('.').nth(1))
        .filter(|segment| !segment.is_empty())
        .map(str::to_owned);
    UpstreamClaims { values, payload }
}

// === impl Engine ===

impl Engine {
    /// The headers a verified caller's issuer sets from claims (`claims_to_headers`,
    /// `payload_to_header`); [`Engine::upstream_headers`] sends them only when the request is
    /// allowed with that caller.
    pub fn claim_headers<'d>(&'d self, identity: &'d Identity) -> Vec<(&'d str, Cow<'d, str>)> {
        let Some(issuer) = self.policy().issuers.get(identity.issuer_index) else {
            return Vec::new();
        };
        let mut headers: Vec<(&str, Cow<'_, str>)> = identity
            .upstream
            .values
            .iter()
            .filter_map(|(i, value)| {
                let (name, _) = issuer.claims_to_headers.get(*i)?;
                Some((name.as_str(), Cow::Borrowed(value.as_str())))
            })
            .collect();
        if let (Some(name), Some(payload)) = (&issuer.payload_to_header, &identity.upstream.payload)
        {
            headers.push((name.as_str(), Cow::Borrowed(payload.as_str())));
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_are_not_copied() {
        assert!(matches!(
            encode_value("svc-fraud_pipeline@ml.example"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn unsendable_and_ambiguous_bytes_are_encoded() {
        // Issue 8 defect 8: CR, LF, NUL in a signed `sub` made Envoy answer 503.
        assert_eq!(encode_value("a\r\nx-admin: 1"), "a%0D%0Ax-admin:%201");
        assert_eq!(encode_value("nul\0"), "nul%00");
        assert_eq!(encode_value("josé"), "jos%C3%A9");
        assert_eq!(encode_value("100%"), "100%25");
        let roles = ["ml-scorer".to_owned(), "viewer,ml-admin".to_owned()];
        assert_eq!(encode_list(&roles), "ml-scorer,viewer%2Cml-admin");
        assert_eq!(encode_list(&[]), "");
    }

    #[test]
    fn encoded_values_are_visible_ascii() {
        let all: String = (0u32..0x800).filter_map(char::from_u32).collect();
        assert!(
            encode_value(&all)
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b))
        );
    }

    #[test]
    fn the_prefix_is_owned_case_insensitively() {
        let names = IdentityHeaderNames::new("x-claimgate-");
        assert!(names.owns("x-claimgate-subject"));
        assert!(names.owns("X-ClaimGate-anything"));
        assert!(!names.owns("x-claim"));
        // Issue 8 review: underscores reach WSGI-style upstreams as dashes.
        assert!(names.owns("x_claimgate_subject"));
        assert!(names.owns_bytes(b"X_CLAIMGATE-roles"));
        assert!(same_header_name("x_debug", "X-Debug"));
        assert!(!same_header_name("x-debug", "x-debugg"));
        assert_eq!(names.policy_version, "x-claimgate-policy-version");
    }
}
