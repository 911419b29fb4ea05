//! Outbox: every Bot API send goes through here. Each chat's messages leave
//! one at a time and in order; different chats send in parallel up to
//! `telegram.max_concurrent_sends`. The queues are per Telegram chat (its
//! flood limits are), so the topics of a forum supergroup share one; each
//! job names its conversation ([`SessionKey`]), whose topic the messages go
//! to and whose record the turn's commit writes.
//!
//! - **Supervised by:** root, permanent.
//! - **Messages:** [`OutboxMsg::Deliver`] (send these parts, in order, commit
//!   the turn, and say when done), [`OutboxMsg::Flush`] (answer when the
//!   chat's earlier jobs are done), [`OutboxMsg::ShowTyping`] (best effort),
//!   [`OutboxMsg::JobFinished`] (from its own send tasks) and
//!   [`OutboxMsg::Reclaim`] (timer: forget the flood-control state of quiet
//!   chats). Callers use [`OutboxHandle`].
//! - **Edits:** a part may replace the text of a message sent before (a
//!   streamed answer growing). Only an edit Telegram definitely refuses
//!   (the message to edit was deleted, or can no longer be edited) is sent
//!   as a new message instead, so the rest of the answer still arrives. An
//!   edit whose outcome is unclear (an answer that cannot be parsed) is
//!   taken as applied: it most likely was, and a new message would show the
//!   text twice; any other failure is returned like a send's.
//! - **Drafts:** a [`Part::Draft`] shows a streamed answer as a draft in a
//!   private chat (`sendMessageDraft`), paced like a send but tried once (the
//!   next draft follows soon). A refusal of the method is remembered for the
//!   process ([`DraftSupport`], shared across restarts of this actor), after
//!   which drafts are refused here without a call, so the session's answers
//!   go straight to edited messages.
//! - **Send, then commit:** a delivery carries its turn's commit, which the
//!   send task makes right after sending. The task is detached from every
//!   actor, so a session (or its supervisor) dying after handing over an
//!   answer cannot leave that answer sent but uncommitted, to be answered
//!   twice; only a process crash inside that gap can.
//! - **State:** a queue per chat with something to send (removed when empty,
//!   so idle chats cost nothing), and whether that chat's head job is running.
//! - **Flood control:** every send first waits for Telegram's published
//!   limits (`telegram.per_chat_rate` with `per_chat_burst` per chat,
//!   `telegram.global_rate` overall; GCRA limiters created once by `app`).
//!   A 429 waits the `retry_after` Telegram asks for (up to
//!   `telegram.max_retry_after`) and sends the same message again in its
//!   place, up to `telegram.max_flood_waits` times: never dropped, never
//!   reordered. Network errors and timeouts are retried with backoff within
//!   `telegram.max_send_attempts`; a rejection (4xx) is returned at once; a
//!   403 "blocked" marks the chat inactive (logged, counted) and is not
//!   retried.
//! - **Failures:** a send error is returned to the caller, who logs it. If
//!   this actor dies, running send tasks still finish and answer; queued jobs
//!   are lost with the mailbox and their callers, seeing the reply port
//!   dropped, hand them to the restarted outbox.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use teloxide::types::MessageId;
use tokio::sync::Semaphore;

use super::persistence::{RecordChange, patiently};
use crate::actors::directory::{Address, Child, Directory, Unavailable};
use crate::config::TelegramConfig;
use crate::lease::LeaseClock;
use crate::retry::Backoff;
use crate::store::StoreError;
use crate::telegram::draft::DraftSupport;
use crate::telegram::inbound::{ChatId, SessionKey};
use crate::telegram::render::OutgoingText;
use crate::telegram::transport::Transport;
use crate::telegram::{SendPacing, TelegramError};

// API

/// Typed operations on the outbox; each owns what a caller does when the
/// outbox cannot be reached.
#[derive(Clone, Copy)]
pub struct OutboxHandle<'a> {
    directory: &'a Directory,
}

const ADDRESS: Address<OutboxMsg> = Address::new(Child::Outbox);

