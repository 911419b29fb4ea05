//! The storage backend boundary: exactly the operations the writer thread
//! ([`super::writer`]) performs against a database, named by what they mean
//! for the bot, not by an engine's API. Today's only backend is the fjall
//! database ([`super::db::FjallBackend`]); it exists so that a second one
//! (PostgreSQL, issue 18) can sit under the same writer without the writer,
//! the persistence actor or anything above them changing.
//!
//! Group commit stays in the writer: it gathers operations, opens one
//! [`Backend::Group`] with [`Backend::begin`], adds every write of the
//! batch to it, applies it with [`Backend::commit`] (one fjall write batch;
//! one SQL transaction later), answers the writers, then serves the
//! batch's reads. The writer is generic over the backend (`Thread<B>`, not
//! a `Box<dyn Backend>`): the generic stops at the writer's private thread
//! state (the public [`super::writer::StoreWriter`] handle is not generic,
//! as the backend is chosen inside `StoreWriter::start`), and the group
//! and snapshot types stay associated types instead of boxes.
//!
//! # Contract every backend keeps
//! - **One thread:** every method is called from the writer thread only, in
//!   the writer's order; nothing else writes to the live database.
//! - **Atomicity:** the writes added to one group are applied all or none
//!   by [`Backend::commit`]. A write method that returns `Err` fails its
//!   own operation only (its caller is answered with the error); the rest
//!   of the group goes on. What it added before failing stays in the group:
//!   on fjall only an encoding bug can fail an admission midway.
//! - **Visibility:** [`Backend::admit`] recognises updates admitted earlier
//!   in the same group. The writer never reads while a group is open, so
//!   whether a read would see an uncommitted group is left to the backend;
//!   after a successful commit every later read sees it.
//! - **Durability:** when [`Backend::commit`] returns `Ok`, the group
//!   survives a process crash, and, per `storage.persist_mode`, a host
//!   crash (`SyncAll` / `SyncData`) or not (`Buffer`).
//!   [`Backend::persist_all`] makes everything committed durable whatever
//!   the mode (on a clean stop). Quarantine writes made by a read are
//!   committed with the same durability.
//! - **Ordering:** pending updates come back in admission order (the order
//!   received, which is each chat's order), not update-id order; the
//!   admission sequence continues across restarts.
//! - **Failures:** [`StoreError::Poisoned`] means the backend must not be
//!   written again in this process: the writer stops for good. Any other
//!   error fails only the operations concerned.
//! - **Fencing:** with several instances on a shared database
//!   ([`super::postgres`]), a backend writes only what its instance still
//!   owns: loading a conversation takes it, and each turn commit is
//!   conditional on the chat's owner row naming this instance. A commit
//!   that no longer owns its chat is *fenced*: it applies nothing, fails
//!   with [`StoreError::Fenced`] (counted, never retried), and the session
//!   stops; the other writes of the group are unaffected. A backend may
//!   find it at [`Backend::commit_turn`] or, applying the group's turns
//!   together, only at [`Backend::commit`], and then reports it by
//!   [`Backend::take_fenced`]. fjall, being single-instance, is never
//!   fenced.

use std::path::Path;
use std::sync::atomic::AtomicU64;

use super::backup::{BackupError, BackupReport};
use super::record::{BotSetting, ChatRecord, StoredUpdate};
use super::writer::RecordChange;
use super::{BotKey, StoreError};
use crate::telegram::inbound::{Inbound, SessionKey};

/// What [`Backend::commit`] did with a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Committed {
    /// The group held no writes: nothing was committed (not counted as a
    /// commit).
    Nothing,
    /// The group's writes were applied atomically and are durable.
    Written,
}

