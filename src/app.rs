//! Builds the supervision tree from a configuration and runs it until a
//! shutdown signal or a fatal supervision error. Both the binary and the
//! tests start the service through [`start`] (Telegram) or
//! [`start_console`] (`llmgram chat`).

use std::future::Future;
use std::sync::Arc;

use ractor::Actor;
use teloxide::prelude::Requester;
use teloxide::{ApiError, RequestError};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::actors::Directory;
use crate::actors::root::session_sup::SessionStats;
use crate::actors::root::{Deps, Fatal, Root, RootArgs, TreeStatus};
use crate::config::{Config, IngressMode, Secret, Secrets};
use crate::front::Front;
use crate::front::console::ConsoleOut;
use crate::llm::{self, LlmClient, LlmError};
use crate::ops::{Health, OpsState};
use crate::store::writer::StoreWriter;
use crate::telegram::transport::Transport;
use crate::telegram::{self, TelegramError};
use crate::texts::{LocaleError, Locales};
use tokio::net::TcpListener;

/// Why the service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The store at `storage.path` cannot be opened: not creatable, not a
    /// directory, or locked by another process.
    #[error("storage.path {path}: {reason}")]
    Storage {
        /// The configured path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Telegram answered getMe with "Unauthorized".
    #[error("Telegram rejected the bot token: check TELEGRAM_BOT_TOKEN")]
    TokenRejected,
    /// The shared PostgreSQL store cannot be used: unreachable, its schema
    /// newer than this build, or the instance cannot register.
    #[error("storage.backend = \"postgres\": {0}")]
    Database(String),
    /// The Telegram front was started without a bot token.
    #[error("TELEGRAM_BOT_TOKEN is not set")]
    TokenMissing,
    /// The Bot API client could not be built.
    #[error("telegram client: {0}")]
    Telegram(#[from] TelegramError),
    /// The LLM client could not be built.
    #[error("llm client: {0}")]
    Llm(#[from] LlmError),
    /// A locale file is broken.
    #[error(transparent)]
    Locale(#[from] LocaleError),
    /// The supervision tree did not start.
    #[error("cannot start the supervision tree: {0}")]
    Spawn(String),
    /// The OS random source failed, so no webhook secret can be made
    /// (`TELEGRAM_WEBHOOK_SECRET` is not set).
    #[error(
        "cannot generate the webhook secret, the OS random source failed: {0}; \
         set TELEGRAM_WEBHOOK_SECRET"
    )]
    Random(String),
    /// The ops listener cannot listen on `ops.listen`.
    #[error("{0}")]
    Ops(String),
    /// The root supervisor gave up.
    #[error("supervision: {0}")]
    Fatal(#[from] Fatal),
    /// The console front (`llmgram chat`) failed.
    #[error("console: {0}")]
    Console(#[from] crate::front::console::ConsoleError),
}

impl AppError {
    /// Whether the error is the operator's configuration (exit code 2) rather
    /// than a runtime failure (exit code 1).
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            Self::Storage { .. } | Self::TokenRejected | Self::TokenMissing | Self::Locale(_)
        )
    }
}

/// A running service.
pub struct Service {
    root_task: JoinHandle<()>,
    directory: Directory,
    fatal: oneshot::Receiver<Fatal>,
    /// The store's writer thread; it ends once the tree has stopped.
    store_thread: Option<std::thread::JoinHandle<()>>,
    grace: std::time::Duration,
    ops_addr: Option<std::net::SocketAddr>,
    /// Stops the ops listener, and its task.
    ops: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

/// This instance in a deployment sharing a PostgreSQL store.
#[cfg(feature = "postgres")]
type Membership = crate::actors::root::cluster::Membership;
/// Without the `postgres` feature no store is shared.
#[cfg(not(feature = "postgres"))]
#[derive(Debug)]
struct Membership {
    clock: Arc<crate::lease::LeaseClock>,
}

/// Starts the store's writer on the configured backend: fjall, or the
/// shared PostgreSQL, where this instance registers and holds a lease.
async fn start_store(
    config: &Arc<Config>,
    secrets: &Secrets,
) -> Result<(StoreWriter, std::thread::JoinHandle<()>, Option<Membership>), AppError> {
    let storage = config.storage.clone();
    #[cfg(feature = "postgres")]
    if storage.backend == crate::config::StorageBackend::Postgres {
        let url = secrets.postgres_url.clone().ok_or_else(|| {
            AppError::Database(format!("{} is not set", crate::config::POSTGRES_URL_VAR))
        })?;
        let bot =
            crate::store::postgres::bot_id(secrets.telegram_token.as_ref().map(Secret::expose));
        // Before the registration is sent: the lease cannot count from
        // earlier than this.
        let sent = tokio::time::Instant::now();
        let opening = url.clone();
        let (store, thread, instance) = tokio::task::spawn_blocking(move || {
            StoreWriter::start_postgres(&storage, opening, bot)
        })
        .await
        .map_err(|e| AppError::Spawn(e.to_string()))?
        .map_err(|error| AppError::Database(error.to_string()))?;
        let postgres = &config.storage.postgres;
        let clock = Arc::new(crate::lease::LeaseClock::new(
            sent,
            postgres.lease,
            postgres.send_margin,
        ));
        let membership = Membership {
            instance,
            bot,
            url,
            clock,
        };
        return Ok((store, thread, Some(membership)));
    }
    let _ = secrets;
    let (store, thread) = tokio::task::spawn_blocking(move || StoreWriter::start(&storage))
        .await
        .map_err(|e| AppError::Spawn(e.to_string()))?
        .map_err(|error| AppError::Storage {
            path: config.storage.path.display().to_string(),
            reason: error.to_string(),
        })?;
    Ok((store, thread, None))
}

/// Starts the service: checks the storage directory and the bot token, then
/// spawns the supervision tree. `instance` names this service's actors (one
/// process may run several in tests).
pub async fn start(config: Config, secrets: Secrets, instance: &str) -> Result<Service, AppError> {
    start_with(config, secrets, instance, Front::Telegram).await
}

/// Starts the service for the console front (`llmgram chat`): the same tree
/// without an ingress, answers printed through `out`, no Bot API call and no
/// ops listener (a bot running beside it may hold `ops.listen`). Updates are
/// handed over by [`crate::front::console`].
pub async fn start_console(
    config: Config,
    secrets: Secrets,
    instance: &str,
    out: ConsoleOut,
) -> Result<Service, AppError> {
    start_with(config, secrets, instance, Front::Console(out)).await
}

async fn start_with(
    config: Config,
    secrets: Secrets,
    instance: &str,
    front: Front,
) -> Result<Service, AppError> {
    if !config.ignored_env.is_empty() {
        tracing::warn!(
            variables = ?config.ignored_env,
            "ignoring LLMGRAM_* environment variables that are not settings (settings are LLMGRAM_<SECTION>__<KEY>)"
        );
    }
    let config = Arc::new(config);
    let (store, store_thread, membership) = start_store(&config, &secrets).await?;
    let (transport, bot_username) = match front {
        Front::Telegram => {
            let token = secrets
                .telegram_token
                .as_ref()
                .ok_or(AppError::TokenMissing)?;
            let bot = telegram::build_bot(&config.telegram, token)?;
            let bot_username = check_token(&bot).await?;
            (Transport::Telegram(bot), bot_username)
        }
        Front::Console(out) => (Transport::Console(out), None),
    };
    let llm: Arc<[LlmClient]> = llm::client::providers(&config, &secrets)?.into();
    let directory = Directory::new(instance, &config.supervision);
    // Installed once per process; every later service shares it.
    crate::ops::prometheus();
    let providers: Vec<(&str, &str)> = llm.iter().map(|p| (p.name(), p.model())).collect();
    crate::telemetry::families::register(crate::telemetry::families::Known {
        providers: &providers,
        actors: &crate::actors::Child::names(),
    });
    let health = Arc::new(Health::new(llm.len()));
    if let Some(member) = &membership {
        let _ = health.lease.set(Arc::clone(&member.clock));
    }
    let ops_listener = match &transport {
        Transport::Telegram(_) => Some(
            TcpListener::bind(config.ops.listen)
                .await
                .map_err(|e| AppError::Ops(format!("ops.listen {}: {e}", config.ops.listen)))?,
        ),
        // The console front (and the test stand-in) serve no probes.
        _ => None,
    };
    let ops_addr = ops_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .map_err(|e| AppError::Ops(e.to_string()))?;
    let runs_webhook = transport.bot().is_some() && config.telegram.mode == IngressMode::Webhook;
    let webhook_secret = webhook_secret(
        runs_webhook,
        secrets.webhook_secret.as_ref(),
        getrandom::fill,
    )?;
    let deps = Deps {
        fetcher: crate::media::fetch::Fetcher::new(transport.bot().cloned(), &config.media),
        directory: directory.clone(),
        transport,
        bot_username,
        llm: Arc::clone(&llm),
        llm_slots: Arc::new(Semaphore::new(config.llm.max_concurrency)),
        send_slots: Arc::new(Semaphore::new(config.telegram.max_concurrent_sends)),
        deliveries: Arc::default(),
        pacing: Arc::new(telegram::SendPacing::new(&config.telegram)),
        drafts: Arc::default(),
        locales: Locales::load()?,
        store,
        webhook_secret,
        health: Arc::clone(&health),
        lease: membership.as_ref().map(|member| Arc::clone(&member.clock)),
        #[cfg(feature = "postgres")]
        cluster: membership,
        config: Arc::clone(&config),
    };
    let ops_state = OpsState::new(&deps, secrets.ops_token.clone());
    if let Some(addr) = ops_addr {
        ops_state.log_access(addr);
    }
    let (fatal_tx, fatal) = oneshot::channel();
    let (_root, root_task) = Actor::spawn(
        Some(directory.root_name()),
        Root,
        RootArgs {
            deps,
            fatal: fatal_tx,
        },
    )
    .await
    .map_err(|e| AppError::Spawn(e.to_string()))?;
    let ops = ops_listener.map(|listener| {
        let (ops_stop, ops_stopped) = oneshot::channel::<()>();
        let ops_task = tokio::spawn(crate::ops::serve(listener, ops_state, async move {
            let _ = ops_stopped.await;
        }));
        (ops_stop, ops_task)
    });
    tracing::info!(
        instance,
        model = %config.llm.model,
        llm = %crate::config::redact_url(&config.llm.base_url),
        ops = ?ops_addr,
        "llmgram started"
    );
    Ok(Service {
        root_task,
        directory,
        fatal,
        store_thread: Some(store_thread),
        grace: config.shutdown.grace,
        ops_addr,
        ops,
    })
}

/// Runs the service until `shutdown` completes (then stops it gracefully) or
/// the supervision tree gives up.
pub async fn run(
    config: Config,
    secrets: Secrets,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let service = start(config, secrets, "llmgram").await?;
    service.run_until(shutdown).await
}

impl Service {
    /// Where the ops listener (health, readiness, metrics) listens; `None`
    /// for the console front, which runs none.
    pub fn ops_addr(&self) -> Option<std::net::SocketAddr> {
        self.ops_addr
    }

    /// The name directory of this instance.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The session supervisor's counters, `None` while it restarts.
    pub async fn session_stats(&self) -> Option<SessionStats> {
        self.directory.session_sup().stats().await.ok()
    }

    /// Which children run and their restart counts.
    pub async fn tree_status(&self) -> Option<TreeStatus> {
        self.directory.root().status().await
    }

    /// Runs until `shutdown` completes or the tree gives up.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        tokio::select! {
            () = shutdown => {
                tracing::info!("shutdown requested");
                self.shutdown().await
            }
            _ = &mut self.root_task => {
                self.wait_for_store().await;
                Err(self.fatal.try_recv().map_or_else(
                    |_| AppError::Spawn("the root supervisor stopped unexpectedly".into()),
                    AppError::Fatal,
                ))
            }
        }
    }

    /// Waits (up to `shutdown.grace`) for the store's writer to commit what
    /// it holds and persist the journal. It ends once every actor holding a
    /// handle to it has stopped.
    async fn wait_for_store(&mut self) {
        // The ops listener goes last but one: probes see the shutdown.
        if let Some((stop, task)) = self.ops.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
        let Some(thread) = self.store_thread.take() else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || thread.join());
        if tokio::time::timeout(self.grace, joined).await.is_err() {
            tracing::warn!("the store writer did not finish within the grace period");
        }
    }

    /// Stops taking updates, lets in-flight answers finish within
    /// `shutdown.grace`, and stops every actor.
    pub async fn shutdown(mut self) -> Result<(), AppError> {
        // The root answers after stopping every child; if it is already gone
        // there is nothing left to stop.
        self.directory.root().shutdown().await;
        let _ = (&mut self.root_task).await;
        self.wait_for_store().await;
        match self.fatal.try_recv() {
            Ok(fatal) => Err(AppError::Fatal(fatal)),
            Err(_) => Ok(()),
        }
    }
}