/// What a delivery ended with: the sent messages' ids, or the first error.
pub type Delivered = Result<Vec<MessageId>, TelegramError>;

impl Directory {
    /// The outbox: every Bot API send.
    pub fn outbox(&self) -> OutboxHandle<'_> {
        OutboxHandle { directory: self }
    }
}

impl OutboxHandle<'_> {
    /// Sends `parts` to the conversation `to` in order (committing `commit`
    /// to its record after them) and waits until they are sent or given up,
    /// and the turn committed. **Fails closed** with
    /// [`TelegramError::OutboxUnavailable`] when the outbox stays away; a
    /// delivery is resent to a restarted outbox.
    pub async fn deliver(
        &self,
        to: &SessionKey,
        parts: &[Part],
        commit: Option<&TurnCommit>,
    ) -> Delivered {
        self.directory
            .call(ADDRESS, |reply| OutboxMsg::Deliver {
                to: to.clone(),
                parts: parts.to_vec(),
                commit: commit.cloned(),
                reply,
            })
            .await
            .unwrap_or(Err(TelegramError::OutboxUnavailable))
    }

    /// Sends one of the bot's own texts to the conversation `to` without
    /// waiting for it. Best effort: not sent if the outbox is restarting
    /// right now.
    pub fn notify(&self, to: &SessionKey, text: &str) {
        // Nobody awaits the outcome; the outbox logs a failed send.
        let (reply, _not_awaited) = tokio::sync::oneshot::channel();
        self.directory.cast_now(
            ADDRESS,
            OutboxMsg::Deliver {
                to: to.clone(),
                parts: vec![Part::plain(text)],
                commit: None,
                reply: reply.into(),
            },
        );
    }

    /// Waits until every job of `to`'s chat queued before has finished
    /// (those of the chat's other topics too: they share a queue).
    pub async fn flush(&self, to: &SessionKey) -> Result<(), Unavailable> {
        let chat_id = to.chat();
        self.directory
            .call(ADDRESS, |reply| OutboxMsg::Flush { chat_id, reply })
            .await
    }

    /// Shows "typing…" in the conversation `to`. Best effort.
    pub fn show_typing(&self, to: &SessionKey) {
        self.directory
            .cast_now(ADDRESS, OutboxMsg::ShowTyping { to: to.clone() });
    }

    /// Makes the outbox panic (tests only); `false` if it is not running.
    #[cfg(feature = "chaos")]
    pub fn panic(&self) -> bool {
        self.directory.cast_now(ADDRESS, OutboxMsg::Panic)
    }
}

/// Messages of the outbox.
pub(crate) enum OutboxMsg {
    /// Panic at once: the chaos hook for tests (feature `chaos` only).
    #[cfg(feature = "chaos")]
    Panic,
    /// Send these texts to the conversation as separate messages (or edit
    /// messages sent before), in order.
    Deliver {
        /// The conversation: the chat, and the forum topic if it is one.
        to: SessionKey,
        /// Messages (text and entities), each within Telegram's size limit.
        parts: Vec<Part>,
        /// The turn to commit once the parts are sent (or sending gave up).
        /// Committed by the send task itself, so a session that dies after
        /// handing over its answer cannot leave it sent but uncommitted.
        commit: Option<TurnCommit>,
        /// The ids of the parts' messages once every part is sent (and the
        /// turn committed), or the first send error.
        reply: RpcReplyPort<Result<Vec<MessageId>, TelegramError>>,
    },
    /// Answer once every job of this chat queued before it has finished
    /// (a new session waits on this before loading the chat's record, so it
    /// sees the commits of its predecessor's deliveries).
    Flush {
        /// The chat.
        chat_id: ChatId,
        /// Answered when the chat's earlier jobs are done.
        reply: RpcReplyPort<()>,
    },
    /// Show "typing…" in the conversation, unless its chat is busy sending
    /// already.
    ShowTyping {
        /// The conversation.
        to: SessionKey,
    },
    /// Timer: drop the flood-control state of chats that went quiet.
    Reclaim,
    /// A send task of this chat ended; start the next job.
    JobFinished {
        /// The chat.
        chat_id: ChatId,
    },
}

