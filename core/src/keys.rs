//! JSON Web Keys: parsing a JWKS into normalised public keys ([`JwkKey`], what the blob
//! carries) and preparing them for verification ([`KeySet`], what the engine holds).
//!
//! Only public signature keys are taken from a JWKS. Symmetric (`oct`) keys are never read
//! from a key set: HMAC is only possible with a secret written into the policy on purpose,
//! which rules out the "HMAC with the public key" confusion by construction.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::algorithm::{Algorithm, KeyFamily};

/// An elliptic curve the filter supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
}

/// Public key material, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyMaterial {
    /// RSA modulus and exponent, big-endian.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
    /// EC point, SEC1 uncompressed (`04 || x || y`).
    Ec {
        /// Curve.
        curve: Curve,
        /// Encoded point.
        point: Vec<u8>,
    },
    /// Ed25519 public key, 32 bytes.
    Ed25519 {
        /// Key bytes.
        x: Vec<u8>,
    },
}

/// One public key from a JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkKey {
    /// Key id (`kid`), if the JWK has one.
    pub kid: Option<String>,
    /// The algorithm the JWK is pinned to (`alg`), if any.
    pub alg: Option<Algorithm>,
    /// The key itself.
    pub material: KeyMaterial,
}

/// Why a single JWK was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwkError {
    /// The entry is not a JSON object.
    #[error("key is not a JSON object")]
    NotObject,
    /// `kty` is absent.
    #[error("key has no `kty`")]
    MissingKty,
    /// `kty` is not a string.
    #[error("`kty` is not a string")]
    BadKty,
    /// `kty` names a type that is not supported for signatures.
    #[error("key type `{0}` is not supported")]
    UnsupportedKty(String),
    /// Symmetric keys are never taken from a key set.
    #[error(
        "symmetric (`oct`) keys are not accepted from a key set; configure an inline HMAC secret instead"
    )]
    SymmetricKey,
    /// `use` says the key is not for signatures.
    #[error("key `use` is `{0}`, not `sig`")]
    NotForSignatures(String),
    /// `alg` is not a string or names an unknown algorithm.
    #[error("key `alg` `{0}` is not supported")]
    BadAlg(String),
    /// `alg` does not fit the key type or curve.
    #[error("key `alg` `{alg}` does not fit a {kty} key")]
    AlgKeyMismatch {
        /// The key's `alg`.
        alg: Algorithm,
        /// The key's type or curve.
        kty: &'static str,
    },
    /// A required member is missing.
    #[error("key has no `{0}`")]
    MissingMember(&'static str),
    /// A member is not valid base64url or not a string.
    #[error("key member `{0}` is not a base64url string")]
    BadMember(&'static str),
    /// `crv` names a curve that is not supported.
    #[error("curve `{0}` is not supported")]
    UnsupportedCurve(String),
    /// A coordinate or key has the wrong length.
    #[error("key member `{member}` has {got} bytes, expected {expected}")]
    WrongLength {
        /// Which member.
        member: &'static str,
        /// Its length.
        got: usize,
        /// The length the curve needs.
        expected: usize,
    },
    /// The key material is refused by the crypto library (weak RSA, point off the curve…).
    #[error("key is not a valid public key: {0}")]
    InvalidKey(String),
}

/// Why a whole key set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The text is not JSON.
    #[error("key set is not valid JSON: {0}")]
    NotJson(String),
    /// There is no `keys` array.
    #[error("key set has no `keys` array")]
    NoKeysArray,
    /// The `keys` array is empty.
    #[error("key set has no keys")]
    Empty,
    /// Every key was refused; the first reason is given.
    #[error("key set has no usable key: key #{index}: {error}")]
    NoUsableKey {
        /// Index of the first refused key.
        index: usize,
        /// Why it was refused.
        error: JwkError,
    },
}

/// A parsed key set: the usable keys and the ones refused, with reasons.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedJwks {
    /// Keys that parsed and validated.
    pub keys: Vec<JwkKey>,
    /// Keys refused, by index in the `keys` array.
    pub refused: Vec<(usize, JwkError)>,
}

