//! Root supervisor: starts the long-lived actors, restarts each one alone when
//! it fails, and stops the service when one fails too often.
//!
//! - **Supervised by:** nobody; `app` spawns it and waits for it.
//! - **Children:** the rows of [`child_specs`], started in order, stopped in
//!   reverse order. Each row names a [`Child`], its [`Restart`] type and the
//!   start function that builds that child's own arguments (`…Args`) from
//!   [`Deps`]; one breaker per LLM provider, and no front row for the
//!   console front (`llmgram chat`).
//! - **Messages:** [`RootMsg::Shutdown`] (graceful stop), [`RootMsg::Status`]
//!   (children and their restart counts), [`RootMsg::RestartDue`] (timer: a
//!   child's restart backoff has passed).
//! - **State:** one [`ChildRecord`] per child: its running cell, when it
//!   started, its recent and total restarts and its backoff.
//! - **On a child's exit:** one-for-one, by its restart type (OTP's
//!   permanent / transient / temporary, see [`wants_restart`]): it is started
//!   again under the same name with the same arguments after a backoff that
//!   starts at `supervision.restart_backoff_min` and doubles with jitter for
//!   each further restart within the window, unless the child had run
//!   `supervision.stable_factor` times longer than it last waited (then it
//!   starts over: not a crash loop). More than
//!   `supervision.max_restarts` restarts within `supervision.window`
//!   escalate: the root reports [`Fatal::RestartBudgetExhausted`] and stops,
//!   and the process exits non-zero so its service manager starts it afresh.
//!   A poisoned store escalates at once.
//! - **Graceful stop:** children stop in reverse start order, each given
//!   `shutdown.grace` before it is killed.
//! - **On its own failure:** the process exits (nobody restarts the root).

pub mod breaker;
pub mod business;
#[cfg(feature = "postgres")]
pub mod cluster;
pub mod ingress;
pub mod limiter;
pub mod llm_pool;
pub mod outbox;
pub mod persistence;
pub mod session_sup;
pub mod webhook;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;

use super::directory::{Child, Directory};
use crate::config::{Config, IngressMode, Secret};
use crate::llm::LlmClient;
use crate::retry::Backoff;
use crate::store::StoreError;
use crate::telegram::transport::Transport;
use crate::texts::Locales;

/// How a child is treated when it exits (the OTP restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always restarted, whether it failed or stopped: every row of
    /// [`child_specs`].
    Permanent,
    /// Restarted only when it failed: the sessions, which `session_sup`
    /// re-creates with their pending updates (`session_sup::SESSION_RESTART`).
    Transient,
    /// Never restarted. No child is temporary; the type completes OTP's
    /// vocabulary that [`wants_restart`] decides on.
    Temporary,
}

/// Starts one child: builds its own arguments from [`Deps`], spawns it
/// linked to the supervisor cell under the child's registered name, and
/// resolves once its `pre_start` has run.
type StartFn = fn(&Deps, Child, ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>>;

/// One row of the supervision policy: a child, how it is restarted, and how
/// it is started.
#[derive(Clone, Copy)]
pub(crate) struct ChildSpec {
    /// Which child.
    pub(crate) child: Child,
    /// Its restart type.
    pub(crate) restart: Restart,
    /// Its start function.
    start: StartFn,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("child", &self.child)
            .field("restart", &self.restart)
            .finish_non_exhaustive()
    }
}

/// The supervision policy of the root: one row per child, in start order,
/// which is dependency order (a child's start may call the children before
/// it: session_sup, the limiter and the pool read the store in `pre_start`).
/// One breaker per LLM provider (`providers` of them); the front only when
/// there is a Bot API (`front`): the console front's reader hands updates
/// over from outside the tree. `supervision.md` mirrors this table. The
/// business actor (`business.enabled`) is added by [`with_business`].
pub(crate) fn child_specs(providers: usize, front: bool) -> Vec<ChildSpec> {
    const fn row(child: Child, restart: Restart, start: StartFn) -> ChildSpec {
        ChildSpec {
            child,
            restart,
            start,
        }
    }
    let mut specs = vec![row(
        Child::Persistence,
        Restart::Permanent,
        start_persistence,
    )];
    specs.extend(
        (0..providers).map(|index| row(Child::breaker(index), Restart::Permanent, start_breaker)),
    );
    specs.extend([
        row(Child::Limiter, Restart::Permanent, start_limiter),
        row(Child::LlmPool, Restart::Permanent, start_llm_pool),
        row(Child::Outbox, Restart::Permanent, start_outbox),
        row(Child::SessionSup, Restart::Permanent, start_session_sup),
    ]);
    if front {
        specs.push(row(Child::Front, Restart::Permanent, start_front));
    }
    specs
}

