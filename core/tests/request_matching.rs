#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! Issue 10, request side: exclusions (`not_hosts`, `not_methods`, `not_paths`,
//! `not_headers`), Istio's path and host patterns, header value patterns, CORS preflight and
//! the compiler's checks of them. Decisions are taken as the filter takes them: policy text
//! compiled, through the blob, decided by `Engine::decide`.

use claimgate_core::blob;
use claimgate_core::compile::{Diagnostic, compile};
use claimgate_core::engine::{Decision, Engine, RemoteKeys, Request};
use jwt_simple::prelude::*;

const NOW: u64 = 1_800_000_000;
const ISSUER: &str = r#"
[issuers.test]
issuer = "https://idp.test"
audiences = ["api"]
algorithms = ["HS256"]
roles = ["roles"]
# base64url of 32 bytes of `A`
hmac_secret = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE"
"#;

fn engine(text: &str) -> Engine {
    let compiled = compile(text, "policy.toml", &|_| Err("no files".to_owned()))
        .unwrap_or_else(|errors| panic!("{errors:#?}"));
    let config = serde_json::to_vec(&blob::plugin_config(&compiled.policy).unwrap()).unwrap();
    blob::engine_from_plugin_config(&config).unwrap()
}

fn diagnostics(text: &str) -> Vec<Diagnostic> {
    match compile(text, "policy.toml", &|_| Err("no files".to_owned())) {
        Ok(compiled) => compiled.warnings,
        Err(errors) => errors,
    }
}

/// The diagnostics' kinds, but for the issuer no rule uses (most policies here need none).
fn kinds(text: &str) -> Vec<&'static str> {
    diagnostics(text)
        .iter()
        .map(|d| d.kind)
        .filter(|k| *k != "unused_issuer")
        .collect()
}

fn token(roles: &[&str]) -> String {
    let key = HS256Key::from_bytes(&[b'A'; 32]);
    let mut claims = Claims::with_custom_claims(
        serde_json::json!({ "roles": roles }),
        Duration::from_mins(10),
    )
    .with_issuer("https://idp.test")
    .with_audience("api")
    .with_subject("alice");
    claims.issued_at = Some(Duration::from_secs(NOW - 10));
    claims.expires_at = Some(Duration::from_secs(NOW + 600));
    claims.invalid_before = None;
    key.authenticate(claims).unwrap()
}

