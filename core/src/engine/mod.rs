//! The decision engine: one pure function from (policy, request, token, clock) to a
//! [`Decision`], shared by the filter and the CLI's `explain`.
//!
//! This module holds the prepared policy and authentication (token → [`Identity`]); the
//! evaluation of rules and the one step that combines them live in [`decide`].

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use serde::Serialize;

use crate::algorithm::Algorithm;
use crate::compiled::{CompiledIssuer, CompiledPolicy, Statuses, StructureError};
use crate::keys::{KeySet, MAX_KID_CHARS, printable};
use crate::matcher::Captures;
use crate::reason::{DenyReason, Response};
use crate::signature::{HostSlot, SignatureHost};
use crate::token::{self, Trace, record};
use crate::upstream::IdentityHeaderNames;

mod decide;
mod rule_index;

pub use decide::Shadow;

/// A request as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// `:authority` / `Host`, possibly with a port.
    pub host: &'a str,
    /// `:path`, possibly with a query.
    pub path: &'a str,
    /// Request headers; names in lower case as Envoy gives them, repeated names kept as
    /// separate entries. Headers under the policy's identity prefix are ignored by every
    /// rule (the filter removes them from the request).
    pub headers: &'a [(String, String)],
}

impl<'a> Request<'a> {
    /// The first value of a header (name compared case-insensitively). For logging only:
    /// rules see every value (see [`crate::matcher`]).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.values(name).next()
    }

    /// Every value of a header, in order. Names compare ASCII case-insensitively with `_`
    /// and `-` alike: some upstreams read `x_debug` as `x-debug`, so a rule must too.
    pub fn values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |(n, _)| crate::upstream::same_header_name(n, name))
            .map(|(_, v)| v.as_str())
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Index of the issuer in the policy.
    pub issuer_index: usize,
    /// The issuer's policy name.
    pub issuer: String,
    /// Subject (empty if the token names none).
    pub subject: String,
    /// Calling client (`azp`, `appid`, `client_id`…), if the token names one.
    pub client: Option<String>,
    /// Role and group names, sorted.
    pub roles: Vec<String>,
    /// Scopes, sorted.
    pub scopes: Vec<String>,
    /// `exp`, if any.
    pub exp: Option<u64>,
    /// `jti`, if any.
    pub token_id: Option<String>,
    /// A roles claim that was replaced by an Entra overage marker.
    pub overage: Option<String>,
    /// Bit set over the policy's interned roles.
    #[serde(skip)]
    pub role_bits: Vec<u64>,
    /// The string values of the claims rules name, by the policy's claim index
    /// ([`crate::compiled::CompiledPolicy::claims`]): only those, so the cached identity
    /// stays small.
    pub claim_values: Vec<Vec<String>>,
    /// Claims the issuer sends upstream as headers.
    pub upstream: crate::upstream::UpstreamClaims,
}

impl Identity {
    fn has_interned(&self, index: u32) -> bool {
        let word = (index / 64) as usize;
        self.role_bits
            .get(word)
            .is_some_and(|bits| bits & (1u64 << (index % 64)) != 0)
    }

    fn has_role(&self, name: &str) -> bool {
        self.roles
            .binary_search_by(|r| r.as_str().cmp(name))
            .is_ok()
    }

    fn has_scope(&self, name: &str) -> bool {
        self.scopes
            .binary_search_by(|s| s.as_str().cmp(name))
            .is_ok()
    }
}

/// Key sets fetched at run time, by issuer index.
#[derive(Debug, Clone, Default)]
pub struct RemoteKeys {
    sets: HashMap<usize, KeySet>,
}

impl RemoteKeys {
    /// Installs (replaces) the key set of an issuer.
    pub fn set(&mut self, issuer: usize, keys: KeySet) {
        self.sets.insert(issuer, keys);
    }

    /// The key set of an issuer, if one has arrived.
    pub fn get(&self, issuer: usize) -> Option<&KeySet> {
        self.sets.get(&issuer)
    }
}

