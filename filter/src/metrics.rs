//! The filter's metrics (Envoy stats under the plugin's prefix). Deny counters are defined from
//! the core's `DenyReason::ALL_CODES`, so a new reason gets its counter with no change here.

use std::collections::HashMap;

use claimgate_core::DenyReason;
use claimgate_core::engine::Engine;

use crate::host::{Host, MetricKind};

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
const COUNTERS: [(Counter, &str); 9] = [
    (Counter::Allowed, "claimgate.allowed"),
    (Counter::AuditWouldDeny, "claimgate.audit_would_deny"),
    (Counter::CacheHit, "claimgate.token_cache.hit"),
    (Counter::CacheMiss, "claimgate.token_cache.miss"),
    (Counter::NegativeCacheHit, "claimgate.negative_cache.hit"),
    (Counter::JwksFetchSuccess, "claimgate.jwks.fetch_success"),
    (Counter::JwksFetchFailure, "claimgate.jwks.fetch_failure"),
    (Counter::HoldExpired, "claimgate.hold.expired"),
    (Counter::HostFailure, "claimgate.host_failure"),
];

/// Metric ids, defined once per root context.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: HashMap<&'static str, u32>,
    denied: HashMap<&'static str, u32>,
}

fn name_of(counter: Counter) -> &'static str {
    COUNTERS
        .iter()
        .find(|(c, _)| *c == counter)
        .map_or("claimgate.unknown", |(_, name)| name)
}

impl Metrics {
    /// Defines every metric (a host that refuses one loses only that one) and sets the policy
    /// version gauge.
    pub fn define(host: &dyn Host, engine: &Engine) -> Metrics {
        let counters = COUNTERS
            .iter()
            .filter_map(|(_, name)| {
                Some((*name, host.define_metric(MetricKind::Counter, name).ok()?))
            })
            .collect();
        let denied = DenyReason::ALL_CODES
            .iter()
            .filter_map(|code| {
                let name = format!("claimgate.denied.{code}");
                Some((*code, host.define_metric(MetricKind::Counter, &name).ok()?))
            })
            .collect();
        // The gauge carries the first 8 hex digits of the digest as a number.
        let short = engine
            .digest()
            .trim_start_matches("sha256:")
            .get(..8)
            .unwrap_or("0");
        if let (Ok(id), Ok(value)) = (
            host.define_metric(MetricKind::Gauge, "claimgate.policy_version"),
            u64::from_str_radix(short, 16),
        ) {
            let _ = host.record_metric(id, value);
        }
        Metrics { counters, denied }
    }

    /// Adds one to a counter.
    pub fn bump(&self, host: &dyn Host, counter: Counter) {
        if let Some(id) = self.counters.get(name_of(counter)) {
            let _ = host.increment_metric(*id, 1);
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

    #[test]
    fn every_deny_code_and_counter_has_a_metric() {
        let host = MockHost::new(testing::NOW_MS);
        let engine = testing::engine(testing::POLICY);
        let metrics = Metrics::define(&host, &engine);
        for code in DenyReason::ALL_CODES {
            assert!(
                host.metric(&format!("claimgate.denied.{code}")).is_some(),
                "{code} has no metric"
            );
        }
        for (counter, name) in COUNTERS {
            metrics.bump(&host, counter);
            assert_eq!(host.metric(name), Some(1), "{name}");
        }
        metrics.denied(&host, &DenyReason::NoToken);
        assert_eq!(host.metric("claimgate.denied.no_token"), Some(1));
        assert!(
            host.metric("claimgate.policy_version")
                .is_some_and(|v| v > 0)
        );
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
