//! Webhook ingress: in `telegram.mode = "webhook"`, Telegram posts each update
//! to `[webhook].url`; this actor registers the webhook and owns the HTTP
//! listener that receives them.
//!
//! - **Supervised by:** root, permanent, as [`Child::Front`](crate::actors::Child::Front)
//!   (root's start function starts this or the polling ingress, by mode).
//! - **Messages:** [`WebhookMsg::Reclaim`], its own timer
//!   (`limits.sweep_interval`, as the outbox's and the limiter's); requests
//!   are served by a listener task the actor owns and aborts when it stops.
//! - **State:** the listener task and the per-address limiters.
//! - **Per request** (in the listener's tasks, served by
//!   [`crate::listener::serve`] within the `webhook.max_connections`,
//!   `header_timeout` and `request_timeout` limits): refused unless it comes
//!   from `webhook.allowed_networks` (when set; 403); then refused unless it
//!   carries the secret token registered with setWebhook in
//!   `X-Telegram-Bot-Api-Secret-Token` (401, or 429 past
//!   `webhook.unauthenticated_per_ip_per_second` for its address), checked
//!   before its body is read and before it counts against anything an
//!   authentic request needs; then held to `webhook.per_ip_per_second` for
//!   its address (429) and `webhook.max_body_bytes` (413). A body that is not
//!   an update (no numeric `update_id`) is refused (400); an update that
//!   cannot be read or is of an unknown kind is logged with its id, counted
//!   and acknowledged (200), since Telegram would retry it forever and hold
//!   later updates back. A message update is then handed over as every front
//!   end does ([`hand_over`]: admitted durably, rate-limited, routed), and only then answered 200: a failure
//!   answers 500 and Telegram delivers the update again.
//! - **Failures:** a failed setWebhook or bind fails the start; root
//!   restarts it with backoff and, past the budget, stops the service. After
//!   a restart, updates Telegram retried are recognised by the store.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use teloxide::Bot;
use teloxide::payloads::SetWebhookSetters as _;
use teloxide::prelude::Requester;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use url::Url;

use crate::actors::Directory;
#[cfg(feature = "chaos")]
use crate::actors::directory::{Address, Child};
use crate::config::{Config, Network, Secret};
use crate::front::{hand_over, take_connections};
use crate::ops::Health;
use crate::telegram::TelegramError;
use crate::telegram::inbound::Inbound;
use crate::telegram::updates::read_update;
use crate::telemetry::{SecurityKind, security_event};
use crate::texts::Locales;

/// The header Telegram puts the secret token in.
const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Makes the webhook panic (tests only, through [`Directory::front`]);
/// `false` if it is not running.
#[cfg(feature = "chaos")]
pub(super) fn panic(directory: &Directory) -> bool {
    const ADDRESS: Address<WebhookMsg> = Address::new(Child::Front);
    directory.cast_now(ADDRESS, WebhookMsg::Panic)
}

/// Messages of the webhook ingress.
pub(crate) enum WebhookMsg {
    /// Panic at once: the chaos hook for tests (feature `chaos` only).
    #[cfg(feature = "chaos")]
    Panic,
    /// Timer (`limits.sweep_interval`): drop the per-IP limiter state of
    /// quiet addresses, so a flood from many addresses cannot grow it
    /// without bound.
    Reclaim,
}

/// What the webhook is built from.
pub(crate) struct WebhookArgs {
    /// The Bot API client, to register the webhook and the command menu.
    pub(crate) bot: Bot,
    /// The bot's username, when getMe answered at start.
    pub(crate) bot_username: Option<String>,
    /// The secret token registered with setWebhook and checked on each
    /// request.
    pub(crate) secret: Secret,
    /// `[webhook]`, the command costs and the command menu.
    pub(crate) config: Arc<Config>,
    /// The command menu's descriptions.
    pub(crate) locales: Locales,
    /// Stamped after each update received, for readiness.
    pub(crate) health: Arc<Health>,
    /// To admit, limit and route what it receives.
    pub(crate) directory: Directory,
}

/// The webhook ingress actor.
pub(crate) struct Webhook;

/// Its state. Dropping it aborts its tasks: root's shutdown *kills* the
/// front (`post_stop` does not run then), and a listener left running
/// would keep admitting updates into a draining instance.
pub(crate) struct WebhookState {
    listener: JoinHandle<()>,
    /// The per-address limiters, reclaimed on [`WebhookMsg::Reclaim`].
    limiters: [Arc<DefaultKeyedRateLimiter<IpAddr>>; 2],
    /// Sends [`WebhookMsg::Reclaim`].
    reclaim_timer: JoinHandle<()>,
    /// Registers the command menu in the background.
    menu: JoinHandle<()>,
}

