//! Per-root state and the request path: decide, then reply, hold or continue.
//!
//! Host calls use the `Result`-returning `hostcalls` functions, never the SDK's unwrapping
//! helpers: a failed host call denies the request instead of trapping the VM.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;

use claimgate_core::DenyReason;
use claimgate_core::compiled::BeforeFirstFetch;
use claimgate_core::engine::{Decision, Engine, Identity, RemoteKeys, Request};
use claimgate_core::keys::{JwkKey, KeySet, parse_jwks_bytes};
use claimgate_core::matcher::Captures;
use claimgate_core::mesh::HttpEndpoint;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};

/// Most verified tokens kept per worker.
const CACHE_MAX_ENTRIES: usize = 10_000;
/// Most bytes (tokens + identities, estimated) kept per worker.
const CACHE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Least time between two refetches triggered by an unknown `kid`.
const REFETCH_MIN_INTERVAL_SECS: u64 = 10;
/// Longest a request is held for keys.
const HOLD_MAX_SECS: u64 = 10;

/// What happened to the request.
pub enum Verdict {
    /// Let it through.
    Continue,
    /// A local reply was sent.
    Replied,
    /// Paused until keys arrive.
    Held,
}

struct CachedIdentity {
    identity: Rc<Identity>,
    valid_until: u64,
    bytes: usize,
}

struct IssuerFetch {
    next_fetch: u64,
    in_flight: Option<u32>,
    last_refetch: u64,
    fetched_once: bool,
}

/// The request headers the filter owns, named once per policy (`<prefix><field>`).
struct IdentityHeaders {
    subject: String,
    issuer: String,
    client: String,
    roles: String,
    rule: String,
    policy_version: String,
}

impl IdentityHeaders {
    fn new(prefix: &str) -> IdentityHeaders {
        IdentityHeaders {
            subject: format!("{prefix}subject"),
            issuer: format!("{prefix}issuer"),
            client: format!("{prefix}client"),
            roles: format!("{prefix}roles"),
            rule: format!("{prefix}rule"),
            policy_version: format!("{prefix}policy-version"),
        }
    }
}

/// State shared by a root context and its HTTP contexts.
pub struct Shared {
    engine: Rc<Engine>,
    identity_headers: Rc<IdentityHeaders>,
    remote: RemoteKeys,
    fetch: HashMap<usize, IssuerFetch>,
    /// Verified tokens; the key is shared with `cache_order` (one copy of each token).
    cache: HashMap<Rc<str>, CachedIdentity>,
    cache_order: VecDeque<Rc<str>>,
    cache_bytes: usize,
    held: Vec<(u32, u64)>,
    /// The keys each remote issuer verifies with now (inline keys until the first fetch).
    fetched_keys: HashMap<usize, Vec<JwkKey>>,
    metrics: Metrics,
}

impl Shared {
    /// State for a freshly configured engine.
    pub fn new(engine: Rc<Engine>) -> Shared {
        let fetch = engine
            .remote_issuers()
            .map(|(index, _)| {
                (
                    index,
                    IssuerFetch {
                        next_fetch: 0,
                        in_flight: None,
                        last_refetch: 0,
                        fetched_once: false,
                    },
                )
            })
            .collect();
        let fetched_keys = engine
            .remote_issuers()
            .map(|(index, issuer)| (index, issuer.keys.clone()))
            .collect();
        let metrics = Metrics::define(&engine);
        let identity_headers = Rc::new(IdentityHeaders::new(
            &engine.policy().token.identity_header_prefix,
        ));
        Shared {
            engine,
            identity_headers,
            remote: RemoteKeys::default(),
            fetch,
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            cache_bytes: 0,
            held: Vec::new(),
            fetched_keys,
            metrics,
        }
    }

    fn cached(&mut self, token: &str, now: u64) -> Option<Rc<Identity>> {
        let entry = self.cache.get(token)?;
        if entry.valid_until < now {
            return None;
        }
        Some(entry.identity.clone())
    }

