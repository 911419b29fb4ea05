//! The Telegram side that is not an actor: turning updates into
//! [`inbound::Inbound`] messages (commands parsed once, [`command`]), splitting long answers, classifying Bot API
//! errors, the `sendMessageDraft` request teloxide lacks ([`draft`]), and
//! building the one shared client.
//!
//! The actors that talk to Telegram live in the supervision tree:
//! `actors/root/ingress.rs` (long polling) and `actors/root/outbox.rs` (sends).

pub mod buttons;
pub mod command;
pub mod draft;
pub mod error;
pub mod inbound;
pub mod render;
#[cfg(test)]
pub(crate) mod scripted;
pub mod session_key;
pub mod split;
pub mod transport;
pub mod updates;

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use teloxide::Bot;
use teloxide::types::ChatId;

use crate::config::{Secret, TelegramConfig};
pub use error::TelegramError;

/// Builds the bot with one pooled HTTP client for the Bot API.
///
/// The client's overall timeout must outlast a long poll, so it is the poll
/// timeout plus the send timeout; sends are cut shorter by the outbox with
/// `telegram.send_timeout`.
pub fn build_bot(config: &TelegramConfig, token: &Secret) -> Result<Bot, TelegramError> {
    let client = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.poll_timeout + config.send_timeout)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| TelegramError::Client(e.to_string()))?;
    Ok(Bot::with_client(token.expose(), client).set_api_url(config.api_url.clone()))
}

/// Telegram's flood limits, applied to every send: per chat and overall.
/// Created once by `app` and shared, so they hold across outbox restarts.
#[derive(Debug)]
pub struct SendPacing {
    per_chat: DefaultKeyedRateLimiter<i64>,
    /// Groups have a stricter limit of their own on top.
    per_group: DefaultKeyedRateLimiter<i64>,
    global: DefaultDirectRateLimiter,
}

impl SendPacing {
    /// Limiters from `telegram.per_chat_rate`/`per_chat_burst`,
    /// `telegram.group_per_minute` and `telegram.global_rate`.
    pub fn new(config: &TelegramConfig) -> Self {
        let nonzero = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let per_chat = Quota::per_second(nonzero(config.per_chat_rate))
            .allow_burst(nonzero(config.per_chat_burst));
        let global = Quota::per_second(nonzero(config.global_rate))
            .allow_burst(nonzero(config.global_rate.max(config.per_chat_burst)));
        let per_group = Quota::per_minute(nonzero(config.group_per_minute))
            .allow_burst(nonzero(config.per_chat_burst));
        Self {
            per_chat: RateLimiter::keyed(per_chat),
            per_group: RateLimiter::keyed(per_group),
            global: RateLimiter::direct(global),
        }
    }

    /// Waits until a message may go to `chat`.
    pub async fn until_ready(&self, chat: ChatId) {
        self.per_chat.until_key_ready(&chat.0).await;
        // Group and supergroup chat ids are negative.
        if chat.0 < 0 {
            self.per_group.until_key_ready(&chat.0).await;
        }
        self.global.until_ready().await;
    }

    /// Drops the state of chats that have fully recovered.
    pub fn reclaim(&self) {
        self.per_chat.retain_recent();
        self.per_chat.shrink_to_fit();
        self.per_group.retain_recent();
        self.per_group.shrink_to_fit();
    }
}

/// Registers the command menu in a background task, retrying with `backoff`
/// until Telegram takes it. The menu is a convenience: every command works
/// typed without it, so its failure is logged (by method name) and never
/// holds up polling. The caller owns the task and aborts it when it stops.
pub fn spawn_command_menu(
    bot: Bot,
    config: std::sync::Arc<crate::config::Config>,
    locales: crate::texts::Locales,
    mut backoff: crate::retry::Backoff,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for attempt in 1u32.. {
            let error = match register_commands(&bot, &config, &locales).await {
                Ok(()) => {
                    tracing::debug!(method = "setMyCommands", attempt, "command menu registered");
                    return;
                }
                Err(error) => TelegramError::from(error),
            };
            let wait = match error {
                TelegramError::RetryAfter(after) => after.max(backoff.next_delay()),
                _ => backoff.next_delay(),
            };
            tracing::warn!(
                method = "setMyCommands",
                class = error.class(),
                %error,
                attempt,
                ?wait,
                "command menu not registered; retrying in the background"
            );
            tokio::time::sleep(wait).await;
        }
    })
}

/// Registers the command menu (setMyCommands) once per supported language,
/// English also as the default: the bot's own user commands, then every
/// configured assistant command.
pub async fn register_commands(
    bot: &Bot,
    config: &crate::config::Config,
    locales: &crate::texts::Locales,
) -> Result<(), teloxide::RequestError> {
    use teloxide::payloads::SetMyCommandsSetters as _;
    use teloxide::prelude::Requester as _;
    use teloxide::types::BotCommand;

    for language in crate::texts::Locales::LANGUAGES {
        let texts = locales.for_language(Some(language));
        // The bot's own entries (check-config counts them against the limit
        // of 100 with `command::menu_len`).
        let mut commands: Vec<BotCommand> = command::menu(texts)
            .map(|(name, description)| BotCommand::new(name, description))
            .collect();
        for command in &config.commands {
            let description = command
                .description
                .get(language)
                .or_else(|| command.description.get("en"))
                .cloned()
                .unwrap_or_default();
            commands.push(BotCommand::new(command.name.clone(), description));
        }
        bot.set_my_commands(commands.clone())
            .language_code(language.to_owned())
            .await?;
        if language == "en" {
            bot.set_my_commands(commands).await?;
        }
    }
    Ok(())
}
