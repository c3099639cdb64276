//! Why a request was denied, and the one table that turns a reason into an HTTP answer.

use std::fmt;

use serde::Serialize;

use crate::compiled::Statuses;

/// What is wrong with a token's encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Malformed {
    /// Not three dot-separated parts.
    NotThreeParts,
    /// The token is longer than the filter accepts.
    TooLong {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A part is not base64url.
    BadBase64 {
        /// `header`, `payload` or `signature`.
        part: &'static str,
    },
    /// A part is not a JSON object.
    BadJson {
        /// `header` or `payload`.
        part: &'static str,
    },
    /// The header has no string `alg`.
    MissingAlg,
    /// A registered claim has the wrong type.
    ClaimType {
        /// Claim name.
        claim: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// The token has no `iss`.
    MissingIssuer,
    /// The request carries the token header more than once: which one the upstream or the
    /// next hop would read is ambiguous.
    Ambiguous,
    /// The verifier refused the token's structure (e.g. a `crit` header or a non-JWT `typ`).
    Refused {
        /// The verifier's words.
        detail: String,
    },
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::NotThreeParts => {
                f.write_str("token is not three base64url parts separated by dots")
            }
            Malformed::TooLong { len, max } => write!(f, "token is {len} bytes, longer than {max}"),
            Malformed::BadBase64 { part } => write!(f, "token {part} is not base64url"),
            Malformed::BadJson { part } => write!(f, "token {part} is not a JSON object"),
            Malformed::MissingAlg => f.write_str("token header has no `alg`"),
            Malformed::ClaimType { claim, expected } => {
                write!(f, "claim `{claim}` is not {expected}")
            }
            Malformed::MissingIssuer => f.write_str("token has no `iss` claim"),
            Malformed::Ambiguous => f.write_str("the request carries more than one token header"),
            Malformed::Refused { detail } => write!(f, "token refused: {detail}"),
        }
    }
}

/// Why a request is denied. Every variant maps to exactly one status in [`DenyReason::status`].
///
/// Fields carry what an operator needs to fix the problem; none carries the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum DenyReason {
    /// The rule needs an identity and the request carries no bearer token.
    NoToken,
    /// The token could not be decoded.
    Malformed(Malformed),
    /// The token's `alg` is not one the issuer allows (includes `none`).
    AlgorithmNotAllowed {
        /// The `alg` in the token header.
        alg: String,
    },
    /// No configured issuer has this `iss`.
    UnknownIssuer {
        /// The token's `iss`.
        iss: String,
    },
    /// No key of the issuer matches the token's `kid` and `alg`.
    UnknownKey {
        /// Issuer name (the filter refetches its key set).
        issuer: String,
        /// The token's `kid`, if any.
        kid: Option<String>,
    },
    /// The issuer's remote key set has not been fetched yet.
    KeysUnavailable {
        /// Issuer name.
        issuer: String,
    },
    /// The signature does not verify.
    BadSignature,
    /// `exp` is past, beyond the clock skew.
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The clock.
        now: u64,
        /// Tolerated skew, seconds.
        skew: u64,
    },
    /// `nbf` (or `iat`) is in the future, beyond the clock skew.
    NotYetValid {
        /// The claim checked, `nbf` or `iat`.
        claim: &'static str,
        /// Its value.
        at: u64,
        /// The clock.
        now: u64,
        /// Tolerated skew, seconds.
        skew: u64,
    },
    /// The token has no `exp` and the issuer requires one.
    MissingExpiry,
    /// The token's lifetime is longer than the issuer allows.
    LifetimeTooLong {
        /// The token's lifetime, seconds.
        lifetime: u64,
        /// The allowed maximum, seconds.
        max: u64,
    },
    /// No audience claim names an accepted audience.
    WrongAudience {
        /// The audiences the token names (bounded in length).
        got: Vec<String>,
    },
    /// The subject or token id is on the revocation list.
    Revoked {
        /// `subject` or `token_id`.
        what: &'static str,
    },
    /// The rule does not accept this issuer.
    IssuerNotAllowed {
        /// The rule.
        rule: String,
        /// The token's issuer (policy name).
        issuer: String,
    },
    /// The rule does not name this subject.
    SubjectNotAllowed {
        /// The rule.
        rule: String,
    },
    /// The identity lacks a role the rule asks for.
    MissingRole {
        /// The rule.
        rule: String,
        /// The roles asked for (any of, or all of).
        required: Vec<String>,
        /// Whether all were required.
        all: bool,
    },
    /// The identity lacks a scope the rule asks for.
    MissingScope {
        /// The rule.
        rule: String,
        /// The scopes asked for.
        required: Vec<String>,
        /// Whether all were required.
        all: bool,
    },
    /// Entra ID left the groups out of the token (more than 200): roles cannot be decided.
    GroupsOverage {
        /// The rule.
        rule: String,
        /// The claim that overflowed.
        claim: String,
    },
    /// A named claim has no value the rule accepts, or a value the rule excludes.
    ClaimNotAllowed {
        /// The rule.
        rule: String,
        /// The claim path.
        claim: String,
        /// Whether a `not_claims` pattern matched (else no `claims` pattern did).
        excluded: bool,
    },
    /// The rule only names requests without a token (`unauthenticated`), and this one
    /// carries a token.
    TokenPresent {
        /// The rule.
        rule: String,
    },
    /// An explicit deny rule matched.
    ExplicitDeny {
        /// The deny rule.
        rule: String,
    },
    /// No rule matches the request and the default is deny.
    NoRuleMatched,
    /// The path is not normalised (dot segments, encoded slashes): refused rather than guessed.
    UnnormalizedPath,
    /// The path carries `;` parameters and the policy refuses them.
    PathParameters,
    /// The `Host` / `:authority` is not a host name with an optional numeric port.
    InvalidHost,
    /// The token's `typ` header is not one the issuer accepts (e.g. an ID token where an
    /// access token, `at+jwt`, is required).
    TokenTypeNotAllowed {
        /// The token's `typ` (bounded in length).
        typ: String,
    },
    /// The host clock could not be read: nothing time-bound can be decided.
    ClockUnavailable,
}

