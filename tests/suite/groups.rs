//! Group chats: only what is addressed to the bot is answered or stored.

use llmgram_fakes::{BOT_FIRST_NAME, BOT_USER_ID, BOT_USERNAME};
use serde_json::json;

use crate::common::Harness;

const GROUP: i64 = -100_123;

fn group_message(id: i64, user: u64, name: &str, text: &str) -> serde_json::Value {
    json!({
        "message_id": id,
        "date": 1_700_000_000,
        "chat": {"id": GROUP, "type": "supergroup", "title": "Creators"},
        "from": {"id": user, "is_bot": false, "first_name": name},
        "text": text,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_mentions_replies_and_commands_are_answered() {
    let h = Harness::start().await;
    h.telegram
        .push_raw_message(group_message(1, 11, "Alice", "just chatting among us"));
    h.telegram.push_raw_message(group_message(
        2,
        12,
        "Bob",
        &format!("@{BOT_USERNAME} write a caption idea"),
    ));
    let replies = h.replies(GROUP, 1).await;
    assert_eq!(replies[0].text, "answer to: Bob: write a caption idea");

    let mut reply_to_bot = group_message(3, 11, "Alice", "and another one?");
    reply_to_bot["reply_to_message"] = json!({
        "message_id": replies[0].message_id,
        "date": 1_700_000_001,
        "chat": {"id": GROUP, "type": "supergroup", "title": "Creators"},
        "from": {"id": BOT_USER_ID, "is_bot": true, "first_name": BOT_FIRST_NAME, "username": BOT_USERNAME},
        "text": replies[0].text,
    });
    h.telegram.push_raw_message(reply_to_bot);
    h.telegram
        .push_raw_message(group_message(4, 12, "Bob", "/help"));
    let replies = h.replies(GROUP, 3).await;
    assert_eq!(replies[1].text, "answer to: Alice: and another one?");
    assert!(replies[2].text.contains("/reset"));

    // The unaddressed message never reached the LLM nor the history.
    let requests = h.llm.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert!(
            request
                .messages
                .iter()
                .all(|(_, c)| !c.contains("among us"))
        );
    }
    assert_eq!(
        requests[1].messages[1],
        ("user".into(), "Bob: write a caption idea".into())
    );
    h.stop().await;
}
