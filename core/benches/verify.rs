//! Token verification per algorithm through the engine's public path
//! (`Engine::authenticate`: decode, issuer, algorithm, key, signature, claims, identity), no
//! cache. Each iteration takes the next of 64 distinct tokens (different subjects and ids),
//! as a stream of never-seen tokens would arrive. Keys: RSA 2048, P-256, P-384, Ed25519, a
//! 32-byte HMAC secret.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use claimgate_core::blob;
use claimgate_core::compile::compile;
use claimgate_core::engine::{Engine, RemoteKeys};
use criterion::{Criterion, criterion_group, criterion_main};
use jwt_simple::prelude::*;

const NOW: u64 = 1_900_000_000;
const TOKENS: usize = 64;
const HMAC_SECRET: [u8; 32] = [0x2a; 32];

type Claims = JWTClaims<serde_json::Map<String, serde_json::Value>>;

fn claims(alg: &str, n: usize) -> Claims {
    serde_json::from_value(serde_json::json!({
        "iss": format!("https://idp.example.com/{alg}"),
        "aud": "inference",
        "sub": format!("user-{n}"),
        "jti": format!("{alg}-{n}"),
        "iat": NOW,
        "exp": NOW + 3600,
        "roles": ["model.fraud.invoke", "reader"],
    }))
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The public JWK and `TOKENS` tokens signed by a fresh key of `alg`.
fn keys_and_tokens(alg: &str) -> (serde_json::Value, Vec<String>) {
    let mint =
        |sign: &dyn Fn(Claims) -> String| (0..TOKENS).map(|n| sign(claims(alg, n))).collect();
    let kid = format!("{alg}-key");
    macro_rules! rsa {
        ($pair:ty) => {{
            let pair = <$pair>::generate(2048).unwrap().with_key_id(&kid);
            let c = pair.public_key().to_components();
            let jwk = serde_json::json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)});
            (jwk, mint(&|claims| pair.sign(claims).unwrap()))
        }};
    }
    let (jwk, tokens): (serde_json::Value, Vec<String>) = match alg {
        "RS256" => rsa!(RS256KeyPair),
        "PS256" => rsa!(PS256KeyPair),
        "ES256" => {
            let pair = ES256KeyPair::generate().with_key_id(&kid);
            let point = pair.public_key().public_key().to_bytes_uncompressed();
            let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])});
            (jwk, mint(&|claims| pair.sign(claims).unwrap()))
        }
        "ES384" => {
            let pair = ES384KeyPair::generate().with_key_id(&kid);
            let point = pair.public_key().public_key().to_bytes_uncompressed();
            let jwk = serde_json::json!({"kty": "EC", "crv": "P-384", "x": b64(&point[1..49]), "y": b64(&point[49..])});
            (jwk, mint(&|claims| pair.sign(claims).unwrap()))
        }
        "EdDSA" => {
            let pair = Ed25519KeyPair::generate().with_key_id(&kid);
            let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&pair.public_key().to_bytes())});
            (jwk, mint(&|claims| pair.sign(claims).unwrap()))
        }
        "HS256" => {
            let key = HS256Key::from_bytes(&HMAC_SECRET);
            return (
                serde_json::Value::Null,
                mint(&|claims| key.authenticate(claims).unwrap()),
            );
        }
        other => panic!("no key for {other}"),
    };
    let mut jwk = jwk;
    jwk["kid"] = kid.into();
    jwk["alg"] = alg.into();
    jwk["use"] = "sig".into();
    (jwk, tokens)
}

const ALGORITHMS: [&str; 6] = ["RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256"];

/// One issuer per algorithm, each with its key inline (a JWKS file the compiler reads).
fn engine_and_tokens() -> (Engine, Vec<(&'static str, Vec<String>)>) {
    let mut text = String::from("version = 1\n");
    let mut files = HashMap::new();
    let mut tokens = Vec::new();
    for alg in ALGORITHMS {
        let (jwk, minted) = keys_and_tokens(alg);
        text.push_str(&format!(
            "[issuers.{alg}]\nissuer = \"https://idp.example.com/{alg}\"\naudiences = [\"inference\"]\nalgorithms = [\"{alg}\"]\nroles = [\"roles\"]\n"
        ));
        if jwk.is_null() {
            text.push_str(&format!("hmac_secret = \"{}\"\n", b64(&HMAC_SECRET)));
        } else {
            text.push_str(&format!("[issuers.{alg}.jwks]\nfile = \"{alg}.json\"\n"));
            files.insert(
                format!("{alg}.json"),
                serde_json::json!({"keys": [jwk]}).to_string(),
            );
        }
        tokens.push((alg, minted));
    }
    text.push_str("[[rules]]\nname = \"any\"\nallow = {}\n");
    let read = |name: &str| files.get(name).cloned().ok_or_else(|| format!("no {name}"));
    let compiled = compile(&text, "verify.toml", &read).unwrap();
    let config = serde_json::to_vec(&blob::plugin_config(&compiled.policy).unwrap()).unwrap();
    (blob::engine_from_plugin_config(&config).unwrap(), tokens)
}

fn bench_verify(c: &mut Criterion) {
    let (engine, tokens) = engine_and_tokens();
    let remote = RemoteKeys::default();
    let mut group = c.benchmark_group("verify");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    for (alg, tokens) in &tokens {
        for token in tokens {
            engine
                .authenticate(token, NOW, &remote, &mut None)
                .unwrap_or_else(|reason| panic!("{alg}: {reason}"));
        }
        let mut next = tokens.iter().cycle();
        group.bench_function(*alg, |b| {
            b.iter(|| {
                let token = next.next().unwrap();
                black_box(engine.authenticate(black_box(token), NOW, &remote, &mut None)).is_ok()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
