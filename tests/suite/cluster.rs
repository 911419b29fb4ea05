//! Several instances on one shared PostgreSQL (issue 18): real processes
//! of the binary on a real PostgreSQL, behind webhooks, with the loopback
//! fakes. Updates are posted the way Telegram and a load balancer would:
//! mostly to the instance a chat hashes to, some deliberately to another
//! one, and to a survivor while an instance is down. Every message must be
//! answered, in order, once; a repeat is only possible for a turn sent and
//! then killed before its commit (the one window no engine closes), and is
//! counted and reported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::common::cluster::{Cluster, GRACE, LEASE, SWEEP};
use crate::common::process::BotProcess;

/// What a closed-loop run saw.
#[derive(Debug, Default)]
struct Outcome {
    /// Post-to-answer times, one per message.
    latencies: Vec<Duration>,
    /// Messages never answered.
    lost: usize,
    /// Extra copies of answers.
    repeated: usize,
}

/// `chats` chats each send `messages` messages, each after the previous
/// one's answer; chat `c` goes to instance `c % n`, every fifth message to
/// the next instance instead (misrouted).
async fn closed_loop(cluster: &Arc<Cluster>, chats: i64, messages: usize) -> Outcome {
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let mut tasks = Vec::new();
    for chat in 1..=chats {
        let cluster = Arc::clone(cluster);
        let outcome = Arc::clone(&outcome);
        tasks.push(tokio::spawn(async move {
            let n = cluster.nodes.len();
            for i in 0..messages {
                let text = format!("c{chat}m{i}");
                let (_, update) = cluster.telegram.text_update(chat, chat as u64, &text);
                let home = usize::try_from(chat).unwrap() % n;
                let target = if i % 5 == 4 { (home + 1) % n } else { home };
                let posted = Instant::now();
                cluster.post(target, &update).await;
                let answer = format!("answer to: {text}");
                let deadline = posted + Duration::from_secs(30);
                while cluster.answered(chat, &answer) == 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let mut outcome = outcome.lock().unwrap();
                if cluster.answered(chat, &answer) == 0 {
                    outcome.lost += 1;
                } else {
                    outcome.latencies.push(posted.elapsed());
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Late repeats (a pending update answered again) show up after the
    // loop: give sweeps time to run.
    tokio::time::sleep(LEASE + GRACE + SWEEP * 3).await;
    let mut outcome = std::mem::take(&mut *outcome.lock().unwrap());
    for chat in 1..=chats {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for message in cluster.telegram.sent_to(chat) {
            *counts.entry(message.text).or_default() += 1;
        }
        outcome.repeated += counts.values().map(|n| n - 1).sum::<usize>();
        // In order: each answer after the one before it.
        let texts: Vec<String> = cluster
            .telegram
            .sent_to(chat)
            .into_iter()
            .map(|m| m.text)
            .collect();
        let firsts: Vec<usize> = (0..messages)
            .filter_map(|i| {
                let answer = format!("answer to: c{chat}m{i}");
                texts.iter().position(|t| *t == answer)
            })
            .collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "chat {chat} answered out of order: {texts:?}"
        );
    }
    outcome
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
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
    let mut cluster = Cluster::start(3).await;
    cluster.llm.set_latency(Duration::from_millis(50));
    let chats = 60;
    let messages = 4 + kills * 2;
    // The killer needs `&mut` to restart instances: it takes the nodes'
    // processes out of the shared cluster by index.
    let processes: Vec<Option<BotProcess>> = cluster
        .nodes
        .iter_mut()
        .map(|node| node.process.take())
        .collect();
    let cluster = Arc::new(cluster);
    let processes = Arc::new(tokio::sync::Mutex::new(processes));
    let killer = {
        let cluster = Arc::clone(&cluster);
        let processes = Arc::clone(&processes);
        tokio::spawn(async move {
            // How many messages the bot had sent when each kill landed
            // (the victim sends nothing after it).
            let mut marks = Vec::new();
            for kill in 0..kills {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let victim = (kill * 7 + 1) % 3;
                let process = processes.lock().await[victim].take().unwrap();
                process.kill9().await;
                marks.push(cluster.telegram.sent().len());
                tokio::time::sleep(Duration::from_millis(500)).await;
                let node = &cluster.nodes[victim];
                let env = cluster.env(node.port);
                let restarted =
                    BotProcess::spawn_with(&cluster.telegram, &cluster.llm, &node.dir, &env);
                processes.lock().await[victim] = Some(restarted);
            }
            marks
        })
    };
    let outcome = closed_loop(&cluster, chats, messages).await;
    let marks = killer.await.unwrap();
    // Every repeat must straddle a kill: its first copy sent before the
    // kill landed, the repeat after (the turn was sent, then killed before
    // its commit). Counted per kill.
    let sent = cluster.telegram.sent();
    let mut first: HashMap<(i64, &str), usize> = HashMap::new();
    let mut per_kill = vec![0usize; marks.len()];
    let mut outside = Vec::new();
    for (index, message) in sent.iter().enumerate() {
        match first.get(&(message.chat_id, message.text.as_str())) {
            None => {
                first.insert((message.chat_id, message.text.as_str()), index);
            }
            Some(&original) => match marks.iter().position(|&m| original < m && m <= index) {
                Some(kill) => per_kill[kill] += 1,
                None => outside.push(message.text.clone()),
            },
        }
    }
    let mut latencies = outcome.latencies.clone();
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
    );
    eprintln!(
        "cluster: {kills} kills, {} messages, lost {}, repeated {} (sent, then killed \
         before the commit; per kill {per_kill:?}), repeated outside that window {}, \
         answer time p50 {p50:?} p99 {p99:?} max {max:?}",
        latencies.len() + outcome.lost,
        outcome.lost,
        outcome.repeated,
        outside.len()
    );
    let logs = || {
        let mut text = String::new();
        if let Ok(processes) = processes.try_lock() {
            for (index, process) in processes.iter().enumerate() {
                if let Some(process) = process {
                    text.push_str(&format!("--- instance {index}\n{}", process.log()));
                }
            }
        }
        text
    };
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
    for process in processes.lock().await.iter_mut().filter_map(Option::take) {
        process.kill9().await;
    }
    let _ = cluster.logs();
}

/// An owner paused (SIGSTOP) with an answer in flight: after its lease
/// lapses and the grace, another instance takes the chat and answers the
/// pending message and the next one, in order. When the old owner wakes it
/// sends nothing (its lease is not valid), its commit would be fenced, and
/// it exits non-zero to come back under a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_wakes_up_fenced_and_sends_nothing() {
    let mut cluster = Cluster::start(2).await;
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
    let paused = cluster.nodes[0].process.take().unwrap();
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
    let stale: String = cluster
        .db
        .psql("SELECT count(*) FROM llmgram_chats WHERE owner IS NOT NULL")
        .unwrap();
    assert_eq!(stale, "1", "the chat has one owner");
}

/// The binary as an operator runs its storage commands.
fn command(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_llmgram"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TELEGRAM_BOT_TOKEN", "123456:test")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .output()
        .unwrap()
}

/// `check-config` reports the database's schema version, `migrate` brings
/// it to the build's, the URL never shows, and unusable combinations exit
/// 2: no URL, or a schema newer than the build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_commands_report_and_migrate_the_schema() {
    let db = tokio::task::spawn_blocking(llmgram_fakes::TempPostgres::start)
        .await
        .unwrap()
        .expect("a throwaway PostgreSQL (install the postgresql package)");
    let postgres = || {
        vec![
            ("LLMGRAM_STORAGE__BACKEND", "postgres".to_owned()),
            ("LLMGRAM_STORAGE__POSTGRES__URL", db.url()),
        ]
    };
    let check = || command(&["check-config"], &postgres());
    let output = check();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains(&db.url()), "the database URL was printed");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["database"]["schema_version"], 0);
    assert_eq!(
        report["secrets"]["LLMGRAM_STORAGE__POSTGRES__URL"],
        "set (redacted)"
    );

    let output = command(&["migrate"], &postgres());
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let migrated: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(migrated["schema_version_before"], 0);
    assert_eq!(migrated["schema_version"], migrated["this_build"]);
    let report: serde_json::Value = serde_json::from_slice(&check().stdout).unwrap();
    assert_eq!(report["database"]["schema_version"], migrated["this_build"]);

    let no_url = command(
        &["check-config"],
        &[("LLMGRAM_STORAGE__BACKEND", "postgres".to_owned())],
    );
    assert_eq!(no_url.status.code(), Some(2), "{no_url:?}");
    db.psql("INSERT INTO llmgram_schema (version) VALUES (999)")
        .unwrap();
    let newer = check();
    assert_eq!(newer.status.code(), Some(2), "{newer:?}");
    assert!(String::from_utf8_lossy(&newer.stderr).contains("newer"));
}

