//! `der.rs` proven against independent implementations: every SubjectPublicKeyInfo it writes is
//! byte-identical to the one `rsa`/`p256`/`p384` write and parses with `spki`; every ECDSA
//! signature it converts is byte-identical to the `ecdsa` crate's DER, parses strictly, and
//! verifies with `ring`'s ASN.1 verifier (RSA keys with `ring`'s PKCS#1 verifier), including
//! `r`/`s` with leading zero bytes and with the high bit set.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use claimgate_core::der::{ecdsa_raw_to_der, spki_der};
use claimgate_core::keys::{Curve, KeyMaterial};
use jwt_simple::prelude::*;
use ring::signature::{self as ring_sig, UnparsedPublicKey};
use spki::SubjectPublicKeyInfoRef;
use spki::der::{Decode as _, Tagged as _};

/// Signing input and raw signature of a compact JWS.
fn parts(token: &str) -> (Vec<u8>, Vec<u8>) {
    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    (input.as_bytes().to_vec(), signature)
}

fn claims(i: usize) -> JWTClaims<NoCustomClaims> {
    Claims::create(Duration::from_hours(1)).with_subject(format!("user-{i}"))
}

/// The BIT STRING content of a SubjectPublicKeyInfo, after checking its algorithm.
fn subject_public_key(der: &[u8], algorithm_oid: &str, parameter_oid: Option<&str>) -> Vec<u8> {
    let info = SubjectPublicKeyInfoRef::from_der(der).expect("spki parses our DER");
    assert_eq!(info.algorithm.oid.to_string(), algorithm_oid);
    let parameters = info.algorithm.parameters.expect("parameters present");
    match parameter_oid {
        // rsaEncryption carries an explicit NULL.
        None => assert_eq!(parameters.tag(), spki::der::Tag::Null),
        Some(oid) => assert_eq!(
            parameters
                .decode_as::<spki::ObjectIdentifier>()
                .unwrap()
                .to_string(),
            oid
        ),
    }
    info.subject_public_key.raw_bytes().to_vec()
}

#[test]
fn rsa_spki_matches_rsa_crate_and_verifies_with_ring() {
    use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
    use rsa::traits::PublicKeyParts;
    for (bits, rounds) in [(2048, 2), (3072, 1), (4096, 1)] {
        for round in 0..rounds {
            let pair = RS256KeyPair::generate(bits).unwrap();
            let components = pair.public_key().to_components();
            let material = KeyMaterial::Rsa {
                n: components.n.clone(),
                e: components.e.clone(),
            };
            let der = spki_der(&material).unwrap();

            let reference = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&components.n),
                rsa::BigUint::from_bytes_be(&components.e),
            )
            .unwrap();
            assert_eq!(
                der,
                reference.to_public_key_der().unwrap().as_bytes(),
                "{bits}"
            );
            let decoded = rsa::RsaPublicKey::from_public_key_der(&der).unwrap();
            assert_eq!(decoded.n().to_bytes_be(), components.n);
            assert_eq!(decoded.e().to_bytes_be(), components.e);

            // A JWK `n` with a (non-canonical) leading zero byte names the same key.
            let mut padded_n = vec![0];
            padded_n.extend(&components.n);
            let padded = KeyMaterial::Rsa {
                n: padded_n,
                e: components.e.clone(),
            };
            assert_eq!(spki_der(&padded).unwrap(), der);

            let pkcs1 = subject_public_key(&der, "1.2.840.113549.1.1.1", None);
            let token = pair.sign(claims(round)).unwrap();
            let (input, signature) = parts(&token);
            let ring_key = UnparsedPublicKey::new(&ring_sig::RSA_PKCS1_2048_8192_SHA256, &pkcs1);
            ring_key.verify(&input, &signature).unwrap();
            let mut tampered = signature.clone();
            tampered[7] ^= 1;
            assert!(ring_key.verify(&input, &tampered).is_err());
        }
    }
}

#[test]
fn ec_spki_matches_p256_p384_and_verifies_with_ring() {
    use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
    for round in 0..4 {
        let pair = ES256KeyPair::generate();
        let point = pair.public_key().public_key().to_bytes_uncompressed();
        let der = spki_der(&KeyMaterial::Ec {
            curve: Curve::P256,
            point: point.clone(),
        })
        .unwrap();
        let reference = p256::PublicKey::from_sec1_bytes(&point).unwrap();
        assert_eq!(der, reference.to_public_key_der().unwrap().as_bytes());
        assert_eq!(
            p256::PublicKey::from_public_key_der(&der).unwrap(),
            reference
        );
        let inner = subject_public_key(&der, "1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7"));
        assert_eq!(inner, point);

        let (input, raw) = parts(&pair.sign(claims(round)).unwrap());
        let asn1 = ecdsa_raw_to_der(&raw, Curve::P256).unwrap();
        UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_ASN1, &inner)
            .verify(&input, &asn1)
            .unwrap();
    }
    for round in 0..4 {
        let pair = ES384KeyPair::generate();
        let point = pair.public_key().public_key().to_bytes_uncompressed();
        let der = spki_der(&KeyMaterial::Ec {
            curve: Curve::P384,
            point: point.clone(),
        })
        .unwrap();
        let reference = p384::PublicKey::from_sec1_bytes(&point).unwrap();
        {
            use p384::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
            assert_eq!(der, reference.to_public_key_der().unwrap().as_bytes());
            assert_eq!(
                p384::PublicKey::from_public_key_der(&der).unwrap(),
                reference
            );
        }
        let inner = subject_public_key(&der, "1.2.840.10045.2.1", Some("1.3.132.0.34"));
        assert_eq!(inner, point);

        let (input, raw) = parts(&pair.sign(claims(round)).unwrap());
        let asn1 = ecdsa_raw_to_der(&raw, Curve::P384).unwrap();
        UnparsedPublicKey::new(&ring_sig::ECDSA_P384_SHA384_ASN1, &inner)
            .verify(&input, &asn1)
            .unwrap();
    }
}

