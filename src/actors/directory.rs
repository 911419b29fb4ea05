//! Names of the long-lived actors, and typed lookups that wait out a restart.
//!
//! Each running service has an instance name (several can share a process in
//! tests); an actor's registered name is `<instance>.<child>`. Callers look an
//! actor up for every use and, when it is restarting, wait up to
//! `supervision.lookup_timeout` for the replacement, so no message is sent to
//! a dead actor's reference.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorRef, MessagingErr, RpcReplyPort, rpc::CallResult};
use tokio::time::Instant;

use crate::config::SupervisionConfig;

/// The long-lived children of the root supervisor.
///
/// The enum names them; root's child-spec table
/// ([`child_specs`](crate::actors::root)) says, once, in which order they
/// start, how each is restarted and how it is started. This type stays here,
/// beside the [`Directory`] and [`Address`] built on it, so the name
/// machinery does not depend on the supervisor. Its registry, log and metric
/// names come from [`as_str`](Self::as_str);
/// [`IntoEnumIterator`](strum::IntoEnumIterator) walks one of each (the
/// breakers as [`Child::Breaker`]`(0)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Child {
    /// `root/persistence.rs`: the only door to the store.
    Persistence,
    /// `root/breaker.rs`: the circuit breaker of the provider at this index
    /// of the provider list (0 is the primary).
    Breaker(u8),
    /// `root/limiter.rs`: rate limits on arriving updates.
    Limiter,
    /// `root/llm_pool.rs`: chat-completion requests.
    LlmPool,
    /// `root/outbox.rs`: every Bot API send.
    Outbox,
    /// `root/session_sup.rs`: one session actor per chat.
    SessionSup,
    /// `root/business.rs`: the Telegram Business connections (only with
    /// `business.enabled`).
    Business,
    /// `root/cluster.rs`: the lease and sweeps on a shared PostgreSQL (only
    /// with `storage.backend = "postgres"`).
    Cluster,
    /// The front end taking updates in: long polling (`root/ingress.rs`) or
    /// the webhook (`root/webhook.rs`), by `telegram.mode`; none for the
    /// console front. Registered, logged and counted as `ingress`, the name
    /// the metrics, the chaos hook and the operators' dashboards know.
    #[strum(serialize = "ingress")]
    Front,
}

impl Child {
    /// The breaker of the provider at `index` in the provider list.
    pub fn breaker(index: usize) -> Self {
        // Provider lists are a handful long; 255 is beyond any config.
        Self::Breaker(u8::try_from(index).unwrap_or(u8::MAX))
    }

    /// Every child's [`as_str`](Self::as_str) name (the breakers share one),
    /// in declaration order.
    pub fn names() -> Vec<&'static str> {
        <Self as strum::IntoEnumIterator>::iter()
            .map(Self::as_str)
            .collect()
    }

    /// The child an ops query or a log names: `persistence`, `breaker.N`,
    /// `limiter`, `llm_pool`, `outbox`, `session_sup`, `ingress`.
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(index) = name.strip_prefix("breaker.") {
            return index.parse().ok().map(Self::breaker);
        }
        <Self as strum::IntoEnumIterator>::iter()
            .filter(|child| !matches!(child, Self::Breaker(_)))
            .find(|child| child.as_str() == name)
    }

    /// The name used in the registry, logs and metrics.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A child together with the message type it speaks: the only way to reach a
/// long-lived actor through the [`Directory`].
///
/// Each actor file builds the addresses of its own child from its private
/// message enum (`Address::new(Child::Outbox)` next to `enum OutboxMsg`) and
/// exposes typed operations on a handle, so no other file can pair a child's
/// name with the wrong message type: the compiler checks it.
#[derive(Debug)]
pub(crate) struct Address<M> {
    child: Child,
    message: PhantomData<fn(M)>,
}

impl<M> Address<M> {
    /// The address of `child`, which must speak `M`; only called in the file
    /// that defines both.
    pub(crate) const fn new(child: Child) -> Self {
        Self {
            child,
            message: PhantomData,
        }
    }
}

impl<M> Clone for Address<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Address<M> {}

/// The actor was not reachable within `supervision.lookup_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("actor {0:?} is unavailable")]
pub struct Unavailable(pub Child);

