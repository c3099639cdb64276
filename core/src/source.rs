//! The TOML policy language as written by people: serde types with source spans.
//!
//! Unknown fields are errors (`deny_unknown_fields`), so a typo never silently widens access.
//! Validation and name resolution happen in [`crate::compile`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::compiled::{AudienceMatch, BeforeFirstFetch, DefaultAction, Mode, PathParameters};

/// A policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySource {
    /// Language version; must be 1.
    pub version: Spanned<i64>,
    /// Optional policy name (defaults to the file stem).
    pub name: Option<String>,
    /// `enforce` (default) or `audit`.
    #[serde(default)]
    pub mode: Mode,
    /// `deny` (default) or `allow`, for requests no rule matches.
    #[serde(default)]
    pub default: DefaultAction,
    /// Token extraction and upstream identity.
    #[serde(default)]
    pub token: TokenSource,
    /// Trusted issuers by name.
    #[serde(default)]
    pub issuers: BTreeMap<String, Spanned<IssuerSource>>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<Spanned<RuleSource>>,
    /// Revocation list.
    #[serde(default)]
    pub revoked: RevokedSource,
    /// `reject` (default) or `strip` `;` path parameters.
    #[serde(default)]
    pub path_parameters: PathParameters,
}

/// `[token]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    /// Headers that may carry `Bearer <token>`.
    #[serde(default = "default_token_headers")]
    pub headers: Vec<Spanned<String>>,
    /// Pass the token header upstream (default true).
    #[serde(default = "yes")]
    pub forward: bool,
    /// Prefix of the identity headers the filter owns.
    #[serde(default = "default_identity_prefix")]
    pub identity_header_prefix: Spanned<String>,
}

impl Default for TokenSource {
    fn default() -> Self {
        TokenSource {
            headers: default_token_headers(),
            forward: true,
            identity_header_prefix: Spanned::new(0..0, default_identity_prefix_text()),
        }
    }
}

fn default_token_headers() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "authorization".to_owned())]
}

fn default_identity_prefix_text() -> String {
    "x-claimgate-".to_owned()
}

fn default_identity_prefix() -> Spanned<String> {
    Spanned::new(0..0, default_identity_prefix_text())
}

fn yes() -> bool {
    true
}

/// `[issuers.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSource {
    /// Exact `iss`.
    pub issuer: Spanned<String>,
    /// Accepted audiences (any of).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Claims compared with `audiences` (default `["aud"]`).
    pub audience_claims: Option<Vec<Spanned<String>>>,
    /// `any` (default): one value of any audience claim is accepted; `all`: every audience
    /// claim present names an accepted audience, and `aud` is present.
    pub audience_match: Option<Spanned<AudienceMatch>>,
    /// Accepted `typ` header values (e.g. `at+jwt`, RFC 9068); empty or absent: any JWT type.
    #[serde(default)]
    pub token_types: Vec<Spanned<String>>,
    /// Allowed algorithms.
    pub algorithms: Spanned<Vec<Spanned<String>>>,
    /// Clock skew (default `60s`).
    pub clock_skew: Option<Spanned<String>>,
    /// Longest token lifetime.
    pub max_lifetime: Option<Spanned<String>>,
    /// Refuse tokens without `exp` (default true).
    #[serde(default = "yes")]
    pub require_expiry: bool,
    /// Subject claim (default `sub`).
    pub subject_claim: Option<Spanned<String>>,
    /// Client claims (default `azp`, `client_id`, `appid`).
    pub client_claims: Option<Vec<Spanned<String>>>,
    /// Role and group claims.
    #[serde(default)]
    pub roles: Vec<Spanned<String>>,
    /// Scope claims.
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
    /// HMAC secret, base64url; only with HS* algorithms.
    pub hmac_secret: Option<Spanned<String>>,
    /// Key set.
    pub jwks: Option<Spanned<JwksSource>>,
}

/// `[issuers.NAME.jwks]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksSource {
    /// JWKS file, relative to the policy file; compiled into the blob.
    pub file: Option<Spanned<String>>,
    /// JWKS document inline; compiled into the blob.
    pub inline: Option<Spanned<String>>,
    /// Remote JWKS URL.
    pub uri: Option<Spanned<String>>,
    /// Envoy cluster reaching `uri`.
    pub cluster: Option<Spanned<String>>,
    /// Refresh period (default `10m`).
    pub refresh: Option<Spanned<String>>,
    /// Fetch timeout (default `5s`).
    pub timeout: Option<Spanned<String>>,
    /// `hold` (default) or `reject` requests before the first fetch.
    #[serde(default)]
    pub before_first_fetch: BeforeFirstFetch,
}

/// `[[rules]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSource {
    /// Unique name.
    pub name: Spanned<String>,
    /// Hosts (exact or `*.suffix`).
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Methods.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Paths (exact, `/prefix/*`, templates).
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    /// Exact header values.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// Whom the rule allows.
    pub allow: Option<Spanned<toml::Value>>,
    /// Whom the rule denies.
    pub deny: Option<Spanned<toml::Value>>,
    /// Decide and log, never block.
    #[serde(default)]
    pub audit: bool,
}

/// The table form of `allow` / `deny`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSource {
    /// Issuer names (any of).
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Subjects (any of).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Roles, one needed; may use `{var}` from the paths.
    #[serde(default)]
    pub roles_any: Vec<String>,
    /// Roles, all needed.
    #[serde(default)]
    pub roles_all: Vec<String>,
    /// Scopes, one needed.
    #[serde(default)]
    pub scopes_any: Vec<String>,
    /// Scopes, all needed.
    #[serde(default)]
    pub scopes_all: Vec<String>,
}

/// `[revoked]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedSource {
    /// Revoked subjects: a list (single-issuer policies) or a table by issuer name.
    #[serde(default)]
    pub subjects: Option<Spanned<RevokedSubjects>>,
    /// Revoked token ids.
    #[serde(default)]
    pub token_ids: Vec<Spanned<String>>,
}

/// `[revoked] subjects`: a plain list is only unambiguous when the policy has one issuer.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RevokedSubjects {
    /// `subjects = ["a", "b"]`.
    List(Vec<String>),
    /// `[revoked.subjects] keycloak = ["a"]`.
    ByIssuer(BTreeMap<String, Vec<String>>),
}
