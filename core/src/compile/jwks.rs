//! `[issuers.NAME.jwks]`: key sets compiled into the blob (`file`, `inline`) and the remote
//! key set the filter fetches (`uri`, `cluster`, `refresh`, `timeout`). Keys are parsed with
//! the filter's own parser ([`crate::keys::parse_jwks`]), so a key left out at run time is
//! left out, with the same one-line summary, at compile time.

use std::net::Ipv4Addr;
use std::time::Duration;

use toml::Spanned;

use super::FileReader;
use super::diagnostics::Context;
use super::durations::{timeout_millis, whole_seconds};
use crate::algorithm::Algorithm;
use crate::compiled::RemoteJwks;
use crate::keys::{JwkKey, parse_jwks};
use crate::mesh::HttpEndpoint;
use crate::source::JwksSource;

/// Shortest refresh period, seconds.
const MIN_REFRESH_SECS: u64 = 10;
/// Callout timeout when none is given.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest callout timeout: beyond it a request held for keys waits far too long.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether a plain-HTTP key set at this host stays inside the cluster or the machine:
/// a Kubernetes Service name, `localhost` or a loopback address.
fn plain_http_is_local(endpoint: &HttpEndpoint) -> bool {
    let host = endpoint.host.trim_end_matches('.');
    endpoint.in_cluster()
        || host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

pub(super) fn compile_jwks(
    cx: &mut Context<'_>,
    issuer: &str,
    spanned: &Spanned<JwksSource>,
    read: &FileReader<'_>,
    algorithms: &[Algorithm],
) -> (Vec<JwkKey>, Option<RemoteJwks>) {
    let source = spanned.get_ref();
    let keys = inline_keys(cx, issuer, source, read);
    if !keys.is_empty() && !keys.iter().any(|k| algorithms.iter().any(|a| k.fits(*a))) {
        let algorithms: Vec<&str> = algorithms.iter().map(|a| a.as_str()).collect();
        cx.error(
            "keys_fit_no_algorithm",
            &spanned.span(),
            format!("issuer `{issuer}`: no key fits any allowed algorithm {algorithms:?}"),
            "allow the algorithm the keys are for (RSA keys: RS*/PS*, P-256: ES256, P-384: ES384, Ed25519: EdDSA)",
        );
    }
    let remote = match (&source.uri, &source.cluster) {
        (Some(uri), cluster) => remote_jwks(cx, issuer, source, uri, cluster.as_ref()),
        (None, Some(cluster)) => {
            cx.error(
                "cluster_without_uri",
                &cluster.span(),
                "`cluster` is set but `uri` is not",
                "add the key set's `uri`, or remove `cluster`",
            );
            None
        }
        (None, None) => None,
    };
    (keys, remote)
}

fn inline_keys(
    cx: &mut Context<'_>,
    issuer: &str,
    source: &JwksSource,
    read: &FileReader<'_>,
) -> Vec<JwkKey> {
    let mut keys = Vec::new();
    let documents = [
        source.file.as_ref().map(|f| (f, read(f.get_ref()))),
        source.inline.as_ref().map(|i| (i, Ok(i.get_ref().clone()))),
    ];
    for (spanned_text, document) in documents.into_iter().flatten() {
        let text = match document {
            Ok(text) => text,
            Err(error) => {
                cx.error(
                    "jwks_file",
                    &spanned_text.span(),
                    format!("cannot read `{}`: {error}", spanned_text.get_ref()),
                    "the path is relative to the policy file",
                );
                continue;
            }
        };
        match parse_jwks(&text) {
            Ok(parsed) => {
                // The same summary the filter logs for a fetched set: one line, bounded.
                if !parsed.skipped.is_empty() {
                    // Encryption keys alone are expected (Keycloak publishes one): a note,
                    // as the filter logs them at info rather than warn.
                    let report = if parsed.skipped.only_encryption_keys() {
                        Context::note
                    } else {
                        Context::warn
                    };
                    report(
                        cx,
                        "skipped_keys",
                        &spanned_text.span(),
                        format!("issuer `{issuer}`: {}", parsed.skipped),
                        "only public signature keys are used (`use` = `sig` or absent; RSA, P-256, P-384, Ed25519)",
                    );
                }
                keys.extend(parsed.keys);
            }
            Err(error) => cx.error(
                "bad_jwks",
                &spanned_text.span(),
                format!("issuer `{issuer}`: {error}"),
                "a key set is a JSON object `{\"keys\": [...]}` of at most 100 public keys (512 KiB), as the issuer's `jwks_uri` serves it",
            ),
        }
    }
    keys
}

fn remote_jwks(
    cx: &mut Context<'_>,
    issuer: &str,
    source: &JwksSource,
    uri: &Spanned<String>,
    cluster: Option<&Spanned<String>>,
) -> Option<RemoteJwks> {
    let endpoint = match HttpEndpoint::parse(uri.get_ref()) {
        Ok(endpoint) => Some(endpoint),
        Err(message) => {
            cx.error(
                "bad_jwks_uri",
                &uri.span(),
                message,
                "write the issuer's `jwks_uri` as `https://HOST[:PORT]/PATH`",
            );
            None
        }
    };
    if let Some(endpoint) = endpoint.as_ref().filter(|e| !e.tls)
        && !plain_http_is_local(endpoint)
    {
        cx.warn(
                "plain_http_jwks",
                &uri.span(),
                format!(
                    "issuer `{issuer}`: keys are fetched over plain HTTP from `{}`: whoever can answer for that host can sign tokens",
                    endpoint.host
                ),
                "use `https://` (or an in-cluster Service name, `*.svc.cluster.local`, when the traffic stays in the mesh)",
            );
    }
    // Without an explicit cluster, the one istiod builds for the URL's host.
    let cluster = match cluster {
        Some(cluster) => {
            if cluster.get_ref().is_empty() {
                cx.error(
                    "bad_cluster",
                    &cluster.span(),
                    "`cluster` is empty",
                    "leave `cluster` out to use the one istiod builds for the URL's host",
                );
            }
            Some(cluster.get_ref().clone())
        }
        None => endpoint.as_ref().map(HttpEndpoint::istio_cluster),
    };
    let refresh_secs = whole_seconds(cx, source.refresh.as_ref(), 600, "refresh");
    if let (Some(refresh), Some(span)) = (refresh_secs, source.refresh.as_ref())
        && refresh < MIN_REFRESH_SECS
    {
        cx.error(
            "refresh_too_short",
            &span.span(),
            format!("refresh must be at least {MIN_REFRESH_SECS}s"),
            "keys rotate in hours or days; an unknown `kid` triggers a refetch anyway",
        );
    }
    let timeout_ms = timeout_millis(
        cx,
        source.timeout.as_ref(),
        DEFAULT_TIMEOUT,
        MAX_TIMEOUT,
        "timeout",
    );
    Some(RemoteJwks {
        uri: uri.get_ref().clone(),
        cluster: cluster?,
        refresh_secs: refresh_secs?,
        timeout_ms: timeout_ms?,
        before_first_fetch: source.before_first_fetch,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{diagnostics_of, errors_of, kinds_of};

    fn policy(jwks: &str) -> String {
        format!(
            "version = 1\n[issuers.a]\nissuer = \"https://idp\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n[issuers.a.jwks]\n{jwks}\n[[rules]]\nname = \"r\"\npaths = [\"/*\"]\nallow = \"authenticated\"\n"
        )
    }

    /// Issue 8, defect 11: an `http://` JWKS uri was accepted silently.
    #[test]
    fn plain_http_key_sets_outside_the_cluster_are_flagged() {
        let warned = |uri: &str| {
            diagnostics_of(&policy(&format!("uri = \"{uri}\"")))
                .iter()
                .any(|d| d.kind == "plain_http_jwks")
        };
        assert!(warned("http://login.example.com/certs"));
        assert!(warned("http://10.0.0.7:8080/certs"));
        assert!(warned("http://svc.example.com/certs"));
        assert!(!warned("https://login.example.com/certs"));
        assert!(!warned("http://keycloak.auth.svc.cluster.local:8080/certs"));
        assert!(!warned("http://keycloak.auth.svc/certs"));
        assert!(!warned("http://localhost:8180/certs"));
        assert!(!warned("http://127.0.0.1:8180/certs"));
        let line = diagnostics_of(&policy("uri = \"http://idp/certs\""))
            .into_iter()
            .find(|d| d.kind == "plain_http_jwks")
            .unwrap();
        assert_eq!((line.line, line.column), (7, 7));
    }

    /// Issue 8, defect 11: `timeout` had no upper bound.
    #[test]
    fn fetch_timeouts_are_bounded_and_refresh_counts_seconds() {
        let uri = "uri = \"https://idp/certs\"";
        assert!(errors_of(&policy(&format!("{uri}\ntimeout = \"60s\""))).is_empty());
        assert_eq!(
            kinds_of(&errors_of(&policy(&format!("{uri}\ntimeout = \"61s\"")))),
            ["timeout_out_of_range"]
        );
        assert_eq!(
            kinds_of(&errors_of(&policy(&format!(
                "{uri}\ntimeout = \"0s\"\nrefresh = \"10m500ms\""
            )))),
            ["sub_second_duration", "timeout_out_of_range"]
        );
        assert_eq!(
            kinds_of(&errors_of(&policy(&format!("{uri}\nrefresh = \"9s\"")))),
            ["refresh_too_short"]
        );
    }
}