/// A database under the writer thread (see the module doc for the
/// contract).
pub(crate) trait Backend: Send + 'static {
    /// The writes of one group commit, gathered before they are applied
    /// together.
    type Group;
    /// A point-in-time view of the whole store, copied to a backup off the
    /// writer thread.
    type Snapshot: Send + 'static;

    /// Opens an empty group.
    fn begin(&mut self) -> Self::Group;

    /// Adds to `group` the updates of `updates` not received before (held
    /// by the store, or admitted earlier in the group), each stored pending
    /// with the next admission number; returns those, in order. A backend
    /// may recognise those the store held only at commit (one statement for
    /// a whole group's admissions) and report them by
    /// [`Backend::take_known`].
    fn admit(
        &mut self,
        group: &mut Self::Group,
        updates: Vec<Inbound>,
    ) -> Result<Vec<Inbound>, StoreError>;

    /// Adds to `group` one answered turn: `update_id` and `also_answered`
    /// marked answered (or dropped when already confirmed), and the
    /// conversation's record changed as `change` says.
    fn commit_turn(
        &mut self,
        group: &mut Self::Group,
        key: &SessionKey,
        update_id: u32,
        also_answered: Vec<u32>,
        change: RecordChange,
    ) -> Result<(), StoreError>;

    /// Telegram will not deliver updates below `below` again: adds to
    /// `group` the removal of their answered markers (pending ones stay).
    fn confirm(&mut self, group: &mut Self::Group, below: u32) -> Result<(), StoreError>;

    /// Adds to `group` a bot-wide setting.
    fn save_setting(
        &mut self,
        group: &mut Self::Group,
        key: BotKey,
        setting: &BotSetting,
    ) -> Result<(), StoreError>;

    /// Applies `group` atomically with the configured durability.
    fn commit(&mut self, group: Self::Group) -> Result<Committed, StoreError>;

    /// The conversation's record; `None` for a new one or one that does not
    /// decode (quarantined, counted in `quarantined`). A forgotten chat
    /// comes back as a fresh record keeping what it spent.
    fn load_chat(
        &mut self,
        key: &SessionKey,
        quarantined: &AtomicU64,
    ) -> Result<Option<ChatRecord>, StoreError>;

    /// Several conversations' records, each as [`Backend::load_chat`] would
    /// return it, in the order of `keys` (the writer gathers the loads of a
    /// batch: a shared database answers them with one statement).
    fn load_chats(
        &mut self,
        keys: &[SessionKey],
        quarantined: &AtomicU64,
    ) -> Vec<Result<Option<ChatRecord>, StoreError>> {
        keys.iter()
            .map(|key| self.load_chat(key, quarantined))
            .collect()
    }

    /// Every update received and not answered, in admission order; entries
    /// that do not decode are quarantined and counted in `quarantined`.
    fn pending_updates(&mut self, quarantined: &AtomicU64)
    -> Result<Vec<StoredUpdate>, StoreError>;

    /// The highest update id held (pending or answered); `None` if none.
    fn newest_update_id(&mut self) -> Result<Option<u32>, StoreError>;

    /// A bot-wide setting; `None` if never set or unreadable (counted in
    /// `quarantined`).
    fn load_setting(
        &mut self,
        key: BotKey,
        quarantined: &AtomicU64,
    ) -> Result<Option<BotSetting>, StoreError>;

    /// A snapshot holding every write committed so far.
    fn snapshot(&self) -> Self::Snapshot;

    /// Writes `snapshot` as a backup into `to` (called on a thread of its
    /// own while the writer goes on).
    fn write_backup(snapshot: &Self::Snapshot, to: &Path) -> Result<BackupReport, BackupError>;

    /// Makes everything committed durable whatever `storage.persist_mode`
    /// (the writer's last call, on a clean stop); a shared database also
    /// gives up this instance's chats and lease there.
    fn persist_all(&mut self) -> Result<(), StoreError>;

    /// The unanswered updates of one conversation, in admission order
    /// (taking a conversation over answers these first).
    fn pending_of(
        &mut self,
        key: &SessionKey,
        quarantined: &AtomicU64,
    ) -> Result<Vec<StoredUpdate>, StoreError> {
        let mut pending = self.pending_updates(quarantined)?;
        pending.retain(|update| update.key() == *key);
        Ok(pending)
    }

    /// Several conversations' unanswered updates, each as
    /// [`Backend::pending_of`] would return them, in the order of `keys`.
    fn pending_of_chats(
        &mut self,
        keys: &[SessionKey],
        quarantined: &AtomicU64,
    ) -> Vec<Result<Vec<StoredUpdate>, StoreError>> {
        keys.iter()
            .map(|key| self.pending_of(key, quarantined))
            .collect()
    }

    /// The turns of the group just committed that wrote nothing because
    /// another instance owns their chat, by their number among the group's
    /// `commit_turn` calls (from 0, every call counted): a backend that
    /// applies turns only at commit learns it then. Empty on a store only
    /// this instance uses.
    fn take_fenced(&mut self) -> Vec<usize> {
        Vec::new()
    }

    /// The updates admitted in the group just committed that the store
    /// already held: a backend that writes admissions only at commit
    /// learns it then, and [`Backend::admit`] returned them as new. Empty
    /// for a backend that recognises them at `admit`.
    fn take_known(&mut self) -> Vec<u32> {
        Vec::new()
    }

    /// Adds to `group` giving up the conversation (its session was evicted),
    /// so another instance may take it at once. Nothing to do on a store
    /// only this instance uses.
    fn release(&mut self, _group: &mut Self::Group, _key: &SessionKey) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Contract tests any [`Backend`] can run: each takes a function opening
/// the backend on the same store (called again to reopen it after the
/// previous one is dropped), so a second backend calls them unchanged.
#[cfg(test)]
pub(crate) mod contract {
    use std::error::Error;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use super::*;
    use crate::store::record;
    use crate::telegram::inbound::{ChatId, InboundKind};

    /// A contract test's outcome.
    pub(crate) type Outcome = Result<(), Box<dyn Error>>;

