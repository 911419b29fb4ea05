//! Circuit breaker: one per LLM provider. Decides whether a call may go to
//! that provider, from the outcomes of its recent calls.
//!
//! - **Supervised by:** root, permanent; one child per provider
//!   (`<instance>.breaker.<index>`, index in the order of the provider list).
//! - **Messages:** [`BreakerMsg::Acquire`] (may a call go now?),
//!   [`BreakerMsg::Record`] (how a call ended), [`BreakerMsg::Status`].
//! - **State:** [`Circuit`]: closed with a window of the last
//!   `breaker.window` outcomes; open until a moment; or half-open with the
//!   probes in flight.
//! - **Rules:** closed → open when, with at least `breaker.min_calls`
//!   outcomes in the window, the failure rate reaches `breaker.failure_rate`
//!   (calls slower than `breaker.slow_call` count as failures when
//!   `breaker.count_slow_calls`); open → half-open after `breaker.open_for`,
//!   letting `breaker.half_open_probes` calls through; a probe's success
//!   closes, its failure opens again. While open no call reaches the
//!   provider. Every transition is logged and counted.
//! - **Failures:** restarted by root; the window is lost and the breaker
//!   starts closed (at worst a few calls reach a failing provider until it
//!   opens again). While it is away, the pool treats the provider as
//!   admitted rather than leave users without an answer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;

use crate::config::BreakerConfig;

/// Messages of a circuit breaker.
pub enum BreakerMsg {
    /// Panic at once: the chaos hook for tests (feature `chaos` only).
    #[cfg(feature = "chaos")]
    Panic,
    /// May a call go to the provider now?
    Acquire {
        /// The decision.
        reply: RpcReplyPort<Admission>,
    },
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
pub struct Breaker;

/// A breaker's state.
pub struct BreakerState {
    provider: Arc<str>,
    circuit: Circuit,
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
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<BreakerMsg>,
        message: BreakerMsg,
        state: &mut BreakerState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        let before = state.circuit.status(now).as_str();
        match message {
            #[cfg(feature = "chaos")]
            BreakerMsg::Panic => panic!("chaos: ordered to panic"),
            BreakerMsg::Acquire { reply } => {
                let _ = reply.send(state.circuit.acquire(now));
            }
            BreakerMsg::Record { outcome } => state.circuit.record(now, outcome),
            BreakerMsg::Status { reply } => {
                let _ = reply.send(state.circuit.status(now));
            }
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
            config,
            phase: Phase::Closed,
            failures: 0,
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
                    self.open(now);
                }
            }
            Phase::HalfOpen { .. } if failed => self.open(now),
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
            until: now + self.config.open_for,
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
}
