//! `draft` mode of a Telegram Business fan chat (issue 17): the bot writes
//! a suggested reply to each fan message and shows it to the creator in
//! their control room (their private chat with the bot) under ✅ Send ·
//! 🔄 Another · ✏️ Edit · 🚫 Skip; nothing reaches the fan without the
//! creator's tap.
//!
//! Everything about one fan's suggestions happens in that fan's
//! conversation, in order with the fan's messages: the front routes a
//! suggestion's button press, and the creator's own reply after ✏️ Edit
//! ([`InboundKind::CreatorReply`]), to the fan's session
//! (`front::route_creators`). So:
//!
//! - **Outdated before it can be sent:** a fan message admitted before the
//!   tap is handled first and closes the suggestion (its control-room
//!   message says so); the tap then finds it closed. The creator writing to
//!   the fan themselves, or the fan's message being deleted, closes it too.
//! - **Exactly once:** the suggestion is part of the fan chat's record
//!   ([`StoredDraft`], chat record v7), and a tap is an update of the fan
//!   chat: ✅ Send's delivery to the fan commits the history with the sent
//!   text, the suggestion closed and the tap answered, in one commit after
//!   the send (the outbox's send-then-commit). A tap admitted before a
//!   crash is replayed once and finds the suggestion still open only if
//!   that commit was not made: the one window left is any answer's ("sent,
//!   then killed before the commit").
//! - **Numbers, not texts:** each suggestion (and each 🔄 Another) takes
//!   the next number ([`crate::store::record::FanRecord::draft_seq`]); a
//!   button names the number it was shown with, so a tap on a replaced one
//!   never sends the newer text.
//! - **Nothing without the right:** ✅ Send and the creator's own reply
//!   need the connection enabled and its `can_reply`; the connection is
//!   read again right before.

use std::sync::Arc;

use ractor::ActorProcessingErr;

use super::SessionState;
use super::buttons::{answer, conclude as done};
use super::turn::{self, Change, Reply, Turn, escape_markdown};
use crate::actors::root::business::Connection;
use crate::actors::root::outbox::Part;
use crate::actors::root::persistence::RecordChange;
use crate::input::cut_chars;
use crate::llm::Role;
use crate::store::record::StoredDraft;
use crate::telegram::buttons::{Action, Button, DraftOp, Keyboard};
use crate::telegram::inbound::{ChatId, Inbound, InboundKind, MessageId, Press, SessionKey};
use crate::telegram::render::OutgoingText;
use crate::texts::{Texts, fill};

/// How much of the fan's message the control room shows (characters).
const FAN_TEXT_SHOWN: usize = 500;
/// How much of a suggestion the control room shows (characters; what is
/// sent is the whole of it).
const SUGGESTION_SHOWN: usize = 3_000;

/// Why an open suggestion was closed without being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    /// The fan wrote again.
    FanWrote,
    /// The creator wrote to the fan themselves.
    CreatorAnswered,
    /// The fan's message was deleted.
    Deleted,
    /// The creator forgot the fan (`/forget <fan>`).
    Forgotten,
}

/// The creator's control room.
fn control_room(connection: &Connection) -> SessionKey {
    SessionKey::of_chat(ChatId(connection.owner_chat_id))
}

/// The texts the creator reads.
fn creator_texts(state: &SessionState, connection: &Connection) -> Arc<Texts> {
    Arc::clone(
        state
            .deps
            .locales
            .for_language(connection.language.as_deref()),
    )
}

/// The fan chat's connection as it is now; `None` when unknown or the
/// business actor is away (fails closed).
async fn connection(state: &SessionState) -> Option<Connection> {
    let id = state.key.connection()?;
    state.deps.directory.business().get(id).await
}

