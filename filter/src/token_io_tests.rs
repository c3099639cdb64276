//! Token locations and claims headers on a scripted host (issue 10 items 2 and 3): what the
//! upstream receives, what is removed, and that no token or query reaches a log line.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{Value, json};

use super::*;
use crate::host::mock::{MockHost, capture_logs, logged};
use crate::root;
use crate::testing::{self, Key, NOW_MS, POLICY, ROOT};

/// The unit policy, its issuer reading a raw header, a `Token ` header, a query parameter and
/// a cookie, and sending claims upstream.
fn policy(extra_token: &str) -> String {
    POLICY
        .replace(
            "[issuers.idp]\n",
            &format!(
                "[token]\n{extra_token}headers = [\"authorization\", {{ name = \"x-token\", prefix = \"Token \" }}, {{ name = \"x-raw\", prefix = \"\" }}]\nquery = [\"access_token\"]\ncookies = [\"session\"]\n\n[issuers.idp]\n"
            ),
        )
        .replace(
            "roles      = [\"roles\"]\n",
            "roles      = [\"roles\"]\nclaims_to_headers = { \"x-tenant\" = \"tid\" }\npayload_to_header = \"x-jwt-payload\"\n",
        )
}

fn ready(policy: &str, key: &Key) -> (MockHost, Rc<RefCell<Shared>>) {
    let host = MockHost::new(NOW_MS);
    let shared = testing::configured(&host, policy);
    let first = host.callouts();
    let body = testing::jwks(&[key]);
    host.enter(ROOT);
    host.answer(Some("200"), body.as_bytes());
    root::on_answer(&host, &shared, first[0].token, body.len());
    (host, shared)
}

fn request(path: &str, headers: &[(&str, &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = testing::request(path, None);
    out.extend(
        headers
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec())),
    );
    out
}

fn token(key: &Key, extra: &[(&str, Value)]) -> String {
    key.mint(&testing::claims(extra))
}

fn error_of(host: &MockHost, context: u32) -> (u32, String) {
    let reply = host
        .replies()
        .into_iter()
        .rev()
        .find(|r| r.context == context)
        .unwrap();
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    (reply.status, body["error"].as_str().unwrap().to_owned())
}

#[test]
fn tokens_are_read_from_every_location_the_policy_names() {
    capture_logs();
    let key = Key::new("k1");
    let (host, shared) = ready(&policy(""), &key);
    let t = token(&key, &[]);
    type Case<'a> = (String, Vec<(&'a str, Vec<u8>)>);
    let cases: Vec<Case<'_>> = vec![
        (
            "/score".into(),
            vec![("x-token", format!("Token {t}").into_bytes())],
        ),
        ("/score".into(), vec![("x-raw", t.clone().into_bytes())]),
        (format!("/score?a=1&access_token={t}"), vec![]),
        (
            "/score".into(),
            vec![("cookie", format!("theme=dark; session={t}").into_bytes())],
        ),
    ];
    for (context, (path, headers)) in (2u32..).zip(&cases) {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        assert_eq!(
            testing::run(&host, &shared, context, &request(path, &headers)),
            Verdict::Continue,
            "{path} {headers:?}"
        );
        assert_eq!(
            host.header(context, "x-claimgate-subject").unwrap(),
            b"alice"
        );
    }
    // Never the token, never the query, in any log line.
    for (_, line) in logged() {
        assert!(!line.contains(t.rsplit('.').next().unwrap()), "{line}");
        assert!(!line.contains("access_token"), "{line}");
    }
}

#[test]
fn two_different_tokens_are_refused_as_ambiguous() {
    let key = Key::new("k1");
    let (host, shared) = ready(&policy(""), &key);
    let t = token(&key, &[]);
    let other = token(&key, &[("sub", json!("bob"))]);
    let raw = other.clone().into_bytes();
    let path = format!("/score?access_token={t}");
    testing::run(&host, &shared, 2, &request(&path, &[("x-raw", &raw)]));
    assert_eq!(error_of(&host, 2), (401, "malformed_token".to_owned()));
}

