//! The compiled policy: what the blob carries and what the engine evaluates.
//!
//! Everything here is already validated and resolved by the compiler (names turned into
//! indices, roles interned, durations in seconds, keys normalised). The decoder
//! re-validates the cross references ([`CompiledPolicy::validate`]) because a blob is input
//! like any other.

use serde::{Deserialize, Serialize};

use crate::algorithm::Algorithm;
use crate::claims::ClaimPath;
use crate::keys::JwkKey;

/// Whether decisions are enforced or only recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "compiler", derive(schemars::JsonSchema))]
pub enum Mode {
    /// Denials are sent to the client.
    #[default]
    Enforce,
    /// Every decision is taken and logged, but the request always continues.
    Audit,
}

/// What happens to a request that no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "compiler", derive(schemars::JsonSchema))]
pub enum DefaultAction {
    /// Unmatched requests get 403 `no_rule`.
    #[default]
    Deny,
    /// Unmatched requests pass without identity.
    Allow,
}

/// What the filter does with requests for an issuer whose remote keys have not arrived yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "compiler", derive(schemars::JsonSchema))]
pub enum BeforeFirstFetch {
    /// Pause the request until the first key set arrives (or the fetch times out).
    #[default]
    Hold,
    /// Answer 503 `keys_unavailable` at once.
    Reject,
}

/// Which status table turns a deny reason into an HTTP answer (see [`crate::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "compiler", derive(schemars::JsonSchema))]
pub enum Statuses {
    /// RFC 6750: no token is 401 with `WWW-Authenticate: Bearer`, a token for another
    /// audience 401, key set not fetched 503.
    #[default]
    Claimgate,
    /// As Istio (Envoy `jwt_authn` + `rbac`) answers: no token where one is needed 403, a
    /// token for another audience 403, key set not fetched 401; everything else unchanged.
    Istio,
}

/// When a token the request carries is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "compiler", derive(schemars::JsonSchema))]
pub enum VerifyMode {
    /// A present token is verified before the rules decide; an invalid one is 401 whatever
    /// the rules say (Istio `RequestAuthentication`).
    #[default]
    WhenPresent,
    /// A token is only verified when a rule needs an identity: `anyone` rules and the
    /// `allow` default never look at it.
    WhenRequired,
}

/// A compiled, ready-to-evaluate policy. The default is the empty policy (no issuers, no
/// rules, every setting at its default), which tests build on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompiledPolicy {
    /// Human name of the policy (from the file name or `name`).
    pub name: String,
    /// Enforce or audit, for the whole policy.
    pub mode: Mode,
    /// Outcome for requests that match no rule.
    pub default: DefaultAction,
    /// Trusted issuers, referenced by index.
    pub issuers: Vec<CompiledIssuer>,
    /// Rules, referenced by index; order carries no meaning.
    pub rules: Vec<CompiledRule>,
    /// Interned role and group names; rules refer to them by index.
    pub roles: Vec<String>,
    /// Rules indexed by the first path segment they can match.
    pub path_index: PathIndex,
    /// Revoked subjects and token ids.
    pub revoked: Revocations,
    /// Where the bearer token is looked for, and what is passed upstream.
    pub token: TokenSettings,
    /// What `;` path parameters do to a request.
    pub path_parameters: PathParameters,
    /// Whether CORS preflight requests pass without a token.
    pub cors_preflight: CorsPreflight,
    /// Which status table answers denials.
    pub statuses: Statuses,
    /// The claim paths rules name in `claims` / `not_claims`, interned: authentication
    /// extracts exactly these into the identity.
    pub claims: Vec<ClaimPath>,
    /// Whether each decision is written into the request's filter state.
    pub filter_state: FilterState,
}

/// Whether the filter writes each decision into the request's filter state
/// (`wasm.claimgate.decision`, `reason`, `rule`, `subject`, `issuer`, `shadow_*`), where
/// Envoy's access log reads it. Each value is a host call on every request (about 2–3 µs of
/// Envoy CPU each): a mesh whose access log does not read them need not pay for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "compiler", derive(schemars::JsonSchema))]
pub enum FilterState {
    /// Every decision's values (the complete trail in the access log).
    #[default]
    All,
    /// No filter state; decisions are still counted in the metrics, and denials logged.
    None,
}

