//! The request path: read the request, decide, then hold, reply or continue.
//!
//! Request headers arrive as bytes. Values that are not UTF-8 are converted lossily for
//! matching only (U+FFFD never equals a rule value: the compiler refuses non-ASCII ones) and
//! are never copied anywhere (audit line, reply body); a token header that is not UTF-8 is a
//! malformed token. Headers under the identity prefix are the filter's: rules never see what
//! the client sent there, and it is removed before the request goes upstream.
//!
//! Anything the filter cannot do on the host (read headers, set identity headers, read the
//! clock) ends in a local error reply: never a pass, never a trap.

use std::cell::RefCell;
use std::rc::Rc;

use claimgate_core::DenyReason;
use claimgate_core::compiled::{BeforeFirstFetch, FilterState};
use claimgate_core::engine::{Decision, Engine, Request};
use claimgate_core::locate;
use claimgate_core::upstream::encode_value;

use crate::audit;
use crate::cache::Lookup;
use crate::hold::{HOLD_MAX_MS, Held};
use crate::host::{Host, HostError, RawHeaders};
use crate::jwks::{FAST_TICK_MS, bounded};
use crate::metrics::Counter;
use crate::state::Shared;

/// Earliest host clock believed (2020-09-13): a clock reading before it is treated as no
/// clock, so a broken clock can never make every `exp` look in the future.
pub const MIN_CLOCK_MS: u64 = 1_600_000_000_000;

/// What happened to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Continue,
    /// A local reply was sent (or the stream reset).
    Replied,
    /// Paused until keys arrive.
    Held,
}

/// The host clock in ms, if it can be read and is believable.
pub fn clock(host: &dyn Host) -> Option<u64> {
    host.now_ms().ok().filter(|ms| *ms >= MIN_CLOCK_MS)
}

/// The request headers, read once.
struct Headers {
    pairs: Vec<(String, String)>,
    /// Whether `pairs[i]`'s value was converted lossily.
    lossy: Vec<bool>,
    /// Names under the identity prefix that the client sent (exact bytes, to remove them).
    spoofed: Vec<Vec<u8>>,
}

impl Headers {
    fn read(raw: RawHeaders, engine: &Engine) -> Headers {
        let (names, policy) = (engine.header_names(), engine.policy());
        let mut headers = Headers {
            pairs: Vec::with_capacity(raw.len()),
            lossy: Vec::with_capacity(raw.len()),
            spoofed: Vec::new(),
        };
        for (name, value) in raw {
            // `x_claimgate_subject` too: WSGI-style upstreams read it as `x-claimgate-subject`.
            if names.owns_bytes(&name) {
                headers.spoofed.push(name);
                continue;
            }
            let name = String::from_utf8_lossy(&name).into_owned();
            let (value, lossy) = match String::from_utf8(value) {
                Ok(value) => (value, false),
                // A token header that is not UTF-8 is a malformed token, never "no token":
                // read as the longest prefix set for it and a character no token holds.
                Err(_) if engine.reads_token_from(name.as_bytes()) => {
                    let prefix = locate::longest_prefix(policy, &name).unwrap_or("");
                    (format!("{prefix}\u{FFFD}"), true)
                }
                Err(error) => (String::from_utf8_lossy(error.as_bytes()).into_owned(), true),
            };
            headers.pairs.push((name, value));
            headers.lossy.push(lossy);
        }
        headers
    }

