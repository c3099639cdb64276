//! JWT decoding (before any trust) and verification against one issuer's keys.
//!
//! The order of checks is fixed: structure, `alg` known, issuer known, `alg` allowed for
//! that issuer, key found, signature, then times, audience and lifetime. Claims are only
//! trusted after the signature verifies; until then they only pick the issuer and key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::JWTError;
use jwt_simple::prelude::{Duration, UnixTimeStamp, VerificationOptions};
use serde_json::{Map, Value};

use crate::algorithm::Algorithm;
use crate::claims::{ClaimPath, collect_strings};
use crate::compiled::CompiledIssuer;
use crate::keys::KeySet;
use crate::reason::{DenyReason, Malformed};

/// Longest token accepted, in bytes. Entra tokens with many groups reach a few KiB.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A decoded, not yet verified token.
#[derive(Debug, Clone)]
pub struct DecodedToken<'a> {
    /// The token text.
    pub raw: &'a str,
    /// The header's `alg`, as written.
    pub alg: String,
    /// The header's `kid`.
    pub kid: Option<String>,
    /// The payload.
    pub claims: Map<String, Value>,
}

fn decode_part(part: &str, name: &'static str) -> Result<Map<String, Value>, DenyReason> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| DenyReason::Malformed(Malformed::BadBase64 { part: name }))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(DenyReason::Malformed(Malformed::BadJson { part: name })),
    }
}

/// Decodes the structure of a compact JWS and type-checks the registered claims.
pub fn decode(raw: &str) -> Result<DecodedToken<'_>, DenyReason> {
    if raw.len() > MAX_TOKEN_LEN {
        return Err(DenyReason::Malformed(Malformed::TooLong {
            len: raw.len(),
            max: MAX_TOKEN_LEN,
        }));
    }
    let mut parts = raw.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(DenyReason::Malformed(Malformed::NotThreeParts));
    };
    let header = decode_part(header, "header")?;
    let claims = decode_part(payload, "payload")?;
    if URL_SAFE_NO_PAD.decode(signature).is_err() {
        return Err(DenyReason::Malformed(Malformed::BadBase64 {
            part: "signature",
        }));
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(DenyReason::Malformed(Malformed::MissingAlg))?
        .to_owned();
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => {
            return Err(DenyReason::Malformed(Malformed::ClaimType {
                claim: "kid",
                expected: "a string",
            }));
        }
    };
    let token = DecodedToken {
        raw,
        alg,
        kid,
        claims,
    };
    token.check_claim_types()?;
    Ok(token)
}

impl DecodedToken<'_> {
    fn check_claim_types(&self) -> Result<(), DenyReason> {
        let wrong = |claim, expected| {
            Err(DenyReason::Malformed(Malformed::ClaimType {
                claim,
                expected,
            }))
        };
        for claim in ["iss", "sub", "jti"] {
            if let Some(value) = self.claims.get(claim) {
                if !value.is_string() {
                    return wrong(claim, "a string");
                }
            }
        }
        for claim in ["exp", "nbf", "iat"] {
            if let Some(value) = self.claims.get(claim) {
                if value.as_u64().is_none() {
                    return wrong(claim, "a non-negative integer number of seconds");
                }
            }
        }
        match self.claims.get("aud") {
            None | Some(Value::String(_)) => {}
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
            Some(_) => return wrong("aud", "a string or an array of strings"),
        }
        Ok(())
    }

    /// The `iss` claim.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    fn time_claim(&self, name: &str) -> Option<u64> {
        self.claims.get(name).and_then(Value::as_u64)
    }
}

/// The outcome of one verification step, for `explain`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// What was checked.
    pub check: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// The values compared.
    pub detail: String,
}

/// An optional sink for [`Check`]s: `None` on the filter's hot path.
pub type Trace<'a> = Option<&'a mut Vec<Check>>;