/// What the outbox is built from; the send slots, the pacing and the
/// deliveries in progress are created once by `app` and outlive restarts of
/// this actor (a send task outlives the outbox that started it).
pub(crate) struct OutboxArgs {
    /// Where messages go: the Bot API or the console.
    pub(crate) transport: Transport,
    /// Telegram's flood limits.
    pub(crate) pacing: Arc<SendPacing>,
    /// Send slots (`telegram.max_concurrent_sends`).
    pub(crate) slots: Arc<Semaphore>,
    /// Deliveries in progress per chat.
    pub(crate) deliveries: Arc<Deliveries>,
    /// Whether `sendMessageDraft` was refused (for the process).
    pub(crate) drafts: Arc<DraftSupport>,
    /// This instance's lease on a shared store, checked before each send;
    /// `None` on a store only this instance uses.
    pub(crate) lease: Option<Arc<LeaseClock>>,
    /// `[telegram]`.
    pub(crate) config: Arc<TelegramConfig>,
    /// How often idle chat queues are reclaimed (`limits.sweep_interval`).
    pub(crate) reclaim_interval: std::time::Duration,
    /// To commit answered turns.
    pub(crate) directory: Directory,
}

/// The outbox actor.
pub(crate) struct Outbox;

/// One message of a delivery.
#[derive(Debug, Clone)]
pub enum Part {
    /// A new message.
    New(OutgoingText),
    /// A new message sent as a reply to `to` (in groups, the first message
    /// of an answer replies to the message it answers). Sent even when
    /// `to` was deleted meanwhile (`allow_sending_without_reply`).
    Reply {
        /// The message replied to.
        to: MessageId,
        /// The new message's text.
        text: OutgoingText,
    },
    /// New text for a message sent before (a streamed answer growing).
    Edit {
        /// The message to change.
        message_id: MessageId,
        /// Its new text.
        text: OutgoingText,
    },
    /// A streamed answer shown as an animated draft in a private chat
    /// (`sendMessageDraft`). A draft is no message: it has no id in the
    /// delivery's ids, and the finished answer is sent as [`Part::New`].
    /// Refused at once with [`TelegramError::Unsupported`] once the Bot
    /// API has refused drafts (see [`DraftSupport`]).
    Draft {
        /// Non-zero, the same for every draft of one answer (so its
        /// changes are animated).
        draft_id: u32,
        /// The text shown.
        text: OutgoingText,
    },
}

impl Part {
    /// A new message of plain text (the bot's own texts).
    pub fn plain(text: impl Into<String>) -> Self {
        Self::New(OutgoingText::plain(text))
    }

    /// `parts` with their first new message sent as a reply to `to`, when
    /// there is one; nothing changes for `None` or parts that only edit.
    pub fn reply_first(mut parts: Vec<Part>, to: Option<MessageId>) -> Vec<Part> {
        let Some(to) = to else {
            return parts;
        };
        if let Some(first) = parts
            .iter_mut()
            .find(|part| !matches!(part, Part::Edit { .. } | Part::Draft { .. }))
            && let Part::New(text) = first
        {
            *first = Part::Reply {
                to,
                text: std::mem::take(text),
            };
        }
        parts
    }
}

/// A turn to commit after its answer is sent.
#[derive(Debug, Clone)]
pub struct TurnCommit {
    /// The conversation whose record it writes, when that is not the one
    /// the answer goes to (a Business fan chat's suggestion is shown in
    /// the creator's control room); `None`: the delivery's own.
    pub key: Option<SessionKey>,
    /// The answered update.
    pub update_id: u32,
    /// Earlier updates answered by the same turn (merged messages).
    pub also_answered: Vec<u32>,
    /// The chat record after the turn.
    pub change: RecordChange,
}

enum Job {
    Deliver {
        to: SessionKey,
        parts: Vec<Part>,
        commit: Option<TurnCommit>,
        /// Marks the commit's own conversation busy from the moment it is
        /// queued, when it is not `to`: a session of that conversation
        /// starting meanwhile waits for the commit ([`Deliveries`]).
        committing: Option<Delivering>,
        reply: RpcReplyPort<Result<Vec<MessageId>, TelegramError>>,
    },
    Typing(SessionKey),
    Flush(RpcReplyPort<()>),
}

