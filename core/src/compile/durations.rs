//! Durations as written in policies (`60s`, `10m`, `1h30m`, `500ms`, `1d`), and the two ways
//! the compiler reads them: whole seconds where the engine counts seconds (clock skew,
//! lifetimes, refresh periods) — a sub-second value is an error, never silently 0 — and
//! milliseconds for callout timeouts.

use std::time::Duration;

use toml::Spanned;

use super::diagnostics::Context;

/// Parses a duration such as `60s`, `10m`, `1h30m`, `500ms`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration (use e.g. `30s`, `10m`, `1h30m`, `500ms`)");
    let mut total_ms: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let value: u64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let factor = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        total_ms = value
            .checked_mul(factor)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(bad)?;
        rest = next;
    }
    Ok(Duration::from_millis(total_ms))
}

/// A setting the engine counts in whole seconds: `default` when absent; an error (and
/// `None`) when it does not parse or is not a whole number of seconds.
pub(super) fn whole_seconds(
    cx: &mut Context<'_>,
    value: Option<&Spanned<String>>,
    default: u64,
    setting: &str,
) -> Option<u64> {
    let Some(value) = value else {
        return Some(default);
    };
    let duration = parse(cx, value, setting)?;
    if duration.subsec_millis() != 0 {
        let (down, up) = (duration.as_secs(), duration.as_secs() + 1);
        cx.error(
            "sub_second_duration",
            &value.span(),
            format!(
                "`{setting}` counts whole seconds; `{}` is not a whole number of seconds",
                value.get_ref()
            ),
            format!("write `{down}s` or `{up}s` (it is not rounded for you: `500ms` is not 0)"),
        );
        return None;
    }
    Some(duration.as_secs())
}

/// A timeout in milliseconds, more than 0 and at most `max`.
pub(super) fn timeout_millis(
    cx: &mut Context<'_>,
    value: Option<&Spanned<String>>,
    default: Duration,
    max: Duration,
    setting: &str,
) -> Option<u64> {
    let duration = match value {
        Some(value) => {
            let duration = parse(cx, value, setting)?;
            if duration.is_zero() || duration > max {
                cx.error(
                    "timeout_out_of_range",
                    &value.span(),
                    format!(
                        "`{setting}` is `{}`; it must be more than 0 and at most {}s",
                        value.get_ref(),
                        max.as_secs()
                    ),
                    "a callout that has not answered within seconds will not; the filter retries with backoff",
                );
                return None;
            }
            duration
        }
        None => default,
    };
    u64::try_from(duration.as_millis()).ok()
}

fn parse(cx: &mut Context<'_>, value: &Spanned<String>, setting: &str) -> Option<Duration> {
    match parse_duration(value.get_ref()) {
        Ok(duration) => Some(duration),
        Err(message) => {
            cx.error(
                "bad_duration",
                &value.span(),
                format!("`{setting}`: {message}"),
                "units: `ms`, `s`, `m`, `h`, `d`, combined largest first, e.g. `1h30m`",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spanned(text: &str) -> Spanned<String> {
        Spanned::new(0..text.len(), text.to_owned())
    }

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in [
            "",
            "10",
            "s",
            "10 s",
            "1.5s",
            "-1s",
            "99999999999999999999d",
            "1w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// Issue 8, defect 11: `clock_skew = "500ms"` silently became 0 s.
    #[test]
    fn sub_second_values_are_refused_where_seconds_count() {
        let mut cx = Context::new("p.toml", "");
        assert_eq!(whole_seconds(&mut cx, None, 60, "clock_skew"), Some(60));
        assert_eq!(
            whole_seconds(&mut cx, Some(&spanned("2m")), 60, "clock_skew"),
            Some(120)
        );
        assert!(!cx.has_errors());
        for text in ["500ms", "1500ms", "1s1ms"] {
            assert_eq!(
                whole_seconds(&mut cx, Some(&spanned(text)), 60, "clock_skew"),
                None
            );
        }
        assert_eq!(cx.diagnostics.len(), 3);
        let first = &cx.diagnostics[0];
        assert_eq!(first.kind, "sub_second_duration");
        assert!(
            first.hint.as_deref().unwrap().contains("`0s` or `1s`"),
            "{first}"
        );
        assert_eq!(
            whole_seconds(&mut cx, Some(&spanned("2000ms")), 60, "clock_skew"),
            Some(2)
        );
    }

    /// Issue 8, defect 11: `timeout` had no upper bound.
    #[test]
    fn timeouts_are_bounded() {
        let mut cx = Context::new("p.toml", "");
        let (default, max) = (Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(
            timeout_millis(&mut cx, None, default, max, "timeout"),
            Some(5_000)
        );
        assert_eq!(
            timeout_millis(&mut cx, Some(&spanned("750ms")), default, max, "timeout"),
            Some(750)
        );
        assert_eq!(
            timeout_millis(&mut cx, Some(&spanned("60s")), default, max, "timeout"),
            Some(60_000)
        );
        assert!(!cx.has_errors());
        for text in ["61s", "1h", "0s", "0ms"] {
            assert_eq!(
                timeout_millis(&mut cx, Some(&spanned(text)), default, max, "timeout"),
                None,
                "{text}"
            );
        }
        assert!(
            cx.diagnostics
                .iter()
                .all(|d| d.kind == "timeout_out_of_range")
        );
    }
}
