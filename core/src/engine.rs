//! The decision engine: one pure function from (policy, request, token, clock) to a
//! [`Decision`], shared by the filter and the CLI's `explain`.
//!
//! Semantics (close to Istio's AuthorizationPolicy): rules are selected through the path
//! index, never by scanning all of them; a matching unconditional deny rule wins; a matching
//! `anyone` rule lets the request through without a token; otherwise a verified token is
//! required, conditional deny rules are applied, and the request passes if any matching
//! allow rule is satisfied. Rule order never matters.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use serde::Serialize;

use crate::algorithm::Algorithm;
use crate::compiled::{
    CompiledIssuer, CompiledPolicy, DefaultAction, Effect, Mode, Principal, Requirement, RoleRef,
    StructureError, TemplatePart,
};
use crate::keys::KeySet;
use crate::matcher::{self, Captures};
use crate::reason::DenyReason;
use crate::token::{self, Trace, record};

/// A request as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// `:authority` / `Host`, possibly with a port.
    pub host: &'a str,
    /// `:path`, possibly with a query.
    pub path: &'a str,
    /// Request headers; names in lower case as Envoy gives them.
    pub headers: &'a [(String, String)],
}

impl<'a> Request<'a> {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
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
    /// Whether the policy allows the request.
    pub allowed: bool,
    /// Why not, when denied.
    pub reason: Option<DenyReason>,
    /// False when the deciding rule or the policy is in audit mode: the request continues.
    pub enforced: bool,
    /// The rule that decided, if any.
    pub rule: Option<String>,
    /// Names of every rule that matched the request (collected only when tracing).
    pub matched_rules: Vec<String>,
    /// The verified caller, when a token was verified.
    pub identity: Option<Rc<Identity>>,
    /// Path variables of the deciding rule (e.g. `model`).
    pub captures: Captures,
    /// Every check taken, when tracing (empty on the filter's hot path).
    pub checks: Vec<token::Check>,
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

    /// The status the client gets: 200 when the request passes, else the reason's status.
    pub fn status(&self) -> u16 {
        match &self.reason {
            Some(reason) if !self.passes() => reason.response().status,
            _ => 200,
        }
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
    index: HashMap<String, Vec<u32>>,
    unindexed: Vec<u32>,
    /// Revoked subjects by issuer index.
    revoked_subjects: HashMap<usize, HashSet<String>>,
    revoked_token_ids: HashSet<String>,
}

struct Matched {
    rule: u32,
    captures: Captures,
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
        let unindexed = policy.path_index.any.clone();
        let index = policy
            .path_index
            .by_first_segment
            .iter()
            .map(|(segment, ids)| {
                let mut merged: Vec<u32> = ids.iter().chain(&unindexed).copied().collect();
                merged.sort_unstable();
                merged.dedup();
                (segment.clone(), merged)
            })
            .collect();
        let mut revoked_subjects: HashMap<usize, HashSet<String>> = HashMap::new();
        for scoped in &policy.revoked.subjects {
            revoked_subjects
                .entry(scoped.issuer as usize)
                .or_default()
                .insert(scoped.subject.clone());
        }
        let revoked_token_ids = policy.revoked.token_ids.iter().cloned().collect();
        Ok(Engine {
            policy,
            digest,
            issuer_by_iss,
            inline_keys,
            role_ids,
            index,
            unindexed,
            revoked_subjects,
            revoked_token_ids,
        })
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

