//! Several instances on one shared PostgreSQL (issue 18): real processes
//! of the binary on a real PostgreSQL, behind webhooks, with the loopback
//! fakes. Updates are posted the way Telegram and a load balancer would:
//! mostly to the instance a chat hashes to, some deliberately to another
//! one, and to a survivor while an instance is down. Every message must be
//! answered, in order, once; a repeat is only possible for a turn sent and
//! then killed before its commit (the one window no engine closes), and is
//! counted and reported.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::common::cluster::{Cluster, GRACE, LEASE, Route, SWEEP, closed_loop, repeats_around};

/// Chat `c` goes to instance `c % n`, every fifth message to the next
/// instance instead (misrouted).
fn home_or_next(n: usize) -> impl Fn(i64, usize) -> Route + Send + Sync + 'static {
    move |chat, i| {
        let home = usize::try_from(chat).unwrap() % n;
        Route::Instance(if i % 5 == 4 { (home + 1) % n } else { home })
    }
}

/// Three instances, a closed loop of chats with misrouted updates, and
/// SIGKILLs of a random instance (restarted each time): nothing is lost,
/// answers stay in order, a repeat happens only in the sent-then-killed
/// window, and a dead instance's chats are answered again within the lease,
/// the grace and a sweep (plus slack for a loaded CI machine).
/// `LLMGRAM_CLUSTER_KILLS` (default 3) sets the number of kills
/// (BENCHMARKS.md runs 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_survive_repeated_kills_with_nothing_lost() {
    let kills: usize = std::env::var("LLMGRAM_CLUSTER_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let cluster = Arc::new(Cluster::start(3).await);
    cluster.llm.set_latency(Duration::from_millis(50));
    let chats = 60;
    let messages = 4 + kills * 2;
    let killer = {
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move {
            // How many messages the bot had sent when each kill landed
            // (the victim sends nothing after it).
            let mut marks = Vec::new();
            for kill in 0..kills {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let victim = (kill * 7 + 1) % 3;
                marks.push(cluster.kill9(victim).await);
                tokio::time::sleep(Duration::from_millis(500)).await;
                cluster.spawn(victim);
            }
            marks
        })
    };
    let outcome = closed_loop(&cluster, chats, messages, home_or_next(3)).await;
    let marks = killer.await.unwrap();
    // Every repeat must straddle a kill: its first copy sent before the
    // kill landed, the repeat after (the turn was sent, then killed before
    // its commit). Counted per kill.
    let repeats = repeats_around(&cluster.telegram.sent(), &marks);
    let (per_kill, outside) = (repeats.per_mark, repeats.outside);
    let times = outcome.times();
    let max = times.max;
    eprintln!(
        "cluster: {kills} kills, {} messages, lost {}, repeated {} (sent, then killed \
         before the commit; per kill {per_kill:?}), repeated outside that window {}, {times}",
        outcome.messages(),
        outcome.lost,
        outcome.repeated,
        outside.len()
    );
    let logs = || cluster.logs();
    assert_eq!(
        outcome.lost,
        0,
        "every message is answered; logs:\n{}",
        logs()
    );
    assert!(
        outside.is_empty(),
        "answers repeated without a kill between them: {outside:?}"
    );
    // Failover: a message for a dead instance's chat waits for its lease
    // to lapse, the grace and a sweep; the rest is slack for CI.
    assert!(
        max <= LEASE + GRACE + SWEEP + Duration::from_secs(4),
        "failover took {max:?}"
    );
    cluster.stop_all().await;
}

/// An owner paused (SIGSTOP) with an answer in flight: after its lease
/// lapses and the grace, another instance takes the chat and answers the
/// pending message and the next one, in order. When the old owner wakes it
/// sends nothing (its lease is not valid), its commit would be fenced, and
/// it exits non-zero to come back under a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_wakes_up_fenced_and_sends_nothing() {
    let cluster = Cluster::start(2).await;
    cluster.llm.set_latency(Duration::from_millis(1500));
    let (_, first) = cluster.telegram.text_update(7, 7, "before the pause");
    cluster.post(0, &first).await;
    assert_eq!(
        cluster
            .llm
            .wait_for_requests(1, Duration::from_secs(10))
            .await,
        1
    );
    let paused = cluster.take_process(0).unwrap();
    paused.signal("STOP");
    cluster.llm.set_latency(Duration::from_millis(10));
    tokio::time::sleep(LEASE + GRACE + Duration::from_millis(500)).await;
    let (_, second) = cluster.telegram.text_update(7, 7, "after the pause");
    cluster.post(1, &second).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.answered(7, "answer to: after the pause") == 0 {
        assert!(
            Instant::now() < deadline,
            "the survivor did not take the chat; log:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    paused.signal("CONT");
    let code = paused.exit_code_within(Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let texts: Vec<String> = cluster
        .telegram
        .sent_to(7)
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(
        texts,
        ["answer to: before the pause", "answer to: after the pause"],
        "answered once each, in order, by the new owner"
    );
    assert_ne!(code, Some(0), "the woken owner exits to start afresh");
    let stale: String = cluster.psql("SELECT count(*) FROM llmgram_chats WHERE owner IS NOT NULL");
    assert_eq!(stale, "1", "the chat has one owner");
}
