//! LLM pool: every chat-completion request goes through here, at most
//! `llm.max_concurrency` at a time, to the first provider whose circuit
//! breaker admits it, with retries, and falling back along the provider list.
//!
//! - **Supervised by:** root, permanent.
//! - **Messages:** [`LlmPoolMsg::Complete`] — a prompt in, an answer or a
//!   classified [`LlmError`] out; [`LlmPoolMsg::SetModel`] (admin `/model`,
//!   stored as the `default_model` setting and reloaded on start) and
//!   [`LlmPoolMsg::CurrentModel`].
//! - **State:** the providers' [`LlmClient`]s (one pooled HTTP client each)
//!   and the request slots, all created once by `app` so they outlive
//!   restarts of this actor.
//! - **Per request** (in its own task, so the handler never awaits a call and
//!   one slow request never holds up another): take a slot (at most
//!   `llm.queue_timeout`, else [`LlmError::Overloaded`]); then for each
//!   provider in order: ask its breaker, skip it while open, else call it
//!   with retries (`llm.retry`) and report the outcome to the breaker; the
//!   first answer wins. When none answered and a breaker was open, wait for
//!   the probe of the one that probes first (the breaker keeps the request
//!   and admits it as, or right after, its probe) if that leaves a whole
//!   `llm.request_timeout` before the deadline. All within
//!   `llm.fallback_after`: past it, or when no provider could answer, the
//!   caller gets [`LlmError::NoProvider`] with the time until a breaker lets
//!   calls through again.
//! - **Failures:** call errors are values returned to the session, which logs
//!   them once. If this actor dies, requests already running still answer
//!   their callers (the tasks own the reply ports); requests in its mailbox
//!   are lost, their callers see the reply port dropped and send again to the
//!   restarted pool.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::breaker::{Admission, CallOutcome};
use crate::actors::directory::{Address, Child, Directory, Unavailable};
use crate::config::LlmConfig;
use crate::llm::client::{CallOptions, StreamTo};
use crate::llm::{ChatMessage, Completion, LlmClient, LlmError};
use crate::store::record::BotSetting;
use crate::store::{BotKey, StoreError};

// API

/// Typed operations on the LLM pool; each owns what a caller does when the
/// pool cannot be reached.
#[derive(Clone, Copy)]
pub struct LlmPoolHandle<'a> {
    directory: &'a Directory,
}

const ADDRESS: Address<LlmPoolMsg> = Address::new(Child::LlmPool);

impl Directory {
    /// The LLM pool: chat-completion requests.
    pub fn llm_pool(&self) -> LlmPoolHandle<'_> {
        LlmPoolHandle { directory: self }
    }
}

impl LlmPoolHandle<'_> {
    /// Answers the prompt (streaming its text to `stream` if given).
    /// **Fails closed** with [`LlmError::PoolUnavailable`] when the pool
    /// stays away; a request is resent to a restarted pool.
    pub async fn complete(
        &self,
        messages: &[ChatMessage],
        options: &Overrides,
        stream: Option<&StreamTo>,
    ) -> Result<Completion, LlmError> {
        self.directory
            .call(ADDRESS, |reply| LlmPoolMsg::Complete {
                messages: messages.to_vec(),
                options: options.clone(),
                stream: stream.cloned(),
                reply,
            })
            .await
            .unwrap_or(Err(LlmError::PoolUnavailable))
    }

    /// Uses `model` on the primary provider for everyone (admin `/model`);
    /// `Ok` once stored. **Fails closed** with [`StoreError::Unavailable`].
    pub async fn set_model(&self, model: &str) -> Result<(), StoreError> {
        self.directory
            .call(ADDRESS, |reply| LlmPoolMsg::SetModel {
                model: model.to_owned(),
                reply,
            })
            .await
            .unwrap_or(Err(StoreError::Unavailable))
    }

    /// The model the primary provider is asked for now.
    pub async fn current_model(&self) -> Result<String, Unavailable> {
        self.directory
            .call(ADDRESS, |reply| LlmPoolMsg::CurrentModel { reply })
            .await
    }

    /// Makes the pool panic (tests only); `false` if it is not running.
    #[cfg(feature = "chaos")]
    pub fn panic(&self) -> bool {
        self.directory.cast_now(ADDRESS, LlmPoolMsg::Panic)
    }
}