/// Per-chat queue; exists only while the chat has something to send.
struct ChatQueue {
    waiting: VecDeque<Job>,
}

/// The outbox's state.
pub(crate) struct OutboxState {
    reclaim_timer: tokio::task::JoinHandle<()>,
    transport: Transport,
    pacing: Arc<SendPacing>,
    directory: Directory,
    config: Arc<TelegramConfig>,
    /// Chats with a job running; the head of each queue waits for it.
    chats: HashMap<ChatId, ChatQueue>,
    slots: Arc<Semaphore>,
    /// Deliveries being sent, per chat, across restarts of this actor.
    deliveries: Arc<Deliveries>,
    /// Whether `sendMessageDraft` was refused, across restarts.
    drafts: Arc<DraftSupport>,
    /// This instance's lease on a shared store; `None` without one.
    lease: Option<Arc<LeaseClock>>,
}

/// The deliveries being sent (and committed), per chat. Created once by
/// `app` and shared by every incarnation of the outbox: a send task outlives
/// the outbox that started it, and a new session must not load its chat's
/// record before such a task has committed (it would answer again).
#[derive(Debug, Default)]
pub struct Deliveries {
    busy: std::sync::Mutex<HashMap<ChatId, usize>>,
    idle: tokio::sync::Notify,
}

/// One delivery in progress; dropping it ends it.
pub struct Delivering {
    deliveries: Arc<Deliveries>,
    chat_id: ChatId,
}

impl Deliveries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChatId, usize>> {
        // The map stays consistent even if a holder panicked (no code runs
        // between its reads and writes that could).
        crate::error::lock_unpoisoned(&self.busy)
    }

    /// Marks a delivery to `chat_id` as started.
    pub fn begin(self: &Arc<Self>, chat_id: ChatId) -> Delivering {
        *self.lock().entry(chat_id).or_default() += 1;
        Delivering {
            deliveries: Arc::clone(self),
            chat_id,
        }
    }

    /// Whether a delivery to `chat_id` is in progress.
    pub fn is_busy(&self, chat_id: ChatId) -> bool {
        self.lock().contains_key(&chat_id)
    }

    /// Waits until no delivery to `chat_id` is in progress.
    pub async fn until_idle(&self, chat_id: ChatId) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so an end in between wakes it.
            idle.as_mut().enable();
            if !self.is_busy(chat_id) {
                return;
            }
            idle.await;
        }
    }
}

impl Deliveries {
    /// Waits until no delivery to any chat is in progress (each has sent
    /// and committed).
    pub async fn until_all_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so an end in between wakes it.
            idle.as_mut().enable();
            if self.lock().is_empty() {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        let mut busy = self.deliveries.lock();
        if let Some(count) = busy.get_mut(&self.chat_id) {
            *count -= 1;
            if *count == 0 {
                busy.remove(&self.chat_id);
            }
        }
        drop(busy);
        self.deliveries.idle.notify_waiters();
    }
}

