//! Envoy's `verify_signature` foreign function (BoringSSL, registered in Envoy's
//! `source/extensions/common/wasm/foreign.cc`): its two messages from
//! `source/extensions/common/wasm/ext/verify_signature.proto` in protobuf wire format, written
//! and read by hand (a protobuf library would add far more to the `.wasm` than two messages
//! of four and two fields need).
//!
//! ```text
//! message VerifySignatureArguments {
//!   string hash_function = 1;  // "sha256", "sha384", "sha512"
//!   bytes public_key = 2;      // DER SubjectPublicKeyInfo
//!   bytes signature = 3;       // RSA: the signature; ECDSA: DER ECDSA-Sig-Value
//!   bytes text = 4;            // the signed bytes (hashed by the host)
//!   string public_key_pem = 5; // never sent: Envoy 1.36 ignores it
//! }
//! message VerifySignatureResult { bool result = 1; string error = 2; }
//! ```
//!
//! The answer is read strictly: anything that does not parse, or does not say plainly that
//! the signature verified or that it did not, is [`Verdict::Unable`]. Only a well-formed
//! `result: true` with no error is ever [`Verdict::Valid`].

/// The foreign function's name.
pub const FUNCTION: &str = "verify_signature";

/// How Envoy reports a signature check that ran and failed (BoringSSL's
/// `EVP_DigestVerify` said no), in 1.36 and 1.40 alike: `Failed to verify digest. Error
/// code: N`. Every other `false` (unknown hash, a key BoringSSL would not import: `Failed to
/// initialize digest verify.`) means the host could not check, not that the signature is
/// bad.
const BAD_SIGNATURE_ERROR: &[u8] = b"Failed to verify digest";

/// What the host said about one signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The signature verifies.
    Valid,
    /// The check ran and the signature does not verify.
    Invalid,
    /// The host did not check it (no such function, refused arguments, a key it could not
    /// use, an answer that does not read): someone else must decide.
    Unable,
}

/// The `VerifySignatureArguments` message.
pub fn encode_arguments(
    hash_function: &str,
    public_key_der: &[u8],
    signature: &[u8],
    text: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        hash_function.len() + public_key_der.len() + signature.len() + text.len() + 16,
    );
    for (field, value) in [
        (1u8, hash_function.as_bytes()),
        (2, public_key_der),
        (3, signature),
        (4, text),
    ] {
        // Length-delimited (wire type 2); proto3 leaves empty fields out.
        if !value.is_empty() {
            out.push(field << 3 | 2);
            push_varint(&mut out, value.len() as u64);
            out.extend_from_slice(value);
        }
    }
    out
}

/// A decoded `VerifySignatureResult`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyResult {
    /// `result` (proto3 default `false`).
    pub result: bool,
    /// `error` (proto3 default empty).
    pub error: Vec<u8>,
}

/// Reads a `VerifySignatureResult`; `None` when the bytes are not one (truncated, a known
/// field with the wrong wire type, a group, a varint longer than ten bytes). Unknown fields
/// are skipped, as protobuf does; a repeated field keeps its last value.
pub fn decode_result(mut bytes: &[u8]) -> Option<VerifyResult> {
    let mut out = VerifyResult::default();
    while !bytes.is_empty() {
        let key = take_varint(&mut bytes)?;
        let field = key >> 3;
        if field == 0 {
            return None;
        }
        match (field, key & 7) {
            (1, 0) => out.result = take_varint(&mut bytes)? != 0,
            (2, 2) => out.error = take_delimited(&mut bytes)?.to_vec(),
            (1 | 2, _) => return None,
            (_, 0) => {
                take_varint(&mut bytes)?;
            }
            (_, 1) => bytes = bytes.get(8..)?,
            (_, 2) => {
                take_delimited(&mut bytes)?;
            }
            (_, 5) => bytes = bytes.get(4..)?,
            _ => return None,
        }
    }
    Some(out)
}

/// What a foreign-function answer means (`None`: the host gave no answer bytes).
pub fn verdict(answer: Option<&[u8]>) -> Verdict {
    let Some(result) = answer.and_then(decode_result) else {
        return Verdict::Unable;
    };
    match result.result {
        true if result.error.is_empty() => Verdict::Valid,
        false if result.error.starts_with(BAD_SIGNATURE_ERROR) => Verdict::Invalid,
        _ => Verdict::Unable,
    }
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            // The tenth byte may only carry the top bit of a u64.
            if index == 9 && byte > 1 {
                return None;
            }
            *bytes = bytes.get(index + 1..)?;
            return Some(value);
        }
    }
    None
}

