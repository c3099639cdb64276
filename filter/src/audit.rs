//! The audit line: one structured log line per decision. Never the token; every field that
//! comes from the request or the token is bounded in length (an 8 KiB `kid` or path costs at
//! most a few hundred bytes of log).
//!
//! Levels: a deny, and a pass that audit mode or an audit rule would deny, are logged at
//! `warn` — Istio runs its proxies at `warning`, and these are the lines an operator must
//! see; an allow is logged at `info`. Envoy's level for the plugin (its `wasm` logger) is read
//! from the host once per configuration and per tick, and a line Envoy would drop is never
//! formatted. The complete trail, allows included, is in Envoy's access log through the
//! filter state the request path sets (see `request::publish`).

use serde::Serialize;

use claimgate_core::engine::{Decision, Engine, Request};

use crate::host::Host;
use crate::jwks::bounded;

/// Longest request field (method, host, request id…) copied into a line, in characters.
pub const MAX_FIELD: usize = 256;
/// Longest path copied, in characters.
pub const MAX_PATH: usize = 1_024;
/// Longest explanation copied, in characters.
pub const MAX_DETAIL: usize = 512;
/// Most path captures copied.
pub const MAX_CAPTURES: usize = 8;

/// The record, fields in this order. Request headers come already checked: a value that was
/// not valid UTF-8 is never given here (the caller passes `None`).
#[derive(Serialize)]
struct AuditLine<'a> {
    decision: &'a str,
    status: u16,
    reason: Option<&'a str>,
    detail: Option<String>,
    rule: Option<String>,
    issuer: Option<String>,
    subject: Option<String>,
    client: Option<String>,
    method: String,
    host: String,
    path: String,
    captures: serde_json::Map<String, serde_json::Value>,
    deployment: Option<String>,
    request_id: Option<String>,
    /// What the decision would be with audit rules enforcing (only logged).
    shadow: Option<ShadowLine<'a>>,
    policy_version: &'a str,
}

#[derive(Serialize)]
struct ShadowLine<'a> {
    decision: &'a str,
    reason: Option<&'a str>,
    rule: Option<String>,
}

/// Request fields for the line, taken by the caller from headers that were valid UTF-8.
pub struct Fields<'a> {
    /// `x-request-id`.
    pub request_id: Option<&'a str>,
    /// `azureml-model-deployment`.
    pub deployment: Option<&'a str>,
}

