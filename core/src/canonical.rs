//! The request as the upstream will read it: the path a decoding server routes on, and the
//! host name without its port.
//!
//! Access filters are walked around where the matcher and the upstream read a request
//! differently (OWASP path confusion): `/v1/models/leg%61cy` is `/v1/models/legacy` to every
//! server that decodes, `/public/..;/admin` is `/admin` to a servlet container, and
//! `a.com:80:80` is not `a.com`. So rules are matched on the decoded path, and whatever could
//! still be read two ways is refused with 400 rather than guessed at:
//!
//! - every `%XX` is decoded; an escape that decodes to `/`, `\`, `%`, `;`, `?`, `#` or a control
//!   byte, a broken escape, or bytes that are not UTF-8 after decoding, are refused;
//! - empty segments (`//`) and dot segments (`.`, `..`, raw or encoded) are refused;
//! - `;` path parameters are refused, or stripped from each segment when the policy says
//!   [`PathParameters::Strip`] (as servlet containers read them).

use std::borrow::Cow;

use crate::compiled::PathParameters;
use crate::reason::DenyReason;

/// The path without query or fragment.
pub fn strip_query(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    path.get(..end).unwrap_or(path)
}

/// The path rules are matched on, or why the request is refused (400).
///
/// `raw` is the `:path` as received, query included. Borrows when nothing needs decoding.
pub fn canonical_path(raw: &str, parameters: PathParameters) -> Result<Cow<'_, str>, DenyReason> {
    let path = strip_query(raw);
    if !path.starts_with('/') || path.bytes().any(|b| b == b'\\' || b.is_ascii_control()) {
        return Err(DenyReason::UnnormalizedPath);
    }
    let without_parameters: Cow<'_, str> = if path.contains(';') {
        match parameters {
            PathParameters::Reject => return Err(DenyReason::PathParameters),
            PathParameters::Strip => Cow::Owned(strip_parameters(path)),
        }
    } else {
        Cow::Borrowed(path)
    };
    let decoded = if without_parameters.contains('%') {
        Cow::Owned(percent_decode(&without_parameters)?)
    } else {
        without_parameters
    };
    if has_ambiguous_segment(&decoded) {
        return Err(DenyReason::UnnormalizedPath);
    }
    Ok(decoded)
}

/// Removes `;…` from every segment: `/a;x=1/b;y` → `/a/b`.
fn strip_parameters(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split_once(';').map_or(segment, |(kept, _)| kept))
        .collect::<Vec<_>>()
        .join("/")
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Decodes every escape, refusing those that would change how the path is split or read.
fn percent_decode(path: &str) -> Result<String, DenyReason> {
    let mut out = Vec::with_capacity(path.len());
    let mut bytes = path.bytes();
    while let Some(byte) = bytes.next() {
        if byte != b'%' {
            out.push(byte);
            continue;
        }
        let high = bytes.next().and_then(hex_value);
        let low = bytes.next().and_then(hex_value);
        let (Some(high), Some(low)) = (high, low) else {
            return Err(DenyReason::UnnormalizedPath);
        };
        let decoded = high << 4 | low;
        if matches!(decoded, b'/' | b'\\' | b'%' | b';' | b'?' | b'#') || decoded.is_ascii_control()
        {
            return Err(DenyReason::UnnormalizedPath);
        }
        out.push(decoded);
    }
    String::from_utf8(out).map_err(|_| DenyReason::UnnormalizedPath)
}

/// Empty segments anywhere but at the very end, and dot segments.
fn has_ambiguous_segment(path: &str) -> bool {
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == "." || segment == ".." {
            return true;
        }
    }
    false
}

