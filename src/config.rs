//! Configuration: the typed form of `config/default.toml`, loaded in layers.
//!
//! Layers, later ones winning: the embedded `config/default.toml`, an optional
//! file given with `--config`, then environment variables
//! `LLMGRAM_<SECTION>__<KEY>`. Secrets ([`Secrets`]) come only from
//! `TELEGRAM_BOT_TOKEN`, `LLM_API_KEY` and `OPS_API_TOKEN` and are never
//! printed; neither are credentials inside URL settings
//! (`https://user:pass@host`, see [`redact_url`]).
//!
//! Every error names the key (and the variable, when one is to blame) in one
//! line, so a bad deployment fails at start with exit code 2 and a message an
//! operator can act on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::pricing::{Price, PriceConfig};

/// The embedded default configuration, the base layer of every load.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "LLMGRAM_";
/// Environment variable holding the Telegram bot token.
pub const TOKEN_VAR: &str = "TELEGRAM_BOT_TOKEN";
/// Environment variable holding the webhook's secret token.
pub const WEBHOOK_SECRET_VAR: &str = "TELEGRAM_WEBHOOK_SECRET";
/// Environment variable holding the LLM provider's API key.
pub const LLM_KEY_VAR: &str = "LLM_API_KEY";
/// Environment variable holding `storage.postgres.url`, the PostgreSQL
/// connection URL (a secret: it may carry a password), for
/// `storage.backend = "postgres"`.
pub const POSTGRES_URL_VAR: &str = "LLMGRAM_STORAGE__POSTGRES__URL";
/// Environment variable holding the bearer token of the ops listener's
/// mutating routes (`POST /backup`); without it they are disabled.
pub const OPS_TOKEN_VAR: &str = "OPS_API_TOKEN";

/// The whole configuration. See `config/default.toml` for every knob's unit
/// and the reason for its default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // each section is documented on its type and in default.toml
pub struct Config {
    /// Telegram user ids with admin rights; a list, or `"1,2"` from the
    /// environment.
    #[serde(deserialize_with = "ids")]
    pub admin_ids: Vec<i64>,
    pub access: AccessConfig,
    pub telegram: TelegramConfig,
    pub webhook: WebhookConfig,
    pub llm: LlmConfig,
    pub breaker: BreakerConfig,
    pub limits: LimitsConfig,
    pub session: SessionConfig,
    pub input: InputConfig,
    pub media: MediaConfig,
    pub supervision: SupervisionConfig,
    pub storage: StorageConfig,
    pub ops: OpsConfig,
    pub log: LogConfig,
    pub console: ConsoleConfig,
    #[serde(default)]
    pub commands: Vec<CommandConfig>,
    /// The personas a chat may pick with `/persona` (`[[personas]]`).
    #[serde(default)]
    pub personas: Vec<PersonaConfig>,
    pub shutdown: ShutdownConfig,
    pub business: BusinessConfig,
    /// `LLMGRAM_*` environment variables that are not settings (no `__`
    /// and no top-level key of that name), ignored; the service names them
    /// in one warning at start.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

/// `[access]`: who may chat.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct AccessConfig {
    pub allowlist_only: bool,
    #[serde(deserialize_with = "ids")]
    pub allowed_ids: Vec<i64>,
    #[serde(with = "humantime_serde")]
    pub notice_interval: Duration,
}

/// A list of Telegram ids, written as a TOML array or as a comma-separated
/// string (the form an environment variable takes).
fn ids<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ids {
        List(Vec<i64>),
        One(i64),
        Text(String),
    }
    match Ids::deserialize(deserializer)? {
        Ids::List(ids) => Ok(ids),
        Ids::One(id) => Ok(vec![id]),
        Ids::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse()
                    .map_err(|_| serde::de::Error::custom(format!("`{part}` is not a user id")))
            })
            .collect(),
    }
}

impl Config {
    /// Whether `user` may use the admin commands.
    pub fn is_admin(&self, user: Option<u64>) -> bool {
        user.and_then(|id| i64::try_from(id).ok())
            .is_some_and(|id| self.admin_ids.contains(&id))
    }
}

/// `[telegram]`: the Bot API endpoint, long polling and sending.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct TelegramConfig {
    pub mode: IngressMode,
    #[serde(serialize_with = "redacted_url")]
    pub api_url: Url,
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    pub poll_limit: u8,
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    pub max_message_chars: usize,
    #[serde(with = "humantime_serde")]
    pub typing_after: Duration,
    #[serde(with = "humantime_serde")]
    pub typing_interval: Duration,
    pub max_concurrent_sends: usize,
    pub max_send_attempts: u32,
    pub max_flood_waits: u32,
    pub per_chat_rate: u32,
    pub per_chat_burst: u32,
    pub group_per_minute: u32,
    pub global_rate: u32,
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    #[serde(with = "humantime_serde")]
    pub edit_interval: Duration,
    /// Shortest time from one getUpdates to the next when the first brought
    /// nothing back; 0 disables the floor.
    #[serde(with = "humantime_serde")]
    pub empty_poll_interval: Duration,
    /// How long a group member's admin status (getChatMember) is trusted.
    #[serde(with = "humantime_serde")]
    pub admin_status_cache: Duration,
    /// Time limit for one getChatMember call.
    #[serde(with = "humantime_serde")]
    pub admin_check_timeout: Duration,
    /// Show a streamed answer in a private chat as an animated draft
    /// (`sendMessageDraft`) instead of a message edited as it grows.
    pub drafts: bool,
}

/// How updates arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressMode {
    /// getUpdates long polling.
    Polling,
    /// Telegram posts to `[webhook]`.
    Webhook,
}

/// `[webhook]`: the webhook listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct WebhookConfig {
    pub listen: std::net::SocketAddr,
    #[serde(serialize_with = "redacted_url_text")]
    pub url: String,
    pub max_body_bytes: usize,
    pub per_ip_per_second: u32,
    pub unauthenticated_per_ip_per_second: u32,
    pub allowed_networks: Vec<String>,
    pub max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl WebhookConfig {
    /// The limits of the webhook listener's connections.
    pub fn listener_limits(&self) -> crate::listener::Limits {
        crate::listener::Limits {
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
            request_timeout: self.request_timeout,
        }
    }
}

/// An IP network written as CIDR (`149.154.160.0/20`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    base: std::net::IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `a.b.c.d/n` or `v6::/n`.
    pub fn parse(text: &str) -> Option<Self> {
        let (base, prefix) = text.trim().split_once('/')?;
        let base: std::net::IpAddr = base.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let bits = if base.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then_some(Self { base, prefix })
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        fn bits(ip: std::net::IpAddr) -> (u128, u32) {
            match ip {
                std::net::IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                std::net::IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        }
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        let ((a, width_a), (b, width_b)) = (bits(ip), bits(self.base));
        if width_a != width_b {
            return false;
        }
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        a & mask == b & mask
    }
}

/// `[llm]`: the OpenAI-compatible provider and the pool in front of it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LlmConfig {
    pub name: String,
    #[serde(serialize_with = "redacted_url")]
    pub base_url: Url,
    pub model: String,
    pub allowed_models: Vec<String>,
    pub user_models: Vec<String>,
    pub daily_token_budget: u64,
    /// LLM tokens one user may use per UTC calendar month; 0: no budget.
    pub monthly_token_budget: u64,
    /// What one user's answers may cost per UTC calendar month (`currency`
    /// units, at `prices`); 0: no budget. Read it through
    /// [`LlmConfig::monthly_cost_budget_micros`].
    pub monthly_cost_budget: f64,
    /// The currency of `prices` and `monthly_cost_budget` (ISO 4217 code;
    /// USD, EUR and GBP are shown with their sign).
    pub currency: String,
    /// What each model's tokens cost (`[[llm.prices]]`); a model without an
    /// entry costs nothing shown. Read it through [`LlmConfig::price`].
    #[serde(default)]
    pub prices: Vec<PriceConfig>,
    pub max_concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    pub context_tokens: u64,
    pub stream: bool,
    #[serde(with = "humantime_serde")]
    pub stream_chunk_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub stream_max_duration: Duration,
    pub max_tokens: u32,
    /// Longest answer shown (characters); past it the answer is cut with a
    /// note, whatever the provider does with `max_tokens`.
    pub max_answer_chars: usize,
    /// Largest provider response body read (bytes), streamed or not.
    pub max_response_bytes: usize,
    pub temperature: f32,
    pub system_prompt: String,
    /// The `[[personas]]` entry chats use until they pick another; empty:
    /// `system_prompt` (with the section's model and temperature).
    #[serde(default)]
    pub default_persona: String,
    #[serde(with = "humantime_serde")]
    pub fallback_after: Duration,
    pub retry: RetryConfig,
    /// The primary's model for messages with images; empty: the primary
    /// cannot see images. Read it through [`LlmConfig::vision_model`].
    #[serde(default)]
    pub vision_model: String,
    /// The primary's speech-to-text model (`POST /audio/transcriptions`);
    /// empty: the primary does not transcribe. Read it through
    /// [`LlmConfig::transcription_model`].
    #[serde(default)]
    pub transcription_model: String,
    /// Time limit for one transcription request, upload included.
    #[serde(with = "humantime_serde")]
    pub transcription_timeout: Duration,
    /// Longest transcript kept (characters); past it the text is cut.
    pub max_transcript_chars: usize,
    #[serde(default)]
    pub fallback: Vec<FallbackConfig>,
}