/// Signs until signatures with a leading zero byte in `r` and in `s` (≈ 1 in 256 each) and
/// with the high bit set in each have all been seen; every one converts to exactly the
/// `ecdsa` crate's DER and verifies with `ring`.
#[test]
fn es256_signatures_with_leading_zeros_and_high_bits_verify_with_ring() {
    let pair = ES256KeyPair::generate();
    let point = pair.public_key().public_key().to_bytes_uncompressed();
    let ring_key = UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_ASN1, &point);
    let (mut r_zero, mut s_zero, mut r_high, mut s_high) = (0, 0, 0, 0);
    for i in 0..20_000 {
        let (input, raw) = parts(&pair.sign(claims(i)).unwrap());
        let (r, s) = raw.split_at(32);
        let interesting = r[0] == 0 || s[0] == 0 || i < 64;
        if !interesting {
            continue;
        }
        r_zero += usize::from(r[0] == 0);
        s_zero += usize::from(s[0] == 0);
        r_high += usize::from(r[0] & 0x80 != 0);
        s_high += usize::from(s[0] & 0x80 != 0);
        let der = ecdsa_raw_to_der(&raw, Curve::P256).unwrap();
        let reference = p256::ecdsa::Signature::from_slice(&raw).unwrap();
        assert_eq!(der, reference.to_der().as_bytes());
        assert_eq!(p256::ecdsa::Signature::from_der(&der).unwrap(), reference);
        ring_key.verify(&input, &der).unwrap();
        if r_zero >= 2 && s_zero >= 2 && r_high > 0 && s_high > 0 {
            return;
        }
    }
    panic!("no leading-zero signatures seen: r {r_zero} s {s_zero}");
}

/// Hand-made `r`/`s` shapes: many leading zero bytes, the high bit right after zeros, the
/// smallest values, all zero. Each is byte-identical to the `ecdsa` crate's DER where that
/// crate accepts the value, and parses with its strict DER decoder.
#[test]
fn crafted_scalars_encode_as_the_ecdsa_crate_does() {
    let mut shapes: Vec<[u8; 32]> = Vec::new();
    for zeros in [0, 1, 2, 5, 31] {
        for lead in [0x01u8, 0x7f, 0x80, 0xff] {
            let mut value = [0x5au8; 32];
            value[..zeros].fill(0);
            value[zeros] = lead;
            if zeros == 0 && lead == 0xff {
                value[1] = 0; // stay below the group order
            }
            shapes.push(value);
        }
    }
    let mut one = [0u8; 32];
    one[31] = 1;
    shapes.push(one);
    for r in &shapes {
        for s in &shapes {
            let mut raw = r.to_vec();
            raw.extend(s);
            let der = ecdsa_raw_to_der(&raw, Curve::P256).unwrap();
            let reference = p256::ecdsa::Signature::from_slice(&raw).unwrap();
            assert_eq!(der, reference.to_der().as_bytes(), "{r:02x?} {s:02x?}");
            p256::ecdsa::DerSignature::from_bytes(&der).unwrap();
        }
    }
    // P-384 widths as well.
    let mut raw = vec![0u8; 96];
    raw[3] = 0x80;
    raw[47] = 1;
    raw[48] = 0x7f;
    raw[95] = 9;
    let der = ecdsa_raw_to_der(&raw, Curve::P384).unwrap();
    let reference = p384::ecdsa::Signature::from_slice(&raw).unwrap();
    assert_eq!(der, reference.to_der().as_bytes());

    // All zero: a well-formed DER of two zero INTEGERs, which no verifier accepts.
    let zero = ecdsa_raw_to_der(&[0; 64], Curve::P256).unwrap();
    assert_eq!(zero, [0x30, 6, 2, 1, 0, 2, 1, 0]);
    assert!(p256::ecdsa::DerSignature::from_bytes(&zero).is_ok());
    assert!(p256::ecdsa::Signature::from_der(&zero).is_err());
    let pair = ES256KeyPair::generate();
    let point = pair.public_key().public_key().to_bytes_uncompressed();
    let (input, _) = parts(&pair.sign(claims(0)).unwrap());
    assert!(
        UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_ASN1, &point)
            .verify(&input, &zero)
            .is_err()
    );
}

/// A high-S signature (s' = n − s, the other valid ECDSA answer) converts faithfully: ring
/// accepts it exactly as it accepts the original (ring, like BoringSSL, has no low-S rule).
#[test]
fn high_s_converts_faithfully() {
    let pair = ES256KeyPair::generate();
    let point = pair.public_key().public_key().to_bytes_uncompressed();
    let ring_key = UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_ASN1, &point);
    for i in 0..16 {
        let (input, raw) = parts(&pair.sign(claims(i)).unwrap());
        let signature = p256::ecdsa::Signature::from_slice(&raw).unwrap();
        let (r, s) = signature.split_scalars();
        let flipped = p256::ecdsa::Signature::from_scalars(r, -s).unwrap();
        let flipped_raw = flipped.to_bytes().to_vec();
        assert_ne!(flipped_raw, raw);
        let der = ecdsa_raw_to_der(&flipped_raw, Curve::P256).unwrap();
        assert_eq!(der, flipped.to_der().as_bytes());
        ring_key.verify(&input, &der).unwrap();
    }
}
