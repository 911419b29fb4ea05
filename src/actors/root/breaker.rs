//! Circuit breaker: one per LLM provider. Decides whether a call may go to
//! that provider, from the outcomes of its recent calls.
//!
//! - **Supervised by:** root, permanent; one child per provider
//!   (`<instance>.breaker.<index>`, index in the order of the provider list).
//! - **Messages:** [`BreakerMsg::Acquire`] (may a call go, now or before a
//!   moment?), [`BreakerMsg::Record`] (how a call ended),
//!   [`BreakerMsg::Status`], [`BreakerMsg::Wake`] (its own timer).
//! - **State:** [`Circuit`]: closed with a window of the last
//!   `breaker.window` outcomes; open until a moment; or half-open with the
//!   probes in flight. And the requests waiting for a probe, with their reply
//!   ports: the mailbox never waits, a waiting request is answered later.
//! - **Rules:** closed → open when, with at least `breaker.min_calls`
//!   outcomes in the window, the failure rate reaches `breaker.failure_rate`
//!   (calls slower than `breaker.slow_call` count as failures when
//!   `breaker.count_slow_calls`); open → half-open after a pause, letting
//!   `breaker.half_open_probes` calls through; a probe's success closes, its
//!   failure opens again. The pause follows a probe schedule: the first
//!   probe after `breaker.first_probe_after`, each failed probe doubling the
//!   pause up to `breaker.open_for`, so a provider that recovered quickly is
//!   found quickly, and one that stays down is probed rarely. While open no
//!   call reaches the provider. Every transition is logged and counted.
//! - **Waiting for a probe:** an `Acquire` that cannot be admitted now but
//!   could be before its `wait_until` (the caller's deadline less one call's
//!   time) is kept, not refused, and answered in arrival order when the probe
//!   is due (the first waiting request *is* the probe), when a probe's outcome
//!   closes the breaker (all are admitted), or, refused with the time left,
//!   once it cannot be admitted in time. So a user whose message comes just
//!   after a fault burst is answered, not refused.
//! - **Failures:** restarted by root; the window is lost and the breaker
//!   starts closed (at worst a few calls reach a failing provider until it
//!   opens again). Waiting requests see their reply port dropped and ask the
//!   restarted breaker. While it is away, the pool treats the provider as
//!   admitted rather than leave users without an answer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::actors::directory::{Address, Child, Directory, Unavailable};
use crate::config::BreakerConfig;

// API

/// Typed operations on the breaker of one provider; each owns what a caller
/// does when the breaker cannot be reached.
#[derive(Clone, Copy)]
pub struct BreakerHandle<'a> {
    directory: &'a Directory,
    address: Address<BreakerMsg>,
}

impl Directory {
    /// The breaker of the provider at `index` of the provider list.
    pub fn breaker(&self, index: usize) -> BreakerHandle<'_> {
        BreakerHandle {
            directory: self,
            address: Address::new(Child::breaker(index)),
        }
    }
}

impl BreakerHandle<'_> {
    /// May a call go to the provider, now or (waiting for the probe) before
    /// `wait_until`? **Fails open:** a breaker that is restarting admits the
    /// call, because a missing breaker must not leave users unanswered.
    pub async fn acquire(&self, wait_until: Instant) -> Admission {
        self.directory
            .call(self.address, |reply| BreakerMsg::Acquire {
                wait_until,
                reply,
            })
            .await
            .unwrap_or(Admission::Admitted)
    }

    /// Reports how an admitted call ended. Best effort: an outcome lost to a
    /// restart only shortens the fresh window.
    pub fn record(&self, outcome: CallOutcome) {
        self.directory
            .cast_now(self.address, BreakerMsg::Record { outcome });
    }

    /// The breaker's state, for health checks and tests.
    pub async fn status(&self) -> Result<BreakerStatus, Unavailable> {
        self.directory
            .call(self.address, |reply| BreakerMsg::Status { reply })
            .await
    }

    /// Makes the breaker panic (tests only); `false` if it is not running.
    #[cfg(feature = "chaos")]
    pub fn panic(&self) -> bool {
        self.directory.cast_now(self.address, BreakerMsg::Panic)
    }
}

