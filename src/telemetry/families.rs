//! Every metric family the service exports, described and started at zero
//! when the service starts.
//!
//! The `metrics` facade creates a series on its first event, so without this
//! a fresh process shows only the families something already happened to,
//! and an alert such as `rate(llmgram_llm_errors_total[10m]) > 0` sees "no
//! data" rather than 0. [`register`] describes each family (`# HELP`) and
//! touches every series whose label values are known at start (providers,
//! error classes, actor names, rejection reasons, security event kinds) with
//! a zero increment, which never disturbs a value another service in the same
//! process (the tests run several) already counted.
//!
//! README's "Metrics" table lists the same families; a test compares it with
//! `/metrics` of a freshly started binary.

use metrics::Unit;

use crate::llm::LlmError;

/// A family's kind, as Prometheus shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// One metric family.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// Its name, as exported.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The unit, when it has one.
    pub unit: Option<Unit>,
    /// The `# HELP` text.
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, help: &'static str) -> Family {
    Family {
        name,
        kind,
        unit: None,
        help,
    }
}

const fn seconds(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        help,
    }
}

/// Updates received from Telegram (polled or delivered by webhook).
pub const UPDATES_RECEIVED: &str = "llmgram_updates_received_total";
/// Messages sent to Telegram.
pub const REPLIES_SENT: &str = "llmgram_replies_sent_total";
/// Edits of messages already sent (streamed answers).
pub const MESSAGE_EDITS: &str = "llmgram_message_edits_total";
/// Drafts shown (`sendMessageDraft`, streamed answers in private chats).
pub const MESSAGE_DRAFTS: &str = "llmgram_message_drafts_total";
/// Chats whose user blocked the bot (403 on send).
pub const CHATS_BLOCKED: &str = "llmgram_chats_blocked_total";
/// Telegram 429 answers waited out.
pub const FLOOD_WAITS: &str = "llmgram_telegram_flood_waits_total";
/// Reply latency from arrival to the answer's delivery.
pub const REPLY_LATENCY: &str = "llmgram_reply_latency_seconds";
/// LLM HTTP requests, per provider.
pub const LLM_REQUESTS: &str = "llmgram_llm_requests_total";
/// Failed LLM requests, per provider and error class.
pub const LLM_ERRORS: &str = "llmgram_llm_errors_total";
/// Transcriptions of audio, per provider and outcome.
pub const TRANSCRIPTIONS: &str = "llmgram_transcriptions_total";
/// LLM call latency, per provider and model.
pub const LLM_LATENCY: &str = "llmgram_llm_latency_seconds";
/// Tokens spent (prompt and completion).
pub const LLM_TOKENS: &str = "llmgram_llm_tokens_total";
/// Breaker state per provider: 0 closed, 1 half open, 2 open.
pub const BREAKER_STATE: &str = "llmgram_breaker_state";
/// Breaker transitions, per provider and new state.
pub const BREAKER_TRANSITIONS: &str = "llmgram_breaker_transitions_total";
/// Session actors alive.
pub const SESSIONS_ACTIVE: &str = "llmgram_sessions_active";
/// Sessions evicted for idleness.
pub const SESSION_EVICTIONS: &str = "llmgram_session_evictions_total";
/// Restarts of supervised actors, per actor.
pub const ACTOR_RESTARTS: &str = "llmgram_actor_restarts_total";
/// Messages refused by a rate limit.
pub const RATE_LIMITED: &str = "llmgram_rate_limited_total";
/// Inputs refused before the LLM, per reason.
pub const REJECTED_INPUTS: &str = "llmgram_rejected_inputs_total";
/// Security events, per kind.
pub const SECURITY_EVENTS: &str = "llmgram_security_events_total";
/// Messages merged into an earlier one of the same burst.
pub const MERGED_MESSAGES: &str = "llmgram_merged_messages_total";
/// Duration of one store commit (a group of writes).
pub const STORE_COMMIT: &str = "llmgram_store_commit_seconds";
/// Requests in one store commit.
pub const STORE_BATCH: &str = "llmgram_store_batch_size";

/// Shared store: turns not sent or not committed because another instance
/// owns the chat, per where it was found (`load`, `send`, `commit`).
pub const CLUSTER_FENCED: &str = "llmgram_cluster_fenced_total";
/// Shared store: lease renewals, per outcome (`renewed`, `failed`).
pub const CLUSTER_RENEWALS: &str = "llmgram_cluster_renewals_total";
/// Shared store: unanswered updates a sweep handed to this instance's
/// sessions (hand-overs and take-overs).
pub const CLUSTER_SWEPT: &str = "llmgram_cluster_swept_total";

/// Connections a listener closed, per listener and reason.
pub const CONNECTIONS_CLOSED: &str = "llmgram_connections_closed_total";

