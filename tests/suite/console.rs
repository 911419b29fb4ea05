//! `llmgram chat`: the real binary talks to the fake LLM through the bot's
//! actors, reading stdin and answering on stdout, with no Telegram at all.

use std::path::Path;
use std::process::{Output, Stdio};

use llmgram::config::Config;
use llmgram_fakes::{FakeLlm, LlmReply};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::common::WAIT;

/// Runs `llmgram chat` against `llm` with `input` on stdin and no bot
/// token, and returns once it exits by itself.
async fn chat(llm: &FakeLlm, input: &str, args: &[&str], data: Option<&Path>) -> Output {
    let scratch = tempfile::tempdir().unwrap();
    let mut command = chat_command(llm, scratch.path(), args, data);
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("chat exits at the end of stdin")
        .unwrap();
    assert!(
        !scratch.path().join("bot-data").exists(),
        "chat used the bot's storage.path"
    );
    assert_eq!(
        std::fs::read_dir(scratch.path().join("tmp"))
            .unwrap()
            .count(),
        0,
        "the temporary store is removed at exit"
    );
    output
}

/// The `llmgram chat` command, its temporary files under `scratch/tmp`.
fn chat_command(llm: &FakeLlm, scratch: &Path, args: &[&str], data: Option<&Path>) -> Command {
    let tmp = scratch.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_llmgram"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TMPDIR", &tmp)
        // Where a bot would keep its store: chat must not touch it.
        .env("LLMGRAM_STORAGE__PATH", scratch.join("bot-data"))
        .env("LLMGRAM_LLM__BASE_URL", llm.base_url())
        .env("LLMGRAM_LLM__RETRY__MAX_ATTEMPTS", "1")
        // Logs on: they must all go to stderr.
        .env("LLMGRAM_CONSOLE__LOG_LEVEL", "info")
        .arg("chat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(data) = data {
        command.arg("--data-dir").arg(data);
    }
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_answers_text_and_commands_on_stdout_without_a_token() {
    let llm = FakeLlm::start().await;
    let output = chat(&llm, "hello\n/help\n", &[], None).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}\n{}", stderr(&output));
    let (first, rest) = out.split_once('\n').unwrap();
    assert_eq!(first, "answer to: hello");
    assert!(
        rest.starts_with("Send any text and I'll answer"),
        "help after the answer: {out}"
    );
    assert!(rest.contains("/reset"), "{out}");
    assert!(!out.contains("INFO"), "logs leaked into stdout: {out}");
    assert!(stderr(&output).contains("INFO"), "logs go to stderr");

    let requests = llm.requests();
    assert_eq!(requests.len(), 1, "/help needs no LLM call");
    let system = &Config::from_defaults_with("").unwrap().llm.system_prompt;
    assert_eq!(
        requests[0].messages,
        [
            ("system".to_owned(), system.clone()),
            ("user".to_owned(), "hello".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_user_is_an_admin_and_speaks_its_language() {
    let llm = FakeLlm::start().await;
    let output = chat(
        &llm,
        "/model llama-3.3-70b-versatile\nhi\n/stats\n",
        &["--language", "ru"],
        None,
    )
    .await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}\n{}", stderr(&output));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("llama-3.3-70b-versatile") && lines[0].contains("установлена"),
        "the admin's model change, in Russian: {out}"
    );
    assert_eq!(lines[1], "answer to: hi");
    assert!(!out.contains("not allowed"), "{out}");
    assert_eq!(llm.requests()[0].model, "llama-3.3-70b-versatile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_llm_gives_the_localised_fallback_not_the_error() {
    let llm = FakeLlm::start().await;
    llm.set_responder(|_| LlmReply::status(500, None));
    let output = chat(&llm, "hello\n", &[], None).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}\n{}", stderr(&output));
    assert_eq!(
        out.trim_end(),
        "The assistant can't answer right now. Please try again in a minute."
    );
    assert!(llm.request_count() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_keeps_the_conversation_between_runs() {
    let llm = FakeLlm::start().await;
    let data = tempfile::tempdir().unwrap();
    let first = chat(&llm, "my name is Ada\n", &[], Some(data.path())).await;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    // Numbered after the first run's updates: not skipped as answered.
    let second = chat(&llm, "what is my name?\n", &[], Some(data.path())).await;
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert_eq!(stdout(&second).trim_end(), "answer to: what is my name?");
    let last = llm.requests().pop().unwrap();
    let users: Vec<&str> = last
        .messages
        .iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, content)| content.as_str())
        .collect();
    assert_eq!(users, ["my name is Ada", "what is my name?"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_chat_gracefully() {
    use tokio::io::AsyncBufReadExt as _;
    let llm = FakeLlm::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let mut child = chat_command(&llm, scratch.path(), &[], None)
        .spawn()
        .unwrap();
    // Stdin stays open: only the signal can end it.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(WAIT, stdout.read_line(&mut line))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(line, "answer to: hello\n");

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("stops in time")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    drop(stdin);
    assert_eq!(
        std::fs::read_dir(scratch.path().join("tmp"))
            .unwrap()
            .count(),
        0,
        "the temporary store is removed on a signal too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_prints_as_it_grows_and_only_once() {
    let llm = FakeLlm::start().await;
    let chunks: Vec<String> = (0..20).map(|i| format!("w{i} ")).collect();
    let full = chunks.concat();
    llm.script(vec![LlmReply::now(llmgram_fakes::LlmReplyKind::Stream {
        chunks,
        chunk_delay: std::time::Duration::from_millis(30),
        break_after: None,
    })]);
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[llm]\nstream = true\n[telegram]\nedit_interval = \"100ms\"\n",
    )
    .unwrap();
    let config_path = config.path().to_str().unwrap();
    let output = chat(&llm, "tell me\n", &["--config", config_path], None).await;
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}\n{}", stderr(&output));
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(squeeze(&out), squeeze(&full), "every word once, in order");
    assert!(llm.requests()[0].stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_sends_local_images_voice_notes_and_files() {
    let llm = FakeLlm::start().await;
    llm.set_transcript("a question spoken aloud");
    let files = tempfile::tempdir().unwrap();
    let image = files.path().join("beach.jpg");
    std::fs::write(&image, llmgram_fakes::jpeg(320, 240, 1_000)).unwrap();
    let voice = files.path().join("note.ogg");
    let mut ogg = b"OggS\x00\x02".to_vec();
    ogg.resize(500, 1);
    std::fs::write(&voice, &ogg).unwrap();
    let text = files.path().join("list.md");
    std::fs::write(&text, "# Plan\n- shoot at dawn\n").unwrap();
    let input = format!(
        "/image {} /caption for my beach post\n/voice {}\n/file {} summarise\n/file {}/missing.txt\n",
        image.display(),
        voice.display(),
        text.display(),
        files.path().display(),
    );
    let output = chat(&llm, &input, &[], None).await;
    let out = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));

    let requests = llm.requests();
    assert_eq!(requests.len(), 3, "{out}");
    assert_eq!(requests[0].images.len(), 1);
    assert!(
        requests[0]
            .last_user_message()
            .contains("for my beach post")
    );
    assert_eq!(llm.transcription_requests()[0].bytes, ogg);
    assert!(
        requests[1]
            .last_user_message()
            .contains("a question spoken aloud")
    );
    assert!(out.contains("a question spoken aloud"), "{out}");
    assert!(requests[2].last_user_message().contains("shoot at dawn"));
    assert!(out.contains("couldn't get this file"), "{out}");
}