/// A token header whose value is not UTF-8 is a malformed token whatever its prefix: read
/// as `Bearer \u{FFFD}` before, a `Token ` header's bad value was no token at all (and a
/// public path passed it anonymously).
#[test]
fn a_non_utf8_value_of_a_prefixed_token_header_is_malformed() {
    let key = Key::new("k1");
    let (host, shared) = ready(&policy(""), &key);
    testing::run(
        &host,
        &shared,
        2,
        &request("/score", &[("x-token", b"Token \xff.a.b")]),
    );
    assert_eq!(error_of(&host, 2), (401, "malformed_token".to_owned()));
    testing::run(
        &host,
        &shared,
        3,
        &request("/score", &[("x-token", b"\xffToken a.b.c")]),
    );
    assert_eq!(error_of(&host, 3), (401, "malformed_token".to_owned()));
}

#[test]
fn claims_headers_are_set_and_client_copies_always_removed() {
    let key = Key::new("k1");
    let (host, shared) = ready(&policy(""), &key);
    let spoof: [(&str, &[u8]); 3] = [
        ("x-tenant", b"evil"),
        ("X_Tenant", b"evil"),
        ("x-jwt-payload", b"evil"),
    ];
    // A token with the claim: set from it, copies gone.
    let t = token(&key, &[("tid", json!("t-1 \u{e9}"))]);
    let raw = t.clone().into_bytes();
    let mut headers = spoof.to_vec();
    headers.push(("x-raw", &raw));
    assert_eq!(
        testing::run(&host, &shared, 2, &request("/score", &headers)),
        Verdict::Continue
    );
    assert_eq!(host.header(2, "x-tenant").unwrap(), b"t-1%20%C3%A9");
    assert_eq!(host.header(2, "X_Tenant"), None);
    assert_eq!(
        host.header(2, "x-jwt-payload").unwrap(),
        t.split('.').nth(1).unwrap().as_bytes()
    );
    // A token without the claim: no value, and still no client copy.
    let t = token(&key, &[]);
    let raw = t.clone().into_bytes();
    let mut headers = spoof.to_vec();
    headers.push(("x-raw", &raw));
    assert_eq!(
        testing::run(&host, &shared, 3, &request("/score", &headers)),
        Verdict::Continue
    );
    assert_eq!(host.header(3, "x-tenant"), None);
    assert_eq!(host.header(3, "X_Tenant"), None);
    assert_ne!(host.header(3, "x-jwt-payload").unwrap(), b"evil");
    // A public path without a token.
    assert_eq!(
        testing::run(&host, &shared, 4, &request("/health", &spoof)),
        Verdict::Continue
    );
    for (name, _) in spoof {
        assert_eq!(host.header(4, name), None, "{name}");
    }
}

#[test]
fn in_audit_mode_a_denied_request_passes_without_claims_and_without_client_copies() {
    let key = Key::new("k1");
    let audited = policy("").replace("name = \"unit\"\n", "name = \"unit\"\nmode = \"audit\"\n");
    let (host, shared) = ready(&audited, &key);
    let t = token(&key, &[("tid", json!("t-1")), ("roles", json!([]))]);
    let raw = t.into_bytes();
    let headers: [(&str, &[u8]); 2] = [("x-tenant", b"evil"), ("x-raw", &raw)];
    assert_eq!(
        testing::run(&host, &shared, 2, &request("/score", &headers)),
        Verdict::Continue
    );
    assert_eq!(host.header(2, "x-tenant"), None);
    assert_eq!(host.header(2, "x-jwt-payload"), None);
}

