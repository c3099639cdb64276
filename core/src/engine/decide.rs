//! Evaluation as data, combined once.
//!
//! Every rule the path index selects and the request matches is evaluated to a
//! [`Standing`]: it applies, it does not apply, or it cannot be decided (indeterminate, e.g.
//! an Entra groups overage, or a token that fails verification where a deny rule could name
//! its bearer). One combine step then decides: a deny rule that applies **or is
//! indeterminate** denies; otherwise an allow rule that applies allows; otherwise, if any
//! allow rule matched, the request is denied for the most telling reason (authentication
//! first, then the first unmet requirement); if only deny rules matched, the policy default
//! decides, exactly as when nothing matched. Rule order never matters.
//!
//! Audit is a second, shadow evaluation: the enforced decision is computed from the
//! enforcing rules alone; when an audit rule matched, the same combine over every matched
//! rule is computed and only reported ([`Decision::shadow`]). An audit rule can therefore
//! never turn a deny into a pass, nor a pass into a deny.

use std::borrow::Cow;
use std::rc::Rc;

use serde::Serialize;

use super::{Authenticator, Decision, Engine, Identity, RemoteKeys, Request};
use crate::canonical;
use crate::compiled::{
    ClaimCondition, CompiledRule, CorsPreflight, DefaultAction, Effect, IdentityHeader, Mode,
    Principal, Requirement, RoleRef, TemplatePart, VerifyMode,
};
use crate::matcher::{self, Captures};
use crate::reason::DenyReason;
use crate::token::{Trace, record};
use crate::upstream;

/// What the decision would have been with the audit rules enforcing: logged, never enforced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shadow {
    /// Whether every matched rule, audit ones included, allows the request.
    pub allowed: bool,
    /// Why not.
    pub reason: Option<DenyReason>,
    /// The deciding rule.
    pub rule: Option<String>,
}

/// A matched rule and the path variables it captured.
struct Matched {
    rule: u32,
    captures: Captures,
}

/// How one matched rule stands towards the request.
#[derive(Debug)]
enum Standing {
    /// An allow rule is satisfied; a deny rule names the caller.
    Applies,
    /// The rule's conditions do not hold; for an allow rule, why.
    DoesNotApply(Option<DenyReason>),
    /// The rule cannot be decided: deny rules count it as applying, allow rules as not.
    Indeterminate(DenyReason),
}

/// The caller, authenticated at most once per decision and only when a rule needs it.
enum Caller {
    NotYetAsked,
    NoToken,
    Failed(DenyReason),
    Verified(Rc<Identity>),
}

/// The outcome of one combine step over a set of matched rules.
struct Combined<'m> {
    outcome: Result<(), DenyReason>,
    decider: Option<&'m Matched>,
}

/// The state one decision needs while rules are evaluated.
struct Evaluation<'e, 'r, 'a, 't> {
    engine: &'e Engine,
    token: Result<Option<Cow<'r, str>>, DenyReason>,
    caller: Caller,
    authenticate: &'e mut Authenticator<'a>,
    trace: Trace<'t>,
    /// A CORS preflight the policy lets through (`cors_preflight = "allow"`): only deny
    /// rules naming everyone are evaluated, and no token is asked for.
    cors_preflight_passes: bool,
}

impl Evaluation<'_, '_, '_, '_> {
    /// The caller, authenticating on first use (revocation is part of authentication).
    fn caller(&mut self) -> &Caller {
        if matches!(self.caller, Caller::NotYetAsked) {
            self.caller = match self.token.clone() {
                Err(reason) => Caller::Failed(reason),
                Ok(None) => {
                    record(&mut self.trace, "token", false, || {
                        "no bearer token in the request".to_owned()
                    });
                    Caller::NoToken
                }
                Ok(Some(token)) => match (self.authenticate)(&token, &mut self.trace) {
                    Err(reason) => Caller::Failed(reason),
                    Ok(identity) => match self.engine.revoked(&identity) {
                        Some(what) => {
                            record(&mut self.trace, "revocation", false, || {
                                format!("{what} is on the revocation list")
                            });
                            Caller::Failed(DenyReason::Revoked { what })
                        }
                        None => {
                            record(&mut self.trace, "revocation", true, || {
                                "not revoked".to_owned()
                            });
                            Caller::Verified(identity)
                        }
                    },
                },
            };
        }
        &self.caller
    }