/// `[llm.retry]`: retries of one provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RetryConfig {
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
}

/// One `[[llm.fallback]]` provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct FallbackConfig {
    pub name: String,
    #[serde(serialize_with = "redacted_url")]
    pub base_url: Url,
    pub model: String,
    /// The environment variable holding this provider's key, if it needs one.
    pub api_key_env: Option<String>,
    /// Whether this provider receives messages with images (with
    /// `vision_model`, else with `model`).
    #[serde(default)]
    pub vision: bool,
    /// The model for messages with images, when not `model`; only with
    /// `vision = true`.
    pub vision_model: Option<String>,
    /// This provider's speech-to-text model, if it transcribes.
    pub transcription_model: Option<String>,
}

impl FallbackConfig {
    /// The model this provider gets messages with images with, if it can
    /// see images.
    pub fn vision_model(&self) -> Option<&str> {
        if !self.vision {
            return None;
        }
        Some(model_name(self.vision_model.as_deref()).unwrap_or(&self.model))
    }

    /// This provider's speech-to-text model, if it transcribes.
    pub fn transcription_model(&self) -> Option<&str> {
        model_name(self.transcription_model.as_deref())
    }
}

/// A model name, unless it is missing or blank (which means "none").
fn model_name(text: Option<&str>) -> Option<&str> {
    text.filter(|text| !text.trim().is_empty())
}

/// `[limits]`: rate limits on arriving updates.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LimitsConfig {
    pub user_messages_per_minute: u32,
    pub user_llm_per_minute: u32,
    pub global_llm_per_second: u32,
    pub new_chats_per_minute: u32,
    #[serde(with = "humantime_serde")]
    pub max_queue_wait: Duration,
    pub max_queued: usize,
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

/// `[breaker]`: the circuit breaker of each provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct BreakerConfig {
    pub window: usize,
    pub min_calls: usize,
    pub failure_rate: f64,
    #[serde(with = "humantime_serde")]
    pub slow_call: Duration,
    pub count_slow_calls: bool,
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    #[serde(with = "humantime_serde")]
    pub first_probe_after: Duration,
    pub half_open_probes: usize,
}

/// `[session]`: per-chat history bounds and idle eviction.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SessionConfig {
    pub max_messages: usize,
    pub max_history_chars: usize,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    pub max_redeliveries: u32,
    #[serde(with = "humantime_serde")]
    pub merge_window: Duration,
    pub merge_wait_chars: usize,
    #[serde(with = "humantime_serde")]
    pub queued_notice_after: Duration,
    #[serde(with = "humantime_serde")]
    pub edit_window: Duration,
    pub summarize: bool,
    pub summary_model: String,
    pub summary_max_chars: usize,
    #[serde(with = "humantime_serde")]
    pub new_dialog_after: Duration,
}

/// `[input]`: what user text is accepted.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct InputConfig {
    pub max_chars: usize,
    pub max_merged_chars: usize,
    /// Longest quoted text a reply carries into the prompt (characters);
    /// 0 leaves quotes out. Any value is valid: the quote is bounded on its
    /// own, not counted against `max_chars`.
    pub max_quote_chars: usize,
    /// Longest own system prompt a chat may set with `/persona custom`
    /// (characters, after cleaning); also bounds the configured personas'.
    pub max_system_prompt_chars: usize,
}

/// `[media]`: photos, voice notes and documents: sizes, costs and
/// downloads.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct MediaConfig {
    pub max_image_bytes: u64,
    pub max_images_per_turn: usize,
    pub max_audio_seconds: u32,
    pub max_audio_bytes: u64,
    pub max_document_bytes: u64,
    pub max_document_chars: usize,
    pub show_transcript: bool,
    pub describe_images: bool,
    pub max_in_flight_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub download_timeout: Duration,
    pub download_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub album_wait: Duration,
    pub image_cost: u32,
    pub audio_cost: u32,
    pub document_cost: u32,
}

/// `[supervision]`: restart budget and backoff, and how callers wait for
/// restarting actors.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SupervisionConfig {
    pub max_restarts: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub restart_backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    pub stable_factor: u32,
    #[serde(with = "humantime_serde")]
    pub lookup_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub lookup_interval: Duration,
}

/// `[storage]`: where the store lives: the embedded fjall database, or a
/// PostgreSQL shared by several instances.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    pub postgres: PostgresConfig,
    pub path: PathBuf,
    pub persist_mode: PersistModeConfig,
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    pub commit_max_batch: usize,
    /// Size at which a keyspace's memtable is flushed to disk, in MiB.
    pub memtable_mib: u64,
}

/// Which database the store's writer runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// The embedded fjall database at `storage.path`: one instance.
    Fjall,
    /// A PostgreSQL database shared by several instances (cargo feature
    /// `postgres`), its URL from [`POSTGRES_URL_VAR`].
    Postgres,
}

/// `[storage.postgres]`: the shared database's leases and sweeps (see
/// supervision.md, "Running several instances").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct PostgresConfig {
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    #[serde(with = "humantime_serde")]
    pub send_margin: Duration,
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub sweep_after: Duration,
    pub sweep_batch: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

/// How far a commit is pushed to disk before writers are told it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum PersistModeConfig {
    /// `fsync`: data and metadata on disk.
    SyncAll,
    /// `fdatasync`: data on disk; survives power loss.
    SyncData,
    /// Handed to the OS: survives a process crash, not a power loss.
    Buffer,
}

/// One `[[commands]]` entry: an assistant command.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct CommandConfig {
    pub name: String,
    /// Per language code (`en` required).
    pub description: std::collections::BTreeMap<String, String>,
    pub template: String,
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub cost: CommandCost,
}

/// One `[[personas]]` entry: a system prompt a chat may pick with
/// `/persona <name>`, with its own model and temperature if it wants them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct PersonaConfig {
    pub name: String,
    /// Per language code (`en` required), shown by `/persona`.
    pub description: std::collections::BTreeMap<String, String>,
    /// Sent as the system message, exactly as written.
    pub system_prompt: String,
    /// A model for the primary provider; a chat's own `/model` choice wins.
    pub model: Option<String>,
    pub temperature: Option<f32>,
}

/// Words `/persona` reads as its own (`/persona custom …`, `/persona
/// show`, `/persona default`), so no persona may be named so.
pub const PERSONA_RESERVED_NAMES: &[&str] = &["default", "custom", "show"];

/// A command's class for the rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandCost {
    /// Counts against the LLM limits.
    Llm,
    /// Counts only against the general limit.
    Free,
}

/// Telegram's limits on setMyCommands: entries per menu, and characters of
/// one description.
const MENU_MAX_COMMANDS: usize = 100;
const MENU_DESCRIPTION_CHARS: std::ops::RangeInclusive<usize> = 1..=256;

impl Config {
    /// The configured command called `name`, if any.
    pub fn command(&self, name: &str) -> Option<&CommandConfig> {
        self.commands.iter().find(|c| c.name == name)
    }

    /// The configured persona called `name`, if any.
    pub fn persona(&self, name: &str) -> Option<&PersonaConfig> {
        self.personas.iter().find(|p| p.name == name)
    }
}

/// `[ops]`: the operator's HTTP listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct OpsConfig {
    pub listen: std::net::SocketAddr,
    pub max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl OpsConfig {
    /// The limits of the ops listener's connections.
    pub fn listener_limits(&self) -> crate::listener::Limits {
        crate::listener::Limits {
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
            request_timeout: self.request_timeout,
        }
    }
}

/// `[log]`: level filter and output format.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    pub buffered_lines: u64,
}

/// `[console]`: settings of `llmgram chat` only.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ConsoleConfig {
    pub log_level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, one event per line with fields.
    Pretty,
    /// One JSON object per event, for log shippers.
    Json,
}