/// One of the identity headers set on an allowed request with a verified caller, named by
/// what follows the identity prefix (`x-claimgate-subject` is `subject`). Each is a host call
/// on every such request: a policy names the ones its upstreams read (`[token]
/// identity_headers`); client-sent copies of all of them are removed either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "compiler", derive(schemars::JsonSchema))]
pub enum IdentityHeader {
    /// The verified subject (`sub`, or the issuer's `subject_claim`).
    Subject,
    /// The issuer's name in the policy.
    Issuer,
    /// The calling client, when the token names one.
    Client,
    /// Roles and groups, each percent-encoded, joined with `,`.
    Roles,
    /// The rule that allowed the request.
    Rule,
    /// The policy's digest (`sha256:…`).
    PolicyVersion,
}

impl IdentityHeader {
    /// Every identity header, in the order they are set: the default.
    pub const ALL: [IdentityHeader; 6] = [
        IdentityHeader::Subject,
        IdentityHeader::Issuer,
        IdentityHeader::Client,
        IdentityHeader::Roles,
        IdentityHeader::Rule,
        IdentityHeader::PolicyVersion,
    ];
}

/// What happens to a CORS preflight request (`OPTIONS` with non-empty `origin` and
/// `access-control-request-method` headers; browsers never send a token with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "compiler", derive(schemars::JsonSchema))]
pub enum CorsPreflight {
    /// The rules decide, as for any request.
    #[default]
    Rules,
    /// The preflight passes without a token and without identity; deny rules that name
    /// everyone (`deny = "anyone"`) still apply (Envoy `jwt_authn`'s `bypass_cors_preflight`).
    Allow,
}

/// What a `;` in the path does. Servlet containers (Tomcat, Spring) drop `;…` from each
/// segment before routing, so `/public/..;/admin` is `/admin` to them: matching the raw text
/// would let such a path walk around a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "compiler", derive(schemars::JsonSchema))]
pub enum PathParameters {
    /// A path with `;` is refused (400 `path_parameters`).
    #[default]
    Reject,
    /// Each segment's `;…` part is removed before matching, as servlet containers read it.
    Strip,
}

/// A subject as its issuer names it: `sub` is unique per issuer only (RFC 7519 §4.1.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScopedSubject {
    /// Index of the issuer in [`CompiledPolicy::issuers`].
    pub issuer: u32,
    /// The subject claim's value.
    pub subject: String,
}

/// One trusted token issuer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompiledIssuer {
    /// The policy's name for this issuer (`[issuers.NAME]`).
    pub name: String,
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted audiences (any of); empty means the audience is not checked.
    pub audiences: Vec<String>,
    /// Claims whose values are compared with `audiences`, e.g. `aud`, `azp`.
    pub audience_claims: Vec<ClaimPath>,
    /// How the audience claims must name accepted audiences.
    pub audience_match: AudienceMatch,
    /// Accepted `typ` header values, as [`crate::token::token_type_key`] normalises them
    /// (lower case, no `application/`); empty accepts any JWT type and none.
    pub token_types: Vec<String>,
    /// Algorithms a token may be signed with.
    pub algorithms: Vec<Algorithm>,
    /// Inline keys compiled into the blob.
    pub keys: Vec<JwkKey>,
    /// HMAC secret, only when explicitly enabled.
    pub hmac_secret: Option<Vec<u8>>,
    /// Remote key set, fetched by the filter.
    pub remote_jwks: Option<RemoteJwks>,
    /// Tolerated clock difference, seconds.
    pub clock_skew_secs: u64,
    /// Whether tokens without `exp` are refused.
    pub require_expiry: bool,
    /// Longest accepted `exp - iat` (or `exp - now` without `iat`), seconds.
    pub max_lifetime_secs: Option<u64>,
    /// Claims holding role or group names.
    pub role_claims: Vec<ClaimPath>,
    /// Claims holding scopes (space-separated strings or arrays).
    pub scope_claims: Vec<ClaimPath>,
    /// Claim naming the subject.
    pub subject_claim: ClaimPath,
    /// Claims naming the calling client (first present wins).
    pub client_claims: Vec<ClaimPath>,
    /// Where this issuer's tokens may be found; `None`: the policy's [`TokenSettings`]
    /// locations.
    pub locations: Option<TokenLocations>,
    /// Request headers set from claims for the upstream (lower-case name, claim).
    pub claims_to_headers: Vec<(String, ClaimPath)>,
    /// Request header (lower case) set to the token's payload segment (base64url).
    pub payload_to_header: Option<String>,
}