/// Generates [`DenyReason::code`] and [`DenyReason::ALL_CODES`] from one list, so a new reason
/// cannot lack a code, and no code can lack its metric (the match is exhaustive).
macro_rules! reason_codes {
    ($($variant:ident => $code:literal,)*) => {
        impl DenyReason {
            /// Stable machine-readable code (metrics, logs, response bodies).
            pub fn code(&self) -> &'static str {
                match self {
                    $(DenyReason::$variant { .. } => $code,)*
                }
            }

            /// Every code, for metric registration.
            pub const ALL_CODES: &'static [&'static str] = &[$($code),*];
        }
    };
}

reason_codes! {
    NoToken => "no_token",
    Malformed => "malformed_token",
    AlgorithmNotAllowed => "algorithm_not_allowed",
    UnknownIssuer => "unknown_issuer",
    UnknownKey => "unknown_key",
    KeysUnavailable => "keys_unavailable",
    BadSignature => "bad_signature",
    Expired => "expired",
    NotYetValid => "not_yet_valid",
    MissingExpiry => "missing_expiry",
    LifetimeTooLong => "lifetime_too_long",
    WrongAudience => "wrong_audience",
    Revoked => "revoked",
    TokenTypeNotAllowed => "token_type_not_allowed",
    IssuerNotAllowed => "issuer_not_allowed",
    SubjectNotAllowed => "subject_not_allowed",
    MissingRole => "missing_role",
    MissingScope => "missing_scope",
    GroupsOverage => "groups_overage",
    ClaimNotAllowed => "claim_not_allowed",
    TokenPresent => "token_present",
    ExplicitDeny => "explicit_deny",
    NoRuleMatched => "no_rule",
    UnnormalizedPath => "unnormalized_path",
    PathParameters => "path_parameters",
    InvalidHost => "invalid_host",
    ClockUnavailable => "clock_unavailable",
}

/// The HTTP answer for a denial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `WWW-Authenticate` value, for 401 and insufficient-scope 403.
    pub www_authenticate: Option<String>,
}

impl DenyReason {
    /// The answer under the policy's status table: [`DenyReason::response`], with Istio's
    /// statuses where `statuses = "istio"` asks for them. Only status and headers differ; the
    /// reason code stays.
    pub fn response_in(&self, statuses: Statuses) -> Response {
        match (statuses, self) {
            (Statuses::Claimgate, _) => self.response(),
            // Istio: a request without a token is unauthenticated, and the authorization
            // policy that needs a principal refuses it (RBAC: 403, no challenge).
            (Statuses::Istio, DenyReason::NoToken) => Response {
                status: 403,
                www_authenticate: None,
            },
            // Envoy `jwt_authn` answers an audience mismatch 403, with its challenge.
            (Statuses::Istio, DenyReason::WrongAudience { .. }) => Response {
                status: 403,
                ..self.response()
            },
            // Envoy `jwt_authn` answers 401 when the remote key set could not be fetched.
            (Statuses::Istio, DenyReason::KeysUnavailable { .. }) => Response {
                status: 401,
                www_authenticate: Some(
                    "Bearer error=\"invalid_token\", error_description=\"signing keys unavailable\""
                        .to_owned(),
                ),
            },
            (Statuses::Istio, _) => self.response(),
        }
    }

