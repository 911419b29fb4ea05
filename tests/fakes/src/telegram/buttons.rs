//! Inline keyboards in the fake Bot API: callback queries pushed by tests,
//! `answerCallbackQuery` and `editMessageReplyMarkup` recorded.
//!
//! `sendMessage` and `editMessageText` record their `reply_markup`
//! ([`super::SentMessage::reply_markup`], [`super::EditRecord::reply_markup`]);
//! the fake keeps each message's current markup, so an edit that changes
//! only the keyboard is not "message is not modified" (as on Telegram) and
//! an edit without `reply_markup` removes the keyboard (as on Telegram).

use std::collections::HashMap;
use std::time::Instant;

use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{FakeTelegram, Shared, error, ok, param_i64, param_str, private_chat};
use crate::lock;

/// An `answerCallbackQuery` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackAnswer {
    /// The query answered.
    pub query_id: String,
    /// The notification's text, if any.
    pub text: Option<String>,
    /// Shown as an alert rather than a notification.
    pub show_alert: bool,
}

/// A successful `editMessageReplyMarkup` call.
#[derive(Clone, Debug)]
pub struct MarkupEdit {
    /// Target chat.
    pub chat_id: i64,
    /// Edited message.
    pub message_id: i64,
    /// The new markup; `None` removed the keyboard.
    pub reply_markup: Option<Value>,
    /// When the fake received the call.
    pub at: Instant,
}

/// What the fake keeps about keyboards.
#[derive(Debug, Default)]
pub(super) struct ButtonsState {
    /// Each bot message's current `reply_markup`, by `(chat, message id)`.
    current: HashMap<(i64, i64), Value>,
    answers: Vec<CallbackAnswer>,
    markup_edits: Vec<MarkupEdit>,
    next_query: u64,
}

impl ButtonsState {
    /// A message was sent or edited with `markup` (`None`: no keyboard).
    pub(super) fn set(&mut self, chat_id: i64, message_id: i64, markup: Option<&Value>) {
        match markup {
            Some(markup) => {
                self.current.insert((chat_id, message_id), markup.clone());
            }
            None => {
                self.current.remove(&(chat_id, message_id));
            }
        }
    }

    /// The message's current markup.
    pub(super) fn current(&self, chat_id: i64, message_id: i64) -> Option<&Value> {
        self.current.get(&(chat_id, message_id))
    }
}

/// `reply_markup` from a request (a JSON object, or JSON text in a form).
pub(super) fn markup_param(params: &Map<String, Value>) -> Option<Value> {
    match params.get("reply_markup")? {
        Value::String(text) => serde_json::from_str(text).ok(),
        Value::Null => None,
        other => Some(other.clone()),
    }
}

/// The `callback_data` of every button of `markup`, row by row.
pub fn button_data(markup: &Value) -> Vec<String> {
    markup
        .get("inline_keyboard")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|button| button.get("callback_data")?.as_str().map(str::to_owned))
        .collect()
}

/// The label of every button of `markup`, row by row.
pub fn button_labels(markup: &Value) -> Vec<String> {
    markup
        .get("inline_keyboard")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|button| button.get("text")?.as_str().map(str::to_owned))
        .collect()
}

impl FakeTelegram {
    /// Queues a callback query: `user_id` pressed the button with `data` on
    /// the bot's message `message_id` in `chat_id` (a negative id is a
    /// group). Returns the update id and the query id.
    pub fn push_callback(
        &self,
        chat_id: i64,
        user_id: u64,
        message_id: i64,
        data: &str,
    ) -> (i64, String) {
        let mut inner = lock(&self.shared.inner);
        inner.buttons.next_query += 1;
        let query_id = format!("q{}", inner.buttons.next_query);
        let chat = if chat_id < 0 {
            json!({"id": chat_id, "type": "supergroup", "title": "Group"})
        } else {
            private_chat(chat_id)
        };
        let text = inner
            .current_text
            .get(&(chat_id, message_id))
            .cloned()
            .unwrap_or_default();
        let query = json!({
            "id": query_id,
            "from": {"id": user_id, "is_bot": false, "first_name": "User", "language_code": "en"},
            "message": {
                "message_id": message_id,
                "date": crate::unix_now(),
                "chat": chat,
                "from": super::bot_user(),
                "text": if text.is_empty() { "…".to_owned() } else { text },
            },
            "chat_instance": format!("ci{chat_id}"),
            "data": data,
        });
        let update_id = self.enqueue_update(&mut inner, "callback_query", query);
        (update_id, query_id)
    }