/// A fan message answered with a suggestion: the LLM's reply (in the fan
/// persona) shown in the control room with its buttons; the history keeps
/// the fan's message only until the creator sends something.
pub(super) async fn suggest(
    state: &mut SessionState,
    turn: &mut Turn<'_>,
    text: &str,
    connection: &Connection,
) -> Reply {
    let texts = creator_texts(state, connection);
    let chosen = fan_persona(state).await;
    let reply = super::on_text(state, turn, text).await;
    state.settings.persona = chosen;
    let name = fan_name(state, connection).await;
    let draft = StoredDraft {
        seq: next_seq(state),
        text: String::new(),
        fan_text: cut_chars(&crate::input::clean(text), FAN_TEXT_SHOWN),
        fan_name: name,
        fan_message: turn.inbound.message_id.map(|id| id.0),
        shown_in: None,
        editing: false,
    };
    show(state, turn, &texts, connection, draft, reply, None)
}

/// A new suggestion was delivered to the control room as `sent`: its
/// message id is noted and stored at once (the turn's commit was made
/// before the id was known), so a later fan message can mark it outdated,
/// also after a restart or an eviction.
pub(super) async fn shown(state: &mut SessionState, sent: Option<&[MessageId]>, update_id: u32) {
    let (Some(draft), Some(id)) = (
        state
            .draft
            .as_mut()
            .filter(|draft| draft.shown_in.is_none()),
        sent.and_then(|ids| ids.last()),
    ) else {
        return;
    };
    draft.shown_in = Some(id.0);
    store_now(state, update_id).await;
}

/// Where a new (or another) suggestion goes: the draft filled with the
/// LLM's reply, stored in the session, and shown in the control room —
/// as a new message, or in place of `replacing`.
fn show(
    state: &mut SessionState,
    turn: &mut Turn<'_>,
    texts: &Texts,
    connection: &Connection,
    mut draft: StoredDraft,
    reply: Reply,
    replacing: Option<MessageId>,
) -> Reply {
    let failure = match reply {
        Reply::Markdown(answer) => {
            take_answer(state);
            draft.text = answer;
            metrics::counter!(crate::telemetry::families::BUSINESS_DRAFTS, "outcome" => "suggested")
                .increment(1);
            tracing::info!(seq = draft.seq, "suggestion shown to the creator");
            None
        }
        Reply::Plain(reason) => Some(reason),
        _ => Some(texts.llm_unavailable.clone()),
    };
    if failure.is_some() {
        metrics::counter!(crate::telemetry::families::BUSINESS_DRAFTS, "outcome" => "failed")
            .increment(1);
        tracing::info!(
            seq = draft.seq,
            "no suggestion written; the creator is told"
        );
    }
    draft.shown_in = replacing.map(|id| id.0).or(draft.shown_in);
    let body = match &failure {
        Some(reason) => format!(
            "_{}_",
            escape_markdown(&fill(&texts.draft_failed, &[("reason", reason)]))
        ),
        None => shown_suggestion(&draft.text),
    };
    let view = compose(texts, &draft, &body, None);
    turn.deliver_to = Some(control_room(connection));
    turn.keyboard = Some(keyboard(texts, state.key.chat().0, &draft));
    turn.change = Change::Update;
    if let Some(id) = replacing {
        turn.replaces = vec![(id, OutgoingText::plain(""))];
    }
    state.draft = Some(draft);
    Reply::Markdown(view)
}

/// Puts the fan persona in the session's settings for one LLM answer;
/// returns the chat's own choice, to put back after it.
async fn fan_persona(state: &mut SessionState) -> Option<String> {
    let persona = super::fan_turn::persona(state).await;
    std::mem::replace(&mut state.settings.persona, persona)
}

/// Takes the LLM's answer back out of the history: a suggestion is not
/// what "the creator" said until it is sent.
fn take_answer(state: &mut SessionState) {
    let last = state
        .history
        .messages()
        .last()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| Arc::clone(&m.content));
    if let Some(answer) = last {
        state.history.remove(&answer);
    }
}

/// The next suggestion number.
fn next_seq(state: &mut SessionState) -> u32 {
    state.draft_seq = state.draft_seq.wrapping_add(1);
    state.draft_seq
}

/// The fan's first name as the business actor last saw it, else the chat
/// id.
async fn fan_name(state: &SessionState, connection: &Connection) -> String {
    let fan = state.key.chat().0;
    state
        .deps
        .directory
        .business()
        .fans(&connection.id)
        .await
        .into_iter()
        .find(|seen| seen.chat_id == fan && !seen.name.trim().is_empty())
        .map_or_else(|| fan.to_string(), |seen| seen.name)
}

