//! Buttons (issue 16, item 3): Regenerate under each answer, Stop on an
//! answer being written, the `/persona` picker; every press answered with
//! `answerCallbackQuery`, authorised, idempotent and durable.

use std::time::Duration;

use llmgram::config::Config;
use llmgram_fakes::{
    FakeLlm, FakeTelegram, LlmReply, LlmReplyKind, SentMessage, button_data, button_labels,
};
use serde_json::json;

use crate::common::process::BotProcess;
use crate::common::{Harness, WAIT, eventually, settled_transcript};

const GROUP: i64 = -100_777;
const ALICE: u64 = 41;
const BOB: u64 = 42;

/// The callback data of a sent message's buttons.
fn data_of(message: &SentMessage) -> Vec<String> {
    message
        .reply_markup
        .as_ref()
        .map(button_data)
        .unwrap_or_default()
}

/// The Regenerate button's data under `message`.
fn regenerate_of(message: &SentMessage) -> String {
    data_of(message)
        .into_iter()
        .find(|data| data.starts_with("r1:"))
        .unwrap_or_else(|| panic!("no Regenerate under {message:?}"))
}

/// The current Regenerate data of the bot's message (after edits).
fn current_regenerate(telegram: &FakeTelegram, chat: i64, message_id: i64) -> Option<String> {
    let markup = telegram.current_markup(chat, message_id)?;
    button_data(&markup)
        .into_iter()
        .find(|data| data.starts_with("r1:"))
}

