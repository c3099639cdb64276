//! Remote key sets: when to fetch them, and what to do with an answer.
//!
//! The root context owns every fetch (as Envoy's `jwt_authn` does): callouts are dispatched
//! only from root callbacks (configure, tick, callout answer), so the SDK delivers every
//! answer to the root, whatever happens to the request that wanted new keys. A request only
//! *asks* for a refetch ([`Scheduler::ask_refetch`]) and shortens the root's tick so the
//! fetch starts within milliseconds.
//!
//! Every fetch in flight has a deadline (the callout timeout plus a margin): past it the
//! fetch is reclaimed as failed, so an answer that never comes cannot stop refreshes.
//! Failures back off exponentially (capped, and never beyond the refresh period).
//!
//! The last good key set of each JWKS URI is also kept in the VM's shared data, and a new
//! root (a policy push, a VM reloaded after a crash) starts from it: a push during an IdP
//! outage must not turn every authenticated request into 503 (it is how access is revoked).
//! Only the verified-parse result is stored (the keys, bounded like a fetched set) and it is
//! parsed again on adoption; shared data is trusted like the VM's own configuration.
//!
//! One fetch per Envoy, not one per worker: shared data is shared by every worker's VM (same
//! `vm_id`), so a root whose fetch is due first looks for a newer set another root published
//! and adopts it; otherwise it takes the URI's fetch lease ([`Lease`], compare-and-swap) and
//! fetches, and the others wait, polling on their (shortened) tick, until the holder
//! publishes the set, records a failure (they back off with it, as after their own) or lets
//! the lease run out (one of them takes over). A lease lasts the callout timeout plus the
//! deadline margin, so no root waits longer for a holder than for its own fetch. When
//! shared data cannot be used, a root fetches for itself, as each did before.

use std::cell::RefCell;
use std::hash::BuildHasher;

use claimgate_core::compiled::CompiledIssuer;
use claimgate_core::keys::{
    JwkKey, JwksError, KeySet, MAX_JWKS_BYTES, MAX_JWKS_KEYS, ParsedJwks, parse_jwks_bytes,
};
use claimgate_core::mesh::HttpEndpoint;
use serde::{Deserialize, Serialize};

use crate::host::{CAS_MISMATCH, Host};
use crate::metrics::Counter;
use crate::state::Shared;

/// Added to the callout timeout to get a fetch's deadline.
pub const DEADLINE_MARGIN_MS: u64 = 2_000;
/// Least time between two refetches requests ask for (unknown `kid`).
pub const REFETCH_MIN_INTERVAL_MS: u64 = 10_000;
/// First retry delay after a failure; doubled per consecutive failure.
pub const BACKOFF_BASE_MS: u64 = 1_000;
/// Longest retry delay after failures.
pub const BACKOFF_MAX_MS: u64 = 60_000;
/// The root's regular tick.
pub const TICK_MS: u32 = 1_000;
/// The root's tick while a requested refetch waits to be dispatched.
pub const FAST_TICK_MS: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    token: u32,
    deadline_ms: u64,
}

/// The fetch state of one remote issuer.
#[derive(Debug, Clone)]
struct IssuerFetch {
    issuer: usize,
    next_due_ms: u64,
    in_flight: Option<InFlight>,
    failures: u32,
    refetch_wanted: bool,
    last_refetch_ms: Option<u64>,
    /// A fetch has finished (either way): holding for the first keys is over unless another
    /// fetch is under way.
    settled: bool,
    /// When the installed keys were fetched (by this root or another): a published set is
    /// adopted only when it is newer.
    installed_at_ms: Option<u64>,
    /// Another root holds the fetch lease: poll shared data at every tick.
    waiting_for_peer: bool,
}

/// When each remote issuer's key set is fetched.
#[derive(Debug, Default)]
pub struct Scheduler {
    fetches: Vec<IssuerFetch>,
    /// This root's name in fetch leases: random, so roots of different workers (whose
    /// context ids repeat) never take each other's lease for their own.
    holder: u64,
}

impl Scheduler {
    /// Every issuer due now.
    pub fn new(issuers: impl Iterator<Item = usize>) -> Scheduler {
        Scheduler {
            fetches: issuers
                .map(|issuer| IssuerFetch {
                    issuer,
                    next_due_ms: 0,
                    in_flight: None,
                    failures: 0,
                    refetch_wanted: false,
                    last_refetch_ms: None,
                    settled: false,
                    installed_at_ms: None,
                    waiting_for_peer: false,
                })
                .collect(),
            // Seeded from the host's random source (WASI `random_get`), as every HashMap is.
            holder: std::collections::hash_map::RandomState::new()
                .hash_one(0u8)
                .max(1),
        }
    }

    fn get(&self, issuer: usize) -> Option<&IssuerFetch> {
        self.fetches.iter().find(|f| f.issuer == issuer)
    }

    fn get_mut(&mut self, issuer: usize) -> Option<&mut IssuerFetch> {
        self.fetches.iter_mut().find(|f| f.issuer == issuer)
    }

    /// Issuers to fetch now: nothing in flight, and due, asked for, or waiting for another
    /// root's fetch.
    pub fn due(&self, now_ms: u64) -> Vec<usize> {
        self.fetches
            .iter()
            .filter(|f| {
                f.in_flight.is_none()
                    && (f.refetch_wanted || f.waiting_for_peer || f.next_due_ms <= now_ms)
            })
            .map(|f| f.issuer)
            .collect()
    }