/// Parses a JWKS document. Individual bad keys are reported in `refused`; the call fails only
/// when the document is malformed or no key is usable.
pub fn parse_jwks(text: &str) -> Result<ParsedJwks, JwksError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| JwksError::NotJson(e.to_string()))?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::NoKeysArray)?;
    if entries.is_empty() {
        return Err(JwksError::Empty);
    }
    let mut parsed = ParsedJwks::default();
    for (index, entry) in entries.iter().enumerate() {
        match parse_jwk(entry) {
            Ok(key) => parsed.keys.push(key),
            Err(error) => parsed.refused.push((index, error)),
        }
    }
    if parsed.keys.is_empty() {
        let (index, error) = parsed
            .refused
            .first()
            .cloned()
            .unwrap_or((0, JwkError::NotObject));
        return Err(JwksError::NoUsableKey { index, error });
    }
    Ok(parsed)
}

fn member_bytes(
    key: &serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<Vec<u8>, JwkError> {
    let text = key
        .get(name)
        .ok_or(JwkError::MissingMember(name))?
        .as_str()
        .ok_or(JwkError::BadMember(name))?;
    // Some issuers pad base64url; the padding carries no information.
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| JwkError::BadMember(name))
}

/// Parses one JWK object.
pub fn parse_jwk(entry: &Value) -> Result<JwkKey, JwkError> {
    let key = entry.as_object().ok_or(JwkError::NotObject)?;
    let kty = key
        .get("kty")
        .ok_or(JwkError::MissingKty)?
        .as_str()
        .ok_or(JwkError::BadKty)?;
    if let Some(usage) = key.get("use") {
        let usage = usage.as_str().unwrap_or("");
        if usage != "sig" {
            return Err(JwkError::NotForSignatures(usage.to_owned()));
        }
    }
    let kid = key.get("kid").and_then(Value::as_str).map(str::to_owned);
    let alg = match key.get("alg") {
        None => None,
        Some(value) => {
            let name = value
                .as_str()
                .ok_or_else(|| JwkError::BadAlg(value.to_string()))?;
            Some(
                name.parse::<Algorithm>()
                    .map_err(|_| JwkError::BadAlg(name.to_owned()))?,
            )
        }
    };
    let material = match kty {
        "RSA" => {
            if let Some(alg) = alg.filter(|a| a.key_family() != KeyFamily::Rsa) {
                return Err(JwkError::AlgKeyMismatch { alg, kty: "RSA" });
            }
            let n = member_bytes(key, "n")?;
            let e = member_bytes(key, "e")?;
            KeyMaterial::Rsa { n, e }
        }
        "EC" => {
            let crv = key
                .get("crv")
                .ok_or(JwkError::MissingMember("crv"))?
                .as_str()
                .ok_or(JwkError::BadMember("crv"))?;
            let (curve, size, family, label) = match crv {
                "P-256" => (Curve::P256, 32, KeyFamily::P256, "P-256"),
                "P-384" => (Curve::P384, 48, KeyFamily::P384, "P-384"),
                other => return Err(JwkError::UnsupportedCurve(other.to_owned())),
            };
            if let Some(alg) = alg.filter(|a| a.key_family() != family) {
                return Err(JwkError::AlgKeyMismatch { alg, kty: label });
            }
            let x = member_bytes(key, "x")?;
            let y = member_bytes(key, "y")?;
            for (member, value) in [("x", &x), ("y", &y)] {
                if value.len() != size {
                    return Err(JwkError::WrongLength {
                        member,
                        got: value.len(),
                        expected: size,
                    });
                }
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            KeyMaterial::Ec { curve, point }
        }
        "OKP" => {
            let crv = key
                .get("crv")
                .ok_or(JwkError::MissingMember("crv"))?
                .as_str()
                .ok_or(JwkError::BadMember("crv"))?;
            if crv != "Ed25519" {
                return Err(JwkError::UnsupportedCurve(crv.to_owned()));
            }
            if let Some(alg) = alg.filter(|a| *a != Algorithm::EdDSA) {
                return Err(JwkError::AlgKeyMismatch {
                    alg,
                    kty: "Ed25519",
                });
            }
            let x = member_bytes(key, "x")?;
            if x.len() != 32 {
                return Err(JwkError::WrongLength {
                    member: "x",
                    got: x.len(),
                    expected: 32,
                });
            }
            KeyMaterial::Ed25519 { x }
        }
        "oct" => return Err(JwkError::SymmetricKey),
        other => return Err(JwkError::UnsupportedKty(other.to_owned())),
    };
    let parsed = JwkKey { kid, alg, material };
    // Build the key once so that bad material (weak RSA, invalid point) is refused here,
    // at parse time, not on the first request.
    parsed.family_verifier_check()?;
    Ok(parsed)
}

impl JwkKey {
    /// The key family of this key.
    pub fn family(&self) -> KeyFamily {
        match &self.material {
            KeyMaterial::Rsa { .. } => KeyFamily::Rsa,
            KeyMaterial::Ec {
                curve: Curve::P256, ..
            } => KeyFamily::P256,
            KeyMaterial::Ec {
                curve: Curve::P384, ..
            } => KeyFamily::P384,
            KeyMaterial::Ed25519 { .. } => KeyFamily::Ed25519,
        }
    }

    /// Whether this key may verify tokens signed with `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        alg.key_family() == self.family() && self.alg.is_none_or(|pinned| pinned == alg)
    }

    fn family_verifier_check(&self) -> Result<(), JwkError> {
        let probe = match self.family() {
            KeyFamily::Rsa => Algorithm::RS256,
            KeyFamily::P256 => Algorithm::ES256,
            KeyFamily::P384 => Algorithm::ES384,
            KeyFamily::Ed25519 | KeyFamily::Hmac => Algorithm::EdDSA,
        };
        Verifier::from_jwk(self, probe).map(|_| ())
    }
}

