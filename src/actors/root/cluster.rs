//! Cluster: this instance's membership of a deployment sharing one
//! PostgreSQL (`storage.backend = "postgres"`, cargo feature `postgres`):
//! it keeps the instance's lease alive and finds the unanswered updates
//! this instance should answer. The protocol is in supervision.md,
//! "Running several instances".
//!
//! - **Supervised by:** root, permanent; started after the session
//!   supervisor (it hands updates to it), only with the PostgreSQL backend.
//! - **Messages:** [`ClusterMsg::Renew`] (timer, every
//!   `storage.postgres.renew_interval`), [`ClusterMsg::Sweep`] (timer,
//!   every `storage.postgres.sweep_interval`, and at once when another
//!   instance notifies this one), [`ClusterMsg::Stats`].
//! - **State:** its own database connection (not the writer's: a renewal
//!   must not wait behind group commits) with `LISTEN` on this instance's
//!   channel, whose notifications a task forwards as `Sweep`; the shared
//!   [`LeaseClock`] it extends after each successful renewal.
//! - **Renewal:** extends the lease on the database's clock, only while it
//!   has not lapsed; the clock is extended from when the renewal was sent.
//!   A failed renewal (database down, slow) is counted and tried again at
//!   the next tick; meanwhile the clock runs down and sends stop
//!   `storage.postgres.send_margin` before the lease lapses. A renewal that
//!   finds the lease already lapsed means another instance may have taken
//!   this one's chats: the actor fails with [`ClusterError::LeaseLost`],
//!   which root escalates at once, and the process exits non-zero; its
//!   service manager starts it again with a new instance id (an instance
//!   never revives a lapsed id).
//! - **Settings:** a bot-wide setting saved by any instance is announced on
//!   the `llmgram_settings` channel; the ban list and the default model are
//!   then read again by their owners (limiter, LLM pool) on every instance.
//! - **Sweep:** reads the unanswered updates this instance may answer
//!   (handed over by the instance that received them, or left by an
//!   instance whose lease lapsed more than `storage.postgres.grace` ago, or
//!   received and never taken) and routes them to the session supervisor,
//!   which skips what it already has; a taken-over chat's updates are
//!   answered in the order received. Old answered markers are purged now
//!   and then.
//! - **Failures:** a lost connection is opened again at the next tick, so
//!   a database restart is ridden out without restarting the actor (and
//!   without every instance restarting at once). A panic restarts it; the
//!   lease clock outlives it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::actors::directory::{Address, Child, Directory, Unavailable};
use crate::config::{Config, Secret};
use crate::lease::LeaseClock;
use crate::store::postgres::{self, CLAIMABLE_PENDING, SETTINGS_CHANNEL};

/// How often old answered markers are purged.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// Answered markers older than this are purged: Telegram gives up
/// re-delivering an update within a day.
const PURGE_AFTER_SECS: f64 = 2.0 * 86_400.0;

// API

/// Who this process is in the deployment: made once at start, after the
/// store's writer registered the instance.
#[derive(Debug, Clone)]
pub struct Membership {
    /// This instance's id (fresh per process start).
    pub instance: i64,
    /// The bot the store's rows are keyed by.
    pub bot: i64,
    /// `storage.postgres.url`.
    pub url: Secret,
    /// The lease as last renewed, shared with the outbox and `/readyz`.
    pub clock: Arc<LeaseClock>,
}

/// Typed operations on the cluster actor.
#[derive(Clone, Copy)]
pub struct ClusterHandle<'a> {
    directory: &'a Directory,
}

const ADDRESS: Address<ClusterMsg> = Address::new(Child::Cluster);

impl Directory {
    /// The cluster actor: leases and sweeps on a shared store.
    pub fn cluster(&self) -> ClusterHandle<'_> {
        ClusterHandle { directory: self }
    }
}

impl ClusterHandle<'_> {
    /// The actor's counters; `Err` when it cannot be reached.
    pub async fn stats(&self) -> Result<ClusterStats, Unavailable> {
        self.directory
            .call(ADDRESS, |reply| ClusterMsg::Stats { reply })
            .await
    }

    /// Makes the actor panic (tests only); `false` if it is not running.
    #[cfg(feature = "chaos")]
    pub fn panic(&self) -> bool {
        self.directory.cast_now(ADDRESS, ClusterMsg::Panic)
    }
}

