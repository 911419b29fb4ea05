//! The real binary: configuration errors exit 2 with one clear line; with a
//! token it polls, answers, and stops cleanly on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use llmgram_fakes::{FakeLlm, FakeTelegram};
use tokio::process::Command;

use crate::common::WAIT;

fn bot() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_llmgram"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LLMGRAM_OPS__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn config_error(command: &mut Command) -> String {
    let output = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("exits promptly")
        .expect("runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    stderr
}

#[tokio::test]
async fn a_missing_token_exits_2_naming_the_variable() {
    let stderr = config_error(&mut bot()).await;
    assert!(stderr.contains("TELEGRAM_BOT_TOKEN"), "{stderr}");
}

#[tokio::test]
async fn bad_values_exit_2_naming_the_key_and_variable() {
    let stderr = config_error(
        bot()
            .env("TELEGRAM_BOT_TOKEN", "1:x")
            .env("LLMGRAM_LLM__BASE_URL", "not a url"),
    )
    .await;
    assert!(
        stderr.contains("llm.base_url") && stderr.contains("LLMGRAM_LLM__BASE_URL"),
        "{stderr}"
    );

    let stderr = config_error(
        bot()
            .env("TELEGRAM_BOT_TOKEN", "1:x")
            .env("LLMGRAM_SESSION__MAX_MESSAGES", "0"),
    )
    .await;
    assert!(stderr.contains("session.max_messages"), "{stderr}");

    let stderr = config_error(
        bot()
            .env("TELEGRAM_BOT_TOKEN", "1:x")
            .args(["--config", "/nonexistent/llmgram.toml"]),
    )
    .await;
    assert!(stderr.contains("/nonexistent/llmgram.toml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_answers_and_stops_cleanly_on_sigterm() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let storage = tempfile::tempdir().unwrap();
    let data = storage.path().join("data");
    let config_file = storage.path().join("llmgram.toml");
    std::fs::write(&config_file, "[telegram]\npoll_timeout = \"1s\"\n").unwrap();
    let mut child = bot()
        .env("TELEGRAM_BOT_TOKEN", "123456:test")
        .env("LLM_API_KEY", "sk-test")
        .env("LLMGRAM_TELEGRAM__API_URL", telegram.api_url())
        .env("LLMGRAM_LLM__BASE_URL", llm.base_url())
        .env("LLMGRAM_STORAGE__PATH", &data)
        .arg("--config")
        .arg(&config_file)
        .spawn()
        .unwrap();

    assert!(
        telegram.wait_for_get_updates(1, WAIT).await,
        "the bot polls"
    );
    assert!(data.is_dir(), "storage.path is created at start");
    telegram.push_text(7, 7, "hi from the binary");
    let replies = telegram.wait_for_sent_to(7, 1, WAIT).await;
    assert_eq!(replies[0].text, "answer to: hi from the binary");
    assert_eq!(
        llm.requests()[0].authorization.as_deref(),
        Some("Bearer sk-test")
    );

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("stops within the grace period")
        .unwrap();
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = err.read_to_string(&mut stderr).await;
    }
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("123456:test"), "the token is never logged");
    assert!(!stderr.contains("sk-test"), "the key is never logged");
}

#[tokio::test]
async fn check_config_prints_the_effective_config_without_secrets() {
    let output = bot()
        .env("TELEGRAM_BOT_TOKEN", "1:TOPSECRET")
        .env("LLM_API_KEY", "sk-TOPSECRET")
        .env("LLMGRAM_LLM__MODEL", "from-env")
        .env("LLMGRAM_ADMIN_IDS", "5,6")
        .arg("check-config")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("TOPSECRET"), "a secret was printed");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["config"]["llm"]["model"], "from-env");
    assert_eq!(report["config"]["admin_ids"], serde_json::json!([5, 6]));
    assert_eq!(report["secrets"]["LLM_API_KEY"], "set (redacted)");

    let output = bot().arg("check-config").output().await.unwrap();
    assert_eq!(output.status.code(), Some(2));
}
