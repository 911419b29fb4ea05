//! Rate limiter: decides, as updates arrive, which ones may be answered now:
//! rate limits, banned users, and the allowlist.
//!
//! - **Supervised by:** root, permanent.
//! - **Messages:** [`LimiterMsg::Check`] (one verdict per update of a
//!   getUpdates batch, asked by the ingress before routing),
//!   [`LimiterMsg::ReserveLlmCall`] (asked by a session right before each LLM
//!   call), [`LimiterMsg::AdmitNewChat`] (asked by a session for a chat the
//!   store has never seen), [`LimiterMsg::Sweep`] (timer).
//! - **State:** GCRA limiters from the `governor` crate per user on all
//!   messages (`limits.user_messages_per_minute`) and per user on messages
//!   that cost an LLM call (`limits.user_llm_per_minute`): these *refuse*,
//!   with one notice per window — they are what stops one user's flood. And
//!   two [`Pacer`]s for the global limits, LLM calls
//!   (`limits.global_llm_per_second`) and new chats
//!   (`limits.new_chats_per_minute`, so a flood from many fresh accounts is
//!   blunted): these *delay*. A user who did nothing wrong must not lose a
//!   message to someone else's load, so a request over a global limit is
//!   given the moment its slot frees ([`Slot::After`]) and waits for it in
//!   its own session (cancellable, "typing…" shown, never in this mailbox);
//!   only a wait past `limits.max_queue_wait`, or more than
//!   `limits.max_queued` requests already waiting, gets [`Slot::Full`] (the
//!   "busy" reply). Also kept: when each user was last told to slow down, so
//!   a limited user gets one notice per window, not one per message. The banned users
//!   (persisted under the store's `bans` setting, loaded at start; admins
//!   change them with [`LimiterMsg::Ban`] / [`LimiterMsg::Unban`]) and, with
//!   `access.allowlist_only`, everyone not in `access.allowed_ids` get one
//!   notice per `access.notice_interval` and no answers. Admins are never
//!   banned or shut out.
//! - **Memory:** `Sweep` (every `limits.sweep_interval`) drops the state of
//!   keys that have fully recovered, so idle users cost nothing.
//! - **Failures:** restarted by root with fresh limiters (everyone gets a
//!   full allowance once: harmless) and the bans reloaded from the store.
//!   While it is away, the ingress lets updates through rather than leave
//!   users unanswered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::actors::directory::Address;
use crate::actors::{Child, Directory};
use crate::config::Config;
use crate::store::record::BotSetting;
use crate::store::{BotKey, StoreError};

// API

/// Typed operations on the rate limiter; each owns what a caller does when
/// the limiter cannot be reached.
#[derive(Clone, Copy)]
pub struct LimiterHandle<'a> {
    directory: &'a Directory,
}

const ADDRESS: Address<LimiterMsg> = Address::new(Child::Limiter);

impl Directory {
    /// The rate limiter.
    pub fn limiter(&self) -> LimiterHandle<'_> {
        LimiterHandle { directory: self }
    }
}

impl LimiterHandle<'_> {
    /// One verdict per arriving update, in order. **Fails open:** a limiter
    /// that stays away lets every update through (logged), rather than leave
    /// users unanswered.
    pub async fn check(&self, requests: Vec<LimitRequest>) -> Vec<Verdict> {
        let verdicts = self
            .directory
            .call(ADDRESS, |reply| LimiterMsg::Check {
                requests: requests.clone(),
                reply,
            })
            .await;
        verdicts.unwrap_or_else(|error| {
            tracing::warn!(%error, "rate limiter unavailable; updates not limited");
            vec![Verdict::Allowed; requests.len()]
        })
    }

    /// Reserves the next slot under `limits.global_llm_per_second`.
    /// **Fails open:** a limiter that is away gives the slot now.
    pub async fn reserve_llm_call(&self) -> Slot {
        self.directory
            .call(ADDRESS, |reply| LimiterMsg::ReserveLlmCall { reply })
            .await
            .unwrap_or(Slot::After(Duration::ZERO))
    }

    /// Reserves the slot of a chat the store has never seen
    /// (`limits.new_chats_per_minute`). **Fails open** like
    /// [`reserve_llm_call`](Self::reserve_llm_call).
    pub async fn admit_new_chat(&self) -> Slot {
        self.directory
            .call(ADDRESS, |reply| LimiterMsg::AdmitNewChat { reply })
            .await
            .unwrap_or(Slot::After(Duration::ZERO))
    }

    /// Bans (`banned`) or lets back (`!banned`) a user; `Ok` once the change
    /// is durable. **Fails closed:** a limiter that cannot be reached is
    /// [`StoreError::Unavailable`], and the admin is told it failed.
    pub async fn set_banned(&self, user: i64, banned: bool) -> Result<(), StoreError> {
        self.directory
            .call(ADDRESS, |reply| {
                if banned {
                    LimiterMsg::Ban { user, reply }
                } else {
                    LimiterMsg::Unban { user, reply }
                }
            })
            .await
            .unwrap_or(Err(StoreError::Unavailable))
    }

    /// The ban list changed in a store shared with other instances: read it
    /// again. Best effort (the next change or restart reads it anyway).
    pub fn reload_bans(&self) {
        self.directory.cast_now(ADDRESS, LimiterMsg::ReloadBans);
    }

    /// Makes the limiter panic (tests only); `false` if it is not running.
    #[cfg(feature = "chaos")]
    pub fn panic(&self) -> bool {
        self.directory.cast_now(ADDRESS, LimiterMsg::Panic)
    }
}

