//! Telegram Business on the fake Bot API, proved against teloxide 0.17: the
//! updates it emits parse as teloxide's business update kinds, calls made
//! with teloxide's business setters are served or refused as Telegram does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use llmgram_fakes::{
    BUSINESS_BOT_ACCESS_FORBIDDEN, BUSINESS_CONNECTION_INVALID, BUSINESS_CONNECTION_NOT_FOUND,
    BUSINESS_NOT_PRIVATE_CHAT, BUSINESS_PEER_USAGE_MISSING, BUSINESS_SENT_TO_SELF, BusinessConn,
    BusinessFrom, FakeTelegram, TelegramFault,
};
use teloxide::prelude::*;
use teloxide::types::{
    AllowedUpdate, BusinessConnection, BusinessConnectionId, ChatAction, MessageId, MessageKind,
    ReplyParameters, Update, UpdateKind,
};
use teloxide::{ApiError, RequestError};

/// The creator's user id (and control-room chat id).
const OWNER: u64 = 5_000;
/// A fan's user id (and the fan chat's id).
const FAN: u64 = 6_001;
/// Another fan.
const FAN2: u64 = 6_002;

fn bot(fake: &FakeTelegram) -> Bot {
    Bot::new("123:abc").set_api_url(fake.api_url().parse().unwrap())
}

fn conn_id(id: &str) -> BusinessConnectionId {
    BusinessConnectionId(id.to_owned())
}

fn chat(id: u64) -> ChatId {
    ChatId(i64::try_from(id).unwrap())
}

/// The description of a refused call.
fn refusal<T: std::fmt::Debug>(result: Result<T, RequestError>) -> String {
    match result {
        Err(RequestError::Api(ApiError::Unknown(description))) => description,
        other => panic!("expected an unknown API error, got {other:?}"),
    }
}

fn connection(update: &Update) -> &BusinessConnection {
    match &update.kind {
        UpdateKind::BusinessConnection(c) => c,
        other => panic!("not a business_connection update: {other:?}"),
    }
}

/// The message's `business_connection_id` (teloxide keeps it in
/// `MessageCommon`).
fn business_id(message: &Message) -> Option<&str> {
    match &message.kind {
        MessageKind::Common(common) => common.business_connection_id.as_ref().map(|id| &*id.0),
        _ => None,
    }
}

/// Connects `c1` for [`OWNER`] and has [`FAN`] write once; drains the
/// updates.
async fn connected_with_fan(fake: &FakeTelegram, bot: &Bot) -> i64 {
    fake.connect_business(BusinessConn::new("c1", OWNER));
    let message_id = fake.push_business_message("c1", chat(FAN).0, BusinessFrom::Fan(FAN), "hi");
    let updates = bot.get_updates().await.unwrap();
    let last = updates.last().unwrap().id.0;
    bot.get_updates().offset(last as i32 + 1).await.unwrap();
    message_id
}

#[tokio::test]
async fn connections_parse_and_change() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    assert!(!bot.get_me().await.unwrap().can_connect_to_business);

    let u1 = fake.connect_business(BusinessConn::new("c1", OWNER));
    let u2 = fake.set_can_reply("c1", false).unwrap();
    let u3 = fake.disable_business("c1").unwrap();
    let u4 = fake.enable_business("c1").unwrap();
    assert_eq!((u1, u2, u3, u4), (1, 2, 3, 4));
    assert_eq!(fake.last_update_id(), 4);
    assert!(fake.disable_business("nope").is_none());
    assert!(fake.set_can_reply("nope", true).is_none());

    let updates = bot.get_updates().await.unwrap();
    assert_eq!(updates.len(), 4);
    let c = connection(&updates[0]);
    assert_eq!(c.id, conn_id("c1"));
    assert_eq!(c.user.id, UserId(OWNER));
    assert_eq!(c.user_chat_id, UserId(OWNER));
    assert!(c.is_enabled);
    let rights = c.rights.as_ref().unwrap();
    assert!(rights.can_reply && rights.can_read_messages && rights.can_delete_sent_messages);
    assert!(!rights.can_delete_all_messages);

    let c = connection(&updates[1]);
    assert!(c.is_enabled);
    assert!(!c.rights.as_ref().unwrap().can_reply);
    let c = connection(&updates[2]);
    assert!(!c.is_enabled);
    let c = connection(&updates[3]);
    assert!(c.is_enabled);

    // The fake's state and getBusinessConnection agree.
    let held = fake.business_connection("c1").unwrap();
    assert!(held.enabled && !held.can_reply);
    assert_eq!(fake.business_connections(), vec![held]);
    let got = bot.get_business_connection(conn_id("c1")).await.unwrap();
    assert_eq!(got.id, conn_id("c1"));
    assert!(got.is_enabled);
    assert!(!got.rights.unwrap().can_reply);
    assert_eq!(
        refusal(bot.get_business_connection(conn_id("nope")).await),
        BUSINESS_CONNECTION_NOT_FOUND
    );

    // Business Mode shows in getMe once a connection exists.
    assert!(bot.get_me().await.unwrap().can_connect_to_business);
}

