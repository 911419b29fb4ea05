//! Session: one conversation — a chat, or one topic of a forum supergroup
//! (its [`SessionKey`]). Answers the conversation's updates one at a time,
//! in order, and owns its bounded history; every send goes to its chat and
//! topic, and its record is stored under its key.
//!
//! - **Supervised by:** the session supervisor; evicted when idle and
//!   re-created on the next message, re-created with its pending updates
//!   when it fails.
//! - **Messages:** [`SessionMsg::Handle`] (one update of this chat) and
//!   [`SessionMsg::FlushBurst`] (timer: the merge window closed).
//! - **State:** [`SessionState`]: the session key, its [`History`], settings and
//!   counters, and the recently answered update ids. Loaded from the
//!   persistence actor when the session starts; nobody else reads or writes
//!   it while the session lives. What belongs to one update lives in a
//!   `Turn` (`turn.rs`), which ends with the update, so nothing of it can leak into
//!   the next.
//! - **Per update** (`on_update`): an update among the chat's recently
//!   answered ones was answered before (Telegram or a restart delivered it
//!   again) and is skipped. Ids are only compared for equality: Telegram
//!   starts them over at a random value after a week without updates. A
//!   refused update gets its notice (`admission.rs`). Otherwise one
//!   exhaustive `match` on what was sent (`respond`, `on_command`)
//!   picks the handler: the bot's own commands (`commands.rs`, `admin.rs`)
//!   answer from the locale texts; text and assistant commands go to the
//!   LLM (`llm_turn.rs`). The reply is handed to the outbox with the turn's
//!   commit (new record and the update marked answered), which the outbox's
//!   send task makes durable right after sending; only then does the
//!   session report `TurnFinished`. Only a process crash between sending
//!   and committing can repeat an answer; nothing is ever left unanswered.
//! - **Arrival and bursts** (`intake.rs`, the entry point): with
//!   `session.merge_window` set, a text waits (in the session's state, still
//!   pending at the supervisor) for the messages arriving right behind it;
//!   they are answered as one request, and the turn marks every merged
//!   update answered.
//! - **Streaming** (`llm.stream`; `llm_turn.rs`, `live.rs`): the answer's
//!   first text is sent as a message and then edited at most every
//!   `telegram.edit_interval` while it grows; the final text replaces it,
//!   with a note if the stream broke. A message arriving while an answer is
//!   written gets one "still writing" notice.
//! - **Memory** (one session per active chat, 100,000 must fit 1 GiB): the
//!   handler's future is boxed, so it exists only while a message is
//!   handled; `SessionDeps` and the system prompt are shared, not copied; what
//!   remains per idle session is mostly ractor's own (channels, task).
//! - **Failures:** LLM errors are expected: the user gets a fallback reply and
//!   the user message stays in the history. A panic is a bug: the supervisor
//!   hands the unanswered updates to a new session, which reloads the record.

mod admin;
mod admission;
mod buttons;
mod commands;
mod control;
mod draft;
mod fan_turn;
mod group_admin;
mod intake;
mod live;
mod llm_turn;
mod media_turn;
mod new_dialog;
mod persona;
mod reply_context;
mod summary;
mod turn;
mod usage;

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Notify;
use tracing::Instrument;

use super::SessionDeps;
use super::SessionSupMsg;
use crate::actors::root::persistence::patiently;
use crate::history::History;
use crate::input::{self, Rejection};
use crate::persona::Personas;
use crate::store::record::{self, ChatCounters, ChatRecord, ChatSettings};
use crate::telegram::command::Command;
use crate::telegram::inbound::{Inbound, InboundKind, SessionKey};
use crate::telemetry::{SecurityKind, security_event};
use turn::{Change, Reply, Turn};

