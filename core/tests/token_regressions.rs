#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! Regression tests for issue 8's token defects (10: floats, duplicate members, `crit`;
//! 7: key candidates; 9: the `kid` copied into reasons), through the public API only: a
//! TOML policy compiled and loaded as the filter loads it, tokens signed for real.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use claimgate_core::blob;
use claimgate_core::compile::compile;
use claimgate_core::engine::{Engine, Identity, RemoteKeys};
use claimgate_core::reason::DenyReason;
use jwt_simple::prelude::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const NOW: u64 = 1_800_000_000;
const SECRET: [u8; 32] = [0x5a; 32];
const HS_ISS: &str = "https://hs.example";
const ES_ISS: &str = "https://es.example";
const ANON_ISS: &str = "https://anon.example";

fn es_jwk(key: &ES256KeyPair, kid: Option<&str>) -> Value {
    let mut jwk: serde_json::Map<String, Value> =
        serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    jwk.remove("kid");
    if let Some(kid) = kid {
        jwk.insert("kid".into(), kid.into());
    }
    Value::Object(jwk)
}

struct Keys {
    a: ES256KeyPair,
    b: ES256KeyPair,
    engine: Engine,
}

fn setup() -> Keys {
    let (a, b) = (ES256KeyPair::generate(), ES256KeyPair::generate());
    let named = json!({ "keys": [es_jwk(&a, Some("a")), es_jwk(&b, Some("b"))] });
    let anonymous = json!({ "keys": [es_jwk(&a, None), es_jwk(&b, None)] });
    let policy = format!(
        r#"
version = 1
[issuers.hs]
issuer = "{HS_ISS}"
algorithms = ["HS256"]
hmac_secret = "{secret}"

[issuers.es]
issuer = "{ES_ISS}"
algorithms = ["ES256"]
[issuers.es.jwks]
inline = '{named}'

[issuers.anon]
issuer = "{ANON_ISS}"
algorithms = ["ES256"]
[issuers.anon.jwks]
inline = '{anonymous}'

[[rules]]
name = "any-caller"
paths = ["/*"]
allow = "authenticated"
"#,
        secret = URL_SAFE_NO_PAD.encode(SECRET),
    );
    let compiled = compile(&policy, "regressions.toml", &|_: &str| Err(String::new())).unwrap();
    let (bytes, digest) = blob::encode(&compiled.policy).unwrap();
    let engine = Engine::new(blob::decode(&bytes).unwrap().0, digest).unwrap();
    Keys { a, b, engine }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// An HS256 token with exactly this header and payload text, correctly signed.
fn hs256(header: &str, payload: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mac = hmac_sha256(&SECRET, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac))
}

fn authenticate(keys: &Keys, token: &str) -> Result<Identity, DenyReason> {
    keys.engine
        .authenticate(token, NOW, &RemoteKeys::default(), &mut None)
}

