//! Starting the service against the loopback fakes, and small waiting helpers.

pub mod cluster;
pub mod process;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llmgram::app::{self, Service};
use llmgram::config::{Config, Secrets, TOKEN_VAR};
use llmgram_fakes::{FakeLlm, FakeTelegram, SentMessage};
use tempfile::TempDir;

/// A running service with its fakes and its storage directory.
pub struct Harness {
    pub telegram: FakeTelegram,
    pub llm: FakeLlm,
    pub service: Service,
    storage: TempDir,
}

/// Generous upper bound for anything the tests wait for; a healthy run takes
/// a small fraction of it.
pub const WAIT: Duration = Duration::from_secs(20);

/// A breaker that opens after two timeouts of 300 ms and stays open for
/// 1.5 s: fast enough for a test to see every state. A request gives up
/// after 1 s, so one arriving while the breaker is open cannot wait for the
/// probe (1.5 s away) and gets the fallback reply at once.
pub const FAST_BREAKER: &str = "llm.request_timeout = \"300ms\"\n\
     llm.retry.max_attempts = 1\n\
     llm.fallback_after = \"1s\"\n\
     breaker.window = 4\n\
     breaker.min_calls = 2\n\
     breaker.open_for = \"1500ms\"\n";

/// Rate and flood limits no test reaches by accident, and message merging
/// off (tests count one reply per message unless they turn it on).
pub const GENEROUS_LIMITS: &[(&str, &str)] = &[
    ("session.merge_window", "\"0s\""),
    ("limits.user_messages_per_minute", "1000000"),
    ("limits.user_llm_per_minute", "1000000"),
    ("limits.global_llm_per_second", "1000000"),
    ("limits.new_chats_per_minute", "1000000"),
    ("telegram.per_chat_rate", "1000000"),
    ("telegram.per_chat_burst", "1000000"),
    ("telegram.global_rate", "1000000"),
    ("telegram.group_per_minute", "1000000"),
];

/// Behaviour the suites were written against, kept explicit now that the
/// defaults changed (issue 16): whole answers (`llm.stream` defaults to
/// true) and, when a test streams, the edited live message
/// (`telegram.drafts` defaults to true). A test that sets either key gets
/// its own value; `tests/suite/drafts.rs` tests the defaults.
pub const PINNED_BEHAVIOUR: &[(&str, &str)] =
    &[("llm.stream", "false"), ("telegram.drafts", "false")];

/// The ops API token (`OPS_API_TOKEN`) every test service and test process
/// gets, so the ops listener's mutating routes (`POST /backup`) are enabled.
pub const OPS_TOKEN: &str = "test-ops-token";

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

impl Harness {
    /// Starts fakes and the service with the default configuration.
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// Starts fakes and the service; `overrides` holds extra configuration as
    /// TOML dotted keys (`session.idle_timeout = "300ms"`).
    pub async fn start_with(overrides: &str) -> Self {
        let storage = tempfile::tempdir().expect("temp dir");
        Self::start_in(storage, overrides).await
    }

    /// Starts fakes and the service with its store in `storage`.
    pub async fn start_in(storage: TempDir, overrides: &str) -> Self {
        let telegram = FakeTelegram::start().await;
        let llm = FakeLlm::start().await;
        Self::start_with_fakes(telegram, llm, storage, overrides).await
    }

    /// Starts the service against `telegram`, which the test prepared
    /// first (updates queued, faults set) so the bot meets them from its
    /// first call.
    pub async fn start_against(telegram: FakeTelegram, overrides: &str) -> Self {
        let storage = tempfile::tempdir().expect("temp dir");
        let llm = FakeLlm::start().await;
        Self::start_with_fakes(telegram, llm, storage, overrides).await
    }

    /// Stops the service and starts a new one on the same store and fakes,
    /// as a process restart would (Telegram's update ids keep counting).
    pub async fn restart(self, overrides: &str) -> Self {
        self.service.shutdown().await.expect("clean shutdown");
        Self::start_with_fakes(self.telegram, self.llm, self.storage, overrides).await
    }

    async fn start_with_fakes(
        telegram: FakeTelegram,
        llm: FakeLlm,
        storage: TempDir,
        overrides: &str,
    ) -> Self {
        init_logging();
        // Tests send bursts far beyond a person's pace (and Telegram's): the
        // limits are raised by config, except those the test sets itself.
        let limits: String = GENEROUS_LIMITS
            .iter()
            .chain(PINNED_BEHAVIOUR)
            .filter(|(key, _)| !overrides.contains(key))
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect();
        let config = Config::from_defaults_with(&format!(
            "{limits}ops.listen = \"127.0.0.1:0\"\n\
             telegram.api_url = \"{}\"\n\
             telegram.poll_timeout = \"1s\"\n\
             llm.base_url = \"{}\"\n\
             storage.path = \"{}\"\n\
             {overrides}",
            telegram.api_url(),
            llm.base_url(),
            storage.path().display(),
        ))
        .expect("test config");
        let secrets = Secrets::from_lookup(&config, |var| match var {
            TOKEN_VAR => Some("123456:test".into()),
            "OPS_API_TOKEN" => Some(OPS_TOKEN.into()),
            _ => None,
        })
        .expect("secrets");
        let instance = format!("test{}", INSTANCES.fetch_add(1, Ordering::Relaxed));
        let service = app::start(config, secrets, &instance)
            .await
            .expect("service starts");
        Self {
            telegram,
            llm,
            service,
            storage,
        }
    }

    /// Sends a text as a user of a private chat (chat id = user id).
    pub fn say(&self, chat_id: i64, text: &str) -> i64 {
        self.telegram.push_text(chat_id, chat_id as u64, text)
    }

    /// Waits until `chat_id` has received `n` messages; fails the test if not.
    pub async fn replies(&self, chat_id: i64, n: usize) -> Vec<SentMessage> {
        let sent = self.telegram.wait_for_sent_to(chat_id, n, WAIT).await;
        assert!(
            sent.len() >= n,
            "chat {chat_id}: expected {n} replies, got {}: {:?}",
            sent.len(),
            sent.iter().map(|m| &m.text).collect::<Vec<_>>()
        );
        sent
    }

    /// Stops the service gracefully and checks it stopped cleanly.
    pub async fn stop(self) {
        self.service.shutdown().await.expect("clean shutdown");
    }

    /// The service's store directory (`storage.path`).
    pub fn storage_path(&self) -> &std::path::Path {
        self.storage.path()
    }

    /// Stops the service and hands back its store directory.
    pub async fn stop_keeping_store(self) -> TempDir {
        self.service.shutdown().await.expect("clean shutdown");
        self.storage
    }
}

/// Waits until `check` holds, polling every 20 ms, up to [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A loopback port free at the moment of asking.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits until the chat shows at least `messages` messages, none of them
/// changing for a while (a streamed answer has settled), and returns their
/// texts.
pub async fn settled_transcript(h: &Harness, chat_id: i64, messages: usize) -> Vec<String> {
    let mut last = Vec::new();
    let mut stable_since = tokio::time::Instant::now();
    eventually("the answer to settle", || {
        let now = h.telegram.transcript(chat_id);
        if now != last {
            last = now.clone();
            stable_since = tokio::time::Instant::now();
        }
        let settled = now.len() >= messages && stable_since.elapsed() > Duration::from_millis(700);
        async move { settled }
    })
    .await;
    last.into_iter().map(|(_, text)| text).collect()
}
