//! Shared fixture for the fuzz targets: one policy with RSA, EC and HMAC issuers, fixed
//! keys (so a crash reproduces byte for byte), and tokens minted with them.
//!
//! The keys are test keys made for fuzzing; nothing here is ever deployed.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use claimgate_core::blob;
use claimgate_core::compile::compile;
use claimgate_core::engine::{Engine, RemoteKeys};
use jwt_simple::prelude::*;
use serde_json::{Value, json};

/// The clock every target decides at.
pub const NOW: u64 = 1_800_000_000;
/// `iss` of the RSA/EC issuer.
pub const KC: &str = "https://kc.test/realms/ml";
/// `iss` of the HMAC issuer.
pub const HS: &str = "https://hs.test";
/// The HMAC issuer's secret (32 bytes).
pub const HMAC_SECRET: &[u8; 32] = b"claimgate-fuzz-hmac-secret-32byt";

/// Public half of a 2048-bit RSA test key (its private half was thrown away: the fuzzer
/// reaches the RSA verifier with forged signatures only).
const RSA_N: &str = "4xmkrjG2ERuLHwrJnQHChmErchshZL-GLRq0G6J-uXx6tjZ3DHAo8HDmpkk2OURS9nklCxKLGXmryLGjGSvEJSER-bx38FhjNlTKPZZUOc2ja559CYo7HgLcStkJFS6d_-y0MJ3Ghw4_OoTtlOPSq4wQAOOOlbvvhSnv1Qy-BDG_EuCSVU264jmiCvo8vT6tEqEuSTNiQjFgBuYRsP2eVH9qUSTZPJXXHzUCpNxk2jPmygc2ZJoPgBvbjr1VKidy5vJIP6A5mWIEfY24cakgmlABkH9Z2qyiIV8yKLoYjqc1a5FzQGF5OUIlNXEhuh67OpNEQoxPtHhjHDUbBGslSw";

/// The fuzzing policy: every rule shape the engine knows (host, method, header, templates,
/// deny, public, audit, scopes), two issuers.
const POLICY: &str = r#"
version = 1
name = "fuzz"

[issuers.kc]
issuer = "https://kc.test/realms/ml"
audiences = ["scoring"]
audience_claims = ["aud", "azp"]
algorithms = ["RS256", "ES256"]
max_lifetime = "2h"
roles = ["realm_access.roles", "resource_access.scoring.roles", "roles", "groups"]
scopes = ["scope", "scp"]
[issuers.kc.jwks]
inline = '@JWKS@'

[issuers.hs]
issuer = "https://hs.test"
audiences = ["scoring"]
algorithms = ["HS256"]
hmac_secret = "@SECRET@"
roles = ["roles"]

[[rules]]
name = "fraud-blue"
hosts = ["fraud.example.com", "*.inference.example.com"]
methods = ["POST"]
paths = ["/score"]
headers = { "azureml-model-deployment" = "blue" }
allow = { issuers = ["kc", "hs"], roles_any = ["ml-scorer"] }

[[rules]]
name = "kserve"
paths = ["/v1/models/{model}:predict", "/v2/models/{model}/infer"]
allow = { roles_any = ["model.{model}.invoke", "ml-admin"] }

[[rules]]
name = "no-interns"
paths = ["/v2/models/{model}/infer"]
deny = { roles_any = ["intern"] }

[[rules]]
name = "legacy"
paths = ["/v1/models/legacy:predict"]
deny = "anyone"

[[rules]]
name = "admin"
methods = ["GET", "POST", "DELETE"]
paths = ["/admin/*"]
allow = { roles_all = ["admin", "ml-admin"] }

[[rules]]
name = "public"
paths = ["/", "/public/*", "/v2/health/*"]
allow = "anyone"

[[rules]]
name = "scoped"
paths = ["/scoped"]
allow = { scopes_all = ["score:write"] }

[[rules]]
name = "shadow"
paths = ["/audited/*"]
audit = true
allow = { roles_any = ["auditor"] }

[revoked]
token_ids = ["leaked"]
[revoked.subjects]
kc = ["retired"]
"#;

