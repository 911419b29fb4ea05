//! Telegram Business on the fake Bot API.
//!
//! A Telegram user with Telegram Business connects a bot to their own
//! account (Settings → Telegram Business → Chatbots); the bot then receives
//! the messages of the account's private chats with other people ("fans")
//! and may answer in them *as the account owner*. Tests drive that side with
//! [`FakeTelegram::connect_business`], [`FakeTelegram::push_business_message`]
//! and friends, and read what a fan received as the creator with
//! [`FakeTelegram::business_sent`]. The owner's private chat with the bot (the
//! "control room") is an ordinary chat: observe it with
//! [`FakeTelegram::sent_to`].
//!
//! # Shapes (Bot API 9.x, as teloxide 0.17 parses them)
//!
//! * `business_connection`: `{id, user, user_chat_id, date, rights,
//!   is_enabled}`. Bot API 9.0 replaced the old `can_reply` boolean with
//!   `rights` (`BusinessBotRights`); the fake sends `rights` only.
//! * `business_message` / `edited_business_message`: an ordinary `Message` in
//!   the fan chat with `business_connection_id`; a message the creator wrote
//!   to the fan has `from` = the creator. Messages the bot sends as the
//!   creator answer with `from` = the creator and `sender_business_bot` = the
//!   bot.
//! * `deleted_business_messages`: `{business_connection_id, chat,
//!   message_ids}`.
//!
//! Message ids of the business account are numbered per account (as
//! Telegram numbers private-chat messages per user account), shared by fan,
//! creator and bot messages; that is why `deleteBusinessMessages` needs no
//! `chat_id`.
//!
//! # Refusals
//!
//! `sendMessage`, `sendChatAction` and `editMessageText` with a
//! `business_connection_id`, and `deleteBusinessMessages`, are refused with
//! Telegram's answers (see the constants): the connection is unknown
//! ([`BUSINESS_CONNECTION_NOT_FOUND`]), the chat is not a private chat
//! ([`BUSINESS_NOT_PRIVATE_CHAT`]) or is the owner's own
//! ([`BUSINESS_SENT_TO_SELF`]), the connection is disabled
//! ([`BUSINESS_CONNECTION_INVALID`]), it lacks the reply right
//! ([`BUSINESS_BOT_ACCESS_FORBIDDEN`]), or the fan never wrote to the owner
//! ([`BUSINESS_PEER_USAGE_MISSING`]). Refused calls are recorded
//! ([`FakeTelegram::business_refusals`]). Calls *without* a connection id are
//! served exactly as before, by the ordinary routes.
//!
//! # `allowed_updates`
//!
//! Like Telegram, getUpdates withholds business updates the bot did not ask
//! for: once a getUpdates call passed a non-empty `allowed_updates`, queued
//! business updates whose kind it does not list are skipped (an empty list
//! or none at all means Telegram's default, which includes them).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{
    FakeTelegram, Inner, Shared, TelegramFault, bot_user, check_text, error, fault_response,
    garbled, ok, param_i64, param_str,
};
use crate::{lock, unix_now, wait_until};

/// A business call naming a connection the bot never had. Source: TDLib's
/// `BusinessConnectionManager::check_business_connection` ("Business
/// connection not found", which the Bot API server serves as `Bad Request:
/// business connection not found`, as seen by bot libraries' tests against
/// the live API).
pub const BUSINESS_CONNECTION_NOT_FOUND: &str = "Bad Request: business connection not found";
/// A business send to a chat that is not a private chat. Source: TDLib's
/// `check_business_connection` ("Chat must be a private chat").
pub const BUSINESS_NOT_PRIVATE_CHAT: &str = "Bad Request: chat must be a private chat";
/// A business send to the owner's own chat. Source: TDLib's
/// `check_business_connection` ("Messages must not be sent to self").
pub const BUSINESS_SENT_TO_SELF: &str = "Bad Request: messages must not be sent to self";
/// A business call over a connection the owner disabled or removed. TDLib
/// leaves that check to Telegram's servers, whose MTProto error for an
/// unusable connection is `BUSINESS_CONNECTION_INVALID` (core.telegram.org
/// error tables); the Bot API passes such errors on as `Bad Request: <NAME>`.
/// Not verified against the live API.
pub const BUSINESS_CONNECTION_INVALID: &str = "Bad Request: BUSINESS_CONNECTION_INVALID";
/// A business call the connection's rights do not allow (no `can_reply` for
/// sends, edits and chat actions; no delete right for deletions). MTProto's
/// `BOT_ACCESS_FORBIDDEN` ("the query attempted an operation that is not
/// allowed over a business connection"), which bots see as a Bad Request
/// (e.g. aiogram's `TelegramBadRequest` for missing gift rights). Not
/// verified for `can_reply` against the live API.
pub const BUSINESS_BOT_ACCESS_FORBIDDEN: &str = "Bad Request: BOT_ACCESS_FORBIDDEN";
/// A business send to a user who has not written to the owner recently
/// (`can_reply` covers chats "that had incoming messages in the last 24
/// hours"). MTProto's `BUSINESS_PEER_USAGE_MISSING` (messages.sendMessage
/// error table). The fake does not age chats: one fan message opens a chat
/// for good.
pub const BUSINESS_PEER_USAGE_MISSING: &str = "Bad Request: BUSINESS_PEER_USAGE_MISSING";