/// How an issuer's audience claims must name its accepted audiences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "compiler", derive(schemars::JsonSchema))]
pub enum AudienceMatch {
    /// One value of any listed claim is an accepted audience (the default; `["aud", "azp"]`
    /// then accepts a token for another API whose `azp` is an accepted client).
    #[default]
    Any,
    /// Every listed claim the token carries names an accepted audience (one of its values),
    /// and `aud` is present when it is listed (RFC 8725 §3.9): a token for another API is
    /// refused even when its `azp` is accepted.
    All,
}

impl CompiledIssuer {
    /// An issuer with the compiler's defaults (audience claim `aud`, no audience checked,
    /// skew 60 s, `exp` required, subject `sub`, client `azp`/`client_id`/`appid`) and no
    /// keys: for tests and tools that build policies without the compiler.
    pub fn new(name: &str, issuer: &str, algorithms: Vec<Algorithm>) -> CompiledIssuer {
        CompiledIssuer {
            name: name.to_owned(),
            issuer: issuer.to_owned(),
            audiences: Vec::new(),
            audience_claims: vec![ClaimPath::top("aud")],
            audience_match: AudienceMatch::Any,
            token_types: Vec::new(),
            algorithms,
            keys: Vec::new(),
            hmac_secret: None,
            remote_jwks: None,
            clock_skew_secs: 60,
            require_expiry: true,
            max_lifetime_secs: None,
            role_claims: Vec::new(),
            scope_claims: Vec::new(),
            subject_claim: ClaimPath::top("sub"),
            client_claims: ["azp", "client_id", "appid"]
                .into_iter()
                .map(ClaimPath::top)
                .collect(),
            locations: None,
            claims_to_headers: Vec::new(),
            payload_to_header: None,
        }
    }
}

/// A JWKS endpoint the filter fetches through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteJwks {
    /// Full URL of the key set.
    pub uri: String,
    /// Envoy cluster that reaches the host of `uri`.
    pub cluster: String,
    /// Refresh period, seconds.
    pub refresh_secs: u64,
    /// Callout timeout, milliseconds.
    pub timeout_ms: u64,
    /// Behaviour before the first key set arrives.
    pub before_first_fetch: BeforeFirstFetch,
}

/// Whether a rule lets requests through or stops them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Allow the principal the rule names.
    Allow,
    /// Deny the principal the rule names, before any allow rule.
    Deny,
}

/// A compiled rule: what it matches and whom it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompiledRule {
    /// Unique rule name.
    pub name: String,
    /// Allow or deny.
    pub effect: Effect,
    /// Host patterns (any of); empty matches every host.
    pub hosts: Vec<HostPattern>,
    /// Hosts excluded from the rule (none may match).
    pub not_hosts: Vec<HostPattern>,
    /// Upper-case methods (any of); empty matches every method.
    pub methods: Vec<String>,
    /// Upper-case methods excluded from the rule.
    pub not_methods: Vec<String>,
    /// Path patterns (any of); empty matches every path.
    pub paths: Vec<PathPattern>,
    /// Paths excluded from the rule, compared in the opposite spelling of the rule's own.
    pub not_paths: Vec<PathPattern>,
    /// Header conditions (all must hold).
    pub headers: Vec<HeaderCondition>,
    /// Header exclusions (none may hold).
    pub not_headers: Vec<HeaderCondition>,
    /// Whom the rule names.
    pub principal: Principal,
    /// The rule's own `verify_token`; `None`: the policy's [`TokenSettings::verify`].
    pub verify_token: Option<VerifyMode>,
    /// A rule in audit mode never blocks.
    pub audit: bool,
}