async fn answers(telegram: &FakeTelegram, n: usize) -> Vec<llmgram_fakes::CallbackAnswer> {
    assert!(
        telegram.wait_for_callback_answers(n, WAIT).await,
        "{n} callback answers, got {:?}",
        telegram.callback_answers()
    );
    telegram.callback_answers()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regenerate_replaces_the_answer_and_the_history_keeps_one() {
    let h = Harness::start().await;
    h.llm.script(vec![LlmReply::text("first answer")]);
    h.say(1, "tell me a joke");
    let answer = h.replies(1, 1).await[0].clone();
    assert_eq!(answer.text, "first answer");
    let data = regenerate_of(&answer);
    assert_eq!(
        button_labels(answer.reply_markup.as_ref().unwrap()),
        ["🔄 Regenerate"]
    );

    h.llm.script(vec![LlmReply::text("second answer")]);
    let (_, query) = h.telegram.push_callback(1, 1, answer.message_id, &data);
    eventually("the answer edited in place", || async {
        h.telegram
            .edits()
            .iter()
            .any(|e| e.message_id == answer.message_id && e.text == "second answer")
    })
    .await;
    assert_eq!(h.telegram.sent_to(1).len(), 1, "no new message");
    let answered = answers(&h.telegram, 1).await;
    assert_eq!(answered[0].query_id, query);
    // The regenerated answer can be regenerated in turn: a new id.
    let new = current_regenerate(&h.telegram, 1, answer.message_id).unwrap();
    assert_ne!(new, data);
    // The request asked the same question again, without the old answer.
    let regenerated = h.llm.requests().pop().unwrap();
    let texts: Vec<&str> = regenerated.messages[1..]
        .iter()
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(texts, ["tell me a joke"]);

    // The history keeps the new answer only.
    h.say(1, "another");
    h.replies(1, 2).await;
    let request = h.llm.requests().pop().unwrap();
    let texts: Vec<&str> = request.messages[1..]
        .iter()
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(texts, ["tell me a joke", "second answer", "another"]);

    // The older answer's button now refuses, and nothing is asked.
    let requests = h.llm.request_count();
    h.telegram.push_callback(1, 1, answer.message_id, &new);
    let answered = answers(&h.telegram, 2).await;
    assert_eq!(
        answered[1].text.as_deref(),
        Some("Only the latest answer can be regenerated.")
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.llm.request_count(), requests);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_tapped_regenerate_makes_one_llm_call() {
    let h = Harness::start().await;
    h.say(2, "a question");
    let answer = h.replies(2, 1).await[0].clone();
    let data = regenerate_of(&answer);
    // The same text again: only the press order tells the second tap apart.
    h.llm.set_latency(Duration::from_millis(300));
    h.telegram.push_callback(2, 2, answer.message_id, &data);
    h.telegram.push_callback(2, 2, answer.message_id, &data);
    let answered = answers(&h.telegram, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.llm.request_count(), 2, "one question, one regeneration");
    assert_eq!(answered[1].text.as_deref(), Some("Already done."));
    assert_eq!(h.telegram.callback_answers().len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_mid_stream_keeps_what_was_shown() {
    let h = Harness::start_with("llm.stream = true\ntelegram.edit_interval = \"200ms\"\n").await;
    let chunks: Vec<String> = (0..100).map(|i| format!("w{i} ")).collect();
    h.llm.script(vec![LlmReply::now(LlmReplyKind::Stream {
        chunks,
        chunk_delay: Duration::from_millis(50),
        break_after: None,
    })]);
    h.say(3, "long answer please");
    eventually("the stream to show a few words", || {
        let shown = h
            .telegram
            .transcript(3)
            .first()
            .is_some_and(|(_, text)| text.contains("w3"));
        async move { shown }
    })
    .await;
    let live = h.telegram.sent_to(3)[0].clone();
    let stop = data_of(&live);
    assert_eq!(stop, ["s1:3"], "Stop on the live message");
    h.telegram.push_callback(3, 3, live.message_id, &stop[0]);
    let shown = settled_transcript(&h, 3, 1).await;
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(shown[0].starts_with("w0 w1"), "{shown:?}");
    assert!(!shown[0].contains("w99"), "the stream stopped: {shown:?}");
    let answered = answers(&h.telegram, 1).await;
    assert_eq!(answered[0].text.as_deref(), Some("Stopped."));
    // Stop is gone with the stream (the question stays for /retry).
    assert_eq!(h.telegram.current_markup(3, live.message_id), None);
    h.stop().await;
}

fn group_message(id: i64, user: u64, text: &str) -> serde_json::Value {
    json!({
        "message_id": id,
        "date": 1_700_000_000,
        "chat": {"id": GROUP, "type": "supergroup", "title": "Team"},
        "from": {"id": user, "is_bot": false, "first_name": "Alice", "language_code": "en"},
        "text": text,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_members_press_in_a_group_is_refused() {
    let h = Harness::start().await;
    h.telegram.push_raw_message(group_message(
        900,
        ALICE,
        &format!("@{} what is rust?", llmgram_fakes::BOT_USERNAME),
    ));
    let answer = h.replies(GROUP, 1).await[0].clone();
    let data = regenerate_of(&answer);
    assert!(data.ends_with(&format!(":{ALICE}")), "{data}");
    let requests = h.llm.request_count();
    h.telegram
        .push_callback(GROUP, BOB, answer.message_id, &data);
    let answered = answers(&h.telegram, 1).await;
    assert_eq!(
        answered[0].text.as_deref(),
        Some("This button is not yours.")
    );
    assert!(answered[0].show_alert);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.llm.request_count(), requests);
    assert!(h.telegram.edits().is_empty());

    // A group administrator may.
    h.telegram.set_member_status(GROUP, BOB, "administrator");
    h.telegram
        .push_callback(GROUP, BOB, answer.message_id, &data);
    answers(&h.telegram, 2).await;
    h.llm.wait_for_requests(requests + 1, WAIT).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_data_is_answered_and_nothing_else() {
    let h = Harness::start().await;
    h.say(4, "hi");
    let answer = h.replies(4, 1).await[0].clone();
    for data in ["", "r1:zz", "x9:1", "p1:", "m1:99"] {
        h.telegram.push_callback(4, 4, answer.message_id, data);
    }
    let answered = answers(&h.telegram, 5).await;
    for answer in &answered {
        assert_eq!(answer.text.as_deref(), Some("This button no longer works."));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.llm.request_count(), 1);
    assert_eq!(h.telegram.sent_to(4).len(), 1);
    assert!(h.telegram.edits().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persona_picked_by_button_is_the_system_prompt_byte_for_byte() {
    let h = Harness::start().await;
    let config = Config::from_defaults_with("").unwrap();
    let fans = config.persona("fan_replies").unwrap();
    h.say(5, "/persona");
    let picker = h.replies(5, 1).await[0].clone();
    let data = data_of(&picker);
    assert!(data.contains(&"p1:fan_replies".to_owned()), "{data:?}");
    let labels = button_labels(picker.reply_markup.as_ref().unwrap());
    assert!(labels.iter().any(|l| l.ends_with('✓')), "{labels:?}");

    h.telegram
        .push_callback(5, 5, picker.message_id, "p1:fan_replies");
    let replies = h.replies(5, 2).await;
    assert_eq!(replies[1].text, "Done: I now answer as fan_replies.");
    answers(&h.telegram, 1).await;
    h.say(5, "a fan says hi");
    h.replies(5, 3).await;
    let request = h.llm.requests().pop().unwrap();
    assert_eq!(request.messages[0].0, "system");
    assert_eq!(
        request.messages[0].1.as_bytes(),
        fans.system_prompt.as_bytes()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regenerate_admitted_before_sigkill_acts_once_after_restart() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let bot = BotProcess::start(&telegram, &llm, &data).await;
    llm.script(vec![LlmReply::text("before the kill")]);
    telegram.push_text(6, 6, "a question");
    let answer = telegram.wait_for_sent_to(6, 1, WAIT).await[0].clone();
    let regenerate = regenerate_of(&answer);
    // The turn is committed right after sending.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The regeneration never finishes before the kill.
    llm.set_latency(Duration::from_secs(30));
    telegram.push_callback(6, 6, answer.message_id, &regenerate);
    assert_eq!(llm.wait_for_requests(2, WAIT).await, 2, "{}", bot.log());
    bot.kill9().await;

    llm.set_latency(Duration::ZERO);
    llm.script(vec![LlmReply::text("after the restart")]);
    let bot = BotProcess::start(&telegram, &llm, &data).await;
    eventually("the answer regenerated after the restart", || async {
        telegram
            .edits()
            .iter()
            .any(|e| e.message_id == answer.message_id && e.text == "after the restart")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(llm.request_count(), 3, "acted on once after the restart");
    assert_eq!(telegram.sent_to(6).len(), 1, "no new message");
    // Every press is answered (the replayed one may have expired on
    // Telegram; the fake accepts it).
    assert!(!telegram.callback_answers().is_empty());
    bot.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regenerate_over_the_llm_limit_is_answered_with_the_refusal() {
    let h = Harness::start_with("limits.user_llm_per_minute = 1\n").await;
    h.say(7, "a question");
    let answer = h.replies(7, 1).await[0].clone();
    h.telegram
        .push_callback(7, 7, answer.message_id, &regenerate_of(&answer));
    let answered = answers(&h.telegram, 1).await;
    let text = answered[0].text.clone().unwrap_or_default();
    assert!(text.contains("too fast"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.llm.request_count(), 1, "no LLM call");
    assert!(h.telegram.edits().is_empty());
    assert_eq!(h.telegram.sent_to(7).len(), 1, "no message either");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_picked_by_button_is_the_chats_model() {
    let h = Harness::start().await;
    let config = Config::from_defaults_with("").unwrap();
    let wanted = config.llm.user_models[1].clone();
    h.say(8, "/model");
    let picker = h.replies(8, 1).await[0].clone();
    assert_eq!(data_of(&picker), ["m1:0", "m1:1"]);
    h.telegram.push_callback(8, 8, picker.message_id, "m1:1");
    let replies = h.replies(8, 2).await;
    assert_eq!(replies[1].text, format!("This chat now uses {wanted}."));
    answers(&h.telegram, 1).await;
    h.say(8, "hello");
    h.replies(8, 3).await;
    let request = h.llm.requests().pop().unwrap();
    assert_eq!(request.body["model"].as_str(), Some(wanted.as_str()));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_stream_trades_stop_for_regenerate() {
    let h = Harness::start_with("llm.stream = true\ntelegram.edit_interval = \"100ms\"\n").await;
    let chunks: Vec<String> = (0..20).map(|i| format!("w{i} ")).collect();
    h.llm.script(vec![LlmReply::now(LlmReplyKind::Stream {
        chunks,
        chunk_delay: Duration::from_millis(30),
        break_after: None,
    })]);
    h.say(9, "stream it");
    let live = h.replies(9, 1).await[0].clone();
    assert_eq!(data_of(&live), ["s1:9"]);
    eventually("Regenerate in place of Stop", || async {
        current_regenerate(&h.telegram, 9, live.message_id).is_some()
    })
    .await;
    let shown = settled_transcript(&h, 9, 1).await;
    assert!(shown[0].contains("w19"), "{shown:?}");
    assert_eq!(h.telegram.sent_to(9).len(), 1);
    h.stop().await;
}
