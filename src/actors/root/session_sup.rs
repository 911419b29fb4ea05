//! Session supervisor: routes each update to its conversation's session
//! actor, creating the session on the conversation's first message and
//! evicting it when it goes idle. A conversation is a chat, or one topic of
//! a forum supergroup ([`SessionKey`]): each topic has its own session.
//!
//! - **Supervised by:** root, permanent.
//! - **Children:** one [`session::Session`] per active conversation,
//!   unnamed, linked.
//! - **Messages:** [`SessionSupMsg::Route`] (an update from the ingress),
//!   [`SessionSupMsg::TurnFinished`] (a session answered an update),
//!   [`SessionSupMsg::SessionDied`] (a session crashed; queued behind the
//!   session's own earlier messages), [`SessionSupMsg::SweepIdle`] (timer),
//!   [`SessionSupMsg::Stats`], [`SessionSupMsg::Close`] and
//!   [`SessionSupMsg::Drain`] (shutdown); on a shared store also
//!   [`SessionSupMsg::Fenced`] (another instance owns a conversation: its
//!   session stops) and [`SessionSupMsg::Earlier`] (a new conversation's
//!   earlier unanswered updates, read off this actor, go first).
//! - **State:** per conversation: the session's reference, the updates
//!   routed to it and not yet answered (`pending`), and when it was last
//!   active. This map is the only place user state is indexed, and only this
//!   actor touches it.
//! - **Ordering:** updates of one conversation go to one session whose
//!   mailbox handles them one at a time, so they are answered in order;
//!   different conversations (chats, topics) run in parallel.
//! - **`/forget` in a forum topic** deletes the records of every topic of
//!   the chat (the store does that); sessions of the chat's other topics
//!   that are idle are evicted when it is routed, so none writes its old
//!   history back (their next update loads from the store after the
//!   chat's deliveries, the `/forget` among them). One busy answering at
//!   that moment still commits its turn.
//! - **Eviction:** a session is stopped only when its `pending` queue is empty
//!   and it has been idle for `session.idle_timeout`. Because this actor is
//!   the only sender to sessions and decides eviction while handling one
//!   message, no update can be in a mailbox that eviction throws away. The
//!   maps are shrunk when mostly empty, so a past peak of chats does not
//!   keep their tables.
//! - **On a session's failure:** sessions are transient
//!   ([`SESSION_RESTART`], decided by [`wants_restart`]; a kill counts as a
//!   failure): a new session is spawned and every pending update is handed
//!   to it again in order; the update it crashed on is dropped with an
//!   apology after `session.max_redeliveries` attempts. The replacement
//!   reloads the chat's record from the store, so only the turn in progress
//!   is redone. An evicted session is not replaced: the chat's next update
//!   starts a new one.
//! - **On its own failure:** root restarts it with an empty map; sessions die
//!   with it (ractor stops linked children). The new supervisor replays every
//!   update the store holds as unanswered, so none is lost.

pub mod session;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::outbox::{Part, TurnCommit};
use super::persistence::RecordChange;
use super::{Exit, Restart, wants_restart};
use crate::actors::directory::{Address, Child, Directory, Unavailable};
use crate::config::Config;
use crate::llm::LlmClient;
use crate::ops::Health;
use crate::persona::Personas;
use crate::telegram::buttons::Action;
use crate::telegram::command::Command;
use crate::telegram::inbound::{Inbound, InboundKind, SessionKey};
use crate::telegram::transport::Transport;
use crate::texts::Locales;
use session::{ChatSignals, Session, SessionArgs, SessionMsg};

// API

/// Typed operations on the session supervisor.
#[derive(Clone, Copy)]
pub struct SessionSupHandle<'a> {
    directory: &'a Directory,
}

const ADDRESS: Address<SessionSupMsg> = Address::new(Child::SessionSup);

impl Directory {
    /// The session supervisor: routes updates to chats' sessions.
    pub fn session_sup(&self) -> SessionSupHandle<'_> {
        SessionSupHandle { directory: self }
    }
}

