//! One turn: the answer to one update (or to several merged ones), from
//! its arrival to its delivery and commit.
//!
//! A [`Turn`] holds what belongs to this update alone: what is being
//! answered, the sender's language, budget exemption, the messages a
//! streamed answer shows, whether it was cancelled, and the [`Reply`]. It
//! is created for the update and consumed by [`conclude`], so nothing of it
//! reaches the next update; the chat's own state stays in the session's
//! state.

use std::sync::Arc;

use ractor::ActorProcessingErr;
use teloxide::types::MessageId;

use super::SessionState;
use crate::actors::root::outbox::{Delivered, Part, TurnCommit};
use crate::actors::root::persistence::RecordChange;
use crate::actors::root::session_sup::SessionDeps;
use crate::store::record::{self, ChatSettings, ChatUsage};
use crate::telegram::buttons::Keyboard;
use crate::telegram::inbound::{Inbound, InboundKind, SessionKey};
use crate::telegram::render::{OutgoingText, render_markdown, to_messages};
use crate::telegram::split::split_message;
use crate::texts::Texts;

/// What to send for a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    /// Nothing (a refused update past its one notice, a `/cancel` whose
    /// answer already said so). The turn is committed all the same.
    Silent,
    /// One of the bot's own texts, sent as it is.
    Plain(String),
    /// The LLM's answer: Markdown, sent as text with entities.
    Markdown(String),
    /// One of the bot's own texts with buttons under it (a picker).
    Buttons(String, Keyboard),
}

impl Reply {
    /// The reply as Telegram messages of at most `max` UTF-16 units.
    pub(super) fn into_messages(self, max: usize) -> Vec<OutgoingText> {
        match self {
            Self::Silent => Vec::new(),
            Self::Plain(text) => split_message(&text, max)
                .into_iter()
                .map(OutgoingText::plain)
                .collect(),
            Self::Markdown(text) => to_messages(&render_markdown(&text), max),
            Self::Buttons(text, keyboard) => {
                let mut messages = Self::Plain(text).into_messages(max);
                with_keyboard_last(&mut messages, Some(keyboard));
                messages
            }
        }
    }

    /// The reply with `markdown` (a Markdown block) above it; a plain reply
    /// becomes Markdown, escaped so it still reads as it was written.
    pub(super) fn below(self, markdown: &str) -> Self {
        match self {
            Self::Markdown(answer) => Self::Markdown(format!("{markdown}\n\n{answer}")),
            Self::Plain(text) => {
                Self::Markdown(format!("{markdown}\n\n{}", escape_markdown(&text)))
            }
            // A picker's text has no room for a note above it.
            Self::Silent | Self::Buttons(..) => Self::Markdown(markdown.to_owned()),
        }
    }
}

/// `text` with every ASCII punctuation character backslash-escaped, so
/// CommonMark shows it literally.
pub(super) fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Puts `keyboard` under the last of `messages`.
pub(super) fn with_keyboard_last(messages: &mut [OutgoingText], keyboard: Option<Keyboard>) {
    if let Some(last) = messages.last_mut() {
        last.keyboard = keyboard;
    }
}

/// The answer to the user's last text as shown, kept for an edit of that
/// text.
#[derive(Debug, Clone)]
pub(super) struct LastAnswer {
    /// The user's message it answers.
    pub(super) user_message: MessageId,
    /// When it was delivered.
    pub(super) at: std::time::Instant,
    /// The messages showing it, for an edit to replace in place.
    pub(super) shown: Vec<(MessageId, OutgoingText)>,
}

/// What a turn does to the stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Store the session's current record.
    Update,
    /// Delete the chat's record (`/forget`); what it spent stays (in the
    /// `usage` keyspace).
    Forget,
    /// Leave the record alone (the update was refused, not answered).
    Keep,
}

