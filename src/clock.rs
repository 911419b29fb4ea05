//! Wall-clock time as stored and reported: milliseconds since the Unix
//! epoch. One helper, used by the store (quarantine keys) and the ops
//! listener (liveness stamps).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 if the clock is set before it.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
