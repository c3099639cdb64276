#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! Issue 10, identity side, at `explain` level (the engine with a trace, through the blob as
//! the filter loads it): verify a token when present, `statuses`, named-claim conditions,
//! excluded principals, `unauthenticated`, and the allow/deny/default matrix.

use claimgate_core::blob;
use claimgate_core::compile::compile;
use claimgate_core::engine::{Decision, Engine, RemoteKeys, Request};
use jwt_simple::prelude::*;
use serde_json::{Value, json};

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://idp.example.com";
/// 32 zero bytes, base64url: the HS256 secret of the test issuer.
const SECRET: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// The policy head every test starts from: one HS256 issuer `idp` (audience `api`) and a
/// remote-keys issuer `remote` whose keys never arrive. `{head}` goes before the tables.
fn policy(head: &str, rules: &str) -> String {
    format!(
        r#"version = 1
{head}
[issuers.idp]
issuer = "{ISS}"
audiences = ["api"]
algorithms = ["HS256"]
hmac_secret = "{SECRET}"
roles = ["realm_access.roles", "groups"]
scopes = ["scope"]

[issuers.remote]
issuer = "https://remote.example.com"
audiences = ["api"]
algorithms = ["RS256"]
[issuers.remote.jwks]
uri = "https://remote.example.com/keys"
cluster = "outbound|443||remote.example.com"
before_first_fetch = "reject"

{rules}
"#
    )
}

fn engine(text: &str) -> Engine {
    let compiled = compile(text, "policy.toml", &|name: &str| {
        Err(format!("no `{name}`"))
    })
    .unwrap_or_else(|d| panic!("{d:#?}\n{text}"));
    let config = serde_json::to_vec(&blob::plugin_config(&compiled.policy).unwrap()).unwrap();
    blob::engine_from_plugin_config(&config).unwrap()
}

/// A signed token with the base claims (`sub` alice, audience `api`, valid now) changed by
/// `extra` (a `null` removes a claim).
fn token(extra: Value) -> String {
    let mut claims = json!({"iss": ISS, "sub": "alice", "aud": "api",
                            "iat": NOW - 10, "exp": NOW + 600});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    let claims: JWTClaims<serde_json::Map<String, Value>> = serde_json::from_value(claims).unwrap();
    HS256Key::from_bytes(&[0u8; 32])
        .authenticate(claims)
        .unwrap()
}

fn expired() -> String {
    token(json!({"iat": NOW - 7200, "exp": NOW - 3600}))
}

/// A token signed with another key.
fn forged() -> String {
    let claims: JWTClaims<serde_json::Map<String, Value>> = serde_json::from_value(
        json!({"iss": ISS, "sub": "mallory", "aud": "api", "iat": NOW - 10, "exp": NOW + 600}),
    )
    .unwrap();
    HS256Key::from_bytes(&[7u8; 32])
        .authenticate(claims)
        .unwrap()
}

fn decide(engine: &Engine, method: &str, path: &str, token: Option<&str>) -> Decision {
    let headers: Vec<(String, String)> = token
        .map(|t| vec![("authorization".to_owned(), format!("Bearer {t}"))])
        .unwrap_or_default();
    let request = Request {
        method,
        host: "api.example.com",
        path,
        headers: &headers,
    };
    let mut trace = Vec::new();
    engine.decide(&request, NOW, &RemoteKeys::default(), Some(&mut trace))
}

/// `(status, code)` as `explain` shows them: the status the filter sends.
fn answer(d: &Decision) -> (u16, &'static str) {
    (d.status(), d.reason.as_ref().map_or("allow", |r| r.code()))
}

fn get(engine: &Engine, path: &str, token: Option<&str>) -> (u16, &'static str) {
    answer(&decide(engine, "GET", path, token))
}

const PUBLIC: &str = r#"
[[rules]]
name = "health"
paths = ["/health"]
allow = "anyone"
"#;

