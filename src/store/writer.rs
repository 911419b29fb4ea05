//! The store's writer: one dedicated OS thread that owns the open database
//! and serves every [`StoreOp`] in arrival order, group-committing. It
//! reaches the database only through the storage backend boundary
//! (`super::backend::Backend`, today the fjall database).
//!
//! **Single-writer invariant:** only this thread writes to the live
//! database, and only the persistence actor
//! (`actors/root/persistence.rs`) holds a [`StoreWriter`] to give it work
//! (root hands the one made at start to each incarnation of the actor). So
//! every write is ordered by one queue, an admission sequence number and a
//! prune point can live in the thread without locks, and a read served
//! after a batch sees every write acknowledged before it.
//!
//! - **Created** once per process by [`StoreWriter::start`] (the database is
//!   opened once); it outlives restarts of the persistence actor and ends
//!   once every [`StoreWriter`] is dropped, after committing what it was
//!   given and persisting the journal.
//! - **Group commit:** it gathers operations for up to
//!   `storage.commit_interval` or `storage.commit_max_batch` operations,
//!   applies every write as one atomic group (one backend commit) persisted
//!   with `storage.persist_mode`, answers the writers (their data is now
//!   durable), then serves the batch's reads ([`ReadOp`]), which so see
//!   every earlier write.
//! - **Backups** ([`ReadOp::Backup`]): a snapshot taken in the writer's
//!   order, copied by a thread of its own (see [`super::backup`]); one at a
//!   time.
//! - **Failures:** a failed batch fails its operations and the thread goes
//!   on; if fjall reports itself poisoned (a failed fsync) the thread stops
//!   for good, answers everything still queued with
//!   [`StoreError::Unavailable`] and calls the failure listener (the
//!   persistence actor, which then fails with [`StoreError::Poisoned`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ractor::RpcReplyPort;

use super::backend::{Backend, Committed};
use super::backup::{BackupError, BackupReport};
use super::db::FjallBackend;
use super::record::{self, BotSetting, ChatRecord};
use super::{BotKey, StoreError};
use crate::config::StorageConfig;
use crate::error::lock_unpoisoned;
use crate::telegram::inbound::{Inbound, SessionKey};