/// What each request needs.
#[derive(Clone)]
struct Receiver {
    directory: Directory,
    config: Arc<Config>,
    secret: Secret,
    bot_username: Arc<str>,
    /// Authentic requests (with the secret) per address.
    per_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    /// Requests without the secret per address: a budget of their own, so
    /// forgeries never spend what Telegram's deliveries need.
    unauthenticated: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    networks: Arc<[Network]>,
    health: Arc<Health>,
}

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
enum WebhookError {
    #[error("webhook.url `{0}` is not a URL")]
    Url(String),
    #[error("setWebhook failed: {0}")]
    Register(TelegramError),
    #[error("cannot listen on webhook.listen {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

impl Actor for Webhook {
    type Msg = WebhookMsg;
    type State = WebhookState;
    type Arguments = WebhookArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WebhookMsg>,
        args: WebhookArgs,
    ) -> Result<WebhookState, ActorProcessingErr> {
        let config = &args.config.webhook;
        let bot = &args.bot;
        let url = Url::parse(&config.url)
            .map_err(|_| WebhookError::Url(crate::config::redact_url_text(&config.url)))?;
        let bot_username = match &args.bot_username {
            Some(name) => name.clone(),
            None => bot
                .get_me()
                .await
                .map_err(|e| WebhookError::Register(e.into()))?
                .username()
                .to_owned(),
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| WebhookError::Bind(config.listen, e))?;
        bot.set_webhook(url.clone())
            .secret_token(args.secret.expose().to_owned())
            .allowed_updates(crate::telegram::updates::allowed_updates(&args.config))
            .await
            .map_err(|e| WebhookError::Register(e.into()))?;
        tracing::info!(url = %crate::config::redact_url(&url), listen = %config.listen, "webhook registered");

        let per_ip = per_address(config.per_ip_per_second);
        let unauthenticated = per_address(config.unauthenticated_per_ip_per_second);
        let reclaim_timer =
            myself.send_interval(args.config.limits.sweep_interval, || WebhookMsg::Reclaim);
        // The menu is best effort, as in polling mode: a refused
        // setMyCommands must not keep the webhook from taking updates.
        let menu = crate::telegram::spawn_command_menu(
            bot.clone(),
            Arc::clone(&args.config),
            args.locales.clone(),
            crate::retry::Backoff::new(
                args.config.telegram.retry_min,
                args.config.telegram.retry_max,
            ),
        );
        let receiver = Receiver {
            directory: args.directory.clone(),
            config: Arc::clone(&args.config),
            secret: args.secret.clone(),
            bot_username: bot_username.into(),
            per_ip: Arc::clone(&per_ip),
            unauthenticated: Arc::clone(&unauthenticated),
            networks: config
                .allowed_networks
                .iter()
                .filter_map(|n| Network::parse(n))
                .collect(),
            health: Arc::clone(&args.health),
        };
        let app = Router::new()
            .route(url.path(), axum::routing::post(receive))
            .layer(DefaultBodyLimit::max(config.max_body_bytes))
            .layer(axum::middleware::from_fn_with_state(
                receiver.clone(),
                admit,
            ))
            .with_state(receiver);
        // Runs until the actor stops and aborts it (with every connection).
        let listener = tokio::spawn(crate::listener::serve(
            listener,
            app,
            config.listener_limits(),
            "webhook",
            std::future::pending(),
        ));
        Ok(WebhookState {
            listener,
            limiters: [per_ip, unauthenticated],
            reclaim_timer,
            menu,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<WebhookMsg>,
        message: WebhookMsg,
        state: &mut WebhookState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            #[cfg(feature = "chaos")]
            WebhookMsg::Panic => panic!("chaos: ordered to panic"),
            WebhookMsg::Reclaim => on_reclaim(state),
        }
        Ok(())
    }
}

/// Forgets the addresses that have been quiet long enough to have their
/// whole allowance back.
fn on_reclaim(state: &WebhookState) {
    for limiter in &state.limiters {
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

/// A per-address limiter allowing `per_second` requests a second (burst the
/// same).
fn per_address(per_second: u32) -> Arc<DefaultKeyedRateLimiter<IpAddr>> {
    let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    Arc::new(RateLimiter::keyed(Quota::per_second(per_second)))
}

/// Lets a request through to [`receive`] only from an allowed network, with
/// the secret token, and within its address's allowance — in that order, and
/// before its body is read. A request without the secret is answered 401
/// and spends only the unauthenticated budget of its address (past it: 429,
/// counted but not logged), never the allowance of authentic requests:
/// behind a TLS proxy every request has the proxy's address, so anyone
/// reaching the proxy could otherwise starve Telegram's deliveries.
async fn admit(
    State(receiver): State<Receiver>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let ip = peer.ip();
    if !receiver.networks.is_empty() && !receiver.networks.iter().any(|n| n.contains(ip)) {
        security_event(SecurityKind::WebhookNetwork);
        return refuse(StatusCode::FORBIDDEN);
    }
    if !has_secret(request.headers(), &receiver.secret) {
        if receiver.unauthenticated.check_key(&ip).is_err() {
            metrics::counter!(
                crate::telemetry::families::SECURITY_EVENTS,
                "kind" => SecurityKind::WebhookSecretUnlogged.as_str()
            )
            .increment(1);
            return refuse(StatusCode::TOO_MANY_REQUESTS);
        }
        security_event(SecurityKind::WebhookSecret);
        return refuse(StatusCode::UNAUTHORIZED);
    }
    if receiver.per_ip.check_key(&ip).is_err() {
        metrics::counter!("llmgram_rate_limited_total").increment(1);
        return refuse(StatusCode::TOO_MANY_REQUESTS);
    }
    next.run(request).await
}

/// A refusal sent before the request's body was read. The connection is
/// closed after it (the unread body cannot be skipped), so it says so:
/// otherwise a client sending its next request on the same connection sees
/// it closed under that request instead of an answer.
fn refuse(status: StatusCode) -> Response {
    (status, [(axum::http::header::CONNECTION, "close")]).into_response()
}

/// Whether `headers` carry the registered secret token.
fn has_secret(headers: &HeaderMap, secret: &Secret) -> bool {
    headers
        .get(SECRET_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|given| constant_time_eq(given.as_bytes(), secret.expose().as_bytes()))
}

/// Takes an update from a request [`admit`] let through.
async fn receive(State(receiver): State<Receiver>, body: Bytes) -> StatusCode {
    // An update that cannot be read but has an id is acknowledged (logged
    // and counted by `read_update`): Telegram retries anything else and
    // holds the updates after it back meanwhile. Only a body that is not an
    // update at all is refused.
    let read = match std::str::from_utf8(&body)
        .map_err(|_| "not UTF-8".to_owned())
        .and_then(|text| read_update(text).map_err(|e| e.to_string()))
    {
        Ok(read) => read,
        Err(error) => {
            tracing::warn!(%error, "webhook body is not an update");
            return StatusCode::BAD_REQUEST;
        }
    };
    Health::stamp(&receiver.health.telegram_ok_ms);
    metrics::counter!("llmgram_updates_received_total").increment(1);
    let Some(update) = read.update else {
        return StatusCode::OK;
    };
    if let Err(error) = take_connections(&receiver.directory, &receiver.config, [&update]).await {
        tracing::warn!(%error, "business connection not stored; Telegram will retry");
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let Some(inbound) = Inbound::from_update(&update, &receiver.bot_username, &receiver.config)
    else {
        return StatusCode::OK;
    };
    match hand_over(&receiver.directory, &receiver.config, vec![inbound]).await {
        Ok(()) => StatusCode::OK,
        Err(error) => {
            // Telegram delivers it again; the store recognises it if it was
            // admitted after all.
            tracing::warn!(%error, "update not handed over; Telegram will retry");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// Compares secrets without stopping at the first difference, so response
/// timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Drop for WebhookState {
    fn drop(&mut self) {
        self.listener.abort();
        self.reclaim_timer.abort();
        self.menu.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An actor holding a [`WebhookState`], as the webhook does.
    struct Holder;

    impl Actor for Holder {
        type Msg = ();
        type State = WebhookState;
        type Arguments = WebhookState;

        async fn pre_start(
            &self,
            _myself: ActorRef<()>,
            state: WebhookState,
        ) -> Result<WebhookState, ActorProcessingErr> {
            Ok(state)
        }
    }

    /// A task that never ends by itself; `closed` resolves once it is gone.
    fn endless() -> (JoinHandle<()>, tokio::sync::oneshot::Receiver<()>) {
        let (guard, closed) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        (task, closed)
    }

    /// Root's shutdown kills the front (no `post_stop`): the listener must
    /// stop with it, or a draining instance keeps admitting updates.
    #[tokio::test]
    async fn killing_the_webhook_stops_its_listener() {
        let (listener, listener_gone) = endless();
        let (reclaim_timer, timer_gone) = endless();
        let (menu, menu_gone) = endless();
        let state = WebhookState {
            listener,
            limiters: [per_address(1), per_address(1)],
            reclaim_timer,
            menu,
        };
        let (actor, handle) = Actor::spawn(None, Holder, state).await.unwrap();
        actor.kill();
        handle.await.unwrap();
        let within = std::time::Duration::from_secs(5);
        for gone in [listener_gone, timer_gone, menu_gone] {
            // The sender is dropped (not sent): an error means "gone".
            assert!(tokio::time::timeout(within, gone).await.unwrap().is_err());
        }
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