#[test]
fn forward_false_removes_the_token_from_its_header_and_cookie() {
    let key = Key::new("k1");
    let (host, shared) = ready(&policy("forward = false\n"), &key);
    let t = token(&key, &[]);
    let cookie = format!("theme=dark; session={t}; lang=en").into_bytes();
    assert_eq!(
        testing::run(
            &host,
            &shared,
            2,
            &request("/score", &[("cookie", &cookie)])
        ),
        Verdict::Continue
    );
    assert_eq!(host.header(2, "cookie").unwrap(), b"theme=dark; lang=en");
    // Only the token cookie: the header goes.
    let cookie = format!("session={t}").into_bytes();
    testing::run(
        &host,
        &shared,
        3,
        &request("/score", &[("cookie", &cookie)]),
    );
    assert_eq!(host.header(3, "cookie"), None);
    let value = format!("Token {t}").into_bytes();
    assert_eq!(
        testing::run(
            &host,
            &shared,
            4,
            &request("/score", &[("x-token", &value)])
        ),
        Verdict::Continue
    );
    assert_eq!(host.header(4, "x-token"), None);
    // Cookies without a token are left as they are.
    testing::run(
        &host,
        &shared,
        5,
        &request("/health", &[("cookie", b"a=1;b=2")]),
    );
    assert_eq!(host.header(5, "cookie").unwrap(), b"a=1;b=2");
}

/// `explain` lists the headers the filter removes with `Engine::removed_upstream`; the filter
/// removes them on its own path. On requests that pass, the request headers gone after the
/// filter ran are exactly the ones that function names (spoofed identity and claim headers in
/// any spelling, and with `forward = false` the token's header).
#[test]
fn the_filter_removes_exactly_what_explain_says() {
    let key = Key::new("k1");
    for extra in [
        "identity_headers = [\"subject\"]\n",
        "identity_headers = []\nforward = false\n",
    ] {
        let (host, shared) = ready(&policy(extra), &key);
        let engine = shared.borrow().engine.clone();
        let t = token(&key, &[("tid", json!("t-1"))]);
        let value = format!("Token {t}").into_bytes();
        let headers: [(&str, &[u8]); 6] = [
            ("x_token", &value),
            ("x-claimgate-rule", b"admin"),
            ("X-Claimgate-Issuer", b"other"),
            ("x_claimgate_roles", b"ml-admin"),
            ("x-tenant", b"evil"),
            ("x-kept", b"1"),
        ];
        let sent = request("/score", &headers);
        assert_eq!(testing::run(&host, &shared, 2, &sent), Verdict::Continue);
        let gone: Vec<&[u8]> = sent
            .iter()
            .map(|(name, _)| name.as_slice())
            .filter(|name| {
                let name = std::str::from_utf8(name).unwrap();
                host.header(2, name).is_none()
            })
            .collect();
        let said = engine.removed_upstream(sent.iter().map(|(name, _)| name.as_slice()));
        // The filter sets x-tenant from the token after removing the client's copy.
        let said: Vec<&[u8]> = said.into_iter().filter(|n| *n != b"x-tenant").collect();
        assert_eq!(gone, said, "{extra}");
        // `x_token`: the engine reads a token there as from `x-token` (review finding: with
        // `forward = false` it still reached the upstream).
        let kept_back = extra.contains("forward = false");
        assert_eq!(host.header(2, "x_token").is_none(), kept_back, "{extra}");
        assert!(
            !said.is_empty() && !said.contains(&&b"x-kept"[..]),
            "{extra}"
        );
    }
}

/// Review finding: a token header value that is not UTF-8 is a malformed token, never "no
/// token"; `x_token` (read as `x-token`) was taken for no token and passed a public path.
#[test]
fn a_token_header_that_is_not_utf8_is_malformed_in_every_spelling() {
    let key = Key::new("k1");
    let (host, shared) = ready(&policy(""), &key);
    for (context, name) in [(2, "x-token"), (3, "x_token"), (4, "X_Token")] {
        let sent = request("/health", &[(name, b"\xff")]);
        assert_eq!(
            testing::run(&host, &shared, context, &sent),
            Verdict::Replied,
            "{name}"
        );
        assert_eq!(
            error_of(&host, context),
            (401, "malformed_token".to_owned()),
            "{name}"
        );
    }
}
