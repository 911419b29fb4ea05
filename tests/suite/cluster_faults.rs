//! Fault scenarios of several instances on one shared PostgreSQL (issue
//! 18, item 6), with real processes: behind a real HAProxy with an
//! instance SIGKILLed, a rolling SIGTERM restart, out-of-order and
//! duplicated webhook deliveries, a database restart, and (where network
//! namespaces can be made) an instance cut off from the database. Each
//! prints its figures in one line (BENCHMARKS.md copies them).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::common::cluster::{
    Cluster, GRACE, LEASE, Route, SEND_MARGIN, SWEEP, Times, closed_loop, repeats_around,
};

/// Chat `c` goes to instance `c % n`, every fifth message to the next
/// instance instead (misrouted).
fn home_or_next(n: usize) -> impl Fn(i64, usize) -> Route + Send + Sync + 'static {
    move |chat, i| {
        let home = usize::try_from(chat).unwrap() % n;
        Route::Instance(if i % 5 == 4 { (home + 1) % n } else { home })
    }
}

/// Three instances behind HAProxy (consistent hashing on the chat id,
/// health checks on `/readyz`), a closed loop of 100 chats posted through
/// it, one message in ten posted straight to an instance regardless of
/// routing, and one instance SIGKILLed mid-run and started again 2 s later:
/// nothing lost, answers in order, repeats only straddling the kill. While
/// the victim is down a listener on its webhook port counts what HAProxy
/// still sends there: nothing once its health checks failed (fall 2 ×
/// 200 ms, checked here from 1.2 s after the kill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_a_killed_instance_loses_nothing() {
    let Some(cluster) = Cluster::start_behind_haproxy(3).await else {
        return;
    };
    let cluster = Arc::new(cluster);
    cluster.llm.set_latency(Duration::from_millis(50));
    let (chats, messages) = (100, 8);
    let victim = 1;
    let killer = {
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let mark = cluster.kill9(victim).await;
            let killed = Instant::now();
            // The victim's webhook port, taken over: a connection is
            // accepted and closed at once (HAProxy retries elsewhere); one
            // arriving after the health checks had time to fail counts.
            let spy = tokio::net::TcpListener::bind(("127.0.0.1", cluster.nodes[victim].port))
                .await
                .expect("the dead instance's port is free");
            let late = Arc::new(AtomicUsize::new(0));
            let spying = {
                let late = Arc::clone(&late);
                tokio::spawn(async move {
                    while let Ok((stream, _)) = spy.accept().await {
                        if killed.elapsed() >= Duration::from_millis(1200) {
                            late.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(stream);
                    }
                })
            };
            tokio::time::sleep(Duration::from_secs(2)).await;
            spying.abort();
            let _ = spying.await;
            cluster.launch(victim).await;
            (mark, late.load(Ordering::Relaxed))
        })
    };
    let outcome = closed_loop(&cluster, chats, messages, |chat, i| {
        if i % 10 == 9 {
            // Straight to an instance, whatever the routing says.
            Route::Instance(usize::try_from(chat).unwrap() % 3)
        } else {
            Route::Proxy
        }
    })
    .await;
    let (mark, late) = killer.await.unwrap();
    let running = cluster.running_all();
    let repeats = repeats_around(&cluster.telegram.sent(), &[mark]);
    let (retried, server_errors) = cluster.retried_posts();
    let times = outcome.times();
    eprintln!(
        "cluster behind haproxy: 1 kill, {} messages, lost {}, repeated {} (straddling \
         the kill {}), repeated outside that window {}, posts to the dead instance after \
         its health checks failed {late}, still running {running:?}, posts retried by the driver {retried} ({server_errors} \
         5xx), {times}",
        outcome.messages(),
        outcome.lost,
        outcome.repeated,
        repeats.per_mark[0],
        repeats.outside.len(),
    );
    assert_eq!(
        outcome.lost,
        0,
        "every message is answered; logs:\n{}",
        cluster.logs()
    );
    assert!(
        repeats.outside.is_empty(),
        "answers repeated without a kill between them: {:?}",
        repeats.outside
    );
    assert_eq!(late, 0, "HAProxy kept sending to a dead instance");
    // Failover: the victim's chats wait for its lease to lapse, the grace
    // and a sweep; the rest is slack for a loaded CI machine (100 chats on
    // three instances and HAProxy: the median answer alone takes ~2 s when
    // the whole suite runs beside it).
    assert!(
        times.max <= LEASE + GRACE + SWEEP + Duration::from_secs(12),
        "failover took {:?}",
        times.max
    );
    cluster.stop_all().await;
}

