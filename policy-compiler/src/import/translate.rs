//! Istio semantics → claimgate rules, never wider.
//!
//! Istio decides (pilot `authz/builder`, `authz/model`): CUSTOM first, then any matching DENY
//! denies, then — if the workload has any ALLOW policy — only a matching ALLOW lets a
//! request through; with no ALLOW policy everything not denied passes. Within a rule, `from`,
//! `to` and `when` are ANDed; entries of `from` and `to` are alternatives; the fields inside
//! one entry are ANDed, the values of a field ORed, `not…` fields exclude any of their values.
//!
//! Principals are kept in disjunctive form: a list of [`Term`]s, any of which lets a rule
//! apply; each alternative becomes one claimgate rule (claimgate's rules are alternatives
//! too). What claimgate cannot express is handled so that access only ever gets narrower:
//! - in an ALLOW rule, an untranslatable value of a positive list is left out (fewer
//!   requests match); an untranslatable `not…` value, condition, or a list left empty drops
//!   the alternative (or the whole rule);
//! - in a DENY rule (and CUSTOM, translated as a deny of what it would send to the external
//!   authorizer), an untranslatable positive field or condition is dropped (the deny covers
//!   more), an untranslatable `not…` value is left out (fewer exclusions).
//!
//! Every such step is a [`Finding`].

use std::collections::{BTreeMap, BTreeSet};

use super::istio::{self, Action};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Informational: the output means what the input meant (or claimgate is stricter by a
    /// documented default).
    Note,
    /// Something was not translated exactly; the output is narrower (never wider).
    Loss,
    /// The output matches more requests than the input where claimgate's model cannot say
    /// Istio's (e.g. a host with a port); always reported, never silent.
    Wider,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How serious.
    pub severity: Severity,
    /// Where: resource and field, e.g. `AuthorizationPolicy foo/bar rules[0].when[1]`.
    pub place: String,
    /// What happened and why.
    pub message: String,
}

/// Rule effect in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// `allow = …`.
    Allow,
    /// `deny = …`.
    Deny,
}

/// A principal table (`allow = { … }`): every present field must hold; a verified token is
/// always needed.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Table {
    /// Issuer names (keys of `[issuers]`); `None`: any issuer.
    pub issuers: Option<BTreeSet<String>>,
    /// Exact subjects, any of.
    pub subjects: BTreeSet<String>,
    /// Excluded exact subjects.
    pub not_subjects: BTreeSet<String>,
    /// Claim path → value patterns, each claim any of its patterns.
    pub claims: BTreeMap<String, BTreeSet<String>>,
    /// Claim path → excluded value patterns.
    pub not_claims: BTreeMap<String, BTreeSet<String>>,
}

/// One alternative of a principal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Term {
    /// Anyone, token or not.
    Anyone,
    /// Requests without a token.
    Unauthenticated,
    /// A verified caller meeting the table (an empty table: any verified caller).
    Verified(Table),
}

/// Why two terms could not be combined into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Combined {
    /// One term holding exactly when both do.
    Term(Term),
    /// No request satisfies both.
    Never,
    /// Both name the same claim with different patterns: one claimgate table cannot say it.
    Conflict(String),
}

// === impl Term ===

impl Term {
    /// The term that holds when both hold.
    pub fn and(&self, other: &Term) -> Combined {
        match (self, other) {
            (Term::Anyone, x) | (x, Term::Anyone) => Combined::Term(x.clone()),
            (Term::Unauthenticated, Term::Unauthenticated) => Combined::Term(Term::Unauthenticated),
            (Term::Unauthenticated, Term::Verified(_))
            | (Term::Verified(_), Term::Unauthenticated) => Combined::Never,
            (Term::Verified(a), Term::Verified(b)) => a.and(b),
        }
    }
}

// === impl Table ===

impl Table {
    fn and(&self, other: &Table) -> Combined {
        let issuers = match (&self.issuers, &other.issuers) {
            (None, x) | (x, None) => x.clone(),
            (Some(a), Some(b)) => Some(a.intersection(b).cloned().collect()),
        };
        if issuers.as_ref().is_some_and(BTreeSet::is_empty) {
            return Combined::Never;
        }
        let subjects = match (self.subjects.is_empty(), other.subjects.is_empty()) {
            (true, _) => other.subjects.clone(),
            (_, true) => self.subjects.clone(),
            _ => {
                let both: BTreeSet<String> = self
                    .subjects
                    .intersection(&other.subjects)
                    .cloned()
                    .collect();
                if both.is_empty() {
                    return Combined::Never;
                }
                both
            }
        };
        let mut claims = self.claims.clone();
        for (path, patterns) in &other.claims {
            match claims.get(path) {
                Some(existing) if existing != patterns => {
                    return Combined::Conflict(path.clone());
                }
                _ => {
                    claims.insert(path.clone(), patterns.clone());
                }
            }
        }
        let mut not_claims = self.not_claims.clone();
        for (path, patterns) in &other.not_claims {
            not_claims
                .entry(path.clone())
                .or_default()
                .extend(patterns.iter().cloned());
        }
        Combined::Term(Term::Verified(Table {
            issuers,
            subjects,
            not_subjects: self
                .not_subjects
                .union(&other.not_subjects)
                .cloned()
                .collect(),
            claims,
            not_claims,
        }))
    }
}

/// A header condition value list: every listed header must match one of its patterns.
pub type HeaderConditions = BTreeMap<String, BTreeSet<String>>;

/// The request side of one rule (one `to.operation`, plus `when` header conditions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMatch {
    /// `hosts` (empty: any).
    pub hosts: Vec<String>,
    /// `not_hosts`.
    pub not_hosts: Vec<String>,
    /// `methods` (empty: any).
    pub methods: Vec<String>,
    /// `not_methods`.
    pub not_methods: Vec<String>,
    /// `paths` (empty: any).
    pub paths: Vec<String>,
    /// `not_paths`.
    pub not_paths: Vec<String>,
    /// `headers`.
    pub headers: HeaderConditions,
    /// `not_headers`.
    pub not_headers: HeaderConditions,
}

