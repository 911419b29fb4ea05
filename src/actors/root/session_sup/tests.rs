//! The session supervisor on its own, on a paused clock: the real
//! supervisor and sessions with their real neighbours (persistence on a temp
//! store, limiter, outbox sending to a scripted Bot API stand-in) and a
//! small stand-in for the LLM pool behind the pool's own address, which
//! answers after a set (virtual) delay and records every prompt.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};

use super::SessionSup;
use crate::actors::Child;
use crate::actors::root::limiter::{Limiter, LimiterArgs};
use crate::actors::root::llm_pool::LlmPoolMsg;
use crate::actors::root::outbox::Outbox;
use crate::actors::test_support::{self, TestDeps};
use crate::llm::{ChatMessage, Completion, Role};
use crate::telegram::inbound::{ChatId, Inbound, InboundKind};

/// Telegram's pacing runs on the real clock: loose enough never to wait.
/// Merging off: one answer per message.
const CONFIG: &str = "telegram.per_chat_rate = 1000\ntelegram.per_chat_burst = 1000\n\
                      telegram.global_rate = 1000\nsession.merge_window = \"0s\"\n\
                      session.queued_notice_after = \"1h\"\n";

/// The LLM pool's stand-in: answers "answer to: <last text>" after `delay`.
struct StandInPool;

struct StandInState {
    delay: Duration,
    prompts: Arc<Mutex<Vec<Vec<ChatMessage>>>>,
    /// `("asked" | "answered", text)` in the order they happened.
    events: Arc<Mutex<Vec<(&'static str, String)>>>,
    /// An answer goes only with a permit (after its delay).
    gate: Arc<tokio::sync::Semaphore>,
}

impl Actor for StandInPool {
    type Msg = LlmPoolMsg;
    type State = StandInState;
    type Arguments = StandInState;

    async fn pre_start(
        &self,
        _myself: ActorRef<LlmPoolMsg>,
        state: StandInState,
    ) -> Result<StandInState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<LlmPoolMsg>,
        message: LlmPoolMsg,
        state: &mut StandInState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LlmPoolMsg::Complete {
                messages, reply, ..
            } => {
                let last = messages
                    .last()
                    .map(|m| m.content.to_string())
                    .unwrap_or_default();
                lock(&state.prompts).push(messages);
                lock(&state.events).push(("asked", last.clone()));
                let delay = state.delay;
                let events = Arc::clone(&state.events);
                let gate = Arc::clone(&state.gate);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                    lock(&events).push(("answered", last.clone()));
                    let _ = reply.send(Ok(Completion {
                        text: format!("answer to: {last}"),
                        usage: None,
                        finish_reason: None,
                        first_text_after: None,
                        truncated: false,
                        model: "stand-in".into(),
                    }));
                });
            }
            LlmPoolMsg::CurrentModel { reply } => drop(reply.send("stand-in".into())),
            LlmPoolMsg::SetModel { reply, .. } => drop(reply.send(Ok(()))),
            LlmPoolMsg::ReloadModel => {}
            LlmPoolMsg::Transcribe { reply, .. } => {
                drop(reply.send(Err(crate::llm::LlmError::NoTranscription)));
            }
            #[cfg(feature = "chaos")]
            LlmPoolMsg::Panic => {}
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    crate::error::lock_unpoisoned(mutex)
}

struct Tree {
    t: TestDeps,
    actors: Vec<ActorCell>,
    prompts: Arc<Mutex<Vec<Vec<ChatMessage>>>>,
    events: Arc<Mutex<Vec<(&'static str, String)>>>,
    /// Permits for the stand-in's answers.
    gate: Arc<tokio::sync::Semaphore>,
    next_update: u32,
}

impl Tree {
    async fn start(instance: &str, config: &str, llm_delay: Duration) -> Self {
        let t = test_support::deps(instance, &format!("{CONFIG}{config}"));
        let directory = &t.deps.directory;
        let mut actors = vec![t.start_persistence().await];
        let limiter = LimiterArgs {
            config: Arc::clone(&t.deps.config),
            directory: directory.clone(),
        };
        let (limiter, _) = Actor::spawn(Some(directory.name(Child::Limiter)), Limiter, limiter)
            .await
            .expect("limiter starts");
        actors.push(limiter.get_cell());
        let prompts = Arc::default();
        let events = Arc::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(
            tokio::sync::Semaphore::MAX_PERMITS,
        ));
        let pool = StandInState {
            delay: llm_delay,
            prompts: Arc::clone(&prompts),
            events: Arc::clone(&events),
            gate: Arc::clone(&gate),
        };
        let (pool, _) = Actor::spawn(Some(directory.name(Child::LlmPool)), StandInPool, pool)
            .await
            .expect("stand-in starts");
        actors.push(pool.get_cell());
        let (outbox, _) = Actor::spawn(
            Some(directory.name(Child::Outbox)),
            Outbox,
            crate::actors::root::outbox_args(&t.deps),
        )
        .await
        .expect("outbox starts");
        actors.push(outbox.get_cell());
        let (sessions, _) = Actor::spawn(
            Some(directory.name(Child::SessionSup)),
            SessionSup,
            crate::actors::root::session_sup_args(&t.deps),
        )
        .await
        .expect("session supervisor starts");
        actors.push(sessions.get_cell());
        Self {
            t,
            actors,
            prompts,
            events,
            gate,
            next_update: 1,
        }
    }