/// `[shutdown]`: graceful stop.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ShutdownConfig {
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

/// `[business]`: answering fans in a creator's own chats through Telegram
/// Business (the creator connects the bot in their Business settings).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct BusinessConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "ids")]
    pub allowed_owner_ids: Vec<i64>,
    pub mode: BusinessMode,
    #[serde(with = "humantime_serde")]
    pub auto_after: Duration,
    pub active_hours: String,
    pub utc_offset: String,
    pub persona: String,
    pub fan_messages_per_minute: u32,
    pub connection_messages_per_minute: u32,
    pub max_connections: usize,
    pub max_fans_listed: usize,
}

/// What the bot does with a fan's message under a Business connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BusinessMode {
    /// Suggest a reply to the creator, who sends it with a tap.
    Draft,
    /// Answer the fan as the creator.
    Auto,
    /// Keep the conversation as context; neither draft nor answer.
    Off,
}

impl BusinessConfig {
    /// Whether `user` may connect the bot to their Business account:
    /// listed in `business.allowed_owner_ids`, or, when that list is empty,
    /// a bot admin (`admin_ids`).
    pub fn may_connect(&self, admin_ids: &[i64], user: i64) -> bool {
        if self.allowed_owner_ids.is_empty() {
            admin_ids.contains(&user)
        } else {
            self.allowed_owner_ids.contains(&user)
        }
    }

    /// `business.active_hours` as minutes of the day `[from, to)` in
    /// `business.utc_offset`'s time, and that offset; `None` for "always".
    pub fn active_window(&self) -> Result<Option<ActiveHours>, ConfigError> {
        let hours = self.active_hours.trim();
        if hours.is_empty() {
            return Ok(None);
        }
        let invalid = |reason: &str| ConfigError::Invalid {
            key: "business.active_hours",
            reason: format!("`{hours}` {reason}; write \"HH:MM-HH:MM\" or \"\""),
        };
        let (from, to) = hours.split_once('-').ok_or_else(|| invalid("has no `-`"))?;
        let minute = |text: &str| -> Option<u16> {
            let (h, m) = text.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let from = minute(from).ok_or_else(|| invalid("has a bad start time"))?;
        let to = minute(to).ok_or_else(|| invalid("has a bad end time"))?;
        if from == to {
            return Err(invalid("is empty (start equals end)"));
        }
        Ok(Some(ActiveHours {
            from,
            to,
            offset_minutes: self.offset_minutes()?,
        }))
    }

    /// `business.utc_offset` (`"+03:00"`, `"-05:30"`, `"Z"`) in minutes.
    fn offset_minutes(&self) -> Result<i32, ConfigError> {
        let text = self.utc_offset.trim();
        let invalid = || ConfigError::Invalid {
            key: "business.utc_offset",
            reason: format!("`{text}` is not an offset like \"+03:00\" or \"Z\""),
        };
        if text.is_empty() || text.eq_ignore_ascii_case("z") {
            return Ok(0);
        }
        let (sign, rest) = match text.as_bytes().first() {
            Some(b'+') => (1, &text[1..]),
            Some(b'-') => (-1, &text[1..]),
            _ => return Err(invalid()),
        };
        let (h, m) = rest.split_once(':').ok_or_else(invalid)?;
        let (h, m): (i32, i32) = (
            h.parse().map_err(|_| invalid())?,
            m.parse().map_err(|_| invalid())?,
        );
        if !(0..=14).contains(&h) || !(0..60).contains(&m) {
            return Err(invalid());
        }
        Ok(sign * (h * 60 + m))
    }

    /// Checks the `business` section.
    fn validate(&self) -> Result<(), ConfigError> {
        self.active_window()?;
        positive(
            "business.fan_messages_per_minute",
            u64::from(self.fan_messages_per_minute),
        )?;
        positive(
            "business.connection_messages_per_minute",
            u64::from(self.connection_messages_per_minute),
        )?;
        positive("business.max_connections", self.max_connections as u64)?;
        positive("business.max_fans_listed", self.max_fans_listed as u64)?;
        Ok(())
    }
}

/// The creator's working hours for `auto` mode (`business.active_hours`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveHours {
    /// Start, minutes after local midnight (inclusive).
    pub from: u16,
    /// End, minutes after local midnight (exclusive); before `from` when
    /// the window spans midnight.
    pub to: u16,
    /// The creator's offset from UTC, minutes.
    pub offset_minutes: i32,
}

impl ActiveHours {
    /// Whether `unix_seconds` falls inside the window.
    pub fn contains(&self, unix_seconds: i64) -> bool {
        let local = unix_seconds.div_euclid(60) + i64::from(self.offset_minutes);
        // In 0..1440, so it fits a u16.
        let minute = local.rem_euclid(24 * 60) as u16;
        if self.from < self.to {
            (self.from..self.to).contains(&minute)
        } else {
            minute >= self.from || minute < self.to
        }
    }
}

/// A secret string: shown as `***` by `Debug` and `Display`, so it cannot leak
/// through a log line or an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `url` for printing (logs, `check-config`, error messages): its userinfo
/// (`user:password@`) replaced by `***`, because a URL setting may carry
/// credentials (`https://user:pass@proxy.example/v1`).
pub fn redact_url(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // Both only fail for URLs that cannot carry userinfo, which then have
    // none to hide.
    let _ = shown.set_password(None);
    let _ = shown.set_username("***");
    shown.to_string()
}

/// [`redact_url`] for a URL kept as text (`webhook.url`): text that does not
/// parse as a URL is hidden whole if it may hold userinfo (an `@`).
pub fn redact_url_text(text: &str) -> String {
    match Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => redact_url(&url),
        _ if text.contains('@') => "*** (not an http(s) URL; hidden)".to_owned(),
        _ => text.to_owned(),
    }
}

fn redacted_url<S: serde::Serializer>(url: &Url, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(url))
}

fn redacted_url_text<S: serde::Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url_text(text))
}

/// Secrets, read only from their environment variables.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// The Telegram bot token (`TELEGRAM_BOT_TOKEN`); `None` only for the
    /// console front (`llmgram chat`), which never calls the Bot API.
    pub telegram_token: Option<Secret>,
    /// The LLM provider's API key (`LLM_API_KEY`); local servers such as
    /// Ollama need none.
    pub llm_api_key: Option<Secret>,
    /// Keys of the fallback providers, by provider name, read from each one's
    /// `api_key_env`.
    pub fallback_keys: std::collections::HashMap<String, Secret>,
    /// The webhook's secret token (`TELEGRAM_WEBHOOK_SECRET`), if given.
    pub webhook_secret: Option<Secret>,
    /// The bearer token of the ops listener's mutating routes
    /// (`OPS_API_TOKEN`); `None` disables those routes.
    pub ops_token: Option<Secret>,
    /// `storage.postgres.url` ([`POSTGRES_URL_VAR`]): required with
    /// `storage.backend = "postgres"`.
    pub postgres_url: Option<Secret>,
}

