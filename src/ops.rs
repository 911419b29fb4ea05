//! The operator's HTTP listener on `ops.listen`: `/healthz` (liveness),
//! `/readyz` (readiness per component, JSON, 200 or 503), `/metrics`
//! (Prometheus text from the `metrics` facade), and `POST /backup`
//! (`{"to": "/absolute/dir"}`: a consistent copy of the store, written while
//! the bot keeps running; `llmgram backup --to DIR` calls it).
//!
//! **Mutating routes** (`POST /backup`, and `POST /chaos/panic` in a chaos
//! build) need `Authorization: Bearer <OPS_API_TOKEN>`: a missing or wrong
//! token is answered 401 (and counted as security event `ops_token`). Without
//! `OPS_API_TOKEN` they are disabled (403) whatever the address; the probes
//! (`/healthz`, `/readyz`, `/metrics`) never need a token. A listener on a
//! non-loopback address without a token still starts, saying at start that
//! the mutating routes are off: refusing to start would only take the probes
//! away from an orchestrator, which is all such a listener serves then.
//!
//! Readiness asks the actors that answer at once (breakers, persistence,
//! session supervisor, root) and reads [`Health`], a few atomics the busy
//! actors stamp (the ingress after each good poll, the pool after each
//! answer), so a long poll or a slow LLM call never delays a probe.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::actors::Directory;
use crate::actors::root::TreeStatus;
use crate::actors::root::breaker::BreakerStatus;
use crate::actors::root::session_sup::SessionStats;
use crate::clock::unix_millis;
use crate::config::{Config, OPS_TOKEN_VAR, Secret};
use crate::store::backup::BackupError;
use crate::store::writer::StoreStats;

/// Bucket bounds of the latency histograms (seconds): from a few
/// milliseconds (the bot's own overhead) to a minute (a slow LLM answer).
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process-wide Prometheus recorder; the `metrics` facade allows one per
/// process, so every service in the process (tests run several) shares it.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full(crate::telemetry::families::STORE_BATCH.to_owned()),
                        crate::telemetry::families::BATCH_BUCKETS,
                    )
                })
                .inspect_err(|error| tracing::error!(%error, "bad histogram buckets"))
                .ok()?;
            builder
                .install_recorder()
                .inspect_err(|error| tracing::error!(%error, "metrics recorder not installed"))
                .ok()
        })
        .as_ref()
}

/// Times stamped by busy actors for readiness, in milliseconds since the
/// Unix epoch (0: never).
#[derive(Debug, Default)]
pub struct Health {
    /// The ingress's last successful getUpdates.
    pub telegram_ok_ms: AtomicU64,
    /// Per provider (index), the last answered call.
    pub provider_ok_ms: Vec<AtomicU64>,
    /// This instance's lease on a shared store, once registered; unset on
    /// fjall.
    pub lease: std::sync::OnceLock<std::sync::Arc<crate::lease::LeaseClock>>,
}

impl Health {
    /// Health for `providers` LLM providers.
    pub fn new(providers: usize) -> Self {
        Self {
            telegram_ok_ms: AtomicU64::new(0),
            provider_ok_ms: (0..providers).map(|_| AtomicU64::new(0)).collect(),
            lease: std::sync::OnceLock::new(),
        }
    }

    /// Stamps `slot` with now.
    pub fn stamp(slot: &AtomicU64) {
        slot.store(unix_millis(), Ordering::Relaxed);
    }
}

/// What the handlers need.
#[derive(Clone)]
pub struct OpsState {
    /// Name lookups of the service.
    pub directory: Directory,
    /// Stamps from busy actors.
    pub health: std::sync::Arc<Health>,
    /// Provider names, in breaker index order.
    pub providers: std::sync::Arc<[String]>,
    /// Settings.
    pub config: std::sync::Arc<Config>,
    /// The mutating routes' bearer token (`OPS_API_TOKEN`); `None` disables
    /// them.
    pub token: Option<Secret>,
    /// Deliveries in progress: a backup waits for them to commit.
    pub deliveries: std::sync::Arc<crate::actors::root::outbox::Deliveries>,
}