/// Messages of a circuit breaker.
pub(crate) enum BreakerMsg {
    /// Panic at once: the chaos hook for tests (feature `chaos` only).
    #[cfg(feature = "chaos")]
    Panic,
    /// May a call go to the provider? Answered at once when it may, or when
    /// it could not before `wait_until`; otherwise kept until the breaker's
    /// next probe.
    Acquire {
        /// The latest moment an admission is still of use to the caller
        /// (`Instant::now()`: do not wait).
        wait_until: Instant,
        /// The decision.
        reply: RpcReplyPort<Admission>,
    },
    /// Timer: a probe may be due, or a waiting request's time is up.
    Wake,
    /// How an admitted call ended.
    Record {
        /// The outcome.
        outcome: CallOutcome,
    },
    /// The breaker's state, for health checks and tests.
    Status {
        /// The answer.
        reply: RpcReplyPort<BreakerStatus>,
    },
}

/// The answer to [`BreakerMsg::Acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The call may go.
    Admitted,
    /// The breaker is open (or its probes are out): try in `retry_in`.
    Rejected {
        /// Time until the breaker lets a call through again.
        retry_in: Duration,
    },
}

/// How an admitted call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOutcome {
    /// The call failed in a way that counts against the provider.
    pub failed: bool,
    /// How long it took, retries included.
    pub duration: Duration,
}

/// A breaker's externally visible state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerStatus {
    /// Calls go through.
    Closed,
    /// No call goes through for `retry_in`.
    Open {
        /// Time left.
        retry_in: Duration,
    },
    /// Probe calls go through.
    HalfOpen,
}

impl BreakerStatus {
    /// Lower-case name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Arguments of a breaker.
pub struct BreakerArgs {
    /// The provider's name, for logs and metrics.
    pub provider: Arc<str>,
    /// The settings.
    pub config: BreakerConfig,
}

/// The circuit breaker actor.
pub(crate) struct Breaker;

/// A breaker's state.
pub(crate) struct BreakerState {
    provider: Arc<str>,
    circuit: Circuit,
    /// Requests waiting for a probe, in arrival order.
    waiters: VecDeque<Waiter>,
    /// The pending [`BreakerMsg::Wake`], if any.
    timer: Option<JoinHandle<Result<(), ractor::MessagingErr<BreakerMsg>>>>,
}

/// A request kept until the breaker can admit it.
struct Waiter {
    wait_until: Instant,
    reply: RpcReplyPort<Admission>,
}

impl Actor for Breaker {
    type Msg = BreakerMsg;
    type State = BreakerState;
    type Arguments = BreakerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<BreakerMsg>,
        args: BreakerArgs,
    ) -> Result<BreakerState, ActorProcessingErr> {
        Ok(BreakerState {
            provider: args.provider,
            circuit: Circuit::new(args.config),
            waiters: VecDeque::new(),
            timer: None,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<BreakerMsg>,
        state: &mut BreakerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<BreakerMsg>,
        message: BreakerMsg,
        state: &mut BreakerState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        let before = state.circuit.status(now).as_str();
        match message {
            #[cfg(feature = "chaos")]
            BreakerMsg::Panic => panic!("chaos: ordered to panic"),
            BreakerMsg::Acquire { wait_until, reply } => {
                state.waiters.push_back(Waiter { wait_until, reply });
                on_wake(&myself, state, now);
            }
            BreakerMsg::Record { outcome } => {
                state.circuit.record(now, outcome);
                on_wake(&myself, state, now);
            }
            BreakerMsg::Status { reply } => {
                let _ = reply.send(state.circuit.status(now));
            }
            BreakerMsg::Wake => on_wake(&myself, state, now),
        }
        let after = state.circuit.status(now).as_str();
        if before != after {
            on_transition(&state.provider, before, after);
        }
        metrics::gauge!("llmgram_breaker_state", "provider" => state.provider.to_string()).set(
            match after {
                "closed" => 0.0,
                "half_open" => 1.0,
                _ => 2.0,
            },
        );
        Ok(())
    }
}

/// Answers the waiting requests that can be answered at `now`, in arrival
/// order, and sets the timer for the next moment that may change that.
fn on_wake(myself: &ActorRef<BreakerMsg>, state: &mut BreakerState, now: Instant) {
    let mut kept = VecDeque::new();
    while let Some(waiter) = state.waiters.pop_front() {
        if waiter.reply.is_closed() {
            // Its caller gave up (its task ended).
            continue;
        }
        match state.circuit.acquire(now) {
            Admission::Admitted => {
                let _ = waiter.reply.send(Admission::Admitted);
            }
            Admission::Rejected { retry_in } => {
                if now < waiter.wait_until && state.circuit.may_admit_by(waiter.wait_until) {
                    kept.push_back(waiter);
                } else {
                    let _ = waiter.reply.send(Admission::Rejected { retry_in });
                }
            }
        }
    }
    state.waiters = kept;
    if let Some(timer) = state.timer.take() {
        timer.abort();
    }
    let next = state
        .waiters
        .iter()
        .map(|waiter| waiter.wait_until)
        .chain(state.circuit.next_admission())
        .min();
    if let (Some(next), false) = (next, state.waiters.is_empty()) {
        metrics::gauge!(crate::telemetry::families::BREAKER_WAITING, "provider" => state.provider.to_string())
            .set(state.waiters.len() as f64);
        state.timer =
            Some(myself.send_after(next.saturating_duration_since(now), || BreakerMsg::Wake));
    } else {
        metrics::gauge!(crate::telemetry::families::BREAKER_WAITING, "provider" => state.provider.to_string())
            .set(0.0);
    }
}

fn on_transition(provider: &str, from: &'static str, to: &'static str) {
    if to == "open" {
        tracing::warn!(provider, from, to, "circuit breaker opened");
    } else {
        tracing::info!(provider, from, to, "circuit breaker changed");
    }
    metrics::counter!(
        "llmgram_breaker_transitions_total",
        "provider" => provider.to_owned(),
        "to" => to
    )
    .increment(1);
}

/// The breaker's state machine, free of the actor so it can be tested with
/// explicit instants.
#[derive(Debug)]
pub struct Circuit {
    config: BreakerConfig,
    phase: Phase,
    /// The pause of the current (or last) open phase: the probe schedule.
    pause: Duration,
    /// Recent outcomes while closed, `true` for a failure.
    window: VecDeque<bool>,
    failures: usize,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { since: Instant, probes_out: usize },
}

impl Circuit {
    /// A closed circuit.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            window: VecDeque::with_capacity(config.window),
            pause: config.first_probe_after.min(config.open_for),
            config,
            phase: Phase::Closed,
            failures: 0,
        }
    }