/// First name of the business account owner in the fake's JSON.
const OWNER_FIRST_NAME: &str = "Creator";
/// First name of fans in the fake's JSON.
const FAN_FIRST_NAME: &str = "Fan";

/// A business connection: a Telegram Business account connected to the bot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusinessConn {
    /// The connection id (`business_connection_id` everywhere).
    pub id: String,
    /// The business account (the creator): `user.id` of the connection.
    pub owner_user_id: u64,
    /// The owner's private chat with the bot (`user_chat_id`): the control
    /// room. Telegram makes it equal to the owner's user id.
    pub owner_chat_id: i64,
    /// The `can_reply` right: send, edit and delete the bot's messages in
    /// the fan chats (the fake ties `can_delete_sent_messages` to it).
    pub can_reply: bool,
    /// `is_enabled`: false once the owner disabled or removed the bot.
    pub enabled: bool,
}

impl BusinessConn {
    /// An enabled connection `id` of user `owner_user_id`, with the reply
    /// right and the control room at the owner's user id, as Telegram makes
    /// it.
    pub fn new(id: &str, owner_user_id: u64) -> BusinessConn {
        BusinessConn {
            id: id.to_owned(),
            owner_user_id,
            owner_chat_id: i64::try_from(owner_user_id).unwrap_or(i64::MAX),
            can_reply: true,
            enabled: true,
        }
    }

    /// The same connection without the reply right.
    pub fn read_only(mut self) -> BusinessConn {
        self.can_reply = false;
        self
    }
}

/// Who wrote a business message in a fan chat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusinessFrom {
    /// The fan, with this user id.
    Fan(u64),
    /// The business account owner (the creator), writing to the fan
    /// themselves.
    Owner,
}

/// A message the bot sent to a fan chat as the creator (`sendMessage` with
/// `business_connection_id`).
#[derive(Clone, Debug)]
pub struct BusinessSent {
    /// The connection it was sent through.
    pub connection_id: String,
    /// The fan chat.
    pub chat_id: i64,
    /// Message id in the business account.
    pub message_id: i64,
    /// The text as sent.
    pub text: String,
    /// `reply_parameters.message_id`: the message this one replies to.
    pub reply_to: Option<i64>,
    /// All request parameters as a JSON object.
    pub body: Value,
    /// When the fake received the call.
    pub at: Instant,
}

/// A successful `editMessageText` of a business message by the bot.
#[derive(Clone, Debug)]
pub struct BusinessEdit {
    /// The connection it was edited through.
    pub connection_id: String,
    /// The fan chat.
    pub chat_id: i64,
    /// The edited message.
    pub message_id: i64,
    /// The new text.
    pub text: String,
    /// When the fake received the call.
    pub at: Instant,
}

/// A `sendChatAction` in a fan chat on behalf of the creator.
#[derive(Clone, Debug)]
pub struct BusinessAction {
    /// The connection it was sent through.
    pub connection_id: String,
    /// The fan chat.
    pub chat_id: i64,
    /// The action, e.g. `"typing"`.
    pub action: String,
    /// When the fake received the call.
    pub at: Instant,
}

/// A business call the fake refused, as Telegram would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusinessRefusal {
    /// The method, lower-case (`sendmessage`, …).
    pub method: String,
    /// The `business_connection_id` given.
    pub connection_id: String,
    /// The `chat_id` given, if any.
    pub chat_id: Option<i64>,
    /// The `description` answered (one of the `BUSINESS_*` constants).
    pub description: String,
}

/// Who wrote a message of a business account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Author {
    Fan,
    Owner,
    Bot,
}

/// A message of a business account, by `(owner, message id)`.
#[derive(Clone, Debug)]
struct StoredMessage {
    chat_id: i64,
    author: Author,
    text: String,
    deleted: bool,
}

