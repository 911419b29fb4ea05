//! Hardening at start: every documented metric family exists at zero on a
//! fresh process, and stray `LLMGRAM_*` variables do not stop the bot.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use llmgram_fakes::{FakeLlm, FakeTelegram};
use tokio::process::Command;

use crate::common::WAIT;
use crate::common::free_port;
use crate::common::process::BotProcess;

/// README's "Metrics" table: family name → type.
fn documented_families() -> BTreeMap<String, String> {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("### Metrics")
        .expect("README has a Metrics section");
    let section = &readme[start + 3..];
    let end = section.find("\n#").unwrap_or(section.len());
    section[..end]
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix("`llmgram_")?.strip_suffix('`')?;
            let kind = cells.next()?;
            Some((format!("llmgram_{name}"), kind.to_owned()))
        })
        .collect()
}

/// `# TYPE name kind` lines of a Prometheus exposition.
fn exported_families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_binary_exports_every_documented_family_at_zero() {
    let documented = documented_families();
    assert!(documented.len() >= 20, "{documented:?}");
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [("LLMGRAM_OPS__LISTEN", format!("127.0.0.1:{port}"))];
    let bot = BotProcess::spawn_with(&telegram, &llm, &dir.path().join("data"), &env);
    assert!(
        telegram.wait_for_get_updates(1, WAIT).await,
        "{}",
        bot.log()
    );
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported = exported_families(&text);
    let missing: BTreeSet<_> = documented
        .keys()
        .filter(|name| !exported.contains_key(*name))
        .collect();
    assert!(missing.is_empty(), "not exported at start: {missing:?}");
    let undocumented: BTreeSet<_> = exported
        .keys()
        .filter(|name| !documented.contains_key(*name))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in README: {undocumented:?}"
    );
    for (name, kind) in &documented {
        assert_eq!(Some(kind), exported.get(name), "type of {name}");
    }
    // The series an alert rule watches exist with their labels, at zero.
    for series in [
        "llmgram_llm_errors_total{provider=\"groq\",class=\"server\"} 0",
        "llmgram_llm_errors_total{provider=\"groq\",class=\"read_timeout\"} 0",
        "llmgram_actor_restarts_total{actor=\"llm_pool\"} 0",
        "llmgram_breaker_transitions_total{provider=\"groq\",to=\"open\"} 0",
        "llmgram_breaker_state{provider=\"groq\"} 0",
        "llmgram_security_events_total{kind=\"webhook_secret\"} 0",
        "llmgram_rejected_inputs_total{reason=\"empty\"} 0",
        "llmgram_reply_latency_seconds_count 0",
    ] {
        assert!(text.contains(series), "missing `{series}` in:\n{text}");
    }
    assert_eq!(bot.terminate().await, Some(0));
}

fn check_config() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_llmgram"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TELEGRAM_BOT_TOKEN", "1:test")
        .arg("check-config")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn kubernetes_service_variables_are_ignored_with_a_warning() {
    let output = tokio::time::timeout(
        WAIT,
        check_config()
            .env("LLMGRAM_SERVICE_HOST", "10.0.0.7")
            .env("LLMGRAM_PORT", "tcp://10.0.0.7:9090")
            .env("LLMGRAM_PORT_9090_TCP_PROTO", "tcp")
            .env("LLMGRAM_LLM__MODEL", "from-env")
            .env("LLMGRAM_ADMIN_IDS", "5")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("ignoring")).collect();
    assert_eq!(warnings.len(), 1, "one warning: {stderr}");
    for name in [
        "LLMGRAM_SERVICE_HOST",
        "LLMGRAM_PORT",
        "LLMGRAM_PORT_9090_TCP_PROTO",
    ] {
        assert!(warnings[0].contains(name), "{name} not named: {stderr}");
    }
    assert!(!warnings[0].contains("LLMGRAM_LLM__MODEL"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["config"]["llm"]["model"], "from-env");
    assert_eq!(report["config"]["admin_ids"], serde_json::json!([5]));
}

#[tokio::test]
async fn a_typo_in_a_section_key_still_stops_the_bot_naming_it() {
    let output = tokio::time::timeout(WAIT, check_config().env("LLMGRAM_LLM__MODLE", "x").output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("modle"), "{stderr}");
    assert!(stderr.contains("LLMGRAM_LLM__MODLE"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_answers_with_kubernetes_service_variables_set() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("LLMGRAM_SERVICE_HOST", "10.0.0.7".to_owned()),
        ("LLMGRAM_PORT", "tcp://10.0.0.7:9090".to_owned()),
    ];
    let bot = BotProcess::spawn_with(&telegram, &llm, &dir.path().join("data"), &env);
    assert!(
        telegram.wait_for_get_updates(1, WAIT).await,
        "{}",
        bot.log()
    );
    telegram.push_text(1, 1, "hello");
    assert_eq!(
        telegram.wait_for_sent_count(1, WAIT).await,
        1,
        "{}",
        bot.log()
    );
    let log = bot.log();
    assert!(
        log.contains("LLMGRAM_SERVICE_HOST") && log.contains("not settings"),
        "{log}"
    );
    assert_eq!(bot.terminate().await, Some(0));
}
