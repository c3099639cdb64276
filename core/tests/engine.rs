#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! Decision engine tests with real signed tokens: every deny reason, through the blob, as
//! the filter would take them.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use claimgate_core::blob;
use claimgate_core::compile::compile;
use claimgate_core::compiled::{IdentityHeader, StructureError};
use claimgate_core::engine::{Decision, Engine, RemoteKeys, Request};
use claimgate_core::keys::{KeySet, parse_jwks};
use jwt_simple::prelude::*;
use serde_json::{Value, json};

const NOW: u64 = 1_800_000_000;
const KC: &str = "https://login.example.com/realms/ml";
const ENTRA: &str = "https://login.microsoftonline.com/tid/v2.0";

struct Fixture {
    kc: ES256KeyPair,
    kc_other: ES256KeyPair,
    entra: ES256KeyPair,
    engine: Engine,
}

fn jwks(keys: &[(&ES256KeyPair, &str)]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(k, kid)| {
            let point = k.public_key().public_key().to_bytes_uncompressed();
            json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                   "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])})
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

const POLICY: &str = r#"
version = 1
[issuers.keycloak]
issuer = "https://login.example.com/realms/ml"
audiences = ["azureml-scoring"]
audience_claims = ["aud", "azp"]
algorithms = ["ES256"]
max_lifetime = "2h"
roles = ["realm_access.roles", "resource_access.azureml-scoring.roles"]
scopes = ["scope"]
[issuers.keycloak.jwks]
file = "kc.json"

[issuers.entra]
issuer = "https://login.microsoftonline.com/tid/v2.0"
audiences = ["https://ml.azure.com"]
algorithms = ["ES256"]
roles = ["roles", "groups"]
scopes = ["scp"]
subject_claim = "oid"
[issuers.entra.jwks]
file = "entra.json"

[[rules]]
name = "fraud-blue"
hosts = ["fraud.westeurope.inference.ml.azure.com"]
methods = ["POST"]
paths = ["/score"]
headers = { "azureml-model-deployment" = "blue" }
allow = { issuers = ["keycloak", "entra"], roles_any = ["ml-scorer"] }

[[rules]]
name = "kserve"
paths = ["/v1/models/{model}:predict", "/v2/models/{model}/infer"]
allow = { roles_any = ["model.{model}.invoke", "ml-admin"] }

[[rules]]
name = "scoped"
paths = ["/scoped"]
allow = { scopes_all = ["score:write"] }

[[rules]]
name = "entra-only"
paths = ["/entra"]
allow = { issuers = ["entra"] }

[[rules]]
name = "health"
paths = ["/", "/v2/health/*"]
allow = "anyone"

[[rules]]
name = "no-interns"
paths = ["/v2/models/{model}/infer"]
deny = { roles_any = ["intern"] }

[[rules]]
name = "retired"
paths = ["/v1/models/legacy:predict"]
deny = "anyone"

[[rules]]
name = "shadow-test"
paths = ["/audited/*"]
audit = true
allow = { roles_any = ["auditor"] }

[revoked]
token_ids = ["leaked-jti"]

[revoked.subjects]
keycloak = ["retired-pipeline"]
"#;

fn fixture() -> Fixture {
    fixture_with("")
}

/// The fixture with extra rules (TOML) inserted before `[revoked]`.
fn fixture_with(extra_rules: &str) -> Fixture {
    fixture_of(&POLICY.replace("[revoked]", &format!("{extra_rules}\n[revoked]")))
}

/// A fixture for a whole policy text (its issuers as in [`POLICY`]).
fn fixture_of(policy: &str) -> Fixture {
    let kc = ES256KeyPair::generate().with_key_id("kc-1");
    let kc_other = ES256KeyPair::generate().with_key_id("kc-1");
    let entra = ES256KeyPair::generate().with_key_id("entra-1");
    let files: HashMap<&str, String> = HashMap::from([
        ("kc.json", jwks(&[(&kc, "kc-1")])),
        ("entra.json", jwks(&[(&entra, "entra-1")])),
    ]);
    let reader = |name: &str| files.get(name).cloned().ok_or_else(|| "missing".to_owned());
    let compiled = compile(policy, "policy.toml", &reader).unwrap();
    let config = serde_json::to_vec(&blob::plugin_config(&compiled.policy).unwrap()).unwrap();
    let engine = blob::engine_from_plugin_config(&config).unwrap();
    Fixture {
        kc,
        kc_other,
        entra,
        engine,
    }
}

fn claims(extra: Value) -> JWTClaims<serde_json::Map<String, Value>> {
    let mut base = json!({"iss": KC, "sub": "alice", "azp": "azureml-scoring", "aud": "account",
                          "iat": NOW - 10, "exp": NOW + 600,
                          "realm_access": {"roles": ["ml-scorer"]}});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    serde_json::from_value(base).unwrap()
}

fn decide(
    f: &Fixture,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    token: Option<&str>,
) -> Decision {
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(token) = token {
        headers.push(("authorization".into(), format!("Bearer {token}")));
    }
    let request = Request {
        method,
        host,
        path,
        headers: &headers,
    };
    let mut trace = Vec::new();
    f.engine
        .decide(&request, NOW, &RemoteKeys::default(), Some(&mut trace))
}

fn code(d: &Decision) -> &'static str {
    d.reason.as_ref().map_or("allow", |r| r.code())
}

fn status(d: &Decision) -> u16 {
    d.reason.as_ref().map_or(200, |r| r.response().status)
}

fn sign(key: &ES256KeyPair, extra: Value) -> String {
    key.sign(claims(extra)).unwrap()
}

const AML: &str = "fraud.westeurope.inference.ml.azure.com";
const BLUE: &[(&str, &str)] = &[("azureml-model-deployment", "blue")];

#[test]
fn keycloak_token_with_realm_role_is_allowed_via_azp() {
    let f = fixture();
    let d = decide(
        &f,
        "POST",
        AML,
        "/score",
        BLUE,
        Some(&sign(&f.kc, json!({}))),
    );
    assert!(d.allowed, "{:?}", d.reason);
    assert_eq!(d.rule.as_deref(), Some("fraud-blue"));
    let id = d.identity.unwrap();
    assert_eq!(
        (id.issuer.as_str(), id.subject.as_str()),
        ("keycloak", "alice")
    );
    assert_eq!(id.client.as_deref(), Some("azureml-scoring"));
}

#[test]
fn keycloak_client_role_counts() {
    let f = fixture();
    let t = sign(
        &f.kc,
        json!({"realm_access": null, "resource_access": {"azureml-scoring": {"roles": ["ml-scorer"]}}}),
    );
    assert!(decide(&f, "POST", AML, "/score", BLUE, Some(&t)).allowed);
}

#[test]
fn entra_token_with_app_role() {
    let f = fixture();
    let t = sign(
        &f.entra,
        json!({"iss": ENTRA, "aud": "https://ml.azure.com", "oid": "obj-1", "roles": ["ml-scorer"], "realm_access": null}),
    );
    let d = decide(&f, "POST", &format!("{AML}:443"), "/score", BLUE, Some(&t));
    assert!(d.allowed, "{:?}", d.reason);
    assert_eq!(d.identity.unwrap().subject, "obj-1");
}

/// Issue 8 defect 6: `sub` is unique per issuer only, so a subject revoked for Keycloak must
/// not lock out an Entra caller whose subject has the same text (and vice versa: revocation
/// of one issuer's subject never reaches another issuer's caller).
#[test]
fn revoked_subjects_are_scoped_by_issuer() {
    let f = fixture();
    let entra = sign(
        &f.entra,
        json!({"iss": ENTRA, "aud": "https://ml.azure.com", "oid": "retired-pipeline", "roles": ["ml-scorer"], "realm_access": null}),
    );
    let d = decide(&f, "POST", AML, "/score", BLUE, Some(&entra));
    assert!(d.allowed, "{:?}", d.reason);
    let keycloak = sign(&f.kc, json!({"sub": "retired-pipeline"}));
    let d = decide(&f, "POST", AML, "/score", BLUE, Some(&keycloak));
    assert_eq!(code(&d), "revoked");
}

#[test]
fn unscoped_subjects_are_refused_in_multi_issuer_policies() {
    let policy = POLICY
        .replace(
            "[revoked.subjects]\nkeycloak = [\"retired-pipeline\"]",
            "subjects = [\"x\"]",
        )
        .replace(
            "[revoked]",
            "[[rules]]\nname = \"by-subject\"\npaths = [\"/by-subject\"]\nallow = { subjects = [\"alice\"] }\n\n[revoked]",
        );
    let reader = |_: &str| Ok(jwks(&[]));
    let errors = compile(&policy, "policy.toml", &reader).unwrap_err();
    let unscoped = errors
        .iter()
        .filter(|d| d.kind == "unscoped_subjects")
        .count();
    assert_eq!(unscoped, 2, "{errors:?}");
}

#[test]
fn entra_groups_overage_is_its_own_reason() {
    let f = fixture();
    let t = sign(
        &f.entra,
        json!({"iss": ENTRA, "aud": "https://ml.azure.com", "realm_access": null,
        "_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}}),
    );
    let d = decide(&f, "POST", AML, "/score", BLUE, Some(&t));
    assert_eq!((code(&d), status(&d)), ("groups_overage", 403));
}

#[test]
fn every_authentication_failure_has_its_reason() {
    let f = fixture();
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "no_token"),
        ("garbled", Some("not-a-jwt".into()), "malformed_token"),
        (
            "unknown issuer",
            Some(sign(&f.kc, json!({"iss": "https://evil.example.com"}))),
            "unknown_issuer",
        ),
        (
            "wrong audience",
            Some(sign(&f.kc, json!({"azp": "other-client"}))),
            "wrong_audience",
        ),
        (
            "expired",
            Some(sign(&f.kc, json!({"iat": NOW - 4000, "exp": NOW - 3000}))),
            "expired",
        ),
        (
            "not yet valid",
            Some(sign(&f.kc, json!({"nbf": NOW + 3000}))),
            "not_yet_valid",
        ),
        (
            "issued in the future",
            Some(sign(&f.kc, json!({"iat": NOW + 3000, "exp": NOW + 4000}))),
            "not_yet_valid",
        ),
        (
            "lifetime too long",
            Some(sign(&f.kc, json!({"iat": NOW - 10, "exp": NOW + 86_400}))),
            "lifetime_too_long",
        ),
        (
            "no exp",
            Some(sign(&f.kc, json!({"exp": null}))),
            "missing_expiry",
        ),
        (
            "bad signature",
            Some(sign(&f.kc_other, json!({}))),
            "bad_signature",
        ),
        (
            "unknown kid",
            Some(
                ES256KeyPair::from_bytes(&f.kc.to_bytes())
                    .unwrap()
                    .with_key_id("rotated-away")
                    .sign(claims(json!({})))
                    .unwrap(),
            ),
            "unknown_key",
        ),
        (
            "revoked subject",
            Some(sign(&f.kc, json!({"sub": "retired-pipeline"}))),
            "revoked",
        ),
        (
            "revoked jti",
            Some(sign(&f.kc, json!({"jti": "leaked-jti"}))),
            "revoked",
        ),
    ];
    for (name, token, expected) in cases {
        let d = decide(&f, "POST", AML, "/score", BLUE, token.as_deref());
        assert_eq!(code(&d), expected, "{name}: {:?}", d.reason);
        assert_eq!(status(&d), 401, "{name}");
        assert!(!d.allowed && d.enforced, "{name}");
    }
}

#[test]
fn tampered_payload_fails_the_signature() {
    let f = fixture();
    let token = sign(&f.kc, json!({}));
    let parts: Vec<&str> = token.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&json!({"iss": KC, "sub": "mallory", "azp": "azureml-scoring", "exp": NOW + 600, "realm_access": {"roles": ["ml-admin"]}})).unwrap(),
    );
    let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
    let d = decide(&f, "POST", AML, "/score", BLUE, Some(&tampered));
    assert_eq!(code(&d), "bad_signature");
}

