//! Host crypto: JWS signatures checked by Envoy's BoringSSL through its `verify_signature`
//! foreign function instead of in Wasm. A spike measured ≈ 56–70 µs per RS256 check that way
//! (boundary included) against ≈ 2,100 µs for pure Rust in V8.
//!
//! It takes RS256/384/512 and ES256/384 only: Envoy answers `false` for valid RSA-PSS
//! signatures and has no Ed25519, and HMAC never leaves the Wasm. What it cannot check
//! (unknown function, a key BoringSSL will not import, an unreadable answer) is `None`: the
//! pure-Rust path decides. A signature the host checked and refused is `Some(false)` at the
//! host's price, so a flood of bad signatures never falls to the slow path.
//!
//! Whether the host is used is decided once per VM, at VM start: the operator may turn it off
//! (`vm_config.configuration` `{"host_crypto": "off"}`), else a self-test must get `true` for
//! known-good and `false` for known-bad RS256 and ES256 signatures (embedded below). One info
//! line says which and why; the gauge `claimgate.host_crypto_enabled` says it too, and
//! `claimgate.host_crypto_checked_total` / `claimgate.host_crypto_declined_total` count
//! signatures the host decided and handed back.

use std::sync::{Arc, OnceLock};

use claimgate_core::algorithm::Algorithm;
use claimgate_core::der::ecdsa_raw_to_der;
use claimgate_core::keys::Curve;
use claimgate_core::signature::{HostKey, SignatureHost};

use crate::host::verify_signature::{self, Verdict};
use crate::host::{ForeignHost, Host, HostError, MetricKind};

/// Gauge: 1 when this VM verifies signatures through the host, 0 when not.
pub const ENABLED_GAUGE: &str = "claimgate.host_crypto_enabled";
/// Counter: signatures the host decided (valid or not).
pub const CHECKED_COUNTER: &str = "claimgate.host_crypto_checked_total";
/// Counter: signatures the host could not check (the pure-Rust path decided).
pub const DECLINED_COUNTER: &str = "claimgate.host_crypto_declined_total";

/// Signatures checked by the host, through [`ForeignHost`].
pub struct HostCrypto<F> {
    foreign: F,
    /// Counter ids (`checked`, `declined`), when the host defined them.
    counters: Option<(u32, u32)>,
}

impl<F> std::fmt::Debug for HostCrypto<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCrypto")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// The hash the host applies for `alg` and, for ECDSA, the curve whose raw signature is
/// re-encoded as DER; `None` for algorithms the host must not be asked about.
fn host_scheme(alg: Algorithm) -> Option<(&'static str, Option<Curve>)> {
    match alg {
        Algorithm::RS256 => Some(("sha256", None)),
        Algorithm::RS384 => Some(("sha384", None)),
        Algorithm::RS512 => Some(("sha512", None)),
        Algorithm::ES256 => Some(("sha256", Some(Curve::P256))),
        Algorithm::ES384 => Some(("sha384", Some(Curve::P384))),
        // PS*: Envoy answers false for valid PSS signatures; EdDSA: no Ed25519; HS*: the
        // secret stays in the Wasm.
        Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512
        | Algorithm::EdDSA
        | Algorithm::HS256
        | Algorithm::HS384
        | Algorithm::HS512 => None,
    }
}

impl<F: ForeignHost> HostCrypto<F> {
    /// A host crypto over `foreign`, bumping `counters` (`checked`, `declined`) if given.
    pub fn new(foreign: F, counters: Option<(u32, u32)>) -> HostCrypto<F> {
        HostCrypto { foreign, counters }
    }

