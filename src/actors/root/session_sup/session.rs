//! Session: one chat's conversation. Answers the chat's updates one at a
//! time, in order, and owns its bounded history.
//!
//! - **Supervised by:** the session supervisor; temporary (evicted when idle,
//!   re-created on the next message), redelivered on failure.
//! - **Messages:** [`SessionMsg::Handle`], one update of this chat.
//! - **State:** the chat id, its [`History`], settings and counters, and the
//!   recently answered update ids. Loaded from the persistence actor when the
//!   session starts; nobody else reads or writes it while the session lives.
//! - **Per update:** an update among the chat's recently answered ones
//!   (kept in its record) was answered before (Telegram or a restart
//!   delivered it again) and is skipped. Ids are only compared for
//!   equality: Telegram starts them over at a random value after a week
//!   without updates, so a newer update may have a lower id. Commands and bad input are answered from the locale texts
//!   without an LLM call; text goes to the LLM pool with the system prompt
//!   and the history, while "typing…" is shown; the answer is split to
//!   Telegram's size and handed to the outbox with the turn's commit (new
//!   record and the update marked answered), which the outbox's send task
//!   makes durably right after sending; only then does the session report
//!   `TurnFinished`. Only a process crash between sending and committing can
//!   repeat an answer; nothing is ever left unanswered.
//! - **Bursts** (`session/burst.rs`): with `session.merge_window` set, a text waits (in the
//!   session's state, still pending at the supervisor) for the messages
//!   arriving right behind it; a long piece of a cut paste waits out the
//!   window. They are answered as one request, and the turn marks every
//!   merged update answered.
//! - **Streaming** (`llm.stream`; `session/answer.rs`, `session/live.rs`): the answer's first text is sent as a
//!   message and then edited at most every `telegram.edit_interval` while it
//!   grows, continuing in new messages past Telegram's size; the final text
//!   replaces it, with a note if the stream broke. A message arriving while
//!   an answer is written gets one "still writing" notice.
//! - **Memory** (one session per active chat, 100,000 must fit 1 GiB): the
//!   handler's future is boxed, so it exists only while a message is
//!   handled; `SessionDeps` and the system prompt are shared, not copied; what
//!   remains per idle session is mostly ractor's own (channels, task).
//! - **Failures:** LLM errors are expected: the user gets a fallback reply and
//!   the user message stays in the history. A panic is a bug: the supervisor
//!   hands the unanswered updates to a new session, which reloads the record.

mod admin;
mod answer;
mod burst;
mod group_admin;
mod live;

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use teloxide::types::MessageId;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::Instrument;

use super::SessionDeps;
use super::SessionSupMsg;
use crate::actors::root::limiter::Slot;
use crate::actors::root::llm_pool::Overrides;
use crate::actors::root::outbox::{Delivered, Part, TurnCommit};
use crate::actors::root::persistence::RecordChange;
use crate::history::History;
use crate::input::{self, Rejection};
use crate::llm::client::StreamTo;
use crate::llm::{LlmError, Role};
use crate::store::record::{self, ChatCounters, ChatRecord, ChatSettings, ChatUsage};
use crate::telegram::inbound::{ChatId, Inbound, InboundKind, RefusalReason};
use crate::telegram::render::{OutgoingText, render_markdown, to_messages};
use crate::telegram::split::split_message;
use crate::telemetry::{SecurityKind, security_event};
use crate::texts::{Texts, fill};
use answer::{answer, answer_with, unix_day};
use burst::{answer_burst, on_arrival};
use live::LiveAnswer;

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
}

/// Signals from the session supervisor that must reach a session while it is
/// busy writing an answer (its mailbox waits behind that answer).
#[derive(Debug, Default)]
pub struct ChatSignals {
    /// The user sent `/cancel`.
    pub cancel: Notify,
    /// Another message for this chat arrived.
    pub arrived: Notify,
}

/// Arguments of a session.
pub(crate) struct SessionArgs {
    /// The chat this session serves.
    pub chat_id: ChatId,
    /// Shared dependencies.
    pub deps: Arc<SessionDeps>,
    /// `llm.system_prompt`, shared by all sessions.
    pub system_prompt: Arc<str>,
    /// Where `TurnFinished` goes.
    pub supervisor: ActorRef<SessionSupMsg>,
    /// Wakes the session's answer in flight (`/cancel`, new messages).
    pub signals: Arc<ChatSignals>,
    /// Whether to merge bursts (`session.merge_window`). Off for a session
    /// replacing one that crashed: a merged request that crashes must not
    /// take innocent messages down with it, so each is retried alone.
    pub merge: bool,
}

