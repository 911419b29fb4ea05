//! Serving an HTTP listener with limits. The webhook and the ops listener
//! both serve through [`serve`], so neither a slow client nor a crowd of
//! idle ones can hold connections — and the process's file descriptors —
//! for long:
//!
//! - at most [`Limits::max_connections`] are open at once; a connection
//!   accepted past that is closed at once;
//! - a request's headers must arrive within [`Limits::header_timeout`] of
//!   the connection waiting for them (hyper's header read timeout), so a
//!   half-sent request, or a kept-alive connection left idle, is closed;
//! - once its headers are in, a request must be read, answered and its
//!   answer written within [`Limits::request_timeout`], or its connection
//!   is closed (the handler is dropped with it);
//! - when `shutdown` completes nothing more is accepted; open connections
//!   finish the request in flight within `header_timeout` and close.
//!
//! Each request carries the peer's address as axum's
//! [`ConnectInfo<SocketAddr>`]. Connections run in a [`JoinSet`] owned by
//! the serving future: dropping (aborting) it closes every connection too.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_service::Service as _;

/// Pause after a failed accept (typically `EMFILE`, out of file
/// descriptors) before trying again, so the loop waits for descriptors to
/// be freed instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a connection may take and how many may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Time for a request's headers to arrive, counted from when the
    /// connection starts waiting for them.
    pub header_timeout: Duration,
    /// Time for a request to be read, answered and its answer written, from
    /// the end of its headers.
    pub request_timeout: Duration,
}

/// Why the listener closed a connection, the `reason` label of
/// `llmgram_connections_closed_total`.
#[derive(Debug, Clone, Copy)]
enum Closed {
    /// Accepted past `max_connections`.
    ConnectionCap,
    /// Headers did not arrive within `header_timeout` (or the connection
    /// stayed idle that long).
    HeaderTimeout,
    /// A request took longer than `request_timeout`.
    RequestTimeout,
    /// Still open `header_timeout` after shutdown began.
    Shutdown,
}

impl Closed {
    fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionCap => "connection_cap",
            Self::HeaderTimeout => "header_timeout",
            Self::RequestTimeout => "request_timeout",
            Self::Shutdown => "shutdown",
        }
    }

    fn count(self, listener: &'static str) {
        tracing::debug!(listener, reason = self.as_str(), "connection closed");
        metrics::counter!(
            crate::telemetry::families::CONNECTIONS_CLOSED,
            "listener" => listener,
            "reason" => self.as_str(),
        )
        .increment(1);
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes
/// and the open connections have closed. `name` labels logs and metrics.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    name: &'static str,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let (stop, stopped) = watch::channel(());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        drop(stream);
                        Closed::ConnectionCap.count(name);
                        continue;
                    };
                    let (busy, watched) = watch::channel(None);
                    let service = Handler {
                        app: app.clone(),
                        peer,
                        busy: Arc::new(busy),
                        request_timeout: limits.request_timeout,
                    };
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    let stopped = stopped.clone();
                    connections.spawn(async move {
                        drive(connection, watched, stopped, limits.header_timeout, name).await;
                        drop(slot);
                    });
                }
                Err(error) => {
                    tracing::warn!(listener = name, %error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
    drop(listener);
    stop.send_replace(());
    while connections.join_next().await.is_some() {}
}

/// The per-connection service: hands each request to the router with the
/// peer's address, and marks the connection busy until its answer has been
/// written (the answer's body is dropped).
#[derive(Clone)]
struct Handler {
    app: Router,
    peer: SocketAddr,
    /// When the request in flight must be done by; `None` between requests.
    busy: Arc<watch::Sender<Option<Instant>>>,
    request_timeout: Duration,
}

/// Clears the connection's deadline when dropped.
struct Done(Arc<watch::Sender<Option<Instant>>>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.send_replace(None);
    }
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send + 'static>,
    >;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        self.busy
            .send_replace(Some(Instant::now() + self.request_timeout));
        let done = Done(Arc::clone(&self.busy));
        let mut app = self.app.clone();
        Box::pin(async move {
            let response = app.call(request).await?;
            // The deadline holds until hyper has written the whole body and
            // drops it.
            Ok(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _keep = &done;
                    frame
                }))
            }))
        })
    }
}

/// Runs one connection: closes it when a request outlives its deadline, and
/// after shutdown began, once the request in flight is done or
/// `header_timeout` has passed.
async fn drive<S>(
    connection: http1::Connection<TokioIo<tokio::net::TcpStream>, S>,
    mut busy: watch::Receiver<Option<Instant>>,
    mut stopped: watch::Receiver<()>,
    header_timeout: Duration,
    name: &'static str,
) where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(connection);
    let mut stop_by: Option<Instant> = None;
    loop {
        let request_by = *busy.borrow_and_update();
        let (deadline, reason) = match (request_by, stop_by) {
            (Some(r), Some(s)) if s < r => (Some(s), Closed::Shutdown),
            (Some(r), _) => (Some(r), Closed::RequestTimeout),
            (None, s) => (s, Closed::Shutdown),
        };
        tokio::select! {
            result = connection.as_mut() => {
                match result {
                    Err(error) if error.is_timeout() => Closed::HeaderTimeout.count(name),
                    Err(error) => tracing::debug!(listener = name, %error, "connection failed"),
                    Ok(()) => {}
                }
                return;
            }
            Ok(()) = busy.changed() => {}
            Ok(()) = stopped.changed(), if stop_by.is_none() => {
                connection.as_mut().graceful_shutdown();
                stop_by = Some(Instant::now() + header_timeout);
            }
            () = until(deadline) => {
                reason.count(name);
                return;
            }
        }
    }
}

/// Completes at `deadline`, or never.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
