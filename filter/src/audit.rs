//! The audit line: one structured log line per decision. Never the token; every field that
//! comes from the request or the token is bounded in length (an 8 KiB `kid` or path costs at
//! most a few hundred bytes of log).

use serde::Serialize;

use claimgate_core::engine::{Decision, Engine, Request};

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

/// Logs the line for a decision.
pub fn record(engine: &Engine, request: &Request<'_>, decision: &Decision, fields: &Fields<'_>) {
    log::info!(
        "claimgate.audit {}",
        line(engine, request, decision, fields)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use claimgate_core::engine::RemoteKeys;

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
