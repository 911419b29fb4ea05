//! Root supervisor: starts the long-lived actors, restarts each one alone when
//! it fails, and stops the service when one fails too often.
//!
//! - **Supervised by:** nobody; `app` spawns it and waits for it.
//! - **Children:** the rows of [`POLICY`], started in order, stopped in
//!   reverse order; with the console front (`llmgram chat`) there is no
//!   ingress row's child.
//! - **Messages:** [`RootMsg::Shutdown`] (graceful stop), [`RootMsg::Status`]
//!   (children and their restart counts).
//! - **State:** the running children and each one's recent restarts.
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
pub mod ingress;
pub mod limiter;
pub mod llm_pool;
pub mod outbox;
pub mod persistence;
pub mod session_sup;
pub mod webhook;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;

use super::directory::{Child, Directory};
use crate::config::{Config, IngressMode};
use crate::llm::LlmClient;
use crate::retry::Backoff;
use crate::store::StoreError;
use crate::texts::Locales;

/// How a child is treated when it exits (the OTP restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always restarted, whether it failed or stopped.
    Permanent,
    /// Restarted only when it failed.
    Transient,
    /// Never restarted.
    Temporary,
}

/// A kind of child; `Breakers` stands for one breaker per provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`Child::Persistence`].
    Persistence,
    /// One [`Child::Breaker`] per provider.
    Breakers,
    /// [`Child::Limiter`].
    Limiter,
    /// [`Child::LlmPool`].
    LlmPool,
    /// [`Child::Outbox`].
    Outbox,
    /// [`Child::SessionSup`].
    SessionSup,
    /// [`Child::Ingress`].
    Ingress,
}

impl Kind {
    fn of(child: Child) -> Self {
        match child {
            Child::Persistence => Self::Persistence,
            Child::Breaker(_) => Self::Breakers,
            Child::Limiter => Self::Limiter,
            Child::LlmPool => Self::LlmPool,
            Child::Outbox => Self::Outbox,
            Child::SessionSup => Self::SessionSup,
            Child::Ingress => Self::Ingress,
        }
    }

    /// The children of this kind for these dependencies: one breaker per
    /// LLM provider, and no ingress for the console front (its reader hands
    /// updates over from outside the tree).
    fn children(self, deps: &Deps) -> Vec<Child> {
        match self {
            Self::Persistence => vec![Child::Persistence],
            Self::Breakers => (0..deps.llm.len()).map(Child::breaker).collect(),
            Self::Limiter => vec![Child::Limiter],
            Self::LlmPool => vec![Child::LlmPool],
            Self::Outbox => vec![Child::Outbox],
            Self::SessionSup => vec![Child::SessionSup],
            Self::Ingress if deps.transport.bot().is_none() => Vec::new(),
            Self::Ingress => vec![Child::Ingress],
        }
    }
}

/// One row of the supervision policy.
#[derive(Debug, Clone, Copy)]
pub struct ChildSpec {
    /// Which children.
    pub kind: Kind,
    /// Their restart type.
    pub restart: Restart,
}

/// The supervision policy of the root: one row per child, in start order.
/// `supervision.md` mirrors this table.
pub const POLICY: [ChildSpec; 7] = [
    ChildSpec {
        kind: Kind::Persistence,
        restart: Restart::Permanent,
    },
    ChildSpec {
        kind: Kind::Breakers,
        restart: Restart::Permanent,
    },
    ChildSpec {
        kind: Kind::Limiter,
        restart: Restart::Permanent,
    },
    ChildSpec {
        kind: Kind::LlmPool,
        restart: Restart::Permanent,
    },
    ChildSpec {
        kind: Kind::Outbox,
        restart: Restart::Permanent,
    },
    ChildSpec {
        kind: Kind::SessionSup,
        restart: Restart::Permanent,
    },
    ChildSpec {
        kind: Kind::Ingress,
        restart: Restart::Permanent,
    },
];

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
/// root, so a restarted child gets the same shared client and limits.
#[derive(Clone)]
pub struct Deps {
    /// The whole configuration.
    pub config: Arc<Config>,
    /// Name lookups of this instance.
    pub directory: Directory,
    /// The front end: where the outbox sends, and for Telegram the one Bot
    /// API client (one connection pool) the ingress polls with. The console
    /// front has no Bot API client, and root starts no ingress for it.
    pub transport: crate::telegram::transport::Transport,
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
    /// Telegram's flood limits, shared across outbox restarts.
    pub pacing: Arc<crate::telegram::SendPacing>,
    /// Reply texts.
    pub locales: Locales,
    /// The store's writer; only the persistence actor can use it.
    pub store: crate::store::writer::StoreWriter,
    /// The secret token Telegram sends with each webhook request.
    pub webhook_secret: crate::config::Secret,
    /// Timestamps for readiness, stamped by the ingress and the pool.
    pub health: Arc<crate::ops::Health>,
}

