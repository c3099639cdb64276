//! The request path on a scripted host: hostile header bytes, failing host calls, a clock
//! that cannot be read, keys that arrive late or never, clients that hang up.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{Value, json};

use super::*;
use crate::hold::MAX_HELD;
use crate::host::mock::{MockHost, capture_logs, logged};
use crate::jwks::{DEADLINE_MARGIN_MS, REFETCH_MIN_INTERVAL_MS, TICK_MS};
use crate::metrics::{counter_name, denied_name};
use crate::root;
use crate::testing::{self, Key, NOW_MS, POLICY, ROOT};

use testing::run;

/// Delivers the answer to callout `token` to the root.
fn deliver(
    host: &MockHost,
    shared: &RefCell<Shared>,
    token: u32,
    status: Option<&str>,
    body: &str,
) {
    host.enter(ROOT);
    host.answer(status, body.as_bytes());
    root::on_answer(host, shared, token, body.len());
}

/// A root whose first fetch installed `key`.
fn ready(key: &Key) -> (MockHost, Rc<RefCell<Shared>>) {
    ready_with(POLICY, &[key])
}

/// A root whose first fetch is under way, and request 2 (a valid token for `/score`) held
/// until it answers.
fn held_before_the_first_keys() -> (MockHost, Rc<RefCell<Shared>>, Key) {
    let host = MockHost::new(NOW_MS);
    let shared = testing::configured(&host, POLICY);
    let key = Key::new("k1");
    let t = token(&key, &[]);
    assert_eq!(
        run(&host, &shared, 2, &testing::request("/score", Some(&t))),
        Verdict::Held
    );
    (host, shared, key)
}

/// A root for `policy` whose first fetch installed `keys`.
fn ready_with(policy: &str, keys: &[&Key]) -> (MockHost, Rc<RefCell<Shared>>) {
    let host = MockHost::new(NOW_MS);
    let shared = testing::configured(&host, policy);
    let first = host.callouts();
    assert_eq!(first.len(), 1);
    deliver(
        &host,
        &shared,
        first[0].token,
        Some("200"),
        &testing::jwks(keys),
    );
    (host, shared)
}

fn token(key: &Key, extra: &[(&str, Value)]) -> String {
    key.mint(&testing::claims(extra))
}

/// The unit POLICY with `head` (top-level keys, then tables) after its name.
fn policy_with(head: &str) -> String {
    let policy = POLICY.replacen("name = \"unit\"", &format!("name = \"unit\"\n{head}"), 1);
    assert_ne!(policy, POLICY);
    policy
}

/// Under `policy` (its issuer keyed with `key`), a valid token for `/score` is sent once to
/// be cached, then again as request 3 with `extra` headers: the host and request 3's host
/// calls.
fn warm_request_calls(
    policy: &str,
    key: &Key,
    extra: &[(&[u8], &[u8])],
) -> (MockHost, Rc<RefCell<Shared>>, Vec<&'static str>) {
    let (host, shared) = ready_with(policy, &[key]);
    let mut request = testing::request("/score", Some(&token(key, &[])));
    assert_eq!(run(&host, &shared, 2, &request), Verdict::Continue);
    host.state.borrow_mut().calls.clear();
    request.extend(extra.iter().map(|(n, v)| (n.to_vec(), v.to_vec())));
    assert_eq!(run(&host, &shared, 3, &request), Verdict::Continue);
    let calls = host.state.borrow().calls.clone();
    (host, shared, calls)
}

fn error_of(host: &MockHost, context: u32) -> (u32, String) {
    let reply = host
        .replies()
        .into_iter()
        .rev()
        .find(|r| r.context == context)
        .expect("a reply");
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    (reply.status, body["error"].as_str().unwrap().to_owned())
}

#[test]
fn a_valid_token_passes_with_encoded_identity_headers() {
    let key = Key::new("k1");
    let (host, shared) = ready(&key);
    let t = token(
        &key,
        &[
            ("sub", json!("bob\r\nx-admin: 1")),
            ("roles", json!(["ml-scorer", "viewer,ml-admin"])),
        ],
    );
    assert_eq!(
        run(&host, &shared, 2, &testing::request("/score", Some(&t))),
        Verdict::Continue
    );
    assert_eq!(
        host.header(2, "x-claimgate-subject").unwrap(),
        b"bob%0D%0Ax-admin:%201"
    );
    assert_eq!(
        host.header(2, "x-claimgate-roles").unwrap(),
        b"ml-scorer,viewer%2Cml-admin"
    );
    assert_eq!(host.metric(counter_name(Counter::Allowed)), Some(1));
}