#[tokio::test]
async fn business_messages_parse() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    fake.connect_business(BusinessConn::new("c1", OWNER));
    let m1 = fake.push_business_message("c1", chat(FAN).0, BusinessFrom::Fan(FAN), "hello 👋");
    let u_fan = fake.last_update_id();
    let m2 = fake.push_business_message("c1", chat(FAN).0, BusinessFrom::Owner, "hi, thanks!");
    let u_edit =
        fake.push_edited_business_message("c1", chat(FAN).0, m1, BusinessFrom::Fan(FAN), "hello!");
    let u_del = fake.push_deleted_business_messages("c1", chat(FAN).0, &[m1]);
    assert_eq!((m1, m2), (1, 2));
    assert_eq!((u_fan, u_edit, u_del), (2, 4, 5));

    let updates = bot.get_updates().offset(2).await.unwrap();
    assert_eq!(updates.len(), 4);

    let UpdateKind::BusinessMessage(fan) = &updates[0].kind else {
        panic!("not a business message: {:?}", updates[0].kind);
    };
    assert_eq!(fan.id, MessageId(1));
    assert_eq!(fan.chat.id, chat(FAN));
    assert!(fan.chat.is_private());
    assert_eq!(fan.from.as_ref().unwrap().id, UserId(FAN));
    assert_eq!(fan.text(), Some("hello 👋"));
    assert_eq!(business_id(fan), Some("c1"));
    assert!(fan.sender_business_bot.is_none());
    // teloxide's helpers see the fan chat and the fan.
    assert_eq!(updates[0].chat().unwrap().id, chat(FAN));
    assert_eq!(updates[0].from().unwrap().id, UserId(FAN));

    // The creator writing to the fan: same chat, `from` is the creator.
    let UpdateKind::BusinessMessage(own) = &updates[1].kind else {
        panic!("not a business message: {:?}", updates[1].kind);
    };
    assert_eq!(own.chat.id, chat(FAN));
    assert_eq!(own.from.as_ref().unwrap().id, UserId(OWNER));
    assert_eq!(own.text(), Some("hi, thanks!"));
    assert_eq!(business_id(own), Some("c1"));

    let UpdateKind::EditedBusinessMessage(edited) = &updates[2].kind else {
        panic!("not an edited business message: {:?}", updates[2].kind);
    };
    assert_eq!(edited.id, MessageId(m1 as i32));
    assert_eq!(edited.text(), Some("hello!"));
    assert!(edited.edit_date().is_some());
    assert_eq!(business_id(edited), Some("c1"));

    // Telegram sends `message_ids` as integers, as the fake does; teloxide
    // 0.17 expects `[{"message_id": n}]` there (its `MessageId` format), so
    // the update comes out as `UpdateKind::Error` holding the raw JSON, which
    // the bot must read itself.
    let UpdateKind::Error(raw) = &updates[3].kind else {
        panic!(
            "teloxide parsed deleted_business_messages: {:?}",
            updates[3].kind
        );
    };
    assert_eq!(updates[3].id.0, u_del as u32);
    let deleted = &raw["deleted_business_messages"];
    assert_eq!(deleted["business_connection_id"], "c1");
    assert_eq!(deleted["chat"]["id"], FAN);
    assert_eq!(deleted["message_ids"], serde_json::json!([m1]));

    // The fan chat as the account shows it: the deleted message is gone.
    assert_eq!(
        fake.business_transcript("c1", chat(FAN).0),
        vec![(m2, Some(BusinessFrom::Owner), "hi, thanks!".to_owned())]
    );

    // The update as a webhook would receive it.
    let posted = fake.issued_update(u_fan).unwrap();
    assert_eq!(posted["business_message"]["text"], "hello 👋");
    let parsed: Update = serde_json::from_str(&posted.to_string()).unwrap();
    assert!(matches!(parsed.kind, UpdateKind::BusinessMessage(_)));
    assert!(fake.issued_update(99).is_none());

    // Business updates are redelivered like any other.
    let confirmed = bot.get_updates().offset(6).await.unwrap();
    assert!(confirmed.is_empty());
    assert!(fake.redeliver(u_fan));
    let again = bot.get_updates().await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id.0, u_fan as u32);
}

