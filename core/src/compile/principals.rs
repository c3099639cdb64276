//! A rule's `allow` / `deny`: whom it names. Issuers by name, subjects scoped by issuer
//! (`sub` is unique per issuer only, RFC 7519 §4.1.2), roles interned or templated from
//! path variables, scopes.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use super::diagnostics::Context;
use super::rules::is_variable_name;
use super::rules::parse_value_pattern;
use super::suggest;
use crate::claims::ClaimPath;
use crate::compiled::{
    ClaimCondition, Effect, Principal, Requirement, RoleRef, ScopedSubject, TemplatePart,
    ValuePattern,
};
use crate::source::{PrincipalSource, RuleSource};

/// The rule's effect and principal; `None` after reporting why there is none.
pub(super) fn principal(
    cx: &mut Context<'_>,
    rule: &RuleSource,
    issuers: &HashMap<&str, u32>,
    variables: &BTreeSet<String>,
    intern: &mut dyn FnMut(&str) -> u32,
) -> Option<(Effect, Principal)> {
    let name = rule.name.get_ref();
    let (effect, value) = match (&rule.allow, &rule.deny) {
        (Some(allow), None) => (Effect::Allow, allow),
        (None, Some(deny)) => (Effect::Deny, deny),
        (Some(_), Some(deny)) => {
            cx.error(
                "allow_and_deny",
                &deny.span(),
                format!("rule `{name}` has both `allow` and `deny`"),
                "split it into two rules",
            );
            return None;
        }
        (None, None) => {
            cx.error(
                "no_principal",
                &rule.name.span(),
                format!("rule `{name}` has neither `allow` nor `deny`"),
                "add e.g. `allow = { roles_any = [\"ml-scorer\"] }` or `allow = \"anyone\"`",
            );
            return None;
        }
    };
    let span = value.span();
    let principal = match value.get_ref() {
        toml::Value::String(word) if word == "anyone" => Principal::Anyone,
        toml::Value::String(word) if word == "authenticated" => {
            Principal::Authenticated(Box::default())
        }
        toml::Value::String(word) if word == "unauthenticated" => Principal::Unauthenticated,
        toml::Value::String(word) => {
            cx.error(
                "bad_principal",
                &span,
                format!("`{word}` is not `anyone`, `authenticated`, `unauthenticated` or a table"),
                format!(
                    "{}write `\"anyone\"`, `\"authenticated\"`, `\"unauthenticated\"` or a table such as `{{ roles_any = [\"ml-scorer\"] }}`",
                    suggest::closest(word, ["anyone", "authenticated", "unauthenticated"])
                        .map(|w| format!("did you mean `\"{w}\"`? "))
                        .unwrap_or_default()
                ),
            );
            return None;
        }
        value => match value.clone().try_into::<PrincipalSource>() {
            Ok(table) => Principal::Authenticated(Box::new(requirement(
                cx, name, &span, table, issuers, variables, intern,
            )?)),
            Err(error) => {
                cx.error(
                    "bad_principal",
                    &span,
                    format!("rule `{name}`: {}", error.message()),
                    "fields: issuers, subjects, roles_any, roles_all, scopes_any, scopes_all, not_issuers, not_subjects, claims, not_claims",
                );
                return None;
            }
        },
    };
    Some((effect, principal))
}

