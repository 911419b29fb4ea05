//! Button presses (callback queries): Regenerate, Stop and the pickers.
//!
//! A press arrives like a message (admitted durably, in the chat's order,
//! through the rate limiter) and is answered with `answerCallbackQuery`
//! as soon as it is decided, before any LLM call. Its data is untrusted
//! ([`Action::decode`]); unknown data gets a polite notice and nothing else.
//!
//! - **Who may press:** in a private chat, its user (no one else can see
//!   the buttons). In a group, Regenerate and Stop belong to the user whose
//!   message the answer answers (named in the button's data), a group
//!   administrator or a bot admin; anyone else gets a "not your button"
//!   alert. A picker press runs the typed command, with its own rule
//!   (`group_admin.rs`, admin-only commands, the control room's owner
//!   check for `bm1:`) and its own reply.
//! - **Regenerate** (`r1:<answer id>:<asker>`): answers the chat's last
//!   question again, as `/retry` does, and edits the pressed message into
//!   the new answer (`Turn::replaces`, the edited-message path); the history
//!   keeps the new answer only. The answer id names the exchange the
//!   history ends with ([`answer_id`]), so a press on an older answer is
//!   refused ("only the latest"), and one replayed after a restart is
//!   checked against the stored history. Idempotent: a second press of the
//!   same button finds the exchange replaced (or, when the new answer reads
//!   the same, received before the regeneration finished) and is answered
//!   "already done": a double tap makes one LLM call.
//! - **Stop** (`s1:<asker>`): the session supervisor wakes the answer in
//!   flight on arrival, as for `/cancel` (what was shown stays); the press
//!   is answered here once the answer stopped.
//! - **Old keyboards** are not removed when a newer answer comes (that would
//!   cost an edit per turn): their presses are refused when they arrive.

use std::time::Instant;

use super::SessionState;
use super::turn::{self, Change, Reply, Turn};
use crate::config::BusinessMode;
use crate::llm::Role;
use crate::telegram::buttons::{self, Action, Button, Keyboard, answer_id};
use crate::telegram::command::{Command, ModeArg};
use crate::telegram::inbound::{Inbound, InboundKind, Press};
use crate::telegram::render::OutgoingText;
use crate::texts::Texts;
use ractor::ActorProcessingErr;

/// A Regenerate that was carried out, kept (in memory) for a second press
/// of the same button.
#[derive(Debug, Clone, Copy)]
pub(super) struct Regenerated {
    /// The answer id the pressed button named.
    replaced: u64,
    /// The new answer's id.
    new: u64,
    /// When the new answer was delivered.
    at: Instant,
}

/// Handles a press: decided, answered with `answerCallbackQuery`, then
/// acted on. Always marks the update answered.
pub(super) async fn on_press(
    state: &mut SessionState,
    inbound: &Inbound,
    press: &Press,
    earlier: &[u32],
) -> Result<(), ActorProcessingErr> {
    let mut turn = Turn::new(&state.deps, inbound, earlier);
    turn.change = Change::Keep;
    if let Some(refusal) = super::admission::refusal(state, &mut turn).await {
        let text = match refusal {
            Reply::Plain(text) => text,
            _ => turn.texts.button_refused.clone(),
        };
        answer(state, press, Some(&text), true).await;
        return conclude(state, turn, inbound).await;
    }
    let Some(action) = press.action() else {
        tracing::info!("button press with unknown data");
        answer(state, press, Some(&turn.texts.button_unknown), false).await;
        return conclude(state, turn, inbound).await;
    };
    match action {
        Action::Stop { asker } => {
            let text = if !may_press(state, inbound, asker).await {
                return refuse(state, turn, inbound, press).await;
            } else if std::mem::take(&mut state.cancel_answered) {
                &turn.texts.button_stopped
            } else {
                &turn.texts.button_nothing_to_stop
            };
            answer(state, press, Some(text), false).await;
        }
        Action::Regenerate { answer: id, asker } => {
            if !may_press(state, inbound, asker).await {
                return refuse(state, turn, inbound, press).await;
            }
            return regenerate(state, turn, inbound, press, id, asker).await;
        }
        Action::Persona(name) => {
            let command = Command::from_words("persona", &name, &state.deps.config.commands);
            return typed(state, inbound, press, command, earlier).await;
        }
        Action::Model(index) => {
            let Some(model) = model_choices(state).get(index).cloned() else {
                answer(state, press, Some(&turn.texts.button_unknown), false).await;
                return conclude(state, turn, inbound).await;
            };
            let command = Command::from_words("model", &model, &state.deps.config.commands);
            return typed(state, inbound, press, command, earlier).await;
        }
        Action::BusinessMode(mode) => {
            // Runs `/mode <mode>`, with its own checks (`control.rs`).
            let command = Command::Mode(ModeArg::Set { fan: None, mode });
            return typed(state, inbound, press, command, earlier).await;
        }
        // A suggestion's button reaches the fan's conversation (the front
        // routes it there by the presser's connection); here it came from
        // someone with no enabled connection.
        Action::Draft { .. } => {
            tracing::info!("suggestion button pressed without a connection");
            answer(state, press, Some(&turn.texts.draft_gone), false).await;
        }
    }
    conclude(state, turn, inbound).await
}