/// Why the cluster actor gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The lease had lapsed when renewed: other instances may have taken
    /// this one's chats, so it must not go on under this id.
    #[error("instance {instance}'s lease lapsed; another instance may own its chats")]
    LeaseLost {
        /// The lapsed instance id.
        instance: i64,
    },
}

/// Counters of the cluster actor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// This instance's id.
    pub instance: i64,
    /// Whether its connection is open.
    pub connected: bool,
    /// Successful renewals since start.
    pub renewed: u64,
    /// Failed renewals since start.
    pub renew_failures: u64,
    /// Updates handed to the sessions by sweeps since start.
    pub swept: u64,
}

/// Messages of the cluster actor.
pub(crate) enum ClusterMsg {
    /// Panic at once: the chaos hook for tests (feature `chaos` only).
    #[cfg(feature = "chaos")]
    Panic,
    /// Timer: renew the lease.
    Renew,
    /// Timer or notification: hand this instance's unanswered updates to
    /// the sessions.
    Sweep,
    /// Another instance (or this one) changed a bot-wide setting, named
    /// in the notification's payload `<bot>:<name>`: its owner reads it
    /// again.
    SettingChanged(String),
    /// Counters.
    Stats {
        /// The answer.
        reply: RpcReplyPort<ClusterStats>,
    },
}

/// What the cluster actor is started with.
pub(crate) struct ClusterArgs {
    /// This instance.
    pub(crate) membership: Membership,
    /// `storage.postgres`, and the commands updates are parsed against.
    pub(crate) config: Arc<Config>,
    /// To reach the session supervisor.
    pub(crate) directory: Directory,
}

/// The cluster actor.
pub(crate) struct Cluster;

/// The cluster actor's state.
pub(crate) struct ClusterState {
    args: ClusterArgs,
    /// The open connection, if any.
    client: Option<Client>,
    /// Drives the connection and forwards its notifications.
    driver: Option<JoinHandle<()>>,
    /// Set by a notification until the sweep it asked for starts, so a
    /// burst of notifications costs one sweep.
    sweep_asked: Arc<AtomicBool>,
    timers: Vec<JoinHandle<()>>,
    last_purge: Instant,
    stats: ClusterStats,
    swept: Arc<AtomicU64>,
}

impl Actor for Cluster {
    type Msg = ClusterMsg;
    type State = ClusterState;
    type Arguments = ClusterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ClusterMsg>,
        args: ClusterArgs,
    ) -> Result<ClusterState, ActorProcessingErr> {
        let postgres = &args.config.storage.postgres;
        let timers = vec![
            myself.send_interval(postgres.renew_interval, || ClusterMsg::Renew),
            myself.send_interval(postgres.sweep_interval, || ClusterMsg::Sweep),
        ];
        let mut state = ClusterState {
            stats: ClusterStats {
                instance: args.membership.instance,
                ..ClusterStats::default()
            },
            args,
            client: None,
            driver: None,
            sweep_asked: Arc::new(AtomicBool::new(false)),
            timers,
            last_purge: Instant::now(),
            swept: Arc::new(AtomicU64::new(0)),
        };
        // Listening before the front starts taking updates, so no setting
        // changed or hand-over announced from then on is missed (if the
        // database is away now, the first tick connects).
        let _ = connection(&myself, &mut state).await;
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ClusterMsg>,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        for timer in &state.timers {
            timer.abort();
        }
        if let Some(driver) = state.driver.take() {
            driver.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ClusterMsg>,
        message: ClusterMsg,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            #[cfg(feature = "chaos")]
            ClusterMsg::Panic => panic!("chaos: ordered to panic"),
            ClusterMsg::Renew => renew(&myself, state).await?,
            ClusterMsg::Sweep => sweep(&myself, state).await,
            ClusterMsg::SettingChanged(payload) => on_setting_changed(state, &payload),
            ClusterMsg::Stats { reply } => {
                let stats = ClusterStats {
                    connected: state.client.as_ref().is_some_and(|c| !c.is_closed()),
                    swept: state.swept.load(Ordering::Relaxed),
                    ..state.stats
                };
                let _ = reply.send(stats);
            }
        }
        Ok(())
    }
}

