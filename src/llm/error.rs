//! Classified LLM call failures. The class decides what happens next: whether
//! the call is retried, whether it counts against the provider's circuit
//! breaker, and which reply the user gets.

use std::time::Duration;

use crate::error::error_chain;

/// Which phase of a request ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Establishing the TCP/TLS connection (`llm.connect_timeout`).
    Connect,
    /// Waiting for or reading the answer (`llm.request_timeout`).
    Read,
}

/// A failed chat-completion or transcription call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// DNS resolution or the TCP connection failed: nothing reached the
    /// provider.
    #[error("cannot connect to the provider: {0}")]
    Connect(String),
    /// The TLS handshake failed (certificate, protocol): usually a wrong URL
    /// or an intercepting proxy, so it is not retried.
    #[error("TLS failure talking to the provider: {0}")]
    Tls(String),
    /// No connection or no complete answer in time.
    #[error("the provider did not answer in time ({0:?})")]
    Timeout(TimeoutPhase),
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
    /// The provider's body is larger than `llm.max_response_bytes` before
    /// any answer could be read from it. Not retried: the same request
    /// would most likely bring the same flood.
    #[error("the provider's response exceeds {limit} bytes")]
    TooLarge {
        /// `llm.max_response_bytes`.
        limit: usize,
    },
    /// Another network failure while sending or reading.
    #[error("network error: {0}")]
    Network(String),
    /// No free slot in the pool within `llm.queue_timeout`.
    #[error("no free LLM slot in time")]
    Overloaded,
    /// The pool actor was not there to take the request (it was restarting).
    #[error("the LLM pool is unavailable")]
    PoolUnavailable,
    /// A streamed answer broke after part of it had been shown: it cannot
    /// be retried or moved to another provider without showing the user a
    /// second, different answer.
    #[error("the stream broke midway: {0}")]
    StreamCut(Box<LlmError>),
    /// The caller stopped reading a streamed answer (the user cancelled):
    /// the call ends, nothing is retried, and the provider is not blamed.
    #[error("the answer is no longer wanted")]
    Abandoned,
    /// The prompt carries images and no provider can see images (none has
    /// a vision model). The session avoids asking; this is the safety net.
    #[error("no provider can see images")]
    NoVision,
    /// Audio to transcribe and no provider has a transcription model.
    #[error("no provider can transcribe audio")]
    NoTranscription,
    /// Every provider's circuit breaker is open or every provider failed;
    /// `retry_in` is when the first breaker lets a call through again.
    #[error("no provider can answer now (retry in {retry_in:?})")]
    NoProvider {
        /// Time until a provider may be tried again, when known.
        retry_in: Option<Duration>,
        /// The last provider error, if any provider was tried.
        last: Option<Box<LlmError>>,
    },
}

impl LlmError {
    /// Every value [`class`](Self::class) returns, so the error counters can
    /// start at zero for each (an alert on their rate sees 0, not "no data").
    pub const CLASSES: [&'static str; 17] = [
        "connect",
        "tls",
        "connect_timeout",
        "read_timeout",
        "rate_limited",
        "server",
        "rejected",
        "invalid_response",
        "too_large",
        "network",
        "overloaded",
        "pool_unavailable",
        "no_provider",
        "stream_cut",
        "abandoned",
        "no_vision",
        "no_transcription",
    ];

