//! Session: one chat's conversation. Answers the chat's updates one at a
//! time, in order, and owns its bounded history.
//!
//! - **Supervised by:** the session supervisor; temporary (evicted when idle,
//!   re-created on the next message), redelivered on failure.
//! - **Messages:** [`SessionMsg::Handle`], one update of this chat.
//! - **State:** the chat id, its [`History`], settings and counters, and the
//!   newest update applied. Loaded from the persistence actor when the
//!   session starts; nobody else reads or writes it while the session lives.
//! - **Per update:** an update at or below the newest applied one was
//!   answered before (Telegram or a restart delivered it again) and is
//!   skipped. Commands and bad input are answered from the locale texts
//!   without an LLM call; text goes to the LLM pool with the system prompt
//!   and the history, while "typing…" is shown; the answer is split to
//!   Telegram's size and handed to the outbox with the turn's commit (new
//!   record and the update marked answered), which the outbox's send task
//!   makes durably right after sending; only then does the session report
//!   `TurnFinished`. Only a process crash between sending and committing can
//!   repeat an answer; nothing is ever left unanswered.
//! - **Bursts:** with `session.merge_window` set, a text waits (in the
//!   session's state, still pending at the supervisor) for the messages
//!   arriving right behind it; a long piece of a cut paste waits out the
//!   window. They are answered as one request, and the turn marks every
//!   merged update answered.
//! - **Streaming** (`llm.stream`): the answer's first text is sent as a
//!   message and then edited at most every `telegram.edit_interval` while it
//!   grows, continuing in new messages past Telegram's size; the final text
//!   replaces it, with a note if the stream broke. A message arriving while
//!   an answer is written gets one "still writing" notice.
//! - **Memory** (one session per active chat, 100,000 must fit 1 GiB): the
//!   handler's future is boxed, so it exists only while a message is
//!   handled; `Deps` and the system prompt are shared, not copied; what
//!   remains per idle session is mostly ractor's own (channels, task).
//! - **Failures:** LLM errors are expected: the user gets a fallback reply and
//!   the user message stays in the history. A panic is a bug: the supervisor
//!   hands the unanswered updates to a new session, which reloads the record.

mod admin;
mod live;

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use teloxide::types::MessageId;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::Instrument;

use super::SessionSupMsg;
use crate::actors::Child;
use crate::actors::root::Deps;
use crate::actors::root::limiter::{LimiterMsg, Verdict};
use crate::actors::root::llm_pool::{LlmPoolMsg, Overrides};
use crate::actors::root::outbox::{OutboxMsg, Part, TurnCommit};
use crate::actors::root::persistence::{PersistenceMsg, RecordChange};
use crate::history::History;
use crate::input::{self, Rejection};
use crate::llm::client::StreamTo;
use crate::llm::{LlmError, Role};
use crate::store::StoreError;
use crate::store::record::{self, ChatCounters, ChatRecord, ChatSettings};
use crate::telegram::inbound::{ChatId, Inbound, InboundKind, RefusalReason};
use crate::telegram::render::{OutgoingText, render_markdown, to_messages};
use crate::telegram::split::split_message;
use crate::telemetry::security_event;
use crate::texts::{Texts, fill};
use live::LiveAnswer;

