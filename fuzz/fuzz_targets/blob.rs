//! The blob decoder: raw bytes, and payloads wrapped in a valid header and digest (so the
//! fuzzer gets past the SHA-256 check into the postcard decoder and the structure checks).
//! A blob that decodes always builds an engine, and re-encodes to the same blob.
#![no_main]

use claimgate_core::blob;
use claimgate_core::engine::Engine;
use claimgate_fuzz::fixture;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = blob::decode(data);
    let _ = blob::engine_from_plugin_config(data);
    // A header taken from a real blob (magic, version), then the digest of `data`.
    let Ok((real, _)) = blob::encode(fixture().engine.policy()) else {
        return;
    };
    let mut wrapped = real.get(..6).unwrap_or_default().to_vec();
    wrapped.extend_from_slice(&sha256(data));
    wrapped.extend_from_slice(data);
    if let Ok((policy, digest)) = blob::decode(&wrapped) {
        let (again, digest_again) =
            blob::encode(&policy).unwrap_or_else(|e| panic!("re-encode: {e}"));
        assert_eq!(digest, digest_again);
        assert_eq!(again, wrapped, "decode∘encode is not the identity");
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
