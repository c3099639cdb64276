//! The DER encodings Envoy's `verify_signature` foreign function (BoringSSL) wants: a public key
//! as SubjectPublicKeyInfo and an ECDSA signature as `ECDSA-Sig-Value`. A JWK carries the raw
//! numbers and a JWS carries ECDSA signatures as fixed-width `r || s`, so both are re-encoded
//! here, once per key and once per ECDSA signature.
//!
//! Only the few shapes needed are written, by hand: a general DER library would add code to the
//! `.wasm` for two fixed structures. Each output is proven against independent decoders and
//! verifiers (`spki`, `rsa`, `p256`/`p384`, `ring`) in the tests below.

use crate::keys::{Curve, KeyMaterial};

/// `rsaEncryption` (1.2.840.113549.1.1.1), the OID's content bytes.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// `id-ecPublicKey` (1.2.840.10045.2.1).
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// `prime256v1` / `secp256r1` (1.2.840.10045.3.1.7).
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `secp384r1` (1.3.132.0.34).
const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const NULL: u8 = 0x05;
const OBJECT_IDENTIFIER: u8 = 0x06;
const SEQUENCE: u8 = 0x30;

/// The width in bytes of a scalar (and of each of `r` and `s`) on `curve`.
pub fn scalar_len(curve: Curve) -> usize {
    match curve {
        Curve::P256 => 32,
        Curve::P384 => 48,
    }
}

/// The DER SubjectPublicKeyInfo of an RSA key or an EC P-256/P-384 key (uncompressed point);
/// `None` for Ed25519 (the host cannot verify it) and for material that is not a key (an RSA
/// modulus or exponent of value zero, an EC point of the wrong length or not uncompressed).
pub fn spki_der(material: &KeyMaterial) -> Option<Vec<u8>> {
    match material {
        KeyMaterial::Rsa { n, e } => {
            let mut rsa_public_key = Vec::with_capacity(n.len() + e.len() + 16);
            push_unsigned_integer(&mut rsa_public_key, n)?;
            push_unsigned_integer(&mut rsa_public_key, e)?;
            let mut public_key = Vec::with_capacity(rsa_public_key.len() + 4);
            push_tlv(&mut public_key, SEQUENCE, &rsa_public_key);
            let mut algorithm = Vec::with_capacity(RSA_ENCRYPTION.len() + 4);
            push_tlv(&mut algorithm, OBJECT_IDENTIFIER, RSA_ENCRYPTION);
            push_tlv(&mut algorithm, NULL, &[]);
            Some(spki(&algorithm, &public_key))
        }
        KeyMaterial::Ec { curve, point } => {
            let (curve_oid, width) = match curve {
                Curve::P256 => (P256, 32),
                Curve::P384 => (P384, 48),
            };
            if point.len() != 1 + 2 * width || point.first() != Some(&0x04) {
                return None;
            }
            let mut algorithm = Vec::with_capacity(EC_PUBLIC_KEY.len() + curve_oid.len() + 4);
            push_tlv(&mut algorithm, OBJECT_IDENTIFIER, EC_PUBLIC_KEY);
            push_tlv(&mut algorithm, OBJECT_IDENTIFIER, curve_oid);
            Some(spki(&algorithm, point))
        }
        KeyMaterial::Ed25519 { .. } => None,
    }
}

/// Converts a JWS ECDSA signature (`r || s`, each exactly the curve's scalar width, RFC 7518
/// §3.4) to the DER `SEQUENCE { INTEGER r, INTEGER s }` BoringSSL verifies. `None` when the
/// length is not exactly twice the scalar width: such a signature is bad, never re-encoded.
/// Values are not range-checked (zero, or not below the group order, still encode): the
/// verifier refuses those, as the pure-Rust path does.
pub fn ecdsa_raw_to_der(signature: &[u8], curve: Curve) -> Option<Vec<u8>> {
    let width = scalar_len(curve);
    if signature.len() != 2 * width {
        return None;
    }
    let (r, s) = signature.split_at(width);
    let mut body = Vec::with_capacity(2 * width + 6);
    push_unsigned_integer_or_zero(&mut body, r);
    push_unsigned_integer_or_zero(&mut body, s);
    let mut out = Vec::with_capacity(body.len() + 3);
    push_tlv(&mut out, SEQUENCE, &body);
    Some(out)
}

/// `SEQUENCE { SEQUENCE algorithm, BIT STRING (no unused bits) public_key }`.
fn spki(algorithm: &[u8], public_key: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(public_key.len() + 1);
    bits.push(0); // unused bits in the last byte
    bits.extend_from_slice(public_key);
    let mut body = Vec::with_capacity(algorithm.len() + bits.len() + 12);
    push_tlv(&mut body, SEQUENCE, algorithm);
    push_tlv(&mut body, BIT_STRING, &bits);
    let mut out = Vec::with_capacity(body.len() + 6);
    push_tlv(&mut out, SEQUENCE, &body);
    out
}