/// The fake's business connections, business messages and what the bot did
/// with them.
#[derive(Debug, Default)]
pub(super) struct BusinessState {
    connections: HashMap<String, BusinessConn>,
    /// Connection ids in the order they were first connected.
    order: Vec<String>,
    /// Last message id used per business account (owner user id).
    last_message_id: HashMap<u64, i64>,
    /// Every message of each business account, by `(owner, message id)`.
    messages: HashMap<(u64, i64), StoredMessage>,
    /// `(owner, fan chat)` pairs where the fan wrote at least once.
    fan_wrote: HashSet<(u64, i64)>,
    sent: Vec<BusinessSent>,
    edits: Vec<BusinessEdit>,
    actions: Vec<BusinessAction>,
    refusals: Vec<BusinessRefusal>,
    /// Message ids deleted by `deleteBusinessMessages`, per connection.
    deleted_by_bot: Vec<(String, Vec<i64>)>,
    /// Queued update ids carrying a business update, with its kind.
    update_kinds: HashMap<i64, &'static str>,
    /// The last non-empty `allowed_updates` of a getUpdates call.
    allowed_updates: Option<Vec<String>>,
}

impl BusinessState {
    fn next_message_id(&mut self, owner: u64) -> i64 {
        let id = self.last_message_id.entry(owner).or_insert(0);
        *id += 1;
        *id
    }

    /// Whether getUpdates must skip queued update `update_id` because it is
    /// a business update of a kind the bot did not ask for.
    pub(super) fn withheld(&self, update_id: i64) -> bool {
        match (self.update_kinds.get(&update_id), &self.allowed_updates) {
            (Some(kind), Some(allowed)) => !allowed.iter().any(|a| a == kind),
            _ => false,
        }
    }

    /// Remembers getUpdates's `allowed_updates`, as Telegram does: a
    /// non-empty list replaces the filter, an empty one restores the
    /// default, an absent one keeps the previous filter.
    pub(super) fn saw_allowed_updates(&mut self, params: &Map<String, Value>) {
        let Some(Value::Array(kinds)) = params.get("allowed_updates") else {
            return;
        };
        let kinds: Vec<String> = kinds
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        self.allowed_updates = (!kinds.is_empty()).then_some(kinds);
    }

    /// Whether any connection was ever made (getMe's
    /// `can_connect_to_business`: Business Mode is on in BotFather).
    pub(super) fn business_mode(&self) -> bool {
        !self.connections.is_empty()
    }
}

/// The creator as a `User`.
fn owner_user(owner_user_id: u64) -> Value {
    json!({
        "id": owner_user_id,
        "is_bot": false,
        "first_name": OWNER_FIRST_NAME,
        "is_premium": true,
    })
}

/// A fan chat (private chat of the business account with a fan).
fn fan_chat(chat_id: i64) -> Value {
    json!({"id": chat_id, "type": "private", "first_name": FAN_FIRST_NAME})
}

/// A stored message of business account `owner` as a `Message` object.
fn stored_message_json(
    conn_id: &str,
    owner: u64,
    message_id: i64,
    stored: &StoredMessage,
) -> Value {
    let mut message = json!({
        "message_id": message_id,
        "date": unix_now(),
        "chat": fan_chat(stored.chat_id),
        "text": stored.text,
        "business_connection_id": conn_id,
    });
    let from = match stored.author {
        Author::Fan => json!({
            "id": stored.chat_id,
            "is_bot": false,
            "first_name": FAN_FIRST_NAME,
        }),
        Author::Owner | Author::Bot => owner_user(owner),
    };
    if let Some(obj) = message.as_object_mut() {
        obj.insert("from".into(), from);
        if stored.author == Author::Bot {
            obj.insert("sender_business_bot".into(), bot_user());
        }
    }
    message
}

/// The `BusinessConnection` object for `conn`.
fn connection_json(conn: &BusinessConn) -> Value {
    // Only rights that are granted are sent, as Telegram does.
    let mut rights = Map::new();
    rights.insert("can_read_messages".into(), Value::Bool(true));
    if conn.can_reply {
        rights.insert("can_reply".into(), Value::Bool(true));
        rights.insert("can_delete_sent_messages".into(), Value::Bool(true));
    }
    json!({
        "id": conn.id,
        "user": owner_user(conn.owner_user_id),
        "user_chat_id": conn.owner_chat_id,
        "date": unix_now(),
        "rights": rights,
        "is_enabled": conn.enabled,
    })
}

impl FakeTelegram {
    // ------------------------------------------------------------- business

