//! JWT decoding (before any trust) and verification against one issuer's keys.
//!
//! The order of checks is fixed: structure, `alg` known, issuer known, `alg` allowed for
//! that issuer, key found, signature, then times, audience and lifetime. Claims are only
//! trusted after the signature verifies; until then they only pick the issuer and key.
//!
//! Decoding is strict, so that no other JWT parser on the path can read a different token
//! than the one verified here: a repeated member name anywhere in the header or payload is
//! malformed ([`json`]); `crit` (no extension is understood, RFC 7515 §4.1.11) and an
//! embedded `jwk` (a token naming its own key) are malformed; the header members jwt-simple
//! reads must have the types it reads. `jku`, `x5u` and `x5c` are never used: keys come
//! from the policy and its `jwks_uri` only. NumericDates (`exp`, `nbf`, `iat`) may carry a
//! fraction (RFC 7519 §2); they are rounded towards refusal (`exp` down, `nbf`/`iat` up)
//! once, here, so every later reader sees whole seconds.

mod json;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::algorithm::Algorithm;
use crate::claims::{ClaimPath, collect_strings};
use crate::compiled::{AudienceMatch, CompiledIssuer};
use crate::keys::{Candidate, KeySet, MAX_KID_CHARS, printable};
use crate::reason::{DenyReason, Malformed};
use crate::signature::{SignatureHost, offered_to_host};

/// Longest token accepted, in bytes. Entra tokens with many groups reach a few KiB.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Largest NumericDate accepted: 2^53 s, the largest integer every JSON parser reads exactly.
pub const MAX_NUMERIC_DATE: u64 = 1 << 53;

/// Longest excerpt of token text (a member name) kept in a reason.
const EXCERPT_CHARS: usize = 64;

/// A decoded, not yet verified token.
#[derive(Debug, Clone)]
pub struct DecodedToken<'a> {
    /// The token text.
    pub raw: &'a str,
    /// The header's `alg`, as written.
    pub alg: String,
    /// The header's `kid`.
    pub kid: Option<String>,
    /// The header's `typ`.
    pub typ: Option<String>,
    /// The header's `salt` (a jwt-simple extension for salted HMAC keys, which no key here is):
    /// kept because the verifier refuses a token whose `salt` is not base64url, and an HMAC
    /// token that names one.
    pub salt: Option<String>,
    /// The signature, decoded once here (a signature host is given these bytes).
    pub signature: Vec<u8>,
    /// The payload, NumericDates in whole seconds.
    pub claims: Map<String, Value>,
}

impl DecodedToken<'static> {
    /// Claims without a token around them (policy unit tests written as claims): checked and
    /// normalised as [`decode`] does a payload; no header, nothing signed.
    pub fn from_claims(mut claims: Map<String, Value>) -> Result<Self, DenyReason> {
        normalize_claims(&mut claims)?;
        Ok(DecodedToken {
            raw: "",
            alg: String::new(),
            kid: None,
            typ: None,
            salt: None,
            signature: Vec::new(),
            claims,
        })
    }
}

/// A `typ` value as compared (RFC 7515 §4.1.9): ASCII case-insensitive, `application/`
/// optional.
pub fn token_type_key(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

/// Whether a `typ` value names a JWT (RFC 7519 §5.1, RFC 8725 §3.11): `JWT` or an explicit
/// `…+jwt` type such as `at+jwt`, compared as [`token_type_key`] compares, so
/// `application/jwt` and `application/at+jwt` (RFC 7515 §4.1.9) are JWT types too.
pub fn is_jwt_type(typ: &str) -> bool {
    let key = token_type_key(typ);
    key == "jwt"
        || key
            .strip_suffix("+jwt")
            .is_some_and(|media| !media.is_empty())
}

fn malformed(detail: impl Into<String>) -> DenyReason {
    DenyReason::Malformed(Malformed::Refused {
        detail: detail.into(),
    })
}

fn decode_part(part: &str, name: &'static str) -> Result<Map<String, Value>, DenyReason> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| DenyReason::Malformed(Malformed::BadBase64 { part: name }))?;
    json::parse_object(&bytes).map_err(|error| match error {
        json::JsonError::Invalid => DenyReason::Malformed(Malformed::BadJson { part: name }),
        json::JsonError::Duplicate(member) => malformed(format!(
            "token {name} repeats the member name `{}`",
            printable(&member, EXCERPT_CHARS)
        )),
    })
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
    let mut claims = decode_part(payload, "payload")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| DenyReason::Malformed(Malformed::BadBase64 { part: "signature" }))?;
    check_header(&header)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(DenyReason::Malformed(Malformed::MissingAlg))?
        .to_owned();
    let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
    let typ = header.get("typ").and_then(Value::as_str).map(str::to_owned);
    let salt = header
        .get("salt")
        .and_then(Value::as_str)
        .map(str::to_owned);
    normalize_claims(&mut claims)?;
    Ok(DecodedToken {
        raw,
        alg,
        kid,
        typ,
        salt,
        signature,
        claims,
    })
}

