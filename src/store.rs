//! Everything that touches the fjall database, and what is stored in it:
//! versioned records ([`record`]) encoded with bincode ([`codec`]), the key
//! layout of the keyspaces (below), the database and its reads and
//! quarantine (`db`), the storage backend boundary the writer runs on
//! (`backend`, implemented by `db`), the group-commit writer thread
//! ([`writer`]), backup
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

pub(crate) mod backend;
pub mod backup;
pub mod codec;
pub(crate) mod db;
#[cfg(any(test, feature = "test-support"))]
pub mod inspect;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod record;
pub mod writer;

use crate::telegram::inbound::{ChatId, SessionKey, ThreadId};

/// Keyspace of chat records: key [`session_key`] (a plain chat's is its
/// [`chat_key`]), value an encoded
/// [`record::ChatRecord`].
pub const CHATS: &str = "chats";
/// Keyspace of received updates: key [`update_key`], value an encoded
/// [`record::UpdateEntry`] (the update while unanswered, a marker once
/// answered, until Telegram can no longer send it again).
pub const UPDATES: &str = "updates";
/// Keyspace of what a chat has spent (`/forget` does not delete it): key
/// [`session_key`], value an encoded [`record::ChatUsage`]. Written only by
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
    /// Another instance owns the conversation (shared PostgreSQL store): a
    /// load could not take it, or a commit found it taken. Nothing was
    /// written; the session stops and the owner answers. Never retried.
    #[error("another instance owns this conversation")]
    Fenced,
}

impl StoreError {
    /// A failure that may pass by itself (a database restarting, the
    /// persistence actor restarting): worth trying again for a while.
    pub fn is_passing(&self) -> bool {
        matches!(self, Self::Storage(_) | Self::Unavailable)
    }

    /// A short stable name for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Poisoned(_) => "poisoned",
            Self::Locked => "locked",
            Self::Storage(_) => "storage",
            Self::Unavailable => "unavailable",
            Self::Fenced => "fenced",
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

/// The store key of a whole chat: the chat id, big-endian with the sign bit
/// flipped so keys sort like the ids. It is also the first part of every
/// [`session_key`] of the chat.
pub fn chat_key(chat_id: ChatId) -> [u8; 8] {
    ((chat_id.0 as u64) ^ (1 << 63)).to_be_bytes()
}

/// The chat id of a [`chat_key`] (or of any [`session_key`] of the chat).
pub fn chat_from_key(key: &[u8]) -> Option<ChatId> {
    let bytes: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(ChatId((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64))
}

/// Tag of a forum topic in a [`session_key`], followed by its thread id
/// (`i32`, big-endian).
const TOPIC_TAG: u8 = b't';

/// Tag of a Business connection in a [`session_key`], followed by the
/// connection id's length (`u16`, big-endian) and its bytes.
const BUSINESS_TAG: u8 = b'b';

/// The store key of a conversation (chat record, usage): the [`chat_key`],
/// then one tagged field per part of the key that is set, in a fixed order:
/// the tag `t` and the thread for a forum topic, then the tag `b` and the
/// length-prefixed connection id for a Business fan chat. A whole chat's key is
/// exactly its 8-byte [`chat_key`], as it was before topics existed (stores
/// need no migration); a topic's is longer, so the two never collide, and a
/// later part of the key is one more tag.
pub fn session_key(key: &SessionKey) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(13);
    bytes.extend_from_slice(&chat_key(key.chat()));
    if let Some(thread) = key.thread_number() {
        bytes.push(TOPIC_TAG);
        bytes.extend_from_slice(&thread.to_be_bytes());
    }
    if let Some(connection) = key.connection() {
        // Telegram's connection ids are short; a longer one is cut at the
        // prefix's limit rather than written with a wrong length.
        let id = &connection.as_bytes()[..connection.len().min(usize::from(u16::MAX))];
        bytes.push(BUSINESS_TAG);
        bytes.extend_from_slice(&(id.len() as u16).to_be_bytes());
        bytes.extend_from_slice(id);
    }
    bytes
}

/// The conversation of a [`session_key`]; `None` for bytes that are not
/// one (an unknown tag, a cut field).
pub fn session_from_key(bytes: &[u8]) -> Option<SessionKey> {
    let chat = chat_from_key(bytes)?;
    let mut rest = bytes.get(8..)?;
    let mut thread = None;
    let mut business: Option<String> = None;
    while let Some((&tag, fields)) = rest.split_first() {
        match tag {
            TOPIC_TAG if thread.is_none() => {
                let number: [u8; 4] = fields.get(..4)?.try_into().ok()?;
                thread = Some(ThreadId(teloxide::types::MessageId(i32::from_be_bytes(
                    number,
                ))));
                rest = fields.get(4..)?;
            }
            BUSINESS_TAG if business.is_none() => {
                let length: [u8; 2] = fields.get(..2)?.try_into().ok()?;
                let length = usize::from(u16::from_be_bytes(length));
                let id = fields.get(2..2 + length)?;
                business = Some(String::from_utf8(id.to_vec()).ok()?);
                rest = fields.get(2 + length..)?;
            }
            _ => return None,
        }
    }
    match business {
        // A fan chat has no topics.
        Some(_) if thread.is_some() => None,
        Some(connection) => Some(SessionKey::business(connection, chat)),
        None => Some(SessionKey::new(chat, thread)),
    }
}

/// Key of an update: its id, big-endian, so a range scan visits ids in order.
pub fn update_key(update_id: u32) -> [u8; 4] {
    update_id.to_be_bytes()
}

/// The update id of an [`update_key`].
pub fn update_from_key(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(key.get(..4)?.try_into().ok()?))
}