/// The host calls every warm allowed request starts with: the clock, the headers (one map),
/// and its two counters.
const WARM_ALLOWED_START: [&str; 4] = [
    "now_ms",
    "request_headers",
    "increment_metric", // token_cache_hit_total
    "increment_metric", // allowed_total
];

/// A request whose token is cached makes exactly these host calls, each of which crosses the
/// Wasm boundary in Envoy (≈ 1–3 µs apiece): the clock, the headers (one map), two counters,
/// the identity headers the policy sets, and the filter state. A change that adds one fails
/// here; one that removes one updates this list.
#[test]
fn a_warm_request_makes_only_the_host_calls_it_needs() {
    let (host, _, calls) = warm_request_calls(POLICY, &Key::new("k1"), &[]);
    assert_eq!(host.metric(counter_name(Counter::CacheHit)), Some(1));
    assert_eq!(
        calls,
        [
            &WARM_ALLOWED_START[..],
            &[
                "set_request_header", // subject
                "set_request_header", // issuer
                "set_request_header", // roles
                "set_request_header", // rule
                "set_request_header", // policy-version
                "set_property",       // decision
                "set_property",       // rule
                "set_property",       // subject
                "set_property",       // issuer
            ]
        ]
        .concat()
    );
}

/// `filter_state = "none"`: a mesh whose access log does not read the decision does not pay
/// for writing it (four host calls of a warm request); nothing else changes.
#[test]
fn without_filter_state_no_decision_is_written_and_nothing_else_changes() {
    let key = Key::new("k1");
    let policy = policy_with("filter_state = \"none\"");
    let (host, shared, calls) = warm_request_calls(&policy, &key, &[]);
    assert_eq!(calls.len(), 9, "{calls:?}");
    assert!(calls.iter().all(|c| *c != "set_property"), "{calls:?}");
    assert!(host.header(3, "x-claimgate-subject").is_some());
    // Denials: the same reply and counters, no filter state.
    let denied = token(&key, &[("roles", json!(["reader"]))]);
    assert_eq!(
        run(
            &host,
            &shared,
            4,
            &testing::request("/score", Some(&denied))
        ),
        Verdict::Replied
    );
    assert_eq!(error_of(&host, 4), (403, "missing_role".to_owned()));
    assert!(
        host.state
            .borrow()
            .calls
            .iter()
            .all(|c| *c != "set_property")
    );
    assert!(host.state.borrow().properties.is_empty());
}