/// Each of three instances in turn gets SIGTERM while a closed loop runs,
/// and is started again once it stopped: it drains, gives up its chats and
/// its lease, so the others answer them at once (well under the lease and
/// the grace a crash would cost), nothing is lost and nothing repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_sigterm_restart_repeats_nothing() {
    let cluster = Arc::new(Cluster::start(3).await);
    cluster.llm.set_latency(Duration::from_millis(50));
    let (chats, messages) = (30, 16);
    let roller = {
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move {
            let mut codes = Vec::new();
            let mut stops = Vec::new();
            for index in 0..cluster.nodes.len() {
                tokio::time::sleep(Duration::from_millis(800)).await;
                let asked = Instant::now();
                let (_, code) = cluster.terminate(index).await;
                stops.push(asked.elapsed());
                codes.push(code);
                cluster.launch(index).await;
                cluster.wait_ready(index, Duration::from_secs(20)).await;
            }
            (codes, stops)
        })
    };
    let outcome = closed_loop(&cluster, chats, messages, home_or_next(3)).await;
    let (codes, stops) = roller.await.unwrap();
    let (retried, server_errors) = cluster.retried_posts();
    let times = outcome.times();
    eprintln!(
        "cluster rolling SIGTERM restart: 3 restarts, {} messages, lost {}, repeated {}, \
         stop times {stops:?}, slowest answer {:?} (chat {}, message {}), posts retried by the driver {retried} ({server_errors} 5xx), \
         {times}",
        outcome.messages(),
        outcome.lost,
        outcome.repeated,
        outcome.slowest.0,
        outcome.slowest.1,
        outcome.slowest.2,
    );
    assert_eq!(
        outcome.lost,
        0,
        "every message is answered; logs:\n{}",
        cluster.logs()
    );
    assert_eq!(outcome.repeated, 0, "a graceful stop repeats nothing");
    // The drain ends once what was routed is answered: it does not wait
    // for the chats this instance owns to fall quiet (they never do in a
    // busy deployment), i.e. for `shutdown.grace` (10 s).
    assert!(
        stops.iter().all(|stop| *stop < Duration::from_secs(5)),
        "a stop took {stops:?}"
    );
    assert!(
        codes.iter().all(|code| *code == Some(0)),
        "each instance stops cleanly: {codes:?}"
    );
    // A crash costs the lease and the grace (3 s) before a sweep even
    // looks; a clean stop hands the chats over once its drain is done.
    assert!(
        times.max < LEASE + GRACE,
        "a stopped instance's chats waited {:?} (a crash costs {:?})",
        times.max,
        LEASE + GRACE
    );
    cluster.stop_all().await;
}