/// A host pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostPattern {
    /// Exact host, lower case, no port.
    Exact(String),
    /// `*.example.com`: stored as `.example.com`, matches any host ending with it.
    Suffix(String),
    /// `api.*`: stored as `api.`, matches any host starting with it (Istio's prefix match).
    Prefix(String),
    /// `*`: every host.
    Any,
}

impl std::fmt::Display for HostPattern {
    /// The pattern as a policy writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Suffix(suffix) => write!(f, "*{suffix}"),
            HostPattern::Prefix(prefix) => write!(f, "{prefix}*"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

/// A condition on one request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderCondition {
    /// Header name, lower case.
    pub name: String,
    /// Value patterns (any of).
    pub patterns: Vec<ValuePattern>,
}

/// A header value pattern, as Istio's string match: exact, `prefix*`, `*suffix` or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValuePattern {
    /// The exact value.
    Exact(String),
    /// `v*`: values starting with the text.
    Prefix(String),
    /// `*v`: values ending with the text.
    Suffix(String),
    /// `*`: the header is present, with any value (the empty one too).
    Present,
}

impl std::fmt::Display for ValuePattern {
    /// The pattern as a policy writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValuePattern::Exact(text) => f.write_str(text),
            ValuePattern::Prefix(text) => write!(f, "{text}*"),
            ValuePattern::Suffix(text) => write!(f, "*{text}"),
            ValuePattern::Present => f.write_str("*"),
        }
    }
}

impl std::fmt::Display for HeaderCondition {
    /// `name=pattern|pattern`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=", self.name)?;
        for (i, pattern) in self.patterns.iter().enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            write!(f, "{pattern}")?;
        }
        Ok(())
    }
}

/// A path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathPattern {
    /// The exact path.
    Exact(String),
    /// `/prefix/*`: stored as `/prefix/`; `/*` alone is stored as `/`.
    Prefix(String),
    /// `/foo*` (Istio's prefix, no segment boundary): stored as `/foo`.
    TextPrefix(String),
    /// `*/score`, `*.json` (Istio's suffix): stored as `/score`, `.json`.
    Suffix(String),
    /// `*`: every path.
    Any,
    /// Segments, some capturing a named variable, optionally followed by `/*`.
    Template {
        /// The segments after the leading `/`.
        segments: Vec<Segment>,
        /// Whether any further segments may follow.
        open_ended: bool,
    },
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Segment {
    /// A literal segment.
    Literal(String),
    /// `prefix{var}suffix`: a non-empty capture between fixed text.
    Capture {
        /// Text before the variable.
        prefix: String,
        /// Variable name.
        var: String,
        /// Text after the variable.
        suffix: String,
    },
}

/// Whom a rule names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Principal {
    /// Everyone, with or without a token.
    Anyone,
    /// Requests that carry no token (Istio: no request principal).
    Unauthenticated,
    /// Callers with a verified token meeting every condition given.
    Authenticated(Box<Requirement>),
}

/// Conditions on a verified identity; every non-empty list must hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Requirement {
    /// Issuer indices (any of); empty accepts every issuer.
    pub issuers: Vec<u32>,
    /// Subjects (any of), each scoped by its issuer.
    pub subjects: Vec<ScopedSubject>,
    /// At least one of these roles.
    pub roles_any: Vec<RoleRef>,
    /// Every one of these roles.
    pub roles_all: Vec<RoleRef>,
    /// At least one of these scopes.
    pub scopes_any: Vec<String>,
    /// Every one of these scopes.
    pub scopes_all: Vec<String>,
    /// Issuer indices the rule excludes.
    pub not_issuers: Vec<u32>,
    /// Subjects the rule excludes, each scoped by its issuer.
    pub not_subjects: Vec<ScopedSubject>,
    /// Named claims: each must have a value matching one of its patterns.
    pub claims: Vec<ClaimCondition>,
    /// Named claims: none of their values may match one of the patterns.
    pub not_claims: Vec<ClaimCondition>,
}

/// A condition on one named claim's values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimCondition {
    /// Index into [`CompiledPolicy::claims`]: the identity carries the values by this index.
    pub claim: u32,
    /// Value patterns (any of).
    pub patterns: Vec<ValuePattern>,
}

