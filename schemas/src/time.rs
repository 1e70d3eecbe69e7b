//! Ledger timestamps: RFC 3339 in UTC with exactly six fractional digits,
//! `YYYY-MM-DDTHH:MM:SS.ffffffZ`. The fixed width makes the text form sort
//! like the instant it names.

use std::fmt;

/// An instant with microsecond precision, as microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a string is not a ledger timestamp.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {0:?} is not of the form YYYY-MM-DDTHH:MM:SS.ffffffZ (UTC, years 1970-9999)")]
pub struct TimestampError(pub String);

const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

impl Timestamp {
    /// The earliest representable ledger time, the Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    pub fn from_unix_micros(micros: i64) -> Option<Timestamp> {
        // Years 1970..=9999 keep the four-digit year of the fixed format.
        (0..=253_402_300_799_999_999).contains(&micros).then_some(Timestamp(micros))
    }

    pub fn unix_micros(self) -> i64 {
        self.0
    }

    /// The current time of the system clock (only the sequencer calls this).
    pub fn now() -> Timestamp {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Timestamp(micros)
    }

    /// Parses the fixed format.
    ///
    /// # Errors
    /// [`TimestampError`] for anything but a valid `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub fn parse(s: &str) -> Result<Timestamp, TimestampError> {
        let err = || TimestampError(s.to_string());
        let b = s.as_bytes();
        if b.len() != 27
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'.'
            || b[26] != b'Z'
        {
            return Err(err());
        }
        let num = |range: std::ops::Range<usize>| -> Result<i64, TimestampError> {
            let part = &b[range];
            if !part.iter().all(u8::is_ascii_digit) {
                return Err(err());
            }
            Ok(part.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
        };
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second, micro) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
        if year < 1970
            || !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return Err(err());
        }
        let days = days_from_civil(year, month, day);
        Ok(Timestamp((days * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second) * MICROS_PER_SECOND + micro))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0.div_euclid(MICROS_PER_SECOND);
        let micros = self.0.rem_euclid(MICROS_PER_SECOND);
        let days = seconds.div_euclid(SECONDS_PER_DAY);
        let rem = seconds.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        write!(f, "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days-from-civil algorithm (proleptic Gregorian calendar).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_known_instants() {
        let t = Timestamp::parse("2026-11-28T03:44:40.123456Z").unwrap();
        assert_eq!(t.unix_micros(), 1_795_837_480_123_456);
        assert_eq!(t.to_string(), "2026-11-28T03:44:40.123456Z");
        assert_eq!(Timestamp::EPOCH.to_string(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(Timestamp::parse("2024-02-29T23:59:59.999999Z").unwrap().to_string(), "2024-02-29T23:59:59.999999Z");
    }

    #[test]
    fn refuses_other_forms() {
        for bad in [
            "2026-11-28T03:44:40Z",
            "2026-11-28T03:44:40.123456+00:00",
            "2025-02-29T00:00:00.000000Z",
            "2026-13-01T00:00:00.000000Z",
            "2026-11-28t03:44:40.123456Z",
            "1969-12-31T23:59:59.999999Z",
            "2026-11-28T24:00:00.000000Z",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
    }
}
