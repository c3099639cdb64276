#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! Property tests: the token decoder and the blob decoder never panic on any input, and the
//! blob round-trips.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use claimgate_core::blob;
use claimgate_core::compile::compile;
use claimgate_core::engine::{Engine, RemoteKeys, Request};
use claimgate_core::token;
use proptest::prelude::*;

const POLICY: &str = r#"
version = 1
[issuers.kc]
issuer = "https://kc/realms/ml"
audiences = ["scoring"]
algorithms = ["RS256", "ES256", "EdDSA"]
[issuers.kc.jwks]
inline = '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}'
[[rules]]
name = "kserve"
paths = ["/v2/models/{model}/infer"]
allow = { roles_any = ["model.{model}.invoke"] }
"#;

fn engine() -> Engine {
    let compiled = compile(POLICY, "p.toml", &|_: &str| Err(String::new())).unwrap();
    let (bytes, digest) = blob::encode(&compiled.policy).unwrap();
    Engine::new(blob::decode(&bytes).unwrap().0, digest).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn token_decoder_never_panics(input in ".{0,400}") {
        let _ = token::decode(&input);
    }

    #[test]
    fn jwt_shaped_input_never_panics(h in "[A-Za-z0-9_-]{0,80}", p in "[A-Za-z0-9_-]{0,200}", s in "[A-Za-z0-9_-]{0,100}") {
        let engine = engine();
        let raw = format!("{h}.{p}.{s}");
        let _ = engine.authenticate(&raw, 1_800_000_000, &RemoteKeys::default(), &mut None);
    }

    /// Fractional NumericDates are rounded towards refusal, by less than a second (from the
    /// double the JSON text parses to: near 2^53 that is a whole number already).
    #[test]
    fn numeric_dates_round_towards_refusal(written in 0.0f64..9_007_199_254_740_992.0) {
        let text = format!("{written:?}");
        let seconds: f64 = serde_json::from_str(&text).unwrap();
        let payload = format!(r#"{{"exp":{text},"nbf":{text}}}"#);
        let raw = format!("eyJhbGciOiJSUzI1NiJ9.{}.", URL_SAFE_NO_PAD.encode(payload));
        let decoded = token::decode(&raw).unwrap();
        let exp = decoded.claims["exp"].as_u64().unwrap() as f64;
        let nbf = decoded.claims["nbf"].as_u64().unwrap() as f64;
        prop_assert!(exp <= seconds && seconds - exp < 1.0, "exp {exp} for {seconds}");
        prop_assert!(nbf >= seconds && nbf - seconds < 1.0, "nbf {nbf} for {seconds}");
    }

    /// A payload is refused exactly when one of its objects repeats a member name.
    #[test]
    fn repeated_member_names_are_always_found(names in proptest::collection::vec("[ab]{1,2}", 0..6), nested in any::<bool>()) {
        let members: Vec<String> = names.iter().map(|n| format!(r#""{n}":1"#)).collect();
        let object = format!("{{{}}}", members.join(","));
        let payload = if nested { format!(r#"{{"x":[{object}]}}"#) } else { object };
        let raw = format!("eyJhbGciOiJSUzI1NiJ9.{}.", URL_SAFE_NO_PAD.encode(&payload));
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        let repeated = unique.len() != names.len();
        prop_assert_eq!(token::decode(&raw).is_err(), repeated, "{}", payload);
    }

    #[test]
    fn blob_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = blob::decode(&bytes);
        let mut with_header = b"CGPB\x01\x00".to_vec();
        with_header.extend_from_slice(&bytes);
        let _ = blob::decode(&with_header);
    }

    #[test]
    fn blob_bit_flips_are_refused(position in 0usize..10_000, bit in 0u8..8) {
        let compiled = compile(POLICY, "p.toml", &|_: &str| Err(String::new())).unwrap();
        let (mut bytes, _) = blob::encode(&compiled.policy).unwrap();
        let index = position % bytes.len();
        bytes[index] ^= 1 << bit;
        prop_assert!(blob::decode(&bytes).is_err());
    }

    #[test]
    fn requests_never_panic(method in "[A-Z]{0,8}", host in ".{0,40}", path in ".{0,120}", auth in ".{0,200}") {
        let engine = engine();
        let headers = vec![("authorization".to_owned(), auth)];
        let request = Request { method: &method, host: &host, path: &path, headers: &headers };
        let _ = engine.decide(&request, 1_800_000_000, &RemoteKeys::default(), None);
    }
}

#[test]
fn blob_round_trips() {
    let compiled = compile(POLICY, "p.toml", &|_: &str| Err(String::new())).unwrap();
    let (bytes, digest) = blob::encode(&compiled.policy).unwrap();
    let (decoded, digest_again) = blob::decode(&bytes).unwrap();
    assert_eq!(decoded, compiled.policy);
    assert_eq!(digest, digest_again);
}
