#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::string_slice
)]
//! Conformance against independent vectors in `../shared/vectors/` (read in place, never
//! copied): jwt_verify_lib's suite, Envoy `jwt_authn`'s cases and the RFC JWS examples.
//!
//! Each case's upstream status is mapped to one of our reason codes. A case whose result
//! differs must be covered by a documented [`Deviation`], and every deviation must still
//! apply to at least one case (so the list cannot rot). Cases in formats we do not read
//! (PEM, X.509 maps) are counted as not applicable.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use claimgate_core::algorithm::ALL_ALGORITHMS;
use claimgate_core::compiled::{CompiledIssuer, CompiledPolicy};
use claimgate_core::engine::{Engine, RemoteKeys};
use claimgate_core::keys::parse_jwks;
use claimgate_core::token;
use serde_json::Value;

/// `$CLAIMGATE_SHARED/vectors`, by default `shared/` beside the checkout.
fn vectors_dir() -> PathBuf {
    std::env::var_os("CLAIMGATE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
        .join("vectors")
}

fn load(name: &str) -> Vec<Value> {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "conformance vectors missing at {}: {e} (shared/ beside the checkout, or set CLAIMGATE_SHARED)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// A documented, deliberate difference from the upstream expectation.
struct Deviation {
    id: &'static str,
    why: &'static str,
    applies: fn(&Value, &str, &str) -> bool,
}

const DEVIATIONS: &[Deviation] = &[
    Deviation {
        id: "no-iss",
        why: "every token must carry `iss`: claimgate picks the issuer (and its keys, audiences, skew) by `iss`, so an issuer-less token is malformed",
        applies: |case, _, ours| {
            ours == "malformed_token" && payload(case).is_some_and(|p| p.get("iss").is_none())
        },
    },
    Deviation {
        id: "audience-exact",
        why: "audiences are compared exactly (RFC 7519 §4.1.3); jwt_verify_lib strips http(s):// and a trailing `/` first",
        applies: |case, _, _| case["kind"] == "audience_check",
    },
    Deviation {
        id: "no-es512",
        why: "ES512 / P-521 is not supported (jwt-simple has no P-521); such tokens and keys are refused",
        applies: |case, _, ours| {
            (ours == "algorithm_not_allowed" && header(case).is_some_and(|h| h["alg"] == "ES512"))
                || (ours == "jwks_error"
                    && case["jwks"]
                        .as_str()
                        .is_some_and(|j| j.contains("ES512") || j.contains("P-521")))
        },
    },
    Deviation {
        id: "iat-checked",
        why: "a token issued in the future (`iat` > now + skew) is refused as not yet valid; jwt_verify_lib ignores `iat`",
        applies: |case, _, ours| {
            let now = case["now"].as_u64().unwrap_or(u64::MAX);
            ours == "not_yet_valid"
                && payload(case)
                    .and_then(|p| p["iat"].as_u64())
                    .is_some_and(|iat| iat > now + 60)
        },
    },
    Deviation {
        id: "alg-missing-is-malformed",
        why: "a header without a string `alg` is reported as a malformed token, not a bad algorithm: both are 401 invalid_token",
        applies: |_, expected, ours| {
            expected == "algorithm_not_allowed" && ours == "malformed_token"
        },
    },
    Deviation {
        id: "ed25519-strict-keys",
        why: "the Ed25519 implementation refuses this public key encoding (weak or non-canonical point): the key is skipped",
        applies: |case, _, ours| {
            ours == "jwks_error"
                && case["jwks"]
                    .as_str()
                    .is_some_and(|j| j.contains("EB54wykhS7YJFD6RYJNnwbWEz3cI7CF5bCDTXlrwI5k"))
        },
    },
    Deviation {
        id: "one-key-without-kid",
        why: "a token that names no `kid` (or one no key has, when the keys have none) is tried against the issuer's only key for its `alg`; with several such keys it is refused as unknown_key without trying them, so a junk token costs at most one verification (issue 8, defect 7); jwt_verify_lib tries every key",
        applies: |case, _, ours| {
            let (keys, named) = keys_for_token_alg(case);
            let token_kid = header(case).is_some_and(|h| h.get("kid").is_some());
            ours == "unknown_key" && keys > 1 && (!token_kid || named == 0)
        },
    },
    Deviation {
        id: "numeric-date-bound",
        why: "a NumericDate above 2^53 s (the largest integer every JSON parser reads exactly) is malformed; jwt_verify_lib reads it as a date 292 billion years ahead",
        applies: |case, _, ours| {
            ours == "malformed_token"
                && payload(case).is_some_and(|p| {
                    ["exp", "nbf", "iat"]
                        .iter()
                        .any(|c| p[*c].as_f64().is_some_and(|t| t > 9_007_199_254_740_992.0))
                })
        },
    },
    Deviation {
        id: "single-hmac-secret",
        why: "an issuer holds one explicit inline HMAC secret; a key set of several secrets that a verifier tries in turn is not a claimgate configuration",
        applies: |case, _, ours| {
            case["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("hmac/"))
                && matches!(ours, "bad_signature" | "jwks_error")
        },
    },
];

fn apply_overrides(case: &Value, claims: &mut serde_json::Map<String, Value>) {
    if let Some(overrides) = case["claim_overrides"].as_object() {
        for (claim, value) in overrides {
            if value.as_str().is_some_and(|v| v.starts_with("absent")) {
                claims.remove(claim);
            } else {
                claims.insert(claim.clone(), value.clone());
            }
        }
    }
}

fn decode_json(part: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?).ok()
}

fn payload(case: &Value) -> Option<Value> {
    decode_json(case["jwt"].as_str()?.split('.').nth(1)?)
}

fn header(case: &Value) -> Option<Value> {
    decode_json(case["jwt"].as_str()?.split('.').next()?)
}

/// How many keys of the case's key set could verify its token's `alg`, and how many of those
/// carry a `kid` (none unless both parse).
fn keys_for_token_alg(case: &Value) -> (usize, usize) {
    let Some(alg) = header(case)
        .and_then(|h| h["alg"].as_str().map(str::to_owned))
        .and_then(|alg| alg.parse::<claimgate_core::algorithm::Algorithm>().ok())
    else {
        return (0, 0);
    };
    let Some(parsed) = case["jwks_strict_json"]
        .as_str()
        .or(case["jwks"].as_str())
        .and_then(|jwks| parse_jwks(jwks).ok())
    else {
        return (0, 0);
    };
    let fitting: Vec<_> = parsed.keys.iter().filter(|k| k.fits(alg)).collect();
    let named = fitting.iter().filter(|k| k.kid.is_some()).count();
    (fitting.len(), named)
}

fn upstream_code(expected: &str) -> &'static str {
    match expected {
        "Ok" | "allowed" | "valid signature" | "HTTP 200" => "ok",
        "JwtVerificationFail" | "JwtEd25519SignatureWrongLength" => "bad_signature",
        "JwksKidAlgMismatch" => "unknown_key",
        "JwtExpired" => "expired",
        "JwtNotYetValid" => "not_yet_valid",
        "JwtAudienceNotAllowed" => "wrong_audience",
        "JwtUnknownIssuer" => "unknown_issuer",
        "JwtMissed" => "no_token",
        "JwtHeaderBadAlg" | "JwtHeaderNotImplementedAlg" => "algorithm_not_allowed",
        e if e.starts_with("Jwks") => "jwks_error",
        e if e.starts_with("Jwt") => "malformed_token",
        _ => "unmapped",
    }
}

fn issuer_for(
    iss: &str,
    keys_json: Option<&str>,
    token_header: Option<Value>,
    audiences: Vec<String>,
    skew: u64,
) -> Result<CompiledIssuer, &'static str> {
    let token_kid = token_header
        .as_ref()
        .and_then(|h| h["kid"].as_str().map(str::to_owned));
    let token_kid = token_kid.as_deref();
    let token_alg = token_header
        .as_ref()
        .map(|h| h["alg"].clone())
        .unwrap_or(Value::Null);
    let mut keys = Vec::new();
    let mut hmac_secret = None;
    if let Some(text) = keys_json {
        let doc: Value = serde_json::from_str(text).map_err(|_| "jwks_error")?;
        // The RFC HMAC examples: stand in for a policy's explicit inline secret.
        let wanted = |k: &&Value| {
            k["kty"] == "oct"
                && (token_kid.is_some_and(|kid| k["kid"] == kid)
                    || (token_kid.is_none() && k["alg"] == token_alg))
        };
        if let Some(k) = doc["keys"]
            .as_array()
            .and_then(|ks| ks.iter().find(wanted))
            .and_then(|k| k["k"].as_str())
        {
            hmac_secret = Some(URL_SAFE_NO_PAD.decode(k).map_err(|_| "jwks_error")?);
        } else {
            keys = parse_jwks(text).map_err(|_| "jwks_error")?.keys;
        }
    }
    // Audience any-of over `aud` (the vectors' model), every algorithm, no `exp` required.
    Ok(CompiledIssuer {
        audiences,
        keys,
        hmac_secret,
        clock_skew_secs: skew,
        require_expiry: false,
        client_claims: vec![],
        ..CompiledIssuer::new("vector", iss, ALL_ALGORITHMS.to_vec())
    })
}