/// Messages of a session.
pub enum SessionMsg {
    /// Panic at once: the chaos hook for tests (feature `chaos` only).
    #[cfg(feature = "chaos")]
    Panic,
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
pub struct SessionArgs {
    /// The chat this session serves.
    pub chat_id: ChatId,
    /// Shared dependencies.
    pub deps: Arc<Deps>,
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
pub struct Session;

/// A session's state.
pub struct SessionState {
    chat_id: ChatId,
    history: History,
    settings: ChatSettings,
    counters: ChatCounters,
    /// The newest update applied to this chat.
    last_update_id: u32,
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
    deps: Arc<Deps>,
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
            last_update_id: 0,
            is_new: true,
            awaiting_input: None,
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
            .call(Child::Outbox, |reply| OutboxMsg::Flush { chat_id, reply })
            .await
            .map_err(|_| crate::telegram::TelegramError::OutboxUnavailable)?;
        let loaded = state
            .deps
            .directory
            .call(Child::Persistence, |reply| PersistenceMsg::LoadChat {
                chat_id,
                reply,
            })
            .await
            .map_err(|_| StoreError::Unavailable)??;
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
            state.last_update_id = stored.last_update_id;
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
            #[cfg(feature = "chaos")]
            SessionMsg::Panic => panic!("chaos: ordered to panic"),
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

/// Holds a text back while more may follow (`session.merge_window`);
/// answers anything else at once, after the texts held back.
async fn on_arrival(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    inbound: Arc<Inbound>,
) -> Result<(), ActorProcessingErr> {
    let window = state.merge_window;
    let mergeable = !window.is_zero()
        && inbound.refused.is_none()
        && inbound.sent_at.is_some()
        && inbound.update_id > state.last_update_id;
    let text_chars = match &inbound.kind {
        InboundKind::Text(text) if mergeable => Some(text.chars().count()),
        _ => None,
    };
    let Some(chars) = text_chars else {
        if is_cancel(&inbound) && !state.burst.is_empty() {
            return cancel_burst(state, &inbound).await;
        }
        answer_burst(state).await?;
        return on_update(state, &inbound, &[]).await;
    };
    if let Some(first) = state.burst.first() {
        // Merged texts are joined with a newline each.
        let held: usize = state.burst.iter().map(|i| text_len(i) + 1).sum();
        // Telegram dates messages to the second.
        let window_secs = window.as_secs_f64().ceil() as i64;
        let sent_together = first
            .sent_at
            .zip(inbound.sent_at)
            .is_some_and(|(first, this)| (this - first).abs() <= window_secs.max(1));
        let joins = first.user_id == inbound.user_id
            && sent_together
            && inbound
                .received_at
                .saturating_duration_since(first.received_at)
                <= window
            && held + chars <= state.deps.config.input.max_merged_chars;
        if !joins {
            answer_burst(state).await?;
        }
    }
    let first_received = state
        .burst
        .first()
        .map_or(inbound.received_at, |first| first.received_at);
    state.burst.push(inbound);
    state.burst_generation += 1;
    let generation = state.burst_generation;
    let waits_for_more = chars >= state.deps.config.session.merge_wait_chars;
    if waits_for_more {
        let wait = (first_received + window).saturating_duration_since(std::time::Instant::now());
        myself.send_after(wait, move || SessionMsg::FlushBurst { generation });
    } else {
        // Behind whatever is already in the mailbox: texts waiting there
        // join the burst first.
        myself.cast(SessionMsg::FlushBurst { generation })?;
    }
    Ok(())
}

fn is_cancel(inbound: &Inbound) -> bool {
    matches!(&inbound.kind, InboundKind::Command { name, .. } if name == "cancel")
}

/// `/cancel` while texts wait to be merged: they are not sent to the LLM.
/// They stay in the history (for `/retry`), and the turn marks them and the
/// `/cancel` answered.
async fn cancel_burst(
    state: &mut SessionState,
    inbound: &Inbound,
) -> Result<(), ActorProcessingErr> {
    let burst = std::mem::take(&mut state.burst);
    let earlier: Vec<u32> = burst.iter().map(|held| held.update_id).collect();
    let text = merged_text(&burst);
    if let Ok(cleaned) = input::validate(&text, state.deps.config.input.max_merged_chars) {
        state.history.push(Role::User, cleaned.as_str().into());
    }
    tracing::info!(held = earlier.len(), "held messages cancelled");
    let texts = Arc::clone(
        state
            .deps
            .locales
            .for_language(inbound.language_code.as_deref()),
    );
    state.reply_is_markdown = false;
    state.streamed.clear();
    state.counters.answered += 1;
    let commit = prepare_commit(state, inbound.update_id, &earlier, Change::Update);
    deliver(state, texts.cancelled.clone(), commit).await;
    finish(state, inbound, &earlier)
}

/// The texts of a burst, one per line.
fn merged_text(burst: &[Arc<Inbound>]) -> String {
    burst
        .iter()
        .filter_map(|inbound| match &inbound.kind {
            InboundKind::Text(text) => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn text_len(inbound: &Inbound) -> usize {
    match &inbound.kind {
        InboundKind::Text(text) => text.chars().count(),
        _ => 0,
    }
}

/// Answers the texts held back, as one request when there are several.
async fn answer_burst(state: &mut SessionState) -> Result<(), ActorProcessingErr> {
    let burst = std::mem::take(&mut state.burst);
    let Some((last, earlier)) = burst.split_last() else {
        return Ok(());
    };
    if earlier.is_empty() {
        return on_update(state, last, &[]).await;
    }
    let text = merged_text(&burst);
    let merged = Inbound {
        kind: InboundKind::Text(text),
        ..Inbound::clone(last)
    };
    let earlier: Vec<u32> = earlier.iter().map(|inbound| inbound.update_id).collect();
    metrics::counter!("llmgram_merged_messages_total").increment(earlier.len() as u64);
    tracing::debug!(
        merged = earlier.len() + 1,
        "messages merged into one request"
    );
    on_update(state, &merged, &earlier).await
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
    if inbound.update_id <= state.last_update_id {
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
    let reply = match &inbound.kind {
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
                    security_event("injection_phrase");
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
    let verdict = state
        .deps
        .directory
        .call(Child::Limiter, |reply| LimiterMsg::AdmitNewChat { reply })
        .await
        .unwrap_or(Verdict::Allowed);
    match verdict {
        Verdict::Allowed | Verdict::Banned { .. } | Verdict::NotAllowed { .. } => {
            // Bans and the allowlist were checked on arrival; admission only
            // ever limits.
            state.is_new = false;
            None
        }
        Verdict::Limited { retry_in, .. } => {
            security_event("new_chat_flood");
            Some(fill(
                &texts.new_users_busy,
                &[("seconds", &seconds(retry_in))],
            ))
        }
    }
}

/// Characters per token when the provider reports no usage: the usual rule
/// of thumb for English and code; generous for other scripts.
const CHARS_PER_TOKEN: u64 = 4;

fn estimate_tokens(prompt: &[crate::llm::ChatMessage], answer: &str) -> u64 {
    let chars: usize = prompt
        .iter()
        .map(|m| m.content.chars().count())
        .sum::<usize>()
        + answer.chars().count();
    (chars as u64).div_ceil(CHARS_PER_TOKEN)
}

/// Drops the oldest history messages (never the system prompt or the new
/// message) until the prompt's estimated tokens fit `budget`, and never
/// leaves an assistant message first.
fn fit_context(prompt: &mut Vec<crate::llm::ChatMessage>, budget: u64) {
    let tokens =
        |m: &crate::llm::ChatMessage| (m.content.chars().count() as u64).div_ceil(CHARS_PER_TOKEN);
    let mut total: u64 = prompt.iter().map(tokens).sum();
    while prompt.len() > 2
        && (total > budget || prompt.get(1).is_some_and(|m| m.role == Role::Assistant))
    {
        total -= tokens(&prompt.remove(1));
    }
}

/// Days since the Unix epoch, UTC: the budget's day.
fn unix_day() -> u32 {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    const SECONDS_PER_DAY: u64 = 86_400;
    u32::try_from(seconds / SECONDS_PER_DAY).unwrap_or(u32::MAX)
}

/// What a turn does to the stored record.
enum Change {
    /// Store the session's current record.
    Update,
    /// Delete everything stored about the chat (`/forget`).
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
    state.last_update_id = update_id;
    let change = match change {
        Change::Keep => RecordChange::Keep,
        Change::Forget => {
            state.history.clear();
            state.settings = ChatSettings::default();
            state.counters = ChatCounters::default();
            RecordChange::Delete
        }
        Change::Update => {
            let record = ChatRecord {
                history: state.history.to_stored(),
                settings: state.settings.clone(),
                counters: state.counters,
                last_update_id: update_id,
            };
            match record::encode_chat(&record) {
                Ok(bytes) => RecordChange::Put(bytes),
                Err(error) => {
                    tracing::error!(%error, "cannot encode the chat record; turn not stored");
                    return None;
                }
            }
        }
    };
    Some(TurnCommit {
        update_id,
        also_answered: earlier.to_vec(),
        change,
    })
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
        security_event("injection_phrase");
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

/// Asks the LLM, showing "typing…" while it works; returns the text to send.
async fn answer(state: &mut SessionState, texts: &Texts, text: &str) -> String {
    answer_with(state, texts, text, Overrides::default()).await
}

/// [`answer`] with a command's model or temperature.
async fn answer_with(
    state: &mut SessionState,
    texts: &Texts,
    text: &str,
    options: Overrides,
) -> String {
    let today = unix_day();
    if state.counters.usage_day != today {
        state.counters.usage_day = today;
        state.counters.tokens_today = 0;
    }
    let budget = state.deps.config.llm.daily_token_budget;
    if budget > 0 && !state.budget_exempt && state.counters.tokens_today >= budget {
        tracing::info!(budget, "daily token budget used up");
        return fill(&texts.budget_exceeded, &[("budget", &budget.to_string())]);
    }
    // A command's own model first, then the model this chat chose.
    let options = Overrides {
        model: options
            .model
            .or_else(|| state.settings.model.as_deref().map(Arc::from)),
        ..options
    };
    let user_text: Arc<str> = text.into();
    let mut prompt = state.history.prompt(&state.system_prompt, &user_text);
    let llm = &state.deps.config.llm;
    fit_context(
        &mut prompt,
        llm.context_tokens.saturating_sub(u64::from(llm.max_tokens)),
    );
    let stream = state.deps.config.llm.stream.then(|| {
        let llm = &state.deps.config.llm;
        let (deltas, receiver) = mpsc::channel(STREAM_BUFFER);
        let to = StreamTo {
            deltas,
            chunk_timeout: llm.stream_chunk_timeout,
            max_duration: llm.stream_max_duration,
        };
        (to, receiver)
    });
    let (stream_to, deltas) = stream.unzip();
    let started = Instant::now();
    let request = Request {
        prompt: &prompt,
        options: &options,
        stream: stream_to,
    };
    let (result, live) = await_answer(state, texts, request, deltas).await;
    let partial = live.text().to_owned();
    state.streamed = live.into_shown();
    let Some(result) = result else {
        // The user sent /cancel. A plain call runs out in the pool and its
        // answer is dropped; a stream stops at once. The question stays for
        // /retry, and what was shown of the answer stays on screen.
        tracing::info!("answer cancelled");
        state.cancelled = true;
        state.history.push(Role::User, user_text);
        if partial.trim().is_empty() {
            return texts.cancelled.clone();
        }
        // What was shown was generated, and counts.
        let tokens = estimate_tokens(&prompt, &partial);
        state.counters.tokens_today += tokens;
        metrics::counter!("llmgram_llm_tokens_total").increment(tokens);
        state.reply_is_markdown = true;
        return format!("{partial}\n\n{}", texts.cancelled);
    };
    let llm_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(completion) => {
            tracing::info!(llm_ms, chars = completion.text.chars().count(), "answered");
            let tokens = completion.usage.map_or_else(
                || estimate_tokens(&prompt, &completion.text),
                |usage| usage.prompt_tokens + usage.completion_tokens,
            );
            state.counters.tokens_today += tokens;
            metrics::counter!("llmgram_llm_tokens_total").increment(tokens);
            state.history.push(Role::User, user_text);
            state
                .history
                .push(Role::Assistant, completion.text.as_str().into());
            state.reply_is_markdown = true;
            completion.text
        }
        Err(LlmError::StreamCut(cause)) if !partial.trim().is_empty() => {
            // The user has seen part of the answer: keep it, say it is cut.
            tracing::info!(
                llm_ms,
                class = cause.class(),
                chars = partial.chars().count(),
                "stream cut"
            );
            state.counters.llm_failures += 1;
            let tokens = estimate_tokens(&prompt, &partial);
            state.counters.tokens_today += tokens;
            metrics::counter!("llmgram_llm_tokens_total").increment(tokens);
            state.history.push(Role::User, user_text);
            state.history.push(Role::Assistant, partial.as_str().into());
            state.reply_is_markdown = true;
            format!("{partial}\n\n{}", texts.answer_cut)
        }
        Err(error) => {
            // Provider failures were logged by the pool where it handled
            // them; this is the user-facing outcome.
            tracing::info!(llm_ms, class = error.class(), "fallback reply");
            state.counters.llm_failures += 1;
            // Kept so the conversation stays coherent and /retry can answer it.
            state.history.push(Role::User, user_text);
            fallback_text(texts, &error)
        }
    }
}

/// Capacity of the channel a streamed answer's text arrives through
/// (pieces). The provider's reader waits when it is full, so a slow chat
/// holds back its stream instead of buffering it.
const STREAM_BUFFER: usize = 64;

/// One LLM request of a session.
struct Request<'a> {
    prompt: &'a [crate::llm::ChatMessage],
    options: &'a Overrides,
    stream: Option<StreamTo>,
}

/// Waits for the LLM pool's answer while showing "typing…", or the streamed
/// answer as it grows, telling the user once if another message arrives
/// meanwhile. `None` if the user cancelled.
async fn await_answer(
    state: &SessionState,
    texts: &Texts,
    request: Request<'_>,
    mut deltas: Option<mpsc::Receiver<String>>,
) -> (Option<Result<crate::llm::Completion, LlmError>>, LiveAnswer) {
    let deps = &state.deps;
    let chat_id = state.chat_id;
    let telegram = &deps.config.telegram;
    let call = deps
        .directory
        .call(Child::LlmPool, |reply| LlmPoolMsg::Complete {
            messages: request.prompt.to_vec(),
            options: request.options.clone(),
            stream: request.stream.clone(),
            reply,
        });
    tokio::pin!(call);
    let mut live = LiveAnswer::new(telegram.max_message_chars, telegram.edit_interval);
    let mut update: Option<std::pin::Pin<Box<dyn Future<Output = Delivered> + Send + '_>>> = None;
    let mut next_typing = Instant::now() + telegram.typing_after;
    let cancelled = state.signals.cancel.notified();
    tokio::pin!(cancelled);
    let arrived = state.signals.arrived.notified();
    tokio::pin!(arrived);
    // Someone is waiting behind this answer: tell them once, when the
    // answer has taken long enough for the wait to be noticed.
    let mut queued = false;
    let mut told = false;
    let notice_at = Instant::now() + deps.config.session.queued_notice_after;
    let result = loop {
        tokio::select! {
            result = &mut call => break Some(result.unwrap_or(Err(LlmError::PoolUnavailable))),
            () = &mut cancelled => break None,
            () = &mut arrived, if !queued => queued = true,
            () = tokio::time::sleep_until(notice_at), if queued && !told => {
                told = true;
                tell(deps, chat_id, &texts.answer_coming);
            }
            Some(delta) = next_delta(&mut deltas) => live.push(&delta),
            sent = until_done(&mut update) => {
                update = None;
                live.finish_update(sent);
            }
            () = tokio::time::sleep_until(live.next_update()), if update.is_none() && live.wants_update() => {
                let parts = live.begin_update();
                update = Some(Box::pin(send_parts(deps, chat_id, parts, None)));
            }
            () = tokio::time::sleep_until(next_typing), if !live.is_showing() => {
                deps.directory.cast_now(Child::Outbox, OutboxMsg::ShowTyping { chat_id });
                next_typing += telegram.typing_interval;
            }
        }
    };
    // Text that arrived after the pool's answer was taken (the answer has
    // it all, but a cut or cancelled stream keeps only what came).
    if let Some(deltas) = &mut deltas {
        while let Ok(delta) = deltas.try_recv() {
            live.push(&delta);
        }
    }
    // The final delivery edits what this update shows: it needs its ids.
    if let Some(update) = update {
        live.finish_update(update.await);
    }
    (result, live)
}

async fn next_delta(deltas: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match deltas {
        Some(deltas) => deltas.recv().await,
        None => std::future::pending().await,
    }
}

async fn until_done<F: Future + Unpin>(future: &mut Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// An outbox delivery's outcome.
type Delivered = Result<Vec<MessageId>, crate::telegram::TelegramError>;

/// Sends parts through the outbox (committing `commit` after them).
async fn send_parts(
    deps: &Deps,
    chat_id: ChatId,
    parts: Vec<Part>,
    commit: Option<TurnCommit>,
) -> Delivered {
    deps.directory
        .call(Child::Outbox, |reply| OutboxMsg::Deliver {
            chat_id,
            parts: parts.clone(),
            commit: commit.clone(),
            reply,
        })
        .await
        .unwrap_or(Err(crate::telegram::TelegramError::OutboxUnavailable))
}

/// Sends one of the bot's own texts without waiting for it.
fn tell(deps: &Deps, chat_id: ChatId, text: &str) {
    let (reply, _not_awaited) = tokio::sync::oneshot::channel();
    deps.directory.cast_now(
        Child::Outbox,
        OutboxMsg::Deliver {
            chat_id,
            parts: vec![Part::plain(text)],
            commit: None,
            reply: reply.into(),
        },
    );
}

/// The localised reply when no answer could be had.
fn fallback_text(texts: &Texts, error: &LlmError) -> String {
    match error {
        LlmError::NoProvider {
            retry_in: Some(wait),
            ..
        } => {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            fill(
                &texts.llm_unavailable_retry,
                &[("seconds", &seconds.to_string())],
            )
        }
        LlmError::Overloaded | LlmError::RateLimited { .. } => texts.llm_busy.clone(),
        LlmError::NoProvider {
            last: Some(last), ..
        } if matches!(**last, LlmError::RateLimited { .. }) => texts.llm_busy.clone(),
        _ => texts.llm_unavailable.clone(),
    }
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