/// Requests waiting for an open breaker's next probe, per provider.
pub const BREAKER_WAITING: &str = "llmgram_breaker_waiting";
/// Requests that waited for a global limit's slot, per limit.
pub const LIMIT_QUEUED: &str = "llmgram_limit_queued_total";
/// Requests refused by a global limit (wait or queue bound), per limit.
pub const LIMIT_REFUSED: &str = "llmgram_limit_refused_total";
/// Requests waiting for a global limit's slot now, per limit.
pub const LIMIT_WAITING: &str = "llmgram_limit_waiting";
/// Time waited for a global limit's slot, per limit.
pub const LIMIT_WAIT: &str = "llmgram_limit_wait_seconds";

/// Updates that could not be read, skipped and confirmed, per reason.
pub const UPDATES_SKIPPED: &str = "llmgram_updates_skipped_total";

/// File downloads for media messages, per outcome.
pub const MEDIA_DOWNLOADS: &str = "llmgram_media_downloads_total";
/// Media messages answered, per kind and outcome.
pub const MEDIA_MESSAGES: &str = "llmgram_media_messages_total";
/// Telegram Business fan messages the bot was to answer automatically, per
/// outcome.
pub const BUSINESS_AUTO: &str = "llmgram_business_auto_total";
/// Telegram Business suggestions (`draft` mode), per outcome.
pub const BUSINESS_DRAFTS: &str = "llmgram_business_drafts_total";

/// Every family, in the order README's table lists them.
pub const FAMILIES: &[Family] = &[
    family(
        UPDATES_RECEIVED,
        Kind::Counter,
        "Updates received from Telegram.",
    ),
    family(
        UPDATES_SKIPPED,
        Kind::Counter,
        "Updates that could not be read, skipped and confirmed, per reason.",
    ),
    family(REPLIES_SENT, Kind::Counter, "Messages sent to Telegram."),
    family(
        MESSAGE_EDITS,
        Kind::Counter,
        "Edits of sent messages (streamed answers).",
    ),
    family(
        MESSAGE_DRAFTS,
        Kind::Counter,
        "Drafts shown (streamed answers in private chats).",
    ),
    family(
        CHATS_BLOCKED,
        Kind::Counter,
        "Sends refused because the user blocked the bot.",
    ),
    family(
        FLOOD_WAITS,
        Kind::Counter,
        "Telegram 429 answers waited out before sending again.",
    ),
    seconds(
        REPLY_LATENCY,
        "From an update's arrival to its answer's delivery.",
    ),
    family(
        LLM_REQUESTS,
        Kind::Counter,
        "LLM HTTP requests, retries included, per provider.",
    ),
    family(
        LLM_ERRORS,
        Kind::Counter,
        "Failed LLM requests per provider and error class.",
    ),
    seconds(
        LLM_LATENCY,
        "LLM call duration (retries included) per provider and model.",
    ),
    family(
        TRANSCRIPTIONS,
        Kind::Counter,
        "Audio transcriptions per provider and outcome (ok, empty, failed).",
    ),
    family(
        LLM_TOKENS,
        Kind::Counter,
        "Tokens spent, prompt and completion.",
    ),
    family(
        BREAKER_STATE,
        Kind::Gauge,
        "Circuit breaker state per provider: 0 closed, 1 half open, 2 open.",
    ),
    family(
        BREAKER_TRANSITIONS,
        Kind::Counter,
        "Circuit breaker transitions per provider and new state.",
    ),
    family(
        BREAKER_WAITING,
        Kind::Gauge,
        "Requests waiting for an open breaker's next probe, per provider.",
    ),
    family(SESSIONS_ACTIVE, Kind::Gauge, "Session actors alive."),
    family(
        SESSION_EVICTIONS,
        Kind::Counter,
        "Sessions evicted after being idle.",
    ),
    family(
        ACTOR_RESTARTS,
        Kind::Counter,
        "Restarts of supervised actors, per actor.",
    ),
    family(
        RATE_LIMITED,
        Kind::Counter,
        "Messages or requests refused by a rate limit.",
    ),
    family(
        LIMIT_QUEUED,
        Kind::Counter,
        "Requests that waited for a global limit's slot, per limit.",
    ),
    family(
        LIMIT_REFUSED,
        Kind::Counter,
        "Requests a global limit refused (wait or queue bound), per limit.",
    ),
    family(
        LIMIT_WAITING,
        Kind::Gauge,
        "Requests waiting for a global limit's slot now, per limit.",
    ),
    seconds(
        LIMIT_WAIT,
        "Time waited for a global limit's slot, per limit.",
    ),
    family(
        REJECTED_INPUTS,
        Kind::Counter,
        "Inputs refused before reaching the LLM, per reason.",
    ),
    family(SECURITY_EVENTS, Kind::Counter, "Security events, per kind."),
    family(
        MERGED_MESSAGES,
        Kind::Counter,
        "Messages merged into an earlier one of the same burst.",
    ),
    seconds(STORE_COMMIT, "Duration of one group commit of the store."),
    family(
        STORE_BATCH,
        Kind::Histogram,
        "Requests served by one group commit of the store.",
    ),
    family(
        CLUSTER_FENCED,
        Kind::Counter,
        "Turns dropped because another instance owns the chat, per where (load, send, commit).",
    ),
    family(
        CLUSTER_RENEWALS,
        Kind::Counter,
        "Lease renewals on the shared database, per outcome.",
    ),
    family(
        CLUSTER_SWEPT,
        Kind::Counter,
        "Unanswered updates handed to this instance by a sweep (hand-overs, take-overs).",
    ),
    family(
        CONNECTIONS_CLOSED,
        Kind::Counter,
        "Connections the ops or webhook listener closed, per reason.",
    ),
    family(
        MEDIA_MESSAGES,
        Kind::Counter,
        "Media messages handled, per kind and outcome.",
    ),
    family(
        MEDIA_DOWNLOADS,
        Kind::Counter,
        "File downloads from Telegram, per outcome.",
    ),
    family(
        BUSINESS_AUTO,
        Kind::Counter,
        "Business fan messages due an automatic answer, per outcome.",
    ),
    family(
        BUSINESS_DRAFTS,
        Kind::Counter,
        "Business suggestions shown to creators and what became of them, per outcome.",
    ),
];

