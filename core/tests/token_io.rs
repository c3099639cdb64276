#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! Issue 10 items 2 and 3 at the engine (what `explain` and the filter share): token
//! locations (headers with prefixes, query parameters, cookies; per issuer), ambiguity, the
//! issuer's own locations, and claims sent upstream as headers.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use claimgate_core::blob;
use claimgate_core::compile::compile;
use claimgate_core::engine::{Decision, Engine, RemoteKeys, Request};
use jwt_simple::prelude::*;
use serde_json::{Value, json};

const NOW: u64 = 1_800_000_000;
const A: &str = "https://a.example.com";
const B: &str = "https://b.example.com";

const POLICY: &str = r#"
version = 1
[token]
headers = ["authorization", { name = "x-token", prefix = "Token " }]
cookies = ["session"]

[issuers.a]
issuer = "https://a.example.com"
algorithms = ["ES256"]
from_headers = [{ name = "x-jwt-assertion", prefix = "" }]
from_params = ["access_token"]
claims_to_headers = { "x-tenant" = "tid", "x-groups" = "groups", "x-level" = "level", "x-org" = "org" }
payload_to_header = "x-jwt-payload"
[issuers.a.jwks]
file = "a.json"

[issuers.b]
issuer = "https://b.example.com"
algorithms = ["ES256"]
[issuers.b.jwks]
file = "b.json"

[[rules]]
name = "private"
paths = ["/private"]
allow = "authenticated"

[[rules]]
name = "public"
paths = ["/public"]
allow = "anyone"
"#;

struct Fixture {
    a: ES256KeyPair,
    b: ES256KeyPair,
    engine: Engine,
}

fn jwks(key: &ES256KeyPair, kid: &str) -> String {
    let point = key.public_key().public_key().to_bytes_uncompressed();
    json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])}]})
    .to_string()
}

fn fixture() -> Fixture {
    let a = ES256KeyPair::generate().with_key_id("a-1");
    let b = ES256KeyPair::generate().with_key_id("b-1");
    let files: HashMap<&str, String> =
        HashMap::from([("a.json", jwks(&a, "a-1")), ("b.json", jwks(&b, "b-1"))]);
    let reader = |name: &str| files.get(name).cloned().ok_or_else(|| "missing".to_owned());
    let compiled = compile(POLICY, "policy.toml", &reader).unwrap();
    let config = serde_json::to_vec(&blob::plugin_config(&compiled.policy).unwrap()).unwrap();
    let engine = blob::engine_from_plugin_config(&config).unwrap();
    Fixture { a, b, engine }
}

fn sign(key: &ES256KeyPair, iss: &str, extra: Value) -> String {
    let mut claims = json!({"iss": iss, "sub": "alice", "iat": NOW - 10, "exp": NOW + 600});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    let claims: JWTClaims<serde_json::Map<String, Value>> = serde_json::from_value(claims).unwrap();
    key.sign(claims).unwrap()
}

fn decide(f: &Fixture, path: &str, headers: &[(&str, &str)]) -> Decision {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let request = Request {
        method: "GET",
        host: "h",
        path,
        headers: &headers,
    };
    f.engine
        .decide(&request, NOW, &RemoteKeys::default(), Some(&mut Vec::new()))
}

fn code(d: &Decision) -> &'static str {
    d.reason.as_ref().map_or("allow", |r| r.code())
}

fn issuer(d: &Decision) -> &str {
    d.identity.as_deref().map_or("", |i| i.issuer.as_str())
}

fn upstream(f: &Fixture, d: &Decision) -> HashMap<String, String> {
    f.engine
        .upstream_headers(d)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_owned()))
        .collect()
}

#[test]
fn a_raw_header_a_custom_prefix_and_bearer_are_read() {
    let f = fixture();
    let ta = sign(&f.a, A, json!({}));
    let tb = sign(&f.b, B, json!({}));
    let d = decide(&f, "/private", &[("x-jwt-assertion", &ta)]);
    assert_eq!((code(&d), issuer(&d)), ("allow", "a"));
    for value in [format!("Token {tb}"), format!("token   {tb}")] {
        let d = decide(&f, "/private", &[("x-token", &value)]);
        assert_eq!((code(&d), issuer(&d)), ("allow", "b"), "{value}");
    }
    let d = decide(
        &f,
        "/private",
        &[("authorization", &format!("Bearer {tb}"))],
    );
    assert_eq!((code(&d), issuer(&d)), ("allow", "b"));
    // Without its prefix a value is not a token (and never a token for the other prefix).
    for value in [format!("Bearer {tb}"), tb.clone(), format!("x Token {tb}")] {
        let d = decide(&f, "/private", &[("x-token", &value)]);
        assert_eq!(code(&d), "no_token", "{value}");
    }
}

