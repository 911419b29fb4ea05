//! Building blocks for actor-level tests (unit tests only): a service's
//! shared dependencies on a temp directory, with a scripted stand-in for the
//! Bot API, so one actor can be started with its real neighbours or small
//! stand-ins and driven through the same handles the service uses.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::Directory;
use super::root::Deps;
use crate::config::Config;
use crate::store::writer::StoreWriter;
use crate::telegram::scripted::ScriptedApi;
use crate::telegram::transport::Transport;
use crate::texts::Locales;

/// A service's dependencies for tests, and what they need kept alive.
pub(crate) struct TestDeps {
    /// What actors are started with.
    pub(crate) deps: Deps,
    /// The Bot API stand-in the outbox sends through.
    pub(crate) telegram: Arc<ScriptedApi>,
    /// The store's directory (removed when dropped).
    _dir: tempfile::TempDir,
}

/// The default configuration with `overrides` (TOML) on top; the store in a
/// fresh temp directory; an instance name of its own.
pub(crate) fn deps(instance: &str, overrides: &str) -> TestDeps {
    #![allow(clippy::expect_used)] // a test's setup failing is a test failure
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config::from_defaults_with(&format!(
        "storage.path = {:?}\n{overrides}",
        dir.path().join("data").display().to_string()
    ))
    .expect("test config");
    let (store, _thread) = StoreWriter::start(&config.storage).expect("store opens");
    let telegram = Arc::new(ScriptedApi::default());
    let deps = Deps {
        directory: Directory::new(instance, &config.supervision),
        transport: Transport::Scripted(Arc::clone(&telegram)),
        bot_username: None,
        llm: Arc::from(Vec::new()),
        llm_slots: Arc::new(Semaphore::new(config.llm.max_concurrency)),
        send_slots: Arc::new(Semaphore::new(config.telegram.max_concurrent_sends)),
        deliveries: Arc::default(),
        fetcher: crate::media::fetch::Fetcher::new(None, &config.media),
        pacing: Arc::new(crate::telegram::SendPacing::new(&config.telegram)),
        drafts: Arc::default(),
        locales: Locales::load().expect("locales"),
        store,
        webhook_secret: None,
        health: Arc::new(crate::ops::Health::new(0)),
        lease: None,
        #[cfg(feature = "postgres")]
        cluster: None,
        config: Arc::new(config),
    };
    TestDeps {
        deps,
        telegram,
        _dir: dir,
    }
}

impl TestDeps {
    /// Builds the LLM providers the configuration names (`llm.base_url`
    /// and `[[llm.fallback]]`), without keys.
    pub(crate) fn with_providers(mut self) -> Self {
        #![allow(clippy::expect_used)] // a test's setup failing is a test failure
        let secrets = crate::config::Secrets {
            telegram_token: None,
            llm_api_key: None,
            fallback_keys: std::collections::HashMap::new(),
            webhook_secret: None,
            ops_token: None,
            postgres_url: None,
        };
        let providers = crate::llm::client::providers(&self.deps.config, &secrets)
            .expect("providers from config");
        self.deps.health = Arc::new(crate::ops::Health::new(providers.len()));
        self.deps.llm = providers.into();
        self
    }

    /// Starts the persistence actor on this store (registered, supervised
    /// by nobody): the real neighbour of actors that load settings.
    pub(crate) async fn start_persistence(&self) -> ractor::ActorCell {
        #![allow(clippy::expect_used)] // a test's setup failing is a test failure
        super::root::persistence::start_unsupervised(&self.deps.directory, self.deps.store.clone())
            .await
            .expect("persistence starts")
    }
}