/// The suggestion as the control room shows it (Markdown, bounded).
fn shown_suggestion(text: &str) -> String {
    cut_chars(text, SUGGESTION_SHOWN)
}

/// The control room's message about a suggestion (Markdown): who wrote
/// what, the suggestion (or why there is none) and, once it is closed or
/// being edited, a status line.
fn compose(texts: &Texts, draft: &StoredDraft, body: &str, status: Option<&str>) -> String {
    let header = escape_markdown(&fill(
        &texts.draft_from,
        &[("fan", &draft.fan_name), ("text", &draft.fan_text)],
    ));
    let mut view = if body.is_empty() {
        header
    } else {
        format!("{header}\n\n{body}")
    };
    if let Some(status) = status {
        view.push_str(&format!("\n\n_{}_", escape_markdown(status)));
    }
    view
}

/// The suggestion's body as shown once closed or while edited.
fn body_of(draft: &StoredDraft) -> String {
    shown_suggestion(&draft.text)
}

/// ✅ Send (when there is a text to send) · 🔄 Another, ✏️ Edit · 🚫 Skip.
fn keyboard(texts: &Texts, fan: i64, draft: &StoredDraft) -> Keyboard {
    let Ok(fan) = u64::try_from(fan) else {
        return Vec::new();
    };
    let button = |label: &str, op| {
        Action::Draft {
            op,
            fan,
            seq: draft.seq,
        }
        .encode()
        .map(|data| Button {
            label: label.to_owned(),
            data,
        })
    };
    let mut first: Vec<Button> = Vec::new();
    if !draft.text.is_empty() {
        first.extend(button(&texts.draft_send, DraftOp::Send));
    }
    first.extend(button(&texts.draft_another, DraftOp::Another));
    let second: Vec<Button> = [
        button(&texts.draft_edit, DraftOp::Edit),
        button(&texts.draft_skip, DraftOp::Skip),
    ]
    .into_iter()
    .flatten()
    .collect();
    vec![first, second]
}

/// Replaces the control-room message `message_id` with `markdown` (and
/// `keyboard`, or none). Best effort, not committed: the suggestion's state
/// is in the record; the message only shows it.
async fn restate(
    state: &SessionState,
    connection: &Connection,
    message_id: MessageId,
    markdown: &str,
    keyboard: Option<Keyboard>,
) {
    let max = state.deps.config.telegram.max_message_chars;
    let Some(mut text) = Reply::Markdown(markdown.to_owned())
        .into_messages(max)
        .into_iter()
        .next()
    else {
        return;
    };
    text.keyboard = keyboard;
    let parts = [Part::Edit { message_id, text }];
    let shown = state
        .deps
        .directory
        .outbox()
        .deliver(&control_room(connection), &parts, None)
        .await;
    if let Err(error) = shown {
        tracing::debug!(class = error.class(), %error, "suggestion's control-room message not updated");
    }
}

/// Tells the creator something in the control room; best effort.
fn tell(state: &SessionState, connection: &Connection, text: &str) {
    state
        .deps
        .directory
        .outbox()
        .notify(&control_room(connection), text);
}

/// Closes the open suggestion, if any, without sending it: its control-room
/// message says why and loses its buttons, and a ✏️ Edit on it ends. The
/// record is stored with the turn that closed it.
pub(super) async fn close(state: &mut SessionState, why: Closed) {
    let Some(draft) = state.draft.take() else {
        return;
    };
    tracing::info!(seq = draft.seq, ?why, "open suggestion closed");
    metrics::counter!(crate::telemetry::families::BUSINESS_DRAFTS, "outcome" => "outdated")
        .increment(1);
    let Some(connection) = connection(state).await else {
        return;
    };
    if draft.editing {
        end_edit(state, &connection, draft.seq).await;
    }
    let Some(shown_in) = draft.shown_in else {
        return;
    };
    let texts = creator_texts(state, &connection);
    let status = match why {
        Closed::FanWrote => fill(&texts.draft_outdated, &[("fan", &draft.fan_name)]),
        Closed::CreatorAnswered => texts.draft_answered.clone(),
        Closed::Deleted => texts.draft_deleted.clone(),
        Closed::Forgotten => texts.draft_forgotten.clone(),
    };
    let view = compose(&texts, &draft, &body_of(&draft), Some(&status));
    restate(state, &connection, MessageId(shown_in), &view, None).await;
}