    /// Every `answerCallbackQuery` call, in order.
    pub fn callback_answers(&self) -> Vec<CallbackAnswer> {
        lock(&self.shared.inner).buttons.answers.clone()
    }

    /// Every successful `editMessageReplyMarkup` call, in order.
    pub fn markup_edits(&self) -> Vec<MarkupEdit> {
        lock(&self.shared.inner).buttons.markup_edits.clone()
    }

    /// The current `reply_markup` of the bot's message, if it has one.
    pub fn current_markup(&self, chat_id: i64, message_id: i64) -> Option<Value> {
        lock(&self.shared.inner)
            .buttons
            .current(chat_id, message_id)
            .cloned()
    }

    /// Waits until `answerCallbackQuery` was called `n` times.
    pub async fn wait_for_callback_answers(&self, n: usize, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.callback_answers().len() >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// `answerCallbackQuery`: recorded.
pub(super) fn answer_callback_query(shared: &Shared, params: &Map<String, Value>) -> Response {
    let Some(query_id) = param_str(params, "callback_query_id").map(str::to_owned) else {
        return error(
            400,
            "Bad Request: query is too old and response timeout expired or query ID is invalid",
        );
    };
    let text = param_str(params, "text").map(str::to_owned);
    if text.as_ref().is_some_and(|text| text.chars().count() > 200) {
        return error(400, "Bad Request: MESSAGE_TOO_LONG");
    }
    let show_alert = params
        .get("show_alert")
        .is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"));
    lock(&shared.inner).buttons.answers.push(CallbackAnswer {
        query_id,
        text,
        show_alert,
    });
    ok(&Value::Bool(true))
}

/// `editMessageReplyMarkup`: the message's keyboard replaced (or removed).
pub(super) fn edit_message_reply_markup(shared: &Shared, params: &Map<String, Value>) -> Response {
    let (Some(chat_id), Some(message_id)) = (
        param_i64(params, "chat_id"),
        param_i64(params, "message_id"),
    ) else {
        return error(400, "Bad Request: message identifier is not specified");
    };
    let markup = markup_param(params);
    let mut inner = lock(&shared.inner);
    let known = inner.sent_by_chat.get(&chat_id).is_some_and(|indexes| {
        indexes
            .iter()
            .any(|&i| inner.sent[i].message_id == message_id)
    });
    if !known {
        return error(400, "Bad Request: message to edit not found");
    }
    if inner.buttons.current(chat_id, message_id) == markup.as_ref() {
        return error(400, "Bad Request: message is not modified");
    }
    inner.buttons.set(chat_id, message_id, markup.as_ref());
    let text = inner
        .current_text
        .get(&(chat_id, message_id))
        .cloned()
        .unwrap_or_else(|| "…".to_owned());
    let mut message = json!({
        "message_id": message_id,
        "date": crate::unix_now(),
        "edit_date": crate::unix_now(),
        "chat": private_chat(chat_id),
        "from": super::bot_user(),
        "text": text,
    });
    if let (Some(markup), Some(object)) = (&markup, message.as_object_mut()) {
        object.insert("reply_markup".into(), markup.clone());
    }
    inner.buttons.markup_edits.push(MarkupEdit {
        chat_id,
        message_id,
        reply_markup: markup,
        at: Instant::now(),
    });
    ok(&message)
}
