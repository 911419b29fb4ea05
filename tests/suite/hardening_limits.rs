//! Limits that delay instead of refusing: the global limits (LLM calls per
//! second, new chats per minute) queue a request until a slot frees, and an
//! open circuit breaker makes a request wait for its next probe, so an
//! innocent user never loses a message to someone else's load or to a fault
//! that has already passed.

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use llmgram::actors::root::breaker::BreakerStatus;
use llmgram_fakes::LlmReply;

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

async fn breaker_status(h: &Harness) -> BreakerStatus {
    h.service
        .directory()
        .breaker(0)
        .status()
        .await
        .expect("breaker answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_fault_burst_a_new_users_message_is_answered_not_refused() {
    // The shipped breaker (window 20, min_calls 10, failure_rate 0.5,
    // open_for 30 s) and deadline (fallback_after 40 s); one attempt per
    // message, so each failure reaches the breaker.
    let h = Harness::start_with("llm.retry.max_attempts = 1\n").await;
    // The fault burst: 7 calls of every 10 fail with a 503.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    h.llm.set_responder(move |r| {
        if counter.fetch_add(1, Ordering::Relaxed) % 10 < 7 {
            LlmReply::status(503, None)
        } else {
            LlmReply::text(format!("answer to: {}", r.last_user_message()))
        }
    });
    for user in 1..=10 {
        h.say(user, "during the burst");
        h.replies(user, 1).await;
    }
    assert!(
        matches!(breaker_status(&h).await, BreakerStatus::Open { .. }),
        "7 failures of 10 open the breaker"
    );
    let burst_calls = h.llm.request_count();

    // The burst ends: the provider is healthy again.
    h.llm
        .set_responder(|r| LlmReply::text(format!("answer to: {}", r.last_user_message())));
    let update = h.say(100, "hello after the burst");
    let reply = h.replies(100, 1).await.remove(0);
    let took = reply
        .at
        .duration_since(h.telegram.delivered_at(update).expect("delivered"));
    eprintln!(
        "figure: after a 70 % failure burst ({burst_calls} calls, breaker open), \
         a new user's message got {:?} after {took:.1?}",
        reply.text
    );
    assert_eq!(reply.text, "answer to: hello after the burst");
    assert!(
        took < Duration::from_secs(10),
        "answered by an early probe, not after open_for: {took:?}"
    );
    assert_eq!(
        breaker_status(&h).await,
        BreakerStatus::Closed,
        "the probe closed it"
    );
    assert_eq!(
        h.llm.request_count(),
        burst_calls + 1,
        "one call: the probe"
    );
    h.stop().await;
}