/// Messages of a session.
pub(crate) enum SessionMsg {
    /// Answer this update (sent only by the session supervisor).
    Handle(Arc<Inbound>),
    /// Timer: the merge window of the texts waiting in `burst` is over (or
    /// nothing more is waiting), unless more arrived since `generation`.
    FlushBurst {
        /// The burst's generation when the timer was set.
        generation: u64,
    },
    /// The running summary of the turns that left the history is written
    /// (`None`: it failed); sent by the session's own summary task
    /// (`summary.rs`).
    Summarized {
        /// The new summary.
        summary: Option<String>,
        /// The summary generation it was asked under (`/reset` and
        /// `/forget` void earlier ones).
        generation: u64,
        /// The turn whose evicted messages it folds in; storing it
        /// re-commits that turn.
        update_id: u32,
    },
}

/// Signals from the session supervisor that must reach a session while it is
/// busy writing an answer (its mailbox waits behind that answer).
#[derive(Debug, Default)]
pub struct ChatSignals {
    /// The user sent `/cancel`.
    pub cancel: Notify,
    /// Another message for this chat arrived.
    pub arrived: Notify,
    /// A Business fan chat: the creator's own messages handed to the
    /// session so far (counted by the supervisor on arrival).
    pub owner_arrived: std::sync::atomic::AtomicU64,
    /// A Business fan chat: the creator's own messages the session has
    /// taken into the history so far. Fewer than arrived means the creator
    /// wrote after the message being answered: an automatic answer waiting
    /// for `business.auto_after` is dropped.
    pub owner_taken: std::sync::atomic::AtomicU64,
    /// The creator wrote in this fan chat (wakes an `auto_after` wait).
    pub owner_spoke: Notify,
}

/// Arguments of a session.
pub(crate) struct SessionArgs {
    /// The conversation this session serves: a chat, or a forum topic.
    pub(crate) key: SessionKey,
    /// Shared dependencies.
    pub(crate) deps: Arc<SessionDeps>,
    /// The personas (system prompts), shared by all sessions.
    pub(crate) personas: Arc<Personas>,
    /// Where `TurnFinished` goes.
    pub(crate) supervisor: ActorRef<SessionSupMsg>,
    /// Wakes the session's answer in flight (`/cancel`, new messages).
    pub(crate) signals: Arc<ChatSignals>,
    /// Whether to merge bursts (`session.merge_window`). Off for a session
    /// replacing one that crashed: a merged request that crashes must not
    /// take innocent messages down with it, so each is retried alone.
    pub(crate) merge: bool,
}

/// The session actor.
pub(crate) struct Session;

