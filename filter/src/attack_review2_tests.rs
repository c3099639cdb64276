//! Review 2 (attack on f546274): held requests whose refetch can no longer come.

use std::cell::RefCell;

use crate::host::mock::MockHost;
use crate::request::Verdict;
use crate::state::Shared;
use crate::testing::{Key, NOW_MS, ROOT, claims, configured, jwks, request, run};

fn deliver(host: &MockHost, root: &RefCell<Shared>, token: u32, status: &str, body: &str) {
    host.enter(ROOT);
    host.answer(Some(status), body.as_bytes());
    crate::root::on_answer(host, root, token, body.len());
}

/// Finding: a request held for a refetch (its token names a `kid` the keys lack) stays held
/// until the 10 s hold limit when the refetch cannot even be dispatched (the JWKS cluster is
/// gone: `dispatch_http_call` fails). `dispatch_due` records the failure (`fetch_failed`) but
/// reports nothing, so the tick does not re-decide held requests: no answer of this root's
/// will ever release them, exactly the case c25cf6f fixed for a peer's failure.
#[test]
fn a_refetch_that_cannot_be_dispatched_answers_the_requests_held_for_it() {
    let host = MockHost::new(NOW_MS);
    let root = configured(&host, crate::testing::POLICY);
    let first = host.callouts()[0].token;
    deliver(&host, &root, first, "200", &jwks(&[&Key::new("k1")]));
    assert!(root.borrow().remote.get(0).is_some());

    // A token signed by a key the set does not have yet: held for a refetch.
    host.set_now(Some(NOW_MS + 60_000));
    let token = Key::new("k2").mint(&claims(&[]));
    host.enter(7);
    assert_eq!(
        run(&host, &root, 7, &request("/score", Some(&token))),
        Verdict::Held
    );
    // The JWKS cluster is gone: the refetch fails to start at the next (fast) tick.
    host.state.borrow_mut().failing.insert("dispatch_http_call");
    host.set_now(Some(NOW_MS + 60_020));
    host.enter(ROOT);
    crate::root::tick(&host, &root);
    let answered = host.replies().into_iter().any(|r| r.context == 7);
    assert!(
        answered,
        "request 7 is still held ({} held) after its refetch failed to start; it is answered \
         only at the 10 s hold limit",
        root.borrow().held.len()
    );
}

/// The same at start-up: a request that arrives between `configure` and the first tick is
/// held for the first keys (`before_first_fetch = "hold"`, the default); when the first fetch
/// cannot be dispatched, nothing will bring keys, yet the request waits out the 10 s hold
/// limit before its 503 `keys_unavailable`.
#[test]
fn a_first_fetch_that_cannot_be_dispatched_answers_the_requests_held_for_it() {
    let host = MockHost::new(NOW_MS);
    host.state.borrow_mut().config = Some(crate::testing::plugin_config(crate::testing::POLICY));
    host.enter(ROOT);
    let root = crate::root::configure(&host, ROOT).unwrap();
    let token = Key::new("k1").mint(&claims(&[]));
    host.enter(7);
    assert_eq!(
        run(&host, &root, 7, &request("/score", Some(&token))),
        Verdict::Held
    );
    host.state.borrow_mut().failing.insert("dispatch_http_call");
    host.set_now(Some(NOW_MS + 20));
    host.enter(ROOT);
    crate::root::tick(&host, &root);
    let reply = host.replies().into_iter().find(|r| r.context == 7);
    assert!(
        reply.as_ref().is_some_and(|r| r.status == 503),
        "request 7 unanswered ({} held) after the first fetch failed to start: {reply:?}",
        root.borrow().held.len()
    );
}