/// One operation for the writer thread.
pub enum StoreOp {
    /// Store the conversation's new record (or delete it) and mark the
    /// update, and those answered with it, answered, in one atomic batch.
    CommitTurn {
        /// The conversation (chat, or forum topic).
        key: SessionKey,
        /// The answered update.
        update_id: u32,
        /// Earlier updates of the chat answered by the same turn.
        also_answered: Vec<u32>,
        /// The chat record after the turn.
        change: RecordChange,
        /// `Ok` once durable.
        reply: RpcReplyPort<Result<(), StoreError>>,
    },
    /// Record received updates durably; answers with the ones not seen
    /// before, in order.
    Admit {
        /// A getUpdates batch, in update id order.
        updates: Vec<Inbound>,
        /// The new ones, durable once answered.
        reply: RpcReplyPort<Result<Vec<Inbound>, StoreError>>,
    },
    /// Telegram will not deliver updates below `below` again: drop their
    /// answered markers.
    Prune {
        /// The confirmed offset.
        below: u32,
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
    /// Give up the conversation (its session was evicted) so another
    /// instance of a shared store may take it at once; nothing on fjall.
    Release {
        /// The conversation.
        key: SessionKey,
    },
    /// A read, served after the writes of its batch.
    Read(ReadOp),
}

/// A read of the store, served after the writes of the batch it came in.
pub enum ReadOp {
    /// The conversation's record; `None` for a new one or a quarantined
    /// record.
    LoadChat {
        /// The conversation (chat, or forum topic).
        key: SessionKey,
        /// The record.
        reply: RpcReplyPort<Result<Option<ChatRecord>, StoreError>>,
    },
    /// Every update received and not answered, in the order received.
    PendingUpdates {
        /// The updates, as stored.
        reply: RpcReplyPort<Result<Vec<record::StoredUpdate>, StoreError>>,
    },
    /// The unanswered updates of one conversation, in the order received.
    PendingOf {
        /// The conversation.
        key: SessionKey,
        /// The updates, as stored.
        reply: RpcReplyPort<Result<Vec<record::StoredUpdate>, StoreError>>,
    },
    /// The highest update id held; `None` if none.
    NewestUpdateId {
        /// The id.
        reply: RpcReplyPort<Result<Option<u32>, StoreError>>,
    },
    /// A bot-wide setting; `None` if never set or unreadable.
    LoadSetting {
        /// Which.
        key: BotKey,
        /// The setting.
        reply: RpcReplyPort<Result<Option<BotSetting>, StoreError>>,
    },
    /// A consistent copy of the store written to `to` (see
    /// [`super::backup::prepare_target`]); [`BackupError::Busy`] while another
    /// backup is being written.
    Backup {
        /// Where the copy goes.
        to: PathBuf,
        /// What was copied, once the copy is durable.
        reply: RpcReplyPort<Result<BackupReport, BackupError>>,
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
    /// [`record::ChatUsage`], `None` if nothing), which outlives it. In a
    /// forum supergroup the records of every topic of the chat go too (the
    /// user's data is in all of them); each topic keeps its own spend.
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

/// Called once, on the writer thread, when it stops for good.
type FailureListener = Box<dyn Fn(StoreError) + Send>;

/// The handle of the writer thread: cheap to clone; the thread ends once
/// every handle is dropped, after committing what it was given and
/// persisting the journal.
#[derive(Clone)]
pub struct StoreWriter {
    ops: Sender<StoreOp>,
    counters: Arc<Counters>,
    listener: Arc<Mutex<Option<FailureListener>>>,
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
        let opening = config.clone();
        let (writer, thread, ()) = Self::start_on(config, move || {
            FjallBackend::open(&opening).map(|backend| (backend, ()))
        })?;
        Ok((writer, thread))
    }

    /// Connects to the shared PostgreSQL at `url`, migrates its schema,
    /// registers this instance and starts the writer thread on it, keyed by
    /// bot `bot`. Blocking. Returns this instance's id too.
    #[cfg(feature = "postgres")]
    pub fn start_postgres(
        config: &StorageConfig,
        url: crate::config::Secret,
        bot: i64,
    ) -> Result<(Self, JoinHandle<()>, i64), StoreError> {
        let opening = config.clone();
        Self::start_on(config, move || {
            let backend = super::postgres::PgBackend::open(url.expose(), &opening, bot)?;
            let instance = backend.instance();
            Ok((backend, instance))
        })
    }

    /// Starts the writer thread, which opens its backend with `open` (so
    /// the database is only ever touched from that thread) and reports
    /// whether it could, with what `open` returns beside the backend.
    fn start_on<B: Backend, T: Send + 'static>(
        config: &StorageConfig,
        open: impl FnOnce() -> Result<(B, T), StoreError> + Send + 'static,
    ) -> Result<(Self, JoinHandle<()>, T), StoreError> {
        let (ops, receiver) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let listener = Arc::new(Mutex::new(None));
        let (commit_interval, max_batch) = (config.commit_interval, config.commit_max_batch.max(1));
        let thread_counters = Arc::clone(&counters);
        let thread_listener = Arc::clone(&listener);
        let (opened, opening) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("llmgram-store".into())
            .spawn(move || {
                let backend = match open() {
                    Ok((backend, extra)) => {
                        let _ = opened.send(Ok(extra));
                        backend
                    }
                    Err(error) => {
                        let _ = opened.send(Err(error));
                        return;
                    }
                };
                Thread {
                    backend,
                    receiver,
                    backup_running: Arc::new(AtomicBool::new(false)),
                    commit_interval,
                    max_batch,
                    counters: thread_counters,
                    listener: thread_listener,
                }
                .run();
            })
            .map_err(|e| StoreError::Storage(format!("cannot start the store thread: {e}")))?;
        let extra = opening
            .recv()
            .map_err(|_| StoreError::Storage("the store thread ended while opening".into()))??;
        Ok((
            Self {
                ops,
                counters,
                listener,
            },
            handle,
            extra,
        ))
    }

    /// Queues `op`; answered with [`StoreError::Unavailable`] if the thread
    /// has stopped.
    pub fn submit(&self, op: StoreOp) {
        if let Err(mpsc::SendError(op)) = self.ops.send(op) {
            op.fail(&StoreError::Unavailable);
        }
    }

