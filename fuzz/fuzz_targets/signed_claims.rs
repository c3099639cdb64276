//! Arbitrary header and payload bytes, correctly signed with the HMAC issuer's secret: the
//! checks after the signature (claim types, times, audience, roles) never panic, and what
//! they accept respects the policy.
#![no_main]

use arbitrary::Arbitrary;
use claimgate_fuzz::{HS, NOW, fixture, hmac_token};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    header: &'a [u8],
    payload: &'a [u8],
    /// Use a well-formed `{"alg":"HS256"}` header instead of `header` (most inputs then
    /// reach the claim checks).
    plain_header: bool,
}

fuzz_target!(|input: Input<'_>| {
    let header: &[u8] = if input.plain_header {
        br#"{"alg":"HS256","typ":"JWT"}"#
    } else {
        input.header
    };
    let token = hmac_token(header, input.payload);
    let f = fixture();
    if let Ok(identity) = f.engine.authenticate(&token, NOW, &f.remote, &mut None) {
        let claims: serde_json::Value = serde_json::from_slice(input.payload)
            .unwrap_or_else(|e| panic!("accepted non-JSON: {e}"));
        assert_eq!(claims["iss"], HS, "accepted another issuer's claims");
        assert_eq!(identity.issuer, "hs");
        let exp = claims["exp"]
            .as_f64()
            .unwrap_or_else(|| panic!("accepted without exp: {claims}"));
        assert!(
            exp + 60.0 >= NOW as f64,
            "accepted an expired token: {claims}"
        );
    }
});