/// `specs` with the business actor's row, right after the session
/// supervisor (fans' sessions ask it) and before the front (which hands it
/// `business_connection` updates).
pub(crate) fn with_business(specs: Vec<ChildSpec>) -> Vec<ChildSpec> {
    after_session_sup(specs, Child::Business, start_business)
}

/// `specs` with a permanent row for `child` right after the session
/// supervisor.
fn after_session_sup(mut specs: Vec<ChildSpec>, child: Child, start: StartFn) -> Vec<ChildSpec> {
    let at = specs
        .iter()
        .position(|spec| spec.child == Child::SessionSup)
        .map_or(specs.len(), |index| index + 1);
    specs.insert(
        at,
        ChildSpec {
            child,
            restart: Restart::Permanent,
            start,
        },
    );
    specs
}

/// `specs` with the cluster actor's row, right after the session
/// supervisor (it hands swept updates to it) and before the front.
#[cfg(feature = "postgres")]
pub(crate) fn with_cluster(specs: Vec<ChildSpec>) -> Vec<ChildSpec> {
    after_session_sup(specs, Child::Cluster, start_cluster)
}

/// The rows of [`child_specs`] for these dependencies.
fn specs_for(deps: &Deps) -> Vec<ChildSpec> {
    let specs = child_specs(deps.llm.len(), deps.transport.bot().is_some());
    let specs = if deps.config.business.enabled {
        with_business(specs)
    } else {
        specs
    };
    #[cfg(feature = "postgres")]
    if deps.cluster.is_some() {
        return with_cluster(specs);
    }
    specs
}

/// Why the root stopped the service on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    /// A child failed more often than the restart budget allows.
    #[error("{child} failed {restarts} times within {window:?}: {last_error}")]
    RestartBudgetExhausted {
        /// The child's name.
        child: &'static str,
        /// Restarts counted within the window.
        restarts: usize,
        /// `supervision.window`.
        window: Duration,
        /// The last failure.
        last_error: String,
    },
    /// The store reported a failed write to disk; writing on could corrupt
    /// data, so the process must start afresh.
    #[error("the store is poisoned: {0}")]
    StorePoisoned(String),
    /// This instance's lease on the shared database lapsed: other
    /// instances may own its chats now, so it starts afresh under a new id.
    #[error("the lease on the shared database lapsed: {0}")]
    LeaseLost(String),
    /// A child could not be started at all.
    #[error("cannot start {child}: {reason}")]
    StartFailed {
        /// The child's name.
        child: &'static str,
        /// The spawn error.
        reason: String,
    },
}

// API

/// Typed operations on the root supervisor, found by its registered name.
#[derive(Clone, Copy)]
pub struct RootHandle<'a> {
    directory: &'a Directory,
}

impl Directory {
    /// The root supervisor.
    pub fn root(&self) -> RootHandle<'_> {
        RootHandle { directory: self }
    }
}