impl Actor for Outbox {
    type Msg = OutboxMsg;
    type State = OutboxState;
    type Arguments = OutboxArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<OutboxMsg>,
        args: OutboxArgs,
    ) -> Result<OutboxState, ActorProcessingErr> {
        let reclaim_timer = myself.send_interval(args.reclaim_interval, || OutboxMsg::Reclaim);
        Ok(OutboxState {
            reclaim_timer,
            transport: args.transport,
            pacing: args.pacing,
            directory: args.directory,
            config: args.config,
            chats: HashMap::new(),
            slots: args.slots,
            deliveries: args.deliveries,
            drafts: args.drafts,
            lease: args.lease,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<OutboxMsg>,
        state: &mut OutboxState,
    ) -> Result<(), ActorProcessingErr> {
        state.reclaim_timer.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<OutboxMsg>,
        message: OutboxMsg,
        state: &mut OutboxState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            #[cfg(feature = "chaos")]
            OutboxMsg::Panic => panic!("chaos: ordered to panic"),
            OutboxMsg::Deliver {
                to,
                parts,
                commit,
                reply,
            } => {
                let committing = commit
                    .as_ref()
                    .and_then(|commit| commit.key.as_ref())
                    .filter(|key| **key != to)
                    .map(|key| state.deliveries.begin(key.chat()));
                on_job(
                    &myself,
                    state,
                    to.chat(),
                    Job::Deliver {
                        to,
                        parts,
                        commit,
                        committing,
                        reply,
                    },
                );
            }
            OutboxMsg::Flush { chat_id, reply } => {
                if state.chats.contains_key(&chat_id) || state.deliveries.is_busy(chat_id) {
                    on_job(&myself, state, chat_id, Job::Flush(reply));
                } else {
                    let _ = reply.send(());
                }
            }
            OutboxMsg::ShowTyping { to } => {
                // A chat that is sending shows its message soon anyway.
                if !state.chats.contains_key(&to.chat()) {
                    on_job(&myself, state, to.chat(), Job::Typing(to));
                }
            }
            OutboxMsg::JobFinished { chat_id } => on_job_finished(&myself, state, chat_id),
            OutboxMsg::Reclaim => state.pacing.reclaim(),
        }
        Ok(())
    }
}

fn on_job(myself: &ActorRef<OutboxMsg>, state: &mut OutboxState, chat_id: ChatId, job: Job) {
    match state.chats.get_mut(&chat_id) {
        Some(queue) => queue.waiting.push_back(job),
        None => {
            state.chats.insert(
                chat_id,
                ChatQueue {
                    waiting: VecDeque::new(),
                },
            );
            run(myself, state, chat_id, job);
        }
    }
}

fn on_job_finished(myself: &ActorRef<OutboxMsg>, state: &mut OutboxState, chat_id: ChatId) {
    let next = state
        .chats
        .get_mut(&chat_id)
        .and_then(|queue| queue.waiting.pop_front());
    match next {
        Some(job) => run(myself, state, chat_id, job),
        None => {
            state.chats.remove(&chat_id);
        }
    }
}

