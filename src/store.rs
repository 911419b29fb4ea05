//! Everything that touches the fjall database, and what is stored in it:
//! versioned records ([`record`]) encoded with bincode ([`codec`]), the key
//! layout of the keyspaces (below), the database and its reads and
//! quarantine (`db`), the group-commit writer thread ([`writer`]), backup
//! and restore ([`backup`]), and, for tests and benchmarks only, a raw
//! inspector (`inspect`, feature `test-support`).
//!
//! **Single-writer invariant:** while the service runs, only the thread of
//! [`writer`] writes to the database, and only the persistence actor
//! (`actors/root/persistence.rs`) holds a [`writer::StoreWriter`] to give it
//! work; the actor translates its messages one-to-one into
//! [`writer::StoreOp`]s and never touches the disk. [`backup::restore`] and
//! the inspector open a database only while the service is not running on
//! it.

pub mod backup;
pub mod codec;
pub(crate) mod db;
#[cfg(any(test, feature = "test-support"))]
pub mod inspect;
pub mod record;
pub mod writer;

use crate::telegram::inbound::ChatId;

/// Keyspace of chat records: key [`chat_key`], value an encoded
/// [`record::ChatRecord`].
pub const CHATS: &str = "chats";
/// Keyspace of received updates: key [`update_key`], value an encoded
/// [`record::UpdateEntry`] (the update while unanswered, a marker once
/// answered, until Telegram can no longer send it again).
pub const UPDATES: &str = "updates";
/// Keyspace of what a chat has spent (`/forget` does not delete it): key
/// [`chat_key`], value an encoded [`record::ChatUsage`]. Written only by
/// `/forget`; while the chat has a record, the record's counters are the
/// current ones.
pub const USAGE: &str = "usage";
/// Keyspace of bot-wide settings owned by one actor each (the banned users
/// by the rate limiter, the default model by the LLM pool): key a
/// [`BotKey`] name, value that owner's versioned encoding.
pub const BOT: &str = "bot";
/// Keyspace of records that failed to decode: key [`failed_chat_key`] or
/// [`failed_update_key`], value the raw bytes, kept for inspection.
pub const FAILED: &str = "failed";

/// Keys of the `bot` keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BotKey {
    /// The banned user ids (owner: the rate limiter).
    Bans,
    /// The default model set by an admin (owner: the LLM pool).
    DefaultModel,
    /// The Telegram Business connections (owner: the business actor).
    Business,
}

impl BotKey {
    /// The key bytes.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Self::Bans => b"bans",
            Self::DefaultModel => b"default_model",
            Self::Business => b"business",
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// fjall reported a failed fsync: the store must not be written again in
    /// this process.
    #[error("the store is poisoned (a write to disk failed): {0}")]
    Poisoned(String),
    /// Another process holds the database directory.
    #[error("the data directory is locked by another process")]
    Locked,
    /// Any other storage error.
    #[error("storage error: {0}")]
    Storage(String),
    /// The persistence actor was not reachable (restarting, or stopped).
    #[error("the persistence actor is unavailable")]
    Unavailable,
}

impl StoreError {
    /// A short stable name for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Poisoned(_) => "poisoned",
            Self::Locked => "locked",
            Self::Storage(_) => "storage",
            Self::Unavailable => "unavailable",
        }
    }
}

impl From<fjall::Error> for StoreError {
    fn from(error: fjall::Error) -> Self {
        match error {
            fjall::Error::Poisoned => Self::Poisoned(error.to_string()),
            fjall::Error::Locked => Self::Locked,
            other => Self::Storage(crate::error::error_chain(&other)),
        }
    }
}

/// Key of a chat record: the chat id, big-endian with the sign bit flipped so
/// keys sort like the ids.
pub fn chat_key(chat_id: ChatId) -> [u8; 8] {
    ((chat_id.0 as u64) ^ (1 << 63)).to_be_bytes()
}

/// The chat id of a [`chat_key`].
pub fn chat_from_key(key: &[u8]) -> Option<ChatId> {
    let bytes: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(ChatId((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64))
}

/// Key of an update: its id, big-endian, so a range scan visits ids in order.
pub fn update_key(update_id: u32) -> [u8; 4] {
    update_id.to_be_bytes()
}

/// The update id of an [`update_key`].
pub fn update_from_key(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(key.get(..4)?.try_into().ok()?))
}

/// Key of a quarantined chat record: `c`, the chat key, then when it was
/// moved (milliseconds since the Unix epoch), so several bad records of one
/// chat are all kept.
pub fn failed_chat_key(chat_id: ChatId, unix_millis: u64) -> Vec<u8> {
    failed_key(b'c', &chat_key(chat_id), unix_millis)
}

/// The prefix of every [`failed_chat_key`] of one chat.
pub fn failed_chat_prefix(chat_id: ChatId) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(9);
    prefix.push(b'c');
    prefix.extend_from_slice(&chat_key(chat_id));
    prefix
}

/// Key of a quarantined update entry: `u`, the update key, then the time.
pub fn failed_update_key(update_id: u32, unix_millis: u64) -> Vec<u8> {
    failed_key(b'u', &update_key(update_id), unix_millis)
}

fn failed_key(kind: u8, id: &[u8], unix_millis: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len() + 8);
    key.push(kind);
    key.extend_from_slice(id);
    key.extend_from_slice(&unix_millis.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_keys_round_trip_and_sort_like_ids() {
        for id in [i64::MIN, -1_001_234_567_890, -1, 0, 1, 42, i64::MAX] {
            assert_eq!(chat_from_key(&chat_key(ChatId(id))), Some(ChatId(id)));
        }
        assert!(chat_key(ChatId(-5)) < chat_key(ChatId(3)));
        assert!(chat_key(ChatId(3)) < chat_key(ChatId(300)));
    }

    #[test]
    fn update_keys_sort_like_ids() {
        assert!(update_key(9) < update_key(10));
        assert_eq!(update_from_key(&update_key(123_456)), Some(123_456));
    }
}
