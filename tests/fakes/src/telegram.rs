//! A fake Telegram Bot API server.
//!
//! [`FakeTelegram::start`] serves `/{bot<TOKEN>}/{method}` (GET and POST, any
//! token, method names matched case-insensitively) on `127.0.0.1`. Parameters
//! are read from a JSON body, a form-urlencoded body and the query string.
//!
//! Supported methods: `getMe`, `setWebhook`, `deleteWebhook`, `setMyCommands`,
//! `deleteMyCommands`, `getUpdates` (with confirmation by `offset` and long
//! polling by `timeout`), `sendMessage`, `editMessageText`,
//! `sendMessageDraft` (private chats only, as Telegram; recorded in
//! [`FakeTelegram::drafts`], refused like a server older than Bot API 9.5
//! with [`FakeTelegram::refuse_drafts`]), `sendChatAction`, `getChatMember`
//! (everyone is a plain `member` unless [`FakeTelegram::set_member_status`]
//! says otherwise) and `getFile`; and Telegram Business (see [`business`]):
//! `getBusinessConnection`, `deleteBusinessMessages`, `readBusinessMessage`
//! and the business variants (with `business_connection_id`) of
//! `sendMessage`, `sendChatAction` and `editMessageText`, with business
//! updates pushed by [`FakeTelegram::connect_business`] and friends.
//! Anything else answers `404 Not Found: method not found`. Files registered
//! with [`FakeTelegram::add_file`] are downloaded from
//! `GET /file/bot<TOKEN>/<file_path>`, as from the real Bot API.
//!
//! Tests push user updates with [`FakeTelegram::push_text`] and friends
//! (media messages with [`FakeTelegram::push_media`] and a [`MediaUpdate`])
//! and observe what the bot did with [`FakeTelegram::sent`],
//! [`FakeTelegram::edits`], [`FakeTelegram::chat_actions`],
//! [`FakeTelegram::downloaded_paths`], etc. Faults are injected with
//! [`FakeTelegram::fail_next_sends`], [`FakeTelegram::refuse_method`],
//! [`FakeTelegram::fail_next_get_files`] and
//! [`FakeTelegram::fail_next_downloads`]; [`FakeTelegram::push_raw_update`]
//! queues an update as raw JSON text (even JSON no client can parse), and
//! [`FakeTelegram::set_instant_polls`] makes getUpdates ignore `timeout`, as
//! a Bot API server or proxy without long polling does.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::{lock, serve, unix_now, wait_until};

pub mod business;
mod buttons;
mod media;

pub use business::{
    BUSINESS_BOT_ACCESS_FORBIDDEN, BUSINESS_CONNECTION_INVALID, BUSINESS_CONNECTION_NOT_FOUND,
    BUSINESS_NOT_PRIVATE_CHAT, BUSINESS_PEER_USAGE_MISSING, BUSINESS_SENT_TO_SELF, BusinessAction,
    BusinessConn, BusinessEdit, BusinessFrom, BusinessRefusal, BusinessSent,
};
pub use buttons::{CallbackAnswer, MarkupEdit, button_data, button_labels};
pub use media::{MAX_DOWNLOAD_SIZE, MediaUpdate, jpeg};

/// The fake bot's user id, as returned by `getMe` and used as `from` of sent
/// messages.
pub const BOT_USER_ID: i64 = 7_000_000_001;
/// The fake bot's username (without `@`).
pub const BOT_USERNAME: &str = "llmgram_test_bot";
/// The fake bot's first name.
pub const BOT_FIRST_NAME: &str = "llmgram";

/// Maximum message length in UTF-16 code units, as enforced by Telegram.
const MAX_TEXT_UTF16: usize = 4096;
/// Upper bound on a single long poll, whatever the client asks for.
const MAX_POLL_TIMEOUT_SECS: u64 = 60;

/// An error to return instead of performing the next send/edit calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TelegramFault {
    /// HTTP 429 `Too Many Requests: retry after S` with
    /// `parameters.retry_after = S` (seconds).
    RetryAfter(u32),
    /// An arbitrary HTTP status with the given `description`
    /// (e.g. `Status(400, "Bad Request: chat not found".into())`).
    Status(u16, String),
    /// The call is performed (sent or edited, and recorded) but answered
    /// with a 200 whose body is not JSON, as a broken proxy might: the
    /// client cannot tell whether it happened.
    Garbled,
}

/// A message successfully sent by the bot through `sendMessage`.
#[derive(Clone, Debug)]
pub struct SentMessage {
    /// Target chat.
    pub chat_id: i64,
    /// Message id assigned by the fake (per chat, increasing).
    pub message_id: i64,
    /// The message text as sent.
    pub text: String,
    /// `reply_parameters.message_id`: the message this one replies to.
    pub reply_to: Option<i64>,
    /// `reply_parameters.allow_sending_without_reply`.
    pub reply_without_original: bool,
    /// `message_thread_id`: the forum topic it was sent to (`None`: the
    /// chat itself, or a forum's General topic).
    pub thread_id: Option<i64>,
    /// All request parameters as a JSON object (`parse_mode`,
    /// `reply_parameters`, `entities`, …).
    pub body: Value,
    /// `reply_markup` (an inline keyboard), if any.
    pub reply_markup: Option<Value>,
    /// When the fake received the call.
    pub at: Instant,
}

/// A Bot API call, as received (failed and refused ones included).
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// The bot token in the call's path: several processes of one bot can
    /// each be given their own (`<bot id>:<anything>`) to tell their calls
    /// apart.
    pub token: String,
    /// The method, lower-case (`sendmessage`).
    pub method: String,
    /// Its `chat_id` parameter, if any (and numeric).
    pub chat_id: Option<i64>,
    /// When the fake received it.
    pub at: Instant,
}