    /// Whether a set fetched at `fetched_at_ms` by another root serves the issuer now: newer
    /// than its keys and, when a request asked for a refetch, fetched no longer before the
    /// ask than this root's own refetches are apart (a set that fresh is what its own
    /// refetch would have been refused for).
    fn would_adopt(&self, issuer: usize, fetched_at_ms: u64) -> bool {
        self.get(issuer).is_some_and(|f| {
            f.installed_at_ms.is_none_or(|at| fetched_at_ms > at)
                && (!f.refetch_wanted
                    || f.last_refetch_ms.is_none_or(|asked| {
                        fetched_at_ms.saturating_add(REFETCH_MIN_INTERVAL_MS) >= asked
                    }))
        })
    }

    /// Another root holds the issuer's fetch lease: wait for its set (polled at every tick).
    pub fn wait_for_peer(&mut self, issuer: usize) {
        if let Some(f) = self.get_mut(issuer) {
            f.waiting_for_peer = true;
        }
    }

    /// Another root's fetch failed: back off with its failure count until `retry_at_ms`, as
    /// after a failure of this root's own.
    pub fn peer_failed(&mut self, issuer: usize, failures: u32, retry_at_ms: u64) {
        if let Some(f) = self.get_mut(issuer) {
            f.failures = failures.max(1);
            f.settled = true;
            f.refetch_wanted = false;
            f.waiting_for_peer = false;
            f.next_due_ms = retry_at_ms;
        }
    }

    /// A fetch was dispatched.
    pub fn started(&mut self, issuer: usize, token: u32, now_ms: u64, timeout_ms: u64) {
        if let Some(f) = self.get_mut(issuer) {
            f.in_flight = Some(InFlight {
                token,
                deadline_ms: now_ms
                    .saturating_add(timeout_ms)
                    .saturating_add(DEADLINE_MARGIN_MS),
            });
            f.refetch_wanted = false;
            f.waiting_for_peer = false;
        }
    }

    /// The issuer whose fetch this callout token is, ending that fetch (`None` for a token
    /// that is not, or no longer, in flight: a reclaimed fetch's late answer).
    pub fn finish(&mut self, token: u32) -> Option<usize> {
        let f = self
            .fetches
            .iter_mut()
            .find(|f| f.in_flight.is_some_and(|i| i.token == token))?;
        f.in_flight = None;
        f.settled = true;
        Some(f.issuer)
    }

    /// Fetches past their deadline: reclaimed as failures. Returns their issuers.
    pub fn reclaim_overdue(&mut self, now_ms: u64) -> Vec<usize> {
        let overdue: Vec<usize> = self
            .fetches
            .iter()
            .filter(|f| f.in_flight.is_some_and(|i| now_ms > i.deadline_ms))
            .map(|f| f.issuer)
            .collect();
        for issuer in &overdue {
            if let Some(f) = self.get_mut(*issuer) {
                f.in_flight = None;
                f.settled = true;
            }
        }
        overdue
    }

    /// Keys fetched at `fetched_at_ms` (by this root or another) are installed: next fetch
    /// a full refresh period after it.
    pub fn succeeded(&mut self, issuer: usize, fetched_at_ms: u64, refresh_ms: u64) {
        if let Some(f) = self.get_mut(issuer) {
            f.failures = 0;
            f.settled = true;
            f.waiting_for_peer = false;
            f.refetch_wanted = false;
            f.installed_at_ms = Some(fetched_at_ms);
            f.next_due_ms = fetched_at_ms.saturating_add(refresh_ms);
        }
    }

    /// The failures in a row of an issuer's fetches, and when the next may start.
    fn backoff_state(&self, issuer: usize) -> (u32, u64) {
        self.get(issuer)
            .map_or((0, 0), |f| (f.failures, f.next_due_ms))
    }

    /// The fetch failed (or could not start): retry after an exponential backoff.
    pub fn failed(&mut self, issuer: usize, now_ms: u64, refresh_ms: u64) {
        if let Some(f) = self.get_mut(issuer) {
            f.failures = f.failures.saturating_add(1);
            f.settled = true;
            f.refetch_wanted = false;
            f.waiting_for_peer = false;
            f.in_flight = None;
            f.next_due_ms = now_ms.saturating_add(backoff_ms(f.failures, refresh_ms));
        }
    }

    /// A request met a `kid` the issuer's keys lack. True when a fetch is under way or will
    /// start at the next tick (the request may wait for it); false when one ran moments ago or
    /// the issuer is backing off after failures (the request is refused at once).
    pub fn ask_refetch(&mut self, issuer: usize, now_ms: u64) -> bool {
        let Some(f) = self.get_mut(issuer) else {
            return false;
        };
        if f.in_flight.is_some() || f.refetch_wanted {
            return true;
        }
        let recent = f
            .last_refetch_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < REFETCH_MIN_INTERVAL_MS);
        let backing_off = f.failures > 0 && now_ms < f.next_due_ms;
        if recent || backing_off {
            return false;
        }
        f.refetch_wanted = true;
        f.last_refetch_ms = Some(now_ms);
        true
    }

    /// Whether a request waiting for the issuer's first keys may still get them from a fetch
    /// under way (or not yet settled).
    pub fn first_keys_pending(&self, issuer: usize) -> bool {
        self.get(issuer).is_some_and(|f| {
            !f.settled || f.in_flight.is_some() || f.refetch_wanted || f.waiting_for_peer
        })
    }

    /// The issuers whose keys may still come from a fetch under way, asked for or awaited
    /// from another root ([`Scheduler::first_keys_pending`]): requests may be held for them.
    pub fn awaited(&self) -> Vec<usize> {
        self.fetches
            .iter()
            .map(|f| f.issuer)
            .filter(|issuer| self.first_keys_pending(*issuer))
            .collect()
    }

    /// Whether a requested refetch still waits for dispatch, or a root waits for another
    /// root's fetch (the root's tick stays short for both).
    pub fn refetch_waiting(&self) -> bool {
        self.fetches
            .iter()
            .any(|f| (f.refetch_wanted || f.waiting_for_peer) && f.in_flight.is_none())
    }
}

