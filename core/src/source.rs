//! The TOML policy language as written by people: serde types with source spans.
//!
//! Unknown fields are errors (`deny_unknown_fields`), so a typo never silently widens access.
//! Validation and name resolution happen in [`crate::compile`].
//!
//! The same types describe the language as a JSON Schema (`schemars`; [`crate::compile::policy_schema`]):
//! doc comments become descriptions, `Spanned<T>` is described as `T`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use crate::compiled::{
    AudienceMatch, BeforeFirstFetch, CorsPreflight, DefaultAction, FilterState, IdentityHeader,
    Mode, PathParameters, Statuses, VerifyMode,
};

/// A policy file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySource {
    /// Language version; must be 1.
    #[schemars(with = "i64", range(min = 1, max = 1))]
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
    #[schemars(with = "BTreeMap<String, IssuerSource>")]
    #[serde(default)]
    pub issuers: BTreeMap<String, Spanned<IssuerSource>>,
    /// Rules.
    #[schemars(with = "Vec<RuleSource>")]
    #[serde(default)]
    pub rules: Vec<Spanned<RuleSource>>,
    /// Revocation list.
    #[serde(default)]
    pub revoked: RevokedSource,
    /// `reject` (default) or `strip` `;` path parameters.
    #[serde(default)]
    pub path_parameters: PathParameters,
    /// `rules` (default): CORS preflights are decided by the rules; `allow`: an `OPTIONS`
    /// request with `origin` and `access-control-request-method` passes without a token
    /// (deny rules naming `anyone` still apply).
    #[serde(default)]
    pub cors_preflight: CorsPreflight,
    /// `claimgate` (default): RFC 6750 statuses (no token 401, wrong audience 401, key set
    /// not fetched 503); `istio`: Istio's (no token 403, wrong audience 403, key set not
    /// fetched 401). Reason codes are the same either way.
    #[serde(default)]
    pub statuses: Statuses,
    /// `all` (default): each decision goes into the request's filter state for Envoy's access
    /// log (`%FILTER_STATE(wasm.claimgate.decision:PLAIN)%` and the others); `none`: not
    /// written, which saves a few host calls per request where no access log reads them.
    #[serde(default)]
    pub filter_state: FilterState,
}

/// `[token]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    /// Headers that may carry a token (Istio `fromHeaders`): a name (`Bearer <token>` in that
    /// header) or `{ name, prefix }`; default `["authorization"]`. Used by every issuer that
    /// names no locations of its own.
    #[schemars(with = "Vec<HeaderLocationSource>")]
    #[serde(default = "default_token_headers")]
    pub headers: Vec<Spanned<HeaderLocationSource>>,
    /// Query parameters that may carry a token (Istio `fromParams`), e.g. `["access_token"]`;
    /// default none.
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub query: Vec<Spanned<String>>,
    /// Cookies that may carry a token (Istio `fromCookies`); default none.
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub cookies: Vec<Spanned<String>>,
    /// Pass the token upstream (default true; Istio `forwardOriginalToken` defaults to false).
    /// `false` removes it from the header or cookie it came in.
    #[serde(default = "yes")]
    pub forward: bool,
    /// Prefix of the identity headers the filter owns.
    #[schemars(with = "String")]
    #[serde(default = "default_identity_prefix")]
    pub identity_header_prefix: Spanned<String>,
    /// `when_present` (default): a token the request carries is verified before the rules
    /// decide, and an invalid one is 401 even where `anyone` or the `allow` default would
    /// pass (Istio `RequestAuthentication`); `when_required`: only rules that need an
    /// identity look at the token.
    #[serde(default)]
    pub verify: VerifyMode,
    /// The identity headers set on an allowed request with a verified caller, by what follows
    /// the prefix: `subject`, `issuer`, `client`, `roles`, `rule`, `policy-version`; default
    /// all six. Each is a host call on every such request: name the ones the upstreams read.
    /// Client-sent headers under the prefix are removed whatever this says.
    #[schemars(with = "Option<Vec<IdentityHeader>>", extend("uniqueItems" = true))]
    pub identity_headers: Option<Vec<Spanned<IdentityHeader>>>,
}

impl Default for TokenSource {
    fn default() -> Self {
        TokenSource {
            headers: default_token_headers(),
            query: Vec::new(),
            cookies: Vec::new(),
            forward: true,
            identity_header_prefix: Spanned::new(0..0, default_identity_prefix_text()),
            verify: VerifyMode::default(),
            identity_headers: None,
        }
    }
}

fn default_token_headers() -> Vec<Spanned<HeaderLocationSource>> {
    vec![Spanned::new(
        0..0,
        HeaderLocationSource::Name("authorization".to_owned()),
    )]
}