/// One output rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRule {
    /// Unique name.
    pub name: String,
    /// Where it came from (one line, for a comment).
    pub origin: String,
    /// allow or deny.
    pub effect: Effect,
    /// What requests it matches.
    pub request: RequestMatch,
    /// Whom it applies to.
    pub principal: Term,
}

/// One output issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutIssuer {
    /// Key in `[issuers]`.
    pub key: String,
    /// Where it came from.
    pub origin: String,
    /// `iss`.
    pub issuer: String,
    /// Accepted audiences (empty: not checked, as Istio).
    pub audiences: Vec<String>,
    /// Remote key set.
    pub jwks_uri: Option<String>,
    /// Inline key set.
    pub jwks_inline: Option<String>,
    /// Key set fetch timeout.
    pub timeout: Option<String>,
    /// Header locations (name, prefix).
    pub from_headers: Vec<istio::JwtHeader>,
    /// Query parameters.
    pub from_params: Vec<String>,
    /// Cookies.
    pub from_cookies: Vec<String>,
    /// header → claim.
    pub claims_to_headers: Vec<(String, String)>,
    /// Payload header.
    pub payload_to_header: Option<String>,
}

/// Everything the translation produced.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    /// Issuers.
    pub issuers: Vec<OutIssuer>,
    /// Rules.
    pub rules: Vec<OutRule>,
    /// Whether any ALLOW policy exists (then requests no allow rule admits are denied).
    pub default_deny: bool,
    /// `[token] forward`.
    pub forward: bool,
    /// The report.
    pub findings: Vec<Finding>,
}

/// One parsed input resource.
#[derive(Debug, Clone)]
pub enum Resource {
    /// A RequestAuthentication.
    RequestAuthentication {
        /// `namespace/name`.
        id: String,
        /// Where it applies.
        target: String,
        /// Its spec.
        spec: istio::RequestAuthenticationSpec,
    },
    /// An AuthorizationPolicy.
    AuthorizationPolicy {
        /// `namespace/name`.
        id: String,
        /// Where it applies.
        target: String,
        /// Its spec.
        spec: istio::AuthorizationPolicySpec,
    },
}

/// The algorithms imported issuers accept: every asymmetric algorithm claimgate verifies.
/// Istio takes whatever its key set allows (HMAC too); claimgate needs an explicit list and
/// never accepts HMAC against a published key set.
pub const ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

struct Translator {
    out: Translation,
    /// Issuer string → issuer key, for principals.
    issuer_keys: BTreeMap<String, String>,
    /// Claims Istio splits on spaces for some issuer (`spaceDelimitedClaims`).
    space_delimited: BTreeSet<String>,
    used_names: BTreeSet<String>,
}

/// Translates the resources (in input order).
pub fn translate(resources: &[Resource]) -> Translation {
    let mut t = Translator {
        out: Translation {
            forward: true,
            ..Translation::default()
        },
        issuer_keys: BTreeMap::new(),
        space_delimited: BTreeSet::new(),
        used_names: BTreeSet::new(),
    };
    check_targets(&mut t, resources);
    let mut forwards = BTreeSet::new();
    for resource in resources {
        if let Resource::RequestAuthentication { id, spec, .. } = resource {
            for (index, rule) in spec.jwt_rules.iter().enumerate() {
                forwards.insert(rule.forward_original_token);
                t.jwt_rule(
                    &format!("RequestAuthentication {id} jwtRules[{index}]"),
                    rule,
                );
            }
        }
    }
    if t.out.issuers.is_empty() {
        t.loss(
            "input",
            "no RequestAuthentication issuer: Istio then ignores every token, while claimgate still reads a bearer token in `Authorization` and, finding no issuer for it, refuses it (401 unknown_issuer); requests without a token are decided alike".to_owned(),
        );
    }
    t.out.forward = forwards.iter().all(|f| *f);
    if forwards.len() > 1 {
        t.note(
            "input",
            "jwtRules disagree on forwardOriginalToken: claimgate forwards or removes the token for the whole policy; it is removed (forward = false)".to_owned(),
        );
    }
    for resource in resources {
        if let Resource::AuthorizationPolicy { id, spec, .. } = resource {
            t.policy(id, spec);
        }
    }
    t.out
}

/// Reports resources that do not all apply to one workload. A resource without selector or
/// targetRefs applies to every workload of its namespace (of the whole mesh in the root
/// namespace, taken to be `istio-system`), so it combines with one workload's resources;
/// two different workload targets, or namespace-wide resources of another namespace, do not.
fn check_targets(t: &mut Translator, resources: &[Resource]) {
    let mut specific: BTreeSet<&str> = BTreeSet::new();
    let mut namespaces: BTreeSet<&str> = BTreeSet::new();
    for resource in resources {
        let (Resource::RequestAuthentication { target, .. }
        | Resource::AuthorizationPolicy { target, .. }) = resource;
        match target.strip_suffix(WHOLE_NAMESPACE) {
            Some(ns) => {
                if ns != ROOT_NAMESPACE {
                    namespaces.insert(ns);
                }
            }
            None => {
                specific.insert(target.as_str());
                if let Some(ns) = target.split(' ').next() {
                    namespaces.insert(ns);
                }
            }
        }
    }
    if specific.len() > 1 || namespaces.len() > 1 {
        let mut all: Vec<&str> = resources
            .iter()
            .map(|r| {
                let (Resource::RequestAuthentication { target, .. }
                | Resource::AuthorizationPolicy { target, .. }) = r;
                target.as_str()
            })
            .collect();
        all.sort_unstable();
        all.dedup();
        t.loss(
            "input",
            format!(
                "the resources do not all apply to one workload ({}); the output is one policy for one workload and applies all of them to it (which can be wider for a workload some of them do not select): import each workload's resources separately",
                all.join("; ")
            ),
        );
    }
}