impl OpsState {
    /// The ops view of a running service's dependencies; `token` is
    /// `OPS_API_TOKEN`.
    pub fn new(deps: &crate::actors::root::Deps, token: Option<Secret>) -> Self {
        Self {
            directory: deps.directory.clone(),
            health: std::sync::Arc::clone(&deps.health),
            providers: deps.llm.iter().map(|p| p.name().to_owned()).collect(),
            config: std::sync::Arc::clone(&deps.config),
            token,
            deliveries: std::sync::Arc::clone(&deps.deliveries),
        }
    }

    /// Says at start whether the mutating routes are on: a warning when the
    /// listener is reachable from other hosts and they are off.
    pub fn log_access(&self, listen: std::net::SocketAddr) {
        match (&self.token, listen.ip().is_loopback()) {
            (Some(_), _) => {
                tracing::info!(%listen, "ops: POST /backup enabled, bearer token required");
            }
            (None, true) => tracing::info!(
                %listen,
                "ops: {OPS_TOKEN_VAR} not set; POST /backup is disabled"
            ),
            (None, false) => tracing::warn!(
                %listen,
                "ops: listening beyond loopback and {OPS_TOKEN_VAR} not set; POST /backup is disabled, only /healthz, /readyz and /metrics are served"
            ),
        }
    }
}

/// Whether `given` is the token, in time independent of where they differ
/// (both are hashed first, so not even the length shows).
fn token_matches(expected: &Secret, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    let digest = |text: &str| ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest(expected.expose())
        .as_ref()
        .ct_eq(digest(given).as_ref())
        .into()
}

/// Lets a request to a mutating route through only with the bearer token.
async fn require_token(State(state): State<OpsState>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.token else {
        return (
            StatusCode::FORBIDDEN,
            format!("disabled: the bot was started without {OPS_TOKEN_VAR}\n"),
        )
            .into_response();
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if given.is_some_and(|given| token_matches(expected, given)) {
        return next.run(request).await;
    }
    crate::telemetry::security_event(crate::telemetry::SecurityKind::OpsToken);
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        format!("a bearer token ({OPS_TOKEN_VAR}) is required\n"),
    )
        .into_response()
}

/// Serves the ops endpoints on `listener` until `shutdown` completes, within
/// the `ops.max_connections`, `header_timeout` and `request_timeout` limits
/// ([`crate::listener`]).
pub async fn serve(
    listener: TcpListener,
    state: OpsState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    // Every route that changes something goes here, behind the token.
    let mutating = Router::new().route("/backup", axum::routing::post(backup));
    // The benchmark's way to crash actors of the running binary; a build
    // without the `chaos` feature has no such route.
    #[cfg(feature = "chaos")]
    let mutating = mutating.route("/chaos/panic", axum::routing::post(chaos_panic));
    let mutating = mutating.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_token,
    ));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(mutating);
    let limits = state.config.ops.listener_limits();
    let app = app.with_state(state);
    crate::listener::serve(listener, app, limits, "ops", shutdown).await;
}

/// `POST /chaos/panic?actor=NAME`: see [`crate::chaos::panic_named`].
#[cfg(feature = "chaos")]
async fn chaos_panic(State(state): State<OpsState>, uri: axum::http::Uri) -> Response {
    match crate::chaos::panic_named(&state.directory, uri.query().unwrap_or("")) {
        Ok(true) => (StatusCode::OK, "panicking\n").into_response(),
        Ok(false) => (StatusCode::CONFLICT, "not running\n").into_response(),
        Err(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    }
}

async fn healthz(State(state): State<OpsState>) -> Response {
    // Alive while the root supervisor runs.
    if ractor::registry::where_is(state.directory.root_name()).is_some() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "supervisor stopped\n").into_response()
    }
}

async fn metrics_text() -> Response {
    match prometheus() {
        Some(handle) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no metrics recorder\n").into_response(),
    }
}