fn wrong_type(claim: &'static str, expected: &'static str) -> DenyReason {
    DenyReason::Malformed(Malformed::ClaimType { claim, expected })
}

/// Header members: refused when they ask for what is not supported, and type-checked where
/// the verifier reads them (a type it cannot read must not surface as a bad signature).
fn check_header(header: &Map<String, Value>) -> Result<(), DenyReason> {
    if header.contains_key("crit") {
        return Err(malformed(
            "token header has `crit`: no JWS extension is understood (RFC 7515 §4.1.11)",
        ));
    }
    if header.contains_key("jwk") {
        return Err(malformed(
            "token header embeds a key (`jwk`): keys come from the policy only",
        ));
    }
    for member in ["kid", "typ", "cty", "jku", "x5u", "x5t", "x5t#S256", "salt"] {
        if header.get(member).is_some_and(|v| !v.is_string()) {
            return Err(wrong_type(member, "a string"));
        }
    }
    match header.get("x5c") {
        None => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(_) => return Err(wrong_type("x5c", "an array of strings")),
    }
    if let Some(typ) = header.get("typ").and_then(Value::as_str) {
        // Anything but a JWT type is not a JWT; the verifier is then told to accept the `typ`
        // checked here (it does not know the `application/` prefix).
        if !is_jwt_type(typ) {
            return Err(malformed(format!(
                "token header `typ` is `{}`, not a JWT type",
                printable(typ, EXCERPT_CHARS)
            )));
        }
    }
    Ok(())
}

/// How a fractional NumericDate is rounded: always towards refusing the token.
#[derive(Debug, Clone, Copy)]
enum Rounding {
    /// For `exp`: the token ends no later than it says.
    Down,
    /// For `nbf` and `iat`: the token starts no earlier than it says.
    Up,
}

/// A NumericDate in whole seconds: a non-negative JSON number no larger than
/// [`MAX_NUMERIC_DATE`], fractions rounded; anything else is `None`. The rounding applies to
/// the double the text parses to (sub-microsecond for dates near today; near 2^53 every
/// double is a whole number).
fn numeric_date(value: &Value, rounding: Rounding) -> Option<u64> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(whole) = number.as_u64() {
        return (whole <= MAX_NUMERIC_DATE).then_some(whole);
    }
    let seconds = number.as_f64()?;
    if !seconds.is_finite() || seconds.is_sign_negative() || seconds > MAX_NUMERIC_DATE as f64 {
        return None;
    }
    let rounded = match rounding {
        Rounding::Down => seconds.floor(),
        Rounding::Up => seconds.ceil(),
    };
    Some(rounded as u64)
}

/// Type-checks the registered claims and rewrites NumericDates as whole seconds.
pub fn normalize_claims(claims: &mut Map<String, Value>) -> Result<(), DenyReason> {
    for claim in ["iss", "sub", "jti", "nonce"] {
        if claims.get(claim).is_some_and(|v| !v.is_string()) {
            return Err(wrong_type(claim, "a string"));
        }
    }
    for (claim, rounding) in [
        ("exp", Rounding::Down),
        ("nbf", Rounding::Up),
        ("iat", Rounding::Up),
    ] {
        if let Some(value) = claims.get_mut(claim) {
            let seconds = numeric_date(value, rounding).ok_or(wrong_type(
                claim,
                "a NumericDate (seconds since 1970, non-negative, at most 2^53)",
            ))?;
            *value = Value::from(seconds);
        }
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(_) => return Err(wrong_type("aud", "a string or an array of strings")),
    }
    Ok(())
}