    /// The counters, as of now.
    pub fn stats(&self) -> StoreStats {
        self.counters.snapshot()
    }

    /// Sets who hears when the writer stops for good (replacing the
    /// previous listener: the current incarnation of the persistence actor).
    pub fn set_failure_listener(&self, listener: impl Fn(StoreError) + Send + 'static) {
        // One slot, replaced whole: a panic cannot leave it half-changed.
        *lock_unpoisoned(&self.listener) = Some(Box::new(listener));
    }
}

impl StoreOp {
    /// Answers the operation with `error` (its batch failed or the writer is
    /// gone).
    fn fail(self, error: &StoreError) {
        match self {
            Self::CommitTurn { reply, .. } | Self::SaveSetting { reply, .. } => {
                drop(reply.send(Err(error.clone())));
            }
            Self::Admit { reply, .. } => drop(reply.send(Err(error.clone()))),
            // Nobody waits for a prune; the next confirmed offset covers it.
            Self::Prune { .. } => {}
            // Nobody waits for a release: an unreleased chat is taken once
            // this instance's lease lapses, or released at a clean stop.
            Self::Release { .. } => {}
            Self::Read(read) => read.fail(error),
        }
    }
}

impl ReadOp {
    fn fail(self, error: &StoreError) {
        match self {
            Self::LoadChat { reply, .. } => drop(reply.send(Err(error.clone()))),
            Self::PendingUpdates { reply } | Self::PendingOf { reply, .. } => {
                drop(reply.send(Err(error.clone())));
            }
            Self::NewestUpdateId { reply } => drop(reply.send(Err(error.clone()))),
            Self::LoadSetting { reply, .. } => drop(reply.send(Err(error.clone()))),
            Self::Backup { reply, .. } => drop(reply.send(Err(error.clone().into()))),
        }
    }
}

/// Clears the one-backup-at-a-time flag when the backup that set it ends,
/// however it ends.
struct BackupSlot(Arc<AtomicBool>);

impl Drop for BackupSlot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A write whose answer waits for the commit: the completion of a batch.
enum Done {
    Commit(RpcReplyPort<Result<(), StoreError>>),
    /// A turn, with its number among the group's turns (a backend that
    /// applies turns at commit says then which were fenced).
    Turn(RpcReplyPort<Result<(), StoreError>>, usize),
    Admit(RpcReplyPort<Result<Vec<Inbound>, StoreError>>, Vec<Inbound>),
}

impl Done {
    /// Answers a write of a group that committed; `fenced` numbers the
    /// turns that wrote nothing (another instance owns their chat), and
    /// `known` the admitted updates the store turned out to hold already.
    fn succeed(self, fenced: &[usize], known: &[u32]) {
        match self {
            Self::Turn(reply, index) if fenced.contains(&index) => {
                drop(reply.send(Err(StoreError::Fenced)));
            }
            Self::Commit(reply) | Self::Turn(reply, _) => drop(reply.send(Ok(()))),
            Self::Admit(reply, mut new) => {
                new.retain(|update| !known.contains(&update.update_id));
                drop(reply.send(Ok(new)));
            }
        }
    }

    fn fail(self, error: &StoreError) {
        match self {
            Self::Commit(reply) | Self::Turn(reply, _) => drop(reply.send(Err(error.clone()))),
            Self::Admit(reply, _) => drop(reply.send(Err(error.clone()))),
        }
    }
}

/// The writer thread's state, over the database `B`.
struct Thread<B> {
    backend: B,
    receiver: Receiver<StoreOp>,
    /// Set while a backup is being written: one at a time, as each is a
    /// full copy of the store competing with the bot for the disk.
    backup_running: Arc<AtomicBool>,
    commit_interval: Duration,
    max_batch: usize,
    counters: Arc<Counters>,
    listener: Arc<Mutex<Option<FailureListener>>>,
}

impl<B: Backend> Thread<B> {
    fn run(mut self) {
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
        if let Err(error) = self.backend.persist_all() {
            tracing::error!(%error, "final persist failed");
        }
        tracing::debug!("store writer stopped");
    }