    /// Connects a business account to the bot: stores `conn` (replacing one
    /// with the same id) and queues the `business_connection` update
    /// Telegram sends. Returns the update id.
    pub fn connect_business(&self, conn: BusinessConn) -> i64 {
        let mut inner = lock(&self.shared.inner);
        let payload = connection_json(&conn);
        let business = &mut inner.business;
        if !business.connections.contains_key(&conn.id) {
            business.order.push(conn.id.clone());
        }
        business.connections.insert(conn.id.clone(), conn);
        self.enqueue_business(&mut inner, "business_connection", payload)
    }

    /// The owner disables (or removes) the bot: the connection stays known
    /// with `is_enabled: false`, and the `business_connection` update is
    /// queued. Returns the update id, or `None` for an unknown connection.
    pub fn disable_business(&self, id: &str) -> Option<i64> {
        self.update_connection(id, |conn| conn.enabled = false)
    }

    /// The owner enables the bot again (a `business_connection` update with
    /// `is_enabled: true`). Returns the update id, or `None` for an unknown
    /// connection.
    pub fn enable_business(&self, id: &str) -> Option<i64> {
        self.update_connection(id, |conn| conn.enabled = true)
    }

    /// The owner grants or withdraws the reply right (a
    /// `business_connection` update with the new `rights`). Returns the
    /// update id, or `None` for an unknown connection.
    pub fn set_can_reply(&self, id: &str, can_reply: bool) -> Option<i64> {
        self.update_connection(id, |conn| conn.can_reply = can_reply)
    }

    fn update_connection(&self, id: &str, change: impl FnOnce(&mut BusinessConn)) -> Option<i64> {
        let mut inner = lock(&self.shared.inner);
        let conn = inner.business.connections.get_mut(id)?;
        change(conn);
        let payload = connection_json(conn);
        Some(self.enqueue_business(&mut inner, "business_connection", payload))
    }

    /// The connection `id` as the fake holds it now.
    pub fn business_connection(&self, id: &str) -> Option<BusinessConn> {
        lock(&self.shared.inner)
            .business
            .connections
            .get(id)
            .cloned()
    }

    /// Every connection ever made, in the order first connected, as held
    /// now.
    pub fn business_connections(&self) -> Vec<BusinessConn> {
        let inner = lock(&self.shared.inner);
        let business = &inner.business;
        business
            .order
            .iter()
            .filter_map(|id| business.connections.get(id).cloned())
            .collect()
    }

    /// Queues a `business_message` update: `from` wrote `text` in fan chat
    /// `fan_chat_id` of connection `conn_id` (a message from
    /// [`BusinessFrom::Owner`] is the creator writing to the fan). Returns
    /// the new message's id; [`last_update_id`](Self::last_update_id) gives
    /// the update's.
    ///
    /// The update is queued whatever the connection's state (Telegram stops
    /// sending them for a disabled one; tests use this for a late update).
    ///
    /// # Panics
    ///
    /// If `conn_id` was never connected (a mistake in the test).
    pub fn push_business_message(
        &self,
        conn_id: &str,
        fan_chat_id: i64,
        from: BusinessFrom,
        text: &str,
    ) -> i64 {
        self.push_business(conn_id, fan_chat_id, from, text, None)
    }

    /// Like [`push_business_message`](Self::push_business_message), the
    /// message replying to message `reply_to` of the same fan chat (the fan
    /// answering the creator's or the bot's message): `reply_to_message`
    /// carries that message as the account holds it now.
    ///
    /// # Panics
    ///
    /// If `conn_id` was never connected.
    pub fn push_business_reply(
        &self,
        conn_id: &str,
        fan_chat_id: i64,
        from: BusinessFrom,
        text: &str,
        reply_to: i64,
    ) -> i64 {
        self.push_business(conn_id, fan_chat_id, from, text, Some(reply_to))
    }

