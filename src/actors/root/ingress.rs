//! Ingress: long-polls the Bot API and hands each update to the session
//! supervisor without waiting for it to be answered.
//!
//! - **Supervised by:** root, permanent; started last, stopped (killed) first.
//! - **Messages:** [`IngressMsg::Poll`], which it sends itself after each
//!   round, so the actor is a loop that can still be stopped between rounds.
//! - **State:** the next `offset` to ask for, the bot's username (from getMe,
//!   used to ignore `/command@other_bot`), and the backoff after failures.
//! - **Per round:** getUpdates with the offset (which confirms every earlier
//!   update to Telegram) and `telegram.poll_timeout`; the message updates
//!   become [`Inbound`]s, are admitted durably by the persistence actor
//!   (which drops any it has seen before), and only then cast to the session
//!   supervisor and the offset advanced. Casting never blocks, so a slow chat
//!   cannot delay another.
//! - **Failures:** a failed getUpdates waits with backoff and tries again;
//!   a rejected token or a session supervisor that stays away past
//!   `supervision.lookup_timeout` fails the actor. After a restart the offset
//!   starts unknown, so Telegram sends again every update not yet confirmed;
//!   the store recognises the ones it has and they are not routed twice.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use teloxide::Bot;
use teloxide::payloads::GetUpdatesSetters as _;
use teloxide::prelude::Requester;
use teloxide::types::AllowedUpdate;
use teloxide::{ApiError, RequestError};

use super::Deps;
use super::limiter::{Cost, LimitRequest, LimiterMsg, Verdict};
use super::persistence::PersistenceMsg;
use super::session_sup::SessionSupMsg;
use crate::actors::{Child, Directory};
use crate::config::{Config, TelegramConfig};
use crate::retry::Backoff;
use crate::store::StoreError;
use crate::telegram::TelegramError;
use crate::telegram::inbound::{Inbound, RefusalReason, Refused};

/// Messages of the ingress.
pub enum IngressMsg {
    /// Panic at once: the chaos hook for tests (feature `chaos` only).
    #[cfg(feature = "chaos")]
    Panic,
    /// Run one polling round, then poll again.
    Poll,
}

/// The ingress actor.
pub struct Ingress;

/// The ingress's state.
pub struct IngressState {
    bot: Bot,
    config: Arc<TelegramConfig>,
    directory: Directory,
    /// The next update id to ask for; 0 until the first batch.
    offset: i32,
    /// The offset whose confirmation was last reported to persistence.
    confirmed: i32,
    bot_username: Option<String>,
    webhook_removed: bool,
    health: std::sync::Arc<crate::ops::Health>,
    /// For command costs and the command menu.
    full_config: Arc<Config>,
    locales: crate::texts::Locales,
    commands_registered: bool,
    backoff: Backoff,
}

/// Why polling cannot go on.
#[derive(Debug, thiserror::Error)]
enum IngressError {
    #[error("Telegram rejected the bot token (TELEGRAM_BOT_TOKEN)")]
    TokenRejected,
    #[error("the session supervisor is unavailable")]
    SessionsUnavailable,
    #[error(transparent)]
    Store(StoreError),
    #[error("the front end has no Bot API to poll")]
    NoBotApi,
}

impl Actor for Ingress {
    type Msg = IngressMsg;
    type State = IngressState;
    type Arguments = Deps;

    async fn pre_start(
        &self,
        myself: ActorRef<IngressMsg>,
        deps: Deps,
    ) -> Result<IngressState, ActorProcessingErr> {
        let config = &deps.config.telegram;
        // Root starts no ingress for the console front.
        let bot = deps.transport.bot().ok_or(IngressError::NoBotApi)?.clone();
        myself.cast(IngressMsg::Poll)?;
        Ok(IngressState {
            backoff: Backoff::new(config.retry_min, config.retry_max),
            config: Arc::new(config.clone()),
            bot,
            health: deps.health,
            full_config: Arc::clone(&deps.config),
            locales: deps.locales.clone(),
            commands_registered: false,
            directory: deps.directory,
            offset: 0,
            confirmed: 0,
            bot_username: deps.bot_username,
            webhook_removed: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<IngressMsg>,
        message: IngressMsg,
        state: &mut IngressState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            #[cfg(feature = "chaos")]
            IngressMsg::Panic => panic!("chaos: ordered to panic"),
            IngressMsg::Poll => {
                on_poll(state).await?;
                myself.cast(IngressMsg::Poll)?;
            }
        }
        Ok(())
    }
}

async fn on_poll(state: &mut IngressState) -> Result<(), IngressError> {
    let round = prepare(state).await;
    let round = match round {
        Ok(username) => poll_once(state, &username).await,
        Err(error) => Err(error),
    };
    match round {
        Ok(()) => {
            state.backoff.reset();
            Ok(())
        }
        Err(Failure::Fatal(error)) => Err(error),
        Err(Failure::Retry(error)) => {
            let wait = state.backoff.next_delay();
            tracing::warn!(class = error.class(), %error, ?wait, "polling failed; retrying");
            tokio::time::sleep(wait).await;
            Ok(())
        }
    }
}

enum Failure {
    Retry(TelegramError),
    Fatal(IngressError),
}

impl From<RequestError> for Failure {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Api(ApiError::InvalidToken) => Self::Fatal(IngressError::TokenRejected),
            other => Self::Retry(other.into()),
        }
    }
}

