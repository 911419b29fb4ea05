//! LLM pool: every chat-completion and transcription request goes through
//! here, at most `llm.max_concurrency` at a time (both share the slots), to
//! the first provider whose circuit breaker admits it, with retries, and
//! falling back along the provider list.
//!
//! - **Supervised by:** root, permanent.
//! - **Messages:** [`LlmPoolMsg::Complete`] — a prompt in, an answer or a
//!   classified [`LlmError`] out; [`LlmPoolMsg::Transcribe`] — audio in, a
//!   [`Transcript`] or a classified [`LlmError`] out;
//!   [`LlmPoolMsg::SetModel`] (admin `/model`, stored as the `default_model`
//!   setting and reloaded on start) and [`LlmPoolMsg::CurrentModel`].
//! - **Which providers:** a prompt with images goes only to the providers
//!   that can see images (the primary with `llm.vision_model`, fallbacks
//!   with `vision = true`), each with its vision model: neither a chat's nor
//!   the admin's `/model` choice applies to it (a text model cannot read
//!   the image). None: [`LlmError::NoVision`] at once. Audio goes only to
//!   providers with a transcription model, in fallback order; none:
//!   [`LlmError::NoTranscription`] at once. A transcription's time is not
//!   judged as a slow call by the breaker (it follows the audio's length);
//!   its failures count like a chat call's. Its overall bound is the longer
//!   of `llm.fallback_after` and `llm.transcription_timeout`.
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
use crate::llm::{ChatMessage, Completion, LlmClient, LlmError, Transcript};
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

    /// Transcribes `audio` (a file named `file_name`, of MIME type `mime`,
    /// e.g. `voice.ogg`, `audio/ogg`) with the first provider that has a
    /// transcription model and answers. An empty [`Transcript::text`] means
    /// nothing was heard. **Fails closed** with a classified [`LlmError`]
    /// ([`LlmError::PoolUnavailable`] when the pool stays away); a request is
    /// resent to a restarted pool.
    pub async fn transcribe(
        &self,
        audio: bytes::Bytes,
        file_name: &str,
        mime: &str,
    ) -> Result<Transcript, LlmError> {
        self.directory
            .call(ADDRESS, |reply| LlmPoolMsg::Transcribe {
                audio: audio.clone(),
                file_name: file_name.to_owned(),
                mime: mime.to_owned(),
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

    /// Another instance changed the default model (shared store): read it
    /// again. Best effort.
    pub fn reload_model(&self) {
        self.directory.cast_now(ADDRESS, LlmPoolMsg::ReloadModel);
    }

    /// Makes the pool panic (tests only); `false` if it is not running.
    #[cfg(feature = "chaos")]
    pub fn panic(&self) -> bool {
        self.directory.cast_now(ADDRESS, LlmPoolMsg::Panic)
    }
}

/// Messages of the LLM pool.
pub(crate) enum LlmPoolMsg {
    /// Another instance changed the default model (shared store): read it
    /// again.
    ReloadModel,
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
    /// Transcribe this audio.
    Transcribe {
        /// The file's bytes (shared, not copied, across retries).
        audio: bytes::Bytes,
        /// Its name; providers tell the format from the extension.
        file_name: String,
        /// Its MIME type.
        mime: String,
        /// The transcript or the classified failure.
        reply: RpcReplyPort<Result<Transcript, LlmError>>,
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
        let model = stored_model(&args.directory).await?;
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
            LlmPoolMsg::Transcribe {
                audio,
                file_name,
                mime,
                reply,
            } => on_transcribe(state, audio, file_name, mime, reply),
            LlmPoolMsg::ReloadModel => match stored_model(&state.directory).await {
                Ok(model) => state.model = model,
                Err(error) => {
                    tracing::warn!(class = error.class(), %error, "default model not reloaded; kept");
                }
            },
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
    /// the configured one. Not for a prompt with images, which goes to
    /// each provider's vision model.
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
        let with_images = messages.iter().any(|message| !message.images().is_empty());
        // Each provider the prompt may go to, in order, with its model
        // (`None`: the provider's own).
        let route: Vec<(usize, Option<&str>)> = if with_images {
            providers
                .iter()
                .enumerate()
                .filter_map(|(index, provider)| Some((index, Some(provider.vision_model()?))))
                .collect()
        } else {
            (0..providers.len())
                .map(|index| (index, if index == 0 { model.as_deref() } else { None }))
                .collect()
        };
        let result = if route.is_empty() {
            tracing::debug!("a prompt with images, and no provider can see images");
            Err(LlmError::NoVision)
        } else {
            match tokio::time::timeout(config.queue_timeout, slots.acquire_owned()).await {
                Ok(Ok(_slot)) => {
                    let call = Call {
                        messages: &messages,
                        temperature,
                        stream: stream.as_ref(),
                        deadline,
                    };
                    complete_with_fallback(&providers, &route, &directory, &config, &health, call)
                        .await
                }
                // The semaphore is never closed; treat it like a missing pool.
                Ok(Err(_closed)) => Err(LlmError::PoolUnavailable),
                Err(_elapsed) => Err(LlmError::Overloaded),
            }
        };
        // The caller may have given up (its session stopped): nothing to do.
        let _ = reply.send(result);
    });
}

fn on_transcribe(
    state: &LlmPoolState,
    audio: bytes::Bytes,
    file_name: String,
    mime: String,
    reply: RpcReplyPort<Result<Transcript, LlmError>>,
) {
    let providers = Arc::clone(&state.providers);
    let slots = Arc::clone(&state.slots);
    let config = Arc::clone(&state.config);
    let directory = state.directory.clone();
    let health = Arc::clone(&state.health);
    tokio::spawn(async move {
        // One transcription may take transcription_timeout: a bound below
        // it would cut every slow one short.
        let deadline = Instant::now() + config.fallback_after.max(config.transcription_timeout);
        let route: Vec<usize> = providers
            .iter()
            .enumerate()
            .filter(|(_, provider)| provider.transcription_model().is_some())
            .map(|(index, _)| index)
            .collect();
        let result = if route.is_empty() {
            tracing::debug!("audio to transcribe, and no provider transcribes");
            Err(LlmError::NoTranscription)
        } else {
            match tokio::time::timeout(config.queue_timeout, slots.acquire_owned()).await {
                Ok(Ok(_slot)) => {
                    let (audio, file_name, mime) = (&audio, file_name.as_str(), mime.as_str());
                    let providers = &*providers;
                    let retry = &config.retry;
                    let limits = Limits {
                        deadline,
                        call_timeout: config.transcription_timeout,
                    };
                    with_fallback(providers, &route, &directory, &health, limits, |_, provider| {
                        let model = provider.transcription_model().unwrap_or_default();
                        async move {
                            let (result, attempts) = provider
                                .transcribe_with_retries(
                                    audio.clone(),
                                    file_name,
                                    mime,
                                    model,
                                    retry,
                                    deadline,
                                )
                                .await;
                            metrics::counter!("llmgram_llm_requests_total", "provider" => provider.name().to_owned())
                                .increment(u64::from(attempts));
                            // Its time follows the audio's length, not the
                            // provider's health (a hung call still fails,
                            // at transcription_timeout).
                            (result, attempts, Duration::ZERO)
                        }
                    })
                    .await
                }
                // The semaphore is never closed; treat it like a missing pool.
                Ok(Err(_closed)) => Err(LlmError::PoolUnavailable),
                Err(_elapsed) => Err(LlmError::Overloaded),
            }
        };
        let _ = reply.send(result);
    });
}

/// One request's prompt and limits.
struct Call<'a> {
    messages: &'a [ChatMessage],
    temperature: Option<f32>,
    stream: Option<&'a StreamTo>,
    deadline: Instant,
}

