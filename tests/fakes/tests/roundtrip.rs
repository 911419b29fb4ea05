//! Proves the fakes against the real clients: teloxide for [`FakeTelegram`]
//! and reqwest for [`FakeLlm`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use llmgram_fakes::{FakeLlm, FakeTelegram, LlmReply, LlmReplyKind, TelegramFault};
use serde_json::{Value, json};
use teloxide::prelude::*;
use teloxide::types::{
    BotCommand, ChatAction, MessageEntityKind, MessageId, ParseMode, ReplyParameters, ThreadId,
    Update, UpdateKind,
};
use teloxide::{ApiError, RequestError};

fn bot(fake: &FakeTelegram) -> Bot {
    Bot::new("123:abc").set_api_url(fake.api_url().parse().unwrap())
}

fn message(update: &Update) -> &Message {
    match &update.kind {
        UpdateKind::Message(m) => m,
        other => panic!("not a message update: {other:?}"),
    }
}

// ------------------------------------------------------------------ telegram

#[tokio::test]
async fn get_me_parses() {
    let fake = FakeTelegram::start().await;
    let me = bot(&fake).get_me().await.unwrap();
    assert_eq!(me.id.0, 7_000_000_001);
    assert!(me.is_bot);
    assert_eq!(me.first_name, "llmgram");
    assert_eq!(me.username(), "llmgram_test_bot");
    assert!(me.can_join_groups);
    assert!(!me.can_read_all_group_messages);
    assert!(!me.supports_inline_queries);
    assert_eq!(fake.method_calls("getMe"), 1);
    assert_eq!(fake.method_calls("GETME"), 1);
}

#[tokio::test]
async fn calls_are_recorded_with_their_token_and_chat() {
    let fake = FakeTelegram::start().await;
    let one = Bot::new("123:one").set_api_url(fake.api_url().parse().unwrap());
    let two = Bot::new("123:two").set_api_url(fake.api_url().parse().unwrap());
    one.get_me().await.unwrap();
    two.send_message(ChatId(42), "hi").await.unwrap();
    fake.refuse_method(
        "sendMessage",
        Some(TelegramFault::Status(
            400,
            "Bad Request: chat not found".into(),
        )),
    );
    one.send_message(ChatId(43), "refused").await.unwrap_err();
    let calls: Vec<(String, String, Option<i64>)> = fake
        .calls()
        .into_iter()
        .map(|c| (c.token, c.method, c.chat_id))
        .collect();
    assert_eq!(
        calls,
        [
            ("123:one".into(), "getme".into(), None),
            ("123:two".into(), "sendmessage".into(), Some(42)),
            ("123:one".into(), "sendmessage".into(), Some(43)),
        ]
    );
}

#[tokio::test]
async fn pushed_updates_parse() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    let u1 = fake.push_text(42, 4200, "/start now");
    let u2 = fake.push_text_lang(42, 4200, "привет 👋", "ru");
    let u3 = fake.push_sticker(42, 4200);
    let u4 = fake.push_photo(43, 4300);
    let u5 = fake.push_raw_message(json!({
        "message_id": 999,
        "date": 1_700_000_000,
        "chat": {"id": 44, "type": "private", "first_name": "Raw"},
        "from": {"id": 4400, "is_bot": false, "first_name": "Raw"},
        "text": "raw text",
    }));
    assert_eq!((u1, u2, u3, u4, u5), (1, 2, 3, 4, 5));

    let updates = bot.get_updates().await.unwrap();
    let ids: Vec<u32> = updates.iter().map(|u| u.id.0).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);

    let m = message(&updates[0]);
    assert_eq!(m.chat.id, ChatId(42));
    assert_eq!(m.text(), Some("/start now"));
    assert_eq!(m.from.as_ref().unwrap().id.0, 4200);
    let entities = m.parse_entities().unwrap();
    assert_eq!(entities.len(), 1);
    assert_eq!(*entities[0].kind(), MessageEntityKind::BotCommand);
    assert_eq!(entities[0].text(), "/start");

    let m = message(&updates[1]);
    assert_eq!(m.text(), Some("привет 👋"));
    assert!(m.entities().is_none_or(<[_]>::is_empty));
    assert_eq!(
        m.from.as_ref().unwrap().language_code.as_deref(),
        Some("ru")
    );
    assert!(
        m.id.0 > message(&updates[0]).id.0,
        "message ids increase per chat"
    );

    let m = message(&updates[2]);
    assert!(m.sticker().is_some());
    assert!(m.text().is_none());

    let m = message(&updates[3]);
    assert_eq!(m.chat.id, ChatId(43));
    assert_eq!(m.photo().map(<[_]>::len), Some(1));

    let m = message(&updates[4]);
    assert_eq!(m.id, MessageId(999));
    assert_eq!(m.text(), Some("raw text"));

    for id in [u1, u2, u3, u4, u5] {
        assert!(fake.delivered_at(id).is_some());
    }
    assert!(fake.delivered_at(6).is_none());
}