/// The suffix of a target that applies to a whole namespace.
pub const WHOLE_NAMESPACE: &str = " (every workload)";
/// Istio's default root namespace: resources there without a selector apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// The one-line form of untrusted text for a report or a comment.
fn shown(text: &str) -> String {
    crate::terminal_safe(text).into_owned()
}

// === impl Translator ===

impl Translator {
    fn loss(&mut self, place: &str, message: String) {
        self.out.findings.push(Finding {
            severity: Severity::Loss,
            place: place.to_owned(),
            message,
        });
    }

    fn wider(&mut self, place: &str, message: String) {
        self.out.findings.push(Finding {
            severity: Severity::Wider,
            place: place.to_owned(),
            message,
        });
    }

    fn note(&mut self, place: &str, message: String) {
        self.out.findings.push(Finding {
            severity: Severity::Note,
            place: place.to_owned(),
            message,
        });
    }

    fn issuer_key(&self, issuer: &str) -> String {
        let mut base: String = issuer
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        base = base
            .split('-')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        if base.is_empty() {
            base = "issuer".to_owned();
        }
        let base: String = base.chars().take(48).collect();
        let taken: BTreeSet<&str> = self.out.issuers.iter().map(|i| i.key.as_str()).collect();
        if !taken.contains(base.as_str()) {
            return base;
        }
        (2..)
            .map(|n| format!("{base}-{n}"))
            .find(|k| !taken.contains(k.as_str()))
            .unwrap_or(base)
    }

    fn jwt_rule(&mut self, place: &str, rule: &istio::JwtRule) {
        if rule.issuer.is_empty() {
            self.loss(
                place,
                "no issuer: Istio refuses such a rule; left out".to_owned(),
            );
            return;
        }
        let uri = rule
            .jwks_uri
            .clone()
            .or_else(|| rule.jwks_uri_snake.clone());
        if uri.is_none() && rule.jwks.is_none() {
            self.loss(
                place,
                format!(
                    "issuer `{}` has neither jwksUri nor jwks: Istio would discover the key set through OpenID discovery, claimgate needs it named; the issuer is left out, so its tokens are refused (401) — add `jwksUri`",
                    shown(&rule.issuer)
                ),
            );
            return;
        }
        if let Some(existing) = self.issuer_keys.get(&rule.issuer) {
            let existing = existing.clone();
            let same = self.out.issuers.iter().any(|i| {
                i.key == existing
                    && i.audiences == rule.audiences
                    && i.jwks_uri == uri
                    && i.jwks_inline == rule.jwks
            });
            if same {
                self.note(
                    place,
                    format!(
                        "issuer `{}` appears again with the same keys and audiences: merged with `{existing}`",
                        shown(&rule.issuer)
                    ),
                );
            } else {
                self.loss(
                    place,
                    format!(
                        "issuer `{}` appears again with other keys or audiences: claimgate has one entry per issuer; this one is left out (tokens it alone would accept are refused)",
                        shown(&rule.issuer)
                    ),
                );
            }
            return;
        }
        if !rule.space_delimited_claims.is_empty() {
            self.note(
                place,
                format!(
                    "spaceDelimitedClaims {:?}: claimgate does not split these claims on spaces; conditions on them are treated as untranslatable",
                    rule.space_delimited_claims
                ),
            );
            self.space_delimited
                .extend(rule.space_delimited_claims.iter().cloned());
        }
        let (from_headers, from_params) = if rule.from_headers.is_empty()
            && rule.from_params.is_empty()
            && rule.from_cookies.is_empty()
        {
            // Envoy's jwt_authn default locations when a provider names none.
            (
                vec![istio::JwtHeader {
                    name: "authorization".to_owned(),
                    prefix: "Bearer ".to_owned(),
                }],
                vec!["access_token".to_owned()],
            )
        } else {
            (
                rule.from_headers
                    .iter()
                    .map(|h| istio::JwtHeader {
                        name: h.name.to_ascii_lowercase(),
                        prefix: h.prefix.clone(),
                    })
                    .collect(),
                rule.from_params.clone(),
            )
        };
        let key = self.issuer_key(&rule.issuer);
        self.issuer_keys.insert(rule.issuer.clone(), key.clone());
        self.out.issuers.push(OutIssuer {
            key,
            origin: place.to_owned(),
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            jwks_uri: if rule.jwks.is_some() { None } else { uri },
            jwks_inline: rule.jwks.clone(),
            timeout: rule.timeout.clone(),
            from_headers,
            from_params,
            from_cookies: rule.from_cookies.clone(),
            claims_to_headers: rule
                .output_claim_to_headers
                .iter()
                .map(|c| (c.header.to_ascii_lowercase(), c.claim.clone()))
                .collect(),
            payload_to_header: rule
                .output_payload_to_header
                .as_ref()
                .map(|h| h.to_ascii_lowercase()),
        });
    }

    fn policy(&mut self, id: &str, spec: &istio::AuthorizationPolicySpec) {
        let place = format!("AuthorizationPolicy {id}");
        let effect = match spec.action {
            Action::Allow => {
                // Any ALLOW policy, even one with no rules (or none translatable), makes
                // every request it does not admit a deny.
                self.out.default_deny = true;
                Effect::Allow
            }
            Action::Deny => Effect::Deny,
            Action::Audit => {
                if !spec.rules.is_empty() {
                    self.note(
                        &place,
                        "AUDIT policy: it only marks requests for an audit log and never changes a decision; not translated".to_owned(),
                    );
                }
                return;
            }
            Action::Custom => {
                if spec.rules.is_empty() {
                    return;
                }
                self.loss(
                    &place,
                    format!(
                        "CUSTOM policy (provider `{}`): an external authorizer decides the requests it selects, and claimgate cannot call it; translated as a DENY of every request it selects (never wider, usually narrower)",
                        shown(spec.provider.as_ref().and_then(|p| p.name.as_deref()).unwrap_or("-"))
                    ),
                );
                Effect::Deny
            }
        };
        if spec.rules.is_empty() && effect == Effect::Allow {
            self.note(
                &place,
                "ALLOW policy without rules: it admits nothing, so every request no other ALLOW rule admits is denied".to_owned(),
            );
        }
        let action = match spec.action {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        };
        for (index, rule) in spec.rules.iter().enumerate() {
            let rule_place = format!("{place} rules[{index}]");
            let origin = format!("{place} ({action}) rules[{index}]");
            self.rule(&rule_place, &origin, id, index, effect, rule);
        }
    }