/// A `sendChatAction` call.
#[derive(Clone, Debug)]
pub struct ChatActionRecord {
    /// Target chat.
    pub chat_id: i64,
    /// The action, e.g. `"typing"`.
    pub action: String,
    /// `message_thread_id`: the forum topic it was shown in.
    pub thread_id: Option<i64>,
    /// When the fake received the call.
    pub at: Instant,
}

/// A successful `editMessageText` call.
#[derive(Clone, Debug)]
pub struct EditRecord {
    /// Target chat.
    pub chat_id: i64,
    /// Edited message.
    pub message_id: i64,
    /// The new text.
    pub text: String,
    /// `reply_markup` sent with the edit; `None` removed the keyboard.
    pub reply_markup: Option<Value>,
    /// When the fake received the call.
    pub at: Instant,
}

/// A successful `sendMessageDraft` call: a streamed answer shown as a draft.
#[derive(Clone, Debug)]
pub struct DraftRecord {
    /// Target chat (private).
    pub chat_id: i64,
    /// `message_thread_id`, when given.
    pub thread_id: Option<i64>,
    /// `draft_id` (non-zero): updates of one draft share it.
    pub draft_id: i64,
    /// The text shown.
    pub text: String,
    /// `entities`, when given.
    pub entities: Option<Value>,
    /// When the fake received the call.
    pub at: Instant,
}

/// Handle to a running fake Telegram Bot API server. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FakeTelegram {
    shared: Arc<Shared>,
    port: u16,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    /// Signalled whenever an update is pushed.
    updates: Notify,
    /// Signalled whenever a message is sent.
    sent: Notify,
    /// Signalled whenever `getUpdates` is called.
    polls: Notify,
    /// Signalled whenever getFile is called or a download requested.
    files: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// Unconfirmed updates in the order they were queued, pre-serialised.
    queue: VecDeque<(i64, String)>,
    /// Every update ever queued, by id, for [`FakeTelegram::redeliver`].
    issued: HashMap<i64, String>,
    next_update_id: i64,
    delivered_at: HashMap<i64, Instant>,
    get_updates_calls: usize,
    confirmed_offset: i64,
    /// Last message id used per chat (user and bot messages share it).
    last_message_id: HashMap<i64, i64>,
    sent: Vec<SentMessage>,
    sent_by_chat: HashMap<i64, Vec<usize>>,
    subscribers: Vec<UnboundedSender<SentMessage>>,
    actions: Vec<ChatActionRecord>,
    edits: Vec<EditRecord>,
    /// Successful `sendMessageDraft` calls.
    drafts: Vec<DraftRecord>,
    /// The latest text of each edited message, by `(chat, message id)`.
    current_text: HashMap<(i64, i64), String>,
    my_commands: Vec<Value>,
    method_calls: HashMap<String, usize>,
    /// Every call, in the order received.
    calls: Vec<CallRecord>,
    faults: VecDeque<TelegramFault>,
    /// Telegram's per-chat flood limit, when enabled: the shortest interval
    /// between two messages to one chat, and the `retry_after` to answer.
    flood: Option<(Duration, u32)>,
    /// Successful sends per chat, most recent.
    last_sent_at: HashMap<i64, Instant>,
    /// 429s answered because of the flood limit.
    flood_rejections: usize,
    /// Until when each chat was told to wait by a flood 429's `retry_after`.
    retry_after_until: HashMap<i64, Instant>,
    /// sendMessage calls to a chat before its `retry_after` had passed.
    retry_after_violations: usize,
    /// The webhook set with setWebhook, until deleteWebhook.
    webhook: Option<Webhook>,
    /// Methods (lower-case) answered with a fault on every call.
    refused: HashMap<String, TelegramFault>,
    /// Methods whose calls wait this long before being served.
    stalled: HashMap<String, Duration>,
    /// getUpdates answers at once, whatever `timeout` asks for.
    instant_polls: bool,
    /// getChatMember's `status` per `(chat, user)`; `member` when absent.
    member_status: HashMap<(i64, u64), String>,
    /// Files, downloads and the tokens allowed to download (see
    /// [`media`]).
    media: media::MediaState,
    /// Business connections, messages and calls (see [`business`]).
    business: business::BusinessState,
    /// Keyboards and callback answers (see [`buttons`]).
    buttons: buttons::ButtonsState,
}

/// A webhook registered with `setWebhook`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    /// Where updates are to be posted.
    pub url: String,
    /// The `secret_token` to send in `X-Telegram-Bot-Api-Secret-Token`.
    pub secret: Option<String>,
}

impl Inner {
    fn next_message_id(&mut self, chat_id: i64) -> i64 {
        let id = self.last_message_id.entry(chat_id).or_insert(0);
        *id += 1;
        *id
    }
}