/// A configuration that cannot be used. Its `Display` is the one line printed
/// before exiting with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file does not exist or cannot be read.
    #[error("config file {path}: {reason}")]
    File {
        /// The file given with `--config`.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A key has a value of the wrong type or shape, or is unknown.
    #[error("config key `{key}`{source_hint}: {reason}")]
    Parse {
        /// Dotted key path, e.g. `llm.base_url`.
        key: String,
        /// Where the bad value came from (`` (from LLMGRAM_LLM__BASE_URL)``), or empty.
        source_hint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value parses but cannot work (zero limit, wrong URL scheme, …).
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key path.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A required secret variable is missing or empty.
    #[error("environment variable {var} is not set: {reason}")]
    MissingSecret {
        /// The variable to set.
        var: &'static str,
        /// Why it is needed.
        reason: &'static str,
    },
}

impl Config {
    /// Loads the layered configuration from the embedded defaults, the
    /// optional file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            figment = figment.merge(Toml::string(&text));
        }
        let top_level = Figment::from(Toml::string(DEFAULT_TOML));
        // The database URL is a secret ([`Secrets::postgres_url`]), read
        // from its variable, never a setting of the file.
        let is_setting = move |key: &str| {
            key != &POSTGRES_URL_VAR[ENV_PREFIX.len()..]
                && env_key_is_setting(key, |name| top_level.contains(name))
        };
        let ignored_env: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter(|name| {
                name != POSTGRES_URL_VAR
                    && name
                        .strip_prefix(ENV_PREFIX)
                        .is_some_and(|key| !is_setting(key))
            })
            .collect();
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .filter(move |key| is_setting(key.as_str()))
                .split("__"),
        );
        let mut config = Self::extract(figment)?;
        config.ignored_env = ignored_env;
        Ok(config)
    }

    /// Builds a configuration from the embedded defaults with `overrides`
    /// (TOML text) merged over them; no file or environment is read. Used by
    /// tests and benchmarks to pass settings without touching the process.
    pub fn from_defaults_with(overrides: &str) -> Result<Self, ConfigError> {
        let figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(overrides));
        Self::extract(figment)
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(parse_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.telegram.validate()?;
        self.input.validate()?;
        self.media.validate()?;
        self.validate_commands()?;
        self.validate_personas()?;
        self.webhook.validate(self.telegram.mode)?;
        self.ops.validate()?;
        self.llm.validate()?;
        self.limits.validate()?;
        self.breaker.validate()?;
        self.session.validate()?;
        self.supervision.validate()?;
        self.storage.validate()?;
        self.business.validate()?;
        self.log.validate()
    }

    /// Checks the `[[commands]]` entries and that the menu fits Telegram's.
    fn validate_commands(&self) -> Result<(), ConfigError> {
        for command in &self.commands {
            let name = &command.name;
            let valid_name = !name.is_empty()
                && name.len() <= 32
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            let problem = if !valid_name {
                Some("a name of 1–32 characters a-z, 0-9 or _".to_owned())
            } else if crate::telegram::command::is_built_in(name) {
                Some("a name the bot's own commands do not use".to_owned())
            } else if self.commands.iter().filter(|c| &c.name == name).count() > 1 {
                Some("a unique name".to_owned())
            } else if command.template.matches("{input}").count() != 1 {
                Some("exactly one {input} slot in its template".to_owned())
            } else if !command.description.contains_key("en") {
                Some("an `en` description".to_owned())
            } else if let Some((language, _)) = command.description.iter().find(|(_, text)| {
                !MENU_DESCRIPTION_CHARS.contains(&text.trim().chars().count())
                    || text.chars().count() > *MENU_DESCRIPTION_CHARS.end()
            }) {
                // Telegram refuses the whole menu for one such description.
                Some(format!(
                    "a `{language}` description of 1–256 characters (Telegram's limit)"
                ))
            } else if command
                .temperature
                .is_some_and(|t| !(0.0..=2.0).contains(&t))
            {
                Some("a temperature within 0.0..=2.0".to_owned())
            } else {
                None
            };
            if let Some(needs) = problem {
                return Err(ConfigError::Invalid {
                    key: "commands",
                    reason: format!("command `{name}` needs {needs}"),
                });
            }
        }

        let menu_built_ins = crate::telegram::command::menu_len();
        if menu_built_ins + self.commands.len() > MENU_MAX_COMMANDS {
            return Err(ConfigError::Invalid {
                key: "commands",
                reason: format!(
                    "{} commands and the bot's own {} exceed Telegram's menu limit of {MENU_MAX_COMMANDS}",
                    self.commands.len(),
                    menu_built_ins
                ),
            });
        }

        Ok(())
    }
}

impl Config {
    /// Checks the `[[personas]]` entries and `llm.default_persona`.
    fn validate_personas(&self) -> Result<(), ConfigError> {
        let limit = self.input.max_system_prompt_chars;
        for persona in &self.personas {
            let name = &persona.name;
            let valid_name = !name.is_empty()
                && name.len() <= 32
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            let prompt_chars = persona.system_prompt.chars().count();
            let problem = if !valid_name {
                Some("a name of 1–32 characters a-z, 0-9 or _".to_owned())
            } else if PERSONA_RESERVED_NAMES.contains(&name.as_str()) {
                Some(format!(
                    "a name other than {}",
                    PERSONA_RESERVED_NAMES.join(", ")
                ))
            } else if self.personas.iter().filter(|p| &p.name == name).count() > 1 {
                Some("a unique name".to_owned())
            } else if !persona.description.contains_key("en") {
                Some("an `en` description".to_owned())
            } else if let Some((language, _)) = persona
                .description
                .iter()
                .find(|(_, text)| text.trim().is_empty())
            {
                Some(format!("a non-empty `{language}` description"))
            } else if persona.system_prompt.trim().is_empty() {
                Some("a non-empty system_prompt".to_owned())
            } else if prompt_chars > limit {
                Some(format!(
                    "a system_prompt of at most input.max_system_prompt_chars ({limit}) characters, not {prompt_chars}"
                ))
            } else if persona
                .temperature
                .is_some_and(|t| !(0.0..=2.0).contains(&t))
            {
                Some("a temperature within 0.0..=2.0".to_owned())
            } else {
                None
            };
            if let Some(needs) = problem {
                return Err(ConfigError::Invalid {
                    key: "personas",
                    reason: format!("persona `{name}` needs {needs}"),
                });
            }
        }
        let default = &self.llm.default_persona;
        if !default.is_empty() && self.persona(default).is_none() {
            return Err(ConfigError::Invalid {
                key: "llm.default_persona",
                reason: format!("`{default}` is not a [[personas]] entry"),
            });
        }
        Ok(())
    }
}

// The checks every section's `validate` shares; each error names its key.

/// `value` must not be zero.
fn positive(key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid {
            key,
            reason: "must be greater than zero".into(),
        });
    }
    Ok(())
}

/// `url` must be an absolute http(s) URL.
fn http_url(key: &'static str, url: &Url) -> Result<(), ConfigError> {
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(ConfigError::Invalid {
            key,
            reason: format!("`{}` is not an http(s) URL", redact_url(url)),
        });
    }
    Ok(())
}

/// A duration in whole milliseconds, for [`positive`].
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl TelegramConfig {
    /// Checks the `telegram` section.
    fn validate(&self) -> Result<(), ConfigError> {
        let t = self;
        http_url("telegram.api_url", &t.api_url)?;
        positive("telegram.poll_timeout", t.poll_timeout.as_secs())?;
        if !(1..=100).contains(&t.poll_limit) {
            return Err(ConfigError::Invalid {
                key: "telegram.poll_limit",
                reason: format!("{} is outside 1..=100", t.poll_limit),
            });
        }
        positive("telegram.retry_min", millis(t.retry_min))?;
        if t.retry_max < t.retry_min {
            return Err(ConfigError::Invalid {
                key: "telegram.retry_max",
                reason: "must not be shorter than telegram.retry_min".into(),
            });
        }
        positive("telegram.connect_timeout", millis(t.connect_timeout))?;
        positive("telegram.send_timeout", millis(t.send_timeout))?;
        positive("telegram.max_message_chars", t.max_message_chars as u64)?;
        positive("telegram.typing_interval", millis(t.typing_interval))?;
        positive(
            "telegram.max_concurrent_sends",
            t.max_concurrent_sends as u64,
        )?;
        positive("telegram.max_send_attempts", u64::from(t.max_send_attempts))?;
        positive("telegram.per_chat_rate", u64::from(t.per_chat_rate))?;
        positive("telegram.per_chat_burst", u64::from(t.per_chat_burst))?;
        positive("telegram.global_rate", u64::from(t.global_rate))?;
        positive("telegram.group_per_minute", u64::from(t.group_per_minute))?;
        positive("telegram.edit_interval", millis(t.edit_interval))?;
        Ok(())
    }
}

impl InputConfig {
    /// Checks the `input` section.
    fn validate(&self) -> Result<(), ConfigError> {
        positive("input.max_chars", self.max_chars as u64)?;
        positive(
            "input.max_system_prompt_chars",
            self.max_system_prompt_chars as u64,
        )?;

        if self.max_merged_chars < self.max_chars {
            return Err(ConfigError::Invalid {
                key: "input.max_merged_chars",
                reason: "must not be less than input.max_chars".into(),
            });
        }

        Ok(())
    }
}

impl WebhookConfig {
    /// Checks the `webhook` section (its URL only in webhook `mode`).
    fn validate(&self, mode: IngressMode) -> Result<(), ConfigError> {
        let w = self;
        if mode == IngressMode::Webhook {
            let url = Url::parse(&w.url).map_err(|e| ConfigError::Invalid {
                key: "webhook.url",
                reason: format!("webhook mode needs the public URL: {e}"),
            })?;
            http_url("webhook.url", &url)?;
        }
        positive("webhook.max_body_bytes", w.max_body_bytes as u64)?;
        positive("webhook.per_ip_per_second", u64::from(w.per_ip_per_second))?;
        positive(
            "webhook.unauthenticated_per_ip_per_second",
            u64::from(w.unauthenticated_per_ip_per_second),
        )?;
        positive("webhook.max_connections", w.max_connections as u64)?;
        positive("webhook.header_timeout", millis(w.header_timeout))?;
        positive("webhook.request_timeout", millis(w.request_timeout))?;
        if let Some(bad) = w
            .allowed_networks
            .iter()
            .find(|n| Network::parse(n).is_none())
        {
            return Err(ConfigError::Invalid {
                key: "webhook.allowed_networks",
                reason: format!("`{bad}` is not a CIDR network"),
            });
        }

        Ok(())
    }
}