#[test]
fn non_utf8_header_values_never_trap_never_match_never_get_copied() {
    capture_logs();
    let key = Key::new("k1");
    let (host, shared) = ready(&key);
    // The byte that trapped the VM through the SDK's get_map (defect 2).
    let mut headers = testing::request("/health", None);
    headers.push((b"user-agent".to_vec(), vec![0xa1]));
    assert_eq!(run(&host, &shared, 2, &headers), Verdict::Continue);

    // A rule on `deployment = "blue"` never matches a value that only becomes "blue" lossily.
    let mut headers = testing::request("/blue", None);
    headers.push((b"deployment".to_vec(), b"blu\xe9".to_vec()));
    headers.push((b"x-request-id".to_vec(), b"id-\xff\xfe".to_vec()));
    assert_eq!(run(&host, &shared, 3, &headers), Verdict::Replied);
    assert_eq!(error_of(&host, 3), (403, "no_rule".to_owned()));
    // The request id was not UTF-8: neither the reply nor the audit line carries it.
    let reply = host.replies().pop().unwrap();
    assert!(reply.body.contains(r#""request_id":"""#), "{}", reply.body);
    assert!(!reply.body.contains('\u{FFFD}'));
    assert!(logged().iter().all(|(_, line)| !line.contains('\u{FFFD}')));
}

#[test]
fn a_non_utf8_token_header_is_a_malformed_token() {
    let key = Key::new("k1");
    let (host, shared) = ready(&key);
    let mut headers = testing::request("/score", None);
    headers.push((
        b"authorization".to_vec(),
        b"Bearer \xffabc.def.ghi".to_vec(),
    ));
    assert_eq!(run(&host, &shared, 2, &headers), Verdict::Replied);
    assert_eq!(error_of(&host, 2), (401, "malformed_token".to_owned()));
}

/// `identity_headers` with `filter_state = "none"`: a warm allowed request sets only the
/// header named (5 host calls instead of 13), and client-sent copies of the headers it no
/// longer sets are still removed.
#[test]
fn only_the_named_identity_headers_are_set_and_the_others_still_removed() {
    let key = Key::new("k1");
    let policy = policy_with("filter_state = \"none\"\n[token]\nidentity_headers = [\"subject\"]");
    let spoofed: [(&[u8], &[u8]); 2] = [
        (b"x-claimgate-rule", b"admin-only"),
        (b"X-Claimgate-Policy-Version", b"sha256:0"),
    ];
    let (host, _, calls) = warm_request_calls(&policy, &key, &spoofed);
    assert_eq!(
        calls,
        [
            &WARM_ALLOWED_START[..],
            &[
                "remove_request_header", // x-claimgate-rule, sent by the client
                "remove_request_header", // X-Claimgate-Policy-Version, sent by the client
                "set_request_header",    // subject
            ],
        ]
        .concat()
    );
    assert!(host.header(3, "x-claimgate-subject").is_some());
    for name in [
        "x-claimgate-rule",
        "X-Claimgate-Policy-Version",
        "x-claimgate-roles",
        "x-claimgate-issuer",
    ] {
        assert_eq!(host.header(3, name), None, "{name}");
    }
}

#[test]
fn spoofed_identity_headers_are_never_seen_by_rules_and_removed() {
    let key = Key::new("k1");
    let (host, shared) = ready(&key);
    let mut headers = testing::request("/health", None);
    headers.push((b"x-claimgate-subject".to_vec(), b"root".to_vec()));
    headers.push((b"X-Claimgate-Roles".to_vec(), b"ml-admin".to_vec()));
    // Attacker pass 2 (real Envoy): WSGI-style upstreams read `_` as `-`.
    headers.push((b"x_claimgate_subject".to_vec(), b"admin".to_vec()));
    headers.push((b"X_ClaimGate-Client".to_vec(), b"admin".to_vec()));
    assert_eq!(run(&host, &shared, 2, &headers), Verdict::Continue);
    for name in [
        "x-claimgate-subject",
        "X-Claimgate-Roles",
        "x_claimgate_subject",
        "X_ClaimGate-Client",
    ] {
        assert_eq!(host.header(2, name), None, "{name}");
    }
}

#[test]
fn an_unreadable_or_unbelievable_clock_fails_closed() {
    let key = Key::new("k1");
    let (host, shared) = ready(&key);
    let t = token(&key, &[]);
    for clock in [None, Some(0)] {
        host.set_now(clock);
        assert_eq!(
            run(&host, &shared, 2, &testing::request("/score", Some(&t))),
            Verdict::Replied
        );
        assert_eq!(error_of(&host, 2), (503, "clock_unavailable".to_owned()));
    }
    assert_eq!(host.metric(&denied_name("clock_unavailable")), Some(2));
    // Even an expired token would have passed with `now = 0`; a public path is refused too.
    assert_eq!(
        run(&host, &shared, 3, &testing::request("/health", None)),
        Verdict::Replied
    );
}

#[test]
fn failing_host_calls_fail_closed() {
    let key = Key::new("k1");
    let t = token(&key, &[]);
    for call in [
        "request_headers",
        "set_request_header",
        "remove_request_header",
    ] {
        let (host, shared) = ready(&key);
        host.state.borrow_mut().failing.insert(call);
        let mut headers = testing::request("/score", Some(&t));
        headers.push((b"x-claimgate-subject".to_vec(), b"root".to_vec()));
        assert_eq!(run(&host, &shared, 2, &headers), Verdict::Replied, "{call}");
        assert_eq!(
            error_of(&host, 2),
            (500, "filter_error".to_owned()),
            "{call}"
        );
    }
    // Not even a reply can be sent: the stream is reset, never continued.
    let (host, shared) = ready(&key);
    host.state.borrow_mut().failing.insert("send_reply");
    assert_eq!(
        run(&host, &shared, 2, &testing::request("/score", None)),
        Verdict::Replied
    );
    assert_eq!(host.state.borrow().resets, vec![2]);
    // Metrics and properties are best effort: their failure changes nothing.
    let (host, shared) = ready(&key);
    host.state
        .borrow_mut()
        .failing
        .extend(["set_property", "increment_metric"]);
    assert_eq!(
        run(&host, &shared, 2, &testing::request("/score", Some(&t))),
        Verdict::Continue
    );
}

#[test]
fn held_for_the_first_keys_then_released() {
    let (host, shared, key) = held_before_the_first_keys();
    let first = host.callouts()[0].clone();
    assert_eq!(first.context, ROOT);
    assert_eq!(
        (first.cluster.as_str(), first.path.as_str()),
        ("jwks", "/keys")
    );
    deliver(
        &host,
        &shared,
        first.token,
        Some("200"),
        &testing::jwks(&[&key]),
    );
    assert_eq!(host.state.borrow().resumed, vec![2]);
    assert!(host.header(2, "x-claimgate-subject").is_some());
    assert_eq!(
        host.state.borrow().effective,
        ROOT,
        "the root is effective again"
    );
}

#[test]
fn held_until_the_fetch_deadline_when_keys_never_come() {
    let (host, shared, _) = held_before_the_first_keys();
    let deadline = NOW_MS + host.callouts()[0].timeout_ms + DEADLINE_MARGIN_MS;
    host.set_now(Some(deadline));
    host.enter(ROOT);
    root::tick(&host, &shared);
    assert!(host.replies().is_empty());
    host.set_now(Some(deadline + 1));
    host.enter(ROOT);
    root::tick(&host, &shared);
    assert_eq!(error_of(&host, 2), (503, "keys_unavailable".to_owned()));
}

#[test]
fn held_past_the_hold_limit_fails_closed() {
    let key = Key::new("k1");
    let host = MockHost::new(NOW_MS);
    // A callout timeout longer than the hold limit: the hold limit answers first.
    let shared = testing::configured(
        &host,
        &POLICY.replace(r#"timeout = "5s""#, r#"timeout = "30s""#),
    );
    let t = token(&key, &[]);
    assert_eq!(
        run(&host, &shared, 2, &testing::request("/score", Some(&t))),
        Verdict::Held
    );
    host.set_now(Some(NOW_MS + HOLD_MAX_MS - 1));
    host.enter(ROOT);
    root::tick(&host, &shared);
    assert!(host.replies().is_empty());
    host.set_now(Some(NOW_MS + HOLD_MAX_MS));
    host.enter(ROOT);
    root::tick(&host, &shared);
    assert_eq!(error_of(&host, 2), (503, "keys_unavailable".to_owned()));
    assert_eq!(host.metric(counter_name(Counter::HoldExpired)), Some(1));
}

#[test]
fn the_hold_queue_is_bounded() {
    let key = Key::new("k1");
    let host = MockHost::new(NOW_MS);
    let shared = testing::configured(&host, POLICY);
    let t = token(&key, &[]);
    for context in 0..MAX_HELD as u32 {
        assert_eq!(
            run(
                &host,
                &shared,
                10 + context,
                &testing::request("/score", Some(&t))
            ),
            Verdict::Held
        );
    }
    let last = 10 + MAX_HELD as u32;
    assert_eq!(
        run(&host, &shared, last, &testing::request("/score", Some(&t))),
        Verdict::Replied
    );
    assert_eq!(error_of(&host, last), (503, "keys_unavailable".to_owned()));
}

/// Defect 3: a client that hangs up during an unknown-`kid` refetch must not freeze refresh.
/// The request only asks; the root dispatches (so the answer comes to the root), and a
/// callout whose answer never comes is reclaimed at its deadline.
#[test]
fn a_client_hanging_up_during_a_refetch_does_not_freeze_refresh() {
    let k1 = Key::new("k1");
    let k2 = Key::new("k2");
    let (host, shared) = ready(&k1);
    let dispatched = host.callouts().len();
    let t2 = token(&k2, &[]);
    let at = NOW_MS + REFETCH_MIN_INTERVAL_MS;
    host.set_now(Some(at));
    assert_eq!(
        run(&host, &shared, 2, &testing::request("/score", Some(&t2))),
        Verdict::Held
    );
    assert_eq!(
        host.callouts().len(),
        dispatched,
        "a request never dispatches"
    );
    assert_eq!(host.state.borrow().tick_period_ms, Some(FAST_TICK_MS));
    host.hang_up(2);
    forget(&shared, 2);
    host.enter(ROOT);
    root::tick(&host, &shared);
    let refetch = host.callouts().last().unwrap().clone();
    assert_eq!(refetch.context, ROOT, "dispatched by the root");
    assert_eq!(
        host.state.borrow().tick_period_ms,
        Some(TICK_MS),
        "tick restored"
    );
    deliver(
        &host,
        &shared,
        refetch.token,
        Some("200"),
        &testing::jwks(&[&k1, &k2]),
    );
    // The new key verifies right away.
    assert_eq!(
        run(&host, &shared, 3, &testing::request("/score", Some(&t2))),
        Verdict::Continue
    );
}

#[test]
fn a_refetch_answer_that_never_comes_is_reclaimed() {
    let k1 = Key::new("k1");
    let k2 = Key::new("k2");
    let k3 = Key::new("k3");
    let (host, shared) = ready(&k1);
    let mut now = NOW_MS + REFETCH_MIN_INTERVAL_MS;
    host.set_now(Some(now));
    assert_eq!(
        run(
            &host,
            &shared,
            2,
            &testing::request("/score", Some(&token(&k2, &[])))
        ),
        Verdict::Held
    );
    host.enter(ROOT);
    root::tick(&host, &shared);
    let lost = host.callouts().last().unwrap().clone();
    // The answer never comes. Past the deadline the fetch is reclaimed and the held request
    // decided with the keys at hand.
    now += lost.timeout_ms + DEADLINE_MARGIN_MS + 1;
    host.set_now(Some(now));
    host.enter(ROOT);
    root::tick(&host, &shared);
    assert_eq!(error_of(&host, 2), (401, "unknown_key".to_owned()));
    assert_eq!(
        host.metric(counter_name(Counter::JwksFetchFailure)),
        Some(1)
    );
    // Refresh is alive: after the backoff and the refetch interval, another unknown kid
    // gets a fetch, whose answer is used.
    now += REFETCH_MIN_INTERVAL_MS;
    host.set_now(Some(now));
    let t3 = token(&k3, &[]);
    assert_eq!(
        run(&host, &shared, 3, &testing::request("/score", Some(&t3))),
        Verdict::Held
    );
    host.enter(ROOT);
    root::tick(&host, &shared);
    let next = host.callouts().last().unwrap().clone();
    assert_ne!(next.token, lost.token);
    deliver(
        &host,
        &shared,
        next.token,
        Some("200"),
        &testing::jwks(&[&k1, &k3]),
    );
    assert_eq!(host.state.borrow().resumed, vec![3]);
    // The lost call's late answer is ignored.
    deliver(
        &host,
        &shared,
        lost.token,
        Some("200"),
        &testing::jwks(&[&k1]),
    );
    assert_eq!(
        run(&host, &shared, 4, &testing::request("/score", Some(&t3))),
        Verdict::Continue
    );
}

#[test]
fn the_regular_refresh_survives_a_lost_answer() {
    let k1 = Key::new("k1");
    let host = MockHost::new(NOW_MS);
    let _shared = testing::configured(&host, POLICY);
    let shared = _shared;
    let first = host.callouts()[0].clone();
    // Never answered: at each tick past the deadline plus backoff, a new fetch starts.
    let mut now = NOW_MS;
    for _ in 0..20 {
        now += 1_000;
        host.set_now(Some(now));
        host.enter(ROOT);
        root::tick(&host, &shared);
    }
    let callouts = host.callouts();
    assert!(callouts.len() >= 3, "{callouts:?}");
    assert!(callouts.iter().all(|c| c.context == ROOT));
    deliver(
        &host,
        &shared,
        callouts.last().unwrap().token,
        Some("200"),
        &testing::jwks(&[&k1]),
    );
    assert_ne!(callouts.last().unwrap().token, first.token);
    assert_eq!(
        host.metric(counter_name(Counter::JwksFetchSuccess)),
        Some(1)
    );
    // The answer came at the last tick's clock: the key set gauge says when.
    assert_eq!(
        host.metric(&crate::metrics::keys_fetched_name("idp")),
        Some(now / 1000)
    );
}

#[test]
fn a_failing_dispatch_backs_off() {
    let host = MockHost::new(NOW_MS).failing("dispatch_http_call");
    let shared = testing::configured(&host, POLICY);
    assert_eq!(
        host.metric(counter_name(Counter::JwksFetchFailure)),
        Some(1)
    );
    // Backoff 1 s, 2 s, 4 s: in 7.5 s, three more attempts, not seven.
    let mut now = NOW_MS;
    for _ in 0..15 {
        now += 500;
        host.set_now(Some(now));
        host.enter(ROOT);
        root::tick(&host, &shared);
    }
    assert_eq!(
        host.metric(counter_name(Counter::JwksFetchFailure)),
        Some(4)
    );
}

#[test]
fn failed_tokens_are_remembered_until_keys_change() {
    let k1 = Key::new("k1");
    let k2 = Key::new("k2");
    let (host, shared) = ready(&k1);
    // Signed by k2 but claiming k1's kid: a bad signature, verified once.
    let forged = k2.mint_with_kid("k1", &testing::claims(&[]));
    for context in [2, 3] {
        assert_eq!(
            run(
                &host,
                &shared,
                context,
                &testing::request("/score", Some(&forged))
            ),
            Verdict::Replied
        );
        assert_eq!(error_of(&host, context), (401, "bad_signature".to_owned()));
    }
    assert_eq!(
        host.metric(counter_name(Counter::NegativeCacheHit)),
        Some(1)
    );
    assert_eq!(host.metric(counter_name(Counter::CacheMiss)), Some(1));
    // The issuer publishes new keys: failures are forgotten.
    host.set_now(Some(NOW_MS + 600_000));
    host.enter(ROOT);
    root::tick(&host, &shared);
    let refresh = host.callouts().last().unwrap().clone();
    deliver(
        &host,
        &shared,
        refresh.token,
        Some("200"),
        &testing::jwks(&[&k1, &Key::new("k4")]),
    );
    assert_eq!(shared.borrow().cache.len().1, 0);
}

#[test]
fn a_withdrawn_key_stops_verifying_cached_tokens() {
    let k1 = Key::new("k1");
    let k2 = Key::new("k2");
    let (host, shared) = ready(&k1);
    let t1 = token(&k1, &[]);
    assert_eq!(
        run(&host, &shared, 2, &testing::request("/score", Some(&t1))),
        Verdict::Continue
    );
    host.set_now(Some(NOW_MS + 600_000));
    host.enter(ROOT);
    root::tick(&host, &shared);
    let refresh = host.callouts().last().unwrap().clone();
    deliver(
        &host,
        &shared,
        refresh.token,
        Some("200"),
        &testing::jwks(&[&k2]),
    );
    // Its kid is unknown now: the request asks for a refetch, which confirms it.
    assert_eq!(
        run(&host, &shared, 3, &testing::request("/score", Some(&t1))),
        Verdict::Held
    );
    host.enter(ROOT);
    root::tick(&host, &shared);
    let refetch = host.callouts().last().unwrap().clone();
    deliver(
        &host,
        &shared,
        refetch.token,
        Some("200"),
        &testing::jwks(&[&k2]),
    );
    assert_eq!(error_of(&host, 3), (401, "unknown_key".to_owned()));
}

#[test]
fn bad_key_set_answers_keep_the_last_good_keys_with_one_warning() {
    capture_logs();
    let k1 = Key::new("k1");
    let (host, shared) = ready(&k1);
    let t1 = token(&k1, &[]);
    let unsupported = vec![r#"{"kty":"oct","k":"AAAA"}"#; 60].join(",");
    let answers = [
        (None, String::new()),
        (Some("503"), String::new()),
        (Some("200"), "<html><body>Sign in</body></html>".to_owned()),
        (Some("200"), r#"{"keys":[]}"#.to_owned()),
        (Some("200"), format!(r#"{{"keys":[{unsupported}]}}"#)),
        (Some("200"), " ".repeat(5 * 1024 * 1024)),
    ];
    let mut now = NOW_MS;
    for (status, body) in answers {
        now += 700_000;
        host.set_now(Some(now));
        host.enter(ROOT);
        root::tick(&host, &shared);
        let call = host.callouts().last().unwrap().clone();
        capture_logs();
        deliver(&host, &shared, call.token, status, &body);
        let warnings = logged()
            .into_iter()
            .filter(|(l, _)| *l == log::Level::Warn)
            .count();
        assert_eq!(warnings, 1, "{status:?}: one warning per fetch");
        let exp = now / 1000 + 600;
        let t = token(&k1, &[("iat", json!(now / 1000)), ("exp", json!(exp))]);
        assert_eq!(
            run(&host, &shared, 2, &testing::request("/score", Some(&t))),
            Verdict::Continue,
            "{status:?}"
        );
    }
    let _ = t1;
    // Skipped keys beside good ones: one summary line, keys installed.
    now += 700_000;
    host.set_now(Some(now));
    host.enter(ROOT);
    root::tick(&host, &shared);
    let call = host.callouts().last().unwrap().clone();
    capture_logs();
    let mixed = format!(r#"{{"keys":[{},{unsupported}]}}"#, k1.jwk());
    deliver(&host, &shared, call.token, Some("200"), &mixed);
    let lines = logged();
    let warnings: Vec<_> = lines
        .iter()
        .filter(|(l, _)| *l == log::Level::Warn)
        .collect();
    assert_eq!(warnings.len(), 1, "{lines:?}");
    assert!(warnings[0].1.contains("60 keys skipped"), "{lines:?}");
    assert!(warnings[0].1.len() < 1_200, "{lines:?}");
}

#[test]
fn an_encryption_key_beside_the_signing_keys_is_logged_at_info_not_warned() {
    // Keycloak's key set as served: an RSA-OAEP `use: enc` key beside the signing key. Under
    // Istio's default `warning` level a warning here would fire on every refresh.
    capture_logs();
    let k1 = Key::new("k1");
    let (host, shared) = ready(&k1);
    let enc = r#"{"kty":"RSA","kid":"enc-1","use":"enc","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"}"#;
    let now = NOW_MS + 700_000;
    host.set_now(Some(now));
    host.enter(ROOT);
    root::tick(&host, &shared);
    let call = host.callouts().last().unwrap().clone();
    capture_logs();
    let keycloak = format!(r#"{{"keys":[{enc},{}]}}"#, k1.jwk());
    deliver(&host, &shared, call.token, Some("200"), &keycloak);
    let lines = logged();
    assert!(
        lines.iter().all(|(level, _)| *level != log::Level::Warn),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(level, line)| *level == log::Level::Info && line.contains("`use` is `enc`")),
        "{lines:?}"
    );
    // Any other skipped key beside it is still a warning.
    host.set_now(Some(now + 700_000));
    host.enter(ROOT);
    root::tick(&host, &shared);
    let call = host.callouts().last().unwrap().clone();
    capture_logs();
    let mixed = format!(
        r#"{{"keys":[{enc},{{"kty":"oct","k":"AAAA"}},{}]}}"#,
        k1.jwk()
    );
    deliver(&host, &shared, call.token, Some("200"), &mixed);
    let warnings = logged()
        .into_iter()
        .filter(|(level, _)| *level == log::Level::Warn)
        .count();
    assert_eq!(warnings, 1);
    let issued = (now + 700_000) / 1000;
    let t = token(&k1, &[("iat", json!(issued)), ("exp", json!(issued + 600))]);
    assert_eq!(
        run(&host, &shared, 2, &testing::request("/score", Some(&t))),
        Verdict::Continue
    );
}

#[test]
fn held_requests_are_answered_when_the_root_goes_away() {
    let (host, shared, _) = held_before_the_first_keys();
    host.enter(ROOT);
    root::done(&host, &shared);
    assert_eq!(error_of(&host, 2), (503, "keys_unavailable".to_owned()));
    assert_eq!(shared.borrow().held.len(), 0);
}

#[test]
fn oversized_tokens_are_refused_without_touching_the_caches() {
    let key = Key::new("k1");
    let (host, shared) = ready(&key);
    let huge = format!("{}.{}.{}", "a".repeat(20 * 1024), "b", "c");
    assert_eq!(
        run(&host, &shared, 2, &testing::request("/score", Some(&huge))),
        Verdict::Replied
    );
    assert_eq!(error_of(&host, 2), (401, "malformed_token".to_owned()));
    assert_eq!(shared.borrow().cache.len(), (0, 0));
}

#[test]
fn an_audit_rule_that_would_deny_is_logged_and_counted_never_enforced() {
    capture_logs();
    let key = Key::new("k1");
    let policy = format!(
        "{POLICY}\n[[rules]]\nname = \"trial\"\npaths = [\"/score\"]\naudit = true\ndeny = \"anyone\"\n"
    );
    let host = MockHost::new(NOW_MS);
    let shared = testing::configured(&host, &policy);
    let first = host.callouts()[0].token;
    deliver(&host, &shared, first, Some("200"), &testing::jwks(&[&key]));
    let t = token(&key, &[]);
    assert_eq!(
        run(&host, &shared, 2, &testing::request("/score", Some(&t))),
        Verdict::Continue
    );
    assert_eq!(
        run(&host, &shared, 3, &testing::request("/score", None)),
        Verdict::Replied
    );
    assert_eq!(error_of(&host, 3), (401, "no_token".to_owned()));
    assert_eq!(host.metric(counter_name(Counter::AuditWouldDeny)), Some(1));
    let audit: Vec<Value> = logged()
        .iter()
        .filter_map(|(_, line)| line.strip_prefix("claimgate.audit "))
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(audit[0]["decision"], "allow");
    assert_eq!(audit[0]["shadow"]["decision"], "deny");
    assert_eq!(audit[0]["shadow"]["rule"], "trial");
}

#[test]
fn configuration_fails_closed() {
    let host = MockHost::new(NOW_MS);
    assert!(root::configure(&host, ROOT).is_err(), "no pluginConfig");
    host.state.borrow_mut().config = Some(b"{\"policy\":\"not a blob\"}".to_vec());
    assert!(root::configure(&host, ROOT).is_err());
    let host = MockHost::new(NOW_MS).failing("set_tick_period_ms");
    host.state.borrow_mut().config = Some(testing::plugin_config(POLICY));
    assert!(
        root::configure(&host, ROOT).is_err(),
        "no tick: no refresh, no hold expiry"
    );
    // A clock that fails at start: configured, the first fetch waits for the tick.
    let host = MockHost::new(NOW_MS);
    host.set_now(None);
    let shared = testing::configured(&host, POLICY);
    assert!(host.callouts().is_empty());
    host.set_now(Some(NOW_MS));
    root::tick(&host, &shared);
    assert_eq!(host.callouts().len(), 1);
}

/// Review finding: `forward = false` left the token in requests that passed without a
/// verified caller (public paths, default allow, audit mode).
#[test]
fn forward_false_keeps_the_token_from_the_upstream_on_every_passing_request() {
    let key = Key::new("k1");
    let policy = POLICY.replace(
        "name = \"unit\"\n",
        "name = \"unit\"\n\n[token]\nforward = false\n",
    );
    let (host, shared) = ready_with(&policy, &[&key]);
    let t = token(&key, &[("roles", json!(["ml-scorer"]))]);
    for (context, path) in [(2, "/health"), (3, "/score")] {
        assert_eq!(
            run(&host, &shared, context, &testing::request(path, Some(&t))),
            Verdict::Continue,
            "{path}"
        );
        assert_eq!(host.header(context, "authorization"), None, "{path}");
    }
}

/// A token without `kid` that no single key fits cannot be cured by a refetch: refused at
/// once, never held, no callout (a flood of such tokens must cost nothing but a reply).
#[test]
fn a_kidless_token_with_several_candidate_keys_is_refused_without_a_refetch() {
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let (host, shared) = ready_with(POLICY, &[&k1, &k2]);
    let before = host.callouts().len();
    let t = k1.mint_without_kid(&testing::claims(&[("roles", json!(["ml-scorer"]))]));
    assert_eq!(
        run(&host, &shared, 2, &testing::request("/score", Some(&t))),
        Verdict::Replied
    );
    assert_eq!(error_of(&host, 2), (401, "unknown_key".to_owned()));
    host.enter(ROOT);
    root::tick(&host, &shared);
    assert_eq!(
        host.callouts().len(),
        before,
        "no refetch for a token without kid"
    );
}

#[test]
fn a_clock_that_fails_at_the_tick_refuses_held_requests_and_logs_once() {
    capture_logs();
    let (host, shared, _) = held_before_the_first_keys();
    host.set_now(None);
    for _ in 0..5 {
        host.enter(ROOT);
        root::tick(&host, &shared);
    }
    assert_eq!(error_of(&host, 2), (503, "clock_unavailable".to_owned()));
    let warnings = logged()
        .iter()
        .filter(|(_, line)| line.contains("clock cannot be read"))
        .count();
    assert_eq!(warnings, 1);
    assert_eq!(host.state.borrow().tick_period_ms, Some(TICK_MS));
    // The clock is back: fetching resumes.
    host.set_now(Some(NOW_MS + 1_000));
    host.enter(ROOT);
    root::tick(&host, &shared);
    assert!(!shared.borrow().clock_failing);
}

/// Attacker pass 2 (F5): identity headers sent as request trailers (forwarded to h2/gRPC
/// upstreams) are removed.
#[test]
fn identity_headers_in_trailers_are_removed() {
    let key = Key::new("k1");
    let (host, shared) = ready(&key);
    assert_eq!(
        run(&host, &shared, 2, &testing::request("/health", None)),
        Verdict::Continue
    );
    host.state.borrow_mut().trailers.insert(
        2,
        vec![
            (b"x-claimgate-subject".to_vec(), b"admin".to_vec()),
            (b"grpc-status".to_vec(), b"0".to_vec()),
        ],
    );
    host.enter(2);
    assert!(on_request_trailers(&host, &shared));
    let trailers = host.state.borrow().trailers.get(&2).cloned().unwrap();
    assert_eq!(trailers, vec![(b"grpc-status".to_vec(), b"0".to_vec())]);
}

/// Attacker pass 2 (F2): a policy push gave the new root no keys, so while the IdP was down
/// every authenticated request was held and then refused with 503. The new root now starts
/// from the keys the previous one fetched (VM shared data) and fetches again only when they
/// are due.
#[test]
fn a_policy_push_keeps_the_last_good_keys() {
    let key = Key::new("k1");
    let (host, _old) = ready(&key);
    let callouts_before = host.callouts().len();
    // The push: a new root on the same VM, the IdP unreachable from now on.
    let pushed = POLICY.replace("name = \"unit\"", "name = \"unit-v2\"");
    let shared = testing::configured(&host, &pushed);
    assert_eq!(
        host.callouts().len(),
        callouts_before,
        "the kept keys are not due yet"
    );
    let t = token(&key, &[("roles", json!(["ml-scorer"]))]);
    assert_eq!(
        run(&host, &shared, 7, &testing::request("/score", Some(&t))),
        Verdict::Continue
    );
}

/// Warm requests in a loop, for a profiler (`valgrind --tool=callgrind`): the filter's own
/// work per cached-token request, without Envoy.
#[test]
#[ignore = "profiling aid: cargo test --release -p claimgate-filter warm_requests_for_a_profiler -- --ignored"]
fn warm_requests_for_a_profiler() {
    let key = Key::new("k1");
    let (host, shared) = ready(&key);
    let padding = "p".repeat(1_000);
    let t = token(&key, &[("padding", json!(padding))]);
    let request = testing::request("/score", Some(&t));
    for context in 2..2_002 {
        assert_eq!(run(&host, &shared, context, &request), Verdict::Continue);
        host.hang_up(context);
        host.state.borrow_mut().properties.clear();
        host.state.borrow_mut().calls.clear();
    }
}
