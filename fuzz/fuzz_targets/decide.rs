//! Whole requests (method, host, path, headers, a token from the fixture or arbitrary text):
//! the decision never panics, tracing (as `explain` does) never changes it, and structural
//! promises hold (an unnormalised path is never allowed; a signed token is never echoed in a
//! reason).
#![no_main]

use arbitrary::Arbitrary;
use claimgate_core::engine::Request;
use claimgate_fuzz::{NOW, fixture};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    method: String,
    host: String,
    path: String,
    headers: Vec<(String, String)>,
    /// Index into the fixture's tokens; out of range: `raw_token` (if any) is sent.
    token: u8,
    raw_token: Option<String>,
    /// `Authorization` value prefix: `Bearer `, `bearer `, `Bearer  `, none.
    scheme: u8,
}

fuzz_target!(|input: Input| {
    let f = fixture();
    let mut headers = input.headers;
    let token = f
        .tokens
        .get(usize::from(input.token))
        .cloned()
        .or(input.raw_token);
    if let Some(token) = &token {
        let scheme =
            ["Bearer ", "bearer ", "Bearer  ", "BEARER\t", ""][usize::from(input.scheme % 5)];
        headers.push(("authorization".to_owned(), format!("{scheme}{token}")));
    }
    let request = Request {
        method: &input.method,
        host: &input.host,
        path: &input.path,
        headers: &headers,
    };
    let plain = f.engine.decide(&request, NOW, &f.remote, None);
    let mut checks = Vec::new();
    let traced = f.engine.decide(&request, NOW, &f.remote, Some(&mut checks));
    assert_eq!(
        plain.status(),
        traced.status(),
        "tracing changed the decision"
    );
    assert_eq!(plain.reason, traced.reason, "tracing changed the reason");
    assert_eq!(plain.allowed, traced.allowed);
    let status = plain.status();
    assert!(
        status == 200 || (400..=503).contains(&status),
        "status {status}"
    );
    let path = input.path.split(['?', '#']).next().unwrap_or_default();
    if path.split('/').any(|s| s == ".." || s == ".") || path.contains("//") {
        assert!(!plain.allowed, "unnormalised path allowed: {path:?}");
    }
    // A real token (one the fixture signed) is never echoed in a reason. (Arbitrary text can
    // be: the fuzzer soon sends a reason's own words as the "token".)
    if let (Some(token), Some(reason)) = (&token, &plain.reason) {
        if f.tokens.contains(token) {
            let text = format!("{reason} {reason:?}");
            assert!(
                !text.contains(token.as_str()),
                "the token is echoed in the reason"
            );
        }
    }
});