    /// The first value of a header, for matching (may be a lossy conversion).
    fn get(&self, name: &str) -> &str {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The first value of a header if it was valid UTF-8: the only kind copied anywhere.
    fn clean(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .zip(&self.lossy)
            .find(|((n, _), _)| n.eq_ignore_ascii_case(name))
            .filter(|(_, lossy)| !**lossy)
            .map(|((_, v), _)| v.as_str())
    }
}

/// A new request's headers arrived.
pub fn on_request_headers(host: &dyn Host, shared: &RefCell<Shared>, context_id: u32) -> Verdict {
    let Some(now_ms) = clock(host) else {
        log::error!("claimgate: the host clock cannot be read: request refused");
        return refuse_without_clock(host, shared);
    };
    shared.borrow_mut().last_clock_ms = now_ms;
    decide_and_apply(host, shared, context_id, now_ms, now_ms)
}

/// Acts on each of `held` in its own context (skipping requests whose client hung up), then
/// gives the effective context back to the root.
fn for_each_held(
    host: &dyn Host,
    shared: &RefCell<Shared>,
    held: Vec<Held>,
    mut act: impl FnMut(Held),
) {
    if held.is_empty() {
        return;
    }
    let root = shared.borrow().root_context;
    for request in held {
        if host.set_effective_context(request.context_id).is_ok() {
            act(request);
        }
    }
    let _ = host.set_effective_context(root);
}

/// Decides a request again (it was held) and resumes it when it may pass.
fn redecide(host: &dyn Host, shared: &RefCell<Shared>, request: Held, now_ms: u64) {
    let verdict = decide_and_apply(host, shared, request.context_id, now_ms, request.since_ms);
    if verdict == Verdict::Continue && host.resume_request().is_err() {
        log::warn!("claimgate: a released request could not be resumed");
    }
}

/// Re-decides held requests from the root: all of them (keys arrived or a fetch failed), or
/// only those held too long (they are decided with the keys at hand: fail closed).
pub fn release_held(host: &dyn Host, shared: &RefCell<Shared>, now_ms: u64, expired_only: bool) {
    let held = {
        let mut s = shared.borrow_mut();
        if expired_only {
            s.held.take_expired(now_ms)
        } else {
            s.held.take_all()
        }
    };
    for_each_held(host, shared, held, |request| {
        if expired_only {
            shared.borrow().metrics.bump(host, Counter::HoldExpired);
        }
        redecide(host, shared, request, now_ms);
    });
}

/// The root context is going away (a new policy replaced it): nothing will release its held
/// requests any more, so they are decided now with the keys at hand.
pub fn release_all_now(host: &dyn Host, shared: &RefCell<Shared>, now_ms: u64) {
    let held = shared.borrow_mut().held.take_all();
    for_each_held(host, shared, held, |request| {
        // `since` far enough in the past that the request is not held again.
        let since_ms = now_ms.saturating_sub(HOLD_MAX_MS);
        redecide(
            host,
            shared,
            Held {
                since_ms,
                ..request
            },
            now_ms,
        );
    });
}

/// 503 `clock_unavailable` for the current request.
fn refuse_without_clock(host: &dyn Host, shared: &RefCell<Shared>) -> Verdict {
    let reason = DenyReason::ClockUnavailable;
    shared.borrow().metrics.denied(host, &reason);
    publish_refusal(host, shared, "deny", reason.code());
    let status = reason.response().status;
    send(
        host,
        shared,
        u32::from(status),
        &[],
        &error_body(reason.code(), status),
    )
}

/// The clock failed at the root's tick: every held request is refused (503).
pub fn refuse_held_without_clock(host: &dyn Host, shared: &RefCell<Shared>) {
    let held = shared.borrow_mut().held.take_all();
    for_each_held(host, shared, held, |_| {
        refuse_without_clock(host, shared);
    });
}

/// A request's stream ended: it is no longer held.
pub fn forget(shared: &RefCell<Shared>, context_id: u32) {
    shared.borrow_mut().held.forget(context_id);
}

fn decide_and_apply(
    host: &dyn Host,
    shared: &RefCell<Shared>,
    context_id: u32,
    now_ms: u64,
    since_ms: u64,
) -> Verdict {
    let engine = shared.borrow().engine.clone();
    let raw = match host.request_headers() {
        Ok(raw) => raw,
        Err(error) => return fail(host, shared, "cannot read the request headers", error),
    };
    let headers = Headers::read(raw, &engine);
    let request = Request {
        method: headers.get(":method"),
        host: headers.get(":authority"),
        path: headers.get(":path"),
        headers: &headers.pairs,
    };
    let decision = decide(host, shared, &engine, &request, now_ms / 1000);
    if let Some(verdict) = hold(
        host, shared, &engine, &decision, context_id, now_ms, since_ms,
    ) {
        return verdict;
    }
    apply(host, shared, &engine, &request, &headers, &decision)
}

/// The engine's decision, authenticating through the caches.
fn decide(
    host: &dyn Host,
    shared: &RefCell<Shared>,
    engine: &Engine,
    request: &Request<'_>,
    now: u64,
) -> Decision {
    let mut authenticate = |raw: &str, _: &mut claimgate_core::token::Trace<'_>| {
        let mut guard = shared.borrow_mut();
        let s = &mut *guard;
        if raw.len() > claimgate_core::token::MAX_TOKEN_LEN {
            // Refused by its length before any parsing: not worth hashing into a cache.
            return engine
                .authenticate(raw, now, &s.remote, &mut None)
                .map(Rc::new);
        }
        let key = s.cache.key(raw);
        match s.cache.lookup(key, raw, now) {
            Lookup::Verified(identity) => {
                s.metrics.bump(host, Counter::CacheHit);
                Ok(identity)
            }
            Lookup::Failed(reason) => {
                s.metrics.bump(host, Counter::NegativeCacheHit);
                Err(reason)
            }
            Lookup::Miss => {
                s.metrics.bump(host, Counter::CacheMiss);
                match engine.authenticate(raw, now, &s.remote, &mut None) {
                    Ok(identity) => {
                        let identity = Rc::new(identity);
                        let skew = engine
                            .policy()
                            .issuers
                            .get(identity.issuer_index)
                            .map_or(0, |i| i.clock_skew_secs);
                        s.cache
                            .remember_verified(key, raw, identity.clone(), skew, now);
                        Ok(identity)
                    }
                    Err(reason) => {
                        s.cache.remember_failure(key, &reason, now);
                        Err(reason)
                    }
                }
            }
        }
    };
    engine.decide_with(request, None, &mut authenticate)
}