/// A role a rule asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoleRef {
    /// Index into [`CompiledPolicy::roles`].
    Interned(u32),
    /// A name filled in from path captures, e.g. `model.{model}.invoke`.
    Template(Vec<TemplatePart>),
}

/// A piece of a role template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TemplatePart {
    /// Fixed text.
    Text(String),
    /// The value captured for this path variable.
    Var(String),
}

/// Rules indexed by the first path segment they can match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PathIndex {
    /// First literal segment → rule indices, sorted by segment.
    pub by_first_segment: Vec<(String, Vec<u32>)>,
    /// Rules that can match any first segment.
    pub any: Vec<u32>,
}

/// The revocation list.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Revocations {
    /// Revoked subjects, each scoped by its issuer.
    pub subjects: Vec<ScopedSubject>,
    /// Revoked token ids (`jti`).
    pub token_ids: Vec<String>,
}

/// A request header that may carry a token after a prefix (Istio `fromHeaders`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderLocation {
    /// Header name, lower case.
    pub name: String,
    /// Text before the token at the start of the value (compared ASCII case-insensitively),
    /// e.g. `Bearer `; empty: the whole value is the token.
    pub prefix: String,
}

impl HeaderLocation {
    /// `Bearer <token>` in `name`.
    pub fn bearer(name: &str) -> HeaderLocation {
        HeaderLocation {
            name: name.to_owned(),
            prefix: BEARER_PREFIX.to_owned(),
        }
    }
}

/// The prefix of a header location written as a plain string.
pub const BEARER_PREFIX: &str = "Bearer ";

/// Where tokens may be found in a request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TokenLocations {
    /// Headers with their prefixes.
    pub headers: Vec<HeaderLocation>,
    /// Query parameter names (compared after percent-decoding).
    pub query: Vec<String>,
    /// Cookie names.
    pub cookies: Vec<String>,
}

impl TokenLocations {
    /// Whether no token can be found anywhere.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.query.is_empty() && self.cookies.is_empty()
    }
}

/// Token extraction and upstream identity settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSettings {
    /// Where tokens are found for issuers that name no locations of their own.
    pub locations: TokenLocations,
    /// Whether the token is passed to the upstream after a decision.
    pub forward_token: bool,
    /// Prefix of identity headers the filter owns: stripped from every request.
    pub identity_header_prefix: String,
    /// When a present token is verified, for rules that do not say.
    pub verify: VerifyMode,
    /// The identity headers set on an allowed request with a verified caller (each once).
    pub identity_headers: Vec<IdentityHeader>,
}

impl TokenSettings {
    /// The header a client puts its token in (the first configured one).
    pub fn primary_header(&self) -> &str {
        self.locations
            .headers
            .first()
            .map_or("authorization", |h| h.name.as_str())
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            locations: TokenLocations {
                headers: vec![HeaderLocation::bearer("authorization")],
                query: Vec::new(),
                cookies: Vec::new(),
            },
            forward_token: true,
            identity_header_prefix: "x-claimgate-".to_owned(),
            verify: VerifyMode::default(),
            identity_headers: IdentityHeader::ALL.to_vec(),
        }
    }
}

/// A blob whose internal references do not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StructureError {
    /// A rule names an issuer index past the end.
    #[error("rule `{rule}` refers to issuer #{index}, but the policy has {count}")]
    IssuerIndex {
        /// Rule name.
        rule: String,
        /// Offending index.
        index: u32,
        /// Number of issuers.
        count: usize,
    },
    /// A rule names a role index past the end.
    #[error("rule `{rule}` refers to role #{index}, but the policy has {count}")]
    RoleIndex {
        /// Rule name.
        rule: String,
        /// Offending index.
        index: u32,
        /// Number of roles.
        count: usize,
    },
    /// A rule names a claim index past the end.
    #[error("rule `{rule}` refers to claim #{index}, but the policy has {count}")]
    ClaimIndex {
        /// Rule name.
        rule: String,
        /// Offending index.
        index: u32,
        /// Number of interned claims.
        count: usize,
    },
    /// The path index names a rule past the end.
    #[error("path index refers to rule #{index}, but the policy has {count}")]
    RuleIndex {
        /// Offending index.
        index: u32,
        /// Number of rules.
        count: usize,
    },
    /// A rule is missing from the path index, so it could never match.
    #[error("rule `{rule}` is not in the path index")]
    UnindexedRule {
        /// Rule name.
        rule: String,
    },
    /// An issuer has an algorithm list that is empty.
    #[error("issuer `{issuer}` allows no algorithm")]
    NoAlgorithm {
        /// Issuer name.
        issuer: String,
    },
    /// The token settings name an identity header twice (the compiler refuses it; a blob
    /// listing one many times would cost a host call per copy on every allowed request).
    #[error("identity header {header:?} is named more than once")]
    DuplicateIdentityHeader {
        /// The header named again.
        header: IdentityHeader,
    },
}