/// Key of a quarantined chat record: `c`, the [`session_key`], then when
/// it was moved (milliseconds since the Unix epoch), so several bad records
/// of one conversation are all kept.
pub fn failed_chat_key(key: &SessionKey, unix_millis: u64) -> Vec<u8> {
    failed_key(b'c', &session_key(key), unix_millis)
}

/// The prefix of every [`failed_chat_key`] of one chat, any of its topics.
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
    fn a_whole_chat_keeps_its_old_key_and_topics_extend_it() {
        use teloxide::types::MessageId;
        let chat = ChatId(-1_001_234_567_890);
        let whole = SessionKey::of_chat(chat);
        // Exactly the key stores were written with before topics.
        assert_eq!(session_key(&whole), chat_key(chat).to_vec());
        let topic = SessionKey::new(chat, Some(ThreadId(MessageId(42))));
        let bytes = session_key(&topic);
        assert_eq!(bytes.len(), 13);
        assert!(bytes.starts_with(&chat_key(chat)));
        assert_ne!(bytes, session_key(&whole));
        for key in [whole, topic, SessionKey::of_chat(ChatId(7))] {
            assert_eq!(session_from_key(&session_key(&key)), Some(key));
        }
        // A neighbouring chat never shares a topic's prefix.
        assert!(
            !session_key(&SessionKey::of_chat(ChatId(-1_001_234_567_889)))
                .starts_with(&chat_key(chat))
        );
        assert_eq!(
            session_from_key(&[&chat_key(chat)[..], b"x"].concat()),
            None
        );
        assert_eq!(
            session_from_key(&[&chat_key(chat)[..], b"t\0"].concat()),
            None
        );
    }

    #[test]
    fn a_fan_chat_has_its_own_key() {
        let fan = SessionKey::business("c1", ChatId(6001));
        let bytes = session_key(&fan);
        assert_eq!(bytes, [&chat_key(ChatId(6001))[..], b"b\0\x02c1"].concat());
        assert_ne!(bytes, session_key(&SessionKey::of_chat(ChatId(6001))));
        assert_eq!(session_from_key(&bytes), Some(fan));
        assert_eq!(
            session_from_key(&[&chat_key(ChatId(1))[..], b"b\0\x05c1"].concat()),
            None
        );
    }

    #[test]
    fn update_keys_sort_like_ids() {
        assert!(update_key(9) < update_key(10));
        assert_eq!(update_from_key(&update_key(123_456)), Some(123_456));
    }
}