impl OpsConfig {
    /// Checks the `ops` section.
    fn validate(&self) -> Result<(), ConfigError> {
        let o = self;
        positive("ops.max_connections", o.max_connections as u64)?;
        positive("ops.header_timeout", millis(o.header_timeout))?;
        positive("ops.request_timeout", millis(o.request_timeout))?;
        Ok(())
    }
}

impl LlmConfig {
    /// The primary's model for messages with images, if it can see images.
    pub fn vision_model(&self) -> Option<&str> {
        model_name(Some(&self.vision_model))
    }

    /// The primary's speech-to-text model, if it transcribes.
    pub fn transcription_model(&self) -> Option<&str> {
        model_name(Some(&self.transcription_model))
    }

    /// Whether any provider (the primary or a fallback) can see images.
    pub fn can_see_images(&self) -> bool {
        self.vision_model().is_some()
            || self
                .fallback
                .iter()
                .any(|fallback| fallback.vision_model().is_some())
    }

    /// Whether any provider (the primary or a fallback) can transcribe
    /// audio.
    pub fn can_transcribe(&self) -> bool {
        self.transcription_model().is_some()
            || self
                .fallback
                .iter()
                .any(|fallback| fallback.transcription_model().is_some())
    }

    /// The price of `model`'s tokens, if `[[llm.prices]]` has one.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.prices
            .iter()
            .find(|entry| entry.model == model)
            .and_then(PriceConfig::price)
    }

    /// `monthly_cost_budget` in millionths of the currency unit (0: none).
    pub fn monthly_cost_budget_micros(&self) -> u64 {
        crate::pricing::micros(self.monthly_cost_budget).unwrap_or(0)
    }

    /// Checks `[[llm.prices]]`, `llm.currency` and `llm.monthly_cost_budget`.
    fn validate_prices(&self) -> Result<(), ConfigError> {
        let currency = self.currency.trim();
        if currency.is_empty() || currency.len() > 8 || currency != self.currency {
            return Err(ConfigError::Invalid {
                key: "llm.currency",
                reason: "must be a currency code such as \"USD\"".into(),
            });
        }
        if crate::pricing::micros(self.monthly_cost_budget).is_none() {
            return Err(ConfigError::Invalid {
                key: "llm.monthly_cost_budget",
                reason: format!(
                    "{} is not an amount between 0 and {}",
                    self.monthly_cost_budget,
                    crate::pricing::MAX_AMOUNT
                ),
            });
        }
        for (index, entry) in self.prices.iter().enumerate() {
            if entry.model.trim().is_empty()
                || self.prices[..index].iter().any(|e| e.model == entry.model)
            {
                return Err(ConfigError::Invalid {
                    key: "llm.prices.model",
                    reason: format!("entry {} needs a unique, non-empty model", index + 1),
                });
            }
            if entry.price().is_none() {
                return Err(ConfigError::Invalid {
                    key: "llm.prices",
                    reason: format!(
                        "entry {} ({}) needs prices between 0 and {} per million tokens",
                        index + 1,
                        entry.model,
                        crate::pricing::MAX_AMOUNT
                    ),
                });
            }
        }
        Ok(())
    }

    /// Checks the `llm` section and its fallbacks.
    fn validate(&self) -> Result<(), ConfigError> {
        let l = self;
        l.validate_prices()?;
        positive(
            "llm.stream_chunk_timeout",
            millis(self.stream_chunk_timeout),
        )?;
        positive("llm.stream_max_duration", millis(self.stream_max_duration))?;
        http_url("llm.base_url", &l.base_url)?;
        if l.model.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "llm.model",
                reason: "must not be empty".into(),
            });
        }
        positive("llm.max_concurrency", l.max_concurrency as u64)?;
        positive("llm.queue_timeout", millis(l.queue_timeout))?;
        positive("llm.request_timeout", millis(l.request_timeout))?;
        positive("llm.connect_timeout", millis(l.connect_timeout))?;
        positive("llm.max_tokens", u64::from(l.max_tokens))?;
        positive("llm.max_answer_chars", l.max_answer_chars as u64)?;
        positive("llm.max_response_bytes", l.max_response_bytes as u64)?;
        if l.context_tokens <= u64::from(l.max_tokens) {
            return Err(ConfigError::Invalid {
                key: "llm.context_tokens",
                reason: "must exceed llm.max_tokens, to leave room for a prompt".into(),
            });
        }
        positive("llm.fallback_after", millis(l.fallback_after))?;
        positive("llm.retry.max_attempts", u64::from(l.retry.max_attempts))?;
        positive("llm.retry.initial_backoff", millis(l.retry.initial_backoff))?;
        positive("llm.transcription_timeout", millis(l.transcription_timeout))?;
        positive("llm.max_transcript_chars", l.max_transcript_chars as u64)?;
        let mut names = vec![l.name.as_str()];
        for (index, fallback) in l.fallback.iter().enumerate() {
            http_url("llm.fallback.base_url", &fallback.base_url)?;
            if names.contains(&fallback.name.as_str()) || fallback.name.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key: "llm.fallback.name",
                    reason: format!("entry {} needs a unique, non-empty name", index + 1),
                });
            }
            names.push(&fallback.name);
            if !fallback.vision && model_name(fallback.vision_model.as_deref()).is_some() {
                return Err(ConfigError::Invalid {
                    key: "llm.fallback.vision_model",
                    reason: format!(
                        "entry {} names a vision model but has vision = false",
                        index + 1
                    ),
                });
            }
        }
        if !(0.0..=2.0).contains(&l.temperature) {
            return Err(ConfigError::Invalid {
                key: "llm.temperature",
                reason: format!("{} is outside 0.0..=2.0", l.temperature),
            });
        }

        Ok(())
    }
}

impl LimitsConfig {
    /// Checks the `limits` section.
    fn validate(&self) -> Result<(), ConfigError> {
        let lim = self;
        positive(
            "limits.user_messages_per_minute",
            u64::from(lim.user_messages_per_minute),
        )?;
        positive(
            "limits.user_llm_per_minute",
            u64::from(lim.user_llm_per_minute),
        )?;
        positive(
            "limits.global_llm_per_second",
            u64::from(lim.global_llm_per_second),
        )?;
        positive(
            "limits.new_chats_per_minute",
            u64::from(lim.new_chats_per_minute),
        )?;
        positive("limits.sweep_interval", millis(lim.sweep_interval))?;
        Ok(())
    }
}

impl BreakerConfig {
    /// Checks the `breaker` section.
    fn validate(&self) -> Result<(), ConfigError> {
        let b = self;
        positive("breaker.window", b.window as u64)?;
        positive("breaker.min_calls", b.min_calls as u64)?;
        positive("breaker.open_for", millis(b.open_for))?;
        positive("breaker.half_open_probes", b.half_open_probes as u64)?;
        if b.min_calls > b.window {
            return Err(ConfigError::Invalid {
                key: "breaker.min_calls",
                reason: "must not exceed breaker.window".into(),
            });
        }
        if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
            return Err(ConfigError::Invalid {
                key: "breaker.failure_rate",
                reason: format!("{} is outside (0.0, 1.0]", b.failure_rate),
            });
        }
        Ok(())
    }
}

impl SessionConfig {
    /// Checks the `session` section.
    fn validate(&self) -> Result<(), ConfigError> {
        let s = self;
        positive("session.summary_max_chars", s.summary_max_chars as u64)?;
        positive("session.max_messages", s.max_messages as u64)?;
        positive("session.max_history_chars", s.max_history_chars as u64)?;
        positive("session.idle_timeout", millis(s.idle_timeout))?;
        positive("session.sweep_interval", millis(s.sweep_interval))?;
        Ok(())
    }
}