/// Resolves children by name. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Directory {
    instance: Arc<str>,
    lookup_timeout: Duration,
    lookup_interval: Duration,
}

impl Directory {
    /// A directory for the service instance `instance`.
    pub fn new(instance: &str, config: &SupervisionConfig) -> Self {
        Self {
            instance: instance.into(),
            lookup_timeout: config.lookup_timeout,
            lookup_interval: config.lookup_interval,
        }
    }

    /// The instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// How long a caller waits for a restarting actor
    /// (`supervision.lookup_timeout`).
    pub(crate) fn lookup_timeout(&self) -> Duration {
        self.lookup_timeout
    }

    /// The registered name of the root supervisor.
    pub fn root_name(&self) -> String {
        format!("{}.root", self.instance)
    }

    /// The registered name of `child`.
    pub fn name(&self, child: Child) -> String {
        match child {
            Child::Breaker(index) => format!("{}.breaker.{index}", self.instance),
            other => format!("{}.{}", self.instance, other.as_str()),
        }
    }

    /// Whether `child` is registered (running) now.
    pub fn is_running(&self, child: Child) -> bool {
        ractor::registry::where_is(self.name(child)).is_some()
    }

    /// The child as it is registered now, if it is running.
    pub(crate) fn get<M: ractor::Message>(&self, address: Address<M>) -> Option<ActorRef<M>> {
        ractor::registry::where_is(self.name(address.child)).map(ActorRef::from)
    }

    /// The child, waiting up to the lookup timeout while it is restarting.
    pub(crate) async fn wait_for<M: ractor::Message>(
        &self,
        address: Address<M>,
    ) -> Result<ActorRef<M>, Unavailable> {
        let deadline = Instant::now() + self.lookup_timeout;
        loop {
            if let Some(actor) = self.get(address) {
                return Ok(actor);
            }
            if Instant::now() >= deadline {
                return Err(Unavailable(address.child));
            }
            tokio::time::sleep(self.lookup_interval).await;
        }
    }

    /// Sends a request to the child and waits for its answer. When the actor
    /// is gone before answering (restarting, or it dropped the reply port
    /// while dying), the request is built again and sent to the replacement,
    /// until the lookup timeout has passed without one.
    pub(crate) async fn call<M, R>(
        &self,
        address: Address<M>,
        build: impl Fn(RpcReplyPort<R>) -> M,
    ) -> Result<R, Unavailable>
    where
        M: ractor::Message,
        R: Send + 'static,
    {
        let child = address.child;
        let mut deadline = Instant::now() + self.lookup_timeout;
        loop {
            if let Some(actor) = self.get(address) {
                match actor.call(&build, None).await {
                    Ok(CallResult::Success(answer)) => return Ok(answer),
                    // The actor died with our request: give its successor a
                    // full lookup period to come up.
                    Ok(CallResult::SenderError | CallResult::Timeout) => {
                        deadline = Instant::now() + self.lookup_timeout;
                    }
                    Err(MessagingErr::SendErr(_) | MessagingErr::ChannelClosed) => {}
                    Err(MessagingErr::InvalidActorType) => return Err(Unavailable(child)),
                }
            }
            if Instant::now() >= deadline {
                return Err(Unavailable(child));
            }
            tokio::time::sleep(self.lookup_interval).await;
        }
    }

    /// Sends a message to the child if it is running now; best effort, for
    /// messages whose loss is harmless (a typing indicator).
    pub(crate) fn cast_now<M: ractor::Message>(&self, address: Address<M>, message: M) -> bool {
        self.get(address)
            .is_some_and(|actor| actor.cast(message).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_registered_ones_and_parse_back() {
        assert_eq!(
            Child::names(),
            [
                "persistence",
                "breaker",
                "limiter",
                "llm_pool",
                "outbox",
                "session_sup",
                "business",
                "cluster",
                "ingress"
            ]
        );
        assert_eq!(Child::parse("ingress"), Some(Child::Front));
        assert_eq!(Child::parse("breaker.2"), Some(Child::Breaker(2)));
        assert_eq!(Child::parse("breaker"), None);
        assert_eq!(Child::parse("session"), None);
        for name in Child::names().into_iter().filter(|n| *n != "breaker") {
            assert_eq!(Child::parse(name).map(Child::as_str), Some(name));
        }
    }
}