impl RootHandle<'_> {
    fn get(&self) -> Option<ActorRef<RootMsg>> {
        ractor::registry::where_is(self.directory.root_name()).map(ActorRef::from)
    }

    /// Whether the root supervisor is registered (running) now.
    pub fn is_running(&self) -> bool {
        self.get().is_some()
    }

    /// Which children run and how often each was restarted; `None` when the
    /// root is not running or does not answer within
    /// `supervision.lookup_timeout` (it is stopping the tree).
    pub async fn status(&self) -> Option<TreeStatus> {
        let root = self.get()?;
        match root
            .call(
                |reply| RootMsg::Status { reply },
                Some(self.directory.lookup_timeout()),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(status)) => Some(status),
            _ => None,
        }
    }

    /// Stops the service gracefully (see [`RootMsg::Shutdown`]); returns
    /// when every child has stopped, or at once if the root is gone.
    pub async fn shutdown(&self) {
        if let Some(root) = self.get() {
            let _ = root.call(|reply| RootMsg::Shutdown { reply }, None).await;
        }
    }
}

/// Messages of the root supervisor.
pub(crate) enum RootMsg {
    /// Stop taking updates, let in-flight answers finish within
    /// `shutdown.grace`, then stop every child in reverse start order.
    Shutdown {
        /// Answered when every child has stopped.
        reply: RpcReplyPort<()>,
    },
    /// Which children run and how often each was restarted.
    Status {
        /// The answer.
        reply: RpcReplyPort<TreeStatus>,
    },
    /// Timer: a failed child's restart backoff has passed.
    RestartDue {
        /// The child to start again.
        child: Child,
    },
}

/// A snapshot of the tree for health checks and tests.
#[derive(Debug, Clone)]
pub struct TreeStatus {
    /// Per child: its name, whether it runs now, and its restarts so far.
    pub children: Vec<ChildStatus>,
}

/// One child's line of a [`TreeStatus`].
#[derive(Debug, Clone)]
pub struct ChildStatus {
    /// The child.
    pub child: Child,
    /// Whether it is registered and running now.
    pub alive: bool,
    /// Restarts since the service started.
    pub restarts: u64,
}

/// Everything children are built from. Created once by `app` and kept by the
/// root, so a restarted child gets the same shared client and limits. No
/// child sees it whole: each row's start function hands its child the
/// narrow `…Args` it needs.
#[derive(Clone)]
pub struct Deps {
    /// The whole configuration.
    pub config: Arc<Config>,
    /// Name lookups of this instance.
    pub directory: Directory,
    /// The front end: where the outbox sends, and for Telegram the one Bot
    /// API client (one connection pool) the front polls or registers with.
    /// The console front has no Bot API client, and root starts no front
    /// for it.
    pub transport: Transport,
    /// The bot's username from getMe, when known at start.
    pub bot_username: Option<String>,
    /// The LLM providers in fallback order (one connection pool each).
    pub llm: Arc<[LlmClient]>,
    /// Request slots of the LLM pool; outlives pool restarts so the bound
    /// holds while a replaced pool's requests finish.
    pub llm_slots: Arc<Semaphore>,
    /// Send slots of the outbox, likewise shared across restarts.
    pub send_slots: Arc<Semaphore>,
    /// Deliveries in progress per chat, likewise shared across restarts.
    pub deliveries: Arc<outbox::Deliveries>,
    /// Fetches the files of media messages; its download slots are shared
    /// across session supervisor restarts.
    pub fetcher: crate::media::fetch::Fetcher,
    /// Telegram's flood limits, shared across outbox restarts.
    pub pacing: Arc<crate::telegram::SendPacing>,
    /// Whether `sendMessageDraft` was refused, remembered across outbox
    /// restarts for the rest of the process.
    pub drafts: Arc<crate::telegram::draft::DraftSupport>,
    /// Reply texts.
    pub locales: Locales,
    /// The store's writer; only the persistence actor can use it.
    pub store: crate::store::writer::StoreWriter,
    /// The secret token Telegram sends with each webhook request; only in
    /// webhook mode.
    pub webhook_secret: Option<Secret>,
    /// Timestamps for readiness, stamped by the front and the pool.
    pub health: Arc<crate::ops::Health>,
    /// This instance's lease on a shared store (`storage.backend =
    /// "postgres"`), read before each send; `None` on fjall.
    pub lease: Option<Arc<crate::lease::LeaseClock>>,
    /// What the cluster actor is started with; `None` on fjall (no such
    /// actor).
    #[cfg(feature = "postgres")]
    pub cluster: Option<cluster::Membership>,
}

