//! Which conversation a message belongs to: the [`SessionKey`].
//!
//! A Telegram chat is not always one conversation. In a forum supergroup
//! (topics enabled) every topic is its own conversation with its own
//! history, so the key is the chat plus the topic's thread. Everything that
//! names a *conversation* (the session supervisor's map, a session, the
//! chat record's store key, a pending update, a delivery) uses the key;
//! what names the *Telegram chat* (flood limits, admin checks, the target
//! of a send) uses [`SessionKey::chat`].
//!
//! The fields are private and read through methods, and the store encoding
//! is a list of tagged fields after the chat ([`crate::store::session_key`]),
//! so a later field (a Business connection, issue 17) is one more optional
//! field here and one more tag there, without touching the callers.

use std::fmt;
use std::sync::Arc;

pub use teloxide::types::{ChatId, ThreadId};

/// One conversation: a chat, or one topic of a forum supergroup.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    chat: ChatId,
    /// The forum topic (`message_thread_id` of a topic message); `None`
    /// for every other chat and for a forum's General topic.
    thread: Option<ThreadId>,
    /// The Telegram Business connection a fan chat is reached through
    /// (its id); `None` for the bot's own chats. A fan chat's id is in the
    /// creator's namespace: fan chat 6001 under a connection is not the
    /// bot's private chat 6001, so the connection is part of the key.
    business: Option<Arc<str>>,
}

impl SessionKey {
    /// The conversation of a whole chat (private chats, groups, a forum's
    /// General topic).
    pub fn of_chat(chat: ChatId) -> Self {
        Self {
            chat,
            thread: None,
            business: None,
        }
    }

    /// The conversation of `thread`, when given, in `chat`.
    pub fn new(chat: ChatId, thread: Option<ThreadId>) -> Self {
        Self {
            chat,
            thread,
            business: None,
        }
    }

    /// The conversation of the fan chat `chat` reached through the Business
    /// connection `connection` (a fan writing to a creator's account).
    pub fn business(connection: impl Into<Arc<str>>, chat: ChatId) -> Self {
        Self {
            chat,
            thread: None,
            business: Some(connection.into()),
        }
    }

    /// The Business connection id of a fan chat; `None` for the bot's own
    /// chats. Every send to the conversation carries it.
    pub fn connection(&self) -> Option<&str> {
        self.business.as_deref()
    }

    /// Whether it is a fan chat of a Business connection.
    pub fn is_business(&self) -> bool {
        self.business.is_some()
    }

    /// The Telegram chat: where its messages are sent.
    pub fn chat(&self) -> ChatId {
        self.chat
    }

    /// The forum topic, if the conversation is one.
    pub fn thread(&self) -> Option<ThreadId> {
        self.thread
    }

    /// The topic's thread id as the Bot API numbers it.
    pub fn thread_number(&self) -> Option<i32> {
        self.thread.map(|thread| thread.0.0)
    }

    /// Whether it is the conversation of a private chat of the bot with one
    /// user (a fan chat of a Business connection is not: the bot is not in
    /// it, it writes as the creator).
    pub fn is_user(&self) -> bool {
        self.chat.is_user() && self.business.is_none()
    }

    /// Whether it is the conversation of the whole of `chat` (not a topic).
    pub fn is_whole_chat(&self) -> bool {
        self.thread.is_none()
    }
}

impl From<ChatId> for SessionKey {
    fn from(chat: ChatId) -> Self {
        Self::of_chat(chat)
    }
}

/// `-1001234` for a chat, `-1001234/7` for its topic 7, `c1:6001` for fan
/// chat 6001 of Business connection `c1` (logs, the store inspector).
impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(connection) = &self.business {
            write!(f, "{connection}:")?;
        }
        write!(f, "{}", self.chat.0)?;
        if let Some(thread) = self.thread_number() {
            write!(f, "/{thread}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use teloxide::types::MessageId;

    #[test]
    fn a_topic_is_its_own_conversation_of_its_chat() {
        let chat = ChatId(-1_005);
        let general = SessionKey::of_chat(chat);
        let topic = SessionKey::new(chat, Some(ThreadId(MessageId(7))));
        assert_ne!(general, topic);
        assert_eq!(topic.chat(), chat);
        assert_eq!(topic.thread_number(), Some(7));
        assert!(general.is_whole_chat() && !topic.is_whole_chat());
        assert_eq!(general.to_string(), "-1005");
        assert_eq!(topic.to_string(), "-1005/7");
        assert_eq!(SessionKey::from(chat), general);
    }

    #[test]
    fn a_fan_chat_is_not_the_bots_chat_of_the_same_id() {
        let own = SessionKey::of_chat(ChatId(6001));
        let fan = SessionKey::business("c1", ChatId(6001));
        assert_ne!(own, fan);
        assert_ne!(fan, SessionKey::business("c2", ChatId(6001)));
        assert_eq!(fan.chat(), ChatId(6001));
        assert_eq!(fan.connection(), Some("c1"));
        assert!(own.is_user() && !fan.is_user());
        assert_eq!(fan.to_string(), "c1:6001");
    }
}