    fn push_business(
        &self,
        conn_id: &str,
        fan_chat_id: i64,
        from: BusinessFrom,
        text: &str,
        reply_to: Option<i64>,
    ) -> i64 {
        let mut inner = lock(&self.shared.inner);
        let owner = known_owner(&inner, conn_id);
        let message_id = inner.business.next_message_id(owner);
        let (author, user) = match from {
            BusinessFrom::Fan(user_id) => (
                Author::Fan,
                json!({
                    "id": user_id,
                    "is_bot": false,
                    "first_name": FAN_FIRST_NAME,
                    "language_code": "en",
                }),
            ),
            BusinessFrom::Owner => (Author::Owner, owner_user(owner)),
        };
        if author == Author::Fan {
            inner.business.fan_wrote.insert((owner, fan_chat_id));
        }
        inner.business.messages.insert(
            (owner, message_id),
            StoredMessage {
                chat_id: fan_chat_id,
                author,
                text: text.to_owned(),
                deleted: false,
            },
        );
        let mut message = json!({
            "message_id": message_id,
            "date": unix_now(),
            "chat": fan_chat(fan_chat_id),
            "from": user,
            "text": text,
            "business_connection_id": conn_id,
        });
        let original = reply_to.and_then(|id| {
            let stored = inner.business.messages.get(&(owner, id))?;
            (stored.chat_id == fan_chat_id && !stored.deleted)
                .then(|| stored_message_json(conn_id, owner, id, stored))
        });
        if let (Some(original), Some(obj)) = (original, message.as_object_mut()) {
            obj.insert("reply_to_message".into(), original);
        }
        self.enqueue_business(&mut inner, "business_message", message);
        message_id
    }

    /// Queues an `edited_business_message` update: message `message_id` of
    /// fan chat `fan_chat_id`, written by `from`, now reads `text`. Returns
    /// the update id.
    ///
    /// # Panics
    ///
    /// If `conn_id` was never connected.
    pub fn push_edited_business_message(
        &self,
        conn_id: &str,
        fan_chat_id: i64,
        message_id: i64,
        from: BusinessFrom,
        text: &str,
    ) -> i64 {
        let mut inner = lock(&self.shared.inner);
        let owner = known_owner(&inner, conn_id);
        if let Some(stored) = inner.business.messages.get_mut(&(owner, message_id)) {
            stored.text = text.to_owned();
        }
        let user = match from {
            BusinessFrom::Fan(user_id) => {
                json!({"id": user_id, "is_bot": false, "first_name": FAN_FIRST_NAME})
            }
            BusinessFrom::Owner => owner_user(owner),
        };
        let now = unix_now();
        let message = json!({
            "message_id": message_id,
            "date": now.saturating_sub(1),
            "edit_date": now,
            "chat": fan_chat(fan_chat_id),
            "from": user,
            "text": text,
            "business_connection_id": conn_id,
        });
        self.enqueue_business(&mut inner, "edited_business_message", message)
    }

    /// Queues a `deleted_business_messages` update: messages `ids` of fan
    /// chat `fan_chat_id` were deleted (by the fan or the creator). Returns
    /// the update id.
    ///
    /// # Panics
    ///
    /// If `conn_id` was never connected.
    pub fn push_deleted_business_messages(
        &self,
        conn_id: &str,
        fan_chat_id: i64,
        ids: &[i64],
    ) -> i64 {
        let mut inner = lock(&self.shared.inner);
        let owner = known_owner(&inner, conn_id);
        for id in ids {
            if let Some(stored) = inner.business.messages.get_mut(&(owner, *id)) {
                stored.deleted = true;
            }
        }
        let payload = json!({
            "business_connection_id": conn_id,
            "chat": fan_chat(fan_chat_id),
            "message_ids": ids,
        });
        self.enqueue_business(&mut inner, "deleted_business_messages", payload)
    }

    /// The id of the update queued last (0 if none).
    pub fn last_update_id(&self) -> i64 {
        lock(&self.shared.inner).next_update_id - 1
    }

    /// The JSON of update `update_id` as queued (any update the fake issued,
    /// business or not, except raw ones), e.g. to post a business update to
    /// the bot's webhook as Telegram would.
    pub fn issued_update(&self, update_id: i64) -> Option<Value> {
        let inner = lock(&self.shared.inner);
        serde_json::from_str(inner.issued.get(&update_id)?).ok()
    }

    fn enqueue_business(&self, inner: &mut Inner, kind: &'static str, payload: Value) -> i64 {
        let update_id = inner.next_update_id;
        inner.next_update_id += 1;
        let mut update = Map::new();
        update.insert("update_id".into(), json!(update_id));
        update.insert(kind.into(), payload);
        let update = Value::Object(update).to_string();
        inner.issued.insert(update_id, update.clone());
        inner.queue.push_back((update_id, update));
        inner.business.update_kinds.insert(update_id, kind);
        self.shared.updates.notify_waiters();
        update_id
    }

    /// Messages the bot sent to fan chat `chat_id` as the creator through
    /// connection `conn_id`, in order: what the fan received from the bot.
    pub fn business_sent(&self, conn_id: &str, chat_id: i64) -> Vec<BusinessSent> {
        lock(&self.shared.inner)
            .business
            .sent
            .iter()
            .filter(|s| s.connection_id == conn_id && s.chat_id == chat_id)
            .cloned()
            .collect()
    }