/// Messages of the rate limiter.
pub(crate) enum LimiterMsg {
    /// Panic at once: the chaos hook for tests (feature `chaos` only).
    #[cfg(feature = "chaos")]
    Panic,
    /// Verdicts for a batch of arriving updates, in order.
    Check {
        /// Who sent each update and what it costs.
        requests: Vec<LimitRequest>,
        /// One verdict per request.
        reply: RpcReplyPort<Vec<Verdict>>,
    },
    /// When may a chat the store has never seen start? Reserves the slot.
    AdmitNewChat {
        /// The slot, or that the queue is full.
        reply: RpcReplyPort<Slot>,
    },
    /// When may the next LLM call go (`limits.global_llm_per_second`)?
    /// Reserves the slot.
    ReserveLlmCall {
        /// The slot, or that the queue is full.
        reply: RpcReplyPort<Slot>,
    },
    /// Ban a user (admin command); answered once the ban is stored.
    Ban {
        /// The user.
        user: i64,
        /// `Ok` once durable.
        reply: RpcReplyPort<Result<(), StoreError>>,
    },
    /// Lift a ban (admin command); answered once stored.
    Unban {
        /// The user.
        user: i64,
        /// `Ok` once durable.
        reply: RpcReplyPort<Result<(), StoreError>>,
    },
    /// Another instance changed the ban list (shared store): read it again.
    ReloadBans,
    /// Timer: reclaim the state of idle keys.
    Sweep,
}

/// One arriving update, as the limiter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitRequest {
    /// The sender (the chat id when Telegram names no sender).
    pub user: i64,
    /// What answering it costs.
    pub cost: Cost,
}

/// What answering an update costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// A reply from the bot's own texts.
    Free,
    /// An LLM call.
    Llm,
    /// A media message: this many LLM calls (`media.*_cost`), since a
    /// vision request or a transcription costs the provider more.
    Calls(u32),
}

impl Cost {
    /// LLM calls it counts as.
    fn calls(self) -> u32 {
        match self {
            Self::Free => 0,
            Self::Llm => 1,
            Self::Calls(n) => n,
        }
    }
}

/// The limiter's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answer it.
    Allowed,
    /// Do not answer it now.
    Limited {
        /// When the sender may try again.
        retry_in: Duration,
        /// Whether to tell the sender (the first limited update of a window).
        notify: bool,
    },
    /// The sender is banned.
    Banned {
        /// Whether to tell them (once per `access.notice_interval`).
        notify: bool,
    },
    /// Allowlist mode, and the sender is not on the list.
    NotAllowed {
        /// Whether to tell them (once per `access.notice_interval`).
        notify: bool,
    },
}

/// A reserved place under a global limit ([`LimiterMsg::ReserveLlmCall`],
/// [`LimiterMsg::AdmitNewChat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Go once this has passed (zero: at once). The slot is taken: a caller
    /// that gives up meanwhile (`/cancel`) leaves it unused.
    After(Duration),
    /// More than `limits.max_queued` requests are waiting, or the wait would
    /// pass `limits.max_queue_wait`: answer "busy". Nothing was reserved.
    Full {
        /// Roughly when the wait would be short enough again.
        retry_in: Duration,
    },
}

