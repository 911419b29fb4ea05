//! The fjall database: opening it and its keyspaces ([`OpenStore`]), the
//! reads the writer serves, the quarantine of records that do not decode,
//! and [`FjallBackend`], the [`Backend`] the writer runs on by default.
//!
//! Everything here runs on the thread that holds the [`OpenStore`]: in the
//! service that is the writer thread of [`super::writer`], the only one that
//! opens the live database; [`super::backup::restore`] and the test
//! inspector open a database the service is not running on.
//!
//! **Quarantine:** a chat record or a stored update that does not decode is
//! moved to the `failed` keyspace (key [`super::failed_chat_key`] /
//! [`super::failed_update_key`]), logged and counted, and the read goes on
//! as if it were absent: the chat starts fresh, the other updates replay. A
//! bad bot setting or usage entry is only logged and counted (its owner
//! starts from its default and its next save replaces it).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::backend::{Backend, Committed};
use super::backup::{self, BackupError, BackupReport};
use super::record::{self, BotSetting, ChatRecord, UpdateEntry};
use super::writer::RecordChange;
use super::{
    BOT, BotKey, CHATS, FAILED, StoreError, UPDATES, USAGE, chat_key, failed_chat_key,
    failed_chat_prefix, failed_update_key, session_key, update_from_key, update_key,
};
use crate::clock::unix_millis;
use crate::config::{PersistModeConfig, StorageConfig};
use crate::telegram::inbound::{ChatId, Inbound, SessionKey};

/// An open database and its keyspaces.
pub(crate) struct OpenStore {
    pub(crate) db: Database,
    pub(crate) bot: Keyspace,
    pub(crate) chats: Keyspace,
    pub(crate) updates: Keyspace,
    pub(crate) failed: Keyspace,
    pub(crate) usage: Keyspace,
}

