//! Large, realistic policies for the scale benchmarks (and `examples/gen_policy.rs`, which
//! prints one for `claimgate compile` and the through-Envoy runs).
//!
//! A multi-tenant inference gateway: two global rules, then four rules per tenant —
//! predict (POST, KServe v1/v2 templates, a role per model filled in from the path), metadata
//! (GET/HEAD, a role and a `tenant` claim), admin (PUT/DELETE, two roles required) and a deny
//! rule refusing callers whose `tenant` claim names another tenant. Tenant `t` owns the
//! paths under `/v1/tenants/t<t>/` and `/v2/tenants/t<t>/`.

#![allow(dead_code)]

use std::fmt::Write as _;

/// The issuer's `iss`.
pub const ISSUER: &str = "https://idp.example.com/realms/inference";
/// The audience tokens carry.
pub const AUDIENCE: &str = "inference";
/// The issuer's HMAC secret (base64url, 32 bytes of 0x2a).
pub const HMAC_SECRET_B64: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio";
/// The raw secret bytes behind [`HMAC_SECRET_B64`].
pub const HMAC_SECRET: [u8; 32] = [0x2a; 32];

/// Rules that are not per tenant (the first rules of every generated policy).
pub const GLOBAL_RULES: usize = 2;

/// A policy of exactly `rules` rules (at least [`GLOBAL_RULES`]).
pub fn policy_toml(rules: usize) -> String {
    let mut text = format!(
        r#"version = 1
name = "scale-{rules}"
default = "deny"

[issuers.corp]
issuer      = "{ISSUER}"
audiences   = ["{AUDIENCE}"]
algorithms  = ["HS256"]
hmac_secret = "{HMAC_SECRET_B64}"
roles       = ["roles"]

[[rules]]
name  = "health"
paths = ["/healthz", "/v2/health/*"]
allow = "anyone"

[[rules]]
name  = "internal"
paths = ["/v1/tenants/{{tenant}}/internal/*"]
deny  = "anyone"
"#
    );
    for i in 0..rules.saturating_sub(GLOBAL_RULES) {
        let t = i / 4;
        let _ = match i % 4 {
            0 => write!(
                text,
                r#"
[[rules]]
name    = "t{t}-predict"
methods = ["POST"]
paths   = ["/v1/tenants/t{t}/models/{{model}}:predict", "/v2/tenants/t{t}/models/{{model}}/infer"]
allow   = {{ issuers = ["corp"], roles_any = ["t{t}.model.{{model}}.invoke", "t{t}.admin"] }}
"#
            ),
            1 => write!(
                text,
                r#"
[[rules]]
name    = "t{t}-metadata"
methods = ["GET", "HEAD"]
paths   = ["/v1/tenants/t{t}/models/{{model}}", "/v2/tenants/t{t}/models/*"]
allow   = {{ issuers = ["corp"], roles_any = ["t{t}.reader", "t{t}.admin"], claims = {{ tenant = ["t{t}"] }} }}
"#
            ),
            2 => write!(
                text,
                r#"
[[rules]]
name    = "t{t}-admin"
methods = ["PUT", "DELETE"]
paths   = ["/v1/tenants/t{t}/admin/*"]
allow   = {{ issuers = ["corp"], roles_all = ["t{t}.admin", "mfa"] }}
"#
            ),
            _ => write!(
                text,
                r#"
[[rules]]
name  = "t{t}-isolation"
paths = ["/v1/tenants/t{t}/*", "/v2/tenants/t{t}/*"]
deny  = {{ issuers = ["corp"], not_claims = {{ tenant = ["t{t}"] }} }}
"#
            ),
        };
    }
    text
}

/// A tenant in the middle of a policy of `rules` rules (tenant 0 when it has none).
pub fn middle_tenant(rules: usize) -> usize {
    rules.saturating_sub(GLOBAL_RULES) / 4 / 2
}

/// The claims of a caller of `tenant` allowed to invoke its model `fraud`.
pub fn caller_claims(tenant: usize, now: u64) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": format!("user-{tenant}"),
        "iat": now,
        "exp": now + 3600,
        "tenant": format!("t{tenant}"),
        "roles": [format!("t{tenant}.model.fraud.invoke"), "mfa"],
    })
}