/// Holds a request that waits for keys: the first fetch, or a refetch for an unknown `kid`
/// (which the request only asks the root for). `None`: answer now.
fn hold(
    host: &dyn Host,
    shared: &RefCell<Shared>,
    engine: &Engine,
    decision: &Decision,
    context_id: u32,
    now_ms: u64,
    since_ms: u64,
) -> Option<Verdict> {
    if decision.passes() || now_ms.saturating_sub(since_ms) >= HOLD_MAX_MS {
        return None;
    }
    let mut shorten_tick = false;
    {
        let mut s = shared.borrow_mut();
        let waits = match decision.reason.as_ref()? {
            DenyReason::KeysUnavailable { issuer } => {
                let index = engine.issuer_index(issuer)?;
                let config = engine.policy().issuers.get(index)?.remote_jwks.as_ref()?;
                config.before_first_fetch == BeforeFirstFetch::Hold
                    && s.scheduler.first_keys_pending(index)
            }
            // Only a `kid` the key set lacks can be cured by a refetch: a token naming none
            // that no single key fits is refused at once (no hold, no fetch for a flood).
            DenyReason::UnknownKey {
                issuer,
                kid: Some(_),
            } => {
                let index = engine.issuer_index(issuer)?;
                let waits = s.scheduler.ask_refetch(index, now_ms);
                if waits && s.scheduler.refetch_waiting() && !s.fast_tick {
                    s.fast_tick = true;
                    shorten_tick = true;
                }
                waits
            }
            _ => false,
        };
        if !waits
            || !s.held.push(Held {
                context_id,
                since_ms,
            })
        {
            return None;
        }
    }
    // The root dispatches at its next tick: make that tick come now. If the host refuses,
    // the regular tick still dispatches.
    if shorten_tick && host.set_tick_period_ms(FAST_TICK_MS).is_err() {
        shared.borrow_mut().fast_tick = false;
    }
    Some(Verdict::Held)
}

