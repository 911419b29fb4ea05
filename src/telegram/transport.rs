//! Where the outbox's messages go: the Bot API, one call per message, or
//! the operator's terminal (`llmgram chat`).
//!
//! The outbox decides order, pacing and retries; a transport only performs
//! one call and classifies its failure. Keeping the calls behind this type
//! lets the same actors serve another front end without a Bot API.

use teloxide::Bot;
use teloxide::payloads::{
    AnswerCallbackQuerySetters as _, EditMessageTextSetters as _, SendChatActionSetters as _,
    SendMessageSetters as _,
};
use teloxide::prelude::Requester as _;
use teloxide::types::{
    BusinessConnectionId, CallbackQueryId, ChatAction, InlineKeyboardButton, InlineKeyboardMarkup,
    LinkPreviewOptions, MessageId, ReplyParameters, UserId,
};
use teloxide::{ApiError, RequestError};

use super::TelegramError;
use super::buttons::Keyboard;
use super::inbound::{ChatId, SessionKey};
use super::render::OutgoingText;
use crate::front::console::ConsoleOut;

/// The front end the outbox sends through. Cloning is cheap.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Telegram's Bot API (or a fake of it) through teloxide.
    Telegram(Bot),
    /// The operator's terminal: answers are printed on stdout.
    Console(ConsoleOut),
    /// A scripted stand-in for the Bot API (unit tests only).
    #[cfg(test)]
    #[allow(private_interfaces)]
    Scripted(std::sync::Arc<super::scripted::ScriptedApi>),
}

impl Transport {
    /// The Bot API client, when the front end is Telegram.
    pub fn bot(&self) -> Option<&Bot> {
        match self {
            Self::Telegram(bot) => Some(bot),
            Self::Console(_) => None,
            #[cfg(test)]
            Self::Scripted(_) => None,
        }
    }

    /// Sends one message to the conversation `to` (its chat, and its forum
    /// topic when it is one), as a reply to `reply_to` when given (sent all
    /// the same if that message is gone); returns its id (for later edits).
    pub async fn send(
        &self,
        to: &SessionKey,
        part: &OutgoingText,
        reply_to: Option<MessageId>,
    ) -> Result<MessageId, TelegramError> {
        match self {
            Self::Telegram(bot) => {
                let mut request = bot
                    .send_message(to.chat(), part.text.clone())
                    .link_preview_options(no_link_preview());
                if let Some(thread) = to.thread() {
                    request = request.message_thread_id(thread);
                }
                // A fan chat is written to as the creator, through their
                // connection; Telegram takes no keyboard there.
                let business = to.connection();
                if let Some(connection) = business {
                    request =
                        request.business_connection_id(BusinessConnectionId(connection.to_owned()));
                }
                if let Some(message_id) = reply_to {
                    request = request.reply_parameters(ReplyParameters {
                        allow_sending_without_reply: Some(true),
                        ..ReplyParameters::new(message_id)
                    });
                }
                if !part.entities.is_empty() {
                    // Entities, never a parse mode: nothing the model writes
                    // can make Telegram refuse the message as unparseable.
                    request = request.entities(part.entities.clone());
                }
                if let Some(keyboard) = part.keyboard.as_ref().filter(|_| business.is_none()) {
                    request = request.reply_markup(markup(keyboard));
                }
                Ok(request.await?.id)
            }
            Self::Console(out) => out.send(&part.text).await,
            #[cfg(test)]
            Self::Scripted(api) => api.call(to.chat(), "send", &part.text, None).await,
        }
    }

    /// Replaces the text of a message sent before. Editing to the text it
    /// already has is not an error.
    pub async fn edit(
        &self,
        chat_id: ChatId,
        message_id: MessageId,
        part: &OutgoingText,
    ) -> Result<(), TelegramError> {
        match self {
            Self::Telegram(bot) => {
                let mut request = bot
                    .edit_message_text(chat_id, message_id, part.text.clone())
                    .link_preview_options(no_link_preview());
                if !part.entities.is_empty() {
                    request = request.entities(part.entities.clone());
                }
                // Without a keyboard the edit removes the one shown.
                if let Some(keyboard) = &part.keyboard {
                    request = request.reply_markup(markup(keyboard));
                }
                match request.await {
                    Ok(_) | Err(RequestError::Api(ApiError::MessageNotModified)) => Ok(()),
                    Err(error) => Err(error.into()),
                }
            }
            Self::Console(out) => out.edit(message_id, &part.text).await,
            #[cfg(test)]
            Self::Scripted(api) => api
                .call(chat_id, "edit", &part.text, Some(message_id))
                .await
                .map(drop),
        }
    }