    /// Every message the bot sent as a business account, in order.
    pub fn business_sent_all(&self) -> Vec<BusinessSent> {
        lock(&self.shared.inner).business.sent.clone()
    }

    /// Waits until at least `n` messages were sent to fan chat `chat_id`
    /// through `conn_id` (or `timeout` passes) and returns them.
    pub async fn wait_for_business_sent(
        &self,
        conn_id: &str,
        chat_id: i64,
        n: usize,
        timeout: Duration,
    ) -> Vec<BusinessSent> {
        wait_until(&self.shared.sent, timeout, || {
            self.business_sent_count(conn_id, chat_id) >= n
        })
        .await;
        self.business_sent(conn_id, chat_id)
    }

    fn business_sent_count(&self, conn_id: &str, chat_id: i64) -> usize {
        lock(&self.shared.inner)
            .business
            .sent
            .iter()
            .filter(|s| s.connection_id == conn_id && s.chat_id == chat_id)
            .count()
    }

    /// What fan chat `chat_id` of connection `conn_id`'s account shows now:
    /// every message not deleted, in order, as `(message_id, from, text)`
    /// with edits applied; `from` is `Some(Fan(chat_id))`, `Some(Owner)`, or
    /// `None` for the bot's messages as the creator.
    ///
    /// # Panics
    ///
    /// If `conn_id` was never connected.
    pub fn business_transcript(
        &self,
        conn_id: &str,
        chat_id: i64,
    ) -> Vec<(i64, Option<BusinessFrom>, String)> {
        let inner = lock(&self.shared.inner);
        let owner = known_owner(&inner, conn_id);
        let fan = u64::try_from(chat_id).unwrap_or(0);
        let mut rows: Vec<_> = inner
            .business
            .messages
            .iter()
            .filter(|((o, _), m)| *o == owner && m.chat_id == chat_id && !m.deleted)
            .map(|((_, id), m)| {
                let from = match m.author {
                    Author::Fan => Some(BusinessFrom::Fan(fan)),
                    Author::Owner => Some(BusinessFrom::Owner),
                    Author::Bot => None,
                };
                (*id, from, m.text.clone())
            })
            .collect();
        rows.sort_by_key(|(id, _, _)| *id);
        rows
    }

    /// Every successful business `editMessageText`, in order.
    pub fn business_edits(&self) -> Vec<BusinessEdit> {
        lock(&self.shared.inner).business.edits.clone()
    }

    /// Every business `sendChatAction`, in order.
    pub fn business_chat_actions(&self) -> Vec<BusinessAction> {
        lock(&self.shared.inner).business.actions.clone()
    }

    /// Every business call refused (unknown or disabled connection, missing
    /// right, …), in order.
    pub fn business_refusals(&self) -> Vec<BusinessRefusal> {
        lock(&self.shared.inner).business.refusals.clone()
    }

    /// The message ids each successful `deleteBusinessMessages` deleted, with
    /// the connection, in order.
    pub fn business_deletions(&self) -> Vec<(String, Vec<i64>)> {
        lock(&self.shared.inner).business.deleted_by_bot.clone()
    }
}

/// The owner of connection `conn_id`, for the push helpers.
fn known_owner(inner: &Inner, conn_id: &str) -> u64 {
    match inner.business.connections.get(conn_id) {
        Some(conn) => conn.owner_user_id,
        None => panic!("llmgram-fakes: business connection {conn_id:?} was never connected"),
    }
}

// ------------------------------------------------------------------ server

/// Serves the business methods and the business variants of ordinary
/// methods; `None` leaves the call to the ordinary routes (no
/// `business_connection_id`, or a method without a business variant).
pub(super) fn route(
    shared: &Shared,
    method: &str,
    params: &Map<String, Value>,
) -> Option<Response> {
    match method {
        "getbusinessconnection" => return Some(get_business_connection(shared, params)),
        "deletebusinessmessages" => return Some(delete_business_messages(shared, params)),
        "readbusinessmessage" => return Some(read_business_message(shared, params)),
        _ => {}
    }
    let conn_id = connection_param(params)?;
    let response = match method {
        "sendmessage" => send_message(shared, method, conn_id, params),
        "sendchataction" => send_chat_action(shared, method, conn_id, params),
        "editmessagetext" => edit_message_text(shared, method, conn_id, params),
        _ => return None,
    };
    Some(response)
}

/// `business_connection_id`, when given and not empty.
fn connection_param(params: &Map<String, Value>) -> Option<&str> {
    param_str(params, "business_connection_id").filter(|id| !id.is_empty())
}