/// Arguments of the root.
pub struct RootArgs {
    /// Shared dependencies for the children.
    pub deps: Deps,
    /// Where the root reports why it stopped the service on its own.
    pub fatal: oneshot::Sender<Fatal>,
}

/// Spawns `actor` as `child`, linked to `supervisor`.
fn spawn<A: Actor>(
    deps: &Deps,
    child: Child,
    actor: A,
    args: A::Arguments,
    supervisor: ActorCell,
) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
    let name = deps.directory.name(child);
    Box::pin(async move {
        let (actor, _) = Actor::spawn_linked(Some(name), actor, args, supervisor).await?;
        Ok(actor.get_cell())
    })
}

/// A start that cannot happen: a row whose dependencies are missing.
fn cannot_start(reason: &'static str) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
    Box::pin(std::future::ready(Err(SpawnErr::StartupFailed(
        reason.into(),
    ))))
}

fn start_persistence(
    deps: &Deps,
    child: Child,
    supervisor: ActorCell,
) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
    spawn(
        deps,
        child,
        persistence::Persistence,
        deps.store.clone(),
        supervisor,
    )
}

fn start_breaker(
    deps: &Deps,
    child: Child,
    supervisor: ActorCell,
) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
    let provider = match child {
        Child::Breaker(index) => deps.llm.get(usize::from(index)),
        _ => None,
    };
    let Some(provider) = provider else {
        return cannot_start("no provider for this breaker");
    };
    let args = breaker::BreakerArgs {
        provider: Arc::from(provider.name()),
        config: deps.config.breaker.clone(),
    };
    spawn(deps, child, breaker::Breaker, args, supervisor)
}

fn start_limiter(
    deps: &Deps,
    child: Child,
    supervisor: ActorCell,
) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
    let args = limiter::LimiterArgs {
        config: Arc::clone(&deps.config),
        directory: deps.directory.clone(),
    };
    spawn(deps, child, limiter::Limiter, args, supervisor)
}

/// The llm_pool child's arguments, as the root starts it (and as actor
/// tests do).
pub(crate) fn llm_pool_args(deps: &Deps) -> llm_pool::LlmPoolArgs {
    llm_pool::LlmPoolArgs {
        providers: Arc::clone(&deps.llm),
        slots: Arc::clone(&deps.llm_slots),
        config: Arc::new(deps.config.llm.clone()),
        health: Arc::clone(&deps.health),
        directory: deps.directory.clone(),
    }
}

fn start_llm_pool(
    deps: &Deps,
    child: Child,
    supervisor: ActorCell,
) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
    let args = llm_pool_args(deps);
    spawn(deps, child, llm_pool::LlmPool, args, supervisor)
}

/// The outbox child's arguments, as the root starts it (and as actor
/// tests do).
pub(crate) fn outbox_args(deps: &Deps) -> outbox::OutboxArgs {
    outbox::OutboxArgs {
        transport: deps.transport.clone(),
        pacing: Arc::clone(&deps.pacing),
        slots: Arc::clone(&deps.send_slots),
        deliveries: Arc::clone(&deps.deliveries),
        drafts: Arc::clone(&deps.drafts),
        lease: deps.lease.clone(),
        config: Arc::new(deps.config.telegram.clone()),
        reclaim_interval: deps.config.limits.sweep_interval,
        directory: deps.directory.clone(),
    }
}

fn start_outbox(
    deps: &Deps,
    child: Child,
    supervisor: ActorCell,
) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
    let args = outbox_args(deps);
    spawn(deps, child, outbox::Outbox, args, supervisor)
}

/// The session_sup child's arguments, as the root starts it (and as actor
/// tests do).
pub(crate) fn session_sup_args(deps: &Deps) -> session_sup::SessionSupArgs {
    session_sup::SessionSupArgs {
        sessions: session_sup::SessionDeps {
            config: Arc::clone(&deps.config),
            directory: deps.directory.clone(),
            transport: deps.transport.clone(),
            llm: Arc::clone(&deps.llm),
            health: Arc::clone(&deps.health),
            locales: deps.locales.clone(),
            fetcher: deps.fetcher.clone(),
            shared_store: deps.lease.is_some(),
        },
    }
}