impl FakeTelegram {
    /// Binds `127.0.0.1:0` and serves the fake API on the current tokio
    /// runtime.
    ///
    /// # Panics
    ///
    /// If the loopback interface cannot be bound.
    pub async fn start() -> FakeTelegram {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                next_update_id: 1,
                ..Inner::default()
            }),
            ..Shared::default()
        });
        let router = Router::new()
            .route("/{bot_token}/{method}", get(handle).post(handle))
            .route("/file/{bot_token}/{*file_path}", get(media::download))
            .fallback(not_found)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let port = serve(router).await;
        FakeTelegram { shared, port }
    }

    /// Base URL to give to `teloxide::Bot::set_api_url`, e.g.
    /// `http://127.0.0.1:PORT/`.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    // ---------------------------------------------------------------- faults

    /// Enables Telegram's per-chat flood limit: a sendMessage to a chat less
    /// than `min_interval` after the previous successful one gets 429 with
    /// `retry_after` seconds, and is not recorded. `None` disables it.
    pub fn set_chat_flood_limit(&self, limit: Option<(Duration, u32)>) {
        lock(&self.shared.inner).flood = limit;
    }

    /// Makes every call of `method` (case-insensitive) fail with `fault`,
    /// until called again with `None`. Refused calls are counted by
    /// [`method_calls`](Self::method_calls) but have no effect.
    pub fn refuse_method(&self, method: &str, fault: Option<TelegramFault>) {
        let mut inner = lock(&self.shared.inner);
        let method = method.to_ascii_lowercase();
        match fault {
            Some(fault) => inner.refused.insert(method, fault),
            None => inner.refused.remove(&method),
        };
    }

    /// Makes every call of `method` (case-insensitive) wait `delay` before
    /// it is served (then served as usual), until called again with
    /// `None`: a Bot API that stops answering one method, e.g. to hold a
    /// session inside a turn while a test kills the process.
    pub fn stall_method(&self, method: &str, delay: Option<Duration>) {
        let mut inner = lock(&self.shared.inner);
        let method = method.to_ascii_lowercase();
        match delay {
            Some(delay) => inner.stalled.insert(method, delay),
            None => inner.stalled.remove(&method),
        };
    }

    /// When `true`, `sendMessageDraft` answers `404 Not Found: method not
    /// found`, as a Bot API server older than 9.5 does; `false` serves it
    /// again.
    pub fn refuse_drafts(&self, refuse: bool) {
        let fault =
            refuse.then(|| TelegramFault::Status(404, "Not Found: method not found".into()));
        self.refuse_method("sendMessageDraft", fault);
    }

    /// When `true`, getUpdates answers at once (with what is queued, or
    /// `[]`), ignoring the long-poll `timeout`.
    pub fn set_instant_polls(&self, instant: bool) {
        lock(&self.shared.inner).instant_polls = instant;
    }

    /// Sets what getChatMember answers for `user_id` in `chat_id`:
    /// `creator`, `administrator` or `member` (the default).
    pub fn set_member_status(&self, chat_id: i64, user_id: u64, status: &str) {
        lock(&self.shared.inner)
            .member_status
            .insert((chat_id, user_id), status.to_owned());
    }

    /// The webhook currently registered, if any.
    pub fn webhook(&self) -> Option<Webhook> {
        lock(&self.shared.inner).webhook.clone()
    }

    /// An update carrying a private text message, as Telegram would post it
    /// to a webhook (not queued for getUpdates). Returns its id and JSON.
    pub fn text_update(&self, chat_id: i64, user_id: u64, text: &str) -> (i64, Value) {
        let mut inner = lock(&self.shared.inner);
        let update_id = inner.next_update_id;
        inner.next_update_id += 1;
        let message_id = inner.next_message_id(chat_id);
        let update = json!({
            "update_id": update_id,
            "message": {
                "message_id": message_id,
                "date": unix_now(),
                "chat": private_chat(chat_id),
                "from": {"id": user_id, "is_bot": false, "first_name": "User", "language_code": "en"},
                "text": text,
            }
        });
        (update_id, update)
    }

    /// 429s answered because of the per-chat flood limit.
    pub fn flood_rejections(&self) -> usize {
        lock(&self.shared.inner).flood_rejections
    }

    /// sendMessage calls that came to a chat before the `retry_after` of a
    /// flood 429 sent to that chat had passed (a real Telegram answers them
    /// 429 again and may extend the wait).
    pub fn retry_after_violations(&self) -> usize {
        lock(&self.shared.inner).retry_after_violations
    }

    /// Makes the next `n` `sendMessage`/`editMessageText` calls fail with
    /// `fault` (queued after any faults still pending). Failed calls are not
    /// recorded as sent or edited, except [`TelegramFault::Garbled`] ones,
    /// which are performed and only their answer is garbage.
    pub fn fail_next_sends(&self, n: usize, fault: TelegramFault) {
        let mut inner = lock(&self.shared.inner);
        inner.faults.extend(std::iter::repeat_n(fault, n));
    }

    // --------------------------------------------------------------- pushing

    /// Pushes a private-chat text message from user `user_id` (language
    /// `en`). A leading `/word` gets a `bot_command` entity. Returns the new
    /// update id.
    pub fn push_text(&self, chat_id: i64, user_id: u64, text: &str) -> i64 {
        self.push_text_lang(chat_id, user_id, text, "en")
    }

    /// Like [`push_text`](Self::push_text) with the sender's
    /// `language_code`.
    pub fn push_text_lang(
        &self,
        chat_id: i64,
        user_id: u64,
        text: &str,
        language_code: &str,
    ) -> i64 {
        let mut extra = Map::new();
        extra.insert("text".into(), Value::String(text.to_owned()));
        if text.starts_with('/') {
            let first_word = text.split_whitespace().next().unwrap_or(text);
            let length = first_word.encode_utf16().count();
            extra.insert(
                "entities".into(),
                json!([{"type": "bot_command", "offset": 0, "length": length}]),
            );
        }
        self.push_user_message(chat_id, user_id, language_code, extra)
    }

    /// Pushes a private-chat sticker message. Returns the new update id.
    pub fn push_sticker(&self, chat_id: i64, user_id: u64) -> i64 {
        let mut extra = Map::new();
        extra.insert(
            "sticker".into(),
            json!({
                "file_id": "CAACAgIAAxkBAAEBfakeStickerFileId",
                "file_unique_id": "AgADfakeSticker",
                "file_size": 12345,
                "type": "regular",
                "width": 512,
                "height": 512,
                "is_animated": false,
                "is_video": false,
                "emoji": "\u{1F44D}",
                "set_name": "FakeStickers",
            }),
        );
        self.push_user_message(chat_id, user_id, "en", extra)
    }

    /// Pushes a private-chat photo message (one `PhotoSize`). Returns the new
    /// update id.
    pub fn push_photo(&self, chat_id: i64, user_id: u64) -> i64 {
        let mut extra = Map::new();
        extra.insert(
            "photo".into(),
            json!([{
                "file_id": "AgACAgIAAxkBAAEBfakePhotoFileId",
                "file_unique_id": "AQADfakePhoto",
                "file_size": 23456,
                "width": 320,
                "height": 240,
            }]),
        );
        self.push_user_message(chat_id, user_id, "en", extra)
    }

    /// Queues a text from `user_id` (first name `name`) in the forum
    /// supergroup `chat_id` (topics enabled): in topic `thread_id`
    /// (`message_thread_id`, `is_topic_message`), or in the General topic
    /// for `None` (which carries no thread id). Returns the message's id.
    pub fn push_topic_text(
        &self,
        chat_id: i64,
        thread_id: Option<i64>,
        user_id: u64,
        name: &str,
        text: &str,
    ) -> i64 {
        let mut inner = lock(&self.shared.inner);
        let message_id = inner.next_message_id(chat_id);
        let mut message = json!({
            "message_id": message_id,
            "date": unix_now(),
            "chat": forum_chat(chat_id),
            "from": {"id": user_id, "is_bot": false, "first_name": name, "language_code": "en"},
            "text": text,
        });
        if let (Some(thread_id), Some(obj)) = (thread_id, message.as_object_mut()) {
            obj.insert("message_thread_id".into(), json!(thread_id));
            obj.insert("is_topic_message".into(), json!(true));
        }
        self.enqueue(&mut inner, message);
        message_id
    }

    /// Messages sent to forum topic `thread_id` of `chat_id` (`None`: those
    /// sent without a thread), in arrival order.
    pub fn sent_to_topic(&self, chat_id: i64, thread_id: Option<i64>) -> Vec<SentMessage> {
        self.sent_to(chat_id)
            .into_iter()
            .filter(|sent| sent.thread_id == thread_id)
            .collect()
    }

    /// Wraps `message` (a Telegram `Message` object, used verbatim) into an
    /// update with the next update id. Returns that id.
    pub fn push_raw_message(&self, message: Value) -> i64 {
        let mut inner = lock(&self.shared.inner);
        self.enqueue(&mut inner, message)
    }

    /// Queues an update written as raw JSON text: `fields` is what follows
    /// `"update_id": <next id>,` inside the object, used verbatim, so it may
    /// hold what `serde_json::Value` cannot (a lone UTF-16 surrogate such as
    /// `\ud800`) or an update kind no client knows. Returns the update id.
    pub fn push_raw_update(&self, fields: &str) -> i64 {
        let mut inner = lock(&self.shared.inner);
        let update_id = inner.next_update_id;
        inner.next_update_id += 1;
        let update = format!("{{\"update_id\":{update_id},{fields}}}");
        inner.queue.push_back((update_id, update));
        self.shared.updates.notify_waiters();
        update_id
    }

    fn push_user_message(
        &self,
        chat_id: i64,
        user_id: u64,
        language_code: &str,
        extra: Map<String, Value>,
    ) -> i64 {
        let mut inner = lock(&self.shared.inner);
        let message_id = inner.next_message_id(chat_id);
        let mut message = Map::new();
        message.insert("message_id".into(), json!(message_id));
        message.insert("date".into(), json!(unix_now()));
        message.insert("chat".into(), private_chat(chat_id));
        message.insert(
            "from".into(),
            json!({
                "id": user_id,
                "is_bot": false,
                "first_name": "User",
                "language_code": language_code,
            }),
        );
        message.extend(extra);
        self.enqueue(&mut inner, Value::Object(message))
    }

    fn enqueue(&self, inner: &mut Inner, message: Value) -> i64 {
        self.enqueue_update(inner, "message", message)
    }

    /// Queues an update of `kind` (`message`, `callback_query`, …).
    fn enqueue_update(&self, inner: &mut Inner, kind: &str, content: Value) -> i64 {
        let update_id = inner.next_update_id;
        inner.next_update_id += 1;
        let update = json!({"update_id": update_id, kind: content}).to_string();
        inner.issued.insert(update_id, update.clone());
        inner.queue.push_back((update_id, update));
        self.shared.updates.notify_waiters();
        update_id
    }

    /// Numbers the next updates from `next_id`, as Telegram does after a week
    /// without updates (it then picks the next id at random, possibly below
    /// every earlier one). An `offset` above every id issued since and above
    /// every queued one is treated as no offset, so the new updates are
    /// still returned.
    pub fn restart_update_ids(&self, next_id: i64) {
        lock(&self.shared.inner).next_update_id = next_id;
    }

    /// Queues update `update_id` (issued before) once more, as Telegram does
    /// when it did not see it confirmed. Returns whether it was known.
    pub fn redeliver(&self, update_id: i64) -> bool {
        let mut inner = lock(&self.shared.inner);
        let Some(update) = inner.issued.get(&update_id).cloned() else {
            return false;
        };
        inner.queue.push_back((update_id, update));
        self.shared.updates.notify_waiters();
        true
    }

    // ----------------------------------------------------------- observation

    /// When update `update_id` was first returned by `getUpdates`.
    pub fn delivered_at(&self, update_id: i64) -> Option<Instant> {
        lock(&self.shared.inner)
            .delivered_at
            .get(&update_id)
            .copied()
    }

    /// Number of `getUpdates` calls so far.
    pub fn get_updates_calls(&self) -> usize {
        lock(&self.shared.inner).get_updates_calls
    }

    /// Highest `offset` passed to `getUpdates` so far (0 if none).
    pub fn confirmed_offset(&self) -> i64 {
        lock(&self.shared.inner).confirmed_offset
    }

    /// Waits until `getUpdates` has been called at least `n` times in total;
    /// returns whether that happened within `timeout`.
    pub async fn wait_for_get_updates(&self, n: usize, timeout: Duration) -> bool {
        wait_until(&self.shared.polls, timeout, || {
            self.get_updates_calls() >= n
        })
        .await
    }

    /// Every message sent with `sendMessage`, in arrival order.
    pub fn sent(&self) -> Vec<SentMessage> {
        lock(&self.shared.inner).sent.clone()
    }

    /// Messages sent to `chat_id`, in arrival order.
    pub fn sent_to(&self, chat_id: i64) -> Vec<SentMessage> {
        let inner = lock(&self.shared.inner);
        inner
            .sent_by_chat
            .get(&chat_id)
            .map(|ix| ix.iter().map(|&i| inner.sent[i].clone()).collect())
            .unwrap_or_default()
    }

    /// What the chat shows now: each message sent to `chat_id`, in order, as
    /// `(message_id, text)` with its latest edit applied.
    pub fn transcript(&self, chat_id: i64) -> Vec<(i64, String)> {
        let inner = lock(&self.shared.inner);
        let Some(indexes) = inner.sent_by_chat.get(&chat_id) else {
            return Vec::new();
        };
        indexes
            .iter()
            .map(|&i| {
                let sent = &inner.sent[i];
                let text = inner
                    .current_text
                    .get(&(chat_id, sent.message_id))
                    .cloned()
                    .unwrap_or_else(|| sent.text.clone());
                (sent.message_id, text)
            })
            .collect()
    }

    /// Number of messages sent with `sendMessage`.
    pub fn sent_count(&self) -> usize {
        lock(&self.shared.inner).sent.len()
    }

    fn sent_count_to(&self, chat_id: i64) -> usize {
        lock(&self.shared.inner)
            .sent_by_chat
            .get(&chat_id)
            .map_or(0, Vec::len)
    }

    /// Waits until at least `n` messages were sent to `chat_id` (or `timeout`
    /// passes) and returns the messages sent to that chat.
    pub async fn wait_for_sent_to(
        &self,
        chat_id: i64,
        n: usize,
        timeout: Duration,
    ) -> Vec<SentMessage> {
        wait_until(&self.shared.sent, timeout, || {
            self.sent_count_to(chat_id) >= n
        })
        .await;
        self.sent_to(chat_id)
    }

    /// Waits until at least `n` messages were sent in total (or `timeout`
    /// passes) and returns the total.
    pub async fn wait_for_sent_count(&self, n: usize, timeout: Duration) -> usize {
        wait_until(&self.shared.sent, timeout, || self.sent_count() >= n).await;
        self.sent_count()
    }

    /// A channel receiving every message successfully sent from now on.
    pub fn subscribe_sent(&self) -> UnboundedReceiver<SentMessage> {
        let (tx, rx) = unbounded_channel();
        lock(&self.shared.inner).subscribers.push(tx);
        rx
    }

    /// Every `sendChatAction` call, in arrival order.
    pub fn chat_actions(&self) -> Vec<ChatActionRecord> {
        lock(&self.shared.inner).actions.clone()
    }

    /// `sendChatAction` calls for `chat_id`, in arrival order.
    pub fn chat_actions_to(&self, chat_id: i64) -> Vec<ChatActionRecord> {
        lock(&self.shared.inner)
            .actions
            .iter()
            .filter(|a| a.chat_id == chat_id)
            .cloned()
            .collect()
    }

    /// Every successful `editMessageText` call, in arrival order.
    pub fn edits(&self) -> Vec<EditRecord> {
        lock(&self.shared.inner).edits.clone()
    }

    /// Every successful `sendMessageDraft` call, in arrival order.
    pub fn drafts(&self) -> Vec<DraftRecord> {
        lock(&self.shared.inner).drafts.clone()
    }

    /// `sendMessageDraft` calls for `chat_id`, in arrival order.
    pub fn drafts_to(&self, chat_id: i64) -> Vec<DraftRecord> {
        lock(&self.shared.inner)
            .drafts
            .iter()
            .filter(|d| d.chat_id == chat_id)
            .cloned()
            .collect()
    }

    /// The parameters of every `setMyCommands` call (a JSON object with
    /// `commands` and optionally `language_code`, `scope`), in order.
    pub fn my_commands(&self) -> Vec<Value> {
        lock(&self.shared.inner).my_commands.clone()
    }

    /// Every Bot API call received so far, in order (see [`CallRecord`]).
    pub fn calls(&self) -> Vec<CallRecord> {
        lock(&self.shared.inner).calls.clone()
    }

    /// Number of calls of `method` (case-insensitive), failed ones included.
    pub fn method_calls(&self, method: &str) -> usize {
        lock(&self.shared.inner)
            .method_calls
            .get(&method.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }
}