impl SessionSupHandle<'_> {
    /// Routes admitted updates to their chats' sessions, in order. Waits
    /// for a restarting supervisor up to the lookup timeout (`Err` then).
    /// A supervisor that dies while being handed the updates loses none:
    /// they are pending in the store and its successor replays them.
    pub async fn route(&self, updates: Vec<Inbound>) -> Result<(), Unavailable> {
        let sessions = self.directory.wait_for(ADDRESS).await?;
        for inbound in updates {
            if sessions
                .cast(SessionSupMsg::Route(Arc::new(inbound)))
                .is_err()
            {
                tracing::warn!("session supervisor gone while routing; it replays from the store");
                break;
            }
        }
        Ok(())
    }

    /// Another instance owns the conversation (a shared store fenced its
    /// session's load, send or commit): its session is stopped and what
    /// it had pending is left to the owner. Best effort.
    pub fn fenced(&self, key: &SessionKey) {
        self.directory
            .cast_now(ADDRESS, SessionSupMsg::Fenced { key: key.clone() });
    }

    /// The supervisor's counters; `Err` when it cannot be reached.
    pub async fn stats(&self) -> Result<SessionStats, Unavailable> {
        self.directory
            .call(ADDRESS, |reply| SessionSupMsg::Stats { reply })
            .await
    }

    /// Shutdown: route nothing more. What still arrives (a shared store's
    /// sweep, a hand-over from another instance) stays pending in the
    /// store: for the next start's replay or, once this instance has
    /// released its chats, for the other instances. Without it a drain in a
    /// busy deployment would never end, as the chats this instance owns
    /// keep receiving updates. What was routed before is still answered.
    pub fn close(&self) {
        self.directory.cast_now(ADDRESS, SessionSupMsg::Close);
    }

    /// Waits until no routed update is pending (every answer delivered),
    /// waiting for a restarting supervisor as any request does.
    pub async fn drain(&self) -> Result<(), Unavailable> {
        self.directory
            .call(ADDRESS, |reply| SessionSupMsg::Drain { reply })
            .await
    }

    /// Shutdown's drain: waits at most `grace` and does not wait for a
    /// supervisor that is not running. `false` if answers were still in
    /// flight when it gave up.
    pub async fn drain_within(&self, grace: std::time::Duration) -> bool {
        let Some(sessions) = self.directory.get(ADDRESS) else {
            return true;
        };
        matches!(
            sessions
                .call(|reply| SessionSupMsg::Drain { reply }, Some(grace))
                .await,
            Ok(ractor::rpc::CallResult::Success(()))
        )
    }

    /// Makes the supervisor panic (tests only); `false` if it is not running.
    #[cfg(feature = "chaos")]
    pub fn panic(&self) -> bool {
        self.directory.cast_now(ADDRESS, SessionSupMsg::Panic)
    }
}

/// Messages of the session supervisor.
pub(crate) enum SessionSupMsg {
    /// Panic at once: the chaos hook for tests (feature `chaos` only).
    #[cfg(feature = "chaos")]
    Panic,
    /// Hand this update to its chat's session (creating it if needed);
    /// shared, as the session and the pending queue hold it.
    Route(Arc<Inbound>),
    /// A session finished an update: answered and delivered, or gave up.
    TurnFinished {
        /// The conversation.
        key: SessionKey,
        /// The update that was finished.
        update_id: u32,
    },
    /// A session actor ended without being evicted. Sent by this actor to
    /// itself so it is handled after anything the session sent before dying.
    SessionDied {
        /// The conversation.
        key: SessionKey,
        /// The session that died (a newer one may exist already).
        session: ActorId,
        /// How it ended: a failure is restarted ([`SESSION_RESTART`]).
        exit: Exit,
    },
    /// A new conversation's earlier unanswered updates (shared store), read
    /// off this actor: they go first.
    Earlier {
        /// The conversation.
        key: SessionKey,
        /// Its unanswered updates, in the order received.
        earlier: Vec<Inbound>,
    },
    /// Another instance owns the conversation: stop its session and drop
    /// what it had pending (still unanswered in the shared store, where
    /// the owner finds it).
    Fenced {
        /// The conversation.
        key: SessionKey,
    },
    /// Timer: evict sessions idle for `session.idle_timeout`.
    SweepIdle,
    /// Counters for health checks and tests.
    Stats {
        /// The answer.
        reply: RpcReplyPort<SessionStats>,
    },
    /// Answer once no update is pending (shutdown waits on this).
    Drain {
        /// Answered when the last pending update is finished.
        reply: RpcReplyPort<()>,
    },
    /// Shutdown: route nothing more (see [`SessionSupHandle::close`]).
    Close,
}