    /// What the host says, without counting: `Err` when the call itself failed.
    fn ask(
        &self,
        alg: Algorithm,
        key: &HostKey,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<Verdict, HostError> {
        let Some((hash, curve)) = host_scheme(alg) else {
            return Ok(Verdict::Unable);
        };
        if key.spki_der.is_empty() {
            return Ok(Verdict::Unable);
        }
        let der_signature;
        let signature = match curve {
            None => signature,
            Some(curve) => match ecdsa_raw_to_der(signature, curve) {
                Some(der) => {
                    der_signature = der;
                    &der_signature
                }
                // Not `r || s` of the curve's width: a bad signature, decided here.
                None => return Ok(Verdict::Invalid),
            },
        };
        let arguments =
            verify_signature::encode_arguments(hash, &key.spki_der, signature, signing_input);
        self.foreign
            .call_foreign_function(verify_signature::FUNCTION, &arguments)
            .map(|answer| verify_signature::verdict(answer.as_deref()))
    }
}

impl<F: ForeignHost> SignatureHost for HostCrypto<F> {
    fn verify(
        &self,
        alg: Algorithm,
        key: &HostKey,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Option<bool> {
        let verdict = match self.ask(alg, key, signing_input, signature) {
            Ok(Verdict::Valid) => Some(true),
            Ok(Verdict::Invalid) => Some(false),
            Ok(Verdict::Unable) | Err(_) => None,
        };
        if let Some((checked, declined)) = self.counters {
            self.foreign.bump_counter(match verdict {
                Some(_) => checked,
                None => declined,
            });
        }
        verdict
    }
}

// === Detection ===

/// Why host crypto is off in this VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Off {
    /// The operator said so (`{"host_crypto": "off"}`).
    Configured,
    /// The host has no `verify_signature` (or refused the call): its status.
    Unavailable(HostError),
    /// The self-test got a wrong answer: which vector, and what came back.
    SelfTest(&'static str, Verdict),
}

impl std::fmt::Display for Off {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Off::Configured => f.write_str("turned off by vm_config.configuration host_crypto"),
            Off::Unavailable(error) => {
                write!(f, "Envoy's verify_signature is unavailable ({error})")
            }
            Off::SelfTest(vector, got) => {
                write!(
                    f,
                    "Envoy's verify_signature failed its self-test ({vector}: {got:?})"
                )
            }
        }
    }
}

/// What `vm_config.configuration` asks for: `{"host_crypto": "off"}` (or `false`) turns host
/// crypto off; anything else (no configuration, `"auto"`, `"on"`) lets detection decide.
/// Returns also a warning for a value it does not understand.
pub fn knob(vm_configuration: Option<&[u8]>) -> (bool, Option<String>) {
    let Some(bytes) = vm_configuration.filter(|b| !b.iter().all(u8::is_ascii_whitespace)) else {
        return (true, None);
    };
    let Ok(serde_json::Value::Object(config)) = serde_json::from_slice::<serde_json::Value>(bytes)
    else {
        return (
            true,
            Some("vm_config.configuration is not a JSON object: ignored".to_owned()),
        );
    };
    match config.get("host_crypto") {
        None => (true, None),
        Some(serde_json::Value::String(value)) if value == "off" => (false, None),
        Some(serde_json::Value::Bool(false)) => (false, None),
        Some(serde_json::Value::String(value)) if value == "auto" || value == "on" => (true, None),
        Some(serde_json::Value::Bool(true)) => (true, None),
        Some(_) => (
            true,
            Some(
                "vm_config.configuration host_crypto is not \"off\", \"on\" or \"auto\": ignored"
                    .to_owned(),
            ),
        ),
    }
}

/// One self-test vector: a key, signed bytes and their signature, known good (and known bad
/// once a signed byte changes).
struct Vector {
    good: &'static str,
    bad: &'static str,
    alg: Algorithm,
    spki_der: &'static [u8],
    signing_input: &'static [u8],
    signature: &'static [u8],
}

