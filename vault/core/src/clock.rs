//! Wall-clock time as the vault stores it: Unix milliseconds, UTC.

use time::OffsetDateTime;

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

/// A point in time in Unix milliseconds.
pub fn to_ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 text of Unix milliseconds, for people. A time out of range is
/// not written as its raw milliseconds: a caller chooses an expiry, and its
/// digits could be anything.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "a time out of range".to_owned())
}