    fn report_failure(&self, error: StoreError) {
        if let Some(listener) = lock_unpoisoned(&self.listener).as_ref() {
            listener(error);
        }
        // Answer everything still queued, so no caller waits forever.
        while let Ok(op) = self.receiver.try_recv() {
            op.fail(&StoreError::Unavailable);
        }
    }

    /// Runs one batch: writes as one atomic commit, then the reads. Only a
    /// poisoned store is returned as an error (the thread must stop); other
    /// errors fail the batch's operations and the thread goes on.
    fn execute(&mut self, batch: Vec<StoreOp>) -> Result<(), StoreError> {
        let started = Instant::now();
        let size = batch.len() as u64;
        let mut group = self.backend.begin();
        let mut after_commit = Vec::new();
        let mut turns = 0;
        // Every call of `commit_turn` numbers a turn, whatever it returns.
        let mut turn_index = 0;
        let mut reads = Vec::new();
        for op in batch {
            match op {
                StoreOp::CommitTurn {
                    key,
                    update_id,
                    also_answered,
                    change,
                    reply,
                } => {
                    let index = turn_index;
                    turn_index += 1;
                    match self.backend.commit_turn(
                        &mut group,
                        &key,
                        update_id,
                        also_answered,
                        change,
                    ) {
                        Ok(()) => {
                            turns += 1;
                            after_commit.push(Done::Turn(reply, index));
                        }
                        Err(error) => drop(reply.send(Err(error))),
                    }
                }
                StoreOp::Admit { updates, reply } => {
                    match self.backend.admit(&mut group, updates) {
                        Ok(new) => after_commit.push(Done::Admit(reply, new)),
                        Err(error) => drop(reply.send(Err(error))),
                    }
                }
                StoreOp::Prune { below } => {
                    if let Err(error) = self.backend.confirm(&mut group, below) {
                        tracing::warn!(%error, "pruning answered updates failed");
                    }
                }
                StoreOp::Release { key } => {
                    if let Err(error) = self.backend.release(&mut group, &key) {
                        tracing::warn!(chat_id = key.chat().0, %error, "releasing a chat failed");
                    }
                }
                StoreOp::SaveSetting {
                    key,
                    setting,
                    reply,
                } => match self.backend.save_setting(&mut group, key, &setting) {
                    Ok(()) => after_commit.push(Done::Commit(reply)),
                    Err(error) => drop(reply.send(Err(error))),
                },
                StoreOp::Read(read) => reads.push(read),
            }
        }

        match self.backend.commit(group) {
            Err(error) => {
                for done in after_commit {
                    done.fail(&error);
                }
                for read in reads {
                    read.fail(&error);
                }
                return match error {
                    StoreError::Poisoned(_) => Err(error),
                    other => {
                        tracing::error!(error = %other, "commit failed");
                        Ok(())
                    }
                };
            }
            Ok(Committed::Nothing) => {}
            Ok(Committed::Written) => self.count_commit(started, turns, size),
        }
        let (fenced, known) = (self.backend.take_fenced(), self.backend.take_known());
        for done in after_commit {
            done.succeed(&fenced, &known);
        }
        self.serve(reads)
    }

    /// Serves a batch's reads: the conversations' loads together, then
    /// their unanswered updates together, then the rest in order (no read
    /// depends on another's order). Only a poisoned store is returned as an
    /// error.
    fn serve(&mut self, reads: Vec<ReadOp>) -> Result<(), StoreError> {
        let (mut loads, mut pendings, mut rest) = (Vec::new(), Vec::new(), Vec::new());
        for read in reads {
            match read {
                ReadOp::LoadChat { key, reply } => loads.push((key, reply)),
                ReadOp::PendingOf { key, reply } => pendings.push((key, reply)),
                other => rest.push(other),
            }
        }
        let quarantined = &self.counters.quarantined;
        if !loads.is_empty() {
            let keys: Vec<SessionKey> = loads.iter().map(|(key, _)| key.clone()).collect();
            let loaded = self.backend.load_chats(&keys, quarantined);
            let mut poisoned = None;
            for ((_, reply), loaded) in loads.into_iter().zip(loaded) {
                if let Err(error @ StoreError::Poisoned(_)) = &loaded {
                    poisoned = Some(error.clone());
                }
                let _ = reply.send(loaded);
            }
            if let Some(error) = poisoned {
                return Err(error);
            }
        }
        if !pendings.is_empty() {
            let keys: Vec<SessionKey> = pendings.iter().map(|(key, _)| key.clone()).collect();
            let pending = self.backend.pending_of_chats(&keys, quarantined);
            for ((_, reply), pending) in pendings.into_iter().zip(pending) {
                let _ = reply.send(pending);
            }
        }
        for read in rest {
            self.read(read)?;
        }
        Ok(())
    }