pub(crate) fn record(
    trace: &mut Trace<'_>,
    check: &'static str,
    passed: bool,
    detail: impl FnOnce() -> String,
) {
    if let Some(trace) = trace.as_deref_mut() {
        trace.push(Check {
            check,
            passed,
            detail: detail(),
        });
    }
}

/// Verifies a decoded token against its issuer's keys and rules. `alg` was already checked
/// against the issuer's allowed list.
pub(crate) fn verify_with_issuer(
    token: &DecodedToken<'_>,
    alg: Algorithm,
    issuer: &CompiledIssuer,
    keys: &KeySet,
    now: u64,
    trace: &mut Trace<'_>,
) -> Result<(), DenyReason> {
    let kid = token.kid.as_deref();
    let mut candidates = keys.candidates(kid, alg).peekable();
    if candidates.peek().is_none() {
        record(trace, "key", false, || {
            format!(
                "no key fits kid {kid:?} and alg {alg} ({} keys known)",
                keys.len()
            )
        });
        return Err(DenyReason::UnknownKey {
            issuer: issuer.name.clone(),
            kid: kid.map(str::to_owned),
        });
    }
    record(trace, "key", true, || format!("kid {kid:?}, alg {alg}"));

    // jwt-simple verifies the signature; the time checks are ours (`check_times`), because
    // they must report exact figures and because the library treats `now < skew` as expired.
    // Its own time checks are therefore given a clock at which they cannot fail.
    let library_clock = token.time_claim("exp").map_or(now, |exp| exp.min(now));
    let options = VerificationOptions {
        artificial_time: Some(UnixTimeStamp::from_secs(library_clock)),
        time_tolerance: Some(Duration::from_secs(0)),
        accept_future: true,
        max_token_length: Some(MAX_TOKEN_LEN),
        ..VerificationOptions::default()
    };
    let mut signature_ok = false;
    let mut last_error = None;
    for verifier in candidates {
        match verifier.verify(token.raw, options.clone()) {
            Ok(_) => {
                signature_ok = true;
                break;
            }
            Err(error) => {
                last_error = Some(match error.downcast_ref::<JWTError>() {
                    // A signature of the wrong length or encoding is a bad signature too.
                    Some(
                        JWTError::InvalidSignature
                        | JWTError::InvalidAuthenticationTag
                        | JWTError::InvalidPublicKey,
                    )
                    | None => DenyReason::BadSignature,
                    Some(other) => DenyReason::Malformed(Malformed::Refused {
                        detail: other.to_string(),
                    }),
                });
            }
        }
    }
    if !signature_ok {
        record(trace, "signature", false, || {
            "signature does not verify with any candidate key".to_owned()
        });
        return Err(last_error.unwrap_or(DenyReason::BadSignature));
    }
    record(trace, "signature", true, || format!("verified with {alg}"));

    check_claims(token, issuer, now, trace)
}

/// The checks after the signature: times, lifetime, audience.
pub(crate) fn check_claims(
    token: &DecodedToken<'_>,
    issuer: &CompiledIssuer,
    now: u64,
    trace: &mut Trace<'_>,
) -> Result<(), DenyReason> {
    check_times(token, issuer, now, trace)?;
    check_audience(token, issuer, trace)
}

fn check_times(
    token: &DecodedToken<'_>,
    issuer: &CompiledIssuer,
    now: u64,
    trace: &mut Trace<'_>,
) -> Result<(), DenyReason> {
    let require_expiry = issuer.require_expiry;
    let skew = issuer.clock_skew_secs;
    let exp = token.time_claim("exp");
    match exp {
        Some(exp) => {
            let ok = now.saturating_sub(skew) <= exp;
            record(trace, "exp", ok, || {
                format!("exp {exp}, now {now}, skew {skew}s")
            });
            if !ok {
                return Err(DenyReason::Expired { exp, now, skew });
            }
        }
        None if require_expiry => {
            record(trace, "exp", false, || "token has no exp".to_owned());
            return Err(DenyReason::MissingExpiry);
        }
        None => record(trace, "exp", true, || {
            "no exp (allowed by policy)".to_owned()
        }),
    }
    for claim in ["nbf", "iat"] {
        if let Some(at) = token.time_claim(claim) {
            let ok = at <= now.saturating_add(skew);
            record(trace, claim, ok, || {
                format!("{claim} {at}, now {now}, skew {skew}s")
            });
            if !ok {
                return Err(DenyReason::NotYetValid {
                    claim,
                    at,
                    now,
                    skew,
                });
            }
        }
    }
    if let (Some(max), Some(exp)) = (issuer.max_lifetime_secs, exp) {
        let start = token.time_claim("iat").unwrap_or(now);
        let lifetime = exp.saturating_sub(start);
        let ok = lifetime <= max;
        record(trace, "lifetime", ok, || {
            format!("lifetime {lifetime}s, max {max}s")
        });
        if !ok {
            return Err(DenyReason::LifetimeTooLong { lifetime, max });
        }
    }
    Ok(())
}

