//! Classified LLM call failures. The class decides what happens next: which
//! reply the user gets, and (with the resilience work) retries and the
//! circuit breaker.

use std::time::Duration;

use crate::error::error_chain;

/// A failed chat-completion call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// DNS, TCP or TLS failure: nothing reached the provider.
    #[error("cannot connect to the provider: {0}")]
    Connect(String),
    /// No complete answer within `llm.request_timeout`.
    #[error("the provider did not answer in time")]
    Timeout,
    /// HTTP 429.
    #[error("rate limited by the provider (retry after {retry_after:?})")]
    RateLimited {
        /// The provider's `Retry-After`, when given in seconds.
        retry_after: Option<Duration>,
    },
    /// HTTP 5xx.
    #[error("provider error: HTTP {status}")]
    Server {
        /// The status code.
        status: u16,
    },
    /// HTTP 4xx other than 429: a configuration or request error that retrying
    /// cannot fix (bad key, unknown model, prompt too long).
    #[error("request rejected: HTTP {status}: {detail}")]
    Rejected {
        /// The status code.
        status: u16,
        /// The start of the provider's error body.
        detail: String,
    },
    /// A 200 whose body is not valid JSON or holds no answer.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// Another network failure while sending or reading.
    #[error("network error: {0}")]
    Network(String),
    /// No free slot in the pool within `llm.queue_timeout`.
    #[error("no free LLM slot in time")]
    Overloaded,
    /// The pool actor was not there to take the request (it was restarting).
    #[error("the LLM pool is unavailable")]
    PoolUnavailable,
}

impl LlmError {
    /// A short stable name for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout => "timeout",
            Self::RateLimited { .. } => "rate_limited",
            Self::Server { .. } => "server",
            Self::Rejected { .. } => "rejected",
            Self::InvalidResponse(_) => "invalid_response",
            Self::Network(_) => "network",
            Self::Overloaded => "overloaded",
            Self::PoolUnavailable => "pool_unavailable",
        }
    }
}

impl From<reqwest::Error> for LlmError {
    fn from(error: reqwest::Error) -> Self {
        if error.is_timeout() {
            Self::Timeout
        } else if error.is_connect() {
            Self::Connect(error_chain(&error))
        } else if error.is_decode() || error.is_body() {
            Self::InvalidResponse(error_chain(&error))
        } else {
            Self::Network(error_chain(&error))
        }
    }
}