/// What became of a fan message due an automatic answer (`outcome` label
/// of [`BUSINESS_AUTO`]).
pub const BUSINESS_AUTO_OUTCOMES: &[&str] = &[
    "answered",
    "creator_answered",
    "stopped",
    "not_answered",
    "refused",
];

/// What became of a suggestion (`outcome` label of [`BUSINESS_DRAFTS`]).
pub const BUSINESS_DRAFT_OUTCOMES: &[&str] = &[
    "suggested",
    "failed",
    "sent",
    "sent_own",
    "not_sent",
    "skipped",
    "outdated",
];

/// What a media message was (`kind` label of [`MEDIA_MESSAGES`]).
pub const MEDIA_KINDS: &[&str] = &[
    "photo",
    "voice",
    "audio",
    "video_note",
    "document",
    "unsupported",
];

/// How a media message ended (`outcome` label of [`MEDIA_MESSAGES`]).
pub const MEDIA_OUTCOMES: &[&str] = &[
    "answered",
    "too_big",
    "too_long",
    "download_failed",
    "unreadable",
    "no_vision",
    "no_transcription",
    "transcription_failed",
    "nothing_heard",
    "unsupported",
    "busy",
];

/// Outcomes of a download (`outcome` label of [`MEDIA_DOWNLOADS`]).
pub const DOWNLOAD_OUTCOMES: &[&str] = &[
    "ok",
    "too_big",
    "not_found",
    "failed",
    "no_source",
    "reader",
];

/// The global limits that queue (`limit` label of [`LIMIT_QUEUED`] and its
/// siblings).
pub const GLOBAL_LIMITS: &[&str] = &["llm_calls", "new_chats"];

/// Why an update was skipped (`reason` label of [`UPDATES_SKIPPED`]).
pub const SKIP_REASONS: &[&str] = &["unparseable", "unknown_kind", "not_an_update"];

/// The HTTP listeners (`listener` label of [`CONNECTIONS_CLOSED`]).
pub const LISTENERS: &[&str] = &["ops", "webhook"];

/// Why a listener closes a connection (`reason` label of
/// [`CONNECTIONS_CLOSED`]).
pub const CLOSE_REASONS: &[&str] = &[
    "connection_cap",
    "header_timeout",
    "request_timeout",
    "shutdown",
];

/// Reasons an input is refused before the LLM (`reason` label of
/// [`REJECTED_INPUTS`]).
pub const REJECT_REASONS: &[&str] = &["empty", "too_long"];

/// The states a breaker moves to (`to` label of [`BREAKER_TRANSITIONS`]).
pub const BREAKER_STATES: &[&str] = &["closed", "half_open", "open"];

/// How a provider's transcription ended (`outcome` label of
/// [`TRANSCRIPTIONS`]): a transcript, one of nothing heard, or an error.
pub const TRANSCRIPTION_OUTCOMES: &[&str] = &["ok", "empty", "failed"];

/// Bucket bounds of [`STORE_BATCH`] (requests per commit).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// What is known at start about the label values.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    /// Each LLM provider's name and model, primary first.
    pub providers: &'a [(&'a str, &'a str)],
    /// The names of the supervised actors (`actor` label).
    pub actors: &'a [&'static str],
}