// ---------------------------------------------------------------------------------------
// 1. Verify a token when present.

/// Issue 10 item 1: an expired or forged token passed an `anyone` rule (the rule never looked
/// at it). Fails on the code before `[token] verify`.
#[test]
fn a_present_invalid_token_is_refused_on_a_public_path() {
    let e = engine(&policy("", PUBLIC));
    assert_eq!(get(&e, "/health", None), (200, "allow"));
    assert_eq!(get(&e, "/health", Some(&expired())), (401, "expired"));
    assert_eq!(get(&e, "/health", Some(&forged())), (401, "bad_signature"));
    assert_eq!(
        get(&e, "/health", Some("garbage")),
        (401, "malformed_token")
    );
    let d = decide(&e, "GET", "/health", Some(&expired()));
    assert_eq!(d.rule.as_deref(), Some("health"));
    assert!(
        d.response()
            .unwrap()
            .www_authenticate
            .unwrap()
            .contains("invalid_token")
    );
}

/// The `allow` default and an `anyone` deny do not save or pre-empt an invalid token either.
#[test]
fn a_present_invalid_token_beats_the_allow_default_and_an_anyone_deny() {
    let rules = r#"
[[rules]]
name = "retired"
paths = ["/retired"]
deny = "anyone"
"#;
    let e = engine(&policy("default = \"allow\"", rules));
    assert_eq!(get(&e, "/anything", None), (200, "allow"));
    assert_eq!(get(&e, "/anything", Some(&expired())), (401, "expired"));
    assert_eq!(get(&e, "/retired", None), (403, "explicit_deny"));
    assert_eq!(get(&e, "/retired", Some(&forged())), (401, "bad_signature"));
    assert_eq!(
        get(&e, "/retired", Some(&token(json!({})))),
        (403, "explicit_deny")
    );
    // An unknown issuer is an invalid token too.
    let other = token(json!({"iss": "https://elsewhere"}));
    assert_eq!(get(&e, "/anything", Some(&other)), (401, "unknown_issuer"));
}

#[test]
fn a_verified_caller_on_a_public_path_carries_its_identity_upstream() {
    let e = engine(&policy("", PUBLIC));
    let d = decide(&e, "GET", "/health", Some(&token(json!({}))));
    assert!(d.allowed);
    let identity = d.identity.as_deref().unwrap();
    assert_eq!(identity.subject, "alice");
    let headers = e.upstream_headers(&d);
    assert!(
        headers
            .iter()
            .any(|(n, v)| *n == "x-claimgate-subject" && v == "alice"),
        "{headers:?}"
    );
    // Without a token: no identity, no identity headers.
    let d = decide(&e, "GET", "/health", None);
    assert!(d.allowed && d.identity.is_none() && e.upstream_headers(&d).is_empty());
}

/// `[token] identity_headers`: exactly the named identity headers are set, in the order
/// they are set by default; all six (`client` only when the token names one) without it.
#[test]
fn only_the_identity_headers_the_policy_names_are_set() {
    let names = |head: &str, extra: Value| -> Vec<String> {
        let e = engine(&policy(head, PUBLIC));
        let d = decide(&e, "GET", "/health", Some(&token(extra)));
        assert!(d.allowed && d.identity.is_some(), "{d:?}");
        e.upstream_headers(&d)
            .into_iter()
            .map(|(name, _)| name.to_owned())
            .collect()
    };
    let all = [
        "x-claimgate-subject",
        "x-claimgate-issuer",
        "x-claimgate-roles",
        "x-claimgate-rule",
        "x-claimgate-policy-version",
    ];
    assert_eq!(names("", json!({})), all);
    assert_eq!(
        names("", json!({"azp": "scoring-app"})),
        [&all[..2], &["x-claimgate-client"], &all[2..]].concat()
    );
    let some = "[token]\nidentity_headers = [\"roles\", \"subject\"]";
    assert_eq!(
        names(some, json!({"azp": "scoring-app"})),
        ["x-claimgate-roles", "x-claimgate-subject"]
    );
    let client_only = "[token]\nidentity_headers = [\"client\"]";
    assert!(names(client_only, json!({})).is_empty());
    assert_eq!(
        names(client_only, json!({"azp": "scoring-app"})),
        ["x-claimgate-client"]
    );
    assert!(names("[token]\nidentity_headers = []", json!({})).is_empty());
}