impl CompiledPolicy {
    /// Checks that every index in the policy points at something.
    pub fn validate(&self) -> Result<(), StructureError> {
        let mut named = 0u8;
        for &header in &self.token.identity_headers {
            let bit = 1u8 << (header as u8);
            if named & bit != 0 {
                return Err(StructureError::DuplicateIdentityHeader { header });
            }
            named |= bit;
        }
        let issuer_count = self.issuers.len();
        let role_count = self.roles.len();
        for issuer in &self.issuers {
            if issuer.algorithms.is_empty() {
                return Err(StructureError::NoAlgorithm {
                    issuer: issuer.name.clone(),
                });
            }
        }
        for rule in &self.rules {
            if let Principal::Authenticated(req) = &rule.principal {
                if let Some(&index) = req.issuers.iter().find(|&&i| i as usize >= issuer_count) {
                    return Err(StructureError::IssuerIndex {
                        rule: rule.name.clone(),
                        index,
                        count: issuer_count,
                    });
                }
                if let Some(scoped) = req
                    .subjects
                    .iter()
                    .find(|s| s.issuer as usize >= issuer_count)
                {
                    return Err(StructureError::IssuerIndex {
                        rule: rule.name.clone(),
                        index: scoped.issuer,
                        count: issuer_count,
                    });
                }
                if let Some(index) = req
                    .not_issuers
                    .iter()
                    .copied()
                    .chain(req.not_subjects.iter().map(|s| s.issuer))
                    .find(|&i| i as usize >= issuer_count)
                {
                    return Err(StructureError::IssuerIndex {
                        rule: rule.name.clone(),
                        index,
                        count: issuer_count,
                    });
                }
                if let Some(condition) = req
                    .claims
                    .iter()
                    .chain(&req.not_claims)
                    .find(|c| c.claim as usize >= self.claims.len())
                {
                    return Err(StructureError::ClaimIndex {
                        rule: rule.name.clone(),
                        index: condition.claim,
                        count: self.claims.len(),
                    });
                }
                for role in req.roles_any.iter().chain(&req.roles_all) {
                    if let RoleRef::Interned(index) = role
                        && *index as usize >= role_count
                    {
                        return Err(StructureError::RoleIndex {
                            rule: rule.name.clone(),
                            index: *index,
                            count: role_count,
                        });
                    }
                }
            }
        }
        if let Some(scoped) = self
            .revoked
            .subjects
            .iter()
            .find(|s| s.issuer as usize >= issuer_count)
        {
            return Err(StructureError::IssuerIndex {
                rule: "[revoked]".to_owned(),
                index: scoped.issuer,
                count: issuer_count,
            });
        }
        let mut indexed = vec![false; self.rules.len()];
        let all_entries = self
            .path_index
            .by_first_segment
            .iter()
            .flat_map(|(_, ids)| ids)
            .chain(&self.path_index.any);
        for &index in all_entries {
            match indexed.get_mut(index as usize) {
                Some(seen) => *seen = true,
                None => {
                    return Err(StructureError::RuleIndex {
                        index,
                        count: self.rules.len(),
                    });
                }
            }
        }
        if let Some(position) = indexed.iter().position(|seen| !seen) {
            let rule = self
                .rules
                .get(position)
                .map(|r| r.name.clone())
                .unwrap_or_default();
            return Err(StructureError::UnindexedRule { rule });
        }
        Ok(())
    }
}