/// Runs the self-test: each vector must verify, and must not once its signed bytes change.
pub fn self_test<F: ForeignHost>(crypto: &HostCrypto<F>) -> Result<(), Off> {
    for vector in VECTORS {
        let key = HostKey {
            spki_der: vector.spki_der.to_vec(),
        };
        let mut tampered = vector.signing_input.to_vec();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        for (input, expected, label) in [
            (vector.signing_input, Verdict::Valid, vector.good),
            (&tampered[..], Verdict::Invalid, vector.bad),
        ] {
            match crypto.ask(vector.alg, &key, input, vector.signature) {
                Ok(verdict) if verdict == expected => {}
                Ok(verdict) => return Err(Off::SelfTest(label, verdict)),
                Err(error) => return Err(Off::Unavailable(error)),
            }
        }
    }
    Ok(())
}

/// Decides for one VM: the knob, then the self-test. `Ok` carries the host crypto to install.
pub fn detect<F: ForeignHost>(
    foreign: F,
    counters: Option<(u32, u32)>,
    vm_configuration: Option<&[u8]>,
) -> Result<HostCrypto<F>, Off> {
    let (allowed, _) = knob(vm_configuration);
    if !allowed {
        return Err(Off::Configured);
    }
    let crypto = HostCrypto::new(foreign, counters);
    self_test(&crypto)?;
    Ok(crypto)
}

/// This VM's decision, made once by [`start_vm`].
static VM_SIGNATURE_HOST: OnceLock<Option<Arc<dyn SignatureHost>>> = OnceLock::new();

/// At VM start: decides once per VM ([`decide`]). Later calls (another root context in the
/// same VM) do nothing.
pub fn start_vm<F: ForeignHost + 'static>(host: &dyn Host, foreign: F) {
    VM_SIGNATURE_HOST.get_or_init(|| decide(host, foreign));
}

/// Reads the knob, runs the detection, logs the outcome and sets the gauge; the signature
/// host to install, if any.
pub fn decide<F: ForeignHost + 'static>(
    host: &dyn Host,
    foreign: F,
) -> Option<Arc<dyn SignatureHost>> {
    {
        let vm_configuration = host.vm_configuration().ok().flatten();
        if let (_, Some(warning)) = knob(vm_configuration.as_deref()) {
            log::warn!("claimgate: {warning}");
        }
        let counters = host
            .define_metric(MetricKind::Counter, CHECKED_COUNTER)
            .ok()
            .zip(
                host.define_metric(MetricKind::Counter, DECLINED_COUNTER)
                    .ok(),
            );
        let decided = detect(foreign, counters, vm_configuration.as_deref());
        let enabled = u64::from(decided.is_ok());
        if let Ok(gauge) = host.define_metric(MetricKind::Gauge, ENABLED_GAUGE) {
            let _ = host.record_metric(gauge, enabled);
        }
        match decided {
            Ok(crypto) => {
                log::info!(
                    "claimgate: host crypto on: RS256/384/512 and ES256/384 signatures are \
                     verified by Envoy's verify_signature (self-test passed)"
                );
                Some(Arc::new(crypto) as Arc<dyn SignatureHost>)
            }
            Err(off) => {
                log::info!("claimgate: host crypto off: {off}; signatures are verified in Wasm");
                None
            }
        }
    }
}

/// The signature host this VM decided on at start (`None`: pure Rust).
pub fn vm_signature_host() -> Option<Arc<dyn SignatureHost>> {
    VM_SIGNATURE_HOST.get().cloned().flatten()
}

// === Self-test vectors ===
// Generated once by `tests::print_self_test_vectors` (run it with `--ignored --nocapture`):
// a 2048-bit RSA key and a P-256 key, each with one JWS signing input and its signature.

const VECTORS: [Vector; 2] = [
    Vector {
        good: "RS256 valid signature",
        bad: "RS256 tampered input",
        alg: Algorithm::RS256,
        spki_der: RS256_SPKI,
        signing_input: RS256_INPUT,
        signature: RS256_SIGNATURE,
    },
    Vector {
        good: "ES256 valid signature",
        bad: "ES256 tampered input",
        alg: Algorithm::ES256,
        spki_der: ES256_SPKI,
        signing_input: ES256_INPUT,
        signature: ES256_SIGNATURE,
    },
];