#[test]
fn when_required_keeps_the_old_behaviour_and_a_rule_can_tighten_it() {
    let rules = r#"
[[rules]]
name = "health"
paths = ["/health"]
allow = "anyone"

[[rules]]
name = "status"
paths = ["/status"]
verify_token = "when_present"
allow = "anyone"
"#;
    let e = engine(&policy(
        "default = \"allow\"\n[token]\nverify = \"when_required\"",
        rules,
    ));
    assert_eq!(get(&e, "/health", Some(&expired())), (200, "allow"));
    assert_eq!(get(&e, "/anything", Some(&expired())), (200, "allow"));
    assert_eq!(get(&e, "/status", Some(&expired())), (401, "expired"));
    // `when_required` still verifies where a rule needs an identity.
    let d = decide(&e, "GET", "/health", Some(&expired()));
    assert!(d.identity.is_none());
}

/// A rule relaxes only where every matched enforcing rule relaxes.
#[test]
fn relaxing_works_only_where_every_matched_rule_relaxes() {
    let rules = r#"
[[rules]]
name = "public-relaxed"
paths = ["/p/*"]
verify_token = "when_required"
allow = "anyone"

[[rules]]
name = "public-strict"
paths = ["/p/strict"]
allow = "anyone"
"#;
    let e = engine(&policy("", rules));
    assert_eq!(get(&e, "/p/loose", Some(&expired())), (200, "allow"));
    assert_eq!(get(&e, "/p/strict", Some(&expired())), (401, "expired"));
    // No token: public either way.
    assert_eq!(get(&e, "/p/strict", None), (200, "allow"));
}

/// Audit mode keeps its split: the policy-wide audit passes the request (denied, not
/// enforced); an audit rule never changes the enforced decision, only the shadow.
#[test]
fn verification_failures_keep_the_audit_split() {
    let e = engine(&policy("mode = \"audit\"", PUBLIC));
    let d = decide(&e, "GET", "/health", Some(&expired()));
    assert!(!d.allowed && !d.enforced && d.passes());
    assert_eq!(d.status(), 200);
    assert_eq!(d.reason.as_ref().unwrap().code(), "expired");

    let rules = r#"
[[rules]]
name = "health"
paths = ["/health"]
allow = "anyone"

[[rules]]
name = "strict-audit"
paths = ["/health"]
audit = true
verify_token = "when_present"
allow = "anyone"
"#;
    let e = engine(&policy("[token]\nverify = \"when_required\"", rules));
    let d = decide(&e, "GET", "/health", Some(&expired()));
    assert!(d.allowed && d.enforced, "{d:?}");
    let shadow = d.shadow.unwrap();
    assert!(!shadow.allowed);
    assert_eq!(shadow.reason.unwrap().code(), "expired");
    // The other way round: the enforcing rule verifies, the audit rule relaxes; the
    // enforced decision still refuses.
    let rules = r#"
[[rules]]
name = "health"
paths = ["/health"]
allow = "anyone"

[[rules]]
name = "relaxed-audit"
paths = ["/health"]
audit = true
verify_token = "when_required"
allow = "anyone"
"#;
    let e = engine(&policy("", rules));
    let d = decide(&e, "GET", "/health", Some(&expired()));
    assert_eq!(answer(&d), (401, "expired"));
    assert!(d.enforced);
}

// ---------------------------------------------------------------------------------------
// 6. Statuses.

