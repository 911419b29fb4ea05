//! Asking the LLM for one answer: the daily and monthly budgets, what the
//! answer spent (tokens, and their cost at `[[llm.prices]]`), the prompt trimmed to
//! the context window, "typing…" or the streamed answer shown live (a
//! draft in private chats, an edited message in groups: `live.rs`) while
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
use crate::pricing::format_money;
use crate::store::record::{ChatCounters, StoredFile};
use crate::telegram::buttons::Keyboard;
use crate::telegram::inbound::SessionKey;
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

/// What one LLM call spent: its prompt and answer tokens, and the model
/// whose prices they are charged at.
pub(super) struct Spent<'a> {
    /// Prompt (input) tokens.
    pub(super) input: u64,
    /// Answer (output) tokens.
    pub(super) output: u64,
    /// The model that answered.
    pub(super) model: &'a str,
}

impl<'a> Spent<'a> {
    /// The tokens the provider reported for `completion`, or estimated from
    /// `prompt` and its text when it reported none (an image as
    /// [`IMAGE_TOKENS`]).
    pub(super) fn of(completion: &'a Completion, prompt: &[ChatMessage]) -> Self {
        match completion.usage {
            Some(usage) => Self {
                input: usage.prompt_tokens,
                output: usage.completion_tokens,
                model: &completion.model,
            },
            None => Self::estimated(prompt, &completion.text, &completion.model),
        }
    }

    /// `prompt` and `answer` estimated (the provider reported nothing, or
    /// the answer was cut or cancelled), charged at `model`'s prices.
    fn estimated(prompt: &[ChatMessage], answer: &str, model: &'a str) -> Self {
        Self {
            input: prompt.iter().map(message_tokens).sum(),
            output: (answer.chars().count() as u64).div_ceil(CHARS_PER_TOKEN),
            model,
        }
    }
}

