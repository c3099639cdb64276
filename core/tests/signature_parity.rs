#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! The signature paths agree.
//!
//! - The pure-Rust path (`rsa_verify`, `p256`/`p384`, `ed25519-compact`, `hmac` checks)
//!   accepts and refuses exactly the tokens jwt-simple's `verify_token` did, with the same
//!   reasons: on the shared conformance vectors (read in place) and on random keys × tokens ×
//!   tamperings.
//! - It accepts exactly the keys jwt-simple accepted, with the same diagnostics.
//! - A [`SignatureHost`] installed on the engine is asked about RS*/ES* keys in their DER
//!   form, and decides them.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use claimgate_core::algorithm::{ALL_ALGORITHMS, Algorithm};
use claimgate_core::compiled::{CompiledIssuer, CompiledPolicy};
use claimgate_core::engine::{Engine, RemoteKeys};
use claimgate_core::keys::{
    Curve, JwkKey, KeyMaterial, MAX_KID_CHARS, Verifier, parse_jwk, printable,
};
use claimgate_core::reason::{DenyReason, Malformed};
use claimgate_core::signature::{HostKey, SignatureHost};
use claimgate_core::token;
use jwt_simple::JWTError;
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
    let policy = policy_with(issuer);
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

// === The reference: jwt-simple, exactly as the request path used it before ===

/// A jwt-simple public key (or HMAC key) for one algorithm.
enum RefKey {
    Rs256(RS256PublicKey),
    Rs384(RS384PublicKey),
    Rs512(RS512PublicKey),
    Ps256(PS256PublicKey),
    Ps384(PS384PublicKey),
    Ps512(PS512PublicKey),
    Es256(ES256PublicKey),
    Es384(ES384PublicKey),
    EdDsa(Ed25519PublicKey),
    Hs256(HS256Key),
    Hs384(HS384Key),
    Hs512(HS512Key),
}

/// What a key was: public material, or an inline HMAC secret.
#[derive(Clone)]
enum Material {
    Public(KeyMaterial),
    Secret(Vec<u8>),
}

fn family_fits(material: &Material, alg: Algorithm) -> bool {
    use claimgate_core::algorithm::KeyFamily;
    let family = match material {
        Material::Public(KeyMaterial::Rsa { .. }) => KeyFamily::Rsa,
        Material::Public(KeyMaterial::Ec {
            curve: Curve::P256, ..
        }) => KeyFamily::P256,
        Material::Public(KeyMaterial::Ec {
            curve: Curve::P384, ..
        }) => KeyFamily::P384,
        Material::Public(KeyMaterial::Ed25519 { .. }) => KeyFamily::Ed25519,
        Material::Secret(_) => KeyFamily::Hmac,
    };
    alg.key_family() == family
}

/// jwt-simple's key for `alg` (the caller checked the family), or its refusal as text.
fn reference_key(material: &Material, alg: Algorithm) -> Result<RefKey, String> {
    let text = |e: jwt_simple::Error| e.to_string();
    Ok(match (material, alg) {
        (Material::Public(KeyMaterial::Rsa { n, e }), alg) => match alg {
            Algorithm::RS256 => RefKey::Rs256(RS256PublicKey::from_components(n, e).map_err(text)?),
            Algorithm::RS384 => RefKey::Rs384(RS384PublicKey::from_components(n, e).map_err(text)?),
            Algorithm::RS512 => RefKey::Rs512(RS512PublicKey::from_components(n, e).map_err(text)?),
            Algorithm::PS256 => RefKey::Ps256(PS256PublicKey::from_components(n, e).map_err(text)?),
            Algorithm::PS384 => RefKey::Ps384(PS384PublicKey::from_components(n, e).map_err(text)?),
            _ => RefKey::Ps512(PS512PublicKey::from_components(n, e).map_err(text)?),
        },
        (Material::Public(KeyMaterial::Ec { point, .. }), Algorithm::ES256) => {
            RefKey::Es256(ES256PublicKey::from_bytes(point).map_err(text)?)
        }
        (Material::Public(KeyMaterial::Ec { point, .. }), _) => {
            RefKey::Es384(ES384PublicKey::from_bytes(point).map_err(text)?)
        }
        (Material::Public(KeyMaterial::Ed25519 { x }), _) => {
            RefKey::EdDsa(Ed25519PublicKey::from_bytes(x).map_err(text)?)
        }
        (Material::Secret(secret), Algorithm::HS256) => RefKey::Hs256(HS256Key::from_bytes(secret)),
        (Material::Secret(secret), Algorithm::HS384) => RefKey::Hs384(HS384Key::from_bytes(secret)),
        (Material::Secret(secret), _) => RefKey::Hs512(HS512Key::from_bytes(secret)),
    })
}