/// A global limit that queues: GCRA (the same algorithm as `governor`'s,
/// the same burst: a full allowance of `rate` at once, then evenly) with
/// *reservations*, which `governor` does not offer: a request over the
/// limit is given the instant its slot frees instead of a refusal, and the
/// limit's clock moves past it, so later requests queue behind it in
/// arrival order. Bounded by a longest wait and a most waiting.
#[derive(Debug)]
pub struct Pacer {
    /// Time between two slots at the steady rate (GCRA's emission interval).
    interval: Duration,
    /// How far ahead of the steady rate a burst may run (GCRA's tolerance).
    tolerance: Duration,
    /// The theoretical arrival time of the next request (GCRA's TAT).
    next: Option<Instant>,
    max_wait: Duration,
    max_queued: usize,
    /// The start times of the reservations still ahead, in order (they
    /// never decrease).
    waiting: VecDeque<Instant>,
}

impl Pacer {
    /// `count` per `period`, the burst the same; waits of at most
    /// `max_wait`, at most `max_queued` waiting at once.
    pub fn new(count: u32, period: Duration, max_wait: Duration, max_queued: usize) -> Self {
        let count = count.max(1);
        let interval = period / count;
        Self {
            interval,
            tolerance: interval * (count - 1),
            next: None,
            max_wait,
            max_queued,
            waiting: VecDeque::new(),
        }
    }

    /// Reserves the next slot at `now`, or says the queue is full.
    pub fn reserve(&mut self, now: Instant) -> Slot {
        while self.waiting.front().is_some_and(|start| *start <= now) {
            self.waiting.pop_front();
        }
        let tat = self.next.map_or(now, |next| next.max(now));
        let start = tat
            .checked_sub(self.tolerance)
            .map_or(now, |start| start.max(now));
        let wait = start - now;
        if !wait.is_zero() {
            if wait > self.max_wait || self.waiting.len() >= self.max_queued {
                return Slot::Full {
                    retry_in: wait.saturating_sub(self.max_wait).max(self.interval),
                };
            }
            self.waiting.push_back(start);
        }
        self.next = Some(tat + self.interval);
        Slot::After(wait)
    }

    /// Requests waiting for their slot at `now`.
    pub fn waiting(&mut self, now: Instant) -> usize {
        while self.waiting.front().is_some_and(|start| *start <= now) {
            self.waiting.pop_front();
        }
        self.waiting.len()
    }

    /// Frees memory when idle.
    fn shrink(&mut self) {
        self.waiting.shrink_to_fit();
    }
}

/// Arguments of the limiter.
pub struct LimiterArgs {
    /// The whole configuration (limits, access, admins).
    pub config: Arc<Config>,
    /// To load and store the bans.
    pub directory: Directory,
}

/// The rate limiter actor.
pub(crate) struct Limiter;

/// The limiter's state.
pub(crate) struct LimiterState {
    config: Arc<Config>,
    directory: Directory,
    bans: HashSet<i64>,
    per_user: DefaultKeyedRateLimiter<i64>,
    per_user_llm: DefaultKeyedRateLimiter<i64>,
    /// `limits.user_llm_per_minute`: the most calls one message may count as.
    llm_burst: NonZeroU32,
    global_llm: Pacer,
    new_chats: Pacer,
    /// Until when each limited user has been told to wait.
    notified_until: HashMap<i64, Instant>,
    sweep_timer: JoinHandle<()>,
}

fn per_minute(count: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN))
}

