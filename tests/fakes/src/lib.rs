//! Loopback fakes for llmgram's integration tests and benchmarks.
//!
//! Two real HTTP servers, each bound to `127.0.0.1` on an ephemeral port and
//! running on the current tokio runtime:
//!
//! * [`FakeTelegram`] — a small subset of the Telegram Bot API (`getMe`,
//!   `getUpdates` with long polling, `sendMessage`, `editMessageText`,
//!   `sendChatAction`, `setMyCommands`, `getFile` and file downloads, …) with
//!   update injection (text and [`MediaUpdate`] media messages), Telegram
//!   Business connections and fan chats ([`telegram::business`]),
//!   observation helpers and fault injection. Point teloxide at it with
//!   `Bot::set_api_url(fake.api_url().parse()?)`.
//! * [`FakeLlm`] — an OpenAI-compatible `POST /v1/chat/completions` endpoint
//!   whose behaviour (latency, errors, malformed bodies, hangs, SSE streams)
//!   is scripted per request, and `POST /v1/audio/transcriptions`, scripted
//!   likewise with [`TranscriptionReply`].
//!
//! And one real program: [`TempHaproxy`] runs the `haproxy` binary with the
//! routing rules of `deploy/haproxy.cfg` in front of several loopback
//! backends, for tests of several llmgram instances ([`haproxy::available`]
//! says whether the binary is installed).
//!
//! Both fake servers' handles are cheap to clone (an `Arc` inside) and the server keeps
//! running until the runtime that started it shuts down.
//!
//! Besides the fakes, [`TempPostgres`] runs a real, throwaway PostgreSQL
//! server (the distribution's binaries) for the tests of the shared-database
//! backend; it is blocking and owned by the test, not tied to a runtime.
//! [`PartitionablePostgres`] runs one in a network namespace of its own,
//! reached over paths that can each be cut silently and healed (a network
//! partition between some instances and the database; root only).

pub mod haproxy;
pub mod llm;
pub mod netns;
pub mod postgres;
pub mod telegram;

pub use haproxy::TempHaproxy;
pub use llm::*;
pub use netns::PartitionablePostgres;
pub use postgres::TempPostgres;
pub use telegram::*;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// Locks a mutex, recovering the data if a previous holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Waits until `ready()` returns true, re-checking every time `notify` fires,
/// for at most `timeout`. Returns the final value of `ready()`.
///
/// `notify` must be signalled with `notify_waiters` after every state change
/// that may make `ready()` true.
pub(crate) async fn wait_until(
    notify: &Notify,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if ready() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return ready();
        }
    }
}

/// Binds `127.0.0.1:0` and serves `router` on a spawned task; returns the port.
///
/// Panics only if the loopback interface cannot be bound, which makes every
/// test using the fakes meaningless anyway.
pub(crate) async fn serve(router: axum::Router) -> u16 {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", 0)).await {
        Ok(l) => l,
        Err(e) => panic!("llmgram-fakes: cannot bind 127.0.0.1:0: {e}"),
    };
    let port = match listener.local_addr() {
        Ok(a) => a.port(),
        Err(e) => panic!("llmgram-fakes: no local address: {e}"),
    };
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        // Small request/response exchanges: avoid Nagle delays.
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        // Errors here only mean the runtime is shutting down.
        let _ = axum::serve(listener, router).await;
    });
    port
}