/// Counters of the session supervisor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Sessions alive now.
    pub live: usize,
    /// Updates routed and not yet finished.
    pub pending: usize,
    /// Sessions evicted for idleness since start.
    pub evicted: u64,
    /// Sessions re-created after a crash since start.
    pub restarted: u64,
    /// Updates dropped after crashing their session too often.
    pub dropped: u64,
}

/// How sessions are restarted: OTP's *transient*. A session that fails is
/// re-created at once and handed its chat's pending updates again, in
/// order; one evicted when idle (stopped by this supervisor) or that stopped
/// by itself is not, and the chat's next update starts a new one.
pub(crate) const SESSION_RESTART: Restart = Restart::Transient;

/// What every session shares: built once by root's start function and
/// handed to each session as one `Arc` (not a copy per session).
pub(crate) struct SessionDeps {
    /// The whole configuration: sessions read `[llm]`, `[session]`,
    /// `[input]`, `[telegram]`, the admins and the assistant commands.
    pub(crate) config: Arc<Config>,
    /// To reach the store, the limiter, the pool and the outbox.
    pub(crate) directory: Directory,
    /// For `getChatMember` (admin commands in groups).
    pub(crate) transport: Transport,
    /// The providers, for `/health` and `/stats`.
    pub(crate) llm: Arc<[LlmClient]>,
    /// For `/health`.
    pub(crate) health: Arc<Health>,
    /// Reply texts.
    pub(crate) locales: Locales,
    /// Fetches the files of media messages (bounded downloads).
    pub(crate) fetcher: crate::media::fetch::Fetcher,
    /// Whether the store is shared with other instances (PostgreSQL):
    /// conversations are then taken and released.
    pub(crate) shared_store: bool,
}

/// What the session supervisor is built from.
pub(crate) struct SessionSupArgs {
    /// What its sessions (and it) depend on.
    pub(crate) sessions: SessionDeps,
}

/// The session supervisor.
pub(crate) struct SessionSup;

/// One chat's entry.
struct Entry {
    session: ActorRef<SessionMsg>,
    /// Wakes the session's answer in flight when the user sends `/cancel`
    /// or another message: the session is busy awaiting the LLM, so the
    /// message itself waits behind the answer.
    signals: Arc<ChatSignals>,
    /// Updates handed to the session and not finished, oldest first.
    pending: VecDeque<Arc<Inbound>>,
    last_active: Instant,
    /// How many sessions have crashed on the oldest pending update.
    head_crashes: u32,
    /// A shared store: the chat's earlier unanswered updates are being
    /// read (`take_over_earlier`); updates wait here, unsent to the
    /// session, until they are in front of them.
    awaiting_earlier: bool,
}

/// The session supervisor's state.
pub(crate) struct SessionSupState {
    /// Shared with every session: one `Arc` each instead of a copy of
    /// [`SessionDeps`] (~0.3 KB with its strings) per session.
    deps: Arc<SessionDeps>,
    /// The personas (system prompts), shared by every session instead of
    /// copied.
    personas: Arc<Personas>,
    /// Per conversation (chat, or forum topic).
    chats: HashMap<SessionKey, Entry>,
    chat_of: HashMap<ActorId, SessionKey>,
    /// Sum of `pending.len()` over all chats.
    pending: usize,
    stats: SessionStats,
    drain_waiters: Vec<RpcReplyPort<()>>,
    /// Set on [`SessionSupMsg::Close`]: updates routed from then on are
    /// left in the store.
    closing: bool,
    sweep_timer: JoinHandle<()>,
    /// Unanswered updates read from the store at start, routed in post_start.
    replay: Vec<Inbound>,
}

