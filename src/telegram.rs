//! The Telegram side that is not an actor: turning updates into
//! [`inbound::Inbound`] messages, splitting long answers, classifying Bot API
//! errors, and building the one shared client.
//!
//! The actors that talk to Telegram live in the supervision tree:
//! `actors/root/ingress.rs` (long polling) and `actors/root/outbox.rs` (sends).

pub mod error;
pub mod inbound;
pub mod split;

use teloxide::Bot;

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
