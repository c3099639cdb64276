#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! Regression tests for issue 8's compiler defects (10, 11), through the public API only, so
//! that they also run against the compiler before the fixes. Each module of
//! `core/src/compile/` has its own finer tests.

use claimgate_core::compile::{Diagnostic, Severity, compile};

fn diagnostics(text: &str) -> Vec<Diagnostic> {
    match compile(text, "p.toml", &|_: &str| Err("no files".to_owned())) {
        Ok(compiled) => compiled.warnings,
        Err(diagnostics) => diagnostics,
    }
}

fn errors(text: &str) -> Vec<(&'static str, usize)> {
    diagnostics(text)
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.kind, d.line))
        .collect()
}

const SECRET: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn issuer(name: &str, iss: &str, extra: &str) -> String {
    format!(
        "[issuers.{name}]\nissuer = \"{iss}\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\nhmac_secret = \"{SECRET}\"\n{extra}\n"
    )
}

const RULE: &str = "[[rules]]\nname = \"r\"\npaths = [\"/*\"]\nallow = \"authenticated\"\n";

#[test]
fn two_issuers_with_the_same_iss_are_an_error() {
    let text = format!(
        "version = 1\n{}{}{RULE}",
        issuer("a", "https://idp", ""),
        issuer("b", "https://idp", "")
    );
    assert_eq!(errors(&text), [("duplicate_iss", 9)]);
}

#[test]
fn sub_second_durations_where_seconds_count_are_errors() {
    let text = format!(
        "version = 1\n{}{RULE}",
        issuer("a", "https://idp", "clock_skew = \"500ms\"")
    );
    assert_eq!(errors(&text), [("sub_second_duration", 7)]);
}

#[test]
fn fetch_timeouts_above_a_minute_are_errors() {
    let text = format!(
        "version = 1\n[issuers.a]\nissuer = \"https://idp\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n[issuers.a.jwks]\nuri = \"https://idp/certs\"\ntimeout = \"10m\"\n{RULE}"
    );
    assert_eq!(errors(&text), [("timeout_out_of_range", 8)]);
}

#[test]
fn plain_http_key_sets_outside_the_cluster_are_warned_about() {
    let policy = |uri: &str| {
        format!(
            "version = 1\n[issuers.a]\nissuer = \"https://idp\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n[issuers.a.jwks]\nuri = \"{uri}\"\n{RULE}"
        )
    };
    let warned = |uri: &str| {
        diagnostics(&policy(uri))
            .iter()
            .any(|d| d.severity == Severity::Warning && d.message.contains("plain HTTP"))
    };
    assert!(warned("http://login.example.com/certs"));
    assert!(!warned("http://keycloak.auth.svc.cluster.local:8080/certs"));
    assert!(!warned("https://login.example.com/certs"));
}

#[test]
fn empty_subjects_are_errors() {
    let text = format!(
        "version = 1\n{}[[rules]]\nname = \"r\"\npaths = [\"/*\"]\nallow = {{ subjects = [\"\"] }}\n",
        issuer("a", "https://idp", "")
    );
    assert_eq!(errors(&text).len(), 1, "{:?}", diagnostics(&text));
}

/// Defect 10: a rule on `x-claimgate-*` headers matched in `explain` but never in Envoy.
#[test]
fn rules_on_identity_headers_are_errors() {
    let text = "version = 1\n[[rules]]\nname = \"probe\"\npaths = [\"/p\"]\nheaders = { \"x-claimgate-subject\" = \"root\" }\nallow = \"anyone\"\n";
    assert_eq!(errors(text), [("identity_header_rule", 5)]);
}

#[test]
fn rule_header_values_outside_visible_ascii_are_errors() {
    let text = "version = 1\n[[rules]]\nname = \"probe\"\npaths = [\"/p\"]\nheaders = { \"x-deployment\" = \"bl\\u00e9\" }\nallow = \"anyone\"\n";
    assert_eq!(errors(text), [("bad_header_value", 5)]);
}

