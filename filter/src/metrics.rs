//! The filter's metrics (Envoy stats). Deny counters are defined from the core's
//! `DenyReason::ALL_CODES`, so a new reason gets its counter with no change here.
//!
//! Names are chosen for Prometheus as Envoy and Istio expose them. Envoy files every Wasm
//! metric under `wasmcustom.` and drops that prefix (and adds no `envoy_`) in
//! `/stats/prometheus`; Istio's proxies keep stats starting `wasm` by default. Counters end in
//! `_total`. A label is a tag Envoy extracts from the name: Istio's convention
//! `<tag>=.=<value>;.;`, which `extraStatTags: [reason]` in the proxy config turns into the
//! regex `(reason=\.=(.*?);\.;)`. So `claimgate.reason=.=no_token;.;denied_total` is exported
//! as `claimgate_denied_total{reason="no_token"}` (see `manifests/telemetry.yaml`).

use std::collections::HashMap;

use claimgate_core::DenyReason;
use claimgate_core::engine::Engine;

use crate::host::{Host, MetricKind};

/// The tag that carries the deny reason (a Prometheus label once extracted).
pub const REASON_TAG: &str = "reason";

/// A counter the filter bumps (the deny counters aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// A request allowed.
    Allowed,
    /// Denied by the policy but passed because of audit mode.
    AuditWouldDeny,
    /// Verified-token cache hit.
    CacheHit,
    /// Verified-token cache miss (the token was verified).
    CacheMiss,
    /// A token refused from the negative cache, without verification.
    NegativeCacheHit,
    /// A key set fetch dispatched (one per Envoy and refresh period when the workers share
    /// their fetches, see `jwks`).
    JwksFetchStarted,
    /// A key set another worker's root fetched, installed from shared data.
    JwksAdopted,
    /// A key set fetched and installed.
    JwksFetchSuccess,
    /// A key set fetch failed (status, body, timeout, dispatch, deadline).
    JwksFetchFailure,
    /// A held request gave up waiting for keys.
    HoldExpired,
    /// The filter could not act on the host (a local reply or header change failed).
    HostFailure,
}

/// Every counter with its stat name: the one table.
const COUNTERS: [(Counter, &str); 11] = [
    (Counter::Allowed, "claimgate.allowed_total"),
    (Counter::AuditWouldDeny, "claimgate.audit_would_deny_total"),
    (Counter::CacheHit, "claimgate.token_cache_hit_total"),
    (Counter::CacheMiss, "claimgate.token_cache_miss_total"),
    (
        Counter::NegativeCacheHit,
        "claimgate.negative_cache_hit_total",
    ),
    (
        Counter::JwksFetchStarted,
        "claimgate.jwks_fetch_started_total",
    ),
    (Counter::JwksAdopted, "claimgate.jwks_adopted_total"),
    (
        Counter::JwksFetchSuccess,
        "claimgate.jwks_fetch_success_total",
    ),
    (
        Counter::JwksFetchFailure,
        "claimgate.jwks_fetch_failure_total",
    ),
    (Counter::HoldExpired, "claimgate.hold_expired_total"),
    (Counter::HostFailure, "claimgate.host_failure_total"),
];

/// The policy version gauge: the first 8 hex digits of the policy digest, as a number.
pub const POLICY_VERSION: &str = "claimgate.policy_version";

/// The stat name of a counter (tests read metrics by name; the filter bumps by index).
#[cfg(test)]
pub fn counter_name(counter: Counter) -> &'static str {
    COUNTERS
        .iter()
        .find(|(c, _)| *c == counter)
        .map_or("claimgate.unknown_total", |(_, name)| name)
}

/// The stat name of the deny counter of a reason code: `claimgate_denied_total` with the
/// code in the `reason` tag.
pub fn denied_name(code: &str) -> String {
    format!("claimgate.{REASON_TAG}=.={code};.;denied_total")
}

/// The tag that carries an issuer's name (a Prometheus label once extracted).
pub const ISSUER_TAG: &str = "issuer";

/// The stat name of an issuer's key set gauge: the host clock (Unix seconds) of its last
/// successful JWKS fetch, `claimgate_jwks_fetch_success_timestamp_seconds{issuer}`. The label
/// is the policy's issuer name with anything outside `[A-Za-z0-9_-]` made `_` (a tag value
/// must not hold the `;.;` that ends it), at most 64 characters; when that changed the name,
/// a hash of the whole name follows (`-xxxxxxxx`), so `a.b` and `a_b`, or two long names
/// alike in their first 64 characters, never share one gauge.
pub fn keys_fetched_name(issuer: &str) -> String {
    let mut value: String = issuer
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if value != issuer {
        value = format!("{value}-{:08x}", fnv1a(issuer.as_bytes()));
    }
    format!("claimgate.{ISSUER_TAG}=.={value};.;jwks_fetch_success_timestamp_seconds")
}