/// The signature check as the request path made it with jwt-simple (options and error
/// mapping copied from the code it replaced).
fn reference_signature(key: &RefKey, token: &token::DecodedToken<'_>) -> Result<(), DenyReason> {
    let options = Some(VerificationOptions {
        artificial_time: Some(UnixTimeStamp::from_secs(0)),
        time_tolerance: Some(Duration::from_secs(0)),
        accept_future: true,
        max_token_length: Some(token::MAX_TOKEN_LEN),
        max_header_length: Some(token::MAX_TOKEN_LEN),
        required_signature_type: token.typ.clone(),
        ..VerificationOptions::default()
    });
    let raw = token.raw;
    let result = match key {
        RefKey::Rs256(k) => k.verify_token::<NoCustomClaims>(raw, options),
        RefKey::Rs384(k) => k.verify_token::<NoCustomClaims>(raw, options),
        RefKey::Rs512(k) => k.verify_token::<NoCustomClaims>(raw, options),
        RefKey::Ps256(k) => k.verify_token::<NoCustomClaims>(raw, options),
        RefKey::Ps384(k) => k.verify_token::<NoCustomClaims>(raw, options),
        RefKey::Ps512(k) => k.verify_token::<NoCustomClaims>(raw, options),
        RefKey::Es256(k) => k.verify_token::<NoCustomClaims>(raw, options),
        RefKey::Es384(k) => k.verify_token::<NoCustomClaims>(raw, options),
        RefKey::EdDsa(k) => k.verify_token::<NoCustomClaims>(raw, options),
        RefKey::Hs256(k) => k.verify_token::<NoCustomClaims>(raw, options),
        RefKey::Hs384(k) => k.verify_token::<NoCustomClaims>(raw, options),
        RefKey::Hs512(k) => k.verify_token::<NoCustomClaims>(raw, options),
    };
    let malformed = |detail: String| DenyReason::Malformed(Malformed::Refused { detail });
    result
        .map(|_| ())
        .map_err(|error| match error.downcast_ref::<JWTError>() {
            Some(
                JWTError::InvalidSignature
                | JWTError::InvalidAuthenticationTag
                | JWTError::InvalidPublicKey,
            ) => DenyReason::BadSignature,
            Some(other) => malformed(other.to_string()),
            None if error.downcast_ref::<serde_json::Error>().is_some() => {
                malformed("the verifier cannot read the token's JSON".to_owned())
            }
            None => DenyReason::BadSignature,
        })
}

/// One key of one issuer, as the engine and the reference see it.
struct Subject {
    kid: Option<String>,
    material: Material,
    engine: Engine,
}

impl Subject {
    fn new(iss: &str, kid: Option<&str>, material: Material) -> Subject {
        let (keys, secret) = match &material {
            Material::Public(public) => (
                vec![JwkKey {
                    kid: kid.map(str::to_owned),
                    alg: None,
                    material: public.clone(),
                }],
                None,
            ),
            Material::Secret(secret) => (vec![], Some(secret.clone())),
        };
        Subject {
            // An inline HMAC secret has no `kid`: it serves whatever `kid` a token names.
            kid: kid
                .filter(|_| matches!(material, Material::Public(_)))
                .map(str::to_owned),
            material,
            engine: engine_for(iss, keys, secret),
        }
    }

    /// The new path: the engine, end to end.
    fn ours(&self, token: &str, now: u64) -> Result<(), DenyReason> {
        self.engine
            .authenticate(token, now, &RemoteKeys::default(), &mut None)
            .map(|_| ())
    }

    /// The old path: the same steps with jwt-simple checking the signature.
    fn reference(&self, raw: &str, now: u64) -> Result<(), DenyReason> {
        let decoded = token::decode(raw)?;
        let iss = decoded
            .issuer()
            .ok_or(DenyReason::Malformed(Malformed::MissingIssuer))?;
        let issuer = &self.engine.policy().issuers[0];
        if iss != issuer.issuer {
            return Err(DenyReason::UnknownIssuer {
                iss: printable(iss, 256),
            });
        }
        let Ok(alg) = decoded.alg.parse::<Algorithm>() else {
            return Err(DenyReason::AlgorithmNotAllowed {
                alg: printable(&decoded.alg, 32),
            });
        };
        let unknown = || DenyReason::UnknownKey {
            issuer: issuer.name.clone(),
            kid: decoded.kid.as_deref().map(|k| printable(k, MAX_KID_CHARS)),
        };
        if !family_fits(&self.material, alg) {
            return Err(unknown());
        }
        if let (Some(want), Some(have)) = (decoded.kid.as_deref(), self.kid.as_deref())
            && want != have
        {
            return Err(unknown());
        }
        let key = reference_key(&self.material, alg).expect("keys under test are valid");
        reference_signature(&key, &decoded)?;
        self.engine
            .danger_identity_from_unsigned_claims(decoded.claims.clone(), now, &mut None)
            .map(|_| ())
    }