/// The engine's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Whether the enforcing rules allow the request.
    pub allowed: bool,
    /// Why not, when denied.
    pub reason: Option<DenyReason>,
    /// False when the whole policy is in audit mode: the request continues whatever the
    /// rules say. Audit *rules* never make this false: they only feed [`Decision::shadow`].
    pub enforced: bool,
    /// The rule that decided, if any.
    pub rule: Option<String>,
    /// Names of every rule that matched the request (collected only when tracing).
    pub matched_rules: Vec<String>,
    /// The verified caller, when the enforcing rules verified a token.
    pub identity: Option<Rc<Identity>>,
    /// Path variables of the deciding rule (e.g. `model`).
    pub captures: Captures,
    /// What the decision would be with the matched audit rules enforcing too: logged, never
    /// enforced. Present only when an audit rule matched.
    pub shadow: Option<Shadow>,
    /// Every check taken, when tracing (empty on the filter's hot path).
    pub checks: Vec<token::Check>,
    /// The policy's status table: [`Decision::status`] and [`Decision::response`] answer by it.
    #[serde(skip)]
    pub statuses: Statuses,
}

impl Decision {
    /// Whether the request continues upstream (allowed, or denied in audit mode).
    pub fn passes(&self) -> bool {
        self.allowed || !self.enforced
    }

    /// `allow`, `deny`, or `audit_deny` (denied, but passed because of audit mode).
    pub fn outcome(&self) -> &'static str {
        match (self.allowed, self.passes()) {
            (true, _) => "allow",
            (false, true) => "audit_deny",
            (false, false) => "deny",
        }
    }

    /// The status the client gets: 200 when the request passes, else the reason's status
    /// under the policy's `statuses`.
    pub fn status(&self) -> u16 {
        match &self.reason {
            Some(reason) if !self.passes() => reason.response_in(self.statuses).status,
            _ => 200,
        }
    }

    /// The answer for the denial reason, under the policy's `statuses` (status and
    /// `WWW-Authenticate`), whether or not audit mode lets the request pass.
    pub fn response(&self) -> Option<Response> {
        self.reason.as_ref().map(|r| r.response_in(self.statuses))
    }
}

