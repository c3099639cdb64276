//! `[issuers.NAME]` → [`CompiledIssuer`]: algorithms, HMAC secret, keys, times, claim paths,
//! audience checking. Two issuers may not share an `iss`: the engine picks the issuer by
//! `iss`, so the second would silently never be used.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use toml::Spanned;

use super::FileReader;
use super::diagnostics::Context;
use super::durations::whole_seconds;
use super::jwks::compile_jwks;
use crate::algorithm::Algorithm;
use crate::claims::ClaimPath;
use crate::compiled::{AudienceMatch, CompiledIssuer};
use crate::source::IssuerSource;
use crate::token::{is_jwt_type, token_type_key};

/// Largest clock skew accepted, seconds.
const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// Compiles every issuer, in name order (their indices in the policy). `None` when any has
/// an error (each is reported).
pub(super) fn compile_issuers(
    cx: &mut Context<'_>,
    issuers: &BTreeMap<String, Spanned<IssuerSource>>,
    read: &FileReader<'_>,
) -> Option<Vec<CompiledIssuer>> {
    let mut seen: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
    for (name, issuer) in issuers {
        let iss = issuer.get_ref().issuer.get_ref();
        let span = issuer.get_ref().issuer.span();
        match seen.get(iss.as_str()) {
            Some((first, offset)) => {
                let (line, _) = cx.position(*offset);
                cx.error(
                    "duplicate_iss",
                    &span,
                    format!("issuers `{first}` and `{name}` both have `issuer = \"{iss}\"`"),
                    format!(
                        "the engine picks the issuer by `iss`, so one of them would never be used: merge them into `{first}` (line {line})"
                    ),
                );
            }
            None => {
                seen.insert(iss, (name, span.start));
            }
        }
    }
    let compiled: Vec<Option<CompiledIssuer>> = issuers
        .iter()
        .map(|(name, issuer)| compile_issuer(cx, name, issuer, read))
        .collect();
    compiled.into_iter().collect()
}

fn claim_path(cx: &mut Context<'_>, text: &Spanned<String>) -> Option<ClaimPath> {
    match ClaimPath::parse(text.get_ref()) {
        Ok(path) => Some(path),
        Err(error) => {
            cx.error(
                "bad_claim_path",
                &text.span(),
                error.to_string(),
                "separate levels with `.`; quote a key that contains dots: `resource_access.\"my.app\".roles`",
            );
            None
        }
    }
}

fn algorithms(cx: &mut Context<'_>, name: &str, source: &IssuerSource) -> Vec<Algorithm> {
    let mut algorithms = Vec::new();
    for alg in source.algorithms.get_ref() {
        match alg.get_ref().parse::<Algorithm>() {
            Ok(a) if !algorithms.contains(&a) => algorithms.push(a),
            Ok(_) => {}
            Err(_) if alg.get_ref().eq_ignore_ascii_case("none") => cx.error(
                "algorithm_none",
                &alg.span(),
                "`none` can never be allowed: unsigned tokens prove nothing",
                "remove `none`; name the algorithm the issuer signs with, e.g. `RS256`",
            ),
            Err(e) => cx.error(
                "unknown_algorithm",
                &alg.span(),
                e.to_string(),
                "use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (HS256/384/512 with `hmac_secret`)",
            ),
        }
    }
    if source.algorithms.get_ref().is_empty() {
        cx.error(
            "no_algorithm",
            &source.algorithms.span(),
            format!("issuer `{name}` allows no algorithm"),
            "name the algorithm the issuer signs with, e.g. `algorithms = [\"RS256\"]`",
        );
    }
    algorithms
}

fn hmac_secret(
    cx: &mut Context<'_>,
    source: &IssuerSource,
    algorithms: &[Algorithm],
) -> Option<Vec<u8>> {
    let wants_hmac = algorithms.iter().any(|a| a.is_hmac());
    match (&source.hmac_secret, wants_hmac) {
        (Some(secret), true) => {
            let text = secret.get_ref().trim_end_matches('=');
            match URL_SAFE_NO_PAD
                .decode(text)
                .or_else(|_| STANDARD.decode(secret.get_ref()))
            {
                Ok(bytes) if bytes.len() >= 32 => Some(bytes),
                Ok(bytes) => {
                    cx.error(
                        "weak_hmac_secret",
                        &secret.span(),
                        format!(
                            "HMAC secret is {} bytes; at least 32 are required",
                            bytes.len()
                        ),
                        "generate one with e.g. `openssl rand -base64 32`",
                    );
                    None
                }
                Err(_) => {
                    cx.error(
                        "bad_hmac_secret",
                        &secret.span(),
                        "HMAC secret is not base64",
                        "write the secret's bytes in base64url or standard base64",
                    );
                    None
                }
            }
        }
        (Some(secret), false) => {
            cx.error(
                "hmac_without_algorithm",
                &secret.span(),
                "`hmac_secret` is set but no HS256/HS384/HS512 algorithm is allowed",
                "add the HS algorithm to `algorithms`, or remove `hmac_secret`",
            );
            None
        }
        (None, true) => {
            cx.error(
                "hmac_without_secret",
                &source.algorithms.span(),
                "HMAC algorithms need an explicit inline `hmac_secret`; keys from a JWKS are never used as HMAC secrets",
                "add `hmac_secret = \"<base64, at least 32 bytes>\"`, or remove the HS algorithm",
            );
            None
        }
        (None, false) => None,
    }
}