/// A session's state: the chat's, kept from one update to the next. What
/// belongs to one update is in its `Turn`.
pub(crate) struct SessionState {
    /// The conversation: every send goes to its chat (and topic), and its
    /// record is stored under it.
    key: SessionKey,
    history: History,
    /// What the turns that left the history said (stored; written by the
    /// LLM once the history overflows, `summary.rs`).
    summary: Option<String>,
    /// Turns dropped from the history and not yet summarised (not stored).
    unsummarized: Vec<crate::llm::ChatMessage>,
    /// A summary request is running.
    summary_in_flight: bool,
    /// Bumped by `/reset` and `/forget`: summaries asked before are void.
    summary_generation: u64,
    /// This session, for its summary task's answer.
    myself: ActorRef<SessionMsg>,
    settings: ChatSettings,
    counters: ChatCounters,
    /// The chat's recently answered update ids, oldest first (stored).
    recent_updates: Vec<u32>,
    /// The store has no record of this chat yet: its first answer waits for
    /// the new-chat admission limit.
    is_new: bool,
    /// Another instance owns the conversation (a shared store refused to
    /// give it to this one): the session answers nothing and is being
    /// stopped by its supervisor.
    fenced: bool,
    /// Wakes the answer in flight (`/cancel`, new messages).
    signals: Arc<ChatSignals>,
    /// A Business fan chat: which history message each recent Telegram
    /// message became (the same allocation), newest last, at most
    /// [`fan_turn::TRACKED`]; a deletion removes them from the history.
    /// Stored as hashes of the turns' texts ([`record::FanRecord`]) and
    /// matched to the history again on load.
    fan_messages: std::collections::VecDeque<(crate::telegram::inbound::MessageId, Arc<str>)>,
    /// A Business fan chat: the suggestion waiting for the creator
    /// (`draft.rs`; stored).
    draft: Option<record::StoredDraft>,
    /// A Business fan chat: the newest suggestion's number (stored).
    draft_seq: u32,
    /// Texts waiting for the merge window to close, oldest first; still
    /// pending at the supervisor, so a crash loses none of them.
    burst: Vec<Arc<Inbound>>,
    /// Bumped with each text added to `burst`: only the newest timer acts.
    burst_generation: u64,
    /// `session.merge_window`, or zero when this session does not merge.
    merge_window: std::time::Duration,
    /// Whether an album's updates are held and answered together (not in
    /// a session replacing one that crashed: each is retried alone).
    merges_albums: bool,
    /// An answer (or an admission wait) was cancelled by a `/cancel` that
    /// is still to be handled: that `/cancel` says nothing, since the
    /// cancelled turn already said so.
    cancel_answered: bool,
    /// An assistant command sent without text: the next text is its input.
    /// Not stored; an evicted or restarted session forgets it.
    awaiting_input: Option<String>,
    /// The last answer to a text, for an edit of that text
    /// (`session.edit_window`); not stored, so an edit after a restart or
    /// an eviction is ignored.
    last_answer: Option<turn::LastAnswer>,
    /// The last Regenerate carried out, for a second press of its button
    /// (`buttons.rs`); not stored.
    regenerated: Option<buttons::Regenerated>,
    /// Group members' admin status as Telegram last said it (groups only;
    /// `telegram.admin_status_cache`). Not stored.
    admin_statuses: Vec<group_admin::CachedStatus>,
    deps: Arc<SessionDeps>,
    supervisor: ActorRef<SessionSupMsg>,
    /// The personas (system prompts), shared by all sessions.
    personas: Arc<Personas>,
    /// The chat's own system prompt (`settings.custom_prompt`) as last
    /// sent, shared by its requests instead of copied for each
    /// (`persona.rs` keeps it in step with the settings).
    own_prompt: Option<Arc<str>>,
}

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let session = &args.deps.config.session;
        Ok(SessionState {
            key: args.key,
            history: History::new(session.max_messages, session.max_history_chars),
            summary: None,
            unsummarized: Vec::new(),
            summary_in_flight: false,
            summary_generation: 0,
            myself,
            settings: ChatSettings::default(),
            counters: ChatCounters::default(),
            recent_updates: Vec::new(),
            fenced: false,
            is_new: true,
            awaiting_input: None,
            admin_statuses: Vec::new(),
            last_answer: None,
            regenerated: None,
            signals: Arc::clone(&args.signals),
            fan_messages: std::collections::VecDeque::new(),
            draft: None,
            draft_seq: 0,
            burst: Vec::new(),
            burst_generation: 0,
            merges_albums: args.merge,
            merge_window: if args.merge {
                session.merge_window
            } else {
                std::time::Duration::ZERO
            },
            cancel_answered: false,
            personas: args.personas,
            own_prompt: None,
            deps: args.deps,
            supervisor: args.supervisor,
        })
    }

    /// Loads the stored record. Runs in the session's own task, after the
    /// supervisor's `spawn` has returned, so the supervisor never waits on
    /// storage; updates queue in the mailbox meanwhile.
    async fn post_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // A predecessor's deliveries commit their turns when sent; wait for
        // them so the record below includes them.
        state
            .deps
            .directory
            .outbox()
            .flush(&state.key)
            .await
            .map_err(|_| crate::telegram::TelegramError::OutboxUnavailable)?;
        // A store away for a moment (a database restarting) is waited for
        // rather than failed on: a session failing at once would be
        // re-created at once, use up its redeliveries within the outage and
        // apologise for an update that is answered once the store is back.
        let loaded = patiently(&state.key, "chat load", || async {
            state
                .deps
                .directory
                .persistence()
                .load_chat(&state.key)
                .await
        })
        .await;
        let loaded = match loaded {
            Err(crate::store::StoreError::Fenced) => {
                // Its owner was told; the supervisor stops this session and
                // leaves the updates routed here to the owner.
                state.fenced = true;
                metrics::counter!(crate::telemetry::families::CLUSTER_FENCED, "at" => "load")
                    .increment(1);
                tracing::debug!(
                    chat_id = state.key.chat().0,
                    "chat owned by another instance; handed over"
                );
                state.supervisor.cast(SessionSupMsg::Fenced {
                    key: state.key.clone(),
                })?;
                return Ok(());
            }
            other => other?,
        };
        if let Some(stored) = loaded {
            state.is_new = false;
            let session = &state.deps.config.session;
            state.history = History::from_stored(
                stored.history,
                session.max_messages,
                session.max_history_chars,
            );
            state.settings = stored.settings;
            state.summary = stored.summary;
            state.counters = stored.counters;
            state.recent_updates = stored.recent_updates;
            if let Some(fan) = stored.fan {
                fan_turn::restore(state, fan);
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        message: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: ractor keeps its message loop (which embeds this future)
        // in one allocation for the actor's whole life, so an unboxed
        // answer's state machine (~5.7 KB) would stay allocated in every
        // idle session. Boxed, it exists only while a message is handled
        // (BENCHMARKS.md, "Memory").
        if state.fenced {
            // Another instance answers this conversation.
            return Ok(());
        }
        match message {
            SessionMsg::Handle(inbound) => {
                Box::pin(intake::on_arrival(&myself, state, inbound)).await?;
            }
            SessionMsg::FlushBurst { generation } => {
                if generation == state.burst_generation {
                    Box::pin(intake::answer_burst(state)).await?;
                }
            }
            SessionMsg::Summarized {
                summary,
                generation,
                update_id,
            } => {
                Box::pin(summary::on_summarized(
                    state, summary, generation, update_id,
                ))
                .await;
            }
        }
        Ok(())
    }
}

