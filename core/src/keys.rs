//! JSON Web Keys: parsing a JWKS into normalised public keys ([`JwkKey`], what the blob
//! carries) and preparing them for verification ([`KeySet`], what the engine holds).
//!
//! Only public signature keys are taken from a JWKS. Symmetric (`oct`) keys are never read
//! from a key set: HMAC is only possible with a secret written into the policy on purpose,
//! which rules out the "HMAC with the public key" confusion by construction.
//!
//! A key set is input from the network: its size and key count are bounded
//! ([`MAX_JWKS_BYTES`], [`MAX_JWKS_KEYS`]), keys that cannot be used are summarised in one
//! [`SkippedKeys`] (never one log line per key), and every text copied out of it is cut to
//! a printable excerpt ([`printable`]). Choosing the key for a token is [`KeySet::select`]:
//! at most one signature verification for a token without a matching `kid`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::algorithm::{Algorithm, KeyFamily};
use crate::compiled::CompiledIssuer;
use crate::rsa_verify::{RsaHash, RsaKey};
use crate::signature::HostKey;

/// Largest key set accepted, in bytes: real ones are a few KiB.
pub const MAX_JWKS_BYTES: usize = 512 * 1024;
/// Most keys accepted in one key set: real ones hold a handful.
pub const MAX_JWKS_KEYS: usize = 100;
/// How many skipped keys a [`SkippedKeys`] describes one by one.
const SKIPPED_EXAMPLES: usize = 3;
/// Longest excerpt of key-set text (types, curves, `alg`, `use`) kept in an error.
const EXCERPT_CHARS: usize = 32;
/// Longest `kid` copied into a reason, a log line or a diagnostic.
pub const MAX_KID_CHARS: usize = 64;

/// A bounded, printable excerpt of untrusted text for logs and reasons: at most `max_chars`
/// characters (the last three `...` when cut), every character outside printable ASCII
/// replaced by `?` (no control characters, no bidi overrides, no line breaks in a log).
pub fn printable(text: &str, max_chars: usize) -> String {
    let clean = |c: char| {
        if c == ' ' || c.is_ascii_graphic() {
            c
        } else {
            '?'
        }
    };
    if text.chars().count() <= max_chars {
        return text.chars().map(clean).collect();
    }
    let mut out: String = text
        .chars()
        .take(max_chars.saturating_sub(3))
        .map(clean)
        .collect();
    out.extend(std::iter::repeat_n('.', 3.min(max_chars)));
    out
}

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

impl JwkError {
    /// A short stable name of the problem, for counting skipped keys.
    pub fn kind(&self) -> &'static str {
        match self {
            JwkError::NotObject => "not_object",
            JwkError::MissingKty | JwkError::BadKty => "bad_kty",
            JwkError::UnsupportedKty(_) => "unsupported_kty",
            JwkError::SymmetricKey => "symmetric",
            JwkError::NotForSignatures(_) => "not_for_signatures",
            JwkError::BadAlg(_) => "unsupported_alg",
            JwkError::AlgKeyMismatch { .. } => "alg_key_mismatch",
            JwkError::MissingMember(_) | JwkError::BadMember(_) => "bad_member",
            JwkError::UnsupportedCurve(_) => "unsupported_curve",
            JwkError::WrongLength { .. } => "wrong_length",
            JwkError::InvalidKey(_) => "invalid_key",
        }
    }
}

/// Why a whole key set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The body is larger than [`MAX_JWKS_BYTES`]; it is not parsed.
    #[error("key set is {bytes} bytes, more than the {MAX_JWKS_BYTES} accepted")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// The text is not JSON.
    #[error("key set is not valid JSON: {0}")]
    NotJson(String),
    /// There is no `keys` array.
    #[error("key set has no `keys` array")]
    NoKeysArray,
    /// The `keys` array is empty.
    #[error("key set has no keys")]
    Empty,
    /// The `keys` array holds more than [`MAX_JWKS_KEYS`] entries; none is read.
    #[error("key set has {count} keys, more than the {MAX_JWKS_KEYS} accepted")]
    TooManyKeys {
        /// Number of entries.
        count: usize,
    },
    /// Every key was skipped.
    #[error("key set has no usable key: {skipped}")]
    NoUsableKey {
        /// Why, in summary.
        skipped: SkippedKeys,
    },
}

