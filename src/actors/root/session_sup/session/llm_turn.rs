//! Asking the LLM for one answer: the daily budget, the prompt trimmed to
//! the context window, "typing…" or the streamed answer shown live while
//! the pool works, `/cancel`, the one "still writing" notice, and the
//! localised reply when no answer could be had.

use std::sync::Arc;
use std::time::Duration;

use teloxide::types::MessageId;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::SessionState;
use super::live::LiveAnswer;
use super::turn::{Reply, Turn, send_parts};
use crate::actors::root::limiter::Slot;
use crate::actors::root::llm_pool::Overrides;
use crate::actors::root::outbox::{Delivered, Part};
use crate::actors::root::session_sup::SessionDeps;
use crate::config::LlmConfig;
use crate::llm::client::StreamTo;
use crate::llm::{ChatMessage, Completion, LlmError, Role};
use crate::store::record::StoredFile;
use crate::texts::{Texts, fill, retry_in_seconds};

/// Characters per token when the provider reports no usage: the usual rule
/// of thumb for English and code; generous for other scripts.
const CHARS_PER_TOKEN: u64 = 4;
/// Tokens an image counts as when the provider reports no usage: OpenAI
/// bills a 1024×1024 image at high detail 765 tokens, Llama 4 vision tiles
/// cost about as much; rounded up.
pub(super) const IMAGE_TOKENS: u64 = 800;

/// A message's estimated tokens: its characters, and its images.
fn message_tokens(message: &ChatMessage) -> u64 {
    (message.content.chars().count() as u64).div_ceil(CHARS_PER_TOKEN)
        + message.images().len() as u64 * IMAGE_TOKENS
}

fn estimate_tokens(prompt: &[ChatMessage], answer: &str) -> u64 {
    prompt.iter().map(message_tokens).sum::<u64>()
        + (answer.chars().count() as u64).div_ceil(CHARS_PER_TOKEN)
}

/// Drops the oldest history messages (never the system prompt or the new
/// message) until the prompt's estimated tokens fit `budget`, and never
/// leaves an assistant message first.
fn fit_context(prompt: &mut Vec<ChatMessage>, budget: u64) {
    let tokens = message_tokens;
    let mut total: u64 = prompt.iter().map(tokens).sum();
    while prompt.len() > 2
        && (total > budget || prompt.get(1).is_some_and(|m| m.role == Role::Assistant))
    {
        total -= tokens(&prompt.remove(1));
    }
}

/// Days since the Unix epoch, UTC: the budget's day.
pub(super) fn unix_day() -> u32 {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    const SECONDS_PER_DAY: u64 = 86_400;
    u32::try_from(seconds / SECONDS_PER_DAY).unwrap_or(u32::MAX)
}

/// Asks the LLM, showing "typing…" while it works; returns the reply.
pub(super) async fn answer(state: &mut SessionState, turn: &mut Turn<'_>, text: &str) -> Reply {
    answer_with(state, turn, text, Overrides::default()).await
}

/// What the user asks in one turn: what the model gets now, and what the
/// history keeps of it.
pub(super) struct Ask {
    /// The user's message as the model gets it now.
    pub(super) text: Arc<str>,
    /// Images sent with it this once (data URLs); never kept.
    pub(super) images: Vec<Arc<str>>,
    /// What the history keeps of the message: for media, what was read
    /// from the files (a description, a transcript, a document's text).
    pub(super) remembered: Arc<str>,
    /// The files it came with (references only).
    pub(super) files: Vec<StoredFile>,
}

impl Ask {
    /// A text, asked and kept as it is.
    pub(super) fn text(text: &str) -> Self {
        let text: Arc<str> = text.into();
        Self {
            remembered: Arc::clone(&text),
            text,
            images: Vec::new(),
            files: Vec::new(),
        }
    }
}

/// [`answer`] with a command's model or temperature.
pub(super) async fn answer_with(
    state: &mut SessionState,
    turn: &mut Turn<'_>,
    text: &str,
    options: Overrides,
) -> Reply {
    ask(state, turn, Ask::text(text), options).await
}

