//! Test and benchmark access to the raw store, bypassing the writer: used
//! to plant corrupt bytes and to inspect what is stored after the service
//! has stopped. Never used by the service itself; compiled only with the
//! `test-support` feature (the crate's own dev-dependency turns it on).

use std::path::Path;

use fjall::PersistMode;

use super::db::OpenStore;
use super::record::{self, ChatRecord, UpdateEntry};
use super::{StoreError, chat_key, update_from_key};
use crate::telegram::inbound::ChatId;

/// Keys of the store, re-exported for tests that plant data.
pub use super::chat_key as key_of_chat;

/// Opens the database at `path` (the service must not be running).
pub fn open(path: &Path) -> Result<Inspector, StoreError> {
    Ok(Inspector(OpenStore::open(path)?))
}

/// A directly opened store.
pub struct Inspector(OpenStore);

impl Inspector {
    /// The decoded record of a chat.
    pub fn chat(&self, chat_id: ChatId) -> Result<Option<ChatRecord>, StoreError> {
        let Some(bytes) = self.0.chats.get(chat_key(chat_id))? else {
            return Ok(None);
        };
        record::decode_chat(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Storage(e.to_string()))
    }

    /// Raw bytes under a chat's key.
    pub fn raw_chat(&self, chat_id: ChatId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.chats.get(chat_key(chat_id))?.map(|v| v.to_vec()))
    }

    /// Writes raw bytes under a chat's key, durably.
    pub fn put_raw_chat(&self, chat_id: ChatId, bytes: &[u8]) -> Result<(), StoreError> {
        self.0.chats.insert(chat_key(chat_id), bytes)?;
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