    fn assert_same(&self, token: &str, now: u64, what: &str) -> Result<(), DenyReason> {
        let ours = self.ours(token, now);
        let reference = self.reference(token, now);
        assert_eq!(ours, reference, "{what}: {token}");
        ours
    }
}

fn engine_for(iss: &str, keys: Vec<JwkKey>, hmac_secret: Option<Vec<u8>>) -> Engine {
    let issuer = CompiledIssuer {
        keys,
        hmac_secret,
        require_expiry: false,
        ..CompiledIssuer::new("idp", iss, ALL_ALGORITHMS.to_vec())
    };
    let mut policy = policy_with(issuer);
    policy.name = "parity".into();
    Engine::new(policy, String::new()).unwrap()
}

fn policy_with(issuer: CompiledIssuer) -> CompiledPolicy {
    CompiledPolicy {
        name: "signature-parity".into(),
        issuers: vec![issuer],
        ..CompiledPolicy::default()
    }
}

// === Tamperings ===

/// A small deterministic generator (splitmix64): the same cases on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn parts(token: &str) -> (String, String, String) {
    let mut it = token.split('.');
    (
        it.next().unwrap().to_owned(),
        it.next().unwrap().to_owned(),
        it.next().unwrap_or("").to_owned(),
    )
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}

/// Every tampering of `token`, named.
fn tamperings(token: &str, rng: &mut Rng) -> Vec<(String, String)> {
    let (header, payload, signature) = parts(token);
    let sig = unb64(&signature);
    let with_sig = |bytes: &[u8]| format!("{header}.{payload}.{}", b64(bytes));
    let mut out = vec![("original".to_owned(), token.to_owned())];
    for (name, part) in [("header", 0), ("payload", 1), ("signature", 2)] {
        let mut pieces = [header.clone(), payload.clone(), signature.clone()];
        let mut bytes = unb64(&pieces[part]);
        if bytes.is_empty() {
            continue;
        }
        for _ in 0..3 {
            let mut flipped = bytes.clone();
            let at = rng.below(flipped.len());
            flipped[at] ^= 1 << rng.below(8);
            pieces[part] = b64(&flipped);
            out.push((format!("{name} bit flipped at {at}"), pieces.join(".")));
        }
        bytes[0] ^= 0x80;
        pieces[part] = b64(&bytes);
        out.push((format!("{name} first byte flipped"), pieces.join(".")));
    }
    if !sig.is_empty() {
        out.push((
            "signature truncated".into(),
            with_sig(&sig[..sig.len() - 1]),
        ));
        out.push(("signature halved".into(), with_sig(&sig[..sig.len() / 2])));
    }
    let mut longer = sig.clone();
    longer.push(0);
    out.push(("signature extended".into(), with_sig(&longer)));
    let mut zero_led = vec![0];
    zero_led.extend_from_slice(&sig);
    out.push((
        "signature with a leading zero byte".into(),
        with_sig(&zero_led),
    ));
    out.push(("signature empty".into(), format!("{header}.{payload}.")));
    out.push(("signature all zero".into(), with_sig(&vec![0; sig.len()])));
    // A last character with non-zero unused bits: the same bytes, non-canonical text.
    if !sig.len().is_multiple_of(3)
        && let Some(last) = signature.chars().last()
    {
        const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = ALPHABET.find(last).unwrap();
        let noisy = ALPHABET.chars().nth(index | 1).unwrap();
        let text = format!("{}{noisy}", &signature[..signature.len() - 1]);
        out.push((
            "signature with a non-canonical last character".into(),
            format!("{header}.{payload}.{text}"),
        ));
        out.push(("signature padded".into(), format!("{token}=")));
    }
    // The signature under another algorithm's name (alg confusion).
    let decoded_header: Value = serde_json::from_slice(&unb64(&header)).unwrap();
    for alg in [
        "RS256", "PS256", "RS512", "ES256", "ES384", "EdDSA", "Ed25519", "HS256", "HS512", "none",
        "ES512",
    ] {
        let mut other = decoded_header.clone();
        other["alg"] = alg.into();
        let other = b64(other.to_string().as_bytes());
        out.push((
            format!("alg renamed {alg}"),
            format!("{other}.{payload}.{signature}"),
        ));
    }
    out
}