#[test]
fn a_query_parameter_is_read_decoded_and_never_reaches_path_matching() {
    let f = fixture();
    let ta = sign(&f.a, A, json!({}));
    let d = decide(&f, &format!("/private?x=1&access_token={ta}"), &[]);
    assert_eq!((code(&d), issuer(&d)), ("allow", "a"));
    assert_eq!(d.rule.as_deref(), Some("private"));
    // Percent-encoded, as Envoy decodes it; and a name encoded.
    let encoded = ta.replace('.', "%2E");
    let d = decide(&f, &format!("/private?access%5Ftoken={encoded}#frag"), &[]);
    assert_eq!((code(&d), issuer(&d)), ("allow", "a"));
    // Only the named parameter; an empty one is no token.
    let d = decide(&f, &format!("/private?token={ta}&access_token="), &[]);
    assert_eq!(code(&d), "no_token");
    // Repeated: identical copies count once, different ones are ambiguous.
    let d = decide(
        &f,
        &format!("/private?access_token={ta}&access_token={ta}"),
        &[],
    );
    assert_eq!(code(&d), "allow");
    let other = sign(&f.a, A, json!({"sub": "bob"}));
    let d = decide(
        &f,
        &format!("/private?access_token={ta}&access_token={other}"),
        &[],
    );
    assert_eq!((code(&d), d.status()), ("malformed_token", 401));
}

#[test]
fn cookies_are_read_from_every_cookie_header() {
    let f = fixture();
    let tb = sign(&f.b, B, json!({}));
    let value = format!("theme=dark; session={tb}; lang=en");
    let d = decide(&f, "/private", &[("cookie", &value)]);
    assert_eq!((code(&d), issuer(&d)), ("allow", "b"));
    let quoted = format!("session=\"{tb}\"");
    let d = decide(&f, "/private", &[("cookie", "a=b"), ("cookie", &quoted)]);
    assert_eq!((code(&d), issuer(&d)), ("allow", "b"));
    // Cookie names compare exactly; another cookie is not a token.
    let d = decide(&f, "/private", &[("cookie", &format!("Session={tb}"))]);
    assert_eq!(code(&d), "no_token");
    let other = sign(&f.b, B, json!({"sub": "bob"}));
    let two = [
        ("cookie", format!("session={tb}")),
        ("cookie", format!("session={other}")),
    ];
    let two: Vec<(&str, &str)> = two.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let d = decide(&f, "/private", &two);
    assert_eq!(code(&d), "malformed_token");
}

#[test]
fn different_tokens_in_two_places_are_ambiguous() {
    let f = fixture();
    let ta = sign(&f.a, A, json!({}));
    let tb = sign(&f.b, B, json!({}));
    let bearer = format!("Bearer {tb}");
    let d = decide(
        &f,
        &format!("/private?access_token={ta}"),
        &[("authorization", &bearer)],
    );
    assert_eq!((code(&d), d.status()), ("malformed_token", 401));
    // The same token in two places counts once.
    let cookie = format!("session={tb}");
    let d = decide(
        &f,
        "/private",
        &[("authorization", &bearer), ("cookie", &cookie)],
    );
    assert_eq!((code(&d), issuer(&d)), ("allow", "b"));
    // A repeated token header stays ambiguous, as before (Envoy joins the copies).
    let d = decide(
        &f,
        "/private",
        &[("authorization", &bearer), ("authorization", &bearer)],
    );
    assert_eq!(code(&d), "malformed_token");
}