/// Answers one update (or several merged ones: `earlier` are the update ids
/// merged into `inbound`), in its own span.
async fn on_update(
    state: &mut SessionState,
    inbound: &Inbound,
    earlier: &[u32],
) -> Result<(), ActorProcessingErr> {
    let span = tracing::info_span!(
        "update",
        update_id = inbound.update_id,
        chat_id = state.key.chat().0,
        thread_id = state.key.thread_number(),
        merged = earlier.len()
    );
    async {
        #[cfg(feature = "chaos")]
        if crate::chaos::take_session_panic(&state.deps.directory, state.key.chat()) {
            panic!("chaos: session ordered to panic");
        }
        if state.answered_before(inbound.update_id) {
            tracing::info!("update answered before; skipped");
            return turn::finish(state, inbound.update_id, earlier);
        }
        if state.key.is_business() {
            return fan_turn::on_fan_update(state, inbound, earlier).await;
        }
        if let InboundKind::Callback(press) = &inbound.kind {
            return buttons::on_press(state, inbound, press, earlier).await;
        }
        let mut turn = Turn::new(&state.deps, inbound, earlier);
        turn.quote = inbound
            .reply_to
            .as_ref()
            .and_then(|quoted| reply_context::quote_line(&state.history, quoted));
        if let Some(refusal) = admission::refusal(state, &mut turn).await {
            turn.reply = refusal;
            turn.change = Change::Keep;
            turn::conclude(state, turn).await;
            return turn::finish(state, inbound.update_id, earlier);
        }
        if inbound.language_code.is_some() {
            state
                .settings
                .language_code
                .clone_from(&inbound.language_code);
        }
        if matches!(
            inbound.kind,
            InboundKind::Command(_) | InboundKind::Media(_)
        ) {
            // Another command means the user moved on.
            state.awaiting_input = None;
        }
        let fresh = new_dialog::begin(state, &inbound.kind, crate::clock::unix_millis());
        turn.reply = respond(state, &mut turn).await;
        if fresh {
            new_dialog::announce(&mut turn);
        }
        state.counters.answered += 1;
        turn::conclude(state, turn).await;
        summary::after_turn(state, inbound.update_id);
        let latency = inbound.received_at.elapsed();
        metrics::histogram!("llmgram_reply_latency_seconds").record(latency.as_secs_f64());
        tracing::debug!(latency_ms = latency.as_millis() as u64, "update finished");
        turn::finish(state, inbound.update_id, earlier)
    }
    .instrument(span)
    .await
}