#[tokio::test]
async fn offset_confirms_older_updates() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    for i in 0..3 {
        fake.push_text(1, 1, &format!("m{i}"));
    }
    let first = bot.get_updates().await.unwrap();
    assert_eq!(first.len(), 3);
    let first_delivery = fake.delivered_at(1).unwrap();

    let rest = bot.get_updates().offset(2).await.unwrap();
    let ids: Vec<u32> = rest.iter().map(|u| u.id.0).collect();
    assert_eq!(ids, [2, 3]);
    assert_eq!(fake.confirmed_offset(), 2);

    // Update 1 is gone for good, even without an offset.
    let again = bot.get_updates().await.unwrap();
    let ids: Vec<u32> = again.iter().map(|u| u.id.0).collect();
    assert_eq!(ids, [2, 3]);
    assert_eq!(
        fake.delivered_at(1),
        Some(first_delivery),
        "first delivery time is kept"
    );

    let limited = bot.get_updates().offset(2).limit(1).await.unwrap();
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0].id.0, 2);

    let none = bot.get_updates().offset(4).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(fake.confirmed_offset(), 4);
    assert_eq!(fake.get_updates_calls(), 5);
    assert!(
        fake.wait_for_get_updates(5, Duration::from_millis(10))
            .await
    );
    assert!(
        !fake
            .wait_for_get_updates(6, Duration::from_millis(50))
            .await
    );
}

#[tokio::test]
async fn long_polling() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);

    let start = Instant::now();
    let empty = bot.get_updates().timeout(1).await.unwrap();
    let waited = start.elapsed();
    assert!(empty.is_empty());
    assert!(
        waited >= Duration::from_millis(950),
        "returned after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1500),
        "returned after {waited:?}"
    );

    let pusher = fake.clone();
    tokio::spawn(async move {
        assert!(pusher.wait_for_get_updates(2, Duration::from_secs(5)).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        pusher.push_text(5, 5, "wake up");
    });
    let start = Instant::now();
    let got = bot.get_updates().timeout(5).await.unwrap();
    let waited = start.elapsed();
    assert_eq!(got.len(), 1);
    assert_eq!(message(&got[0]).text(), Some("wake up"));
    assert!(
        waited < Duration::from_millis(1000),
        "returned after {waited:?}"
    );
}

#[tokio::test]
async fn reply_parameters_are_recorded() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    bot.send_message(ChatId(-5), "as a reply")
        .reply_parameters(ReplyParameters {
            allow_sending_without_reply: Some(true),
            ..ReplyParameters::new(MessageId(41))
        })
        .await
        .unwrap();
    bot.send_message(ChatId(-5), "plain").await.unwrap();
    let sent = fake.wait_for_sent_to(-5, 2, Duration::from_secs(1)).await;
    assert_eq!(sent[0].reply_to, Some(41));
    assert!(sent[0].reply_without_original);
    assert_eq!(sent[1].reply_to, None);
    assert!(!sent[1].reply_without_original);
}

