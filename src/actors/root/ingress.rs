//! Ingress: long-polls the Bot API and hands each update to the session
//! supervisor without waiting for it to be answered.
//!
//! - **Supervised by:** root, permanent; started last, stopped (killed) first.
//! - **Messages:** [`IngressMsg::Poll`], which it sends itself after each
//!   round, so the actor is a loop that can still be stopped between rounds.
//! - **State:** the next `offset` to ask for, the bot's username (from getMe,
//!   used to ignore `/command@other_bot`), the backoff after failures, and
//!   the background task registering the command menu.
//! - **Before the first poll:** getMe and deleteWebhook (getUpdates is
//!   refused while a webhook is set). The command menu (setMyCommands) is
//!   best effort: a task the actor owns registers it with backoff and never
//!   holds polling up; it is aborted when the actor stops.
//! - **Per round:** getUpdates with the offset (which confirms every earlier
//!   update to Telegram) and `telegram.poll_timeout`, read update by update
//!   (`crate::telegram::updates`): one that cannot be read is logged with
//!   its id, counted and skipped, and confirmed with its batch. The message
//!   updates become [`Inbound`]s, are admitted durably by the persistence
//!   actor (which drops any it has seen before), and only then cast to the
//!   session supervisor and the offset advanced. Casting never blocks, so a
//!   slow chat cannot delay another. From the second round in a row that
//!   brought nothing back sooner than `telegram.empty_poll_interval`, each
//!   such round waits out the rest of it, so a server that does not
//!   long-poll is not asked thousands of times a second (one early empty
//!   poll alone is not delayed).
//! - **Failures:** a failed call waits with backoff and tries again, logged
//!   with the method's name; a rejected token or a session supervisor that
//!   stays away past `supervision.lookup_timeout` fails the actor. After a
//!   restart the offset starts unknown, so Telegram sends again every update
//!   not yet confirmed; the store recognises the ones it has and they are
//!   not routed twice.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use teloxide::Bot;
use teloxide::prelude::Requester;
use teloxide::types::AllowedUpdate;
use teloxide::{ApiError, RequestError};

use super::Deps;
use super::limiter::{Cost, LimitRequest, Verdict};
use crate::actors::Directory;
#[cfg(feature = "chaos")]
use crate::actors::directory::{Address, Child};
use crate::config::{Config, TelegramConfig};
use crate::retry::Backoff;
use crate::store::StoreError;
use crate::telegram::TelegramError;
use crate::telegram::inbound::{Inbound, RefusalReason, Refused};

// API

/// Typed operations on the front end that takes updates in (the polling
/// ingress or the webhook, by `telegram.mode`; both run as [`Child::Ingress`]).
/// Nothing asks it anything: it only has the chaos hook.
#[cfg(feature = "chaos")]
#[derive(Clone, Copy)]
pub struct IngressHandle<'a> {
    directory: &'a Directory,
}

#[cfg(feature = "chaos")]
const ADDRESS: Address<IngressMsg> = Address::new(Child::Ingress);

#[cfg(feature = "chaos")]
impl Directory {
    /// The front end taking updates in.
    pub fn ingress(&self) -> IngressHandle<'_> {
        IngressHandle { directory: self }
    }
}

#[cfg(feature = "chaos")]
impl IngressHandle<'_> {
    /// Makes the front end panic (tests only); `false` if it is not running.
    pub fn panic(&self) -> bool {
        self.directory.cast_now(ADDRESS, IngressMsg::Panic) || super::webhook::panic(self.directory)
    }
}

/// Messages of the ingress.
pub(crate) enum IngressMsg {
    /// Panic at once: the chaos hook for tests (feature `chaos` only).
    #[cfg(feature = "chaos")]
    Panic,
    /// Run one polling round, then poll again.
    Poll,
}

/// The ingress actor.
pub(crate) struct Ingress;