/// The open connection, connecting (and listening) first if there is
/// none; `None` if the database cannot be reached now (logged).
async fn connection<'a>(
    myself: &ActorRef<ClusterMsg>,
    state: &'a mut ClusterState,
) -> Option<&'a Client> {
    if state.client.as_ref().is_some_and(Client::is_closed) {
        state.client = None;
    }
    if state.client.is_none() {
        match connect(myself, state).await {
            Ok(client) => state.client = Some(client),
            Err(error) => {
                tracing::warn!(%error, "cannot reach the shared database");
                return None;
            }
        }
    }
    state.client.as_ref()
}

async fn connect(
    myself: &ActorRef<ClusterMsg>,
    state: &mut ClusterState,
) -> Result<Client, String> {
    let storage = &state.args.config.storage;
    let settings = postgres::connection_config(
        state.args.membership.url.expose(),
        &storage.postgres,
        storage.persist_mode,
    )
    .map_err(|e| e.to_string())?;
    let connecting =
        tokio::time::timeout(storage.postgres.connect_timeout, settings.connect(NoTls));
    let (client, mut connection) = connecting
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|e| crate::error::error_chain(&e))?;
    if let Some(driver) = state.driver.take() {
        driver.abort();
    }
    let asked = Arc::clone(&state.sweep_asked);
    let notify = myself.clone();
    state.driver = Some(tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) if note.channel() == SETTINGS_CHANNEL => {
                    let _ = notify.cast(ClusterMsg::SettingChanged(note.payload().to_owned()));
                }
                Ok(AsyncMessage::Notification(_)) => {
                    if !asked.swap(true, Ordering::AcqRel) {
                        let _ = notify.cast(ClusterMsg::Sweep);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %crate::error::error_chain(&error), "shared database connection ended");
                    break;
                }
            }
        }
    }));
    let listen = format!(
        "LISTEN {}; LISTEN {SETTINGS_CHANNEL}",
        postgres::channel(state.args.membership.instance)
    );
    tokio::time::timeout(
        storage.postgres.statement_timeout,
        client.batch_execute(&listen),
    )
    .await
    .map_err(|_| "LISTEN timed out".to_owned())?
    .map_err(|e| crate::error::error_chain(&e))?;
    tracing::info!(
        instance = state.args.membership.instance,
        "connected to the shared database"
    );
    // Changes announced while this connection was not listening were
    // missed: read the shared settings again.
    state.args.directory.limiter().reload_bans();
    state.args.directory.llm_pool().reload_model();
    state.args.directory.business().reload();
    Ok(client)
}

/// A bot-wide setting changed in the shared store: its owner reads it
/// again. The business connections are read only at start (their owner
/// keeps fan activity in memory): an instance sees another's change after
/// its restart (supervision.md, "Running several instances").
fn on_setting_changed(state: &ClusterState, payload: &str) {
    let Some((bot, name)) = payload.split_once(':') else {
        return;
    };
    if bot != state.args.membership.bot.to_string() {
        return;
    }
    let directory = &state.args.directory;
    tracing::info!(setting = name, "shared setting changed; read again");
    match name {
        "bans" => directory.limiter().reload_bans(),
        "default_model" => directory.llm_pool().reload_model(),
        "business" => directory.business().reload(),
        other => tracing::debug!(setting = other, "setting changed elsewhere; read at start"),
    }
}

/// Renews the lease; fails only when it had lapsed (see the module doc).
async fn renew(
    myself: &ActorRef<ClusterMsg>,
    state: &mut ClusterState,
) -> Result<(), ActorProcessingErr> {
    let sent = Instant::now();
    let postgres = state.args.config.storage.postgres.clone();
    let instance = state.args.membership.instance;
    let Some(client) = connection(myself, state).await else {
        count_renewal(state, false);
        return Ok(());
    };
    let lease = postgres.lease.as_secs_f64();
    let params: [&(dyn ToSql + Sync); 2] = [&instance, &lease];
    let renewal = client.query_opt(
        "UPDATE llmgram_instances SET lease_until = now() + make_interval(secs => $2)
         WHERE id = $1 AND lease_until > now() RETURNING id",
        &params,
    );
    match tokio::time::timeout(postgres.statement_timeout, renewal).await {
        Ok(Ok(Some(_))) => {
            state.args.membership.clock.renewed(sent);
            count_renewal(state, true);
        }
        Ok(Ok(None)) => {
            tracing::error!(instance, "lease lapsed; this instance stops");
            return Err(Box::new(ClusterError::LeaseLost { instance }));
        }
        Ok(Err(error)) => {
            tracing::warn!(instance, error = %crate::error::error_chain(&error), "lease not renewed");
            count_renewal(state, false);
        }
        Err(_) => {
            tracing::warn!(instance, "lease renewal timed out; connecting again");
            state.client = None;
            count_renewal(state, false);
        }
    }
    Ok(())
}