/// Why Telegram would refuse a call over connection `conn_id` to `chat_id`
/// (`None` for calls without a chat), or the connection if it may proceed.
fn check(
    inner: &Inner,
    conn_id: &str,
    chat_id: Option<i64>,
    needs_reply_right: bool,
) -> Result<BusinessConn, &'static str> {
    let Some(conn) = inner.business.connections.get(conn_id) else {
        return Err(BUSINESS_CONNECTION_NOT_FOUND);
    };
    if let Some(chat_id) = chat_id {
        if chat_id <= 0 {
            return Err(BUSINESS_NOT_PRIVATE_CHAT);
        }
        if u64::try_from(chat_id).ok() == Some(conn.owner_user_id) {
            return Err(BUSINESS_SENT_TO_SELF);
        }
    }
    if !conn.enabled {
        return Err(BUSINESS_CONNECTION_INVALID);
    }
    if needs_reply_right && !conn.can_reply {
        return Err(BUSINESS_BOT_ACCESS_FORBIDDEN);
    }
    if let Some(chat_id) = chat_id
        && !inner
            .business
            .fan_wrote
            .contains(&(conn.owner_user_id, chat_id))
    {
        return Err(BUSINESS_PEER_USAGE_MISSING);
    }
    Ok(conn.clone())
}

/// Records and answers a refusal.
fn refuse(
    inner: &mut Inner,
    method: &str,
    conn_id: &str,
    chat_id: Option<i64>,
    description: &'static str,
) -> Response {
    inner.business.refusals.push(BusinessRefusal {
        method: method.to_owned(),
        connection_id: conn_id.to_owned(),
        chat_id,
        description: description.to_owned(),
    });
    error(400, description)
}

/// A `Message` the bot wrote as the creator.
fn bot_message_json(conn: &BusinessConn, chat_id: i64, message_id: i64, text: &str) -> Value {
    json!({
        "message_id": message_id,
        "date": unix_now(),
        "chat": fan_chat(chat_id),
        "from": owner_user(conn.owner_user_id),
        "sender_business_bot": bot_user(),
        "business_connection_id": conn.id,
        "text": text,
    })
}

fn send_message(
    shared: &Shared,
    method: &str,
    conn_id: &str,
    params: &Map<String, Value>,
) -> Response {
    let now = Instant::now();
    let mut inner = lock(&shared.inner);
    let garble = match inner.faults.pop_front() {
        Some(TelegramFault::Garbled) => true,
        Some(fault) => return fault_response(&fault),
        None => false,
    };
    let Some(chat_id) = param_i64(params, "chat_id") else {
        return error(400, "Bad Request: chat not found");
    };
    let conn = match check(&inner, conn_id, Some(chat_id), true) {
        Ok(conn) => conn,
        Err(description) => return refuse(&mut inner, method, conn_id, Some(chat_id), description),
    };
    let text = param_str(params, "text").unwrap_or_default().to_owned();
    if let Err(failure) = check_text(&text) {
        return failure.into_response();
    }
    let message_id = inner.business.next_message_id(conn.owner_user_id);
    inner.business.messages.insert(
        (conn.owner_user_id, message_id),
        StoredMessage {
            chat_id,
            author: Author::Bot,
            text: text.clone(),
            deleted: false,
        },
    );
    let mut message = bot_message_json(&conn, chat_id, message_id, &text);
    if let (Some(entities), Some(obj)) = (params.get("entities"), message.as_object_mut()) {
        obj.insert("entities".into(), entities.clone());
    }
    inner.business.sent.push(BusinessSent {
        connection_id: conn.id.clone(),
        chat_id,
        message_id,
        text,
        reply_to: params
            .get("reply_parameters")
            .and_then(|reply| reply.get("message_id")?.as_i64()),
        body: Value::Object(params.clone()),
        at: now,
    });
    drop(inner);
    shared.sent.notify_waiters();
    if garble {
        return garbled();
    }
    ok(&message)
}

fn send_chat_action(
    shared: &Shared,
    method: &str,
    conn_id: &str,
    params: &Map<String, Value>,
) -> Response {
    let mut inner = lock(&shared.inner);
    let Some(chat_id) = param_i64(params, "chat_id") else {
        return error(400, "Bad Request: chat not found");
    };
    if let Err(description) = check(&inner, conn_id, Some(chat_id), true) {
        return refuse(&mut inner, method, conn_id, Some(chat_id), description);
    }
    let action = param_str(params, "action").unwrap_or_default().to_owned();
    if action.is_empty() {
        return error(400, "Bad Request: wrong parameter action in request");
    }
    inner.business.actions.push(BusinessAction {
        connection_id: conn_id.to_owned(),
        chat_id,
        action,
        at: Instant::now(),
    });
    ok(&Value::Bool(true))
}

