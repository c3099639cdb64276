//! claimgate proxy-wasm filter: reads the pluginConfig, asks `claimgate-core` for a
//! decision on every request, and turns it into Envoy actions. Everything that decides lives
//! in the core; this crate only talks to the host, through one door that cannot trap
//! ([`host`]).
//!
//! - `root`: configuration, the tick, callout answers (the root owns every JWKS fetch)
//! - `request`: the request path (decide, hold, reply, continue)
//! - `jwks`: fetch schedule (deadlines, backoff, refetch requests) and key set answers
//! - `cache`: verified and failed tokens; `hold`: requests waiting for keys
//! - `audit`: the audit line; `metrics`: stats
//! - `abi`: the module's exports (only the callbacks the filter uses) and its contexts

#[cfg_attr(
    not(target_arch = "wasm32"),
    allow(
        dead_code,
        reason = "only the Wasm exports call it; native tests drive it directly"
    )
)]
mod abi;
mod audit;
mod cache;
#[cfg_attr(
    not(target_arch = "wasm32"),
    allow(
        dead_code,
        reason = "started by the Wasm exports (`abi`); native tests drive it directly"
    )
)]
mod crypto;
mod hold;
pub mod host;
mod jwks;
mod metrics;
mod request;
mod root;
mod state;
#[cfg(test)]
mod testing;

/// TEST ONLY (cargo feature `test-trap`, never in a release manifest): a request carrying
/// `x-claimgate-test-trap: 1` traps the VM, to test what Envoy's `failure_policy` does after
/// a crash.
#[cfg(feature = "test-trap")]
mod test_trap {
    use crate::host::Host;

    pub fn maybe_trap(host: &dyn Host) {
        let trap = host.request_headers().is_ok_and(|headers| {
            headers
                .iter()
                .any(|(n, v)| n == b"x-claimgate-test-trap" && v == b"1")
        });
        if trap {
            std::process::abort();
        }
    }
}