    fn remember(&mut self, token: &str, identity: Rc<Identity>, now: u64) {
        let skew = self
            .engine
            .policy()
            .issuers
            .get(identity.issuer_index)
            .map_or(0, |i| i.clock_skew_secs);
        // Tokens without `exp` are re-verified every five minutes.
        let valid_until = identity
            .exp
            .map_or(now + 300, |exp| exp.saturating_add(skew));
        let bytes = token.len() + identity.roles.iter().map(String::len).sum::<usize>() + 256;
        while (self.cache.len() >= CACHE_MAX_ENTRIES || self.cache_bytes + bytes > CACHE_MAX_BYTES)
            && !self.cache_order.is_empty()
        {
            if let Some(old) = self.cache_order.pop_front() {
                if let Some(entry) = self.cache.remove(&old) {
                    self.cache_bytes = self.cache_bytes.saturating_sub(entry.bytes);
                }
            }
        }
        let key: Rc<str> = Rc::from(token);
        if let Some(previous) = self.cache.insert(
            key.clone(),
            CachedIdentity {
                identity,
                valid_until,
                bytes,
            },
        ) {
            self.cache_bytes = self.cache_bytes.saturating_sub(previous.bytes);
        } else {
            self.cache_order.push_back(key);
        }
        self.cache_bytes += bytes;
    }

    fn clear_cache(&mut self) {
        self.cache.clear();
        self.cache_order.clear();
        self.cache_bytes = 0;
    }
}

// === Metrics ===

struct Metrics {
    allowed: Option<u32>,
    audit_denied: Option<u32>,
    denied: HashMap<&'static str, u32>,
    cache_hit: Option<u32>,
    cache_miss: Option<u32>,
    jwks_ok: Option<u32>,
    jwks_failed: Option<u32>,
    policy_version: Option<u32>,
}