impl DecodedToken<'_> {
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
/// against the issuer's allowed list. RS*/ES* signatures are offered to `host` first, if
/// any; its `None` leaves the candidate to the pure-Rust path.
pub(crate) fn verify_with_issuer(
    token: &DecodedToken<'_>,
    alg: Algorithm,
    issuer: &CompiledIssuer,
    keys: &KeySet,
    host: Option<&dyn SignatureHost>,
    now: u64,
    trace: &mut Trace<'_>,
) -> Result<(), DenyReason> {
    check_token_type(token, issuer, trace)?;
    let kid = token.kid.as_deref();
    let candidates = match keys.select(kid, alg) {
        Ok(candidates) => candidates,
        Err(miss) => {
            let kid = kid.map(|kid| printable(kid, MAX_KID_CHARS));
            record(trace, "key", false, || {
                format!(
                    "kid {kid:?}, alg {alg}: {miss} ({} keys known); nothing verified",
                    keys.len()
                )
            });
            return Err(DenyReason::UnknownKey {
                issuer: issuer.name.clone(),
                kid,
            });
        }
    };
    record(trace, "key", true, || {
        format!(
            "kid {:?}, alg {alg}: {} candidate key(s)",
            kid.map(|kid| printable(kid, MAX_KID_CHARS)),
            candidates.len()
        )
    });

    let parts = SignedParts::of(token);
    let mut signature_ok = false;
    let mut last_error = None;
    for candidate in candidates {
        let answer = match ask_host(host, alg, &candidate, &parts) {
            Some(true) => Ok(()),
            Some(false) => Err(DenyReason::BadSignature),
            None => verify_pure(&parts, &candidate),
        };
        match answer {
            Ok(()) => {
                signature_ok = true;
                break;
            }
            Err(reason) => last_error = Some(reason),
        }
    }
    if !signature_ok {
        record(trace, "signature", false, || {
            "signature does not verify with the candidate key".to_owned()
        });
        return Err(last_error.unwrap_or(DenyReason::BadSignature));
    }
    record(trace, "signature", true, || format!("verified with {alg}"));

    check_claims(token, issuer, now, trace)
}

/// What is checked of a token's signature, taken apart once for every candidate key.
struct SignedParts<'t> {
    /// The first two parts, bytes as received.
    signing_input: &'t [u8],
    /// The third part, as `decode` base64url-decoded it.
    signature: &'t [u8],
    /// The header's `salt`, if any, and whether it is base64url.
    salt: Option<bool>,
}

impl<'t> SignedParts<'t> {
    fn of(token: &'t DecodedToken<'_>) -> Self {
        let (signing_input, _) = token.raw.rsplit_once('.').unwrap_or((token.raw, ""));
        SignedParts {
            signing_input: signing_input.as_bytes(),
            signature: &token.signature,
            salt: token
                .salt
                .as_deref()
                .map(|salt| URL_SAFE_NO_PAD.decode(salt).is_ok()),
        }
    }
}

/// The host's answer for one candidate key, or `None` when the host is not asked: no host,
/// an algorithm never offered to one ([`offered_to_host`]), a key it cannot read, or a token
/// the pure path refuses whatever the key (a signature of a length no valid one has, a `salt`
/// that is not base64url): the pure path refuses those itself.
fn ask_host(
    host: Option<&dyn SignatureHost>,
    alg: Algorithm,
    candidate: &Candidate<'_>,
    parts: &SignedParts<'_>,
) -> Option<bool> {
    let host = host?;
    if !offered_to_host(alg) || !candidate.host_key.is_usable() || parts.salt == Some(false) {
        return None;
    }
    let signature = parts.signature;
    let expected_len = match alg {
        Algorithm::ES256 => 64,
        Algorithm::ES384 => 96,
        _ => candidate.rsa_signature_len,
    };
    if signature.len() != expected_len {
        return None;
    }
    host.verify(alg, candidate.host_key, parts.signing_input, signature)
}

