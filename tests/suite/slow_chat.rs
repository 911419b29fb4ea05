//! A chat whose answers take 5 s delays no other chat.

use std::time::Duration;

use llmgram_fakes::LlmReply;

use crate::common::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_chat_does_not_delay_fifty_others() {
    let h = Harness::start().await;
    h.llm.set_responder(|request| {
        let text = format!("answer to: {}", request.last_user_message());
        if request.last_user_message().contains("slow") {
            LlmReply::text_after(text, Duration::from_secs(5))
        } else {
            LlmReply::text(text)
        }
    });
    h.say(1, "slow question");
    h.llm.wait_for_requests(1, Duration::from_secs(5)).await;
    for chat in 100..150 {
        h.say(chat, "quick question");
    }
    let slow = h.replies(1, 1).await;
    for chat in 100..150 {
        let quick = h.telegram.sent_to(chat);
        assert_eq!(quick.len(), 1, "chat {chat} answered before the slow chat");
        assert!(
            quick[0].at < slow[0].at,
            "chat {chat} waited for the slow chat"
        );
    }
    h.stop().await;
}