fn check_audience(
    token: &DecodedToken<'_>,
    issuer: &CompiledIssuer,
    trace: &mut Trace<'_>,
) -> Result<(), DenyReason> {
    if issuer.audiences.is_empty() {
        record(trace, "audience", true, || {
            "issuer checks no audience".to_owned()
        });
        return Ok(());
    }
    let mut got = Vec::new();
    for path in &issuer.audience_claims {
        if let Some(value) = path.lookup(&token.claims) {
            collect_strings_exact(value, &mut got);
        }
    }
    let ok = got
        .iter()
        .any(|aud| issuer.audiences.iter().any(|want| want == aud));
    record(trace, "audience", ok, || {
        let claims: Vec<String> = issuer
            .audience_claims
            .iter()
            .map(ClaimPath::to_string)
            .collect();
        format!("{claims:?} = {got:?}, accepted {:?}", issuer.audiences)
    });
    if ok {
        Ok(())
    } else {
        got.truncate(8);
        Err(DenyReason::WrongAudience { got })
    }
}

/// Audience values are compared whole: a string is one audience, not a space-separated list.
fn collect_strings_exact(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => {
            out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned))
        }
        _ => {}
    }
}

/// Reads role, scope, subject and client claims out of verified claims.
pub(crate) fn extract_strings(claims: &Map<String, Value>, paths: &[ClaimPath]) -> Vec<String> {
    let mut out = Vec::new();
    for path in paths {
        if let Some(value) = path.lookup(claims) {
            collect_strings(value, &mut out);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_errors_are_precise() {
        assert_eq!(
            decode("a.b").unwrap_err(),
            DenyReason::Malformed(Malformed::NotThreeParts)
        );
        assert_eq!(
            decode("a.b.c.d").unwrap_err(),
            DenyReason::Malformed(Malformed::NotThreeParts)
        );
        assert_eq!(
            decode("!!.e30.").unwrap_err(),
            DenyReason::Malformed(Malformed::BadBase64 { part: "header" })
        );
        // header `[]`
        assert_eq!(
            decode("W10.e30.").unwrap_err(),
            DenyReason::Malformed(Malformed::BadJson { part: "header" })
        );
        // header `{}`
        assert_eq!(
            decode("e30.e30.").unwrap_err(),
            DenyReason::Malformed(Malformed::MissingAlg)
        );
    }

    #[test]
    fn registered_claim_types_are_checked() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#);
        for (payload, claim) in [
            (r#"{"exp":"soon"}"#, "exp"),
            (r#"{"exp":-1}"#, "exp"),
            (r#"{"nbf":1.5}"#, "nbf"),
            (r#"{"iss":7}"#, "iss"),
            (r#"{"aud":[1]}"#, "aud"),
        ] {
            let token = format!("{header}.{}.", URL_SAFE_NO_PAD.encode(payload));
            match decode(&token).unwrap_err() {
                DenyReason::Malformed(Malformed::ClaimType { claim: c, .. }) => {
                    assert_eq!(c, claim)
                }
                other => panic!("{payload}: {other:?}"),
            }
        }
    }
}
