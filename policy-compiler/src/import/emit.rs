//! Writes a [`Translation`] as a claimgate TOML policy, every value through TOML's own
//! string encoding and every comment kept to one line, so no input text can add a key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::translate::{ALGORITHMS, Effect, Finding, OutRule, Severity, Table, Term, Translation};

/// A TOML string literal.
fn q(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// A TOML array of strings.
fn list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let items: Vec<String> = items.into_iter().map(|s| q(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A one-line comment text.
fn comment(text: &str) -> String {
    crate::terminal_safe(text).into_owned()
}

fn patterns_table(map: &BTreeMap<String, BTreeSet<String>>) -> String {
    let items: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{} = {}", q(k), list(v)))
        .collect();
    format!("{{ {} }}", items.join(", "))
}

fn principal(term: &Term) -> String {
    match term {
        Term::Anyone => q("anyone"),
        Term::Unauthenticated => q("unauthenticated"),
        Term::Verified(table) if *table == Table::default() => q("authenticated"),
        Term::Verified(table) => {
            let mut parts = Vec::new();
            if let Some(issuers) = &table.issuers {
                parts.push(format!("issuers = {}", list(issuers)));
            }
            if !table.subjects.is_empty() {
                parts.push(format!("subjects = {}", list(&table.subjects)));
            }
            if !table.not_subjects.is_empty() {
                parts.push(format!("not_subjects = {}", list(&table.not_subjects)));
            }
            if !table.claims.is_empty() {
                parts.push(format!("claims = {}", patterns_table(&table.claims)));
            }
            if !table.not_claims.is_empty() {
                parts.push(format!(
                    "not_claims = {}",
                    patterns_table(&table.not_claims)
                ));
            }
            format!("{{ {} }}", parts.join(", "))
        }
    }
}

fn rule(out: &mut String, rule: &OutRule) {
    let _ = writeln!(out, "\n# from {}", comment(&rule.origin));
    let _ = writeln!(out, "[[rules]]");
    let _ = writeln!(out, "name = {}", q(&rule.name));
    let r = &rule.request;
    for (key, values) in [
        ("hosts", &r.hosts),
        ("not_hosts", &r.not_hosts),
        ("methods", &r.methods),
        ("not_methods", &r.not_methods),
        ("paths", &r.paths),
        ("not_paths", &r.not_paths),
    ] {
        if !values.is_empty() {
            let _ = writeln!(out, "{key} = {}", list(values));
        }
    }
    if !r.headers.is_empty() {
        let _ = writeln!(out, "headers = {}", patterns_table(&r.headers));
    }
    if !r.not_headers.is_empty() {
        let _ = writeln!(out, "not_headers = {}", patterns_table(&r.not_headers));
    }
    let effect = match rule.effect {
        Effect::Allow => "allow",
        Effect::Deny => "deny",
    };
    let _ = writeln!(out, "{effect} = {}", principal(&rule.principal));
}

/// The report lines, for standard error and the policy's heading comment.
pub fn report_line(finding: &Finding) -> String {
    let severity = match finding.severity {
        Severity::Note => "note",
        Severity::Loss => "not translated exactly",
        Severity::Wider => "WIDER than Istio",
    };
    comment(&format!(
        "{severity}: {}: {}",
        finding.place, finding.message
    ))
}

/// The policy text.
pub fn policy_toml(t: &Translation, name: &str, sources: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Imported from Istio resources by `claimgate import`:"
    );
    for source in sources {
        let _ = writeln!(out, "#   {}", comment(source));
    }
    if t.findings.is_empty() {
        let _ = writeln!(out, "# Every construct was translated exactly.");
    } else {
        let _ = writeln!(out, "# Import report:");
        for finding in &t.findings {
            let _ = writeln!(out, "#   {}", report_line(finding));
        }
    }
    let _ = writeln!(out, "version = 1");
    let _ = writeln!(out, "name = {}", q(name));
    let _ = writeln!(
        out,
        "# Istio: no ALLOW policy lets every request not denied through; any ALLOW policy denies what no ALLOW rule admits."
    );
    let _ = writeln!(
        out,
        "default = {}",
        q(if t.default_deny { "deny" } else { "allow" })
    );
    let _ = writeln!(out, "statuses = \"istio\"");
    let _ = writeln!(out, "\n[token]");
    let _ = writeln!(
        out,
        "verify = \"when_present\"   # RequestAuthentication: a present token is always verified"
    );
    let _ = writeln!(
        out,
        "forward = {}   # forwardOriginalToken (Istio's default: false)",
        t.forward
    );
    // Every location some issuer names (each issuer also lists its own).
    let mut headers: Vec<&super::istio::JwtHeader> = Vec::new();
    let mut params: BTreeSet<&String> = BTreeSet::new();
    let mut cookies: BTreeSet<&String> = BTreeSet::new();
    for issuer in &t.issuers {
        for h in &issuer.from_headers {
            if !headers.contains(&h) {
                headers.push(h);
            }
        }
        params.extend(issuer.from_params.iter());
        cookies.extend(issuer.from_cookies.iter());
    }
    let header_items: Vec<String> = headers
        .iter()
        .map(|h| format!("{{ name = {}, prefix = {} }}", q(&h.name), q(&h.prefix)))
        .collect();
    if !header_items.is_empty() {
        let _ = writeln!(out, "headers = [{}]", header_items.join(", "));
    }
    if !params.is_empty() {
        let _ = writeln!(out, "query = {}", list(params));
    }
    if !cookies.is_empty() {
        let _ = writeln!(out, "cookies = {}", list(cookies));
    }
    for issuer in &t.issuers {
        let _ = writeln!(out, "\n# from {}", comment(&issuer.origin));
        let _ = writeln!(out, "[issuers.{}]", q(&issuer.key));
        let _ = writeln!(out, "issuer = {}", q(&issuer.issuer));
        if !issuer.audiences.is_empty() {
            let _ = writeln!(out, "audiences = {}", list(&issuer.audiences));
        }
        let algorithms: Vec<String> = ALGORITHMS.iter().map(|a| (*a).to_owned()).collect();
        let _ = writeln!(
            out,
            "algorithms = {}   # Istio: whatever the key set allows",
            list(&algorithms)
        );
        let _ = writeln!(out, "clock_skew = \"60s\"   # Envoy jwt_authn's default");
        let items: Vec<String> = issuer
            .from_headers
            .iter()
            .map(|h| format!("{{ name = {}, prefix = {} }}", q(&h.name), q(&h.prefix)))
            .collect();
        let _ = writeln!(out, "from_headers = [{}]", items.join(", "));
        if !issuer.from_params.is_empty() {
            let _ = writeln!(out, "from_params = {}", list(&issuer.from_params));
        }
        if !issuer.from_cookies.is_empty() {
            let _ = writeln!(out, "from_cookies = {}", list(&issuer.from_cookies));
        }
        if !issuer.claims_to_headers.is_empty() {
            let items: Vec<String> = issuer
                .claims_to_headers
                .iter()
                .map(|(h, c)| format!("{} = {}", q(h), q(c)))
                .collect();
            let _ = writeln!(out, "claims_to_headers = {{ {} }}", items.join(", "));
        }
        if let Some(header) = &issuer.payload_to_header {
            let _ = writeln!(out, "payload_to_header = {}", q(header));
        }
        let _ = writeln!(out, "[issuers.{}.jwks]", q(&issuer.key));
        if let Some(inline) = &issuer.jwks_inline {
            let _ = writeln!(out, "inline = {}", q(inline));
        }
        if let Some(uri) = &issuer.jwks_uri {
            let _ = writeln!(out, "uri = {}", q(uri));
        }
        if let Some(timeout) = &issuer.timeout {
            let _ = writeln!(out, "timeout = {}", q(timeout));
        }
    }
    for r in &t.rules {
        rule(&mut out, r);
    }
    out
}