/// Describes every family and starts every known series at zero.
pub fn register(known: Known<'_>) {
    for family in FAMILIES {
        let name = family.name;
        let help = family.help;
        match (family.kind, family.unit) {
            (Kind::Counter, _) => metrics::describe_counter!(name, help),
            (Kind::Gauge, _) => metrics::describe_gauge!(name, help),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(name, unit, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(name, help),
        }
    }
    for name in [
        UPDATES_RECEIVED,
        REPLIES_SENT,
        MESSAGE_EDITS,
        MESSAGE_DRAFTS,
        CHATS_BLOCKED,
        FLOOD_WAITS,
        LLM_TOKENS,
        SESSION_EVICTIONS,
        RATE_LIMITED,
        MERGED_MESSAGES,
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!(SESSIONS_ACTIVE).increment(0.0);
    for name in [REPLY_LATENCY, STORE_COMMIT, STORE_BATCH] {
        // Registering is enough: the exporter shows an empty histogram.
        drop(metrics::histogram!(name));
    }
    for &(provider, model) in known.providers {
        let provider = provider.to_owned();
        metrics::counter!(LLM_REQUESTS, "provider" => provider.clone()).increment(0);
        for class in LlmError::CLASSES {
            metrics::counter!(LLM_ERRORS, "provider" => provider.clone(), "class" => class)
                .increment(0);
        }
        drop(metrics::histogram!(
            LLM_LATENCY,
            "provider" => provider.clone(),
            "model" => model.to_owned()
        ));
        for outcome in TRANSCRIPTION_OUTCOMES {
            metrics::counter!(TRANSCRIPTIONS, "provider" => provider.clone(), "outcome" => *outcome)
                .increment(0);
        }
        metrics::gauge!(BREAKER_WAITING, "provider" => provider.clone()).increment(0.0);
        // Every breaker starts closed (0).
        metrics::gauge!(BREAKER_STATE, "provider" => provider.clone()).increment(0.0);
        for to in BREAKER_STATES {
            metrics::counter!(BREAKER_TRANSITIONS, "provider" => provider.clone(), "to" => *to)
                .increment(0);
        }
    }
    for actor in known.actors {
        metrics::counter!(ACTOR_RESTARTS, "actor" => *actor).increment(0);
    }
    for reason in REJECT_REASONS {
        metrics::counter!(REJECTED_INPUTS, "reason" => *reason).increment(0);
    }
    for reason in SKIP_REASONS {
        metrics::counter!(UPDATES_SKIPPED, "reason" => *reason).increment(0);
    }
    for limit in GLOBAL_LIMITS {
        metrics::counter!(LIMIT_QUEUED, "limit" => *limit).increment(0);
        metrics::counter!(LIMIT_REFUSED, "limit" => *limit).increment(0);
        metrics::gauge!(LIMIT_WAITING, "limit" => *limit).increment(0.0);
        drop(metrics::histogram!(LIMIT_WAIT, "limit" => *limit));
    }
    for listener in LISTENERS {
        for reason in CLOSE_REASONS {
            metrics::counter!(CONNECTIONS_CLOSED, "listener" => *listener, "reason" => *reason)
                .increment(0);
        }
    }
    for kind in MEDIA_KINDS {
        for outcome in MEDIA_OUTCOMES {
            metrics::counter!(MEDIA_MESSAGES, "kind" => *kind, "outcome" => *outcome).increment(0);
        }
    }
    for outcome in DOWNLOAD_OUTCOMES {
        metrics::counter!(MEDIA_DOWNLOADS, "outcome" => *outcome).increment(0);
    }
    // Zero on fjall too: one alert rule fits either backend.
    for at in ["load", "send", "commit"] {
        metrics::counter!(CLUSTER_FENCED, "at" => at).increment(0);
    }
    for outcome in ["renewed", "failed"] {
        metrics::counter!(CLUSTER_RENEWALS, "outcome" => outcome).increment(0);
    }
    metrics::counter!(CLUSTER_SWEPT).increment(0);
    for outcome in BUSINESS_AUTO_OUTCOMES {
        metrics::counter!(BUSINESS_AUTO, "outcome" => *outcome).increment(0);
    }
    for outcome in BUSINESS_DRAFT_OUTCOMES {
        metrics::counter!(BUSINESS_DRAFTS, "outcome" => *outcome).increment(0);
    }
    for kind in super::SecurityKind::ALL {
        metrics::counter!(SECURITY_EVENTS, "kind" => kind.as_str()).increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_names_are_unique_and_prefixed() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        assert!(names.iter().all(|n| n.starts_with("llmgram_")));
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count);
    }
}