#[test]
fn every_error_has_a_place_and_a_hint() {
    let text = format!(
        "version = 1\n{}{}[[rules]]\nname = \"r\"\npaths = [\"/*\"]\nallow = {{ roles_any = [\"\"] }}\n",
        issuer("a", "https://idp", "clock_skew = \"1s500ms\""),
        issuer("b", "https://idp", "max_lifetime = \"100ms\"")
    );
    let all = diagnostics(&text);
    let errors: Vec<&Diagnostic> = all
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert!(errors.len() >= 4, "{all:#?}");
    for error in errors {
        assert!(error.line > 1 && error.column > 0, "{error}");
        assert!(
            error.hint.as_deref().is_some_and(|h| !h.is_empty()),
            "{error}"
        );
    }
}

// Attacker review of the new compiler: rules that `check` accepted but that could never do
// what they say in Envoy, and lints that misread audit rules.

fn warnings(text: &str) -> Vec<(&'static str, usize)> {
    diagnostics(text)
        .into_iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| (d.kind, d.line))
        .collect()
}

fn hint_of(text: &str, kind: &str) -> String {
    diagnostics(text)
        .into_iter()
        .find(|d| d.kind == kind)
        .and_then(|d| d.hint)
        .unwrap_or_default()
}

/// Envoy carries the Host only as `:authority`: a rule on the `host` header matched in
/// `explain` and never in Envoy.
#[test]
fn rules_on_the_host_header_are_errors_pointing_at_hosts() {
    let text = "version = 1\n[[rules]]\nname = \"admin-host\"\npaths = [\"/admin/*\"]\nheaders = { \"Host\" = \"admin.example.com\" }\ndeny = \"anyone\"\n[[rules]]\nname = \"lower\"\npaths = [\"/p\"]\nheaders = { host = \"a\", \":authority\" = \"a\" }\nallow = \"anyone\"\n";
    assert_eq!(
        errors(text),
        [
            ("host_header_rule", 5),
            ("pseudo_header_rule", 10),
            ("host_header_rule", 10)
        ]
    );
    assert!(hint_of(text, "host_header_rule").contains("hosts"));
}

/// A host pattern that no request host can equal made a deny rule silently do nothing:
/// Envoy passes international names as punycode, and a host with a space is refused (400).
#[test]
fn host_patterns_no_request_can_carry_are_errors() {
    let text = "version = 1\n[[rules]]\nname = \"admin\"\nhosts = [\"bücher.example\", \"admin .example.com\", \"user@a.com\", \"a..com\", \"*.bücher.example\", \"[::1]:80\"]\npaths = [\"/admin/*\"]\ndeny = \"anyone\"\n";
    assert_eq!(
        errors(text),
        [("bad_host", 4); 6],
        "{:#?}",
        diagnostics(text)
    );
    assert!(hint_of(text, "bad_host").contains("punycode"));
    // Case and one trailing dot are normalised as they are from requests.
    let ok = "version = 1\n[[rules]]\nname = \"admin\"\nhosts = [\"Admin.Example.COM.\", \"*.XN--bcher-kva.example\", \"[::1]\", \"10.0.0.1\"]\npaths = [\"/admin/*\"]\ndeny = \"anyone\"\n";
    assert_eq!(diagnostics(ok), []);
}

const TWO_ISSUERS: &str = "version = 1\n[issuers.a]\nissuer = \"https://a\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\nhmac_secret = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"\n[issuers.b]\nissuer = \"https://b\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\nhmac_secret = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"\n";

