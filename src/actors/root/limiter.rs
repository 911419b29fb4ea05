//! Rate limiter: decides, as updates arrive, which ones may be answered now.
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
//!   user gets one notice per window, not one per message.
//! - **Memory:** `Sweep` (every `limits.sweep_interval`) drops the state of
//!   keys that have fully recovered, so idle users cost nothing.
//! - **Failures:** restarted by root with fresh limiters (everyone gets a
//!   full allowance once: harmless). While it is away, the ingress lets
//!   updates through rather than leave users unanswered.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::LimitsConfig;

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
}

/// The rate limiter actor.
pub struct Limiter;

/// The limiter's state.
pub struct LimiterState {
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
    type Arguments = LimitsConfig;

    async fn pre_start(
        &self,
        myself: ActorRef<LimiterMsg>,
        config: LimitsConfig,
    ) -> Result<LimiterState, ActorProcessingErr> {
        let global = Quota::per_second(
            NonZeroU32::new(config.global_llm_per_second).unwrap_or(NonZeroU32::MIN),
        );
        Ok(LimiterState {
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
                        retry_in: not_until.wait_time_from(DefaultClock::default().now()),
                        notify: true,
                    },
                };
                let _ = reply.send(verdict);
            }
            LimiterMsg::Sweep => on_sweep(state),
        }
        Ok(())
    }
}

fn on_check(state: &mut LimiterState, request: LimitRequest) -> Verdict {
    let now = DefaultClock::default().now();
    let user = request.user;
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
    let at = Instant::now();
    let notify = state
        .notified_until
        .get(&user)
        .is_none_or(|until| at >= *until);
    if notify {
        state.notified_until.insert(user, at + retry_in);
    }
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

    fn config() -> LimitsConfig {
        LimitsConfig {
            user_messages_per_minute: 5,
            user_llm_per_minute: 3,
            global_llm_per_second: 100,
            new_chats_per_minute: 2,
            sweep_interval: Duration::from_secs(60),
        }
    }

    async fn limiter() -> ActorRef<LimiterMsg> {
        Actor::spawn(None, Limiter, config()).await.unwrap().0
    }

    async fn check(limiter: &ActorRef<LimiterMsg>, requests: Vec<LimitRequest>) -> Vec<Verdict> {
        limiter
            .call(|reply| LimiterMsg::Check { requests, reply }, None)
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn llm_messages_have_the_stricter_limit_and_one_notice() {
        let limiter = limiter().await;
        let llm = LimitRequest {
            user: 1,
            cost: Cost::Llm,
        };
        let verdicts = check(&limiter, vec![llm; 5]).await;
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
        let verdicts = check(&limiter, vec![free]).await;
        assert!(
            matches!(verdicts[0], Verdict::Limited { .. }),
            "5 messages used"
        );
        // Another user is unaffected.
        let other = LimitRequest {
            user: 2,
            cost: Cost::Llm,
        };
        assert_eq!(check(&limiter, vec![other]).await, vec![Verdict::Allowed]);
    }

    #[tokio::test]
    async fn new_chats_are_admitted_at_their_own_rate() {
        let limiter = limiter().await;
        let admit = || async {
            limiter
                .call(|reply| LimiterMsg::AdmitNewChat { reply }, None)
                .await
                .unwrap()
                .unwrap()
        };
        assert_eq!(admit().await, Verdict::Allowed);
        assert_eq!(admit().await, Verdict::Allowed);
        assert!(matches!(admit().await, Verdict::Limited { .. }));
    }
}
