//! Persistence: the only door to the fjall database. Loads chat records,
//! admits received updates durably before they are routed, commits each
//! answered turn, and replays unanswered updates after a restart.
//!
//! - **Supervised by:** root, permanent; started first, stopped last.
//! - **Messages:** [`PersistenceMsg::LoadChat`], [`PersistenceMsg::AdmitUpdates`],
//!   [`PersistenceMsg::CommitTurn`], [`PersistenceMsg::PendingUpdates`],
//!   [`PersistenceMsg::NewestUpdateId`], [`PersistenceMsg::Confirmed`],
//!   [`PersistenceMsg::Stats`], and [`PersistenceMsg::WriterFailed`] from its
//!   writer.
//! - **State:** the sending end of the [`StoreWriter`]'s queue and shared
//!   counters. The actor never touches the disk: it forwards each request to
//!   the writer thread and returns, so its mailbox never waits on I/O.
//! - **The writer** is one dedicated OS thread, created once per process by
//!   [`StoreWriter::start`] (the database is opened once), that outlives
//!   restarts of this actor. It runs requests strictly in arrival order,
//!   group-committing: it gathers requests for up to `storage.commit_interval`
//!   or `storage.commit_max_batch` requests, applies every write as one atomic
//!   batch persisted with `storage.persist_mode`, answers the writers (their
//!   data is now durable), then serves the reads of that batch, which so see
//!   every earlier write.
//! - **Backups** ([`PersistenceMsg::Backup`]): a snapshot taken in the
//!   writer's order, written out by a thread of its own in the format of
//!   [`crate::store::backup`], into a target checked against `storage.path`;
//!   one at a time (a flag of the writer thread). [`restore`] reads a backup
//!   only after verifying it.
//! - **Bad data:** a chat record that does not decode is moved to the `failed`
//!   keyspace (logged, counted) and the chat starts fresh.
//! - **Failures:** if fjall reports itself poisoned (a failed fsync) the
//!   writer stops for good and the actor fails with
//!   [`StoreError::Poisoned`], which root escalates at once: the process
//!   exits non-zero rather than write into a poisoned store. Any other
//!   failure of the actor restarts it; requests in its mailbox are lost and
//!   their callers send them again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::actors::directory::{Address, Child, Directory, Unavailable};
use crate::config::{CommandConfig, PersistModeConfig, StorageConfig};
use crate::store::backup::{self, BackupError, KEYSPACES, RecordsWriter};
use crate::store::record::{self, BotSetting, ChatRecord, UpdateEntry};
use crate::store::{
    self, BOT, BotKey, CHATS, FAILED, StoreError, UPDATES, USAGE, chat_key, failed_chat_key,
    failed_chat_prefix, failed_update_key, update_from_key, update_key,
};
use crate::telegram::inbound::{ChatId, Inbound};

// API

/// Typed operations on the persistence actor; each owns what a caller does
/// when the actor cannot be reached within `supervision.lookup_timeout`
/// (requests are resent to a restarted actor meanwhile, see
/// [`Directory`]). Requests that need the store **fail closed** with
/// [`StoreError::Unavailable`]; the caller decides what the user sees.
#[derive(Clone, Copy)]
pub struct PersistenceHandle<'a> {
    directory: &'a Directory,
}

const ADDRESS: Address<PersistenceMsg> = Address::new(Child::Persistence);

impl Directory {
    /// The persistence actor: the only door to the store.
    pub fn persistence(&self) -> PersistenceHandle<'_> {
        PersistenceHandle { directory: self }
    }
}

