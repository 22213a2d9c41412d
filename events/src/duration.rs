//! Go-style durations (`720h`, `4h30m`, `1.5h`, `300ms`, `1h0m0s`), as Velero, kubectl and
//! every Go tool print them, parsed exactly like Go's `time.ParseDuration`: a sequence of
//! decimal numbers, each with an optional fraction and a required unit (`ns`, `us`/`µs`/`μs`,
//! `ms`, `s`, `m`, `h`); a bare `0` is allowed. Negative durations are refused because every
//! Coracle duration is a TTL or a timeout. The range is Go's (at most about 292 years), so a
//! value Coracle accepts is one a Go tool reading the same field accepts too.

use std::time::Duration;

/// The largest duration Go can represent: `i64::MAX` nanoseconds.
const MAX_NANOS: u128 = i64::MAX as u128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    pub input: String,
    pub reason: String,
}

/// Parses a Go-style duration. Surrounding whitespace is ignored (it sneaks in from YAML).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason: String| DurationError { input: input.to_string(), reason };
    let s = input.trim();
    if s.is_empty() {
        return Err(fail("empty; expected a number with a unit, such as 720h or 4h30m".into()));
    }
    let s = match s.strip_prefix('-') {
        Some(_) => return Err(fail("negative durations are not allowed".into())),
        None => s.strip_prefix('+').unwrap_or(s),
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bytes = s.as_bytes();
    let mut pos = 0;
    let mut total: u128 = 0;
    while pos < bytes.len() {
        let start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let whole = &s[start..pos];
        let mut fraction = "";
        if pos < bytes.len() && bytes[pos] == b'.' {
            pos += 1;
            let frac_start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            fraction = &s[frac_start..pos];
        }
        if whole.is_empty() && fraction.is_empty() {
            let found = s[start..].chars().next().map_or_else(|| "end of input".to_string(), |c| format!("{c:?}"));
            return Err(fail(format!("expected a number at byte {start}, found {found}")));
        }
        let unit_start = pos;
        // The unit runs until the next digit or '.', like Go (so `µs` with its multi-byte µ works).
        while pos < bytes.len() && !bytes[pos].is_ascii_digit() && bytes[pos] != b'.' {
            pos += 1;
        }
        let unit = &s[unit_start..pos];
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => {
                return Err(fail(format!("missing unit after {:?} (valid units: ns, us, ms, s, m, h)", &s[start..pos])))
            }
            other => return Err(fail(format!("unknown unit {other:?} (valid units: ns, us, ms, s, m, h)"))),
        };
        let overflow = || fail("too large (at most about 292 years, Go's limit)".into());
        // Digits beyond what can matter are ignored so that `0.000…0001h` cannot overflow.
        let whole_value = if whole.is_empty() {
            0
        } else {
            whole.parse::<u128>().ok().filter(|w| *w <= MAX_NANOS).ok_or_else(overflow)?
        };
        let mut part = whole_value.checked_mul(unit_nanos).filter(|v| *v <= MAX_NANOS).ok_or_else(overflow)?;
        if !fraction.is_empty() {
            // Truncating like Go: the fraction's value in nanoseconds, rounded down.
            let digits = &fraction[..fraction.len().min(20)];
            let numerator: u128 = digits.parse().map_err(|_| overflow())?;
            let scale = 10u128.pow(digits.len() as u32);
            part += numerator * unit_nanos / scale;
        }
        total = total.checked_add(part).filter(|t| *t <= MAX_NANOS).ok_or_else(overflow)?;
    }
    let secs = (total / 1_000_000_000) as u64;
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        parse_duration(s).expect_err(s).to_string()
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(ok("720h"), Duration::from_secs(720 * 3600));
        assert_eq!(ok("4h30m"), Duration::from_secs(4 * 3600 + 30 * 60));
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("300ms"), Duration::from_millis(300));
        assert_eq!(ok("1h0m0s"), Duration::from_secs(3600));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("+5s"), Duration::from_secs(5));
        assert_eq!(ok(" 10m "), Duration::from_secs(600));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("5.s"), Duration::from_secs(5));
        assert_eq!(ok("1us"), Duration::from_micros(1));
        assert_eq!(ok("1µs"), Duration::from_micros(1));
        assert_eq!(ok("1μs"), Duration::from_micros(1));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("2h45m30.5s"), Duration::from_millis((2 * 3600 + 45 * 60 + 30) * 1000 + 500));
        // Fractions are truncated to whole nanoseconds, like Go.
        assert_eq!(ok("1.0000000001s"), Duration::from_secs(1));
        assert_eq!(ok("0.3333333333s"), Duration::from_nanos(333_333_333));
        // Go's upper limit is accepted, one past it is not.
        assert_eq!(ok("2562047h47m16.854775807s"), Duration::from_nanos(i64::MAX as u64));
    }

    #[test]
    fn rejects_malformed_durations_with_reasons() {
        assert!(err("").contains("empty"), "{}", err(""));
        assert!(err("720").contains("missing unit after \"720\""), "{}", err("720"));
        assert!(err("4x").contains("unknown unit \"x\""), "{}", err("4x"));
        assert!(err("1d").contains("unknown unit \"d\""), "{}", err("1d"));
        assert!(err("-1h").contains("negative"), "{}", err("-1h"));
        assert!(err("h").contains("expected a number at byte 0"), "{}", err("h"));
        assert!(err("1h.m").contains("expected a number at byte 2"), "{}", err("1h.m"));
        assert!(err("1 h").contains("unknown unit \" h\""), "{}", err("1 h"));
        assert!(err("2562047h47m16.854775808s").contains("too large"), "{}", err("2562047h47m16.854775808s"));
        assert!(err("99999999999999999999999999h").contains("too large"));
        assert!(err("4h30").contains("missing unit after \"30\""), "{}", err("4h30"));
        assert_eq!(err("4x"), "invalid duration \"4x\": unknown unit \"x\" (valid units: ns, us, ms, s, m, h)");
    }
}