/// Whether a deletion of `ids` removes the message the open suggestion
/// answers.
pub(super) fn answers_one_of(state: &SessionState, ids: &[MessageId]) -> bool {
    state
        .draft
        .as_ref()
        .and_then(|draft| draft.fan_message)
        .is_some_and(|answered| ids.iter().any(|id| id.0 == answered))
}

/// Ends the creator's ✏️ Edit of suggestion `seq` (logged if it cannot be
/// stored: their next text then comes here and is told it is late).
async fn end_edit(state: &SessionState, connection: &Connection, seq: u32) {
    let fan = state.key.chat().0;
    let ended = state
        .deps
        .directory
        .business()
        .end_edit(&connection.id, fan, seq)
        .await;
    if let Err(error) = ended {
        tracing::warn!(%error, "the end of an edit was not stored");
    }
}

/// Stores the session's record now, re-committing update `update_id` (a
/// send that failed after its commit was prepared).
async fn store_now(state: &SessionState, update_id: u32) {
    let Some(record) = state.encoded_record() else {
        return;
    };
    let stored = state
        .deps
        .directory
        .persistence()
        .commit_turn(&state.key, update_id, &[], &RecordChange::Put(record))
        .await;
    if let Err(error) = stored {
        tracing::warn!(%error, "fan chat record not stored; the next turn stores it");
    }
}

/// A press of a suggestion's button, routed here from the control room:
/// answered at once (`answerCallbackQuery`), then acted on. Always marks
/// the update answered.
pub(super) async fn on_press(
    state: &mut SessionState,
    inbound: &Inbound,
    press: &Press,
    earlier: &[u32],
) -> Result<(), ActorProcessingErr> {
    let mut turn = Turn::new(&state.deps, inbound, earlier);
    turn.change = Change::Keep;
    let fan = state.key.chat().0;
    let connection = connection(state)
        .await
        .filter(|c| inbound.user_id.and_then(|u| i64::try_from(u).ok()) == Some(c.owner_user_id));
    let action = press.action();
    let (Some(connection), Some(Action::Draft { op, seq, .. })) = (connection, action) else {
        tracing::info!(
            "suggestion button pressed by someone it is not for, or without a connection"
        );
        answer(state, press, Some(&turn.texts.draft_gone), false).await;
        return done(state, turn, inbound).await;
    };
    // The creator's own texts (they pressed it).
    turn.texts = creator_texts(state, &connection);
    let texts = Arc::clone(&turn.texts);
    let open = state.draft.as_ref().is_some_and(|draft| draft.seq == seq);
    if !open {
        tracing::info!(seq, "button of a closed suggestion pressed");
        if op == DraftOp::Edit {
            // The front began an edit for it; it must not catch a text.
            end_edit(state, &connection, seq).await;
        }
        answer(state, press, Some(&texts.draft_gone), false).await;
        return done(state, turn, inbound).await;
    }
    match op {
        DraftOp::Send => send(state, turn, inbound, press, &connection).await,
        DraftOp::Another => another(state, turn, inbound, press, &connection).await,
        DraftOp::Edit => {
            answer(state, press, Some(&texts.draft_edit_toast), false).await;
            let Some(draft) = state.draft.as_mut() else {
                return done(state, turn, inbound).await;
            };
            draft.editing = true;
            draft.shown_in = Some(press.message_id.0);
            let draft = draft.clone();
            tracing::info!(seq, "the creator writes their own reply");
            let status = fill(&texts.draft_editing, &[("fan", &draft.fan_name)]);
            turn.reply = Reply::Markdown(compose(&texts, &draft, &body_of(&draft), Some(&status)));
            turn.keyboard = Some(keyboard(&texts, fan, &draft));
            turn.deliver_to = Some(control_room(&connection));
            turn.replaces = vec![(press.message_id, OutgoingText::plain(""))];
            turn.change = Change::Update;
            turn::conclude(state, turn).await;
            turn::finish(state, inbound.update_id, &[])
        }
        DraftOp::Skip => {
            answer(state, press, None, false).await;
            let Some(draft) = state.draft.take() else {
                return done(state, turn, inbound).await;
            };
            if draft.editing {
                end_edit(state, &connection, draft.seq).await;
            }
            tracing::info!(seq, "suggestion skipped");
            metrics::counter!(crate::telemetry::families::BUSINESS_DRAFTS, "outcome" => "skipped")
                .increment(1);
            turn.reply = Reply::Markdown(compose(
                &texts,
                &draft,
                &body_of(&draft),
                Some(&texts.draft_skipped),
            ));
            turn.keyboard = Some(Vec::new());
            turn.deliver_to = Some(control_room(&connection));
            turn.replaces = vec![(press.message_id, OutgoingText::plain(""))];
            turn.change = Change::Update;
            turn::conclude(state, turn).await;
            turn::finish(state, inbound.update_id, &[])
        }
    }
}