/// The reply to what was sent: one `match` on it.
async fn respond(state: &mut SessionState, turn: &mut Turn<'_>) -> Reply {
    // In groups, what changes the group's shared conversation needs a group
    // administrator; the refusal leaves history and settings as they are.
    if let Some(denied) = group_admin::refusal(state, turn).await {
        return denied;
    }
    let inbound = turn.inbound;
    match &inbound.kind {
        InboundKind::Command(command) => on_command(state, turn, command).await,
        InboundKind::Text(text) => on_text(state, turn, text).await,
        InboundKind::Edited(text) => on_edit(state, turn, text).await,
        InboundKind::Media(media) => media_turn::on_media(state, turn, media).await,
        InboundKind::NonText => Reply::Plain(turn.texts.non_text.clone()),
        // Presses are handled before (`buttons.rs`), and context only
        // comes from fan chats (`fan_turn.rs`); nothing to say here.
        InboundKind::Callback(_)
        | InboundKind::Context { .. }
        | InboundKind::Deleted(_)
        | InboundKind::CreatorReply { .. } => Reply::Silent,
    }
}

/// The reply to a command: the one dispatch of every command there is.
async fn on_command(state: &mut SessionState, turn: &mut Turn<'_>, command: &Command) -> Reply {
    if command.is_admin_only() {
        if !state.deps.config.is_admin(turn.inbound.user_id) {
            security_event(SecurityKind::AdminCommandDenied);
            return Reply::Plain(turn.texts.not_allowed.clone());
        }
        tracing::info!(command = command.name(), "admin command");
    }
    if command.is_business() {
        if state.deps.config.business.enabled {
            return control::on_control(state, turn, command).await;
        }
        // Without Business these are what they were before it: unknown
        // commands, `/persona fans …` a persona's name (`persona.rs`), and
        // `/forget …` the chat's `/forget`.
        if !matches!(command, Command::Persona(_) | Command::ForgetFan(_)) {
            return commands::on_unknown(turn, command.name());
        }
    }
    match command {
        Command::Start => commands::on_start(turn),
        Command::Help => commands::on_help(state, turn),
        Command::Reset => commands::on_reset(state, turn),
        Command::Retry => commands::on_retry(state, turn).await,
        Command::Cancel => commands::on_cancel(state, turn),
        // `/forget FAN` without Business: `/forget`, as before.
        Command::Forget | Command::ForgetFan(_) => commands::on_forget(turn),
        Command::Usage(user) => usage::on_usage(state, turn, user.as_ref()).await,
        Command::Model(None) => admin::on_model_query(state, turn).await,
        Command::Model(Some(model)) => admin::on_model(state, turn, command.name(), model).await,
        Command::Persona(arg) => persona::on_persona(state, turn, arg),
        Command::Stats => admin::on_stats(state, turn).await,
        Command::Health => admin::on_health(state).await,
        Command::Ban(user) => admin::on_ban(state, turn, command.name(), user, true).await,
        Command::Unban(user) => admin::on_ban(state, turn, command.name(), user, false).await,
        Command::Assistant { name, args, .. } => {
            commands::on_assistant(state, turn, name, args).await
        }
        Command::Unknown(name) => commands::on_unknown(turn, name),
        // Answered above (`control.rs`).
        Command::Mode(_) | Command::Pause(_) | Command::Resume(_) | Command::Fans => Reply::Silent,
    }
}