/// One key left out of a key set, described for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// Position in the `keys` array.
    pub index: usize,
    /// Its `kid` as a printable excerpt, if it has one.
    pub kid: Option<String>,
    /// Why it was left out.
    pub error: JwkError,
}

/// The keys of a key set that were left out, in bounded form: counts per kind of problem
/// and the first few keys in detail. Logged as one line per fetch, never one per key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SkippedKeys {
    /// Number of keys left out.
    pub count: usize,
    /// Keys left out per [`JwkError::kind`], in order of first appearance.
    pub by_kind: Vec<(&'static str, usize)>,
    /// The first few keys left out.
    pub first: Vec<SkippedKey>,
    /// How many of them are encryption keys (`use` = `enc`).
    pub encryption: usize,
}

impl SkippedKeys {
    /// Whether no key was left out.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether every key left out is an encryption key (`use` = `enc`): what Keycloak and
    /// other providers publish beside their signing keys, so expected rather than suspicious.
    /// Reported as a note (compile time) or at info (run time), never as a warning that would
    /// fire on every refresh under Istio's default `warning` log level.
    pub fn only_encryption_keys(&self) -> bool {
        self.count > 0 && self.encryption == self.count
    }

    fn add(&mut self, index: usize, kid: Option<&str>, error: JwkError) {
        self.count += 1;
        if matches!(&error, JwkError::NotForSignatures(usage) if usage == "enc") {
            self.encryption += 1;
        }
        match self
            .by_kind
            .iter_mut()
            .find(|(kind, _)| *kind == error.kind())
        {
            Some((_, count)) => *count += 1,
            None => self.by_kind.push((error.kind(), 1)),
        }
        if self.first.len() < SKIPPED_EXAMPLES {
            self.first.push(SkippedKey {
                index,
                kid: kid.map(|kid| printable(kid, MAX_KID_CHARS)),
                error,
            });
        }
    }
}

impl fmt::Display for SkippedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.count == 1 { "" } else { "s" };
        write!(f, "{} key{plural} skipped (", self.count)?;
        for (i, (kind, count)) in self.by_kind.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{kind}: {count}")?;
        }
        f.write_str(")")?;
        for (i, key) in self.first.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "key #{}", key.index)?;
            if let Some(kid) = &key.kid {
                write!(f, " (kid `{kid}`)")?;
            }
            write!(f, ": {}", key.error)?;
        }
        if self.count > self.first.len() {
            f.write_str("; ...")?;
        }
        Ok(())
    }
}

/// A parsed key set: the usable keys, and a summary of the ones left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedJwks {
    /// Keys that parsed and validated.
    pub keys: Vec<JwkKey>,
    /// Keys left out (encryption keys, unsupported types, bad material), summarised.
    pub skipped: SkippedKeys,
}

/// Parses a JWKS document (see [`parse_jwks_bytes`]).
pub fn parse_jwks(text: &str) -> Result<ParsedJwks, JwksError> {
    parse_jwks_bytes(text.as_bytes())
}