fn code(result: Result<Identity, DenyReason>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(reason) => reason.code().to_owned(),
    }
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[test]
fn the_hand_signed_tokens_of_these_tests_verify() {
    let keys = setup();
    let payload = format!(r#"{{"iss":"{HS_ISS}","sub":"alice","exp":{}}}"#, NOW + 60);
    let identity = authenticate(&keys, &hs256(HEADER, &payload)).unwrap();
    assert_eq!(identity.subject, "alice");
    let mut tampered = hs256(HEADER, &payload);
    tampered.pop();
    tampered.push('A');
    assert_eq!(code(authenticate(&keys, &tampered)), "bad_signature");
}

/// Defect 10: duplicate members were reported as `bad_signature` (serde_json kept the last
/// `sub`; the verifier then failed on the duplicate field).
#[test]
fn repeated_member_names_are_malformed_not_bad_signature() {
    let keys = setup();
    let exp = NOW + 60;
    let payload = format!(r#"{{"iss":"{HS_ISS}","sub":"alice","sub":"admin","exp":{exp}}}"#);
    assert_eq!(
        code(authenticate(&keys, &hs256(HEADER, &payload))),
        "malformed_token"
    );
    let nested = format!(
        r#"{{"iss":"{HS_ISS}","sub":"a","exp":{exp},"realm_access":{{"roles":[],"roles":["admin"]}}}}"#
    );
    assert_eq!(
        code(authenticate(&keys, &hs256(HEADER, &nested))),
        "malformed_token"
    );
    let header = r#"{"alg":"HS256","kid":"x","kid":"y"}"#;
    let payload = format!(r#"{{"iss":"{HS_ISS}","sub":"a","exp":{exp}}}"#);
    assert_eq!(
        code(authenticate(&keys, &hs256(header, &payload))),
        "malformed_token"
    );
}

/// Defect 10: a non-array `crit` (and an embedded `jwk` object) failed inside the verifier
/// and came out as `bad_signature`.
#[test]
fn crit_and_embedded_keys_are_malformed_not_bad_signature() {
    let keys = setup();
    let payload = format!(r#"{{"iss":"{HS_ISS}","sub":"a","exp":{}}}"#, NOW + 60);
    for header in [
        r#"{"alg":"HS256","crit":"exp"}"#,
        r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
        r#"{"alg":"HS256","crit":[]}"#,
        r#"{"alg":"HS256","jwk":{"kty":"oct","k":"WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo"}}"#,
    ] {
        assert_eq!(
            code(authenticate(&keys, &hs256(header, &payload))),
            "malformed_token",
            "{header}"
        );
    }
    // Key URLs are never fetched nor trusted: the policy's key decides.
    let header =
        r#"{"alg":"HS256","jku":"http://127.0.0.1:9/jwks","x5u":"http://127.0.0.1:9/x5u"}"#;
    assert_eq!(code(authenticate(&keys, &hs256(header, &payload))), "ok");
}

/// Defect 10: `"exp": 1800000000.5` (allowed by RFC 7519 §2) was refused as malformed.
#[test]
fn fractional_numeric_dates_are_accepted_and_rounded_towards_refusal() {
    let keys = setup();
    let claims = |exp: &str, nbf: &str| {
        format!(r#"{{"iss":"{HS_ISS}","sub":"a","exp":{exp},"nbf":{nbf},"iat":{nbf}}}"#)
    };
    let ok = authenticate(
        &keys,
        &hs256(HEADER, &claims("1800000100.5", "1799999990.25")),
    );
    assert_eq!(ok.unwrap().exp, Some(1_800_000_100));
    // Skew is 60 s: exp 59.5 s ago floors to 60 s ago (still inside); 60.5 s ago, expired.
    let just = claims(&format!("{}.5", NOW - 60), "1");
    assert_eq!(code(authenticate(&keys, &hs256(HEADER, &just))), "ok");
    let late = claims(&format!("{}.5", NOW - 61), "1");
    assert_eq!(code(authenticate(&keys, &hs256(HEADER, &late))), "expired");
    // nbf 60.5 s ahead ceils to 61 s: not yet valid.
    let early = claims(&(NOW + 600).to_string(), &format!("{}.5", NOW + 60));
    assert_eq!(
        code(authenticate(&keys, &hs256(HEADER, &early))),
        "not_yet_valid"
    );
    for (exp, nbf) in [
        ("-1", "1"),
        ("\"1800000100\"", "1"),
        ("9007199254740993", "1"),
        ("1e300", "1"),
        ("1800000100", "-0.5"),
    ] {
        assert_eq!(
            code(authenticate(&keys, &hs256(HEADER, &claims(exp, nbf)))),
            "malformed_token",
            "exp {exp}, nbf {nbf}"
        );
    }
}

fn es_claims(iss: &str) -> JWTClaims<NoCustomClaims> {
    Claims::create(Duration::from_secs(600))
        .with_issuer(iss)
        .with_subject("caller")
}

/// Defect 7: a token without `kid` was tried against every key of its algorithm (a full
/// verification each); now only an issuer's single key for the algorithm is tried.
#[test]
fn a_token_without_kid_is_tried_against_one_key_at_most() {
    let keys = setup();
    let now = UnixTimeStamp::from_secs(NOW);
    let mut claims = es_claims(ES_ISS);
    claims.issued_at = Some(now);
    claims.invalid_before = Some(now);
    claims.expires_at = Some(now + Duration::from_secs(600));
    // Signed by the second key, without naming it.
    let anonymous = keys.b.sign(claims.clone()).unwrap();
    assert_eq!(code(authenticate(&keys, &anonymous)), "unknown_key");
    let named = ES256KeyPair::from_bytes(&keys.b.to_bytes())
        .unwrap()
        .with_key_id("b")
        .sign(claims.clone())
        .unwrap();
    assert_eq!(code(authenticate(&keys, &named)), "ok");
    // Keys without kid: two of them, so a token cannot say which.
    claims.issuer = Some(ANON_ISS.to_owned());
    let anonymous = keys.a.sign(claims).unwrap();
    assert_eq!(code(authenticate(&keys, &anonymous)), "unknown_key");
}

/// Defect 9: an 8 KiB `kid` was copied whole into the reason, hence into every audit line.
#[test]
fn an_unknown_kid_is_copied_briefly_and_printably() {
    let keys = setup();
    let kid = format!("\u{1b}[31m{}\n", "k".repeat(8 * 1024));
    let header = json!({ "alg": "ES256", "kid": kid }).to_string();
    let payload = json!({ "iss": ES_ISS, "sub": "x", "exp": NOW + 60 }).to_string();
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode([0u8; 64])
    );
    let reason = authenticate(&keys, &token).unwrap_err();
    let DenyReason::UnknownKey {
        kid: Some(copied), ..
    } = &reason
    else {
        panic!("{reason:?}")
    };
    assert!(copied.chars().count() <= 64, "{} chars", copied.len());
    assert!(copied.starts_with("?[31mkkk"), "{copied}");
    let line = reason.to_string();
    assert!(line.len() < 200 && !line.contains('\n'), "{line}");
}

/// Defect 9: a 5 MiB key set of 175k unsupported keys beside one good key was accepted,
/// parsed key by key, with one warning per skipped key.
#[test]
fn a_huge_key_set_is_refused_whole() {
    let good = es_jwk(&ES256KeyPair::generate(), Some("good"));
    let junk = r#"{"kty":"XYZ","kid":"junk"},"#.repeat(200_000);
    let body = format!(r#"{{"keys":[{junk}{good}]}}"#);
    assert!(body.len() > 5_000_000);
    assert!(claimgate_core::keys::parse_jwks(&body).is_err());
    let many = format!(r#"{{"keys":[{}{good}]}}"#, r#"{"kty":"XYZ"},"#.repeat(150));
    assert!(claimgate_core::keys::parse_jwks(&many).is_err());
}

/// Issue 11 item 6 / issue 8: a key set as Keycloak serves it (an `enc` key beside the
/// signing key) did not compile; unusable keys are now one warning, as at run time.
#[test]
fn a_key_set_with_an_encryption_key_compiles_with_one_warning() {
    let sig = es_jwk(&ES256KeyPair::generate(), Some("sig"));
    let enc = json!({"kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc",
                     "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1Wl", "e": "AQAB"});
    let policy = format!(
        r#"
version = 1
[issuers.kc]
issuer = "https://kc.example/realms/ml"
audiences = ["scoring"]
algorithms = ["ES256"]
[issuers.kc.jwks]
inline = '{}'
[[rules]]
name = "r"
paths = ["/*"]
allow = "authenticated"
"#,
        json!({ "keys": [enc, sig] })
    );
    let compiled = compile(&policy, "kc.toml", &|_: &str| Err(String::new())).unwrap();
    assert_eq!(compiled.policy.issuers[0].keys.len(), 1);
    let skipped: Vec<_> = compiled
        .warnings
        .iter()
        .filter(|d| d.message.contains("skipped"))
        .collect();
    assert_eq!(skipped.len(), 1, "{:?}", compiled.warnings);
    assert!(skipped[0].message.contains("`enc`"), "{}", skipped[0]);
}

/// Defect 6 (RFC 8725 §3.9): with `audience_claims = ["aud", "azp"]` any one claim naming an
/// accepted audience passed, so a token minted for another API but requested by an accepted
/// client was replayable here. `audience_match = "all"` refuses it.
#[test]
fn audience_match_all_refuses_a_token_for_another_api() {
    let policy = |mode: &str| {
        format!(
            r#"
version = 1
[issuers.hs]
issuer = "{HS_ISS}"
audiences = ["scoring-api", "ml-client"]
audience_claims = ["aud", "azp"]
{mode}
algorithms = ["HS256"]
hmac_secret = "{}"
[[rules]]
name = "r"
paths = ["/*"]
allow = "authenticated"
"#,
            URL_SAFE_NO_PAD.encode(SECRET)
        )
    };
    let engine = |mode: &str| {
        let compiled = compile(&policy(mode), "p.toml", &|_: &str| Err(String::new())).unwrap();
        let (bytes, digest) = blob::encode(&compiled.policy).unwrap();
        Engine::new(blob::decode(&bytes).unwrap().0, digest).unwrap()
    };
    let (any, all) = (engine(""), engine(r#"audience_match = "all""#));
    let token = |aud: &str, azp: Option<&str>| {
        let aud: Value = serde_json::from_str(aud).unwrap();
        let mut claims = json!({ "iss": HS_ISS, "sub": "a", "exp": NOW + 60, "aud": aud });
        if let Some(azp) = azp {
            claims["azp"] = azp.into();
        }
        hs256(HEADER, &claims.to_string())
    };
    let verdict = |engine: &Engine, token: &str| match engine.authenticate(
        token,
        NOW,
        &RemoteKeys::default(),
        &mut None,
    ) {
        Ok(_) => "ok".to_owned(),
        Err(reason) => reason.code().to_owned(),
    };
    let replayed = token(r#""billing-api""#, Some("ml-client"));
    assert_eq!(verdict(&any, &replayed), "ok");
    assert_eq!(verdict(&all, &replayed), "wrong_audience");
    // Ours in `aud` and an accepted client: both modes accept.
    let good = token(r#"["scoring-api", "other"]"#, Some("ml-client"));
    assert_eq!(
        (verdict(&any, &good), verdict(&all, &good)),
        ("ok".into(), "ok".into())
    );
    // `azp` absent: only `aud` is there, and it must name us.
    let no_azp = token(r#""scoring-api""#, None);
    assert_eq!(verdict(&all, &no_azp), "ok");
    // An unknown client in `azp` is refused in `all` mode.
    let stranger = token(r#""scoring-api""#, Some("someone-else"));
    assert_eq!(verdict(&any, &stranger), "ok");
    assert_eq!(verdict(&all, &stranger), "wrong_audience");
    // `aud` missing: refused in `all` mode even though `azp` is accepted.
    let mut claims = json!({ "iss": HS_ISS, "sub": "a", "exp": NOW + 60, "azp": "ml-client" });
    let no_aud = hs256(HEADER, &claims.to_string());
    assert_eq!(verdict(&any, &no_aud), "ok");
    assert_eq!(verdict(&all, &no_aud), "wrong_audience");
    claims["aud"] = json!([]);
    assert_eq!(
        verdict(&all, &hs256(HEADER, &claims.to_string())),
        "wrong_audience"
    );
}

/// Defect 6 (RFC 9068, RFC 8725 §3.11): nothing told an ID token from an access token.
/// `token_types` names the accepted `typ` values.
#[test]
fn token_types_tell_access_tokens_from_id_tokens() {
    let policy = |types: &str| {
        format!(
            "version = 1\n[issuers.hs]\nissuer = \"{HS_ISS}\"\naudiences = [\"api\"]\n{types}\nalgorithms = [\"HS256\"]\nhmac_secret = \"{}\"\n[[rules]]\nname = \"r\"\npaths = [\"/*\"]\nallow = \"authenticated\"\n",
            URL_SAFE_NO_PAD.encode(SECRET)
        )
    };
    let engine = |types: &str| {
        let compiled = compile(&policy(types), "p.toml", &|_: &str| Err(String::new())).unwrap();
        let (bytes, digest) = blob::encode(&compiled.policy).unwrap();
        Engine::new(blob::decode(&bytes).unwrap().0, digest).unwrap()
    };
    let (open, strict) = (
        engine(""),
        engine(r#"token_types = ["at+jwt", "application/AT+JWT"]"#),
    );
    let payload = json!({ "iss": HS_ISS, "sub": "a", "exp": NOW + 60, "aud": "api" }).to_string();
    let with_typ = |typ: Option<&str>| {
        let header = match typ {
            Some(typ) => json!({ "alg": "HS256", "typ": typ }),
            None => json!({ "alg": "HS256" }),
        };
        hs256(&header.to_string(), &payload)
    };
    let verdict = |engine: &Engine, token: &str| match engine.authenticate(
        token,
        NOW,
        &RemoteKeys::default(),
        &mut None,
    ) {
        Ok(_) => "ok".to_owned(),
        Err(reason) => reason.code().to_owned(),
    };
    for (typ, open_code, strict_code) in [
        (Some("at+jwt"), "ok", "ok"),
        (Some("application/at+JWT"), "ok", "ok"),
        (Some("JWT"), "ok", "token_type_not_allowed"),
        (None, "ok", "token_type_not_allowed"),
        (Some("dpop+jwt"), "ok", "token_type_not_allowed"),
    ] {
        let token = with_typ(typ);
        assert_eq!(verdict(&open, &token), open_code, "{typ:?}");
        assert_eq!(verdict(&strict, &token), strict_code, "{typ:?}");
    }
    // The refusal comes before any key is looked at, and names the type briefly.
    let long = format!("{}+jwt", "x".repeat(3000));
    let reason = strict
        .authenticate(
            &with_typ(Some(&long)),
            NOW,
            &RemoteKeys::default(),
            &mut None,
        )
        .unwrap_err();
    assert!(reason.to_string().len() < 120, "{reason}");
    // A `typ` that is no JWT type cannot be configured.
    let refused = compile(
        &policy(r#"token_types = ["JOSE"]"#),
        "p.toml",
        &|_: &str| Err(String::new()),
    )
    .unwrap_err();
    assert_eq!(refused[0].kind, "bad_token_type");
}

/// RFC 7515 §4.1.9 allows the `application/` prefix on `typ`: `application/jwt` was refused
/// as malformed (by the header check, then by the verifier) although `token_types` accepts
/// it and `application/at+jwt` passed.
#[test]
fn application_prefixed_jwt_types_are_not_malformed() {
    let keys = setup();
    let payload = format!(r#"{{"iss":"{HS_ISS}","sub":"alice","exp":{}}}"#, NOW + 60);
    for typ in [
        "application/jwt",
        "Application/JWT",
        "application/at+jwt",
        "JWT",
    ] {
        let header = json!({ "alg": "HS256", "typ": typ }).to_string();
        assert_eq!(
            code(authenticate(&keys, &hs256(&header, &payload))),
            "ok",
            "{typ}"
        );
    }
    for typ in ["application/json", "+jwt", "application/+jwt", "JOSE"] {
        let header = json!({ "alg": "HS256", "typ": typ }).to_string();
        assert_eq!(
            code(authenticate(&keys, &hs256(&header, &payload))),
            "malformed_token",
            "{typ}"
        );
    }
}

/// Defect 9's class: token text copied into a reason reaches every audit line. An unknown
/// `iss` or an odd `alg` is copied bounded and printable (no line breaks, no escapes).
#[test]
fn unknown_issuers_and_algorithms_are_copied_briefly_and_printably() {
    let keys = setup();
    let forged_line = "\n2026-11-23T06:00:00Z claimgate: allow sub=admin";
    let iss = format!("https://evil{forged_line}{}", "x".repeat(4000));
    let payload = json!({ "iss": iss, "sub": "x", "exp": NOW + 60 }).to_string();
    let reason = authenticate(&keys, &hs256(HEADER, &payload)).unwrap_err();
    assert_eq!(reason.code(), "unknown_issuer");
    let line = reason.to_string();
    assert!(!line.contains('\n') && line.len() < 400, "{line}");

    let header = json!({ "alg": format!("HS256{forged_line}") }).to_string();
    let payload = json!({ "iss": HS_ISS, "sub": "x", "exp": NOW + 60 }).to_string();
    let reason = authenticate(&keys, &hs256(&header, &payload)).unwrap_err();
    assert_eq!(reason.code(), "algorithm_not_allowed");
    let line = reason.to_string();
    assert!(!line.contains('\n') && line.len() < 100, "{line}");
}
