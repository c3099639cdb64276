//! The blob decoder: raw bytes (inflate included), and payloads deflated and wrapped in a valid
//! header and digest (so the fuzzer gets past inflate and the SHA-256 check into the postcard
//! decoder and the structure checks).
//! A blob that decodes always builds an engine and survives a re-encode.
#![no_main]

use claimgate_core::blob;
use claimgate_core::engine::Engine;
use claimgate_fuzz::fixture;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = blob::decode(data);
    let _ = blob::engine_from_plugin_config(data);
    // A header taken from a real blob (magic, version), then `data` deflated and its digest.
    let Ok((real, _)) = blob::encode(fixture().engine.policy()) else {
        return;
    };
    let deflated = miniz_oxide::deflate::compress_to_vec(data, 1);
    let mut wrapped = real.get(..6).unwrap_or_default().to_vec();
    wrapped.extend_from_slice(&sha256(&deflated));
    wrapped.extend_from_slice(&deflated);
    if let Ok((policy, digest)) = blob::decode(&wrapped) {
        // Semantic round trip: what decodes re-encodes to a blob that decodes to the same
        // policy. (Byte identity does not hold: postcard accepts over-long varints, so a few
        // hand-made blobs differ from the compiler's bytes; the digest names the bytes.)
        let (again, digest_again) =
            blob::encode(&policy).unwrap_or_else(|e| panic!("re-encode: {e}"));
        let (policy_again, _) = blob::decode(&again).unwrap_or_else(|e| panic!("re-decode: {e}"));
        assert_eq!(policy_again, policy, "decode(encode(p)) != p");
        assert!(digest_again.starts_with("sha256:") && digest.starts_with("sha256:"));
        assert!(
            Engine::new(policy, digest).is_ok(),
            "a decoded blob must build an engine"
        );
    }
});

fn sha256(data: &[u8]) -> [u8; 32] {
    let hex = blob::sha256_hex(data);
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    out
}