// ------------------------------------------------------------------ server

/// A supergroup with topics enabled.
pub fn forum_chat(chat_id: i64) -> Value {
    json!({"id": chat_id, "type": "supergroup", "title": "Forum", "is_forum": true})
}

fn private_chat(chat_id: i64) -> Value {
    json!({"id": chat_id, "type": "private", "first_name": "User"})
}

fn bot_user() -> Value {
    json!({
        "id": BOT_USER_ID,
        "is_bot": true,
        "first_name": BOT_FIRST_NAME,
        "username": BOT_USERNAME,
    })
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn ok(result: &Value) -> Response {
    ok_raw(&result.to_string())
}

fn ok_raw(result: &str) -> Response {
    let mut body = String::with_capacity(result.len() + 24);
    body.push_str(r#"{"ok":true,"result":"#);
    body.push_str(result);
    body.push('}');
    json_response(StatusCode::OK, body)
}

fn error(code: u16, description: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"ok": false, "error_code": code, "description": description});
    json_response(status, body.to_string())
}

fn fault_response(fault: &TelegramFault) -> Response {
    match fault {
        TelegramFault::RetryAfter(secs) => {
            let body = json!({
                "ok": false,
                "error_code": 429,
                "description": format!("Too Many Requests: retry after {secs}"),
                "parameters": {"retry_after": secs},
            });
            json_response(StatusCode::TOO_MANY_REQUESTS, body.to_string())
        }
        TelegramFault::Status(code, description) => error(*code, description),
        TelegramFault::Garbled => garbled(),
    }
}