#[tokio::test]
async fn send_message_is_recorded() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    let mut sub = fake.subscribe_sent();
    fake.push_text(77, 77, "hello");

    let msg = bot
        .send_message(ChatId(77), "<b>hi</b>")
        .parse_mode(ParseMode::Html)
        .await
        .unwrap();
    assert_eq!(msg.chat.id, ChatId(77));
    assert_eq!(msg.text(), Some("<b>hi</b>"));
    assert_eq!(
        msg.id,
        MessageId(2),
        "shares the per-chat counter with the user message"
    );
    assert_eq!(msg.from.as_ref().unwrap().id.0, 7_000_000_001);

    let second = bot.send_message(ChatId(77), "second").await.unwrap();
    assert_eq!(second.id, MessageId(3));
    bot.send_message(ChatId(78), "other chat").await.unwrap();

    let sent = fake.wait_for_sent_to(77, 2, Duration::from_secs(1)).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].text, "<b>hi</b>");
    assert_eq!(sent[0].message_id, 2);
    assert_eq!(sent[0].body["parse_mode"], "HTML");
    assert_eq!(sent[1].text, "second");
    assert_eq!(fake.sent_count(), 3);
    assert_eq!(fake.sent().len(), 3);
    assert_eq!(fake.sent_to(78).len(), 1);
    assert!(fake.sent_to(79).is_empty());
    assert_eq!(fake.wait_for_sent_count(3, Duration::from_secs(1)).await, 3);

    let start = Instant::now();
    assert_eq!(
        fake.wait_for_sent_count(4, Duration::from_millis(100))
            .await,
        3
    );
    assert!(start.elapsed() >= Duration::from_millis(100));

    let got: Vec<String> = (0..3).map(|_| sub.try_recv().unwrap().text).collect();
    assert_eq!(got, ["<b>hi</b>", "second", "other chat"]);
}

#[tokio::test]
async fn wait_for_sent_wakes_up() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bot.send_message(ChatId(1), "late").await.unwrap();
    });
    let start = Instant::now();
    let sent = fake.wait_for_sent_to(1, 1, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 1);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn text_length_rules() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);

    let err = bot
        .send_message(ChatId(1), "x".repeat(5000))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::Api(ApiError::MessageIsTooLong)),
        "{err:?}"
    );
    let err = bot.send_message(ChatId(1), "  \n ").await.unwrap_err();
    assert!(
        matches!(err, RequestError::Api(ApiError::MessageTextIsEmpty)),
        "{err:?}"
    );

    // Length is counted in UTF-16 code units: 2048 emoji are exactly 4096.
    bot.send_message(ChatId(1), "😀".repeat(2048))
        .await
        .unwrap();
    let err = bot
        .send_message(ChatId(1), "😀".repeat(2049))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::Api(ApiError::MessageIsTooLong)),
        "{err:?}"
    );
    bot.send_message(ChatId(1), "я".repeat(4096)).await.unwrap();

    assert_eq!(fake.sent_count(), 2);
    assert_eq!(fake.method_calls("sendMessage"), 5);

    let err = bot
        .edit_message_text(ChatId(1), MessageId(1), "")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::Api(ApiError::MessageTextIsEmpty)),
        "{err:?}"
    );
    assert!(fake.edits().is_empty());
}