#[test]
fn a_token_where_its_issuer_does_not_read_is_from_an_unknown_issuer() {
    let f = fixture();
    let ta = sign(&f.a, A, json!({}));
    let tb = sign(&f.b, B, json!({}));
    // b reads the [token] locations, not a's raw header or query parameter.
    let d = decide(&f, "/private", &[("x-jwt-assertion", &tb)]);
    assert_eq!((code(&d), d.status()), ("unknown_issuer", 401));
    let d = decide(&f, &format!("/private?access_token={tb}"), &[]);
    assert_eq!(code(&d), "unknown_issuer");
    // a names its own locations: the policy's are not a's.
    let d = decide(
        &f,
        "/private",
        &[("authorization", &format!("Bearer {ta}"))],
    );
    assert_eq!(code(&d), "unknown_issuer");
    let d = decide(&f, "/private", &[("cookie", &format!("session={ta}"))]);
    assert_eq!(code(&d), "unknown_issuer");
    // On a public path a token from the wrong place is no identity.
    let d = decide(&f, "/public", &[("cookie", &format!("session={ta}"))]);
    assert!(d.identity.is_none());
    // A token a's location holds, also found where only b reads: a reads one of them.
    let d = decide(
        &f,
        &format!("/private?access_token={ta}"),
        &[("cookie", &format!("session={ta}"))],
    );
    assert_eq!((code(&d), issuer(&d)), ("allow", "a"));
}

#[test]
fn claims_reach_the_upstream_as_headers_encoded() {
    let f = fixture();
    let ta = sign(
        &f.a,
        A,
        json!({"tid": "t-1\r\nx-admin: 1", "groups": ["g1", "g,2", 7, {"x": 1}], "level": 3,
               "org": {"id": 1}}),
    );
    let d = decide(&f, "/private", &[("x-jwt-assertion", &ta)]);
    assert_eq!(code(&d), "allow");
    let headers = upstream(&f, &d);
    assert_eq!(headers["x-tenant"], "t-1%0D%0Ax-admin:%201");
    assert_eq!(headers["x-groups"], "g1,g%2C2,7");
    assert_eq!(headers["x-level"], "3");
    // Objects are not sent.
    assert!(!headers.contains_key("x-org"));
    assert_eq!(headers["x-jwt-payload"], ta.split('.').nth(1).unwrap());
    assert_eq!(headers["x-claimgate-issuer"], "a");
    // A token without the claim: no header (and the filter removes any client copy).
    let bare = sign(&f.a, A, json!({}));
    let d = decide(&f, "/private", &[("x-jwt-assertion", &bare)]);
    let headers = upstream(&f, &d);
    assert!(!headers.contains_key("x-tenant"));
    assert!(headers.contains_key("x-jwt-payload"));
    // Another issuer's caller gets none of a's headers.
    let tb = sign(&f.b, B, json!({"tid": "t-2"}));
    let d = decide(
        &f,
        "/private",
        &[("authorization", &format!("Bearer {tb}"))],
    );
    assert_eq!(code(&d), "allow");
    assert!(!upstream(&f, &d).contains_key("x-tenant"));
    // No verified caller (public path without a token): nothing.
    let d = decide(&f, "/public", &[]);
    assert_eq!(code(&d), "allow");
    assert!(upstream(&f, &d).is_empty());
}

#[test]
fn claim_headers_are_the_filters_own() {
    let f = fixture();
    let names = f.engine.header_names();
    for name in [
        "x-tenant",
        "X-Tenant",
        "x_tenant",
        "x-jwt-payload",
        "x-claimgate-subject",
    ] {
        assert!(names.owns(name), "{name}");
    }
    assert!(!names.owns("x-tenant-id"));
    assert!(!names.owns("x-tenan"));
}

#[test]
fn identity_debug_never_prints_the_payload() {
    let f = fixture();
    let ta = sign(&f.a, A, json!({"tid": "t"}));
    let d = decide(&f, "/private", &[("x-jwt-assertion", &ta)]);
    let identity = d.identity.unwrap();
    let payload = ta.split('.').nth(1).unwrap();
    assert!(!format!("{identity:?}").contains(payload));
    assert!(!serde_json::to_string(&*identity).unwrap().contains(payload));
}

fn errors(policy: &str) -> Vec<(String, usize)> {
    let reader = |_: &str| Err::<String, String>("no files".to_owned());
    match compile(policy, "p.toml", &reader) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .filter(|e| e.severity == claimgate_core::compile::Severity::Error)
            .map(|e| {
                assert!(e.hint.is_some(), "{e}");
                (e.kind.to_owned(), e.line)
            })
            .collect(),
    }
}

const ISSUER: &str = "[issuers.a]\nissuer = \"https://a\"\nalgorithms = [\"HS256\"]\nhmac_secret = \"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE\"\n";