    /// A user writes `text` in the private chat `chat`: admitted durably and
    /// routed, as the front ends hand updates over.
    async fn say(&mut self, chat: i64, text: &str) {
        let inbound = Inbound {
            update_id: self.next_update,
            key: ChatId(chat).into(),
            user_id: Some(chat.unsigned_abs()),
            language_code: Some("en".into()),
            kind: InboundKind::Text(text.into()),
            received_at: std::time::Instant::now(),
            sent_at: None,
            refused: None,
            speaker: None,
            message_id: None,
            reply_to: None,
        };
        self.next_update += 1;
        let directory = &self.t.deps.directory;
        let admitted = directory
            .persistence()
            .admit(&[inbound])
            .await
            .expect("admitted");
        directory
            .session_sup()
            .route(admitted)
            .await
            .expect("routed");
    }

    async fn drain(&self) {
        self.t
            .deps
            .directory
            .session_sup()
            .drain()
            .await
            .expect("drained");
    }

    async fn stats(&self) -> super::SessionStats {
        self.t
            .deps
            .directory
            .session_sup()
            .stats()
            .await
            .expect("stats")
    }

    /// Holds the stand-in's answers until [`Tree::answer`] lets them go.
    fn hold_answers(&self) {
        let held = self.gate.available_permits();
        self.gate.forget_permits(held);
    }