/// Parses a JWKS body as it arrives. A body over [`MAX_JWKS_BYTES`] or with more than
/// [`MAX_JWKS_KEYS`] keys is refused whole, before any key is read. Keys that cannot be used
/// for signatures (`use` other than `sig`, unsupported types, bad material) are left out and
/// summarised in [`ParsedJwks::skipped`]; the call fails when no key is usable.
pub fn parse_jwks_bytes(body: &[u8]) -> Result<ParsedJwks, JwksError> {
    if body.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge { bytes: body.len() });
    }
    let doc: Value = serde_json::from_slice(body).map_err(|e| JwksError::NotJson(e.to_string()))?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::NoKeysArray)?;
    if entries.is_empty() {
        return Err(JwksError::Empty);
    }
    if entries.len() > MAX_JWKS_KEYS {
        return Err(JwksError::TooManyKeys {
            count: entries.len(),
        });
    }
    let mut parsed = ParsedJwks::default();
    for (index, entry) in entries.iter().enumerate() {
        match parse_jwk(entry) {
            Ok(key) => parsed.keys.push(key),
            Err(error) => {
                let kid = entry.get("kid").and_then(Value::as_str);
                parsed.skipped.add(index, kid, error);
            }
        }
    }
    if parsed.keys.is_empty() {
        return Err(JwksError::NoUsableKey {
            skipped: parsed.skipped,
        });
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
            return Err(JwkError::NotForSignatures(printable(usage, EXCERPT_CHARS)));
        }
    }
    let kid = key.get("kid").and_then(Value::as_str).map(str::to_owned);
    let alg = match key.get("alg") {
        None => None,
        Some(value) => {
            let name = value
                .as_str()
                .ok_or_else(|| JwkError::BadAlg(printable(&value.to_string(), EXCERPT_CHARS)))?;
            Some(
                name.parse::<Algorithm>()
                    .map_err(|_| JwkError::BadAlg(printable(name, EXCERPT_CHARS)))?,
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
                other => return Err(JwkError::UnsupportedCurve(printable(other, EXCERPT_CHARS))),
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
                return Err(JwkError::UnsupportedCurve(printable(crv, EXCERPT_CHARS)));
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
        other => return Err(JwkError::UnsupportedKty(printable(other, EXCERPT_CHARS))),
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

/// The least RSA modulus accepted, in bits (RFC 7518 §3.3 asks for 2048 or more).
pub const MIN_RSA_MODULUS_BITS: usize = 2048;
/// The largest RSA modulus accepted, in bits: larger keys make every verification slower and
/// are no stronger in practice.
pub const MAX_RSA_MODULUS_BITS: usize = 4096;
/// The shortest HMAC secret a verifier uses at all (the compiler asks for 32 bytes).
pub const MIN_HMAC_SECRET_BYTES: usize = 12;

// Why a key is refused, as people read it (compiler diagnostics, key-set logs, `explain`).
// The texts are the ones jwt-simple gave before the request path moved off it: a diagnostic
// does not change with the implementation.
/// An RSA modulus under [`MIN_RSA_MODULUS_BITS`], or an HMAC secret under
/// [`MIN_HMAC_SECRET_BYTES`].
pub(crate) const WEAK_KEY: &str = "Weak key (shorter than the minimum size for its algorithm)";
/// An RSA modulus over [`MAX_RSA_MODULUS_BITS`].
const UNSUPPORTED_RSA_MODULUS: &str = "Unsupported RSA modulus";
/// Any other key material refused (an even modulus, another exponent, a point off its curve).
const INVALID_PUBLIC_KEY: &str = "Invalid public key";

/// The length in bits of a big-endian unsigned number (leading zero bytes allowed).
fn bit_length(number: &[u8]) -> usize {
    let mut digits = number.iter().skip_while(|byte| **byte == 0);
    match digits.next() {
        None => 0,
        Some(top) => digits.count() * 8 + (8 - top.leading_zeros() as usize),
    }
}

/// claimgate's RSA key policy: a modulus of 2048 to 4096 bits and the exponent 65537 (what
/// any RSA key needs, such as an odd modulus, [`RsaKey::new`] checks).
fn check_rsa_key(n: &[u8], e: &[u8]) -> Result<(), JwkError> {
    let invalid = || JwkError::InvalidKey(INVALID_PUBLIC_KEY.to_owned());
    let bits = bit_length(n);
    if bits < MIN_RSA_MODULUS_BITS {
        return Err(JwkError::InvalidKey(WEAK_KEY.to_owned()));
    }
    if bits > MAX_RSA_MODULUS_BITS {
        return Err(JwkError::InvalidKey(UNSUPPORTED_RSA_MODULUS.to_owned()));
    }
    if e.iter()
        .skip_while(|byte| **byte == 0)
        .ne([1u8, 0, 1].iter())
    {
        return Err(invalid());
    }
    Ok(())
}

/// A key ready to verify signatures of one algorithm: built once per key (the JWK's numbers
/// parsed, the point checked on its curve), used for every token.
#[derive(Clone)]
pub struct Verifier {
    alg: Algorithm,
    key: VerifyingKey,
}

/// The key of a [`Verifier`], in the form its algorithm's code verifies with.
#[derive(Clone)]
enum VerifyingKey {
    /// RS256/384/512 (`pss` false) and PS256/384/512 (`pss` true).
    Rsa {
        key: RsaKey,
        hash: RsaHash,
        pss: bool,
    },
    Es256(p256::ecdsa::VerifyingKey),
    Es384(p384::ecdsa::VerifyingKey),
    EdDsa(ed25519_compact::PublicKey),
    /// An HMAC secret, whatever its hash (HS256/384/512 by the verifier's `alg`).
    Hmac(Vec<u8>),
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key: an HMAC secret must not reach a log line through `{:?}`.
        write!(f, "Verifier({})", self.alg)
    }
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
        let invalid = || JwkError::InvalidKey(INVALID_PUBLIC_KEY.to_owned());
        let key = match (&key.material, alg) {
            (KeyMaterial::Rsa { n, e }, _) => {
                if alg.key_family() != KeyFamily::Rsa {
                    return Err(mismatch);
                }
                check_rsa_key(n, e)?;
                let key = RsaKey::new(n, e).ok_or_else(invalid)?;
                let (hash, pss) = match alg {
                    Algorithm::RS256 => (RsaHash::Sha256, false),
                    Algorithm::RS384 => (RsaHash::Sha384, false),
                    Algorithm::RS512 => (RsaHash::Sha512, false),
                    Algorithm::PS256 => (RsaHash::Sha256, true),
                    Algorithm::PS384 => (RsaHash::Sha384, true),
                    Algorithm::PS512 => (RsaHash::Sha512, true),
                    _ => return Err(mismatch),
                };
                VerifyingKey::Rsa { key, hash, pss }
            }
            (
                KeyMaterial::Ec {
                    curve: Curve::P256,
                    point,
                },
                Algorithm::ES256,
            ) => VerifyingKey::Es256(
                p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| invalid())?,
            ),
            (
                KeyMaterial::Ec {
                    curve: Curve::P384,
                    point,
                },
                Algorithm::ES384,
            ) => VerifyingKey::Es384(
                p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| invalid())?,
            ),
            (KeyMaterial::Ed25519 { x }, Algorithm::EdDSA) => {
                let public = ed25519_compact::PublicKey::from_slice(x).map_err(|_| invalid())?;
                // Parsing alone lets weak (small-order) keys through.
                public.validate().map_err(|_| invalid())?;
                VerifyingKey::EdDsa(public)
            }
            _ => return Err(mismatch),
        };
        Ok(Verifier { alg, key })
    }

    /// Builds an HMAC verifier from an inline secret.
    pub fn from_secret(secret: &[u8], alg: Algorithm) -> Option<Verifier> {
        alg.is_hmac().then(|| Verifier {
            alg,
            key: VerifyingKey::Hmac(secret.to_vec()),
        })
    }

    /// The algorithm this verifier checks.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Whether this is an HMAC secret too short to verify anything with (every token signed
    /// with it is refused).
    pub fn is_weak_secret(&self) -> bool {
        matches!(&self.key, VerifyingKey::Hmac(secret) if secret.len() < MIN_HMAC_SECRET_BYTES)
    }

    /// Whether `signature` (the JWS signature, base64url-decoded) signs `signing_input` (the
    /// token's first two parts as received). A signature of the wrong length or encoding is
    /// simply not valid. HMAC tags are compared in constant time.
    pub fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            VerifyingKey::Rsa {
                key,
                hash,
                pss: false,
            } => key.verify_pkcs1v15(*hash, signing_input, signature),
            VerifyingKey::Rsa {
                key,
                hash,
                pss: true,
            } => key.verify_pss(*hash, signing_input, signature),
            VerifyingKey::Es256(key) => {
                use p256::ecdsa::signature::Verifier as _;
                p256::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verify(signing_input, &sig).is_ok())
            }
            VerifyingKey::Es384(key) => {
                use p384::ecdsa::signature::Verifier as _;
                p384::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verify(signing_input, &sig).is_ok())
            }
            VerifyingKey::EdDsa(key) => ed25519_compact::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(signing_input, &sig).is_ok()),
            VerifyingKey::Hmac(secret) => {
                // `verify_slice` compares in constant time and needs the full tag length.
                fn check<M: hmac::Mac + hmac::digest::KeyInit>(
                    secret: &[u8],
                    input: &[u8],
                    tag: &[u8],
                ) -> bool {
                    <M as hmac::KeyInit>::new_from_slice(secret).is_ok_and(|mut mac| {
                        mac.update(input);
                        mac.verify_slice(tag).is_ok()
                    })
                }
                match self.alg {
                    Algorithm::HS256 => {
                        check::<hmac::Hmac<sha2::Sha256>>(secret, signing_input, signature)
                    }
                    Algorithm::HS384 => {
                        check::<hmac::Hmac<sha2::Sha384>>(secret, signing_input, signature)
                    }
                    Algorithm::HS512 => {
                        check::<hmac::Hmac<sha2::Sha512>>(secret, signing_input, signature)
                    }
                    _ => false,
                }
            }
        }
    }
}