/// Regenerate pressed by someone who may: the latest exchange answered
/// again, the pressed message edited into the new answer.
async fn regenerate(
    state: &mut SessionState,
    mut turn: Turn<'_>,
    inbound: &Inbound,
    press: &Press,
    id: u64,
    asker: u64,
) -> Result<(), ActorProcessingErr> {
    let texts = std::sync::Arc::clone(&turn.texts);
    // The same button again: its answer was replaced, or (when the new
    // answer reads the same) the press came before the new answer did.
    let again = state.regenerated.filter(|done| {
        (done.replaced == id && done.new != id) || (done.new == id && inbound.received_at < done.at)
    });
    if let Some(done) = again {
        tracing::info!(
            same_text = done.new == id,
            "regenerate pressed again; already done"
        );
        answer(state, press, Some(&texts.button_already_done), false).await;
        return conclude(state, turn, inbound).await;
    }
    if latest_answer_id(state) != Some(id) {
        tracing::info!("regenerate pressed on an older answer");
        answer(state, press, Some(&texts.button_only_latest), false).await;
        return conclude(state, turn, inbound).await;
    }
    // Answered before the LLM call: Telegram's client waits for it.
    answer(state, press, Some(&texts.button_working), false).await;
    tracing::info!("regenerating the last answer");
    // The answer shown in full when this session delivered it, else the
    // pressed message (the last of the answer's messages).
    turn.replaces = match state.last_answer.take() {
        Some(last) if last.shown.last().map(|(id, _)| *id) == Some(press.message_id) => last.shown,
        _ => vec![(press.message_id, OutgoingText::plain(""))],
    };
    turn.asker = asker;
    turn.change = Change::Update;
    turn.reply = super::commands::on_retry(state, &mut turn).await;
    state.counters.answered += 1;
    turn::conclude(state, turn).await;
    if let Some(new) = latest_answer_id(state) {
        state.regenerated = Some(Regenerated {
            replaced: id,
            new,
            at: Instant::now(),
        });
    }
    super::summary::after_turn(state, inbound.update_id);
    turn::finish(state, inbound.update_id, &[])
}

/// A picker's press: the command it stands for, run as if typed (same
/// checks, same reply).
async fn typed(
    state: &mut SessionState,
    inbound: &Inbound,
    press: &Press,
    command: Command,
    earlier: &[u32],
) -> Result<(), ActorProcessingErr> {
    answer(state, press, None, false).await;
    let as_typed = Inbound {
        kind: InboundKind::Command(command),
        ..inbound.clone()
    };
    let mut turn = Turn::new(&state.deps, &as_typed, earlier);
    turn.reply = super::respond(state, &mut turn).await;
    state.counters.answered += 1;
    turn::conclude(state, turn).await;
    turn::finish(state, inbound.update_id, earlier)
}

/// "Not your button", as an alert; nothing else happens.
async fn refuse(
    state: &mut SessionState,
    turn: Turn<'_>,
    inbound: &Inbound,
    press: &Press,
) -> Result<(), ActorProcessingErr> {
    tracing::info!("button pressed by someone it is not for");
    answer(state, press, Some(&turn.texts.button_not_yours), true).await;
    conclude(state, turn, inbound).await
}