    /// A short stable name for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Tls(_) => "tls",
            Self::TooLarge { .. } => "too_large",
            Self::Timeout(TimeoutPhase::Connect) => "connect_timeout",
            Self::Timeout(TimeoutPhase::Read) => "read_timeout",
            Self::RateLimited { .. } => "rate_limited",
            Self::Server { .. } => "server",
            Self::Rejected { .. } => "rejected",
            Self::InvalidResponse(_) => "invalid_response",
            Self::Network(_) => "network",
            Self::Overloaded => "overloaded",
            Self::PoolUnavailable => "pool_unavailable",
            Self::NoProvider { .. } => "no_provider",
            Self::StreamCut(_) => "stream_cut",
            Self::Abandoned => "abandoned",
            Self::NoVision => "no_vision",
            Self::NoTranscription => "no_transcription",
        }
    }

    /// Whether the same request may succeed if sent again shortly: network
    /// trouble, timeouts, 429, 5xx and garbage bodies. TLS failures and other
    /// 4xx are configuration or request errors.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Connect(_)
                | Self::Timeout(_)
                | Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::InvalidResponse(_)
                | Self::Network(_)
        )
    }

    /// Whether the failure says the provider is unhealthy (counts against
    /// its circuit breaker). A 4xx for one request (too long, bad input) does
    /// not; a rejected key or unknown model (401, 403, 404) does, so traffic
    /// moves to a fallback that works.
    pub fn counts_against_provider(&self) -> bool {
        match self {
            Self::Rejected { status, .. } => matches!(status, 401 | 403 | 404),
            Self::Overloaded
            | Self::PoolUnavailable
            | Self::NoProvider { .. }
            | Self::NoVision
            | Self::NoTranscription
            | Self::Abandoned => false,
            _ => true,
        }
    }

    /// The provider's requested wait, for a 429.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

impl From<reqwest::Error> for LlmError {
    fn from(error: reqwest::Error) -> Self {
        let chain = error_chain(&error);
        if error.is_timeout() {
            if error.is_connect() {
                Self::Timeout(TimeoutPhase::Connect)
            } else {
                Self::Timeout(TimeoutPhase::Read)
            }
        } else if error.is_connect() {
            if looks_like_tls(&chain) {
                Self::Tls(chain)
            } else {
                Self::Connect(chain)
            }
        } else if error.is_decode() || error.is_body() {
            Self::InvalidResponse(chain)
        } else {
            Self::Network(chain)
        }
    }
}

/// reqwest reports a failed TLS handshake as a connect error; the cause
/// chain names rustls' complaint.
fn looks_like_tls(chain: &str) -> bool {
    let lower = chain.to_ascii_lowercase();
    [
        "tls",
        "certificate",
        "handshake",
        "invalidcontenttype",
        "corrupt message",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_and_breaker_rules() {
        assert!(LlmError::Server { status: 502 }.is_retryable());
        assert!(LlmError::RateLimited { retry_after: None }.is_retryable());
        assert!(LlmError::Timeout(TimeoutPhase::Read).is_retryable());
        assert!(!LlmError::Tls("bad cert".into()).is_retryable());
        let unauthorized = LlmError::Rejected {
            status: 401,
            detail: String::new(),
        };
        assert!(!unauthorized.is_retryable());
        assert!(unauthorized.counts_against_provider());
        let too_long = LlmError::Rejected {
            status: 400,
            detail: String::new(),
        };
        assert!(!too_long.counts_against_provider());
        assert!(!LlmError::Overloaded.counts_against_provider());
        for missing in [LlmError::NoVision, LlmError::NoTranscription] {
            assert!(!missing.is_retryable());
            assert!(!missing.counts_against_provider());
        }
    }

    #[test]
    fn classes_lists_every_class_once() {
        let every = [
            LlmError::Connect(String::new()),
            LlmError::Tls(String::new()),
            LlmError::Timeout(TimeoutPhase::Connect),
            LlmError::Timeout(TimeoutPhase::Read),
            LlmError::RateLimited { retry_after: None },
            LlmError::Server { status: 500 },
            LlmError::Rejected {
                status: 400,
                detail: String::new(),
            },
            LlmError::InvalidResponse(String::new()),
            LlmError::TooLarge { limit: 1 },
            LlmError::Network(String::new()),
            LlmError::Overloaded,
            LlmError::PoolUnavailable,
            LlmError::NoProvider {
                retry_in: None,
                last: None,
            },
            LlmError::StreamCut(Box::new(LlmError::Overloaded)),
            LlmError::Abandoned,
            LlmError::NoVision,
            LlmError::NoTranscription,
        ];
        let classes: Vec<&str> = every.iter().map(LlmError::class).collect();
        assert_eq!(classes, LlmError::CLASSES);
    }
}