fn apply(
    host: &dyn Host,
    shared: &RefCell<Shared>,
    engine: &Engine,
    request: &Request<'_>,
    headers: &Headers,
    decision: &Decision,
) -> Verdict {
    let request_id = headers.clean("x-request-id");
    audit::record(
        engine,
        request,
        decision,
        &audit::Fields {
            request_id,
            deployment: headers.clean("azureml-model-deployment"),
        },
        shared.borrow().log_level,
    );
    {
        let s = shared.borrow();
        match (&decision.reason, decision.passes()) {
            (None, _) => s.metrics.bump(host, Counter::Allowed),
            (Some(_), true) => s.metrics.bump(host, Counter::AuditWouldDeny),
            (Some(reason), false) => s.metrics.denied(host, reason),
        }
        // An audit rule would deny what the enforcing rules allow: counted, never enforced.
        if decision.reason.is_none() && decision.shadow.as_ref().is_some_and(|s| !s.allowed) {
            s.metrics.bump(host, Counter::AuditWouldDeny);
        }
    }
    if decision.passes() {
        return match forward(host, engine, headers, decision) {
            Ok(()) => {
                publish(host, engine, decision);
                Verdict::Continue
            }
            Err(error) => fail(host, shared, "cannot set the identity headers", error),
        };
    }
    publish(host, engine, decision);
    let Some(reason) = &decision.reason else {
        return fail(
            host,
            shared,
            "a denial without a reason",
            HostError::Garbled,
        );
    };
    let response = reason.response_in(decision.statuses);
    let body = format!(
        "{{\"error\":{},\"status\":{},\"rule\":{},\"request_id\":{},\"policy_version\":{}}}\n",
        json(reason.code()),
        response.status,
        json(&bounded(decision.rule.as_deref().unwrap_or(""), 256)),
        json(&bounded(request_id.unwrap_or(""), 256)),
        json(engine.digest())
    );
    let mut reply_headers = vec![("content-type", "application/json")];
    if let Some(value) = response.www_authenticate.as_deref() {
        reply_headers.push(("www-authenticate", value));
    }
    send(
        host,
        shared,
        u32::from(response.status),
        &reply_headers,
        &body,
    )
}

/// Lets an allowed request through: the client's identity headers go, the verified ones come.
/// Any failure here stops the request (the upstream must never see a spoofed identity).
fn forward(
    host: &dyn Host,
    engine: &Engine,
    headers: &Headers,
    decision: &Decision,
) -> Result<(), HostError> {
    // What `Engine::removed_upstream` names (`explain` lists it), first, so that no removal
    // takes away a header the filter sets: the client's identity and claim copies, set apart
    // as the request was read (by the same `owns_bytes`) ...
    for name in &headers.spoofed {
        host.remove_request_header(name)?;
    }
    // ... and with `forward = false` the token's headers: by their configured names whatever
    // the read held, and in any other spelling the engine reads a token from (`x_token`).
    if !engine.policy().token.forward_token {
        let configured = &engine.token_names().headers;
        for name in configured {
            host.remove_request_header(name.as_bytes())?;
        }
        for (name, _) in &headers.pairs {
            if engine.reads_token_from(name.as_bytes()) && !configured.contains(name) {
                host.remove_request_header(name.as_bytes())?;
            }
        }
    }
    // The values the engine computes for the upstream (encoded; `explain` shows the same).
    for (name, value) in engine.upstream_headers(decision) {
        host.set_request_header(name, &value)?;
    }
    // `forward = false` keeps the token from the upstream on every request that passes —
    // public paths, the default, audit mode — not only when a caller was verified.
    if !engine.policy().token.forward_token {
        remove_token_cookies(host, engine, headers)?;
    }
    Ok(())
}

/// `forward = false` and token cookies: the `cookie` header is rewritten without them (the
/// other cookies still reach the upstream); removed when nothing else is left, or when a
/// `cookie` value is not UTF-8 (it cannot be rewritten faithfully, and the token must go).
/// A query parameter token stays in the path (as with Envoy's `forward: false`): rewriting
/// the path after routing would change what the rules matched.
fn remove_token_cookies(
    host: &dyn Host,
    engine: &Engine,
    headers: &Headers,
) -> Result<(), HostError> {
    let names = &engine.token_names().cookies;
    if names.is_empty() {
        return Ok(());
    }
    let cookie = |(name, _): &&(String, String)| name.eq_ignore_ascii_case(locate::COOKIE_HEADER);
    let values = headers.pairs.iter().filter(cookie).map(|(_, v)| v.as_str());
    let Some(rest) = locate::cookie_header_without(values, names) else {
        return Ok(());
    };
    let lossy = headers
        .pairs
        .iter()
        .zip(&headers.lossy)
        .any(|(pair, lossy)| *lossy && cookie(&pair));
    host.remove_request_header(locate::COOKIE_HEADER.as_bytes())?;
    if !rest.is_empty() && !lossy {
        host.set_request_header(locate::COOKIE_HEADER, &rest)?;
    }
    Ok(())
}