/// Longest a backup waits for deliveries in flight to commit.
const BACKUP_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// The body of `POST /backup`.
#[derive(Debug, serde::Deserialize)]
pub struct BackupRequest {
    /// An absolute path to a new or empty directory.
    pub to: std::path::PathBuf,
}

async fn backup(
    State(state): State<OpsState>,
    axum::Json(request): axum::Json<BackupRequest>,
) -> Response {
    if !request.to.is_absolute() {
        return (StatusCode::BAD_REQUEST, "`to` must be an absolute path\n").into_response();
    }
    // An answer the user has already seen commits right after it is sent:
    // waiting for those in flight (briefly) keeps a restored copy from
    // answering them again. Past the wait the copy is taken anyway; such an
    // update is then answered once more after a restore.
    if tokio::time::timeout(BACKUP_SETTLE, state.deliveries.until_all_idle())
        .await
        .is_err()
    {
        tracing::warn!("backup taken with deliveries still committing");
    }
    let copied = state.directory.persistence().backup(&request.to).await;
    match copied {
        Ok(Ok(report)) => (StatusCode::OK, axum::Json(report)).into_response(),
        Ok(Err(error)) => {
            let status = match error {
                BackupError::Target(_) => StatusCode::BAD_REQUEST,
                BackupError::Busy => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, format!("{error}\n")).into_response()
        }
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response(),
    }
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let report = readiness(
        &state.directory,
        &state.health,
        &state.providers,
        &state.config,
    )
    .await;
    let status = if report["ready"] == Value::Bool(true) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

/// One look at the service, gathered through the actors' handles: what
/// `/readyz` and the admin `/stats` and `/health` report. Only actors that
/// answer at once are asked (a long poll or a slow LLM call never delays
/// it); a `None` is an actor that could not be reached.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Per LLM provider, in breaker index order: its breaker's state.
    pub breakers: Vec<Option<BreakerStatus>>,
    /// The store's counters.
    pub store: Option<StoreStats>,
    /// The session supervisor's counters.
    pub sessions: Option<SessionStats>,
    /// Whether the root supervisor runs.
    pub root_running: bool,
    /// Which children run and their restarts (`None`: the root did not
    /// answer in time).
    pub tree: Option<TreeStatus>,
}

impl Snapshot {
    /// Asks every actor in turn, for `providers` LLM providers.
    pub async fn collect(directory: &Directory, providers: usize) -> Self {
        let mut breakers = Vec::with_capacity(providers);
        for index in 0..providers {
            breakers.push(directory.breaker(index).status().await.ok());
        }
        let root = directory.root();
        Self {
            breakers,
            store: directory.persistence().stats().await.ok(),
            sessions: directory.session_sup().stats().await.ok(),
            root_running: root.is_running(),
            tree: root.status().await,
        }
    }
}