/// ✅ Send: the suggestion goes to the fan as the creator; the history
/// keeps it, the suggestion closes and the tap is answered in the commit
/// made right after the send.
async fn send(
    state: &mut SessionState,
    mut turn: Turn<'_>,
    inbound: &Inbound,
    press: &Press,
    connection: &Connection,
) -> Result<(), ActorProcessingErr> {
    let texts = Arc::clone(&turn.texts);
    if !connection.enabled {
        answer(state, press, Some(&texts.draft_connection_off), true).await;
        return done(state, turn, inbound).await;
    }
    if !connection.can_reply {
        answer(state, press, Some(&texts.draft_no_right), true).await;
        return done(state, turn, inbound).await;
    }
    let Some(draft) = state.draft.take().filter(|draft| !draft.text.is_empty()) else {
        answer(state, press, Some(&texts.draft_gone), false).await;
        return done(state, turn, inbound).await;
    };
    answer(state, press, Some(&texts.draft_sending), false).await;
    let content: Arc<str> = draft.text.as_str().into();
    state.history.push(Role::Assistant, Arc::clone(&content));
    turn.reply = Reply::Markdown(draft.text.clone());
    turn.change = Change::Update;
    let sent = turn::conclude(state, turn).await;
    delivered(
        state,
        inbound,
        connection,
        draft,
        content,
        sent,
        Some(press.message_id),
    )
    .await;
    turn::finish(state, inbound.update_id, &[])
}

/// After a send to the fan (the suggestion, or the creator's own text):
/// delivered, the control room shows it sent; not, the history and the
/// suggestion are as before it (stored again) and the control room says it
/// was not sent. `shown_in` is the suggestion's control-room message, when
/// known (its id can be lost to a restart: then only the creator's own
/// text gets its confirmation).
async fn delivered(
    state: &mut SessionState,
    inbound: &Inbound,
    connection: &Connection,
    mut draft: StoredDraft,
    content: Arc<str>,
    sent: Option<Vec<MessageId>>,
    shown_in: Option<MessageId>,
) {
    let texts = creator_texts(state, connection);
    let own = matches!(inbound.kind, InboundKind::CreatorReply { .. });
    match sent {
        Some(ids) => {
            tracing::info!(seq = draft.seq, own, "sent to the fan as the creator");
            metrics::counter!(crate::telemetry::families::BUSINESS_DRAFTS, "outcome" => if own { "sent_own" } else { "sent" })
                .increment(1);
            super::fan_turn::track(state, ids.last().copied(), Some(content));
            if draft.editing || own {
                end_edit(state, connection, draft.seq).await;
            }
            let status = if own {
                fill(&texts.draft_sent_yours, &[("fan", &draft.fan_name)])
            } else {
                texts.draft_sent.clone()
            };
            if let Some(shown_in) = shown_in {
                let view = compose(&texts, &draft, &body_of(&draft), Some(&status));
                restate(state, connection, shown_in, &view, None).await;
            }
            if own {
                tell(state, connection, &status);
            }
        }
        None => {
            tracing::warn!(
                seq = draft.seq,
                "not sent to the fan; the suggestion stays open"
            );
            metrics::counter!(crate::telemetry::families::BUSINESS_DRAFTS, "outcome" => "not_sent")
                .increment(1);
            state.history.remove(&content);
            draft.editing = false;
            let view = compose(
                &texts,
                &draft,
                &body_of(&draft),
                Some(&texts.draft_not_sent),
            );
            let keyboard = keyboard(&texts, state.key.chat().0, &draft);
            state.draft = Some(draft);
            store_now(state, inbound.update_id).await;
            if let Some(shown_in) = shown_in {
                restate(state, connection, shown_in, &view, Some(keyboard)).await;
            }
            if own {
                tell(state, connection, &texts.draft_not_sent);
            }
        }
    }
}