impl Actor for SessionSup {
    type Msg = SessionSupMsg;
    type State = SessionSupState;
    type Arguments = SessionSupArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionSupMsg>,
        args: SessionSupArgs,
    ) -> Result<SessionSupState, ActorProcessingErr> {
        let deps = args.sessions;
        // Read here, not in post_start: root waits for pre_start before it
        // starts the ingress, so on a fresh start the replay holds only
        // updates from before it, never one the ingress has just admitted
        // (whose rate-limit verdict the stored copy lacks).
        let replay = deps
            .directory
            .persistence()
            .pending_updates(&deps.config.commands)
            .await?;
        let sweep_timer = myself.send_interval(deps.config.session.sweep_interval, || {
            SessionSupMsg::SweepIdle
        });
        Ok(SessionSupState {
            personas: Arc::new(Personas::from_config(&deps.config)),
            deps: Arc::new(deps),
            chats: HashMap::new(),
            chat_of: HashMap::new(),
            pending: 0,
            stats: SessionStats::default(),
            drain_waiters: Vec::new(),
            closing: false,
            sweep_timer,
            replay,
        })
    }

    /// Routes the updates read by `pre_start`, before any `Route` in the
    /// mailbox, so replayed updates keep their place in each chat's order.
    async fn post_start(
        &self,
        myself: ActorRef<SessionSupMsg>,
        state: &mut SessionSupState,
    ) -> Result<(), ActorProcessingErr> {
        let replay = std::mem::take(&mut state.replay);
        if !replay.is_empty() {
            tracing::info!(count = replay.len(), "replaying unanswered updates");
        }
        for inbound in replay {
            on_route(&myself, state, Arc::new(inbound)).await?;
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionSupMsg>,
        state: &mut SessionSupState,
    ) -> Result<(), ActorProcessingErr> {
        state.sweep_timer.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionSupMsg>,
        message: SessionSupMsg,
        state: &mut SessionSupState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            #[cfg(feature = "chaos")]
            SessionSupMsg::Panic => panic!("chaos: ordered to panic"),
            SessionSupMsg::Route(inbound) => on_route(&myself, state, inbound).await?,
            SessionSupMsg::TurnFinished { key, update_id } => {
                on_turn_finished(state, &key, update_id);
            }
            SessionSupMsg::SessionDied { key, session, exit } => {
                on_session_died(&myself, state, key, session, exit).await?;
            }
            SessionSupMsg::Fenced { key } => on_fenced(state, &key),
            SessionSupMsg::Earlier { key, earlier } => on_earlier(state, &key, earlier),
            SessionSupMsg::SweepIdle => on_sweep_idle(state),
            SessionSupMsg::Stats { reply } => {
                let stats = SessionStats {
                    live: state.chats.len(),
                    pending: state.pending,
                    ..state.stats
                };
                let _ = reply.send(stats);
            }
            SessionSupMsg::Drain { reply } => {
                state.drain_waiters.push(reply);
                answer_drain_waiters(state);
            }
            SessionSupMsg::Close => state.closing = true,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SessionSupMsg>,
        event: SupervisionEvent,
        state: &mut SessionSupState,
    ) -> Result<(), ActorProcessingErr> {
        // Never fall back to ractor's default, which would stop this
        // supervisor whenever a session exits (including every eviction).
        let (cell, exit) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, Exit::Failed(error.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, Exit::terminated(reason)),
            _ => return Ok(()),
        };
        let session = cell.get_id();
        // Evicted sessions were removed from `chat_of` before being stopped.
        if let Some(key) = state.chat_of.remove(&session) {
            // Handle it behind whatever the session sent before dying (a
            // `TurnFinished` must not be overtaken, or a finished update
            // would be delivered twice).
            myself.cast(SessionSupMsg::SessionDied { key, session, exit })?;
        }
        Ok(())
    }
}

async fn on_route(
    myself: &ActorRef<SessionSupMsg>,
    state: &mut SessionSupState,
    inbound: Arc<Inbound>,
) -> Result<(), ActorProcessingErr> {
    if state.closing {
        tracing::debug!(
            update_id = inbound.update_id,
            "shutting down: left pending in the store"
        );
        return Ok(());
    }
    let key = &inbound.key;
    if matches!(
        inbound.kind,
        InboundKind::Command(Command::Forget | Command::ForgetFan(_))
    ) && inbound.refused.is_none()
        && !key.is_business()
    {
        evict_other_topics(state, key);
    }
    if !state.chats.contains_key(key) {
        let signals = Arc::new(ChatSignals::default());
        let session = spawn_session(myself, state, key, Arc::clone(&signals), true).await?;
        state.chats.insert(
            key.clone(),
            Entry {
                session,
                signals,
                pending: VecDeque::new(),
                last_active: Instant::now(),
                head_crashes: 0,
                awaiting_earlier: state.deps.shared_store,
            },
        );
        if state.deps.shared_store {
            take_over_earlier(myself, state, key);
        }
    }
    let Some(entry) = state.chats.get_mut(key) else {
        return Ok(());
    };
    // Replay and the ingress can both hand over an update admitted just
    // before a restart; one copy is enough.
    if entry
        .pending
        .iter()
        .any(|p| p.update_id == inbound.update_id)
    {
        return Ok(());
    }
    match &inbound.kind {
        InboundKind::Command(Command::Cancel) => {
            entry.signals.cancel.notify_waiters();
        }
        // The creator wrote in a fan chat: an automatic answer waiting
        // there (`business.auto_after`) is not sent.
        InboundKind::Context { by_owner: true, .. } => {
            entry
                .signals
                .owner_arrived
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            entry.signals.owner_spoke.notify_waiters();
        }
        // A press waits in line like a message but says nothing about it;
        // Stop wakes the answer in flight at once, as `/cancel` does.
        InboundKind::Callback(press) => {
            if let Some(Action::Stop { asker }) = press.action()
                && inbound.refused.is_none()
            {
                stop(&state.deps, &inbound, asker, Arc::clone(&entry.signals));
            }
        }
        // Only a session busy answering is waiting for this; it tells the
        // user once that the earlier answer comes first.
        _ if !entry.pending.is_empty() && inbound.refused.is_none() => {
            entry.signals.arrived.notify_waiters();
        }
        _ => {}
    }
    entry.pending.push_back(Arc::clone(&inbound));
    entry.last_active = Instant::now();
    state.pending += 1;
    // If the session has just died, the update stays pending and is handed
    // to its successor by `on_session_died`.
    if !entry.awaiting_earlier {
        let _ = entry.session.cast(SessionMsg::Handle(inbound));
    }
    Ok(())
}