fn engine_with(issuer: CompiledIssuer) -> Engine {
    let policy = CompiledPolicy {
        name: "vectors".into(),
        issuers: vec![issuer],
        ..CompiledPolicy::default()
    };
    Engine::new(policy, String::new()).unwrap()
}

fn now_real() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Verifies `case["jwt"]` with the case's keys: our reason code.
fn verify_code(
    case: &Value,
    keys_json: Option<&str>,
    audiences: Vec<String>,
    now: u64,
    skew: u64,
) -> String {
    let jwt = case["jwt"].as_str().unwrap_or("");
    let iss = payload(case)
        .and_then(|p| p["iss"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let issuer = match issuer_for(&iss, keys_json, header(case), audiences, skew) {
        Ok(issuer) => issuer,
        Err(code) => return code.to_owned(),
    };
    match engine_with(issuer).authenticate(jwt, now, &RemoteKeys::default(), &mut None) {
        Ok(_) => "ok".into(),
        Err(reason) => reason.code().into(),
    }
}

struct Tally {
    applicable: usize,
    matched: usize,
    not_applicable: usize,
    deviations: Vec<(String, &'static str)>,
    unexplained: Vec<String>,
}

fn judge(tally: &mut Tally, case: &Value, expected: &str, ours: &str) {
    tally.applicable += 1;
    if expected == ours {
        tally.matched += 1;
        return;
    }
    match DEVIATIONS
        .iter()
        .find(|d| (d.applies)(case, expected, ours))
    {
        Some(d) => tally
            .deviations
            .push((case["name"].as_str().unwrap_or("?").to_owned(), d.id)),
        None => tally.unexplained.push(format!(
            "{}: upstream {expected}, ours {ours}",
            case["name"]
        )),
    }
}

#[test]
fn conformance_vectors() {
    let mut tally = Tally {
        applicable: 0,
        matched: 0,
        not_applicable: 0,
        deviations: vec![],
        unexplained: vec![],
    };

    for case in load("jwt_verify_lib.json") {
        let expected_raw = case["expected"].as_str().unwrap_or("");
        let format = case["jwks_format"].as_str();
        let jwks = case["jwks_strict_json"].as_str().or(case["jwks"].as_str());
        let skew = case["clock_skew_seconds"].as_u64().unwrap_or(60);
        let now = case["now"].as_u64().unwrap_or_else(now_real);
        match case["kind"].as_str().unwrap_or("") {
            "verify" if format == Some("jwks") => {
                let audiences = case["allowed_audiences"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let ours = verify_code(&case, jwks, audiences, now, skew);
                judge(&mut tally, &case, upstream_code(expected_raw), &ours);
            }
            "jwks_parse" if format == Some("jwks") => {
                let ours = match jwks.map(parse_jwks) {
                    Some(Ok(_)) => "ok",
                    _ => "jwks_error",
                };
                judge(&mut tally, &case, upstream_code(expected_raw), ours);
            }
            "parse" => {
                let jwt = case["jwt"].as_str().unwrap_or("");
                let ours = match token::decode(jwt) {
                    Err(reason) => reason.code().to_owned(),
                    Ok(t)
                        if t.alg
                            .parse::<claimgate_core::algorithm::Algorithm>()
                            .is_err() =>
                    {
                        "algorithm_not_allowed".into()
                    }
                    Ok(_) => "ok".into(),
                };
                judge(&mut tally, &case, upstream_code(expected_raw), &ours);
            }
            "time_constraint" => {
                let Some(mut claims) = payload(&case).and_then(|p| p.as_object().cloned()) else {
                    tally.not_applicable += 1;
                    continue;
                };
                apply_overrides(&case, &mut claims);
                let iss = claims
                    .get("iss")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let engine = engine_with(issuer_for(&iss, None, None, vec![], skew).unwrap());
                let ours = match engine.danger_identity_from_unsigned_claims(claims, now, &mut None)
                {
                    Ok(_) => "ok".to_owned(),
                    Err(reason) => reason.code().to_owned(),
                };
                judge(&mut tally, &case, upstream_code(expected_raw), &ours);
            }
            "audience_check" => {
                let allowed: Vec<String> = case["allowed_audiences"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                let got: Vec<&str> = case["token_audiences"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect();
                let ours = if got.iter().any(|g| allowed.iter().any(|a| a == g)) {
                    "ok"
                } else {
                    "wrong_audience"
                };
                let upstream = if expected_raw == "allowed" {
                    "ok"
                } else {
                    "wrong_audience"
                };
                judge(&mut tally, &case, upstream, ours);
            }
            _ => tally.not_applicable += 1,
        }
    }

    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(vectors_dir().join("envoy_jwt_authn_reference.json")).unwrap(),
    )
    .unwrap();
    let provider = &reference["provider_configs"]["example_provider"];
    let provider_audiences: Vec<String> = provider["audiences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for case in load("envoy_jwt_authn.json") {
        let expected_raw = case["expected"].as_str().unwrap_or("");
        let upstream = upstream_code(expected_raw);
        let Some(jwt) = case["jwt"].as_str().filter(|j| !j.is_empty()) else {
            tally.not_applicable += 1;
            continue;
        };
        // Tokens from query parameters: claimgate reads headers only (documented).
        if case["name"].as_str().is_some_and(|n| n.contains("Query"))
            || upstream == "unmapped"
            || upstream == "jwks_error"
            || case["config_changes"].is_object()
            || case["jwks_server_response"].is_string()
        {
            tally.not_applicable += 1;
            continue;
        }
        let jwks = case["jwks_strict_json"].as_str().or(case["jwks"].as_str());
        // Envoy's example provider: issuer https://example.com, its audiences, skew 60s.
        let iss = payload(&case)
            .and_then(|p| p["iss"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let ours = if iss != provider["issuer"].as_str().unwrap() && !iss.is_empty() {
            "unknown_issuer".to_owned()
        } else {
            let _ = jwt;
            verify_code(&case, jwks, provider_audiences.clone(), now_real(), 60)
        };
        judge(&mut tally, &case, upstream, &ours);
    }

    for case in load("rfc.json") {
        let expected_raw = case["expected"].as_str().unwrap_or("");
        let jwks = case["jwks"].as_str();
        // RFC tokens expired in 2011: pin the clock before their `exp`.
        let now = case["exp"].as_u64().map_or(1_300_000_000, |exp| exp - 1);
        let upstream = if expected_raw.starts_with("unsecured") {
            "algorithm_not_allowed"
        } else {
            upstream_code(expected_raw)
        };
        if payload(&case).is_none_or(|p| !p.is_object()) {
            // RFC 7520 signs plain text, not JWT claims: nothing to authorise.
            tally.not_applicable += 1;
            continue;
        }
        let ours = verify_code(&case, jwks, vec![], now, 0);
        judge(&mut tally, &case, upstream, &ours);
    }

    println!(
        "conformance: {} applicable, {} match upstream, {} documented deviations, {} not applicable (PEM/X.509 key formats, config-only cases)",
        tally.applicable,
        tally.matched,
        tally.deviations.len(),
        tally.not_applicable
    );
    for line in &tally.unexplained {
        println!("  UNEXPLAINED {line}");
    }
    for d in DEVIATIONS {
        let cases: Vec<&String> = tally
            .deviations
            .iter()
            .filter(|(_, id)| *id == d.id)
            .map(|(n, _)| n)
            .collect();
        println!("  deviation {} ({} cases): {}", d.id, cases.len(), d.why);
    }
    for d in DEVIATIONS {
        assert!(
            tally.deviations.iter().any(|(_, id)| *id == d.id),
            "deviation `{}` no longer applies to any case: remove it",
            d.id
        );
    }
    assert!(
        tally.unexplained.is_empty(),
        "{} unexplained differences:\n{}",
        tally.unexplained.len(),
        tally.unexplained.join("\n")
    );
    // 172 matched before issue 8; 146 since: 28 kid-less cases became the documented
    // `one-key-without-kid` deviation, one decimal `iat` case now matches.
    assert!(
        tally.matched >= 146,
        "too few matching cases: {}",
        tally.matched
    );
}
