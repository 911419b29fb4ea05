//! The control room: a Telegram Business creator's private chat with the
//! bot, where `/mode`, `/pause`, `/resume`, `/fans` and `/persona fans`
//! choose what the bot does for their fans. (`/forget FAN` is carried out
//! in the fan's own conversation, `fan_turn.rs`; only its usage and
//! failure are answered here.)
//!
//! The choices live in the business actor (`directory.business()`), which
//! stores them before it confirms: "done" is said only once they are
//! durable. A command acts on **every** enabled connection the user owns
//! (usually one; a creator who reconnected the bot may briefly have two).
//! Only the owner of an enabled connection, in their own private chat, may
//! run them: anyone else is told they have no connection (nothing about
//! anyone's fans is shown outside the control room). With
//! `business.enabled = false` the session treats them as unknown commands
//! before they reach this module. `/mode` alone comes with a draft · auto ·
//! off picker (`bm1:` buttons, `buttons.rs`), whose press runs `/mode
//! <mode>` through the same checks.

use super::SessionState;
use super::turn::{Reply, Turn};
use crate::actors::root::business::{Configure, Connection, FanView};
use crate::config::BusinessMode;
use crate::persona::DEFAULT_NAME;
use crate::telegram::command::{Command, FanArg, ModeArg, PersonaArg};
use crate::texts::{Texts, fill};

/// A control-room command (one for which [`Command::is_business`] holds).
pub(super) async fn on_control(
    state: &mut SessionState,
    turn: &Turn<'_>,
    command: &Command,
) -> Reply {
    let texts = &*turn.texts;
    let connections = match own_connections(state, turn).await {
        Ok(connections) => connections,
        Err(reply) => return reply,
    };
    tracing::info!(
        command = command.name(),
        connections = connections.len(),
        "control-room command"
    );
    let reply = match command {
        Command::Mode(ModeArg::Show) => {
            // A picker under it: each button runs `/mode <mode>` (for every
            // connection, like the typed command), the first's mode marked.
            let current = connections.first().map_or(BusinessMode::Draft, |c| c.mode);
            let keyboard =
                super::buttons::mode_keyboard(current, |mode| mode_name(texts, mode).to_owned());
            return Reply::Buttons(show_mode(state, texts, &connections).await, keyboard);
        }
        Command::Mode(ModeArg::Malformed(_)) => texts.biz_mode_usage.clone(),
        Command::Mode(ModeArg::Set { fan, mode }) => {
            let change = Configure::Mode {
                fan: *fan,
                mode: *mode,
            };
            let done = match fan {
                None => fill(&texts.biz_mode_set, &[("mode", mode_name(texts, *mode))]),
                Some(fan) => fill(
                    &texts.biz_mode_fan_set,
                    &[("fan", &fan.to_string()), ("mode", mode_name(texts, *mode))],
                ),
            };
            configure(state, texts, &connections, change, done).await
        }
        Command::Pause(FanArg::Malformed(_)) => texts.biz_pause_usage.clone(),
        Command::Resume(FanArg::Malformed(_)) => texts.biz_resume_usage.clone(),
        Command::Pause(fan) | Command::Resume(fan) => {
            let paused = matches!(command, Command::Pause(_));
            let fan = match fan {
                FanArg::Fan(fan) => Some(*fan),
                FanArg::All | FanArg::Malformed(_) => None,
            };
            let done = match (fan, paused) {
                (None, true) => texts.biz_paused.clone(),
                (None, false) => texts.biz_resumed.clone(),
                (Some(fan), true) => fill(&texts.biz_fan_paused, &[("fan", &fan.to_string())]),
                (Some(fan), false) => fill(&texts.biz_fan_resumed, &[("fan", &fan.to_string())]),
            };
            configure(
                state,
                texts,
                &connections,
                Configure::Paused { fan, paused },
                done,
            )
            .await
        }
        Command::Fans => list_fans(state, texts, &connections).await,
        // `/forget FAN` reaches the control room only when the front could
        // not route it to the fan's conversation (the business actor was
        // away then): nothing was forgotten.
        Command::ForgetFan(FanArg::Fan(_)) => texts.biz_unavailable.clone(),
        Command::ForgetFan(FanArg::All | FanArg::Malformed(_)) => texts.biz_forget_usage.clone(),
        Command::Persona(PersonaArg::Fans(name)) => {
            persona_for_fans(state, texts, &connections, name.as_deref()).await
        }
        _ => return super::commands::on_unknown(turn, command.name()),
    };
    Reply::Plain(reply)
}

/// The enabled connections the sender owns, when this chat is their control
/// room; otherwise the reply that says why not.
async fn own_connections(state: &SessionState, turn: &Turn<'_>) -> Result<Vec<Connection>, Reply> {
    let texts = &turn.texts;
    let Some(user) = turn.inbound.user_id.and_then(|id| i64::try_from(id).ok()) else {
        return Err(Reply::Plain(texts.biz_no_connection.clone()));
    };
    let owned = state.deps.directory.business().owned_by(user).await;
    if owned.is_empty() {
        return Err(Reply::Plain(texts.biz_no_connection.clone()));
    }
    let chat = state.key.chat().0;
    let here: Vec<Connection> = owned
        .into_iter()
        .filter(|connection| connection.owner_chat_id == chat && state.key.thread().is_none())
        .collect();
    if here.is_empty() {
        // Their fans are not shown (or changed) outside their private chat.
        return Err(Reply::Plain(texts.biz_control_room_only.clone()));
    }
    Ok(here)
}