/// FNV-1a, 32 bits: a short, stable tell-apart for label values (not a security measure).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash: u32, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

/// Metric ids, defined once per root context.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Counter ids by `Counter as usize`: a bump on the request path is an index, not a
    /// search of the table and a hash of the name.
    counters: [Option<u32>; COUNTERS.len()],
    denied: HashMap<&'static str, u32>,
    /// Key set gauges by issuer index (remote issuers only).
    keys_fetched: HashMap<usize, u32>,
}

impl Metrics {
    /// Defines every metric (a host that refuses one loses only that one) and sets the policy
    /// version gauge.
    pub fn define(host: &dyn Host, engine: &Engine) -> Metrics {
        let mut counters = [None; COUNTERS.len()];
        for (counter, name) in COUNTERS {
            if let Some(slot) = counters.get_mut(counter as usize) {
                *slot = host.define_metric(MetricKind::Counter, name).ok();
            }
        }
        let denied = DenyReason::ALL_CODES
            .iter()
            .filter_map(|code| {
                let id = host.define_metric(MetricKind::Counter, &denied_name(code));
                Some((*code, id.ok()?))
            })
            .collect();
        // The gauge carries the first 8 hex digits of the digest as a number.
        let short = engine
            .digest()
            .trim_start_matches("sha256:")
            .get(..8)
            .unwrap_or("0");
        if let (Ok(id), Ok(value)) = (
            host.define_metric(MetricKind::Gauge, POLICY_VERSION),
            u64::from_str_radix(short, 16),
        ) {
            let _ = host.record_metric(id, value);
        }
        // Envoy keeps a gauge across roots: a push does not reset the time of the last fetch.
        let keys_fetched = engine
            .remote_issuers()
            .filter_map(|(index, issuer)| {
                let name = keys_fetched_name(&issuer.name);
                Some((index, host.define_metric(MetricKind::Gauge, &name).ok()?))
            })
            .collect();
        Metrics {
            counters,
            denied,
            keys_fetched,
        }
    }

    /// Records a successful key set fetch of an issuer at `now_ms` (host clock).
    pub fn keys_fetched(&self, host: &dyn Host, issuer: usize, now_ms: u64) {
        if let Some(id) = self.keys_fetched.get(&issuer) {
            let _ = host.record_metric(*id, now_ms / 1000);
        }
    }

    /// Adds one to a counter.
    pub fn bump(&self, host: &dyn Host, counter: Counter) {
        if let Some(id) = self.counters.get(counter as usize).copied().flatten() {
            let _ = host.increment_metric(id, 1);
        }
    }