/// The readiness report: every component with `ok`, and `failing` naming
/// the ones that are not. `providers` are the LLM providers' names in
/// breaker index order.
pub async fn readiness(
    directory: &Directory,
    health: &Health,
    providers: &[String],
    config: &Config,
) -> Value {
    let snapshot = Snapshot::collect(directory, providers.len()).await;
    let now = unix_millis();
    let age = |stamp: u64| (stamp > 0).then(|| now.saturating_sub(stamp));
    let mut failing = Vec::new();

    // Polling: a poll returns at least every poll_timeout, and failures back
    // off at most retry_max; older than both means polling is stuck. Webhook:
    // no request may just mean no user wrote, so its age is only reported.
    let telegram_age = age(health.telegram_ok_ms.load(Ordering::Relaxed));
    let telegram_limit = config.telegram.poll_timeout + config.telegram.retry_max;
    let telegram_ok = config.telegram.mode == crate::config::IngressMode::Webhook
        || telegram_age.is_some_and(|ms| Duration::from_millis(ms) <= telegram_limit);
    if !telegram_ok {
        failing.push("telegram".to_owned());
    }

    let mut provider_reports = Vec::new();
    let mut any_provider = false;
    for (index, name) in providers.iter().enumerate() {
        let status = snapshot.breakers.get(index).copied().flatten();
        let open = matches!(status, Some(BreakerStatus::Open { .. }) | None);
        if open {
            failing.push(format!("llm:{name}"));
        } else {
            any_provider = true;
        }
        let last_ok = health
            .provider_ok_ms
            .get(index)
            .map(|slot| slot.load(Ordering::Relaxed))
            .and_then(age);
        provider_reports.push(json!({
            "name": name,
            "ok": !open,
            "breaker": status.map_or("unknown", |s| s.as_str()),
            "last_success_ms_ago": last_ok,
        }));
    }

    let store = snapshot.store;
    if store.is_none() {
        failing.push("persistence".to_owned());
    }
    let sessions = snapshot.sessions;

    // A shared store: this instance may answer only while its lease is
    // known to be valid, which also says the database answered recently.
    let database = health.lease.get().map(|lease| {
        let left = lease.remaining();
        if left.is_zero() {
            failing.push("database".to_owned());
        }
        json!({ "ok": !left.is_zero(), "lease_ms_left": left.as_millis() as u64 })
    });

    let mut actors = Vec::new();
    if snapshot.root_running {
        for child in snapshot.tree.map(|t| t.children).unwrap_or_default() {
            if !child.alive {
                failing.push(format!("actor:{}", directory.name(child.child)));
            }
            actors.push(json!({
                "name": directory.name(child.child),
                "alive": child.alive,
                "restarts": child.restarts,
            }));
        }
    } else {
        failing.push("supervisor".to_owned());
    }

    let ready = failing
        .iter()
        .all(|f| f.starts_with("llm:") && any_provider);
    json!({
        "ready": ready,
        "failing": failing,
        "telegram": { "ok": telegram_ok, "last_poll_ms_ago": telegram_age },
        "llm": provider_reports,
        "persistence": store.map(|s| json!({
            "ok": true,
            "commits": s.commits,
            "last_commit_ms": s.last_commit_micros as f64 / 1000.0,
            "quarantined": s.quarantined,
        })),
        "database": database,
        "actors": actors,
        "system": {
            "rss_bytes": rss_bytes(),
            "open_sessions": sessions.map(|s| s.live),
        },
        "security": { "events": crate::telemetry::security_events() },
    })
}

/// The readiness report in a few lines (the admin `/health` command).
pub fn summary(report: &Value) -> String {
    let mark = |ok: bool| if ok { "✅" } else { "❌" };
    let mut lines = vec![format!(
        "{} ready{}",
        mark(report["ready"] == Value::Bool(true)),
        match report["failing"].as_array() {
            Some(failing) if !failing.is_empty() => format!(
                " — failing: {}",
                failing
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => String::new(),
        }
    )];
    lines.push(format!(
        "{} telegram, last poll {} ms ago",
        mark(report["telegram"]["ok"] == Value::Bool(true)),
        report["telegram"]["last_poll_ms_ago"]
    ));
    for provider in report["llm"].as_array().into_iter().flatten() {
        lines.push(format!(
            "{} llm {}: breaker {}",
            mark(provider["ok"] == Value::Bool(true)),
            provider["name"].as_str().unwrap_or("?"),
            provider["breaker"].as_str().unwrap_or("?")
        ));
    }
    lines.push(format!(
        "{} persistence, last commit {} ms, {} quarantined",
        mark(!report["persistence"].is_null()),
        report["persistence"]["last_commit_ms"],
        report["persistence"]["quarantined"]
    ));
    let restarts: u64 = report["actors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["restarts"].as_u64())
        .sum();
    lines.push(format!(
        "actors: {} restarts; sessions: {}; RSS: {} MiB",
        restarts,
        report["system"]["open_sessions"],
        report["system"]["rss_bytes"].as_u64().unwrap_or(0) / (1024 * 1024)
    ));
    lines.join("\n")
}

/// Resident set size of this process, from `VmRSS` in `/proc/self/status`
/// (Linux; kB there, whatever the page size).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