#[tokio::test]
async fn raw_updates_are_served_verbatim() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    let broken = fake.push_raw_update(
        r#""message":{"message_id":1,"date":1700000000,"chat":{"id":5,"type":"private","first_name":"U"},"text":"cut \ud800 emoji"}"#,
    );
    let unknown = fake.push_raw_update(r#""brand_new_kind":{"x":1}"#);
    assert_eq!((broken, unknown), (1, 2));

    // What the fake sends is exactly what was queued: serde cannot read the
    // lone surrogate, so teloxide fails the whole batch.
    let err = bot.get_updates().await.unwrap_err();
    assert!(matches!(err, RequestError::InvalidJson { .. }), "{err:?}");
    let url = format!("{}bot123:abc/getUpdates", fake.api_url());
    let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(body.contains(r#"{"update_id":1,"message":"#), "{body}");
    assert!(body.contains(r#"cut \ud800 emoji"#), "{body}");
    assert!(
        body.contains(r#"{"update_id":2,"brand_new_kind":{"x":1}}"#),
        "{body}"
    );

    // Confirmed by offset like any other update.
    let rest = bot.get_updates().offset(3).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn refused_methods_and_instant_polls() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    fake.refuse_method(
        "setmycommands",
        Some(TelegramFault::Status(500, "Internal Server Error".into())),
    );
    let commands = vec![BotCommand::new("help", "help")];
    let err = bot.set_my_commands(commands.clone()).await.unwrap_err();
    assert!(matches!(err, RequestError::Api(_)), "{err:?}");
    assert!(fake.my_commands().is_empty());
    assert_eq!(fake.method_calls("setMyCommands"), 1);
    bot.get_me().await.unwrap();
    fake.refuse_method("setMyCommands", None);
    bot.set_my_commands(commands).await.unwrap();
    assert_eq!(fake.my_commands().len(), 1);

    fake.set_instant_polls(true);
    let start = Instant::now();
    let empty = bot.get_updates().timeout(5).await.unwrap();
    assert!(empty.is_empty());
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    fake.set_instant_polls(false);
    let start = Instant::now();
    bot.get_updates().timeout(1).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(950));
}

#[tokio::test]
async fn a_stalled_method_waits_then_is_served_and_others_are_not_held() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    fake.stall_method("getMe", Some(Duration::from_millis(400)));
    let start = Instant::now();
    bot.get_me().await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(390));
    let start = Instant::now();
    bot.get_updates().timeout(0).await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(300));
    fake.stall_method("GETME", None);
    let start = Instant::now();
    bot.get_me().await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn injected_faults() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);

    fake.fail_next_sends(1, TelegramFault::RetryAfter(2));
    let err = bot.send_message(ChatId(9), "hi").await.unwrap_err();
    match err {
        RequestError::RetryAfter(s) => assert_eq!(s.seconds(), 2),
        other => panic!("expected RetryAfter, got {other:?}"),
    }

    fake.fail_next_sends(
        2,
        TelegramFault::Status(403, "Forbidden: bot was blocked by the user".into()),
    );
    let err = bot.send_message(ChatId(9), "hi").await.unwrap_err();
    assert!(
        matches!(err, RequestError::Api(ApiError::BotBlocked)),
        "{err:?}"
    );
    let err = bot
        .edit_message_text(ChatId(9), MessageId(1), "edit")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RequestError::Api(ApiError::BotBlocked)),
        "{err:?}"
    );

    assert_eq!(fake.sent_count(), 0);
    assert!(fake.edits().is_empty());

    let ok = bot.send_message(ChatId(9), "finally").await.unwrap();
    assert_eq!(ok.id, MessageId(1));
    assert_eq!(fake.sent_count(), 1);
    assert_eq!(fake.method_calls("sendmessage"), 3);
    assert_eq!(fake.method_calls("editMessageText"), 1);
}

#[tokio::test]
async fn flood_limit_counts_sends_before_retry_after() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    fake.set_chat_flood_limit(Some((Duration::from_millis(300), 1)));
    bot.send_message(ChatId(5), "one").await.unwrap();
    let err = bot.send_message(ChatId(5), "two").await.unwrap_err();
    assert!(matches!(err, RequestError::RetryAfter(_)), "{err:?}");
    assert_eq!(fake.flood_rejections(), 1);
    assert_eq!(
        fake.retry_after_violations(),
        0,
        "the first 429 is no violation"
    );
    // Another chat is not affected by chat 5's wait.
    bot.send_message(ChatId(6), "other").await.unwrap();
    assert_eq!(fake.retry_after_violations(), 0);
    // Past the flood interval but before retry_after (1 s): accepted by the
    // flood check, yet counted as a violation.
    tokio::time::sleep(Duration::from_millis(400)).await;
    bot.send_message(ChatId(5), "too early").await.unwrap();
    assert_eq!(fake.retry_after_violations(), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    bot.send_message(ChatId(5), "in time").await.unwrap();
    assert_eq!(fake.retry_after_violations(), 1);
}