/// `r || s` with `s` replaced by `n - s`: the other valid signature of the same message.
fn high_s(signature: &[u8], order: &[u8]) -> Vec<u8> {
    let width = order.len();
    let (r, s) = signature.split_at(width);
    let mut negated = vec![0u8; width];
    let mut borrow = 0i16;
    for i in (0..width).rev() {
        let mut digit = order[i] as i16 - s[i] as i16 - borrow;
        borrow = 0;
        if digit < 0 {
            digit += 256;
            borrow = 1;
        }
        negated[i] = digit as u8;
    }
    [r, &negated].concat()
}

const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
const P384_ORDER: [u8; 48] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37, 0x2d, 0xdf,
    0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc, 0xc5, 0x29, 0x73,
];

/// ECDSA-only variants: high-S, DER-encoded, r and s swapped, s zero.
fn ecdsa_variants(token: &str, curve: Curve) -> Vec<(String, String)> {
    let (header, payload, signature) = parts(token);
    let sig = unb64(&signature);
    let order: &[u8] = match curve {
        Curve::P256 => &P256_ORDER,
        Curve::P384 => &P384_ORDER,
    };
    let with_sig = |bytes: &[u8]| format!("{header}.{payload}.{}", b64(bytes));
    let (r, s) = sig.split_at(sig.len() / 2);
    let mut zero_s = r.to_vec();
    zero_s.extend(vec![0; s.len()]);
    let mut order_s = r.to_vec();
    order_s.extend_from_slice(order);
    vec![
        ("high S".into(), with_sig(&high_s(&sig, order))),
        (
            "DER signature".into(),
            with_sig(&claimgate_core::der::ecdsa_raw_to_der(&sig, curve).unwrap()),
        ),
        ("r and s swapped".into(), with_sig(&[s, r].concat())),
        ("s zero".into(), with_sig(&zero_s)),
        ("s equal to the order".into(), with_sig(&order_s)),
    ]
}

