#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! The signature paths agree: a [`SignatureHost`] installed on the engine is asked about
//! RS*/ES* keys in their DER form, and decides them.

use std::sync::{Arc, Mutex};

use claimgate_core::algorithm::{ALL_ALGORITHMS, Algorithm};
use claimgate_core::compiled::{
    CompiledIssuer, CompiledPolicy, PathIndex, Revocations, TokenSettings,
};
use claimgate_core::engine::{Engine, RemoteKeys};
use claimgate_core::keys::{JwkKey, parse_jwk};
use claimgate_core::reason::DenyReason;
use claimgate_core::signature::{HostKey, SignatureHost};
use jwt_simple::prelude::*;
use serde_json::Value;

const ISS: &str = "https://idp.example";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwk(text: &str) -> JwkKey {
    let mut jwk: Value = serde_json::from_str(text).unwrap();
    jwk.as_object_mut().unwrap().remove("alg");
    parse_jwk(&jwk).unwrap()
}

/// An engine whose one issuer holds `keys` (and, if given, an HMAC secret) for every algorithm.
fn engine(keys: Vec<JwkKey>, hmac_secret: Option<Vec<u8>>) -> Engine {
    let issuer = CompiledIssuer {
        keys,
        hmac_secret,
        require_expiry: false,
        ..CompiledIssuer::new("idp", ISS, ALL_ALGORITHMS.to_vec())
    };
    let policy = CompiledPolicy {
        name: "signature-parity".into(),
        mode: Default::default(),
        default: Default::default(),
        issuers: vec![issuer],
        rules: vec![],
        roles: vec![],
        path_index: PathIndex::default(),
        revoked: Revocations::default(),
        token: TokenSettings::default(),
        path_parameters: Default::default(),
        cors_preflight: Default::default(),
        statuses: Default::default(),
        claims: vec![],
    };
    Engine::new(policy, String::new()).unwrap()
}

fn authenticate(engine: &Engine, token: &str) -> Result<(), DenyReason> {
    engine
        .authenticate(token, now(), &RemoteKeys::default(), &mut None)
        .map(|_| ())
}

/// A host that answers every question the same way and remembers what it was asked.
struct ScriptedHost {
    answer: Option<bool>,
    asked: Mutex<Vec<(Algorithm, Vec<u8>)>>,
}

impl SignatureHost for ScriptedHost {
    fn verify(
        &self,
        alg: Algorithm,
        key: &HostKey,
        _signing_input: &[u8],
        _signature: &[u8],
    ) -> Option<bool> {
        self.asked.lock().unwrap().push((alg, key.spki_der.clone()));
        self.answer
    }
}

#[test]
fn an_installed_host_is_asked_with_the_keys_der_and_its_no_refuses() {
    let rsa = RS256KeyPair::generate(2048).unwrap();
    let es = ES256KeyPair::generate();
    let ed = Ed25519KeyPair::generate();
    let rsa_key = jwk(&rsa.public_key().to_jwk());
    let es_key = jwk(&es.public_key().to_jwk());
    let ed_key = jwk(&ed.public_key().to_jwk());
    let claims = || Claims::create(Duration::from_hours(1)).with_issuer(ISS);
    let rs_token = rsa.sign(claims()).unwrap();
    let es_token = es.sign(claims()).unwrap();
    let ed_token = ed.sign(claims()).unwrap();
    for (keys, token, alg, der) in [
        (
            vec![rsa_key.clone()],
            &rs_token,
            Some(Algorithm::RS256),
            claimgate_core::der::spki_der(&rsa_key.material).unwrap(),
        ),
        (
            vec![es_key.clone()],
            &es_token,
            Some(Algorithm::ES256),
            claimgate_core::der::spki_der(&es_key.material).unwrap(),
        ),
        (vec![ed_key], &ed_token, None, vec![]),
    ] {
        let mut engine = engine(keys, None);
        assert_eq!(authenticate(&engine, token), Ok(()));
        let host = Arc::new(ScriptedHost {
            answer: Some(false),
            asked: Mutex::new(vec![]),
        });
        engine.set_signature_host(host.clone());
        let asked = host.asked.lock().unwrap().clone();
        assert!(asked.is_empty());
        let outcome = authenticate(&engine, token);
        let asked = host.asked.lock().unwrap().clone();
        match alg {
            Some(alg) => {
                assert_eq!(outcome, Err(DenyReason::BadSignature));
                assert_eq!(asked, vec![(alg, der)]);
            }
            None => {
                assert_eq!(outcome, Ok(()));
                assert!(asked.is_empty());
            }
        }
    }
}