/// Stop pressed: the answer in flight is woken as by `/cancel` when the
/// presser may (the chat's user, the asker, a bot admin, or a group
/// administrator, asked of Telegram in a task of its own so no other chat
/// waits). The session answers the press when it gets to it.
fn stop(deps: &Arc<SessionDeps>, inbound: &Inbound, asker: u64, signals: Arc<ChatSignals>) {
    let Some(presser) = inbound.user_id else {
        return;
    };
    let chat_id = inbound.key.chat();
    if chat_id.is_user() || presser == asker || deps.config.is_admin(Some(presser)) {
        signals.cancel.notify_waiters();
        return;
    }
    let transport = deps.transport.clone();
    let timeout = deps.config.telegram.admin_check_timeout;
    tokio::spawn(async move {
        let check = transport.is_chat_admin(chat_id, presser);
        if let Ok(Ok(true)) = tokio::time::timeout(timeout, check).await {
            signals.cancel.notify_waiters();
        }
    });
}

async fn spawn_session(
    myself: &ActorRef<SessionSupMsg>,
    state: &mut SessionSupState,
    key: &SessionKey,
    signals: Arc<ChatSignals>,
    merge: bool,
) -> Result<ActorRef<SessionMsg>, ActorProcessingErr> {
    let args = SessionArgs {
        key: key.clone(),
        signals,
        merge,
        deps: Arc::clone(&state.deps),
        personas: Arc::clone(&state.personas),
        supervisor: myself.clone(),
    };
    // Session start-up does no I/O, so waiting for it here is short.
    let (session, _) = Actor::spawn_linked(None, Session, args, myself.get_cell()).await?;
    state.chat_of.insert(session.get_id(), key.clone());
    metrics::gauge!("llmgram_sessions_active").increment(1.0);
    tracing::debug!(
        chat_id = key.chat().0,
        thread_id = key.thread_number(),
        "session started"
    );
    Ok(session)
}

fn on_turn_finished(state: &mut SessionSupState, key: &SessionKey, update_id: u32) {
    let Some(entry) = state.chats.get_mut(key) else {
        if state.deps.shared_store {
            // A fenced chat's session was dropped with its turn in flight
            // (another instance owns the chat): expected, not a bug.
            tracing::debug!(
                chat_id = key.chat().0,
                update_id,
                "turn finished for a chat handed to another instance"
            );
        } else {
            tracing::error!(
                chat_id = key.chat().0,
                thread_id = key.thread_number(),
                update_id,
                "turn finished for an unknown chat"
            );
        }
        return;
    };
    match entry.pending.front() {
        Some(head) if head.update_id == update_id => {
            entry.pending.pop_front();
            entry.head_crashes = 0;
            entry.last_active = Instant::now();
            state.pending -= 1;
            answer_drain_waiters(state);
        }
        head => tracing::error!(
            chat_id = key.chat().0,
            thread_id = key.thread_number(),
            update_id,
            head = head.map(|h| h.update_id),
            "turn finished out of order"
        ),
    }
}

