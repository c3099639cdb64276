#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! Hostile tokens and requests against the engine, through the blob as the filter loads it
//! (issue 8, "Prove it" 1). Every case states the status (and code) that the team's
//! contract (issue 8's SPEC) documents. For every case: never a 5xx, and the token never
//! appears in the reason or in the checks `explain` prints.
//!
//! Tokens are really signed: RSA and EC keys made here (jwt-simple), and an HMAC issuer
//! whose secret lets the suite sign any header and payload bytes (duplicate members,
//! `crit`, `jku`, non-UTF-8…) so that a refusal can only come from the check under test,
//! never from a broken signature.
//!
//! The same cases run through real Envoy in `e2e/test_hostile.py`.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use claimgate_core::blob;
use claimgate_core::compile::compile;
use claimgate_core::engine::{Decision, Engine, RemoteKeys, Request};
use jwt_simple::prelude::*;
use serde_json::{Value, json};

const NOW: u64 = 1_800_000_000;
const KC: &str = "https://login.example.com/realms/ml";
const HS: &str = "https://hs.example.com";
const AUD: &str = "azureml-scoring";
const HMAC_SECRET: &[u8; 32] = b"hostile-suite-hmac-secret-32byte";

/// The issuers of the hostile policy; its rules are shared with the real-Envoy suite.
const ISSUERS: &str = r#"
version = 1
name = "hostile"

[issuers.kc]
issuer = "https://login.example.com/realms/ml"
audiences = ["azureml-scoring"]
algorithms = ["RS256", "ES256"]
roles = ["realm_access.roles"]
[issuers.kc.jwks]
file = "kc.json"

[issuers.hs]
issuer = "https://hs.example.com"
audiences = ["azureml-scoring"]
algorithms = ["HS256"]
hmac_secret = "@SECRET@"
roles = ["roles"]

"#;

/// The rules both hostile suites judge (`e2e/test_hostile.py` reads the same file).
const RULES: &str = include_str!("hostile-rules.toml");

/// The whole hostile policy.
fn policy() -> String {
    format!("{ISSUERS}{RULES}")
}

/// Signing keys, made once (RSA generation is slow).
struct Keys {
    rsa: RS256KeyPair,
    rsa_2: RS256KeyPair,
    ec: ES256KeyPair,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: RS256KeyPair::generate(2048).unwrap().with_key_id("rsa-1"),
        rsa_2: RS256KeyPair::generate(2048).unwrap().with_key_id("rsa-2"),
        ec: ES256KeyPair::generate().with_key_id("ec-1"),
    })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn kc_jwks(k: &Keys) -> String {
    let rsa = |key: &RS256KeyPair, kid: &str| {
        let c = key.public_key().to_components();
        json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64(&c.n), "e": b64(&c.e)})
    };
    let point = k.ec.public_key().public_key().to_bytes_uncompressed();
    json!({"keys": [
        rsa(&k.rsa, "rsa-1"),
        rsa(&k.rsa_2, "rsa-2"),
        {"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "use": "sig",
         "x": b64(&point[1..33]), "y": b64(&point[33..])},
    ]})
    .to_string()
}

fn engine_for(policy: &str) -> Result<Engine, String> {
    let files = HashMap::from([("kc.json", kc_jwks(keys()))]);
    let reader = |name: &str| files.get(name).cloned().ok_or_else(|| "missing".to_owned());
    let policy = policy.replace("@SECRET@", &b64(HMAC_SECRET));
    let compiled = compile(&policy, "hostile.toml", &reader).map_err(|d| format!("{d:?}"))?;
    let config = serde_json::to_vec(&blob::plugin_config(&compiled.policy).unwrap()).unwrap();
    blob::engine_from_plugin_config(&config).map_err(|e| e.to_string())
}

fn engine() -> Engine {
    engine_for(&policy()).unwrap()
}