    fn unique_name(&mut self, base: &str) -> String {
        let mut name = base.to_owned();
        let mut n = 2;
        while self.used_names.contains(&name) {
            name = format!("{base}.{n}");
            n += 1;
        }
        self.used_names.insert(name.clone());
        name
    }

    fn rule(
        &mut self,
        place: &str,
        origin: &str,
        id: &str,
        index: usize,
        effect: Effect,
        rule: &istio::Rule,
    ) {
        let allow = effect == Effect::Allow;
        // Principal alternatives from `from` (any entry).
        let mut principals: Vec<(Term, String)> = Vec::new();
        if rule.from.is_empty() {
            principals.push((Term::Anyone, String::new()));
        }
        for (i, from) in rule.from.iter().enumerate() {
            let from_place = format!("{place}.from[{i}]");
            let source = from.source.clone().unwrap_or_default();
            if let Some(terms) = self.source(&from_place, effect, &source) {
                principals.extend(terms.into_iter().map(|t| (t, format!(" from[{i}]"))));
            }
        }
        // Request alternatives from `to` (any entry).
        let mut requests: Vec<(RequestMatch, String)> = Vec::new();
        if rule.to.is_empty() {
            requests.push((RequestMatch::default(), String::new()));
        }
        for (i, to) in rule.to.iter().enumerate() {
            let to_place = format!("{place}.to[{i}]");
            let operation = to.operation.clone().unwrap_or_default();
            if let Some(request) = self.operation(&to_place, effect, &operation) {
                requests.push((request, format!(" to[{i}]")));
            }
        }
        // `when`: every condition.
        for (i, condition) in rule.when.iter().enumerate() {
            let when_place = format!("{place}.when[{i}]");
            match self.condition(&when_place, effect, condition) {
                Cond::Dropped => {}
                Cond::Never => {
                    self.note(
                        &when_place,
                        "with this condition the rule never matches (or was left out, see above): the rule is left out".to_owned(),
                    );
                    return;
                }
                Cond::Principal(terms) => {
                    let mut next = Vec::new();
                    for (term, label) in &principals {
                        for other in &terms {
                            match term.and(other) {
                                Combined::Term(t) => next.push((t, label.clone())),
                                Combined::Never => {}
                                Combined::Conflict(path) => {
                                    if allow {
                                        self.loss(&when_place, format!("claim `{path}` is constrained twice with different values; claimgate keeps one list per claim: this alternative is left out (ALLOW: narrower)"));
                                    } else {
                                        self.loss(&when_place, format!("claim `{path}` is constrained twice with different values; claimgate keeps one list per claim: this condition is dropped (DENY: broader)"));
                                        next.push((term.clone(), label.clone()));
                                    }
                                }
                            }
                        }
                    }
                    principals = next;
                }
                Cond::Header {
                    name,
                    values,
                    negated,
                } => {
                    let mut kept = Vec::new();
                    for (mut request, label) in requests {
                        let map = if negated {
                            &mut request.not_headers
                        } else {
                            &mut request.headers
                        };
                        match map.get_mut(&name) {
                            Some(existing) if negated => {
                                existing.extend(values.iter().cloned());
                            }
                            Some(existing) if *existing != values => {
                                if allow {
                                    self.loss(&when_place, format!("header `{name}` is constrained twice with different values; claimgate keeps one list per header: this alternative is left out (ALLOW: narrower)"));
                                    continue;
                                }
                                self.loss(&when_place, format!("header `{name}` is constrained twice with different values; claimgate keeps one list per header: this condition is dropped (DENY: broader)"));
                            }
                            Some(_) => {}
                            None => {
                                map.insert(name.clone(), values.clone());
                            }
                        }
                        kept.push((request, label));
                    }
                    requests = kept;
                }
            }
        }
        principals.sort();
        principals.dedup();
        if principals.is_empty() || requests.is_empty() {
            if allow {
                self.note(
                    place,
                    "no alternative of this rule can match after translation: it is left out"
                        .to_owned(),
                );
            } else {
                self.note(place, "this rule can never match: left out".to_owned());
            }
            return;
        }
        let single = principals.len() * requests.len() == 1;
        for (request, to_label) in &requests {
            for (term, from_label) in &principals {
                let base = if single {
                    format!("{id}[{index}]")
                } else {
                    format!("{id}[{index}]{from_label}{to_label}")
                        .replace(' ', ".")
                        .replace("..", ".")
                };
                let name = self.unique_name(&base);
                self.out.rules.push(OutRule {
                    name,
                    origin: format!("{origin}{from_label}{to_label}"),
                    effect,
                    request: request.clone(),
                    principal: term.clone(),
                });
            }
        }
    }

    /// The principal alternatives of one `source`, or `None` when it can never match (or,
    /// in an ALLOW rule, could not be translated).
    fn source(&mut self, place: &str, effect: Effect, source: &istio::Source) -> Option<Vec<Term>> {
        let allow = effect == Effect::Allow;
        for (field, _negative, values) in source.peer_fields() {
            if values.is_empty() {
                continue;
            }
            let why = "claimgate sees HTTP requests and JWTs, not the peer's mTLS identity, namespace or address";
            if allow {
                self.loss(
                    &format!("{place}.source.{field}"),
                    format!("{why}: this source is left out (ALLOW: narrower)"),
                );
                return None;
            }
            self.loss(
                &format!("{place}.source.{field}"),
                format!("{why}: the condition is dropped (DENY: broader)"),
            );
        }
        let mut terms = vec![Term::Anyone];
        if !source.request_principals.is_empty() {
            let field = format!("{place}.source.requestPrincipals");
            let positive = self.principals(&field, effect, &source.request_principals, false)?;
            terms = and_all(&terms, &positive);
        }
        if !source.not_request_principals.is_empty() {
            let field = format!("{place}.source.notRequestPrincipals");
            let negative = self.principals(&field, effect, &source.not_request_principals, true)?;
            terms = and_all(&terms, &negative);
        }
        (!terms.is_empty()).then_some(terms)
    }

