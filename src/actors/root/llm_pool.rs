//! LLM pool: every chat-completion request goes through here, at most
//! `llm.max_concurrency` at a time, over one pooled HTTP client.
//!
//! - **Supervised by:** root, permanent.
//! - **Messages:** [`LlmPoolMsg::Complete`] — a prompt in, an answer or a
//!   classified [`LlmError`] out.
//! - **State:** the shared [`LlmClient`] and the request slots, both created
//!   once by `app` so they outlive restarts of this actor.
//! - **Concurrency:** the handler never awaits a request. Each request runs in
//!   its own task that first takes a slot (waiting at most
//!   `llm.queue_timeout`, else [`LlmError::Overloaded`]), so one slow request
//!   never holds up another and the mailbox drains at once. A factory of
//!   worker actors would add a hop and a second queue for no gain: the slots
//!   are the bound, the tasks are the workers.
//! - **Failures:** call errors are values returned to the session, which logs
//!   them once. If this actor dies, requests already running still answer
//!   their callers (the tasks own the reply ports); requests in its mailbox
//!   are lost, their callers see the reply port dropped and send again to the
//!   restarted pool.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::Semaphore;

use super::Deps;
use crate::llm::{ChatMessage, Completion, LlmClient, LlmError};

/// Messages of the LLM pool.
pub enum LlmPoolMsg {
    /// Answer this prompt.
    Complete {
        /// System prompt, history and the new user message.
        messages: Vec<ChatMessage>,
        /// The answer or the classified failure.
        reply: RpcReplyPort<Result<Completion, LlmError>>,
    },
}

/// The LLM pool actor.
pub struct LlmPool;

/// The pool's state.
pub struct LlmPoolState {
    client: LlmClient,
    slots: Arc<Semaphore>,
    queue_timeout: Duration,
}

impl Actor for LlmPool {
    type Msg = LlmPoolMsg;
    type State = LlmPoolState;
    type Arguments = Deps;

    async fn pre_start(
        &self,
        _myself: ActorRef<LlmPoolMsg>,
        deps: Deps,
    ) -> Result<LlmPoolState, ActorProcessingErr> {
        tracing::debug!(
            model = deps.llm.model(),
            slots = deps.config.llm.max_concurrency,
            "llm pool started"
        );
        Ok(LlmPoolState {
            client: deps.llm,
            slots: deps.llm_slots,
            queue_timeout: deps.config.llm.queue_timeout,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LlmPoolMsg>,
        message: LlmPoolMsg,
        state: &mut LlmPoolState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LlmPoolMsg::Complete { messages, reply } => on_complete(state, messages, reply),
        }
        Ok(())
    }
}

fn on_complete(
    state: &LlmPoolState,
    messages: Vec<ChatMessage>,
    reply: RpcReplyPort<Result<Completion, LlmError>>,
) {
    let client = state.client.clone();
    let slots = Arc::clone(&state.slots);
    let queue_timeout = state.queue_timeout;
    tokio::spawn(async move {
        let result = match tokio::time::timeout(queue_timeout, slots.acquire_owned()).await {
            Ok(Ok(_slot)) => client.complete(&messages).await,
            // The semaphore is never closed; treat it like a missing pool.
            Ok(Err(_closed)) => Err(LlmError::PoolUnavailable),
            Err(_elapsed) => Err(LlmError::Overloaded),
        };
        // The caller may have given up (its session stopped): nothing to do.
        let _ = reply.send(result);
    });
}