/// Any issuer's administrator can mint a role or scope name: in a policy with several
/// issuers, an allow rule on roles or scopes should say whose.
#[test]
fn roles_and_scopes_without_issuers_are_warned_about_with_several_issuers() {
    let text = format!(
        "{TWO_ISSUERS}[[rules]]\nname = \"admins\"\npaths = [\"/admin/*\"]\nallow = {{ roles_any = [\"admin\"] }}\n[[rules]]\nname = \"scorers\"\npaths = [\"/score\"]\nallow = {{ scopes_all = [\"score\"] }}\n[[rules]]\nname = \"scoped\"\npaths = [\"/v2/*\"]\nallow = {{ issuers = [\"a\", \"b\"], roles_any = [\"v2\"] }}\n[[rules]]\nname = \"blocked\"\npaths = [\"/v3/*\"]\ndeny = {{ roles_any = [\"intern\"] }}\n"
    );
    assert_eq!(
        warnings(&text),
        [("unscoped_roles", 13), ("unscoped_roles", 17)]
    );
    assert!(hint_of(&text, "unscoped_roles").contains("issuers = ["));
    // With one issuer there is nobody else to mint the name.
    let one = "version = 1\n[issuers.a]\nissuer = \"https://a\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\nhmac_secret = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"\n[[rules]]\nname = \"admins\"\npaths = [\"/admin/*\"]\nallow = { roles_any = [\"admin\"] }\n";
    assert_eq!(warnings(one), []);
}

/// Audit rules never change the enforced decision: an audit deny rule shadows nothing, and
/// an audit rule decided first by an enforcing rule is a trial, not a mistake. Both were
/// warned about, so `check --deny-warnings` refused such policies.
#[test]
fn audit_rules_neither_shadow_nor_are_shadowed() {
    let text = "version = 1\n[[rules]]\nname = \"trial-lockdown\"\npaths = [\"/*\"]\ndeny = \"anyone\"\naudit = true\n[[rules]]\nname = \"health\"\npaths = [\"/health\"]\nallow = \"anyone\"\n[[rules]]\nname = \"closed\"\npaths = [\"/admin/*\"]\ndeny = \"anyone\"\n[[rules]]\nname = \"trial-admin-deny\"\npaths = [\"/admin/users\"]\ndeny = \"anyone\"\naudit = true\n";
    assert_eq!(diagnostics(text), []);
    // Made enforcing, the lockdown shadows the enforcing rules, not the audit one.
    let enforced = text.replacen("audit = true\n", "", 1);
    assert_eq!(
        warnings(&enforced),
        [("shadowed_rule", 7), ("shadowed_rule", 11)]
    );
}

/// Rules are matched on the decoded path: `%` (and `;`, whose requests are refused or
/// stripped) can never match, and the error says how to write the path.
#[test]
fn encoded_paths_in_rules_are_errors_saying_to_write_them_decoded() {
    let text = "version = 1\n[[rules]]\nname = \"r\"\npaths = [\"/models/my%20model\"]\ndeny = \"anyone\"\n";
    assert_eq!(errors(text), [("bad_path", 4)]);
    assert!(hint_of(text, "bad_path").contains("decoded"));
    let text = "version = 1\n[[rules]]\nname = \"r\"\npaths = [\"/admin;jsessionid/*\"]\ndeny = \"anyone\"\n";
    assert_eq!(errors(text), [("bad_path", 4)]);
    assert!(hint_of(text, "bad_path").contains("parameters"));
}

// Issue 11, item 4: every problem of a policy in one run, with "did you mean" and a hint for
// a key written under the wrong table header. Before, serde stopped at the first unknown key
// or wrong type and everything else went unreported.

fn errors_with_hints(text: &str) -> Vec<(&'static str, usize, usize, String)> {
    diagnostics(text)
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.kind, d.line, d.column, d.hint.unwrap_or_default()))
        .collect()
}

/// A misspelt key, a wrong type, a bad value, a key under the wrong header and semantic
/// errors, in different rules and issuers: all reported, each at its place.
#[test]
fn every_structural_and_semantic_error_comes_in_one_run() {
    let text = r#"version = 1
mode = "enforcee"
[token]
forward = false
default = "allow"
[issuers.kc]
issuer = 3
audiences = ["api"]
algorithms = ["RS256"]
[issuers.entra]
issuer = "https://login.example/v2.0"
audiences = ["api"]
algorithms = ["RS256", "none"]
[[rules]]
nmae = "score"
paths = ["/score"]
allow = "authenticated"
[[rules]]
name = "health"
paths = ["/health", "health"]
allow = "anyone"
[[rules]]
name = "admin"
paths = ["/admin/*"]
allow = { issuers = ["entar"] }
"#;
    let found: Vec<(&str, usize, usize)> = errors_with_hints(text)
        .into_iter()
        .map(|(kind, line, column, _)| (kind, line, column))
        .collect();
    let mut sorted = found.clone();
    sorted.sort_by_key(|(_, line, column)| (*line, *column));
    assert_eq!(
        sorted,
        [
            ("bad_value", 2, 8),
            ("unknown_field", 5, 1),
            ("wrong_type", 7, 10),
            ("algorithm_none", 13, 24),
            ("unknown_field", 15, 1),
            ("bad_path", 20, 21),
            ("unknown_issuer", 25, 22),
        ],
        "{:#?}",
        diagnostics(text)
    );
}