/// Delay before retry number `failures` (1-based).
pub fn backoff_ms(failures: u32, refresh_ms: u64) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_BASE_MS
        .saturating_mul(1u64 << doublings)
        .min(BACKOFF_MAX_MS)
        .min(refresh_ms.max(BACKOFF_BASE_MS))
}

// === Keys kept across configurations and shared across workers ===

/// What a root keeps in shared data for the roots after it and beside it.
#[derive(Serialize, Deserialize)]
struct KeptKeys {
    fetched_at_ms: u64,
    keys: Vec<JwkKey>,
}

fn kept_key(uri: &str) -> String {
    format!("claimgate.jwks.v1 {uri}")
}

/// Publishes a freshly fetched key set for later roots and the other workers (best effort).
fn keep(host: &dyn Host, uri: &str, keys: &[JwkKey], now_ms: u64) {
    let kept = KeptKeys {
        fetched_at_ms: now_ms,
        keys: keys.to_vec(),
    };
    if let Ok(bytes) = serde_json::to_vec(&kept)
        && bytes.len() <= MAX_JWKS_BYTES
    {
        let _ = host.set_shared_data(&kept_key(uri), &bytes);
    }
}

/// The key set published for a URI, if it is usable.
fn kept(host: &dyn Host, uri: &str) -> Option<KeptKeys> {
    let bytes = host.shared_data(&kept_key(uri)).ok().flatten()?;
    let kept = serde_json::from_slice::<KeptKeys>(&bytes).ok()?;
    (!kept.keys.is_empty() && kept.keys.len() <= MAX_JWKS_KEYS).then_some(kept)
}

/// Installs a key set fetched at `fetched_at_ms` (by this root or another) for an issuer:
/// tokens verified with a withdrawn key are checked again, failures are forgotten whenever
/// the keys change (a new key may verify them), and the next fetch is one refresh period
/// after that fetch.
fn install(
    host: &dyn Host,
    s: &mut Shared,
    issuer: usize,
    config: &CompiledIssuer,
    keys: Vec<JwkKey>,
    fetched_at_ms: u64,
) {
    // Keeps the issuer's HMAC secret beside the fetched keys.
    let set = KeySet::for_issuer(config, &keys);
    let old = s.fetched_keys.get(&issuer);
    let withdrawn = old.is_some_and(|old| old.iter().any(|k| !keys.contains(k)));
    let added = old.is_none_or(|old| keys.iter().any(|k| !old.contains(k)));
    if withdrawn {
        s.cache.clear_verified();
    }
    if withdrawn || added {
        s.cache.clear_failures();
    }
    s.fetched_keys.insert(issuer, keys);
    s.remote.set(issuer, set);
    s.metrics.keys_fetched(host, issuer, fetched_at_ms);
    s.scheduler
        .succeeded(issuer, fetched_at_ms, refresh_ms(Some(config)));
}

/// Installs the set another root published for the issuer's URI when it serves the issuer
/// now (see [`Scheduler::would_adopt`]). True when it did.
fn adopt_newer(host: &dyn Host, s: &mut Shared, issuer: usize, now_ms: u64) -> bool {
    let engine = s.engine.clone();
    let Some(config) = engine.policy().issuers.get(issuer) else {
        return false;
    };
    let Some(remote) = config.remote_jwks.as_ref() else {
        return false;
    };
    let Some(kept) = kept(host, &remote.uri) else {
        return false;
    };
    let fetched_at_ms = kept.fetched_at_ms.min(now_ms);
    if !s.scheduler.would_adopt(issuer, fetched_at_ms)
        || KeySet::for_issuer(config, &kept.keys).is_empty()
    {
        return false;
    }
    let age_s = now_ms.saturating_sub(fetched_at_ms) / 1000;
    log::info!(
        "claimgate: issuer `{}`: {} keys another root fetched {age_s} s ago",
        bounded(&config.name, 64),
        kept.keys.len()
    );
    install(host, s, issuer, config, kept.keys, fetched_at_ms);
    s.metrics.bump(host, Counter::JwksAdopted);
    true
}

/// Installs the key sets earlier roots (or other workers) fetched, and schedules each
/// issuer's next fetch one refresh period after that fetch. Call before the first
/// [`dispatch_due`].
pub fn adopt_kept(host: &dyn Host, shared: &RefCell<Shared>, now_ms: u64) {
    let mut guard = shared.borrow_mut();
    let s = &mut *guard;
    let engine = s.engine.clone();
    for (issuer, _) in engine.remote_issuers() {
        adopt_newer(host, s, issuer, now_ms);
    }
}

/// Who fetches a JWKS URI now, kept in shared data under [`lease_key`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    /// The root fetching (its [`Scheduler`] holder name); 0: nobody.
    holder: u64,
    /// Past this (ms) the lease is free again, whoever held it.
    until_ms: u64,
    /// Consecutive failed fetches of the URI, whichever root ran them.
    failures: u32,
    /// No fetch before this (ms): the backoff after the last failure.
    retry_at_ms: u64,
}

fn lease_key(uri: &str) -> String {
    format!("claimgate.jwks.lease.v1 {uri}")
}

/// What a root whose fetch is due does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Fetch: the lease is taken (or shared data cannot be used: fetch as if alone).
    Fetch,
    /// Another root is fetching: poll again at the next tick.
    Wait,
    /// Another root's fetch failed: back off with its count until `retry_at_ms`.
    BackOff { failures: u32, retry_at_ms: u64 },
}