const RS256_SPKI: &[u8] = &[
    48, 130, 1, 34, 48, 13, 6, 9, 42, 134, 72, 134, 247, 13, 1, 1, 1, 5, 0, 3, 130, 1, 15, 0, 48,
    130, 1, 10, 2, 130, 1, 1, 0, 216, 91, 240, 218, 198, 247, 154, 60, 203, 233, 35, 185, 67, 162,
    217, 65, 130, 166, 164, 72, 12, 77, 228, 217, 243, 195, 84, 95, 199, 251, 184, 42, 107, 15,
    220, 247, 223, 237, 215, 133, 196, 19, 35, 117, 218, 230, 98, 56, 157, 94, 144, 219, 66, 27,
    135, 133, 7, 175, 146, 247, 236, 207, 151, 106, 188, 125, 239, 124, 124, 194, 54, 255, 43, 113,
    183, 165, 43, 3, 10, 130, 187, 139, 48, 189, 69, 102, 127, 124, 52, 235, 221, 242, 0, 136, 38,
    242, 7, 161, 63, 69, 201, 98, 145, 184, 192, 254, 158, 185, 38, 205, 111, 62, 24, 212, 163,
    101, 75, 175, 149, 146, 187, 95, 71, 207, 40, 244, 173, 56, 88, 4, 33, 64, 23, 151, 179, 180,
    203, 216, 183, 87, 1, 147, 40, 40, 44, 141, 181, 17, 204, 158, 43, 5, 183, 216, 28, 238, 11,
    231, 211, 50, 134, 94, 80, 184, 86, 244, 152, 209, 119, 47, 17, 78, 17, 0, 193, 195, 47, 146,
    10, 71, 234, 104, 227, 119, 53, 2, 29, 180, 185, 89, 83, 131, 184, 33, 123, 210, 20, 101, 123,
    228, 88, 167, 232, 79, 16, 199, 70, 190, 230, 120, 2, 13, 119, 186, 193, 88, 42, 157, 175, 41,
    72, 82, 137, 100, 229, 224, 35, 124, 228, 172, 198, 37, 244, 198, 45, 175, 134, 228, 250, 215,
    215, 17, 183, 122, 227, 169, 202, 0, 171, 49, 182, 76, 181, 187, 127, 67, 2, 3, 1, 0, 1,
];
const RS256_INPUT: &[u8] = b"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJjbGFpbWdhdGUtc2VsZi10ZXN0Iiwic3ViIjoic2VsZi10ZXN0In0";
const RS256_SIGNATURE: &[u8] = &[
    199, 125, 189, 221, 226, 164, 106, 175, 170, 31, 5, 2, 139, 128, 208, 15, 223, 179, 205, 225,
    123, 23, 182, 123, 72, 20, 5, 139, 238, 149, 222, 248, 50, 76, 125, 72, 86, 99, 199, 120, 191,
    26, 16, 200, 212, 245, 62, 242, 102, 182, 18, 86, 227, 68, 247, 129, 7, 78, 68, 158, 165, 71,
    106, 254, 30, 1, 164, 101, 21, 182, 205, 21, 238, 25, 204, 13, 44, 129, 23, 177, 79, 32, 42,
    91, 220, 230, 184, 144, 207, 164, 1, 169, 74, 9, 249, 74, 66, 240, 181, 155, 51, 219, 70, 245,
    111, 51, 185, 130, 185, 20, 222, 88, 70, 229, 136, 123, 183, 11, 160, 135, 47, 7, 149, 151,
    166, 94, 183, 247, 237, 177, 75, 228, 233, 119, 231, 144, 29, 25, 217, 130, 74, 200, 136, 179,
    115, 97, 124, 155, 200, 135, 183, 98, 123, 9, 43, 123, 167, 222, 32, 99, 100, 26, 215, 0, 61,
    123, 198, 81, 122, 48, 230, 5, 16, 197, 146, 22, 25, 97, 77, 2, 194, 227, 187, 246, 244, 208,
    177, 84, 25, 116, 17, 90, 172, 173, 48, 71, 187, 63, 142, 185, 71, 13, 58, 163, 8, 119, 234,
    178, 253, 2, 249, 234, 94, 14, 60, 115, 185, 208, 94, 54, 87, 142, 177, 70, 110, 185, 135, 104,
    80, 199, 207, 158, 209, 57, 102, 246, 154, 91, 215, 91, 79, 194, 72, 157, 217, 220, 118, 59,
    112, 202, 46, 120, 192, 88, 119, 90,
];
const ES256_SPKI: &[u8] = &[
    48, 89, 48, 19, 6, 7, 42, 134, 72, 206, 61, 2, 1, 6, 8, 42, 134, 72, 206, 61, 3, 1, 7, 3, 66,
    0, 4, 178, 207, 206, 234, 207, 221, 194, 11, 32, 226, 4, 59, 39, 0, 135, 193, 195, 112, 166, 8,
    72, 21, 23, 88, 79, 129, 220, 117, 8, 163, 51, 161, 218, 56, 150, 73, 24, 248, 4, 237, 204,
    154, 178, 57, 141, 67, 4, 196, 151, 31, 93, 82, 16, 220, 30, 105, 149, 182, 251, 105, 147, 27,
    208, 8,
];
const ES256_INPUT: &[u8] = b"eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJjbGFpbWdhdGUtc2VsZi10ZXN0Iiwic3ViIjoic2VsZi10ZXN0In0";
const ES256_SIGNATURE: &[u8] = &[
    247, 211, 29, 177, 214, 250, 91, 227, 204, 51, 120, 171, 115, 46, 122, 172, 219, 121, 99, 52,
    19, 189, 114, 219, 189, 119, 120, 78, 73, 218, 188, 129, 174, 14, 33, 14, 76, 2, 222, 186, 66,
    255, 106, 101, 42, 3, 85, 202, 253, 214, 198, 125, 78, 212, 189, 222, 161, 202, 131, 99, 46,
    90, 193, 24,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::{MockForeign, MockHost, capture_logs, logged};
    use crate::host::verify_signature::encode_arguments;

    const BAD_SIGNATURE: &[u8] = b"\x12\x26Failed to verify digest. Error code: 0";
    const VALID: &[u8] = &[0x08, 0x01];

    /// The argument bytes of each self-test vector's good signature.
    fn good_arguments() -> Vec<Vec<u8>> {
        vec![
            encode_arguments("sha256", RS256_SPKI, RS256_SIGNATURE, RS256_INPUT),
            encode_arguments(
                "sha256",
                ES256_SPKI,
                &ecdsa_raw_to_der(ES256_SIGNATURE, Curve::P256).unwrap_or_default(),
                ES256_INPUT,
            ),
        ]
    }

    /// A host answering as Envoy does for the self-test: valid for exactly the good
    /// signatures, "Failed to verify digest" for anything else; `invert` swaps the answers.
    fn envoy_like(invert: bool) -> MockForeign {
        let good = good_arguments();
        MockForeign::new(move |name, arguments| {
            if name != verify_signature::FUNCTION {
                return Err(HostError::Status(1));
            }
            let valid = good.iter().any(|g| g == arguments) != invert;
            Ok(Some(if valid { VALID } else { BAD_SIGNATURE }.to_vec()))
        })
    }

    fn rs256_key() -> HostKey {
        HostKey {
            spki_der: RS256_SPKI.to_vec(),
        }
    }

    #[test]
    fn self_test_vectors_are_genuine() {
        use base64::Engine as _;
        use jwt_simple::prelude::*;
        let token = |input: &[u8], signature: &[u8]| {
            format!(
                "{}.{}",
                String::from_utf8_lossy(input),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature)
            )
        };
        let rs = RS256PublicKey::from_der(RS256_SPKI).unwrap();
        assert!(
            rs.verify_token::<NoCustomClaims>(&token(RS256_INPUT, RS256_SIGNATURE), None)
                .is_ok()
        );
        let es = ES256PublicKey::from_der(ES256_SPKI).unwrap();
        assert!(
            es.verify_token::<NoCustomClaims>(&token(ES256_INPUT, ES256_SIGNATURE), None)
                .is_ok()
        );
        // The tampering the self-test applies makes each one bad.
        for (input, signature, is_rsa) in [
            (RS256_INPUT, RS256_SIGNATURE, true),
            (ES256_INPUT, ES256_SIGNATURE, false),
        ] {
            let mut tampered = input.to_vec();
            if let Some(last) = tampered.last_mut() {
                *last ^= 1;
            }
            let tampered = token(&tampered, signature);
            let verified = if is_rsa {
                rs.verify_token::<NoCustomClaims>(&tampered, None).is_ok()
            } else {
                es.verify_token::<NoCustomClaims>(&tampered, None).is_ok()
            };
            assert!(!verified);
        }
    }

    /// Generates the self-test vectors (run once, paste the output over the constants).
    #[test]
    #[ignore = "generator: prints new constants"]
    fn print_self_test_vectors() {
        use base64::Engine as _;
        use claimgate_core::der::spki_der;
        use claimgate_core::keys::KeyMaterial;
        use jwt_simple::prelude::*;
        let mut claims = Claims::create(Duration::from_hours(1))
            .with_issuer("claimgate-self-test")
            .with_subject("self-test");
        claims.expires_at = None;
        claims.issued_at = None;
        claims.invalid_before = None;
        let split = |token: String| {
            let (input, signature) = token.rsplit_once('.').unwrap();
            let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(signature)
                .unwrap();
            (input.to_owned(), signature)
        };
        let rs = RS256KeyPair::generate(2048).unwrap();
        let components = rs.public_key().to_components();
        let rs_spki = spki_der(&KeyMaterial::Rsa {
            n: components.n,
            e: components.e,
        })
        .unwrap();
        let (rs_input, rs_signature) = split(rs.sign(claims.clone()).unwrap());
        let es = ES256KeyPair::generate();
        let es_spki = spki_der(&KeyMaterial::Ec {
            curve: Curve::P256,
            point: es.public_key().public_key().to_bytes_uncompressed(),
        })
        .unwrap();
        let (es_input, es_signature) = split(es.sign(claims).unwrap());
        println!("const RS256_SPKI: &[u8] = &{rs_spki:?};");
        println!("const RS256_INPUT: &[u8] = b\"{rs_input}\";");
        println!("const RS256_SIGNATURE: &[u8] = &{rs_signature:?};");
        println!("const ES256_SPKI: &[u8] = &{es_spki:?};");
        println!("const ES256_INPUT: &[u8] = b\"{es_input}\";");
        println!("const ES256_SIGNATURE: &[u8] = &{es_signature:?};");
    }

    #[test]
    fn detection_on_with_a_truthful_host() {
        let crypto = detect(envoy_like(false), None, None).unwrap();
        // Four checks: each vector good and tampered.
        assert_eq!(crypto.foreign.call_count(), 4);
        assert!(detect(envoy_like(false), None, Some(br#"{"host_crypto":"auto"}"#)).is_ok());
        assert!(detect(envoy_like(false), None, Some(b"")).is_ok());
    }

    #[test]
    fn detection_off_when_the_host_is_wrong_missing_or_turned_off() {
        assert_eq!(
            detect(envoy_like(true), None, None).unwrap_err(),
            Off::SelfTest("RS256 valid signature", Verdict::Invalid)
        );
        let always_true = MockForeign::new(|_, _| Ok(Some(VALID.to_vec())));
        assert_eq!(
            detect(always_true, None, None).unwrap_err(),
            Off::SelfTest("RS256 tampered input", Verdict::Valid)
        );
        // Right about RSA, wrong about ECDSA (as a host without P-256 might be).
        let good = good_arguments();
        let no_ecdsa = MockForeign::new(move |_, arguments| {
            let first = good.first().is_some_and(|g| g == arguments);
            Ok(Some(if first { VALID } else { BAD_SIGNATURE }.to_vec()))
        });
        assert_eq!(
            detect(no_ecdsa, None, None).unwrap_err(),
            Off::SelfTest("ES256 valid signature", Verdict::Invalid)
        );
        let missing = MockForeign::new(|_, _| Err(HostError::Status(1)));
        assert_eq!(
            detect(missing, None, None).unwrap_err(),
            Off::Unavailable(HostError::Status(1))
        );
        let garbled = MockForeign::new(|_, _| Ok(Some(vec![0x08])));
        assert_eq!(
            detect(garbled, None, None).unwrap_err(),
            Off::SelfTest("RS256 valid signature", Verdict::Unable)
        );
        let silent = MockForeign::new(|_, _| Ok(None));
        assert!(detect(silent, None, None).is_err());
        for off in [
            &br#"{"host_crypto":"off"}"#[..],
            br#"{"host_crypto":false}"#,
        ] {
            assert_eq!(
                detect(envoy_like(false), None, Some(off)).unwrap_err(),
                Off::Configured
            );
        }
    }

    #[test]
    fn the_knob_reads_off_and_warns_on_nonsense() {
        assert_eq!(knob(None), (true, None));
        assert_eq!(knob(Some(b"  \n")), (true, None));
        assert_eq!(knob(Some(br#"{"other":1}"#)), (true, None));
        assert_eq!(knob(Some(br#"{"host_crypto":"on"}"#)), (true, None));
        assert_eq!(knob(Some(br#"{"host_crypto":true}"#)), (true, None));
        assert_eq!(knob(Some(br#"{"host_crypto":"off"}"#)), (false, None));
        assert!(knob(Some(br#"{"host_crypto":"OFF"}"#)).1.is_some());
        assert!(knob(Some(b"host_crypto=off")).1.is_some());
    }

    #[test]
    fn answers_map_to_verdicts_and_are_counted() {
        type Answer = Result<Option<Vec<u8>>, HostError>;
        let answers: [(Answer, Option<bool>); 7] = [
            (Ok(Some(VALID.to_vec())), Some(true)),
            (Ok(Some(BAD_SIGNATURE.to_vec())), Some(false)),
            (
                Ok(Some(
                    b"\x12\x23Failed to initialize digest verify.".to_vec(),
                )),
                None,
            ),
            (Ok(Some(vec![0x08, 0x01, 0x12])), None),
            (Ok(None), None),
            (Err(HostError::Status(2)), None),
            (Err(HostError::Status(1)), None),
        ];
        for (answer, expected) in answers {
            let crypto =
                HostCrypto::new(MockForeign::new(move |_, _| answer.clone()), Some((7, 8)));
            let got = crypto.verify(Algorithm::RS256, &rs256_key(), b"a.b", &[1; 256]);
            assert_eq!(got, expected);
            let (checked, declined) = (crypto.foreign.counter(7), crypto.foreign.counter(8));
            assert_eq!(
                (checked, declined),
                if got.is_some() { (1, 0) } else { (0, 1) }
            );
        }
    }

    #[test]
    fn arguments_carry_hash_key_signature_and_input() {
        let crypto = HostCrypto::new(envoy_like(false), None);
        let key = rs256_key();
        for (alg, hash) in [
            (Algorithm::RS256, "sha256"),
            (Algorithm::RS384, "sha384"),
            (Algorithm::RS512, "sha512"),
        ] {
            crypto.verify(alg, &key, b"head.body", &[3; 256]);
            let calls = crypto.foreign.calls.lock().unwrap();
            let (name, arguments) = calls.last().unwrap();
            assert_eq!(name, "verify_signature");
            assert_eq!(
                *arguments,
                encode_arguments(hash, RS256_SPKI, &[3; 256], b"head.body")
            );
        }
        // ECDSA goes as DER, converted from the JWS's r || s.
        let mut raw = vec![0u8; 96];
        raw[0] = 0x80;
        raw[95] = 1;
        let p384 = HostKey {
            spki_der: vec![0x30, 0],
        };
        crypto.verify(Algorithm::ES384, &p384, b"h.b", &raw);
        let calls = crypto.foreign.calls.lock().unwrap();
        assert_eq!(
            calls.last().unwrap().1,
            encode_arguments(
                "sha384",
                &[0x30, 0],
                &ecdsa_raw_to_der(&raw, Curve::P384).unwrap(),
                b"h.b"
            )
        );
    }

    #[test]
    fn the_host_is_never_asked_what_it_cannot_answer() {
        let crypto = HostCrypto::new(envoy_like(false), Some((1, 2)));
        for alg in [
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::EdDSA,
            Algorithm::HS256,
            Algorithm::HS384,
            Algorithm::HS512,
        ] {
            assert_eq!(crypto.verify(alg, &rs256_key(), b"a.b", &[1; 256]), None);
        }
        // A key the host cannot take (Ed25519 has no SPKI here).
        assert_eq!(
            crypto.verify(Algorithm::RS256, &HostKey::default(), b"a.b", &[1; 256]),
            None
        );
        assert_eq!(crypto.foreign.call_count(), 0);
        assert_eq!(crypto.foreign.counter(2), 8);
    }

    #[test]
    fn raw_ecdsa_of_the_wrong_length_is_bad_without_asking() {
        let crypto = HostCrypto::new(envoy_like(false), Some((1, 2)));
        let key = HostKey {
            spki_der: ES256_SPKI.to_vec(),
        };
        for len in [0, 63, 65, 70, 72, 96] {
            assert_eq!(
                crypto.verify(Algorithm::ES256, &key, ES256_INPUT, &vec![1; len]),
                Some(false),
                "{len}"
            );
        }
        // A DER signature inside the JWS is not r || s: refused, never passed through.
        let der = ecdsa_raw_to_der(ES256_SIGNATURE, Curve::P256).unwrap();
        assert_eq!(
            crypto.verify(Algorithm::ES256, &key, ES256_INPUT, &der),
            Some(false)
        );
        assert_eq!(crypto.foreign.call_count(), 0);
        assert_eq!(
            crypto.verify(Algorithm::ES256, &key, ES256_INPUT, ES256_SIGNATURE),
            Some(true)
        );
    }

    #[test]
    fn decide_logs_sets_the_gauge_and_counts() {
        capture_logs();
        let host = MockHost::new(0);
        let installed = decide(&host, envoy_like(false)).unwrap();
        assert_eq!(host.metric(ENABLED_GAUGE), Some(1));
        assert!(
            logged()
                .iter()
                .any(|(level, line)| *level == log::Level::Info
                    && line.starts_with("claimgate: host crypto on"))
        );
        assert_eq!(
            installed.verify(Algorithm::RS256, &rs256_key(), RS256_INPUT, RS256_SIGNATURE),
            Some(true)
        );

        capture_logs();
        let off = MockHost::new(0);
        off.state.borrow_mut().vm_config = Some(br#"{"host_crypto": "off"}"#.to_vec());
        assert!(decide(&off, envoy_like(false)).is_none());
        assert_eq!(off.metric(ENABLED_GAUGE), Some(0));
        assert!(
            logged()
                .iter()
                .any(|(_, line)| line.contains("host crypto off")
                    && line.contains("vm_config.configuration"))
        );

        capture_logs();
        let missing = MockHost::new(0);
        assert!(decide(&missing, MockForeign::new(|_, _| Err(HostError::Status(1)))).is_none());
        assert!(
            logged()
                .iter()
                .any(|(_, line)| line.contains("unavailable (not found)"))
        );
    }
}
