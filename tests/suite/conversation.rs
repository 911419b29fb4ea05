//! A user gets the LLM's answer; the next request carries the earlier turns;
//! `/reset` clears them.

use crate::common::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_remember_earlier_turns_until_reset() {
    let h = Harness::start().await;

    h.say(10, "hello there");
    let replies = h.replies(10, 1).await;
    assert_eq!(replies[0].text, "answer to: hello there");

    h.say(10, "and again");
    h.replies(10, 2).await;
    let requests = h.llm.requests();
    assert_eq!(requests.len(), 2);
    let second: Vec<(&str, &str)> = requests[1]
        .messages
        .iter()
        .map(|(role, content)| (role.as_str(), content.as_str()))
        .collect();
    assert_eq!(second[0].0, "system");
    assert_eq!(
        &second[1..],
        [
            ("user", "hello there"),
            ("assistant", "answer to: hello there"),
            ("user", "and again"),
        ]
    );
    assert_eq!(requests[1].model, "llama-3.1-8b-instant");

    h.say(10, "/reset");
    let replies = h.replies(10, 3).await;
    assert!(replies[2].text.contains("forgotten"), "{}", replies[2].text);
    assert_eq!(h.llm.request_count(), 2, "/reset must not call the LLM");

    h.say(10, "fresh start");
    h.replies(10, 4).await;
    let third = &h.llm.requests()[2];
    assert_eq!(third.messages.len(), 2, "system + the new message only");
    assert_eq!(third.messages[1], ("user".into(), "fresh start".into()));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_help_answer_without_the_llm_in_the_users_language() {
    let h = Harness::start().await;
    h.say(11, "/start");
    h.telegram.push_text_lang(12, 12, "/help", "ru");
    let start = h.replies(11, 1).await;
    let help = h.replies(12, 1).await;
    assert!(start[0].text.contains("/help"), "{}", start[0].text);
    assert!(help[0].text.contains("Напишите"), "{}", help[0].text);
    assert_eq!(h.llm.request_count(), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_llm_gets_a_fallback_reply_not_silence() {
    use llmgram_fakes::{LlmReply, LlmReplyKind};
    let h = Harness::start().await;
    // Each message exhausts its 3 attempts, or meets a Retry-After past the cap.
    let mut script = vec![LlmReply::status(500, None); 3];
    script.extend(vec![LlmReply::now(LlmReplyKind::InvalidJson); 3]);
    script.push(LlmReply::status(429, Some(60)));
    h.llm.script(script);
    for text in ["one", "two", "three"] {
        h.say(13, text);
    }
    let replies = h.replies(13, 3).await;
    assert!(
        replies[0].text.contains("can't answer"),
        "{}",
        replies[0].text
    );
    assert!(
        replies[1].text.contains("can't answer"),
        "{}",
        replies[1].text
    );
    assert!(replies[2].text.contains("busy"), "{}", replies[2].text);
    assert_eq!(h.llm.request_count(), 7);

    // The failed messages stay in the history as user turns.
    h.say(13, "four");
    h.replies(13, 4).await;
    let last = h.llm.requests().pop().unwrap();
    let users: Vec<&str> = last
        .messages
        .iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, content)| content.as_str())
        .collect();
    assert_eq!(users, ["one", "two", "three", "four"]);

    // /retry answers the last message again, replacing its answer.
    h.say(13, "/retry");
    let replies = h.replies(13, 5).await;
    assert_eq!(replies[4].text, "answer to: four");
    let again = h.llm.requests().pop().unwrap();
    assert_eq!(
        again.messages, last.messages,
        "the same question, same context"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_shows_typing() {
    let h = Harness::start_with("telegram.typing_interval = \"300ms\"\n").await;
    h.llm.set_latency(std::time::Duration::from_millis(1200));
    h.say(14, "take your time");
    h.replies(14, 1).await;
    let typing = h.telegram.chat_actions_to(14);
    assert!(
        typing.len() >= 2,
        "expected repeated typing, got {}",
        typing.len()
    );
    assert!(typing.iter().all(|a| a.action == "typing"));

    // A fast answer does not bother with the indicator.
    h.llm.set_latency(std::time::Duration::ZERO);
    h.say(15, "quick");
    h.replies(15, 1).await;
    assert!(h.telegram.chat_actions_to(15).is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_is_trimmed_to_the_context_window_oldest_first() {
    let h = Harness::start_with("llm.context_tokens = 400\nllm.max_tokens = 100\n").await;
    for i in 0..10 {
        h.say(16, &format!("{i} {}", "long words ".repeat(27)));
        h.replies(16, i + 1).await;
    }
    let requests = h.llm.requests();
    let last = requests.last().unwrap();
    let tokens: usize = last
        .messages
        .iter()
        .map(|(_, c)| c.chars().count().div_ceil(4))
        .sum();
    assert!(tokens <= 300, "{tokens} estimated tokens sent");
    assert_eq!(last.messages[0].0, "system");
    assert_eq!(
        last.messages[1].0, "user",
        "never an assistant message first"
    );
    assert!(
        last.last_user_message().starts_with("9 "),
        "the new message is kept"
    );
    assert!(last.messages.len() < 2 + 2 * 9, "older turns were dropped");
    // The stored history is not cut: only what is sent to the model.
    assert!(requests[2].messages.len() > 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_slow_answer_and_the_next_message_is_answered() {
    use std::time::Duration;
    let h = Harness::start().await;
    h.llm.set_latency(Duration::from_secs(5));
    h.say(17, "take forever");
    h.llm.wait_for_requests(1, Duration::from_secs(5)).await;
    let asked = std::time::Instant::now();
    h.say(17, "/cancel");
    let replies = h.replies(17, 1).await;
    assert!(
        replies[0].text.starts_with("Cancelled"),
        "{}",
        replies[0].text
    );
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "cancelled at once"
    );

    h.llm.set_latency(Duration::ZERO);
    h.say(17, "quick one");
    let replies = h.replies(17, 2).await;
    assert_eq!(replies[1].text, "answer to: quick one");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.telegram.sent_to(17).len(),
        2,
        "/cancel adds no second notice"
    );

    h.say(17, "/cancel");
    assert!(
        h.replies(17, 3).await[2]
            .text
            .contains("no answer in progress")
    );
    h.stop().await;
}
