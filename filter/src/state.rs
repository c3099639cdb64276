//! What a root context and its HTTP contexts share (one per plugin configuration, per worker
//! VM): the engine, the fetched keys and their schedule, the token caches, the held requests
//! and the metric ids. A policy push makes a new root context, so none of it outlives the
//! policy it came from.

use std::collections::HashMap;
use std::rc::Rc;

use claimgate_core::engine::{Engine, RemoteKeys};
use claimgate_core::keys::JwkKey;

use crate::cache::TokenCache;
use crate::hold::HoldQueue;
use crate::host::Host;
use crate::jwks::Scheduler;
use crate::metrics::Metrics;

/// The shared state.
pub struct Shared {
    /// The policy.
    pub engine: Rc<Engine>,
    /// The root context's id (held requests are released from it).
    pub root_context: u32,
    /// Fetched key sets, ready to verify.
    pub remote: RemoteKeys,
    /// The keys each remote issuer verifies with now, as fetched (to see what changed).
    pub fetched_keys: HashMap<usize, Vec<JwkKey>>,
    /// When to fetch.
    pub scheduler: Scheduler,
    /// Verified and failed tokens.
    pub cache: TokenCache,
    /// Requests waiting for keys.
    pub held: HoldQueue,
    /// Metric ids.
    pub metrics: Metrics,
    /// Whether the root's tick was shortened for a requested refetch.
    pub fast_tick: bool,
    /// The last clock reading (ms): schedules fetches when the clock fails, never decides.
    pub last_clock_ms: u64,
    /// Whether the last tick found no clock (its warning is logged once).
    pub clock_failing: bool,
    /// Envoy's log level for the plugin, read at configuration and at every tick: audit
    /// lines below it are not formatted.
    pub log_level: log::LevelFilter,
}

impl Shared {
    /// State for a freshly configured engine (defines the metrics).
    pub fn new(host: &dyn Host, engine: Rc<Engine>, root_context: u32) -> Shared {
        let scheduler = Scheduler::new(engine.remote_issuers().map(|(index, _)| index));
        let metrics = Metrics::define(host, &engine);
        // Inline keys verify until the first fetch: a fetch that drops one must clear the
        // tokens they verified.
        let fetched_keys = engine
            .remote_issuers()
            .map(|(index, issuer)| (index, issuer.keys.clone()))
            .collect();
        Shared {
            engine,
            root_context,
            remote: RemoteKeys::default(),
            fetched_keys,
            scheduler,
            cache: TokenCache::default(),
            held: HoldQueue::default(),
            metrics,
            fast_tick: false,
            last_clock_ms: 0,
            clock_failing: false,
            log_level: crate::audit::host_level(host),
        }
    }
}