/// Asks the LLM `question` (text, possibly images), with a command's model
/// or temperature.
pub(super) async fn ask(
    state: &mut SessionState,
    turn: &mut Turn<'_>,
    question: Ask,
    options: Overrides,
) -> Reply {
    if let Some(refusal) = over_budget(state, turn) {
        return refusal;
    }
    // A command's own model first, then the model this chat chose.
    let options = Overrides {
        model: options
            .model
            .or_else(|| state.settings.model.as_deref().map(Arc::from)),
        ..options
    };
    let Ask {
        text,
        images,
        remembered,
        files,
    } = question;
    // What the message replies to is part of the user's message, in the
    // prompt and in the history.
    let (text, remembered): (Arc<str>, Arc<str>) = match turn.quote {
        Some(_) => (turn.quoted(&text).into(), turn.quoted(&remembered).into()),
        None => (text, remembered),
    };
    let mut prompt = state.history.prompt(&state.system_prompt, &text);
    if !images.is_empty()
        && let Some(last) = prompt.last_mut()
    {
        *last = ChatMessage::with_images(Role::User, text, images);
    }
    let llm = &state.deps.config.llm;
    fit_context(
        &mut prompt,
        llm.context_tokens.saturating_sub(u64::from(llm.max_tokens)),
    );
    let (stream_to, deltas) = llm.stream.then(|| stream_channel(llm)).unzip();
    let started = Instant::now();
    let request = Request {
        prompt: &prompt,
        options: &options,
        stream: stream_to,
        reply_to: turn.reply_to,
    };
    let texts = Arc::clone(&turn.texts);
    let (result, live) = await_answer(state, &texts, request, deltas).await;
    let asked = Asked {
        partial: live.text().to_owned(),
        prompt,
        question: Question { remembered, files },
    };
    turn.streamed = live.into_shown();
    match result {
        Some(result) => outcome(state, &texts, asked, result, started.elapsed()),
        None => {
            turn.cancelled = true;
            cancelled(state, &texts, asked)
        }
    }
}

/// The reply when the chat's daily token budget is used up (admins have
/// none); starts a new day's count first.
fn over_budget(state: &mut SessionState, turn: &Turn<'_>) -> Option<Reply> {
    let today = unix_day();
    if state.counters.usage_day != today {
        state.counters.usage_day = today;
        state.counters.tokens_today = 0;
    }
    let budget = state.deps.config.llm.daily_token_budget;
    if budget == 0 || turn.budget_exempt || state.counters.tokens_today < budget {
        return None;
    }
    tracing::info!(budget, "daily token budget used up");
    Some(Reply::Plain(fill(
        &turn.texts.budget_exceeded,
        &[("budget", &budget.to_string())],
    )))
}

/// The channel a streamed answer's text arrives through.
fn stream_channel(llm: &LlmConfig) -> (StreamTo, mpsc::Receiver<String>) {
    let (deltas, receiver) = mpsc::channel(STREAM_BUFFER);
    let to = StreamTo {
        deltas,
        chunk_timeout: llm.stream_chunk_timeout,
        max_duration: llm.stream_max_duration,
    };
    (to, receiver)
}

/// What was asked, and what of the answer the user has seen.
struct Asked {
    prompt: Vec<ChatMessage>,
    question: Question,
    /// The streamed text shown so far (empty without streaming).
    partial: String,
}

/// The user's message as the history keeps it.
struct Question {
    remembered: Arc<str>,
    files: Vec<StoredFile>,
}

impl Question {
    /// Puts the user's message in the history: it stays whatever became of
    /// the answer, so `/retry` can ask it again.
    fn remember(self, state: &mut SessionState) {
        state
            .history
            .push_with_files(Role::User, self.remembered, self.files);
    }
}

/// The user sent /cancel. A plain call runs out in the pool and its answer
/// is dropped; a stream stops at once. The question stays for /retry, and
/// what was shown of the answer stays on screen.
fn cancelled(state: &mut SessionState, texts: &Texts, asked: Asked) -> Reply {
    tracing::info!("answer cancelled");
    asked.question.remember(state);
    let partial = asked.partial;
    if partial.trim().is_empty() {
        return Reply::Plain(texts.cancelled.clone());
    }
    // What was shown was generated, and counts.
    charge(state, estimate_tokens(&asked.prompt, &partial));
    Reply::Markdown(format!("{partial}\n\n{}", texts.cancelled))
}

/// The reply to the pool's answer (or failure), which is kept in the
/// history and charged against the budget.
fn outcome(
    state: &mut SessionState,
    texts: &Texts,
    asked: Asked,
    result: Result<Completion, LlmError>,
    took: Duration,
) -> Reply {
    let llm_ms = took.as_millis() as u64;
    let Asked {
        prompt,
        question,
        partial,
    } = asked;
    match result {
        Ok(completion) => {
            tracing::info!(llm_ms, chars = completion.text.chars().count(), "answered");
            let tokens = completion.usage.map_or_else(
                || estimate_tokens(&prompt, &completion.text),
                |usage| usage.prompt_tokens + usage.completion_tokens,
            );
            charge(state, tokens);
            question.remember(state);
            state
                .history
                .push(Role::Assistant, completion.text.as_str().into());
            if completion.truncated {
                tracing::info!(
                    limit = state.deps.config.llm.max_answer_chars,
                    "answer truncated"
                );
                return Reply::Markdown(format!(
                    "{}\n\n{}",
                    completion.text, texts.answer_truncated
                ));
            }
            Reply::Markdown(completion.text)
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
            charge(state, estimate_tokens(&prompt, &partial));
            question.remember(state);
            state.history.push(Role::Assistant, partial.as_str().into());
            Reply::Markdown(format!("{partial}\n\n{}", texts.answer_cut))
        }
        Err(error) => {
            // Provider failures were logged by the pool where it handled
            // them; this is the user-facing outcome.
            tracing::info!(llm_ms, class = error.class(), "fallback reply");
            state.counters.llm_failures += 1;
            // Kept so the conversation stays coherent and /retry can answer it.
            question.remember(state);
            Reply::Plain(fallback_text(texts, &error))
        }
    }
}