    /// Terms for a `requestPrincipals`-style list (or, `negated`, a `notRequestPrincipals`).
    /// `None`: the field makes the alternative unmatchable or untranslatable in an ALLOW.
    fn principals(
        &mut self,
        place: &str,
        effect: Effect,
        values: &[String],
        negated: bool,
    ) -> Option<Vec<Term>> {
        let allow = effect == Effect::Allow;
        // Per known issuer: the subject conditions the values put on its tokens.
        let mut per_issuer: BTreeMap<String, SubjectSet> = BTreeMap::new();
        let mut untranslatable = Vec::new();
        for value in values {
            let (iss, sub) = principal_pattern(value);
            for (issuer, key) in &self.issuer_keys {
                if !iss.matches(issuer) {
                    continue;
                }
                let set = per_issuer.entry(key.clone()).or_default();
                match &sub {
                    StringPattern::Exact(s) if s.is_empty() => {
                        untranslatable.push(value.clone());
                    }
                    StringPattern::Exact(s) => {
                        set.exact.insert(s.clone());
                    }
                    other => match other.claimgate() {
                        Some(pattern) => {
                            set.patterns.insert(pattern);
                        }
                        None => untranslatable.push(value.clone()),
                    },
                }
            }
        }
        if !untranslatable.is_empty() {
            let list = untranslatable
                .iter()
                .map(|v| shown(v))
                .collect::<Vec<_>>()
                .join("`, `");
            let why = format!(
                "principal(s) `{list}`: a subject pattern with `*` inside or an empty subject cannot be written in claimgate"
            );
            match (allow, negated) {
                (true, true) => {
                    self.loss(
                        place,
                        format!("{why}: this alternative is left out (ALLOW: narrower)"),
                    );
                    return None;
                }
                (true, false) => self.loss(place, format!("{why}: left out (ALLOW: narrower)")),
                (false, true) => self.loss(
                    place,
                    format!("{why}: the exclusion is left out (DENY: broader)"),
                ),
                (false, false) => {
                    self.loss(
                        place,
                        format!("{why}: the condition is dropped (DENY: broader)"),
                    );
                    return Some(vec![Term::Anyone]);
                }
            }
            // Remove what could not be translated from the sets (they were recorded only
            // where translatable, so nothing to undo).
        }
        if self.issuer_keys.is_empty() {
            self.note(
                place,
                "no RequestAuthentication declares an issuer: no request has a verified principal"
                    .to_owned(),
            );
        }
        let mut terms = Vec::new();
        if negated {
            // Tokenless requests have no principal, so none of the excluded ones.
            terms.push(Term::Unauthenticated);
            for key in self.issuer_keys.values() {
                let set = per_issuer.get(key).cloned().unwrap_or_default();
                let mut table = Table {
                    issuers: Some(BTreeSet::from([key.clone()])),
                    not_subjects: set.exact,
                    ..Table::default()
                };
                if !set.patterns.is_empty() {
                    table.not_claims.insert("sub".to_owned(), set.patterns);
                }
                terms.push(Term::Verified(table));
            }
        } else {
            for (key, set) in per_issuer {
                let issuers = Some(BTreeSet::from([key.clone()]));
                if !set.exact.is_empty() {
                    terms.push(Term::Verified(Table {
                        issuers: issuers.clone(),
                        subjects: set.exact,
                        ..Table::default()
                    }));
                }
                if !set.patterns.is_empty() {
                    terms.push(Term::Verified(Table {
                        issuers,
                        claims: BTreeMap::from([("sub".to_owned(), set.patterns)]),
                        ..Table::default()
                    }));
                }
            }
            if terms.is_empty() {
                // No known issuer's tokens can match: the field never holds (exactly as in
                // Istio, where such a token is not verified).
                return None;
            }
        }
        Some(terms)
    }

    fn operation(
        &mut self,
        place: &str,
        effect: Effect,
        op: &istio::Operation,
    ) -> Option<RequestMatch> {
        let request = RequestMatch {
            hosts: self.field(place, "hosts", effect, false, &op.hosts, host_pattern)?,
            not_hosts: self.field(place, "notHosts", effect, true, &op.not_hosts, host_pattern)?,
            methods: self.field(place, "methods", effect, false, &op.methods, method)?,
            not_methods: self.field(place, "notMethods", effect, true, &op.not_methods, method)?,
            paths: self.field(place, "paths", effect, false, &op.paths, path_pattern)?,
            not_paths: self.field(place, "notPaths", effect, true, &op.not_paths, path_pattern)?,
            ..RequestMatch::default()
        };
        // Istio compares the whole `:authority` (`example.com` never matches
        // `example.com:8080`); claimgate matches the host without its port. That is wider for
        // an ALLOW's hosts and a DENY's exclusions: say so.
        let (field, values) = match effect {
            Effect::Allow => ("hosts", &op.hosts),
            Effect::Deny => ("notHosts", &op.not_hosts),
        };
        let port_blind: Vec<&String> = values
            .iter()
            .filter(|h| !h.ends_with('*') && !h.contains(':'))
            .collect();
        if !port_blind.is_empty() && request.hosts.len() + request.not_hosts.len() > 0 {
            let hosts: Vec<String> = port_blind
                .iter()
                .map(|h| format!("`{}`", shown(h)))
                .collect();
            self.wider(
                &format!("{place}.operation.{field}"),
                format!(
                    "{}: claimgate also matches these hosts with any port (`HOST:PORT`), Istio only without one; add the port forms to the input if a port is ever sent, or narrow the rule",
                    hosts.join(", ")
                ),
            );
        }
        let no_port = |_: &str| Err("claimgate does not see the destination port".to_owned());
        self.field(place, "ports", effect, false, &op.ports, no_port)?;
        self.field(place, "notPorts", effect, true, &op.not_ports, no_port)?;
        Some(request)
    }

