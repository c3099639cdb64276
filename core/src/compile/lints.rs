//! Warnings about policies that compile but probably do not mean what they say: an issuer
//! no rule can use, a rule another rule always decides first, roles or scopes any issuer
//! can grant.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use super::diagnostics::Context;
use crate::compiled::{CompiledRule, Effect, HostPattern, PathPattern, Principal, Segment};
use crate::source::IssuerSource;

/// Warns about issuers no rule can use.
pub(super) fn unused_issuers(
    cx: &mut Context<'_>,
    issuers: &BTreeMap<String, Spanned<IssuerSource>>,
    rules: &[CompiledRule],
) {
    let open_rule = rules
        .iter()
        .any(|r| matches!(&r.principal, Principal::Authenticated(req) if req.issuers.is_empty()));
    for (i, (name, issuer)) in issuers.iter().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let used = open_rule
            || rules.iter().any(|r| {
                matches!(&r.principal, Principal::Authenticated(req) if req.issuers.contains(&index))
            });
        if !used {
            cx.warn(
                "unused_issuer",
                &issuer.span(),
                format!("issuer `{name}` is not used by any rule"),
                "name it in a rule's `issuers`, or remove it",
            );
        }
    }
}

/// Warns about allow rules that ask for roles or scopes without naming issuers in a policy
/// with several: role and scope names are chosen by each issuer's administrators, so any
/// issuer can mint a token that holds them (as with subjects, which are scoped by issuer).
/// Deny rules are left alone: matching more callers only denies more.
pub(super) fn unscoped_roles(
    cx: &mut Context<'_>,
    issuer_count: usize,
    rules: &[CompiledRule],
    spans: &[Range<usize>],
) {
    if issuer_count < 2 {
        return;
    }
    for (rule, span) in rules.iter().zip(spans) {
        let Principal::Authenticated(req) = &rule.principal else {
            continue;
        };
        let names_roles = !req.roles_any.is_empty() || !req.roles_all.is_empty();
        let names_scopes = !req.scopes_any.is_empty() || !req.scopes_all.is_empty();
        if rule.effect != Effect::Allow || !req.issuers.is_empty() || !(names_roles || names_scopes)
        {
            continue;
        }
        let what = match (names_roles, names_scopes) {
            (true, true) => "roles and scopes",
            (true, false) => "roles",
            _ => "scopes",
        };
        cx.warn(
            "unscoped_roles",
            span,
            format!(
                "rule `{}` asks for {what} from any of the policy's {issuer_count} issuers: an administrator of any of them can grant these names",
                rule.name
            ),
            "add `issuers = [...]` to the rule's `allow`, naming the issuers whose roles and scopes it trusts",
        );
    }
}

/// Warns about rules that can never decide: every request they match is decided by an
/// unconditional rule first. Audit rules take no part: they never change the enforced
/// decision (so they shadow nothing), and an audit rule that an enforcing rule decides first
/// is still a trial worth keeping (its shadow decision is logged).
pub(super) fn shadowed_rules(cx: &mut Context<'_>, rules: &[CompiledRule], spans: &[Range<usize>]) {
    // Only unconditional rules shadow: collected once, so a policy of 100,000 rules with a
    // few of them is not 10^10 comparisons.
    let unconditional: Vec<(usize, &CompiledRule)> = rules
        .iter()
        .enumerate()
        .filter(|(_, a)| !a.audit && a.principal == Principal::Anyone)
        .collect();
    for (b_index, b) in rules.iter().enumerate() {
        if b.audit {
            continue;
        }
        for &(a_index, a) in &unconditional {
            if a_index == b_index {
                continue;
            }
            let shadows = match (a.effect, b.effect) {
                (Effect::Deny, _) => true,
                (Effect::Allow, Effect::Allow) => b.principal != Principal::Anyone,
                (Effect::Allow, Effect::Deny) => false,
            };
            if shadows && covers(a, b) {
                let what = if a.effect == Effect::Deny {
                    "every request it matches is denied by"
                } else {
                    "every request it matches is already allowed to anyone by"
                };
                if let Some(span) = spans.get(b_index) {
                    cx.warn(
                        "shadowed_rule",
                        span,
                        format!("rule `{}` is shadowed: {what} rule `{}`", b.name, a.name),
                        "narrow the other rule's hosts, methods, paths or headers, or remove this one",
                    );
                }
                break;
            }
        }
    }
}