/// Authenticates a token; the filter passes one that consults its cache first.
pub type Authenticator<'x> =
    dyn FnMut(&str, &mut Trace<'_>) -> Result<Rc<Identity>, DenyReason> + 'x;

/// A policy ready to decide.
#[derive(Debug)]
pub struct Engine {
    policy: CompiledPolicy,
    digest: String,
    issuer_by_iss: HashMap<String, usize>,
    inline_keys: Vec<KeySet>,
    role_ids: HashMap<String, u32>,
    /// The rules each request path can match.
    rule_index: rule_index::RuleIndex,
    /// Revoked subjects by issuer index.
    revoked_subjects: HashMap<usize, HashSet<String>>,
    revoked_token_ids: HashSet<String>,
    header_names: IdentityHeaderNames,
    /// Every header, parameter and cookie a token may come in, derived once from the policy:
    /// the engine and the filter read them on every request.
    token_names: crate::locate::TokenNames,
    /// Where RS*/ES* signatures are checked first, if installed (the filter: Envoy's
    /// BoringSSL); none means the pure-Rust path alone.
    signature_host: HostSlot,
}

impl Engine {
    /// Prepares a compiled policy: validates references, builds lookups and keys.
    pub fn new(policy: CompiledPolicy, digest: String) -> Result<Engine, StructureError> {
        policy.validate()?;
        let issuer_by_iss = policy
            .issuers
            .iter()
            .enumerate()
            .map(|(i, issuer)| (issuer.issuer.clone(), i))
            .collect();
        let inline_keys = policy
            .issuers
            .iter()
            .map(|issuer| {
                let keys = KeySet::prepare(&issuer.keys, &issuer.algorithms);
                match &issuer.hmac_secret {
                    Some(secret) => keys.with_secret(secret, &issuer.algorithms),
                    None => keys,
                }
            })
            .collect();
        let role_ids = policy
            .roles
            .iter()
            .enumerate()
            .map(|(i, role)| (role.clone(), i as u32))
            .collect();
        let rule_index = rule_index::RuleIndex::new(&policy.rules);
        let mut revoked_subjects: HashMap<usize, HashSet<String>> = HashMap::new();
        for scoped in &policy.revoked.subjects {
            revoked_subjects
                .entry(scoped.issuer as usize)
                .or_default()
                .insert(scoped.subject.clone());
        }
        let revoked_token_ids = policy.revoked.token_ids.iter().cloned().collect();
        let header_names = IdentityHeaderNames::for_policy(&policy);
        let token_names = crate::locate::TokenNames::of(&policy);
        Ok(Engine {
            header_names,
            token_names,
            policy,
            digest,
            issuer_by_iss,
            inline_keys,
            role_ids,
            rule_index,
            revoked_subjects,
            revoked_token_ids,
            signature_host: HostSlot::default(),
        })
    }

    /// Installs a verifier outside Wasm that RS256/384/512 and ES256/384 signatures are
    /// offered to first (see [`crate::signature`]); its `None` leaves the decision to the
    /// pure-Rust path. The filter installs one per VM after detecting the host function; the
    /// CLI never does.
    pub fn set_signature_host(&mut self, host: Arc<dyn SignatureHost>) {
        self.signature_host = HostSlot(Some(host));
    }

    /// The compiled policy.
    pub fn policy(&self) -> &CompiledPolicy {
        &self.policy
    }

    /// The blob digest (`sha256:…`): the active policy version.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The issuers that need a remote key set fetched.
    pub fn remote_issuers(&self) -> impl Iterator<Item = (usize, &CompiledIssuer)> {
        self.policy
            .issuers
            .iter()
            .enumerate()
            .filter(|(_, issuer)| issuer.remote_jwks.is_some())
    }

    /// Every header, query parameter and cookie a token may come in (any issuer's locations).
    pub fn token_names(&self) -> &crate::locate::TokenNames {
        &self.token_names
    }

    /// The identity headers the filter sets (and whose client-sent copies it drops).
    pub fn header_names(&self) -> &IdentityHeaderNames {
        &self.header_names
    }

    /// Whether a request header (any bytes) is one the token is read from, in any spelling
    /// the engine reads it in: without case, `_` as `-` (see [`Request::values`]).
    pub fn reads_token_from(&self, name: &[u8]) -> bool {
        self.token_names
            .headers
            .iter()
            .any(|t| crate::upstream::same_header_name_bytes(t.as_bytes(), name))
    }

    /// The request headers the decision sees: all but the client's copies of identity and
    /// claim headers, which the filter drops as it reads the request (and removes upstream,
    /// see [`Engine::removed_upstream`]). `explain` and `claimgate test` decide on these, so
    /// a check that reads a header itself (a CORS preflight's `origin`, a method override)
    /// answers as in the filter.
    pub fn headers_seen(&self, headers: &[(String, String)]) -> Vec<(String, String)> {
        headers
            .iter()
            .filter(|(name, _)| !self.header_names.owns(name))
            .cloned()
            .collect()
    }

    /// The request's token, from every location the policy's issuers read (see
    /// [`crate::locate`]): `None` when it carries none; two different tokens are ambiguous, a
    /// token where its issuer does not read one is from an unknown issuer.
    pub fn bearer_token<'r>(
        &self,
        request: &Request<'r>,
    ) -> Result<Option<std::borrow::Cow<'r, str>>, DenyReason> {
        Ok(
            crate::locate::locate(&self.policy, &self.token_names, request)?
                .map(|located| located.token),
        )
    }

    /// The index of the issuer a policy calls `name` (as deny reasons name it).
    pub fn issuer_index(&self, name: &str) -> Option<usize> {
        self.policy.issuers.iter().position(|i| i.name == name)
    }

    /// Verifies a token and reads the caller's identity out of it.
    pub fn authenticate(
        &self,
        raw: &str,
        now: u64,
        remote: &RemoteKeys,
        trace: &mut Trace<'_>,
    ) -> Result<Identity, DenyReason> {
        let decoded = token::decode(raw).inspect_err(|reason| {
            record(trace, "structure", false, || reason.to_string());
        })?;
        record(trace, "structure", true, || {
            format!(
                "alg `{}`, kid {:?}",
                printable(&decoded.alg, 32),
                decoded
                    .kid
                    .as_deref()
                    .map(|kid| printable(kid, MAX_KID_CHARS))
            )
        });
        let alg: Option<Algorithm> = decoded.alg.parse().ok();
        let iss = decoded.issuer().ok_or(DenyReason::Malformed(
            crate::reason::Malformed::MissingIssuer,
        ))?;
        let Some(&issuer_index) = self.issuer_by_iss.get(iss) else {
            // Token text in a reason reaches every audit line: bounded and printable.
            let iss = printable(iss, 256);
            record(trace, "issuer", false, || {
                format!("`{iss}` is not a configured issuer")
            });
            return Err(DenyReason::UnknownIssuer { iss });
        };
        let issuer = self
            .policy
            .issuers
            .get(issuer_index)
            .ok_or(DenyReason::UnknownIssuer {
                iss: iss.to_owned(),
            })?;
        record(trace, "issuer", true, || {
            format!("`{iss}` is issuer `{}`", issuer.name)
        });
        let Some(alg) = alg.filter(|a| issuer.algorithms.contains(a)) else {
            let alg = printable(&decoded.alg, 32);
            record(trace, "algorithm", false, || {
                format!("`{alg}` not in {:?}", issuer.algorithms)
            });
            return Err(DenyReason::AlgorithmNotAllowed { alg });
        };
        record(trace, "algorithm", true, || format!("{alg} is allowed"));
        // Fetched keys win; inline keys serve alone, or until the first fetch lands. An HMAC
        // secret lives only in the policy, never in a fetched set: HS* always uses it.
        let inline = self.inline_keys.get(issuer_index).filter(|k| !k.is_empty());
        let fetched = issuer
            .remote_jwks
            .as_ref()
            .filter(|_| !alg.is_hmac())
            .and_then(|_| remote.get(issuer_index));
        let Some(keys) = fetched.or(inline) else {
            record(trace, "key", false, || {
                "remote key set not fetched yet".to_owned()
            });
            return Err(DenyReason::KeysUnavailable {
                issuer: issuer.name.clone(),
            });
        };
        let host = self.signature_host.0.as_deref();
        token::verify_with_issuer(&decoded, alg, issuer, keys, host, now, trace)?;
        Ok(self.identity_from(issuer_index, issuer, decoded))
    }

    /// Builds an identity from claims without any signature: for policy unit tests
    /// (`claimgate test` cases written as claims), never for traffic. Every other check
    /// (issuer, times, audience) still applies.
    pub fn danger_identity_from_unsigned_claims(
        &self,
        claims: serde_json::Map<String, serde_json::Value>,
        now: u64,
        trace: &mut Trace<'_>,
    ) -> Result<Identity, DenyReason> {
        let decoded = token::DecodedToken::from_claims(claims)?;
        let iss = decoded.issuer().ok_or(DenyReason::Malformed(
            crate::reason::Malformed::MissingIssuer,
        ))?;
        let (issuer_index, issuer) = self
            .issuer_by_iss
            .get(iss)
            .and_then(|&i| Some((i, self.policy.issuers.get(i)?)))
            .ok_or_else(|| DenyReason::UnknownIssuer {
                iss: printable(iss, 256),
            })?;
        record(trace, "signature", true, || {
            "not checked: unsigned test claims".to_owned()
        });
        token::check_claims(&decoded, issuer, now, trace)?;
        Ok(self.identity_from(issuer_index, issuer, decoded))
    }

    fn identity_from(
        &self,
        issuer_index: usize,
        issuer: &CompiledIssuer,
        decoded: token::DecodedToken<'_>,
    ) -> Identity {
        let claims = &decoded.claims;
        let roles = token::extract_strings(claims, &issuer.role_claims);
        let scopes = token::extract_strings(claims, &issuer.scope_claims);
        let mut role_bits = vec![0u64; self.policy.roles.len().div_ceil(64)];
        for role in &roles {
            if let Some(&id) = self.role_ids.get(role)
                && let Some(word) = role_bits.get_mut((id / 64) as usize)
            {
                *word |= 1u64 << (id % 64);
            }
        }
        // Entra replaces a `groups` claim past its limit with `_claim_names.groups` (access
        // and ID tokens) or with `hasgroups: true` (implicit-flow tokens).
        let overflowed = |name: &str| {
            claims
                .get("_claim_names")
                .and_then(|names| names.as_object())
                .is_some_and(|names| names.contains_key(name))
                || (name == "groups"
                    && claims.get("hasgroups") == Some(&serde_json::Value::Bool(true)))
        };
        let overage = issuer
            .role_claims
            .iter()
            .find(|path| path.lookup(claims).is_none() && overflowed(path.first()))
            .map(|path| path.first().to_owned());
        let claim_values = self
            .policy
            .claims
            .iter()
            .map(|path| crate::claims::condition_values(path, claims))
            .collect();
        let text =
            |value: Option<&serde_json::Value>| value.and_then(|v| v.as_str()).map(str::to_owned);
        Identity {
            issuer_index,
            issuer: issuer.name.clone(),
            subject: text(issuer.subject_claim.lookup(claims)).unwrap_or_default(),
            client: issuer
                .client_claims
                .iter()
                .find_map(|path| text(path.lookup(claims))),
            roles,
            scopes,
            exp: claims.get("exp").and_then(|v| v.as_u64()),
            token_id: text(claims.get("jti")),
            overage,
            role_bits,
            claim_values,
            upstream: crate::upstream::upstream_claims(issuer, &decoded),
        }
    }
}