/// One prepared key: its id, a verifier per algorithm it may check, and its form for a
/// [`SignatureHost`](crate::signature::SignatureHost).
#[derive(Debug, Clone)]
pub struct PreparedKey {
    /// Key id, if any.
    pub kid: Option<String>,
    /// Verifiers, one per allowed algorithm the key fits.
    pub verifiers: Vec<(Algorithm, Verifier)>,
    /// The key as a signature host reads it (empty for keys no host is asked about).
    pub host_key: HostKey,
    /// The length of every valid signature by this key, where it depends on the key: the RSA
    /// modulus in bytes (0 otherwise). A signature of another length is refused without asking
    /// the host, as the pure path refuses it.
    pub rsa_signature_len: usize,
}

/// A key [`KeySet::select`] found for a token: what verifies it, on either path.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'k> {
    /// The pure-Rust verifier for the token's algorithm.
    pub verifier: &'k Verifier,
    /// The key as a signature host reads it.
    pub host_key: &'k HostKey,
    /// The RSA modulus length in bytes (0 for other keys).
    pub rsa_signature_len: usize,
}

/// The RSA modulus length in bytes (leading zero bytes of the JWK's `n` not counted), or 0.
fn rsa_signature_len(material: &KeyMaterial) -> usize {
    match material {
        KeyMaterial::Rsa { n, .. } => n.iter().skip_while(|byte| **byte == 0).count(),
        KeyMaterial::Ec { .. } | KeyMaterial::Ed25519 { .. } => 0,
    }
}