/// 🔄 Another: the fan's message answered again; the control-room message
/// shows the new suggestion (a new number) in place of the old.
async fn another(
    state: &mut SessionState,
    mut turn: Turn<'_>,
    inbound: &Inbound,
    press: &Press,
    connection: &Connection,
) -> Result<(), ActorProcessingErr> {
    let texts = Arc::clone(&turn.texts);
    let fan = state.key.chat().0;
    let admitted = state
        .deps
        .directory
        .business()
        .admit_fan(&connection.id, fan)
        .await;
    // The question asked again is the fan's message the history ends with.
    let ends_with_fan = state
        .history
        .messages()
        .last()
        .is_some_and(|m| m.role == Role::User);
    if !admitted || !ends_with_fan {
        let text = if admitted {
            &texts.draft_gone
        } else {
            &texts.draft_slow_down
        };
        answer(state, press, Some(text), false).await;
        return done(state, turn, inbound).await;
    }
    answer(state, press, Some(&texts.draft_writing), false).await;
    let Some(old) = state.draft.take() else {
        return done(state, turn, inbound).await;
    };
    if old.editing {
        end_edit(state, connection, old.seq).await;
    }
    let Some(question) = state.history.take_last_question() else {
        return done(state, turn, inbound).await;
    };
    turn.deliver_to = Some(control_room(connection));
    let chosen = fan_persona(state).await;
    let reply = super::llm_turn::answer(state, &mut turn, &question).await;
    state.settings.persona = chosen;
    // The fan's message is a new turn now: a deletion must still find it.
    if let Some(asked) = state
        .history
        .messages()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| Arc::clone(&m.content))
    {
        for (_, tracked) in state.fan_messages.iter_mut() {
            if Arc::ptr_eq(tracked, &question) {
                *tracked = Arc::clone(&asked);
            }
        }
    }
    let draft = StoredDraft {
        seq: next_seq(state),
        text: String::new(),
        editing: false,
        ..old
    };
    tracing::info!(seq = draft.seq, "another suggestion");
    turn.reply = show(
        state,
        &mut turn,
        &texts,
        connection,
        draft,
        reply,
        Some(press.message_id),
    );
    state.counters.answered += 1;
    turn::conclude(state, turn).await;
    super::summary::after_turn(state, inbound.update_id);
    turn::finish(state, inbound.update_id, &[])
}