    /// Lets `n` held answers go.
    fn answer(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// Waits (virtual time, at most a minute) until the stand-in was asked
    /// `text`; `false` if it never was.
    async fn until_asked(&self, text: &str) -> bool {
        for _ in 0..6_000 {
            if lock(&self.events)
                .iter()
                .any(|(w, t)| *w == "asked" && t == text)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Where `(what, text)` is in the stand-in's log of events.
    fn event(&self, what: &str, text: &str) -> usize {
        lock(&self.events)
            .iter()
            .position(|(w, t)| *w == what && t == text)
            .unwrap_or_else(|| panic!("{what} {text:?} never happened"))
    }

    fn stop(self) {
        for actor in self.actors.into_iter().rev() {
            actor.stop(None);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_chat_is_answered_in_order_while_other_chats_run_beside_it() {
    let mut tree = Tree::start("sup-order", "", Duration::ZERO).await;
    tree.hold_answers();
    tree.say(1, "a1").await;
    tree.say(1, "a2").await;
    tree.say(2, "b1").await;
    // a1 is not answered yet: chat 2 goes on beside it, chat 1's next
    // message waits for it.
    assert!(tree.until_asked("a1").await);
    assert!(tree.until_asked("b1").await, "chat 2 waited for chat 1");
    assert!(
        !tree.until_asked("a2").await,
        "a2 asked before a1 was answered"
    );
    tree.answer(3);
    tree.drain().await;
    assert_eq!(
        tree.t.telegram.texts(ChatId(1)),
        ["answer to: a1", "answer to: a2"]
    );
    assert_eq!(tree.t.telegram.texts(ChatId(2)), ["answer to: b1"]);
    assert!(tree.event("asked", "a2") > tree.event("answered", "a1"));
    assert_eq!(tree.stats().await.pending, 0);
    tree.stop();
}

/// Shutdown closes the supervisor before draining it: an update routed
/// afterwards (a shared store's sweep keeps routing to a busy instance) is
/// left pending in the store instead of holding the drain up, and what was
/// routed before is still answered.
#[tokio::test(start_paused = true)]
async fn a_closed_supervisor_routes_nothing_more_and_drains() {
    let mut tree = Tree::start("sup-close", "", Duration::from_millis(100)).await;
    tree.hold_answers();
    tree.say(1, "before").await;
    assert!(tree.until_asked("before").await);
    tree.t.deps.directory.session_sup().close();
    tree.say(1, "after").await;
    tree.say(2, "elsewhere").await;
    tree.answer(3);
    tree.drain().await;
    assert_eq!(tree.t.telegram.texts(ChatId(1)), ["answer to: before"]);
    assert!(tree.t.telegram.texts(ChatId(2)).is_empty());
    assert_eq!(tree.stats().await.pending, 0);
    let left: Vec<u32> = tree
        .t
        .deps
        .directory
        .persistence()
        .pending_updates(&tree.t.deps.config.commands)
        .await
        .expect("pending updates")
        .iter()
        .map(|inbound| inbound.update_id)
        .collect();
    assert_eq!(left, [2, 3], "left pending in the store");
    tree.stop();
}

#[tokio::test(start_paused = true)]
async fn eviction_never_drops_a_queued_message_and_a_new_session_reloads_the_chat() {
    // Answers take longer than the idle timeout: a session with messages
    // waiting must not look idle.
    let config = "session.idle_timeout = \"2s\"\nsession.sweep_interval = \"500ms\"\n";
    let mut tree = Tree::start("sup-evict", config, Duration::from_secs(5)).await;
    tree.say(1, "first").await;
    tree.say(1, "second").await;
    tree.drain().await;
    assert_eq!(
        tree.t.telegram.texts(ChatId(1)),
        ["answer to: first", "answer to: second"]
    );
    assert_eq!(tree.stats().await.evicted, 0, "evicted while busy");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = tree.stats().await;
    assert_eq!((stats.evicted, stats.live), (1, 0), "idle session kept");

    tree.say(1, "third").await;
    tree.drain().await;
    assert_eq!(tree.t.telegram.texts(ChatId(1)).len(), 3);
    let prompts = lock(&tree.prompts).clone();
    let last = prompts.last().expect("third asked");
    let said: Vec<&str> = last
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| &*m.content)
        .collect();
    assert_eq!(said, ["first", "second", "third"], "history reloaded");
    tree.stop();
}

#[cfg(feature = "chaos")]
#[tokio::test(start_paused = true)]
async fn a_crashed_session_is_replaced_and_its_queue_redelivered_in_order() {
    let mut tree = Tree::start("sup-crash", "", Duration::from_millis(100)).await;
    crate::chaos::panic_session(&tree.t.deps.directory, ChatId(1));
    tree.say(1, "one").await;
    tree.say(1, "two").await;
    tree.drain().await;
    assert_eq!(
        tree.t.telegram.texts(ChatId(1)),
        ["answer to: one", "answer to: two"],
        "each answered once, in order"
    );
    let stats = tree.stats().await;
    assert_eq!((stats.restarted, stats.dropped), (1, 0));
    tree.stop();
}

#[cfg(feature = "chaos")]
#[tokio::test(start_paused = true)]
async fn an_update_that_keeps_crashing_its_session_is_dropped_with_an_apology() {
    let mut tree = Tree::start(
        "sup-poison",
        "session.max_redeliveries = 2\n",
        Duration::from_millis(100),
    )
    .await;
    // Crashes on its first delivery and on both redeliveries.
    for _ in 0..3 {
        crate::chaos::panic_session(&tree.t.deps.directory, ChatId(1));
    }
    tree.say(1, "poison").await;
    tree.say(1, "fine").await;
    tree.drain().await;
    let apology = tree
        .t
        .deps
        .locales
        .for_language(Some("en"))
        .internal_error
        .clone();
    assert_eq!(
        tree.t.telegram.texts(ChatId(1)),
        [apology, "answer to: fine".to_owned()]
    );
    let stats = tree.stats().await;
    assert_eq!((stats.restarted, stats.dropped), (3, 1));
    let asked: Vec<String> = lock(&tree.prompts)
        .iter()
        .filter_map(|p| p.last().map(|m| m.content.to_string()))
        .collect();
    assert_eq!(asked, ["fine"], "the poison never reached the LLM");
    tree.stop();
}