#[tokio::test]
async fn sends_as_the_creator_are_recorded_apart() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    let fan_message = connected_with_fan(&fake, &bot).await;

    let sent = bot
        .send_message(chat(FAN), "answer as the creator")
        .business_connection_id(conn_id("c1"))
        .reply_parameters(ReplyParameters::new(MessageId(fan_message as i32)))
        .await
        .unwrap();
    assert_eq!(sent.chat.id, chat(FAN));
    assert_eq!(sent.from.as_ref().unwrap().id, UserId(OWNER));
    assert_eq!(
        sent.sender_business_bot.as_ref().unwrap().id.0,
        7_000_000_001
    );
    assert_eq!(business_id(&sent), Some("c1"));
    assert_eq!(sent.id, MessageId(2));

    let recorded = fake.business_sent("c1", chat(FAN).0);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].text, "answer as the creator");
    assert_eq!(recorded[0].message_id, 2);
    assert_eq!(recorded[0].reply_to, Some(fan_message));
    assert_eq!(recorded[0].connection_id, "c1");
    assert_eq!(fake.business_sent_all().len(), 1);
    assert!(fake.business_sent("c1", chat(FAN2).0).is_empty());
    // Not an ordinary message of the bot: the bot's own chats are untouched.
    assert!(fake.sent().is_empty());
    assert!(fake.sent_to(chat(FAN).0).is_empty());

    // The control room is an ordinary chat.
    bot.send_message(chat(OWNER), "draft for the fan")
        .await
        .unwrap();
    assert_eq!(fake.sent_to(chat(OWNER).0).len(), 1);
    assert_eq!(fake.business_sent_all().len(), 1);

    bot.send_chat_action(chat(FAN), ChatAction::Typing)
        .business_connection_id(conn_id("c1"))
        .await
        .unwrap();
    let actions = fake.business_chat_actions();
    assert_eq!(actions.len(), 1);
    assert_eq!(
        (actions[0].chat_id, &*actions[0].action),
        (chat(FAN).0, "typing")
    );
    assert!(fake.chat_actions().is_empty());

    let edited = bot
        .edit_message_text(chat(FAN), sent.id, "better answer")
        .business_connection_id(conn_id("c1"))
        .await
        .unwrap();
    assert_eq!(edited.text(), Some("better answer"));
    assert_eq!(fake.business_edits().len(), 1);
    assert!(fake.edits().is_empty());
    // The fan's own message cannot be edited by the bot.
    assert!(
        bot.edit_message_text(chat(FAN), MessageId(fan_message as i32), "x")
            .business_connection_id(conn_id("c1"))
            .await
            .is_err()
    );

    assert_eq!(
        fake.business_transcript("c1", chat(FAN).0),
        vec![
            (fan_message, Some(BusinessFrom::Fan(FAN)), "hi".to_owned()),
            (2, None, "better answer".to_owned()),
        ]
    );

    // The bot deletes what it sent; not the fan's message.
    assert_eq!(
        refusal(
            bot.delete_business_messages(conn_id("c1"), [MessageId(fan_message as i32)])
                .await
        ),
        BUSINESS_BOT_ACCESS_FORBIDDEN
    );
    bot.delete_business_messages(conn_id("c1"), [sent.id])
        .await
        .unwrap();
    assert_eq!(fake.business_deletions(), vec![("c1".to_owned(), vec![2])]);
    assert_eq!(fake.business_transcript("c1", chat(FAN).0).len(), 1);

    // The fan replies to the bot's answer: reply_to_message shows it as
    // the creator's, sent by the bot.
    let answer = bot
        .send_message(chat(FAN), "another answer")
        .business_connection_id(conn_id("c1"))
        .await
        .unwrap();
    let reply = fake.push_business_reply(
        "c1",
        chat(FAN).0,
        BusinessFrom::Fan(FAN),
        "thanks",
        i64::from(answer.id.0),
    );
    let updates = bot.get_updates().await.unwrap();
    let UpdateKind::BusinessMessage(m) = &updates.last().unwrap().kind else {
        panic!("not a business message");
    };
    assert_eq!(i64::from(m.id.0), reply);
    let original = m.reply_to_message().unwrap();
    assert_eq!(original.id, answer.id);
    assert_eq!(original.text(), Some("another answer"));
    assert_eq!(original.from.as_ref().unwrap().id, UserId(OWNER));
    assert!(original.sender_business_bot.is_some());

    let waited = fake
        .wait_for_business_sent("c1", chat(FAN).0, 2, Duration::from_millis(10))
        .await;
    assert_eq!(waited.len(), 2);
}