#[test]
fn unknown_names_get_did_you_mean() {
    let hint = |text: &str, kind: &str| {
        errors_with_hints(text)
            .into_iter()
            .find(|(k, ..)| *k == kind)
            .map(|(.., hint)| hint)
            .unwrap_or_default()
    };
    let rule = |body: &str| {
        format!(
            "version = 1\n{}[[rules]]\n{body}\n",
            issuer("keycloak", "https://idp", "")
        )
    };
    // A field of a rule, of an issuer, of a principal table.
    assert_eq!(
        hint(&rule("nmae = \"r\"\nallow = \"anyone\""), "unknown_field"),
        "did you mean `name`?"
    );
    assert_eq!(
        hint(
            &format!(
                "version = 1\n{}",
                issuer("keycloak", "https://idp", "audience = [\"x\"]")
            ),
            "unknown_field"
        ),
        "did you mean `audiences`?"
    );
    assert_eq!(
        hint(
            &rule("name = \"r\"\nallow = { role_any = [\"a\"] }"),
            "bad_principal"
        ),
        "did you mean `roles_any`?"
    );
    // A value of an enumeration, a word of `allow`.
    assert_eq!(
        hint("version = 1\ndefault = \"alow\"\n", "bad_value"),
        "did you mean `allow`?"
    );
    assert_eq!(
        hint(
            &rule("name = \"r\"\nallow = \"authenticatd\""),
            "bad_principal"
        ),
        "did you mean `authenticated`?"
    );
    // An issuer named by a rule and by `[revoked.subjects]`.
    assert_eq!(
        hint(
            &rule("name = \"r\"\nallow = { issuers = [\"keycloack\"] }"),
            "unknown_issuer"
        ),
        "did you mean `keycloak`?"
    );
    assert_eq!(
        hint(
            &format!(
                "version = 1\n{}[revoked.subjects]\nkeycloac = [\"svc-old\"]\n",
                issuer("keycloak", "https://idp", "")
            ),
            "unknown_issuer"
        ),
        "did you mean `keycloak`?"
    );
    // Nothing close: the names to choose from, for people (not Rust's debug form).
    assert_eq!(
        hint(
            &rule("name = \"r\"\nallow = { issuers = [\"okta\"] }"),
            "unknown_issuer"
        ),
        "known issuers: `keycloak`"
    );
}

/// A key written after a table header lands in that table: the hint names the table it
/// belongs to, for the top level and for a nested table (`[issuers.X.jwks]`).
#[test]
fn keys_after_a_table_header_are_pointed_back_to_their_table() {
    let text = format!(
        "version = 1\n[issuers.kc]\nissuer = \"https://idp\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n[issuers.kc.jwks]\nuri = \"https://idp/certs\"\nclock_skew = \"30s\"\n{RULE}default = \"allow\"\n"
    );
    let found = errors_with_hints(&text);
    assert_eq!(
        found,
        [
            (
                "unknown_field",
                8,
                1,
                "`clock_skew` is a key of `[issuers.kc]`: keys after `[issuers.kc.jwks]` belong to that table; move `clock_skew = …` up into `[issuers.kc]`, above `[issuers.kc.jwks]`".to_owned()
            ),
            (
                "unknown_field",
                13,
                1,
                "`default` is a top-level key: keys after `[[rules]]` #1 belong to that table; move `default = …` above the first table header".to_owned()
            ),
        ]
    );
}