#[tokio::test]
async fn garbled_answers_hide_calls_that_happened() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);

    fake.fail_next_sends(1, TelegramFault::Garbled);
    let err = bot.send_message(ChatId(9), "first").await.unwrap_err();
    assert!(matches!(err, RequestError::InvalidJson { .. }), "{err:?}");
    assert_eq!(fake.sent_count(), 1, "the message was sent all the same");

    fake.fail_next_sends(1, TelegramFault::Garbled);
    let err = bot
        .edit_message_text(ChatId(9), MessageId(1), "edited")
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::InvalidJson { .. }), "{err:?}");
    let edits = fake.edits();
    assert_eq!(edits.len(), 1, "the edit was applied all the same");
    assert_eq!(edits[0].text, "edited");
    assert_eq!(fake.transcript(9), [(1, "edited".to_owned())]);

    // The fault is used up.
    bot.edit_message_text(ChatId(9), MessageId(1), "again")
        .await
        .unwrap();
}

#[tokio::test]
async fn forum_topics_are_pushed_and_sends_keep_their_thread() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    let in_topic = fake.push_topic_text(-1_009, Some(5), 11, "Alice", "in topic 5");
    let in_general = fake.push_topic_text(-1_009, None, 12, "Bob", "in General");
    let updates = bot.get_updates().await.unwrap();
    assert_eq!(updates.len(), 2);
    let topic = message(&updates[0]);
    assert_eq!(topic.id.0 as i64, in_topic);
    assert!(topic.is_topic_message);
    assert_eq!(topic.thread_id, Some(ThreadId(MessageId(5))));
    assert!(topic.chat.is_supergroup());
    assert!(fake_is_forum(&topic.chat));
    assert_eq!(topic.from.as_ref().unwrap().first_name, "Alice");
    let general = message(&updates[1]);
    assert_eq!(general.id.0 as i64, in_general);
    assert!(!general.is_topic_message);
    assert_eq!(general.thread_id, None);

    let sent = bot
        .send_message(ChatId(-1_009), "to topic 5")
        .message_thread_id(ThreadId(MessageId(5)))
        .await
        .unwrap();
    assert_eq!(sent.thread_id, Some(ThreadId(MessageId(5))));
    bot.send_message(ChatId(-1_009), "to General")
        .await
        .unwrap();
    bot.send_chat_action(ChatId(-1_009), ChatAction::Typing)
        .message_thread_id(ThreadId(MessageId(5)))
        .await
        .unwrap();
    let all = fake.sent_to(-1_009);
    assert_eq!(
        all.iter().map(|m| m.thread_id).collect::<Vec<_>>(),
        vec![Some(5), None]
    );
    let topic5 = fake.sent_to_topic(-1_009, Some(5));
    assert_eq!(topic5.len(), 1);
    assert_eq!(topic5[0].text, "to topic 5");
    assert_eq!(fake.sent_to_topic(-1_009, None)[0].text, "to General");
    assert_eq!(fake.chat_actions_to(-1_009)[0].thread_id, Some(5));
}

fn fake_is_forum(chat: &teloxide::types::Chat) -> bool {
    matches!(
        &chat.kind,
        teloxide::types::ChatKind::Public(teloxide::types::ChatPublic {
            kind: teloxide::types::PublicChatKind::Supergroup(
                teloxide::types::PublicChatSupergroup { is_forum: true, .. }
            ),
            ..
        })
    )
}