async fn on_session_died(
    myself: &ActorRef<SessionSupMsg>,
    state: &mut SessionSupState,
    key: SessionKey,
    session: ActorId,
    exit: Exit,
) -> Result<(), ActorProcessingErr> {
    let Some(entry) = state.chats.get_mut(&key) else {
        return Ok(());
    };
    if entry.session.get_id() != session {
        return Ok(());
    }
    let restart = wants_restart(SESSION_RESTART, &exit);
    let reason = match &exit {
        Exit::Failed(error) => error.as_str(),
        Exit::Stopped(reason) => reason.as_str(),
    };
    tracing::warn!(chat_id = key.chat().0, thread_id = key.thread_number(), %reason, pending = entry.pending.len(), restart, "session died");
    if entry.pending.is_empty() || !restart {
        // Sessions never stop by themselves, so `!restart` with updates
        // pending is not expected; they stay stored as unanswered and the
        // next start of this supervisor replays them.
        let dropped = entry.pending.len();
        state.chats.remove(&key);
        state.pending -= dropped;
        metrics::gauge!("llmgram_sessions_active").decrement(1.0);
        answer_drain_waiters(state);
        return Ok(());
    }

    entry.head_crashes += 1;
    if entry.head_crashes > state.deps.config.session.max_redeliveries
        && let Some(poison) = entry.pending.pop_front()
    {
        state.pending -= 1;
        state.stats.dropped += 1;
        entry.head_crashes = 0;
        tracing::error!(
            chat_id = key.chat().0,
            thread_id = key.thread_number(),
            update_id = poison.update_id,
            "update crashed its session too often; dropped"
        );
        apologise(&state.deps, &poison);
    }
    let pending: Vec<Arc<Inbound>> = entry.pending.iter().cloned().collect();
    state.stats.restarted += 1;
    let signals = Arc::clone(&entry.signals);
    // The replacement answers each redelivered update alone.
    let replacement = spawn_session(myself, state, &key, signals, false).await?;
    // While the chat's earlier updates are read, nothing is handed over:
    // `on_earlier` hands everything, in order, to this replacement.
    if !state
        .chats
        .get(&key)
        .is_some_and(|entry| entry.awaiting_earlier)
    {
        for inbound in pending {
            let _ = replacement.cast(SessionMsg::Handle(inbound));
        }
    }
    if let Some(entry) = state.chats.get_mut(&key) {
        entry.session = replacement;
    }
    answer_drain_waiters(state);
    Ok(())
}

fn apologise(deps: &SessionDeps, inbound: &Inbound) {
    let texts = deps.locales.for_language(inbound.language_code.as_deref());
    let text = texts.internal_error.clone();
    let key = inbound.key.clone();
    // Marked answered, so a restart does not replay it into another crash.
    let commit = TurnCommit {
        key: None,
        update_id: inbound.update_id,
        also_answered: Vec::new(),
        change: RecordChange::Keep,
    };
    let directory = deps.directory.clone();
    // A Business fan chat is written in as the creator: the bot's own
    // apology never goes there (the update is only marked answered).
    let parts = if key.is_business() {
        Vec::new()
    } else {
        vec![Part::plain(text)]
    };
    // Not awaited: this actor must not wait on Telegram.
    tokio::spawn(async move {
        let sent = directory
            .outbox()
            .deliver(&key, &parts, Some(&commit))
            .await;
        if sent.is_err() {
            tracing::warn!(
                chat_id = key.chat().0,
                thread_id = key.thread_number(),
                "could not send the apology"
            );
        }
    });
}

fn on_sweep_idle(state: &mut SessionSupState) {
    let idle_timeout = state.deps.config.session.idle_timeout;
    let now = Instant::now();
    let idle: Vec<SessionKey> = state
        .chats
        .iter()
        .filter(|(_, entry)| {
            entry.pending.is_empty() && now.duration_since(entry.last_active) >= idle_timeout
        })
        .map(|(key, _)| key.clone())
        .collect();
    for key in idle {
        evict(state, &key);
    }
    shrink(&mut state.chats);
    shrink(&mut state.chat_of);
}