/// One update being answered.
pub(super) struct Turn<'a> {
    /// The update answered; for a burst, the last one with the texts joined.
    pub(super) inbound: &'a Inbound,
    /// The updates merged into it, answered by the same turn.
    pub(super) earlier: &'a [u32],
    /// The bot's texts in the sender's language.
    pub(super) texts: Arc<Texts>,
    /// The sender is a bot admin: no daily token budget.
    pub(super) budget_exempt: bool,
    /// The messages a streamed answer is shown in so far, and their texts;
    /// the final delivery edits them.
    pub(super) streamed: Vec<(MessageId, OutgoingText)>,
    /// The streamed answer was shown as a draft: the final answer is sent
    /// as new messages (they replace the draft), never as edits of
    /// [`Self::replaces`].
    pub(super) drafted: bool,
    /// A `/cancel` ended this turn's answer (or its admission wait); that
    /// `/cancel`, handled later, then says nothing.
    pub(super) cancelled: bool,
    /// An edit that was not answered again: the last answer stays as the
    /// one an edit may replace.
    pub(super) ignored_edit: bool,
    /// For an edited message: the messages showing its earlier answer, which
    /// this turn's answer replaces in place (unless it was streamed anew).
    pub(super) replaces: Vec<(MessageId, OutgoingText)>,
    /// What the turn does to the stored record.
    pub(super) change: Change,
    /// What to send.
    pub(super) reply: Reply,
    /// The line quoting what the update replies to, put above the user's
    /// text in the prompt and the history (`reply_context.rs`); `None`
    /// when there is nothing to quote.
    pub(super) quote: Option<String>,
    /// In groups, the message the answer replies to (its first message).
    pub(super) reply_to: Option<MessageId>,
    /// Who asked what this turn answers: the sender, or for a Regenerate
    /// press, who asked the question answered again. Named in the answer's
    /// buttons (they may press them in a group).
    pub(super) asker: u64,
    /// Where the reply goes when not to this conversation: a Business fan
    /// chat's suggestions and notes go to the creator's control room. The
    /// commit still writes this conversation's record.
    pub(super) deliver_to: Option<SessionKey>,
    /// The buttons under the reply's last message, in place of the ones it
    /// would get (Regenerate under an LLM answer).
    pub(super) keyboard: Option<Keyboard>,
}

impl<'a> Turn<'a> {
    /// A turn for `inbound` (and the updates `earlier` merged into it),
    /// with nothing to send yet.
    pub(super) fn new(deps: &SessionDeps, inbound: &'a Inbound, earlier: &'a [u32]) -> Self {
        Self {
            inbound,
            earlier,
            texts: Arc::clone(deps.locales.for_language(inbound.language_code.as_deref())),
            budget_exempt: deps.config.is_admin(inbound.user_id),
            streamed: Vec::new(),
            drafted: false,
            cancelled: false,
            ignored_edit: false,
            replaces: Vec::new(),
            change: Change::Update,
            reply: Reply::Silent,
            quote: None,
            // In a private chat the answer follows the question anyway.
            reply_to: inbound.message_id.filter(|_| !inbound.key.is_user()),
            asker: inbound.user_id.unwrap_or_default(),
            deliver_to: None,
            keyboard: None,
        }
    }

    /// `text` as the user's message reads with its quote: the quote line
    /// first, when there is one.
    pub(super) fn quoted(&self, text: &str) -> String {
        match &self.quote {
            Some(quote) => format!("{quote}\n{text}"),
            None => text.to_owned(),
        }
    }
}

