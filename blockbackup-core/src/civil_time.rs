//! Calendar arithmetic for the UTC timestamps the repository and the
//! backup manifest print, and the recovery target times restores write
//! and the offline command reads, without a date library: Howard Hinnant's
//! algorithms over the proleptic Gregorian calendar (the year shifted to
//! start in March so the leap day comes last, then 400-year eras).

/// Days since 1970-01-01 of a date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The (year, month, day) of a day number counted from 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Microseconds since the Unix epoch now (0 if the clock is before it).
pub fn unix_now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A time in microseconds since the Unix epoch, in UTC: (year, month,
/// day), (hour, minute, second) and the microseconds of that second.
pub fn utc_fields(unix_us: i64) -> ((i64, u32, u32), (i64, i64, i64), i64) {
    let seconds = unix_us.div_euclid(1_000_000);
    let of_day = seconds.rem_euclid(86_400);
    (
        civil_from_days(seconds.div_euclid(86_400)),
        (of_day / 3600, of_day / 60 % 60, of_day % 60),
        unix_us.rem_euclid(1_000_000),
    )
}

/// A time as PostgreSQL reads it back: `YYYY-MM-DD HH:MM:SS.ffffff+00`.
pub fn render_time(unix_us: i64) -> String {
    let ((year, month, day), (hour, minute, second), micros) = utc_fields(unix_us);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}.{micros:06}+00")
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.fraction](Z|±HH[:MM])` to microseconds since
/// the Unix epoch: the offset is required, a time without one means
/// different moments on different machines.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty();
    let number = |s: &str| digits(s).then(|| s.parse::<i64>().ok()).flatten();
    let (date, rest) = (text.get(..10)?, text.get(10..)?);
    let rest = rest.strip_prefix([' ', 'T'])?;
    let mut parts = date.split('-');
    let (year, month, day) = (
        number(parts.next()?)?,
        number(parts.next()?)?,
        number(parts.next()?)?,
    );
    let clock = rest.get(..8)?;
    let mut offset_text = rest.get(8..)?;
    let mut fields = clock.split(':');
    let (hour, minute, second) = (
        number(fields.next()?)?,
        number(fields.next()?)?,
        number(fields.next()?)?,
    );
    let mut micros = 0i64;
    if let Some(fraction) = offset_text.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        let frac = &fraction[..end];
        if frac.is_empty() {
            return None;
        }
        let padded = format!("{:0<6}", &frac[..frac.len().min(6)]);
        micros = padded.parse().ok()?;
        offset_text = &fraction[end..];
    }
    let offset_seconds = match offset_text {
        "Z" | "+00" | "+00:00" | "-00" | "-00:00" => 0,
        _ => {
            let sign = match offset_text.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let body = &offset_text[1..];
            let (h, m) = match body.split_once(':') {
                Some((h, m)) => (number(h)?, number(m)?),
                None if body.len() == 2 => (number(body)?, 0),
                None if body.len() == 4 => (number(&body[..2])?, number(&body[2..])?),
                None => return None,
            };
            if h > 15 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    if !valid {
        return None;
    }
    let days = days_from_civil(year, month as u32, day as u32);
    // A day that does not exist (31 April) comes back as another date.
    if civil_from_days(days) != (year, month as u32, day as u32) {
        return None;
    }
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(seconds * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_postgresql_text() {
        let us = parse_time("2026-12-01 14:05:00.25+00").unwrap();
        assert_eq!(render_time(us), "2026-12-01 14:05:00.250000+00");
        assert_eq!(parse_time("2026-12-01T16:05:00.25+02:00"), Some(us));
        assert_eq!(parse_time("2026-12-01 13:05:00.25-0100"), Some(us));
        assert_eq!(parse_time("1970-01-01 00:00:00Z"), Some(0));
        for bad in [
            "2026-12-01 14:05:00",
            "2026-02-30 14:05:00+00",
            "2026-12-01 24:00:00+00",
            "2026-12-01 14:05+00",
            "yesterday",
            "2026-12-01 14:05:00.+00",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn civil_dates_match_a_day_by_day_calendar() {
        let days_in_month = |year: i64, month: u32| match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
            _ => 28,
        };
        let (mut year, mut month, mut day) = (1970i64, 1u32, 1u32);
        for days in 0..(400 * 366) {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            assert_eq!(days_from_civil(year, month, day), days);
            day += 1;
            if day > days_in_month(year, month) {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