/// A conversation new to this supervisor, on a shared store, may have
/// been another instance's, or received there: its unanswered updates are
/// read (off this actor: the read waits for the store's writer) and put in
/// front of the ones routed meanwhile, which wait unsent, so a take-over
/// answers in the order received ([`SessionSupMsg::Earlier`]).
fn take_over_earlier(myself: &ActorRef<SessionSupMsg>, state: &SessionSupState, key: &SessionKey) {
    let deps = Arc::clone(&state.deps);
    let (myself, key) = (myself.clone(), key.clone());
    tokio::spawn(async move {
        let earlier = deps
            .directory
            .persistence()
            .pending_of(&key, &deps.config.commands)
            .await;
        let earlier = earlier.unwrap_or_else(|error| {
            tracing::warn!(chat_id = key.chat().0, class = error.class(), %error, "cannot read the chat's unanswered updates; the sweep hands them over");
            Vec::new()
        });
        let _ = myself.cast(SessionSupMsg::Earlier { key, earlier });
    });
}

/// The chat's earlier unanswered updates were read: they go in front of
/// what was routed meanwhile (without repeats), and all of it to the
/// session, in order.
fn on_earlier(state: &mut SessionSupState, key: &SessionKey, earlier: Vec<Inbound>) {
    let Some(entry) = state.chats.get_mut(key) else {
        return;
    };
    let routed = std::mem::take(&mut entry.pending);
    let mut pending: VecDeque<Arc<Inbound>> = earlier
        .into_iter()
        .filter(|update| !routed.iter().any(|r| r.update_id == update.update_id))
        .map(Arc::new)
        .collect();
    state.pending += pending.len();
    pending.extend(routed);
    // Until now nothing was handed to the session (nor to a replacement,
    // should it have died meanwhile: `on_session_died` waits for this).
    for inbound in &pending {
        let _ = entry.session.cast(SessionMsg::Handle(Arc::clone(inbound)));
    }
    entry.pending = pending;
    entry.awaiting_earlier = false;
}

/// Another instance owns `key`: its session stops without answering, and
/// the updates it had pending stay unanswered in the shared store for the
/// owner (or for this instance's sweep, should the chat come back).
fn on_fenced(state: &mut SessionSupState, key: &SessionKey) {
    if let Some(entry) = state.chats.remove(key) {
        state.chat_of.remove(&entry.session.get_id());
        entry.session.stop(Some("fenced".into()));
        state.pending -= entry.pending.len();
        metrics::gauge!("llmgram_sessions_active").decrement(1.0);
        answer_drain_waiters(state);
        tracing::info!(
            chat_id = key.chat().0,
            thread_id = key.thread_number(),
            dropped = entry.pending.len(),
            "session stopped: another instance owns the chat"
        );
    }
}

/// Stops the session of `key`, if it has one, as idle.
fn evict(state: &mut SessionSupState, key: &SessionKey) {
    if let Some(entry) = state.chats.remove(key) {
        if state.deps.shared_store {
            // Queued behind the session's last commit (the writer runs in
            // order), so it never releases a turn still being written.
            state.deps.directory.persistence().release(key);
        }
        state.chat_of.remove(&entry.session.get_id());
        entry.session.stop(Some("idle".into()));
        state.stats.evicted += 1;
        metrics::gauge!("llmgram_sessions_active").decrement(1.0);
        metrics::counter!("llmgram_session_evictions_total").increment(1);
        tracing::debug!(
            chat_id = key.chat().0,
            thread_id = key.thread_number(),
            "session evicted"
        );
    }
}

/// `/forget` in one conversation of a chat deletes the records of all of
/// them (every forum topic, and the chat's own): the idle sessions of the
/// chat's other conversations are evicted, so none writes its history back
/// from memory. A session busy with updates is left to finish them.
fn evict_other_topics(state: &mut SessionSupState, key: &SessionKey) {
    if key.is_user() {
        return;
    }
    let others: Vec<SessionKey> = state
        .chats
        .iter()
        .filter(|(other, entry)| {
            other.chat() == key.chat() && *other != key && entry.pending.is_empty()
        })
        .map(|(other, _)| other.clone())
        .collect();
    for other in others {
        evict(state, &other);
    }
}

/// Gives back most of a map's table once it is mostly empty: a `HashMap`
/// keeps its largest capacity, which after a peak of 100,000 sessions is
/// ~15 MiB held for nobody. Halfway between, so a steady population is not
/// rehashed at every sweep.
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 4 * map.len() {
        map.shrink_to(2 * map.len());
    }
}

fn answer_drain_waiters(state: &mut SessionSupState) {
    if state.pending == 0 {
        for waiter in state.drain_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

#[cfg(test)]
mod tests;