/// A positive INTEGER from big-endian bytes; `None` when the value is zero (not a key part).
fn push_unsigned_integer(out: &mut Vec<u8>, big_endian: &[u8]) -> Option<()> {
    if big_endian.iter().all(|&b| b == 0) {
        return None;
    }
    push_unsigned_integer_or_zero(out, big_endian);
    Some(())
}

/// A non-negative INTEGER in minimal form: leading zero bytes dropped, one zero byte put back
/// when the first remaining byte has its high bit set (else it would read as negative); zero
/// is the single byte `00`.
fn push_unsigned_integer_or_zero(out: &mut Vec<u8>, big_endian: &[u8]) {
    let first_nonzero = big_endian
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(big_endian.len());
    let digits = big_endian.get(first_nonzero..).unwrap_or_default();
    match digits.first() {
        None => push_tlv(out, INTEGER, &[0]),
        Some(&lead) if lead & 0x80 != 0 => {
            push_header(out, INTEGER, digits.len() + 1);
            out.push(0);
            out.extend_from_slice(digits);
        }
        Some(_) => push_tlv(out, INTEGER, digits),
    }
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    push_header(out, tag, content.len());
    out.extend_from_slice(content);
}

/// Tag and definite length (short form below 128, else the fewest length bytes).
fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let significant = bytes.get(skip..).unwrap_or_default();
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_minimal_and_positive() {
        let encode = |bytes: &[u8]| {
            let mut out = Vec::new();
            push_unsigned_integer_or_zero(&mut out, bytes);
            out
        };
        assert_eq!(encode(&[]), [2, 1, 0]);
        assert_eq!(encode(&[0, 0, 0]), [2, 1, 0]);
        assert_eq!(encode(&[0, 0, 0x7f]), [2, 1, 0x7f]);
        assert_eq!(encode(&[0x80]), [2, 2, 0, 0x80]);
        assert_eq!(encode(&[0, 0, 0x80, 1]), [2, 3, 0, 0x80, 1]);
        assert_eq!(encode(&[1, 0]), [2, 2, 1, 0]);
    }

    #[test]
    fn lengths_use_the_fewest_bytes() {
        let header = |len: usize| {
            let mut out = Vec::new();
            push_header(&mut out, SEQUENCE, len);
            out
        };
        assert_eq!(header(0), [0x30, 0]);
        assert_eq!(header(127), [0x30, 127]);
        assert_eq!(header(128), [0x30, 0x81, 128]);
        assert_eq!(header(255), [0x30, 0x81, 255]);
        assert_eq!(header(256), [0x30, 0x82, 1, 0]);
        assert_eq!(header(70_000), [0x30, 0x83, 1, 0x11, 0x70]);
    }

    #[test]
    fn wrong_material_has_no_spki() {
        assert_eq!(spki_der(&KeyMaterial::Ed25519 { x: vec![1; 32] }), None);
        let rsa = |n: Vec<u8>, e: Vec<u8>| spki_der(&KeyMaterial::Rsa { n, e });
        assert_eq!(rsa(vec![], vec![1, 0, 1]), None);
        assert_eq!(rsa(vec![0, 0], vec![1, 0, 1]), None);
        assert_eq!(rsa(vec![0xc5; 256], vec![0]), None);
        let ec = |curve, point: Vec<u8>| spki_der(&KeyMaterial::Ec { curve, point });
        let mut compressed = vec![2];
        compressed.extend([7; 32]);
        assert_eq!(ec(Curve::P256, compressed), None);
        let mut p384_point = vec![4];
        p384_point.extend([7; 96]);
        assert_eq!(ec(Curve::P256, p384_point.clone()), None);
        assert!(ec(Curve::P384, p384_point).is_some());
    }

    #[test]
    fn raw_ecdsa_signatures_of_the_wrong_length_are_refused() {
        for (curve, width) in [(Curve::P256, 32), (Curve::P384, 48)] {
            for len in [0, 1, width, 2 * width - 1, 2 * width + 1, 4 * width] {
                assert_eq!(ecdsa_raw_to_der(&vec![1; len], curve), None, "{len}");
            }
            assert!(ecdsa_raw_to_der(&vec![1; 2 * width], curve).is_some());
        }
        // A P-384 sized signature is not a P-256 one (and the reverse).
        assert_eq!(ecdsa_raw_to_der(&[1; 96], Curve::P256), None);
        assert_eq!(ecdsa_raw_to_der(&[1; 64], Curve::P384), None);
    }
}
