//! The dates a report is asked for: `YYYY-MM-DD` (midnight UTC) or an RFC 3339
//! date-time with `Z` or a numeric offset and up to nine fraction digits
//! (microseconds kept; finer digits must be zero, so no instant is rounded).

use portcullis_format::time::Timestamp;

/// Why a date argument is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a date (YYYY-MM-DD) or an RFC 3339 date-time (e.g. 2026-01-31T12:00:00Z): {1}")]
pub struct DateError(pub String, pub &'static str);

/// Parses a report date.
///
/// # Errors
/// [`DateError`] naming the input and why it is refused.
pub fn parse(input: &str) -> Result<Timestamp, DateError> {
    let err = |why: &'static str| DateError(input.to_string(), why);
    if input.len() == 10 {
        return Timestamp::parse(&format!("{input}T00:00:00.000000Z")).map_err(|_| err("no such day"));
    }
    let b = input.as_bytes();
    if b.len() < 20 || !(b[10] == b'T' || b[10] == b't') {
        return Err(err("expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS followed by Z or an offset"));
    }
    let (base, mut rest) = input.split_at(19);
    let mut micros = String::from("000000");
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits: String = fraction.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() || digits.len() > 9 {
            return Err(err("the fraction of a second needs 1 to 9 digits"));
        }
        if digits.len() > 6 && digits[6..].bytes().any(|d| d != b'0') {
            return Err(err("ledger times have microsecond precision"));
        }
        micros = format!("{:0<6}", &digits[..digits.len().min(6)]);
        rest = &fraction[digits.len()..];
    }
    let offset_minutes: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let ob = rest.as_bytes();
            if ob.len() != 6 || !(ob[0] == b'+' || ob[0] == b'-') || ob[3] != b':' {
                return Err(err("the offset must be Z or +HH:MM / -HH:MM"));
            }
            let hours: i64 = rest[1..3].parse().map_err(|_| err("bad offset hours"))?;
            let minutes: i64 = rest[4..6].parse().map_err(|_| err("bad offset minutes"))?;
            if hours > 23 || minutes > 59 || !rest[1..3].bytes().chain(rest[4..6].bytes()).all(|c| c.is_ascii_digit()) {
                return Err(err("the offset is out of range"));
            }
            let sign = if ob[0] == b'-' { -1 } else { 1 };
            sign * (hours * 60 + minutes)
        }
    };
    let local = Timestamp::parse(&format!("{}T{}.{micros}Z", &base[..10], &base[11..]))
        .map_err(|_| err("no such date or time"))?;
    Timestamp::from_unix_micros(local.unix_micros() - offset_minutes * 60_000_000)
        .ok_or_else(|| err("outside the years 1970 to 9999"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_date_times_parse_to_utc() {
        assert_eq!(parse("2026-01-31").unwrap().to_string(), "2026-01-31T00:00:00.000000Z");
        assert_eq!(parse("2026-01-31T12:00:00Z").unwrap().to_string(), "2026-01-31T12:00:00.000000Z");
        assert_eq!(parse("2026-01-31T12:00:00.5+02:00").unwrap().to_string(), "2026-01-31T10:00:00.500000Z");
        assert_eq!(parse("2026-01-31T23:30:00-01:00").unwrap().to_string(), "2026-02-01T00:30:00.000000Z");
    }

    #[test]
    fn bad_dates_are_refused() {
        for bad in [
            "2026-02-30",
            "2026-1-1",
            "yesterday",
            "2026-01-31T12:00:00",
            "2026-01-31T25:00:00Z",
            "2026-01-31T12:00:00.1234567Z",
            "2026-01-31T12:00:00+2:00",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