    /// When a call rejected now could next be admitted: when the pause ends,
    /// or when the probes out count as lost. `None` when one may go now.
    pub fn next_admission(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closed => None,
            Phase::Open { until } => Some(until),
            Phase::HalfOpen { since, probes_out } => {
                (probes_out >= self.config.half_open_probes).then(|| since + self.config.open_for)
            }
        }
    }

    /// Whether a call might be admitted by `at`: always while closed or
    /// half-open (a probe's outcome may come any moment), while open only
    /// if the pause ends by then.
    pub fn may_admit_by(&self, at: Instant) -> bool {
        match self.phase {
            Phase::Open { until } => until <= at,
            Phase::Closed | Phase::HalfOpen { .. } => true,
        }
    }

    /// The visible state at `now`.
    pub fn status(&self, now: Instant) -> BreakerStatus {
        match self.phase {
            Phase::Closed => BreakerStatus::Closed,
            Phase::Open { until } if now < until => BreakerStatus::Open {
                retry_in: until - now,
            },
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerStatus::HalfOpen,
        }
    }

    /// Decides whether a call may go at `now`.
    pub fn acquire(&mut self, now: Instant) -> Admission {
        match self.phase {
            Phase::Closed => Admission::Admitted,
            Phase::Open { until } if now < until => Admission::Rejected {
                retry_in: until - now,
            },
            Phase::Open { .. } => {
                self.phase = Phase::HalfOpen {
                    since: now,
                    probes_out: 1,
                };
                Admission::Admitted
            }
            Phase::HalfOpen { since, probes_out } => {
                // A probe whose outcome never came back (its caller died)
                // must not keep the breaker half-open forever.
                let stale = now.duration_since(since) >= self.config.open_for;
                if stale {
                    self.phase = Phase::HalfOpen {
                        since: now,
                        probes_out: 1,
                    };
                    Admission::Admitted
                } else if probes_out < self.config.half_open_probes {
                    self.phase = Phase::HalfOpen {
                        since,
                        probes_out: probes_out + 1,
                    };
                    Admission::Admitted
                } else {
                    Admission::Rejected {
                        retry_in: self
                            .config
                            .open_for
                            .saturating_sub(now.duration_since(since)),
                    }
                }
            }
        }
    }

    /// Takes the outcome of an admitted call ending at `now`.
    pub fn record(&mut self, now: Instant, outcome: CallOutcome) {
        let failed = outcome.failed
            || (self.config.count_slow_calls && outcome.duration > self.config.slow_call);
        match self.phase {
            Phase::Closed => {
                self.window.push_back(failed);
                self.failures += usize::from(failed);
                while self.window.len() > self.config.window {
                    if self.window.pop_front() == Some(true) {
                        self.failures -= 1;
                    }
                }
                let calls = self.window.len();
                if calls >= self.config.min_calls
                    && self.failures as f64 / calls as f64 >= self.config.failure_rate
                {
                    // A fresh outage: the probe schedule starts over.
                    self.pause = self.config.first_probe_after.min(self.config.open_for);
                    self.open(now);
                }
            }
            Phase::HalfOpen { .. } if failed => {
                // Still failing: probe half as often, down to once per
                // open_for.
                self.pause = self.pause.saturating_mul(2).min(self.config.open_for);
                self.open(now);
            }
            Phase::HalfOpen { .. } => {
                self.phase = Phase::Closed;
                self.window.clear();
                self.failures = 0;
            }
            // A call admitted before the breaker opened: its outcome is old news.
            Phase::Open { .. } => {}
        }
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Open {
            until: now + self.pause,
        };
        self.window.clear();
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: 10,
            min_calls: 4,
            failure_rate: 0.5,
            slow_call: Duration::from_secs(5),
            count_slow_calls: true,
            open_for: Duration::from_secs(30),
            // The pause before every probe is open_for, as these tests were
            // written for; the probe schedule has its own tests.
            first_probe_after: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }

    fn ok() -> CallOutcome {
        CallOutcome {
            failed: false,
            duration: Duration::from_millis(100),
        }
    }

    fn bad() -> CallOutcome {
        CallOutcome {
            failed: true,
            duration: Duration::from_millis(100),
        }
    }

    #[test]
    fn opens_at_the_failure_rate_only_after_min_calls() {
        let now = Instant::now();
        let mut circuit = Circuit::new(config());
        circuit.record(now, bad());
        circuit.record(now, bad());
        circuit.record(now, bad());
        assert_eq!(circuit.status(now), BreakerStatus::Closed, "3 < min_calls");
        circuit.record(now, ok());
        // 3 failures of 4 = 75 % >= 50 %
        assert!(matches!(circuit.status(now), BreakerStatus::Open { .. }));
        assert_eq!(
            circuit.acquire(now + Duration::from_secs(10)),
            Admission::Rejected {
                retry_in: Duration::from_secs(20)
            }
        );
    }

    #[test]
    fn stays_closed_below_the_rate() {
        let now = Instant::now();
        let mut circuit = Circuit::new(config());
        for _ in 0..20 {
            circuit.record(now, ok());
            circuit.record(now, ok());
            circuit.record(now, bad());
        }
        assert_eq!(circuit.status(now), BreakerStatus::Closed);
    }

    #[test]
    fn slow_calls_count_as_failures_when_configured() {
        let now = Instant::now();
        let slow = CallOutcome {
            failed: false,
            duration: Duration::from_secs(6),
        };
        let mut circuit = Circuit::new(config());
        for _ in 0..4 {
            circuit.record(now, slow);
        }
        assert!(matches!(circuit.status(now), BreakerStatus::Open { .. }));
        let mut lenient = Circuit::new(BreakerConfig {
            count_slow_calls: false,
            ..config()
        });
        for _ in 0..4 {
            lenient.record(now, slow);
        }
        assert_eq!(lenient.status(now), BreakerStatus::Closed);
    }

    #[test]
    fn half_open_lets_probes_through_then_closes_or_reopens() {
        let start = Instant::now();
        let mut circuit = Circuit::new(config());
        for _ in 0..4 {
            circuit.record(start, bad());
        }
        let later = start + Duration::from_secs(30);
        assert_eq!(circuit.acquire(later), Admission::Admitted, "the probe");
        assert!(
            matches!(circuit.acquire(later), Admission::Rejected { .. }),
            "one probe only"
        );
        circuit.record(later, bad());
        assert!(
            matches!(circuit.status(later), BreakerStatus::Open { .. }),
            "failed probe reopens"
        );

        let again = later + Duration::from_secs(30);
        assert_eq!(circuit.acquire(again), Admission::Admitted);
        circuit.record(again, ok());
        assert_eq!(
            circuit.status(again),
            BreakerStatus::Closed,
            "good probe closes"
        );
        assert_eq!(circuit.acquire(again), Admission::Admitted);
    }

    #[test]
    fn a_lost_probe_does_not_wedge_the_breaker() {
        let start = Instant::now();
        let mut circuit = Circuit::new(config());
        for _ in 0..4 {
            circuit.record(start, bad());
        }
        let probe_time = start + Duration::from_secs(30);
        assert_eq!(circuit.acquire(probe_time), Admission::Admitted);
        // Its outcome never arrives.
        assert_eq!(
            circuit.acquire(probe_time + Duration::from_secs(30)),
            Admission::Admitted
        );
    }

    #[test]
    fn probes_come_early_then_ever_rarer_up_to_open_for() {
        let config = BreakerConfig {
            first_probe_after: Duration::from_secs(2),
            ..config()
        };
        let mut now = Instant::now();
        let mut circuit = Circuit::new(config);
        for _ in 0..4 {
            circuit.record(now, bad());
        }
        let mut pauses = Vec::new();
        for _ in 0..6 {
            let Some(probe_at) = circuit.next_admission() else {
                panic!("open: no admission now");
            };
            pauses.push((probe_at - now).as_secs());
            assert!(matches!(
                circuit.acquire(probe_at - Duration::from_millis(1)),
                Admission::Rejected { .. }
            ));
            assert_eq!(circuit.acquire(probe_at), Admission::Admitted, "the probe");
            now = probe_at + Duration::from_millis(100);
            circuit.record(now, bad());
        }
        assert_eq!(pauses, [2, 4, 8, 16, 30, 30]);
        // A good probe closes it; the next outage starts the schedule over.
        let probe_at = circuit.next_admission().unwrap();
        assert_eq!(circuit.acquire(probe_at), Admission::Admitted);
        circuit.record(probe_at, ok());
        assert_eq!(circuit.status(probe_at), BreakerStatus::Closed);
        for _ in 0..4 {
            circuit.record(probe_at, bad());
        }
        assert_eq!(
            circuit.next_admission(),
            Some(probe_at + Duration::from_secs(2))
        );
    }

    #[test]
    fn a_waiting_request_may_be_admitted_by_its_moment_only_if_the_pause_ends_by_then() {
        let now = Instant::now();
        let mut circuit = Circuit::new(BreakerConfig {
            first_probe_after: Duration::from_secs(2),
            ..config()
        });
        assert!(circuit.may_admit_by(now), "closed");
        for _ in 0..4 {
            circuit.record(now, bad());
        }
        assert!(!circuit.may_admit_by(now + Duration::from_secs(1)));
        assert!(circuit.may_admit_by(now + Duration::from_secs(2)));
    }

    /// The actor on tokio's paused clock: a request arriving while the
    /// breaker is open waits and becomes the probe; one whose moment comes
    /// before the probe is refused at once.
    #[tokio::test(start_paused = true)]
    async fn the_actor_keeps_waiting_requests_until_the_probe() {
        let (breaker, handle) = Actor::spawn(
            None,
            Breaker,
            BreakerArgs {
                provider: "test".into(),
                config: BreakerConfig {
                    first_probe_after: Duration::from_secs(2),
                    ..config()
                },
            },
        )
        .await
        .unwrap();
        for _ in 0..4 {
            breaker.cast(BreakerMsg::Record { outcome: bad() }).unwrap();
        }
        let start = Instant::now();
        let acquire = |wait_until: Instant| {
            let breaker = breaker.clone();
            tokio::spawn(async move {
                let admission = breaker
                    .call(|reply| BreakerMsg::Acquire { wait_until, reply }, None)
                    .await
                    .unwrap()
                    .unwrap();
                (admission, start.elapsed())
            })
        };
        let impatient = acquire(start + Duration::from_secs(1));
        let first = acquire(start + Duration::from_secs(15));
        tokio::task::yield_now().await;
        let second = acquire(start + Duration::from_secs(15));
        let (admission, at) = impatient.await.unwrap();
        assert!(
            matches!(admission, Admission::Rejected { .. }),
            "{admission:?}"
        );
        assert!(at < Duration::from_millis(10), "refused at once: {at:?}");
        let (admission, at) = first.await.unwrap();
        assert_eq!(
            admission,
            Admission::Admitted,
            "the first waiter is the probe"
        );
        assert_eq!(at.as_secs(), 2, "at the first probe: {at:?}");
        // The probe succeeds: the breaker closes and admits the next waiter.
        tokio::time::sleep(Duration::from_millis(500)).await;
        breaker.cast(BreakerMsg::Record { outcome: ok() }).unwrap();
        let (admission, at) = second.await.unwrap();
        assert_eq!(admission, Admission::Admitted);
        assert_eq!(at.as_millis() / 100, 25, "when the probe closed it: {at:?}");
        breaker.stop(None);
        handle.await.unwrap();
    }
}