fn decide(e: &Engine, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Decision {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let request = Request {
        method,
        host,
        path,
        headers: &headers,
    };
    let mut trace = Vec::new();
    e.decide(&request, NOW, &RemoteKeys::default(), Some(&mut trace))
}

/// `allow`, or the deny reason's code.
fn outcome(e: &Engine, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let d = decide(e, method, host, path, headers);
    d.reason
        .as_ref()
        .map_or("allow".to_owned(), |r| r.code().to_owned())
}

fn get(e: &Engine, path: &str) -> String {
    outcome(e, "GET", "h.example", path, &[])
}

fn policy(rules: &str) -> String {
    format!("version = 1\n{ISSUER}\n{rules}")
}

// === exclusions ===

#[test]
fn not_paths_narrow_an_allow_rule_in_every_spelling() {
    let e = engine(&policy(
        "[[rules]]\nname = \"api\"\npaths = [\"/api/*\"]\nnot_paths = [\"/api/admin/*\", \"/api/secret\"]\nallow = \"anyone\"\n",
    ));
    assert_eq!(get(&e, "/api/models"), "allow");
    for excluded in [
        "/api/secret",
        // An allow rule's exclusion compares every spelling a lenient upstream routes to
        // the same handler: excluded means excluded however it is written.
        "/api/Secret",
        "/api/secret/",
        "/api/admin/users",
        "/API/ADMIN/users",
        "/api/admin",
    ] {
        assert_eq!(get(&e, excluded), "no_rule", "{excluded}");
    }
}

#[test]
fn not_paths_of_a_deny_rule_compare_exactly() {
    let e = engine(&policy(
        "[[rules]]\nname = \"closed\"\npaths = [\"/admin/*\"]\nnot_paths = [\"/admin/health\"]\ndeny = \"anyone\"\n[[rules]]\nname = \"open\"\npaths = [\"/*\"]\nallow = \"anyone\"\n",
    ));
    assert_eq!(get(&e, "/admin/health"), "allow");
    // The exclusion is never a way around the deny: other spellings stay denied.
    for denied in [
        "/admin/Health",
        "/admin/health/",
        "/ADMIN/health",
        "/admin/x",
    ] {
        assert_eq!(get(&e, denied), "explicit_deny", "{denied}");
    }
}

#[test]
fn not_methods_read_the_method_the_upstream_may_run() {
    let e = engine(&policy(
        "[[rules]]\nname = \"read\"\npaths = [\"/*\"]\nnot_methods = [\"DELETE\", \"put\"]\nallow = \"anyone\"\n",
    ));
    let run = |m: &str, h: &[(&str, &str)]| outcome(&e, m, "h", "/x", h);
    assert_eq!(run("GET", &[]), "allow");
    assert_eq!(run("DELETE", &[]), "no_rule");
    assert_eq!(run("PUT", &[]), "no_rule");
    // An override header naming an excluded method excludes the request from an allow rule.
    assert_eq!(
        run("POST", &[("x-http-method-override", "DELETE")]),
        "no_rule"
    );

    let e = engine(&policy(
        "[[rules]]\nname = \"no-writes\"\nnot_methods = [\"GET\"]\ndeny = \"anyone\"\n[[rules]]\nname = \"open\"\nallow = \"anyone\"\n",
    ));
    let run = |m: &str, h: &[(&str, &str)]| outcome(&e, m, "h", "/x", h);
    assert_eq!(run("GET", &[]), "allow");
    assert_eq!(run("POST", &[]), "explicit_deny");
    // A deny rule's exclusion needs every method the upstream may run to be excluded.
    assert_eq!(
        run("GET", &[("x-http-method-override", "DELETE")]),
        "explicit_deny"
    );
}

#[test]
fn not_hosts_and_istio_host_patterns() {
    let e = engine(&policy(
        "[[rules]]\nname = \"public\"\nhosts = [\"*\"]\nnot_hosts = [\"internal-*\", \"*.corp.example\"]\nallow = \"anyone\"\n[[rules]]\nname = \"models\"\nhosts = [\"models-*\"]\npaths = [\"/x\"]\ndeny = \"anyone\"\n",
    ));
    let run = |host: &str, path: &str| outcome(&e, "GET", host, path, &[]);
    assert_eq!(run("api.example", "/y"), "allow");
    assert_eq!(run("internal-db.svc", "/y"), "no_rule");
    assert_eq!(run("INTERNAL-db.svc:8443", "/y"), "no_rule");
    assert_eq!(run("a.corp.example", "/y"), "no_rule");
    // `*.suffix` needs a label before the suffix, as before.
    assert_eq!(run("corp.example", "/y"), "allow");
    // `prefix*` is Istio's prefix match: the prefix alone matches too.
    assert_eq!(run("models-eu.example", "/x"), "explicit_deny");
    assert_eq!(run("models-", "/x"), "explicit_deny");
    assert_eq!(run("model.example", "/x"), "allow");
}

// === path patterns ===

#[test]
fn istio_path_patterns() {
    let e = engine(&policy(
        "[[rules]]\nname = \"prefix\"\npaths = [\"/mod*\"]\nallow = \"anyone\"\n[[rules]]\nname = \"suffix\"\npaths = [\"*/score\", \"*.json\"]\nallow = \"anyone\"\n[[rules]]\nname = \"deep\"\npaths = [\"/v2/infer*\"]\nallow = \"anyone\"\n",
    ));
    for allowed in [
        "/mod",
        "/models",
        "/modules/x",
        "/a/b/score",
        "/score",
        "/x.json",
        "/a/b.json",
        "/v2/infer",
        "/v2/inference/x",
    ] {
        assert_eq!(get(&e, allowed), "allow", "{allowed}");
    }
    // Allow rules keep their spelling: no case folding, no trailing `/`.
    for refused in [
        "/mo",
        "/Models",
        "/a/scores",
        "/a/score/",
        "/a/Score",
        "/x.JSON",
        "/x.json/",
        "/v2/Infer",
        "/v3/infer",
    ] {
        assert_eq!(get(&e, refused), "no_rule", "{refused}");
    }
    let e = engine(&policy(
        "[[rules]]\nname = \"everything\"\npaths = [\"*\"]\nallow = \"anyone\"\n",
    ));
    for path in ["/", "/a", "/a/b/c?x=1", "/%41"] {
        assert_eq!(get(&e, path), "allow", "{path}");
    }
}

#[test]
fn deny_rules_catch_every_spelling_of_the_new_patterns() {
    let e = engine(&policy(
        "[[rules]]\nname = \"d1\"\npaths = [\"/admin*\"]\ndeny = \"anyone\"\n[[rules]]\nname = \"d2\"\npaths = [\"*/delete\", \"*.bak\"]\ndeny = \"anyone\"\n[[rules]]\nname = \"open\"\npaths = [\"*\"]\nallow = \"anyone\"\n",
    ));
    for denied in [
        "/admin",
        "/Administrator",
        "/ADMIN/",
        "/m/delete",
        "/m/DELETE/",
        "/db.BAK",
        "/db.bak/",
    ] {
        assert_eq!(get(&e, denied), "explicit_deny", "{denied}");
    }
    assert_eq!(get(&e, "/m/deleted"), "allow");
}

// === headers ===

#[test]
fn header_value_patterns_as_istio_writes_them() {
    let e = engine(&policy(
        "[[rules]]\nname = \"r\"\nheaders = { \"x-a\" = \"v\", \"x-b\" = [\"p*\", \"*s\"], \"x-c\" = \"*\" }\nallow = \"anyone\"\n",
    ));
    let run = |h: &[(&str, &str)]| outcome(&e, "GET", "h", "/", h);
    assert_eq!(run(&[("x-a", "v"), ("x-b", "pq"), ("x-c", "1")]), "allow");
    assert_eq!(run(&[("x-a", "v"), ("x-b", "qs"), ("x-c", "1")]), "allow");
    // `*` is presence: an empty value is present.
    assert_eq!(run(&[("x-a", "v"), ("x-b", "p"), ("x-c", "")]), "allow");
    // Names fold case; an allow rule's condition needs the name as written (`x_a` alone is
    // not `x-a` to Envoy or Istio), while every `_` spelling still counts against it.
    assert_eq!(run(&[("X-A", "v"), ("x-b", "p"), ("X-C", "1")]), "allow");
    assert_eq!(run(&[("X_A", "v"), ("x-b", "p"), ("x_c", "1")]), "no_rule");
    assert_eq!(run(&[("x-a", "v"), ("x-b", "qq"), ("x-c", "1")]), "no_rule");
    assert_eq!(run(&[("x-a", "V"), ("x-b", "p"), ("x-c", "1")]), "no_rule");
    assert_eq!(run(&[("x-a", "v"), ("x-b", "p")]), "no_rule");
    // An allow rule needs every copy of a repeated header to match.
    assert_eq!(
        run(&[("x-a", "v"), ("x-b", "p1"), ("x-b", "zz"), ("x-c", "1")]),
        "no_rule"
    );
    assert_eq!(
        run(&[("x-a", "v"), ("x-b", "p1, zz"), ("x-c", "1")]),
        "no_rule"
    );
    assert_eq!(
        run(&[("x-a", "v"), ("x-b", "p1, as"), ("x-c", "1")]),
        "allow"
    );
    // A value that was not UTF-8 (U+FFFD after the filter's lossy read) never meets an
    // allow rule's prefix.
    assert_eq!(
        run(&[("x-a", "v"), ("x-b", "p\u{FFFD}"), ("x-c", "1")]),
        "no_rule"
    );
}

#[test]
fn deny_rule_header_patterns_match_any_copy() {
    let e = engine(&policy(
        "[[rules]]\nname = \"debug\"\nheaders = { \"x-debug\" = [\"1\", \"on*\"] }\ndeny = \"anyone\"\n[[rules]]\nname = \"open\"\nallow = \"anyone\"\n",
    ));
    let run = |h: &[(&str, &str)]| outcome(&e, "GET", "h", "/", h);
    assert_eq!(run(&[]), "allow");
    assert_eq!(run(&[("x-debug", "0")]), "allow");
    assert_eq!(run(&[("x-debug", "0"), ("x-debug", "1")]), "explicit_deny");
    assert_eq!(run(&[("x-debug", "0, 1")]), "explicit_deny");
    assert_eq!(run(&[("x_debug", "only")]), "explicit_deny");
    assert_eq!(run(&[("x-debug", "on\u{FFFD}")]), "explicit_deny");
}

#[test]
fn not_headers_exclude_in_the_reading_that_cannot_widen_access() {
    let e = engine(&policy(
        "[[rules]]\nname = \"r\"\nnot_headers = { \"x-debug\" = \"*\", \"x-env\" = [\"dev*\"] }\nallow = \"anyone\"\n",
    ));
    let run = |h: &[(&str, &str)]| outcome(&e, "GET", "h", "/", h);
    assert_eq!(run(&[]), "allow");
    assert_eq!(run(&[("x-env", "prod")]), "allow");
    // `"*"`: the header must be absent, whatever its value (empty, not UTF-8, `_` spelling).
    for value in ["1", "", "\u{FFFD}"] {
        assert_eq!(run(&[("x-debug", value)]), "no_rule", "{value:?}");
    }
    assert_eq!(run(&[("X_Debug", "1")]), "no_rule");
    // Any copy that matches excludes the request from an allow rule.
    assert_eq!(run(&[("x-env", "prod"), ("x-env", "dev1")]), "no_rule");
    assert_eq!(run(&[("x-env", "prod, dev1")]), "no_rule");

    let e = engine(&policy(
        "[[rules]]\nname = \"only-internal\"\nnot_headers = { \"x-internal\" = \"yes\" }\ndeny = \"anyone\"\n[[rules]]\nname = \"open\"\nallow = \"anyone\"\n",
    ));
    let run = |h: &[(&str, &str)]| outcome(&e, "GET", "h", "/", h);
    assert_eq!(run(&[("x-internal", "yes")]), "allow");
    assert_eq!(run(&[]), "explicit_deny");
    assert_eq!(run(&[("x-internal", "no")]), "explicit_deny");
    // A deny rule's exclusion needs every copy to match: one added copy is no way around it.
    assert_eq!(
        run(&[("x-internal", "no"), ("x-internal", "yes")]),
        "explicit_deny"
    );
    assert_eq!(run(&[("x-internal", "no, yes")]), "explicit_deny");
}

/// The old header matcher compared exact values only: `p*` matched the literal text `p*`.
#[test]
fn a_star_in_a_header_value_is_a_pattern_not_text() {
    let e = engine(&policy(
        "[[rules]]\nname = \"r\"\nheaders = { \"x-b\" = \"p*\" }\nallow = \"anyone\"\n",
    ));
    assert_eq!(
        outcome(&e, "GET", "h", "/", &[("x-b", "pq")]),
        "allow",
        "`p*` is a prefix"
    );
}

// === CORS preflight ===

fn preflight_policy(setting: &str) -> String {
    format!(
        "version = 1\n{setting}\n{ISSUER}\n[[rules]]\nname = \"score\"\npaths = [\"/score\"]\nallow = {{ roles_any = [\"scorer\"] }}\n[[rules]]\nname = \"no-interns\"\npaths = [\"/score\"]\ndeny = {{ roles_any = [\"intern\"] }}\n[[rules]]\nname = \"retired\"\npaths = [\"/retired\"]\ndeny = \"anyone\"\n[[rules]]\nname = \"retired-allow\"\npaths = [\"/retired\"]\nallow = \"authenticated\"\n"
    )
}

const PREFLIGHT: [(&str, &str); 2] = [
    ("origin", "https://app.example"),
    ("access-control-request-method", "POST"),
];

#[test]
fn cors_preflights_pass_without_a_token_when_the_policy_says_so() {
    let e = engine(&preflight_policy("cors_preflight = \"allow\""));
    let d = decide(&e, "OPTIONS", "h", "/score", &PREFLIGHT);
    assert!(d.allowed, "{d:?}");
    assert!(d.identity.is_none() && d.rule.is_none());
    // A deny rule naming everyone still applies.
    assert_eq!(
        outcome(&e, "OPTIONS", "h", "/retired", &PREFLIGHT),
        "explicit_deny"
    );
    // Not a preflight: no `origin`, an empty one, another method, a method override.
    assert_eq!(
        outcome(&e, "OPTIONS", "h", "/score", &PREFLIGHT[1..]),
        "no_token"
    );
    assert_eq!(
        outcome(
            &e,
            "OPTIONS",
            "h",
            "/score",
            &[("origin", ""), PREFLIGHT[1]]
        ),
        "no_token"
    );
    assert_eq!(outcome(&e, "POST", "h", "/score", &PREFLIGHT), "no_token");
    let overridden = [
        PREFLIGHT[0],
        PREFLIGHT[1],
        ("x-http-method-override", "POST"),
    ];
    assert_eq!(
        outcome(&e, "OPTIONS", "h", "/score", &overridden),
        "no_token"
    );
    // Ordinary requests are untouched.
    let bearer = format!("Bearer {}", token(&["scorer"]));
    assert_eq!(
        outcome(&e, "POST", "h", "/score", &[("authorization", &bearer)]),
        "allow"
    );
}

#[test]
fn cors_preflights_are_decided_by_the_rules_by_default() {
    let e = engine(&preflight_policy(""));
    assert_eq!(
        outcome(&e, "OPTIONS", "h", "/score", &PREFLIGHT),
        "no_token"
    );
    let e = engine(&preflight_policy("cors_preflight = \"rules\""));
    assert_eq!(
        outcome(&e, "OPTIONS", "h", "/score", &PREFLIGHT),
        "no_token"
    );
}

// === compiler ===

#[test]
fn patterns_that_cannot_be_meant_are_refused_with_hints() {
    for (field, value) in [
        ("paths", "/a*b"),
        ("paths", "/a/*/b"),
        ("paths", "**"),
        ("paths", ""),
        ("paths", "*/a/../b"),
        ("paths", "*{x}"),
        ("not_paths", "/x*y"),
        ("paths", "/a//*"),
    ] {
        let text = policy(&format!(
            "[[rules]]\nname = \"r\"\n{field} = [\"{value}\"]\nallow = \"anyone\"\n"
        ));
        assert_eq!(kinds(&text), ["bad_path"], "{value}");
        let found = diagnostics(&text);
        assert!(
            found[0].hint.as_deref().unwrap().contains("*.json"),
            "{value}"
        );
    }
    for value in ["a*b.example", "**", "", "a.example:*"] {
        let text = policy(&format!(
            "[[rules]]\nname = \"r\"\nnot_hosts = [\"{value}\"]\nallow = \"anyone\"\n"
        ));
        assert_eq!(kinds(&text), ["bad_host"], "{value}");
    }
    for value in [
        "\"a*b\"",
        "\"\"",
        "[]",
        "[\"ok\", \"**\"]",
        "\" p*\"",
        "\"*s \"",
    ] {
        let text = policy(&format!(
            "[[rules]]\nname = \"r\"\nheaders = {{ \"x-a\" = {value} }}\nallow = \"anyone\"\n"
        ));
        assert_eq!(kinds(&text), ["bad_header_value"], "{value}");
    }
    // The place and the hint of one of them.
    let text = policy(
        "[[rules]]\nname = \"r\"\nnot_headers = { \"x-a\" = \"a*b\" }\nallow = \"anyone\"\n",
    );
    let found = diagnostics(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("not_headers"))
        .unwrap()
        + 1;
    assert_eq!((found[0].line, found[0].column), (line, 25));
    // In a list, the pattern itself.
    let text = policy(
        "[[rules]]\nname = \"r\"\nheaders = { \"x-a\" = [\"ok\", \"a*b\"] }\nallow = \"anyone\"\n",
    );
    let found = diagnostics(&text);
    assert_eq!((found[0].line, found[0].column), (line, 28));
    assert!(found[0].message.contains("`a*b`"));
    assert!(found[0].hint.as_deref().unwrap().contains("prefix"));
}

#[test]
fn exclusions_that_exclude_everything_or_nothing() {
    for rule in [
        "methods = [\"GET\"]\nnot_methods = [\"get\"]",
        "hosts = [\"a.example\"]\nnot_hosts = [\"A.example\"]",
        "not_hosts = [\"*\"]",
        "paths = [\"/a\", \"/b/*\"]\nnot_paths = [\"/b/*\", \"/a\"]",
        "not_paths = [\"*\"]",
    ] {
        let text = policy(&format!(
            "[[rules]]\nname = \"r\"\n{rule}\nallow = \"anyone\"\n"
        ));
        assert_eq!(kinds(&text), ["exclusion_excludes_all"], "{rule}");
    }
    for rule in [
        "methods = [\"GET\"]\nnot_methods = [\"POST\"]",
        "hosts = [\"a.example\"]\nnot_hosts = [\"b.example\"]",
        "paths = [\"/a/*\"]\nnot_paths = [\"/b\"]",
    ] {
        let text = policy(&format!(
            "[[rules]]\nname = \"r\"\n{rule}\nallow = \"anyone\"\n"
        ));
        assert_eq!(kinds(&text), ["useless_exclusion"], "{rule}");
    }
    let text = policy(
        "[[rules]]\nname = \"r\"\nheaders = { \"x-a\" = [\"1\", \"2\"] }\nnot_headers = { \"X-A\" = \"2\" }\nallow = \"anyone\"\n",
    );
    assert_eq!(kinds(&text), ["contradictory_header"]);
    // Exclusions on identity headers are refused like conditions on them.
    let text = policy(
        "[[rules]]\nname = \"r\"\nnot_headers = { \"x_claimgate_subject\" = \"*\" }\nallow = \"anyone\"\n",
    );
    assert_eq!(kinds(&text), ["identity_header_rule"]);
}

#[test]
fn misspelt_fields_get_a_did_you_mean() {
    let text = policy("[[rules]]\nname = \"r\"\nnot_path = [\"/a\"]\nallow = \"anyone\"\n");
    let found = diagnostics(&text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].hint.as_deref().unwrap().contains("not_paths"),
        "{found:#?}"
    );
    let text = format!("version = 1\ncors_prefligth = \"allow\"\n{ISSUER}");
    let found = diagnostics(&text);
    assert!(
        found[0].hint.as_deref().unwrap().contains("cors_preflight"),
        "{found:#?}"
    );
    let text = format!("version = 1\ncors_preflight = \"always\"\n{ISSUER}");
    assert_eq!(diagnostics(&text).len(), 1);
}

