//! Ingress: long-polls the Bot API and hands each update to the session
//! supervisor without waiting for it to be answered.
//!
//! - **Supervised by:** root, permanent, as [`Child::Front`](crate::actors::Child::Front)
//!   in polling mode; started last, stopped (killed) first.
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
//!   ([`crate::telegram::updates`]): one that cannot be read is logged with
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
use teloxide::{ApiError, RequestError};

use crate::actors::Directory;
#[cfg(feature = "chaos")]
use crate::actors::directory::{Address, Child};
use crate::config::{Config, TelegramConfig};
use crate::front::{HandOverError, hand_over, take_connections};
use crate::ops::Health;
use crate::retry::Backoff;
use crate::store::StoreError;
use crate::telegram::TelegramError;
use crate::telegram::inbound::Inbound;
use crate::texts::Locales;

// API

/// Typed operations on the front end that takes updates in (the polling
/// ingress or the webhook, by `telegram.mode`; both run as [`Child::Front`]).
/// Nothing asks it anything: it only has the chaos hook.
#[cfg(feature = "chaos")]
#[derive(Clone, Copy)]
pub struct FrontHandle<'a> {
    directory: &'a Directory,
}

#[cfg(feature = "chaos")]
const ADDRESS: Address<IngressMsg> = Address::new(Child::Front);

#[cfg(feature = "chaos")]
impl Directory {
    /// The front end taking updates in.
    pub fn front(&self) -> FrontHandle<'_> {
        FrontHandle { directory: self }
    }
}

#[cfg(feature = "chaos")]
impl FrontHandle<'_> {
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

/// What the polling ingress is built from.
pub(crate) struct IngressArgs {
    /// The Bot API client (the outbox's connection pool).
    pub(crate) bot: Bot,
    /// The bot's username, when getMe answered at start.
    pub(crate) bot_username: Option<String>,
    /// `[telegram]` for polling, the command costs for the rate limiter and
    /// the command menu.
    pub(crate) config: Arc<Config>,
    /// The command menu's descriptions.
    pub(crate) locales: Locales,
    /// Stamped after each good poll, for readiness.
    pub(crate) health: Arc<Health>,
    /// To admit, limit and route what it receives.
    pub(crate) directory: Directory,
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
    health: Arc<Health>,
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
}

impl Actor for Ingress {
    type Msg = IngressMsg;
    type State = IngressState;
    type Arguments = IngressArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<IngressMsg>,
        args: IngressArgs,
    ) -> Result<IngressState, ActorProcessingErr> {
        let config = &args.config.telegram;
        myself.cast(IngressMsg::Poll)?;
        let menu = crate::telegram::spawn_command_menu(
            args.bot.clone(),
            Arc::clone(&args.config),
            args.locales,
            Backoff::new(config.retry_min, config.retry_max),
        );
        Ok(IngressState {
            backoff: Backoff::new(config.retry_min, config.retry_max),
            config: Arc::new(config.clone()),
            bot: args.bot,
            health: args.health,
            full_config: args.config,
            menu,
            directory: args.directory,
            offset: 0,
            confirmed: 0,
            quick_empty_polls: 0,
            bot_username: args.bot_username,
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
        &crate::telegram::updates::allowed_updates(&state.full_config),
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
    take_connections(&state.directory, &state.full_config, &batch.updates)
        .await
        .map_err(hand_over_failure)?;
    let inbound: Vec<Inbound> = batch
        .updates
        .iter()
        .filter_map(|update| {
            let converted = Inbound::from_update(update, bot_username, &state.full_config);
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

    hand_over(&state.directory, &state.full_config, inbound)
        .await
        .map_err(hand_over_failure)?;
    state.offset = next_offset;
    Ok(batch.received)
}

/// What a batch that could not be handed over means for the loop.
fn hand_over_failure(error: HandOverError) -> Failure {
    match error {
        HandOverError::Store(StoreError::Poisoned(reason)) => {
            Failure::Fatal(IngressError::Store(StoreError::Poisoned(reason)))
        }
        // Not a Bot API call: the batch could not be stored.
        HandOverError::Store(other) => Failure::Retry {
            method: "store",
            error: TelegramError::Store(other),
        },
        HandOverError::SessionsUnavailable => Failure::Fatal(IngressError::SessionsUnavailable),
    }
}