/// The line for a decision (without the `claimgate.audit ` prefix).
pub fn line(
    engine: &Engine,
    request: &Request<'_>,
    decision: &Decision,
    fields: &Fields<'_>,
) -> String {
    let identity = decision.identity.as_deref();
    let short = |text: &str| bounded(text, MAX_FIELD);
    let record = AuditLine {
        decision: decision.outcome(),
        status: decision.status(),
        reason: decision.reason.as_ref().map(|r| r.code()),
        detail: decision
            .reason
            .as_ref()
            .map(|r| bounded(&r.to_string(), MAX_DETAIL)),
        rule: decision.rule.as_deref().map(short),
        issuer: identity.map(|i| short(&i.issuer)),
        subject: identity.map(|i| short(&i.subject)),
        client: identity.and_then(|i| i.client.as_deref()).map(short),
        method: short(request.method),
        host: short(request.host),
        path: bounded(
            claimgate_core::canonical::strip_query(request.path),
            MAX_PATH,
        ),
        captures: decision
            .captures
            .iter()
            .take(MAX_CAPTURES)
            .map(|(k, v)| (short(k), serde_json::Value::String(short(v))))
            .collect(),
        deployment: fields.deployment.map(short),
        request_id: fields.request_id.map(short),
        shadow: decision.shadow.as_ref().map(|shadow| ShadowLine {
            decision: if shadow.allowed { "allow" } else { "deny" },
            reason: shadow.reason.as_ref().map(|r| r.code()),
            rule: shadow.rule.as_deref().map(short),
        }),
        policy_version: engine.digest(),
    };
    serde_json::to_string(&record).unwrap_or_else(|_| r#"{"decision":"unrecorded"}"#.to_owned())
}

/// The level of a decision's line: `warn` for a deny or a would-deny, `info` for an allow.
pub fn level(decision: &Decision) -> log::Level {
    let would_deny = decision
        .shadow
        .as_ref()
        .is_some_and(|shadow| !shadow.allowed);
    if decision.reason.is_some() || would_deny {
        log::Level::Warn
    } else {
        log::Level::Info
    }
}

/// The level the host logs the plugin at now. A host that cannot say gets every line down
/// to `info` (the trail is never lost to a failing call).
pub fn host_level(host: &dyn Host) -> log::LevelFilter {
    host.log_level().unwrap_or(log::LevelFilter::Info)
}

/// Logs the line for a decision, unless the host drops lines of its level (`host_level`, as
/// read by [`host_level`]): then nothing is formatted. Returns whether a line was logged.
pub fn record(
    engine: &Engine,
    request: &Request<'_>,
    decision: &Decision,
    fields: &Fields<'_>,
    host_level: log::LevelFilter,
) -> bool {
    let level = level(decision);
    if level > host_level {
        return false;
    }
    log::log!(
        level,
        "claimgate.audit {}",
        line(engine, request, decision, fields)
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mock::{MockHost, capture_logs, logged};
    use crate::request::Verdict;
    use crate::testing::{self, NOW_MS, POLICY, ROOT};
    use claimgate_core::engine::RemoteKeys;

    /// proxy-wasm level numbers.
    const INFO: u32 = 2;
    const WARN: u32 = 3;
    const ERROR: u32 = 4;

    fn run(
        host: &MockHost,
        shared: &std::cell::RefCell<crate::state::Shared>,
        context: u32,
        path: &str,
    ) -> Verdict {
        testing::run(host, shared, context, &testing::request(path, None))
    }

    fn audit_lines() -> Vec<(log::Level, serde_json::Value)> {
        logged()
            .iter()
            .filter_map(|(level, line)| {
                let json = line.strip_prefix("claimgate.audit ")?;
                Some((*level, serde_json::from_str(json).unwrap()))
            })
            .collect()
    }

    #[test]
    fn denies_show_at_istios_default_level_allows_only_when_asked() {
        capture_logs();
        let host = MockHost::new(NOW_MS);
        host.state.borrow_mut().log_level = Some(WARN);
        let shared = testing::configured(&host, POLICY);
        assert_eq!(run(&host, &shared, 2, "/health"), Verdict::Continue);
        assert_eq!(run(&host, &shared, 3, "/score"), Verdict::Replied);
        let lines = audit_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].0, log::Level::Warn);
        assert_eq!(lines[0].1["reason"], "no_token");

        // The operator turns the plugin's level up (`/logging?wasm=info`): from the next tick,
        // allows are logged too, at info.
        capture_logs();
        host.state.borrow_mut().log_level = Some(INFO);
        host.enter(ROOT);
        crate::root::tick(&host, &shared);
        assert_eq!(run(&host, &shared, 4, "/health"), Verdict::Continue);
        let lines = audit_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].0, log::Level::Info);
        assert_eq!(lines[0].1["decision"], "allow");

        // And down to `error`: no audit line at all.
        capture_logs();
        host.state.borrow_mut().log_level = Some(ERROR);
        host.enter(ROOT);
        crate::root::tick(&host, &shared);
        assert_eq!(run(&host, &shared, 5, "/score"), Verdict::Replied);
        assert_eq!(run(&host, &shared, 6, "/health"), Verdict::Continue);
        assert!(audit_lines().is_empty(), "{:?}", logged());
    }

    #[test]
    fn a_line_the_host_drops_is_never_formatted_and_one_it_keeps_always_is() {
        let engine = testing::engine(testing::POLICY);
        let headers = testing::request("/health", None);
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        let request = Request {
            method: "POST",
            host: "scoring.test",
            path: "/health",
            headers: &pairs,
        };
        let allow = engine.decide(&request, testing::NOW, &RemoteKeys::default(), None);
        let request = Request {
            path: "/score",
            ..request
        };
        let deny = engine.decide(&request, testing::NOW, &RemoteKeys::default(), None);
        assert_eq!(
            (level(&allow), level(&deny)),
            (log::Level::Info, log::Level::Warn)
        );
        let fields = Fields {
            request_id: None,
            deployment: None,
        };
        for (host_level, logs_allow, logs_deny) in [
            (log::LevelFilter::Off, false, false),
            (log::LevelFilter::Error, false, false),
            (log::LevelFilter::Warn, false, true),
            (log::LevelFilter::Info, true, true),
            (log::LevelFilter::Trace, true, true),
        ] {
            assert_eq!(
                record(&engine, &request, &allow, &fields, host_level),
                logs_allow,
                "{host_level}"
            );
            assert_eq!(
                record(&engine, &request, &deny, &fields, host_level),
                logs_deny,
                "{host_level}"
            );
        }
    }

    #[test]
    fn a_host_that_cannot_tell_its_level_gets_every_line_down_to_info() {
        let host = MockHost::new(NOW_MS);
        assert_eq!(host_level(&host), log::LevelFilter::Info);
        host.state.borrow_mut().log_level = Some(WARN);
        assert_eq!(host_level(&host), log::LevelFilter::Warn);
        host.state.borrow_mut().log_level = Some(6);
        assert_eq!(host_level(&host), log::LevelFilter::Off, "Envoy's `off`");
        let host = host.failing("log_level");
        assert_eq!(host_level(&host), log::LevelFilter::Info);
    }

    #[test]
    fn every_decision_reaches_the_access_log_through_filter_state() {
        let host = MockHost::new(NOW_MS);
        host.state.borrow_mut().log_level = Some(ERROR);
        let shared = testing::configured(&host, POLICY);
        assert_eq!(run(&host, &shared, 2, "/score"), Verdict::Replied);
        assert_eq!(
            host.property(2, "claimgate.decision").as_deref(),
            Some("deny")
        );
        assert_eq!(
            host.property(2, "claimgate.reason").as_deref(),
            Some("no_token")
        );
        assert_eq!(host.property(2, "claimgate.rule").as_deref(), Some("score"));
        assert_eq!(run(&host, &shared, 3, "/nowhere"), Verdict::Replied);
        assert_eq!(
            host.property(3, "claimgate.decision").as_deref(),
            Some("deny")
        );
        assert_eq!(
            host.property(3, "claimgate.reason").as_deref(),
            Some("no_rule")
        );
        assert_eq!(host.property(3, "claimgate.rule"), None);
        assert_eq!(run(&host, &shared, 4, "/health"), Verdict::Continue);
        assert_eq!(
            host.property(4, "claimgate.decision").as_deref(),
            Some("allow")
        );
        assert_eq!(
            host.property(4, "claimgate.rule").as_deref(),
            Some("health")
        );
        assert_eq!(host.property(4, "claimgate.reason"), None);
        assert_eq!(host.property(4, "claimgate.subject"), None);
        assert_eq!(host.property(4, "claimgate.shadow_rule"), None);
    }

    #[test]
    fn a_would_deny_of_an_audit_rule_reaches_the_access_log() {
        let host = MockHost::new(NOW_MS);
        let policy = format!(
            "{POLICY}\n[[rules]]\nname = \"trial\"\npaths = [\"/health\"]\naudit = true\ndeny = \"anyone\"\n"
        );
        let shared = testing::configured(&host, &policy);
        assert_eq!(run(&host, &shared, 2, "/health"), Verdict::Continue);
        assert_eq!(
            host.property(2, "claimgate.decision").as_deref(),
            Some("allow")
        );
        assert_eq!(
            host.property(2, "claimgate.shadow_rule").as_deref(),
            Some("trial")
        );
        assert_eq!(
            host.property(2, "claimgate.shadow_reason").as_deref(),
            Some("explicit_deny")
        );
    }

    #[test]
    fn bounded_fields_and_never_the_token() {
        let engine = testing::engine(testing::POLICY);
        let key = testing::Key::new("k1");
        let kid = "k".repeat(8 * 1024);
        let token = key.mint_with_kid(&kid, &testing::claims(&[]));
        let path = format!("/score/{}", "p".repeat(8 * 1024));
        let headers = vec![("authorization".to_owned(), format!("Bearer {token}"))];
        let request = Request {
            method: "POST",
            host: &"h".repeat(4 * 1024),
            path: &path,
            headers: &headers,
        };
        let decision = engine.decide(&request, testing::NOW, &RemoteKeys::default(), None);
        let long = "r".repeat(4 * 1024);
        let line = line(
            &engine,
            &request,
            &decision,
            &Fields {
                request_id: Some(&long),
                deployment: None,
            },
        );
        assert!(line.len() < 4 * 1024, "{} bytes: {line}", line.len());
        assert!(!line.contains(&token));
        let signature = token.rsplit('.').next().unwrap();
        assert!(!line.contains(signature));
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["decision"], "deny");
    }
}