impl OpenStore {
    /// Opens with fjall's default memtable size (backup, restore, tests).
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, None)
    }

    /// `memtable_bytes` (`storage.memtable_mib`) bounds each keyspace's
    /// memtable: it stays in memory until flushed, active chats or not.
    pub(crate) fn open_with(path: &Path, memtable_bytes: Option<u64>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Storage(e.to_string()))?;
        // The journal is persisted by each commit with the configured mode,
        // so fjall's own background fsync is not needed.
        let db = Database::builder(path)
            .manual_journal_persist(true)
            .open()?;
        let options = || match memtable_bytes {
            Some(bytes) => KeyspaceCreateOptions::default().max_memtable_size(bytes),
            None => KeyspaceCreateOptions::default(),
        };
        Ok(Self {
            chats: db.keyspace(CHATS, options)?,
            bot: db.keyspace(BOT, options)?,
            updates: db.keyspace(UPDATES, options)?,
            failed: db.keyspace(FAILED, options)?,
            usage: db.keyspace(USAGE, options)?,
            db,
        })
    }

    /// The keyspace called `name` (one of [`super::backup::KEYSPACES`]).
    pub(crate) fn keyspace(&self, name: &str) -> Option<&Keyspace> {
        match name {
            CHATS => Some(&self.chats),
            UPDATES => Some(&self.updates),
            BOT => Some(&self.bot),
            FAILED => Some(&self.failed),
            USAGE => Some(&self.usage),
            _ => None,
        }
    }

    /// A point-in-time view of every keyspace, for a backup.
    pub(crate) fn view(&self) -> StoreView {
        StoreView {
            snapshot: self.db.snapshot(),
            keyspaces: vec![
                (CHATS, self.chats.clone()),
                (UPDATES, self.updates.clone()),
                (BOT, self.bot.clone()),
                (FAILED, self.failed.clone()),
                (USAGE, self.usage.clone()),
            ],
        }
    }

    /// The conversation's record; `None` for a new one, or one whose record
    /// does not decode (quarantined with durability `mode`, counted in
    /// `quarantined`).
    pub(crate) fn load_chat(
        &self,
        key: &SessionKey,
        mode: PersistMode,
        quarantined: &AtomicU64,
    ) -> Result<Option<ChatRecord>, StoreError> {
        let Some(bytes) = self.chats.get(session_key(key))? else {
            return self.forgotten(key, quarantined);
        };
        match record::decode_chat(&bytes) {
            Ok(record) => Ok(Some(record)),
            Err(error) => {
                tracing::error!(chat_id = key.chat().0, thread_id = key.thread_number(), %error, "chat record does not decode; quarantined, chat starts fresh");
                let mut write = self.db.batch().durability(Some(mode));
                write.insert(&self.failed, failed_chat_key(key, unix_millis()), bytes);
                write.remove(&self.chats, session_key(key));
                write.commit()?;
                quarantined.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// A chat without a record: new (`None`), or forgotten, when it keeps
    /// only what it spent.
    fn forgotten(
        &self,
        key: &SessionKey,
        quarantined: &AtomicU64,
    ) -> Result<Option<ChatRecord>, StoreError> {
        let Some(bytes) = self.usage.get(session_key(key))? else {
            return Ok(None);
        };
        Ok(forgotten_record(key, &bytes, quarantined))
    }

    /// A bot-wide setting; `None` if never set or unreadable (logged,
    /// counted in `quarantined`, left in place for inspection).
    pub(crate) fn setting(
        &self,
        key: BotKey,
        quarantined: &AtomicU64,
    ) -> Result<Option<BotSetting>, StoreError> {
        let Some(bytes) = self.bot.get(key.as_bytes())? else {
            return Ok(None);
        };
        match record::decode_setting(&bytes) {
            Ok(setting) => Ok(Some(setting)),
            Err(error) => {
                // Kept where it is for inspection; the owner starts from its
                // default and its next save replaces it.
                tracing::error!(key = ?key, %error, "bot setting does not decode; ignored");
                quarantined.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// The highest update id held (pending or answered); `None` if none.
    pub(crate) fn newest_update_id(&self) -> Result<Option<u32>, StoreError> {
        // Keys are big-endian ids, so the last key is the highest id.
        match self.updates.last_key_value() {
            Some(item) => Ok(update_from_key(&item.into_inner()?.0)),
            None => Ok(None),
        }
    }

    /// Adds to `write` the removal of every quarantined copy of the chat's
    /// records, those of its topics too (`/forget`).
    pub(crate) fn forget_quarantined(
        &self,
        write: &mut fjall::OwnedWriteBatch,
        chat_id: ChatId,
    ) -> Result<(), StoreError> {
        for item in self.failed.prefix(failed_chat_prefix(chat_id)) {
            let key = item.key()?;
            write.remove(&self.failed, key);
        }
        Ok(())
    }

    /// Every update received and not answered, in the order received;
    /// entries that do not decode are quarantined (durability `mode`,
    /// counted in `quarantined`) and the rest are returned.
    pub(crate) fn pending(
        &self,
        mode: PersistMode,
        quarantined: &AtomicU64,
    ) -> Result<Vec<record::StoredUpdate>, StoreError> {
        let mut pending: Vec<record::StoredUpdate> = Vec::new();
        let mut corrupt = Vec::new();
        for item in self.updates.iter() {
            let (key, value) = item.into_inner()?;
            match record::decode_update(&value) {
                Ok(UpdateEntry::Pending(update)) => pending.push(update),
                Ok(UpdateEntry::Answered) => {}
                Err(error) => {
                    tracing::error!(update_id = update_from_key(&key), %error, "stored update does not decode; quarantined");
                    corrupt.push((key, value));
                }
            }
        }
        if !corrupt.is_empty() {
            let mut write = self.db.batch().durability(Some(mode));
            for (key, value) in corrupt {
                let id = update_from_key(&key).unwrap_or_default();
                write.insert(&self.failed, failed_update_key(id, unix_millis()), value);
                write.remove(&self.updates, key);
                quarantined.fetch_add(1, Ordering::Relaxed);
            }
            write.commit()?;
        }
        // In the order received, which is each chat's order: update ids are
        // not (Telegram may start them over at a random value).
        pending.sort_by_key(|update| (update.admitted, update.update_id));
        Ok(pending)
    }

    /// The admission sequence number to continue from: one past the highest
    /// held by a pending update (answered ones no longer need theirs).
    pub(crate) fn next_admission(&self) -> Result<u64, StoreError> {
        let mut next = 1;
        for item in self.updates.iter() {
            let (_, value) = item.into_inner()?;
            if let Ok(UpdateEntry::Pending(update)) = record::decode_update(&value) {
                next = next.max(update.admitted + 1);
            }
        }
        Ok(next)
    }
}

/// A forgotten conversation's record: fresh, keeping only what it spent
/// (its encoded [`record::ChatUsage`]); `None` when that does not decode
/// (logged, counted in `quarantined`: nothing worth keeping, the chat
/// starts fresh). Both backends store a forgotten chat's spend this way.
pub(crate) fn forgotten_record(
    key: &SessionKey,
    usage: &[u8],
    quarantined: &AtomicU64,
) -> Option<ChatRecord> {
    match record::decode_usage(usage) {
        Ok(usage) => Some(ChatRecord {
            counters: usage.counters(),
            ..ChatRecord::default()
        }),
        Err(error) => {
            tracing::error!(chat_id = key.chat().0, thread_id = key.thread_number(), %error, "chat usage does not decode; ignored");
            quarantined.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A point-in-time view of every keyspace, for copying.
pub(crate) struct StoreView {
    pub(crate) snapshot: fjall::Snapshot,
    pub(crate) keyspaces: Vec<(&'static str, Keyspace)>,
}

/// The fjall database as the writer's [`Backend`]: the open store plus the
/// state the writer thread used to keep for it (admission sequence, prune
/// point), which only make sense for this key layout.
pub(crate) struct FjallBackend {
    store: OpenStore,
    /// Updates below this id have been confirmed to Telegram (it will not
    /// send them again) and their answered markers removed.
    pruned_below: u32,
    /// The admission sequence number of the next update received.
    next_admitted: u64,
    /// `storage.path`: no backup may be written inside it.
    data_dir: PathBuf,
    /// `storage.persist_mode`, for every commit and quarantine.
    mode: PersistMode,
}

/// One group commit on fjall: a write batch, and the updates admitted into
/// it (the batch is not readable before its commit).
pub(crate) struct FjallGroup {
    write: fjall::OwnedWriteBatch,
    admitted_now: HashSet<u32>,
}

/// A backup's source on fjall: a snapshot, and the data directory no backup
/// may be written inside.
pub(crate) struct FjallSnapshot {
    view: StoreView,
    data_dir: PathBuf,
}

impl FjallBackend {
    /// Opens (or creates) the database at `storage.path`. Blocking. Fails
    /// when the directory cannot be used or another process holds it.
    pub(crate) fn open(config: &StorageConfig) -> Result<Self, StoreError> {
        let store = OpenStore::open_with(&config.path, Some(config.memtable_mib * 1024 * 1024))?;
        let next_admitted = store.next_admission()?;
        Ok(Self {
            store,
            pruned_below: 0,
            next_admitted,
            data_dir: config.path.clone(),
            mode: persist_mode(config.persist_mode),
        })
    }

    /// Adds to `write` the deletion of every other record of `session`'s
    /// chat (its forum topics, or the chat's own when `session` is a
    /// topic), each keeping its spend in the `usage` keyspace as `/forget`
    /// keeps the forgetting conversation's. A record that does not decode
    /// goes without its spend (it could not have been read anyway).
    fn forget_other_topics(
        &self,
        write: &mut fjall::OwnedWriteBatch,
        session: &SessionKey,
    ) -> Result<(), StoreError> {
        let own = session_key(session);
        // Every key of the chat starts with its 8-byte chat key, and no
        // other chat's does.
        for item in self.store.chats.prefix(chat_key(session.chat())) {
            let (key, value) = item.into_inner()?;
            // A Business fan chat shares only its id with the bot's chat of
            // that id: it is another conversation altogether.
            let other_namespace = super::session_from_key(&key)
                .is_some_and(|other| other.connection() != session.connection());
            if *key == *own || other_namespace {
                continue;
            }
            let usage = record::decode_chat(&value)
                .ok()
                .map(|other| record::ChatUsage::of(&other.counters))
                .filter(|usage| !usage.is_nothing());
            if let Some(usage) = usage {
                match record::encode_usage(&usage) {
                    Ok(bytes) => write.insert(&self.store.usage, key.clone(), bytes),
                    Err(error) => tracing::error!(%error, "cannot encode a topic's usage"),
                }
            }
            write.remove(&self.store.chats, key);
        }
        Ok(())
    }
}

impl Backend for FjallBackend {
    type Group = FjallGroup;
    type Snapshot = FjallSnapshot;

    fn begin(&mut self) -> FjallGroup {
        FjallGroup {
            write: self.store.db.batch().durability(Some(self.mode)),
            admitted_now: HashSet::new(),
        }
    }

    fn admit(
        &mut self,
        group: &mut FjallGroup,
        updates: Vec<Inbound>,
    ) -> Result<Vec<Inbound>, StoreError> {
        let mut new = Vec::with_capacity(updates.len());
        for inbound in updates {
            let id = inbound.update_id;
            if group.admitted_now.contains(&id)
                || self.store.updates.contains_key(update_key(id))?
            {
                tracing::debug!(update_id = id, "update already received; skipped");
                continue;
            }
            let admitted = self.next_admitted;
            self.next_admitted += 1;
            let entry = UpdateEntry::Pending(record::StoredUpdate::new(&inbound, admitted));
            let bytes =
                record::encode_update(&entry).map_err(|e| StoreError::Storage(e.to_string()))?;
            group
                .write
                .insert(&self.store.updates, update_key(id), bytes);
            group.admitted_now.insert(id);
            new.push(inbound);
        }
        Ok(new)
    }

    fn commit_turn(
        &mut self,
        group: &mut FjallGroup,
        session: &SessionKey,
        update_id: u32,
        also_answered: Vec<u32>,
        change: RecordChange,
    ) -> Result<(), StoreError> {
        let write = &mut group.write;
        let answered = record::encode_update(&UpdateEntry::Answered)
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        let updates = &self.store.updates;
        for id in also_answered.into_iter().chain([update_id]) {
            if id < self.pruned_below {
                // Telegram will not send it again: no marker needed.
                write.remove(updates, update_key(id));
            } else {
                write.insert(updates, update_key(id), answered.clone());
            }
        }
        let key = session_key(session);
        match change {
            RecordChange::Put(bytes) => write.insert(&self.store.chats, key, bytes),
            RecordChange::Delete => write.remove(&self.store.chats, key),
            RecordChange::Forget(usage) => {
                write.remove(&self.store.chats, key.as_slice());
                if let Err(error) = self.forget_other_topics(write, session) {
                    tracing::error!(chat_id = session.chat().0, %error, "cannot list the chat's topics to forget");
                }
                match usage {
                    Some(bytes) => write.insert(&self.store.usage, key, bytes),
                    None => write.remove(&self.store.usage, key),
                }
                if let Err(error) = self.store.forget_quarantined(write, session.chat()) {
                    tracing::error!(chat_id = session.chat().0, %error, "cannot list the quarantined records to forget");
                }
            }
            RecordChange::Keep => {}
        }
        Ok(())
    }

    /// Removes the answered markers between the previous prune point and
    /// `below`. Scanning only that stretch keeps each prune proportional to
    /// the updates since the last one, instead of walking every deleted
    /// entry since the store was created. Entries still pending stay.
    ///
    /// An offset below the previous one means Telegram started its ids over
    /// (it picks a random next id after a week without updates): every
    /// update of the old sequence was confirmed long ago, so the prune point
    /// simply moves down to the new sequence.
    fn confirm(&mut self, group: &mut FjallGroup, below: u32) -> Result<(), StoreError> {
        let from = self.pruned_below;
        if below < from {
            tracing::info!(below, from, "update ids started over");
            self.pruned_below = below;
            return Ok(());
        }
        if below == from {
            return Ok(());
        }
        for item in self
            .store
            .updates
            .range(update_key(from)..update_key(below))
        {
            let (key, value) = item.into_inner()?;
            if matches!(record::decode_update(&value), Ok(UpdateEntry::Answered)) {
                group.write.remove(&self.store.updates, key);
            }
        }
        self.pruned_below = below;
        Ok(())
    }

    fn save_setting(
        &mut self,
        group: &mut FjallGroup,
        key: BotKey,
        setting: &BotSetting,
    ) -> Result<(), StoreError> {
        let bytes =
            record::encode_setting(setting).map_err(|e| StoreError::Storage(e.to_string()))?;
        group.write.insert(&self.store.bot, key.as_bytes(), bytes);
        Ok(())
    }

    fn commit(&mut self, group: FjallGroup) -> Result<Committed, StoreError> {
        if group.write.is_empty() {
            return Ok(Committed::Nothing);
        }
        group.write.commit()?;
        Ok(Committed::Written)
    }

    fn load_chat(
        &mut self,
        key: &SessionKey,
        quarantined: &AtomicU64,
    ) -> Result<Option<ChatRecord>, StoreError> {
        self.store.load_chat(key, self.mode, quarantined)
    }

    fn pending_updates(
        &mut self,
        quarantined: &AtomicU64,
    ) -> Result<Vec<record::StoredUpdate>, StoreError> {
        self.store.pending(self.mode, quarantined)
    }

    fn newest_update_id(&mut self) -> Result<Option<u32>, StoreError> {
        self.store.newest_update_id()
    }

    fn load_setting(
        &mut self,
        key: BotKey,
        quarantined: &AtomicU64,
    ) -> Result<Option<BotSetting>, StoreError> {
        self.store.setting(key, quarantined)
    }

    fn snapshot(&self) -> FjallSnapshot {
        FjallSnapshot {
            view: self.store.view(),
            data_dir: self.data_dir.clone(),
        }
    }

    fn write_backup(snapshot: &FjallSnapshot, to: &Path) -> Result<BackupReport, BackupError> {
        backup::write_backup(&snapshot.view, to, &snapshot.data_dir)
    }

    fn persist_all(&mut self) -> Result<(), StoreError> {
        Ok(self.store.db.persist(PersistMode::SyncAll)?)
    }
}

fn persist_mode(mode: PersistModeConfig) -> PersistMode {
    match mode {
        PersistModeConfig::SyncAll => PersistMode::SyncAll,
        PersistModeConfig::SyncData => PersistMode::SyncData,
        PersistModeConfig::Buffer => PersistMode::Buffer,
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;
    use crate::store::backend::contract;
    use crate::telegram::inbound::InboundKind;

    type TestResult = Result<(), Box<dyn Error>>;

    fn count(keyspace: &Keyspace) -> Result<usize, Box<dyn Error>> {
        let mut n = 0;
        for item in keyspace.iter() {
            item.key()?;
            n += 1;
        }
        Ok(n)
    }

    fn pending_update(update_id: u32, admitted: u64) -> Result<Vec<u8>, Box<dyn Error>> {
        let inbound = Inbound {
            update_id,
            key: SessionKey::of_chat(ChatId(1)),
            user_id: None,
            language_code: None,
            kind: InboundKind::Text("hi".into()),
            received_at: std::time::Instant::now(),
            sent_at: None,
            refused: None,
            speaker: None,
            message_id: None,
            reply_to: None,
        };
        let entry = UpdateEntry::Pending(record::StoredUpdate::new(&inbound, admitted));
        Ok(record::encode_update(&entry)?)
    }

    /// Opens a fjall backend on `dir` (again after the previous one is
    /// dropped), with the default settings.
    fn fjall_on(dir: &Path) -> impl FnMut() -> Result<FjallBackend, Box<dyn Error>> {
        let path = dir.to_path_buf();
        move || {
            let config = crate::config::Config::from_defaults_with(&format!(
                "storage.path = \"{}\"\n",
                path.display()
            ))?;
            Ok(FjallBackend::open(&config.storage)?)
        }
    }

    #[test]
    fn fjall_keeps_the_backend_contract_on_groups_and_admission() -> TestResult {
        let dir = tempfile::tempdir()?;
        contract::groups_are_atomic_and_admission_ordered(fjall_on(dir.path()))
    }

    #[test]
    fn fjall_keeps_the_backend_contract_on_confirmations_settings_and_deletes() -> TestResult {
        let dir = tempfile::tempdir()?;
        contract::confirmations_settings_and_deletes(fjall_on(dir.path()))
    }

    #[test]
    fn a_corrupt_record_is_moved_aside_counted_and_the_rest_loads() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = OpenStore::open(dir.path())?;
        let good = ChatRecord {
            recent_updates: vec![42],
            ..ChatRecord::default()
        };
        store.chats.insert(chat_key(ChatId(7)), b"\x03garbage")?;
        store
            .chats
            .insert(chat_key(ChatId(8)), record::encode_chat(&good)?)?;
        store
            .updates
            .insert(super::super::update_key(1), b"\x02garbage")?;
        store
            .updates
            .insert(super::super::update_key(2), pending_update(2, 1)?)?;
        let quarantined = AtomicU64::new(0);
        let mode = PersistMode::SyncAll;

        assert_eq!(
            store.load_chat(&ChatId(7).into(), mode, &quarantined)?,
            None
        );
        assert_eq!(quarantined.load(Ordering::Relaxed), 1);
        assert!(store.chats.get(chat_key(ChatId(7)))?.is_none());
        assert_eq!(count(&store.failed)?, 1);
        assert!(
            store
                .failed
                .prefix(failed_chat_prefix(ChatId(7)))
                .next()
                .is_some()
        );
        assert_eq!(
            store.load_chat(&ChatId(8).into(), mode, &quarantined)?,
            Some(good)
        );

        let ids: Vec<u32> = store
            .pending(mode, &quarantined)?
            .iter()
            .map(|u| u.update_id)
            .collect();
        assert_eq!(ids, vec![2]);
        assert_eq!(quarantined.load(Ordering::Relaxed), 2);
        assert_eq!(count(&store.failed)?, 2);
        assert_eq!(count(&store.updates)?, 1);
        assert_eq!(store.next_admission()?, 2);
        Ok(())
    }
}