    /// Why the token the request carries fails verification; `None` without a token or with
    /// a valid one.
    fn invalid_present_token(&mut self) -> Option<DenyReason> {
        if matches!(self.token, Ok(None)) {
            return None;
        }
        match self.caller() {
            Caller::Failed(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// `unauthenticated`: applies to a request without a token. An allow rule does not look
    /// further at a token that is there; a deny rule counts a token that fails verification
    /// as possibly absent (indeterminate: it denies), a verified one as not named.
    fn unauthenticated_standing(&mut self, rule: &CompiledRule) -> Standing {
        if matches!(self.token, Ok(None)) {
            return Standing::Applies;
        }
        if rule.effect == Effect::Allow {
            return Standing::DoesNotApply(Some(DenyReason::TokenPresent {
                rule: rule.name.clone(),
            }));
        }
        match self.caller() {
            Caller::Verified(_) => Standing::DoesNotApply(None),
            Caller::Failed(reason) => Standing::Indeterminate(reason.clone()),
            Caller::NoToken | Caller::NotYetAsked => Standing::Applies,
        }
    }

    fn standing(&mut self, matched: &Matched, rule: &CompiledRule) -> Standing {
        let requirement = match &rule.principal {
            Principal::Anyone => return Standing::Applies,
            Principal::Unauthenticated => return self.unauthenticated_standing(rule),
            Principal::Authenticated(requirement) => requirement,
        };
        let engine = self.engine;
        let deny = rule.effect == Effect::Deny;
        match self.caller() {
            // Without a token nobody is named: a deny rule cannot apply.
            Caller::NoToken if deny => Standing::DoesNotApply(None),
            Caller::NoToken => Standing::DoesNotApply(Some(DenyReason::NoToken)),
            // A token that fails verification could belong to the caller a deny rule names.
            Caller::Failed(reason) if deny => Standing::Indeterminate(reason.clone()),
            Caller::Failed(reason) => Standing::DoesNotApply(Some(reason.clone())),
            Caller::NotYetAsked => Standing::Indeterminate(DenyReason::NoToken),
            Caller::Verified(identity) => {
                match engine.check_requirement(matched, requirement, identity) {
                    Ok(()) => Standing::Applies,
                    Err(reason @ DenyReason::GroupsOverage { .. }) => {
                        Standing::Indeterminate(reason)
                    }
                    Err(reason) => Standing::DoesNotApply(Some(reason)),
                }
            }
        }
    }

    /// The one combine step over the matched rules `counts` selects (the enforcing ones, or
    /// all of them for the audit shadow). Iterates the matches a few times instead of
    /// collecting partitions: the common request matches one or two rules.
    fn combine<'m>(
        &mut self,
        matched: &'m [Matched],
        counts: impl Fn(&CompiledRule) -> bool,
        label: &'static str,
    ) -> Combined<'m> {
        let engine = self.engine;
        let rules = || {
            matched.iter().filter_map(|m| {
                let rule = engine.policy.rules.get(m.rule as usize)?;
                counts(rule).then_some((m, rule))
            })
        };
        let default = Combined {
            outcome: match engine.policy.default {
                DefaultAction::Allow => Ok(()),
                DefaultAction::Deny => Err(DenyReason::NoRuleMatched),
            },
            decider: None,
        };
        let is_deny = |rule: &CompiledRule| rule.effect == Effect::Deny;
        let is_anyone = |rule: &CompiledRule| rule.principal == Principal::Anyone;
        // A present token is verified before any rule decides when one matched rule says
        // `when_present` (or none matched and the policy does): an invalid token is then the
        // answer, whatever `anyone`, the `allow` default or a deny rule would have said.
        let policy_mode = engine.policy.token.verify;
        let mode = |rule: &CompiledRule| rule.verify_token.unwrap_or(policy_mode);
        let verifier = rules().find(|(_, r)| mode(r) == VerifyMode::WhenPresent);
        let verify_first = verifier.is_some()
            || (rules().next().is_none() && policy_mode == VerifyMode::WhenPresent);
        if verify_first && let Some(reason) = self.invalid_present_token() {
            record(&mut self.trace, label, false, || {
                format!(
                    "the request carries a token that fails verification ({reason}): refused before any rule"
                )
            });
            return Combined {
                outcome: Err(reason),
                decider: verifier.map(|(m, _)| m),
            };
        }
        // Deny rules first; unconditional ones need no token at all, so they go first.
        let preflight = self.cors_preflight_passes;
        let denies = rules()
            .filter(|(_, r)| is_deny(r) && is_anyone(r))
            .chain(rules().filter(|(_, r)| !preflight && is_deny(r) && !is_anyone(r)));
        let mut indeterminate_deny: Option<(&Matched, DenyReason)> = None;
        for (deny, rule) in denies {
            match self.standing(deny, rule) {
                Standing::Applies => {
                    record(&mut self.trace, label, false, || {
                        format!("deny rule `{}` names this caller", rule.name)
                    });
                    // A deny of `unauthenticated` asks for a token: it answers as a
                    // missing token does (401, or 403 with Istio statuses).
                    let outcome = if rule.principal == Principal::Unauthenticated {
                        DenyReason::NoToken
                    } else {
                        DenyReason::ExplicitDeny {
                            rule: rule.name.clone(),
                        }
                    };
                    return Combined {
                        outcome: Err(outcome),
                        decider: Some(deny),
                    };
                }
                Standing::Indeterminate(reason) => {
                    record(&mut self.trace, label, false, || {
                        format!(
                            "deny rule `{}` cannot be decided ({reason}): it counts as applying",
                            rule.name
                        )
                    });
                    indeterminate_deny.get_or_insert((deny, reason));
                }
                Standing::DoesNotApply(_) => record(&mut self.trace, label, true, || {
                    format!("deny rule `{}` does not name this caller", rule.name)
                }),
            }
        }
        if let Some((deny, reason)) = indeterminate_deny {
            return Combined {
                outcome: Err(reason),
                decider: Some(deny),
            };
        }
        if preflight {
            record(&mut self.trace, label, true, || {
                "CORS preflight passes without a token (cors_preflight = \"allow\")".to_owned()
            });
            return Combined {
                outcome: Ok(()),
                decider: None,
            };
        }
        // Only deny rules matched (or none) and none applies: as if nothing had matched.
        if !rules().any(|(_, r)| !is_deny(r)) {
            return default;
        }
        // Public rules first: they need no token.
        if let Some((public, rule)) = rules().find(|(_, r)| !is_deny(r) && is_anyone(r)) {
            record(&mut self.trace, label, true, || {
                format!("rule `{}` lets anyone through", rule.name)
            });
            return Combined {
                outcome: Ok(()),
                decider: Some(public),
            };
        }
        let mut refusal: Option<(&Matched, DenyReason)> = None;
        for (allow, rule) in rules().filter(|(_, r)| !is_deny(r)) {
            match self.standing(allow, rule) {
                Standing::Applies => {
                    record(&mut self.trace, label, true, || {
                        format!("rule `{}` is satisfied", rule.name)
                    });
                    return Combined {
                        outcome: Ok(()),
                        decider: Some(allow),
                    };
                }
                Standing::DoesNotApply(reason) => {
                    let reason = reason.unwrap_or(DenyReason::NoRuleMatched);
                    record(&mut self.trace, label, false, || reason.to_string());
                    refusal = more_telling(refusal, allow, reason);
                }
                Standing::Indeterminate(reason) => {
                    record(&mut self.trace, label, false, || {
                        format!("rule `{}` cannot be decided: {reason}", rule.name)
                    });
                    refusal = more_telling(refusal, allow, reason);
                }
            }
        }
        let (decider, reason) = match refusal {
            Some((decider, reason)) => (Some(decider), reason),
            None => (None, DenyReason::NoRuleMatched),
        };
        Combined {
            outcome: Err(reason),
            decider,
        }
    }
}

/// Keeps the refusal that tells the caller most: an authentication failure (the caller must
/// fix the token first) over an authorization one; otherwise the first in rule order.
fn more_telling<'m>(
    kept: Option<(&'m Matched, DenyReason)>,
    candidate: &'m Matched,
    reason: DenyReason,
) -> Option<(&'m Matched, DenyReason)> {
    let authentication = |r: &DenyReason| r.response().status != 403;
    match kept {
        Some((m, kept)) if authentication(&kept) || !authentication(&reason) => Some((m, kept)),
        _ => Some((candidate, reason)),
    }
}

impl Engine {
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

