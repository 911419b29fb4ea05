//! Test and benchmark access to the raw store, bypassing the writer: used
//! to plant corrupt bytes and to inspect what is stored after the service
//! has stopped. Never used by the service itself; compiled only with the
//! `test-support` feature (the crate's own dev-dependency turns it on).

use std::path::Path;

use fjall::PersistMode;

use super::db::OpenStore;
use super::record::{self, ChatRecord, UpdateEntry};
use super::{StoreError, session_from_key, session_key, update_from_key};
use crate::telegram::inbound::SessionKey;

/// Keys of the store, re-exported for tests that plant data.
pub use super::chat_key as key_of_chat;

/// Opens the database at `path` (the service must not be running).
pub fn open(path: &Path) -> Result<Inspector, StoreError> {
    Ok(Inspector(OpenStore::open(path)?))
}

/// A directly opened store.
pub struct Inspector(OpenStore);

impl Inspector {
    /// The decoded record of a conversation: a chat (a `ChatId` will do) or
    /// a forum topic.
    pub fn chat(&self, key: impl Into<SessionKey>) -> Result<Option<ChatRecord>, StoreError> {
        let Some(bytes) = self.0.chats.get(session_key(&key.into()))? else {
            return Ok(None);
        };
        record::decode_chat(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Storage(e.to_string()))
    }

    /// Raw bytes under a conversation's key.
    pub fn raw_chat(&self, key: impl Into<SessionKey>) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .0
            .chats
            .get(session_key(&key.into()))?
            .map(|v| v.to_vec()))
    }

    /// Writes raw bytes under a conversation's key, durably.
    pub fn put_raw_chat(&self, key: impl Into<SessionKey>, bytes: &[u8]) -> Result<(), StoreError> {
        self.0.chats.insert(session_key(&key.into()), bytes)?;
        self.0.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Every quarantined value.
    pub fn failed(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.0
            .failed
            .iter()
            .map(|item| Ok(item.into_inner()?.1.to_vec()))
            .collect()
    }

    /// The conversation of every chat record, in key order (a chat, then
    /// its topics); printed with `Display` they read `-1001234` and
    /// `-1001234/7`. A key this build cannot read is an error.
    pub fn conversations(&self) -> Result<Vec<SessionKey>, StoreError> {
        let mut keys = Vec::new();
        for item in self.0.chats.iter() {
            let key = item.key()?;
            let session = session_from_key(&key).ok_or_else(|| {
                StoreError::Storage(format!("unreadable chat key {:02x?}", &key[..]))
            })?;
            keys.push(session);
        }
        Ok(keys)
    }

    /// Number of chat records.
    pub fn chat_count(&self) -> Result<usize, StoreError> {
        let mut count = 0;
        for item in self.0.chats.iter() {
            item.into_inner()?;
            count += 1;
        }
        Ok(count)
    }

    /// Ids of updates received and not answered.
    pub fn pending_update_ids(&self) -> Result<Vec<u32>, StoreError> {
        let mut ids = Vec::new();
        for item in self.0.updates.iter() {
            let (key, value) = item.into_inner()?;
            if let Ok(UpdateEntry::Pending(_)) = record::decode_update(&value) {
                ids.extend(update_from_key(&key));
            }
        }
        Ok(ids)
    }
}