    /// Translates the values of one list field under the never-wider rules. `None`: the
    /// alternative is left out. An empty result: the field is unconstrained.
    fn field(
        &mut self,
        place: &str,
        name: &str,
        effect: Effect,
        negative: bool,
        values: &[String],
        translate: impl Fn(&str) -> Result<String, String>,
    ) -> Option<Vec<String>> {
        let mut kept = Vec::new();
        let mut failed = Vec::new();
        for value in values {
            match translate(value) {
                Ok(v) => {
                    if !kept.contains(&v) {
                        kept.push(v);
                    }
                }
                Err(why) => failed.push(format!("`{}`: {why}", shown(value))),
            }
        }
        if failed.is_empty() {
            return Some(kept);
        }
        let at = format!("{place}.operation.{name}");
        let why = failed.join("; ");
        match (effect, negative) {
            (Effect::Allow, false) if !kept.is_empty() => {
                self.loss(
                    &at,
                    format!("{why}: left out of the list (ALLOW: narrower)"),
                );
                Some(kept)
            }
            (Effect::Allow, _) => {
                self.loss(
                    &at,
                    format!("{why}: this alternative is left out (ALLOW: narrower)"),
                );
                None
            }
            (Effect::Deny, false) => {
                self.loss(&at, format!("{why}: the field is dropped (DENY: broader)"));
                Some(Vec::new())
            }
            (Effect::Deny, true) => {
                self.loss(
                    &at,
                    format!("{why}: left out of the exclusions (DENY: broader)"),
                );
                Some(kept)
            }
        }
    }

    fn condition(&mut self, place: &str, effect: Effect, c: &istio::Condition) -> Cond {
        let allow = effect == Effect::Allow;
        let untranslatable = |me: &mut Self, why: String| {
            if allow {
                me.loss(
                    place,
                    format!(
                        "`{}`: {why}: the rule is left out (ALLOW: narrower)",
                        shown(&c.key)
                    ),
                );
                Cond::Never
            } else {
                me.loss(
                    place,
                    format!(
                        "`{}`: {why}: the condition is dropped (DENY: broader)",
                        shown(&c.key)
                    ),
                );
                Cond::Dropped
            }
        };
        if c.values.is_empty() && c.not_values.is_empty() {
            return untranslatable(
                self,
                "neither values nor notValues (Istio refuses it)".to_owned(),
            );
        }
        let key = c.key.as_str();
        if key == "request.auth.principal" {
            let mut terms = vec![Term::Anyone];
            if !c.values.is_empty() {
                match self.principals(place, effect, &c.values, false) {
                    Some(t) => terms = and_all(&terms, &t),
                    None => return Cond::Never,
                }
            }
            if !c.not_values.is_empty() {
                match self.principals(place, effect, &c.not_values, true) {
                    Some(t) => terms = and_all(&terms, &t),
                    None => return Cond::Never,
                }
            }
            return Cond::Principal(terms);
        }
        let claim = if key == "request.auth.audiences" {
            Some("aud".to_owned())
        } else if key == "request.auth.presenter" {
            Some("azp".to_owned())
        } else if let Some(rest) = key.strip_prefix("request.auth.claims") {
            match claim_path(rest) {
                Ok(path) => Some(path),
                Err(why) => return untranslatable(self, why),
            }
        } else {
            None
        };
        if let Some(path) = claim {
            let first = path.split('.').next().unwrap_or_default().trim_matches('"');
            if self.space_delimited.contains(first) || self.space_delimited.contains(&path) {
                return untranslatable(
                    self,
                    "the claim is in spaceDelimitedClaims, which claimgate does not split"
                        .to_owned(),
                );
            }
            let pos = patterns(&c.values);
            let neg = patterns(&c.not_values);
            let (pos, neg) = match (pos, neg) {
                (Ok(p), Ok(n)) => (p, n),
                (Err(why), _) | (_, Err(why)) => return untranslatable(self, why),
            };
            let mut table = Table::default();
            if !pos.is_empty() {
                table.claims.insert(path.clone(), pos);
            }
            let mut terms = vec![];
            if !neg.is_empty() {
                table.not_claims.insert(path, neg);
                if c.values.is_empty() {
                    // Without a token there is no claim, so none of the excluded values.
                    terms.push(Term::Unauthenticated);
                }
            }
            terms.push(Term::Verified(table));
            return Cond::Principal(terms);
        }
        if let Some(rest) = key.strip_prefix("request.headers") {
            let name = match bracketed(rest) {
                Some(n) if !n.is_empty() => n.to_ascii_lowercase(),
                _ => {
                    return untranslatable(
                        self,
                        "not a header key `request.headers[NAME]`".to_owned(),
                    );
                }
            };
            if name.starts_with(':') || name == "host" {
                return untranslatable(
                    self,
                    "pseudo-headers and `host` are matched through hosts/methods/paths in claimgate, not as headers".to_owned(),
                );
            }
            if !c.values.is_empty() && !c.not_values.is_empty() {
                // Two conditions on one header: only when a rule has both lists.
                return untranslatable(
                    self,
                    "values and notValues on one header: claimgate keeps one list per header"
                        .to_owned(),
                );
            }
            let negated = c.values.is_empty();
            let list = if negated { &c.not_values } else { &c.values };
            return match patterns(list) {
                Ok(values) => Cond::Header {
                    name,
                    values,
                    negated,
                },
                Err(why) => untranslatable(self, why),
            };
        }
        let why = match key {
            k if k.starts_with("source.") || k == "remote.ip" => {
                "claimgate does not see the peer's address or mTLS identity"
            }
            k if k.starts_with("destination.") => {
                "claimgate does not see the destination address or port"
            }
            "connection.sni" => "claimgate does not see the TLS server name",
            k if k.starts_with("experimental.") => {
                "experimental Envoy metadata is not visible to claimgate"
            }
            _ => "not a key Istio knows",
        };
        untranslatable(self, why.to_owned())
    }
}