/// One getMe before anything starts: a rejected token is a configuration
/// error worth exiting for; an unreachable Telegram is not (the ingress keeps
/// trying), so then the username is learnt later.
async fn check_token(bot: &teloxide::Bot) -> Result<Option<String>, AppError> {
    match bot.get_me().await {
        Ok(me) => Ok(Some(me.username().to_owned())),
        Err(RequestError::Api(ApiError::InvalidToken)) => Err(AppError::TokenRejected),
        Err(error) => {
            let error = TelegramError::from(error);
            tracing::warn!(class = error.class(), %error, "Bot API unreachable at start; will keep trying");
            Ok(None)
        }
    }
}

/// The secret token of the webhook: `TELEGRAM_WEBHOOK_SECRET` when set,
/// else a fresh one from `fill`; none unless the webhook runs (polling and
/// the console register no webhook, so no randomness is asked for).
fn webhook_secret(
    runs_webhook: bool,
    configured: Option<&Secret>,
    fill: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>,
) -> Result<Option<Secret>, AppError> {
    if !runs_webhook {
        return Ok(None);
    }
    match configured {
        Some(secret) => Ok(Some(secret.clone())),
        None => random_secret(fill).map(Some),
    }
}

/// A fresh webhook secret token (64 hex characters, within Telegram's
/// 1–256 of `A-Za-z0-9_-`) from 32 bytes of `fill` (the OS's random source,
/// [`getrandom::fill`]); a new one each start is fine because setWebhook
/// registers it anew. Without OS randomness the start fails: a token made
/// from anything guessable (the clock, the process id) would let whoever
/// guesses it post updates as Telegram.
fn random_secret(
    fill: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>,
) -> Result<Secret, AppError> {
    let mut bytes = [0u8; 32];
    fill(&mut bytes).map_err(|e| AppError::Random(e.to_string()))?;
    Ok(Secret::new(
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_secret_is_64_hex_digits_of_os_randomness() {
        let secret = random_secret(getrandom::fill).unwrap();
        assert_eq!(secret.expose().len(), 64);
        assert!(secret.expose().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(secret, random_secret(getrandom::fill).unwrap());
    }

    #[test]
    fn a_webhook_secret_is_made_only_for_the_webhook() {
        let broken =
            |_: &mut [u8]| -> Result<(), getrandom::Error> { Err(getrandom::Error::UNSUPPORTED) };
        // Polling: no secret, and a broken random source does not matter.
        assert_eq!(webhook_secret(false, None, broken).unwrap(), None);
        // Webhook: the configured one, else a random one, else no start.
        let configured = Secret::new(String::from("configured"));
        assert_eq!(
            webhook_secret(true, Some(&configured), broken).unwrap(),
            Some(configured)
        );
        let made = webhook_secret(true, None, getrandom::fill).unwrap();
        assert_eq!(made.map(|s| s.expose().len()), Some(64));
        assert!(matches!(
            webhook_secret(true, None, broken),
            Err(AppError::Random(_))
        ));
    }

    #[test]
    fn no_webhook_secret_without_os_randomness() {
        let failed = random_secret(|_| Err(getrandom::Error::UNSUPPORTED));
        assert!(matches!(failed, Err(AppError::Random(_))), "{failed:?}");
    }
}