/// Learns the bot's username and removes any webhook (getUpdates is refused
/// while one is set), once.
async fn prepare(state: &mut IngressState) -> Result<String, Failure> {
    let username = match &state.bot_username {
        Some(name) => name.clone(),
        None => {
            let me = state.bot.get_me().await?;
            let name = me.username().to_owned();
            tracing::info!(bot = %name, "connected to the Bot API");
            state.bot_username = Some(name.clone());
            name
        }
    };
    if !state.webhook_removed {
        state.bot.delete_webhook().await?;
        state.webhook_removed = true;
    }
    if !state.commands_registered {
        crate::telegram::register_commands(&state.bot, &state.full_config, &state.locales).await?;
        state.commands_registered = true;
    }
    Ok(username)
}

async fn poll_once(state: &mut IngressState, bot_username: &str) -> Result<(), Failure> {
    let updates = state
        .bot
        .get_updates()
        .offset(state.offset)
        .limit(state.config.poll_limit)
        .timeout(u32::try_from(state.config.poll_timeout.as_secs()).unwrap_or(u32::MAX))
        .allowed_updates([AllowedUpdate::Message])
        .await?;
    crate::ops::Health::stamp(&state.health.telegram_ok_ms);
    // This call confirmed every update below `offset` to Telegram.
    if state.offset > state.confirmed {
        state.confirmed = state.offset;
        let below = u32::try_from(state.offset).unwrap_or_default();
        state
            .directory
            .cast_now(Child::Persistence, PersistenceMsg::Confirmed { below });
    }
    let Some(last) = updates.last() else {
        return Ok(());
    };
    // Update ids fit in i32 (Telegram's offset type) for the lifetime of a bot.
    let next_offset = i32::try_from(last.id.0)
        .unwrap_or(i32::MAX)
        .saturating_add(1);
    let inbound: Vec<Inbound> = updates
        .iter()
        .filter_map(|update| {
            let converted = Inbound::from_update(update, bot_username);
            if converted.is_none() {
                tracing::debug!(update_id = update.id.0, "update ignored");
            }
            converted
        })
        .collect();
    tracing::debug!(
        received = updates.len(),
        messages = inbound.len(),
        "updates received"
    );
    metrics::counter!("llmgram_updates_received_total").increment(updates.len() as u64);

    hand_over(&state.directory, &state.full_config, inbound)
        .await
        .map_err(|error| match error {
            HandOverError::Store(StoreError::Poisoned(reason)) => {
                Failure::Fatal(IngressError::Store(StoreError::Poisoned(reason)))
            }
            HandOverError::Store(other) => Failure::Retry(TelegramError::Store(other)),
            HandOverError::SessionsUnavailable => Failure::Fatal(IngressError::SessionsUnavailable),
        })?;
    state.offset = next_offset;
    Ok(())
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

/// What every front end (polling here, `webhook.rs`, the console reader in
/// `crate::console`) does with received updates: admit them durably
/// (dropping any the store has seen), mark the ones the rate limiter refuses,
/// and route them to the session supervisor. Once this returns `Ok`, Telegram
/// may forget them.
pub(crate) async fn hand_over(
    directory: &Directory,
    config: &Config,
    inbound: Vec<Inbound>,
) -> Result<(), HandOverError> {
    // Durable before routing: once Telegram considers them delivered, the
    // store is the only copy of an unanswered update.
    let admitted = directory
        .call(Child::Persistence, |reply| PersistenceMsg::AdmitUpdates {
            updates: inbound.clone(),
            reply,
        })
        .await
        .map_err(|_| HandOverError::Store(StoreError::Unavailable))?
        .map_err(HandOverError::Store)?;
    let admitted = apply_limits(directory, config, admitted).await;
    let sessions = directory
        .wait_for::<SessionSupMsg>(Child::SessionSup)
        .await
        .map_err(|_| HandOverError::SessionsUnavailable)?;
    for inbound in admitted {
        // A lost cast is not a lost update: it is pending in the store and
        // the restarted session supervisor replays it.
        if sessions.cast(SessionSupMsg::Route(inbound)).is_err() {
            tracing::warn!("session supervisor gone while routing; it replays from the store");
            break;
        }
    }
    Ok(())
}

/// Asks the rate limiter about the batch and marks the updates it limits.
/// A limiter that is away (restarting) lets everything through: better an
/// unlimited minute than unanswered users.
async fn apply_limits(
    directory: &Directory,
    config: &Config,
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
                .unwrap_or(inbound.chat_id.0),
            cost: if inbound.costs_llm_call(config) {
                Cost::Llm
            } else {
                Cost::Free
            },
        })
        .collect();
    let verdicts = directory
        .call(Child::Limiter, |reply| LimiterMsg::Check {
            requests: requests.clone(),
            reply,
        })
        .await;
    match verdicts {
        Ok(verdicts) => {
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
        }
        Err(error) => tracing::warn!(%error, "rate limiter unavailable; updates not limited"),
    }
    updates
}