    /// Adds one to the deny counter of a reason.
    pub fn denied(&self, host: &dyn Host, reason: &DenyReason) {
        if let Some(id) = self.denied.get(reason.code()) {
            let _ = host.increment_metric(*id, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::MockHost;
    use crate::testing;

    /// What Envoy does to a Wasm stat name for `/stats/prometheus` under Istio's
    /// `extraStatTags: [reason]`: the tag `reason=.=VALUE;.;` taken out of the name (regex
    /// `(reason=\.=(.*?);\.;)`, first group removed, second group the value), no
    /// `wasmcustom.` namespace, every character outside `[a-zA-Z0-9_]` made `_`.
    fn prometheus(name: &str) -> (String, Option<String>) {
        let open = format!("{REASON_TAG}=.=");
        let (name, value) = match name.split_once(&open) {
            Some((before, rest)) => {
                let (value, after) = rest.split_once(";.;").unwrap();
                (format!("{before}{after}"), Some(value.to_owned()))
            }
            None => (name.to_owned(), None),
        };
        let sanitized = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        (sanitized, value)
    }

    #[test]
    fn deny_counters_are_one_prometheus_counter_with_a_reason_label() {
        for code in DenyReason::ALL_CODES {
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "`{code}` cannot be a tag value"
            );
            let (name, reason) = prometheus(&denied_name(code));
            assert_eq!(name, "claimgate_denied_total");
            assert_eq!(reason.as_deref(), Some(*code));
        }
    }

    #[test]
    fn counters_are_prometheus_counters_without_tags() {
        for (_, stat) in COUNTERS {
            let (name, tag) = prometheus(stat);
            assert!(
                name.starts_with("claimgate_") && name.ends_with("_total"),
                "{name}"
            );
            assert_eq!(name, stat.replace('.', "_"), "{stat} has a dot in its name");
            assert_eq!(tag, None, "{stat}");
        }
        assert_eq!(prometheus(POLICY_VERSION).0, "claimgate_policy_version");
    }

    #[test]
    fn key_set_gauges_are_one_metric_with_a_safe_issuer_label() {
        let name = keys_fetched_name("entra;.;x=.=y.z-1");
        assert!(
            name.starts_with("claimgate.issuer=.=entra___x___y_z-1-")
                && name.ends_with(";.;jwks_fetch_success_timestamp_seconds"),
            "{name}"
        );
        assert_eq!(
            keys_fetched_name("idp_1-a"),
            "claimgate.issuer=.=idp_1-a;.;jwks_fetch_success_timestamp_seconds"
        );
        let long = keys_fetched_name(&"i".repeat(1_000));
        assert!(long.len() < 140, "{long}");
        let host = MockHost::new(testing::NOW_MS);
        let engine = testing::engine(testing::POLICY);
        let metrics = Metrics::define(&host, &engine);
        let gauge = keys_fetched_name("idp");
        assert_eq!(host.metric(&gauge), Some(0));
        metrics.keys_fetched(&host, 0, testing::NOW_MS + 1_999);
        assert_eq!(host.metric(&gauge), Some(testing::NOW + 1));
        metrics.keys_fetched(&host, 7, testing::NOW_MS);
        assert_eq!(
            host.metric(&gauge),
            Some(testing::NOW + 1),
            "no such issuer"
        );
    }

    /// Issuers whose names differ only in `.` versus `_` (or after 64 characters) shared one
    /// gauge: the last fetch of either hid a failing other.
    #[test]
    fn key_set_gauges_of_issuers_alike_once_sanitised_are_distinct() {
        let long = "i".repeat(64);
        for (a, b) in [
            ("idp.eu".to_owned(), "idp_eu".to_owned()),
            ("idp.eu".to_owned(), "idp:eu".to_owned()),
            (format!("{long}a"), format!("{long}b")),
            (long.clone(), format!("{long}b")),
        ] {
            assert_ne!(keys_fetched_name(&a), keys_fetched_name(&b), "{a} {b}");
        }
        let policy = testing::POLICY.replace("[issuers.idp", "[issuers.\"idp.x\"")
            + "\n[issuers.idp_x]\nissuer = \"https://other.test\"\nalgorithms = [\"ES256\"]\n[issuers.idp_x.jwks]\nuri = \"http://other.test/keys\"\ncluster = \"jwks\"\n";
        let policy = policy.replace(
            "allow = { roles_any",
            "allow = { issuers = [\"idp.x\", \"idp_x\"], roles_any",
        );
        let host = MockHost::new(testing::NOW_MS);
        let engine = testing::engine(&policy);
        let metrics = Metrics::define(&host, &engine);
        metrics.keys_fetched(&host, 0, testing::NOW_MS);
        assert_eq!(host.metric(&keys_fetched_name("idp.x")), Some(testing::NOW));
        assert_eq!(host.metric(&keys_fetched_name("idp_x")), Some(0));
    }

    #[test]
    fn every_deny_code_and_counter_has_a_metric() {
        let host = MockHost::new(testing::NOW_MS);
        let engine = testing::engine(testing::POLICY);
        let metrics = Metrics::define(&host, &engine);
        for code in DenyReason::ALL_CODES {
            assert!(
                host.metric(&denied_name(code)).is_some(),
                "{code} has no metric"
            );
        }
        for (counter, name) in COUNTERS {
            metrics.bump(&host, counter);
            assert_eq!(host.metric(name), Some(1), "{name}");
        }
        metrics.denied(&host, &DenyReason::NoToken);
        assert_eq!(
            host.metric("claimgate.reason=.=no_token;.;denied_total"),
            Some(1)
        );
        assert!(host.metric(POLICY_VERSION).is_some_and(|v| v > 0));
    }

    #[test]
    fn a_host_that_refuses_metrics_costs_only_the_metrics() {
        let host = MockHost::new(testing::NOW_MS).failing("define_metric");
        let engine = testing::engine(testing::POLICY);
        let metrics = Metrics::define(&host, &engine);
        metrics.bump(&host, Counter::Allowed);
        metrics.denied(&host, &DenyReason::NoToken);
        assert!(host.state.borrow().metrics.is_empty());
    }
}
