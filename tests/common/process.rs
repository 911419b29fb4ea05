//! The real `llmgram` binary as a child process, for crash tests.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use llmgram_fakes::{FakeLlm, FakeTelegram};
use tokio::process::{Child, Command};

use super::WAIT;

/// A running bot process.
pub struct BotProcess {
    child: Child,
    log: PathBuf,
}

impl BotProcess {
    /// Starts the binary against the fakes with its store in `data`, and
    /// waits until it polls.
    pub async fn start(telegram: &FakeTelegram, llm: &FakeLlm, data: &Path) -> Self {
        let polls_before = telegram.get_updates_calls();
        let process = Self::spawn(telegram, llm, data);
        let deadline = tokio::time::Instant::now() + WAIT;
        while telegram.get_updates_calls() <= polls_before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the bot did not poll; log:\n{}",
                process.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        process
    }

    /// Starts the binary without waiting for anything.
    pub fn spawn(telegram: &FakeTelegram, llm: &FakeLlm, data: &Path) -> Self {
        Self::spawn_with(telegram, llm, data, &[])
    }

    /// Starts the binary with extra environment variables (which win).
    pub fn spawn_with(
        telegram: &FakeTelegram,
        llm: &FakeLlm,
        data: &Path,
        extra_env: &[(&str, String)],
    ) -> Self {
        Self::spawn_in(
            Command::new(env!("CARGO_BIN_EXE_llmgram")),
            telegram,
            llm,
            data,
            extra_env,
        )
    }

    /// Like [`spawn_with`](Self::spawn_with), with the process's limit of
    /// open file descriptors (`RLIMIT_NOFILE`) lowered to `nofile`.
    pub fn spawn_with_nofile(
        telegram: &FakeTelegram,
        llm: &FakeLlm,
        data: &Path,
        extra_env: &[(&str, String)],
        nofile: u32,
    ) -> Self {
        let mut shell = Command::new("sh");
        shell.args([
            "-c",
            &format!("ulimit -n {nofile} && exec \"$0\""),
            env!("CARGO_BIN_EXE_llmgram"),
        ]);
        Self::spawn_in(shell, telegram, llm, data, extra_env)
    }

    fn spawn_in(
        mut command: Command,
        telegram: &FakeTelegram,
        llm: &FakeLlm,
        data: &Path,
        extra_env: &[(&str, String)],
    ) -> Self {
        let log = data.with_extension(format!("{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TELEGRAM_BOT_TOKEN", "123456:test")
            .env("OPS_API_TOKEN", super::OPS_TOKEN)
            .env("LLMGRAM_TELEGRAM__API_URL", telegram.api_url())
            .env("LLMGRAM_TELEGRAM__POLL_TIMEOUT", "1s")
            .env("LLMGRAM_LLM__BASE_URL", llm.base_url())
            .env("LLMGRAM_LLM__REQUEST_TIMEOUT", "30s")
            .env("LLMGRAM_STORAGE__PATH", data)
            .env("LLMGRAM_LOG__LEVEL", "info")
            .env("LLMGRAM_LIMITS__USER_MESSAGES_PER_MINUTE", "1000000")
            .env("LLMGRAM_LIMITS__USER_LLM_PER_MINUTE", "1000000")
            .env("LLMGRAM_LIMITS__GLOBAL_LLM_PER_SECOND", "1000000")
            .env("LLMGRAM_LIMITS__NEW_CHATS_PER_MINUTE", "1000000")
            .env("LLMGRAM_TELEGRAM__PER_CHAT_RATE", "1000000")
            .env("LLMGRAM_TELEGRAM__PER_CHAT_BURST", "1000000")
            .env("LLMGRAM_TELEGRAM__GLOBAL_RATE", "1000000")
            .env("LLMGRAM_TELEGRAM__GROUP_PER_MINUTE", "1000000")
            .env("LLMGRAM_SESSION__MERGE_WINDOW", "0s")
            .env("LLMGRAM_OPS__LISTEN", "127.0.0.1:0")
            // As the in-process harness pins them (`PINNED_BEHAVIOUR`).
            .env("LLMGRAM_LLM__STREAM", "false")
            .env("LLMGRAM_TELEGRAM__DRAFTS", "false")
            .envs(extra_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        Self { child, log }
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// Sends SIGTERM and returns the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("stops in time")
            .expect("wait");
        status.code()
    }

    /// Sends SIGTERM twice, 200 ms apart, and returns the exit code.
    pub async fn terminate_twice(mut self) -> Option<i32> {
        let pid = self.child.id().expect("running").to_string();
        for _ in 0..2 {
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill");
            assert!(status.success());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("stops in time")
            .expect("wait")
            .code()
    }

    /// Sends the signal named `name` (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// The process id (`None` once it has been waited for).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process still runs (it has not exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `within` for the process to exit by itself and returns
    /// its exit code (`None` also when killed by a signal).
    pub async fn exit_code_within(mut self, within: Duration) -> Option<i32> {
        let log = self.log();
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait").code(),
            Err(_) => panic!("the process did not exit; log:\n{log}"),
        }
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub async fn exit_code(mut self) -> Option<i32> {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exits in time")
            .expect("wait")
            .code()
    }
}