/// A key ready to verify one algorithm.
#[derive(Debug, Clone)]
#[allow(missing_docs)] // one variant per algorithm, named after it
pub enum Verifier {
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

fn invalid(e: jwt_simple::Error) -> JwkError {
    JwkError::InvalidKey(e.to_string())
}

impl Verifier {
    /// Builds the verifier of `alg` for a JWK (the caller checked [`JwkKey::fits`]).
    pub fn from_jwk(key: &JwkKey, alg: Algorithm) -> Result<Verifier, JwkError> {
        let mismatch = JwkError::AlgKeyMismatch {
            alg,
            kty: match key.family() {
                KeyFamily::Rsa => "RSA",
                KeyFamily::P256 => "P-256",
                KeyFamily::P384 => "P-384",
                KeyFamily::Ed25519 | KeyFamily::Hmac => "Ed25519",
            },
        };
        Ok(match (&key.material, alg) {
            (KeyMaterial::Rsa { n, e }, _) => match alg {
                Algorithm::RS256 => {
                    Verifier::Rs256(RS256PublicKey::from_components(n, e).map_err(invalid)?)
                }
                Algorithm::RS384 => {
                    Verifier::Rs384(RS384PublicKey::from_components(n, e).map_err(invalid)?)
                }
                Algorithm::RS512 => {
                    Verifier::Rs512(RS512PublicKey::from_components(n, e).map_err(invalid)?)
                }
                Algorithm::PS256 => {
                    Verifier::Ps256(PS256PublicKey::from_components(n, e).map_err(invalid)?)
                }
                Algorithm::PS384 => {
                    Verifier::Ps384(PS384PublicKey::from_components(n, e).map_err(invalid)?)
                }
                Algorithm::PS512 => {
                    Verifier::Ps512(PS512PublicKey::from_components(n, e).map_err(invalid)?)
                }
                _ => return Err(mismatch),
            },
            (
                KeyMaterial::Ec {
                    curve: Curve::P256,
                    point,
                },
                Algorithm::ES256,
            ) => Verifier::Es256(ES256PublicKey::from_bytes(point).map_err(invalid)?),
            (
                KeyMaterial::Ec {
                    curve: Curve::P384,
                    point,
                },
                Algorithm::ES384,
            ) => Verifier::Es384(ES384PublicKey::from_bytes(point).map_err(invalid)?),
            (KeyMaterial::Ed25519 { x }, Algorithm::EdDSA) => {
                Verifier::EdDsa(Ed25519PublicKey::from_bytes(x).map_err(invalid)?)
            }
            _ => return Err(mismatch),
        })
    }

    /// Builds an HMAC verifier from an inline secret.
    pub fn from_secret(secret: &[u8], alg: Algorithm) -> Option<Verifier> {
        match alg {
            Algorithm::HS256 => Some(Verifier::Hs256(HS256Key::from_bytes(secret))),
            Algorithm::HS384 => Some(Verifier::Hs384(HS384Key::from_bytes(secret))),
            Algorithm::HS512 => Some(Verifier::Hs512(HS512Key::from_bytes(secret))),
            _ => None,
        }
    }