/// Claims of a token the policy accepts for `/score`; `extra` overrides, `null` removes.
fn claims_json(iss: &str, extra: Value) -> Value {
    let roles_claim = if iss == HS { "roles" } else { "realm_access" };
    let roles = if iss == HS {
        json!(["ml-scorer"])
    } else {
        json!({"roles": ["ml-scorer"]})
    };
    let mut base =
        json!({"iss": iss, "sub": "alice", "aud": AUD, "iat": NOW - 10, "exp": NOW + 600});
    base[roles_claim] = roles;
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn claims(extra: Value) -> JWTClaims<serde_json::Map<String, Value>> {
    serde_json::from_value(claims_json(KC, extra)).unwrap()
}

fn rs(extra: Value) -> String {
    keys().rsa.sign(claims(extra)).unwrap()
}

fn es(extra: Value) -> String {
    keys().ec.sign(claims(extra)).unwrap()
}

/// A token of the HMAC issuer over exactly these header and payload bytes.
fn hs_raw(header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let tag = HS256Key::from_bytes(HMAC_SECRET).authentication_tag(input.as_bytes());
    format!("{input}.{}", b64(&tag))
}

/// A token of the HMAC issuer with the usual claims, `extra` overriding.
fn hs(extra: Value) -> String {
    hs_raw(
        br#"{"alg":"HS256","typ":"JWT"}"#,
        claims_json(HS, extra).to_string().as_bytes(),
    )
}

/// A token of the HMAC issuer with this header (JSON text) and the usual claims.
fn hs_header(header: &str) -> String {
    hs_raw(
        header.as_bytes(),
        claims_json(HS, json!({})).to_string().as_bytes(),
    )
}

/// A request: method, host, path, headers.
#[derive(Clone)]
struct Req {
    method: String,
    host: String,
    path: String,
    headers: Vec<(String, String)>,
}

fn req(method: &str, host: &str, path: &str) -> Req {
    Req {
        method: method.into(),
        host: host.into(),
        path: path.into(),
        headers: Vec::new(),
    }
}

/// `POST /score` with `Authorization: Bearer <token>`.
fn score(token: &str) -> Req {
    req("POST", "api.example.com", "/score").auth(&format!("Bearer {token}"))
}

impl Req {
    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn auth(self, value: &str) -> Req {
        self.header("authorization", value)
    }

    fn bearer(self, token: &str) -> Req {
        self.auth(&format!("Bearer {token}"))
    }
}

fn decide(engine: &Engine, r: &Req) -> Decision {
    let request = Request {
        method: &r.method,
        host: &r.host,
        path: &r.path,
        headers: &r.headers,
    };
    let mut checks = Vec::new();
    engine.decide(&request, NOW, &RemoteKeys::default(), Some(&mut checks))
}

/// One hostile case: a name, the request, the status and code SPEC documents (`"allow"`
/// for 200).
struct Case {
    name: String,
    request: Req,
    status: u16,
    code: &'static str,
}

fn case(name: impl Into<String>, request: Req, status: u16, code: &'static str) -> Case {
    Case {
        name: name.into(),
        request,
        status,
        code,
    }
}

/// Runs every case and reports every mismatch at once (observed vs expected).
fn check(engine: &Engine, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        let d = decide(engine, &c.request);
        let status = d.status();
        let code = d.reason.as_ref().map_or("allow", |r| r.code());
        assert!(
            status < 500 || code == "keys_unavailable",
            "{}: 5xx {status} {code}",
            c.name
        );
        // The token (any bearer value long enough to be one) is never echoed.
        for (name, value) in &c.request.headers {
            if name.eq_ignore_ascii_case("authorization") && value.len() > 40 {
                let token = value
                    .split_once(' ')
                    .map_or(value.as_str(), |(_, t)| t)
                    .trim();
                let shown = format!(
                    "{:?} {} {:?}",
                    d.reason,
                    d.reason.as_ref().map(|r| r.to_string()).unwrap_or_default(),
                    d.checks
                );
                assert!(
                    !shown.contains(token),
                    "{}: the token is echoed: {shown}",
                    c.name
                );
            }
        }
        if (status, code) != (c.status, c.code) {
            failures.push(format!(
                "{}: expected {} {}, got {status} {code} ({:?})",
                c.name,
                c.status,
                c.code,
                d.reason.as_ref().map(|r| r.to_string())
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn header_of(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
}

fn with_signature(token: &str, signature: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{}", b64(signature))
}

fn signature_of(token: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(token.rsplit_once('.').unwrap().1)
        .unwrap()
}

#[test]
fn baseline_tokens_pass() {
    let e = engine();
    check(
        &e,
        vec![
            case("RS256", score(&rs(json!({}))), 200, "allow"),
            case("ES256", score(&es(json!({}))), 200, "allow"),
            case("HS256", score(&hs(json!({}))), 200, "allow"),
            case("no token", req("POST", "h", "/score"), 401, "no_token"),
        ],
    );
}

#[test]
fn algorithm_confusion() {
    let e = engine();
    let good = rs(json!({}));
    let (_, payload, signature) = {
        let p: Vec<&str> = good.split('.').collect();
        (p[0].to_owned(), p[1].to_owned(), p[2].to_owned())
    };
    let with_header =
        |h: Value, sig: &str| format!("{}.{payload}.{sig}", b64(h.to_string().as_bytes()));
    let mut cases = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        let h = json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"});
        cases.push(case(
            format!("alg {alg:?}, no signature"),
            score(&with_header(h.clone(), "")),
            401,
            "algorithm_not_allowed",
        ));
        cases.push(case(
            format!("alg {alg:?}, RSA signature"),
            score(&with_header(h, &signature)),
            401,
            "algorithm_not_allowed",
        ));
    }
    // HS256 "signed" with the RSA public key in every form an attacker could pick.
    let public = keys().rsa.public_key();
    let c = public.to_components();
    let forms: Vec<(&str, Vec<u8>)> = vec![
        ("PEM", public.to_pem().unwrap().into_bytes()),
        ("DER", public.to_der().unwrap()),
        ("modulus", c.n.clone()),
        ("JWK", kc_jwks(keys()).into_bytes()),
    ];
    for (form, secret) in forms {
        for kid in [Some("rsa-1"), None] {
            let mut h = json!({"alg": "HS256", "typ": "JWT"});
            if let Some(kid) = kid {
                h["kid"] = kid.into();
            }
            let input = format!("{}.{payload}", b64(h.to_string().as_bytes()));
            let tag = HS256Key::from_bytes(&secret).authentication_tag(input.as_bytes());
            cases.push(case(
                format!("HS256 with the RSA public key as {form}, kid {kid:?}"),
                score(&format!("{input}.{}", b64(&tag))),
                401,
                "algorithm_not_allowed",
            ));
        }
    }
    // An algorithm the issuer does not list, with a real signature of that algorithm.
    cases.push(case(
        "RS384 where only RS256 is allowed",
        score(
            &RS384KeyPair::from_pem(&keys().rsa.to_pem().unwrap())
                .unwrap()
                .with_key_id("rsa-1")
                .sign(claims(json!({})))
                .unwrap(),
        ),
        401,
        "algorithm_not_allowed",
    ));
    cases.push(case(
        "alg not a string",
        score(&with_header(
            json!({"alg": 256, "kid": "rsa-1"}),
            &signature,
        )),
        401,
        "malformed_token",
    ));
    check(&e, cases);
}

#[test]
fn kid_values_never_find_a_key_they_do_not_name() {
    let e = engine();
    let long = "k".repeat(8 * 1024);
    let kids: Vec<(&str, String)> = vec![
        ("traversal", "../../../../etc/passwd".into()),
        ("traversal to a real kid", "../rsa-1".into()),
        ("absolute path", "/dev/zero".into()),
        ("SQL injection", "rsa-1' OR '1'='1".into()),
        ("command injection", "$(curl evil)`id`".into()),
        ("NUL", "rsa-1\u{0}".into()),
        ("CRLF", "rsa-1\r\nx-evil: 1".into()),
        ("trailing space", "rsa-1 ".into()),
        ("case", "RSA-1".into()),
        ("non-ASCII", "ключ-1".into()),
        ("RTL override", "\u{202e}1-asr".into()),
        ("huge (8 KiB)", long.clone()),
        ("empty", String::new()),
        ("URL", "http://127.0.0.1:1/rsa-1".into()),
    ];
    let mut cases = Vec::new();
    for (name, kid) in &kids {
        let token = keys()
            .rsa
            .clone()
            .with_key_id(kid)
            .sign(claims(json!({})))
            .unwrap();
        cases.push(case(
            format!("kid {name}"),
            score(&token),
            401,
            "unknown_key",
        ));
    }
    // Without a kid, the issuer's only key for the algorithm is tried.
    let es_no_kid = ES256KeyPair::from_bytes(&keys().ec.to_bytes())
        .unwrap()
        .sign(claims(json!({})))
        .unwrap();
    cases.push(case(
        "ES256 without kid, one EC key",
        score(&es_no_kid),
        200,
        "allow",
    ));
    for (name, kid) in [
        ("number", json!(1)),
        ("object", json!({"kid": "rsa-1"})),
        ("array", json!(["rsa-1"])),
        ("null", Value::Null),
        ("bool", json!(true)),
    ] {
        cases.push(case(
            format!("kid {name}"),
            score(&hs_header(&json!({"alg": "HS256", "kid": kid}).to_string())),
            401,
            "malformed_token",
        ));
    }
    check(&e, cases);
}

#[test]
fn key_url_headers_are_never_used() {
    let e = engine();
    // A trusted signature with key-locating headers: the keys still come from the policy.
    let mut cases = Vec::new();
    for header in [
        json!({"alg": "HS256", "jku": "http://127.0.0.1:9/keys"}),
        json!({"alg": "HS256", "x5u": "http://127.0.0.1:9/cert.pem"}),
        json!({"alg": "HS256", "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]}),
    ] {
        cases.push(case(
            format!("trusted signature with {header}"),
            score(&hs_header(&header.to_string())),
            200,
            "allow",
        ));
    }
    // Signed with the key the token itself carries: never trusted (refused as malformed: an
    // embedded key is never a way to find one).
    let attacker = b"attacker-secret-attacker-secret!";
    let h = json!({"alg": "HS256", "jwk": {"kty": "oct", "k": b64(attacker)}});
    let input = format!(
        "{}.{}",
        b64(h.to_string().as_bytes()),
        b64(claims_json(HS, json!({})).to_string().as_bytes())
    );
    let tag = HS256Key::from_bytes(attacker).authentication_tag(input.as_bytes());
    cases.push(case(
        "signed with an embedded jwk",
        score(&format!("{input}.{}", b64(&tag))),
        401,
        "malformed_token",
    ));
    let attacker_rsa = RS256KeyPair::generate(2048).unwrap();
    for (name, kid) in [("no kid", None), ("unknown kid", Some("attacker"))] {
        let mut key = RS256KeyPair::from_pem(&attacker_rsa.to_pem().unwrap()).unwrap();
        if let Some(kid) = kid {
            key = key.with_key_id(kid);
        }
        let token = key.sign(claims(json!({}))).unwrap();
        // With a kid no key has, and without one while the issuer has two RSA keys (SPEC:
        // at most one candidate key), no signature is even checked.
        cases.push(case(
            format!("RSA token by an attacker key, {name}"),
            score(&token),
            401,
            "unknown_key",
        ));
    }
    check(&e, cases);
}

#[test]
fn structure_and_encoding() {
    let e = engine();
    let good = rs(json!({}));
    let parts: Vec<&str> = good.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let std_alphabet = |part: &str| STANDARD.encode(URL_SAFE_NO_PAD.decode(part).unwrap());
    let padded = |part: &str| {
        let n = (4 - part.len() % 4) % 4;
        format!("{part}{}", "=".repeat(n))
    };
    let mut cases = vec![
        case("one part", score(h), 401, "malformed_token"),
        case(
            "two parts",
            score(&format!("{h}.{p}")),
            401,
            "malformed_token",
        ),
        case(
            "four parts",
            score(&format!("{h}.{p}.{s}.{s}")),
            401,
            "malformed_token",
        ),
        case(
            "five parts (JWE shape)",
            score(&format!("{h}.{p}.{s}.{s}.{s}")),
            401,
            "malformed_token",
        ),
        case("dots only", score(".."), 401, "malformed_token"),
        case("empty parts", score("..."), 401, "malformed_token"),
        case(
            "trailing dot",
            score(&format!("{good}.")),
            401,
            "malformed_token",
        ),
        case(
            "signature removed",
            score(&format!("{h}.{p}.")),
            401,
            "bad_signature",
        ),
        case(
            "whitespace inside",
            score(&format!("{h}. {p}.{s}")),
            401,
            "malformed_token",
        ),
        case(
            "newline inside",
            score(&format!("{h}.{p}\n.{s}")),
            401,
            "malformed_token",
        ),
        case(
            "standard alphabet signature",
            score(&format!("{h}.{p}.{}", std_alphabet(s))),
            401,
            "malformed_token",
        ),
        case(
            "padded signature",
            score(&format!("{h}.{p}.{}", padded(s))),
            401,
            "malformed_token",
        ),
        case(
            "payload not JSON",
            score(&format!("{h}.{}.{s}", b64(b"not json"))),
            401,
            "malformed_token",
        ),
        case(
            "payload a JSON array",
            score(&format!("{h}.{}.{s}", b64(b"[]"))),
            401,
            "malformed_token",
        ),
        case(
            "payload JSON null",
            score(&format!("{h}.{}.{s}", b64(b"null"))),
            401,
            "malformed_token",
        ),
    ];
    // Tokens whose signature the padding or alphabet change would not break on its own.
    if std_alphabet(p) != p {
        cases.push(case(
            "standard alphabet payload",
            score(&format!("{h}.{}.{s}", std_alphabet(p))),
            401,
            "malformed_token",
        ));
    }
    if padded(p) != p {
        cases.push(case(
            "padded payload",
            score(&format!("{h}.{}.{s}", padded(p))),
            401,
            "malformed_token",
        ));
    }
    // Non-UTF-8 bytes in a correctly signed header and payload.
    cases.push(case(
        "non-UTF-8 payload",
        score(&hs_raw(
            br#"{"alg":"HS256"}"#,
            b"{\"iss\":\"https://hs.example.com\",\"sub\":\"\xff\xfe\"}",
        )),
        401,
        "malformed_token",
    ));
    cases.push(case(
        "non-UTF-8 header",
        score(&hs_raw(
            b"{\"alg\":\"HS256\",\"x\":\"\xc3\x28\"}",
            claims_json(HS, json!({})).to_string().as_bytes(),
        )),
        401,
        "malformed_token",
    ));
    cases.push(case(
        "crit [exp]",
        score(&hs_header(r#"{"alg":"HS256","crit":["exp"],"exp":1}"#)),
        401,
        "malformed_token",
    ));
    cases.push(case(
        "UTF-8 BOM before the header JSON",
        score(&hs_raw(
            b"\xef\xbb\xbf{\"alg\":\"HS256\"}",
            claims_json(HS, json!({})).to_string().as_bytes(),
        )),
        401,
        "malformed_token",
    ));
    check(&e, cases);
}

#[test]
fn sizes() {
    let e = engine();
    let mut cases = Vec::new();
    for (name, size) in [("64 KiB", 64 * 1024), ("1 MiB", 1024 * 1024)] {
        let token = hs(json!({"pad": "x".repeat(size)}));
        cases.push(case(
            format!("{name} signed token"),
            score(&token),
            401,
            "malformed_token",
        ));
        cases.push(case(
            format!("{name} of junk"),
            score(&"A".repeat(size)),
            401,
            "malformed_token",
        ));
    }
    // Just under the 16 KiB limit: a valid token still passes.
    let base = hs(json!({"pad": ""})).len();
    let under = hs(json!({"pad": "x".repeat((16 * 1024 - base) * 3 / 4)}));
    assert!(under.len() <= 16 * 1024, "{}", under.len());
    cases.push(case("just under 16 KiB", score(&under), 200, "allow"));
    check(&e, cases);
    // The refusal names the size, not the content.
    let d = decide(&e, &score(&hs(json!({"pad": "x".repeat(64 * 1024)}))));
    assert!(d.reason.unwrap().to_string().contains("longer than"));
}

#[test]
fn nested_and_huge_claim_sets() {
    let e = engine();
    let nested = |depth: usize| -> Value {
        let text = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let mut payload = claims_json(HS, json!({}));
        payload["deep"] = Value::Null;
        let body = payload
            .to_string()
            .replacen("\"deep\":null", &format!("\"deep\":{text}"), 1);
        Value::String(body)
    };
    let signed =
        |payload: Value| hs_raw(br#"{"alg":"HS256"}"#, payload.as_str().unwrap().as_bytes());
    let many_claims: serde_json::Map<String, Value> =
        (0..600).map(|i| (format!("c{i}"), json!(i))).collect();
    let many_roles: Vec<String> = (0..1200)
        .map(|i| format!("r{i}"))
        .chain(["ml-scorer".to_owned()])
        .collect();
    check(
        &e,
        vec![
            case("nested 100 deep", score(&signed(nested(100))), 200, "allow"),
            // Past serde_json's recursion limit (128): refused, never a stack overflow.
            case(
                "nested 5,000 deep",
                score(&signed(nested(5000))),
                401,
                "malformed_token",
            ),
            case(
                "600 claims",
                score(&hs(json!({"extra": many_claims}))),
                200,
                "allow",
            ),
            case(
                "1,200 roles",
                score(&hs(json!({"roles": many_roles}))),
                200,
                "allow",
            ),
            case(
                "roles claim an object",
                score(&hs(json!({"roles": {"ml-scorer": true}}))),
                403,
                "missing_role",
            ),
            case(
                "roles claim a number",
                score(&hs(json!({"roles": 7}))),
                403,
                "missing_role",
            ),
        ],
    );
}

#[test]
fn numeric_dates() {
    let e = engine();
    check(
        &e,
        vec![
            case(
                "exp as a string",
                score(&hs(json!({"exp": (NOW + 600).to_string()}))),
                401,
                "malformed_token",
            ),
            case(
                "iat as a string",
                score(&hs(json!({"iat": "yesterday"}))),
                401,
                "malformed_token",
            ),
            case(
                "nbf as a bool",
                score(&hs(json!({"nbf": true}))),
                401,
                "malformed_token",
            ),
            case(
                "exp negative",
                score(&hs(json!({"exp": -1}))),
                401,
                "malformed_token",
            ),
            case(
                "exp 1e300",
                score(&hs_raw(
                    br#"{"alg":"HS256"}"#,
                    claims_json(HS, json!({"exp": 1}))
                        .to_string()
                        .replace("\"exp\":1", "\"exp\":1e300")
                        .as_bytes(),
                )),
                401,
                "malformed_token",
            ),
            case(
                "exp array",
                score(&hs(json!({"exp": [NOW + 600]}))),
                401,
                "malformed_token",
            ),
            case(
                "exp expired by an hour",
                score(&hs(json!({"exp": NOW - 3600}))),
                401,
                "expired",
            ),
            case(
                "nbf an hour ahead",
                score(&hs(json!({"nbf": NOW + 3600}))),
                401,
                "not_yet_valid",
            ),
        ],
    );
}

#[test]
fn audiences_and_issuers() {
    let e = engine();
    check(
        &e,
        vec![
            case("aud string", score(&hs(json!({"aud": AUD}))), 200, "allow"),
            case(
                "aud array",
                score(&hs(json!({"aud": ["other", AUD]}))),
                200,
                "allow",
            ),
            case(
                "aud empty array",
                score(&hs(json!({"aud": []}))),
                401,
                "wrong_audience",
            ),
            case(
                "aud empty string",
                score(&hs(json!({"aud": ""}))),
                401,
                "wrong_audience",
            ),
            case(
                "aud missing",
                score(&hs(json!({"aud": null}))),
                401,
                "wrong_audience",
            ),
            case(
                "aud other case",
                score(&hs(json!({"aud": AUD.to_uppercase()}))),
                401,
                "wrong_audience",
            ),
            case(
                "aud space-joined",
                score(&hs(json!({"aud": format!("other {AUD}")}))),
                401,
                "wrong_audience",
            ),
            case(
                "aud object",
                score(&hs(json!({"aud": {"aud": AUD}}))),
                401,
                "malformed_token",
            ),
            case(
                "aud array with a number",
                score(&hs(json!({"aud": [AUD, 1]}))),
                401,
                "malformed_token",
            ),
            case(
                "aud number",
                score(&hs(json!({"aud": 1}))),
                401,
                "malformed_token",
            ),
            case(
                "iss trailing slash",
                score(&hs(json!({"iss": format!("{HS}/")}))),
                401,
                "unknown_issuer",
            ),
            case(
                "iss upper-case scheme",
                score(&hs(json!({"iss": "HTTPS://hs.example.com"}))),
                401,
                "unknown_issuer",
            ),
            case(
                "iss with a space",
                score(&hs(json!({"iss": format!("{HS} ")}))),
                401,
                "unknown_issuer",
            ),
            case(
                "iss array",
                score(&hs(json!({"iss": [HS]}))),
                401,
                "malformed_token",
            ),
            case(
                "iss missing",
                score(&hs(json!({"iss": null}))),
                401,
                "malformed_token",
            ),
            case(
                "another issuer's iss on an HS token",
                score(&hs(json!({"iss": KC}))),
                401,
                "algorithm_not_allowed",
            ),
        ],
    );
}

#[test]
fn authorization_scheme() {
    let e = engine();
    let t = rs(json!({}));
    let at = |value: String| req("POST", "h", "/score").auth(&value);
    check(
        &e,
        vec![
            case(
                "bearer (lower case)",
                at(format!("bearer {t}")),
                200,
                "allow",
            ),
            case("BEARER", at(format!("BEARER {t}")), 200, "allow"),
            case("two spaces", at(format!("Bearer  {t}")), 200, "allow"),
            case("trailing space", at(format!("Bearer {t} ")), 200, "allow"),
            case("tab", at(format!("Bearer\t{t}")), 401, "no_token"),
            case("no space", at(format!("Bearer{t}")), 401, "no_token"),
            case("scheme only", at("Bearer".into()), 401, "no_token"),
            case(
                "Basic",
                at("Basic YWxpY2U6c2VjcmV0".into()),
                401,
                "no_token",
            ),
            case("token only", at(t.clone()), 401, "no_token"),
            case(
                "two tokens in one value",
                at(format!("Bearer {t} {t}")),
                401,
                "malformed_token",
            ),
            case(
                "Envoy-joined values",
                at(format!("Bearer {t},Bearer {t}")),
                401,
                "malformed_token",
            ),
        ],
    );
}

#[test]
fn signatures() {
    let e = engine();
    let good_rs = rs(json!({}));
    let sig = signature_of(&good_rs);
    let good_es = es(json!({}));
    let es_sig = signature_of(&good_es);
    let mut cases = vec![
        case(
            "RSA signature one byte short",
            score(&with_signature(&good_rs, &sig[..sig.len() - 1])),
            401,
            "bad_signature",
        ),
        case(
            "RSA signature one byte long",
            score(&with_signature(&good_rs, &[sig.clone(), vec![0]].concat())),
            401,
            "bad_signature",
        ),
        case(
            "RSA signature with a leading zero",
            score(&with_signature(&good_rs, &[vec![0], sig.clone()].concat())),
            401,
            "bad_signature",
        ),
        case(
            "RSA signature doubled",
            score(&with_signature(
                &good_rs,
                &[sig.clone(), sig.clone()].concat(),
            )),
            401,
            "bad_signature",
        ),
        case(
            "RSA signature all zero",
            score(&with_signature(&good_rs, &vec![0; sig.len()])),
            401,
            "bad_signature",
        ),
        case(
            "RSA signature = modulus",
            score(&with_signature(
                &good_rs,
                &keys().rsa.public_key().to_components().n,
            )),
            401,
            "bad_signature",
        ),
        case(
            "RSA signature empty",
            score(&with_signature(&good_rs, &[])),
            401,
            "bad_signature",
        ),
        case(
            "ES256 signature DER-encoded",
            score(&with_signature(&good_es, &der_signature(&es_sig))),
            401,
            "bad_signature",
        ),
        case(
            "ES256 signature truncated",
            score(&with_signature(&good_es, &es_sig[..63])),
            401,
            "bad_signature",
        ),
        case(
            "ES256 signature r = s = 0",
            score(&with_signature(&good_es, &[0; 64])),
            401,
            "bad_signature",
        ),
        case(
            "ES256 signature (r, n)",
            score(&with_signature(
                &good_es,
                &[&es_sig[..32], &P256_ORDER[..]].concat(),
            )),
            401,
            "bad_signature",
        ),
    ];
    // HMAC tags other than the full one (found holding in the review of the pure-Rust path:
    // the tag is compared whole, in constant time).
    let good_hs = hs(json!({}));
    let tag = signature_of(&good_hs);
    for (what, token) in [
        ("HMAC tag empty", with_signature(&good_hs, &[])),
        ("HMAC tag one byte", with_signature(&good_hs, &tag[..1])),
        ("HMAC tag half", with_signature(&good_hs, &tag[..16])),
        (
            "HMAC tag extended",
            with_signature(&good_hs, &[tag.clone(), vec![0]].concat()),
        ),
        ("HMAC tag all zero", with_signature(&good_hs, &[0; 32])),
    ] {
        cases.push(case(what, score(&token), 401, "bad_signature"));
    }
    // Relabelled: an HS256 tag under HS512, and `none` without a tag.
    let hs512 = hs_header(r#"{"alg":"HS512","typ":"JWT"}"#);
    cases.push(case(
        "HS256 tag as HS512",
        score(&hs512),
        401,
        "algorithm_not_allowed",
    ));
    let none = with_signature(&hs_header(r#"{"alg":"none","typ":"JWT"}"#), &[]);
    cases.push(case(
        "HS token as none",
        score(&none),
        401,
        "algorithm_not_allowed",
    ));
    // High-S: (r, n - s) verifies mathematically. JWS (RFC 7518 §3.4) does not require low-S;
    // the filter's verifier accepts it like BoringSSL (Envoy's jwt_authn) does, and the token
    // cache is keyed by the token text, so malleability only costs one more verification.
    let high_s = [&es_sig[..32], &negate_mod_order(&es_sig[32..])[..]].concat();
    cases.push(case(
        "ES256 high-S",
        score(&with_signature(&good_es, &high_s)),
        200,
        "allow",
    ));
    check(&e, cases);
    assert_eq!(header_of(&good_es)["alg"], "ES256");
}

const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// n - s for a 32-byte big-endian s (0 < s < n).
fn negate_mod_order(s: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(P256_ORDER[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

/// The ASN.1 DER form (`SEQUENCE { INTEGER r, INTEGER s }`) of a raw `r || s` signature.
fn der_signature(raw: &[u8]) -> Vec<u8> {
    let int = |x: &[u8]| {
        let trimmed: Vec<u8> = x.iter().copied().skip_while(|&b| b == 0).collect();
        let mut v = if trimmed.first().is_some_and(|&b| b >= 0x80) {
            vec![0]
        } else {
            vec![]
        };
        v.extend(trimmed);
        [vec![0x02, v.len() as u8], v].concat()
    };
    let body = [int(&raw[..32]), int(&raw[32..])].concat();
    [vec![0x30, body.len() as u8], body].concat()
}

#[test]
fn paths() {
    let e = engine();
    let t = rs(json!({}));
    let at = |path: &str| req("POST", "h", path).bearer(&t);
    let mut cases = vec![
        case(
            "plain allowed model",
            at("/v1/models/fraud:predict"),
            200,
            "allow",
        ),
        case(
            "encoded allowed model",
            at("/v1/models/fr%61ud:predict"),
            200,
            "allow",
        ),
        case(
            "denied model",
            at("/v1/models/legacy:predict"),
            403,
            "explicit_deny",
        ),
        case(
            "denied model with a query",
            at("/v1/models/legacy:predict?x=/../"),
            403,
            "explicit_deny",
        ),
        case(
            "denied model with a fragment",
            at("/v1/models/legacy:predict#x"),
            403,
            "explicit_deny",
        ),
    ];
    for path in [
        "/v1/models/legacy:predict/..",
        "/v1/models/./legacy:predict",
        "/v1/models/../models/legacy:predict",
        "/v1//models/legacy:predict",
        "/v1/models/legacy:predict/.",
        "/v1\\models\\legacy:predict",
        "/v1/models%2flegacy:predict",
        "/v1/models%2Flegacy:predict",
        "/v1/models%5clegacy:predict",
        "/v1/models/%2e%2e/models/legacy:predict",
        "/v1/models/%2E/legacy:predict",
        "v1/models/legacy:predict",
        "",
    ] {
        cases.push(case(
            format!("path {path:?}"),
            at(path),
            400,
            "unnormalized_path",
        ));
    }
    check(&e, cases);
}

#[test]
fn methods_hosts_and_headers() {
    let e = engine();
    let mut cases = vec![
        case(
            "DELETE denied",
            req("DELETE", "h", "/models/m1"),
            403,
            "explicit_deny",
        ),
        case("GET allowed", req("GET", "h", "/models/m1"), 200, "allow"),
    ];
    // Methods compare case-insensitively: a deny on DELETE also catches `delete`.
    for method in ["delete", "Delete", "dElEtE"] {
        cases.push(case(
            format!("method {method}"),
            req(method, "h", "/models/m1"),
            403,
            "explicit_deny",
        ));
    }
    for host in [
        "secure.example.com",
        "SECURE.EXAMPLE.COM",
        "Secure.Example.Com",
        "secure.example.com.",
        "secure.example.com:8443",
        "SECURE.example.com.:443",
    ] {
        cases.push(case(
            format!("host {host:?}"),
            req("GET", host, "/internal/x"),
            403,
            "explicit_deny",
        ));
    }
    for host in [
        "other.example.com",
        "[::1]:8080",
        "127.0.0.1:10000",
        "notsecure.example.com",
    ] {
        cases.push(case(
            format!("host {host:?}"),
            req("GET", host, "/internal/x"),
            200,
            "allow",
        ));
    }
    // Headers: a rule header never matches a near miss.
    for value in ["Blue", "blue ", "blue,green", "blue\u{fffd}", ""] {
        cases.push(case(
            format!("deployment {value:?}"),
            req("GET", "h", "/deploy").header("azureml-model-deployment", value),
            403,
            "no_rule",
        ));
    }
    cases.push(case(
        "deployment blue",
        req("GET", "h", "/deploy").header("azureml-model-deployment", "blue"),
        200,
        "allow",
    ));
    // Many headers, and a token after them.
    let mut many = score(&rs(json!({})));
    for i in 0..2000 {
        many = many.header(&format!("x-filler-{i}"), &"v".repeat(32));
    }
    cases.push(case("2,000 headers", many, 200, "allow"));
    // A non-UTF-8 Authorization value reaches the engine converted lossily: malformed.
    let lossy = String::from_utf8_lossy(b"Bearer \xa1\xff.e30.").into_owned();
    cases.push(case(
        "non-UTF-8 Authorization",
        req("POST", "h", "/score").auth(&lossy),
        401,
        "malformed_token",
    ));
    check(&e, cases);
}

#[test]
fn numeric_dates_per_rfc7519() {
    let e = engine();
    let n = NOW as f64;
    let raw_exp = |text: &str| {
        hs_raw(
            br#"{"alg":"HS256"}"#,
            claims_json(HS, json!({"exp": 1}))
                .to_string()
                .replace("\"exp\":1", &format!("\"exp\":{text}"))
                .as_bytes(),
        )
    };
    check(
        &e,
        vec![
            case(
                "exp with a fraction",
                score(&hs(json!({"exp": n + 600.5}))),
                200,
                "allow",
            ),
            case(
                "exp in exponent notation",
                score(&raw_exp("1.8000006e9")),
                200,
                "allow",
            ),
            case(
                "nbf with a fraction (ceil)",
                score(&hs(json!({"nbf": n + 0.5}))),
                200,
                "allow",
            ),
            case(
                "iat with a fraction",
                score(&hs(json!({"iat": n - 10.25}))),
                200,
                "allow",
            ),
            case(
                "float exp far past",
                score(&hs(json!({"exp": n - 3600.5}))),
                401,
                "expired",
            ),
            case(
                "exp just past skew (floor)",
                score(&hs(json!({"exp": n - 60.5}))),
                401,
                "expired",
            ),
            case(
                "exp above 2^53",
                score(&raw_exp("9007199254740993")),
                401,
                "malformed_token",
            ),
            case(
                "exp u64::MAX",
                score(&raw_exp("18446744073709551615")),
                401,
                "malformed_token",
            ),
            case(
                "nbf above 2^53",
                score(&hs(json!({"nbf": 9_007_199_254_740_993u64}))),
                401,
                "malformed_token",
            ),
        ],
    );
}

#[test]
fn duplicate_members_and_crit() {
    let e = engine();
    let payload = claims_json(HS, json!({})).to_string();
    let dup_payload =
        payload.replacen("\"sub\":\"alice\"", "\"sub\":\"alice\",\"sub\":\"root\"", 1);
    assert_ne!(dup_payload, payload);
    let dup_iss = payload.replacen(
        &format!("\"iss\":\"{HS}\""),
        &format!("\"iss\":\"{KC}\",\"iss\":\"{HS}\""),
        1,
    );
    check(
        &e,
        vec![
            case("duplicate alg in the header", score(&hs_header(r#"{"alg":"none","alg":"HS256"}"#)), 401, "malformed_token"),
            case("duplicate kid in the header", score(&hs_header(r#"{"alg":"HS256","kid":"a","kid":"b"}"#)), 401, "malformed_token"),
            case("duplicate sub in the payload", score(&hs_raw(br#"{"alg":"HS256"}"#, dup_payload.as_bytes())), 401, "malformed_token"),
            case("duplicate iss in the payload", score(&hs_raw(br#"{"alg":"HS256"}"#, dup_iss.as_bytes())), 401, "malformed_token"),
            case("crit empty", score(&hs_header(r#"{"alg":"HS256","crit":[]}"#)), 401, "malformed_token"),
            case("crit a string", score(&hs_header(r#"{"alg":"HS256","crit":"exp"}"#)), 401, "malformed_token"),
            case("crit an object", score(&hs_header(r#"{"alg":"HS256","crit":{"b64":false}}"#)), 401, "malformed_token"),
            case("trusted signature with a jwk object", score(&hs_header(&json!({"alg": "HS256", "jwk": {"kty": "oct", "k": b64(b"attacker-secret-attacker-secret!")}}).to_string())), 401, "malformed_token"),
        ],
    );
}

#[test]
fn kid_rules() {
    let e = engine();
    // No kid: at most one candidate key. kc has two RSA keys and one EC key.
    let rsa_no_kid = RS256KeyPair::from_pem(&keys().rsa.to_pem().unwrap())
        .unwrap()
        .sign(claims(json!({})))
        .unwrap();
    check(
        &e,
        vec![case(
            "RS256 without kid, two RSA keys",
            score(&rsa_no_kid),
            401,
            "unknown_key",
        )],
    );
    // An 8 KiB kid is named in the reason truncated to 64 characters, printable only.
    let long = format!("\u{1b}[31m{}", "k".repeat(8 * 1024));
    let token = keys()
        .rsa
        .clone()
        .with_key_id(&long)
        .sign(claims(json!({})))
        .unwrap();
    let d = decide(&e, &score(&token));
    let text = d.reason.unwrap().to_string();
    assert!(
        !text.contains(&"k".repeat(65)),
        "{} bytes: {text:.200}",
        text.len()
    );
    assert!(!text.contains('\u{1b}'), "{text:.200}");
}

#[test]
fn several_authorization_headers() {
    let e = engine();
    let t = rs(json!({}));
    let other = es(json!({"sub": "bob"}));
    check(
        &e,
        vec![
            case(
                "two Authorization headers, same token",
                req("POST", "h", "/score").bearer(&t).bearer(&t),
                401,
                "malformed_token",
            ),
            case(
                "two Authorization headers, two tokens",
                req("POST", "h", "/score").bearer(&t).bearer(&other),
                401,
                "malformed_token",
            ),
            case(
                "valid then junk",
                req("POST", "h", "/score").bearer(&t).auth("Bearer junk"),
                401,
                "malformed_token",
            ),
            case(
                "Authorization and authorization",
                req("POST", "h", "/score")
                    .header("Authorization", &format!("Bearer {t}"))
                    .bearer(&t),
                401,
                "malformed_token",
            ),
        ],
    );
}

#[test]
fn encoded_paths_and_path_parameters() {
    let e = engine();
    let t = rs(json!({}));
    let at = |path: &str| req("POST", "h", path).bearer(&t);
    let mut cases = vec![
        case(
            "encoded unreserved letter",
            at("/v1/models/leg%61cy:predict"),
            403,
            "explicit_deny",
        ),
        case(
            "encoded first letter",
            at("/v1/models/%6Cegacy:predict"),
            403,
            "explicit_deny",
        ),
        case(
            "encoded colon",
            at("/v1/models/legacy%3Apredict"),
            403,
            "explicit_deny",
        ),
        case(
            "encoded segment",
            at("/v1/%6d%6f%64%65%6c%73/legacy:predict"),
            403,
            "explicit_deny",
        ),
    ];
    for path in [
        "/v1/models/%252f/legacy:predict",
        "/v1/models/legacy%3bv=1:predict",
        "/v1/models/legacy%3Fx:predict",
        "/v1/models/legacy%23x:predict",
        "/v1/models/legacy%00:predict",
        "/v1/models/legacy%0a:predict",
        "/v1/models/legacy%7F:predict",
        "/v1/models/legacy%ff:predict",
        "/v1/models/%c3%28:predict",
        "/v1/models/%G1:predict",
        "/v1/models/legacy:predict%",
        "/v1/models/legacy:predict%4",
        "/v1/models/%2e/legacy:predict",
        "/v1/models/.%2e/legacy:predict",
    ] {
        cases.push(case(
            format!("path {path:?}"),
            at(path),
            400,
            "unnormalized_path",
        ));
    }
    for path in [
        "/admin;x=1/y",
        "/public/..;/admin/x",
        "/public;/x",
        "/v1/models/legacy;v=1:predict",
    ] {
        cases.push(case(
            format!("path parameters {path:?}"),
            at(path),
            400,
            "path_parameters",
        ));
    }
    check(&e, cases);
    // `path_parameters = "strip"`: each segment's `;…` is removed before matching.
    let strip = engine_for(&policy().replacen(
        "version = 1\n",
        "version = 1\npath_parameters = \"strip\"\n",
        1,
    ))
    .unwrap();
    check(
        &strip,
        vec![
            case(
                "strip: /admin;x=1/y is /admin/y",
                at("/admin;x=1/y"),
                403,
                "explicit_deny",
            ),
            case(
                "strip: /public/..;/admin/x has a dot segment",
                at("/public/..;/admin/x"),
                400,
                "unnormalized_path",
            ),
            case(
                "strip: /public;a/x is /public/x",
                at("/public;a/x"),
                200,
                "allow",
            ),
        ],
    );
}

#[test]
fn invalid_hosts() {
    let e = engine();
    let mut cases = Vec::new();
    for host in [
        "secure.example.com:80:80",
        "",
        "secure.example.com:",
        "secure.example.com:http",
        "secure.example.com:-1",
        " secure.example.com",
        "secure .example.com",
        "user@secure.example.com",
        "secure.example.com/x",
        "secure.example.com\\x",
        "[::1",
        "[::1]x",
    ] {
        cases.push(case(
            format!("host {host:?}"),
            req("GET", host, "/internal/x"),
            400,
            "invalid_host",
        ));
    }
    check(&e, cases);
}

#[test]
fn identity_headers_cannot_be_refused_or_split() {
    let e = engine();
    let token = hs(json!({
        "sub": "alice\r\nx-evil: 1\u{0}%41",
        "roles": ["ml-scorer", "viewer,ml-admin", "ü"],
    }));
    let d = decide(&e, &score(&token));
    assert!(d.allowed, "{:?}", d.reason);
    let headers: HashMap<String, String> = e
        .upstream_headers(&d)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_owned()))
        .collect();
    assert_eq!(
        headers["x-claimgate-subject"],
        "alice%0D%0Ax-evil:%201%00%2541"
    );
    assert_eq!(
        headers["x-claimgate-roles"],
        "ml-scorer,viewer%2Cml-admin,%C3%BC"
    );
    for (name, value) in &headers {
        assert!(
            value.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "{name}: {value:?}"
        );
    }
}

#[test]
fn compiler_refuses_unmatchable_rule_headers() {
    // Rules never see identity-prefix headers (the engine removes them) nor non-ASCII values
    // (the filter converts non-UTF-8 lossily): a rule naming either could never match as
    // written, so the compiler refuses it.
    let compile_err = |rule_headers: &str| {
        let policy = policy().replace(
            r#"headers = { "azureml-model-deployment" = "blue" }"#,
            rule_headers,
        );
        engine_for(&policy).err()
    };
    for headers in [
        r#"headers = { "x-claimgate-subject" = "root" }"#,
        r#"headers = { "X-Claimgate-Roles" = "admin" }"#,
        r#"headers = { "azureml-model-deployment" = "bl\u00fce" }"#,
        r#"headers = { "azureml-model-deployment" = "\ufffd" }"#,
    ] {
        let error = compile_err(headers).unwrap_or_else(|| panic!("compiled: {headers}"));
        assert!(error.contains("header"), "{headers}: {error}");
    }
    assert!(engine_for(&policy()).is_ok());
}