/// The decision in the request's filter state, for Envoy's access log
/// (`%FILTER_STATE(wasm.claimgate.decision:PLAIN)%`): every decision, passed or refused, so the
/// access log holds the complete trail whatever Envoy's log level. `decision` (`allow`,
/// `deny`, `audit_deny`) always; `reason` and `rule` when there is one; `subject` and
/// `issuer` for a verified caller; `shadow_reason` and `shadow_rule` when an audit rule would
/// deny. Values from the token or the policy are encoded, so they cannot forge log lines.
/// Best effort: the decision does not depend on it. Not written under `filter_state = "none"`.
fn publish(host: &dyn Host, engine: &Engine, decision: &Decision) {
    if !writes_filter_state(engine) {
        return;
    }
    let _ = host.set_property("claimgate.decision", decision.outcome().as_bytes());
    if let Some(reason) = &decision.reason {
        let _ = host.set_property("claimgate.reason", reason.code().as_bytes());
    }
    if let Some(rule) = decision.rule.as_deref() {
        let _ = host.set_property("claimgate.rule", encode_value(rule).as_bytes());
    }
    if let Some(identity) = &decision.identity {
        for (key, value) in [
            ("claimgate.subject", identity.subject.as_str()),
            ("claimgate.issuer", identity.issuer.as_str()),
        ] {
            let _ = host.set_property(key, encode_value(value).as_bytes());
        }
    }
    if let Some(shadow) = decision.shadow.as_ref().filter(|shadow| !shadow.allowed) {
        if let Some(reason) = &shadow.reason {
            let _ = host.set_property("claimgate.shadow_reason", reason.code().as_bytes());
        }
        if let Some(rule) = shadow.rule.as_deref() {
            let _ = host.set_property("claimgate.shadow_rule", encode_value(rule).as_bytes());
        }
    }
}

/// Whether the policy has decisions written into the filter state (`filter_state`).
fn writes_filter_state(engine: &Engine) -> bool {
    engine.policy().filter_state == FilterState::All
}

/// [`publish`] for a refusal the engine did not decide (no clock, a failing host).
fn publish_refusal(host: &dyn Host, shared: &RefCell<Shared>, outcome: &str, reason: &str) {
    if writes_filter_state(&shared.borrow().engine) {
        let _ = host.set_property("claimgate.decision", outcome.as_bytes());
        let _ = host.set_property("claimgate.reason", reason.as_bytes());
    }
}

fn json(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

fn error_body(code: &str, status: u16) -> String {
    format!("{{\"error\":{},\"status\":{status}}}\n", json(code))
}

/// Sends a local reply; if even that fails, resets the stream. Never lets the request pass.
fn send(
    host: &dyn Host,
    shared: &RefCell<Shared>,
    status: u32,
    headers: &[(&str, &str)],
    body: &str,
) -> Verdict {
    let mut all = vec![("content-type", "application/json")];
    all.extend(headers.iter().filter(|(n, _)| *n != "content-type"));
    if let Err(error) = host.send_reply(status, &all, body.as_bytes()) {
        log::error!("claimgate: could not send the local reply ({error}); resetting the request");
        shared.borrow().metrics.bump(host, Counter::HostFailure);
        let _ = host.reset_request();
    }
    Verdict::Replied
}

/// The host failed the filter: fail closed with a 500.
fn fail(host: &dyn Host, shared: &RefCell<Shared>, what: &str, error: HostError) -> Verdict {
    log::error!("claimgate: {what} ({error}): request refused");
    publish_refusal(host, shared, "error", "filter_error");
    shared.borrow().metrics.bump(host, Counter::HostFailure);
    send(host, shared, 500, &[], &error_body("filter_error", 500))
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "token_io_tests.rs"]
mod token_io_tests;

/// Request trailers: identity headers a client sends there (an h2 or gRPC upstream receives
/// trailers) are removed, like the ones in the headers. Returns false if that failed.
pub fn on_request_trailers(host: &dyn Host, shared: &RefCell<Shared>) -> bool {
    let engine = shared.borrow().engine.clone();
    let names = engine.header_names();
    let Ok(trailers) = host.request_trailers() else {
        return false;
    };
    trailers
        .iter()
        .filter(|(name, _)| names.owns_bytes(name))
        .all(|(name, _)| host.remove_request_trailer(name).is_ok())
}