/// Webhook deliveries out of order and twice: for each chat, message n+1
/// is posted before message n (Telegram retrying an earlier update later,
/// or two instances each receiving one), then message n is posted to two
/// instances at once and message n+1 again to a third. Every update is
/// answered exactly once: a duplicate `update_id` is recognised whichever
/// instance receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_duplicate_deliveries_are_answered_once() {
    let cluster = Arc::new(Cluster::start(3).await);
    cluster.llm.set_latency(Duration::from_millis(50));
    let chats: i64 = 30;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chat in 1..=chats {
        let cluster = Arc::clone(&cluster);
        tasks.push(tokio::spawn(async move {
            let home = usize::try_from(chat).unwrap() % 3;
            let (_, first) = cluster
                .telegram
                .text_update(chat, chat as u64, &format!("c{chat}a"));
            let (_, second) = cluster
                .telegram
                .text_update(chat, chat as u64, &format!("c{chat}b"));
            cluster.post(home, &second).await;
            cluster.post((home + 1) % 3, &first).await;
            tokio::join!(
                cluster.post(home, &first),
                cluster.post((home + 2) % 3, &first)
            );
            cluster.post((home + 2) % 3, &second).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let posted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut unanswered = Vec::new();
    for chat in 1..=chats {
        for suffix in ["a", "b"] {
            let answer = format!("answer to: c{chat}{suffix}");
            while cluster.answered(chat, &answer) == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if cluster.answered(chat, &answer) == 0 {
                unanswered.push(answer);
            }
        }
    }
    let all_answered = started.elapsed();
    // A duplicate answered late (by a sweep on another instance) would show
    // up after the sweep age and a few sweeps.
    tokio::time::sleep(GRACE + SWEEP * 4).await;
    let mut counts: HashMap<(i64, String), usize> = HashMap::new();
    for message in cluster.telegram.sent() {
        *counts.entry((message.chat_id, message.text)).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let (retried, server_errors) = cluster.retried_posts();
    eprintln!(
        "cluster out-of-order deliveries: {} updates delivered {} times over 3 instances, \
         unanswered {}, answered more than once {}, posting took {posted:?}, all answered \
         after {all_answered:?}, posts retried {retried} ({server_errors} 5xx)",
        chats * 2,
        chats * 5,
        unanswered.len(),
        repeated.len(),
    );
    assert!(
        unanswered.is_empty(),
        "unanswered: {unanswered:?}; logs:\n{}",
        cluster.logs()
    );
    assert!(repeated.is_empty(), "answered more than once: {repeated:?}");
    assert_eq!(
        counts.len(),
        usize::try_from(chats * 2).unwrap(),
        "only the answers were sent"
    );
    cluster.stop_all().await;
}

/// PostgreSQL restarts (a fast shutdown, ~1 s down, well within a 6 s
/// lease: the 2 s of the other scenarios is too close to a restart's
/// duration on a loaded machine) while a closed loop runs: posts that fail
/// meanwhile (500) are delivered again as Telegram would, nothing is lost,
/// and no instance exits (no takeover storm): each still runs at the end
/// and holds its one lease row.
///
/// Known gap, counted and printed rather than failed: a turn whose answer
/// was sent and whose commit then failed on the lost connection is not
/// committed again (the store writer does not retry a failed commit); its
/// session dies with the storage error and its restart sends the answer
/// again (repeats "while down"), and a session failing that way more than
/// `session.max_redeliveries` times drops its update with an apology. Any
/// other repeat fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_is_ridden_out() {
    let cluster = Arc::new(
        Cluster::start_with(3, vec![("LLMGRAM_STORAGE__POSTGRES__LEASE", "6s".into())]).await,
    );
    cluster.llm.set_latency(Duration::from_millis(50));
    let (chats, messages) = (60, 10);
    let restarter = {
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            cluster.restart_db(Duration::from_millis(200)).await
        })
    };
    let outcome = closed_loop(&cluster, chats, messages, home_or_next(3)).await;
    let restart = restarter.await.unwrap();
    let repeats = repeats_around(
        &cluster.telegram.sent(),
        &[restart.down_mark, restart.up_mark],
    );
    // Apologies (an update dropped after its session kept failing) are
    // counted on their own.
    let apologies = cluster
        .telegram
        .sent()
        .iter()
        .filter(|m| !m.text.starts_with("answer to: "))
        .count();
    let outside: Vec<String> = repeats
        .outside
        .into_iter()
        .filter(|text| text.starts_with("answer to: "))
        .collect();
    let (retried, server_errors) = cluster.retried_posts();
    let running = cluster.running_all();
    let instances = cluster.psql("SELECT count(*) FROM llmgram_instances");
    let times: Times = outcome.times();
    eprintln!(
        "cluster database restart: down {:?}, {} messages, lost {}, answers repeated {} (first sent \
         before the stop {}, while down {}), repeated outside that window {}, apologies {apologies}, instances \
         still running {running:?}, lease rows {instances}, posts retried by the driver \
         {retried} ({server_errors} 5xx), {times}",
        restart.outage,
        outcome.messages(),
        outcome.lost,
        repeats.per_mark.iter().sum::<usize>() + outside.len(),
        repeats.per_mark[0],
        repeats.per_mark[1],
        outside.len(),
    );
    assert_eq!(
        outcome.lost,
        0,
        "every message is answered; logs:\n{}",
        cluster.logs()
    );
    assert!(
        outside.is_empty(),
        "answers repeated away from the outage: {outside:?}"
    );
    assert!(
        running.iter().all(|r| *r),
        "an instance exited: {running:?}; logs:\n{}",
        cluster.logs()
    );
    assert_eq!(instances, "3", "no instance came back under a new id");
    cluster.stop_all().await;
}

/// What the fault injector of
/// [`an_instance_cut_off_from_the_database_stops_sending_and_exits`] saw.
struct Partition {
    /// Messages sent when the cut landed, and when the victim's lease could
    /// last be valid locally (the cut plus the lease minus the send
    /// margin): marks for [`repeats_around`].
    cut_mark: usize,
    lapse_mark: usize,
    cut_at: std::time::Instant,
    /// When the victim was started again (its token is the old one's).
    restarted_at: std::time::Instant,
    /// The victim's `llmgram_cluster_fenced_total{at="send"}` just before
    /// the heal.
    fenced_at_send: Option<f64>,
    /// The victim's exit code, and how long after the heal it exited.
    code: Option<i32>,
    exit_after_heal: Duration,
    /// The victim's instance id before the cut, and the restarted one's.
    old_id: String,
    new_id: String,
}

/// Three instances, PostgreSQL in a network namespace, a closed loop of 60
/// chats (every fifth message misrouted); instance 0 is cut off from the
/// database (packets dropped, nothing closed) for longer than its lease
/// and the grace, then healed. Its webhook fails the posts it cannot
/// admit, and they are delivered again elsewhere; its chats are taken over
/// once its lease lapsed and the grace passed; it sends nothing once its
/// lease lapsed (each instance has its own bot token, so the fake Bot API
/// tells who sent what); healed, its renewal finds the lease lapsed and it
/// exits 1, and started again it serves. Nothing is lost, answers come in
/// order, and an answer is sent twice only when its first copy went out
/// before the victim's lease ran out and its commit never reached the
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_the_database_stops_sending_and_exits() {
    let Some(cluster) = Cluster::start_partitionable(3).await else {
        return;
    };
    let cluster = Arc::new(cluster);
    for index in 0..3 {
        cluster.wait_ready(index, Duration::from_secs(20)).await;
    }
    cluster.llm.set_latency(Duration::from_millis(50));
    let (chats, messages) = (60, 16);
    let victim = 0;
    let cut_for = Duration::from_millis(5500);
    let injector = {
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move {
            let old_id = instance_id(&cluster, victim).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let cut_mark = cluster.telegram.sent().len();
            cluster.cut_from_db(victim).await;
            let cut_at = std::time::Instant::now();
            let cut = Instant::now();
            tokio::time::sleep_until(cut + LEASE - SEND_MARGIN).await;
            let lapse_mark = cluster.telegram.sent().len();
            tokio::time::sleep_until(cut + cut_for).await;
            let fenced_at_send = cluster
                .metric(victim, "llmgram_cluster_fenced_total{at=\"send\"}")
                .await;
            let process = cluster.take_process(victim).expect("the victim runs");
            cluster.heal(victim).await;
            let healed = Instant::now();
            let code = process.exit_code_within(Duration::from_secs(15)).await;
            let exit_after_heal = healed.elapsed();
            let restarted_at = std::time::Instant::now();
            cluster.launch(victim).await;
            cluster.wait_ready(victim, Duration::from_secs(20)).await;
            let new_id = instance_id(&cluster, victim).await;
            Partition {
                cut_mark,
                lapse_mark,
                cut_at,
                restarted_at,
                fenced_at_send,
                code,
                exit_after_heal,
                old_id,
                new_id,
            }
        })
    };
    let outcome = closed_loop(&cluster, chats, messages, home_or_next(3)).await;
    let cut = injector.await.unwrap();

    // Started again, the victim serves: a new chat posted to it is claimed
    // and answered by it.
    let (_, fresh) = cluster
        .telegram
        .text_update(1000, 1000, "after the restart");
    cluster.post(victim, &fresh).await;
    cluster.wait_for(1000, "answer to: after the restart").await;

    let calls = cluster.telegram.calls();
    let victim_token = Cluster::token(victim);
    let sends = |method: &str| {
        matches!(
            method,
            "sendmessage" | "editmessagetext" | "sendmessagedraft" | "deletemessage"
        )
    };
    // The victim's sends once its lease had lapsed in the database (the
    // cut plus the lease, at the latest), until it was started again.
    let stale: Vec<(String, Option<i64>, Duration)> = calls
        .iter()
        .filter(|c| c.token == victim_token && sends(&c.method))
        .filter(|c| c.at > cut.cut_at + LEASE && c.at < cut.restarted_at)
        .map(|c| (c.method.clone(), c.chat_id, c.at - cut.cut_at))
        .collect();
    // The victim's last send after the cut (before its restart).
    let last_send = calls
        .iter()
        .filter(|c| c.token == victim_token && sends(&c.method))
        .filter(|c| c.at > cut.cut_at && c.at < cut.restarted_at)
        .map(|c| c.at - cut.cut_at)
        .max();
    // Failover: per chat of the victim's, from the cut to the first answer
    // another instance sent it.
    let victims_chats: Vec<i64> = (1..=chats).filter(|c| c % 3 == 0).collect();
    let mut failovers = Vec::new();
    let mut not_taken_over = Vec::new();
    for chat in &victims_chats {
        let first_elsewhere = calls.iter().find(|c| {
            c.chat_id == Some(*chat)
                && c.method == "sendmessage"
                && c.token != victim_token
                && c.at > cut.cut_at
        });
        match first_elsewhere {
            Some(call) => failovers.push(call.at - cut.cut_at),
            None => not_taken_over.push(*chat),
        }
    }
    let failover = Times::of(&failovers);
    let restarted_answer = calls
        .iter()
        .find(|c| c.chat_id == Some(1000) && c.method == "sendmessage")
        .map(|c| c.token.clone());
    let repeats = repeats_around(&cluster.telegram.sent(), &[cut.cut_mark, cut.lapse_mark]);
    let failed_at_victim = cluster.failed_posts(victim);
    let (retried, server_errors) = cluster.retried_posts();
    eprintln!(
        "cluster partition: instance {victim} cut off for {cut_for:?}, {} messages, lost {}, \
         repeated {} (first sent before the cut {}, during the lease's last {:?} {}), repeated \
         outside that window {}, failover p50 {:?} p99 {:?} max {:?} ({} chats, not taken \
         over {}), sends by the cut-off instance after its lease lapsed {} (its last send {:?} \
         after the cut), its fenced at send {:?}, its exit code {:?} {:?} after the heal, posts it failed and retried elsewhere \
         {failed_at_victim}, posts retried by the driver {retried} ({server_errors} 5xx), {}",
        outcome.messages(),
        outcome.lost,
        outcome.repeated,
        repeats.per_mark[0],
        LEASE - SEND_MARGIN,
        repeats.per_mark[1],
        repeats.outside.len(),
        failover.p50,
        failover.p99,
        failover.max,
        failovers.len(),
        not_taken_over.len(),
        stale.len(),
        last_send,
        cut.fenced_at_send,
        cut.code,
        cut.exit_after_heal,
        outcome.times(),
    );
    assert_eq!(
        outcome.lost,
        0,
        "every message is answered; logs:\n{}",
        cluster.logs()
    );
    assert!(
        repeats.outside.is_empty(),
        "answers repeated away from the cut: {:?}",
        repeats.outside
    );
    assert!(
        stale.is_empty(),
        "the cut-off instance sent after its lease lapsed (method, chat, after the cut): {stale:?}"
    );
    assert!(
        not_taken_over.is_empty(),
        "chats of the cut-off instance never answered elsewhere: {not_taken_over:?}"
    );
    // Its lease lapses at most a lease after the cut, the grace later a
    // sweep takes its chats; 2 s for the answer (a post the victim failed
    // is delivered again within its statement timeout), and 4 s of slack
    // for a loaded CI machine (quiet: 2.3 to 4.7 s).
    assert!(
        failover.max <= LEASE + GRACE + Duration::from_secs(2 + 4),
        "failover took {:?}",
        failover.max
    );
    assert!(
        failed_at_victim > 0,
        "the cut-off instance's webhook failed no post (it admitted without its database?)"
    );
    assert_eq!(
        cut.code,
        Some(1),
        "healed, the cut-off instance finds its lease lapsed and exits 1"
    );
    assert!(
        cut.exit_after_heal <= Duration::from_secs(5),
        "it took {:?} to exit after the heal",
        cut.exit_after_heal
    );
    assert_eq!(
        restarted_answer,
        Some(victim_token),
        "started again, it serves a new chat"
    );
    // It never revived its old id: no lease under it, and started again
    // it registered anew.
    let old_lease = cluster.psql(&format!(
        "SELECT count(*) FROM llmgram_instances WHERE id = {} AND lease_until > now()",
        cut.old_id
    ));
    assert_eq!(old_lease, "0", "the old id holds no lease");
    assert_ne!(cut.new_id, cut.old_id, "started again under a new id");
    cluster.stop_all().await;
}

/// The id instance `index` registered under (found by its process id).
async fn instance_id(cluster: &Arc<Cluster>, index: usize) -> String {
    let pid = cluster.pid(index).expect("the instance runs");
    let cluster = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || {
        cluster.psql(&format!(
            "SELECT id FROM llmgram_instances WHERE pid = {pid}"
        ))
    })
    .await
    .unwrap()
}