/// Arguments of the root.
pub struct RootArgs {
    /// Shared dependencies for the children.
    pub deps: Deps,
    /// Where the root reports why it stopped the service on its own.
    pub fatal: oneshot::Sender<Fatal>,
}

/// The root supervisor.
pub(crate) struct Root;

/// The root's state.
pub(crate) struct RootState {
    deps: Deps,
    running: HashMap<Child, ActorCell>,
    by_id: HashMap<ActorId, Child>,
    /// Restart times within the current window, per child.
    recent_restarts: HashMap<Child, VecDeque<Instant>>,
    total_restarts: HashMap<Child, u64>,
    /// Delay before each child's next restart, growing within the window.
    restart_backoff: HashMap<Child, Backoff>,
    /// When each running child last started.
    started_at: HashMap<Child, Instant>,
    /// Each child's last restart delay.
    last_delay: HashMap<Child, Duration>,
    fatal: Option<oneshot::Sender<Fatal>>,
    shutting_down: bool,
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
        let mut state = RootState {
            deps: args.deps,
            running: HashMap::new(),
            by_id: HashMap::new(),
            recent_restarts: HashMap::new(),
            total_restarts: HashMap::new(),
            restart_backoff: HashMap::new(),
            started_at: HashMap::new(),
            last_delay: HashMap::new(),
            fatal: Some(args.fatal),
            shutting_down: false,
        };
        for child in all_children(&state.deps) {
            // A child that cannot start at all fails the whole start: the
            // error reaches `app::start` and the process exits non-zero.
            start_child(&myself, &mut state, child).await?;
        }
        tracing::info!(children = state.running.len(), "supervision tree started");
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
                (cell, Exit::Failed(error.to_string()))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                Exit::Stopped(reason.unwrap_or_else(|| "no reason".into())),
            ),
            _ => return Ok(()),
        };
        let Some(child) = state.by_id.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.running.remove(&child);
        if state.shutting_down {
            return Ok(());
        }
        on_child_exited(&myself, state, child, exit).await;
        Ok(())
    }
}

/// Every child of the policy, in start order.
fn all_children(deps: &Deps) -> Vec<Child> {
    POLICY
        .iter()
        .flat_map(|spec| spec.kind.children(deps))
        .collect()
}

/// How a child ended.
enum Exit {
    /// It returned an error or panicked.
    Failed(String),
    /// It stopped normally, with this reason.
    Stopped(String),
}

/// Spawns `actor` linked to `supervisor` and returns its cell.
async fn spawn<A: Actor>(
    name: Option<String>,
    actor: A,
    args: A::Arguments,
    supervisor: ActorCell,
) -> Result<ActorCell, ActorProcessingErr> {
    Ok(Actor::spawn_linked(name, actor, args, supervisor)
        .await?
        .0
        .get_cell())
}

async fn start_child(
    myself: &ActorRef<RootMsg>,
    state: &mut RootState,
    child: Child,
) -> Result<(), ActorProcessingErr> {
    let deps = state.deps.clone();
    let name = Some(deps.directory.name(child));
    let supervisor = myself.get_cell();
    let cell = match child {
        Child::Persistence => spawn(name, persistence::Persistence, deps.store, supervisor).await?,
        Child::Breaker(index) => {
            let provider = deps
                .llm
                .get(usize::from(index))
                .map(|p| Arc::<str>::from(p.name()))
                .ok_or("no provider for this breaker")?;
            let args = breaker::BreakerArgs {
                provider,
                config: deps.config.breaker.clone(),
            };
            spawn(name, breaker::Breaker, args, supervisor).await?
        }
        Child::Limiter => {
            let args = limiter::LimiterArgs {
                config: Arc::clone(&deps.config),
                directory: deps.directory.clone(),
            };
            spawn(name, limiter::Limiter, args, supervisor).await?
        }
        Child::LlmPool => spawn(name, llm_pool::LlmPool, deps, supervisor).await?,
        Child::Outbox => spawn(name, outbox::Outbox, deps, supervisor).await?,
        Child::SessionSup => spawn(name, session_sup::SessionSup, deps, supervisor).await?,
        Child::Ingress if deps.config.telegram.mode == IngressMode::Webhook => {
            spawn(name, webhook::Webhook, deps, supervisor).await?
        }
        Child::Ingress => spawn(name, ingress::Ingress, deps, supervisor).await?,
    };
    state.by_id.insert(cell.get_id(), child);
    state.running.insert(child, cell);
    state.started_at.insert(child, Instant::now());
    Ok(())
}