/// Runs one job in its own task, then reports back so the chat's next job
/// can start.
fn run(myself: &ActorRef<OutboxMsg>, state: &OutboxState, chat_id: ChatId, job: Job) {
    let transport = state.transport.clone();
    let config = Arc::clone(&state.config);
    let slots = Arc::clone(&state.slots);
    let myself = myself.clone();
    let directory = state.directory.clone();
    let pacing = Arc::clone(&state.pacing);
    let deliveries = Arc::clone(&state.deliveries);
    let drafts = Arc::clone(&state.drafts);
    let lease = state.lease.clone();
    // Taken before the task starts, so a `Flush` handled after this job was
    // started waits for it, whichever outbox handles the `Flush`.
    let delivering = matches!(job, Job::Deliver { .. }).then(|| deliveries.begin(chat_id));
    tokio::spawn(async move {
        // The semaphore is never closed, so acquiring only waits.
        let _slot = slots.acquire_owned().await;
        match job {
            Job::Deliver {
                to,
                parts,
                commit,
                committing,
                reply,
            } => {
                let mut result = Ok(Vec::with_capacity(parts.len()));
                for part in &parts {
                    // A paused or cut-off instance may have lost its chats
                    // to another one: it sends nothing more.
                    if lease.as_ref().is_some_and(|lease| !lease.is_valid()) {
                        result = Err(TelegramError::LeaseLost);
                        break;
                    }
                    if let Part::Draft { draft_id, text } = part {
                        match send_draft(
                            &transport,
                            &config,
                            &pacing,
                            &drafts,
                            to.chat(),
                            *draft_id,
                            text,
                        )
                        .await
                        {
                            Ok(()) => continue,
                            Err(error) => {
                                result = Err(error);
                                break;
                            }
                        }
                    }
                    let mut sent = send_part(&transport, &config, &pacing, &to, part).await;
                    // A message that cannot be edited (deleted by the user,
                    // too old) must not cost the rest of the answer: its
                    // text goes as a new message instead. Only then: after
                    // any other failure the edit may have been applied.
                    let resend = match (&sent, part) {
                        (Err(error @ TelegramError::NotEditable(_)), Part::Edit { text, .. }) => {
                            tracing::warn!(chat_id = chat_id.0, class = error.class(), %error, "edit refused; sending a new message");
                            Some(Part::New(text.clone()))
                        }
                        _ => None,
                    };
                    if let Some(part) = resend {
                        sent = send_part(&transport, &config, &pacing, &to, &part).await;
                    }
                    match sent {
                        Ok(id) => {
                            if let Ok(ids) = &mut result {
                                ids.push(id);
                            }
                        }
                        Err(error) => {
                            result = Err(error);
                            break;
                        }
                    }
                }
                if let Err(TelegramError::Blocked) = result {
                    // Retrying cannot help until the user unblocks the bot
                    // (and writes again).
                    tracing::info!(
                        chat_id = chat_id.0,
                        "the user blocked the bot; chat inactive"
                    );
                    metrics::counter!("llmgram_chats_blocked_total").increment(1);
                }
                if let Some(commit) = commit {
                    let key = commit.key.clone().unwrap_or_else(|| to.clone());
                    if matches!(result, Err(TelegramError::LeaseLost)) {
                        // Not committed: the update stays unanswered for
                        // whichever instance owns the chat now.
                        fenced(&directory, &key, "send");
                    } else {
                        commit_turn(&directory, &key, commit).await;
                    }
                }
                drop(committing);
                drop(delivering);
                let _ = reply.send(result);
            }
            Job::Flush(reply) => {
                // Also the deliveries of a predecessor of this outbox, whose
                // queue died with it while their send tasks went on.
                deliveries.until_idle(chat_id).await;
                let _ = reply.send(());
            }
            Job::Typing(to) => {
                let typing = transport.typing(&to);
                match tokio::time::timeout(config.send_timeout, typing).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::debug!(%error, "typing indicator not shown"),
                    Err(_) => tracing::debug!("typing indicator timed out"),
                }
            }
        }
        // If the outbox was restarted meanwhile, its successor has no queue
        // for this chat and the message is simply dropped.
        let _ = myself.cast(OutboxMsg::JobFinished { chat_id });
    });
}

/// Commits an answered turn: the chat's record and the update marked
/// answered, atomically and durably. Committed even when sending failed, so
/// an update Telegram rejected is not replayed forever. A failure is logged:
/// the update then stays pending and is answered again after a restart (a
/// duplicate, never a loss).
async fn commit_turn(directory: &Directory, to: &SessionKey, commit: TurnCommit) {
    // The answer is out: a commit failing on a passing storage error (a
    // database restarting, the persistence actor restarting) is tried
    // again for a while, as giving up means answering the update again.
    let committed = patiently(to, "turn commit", || async {
        directory
            .persistence()
            .commit_turn(to, commit.update_id, &commit.also_answered, &commit.change)
            .await
    })
    .await;
    match committed {
        Ok(()) => {}
        Err(StoreError::Fenced) => fenced(directory, to, "commit"),
        Err(error) => {
            tracing::error!(chat_id = to.chat().0, thread_id = to.thread_number(), update_id = commit.update_id, class = error.class(), %error, "turn not stored");
        }
    }
}

/// Another instance owns the conversation now (its commit was fenced, or
/// this instance's lease was not valid to send, `at`): counted, never
/// retried; the session is stopped and the owner answers what is left.
fn fenced(directory: &Directory, key: &SessionKey, at: &'static str) {
    tracing::warn!(
        chat_id = key.chat().0,
        thread_id = key.thread_number(),
        at,
        "fenced: another instance owns this chat; session stopped"
    );
    metrics::counter!(crate::telemetry::families::CLUSTER_FENCED, "at" => at).increment(1);
    directory.session_sup().fenced(key);
}