impl PersistenceHandle<'_> {
    async fn request<R: Send + 'static>(
        &self,
        build: impl Fn(RpcReplyPort<Result<R, StoreError>>) -> PersistenceMsg,
    ) -> Result<R, StoreError> {
        self.directory
            .call(ADDRESS, build)
            .await
            .unwrap_or(Err(StoreError::Unavailable))
    }

    /// The chat's record, once every earlier write is applied; `None` for a
    /// new chat (or one whose corrupt record was quarantined).
    pub async fn load_chat(&self, chat_id: ChatId) -> Result<Option<ChatRecord>, StoreError> {
        self.request(|reply| PersistenceMsg::LoadChat { chat_id, reply })
            .await
    }

    /// Records received updates durably; returns the ones not seen before,
    /// in order (to be routed).
    pub async fn admit(&self, updates: &[Inbound]) -> Result<Vec<Inbound>, StoreError> {
        self.request(|reply| PersistenceMsg::AdmitUpdates {
            updates: updates.to_vec(),
            reply,
        })
        .await
    }

    /// Stores the chat's record after a turn and marks the update (and
    /// `also_answered`) answered, atomically; `Ok` once durable.
    pub async fn commit_turn(
        &self,
        chat_id: ChatId,
        update_id: u32,
        also_answered: &[u32],
        change: &RecordChange,
    ) -> Result<(), StoreError> {
        self.request(|reply| PersistenceMsg::CommitTurn {
            chat_id,
            update_id,
            also_answered: also_answered.to_vec(),
            change: change.clone(),
            reply,
        })
        .await
    }

    /// Every update received and not yet answered, in the order received;
    /// commands are parsed against today's configured commands
    /// (`assistants`).
    pub async fn pending_updates(
        &self,
        assistants: &[CommandConfig],
    ) -> Result<Vec<Inbound>, StoreError> {
        let stored = self
            .request(|reply| PersistenceMsg::PendingUpdates { reply })
            .await?;
        Ok(stored
            .into_iter()
            .map(|update| update.into_inbound(assistants))
            .collect())
    }

    /// The highest update id the store holds, if any.
    pub async fn newest_update_id(&self) -> Result<Option<u32>, StoreError> {
        self.request(|reply| PersistenceMsg::NewestUpdateId { reply })
            .await
    }

    /// Telegram will not deliver updates below `below` again. Best effort:
    /// a lost confirmation only delays pruning to the next one.
    pub fn confirmed(&self, below: u32) {
        self.directory
            .cast_now(ADDRESS, PersistenceMsg::Confirmed { below });
    }

    /// A bot-wide setting; `None` if never set.
    pub async fn load_setting(&self, key: BotKey) -> Result<Option<BotSetting>, StoreError> {
        self.request(|reply| PersistenceMsg::LoadSetting { key, reply })
            .await
    }

    /// Stores a bot-wide setting; `Ok` once durable.
    pub async fn save_setting(&self, key: BotKey, setting: &BotSetting) -> Result<(), StoreError> {
        self.request(|reply| PersistenceMsg::SaveSetting {
            key,
            setting: setting.clone(),
            reply,
        })
        .await
    }

    /// Writes a consistent copy of the store to `to` while the service
    /// keeps running. The outer error: the actor could not be reached.
    pub async fn backup(
        &self,
        to: &Path,
    ) -> Result<Result<BackupReport, BackupError>, Unavailable> {
        self.directory
            .call(ADDRESS, |reply| PersistenceMsg::Backup {
                to: to.to_path_buf(),
                reply,
            })
            .await
    }

    /// The store's counters; `Err` when the actor cannot be reached (a
    /// readiness failure).
    pub async fn stats(&self) -> Result<StoreStats, Unavailable> {
        self.directory
            .call(ADDRESS, |reply| PersistenceMsg::Stats { reply })
            .await
    }

    /// Makes the actor panic (tests only); `false` if it is not running.
    #[cfg(feature = "chaos")]
    pub fn panic(&self) -> bool {
        self.directory.cast_now(ADDRESS, PersistenceMsg::Panic)
    }
}

/// Starts a persistence actor on `writer`, registered under `directory`'s
/// name for it but supervised by nobody: for benchmarks that drive the store
/// through [`PersistenceHandle`] without the rest of the tree. Stop the
/// returned actor to let the writer finish.
pub async fn start_unsupervised(
    directory: &Directory,
    writer: StoreWriter,
) -> Result<ractor::ActorCell, ractor::SpawnErr> {
    let name = directory.name(Child::Persistence);
    let (actor, _) = Actor::spawn(Some(name), Persistence, writer).await?;
    Ok(actor.get_cell())
}