/// Counts `tokens` against the chat's daily budget and the metrics.
pub(super) fn charge(state: &mut SessionState, tokens: u64) {
    state.counters.tokens_today += tokens;
    metrics::counter!("llmgram_llm_tokens_total").increment(tokens);
}

/// Capacity of the channel a streamed answer's text arrives through
/// (pieces). The provider's reader waits when it is full, so a slow chat
/// holds back its stream instead of buffering it.
const STREAM_BUFFER: usize = 64;

/// One LLM request of a session.
struct Request<'a> {
    prompt: &'a [ChatMessage],
    options: &'a Overrides,
    stream: Option<StreamTo>,
    /// In groups, the message the answer's first message replies to.
    reply_to: Option<MessageId>,
}

/// Waits for the LLM pool's answer while showing "typing…", or the streamed
/// answer as it grows, telling the user once if another message arrives
/// meanwhile. `None` if the user cancelled.
async fn await_answer(
    state: &SessionState,
    texts: &Texts,
    request: Request<'_>,
    mut deltas: Option<mpsc::Receiver<String>>,
) -> (Option<Result<Completion, LlmError>>, LiveAnswer) {
    let deps = &state.deps;
    let chat_id = state.chat_id;
    let telegram = &deps.config.telegram;
    let reply_to = request.reply_to;
    let call = call_llm(deps, request);
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
            result = &mut call => break Some(result),
            () = &mut cancelled => break None,
            () = &mut arrived, if !queued => queued = true,
            () = tokio::time::sleep_until(notice_at), if queued && !told => {
                told = true;
                deps.directory.outbox().notify(chat_id, &texts.answer_coming);
            }
            Some(delta) = next_delta(&mut deltas) => live.push(&delta),
            sent = until_done(&mut update) => {
                update = None;
                live.finish_update(sent);
            }
            () = tokio::time::sleep_until(live.next_update()), if update.is_none() && live.wants_update() => {
                // The answer's first message replies to the question.
                let first = !live.is_showing();
                let parts = live.begin_update();
                let parts = Part::reply_first(parts, reply_to.filter(|_| first));
                update = Some(Box::pin(send_parts(deps, chat_id, parts, None)));
            }
            () = tokio::time::sleep_until(next_typing), if !live.is_showing() => {
                deps.directory.outbox().show_typing(chat_id);
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

/// Waits for a slot under the global LLM limit (`limits.global_llm_per_second`);
/// `Overloaded` when its queue is full.
pub(super) async fn llm_slot(deps: &SessionDeps) -> Result<(), LlmError> {
    // The global LLM limit delays, never refuses (unless its queue is full):
    // wait here, in this chat's own session, for the slot, still showing
    // "typing…" and open to /cancel. A limiter that is away lets the call
    // through, as on arrival.
    match deps.directory.limiter().reserve_llm_call().await {
        Slot::After(wait) if !wait.is_zero() => {
            tracing::debug!(wait_ms = wait.as_millis() as u64, "waiting for an llm slot");
            tokio::time::sleep(wait).await;
            Ok(())
        }
        Slot::After(_) => Ok(()),
        Slot::Full { .. } => Err(LlmError::Overloaded),
    }
}

/// Waits for a slot under the global LLM limit, then asks the pool.
async fn call_llm(deps: &SessionDeps, request: Request<'_>) -> Result<Completion, LlmError> {
    llm_slot(deps).await?;
    deps.directory
        .llm_pool()
        .complete(request.prompt, request.options, request.stream.as_ref())
        .await
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

/// The localised reply when no answer could be had.
pub(super) fn fallback_text(texts: &Texts, error: &LlmError) -> String {
    match error {
        LlmError::NoProvider {
            retry_in: Some(wait),
            ..
        } => fill(
            &texts.llm_unavailable_retry,
            &[("seconds", &retry_in_seconds(*wait))],
        ),
        LlmError::Overloaded | LlmError::RateLimited { .. } => texts.llm_busy.clone(),
        LlmError::NoProvider {
            last: Some(last), ..
        } if matches!(**last, LlmError::RateLimited { .. }) => texts.llm_busy.clone(),
        _ => texts.llm_unavailable.clone(),
    }
}