/// The session actor.
pub(crate) struct Session;

/// A session's state.
pub(crate) struct SessionState {
    chat_id: ChatId,
    history: History,
    settings: ChatSettings,
    counters: ChatCounters,
    /// The chat's recently answered update ids, oldest first (stored).
    recent_updates: Vec<u32>,
    /// The store has no record of this chat yet: its first answer waits for
    /// the new-chat admission limit.
    is_new: bool,
    /// The sender of the update being handled is an admin: no token budget.
    budget_exempt: bool,
    /// Wakes the answer in flight (`/cancel`, new messages).
    signals: Arc<ChatSignals>,
    /// Texts waiting for the merge window to close, oldest first; still
    /// pending at the supervisor, so a crash loses none of them.
    burst: Vec<Arc<Inbound>>,
    /// Bumped with each text added to `burst`: only the newest timer acts.
    burst_generation: u64,
    /// `session.merge_window`, or zero when this session does not merge.
    merge_window: std::time::Duration,
    /// The messages a streamed answer is shown in so far, and their texts;
    /// the final delivery edits them. Reset for each update.
    streamed: Vec<(MessageId, OutgoingText)>,
    /// An answer was cancelled and its `/cancel` not yet handled.
    cancelled: bool,
    /// The reply being built is the LLM's answer: Markdown, sent as text
    /// with entities. The bot's own texts are sent as they are. Reset for
    /// each update.
    reply_is_markdown: bool,
    /// An assistant command sent without text: the next text is its input.
    /// Not stored; an evicted or restarted session forgets it.
    awaiting_input: Option<String>,
    /// Group members' admin status as Telegram last said it (groups only;
    /// `telegram.admin_status_cache`). Not stored.
    admin_statuses: Vec<group_admin::CachedStatus>,
    deps: Arc<SessionDeps>,
    supervisor: ActorRef<SessionSupMsg>,
    system_prompt: Arc<str>,
}

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let session = &args.deps.config.session;
        Ok(SessionState {
            chat_id: args.chat_id,
            history: History::new(session.max_messages, session.max_history_chars),
            settings: ChatSettings::default(),
            counters: ChatCounters::default(),
            recent_updates: Vec::new(),
            is_new: true,
            awaiting_input: None,
            admin_statuses: Vec::new(),
            budget_exempt: false,
            reply_is_markdown: false,
            signals: Arc::clone(&args.signals),
            burst: Vec::new(),
            burst_generation: 0,
            merge_window: if args.merge {
                args.deps.config.session.merge_window
            } else {
                std::time::Duration::ZERO
            },
            streamed: Vec::new(),
            cancelled: false,
            system_prompt: args.system_prompt,
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
        let chat_id = state.chat_id;
        // A predecessor's deliveries commit their turns when sent; wait for
        // them so the record below includes them.
        state
            .deps
            .directory
            .outbox()
            .flush(chat_id)
            .await
            .map_err(|_| crate::telegram::TelegramError::OutboxUnavailable)?;
        let loaded = state
            .deps
            .directory
            .persistence()
            .load_chat(chat_id)
            .await?;
        if let Some(stored) = loaded {
            state.is_new = false;
            let session = &state.deps.config.session;
            state.history = History::from_stored(
                stored.history,
                session.max_messages,
                session.max_history_chars,
            );
            state.settings = stored.settings;
            state.counters = stored.counters;
            state.recent_updates = stored.recent_updates;
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
        match message {
            SessionMsg::Handle(inbound) => Box::pin(on_arrival(&myself, state, inbound)).await?,
            SessionMsg::FlushBurst { generation } => {
                if generation == state.burst_generation {
                    Box::pin(answer_burst(state)).await?;
                }
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
        chat_id = state.chat_id.0,
        merged = earlier.len()
    );
    on_handle(state, inbound, earlier).instrument(span).await
}

async fn on_handle(
    state: &mut SessionState,
    inbound: &Inbound,
    earlier: &[u32],
) -> Result<(), ActorProcessingErr> {
    #[cfg(feature = "chaos")]
    if crate::chaos::take_session_panic(&state.deps.directory, state.chat_id) {
        panic!("chaos: session ordered to panic");
    }
    state.streamed.clear();
    if state.answered_before(inbound.update_id) {
        tracing::info!("update answered before; skipped");
        return finish(state, inbound, earlier);
    }
    if let Some(refusal) = refusal(state, inbound).await {
        let commit = prepare_commit(state, inbound.update_id, earlier, Change::Keep);
        deliver(state, refusal, commit).await;
        return finish(state, inbound, earlier);
    }
    if inbound.language_code.is_some() {
        state
            .settings
            .language_code
            .clone_from(&inbound.language_code);
    }
    let texts = Arc::clone(
        state
            .deps
            .locales
            .for_language(inbound.language_code.as_deref()),
    );
    state.budget_exempt = state.deps.config.is_admin(inbound.user_id);
    state.reply_is_markdown = false;
    if matches!(inbound.kind, InboundKind::Command { .. }) {
        // Another command means the user moved on.
        state.awaiting_input = None;
    }
    let mut change = Change::Update;
    // In groups, what changes the group's shared conversation needs a group
    // administrator; the refusal leaves history and settings as they are.
    let denied = group_admin::refusal(state, inbound, &texts).await;
    let reply = match &inbound.kind {
        _ if denied.is_some() => denied.unwrap_or_default(),
        InboundKind::Command { name, .. } if name == "forget" => {
            change = Change::Forget;
            texts.forgotten.clone()
        }
        InboundKind::Command { name, .. } if name == "cancel" => {
            if std::mem::take(&mut state.cancelled) {
                // The cancelled answer already said so.
                String::new()
            } else {
                texts.nothing_to_cancel.clone()
            }
        }
        InboundKind::Command { name, .. } if name == "retry" => {
            match state.history.take_last_question() {
                Some(question) => answer(state, &texts, &question).await,
                None => texts.nothing_to_retry.clone(),
            }
        }
        InboundKind::Command { name, args } if ADMIN_COMMANDS.contains(&name.as_str()) => {
            admin::on_admin_command(state, inbound, &texts, name, args).await
        }
        InboundKind::Command { name, args } if state.deps.config.command(name).is_some() => {
            on_assistant_command(state, &texts, name, args).await
        }
        InboundKind::Command { name, .. } => on_command(state, &texts, name),
        InboundKind::NonText => texts.non_text.clone(),
        InboundKind::Text(text) => match input::validate(text, text_limit(state, earlier)) {
            Err(Rejection::Empty) => {
                metrics::counter!("llmgram_rejected_inputs_total", "reason" => "empty")
                    .increment(1);
                texts.empty_text.clone()
            }
            Err(Rejection::TooLong { length, limit }) => {
                metrics::counter!("llmgram_rejected_inputs_total", "reason" => "too_long")
                    .increment(1);
                fill(
                    &texts.too_long,
                    &[
                        ("length", &length.to_string()),
                        ("limit", &limit.to_string()),
                    ],
                )
            }
            Ok(cleaned) => {
                if input::looks_like_injection(&cleaned) {
                    // Answered as ordinary user text all the same: it only
                    // ever travels as a user message.
                    security_event(SecurityKind::InjectionPhrase);
                }
                match state.awaiting_input.take() {
                    Some(command) => run_command(state, &texts, &command, &cleaned).await,
                    None => match &inbound.speaker {
                        // In a group the history names who said what.
                        Some(speaker) => {
                            answer(state, &texts, &format!("{speaker}: {cleaned}")).await
                        }
                        None => answer(state, &texts, &cleaned).await,
                    },
                }
            }
        },
    };
    state.counters.answered += 1;
    let commit = prepare_commit(state, inbound.update_id, earlier, change);
    deliver(state, reply, commit).await;
    let latency = inbound.received_at.elapsed();
    metrics::histogram!("llmgram_reply_latency_seconds").record(latency.as_secs_f64());
    tracing::debug!(latency_ms = latency.as_millis() as u64, "update finished");
    finish(state, inbound, earlier)
}

/// The longest text accepted: one message's, or merged messages'.
fn text_limit(state: &SessionState, earlier: &[u32]) -> usize {
    let input = &state.deps.config.input;
    if earlier.is_empty() {
        input.max_chars
    } else {
        input.max_merged_chars
    }
}

/// Tells the supervisor the update (and those merged into it) is done.
fn finish(
    state: &SessionState,
    inbound: &Inbound,
    earlier: &[u32],
) -> Result<(), ActorProcessingErr> {
    for &update_id in earlier.iter().chain([&inbound.update_id]) {
        state.supervisor.cast(SessionSupMsg::TurnFinished {
            chat_id: state.chat_id,
            update_id,
        })?;
    }
    Ok(())
}

/// The reply (possibly none) when the update is not to be answered now: its
/// sender is over a rate limit, or the chat is new and new chats are being
/// admitted slowly. `None` when it is to be answered.
async fn refusal(state: &mut SessionState, inbound: &Inbound) -> Option<String> {
    let texts = state
        .deps
        .locales
        .for_language(inbound.language_code.as_deref());
    let seconds =
        |wait: std::time::Duration| (wait.as_secs_f64().ceil().max(1.0) as u64).to_string();
    if let Some(refused) = inbound.refused {
        tracing::info!(reason = ?refused.reason, notify = refused.notify, "refused");
        // One notice per window; later refused updates get no reply at all.
        if !refused.notify {
            return Some(String::new());
        }
        return Some(match refused.reason {
            RefusalReason::RateLimited { retry_in } => {
                fill(&texts.slow_down, &[("seconds", &seconds(retry_in))])
            }
            RefusalReason::Banned => texts.banned.clone(),
            RefusalReason::NotAllowed => texts.private_bot.clone(),
        });
    }
    if !state.is_new {
        return None;
    }
    // Bans and the allowlist were checked on arrival; admission only ever
    // delays, and refuses only when its queue is full. A limiter that is
    // away admits.
    let slot = state.deps.directory.limiter().admit_new_chat().await;
    match slot {
        Slot::After(wait) => {
            if !wait.is_zero() {
                security_event(SecurityKind::NewChatFlood);
                tracing::info!(
                    wait_ms = wait.as_millis() as u64,
                    "new chat waits for admission"
                );
                // This chat's own session waits; /cancel ends the wait.
                let cancelled = state.signals.cancel.notified();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = cancelled => {
                        tracing::info!("admission wait cancelled");
                        state.cancelled = true;
                        return Some(texts.cancelled.clone());
                    }
                }
            }
            state.is_new = false;
            None
        }
        Slot::Full { retry_in } => {
            security_event(SecurityKind::NewChatFlood);
            Some(fill(
                &texts.new_users_busy,
                &[("seconds", &seconds(retry_in))],
            ))
        }
    }
}

/// What a turn does to the stored record.
enum Change {
    /// Store the session's current record.
    Update,
    /// Delete the chat's record (`/forget`); what it spent stays (in the
    /// `usage` keyspace).
    Forget,
    /// Leave the record alone (the update was refused, not answered).
    Keep,
}

/// The turn's commit: the chat's record after it (or its deletion) with the
/// update marked answered. The outbox makes it right after sending the reply.
fn prepare_commit(
    state: &mut SessionState,
    update_id: u32,
    earlier: &[u32],
    change: Change,
) -> Option<TurnCommit> {
    state.note_answered(earlier, update_id);
    let change = match change {
        Change::Keep => RecordChange::Keep,
        Change::Forget => {
            state.history.clear();
            state.settings = ChatSettings::default();
            // The spend survives: a budget counts tokens, not conversation.
            state.counters = ChatCounters {
                usage_day: state.counters.usage_day,
                tokens_today: state.counters.tokens_today,
                ..ChatCounters::default()
            };
            let usage = ChatUsage {
                usage_day: state.counters.usage_day,
                tokens_today: state.counters.tokens_today,
            };
            if usage.tokens_today == 0 {
                RecordChange::Forget(None)
            } else {
                match record::encode_usage(&usage) {
                    Ok(bytes) => RecordChange::Forget(Some(bytes)),
                    Err(error) => {
                        tracing::error!(%error, "cannot encode the chat usage; turn not stored");
                        return None;
                    }
                }
            }
        }
        Change::Update => RecordChange::Put(state.encoded_record()?),
    };
    Some(TurnCommit {
        update_id,
        also_answered: earlier.to_vec(),
        change,
    })
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

/// A configured assistant command: its template filled with the text, or a
/// request for the text when none came with it.
async fn on_assistant_command(
    state: &mut SessionState,
    texts: &Texts,
    name: &str,
    args: &str,
) -> String {
    match input::validate(args, state.deps.config.input.max_chars) {
        Err(Rejection::Empty) => {
            state.awaiting_input = Some(name.to_owned());
            fill(
                &texts.command_needs_input,
                &[("command", &format!("/{name}"))],
            )
        }
        Err(Rejection::TooLong { length, limit }) => fill(
            &texts.too_long,
            &[
                ("length", &length.to_string()),
                ("limit", &limit.to_string()),
            ],
        ),
        Ok(cleaned) => run_command(state, texts, name, &cleaned).await,
    }
}

/// Fills the command's template with `cleaned` in one pass (the text can
/// never add a placeholder) and asks the LLM, with the command's model and
/// temperature.
async fn run_command(state: &mut SessionState, texts: &Texts, name: &str, cleaned: &str) -> String {
    let Some(command) = state.deps.config.command(name).cloned() else {
        return answer(state, texts, cleaned).await;
    };
    if input::looks_like_injection(cleaned) {
        security_event(SecurityKind::InjectionPhrase);
    }
    let prompt = fill(&command.template, &[("input", cleaned)]);
    let overrides = Overrides {
        model: command.model.as_deref().map(Arc::from),
        temperature: command.temperature,
    };
    answer_with(state, texts, &prompt, overrides).await
}

fn on_command(state: &mut SessionState, texts: &Texts, name: &str) -> String {
    match name {
        "start" => texts.start.clone(),
        "help" => {
            let language = crate::texts::language_key(state.settings.language_code.as_deref());
            let mut help = texts.help.clone();
            for command in &state.deps.config.commands {
                let description = command
                    .description
                    .get(language)
                    .or_else(|| command.description.get("en"))
                    .map_or("", String::as_str);
                help.push_str(&format!("\n/{} — {description}", command.name));
            }
            help
        }
        "usage" => {
            let tokens = if state.counters.usage_day == unix_day() {
                state.counters.tokens_today
            } else {
                0
            };
            let budget = state.deps.config.llm.daily_token_budget;
            if budget == 0 {
                fill(&texts.usage_unlimited, &[("tokens", &tokens.to_string())])
            } else {
                fill(
                    &texts.usage,
                    &[
                        ("tokens", &tokens.to_string()),
                        ("budget", &budget.to_string()),
                    ],
                )
            }
        }
        "reset" => {
            state.history.clear();
            texts.reset_done.clone()
        }
        other => fill(&texts.unknown_command, &[("command", &format!("/{other}"))]),
    }
}

/// Commands for admins only (`/model` without arguments is for everyone).
const ADMIN_COMMANDS: &[&str] = &["model", "stats", "health", "ban", "unban"];

/// Sends parts through the outbox (committing `commit` after them).
async fn send_parts(
    deps: &SessionDeps,
    chat_id: ChatId,
    parts: Vec<Part>,
    commit: Option<TurnCommit>,
) -> Delivered {
    deps.directory
        .outbox()
        .deliver(chat_id, &parts, commit.as_ref())
        .await
}

/// Sends one of the bot's own texts without waiting for it.
fn tell(deps: &SessionDeps, chat_id: ChatId, text: &str) {
    deps.directory.outbox().notify(chat_id, text);
}

/// Hands the reply (and the turn's commit) to the outbox and waits until it
/// is delivered or given up, and committed. A streamed answer's messages
/// are edited into the final text.
async fn deliver(state: &mut SessionState, text: String, commit: Option<TurnCommit>) {
    let max = state.deps.config.telegram.max_message_chars;
    let messages: Vec<OutgoingText> = if state.reply_is_markdown {
        to_messages(&render_markdown(&text), max)
    } else {
        split_message(&text, max)
            .into_iter()
            .map(OutgoingText::plain)
            .collect()
    };
    let (parts, _) = live::diff(&std::mem::take(&mut state.streamed), messages);
    let parts_count = parts.len();
    match send_parts(&state.deps, state.chat_id, parts, commit).await {
        Ok(_) => tracing::debug!(parts = parts_count, "delivered"),
        Err(error) => tracing::warn!(class = error.class(), %error, "reply not delivered"),
    }
}