/// Messages of the persistence actor.
pub(crate) enum PersistenceMsg {
    /// Panic at once: the chaos hook for tests (feature `chaos` only).
    #[cfg(feature = "chaos")]
    Panic,
    /// The chat's record; `None` for a new chat (or one whose record was
    /// corrupt and has been quarantined).
    LoadChat {
        /// The chat.
        chat_id: ChatId,
        /// The record, once every earlier write is applied.
        reply: RpcReplyPort<Result<Option<ChatRecord>, StoreError>>,
    },
    /// Record these received updates durably; answers with the ones not seen
    /// before (to be routed), in order.
    AdmitUpdates {
        /// A getUpdates batch, in update id order.
        updates: Vec<Inbound>,
        /// The new ones, durable once answered.
        reply: RpcReplyPort<Result<Vec<Inbound>, StoreError>>,
    },
    /// An update was answered: store the chat's new record (or delete it)
    /// and mark the update answered, atomically.
    CommitTurn {
        /// The chat.
        chat_id: ChatId,
        /// The answered update.
        update_id: u32,
        /// Earlier updates of the chat answered by the same turn (messages
        /// merged into one request).
        also_answered: Vec<u32>,
        /// The chat record after the turn.
        change: RecordChange,
        /// `Ok` once durable.
        reply: RpcReplyPort<Result<(), StoreError>>,
    },
    /// Every update received and not yet answered, in the order received.
    PendingUpdates {
        /// The updates, as stored.
        reply: RpcReplyPort<Result<Vec<record::StoredUpdate>, StoreError>>,
    },
    /// The highest update id the store holds (pending, or answered and not
    /// yet pruned); `None` if it holds none. The console front numbers its
    /// updates after it.
    NewestUpdateId {
        /// The id.
        reply: RpcReplyPort<Result<Option<u32>, StoreError>>,
    },
    /// Telegram will not deliver updates below `below` again (the ingress
    /// confirmed them), so their answered markers can go.
    Confirmed {
        /// The confirmed offset.
        below: u32,
    },
    /// A bot-wide setting; `None` if never set (or unreadable: logged).
    LoadSetting {
        /// Which.
        key: BotKey,
        /// The setting.
        reply: RpcReplyPort<Result<Option<BotSetting>, StoreError>>,
    },
    /// Store a bot-wide setting durably.
    SaveSetting {
        /// Which.
        key: BotKey,
        /// The new value.
        setting: BotSetting,
        /// `Ok` once durable.
        reply: RpcReplyPort<Result<(), StoreError>>,
    },
    /// Write a consistent copy of the store to `to` (a new or empty
    /// directory outside `storage.path`, see [`backup::prepare_target`])
    /// while the service keeps running; refused with
    /// [`BackupError::Busy`] while another backup is being written.
    Backup {
        /// Where the copy goes.
        to: PathBuf,
        /// What was copied, once the copy is durable.
        reply: RpcReplyPort<Result<BackupReport, BackupError>>,
    },
    /// Counters for health checks, tests and benchmarks.
    Stats {
        /// The answer.
        reply: RpcReplyPort<StoreStats>,
    },
    /// The writer thread stopped for good (sent by the writer).
    WriterFailed {
        /// Why.
        error: StoreError,
    },
}

/// The new state of a chat record after a turn.
#[derive(Debug, Clone)]
pub enum RecordChange {
    /// Store this encoded record.
    Put(Vec<u8>),
    /// Delete the record (the user asked to be forgotten).
    Delete,
    /// `/forget`: delete the record and every quarantined copy of the chat's
    /// old records; keep what the chat spent (an encoded
    /// [`record::ChatUsage`], `None` if nothing), which outlives it.
    Forget(Option<Vec<u8>>),
    /// Leave the record as it is; only mark the update answered.
    Keep,
}

/// Store counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Atomic batches committed.
    pub commits: u64,
    /// Turns committed.
    pub turns: u64,
    /// Requests in the most recent batch.
    pub last_batch: u64,
    /// Duration of the most recent commit, in microseconds.
    pub last_commit_micros: u64,
    /// Records moved to the failed keyspace.
    pub quarantined: u64,
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    turns: AtomicU64,
    last_batch: AtomicU64,
    last_commit_micros: AtomicU64,
    quarantined: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            turns: self.turns.load(Ordering::Relaxed),
            last_batch: self.last_batch.load(Ordering::Relaxed),
            last_commit_micros: self.last_commit_micros.load(Ordering::Relaxed),
            quarantined: self.quarantined.load(Ordering::Relaxed),
        }
    }
}

/// The persistence actor.
pub(crate) struct Persistence;

/// The persistence actor's state.
pub(crate) struct PersistenceState {
    writer: StoreWriter,
}

impl Actor for Persistence {
    type Msg = PersistenceMsg;
    type State = PersistenceState;
    type Arguments = StoreWriter;

    async fn pre_start(
        &self,
        myself: ActorRef<PersistenceMsg>,
        writer: StoreWriter,
    ) -> Result<PersistenceState, ActorProcessingErr> {
        writer.set_failure_listener(myself);
        Ok(PersistenceState { writer })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PersistenceMsg>,
        message: PersistenceMsg,
        state: &mut PersistenceState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            #[cfg(feature = "chaos")]
            PersistenceMsg::Panic => panic!("chaos: ordered to panic"),
            PersistenceMsg::Stats { reply } => {
                let _ = reply.send(state.writer.counters.snapshot());
            }
            PersistenceMsg::WriterFailed { error } => return Err(Box::new(error)),
            // Everything else is storage work, done by the writer in order.
            request => state.writer.submit(request),
        }
        Ok(())
    }
}

