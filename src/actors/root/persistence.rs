//! Persistence: the only door to the store. Loads chat records, admits
//! received updates durably before they are routed, commits each answered
//! turn, and replays unanswered updates after a restart.
//!
//! - **Supervised by:** root, permanent; started first, stopped last.
//! - **Messages:** [`PersistenceMsg::LoadChat`], [`PersistenceMsg::AdmitUpdates`],
//!   [`PersistenceMsg::CommitTurn`], [`PersistenceMsg::PendingUpdates`],
//!   [`PersistenceMsg::NewestUpdateId`], [`PersistenceMsg::Confirmed`],
//!   [`PersistenceMsg::PendingOf`], [`PersistenceMsg::Release`],
//!   [`PersistenceMsg::LoadSetting`], [`PersistenceMsg::SaveSetting`],
//!   [`PersistenceMsg::Backup`], [`PersistenceMsg::Stats`], and
//!   [`PersistenceMsg::WriterFailed`] from its writer.
//! - **State:** the [`StoreWriter`], the handle of the store's writer
//!   thread. The actor never touches the disk: it translates each request
//!   one-to-one into a [`StoreOp`] and queues it, so its mailbox never waits
//!   on I/O. The writer (see [`crate::store::writer`]) runs operations in
//!   arrival order with group commit, and outlives restarts of this actor;
//!   it is the only writer of the database, and this actor the only holder
//!   of its handle.
//! - **Bad data:** a chat record that does not decode is quarantined by the
//!   store and the chat starts fresh (see [`crate::store`]).
//! - **Failures:** if fjall reports itself poisoned (a failed fsync) the
//!   writer stops for good and the actor fails with
//!   [`StoreError::Poisoned`], which root escalates at once: the process
//!   exits non-zero rather than write into a poisoned store. Any other
//!   failure of the actor restarts it; requests in its mailbox are lost and
//!   their callers send them again.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::actors::directory::{Address, Child, Directory, Unavailable};
use crate::config::CommandConfig;
use crate::retry::Backoff;
use crate::store::backup::{BackupError, BackupReport};
use crate::store::record::{self, BotSetting, ChatRecord};
use crate::store::writer::{ReadOp, StoreOp, StoreStats, StoreWriter};
use crate::store::{BotKey, StoreError};
use crate::telegram::inbound::{Inbound, SessionKey};

pub use crate::store::writer::RecordChange;

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

/// First wait before [`patiently`] tries again.
const PATIENCE_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between its tries.
const PATIENCE_MAX: Duration = Duration::from_secs(1);
/// How long it tries: a store away longer has cost a shared store's lease
/// anyway.
const PATIENCE_FOR: Duration = Duration::from_secs(10);

