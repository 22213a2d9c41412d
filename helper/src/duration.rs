//! Go-style durations for `CORACLE_TIMEOUT` (`4h`, `90m`, `1h30m`, `1.5h`, `300ms`), parsed
//! like Go's `time.ParseDuration` minus negative values. `coracle-functions` has the same
//! parser for the CLI; this small copy keeps the helper binary free of that crate.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    pub input: String,
    pub reason: String,
}

/// Go's limit: `i64::MAX` nanoseconds (about 292 years).
const MAX_NANOS: u128 = i64::MAX as u128;

pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason: &str| DurationError { input: input.to_string(), reason: reason.to_string() };
    let s = input.trim();
    if s.is_empty() {
        return Err(fail("empty; expected a number with a unit, such as 4h or 30m"));
    }
    if s.starts_with('-') {
        return Err(fail("negative durations are not allowed"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bytes = s.as_bytes();
    let (mut pos, mut total) = (0, 0u128);
    while pos < bytes.len() {
        let start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let whole = &s[start..pos];
        let mut fraction = "";
        if pos < bytes.len() && bytes[pos] == b'.' {
            pos += 1;
            let from = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            fraction = &s[from..pos];
        }
        if whole.is_empty() && fraction.is_empty() {
            return Err(fail("expected a number"));
        }
        let unit_start = pos;
        // The unit runs to the next digit or '.', so the multi-byte `µs` works.
        while pos < bytes.len() && !bytes[pos].is_ascii_digit() && bytes[pos] != b'.' {
            pos += 1;
        }
        let unit: u128 = match &s[unit_start..pos] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(fail("missing unit (ns, us, ms, s, m, h)")),
            _ => return Err(fail("unknown unit (valid: ns, us, ms, s, m, h)")),
        };
        let too_large = || fail("too large");
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_large())? };
        let mut part = whole.checked_mul(unit).filter(|v| *v <= MAX_NANOS).ok_or_else(too_large)?;
        if !fraction.is_empty() {
            // Digits beyond 20 cannot change the nanosecond result.
            let digits = &fraction[..fraction.len().min(20)];
            let numerator: u128 = digits.parse().map_err(|_| too_large())?;
            part += numerator * unit / 10u128.pow(digits.len() as u32);
        }
        total = total.checked_add(part).filter(|t| *t <= MAX_NANOS).ok_or_else(too_large)?;
    }
    Ok(Duration::new((total / 1_000_000_000) as u64, (total % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ok = |s| parse_duration(s).unwrap();
        assert_eq!(ok("4h"), Duration::from_secs(4 * 3600));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("300ms"), Duration::from_millis(300));
        assert_eq!(ok("2m0.5s"), Duration::from_millis(120_500));
        assert_eq!(ok("10µs"), Duration::from_micros(10));
        assert_eq!(ok(" 0 "), Duration::ZERO);
        assert_eq!(ok(".5s"), Duration::from_millis(500));
    }

    #[test]
    fn bad_durations() {
        for bad in ["", "4", "h", "-1h", "1x", "1h-", "1..5s", "99999999999999999999h", "3000000h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("5").unwrap_err().to_string().contains("missing unit"));
    }
}