/// A header that may carry a token: `"name"` (`Bearer <token>`) or `{ name, prefix }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum HeaderLocationSource {
    /// `Bearer <token>` in this header.
    Name(String),
    /// The token after `prefix` in this header.
    Table(HeaderLocationTable),
}

/// `{ name = "x-jwt", prefix = "" }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderLocationTable {
    /// Header name.
    pub name: String,
    /// Text before the token at the start of the value (default `"Bearer "`; `""`: the whole
    /// value is the token), compared ASCII case-insensitively (Istio `prefix`).
    pub prefix: Option<String>,
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
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerSource {
    /// Exact `iss`.
    #[schemars(with = "String")]
    pub issuer: Spanned<String>,
    /// Accepted audiences (any of).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Claims compared with `audiences` (default `["aud"]`).
    #[schemars(with = "Option<Vec<String>>")]
    pub audience_claims: Option<Vec<Spanned<String>>>,
    /// `any` (default): one value of any audience claim is accepted; `all`: every audience
    /// claim present names an accepted audience, and `aud` is present.
    #[schemars(with = "Option<AudienceMatch>")]
    pub audience_match: Option<Spanned<AudienceMatch>>,
    /// Accepted `typ` header values (e.g. `at+jwt`, RFC 9068); empty or absent: any JWT type.
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub token_types: Vec<Spanned<String>>,
    /// Allowed algorithms.
    #[schemars(with = "Vec<String>")]
    pub algorithms: Spanned<Vec<Spanned<String>>>,
    /// Clock skew (default `60s`).
    #[schemars(with = "Option<String>", pattern(DURATION_PATTERN))]
    pub clock_skew: Option<Spanned<String>>,
    /// Longest token lifetime.
    #[schemars(with = "Option<String>", pattern(DURATION_PATTERN))]
    pub max_lifetime: Option<Spanned<String>>,
    /// Refuse tokens without `exp` (default true).
    #[serde(default = "yes")]
    pub require_expiry: bool,
    /// Subject claim (default `sub`).
    #[schemars(with = "Option<String>")]
    pub subject_claim: Option<Spanned<String>>,
    /// Client claims (default `azp`, `client_id`, `appid`).
    #[schemars(with = "Option<Vec<String>>")]
    pub client_claims: Option<Vec<Spanned<String>>>,
    /// Role and group claims.
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub roles: Vec<Spanned<String>>,
    /// Scope claims.
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub scopes: Vec<Spanned<String>>,
    /// HMAC secret, base64url; only with HS* algorithms.
    #[schemars(with = "Option<String>")]
    pub hmac_secret: Option<Spanned<String>>,
    /// Key set.
    #[schemars(with = "Option<JwksSource>")]
    pub jwks: Option<Spanned<JwksSource>>,
    /// Headers that may carry this issuer's tokens (Istio `fromHeaders`). When any of
    /// `from_headers`, `from_params`, `from_cookies` is given, this issuer's tokens are read
    /// only there; otherwise at the `[token]` locations.
    #[schemars(with = "Option<Vec<HeaderLocationSource>>")]
    pub from_headers: Option<Vec<Spanned<HeaderLocationSource>>>,
    /// Query parameters that may carry this issuer's tokens (Istio `fromParams`).
    #[schemars(with = "Option<Vec<String>>")]
    pub from_params: Option<Vec<Spanned<String>>>,
    /// Cookies that may carry this issuer's tokens (Istio `fromCookies`).
    #[schemars(with = "Option<Vec<String>>")]
    pub from_cookies: Option<Vec<Spanned<String>>>,
    /// Request headers set from claims of a verified token, `{ "x-tenant" = "tid" }` (Istio
    /// `outputClaimToHeaders`); client-sent copies are always removed.
    #[schemars(with = "BTreeMap<String, String>")]
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, Spanned<String>>,
    /// Request header set to the verified token's payload segment, base64url (Istio
    /// `outputPayloadToHeader`); client-sent copies are always removed.
    #[schemars(with = "Option<String>")]
    pub payload_to_header: Option<Spanned<String>>,
}

/// `[issuers.NAME.jwks]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwksSource {
    /// JWKS file, relative to the policy file; compiled into the blob.
    #[schemars(with = "Option<String>")]
    pub file: Option<Spanned<String>>,
    /// JWKS document inline; compiled into the blob.
    #[schemars(with = "Option<String>")]
    pub inline: Option<Spanned<String>>,
    /// Remote JWKS URL.
    #[schemars(with = "Option<String>")]
    pub uri: Option<Spanned<String>>,
    /// Envoy cluster reaching `uri`.
    #[schemars(with = "Option<String>")]
    pub cluster: Option<Spanned<String>>,
    /// Refresh period (default `10m`).
    #[schemars(with = "Option<String>", pattern(DURATION_PATTERN))]
    pub refresh: Option<Spanned<String>>,
    /// Fetch timeout (default `5s`).
    #[schemars(with = "Option<String>", pattern(DURATION_PATTERN))]
    pub timeout: Option<Spanned<String>>,
    /// `hold` (default) or `reject` requests before the first fetch.
    #[serde(default)]
    pub before_first_fetch: BeforeFirstFetch,
}

