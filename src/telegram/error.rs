//! Classified Bot API errors: what the outbox retries, waits on, or gives up on.

use std::time::Duration;

use teloxide::{ApiError, RequestError};

use crate::error::error_chain;

/// A failed Bot API call, classified by what the caller should do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TelegramError {
    /// 429: Telegram asks to wait before the next call.
    #[error("flood limit: retry after {0:?}")]
    RetryAfter(Duration),
    /// The request could not reach Telegram or the connection broke; retryable.
    #[error("network error: {0}")]
    Network(String),
    /// No answer within the send timeout; retryable.
    #[error("timed out")]
    Timeout,
    /// Telegram rejected the request (4xx such as "message is too long", or
    /// "bot was blocked by the user"); retrying the same request cannot help.
    #[error("rejected by the Bot API: {0}")]
    Rejected(String),
    /// The message to edit is gone (deleted by the user) or can no longer be
    /// edited (too old): a definite refusal, after which its text may go as
    /// a new message without showing it twice.
    #[error("the message cannot be edited: {0}")]
    NotEditable(String),
    /// The answer could not be parsed; the call may or may not have happened.
    #[error("invalid answer from the Bot API: {0}")]
    InvalidAnswer(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// Storing received updates failed; polling retries the same batch.
    #[error("cannot store received updates: {0}")]
    Store(crate::store::StoreError),
    /// 403: the user blocked the bot. Nothing more can be sent to the chat
    /// until the user writes again.
    #[error("the user blocked the bot")]
    Blocked,
    /// The outbox did not answer (it was restarting); the caller may resend.
    #[error("the outbox is unavailable")]
    OutboxUnavailable,
    /// The console front could not write the answer (stdout closed).
    #[error("cannot write to the console: {0}")]
    Console(String),
    /// The front end does not offer the method (a Bot API server older
    /// than it, or a chat where it is not allowed): use another way
    /// (`sendMessageDraft` falls back to editing a message).
    #[error("not supported here: {0}")]
    Unsupported(String),
    /// This instance's lease on the shared database is not known to be
    /// valid (`storage.postgres.send_margin`): nothing is sent, and the turn
    /// is left unanswered for the chat's owner.
    #[error("not sent: this instance's lease is not known to be valid")]
    LeaseLost,
}

impl TelegramError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RetryAfter(_)
                | Self::Network(_)
                | Self::Timeout
                | Self::Store(_)
                | Self::OutboxUnavailable
        )
    }

    /// A short stable name for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Self::RetryAfter(_) => "retry_after",
            Self::Network(_) => "network",
            Self::Timeout => "timeout",
            Self::Rejected(_) => "rejected",
            Self::NotEditable(_) => "not_editable",
            Self::InvalidAnswer(_) => "invalid_answer",
            Self::Client(_) => "client",
            Self::Store(_) => "store",
            Self::Blocked => "blocked",
            Self::OutboxUnavailable => "outbox_unavailable",
            Self::Console(_) => "console",
            Self::Unsupported(_) => "unsupported",
            Self::LeaseLost => "lease_lost",
        }
    }
}

impl From<RequestError> for TelegramError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::RetryAfter(seconds) => {
                Self::RetryAfter(Duration::from_secs(u64::from(seconds.seconds())))
            }
            RequestError::Network(e) if e.is_timeout() => Self::Timeout,
            RequestError::Network(e) => Self::Network(error_chain(&*e)),
            RequestError::Io(e) => Self::Network(error_chain(&*e)),
            RequestError::InvalidJson { source, .. } => Self::InvalidAnswer(source.to_string()),
            RequestError::Api(ApiError::BotBlocked | ApiError::UserDeactivated) => Self::Blocked,
            RequestError::Api(
                api @ (ApiError::MessageToEditNotFound
                | ApiError::MessageCantBeEdited
                | ApiError::MessageIdInvalid),
            ) => Self::NotEditable(api.to_string()),
            RequestError::Api(api) => Self::Rejected(api.to_string()),
            RequestError::MigrateToChatId(chat) => {
                Self::Rejected(format!("group migrated to supergroup {chat}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_definite_refusal_of_an_edit_is_not_editable() {
        for api in [
            ApiError::MessageToEditNotFound,
            ApiError::MessageCantBeEdited,
            ApiError::MessageIdInvalid,
        ] {
            let error = TelegramError::from(RequestError::Api(api));
            assert_eq!(error.class(), "not_editable", "{error}");
            assert!(!error.is_retryable());
        }
        let error = TelegramError::from(RequestError::Api(ApiError::MessageTextIsEmpty));
        assert_eq!(error.class(), "rejected");
    }
}
