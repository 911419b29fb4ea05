//! The front ends: where users' messages come from and where answers go,
//! apart from the actors that serve them.
//!
//! - [`Front`]: which front a service starts with, Telegram or the
//!   operator's terminal; `app` builds the tree's transport from it.
//! - [`hand_over`]: the shared intake. The polling ingress
//!   (`actors/root/ingress.rs`), the webhook (`actors/root/webhook.rs`) and
//!   the console reader ([`console`]) all hand received updates over through
//!   it: admitted durably, marked when rate-limited, routed to the sessions.
//! - [`console`]: `llmgram chat`, the console front, and its screen
//!   ([`console::ConsoleOut`]), which the outbox prints answers on.

pub mod console;

use crate::actors::Directory;
use crate::actors::root::business::ConnectionUpdate;
use crate::actors::root::limiter::{Cost, LimitRequest, Verdict};
use crate::config::{Config, MediaConfig};
use crate::store::StoreError;
use crate::telegram::inbound::{Inbound, RefusalReason, Refused};

/// Where users' messages come from and answers go.
#[derive(Debug, Clone)]
pub enum Front {
    /// The Bot API, with the token from the secrets: polled or posted to by
    /// webhook, by `telegram.mode`.
    Telegram,
    /// The operator's terminal: answers are printed on this screen.
    Console(console::ConsoleOut),
}

/// Why received updates could not be handed over.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    /// Storing them failed: they must be fetched (or posted) again.
    #[error(transparent)]
    Store(StoreError),
    /// The session supervisor stayed away past the lookup timeout.
    #[error("the session supervisor is unavailable")]
    SessionsUnavailable,
}

/// Records the `business_connection` updates among `updates` with the
/// business actor, before anything else of the batch is handed over (a fan
/// message in the same batch then finds its connection). Once this returns
/// `Ok`, they are durable; a connection from a user who may not connect is
/// dropped here (logged as a security event by the business actor). Without
/// `business.enabled` (no business actor runs) they are ignored: the bot did
/// not ask for them.
pub(crate) async fn take_connections<'a>(
    directory: &Directory,
    config: &Config,
    updates: impl IntoIterator<Item = &'a teloxide::types::Update>,
) -> Result<(), HandOverError> {
    for update in updates {
        if let teloxide::types::UpdateKind::BusinessConnection(connection) = &update.kind {
            if !config.business.enabled {
                tracing::debug!("business connection update ignored: business.enabled is off");
                continue;
            }
            let update = ConnectionUpdate::of(connection);
            directory
                .business()
                .changed(update)
                .await
                .map_err(HandOverError::Store)?;
        }
    }
    Ok(())
}

/// What every front end (the polling ingress, the webhook, the console
/// reader) does with received updates: admit them durably
/// (dropping any the store has seen), mark the ones the rate limiter refuses,
/// and route them to the session supervisor. Once this returns `Ok`, Telegram
/// may forget them.
pub(crate) async fn hand_over(
    directory: &Directory,
    media: &MediaConfig,
    inbound: Vec<Inbound>,
) -> Result<(), HandOverError> {
    // Durable before routing: once Telegram considers them delivered, the
    // store is the only copy of an unanswered update.
    let admitted = directory
        .persistence()
        .admit(&inbound)
        .await
        .map_err(HandOverError::Store)?;
    let admitted = apply_limits(directory, media, admitted).await;
    directory
        .session_sup()
        .route(admitted)
        .await
        .map_err(|_| HandOverError::SessionsUnavailable)
}

/// Asks the rate limiter about the batch and marks the updates it limits.
/// A limiter that is away (restarting) lets everything through: better an
/// unlimited minute than unanswered users.
async fn apply_limits(
    directory: &Directory,
    media: &MediaConfig,
    mut updates: Vec<Inbound>,
) -> Vec<Inbound> {
    if updates.is_empty() {
        return updates;
    }
    let requests: Vec<LimitRequest> = updates
        .iter()
        .map(|inbound| LimitRequest {
            user: inbound
                .user_id
                .and_then(|id| i64::try_from(id).ok())
                .unwrap_or(inbound.key.chat().0),
            cost: match inbound.llm_cost(media) {
                0 => Cost::Free,
                1 => Cost::Llm,
                calls => Cost::Calls(calls),
            },
        })
        .collect();
    let verdicts = directory.limiter().check(requests).await;
    tracing::debug!(?verdicts, "rate limits checked");
    for (inbound, verdict) in updates.iter_mut().zip(verdicts) {
        inbound.refused = match verdict {
            Verdict::Allowed => None,
            Verdict::Limited { retry_in, notify } => Some(Refused {
                reason: RefusalReason::RateLimited { retry_in },
                notify,
            }),
            Verdict::Banned { notify } => Some(Refused {
                reason: RefusalReason::Banned,
                notify,
            }),
            Verdict::NotAllowed { notify } => Some(Refused {
                reason: RefusalReason::NotAllowed,
                notify,
            }),
        };
    }
    updates
}