    /// Verifies the signature and the time claims of `token`.
    pub fn verify(
        &self,
        token: &str,
        options: VerificationOptions,
    ) -> Result<JWTClaims<NoCustomClaims>, jwt_simple::Error> {
        let options = Some(options);
        match self {
            Verifier::Rs256(k) => k.verify_token(token, options),
            Verifier::Rs384(k) => k.verify_token(token, options),
            Verifier::Rs512(k) => k.verify_token(token, options),
            Verifier::Ps256(k) => k.verify_token(token, options),
            Verifier::Ps384(k) => k.verify_token(token, options),
            Verifier::Ps512(k) => k.verify_token(token, options),
            Verifier::Es256(k) => k.verify_token(token, options),
            Verifier::Es384(k) => k.verify_token(token, options),
            Verifier::EdDsa(k) => k.verify_token(token, options),
            Verifier::Hs256(k) => k.verify_token(token, options),
            Verifier::Hs384(k) => k.verify_token(token, options),
            Verifier::Hs512(k) => k.verify_token(token, options),
        }
    }
}

/// One prepared key: its id and a verifier per algorithm it may check.
#[derive(Debug, Clone)]
pub struct PreparedKey {
    /// Key id, if any.
    pub kid: Option<String>,
    /// Verifiers, one per allowed algorithm the key fits.
    pub verifiers: Vec<(Algorithm, Verifier)>,
}

/// The keys of one issuer, prepared for the algorithms the issuer allows.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<PreparedKey>,
}

impl KeySet {
    /// Prepares `keys` for the `allowed` algorithms; keys that fit none are dropped.
    pub fn prepare(keys: &[JwkKey], allowed: &[Algorithm]) -> KeySet {
        let keys = keys
            .iter()
            .filter_map(|key| {
                let verifiers: Vec<_> = allowed
                    .iter()
                    .filter(|alg| key.fits(**alg))
                    .filter_map(|alg| Verifier::from_jwk(key, *alg).ok().map(|v| (*alg, v)))
                    .collect();
                (!verifiers.is_empty()).then(|| PreparedKey {
                    kid: key.kid.clone(),
                    verifiers,
                })
            })
            .collect();
        KeySet { keys }
    }

    /// Adds an HMAC secret for the HMAC algorithms in `allowed`.
    pub fn with_secret(mut self, secret: &[u8], allowed: &[Algorithm]) -> KeySet {
        let verifiers: Vec<_> = allowed
            .iter()
            .filter_map(|alg| Verifier::from_secret(secret, *alg).map(|v| (*alg, v)))
            .collect();
        if !verifiers.is_empty() {
            self.keys.push(PreparedKey {
                kid: None,
                verifiers,
            });
        }
        self
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Verifiers for `alg`, restricted to `kid` when the token names one.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Verifier> + 'a {
        self.keys
            .iter()
            .filter(move |key| match (kid, key.kid.as_deref()) {
                (Some(wanted), Some(have)) => wanted == have,
                // A token with a kid may still be checked by a key without one, and a token
                // without a kid by every key: as jwt_verify_lib does.
                _ => true,
            })
            .flat_map(|key| key.verifiers.iter())
            .filter(move |(a, _)| *a == alg)
            .map(|(_, v)| v)
    }

    /// Whether any key carries this key id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symmetric_keys_in_a_key_set() {
        let err = parse_jwks(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap_err();
        assert!(matches!(
            err,
            JwksError::NoUsableKey {
                error: JwkError::SymmetricKey,
                ..
            }
        ));
    }

    #[test]
    fn ec_alg_must_fit_curve() {
        let key = ES256KeyPair::generate();
        let jwk: Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
        let mut jwk = jwk.as_object().unwrap().clone();
        jwk.insert("alg".into(), "ES384".into());
        let err = parse_jwk(&Value::Object(jwk)).unwrap_err();
        assert!(matches!(err, JwkError::AlgKeyMismatch { .. }));
    }

    #[test]
    fn structural_errors() {
        assert!(matches!(parse_jwks("nope"), Err(JwksError::NotJson(_))));
        assert_eq!(parse_jwks("{}"), Err(JwksError::NoKeysArray));
        assert_eq!(parse_jwks(r#"{"keys":[]}"#), Err(JwksError::Empty));
        let err = parse_jwks(r#"{"keys":[{"kty":"RSA","e":"AQAB"}]}"#).unwrap_err();
        assert!(matches!(
            err,
            JwksError::NoUsableKey {
                error: JwkError::MissingMember("n"),
                ..
            }
        ));
    }
}