/// `[[rules]]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSource {
    /// Unique name.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Hosts (any of): exact, `*.suffix`, `prefix*` or `*`.
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Hosts the rule excludes (same patterns as `hosts`).
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub not_hosts: Vec<Spanned<String>>,
    /// Methods (any of).
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Methods the rule excludes.
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub not_methods: Vec<Spanned<String>>,
    /// Paths (any of): exact, `/prefix/*`, templates, `/prefix*`, `*suffix` or `*`.
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    /// Paths the rule excludes (same patterns as `paths`).
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub not_paths: Vec<Spanned<String>>,
    /// Header conditions, all must hold: header name = a value pattern or a list of them
    /// (any of): exact, `prefix*`, `*suffix`, `*` (present).
    #[schemars(with = "BTreeMap<String, HeaderValuesSchema>")]
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<toml::Value>>,
    /// Header exclusions: the rule matches only if no value of these headers matches a
    /// pattern (`"*"`: the header must be absent).
    #[schemars(with = "BTreeMap<String, HeaderValuesSchema>")]
    #[serde(default)]
    pub not_headers: BTreeMap<String, Spanned<toml::Value>>,
    /// When this rule verifies a present token (`when_present` or `when_required`); absent:
    /// `[token] verify`.
    pub verify_token: Option<VerifyMode>,
    /// Whom the rule allows.
    #[schemars(with = "Option<PrincipalSchema>")]
    pub allow: Option<Spanned<toml::Value>>,
    /// Whom the rule denies.
    #[schemars(with = "Option<PrincipalSchema>")]
    pub deny: Option<Spanned<toml::Value>>,
    /// Decide and log, never block.
    #[serde(default)]
    pub audit: bool,
}

/// Durations as [`crate::compile::parse_duration`] reads them: `30s`, `10m`, `1h30m`, `500ms`, `1d`.
const DURATION_PATTERN: &str = r"^\s*([0-9]+(ms|s|m|h|d))+\s*$";

/// A header condition's value as the schema describes it: one pattern or a list (any of).
/// The compiler reads the value itself (as a [`toml::Value`]).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum HeaderValuesSchema {
    /// One value pattern.
    One(String),
    /// Value patterns, any of.
    Many(Vec<String>),
}

/// `allow` / `deny` as the schema describes them: a word or a table. The compiler reads the
/// value itself (as a [`toml::Value`]), so this type is never deserialized.
#[derive(JsonSchema)]
#[serde(untagged)]
#[schemars(extend("x-claimgate-kind" = "bad_principal"))]
#[allow(dead_code)]
enum PrincipalSchema {
    /// `"anyone"`: no token needed; `"authenticated"`: any valid token; `"unauthenticated"`:
    /// requests without a token.
    Word(PrincipalWord),
    /// Whom, by issuer, subject, role and scope.
    Table(Box<PrincipalSource>),
}

/// The word forms of `allow` / `deny`.
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum PrincipalWord {
    /// Anyone, with or without a token.
    Anyone,
    /// Any caller with a valid token of a policy issuer.
    Authenticated,
    /// Requests without a token.
    Unauthenticated,
}

/// The table form of `allow` / `deny`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
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
    /// Issuer names the rule excludes.
    #[serde(default)]
    pub not_issuers: Vec<String>,
    /// Subjects the rule excludes.
    #[serde(default)]
    pub not_subjects: Vec<String>,
    /// Named claims (path syntax `a.b`, `"a.b".c`) = value patterns (exact, `p*`, `*s`, `*`):
    /// every claim needs one value matching one pattern. A string claim is one value (`scope`
    /// and `permission` are split on spaces, as Istio does), an array of strings each
    /// element; other JSON types never match (as Istio).
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<String>>,
    /// Named claims none of whose values may match a pattern (an absent claim satisfies it).
    #[serde(default)]
    pub not_claims: BTreeMap<String, Vec<String>>,
}

/// `[revoked]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokedSource {
    /// Revoked subjects: a list (single-issuer policies) or a table by issuer name.
    #[schemars(with = "Option<RevokedSubjects>")]
    #[serde(default)]
    pub subjects: Option<Spanned<RevokedSubjects>>,
    /// Revoked token ids.
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub token_ids: Vec<Spanned<String>>,
}

/// `[revoked] subjects`: a plain list is only unambiguous when the policy has one issuer.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RevokedSubjects {
    /// `subjects = ["a", "b"]`.
    List(Vec<String>),
    /// `[revoked.subjects] keycloak = ["a"]`.
    ByIssuer(BTreeMap<String, Vec<String>>),
}
