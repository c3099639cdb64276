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