/// What one `when` condition became.
enum Cond {
    /// Dropped (DENY: broader), already reported.
    Dropped,
    /// The rule can never match (or, ALLOW, could not be translated), already reported.
    Never,
    /// Principal alternatives to AND with the rule's.
    Principal(Vec<Term>),
    /// A header condition.
    Header {
        name: String,
        values: BTreeSet<String>,
        negated: bool,
    },
}

#[derive(Debug, Clone, Default)]
struct SubjectSet {
    exact: BTreeSet<String>,
    patterns: BTreeSet<String>,
}

fn and_all(a: &[Term], b: &[Term]) -> Vec<Term> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if let Combined::Term(t) = x.and(y)
                && !out.contains(&t)
            {
                out.push(t);
            }
        }
    }
    out
}

/// Istio's string match (`matcher.StringMatcher`): `*` any non-empty value, `*x` suffix,
/// `x*` prefix, anything else exact (a `*` elsewhere is a literal character).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringPattern {
    /// Any non-empty value.
    Any,
    /// Exactly.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
}

impl StringPattern {
    /// Istio's reading of a value.
    pub fn parse(value: &str) -> StringPattern {
        if value == "*" {
            StringPattern::Any
        } else if let Some(rest) = value.strip_prefix('*') {
            StringPattern::Suffix(rest.to_owned())
        } else if let Some(rest) = value.strip_suffix('*') {
            StringPattern::Prefix(rest.to_owned())
        } else {
            StringPattern::Exact(value.to_owned())
        }
    }

    fn matches(&self, text: &str) -> bool {
        match self {
            StringPattern::Any => !text.is_empty(),
            StringPattern::Exact(s) => text == s,
            StringPattern::Prefix(p) => text.starts_with(p.as_str()),
            StringPattern::Suffix(s) => text.ends_with(s.as_str()),
        }
    }

    /// The claimgate value pattern, if one says the same (a literal `*` inside cannot).
    fn claimgate(&self) -> Option<String> {
        match self {
            StringPattern::Any => Some("*".to_owned()),
            StringPattern::Exact(s) if !s.contains('*') && !s.is_empty() => Some(s.clone()),
            StringPattern::Prefix(p) if !p.contains('*') && !p.is_empty() => Some(format!("{p}*")),
            StringPattern::Suffix(s) if !s.contains('*') && !s.is_empty() => Some(format!("*{s}")),
            _ => None,
        }
    }
}

/// A `requestPrincipals` value as Istio (pilot `authz/model/generator.go`) reads it: split at
/// the last `/` into issuer and subject; `*` alone: any issuer and any subject; a leading `*`
/// makes the issuer (with a `/`) or the subject (without) a suffix match, `*` as the whole
/// issuer part any issuer; a trailing `*` makes the subject (with a `/`) or the issuer
/// (without) a prefix match, `*` as the whole subject any subject. Without `/` and without
/// `*` the issuer is the value and the subject empty.
pub fn principal_pattern(value: &str) -> (StringPattern, StringPattern) {
    let split = value.rfind('/').map(|i| {
        let (iss, sub) = value.split_at(i);
        (iss.to_owned(), sub.get(1..).unwrap_or_default().to_owned())
    });
    if value == "*" {
        return (StringPattern::Any, StringPattern::Any);
    }
    if let Some(rest) = value.strip_prefix('*') {
        return match split {
            Some((iss, sub)) => {
                let iss = if iss == "*" {
                    StringPattern::Any
                } else {
                    StringPattern::Suffix(iss.get(1..).unwrap_or_default().to_owned())
                };
                (iss, StringPattern::Exact(sub))
            }
            None => (StringPattern::Any, StringPattern::Suffix(rest.to_owned())),
        };
    }
    if let Some(rest) = value.strip_suffix('*') {
        return match split {
            Some((iss, sub)) => {
                let sub = if sub == "*" {
                    StringPattern::Any
                } else {
                    StringPattern::Prefix(sub.strip_suffix('*').unwrap_or(&sub).to_owned())
                };
                (StringPattern::Exact(iss), sub)
            }
            None => (StringPattern::Prefix(rest.to_owned()), StringPattern::Any),
        };
    }
    match split {
        Some((iss, sub)) => (StringPattern::Exact(iss), StringPattern::Exact(sub)),
        None => (
            StringPattern::Exact(value.to_owned()),
            StringPattern::Exact(String::new()),
        ),
    }
}

/// Value patterns for headers and claims, in claimgate's syntax.
fn patterns(values: &[String]) -> Result<BTreeSet<String>, String> {
    values
        .iter()
        .map(|v| {
            StringPattern::parse(v).claimgate().ok_or_else(|| {
                format!(
                    "value `{}` has a `*` inside or is empty, which claimgate cannot match",
                    shown(v)
                )
            })
        })
        .collect()
}

/// `[a][b]` → the claimgate claim path `a.b` (segments with `.` or `"` quoted).
fn claim_path(brackets: &str) -> Result<String, String> {
    let mut segments = Vec::new();
    let mut rest = brackets;
    while !rest.is_empty() {
        let inner = rest
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .ok_or_else(|| "not of the form `request.auth.claims[NAME][NESTED]`".to_owned())?;
        let (name, after) = inner;
        if name.is_empty() || name.contains('"') {
            return Err(format!(
                "claim name `{}` cannot be written in claimgate",
                shown(name)
            ));
        }
        if name.contains('.') {
            segments.push(format!("\"{name}\""));
        } else {
            segments.push(name.to_owned());
        }
        rest = after;
    }
    if segments.is_empty() {
        return Err("no claim named".to_owned());
    }
    Ok(segments.join("."))
}

fn bracketed(text: &str) -> Option<&str> {
    text.strip_prefix('[')?.strip_suffix(']')
}