fn compile_issuer(
    cx: &mut Context<'_>,
    name: &str,
    spanned: &Spanned<IssuerSource>,
    read: &FileReader<'_>,
) -> Option<CompiledIssuer> {
    let source = spanned.get_ref();
    let mark = cx.mark();
    if source.issuer.get_ref().is_empty() {
        cx.error(
            "empty_issuer",
            &source.issuer.span(),
            format!("issuer `{name}` has an empty `issuer`"),
            "write the exact `iss` the tokens carry, e.g. `https://login.example.com/realms/ml`",
        );
    }
    let algorithms = algorithms(cx, name, source);
    let hmac_secret = hmac_secret(cx, source, &algorithms);
    let (keys, remote_jwks) = match &source.jwks {
        Some(jwks) => compile_jwks(cx, name, jwks, read, &algorithms),
        None => (Vec::new(), None),
    };
    let needs_keys = algorithms.iter().any(|a| !a.is_hmac());
    if needs_keys && keys.is_empty() && remote_jwks.is_none() && !cx.errors_since(mark) {
        cx.error(
            "no_keys",
            &spanned.span(),
            format!("issuer `{name}` has no keys"),
            "add `[issuers.NAME.jwks]` with `file`, `inline`, or `uri`",
        );
    }
    let clock_skew_secs = whole_seconds(cx, source.clock_skew.as_ref(), 60, "clock_skew");
    if let (Some(skew), Some(span)) = (clock_skew_secs, source.clock_skew.as_ref())
        && skew > MAX_CLOCK_SKEW_SECS
    {
        cx.error(
                "clock_skew_too_large",
                &span.span(),
                format!("clock skew of {skew}s is more than 10 minutes"),
                "clocks that far apart need fixing (NTP); a skew that large lets expired tokens through",
            );
    }
    let max_lifetime_secs = match &source.max_lifetime {
        Some(value) => match whole_seconds(cx, Some(value), 0, "max_lifetime") {
            Some(0) => {
                cx.error(
                    "zero_max_lifetime",
                    &value.span(),
                    "`max_lifetime` of 0 refuses every token that has `exp`",
                    "give the longest lifetime you accept, e.g. `1h`, or remove `max_lifetime`",
                );
                None
            }
            other => other.map(Some),
        },
        None => Some(None),
    };
    let mut paths = |list: &[Spanned<String>]| -> Vec<ClaimPath> {
        list.iter().filter_map(|p| claim_path(cx, p)).collect()
    };
    let role_claims = paths(&source.roles);
    let scope_claims = paths(&source.scopes);
    let audience_claims = match &source.audience_claims {
        Some(list) => paths(list),
        None => vec![ClaimPath::top("aud")],
    };
    let client_claims = match &source.client_claims {
        Some(list) => paths(list),
        None => ["azp", "client_id", "appid"]
            .into_iter()
            .map(ClaimPath::top)
            .collect(),
    };
    let subject_claim = match &source.subject_claim {
        Some(text) => claim_path(cx, text),
        None => Some(ClaimPath::top("sub")),
    };
    check_audiences(cx, name, source);
    let token_types = token_types(cx, source);
    let locations = super::locations::issuer_locations(cx, name, spanned);
    let (claims_to_headers, payload_to_header) =
        super::locations::upstream_claims(cx, name, source);
    if cx.errors_since(mark) {
        return None;
    }
    Some(CompiledIssuer {
        name: name.to_owned(),
        issuer: source.issuer.get_ref().clone(),
        audiences: source.audiences.clone(),
        audience_claims,
        audience_match: audience_match(source),
        token_types,
        algorithms,
        keys,
        hmac_secret,
        remote_jwks,
        clock_skew_secs: clock_skew_secs?,
        require_expiry: source.require_expiry,
        max_lifetime_secs: max_lifetime_secs?,
        role_claims,
        scope_claims,
        subject_claim: subject_claim?,
        client_claims,
        locations,
        claims_to_headers,
        payload_to_header,
    })
}

/// `token_types`, normalised as the token's `typ` is before they are compared.
fn token_types(cx: &mut Context<'_>, source: &IssuerSource) -> Vec<String> {
    let mut types = Vec::new();
    for typ in &source.token_types {
        let key = token_type_key(typ.get_ref());
        let printable = !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic());
        if !printable || !is_jwt_type(typ.get_ref()) {
            cx.error(
                "bad_token_type",
                &typ.span(),
                format!(
                    "`{}` is not a JWT `typ`: tokens whose `typ` is not `JWT` or `…+jwt` are always refused",
                    typ.get_ref()
                ),
                "for access tokens per RFC 9068 write `token_types = [\"at+jwt\"]`; `JWT` accepts the generic type",
            );
        } else if !types.contains(&key) {
            types.push(key);
        }
    }
    types
}