/// Drops the oldest history messages (never the `fixed` first ones — the
/// system prompt and the summary — or the new message) until the prompt's
/// estimated tokens fit `budget`, and never leaves an assistant message
/// first.
fn fit_context(prompt: &mut Vec<ChatMessage>, fixed: usize, budget: u64) {
    let tokens = message_tokens;
    let mut total: u64 = prompt.iter().map(tokens).sum();
    while prompt.len() > fixed + 1
        && (total > budget || prompt.get(fixed).is_some_and(|m| m.role == Role::Assistant))
    {
        total -= tokens(&prompt.remove(fixed));
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
    let refusal = if state.key.is_business() {
        over_creators_budget(state, turn).await
    } else {
        over_budget(state, turn)
    };
    if let Some(refusal) = refusal {
        return refusal;
    }
    // The chat's persona (or own prompt) is the system message, whatever
    // is asked. A command's own model first, then the model this chat
    // chose, then its persona's; a command's temperature, then the
    // persona's.
    let voice = super::persona::voice(state);
    let options = Overrides {
        model: options
            .model
            .or_else(|| state.settings.model.as_deref().map(Arc::from))
            .or(voice.model),
        temperature: options.temperature.or(voice.temperature),
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
    let mut prompt = state.history.prompt(&voice.prompt, &text);
    // The summary of what left the history, right after the system prompt.
    let fixed = match super::summary::context_message(state.summary.as_deref()) {
        Some(context) => {
            prompt.insert(1, context);
            2
        }
        None => 1,
    };
    if !images.is_empty()
        && let Some(last) = prompt.last_mut()
    {
        *last = ChatMessage::with_images(Role::User, text, images);
    }
    let llm = &state.deps.config.llm;
    fit_context(
        &mut prompt,
        fixed,
        llm.context_tokens.saturating_sub(u64::from(llm.max_tokens)),
    );
    // The model an answer cut or cancelled before it came is charged at:
    // the one it was asked of, as far as the session knows (the admin's
    // `/model` choice is the pool's; the configured model stands for it).
    let model: Arc<str> = if prompt.iter().any(|m| !m.images().is_empty()) {
        llm.vision_model().map(Arc::from)
    } else {
        options.model.clone()
    }
    .unwrap_or_else(|| Arc::from(llm.model.as_str()));
    // A fan chat gets the final answer only: no streamed edits as the
    // creator.
    let stream = llm.stream && !state.key.is_business();
    let (stream_to, deltas) = stream.then(|| stream_channel(llm)).unzip();
    let started = Instant::now();
    let request = Request {
        prompt: &prompt,
        options: &options,
        stream: stream_to,
        reply_to: turn.reply_to,
        stop: super::buttons::stop_keyboard(&turn.texts, turn.asker),
        show_to: turn.deliver_to.clone(),
    };
    let texts = Arc::clone(&turn.texts);
    let (result, live) = await_answer(state, &texts, request, deltas).await;
    let asked = Asked {
        partial: live.text().to_owned(),
        prompt,
        model,
        question: Question { remembered, files },
    };
    turn.drafted = live.drafted();
    turn.streamed = live.into_shown();
    match result {
        Some(result) => outcome(state, &texts, asked, result, started.elapsed()),
        None => {
            turn.cancelled = true;
            cancelled(state, &texts, asked)
        }
    }
}

/// The reply when one of the chat's budgets is used up: the daily or
/// monthly tokens, or the monthly spend (admins have none); starts a new
/// day's and month's count first.
fn over_budget(state: &mut SessionState, turn: &Turn<'_>) -> Option<Reply> {
    roll_over(&mut state.counters, unix_day());
    if turn.budget_exempt {
        return None;
    }
    budget_refusal(&state.deps.config.llm, &state.counters, &turn.texts)
}

/// A Business fan chat's budget is its creator's: what every fan of the
/// connection spent today and this month (the business actor counts it),
/// against the same limits; none for a creator who is a bot admin. The
/// fan's own spend is still counted in the fan chat's record. Fails
/// closed with the connection: no call when it cannot be read.
async fn over_creators_budget(state: &mut SessionState, turn: &Turn<'_>) -> Option<Reply> {
    roll_over(&mut state.counters, unix_day());
    let id = state.key.connection()?;
    let Some(connection) = state.deps.directory.business().get(id).await else {
        return Some(Reply::Plain(turn.texts.llm_unavailable.clone()));
    };
    let owner = u64::try_from(connection.owner_user_id).ok();
    if state.deps.config.is_admin(owner) {
        return None;
    }
    let mut counters = connection.spent.counters();
    roll_over(&mut counters, unix_day());
    budget_refusal(&state.deps.config.llm, &counters, &turn.texts)
}

/// The reply when `counters` have used up one of the budgets in `llm`.
fn budget_refusal(llm: &LlmConfig, counters: &ChatCounters, texts: &Texts) -> Option<Reply> {
    let budget = llm.daily_token_budget;
    if budget > 0 && counters.tokens_today >= budget {
        tracing::info!(budget, "daily token budget used up");
        return Some(Reply::Plain(fill(
            &texts.budget_exceeded,
            &[("budget", &budget.to_string())],
        )));
    }
    let budget = llm.monthly_token_budget;
    if budget > 0 && counters.tokens_month >= budget {
        tracing::info!(budget, "monthly token budget used up");
        return Some(Reply::Plain(fill(
            &texts.monthly_budget_exceeded,
            &[("budget", &budget.to_string())],
        )));
    }
    let budget = llm.monthly_cost_budget_micros();
    if budget > 0 && counters.cost_month >= budget {
        tracing::info!(budget_micros = budget, "monthly cost budget used up");
        let budget = format_money(budget, &llm.currency);
        return Some(Reply::Plain(fill(
            &texts.monthly_cost_exceeded,
            &[("budget", &budget)],
        )));
    }
    None
}

/// Starts a new count for a new UTC day (`day`, days since the epoch) and
/// a new calendar month: what was spent before counts no more.
pub(super) fn roll_over(counters: &mut ChatCounters, day: u32) {
    counters.roll_over(day);
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
    /// The model an estimate is charged at.
    model: Arc<str>,
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
    charge(
        state,
        &Spent::estimated(&asked.prompt, &partial, &asked.model),
    );
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
        model,
        question,
        partial,
    } = asked;
    match result {
        Ok(completion) => {
            tracing::info!(llm_ms, chars = completion.text.chars().count(), "answered");
            charge(state, &Spent::of(&completion, &prompt));
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
            charge(state, &Spent::estimated(&prompt, &partial, &model));
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

/// Counts what a call spent against the chat's day and month (tokens, and
/// their cost when the model has a price) and in the metrics.
pub(super) fn charge(state: &mut SessionState, spent: &Spent<'_>) {
    let cost = state
        .deps
        .config
        .llm
        .price(spent.model)
        .map_or(0, |price| price.cost(spent.input, spent.output));
    add_spend(&mut state.counters, unix_day(), spent, cost);
    if let Some(id) = state.key.connection() {
        let tokens = spent.input.saturating_add(spent.output);
        state
            .deps
            .directory
            .business()
            .charge(id, unix_day(), tokens, cost);
    }
    metrics::counter!("llmgram_llm_tokens_total").increment(spent.input + spent.output);
}

/// Adds `spent` (costing `cost` micros) to the counters of `day`.
fn add_spend(counters: &mut ChatCounters, day: u32, spent: &Spent<'_>, cost: u64) {
    counters.spend(day, spent.input.saturating_add(spent.output), cost);
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
    /// The Stop button a streamed answer shows while it grows.
    stop: Option<Keyboard>,
    /// Where "typing…" and notices go when the answer is not for this
    /// conversation ([`super::turn::Turn::deliver_to`]: a fan chat's
    /// suggestion is written for the creator's control room).
    show_to: Option<SessionKey>,
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
    let shown_to = request.show_to.clone();
    let key = shown_to.as_ref().unwrap_or(&state.key);
    // The bot's own notices never go into a Business fan chat (what is
    // sent there reads as the creator's).
    let may_notify = !key.is_business();
    let telegram = &deps.config.telegram;
    let reply_to = request.reply_to;
    let stop = request.stop.clone();
    let call = call_llm(deps, request);
    tokio::pin!(call);
    // Drafts in private chats of the Bot API (the console edits), unless
    // switched off; groups always see an edited message.
    let mut live = if telegram.drafts && key.is_user() && deps.transport.bot().is_some() {
        LiveAnswer::with_draft(
            telegram.max_message_chars,
            telegram.edit_interval,
            crate::telegram::draft::next_draft_id(),
        )
    } else {
        LiveAnswer::new(telegram.max_message_chars, telegram.edit_interval)
    };
    live.set_stop(stop);
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
            () = tokio::time::sleep_until(notice_at), if queued && !told && may_notify => {
                told = true;
                deps.directory.outbox().notify(key, &texts.answer_coming);
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
                update = Some(Box::pin(send_parts(deps, key, parts, None)));
            }
            () = tokio::time::sleep_until(next_typing), if !live.is_showing() => {
                deps.directory.outbox().show_typing(key);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::Price;

    #[test]
    fn spend_counts_by_day_and_month_and_rolls_over() {
        let mut counters = ChatCounters::default();
        let spent = Spent {
            input: 1_000,
            output: 200,
            model: "m",
        };
        let cost = Price {
            input: 50_000,
            output: 80_000,
        }
        .cost(spent.input, spent.output);
        // 2026-01-30 and 2026-01-31: one month, two days.
        add_spend(&mut counters, 20_483, &spent, cost);
        add_spend(&mut counters, 20_484, &spent, cost);
        assert_eq!(counters.usage_day, 20_484);
        assert_eq!((counters.tokens_today, counters.cost_today), (1_200, 66));
        assert_eq!(counters.usage_month, 2026 * 12);
        assert_eq!((counters.tokens_month, counters.cost_month), (2_400, 132));
        // 2026-02-01: a new day and a new month.
        add_spend(&mut counters, 20_485, &spent, cost);
        assert_eq!(counters.usage_month, 2026 * 12 + 1);
        assert_eq!((counters.tokens_today, counters.cost_today), (1_200, 66));
        assert_eq!((counters.tokens_month, counters.cost_month), (1_200, 66));
        // Rolling over to the same day changes nothing; to a later one
        // clears what it counted.
        let before = counters;
        roll_over(&mut counters, 20_485);
        assert_eq!(counters, before);
        roll_over(&mut counters, 20_520);
        assert_eq!((counters.tokens_today, counters.tokens_month), (0, 0));
        assert_eq!((counters.cost_today, counters.cost_month), (0, 0));
    }

    #[test]
    fn estimates_split_prompt_and_answer() {
        let prompt = [
            ChatMessage::new(Role::System, "12345678"),
            ChatMessage::with_images(Role::User, "1234", vec!["data:"]),
        ];
        let spent = Spent::estimated(&prompt, "123456789", "m");
        assert_eq!((spent.input, spent.output), (2 + 1 + IMAGE_TOKENS, 3));
    }
}