/// A 200 whose body no Bot API client can parse.
fn garbled() -> Response {
    json_response(StatusCode::OK, "<html><body>502 Bad Gat".to_owned())
}

/// A Telegram API error (`error_code`, `description`), cheap to return.
struct ApiFailure(u16, &'static str);

impl ApiFailure {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

async fn not_found() -> Response {
    error(404, "Not Found")
}

/// Turns a string parameter from a query string or form into JSON: embedded
/// objects/arrays are parsed, everything else stays a string.
fn form_value(s: String) -> Value {
    if s.starts_with('{') || s.starts_with('[') {
        serde_json::from_str(&s).unwrap_or(Value::String(s))
    } else {
        Value::String(s)
    }
}

/// Collects the call's parameters from the query string and the body.
fn parse_params(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, ApiFailure> {
    let mut params = Map::new();
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q)
            .map_err(|_| ApiFailure(400, "Bad Request: invalid query string"))?;
        params.extend(pairs.into_iter().map(|(k, v)| (k, form_value(v))));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(params);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.contains("application/x-www-form-urlencoded") {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|_| ApiFailure(400, "Bad Request: invalid form body"))?;
        params.extend(pairs.into_iter().map(|(k, v)| (k, form_value(v))));
    } else if content_type.starts_with("multipart/") {
        // Text fields only (setWebhook without a certificate): each part is
        // `Content-Disposition: form-data; name="x"`, a blank line, the value.
        let boundary = content_type
            .split("boundary=")
            .nth(1)
            .map(|b| b.trim_matches('"'))
            .ok_or(ApiFailure(400, "Bad Request: multipart without boundary"))?;
        let text = String::from_utf8_lossy(body);
        for part in text.split(&format!("--{boundary}")) {
            let Some((head, value)) = part.split_once("\r\n\r\n") else {
                continue;
            };
            let Some(name) = head
                .split("name=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
            else {
                continue;
            };
            let value = value.strip_suffix("\r\n").unwrap_or(value).to_owned();
            params.insert(name.to_owned(), form_value(value));
        }
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => params.extend(map),
            _ => return Err(ApiFailure(400, "Bad Request: can't parse JSON body")),
        }
    }
    Ok(params)
}

fn param_i64(params: &Map<String, Value>, key: &str) -> Option<i64> {
    match params.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn param_str<'a>(params: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    params.get(key)?.as_str()
}

/// Telegram's text checks shared by `sendMessage` and `editMessageText`.
fn check_text(text: &str) -> Result<(), ApiFailure> {
    if text.trim().is_empty() {
        return Err(ApiFailure(400, "Bad Request: message text is empty"));
    }
    if text.encode_utf16().count() > MAX_TEXT_UTF16 {
        return Err(ApiFailure(400, "Bad Request: message is too long"));
    }
    Ok(())
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((bot_token, method)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = bot_token.strip_prefix("bot") else {
        return error(404, "Not Found");
    };
    let method = method.to_ascii_lowercase();
    let params = parse_params(query.as_deref(), &headers, &body);
    {
        let mut inner = lock(&shared.inner);
        inner.calls.push(CallRecord {
            token: token.to_owned(),
            method: method.clone(),
            chat_id: params
                .as_ref()
                .ok()
                .and_then(|p| p.get("chat_id"))
                .and_then(|id| id.as_i64().or_else(|| id.as_str()?.parse().ok())),
            at: Instant::now(),
        });
        inner.media.saw_token(token);
        match inner.method_calls.get_mut(&method) {
            Some(n) => *n += 1,
            None => {
                inner.method_calls.insert(method.clone(), 1);
            }
        }
    }
    let stalled = lock(&shared.inner).stalled.get(&method).copied();
    if let Some(delay) = stalled {
        tokio::time::sleep(delay).await;
    }
    if let Some(fault) = lock(&shared.inner).refused.get(&method).cloned() {
        return fault_response(&fault);
    }
    let params = match params {
        Ok(p) => p,
        Err(failure) => return failure.into_response(),
    };
    if let Some(response) = business::route(&shared, &method, &params) {
        return response;
    }
    match method.as_str() {
        "getme" => ok(&json!({
            "id": BOT_USER_ID,
            "is_bot": true,
            "first_name": BOT_FIRST_NAME,
            "username": BOT_USERNAME,
            "can_join_groups": true,
            "can_read_all_group_messages": false,
            "supports_inline_queries": false,
            "can_connect_to_business": lock(&shared.inner).business.business_mode(),
            "has_main_web_app": false,
        })),
        "deletemycommands" => ok(&Value::Bool(true)),
        "deletewebhook" => {
            lock(&shared.inner).webhook = None;
            ok(&Value::Bool(true))
        }
        "setwebhook" => {
            let Some(url) = param_str(&params, "url").map(str::to_owned) else {
                return error(400, "Bad Request: bad webhook: URL is empty");
            };
            let secret = param_str(&params, "secret_token").map(str::to_owned);
            lock(&shared.inner).webhook = Some(Webhook { url, secret });
            ok(&Value::Bool(true))
        }
        "setmycommands" => {
            if !params.get("commands").is_some_and(Value::is_array) {
                return error(400, "Bad Request: parameter \"commands\" is required");
            }
            lock(&shared.inner).my_commands.push(Value::Object(params));
            ok(&Value::Bool(true))
        }
        "getupdates" => get_updates(&shared, &params).await,
        "sendmessage" => send_message(&shared, params),
        "editmessagetext" => edit_message_text(&shared, &params),
        "sendmessagedraft" => send_message_draft(&shared, &params),
        "answercallbackquery" => buttons::answer_callback_query(&shared, &params),
        "editmessagereplymarkup" => buttons::edit_message_reply_markup(&shared, &params),
        "sendchataction" => {
            let Some(chat_id) = param_i64(&params, "chat_id") else {
                return error(400, "Bad Request: chat not found");
            };
            let action = param_str(&params, "action").unwrap_or_default().to_owned();
            if action.is_empty() {
                return error(400, "Bad Request: wrong parameter action in request");
            }
            let thread_id = param_i64(&params, "message_thread_id");
            lock(&shared.inner).actions.push(ChatActionRecord {
                chat_id,
                action,
                thread_id,
                at: Instant::now(),
            });
            ok(&Value::Bool(true))
        }
        "getchatmember" => get_chat_member(&shared, &params),
        "getfile" => media::get_file(&shared, &params),
        _ => error(404, "Not Found: method not found"),
    }
}

/// A `ChatMember` with the status set by
/// [`FakeTelegram::set_member_status`] (`member` by default).
fn get_chat_member(shared: &Shared, params: &Map<String, Value>) -> Response {
    let Some(chat_id) = param_i64(params, "chat_id") else {
        return error(400, "Bad Request: chat not found");
    };
    let Some(user_id) = param_i64(params, "user_id").and_then(|u| u64::try_from(u).ok()) else {
        return error(400, "Bad Request: invalid user_id specified");
    };
    let status = lock(&shared.inner)
        .member_status
        .get(&(chat_id, user_id))
        .cloned()
        .unwrap_or_else(|| "member".to_owned());
    let user = json!({"id": user_id, "is_bot": false, "first_name": "User"});
    let member = match status.as_str() {
        "creator" => json!({"status": "creator", "user": user, "is_anonymous": false}),
        "administrator" => json!({
            "status": "administrator",
            "user": user,
            "can_be_edited": false,
            "is_anonymous": false,
            "can_manage_chat": true,
            "can_delete_messages": true,
            "can_manage_video_chats": true,
            "can_restrict_members": true,
            "can_promote_members": false,
            "can_change_info": true,
            "can_invite_users": true,
        }),
        other => json!({"status": other, "user": user}),
    };
    ok(&member)
}

async fn get_updates(shared: &Shared, params: &Map<String, Value>) -> Response {
    let mut offset = param_i64(params, "offset").unwrap_or(0);
    let limit = param_i64(params, "limit").unwrap_or(100).clamp(1, 100) as usize;
    let timeout_secs = param_i64(params, "timeout")
        .unwrap_or(0)
        .clamp(0, MAX_POLL_TIMEOUT_SECS as i64) as u64;
    let deadline;
    {
        let mut inner = lock(&shared.inner);
        let timeout_secs = if inner.instant_polls { 0 } else { timeout_secs };
        deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
        inner.get_updates_calls += 1;
        inner.business.saw_allowed_updates(params);
        inner.confirmed_offset = inner.confirmed_offset.max(offset);
        let newest_queued = inner.queue.iter().map(|(id, _)| *id).max().unwrap_or(0);
        if offset > inner.next_update_id && offset > newest_queued + 1 {
            // Beyond every id issued since the ids started over (see
            // `restart_update_ids`): the old offset means nothing.
            offset = 0;
        }
        if offset > 0 {
            while inner.queue.front().is_some_and(|(id, _)| *id < offset) {
                inner.queue.pop_front();
            }
        }
    }
    shared.polls.notify_waiters();

    loop {
        let notified = shared.updates.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(resp) = take_updates(shared, offset, limit) {
            return resp;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return take_updates(shared, offset, limit).unwrap_or_else(|| ok_raw("[]"));
        }
    }
}

/// Serialises up to `limit` queued updates with id >= `offset`, or `None` if
/// there are none.
fn take_updates(shared: &Shared, offset: i64, limit: usize) -> Option<Response> {
    let mut guard = lock(&shared.inner);
    let inner = &mut *guard;
    let now = Instant::now();
    let mut result = String::from("[");
    let mut count = 0;
    for (id, update) in inner
        .queue
        .iter()
        .filter(|(id, _)| *id >= offset && !inner.business.withheld(*id))
        .take(limit)
    {
        if count > 0 {
            result.push(',');
        }
        result.push_str(update);
        inner.delivered_at.entry(*id).or_insert(now);
        count += 1;
    }
    if count == 0 {
        return None;
    }
    result.push(']');
    drop(guard);
    Some(ok_raw(&result))
}

fn send_message(shared: &Shared, params: Map<String, Value>) -> Response {
    let now = Instant::now();
    let mut inner = lock(&shared.inner);
    let garble = match inner.faults.pop_front() {
        Some(TelegramFault::Garbled) => true,
        Some(fault) => return fault_response(&fault),
        None => false,
    };
    let Some(chat_id) = param_i64(&params, "chat_id") else {
        return error(400, "Bad Request: chat not found");
    };
    let text = param_str(&params, "text").unwrap_or_default().to_owned();
    if let Err(failure) = check_text(&text) {
        return failure.into_response();
    }
    if let Some((min_interval, retry_after)) = inner.flood {
        if inner
            .retry_after_until
            .get(&chat_id)
            .is_some_and(|until| now < *until)
        {
            inner.retry_after_violations += 1;
        }
        let too_soon = inner
            .last_sent_at
            .get(&chat_id)
            .is_some_and(|last| now.duration_since(*last) < min_interval);
        if too_soon {
            inner.flood_rejections += 1;
            let until = now + Duration::from_secs(u64::from(retry_after));
            inner.retry_after_until.insert(chat_id, until);
            return fault_response(&TelegramFault::RetryAfter(retry_after));
        }
    }
    inner.last_sent_at.insert(chat_id, now);
    let message_id = inner.next_message_id(chat_id);
    let mut message = json!({
        "message_id": message_id,
        "date": unix_now(),
        "chat": private_chat(chat_id),
        "from": bot_user(),
        "text": text,
    });
    if let (Some(entities), Some(obj)) = (params.get("entities"), message.as_object_mut()) {
        obj.insert("entities".into(), entities.clone());
    }
    let thread_id = param_i64(&params, "message_thread_id");
    if let (Some(thread_id), Some(obj)) = (thread_id, message.as_object_mut()) {
        obj.insert("message_thread_id".into(), json!(thread_id));
        obj.insert("is_topic_message".into(), json!(true));
    }
    let reply = params.get("reply_parameters");
    let reply_markup = buttons::markup_param(&params);
    inner
        .buttons
        .set(chat_id, message_id, reply_markup.as_ref());
    let record = SentMessage {
        chat_id,
        message_id,
        text,
        reply_to: reply.and_then(|reply| reply.get("message_id")?.as_i64()),
        reply_without_original: reply
            .and_then(|reply| reply.get("allow_sending_without_reply")?.as_bool())
            .unwrap_or(false),
        thread_id,
        body: Value::Object(params),
        reply_markup,
        at: now,
    };
    if !inner.subscribers.is_empty() {
        inner
            .subscribers
            .retain(|tx| tx.send(record.clone()).is_ok());
    }
    let index = inner.sent.len();
    inner.sent.push(record);
    inner.sent_by_chat.entry(chat_id).or_default().push(index);
    drop(inner);
    shared.sent.notify_waiters();
    if garble {
        return garbled();
    }
    ok(&message)
}

/// `sendMessageDraft`: private chats only (Telegram answers
/// `TEXTDRAFT_PEER_INVALID` elsewhere), a non-zero `draft_id`, and text
/// checked as a message's.
fn send_message_draft(shared: &Shared, params: &Map<String, Value>) -> Response {
    let Some(chat_id) = param_i64(params, "chat_id") else {
        return error(400, "Bad Request: chat not found");
    };
    if chat_id < 0 {
        return error(400, "Bad Request: TEXTDRAFT_PEER_INVALID");
    }
    let draft_id = param_i64(params, "draft_id").unwrap_or(0);
    if draft_id == 0 {
        return error(400, "Bad Request: invalid draft_id specified");
    }
    let text = param_str(params, "text").unwrap_or_default().to_owned();
    if let Err(failure) = check_text(&text) {
        return failure.into_response();
    }
    lock(&shared.inner).drafts.push(DraftRecord {
        chat_id,
        thread_id: param_i64(params, "message_thread_id"),
        draft_id,
        text,
        entities: params.get("entities").cloned(),
        at: Instant::now(),
    });
    ok(&Value::Bool(true))
}

fn edit_message_text(shared: &Shared, params: &Map<String, Value>) -> Response {
    let now = Instant::now();
    let mut inner = lock(&shared.inner);
    let garble = match inner.faults.pop_front() {
        Some(TelegramFault::Garbled) => true,
        Some(fault) => return fault_response(&fault),
        None => false,
    };
    if params.contains_key("inline_message_id") {
        return error(
            400,
            "Bad Request: inline messages are not supported by the fake",
        );
    }
    let Some(chat_id) = param_i64(params, "chat_id") else {
        return error(400, "Bad Request: chat not found");
    };
    let Some(message_id) = param_i64(params, "message_id") else {
        return error(400, "Bad Request: message identifier is not specified");
    };
    let text = param_str(params, "text").unwrap_or_default().to_owned();
    if let Err(failure) = check_text(&text) {
        return failure.into_response();
    }
    let original = inner.sent_by_chat.get(&chat_id).and_then(|indexes| {
        indexes
            .iter()
            .map(|&i| &inner.sent[i])
            .find(|sent| sent.message_id == message_id)
            .map(|sent| sent.text.clone())
    });
    let Some(original) = original else {
        return error(400, "Bad Request: message to edit not found");
    };
    let current = inner
        .current_text
        .get(&(chat_id, message_id))
        .unwrap_or(&original);
    let reply_markup = buttons::markup_param(params);
    if *current == text && inner.buttons.current(chat_id, message_id) == reply_markup.as_ref() {
        return error(
            400,
            "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
        );
    }
    inner
        .current_text
        .insert((chat_id, message_id), text.clone());
    inner
        .buttons
        .set(chat_id, message_id, reply_markup.as_ref());
    inner.edits.push(EditRecord {
        chat_id,
        message_id,
        text: text.clone(),
        reply_markup,
        at: now,
    });
    drop(inner);
    if garble {
        return garbled();
    }
    let date = unix_now();
    ok(&json!({
        "message_id": message_id,
        "date": date,
        "edit_date": date,
        "chat": private_chat(chat_id),
        "from": bot_user(),
        "text": text,
    }))
}