fn audience_match(source: &IssuerSource) -> AudienceMatch {
    source
        .audience_match
        .as_ref()
        .map_or(AudienceMatch::default(), |m| *m.get_ref())
}

fn check_audiences(cx: &mut Context<'_>, name: &str, source: &IssuerSource) {
    if source.audiences.iter().any(String::is_empty) {
        cx.error(
            "empty_audience",
            &source.issuer.span(),
            format!("issuer `{name}` accepts an empty audience `\"\"`"),
            "remove `\"\"` from `audiences`",
        );
    }
    let strict = audience_match(source) == AudienceMatch::All;
    if source.audiences.is_empty() {
        if strict {
            cx.error(
                "audience_match_without_audiences",
                &source
                    .audience_match
                    .as_ref()
                    .map_or(source.issuer.span(), Spanned::span),
                format!("issuer `{name}` sets `audience_match = \"all\"` but accepts no audience"),
                "list the accepted audiences in `audiences`",
            );
        } else {
            cx.warn(
                "no_audience",
                &source.issuer.span(),
                format!(
                    "issuer `{name}` checks no audience: tokens minted for any other service are accepted"
                ),
                "set `audiences` (and `audience_claims = [\"azp\"]` for Keycloak tokens whose `aud` is `account`)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{errors_of, kinds_of};

    fn policy(issuers: &str) -> String {
        format!(
            "version = 1\n{issuers}\n[[rules]]\nname = \"r\"\npaths = [\"/*\"]\nallow = \"authenticated\"\n"
        )
    }

    const KEYS: &str = r#"inline = '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}'"#;

    fn issuer(name: &str, iss: &str, extra: &str) -> String {
        format!(
            "[issuers.{name}]\nissuer = \"{iss}\"\naudiences = [\"api\"]\nalgorithms = [\"EdDSA\"]\n{extra}\n[issuers.{name}.jwks]\n{KEYS}\n"
        )
    }

    /// Issue 8, defect 11: two issuers with the same `iss` silently shadowed each other.
    #[test]
    fn two_issuers_may_not_share_an_iss() {
        let text = policy(&format!(
            "{}{}{}",
            issuer("a", "https://idp", ""),
            issuer("b", "https://idp", ""),
            issuer("c", "https://idp/", "")
        ));
        let errors = errors_of(&text);
        assert_eq!(kinds_of(&errors), ["duplicate_iss"], "{errors:?}");
        assert_eq!(errors[0].line, 10);
        assert!(errors[0].message.contains("`a` and `b`"), "{}", errors[0]);
        assert!(errors[0].hint.as_deref().unwrap().contains("line 3"));
    }

    /// Issue 8, defect 11: `clock_skew = "500ms"` silently became 0 s.
    #[test]
    fn sub_second_skew_and_lifetime_are_errors() {
        let text = policy(&issuer(
            "a",
            "https://idp",
            "clock_skew = \"500ms\"\nmax_lifetime = \"1h500ms\"",
        ));
        let errors = errors_of(&text);
        assert_eq!(
            kinds_of(&errors),
            ["sub_second_duration", "sub_second_duration"]
        );
        assert_eq!((errors[0].line, errors[1].line), (6, 7));
        let text = policy(&issuer("a", "https://idp", "max_lifetime = \"0s\""));
        assert_eq!(kinds_of(&errors_of(&text)), ["zero_max_lifetime"]);
    }

    #[test]
    fn audience_match_all_needs_audiences() {
        let text = policy(&format!(
            "[issuers.a]\nissuer = \"https://idp\"\nalgorithms = [\"EdDSA\"]\naudience_match = \"all\"\n[issuers.a.jwks]\n{KEYS}\n"
        ));
        assert_eq!(
            kinds_of(&errors_of(&text)),
            ["audience_match_without_audiences"]
        );
        let text = policy(&issuer("a", "https://idp", "audience_match = \"some\""));
        assert_eq!(kinds_of(&errors_of(&text)), ["bad_value"]);
    }

    #[test]
    fn every_issuer_error_is_reported_in_one_run() {
        let text = policy(&format!(
            "{}{}",
            issuer("a", "", "clock_skew = \"1h\"\nroles = [\"a..b\"]"),
            issuer(
                "b",
                "https://b",
                "hmac_secret = \"c2hvcnQ\"\nalgorithms_extra = 1"
            )
        ));
        // `algorithms_extra` leaves issuer `b` out; issuer `a` is still checked.
        assert_eq!(
            kinds_of(&errors_of(&text)),
            [
                "unknown_field",
                "empty_issuer",
                "clock_skew_too_large",
                "bad_claim_path"
            ]
        );
        let text = policy(&format!(
            "{}{}",
            issuer("a", "", "clock_skew = \"1h\"\nroles = [\"a..b\"]"),
            issuer("b", "https://b", "hmac_secret = \"c2hvcnQ\"")
        ));
        let errors = errors_of(&text);
        assert_eq!(
            kinds_of(&errors),
            [
                "empty_issuer",
                "clock_skew_too_large",
                "bad_claim_path",
                "hmac_without_algorithm"
            ]
        );
        assert!(errors.iter().all(|e| e.hint.is_some()));
    }
}