const NEEDS_TOKEN: &str = r#"
[[rules]]
name = "score"
paths = ["/score"]
allow = "authenticated"

[[rules]]
name = "remote"
paths = ["/remote"]
allow = { issuers = ["remote"] }
"#;

#[test]
fn claimgate_statuses_by_default() {
    let e = engine(&policy("", NEEDS_TOKEN));
    let d = decide(&e, "POST", "/score", None);
    assert_eq!(answer(&d), (401, "no_token"));
    assert_eq!(
        d.response().unwrap().www_authenticate.as_deref(),
        Some("Bearer")
    );
    let aud = token(json!({"aud": "other"}));
    assert_eq!(get(&e, "/score", Some(&aud)), (401, "wrong_audience"));
    let remote = remote_token();
    assert_eq!(get(&e, "/remote", Some(&remote)), (503, "keys_unavailable"));
}

/// An RS256-headed token of the remote issuer (its keys never arrive, so the signature is
/// never looked at).
fn remote_token() -> String {
    use base64::Engine as _;
    let b64 = |v: Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!(
        "{}.{}.c2ln",
        b64(json!({"alg": "RS256", "kid": "k1"})),
        b64(
            json!({"iss": "https://remote.example.com", "sub": "bob", "aud": "api",
                   "iat": NOW - 10, "exp": NOW + 600})
        )
    )
}

#[test]
fn istio_statuses_change_only_status_and_header() {
    let e = engine(&policy("statuses = \"istio\"", NEEDS_TOKEN));
    let d = decide(&e, "POST", "/score", None);
    assert_eq!(answer(&d), (403, "no_token"));
    assert_eq!(d.response().unwrap().www_authenticate, None);
    let aud = token(json!({"aud": "other"}));
    assert_eq!(get(&e, "/score", Some(&aud)), (403, "wrong_audience"));
    assert_eq!(
        get(&e, "/remote", Some(&remote_token())),
        (401, "keys_unavailable")
    );
    // Everything else as claimgate answers it.
    assert_eq!(get(&e, "/score", Some(&expired())), (401, "expired"));
    assert_eq!(get(&e, "/nothing", None), (403, "no_rule"));
    assert_eq!(get(&e, "/score", Some(&token(json!({})))), (200, "allow"));
}

// ---------------------------------------------------------------------------------------
// 2. Conditions on named claims.

/// Issue 10 item 4: a value in any role claim satisfied a condition meant for one claim
/// (`roles_any` pools `realm_access.roles` and `groups`). `claims` reads that claim only.
#[test]
fn a_claim_condition_reads_that_claim_only() {
    let rules = r#"
[[rules]]
name = "admins"
paths = ["/admin"]
allow = { claims = { "realm_access.roles" = ["admin"] } }

[[rules]]
name = "pooled"
paths = ["/pooled"]
allow = { roles_any = ["admin"] }
"#;
    let e = engine(&policy("", rules));
    let in_groups = token(json!({"groups": ["admin"]}));
    let in_realm = token(json!({"realm_access": {"roles": ["user", "admin"]}}));
    // The pooled role condition cannot tell the claims apart; the claim condition can.
    assert_eq!(get(&e, "/pooled", Some(&in_groups)), (200, "allow"));
    assert_eq!(
        get(&e, "/admin", Some(&in_groups)),
        (403, "claim_not_allowed")
    );
    assert_eq!(get(&e, "/admin", Some(&in_realm)), (200, "allow"));
    assert_eq!(get(&e, "/admin", None), (401, "no_token"));
}