/// The fuzzing keys and the engine built from them through the blob, as the filter builds it.
pub struct Fixture {
    /// The EC signing key (kid `ec-1`).
    pub ec: ES256KeyPair,
    /// The HMAC key of issuer `hs`.
    pub hmac: HS256Key,
    /// The engine.
    pub engine: Engine,
    /// No fetched keys (every issuer has inline keys or a secret).
    pub remote: RemoteKeys,
    /// Tokens for the decide target: valid, expired, wrong role, HMAC, intern, admin.
    pub tokens: Vec<String>,
}

/// Base claims of a token the policy accepts; `extra` overrides (null removes).
pub fn claims(extra: Value) -> JWTClaims<serde_json::Map<String, Value>> {
    let mut base = json!({"iss": KC, "sub": "alice", "aud": "scoring", "iat": NOW - 10,
                          "exp": NOW + 600, "realm_access": {"roles": ["ml-scorer"]}});
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(k);
            } else {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    serde_json::from_value(base).unwrap_or_else(|e| unreachable!("fixture claims: {e}"))
}

/// Signs `header.payload` (both raw bytes, base64url-encoded here) with the HMAC issuer's key.
pub fn hmac_token(header: &[u8], payload: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let tag = HS256Key::from_bytes(HMAC_SECRET).authentication_tag(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag))
}

fn build() -> Fixture {
    let ec = ES256KeyPair::from_bytes(&[7u8; 32])
        .unwrap_or_else(|e| unreachable!("fixed EC key: {e}"))
        .with_key_id("ec-1");
    let point = ec.public_key().public_key().to_bytes_uncompressed();
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": RSA_N, "e": "AQAB"},
        {"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "use": "sig",
         "x": URL_SAFE_NO_PAD.encode(point.get(1..33).unwrap_or_default()),
         "y": URL_SAFE_NO_PAD.encode(point.get(33..).unwrap_or_default())},
    ]});
    let policy = POLICY
        .replace("@JWKS@", &jwks.to_string())
        .replace("@SECRET@", &URL_SAFE_NO_PAD.encode(HMAC_SECRET));
    let compiled = compile(&policy, "fuzz.toml", &|_: &str| Err("no files".to_owned()))
        .unwrap_or_else(|d| unreachable!("fuzz policy does not compile: {d:?}"));
    let config = serde_json::to_vec(
        &blob::plugin_config(&compiled.policy).unwrap_or_else(|e| unreachable!("{e}")),
    )
    .unwrap_or_else(|e| unreachable!("{e}"));
    let engine = blob::engine_from_plugin_config(&config).unwrap_or_else(|e| unreachable!("{e}"));
    let sign = |extra: Value| {
        ec.sign(claims(extra))
            .unwrap_or_else(|e| unreachable!("signing: {e}"))
    };
    let hs_claims = json!({"iss": HS, "sub": "hs-user", "aud": "scoring", "exp": NOW + 600,
                           "roles": ["ml-scorer", "model.fraud.invoke"]});
    let tokens = vec![
        sign(json!({})),
        sign(json!({"iat": NOW - 4000, "exp": NOW - 3000})),
        sign(json!({"realm_access": {"roles": ["viewer"]}})),
        sign(json!({"realm_access": {"roles": ["model.fraud.invoke", "intern"]}})),
        sign(
            json!({"realm_access": {"roles": ["admin", "ml-admin", "auditor"]}, "scope": "score:write"}),
        ),
        sign(json!({"sub": "retired"})),
        sign(json!({"_claim_names": {"groups": "src1"}, "realm_access": null})),
        hmac_token(
            br#"{"alg":"HS256","typ":"JWT"}"#,
            hs_claims.to_string().as_bytes(),
        ),
    ];
    Fixture {
        ec,
        hmac: HS256Key::from_bytes(HMAC_SECRET),
        engine,
        remote: RemoteKeys::default(),
        tokens,
    }
}

/// The fixture, built once per fuzzing process (libFuzzer runs inputs on one thread; the
/// engine need not be `Sync`).
pub fn fixture() -> &'static Fixture {
    thread_local! {
        static FIXTURE: &'static Fixture = Box::leak(Box::new(build()));
    }
    FIXTURE.with(|f| *f)
}
