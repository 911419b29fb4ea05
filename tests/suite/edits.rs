//! Edited messages: an edit of the last answered text, within
//! `session.edit_window`, is answered again in place of the earlier answer;
//! older edits are ignored.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Harness, eventually};

/// A private text message with an explicit id.
fn message(chat_id: i64, id: i64, text: &str) -> Value {
    json!({
        "message_id": id,
        "date": 1_700_000_000,
        "chat": {"id": chat_id, "type": "private", "first_name": "Ann"},
        "from": {"id": chat_id, "is_bot": false, "first_name": "Ann", "language_code": "en"},
        "text": text,
    })
}

fn edit(h: &Harness, chat_id: i64, id: i64, text: &str) {
    let mut edited = message(chat_id, id, text);
    edited["edit_date"] = json!(1_700_000_060);
    h.telegram
        .push_raw_update(&format!("\"edited_message\":{edited}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_last_message_is_answered_again_in_place() {
    let h = Harness::start().await;
    h.telegram
        .push_raw_message(message(70, 500, "what is 2+2?"));
    let first = h.replies(70, 1).await[0].clone();

    edit(&h, 70, 500, "what is 3+3?");
    eventually("the answer edited in place", || async {
        h.telegram
            .edits()
            .iter()
            .any(|e| e.message_id == first.message_id && e.text == "answer to: what is 3+3?")
    })
    .await;
    assert_eq!(h.telegram.sent_to(70).len(), 1, "no new message");

    // The history holds the edited turn, not both.
    h.say(70, "and more?");
    h.replies(70, 2).await;
    let request = h.llm.requests().pop().unwrap();
    let texts: Vec<&str> = request.messages.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        texts[1..],
        ["what is 3+3?", "answer to: what is 3+3?", "and more?"],
        "{texts:?}"
    );

    // The user moved on: editing the first message now changes nothing.
    let requests = h.llm.request_count();
    edit(&h, 70, 500, "what is 4+4?");
    h.say(70, "ping");
    h.replies(70, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.llm.request_count(),
        requests + 1,
        "only the ping was asked"
    );
    assert_eq!(h.telegram.sent_to(70).len(), 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_past_the_window_are_ignored() {
    let h = Harness::start_with("session.edit_window = \"0s\"\n").await;
    h.telegram.push_raw_message(message(71, 9, "first"));
    h.replies(71, 1).await;
    edit(&h, 71, 9, "first, edited");
    h.say(71, "second");
    h.replies(71, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.telegram.edits().is_empty());
    assert_eq!(h.llm.request_count(), 2);
    h.stop().await;
}