#[test]
fn algorithm_attacks_are_refused() {
    let f = fixture();
    let token = sign(&f.kc, json!({}));
    let parts: Vec<&str> = token.split('.').collect();
    for header in [
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "HS256", "typ": "JWT", "kid": "kc-1"}),
        json!({"alg": "RS256", "typ": "JWT", "kid": "kc-1"}),
    ] {
        let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
        let forged = format!("{h}.{}.{}", parts[1], parts[2]);
        let d = decide(&f, "POST", AML, "/score", BLUE, Some(&forged));
        assert_eq!(code(&d), "algorithm_not_allowed", "{header}");
        // `alg: none` with an empty signature too.
        let unsigned = format!("{h}.{}.", parts[1]);
        assert_eq!(
            code(&decide(&f, "POST", AML, "/score", BLUE, Some(&unsigned))),
            "algorithm_not_allowed"
        );
    }
}

#[test]
fn authorization_failures_are_403() {
    let f = fixture();
    let no_role = sign(&f.kc, json!({"realm_access": {"roles": ["viewer"]}}));
    let d = decide(&f, "POST", AML, "/score", BLUE, Some(&no_role));
    assert_eq!(
        (code(&d), status(&d), d.rule.as_deref()),
        ("missing_role", 403, Some("fraud-blue"))
    );

    let d = decide(
        &f,
        "GET",
        "any",
        "/scoped",
        &[],
        Some(&sign(&f.kc, json!({"scope": "openid score:read"}))),
    );
    assert_eq!((code(&d), status(&d)), ("missing_scope", 403));
    let header = d.reason.unwrap().response().www_authenticate.unwrap();
    assert!(header.contains("insufficient_scope"), "{header}");
    assert!(
        decide(
            &f,
            "GET",
            "any",
            "/scoped",
            &[],
            Some(&sign(&f.kc, json!({"scope": "openid score:write"})))
        )
        .allowed
    );

    let d = decide(
        &f,
        "GET",
        "any",
        "/entra",
        &[],
        Some(&sign(&f.kc, json!({}))),
    );
    assert_eq!(code(&d), "issuer_not_allowed");
}

