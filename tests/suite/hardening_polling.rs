//! Polling and update intake under a hostile or broken Bot API: an update
//! the client cannot read, an update kind it does not know, a refused
//! command menu, and a server that answers getUpdates without long polling.

use std::time::Duration;

use llmgram_fakes::{FakeTelegram, TelegramFault};

use crate::common::free_port;
use crate::common::{Harness, WAIT, eventually};

/// A private text message whose text holds a lone UTF-16 surrogate, as
/// Telegram has sent for cut emoji: valid JSON text, but no Rust string.
fn broken_text_message(chat_id: i64) -> String {
    format!(
        r#""message":{{"message_id":900,"date":1700000000,"chat":{{"id":{chat_id},"type":"private","first_name":"U"}},"from":{{"id":{chat_id},"is_bot":false,"first_name":"U"}},"text":"cut \ud83d emoji"}}"#
    )
}

/// An update of a kind Telegram might add tomorrow.
const UNKNOWN_KIND: &str = r#""brand_new_kind":{"id":"x","payload":[1,2,3]}"#;

/// The value of one sample of the process-wide metrics (0 when absent).
fn metric(sample: &str) -> f64 {
    let text = llmgram::ops::prometheus()
        .map(|handle| handle.render())
        .unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const UNPARSEABLE: &str = "llmgram_updates_skipped_total{reason=\"unparseable\"}";
const UNKNOWN: &str = "llmgram_updates_skipped_total{reason=\"unknown_kind\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_update_is_skipped_and_the_rest_of_its_batch_answered() {
    let telegram = FakeTelegram::start().await;
    let before = telegram.push_text(1, 1, "before");
    let broken = telegram.push_raw_update(&broken_text_message(2));
    let unknown = telegram.push_raw_update(UNKNOWN_KIND);
    let after = telegram.push_text(3, 3, "after");
    assert!(before < broken && broken < unknown && unknown < after);
    let skipped_before = (metric(UNPARSEABLE), metric(UNKNOWN));

    let h = Harness::start_against(telegram, "").await;
    assert_eq!(h.replies(1, 1).await[0].text, "answer to: before");
    assert_eq!(h.replies(3, 1).await[0].text, "answer to: after");
    // Confirmed with the batch: Telegram does not send them again.
    eventually("the batch to be confirmed", || async {
        h.telegram.confirmed_offset() > after
    })
    .await;
    assert!(h.telegram.sent_to(2).is_empty());
    // Polling goes on: a later message of another user is answered.
    h.say(4, "later");
    assert_eq!(h.replies(4, 1).await[0].text, "answer to: later");
    assert!(metric(UNPARSEABLE) > skipped_before.0);
    assert!(metric(UNKNOWN) > skipped_before.1);
    assert_eq!(h.llm.request_count(), 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_unreadable_updates_alone_is_confirmed() {
    let telegram = FakeTelegram::start().await;
    telegram.push_raw_update(&broken_text_message(2));
    let last = telegram.push_raw_update(UNKNOWN_KIND);
    let h = Harness::start_against(telegram, "").await;
    eventually("the unreadable updates to be confirmed", || async {
        h.telegram.confirmed_offset() > last
    })
    .await;
    h.say(5, "next");
    assert_eq!(h.replies(5, 1).await[0].text, "answer to: next");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_acknowledges_unreadable_updates_and_refuses_non_updates() {
    let port = free_port();
    let h = Harness::start_with(&format!(
        "telegram.mode = \"webhook\"\n\
         webhook.listen = \"127.0.0.1:{port}\"\n\
         webhook.url = \"http://127.0.0.1:{port}/tg-hook\"\n"
    ))
    .await;
    let registered = h.telegram.webhook().expect("setWebhook was called");
    let secret = registered.secret.expect("a secret token is registered");
    let client = reqwest::Client::new();
    let post = |body: String| {
        client
            .post(&registered.url)
            .header("X-Telegram-Bot-Api-Secret-Token", &secret)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let skipped_before = (metric(UNPARSEABLE), metric(UNKNOWN));

    // Telegram retries anything but a 2xx and holds later updates back
    // meanwhile: an update that cannot be read must still be acknowledged.
    let broken = format!("{{\"update_id\":9001,{}}}", broken_text_message(2));
    assert_eq!(post(broken).await.unwrap().status(), 200);
    let unknown = format!("{{\"update_id\":9002,{UNKNOWN_KIND}}}");
    assert_eq!(post(unknown).await.unwrap().status(), 200);
    // What is not an update at all is refused.
    for junk in [
        "not json",
        "{\"hello\":1}",
        "[1,2]",
        "{\"update_id\":\"x\"}",
    ] {
        assert_eq!(post(junk.to_owned()).await.unwrap().status(), 400, "{junk}");
    }
    let (_, update) = h.telegram.text_update(1, 1, "still here");
    assert_eq!(post(update.to_string()).await.unwrap().status(), 200);
    assert_eq!(h.replies(1, 1).await[0].text, "answer to: still here");
    assert!(h.telegram.sent_to(2).is_empty());
    assert!(metric(UNPARSEABLE) > skipped_before.0);
    assert!(metric(UNKNOWN) > skipped_before.1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_menu_does_not_stop_the_bot_answering() {
    let telegram = FakeTelegram::start().await;
    telegram.refuse_method(
        "setMyCommands",
        Some(TelegramFault::Status(
            400,
            "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID".into(),
        )),
    );
    let h = Harness::start_against(
        telegram,
        "telegram.retry_min = \"50ms\"\ntelegram.retry_max = \"200ms\"\n",
    )
    .await;
    h.say(1, "hello");
    assert_eq!(h.replies(1, 1).await[0].text, "answer to: hello");
    // The menu is retried in the background, and registered once Telegram
    // takes it.
    eventually("setMyCommands to be retried", || async {
        h.telegram.method_calls("setMyCommands") >= 3
    })
    .await;
    assert!(h.telegram.my_commands().is_empty());
    h.telegram.refuse_method("setMyCommands", None);
    eventually("the command menu to be registered", || async {
        !h.telegram.my_commands().is_empty()
    })
    .await;
    // One registration is several calls (one per language and the
    // default): let the rest of it land, then expect no more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let registered = h.telegram.method_calls("setMyCommands");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        h.telegram.method_calls("setMyCommands"),
        registered,
        "no more calls once registered"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_polls_against_a_server_without_long_polling_are_spaced() {
    let telegram = FakeTelegram::start().await;
    telegram.set_instant_polls(true);
    let h = Harness::start_against(telegram, "telegram.empty_poll_interval = \"250ms\"\n").await;
    assert!(h.telegram.wait_for_get_updates(1, WAIT).await);
    let start = h.telegram.get_updates_calls();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = h.telegram.get_updates_calls() - start;
    // 2 s / 250 ms = 8, with slack for timing; without the floor, thousands.
    assert!((4..=10).contains(&calls), "{calls} getUpdates calls in 2 s");
    // Updates are still fetched promptly.
    let sent = std::time::Instant::now();
    h.say(1, "quick");
    assert_eq!(h.replies(1, 1).await[0].text, "answer to: quick");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
    h.stop().await;
}

#[tokio::test]
async fn check_config_refuses_a_command_menu_telegram_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    for (case, entry) in [
        (
            "long description",
            format!(
                "name = \"longdesc\"\ndescription = {{ en = \"{}\" }}",
                "x".repeat(257)
            ),
        ),
        (
            "empty description",
            "name = \"nodesc\"\ndescription = { en = \" \" }".to_owned(),
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            format!("[[commands]]\n{entry}\ntemplate = \"{{input}}\"\ncost = \"llm\"\n"),
        )
        .unwrap();
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_llmgram"))
            .env_clear()
            .env("TELEGRAM_BOT_TOKEN", "1:x")
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{case}: {stderr}");
        assert!(
            stderr.contains("commands") && stderr.contains("1–256"),
            "{case}: {stderr}"
        );
    }
}