/// Ends the turn: its commit prepared, its reply handed to the outbox
/// (which commits after sending) and waited for until delivered or given
/// up. A streamed answer's messages are edited into the final text.
/// Returns the ids of the messages sent (or edited), or `None` when the
/// reply was not delivered.
pub(super) async fn conclude(state: &mut SessionState, turn: Turn<'_>) -> Option<Vec<MessageId>> {
    if turn.cancelled {
        state.cancel_answered = true;
    }
    let mut commit = prepare_commit(state, turn.inbound.update_id, turn.earlier, turn.change);
    let to = match turn.deliver_to.clone() {
        Some(to) => {
            if let Some(commit) = &mut commit {
                commit.key = Some(state.key.clone());
            }
            to
        }
        None => state.key.clone(),
    };
    // Nothing sent into a Business fan chat (as the creator) carries the
    // bot's buttons.
    let as_creator = to.is_business();
    // An answer to a text may be replaced when the user edits that text.
    let answered_text = matches!(turn.reply, Reply::Markdown(_))
        && matches!(
            turn.inbound.kind,
            InboundKind::Text(_) | InboundKind::Edited(_)
        );
    let user_message = turn.inbound.message_id.filter(|_| answered_text);
    let streamed = !turn.streamed.is_empty() || turn.drafted;
    let mut shown = if streamed {
        turn.streamed
    } else {
        turn.replaces
    };
    // The LLM's answer, when the history ends with it, gets Regenerate.
    // An empty keyboard asks for none (an edit without one removes the
    // buttons the message had).
    let regenerate = match turn.keyboard {
        Some(keyboard) => Some(keyboard).filter(|keyboard| !keyboard.is_empty()),
        // A fan chat's messages are never the bot's answers to regenerate.
        None if state.key.is_business() => None,
        None => matches!(turn.reply, Reply::Markdown(_))
            .then(|| super::buttons::regenerate_keyboard(state, &turn.texts, turn.asker))
            .flatten(),
    }
    .filter(|_| !as_creator);
    let mut messages = turn
        .reply
        .into_messages(state.deps.config.telegram.max_message_chars);
    if regenerate.is_some() {
        with_keyboard_last(&mut messages, regenerate);
    }
    let (parts, filled) = super::live::diff(&shown, messages);
    // A streamed answer's first message replied when it was first shown.
    let parts = Part::reply_first(parts, turn.reply_to.filter(|_| shown.is_empty()));
    let parts_count = parts.len();
    let delivered = send_parts(&state.deps, &to, parts, commit).await;
    if !turn.ignored_edit {
        state.last_answer = None;
    }
    match delivered {
        Ok(ids) => {
            tracing::debug!(parts = parts_count, "delivered");
            let sent = ids.clone();
            if let Some(user_message) = user_message
                && ids.len() == filled.len()
            {
                for (id, (index, text)) in ids.into_iter().zip(filled) {
                    match shown.get_mut(index) {
                        Some(slot) => *slot = (id, text),
                        None => shown.push((id, text)),
                    }
                }
                state.last_answer = Some(LastAnswer {
                    user_message,
                    at: std::time::Instant::now(),
                    shown,
                });
            }
            Some(sent)
        }
        Err(error) => {
            // A fan chat's send refused by Telegram (a 400 on a call with a
            // business connection: no right, a closed connection, a chat
            // the creator excluded) is final for that message.
            if as_creator && !error.is_retryable() {
                metrics::counter!(crate::telemetry::families::BUSINESS_AUTO, "outcome" => "refused")
                    .increment(1);
            }
            tracing::warn!(class = error.class(), %error, "reply not delivered");
            None
        }
    }
}

/// Tells the supervisor the update (and those merged into it) is done.
pub(super) fn finish(
    state: &SessionState,
    update_id: u32,
    earlier: &[u32],
) -> Result<(), ActorProcessingErr> {
    for &update_id in earlier.iter().chain([&update_id]) {
        state.supervisor.cast(super::SessionSupMsg::TurnFinished {
            key: state.key.clone(),
            update_id,
        })?;
    }
    Ok(())
}

/// Sends parts through the outbox (committing `commit` after them).
pub(super) async fn send_parts(
    deps: &SessionDeps,
    to: &SessionKey,
    parts: Vec<Part>,
    commit: Option<TurnCommit>,
) -> Delivered {
    deps.directory
        .outbox()
        .deliver(to, &parts, commit.as_ref())
        .await
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
        Change::Forget => forget(state)?,
        Change::Update => RecordChange::Put(state.encoded_record()?),
    };
    Some(TurnCommit {
        key: None,
        update_id,
        also_answered: earlier.to_vec(),
        change,
    })
}

/// Forgets the chat (`/forget`): history, settings and counters, except
/// the day's and month's spend (tokens and cost), which is kept apart (a
/// budget counts spend, not conversation). `None` (logged) if the spend
/// does not encode.
fn forget(state: &mut SessionState) -> Option<RecordChange> {
    state.history.clear();
    super::summary::clear(state);
    state.settings = ChatSettings::default();
    let usage = ChatUsage::of(&state.counters);
    state.counters = usage.counters();
    if usage.is_nothing() {
        return Some(RecordChange::Forget(None));
    }
    match record::encode_usage(&usage) {
        Ok(bytes) => Some(RecordChange::Forget(Some(bytes))),
        Err(error) => {
            tracing::error!(%error, "cannot encode the chat usage; turn not stored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_no_message_and_texts_keep_their_kind() {
        assert!(Reply::Silent.into_messages(4096).is_empty());
        let plain = Reply::Plain("**not bold**".into()).into_messages(4096);
        assert_eq!(plain, vec![OutgoingText::plain("**not bold**")]);
        let markdown = Reply::Markdown("**bold**".into()).into_messages(4096);
        assert_eq!(markdown.len(), 1);
        assert_ne!(markdown[0], OutgoingText::plain("**bold**"));
    }
}