/// A token with this header and payload, signed by `sign` (headers jwt-simple never writes).
fn signed(header: &Value, payload: &Value, sign: &dyn Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let signature = sign(input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

/// Headers to sign for `alg`: `typ` spellings, a `kid`, `salt`s, URLs that are never used.
fn headers(alg: &str) -> Vec<Value> {
    vec![
        serde_json::json!({"alg": alg}),
        serde_json::json!({"alg": alg, "typ": "application/jwt"}),
        serde_json::json!({"alg": alg, "typ": "at+jwt", "kid": "other"}),
        serde_json::json!({"alg": alg, "salt": "c2FsdA"}),
        serde_json::json!({"alg": alg, "salt": "%%%"}),
        serde_json::json!({"alg": alg, "salt": "c2FsdA="}),
        serde_json::json!({"alg": alg, "salt": ""}),
        serde_json::json!({"alg": alg, "cty": "JWT", "x5t": "x", "jku": "https://evil/"}),
    ]
}

fn claims_at(now: u64, rng: &mut Rng) -> JWTClaims<NoCustomClaims> {
    let mut claims = Claims::create(Duration::from_hours(1))
        .with_issuer(ISS)
        .with_subject(format!("user-{}", rng.next()));
    claims.issued_at = Some(Duration::from_secs(now - 10));
    claims.expires_at = Some(Duration::from_secs(now + 3600));
    claims.invalid_before = None;
    claims
}

fn payload_at(now: u64, rng: &mut Rng) -> Value {
    serde_json::json!({"iss": ISS, "sub": format!("user-{}", rng.next()), "iat": now - 10, "exp": now + 3600})
}

/// Checks every tampering of `tokens` on `subject`, and that the untouched ones pass.
fn check_all(
    subject: &Subject,
    wrong: &Subject,
    tokens: &[String],
    curve: Option<Curve>,
    rng: &mut Rng,
) -> usize {
    let now = now();
    let mut checked = 0;
    for token in tokens {
        let mut cases = tamperings(token, rng);
        if let Some(curve) = curve {
            cases.extend(ecdsa_variants(token, curve));
        }
        for (what, case) in &cases {
            let _ = subject.assert_same(case, now, what);
            checked += 1;
        }
        let _ = wrong.assert_same(token, now, "wrong key");
        checked += 1;
    }
    checked
}

fn rsa_material(key: &RS256KeyPair) -> KeyMaterial {
    let parts = key.public_key().to_components();
    KeyMaterial::Rsa {
        n: parts.n,
        e: parts.e,
    }
}

#[test]
fn random_keys_tokens_and_tamperings_are_judged_as_jwt_simple_judged_them() {
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    use rsa::signature::{SignatureEncoding as _, Signer as _};

    let mut rng = Rng(0x5eed);
    let now = now();
    let mut checked = 0;
    let mut accepted = 0;

    // RSA: 2048 (two keys), 3072, 4096; every RS and PS algorithm with each.
    let rsa_keys: Vec<RS256KeyPair> = [2048, 2048, 3072, 4096]
        .iter()
        .map(|bits| RS256KeyPair::generate(*bits).unwrap())
        .collect();
    for (i, key) in rsa_keys.iter().enumerate() {
        let other = &rsa_keys[(i + 1) % rsa_keys.len()];
        let subject = Subject::new(ISS, None, Material::Public(rsa_material(key)));
        let wrong = Subject::new(ISS, None, Material::Public(rsa_material(other)));
        let der = key.to_der().unwrap();
        let mut tokens = vec![];
        for _ in 0..2 {
            tokens.push(key.sign(claims_at(now, &mut rng)).unwrap());
            tokens.push(
                RS384KeyPair::from_der(&der)
                    .unwrap()
                    .sign(claims_at(now, &mut rng))
                    .unwrap(),
            );
            tokens.push(
                RS512KeyPair::from_der(&der)
                    .unwrap()
                    .sign(claims_at(now, &mut rng))
                    .unwrap(),
            );
            tokens.push(
                PS256KeyPair::from_der(&der)
                    .unwrap()
                    .sign(claims_at(now, &mut rng))
                    .unwrap(),
            );
            tokens.push(
                PS384KeyPair::from_der(&der)
                    .unwrap()
                    .sign(claims_at(now, &mut rng))
                    .unwrap(),
            );
            tokens.push(
                PS512KeyPair::from_der(&der)
                    .unwrap()
                    .sign(claims_at(now, &mut rng))
                    .unwrap(),
            );
        }
        // Headers jwt-simple never writes, signed with RSASSA-PKCS1-v1_5.
        let private = rsa::RsaPrivateKey::from_pkcs1_der(&der)
            .or_else(|_| {
                use rsa::pkcs8::DecodePrivateKey as _;
                rsa::RsaPrivateKey::from_pkcs8_der(&der)
            })
            .unwrap();
        let signer = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(private);
        for header in headers("RS256") {
            tokens.push(signed(&header, &payload_at(now, &mut rng), &|input| {
                signer.sign(input).to_vec()
            }));
        }
        for token in &tokens {
            accepted += usize::from(subject.ours(token, now).is_ok());
        }
        checked += check_all(&subject, &wrong, &tokens, None, &mut rng);
    }

    // ECDSA P-256 and P-384.
    for _ in 0..3 {
        let (a, b) = (ES256KeyPair::generate(), ES256KeyPair::generate());
        let point = |k: &ES256KeyPair| KeyMaterial::Ec {
            curve: Curve::P256,
            point: k.public_key().public_key().to_bytes_uncompressed(),
        };
        let subject = Subject::new(ISS, Some("p256"), Material::Public(point(&a)));
        let wrong = Subject::new(ISS, Some("p256"), Material::Public(point(&b)));
        let signing = p256::ecdsa::SigningKey::from_slice(&a.to_bytes()).unwrap();
        let mut tokens: Vec<String> = (0..4)
            .map(|_| a.sign(claims_at(now, &mut rng)).unwrap())
            .collect();
        for header in headers("ES256") {
            tokens.push(signed(&header, &payload_at(now, &mut rng), &|input| {
                use p256::ecdsa::signature::Signer as _;
                let signature: p256::ecdsa::Signature = signing.sign(input);
                signature.to_bytes().to_vec()
            }));
        }
        for token in &tokens {
            accepted += usize::from(subject.ours(token, now).is_ok());
        }
        checked += check_all(&subject, &wrong, &tokens, Some(Curve::P256), &mut rng);
    }
    for _ in 0..3 {
        let (a, b) = (ES384KeyPair::generate(), ES384KeyPair::generate());
        let point = |k: &ES384KeyPair| KeyMaterial::Ec {
            curve: Curve::P384,
            point: k.public_key().public_key().to_bytes_uncompressed(),
        };
        let subject = Subject::new(ISS, None, Material::Public(point(&a)));
        let wrong = Subject::new(ISS, None, Material::Public(point(&b)));
        let signing = p384::ecdsa::SigningKey::from_slice(&a.to_bytes()).unwrap();
        let mut tokens: Vec<String> = (0..4)
            .map(|_| a.sign(claims_at(now, &mut rng)).unwrap())
            .collect();
        for header in headers("ES384") {
            tokens.push(signed(&header, &payload_at(now, &mut rng), &|input| {
                use p384::ecdsa::signature::Signer as _;
                let signature: p384::ecdsa::Signature = signing.sign(input);
                signature.to_bytes().to_vec()
            }));
        }
        for token in &tokens {
            accepted += usize::from(subject.ours(token, now).is_ok());
        }
        checked += check_all(&subject, &wrong, &tokens, Some(Curve::P384), &mut rng);
    }

    // Ed25519, under both of its names.
    for _ in 0..3 {
        let (a, b) = (Ed25519KeyPair::generate(), Ed25519KeyPair::generate());
        let x = |k: &Ed25519KeyPair| KeyMaterial::Ed25519 {
            x: k.public_key().to_bytes(),
        };
        let subject = Subject::new(ISS, None, Material::Public(x(&a)));
        let wrong = Subject::new(ISS, None, Material::Public(x(&b)));
        let pair = ed25519_compact::KeyPair::from_slice(&a.to_bytes()).unwrap();
        let mut tokens: Vec<String> = (0..4)
            .map(|_| a.sign(claims_at(now, &mut rng)).unwrap())
            .collect();
        for alg in ["EdDSA", "Ed25519"] {
            for header in headers(alg) {
                tokens.push(signed(&header, &payload_at(now, &mut rng), &|input| {
                    pair.sk.sign(input, None).to_vec()
                }));
            }
        }
        for token in &tokens {
            accepted += usize::from(subject.ours(token, now).is_ok());
        }
        checked += check_all(&subject, &wrong, &tokens, None, &mut rng);
    }

    // HMAC: secrets of 32 and 64 bytes, and a weak one (shorter than 12 bytes).
    for len in [32usize, 64, 8] {
        let secret: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let other: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let subject = Subject::new(ISS, None, Material::Secret(secret.clone()));
        let wrong = Subject::new(ISS, None, Material::Secret(other));
        let mut tokens = vec![];
        // jwt-simple refuses to sign with a weak secret; the tokens below are signed by hand.
        for _ in 0..2 {
            if len >= 12 {
                tokens.push(
                    HS256Key::from_bytes(&secret)
                        .authenticate(claims_at(now, &mut rng))
                        .unwrap(),
                );
                tokens.push(
                    HS384Key::from_bytes(&secret)
                        .authenticate(claims_at(now, &mut rng))
                        .unwrap(),
                );
                tokens.push(
                    HS512Key::from_bytes(&secret)
                        .authenticate(claims_at(now, &mut rng))
                        .unwrap(),
                );
            }
        }
        for header in headers("HS512") {
            tokens.push(signed(&header, &payload_at(now, &mut rng), &|input| {
                use hmac::{KeyInit as _, Mac as _};
                let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(&secret).unwrap();
                mac.update(input);
                mac.finalize().into_bytes().to_vec()
            }));
        }
        for header in headers("HS256") {
            tokens.push(signed(&header, &payload_at(now, &mut rng), &|input| {
                use hmac::{KeyInit as _, Mac as _};
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
                mac.update(input);
                mac.finalize().into_bytes().to_vec()
            }));
        }
        for token in &tokens {
            accepted += usize::from(subject.ours(token, now).is_ok());
        }
        checked += check_all(&subject, &wrong, &tokens, None, &mut rng);
    }

    // Some tokens pass and most tamperings do not: the comparison is not vacuous.
    assert!(accepted > 100, "only {accepted} tokens accepted");
    assert!(checked > 5_000, "only {checked} cases");
    eprintln!("{checked} tokens compared, {accepted} untampered tokens accepted");
}

// === The shared conformance vectors ===

fn vectors_dir() -> std::path::PathBuf {
    std::env::var_os("CLAIMGATE_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
        })
        .join("vectors")
}

fn load(name: &str) -> Vec<Value> {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "conformance vectors missing at {}: {e} (shared/ beside the checkout, or set CLAIMGATE_SHARED)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// A JWK's material read without judging it (the verifiers judge it), or `None` when its
/// members do not even decode.
fn raw_material(jwk: &Value) -> Option<(Option<String>, Material)> {
    let member = |name: &str| -> Option<Vec<u8>> {
        URL_SAFE_NO_PAD
            .decode(jwk.get(name)?.as_str()?.trim_end_matches('='))
            .ok()
    };
    let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
    let material = match jwk.get("kty")?.as_str()? {
        "RSA" => Material::Public(KeyMaterial::Rsa {
            n: member("n")?,
            e: member("e")?,
        }),
        "EC" => {
            let curve = match jwk.get("crv")?.as_str()? {
                "P-256" => Curve::P256,
                "P-384" => Curve::P384,
                _ => return None,
            };
            let mut point = vec![4];
            point.extend(member("x")?);
            point.extend(member("y")?);
            Material::Public(KeyMaterial::Ec { curve, point })
        }
        "OKP" if jwk.get("crv")?.as_str()? == "Ed25519" => {
            Material::Public(KeyMaterial::Ed25519 { x: member("x")? })
        }
        "oct" => Material::Secret(member("k")?),
        _ => return None,
    };
    Some((kid, material))
}

/// Every JWK and token of the shared vectors (jwt_verify_lib, Envoy jwt_authn, RFC examples).
fn vector_cases() -> Vec<(Vec<Value>, String, Option<u64>)> {
    let mut cases = vec![];
    for file in ["jwt_verify_lib.json", "envoy_jwt_authn.json", "rfc.json"] {
        for case in load(file) {
            let Some(jwt) = case["jwt"].as_str().filter(|j| !j.is_empty()) else {
                continue;
            };
            let keys = case["jwks_strict_json"]
                .as_str()
                .or(case["jwks"].as_str())
                .and_then(|text| serde_json::from_str::<Value>(text).ok())
                .map(|doc| match doc.get("keys").and_then(Value::as_array) {
                    Some(keys) => keys.clone(),
                    None => vec![doc],
                })
                .unwrap_or_default();
            cases.push((keys, jwt.to_owned(), case["now"].as_u64()));
        }
    }
    cases
}

#[test]
fn every_vector_token_is_judged_as_jwt_simple_judged_it_with_every_vector_key() {
    let mut compared = 0;
    let mut accepted = 0;
    let mut keys_compared = 0;
    for (keys, jwt, now) in vector_cases() {
        let iss = token::decode(&jwt)
            .ok()
            .and_then(|t| t.issuer().map(str::to_owned))
            .unwrap_or_else(|| ISS.to_owned());
        let now = now.unwrap_or_else(self::now);
        for jwk in &keys {
            let Some((kid, material)) = raw_material(jwk) else {
                continue;
            };
            // The key: accepted, refused (and why) as jwt-simple did, for every algorithm.
            for alg in ALL_ALGORITHMS
                .into_iter()
                .filter(|a| family_fits(&material, *a))
            {
                if let Material::Public(public) = &material {
                    let key = JwkKey {
                        kid: None,
                        alg: None,
                        material: public.clone(),
                    };
                    let ours = Verifier::from_jwk(&key, alg)
                        .map(|_| ())
                        .map_err(|e| match e {
                            claimgate_core::keys::JwkError::InvalidKey(text) => text,
                            other => other.to_string(),
                        });
                    let reference = reference_key(&material, alg).map(|_| ());
                    assert_eq!(ours, reference, "{alg} key {jwk}");
                    keys_compared += 1;
                }
            }
            let usable = match &material {
                Material::Public(public) => ALL_ALGORITHMS
                    .into_iter()
                    .filter(|a| family_fits(&material, *a))
                    .all(|a| {
                        Verifier::from_jwk(
                            &JwkKey {
                                kid: None,
                                alg: None,
                                material: public.clone(),
                            },
                            a,
                        )
                        .is_ok()
                    }),
                Material::Secret(_) => true,
            };
            if !usable {
                continue;
            }
            // The token with this key, on both paths.
            let subject = Subject::new(&iss, kid.as_deref(), material);
            let outcome = subject.assert_same(&jwt, now, "vector");
            compared += 1;
            accepted += usize::from(outcome.is_ok());
            // Tamper with the tokens that are well-formed enough to take apart.
            let well_formed = jwt.split('.').count() == 3
                && jwt
                    .split('.')
                    .all(|part| URL_SAFE_NO_PAD.decode(part).is_ok())
                && serde_json::from_slice::<Value>(&unb64(jwt.split('.').next().unwrap()))
                    .is_ok_and(|h| h.is_object());
            if !well_formed {
                continue;
            }
            let mut rng = Rng(compared as u64);
            for (what, case) in tamperings(&jwt, &mut rng) {
                let _ = subject.assert_same(&case, now, &what);
                compared += 1;
            }
        }
    }
    assert!(
        compared > 1_000 && accepted > 20,
        "{compared} compared, {accepted} accepted"
    );
    assert!(keys_compared > 100, "{keys_compared} keys compared");
    eprintln!(
        "{compared} vector tokens compared ({accepted} accepted), {keys_compared} key verdicts"
    );
}

#[test]
fn key_rules_and_their_diagnostics_are_jwt_simples() {
    let mut rng = Rng(7);
    let mut random = |bytes: usize| -> Vec<u8> { (0..bytes).map(|_| rng.next() as u8).collect() };
    let odd = |mut n: Vec<u8>| {
        *n.last_mut().unwrap() |= 1;
        n[0] |= 0x80;
        n
    };
    let f4 = vec![1, 0, 1];
    let mut cases: Vec<KeyMaterial> = vec![];
    // Moduli around the bounds (the rules look at size and parity only, not primality).
    for bits in [
        0usize, 8, 1024, 2040, 2047, 2048, 2056, 3072, 4096, 4097, 4104, 8192,
    ] {
        let bytes = bits.div_ceil(8);
        if bytes == 0 {
            cases.push(KeyMaterial::Rsa {
                n: vec![],
                e: f4.clone(),
            });
            continue;
        }
        let mut n = odd(random(bytes));
        if bits % 8 != 0 {
            n[0] = 1;
        }
        cases.push(KeyMaterial::Rsa {
            n: n.clone(),
            e: f4.clone(),
        });
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        cases.push(KeyMaterial::Rsa {
            n: even,
            e: f4.clone(),
        });
        let mut zero_led = vec![0, 0];
        zero_led.extend(&n);
        cases.push(KeyMaterial::Rsa {
            n: zero_led,
            e: f4.clone(),
        });
    }
    let n = odd(random(256));
    for e in [
        vec![],
        vec![0],
        vec![3],
        vec![1],
        vec![0, 1, 0, 1],
        vec![1, 0, 0, 1],
        vec![1, 0, 1, 0],
        vec![0xff; 8],
    ] {
        cases.push(KeyMaterial::Rsa { n: n.clone(), e });
    }
    // EC points: real ones, off the curve, the identity, coordinates not below p, compressed.
    for (curve, width) in [(Curve::P256, 32usize), (Curve::P384, 48)] {
        let real = match curve {
            Curve::P256 => ES256KeyPair::generate()
                .public_key()
                .public_key()
                .to_bytes_uncompressed(),
            Curve::P384 => ES384KeyPair::generate()
                .public_key()
                .public_key()
                .to_bytes_uncompressed(),
        };
        let mut off = real.clone();
        *off.last_mut().unwrap() ^= 1;
        let mut compressed = vec![2 + (real[2 * width] & 1)];
        compressed.extend(&real[1..=width]);
        let mut wrong_tag = real.clone();
        wrong_tag[0] = 6;
        let mut all_ff = vec![4];
        all_ff.extend(vec![0xff; 2 * width]);
        let mut zeros = vec![4];
        zeros.extend(vec![0; 2 * width]);
        for point in [
            real,
            off,
            compressed,
            wrong_tag,
            all_ff,
            zeros,
            vec![0],
            vec![],
        ] {
            cases.push(KeyMaterial::Ec { curve, point });
        }
    }
    // Ed25519: a real key, small-order points, non-canonical encodings, wrong lengths.
    let mut identity = vec![0u8; 32];
    identity[0] = 1;
    let mut non_canonical = vec![0xffu8; 32];
    non_canonical[31] = 0x7f;
    let mut high_bit = Ed25519KeyPair::generate().public_key().to_bytes();
    high_bit[31] ^= 0x80;
    for x in [
        Ed25519KeyPair::generate().public_key().to_bytes(),
        identity,
        vec![0; 32],
        non_canonical,
        high_bit,
        random(32),
        random(32),
        random(31),
        random(33),
    ] {
        cases.push(KeyMaterial::Ed25519 { x });
    }
    let mut compared = 0;
    for material in cases {
        let wrapped = Material::Public(material.clone());
        for alg in ALL_ALGORITHMS
            .into_iter()
            .filter(|a| family_fits(&wrapped, *a))
        {
            let key = JwkKey {
                kid: None,
                alg: None,
                material: material.clone(),
            };
            let ours = Verifier::from_jwk(&key, alg)
                .map(|_| ())
                .map_err(|e| match e {
                    claimgate_core::keys::JwkError::InvalidKey(text) => text,
                    other => other.to_string(),
                });
            let reference = reference_key(&wrapped, alg).map(|_| ());
            assert_eq!(ours, reference, "{alg}: {material:?}");
            compared += 1;
        }
    }
    assert!(compared > 100, "{compared}");
}