    /// Decides, authenticating through `authenticate` (which may use a cache).
    pub fn decide_with(
        &self,
        request: &Request<'_>,
        mut trace: Trace<'_>,
        authenticate: &mut Authenticator<'_>,
    ) -> Decision {
        let mut decision = Decision {
            statuses: self.policy.statuses,
            allowed: false,
            reason: None,
            enforced: self.policy.mode == Mode::Enforce,
            rule: None,
            matched_rules: Vec::new(),
            identity: None,
            captures: Vec::new(),
            shadow: None,
            checks: Vec::new(),
        };
        let prepared = canonical::canonical_path(request.path, self.policy.path_parameters)
            .inspect_err(|reason| {
                record(&mut trace, "path", false, || {
                    format!("`{}`: {reason}", canonical::strip_query(request.path))
                })
            })
            .and_then(|path| {
                let host = canonical::canonical_host(request.host).inspect_err(|reason| {
                    record(&mut trace, "host", false, || {
                        format!("`{}`: {reason}", request.host)
                    })
                })?;
                Ok((path, host))
            });
        let (path, host): (Cow<'_, str>, Cow<'_, str>) = match prepared {
            Ok(prepared) => prepared,
            Err(reason) => {
                decision.reason = Some(reason);
                if let Some(trace) = trace {
                    decision.checks = std::mem::take(trace);
                }
                return decision;
            }
        };
        let names = &self.header_names;
        let candidates = self.rule_index.candidates(&path);
        let matched: Vec<Matched> = candidates
            .iter()
            .filter_map(|&rule| {
                let compiled = self.policy.rules.get(rule as usize)?;
                let captures =
                    matcher::rule_matches(compiled, request.method, &host, &path, request, names)?;
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
                    candidates.len(),
                    decision.matched_rules
                )
            });
        }
        let mut evaluation = Evaluation {
            engine: self,
            token: self.bearer_token(request),
            caller: Caller::NotYetAsked,
            authenticate,
            trace,
            cors_preflight_passes: self.policy.cors_preflight == CorsPreflight::Allow
                && matcher::is_cors_preflight(request),
        };
        let enforced = evaluation.combine(&matched, |rule| !rule.audit, "rule");
        // Only the enforcing rules' verification of the caller reaches the upstream.
        let identity = match &evaluation.caller {
            Caller::Verified(identity) => Some(identity.clone()),
            _ => None,
        };
        let audit_matched = matched.iter().any(|m| {
            self.policy
                .rules
                .get(m.rule as usize)
                .is_some_and(|r| r.audit)
        });
        let shadow = audit_matched.then(|| {
            let shadow = evaluation.combine(&matched, |_| true, "audit rule");
            Shadow {
                allowed: shadow.outcome.is_ok(),
                reason: shadow.outcome.err(),
                rule: shadow.decider.and_then(|m| self.rule_name(m.rule)),
            }
        });
        decision.identity = identity;
        decision.rule = enforced.decider.and_then(|m| self.rule_name(m.rule));
        decision.captures = enforced
            .decider
            .map(|m| m.captures.clone())
            .unwrap_or_default();
        match enforced.outcome {
            Ok(()) => decision.allowed = true,
            Err(reason) => decision.reason = Some(reason),
        }
        decision.shadow = shadow;
        if let Some(trace) = evaluation.trace {
            decision.checks = std::mem::take(trace);
        }
        decision
    }

    /// The identity headers the filter sets on a request that passes with a verified caller,
    /// values encoded so that no proxy refuses them and no reader splits them (see
    /// [`crate::upstream`]). Empty unless the request is allowed with a verified caller.
    pub fn upstream_headers<'d>(&'d self, decision: &'d Decision) -> Vec<(&'d str, Cow<'d, str>)> {
        // Only an allowed request: in audit mode a denied request passes too, and the
        // upstream must not read "allowed by rule X" into it.
        let Some(identity) = decision.identity.as_deref().filter(|_| decision.allowed) else {
            return Vec::new();
        };
        let mut headers = Vec::with_capacity(8);
        for &header in &self.policy.token.identity_headers {
            let value = match header {
                IdentityHeader::Subject => upstream::encode_value(&identity.subject),
                IdentityHeader::Issuer => upstream::encode_value(&identity.issuer),
                IdentityHeader::Client => match &identity.client {
                    Some(client) => upstream::encode_value(client),
                    None => continue,
                },
                IdentityHeader::Roles => Cow::Owned(upstream::encode_list(&identity.roles)),
                IdentityHeader::Rule => {
                    upstream::encode_value(decision.rule.as_deref().unwrap_or(""))
                }
                IdentityHeader::PolicyVersion => Cow::Borrowed(self.digest()),
            };
            headers.push((self.header_names.name_of(header), value));
        }
        headers.extend(self.claim_headers(identity));
        headers
    }

    /// Which of a passing request's headers the filter removes before it goes upstream, in
    /// request order: every header under the identity prefix or named as a claim header (the
    /// client's copies: rules never see them), and with `forward = false` every spelling of
    /// the headers the token may come in (`x_token` is read as `x-token`, so it goes too). A
    /// token cookie is cut out of `cookie` rather than removed, and a query token stays in
    /// the path (see the filter). A denied request goes nowhere.
    pub fn removed_upstream<'h>(&self, names: impl IntoIterator<Item = &'h [u8]>) -> Vec<&'h [u8]> {
        names
            .into_iter()
            .filter(|name| {
                self.header_names.owns_bytes(name)
                    || (!self.policy.token.forward_token && self.reads_token_from(name))
            })
            .collect()
    }

    fn rule_name(&self, index: u32) -> Option<String> {
        self.policy
            .rules
            .get(index as usize)
            .map(|r| r.name.clone())
    }

    pub(super) fn revoked(&self, identity: &Identity) -> Option<&'static str> {
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
        if requirement
            .not_issuers
            .contains(&(identity.issuer_index as u32))
        {
            return Err(DenyReason::IssuerNotAllowed {
                rule: rule(),
                issuer: identity.issuer.clone(),
            });
        }
        if requirement.not_subjects.iter().any(|scoped| {
            scoped.issuer as usize == identity.issuer_index && scoped.subject == identity.subject
        }) {
            return Err(DenyReason::SubjectNotAllowed { rule: rule() });
        }
        let claim_label = |condition: &ClaimCondition| {
            self.policy
                .claims
                .get(condition.claim as usize)
                .map(ToString::to_string)
                .unwrap_or_default()
        };
        let any_value_matches = |condition: &ClaimCondition| {
            identity
                .claim_values
                .get(condition.claim as usize)
                .is_some_and(|values| {
                    values
                        .iter()
                        .any(|v| condition.patterns.iter().any(|p| p.matches_claim(v)))
                })
        };
        if let Some(condition) = requirement.claims.iter().find(|c| !any_value_matches(c)) {
            return Err(DenyReason::ClaimNotAllowed {
                rule: rule(),
                claim: claim_label(condition),
                excluded: false,
            });
        }
        if let Some(condition) = requirement.not_claims.iter().find(|c| any_value_matches(c)) {
            return Err(DenyReason::ClaimNotAllowed {
                rule: rule(),
                claim: claim_label(condition),
                excluded: true,
            });
        }
        // Scopes first: a requirement they already rule out is decided, whatever the
        // groups a token overflowed would have said.
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
            // The roles the token would have named are not in it: undecidable, not absent.
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
        Ok(())
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