fn metric(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

fn bump(id: Option<u32>) {
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

impl Metrics {
    fn define(engine: &Engine) -> Metrics {
        let denied = DenyReason::ALL_CODES
            .iter()
            .filter_map(|code| {
                Some((
                    *code,
                    metric(MetricType::Counter, &format!("claimgate.denied.{code}"))?,
                ))
            })
            .collect();
        let metrics = Metrics {
            allowed: metric(MetricType::Counter, "claimgate.allowed"),
            audit_denied: metric(MetricType::Counter, "claimgate.audit_would_deny"),
            denied,
            cache_hit: metric(MetricType::Counter, "claimgate.token_cache.hit"),
            cache_miss: metric(MetricType::Counter, "claimgate.token_cache.miss"),
            jwks_ok: metric(MetricType::Counter, "claimgate.jwks.fetch_success"),
            jwks_failed: metric(MetricType::Counter, "claimgate.jwks.fetch_failure"),
            policy_version: metric(MetricType::Gauge, "claimgate.policy_version"),
        };
        // The gauge carries the first 8 hex digits of the digest as a number.
        let short = engine
            .digest()
            .trim_start_matches("sha256:")
            .get(..8)
            .unwrap_or("0");
        if let (Some(id), Ok(value)) = (metrics.policy_version, u64::from_str_radix(short, 16)) {
            let _ = hostcalls::record_metric(id, value);
        }
        metrics
    }
}

// === JWKS ===

fn start_fetch(shared: &mut Shared, issuer: usize, now: u64) {
    let engine = shared.engine.clone();
    let Some(config) = engine
        .policy()
        .issuers
        .get(issuer)
        .and_then(|i| i.remote_jwks.as_ref())
    else {
        return;
    };
    // The compiler checked the URL with the same parser.
    let Ok(endpoint) = HttpEndpoint::parse(&config.uri) else {
        return;
    };
    let headers = vec![
        (":method", "GET"),
        (":path", endpoint.path.as_str()),
        (":authority", endpoint.authority.as_str()),
        ("accept", "application/json"),
    ];
    match hostcalls::dispatch_http_call(
        &config.cluster,
        headers,
        None,
        vec![],
        Duration::from_millis(config.timeout_ms),
    ) {
        Ok(token) => {
            if let Some(state) = shared.fetch.get_mut(&issuer) {
                state.in_flight = Some(token);
            }
        }
        Err(status) => {
            log::warn!(
                "claimgate: cannot fetch JWKS {} via cluster `{}`: {status:?}",
                config.uri,
                config.cluster
            );
            bump(shared.metrics.jwks_failed);
            if let Some(state) = shared.fetch.get_mut(&issuer) {
                state.next_fetch = now + 5;
                state.fetched_once = true;
            }
        }
    }
}

/// Starts every fetch that is due.
pub fn fetch_all_due(shared: &Rc<RefCell<Shared>>, now: u64) {
    let mut s = shared.borrow_mut();
    let due: Vec<usize> = s
        .fetch
        .iter()
        .filter(|(_, f)| f.in_flight.is_none() && f.next_fetch <= now)
        .map(|(i, _)| *i)
        .collect();
    for issuer in due {
        start_fetch(&mut s, issuer, now);
    }
}

/// Handles a JWKS response (to the root or to a request that triggered a refetch).
pub fn jwks_response(shared: &Rc<RefCell<Shared>>, token_id: u32, body_size: usize, now: u64) {
    {
        let mut s = shared.borrow_mut();
        let Some(issuer) = s
            .fetch
            .iter()
            .find(|(_, f)| f.in_flight == Some(token_id))
            .map(|(i, _)| *i)
        else {
            return;
        };
        let engine = s.engine.clone();
        let config = engine.policy().issuers.get(issuer);
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let parsed = match status.as_deref() {
            Some("200") => parse_jwks_bytes(&body).map_err(|e| e.to_string()),
            other => Err(format!(
                "status {}",
                other.unwrap_or("none (timeout or connection failure)")
            )),
        };
        let refresh = config
            .as_ref()
            .and_then(|c| c.remote_jwks.as_ref())
            .map_or(600, |r| r.refresh_secs);
        match (parsed, config) {
            (Ok(jwks), Some(config)) => {
                if !jwks.skipped.is_empty() {
                    log::warn!("claimgate: issuer `{}`: {}", config.name, jwks.skipped);
                }
                let keys = KeySet::for_issuer(config, &jwks.keys);
                // Tokens verified with a key that is gone must be checked again; a refresh
                // that withdraws nothing keeps the cache warm.
                let withdrawn = s
                    .fetched_keys
                    .get(&issuer)
                    .is_some_and(|old| old.iter().any(|key| !jwks.keys.contains(key)));
                if withdrawn {
                    s.clear_cache();
                }
                s.fetched_keys.insert(issuer, jwks.keys);
                log::info!(
                    "claimgate: issuer `{}`: {} keys fetched",
                    config.name,
                    keys.len()
                );
                s.remote.set(issuer, keys);
                bump(s.metrics.jwks_ok);
                if let Some(f) = s.fetch.get_mut(&issuer) {
                    f.next_fetch = now + refresh;
                }
            }
            (Err(error), config) => {
                let name = config.map_or("", |c| c.name.as_str());
                log::warn!(
                    "claimgate: issuer `{name}`: JWKS fetch failed ({error}); keeping the last good keys"
                );
                bump(s.metrics.jwks_failed);
                if let Some(f) = s.fetch.get_mut(&issuer) {
                    // Retry sooner than a full refresh after a failure.
                    f.next_fetch = now + refresh.min(5);
                }
            }
            (Ok(_), None) => {}
        }
        if let Some(f) = s.fetch.get_mut(&issuer) {
            f.in_flight = None;
            f.fetched_once = true;
        }
    }
    release_held(shared, now, false);
}

/// Re-decides held requests; with `expire`, only those held too long (they fail closed).
fn release_held(shared: &Rc<RefCell<Shared>>, now: u64, expire: bool) {
    let held: Vec<(u32, u64)> = {
        let mut s = shared.borrow_mut();
        if expire {
            let (old, young): (Vec<_>, Vec<_>) = s
                .held
                .drain(..)
                .partition(|(_, since)| now.saturating_sub(*since) >= HOLD_MAX_SECS);
            s.held = young;
            old
        } else {
            std::mem::take(&mut s.held)
        }
    };
    for (context_id, since) in held {
        if hostcalls::set_effective_context(context_id).is_err() {
            continue; // the request is gone (client hung up)
        }
        let verdict = decide_and_apply(shared, context_id, now, expire, since);
        if matches!(verdict, Verdict::Continue) {
            let _ = hostcalls::resume_http_request();
        }
    }
}

/// The root's tick: refresh due key sets, fail held requests that waited too long.
pub fn tick(shared: &Rc<RefCell<Shared>>, now: u64) {
    fetch_all_due(shared, now);
    release_held(shared, now, true);
}

// === The request path ===

fn request_headers() -> Vec<(String, String)> {
    hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
}

/// Decides the current request and acts on it.
pub fn enforce(shared: &Rc<RefCell<Shared>>, context_id: u32, now: u64) -> Verdict {
    decide_and_apply(shared, context_id, now, false, now)
}

fn decide_and_apply(
    shared: &Rc<RefCell<Shared>>,
    context_id: u32,
    now: u64,
    give_up: bool,
    held_since: u64,
) -> Verdict {
    let mut headers = request_headers();
    let (engine, names) = {
        let s = shared.borrow();
        (s.engine.clone(), s.identity_headers.clone())
    };
    let prefix = engine.policy().token.identity_header_prefix.as_str();
    // Identity headers are the filter's: whatever the client sent under them goes, from the
    // request and from what the rules match on.
    headers.retain(|(name, _)| {
        let spoofed = name.starts_with(prefix);
        if spoofed {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
        }
        !spoofed
    });
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let request = Request {
        method: header(":method"),
        host: header(":authority"),
        path: header(":path"),
        headers: &headers,
    };
    let decision = {
        let mut authenticate = |raw: &str, _: &mut claimgate_core::token::Trace<'_>| {
            let mut s = shared.borrow_mut();
            if let Some(identity) = s.cached(raw, now) {
                bump(s.metrics.cache_hit);
                return Ok(identity);
            }
            bump(s.metrics.cache_miss);
            let identity = Rc::new(engine.authenticate(raw, now, &s.remote, &mut None)?);
            s.remember(raw, identity.clone(), now);
            Ok(identity)
        };
        engine.decide_with(&request, None, &mut authenticate)
    };

    if !give_up {
        if let Some(verdict) = maybe_hold(shared, &engine, &decision, context_id, now, held_since) {
            return verdict;
        }
    }
    apply(shared, &engine, &request, &decision, &names)
}

/// Holds a request that waits for keys (first fetch, or a refetch for an unknown `kid`).
fn maybe_hold(
    shared: &Rc<RefCell<Shared>>,
    engine: &Engine,
    decision: &Decision,
    context_id: u32,
    now: u64,
    held_since: u64,
) -> Option<Verdict> {
    let waits = match &decision.reason {
        Some(DenyReason::KeysUnavailable { issuer }) => {
            let index = engine.issuer_index(issuer)?;
            let config = engine.policy().issuers.get(index)?.remote_jwks.as_ref()?;
            if config.before_first_fetch == BeforeFirstFetch::Reject {
                return None;
            }
            let s = shared.borrow();
            let fetch = s.fetch.get(&index)?;
            // Hold only while the first fetch can still succeed.
            !fetch.fetched_once || fetch.in_flight.is_some()
        }
        Some(DenyReason::UnknownKey { issuer, .. }) => {
            let index = engine.issuer_index(issuer)?;
            let mut s = shared.borrow_mut();
            let fetch = s.fetch.get_mut(&index)?;
            // Wait for a fetch under way, or start one unless one ran moments ago.
            if fetch.in_flight.is_none() {
                if now.saturating_sub(fetch.last_refetch) < REFETCH_MIN_INTERVAL_SECS {
                    return None;
                }
                fetch.last_refetch = now;
                start_fetch(&mut s, index, now);
            }
            s.fetch.get(&index).is_some_and(|f| f.in_flight.is_some())
        }
        _ => false,
    };
    if !waits {
        return None;
    }
    shared.borrow_mut().held.push((context_id, held_since));
    Some(Verdict::Held)
}

fn json_escape(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

fn apply(
    shared: &Rc<RefCell<Shared>>,
    engine: &Engine,
    request: &Request<'_>,
    decision: &Decision,
    names: &IdentityHeaders,
) -> Verdict {
    let version = engine.digest();
    let request_id = request.header("x-request-id").unwrap_or("");
    audit(engine, request, decision, request_id);
    {
        let s = shared.borrow();
        match (&decision.reason, decision.passes()) {
            (None, _) => bump(s.metrics.allowed),
            (Some(_), true) => bump(s.metrics.audit_denied),
            (Some(reason), false) => bump(s.metrics.denied.get(reason.code()).copied()),
        }
    }
    if decision.passes() {
        if let Some(identity) = &decision.identity {
            let rule = decision.rule.as_deref().unwrap_or("");
            let roles = identity.roles.join(",");
            let add = |name: &str, value: &str| {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
            };
            add(&names.subject, &identity.subject);
            add(&names.issuer, &identity.issuer);
            if let Some(client) = &identity.client {
                add(&names.client, client);
            }
            add(&names.roles, &roles);
            add(&names.rule, rule);
            add(&names.policy_version, version);
            for (key, value) in [
                ("claimgate.subject", identity.subject.as_str()),
                ("claimgate.issuer", identity.issuer.as_str()),
                ("claimgate.rule", rule),
            ] {
                // One path element: Envoy stores it as filter state `wasm.<key>`.
                let _ = hostcalls::set_property(vec![key], Some(value.as_bytes()));
            }
            if !engine.policy().token.forward_token {
                for name in &engine.policy().token.headers {
                    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
                }
            }
        }
        let _ = hostcalls::set_property(
            vec!["claimgate.decision"],
            Some(decision.outcome().as_bytes()),
        );
        return Verdict::Continue;
    }
    let Some(reason) = &decision.reason else {
        return Verdict::Continue;
    };
    let response = reason.response();
    let body = format!(
        "{{\"error\":{},\"status\":{},\"rule\":{},\"request_id\":{},\"policy_version\":{}}}\n",
        json_escape(reason.code()),
        response.status,
        json_escape(decision.rule.as_deref().unwrap_or("")),
        json_escape(request_id),
        json_escape(version)
    );
    let mut headers = vec![("content-type", "application/json")];
    if let Some(value) = response.www_authenticate.as_deref() {
        headers.push(("www-authenticate", value));
    }
    if hostcalls::send_http_response(u32::from(response.status), headers, Some(body.as_bytes()))
        .is_err()
    {
        log::error!("claimgate: could not send the local reply");
    }
    Verdict::Replied
}

/// The audit record of one decision, borrowed from the request and the decision (serialised
/// straight to the log line, fields in this order). Never the token.
#[derive(Serialize)]
struct AuditLine<'a> {
    decision: &'a str,
    status: u16,
    reason: Option<&'a str>,
    detail: Option<String>,
    rule: Option<&'a str>,
    issuer: Option<&'a str>,
    subject: Option<&'a str>,
    client: Option<&'a str>,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    #[serde(serialize_with = "captures_as_map")]
    captures: &'a Captures,
    deployment: Option<&'a str>,
    request_id: &'a str,
    policy_version: &'a str,
}

fn captures_as_map<S: serde::Serializer>(captures: &&Captures, out: S) -> Result<S::Ok, S::Error> {
    out.collect_map(captures.iter().map(|(k, v)| (k, v)))
}

/// One structured line per decision.
fn audit(engine: &Engine, request: &Request<'_>, decision: &Decision, request_id: &str) {
    let identity = decision.identity.as_deref();
    let line = AuditLine {
        decision: decision.outcome(),
        status: decision.status(),
        reason: decision.reason.as_ref().map(|r| r.code()),
        detail: decision.reason.as_ref().map(|r| r.to_string()),
        rule: decision.rule.as_deref(),
        issuer: identity.map(|i| i.issuer.as_str()),
        subject: identity.map(|i| i.subject.as_str()),
        client: identity.and_then(|i| i.client.as_deref()),
        method: request.method,
        host: request.host,
        path: claimgate_core::matcher::strip_query(request.path),
        captures: &decision.captures,
        deployment: request.header("azureml-model-deployment"),
        request_id,
        policy_version: engine.digest(),
    };
    match serde_json::to_string(&line) {
        Ok(line) => log::info!("claimgate.audit {line}"),
        Err(error) => log::error!("claimgate: audit line not written: {error}"),
    }
}
