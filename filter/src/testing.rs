//! Test fixtures: a policy with one remote ES256 issuer, keys that mint tokens, and a root
//! configured on a mock host.

use std::cell::RefCell;
use std::rc::Rc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::prelude::*;
use serde_json::{Map, Value, json};

use claimgate_core::engine::Engine;

use crate::host::mock::MockHost;
use crate::state::Shared;

/// The tests' clock, seconds.
pub const NOW: u64 = 1_800_000_000;
/// The tests' clock, ms.
pub const NOW_MS: u64 = NOW * 1000;
/// The root context id on the mock host.
pub const ROOT: u32 = 1;
/// The issuer.
pub const ISS: &str = "https://idp.test/realms/ml";

/// One remote issuer (held before the first fetch), a role rule, a public path.
pub const POLICY: &str = r#"
version = 1
name = "unit"

[issuers.idp]
issuer     = "https://idp.test/realms/ml"
audiences  = ["scoring"]
algorithms = ["ES256"]
roles      = ["roles"]
[issuers.idp.jwks]
uri     = "http://idp.test/keys"
cluster = "jwks"
refresh = "10m"
timeout = "5s"

[[rules]]
name  = "score"
paths = ["/score"]
allow = { roles_any = ["ml-scorer"] }

[[rules]]
name  = "health"
paths = ["/health"]
allow = "anyone"

[[rules]]
name    = "blue"
paths   = ["/blue"]
headers = { "deployment" = "blue" }
allow   = "anyone"
"#;

/// The pluginConfig JSON of a policy.
pub fn plugin_config(policy: &str) -> Vec<u8> {
    let compiled = claimgate_core::compile::compile(policy, "policy.toml", &|_| {
        Err("no files in unit tests".to_owned())
    })
    .unwrap();
    let config = claimgate_core::blob::plugin_config(&compiled.policy).unwrap();
    serde_json::to_vec(&config).unwrap()
}

/// An engine for a policy, built as the filter builds it.
pub fn engine(policy: &str) -> Engine {
    claimgate_core::blob::engine_from_plugin_config(&plugin_config(policy)).unwrap()
}

/// A root configured on `host` with `policy` and ticked once: the first fetch is
/// dispatched (roots fetch from their first tick, see `root::configure`).
pub fn configured(host: &MockHost, policy: &str) -> Rc<RefCell<Shared>> {
    host.state.borrow_mut().config = Some(plugin_config(policy));
    host.enter(ROOT);
    let shared = crate::root::configure(host, ROOT).unwrap();
    crate::root::tick(host, &shared);
    shared
}

/// Claims of a valid token for the policy, with overrides (`null` removes a claim).
pub fn claims(extra: &[(&str, Value)]) -> Value {
    let mut claims = json!({
        "iss": ISS, "sub": "alice", "aud": "scoring", "iat": NOW - 10, "exp": NOW + 600,
        "roles": ["ml-scorer"],
    });
    for (name, value) in extra {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(*name);
        } else {
            claims[*name] = value.clone();
        }
    }
    claims
}

/// An ES256 signing key.
pub struct Key {
    kid: String,
    pair: ES256KeyPair,
}

impl Key {
    /// A fresh key named `kid`.
    pub fn new(kid: &str) -> Key {
        Key {
            kid: kid.to_owned(),
            pair: ES256KeyPair::generate(),
        }
    }

    /// Its public JWK (JSON text).
    pub fn jwk(&self) -> String {
        let point = self.pair.public_key().public_key().to_bytes_uncompressed();
        json!({
            "kty": "EC", "crv": "P-256", "kid": self.kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        })
        .to_string()
    }

    /// A token with these claims.
    pub fn mint(&self, claims: &Value) -> String {
        self.mint_with_kid(&self.kid, claims)
    }

    /// A token with these claims and no `kid` in its header.
    pub fn mint_without_kid(&self, claims: &Value) -> String {
        let claims: JWTClaims<Map<String, Value>> = serde_json::from_value(claims.clone()).unwrap();
        ES256KeyPair::from_bytes(&self.pair.to_bytes())
            .unwrap()
            .sign(claims)
            .unwrap()
    }

    /// A token with these claims and any `kid`.
    pub fn mint_with_kid(&self, kid: &str, claims: &Value) -> String {
        let custom: Map<String, Value> = serde_json::from_value(claims.clone()).unwrap();
        let claims: JWTClaims<Map<String, Value>> =
            serde_json::from_value(Value::Object(custom)).unwrap();
        ES256KeyPair::from_bytes(&self.pair.to_bytes())
            .unwrap()
            .with_key_id(kid)
            .sign(claims)
            .unwrap()
    }
}

/// A key set of these keys (JSON text).
pub fn jwks(keys: &[&Key]) -> String {
    format!(
        r#"{{"keys":[{}]}}"#,
        keys.iter().map(|k| k.jwk()).collect::<Vec<_>>().join(",")
    )
}

/// Runs the request path for `headers` as request `context`.
pub fn run(
    host: &MockHost,
    shared: &RefCell<Shared>,
    context: u32,
    headers: &[(Vec<u8>, Vec<u8>)],
) -> crate::request::Verdict {
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect();
    host.add_request(context, &pairs);
    crate::request::on_request_headers(host, shared, context)
}

/// Request headers of a POST to `path` with a bearer token.
pub fn request(path: &str, token: Option<&str>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut headers = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":authority".to_vec(), b"scoring.test".to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
    ];
    if let Some(token) = token {
        headers.push((
            b"authorization".to_vec(),
            format!("Bearer {token}").into_bytes(),
        ));
    }
    headers
}
