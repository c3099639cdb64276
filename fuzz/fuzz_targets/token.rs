//! Any text as a token: decoding and verification never panic, and a token that passes
//! verification here could only be one the fixture signed (the fuzzer cannot forge).
#![no_main]

use claimgate_core::token;
use claimgate_fuzz::{NOW, fixture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();
    let _ = token::decode(text);
    if let Ok(identity) = f.engine.authenticate(text, NOW, &f.remote, &mut None) {
        // Signed by a fixture key: only the HMAC issuer can be reached by mutation (the
        // fuzzer has no RSA or EC private key), and only with a correct tag.
        assert!(
            f.tokens.iter().any(|t| t == text) || identity.issuer == "hs",
            "accepted a token nobody signed: {text}"
        );
    }
});