/// Bans and the admin's default model are shared: set through one
/// instance, they hold at once on another, also for an update handed over
/// from an instance that received it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_ban_and_model_reach_every_instance() {
    let cluster = Cluster::start_with(2, &[("LLMGRAM_ADMIN_IDS", "900".into())]).await;
    let say = |chat: i64, text: &str| cluster.telegram.text_update(chat, chat as u64, text).1;
    // 901's chat lives on instance 1 before the ban.
    cluster.post(1, &say(901, "before")).await;
    cluster.wait_for(901, "answer to: before").await;

    cluster.post(0, &say(900, "/ban 901")).await;
    cluster.wait_for(900, "901 is banned").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = cluster.llm.request_count();
    cluster.post(1, &say(901, "after the ban")).await;
    // Received by the other instance and handed over: judged where answered.
    cluster.post(0, &say(901, "misrouted after the ban")).await;
    cluster.wait_for(901, "no longer").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        cluster.llm.request_count(),
        asked,
        "a banned user costs no call"
    );
    assert!(
        !cluster
            .telegram
            .sent_to(901)
            .iter()
            .any(|m| m.text.contains("after the ban")),
        "nothing answered after the ban"
    );

    cluster
        .post(0, &say(900, "/model llama-3.3-70b-versatile"))
        .await;
    cluster
        .wait_for(900, "set to llama-3.3-70b-versatile")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.post(1, &say(903, "which model?")).await;
    cluster.wait_for(903, "answer to: which model?").await;
    let last = cluster.llm.requests().pop().unwrap();
    assert_eq!(last.model, "llama-3.3-70b-versatile");
}
