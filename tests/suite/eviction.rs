//! Idle sessions are evicted and come back on the next message.

use crate::common::{Harness, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_evicted_and_recreated() {
    let h = Harness::start_with(
        "session.idle_timeout = \"300ms\"\nsession.sweep_interval = \"50ms\"\n",
    )
    .await;
    h.say(50, "first");
    h.replies(50, 1).await;
    let stats = h.service.session_stats().await.unwrap();
    assert_eq!(stats.live, 1);

    eventually("eviction", || async {
        let stats = h.service.session_stats().await.unwrap();
        stats.live == 0 && stats.evicted == 1
    })
    .await;

    h.say(50, "second");
    let replies = h.replies(50, 2).await;
    assert_eq!(replies[1].text, "answer to: second");
    eventually("the second turn to finish", || async {
        let stats = h.service.session_stats().await.unwrap();
        (stats.live, stats.pending, stats.evicted) == (1, 0, 1)
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_is_not_evicted() {
    let h = Harness::start_with(
        "session.idle_timeout = \"100ms\"\nsession.sweep_interval = \"20ms\"\n",
    )
    .await;
    // Each answer takes longer than the idle timeout: the session must stay
    // while it has work, and no message may be lost.
    h.llm.set_latency(std::time::Duration::from_millis(300));
    for i in 0..3 {
        h.say(51, &format!("m{i}"));
    }
    let replies = h.replies(51, 3).await;
    let texts: Vec<&str> = replies.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, ["answer to: m0", "answer to: m1", "answer to: m2"]);
    // All three were answered by one session with the history intact.
    assert_eq!(h.llm.requests()[2].messages.len(), 6);
    h.stop().await;
}
