//! The bot's own commands for everyone (`/start`, `/help`, `/reset`,
//! `/retry`, `/cancel`, `/forget`), the configured assistant commands, and
//! the reply to an unknown one. Each is one `on_<command>` called from the
//! session's dispatch; the admin commands are in `admin.rs`, `/usage` in
//! `usage.rs`.

use std::sync::Arc;

use super::SessionState;
use super::llm_turn;
use super::turn::{Change, Reply, Turn};
use crate::actors::root::llm_pool::Overrides;
use crate::input::{self, Rejection};
use crate::telemetry::{SecurityKind, security_event};
use crate::texts::fill;

/// `/start`: the greeting.
pub(super) fn on_start(turn: &Turn<'_>) -> Reply {
    Reply::Plain(turn.texts.start.clone())
}

/// `/help`: the help text, then each assistant command with its
/// description in the chat's language.
pub(super) fn on_help(state: &SessionState, turn: &Turn<'_>) -> Reply {
    let language = crate::texts::language_key(state.settings.language_code.as_deref());
    let mut help = turn.texts.help.clone();
    for command in &state.deps.config.commands {
        let description = command
            .description
            .get(language)
            .or_else(|| command.description.get("en"))
            .map_or("", String::as_str);
        help.push_str(&format!("\n/{} — {description}", command.name));
    }
    Reply::Plain(help)
}

/// `/reset`: the history is cleared; settings and counters stay.
pub(super) fn on_reset(state: &mut SessionState, turn: &Turn<'_>) -> Reply {
    state.history.clear();
    super::summary::clear(state);
    Reply::Plain(turn.texts.reset_done.clone())
}

/// `/retry`: the last question is asked again.
pub(super) async fn on_retry(state: &mut SessionState, turn: &mut Turn<'_>) -> Reply {
    // The question asked again has its own quote already.
    turn.quote = None;
    match state.history.take_last_question() {
        Some(question) => llm_turn::answer(state, turn, &question).await,
        None => Reply::Plain(turn.texts.nothing_to_retry.clone()),
    }
}

/// `/cancel` after the answer it cancelled (or with nothing to cancel). The
/// cancelling itself happened when it arrived: the session supervisor woke
/// the answer in flight, or `intake.rs` dropped the held messages.
pub(super) fn on_cancel(state: &mut SessionState, turn: &Turn<'_>) -> Reply {
    if std::mem::take(&mut state.cancel_answered) {
        // The cancelled answer already said so.
        Reply::Silent
    } else {
        Reply::Plain(turn.texts.nothing_to_cancel.clone())
    }
}

/// `/forget`: the turn deletes the chat's record.
pub(super) fn on_forget(turn: &mut Turn<'_>) -> Reply {
    turn.change = Change::Forget;
    Reply::Plain(turn.texts.forgotten.clone())
}

/// A command nobody defined.
pub(super) fn on_unknown(turn: &Turn<'_>, name: &str) -> Reply {
    Reply::Plain(fill(
        &turn.texts.unknown_command,
        &[("command", &format!("/{name}"))],
    ))
}

/// A configured assistant command: its template filled with the text, or a
/// request for the text when none came with it (the next text is its
/// input). Sent without text as a reply (`/caption` replying to a
/// message), the quoted text is its input instead of a quote.
pub(super) async fn on_assistant(
    state: &mut SessionState,
    turn: &mut Turn<'_>,
    name: &str,
    args: &str,
) -> Reply {
    let quoted = match &turn.inbound.reply_to {
        Some(quoted) if args.trim().is_empty() => Some(quoted.text.clone()),
        _ => None,
    };
    let args = match &quoted {
        Some(text) => {
            turn.quote = None;
            text.as_str()
        }
        None => args,
    };
    match input::validate(args, state.deps.config.input.max_chars) {
        Err(Rejection::Empty) => {
            state.awaiting_input = Some(name.to_owned());
            Reply::Plain(fill(
                &turn.texts.command_needs_input,
                &[("command", &format!("/{name}"))],
            ))
        }
        Err(Rejection::TooLong { length, limit }) => too_long(turn, length, limit),
        Ok(cleaned) => run_assistant(state, turn, name, &cleaned).await,
    }
}

/// Fills the assistant command's template with `cleaned` in one pass (the
/// text can never add a placeholder) and asks the LLM, with the command's
/// model and temperature.
pub(super) async fn run_assistant(
    state: &mut SessionState,
    turn: &mut Turn<'_>,
    name: &str,
    cleaned: &str,
) -> Reply {
    let Some(command) = state.deps.config.command(name).cloned() else {
        return llm_turn::answer(state, turn, cleaned).await;
    };
    if input::looks_like_injection(cleaned) {
        security_event(SecurityKind::InjectionPhrase);
    }
    let prompt = fill(&command.template, &[("input", cleaned)]);
    let overrides = Overrides {
        model: command.model.as_deref().map(Arc::from),
        temperature: command.temperature,
    };
    llm_turn::answer_with(state, turn, &prompt, overrides).await
}

/// The reply to a text over its limit.
pub(super) fn too_long(turn: &Turn<'_>, length: usize, limit: usize) -> Reply {
    Reply::Plain(fill(
        &turn.texts.too_long,
        &[
            ("length", &length.to_string()),
            ("limit", &limit.to_string()),
        ],
    ))
}
