//! The fake Bot API's keyboards against teloxide: `reply_markup` recorded
//! on sends and edits, callback queries pushed and parsed,
//! `answerCallbackQuery` and `editMessageReplyMarkup` recorded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use llmgram_fakes::{FakeTelegram, button_data, button_labels};
use teloxide::ApiError;
use teloxide::RequestError;
use teloxide::prelude::*;
use teloxide::types::{InlineKeyboardButton, InlineKeyboardMarkup, UpdateKind};

fn bot(fake: &FakeTelegram) -> Bot {
    Bot::new("123:abc").set_api_url(fake.api_url().parse().unwrap())
}

fn keyboard(label: &str, data: &str) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new([[InlineKeyboardButton::callback(label, data)]])
}

#[tokio::test]
async fn keyboards_are_recorded_and_edits_replace_or_remove_them() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    let sent = bot
        .send_message(ChatId(5), "hello")
        .reply_markup(keyboard("⏹ Stop", "s1:5"))
        .await
        .unwrap();
    let record = &fake.sent_to(5)[0];
    let markup = record.reply_markup.as_ref().expect("markup recorded");
    assert_eq!(button_data(markup), ["s1:5"]);
    assert_eq!(button_labels(markup), ["⏹ Stop"]);

    // Same text, another keyboard: a real change.
    bot.edit_message_text(ChatId(5), sent.id, "hello")
        .reply_markup(keyboard("🔄 Regenerate", "r1:ff:5"))
        .await
        .unwrap();
    let edit = fake.edits().pop().unwrap();
    assert_eq!(
        button_data(edit.reply_markup.as_ref().unwrap()),
        ["r1:ff:5"]
    );
    // The same text and keyboard again: not modified.
    let again = bot
        .edit_message_text(ChatId(5), sent.id, "hello")
        .reply_markup(keyboard("🔄 Regenerate", "r1:ff:5"))
        .await;
    assert!(matches!(
        again,
        Err(RequestError::Api(ApiError::MessageNotModified))
    ));
    // An edit without a keyboard removes it.
    bot.edit_message_text(ChatId(5), sent.id, "hello")
        .await
        .unwrap();
    assert_eq!(fake.current_markup(5, i64::from(sent.id.0)), None);

    bot.edit_message_reply_markup(ChatId(5), sent.id)
        .reply_markup(keyboard("x", "p1:x"))
        .await
        .unwrap();
    let edits = fake.markup_edits();
    assert_eq!(edits.len(), 1);
    assert_eq!(
        button_data(edits[0].reply_markup.as_ref().unwrap()),
        ["p1:x"]
    );
    assert!(fake.current_markup(5, i64::from(sent.id.0)).is_some());
}

#[tokio::test]
async fn pushed_callback_queries_parse_and_answers_are_recorded() {
    let fake = FakeTelegram::start().await;
    let bot = bot(&fake);
    let sent = bot.send_message(ChatId(-100), "answer").await.unwrap();
    let (update_id, query_id) = fake.push_callback(-100, 77, i64::from(sent.id.0), "r1:ab:77");
    let updates = bot.get_updates().await.unwrap();
    assert_eq!(updates.len(), 1);
    assert_eq!(i64::from(updates[0].id.0), update_id);
    let UpdateKind::CallbackQuery(query) = &updates[0].kind else {
        panic!("not a callback query: {:?}", updates[0].kind);
    };
    assert_eq!(query.id.0, query_id);
    assert_eq!(query.from.id.0, 77);
    assert_eq!(query.data.as_deref(), Some("r1:ab:77"));
    let message = query.message.as_ref().unwrap();
    assert_eq!(message.id(), sent.id);
    assert_eq!(message.chat().id, ChatId(-100));

    bot.answer_callback_query(query.id.clone())
        .text("not your button")
        .show_alert(true)
        .await
        .unwrap();
    bot.answer_callback_query(query.id.clone()).await.unwrap();
    let answers = fake.callback_answers();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].query_id, query_id);
    assert_eq!(answers[0].text.as_deref(), Some("not your button"));
    assert!(answers[0].show_alert);
    assert_eq!(answers[1].text, None);
    assert!(!answers[1].show_alert);
}