fn parse_template(text: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let close = rest
            .get(open..)
            .and_then(|r| r.find('}'))
            .map(|c| c + open)
            .ok_or_else(|| format!("`{text}`: unbalanced braces"))?;
        let before = rest.get(..open).unwrap_or("");
        let var = rest.get(open + 1..close).unwrap_or("");
        if before.contains('}') || !is_variable_name(var) {
            return Err(format!("`{text}`: `{{{var}}}` is not a variable name"));
        }
        if !before.is_empty() {
            parts.push(TemplatePart::Text(before.to_owned()));
        }
        parts.push(TemplatePart::Var(var.to_owned()));
        rest = rest.get(close + 1..).unwrap_or("");
    }
    if rest.contains('}') {
        return Err(format!("`{text}`: unbalanced braces"));
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// Refuses a name that can only be a slip or an attack, one error per list:
/// - `""`: an empty role or scope would match an empty string in a token;
/// - a scope outside RFC 6749's scope-token characters (visible ASCII but `"` and `\\`): a
///   scope is echoed in the `WWW-Authenticate` header of a 403, where a quote or a line break
///   would forge header parameters;
/// - any name with a control character: names reach logs and `explain`, where it would forge
///   lines.
fn check_names(
    cx: &mut Context<'_>,
    rule: &str,
    span: &Range<usize>,
    field: &str,
    list: &[String],
) -> bool {
    let scope = field.starts_with("scopes");
    let scope_token = |name: &str| {
        name.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    };
    for name in list {
        let shown: String = name.escape_default().collect();
        let (kind, message, hint) = if name.is_empty() {
            (
                "empty_name",
                format!("rule `{rule}` has an empty name `\"\"` in `{field}`"),
                format!("remove `\"\"` from `{field}`"),
            )
        } else if scope && !scope_token(name) {
            (
                "bad_scope",
                format!(
                    "rule `{rule}`: `{shown}` in `{field}` is not a scope token (RFC 6749 §3.3)"
                ),
                "a scope is visible ASCII without spaces, `\"` or `\\`".to_owned(),
            )
        } else if name.chars().any(char::is_control) {
            (
                "control_character",
                format!("rule `{rule}`: `{shown}` in `{field}` holds a control character"),
                "names are printable text; remove the control character".to_owned(),
            )
        } else {
            continue;
        };
        let place = cx.narrow(span, name);
        cx.error(kind, &place, message, hint);
        return false;
    }
    true
}

fn requirement(
    cx: &mut Context<'_>,
    rule: &str,
    span: &Range<usize>,
    table: PrincipalSource,
    issuers: &HashMap<&str, u32>,
    variables: &BTreeSet<String>,
    intern: &mut dyn FnMut(&str) -> u32,
) -> Option<Requirement> {
    let mut ok = true;
    for (field, list) in [
        ("issuers", &table.issuers),
        ("subjects", &table.subjects),
        ("roles_any", &table.roles_any),
        ("roles_all", &table.roles_all),
        ("scopes_any", &table.scopes_any),
        ("scopes_all", &table.scopes_all),
        ("not_issuers", &table.not_issuers),
        ("not_subjects", &table.not_subjects),
    ] {
        ok &= check_names(cx, rule, span, field, list);
    }
    let mut issuer_ids = Vec::new();
    let mut not_issuer_ids = Vec::new();
    let named = table
        .issuers
        .iter()
        .map(|n| (n, false))
        .chain(table.not_issuers.iter().map(|n| (n, true)));
    for (name, excluded) in named.filter(|(n, _)| !n.is_empty()) {
        let issuer_ids = if excluded {
            &mut not_issuer_ids
        } else {
            &mut issuer_ids
        };
        match issuers.get(name.as_str()) {
            Some(&id) if !issuer_ids.contains(&id) => issuer_ids.push(id),
            Some(_) => {}
            None if cx.malformed_issuers.contains(name) => ok = false,
            None => {
                let mut known: Vec<&str> = issuers.keys().copied().collect();
                known.sort_unstable();
                let place = cx.narrow(span, name);
                cx.error(
                    "unknown_issuer",
                    &place,
                    format!("rule `{rule}` names unknown issuer `{name}`"),
                    suggest::hint(name, known, "known issuers"),
                );
                ok = false;
            }
        }
    }
    let mut roles = |list: &[String]| -> Vec<RoleRef> {
        let mut out = Vec::new();
        for role in list.iter().filter(|r| !r.is_empty()) {
            if !role.contains(['{', '}']) {
                out.push(RoleRef::Interned(intern(role)));
                continue;
            }
            match parse_template(role) {
                Ok(parts) => {
                    let undefined = parts.iter().find_map(|p| match p {
                        TemplatePart::Var(v) if !variables.contains(v) => Some(v),
                        _ => None,
                    });
                    if let Some(var) = undefined {
                        let place = cx.narrow(span, role);
                        cx.error(
                            "undefined_variable",
                            &place,
                            format!("rule `{rule}`: role template `{role}` uses `{{{var}}}`, which not every path of the rule captures"),
                            format!(
                                "variables captured by every path: {}",
                                suggest::list(variables.iter().map(String::as_str))
                            ),
                        );
                        ok = false;
                    } else {
                        out.push(RoleRef::Template(parts));
                    }
                }
                Err(message) => {
                    let place = cx.narrow(span, role);
                    cx.error(
                        "bad_template",
                        &place,
                        message,
                        "a role template fills `{variable}` from the rule's paths, e.g. `model.{model}.invoke`",
                    );
                    ok = false;
                }
            }
        }
        out
    };
    let roles_any = roles(&table.roles_any);
    let roles_all = roles(&table.roles_all);
    // `sub` is unique per issuer only: a subject names a caller of the rule's issuers, or of
    // the policy's only issuer.
    let subject_issuers: Vec<u32> = if !issuer_ids.is_empty() {
        issuer_ids.clone()
    } else if issuers.len() == 1 {
        issuers.values().copied().collect()
    } else {
        Vec::new()
    };
    if !table.subjects.is_empty() && subject_issuers.is_empty() && table.issuers.is_empty() {
        let mut known: Vec<&str> = issuers.keys().copied().collect();
        known.sort_unstable();
        cx.error(
            "unscoped_subjects",
            span,
            format!(
                "rule `{rule}` names subjects without saying whose: the policy has {} issuers and `sub` is unique per issuer only",
                issuers.len()
            ),
            format!(
                "add `issuers = [\"…\"]` (one of {}) to the same table",
                suggest::list(known)
            ),
        );
        ok = false;
    }
    let scoped = |subjects: &[String], issuers: &[u32]| -> Vec<ScopedSubject> {
        issuers
            .iter()
            .flat_map(|&issuer| {
                subjects.iter().map(move |subject| ScopedSubject {
                    issuer,
                    subject: subject.clone(),
                })
            })
            .collect()
    };
    let subjects = scoped(&table.subjects, &subject_issuers);
    // An excluded subject is excluded under every issuer it could come from: the rule's
    // issuers, or else every issuer of the policy (excluding too much is the safe side).
    let not_subject_issuers: Vec<u32> = if issuer_ids.is_empty() {
        let mut all: Vec<u32> = issuers.values().copied().collect();
        all.sort_unstable();
        all
    } else {
        issuer_ids.clone()
    };
    let not_subjects = scoped(&table.not_subjects, &not_subject_issuers);
    let claims = claim_conditions(cx, rule, span, "claims", &table.claims, &mut ok);
    let not_claims = claim_conditions(cx, rule, span, "not_claims", &table.not_claims, &mut ok);
    ok.then_some(Requirement {
        issuers: issuer_ids,
        subjects,
        roles_any,
        roles_all,
        scopes_any: table.scopes_any,
        scopes_all: table.scopes_all,
        not_issuers: not_issuer_ids,
        not_subjects,
        claims,
        not_claims,
    })
}

/// `claims` / `not_claims`: claim paths parsed and interned, value patterns parsed.
fn claim_conditions(
    cx: &mut Context<'_>,
    rule: &str,
    span: &Range<usize>,
    field: &str,
    table: &std::collections::BTreeMap<String, Vec<String>>,
    ok: &mut bool,
) -> Vec<ClaimCondition> {
    let mut out = Vec::new();
    for (path, values) in table {
        let parsed = match ClaimPath::parse(path) {
            Ok(parsed) => parsed,
            Err(error) => {
                let place = cx.narrow(span, path);
                cx.error(
                    "bad_claim_path",
                    &place,
                    format!("rule `{rule}`: `{field}`: {error}"),
                    "a claim path is names separated by dots; quote a name holding a dot: `resource_access.\"my.client\".roles`",
                );
                *ok = false;
                continue;
            }
        };
        if values.is_empty() {
            let place = cx.narrow(span, path);
            cx.error(
                "empty_claim_values",
                &place,
                format!("rule `{rule}`: `{field}` lists no value for claim `{path}`: no value could match"),
                "write at least one pattern; `\"*\"` stands for any value",
            );
            *ok = false;
            continue;
        }
        let mut patterns: Vec<ValuePattern> = Vec::new();
        for value in values {
            let problem = if value.is_empty() {
                Some((
                    format!("rule `{rule}`: `{field}`: claim `{path}` has an empty value pattern"),
                    "write `\"*\"` for a claim present with any value",
                ))
            } else if value.chars().any(char::is_control) {
                Some((
                    format!(
                        "rule `{rule}`: `{field}`: `{}` for claim `{path}` holds a control character",
                        value.escape_default()
                    ),
                    "values are printable text; remove the control character",
                ))
            } else {
                match parse_value_pattern(value) {
                    Ok(pattern) => {
                        if !patterns.contains(&pattern) {
                            patterns.push(pattern);
                        }
                        None
                    }
                    Err((message, _)) => Some((
                        format!("rule `{rule}`: `{field}`: claim `{path}`: {message}"),
                        "a claim value pattern is exact, `prefix*`, `*suffix` or `*` (as Istio): no `*` inside",
                    )),
                }
            };
            if let Some((message, hint)) = problem {
                let place = cx.narrow(span, value);
                let kind = if value.is_empty() {
                    "empty_name"
                } else {
                    "bad_claim_value"
                };
                cx.error(kind, &place, message, hint);
                *ok = false;
            }
        }
        let claim = match cx.claim_paths.iter().position(|p| *p == parsed) {
            Some(index) => index,
            None => {
                cx.claim_paths.push(parsed);
                cx.claim_paths.len() - 1
            }
        };
        out.push(ClaimCondition {
            claim: u32::try_from(claim).unwrap_or(u32::MAX),
            patterns,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{compiled, errors_of, kinds_of};
    use super::*;
    use crate::compiled::ScopedSubject;

    const TWO_ISSUERS: &str = r#"version = 1
[issuers.kc]
issuer = "https://kc"
audiences = ["api"]
algorithms = ["HS256"]
hmac_secret = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
[issuers.entra]
issuer = "https://entra"
audiences = ["api"]
algorithms = ["HS256"]
hmac_secret = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
"#;

    fn rule(principal: &str) -> String {
        format!("[[rules]]\nname = \"r\"\npaths = [\"/*\"]\nallow = {principal}\n")
    }

    /// Issue 8, defect 6: `subjects` without `issuers` compared the bare `sub`.
    #[test]
    fn subjects_need_an_issuer_when_several_could_have_minted_them() {
        let text = format!("{TWO_ISSUERS}{}", rule("{ subjects = [\"svc-a\"] }"));
        let errors = errors_of(&text);
        assert_eq!(kinds_of(&errors), ["unscoped_subjects"]);
        assert_eq!(errors[0].line, 15);
        assert!(errors[0].hint.as_deref().unwrap().contains("`entra`, `kc`"));

        let text = format!(
            "{TWO_ISSUERS}{}",
            rule("{ issuers = [\"kc\", \"entra\"], subjects = [\"svc-a\"] }")
        );
        let requirement = match &compiled(&text).policy.rules[0].principal {
            Principal::Authenticated(r) => r.clone(),
            _ => panic!("not a table"),
        };
        // Issuers are indexed in name order: entra = 0, kc = 1.
        assert_eq!(requirement.issuers, [1, 0]);
        let scoped = |issuer| ScopedSubject {
            issuer,
            subject: "svc-a".into(),
        };
        assert_eq!(requirement.subjects, [scoped(1), scoped(0)]);
    }

    #[test]
    fn a_single_issuer_scopes_subjects_by_itself() {
        let one = TWO_ISSUERS.split("[issuers.entra]").next().unwrap();
        let text = format!("{one}{}", rule("{ subjects = [\"svc-a\"] }"));
        match &compiled(&text).policy.rules[0].principal {
            Principal::Authenticated(r) => assert_eq!(
                r.subjects,
                [ScopedSubject {
                    issuer: 0,
                    subject: "svc-a".into()
                }]
            ),
            _ => panic!("not a table"),
        }
    }

    /// Issue 8, defect 11: `subjects = [""]` was accepted.
    #[test]
    fn empty_names_are_refused() {
        for field in [
            "subjects",
            "roles_any",
            "roles_all",
            "scopes_any",
            "scopes_all",
            "issuers",
        ] {
            let text = format!(
                "{TWO_ISSUERS}{}",
                rule(&format!(
                    "{{ issuers = [\"kc\"], {field} = [\"kc\", \"\"] }}"
                ))
                .replace("issuers = [\"kc\"], issuers", "issuers")
            );
            let kinds = kinds_of(&errors_of(&text));
            assert_eq!(kinds, ["empty_name"], "{field}: {text}");
        }
    }

    #[test]
    fn scopes_and_names_that_could_forge_headers_or_lines_are_refused() {
        for (field, value, kind) in [
            ("scopes_any", r#"read\", error=\"x"#, "bad_scope"),
            ("scopes_all", "read write", "bad_scope"),
            ("scopes_any", r"a\r\nSet-Cookie: b", "bad_scope"),
            ("roles_any", r"ml\u001b[8m", "control_character"),
            ("subjects", r"svc\nfake line", "control_character"),
        ] {
            let text = format!(
                "{TWO_ISSUERS}{}",
                rule(&format!(
                    "{{ issuers = [\"kc\"], {field} = [\"{value}\"] }}"
                ))
            );
            let kinds = kinds_of(&errors_of(&text));
            assert_eq!(kinds, [kind], "{field}: {text}");
        }
        let text = format!(
            "{TWO_ISSUERS}{}",
            rule(r#"{ issuers = ["kc"], scopes_any = ["model.read", "api://x/Score.All"] }"#)
        );
        assert!(errors_of(&text).is_empty());
    }

    #[test]
    fn principal_errors() {
        let cases = [
            ("\"everyone\"", "bad_principal"),
            ("{ roles = [\"a\"] }", "bad_principal"),
            ("{ issuers = [\"okta\"] }", "unknown_issuer"),
            (
                "{ roles_any = [\"model.{model}.invoke\"] }",
                "undefined_variable",
            ),
            ("{ roles_any = [\"model.{model\"] }", "bad_template"),
        ];
        for (principal, kind) in cases {
            let text = format!("{TWO_ISSUERS}{}", rule(principal));
            assert_eq!(kinds_of(&errors_of(&text)), [kind], "{principal}");
        }
        let both = format!("{TWO_ISSUERS}{}deny = \"anyone\"\n", rule("\"anyone\""));
        assert_eq!(kinds_of(&errors_of(&both)), ["allow_and_deny"]);
    }

    #[test]
    fn role_templates() {
        assert_eq!(
            parse_template("model.{model}.invoke").unwrap(),
            [
                TemplatePart::Text("model.".into()),
                TemplatePart::Var("model".into()),
                TemplatePart::Text(".invoke".into())
            ]
        );
        for bad in ["{", "}", "{a", "a}", "{1}", "{}"] {
            assert!(parse_template(bad).is_err(), "{bad}");
        }
    }
}