#[test]
fn the_compiler_refuses_headers_that_would_clash() {
    let cases: [(&str, &str); 11] = [
        ("x-claimgate-tenant", "bad_claim_header"),
        ("X_Claimgate_Tenant", "bad_claim_header"),
        ("connection", "bad_claim_header"),
        ("transfer-encoding", "bad_claim_header"),
        ("host", "bad_claim_header"),
        ("authorization", "bad_claim_header"),
        ("cookie", "bad_claim_header"),
        ("x-http-method-override", "bad_claim_header"),
        ("X_Method_Override", "bad_claim_header"),
        (":path", "bad_claim_header"),
        ("x tenant", "bad_claim_header"),
    ];
    for (header, kind) in cases {
        let policy =
            format!("version = 1\n{ISSUER}claims_to_headers = {{ \"{header}\" = \"tid\" }}\n");
        let found = errors(&policy);
        assert_eq!(found, [(kind.to_owned(), 6)], "{header}");
    }
    // A custom token header cannot be set from claims either, nor twice by one issuer.
    let policy = format!(
        "version = 1\n[token]\nheaders = [{{ name = \"x-jwt\", prefix = \"\" }}]\n{ISSUER}claims_to_headers = {{ \"x-jwt\" = \"tid\" }}\n"
    );
    assert_eq!(errors(&policy), [("bad_claim_header".to_owned(), 8)]);
    let policy = format!(
        "version = 1\n{ISSUER}claims_to_headers = {{ \"x-t\" = \"tid\" }}\npayload_to_header = \"X-T\"\n"
    );
    assert_eq!(errors(&policy), [("bad_claim_header".to_owned(), 7)]);
    let policy = format!("version = 1\n{ISSUER}claims_to_headers = {{ \"x-t\" = \"a..b\" }}\n");
    assert_eq!(errors(&policy), [("bad_claim_path".to_owned(), 6)]);
}

#[test]
fn the_compiler_refuses_rules_on_claim_headers() {
    let policy = format!(
        "version = 1\n{ISSUER}claims_to_headers = {{ \"x-tenant\" = \"tid\" }}\n[[rules]]\nname = \"r\"\nheaders = {{ \"X_Tenant\" = \"t1\" }}\nallow = \"authenticated\"\n"
    );
    assert_eq!(errors(&policy), [("header_never_seen".to_owned(), 9)]);
}

#[test]
fn the_compiler_refuses_unusable_locations() {
    let cases: [(&str, &str, usize); 9] = [
        (
            "[token]\nheaders = [{ name = \"x-t\", prefix = \" T\" }]",
            "bad_token_prefix",
            3,
        ),
        (
            "[token]\nheaders = [{ name = \"x-t\", prefix = \"T\\n\" }]",
            "bad_token_prefix",
            3,
        ),
        ("[token]\nheaders = [\"cookie\"]", "bad_token_header", 3),
        (
            "[token]\nheaders = [\"x-claimgate-token\"]",
            "bad_token_header",
            3,
        ),
        ("[token]\nquery = [\"a&b\"]", "bad_token_param", 3),
        ("[token]\ncookies = [\"a;b\"]", "bad_token_cookie", 3),
        ("[token]\nheaders = []", "bad_token_header", 1),
        (
            "[issuers.z]\nissuer = \"z\"\nalgorithms = [\"ES256\"]\nfrom_headers = []\nfrom_params = []",
            "bad_token_header",
            2,
        ),
        (
            "[issuers.a]\nissuer = \"https://a\"\nalgorithms = [\"HS256\"]\nhmac_secret = \"MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE\"\nfrom_headers = [\"x-claimgate-t\"]",
            "bad_token_header",
            6,
        ),
    ];
    for (text, kind, line) in cases {
        let policy = format!("version = 1\n{text}\n");
        let found = errors(&policy);
        assert!(
            found.iter().any(|(k, l)| k == kind && *l == line),
            "{text}: {found:?}"
        );
    }
    // Table header with an unknown key is refused; the plain and the table forms compile.
    assert!(
        !errors("version = 1\n[token]\nheaders = [{ name = \"x\", prefx = \"\" }]\n").is_empty()
    );
    assert!(
        errors("version = 1\n[token]\nheaders = [\"authorization\", { name = \"x-jwt\" }, { name = \"x-raw\", prefix = \"\" }]\nquery = [\"access_token\"]\ncookies = [\"session\"]\n")
            .is_empty()
    );
}
