//! JWKS bodies as an IdP (or anyone between it and Envoy) could send them: parsing and key
//! preparation never panic.
#![no_main]

use claimgate_core::algorithm::ALL_ALGORITHMS;
use claimgate_core::keys::{KeySet, parse_jwks};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = parse_jwks(text) {
        let set = KeySet::prepare(&parsed.keys, &ALL_ALGORITHMS);
        let _ = set.len();
    }
});
