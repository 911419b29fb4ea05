//! 200 chats × 5 messages at once: every request and every reply stays in its
//! own chat, none missing, none duplicated.

use std::collections::HashMap;

use crate::common::{Harness, WAIT};

const CHATS: i64 = 200;
const MESSAGES: usize = 5;

fn marker(chat: i64, message: usize) -> String {
    format!("<chat {chat} message {message}>")
}

fn chat_of(text: &str) -> Option<i64> {
    let start = text.find("<chat ")? + "<chat ".len();
    let rest = &text[start..];
    rest[..rest.find(' ')?].parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_chats_never_mix() {
    let h = Harness::start().await;
    let pushers: Vec<_> = (1..=CHATS)
        .map(|chat| {
            let telegram = h.telegram.clone();
            tokio::spawn(async move {
                for message in 0..MESSAGES {
                    telegram.push_text(chat, chat as u64, &marker(chat, message));
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for pusher in pushers {
        pusher.await.unwrap();
    }
    let total = CHATS as usize * MESSAGES;
    let sent = h.telegram.wait_for_sent_count(total, WAIT).await;
    assert_eq!(sent, total, "every message answered");

    // Every LLM request of chat c holds only c's markers, and only its own
    // earlier turns, in order.
    let requests = h.llm.requests();
    assert_eq!(requests.len(), total);
    for request in &requests {
        let owner = chat_of(request.last_user_message()).expect("marker");
        for (role, content) in &request.messages[1..] {
            assert_eq!(
                chat_of(content),
                Some(owner),
                "{role} message {content:?} in chat {owner}"
            );
        }
    }

    // Every chat got exactly its own 5 answers, in order, nothing else.
    let mut per_chat: HashMap<i64, Vec<String>> = HashMap::new();
    for message in h.telegram.sent() {
        per_chat
            .entry(message.chat_id)
            .or_default()
            .push(message.text);
    }
    assert_eq!(per_chat.len(), CHATS as usize);
    for chat in 1..=CHATS {
        let want: Vec<String> = (0..MESSAGES)
            .map(|m| format!("answer to: {}", marker(chat, m)))
            .collect();
        assert_eq!(per_chat[&chat], want, "chat {chat}");
    }
    h.stop().await;
}
