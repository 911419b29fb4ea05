//! Limits that delay instead of refusing: the global limits (LLM calls per
//! second, new chats per minute) queue a request until a slot frees, and an
//! open circuit breaker makes a request wait for its next probe, so an
//! innocent user never loses a message to someone else's load or to a fault
//! that has already passed.

use std::time::Duration;

use crate::common::{Harness, WAIT};

/// The shipped `[limits]` and Telegram pacing, spelled out so the harness's
/// generous test limits do not replace them.
const DEFAULT_LIMITS: &str = "limits.user_messages_per_minute = 30\n\
     limits.user_llm_per_minute = 10\n\
     limits.global_llm_per_second = 20\n\
     limits.new_chats_per_minute = 120\n\
     telegram.per_chat_rate = 1\n\
     telegram.per_chat_burst = 3\n\
     telegram.global_rate = 30\n\
     telegram.group_per_minute = 20\n";

const USERS: i64 = 20;
const MESSAGES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_global_llm_limit_is_paced_not_refused() {
    let h = Harness::start_with(DEFAULT_LIMITS).await;
    // Telegram's strict per-chat flood rule: one message a second, else 429
    // "retry after 1".
    h.telegram
        .set_chat_flood_limit(Some((Duration::from_secs(1), 1)));
    let started = tokio::time::Instant::now();
    for message in 0..MESSAGES {
        for user in 1..=USERS {
            h.say(user, &format!("u{user} m{message}"));
        }
    }
    let total = USERS as usize * MESSAGES;
    h.telegram.wait_for_sent_count(total, WAIT).await;
    let took = started.elapsed();
    // Anything extra (a second answer, a late notice) would arrive by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut answered = 0;
    let mut refused = 0;
    let mut wrong = Vec::new();
    for user in 1..=USERS {
        let texts: Vec<String> = h
            .telegram
            .sent_to(user)
            .into_iter()
            .map(|m| m.text)
            .collect();
        let want: Vec<String> = (0..MESSAGES)
            .map(|m| format!("answer to: u{user} m{m}"))
            .collect();
        answered += want.iter().filter(|w| texts.contains(w)).count();
        refused += texts
            .iter()
            .filter(|t| !t.starts_with("answer to:"))
            .count();
        if texts != want {
            wrong.push((user, texts));
        }
    }
    let violations = h.telegram.retry_after_violations();
    eprintln!(
        "figure: {USERS} users x {MESSAGES} messages under strict flood limits, default limits: \
         {answered}/{total} answered, {lost} lost, {refused} busy/slow-down replies, \
         {} sends in all, {} flood 429s, {violations} sends before retry_after, {took:.1?}",
        h.telegram.sent_count(),
        h.telegram.flood_rejections(),
        lost = total - answered,
    );
    assert!(
        wrong.is_empty(),
        "each message answered once, in order: {wrong:?}"
    );
    assert_eq!(h.telegram.sent_count(), total, "each answer exactly once");
    assert_eq!(h.llm.request_count(), total, "one LLM call per message");
    assert_eq!(violations, 0, "no send before its retry_after");
    h.stop().await;
}