/// Tries to take the URI's fetch lease for `lease_ms`.
fn take_turn(host: &dyn Host, uri: &str, holder: u64, now_ms: u64, lease_ms: u64) -> Turn {
    let key = lease_key(uri);
    // A few tries: each lost compare-and-swap means another root moved first, and the next
    // read sees what it did.
    for _ in 0..4 {
        let Ok((bytes, cas)) = host.shared_data_cas(&key) else {
            return Turn::Fetch;
        };
        // Unreadable (another build's format): free.
        let lease: Lease = bytes
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if lease.holder != 0 && now_ms < lease.until_ms {
            return Turn::Wait;
        }
        if now_ms < lease.retry_at_ms {
            return Turn::BackOff {
                failures: lease.failures,
                retry_at_ms: lease.retry_at_ms,
            };
        }
        let taken = Lease {
            holder,
            until_ms: now_ms.saturating_add(lease_ms),
            ..lease
        };
        let Ok(value) = serde_json::to_vec(&taken) else {
            return Turn::Fetch;
        };
        match host.set_shared_data_cas(&key, &value, cas) {
            Ok(()) => return Turn::Fetch,
            Err(error) if error == CAS_MISMATCH => continue,
            Err(_) => return Turn::Fetch,
        }
    }
    Turn::Wait
}

/// Gives the URI's lease back after this root's fetch: with the failure count and the
/// backoff it ends in (both zero after a success). Left alone when another root holds it
/// now (this root's fetch ran past its lease).
fn release_lease(host: &dyn Host, uri: &str, holder: u64, failures: u32, retry_at_ms: u64) {
    let key = lease_key(uri);
    for _ in 0..4 {
        let Ok((bytes, cas)) = host.shared_data_cas(&key) else {
            return;
        };
        let lease: Lease = bytes
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if lease.holder != holder && lease.holder != 0 {
            return;
        }
        let released = Lease {
            holder: 0,
            until_ms: 0,
            failures,
            retry_at_ms,
        };
        let Ok(value) = serde_json::to_vec(&released) else {
            return;
        };
        match host.set_shared_data_cas(&key, &value, cas) {
            Err(error) if error == CAS_MISMATCH => continue,
            _ => return,
        }
    }
}

/// Records a failed fetch of this root's: local backoff, then the lease carries it to the
/// other roots.
fn fetch_failed(host: &dyn Host, s: &mut Shared, issuer: usize, now_ms: u64) {
    s.metrics.bump(host, Counter::JwksFetchFailure);
    let config = s.engine.policy().issuers.get(issuer).cloned();
    s.scheduler
        .failed(issuer, now_ms, refresh_ms(config.as_ref()));
    if let Some(remote) = config.as_ref().and_then(|c| c.remote_jwks.as_ref()) {
        let (failures, retry_at_ms) = s.scheduler.backoff_state(issuer);
        release_lease(host, &remote.uri, s.scheduler.holder, failures, retry_at_ms);
    }
}

/// The root is done (its policy replaced or removed): gives back the leases of its fetches
/// still under way, so another root takes over at once instead of when the lease runs out.
pub fn release_leases(host: &dyn Host, shared: &RefCell<Shared>) {
    let s = shared.borrow();
    for (issuer, config) in s.engine.remote_issuers() {
        let in_flight = s
            .scheduler
            .get(issuer)
            .is_some_and(|f| f.in_flight.is_some());
        if let (true, Some(remote)) = (in_flight, config.remote_jwks.as_ref()) {
            let (failures, _) = s.scheduler.backoff_state(issuer);
            release_lease(host, &remote.uri, s.scheduler.holder, failures, 0);
        }
    }
}

// === Fetching ===

/// Starts every fetch that is due (adopting another root's newer set instead where there is
/// one, waiting where another root is fetching). Call only from root callbacks (see the
/// module docs).
pub fn dispatch_due(host: &dyn Host, shared: &RefCell<Shared>, now_ms: u64) {
    let mut guard = shared.borrow_mut();
    let s = &mut *guard;
    let mut waiting = false;
    for issuer in s.scheduler.due(now_ms) {
        let engine = s.engine.clone();
        let Some(config) = engine
            .policy()
            .issuers
            .get(issuer)
            .and_then(|i| i.remote_jwks.as_ref())
        else {
            continue;
        };
        if adopt_newer(host, s, issuer, now_ms) {
            continue;
        }
        let lease_ms = config.timeout_ms.saturating_add(DEADLINE_MARGIN_MS);
        match take_turn(host, &config.uri, s.scheduler.holder, now_ms, lease_ms) {
            Turn::Wait => {
                s.scheduler.wait_for_peer(issuer);
                waiting = true;
                continue;
            }
            Turn::BackOff {
                failures,
                retry_at_ms,
            } => {
                s.scheduler.peer_failed(issuer, failures, retry_at_ms);
                continue;
            }
            Turn::Fetch => {}
        }
        // The lease was free because the holder just published and let go: its set serves.
        if adopt_newer(host, s, issuer, now_ms) {
            release_lease(host, &config.uri, s.scheduler.holder, 0, 0);
            continue;
        }
        let name = issuer_name(&s.engine, issuer);
        // The compiler checked the URL with the same parser.
        let dispatched = HttpEndpoint::parse(&config.uri)
            .map_err(|e| e.to_string())
            .and_then(|endpoint| {
                let headers = [
                    (":method", "GET"),
                    (":path", endpoint.path.as_str()),
                    (":authority", endpoint.authority.as_str()),
                    ("accept", "application/json"),
                ];
                host.dispatch_http_call(&config.cluster, &headers, config.timeout_ms)
                    .map_err(|e| e.to_string())
            });
        match dispatched {
            Ok(token) => {
                s.metrics.bump(host, Counter::JwksFetchStarted);
                s.scheduler
                    .started(issuer, token, now_ms, config.timeout_ms);
            }
            Err(error) => {
                log::warn!(
                    "claimgate: issuer `{name}`: cannot fetch JWKS {} via cluster `{}`: {error}",
                    config.uri,
                    config.cluster
                );
                fetch_failed(host, s, issuer, now_ms);
            }
        }
    }
    // Held requests must not wait a whole regular tick for the other root's keys.
    if waiting && !s.fast_tick && host.set_tick_period_ms(FAST_TICK_MS).is_ok() {
        s.fast_tick = true;
    }
}