impl PersistenceMsg {
    /// Answers the request with `error` (used when its batch failed or the
    /// writer is gone).
    fn fail(self, error: &StoreError) {
        match self {
            Self::LoadChat { reply, .. } => drop(reply.send(Err(error.clone()))),
            Self::AdmitUpdates { reply, .. } => drop(reply.send(Err(error.clone()))),
            Self::CommitTurn { reply, .. } | Self::SaveSetting { reply, .. } => {
                drop(reply.send(Err(error.clone())));
            }
            Self::PendingUpdates { reply } => drop(reply.send(Err(error.clone()))),
            Self::NewestUpdateId { reply } => drop(reply.send(Err(error.clone()))),
            Self::LoadSetting { reply, .. } => drop(reply.send(Err(error.clone()))),
            Self::Backup { reply, .. } => drop(reply.send(Err(error.clone().into()))),
            // Not storage requests: never given to the writer.
            Self::Confirmed { .. } | Self::Stats { .. } | Self::WriterFailed { .. } => {}
            #[cfg(feature = "chaos")]
            Self::Panic => {}
        }
    }
}

/// The handle of the writer thread: cheap to clone; the thread ends once
/// every handle is dropped, after committing what it was given and
/// persisting the journal.
#[derive(Clone)]
pub struct StoreWriter {
    ops: Sender<PersistenceMsg>,
    counters: Arc<Counters>,
    listener: Arc<std::sync::Mutex<Option<ActorRef<PersistenceMsg>>>>,
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter").finish_non_exhaustive()
    }
}

impl StoreWriter {
    /// Opens (or creates) the database at `storage.path` and starts the
    /// writer thread. Blocking: call it from a blocking context. Fails when
    /// the directory cannot be used or another process holds it.
    pub fn start(config: &StorageConfig) -> Result<(Self, JoinHandle<()>), StoreError> {
        let store = OpenStore::open_with(&config.path, Some(config.memtable_mib * 1024 * 1024))?;
        let (ops, receiver) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let listener = Arc::new(std::sync::Mutex::new(None));
        let next_admitted = next_admission(&store)?;
        let thread = Thread {
            store,
            pruned_below: std::cell::Cell::new(0),
            next_admitted: std::cell::Cell::new(next_admitted),
            receiver,
            data_dir: config.path.clone(),
            backup_running: Arc::new(AtomicBool::new(false)),
            mode: persist_mode(config.persist_mode),
            commit_interval: config.commit_interval,
            max_batch: config.commit_max_batch.max(1),
            counters: Arc::clone(&counters),
            listener: Arc::clone(&listener),
        };
        let handle = std::thread::Builder::new()
            .name("llmgram-store".into())
            .spawn(move || thread.run())
            .map_err(|e| StoreError::Storage(format!("cannot start the store thread: {e}")))?;
        Ok((
            Self {
                ops,
                counters,
                listener,
            },
            handle,
        ))
    }

    fn submit(&self, op: PersistenceMsg) {
        if let Err(mpsc::SendError(op)) = self.ops.send(op) {
            op.fail(&StoreError::Unavailable);
        }
    }

    /// The actor that hears when the writer stops for good.
    fn set_failure_listener(&self, actor: ActorRef<PersistenceMsg>) {
        *self
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(actor);
    }
}

fn persist_mode(mode: PersistModeConfig) -> PersistMode {
    match mode {
        PersistModeConfig::SyncAll => PersistMode::SyncAll,
        PersistModeConfig::SyncData => PersistMode::SyncData,
        PersistModeConfig::Buffer => PersistMode::Buffer,
    }
}

struct OpenStore {
    db: Database,
    bot: Keyspace,
    chats: Keyspace,
    updates: Keyspace,
    failed: Keyspace,
    usage: Keyspace,
}

impl OpenStore {
    /// Opens with fjall's default memtable size (backup, restore, tests).
    fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, None)
    }

    /// `memtable_bytes` (`storage.memtable_mib`) bounds each keyspace's
    /// memtable: it stays in memory until flushed, active chats or not.
    fn open_with(path: &Path, memtable_bytes: Option<u64>) -> Result<Self, StoreError> {
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

    /// The keyspace called `name` (one of [`KEYSPACES`]).
    fn keyspace(&self, name: &str) -> Option<&Keyspace> {
        match name {
            CHATS => Some(&self.chats),
            UPDATES => Some(&self.updates),
            BOT => Some(&self.bot),
            FAILED => Some(&self.failed),
            USAGE => Some(&self.usage),
            _ => None,
        }
    }
}

