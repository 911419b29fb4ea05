//! A stand-in for the Bot API behind [`Transport::Scripted`] (unit tests
//! only): records every call with the moment it was made (tokio's clock, so
//! a paused test clock shows the waits) and answers from a script, so actor
//! tests of the outbox run without a socket on a paused clock.
//!
//! [`Transport::Scripted`]: super::transport::Transport::Scripted

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use teloxide::types::MessageId;
use tokio::time::Instant;

use super::TelegramError;
use super::inbound::ChatId;

/// One call the outbox made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    /// The chat.
    pub(crate) chat_id: ChatId,
    /// `send`, `edit` or `typing`.
    pub(crate) method: &'static str,
    /// The text sent (empty for `typing`).
    pub(crate) text: String,
    /// When the call started.
    pub(crate) at: Instant,
    /// What it answered: the message id, or the error's class.
    pub(crate) outcome: Result<i32, &'static str>,
}

/// What the next call to a chat does.
#[derive(Debug)]
pub(crate) enum Step {
    /// Takes this long, then succeeds.
    Delay(Duration),
    /// Fails at once with this error.
    Fail(TelegramError),
}

/// The stand-in: a script per chat and the log of calls.
#[derive(Debug, Default)]
pub(crate) struct ScriptedApi {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    script: HashMap<ChatId, VecDeque<Step>>,
    calls: Vec<Call>,
    next_id: i32,
}

impl ScriptedApi {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::error::lock_unpoisoned(&self.state)
    }

    /// Queues what the next unscripted call to `chat_id` does.
    pub(crate) fn then(&self, chat_id: ChatId, step: Step) {
        self.lock()
            .script
            .entry(chat_id)
            .or_default()
            .push_back(step);
    }

    /// Every call so far, in the order they started.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The texts successfully sent (or edited) to `chat_id`, in order.
    pub(crate) fn texts(&self, chat_id: ChatId) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.chat_id == chat_id && c.method != "typing" && c.outcome.is_ok())
            .map(|c| c.text.clone())
            .collect()
    }

    /// Performs one call: follows the chat's script, records it.
    pub(crate) async fn call(
        &self,
        chat_id: ChatId,
        method: &'static str,
        text: &str,
        id: Option<MessageId>,
    ) -> Result<MessageId, TelegramError> {
        let at = Instant::now();
        // "typing…" follows no script: it comes and goes with timing.
        let step = match method {
            "typing" => None,
            _ => self
                .lock()
                .script
                .get_mut(&chat_id)
                .and_then(VecDeque::pop_front),
        };
        let outcome = match step {
            Some(Step::Fail(error)) => Err(error),
            Some(Step::Delay(wait)) => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
            None => Ok(()),
        };
        let mut state = self.lock();
        let outcome = outcome.map(|()| {
            id.unwrap_or_else(|| {
                state.next_id += 1;
                MessageId(state.next_id)
            })
        });
        state.calls.push(Call {
            chat_id,
            method,
            text: text.to_owned(),
            at,
            outcome: outcome
                .as_ref()
                .map(|id| id.0)
                .map_err(TelegramError::class),
        });
        outcome
    }
}