/// A prompt through [`with_fallback`], each provider called with its model
/// of `route`.
async fn complete_with_fallback(
    providers: &[LlmClient],
    route: &[(usize, Option<&str>)],
    directory: &Directory,
    config: &LlmConfig,
    health: &crate::ops::Health,
    call: Call<'_>,
) -> Result<Completion, LlmError> {
    let Call {
        messages,
        temperature,
        stream,
        deadline,
    } = call;
    let order: Vec<usize> = route.iter().map(|&(index, _)| index).collect();
    let limits = Limits {
        deadline,
        call_timeout: config.request_timeout,
    };
    with_fallback(providers, &order, directory, health, limits, |index, provider| {
        let model = route
            .iter()
            .find(|&&(at, _)| at == index)
            .and_then(|&(_, model)| model);
        async move {
            let started = Instant::now();
            let (result, attempts) = provider
                .complete_with_retries(
                    messages,
                    CallOptions {
                        model,
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
                "model" => model.unwrap_or(provider.model()).to_owned()
            )
            .record(elapsed.as_secs_f64());
            // A stream is as slow as its first text.
            let duration = result
                .as_ref()
                .ok()
                .and_then(|completion| completion.first_text_after)
                .unwrap_or(elapsed);
            (result, attempts, duration)
        }
    })
    .await
}

/// The time bounds of one request through [`with_fallback`].
#[derive(Clone, Copy)]
struct Limits {
    /// When the caller gets [`LlmError::NoProvider`] at the latest.
    deadline: Instant,
    /// One call's own time limit: a probe admitted later than
    /// `deadline - call_timeout` could not finish.
    call_timeout: Duration,
}

/// Tries the providers of `route` (indices into `providers`, in order) with
/// `call` (given the index and the provider), each guarded by its breaker, until one succeeds: first every
/// provider whose breaker admits a call now; then, if none succeeded, waits
/// for the probe of the open breaker that probes first. `call` returns the
/// result, the calls made, and the duration the breaker judges.
async fn with_fallback<'p, T, F, Fut>(
    providers: &'p [LlmClient],
    route: &[usize],
    directory: &Directory,
    health: &crate::ops::Health,
    limits: Limits,
    mut call: F,
) -> Result<T, LlmError>
where
    F: FnMut(usize, &'p LlmClient) -> Fut,
    Fut: Future<Output = (Result<T, LlmError>, u32, Duration)>,
{
    let Limits {
        deadline,
        call_timeout,
    } = limits;
    let mut retry_in: Option<Duration> = None;
    let mut last = None;
    // A probe admitted later than this could not finish before the deadline
    // (and, cut short, would count as a failure against the provider).
    let latest_start = deadline.checked_sub(call_timeout).unwrap_or(deadline);
    let mut soonest: Option<(usize, Duration)> = None;
    let mut candidates: Vec<(usize, bool)> = route.iter().map(|&index| (index, false)).collect();
    let mut next = 0;
    loop {
        if next == route.len()
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
        let (result, attempts, duration) = call(index, provider).await;
        breaker.record(CallOutcome {
            failed: result
                .as_ref()
                .err()
                .is_some_and(LlmError::counts_against_provider),
            duration,
        });
        match result {
            Ok(value) => {
                tracing::debug!(provider = provider.name(), attempts, "answered");
                if let Some(slot) = health.provider_ok_ms.get(index) {
                    crate::ops::Health::stamp(slot);
                }
                return Ok(value);
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

/// The default model an admin chose, as stored; `None` if none.
async fn stored_model(directory: &Directory) -> Result<Option<Arc<str>>, StoreError> {
    Ok(
        match directory
            .persistence()
            .load_setting(BotKey::DefaultModel)
            .await?
        {
            Some(BotSetting::DefaultModel(model)) => Some(Arc::from(model.as_str())),
            _ => None,
        },
    )
}
