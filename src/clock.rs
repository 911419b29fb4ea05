//! Wall-clock time as stored and reported: milliseconds since the Unix
//! epoch, used by the store (quarantine keys) and the ops listener
//! (liveness stamps); and the UTC calendar month a monthly budget counts.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 if the clock is set before it.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The UTC month of `day` (days since the Unix epoch) as
/// `year * 12 + month - 1`: the month a monthly budget counts. Consecutive
/// months are consecutive numbers; a day past the calendar's range (year
/// 9999) is month 0.
pub fn month_of_day(day: u32) -> u32 {
    let date = time::OffsetDateTime::UNIX_EPOCH.checked_add(time::Duration::days(i64::from(day)));
    date.and_then(|date| {
        let year = u32::try_from(date.year()).ok()?;
        Some(year * 12 + u32::from(u8::from(date.month())) - 1)
    })
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_roll_over_on_the_first_utc_day() {
        // 1970-01-01 is day 0.
        assert_eq!(month_of_day(0), 1970 * 12);
        assert_eq!(month_of_day(30), 1970 * 12, "1970-01-31");
        assert_eq!(month_of_day(31), 1970 * 12 + 1, "1970-02-01");
        // 2024 is a leap year: 2024-02-29 is day 19_782, 2024-03-01 the next.
        assert_eq!(month_of_day(19_782), 2024 * 12 + 1);
        assert_eq!(month_of_day(19_783), 2024 * 12 + 2);
        // 2026-12-31 is day 20_818; the next day is January of 2027.
        assert_eq!(month_of_day(20_818), 2026 * 12 + 11);
        assert_eq!(month_of_day(20_819), 2027 * 12);
        assert_eq!(month_of_day(u32::MAX), 0);
    }
}
