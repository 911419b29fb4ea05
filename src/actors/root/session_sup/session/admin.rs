//! The session's admin commands: `/stats`, `/health`, `/ban`, `/unban`
//! (for admins only: the session's dispatch refuses anyone else and counts
//! a security event), and `/model`: without a name for everyone, with one
//! the bot's model for admins and the chat's own model for anyone else.

use super::SessionState;
use super::turn::{Reply, Turn};
use crate::actors::root::breaker::BreakerStatus;
use crate::ops::Snapshot;
use crate::telegram::command::UserArg;
use crate::telemetry::{SecurityKind, security_event};
use crate::texts::{Texts, fill};

/// `/model` without a name: which model answers this chat, and the choices.
pub(super) async fn on_model_query(state: &SessionState, turn: &Turn<'_>) -> Reply {
    let (text, model) = current_model(state, &turn.texts).await;
    // The choices as buttons too (`buttons.rs`); pressed, each runs
    // `/model <name>`.
    let picker = super::buttons::model_keyboard(state, &model);
    if picker.is_empty() {
        return Reply::Plain(text);
    }
    Reply::Buttons(text, picker)
}

/// `/model NAME` (`command` is its name): an admin sets the bot's model;
/// anyone else chooses this chat's own.
pub(super) async fn on_model(
    state: &mut SessionState,
    turn: &Turn<'_>,
    command: &str,
    model: &str,
) -> Reply {
    if !state.deps.config.is_admin(turn.inbound.user_id) {
        return Reply::Plain(choose_own_model(state, &turn.texts, model));
    }
    tracing::info!(command, "admin command");
    Reply::Plain(set_model(state, &turn.texts, model).await)
}

/// `/ban ID` (`banned`) or `/unban ID` (`command` is its name); the command's usage when the
/// argument is not a user id.
pub(super) async fn on_ban(
    state: &SessionState,
    turn: &Turn<'_>,
    command: &str,
    user: &UserArg,
    banned: bool,
) -> Reply {
    Reply::Plain(match user {
        UserArg::Id(user) => ban(state, &turn.texts, *user, banned).await,
        UserArg::Malformed(_) => fill(&turn.texts.usage_user_id, &[("command", command)]),
    })
}

/// `/health`: the readiness report of `/readyz`, compact.
pub(super) async fn on_health(state: &SessionState) -> Reply {
    Reply::Plain(health(state).await)
}

/// `/stats`: a compact view of the service.
pub(super) async fn on_stats(state: &SessionState, turn: &Turn<'_>) -> Reply {
    Reply::Plain(stats(state, &turn.texts).await)
}

async fn ban(state: &SessionState, texts: &Texts, user: i64, ban: bool) -> String {
    let stored = state.deps.directory.limiter().set_banned(user, ban).await;
    let user_text = user.to_string();
    match stored {
        Ok(()) if ban => fill(&texts.ban_done, &[("user", &user_text)]),
        Ok(()) => fill(&texts.unban_done, &[("user", &user_text)]),
        Err(error) => {
            tracing::error!(class = error.class(), %error, "ban not stored");
            texts.internal_error.clone()
        }
    }
}

/// The `/model` reply, and the model in use.
async fn current_model(state: &SessionState, texts: &Texts) -> (String, String) {
    let model = match &state.settings.model {
        Some(own) => own.clone(),
        None => state
            .deps
            .directory
            .llm_pool()
            .current_model()
            .await
            .unwrap_or_else(|_| state.deps.config.llm.model.clone()),
    };
    let llm = &state.deps.config.llm;
    let choices = if llm.user_models.is_empty() {
        &llm.allowed_models
    } else {
        &llm.user_models
    };
    let text = fill(
        &texts.model_current,
        &[("model", &model), ("models", &choices.join(", "))],
    );
    (text, model)
}

/// A user picks a model for their own chat among `llm.user_models`; kept in
/// the chat's settings (stored with the turn).
fn choose_own_model(state: &mut SessionState, texts: &Texts, model: &str) -> String {
    let choices = &state.deps.config.llm.user_models;
    if choices.is_empty() {
        security_event(SecurityKind::AdminCommandDenied);
        return texts.not_allowed.clone();
    }
    if !choices.iter().any(|m| m == model) {
        return fill(
            &texts.model_unknown,
            &[("model", model), ("models", &choices.join(", "))],
        );
    }
    state.settings.model = Some(model.to_owned());
    fill(&texts.model_chosen, &[("model", model)])
}

async fn set_model(state: &SessionState, texts: &Texts, model: &str) -> String {
    let allowed = &state.deps.config.llm.allowed_models;
    if !allowed.iter().any(|m| m == model) {
        return fill(
            &texts.model_unknown,
            &[("model", model), ("models", &allowed.join(", "))],
        );
    }
    match state.deps.directory.llm_pool().set_model(model).await {
        Ok(()) => fill(&texts.model_set, &[("model", model)]),
        Err(error) => {
            tracing::error!(class = error.class(), %error, "model not stored");
            texts.internal_error.clone()
        }
    }
}

/// The readiness report of `/readyz`, compact, for admins.
async fn health(state: &SessionState) -> String {
    let deps = &state.deps;
    let providers: Vec<String> = deps.llm.iter().map(|p| p.name().to_owned()).collect();
    crate::ops::summary(
        &crate::ops::readiness(&deps.directory, &deps.health, &providers, &deps.config).await,
    )
}

/// A compact view of the service for admins.
async fn stats(state: &SessionState, texts: &Texts) -> String {
    let directory = &state.deps.directory;
    let snapshot = Snapshot::collect(directory, state.deps.llm.len()).await;
    let sessions = snapshot.sessions.unwrap_or_default();
    let store = snapshot.store.unwrap_or_default();
    let restarts: Vec<String> = snapshot
        .tree
        .map(|tree| {
            tree.children
                .iter()
                .filter(|c| c.restarts > 0 || !c.alive)
                .map(|c| format!("{}×{}", c.child.as_str(), c.restarts))
                .collect()
        })
        .unwrap_or_default();
    let providers: Vec<String> = state
        .deps
        .llm
        .iter()
        .zip(&snapshot.breakers)
        .map(|(provider, status)| {
            format!(
                "{} {}",
                provider.name(),
                status.map_or("?", |s: BreakerStatus| s.as_str())
            )
        })
        .collect();
    let model = directory
        .llm_pool()
        .current_model()
        .await
        .unwrap_or_default();
    fill(
        &texts.stats,
        &[
            ("live", &sessions.live.to_string()),
            ("pending", &sessions.pending.to_string()),
            ("evicted", &sessions.evicted.to_string()),
            ("session_restarts", &sessions.restarted.to_string()),
            ("commits", &store.commits.to_string()),
            ("turns", &store.turns.to_string()),
            ("quarantined", &store.quarantined.to_string()),
            (
                "restarts",
                &if restarts.is_empty() {
                    "0".to_owned()
                } else {
                    restarts.join(", ")
                },
            ),
            ("providers", &providers.join(", ")),
            ("model", &model),
        ],
    )
}