    /// The status and `WWW-Authenticate` header under claimgate's own statuses (RFC 6750):
    /// the single table that decides them; [`DenyReason::response_in`] overrides a few rows.
    pub fn response(&self) -> Response {
        let invalid_token = |description: &str| Response {
            status: 401,
            www_authenticate: Some(format!(
                "Bearer error=\"invalid_token\", error_description=\"{description}\""
            )),
        };
        let forbidden = Response {
            status: 403,
            www_authenticate: None,
        };
        match self {
            // RFC 6750 §3.1: no error code when the request carried no credentials.
            DenyReason::NoToken => Response {
                status: 401,
                www_authenticate: Some("Bearer".to_owned()),
            },
            DenyReason::Malformed(_) => invalid_token("malformed token"),
            DenyReason::AlgorithmNotAllowed { .. } => invalid_token("algorithm not allowed"),
            DenyReason::UnknownIssuer { .. } => invalid_token("unknown issuer"),
            DenyReason::UnknownKey { .. } => invalid_token("unknown signing key"),
            DenyReason::BadSignature => invalid_token("signature verification failed"),
            DenyReason::Expired { .. } => invalid_token("token expired"),
            DenyReason::NotYetValid { .. } => invalid_token("token not yet valid"),
            DenyReason::MissingExpiry => invalid_token("token has no expiry"),
            DenyReason::LifetimeTooLong { .. } => invalid_token("token lifetime too long"),
            DenyReason::WrongAudience { .. } => invalid_token("audience not allowed"),
            DenyReason::Revoked { .. } => invalid_token("token revoked"),
            DenyReason::TokenTypeNotAllowed { .. } => invalid_token("token type not allowed"),
            DenyReason::KeysUnavailable { .. } | DenyReason::ClockUnavailable => Response {
                status: 503,
                www_authenticate: None,
            },
            DenyReason::MissingScope { required, .. } => Response {
                status: 403,
                www_authenticate: Some(format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                    required.join(" ")
                )),
            },
            DenyReason::IssuerNotAllowed { .. }
            | DenyReason::SubjectNotAllowed { .. }
            | DenyReason::MissingRole { .. }
            | DenyReason::GroupsOverage { .. }
            | DenyReason::ClaimNotAllowed { .. }
            | DenyReason::TokenPresent { .. }
            | DenyReason::ExplicitDeny { .. }
            | DenyReason::NoRuleMatched => forbidden,
            DenyReason::UnnormalizedPath | DenyReason::PathParameters | DenyReason::InvalidHost => {
                Response {
                    status: 400,
                    www_authenticate: None,
                }
            }
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoToken => f.write_str("no bearer token"),
            DenyReason::Malformed(m) => write!(f, "malformed token: {m}"),
            DenyReason::AlgorithmNotAllowed { alg } => {
                write!(f, "algorithm `{alg}` is not allowed")
            }
            DenyReason::UnknownIssuer { iss } => write!(f, "issuer `{iss}` is not trusted"),
            DenyReason::UnknownKey {
                issuer,
                kid: Some(kid),
            } => write!(
                f,
                "no key of issuer `{issuer}` with kid `{kid}` fits the token"
            ),
            DenyReason::UnknownKey { issuer, kid: None } => {
                write!(f, "no key of issuer `{issuer}` fits the token")
            }
            DenyReason::KeysUnavailable { issuer } => {
                write!(f, "keys of issuer `{issuer}` are not available yet")
            }
            DenyReason::BadSignature => f.write_str("signature does not verify"),
            DenyReason::Expired { exp, now, skew } => write!(
                f,
                "token expired at {exp}, now is {now} ({}s late, skew {skew}s)",
                now.saturating_sub(*exp)
            ),
            DenyReason::NotYetValid {
                claim,
                at,
                now,
                skew,
            } => write!(
                f,
                "`{claim}` is {at}, now is {now} ({}s early, skew {skew}s)",
                at.saturating_sub(*now)
            ),
            DenyReason::MissingExpiry => f.write_str("token has no `exp`"),
            DenyReason::LifetimeTooLong { lifetime, max } => {
                write!(f, "token lifetime {lifetime}s exceeds {max}s")
            }
            DenyReason::WrongAudience { got } => write!(f, "audience {got:?} is not accepted"),
            DenyReason::Revoked { what } => write!(f, "{what} is revoked"),
            DenyReason::IssuerNotAllowed { rule, issuer } => {
                write!(f, "rule `{rule}` does not accept issuer `{issuer}`")
            }
            DenyReason::SubjectNotAllowed { rule } => {
                write!(f, "rule `{rule}` does not name this subject")
            }
            DenyReason::MissingRole {
                rule,
                required,
                all,
            } => write!(
                f,
                "rule `{rule}` needs {} of roles {required:?}",
                if *all { "all" } else { "one" }
            ),
            DenyReason::MissingScope {
                rule,
                required,
                all,
            } => write!(
                f,
                "rule `{rule}` needs {} of scopes {required:?}",
                if *all { "all" } else { "one" }
            ),
            DenyReason::GroupsOverage { rule, claim } => write!(
                f,
                "rule `{rule}` needs roles but the token's `{claim}` claim overflowed (Entra groups overage)"
            ),
            DenyReason::ClaimNotAllowed {
                rule,
                claim,
                excluded: false,
            } => write!(f, "rule `{rule}`: no value of claim `{claim}` is accepted"),
            DenyReason::ClaimNotAllowed {
                rule,
                claim,
                excluded: true,
            } => write!(f, "rule `{rule}` excludes a value of claim `{claim}`"),
            DenyReason::TokenPresent { rule } => {
                write!(f, "rule `{rule}` only names requests without a token")
            }
            DenyReason::ExplicitDeny { rule } => write!(f, "denied by rule `{rule}`"),
            DenyReason::NoRuleMatched => f.write_str("no rule matches the request"),
            DenyReason::UnnormalizedPath => f.write_str("path is not normalised"),
            DenyReason::PathParameters => {
                f.write_str("path carries `;` parameters, which the policy refuses")
            }
            DenyReason::InvalidHost => f.write_str("host is not a host name with a numeric port"),
            DenyReason::TokenTypeNotAllowed { typ } => {
                write!(f, "token type `{typ}` is not accepted")
            }
            DenyReason::ClockUnavailable => f.write_str("the host clock cannot be read"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_failures_are_401_with_invalid_token() {
        for reason in [
            DenyReason::BadSignature,
            DenyReason::Expired {
                exp: 1,
                now: 2,
                skew: 0,
            },
            DenyReason::UnknownIssuer { iss: "x".into() },
            DenyReason::Revoked { what: "subject" },
        ] {
            let r = reason.response();
            assert_eq!(r.status, 401, "{reason:?}");
            assert!(r.www_authenticate.unwrap().contains("invalid_token"));
        }
        let r = DenyReason::NoToken.response();
        assert_eq!(
            (r.status, r.www_authenticate.as_deref()),
            (401, Some("Bearer"))
        );
    }

    #[test]
    fn authorization_failures_are_403() {
        let r = DenyReason::MissingScope {
            rule: "r".into(),
            required: vec!["a".into(), "b".into()],
            all: true,
        }
        .response();
        assert_eq!(r.status, 403);
        assert_eq!(
            r.www_authenticate.as_deref(),
            Some("Bearer error=\"insufficient_scope\", scope=\"a b\"")
        );
        assert_eq!(DenyReason::NoRuleMatched.response().status, 403);
        assert_eq!(
            DenyReason::KeysUnavailable { issuer: "i".into() }
                .response()
                .status,
            503
        );
    }

    #[test]
    fn istio_statuses_differ_only_where_istio_does() {
        let audience = DenyReason::WrongAudience { got: vec![] };
        let keys = DenyReason::KeysUnavailable { issuer: "i".into() };
        let istio = |r: &DenyReason| {
            let r = r.response_in(Statuses::Istio);
            (r.status, r.www_authenticate.is_some())
        };
        assert_eq!(istio(&DenyReason::NoToken), (403, false));
        assert_eq!(istio(&audience), (403, true));
        assert_eq!(istio(&keys), (401, true));
        for same in [
            DenyReason::BadSignature,
            DenyReason::NoRuleMatched,
            DenyReason::ClockUnavailable,
            DenyReason::ExplicitDeny { rule: "r".into() },
        ] {
            assert_eq!(
                same.response_in(Statuses::Istio),
                same.response(),
                "{same:?}"
            );
        }
        for reason in [DenyReason::NoToken, audience, keys] {
            assert_eq!(reason.response_in(Statuses::Claimgate), reason.response());
        }
    }

    #[test]
    fn codes_are_listed_once() {
        let mut codes = DenyReason::ALL_CODES.to_vec();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), DenyReason::ALL_CODES.len());
    }
}
