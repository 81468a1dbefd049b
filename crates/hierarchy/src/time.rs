//! Snapshot times: epoch seconds, written as `YYYY-MM-DDTHH:MM:SSZ` (UTC).

use std::fmt;
use std::str::FromStr;

use jiff::civil::DateTime;
use jiff::{SignedDuration, Timestamp};

use crate::error::{Error, Result};

const UNIX_EPOCH_DATETIME: DateTime = DateTime::constant(1970, 1, 1, 0, 0, 0, 0);
/// `0000-01-01T00:00:00Z`, the earliest time PBS can format.
const MIN_EPOCH: i64 = -62_167_219_200;
/// `9999-12-31T23:59:59Z`, the latest time PBS can format.
const MAX_EPOCH: i64 = 253_402_300_799;

/// The time of a snapshot: whole seconds since the Unix epoch, between the years 0 and 9999 (UTC).
///
/// [`Display`](fmt::Display) writes PBS's folder name `YYYY-MM-DDTHH:MM:SSZ`; [`FromStr`] reads it
/// back strictly: exactly 20 characters, and a real calendar time (PBS silently turns `2024-02-31` into
/// a March date and accepts second `60`; keepsake refuses both, since PBS never writes them).
///
/// ```
/// use keepsake_hierarchy::BackupTime;
///
/// let t: BackupTime = "2024-06-05T15:06:40Z".parse()?;
/// assert_eq!(t.epoch(), 1_717_600_000);
/// assert_eq!(BackupTime::from_epoch(1_717_600_000)?.to_string(), "2024-06-05T15:06:40Z");
/// assert!("2024-02-31T00:00:00Z".parse::<BackupTime>().is_err());
/// # Ok::<(), keepsake_hierarchy::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupTime(i64);

impl BackupTime {
    /// The earliest representable time, `0000-01-01T00:00:00Z`.
    pub const MIN: BackupTime = BackupTime(MIN_EPOCH);
    /// The latest representable time, `9999-12-31T23:59:59Z`.
    pub const MAX: BackupTime = BackupTime(MAX_EPOCH);

    /// Checks that `epoch` falls in the years 0..=9999.
    pub fn from_epoch(epoch: i64) -> Result<Self> {
        if (MIN_EPOCH..=MAX_EPOCH).contains(&epoch) {
            Ok(Self(epoch))
        } else {
            Err(Error::TimeOutOfRange { epoch })
        }
    }

    /// Seconds since 1970-01-01T00:00:00Z.
    pub fn epoch(self) -> i64 {
        self.0
    }

    /// The same instant as a [`jiff::Timestamp`], for calendar arithmetic in a time zone (prune).
    ///
    /// `None` only for the last hours of the year 9999, which lie beyond jiff's timestamp range
    /// (it keeps room for any UTC offset).
    pub fn timestamp(self) -> Option<Timestamp> {
        Timestamp::from_second(self.0).ok()
    }

    /// The UTC calendar date and time.
    pub fn to_utc_datetime(self) -> DateTime {
        // Civil arithmetic covers the whole range 0000..=9999, unlike `Timestamp`.
        UNIX_EPOCH_DATETIME
            .checked_add(SignedDuration::from_secs(self.0))
            .unwrap_or(UNIX_EPOCH_DATETIME)
    }

    fn parse(s: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidTime {
            input: s.to_owned(),
            reason,
        };
        let b = s.as_bytes();
        if b.len() != 20 {
            return Err(invalid("expected 20 characters, YYYY-MM-DDTHH:MM:SSZ"));
        }
        for (i, expected) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'Z'),
        ] {
            if b[i] != expected {
                return Err(invalid("expected the form YYYY-MM-DDTHH:MM:SSZ"));
            }
        }
        let number = |range: std::ops::Range<usize>| -> Result<i16> {
            b[range].iter().try_fold(0i16, |acc, &c| {
                if c.is_ascii_digit() {
                    Ok(acc * 10 + i16::from(c - b'0'))
                } else {
                    Err(invalid("expected digits"))
                }
            })
        };
        let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
        let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
        let narrow = |v: i16| i8::try_from(v).map_err(|_| invalid("not a real date and time"));
        let datetime = DateTime::new(
            year,
            narrow(month)?,
            narrow(day)?,
            narrow(hour)?,
            narrow(minute)?,
            narrow(second)?,
            0,
        )
        .map_err(|_| invalid("not a real date and time"))?;
        let since_epoch = datetime.duration_since(UNIX_EPOCH_DATETIME).as_secs();
        Self::from_epoch(since_epoch)
    }
}

impl BackupTime {
    /// `YYYY-MM-DDTHH:MM:SSZ` (what [`Display`](fmt::Display) writes) as bytes, digit by digit,
    /// without the formatting machinery: every path to a snapshot file and every snapshot and
    /// manifest lock path is built from it, and `fmt`'s padding costs more than the file's read.
    /// The range check of [`BackupTime::from_epoch`] keeps the year within four digits.
    pub fn rfc3339(self) -> [u8; 20] {
        let days = self.0.div_euclid(86_400);
        let secs = self.0.rem_euclid(86_400);
        // Days to civil date (proleptic Gregorian), Howard Hinnant's algorithm.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);

        let mut text = *b"0000-00-00T00:00:00Z";
        let mut put = |at: usize, width: usize, mut value: i64| {
            for i in (at..at + width).rev() {
                // `value % 10` is a digit: years are 0..=9999 and the rest below 100.
                text[i] = b'0' + (value.rem_euclid(10)) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, secs / 3600);
        put(14, 2, secs / 60 % 60);
        put(17, 2, secs % 60);
        text
    }

    /// Appends `YYYY-MM-DDTHH:MM:SSZ` to `out`.
    pub(crate) fn push_to(self, out: &mut String) {
        let bytes = self.rfc3339();
        // Only ASCII digits and separators were written.
        out.push_str(std::str::from_utf8(&bytes).unwrap_or_default());
    }
}

impl fmt::Display for BackupTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.rfc3339();
        f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for BackupTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupTime({self})")
    }
}