/// The user edited a message: if it is the one last answered, within
/// `session.edit_window` and before anything else was sent, the edited text
/// is answered again, the shown answer edited in place, and the history
/// keeps the edited turn only. Any other edit is ignored (silently, marked
/// answered).
async fn on_edit(state: &mut SessionState, turn: &mut Turn<'_>, text: &str) -> Reply {
    let window = state.deps.config.session.edit_window;
    let last = state.last_answer.take().filter(|last| {
        !window.is_zero()
            && turn.inbound.message_id == Some(last.user_message)
            && last.at.elapsed() <= window
    });
    let Some(last) = last else {
        tracing::debug!("edit of an older message ignored");
        turn.change = Change::Keep;
        turn.ignored_edit = true;
        return Reply::Silent;
    };
    tracing::info!("last message edited; answering it again");
    // The replaced exchange leaves the history; the new one takes its place.
    state.history.take_last_question();
    turn.replaces = last.shown;
    on_text(state, turn, text).await
}

/// Text for the assistant: checked, then answered by the LLM (or used as
/// the input an assistant command asked for).
async fn on_text(state: &mut SessionState, turn: &mut Turn<'_>, text: &str) -> Reply {
    let limit = if turn.earlier.is_empty() {
        state.deps.config.input.max_chars
    } else {
        state.deps.config.input.max_merged_chars
    };
    let cleaned = match input::validate(text, limit) {
        Ok(cleaned) => cleaned,
        Err(Rejection::Empty) => {
            metrics::counter!("llmgram_rejected_inputs_total", "reason" => "empty").increment(1);
            return Reply::Plain(turn.texts.empty_text.clone());
        }
        Err(Rejection::TooLong { length, limit }) => {
            metrics::counter!("llmgram_rejected_inputs_total", "reason" => "too_long").increment(1);
            return commands::too_long(turn, length, limit);
        }
    };
    if input::looks_like_injection(&cleaned) {
        // Answered as ordinary user text all the same: it only ever travels
        // as a user message.
        security_event(SecurityKind::InjectionPhrase);
    }
    if let Some(command) = state.awaiting_input.take() {
        return commands::run_assistant(state, turn, &command, &cleaned).await;
    }
    match &turn.inbound.speaker {
        // In a group the history names who said what.
        Some(speaker) => llm_turn::answer(state, turn, &format!("{speaker}: {cleaned}")).await,
        None => llm_turn::answer(state, turn, &cleaned).await,
    }
}

impl SessionState {
    /// Whether `update_id` is one of the chat's recently answered updates.
    fn answered_before(&self, update_id: u32) -> bool {
        self.recent_updates.contains(&update_id)
    }

    /// Adds a turn's updates to the recently answered ones, dropping the
    /// oldest beyond [`record::RECENT_UPDATES`] (never this turn's).
    fn note_answered(&mut self, earlier: &[u32], update_id: u32) {
        self.recent_updates
            .extend(earlier.iter().copied().chain([update_id]));
        let keep = record::RECENT_UPDATES.max(earlier.len() + 1);
        let excess = self.recent_updates.len().saturating_sub(keep);
        self.recent_updates.drain(..excess);
    }

    /// The chat's record as it stands, encoded; `None` (logged) if it does
    /// not encode.
    fn encoded_record(&self) -> Option<Vec<u8>> {
        let record = ChatRecord {
            history: self.history.to_stored(),
            settings: self.settings.clone(),
            counters: self.counters,
            recent_updates: self.recent_updates.clone(),
            summary: self.summary.clone(),
            fan: self.key.is_business().then(|| fan_turn::to_record(self)),
        };
        match record::encode_chat(&record) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                tracing::error!(%error, "cannot encode the chat record; turn not stored");
                None
            }
        }
    }
}
