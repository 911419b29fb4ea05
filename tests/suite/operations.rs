//! Operations: readiness, metrics, JSON logs, graceful shutdown.

use std::collections::HashMap;
use std::time::Duration;

use llmgram::store::inspect;
use llmgram::telegram::inbound::ChatId;
use llmgram_fakes::{FakeLlm, FakeTelegram, LlmReply, LlmReplyKind};

use crate::common::free_port;
use crate::common::process::BotProcess;
use crate::common::{FAST_BREAKER, Harness, WAIT, eventually};

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("ops listener answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_provider_while_its_breaker_is_open() {
    let h = Harness::start_with(FAST_BREAKER).await;
    let base = format!("http://{}", h.service.ops_addr().expect("ops listener"));
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    eventually("ready", || async {
        get(&format!("{base}/readyz")).await.0 == 200
    })
    .await;

    h.llm.set_responder(|_| LlmReply::now(LlmReplyKind::Hang));
    for chat in 1..=2 {
        h.say(chat, "hello");
        h.replies(chat, 1).await;
    }
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["failing"], serde_json::json!(["llm:groq"]), "{body}");
    assert_eq!(report["llm"][0]["breaker"], "open");

    h.llm
        .set_responder(|r| LlmReply::text(format!("answer to: {}", r.last_user_message())));
    // Past breaker.open_for (1.5 s, FAST_BREAKER) with a margin.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    h.say(3, "recovered?");
    assert_eq!(h.replies(3, 1).await[0].text, "answer to: recovered?");
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    h.stop().await;
}