/// Shows one draft (`sendMessageDraft`), paced like a message but tried
/// once: a draft is a passing view, and the next one (an
/// `telegram.edit_interval` later) carries newer text anyway, so the
/// session decides when to try again. Once the Bot API has refused drafts
/// ([`TelegramError::Unsupported`]), the refusal is remembered for the
/// process (logged once) and later drafts are refused here without a call.
async fn send_draft(
    transport: &Transport,
    config: &TelegramConfig,
    pacing: &SendPacing,
    drafts: &DraftSupport,
    chat_id: ChatId,
    draft_id: u32,
    text: &OutgoingText,
) -> Result<(), TelegramError> {
    if drafts.is_refused() {
        return Err(TelegramError::Unsupported("refused before".into()));
    }
    pacing.until_ready(chat_id).await;
    let call = transport.send_draft(chat_id, draft_id, text);
    let sent = tokio::time::timeout(config.send_timeout, call)
        .await
        .unwrap_or(Err(TelegramError::Timeout));
    match &sent {
        Ok(()) => {
            metrics::counter!(crate::telemetry::families::MESSAGE_DRAFTS).increment(1);
        }
        Err(error @ TelegramError::Unsupported(_)) => {
            if drafts.refuse() {
                tracing::warn!(
                    method = "sendMessageDraft",
                    class = error.class(),
                    %error,
                    "drafts refused; streamed answers are edited messages until restart"
                );
            }
        }
        Err(_) => {}
    }
    sent
}

/// Sends (or edits) one message, retrying what can succeed later; returns
/// the message's id.
async fn send_part(
    transport: &Transport,
    config: &TelegramConfig,
    pacing: &SendPacing,
    to: &SessionKey,
    part: &Part,
) -> Result<MessageId, TelegramError> {
    let chat_id = to.chat();
    let mut backoff = Backoff::new(config.retry_min, config.retry_max);
    let mut attempt = 1;
    let mut flood_waits = 0;
    loop {
        pacing.until_ready(chat_id).await;
        let call = async {
            match part {
                Part::New(text) => transport.send(to, text, None).await,
                Part::Reply { to: message, text } => transport.send(to, text, Some(*message)).await,
                Part::Edit { message_id, text } => transport
                    .edit(chat_id, *message_id, text)
                    .await
                    .map(|()| *message_id),
                // Sent by `send_draft`; never reaches here.
                Part::Draft { .. } => {
                    Err(TelegramError::Unsupported("a draft is no message".into()))
                }
            }
        };
        let error = match (tokio::time::timeout(config.send_timeout, call).await, part) {
            (Ok(Err(error @ TelegramError::InvalidAnswer(_))), Part::Edit { message_id, .. }) => {
                // Telegram answered, but not readably: the edit most likely
                // happened. It is never worth a second copy of the message;
                // the next edit (or the final delivery) brings the message
                // up to date if it did not.
                tracing::warn!(chat_id = chat_id.0, class = error.class(), %error, "edit outcome unclear; taken as applied");
                metrics::counter!("llmgram_message_edits_total").increment(1);
                return Ok(*message_id);
            }
            (Ok(Ok(id)), _) => {
                match part {
                    Part::New(_) | Part::Reply { .. } => {
                        metrics::counter!("llmgram_replies_sent_total").increment(1);
                    }
                    Part::Edit { .. } => {
                        metrics::counter!("llmgram_message_edits_total").increment(1);
                    }
                    Part::Draft { .. } => {}
                }
                return Ok(id);
            }
            (Ok(Err(error)), _) => error,
            (Err(_), _) => TelegramError::Timeout,
        };
        let wait = match error {
            // Telegram asked to wait: the same message goes again after the
            // wait, in its place; it is not a failed attempt.
            TelegramError::RetryAfter(wait)
                if wait <= config.max_retry_after && flood_waits < config.max_flood_waits =>
            {
                flood_waits += 1;
                metrics::counter!("llmgram_telegram_flood_waits_total").increment(1);
                wait
            }
            TelegramError::RetryAfter(_) => return Err(error),
            _ if !error.is_retryable() || attempt >= config.max_send_attempts => {
                return Err(error);
            }
            _ => {
                attempt += 1;
                backoff.next_delay()
            }
        };
        tracing::debug!(
            attempt,
            flood_waits,
            class = error.class(),
            ?wait,
            "send failed; retrying"
        );
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests;