#[test]
fn claim_value_patterns_and_types() {
    let rules = r#"
[[rules]]
name = "corp"
paths = ["/corp"]
allow = { claims = { tid = ["72f9", "a1b2"], email = ["*@corp.com"], "org.unit" = ["ml-*"] } }

[[rules]]
name = "present"
paths = ["/present"]
allow = { claims = { tid = ["*"] } }

[[rules]]
name = "scoped"
paths = ["/scoped"]
allow = { claims = { scope = ["score"] } }
"#;
    let e = engine(&policy("", rules));
    let good = json!({"tid": "72f9", "email": "bob@corp.com", "org": {"unit": "ml-ops"}});
    assert_eq!(get(&e, "/corp", Some(&token(good.clone()))), (200, "allow"));
    for (claim, bad) in [
        ("tid", json!("72f")),
        ("email", json!("bob@corp.com.evil")),
        ("org", json!({"unit": "hr"})),
        ("tid", json!(72)),
        ("tid", Value::Null),
    ] {
        let mut claims = good.clone();
        claims[claim] = bad.clone();
        assert_eq!(
            get(&e, "/corp", Some(&token(claims))),
            (403, "claim_not_allowed"),
            "{claim} = {bad}"
        );
    }
    // An array claim: one element suffices.
    let tids = token(json!({"tid": ["x", "a1b2"], "email": "a@corp.com", "org": {"unit": "ml-x"}}));
    assert_eq!(get(&e, "/corp", Some(&tids)), (200, "allow"));
    // `*`: present with any string value; a number or an object is no string value.
    assert_eq!(
        get(&e, "/present", Some(&token(json!({"tid": "t"})))),
        (200, "allow")
    );
    assert_eq!(
        get(&e, "/present", Some(&token(json!({"tid": 1})))),
        (403, "claim_not_allowed")
    );
    assert_eq!(
        get(&e, "/present", Some(&token(json!({})))),
        (403, "claim_not_allowed")
    );
    // Istio compiles a claim's `*` to the regex `.+`: an empty string is no value.
    assert_eq!(
        get(&e, "/present", Some(&token(json!({"tid": ""})))),
        (403, "claim_not_allowed")
    );
    // `scope` is split on spaces, as Istio does.
    let scoped = token(json!({"scope": "read score"}));
    assert_eq!(get(&e, "/scoped", Some(&scoped)), (200, "allow"));
}

#[test]
fn not_claims_exclude_and_an_absent_claim_satisfies_them() {
    let rules = r#"
[[rules]]
name = "strong-auth"
paths = ["/x"]
allow = { claims = { tid = ["t1"] }, not_claims = { acr = ["low", "guest*"] } }
"#;
    let e = engine(&policy("", rules));
    let with = |acr: Value| token(json!({"tid": "t1", "acr": acr}));
    assert_eq!(
        get(&e, "/x", Some(&token(json!({"tid": "t1"})))),
        (200, "allow")
    );
    assert_eq!(get(&e, "/x", Some(&with(json!("high")))), (200, "allow"));
    assert_eq!(
        get(&e, "/x", Some(&with(json!("low")))),
        (403, "claim_not_allowed")
    );
    assert_eq!(
        get(&e, "/x", Some(&with(json!(["high", "guest-1"])))),
        (403, "claim_not_allowed")
    );
    let d = decide(&e, "GET", "/x", Some(&with(json!("low"))));
    assert!(
        d.reason
            .unwrap()
            .to_string()
            .contains("excludes a value of claim `acr`")
    );
    // A deny rule on a claim: a tokenless caller is not named (negative conditions need a
    // verified token, SPEC10 item 4).
    let rules = r#"
[[rules]]
name = "open"
paths = ["/x"]
allow = "anyone"

[[rules]]
name = "no-guests"
paths = ["/x"]
deny = { claims = { acr = ["guest"] } }
"#;
    let e = engine(&policy("", rules));
    assert_eq!(get(&e, "/x", None), (200, "allow"));
    assert_eq!(
        get(&e, "/x", Some(&token(json!({"acr": "guest"})))),
        (403, "explicit_deny")
    );
    assert_eq!(
        get(&e, "/x", Some(&token(json!({"acr": "full"})))),
        (200, "allow")
    );
}

// ---------------------------------------------------------------------------------------
// 3. Excluded principals and `unauthenticated`.