impl Actor for Limiter {
    type Msg = LimiterMsg;
    type State = LimiterState;
    type Arguments = LimiterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<LimiterMsg>,
        args: LimiterArgs,
    ) -> Result<LimiterState, ActorProcessingErr> {
        let bans = stored_bans(&args.directory).await?;
        let config = &args.config.limits;
        let (global_llm, new_chats) = pacers(config);
        Ok(LimiterState {
            bans,
            config: Arc::clone(&args.config),
            directory: args.directory,
            per_user: RateLimiter::keyed(per_minute(config.user_messages_per_minute)),
            per_user_llm: RateLimiter::keyed(per_minute(config.user_llm_per_minute)),
            llm_burst: NonZeroU32::new(config.user_llm_per_minute).unwrap_or(NonZeroU32::MIN),
            global_llm,
            new_chats,
            notified_until: HashMap::new(),
            sweep_timer: myself.send_interval(config.sweep_interval, || LimiterMsg::Sweep),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LimiterMsg>,
        state: &mut LimiterState,
    ) -> Result<(), ActorProcessingErr> {
        state.sweep_timer.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<LimiterMsg>,
        message: LimiterMsg,
        state: &mut LimiterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            #[cfg(feature = "chaos")]
            LimiterMsg::Panic => panic!("chaos: ordered to panic"),
            LimiterMsg::Check { requests, reply } => {
                let verdicts = requests.iter().map(|r| on_check(state, *r)).collect();
                let _ = reply.send(verdicts);
            }
            LimiterMsg::AdmitNewChat { reply } => {
                let slot = reserve(&mut state.new_chats, "new_chats");
                let _ = reply.send(slot);
            }
            LimiterMsg::ReserveLlmCall { reply } => {
                let slot = reserve(&mut state.global_llm, "llm_calls");
                let _ = reply.send(slot);
            }
            LimiterMsg::Ban { user, reply } => {
                let saved = match refresh_shared_bans(state).await {
                    Ok(()) => {
                        state.bans.insert(user);
                        save_bans(state).await
                    }
                    Err(error) => Err(error),
                };
                let _ = reply.send(saved);
            }
            LimiterMsg::Unban { user, reply } => {
                let saved = match refresh_shared_bans(state).await {
                    Ok(()) => {
                        state.bans.remove(&user);
                        state.notified_until.remove(&user);
                        save_bans(state).await
                    }
                    Err(error) => Err(error),
                };
                let _ = reply.send(saved);
            }
            LimiterMsg::ReloadBans => match stored_bans(&state.directory).await {
                Ok(bans) => state.bans = bans,
                Err(error) => {
                    tracing::warn!(class = error.class(), %error, "bans not reloaded; kept as they were");
                }
            },
            LimiterMsg::Sweep => on_sweep(state),
        }
        Ok(())
    }
}

/// The global limits' pacers, from `[limits]`.
fn pacers(config: &crate::config::LimitsConfig) -> (Pacer, Pacer) {
    const SECOND: Duration = Duration::from_secs(1);
    const MINUTE: Duration = Duration::from_secs(60);
    let pacer = |count, period| Pacer::new(count, period, config.max_queue_wait, config.max_queued);
    (
        pacer(config.global_llm_per_second, SECOND),
        pacer(config.new_chats_per_minute, MINUTE),
    )
}

/// Reserves a slot of `pacer`, counting waits and refusals under `limit`.
fn reserve(pacer: &mut Pacer, limit: &'static str) -> Slot {
    let now = Instant::now();
    let slot = pacer.reserve(now);
    match slot {
        Slot::After(wait) if !wait.is_zero() => {
            metrics::counter!(crate::telemetry::families::LIMIT_QUEUED, "limit" => limit)
                .increment(1);
            metrics::histogram!(crate::telemetry::families::LIMIT_WAIT, "limit" => limit)
                .record(wait.as_secs_f64());
        }
        Slot::After(_) => {}
        Slot::Full { retry_in } => {
            tracing::warn!(limit, ?retry_in, "global limit queue full; request refused");
            metrics::counter!(crate::telemetry::families::LIMIT_REFUSED, "limit" => limit)
                .increment(1);
        }
    }
    metrics::gauge!(crate::telemetry::families::LIMIT_WAITING, "limit" => limit)
        .set(pacer.waiting(now) as f64);
    slot
}

/// The ban list as stored.
async fn stored_bans(directory: &Directory) -> Result<HashSet<i64>, StoreError> {
    Ok(
        match directory.persistence().load_setting(BotKey::Bans).await? {
            Some(BotSetting::Bans(users)) => users.into_iter().collect(),
            _ => HashSet::new(),
        },
    )
}

/// With a store shared by several instances, another one may have changed
/// the list since it was read: read it again before changing it, so its
/// change is not written over.
async fn refresh_shared_bans(state: &mut LimiterState) -> Result<(), StoreError> {
    if state.config.storage.backend == crate::config::StorageBackend::Postgres {
        state.bans = stored_bans(&state.directory).await?;
    }
    Ok(())
}