fn start_session_sup(
    deps: &Deps,
    child: Child,
    supervisor: ActorCell,
) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
    let args = session_sup_args(deps);
    spawn(deps, child, session_sup::SessionSup, args, supervisor)
}

fn start_business(
    deps: &Deps,
    child: Child,
    supervisor: ActorCell,
) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
    let args = business::BusinessArgs {
        config: Arc::clone(&deps.config),
        directory: deps.directory.clone(),
        locales: deps.locales.clone(),
        shared: deps.lease.is_some(),
    };
    spawn(deps, child, business::Business, args, supervisor)
}

#[cfg(feature = "postgres")]
fn start_cluster(
    deps: &Deps,
    child: Child,
    supervisor: ActorCell,
) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
    let Some(membership) = deps.cluster.clone() else {
        return cannot_start("no shared store to be a member of");
    };
    let args = cluster::ClusterArgs {
        membership,
        config: Arc::clone(&deps.config),
        directory: deps.directory.clone(),
    };
    spawn(deps, child, cluster::Cluster, args, supervisor)
}

/// The polling ingress or the webhook, by `telegram.mode`.
fn start_front(
    deps: &Deps,
    child: Child,
    supervisor: ActorCell,
) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
    let Some(bot) = deps.transport.bot().cloned() else {
        return cannot_start("the front end has no Bot API");
    };
    match deps.config.telegram.mode {
        IngressMode::Polling => {
            let args = ingress::IngressArgs {
                bot,
                bot_username: deps.bot_username.clone(),
                config: Arc::clone(&deps.config),
                locales: deps.locales.clone(),
                health: Arc::clone(&deps.health),
                directory: deps.directory.clone(),
            };
            spawn(deps, child, ingress::Ingress, args, supervisor)
        }
        IngressMode::Webhook => {
            let Some(secret) = deps.webhook_secret.clone() else {
                return cannot_start("no webhook secret");
            };
            let args = webhook::WebhookArgs {
                bot,
                bot_username: deps.bot_username.clone(),
                secret,
                config: Arc::clone(&deps.config),
                locales: deps.locales.clone(),
                health: Arc::clone(&deps.health),
                directory: deps.directory.clone(),
            };
            spawn(deps, child, webhook::Webhook, args, supervisor)
        }
    }
}

/// The root supervisor.
pub(crate) struct Root;

/// What root keeps about one child, across its restarts.
#[derive(Debug)]
pub(crate) struct ChildRecord {
    /// Its row of [`child_specs`].
    spec: ChildSpec,
    /// The running actor; `None` while it waits out a restart backoff.
    cell: Option<ActorCell>,
    /// When the running actor started; `None` if its last start failed.
    started_at: Option<Instant>,
    /// Restart times within the current window, oldest first.
    recent: VecDeque<Instant>,
    /// Restarts since the service started.
    total: u64,
    /// Delay before the next restart, growing within the window.
    backoff: Backoff,
    /// The last restart delay.
    last_delay: Duration,
}

/// The root's state.
pub(crate) struct RootState {
    deps: Deps,
    /// One record per row of [`child_specs`], in start order.
    children: Vec<ChildRecord>,
    fatal: Option<oneshot::Sender<Fatal>>,
    shutting_down: bool,
}

