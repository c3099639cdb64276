//! `claimgate test`: policy unit tests, like `opa test`.
//!
//! A cases file holds `[[case]]` tables: a request, a token (raw, from a file, or as unsigned
//! claims) and the expected outcome. Claims are checked by every rule except the signature,
//! so policy authors can test roles and paths without minting tokens.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use claimgate_core::compile;
use claimgate_core::engine::{Engine, Request};
use serde::Deserialize;

use crate::{
    CliError, Exit, TestArgs, compile_file, engine_from, output, read_file, token_argument,
};

/// A cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    /// Clock for every case that sets none, UNIX seconds.
    pub now: Option<u64>,
    /// The cases.
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
}

/// One test case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Case name.
    pub name: String,
    /// Method (default GET).
    #[serde(default = "get")]
    pub method: String,
    /// Host (default `localhost`).
    #[serde(default = "localhost")]
    pub host: String,
    /// Path.
    pub path: String,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Clock, UNIX seconds.
    pub now: Option<u64>,
    /// A raw token, or `@file` relative to the cases file.
    pub token: Option<String>,
    /// Unsigned claims standing for a verified token.
    pub claims: Option<toml::Table>,
    /// Expected outcome.
    pub expect: Expect,
}

/// Expected outcome.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `allow` or `deny`.
    pub decision: String,
    /// Expected status (200 for allowed).
    pub status: Option<u16>,
    /// Expected reason code, e.g. `missing_role`.
    pub reason: Option<String>,
    /// Expected deciding rule.
    pub rule: Option<String>,
}

fn get() -> String {
    "GET".to_owned()
}

fn localhost() -> String {
    "localhost".to_owned()
}

/// The result of one case.
#[derive(Debug, serde::Serialize)]
pub struct CaseResult {
    /// Case name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What differed.
    pub failures: Vec<String>,
}

/// Runs every case against the policy.
pub fn run_cases(policy: &Path, cases_path: &Path) -> Result<Vec<CaseResult>, CliError> {
    let compiled = compile_file(policy)?;
    let engine = engine_from(&compiled)?;
    let text = read_file(cases_path)?;
    let file: CasesFile = toml::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{}: {e}", cases_path.display())))?;
    let base = cases_path.parent().unwrap_or(Path::new("."));
    let mut results = Vec::new();
    for case in &file.cases {
        let now = case.now.or(file.now).unwrap_or(0);
        let mut headers: Vec<(String, String)> = case
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        // In the first header location, with its prefix, as a client sends it.
        if let Some(token) = &case.token {
            let token = match token.strip_prefix('@') {
                Some(file) => token_argument(&format!("@{}", base.join(file).display()))?,
                None => token.clone(),
            };
            headers.push(claimgate_core::locate::example_header(
                engine.policy(),
                &token,
            ));
        } else if case.claims.is_some() {
            // A placeholder token: the authenticator below reads the claims instead.
            headers.push(claimgate_core::locate::example_header(
                engine.policy(),
                "unsigned-test-claims",
            ));
        }
        let seen = engine.headers_seen(&headers);
        let request = Request {
            method: &case.method,
            host: &case.host,
            path: &case.path,
            headers: &seen,
        };
        let decision = match &case.claims {
            Some(claims) => {
                let claims =
                    serde_json::to_value(claims).map_err(|e| CliError::Usage(e.to_string()))?;
                let claims = claims.as_object().cloned().unwrap_or_default();
                engine.decide_with(&request, None, &mut |_, trace| {
                    engine
                        .danger_identity_from_unsigned_claims(claims.clone(), now, trace)
                        .map(Rc::new)
                })
            }
            None => engine.decide(&request, now, &Default::default(), None),
        };
        let mut failures = Vec::new();
        let got = if decision.allowed { "allow" } else { "deny" };
        if got != case.expect.decision {
            failures.push(format!(
                "decision: expected {}, got {got} ({})",
                case.expect.decision,
                decision
                    .reason
                    .as_ref()
                    .map(|r| r.to_string())
                    .unwrap_or_default()
            ));
        }
        if let Some(status) = case.expect.status
            && decision.status() != status
        {
            failures.push(format!(
                "status: expected {status}, got {}",
                decision.status()
            ));
        }
        if let Some(reason) = &case.expect.reason {
            let code = decision.reason.as_ref().map(|r| r.code()).unwrap_or("none");
            if code != reason {
                failures.push(format!("reason: expected {reason}, got {code}"));
            }
        }
        if let Some(rule) = &case.expect.rule
            && decision.rule.as_deref() != Some(rule.as_str())
        {
            failures.push(format!(
                "rule: expected {rule}, got {}{}",
                decision.rule.as_deref().unwrap_or("-"),
                unknown_rule(&engine, rule)
            ));
        }
        results.push(CaseResult {
            name: case.name.clone(),
            passed: failures.is_empty(),
            failures,
        });
    }
    Ok(results)
}

/// ` (the policy has no rule `x`; did you mean `y`?)` when an expected rule is not a rule of
/// the policy at all (a case that can never pass), else nothing.
fn unknown_rule(engine: &Engine, rule: &str) -> String {
    let names = || engine.policy().rules.iter().map(|r| r.name.as_str());
    if names().any(|name| name == rule) {
        return String::new();
    }
    match compile::closest_name(rule, names()) {
        Some(best) => format!(" (the policy has no rule `{rule}`; did you mean `{best}`?)"),
        None => format!(" (the policy has no rule `{rule}`)"),
    }
}

/// `test`.
pub fn cmd_test(args: &TestArgs) -> Result<Exit, CliError> {
    let results = run_cases(&args.policy, &args.cases)?;
    let failed = results.iter().filter(|r| !r.passed).count();
    if args.json {
        let out = serde_json::json!({ "passed": results.len() - failed, "failed": failed, "cases": results });
        output::outln(&format!("{out:#}"))?;
    } else {
        let mut text = String::new();
        for r in &results {
            let verdict = if r.passed { "PASS" } else { "FAIL" };
            text.push_str(&format!("{verdict} {}\n", r.name));
            for f in &r.failures {
                text.push_str(&format!("     {f}\n"));
            }
        }
        text.push_str(&format!(
            "policy tests: {} passed, {failed} failed\n",
            results.len() - failed
        ));
        output::out(&text)?;
    }
    Ok(if failed == 0 { Exit::Ok } else { Exit::Denied })
}
