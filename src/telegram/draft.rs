//! `sendMessageDraft` (Bot API 9.5): a streamed answer shown as an animated
//! draft in a private chat, before the finished answer is sent as a normal
//! message.
//!
//! teloxide 0.17 predates the method, so it is defined here as a typed
//! payload ([`SendMessageDraft`]) executed by teloxide's own JSON request
//! machinery ([`JsonRequest`](teloxide::requests::JsonRequest)): the same
//! `Bot`, the same HTTP client and connection pool, the same error parsing
//! as every other call, and no URL (it holds the token) built or logged
//! here.
//!
//! Servers older than 9.5 answer "Not Found" (the method does not exist),
//! and Telegram refuses drafts in chats that do not support them (400
//! `TEXTDRAFT_PEER_INVALID`). Both become
//! [`TelegramError::Unsupported`]: the caller falls back to editing a
//! message, and [`DraftSupport`] remembers the refusal for the rest of the
//! process so later answers do not ask again.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use serde::Serialize;
use teloxide::types::{ChatId, MessageEntity, ThreadId, True};
use teloxide::{ApiError, RequestError};

use super::TelegramError;

/// The `sendMessageDraft` parameters llmgram uses: text with entities,
/// never a parse mode (nothing the model writes can make the text
/// unparseable).
#[derive(Debug, Clone, Serialize)]
pub struct SendMessageDraft {
    /// The private chat.
    pub chat_id: ChatId,
    /// The forum topic, when the chat has topics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_thread_id: Option<ThreadId>,
    /// Non-zero; updates of a draft with the same id are animated.
    pub draft_id: u32,
    /// The text shown, 1–4096 characters after entities parsing.
    pub text: String,
    /// Formatting of `text`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<MessageEntity>,
}

impl teloxide::requests::Payload for SendMessageDraft {
    type Output = True;
    const NAME: &'static str = "sendMessageDraft";
}

/// Shows (or updates) draft `draft_id` in `chat_id` with `text` and its
/// `entities`, through `bot`'s client.
pub async fn send_message_draft(
    bot: &teloxide::Bot,
    payload: SendMessageDraft,
) -> Result<(), TelegramError> {
    teloxide::requests::JsonRequest::new(bot.clone(), payload)
        .await
        .map(drop)
        .map_err(classify)
}

/// A failed `sendMessageDraft`, classified: the refusals that mean "no
/// drafts here" are [`TelegramError::Unsupported`], the rest as for any
/// call.
pub fn classify(error: RequestError) -> TelegramError {
    match &error {
        RequestError::Api(api) if refuses_drafts(api) => {
            TelegramError::Unsupported(api.to_string())
        }
        _ => TelegramError::from(error),
    }
}

/// Whether Telegram's answer says the method itself is unavailable (an
/// older server, a fake without it) or drafts are not allowed in the chat.
fn refuses_drafts(api: &ApiError) -> bool {
    match api {
        // teloxide parses Telegram's bare "Not Found" (an unknown method, as
        // the URL is otherwise valid once getMe succeeded) as a bad token.
        ApiError::InvalidToken => true,
        ApiError::Unknown(description) => {
            let description = description.to_ascii_lowercase();
            description == "not found"
                || description.contains("method not found")
                || description.contains("textdraft_peer_invalid")
        }
        _ => false,
    }
}

/// Whether drafts may still be tried: cleared, for the rest of the process,
/// by the first refusal of `sendMessageDraft`. Created once by `app` and
/// shared by every outbox incarnation, so a restart does not ask again.
#[derive(Debug, Default)]
pub struct DraftSupport {
    refused: AtomicBool,
}

impl DraftSupport {
    /// Whether `sendMessageDraft` was refused before.
    pub fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// Records a refusal; `true` the first time (to log it once).
    pub fn refuse(&self) -> bool {
        !self.refused.swap(true, Ordering::Relaxed)
    }
}

/// A new draft id for one answer: non-zero, and different from the
/// previous answers' (so a new answer's draft is not animated out of the
/// last one's). Unique within the process, which is all Telegram needs.
pub fn next_draft_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    loop {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_method_and_refused_chats_are_unsupported() {
        for api in [
            ApiError::InvalidToken,
            ApiError::Unknown("Not Found: method not found".into()),
            ApiError::Unknown("Bad Request: TEXTDRAFT_PEER_INVALID".into()),
        ] {
            let error = classify(RequestError::Api(api));
            assert_eq!(error.class(), "unsupported", "{error}");
            assert!(!error.is_retryable());
        }
        let error = classify(RequestError::Api(ApiError::MessageTextIsEmpty));
        assert_eq!(error.class(), "rejected");
        let error = classify(RequestError::RetryAfter(
            teloxide::types::Seconds::from_seconds(3),
        ));
        assert_eq!(error.class(), "retry_after");
    }

    #[test]
    fn the_payload_is_the_bot_api_method() {
        let payload = SendMessageDraft {
            chat_id: ChatId(42),
            message_thread_id: None,
            draft_id: 7,
            text: "Hel".into(),
            entities: Vec::new(),
        };
        let json = serde_json::to_value(&payload).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"chat_id": 42, "draft_id": 7, "text": "Hel"})
        );
        assert_eq!(
            <SendMessageDraft as teloxide::requests::Payload>::NAME,
            "sendMessageDraft"
        );
    }

    #[test]
    fn a_refusal_is_remembered_and_reported_once() {
        let support = DraftSupport::default();
        assert!(!support.is_refused());
        assert!(support.refuse());
        assert!(!support.refuse());
        assert!(support.is_refused());
        assert_ne!(next_draft_id(), next_draft_id());
    }
}
