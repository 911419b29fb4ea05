//! The lease of this instance on a shared database, as this process last
//! saw it renewed: read before every send to Telegram, written by the
//! cluster actor (`actors/root/cluster.rs`) after each renewal.
//!
//! The database's clock decides when a lease lapses (another instance may
//! take the chats `storage.postgres.grace` after that); this process only
//! knows when it *sent* the renewal that succeeded. The lease cannot have
//! been extended from earlier than that instant, so the process treats it
//! as valid until that instant plus the lease, minus
//! `storage.postgres.send_margin`: a paused, partitioned or slow instance
//! stops sending before its lease lapses in the database, and so before
//! anyone else may answer its chats. Monotonic time only, so a wall-clock
//! jump changes nothing.
//!
//! Lock-free (one atomic), as every outgoing message reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The locally known validity of this instance's lease.
#[derive(Debug)]
pub struct LeaseClock {
    /// The instant the milliseconds below count from.
    origin: Instant,
    /// Sends are allowed until `origin` plus this many milliseconds.
    valid_until_ms: AtomicU64,
    /// `storage.postgres.lease` minus `storage.postgres.send_margin`.
    usable: Duration,
}

impl LeaseClock {
    /// A clock for a lease registered with a request sent at `sent_at`,
    /// lasting `lease`, of which the last `margin` is not used.
    pub fn new(sent_at: Instant, lease: Duration, margin: Duration) -> Self {
        let clock = Self {
            origin: sent_at,
            valid_until_ms: AtomicU64::new(0),
            usable: lease.saturating_sub(margin),
        };
        clock.renewed(sent_at);
        clock
    }

    /// A renewal sent at `sent_at` succeeded.
    pub fn renewed(&self, sent_at: Instant) {
        let until = sent_at.saturating_duration_since(self.origin) + self.usable;
        let millis = u64::try_from(until.as_millis()).unwrap_or(u64::MAX);
        // Renewals may complete out of order; never move the end back.
        self.valid_until_ms.fetch_max(millis, Ordering::AcqRel);
    }

    /// How long sends remain allowed; zero once they are not.
    pub fn remaining(&self) -> Duration {
        let until = Duration::from_millis(self.valid_until_ms.load(Ordering::Acquire));
        until.saturating_sub(Instant::now().saturating_duration_since(self.origin))
    }

    /// Whether this instance may send now.
    pub fn is_valid(&self) -> bool {
        !self.remaining().is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lease_is_used_up_to_its_margin_and_extended_by_renewals() {
        let lease = Duration::from_secs(6);
        let margin = Duration::from_secs(2);
        let start = Instant::now();
        let clock = LeaseClock::new(start, lease, margin);
        assert_eq!(clock.remaining(), Duration::from_secs(4));
        tokio::time::advance(Duration::from_millis(3_900)).await;
        assert!(clock.is_valid());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!clock.is_valid(), "no send in the last margin of the lease");

        // A renewal counts from when it was sent, not when it came back.
        let sent = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        clock.renewed(sent);
        assert_eq!(clock.remaining(), Duration::from_secs(3));
        // An older renewal completing late does not shorten it.
        clock.renewed(start);
        assert_eq!(clock.remaining(), Duration::from_secs(3));
    }
}