/// The pure-Rust signature check of one candidate key. Its refusals, in order, are the ones
/// jwt-simple's `verify_token` had (proven in `tests/signature_parity.rs`): an HMAC secret too
/// short to use, a `salt` that is not base64url (a bad signature), any `salt` on an HMAC
/// token (no secret here is salted), then the signature itself.
fn verify_pure(parts: &SignedParts<'_>, candidate: &Candidate<'_>) -> Result<(), DenyReason> {
    let verifier = candidate.verifier;
    if verifier.is_weak_secret() {
        return Err(malformed(crate::keys::WEAK_KEY));
    }
    match parts.salt {
        Some(false) => return Err(DenyReason::BadSignature),
        Some(true) if verifier.algorithm().is_hmac() => return Err(malformed("Missing salt")),
        _ => {}
    }
    if verifier.verify(parts.signing_input, parts.signature) {
        Ok(())
    } else {
        Err(DenyReason::BadSignature)
    }
}

/// The issuer's `token_types`, checked before any key is looked for: telling an ID token from
/// an access token (RFC 9068, RFC 8725 §3.11) needs no signature work.
fn check_token_type(
    token: &DecodedToken<'_>,
    issuer: &CompiledIssuer,
    trace: &mut Trace<'_>,
) -> Result<(), DenyReason> {
    if issuer.token_types.is_empty() {
        return Ok(());
    }
    let typ = token.typ.as_deref();
    let ok = typ.is_some_and(|typ| issuer.token_types.contains(&token_type_key(typ)));
    let shown = typ.map_or_else(|| "(absent)".to_owned(), |t| printable(t, EXCERPT_CHARS));
    record(trace, "token type", ok, || {
        format!("typ {shown}, accepted {:?}", issuer.token_types)
    });
    if ok {
        Ok(())
    } else {
        Err(DenyReason::TokenTypeNotAllowed { typ: shown })
    }
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
    let accepted = |aud: &String| issuer.audiences.iter().any(|want| want == aud);
    let mut got = Vec::new();
    let ok = match issuer.audience_match {
        AudienceMatch::Any => {
            for path in &issuer.audience_claims {
                if let Some(value) = path.lookup(&token.claims) {
                    collect_strings_exact(value, &mut got);
                }
            }
            got.iter().any(accepted)
        }
        AudienceMatch::All => {
            // Every listed claim the token carries must name an accepted audience, `aud`
            // must be there when listed, and some listed claim must be there at all.
            let mut present = false;
            let mut every = true;
            for path in &issuer.audience_claims {
                match path.lookup(&token.claims) {
                    Some(value) => {
                        let mut values = Vec::new();
                        collect_strings_exact(value, &mut values);
                        present = true;
                        every &= values.iter().any(accepted);
                        got.extend(values);
                    }
                    None if path.0 == ["aud"] => every = false,
                    None => {}
                }
            }
            present && every
        }
    };
    record(trace, "audience", ok, || {
        let claims: Vec<String> = issuer
            .audience_claims
            .iter()
            .map(ClaimPath::to_string)
            .collect();
        let mode = match issuer.audience_match {
            AudienceMatch::Any => "one of them",
            AudienceMatch::All => "each present one",
        };
        format!(
            "{claims:?} = {got:?}, accepted {:?} ({mode})",
            issuer.audiences
        )
    });
    if ok {
        Ok(())
    } else {
        // Token text in a reason: bounded in count and length, printable.
        got.truncate(8);
        let got = got
            .iter()
            .map(|aud| printable(aud, EXCERPT_CHARS))
            .collect();
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

    fn token(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    fn malformed_detail(reason: DenyReason) -> String {
        match reason {
            DenyReason::Malformed(Malformed::Refused { detail }) => detail,
            other => panic!("not a refused structure: {other:?}"),
        }
    }

    #[test]
    fn registered_claim_types_are_checked() {
        for (payload, claim) in [
            (r#"{"exp":"soon"}"#, "exp"),
            (r#"{"exp":-1}"#, "exp"),
            (r#"{"exp":-0.5}"#, "exp"),
            (r#"{"exp":9007199254740993}"#, "exp"),
            (r#"{"exp":1e300}"#, "exp"),
            (r#"{"nbf":null}"#, "nbf"),
            (r#"{"iat":[1]}"#, "iat"),
            (r#"{"iss":7}"#, "iss"),
            (r#"{"nonce":7}"#, "nonce"),
            (r#"{"aud":[1]}"#, "aud"),
            (r#"{"aud":{"a":1}}"#, "aud"),
        ] {
            match decode(&token(r#"{"alg":"RS256"}"#, payload)).unwrap_err() {
                DenyReason::Malformed(Malformed::ClaimType { claim: c, .. }) => {
                    assert_eq!(c, claim)
                }
                other => panic!("{payload}: {other:?}"),
            }
        }
    }

    #[test]
    fn numeric_dates_may_carry_fractions_and_round_towards_refusal() {
        let raw = token(
            r#"{"alg":"RS256"}"#,
            r#"{"exp":1800000000.9,"nbf":1700000000.1,"iat":1.0,"x":0.5}"#,
        );
        let decoded = decode(&raw).unwrap();
        assert_eq!(decoded.claims["exp"], Value::from(1_800_000_000u64));
        assert_eq!(decoded.claims["nbf"], Value::from(1_700_000_001u64));
        assert_eq!(decoded.claims["iat"], Value::from(1u64));
        assert_eq!(decoded.claims["x"], serde_json::json!(0.5));
        let raw = token(r#"{"alg":"RS256"}"#, r#"{"exp":9007199254740992}"#);
        assert_eq!(
            decode(&raw).unwrap().time_claim("exp"),
            Some(MAX_NUMERIC_DATE)
        );
    }

    #[test]
    fn header_extensions_and_embedded_keys_are_malformed() {
        for header in [
            r#"{"alg":"RS256","crit":["exp"],"exp":1}"#,
            r#"{"alg":"RS256","crit":[]}"#,
            r#"{"alg":"RS256","crit":"exp"}"#,
            r#"{"alg":"RS256","crit":null}"#,
            r#"{"alg":"RS256","jwk":{"kty":"oct","k":"AAAA"}}"#,
            r#"{"alg":"RS256","typ":"JOSE"}"#,
            r#"{"alg":"RS256","typ":"application/json"}"#,
            r#"{"alg":"RS256","typ":"+jwt"}"#,
            r#"{"alg":"RS256","alg":"none"}"#,
        ] {
            let detail = malformed_detail(decode(&token(header, "{}")).unwrap_err());
            assert!(!detail.is_empty(), "{header}");
        }
        for (header, member) in [
            (r#"{"alg":"RS256","kid":7}"#, "kid"),
            (r#"{"alg":"RS256","typ":1}"#, "typ"),
            (r#"{"alg":"RS256","jku":{}}"#, "jku"),
            (r#"{"alg":"RS256","x5c":"MII"}"#, "x5c"),
        ] {
            match decode(&token(header, "{}")).unwrap_err() {
                DenyReason::Malformed(Malformed::ClaimType { claim, .. }) => {
                    assert_eq!(claim, member)
                }
                other => panic!("{header}: {other:?}"),
            }
        }
        // Key URLs are read as text and never used.
        for header in [
            r#"{"alg":"RS256","typ":"at+JWT","jku":"https://evil/jwks","x5u":"https://evil/c","x5c":["MII"]}"#,
            r#"{"alg":"RS256","typ":"application/at+jwt"}"#,
            r#"{"alg":"RS256","typ":"jwt"}"#,
            r#"{"alg":"RS256","typ":"application/JWT"}"#,
        ] {
            assert!(decode(&token(header, "{}")).is_ok(), "{header}");
        }
    }

    #[test]
    fn repeated_member_names_are_malformed_and_named_briefly() {
        let detail = malformed_detail(
            decode(&token(
                r#"{"alg":"RS256"}"#,
                r#"{"sub":"alice","sub":"admin"}"#,
            ))
            .unwrap_err(),
        );
        assert_eq!(detail, "token payload repeats the member name `sub`");
        let long = format!(
            r#"{{"alg":"RS256","{0}":1,"{0}":2}}"#,
            "\\u0007".repeat(1000)
        );
        let detail = malformed_detail(decode(&token(&long, "{}")).unwrap_err());
        assert!(detail.len() < 140, "{detail}");
    }

    mod host_seam {
        use std::sync::Mutex;

        use jwt_simple::prelude::*;

        use super::super::*;
        use crate::keys::parse_jwk;
        use crate::signature::HostKey;

        /// A host that answers every question the same way and remembers what it was asked.
        struct ScriptedHost {
            answer: Option<bool>,
            asked: Mutex<Vec<(Algorithm, usize)>>,
        }

        impl ScriptedHost {
            fn new(answer: Option<bool>) -> Self {
                ScriptedHost {
                    answer,
                    asked: Mutex::new(Vec::new()),
                }
            }

            fn asked(&self) -> Vec<(Algorithm, usize)> {
                self.asked.lock().unwrap().clone()
            }
        }

        impl SignatureHost for ScriptedHost {
            fn verify(
                &self,
                alg: Algorithm,
                key: &HostKey,
                signing_input: &[u8],
                signature: &[u8],
            ) -> Option<bool> {
                assert_eq!(key.spki_der, b"spki".to_vec());
                assert_eq!(signing_input.iter().filter(|b| **b == b'.').count(), 1);
                self.asked.lock().unwrap().push((alg, signature.len()));
                self.answer
            }
        }

        const ISS: &str = "https://idp.example";

        fn claims() -> JWTClaims<NoCustomClaims> {
            Claims::create(Duration::from_hours(1)).with_issuer(ISS)
        }

        fn now() -> u64 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        }

        /// One valid token per algorithm, with the key set that verifies it.
        fn signed_tokens() -> Vec<(Algorithm, String, KeySet)> {
            let host_key = HostKey {
                spki_der: b"spki".to_vec(),
            };
            let prepare = |jwk: String, alg: Algorithm| {
                let mut jwk: Value = serde_json::from_str(&jwk).unwrap();
                // One RSA key serves RS256, RS512 and PS256 here: no pinned `alg`.
                jwk.as_object_mut().unwrap().remove("alg");
                let key = parse_jwk(&jwk).unwrap();
                let mut set = KeySet::prepare(&[key], &[alg]);
                set.set_host_keys_for_tests(&host_key);
                set
            };
            let rsa = RS256KeyPair::generate(2048).unwrap();
            let rsa_der = rsa.to_der().unwrap();
            let rsa_jwk = rsa.public_key().to_jwk();
            let es256 = ES256KeyPair::generate();
            let es384 = ES384KeyPair::generate();
            let ed = Ed25519KeyPair::generate();
            let secret = [9u8; 32];
            let mut hmac = KeySet::default().with_secret(&secret, &[Algorithm::HS256]);
            hmac.set_host_keys_for_tests(&host_key);
            vec![
                (
                    Algorithm::RS256,
                    rsa.sign(claims()).unwrap(),
                    prepare(rsa_jwk.clone(), Algorithm::RS256),
                ),
                (
                    Algorithm::RS512,
                    RS512KeyPair::from_der(&rsa_der)
                        .unwrap()
                        .sign(claims())
                        .unwrap(),
                    prepare(rsa_jwk.clone(), Algorithm::RS512),
                ),
                (
                    Algorithm::PS256,
                    PS256KeyPair::from_der(&rsa_der)
                        .unwrap()
                        .sign(claims())
                        .unwrap(),
                    prepare(rsa_jwk, Algorithm::PS256),
                ),
                (
                    Algorithm::ES256,
                    es256.sign(claims()).unwrap(),
                    prepare(es256.public_key().to_jwk(), Algorithm::ES256),
                ),
                (
                    Algorithm::ES384,
                    es384.sign(claims()).unwrap(),
                    prepare(es384.public_key().to_jwk(), Algorithm::ES384),
                ),
                (
                    Algorithm::EdDSA,
                    ed.sign(claims()).unwrap(),
                    prepare(ed.public_key().to_jwk(), Algorithm::EdDSA),
                ),
                (
                    Algorithm::HS256,
                    HS256Key::from_bytes(&secret)
                        .authenticate(claims())
                        .unwrap(),
                    hmac,
                ),
            ]
        }

        fn verify(
            token: &str,
            alg: Algorithm,
            keys: &KeySet,
            host: Option<&dyn SignatureHost>,
        ) -> Result<(), DenyReason> {
            let issuer = CompiledIssuer::new("idp", ISS, vec![alg]);
            let decoded = decode(token).unwrap();
            verify_with_issuer(&decoded, alg, &issuer, keys, host, now(), &mut None)
        }

        /// The same token with the last signature byte changed (length kept).
        fn tampered(token: &str) -> String {
            let (input, signature) = token.rsplit_once('.').unwrap();
            let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
            *bytes.last_mut().unwrap() ^= 1;
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(bytes))
        }

        #[test]
        fn the_host_decides_rs_and_es_signatures_and_none_falls_back() {
            for (alg, token, keys) in signed_tokens() {
                let refusing = ScriptedHost::new(Some(false));
                let abstaining = ScriptedHost::new(None);
                let accepting = ScriptedHost::new(Some(true));
                let bad = tampered(&token);
                assert_eq!(verify(&token, alg, &keys, None), Ok(()), "{alg}");
                assert_eq!(
                    verify(&bad, alg, &keys, None),
                    Err(DenyReason::BadSignature),
                    "{alg}"
                );
                assert_eq!(verify(&token, alg, &keys, Some(&abstaining)), Ok(()));
                assert_eq!(
                    verify(&bad, alg, &keys, Some(&abstaining)),
                    Err(DenyReason::BadSignature),
                    "{alg}"
                );
                let refused = verify(&token, alg, &keys, Some(&refusing));
                let accepted_bad = verify(&bad, alg, &keys, Some(&accepting));
                if offered_to_host(alg) {
                    // The host's word is final: a valid token it refuses is refused, and
                    // (scripted here: a real host never lies) a forged one it accepts passes.
                    assert_eq!(refused, Err(DenyReason::BadSignature), "{alg}");
                    assert_eq!(accepted_bad, Ok(()), "{alg}");
                    assert_eq!(abstaining.asked().len(), 2, "{alg}");
                    let len = abstaining.asked()[0].1;
                    assert_eq!(refusing.asked(), vec![(alg, len)]);
                } else {
                    // PS*, EdDSA and HS* never reach the host, whatever it would say.
                    assert_eq!(refused, Ok(()), "{alg}");
                    assert_eq!(accepted_bad, Err(DenyReason::BadSignature), "{alg}");
                    for host in [&refusing, &abstaining, &accepting] {
                        assert!(host.asked().is_empty(), "{alg} reached the host");
                    }
                }
            }
        }

        #[test]
        fn what_the_pure_path_refuses_by_shape_is_never_sent() {
            let accepting = ScriptedHost::new(Some(true));
            for (alg, token, keys) in signed_tokens()
                .into_iter()
                .filter(|(alg, ..)| offered_to_host(*alg))
            {
                let (input, signature) = token.rsplit_once('.').unwrap();
                let bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
                // One byte short, one byte long: no valid signature has that length.
                for len in [bytes.len() - 1, bytes.len() + 1] {
                    let mut resized = bytes.clone();
                    resized.resize(len, 0);
                    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&resized));
                    assert_eq!(
                        verify(&token, alg, &keys, Some(&accepting)),
                        Err(DenyReason::BadSignature),
                        "{alg}, {len} bytes"
                    );
                }
                // A key without a host form is never offered.
                let mut bare = keys.clone();
                bare.set_host_keys_for_tests(&HostKey::default());
                assert_eq!(
                    verify(&tampered(&token), alg, &bare, Some(&accepting)),
                    Err(DenyReason::BadSignature)
                );
            }
            assert!(accepting.asked().is_empty(), "{:?}", accepting.asked());
        }
    }
}