#[tokio::test]
async fn refusals_follow_telegram() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    connected_with_fan(&fake, &bot).await;
    let send = |chat_id: ChatId, id: &str| {
        bot.send_message(chat_id, "as the creator")
            .business_connection_id(conn_id(id))
            .into_future()
    };

    assert_eq!(
        refusal(send(chat(FAN), "nope").await),
        BUSINESS_CONNECTION_NOT_FOUND
    );
    assert_eq!(
        refusal(send(ChatId(-100), "c1").await),
        BUSINESS_NOT_PRIVATE_CHAT
    );
    assert_eq!(
        refusal(send(chat(OWNER), "c1").await),
        BUSINESS_SENT_TO_SELF
    );
    // A fan who never wrote to the creator cannot be written to.
    assert_eq!(
        refusal(send(chat(FAN2), "c1").await),
        BUSINESS_PEER_USAGE_MISSING
    );

    fake.set_can_reply("c1", false);
    assert_eq!(
        refusal(send(chat(FAN), "c1").await),
        BUSINESS_BOT_ACCESS_FORBIDDEN
    );
    assert_eq!(
        refusal(
            bot.send_chat_action(chat(FAN), ChatAction::Typing)
                .business_connection_id(conn_id("c1"))
                .await
        ),
        BUSINESS_BOT_ACCESS_FORBIDDEN
    );
    fake.set_can_reply("c1", true);
    send(chat(FAN), "c1").await.unwrap();

    fake.disable_business("c1");
    assert_eq!(
        refusal(send(chat(FAN), "c1").await),
        BUSINESS_CONNECTION_INVALID
    );
    assert_eq!(
        refusal(
            bot.edit_message_text(chat(FAN), MessageId(2), "edited")
                .business_connection_id(conn_id("c1"))
                .await
        ),
        BUSINESS_CONNECTION_INVALID
    );

    assert_eq!(fake.business_sent("c1", chat(FAN).0).len(), 1);
    let refusals = fake.business_refusals();
    let descriptions: Vec<&str> = refusals.iter().map(|r| &*r.description).collect();
    assert_eq!(
        descriptions,
        [
            BUSINESS_CONNECTION_NOT_FOUND,
            BUSINESS_NOT_PRIVATE_CHAT,
            BUSINESS_SENT_TO_SELF,
            BUSINESS_PEER_USAGE_MISSING,
            BUSINESS_BOT_ACCESS_FORBIDDEN,
            BUSINESS_BOT_ACCESS_FORBIDDEN,
            BUSINESS_CONNECTION_INVALID,
            BUSINESS_CONNECTION_INVALID,
        ]
    );
    assert_eq!(refusals[0].connection_id, "nope");
    assert_eq!(refusals[4].method, "sendmessage");
    assert_eq!(refusals[5].method, "sendchataction");
    assert_eq!(refusals[4].chat_id, Some(chat(FAN).0));
}