/// The creator's own reply (their control-room text after ✏️ Edit) to
/// suggestion `seq`: sent to the fan as it is, if that suggestion is still
/// open; otherwise they are told, and nothing is sent.
pub(super) async fn on_creator_reply(
    state: &mut SessionState,
    inbound: &Inbound,
    seq: u32,
    text: &str,
    earlier: &[u32],
) -> Result<(), ActorProcessingErr> {
    let mut turn = Turn::new(&state.deps, inbound, earlier);
    turn.change = Change::Keep;
    let connection = connection(state)
        .await
        .filter(|c| inbound.user_id.and_then(|u| i64::try_from(u).ok()) == Some(c.owner_user_id));
    let Some(connection) = connection else {
        tracing::info!("the creator's reply came without a connection; not sent");
        return done(state, turn, inbound).await;
    };
    let texts = creator_texts(state, &connection);
    let open = state.draft.as_ref().is_some_and(|draft| draft.seq == seq);
    let Some(draft) = state.draft.clone().filter(|_| open) else {
        tracing::info!(
            seq,
            "the creator's reply came for a closed suggestion; not sent"
        );
        end_edit(state, &connection, seq).await;
        let fan = state.key.chat().0.to_string();
        tell(
            state,
            &connection,
            &fill(&texts.draft_reply_late, &[("fan", &fan)]),
        );
        return done(state, turn, inbound).await;
    };
    let refusal = if !connection.enabled {
        Some(texts.draft_connection_off.clone())
    } else if !connection.can_reply {
        Some(texts.draft_no_right.clone())
    } else {
        match crate::input::validate(text, state.deps.config.input.max_chars) {
            Ok(_) => None,
            Err(crate::input::Rejection::Empty) => Some(texts.empty_text.clone()),
            Err(_) => Some(fill(
                &texts.too_long,
                &[
                    ("length", &text.chars().count().to_string()),
                    ("limit", &state.deps.config.input.max_chars.to_string()),
                ],
            )),
        }
    };
    if let Some(refusal) = refusal {
        // The suggestion stays open: they may tap ✏️ Edit again or Send.
        if let Some(open) = state.draft.as_mut() {
            open.editing = false;
        }
        end_edit(state, &connection, draft.seq).await;
        tell(state, &connection, &refusal);
        turn.change = Change::Update;
        turn::conclude(state, turn).await;
        return turn::finish(state, inbound.update_id, earlier);
    }
    state.draft = None;
    // Sent as the creator wrote it (their words, not Markdown).
    let content: Arc<str> = text.into();
    state.history.push(Role::Assistant, Arc::clone(&content));
    turn.reply = Reply::Plain(text.to_owned());
    turn.change = Change::Update;
    let sent = turn::conclude(state, turn).await;
    let shown_in = draft.shown_in.map(MessageId);
    delivered(state, inbound, &connection, draft, content, sent, shown_in).await;
    turn::finish(state, inbound.update_id, earlier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(text: &str) -> StoredDraft {
        StoredDraft {
            seq: 7,
            text: text.into(),
            fan_text: "is it *on sale*?".into(),
            fan_name: "Ann_B".into(),
            fan_message: Some(3),
            shown_in: None,
            editing: false,
        }
    }

    #[test]
    fn the_fans_words_are_shown_literally_and_the_status_last() {
        let texts = crate::texts::Locales::load().unwrap();
        let texts = texts.for_language(None);
        let view = compose(texts, &draft("**Yes!**"), "**Yes!**", Some("Sent."));
        assert!(
            view.starts_with("💬 Ann\\_B wrote\\: is it \\*on sale\\*\\?"),
            "{view}"
        );
        assert!(view.contains("\n\n**Yes!**\n\n_Sent\\._"), "{view}");
    }

    #[test]
    fn send_is_offered_only_with_a_text() {
        let texts = crate::texts::Locales::load().unwrap();
        let texts = texts.for_language(None);
        let with = keyboard(texts, 6001, &draft("yes"));
        assert_eq!(with[0][0].data, "bd1:s:6001:7");
        assert_eq!(with[0][1].data, "bd1:a:6001:7");
        assert_eq!(with[1][0].data, "bd1:e:6001:7");
        assert_eq!(with[1][1].data, "bd1:k:6001:7");
        let without = keyboard(texts, 6001, &draft(""));
        assert_eq!(without[0].len(), 1);
        assert_eq!(without[0][0].data, "bd1:a:6001:7");
        assert!(keyboard(texts, -5, &draft("x")).is_empty());
    }

    #[test]
    fn long_texts_are_cut_with_an_ellipsis() {
        assert_eq!(cut_chars("abcdef", 3), "abc…");
        assert_eq!(cut_chars("abc", 3), "abc");
        assert_eq!(cut_chars("ab cd", 3), "ab…");
    }
}
