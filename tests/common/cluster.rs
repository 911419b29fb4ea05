//! Several instances of the real binary on one real PostgreSQL, behind
//! their webhooks, with the loopback fakes (issue 18's tests): starting
//! them (optionally behind a real HAProxy), posting updates as Telegram
//! does, killing, stopping and restarting instances and the database,
//! cutting an instance off from the database (on network namespaces,
//! where the machine allows them), and the accounting every fault scenario
//! shares (a closed loop of chats, repeats straddling a fault, answer-time
//! percentiles).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmgram_fakes::{
    FakeLlm, FakeTelegram, PartitionablePostgres, SentMessage, TempHaproxy, TempPostgres,
};
use tokio::time::Instant;

use super::free_port;
use super::process::BotProcess;

/// The secret every instance registers (they share one webhook URL).
pub const SECRET: &str = "cluster-test-secret";
/// Short timings so a failover takes seconds: lease 2 s, grace 1 s.
pub const LEASE: Duration = Duration::from_secs(2);
pub const GRACE: Duration = Duration::from_secs(1);
pub const SWEEP: Duration = Duration::from_millis(300);
/// Sends stop this long before the lease lapses.
pub const SEND_MARGIN: Duration = Duration::from_millis(700);

/// The database of a deployment.
enum Db {
    /// On the host's loopback, one URL for every instance.
    Plain(TempPostgres),
    /// In a network namespace, each instance on its own path (path `n` for
    /// instance `n`).
    Partitionable(PartitionablePostgres),
}

impl Db {
    fn psql(&self, sql: &str) -> std::io::Result<String> {
        match self {
            Db::Plain(db) => db.psql(sql),
            Db::Partitionable(db) => db.psql(sql),
        }
    }

    fn stop(&mut self) {
        match self {
            Db::Plain(db) => db.stop(),
            Db::Partitionable(db) => db.stop(),
        }
    }

    fn start_again(&mut self) -> std::io::Result<()> {
        match self {
            Db::Plain(db) => db.start_again(),
            Db::Partitionable(db) => db.start_again(),
        }
    }

    /// The URL instance `index` connects to.
    fn url_for(&self, index: usize) -> String {
        match self {
            Db::Plain(db) => db.url(),
            Db::Partitionable(db) => db.url_via(index),
        }
    }

    fn partitionable(&self) -> &PartitionablePostgres {
        match self {
            Db::Partitionable(db) => db,
            Db::Plain(_) => panic!("not started with Cluster::start_partitionable"),
        }
    }
}

/// One instance: its webhook and ops ports (fixed across restarts, so a
/// load balancer in front keeps finding it) and its process, while it runs.
pub struct Node {
    pub port: u16,
    pub ops_port: u16,
    pub dir: PathBuf,
    process: Mutex<Option<BotProcess>>,
}

/// Where a driver posts an update.
#[derive(Clone, Copy, Debug)]
pub enum Route {
    /// Straight to instance `n` (falling over to the next one while it
    /// refuses).
    Instance(usize),
    /// Through the HAProxy in front ([`Cluster::start_behind_haproxy`]).
    Proxy,
}

