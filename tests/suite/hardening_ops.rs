//! Hardening of the operator's surface: the ops listener's mutating routes
//! need `OPS_API_TOKEN`, backups cannot be aimed into the data directory or
//! run several at once, `restore` takes only a verified backup, and
//! credentials inside URL settings are never printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llmgram::store::inspect;
use llmgram::telegram::inbound::ChatId;
use llmgram_fakes::{FakeLlm, FakeTelegram};

use crate::common::free_port;
use crate::common::process::BotProcess;
use crate::common::{Harness, OPS_TOKEN, WAIT};

/// Runs the binary with only `env` (and PATH) in its environment.
fn cli(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_llmgram"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// `POST /backup` to the ops listener at `base`, with `token` as bearer.
async fn post_backup(base: &str, to: &Path, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/backup"))
        .json(&serde_json::json!({ "to": to }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("ops listener answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Every file below `dir` with its contents, to see that nothing changed.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.insert(path.clone(), Vec::new());
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_and_the_start_log_hide_credentials_in_urls() {
    let output = cli(
        &["check-config"],
        &[
            ("TELEGRAM_BOT_TOKEN", "1:x".into()),
            (
                "LLMGRAM_LLM__BASE_URL",
                "https://someone:hunter2pw@llm.example/v1".into(),
            ),
            (
                "LLMGRAM_TELEGRAM__API_URL",
                "https://bot:hunter2pw@tg.example".into(),
            ),
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("hunter2pw"), "a URL password was printed");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let base_url = report["config"]["llm"]["base_url"].as_str().unwrap();
    assert!(base_url.contains("llm.example/v1"), "{base_url}");

    // The start-up log names the provider's URL: without the password.
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let with_userinfo = llm
        .base_url()
        .replacen("http://", "http://someone:hunter2pw@", 1);
    let bot = BotProcess::spawn_with(
        &telegram,
        &llm,
        &dir.path().join("data"),
        &[("LLMGRAM_LLM__BASE_URL", with_userinfo)],
    );
    assert!(
        telegram.wait_for_get_updates(1, WAIT).await,
        "{}",
        bot.log()
    );
    let log = bot.log();
    assert!(log.contains("llmgram started"), "{log}");
    assert!(
        !log.contains("hunter2pw"),
        "a URL password was logged: {log}"
    );
    assert_eq!(bot.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_needs_the_ops_token_and_probes_do_not() {
    let h = Harness::start().await;
    let base = format!("http://{}", h.service.ops_addr().expect("ops listener"));
    let dir = tempfile::tempdir().unwrap();

    let (status, body) = post_backup(&base, &dir.path().join("none"), None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post_backup(&base, &dir.path().join("wrong"), Some("guess")).await;
    assert_eq!(status, 401, "{body}");
    let almost = format!("{OPS_TOKEN}x");
    let (status, body) = post_backup(&base, &dir.path().join("longer"), Some(&almost)).await;
    assert_eq!(status, 401, "{body}");
    for refused in ["none", "wrong", "longer"] {
        assert!(!dir.path().join(refused).exists(), "{refused} was written");
    }

    let (status, body) = post_backup(&base, &dir.path().join("ok"), Some(OPS_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(dir.path().join("ok").is_dir());

    let healthz = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(healthz.status().as_u16(), 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_a_public_ops_listener_starts_with_backup_disabled() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A blank variable counts as unset.
    let bot = BotProcess::spawn_with(
        &telegram,
        &llm,
        &dir.path().join("data"),
        &[
            ("OPS_API_TOKEN", String::new()),
            ("LLMGRAM_OPS__LISTEN", format!("0.0.0.0:{port}")),
        ],
    );
    assert!(
        telegram.wait_for_get_updates(1, WAIT).await,
        "{}",
        bot.log()
    );
    let log = bot.log();
    assert!(
        log.contains("OPS_API_TOKEN") && log.contains("disabled"),
        "the start says the mutating routes are off: {log}"
    );

    let base = format!("http://127.0.0.1:{port}");
    for token in [None, Some(""), Some(OPS_TOKEN)] {
        let (status, body) = post_backup(&base, &dir.path().join("copy"), token).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("OPS_API_TOKEN"), "{body}");
    }
    assert!(!dir.path().join("copy").exists());
    let healthz = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(healthz.status().as_u16(), 200);

    // `llmgram backup` without the token says what is missing.
    let output = cli(
        &["backup", "--to", dir.path().join("copy").to_str().unwrap()],
        &[("LLMGRAM_OPS__LISTEN", format!("127.0.0.1:{port}"))],
    );
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OPS_API_TOKEN"), "{stderr}");
    assert!(!dir.path().join("copy").exists());
    assert_eq!(bot.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_aimed_into_the_data_directory_is_refused_and_the_store_still_opens() {
    let h = Harness::start().await;
    h.say(1, "remember me");
    h.replies(1, 1).await;
    let base = format!("http://{}", h.service.ops_addr().expect("ops listener"));
    let data = h.storage_path().to_path_buf();
    let outside = tempfile::tempdir().unwrap();
    let link = outside.path().join("link");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let parentless = outside.path().join("no/such/parents/copy");

    for target in [
        data.join("keyspaces").join("x"),
        data.join("x"),
        data.clone(),
        link.join("x"),
        link.clone(),
        data.join("..").join(data.file_name().unwrap()).join("y"),
        parentless.clone(),
    ] {
        let (status, body) = post_backup(&base, &target, Some(OPS_TOKEN)).await;
        assert_eq!(status, 400, "{}: {body}", target.display());
    }
    assert!(!data.join("keyspaces").join("x").exists());
    assert!(!data.join("x").exists() && !data.join("y").exists());
    assert!(!outside.path().join("no").exists(), "parents were created");

    // A clean stop and a new start on the same store still work.
    let h = h.restart("").await;
    h.say(1, "still there?");
    assert_eq!(h.replies(1, 2).await.len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_backup_runs_at_a_time() {
    // Enough data that a copy takes a while: 400 records of 64 KiB.
    let storage = tempfile::tempdir().unwrap();
    {
        let store = inspect::open(storage.path()).unwrap();
        for chat in 1..=400 {
            store
                .put_raw_chat(ChatId(chat), &vec![chat as u8; 64 * 1024])
                .unwrap();
        }
    }
    let h = Harness::start_in(storage, "").await;
    let base = format!("http://{}", h.service.ops_addr().expect("ops listener"));
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    // Rounds of 8 requests sent at once: a round may by chance be spread
    // out enough for each copy to end before the next request arrives.
    let mut busy = Vec::new();
    let mut ok = 0;
    for round in 0..5 {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
        let requests: Vec<_> = (0..8)
            .map(|i| {
                let (client, barrier) = (client.clone(), barrier.clone());
                let url = format!("{base}/backup");
                let to = dir.path().join(format!("copy{round}-{i}"));
                tokio::spawn(async move {
                    let request = client
                        .post(url)
                        .bearer_auth(OPS_TOKEN)
                        .json(&serde_json::json!({ "to": to }));
                    barrier.wait().await;
                    let response = request.send().await.expect("ops listener answers");
                    let status = response.status().as_u16();
                    (status, response.text().await.unwrap_or_default(), to)
                })
            })
            .collect();
        for request in requests {
            let (status, body, to) = request.await.unwrap();
            match status {
                200 => ok += 1,
                409 => busy.push((body, to)),
                other => panic!("{other}: {body}"),
            }
        }
        if !busy.is_empty() {
            break;
        }
    }
    assert!(ok >= 1);
    assert!(!busy.is_empty(), "concurrent backups all ran ({ok})");
    for (body, to) in &busy {
        assert!(body.contains("in progress"), "{body}");
        assert!(!to.exists(), "{} was written", to.display());
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_takes_only_a_verified_backup_and_never_writes_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let restore = |from: &Path, into: &Path| {
        cli(
            &["restore", "--from", from.to_str().unwrap()],
            &[("LLMGRAM_STORAGE__PATH", into.display().to_string())],
        )
    };
    let refused = |from: &Path, why: &str| {
        let before = tree(from);
        let into = dir.path().join("refused");
        let output = restore(from, &into);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(why), "{}: {stderr}", from.display());
        assert_eq!(tree(from), before, "{} was changed", from.display());
        assert!(
            std::fs::read_dir(&into).map_or(true, |mut d| d.next().is_none()),
            "something was restored from {}",
            from.display()
        );
    };

    // An empty directory, an unrelated one, and a live data directory.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    refused(&empty, "manifest");
    let unrelated = dir.path().join("unrelated");
    std::fs::create_dir(&unrelated).unwrap();
    std::fs::write(unrelated.join("notes.txt"), "not a backup").unwrap();
    refused(&unrelated, "manifest");
    let live = dir.path().join("live");
    inspect::open(&live)
        .unwrap()
        .put_raw_chat(ChatId(1), b"x")
        .unwrap();
    refused(&live, "manifest");

    // A real backup of a bot with two chats.
    let h = Harness::start().await;
    for chat in [1, 2] {
        h.say(chat, &format!("hello from {chat}"));
        h.replies(chat, 1).await;
    }
    let base = format!("http://{}", h.service.ops_addr().expect("ops listener"));
    // A turn is committed just after its reply is sent: back up until the
    // copy holds both chats.
    let mut attempt = 0;
    let backup = loop {
        attempt += 1;
        let backup = dir.path().join(format!("backup{attempt}"));
        let (status, body) = post_backup(&base, &backup, Some(OPS_TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        if report["chats"] == 2 {
            break backup;
        }
        assert!(attempt < 100, "the turns were never committed: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    h.stop().await;

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "llmgram-backup", "{manifest}");
    assert_eq!(manifest["version"], 1, "{manifest}");
    assert!(manifest["created_at"].as_str().is_some(), "{manifest}");
    assert_eq!(manifest["sha256"].as_str().map(str::len), Some(64));
    let counts = manifest["keyspaces"].as_array().unwrap();
    let chats = counts.iter().find(|k| k["name"] == "chats").unwrap();
    assert_eq!(chats["records"], 2, "{manifest}");

    // Tampered copies: a flipped byte in the records, a changed count.
    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::create_dir(&to).unwrap();
        for file in ["manifest.json", "records.bin"] {
            std::fs::copy(backup.join(file), to.join(file)).unwrap();
        }
        to
    };
    let flipped = copy("flipped");
    let mut records = std::fs::read(flipped.join("records.bin")).unwrap();
    let middle = records.len() / 2;
    records[middle] ^= 0x01;
    std::fs::write(flipped.join("records.bin"), records).unwrap();
    refused(&flipped, "checksum");
    let recounted = copy("recounted");
    let text = std::fs::read_to_string(recounted.join("manifest.json")).unwrap();
    let mut changed: serde_json::Value = serde_json::from_str(&text).unwrap();
    for keyspace in changed["keyspaces"].as_array_mut().unwrap() {
        if keyspace["name"] == "chats" {
            keyspace["records"] = serde_json::json!(3);
        }
    }
    std::fs::write(recounted.join("manifest.json"), changed.to_string()).unwrap();
    refused(&recounted, "count");
    let future = copy("future");
    let mut newer = manifest.clone();
    newer["version"] = serde_json::json!(99);
    std::fs::write(future.join("manifest.json"), newer.to_string()).unwrap();
    refused(&future, "version");

    // The intact backup restores, and is left exactly as it was.
    let before = tree(&backup);
    let restored = dir.path().join("restored");
    let output = restore(&backup, &restored);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(tree(&backup), before, "the backup was written to");
    let store = inspect::open(&restored).unwrap();
    for chat in [1, 2] {
        let record = store.chat(ChatId(chat)).unwrap().expect("chat restored");
        let said = format!("hello from {chat}");
        assert!(record.history.iter().any(|m| m.content == said));
    }
}