    /// The first bearer token in the configured headers.
    pub fn bearer_token<'r>(&self, request: &Request<'r>) -> Option<&'r str> {
        self.policy.token.headers.iter().find_map(|name| {
            let value = request.header(name)?;
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim())
                .filter(|t| !t.is_empty())
        })
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
            format!("alg {}, kid {:?}", decoded.alg, decoded.kid)
        });
        let alg: Option<Algorithm> = decoded.alg.parse().ok();
        let iss = decoded.issuer().ok_or(DenyReason::Malformed(
            crate::reason::Malformed::MissingIssuer,
        ))?;
        let Some(&issuer_index) = self.issuer_by_iss.get(iss) else {
            record(trace, "issuer", false, || {
                format!("`{iss}` is not a configured issuer")
            });
            return Err(DenyReason::UnknownIssuer {
                iss: iss.chars().take(256).collect(),
            });
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
            record(trace, "algorithm", false, || {
                format!("`{}` not in {:?}", decoded.alg, issuer.algorithms)
            });
            return Err(DenyReason::AlgorithmNotAllowed {
                alg: decoded.alg.chars().take(32).collect(),
            });
        };
        record(trace, "algorithm", true, || format!("{alg} is allowed"));
        // Fetched keys win; inline keys serve alone, or until the first fetch lands.
        let inline = self.inline_keys.get(issuer_index).filter(|k| !k.is_empty());
        let fetched = issuer
            .remote_jwks
            .as_ref()
            .and_then(|_| remote.get(issuer_index));
        let Some(keys) = fetched.or(inline) else {
            record(trace, "key", false, || {
                "remote key set not fetched yet".to_owned()
            });
            return Err(DenyReason::KeysUnavailable {
                issuer: issuer.name.clone(),
            });
        };
        token::verify_with_issuer(&decoded, alg, issuer, keys, now, trace)?;
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
        let decoded = token::DecodedToken {
            raw: "",
            alg: String::new(),
            kid: None,
            claims,
        };
        let iss = decoded.issuer().ok_or(DenyReason::Malformed(
            crate::reason::Malformed::MissingIssuer,
        ))?;
        let (issuer_index, issuer) = self
            .issuer_by_iss
            .get(iss)
            .and_then(|&i| Some((i, self.policy.issuers.get(i)?)))
            .ok_or_else(|| DenyReason::UnknownIssuer {
                iss: iss.to_owned(),
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
            if let Some(&id) = self.role_ids.get(role) {
                if let Some(word) = role_bits.get_mut((id / 64) as usize) {
                    *word |= 1u64 << (id % 64);
                }
            }
        }
        let overage = issuer
            .role_claims
            .iter()
            .find(|path| {
                path.lookup(claims).is_none()
                    && claims
                        .get("_claim_names")
                        .and_then(|names| names.as_object())
                        .is_some_and(|names| names.contains_key(path.first()))
            })
            .map(|path| path.first().to_owned());
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
        }
    }

    /// Decides without a cache: every token is verified.
    pub fn decide(
        &self,
        request: &Request<'_>,
        now: u64,
        remote: &RemoteKeys,
        trace: Trace<'_>,
    ) -> Decision {
        self.decide_with(request, trace, &mut |raw, trace| {
            self.authenticate(raw, now, remote, trace).map(Rc::new)
        })
    }

    fn candidates(&self, path: &str) -> &[u32] {
        self.index
            .get(matcher::first_segment(path))
            .unwrap_or(&self.unindexed)
    }

    /// Decides, authenticating through `authenticate` (which may use a cache).
    pub fn decide_with(
        &self,
        request: &Request<'_>,
        mut trace: Trace<'_>,
        authenticate: &mut Authenticator<'_>,
    ) -> Decision {
        let audit_policy = self.policy.mode == Mode::Audit;
        let mut decision = Decision {
            allowed: false,
            reason: None,
            enforced: !audit_policy,
            rule: None,
            matched_rules: Vec::new(),
            identity: None,
            captures: Vec::new(),
            checks: Vec::new(),
        };
        let path = matcher::strip_query(request.path);
        if matcher::is_unnormalized(path) {
            record(&mut trace, "path", false, || {
                format!("`{path}` is not normalised")
            });
            return self.finish(decision, Err(DenyReason::UnnormalizedPath), None, trace);
        }
        let host = matcher::normalize_host(request.host);
        let matched: Vec<Matched> = self
            .candidates(path)
            .iter()
            .filter_map(|&rule| {
                let compiled = self.policy.rules.get(rule as usize)?;
                let captures =
                    matcher::rule_matches(compiled, request.method, &host, path, |name| {
                        request.header(name)
                    })?;
                Some(Matched { rule, captures })
            })
            .collect();
        if trace.is_some() {
            // Rule names are only for explanations: not collected on the filter's hot path.
            decision.matched_rules = matched
                .iter()
                .filter_map(|m| self.rule_name(m.rule))
                .collect();
            record(&mut trace, "match", !matched.is_empty(), || {
                format!(
                    "{} {host} {path}: {} candidate rule(s), matched {:?}",
                    request.method,
                    self.candidates(path).len(),
                    decision.matched_rules
                )
            });
        }

        if matched.is_empty() {
            return match self.policy.default {
                DefaultAction::Allow => self.finish(decision, Ok(()), None, trace),
                DefaultAction::Deny => {
                    self.finish(decision, Err(DenyReason::NoRuleMatched), None, trace)
                }
            };
        }
        let rule = |m: &Matched| self.policy.rules.get(m.rule as usize);
        let is_deny = |m: &&Matched| rule(m).is_some_and(|r| r.effect == Effect::Deny);
        let is_anyone = |m: &&Matched| rule(m).is_some_and(|r| r.principal == Principal::Anyone);

        if let Some(deny) = matched.iter().filter(is_deny).find(is_anyone) {
            let name = self.rule_name(deny.rule).unwrap_or_default();
            return self.finish(
                decision,
                Err(DenyReason::ExplicitDeny { rule: name }),
                Some(deny),
                trace,
            );
        }
        let public = matched.iter().filter(|m| !is_deny(m)).find(is_anyone);
        let conditional_denies: Vec<&Matched> = matched.iter().filter(is_deny).collect();
        let token = self.bearer_token(request);
        if let Some(public) = public {
            // Public rule: no token needed. A token is only looked at when a conditional deny
            // rule could apply to it.
            if conditional_denies.is_empty() || token.is_none() {
                return self.finish(decision, Ok(()), Some(public), trace);
            }
        }
        let Some(token) = token else {
            record(&mut trace, "token", false, || {
                "no bearer token in the request".to_owned()
            });
            let decider = matched.first();
            return self.finish_all(decision, Err(DenyReason::NoToken), decider, &matched, trace);
        };
        let identity = match authenticate(token, &mut trace) {
            Ok(identity) => identity,
            Err(reason) => {
                if let Some(public) = public {
                    record(&mut trace, "token", false, || {
                        format!("{reason}; public rule applies")
                    });
                    return self.finish(decision, Ok(()), Some(public), trace);
                }
                let decider = matched.first();
                return self.finish_all(decision, Err(reason), decider, &matched, trace);
            }
        };
        decision.identity = Some(identity.clone());
        if let Some(what) = self.revoked(&identity) {
            record(&mut trace, "revocation", false, || {
                format!("{what} is on the revocation list")
            });
            return self.finish_all(
                decision,
                Err(DenyReason::Revoked { what }),
                matched.first(),
                &matched,
                trace,
            );
        }
        record(&mut trace, "revocation", true, || "not revoked".to_owned());

        for deny in &conditional_denies {
            if let Some(Principal::Authenticated(requirement)) = rule(deny).map(|r| &r.principal) {
                if self.check_requirement(deny, requirement, &identity).is_ok() {
                    let name = self.rule_name(deny.rule).unwrap_or_default();
                    record(&mut trace, "deny rule", false, || {
                        format!("`{name}` names this caller")
                    });
                    return self.finish(
                        decision,
                        Err(DenyReason::ExplicitDeny { rule: name }),
                        Some(deny),
                        trace,
                    );
                }
            }
        }
        if let Some(public) = public {
            return self.finish(decision, Ok(()), Some(public), trace);
        }
        let mut first_failure: Option<(&Matched, DenyReason)> = None;
        for allow in matched.iter().filter(|m| !is_deny(m)) {
            let Some(Principal::Authenticated(requirement)) = rule(allow).map(|r| &r.principal)
            else {
                continue;
            };
            match self.check_requirement(allow, requirement, &identity) {
                Ok(()) => {
                    let name = self.rule_name(allow.rule).unwrap_or_default();
                    record(&mut trace, "rule", true, || {
                        format!("`{name}` is satisfied")
                    });
                    return self.finish(decision, Ok(()), Some(allow), trace);
                }
                Err(reason) => {
                    record(&mut trace, "rule", false, || reason.to_string());
                    if first_failure.is_none() {
                        first_failure = Some((allow, reason));
                    }
                }
            }
        }
        let (decider, reason) = match first_failure {
            Some((decider, reason)) => (Some(decider), reason),
            // Only conditional deny rules matched, and none applied: nothing allows.
            None => (None, DenyReason::NoRuleMatched),
        };
        self.finish_all(decision, Err(reason), decider, &matched, trace)
    }

    fn rule_name(&self, index: u32) -> Option<String> {
        self.policy
            .rules
            .get(index as usize)
            .map(|r| r.name.clone())
    }

    fn revoked(&self, identity: &Identity) -> Option<&'static str> {
        if !identity.subject.is_empty()
            && self
                .revoked_subjects
                .get(&identity.issuer_index)
                .is_some_and(|subjects| subjects.contains(&identity.subject))
        {
            return Some("subject");
        }
        identity
            .token_id
            .as_ref()
            .filter(|jti| self.revoked_token_ids.contains(*jti))
            .map(|_| "token_id")
    }

    fn role_held(&self, role: &RoleRef, identity: &Identity, captures: &Captures) -> bool {
        match role {
            RoleRef::Interned(index) => identity.has_interned(*index),
            RoleRef::Template(parts) => identity.has_role(&fill_template(parts, captures)),
        }
    }

    fn role_label(&self, role: &RoleRef, captures: &Captures) -> String {
        match role {
            RoleRef::Interned(index) => self
                .policy
                .roles
                .get(*index as usize)
                .cloned()
                .unwrap_or_default(),
            RoleRef::Template(parts) => fill_template(parts, captures),
        }
    }

    fn check_requirement(
        &self,
        matched: &Matched,
        requirement: &Requirement,
        identity: &Identity,
    ) -> Result<(), DenyReason> {
        // The rule name is only needed to explain a failure: no allocation on success.
        let rule = || self.rule_name(matched.rule).unwrap_or_default();
        if !requirement.issuers.is_empty()
            && !requirement
                .issuers
                .iter()
                .any(|&i| i as usize == identity.issuer_index)
        {
            return Err(DenyReason::IssuerNotAllowed {
                rule: rule(),
                issuer: identity.issuer.clone(),
            });
        }
        if !requirement.subjects.is_empty()
            && !requirement.subjects.iter().any(|scoped| {
                scoped.issuer as usize == identity.issuer_index
                    && scoped.subject == identity.subject
            })
        {
            return Err(DenyReason::SubjectNotAllowed { rule: rule() });
        }
        let captures = &matched.captures;
        let roles_ok = (requirement.roles_any.is_empty()
            || requirement
                .roles_any
                .iter()
                .any(|r| self.role_held(r, identity, captures)))
            && requirement
                .roles_all
                .iter()
                .all(|r| self.role_held(r, identity, captures));
        if !roles_ok {
            if let Some(claim) = &identity.overage {
                return Err(DenyReason::GroupsOverage {
                    rule: rule(),
                    claim: claim.clone(),
                });
            }
            let all = requirement.roles_any.is_empty();
            let wanted = if all {
                &requirement.roles_all
            } else {
                &requirement.roles_any
            };
            return Err(DenyReason::MissingRole {
                rule: rule(),
                required: wanted
                    .iter()
                    .map(|r| self.role_label(r, captures))
                    .collect(),
                all,
            });
        }
        if !requirement.scopes_any.is_empty()
            && !requirement.scopes_any.iter().any(|s| identity.has_scope(s))
        {
            return Err(DenyReason::MissingScope {
                rule: rule(),
                required: requirement.scopes_any.clone(),
                all: false,
            });
        }
        if !requirement.scopes_all.iter().all(|s| identity.has_scope(s)) {
            return Err(DenyReason::MissingScope {
                rule: rule(),
                required: requirement.scopes_all.clone(),
                all: true,
            });
        }
        Ok(())
    }

    /// Completes a decision decided by one rule (or none).
    fn finish(
        &self,
        decision: Decision,
        outcome: Result<(), DenyReason>,
        decider: Option<&Matched>,
        trace: Trace<'_>,
    ) -> Decision {
        let audit_rule = decider
            .and_then(|m| self.policy.rules.get(m.rule as usize))
            .is_some_and(|r| r.audit);
        self.complete(decision, outcome, decider, audit_rule, trace)
    }

    /// Completes a denial that no single rule caused: audit only if every matched rule is.
    fn finish_all(
        &self,
        decision: Decision,
        outcome: Result<(), DenyReason>,
        decider: Option<&Matched>,
        matched: &[Matched],
        trace: Trace<'_>,
    ) -> Decision {
        let all_audit = !matched.is_empty()
            && matched.iter().all(|m| {
                self.policy
                    .rules
                    .get(m.rule as usize)
                    .is_some_and(|r| r.audit)
            });
        self.complete(decision, outcome, decider, all_audit, trace)
    }

    fn complete(
        &self,
        mut decision: Decision,
        outcome: Result<(), DenyReason>,
        decider: Option<&Matched>,
        audit_rule: bool,
        trace: Trace<'_>,
    ) -> Decision {
        decision.rule = decider.and_then(|m| self.rule_name(m.rule));
        decision.captures = decider.map(|m| m.captures.clone()).unwrap_or_default();
        decision.enforced = self.policy.mode == Mode::Enforce && !audit_rule;
        match outcome {
            Ok(()) => decision.allowed = true,
            Err(reason) => decision.reason = Some(reason),
        }
        if let Some(trace) = trace {
            decision.checks = std::mem::take(trace);
        }
        decision
    }
}

fn fill_template(parts: &[TemplatePart], captures: &Captures) -> String {
    let mut out = String::new();
    for part in parts {
        match part {
            TemplatePart::Text(text) => out.push_str(text),
            TemplatePart::Var(var) => {
                if let Some((_, value)) = captures.iter().find(|(name, _)| name == var) {
                    out.push_str(value);
                }
            }
        }
    }
    out
}