/// Applies `change` to every connection; `done` once all of them stored it.
async fn configure(
    state: &SessionState,
    texts: &Texts,
    connections: &[Connection],
    change: Configure,
    done: String,
) -> String {
    let business = state.deps.directory.business();
    for connection in connections {
        match business.configure(&connection.id, change.clone()).await {
            Ok(true) => {}
            // Removed in between: nothing to change there.
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "control-room change not stored");
                return texts.biz_unavailable.clone();
            }
        }
    }
    done
}

/// `/mode`: each connection's mode and the fans with a mode (or pause) of
/// their own.
async fn show_mode(state: &SessionState, texts: &Texts, connections: &[Connection]) -> String {
    let business = state.deps.directory.business();
    let mut parts = Vec::with_capacity(connections.len());
    for connection in connections {
        let mode = if connection.paused {
            texts.biz_mode_paused.as_str()
        } else {
            mode_name(texts, connection.mode)
        };
        let recent = business.fans(&connection.id).await;
        let own: Vec<String> = connection
            .own_choices()
            .map(|chat_id| {
                let name = recent
                    .iter()
                    .find(|fan| fan.chat_id == chat_id)
                    .map(|fan| fan.name.clone())
                    .unwrap_or_default();
                let fan = FanView {
                    chat_id,
                    name,
                    last_at: 0,
                    mode: connection.mode_for(chat_id),
                };
                fan_line(texts, &fan, None)
            })
            .collect();
        let fans = if own.is_empty() {
            texts.biz_mode_no_own.clone()
        } else {
            own.join("\n")
        };
        parts.push(fill(
            &texts.biz_mode_show,
            &[("mode", mode), ("fans", &fans)],
        ));
    }
    parts.join("\n\n")
}

/// `/fans`: each connection's recent fans, newest first.
async fn list_fans(state: &SessionState, texts: &Texts, connections: &[Connection]) -> String {
    let business = state.deps.directory.business();
    let now = i64::try_from(crate::clock::unix_millis() / 1000).unwrap_or(i64::MAX);
    let mut lines = Vec::new();
    for connection in connections {
        lines.extend(
            business
                .fans(&connection.id)
                .await
                .iter()
                .map(|fan| fan_line(texts, fan, Some(now))),
        );
    }
    if lines.is_empty() {
        return texts.biz_fans_none.clone();
    }
    fill(&texts.biz_fans, &[("fans", &lines.join("\n"))])
}

/// One fan: name, chat id, mode, and (with `now`) when they last wrote.
fn fan_line(texts: &Texts, fan: &FanView, now: Option<i64>) -> String {
    let name = if fan.name.is_empty() {
        "—"
    } else {
        fan.name.as_str()
    };
    let mut line = format!("{name} · {} · {}", fan.chat_id, mode_name(texts, fan.mode));
    if let Some(now) = now.filter(|_| fan.last_at > 0) {
        line.push_str(" · ");
        line.push_str(&ago(texts, now.saturating_sub(fan.last_at)));
    }
    line
}

/// "5 min ago", "3 h ago", "2 d ago", "just now".
fn ago(texts: &Texts, seconds: i64) -> String {
    let (template, n) = match seconds {
        ..60 => return texts.biz_ago_now.clone(),
        60..3600 => (&texts.biz_ago_minutes, seconds / 60),
        3600..86_400 => (&texts.biz_ago_hours, seconds / 3600),
        _ => (&texts.biz_ago_days, seconds / 86_400),
    };
    fill(template, &[("n", &n.to_string())])
}

/// `/persona fans NAME|default`: the persona fans are answered in.
async fn persona_for_fans(
    state: &SessionState,
    texts: &Texts,
    connections: &[Connection],
    name: Option<&str>,
) -> String {
    let persona = match name {
        None => None,
        Some(name) if name == DEFAULT_NAME => None,
        Some(name) => match state.personas.get(name) {
            Some(persona) => Some(persona.name.to_string()),
            None => return super::persona::unknown(state, texts, name),
        },
    };
    let done = match &persona {
        Some(name) => fill(&texts.biz_persona_fans_set, &[("persona", name)]),
        None => texts.biz_persona_fans_default.clone(),
    };
    configure(state, texts, connections, Configure::Persona(persona), done).await
}

/// A mode's name in the user's language.
fn mode_name(texts: &Texts, mode: BusinessMode) -> &str {
    match mode {
        BusinessMode::Draft => &texts.biz_mode_draft,
        BusinessMode::Auto => &texts.biz_mode_auto,
        BusinessMode::Off => &texts.biz_mode_off,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_activity_reads_as_time_ago() {
        let locales = crate::texts::Locales::load().unwrap();
        let texts = locales.for_language(Some("en"));
        assert_eq!(ago(texts, 5), texts.biz_ago_now);
        assert_eq!(ago(texts, 5 * 60 + 20), "5 min ago");
        assert_eq!(ago(texts, 2 * 3600), "2 h ago");
        assert_eq!(ago(texts, 3 * 86_400), "3 d ago");
    }
}