/// Stores the ban list; the persistence actor answers once it is durable.
async fn save_bans(state: &LimiterState) -> Result<(), StoreError> {
    let mut users: Vec<i64> = state.bans.iter().copied().collect();
    users.sort_unstable();
    state
        .directory
        .persistence()
        .save_setting(BotKey::Bans, &BotSetting::Bans(users))
        .await
}

/// Whether to tell `user` now, remembering it for `window`.
fn notify_once(state: &mut LimiterState, user: i64, window: Duration) -> bool {
    let at = Instant::now();
    let notify = state
        .notified_until
        .get(&user)
        .is_none_or(|until| at >= *until);
    if notify {
        state.notified_until.insert(user, at + window);
    }
    notify
}

fn on_check(state: &mut LimiterState, request: LimitRequest) -> Verdict {
    // The limiter's own clock: creating a clock costs several CPUID
    // instructions, which trap to the hypervisor on a VM (15–18 µs each,
    // measured); reading an existing one costs nanoseconds.
    let now = state.per_user.clock().now();
    let user = request.user;
    let admin = state.config.admin_ids.contains(&user);
    let access = &state.config.access;
    if !admin && state.bans.contains(&user) {
        let notify = notify_once(state, user, state.config.access.notice_interval);
        return Verdict::Banned { notify };
    }
    if !admin && access.allowlist_only && !access.allowed_ids.contains(&user) {
        let notify = notify_once(state, user, access.notice_interval);
        return Verdict::NotAllowed { notify };
    }
    let mut wait = state
        .per_user
        .check_key(&user)
        .err()
        .map(|n| n.wait_time_from(now));
    if let Some(calls) = NonZeroU32::new(request.cost.calls()).filter(|_| wait.is_none()) {
        // The global LLM limit is not checked here: it delays the call
        // itself (`ReserveLlmCall`) rather than refusing the message. A
        // cost above the whole allowance counts as the whole allowance, so
        // an expensive message is never refused forever.
        let calls = calls.min(state.llm_burst);
        wait = match state.per_user_llm.check_key_n(&user, calls) {
            Ok(Ok(())) => None,
            Ok(Err(not_until)) => Some(not_until.wait_time_from(now)),
            Err(_insufficient) => None,
        };
    }
    let Some(retry_in) = wait else {
        return Verdict::Allowed;
    };
    let notify = notify_once(state, user, retry_in);
    metrics::counter!("llmgram_rate_limited_total").increment(1);
    Verdict::Limited { retry_in, notify }
}

