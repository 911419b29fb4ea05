//! What a user sent, in the form the actors work with.
//!
//! The ingress turns each Telegram update into an [`Inbound`] (the console
//! front, each line it reads); nothing past the ingress sees teloxide's
//! update types. Updates that are not for us (edited
//! messages, channel posts, commands addressed to another bot) become `None`.
//! Commands are parsed here, once, into a [`Command`]
//! ([`super::command`]).

use std::time::Instant;

use teloxide::types::{Message, Update, UpdateKind};

use super::command::{self, Command, Parsed};
use crate::config::CommandConfig;

pub use teloxide::types::ChatId;

/// One message from a user, addressed to one chat's session.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Telegram's update id: increasing, unique per bot.
    pub update_id: u32,
    /// The chat to answer in; also the session key.
    pub chat_id: ChatId,
    /// The sender, when Telegram names one.
    pub user_id: Option<u64>,
    /// The sender's `language_code`, which picks the reply language.
    pub language_code: Option<String>,
    /// What was sent.
    pub kind: InboundKind,
    /// When the ingress received it, for end-to-end latency.
    pub received_at: Instant,
    /// When the user sent it (Telegram's `date`, Unix seconds); `None` for
    /// updates replayed from the store, which are never merged with others.
    pub sent_at: Option<i64>,
    /// Set by the ingress when the rate limiter says not to answer it.
    pub refused: Option<Refused>,
    /// In group chats, the sender's first name: the history names speakers.
    pub speaker: Option<String>,
}

/// The rate limiter's "no" for an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub reason: RefusalReason,
    /// Whether to tell the sender (once per window); otherwise no reply.
    pub notify: bool,
}

/// Why an update is not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// Over a rate limit; may try again after `retry_in`.
    RateLimited {
        /// When.
        retry_in: std::time::Duration,
    },
    /// The sender is banned.
    Banned,
    /// Allowlist mode, and the sender is not on the list.
    NotAllowed,
}

/// The content of an [`Inbound`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundKind {
    /// Plain text for the assistant.
    Text(String),
    /// `/name args`, parsed.
    Command(Command),
    /// A sticker, photo, voice note or other message without text.
    NonText,
}

impl Inbound {
    /// Whether answering it takes an LLM call: text, and the commands that
    /// do ([`Command::costs_llm_call`]).
    pub fn costs_llm_call(&self) -> bool {
        match &self.kind {
            InboundKind::Text(_) => true,
            InboundKind::Command(command) => command.costs_llm_call(),
            InboundKind::NonText => false,
        }
    }

    /// Converts an update; `None` when it is not a message for this bot.
    /// `bot_username` is used to ignore `/command@other_bot`; `assistants`
    /// are the configured commands.
    pub fn from_update(
        update: &Update,
        bot_username: &str,
        assistants: &[CommandConfig],
    ) -> Option<Self> {
        let UpdateKind::Message(message) = &update.kind else {
            return None;
        };
        let kind = if message.chat.is_private() {
            classify(message, bot_username, assistants)?
        } else {
            classify_in_group(message, bot_username, assistants)?
        };
        let user = message.from.as_ref();
        Some(Self {
            update_id: update.id.0,
            chat_id: message.chat.id,
            user_id: user.map(|u| u.id.0),
            language_code: user.and_then(|u| u.language_code.clone()),
            kind,
            received_at: Instant::now(),
            sent_at: Some(message.date.timestamp()),
            refused: None,
            speaker: (!message.chat.is_private())
                .then(|| user.map(|u| u.first_name.clone()))
                .flatten(),
        })
    }
}

fn classify(
    message: &Message,
    bot_username: &str,
    assistants: &[CommandConfig],
) -> Option<InboundKind> {
    let Some(text) = message.text() else {
        return Some(InboundKind::NonText);
    };
    classify_private_text(text, bot_username, assistants)
}

/// What a text sent in a private chat is: a command (`/name args`), plain
/// text, or `None` for a command addressed to another bot
/// (`/start@other_bot`). The console front classifies its lines here too.
pub fn classify_private_text(
    text: &str,
    bot_username: &str,
    assistants: &[CommandConfig],
) -> Option<InboundKind> {
    Some(match command::parse(text, bot_username, assistants) {
        Parsed::Command(command) => InboundKind::Command(command),
        Parsed::ForAnotherBot => return None,
        Parsed::Text => InboundKind::Text(text.to_owned()),
    })
}

/// In a group the bot answers only what is addressed to it: its commands, a
/// message mentioning `@bot_username`, or a reply to one of its messages.
/// Everything else is `None`: never routed, never stored.
fn classify_in_group(
    message: &Message,
    bot_username: &str,
    assistants: &[CommandConfig],
) -> Option<InboundKind> {
    let text = message.text()?;
    if let Parsed::Command(command) = command::parse(text, bot_username, assistants) {
        return Some(InboundKind::Command(command));
    }
    let mention = format!("@{bot_username}");
    let mentioned = text.to_lowercase().contains(&mention.to_lowercase());
    let replied_to_bot = message
        .reply_to_message()
        .and_then(|original| original.from.as_ref())
        .and_then(|author| author.username.as_deref())
        .is_some_and(|name| name.eq_ignore_ascii_case(bot_username));
    if !mentioned && !replied_to_bot {
        return None;
    }
    let without_mention = remove_ignore_case(text, &mention);
    Some(InboundKind::Text(without_mention.trim().to_owned()))
}

/// `text` without any `needle` (ASCII case-insensitive).
fn remove_ignore_case(text: &str, needle: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.to_ascii_lowercase().find(&needle.to_ascii_lowercase()) {
        out.push_str(&rest[..at]);
        rest = &rest[at + needle.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_removed_whatever_their_case() {
        assert_eq!(remove_ignore_case("@Bot hi @bot!", "@bot"), " hi !");
        assert_eq!(remove_ignore_case("жж @bot жж", "@BOT"), "жж  жж");
    }
}