#[test]
fn excluded_issuers_and_subjects() {
    let rules = r#"
[[rules]]
name = "not-remote"
paths = ["/a"]
allow = { not_issuers = ["remote"] }

[[rules]]
name = "not-bob"
paths = ["/b"]
allow = { not_subjects = ["bob"] }

[[rules]]
name = "deny-mallory"
paths = ["/b"]
deny = { issuers = ["idp"], subjects = ["mallory"] }
"#;
    let e = engine(&policy("", rules));
    assert_eq!(get(&e, "/a", Some(&token(json!({})))), (200, "allow"));
    assert_eq!(get(&e, "/b", Some(&token(json!({})))), (200, "allow"));
    assert_eq!(
        get(&e, "/b", Some(&token(json!({"sub": "bob"})))),
        (403, "subject_not_allowed")
    );
    assert_eq!(
        get(&e, "/b", Some(&token(json!({"sub": "mallory"})))),
        (403, "explicit_deny")
    );
    // Negative conditions still need a verified token.
    assert_eq!(get(&e, "/b", None), (401, "no_token"));
    let rules = r#"
[[rules]]
name = "not-idp"
paths = ["/a"]
allow = { not_issuers = ["idp"] }
"#;
    let e = engine(&policy("", rules));
    assert_eq!(
        get(&e, "/a", Some(&token(json!({})))),
        (403, "issuer_not_allowed")
    );
}

#[test]
fn unauthenticated_allow_and_deny() {
    let rules = r#"
[[rules]]
name = "anonymous-only"
paths = ["/signup"]
allow = "unauthenticated"

[[rules]]
name = "open"
paths = ["/data"]
allow = "anyone"

[[rules]]
name = "needs-token"
paths = ["/data"]
deny = "unauthenticated"
"#;
    for (head, no_token_status, www) in [("", 401, true), ("statuses = \"istio\"", 403, false)] {
        let e = engine(&policy(head, rules));
        assert_eq!(get(&e, "/signup", None), (200, "allow"));
        assert_eq!(
            get(&e, "/signup", Some(&token(json!({})))),
            (403, "token_present")
        );
        assert_eq!(get(&e, "/signup", Some(&expired())), (401, "expired"));
        let d = decide(&e, "GET", "/data", None);
        assert_eq!(answer(&d), (no_token_status, "no_token"), "{head}");
        assert_eq!(d.rule.as_deref(), Some("needs-token"));
        assert_eq!(d.response().unwrap().www_authenticate.is_some(), www);
        assert_eq!(get(&e, "/data", Some(&token(json!({})))), (200, "allow"));
    }
    // With `when_required`, a token that fails verification is not assumed absent: the
    // `unauthenticated` deny counts it as possibly naming the caller.
    let e = engine(&policy("[token]\nverify = \"when_required\"", rules));
    assert_eq!(get(&e, "/data", Some(&expired())), (401, "expired"));
    assert_eq!(get(&e, "/signup", Some(&expired())), (403, "token_present"));
}

// ---------------------------------------------------------------------------------------
// 4. The allow / deny / default matrix against Istio's documented semantics
// (istio.io "Authorization Policy" reference: CUSTOM, then DENY, then ALLOW; no policy →
// allow; an ALLOW policy present and no ALLOW match → deny; an empty `spec: {}` ALLOW
// policy matches nothing → deny all; `rules: [{}]` → allow all). In claimgate:
// - no policy           → `default = "allow"`, no rules
// - ALLOW policies       → `default = "deny"` (the default) + allow rules
// - only DENY policies   → `default = "allow"` + deny rules
// - `spec: {}` (allow nothing) → `default = "deny"`, no rules
// - `rules: [{}]` (allow all)  → a rule without conditions, `allow = "anyone"`