fn on_sweep(state: &mut LimiterState) {
    state.per_user.retain_recent();
    state.per_user.shrink_to_fit();
    state.per_user_llm.retain_recent();
    state.per_user_llm.shrink_to_fit();
    let now = Instant::now();
    state.notified_until.retain(|_, until| *until > now);
    state.notified_until.shrink_to_fit();
    state.global_llm.waiting(now);
    state.global_llm.shrink();
    state.new_chats.waiting(now);
    state.new_chats.shrink();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limiter without a persistence actor: loading the bans fails, so
    /// these tests spawn its state's logic through `on_check` directly.
    fn state() -> LimiterState {
        let config = Config::from_defaults_with(
            "limits.user_messages_per_minute = 5\n\
             limits.user_llm_per_minute = 3\n\
             limits.new_chats_per_minute = 2\n\
             admin_ids = [99]\n",
        )
        .unwrap();
        let limits = &config.limits;
        LimiterState {
            directory: Directory::new("limiter-test", &config.supervision),
            bans: HashSet::from([66, 99]),
            per_user: RateLimiter::keyed(per_minute(limits.user_messages_per_minute)),
            per_user_llm: RateLimiter::keyed(per_minute(limits.user_llm_per_minute)),
            llm_burst: NonZeroU32::new(limits.user_llm_per_minute).unwrap_or(NonZeroU32::MIN),
            global_llm: pacers(limits).0,
            new_chats: pacers(limits).1,
            notified_until: HashMap::new(),
            sweep_timer: tokio::spawn(async {}),
            config: Arc::new(config),
        }
    }

    fn check(state: &mut LimiterState, requests: &[LimitRequest]) -> Vec<Verdict> {
        requests.iter().map(|r| on_check(state, *r)).collect()
    }

    #[tokio::test]
    async fn llm_messages_have_the_stricter_limit_and_one_notice() {
        let mut state = state();
        let llm = LimitRequest {
            user: 1,
            cost: Cost::Llm,
        };
        let verdicts = check(&mut state, &[llm; 5]);
        assert_eq!(&verdicts[..3], &[Verdict::Allowed; 3]);
        assert!(matches!(verdicts[3], Verdict::Limited { notify: true, .. }));
        assert!(matches!(
            verdicts[4],
            Verdict::Limited { notify: false, .. }
        ));
        // Free messages still pass until the general limit.
        let free = LimitRequest {
            user: 1,
            cost: Cost::Free,
        };
        let verdicts = check(&mut state, &[free]);
        assert!(
            matches!(verdicts[0], Verdict::Limited { .. }),
            "5 messages used"
        );
        // Another user is unaffected.
        let other = LimitRequest {
            user: 2,
            cost: Cost::Llm,
        };
        assert_eq!(check(&mut state, &[other]), vec![Verdict::Allowed]);
    }

    #[tokio::test]
    async fn banned_users_get_one_notice_and_admins_are_never_banned() {
        let mut state = state();
        let banned = LimitRequest {
            user: 66,
            cost: Cost::Free,
        };
        assert_eq!(
            check(&mut state, &[banned, banned]),
            [
                Verdict::Banned { notify: true },
                Verdict::Banned { notify: false }
            ]
        );
        let admin = LimitRequest {
            user: 99,
            cost: Cost::Free,
        };
        assert_eq!(check(&mut state, &[admin]), [Verdict::Allowed]);
    }

    #[tokio::test]
    async fn allowlist_mode_shuts_out_strangers_but_not_admins() {
        let mut state = state();
        let mut config = (*state.config).clone();
        config.access.allowlist_only = true;
        config.access.allowed_ids = vec![5];
        state.config = Arc::new(config);
        let verdicts = check(
            &mut state,
            &[
                LimitRequest {
                    user: 5,
                    cost: Cost::Free,
                },
                LimitRequest {
                    user: 6,
                    cost: Cost::Free,
                },
                LimitRequest {
                    user: 99,
                    cost: Cost::Free,
                },
            ],
        );
        assert_eq!(
            verdicts,
            [
                Verdict::Allowed,
                Verdict::NotAllowed { notify: true },
                Verdict::Allowed
            ]
        );
    }

    #[test]
    fn a_pacer_lets_a_burst_through_then_queues_in_order_up_to_its_bounds() {
        let now = Instant::now();
        // 20 a second, as limits.global_llm_per_second; waits up to 1 s.
        let mut pacer = Pacer::new(20, Duration::from_secs(1), Duration::from_secs(1), 100);
        for _ in 0..20 {
            assert_eq!(pacer.reserve(now), Slot::After(Duration::ZERO), "the burst");
        }
        // Then one slot every 50 ms, in arrival order.
        for n in 1..=20u32 {
            assert_eq!(
                pacer.reserve(now),
                Slot::After(Duration::from_millis(50) * n)
            );
        }
        assert_eq!(pacer.waiting(now), 20);
        // The next would wait 1.05 s > 1 s: refused, nothing reserved.
        assert!(matches!(pacer.reserve(now), Slot::Full { .. }));
        assert_eq!(pacer.waiting(now), 20);
        // Half a second later ten slots have been used: the wait is shorter.
        let later = now + Duration::from_millis(500);
        assert_eq!(pacer.waiting(later), 10);
        assert_eq!(
            pacer.reserve(later),
            Slot::After(Duration::from_millis(550))
        );
        // Idle long enough, a full burst is available again.
        let idle = now + Duration::from_secs(10);
        assert_eq!(pacer.reserve(idle), Slot::After(Duration::ZERO));
        assert_eq!(pacer.waiting(idle), 0);
    }

    #[test]
    fn a_pacer_refuses_past_its_most_waiting() {
        let now = Instant::now();
        let mut pacer = Pacer::new(1, Duration::from_secs(1), Duration::from_secs(60), 2);
        assert_eq!(pacer.reserve(now), Slot::After(Duration::ZERO));
        assert_eq!(pacer.reserve(now), Slot::After(Duration::from_secs(1)));
        assert_eq!(pacer.reserve(now), Slot::After(Duration::from_secs(2)));
        assert!(
            matches!(pacer.reserve(now), Slot::Full { .. }),
            "two wait already"
        );
        // Once one has gone, another may queue.
        let later = now + Duration::from_secs(1);
        assert_eq!(pacer.reserve(later), Slot::After(Duration::from_secs(2)));
    }
}