/// One deployment at a time in this test process: each runs PostgreSQL and
/// several instances with a 2 s lease, and two at once on a small CI
/// machine starve each other's lease renewals (an instance whose lease
/// lapses exits, as it must, and the scenario measures the machine).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A deployment: PostgreSQL, the fakes, the instances and optionally an
/// HAProxy in front of them. Shared (`Arc`) between the drivers and the
/// fault injector: every method takes `&self`.
pub struct Cluster {
    db: Arc<Mutex<Db>>,
    /// Per instance, the URL it connects to the database on.
    db_urls: Vec<String>,
    /// Each instance has its own bot token ([`Cluster::token`]).
    own_tokens: bool,
    pub telegram: FakeTelegram,
    pub llm: FakeLlm,
    pub nodes: Vec<Node>,
    pub proxy: Option<TempHaproxy>,
    /// Posts answered with something else than a success (or not at all)
    /// and delivered again by [`post`](Self::post), as Telegram would.
    retried_posts: AtomicUsize,
    /// Of those, the ones answered 500.
    server_errors: AtomicUsize,
    /// Per instance, the posts to it that failed (and were delivered again
    /// elsewhere).
    failed_posts: Vec<AtomicUsize>,
    /// Added to every instance's environment.
    extra_env: Vec<(&'static str, String)>,
    _dirs: tempfile::TempDir,
    client: reqwest::Client,
    /// Held while this deployment exists (see [`ONE_AT_A_TIME`]); dropped
    /// last. `None` for a deployment sharing another's database (and turn).
    _turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl Cluster {
    /// PostgreSQL, the fakes and `instances` instances, each listening.
    pub async fn start(instances: usize) -> Self {
        Self::start_with(instances, Vec::new()).await
    }

    /// As [`start`](Self::start), with `extra` environment variables for
    /// every instance (they win over [`env`](Self::env)'s).
    pub async fn start_with(instances: usize, extra: Vec<(&'static str, String)>) -> Self {
        let turn = ONE_AT_A_TIME.lock().await;
        let db = tokio::task::spawn_blocking(TempPostgres::start)
            .await
            .unwrap()
            .expect("a throwaway PostgreSQL (install the postgresql package)");
        Self::start_on(
            Some(turn),
            Arc::new(Mutex::new(Db::Plain(db))),
            instances,
            extra,
        )
        .await
    }

    /// Another deployment on this one's database, with fakes of its own:
    /// another bot (give it its own `TELEGRAM_BOT_TOKEN` in `extra`).
    pub async fn start_sharing(
        &self,
        instances: usize,
        extra: Vec<(&'static str, String)>,
    ) -> Self {
        Self::start_on(None, Arc::clone(&self.db), instances, extra).await
    }

    /// As [`start`](Self::start) with PostgreSQL in a network namespace,
    /// instance `n` reaching it over its own path, which
    /// [`cut_from_db`](Self::cut_from_db) cuts silently. Each instance has
    /// its own bot token (`123456:node<n>`, the same bot), so
    /// [`FakeTelegram::calls`] tells who sent what. `None` (with the reason
    /// printed) where network namespaces cannot be made.
    pub async fn start_partitionable(instances: usize) -> Option<Self> {
        if let Some(why) = PartitionablePostgres::unavailable_because() {
            eprintln!("skipped: {why}");
            return None;
        }
        let turn = ONE_AT_A_TIME.lock().await;
        let db = tokio::task::spawn_blocking(move || PartitionablePostgres::start(instances))
            .await
            .unwrap()
            .expect("PostgreSQL in a network namespace (install the postgresql package)");
        // Connecting times out as fast as a statement: the store's writer
        // connects again on its own thread, and admissions wait for it, so
        // the default (5 s) would hold every post to a cut-off instance
        // that long.
        let extra = vec![("LLMGRAM_STORAGE__POSTGRES__CONNECT_TIMEOUT", "1s".into())];
        let db = Arc::new(Mutex::new(Db::Partitionable(db)));
        Some(Self::start_on(Some(turn), db, instances, extra).await)
    }

    /// The fakes and `instances` instances on `db`, each listening; `turn`
    /// is `None` for a deployment sharing another's database (and turn).
    async fn start_on(
        turn: Option<tokio::sync::MutexGuard<'static, ()>>,
        db: Arc<Mutex<Db>>,
        instances: usize,
        extra: Vec<(&'static str, String)>,
    ) -> Self {
        let telegram = FakeTelegram::start().await;
        let llm = FakeLlm::start().await;
        let dirs = tempfile::tempdir().unwrap();
        let nodes = (0..instances)
            .map(|index| Node {
                port: free_port(),
                ops_port: free_port(),
                dir: dirs.path().join(format!("node{index}")),
                process: Mutex::new(None),
            })
            .collect();
        let (db_urls, own_tokens) = {
            let db = db.lock().unwrap();
            (
                (0..instances).map(|index| db.url_for(index)).collect(),
                matches!(*db, Db::Partitionable(_)),
            )
        };
        let cluster = Self {
            db_urls,
            own_tokens,
            db,
            telegram,
            llm,
            nodes,
            proxy: None,
            retried_posts: AtomicUsize::new(0),
            server_errors: AtomicUsize::new(0),
            failed_posts: (0..instances).map(|_| AtomicUsize::new(0)).collect(),
            extra_env: extra,
            _dirs: dirs,
            client: reqwest::Client::new(),
            _turn: turn,
        };
        for index in 0..instances {
            cluster.launch(index).await;
        }
        cluster
    }

    /// As [`start`](Self::start), with a real HAProxy running
    /// `deploy/haproxy.cfg`'s rules in front (health checks on each
    /// instance's `/readyz`), once every instance is ready. `None` (with the
    /// reason printed) when no `haproxy` binary can run.
    pub async fn start_behind_haproxy(instances: usize) -> Option<Self> {
        if !llmgram_fakes::haproxy::available() {
            eprintln!("skipped: no haproxy binary (install the haproxy package)");
            return None;
        }
        let mut cluster = Self::start(instances).await;
        for index in 0..instances {
            cluster.wait_ready(index, Duration::from_secs(20)).await;
        }
        let pairs: Vec<(SocketAddr, SocketAddr)> = cluster
            .nodes
            .iter()
            .map(|node| {
                (
                    SocketAddr::from(([127, 0, 0, 1], node.port)),
                    SocketAddr::from(([127, 0, 0, 1], node.ops_port)),
                )
            })
            .collect();
        let proxy = tokio::task::spawn_blocking(move || TempHaproxy::start(&pairs))
            .await
            .unwrap()
            .expect("haproxy starts");
        cluster.proxy = Some(proxy);
        // Its health checks must see every instance up (rise 2 × 200 ms).
        tokio::time::sleep(Duration::from_millis(800)).await;
        Some(cluster)
    }

    /// The environment of instance `index`: PostgreSQL, webhook mode on its
    /// port, its ops listener on its fixed port, the short timings.
    pub fn env(&self, index: usize) -> Vec<(&'static str, String)> {
        let node = &self.nodes[index];
        let mut env = vec![
            ("LLMGRAM_STORAGE__BACKEND", "postgres".into()),
            (
                "LLMGRAM_STORAGE__POSTGRES__URL",
                self.db_urls[index].clone(),
            ),
            ("LLMGRAM_STORAGE__POSTGRES__LEASE", "2s".into()),
            ("LLMGRAM_STORAGE__POSTGRES__RENEW_INTERVAL", "500ms".into()),
            ("LLMGRAM_STORAGE__POSTGRES__GRACE", "1s".into()),
            ("LLMGRAM_STORAGE__POSTGRES__SEND_MARGIN", "700ms".into()),
            ("LLMGRAM_STORAGE__POSTGRES__SWEEP_INTERVAL", "300ms".into()),
            ("LLMGRAM_STORAGE__POSTGRES__SWEEP_AFTER", "1s".into()),
            ("LLMGRAM_STORAGE__POSTGRES__STATEMENT_TIMEOUT", "1s".into()),
            ("LLMGRAM_TELEGRAM__MODE", "webhook".into()),
            (
                "LLMGRAM_WEBHOOK__LISTEN",
                format!("127.0.0.1:{}", node.port),
            ),
            (
                "LLMGRAM_WEBHOOK__URL",
                format!("http://127.0.0.1:{}/tg-hook", node.port),
            ),
            ("LLMGRAM_WEBHOOK__PER_IP_PER_SECOND", "1000000".into()),
            (
                "LLMGRAM_OPS__LISTEN",
                format!("127.0.0.1:{}", node.ops_port),
            ),
            ("TELEGRAM_WEBHOOK_SECRET", SECRET.into()),
        ];
        if self.own_tokens {
            env.push(("TELEGRAM_BOT_TOKEN", Self::token(index)));
        }
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// The bot token of instance `index` in a deployment started with
    /// [`start_partitionable`](Self::start_partitionable).
    pub fn token(index: usize) -> String {
        format!("123456:node{index}")
    }

    /// Cuts instance `index` off from the database, silently (packets
    /// dropped, nothing closed; see [`PartitionablePostgres::cut`]).
    pub async fn cut_from_db(&self, index: usize) {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || db.lock().unwrap().partitionable().cut(index))
            .await
            .unwrap()
            .expect("ip link set down");
    }

    /// Heals instance `index`'s path to the database.
    pub async fn heal(&self, index: usize) {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || db.lock().unwrap().partitionable().heal(index))
            .await
            .unwrap()
            .expect("ip link set up");
    }

    /// The value of the metric line starting with `series` (a family and
    /// its labels, e.g. `llmgram_cluster_fenced_total{at="send"}`) on
    /// instance `index`'s `/metrics`; `None` when it cannot be read or has
    /// no such line.
    pub async fn metric(&self, index: usize, series: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.nodes[index].ops_port);
        let text = self
            .client
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    /// Starts instance `index` without waiting for anything.
    pub fn spawn(&self, index: usize) {
        let process = BotProcess::spawn_with(
            &self.telegram,
            &self.llm,
            &self.nodes[index].dir,
            &self.env(index),
        );
        *self.nodes[index].process.lock().unwrap() = Some(process);
    }

    /// Starts instance `index` and waits until its webhook listens.
    pub async fn launch(&self, index: usize) {
        self.spawn(index);
        let port = self.nodes[index].port;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "instance {index} did not listen; log:\n{}",
                self.log(index)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until instance `index` answers `/readyz` with 200 (it holds
    /// its lease).
    pub async fn wait_ready(&self, index: usize, within: Duration) {
        let url = format!("http://127.0.0.1:{}/readyz", self.nodes[index].ops_port);
        let deadline = Instant::now() + within;
        loop {
            let ready = self
                .client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "instance {index} not ready; log:\n{}",
                self.log(index)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes instance `index`'s process out of the cluster (to signal it).
    pub fn take_process(&self, index: usize) -> Option<BotProcess> {
        self.nodes[index].process.lock().unwrap().take()
    }

    /// SIGKILLs instance `index` and returns how many messages the bot had
    /// sent when the kill landed (the victim sends nothing after it): the
    /// mark [`repeats_around`] splits repeats by.
    pub async fn kill9(&self, index: usize) -> usize {
        let process = self.take_process(index).expect("instance running");
        process.kill9().await;
        self.telegram.sent().len()
    }

    /// SIGTERMs instance `index` and waits for it to stop; returns the mark
    /// (messages sent when it had stopped) and its exit code.
    pub async fn terminate(&self, index: usize) -> (usize, Option<i32>) {
        let process = self.take_process(index).expect("instance running");
        let code = process.terminate().await;
        (self.telegram.sent().len(), code)
    }

    /// The process id of instance `index`, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.nodes[index]
            .process
            .lock()
            .unwrap()
            .as_ref()
            .and_then(BotProcess::pid)
    }

    /// Whether instance `index` still runs (it has not exited by itself).
    pub fn running(&self, index: usize) -> bool {
        self.nodes[index]
            .process
            .lock()
            .unwrap()
            .as_mut()
            .is_some_and(BotProcess::running)
    }

    /// Stops PostgreSQL (a fast shutdown), keeps it down for `down`, starts
    /// it again on the same port.
    pub async fn restart_db(&self, down: Duration) -> DbRestart {
        let db = Arc::clone(&self.db);
        let stopped_at = Instant::now();
        let down_mark = self.telegram.sent().len();
        tokio::task::spawn_blocking(move || db.lock().unwrap().stop())
            .await
            .unwrap();
        tokio::time::sleep(down).await;
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || db.lock().unwrap().start_again())
            .await
            .unwrap()
            .expect("PostgreSQL starts again");
        DbRestart {
            outage: stopped_at.elapsed(),
            down_mark,
            up_mark: self.telegram.sent().len(),
        }
    }

    /// Runs `sql` with psql (see [`TempPostgres::psql`]).
    pub fn psql(&self, sql: &str) -> String {
        self.db.lock().unwrap().psql(sql).expect("psql")
    }

    pub fn url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}/tg-hook", self.nodes[index].port)
    }

    /// Posts `update` along `route` as Telegram does, delivering it again
    /// until it is acknowledged (Telegram retries a failed delivery): to an
    /// instance, falling over to the next while one refuses (down,
    /// restarting, its database down), as a load balancer's health checks
    /// would; through the proxy, to the proxy again.
    pub async fn deliver(&self, route: Route, update: &serde_json::Value) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut route = route;
        loop {
            let url = match route {
                Route::Instance(index) => self.url(index),
                Route::Proxy => format!(
                    "http://{}/tg-hook",
                    self.proxy.as_ref().expect("an haproxy in front").addr()
                ),
            };
            let sent = self
                .client
                .post(url)
                .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
                .json(update)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => return,
                failed => {
                    self.retried_posts.fetch_add(1, Ordering::Relaxed);
                    if failed.is_ok_and(|r| r.status().is_server_error()) {
                        self.server_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Route::Instance(index) = route {
                        self.failed_posts[index].fetch_add(1, Ordering::Relaxed);
                    }
                    assert!(Instant::now() < deadline, "no instance took the update");
                    if let Route::Instance(index) = route {
                        route = Route::Instance((index + 1) % self.nodes.len());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Posts `update` to instance `index` (see [`deliver`](Self::deliver)).
    pub async fn post(&self, index: usize, update: &serde_json::Value) {
        self.deliver(Route::Instance(index), update).await;
    }

    /// Posts delivered again after a failed attempt, and of those the ones
    /// answered with a 5xx.
    pub fn retried_posts(&self) -> (usize, usize) {
        (
            self.retried_posts.load(Ordering::Relaxed),
            self.server_errors.load(Ordering::Relaxed),
        )
    }

    /// Posts to instance `index` that failed (and were delivered again,
    /// to the next instance).
    pub fn failed_posts(&self, index: usize) -> usize {
        self.failed_posts[index].load(Ordering::Relaxed)
    }

    /// Waits until the bot sent `chat` a message containing `part`.
    pub async fn wait_for(&self, chat: i64, part: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .telegram
            .sent_to(chat)
            .iter()
            .any(|message| message.text.contains(part))
        {
            assert!(Instant::now() < deadline, "chat {chat} never got {part:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many times the bot sent `text` to `chat`.
    pub fn answered(&self, chat: i64, text: &str) -> usize {
        self.telegram
            .sent_to(chat)
            .iter()
            .filter(|message| message.text == text)
            .count()
    }

    /// What instance `index` logged (empty when it does not run).
    pub fn log(&self, index: usize) -> String {
        self.nodes[index]
            .process
            .lock()
            .unwrap()
            .as_ref()
            .map(BotProcess::log)
            .unwrap_or_default()
    }

    /// The logs of every running instance.
    pub fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|index| format!("--- instance {index}\n{}", self.log(index)))
            .collect()
    }

    /// Which instances still run (those that exited by themselves, e.g.
    /// for a lost lease, do not).
    pub fn running_all(&self) -> Vec<bool> {
        (0..self.nodes.len())
            .map(|index| self.running(index))
            .collect()
    }

    /// SIGKILLs every instance still running.
    pub async fn stop_all(&self) {
        for index in 0..self.nodes.len() {
            if let Some(mut process) = self.take_process(index)
                && process.running()
            {
                process.kill9().await;
            }
        }
    }
}

/// A database restart ([`Cluster::restart_db`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct DbRestart {
    /// From asking it to stop to accepting connections again.
    pub outage: Duration,
    /// Messages the bot had sent when it was asked to stop, and when it was
    /// back (marks for [`repeats_around`]).
    pub down_mark: usize,
    pub up_mark: usize,
}

/// What a closed-loop run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Post-to-answer times, one per answered message.
    pub latencies: Vec<Duration>,
    /// Messages never answered.
    pub lost: usize,
    /// Extra copies of answers.
    pub repeated: usize,
    /// The slowest answer: its time, chat and message index.
    pub slowest: (Duration, i64, usize),
}

impl Outcome {
    /// Messages posted.
    pub fn messages(&self) -> usize {
        self.latencies.len() + self.lost
    }

    /// The answer times' p50, p99 and maximum.
    pub fn times(&self) -> Times {
        Times::of(&self.latencies)
    }
}

/// Percentiles of answer times.
#[derive(Clone, Copy, Debug, Default)]
pub struct Times {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Times {
    pub fn of(latencies: &[Duration]) -> Self {
        let mut sorted = latencies.to_vec();
        sorted.sort();
        let at = |p: f64| {
            if sorted.is_empty() {
                Duration::ZERO
            } else {
                sorted[((sorted.len() - 1) as f64 * p).round() as usize]
            }
        };
        Self {
            p50: at(0.5),
            p99: at(0.99),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Times {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "answer time p50 {:?} p99 {:?} max {:?}",
            self.p50, self.p99, self.max
        )
    }
}

/// `chats` chats (ids `1..=chats`) each send `messages` messages, each
/// after the previous one's answer (waiting up to 30 s), message `i` of
/// chat `c` posted along `route(c, i)`. Asserts every chat's answers came
/// in order; waits for late repeats (a pending update answered again) once
/// the loop ends, then counts them.
pub async fn closed_loop<F>(
    cluster: &Arc<Cluster>,
    chats: i64,
    messages: usize,
    route: F,
) -> Outcome
where
    F: Fn(i64, usize) -> Route + Send + Sync + 'static,
{
    let route = Arc::new(route);
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let mut tasks = Vec::new();
    for chat in 1..=chats {
        let cluster = Arc::clone(cluster);
        let outcome = Arc::clone(&outcome);
        let route = Arc::clone(&route);
        tasks.push(tokio::spawn(async move {
            for i in 0..messages {
                let text = format!("c{chat}m{i}");
                let (_, update) = cluster.telegram.text_update(chat, chat as u64, &text);
                let posted = Instant::now();
                cluster.deliver(route(chat, i), &update).await;
                let answer = format!("answer to: {text}");
                let deadline = posted + Duration::from_secs(30);
                while cluster.answered(chat, &answer) == 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let mut outcome = outcome.lock().unwrap();
                if cluster.answered(chat, &answer) == 0 {
                    outcome.lost += 1;
                } else {
                    let took = posted.elapsed();
                    outcome.latencies.push(took);
                    if took > outcome.slowest.0 {
                        outcome.slowest = (took, chat, i);
                    }
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
        let texts: Vec<String> = cluster
            .telegram
            .sent_to(chat)
            .into_iter()
            .map(|m| m.text)
            .collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for text in &texts {
            *counts.entry(text).or_default() += 1;
        }
        outcome.repeated += counts.values().map(|n| n - 1).sum::<usize>();
        // In order: each answer after the one before it.
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

/// Repeated answers split by the faults they straddle.
#[derive(Debug, Default)]
pub struct Repeats {
    /// Per mark: repeats whose first copy was sent before it and the copy
    /// after it (a turn sent, then killed before its commit).
    pub per_mark: Vec<usize>,
    /// Repeats straddling no mark (the texts).
    pub outside: Vec<String>,
}

/// Splits the repeats among `sent` by `marks` (each the number of messages
/// sent when a fault landed, see [`Cluster::kill9`]).
pub fn repeats_around(sent: &[SentMessage], marks: &[usize]) -> Repeats {
    let mut first: HashMap<(i64, &str), usize> = HashMap::new();
    let mut repeats = Repeats {
        per_mark: vec![0; marks.len()],
        outside: Vec::new(),
    };
    for (index, message) in sent.iter().enumerate() {
        match first.get(&(message.chat_id, message.text.as_str())) {
            None => {
                first.insert((message.chat_id, message.text.as_str()), index);
            }
            Some(&original) => match marks.iter().position(|&m| original < m && m <= index) {
                Some(mark) => repeats.per_mark[mark] += 1,
                None => repeats.outside.push(message.text.clone()),
            },
        }
    }
    repeats
}