/// Parses Prometheus text exposition: `name{labels} value` per sample line.
fn samples(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        assert!(
            series[..name_end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_messages_sent_and_json_logs_carry_ids_not_text() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [
        ("LLMGRAM_OPS__LISTEN", format!("127.0.0.1:{port}")),
        ("LLMGRAM_LOG__FORMAT", "json".to_owned()),
    ];
    let bot = BotProcess::spawn_with(&telegram, &llm, &dir.path().join("data"), &env);
    assert!(
        telegram.wait_for_get_updates(1, WAIT).await,
        "{}",
        bot.log()
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    let before = samples(&get(&url).await.1);
    let count =
        |samples: &HashMap<String, f64>, name: &str| samples.get(name).copied().unwrap_or(0.0);

    for chat in 1..=7 {
        telegram.push_text(
            chat,
            chat as u64,
            &format!("private words {chat} SECRET-TEXT"),
        );
    }
    assert_eq!(telegram.wait_for_sent_count(7, WAIT).await, 7);
    // Each counter moves a moment after the reply reaches Telegram.
    eventually("metrics to settle", || async {
        let now = samples(&get(&url).await.1);
        [
            "llmgram_updates_received_total",
            "llmgram_replies_sent_total",
            "llmgram_reply_latency_seconds_count",
        ]
        .iter()
        .all(|name| count(&now, name) - count(&before, name) >= 7.0)
    })
    .await;
    let after = samples(&get(&url).await.1);
    for name in [
        "llmgram_updates_received_total",
        "llmgram_replies_sent_total",
        "llmgram_reply_latency_seconds_count",
    ] {
        assert_eq!(count(&after, name) - count(&before, name), 7.0, "{name}");
    }
    assert_eq!(
        count(&after, "llmgram_llm_requests_total{provider=\"groq\"}"),
        7.0
    );
    assert_eq!(bot.terminate().await, Some(0));

    let log = std::fs::read_to_string(
        dir.path()
            .join("data")
            .with_extension(format!("{}.log", std::process::id())),
    )
    .unwrap_or_default();
    let mut with_update_id = 0;
    for line in log.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(!line.contains("SECRET-TEXT"), "message text logged: {line}");
        assert!(!line.contains("123456:test"), "token logged: {line}");
        if event.to_string().contains("update_id") {
            with_update_id += 1;
        }
    }
    assert!(
        with_update_id >= 7,
        "update ids in the logs: {with_update_id}\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_twenty_answers_delivers_and_stores_them_all() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    llm.set_latency(Duration::from_millis(1500));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("LLMGRAM_LLM__MAX_CONCURRENCY", "32".to_owned())];
    let bot = BotProcess::spawn_with(&telegram, &llm, &data, &env);
    assert!(
        telegram.wait_for_get_updates(1, WAIT).await,
        "{}",
        bot.log()
    );
    for chat in 1..=20 {
        telegram.push_text(chat, chat as u64, "slow question");
    }
    eventually("20 answers in flight", || async { llm.in_flight() == 20 }).await;
    assert_eq!(bot.terminate().await, Some(0));
    assert_eq!(
        telegram.sent_count(),
        20,
        "every in-flight answer was delivered"
    );

    let store = inspect::open(&data).unwrap();
    for chat in 1..=20 {
        let record = store.chat(ChatId(chat)).unwrap().expect("stored");
        assert_eq!(record.history.len(), 2, "chat {chat}");
    }
    assert!(store.pending_update_ids().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    llm.set_responder(|_| LlmReply::now(LlmReplyKind::Hang));
    let dir = tempfile::tempdir().unwrap();
    let bot = BotProcess::start(&telegram, &llm, &dir.path().join("data")).await;
    telegram.push_text(1, 1, "never answered in time");
    llm.wait_for_requests(1, WAIT).await;
    // The first SIGTERM waits up to shutdown.grace (10 s) for the answer;
    // the second does not wait.
    let started = std::time::Instant::now();
    let code = bot.terminate_twice().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(code, Some(1));
}

fn cli(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_llmgram"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("OPS_API_TOKEN", crate::common::OPS_TOKEN)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_acknowledged_turn() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    llm.set_latency(Duration::from_millis(5));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let ops = ("LLMGRAM_OPS__LISTEN", format!("127.0.0.1:{port}"));
    // Every reply must be a turn: on a loaded machine a slow answer would
    // otherwise earn the chat a "still writing" notice, which is not one.
    let no_notice = ("LLMGRAM_SESSION__QUEUED_NOTICE_AFTER", "1h".to_owned());
    let bot = BotProcess::spawn_with(&telegram, &llm, &data, &[ops.clone(), no_notice]);
    assert!(
        telegram.wait_for_get_updates(1, WAIT).await,
        "{}",
        bot.log()
    );

    // 200 chats × 3 messages, still arriving while the backup runs.
    let load = {
        let telegram = telegram.clone();
        tokio::spawn(async move {
            for round in 0..3 {
                for chat in 1..=200 {
                    telegram.push_text(chat, chat as u64, &format!("c{chat} r{round}"));
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    telegram.wait_for_sent_count(250, WAIT).await;
    let acknowledged = telegram.sent();
    // A turn is committed right after its reply is sent: give the last
    // replies seen the moment to become durable before the backup begins.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let backup = dir.path().join("backup");
    let output = cli(
        &["backup", "--to", backup.to_str().unwrap()],
        std::slice::from_ref(&ops),
    );
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report["chats"].as_u64().unwrap() >= 200, "{report}");

    load.await.unwrap();
    assert_eq!(telegram.wait_for_sent_count(600, WAIT).await, 600);
    assert_eq!(bot.terminate().await, Some(0));

    // Restore into a fresh directory and start the bot there.
    let restored = dir.path().join("restored");
    let storage = ("LLMGRAM_STORAGE__PATH", restored.display().to_string());
    let output = cli(&["restore", "--from", backup.to_str().unwrap()], &[storage]);
    assert!(output.status.success(), "{output:?}");
    {
        let store = inspect::open(&restored).unwrap();
        for reply in &acknowledged {
            let record = store
                .chat(ChatId(reply.chat_id))
                .unwrap()
                .expect("chat restored");
            assert!(
                record.history.iter().any(|m| m.content == reply.text),
                "turn {:?} acknowledged before the backup is missing",
                reply.text
            );
        }
    }
    let bot = BotProcess::start(&telegram, &llm, &restored).await;
    let requests_before = llm.request_count();
    telegram.push_text(1, 1, "after restore");
    telegram.wait_for_sent_to(1, 4, WAIT).await;
    let request = &llm.requests()[requests_before];
    assert!(
        request.messages.len() >= 3,
        "history restored: {:?}",
        request.messages
    );
    assert_eq!(bot.terminate().await, Some(0));

    // A restore never overwrites: the data directory is not empty now.
    let output = cli(
        &["restore", "--from", backup.to_str().unwrap()],
        &[("LLMGRAM_STORAGE__PATH", restored.display().to_string())],
    );
    assert!(!output.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mode_takes_only_authentic_updates_of_sane_size() {
    let port = free_port();
    let webhook = format!(
        "telegram.mode = \"webhook\"\n\
         webhook.listen = \"127.0.0.1:{port}\"\n\
         webhook.url = \"http://127.0.0.1:{port}/tg-hook\"\n\
         webhook.max_body_bytes = 20000\n"
    );
    let h = Harness::start_with(&webhook).await;
    let registered = h.telegram.webhook().expect("setWebhook was called");
    assert_eq!(registered.url, format!("http://127.0.0.1:{port}/tg-hook"));
    let secret = registered.secret.expect("a secret token is registered");
    let client = reqwest::Client::new();
    let post = |body: serde_json::Value, secret: Option<&str>| {
        let mut request = client.post(&registered.url).json(&body);
        if let Some(secret) = secret {
            request = request.header("X-Telegram-Bot-Api-Secret-Token", secret);
        }
        request.send()
    };

    let (_, update) = h.telegram.text_update(1, 1, "via webhook");
    assert_eq!(post(update, Some(&secret)).await.unwrap().status(), 200);
    assert_eq!(h.replies(1, 1).await[0].text, "answer to: via webhook");

    let (_, forged) = h.telegram.text_update(2, 2, "forged");
    assert_eq!(
        post(forged.clone(), Some("wrong")).await.unwrap().status(),
        401
    );
    assert_eq!(post(forged, None).await.unwrap().status(), 401);
    let (_, huge) = h.telegram.text_update(3, 3, &"x".repeat(30_000));
    assert_eq!(post(huge, Some(&secret)).await.unwrap().status(), 413);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.llm.request_count(),
        1,
        "refused requests are not processed"
    );
    assert!(h.telegram.sent_to(2).is_empty() && h.telegram.sent_to(3).is_empty());

    // Back to polling: the webhook is deleted and getUpdates works.
    let h = h.restart("").await;
    eventually("the webhook to be deleted", || async {
        h.telegram.webhook().is_none()
    })
    .await;
    h.say(4, "polling again");
    assert_eq!(h.replies(4, 1).await[0].text, "answer to: polling again");
    h.stop().await;
}