/// The ingress's state.
pub(crate) struct IngressState {
    bot: Bot,
    config: Arc<TelegramConfig>,
    directory: Directory,
    /// The next update id to ask for; 0 until the first batch.
    offset: i32,
    /// The offset whose confirmation was last reported to persistence.
    confirmed: i32,
    /// Empty polls in a row that came back sooner than
    /// `telegram.empty_poll_interval`.
    quick_empty_polls: u32,
    bot_username: Option<String>,
    webhook_removed: bool,
    health: std::sync::Arc<crate::ops::Health>,
    /// For command costs and the command menu.
    full_config: Arc<Config>,
    backoff: Backoff,
    /// Registers the command menu in the background; aborted on stop.
    menu: tokio::task::JoinHandle<()>,
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
        let menu = crate::telegram::spawn_command_menu(
            bot.clone(),
            Arc::clone(&deps.config),
            deps.locales.clone(),
            Backoff::new(config.retry_min, config.retry_max),
        );
        Ok(IngressState {
            backoff: Backoff::new(config.retry_min, config.retry_max),
            config: Arc::new(config.clone()),
            bot,
            health: deps.health,
            full_config: Arc::clone(&deps.config),
            menu,
            directory: deps.directory,
            offset: 0,
            confirmed: 0,
            quick_empty_polls: 0,
            bot_username: deps.bot_username,
            webhook_removed: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<IngressMsg>,
        state: &mut IngressState,
    ) -> Result<(), ActorProcessingErr> {
        state.menu.abort();
        Ok(())
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
    let started = tokio::time::Instant::now();
    let round = match prepare(state).await {
        Ok(username) => poll_once(state, &username).await,
        Err(error) => Err(error),
    };
    match round {
        Ok(received) => {
            state.backoff.reset();
            let floor = state.config.empty_poll_interval;
            if received == 0 && started.elapsed() < floor {
                state.quick_empty_polls = state.quick_empty_polls.saturating_add(1);
            } else {
                state.quick_empty_polls = 0;
            }
            // A long poll may come back empty early now and then (the load
            // benchmark's p99 went from 6 to 150 ms when every such poll
            // waited): only a server that does it twice in a row is taken
            // for one that does not long-poll, and made to wait out the floor.
            if state.quick_empty_polls >= 2 {
                tokio::time::sleep_until(started + floor).await;
            }
            Ok(())
        }
        Err(Failure::Fatal(error)) => Err(error),
        Err(Failure::Retry { method, error }) => {
            let wait = state.backoff.next_delay();
            tracing::warn!(method, class = error.class(), %error, ?wait, "polling failed; retrying");
            tokio::time::sleep(wait).await;
            Ok(())
        }
    }
}

enum Failure {
    /// The Bot API call `method` (or `store`, admitting the batch) failed;
    /// polling tries again after a wait.
    Retry {
        method: &'static str,
        error: TelegramError,
    },
    Fatal(IngressError),
}

/// Classifies a failed Bot API call `method`.
fn failed(method: &'static str) -> impl FnOnce(RequestError) -> Failure {
    move |error| match error {
        RequestError::Api(ApiError::InvalidToken) => Failure::Fatal(IngressError::TokenRejected),
        other => Failure::Retry {
            method,
            error: other.into(),
        },
    }
}

/// Learns the bot's username and removes any webhook (getUpdates is refused
/// while one is set), once. The command menu is not waited for: it is
/// registered in the background (`crate::telegram::spawn_command_menu`).
async fn prepare(state: &mut IngressState) -> Result<String, Failure> {
    let username = match &state.bot_username {
        Some(name) => name.clone(),
        None => {
            let me = state.bot.get_me().await.map_err(failed("getMe"))?;
            let name = me.username().to_owned();
            tracing::info!(bot = %name, "connected to the Bot API");
            state.bot_username = Some(name.clone());
            name
        }
    };
    if !state.webhook_removed {
        state
            .bot
            .delete_webhook()
            .await
            .map_err(failed("deleteWebhook"))?;
        state.webhook_removed = true;
    }
    Ok(username)
}

/// One getUpdates round; returns how many updates it brought, readable or
/// not.
async fn poll_once(state: &mut IngressState, bot_username: &str) -> Result<usize, Failure> {
    let batch = crate::telegram::updates::get_updates(
        &state.bot,
        state.offset,
        state.config.poll_limit,
        state.config.poll_timeout,
        &[AllowedUpdate::Message],
    )
    .await
    .map_err(failed("getUpdates"))?;
    crate::ops::Health::stamp(&state.health.telegram_ok_ms);
    // This call confirmed every update below `offset` to Telegram.
    if state.offset > state.confirmed {
        state.confirmed = state.offset;
        let below = u32::try_from(state.offset).unwrap_or_default();
        state.directory.persistence().confirmed(below);
    }
    let Some(next_offset) = batch.next_offset else {
        return Ok(batch.received);
    };
    let inbound: Vec<Inbound> = batch
        .updates
        .iter()
        .filter_map(|update| {
            let converted = Inbound::from_update(update, bot_username, &state.full_config.commands);
            if converted.is_none() {
                tracing::debug!(update_id = update.id.0, "update ignored");
            }
            converted
        })
        .collect();
    tracing::debug!(
        received = batch.received,
        messages = inbound.len(),
        "updates received"
    );
    metrics::counter!("llmgram_updates_received_total").increment(batch.received as u64);

    hand_over(&state.directory, inbound)
        .await
        .map_err(|error| match error {
            HandOverError::Store(StoreError::Poisoned(reason)) => {
                Failure::Fatal(IngressError::Store(StoreError::Poisoned(reason)))
            }
            // Not a Bot API call: the batch could not be stored.
            HandOverError::Store(other) => Failure::Retry {
                method: "store",
                error: TelegramError::Store(other),
            },
            HandOverError::SessionsUnavailable => Failure::Fatal(IngressError::SessionsUnavailable),
        })?;
    state.offset = next_offset;
    Ok(batch.received)
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
    inbound: Vec<Inbound>,
) -> Result<(), HandOverError> {
    // Durable before routing: once Telegram considers them delivered, the
    // store is the only copy of an unanswered update.
    let admitted = directory
        .persistence()
        .admit(&inbound)
        .await
        .map_err(HandOverError::Store)?;
    let admitted = apply_limits(directory, admitted).await;
    directory
        .session_sup()
        .route(admitted)
        .await
        .map_err(|_| HandOverError::SessionsUnavailable)
}

/// Asks the rate limiter about the batch and marks the updates it limits.
/// A limiter that is away (restarting) lets everything through: better an
/// unlimited minute than unanswered users.
async fn apply_limits(directory: &Directory, mut updates: Vec<Inbound>) -> Vec<Inbound> {
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
            cost: if inbound.costs_llm_call() {
                Cost::Llm
            } else {
                Cost::Free
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