    /// A text update `update_id` of chat `chat_id`.
    pub(crate) fn update(update_id: u32, chat_id: i64) -> Inbound {
        Inbound {
            update_id,
            key: SessionKey::of_chat(ChatId(chat_id)),
            user_id: Some(7),
            language_code: None,
            kind: InboundKind::Text("x".into()),
            received_at: Instant::now(),
            sent_at: None,
            refused: None,
            speaker: None,
            message_id: None,
            reply_to: None,
        }
    }

    fn ids(updates: &[Inbound]) -> Vec<u32> {
        updates.iter().map(|u| u.update_id).collect()
    }

    /// What an admission returned, less the updates found held at commit.
    fn new_ones(admitted: Vec<Inbound>, known: &[u32]) -> Vec<Inbound> {
        admitted
            .into_iter()
            .filter(|update| !known.contains(&update.update_id))
            .collect()
    }

    fn pending<B: Backend>(backend: &mut B) -> Result<Vec<u32>, Box<dyn Error>> {
        let counted = AtomicU64::new(0);
        Ok(backend
            .pending_updates(&counted)?
            .iter()
            .map(|u| u.update_id)
            .collect())
    }

    fn record(marker: u32) -> ChatRecord {
        ChatRecord {
            recent_updates: vec![marker],
            ..ChatRecord::default()
        }
    }

    /// A group is applied all at once: admission recognises updates within
    /// the group and across groups, an empty group commits nothing, and
    /// admission order survives a reopen.
    pub(crate) fn groups_are_atomic_and_admission_ordered<B: Backend>(
        mut open: impl FnMut() -> Result<B, Box<dyn Error>>,
    ) -> Outcome {
        let mut backend = open()?;
        let empty = backend.begin();
        assert_eq!(backend.commit(empty)?, Committed::Nothing);

        let mut group = backend.begin();
        let first = backend.admit(&mut group, vec![update(10, 1), update(11, 2)])?;
        let again = backend.admit(&mut group, vec![update(11, 2), update(5, 1)])?;
        assert_eq!((ids(&first), ids(&again)), (vec![10, 11], vec![5]));
        assert_eq!(backend.commit(group)?, Committed::Written);
        assert_eq!(pending(&mut backend)?, vec![10, 11, 5]);
        assert_eq!(backend.newest_update_id()?, Some(11));

        let mut group = backend.begin();
        let key = SessionKey::of_chat(ChatId(2));
        let change = RecordChange::Put(record::encode_chat(&record(11))?);
        backend.commit_turn(&mut group, &key, 11, Vec::new(), change)?;
        backend.commit(group)?;
        assert_eq!(pending(&mut backend)?, vec![10, 5]);
        backend.persist_all()?;
        drop(backend);

        let mut backend = open()?;
        assert_eq!(pending(&mut backend)?, vec![10, 5]);
        let counted = AtomicU64::new(0);
        assert_eq!(backend.load_chat(&key, &counted)?, Some(record(11)));
        let mut group = backend.begin();
        let late = backend.admit(&mut group, vec![update(3, 3), update(11, 2)])?;
        backend.commit(group)?;
        let late = new_ones(late, &backend.take_known());
        assert_eq!(ids(&late), vec![3]);
        assert_eq!(pending(&mut backend)?, vec![10, 5, 3]);
        assert_eq!(counted.load(Ordering::Relaxed), 0);
        Ok(())
    }

    /// Confirming an offset drops answered markers below it and keeps
    /// pending updates; settings round-trip; deleting a record makes the
    /// chat new again.
    pub(crate) fn confirmations_settings_and_deletes<B: Backend>(
        mut open: impl FnMut() -> Result<B, Box<dyn Error>>,
    ) -> Outcome {
        let mut backend = open()?;
        let counted = AtomicU64::new(0);
        let key = SessionKey::of_chat(ChatId(1));
        let mut group = backend.begin();
        backend.admit(&mut group, (1..=4).map(|id| update(id, 1)).collect())?;
        backend.commit(group)?;
        let mut group = backend.begin();
        let change = RecordChange::Put(record::encode_chat(&record(1))?);
        backend.commit_turn(&mut group, &key, 1, vec![2], change)?;
        backend.commit(group)?;
        assert_eq!(backend.load_chat(&key, &counted)?, Some(record(1)));

        let mut group = backend.begin();
        backend.confirm(&mut group, 4)?;
        backend.save_setting(
            &mut group,
            BotKey::DefaultModel,
            &BotSetting::DefaultModel("m".into()),
        )?;
        backend.commit_turn(&mut group, &key, 3, Vec::new(), RecordChange::Delete)?;
        backend.commit(group)?;
        assert_eq!(pending(&mut backend)?, vec![4]);
        assert_eq!(backend.load_chat(&key, &counted)?, None);
        assert_eq!(
            backend.load_setting(BotKey::DefaultModel, &counted)?,
            Some(BotSetting::DefaultModel("m".into()))
        );
        assert_eq!(backend.load_setting(BotKey::Bans, &counted)?, None);
        assert_eq!(counted.load(Ordering::Relaxed), 0);
        Ok(())
    }
}
