//! The seam between the engine and a signature verifier outside Wasm.
//!
//! Inside Envoy, a foreign function (`verify_signature`, BoringSSL) checks RSA PKCS#1 v1.5 and
//! ECDSA signatures several times faster than Rust compiled to Wasm. The core stays host-free:
//! it only knows this trait. The filter installs an implementation once per VM
//! ([`crate::engine::Engine::set_signature_host`]); the CLI never does, so `explain` always
//! shows the pure-Rust path, and tests prove both paths accept the same tokens.
//!
//! Only RS256/384/512 and ES256/384 are ever offered to a host ([`offered_to_host`]): Envoy
//! answers `false` for valid RSA-PSS signatures and has no Ed25519, and HMAC secrets never
//! leave the engine.

use crate::algorithm::Algorithm;

/// Verifies JWS signatures outside Wasm (Envoy's BoringSSL `verify_signature` foreign function).
pub trait SignatureHost: Send + Sync {
    /// `Some(valid)` when the host checked it, `None` when it cannot (algorithm it lacks, host call
    /// failed): then the pure-Rust path decides. Never `Some(true)` on doubt.
    ///
    /// `signing_input` is the token's first two parts as received (`header.payload`);
    /// `signature` is the third part, base64url-decoded: for ES256/ES384 the raw JWS `r || s`
    /// of exactly 64 or 96 bytes (the host converts it to what it needs), for RS* exactly the
    /// modulus length.
    fn verify(
        &self,
        alg: Algorithm,
        key: &HostKey,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Option<bool>;
}

/// A key as the host wants it, built once per key when a KeySet is prepared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostKey {
    /// DER SubjectPublicKeyInfo (RSA and EC P-256/P-384; empty for others)
    pub spki_der: Vec<u8>,
}

impl HostKey {
    /// Whether the host can be asked about this key at all.
    pub fn is_usable(&self) -> bool {
        !self.spki_der.is_empty()
    }
}

/// Whether signatures of `alg` may be checked by a [`SignatureHost`]: RS256/384/512 and
/// ES256/384 only. PS* (Envoy refuses valid PSS signatures), EdDSA (no Ed25519 in Envoy) and
/// HS* (the secret stays in the engine) always take the pure-Rust path.
pub fn offered_to_host(alg: Algorithm) -> bool {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::ES256
        | Algorithm::ES384 => true,
        Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512
        | Algorithm::EdDSA
        | Algorithm::HS256
        | Algorithm::HS384
        | Algorithm::HS512 => false,
    }
}

/// The engine's optional host, printable in the engine's `Debug` output.
#[derive(Clone, Default)]
pub(crate) struct HostSlot(pub(crate) Option<std::sync::Arc<dyn SignatureHost>>);

impl std::fmt::Debug for HostSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Some(_) => "SignatureHost(installed)",
            None => "SignatureHost(none: pure Rust)",
        })
    }
}