impl RootState {
    fn record(&mut self, child: Child) -> Option<&mut ChildRecord> {
        self.children.iter_mut().find(|r| r.spec.child == child)
    }
}

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let supervision = &args.deps.config.supervision;
        let children = specs_for(&args.deps)
            .into_iter()
            .map(|spec| ChildRecord {
                spec,
                cell: None,
                started_at: None,
                recent: VecDeque::new(),
                total: 0,
                backoff: Backoff::new(
                    supervision.restart_backoff_min,
                    supervision.restart_backoff_max,
                ),
                last_delay: Duration::ZERO,
            })
            .collect();
        let mut state = RootState {
            deps: args.deps,
            children,
            fatal: Some(args.fatal),
            shutting_down: false,
        };
        for index in 0..state.children.len() {
            // A child that cannot start at all fails the whole start: the
            // error reaches `app::start` and the process exits non-zero.
            start_child(&myself, &state.deps, &mut state.children[index]).await?;
        }
        tracing::info!(children = state.children.len(), "supervision tree started");
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        message: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RootMsg::Shutdown { reply } => on_shutdown(&myself, state, reply).await,
            RootMsg::Status { reply } => on_status(state, reply),
            RootMsg::RestartDue { child } => on_restart_due(&myself, state, child).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, exit) = match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(StoreError::Poisoned(reason)) = error.downcast_ref::<StoreError>() {
                    escalate(&myself, state, Fatal::StorePoisoned(reason.clone()));
                    return Ok(());
                }
                #[cfg(feature = "postgres")]
                if let Some(lost) = error.downcast_ref::<cluster::ClusterError>() {
                    escalate(&myself, state, Fatal::LeaseLost(lost.to_string()));
                    return Ok(());
                }
                (cell, Exit::Failed(error.to_string()))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, Exit::terminated(reason)),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let Some(record) = state
            .children
            .iter_mut()
            .find(|r| r.cell.as_ref().is_some_and(|c| c.get_id() == id))
        else {
            return Ok(());
        };
        record.cell = None;
        let child = record.spec.child;
        if state.shutting_down {
            return Ok(());
        }
        on_child_exited(&myself, state, child, exit);
        Ok(())
    }
}

/// How a child ended.
pub(crate) enum Exit {
    /// It returned an error, panicked, or was killed.
    Failed(String),
    /// It stopped normally, with this reason.
    Stopped(String),
}

impl Exit {
    /// A child that terminated with `reason` (ractor's `ActorTerminated`).
    /// Killed counts as failed, as OTP's `killed` exit is abnormal: only a
    /// requested stop is normal.
    pub(crate) fn terminated(reason: Option<String>) -> Self {
        match reason {
            Some(reason) if reason == KILLED => Self::Failed(reason),
            Some(reason) => Self::Stopped(reason),
            None => Self::Stopped("no reason".into()),
        }
    }
}

/// The reason ractor gives an actor ended by `kill()`.
const KILLED: &str = "killed";

/// Starts the child of `record` by its row's start function.
async fn start_child(
    myself: &ActorRef<RootMsg>,
    deps: &Deps,
    record: &mut ChildRecord,
) -> Result<(), SpawnErr> {
    let child = record.spec.child;
    let cell = (record.spec.start)(deps, child, myself.get_cell()).await?;
    record.cell = Some(cell);
    record.started_at = Some(Instant::now());
    Ok(())
}

fn on_child_exited(myself: &ActorRef<RootMsg>, state: &mut RootState, child: Child, exit: Exit) {
    let config = &state.deps.config.supervision;
    let Some(record) = state.children.iter_mut().find(|r| r.spec.child == child) else {
        return;
    };
    let wanted = wants_restart(record.spec.restart, &exit);
    let last_error = match exit {
        Exit::Failed(error) => error,
        Exit::Stopped(reason) => format!("stopped: {reason}"),
    };
    if !wanted {
        tracing::info!(child = child.as_str(), "child exited, not restarted");
        return;
    }

    let now = Instant::now();
    while record
        .recent
        .front()
        .is_some_and(|at| now.duration_since(*at) > config.window)
    {
        record.recent.pop_front();
    }
    if record.recent.len() >= config.max_restarts as usize {
        let fatal = Fatal::RestartBudgetExhausted {
            child: child.as_str(),
            restarts: record.recent.len(),
            window: config.window,
            last_error,
        };
        escalate(myself, state, fatal);
        return;
    }
    // Up since its last start (none if that start failed).
    let uptime = record
        .started_at
        .take()
        .map(|started| now.duration_since(started));
    if backoff_starts_over(
        record.recent.is_empty(),
        uptime,
        record.last_delay,
        config.stable_factor,
    ) {
        record.backoff.reset();
    }
    let delay = record.backoff.next_delay();
    record.last_delay = delay;
    record.recent.push_back(now);
    record.total += 1;
    metrics::counter!("llmgram_actor_restarts_total", "actor" => child.as_str()).increment(1);
    tracing::warn!(child = child.as_str(), error = %last_error, ?delay, "restarting child");
    myself.send_after(delay, move || RootMsg::RestartDue { child });
}