impl MediaConfig {
    /// Checks the `media` section.
    fn validate(&self) -> Result<(), ConfigError> {
        let m = self;
        positive("media.max_image_bytes", m.max_image_bytes)?;
        positive("media.max_images_per_turn", m.max_images_per_turn as u64)?;
        positive("media.max_audio_seconds", u64::from(m.max_audio_seconds))?;
        positive("media.max_audio_bytes", m.max_audio_bytes)?;
        positive("media.max_document_bytes", m.max_document_bytes)?;
        positive("media.max_document_chars", m.max_document_chars as u64)?;
        positive("media.max_in_flight_bytes", m.max_in_flight_bytes)?;
        if m.max_in_flight_bytes < m.max_image_bytes
            || m.max_in_flight_bytes < m.max_audio_bytes
            || m.max_in_flight_bytes < m.max_document_bytes
        {
            return Err(ConfigError::Invalid {
                key: "media.max_in_flight_bytes",
                reason: "at least each of media.max_image_bytes, max_audio_bytes and \
                         max_document_bytes (one file must fit)"
                    .into(),
            });
        }
        positive("media.download_timeout", millis(m.download_timeout))?;
        positive("media.download_attempts", u64::from(m.download_attempts))?;
        positive("media.image_cost", u64::from(m.image_cost))?;
        positive("media.audio_cost", u64::from(m.audio_cost))?;
        positive("media.document_cost", u64::from(m.document_cost))?;
        Ok(())
    }

    /// What answering an attachment of `kind` costs against
    /// `limits.user_llm_per_minute` (LLM calls).
    pub fn cost(&self, kind: crate::telegram::inbound::AttachmentKind) -> u32 {
        use crate::telegram::inbound::AttachmentKind as K;
        match kind {
            K::Photo => self.image_cost,
            K::Voice | K::Audio | K::VideoNote => self.audio_cost,
            K::Document => self.document_cost,
            K::Unsupported => 0,
        }
    }
}

impl SupervisionConfig {
    /// Checks the `supervision` section.
    fn validate(&self) -> Result<(), ConfigError> {
        let sup = self;
        positive("supervision.window", millis(sup.window))?;
        positive(
            "supervision.restart_backoff_min",
            millis(sup.restart_backoff_min),
        )?;
        positive("supervision.lookup_timeout", millis(sup.lookup_timeout))?;
        positive("supervision.lookup_interval", millis(sup.lookup_interval))?;

        Ok(())
    }
}

impl StorageConfig {
    /// Checks the `storage` section.
    fn validate(&self) -> Result<(), ConfigError> {
        positive("storage.commit_max_batch", self.commit_max_batch as u64)?;
        // fjall flushes a memtable that reaches this size; zero would flush
        // on every write.
        positive("storage.memtable_mib", self.memtable_mib)?;
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "storage.path",
                reason: "must not be empty".into(),
            });
        }
        if self.backend == StorageBackend::Postgres && !cfg!(feature = "postgres") {
            return Err(ConfigError::Invalid {
                key: "storage.backend",
                reason: "\"postgres\" needs a build with the cargo feature `postgres` \
                         (cargo build --release --features postgres)"
                    .into(),
            });
        }
        self.postgres.validate()
    }
}

impl PostgresConfig {
    /// Checks `storage.postgres`: the lease must outlast several renewals,
    /// and an instance must stop sending before another may take its chats.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        };
        for (key, value) in [
            ("storage.postgres.lease", self.lease),
            ("storage.postgres.renew_interval", self.renew_interval),
            ("storage.postgres.sweep_interval", self.sweep_interval),
            ("storage.postgres.connect_timeout", self.connect_timeout),
            ("storage.postgres.statement_timeout", self.statement_timeout),
        ] {
            if value.is_zero() {
                return invalid(key, "must be greater than zero");
            }
        }
        positive("storage.postgres.sweep_batch", u64::from(self.sweep_batch))?;
        if self.renew_interval * 3 > self.lease {
            // Two renewals may fail (a slow query, a database restart)
            // before the lease lapses.
            return invalid(
                "storage.postgres.renew_interval",
                "must be at most a third of storage.postgres.lease",
            );
        }
        if self.send_margin < self.renew_interval || self.send_margin >= self.lease {
            // The margin covers the time a renewal takes to come back; a
            // margin as long as the lease would never let a reply out.
            return invalid(
                "storage.postgres.send_margin",
                "must be at least storage.postgres.renew_interval and less than storage.postgres.lease",
            );
        }
        if self.statement_timeout >= self.lease {
            // A renewal stuck longer than the lease is a lapsed lease.
            return invalid(
                "storage.postgres.statement_timeout",
                "must be less than storage.postgres.lease",
            );
        }
        Ok(())
    }
}

impl LogConfig {
    /// Checks the `log` section.
    fn validate(&self) -> Result<(), ConfigError> {
        // The log writer's queue; zero lines would drop every line.
        positive("log.buffered_lines", self.buffered_lines)?;
        Ok(())
    }
}

impl Secrets {
    /// Which secrets are set, never their values: for `check-config`.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            TOKEN_VAR: if self.telegram_token.is_some() { "set (redacted)" } else { "not set" },
            LLM_KEY_VAR: if self.llm_api_key.is_some() { "set (redacted)" } else { "not set" },
            OPS_TOKEN_VAR: if self.ops_token.is_some() { "set (redacted)" } else { "not set: POST /backup disabled" },
            POSTGRES_URL_VAR: if self.postgres_url.is_some() { "set (redacted)" } else { "not set" },
            "fallback keys": self.fallback_keys.keys().collect::<Vec<_>>(),
        })
    }

    /// Reads the secrets through `lookup` (the process environment in `main`,
    /// a map in tests). The bot token is required; the LLM key is optional
    /// because local OpenAI-compatible servers need none.
    pub fn from_lookup(
        config: &Config,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let secrets = Self::without_token(config, &lookup).with_storage(config)?;
        let token = non_empty(&lookup, TOKEN_VAR).ok_or(ConfigError::MissingSecret {
            var: TOKEN_VAR,
            reason: "the bot token from @BotFather is required",
        })?;
        Ok(Self {
            telegram_token: Some(Secret::new(token)),
            ..secrets
        })
    }

    /// The secrets a storage command (`llmgram migrate`) needs: the
    /// database URL; no bot token.
    pub fn for_storage(
        config: &Config,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let secrets = Self::without_token(config, &lookup).with_storage(config)?;
        Ok(secrets)
    }

    /// The secrets of the console front (`llmgram chat`): the LLM keys as for
    /// the bot, and no bot token, which is not even read.
    pub fn for_console(config: &Config, lookup: impl Fn(&str) -> Option<String>) -> Self {
        Self::without_token(config, &lookup)
    }

    /// `self`, unless the configured store needs a secret it lacks.
    fn with_storage(self, config: &Config) -> Result<Self, ConfigError> {
        if config.storage.backend == StorageBackend::Postgres && self.postgres_url.is_none() {
            return Err(ConfigError::MissingSecret {
                var: POSTGRES_URL_VAR,
                reason: "storage.backend = \"postgres\" needs the database URL",
            });
        }
        Ok(self)
    }

    fn without_token(config: &Config, lookup: &impl Fn(&str) -> Option<String>) -> Self {
        let fallback_keys = config
            .llm
            .fallback
            .iter()
            .filter_map(|provider| {
                let var = provider.api_key_env.as_deref()?;
                Some((provider.name.clone(), Secret::new(non_empty(lookup, var)?)))
            })
            .collect();
        Self {
            telegram_token: None,
            llm_api_key: non_empty(lookup, LLM_KEY_VAR).map(Secret::new),
            fallback_keys,
            webhook_secret: non_empty(lookup, WEBHOOK_SECRET_VAR).map(Secret::new),
            ops_token: non_empty(lookup, OPS_TOKEN_VAR).map(Secret::new),
            postgres_url: non_empty(lookup, POSTGRES_URL_VAR).map(Secret::new),
        }
    }
}

/// Whether `key` (an environment variable's name after `LLMGRAM_`) is meant
/// as a setting. `SECTION__KEY` always is, so a typo in it fails with the key
/// named; a name without `__` is only if it names a top-level setting
/// (`ADMIN_IDS`). Anything else, such as Kubernetes' `LLMGRAM_SERVICE_HOST`
/// or `LLMGRAM_PORT` for a Service named `llmgram`, is not ours: it is
/// ignored with a warning instead of stopping the bot.
fn env_key_is_setting(key: &str, is_top_level: impl Fn(&str) -> bool) -> bool {
    key.contains("__") || is_top_level(&key.to_ascii_lowercase())
}

/// The variable's value through `lookup`, unless unset or blank.
fn non_empty(lookup: &impl Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    lookup(var).filter(|v| !v.trim().is_empty())
}