impl FromStr for BackupTime {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<i64> for BackupTime {
    type Error = Error;
    fn try_from(epoch: i64) -> Result<Self> {
        Self::from_epoch(epoch)
    }
}

impl From<BackupTime> for i64 {
    fn from(t: BackupTime) -> i64 {
        t.0
    }
}

crate::serde_via_str!(BackupTime);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: std::result::Result<i64, &str>) {
        match (input.parse::<BackupTime>(), expected) {
            (Ok(t), Ok(epoch)) => {
                assert_eq!(t.epoch(), epoch, "{input}");
                assert_eq!(t.to_string(), input);
            }
            (Err(e), Err(fragment)) => {
                let msg = e.to_string();
                assert!(msg.contains(fragment), "{input}: {msg}");
            }
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parse_and_format() {
        check("1970-01-01T00:00:00Z", Ok(0));
        check("2019-12-04T11:59:15Z", Ok(1_575_460_755));
        check("2024-02-29T23:59:59Z", Ok(1_709_251_199));
        check("0000-01-01T00:00:00Z", Ok(MIN_EPOCH));
        check("9999-12-31T23:59:59Z", Ok(MAX_EPOCH));
        check("1969-12-31T23:59:59Z", Ok(-1));
        check("2024-02-31T00:00:00Z", Err("not a real date"));
        check("2023-02-29T00:00:00Z", Err("not a real date"));
        check("2024-13-01T00:00:00Z", Err("not a real date"));
        check("2024-00-01T00:00:00Z", Err("not a real date"));
        check("2024-01-00T00:00:00Z", Err("not a real date"));
        check("2024-01-01T24:00:00Z", Err("not a real date"));
        check("2024-01-01T23:60:00Z", Err("not a real date"));
        check("2024-01-01T23:59:60Z", Err("not a real date"));
        check("2024-01-01T00:00:00", Err("20 characters"));
        check("2024-01-01T00:00:00+00:00", Err("20 characters"));
        check("2024-01-01 00:00:00Z", Err("form"));
        check("2024-01-01T00:00:0aZ", Err("digits"));
        check("+024-01-01T00:00:00Z", Err("digits"));
        check("2024-01-01T00:00:00z", Err("form"));
    }

    #[test]
    fn epoch_range() {
        assert!(BackupTime::from_epoch(MIN_EPOCH - 1).is_err());
        assert!(BackupTime::from_epoch(MAX_EPOCH + 1).is_err());
        assert!(BackupTime::from_epoch(i64::MIN).is_err());
        assert!(BackupTime::from_epoch(i64::MAX).is_err());
        assert_eq!(BackupTime::MIN.to_string(), "0000-01-01T00:00:00Z");
        assert_eq!(BackupTime::MAX.to_string(), "9999-12-31T23:59:59Z");
    }

    /// `fmt`'s padded form of jiff's calendar fields: the oracle of the digit-by-digit form.
    fn padded(t: BackupTime) -> String {
        let dt = t.to_utc_datetime();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            dt.year(),
            dt.month(),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        )
    }

    #[track_caller]
    fn check_digits(epoch: i64) {
        let t = BackupTime::from_epoch(epoch).unwrap();
        assert_eq!(
            std::str::from_utf8(&t.rfc3339()).unwrap(),
            padded(t),
            "epoch {epoch}"
        );
    }

    /// The civil-date arithmetic at the edges: the range's ends, the epoch, and every day around
    /// the century leap rules, at a time of day that wanders; then a sample of the whole range.
    #[test]
    fn digits_match_the_calendar_at_the_edges() {
        for epoch in [
            MIN_EPOCH,
            MIN_EPOCH + 1,
            -1,
            0,
            1,
            951_782_400,
            951_868_799,
            4_107_542_400,
            MAX_EPOCH - 1,
            MAX_EPOCH,
        ] {
            check_digits(epoch);
        }
        let day = |year: i64| (year - 1970) * 31_556_952 / 86_400;
        let mut time_of_day = 0;
        for year in [0, 100, 400, 1900, 2000, 2100, 9998] {
            for d in day(year) - 400..day(year) + 400 {
                check_digits((d * 86_400 + time_of_day).clamp(MIN_EPOCH, MAX_EPOCH));
                time_of_day = (time_of_day + 7_919) % 86_400;
            }
        }
        let mut epoch = MIN_EPOCH;
        while epoch <= MAX_EPOCH {
            check_digits(epoch);
            epoch += 11 * 86_400 + 3_607;
        }
    }

    proptest::proptest! {
        /// The digit-by-digit form is `fmt`'s padded form of the same calendar fields.
        #[test]
        fn digits_match_fmt(epoch in MIN_EPOCH..=MAX_EPOCH) {
            let t = BackupTime::from_epoch(epoch).unwrap();
            let padded = padded(t);
            proptest::prop_assert_eq!(t.to_string(), padded.clone());
            let mut pushed = String::from("x/");
            t.push_to(&mut pushed);
            proptest::prop_assert_eq!(pushed, format!("x/{padded}"));
        }
    }
}