    /// Counts one committed group of `size` operations holding `turns`
    /// turns, begun at `started`.
    fn count_commit(&self, started: Instant, turns: u64, size: u64) {
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

    /// Serves one read. Only a poisoned store is returned as an error.
    fn read(&mut self, read: ReadOp) -> Result<(), StoreError> {
        let quarantined = &self.counters.quarantined;
        match read {
            // Served together with the batch's others (`serve`).
            read @ (ReadOp::LoadChat { .. } | ReadOp::PendingOf { .. }) => {
                return self.serve(vec![read]);
            }
            ReadOp::PendingUpdates { reply } => {
                let _ = reply.send(self.backend.pending_updates(quarantined));
            }
            ReadOp::NewestUpdateId { reply } => {
                let _ = reply.send(self.backend.newest_update_id());
            }
            ReadOp::LoadSetting { key, reply } => {
                let _ = reply.send(self.backend.load_setting(key, quarantined));
            }
            ReadOp::Backup { to, reply } => self.backup(to, reply),
        }
        Ok(())
    }

    /// Takes a snapshot now, in the writer's order (it holds every write
    /// acknowledged before the request), and copies it on a thread of its
    /// own, so writes go on meanwhile.
    fn backup(&self, to: PathBuf, reply: RpcReplyPort<Result<BackupReport, BackupError>>) {
        if self.backup_running.swap(true, Ordering::AcqRel) {
            tracing::warn!(to = %to.display(), "backup refused: another one is in progress");
            let _ = reply.send(Err(BackupError::Busy));
            return;
        }
        let slot = BackupSlot(Arc::clone(&self.backup_running));
        let source = self.backend.snapshot();
        let spawned = std::thread::Builder::new()
            .name("llmgram-backup".into())
            .spawn(move || {
                let _slot = slot;
                let started = Instant::now();
                let copied = B::write_backup(&source, &to);
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
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::path::Path;

    use ractor::concurrency::{OneshotReceiver, oneshot};

    use super::*;
    use crate::config::Config;
    use crate::store::db::OpenStore;
    use crate::store::record::ChatRecord;
    use crate::store::{chat_key, session_key};
    use crate::telegram::inbound::{ChatId, InboundKind};

    type TestResult = Result<(), Box<dyn Error>>;

    /// Storage settings for a store in `dir`, gathering a batch for
    /// `interval`.
    fn storage(dir: &Path, interval: &str) -> Result<StorageConfig, Box<dyn Error>> {
        let config = Config::from_defaults_with(&format!(
            "storage.path = \"{}\"\nstorage.commit_interval = \"{interval}\"\n",
            dir.display()
        ))?;
        Ok(config.storage)
    }

    fn port<T>() -> (RpcReplyPort<T>, OneshotReceiver<T>) {
        let (tx, rx) = oneshot();
        (RpcReplyPort::from(tx), rx)
    }

    fn update(update_id: u32, chat_id: i64, text: &str) -> Inbound {
        Inbound {
            update_id,
            key: SessionKey::of_chat(ChatId(chat_id)),
            user_id: Some(7),
            language_code: None,
            kind: InboundKind::Text(text.into()),
            received_at: Instant::now(),
            sent_at: None,
            refused: None,
            speaker: None,
            message_id: None,
            reply_to: None,
        }
    }

    /// An encoded chat record told apart by `marker`.
    fn record(marker: u32) -> Result<Vec<u8>, Box<dyn Error>> {
        let record = ChatRecord {
            recent_updates: vec![marker],
            ..ChatRecord::default()
        };
        Ok(record::encode_chat(&record)?)
    }

    fn commit(
        writer: &StoreWriter,
        chat_id: i64,
        update_id: u32,
        change: RecordChange,
    ) -> OneshotReceiver<Result<(), StoreError>> {
        let (reply, answer) = port();
        writer.submit(StoreOp::CommitTurn {
            key: SessionKey::of_chat(ChatId(chat_id)),
            update_id,
            also_answered: Vec::new(),
            change,
            reply,
        });
        answer
    }

    fn admit(writer: &StoreWriter, updates: Vec<Inbound>) -> Result<Vec<u32>, Box<dyn Error>> {
        let (reply, answer) = port();
        writer.submit(StoreOp::Admit { updates, reply });
        Ok(answer
            .blocking_recv()??
            .iter()
            .map(|u| u.update_id)
            .collect())
    }

    fn pending(writer: &StoreWriter) -> Result<Vec<u32>, Box<dyn Error>> {
        let (reply, answer) = port();
        writer.submit(StoreOp::Read(ReadOp::PendingUpdates { reply }));
        Ok(answer
            .blocking_recv()??
            .iter()
            .map(|u| u.update_id)
            .collect())
    }

    /// Waits until every operation queued before is served (a read is
    /// answered after its batch's writes).
    fn settle(writer: &StoreWriter) -> Result<(), Box<dyn Error>> {
        let (reply, answer) = port();
        writer.submit(StoreOp::Read(ReadOp::NewestUpdateId { reply }));
        answer.blocking_recv()??;
        Ok(())
    }

    /// Drops the writer and waits for the thread's final persist.
    fn stop(writer: StoreWriter, thread: JoinHandle<()>) -> TestResult {
        drop(writer);
        thread.join().map_err(|_| "writer thread panicked")?;
        Ok(())
    }

    fn update_ids(store: &OpenStore) -> Result<Vec<u32>, Box<dyn Error>> {
        let mut ids = Vec::new();
        for item in store.updates.iter() {
            ids.extend(super::super::update_from_key(&item.key()?));
        }
        Ok(ids)
    }

    #[test]
    fn commits_queued_together_are_one_batch_all_acknowledged_and_durable() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (writer, thread) = StoreWriter::start(&storage(dir.path(), "300ms")?)?;
        let answers = (1..=5)
            .map(|chat| {
                Ok(commit(
                    &writer,
                    chat,
                    100 + chat as u32,
                    RecordChange::Put(record(chat as u32)?),
                ))
            })
            .collect::<Result<Vec<_>, Box<dyn Error>>>()?;
        for answer in answers {
            answer.blocking_recv()??;
        }
        let stats = writer.stats();
        assert_eq!((stats.commits, stats.turns, stats.last_batch), (1, 5, 5));
        stop(writer, thread)?;

        let store = OpenStore::open(dir.path())?;
        for chat in 1..=5 {
            let bytes = store
                .chats
                .get(chat_key(ChatId(chat)))?
                .ok_or("record lost")?;
            let record = record::decode_chat(&bytes)?;
            assert_eq!(record.recent_updates, vec![chat as u32]);
        }
        assert_eq!(update_ids(&store)?, vec![101, 102, 103, 104, 105]);
        Ok(())
    }

    #[test]
    fn admission_skips_known_updates_and_pending_keeps_arrival_order() -> TestResult {
        let dir = tempfile::tempdir()?;
        let config = storage(dir.path(), "1ms")?;
        let (writer, thread) = StoreWriter::start(&config)?;
        assert_eq!(
            admit(&writer, vec![update(10, 1, "a"), update(11, 2, "b")])?,
            vec![10, 11]
        );
        // 11 again is skipped; 5 arrives later, so it comes after them
        // although its id is lower (Telegram started its ids over).
        assert_eq!(
            admit(&writer, vec![update(11, 2, "b"), update(5, 1, "c")])?,
            vec![5]
        );
        assert_eq!(pending(&writer)?, vec![10, 11, 5]);
        commit(&writer, 2, 11, RecordChange::Keep).blocking_recv()??;
        assert_eq!(pending(&writer)?, vec![10, 5]);
        stop(writer, thread)?;

        // After a restart the order holds and admission numbers go on.
        let (writer, thread) = StoreWriter::start(&config)?;
        assert_eq!(pending(&writer)?, vec![10, 5]);
        assert_eq!(
            admit(&writer, vec![update(3, 3, "d"), update(11, 2, "b")])?,
            vec![3]
        );
        assert_eq!(pending(&writer)?, vec![10, 5, 3]);
        stop(writer, thread)
    }

    #[test]
    fn a_confirmed_offset_prunes_answered_markers_below_it_and_keeps_the_rest() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (writer, thread) = StoreWriter::start(&storage(dir.path(), "1ms")?)?;
        let updates = (1..=5).map(|id| update(id, 1, "x")).collect();
        assert_eq!(admit(&writer, updates)?, vec![1, 2, 3, 4, 5]);
        for id in [1, 2, 4] {
            commit(&writer, 1, id, RecordChange::Keep).blocking_recv()??;
        }
        writer.submit(StoreOp::Prune { below: 4 });
        settle(&writer)?;
        // Answered 1 and 2 are gone; pending 3, answered 4 (not yet
        // confirmed) and pending 5 stay.
        assert_eq!(pending(&writer)?, vec![3, 5]);
        // The prune point moved: answering 3, below it, leaves no marker.
        commit(&writer, 1, 3, RecordChange::Keep).blocking_recv()??;
        stop(writer, thread)?;

        let store = OpenStore::open(dir.path())?;
        assert_eq!(update_ids(&store)?, vec![4, 5]);
        Ok(())
    }

    #[test]
    fn forget_in_a_topic_deletes_every_record_of_the_chat_and_keeps_each_spend() -> TestResult {
        use teloxide::types::{MessageId, ThreadId};
        let dir = tempfile::tempdir()?;
        let (writer, thread) = StoreWriter::start(&storage(dir.path(), "1ms")?)?;
        let forum = ChatId(-1_005);
        let topic = |n| SessionKey::new(forum, Some(ThreadId(MessageId(n))));
        let spent = ChatRecord {
            counters: record::ChatCounters {
                usage_day: 9,
                tokens_today: 77,
                ..record::ChatCounters::default()
            },
            ..ChatRecord::default()
        };
        let put = |key: SessionKey, update_id, bytes: Vec<u8>| {
            let (reply, answer) = port();
            writer.submit(StoreOp::CommitTurn {
                key,
                update_id,
                also_answered: Vec::new(),
                change: RecordChange::Put(bytes),
                reply,
            });
            answer
        };
        put(SessionKey::of_chat(forum), 1, record(1)?).blocking_recv()??;
        put(topic(3), 2, record::encode_chat(&spent)?).blocking_recv()??;
        put(topic(4), 3, record(3)?).blocking_recv()??;
        // A neighbouring chat is not touched.
        put(SessionKey::of_chat(ChatId(-1_004)), 4, record(4)?).blocking_recv()??;
        let (reply, answer) = port();
        writer.submit(StoreOp::CommitTurn {
            key: topic(4),
            update_id: 5,
            also_answered: Vec::new(),
            change: RecordChange::Forget(None),
            reply,
        });
        answer.blocking_recv()??;
        stop(writer, thread)?;

        let store = OpenStore::open(dir.path())?;
        let left: Vec<Option<SessionKey>> = store
            .chats
            .iter()
            .map(|item| Ok(super::super::session_from_key(&item.key()?)))
            .collect::<Result<_, Box<dyn Error>>>()?;
        assert_eq!(left, vec![Some(SessionKey::of_chat(ChatId(-1_004)))]);
        let usage = store
            .usage
            .get(session_key(&topic(3)))?
            .ok_or("the topic's spend is kept")?;
        assert_eq!(record::decode_usage(&usage)?.tokens_today, 77);
        assert!(store.usage.get(session_key(&topic(4)))?.is_none());
        Ok(())
    }

    #[test]
    fn a_stopped_writer_answers_unavailable() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (writer, thread) = StoreWriter::start(&storage(dir.path(), "1ms")?)?;
        let (ops, receiver) = mpsc::channel();
        drop(receiver);
        let gone = StoreWriter {
            ops,
            counters: Arc::clone(&writer.counters),
            listener: Arc::clone(&writer.listener),
        };
        let answer = commit(&gone, 1, 1, RecordChange::Keep);
        assert_eq!(answer.blocking_recv()?, Err(StoreError::Unavailable));
        stop(writer, thread)
    }
}