/// The key in the form a signature host reads (DER SubjectPublicKeyInfo), built once per key;
/// empty for Ed25519, which no host is asked about.
fn host_key(material: &KeyMaterial) -> HostKey {
    HostKey {
        spki_der: crate::der::spki_der(material).unwrap_or_default(),
    }
}

/// Why [`KeySet::select`] found no key to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyMiss {
    /// No key of the issuer verifies this algorithm.
    #[error("no key for this algorithm")]
    NoKeyForAlg,
    /// The token's `kid` is not one of the keys'.
    #[error("no key has this kid")]
    UnknownKid,
    /// The token names no `kid` and several keys verify its algorithm.
    #[error("the token names no kid and {keys} keys verify its algorithm")]
    SeveralKeys {
        /// How many.
        keys: usize,
    },
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
                    host_key: host_key(&key.material),
                    rsa_signature_len: rsa_signature_len(&key.material),
                })
            })
            .collect();
        KeySet { keys }
    }

    /// The keys an issuer verifies with: `keys` (inline, or fetched from its `jwks_uri`)
    /// prepared for its algorithms, plus its inline HMAC secret, if any. The secret belongs
    /// to the issuer, not to a key set: it stays when fetched keys replace the inline ones.
    pub fn for_issuer(issuer: &CompiledIssuer, keys: &[JwkKey]) -> KeySet {
        let set = KeySet::prepare(keys, &issuer.algorithms);
        match &issuer.hmac_secret {
            Some(secret) => set.with_secret(secret, &issuer.algorithms),
            None => set,
        }
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
                host_key: HostKey::default(),
                rsa_signature_len: 0,
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

    /// The keys that may verify a token signed with `alg` and naming `kid`: never more than
    /// one verification for a token without a matching `kid`.
    ///
    /// - The token names a `kid`: the keys with that `kid`. When no key for `alg` has a
    ///   `kid` at all, the issuer's only key for `alg` (an inline key or HMAC secret without
    ///   one); otherwise the `kid` is unknown and nothing is verified.
    /// - The token names none: the issuer's only key for `alg`. With several, the token
    ///   cannot say which, and none is tried (trying each would cost a full verification
    ///   per key for every junk token).
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<Candidate<'_>>, KeyMiss> {
        let fitting: Vec<(Option<&str>, Candidate<'_>)> = self
            .keys
            .iter()
            .filter_map(|key| {
                let (_, verifier) = key.verifiers.iter().find(|(a, _)| *a == alg)?;
                let candidate = Candidate {
                    verifier,
                    host_key: &key.host_key,
                    rsa_signature_len: key.rsa_signature_len,
                };
                Some((key.kid.as_deref(), candidate))
            })
            .collect();
        if fitting.is_empty() {
            return Err(KeyMiss::NoKeyForAlg);
        }
        match kid {
            None => match fitting.as_slice() {
                [(_, only)] => Ok(vec![*only]),
                several => Err(KeyMiss::SeveralKeys {
                    keys: several.len(),
                }),
            },
            Some(wanted) => {
                let named: Vec<Candidate<'_>> = fitting
                    .iter()
                    .filter(|(have, _)| *have == Some(wanted))
                    .map(|(_, verifier)| *verifier)
                    .collect();
                match (named.is_empty(), fitting.as_slice()) {
                    (false, _) => Ok(named),
                    (true, [(None, only)]) => Ok(vec![*only]),
                    (true, _) => Err(KeyMiss::UnknownKid),
                }
            }
        }
    }

    /// Gives every key this host form (tests of the host seam, before keys carry their DER).
    #[cfg(test)]
    pub(crate) fn set_host_keys_for_tests(&mut self, host_key: &HostKey) {
        for key in &mut self.keys {
            key.host_key = host_key.clone();
        }
    }

    /// Whether any key carries this key id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

#[cfg(test)]
mod tests {
    use jwt_simple::prelude::*;

    use super::*;

    fn es256_jwk(key: &ES256KeyPair, kid: Option<&str>) -> Value {
        let mut jwk: serde_json::Map<String, Value> =
            serde_json::from_str(&key.public_key().to_jwk()).unwrap();
        jwk.remove("kid");
        if let Some(kid) = kid {
            jwk.insert("kid".into(), kid.into());
        }
        Value::Object(jwk)
    }

    fn key_set(keys: &[Value], allowed: &[Algorithm]) -> KeySet {
        let doc = serde_json::json!({ "keys": keys }).to_string();
        KeySet::prepare(&parse_jwks(&doc).unwrap().keys, allowed)
    }

    #[test]
    fn refuses_symmetric_keys_in_a_key_set() {
        let err = parse_jwks(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap_err();
        let JwksError::NoUsableKey { skipped } = err else {
            panic!("{err:?}")
        };
        assert_eq!(skipped.first[0].error, JwkError::SymmetricKey);
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
        let JwksError::NoUsableKey { skipped } = err else {
            panic!("{err:?}")
        };
        assert_eq!(skipped.first[0].error, JwkError::MissingMember("n"));
    }

    /// Issue 8, defect 7: a token without `kid` was tried against every key of its
    /// algorithm, and one with an unknown `kid` against every key without one.
    #[test]
    fn a_token_without_a_matching_kid_is_tried_against_one_key_at_most() {
        let (a, b) = (ES256KeyPair::generate(), ES256KeyPair::generate());
        let es = [Algorithm::ES256];
        let named = key_set(&[es256_jwk(&a, Some("a")), es256_jwk(&b, Some("b"))], &es);
        assert_eq!(named.select(Some("a"), Algorithm::ES256).unwrap().len(), 1);
        assert_eq!(
            named.select(Some("c"), Algorithm::ES256).unwrap_err(),
            KeyMiss::UnknownKid
        );
        assert_eq!(
            named.select(None, Algorithm::ES256).unwrap_err(),
            KeyMiss::SeveralKeys { keys: 2 }
        );
        assert_eq!(
            named.select(None, Algorithm::ES384).unwrap_err(),
            KeyMiss::NoKeyForAlg
        );

        let anonymous = key_set(&[es256_jwk(&a, None), es256_jwk(&b, None)], &es);
        assert_eq!(
            anonymous.select(None, Algorithm::ES256).unwrap_err(),
            KeyMiss::SeveralKeys { keys: 2 }
        );
        assert_eq!(
            anonymous.select(Some("x"), Algorithm::ES256).unwrap_err(),
            KeyMiss::UnknownKid
        );

        // One key without a kid: the issuer's only key, whatever kid the token names.
        let single = key_set(&[es256_jwk(&a, None)], &es);
        assert_eq!(single.select(None, Algorithm::ES256).unwrap().len(), 1);
        assert_eq!(single.select(Some("x"), Algorithm::ES256).unwrap().len(), 1);
        // A kid-less key beside named ones never serves an unknown kid.
        let mixed = key_set(&[es256_jwk(&a, None), es256_jwk(&b, Some("b"))], &es);
        assert_eq!(
            mixed.select(Some("x"), Algorithm::ES256).unwrap_err(),
            KeyMiss::UnknownKid
        );
    }

    /// Issue 8, defect 11: `hmac_secret` was dropped once remote keys arrived.
    #[test]
    fn the_hmac_secret_stays_beside_fetched_keys() {
        let fetched = ES256KeyPair::generate();
        let jwks = parse_jwks(
            &serde_json::json!({ "keys": [es256_jwk(&fetched, Some("f"))] }).to_string(),
        )
        .unwrap();
        let issuer = CompiledIssuer {
            hmac_secret: Some(vec![7; 32]),
            ..CompiledIssuer::new(
                "test",
                "https://idp",
                vec![Algorithm::ES256, Algorithm::HS256],
            )
        };
        let keys = KeySet::for_issuer(&issuer, &jwks.keys);
        assert!(keys.select(None, Algorithm::HS256).is_ok());
        assert!(keys.select(Some("f"), Algorithm::ES256).is_ok());
    }

    /// Issue 8, defect 9: a 5 MiB key set of 175k unsupported keys was parsed key by key,
    /// with one warning per key.
    #[test]
    fn huge_key_sets_are_refused_whole() {
        let junk = r#"{"kty":"XYZ","kid":"k"},"#.repeat(175_000);
        let body = format!(r#"{{"keys":[{}{{"kty":"XYZ"}}]}}"#, junk);
        assert!(body.len() > 4 * 1024 * 1024);
        assert_eq!(
            parse_jwks(&body),
            Err(JwksError::TooLarge { bytes: body.len() })
        );
        let many = format!(
            r#"{{"keys":[{}{{"kty":"XYZ"}}]}}"#,
            r#"{"kty":"XYZ"},"#.repeat(MAX_JWKS_KEYS)
        );
        assert!(many.len() < MAX_JWKS_BYTES);
        assert_eq!(
            parse_jwks(&many),
            Err(JwksError::TooManyKeys {
                count: MAX_JWKS_KEYS + 1
            })
        );
    }

    #[test]
    fn encryption_keys_alone_are_told_apart_from_other_skipped_keys() {
        let sig = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        let enc = r#"{"kty":"RSA","kid":"enc-1","use":"enc","n":"AQAB","e":"AQAB"}"#;
        let keycloak = parse_jwks(&format!(r#"{{"keys":[{enc},{sig}]}}"#)).unwrap();
        assert!(keycloak.skipped.only_encryption_keys());
        let odd_use = parse_jwks(&format!(
            r#"{{"keys":[{},{sig}]}}"#,
            enc.replace("enc", "wrap")
        ))
        .unwrap();
        assert!(!odd_use.skipped.only_encryption_keys());
        let mixed = parse_jwks(&format!(
            r#"{{"keys":[{enc},{{"kty":"oct","k":"AAAA"}},{sig}]}}"#
        ))
        .unwrap();
        assert!(!mixed.skipped.only_encryption_keys());
        assert!(
            !parse_jwks(&format!(r#"{{"keys":[{sig}]}}"#))
                .unwrap()
                .skipped
                .only_encryption_keys()
        );
    }

    #[test]
    fn skipped_keys_are_summarised_in_bounded_text() {
        let good = es256_jwk(&ES256KeyPair::generate(), Some("sig-1"));
        let huge_kid = "\u{202e}k\n".repeat(500);
        let mut keys = vec![
            serde_json::json!({"kty": "RSA", "use": "enc", "kid": "enc-1", "n": "AQAB", "e": "AQAB"}),
            good,
        ];
        for _ in 0..97 {
            keys.push(serde_json::json!({"kty": "X".repeat(2_000), "kid": huge_kid}));
        }
        let parsed = parse_jwks(&serde_json::json!({ "keys": keys }).to_string()).unwrap();
        assert_eq!(parsed.keys.len(), 1);
        assert_eq!(parsed.skipped.count, 98);
        assert_eq!(
            parsed.skipped.by_kind,
            vec![("not_for_signatures", 1), ("unsupported_kty", 97)]
        );
        let line = parsed.skipped.to_string();
        assert!(line.starts_with("98 keys skipped (not_for_signatures: 1, unsupported_kty: 97): key #0 (kid `enc-1`): key `use` is `enc`, not `sig`; key #2"), "{line}");
        assert!(line.len() < 600, "{} bytes: {line}", line.len());
        assert!(
            line.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
            "{line}"
        );
    }

    #[test]
    fn printable_cuts_and_cleans() {
        assert_eq!(printable("kid-1", 64), "kid-1");
        assert_eq!(printable("a\nb\u{202e}c\u{0}", 64), "a?b?c?");
        let long = printable(&"x".repeat(8192), 64);
        assert_eq!((long.len(), long.ends_with("...")), (64, true));
        assert_eq!(printable("abcdef", 2), "..");
    }
}