#[tokio::test]
async fn faults_apply_to_business_sends() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    connected_with_fan(&fake, &bot).await;
    fake.fail_next_sends(1, TelegramFault::RetryAfter(3));
    let result = bot
        .send_message(chat(FAN), "as the creator")
        .business_connection_id(conn_id("c1"))
        .await;
    assert!(
        matches!(result, Err(RequestError::RetryAfter(_))),
        "{result:?}"
    );
    assert!(fake.business_sent_all().is_empty());
    fake.refuse_method(
        "sendMessage",
        Some(TelegramFault::Status(400, "Bad Request: refused".into())),
    );
    assert!(
        bot.send_message(chat(FAN), "as the creator")
            .business_connection_id(conn_id("c1"))
            .await
            .is_err()
    );
    fake.refuse_method("sendMessage", None);
    bot.send_message(chat(FAN), "as the creator")
        .business_connection_id(conn_id("c1"))
        .await
        .unwrap();
    assert_eq!(fake.business_sent_all().len(), 1);
}

#[tokio::test]
async fn business_updates_need_allowed_updates() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    fake.connect_business(BusinessConn::new("c1", OWNER));
    fake.push_business_message("c1", chat(FAN).0, BusinessFrom::Fan(FAN), "hi");
    let plain = fake.push_text(42, 42, "plain");

    // A bot asking for messages only does not see business updates.
    let updates = bot
        .get_updates()
        .allowed_updates([AllowedUpdate::Message, AllowedUpdate::EditedMessage])
        .await
        .unwrap();
    let ids: Vec<u32> = updates.iter().map(|u| u.id.0).collect();
    assert_eq!(ids, [plain as u32]);
    // The filter sticks for later calls without `allowed_updates`.
    let ids: Vec<u32> = bot
        .get_updates()
        .await
        .unwrap()
        .iter()
        .map(|u| u.id.0)
        .collect();
    assert_eq!(ids, [plain as u32]);

    // Asking for them (here before confirming anything) shows them.
    let updates = bot
        .get_updates()
        .allowed_updates([
            AllowedUpdate::Message,
            AllowedUpdate::BusinessConnection,
            AllowedUpdate::BusinessMessage,
        ])
        .await
        .unwrap();
    assert_eq!(updates.len(), 3);
    assert!(matches!(updates[0].kind, UpdateKind::BusinessConnection(_)));
    assert!(matches!(updates[1].kind, UpdateKind::BusinessMessage(_)));

    // An empty list is Telegram's default, which includes them.
    fake.push_deleted_business_messages("c1", chat(FAN).0, &[1]);
    let updates = bot
        .get_updates()
        .offset(plain as i32 + 1)
        .allowed_updates([])
        .await
        .unwrap();
    assert_eq!(updates.len(), 1);
    // (teloxide 0.17 cannot parse this kind; see `business_messages_parse`.)
    let UpdateKind::Error(raw) = &updates[0].kind else {
        panic!("unexpected {:?}", updates[0].kind);
    };
    assert!(raw.get("deleted_business_messages").is_some());
}

#[tokio::test]
#[should_panic(expected = "never connected")]
async fn pushing_for_an_unknown_connection_is_a_test_mistake() {
    let fake = FakeTelegram::start().await;
    fake.push_business_message("nope", 1, BusinessFrom::Fan(1), "hi");
}
