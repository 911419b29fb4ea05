//! The chaos hook: make any actor panic on command, to test supervision under
//! real failures. Compiled only with the `chaos` feature (the tests and the
//! benchmarks enable it; a release build never has it). The ops listener
//! exposes it as `POST /chaos/panic?actor=NAME` (see [`panic_named`]) so the
//! load benchmark can crash actors of the real binary from outside.

use std::sync::Mutex;

use crate::actors::{Child, Directory};
use crate::telegram::inbound::ChatId;

/// Makes a long-lived actor panic through its handle; `false` if it is not
/// running now.
pub fn panic_child(directory: &Directory, child: Child) -> bool {
    match child {
        Child::Persistence => directory.persistence().panic(),
        Child::Breaker(index) => directory.breaker(usize::from(index)).panic(),
        Child::Limiter => directory.limiter().panic(),
        Child::LlmPool => directory.llm_pool().panic(),
        Child::Outbox => directory.outbox().panic(),
        Child::SessionSup => directory.session_sup().panic(),
        Child::Business => directory.business().panic(),
        #[cfg(feature = "postgres")]
        Child::Cluster => directory.cluster().panic(),
        #[cfg(not(feature = "postgres"))]
        Child::Cluster => false,
        Child::Front => directory.front().panic(),
    }
}

/// Makes the actor named by an ops query panic: `actor=NAME` with a child's
/// registered name as [`Child::parse`] reads it (`persistence`, `limiter`,
/// `llm_pool`, `breaker.N`, `outbox`, `session_sup`, `business`, `ingress`), or
/// `actor=session&chat=ID` (that chat's session, at its next update).
/// `Ok(false)` if the actor is not running now (e.g. still restarting).
pub fn panic_named(directory: &Directory, query: &str) -> Result<bool, String> {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    };
    let actor = param("actor").ok_or("missing actor=NAME")?;
    if actor == "session" {
        let chat = param("chat")
            .and_then(|c| c.parse().ok())
            .ok_or("actor=session needs chat=ID")?;
        panic_session(directory, ChatId(chat));
        return Ok(true);
    }
    let child = Child::parse(actor).ok_or_else(|| format!("unknown actor {actor:?}"))?;
    Ok(panic_child(directory, child))
}

/// Sessions told to panic when they start their next update, by instance
/// and chat. A message would queue behind the updates already in the
/// session's mailbox; this flag lets a test crash a session that has
/// several updates waiting.
static DOOMED_SESSIONS: Mutex<Vec<(String, ChatId)>> = Mutex::new(Vec::new());

/// Makes the session of `chat_id` panic when it starts its next update.
pub fn panic_session(directory: &Directory, chat_id: ChatId) {
    lock().push((directory.instance().to_owned(), chat_id));
}

/// Whether the session of `chat_id` was told to panic (one order is taken:
/// told twice, it panics on two updates, or twice on the same one).
pub fn take_session_panic(directory: &Directory, chat_id: ChatId) -> bool {
    let mut doomed = lock();
    let order = doomed
        .iter()
        .position(|(instance, chat)| instance == directory.instance() && *chat == chat_id);
    order.map(|index| doomed.remove(index)).is_some()
}

fn lock() -> std::sync::MutexGuard<'static, Vec<(String, ChatId)>> {
    // A flag list: a panic cannot leave it half-changed.
    crate::error::lock_unpoisoned(&DOOMED_SESSIONS)
}