/// Runs `call` (a request about conversation `key`; `what` names it in the
/// log), trying again with backoff for up to 10 s while it fails on a
/// passing error ([`StoreError::is_passing`]): for callers that must not
/// give up at once, as a turn already sent (giving up answers it again) or
/// a session starting (failing at once would spend its redeliveries within
/// a database restart). Success and other errors return at once.
pub async fn patiently<T, F>(
    key: &SessionKey,
    what: &'static str,
    mut call: impl FnMut() -> F,
) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Backoff::new(PATIENCE_FIRST, PATIENCE_MAX);
    let deadline = tokio::time::Instant::now() + PATIENCE_FOR;
    loop {
        match call().await {
            Err(error) if error.is_passing() && tokio::time::Instant::now() < deadline => {
                tracing::warn!(
                    chat_id = key.chat().0,
                    what,
                    class = error.class(),
                    "store not answering yet; trying again"
                );
                tokio::time::sleep(backoff.next_delay()).await;
            }
            done => return done,
        }
    }
}

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

    /// The conversation's record (a chat's, or a forum topic's), once every
    /// earlier write is applied; `None` for a new one (or one whose corrupt
    /// record was quarantined).
    pub async fn load_chat(&self, key: &SessionKey) -> Result<Option<ChatRecord>, StoreError> {
        self.request(|reply| PersistenceMsg::LoadChat {
            key: key.clone(),
            reply,
        })
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

    /// Stores the conversation's record after a turn and marks the update
    /// (and `also_answered`) answered, atomically; `Ok` once durable.
    pub async fn commit_turn(
        &self,
        key: &SessionKey,
        update_id: u32,
        also_answered: &[u32],
        change: &RecordChange,
    ) -> Result<(), StoreError> {
        self.request(|reply| PersistenceMsg::CommitTurn {
            key: key.clone(),
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

    /// The unanswered updates of one conversation, in the order received
    /// (a conversation taken over from another instance answers these
    /// first).
    pub async fn pending_of(
        &self,
        key: &SessionKey,
        assistants: &[CommandConfig],
    ) -> Result<Vec<Inbound>, StoreError> {
        let stored = self
            .request(|reply| PersistenceMsg::PendingOf {
                key: key.clone(),
                reply,
            })
            .await?;
        Ok(stored
            .into_iter()
            .map(|update| update.into_inbound(assistants))
            .collect())
    }

    /// Gives up the conversation (its session was evicted), so another
    /// instance of a shared store may take it at once. Best effort: a lost
    /// release only makes another instance wait for this one's lease.
    pub fn release(&self, key: &SessionKey) {
        self.directory
            .cast_now(ADDRESS, PersistenceMsg::Release { key: key.clone() });
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
        /// The conversation.
        key: SessionKey,
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
        /// The conversation.
        key: SessionKey,
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
    /// The unanswered updates of one conversation, in the order received.
    PendingOf {
        /// The conversation.
        key: SessionKey,
        /// The updates, as stored.
        reply: RpcReplyPort<Result<Vec<record::StoredUpdate>, StoreError>>,
    },
    /// Give up the conversation: its session was evicted.
    Release {
        /// The conversation.
        key: SessionKey,
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
    /// directory outside `storage.path`, see
    /// [`crate::store::backup::prepare_target`])
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

/// The persistence actor.
pub(crate) struct Persistence;

/// The persistence actor's state.
pub(crate) struct PersistenceState {
    /// The writer thread's queue, shared with every earlier incarnation.
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
        // The writer tells the current incarnation when it stops for good.
        writer.set_failure_listener(move |error| {
            let _ = myself.cast(PersistenceMsg::WriterFailed { error });
        });
        Ok(PersistenceState { writer })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PersistenceMsg>,
        message: PersistenceMsg,
        state: &mut PersistenceState,
    ) -> Result<(), ActorProcessingErr> {
        let op = match message {
            #[cfg(feature = "chaos")]
            PersistenceMsg::Panic => panic!("chaos: ordered to panic"),
            PersistenceMsg::Stats { reply } => {
                let _ = reply.send(state.writer.stats());
                return Ok(());
            }
            PersistenceMsg::WriterFailed { error } => return Err(Box::new(error)),
            PersistenceMsg::LoadChat { key, reply } => {
                StoreOp::Read(ReadOp::LoadChat { key, reply })
            }
            PersistenceMsg::AdmitUpdates { updates, reply } => StoreOp::Admit { updates, reply },
            PersistenceMsg::CommitTurn {
                key,
                update_id,
                also_answered,
                change,
                reply,
            } => StoreOp::CommitTurn {
                key,
                update_id,
                also_answered,
                change,
                reply,
            },
            PersistenceMsg::PendingUpdates { reply } => {
                StoreOp::Read(ReadOp::PendingUpdates { reply })
            }
            PersistenceMsg::NewestUpdateId { reply } => {
                StoreOp::Read(ReadOp::NewestUpdateId { reply })
            }
            PersistenceMsg::PendingOf { key, reply } => {
                StoreOp::Read(ReadOp::PendingOf { key, reply })
            }
            PersistenceMsg::Release { key } => StoreOp::Release { key },
            PersistenceMsg::Confirmed { below } => StoreOp::Prune { below },
            PersistenceMsg::LoadSetting { key, reply } => {
                StoreOp::Read(ReadOp::LoadSetting { key, reply })
            }
            PersistenceMsg::SaveSetting {
                key,
                setting,
                reply,
            } => StoreOp::SaveSetting {
                key,
                setting,
                reply,
            },
            PersistenceMsg::Backup { to, reply } => StoreOp::Read(ReadOp::Backup { to, reply }),
        };
        state.writer.submit(op);
        Ok(())
    }
}