/// The OTP rule: whether a child of this restart type is restarted after
/// this kind of exit. A panic reaches the supervisor as a failure.
pub(crate) fn wants_restart(restart: Restart, exit: &Exit) -> bool {
    match restart {
        Restart::Permanent => true,
        Restart::Transient => matches!(exit, Exit::Failed(_)),
        Restart::Temporary => false,
    }
}

/// Whether a failure starts the restart backoff over: the first failure
/// after a quiet window, or one after running at least `stable_factor` times
/// longer than the last restart waited, is not a crash loop. A child that
/// fails right after each start (or cannot start: no `uptime`) keeps
/// doubling its wait.
fn backoff_starts_over(
    quiet_window: bool,
    uptime: Option<Duration>,
    last_delay: Duration,
    stable_factor: u32,
) -> bool {
    quiet_window || uptime.is_some_and(|up| up >= last_delay * stable_factor)
}

/// Restarts `child` once its backoff has passed.
///
/// Start order is dependency order: a child's start may call the children
/// before it (session_sup, the limiter and the pool read the store in
/// `pre_start`). Root waits for that start and cannot restart anyone
/// meanwhile, so an earlier child still waiting out its own backoff is
/// started first; otherwise the start would wait on it until the lookup
/// timeout. A restart that fails anyway counts as one more failure of the
/// child (backoff, restart budget) rather than ending the service at once.
async fn on_restart_due(myself: &ActorRef<RootMsg>, state: &mut RootState, child: Child) {
    if state.shutting_down || state.record(child).is_none_or(|r| r.cell.is_some()) {
        return;
    }
    let position = state
        .children
        .iter()
        .position(|r| r.spec.child == child)
        .unwrap_or(0);
    for index in 0..=position {
        let record = &mut state.children[index];
        if record.cell.is_some() {
            continue;
        }
        if let Err(error) = start_child(myself, &state.deps, record).await {
            let due = record.spec.child;
            let exit = Exit::Failed(format!("cannot start: {error}"));
            on_child_exited(myself, state, due, exit);
            return;
        }
    }
}

fn escalate(myself: &ActorRef<RootMsg>, state: &mut RootState, fatal: Fatal) {
    tracing::error!(error = %fatal, "supervision gives up; stopping the service");
    state.shutting_down = true;
    if let Some(sender) = state.fatal.take() {
        // The receiver is gone only if `app` stopped waiting: nothing to tell.
        let _ = sender.send(fatal.clone());
    }
    myself.stop(Some(fatal.to_string()));
}

async fn on_shutdown(myself: &ActorRef<RootMsg>, state: &mut RootState, reply: RpcReplyPort<()>) {
    state.shutting_down = true;
    let grace = state.deps.config.shutdown.grace;
    // The front may be inside a long poll; killing it is safe because
    // Telegram keeps every update it has not seen confirmed.
    if let Some(front) = state.record(Child::Front).and_then(|r| r.cell.take()) {
        front.kill();
    }
    // Nothing new is routed (a shared store's sweep would otherwise keep a
    // busy instance's drain from ever ending): it stays pending in the store.
    state.deps.directory.session_sup().close();
    if !state.deps.directory.session_sup().drain_within(grace).await {
        tracing::warn!(
            ?grace,
            "in-flight answers did not finish within the grace period"
        );
    }
    for record in state.children.iter_mut().rev() {
        if let Some(cell) = record.cell.take()
            && let Err(error) = cell
                .stop_and_wait(Some("shutdown".into()), Some(grace))
                .await
        {
            tracing::warn!(child = record.spec.child.as_str(), %error, "child did not stop in time");
            cell.kill();
        }
    }
    tracing::info!("supervision tree stopped");
    let _ = reply.send(());
    myself.stop(Some("shutdown".into()));
}