#[test]
fn allow_deny_default_matrix() {
    struct Row {
        istio: &'static str,
        head: &'static str,
        rules: &'static str,
        /// (path, token?, expected status, expected code)
        expect: &'static [(&'static str, bool, u16, &'static str)],
    }
    let rows = [
        Row {
            istio: "no AuthorizationPolicy",
            head: "default = \"allow\"",
            rules: "",
            expect: &[("/a", false, 200, "allow"), ("/a", true, 200, "allow")],
        },
        Row {
            istio: "empty ALLOW policy (spec: {}): deny all",
            head: "",
            rules: "",
            expect: &[("/a", false, 403, "no_rule"), ("/a", true, 403, "no_rule")],
        },
        Row {
            istio: "ALLOW with rules: [{}]: allow all",
            head: "",
            rules: "[[rules]]\nname = \"all\"\nallow = \"anyone\"\n",
            expect: &[("/a", false, 200, "allow"), ("/a", true, 200, "allow")],
        },
        Row {
            istio: "ALLOW requestPrincipals [*] on /a: other paths denied",
            head: "",
            rules: "[[rules]]\nname = \"a\"\npaths = [\"/a\"]\nallow = \"authenticated\"\n",
            expect: &[
                ("/a", true, 200, "allow"),
                ("/a", false, 401, "no_token"),
                ("/b", true, 403, "no_rule"),
                ("/b", false, 403, "no_rule"),
            ],
        },
        Row {
            istio: "DENY only (notRequestPrincipals [*] on /a): everything else allowed",
            head: "default = \"allow\"",
            rules: "[[rules]]\nname = \"d\"\npaths = [\"/a\"]\ndeny = \"unauthenticated\"\n",
            expect: &[
                ("/a", true, 200, "allow"),
                ("/a", false, 401, "no_token"),
                ("/b", true, 200, "allow"),
                ("/b", false, 200, "allow"),
            ],
        },
        Row {
            istio: "DENY only, principal-specific: a verified caller the deny does not name passes",
            head: "default = \"allow\"",
            rules: "[[rules]]\nname = \"d\"\npaths = [\"/a\"]\ndeny = { subjects = [\"mallory\"], issuers = [\"idp\"] }\n",
            expect: &[("/a", true, 200, "allow"), ("/a", false, 200, "allow")],
        },
        Row {
            istio: "DENY and ALLOW: DENY wins where both match; ALLOW decides elsewhere",
            head: "",
            rules: "[[rules]]\nname = \"allow-all\"\nallow = \"authenticated\"\n[[rules]]\nname = \"d\"\npaths = [\"/a\"]\ndeny = \"anyone\"\n",
            expect: &[
                ("/a", true, 403, "explicit_deny"),
                ("/b", true, 200, "allow"),
                ("/b", false, 401, "no_token"),
            ],
        },
    ];
    for row in rows {
        let e = engine(&policy(row.head, row.rules));
        let valid = token(json!({}));
        for &(path, with_token, status, code) in row.expect {
            let got = get(&e, path, with_token.then_some(valid.as_str()));
            assert_eq!(
                got,
                (status, code),
                "{}: {path} token={with_token}",
                row.istio
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Compiler diagnostics for the new fields.

fn errors(rules: &str) -> Vec<(String, usize, String)> {
    let text = policy("", rules);
    match compile(&text, "p.toml", &|_: &str| Err("none".to_owned())) {
        Ok(_) => Vec::new(),
        Err(d) => d
            .into_iter()
            .map(|d| (d.kind.to_owned(), d.line, d.hint.unwrap_or_default()))
            .collect(),
    }
}

#[test]
fn new_fields_are_checked_with_places_and_hints() {
    let rule = |principal: &str| {
        format!("[[rules]]\nname = \"r\"\npaths = [\"/x\"]\nallow = {principal}\n")
    };
    let line = policy("", "").lines().count() + 3;
    for (principal, kind, hint) in [
        (
            "{ claims = { tid = [\"a*b\"] } }",
            "bad_claim_value",
            "no `*` inside",
        ),
        (
            "{ claims = { \"a..b\" = [\"x\"] } }",
            "bad_claim_path",
            "quote a name",
        ),
        ("{ claims = { tid = [] } }", "empty_claim_values", "`\"*\"`"),
        ("{ not_claims = { tid = [\"\"] } }", "empty_name", "`\"*\"`"),
        ("{ not_issuers = [\"idq\"] }", "unknown_issuer", "idp"),
        (
            "\"unauthenticatd\"",
            "bad_principal",
            "did you mean `unauthenticated`",
        ),
    ] {
        let got = errors(&rule(principal));
        assert_eq!(got.len(), 1, "{principal}: {got:?}");
        let (k, l, h) = &got[0];
        assert_eq!((k.as_str(), *l), (kind, line), "{principal}");
        assert!(h.contains(hint), "{principal}: {h}");
    }
    let bad_mode = "[[rules]]\nname = \"r\"\nverify_token = \"always\"\nallow = \"anyone\"\n";
    assert!(!errors(bad_mode).is_empty());
}

/// `removed_upstream`: what a passing request loses before it goes upstream. Every spelling
/// of a header under the identity prefix (set by the policy or not), a claim header's client
/// copy, and only with `forward = false` the token's own header; nothing else.
#[test]
fn the_headers_removed_upstream_are_the_clients_identity_copies_and_the_token_when_kept_back() {
    let sent: [&[u8]; 7] = [
        b"authorization",
        b"x-claimgate-subject",
        b"X-Claimgate-Rule",
        b"x_claimgate_roles",
        b"x-claimgate-anything",
        b"x-tenant",
        b"x-request-id",
    ];
    let rules = "[[rules]]\nname = \"any\"\npaths = [\"/*\"]\nallow = \"anyone\"\n";
    let with_claims = |head: &str| {
        policy(head, rules).replacen(
            "roles = [\"realm_access.roles\", \"groups\"]\n",
            "roles = [\"realm_access.roles\", \"groups\"]\nclaims_to_headers = { \"x-tenant\" = \"tid\" }\n",
            1,
        )
    };
    assert!(with_claims("").contains("x-tenant"));
    let forwarded = engine(&with_claims("[token]\nidentity_headers = [\"subject\"]\n"));
    let identity: [&[u8]; 5] = [
        b"x-claimgate-subject",
        b"X-Claimgate-Rule",
        b"x_claimgate_roles",
        b"x-claimgate-anything",
        b"x-tenant",
    ];
    assert_eq!(forwarded.removed_upstream(sent), identity);
    let kept_back = engine(&with_claims("[token]\nforward = false\n"));
    let mut with_token = vec![&b"authorization"[..]];
    with_token.extend(identity);
    assert_eq!(kept_back.removed_upstream(sent), with_token);
    // Token header names match in every spelling the engine reads a token from: without
    // case, and `_` as `-` (review finding: `x_token` authenticated, then went upstream).
    assert_eq!(
        kept_back.removed_upstream([&b"Authorization"[..]]),
        [b"Authorization"]
    );
    let dashed = engine(&policy(
        "[token]\nforward = false\nheaders = [\"authorization\", { name = \"x-token\", prefix = \"Token \" }]\n",
        rules,
    ));
    let spellings: [&[u8]; 3] = [b"x-token", b"x_token", b"X_Token"];
    assert_eq!(dashed.removed_upstream(spellings), spellings);
    // The decision never sees the client's copies of identity and claim headers.
    let headers = [
        ("x-claimgate-rule", "admin"),
        ("x_tenant", "evil"),
        ("x-request-id", "r1"),
    ]
    .map(|(n, v)| (n.to_owned(), v.to_owned()));
    let seen = forwarded.headers_seen(&headers);
    assert_eq!(seen, [("x-request-id".to_owned(), "r1".to_owned())]);
}
