//! The session's admin commands: `/stats`, `/health`, `/ban`, `/unban`,
//! `/model`.
//! Admin rights come from `admin_ids`; anyone else gets "not allowed" and a
//! security event is counted. `/model` without arguments is for everyone.

use super::SessionState;
use crate::actors::root::breaker::BreakerStatus;
use crate::ops::Snapshot;
use crate::telegram::inbound::Inbound;
use crate::telemetry::{SecurityKind, security_event};
use crate::texts::{Texts, fill};

/// Answers an admin command (or refuses it).
pub(super) async fn on_admin_command(
    state: &mut SessionState,
    inbound: &Inbound,
    texts: &Texts,
    name: &str,
    args: &str,
) -> String {
    let args = args.trim();
    if name == "model" && args.is_empty() {
        return current_model(state, texts).await;
    }
    let admin = state.deps.config.is_admin(inbound.user_id);
    if name == "model" && !admin {
        return choose_own_model(state, texts, args);
    }
    if !admin {
        security_event(SecurityKind::AdminCommandDenied);
        return texts.not_allowed.clone();
    }
    tracing::info!(command = name, "admin command");
    match name {
        "stats" => stats(state, texts).await,
        "health" => health(state).await,
        "ban" | "unban" => match args.parse::<i64>() {
            Ok(user) => ban(state, texts, user, name == "ban").await,
            Err(_) => fill(&texts.usage_user_id, &[("command", name)]),
        },
        "model" => set_model(state, texts, args).await,
        _ => texts.not_allowed.clone(),
    }
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

async fn current_model(state: &SessionState, texts: &Texts) -> String {
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
    fill(
        &texts.model_current,
        &[("model", &model), ("models", &choices.join(", "))],
    )
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