/// Messages of the LLM pool.
pub(crate) enum LlmPoolMsg {
    /// Use `model` on the primary provider for everyone (admin `/model`);
    /// answered once the choice is stored.
    SetModel {
        /// One of `llm.allowed_models`.
        model: String,
        /// `Ok` once durable.
        reply: RpcReplyPort<Result<(), StoreError>>,
    },
    /// The model the primary provider is asked for now.
    CurrentModel {
        /// Its name.
        reply: RpcReplyPort<String>,
    },
    /// Panic at once: the chaos hook for tests (feature `chaos` only).
    #[cfg(feature = "chaos")]
    Panic,
    /// Answer this prompt.
    Complete {
        /// System prompt, history and the new user message.
        messages: Vec<ChatMessage>,
        /// A command's own model (primary provider) and temperature.
        options: Overrides,
        /// Stream the answer's text here as it is generated (`llm.stream`).
        stream: Option<StreamTo>,
        /// The answer or the classified failure.
        reply: RpcReplyPort<Result<Completion, LlmError>>,
    },
}

/// What the pool is built from; the providers, their slots and the health
/// stamps are created once by `app` and outlive restarts of this actor.
pub(crate) struct LlmPoolArgs {
    /// The providers in fallback order (one pooled HTTP client each).
    pub(crate) providers: Arc<[LlmClient]>,
    /// Request slots (`llm.max_concurrency`), shared across restarts.
    pub(crate) slots: Arc<Semaphore>,
    /// `[llm]`.
    pub(crate) config: Arc<LlmConfig>,
    /// Stamped after each answer, for readiness.
    pub(crate) health: Arc<crate::ops::Health>,
    /// To reach the breakers and the stored model choice.
    pub(crate) directory: Directory,
}

/// The LLM pool actor.
pub(crate) struct LlmPool;

/// The pool's state.
pub(crate) struct LlmPoolState {
    providers: Arc<[LlmClient]>,
    /// The admin's choice for the primary provider, if any.
    model: Option<Arc<str>>,
    health: Arc<crate::ops::Health>,
    slots: Arc<Semaphore>,
    config: Arc<LlmConfig>,
    directory: Directory,
}

impl Actor for LlmPool {
    type Msg = LlmPoolMsg;
    type State = LlmPoolState;
    type Arguments = LlmPoolArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<LlmPoolMsg>,
        args: LlmPoolArgs,
    ) -> Result<LlmPoolState, ActorProcessingErr> {
        tracing::debug!(
            providers = args.providers.len(),
            slots = args.config.max_concurrency,
            "llm pool started"
        );
        let model = match args
            .directory
            .persistence()
            .load_setting(BotKey::DefaultModel)
            .await?
        {
            Some(BotSetting::DefaultModel(model)) => Some(Arc::from(model.as_str())),
            _ => None,
        };
        Ok(LlmPoolState {
            model,
            health: args.health,
            providers: args.providers,
            slots: args.slots,
            config: args.config,
            directory: args.directory,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LlmPoolMsg>,
        message: LlmPoolMsg,
        state: &mut LlmPoolState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            #[cfg(feature = "chaos")]
            LlmPoolMsg::Panic => panic!("chaos: ordered to panic"),
            LlmPoolMsg::Complete {
                messages,
                options,
                stream,
                reply,
            } => on_complete(state, messages, options, stream, reply),
            LlmPoolMsg::SetModel { model, reply } => {
                let stored = state
                    .directory
                    .persistence()
                    .save_setting(
                        BotKey::DefaultModel,
                        &BotSetting::DefaultModel(model.clone()),
                    )
                    .await;
                if stored.is_ok() {
                    tracing::info!(%model, "default model changed");
                    state.model = Some(Arc::from(model.as_str()));
                }
                let _ = reply.send(stored);
            }
            LlmPoolMsg::CurrentModel { reply } => {
                let current = state
                    .model
                    .as_deref()
                    .or_else(|| state.providers.first().map(LlmClient::model))
                    .unwrap_or_default();
                let _ = reply.send(current.to_owned());
            }
        }
        Ok(())
    }
}

/// A request's own choices over the configuration.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// A model for the primary provider (a command's), over the admin's and
    /// the configured one.
    pub model: Option<Arc<str>>,
    /// A sampling temperature for every provider.
    pub temperature: Option<f32>,
}

fn on_complete(
    state: &LlmPoolState,
    messages: Vec<ChatMessage>,
    options: Overrides,
    stream: Option<StreamTo>,
    reply: RpcReplyPort<Result<Completion, LlmError>>,
) {
    let providers = Arc::clone(&state.providers);
    let slots = Arc::clone(&state.slots);
    let config = Arc::clone(&state.config);
    let directory = state.directory.clone();
    let model = options.model.or_else(|| state.model.clone());
    let temperature = options.temperature;
    let health = Arc::clone(&state.health);
    tokio::spawn(async move {
        let deadline = Instant::now() + config.fallback_after;
        let result = match tokio::time::timeout(config.queue_timeout, slots.acquire_owned()).await {
            Ok(Ok(_slot)) => {
                let call = Call {
                    messages: &messages,
                    primary_model: model.as_deref(),
                    temperature,
                    stream: stream.as_ref(),
                    deadline,
                    health: &health,
                };
                complete_with_fallback(&providers, &directory, &config, call).await
            }
            // The semaphore is never closed; treat it like a missing pool.
            Ok(Err(_closed)) => Err(LlmError::PoolUnavailable),
            Err(_elapsed) => Err(LlmError::Overloaded),
        };
        // The caller may have given up (its session stopped): nothing to do.
        let _ = reply.send(result);
    });
}

