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

use std::cell::RefCell;

use claimgate_core::compiled::CompiledIssuer;
use claimgate_core::keys::{
    JwkKey, JwksError, KeySet, MAX_JWKS_BYTES, MAX_JWKS_KEYS, ParsedJwks, parse_jwks_bytes,
};
use claimgate_core::mesh::HttpEndpoint;
use serde::{Deserialize, Serialize};

use crate::host::Host;
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
}

/// When each remote issuer's key set is fetched.
#[derive(Debug, Default)]
pub struct Scheduler {
    fetches: Vec<IssuerFetch>,
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
                })
                .collect(),
        }
    }

    fn get(&self, issuer: usize) -> Option<&IssuerFetch> {
        self.fetches.iter().find(|f| f.issuer == issuer)
    }

    fn get_mut(&mut self, issuer: usize) -> Option<&mut IssuerFetch> {
        self.fetches.iter_mut().find(|f| f.issuer == issuer)
    }

    /// Issuers to fetch now: nothing in flight, and due or asked for.
    pub fn due(&self, now_ms: u64) -> Vec<usize> {
        self.fetches
            .iter()
            .filter(|f| f.in_flight.is_none() && (f.refetch_wanted || f.next_due_ms <= now_ms))
            .map(|f| f.issuer)
            .collect()
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

    /// The fetch succeeded: next one after a full refresh period.
    pub fn succeeded(&mut self, issuer: usize, now_ms: u64, refresh_ms: u64) {
        if let Some(f) = self.get_mut(issuer) {
            f.failures = 0;
            f.settled = true;
            f.next_due_ms = now_ms.saturating_add(refresh_ms);
        }
    }

    /// The fetch failed (or could not start): retry after an exponential backoff.
    pub fn failed(&mut self, issuer: usize, now_ms: u64, refresh_ms: u64) {
        if let Some(f) = self.get_mut(issuer) {
            f.failures = f.failures.saturating_add(1);
            f.settled = true;
            f.refetch_wanted = false;
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
        self.get(issuer)
            .is_some_and(|f| !f.settled || f.in_flight.is_some() || f.refetch_wanted)
    }

    /// Whether a requested refetch still waits for dispatch.
    pub fn refetch_waiting(&self) -> bool {
        self.fetches
            .iter()
            .any(|f| f.refetch_wanted && f.in_flight.is_none())
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

// === Keys kept across configurations ===

/// What a root keeps in shared data for the roots after it.
#[derive(Serialize, Deserialize)]
struct KeptKeys {
    fetched_at_ms: u64,
    keys: Vec<JwkKey>,
}

fn kept_key(uri: &str) -> String {
    format!("claimgate.jwks.v1 {uri}")
}

/// Keeps a freshly fetched key set for later roots (best effort).
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

/// Installs the key sets earlier roots fetched, and schedules each issuer's next fetch one
/// refresh period after that fetch. Call before the first [`dispatch_due`].
pub fn adopt_kept(host: &dyn Host, shared: &RefCell<Shared>, now_ms: u64) {
    let mut guard = shared.borrow_mut();
    let s = &mut *guard;
    let engine = s.engine.clone();
    for (issuer, config) in engine.remote_issuers() {
        let Some(remote) = config.remote_jwks.as_ref() else {
            continue;
        };
        let Ok(Some(bytes)) = host.shared_data(&kept_key(&remote.uri)) else {
            continue;
        };
        let Ok(kept) = serde_json::from_slice::<KeptKeys>(&bytes) else {
            continue;
        };
        if kept.keys.is_empty() || kept.keys.len() > MAX_JWKS_KEYS {
            continue;
        }
        let keys = KeySet::for_issuer(config, &kept.keys);
        if keys.is_empty() {
            continue;
        }
        let age_s = now_ms.saturating_sub(kept.fetched_at_ms) / 1000;
        log::info!(
            "claimgate: issuer `{}`: {} keys from the previous configuration (fetched {age_s} s ago)",
            bounded(&config.name, 64),
            keys.len()
        );
        s.fetched_keys.insert(issuer, kept.keys);
        s.remote.set(issuer, keys);
        s.scheduler.succeeded(
            issuer,
            kept.fetched_at_ms.min(now_ms),
            refresh_ms(Some(config)),
        );
    }
}

// === Fetching ===

/// Starts every fetch that is due. Call only from root callbacks (see the module docs).
pub fn dispatch_due(host: &dyn Host, shared: &RefCell<Shared>, now_ms: u64) {
    let mut guard = shared.borrow_mut();
    let s = &mut *guard;
    for issuer in s.scheduler.due(now_ms) {
        let Some(config) = s
            .engine
            .policy()
            .issuers
            .get(issuer)
            .and_then(|i| i.remote_jwks.as_ref())
        else {
            continue;
        };
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
            Ok(token) => s
                .scheduler
                .started(issuer, token, now_ms, config.timeout_ms),
            Err(error) => {
                log::warn!(
                    "claimgate: issuer `{name}`: cannot fetch JWKS {} via cluster `{}`: {error}",
                    config.uri,
                    config.cluster
                );
                s.metrics.bump(host, Counter::JwksFetchFailure);
                s.scheduler
                    .failed(issuer, now_ms, config.refresh_secs.saturating_mul(1000));
            }
        }
    }
}

/// Reclaims fetches past their deadline; true when one was (held requests then re-decide).
pub fn reclaim_overdue(host: &dyn Host, shared: &RefCell<Shared>, now_ms: u64) -> bool {
    let mut guard = shared.borrow_mut();
    let s = &mut *guard;
    let overdue = s.scheduler.reclaim_overdue(now_ms);
    for issuer in &overdue {
        log::warn!(
            "claimgate: issuer `{}`: JWKS fetch got no answer before its deadline; reclaimed, keeping the last good keys",
            issuer_name(&s.engine, *issuer)
        );
        s.metrics.bump(host, Counter::JwksFetchFailure);
        let refresh = refresh_ms(s.engine.policy().issuers.get(*issuer));
        s.scheduler.failed(*issuer, now_ms, refresh);
    }
    !overdue.is_empty()
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
    let refresh = refresh_ms(Some(config));
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
            // Keeps the issuer's HMAC secret beside the fetched keys.
            let keys = KeySet::for_issuer(config, &jwks.keys);
            let old = s.fetched_keys.get(&issuer);
            let withdrawn = old.is_some_and(|old| old.iter().any(|k| !jwks.keys.contains(k)));
            let added = old.is_none_or(|old| jwks.keys.iter().any(|k| !old.contains(k)));
            // Tokens verified with a withdrawn key are checked again; failures are forgotten
            // whenever the keys change (a new key may verify them).
            if withdrawn {
                s.cache.clear_verified();
            }
            if withdrawn || added {
                s.cache.clear_failures();
            }
            log::info!(
                "claimgate: issuer `{}`: {} keys fetched",
                bounded(&config.name, 64),
                keys.len()
            );
            if let Some(remote) = &config.remote_jwks {
                keep(host, &remote.uri, &jwks.keys, now_ms);
            }
            s.fetched_keys.insert(issuer, jwks.keys);
            s.remote.set(issuer, keys);
            s.metrics.bump(host, Counter::JwksFetchSuccess);
            s.metrics.keys_fetched(host, issuer, now_ms);
            s.scheduler.succeeded(issuer, now_ms, refresh);
        }
        Err(error) => {
            log::warn!(
                "claimgate: issuer `{}`: JWKS fetch failed ({error}); keeping the last good keys",
                bounded(&config.name, 64)
            );
            s.metrics.bump(host, Counter::JwksFetchFailure);
            s.scheduler.failed(issuer, now_ms, refresh);
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

    #[test]
    fn bounded_cuts_on_characters() {
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "abc…");
        assert_eq!(bounded("ééé", 2), "éé…");
    }
}