fn edit_message_text(
    shared: &Shared,
    method: &str,
    conn_id: &str,
    params: &Map<String, Value>,
) -> Response {
    let now = Instant::now();
    let mut inner = lock(&shared.inner);
    let garble = match inner.faults.pop_front() {
        Some(TelegramFault::Garbled) => true,
        Some(fault) => return fault_response(&fault),
        None => false,
    };
    let Some(chat_id) = param_i64(params, "chat_id") else {
        return error(400, "Bad Request: chat not found");
    };
    let Some(message_id) = param_i64(params, "message_id") else {
        return error(400, "Bad Request: message identifier is not specified");
    };
    let conn = match check(&inner, conn_id, Some(chat_id), true) {
        Ok(conn) => conn,
        Err(description) => return refuse(&mut inner, method, conn_id, Some(chat_id), description),
    };
    let text = param_str(params, "text").unwrap_or_default().to_owned();
    if let Err(failure) = check_text(&text) {
        return failure.into_response();
    }
    let Some(stored) = inner
        .business
        .messages
        .get_mut(&(conn.owner_user_id, message_id))
        .filter(|m| m.chat_id == chat_id && m.author == Author::Bot && !m.deleted)
    else {
        return error(400, "Bad Request: message to edit not found");
    };
    if stored.text == text {
        return error(
            400,
            "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
        );
    }
    stored.text = text.clone();
    inner.business.edits.push(BusinessEdit {
        connection_id: conn.id.clone(),
        chat_id,
        message_id,
        text: text.clone(),
        at: now,
    });
    drop(inner);
    if garble {
        return garbled();
    }
    let mut message = bot_message_json(&conn, chat_id, message_id, &text);
    if let Some(obj) = message.as_object_mut() {
        obj.insert("edit_date".into(), json!(unix_now()));
    }
    ok(&message)
}

/// `getBusinessConnection`: the connection as it is now, disabled or not.
fn get_business_connection(shared: &Shared, params: &Map<String, Value>) -> Response {
    let inner = lock(&shared.inner);
    match connection_param(params).and_then(|id| inner.business.connections.get(id)) {
        Some(conn) => ok(&connection_json(conn)),
        None => error(400, BUSINESS_CONNECTION_NOT_FOUND),
    }
}

/// `deleteBusinessMessages`: the bot deletes its own messages (the fake
/// grants no right to delete others').
fn delete_business_messages(shared: &Shared, params: &Map<String, Value>) -> Response {
    const METHOD: &str = "deletebusinessmessages";
    let mut inner = lock(&shared.inner);
    let conn_id = connection_param(params).unwrap_or_default().to_owned();
    let conn = match check(&inner, &conn_id, None, true) {
        Ok(conn) => conn,
        Err(description) => return refuse(&mut inner, METHOD, &conn_id, None, description),
    };
    let ids: Vec<i64> = match params.get("message_ids") {
        Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    };
    if ids.is_empty() {
        return error(400, "Bad Request: message identifiers are not specified");
    }
    for id in &ids {
        let found = inner
            .business
            .messages
            .get(&(conn.owner_user_id, *id))
            .map(|m| (m.chat_id, m.author == Author::Bot || m.deleted));
        match found {
            Some((_, true)) => {}
            Some((chat_id, false)) => {
                return refuse(
                    &mut inner,
                    METHOD,
                    &conn_id,
                    Some(chat_id),
                    BUSINESS_BOT_ACCESS_FORBIDDEN,
                );
            }
            None => return error(400, "Bad Request: message to delete not found"),
        }
    }
    for id in &ids {
        if let Some(m) = inner.business.messages.get_mut(&(conn.owner_user_id, *id)) {
            m.deleted = true;
        }
    }
    inner.business.deleted_by_bot.push((conn_id, ids));
    ok(&Value::Bool(true))
}

/// `readBusinessMessage`: accepted for a message of an enabled connection.
fn read_business_message(shared: &Shared, params: &Map<String, Value>) -> Response {
    const METHOD: &str = "readbusinessmessage";
    let mut inner = lock(&shared.inner);
    let conn_id = connection_param(params).unwrap_or_default().to_owned();
    let chat_id = param_i64(params, "chat_id");
    if let Err(description) = check(&inner, &conn_id, chat_id, false) {
        return refuse(&mut inner, METHOD, &conn_id, chat_id, description);
    }
    ok(&Value::Bool(true))
}