fn take_delimited<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(take_varint(bytes)?).ok()?;
    let (value, rest) = (bytes.get(..len)?, bytes.get(len..)?);
    *bytes = rest;
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_the_protobuf_encoding() {
        // Field keys 0x0a/0x12/0x1a/0x22 = fields 1..4, wire type 2.
        assert_eq!(
            encode_arguments("sha256", &[0x30, 0x01], &[9; 3], b"ab"),
            [
                0x0a, 6, b's', b'h', b'a', b'2', b'5', b'6', 0x12, 2, 0x30, 0x01, 0x1a, 3, 9, 9, 9,
                0x22, 2, b'a', b'b'
            ]
        );
        // Lengths of 128 and more take two varint bytes; empty fields are left out.
        let text = vec![7u8; 300];
        let encoded = encode_arguments("sha512", &[], &[], &text);
        assert_eq!(encoded.get(8..11), Some(&[0x22, 0xac, 0x02][..]));
        assert_eq!(encoded.len(), 8 + 3 + 300);
    }

    #[test]
    fn results_read_as_envoy_writes_them() {
        // result: true (error "" is not serialized).
        assert_eq!(verdict(Some(&[0x08, 0x01])), Verdict::Valid);
        // result: false, error: "Failed to verify digest. Error code: 0".
        let mut bad = vec![0x12, 38];
        bad.extend_from_slice(b"Failed to verify digest. Error code: 0");
        assert_eq!(
            decode_result(&bad),
            Some(VerifyResult {
                result: false,
                error: b"Failed to verify digest. Error code: 0".to_vec()
            })
        );
        assert_eq!(verdict(Some(&bad)), Verdict::Invalid);
        // The host could not check: key import or hash refused.
        let mut init = vec![0x12, 35];
        init.extend_from_slice(b"Failed to initialize digest verify.");
        assert_eq!(verdict(Some(&init)), Verdict::Unable);
        let mut hash = vec![0x12, 24];
        hash.extend_from_slice(b"sha3-256 is not supported.");
        assert_eq!(verdict(Some(&hash)), Verdict::Unable);
    }

    #[test]
    fn garbled_answers_are_never_valid() {
        for answer in [
            None,
            Some(&[][..]),                       // all defaults: false without a reason
            Some(&[0x08][..]),                   // truncated varint
            Some(&[0x08, 0x81][..]),             // unterminated varint
            Some(&[0x0a, 0x01, 0x01][..]),       // field 1 length-delimited
            Some(&[0x08, 0x01, 0x12, 0x05][..]), // error longer than the answer
            Some(&[0x08, 0x01, 0x12, 0x01, b'x'][..]), // true with an error: contradictory
            Some(&[0x00, 0x01][..]),             // field 0
            Some(&[0x08, 0x01, 0x1b][..]),       // a group
            Some(&[0x08, 0x01, 0x1e][..]),       // wire type 6
            Some(&[0x08, 0x01, 0x21, 1, 2, 3][..]), // truncated fixed64
            Some(
                &[
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ][..],
            ),
        ] {
            assert_eq!(verdict(answer), Verdict::Unable, "{answer:02x?}");
        }
        // A later `result: false` overrides an earlier true (last value wins).
        assert_eq!(verdict(Some(&[0x08, 0x01, 0x08, 0x00])), Verdict::Unable);
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // field 3 varint, field 4 fixed64, field 5 bytes, field 6 fixed32, then result: true.
        let answer = [
            0x18, 0x96, 0x01, 0x21, 1, 2, 3, 4, 5, 6, 7, 8, 0x2a, 2, b'h', b'i', 0x35, 1, 2, 3, 4,
            0x08, 0x01,
        ];
        assert_eq!(verdict(Some(&answer)), Verdict::Valid);
        // Any non-zero varint is true, as protobuf reads a bool.
        assert_eq!(verdict(Some(&[0x08, 0x02])), Verdict::Valid);
        // Largest varint is ten bytes.
        assert_eq!(
            decode_result(&[
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]),
            Some(VerifyResult::default())
        );
    }
}