/// Ends a press that changed nothing: no message, the update marked
/// answered.
pub(super) async fn conclude(
    state: &mut SessionState,
    mut turn: Turn<'_>,
    inbound: &Inbound,
) -> Result<(), ActorProcessingErr> {
    turn.reply = Reply::Silent;
    turn.change = Change::Keep;
    // The answer an edit may replace stays what it was.
    turn.ignored_edit = true;
    turn::conclude(state, turn).await;
    turn::finish(state, inbound.update_id, &[])
}

/// Answers the press (`answerCallbackQuery`). A press replayed after a
/// restart may have expired: that failure is expected, logged at debug and
/// not retried.
pub(super) async fn answer(state: &SessionState, press: &Press, text: Option<&str>, alert: bool) {
    let transport = &state.deps.transport;
    if let Err(error) = transport
        .answer_callback(&press.query_id, text, alert)
        .await
    {
        tracing::debug!(class = error.class(), %error, "callback query not answered");
    }
}

/// Whether the presser may press a button belonging to `asker`: in a
/// private chat, its user; in a group, the asker, a group administrator or
/// a bot admin.
async fn may_press(state: &mut SessionState, inbound: &Inbound, asker: u64) -> bool {
    let Some(presser) = inbound.user_id else {
        return false;
    };
    if inbound.key.is_user() {
        return u64::try_from(inbound.key.chat().0).is_ok_and(|user| user == presser);
    }
    if presser == asker || state.deps.config.is_admin(Some(presser)) {
        return true;
    }
    super::group_admin::is_group_admin(state, presser)
        .await
        .unwrap_or(false)
}

/// The id of the exchange the history ends with, if it ends with an
/// answer.
pub(super) fn latest_answer_id(state: &SessionState) -> Option<u64> {
    let mut messages = state.history.messages().rev();
    let answer = messages.next().filter(|m| m.role == Role::Assistant)?;
    let question = messages.find(|m| m.role == Role::User)?;
    Some(answer_id(&question.content, &answer.content))
}

/// The Regenerate button for the answer the history ends with; `None` when
/// it does not end with one.
pub(super) fn regenerate_keyboard(
    state: &SessionState,
    texts: &Texts,
    asker: u64,
) -> Option<Keyboard> {
    let answer = latest_answer_id(state)?;
    buttons::single(
        &texts.button_regenerate,
        &Action::Regenerate { answer, asker },
    )
}

/// The Stop button for an answer being written.
pub(super) fn stop_keyboard(texts: &Texts, asker: u64) -> Option<Keyboard> {
    buttons::single(&texts.button_stop, &Action::Stop { asker })
}

/// The models `/model` offers (as its reply lists them).
pub(super) fn model_choices(state: &SessionState) -> &[String] {
    let llm = &state.deps.config.llm;
    if llm.user_models.is_empty() {
        &llm.allowed_models
    } else {
        &llm.user_models
    }
}

/// The `/model` picker: a button per model, the current one marked.
pub(super) fn model_keyboard(state: &SessionState, current: &str) -> Keyboard {
    model_choices(state)
        .iter()
        .enumerate()
        .filter_map(|(index, model)| {
            let mark = if model == current { " ✓" } else { "" };
            Some(vec![Button {
                label: format!("{model}{mark}"),
                data: Action::Model(index).encode()?,
            }])
        })
        .collect()
}

/// The control room's `/mode` picker: draft, auto, off, the connection's
/// current mode marked.
pub(super) fn mode_keyboard(
    current: BusinessMode,
    label: impl Fn(BusinessMode) -> String,
) -> Keyboard {
    let buttons = [BusinessMode::Draft, BusinessMode::Auto, BusinessMode::Off]
        .into_iter()
        .filter_map(|mode| {
            let mark = if mode == current { " ✓" } else { "" };
            Some(Button {
                label: format!("{}{mark}", label(mode)),
                data: Action::BusinessMode(mode).encode()?,
            })
        })
        .collect();
    vec![buttons]
}

/// The `/persona` picker: a button per persona name (`names`), the current
/// one marked; a name too long for callback data gets no button.
pub(super) fn persona_keyboard<'a>(
    names: impl Iterator<Item = &'a str>,
    current: &str,
) -> Keyboard {
    names
        .filter_map(|name| {
            let mark = if name == current { " ✓" } else { "" };
            Some(vec![Button {
                label: format!("{name}{mark}"),
                data: Action::Persona(name.to_owned()).encode()?,
            }])
        })
        .collect()
}