/// Turns figment's error into one line naming the key and, for a value that
/// came from the environment, the variable to fix.
fn parse_error(error: figment::Error) -> ConfigError {
    let key = error.path.join(".");
    let from_env = error
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains(ENV_PREFIX));
    let source_hint = if from_env && !error.path.is_empty() {
        format!(
            " (from {ENV_PREFIX}{})",
            error
                .path
                .iter()
                .map(|p| p.to_uppercase())
                .collect::<Vec<_>>()
                .join("__")
        )
    } else {
        String::new()
    };
    ConfigError::Parse {
        key: if key.is_empty() { "<root>".into() } else { key },
        source_hint,
        reason: error.kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_hours_and_owners_read_as_written() {
        let config = Config::from_defaults_with(
            "admin_ids = [7]\nbusiness.active_hours = \"22:00-06:30\"\n\
             business.utc_offset = \"+03:00\"\n",
        )
        .unwrap();
        let business = &config.business;
        assert!(business.may_connect(&config.admin_ids, 7));
        assert!(!business.may_connect(&config.admin_ids, 8));
        let hours = business.active_window().unwrap().unwrap();
        assert_eq!(
            (hours.from, hours.to, hours.offset_minutes),
            (1320, 390, 180)
        );
        // 2025-12-01 20:00 UTC is 23:00 at +03:00: inside; 04:00 UTC (07:00
        // local) is outside.
        assert!(hours.contains(1_764_619_200));
        assert!(!hours.contains(1_764_561_600));
        let allowed =
            Config::from_defaults_with("business.allowed_owner_ids = \"5, 6\"\n").unwrap();
        assert!(allowed.business.may_connect(&allowed.admin_ids, 6));
        for bad in [
            "business.active_hours = \"9-17\"",
            "business.active_hours = \"09:00-09:00\"",
            "business.active_hours = \"25:00-01:00\"",
            "business.active_hours = \"09:00-17:00\"\nbusiness.utc_offset = \"3h\"",
            "business.mode = \"maybe\"",
        ] {
            assert!(Config::from_defaults_with(bad).is_err(), "{bad}");
        }
        assert!(
            Config::from_defaults_with("business.active_hours = \"\"")
                .unwrap()
                .business
                .active_window()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn env_names_without_a_section_are_settings_only_when_top_level() {
        let top = |key: &str| key == "admin_ids" || key == "llm";
        assert!(env_key_is_setting("LLM__MODEL", top));
        assert!(env_key_is_setting("LLM__MODLE", top), "a typo still fails");
        assert!(env_key_is_setting("NOSUCH__KEY", top));
        assert!(env_key_is_setting("ADMIN_IDS", top));
        assert!(!env_key_is_setting("SERVICE_HOST", top));
        assert!(!env_key_is_setting("PORT", top));
        assert!(!env_key_is_setting("PORT_8080_TCP_ADDR", top));
    }

    #[test]
    fn embedded_defaults_load_and_validate() {
        let config = Config::from_defaults_with("").unwrap();
        assert_eq!(config.llm.model, "llama-3.1-8b-instant");
        assert_eq!(
            config.llm.base_url.as_str(),
            "https://api.groq.com/openai/v1"
        );
        assert_eq!(config.telegram.max_message_chars, 4096);
        assert_eq!(config.session.max_messages, 50);
    }

    #[test]
    fn overrides_replace_single_keys() {
        let config = Config::from_defaults_with("[llm]\nmodel = \"other\"\n").unwrap();
        assert_eq!(config.llm.model, "other");
        assert_eq!(config.llm.max_concurrency, 16);
    }

    #[test]
    fn media_models_by_provider() {
        let config = Config::from_defaults_with("").unwrap();
        let llm = &config.llm;
        assert_eq!(
            llm.vision_model(),
            Some("meta-llama/llama-4-scout-17b-16e-instruct")
        );
        assert_eq!(llm.transcription_model(), Some("whisper-large-v3-turbo"));
        assert_eq!(llm.transcription_timeout, Duration::from_secs(60));
        assert_eq!(llm.max_transcript_chars, 8000);
        assert!(llm.can_see_images() && llm.can_transcribe());

        let fallback = |extra: &str| {
            format!(
                "llm.vision_model = \"\"\nllm.transcription_model = \" \"\n\
                 [[llm.fallback]]\nname = \"b\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\n{extra}"
            )
        };
        let none = Config::from_defaults_with(&fallback("")).unwrap().llm;
        assert_eq!(
            (none.vision_model(), none.transcription_model()),
            (None, None)
        );
        assert_eq!(none.fallback[0].vision_model(), None);
        assert!(!none.can_see_images() && !none.can_transcribe());

        let seeing = Config::from_defaults_with(&fallback("vision = true\n"))
            .unwrap()
            .llm;
        assert_eq!(seeing.fallback[0].vision_model(), Some("m"));
        assert!(seeing.can_see_images() && !seeing.can_transcribe());

        let own = Config::from_defaults_with(&fallback(
            "vision = true\nvision_model = \"v\"\ntranscription_model = \"w\"\n",
        ))
        .unwrap()
        .llm;
        assert_eq!(own.fallback[0].vision_model(), Some("v"));
        assert_eq!(own.fallback[0].transcription_model(), Some("w"));
        assert!(own.can_see_images() && own.can_transcribe());

        let err = Config::from_defaults_with(&fallback("vision_model = \"v\"\n")).unwrap_err();
        assert!(
            err.to_string().contains("llm.fallback.vision_model"),
            "{err}"
        );
        for key in ["transcription_timeout = \"0s\"", "max_transcript_chars = 0"] {
            let err = Config::from_defaults_with(&format!("[llm]\n{key}\n")).unwrap_err();
            assert!(err.to_string().contains("llm."), "{err}");
        }
    }

    #[test]
    fn personas_are_validated() {
        let defaults = Config::from_defaults_with("").unwrap();
        assert!(defaults.personas.len() >= 2);
        for persona in &defaults.personas {
            assert!(persona.description.contains_key("ru"), "{}", persona.name);
        }
        let entry = |name: &str, prompt: &str, extra: &str| {
            format!(
                "[[personas]]\nname = \"{name}\"\ndescription = {{ en = \"d\" }}\nsystem_prompt = \"{prompt}\"\n{extra}"
            )
        };
        let long = "x".repeat(2001);
        for (overrides, needs) in [
            (entry("Bad", "p", ""), "a name of 1–32"),
            (entry("custom", "p", ""), "a name other than"),
            (entry("default", "p", ""), "a name other than"),
            (entry("a", "  ", ""), "a non-empty system_prompt"),
            (
                entry("a", &long, ""),
                "at most input.max_system_prompt_chars (2000)",
            ),
            (entry("a", "p", "temperature = 3.0\n"), "a temperature"),
            (
                format!("{}{}", entry("a", "p", ""), entry("a", "q", "")),
                "a unique name",
            ),
            (
                "[[personas]]\nname = \"a\"\ndescription = { ru = \"d\" }\nsystem_prompt = \"p\"\n"
                    .to_owned(),
                "an `en` description",
            ),
        ] {
            let err = Config::from_defaults_with(&overrides)
                .unwrap_err()
                .to_string();
            assert!(err.contains("personas") && err.contains(needs), "{err}");
        }
        let err = Config::from_defaults_with("[llm]\ndefault_persona = \"nobody\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("llm.default_persona"), "{err}");
        let err = Config::from_defaults_with("[input]\nmax_system_prompt_chars = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("input.max_system_prompt_chars"), "{err}");
        // The limit bounds the configured prompts: a raised one admits them.
        let raised = format!(
            "[input]\nmax_system_prompt_chars = 3000\n{}",
            entry("a", &long, "")
        );
        assert!(Config::from_defaults_with(&raised).is_ok());
    }

    #[test]
    fn zero_limit_names_the_key() {
        let err = Config::from_defaults_with("[llm]\nmax_concurrency = 0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `llm.max_concurrency`: must be greater than zero"
        );
    }

    #[test]
    fn the_log_queue_is_small_and_never_empty() {
        let config = Config::from_defaults_with("").unwrap();
        assert_eq!(config.log.buffered_lines, 16384, "512 KiB, not 4 MiB");
        let err = Config::from_defaults_with("[log]\nbuffered_lines = 0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `log.buffered_lines`: must be greater than zero"
        );
    }

    #[test]
    fn bad_url_names_the_key() {
        let err = Config::from_defaults_with("[telegram]\napi_url = \"not a url\"\n").unwrap_err();
        let line = err.to_string();
        assert!(line.starts_with("config key `telegram.api_url`"), "{line}");
        let err = Config::from_defaults_with("[llm]\nbase_url = \"ftp://x/v1\"\n").unwrap_err();
        assert!(err.to_string().contains("llm.base_url"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = Config::from_defaults_with("[llm]\nmodle = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("modle"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let err = Config::from_defaults_with("[session]\nidle_timeout = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("session.idle_timeout"), "{err}");
    }

    #[test]
    fn admin_ids_come_as_a_list_or_a_comma_separated_string() {
        let config = Config::from_defaults_with("admin_ids = [1, 2]\n").unwrap();
        assert_eq!(config.admin_ids, [1, 2]);
        let config = Config::from_defaults_with("admin_ids = \"7, 8,9\"\n").unwrap();
        assert_eq!(config.admin_ids, [7, 8, 9]);
        assert!(config.is_admin(Some(8)) && !config.is_admin(Some(1)) && !config.is_admin(None));
        let err = Config::from_defaults_with("admin_ids = \"7,x\"\n").unwrap_err();
        assert!(err.to_string().contains("admin_ids"), "{err}");
    }

    #[test]
    fn networks_match_their_addresses() {
        let telegram = Network::parse("149.154.160.0/20").unwrap();
        assert!(telegram.contains("149.154.167.220".parse().unwrap()));
        assert!(!telegram.contains("149.154.176.1".parse().unwrap()));
        assert!(telegram.contains("::ffff:149.154.160.1".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_none());
        let err = Config::from_defaults_with("telegram.mode = \"webhook\"\n").unwrap_err();
        assert!(err.to_string().contains("webhook.url"), "{err}");
    }

    #[test]
    fn commands_are_validated() {
        let config = Config::from_defaults_with("").unwrap();
        assert!(config.command("flirt").is_some() && config.command("caption").is_some());
        for (bad, why) in [
            (
                "name = \"help\"\ndescription = { en = \"x\" }\ntemplate = \"{input}\"\ncost = \"llm\"",
                "own commands",
            ),
            (
                "name = \"x\"\ndescription = { en = \"x\" }\ntemplate = \"no slot\"\ncost = \"llm\"",
                "{input}",
            ),
            (
                "name = \"x\"\ndescription = { en = \"x\" }\ntemplate = \"{input}{input}\"\ncost = \"llm\"",
                "{input}",
            ),
            (
                "name = \"Bad\"\ndescription = { en = \"x\" }\ntemplate = \"{input}\"\ncost = \"llm\"",
                "a-z",
            ),
        ] {
            let err = Config::from_defaults_with(&format!("[[commands]]\n{bad}\n")).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn userinfo_in_urls_is_redacted() {
        let url = Url::parse("https://user:hunter2@llm.example/v1").unwrap();
        assert_eq!(redact_url(&url), "https://***@llm.example/v1");
        let url = Url::parse("https://llm.example/v1").unwrap();
        assert_eq!(redact_url(&url), "https://llm.example/v1");
        assert_eq!(
            redact_url_text("https://only-user@host/hook"),
            "https://***@host/hook"
        );
        assert!(!redact_url_text("user:hunter2@host").contains("hunter2"));
        let config = Config::from_defaults_with(
            "llm.base_url = \"https://u:hunter2@llm.example/v1\"\n\
             telegram.api_url = \"https://u:hunter2@tg.example\"\n\
             webhook.url = \"https://u:hunter2@hook.example/x\"\n",
        )
        .unwrap();
        let shown = serde_json::to_string(&config).unwrap();
        assert!(!shown.contains("hunter2"), "{shown}");
        let err =
            Config::from_defaults_with("llm.base_url = \"ftp://u:hunter2@x/v1\"\n").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn prices_and_money_budgets_are_validated() {
        let price = |model: &str, input: &str, output: &str| {
            format!(
                "[[llm.prices]]\nmodel = \"{model}\"\ninput_per_million = {input}\noutput_per_million = {output}\n"
            )
        };
        let config = Config::from_defaults_with(&format!(
            "llm.monthly_cost_budget = 2.5\n{}{}",
            price("a", "0.05", "0.08"),
            price("b", "0", "1")
        ))
        .unwrap();
        assert_eq!(
            config.llm.price("a"),
            Some(Price {
                input: 50_000,
                output: 80_000
            })
        );
        assert_eq!(config.llm.price("c"), None);
        assert_eq!(config.llm.monthly_cost_budget_micros(), 2_500_000);
        let rejected = |toml: &str, key: &str| {
            let err = Config::from_defaults_with(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        };
        rejected(&price("a", "-0.01", "1"), "llm.prices");
        rejected(&price("a", "1", "nan"), "llm.prices");
        rejected(
            &format!("{}{}", price("a", "1", "1"), price("a", "2", "2")),
            "llm.prices.model",
        );
        rejected(&price(" ", "1", "1"), "llm.prices.model");
        rejected("llm.monthly_cost_budget = -1\n", "llm.monthly_cost_budget");
        rejected("llm.currency = \"\"\n", "llm.currency");
    }

    #[test]
    fn command_menus_telegram_refuses_are_rejected() {
        let entry = |name: &str, description: &str| {
            format!(
                "[[commands]]\nname = \"{name}\"\ndescription = {{ en = \"ok\", ru = \"{description}\" }}\ntemplate = \"{{input}}\"\ncost = \"free\"\n"
            )
        };
        let longest = "ж".repeat(256);
        assert!(Config::from_defaults_with(&entry("fine", &longest)).is_ok());
        for bad in ["ж".repeat(257), String::new(), "   ".to_owned()] {
            let err = Config::from_defaults_with(&entry("bad", &bad)).unwrap_err();
            let line = err.to_string();
            assert!(line.contains("`ru` description of 1–256"), "{line}");
        }
        // Commands given in an override replace the default ones.
        let room = 100 - crate::telegram::command::menu_len();
        let many = |n: usize| -> String { (0..n).map(|i| entry(&format!("c{i}"), "x")).collect() };
        let full = Config::from_defaults_with(&many(room)).unwrap();
        assert_eq!(full.commands.len(), room);
        let err = Config::from_defaults_with(&many(room + 1)).unwrap_err();
        assert!(err.to_string().contains("menu limit of 100"), "{err}");
    }

    #[test]
    fn secrets_require_a_token_and_never_print() {
        let config = Config::from_defaults_with("").unwrap();
        let err = Secrets::from_lookup(&config, |_| None).unwrap_err();
        assert!(err.to_string().contains(TOKEN_VAR));
        let secrets = Secrets::from_lookup(&config, |var| match var {
            TOKEN_VAR => Some("123:SECRET".into()),
            LLM_KEY_VAR => Some("sk-SECRET".into()),
            _ => None,
        })
        .unwrap();
        let token = secrets.telegram_token.as_ref().unwrap();
        let shown = format!("{secrets:?} {token}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert_eq!(token.expose(), "123:SECRET");
        let console = Secrets::for_console(&config, |var| {
            (var == LLM_KEY_VAR).then(|| "sk-SECRET".into())
        });
        assert!(console.telegram_token.is_none());
        assert_eq!(console.llm_api_key.unwrap().expose(), "sk-SECRET");
    }

    #[test]
    fn a_shared_store_needs_its_url_from_the_environment_and_sane_timings() {
        let config = Config::from_defaults_with("storage.backend = \"postgres\"").unwrap();
        let token = |var: &str| (var == TOKEN_VAR).then(|| "1:x".to_owned());
        let err = Secrets::from_lookup(&config, token).unwrap_err();
        assert!(err.to_string().contains(POSTGRES_URL_VAR), "{err}");
        let secrets = Secrets::from_lookup(&config, |var| match var {
            POSTGRES_URL_VAR => Some("postgres://u:SECRET@db/x".into()),
            other => token(other),
        })
        .unwrap();
        assert!(!format!("{secrets:?}").contains("SECRET"));
        // The URL is a secret, never a key of a file.
        let err =
            Config::from_defaults_with("[storage.postgres]\nurl = \"postgres://x\"\n").unwrap_err();
        assert!(err.to_string().contains("storage.postgres"), "{err}");
        for (bad, key) in [
            ("renew_interval = \"3s\"", "storage.postgres.renew_interval"),
            ("send_margin = \"500ms\"", "storage.postgres.send_margin"),
            ("send_margin = \"6s\"", "storage.postgres.send_margin"),
            (
                "statement_timeout = \"6s\"",
                "storage.postgres.statement_timeout",
            ),
            ("sweep_batch = 0", "storage.postgres.sweep_batch"),
        ] {
            let err =
                Config::from_defaults_with(&format!("[storage.postgres]\n{bad}\n")).unwrap_err();
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }
}