async fn on_child_exited(
    myself: &ActorRef<RootMsg>,
    state: &mut RootState,
    child: Child,
    exit: Exit,
) {
    let restart = POLICY
        .iter()
        .find(|spec| spec.kind == Kind::of(child))
        .map_or(Restart::Temporary, |spec| spec.restart);
    let wanted = wants_restart(restart, &exit);
    let last_error = match exit {
        Exit::Failed(error) => error,
        Exit::Stopped(reason) => format!("stopped: {reason}"),
    };
    if !wanted {
        tracing::info!(child = child.as_str(), "child exited, not restarted");
        return;
    }

    let config = &state.deps.config.supervision;
    let now = Instant::now();
    let recent = state.recent_restarts.entry(child).or_default();
    while recent
        .front()
        .is_some_and(|at| now.duration_since(*at) > config.window)
    {
        recent.pop_front();
    }
    if recent.len() >= config.max_restarts as usize {
        let fatal = Fatal::RestartBudgetExhausted {
            child: child.as_str(),
            restarts: recent.len(),
            window: config.window,
            last_error,
        };
        escalate(myself, state, fatal);
        return;
    }
    let backoff = state
        .restart_backoff
        .entry(child)
        .or_insert_with(|| Backoff::new(config.restart_backoff_min, config.restart_backoff_max));
    // Up since its last start (none if that start failed).
    let uptime = state
        .started_at
        .remove(&child)
        .map(|started| now.duration_since(started));
    let last_delay = state.last_delay.get(&child).copied().unwrap_or_default();
    if backoff_starts_over(recent.is_empty(), uptime, last_delay, config.stable_factor) {
        backoff.reset();
    }
    let delay = backoff.next_delay();
    state.last_delay.insert(child, delay);
    recent.push_back(now);
    *state.total_restarts.entry(child).or_default() += 1;
    metrics::counter!("llmgram_actor_restarts_total", "actor" => child.as_str()).increment(1);
    tracing::warn!(child = child.as_str(), error = %last_error, ?delay, "restarting child");
    myself.send_after(delay, move || RootMsg::RestartDue { child });
}

/// The OTP rule: whether a child of this restart type is restarted after
/// this kind of exit. A panic reaches the supervisor as a failure.
fn wants_restart(restart: Restart, exit: &Exit) -> bool {
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
    if state.shutting_down || state.running.contains_key(&child) {
        return;
    }
    let order = all_children(&state.deps);
    let position = order.iter().position(|c| *c == child).unwrap_or(0);
    for due in order.into_iter().take(position + 1) {
        if state.running.contains_key(&due) {
            continue;
        }
        if let Err(error) = start_child(myself, state, due).await {
            let exit = Exit::Failed(format!("cannot start: {error}"));
            on_child_exited(myself, state, due, exit).await;
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
    // The ingress may be inside a long poll; killing it is safe because
    // Telegram keeps every update it has not seen confirmed.
    if let Some(ingress) = state.running.remove(&Child::Ingress) {
        ingress.kill();
    }
    if !state.deps.directory.session_sup().drain_within(grace).await {
        tracing::warn!(
            ?grace,
            "in-flight answers did not finish within the grace period"
        );
    }
    for child in all_children(&state.deps).into_iter().rev() {
        if let Some(cell) = state.running.remove(&child)
            && let Err(error) = cell
                .stop_and_wait(Some("shutdown".into()), Some(grace))
                .await
        {
            tracing::warn!(child = child.as_str(), %error, "child did not stop in time");
            cell.kill();
        }
    }
    state.by_id.clear();
    tracing::info!("supervision tree stopped");
    let _ = reply.send(());
    myself.stop(Some("shutdown".into()));
}

fn on_status(state: &RootState, reply: RpcReplyPort<TreeStatus>) {
    let children = all_children(&state.deps)
        .into_iter()
        .map(|child| ChildStatus {
            child,
            alive: state.deps.directory.is_running(child),
            restarts: state.total_restarts.get(&child).copied().unwrap_or(0),
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
        assert!(POLICY.iter().all(|spec| spec.restart == Restart::Permanent));
        assert_eq!(
            POLICY[0].kind,
            Kind::Persistence,
            "storage starts first, stops last"
        );
        assert_eq!(
            POLICY[POLICY.len() - 1].kind,
            Kind::Ingress,
            "updates flow in last"
        );
    }
}