/// A point-in-time view of every keyspace, for copying.
struct StoreView {
    snapshot: fjall::Snapshot,
    keyspaces: Vec<(&'static str, Keyspace)>,
}

impl OpenStore {
    fn view(&self) -> StoreView {
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
}

/// What a backup or restore copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackupReport {
    /// Key-value records copied, over all keyspaces.
    pub records: u64,
    /// Chat records among them.
    pub chats: u64,
}

/// Records restored per write batch: large enough to amortise the commit,
/// small enough to bound the memory a batch holds.
const COPY_BATCH: usize = 10_000;

/// Writes `source` as a backup (see [`backup`]) into `to`, which
/// [`backup::prepare_target`] checks against the data directory `data_dir`
/// first. A failed backup leaves no partial files behind.
fn write_backup(
    source: &StoreView,
    to: &Path,
    data_dir: &Path,
) -> Result<BackupReport, BackupError> {
    let target = backup::prepare_target(to, data_dir)?;
    let written = write_records(source, &target.path);
    if written.is_err() {
        RecordsWriter::discard(&target.path, target.created);
    }
    written
}

fn write_records(source: &StoreView, dir: &Path) -> Result<BackupReport, BackupError> {
    let mut out = RecordsWriter::create(dir)?;
    for (name, keyspace) in &source.keyspaces {
        let Some(index) = KEYSPACES.iter().position(|k| k == name) else {
            continue;
        };
        for item in source.snapshot.iter(keyspace) {
            let (key, value) = item.into_inner().map_err(StoreError::from)?;
            out.write(index, &key, &value)?;
        }
    }
    let manifest = out.finish()?;
    Ok(BackupReport {
        records: manifest.records,
        chats: manifest.count(CHATS),
    })
}

/// Fills the empty data directory `to` from the backup at `from` (the
/// service must not be running on `to`). The backup is only read: its
/// manifest, size, checksum and counts are checked before anything is
/// written, and it is never opened as a database.
pub fn restore(from: &Path, to: &Path) -> Result<BackupReport, BackupError> {
    let verified = backup::verify(from)?;
    backup::check_restore_target(from, to)?;
    let target = OpenStore::open(to)?;
    let mut batch = target.db.batch();
    let mut frames = verified.frames()?;
    for frame in &mut frames {
        let (index, key, value) = frame?;
        let keyspace = KEYSPACES
            .get(index)
            .and_then(|name| target.keyspace(name))
            .ok_or_else(|| BackupError::Target(format!("no keyspace {index}")))?;
        batch.insert(keyspace, key, value);
        if batch.len() >= COPY_BATCH {
            std::mem::replace(&mut batch, target.db.batch())
                .commit()
                .map_err(StoreError::from)?;
        }
    }
    // The file was read twice: the verified pass and this one. Were it
    // changed in between, what was written is not what was verified.
    if frames.finish() != verified.manifest.sha256 {
        return Err(BackupError::NotABackup {
            path: from.display().to_string(),
            reason: format!(
                "it changed while being restored; {} holds a partial copy to discard",
                to.display()
            ),
        });
    }
    batch.commit().map_err(StoreError::from)?;
    target
        .db
        .persist(PersistMode::SyncAll)
        .map_err(StoreError::from)?;
    Ok(BackupReport {
        records: verified.manifest.records,
        chats: verified.manifest.count(CHATS),
    })
}

/// Clears the one-backup-at-a-time flag when the backup that set it ends,
/// however it ends.
struct BackupSlot(Arc<AtomicBool>);

impl Drop for BackupSlot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

struct Thread {
    store: OpenStore,
    /// Updates below this id have been confirmed to Telegram (it will not
    /// send them again) and their answered markers removed.
    pruned_below: std::cell::Cell<u32>,
    /// The admission sequence number of the next update received.
    next_admitted: std::cell::Cell<u64>,
    receiver: Receiver<PersistenceMsg>,
    /// `storage.path`: no backup may be written inside it.
    data_dir: PathBuf,
    /// Set while a backup is being written: one at a time, as each is a
    /// full copy of the store competing with the bot for the disk.
    backup_running: Arc<AtomicBool>,
    mode: PersistMode,
    commit_interval: Duration,
    max_batch: usize,
    counters: Arc<Counters>,
    listener: Arc<std::sync::Mutex<Option<ActorRef<PersistenceMsg>>>>,
}

impl Thread {
    fn run(self) {
        while let Ok(first) = self.receiver.recv() {
            let mut batch = vec![first];
            let deadline = Instant::now() + self.commit_interval;
            while batch.len() < self.max_batch {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.receiver.recv_timeout(left) {
                    Ok(op) => batch.push(op),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            if let Err(error) = self.execute(batch) {
                tracing::error!(%error, "store writer stops: no further writes");
                self.report_failure(error);
                return;
            }
        }
        if let Err(error) = self.store.db.persist(PersistMode::SyncAll) {
            tracing::error!(error = %StoreError::from(error), "final persist failed");
        }
        tracing::debug!("store writer stopped");
    }

    fn report_failure(&self, error: StoreError) {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(actor) = listener {
            let _ = actor.cast(PersistenceMsg::WriterFailed { error });
        }
        // Answer everything still queued, so no caller waits forever.
        while let Ok(op) = self.receiver.try_recv() {
            op.fail(&StoreError::Unavailable);
        }
    }

    /// Runs one batch: writes as one atomic commit, then the reads. Only a
    /// poisoned store is returned as an error (the thread must stop); other
    /// errors fail the batch's requests and the thread goes on.
    fn execute(&self, batch: Vec<PersistenceMsg>) -> Result<(), StoreError> {
        let started = Instant::now();
        let size = batch.len() as u64;
        let mut write = self.store.db.batch().durability(Some(self.mode));
        let mut admitted_now: HashSet<u32> = HashSet::new();
        let mut after_commit = Vec::new();
        let mut turns = 0;
        let mut prepared = Vec::new();
        for op in batch {
            match op {
                PersistenceMsg::CommitTurn {
                    chat_id,
                    update_id,
                    also_answered,
                    change,
                    reply,
                } => match record::encode_update(&UpdateEntry::Answered) {
                    Ok(answered) => {
                        for id in also_answered.into_iter().chain([update_id]) {
                            if id < self.pruned_below.get() {
                                // Telegram will not send it again: no marker needed.
                                write.remove(&self.store.updates, update_key(id));
                            } else {
                                write.insert(&self.store.updates, update_key(id), answered.clone());
                            }
                        }
                        match change {
                            RecordChange::Put(bytes) => {
                                write.insert(&self.store.chats, chat_key(chat_id), bytes);
                            }
                            RecordChange::Delete => {
                                write.remove(&self.store.chats, chat_key(chat_id))
                            }
                            RecordChange::Forget(usage) => {
                                write.remove(&self.store.chats, chat_key(chat_id));
                                match usage {
                                    Some(bytes) => {
                                        write.insert(&self.store.usage, chat_key(chat_id), bytes)
                                    }
                                    None => write.remove(&self.store.usage, chat_key(chat_id)),
                                }
                                if let Err(error) = self.forget_quarantined(&mut write, chat_id) {
                                    tracing::error!(chat_id = chat_id.0, %error, "cannot list the quarantined records to forget");
                                }
                            }
                            RecordChange::Keep => {}
                        }
                        turns += 1;
                        after_commit.push(Done::Commit(reply));
                    }
                    Err(e) => drop(reply.send(Err(StoreError::Storage(e.to_string())))),
                },
                PersistenceMsg::AdmitUpdates { updates, reply } => {
                    match self.admit(&mut write, &mut admitted_now, updates) {
                        Ok(new) => after_commit.push(Done::Admit(reply, new)),
                        Err(error) => drop(reply.send(Err(error))),
                    }
                }
                PersistenceMsg::Confirmed { below } => {
                    if let Err(error) = self.prune(&mut write, below) {
                        tracing::warn!(%error, "pruning answered updates failed");
                    }
                }
                PersistenceMsg::SaveSetting {
                    key,
                    setting,
                    reply,
                } => match record::encode_setting(&setting) {
                    Ok(bytes) => {
                        write.insert(&self.store.bot, key.as_bytes(), bytes);
                        after_commit.push(Done::Commit(reply));
                    }
                    Err(e) => drop(reply.send(Err(StoreError::Storage(e.to_string())))),
                },
                read @ (PersistenceMsg::LoadChat { .. }
                | PersistenceMsg::PendingUpdates { .. }
                | PersistenceMsg::NewestUpdateId { .. }
                | PersistenceMsg::LoadSetting { .. }
                | PersistenceMsg::Backup { .. }) => prepared.push(read),
                // The actor answers these itself; they never reach the writer.
                other => other.fail(&StoreError::Storage("not a storage request".into())),
            }
        }

        if !write.is_empty() {
            if let Err(error) = write.commit() {
                let error = StoreError::from(error);
                for done in after_commit {
                    done.fail(&error);
                }
                for op in prepared {
                    op.fail(&error);
                }
                return match error {
                    StoreError::Poisoned(_) => Err(error),
                    other => {
                        tracing::error!(error = %other, "commit failed");
                        Ok(())
                    }
                };
            }
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
            self.counters.turns.fetch_add(turns, Ordering::Relaxed);
            self.counters.last_batch.store(size, Ordering::Relaxed);
            metrics::histogram!(crate::telemetry::families::STORE_COMMIT)
                .record(started.elapsed().as_secs_f64());
            #[allow(clippy::cast_precision_loss)] // a batch is far below 2^52
            metrics::histogram!(crate::telemetry::families::STORE_BATCH).record(size as f64);
            self.counters
                .last_commit_micros
                .store(micros, Ordering::Relaxed);
        }
        for done in after_commit {
            done.succeed();
        }
        for op in prepared {
            self.read(op)?;
        }
        Ok(())
    }

    fn admit(
        &self,
        write: &mut fjall::OwnedWriteBatch,
        admitted_now: &mut HashSet<u32>,
        updates: Vec<Inbound>,
    ) -> Result<Vec<Inbound>, StoreError> {
        let mut new = Vec::with_capacity(updates.len());
        for inbound in updates {
            let id = inbound.update_id;
            if admitted_now.contains(&id) || self.store.updates.contains_key(update_key(id))? {
                tracing::debug!(update_id = id, "update already received; skipped");
                continue;
            }
            let admitted = self.next_admitted.get();
            self.next_admitted.set(admitted + 1);
            let entry = UpdateEntry::Pending(record::StoredUpdate::new(&inbound, admitted));
            let bytes =
                record::encode_update(&entry).map_err(|e| StoreError::Storage(e.to_string()))?;
            write.insert(&self.store.updates, update_key(id), bytes);
            admitted_now.insert(id);
            new.push(inbound);
        }
        Ok(new)
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
    fn prune(&self, write: &mut fjall::OwnedWriteBatch, below: u32) -> Result<(), StoreError> {
        let from = self.pruned_below.get();
        if below < from {
            tracing::info!(below, from, "update ids started over");
            self.pruned_below.set(below);
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
                write.remove(&self.store.updates, key);
            }
        }
        self.pruned_below.set(below);
        Ok(())
    }

    fn read(&self, op: PersistenceMsg) -> Result<(), StoreError> {
        match op {
            PersistenceMsg::LoadChat { chat_id, reply } => {
                let loaded = self.load(chat_id);
                let poisoned = matches!(loaded, Err(StoreError::Poisoned(_)));
                let _ = reply.send(loaded.clone());
                if poisoned {
                    return loaded.map(|_| ());
                }
            }
            PersistenceMsg::PendingUpdates { reply } => {
                let _ = reply.send(self.pending());
            }
            PersistenceMsg::NewestUpdateId { reply } => {
                let _ = reply.send(self.newest_update_id());
            }
            PersistenceMsg::LoadSetting { key, reply } => {
                let _ = reply.send(self.setting(key));
            }
            PersistenceMsg::Backup { to, reply } => {
                if self.backup_running.swap(true, Ordering::AcqRel) {
                    tracing::warn!(to = %to.display(), "backup refused: another one is in progress");
                    let _ = reply.send(Err(BackupError::Busy));
                    return Ok(());
                }
                let slot = BackupSlot(Arc::clone(&self.backup_running));
                // The snapshot is taken here, in order: it holds every write
                // acknowledged before this request. Copying it happens on its
                // own thread, so writes go on meanwhile.
                let source = self.store.view();
                let data_dir = self.data_dir.clone();
                let spawned = std::thread::Builder::new()
                    .name("llmgram-backup".into())
                    .spawn(move || {
                        let _slot = slot;
                        let started = Instant::now();
                        let copied = write_backup(&source, &to, &data_dir);
                        match &copied {
                            Ok(report) => tracing::info!(to = %to.display(), records = report.records, ms = started.elapsed().as_millis() as u64, "backup written"),
                            Err(error @ BackupError::Target(_)) => tracing::warn!(to = %to.display(), class = error.class(), %error, "backup refused"),
                            Err(error) => tracing::error!(to = %to.display(), class = error.class(), %error, "backup failed"),
                        }
                        let _ = reply.send(copied);
                    });
                if let Err(error) = spawned {
                    tracing::error!(%error, "cannot start the backup thread");
                }
            }
            other => other.fail(&StoreError::Storage("not a read".into())),
        }
        Ok(())
    }

    fn load(&self, chat_id: ChatId) -> Result<Option<ChatRecord>, StoreError> {
        let Some(bytes) = self.store.chats.get(chat_key(chat_id))? else {
            return self.forgotten(chat_id);
        };
        match record::decode_chat(&bytes) {
            Ok(record) => Ok(Some(record)),
            Err(error) => {
                tracing::error!(chat_id = chat_id.0, %error, "chat record does not decode; quarantined, chat starts fresh");
                let mut write = self.store.db.batch().durability(Some(self.mode));
                write.insert(
                    &self.store.failed,
                    failed_chat_key(chat_id, unix_millis()),
                    bytes,
                );
                write.remove(&self.store.chats, chat_key(chat_id));
                write.commit()?;
                self.counters.quarantined.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// A chat without a record: new (`None`), or forgotten, when it keeps
    /// only what it spent.
    fn forgotten(&self, chat_id: ChatId) -> Result<Option<ChatRecord>, StoreError> {
        let Some(bytes) = self.store.usage.get(chat_key(chat_id))? else {
            return Ok(None);
        };
        match record::decode_usage(&bytes) {
            Ok(usage) => Ok(Some(ChatRecord {
                counters: record::ChatCounters {
                    usage_day: usage.usage_day,
                    tokens_today: usage.tokens_today,
                    ..record::ChatCounters::default()
                },
                ..ChatRecord::default()
            })),
            Err(error) => {
                // Nothing to quarantine worth keeping: the chat starts fresh.
                tracing::error!(chat_id = chat_id.0, %error, "chat usage does not decode; ignored");
                self.counters.quarantined.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    fn setting(&self, key: BotKey) -> Result<Option<BotSetting>, StoreError> {
        let Some(bytes) = self.store.bot.get(key.as_bytes())? else {
            return Ok(None);
        };
        match record::decode_setting(&bytes) {
            Ok(setting) => Ok(Some(setting)),
            Err(error) => {
                // Kept where it is for inspection; the owner starts from its
                // default and its next save replaces it.
                tracing::error!(key = ?key, %error, "bot setting does not decode; ignored");
                self.counters.quarantined.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    fn newest_update_id(&self) -> Result<Option<u32>, StoreError> {
        // Keys are big-endian ids, so the last key is the highest id.
        match self.store.updates.last_key_value() {
            Some(item) => Ok(update_from_key(&item.into_inner()?.0)),
            None => Ok(None),
        }
    }

    /// Removes every quarantined copy of the chat's records (`/forget`).
    fn forget_quarantined(
        &self,
        write: &mut fjall::OwnedWriteBatch,
        chat_id: ChatId,
    ) -> Result<(), StoreError> {
        for item in self.store.failed.prefix(failed_chat_prefix(chat_id)) {
            let key = item.key()?;
            write.remove(&self.store.failed, key);
        }
        Ok(())
    }

    fn pending(&self) -> Result<Vec<record::StoredUpdate>, StoreError> {
        let mut pending: Vec<record::StoredUpdate> = Vec::new();
        let mut corrupt = Vec::new();
        for item in self.store.updates.iter() {
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
            let mut write = self.store.db.batch().durability(Some(self.mode));
            for (key, value) in corrupt {
                let id = update_from_key(&key).unwrap_or_default();
                write.insert(
                    &self.store.failed,
                    failed_update_key(id, unix_millis()),
                    value,
                );
                write.remove(&self.store.updates, key);
                self.counters.quarantined.fetch_add(1, Ordering::Relaxed);
            }
            write.commit()?;
        }
        // In the order received, which is each chat's order: update ids are
        // not (Telegram may start them over at a random value).
        pending.sort_by_key(|update| (update.admitted, update.update_id));
        Ok(pending)
    }
}

/// The admission sequence number to continue from: one past the highest
/// held by a pending update (answered ones no longer need theirs).
fn next_admission(store: &OpenStore) -> Result<u64, StoreError> {
    let mut next = 1;
    for item in store.updates.iter() {
        let (_, value) = item.into_inner()?;
        if let Ok(UpdateEntry::Pending(update)) = record::decode_update(&value) {
            next = next.max(update.admitted + 1);
        }
    }
    Ok(next)
}

/// A write request whose answer waits for the commit.
enum Done {
    Commit(RpcReplyPort<Result<(), StoreError>>),
    Admit(RpcReplyPort<Result<Vec<Inbound>, StoreError>>, Vec<Inbound>),
}

impl Done {
    fn succeed(self) {
        match self {
            Self::Commit(reply) => drop(reply.send(Ok(()))),
            Self::Admit(reply, new) => drop(reply.send(Ok(new))),
        }
    }

    fn fail(self, error: &StoreError) {
        match self {
            Self::Commit(reply) => drop(reply.send(Err(error.clone()))),
            Self::Admit(reply, _) => drop(reply.send(Err(error.clone()))),
        }
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Test and benchmark access to the raw store, bypassing the actor: used to
/// plant corrupt bytes and to inspect what is stored after the service has
/// stopped. Never used by the service itself.
pub mod inspect {
    use super::*;

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

    /// Keys of the store, re-exported for tests that plant data.
    pub use store::chat_key as key_of_chat;
}
