//! The root context's work: configure (decode the policy, adopt kept keys), tick
//! (reclaim overdue fetches, dispatch due ones, release requests held too long) and callout
//! answers (install keys, release held requests). Every JWKS callout starts here, never in a
//! request (see `jwks`).

use std::cell::RefCell;
use std::rc::Rc;

use crate::host::Host;
use crate::jwks::{self, FAST_TICK_MS, TICK_MS};
use crate::request::{self, clock};
use crate::state::Shared;

/// Builds the root's state from the pluginConfig; `Err` refuses the configuration (Envoy then
/// fails the filter closed).
pub fn configure(host: &dyn Host, root_context: u32) -> Result<Rc<RefCell<Shared>>, String> {
    let config = match host.plugin_config() {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Err("no pluginConfig".to_owned()),
        Err(error) => return Err(format!("cannot read pluginConfig ({error})")),
    };
    let mut engine = claimgate_core::blob::engine_from_plugin_config(&config)
        .map_err(|error| format!("pluginConfig refused: {error}"))?;
    // Envoy's BoringSSL for RS*/ES* signatures, when this VM's start detected it.
    if let Some(signature_host) = crate::crypto::vm_signature_host() {
        engine.set_signature_host(signature_host);
    }
    // At warn: Istio's proxies log at `warning`, and which policy runs is what an operator
    // asks first (once per configuration and worker).
    log::warn!(
        "claimgate: policy `{}` version {} active ({} rules, {} issuers)",
        jwks::bounded(&engine.policy().name, 64),
        engine.digest(),
        engine.policy().rules.len(),
        engine.policy().issuers.len()
    );
    // Without ticks no key would be refreshed and no held request would ever be answered.
    host.set_tick_period_ms(TICK_MS)
        .map_err(|error| format!("cannot set the tick ({error})"))?;
    let shared = Rc::new(RefCell::new(Shared::new(
        host,
        Rc::new(engine),
        root_context,
    )));
    if let Some(now_ms) = clock(host) {
        shared.borrow_mut().last_clock_ms = now_ms;
        jwks::adopt_kept(host, &shared, now_ms);
        // The first fetches start at the first tick, moments from now, not here: Envoy
        // configures roots that never tick (on its main thread), and one of those taking the
        // fetch lease would leave every worker waiting for a fetch that never answers until
        // the lease runs out.
        let mut s = shared.borrow_mut();
        if !s.scheduler.due(now_ms).is_empty() && host.set_tick_period_ms(FAST_TICK_MS).is_ok() {
            s.fast_tick = true;
        }
    }
    Ok(shared)
}

/// The root's tick.
pub fn tick(host: &dyn Host, shared: &RefCell<Shared>) {
    // An operator may change Envoy's log level at any time (`/logging?wasm=info`).
    shared.borrow_mut().log_level = crate::audit::host_level(host);
    let Some(now_ms) = clock(host) else {
        // No clock, no schedule: held requests are refused now (they would wait forever),
        // the tick goes back to its regular pace, and the failure is logged once.
        let first = {
            let mut s = shared.borrow_mut();
            let first = !s.clock_failing;
            s.clock_failing = true;
            s.fast_tick = false;
            first
        };
        if first {
            log::warn!("claimgate: the host clock cannot be read: JWKS refresh suspended");
        }
        request::refuse_held_without_clock(host, shared);
        let _ = host.set_tick_period_ms(TICK_MS);
        return;
    };
    {
        let mut s = shared.borrow_mut();
        s.last_clock_ms = now_ms;
        s.clock_failing = false;
    }
    // Held requests are decided again when a wait for keys ends at this tick without an
    // answer of this root's to release them: a fetch reclaimed, a set adopted from another
    // root, another root's failure, a fetch that could not be dispatched.
    let awaited = shared.borrow().scheduler.awaited();
    jwks::reclaim_overdue(host, shared, now_ms);
    jwks::dispatch_due(host, shared, now_ms);
    let ended = {
        let s = shared.borrow();
        awaited
            .iter()
            .any(|issuer| !s.scheduler.first_keys_pending(*issuer))
    };
    if ended {
        request::release_held(host, shared, now_ms, false);
    }
    request::release_held(host, shared, now_ms, true);
    let restore = {
        let mut s = shared.borrow_mut();
        let restore = s.fast_tick && !s.scheduler.refetch_waiting();
        if restore {
            s.fast_tick = false;
        }
        restore
    };
    if restore {
        let _ = host.set_tick_period_ms(TICK_MS);
    }
}

/// The root context is done (its policy was replaced or removed).
pub fn done(host: &dyn Host, shared: &RefCell<Shared>) {
    let now_ms = clock(host).unwrap_or_else(|| shared.borrow().last_clock_ms);
    jwks::release_leases(host, shared);
    request::release_all_now(host, shared, now_ms);
}

/// A callout answered (delivered to the root).
pub fn on_answer(host: &dyn Host, shared: &RefCell<Shared>, token: u32, body_size: usize) {
    let now_ms = clock(host).unwrap_or_else(|| shared.borrow().last_clock_ms);
    if jwks::on_answer(host, shared, token, body_size, now_ms) {
        request::release_held(host, shared, now_ms, false);
    }
}