/// Reclaims fetches past their deadline.
pub fn reclaim_overdue(host: &dyn Host, shared: &RefCell<Shared>, now_ms: u64) {
    let mut guard = shared.borrow_mut();
    let s = &mut *guard;
    let overdue = s.scheduler.reclaim_overdue(now_ms);
    for issuer in &overdue {
        log::warn!(
            "claimgate: issuer `{}`: JWKS fetch got no answer before its deadline; reclaimed, keeping the last good keys",
            issuer_name(&s.engine, *issuer)
        );
        fetch_failed(host, s, *issuer, now_ms);
    }
}

/// Why a fetched key set was not installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The call failed (timeout, reset, no cluster): no `:status`.
    NoAnswer,
    /// The status was not 200.
    Status(String),
    /// The set is refused by the core (too large, too many keys, not JSON, no usable key).
    Invalid(JwksError),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::NoAnswer => f.write_str("no answer (timeout or connection failure)"),
            FetchError::Status(status) => write!(f, "status {status}"),
            FetchError::Invalid(error) => write!(f, "{}", bounded(&error.to_string(), 600)),
        }
    }
}

/// Reads a callout answer into a key set. A body the host says is over the core's limit is
/// refused without reading it; otherwise at most one byte past the limit is read (a host that
/// under-reports the size cannot slip more in) and the core checks size and key count.
pub fn read_answer(host: &dyn Host, body_size: usize) -> Result<ParsedJwks, FetchError> {
    let status = host
        .call_response_status()
        .ok()
        .flatten()
        .ok_or(FetchError::NoAnswer)?;
    if status != b"200" {
        return Err(FetchError::Status(
            String::from_utf8_lossy(&status).chars().take(16).collect(),
        ));
    }
    if body_size > MAX_JWKS_BYTES {
        return Err(FetchError::Invalid(JwksError::TooLarge {
            bytes: body_size,
        }));
    }
    let body = host
        .call_response_body(MAX_JWKS_BYTES + 1)
        .ok()
        .flatten()
        .unwrap_or_default();
    parse_jwks_bytes(&body).map_err(FetchError::Invalid)
}

/// Handles a callout answer delivered to the root. True when it settled one of our fetches.
pub fn on_answer(
    host: &dyn Host,
    shared: &RefCell<Shared>,
    token: u32,
    body_size: usize,
    now_ms: u64,
) -> bool {
    let mut guard = shared.borrow_mut();
    let s = &mut *guard;
    let Some(issuer) = s.scheduler.finish(token) else {
        return false;
    };
    let engine = s.engine.clone();
    let Some(config) = engine.policy().issuers.get(issuer) else {
        return true;
    };
    match read_answer(host, body_size) {
        Ok(jwks) => {
            if !jwks.skipped.is_empty() {
                // One line per fetch, however many keys were left out (bounded by the core);
                // encryption keys alone are expected (Keycloak publishes one) and logged at info.
                let level = if jwks.skipped.only_encryption_keys() {
                    log::Level::Info
                } else {
                    log::Level::Warn
                };
                log::log!(
                    level,
                    "claimgate: issuer `{}`: {}",
                    bounded(&config.name, 64),
                    bounded(&jwks.skipped.to_string(), 1_000)
                );
            }
            // Published before the lease is let go: a root that takes the lease next finds
            // this set and adopts it instead of fetching again.
            if let Some(remote) = &config.remote_jwks {
                keep(host, &remote.uri, &jwks.keys, now_ms);
            }
            install(host, s, issuer, config, jwks.keys, now_ms);
            log::info!(
                "claimgate: issuer `{}`: {} keys fetched",
                bounded(&config.name, 64),
                s.remote.get(issuer).map_or(0, KeySet::len)
            );
            s.metrics.bump(host, Counter::JwksFetchSuccess);
            if let Some(remote) = &config.remote_jwks {
                release_lease(host, &remote.uri, s.scheduler.holder, 0, 0);
            }
        }
        Err(error) => {
            log::warn!(
                "claimgate: issuer `{}`: JWKS fetch failed ({error}); keeping the last good keys",
                bounded(&config.name, 64)
            );
            fetch_failed(host, s, issuer, now_ms);
        }
    }
    true
}

fn refresh_ms(config: Option<&CompiledIssuer>) -> u64 {
    config
        .and_then(|c| c.remote_jwks.as_ref())
        .map_or(600_000, |r| r.refresh_secs.saturating_mul(1000))
}

fn issuer_name(engine: &claimgate_core::Engine, issuer: usize) -> String {
    engine
        .policy()
        .issuers
        .get(issuer)
        .map_or_else(String::new, |i| bounded(&i.name, 64))
}