#[test]
fn a_narrow_header_reading_needs_the_name_as_written() {
    // An allow rule's condition: `x_internal_caller` is not `x-internal-caller` to Envoy or
    // Istio, and an edge proxy that strips the one may pass the other.
    let e = engine(&policy(
        "[[rules]]\nname = \"internal\"\nheaders = { \"x-internal-caller\" = \"gateway\" }\nallow = \"anyone\"\n",
    ));
    let allow = |headers: &[(&str, &str)]| outcome(&e, "GET", "h.example", "/x", headers);
    assert_eq!(allow(&[("x-internal-caller", "gateway")]), "allow");
    assert_eq!(allow(&[("x_internal_caller", "gateway")]), "no_rule");
    // Every spelling still counts against it (an upstream may read `x_…` as `x-…`).
    assert_eq!(
        allow(&[
            ("x-internal-caller", "gateway"),
            ("x_internal_caller", "evil")
        ]),
        "no_rule"
    );
    // A deny rule's exclusion is read narrowly too: `x_debug` does not excuse a request.
    let e = engine(&policy(
        "[[rules]]\nname = \"deny-debug\"\npaths = [\"/api/*\"]\nnot_headers = { \"x-debug\" = \"*\" }\ndeny = \"anyone\"\n[[rules]]\nname = \"open\"\npaths = [\"/*\"]\nallow = \"anyone\"\n",
    ));
    let deny = |headers: &[(&str, &str)]| outcome(&e, "GET", "h.example", "/api/x", headers);
    assert_eq!(deny(&[]), "explicit_deny");
    assert_eq!(deny(&[("x-debug", "1")]), "allow");
    assert_eq!(deny(&[("x_debug", "1")]), "explicit_deny");
}