#[tokio::test]
async fn chat_actions_edits_and_commands() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);

    assert!(
        bot.send_chat_action(ChatId(3), ChatAction::Typing)
            .await
            .is_ok()
    );
    bot.send_chat_action(ChatId(4), ChatAction::Typing)
        .await
        .unwrap();
    let actions = fake.chat_actions_to(3);
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].action, "typing");
    assert_eq!(fake.chat_actions().len(), 2);

    let sent = bot.send_message(ChatId(3), "draft").await.unwrap();
    let edited = bot
        .edit_message_text(ChatId(3), sent.id, "final")
        .await
        .unwrap();
    assert_eq!(edited.id, sent.id);
    assert_eq!(edited.text(), Some("final"));
    assert!(edited.edit_date().is_some());
    let edits = fake.edits();
    assert_eq!(edits.len(), 1);
    assert_eq!(
        (edits[0].chat_id, edits[0].message_id),
        (3, sent.id.0 as i64)
    );
    assert_eq!(edits[0].text, "final");

    bot.delete_webhook().await.unwrap();
    bot.set_my_commands([
        BotCommand::new("start", "Start"),
        BotCommand::new("reset", "Forget"),
    ])
    .language_code("ru")
    .await
    .unwrap();
    bot.delete_my_commands().await.unwrap();
    assert_eq!(fake.method_calls("deleteWebhook"), 1);
    assert_eq!(fake.method_calls("deleteMyCommands"), 1);
    let cmds = fake.my_commands();
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0]["commands"][1]["command"], "reset");
    assert_eq!(cmds[0]["language_code"], "ru");
}

