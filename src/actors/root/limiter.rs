//! Rate limiter: decides, as updates arrive, which ones may be answered now:
//! rate limits, banned users, and the allowlist.
//!
//! - **Supervised by:** root, permanent.
//! - **Messages:** [`LimiterMsg::Check`] (one verdict per update of a
//!   getUpdates batch, asked by the ingress before routing),
//!   [`LimiterMsg::AdmitNewChat`] (asked by a session for a chat the store has
//!   never seen), [`LimiterMsg::Sweep`] (timer).
//! - **State:** GCRA limiters from the `governor` crate: per user on all
//!   messages (`limits.user_messages_per_minute`), per user on messages that
//!   cost an LLM call (`limits.user_llm_per_minute`), global on LLM calls
//!   (`limits.global_llm_per_second`), global on new chats
//!   (`limits.new_chats_per_minute`, so a flood from many fresh accounts is
//!   blunted); and when each user was last told to slow down, so a limited
//!   user gets one notice per window, not one per message. The banned users
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

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::persistence::PersistenceMsg;
use crate::actors::{Child, Directory};
use crate::config::Config;
use crate::store::record::BotSetting;
use crate::store::{BotKey, StoreError};

/// Messages of the rate limiter.
pub enum LimiterMsg {
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
    /// May a chat the store has never seen start now?
    AdmitNewChat {
        /// The verdict.
        reply: RpcReplyPort<Verdict>,
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

/// Arguments of the limiter.
pub struct LimiterArgs {
    /// The whole configuration (limits, access, admins).
    pub config: Arc<Config>,
    /// To load and store the bans.
    pub directory: Directory,
}

/// The rate limiter actor.
pub struct Limiter;

/// The limiter's state.
pub struct LimiterState {
    config: Arc<Config>,
    directory: Directory,
    bans: HashSet<i64>,
    per_user: DefaultKeyedRateLimiter<i64>,
    per_user_llm: DefaultKeyedRateLimiter<i64>,
    global_llm: DefaultDirectRateLimiter,
    new_chats: DefaultDirectRateLimiter,
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
        let bans = match args
            .directory
            .call(Child::Persistence, |reply| PersistenceMsg::LoadSetting {
                key: BotKey::Bans,
                reply,
            })
            .await
            .map_err(|_| StoreError::Unavailable)??
        {
            Some(BotSetting::Bans(users)) => users.into_iter().collect(),
            _ => HashSet::new(),
        };
        let config = &args.config.limits;
        let global = Quota::per_second(
            NonZeroU32::new(config.global_llm_per_second).unwrap_or(NonZeroU32::MIN),
        );
        Ok(LimiterState {
            bans,
            config: Arc::clone(&args.config),
            directory: args.directory,
            per_user: RateLimiter::keyed(per_minute(config.user_messages_per_minute)),
            per_user_llm: RateLimiter::keyed(per_minute(config.user_llm_per_minute)),
            global_llm: RateLimiter::direct(global),
            new_chats: RateLimiter::direct(per_minute(config.new_chats_per_minute)),
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
                let verdict = match state.new_chats.check() {
                    Ok(()) => Verdict::Allowed,
                    Err(not_until) => Verdict::Limited {
                        retry_in: not_until.wait_time_from(state.new_chats.clock().now()),
                        notify: true,
                    },
                };
                let _ = reply.send(verdict);
            }
            LimiterMsg::Ban { user, reply } => {
                state.bans.insert(user);
                let _ = reply.send(save_bans(state).await);
            }
            LimiterMsg::Unban { user, reply } => {
                state.bans.remove(&user);
                state.notified_until.remove(&user);
                let _ = reply.send(save_bans(state).await);
            }
            LimiterMsg::Sweep => on_sweep(state),
        }
        Ok(())
    }
}

/// Stores the ban list; the persistence actor answers once it is durable.
async fn save_bans(state: &LimiterState) -> Result<(), StoreError> {
    let mut users: Vec<i64> = state.bans.iter().copied().collect();
    users.sort_unstable();
    state
        .directory
        .call(Child::Persistence, |reply| PersistenceMsg::SaveSetting {
            key: BotKey::Bans,
            setting: BotSetting::Bans(users.clone()),
            reply,
        })
        .await
        .unwrap_or(Err(StoreError::Unavailable))
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
    if wait.is_none() && request.cost == Cost::Llm {
        wait = state
            .per_user_llm
            .check_key(&user)
            .err()
            .or_else(|| state.global_llm.check().err())
            .map(|n| n.wait_time_from(now));
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
            global_llm: RateLimiter::direct(per_minute(1000)),
            new_chats: RateLimiter::direct(per_minute(limits.new_chats_per_minute)),
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
}
