//! Time on the wire: RFC 3339 timestamps in the snapshot, as milliseconds since the epoch inside.
//! Parsing and formatting never panic, whatever the input.

/// The latest time formatted as itself (9999-12-31T23:59:59Z); later times are written as this.
pub const MAX_FORMATTED_MS: u64 = 253_402_300_799_000;

/// Milliseconds since the epoch of an RFC 3339 timestamp (`2026-11-22T10:00:00Z`, optional
/// fraction, `Z` or a numeric offset).
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // A leap second (:60) is read as the next minute's first second.
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let ms_digits: String = frac[..digits].chars().chain("000".chars()).take(3).collect();
        millis = ms_digits.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let r = rest.as_bytes();
            if r.len() != 6 || r[3] != b':' || ![r[1], r[2], r[4], r[5]].iter().all(u8::is_ascii_digit) {
                return None;
            }
            let (h, m) = (rest[1..3].parse::<i64>().ok()?, rest[4..6].parse::<i64>().ok()?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    u64::try_from(secs * 1000 + millis).ok()
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-22T10:00:00Z` for `ms` since the epoch (whole seconds, rounded down); times past
/// year 9999 are written as [`MAX_FORMATTED_MS`], which RFC 3339 can still express.
pub fn format_rfc3339_ms(ms: u64) -> String {
    let secs = (ms.min(MAX_FORMATTED_MS) / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: u64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z

    #[test]
    fn parses_rfc3339_forms() {
        assert_eq!(parse_rfc3339_ms("2026-11-22T10:00:00Z"), Some(T0));
        assert_eq!(parse_rfc3339_ms("2026-11-22T12:00:00+02:00"), Some(T0));
        assert_eq!(parse_rfc3339_ms("2000-02-29T23:59:59.123Z"), Some(951_868_799_123));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        for bad in [
            "",
            "2026-11-22",
            "2026-13-01T00:00:00Z",
            "2026-11-22T10:00:00",
            "2026-11-22T10:00:00.Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-22T10:00:00+99:99",
            "2026-11-22T10:00:00+-1:00",
            "2026-11-22T10:00:00+01:+1",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_the_design_example_and_clamps_past_year_9999() {
        assert_eq!(format_rfc3339_ms(T0), "2026-11-22T10:00:00Z");
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339_ms(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(format_rfc3339_ms(1_000_000_000_000 * 1000), "9999-12-31T23:59:59Z");
    }

    proptest! {
        #[test]
        fn every_formatted_time_parses_back_to_its_second(ms in 0u64..=MAX_FORMATTED_MS) {
            prop_assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms / 1000 * 1000));
        }

        #[test]
        fn parsing_never_panics(s in ".{0,40}") {
            let _ = parse_rfc3339_ms(&s);
        }
    }
}
