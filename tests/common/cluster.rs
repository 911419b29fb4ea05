//! Several instances of the real binary on one real PostgreSQL, behind
//! their webhooks, with the loopback fakes (issue 18's tests).

use std::path::PathBuf;
use std::time::Duration;

use llmgram_fakes::{FakeLlm, FakeTelegram, TempPostgres};
use tokio::time::Instant;

use super::free_port;
use super::process::BotProcess;

/// The secret every instance registers (they share one webhook URL).
pub const SECRET: &str = "cluster-test-secret";
/// Short timings so a failover takes seconds: lease 2 s, grace 1 s.
pub const LEASE: Duration = Duration::from_secs(2);
pub const GRACE: Duration = Duration::from_secs(1);
pub const SWEEP: Duration = Duration::from_millis(300);

/// One instance: its webhook port and its process, while it runs.
pub struct Node {
    pub port: u16,
    pub dir: PathBuf,
    pub process: Option<BotProcess>,
}

/// A deployment: PostgreSQL, the fakes and the instances.
pub struct Cluster {
    pub db: TempPostgres,
    pub telegram: FakeTelegram,
    pub llm: FakeLlm,
    pub nodes: Vec<Node>,
    /// Environment every instance gets on top of the cluster's.
    pub extra_env: Vec<(&'static str, String)>,
    _dirs: tempfile::TempDir,
    client: reqwest::Client,
}

impl Cluster {
    pub async fn start(instances: usize) -> Self {
        Self::start_with(instances, &[]).await
    }

    /// Like [`start`](Self::start), every instance with `extra_env` too.
    pub async fn start_with(instances: usize, extra_env: &[(&'static str, String)]) -> Self {
        let db = tokio::task::spawn_blocking(TempPostgres::start)
            .await
            .unwrap()
            .expect("a throwaway PostgreSQL (install the postgresql package)");
        let telegram = FakeTelegram::start().await;
        let llm = FakeLlm::start().await;
        let dirs = tempfile::tempdir().unwrap();
        let nodes = (0..instances)
            .map(|index| Node {
                port: free_port(),
                dir: dirs.path().join(format!("node{index}")),
                process: None,
            })
            .collect();
        let mut cluster = Self {
            db,
            telegram,
            llm,
            nodes,
            extra_env: extra_env.to_vec(),
            _dirs: dirs,
            client: reqwest::Client::new(),
        };
        for index in 0..instances {
            cluster.launch(index).await;
        }
        cluster
    }

    pub fn env(&self, port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("LLMGRAM_STORAGE__BACKEND", "postgres".into()),
            ("LLMGRAM_STORAGE__POSTGRES__URL", self.db.url()),
            ("LLMGRAM_STORAGE__POSTGRES__LEASE", "2s".into()),
            ("LLMGRAM_STORAGE__POSTGRES__RENEW_INTERVAL", "500ms".into()),
            ("LLMGRAM_STORAGE__POSTGRES__GRACE", "1s".into()),
            ("LLMGRAM_STORAGE__POSTGRES__SEND_MARGIN", "700ms".into()),
            ("LLMGRAM_STORAGE__POSTGRES__SWEEP_INTERVAL", "300ms".into()),
            ("LLMGRAM_STORAGE__POSTGRES__SWEEP_AFTER", "1s".into()),
            ("LLMGRAM_STORAGE__POSTGRES__STATEMENT_TIMEOUT", "1s".into()),
            ("LLMGRAM_TELEGRAM__MODE", "webhook".into()),
            ("LLMGRAM_WEBHOOK__LISTEN", format!("127.0.0.1:{port}")),
            (
                "LLMGRAM_WEBHOOK__URL",
                format!("http://127.0.0.1:{port}/tg-hook"),
            ),
            ("LLMGRAM_WEBHOOK__PER_IP_PER_SECOND", "1000000".into()),
            ("TELEGRAM_WEBHOOK_SECRET", SECRET.into()),
        ]
        .into_iter()
        .chain(self.extra_env.iter().cloned())
        .collect()
    }

    /// Starts instance `index` and waits until its webhook listens.
    pub async fn launch(&mut self, index: usize) {
        let port = self.nodes[index].port;
        let env = self.env(port);
        let process =
            BotProcess::spawn_with(&self.telegram, &self.llm, &self.nodes[index].dir, &env);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "instance {index} did not listen; log:\n{}",
                process.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.nodes[index].process = Some(process);
    }

    pub fn url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}/tg-hook", self.nodes[index].port)
    }

    /// Posts `update` as Telegram does to instance `index`, falling over to
    /// the next instance while one refuses (down, restarting), as a load
    /// balancer's health checks would; retries a 5xx as Telegram does.
    pub async fn post(&self, mut index: usize, update: &serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sent = self
                .client
                .post(self.url(index))
                .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
                .json(update)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => return,
                _ => {
                    assert!(Instant::now() < deadline, "no instance took the update");
                    index = (index + 1) % self.nodes.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// How many times the bot sent `text` to `chat`.
    /// Waits until the bot sent `chat` a message containing `part`.
    pub async fn wait_for(&self, chat: i64, part: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .telegram
            .sent_to(chat)
            .iter()
            .any(|message| message.text.contains(part))
        {
            assert!(
                Instant::now() < deadline,
                "chat {chat} never got {part:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn answered(&self, chat: i64, text: &str) -> usize {
        self.telegram
            .sent_to(chat)
            .iter()
            .filter(|message| message.text == text)
            .count()
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(index, node)| {
                node.process
                    .as_ref()
                    .map(|p| format!("--- instance {index}\n{}", p.log()))
            })
            .collect()
    }
}