/// Istio host → claimgate host pattern.
fn host_pattern(value: &str) -> Result<String, String> {
    let lower = value.to_ascii_lowercase();
    match StringPattern::parse(&lower) {
        StringPattern::Any => Ok("*".to_owned()),
        StringPattern::Suffix(s) if s.starts_with('.') && !s.contains('*') && s.len() > 1 => {
            Ok(format!("*{s}"))
        }
        StringPattern::Prefix(p) if !p.contains('*') && !p.is_empty() && !p.contains(':') => {
            Ok(format!("{p}*"))
        }
        StringPattern::Exact(h) if !h.contains('*') && !h.contains(':') && !h.is_empty() => Ok(h),
        StringPattern::Exact(_) | StringPattern::Prefix(_) => {
            Err("a host with a port: claimgate matches the host without its port".to_owned())
        }
        StringPattern::Suffix(_) => Err(
            "a suffix that does not start at a label (`*.`) is not a claimgate host pattern"
                .to_owned(),
        ),
    }
}

fn method(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains('*') {
        return Err("claimgate methods are exact names".to_owned());
    }
    Ok(value.to_owned())
}

/// Istio path → claimgate path pattern: exact, `x*` prefix (`/x/*` when the prefix ends at a
/// `/`), `*x` suffix, `*`, and `{*}` templates.
fn path_pattern(value: &str) -> Result<String, String> {
    if value.contains("{**}") {
        return Err("`{**}` templates are not translated".to_owned());
    }
    if value.contains("{*}") {
        let mut n = 0;
        let mut segments = Vec::new();
        for segment in value.split('/') {
            if segment == "{*}" {
                n += 1;
                segments.push(format!("{{p{n}}}"));
            } else if segment.contains('{') || segment.contains('}') || segment.contains('*') {
                return Err("a template segment other than `{*}`".to_owned());
            } else {
                segments.push(segment.to_owned());
            }
        }
        return Ok(segments.join("/"));
    }
    match StringPattern::parse(value) {
        StringPattern::Any => Ok("*".to_owned()),
        StringPattern::Suffix(s) if !s.contains('*') && !s.is_empty() => Ok(format!("*{s}")),
        StringPattern::Prefix(p) if !p.contains('*') && p.starts_with('/') => Ok(format!("{p}*")),
        StringPattern::Exact(p) if !p.contains('*') && p.starts_with('/') => Ok(p),
        _ => Err(
            "not a path claimgate can match (paths start with `/`; `*` only at one end)".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pp(v: &str) -> (StringPattern, StringPattern) {
        principal_pattern(v)
    }

    #[test]
    fn request_principal_patterns_split_as_istio_does() {
        use StringPattern::*;
        assert_eq!(pp("*"), (Any, Any));
        assert_eq!(
            pp("https://a.example/realms/x/alice"),
            (
                Exact("https://a.example/realms/x".into()),
                Exact("alice".into())
            )
        );
        assert_eq!(pp("iss/*"), (Exact("iss".into()), Any));
        assert_eq!(pp("iss/al*"), (Exact("iss".into()), Prefix("al".into())));
        assert_eq!(pp("*/alice"), (Any, Exact("alice".into())));
        assert_eq!(
            pp("*.example/alice"),
            (Suffix(".example".into()), Exact("alice".into()))
        );
        assert_eq!(pp("*ice"), (Any, Suffix("ice".into())));
        assert_eq!(pp("iss*"), (Prefix("iss".into()), Any));
        assert_eq!(pp("iss"), (Exact("iss".into()), Exact(String::new())));
    }

    #[test]
    fn paths_map_to_claimgate_patterns() {
        assert_eq!(path_pattern("/a").unwrap(), "/a");
        assert_eq!(path_pattern("/a/*").unwrap(), "/a/*");
        assert_eq!(path_pattern("/a*").unwrap(), "/a*");
        assert_eq!(path_pattern("*.json").unwrap(), "*.json");
        assert_eq!(path_pattern("*").unwrap(), "*");
        assert_eq!(path_pattern("/m/{*}/x").unwrap(), "/m/{p1}/x");
        assert!(path_pattern("/m/{**}").is_err());
        assert!(path_pattern("/a*b").is_err());
        assert!(path_pattern("a").is_err());
    }

    #[test]
    fn hosts_map_or_are_refused() {
        assert_eq!(host_pattern("Example.COM").unwrap(), "example.com");
        assert_eq!(host_pattern("*.example.com").unwrap(), "*.example.com");
        assert_eq!(host_pattern("api.*").unwrap(), "api.*");
        assert_eq!(host_pattern("*").unwrap(), "*");
        assert!(host_pattern("example.com:8080").is_err());
        assert!(host_pattern("*example.com").is_err());
    }

    #[test]
    fn claim_keys_become_claim_paths() {
        assert_eq!(claim_path("[groups]").unwrap(), "groups");
        assert_eq!(
            claim_path("[realm_access][roles]").unwrap(),
            "realm_access.roles"
        );
        assert_eq!(claim_path("[a.b][c]").unwrap(), "\"a.b\".c");
        assert!(claim_path("").is_err());
        assert!(claim_path("[a").is_err());
        assert!(claim_path("[]").is_err());
    }

    #[test]
    fn terms_combine() {
        let i = |k: &str| Table {
            issuers: Some(BTreeSet::from([k.to_owned()])),
            ..Table::default()
        };
        assert_eq!(
            Term::Unauthenticated.and(&Term::Verified(Table::default())),
            Combined::Never
        );
        assert_eq!(
            Term::Verified(i("a")).and(&Term::Verified(i("b"))),
            Combined::Never
        );
        let mut c1 = Table::default();
        c1.claims
            .insert("g".into(), BTreeSet::from(["x".to_owned()]));
        let mut c2 = Table::default();
        c2.claims
            .insert("g".into(), BTreeSet::from(["y".to_owned()]));
        assert_eq!(
            Term::Verified(c1.clone()).and(&Term::Verified(c2)),
            Combined::Conflict("g".into())
        );
        assert_eq!(
            Term::Anyone.and(&Term::Verified(c1.clone())),
            Combined::Term(Term::Verified(c1))
        );
    }
}