#[tokio::test]
async fn raw_http_case_insensitive_and_forms() {
    let fake = FakeTelegram::start().await;
    let http = reqwest::Client::new();
    let base = fake.api_url();

    for method in ["getMe", "getme", "GETME"] {
        let r: Value = http
            .get(format!("{base}botany:token/{method}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["ok"], true);
        assert_eq!(r["result"]["username"], "llmgram_test_bot");
    }
    assert_eq!(fake.method_calls("GetMe"), 3);

    // JSON body, lower-case method.
    let r: Value = http
        .post(format!("{base}bot1:x/sendmessage"))
        .json(&json!({"chat_id": 5, "text": "json", "reply_parameters": {"message_id": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"]["text"], "json");
    // Query-string parameters.
    let r: Value = http
        .get(format!("{base}bot1:x/SENDMESSAGE?chat_id=5&text=query"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"]["message_id"], 2);
    // Form body.
    let resp = http
        .post(format!("{base}bot1:x/sendMessage"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("chat_id=5&text=form+body&reply_parameters=%7B%22message_id%22%3A1%7D")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = fake.sent_to(5);
    let texts: Vec<&str> = sent.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["json", "query", "form body"]);
    assert_eq!(sent[0].body["reply_parameters"]["message_id"], 1);
    assert_eq!(sent[2].body["reply_parameters"]["message_id"], 1);

    // Errors carry the status code.
    let resp = http
        .post(format!("{base}bot1:x/sendMessage"))
        .json(&json!({"chat_id": 5, "text": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(
        r,
        json!({"ok": false, "error_code": 400, "description": "Bad Request: message text is empty"})
    );

    fake.fail_next_sends(1, TelegramFault::RetryAfter(7));
    let resp = http
        .post(format!("{base}bot1:x/sendMessage"))
        .json(&json!({"chat_id": 5, "text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["description"], "Too Many Requests: retry after 7");
    assert_eq!(r["parameters"]["retry_after"], 7);

    let resp = http
        .post(format!("{base}bot1:x/sendPoll"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["description"], "Not Found: method not found");
    assert_eq!(fake.method_calls("sendPoll"), 1);

    let resp = http.get(format!("{base}nobot/getMe")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

// ----------------------------------------------------------------------- llm

async fn complete(http: &reqwest::Client, llm: &FakeLlm, body: Value) -> reqwest::Response {
    http.post(format!("{}/chat/completions", llm.base_url()))
        .bearer_auth("sk-test")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn chat(text: &str) -> Value {
    json!({
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": text},
        ],
    })
}

/// Reads an SSE body chunk by chunk; returns the `data:` payloads and whether
/// the body ended with an error.
async fn read_sse(mut resp: reqwest::Response) -> (Vec<String>, bool) {
    let mut buf = String::new();
    let mut broken = false;
    loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => buf.push_str(std::str::from_utf8(&bytes).unwrap()),
            Ok(None) => break,
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    let events = buf
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect();
    (events, broken)
}

fn stream_content(events: &[String]) -> Vec<String> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn llm_default_echo() {
    let llm = FakeLlm::start().await;
    assert!(llm.base_url().ends_with("/v1"));
    let http = reqwest::Client::new();
    let resp = complete(&http, &llm, chat("what is 2+2?")).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "fake-model");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "answer to: what is 2+2?"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let reqs = llm.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].model, "fake-model");
    assert_eq!(reqs[0].messages.len(), 4);
    assert_eq!(
        reqs[0].messages[0],
        ("system".to_owned(), "be brief".to_owned())
    );
    assert!(!reqs[0].stream);
    assert_eq!(reqs[0].authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(llm.request_count(), 1);
    assert_eq!(llm.in_flight(), 0);
}

#[tokio::test]
async fn llm_latency_script_and_responder() {
    let llm = FakeLlm::start().await;
    let http = reqwest::Client::new();

    llm.set_latency(Duration::from_millis(300));
    let start = Instant::now();
    let body: Value = complete(&http, &llm, chat("slow"))
        .await
        .json()
        .await
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(body["choices"][0]["message"]["content"], "answer to: slow");
    llm.set_latency(Duration::ZERO);

    llm.set_responder(|req| LlmReply::text(format!("custom {}", req.messages.len())));
    llm.script(vec![
        LlmReply::text("scripted 1"),
        LlmReply::text("scripted 2"),
    ]);
    let mut answers = Vec::new();
    for _ in 0..3 {
        let body: Value = complete(&http, &llm, chat("x")).await.json().await.unwrap();
        answers.push(
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(answers, ["scripted 1", "scripted 2", "custom 4"]);
    assert_eq!(llm.wait_for_requests(4, Duration::from_millis(10)).await, 4);
}

#[tokio::test]
async fn llm_faults() {
    let llm = FakeLlm::start().await;
    let http = reqwest::Client::new();
    llm.script(vec![
        LlmReply::now(LlmReplyKind::Status {
            code: 429,
            retry_after: Some(3),
            body: r#"{"error":{"message":"slow down"}}"#.into(),
        }),
        LlmReply::now(LlmReplyKind::Status {
            code: 503,
            retry_after: None,
            body: "overloaded".into(),
        }),
        LlmReply::now(LlmReplyKind::InvalidJson),
        LlmReply::now(LlmReplyKind::NoChoices),
    ]);

    let resp = complete(&http, &llm, chat("a")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], "slow down");

    let resp = complete(&http, &llm, chat("b")).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_none());
    assert_eq!(resp.text().await.unwrap(), "overloaded");

    let resp = complete(&http, &llm, chat("c")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.json::<Value>().await.is_err());

    let resp = complete(&http, &llm, chat("d")).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"], json!([]));

    llm.script(vec![LlmReply::now(LlmReplyKind::Hang)]);
    let start = Instant::now();
    let err = http
        .post(format!("{}/chat/completions", llm.base_url()))
        .timeout(Duration::from_millis(300))
        .json(&chat("e"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(llm.request_count(), 5);
}

#[tokio::test]
async fn llm_streams() {
    let llm = FakeLlm::start().await;
    let http = reqwest::Client::new();

    // A Text reply to a streaming request arrives as SSE.
    let mut req = chat("stream me");
    req["stream"] = json!(true);
    let resp = complete(&http, &llm, req.clone()).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (events, broken) = read_sse(resp).await;
    assert!(!broken);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(stream_content(&events).len() > 1);
    assert_eq!(stream_content(&events).concat(), "answer to: stream me");
    assert!(llm.requests()[0].stream);

    // Scripted chunks with a delay.
    llm.script(vec![LlmReply::now(LlmReplyKind::Stream {
        chunks: vec!["Hel".into(), "lo ".into(), "world".into()],
        chunk_delay: Duration::from_millis(100),
        break_after: None,
    })]);
    let start = Instant::now();
    let (events, broken) = read_sse(complete(&http, &llm, req.clone()).await).await;
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(!broken);
    // The final chunk has an empty delta with finish_reason "stop".
    assert_eq!(stream_content(&events), ["Hel", "lo ", "world"]);
    let last_chunk: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last_chunk["choices"][0]["finish_reason"], "stop");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    // A broken stream: two chunks, then the connection dies without [DONE].
    llm.script(vec![LlmReply::now(LlmReplyKind::Stream {
        chunks: vec!["one ".into(), "two ".into(), "three".into()],
        chunk_delay: Duration::from_millis(20),
        break_after: Some(2),
    })]);
    let (events, broken) = read_sse(complete(&http, &llm, req).await).await;
    assert!(broken, "stream should end with an error");
    assert_eq!(stream_content(&events), ["one ", "two "]);
    assert!(!events.iter().any(|e| e == "[DONE]"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(llm.in_flight(), 0);
}

#[tokio::test]
async fn llm_concurrency_is_measured() {
    let llm = FakeLlm::start().await;
    llm.set_latency(Duration::from_millis(300));
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let http = http.clone();
        let llm = llm.clone();
        tasks.push(tokio::spawn(async move {
            complete(&http, &llm, chat(&format!("q{i}"))).await.status()
        }));
    }
    assert_eq!(llm.wait_for_requests(5, Duration::from_secs(2)).await, 5);
    assert_eq!(llm.in_flight(), 5);
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(
        llm.max_in_flight() >= 5,
        "max_in_flight = {}",
        llm.max_in_flight()
    );
    assert_eq!(llm.in_flight(), 0);
}

#[tokio::test]
async fn update_ids_start_over_and_updates_are_redelivered() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    fake.restart_update_ids(50_000);
    assert_eq!(fake.push_text(42, 4200, "before the pause"), 50_000);
    let first = bot.get_updates().await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id.0, 50_000);
    assert!(bot.get_updates().offset(50_001).await.unwrap().is_empty());

    // A week later Telegram picks a lower id; the bot's offset is above it.
    fake.restart_update_ids(20_000);
    assert_eq!(fake.push_text(42, 4200, "after the pause"), 20_000);
    let second = bot.get_updates().offset(50_001).await.unwrap();
    assert_eq!(second.len(), 1, "the stale offset hides nothing");
    assert_eq!(second[0].id.0, 20_000);
    assert_eq!(message(&second[0]).text(), Some("after the pause"));

    // Redelivered as it was first sent, behind what is queued.
    assert!(fake.redeliver(50_000));
    assert!(!fake.redeliver(7), "never issued");
    let third = bot.get_updates().offset(20_001).await.unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].id.0, 50_000);
    assert_eq!(message(&third[0]).text(), Some("before the pause"));
    let none = bot.get_updates().offset(50_001).await.unwrap();
    assert!(none.is_empty(), "confirmed by the offset past it");
}

#[tokio::test]
async fn get_chat_member_answers_the_status_set() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    let group = ChatId(-100_005);
    fake.set_member_status(group.0, 7, "creator");
    fake.set_member_status(group.0, 8, "administrator");
    let owner = bot.get_chat_member(group, UserId(7)).await.unwrap();
    assert!(owner.is_owner() && owner.is_privileged());
    assert_eq!(owner.user.id, UserId(7));
    let admin = bot.get_chat_member(group, UserId(8)).await.unwrap();
    assert!(admin.is_administrator() && admin.is_privileged());
    let member = bot.get_chat_member(group, UserId(9)).await.unwrap();
    assert!(member.is_member() && !member.is_privileged());
    // The status is per chat.
    let elsewhere = bot
        .get_chat_member(ChatId(-100_006), UserId(8))
        .await
        .unwrap();
    assert!(!elsewhere.is_privileged());
    fake.set_member_status(group.0, 8, "member");
    let demoted = bot.get_chat_member(group, UserId(8)).await.unwrap();
    assert!(!demoted.is_privileged());
    assert_eq!(fake.method_calls("getChatMember"), 5);
}