/// The host rules are matched on: lower case, without a numeric port and one trailing dot.
/// Anything else that is not a plain host name, IP literal or `[IPv6]` is refused (400).
pub fn canonical_host(raw: &str) -> Result<Cow<'_, str>, DenyReason> {
    let (name, port) = if raw.starts_with('[') {
        let end = raw.find(']').ok_or(DenyReason::InvalidHost)?;
        let (literal, rest) = raw.split_at(end + 1);
        let port = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':').ok_or(DenyReason::InvalidHost)?),
        };
        let inner = literal
            .get(1..literal.len() - 1)
            .ok_or(DenyReason::InvalidHost)?;
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(DenyReason::InvalidHost);
        }
        (literal, port)
    } else {
        match raw.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (raw, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(DenyReason::InvalidHost);
    }
    if name.starts_with('[') {
        return Ok(lower(name));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    // Labels of letters, digits, `-` and `_`. An empty host is refused too: it would skip
    // every host-scoped rule (HTTP/1.1 requires a Host; Envoy passes an empty one through).
    if name.is_empty()
        || name.split('.').any(|label| {
            label.is_empty()
                || !label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    {
        return Err(DenyReason::InvalidHost);
    }
    Ok(lower(name))
}

fn lower(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> Result<String, &'static str> {
        canonical_path(raw, PathParameters::Reject)
            .map(Cow::into_owned)
            .map_err(|r| r.code())
    }

    #[test]
    fn unreserved_escapes_are_decoded_before_matching() {
        // Issue 8 defect 5: `leg%61cy` is `legacy` to the upstream.
        assert_eq!(
            path("/v1/models/leg%61cy:predict").as_deref(),
            Ok("/v1/models/legacy:predict")
        );
        assert_eq!(
            path("/v1/models/fraud%3Apredict?x=%2F").as_deref(),
            Ok("/v1/models/fraud:predict")
        );
        assert_eq!(path("/caf%C3%A9").as_deref(), Ok("/café"));
        assert!(matches!(
            canonical_path("/score?a=b", PathParameters::Reject),
            Ok(Cow::Borrowed("/score"))
        ));
    }

    #[test]
    fn escapes_that_change_the_structure_are_refused() {
        for bad in [
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/%2e%2e/admin",
            "/a/%2E/b",
            "/a%252e",
            "/a%3bb",
            "/a%00",
            "/a%0a",
            "/a%3fb",
            "/a%23b",
            "/a%zz",
            "/a%4",
            "/a%",
            "/%C3",
            "/%FF",
        ] {
            assert_eq!(path(bad), Err("unnormalized_path"), "{bad}");
        }
    }

    #[test]
    fn dot_and_empty_segments_are_refused() {
        for bad in [
            "/a/../b", "/a/./b", "//a", "/a//b", "/..", "/.", "a", "", "/a\\b",
        ] {
            assert_eq!(path(bad), Err("unnormalized_path"), "{bad}");
        }
        for good in [
            "/",
            "/score",
            "/score/",
            "/v1/models/m:predict",
            "/a.b/c..d",
            "/..a",
        ] {
            assert_eq!(path(good).as_deref(), Ok(good), "{good}");
        }
    }

    #[test]
    fn path_parameters_are_refused_or_stripped() {
        // Issue 8 defect 5: `/public/..;/admin/x` is `/admin/x` to Tomcat or Spring.
        assert_eq!(path("/public/..;/admin/x"), Err("path_parameters"));
        assert_eq!(path("/admin;x=1/y"), Err("path_parameters"));
        let strip = |raw| {
            canonical_path(raw, PathParameters::Strip)
                .map(Cow::into_owned)
                .map_err(|r| r.code())
        };
        assert_eq!(strip("/admin;x=1/y").as_deref(), Ok("/admin/y"));
        assert_eq!(strip("/public/..;/admin/x"), Err("unnormalized_path"));
        assert_eq!(strip("/a;b").as_deref(), Ok("/a"));
        assert_eq!(strip("/a%3bb"), Err("unnormalized_path"));
    }

    fn host(raw: &str) -> Result<String, &'static str> {
        canonical_host(raw)
            .map(Cow::into_owned)
            .map_err(|r| r.code())
    }

    #[test]
    fn hosts_lose_case_port_and_trailing_dot() {
        assert_eq!(
            host("Fraud.WestEurope.inference.ml.azure.com:443").as_deref(),
            Ok("fraud.westeurope.inference.ml.azure.com")
        );
        assert_eq!(host("[::1]:8080").as_deref(), Ok("[::1]"));
        assert_eq!(host("[::1]").as_deref(), Ok("[::1]"));
        assert_eq!(host("example.com.").as_deref(), Ok("example.com"));
        assert_eq!(host("10.0.0.1:80").as_deref(), Ok("10.0.0.1"));
    }

    #[test]
    fn ambiguous_hosts_are_refused() {
        // Issue 8 defect 10: `secure.example.com:80:80` escaped a host-scoped rule.
        for bad in [
            "secure.example.com:80:80",
            "secure.example.com:",
            "secure.example.com:http",
            "a.com:123456",
            "a..com",
            "a.com..",
            "user@a.com",
            "a.com/x",
            "a com",
            "[::1",
            "[::1]x",
            "[]",
            "[zz]",
            ":80",
            "",
            ".",
        ] {
            assert_eq!(host(bad), Err("invalid_host"), "{bad}");
        }
    }
}
