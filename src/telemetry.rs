//! Logging: `tracing` with a non-blocking writer, pretty or JSON, and the
//! `log` records of teloxide and other crates bridged in; the metric
//! families ([`families`]) and security events.

pub mod families;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, replaces
/// `log.level`. Keep the returned guard alive: dropping it flushes and stops
/// the writer thread.
pub fn init(config: &LogConfig) -> Result<WorkerGuard, String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .map_err(|e| format!("config key `log.level`: {e}"))?;
    // The PDF reader's crates log through `log` (forwarded here), and some
    // of their warnings quote the document's content: never logged.
    let mut filter = filter;
    for quiet in ["pdf_extract=off", "lopdf=off"] {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    // Writing happens on a dedicated thread, so a slow terminal or pipe never
    // stalls an actor. Its queue is allocated and touched in full at start
    // (32 bytes a line), so its length is resident memory: `log.buffered_lines`.
    let buffered_lines = usize::try_from(config.buffered_lines).unwrap_or(usize::MAX);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(buffered_lines)
        .finish(std::io::stderr());
    // Colour only for a person at a terminal: journald, `docker logs` and
    // log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer)
        .with_span_events(FmtSpan::NONE);
    let installed = match config.format {
        LogFormat::Pretty => builder.compact().try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
    installed.map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(guard)
}

/// Security events since the process started, for `/readyz`.
static SECURITY_EVENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Security events counted so far in this process.
pub fn security_events() -> u64 {
    SECURITY_EVENTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// What a security event was (the `kind` label of
/// `llmgram_security_events_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityKind {
    /// A webhook request from outside `webhook.allowed_networks`.
    WebhookNetwork,
    /// A webhook request without the right secret token.
    WebhookSecret,
    /// The same, past that address's unauthenticated budget: counted, not
    /// logged, so a flood of forgeries cannot flood the logs.
    WebhookSecretUnlogged,
    /// An admin command from someone who is not an admin.
    AdminCommandDenied,
    /// A message holding a known prompt-injection phrase.
    InjectionPhrase,
    /// New chats arriving faster than `limits.new_chats_per_minute`.
    NewChatFlood,
    /// A mutating ops request without the right `OPS_API_TOKEN`.
    OpsToken,
    /// A Telegram Business connection from a user not in
    /// `business.allowed_owner_ids` (ignored).
    BusinessOwnerDenied,
    /// A fan chat's message through a Business connection the bot does not
    /// know (never connected, or from a disallowed owner): dropped.
    BusinessUnknownConnection,
}

impl SecurityKind {
    /// Every kind, so each counter starts at zero.
    pub const ALL: [Self; 9] = [
        Self::WebhookNetwork,
        Self::WebhookSecret,
        Self::WebhookSecretUnlogged,
        Self::AdminCommandDenied,
        Self::InjectionPhrase,
        Self::NewChatFlood,
        Self::OpsToken,
        Self::BusinessOwnerDenied,
        Self::BusinessUnknownConnection,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebhookNetwork => "webhook_network",
            Self::WebhookSecret => "webhook_secret",
            Self::WebhookSecretUnlogged => "webhook_secret_unlogged",
            Self::AdminCommandDenied => "admin_command_denied",
            Self::InjectionPhrase => "injection_phrase",
            Self::NewChatFlood => "new_chat_flood",
            Self::OpsToken => "ops_token",
            Self::BusinessOwnerDenied => "business_owner_denied",
            Self::BusinessUnknownConnection => "business_unknown_connection",
        }
    }
}

/// Counts and logs a security event (never with the user's text).
pub fn security_event(kind: SecurityKind) {
    SECURITY_EVENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let kind = kind.as_str();
    tracing::warn!(kind, "security event");
    metrics::counter!(families::SECURITY_EVENTS, "kind" => kind).increment(1);
}