#[test]
fn unmatched_requests_follow_the_default() {
    let f = fixture();
    // Right path, wrong deployment header: fraud-blue does not match, nothing else does.
    let d = decide(
        &f,
        "POST",
        AML,
        "/score",
        &[("azureml-model-deployment", "green")],
        Some(&sign(&f.kc, json!({}))),
    );
    assert_eq!((code(&d), status(&d)), ("no_rule", 403));
    let d = decide(
        &f,
        "GET",
        AML,
        "/score",
        BLUE,
        Some(&sign(&f.kc, json!({}))),
    );
    assert_eq!(code(&d), "no_rule");
}

#[test]
fn templated_roles_follow_the_path() {
    let f = fixture();
    let fraud = sign(
        &f.kc,
        json!({"realm_access": {"roles": ["model.fraud.invoke"]}}),
    );
    let d = decide(
        &f,
        "POST",
        "kserve.local",
        "/v2/models/fraud/infer",
        &[],
        Some(&fraud),
    );
    assert!(d.allowed, "{:?}", d.reason);
    assert_eq!(d.captures, vec![("model".to_owned(), "fraud".to_owned())]);
    assert!(
        decide(
            &f,
            "POST",
            "kserve.local",
            "/v1/models/fraud:predict",
            &[],
            Some(&fraud)
        )
        .allowed
    );
    let d = decide(
        &f,
        "POST",
        "kserve.local",
        "/v2/models/churn/infer",
        &[],
        Some(&fraud),
    );
    match d.reason {
        Some(claimgate_core::DenyReason::MissingRole { required, .. }) => {
            assert_eq!(required, vec!["model.churn.invoke", "ml-admin"])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn deny_rules_win() {
    let f = fixture();
    let intern = sign(
        &f.kc,
        json!({"realm_access": {"roles": ["model.fraud.invoke", "intern"]}}),
    );
    let d = decide(
        &f,
        "POST",
        "h",
        "/v2/models/fraud/infer",
        &[],
        Some(&intern),
    );
    assert_eq!(
        (code(&d), d.rule.as_deref()),
        ("explicit_deny", Some("no-interns"))
    );
    let admin = sign(&f.kc, json!({"realm_access": {"roles": ["ml-admin"]}}));
    let d = decide(
        &f,
        "POST",
        "h",
        "/v1/models/legacy:predict",
        &[],
        Some(&admin),
    );
    assert_eq!((code(&d), status(&d)), ("explicit_deny", 403));
    // Unconditional deny needs no token at all.
    assert_eq!(
        code(&decide(
            &f,
            "POST",
            "h",
            "/v1/models/legacy:predict",
            &[],
            None
        )),
        "explicit_deny"
    );
}

#[test]
fn public_paths_need_no_token() {
    let f = fixture();
    for path in ["/", "/v2/health/ready", "/v2/health/live?x=1"] {
        let d = decide(&f, "GET", "h", path, &[], None);
        assert!(d.allowed && d.identity.is_none(), "{path}");
    }
    // Issue 10: a present token is verified by default (`[token] verify = "when_present"`),
    // so a broken one is refused even on a public path...
    let d = decide(&f, "GET", "h", "/", &[], Some("garbage"));
    assert_eq!((code(&d), status(&d)), ("malformed_token", 401));
    // ...and with `when_required` it is not looked at there.
    let f = fixture_of(&POLICY.replace(
        "version = 1\n",
        "version = 1\n[token]\nverify = \"when_required\"\n",
    ));
    assert!(decide(&f, "GET", "h", "/", &[], Some("garbage")).allowed);
}

#[test]
fn unnormalized_paths_are_refused() {
    let f = fixture();
    let d = decide(
        &f,
        "GET",
        "h",
        "/v2/health/../../v1/models/legacy:predict",
        &[],
        None,
    );
    assert_eq!((code(&d), status(&d)), ("unnormalized_path", 400));
}

#[test]
fn audit_rules_decide_but_do_not_block() {
    let f = fixture();
    let d = decide(
        &f,
        "GET",
        "h",
        "/audited/report",
        &[],
        Some(&sign(&f.kc, json!({}))),
    );
    // The audit rule is the only one matching: without it nothing matches and the default
    // (deny) decides. It is evaluated in the shadow only, which is logged.
    assert_eq!((code(&d), status(&d)), ("no_rule", 403));
    assert!(d.enforced && !d.passes());
    let shadow = d.shadow.expect("an audit rule matched");
    assert_eq!(
        shadow.reason.as_ref().map(|r| r.code()),
        Some("missing_role")
    );
}

/// Issue 8 defect 1: a trial rule `/*`, audit, deny anyone made a token-less request pass.
#[test]
fn an_audit_deny_rule_never_turns_a_deny_into_a_pass() {
    let f = fixture_with(
        "[[rules]]\nname = \"trial\"\npaths = [\"/*\"]\naudit = true\ndeny = \"anyone\"\n",
    );
    let d = decide(&f, "POST", AML, "/score", BLUE, None);
    assert_eq!((code(&d), status(&d)), ("no_token", 401));
    assert!(!d.passes());
    let shadow = d.shadow.expect("the trial rule matched");
    assert_eq!(
        shadow.reason.as_ref().map(|r| r.code()),
        Some("explicit_deny")
    );
    // And the other way round: an allowed caller stays allowed.
    let t = sign(&f.kc, json!({}));
    let d = decide(&f, "POST", AML, "/score", BLUE, Some(&t));
    assert!(d.allowed && d.passes(), "{:?}", d.reason);
    assert!(!d.shadow.expect("matched").allowed);
}

/// Issue 8 defect 1: an audit deny rule naming a caller let that caller through a rule that
/// would otherwise refuse it.
#[test]
fn an_audit_deny_rule_naming_the_caller_changes_nothing() {
    let f = fixture_with(
        "[[rules]]\nname = \"trial-interns\"\npaths = [\"/score\"]\naudit = true\ndeny = { roles_any = [\"intern\"] }\n",
    );
    let t = sign(&f.kc, json!({"realm_access": {"roles": ["intern"]}}));
    let d = decide(&f, "POST", AML, "/score", BLUE, Some(&t));
    assert_eq!((code(&d), status(&d)), ("missing_role", 403));
    assert!(!d.passes());
}

/// Issue 8 defect 4: a deny rule that cannot be decided (groups overage) must deny.
#[test]
fn groups_overage_makes_a_deny_rule_apply() {
    let f = fixture_with(
        "[[rules]]\nname = \"blocked\"\npaths = [\"/entra\"]\ndeny = { roles_any = [\"blocked-group\"] }\n",
    );
    let overage = sign(
        &f.entra,
        json!({"iss": ENTRA, "aud": "https://ml.azure.com", "realm_access": null,
        "_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}}),
    );
    let d = decide(&f, "GET", "h", "/entra", &[], Some(&overage));
    assert_eq!((code(&d), status(&d)), ("groups_overage", 403));
    // A caller whose groups are all in the token is judged on them.
    let plain = sign(
        &f.entra,
        json!({"iss": ENTRA, "aud": "https://ml.azure.com", "realm_access": null, "groups": ["g1"]}),
    );
    assert!(decide(&f, "GET", "h", "/entra", &[], Some(&plain)).allowed);
    let blocked = sign(
        &f.entra,
        json!({"iss": ENTRA, "aud": "https://ml.azure.com", "realm_access": null, "groups": ["blocked-group"]}),
    );
    let d = decide(&f, "GET", "h", "/entra", &[], Some(&blocked));
    assert_eq!(code(&d), "explicit_deny");
}

#[test]
fn remote_keys_and_rotation() {
    // An issuer with only a remote key set: unavailable until fetched, then verified with the
    // fetched keys; a rotated key set replaces the old one.
    let old = ES256KeyPair::generate().with_key_id("old");
    let new = ES256KeyPair::generate().with_key_id("new");
    let policy = r#"
version = 1
[issuers.kc]
issuer = "https://login.example.com/realms/ml"
audiences = ["azureml-scoring"]
audience_claims = ["azp"]
algorithms = ["ES256"]
[issuers.kc.jwks]
uri = "https://login.example.com/realms/ml/protocol/openid-connect/certs"
cluster = "outbound|443||login.example.com"
[[rules]]
name = "all"
allow = "authenticated"
"#;
    let compiled = compile(policy, "p.toml", &|_: &str| Err("no files".to_owned())).unwrap();
    let (bytes, digest) = blob::encode(&compiled.policy).unwrap();
    let (decoded, _) = blob::decode(&bytes).unwrap();
    let engine = Engine::new(decoded, digest).unwrap();
    let token = old.sign(claims(json!({}))).unwrap();
    let headers = vec![("authorization".to_owned(), format!("Bearer {token}"))];
    let request = Request {
        method: "GET",
        host: "h",
        path: "/x",
        headers: &headers,
    };
    let mut remote = RemoteKeys::default();
    let d = engine.decide(&request, NOW, &remote, None);
    assert_eq!((code(&d), status(&d)), ("keys_unavailable", 503));

    let algs = &engine.policy().issuers[0].algorithms;
    remote.set(
        0,
        KeySet::prepare(&parse_jwks(&jwks(&[(&old, "old")])).unwrap().keys, algs),
    );
    assert!(engine.decide(&request, NOW, &remote, None).allowed);
    remote.set(
        0,
        KeySet::prepare(&parse_jwks(&jwks(&[(&new, "new")])).unwrap().keys, algs),
    );
    assert_eq!(
        code(&engine.decide(&request, NOW, &remote, None)),
        "unknown_key"
    );
}

#[test]
fn blob_refuses_corruption_with_reasons() {
    let f = fixture();
    let (bytes, _) = blob::encode(f.engine.policy()).unwrap();
    assert!(matches!(
        blob::decode(&bytes[..10]),
        Err(blob::DecodeError::TooShort(10))
    ));
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert_eq!(blob::decode(&bad).unwrap_err(), blob::DecodeError::BadMagic);
    let mut bad = bytes.clone();
    bad[4] = 9;
    assert!(matches!(
        blob::decode(&bad),
        Err(blob::DecodeError::UnsupportedVersion { found: 9 })
    ));
    // The digest (the header's last 32 bytes) no longer names the payload.
    let mut bad = bytes.clone();
    bad[37] ^= 1;
    assert_eq!(
        blob::decode(&bad).unwrap_err(),
        blob::DecodeError::DigestMismatch
    );
    // Past a valid digest: a deflated payload cut short, not DEFLATE at all, or one that
    // inflates without bound (cut off at the limit, never allocated whole).
    let wrap = |deflated: &[u8]| {
        let mut out = bytes[..6].to_vec();
        out.extend_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(deflated));
        out.extend_from_slice(deflated);
        out
    };
    assert_eq!(
        blob::decode(&wrap(&bytes[38..])).unwrap().1,
        blob::decode(&bytes).unwrap().1
    );
    let inflate_error = |blob: &[u8]| match blob::decode(blob) {
        Err(blob::DecodeError::Inflate(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        inflate_error(&wrap(&bytes[38..bytes.len() - 4])),
        "truncated"
    );
    assert_eq!(inflate_error(&wrap(&[0xff; 64])), "not a DEFLATE stream");
    // Bytes after the final block (an inflater ignores them): the same policy would decode
    // under any number of digests (found in review).
    let junk = [&bytes[38..], b"appended junk after the final block"].concat();
    assert!(inflate_error(&wrap(&junk)).ends_with("bytes after the final block"));
    let bomb = miniz_oxide::deflate::compress_to_vec(&vec![0u8; blob::MAX_PAYLOAD_BYTES + 1], 9);
    assert!(bomb.len() < 1_000_000, "{}", bomb.len());
    assert!(inflate_error(&wrap(&bomb)).starts_with("more than"));
    assert!(blob::engine_from_plugin_config(b"{}").is_err());
    assert!(blob::engine_from_plugin_config(b"not json").is_err());
    // An identity header named twice (found in review): each copy would be a host call.
    let mut twice = f.engine.policy().clone();
    twice.token.identity_headers = vec![IdentityHeader::Subject; 5];
    let (crafted, _) = blob::encode(&twice).unwrap();
    assert_eq!(
        blob::decode(&crafted).unwrap_err(),
        blob::DecodeError::Structure(StructureError::DuplicateIdentityHeader {
            header: IdentityHeader::Subject
        })
    );
}

#[test]
fn decisions_do_not_scan_unrelated_rules() {
    // 2,000 rules on distinct first segments: a request is only matched against its bucket.
    let mut policy = String::from("version = 1\n");
    for i in 0..2000 {
        policy.push_str(&format!(
            "[[rules]]\nname = \"r{i}\"\npaths = [\"/m{i}/infer\"]\nallow = \"anyone\"\n"
        ));
    }
    let compiled = compile(&policy, "p.toml", &|_: &str| Err(String::new())).unwrap();
    let engine = Engine::new(compiled.policy, String::new()).unwrap();
    let headers = vec![];
    let request = Request {
        method: "POST",
        host: "h",
        path: "/m1999/infer",
        headers: &headers,
    };
    let mut trace = Vec::new();
    let d = engine.decide(&request, NOW, &RemoteKeys::default(), Some(&mut trace));
    assert!(d.allowed);
    assert!(
        d.checks[0].detail.contains("1 candidate rule(s)"),
        "{}",
        d.checks[0].detail
    );
}

/// Issue 8 defect 5: percent-encoded unreserved characters no longer sidestep a deny rule;
/// `;` parameters are refused.
#[test]
fn encoded_paths_match_what_the_upstream_reads() {
    let f = fixture();
    let t = sign(
        &f.kc,
        json!({"realm_access": {"roles": ["model.legacy.invoke"]}}),
    );
    for path in [
        "/v1/models/legacy:predict",
        "/v1/models/leg%61cy:predict",
        "/v1/models/%6C%65%67%61%63%79%3Apredict",
    ] {
        let d = decide(&f, "POST", "h", path, &[], Some(&t));
        assert_eq!(code(&d), "explicit_deny", "{path}");
    }
    let d = decide(&f, "GET", "h", "/v2/health/..;/x", &[], None);
    assert_eq!((code(&d), status(&d)), ("path_parameters", 400));
    let d = decide(&f, "GET", "h", "/v2/health;x=1/ready", &[], None);
    assert_eq!((code(&d), status(&d)), ("path_parameters", 400));
    let d = decide(&f, "GET", "h", "/v2/health/%2e%2e/x", &[], None);
    assert_eq!((code(&d), status(&d)), ("unnormalized_path", 400));
}

/// Issue 8 defect 10: a host with two ports escaped a host-scoped rule.
#[test]
fn hosts_that_are_not_host_names_are_refused() {
    let f = fixture_with(
        "[[rules]]\nname = \"secure-closed\"\nhosts = [\"secure.example.com\"]\npaths = [\"/v2/health/*\"]\ndeny = \"anyone\"\n",
    );
    let d = decide(
        &f,
        "GET",
        "secure.example.com:80:80",
        "/v2/health/ready",
        &[],
        None,
    );
    assert_eq!((code(&d), status(&d)), ("invalid_host", 400));
    let d = decide(
        &f,
        "GET",
        "Secure.Example.com.:8080",
        "/v2/health/ready",
        &[],
        None,
    );
    assert_eq!(code(&d), "explicit_deny");
    let t = sign(&f.kc, json!({}));
    let d = decide(
        &f,
        "POST",
        &format!("{AML}:80:80"),
        "/score",
        BLUE,
        Some(&t),
    );
    assert_eq!((code(&d), status(&d)), ("invalid_host", 400));
    let d = decide(
        &f,
        "POST",
        &format!("{}.", AML.to_uppercase()),
        "/score",
        BLUE,
        Some(&t),
    );
    assert!(d.allowed, "{:?}", d.reason);
}

/// Issue 8 defect 10: two token headers are ambiguous (Envoy joins them; explain took the
/// first): refused, as Envoy refuses the joined value.
#[test]
fn two_authorization_headers_are_refused() {
    let f = fixture();
    let good = format!("Bearer {}", sign(&f.kc, json!({})));
    let headers = [
        ("azureml-model-deployment", "blue"),
        ("authorization", good.as_str()),
        ("authorization", "Bearer junk"),
    ];
    let d = decide(&f, "POST", AML, "/score", &headers, None);
    assert_eq!((code(&d), status(&d)), ("malformed_token", 401));
    let joined = format!("{good},Bearer junk");
    let headers = [
        ("azureml-model-deployment", "blue"),
        ("authorization", joined.as_str()),
    ];
    let d = decide(&f, "POST", AML, "/score", &headers, None);
    assert_eq!((code(&d), status(&d)), ("malformed_token", 401));
}

/// Issue 8 defect 10: rules never see the filter's own headers, in explain as in Envoy.
#[test]
fn identity_headers_sent_by_the_client_are_invisible_to_rules() {
    // The compiler refuses such a rule (`identity_header_rule`); a blob is input like any
    // other, so the rule is put into the compiled policy by hand.
    let f = fixture_with(
        "[[rules]]\nname = \"spoof-probe\"\npaths = [\"/spoof-probe\"]\nheaders = { \"x-probe-subject\" = \"root\" }\nallow = \"anyone\"\n",
    );
    let mut policy = f.engine.policy().clone();
    for rule in &mut policy.rules {
        for condition in &mut rule.headers {
            if condition.name == "x-probe-subject" {
                condition.name = "x-claimgate-subject".to_owned();
            }
        }
    }
    let (bytes, digest) = blob::encode(&policy).unwrap();
    let engine = Engine::new(blob::decode(&bytes).unwrap().0, digest).unwrap();
    let f = Fixture { engine, ..f };
    let d = decide(
        &f,
        "GET",
        "h",
        "/spoof-probe",
        &[("x-claimgate-subject", "root")],
        None,
    );
    assert_eq!(code(&d), "no_rule");
}

/// A repeated header is read the way that cannot widen access.
#[test]
fn repeated_headers_never_widen_access() {
    let f = fixture_with(
        "[[rules]]\nname = \"no-debug\"\npaths = [\"/score\"]\nheaders = { \"x-debug\" = \"1\" }\ndeny = \"anyone\"\n",
    );
    let t = sign(&f.kc, json!({}));
    let twice = [
        ("azureml-model-deployment", "blue"),
        ("x-debug", "0"),
        ("x-debug", "1"),
    ];
    assert_eq!(
        code(&decide(&f, "POST", AML, "/score", &twice, Some(&t))),
        "explicit_deny"
    );
    let two_deployments = [
        ("azureml-model-deployment", "blue"),
        ("azureml-model-deployment", "green"),
    ];
    assert_eq!(
        code(&decide(
            &f,
            "POST",
            AML,
            "/score",
            &two_deployments,
            Some(&t)
        )),
        "no_rule"
    );
}

/// Issue 8 defect 8: claims holding CR, LF, NUL or `,` reach the upstream percent-encoded,
/// never as a header Envoy refuses or a role list that splits differently.
#[test]
fn upstream_identity_values_cannot_be_refused_or_misread() {
    let f = fixture();
    let t = sign(
        &f.kc,
        json!({"sub": "alice\r\nx-admin: 1\u{0}", "azp": "azureml-scoring",
               "realm_access": {"roles": ["ml-scorer", "viewer,ml-admin"]}}),
    );
    let d = decide(&f, "POST", AML, "/score", BLUE, Some(&t));
    assert!(d.allowed, "{:?}", d.reason);
    let headers = f.engine.upstream_headers(&d);
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    };
    assert_eq!(
        get("x-claimgate-subject").as_deref(),
        Some("alice%0D%0Ax-admin:%201%00")
    );
    assert_eq!(
        get("x-claimgate-roles").as_deref(),
        Some("ml-scorer,viewer%2Cml-admin")
    );
    assert_eq!(get("x-claimgate-rule").as_deref(), Some("fraud-blue"));
    for (_, value) in &headers {
        assert!(
            value.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "{value:?}"
        );
    }
    // Nothing is sent for a denied request.
    let d = decide(&f, "POST", AML, "/score", &[], Some(&t));
    assert!(f.engine.upstream_headers(&d).is_empty());
}

/// Review finding: a deny rule must catch the spellings a lenient upstream routes to the same
/// handler (case, trailing slash, the bare directory of `/dir/*`); allow rules stay exact.
#[test]
fn deny_rules_catch_case_and_trailing_slash_variants() {
    let f = fixture_with(
        "[[rules]]\nname = \"admin-closed\"\npaths = [\"/admin\", \"/ops/*\"]\ndeny = \"anyone\"\n\n[[rules]]\nname = \"open\"\npaths = [\"/*\"]\nallow = \"anyone\"\n",
    );
    for path in [
        "/admin",
        "/admin/",
        "/Admin",
        "/ADMIN/",
        "/ops",
        "/OPS/x",
        "/v1/models/Legacy:Predict/",
    ] {
        let d = decide(&f, "GET", "h", path, &[], None);
        assert_eq!(code(&d), "explicit_deny", "{path}");
    }
    let t = sign(&f.kc, json!({}));
    // `fraud-blue` allows `/score` only as written.
    assert!(decide(&f, "POST", AML, "/score", BLUE, Some(&t)).allowed);
    let d = decide(&f, "POST", AML, "/SCORE", BLUE, Some(&t));
    assert_eq!(d.rule.as_deref(), Some("open"));
}

/// Review finding: an empty Host skipped every host-scoped deny rule.
#[test]
fn an_empty_host_is_refused() {
    let f = fixture();
    let d = decide(&f, "GET", "", "/v2/health/ready", &[], None);
    assert_eq!((code(&d), status(&d)), ("invalid_host", 400));
}

/// Review finding: a deny rule that its scopes already rule out is decided even when the
/// token's groups overflowed; Entra's `hasgroups: true` is an overage too.
#[test]
fn overage_only_makes_undecided_deny_rules_apply() {
    let f = fixture_with(
        "[[rules]]\nname = \"writers-blocked\"\npaths = [\"/entra\"]\ndeny = { roles_any = [\"blocked-group\"], scopes_any = [\"write\"] }\n",
    );
    let overage = |scp: &str| {
        sign(
            &f.entra,
            json!({"iss": ENTRA, "aud": "https://ml.azure.com", "realm_access": null, "scp": scp,
            "_claim_names": {"groups": "src1"}}),
        )
    };
    assert!(decide(&f, "GET", "h", "/entra", &[], Some(&overage("read"))).allowed);
    let d = decide(&f, "GET", "h", "/entra", &[], Some(&overage("write")));
    assert_eq!(code(&d), "groups_overage");
    let implicit = sign(
        &f.entra,
        json!({"iss": ENTRA, "aud": "https://ml.azure.com", "realm_access": null, "scp": "write", "hasgroups": true}),
    );
    let d = decide(&f, "GET", "h", "/entra", &[], Some(&implicit));
    assert_eq!(code(&d), "groups_overage");
}

/// Review finding: Envoy drops an empty header value, so an extra empty `Authorization` is
/// not a second token (explain agreed with Envoy only on the non-empty one).
#[test]
fn an_empty_token_header_is_not_a_second_token() {
    let f = fixture();
    let good = format!("Bearer {}", sign(&f.kc, json!({})));
    let headers = [
        ("azureml-model-deployment", "blue"),
        ("authorization", ""),
        ("authorization", good.as_str()),
    ];
    assert!(decide(&f, "POST", AML, "/score", &headers, None).allowed);
}

/// Review finding: in audit mode a denied request passes, but must not reach the upstream
/// labelled as allowed by a rule.
#[test]
fn audit_mode_sends_no_identity_for_a_denied_request() {
    let f = fixture_of(&POLICY.replace("version = 1", "version = 1\nmode = \"audit\""));
    let token = sign(&f.kc, json!({"realm_access": {"roles": ["viewer"]}}));
    let headers = vec![
        ("azureml-model-deployment".to_owned(), "blue".to_owned()),
        ("authorization".to_owned(), format!("Bearer {token}")),
    ];
    let request = Request {
        method: "POST",
        host: AML,
        path: "/score",
        headers: &headers,
    };
    let d = f.engine.decide(&request, NOW, &RemoteKeys::default(), None);
    assert!(d.passes() && !d.allowed);
    assert!(f.engine.upstream_headers(&d).is_empty());
}

/// Attacker pass 2 (real Envoy): `x_debug` reaches WSGI-style upstreams as `x-debug`; Envoy
/// joins repeated `user-agent` values with `,` before the filter; HEAD runs the GET handler;
/// method-override headers make the upstream run another method.
#[test]
fn header_and_method_spellings_never_escape_a_deny_rule() {
    let f = fixture_with(
        "[[rules]]\nname = \"no-debug\"\npaths = [\"/v2/health/*\"]\nheaders = { \"x-debug\" = \"1\" }\ndeny = \"anyone\"\n\n[[rules]]\nname = \"no-bots\"\npaths = [\"/v2/health/*\"]\nheaders = { \"user-agent\" = \"evilbot\" }\ndeny = \"anyone\"\n\n[[rules]]\nname = \"read-only\"\nmethods = [\"GET\", \"DELETE\"]\npaths = [\"/v2/health/admin\"]\ndeny = \"anyone\"\n",
    );
    let get = |method: &str, headers: &[(&str, &str)]| {
        code(&decide(&f, method, "h", "/v2/health/admin", headers, None))
    };
    assert_eq!(get("POST", &[]), "allow");
    assert_eq!(get("POST", &[("x_debug", "1")]), "explicit_deny");
    assert_eq!(get("POST", &[("X_Debug", "1")]), "explicit_deny");
    assert_eq!(
        get("POST", &[("user-agent", "evilbot,evilbot")]),
        "explicit_deny"
    );
    assert_eq!(
        get("POST", &[("user-agent", "curl, evilbot")]),
        "explicit_deny"
    );
    assert_eq!(get("HEAD", &[]), "explicit_deny");
    assert_eq!(
        get("POST", &[("x-http-method-override", "DELETE")]),
        "explicit_deny"
    );
    assert_eq!(get("POST", &[("X-HTTP-Method", "delete")]), "explicit_deny");
    // Allow rules: an override the rule does not list is not allowed; a joined value of the
    // allowed value is.
    let t = sign(&f.kc, json!({}));
    let with = |extra: (&str, &str)| {
        code(&decide(
            &f,
            "POST",
            AML,
            "/score",
            &[("azureml-model-deployment", "blue"), extra],
            Some(&t),
        ))
    };
    assert_eq!(with(("x-http-method-override", "DELETE")), "no_rule");
    assert_eq!(with(("x-other", "1")), "allow");
    let joined = [("azureml-model-deployment", "blue,blue")];
    assert_eq!(
        code(&decide(&f, "POST", AML, "/score", &joined, Some(&t))),
        "allow"
    );
}