/// At most `max` characters of `text`, marked when cut.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or("")),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockHost;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_the_refresh_period() {
        let refresh = 600_000;
        let delays: Vec<u64> = (1..=9).map(|n| backoff_ms(n, refresh)).collect();
        assert_eq!(
            delays,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
        assert_eq!(backoff_ms(10, 5_000), 5_000);
        assert_eq!(backoff_ms(u32::MAX, refresh), BACKOFF_MAX_MS);
    }

    #[test]
    fn a_fetch_that_never_answers_is_reclaimed_after_its_deadline() {
        let mut s = Scheduler::new([0].into_iter());
        assert_eq!(s.due(0), vec![0]);
        s.started(0, 7, 0, 5_000);
        assert!(s.due(1_000_000).is_empty(), "in flight: not due again");
        assert!(s.reclaim_overdue(5_000 + DEADLINE_MARGIN_MS).is_empty());
        assert_eq!(s.reclaim_overdue(5_001 + DEADLINE_MARGIN_MS), vec![0]);
        s.failed(0, 8_000, 600_000);
        // The late answer is not ours any more.
        assert_eq!(s.finish(7), None);
        assert!(s.due(8_500).is_empty(), "backing off");
        assert_eq!(s.due(9_000), vec![0]);
    }

    #[test]
    fn requests_ask_and_the_root_fetches_rate_limited() {
        let mut s = Scheduler::new([0].into_iter());
        s.started(0, 1, 0, 1_000);
        s.finish(1);
        s.succeeded(0, 100, 600_000);
        assert!(s.due(200).is_empty());
        assert!(s.ask_refetch(0, 200), "first ask: wait for the fetch");
        assert!(s.refetch_waiting());
        assert!(s.ask_refetch(0, 201), "asked already: wait too");
        assert_eq!(s.due(202), vec![0]);
        s.started(0, 3, 202, 1_000);
        assert!(!s.refetch_waiting());
        assert!(s.ask_refetch(0, 203), "in flight: wait for it");
        s.finish(3);
        s.succeeded(0, 300, 600_000);
        assert!(!s.ask_refetch(0, 5_000), "a refetch ran moments ago");
        assert!(s.ask_refetch(0, 200 + REFETCH_MIN_INTERVAL_MS));
    }

    #[test]
    fn no_refetch_while_backing_off() {
        let mut s = Scheduler::new([0].into_iter());
        s.started(0, 1, 0, 1_000);
        s.finish(1);
        s.failed(0, 100, 600_000);
        assert!(!s.ask_refetch(0, 500));
        assert!(s.ask_refetch(0, 1_100));
    }

    #[test]
    fn first_keys_pending_until_a_fetch_settles() {
        let mut s = Scheduler::new([0].into_iter());
        assert!(s.first_keys_pending(0));
        s.started(0, 1, 0, 1_000);
        assert!(s.first_keys_pending(0));
        s.finish(1);
        s.failed(0, 10, 600_000);
        assert!(!s.first_keys_pending(0));
        s.started(0, 3, 2_000, 1_000);
        assert!(s.first_keys_pending(0), "a retry is under way");
    }

    fn answer(status: Option<&str>, body: &[u8]) -> Result<ParsedJwks, FetchError> {
        let host = MockHost::new(0);
        host.answer(status, body);
        read_answer(&host, body.len())
    }

    #[test]
    fn answers_that_are_not_key_sets_fail() {
        assert_eq!(answer(None, b""), Err(FetchError::NoAnswer));
        assert_eq!(
            answer(Some("503"), b"{}"),
            Err(FetchError::Status("503".into()))
        );
        assert!(matches!(
            answer(Some("200"), b"<html>sign in</html>"),
            Err(FetchError::Invalid(JwksError::NotJson(_)))
        ));
        assert_eq!(
            answer(Some("200"), br#"{"keys":[]}"#),
            Err(FetchError::Invalid(JwksError::Empty))
        );
        assert!(matches!(
            answer(Some("200"), b"\xff\xfe"),
            Err(FetchError::Invalid(JwksError::NotJson(_)))
        ));
    }

    #[test]
    fn a_large_body_is_refused_unread() {
        let host = MockHost::new(0);
        host.answer(Some("200"), &vec![b' '; 5 * 1024 * 1024]);
        assert_eq!(
            read_answer(&host, 5 * 1024 * 1024),
            Err(FetchError::Invalid(JwksError::TooLarge {
                bytes: 5 * 1024 * 1024
            }))
        );
        assert!(host.state.borrow().body_reads.is_empty(), "not read at all");
        // A host that under-reports the size: at most one byte past the limit is read.
        assert_eq!(
            read_answer(&host, 10),
            Err(FetchError::Invalid(JwksError::TooLarge {
                bytes: MAX_JWKS_BYTES + 1
            }))
        );
        assert_eq!(host.state.borrow().body_reads, vec![MAX_JWKS_BYTES + 1]);
    }

    #[test]
    fn too_many_keys_fail() {
        let unsupported = r#"{"kty":"oct","k":"AAAA"}"#;
        let jwks = crate::testing::Key::new("k1").jwk();
        let many = format!(
            r#"{{"keys":[{jwks},{}]}}"#,
            vec![unsupported; 100].join(",")
        );
        assert_eq!(
            answer(Some("200"), many.as_bytes()),
            Err(FetchError::Invalid(JwksError::TooManyKeys { count: 101 }))
        );
    }

    /// Four workers' roots on one Envoy: one VM each, one shared data between them (the mock
    /// host's), configured at the same moment.
    fn four_workers(host: &MockHost) -> Vec<std::rc::Rc<RefCell<Shared>>> {
        (0..4)
            .map(|_| crate::testing::configured(host, crate::testing::POLICY))
            .collect()
    }

    fn deliver(host: &MockHost, root: &RefCell<Shared>, token: u32, status: &str, body: &str) {
        host.enter(crate::testing::ROOT);
        host.answer(Some(status), body.as_bytes());
        crate::root::on_answer(host, root, token, body.len());
    }

    fn tick_all(host: &MockHost, roots: &[std::rc::Rc<RefCell<Shared>>]) {
        for root in roots {
            host.enter(crate::testing::ROOT);
            crate::root::tick(host, root);
        }
    }

    /// A stat as Envoy shows it: every VM that defines a name shares one stat.
    fn envoy_stat(host: &MockHost, name: &str) -> u64 {
        let state = host.state.borrow();
        state
            .metrics
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, value)| value)
            .sum()
    }

    fn has_keys(root: &RefCell<Shared>) -> bool {
        root.borrow().remote.get(0).is_some()
    }

    /// Issue 9 target 4: before, each worker's root fetched for itself (4 callouts here).
    #[test]
    fn four_workers_fetch_once_per_refresh_and_the_others_adopt() {
        use crate::testing::{Key, NOW_MS, jwks};
        let host = MockHost::new(NOW_MS);
        let roots = four_workers(&host);
        let callouts = host.callouts();
        assert_eq!(callouts.len(), 1, "one worker fetches, three wait");
        let first = roots
            .iter()
            .filter(|r| r.borrow().scheduler.first_keys_pending(0));
        assert_eq!(
            first.count(),
            4,
            "requests of every worker may hold for the keys"
        );
        let fetcher = roots
            .iter()
            .find(|r| {
                r.borrow()
                    .scheduler
                    .get(0)
                    .is_some_and(|f| f.in_flight.is_some())
            })
            .unwrap()
            .clone();
        assert_eq!(host.state.borrow().tick_period_ms, Some(FAST_TICK_MS));
        let key = Key::new("k1");
        deliver(&host, &fetcher, callouts[0].token, "200", &jwks(&[&key]));
        tick_all(&host, &roots);
        assert!(
            roots.iter().all(|r| has_keys(r)),
            "every worker has the keys"
        );
        assert_eq!(host.callouts().len(), 1);
        assert_eq!(envoy_stat(&host, "claimgate.jwks_fetch_started_total"), 1);
        assert_eq!(envoy_stat(&host, "claimgate.jwks_adopted_total"), 3);
        // A refresh period later: again one fetch for the four.
        host.set_now(Some(NOW_MS + 600_000));
        tick_all(&host, &roots);
        assert_eq!(host.callouts().len(), 2);
        let refresher = roots
            .iter()
            .find(|r| {
                r.borrow()
                    .scheduler
                    .get(0)
                    .is_some_and(|f| f.in_flight.is_some())
            })
            .unwrap()
            .clone();
        let rotated = Key::new("k2");
        deliver(
            &host,
            &refresher,
            host.callouts()[1].token,
            "200",
            &jwks(&[&rotated]),
        );
        host.set_now(Some(NOW_MS + 600_100));
        tick_all(&host, &roots);
        assert_eq!(host.callouts().len(), 2);
        for root in &roots {
            let s = root.borrow();
            assert_eq!(s.fetched_keys.get(&0).map(Vec::len), Some(1));
            assert!(s.fetched_keys.get(&0).unwrap()[0].kid.as_deref() == Some("k2"));
        }
    }

    /// Seen in Envoy: a root configured on the main thread that never ticks took the lease,
    /// and the workers waited for its fetch until the lease ran out.
    #[test]
    fn a_root_that_never_ticks_takes_no_lease() {
        use crate::testing::{NOW_MS, POLICY, ROOT, plugin_config};
        let host = MockHost::new(NOW_MS);
        host.state.borrow_mut().config = Some(plugin_config(POLICY));
        host.enter(ROOT);
        let _silent = crate::root::configure(&host, ROOT).unwrap();
        assert!(host.callouts().is_empty());
        let roots = four_workers(&host);
        assert_eq!(host.callouts().len(), 1);
        assert!(roots.iter().any(|r| {
            r.borrow()
                .scheduler
                .get(0)
                .is_some_and(|f| f.in_flight.is_some())
        }));
    }

    #[test]
    fn a_holder_that_never_answers_is_replaced_when_its_lease_runs_out() {
        use crate::testing::NOW_MS;
        let host = MockHost::new(NOW_MS);
        let roots = four_workers(&host);
        assert_eq!(host.callouts().len(), 1);
        let (waiting, holder): (Vec<_>, Vec<_>) = roots.iter().cloned().partition(|r| {
            r.borrow()
                .scheduler
                .get(0)
                .is_some_and(|f| f.in_flight.is_none())
        });
        assert_eq!(holder.len(), 1);
        // The holder's VM is gone (it never ticks again); the lease is the timeout (5 s)
        // plus the margin.
        host.set_now(Some(NOW_MS + 5_000 + DEADLINE_MARGIN_MS - 1));
        tick_all(&host, &waiting);
        assert_eq!(host.callouts().len(), 1, "still the holder's");
        host.set_now(Some(NOW_MS + 5_000 + DEADLINE_MARGIN_MS));
        tick_all(&host, &waiting);
        assert_eq!(
            host.callouts().len(),
            2,
            "one of the others took over, once"
        );
    }

    #[test]
    fn a_failed_fetch_backs_every_worker_off_and_ends_their_wait() {
        use crate::testing::NOW_MS;
        let host = MockHost::new(NOW_MS);
        let roots = four_workers(&host);
        let fetcher = roots
            .iter()
            .find(|r| {
                r.borrow()
                    .scheduler
                    .get(0)
                    .is_some_and(|f| f.in_flight.is_some())
            })
            .unwrap()
            .clone();
        deliver(&host, &fetcher, host.callouts()[0].token, "503", "");
        host.set_now(Some(NOW_MS + 10));
        tick_all(&host, &roots);
        for root in &roots {
            let s = root.borrow();
            assert!(
                !s.scheduler.first_keys_pending(0),
                "held requests are answered now"
            );
            assert_eq!(s.scheduler.backoff_state(0), (1, NOW_MS + BACKOFF_BASE_MS));
        }
        assert_eq!(host.callouts().len(), 1);
        // The backoff ends: one retry for all.
        host.set_now(Some(NOW_MS + BACKOFF_BASE_MS));
        tick_all(&host, &roots);
        assert_eq!(host.callouts().len(), 2);
        let retrier = roots
            .iter()
            .find(|r| {
                r.borrow()
                    .scheduler
                    .get(0)
                    .is_some_and(|f| f.in_flight.is_some())
            })
            .unwrap()
            .clone();
        deliver(&host, &retrier, host.callouts()[1].token, "503", "");
        host.set_now(Some(NOW_MS + BACKOFF_BASE_MS + 10));
        tick_all(&host, &roots);
        for root in &roots {
            assert_eq!(
                root.borrow().scheduler.backoff_state(0),
                (2, NOW_MS + BACKOFF_BASE_MS + 2 * BACKOFF_BASE_MS),
                "the backoff doubles per failure, whichever worker failed"
            );
        }
    }

    /// Two roots with `k1`, then root 0 refreshing (holding the lease) while root 1 holds
    /// request 7, whose token names `k2`, waiting for root 0's fetch.
    fn a_request_held_for_a_peers_refresh() -> (
        MockHost,
        Vec<std::rc::Rc<RefCell<Shared>>>,
        crate::testing::Key,
    ) {
        use crate::testing::{Key, NOW_MS, claims, jwks, request, run};
        let host = MockHost::new(NOW_MS);
        let roots: Vec<_> = (0..2)
            .map(|_| crate::testing::configured(&host, crate::testing::POLICY))
            .collect();
        let first = host.callouts()[0].token;
        let fetcher = roots
            .iter()
            .position(|r| {
                r.borrow()
                    .scheduler
                    .get(0)
                    .is_some_and(|f| f.in_flight.is_some())
            })
            .unwrap();
        deliver(
            &host,
            &roots[fetcher],
            first,
            "200",
            &jwks(&[&Key::new("k1")]),
        );
        tick_all(&host, &roots);
        assert!(roots.iter().all(|r| has_keys(r)));
        let roots = vec![roots[fetcher].clone(), roots[1 - fetcher].clone()];
        host.set_now(Some(NOW_MS + 600_000));
        tick_all(&host, &roots[..1]);
        assert_eq!(host.callouts().len(), 2, "root 0 refreshes");
        let k2 = Key::new("k2");
        let token = k2.mint(&claims(&[]));
        host.enter(7);
        assert_eq!(
            run(&host, &roots[1], 7, &request("/score", Some(&token))),
            crate::request::Verdict::Held
        );
        host.set_now(Some(NOW_MS + 600_020));
        tick_all(&host, &roots[1..]);
        assert!(roots[1].borrow().scheduler.get(0).unwrap().waiting_for_peer);
        assert_eq!(host.callouts().len(), 2, "root 1 waits for root 0's fetch");
        (host, roots, k2)
    }

    /// Seen in CI (Envoy 1.36, a slow IdP): a request held on a root waiting for another
    /// root's fetch stayed held until the hold limit (10 s) after that fetch failed, instead
    /// of being answered when the failure was known.
    #[test]
    fn a_peers_failed_fetch_answers_the_requests_held_for_it() {
        let (host, roots, _) = a_request_held_for_a_peers_refresh();
        let refresh = host.callouts()[1].token;
        deliver(&host, &roots[0], refresh, "503", "");
        host.set_now(Some(crate::testing::NOW_MS + 600_040));
        tick_all(&host, &roots[1..]);
        let reply = host.replies().into_iter().find(|r| r.context == 7);
        let reply = reply.expect("answered at the tick that learns of the failure");
        assert_eq!(reply.status, 401);
        assert!(reply.body.contains("unknown_key"), "{}", reply.body);
        assert_eq!(roots[1].borrow().held.len(), 0);
    }

    #[test]
    fn a_set_adopted_from_a_peer_releases_the_requests_held_for_it() {
        use crate::testing::{Key, jwks};
        let (host, roots, k2) = a_request_held_for_a_peers_refresh();
        let refresh = host.callouts()[1].token;
        deliver(
            &host,
            &roots[0],
            refresh,
            "200",
            &jwks(&[&Key::new("k1"), &k2]),
        );
        host.set_now(Some(crate::testing::NOW_MS + 600_040));
        tick_all(&host, &roots[1..]);
        assert_eq!(
            host.state.borrow().resumed,
            vec![7],
            "resumed with the adopted keys"
        );
        assert!(host.replies().iter().all(|r| r.context != 7));
        assert_eq!(roots[1].borrow().held.len(), 0);
    }

    /// Found in review: a request held for a refetch (its token names a `kid` the keys lack)
    /// stayed held until the 10 s hold limit when the refetch could not even be dispatched (the
    /// JWKS cluster is gone: `dispatch_http_call` fails): no answer of this root's will release it.
    #[test]
    fn a_refetch_that_cannot_be_dispatched_answers_the_requests_held_for_it() {
        use crate::request::Verdict;
        use crate::testing::{Key, NOW_MS, ROOT, claims, configured, jwks, request, run};
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
        use crate::request::Verdict;
        use crate::testing::{Key, NOW_MS, ROOT, claims, request, run};
        let host = MockHost::new(NOW_MS);
        host.state.borrow_mut().config =
            Some(crate::testing::plugin_config(crate::testing::POLICY));
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

    #[test]
    fn without_usable_shared_data_each_root_fetches_for_itself() {
        use crate::testing::NOW_MS;
        let host = MockHost::new(NOW_MS).failing("shared_data");
        let _roots = four_workers(&host);
        assert_eq!(host.callouts().len(), 4);
    }

    #[test]
    fn bounded_cuts_on_characters() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "abc…");
        assert_eq!(bounded("ééé", 2), "éé…");
    }
}