fn on_status(state: &RootState, reply: RpcReplyPort<TreeStatus>) {
    let children = state
        .children
        .iter()
        .map(|record| ChildStatus {
            child: record.spec.child,
            alive: state.deps.directory.is_running(record.spec.child),
            restarts: record.total,
        })
        .collect();
    let _ = reply.send(TreeStatus { children });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_over_only_when_the_child_ran_well() {
        let ms = Duration::from_millis;
        // The first failure in a quiet window.
        assert!(backoff_starts_over(true, None, ms(0), 10));
        // Ran 800 ms after waiting 10 ms: not a crash loop.
        assert!(backoff_starts_over(false, Some(ms(800)), ms(10), 10));
        // Failed 50 ms after waiting 10 ms, or could not start: keeps growing.
        assert!(!backoff_starts_over(false, Some(ms(50)), ms(10), 10));
        assert!(!backoff_starts_over(false, None, ms(10), 10));
        // A long wait needs a long run to count as recovered.
        assert!(!backoff_starts_over(false, Some(ms(800)), ms(1000), 10));
    }

    #[test]
    fn a_kill_is_a_failure_and_a_stop_is_not() {
        assert!(matches!(
            Exit::terminated(Some("killed".into())),
            Exit::Failed(_)
        ));
        assert!(matches!(
            Exit::terminated(Some("idle".into())),
            Exit::Stopped(_)
        ));
        assert!(matches!(Exit::terminated(None), Exit::Stopped(_)));
    }

    #[test]
    fn restart_type_by_exit_kind_matrix() {
        let stopped = Exit::Stopped("normal".into());
        let failed = Exit::Failed("returned an error".into());
        let panicked = Exit::Failed("panicked: chaos".into());
        let expected = [
            (Restart::Permanent, [true, true, true]),
            (Restart::Transient, [false, true, true]),
            (Restart::Temporary, [false, false, false]),
        ];
        for (restart, [on_stop, on_failure, on_panic]) in expected {
            assert_eq!(
                wants_restart(restart, &stopped),
                on_stop,
                "{restart:?} stop"
            );
            assert_eq!(
                wants_restart(restart, &failed),
                on_failure,
                "{restart:?} failure"
            );
            assert_eq!(
                wants_restart(restart, &panicked),
                on_panic,
                "{restart:?} panic"
            );
        }
    }

    #[test]
    fn every_long_lived_child_is_permanent() {
        let specs = child_specs(2, true);
        assert!(specs.iter().all(|spec| spec.restart == Restart::Permanent));
        assert_eq!(
            specs[0].child,
            Child::Persistence,
            "storage starts first, stops last"
        );
        assert_eq!(
            specs[specs.len() - 1].child,
            Child::Front,
            "updates flow in last"
        );
    }

    #[test]
    fn the_table_has_a_breaker_per_provider_and_a_front_only_with_a_bot_api() {
        let children = |providers, front| -> Vec<Child> {
            child_specs(providers, front)
                .iter()
                .map(|spec| spec.child)
                .collect()
        };
        assert_eq!(
            children(2, true),
            [
                Child::Persistence,
                Child::Breaker(0),
                Child::Breaker(1),
                Child::Limiter,
                Child::LlmPool,
                Child::Outbox,
                Child::SessionSup,
                Child::Front,
            ]
        );
        let console = children(1, false);
        assert!(!console.contains(&Child::Front), "{console:?}");
        assert_eq!(console.len(), 6);
    }

    #[test]
    fn the_business_actor_starts_after_the_sessions_and_before_the_front() {
        let children: Vec<Child> = with_business(child_specs(1, true))
            .iter()
            .map(|spec| spec.child)
            .collect();
        assert_eq!(
            children,
            [
                Child::Persistence,
                Child::Breaker(0),
                Child::Limiter,
                Child::LlmPool,
                Child::Outbox,
                Child::SessionSup,
                Child::Business,
                Child::Front,
            ]
        );
    }
}