/// Literal text every path the pattern matches starts with.
fn literal_prefix(pattern: &PathPattern) -> (String, bool) {
    match pattern {
        PathPattern::Exact(p) => (p.clone(), true),
        PathPattern::Prefix(p) | PathPattern::TextPrefix(p) => (p.clone(), false),
        PathPattern::Suffix(_) | PathPattern::Any => ("/".to_owned(), false),
        PathPattern::Template { segments, .. } => {
            let mut prefix = String::from("/");
            for segment in segments {
                match segment {
                    Segment::Literal(l) => {
                        prefix.push_str(l);
                        prefix.push('/');
                    }
                    Segment::Capture { prefix: p, .. } => {
                        prefix.push_str(p);
                        break;
                    }
                }
            }
            (prefix, false)
        }
    }
}

fn path_covers(a: &PathPattern, b: &PathPattern) -> bool {
    if a == b {
        return true;
    }
    match a {
        PathPattern::Prefix(p) | PathPattern::TextPrefix(p) => {
            literal_prefix(b).0.starts_with(p.as_str())
        }
        PathPattern::Any => true,
        PathPattern::Suffix(s) => match b {
            PathPattern::Exact(p) | PathPattern::Suffix(p) => p.ends_with(s.as_str()),
            _ => false,
        },
        PathPattern::Exact(_) | PathPattern::Template { .. } => false,
    }
}

/// Whether every request `b` matches is also matched by `a` (conservative: may say no; a
/// rule with exclusions covers nothing).
fn covers(a: &CompiledRule, b: &CompiledRule) -> bool {
    let excludes = !a.not_hosts.is_empty()
        || !a.not_methods.is_empty()
        || !a.not_paths.is_empty()
        || !a.not_headers.is_empty();
    if excludes {
        return false;
    }
    let hosts = a.hosts.is_empty()
        || (!b.hosts.is_empty()
            && b.hosts.iter().all(|bh| {
                a.hosts.iter().any(|ah| match (ah, bh) {
                    (HostPattern::Exact(x), HostPattern::Exact(y)) => x == y,
                    (HostPattern::Suffix(s), HostPattern::Exact(y)) => {
                        y.len() > s.len() && y.ends_with(s.as_str())
                    }
                    (HostPattern::Suffix(s), HostPattern::Suffix(t)) => t.ends_with(s.as_str()),
                    (HostPattern::Any, _) => true,
                    (HostPattern::Prefix(p), HostPattern::Exact(y) | HostPattern::Prefix(y)) => {
                        y.starts_with(p.as_str())
                    }
                    _ => false,
                })
            }));
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    let headers = a.headers.iter().all(|h| b.headers.contains(h));
    let paths = a.paths.is_empty()
        || (!b.paths.is_empty()
            && b.paths
                .iter()
                .all(|bp| a.paths.iter().any(|ap| path_covers(ap, bp))));
    hosts && methods && headers && paths
}

#[cfg(test)]
mod tests {
    use super::super::tests::{compiled, kinds_of};

    #[test]
    fn unused_issuers_and_shadowed_rules_are_warned_about() {
        let text = r#"version = 1
[issuers.a]
issuer = "https://a"
audiences = ["api"]
algorithms = ["HS256"]
hmac_secret = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
[issuers.b]
issuer = "https://b"
audiences = ["api"]
algorithms = ["HS256"]
hmac_secret = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
[[rules]]
name = "closed"
paths = ["/admin/*"]
deny = "anyone"
[[rules]]
name = "admin-users"
paths = ["/admin/users"]
allow = { issuers = ["a"] }
[[rules]]
name = "other"
paths = ["/score"]
allow = { issuers = ["a"] }
"#;
        let warnings = compiled(text).warnings;
        assert_eq!(kinds_of(&warnings), ["unused_issuer", "shadowed_rule"]);
        assert!(warnings[0].message.contains("`b`"));
        assert!(warnings[1].message.contains("`admin-users`"));
        assert_eq!(warnings[1].line, 17);
    }

    #[test]
    fn audit_rules_take_no_part_in_shadowing() {
        let text = "version = 1\n[[rules]]\nname = \"trial\"\npaths = [\"/*\"]\ndeny = \"anyone\"\naudit = true\n[[rules]]\nname = \"open\"\npaths = [\"/a/*\"]\nallow = \"anyone\"\n[[rules]]\nname = \"trial-b\"\npaths = [\"/a/b\"]\ndeny = \"anyone\"\naudit = true\n";
        assert!(compiled(text).warnings.is_empty());
        let enforced = text.replace("audit = true\n", "");
        let warnings = compiled(&enforced).warnings;
        assert_eq!(kinds_of(&warnings), ["shadowed_rule", "shadowed_rule"]);
    }
}
