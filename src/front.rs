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

use std::sync::Arc;

use crate::actors::Directory;
use crate::actors::root::business::ConnectionUpdate;
use crate::actors::root::limiter::{Cost, LimitRequest, Verdict};
use crate::config::{BusinessMode, Config, MediaConfig};
use crate::store::StoreError;

use crate::telegram::buttons::{Action, DraftOp};
use crate::telegram::command::{Command, FanArg};
use crate::telegram::inbound::{Inbound, InboundKind, RefusalReason, Refused};
use crate::telegram::session_key::{ChatId, SessionKey};

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
    config: &Config,
    inbound: Vec<Inbound>,
) -> Result<(), HandOverError> {
    let inbound = route_forget_fan(directory, config, inbound).await;
    let inbound = business_gate(directory, config, inbound)
        .await
        .map_err(HandOverError::Store)?;
    let inbound = route_creators(directory, config, inbound)
        .await
        .map_err(HandOverError::Store)?;
    let media = &config.media;
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

/// Decides, for each message of a Business fan chat, what it is before it
/// is stored: dropped when its connection is unknown (never connected, or
/// from an owner who may not connect: a security event), disabled, or
/// `business.enabled` is off; the creator's own message becomes context
/// (an assistant turn, never answered); a fan's may cost an LLM call (an
/// answer or a suggestion, which the session decides by the mode when it
/// gets there) unless the connection's mode for that fan is `off` (or
/// paused) or the fan's and the connection's rate limits
/// ([`crate::actors::root::business`]) refuse it; then it is kept as
/// context. A file becomes context as its marker (`keep_media`). The bot's
/// own chats pass as they are.
async fn business_gate(
    directory: &Directory,
    config: &Config,
    inbound: Vec<Inbound>,
) -> Result<Vec<Inbound>, StoreError> {
    if inbound.iter().all(|item| !item.key.is_business()) {
        return Ok(inbound);
    }
    // Validated at start; an invalid window cannot be here.
    let window = config.business.active_window().ok().flatten();
    let mut kept = Vec::with_capacity(inbound.len());
    for mut item in inbound {
        let Some(connection_id) = item.key.connection().map(str::to_owned) else {
            kept.push(item);
            continue;
        };
        if !config.business.enabled {
            tracing::debug!("business message ignored: business.enabled is off");
            continue;
        }
        let update_id = item.update_id;
        let fan = item.key.chat().0;
        // An actor that is away fails the batch (Telegram sends it again);
        // only a connection it does not know drops the message.
        let Some(connection) = directory.business().lookup(&connection_id).await? else {
            crate::telemetry::security_event(
                crate::telemetry::SecurityKind::BusinessUnknownConnection,
            );
            tracing::warn!(
                update_id,
                connection = %connection_id,
                "business message through an unknown connection; dropped"
            );
            continue;
        };
        if !connection.enabled {
            tracing::info!(update_id, connection = %connection_id, "business message of a disabled connection; dropped");
            continue;
        }
        let by_owner = item
            .user_id
            .and_then(|id| i64::try_from(id).ok())
            .is_some_and(|id| id == connection.owner_user_id);
        if let (true, InboundKind::Text(text)) = (by_owner, &mut item.kind) {
            item.kind = InboundKind::Context {
                text: std::mem::take(text),
                by_owner: true,
            };
        }
        if matches!(item.kind, InboundKind::Media(_)) {
            keep_media(directory, &connection_id, &mut item, by_owner);
            kept.push(item);
            continue;
        }
        let InboundKind::Text(text) = &mut item.kind else {
            kept.push(item);
            continue;
        };
        let at = item
            .sent_at
            .unwrap_or_else(|| (crate::clock::unix_millis() / 1000) as i64);
        // The fan's name is for `/fans` only: it leaves the update here.
        let name = item.speaker.take().unwrap_or_default();
        directory
            .business()
            .fan_seen(&connection_id, fan, &name, at);
        // Whether it may cost an LLM call (an answer, or a suggestion: the
        // session decides which by the mode when it gets there).
        let answer = match connection.mode_for(fan) {
            BusinessMode::Off => {
                tracing::debug!(update_id, "off or paused; kept as context");
                false
            }
            BusinessMode::Auto | BusinessMode::Draft => {
                let admitted = directory.business().admit_fan(&connection_id, fan).await;
                if !admitted {
                    tracing::info!(update_id, connection = %connection_id, "fan over the rate limit; kept as context");
                }
                admitted
            }
        };
        if answer && window.is_some_and(|hours| !hours.contains(at)) {
            tracing::debug!(
                update_id,
                "outside business.active_hours; a suggestion, not an answer"
            );
        }
        if !answer {
            item.kind = InboundKind::Context {
                text: std::mem::take(text),
                by_owner: false,
            };
        }
        kept.push(item);
    }
    Ok(kept)
}

/// Routes what a Business creator does about a suggestion to the fan's
/// conversation, where it is kept in order with that fan's messages: a
/// press of a suggestion's button (✅ Send, 🔄 Another, ✏️ Edit, 🚫 Skip)
/// goes to the fan named in it under the presser's enabled connection (✏️
/// Edit is noted with the business actor first, durably), and the
/// creator's next text in the control room after ✏️ Edit becomes their
/// own reply ([`InboundKind::CreatorReply`]). Anything else, and everything
/// with `business.enabled` off, passes as it is.
async fn route_creators(
    directory: &Directory,
    config: &Config,
    mut inbound: Vec<Inbound>,
) -> Result<Vec<Inbound>, StoreError> {
    if !config.business.enabled {
        return Ok(inbound);
    }
    for item in &mut inbound {
        // The control room is the creator's private chat with the bot.
        let Some(user) = item.user_id.and_then(|id| i64::try_from(id).ok()) else {
            continue;
        };
        if !item.key.is_user() || item.key.chat().0 != user || item.refused.is_some() {
            continue;
        }
        match &mut item.kind {
            InboundKind::Callback(press) => {
                let Some(Action::Draft { op, fan, seq }) = press.action() else {
                    continue;
                };
                let Some(connection) = directory.business().owned_by(user).await.into_iter().next()
                else {
                    continue;
                };
                let Ok(fan) = i64::try_from(fan) else {
                    continue;
                };
                if op == DraftOp::Edit {
                    directory
                        .business()
                        .begin_edit(&connection.id, fan, seq)
                        .await?;
                }
                tracing::debug!(update_id = item.update_id, connection = %connection.id, fan, "suggestion button routed to the fan chat");
                item.key = SessionKey::business(Arc::clone(&connection.id), ChatId(fan));
            }
            InboundKind::Text(text) => {
                let Some((connection, fan, seq)) =
                    directory.business().take_edit(user, item.update_id).await?
                else {
                    continue;
                };
                tracing::info!(update_id = item.update_id, connection = %connection, fan, "the creator's own reply routed to the fan chat");
                item.kind = InboundKind::CreatorReply {
                    seq,
                    text: std::mem::take(text),
                };
                item.key = SessionKey::business(connection, ChatId(fan));
            }
            _ => {}
        }
    }
    Ok(inbound)
}

/// A file in a fan chat (a photo, voice note, document …): kept as context
/// only, as its marker and caption (`[photo] at the beach`, or `[photo]`
/// alone), never downloaded and never answered, in any mode: the model
/// cannot see it, so an answer would pretend it had. A fan's file counts
/// as their activity for `/fans`.
fn keep_media(directory: &Directory, connection_id: &str, item: &mut Inbound, by_owner: bool) {
    let InboundKind::Media(media) = &item.kind else {
        return;
    };
    item.kind = InboundKind::Context {
        text: media.marker(),
        by_owner,
    };
    // The sender's name is for `/fans` only: it leaves the update here.
    let name = item.speaker.take().unwrap_or_default();
    if !by_owner {
        let at = item
            .sent_at
            .unwrap_or_else(|| (crate::clock::unix_millis() / 1000) as i64);
        directory
            .business()
            .fan_seen(connection_id, item.key.chat().0, &name, at);
    }
    tracing::debug!(
        update_id = item.update_id,
        by_owner,
        "file in a fan chat kept as a marker"
    );
}

/// `/forget FAN` sent by a Business creator in their control room (their
/// own private chat with the bot): handed to that fan's conversation under
/// the creator's connection instead, so the fan's session forgets its
/// conversation itself (a record deleted underneath a live session would
/// come back with its next commit). With several connections (a reconnect)
/// the one the fan is listed under, else the first. Anything else, and a
/// sender with no enabled connection whose control room this is, stays
/// where it is: the control room answers it (usage, "no connection").
async fn route_forget_fan(
    directory: &Directory,
    config: &Config,
    mut inbound: Vec<Inbound>,
) -> Vec<Inbound> {
    if !config.business.enabled {
        return inbound;
    }
    for item in &mut inbound {
        let InboundKind::Command(Command::ForgetFan(FanArg::Fan(fan))) = &item.kind else {
            continue;
        };
        let fan = *fan;
        let Some(owner) = item.user_id.and_then(|id| i64::try_from(id).ok()) else {
            continue;
        };
        let business = directory.business();
        let here: Vec<_> = business
            .owned_by(owner)
            .await
            .into_iter()
            .filter(|connection| item.key == SessionKey::of_chat(ChatId(connection.owner_chat_id)))
            .collect();
        let mut chosen = here.first();
        for connection in &here {
            if business
                .fans(&connection.id)
                .await
                .iter()
                .any(|listed| listed.chat_id == fan)
            {
                chosen = Some(connection);
                break;
            }
        }
        let Some(connection) = chosen else {
            continue;
        };
        tracing::info!(
            update_id = item.update_id,
            connection = %connection.id,
            fan,
            "/forget of a fan handed to the fan's conversation"
        );
        item.key = SessionKey::business(Arc::clone(&connection.id), ChatId(fan));
    }
    inbound
}

/// Asks the rate limiter about the batch and marks the updates it limits.
/// A limiter that is away (restarting) lets everything through: better an
/// unlimited minute than unanswered users.
pub(crate) async fn apply_limits(
    directory: &Directory,
    media: &MediaConfig,
    mut updates: Vec<Inbound>,
) -> Vec<Inbound> {
    if updates.is_empty() {
        return updates;
    }
    // Fan chats are limited per fan and per connection by the business
    // actor instead ([`business_gate`]).
    let requests: Vec<LimitRequest> = updates
        .iter()
        .filter(|inbound| !inbound.key.is_business())
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
    let limited = updates
        .iter_mut()
        .filter(|inbound| !inbound.key.is_business());
    for (inbound, verdict) in limited.zip(verdicts) {
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
