//! Actors killed under load are restarted by their supervisor, one at a
//! time, and nothing a user sent is lost.

use std::time::Duration;

use llmgram::actors::Child;
use ractor::ActorCell;

use crate::common::{Harness, eventually};

fn cell(h: &Harness, child: Child) -> ActorCell {
    ractor::registry::where_is(h.service.directory().name(child)).expect("child is running")
}

async fn restarts_of(h: &Harness, child: Child) -> (bool, u64) {
    let status = h.service.tree_status().await.expect("root answers");
    let line = status.children.iter().find(|c| c.child == child).unwrap();
    (line.alive, line.restarts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_llm_pool_mid_request_loses_nothing() {
    let h = Harness::start().await;
    h.llm.set_latency(Duration::from_millis(500));
    h.say(60, "during the crash");
    h.llm.wait_for_requests(1, Duration::from_secs(5)).await;
    cell(&h, Child::LlmPool).kill();

    let replies = h.replies(60, 1).await;
    assert_eq!(replies[0].text, "answer to: during the crash");
    eventually("llm pool restarted", || async {
        restarts_of(&h, Child::LlmPool).await == (true, 1)
    })
    .await;

    h.say(60, "after the crash");
    assert_eq!(h.replies(60, 2).await[1].text, "answer to: after the crash");
    // Other children were left alone.
    assert_eq!(restarts_of(&h, Child::Outbox).await, (true, 0));
    assert_eq!(restarts_of(&h, Child::SessionSup).await, (true, 0));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_outbox_loses_no_reply() {
    let h = Harness::start().await;
    h.llm.set_latency(Duration::from_millis(300));
    h.say(61, "one");
    h.llm.wait_for_requests(1, Duration::from_secs(5)).await;
    // The answer is handed to the outbox while it is being replaced.
    cell(&h, Child::Outbox).kill();
    h.say(61, "two");
    let replies = h.replies(61, 2).await;
    let texts: Vec<&str> = replies.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, ["answer to: one", "answer to: two"]);
    assert_eq!(restarts_of(&h, Child::Outbox).await, (true, 1));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_is_replaced_and_its_updates_redelivered() {
    let h = Harness::start().await;
    h.llm.set_latency(Duration::from_millis(400));
    h.say(62, "first");
    h.say(62, "second");
    h.llm.wait_for_requests(1, Duration::from_secs(5)).await;
    let sessions = cell(&h, Child::SessionSup).get_children();
    assert_eq!(sessions.len(), 1);
    sessions[0].kill();

    let replies = h.replies(62, 2).await;
    let texts: Vec<&str> = replies.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, ["answer to: first", "answer to: second"]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.telegram.sent_to(62).len(), 2, "no duplicate answers");
    let stats = h.service.session_stats().await.unwrap();
    assert_eq!((stats.restarted, stats.pending, stats.live), (1, 0, 1));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_supervisor_is_restarted_and_serves_again() {
    let h = Harness::start().await;
    h.say(63, "before");
    h.replies(63, 1).await;
    // Killed once the turn is committed: a kill between sending and
    // committing may repeat that one answer (see supervision.md).
    eventually("the turn to be committed", || async {
        h.service
            .session_stats()
            .await
            .is_some_and(|s| s.pending == 0)
    })
    .await;
    cell(&h, Child::SessionSup).kill();
    eventually("session supervisor restarted", || async {
        restarts_of(&h, Child::SessionSup).await == (true, 1)
    })
    .await;
    h.say(63, "after");
    assert_eq!(h.replies(63, 2).await[1].text, "answer to: after");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_storm_stops_the_service_with_an_error() {
    let h =
        Harness::start_with("supervision.max_restarts = 2\nsupervision.window = \"1m\"\n").await;
    for round in 1..=2 {
        cell(&h, Child::LlmPool).kill();
        eventually("pool back", || async {
            restarts_of(&h, Child::LlmPool).await == (true, round)
        })
        .await;
    }
    cell(&h, Child::LlmPool).kill();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        h.service.run_until(std::future::pending()),
    )
    .await
    .expect("the service stops by itself");
    let error = outcome.expect_err("a restart storm is an error");
    assert!(error.to_string().contains("llm_pool"), "{error}");
}

/// A delivery outlives the outbox that started it. When the session
/// supervisor and then the outbox restart while an answer is being sent, the
/// new session must wait for that send to commit before it loads the chat,
/// or it answers the same message again (found by the chaos benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_in_flight_across_session_sup_and_outbox_restarts_is_sent_once() {
    let h = Harness::start().await;
    // The answer's send waits 2 s for Telegram's flood limit.
    h.telegram
        .fail_next_sends(1, llmgram_fakes::TelegramFault::RetryAfter(2));
    h.say(90, "only once");
    eventually("the send to be refused once", || {
        let refused = h.telegram.method_calls("sendMessage") >= 1;
        async move { refused }
    })
    .await;
    // The session dies with its supervisor; the update is replayed to a new
    // session, which flushes the chat's outbox queue...
    assert!(llmgram::chaos::panic_child(
        h.service.directory(),
        Child::SessionSup
    ));
    eventually("session_sup to restart", || async {
        restarts_of(&h, Child::SessionSup).await == (true, 1)
    })
    .await;
    // ...whose queue then dies with the outbox, while the send task waits.
    assert!(llmgram::chaos::panic_child(
        h.service.directory(),
        Child::Outbox
    ));
    eventually("the outbox to restart", || async {
        restarts_of(&h, Child::Outbox).await == (true, 1)
    })
    .await;
    let replies = h.replies(90, 1).await;
    assert_eq!(replies[0].text, "answer to: only once");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h.telegram.sent_to(90).len(), 1, "answered exactly once");
    assert_eq!(
        h.llm.request_count(),
        1,
        "the new session did not ask again"
    );
    h.stop().await;
}