    /// Shows `part` as draft `draft_id` of a streamed answer in a private
    /// chat (Bot API `sendMessageDraft`, [`super::draft`]). A draft is not a
    /// message: it has no id, and the finished answer is sent with
    /// [`Self::send`]. [`TelegramError::Unsupported`] when the front end
    /// has no drafts (the console, a Bot API server older than 9.5).
    pub async fn send_draft(
        &self,
        chat_id: ChatId,
        draft_id: u32,
        part: &OutgoingText,
    ) -> Result<(), TelegramError> {
        match self {
            Self::Telegram(bot) => {
                let payload = super::draft::SendMessageDraft {
                    chat_id,
                    message_thread_id: None,
                    draft_id,
                    text: part.text.clone(),
                    entities: part.entities.clone(),
                };
                super::draft::send_message_draft(bot, payload).await
            }
            // A terminal has no drafts: the console edits its live message.
            Self::Console(_) => Err(TelegramError::Unsupported("the console".into())),
            #[cfg(test)]
            Self::Scripted(api) => api.call(chat_id, "draft", &part.text, None).await.map(drop),
        }
    }

    /// Answers a button press (Bot API `answerCallbackQuery`): `text` as a
    /// notification, or as an alert the user must dismiss when `alert`.
    pub async fn answer_callback(
        &self,
        query_id: &str,
        text: Option<&str>,
        alert: bool,
    ) -> Result<(), TelegramError> {
        match self {
            Self::Telegram(bot) => {
                let mut request = bot.answer_callback_query(CallbackQueryId(query_id.to_owned()));
                if let Some(text) = text {
                    request = request.text(text).show_alert(alert);
                }
                request.await?;
                Ok(())
            }
            // The console has no buttons to press.
            Self::Console(_) => Ok(()),
            #[cfg(test)]
            Self::Scripted(api) => api
                .call(ChatId(0), "answer", text.unwrap_or_default(), None)
                .await
                .map(drop),
        }
    }

    /// Whether `user_id` is the creator or an administrator of `chat_id`
    /// (Bot API `getChatMember`).
    pub async fn is_chat_admin(
        &self,
        chat_id: ChatId,
        user_id: u64,
    ) -> Result<bool, TelegramError> {
        match self {
            Self::Telegram(bot) => Ok(bot
                .get_chat_member(chat_id, UserId(user_id))
                .await?
                .is_privileged()),
            // The operator's terminal is one private chat of its owner.
            Self::Console(_) => Ok(true),
            #[cfg(test)]
            Self::Scripted(_) => Ok(false),
        }
    }

    /// Shows "typing…" in the conversation `to` (in its forum topic when it
    /// is one).
    pub async fn typing(&self, to: &SessionKey) -> Result<(), TelegramError> {
        match self {
            Self::Telegram(bot) => {
                let mut request = bot.send_chat_action(to.chat(), ChatAction::Typing);
                if let Some(thread) = to.thread() {
                    request = request.message_thread_id(thread);
                }
                if let Some(connection) = to.connection() {
                    request =
                        request.business_connection_id(BusinessConnectionId(connection.to_owned()));
                }
                request.await?;
                Ok(())
            }
            // The prompt does not come back before the answer: enough to
            // show that something is going on.
            Self::Console(_) => Ok(()),
            #[cfg(test)]
            Self::Scripted(api) => api.call(to.chat(), "typing", "", None).await.map(drop),
        }
    }
}

/// An inline keyboard as the Bot API takes it.
fn markup(keyboard: &Keyboard) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new(keyboard.iter().map(|row| {
        row.iter()
            .map(|button| InlineKeyboardButton::callback(&button.label, &button.data))
            .collect::<Vec<_>>()
    }))
}

/// Link previews would turn an answer quoting a URL into a card the user did
/// not ask for.
fn no_link_preview() -> LinkPreviewOptions {
    LinkPreviewOptions {
        is_disabled: true,
        url: None,
        prefer_small_media: false,
        prefer_large_media: false,
        show_above_text: false,
    }
}