fn count_renewal(state: &mut ClusterState, renewed: bool) {
    if renewed {
        state.stats.renewed += 1;
    } else {
        state.stats.renew_failures += 1;
    }
    let outcome = if renewed { "renewed" } else { "failed" };
    metrics::counter!(crate::telemetry::families::CLUSTER_RENEWALS, "outcome" => outcome)
        .increment(1);
}

/// Hands the unanswered updates this instance may answer to the sessions.
async fn sweep(myself: &ActorRef<ClusterMsg>, state: &mut ClusterState) {
    state.sweep_asked.store(false, Ordering::Release);
    if !state.args.membership.clock.is_valid() {
        // Without a lease it could not answer them anyway.
        return;
    }
    let config = Arc::clone(&state.args.config);
    let postgres = &config.storage.postgres;
    let (bot, me) = (state.args.membership.bot, state.args.membership.instance);
    let purge_due = state.last_purge.elapsed() >= PURGE_EVERY;
    let Some(client) = connection(myself, state).await else {
        return;
    };
    let (grace, after) = (
        postgres.grace.as_secs_f64(),
        postgres.sweep_after.as_secs_f64(),
    );
    let limit = i64::from(postgres.sweep_batch);
    let params: [&(dyn ToSql + Sync); 5] = [&bot, &me, &grace, &after, &limit];
    let query = client.query(CLAIMABLE_PENDING, &params);
    let rows = match tokio::time::timeout(postgres.statement_timeout, query).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(error)) => {
            tracing::warn!(error = %crate::error::error_chain(&error), "sweep failed");
            return;
        }
        Err(_) => {
            tracing::warn!("sweep timed out");
            return;
        }
    };
    if purge_due {
        let age = PURGE_AFTER_SECS;
        let params: [&(dyn ToSql + Sync); 2] = [&bot, &age];
        let purge = client.execute(
            "DELETE FROM llmgram_updates WHERE bot = $1 AND answered
             AND admitted_at < now() - make_interval(secs => $2)",
            &params,
        );
        match tokio::time::timeout(postgres.statement_timeout, purge).await {
            Ok(Ok(purged)) => tracing::debug!(purged, "old answered markers purged"),
            Ok(Err(error)) => {
                tracing::warn!(error = %crate::error::error_chain(&error), "purge failed");
            }
            Err(_) => tracing::warn!("purge timed out"),
        }
        state.last_purge = Instant::now();
    }
    let (mut own, mut received_elsewhere) = (Vec::new(), Vec::new());
    // The admission order, kept across the split below.
    let mut order = std::collections::HashMap::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let update_id: i64 = row.get(0);
        if let Ok(id) = u32::try_from(update_id) {
            order.insert(id, index);
        }
        let entry: Option<Vec<u8>> = row.get(2);
        let by: Option<i64> = row.get(4);
        match postgres::decode_pending_entry(entry.as_deref(), row.get(3)) {
            Ok(Some(update)) if by == Some(me) => own.push(update.into_inbound(&config.commands)),
            Ok(Some(update)) => received_elsewhere.push(update.into_inbound(&config.commands)),
            Ok(None) => {}
            // Quarantined by the writer when it reads it for a replay.
            Err(error) => tracing::error!(update_id, %error, "swept update does not decode"),
        }
    }
    // The stored copy carries no rate-limit verdict: what another instance
    // received is judged here, where it is answered (bans are shared), so a
    // hand-over is no way around a ban or a limit. This instance's own were
    // judged when it received them.
    let received_elsewhere =
        crate::front::apply_limits(&state.args.directory, &config.media, received_elsewhere).await;
    let mut updates = own;
    updates.extend(received_elsewhere);
    updates.sort_by_key(|update| order.get(&update.update_id).copied());
    if updates.is_empty() {
        return;
    }
    let count = updates.len() as u64;
    tracing::debug!(count, "sweep hands updates to the sessions");
    metrics::counter!(crate::telemetry::families::CLUSTER_SWEPT).increment(count);
    state.swept.fetch_add(count, Ordering::Relaxed);
    if let Err(error) = state.args.directory.session_sup().route(updates).await {
        tracing::warn!(%error, "session supervisor unavailable; the next sweep hands them over");
    }
}