/// One request's prompt and limits.
struct Call<'a> {
    messages: &'a [ChatMessage],
    /// The model for the primary provider only (a command's or the admin's).
    primary_model: Option<&'a str>,
    temperature: Option<f32>,
    stream: Option<&'a StreamTo>,
    deadline: Instant,
    health: &'a crate::ops::Health,
}

async fn complete_with_fallback(
    providers: &[LlmClient],
    directory: &Directory,
    config: &LlmConfig,
    call: Call<'_>,
) -> Result<Completion, LlmError> {
    let Call {
        messages,
        primary_model,
        temperature,
        stream,
        deadline,
        health,
    } = call;
    let mut retry_in: Option<Duration> = None;
    let mut last = None;
    // A probe admitted later than this could not finish before the deadline
    // (and, cut short, would count as a failure against the provider).
    let latest_start = deadline
        .checked_sub(config.request_timeout)
        .unwrap_or(deadline);
    // First every provider whose breaker admits a call now; then, if none
    // answered, wait for the probe of the open breaker that probes first.
    let mut soonest: Option<(usize, Duration)> = None;
    let mut candidates: Vec<(usize, bool)> = (0..providers.len()).map(|i| (i, false)).collect();
    let mut next = 0;
    loop {
        if next == providers.len()
            && let Some((index, _)) = soonest.take()
        {
            candidates.push((index, true));
        }
        let Some(&(index, wait_for_probe)) = candidates.get(next) else {
            break;
        };
        next += 1;
        let Some(provider) = providers.get(index) else {
            continue;
        };
        if Instant::now() >= deadline {
            break;
        }
        let breaker = directory.breaker(index);
        let wait_until = if wait_for_probe {
            tracing::debug!(
                provider = provider.name(),
                "waiting for the breaker's probe"
            );
            latest_start
        } else {
            Instant::now()
        };
        let admission = breaker.acquire(wait_until).await;
        if let Admission::Rejected { retry_in: wait } = admission {
            tracing::debug!(provider = provider.name(), ?wait, "breaker open; skipped");
            retry_in = Some(if wait_for_probe {
                wait
            } else {
                retry_in.map_or(wait, |known| known.min(wait))
            });
            // Worth waiting for only if the probe comes in time.
            let in_time = Instant::now() + wait <= latest_start;
            if !wait_for_probe && in_time && soonest.is_none_or(|(_, known)| wait < known) {
                soonest = Some((index, wait));
            }
            continue;
        }
        let started = Instant::now();
        let (result, attempts) = provider
            .complete_with_retries(
                messages,
                CallOptions {
                    model: if index == 0 { primary_model } else { None },
                    temperature,
                    stream,
                },
                &config.retry,
                deadline,
            )
            .await;
        let elapsed = started.elapsed();
        metrics::counter!("llmgram_llm_requests_total", "provider" => provider.name().to_owned())
            .increment(u64::from(attempts));
        metrics::histogram!(
            "llmgram_llm_latency_seconds",
            "provider" => provider.name().to_owned(),
            "model" => if index == 0 { primary_model.unwrap_or(provider.model()) } else { provider.model() }.to_owned()
        )
        .record(elapsed.as_secs_f64());
        let outcome = CallOutcome {
            failed: result
                .as_ref()
                .err()
                .is_some_and(LlmError::counts_against_provider),
            // A stream is as slow as its first text.
            duration: result
                .as_ref()
                .ok()
                .and_then(|completion| completion.first_text_after)
                .unwrap_or(elapsed),
        };
        breaker.record(outcome);
        match result {
            Ok(completion) => {
                tracing::debug!(provider = provider.name(), attempts, "answered");
                if let Some(slot) = health.provider_ok_ms.get(index) {
                    crate::ops::Health::stamp(slot);
                }
                return Ok(completion);
            }
            Err(LlmError::Abandoned) => return Err(LlmError::Abandoned),
            Err(error @ LlmError::StreamCut(_)) => {
                // Part of this answer is on the user's screen: another
                // provider would start a different one.
                tracing::warn!(provider = provider.name(), attempts, %error, "stream cut");
                return Err(error);
            }
            Err(error) => {
                tracing::warn!(provider = provider.name(), attempts, class = error.class(), %error, "provider failed");
                last = Some(Box::new(error));
            }
        }
    }
    Err(LlmError::NoProvider { retry_in, last })
}

#[cfg(test)]
mod tests;
