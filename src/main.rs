//! The llmgram binary: parses arguments, loads the configuration and runs the
//! service until SIGINT or SIGTERM.
//!
//! Exit codes: 0 after a clean shutdown, 1 when the service fails at run
//! time, 2 for a configuration error (one line on stderr names the key or
//! variable).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use llmgram::app;
use llmgram::config::{Config, LogConfig, OPS_TOKEN_VAR, Secrets};
use llmgram::front::console::{self, ChatOptions};
use llmgram::texts::Locales;

/// A Telegram assistant bot answering with a large language model.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML file merged over the built-in defaults (config/default.toml).
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Validate the configuration and print the effective values (secrets
    /// redacted), with `storage.backend = "postgres"` also the database's
    /// schema version; exit 0 if it is usable, 2 if not, 1 if the database
    /// cannot be reached.
    CheckConfig,
    /// Bring the shared PostgreSQL's schema to this build's version
    /// (`storage.backend = "postgres"`; instances also do it at start) and
    /// print the versions before and after.
    Migrate,
    /// Ask the running bot (through `ops.listen`, with the bearer token from
    /// OPS_API_TOKEN) to write a consistent copy of its store into DIR, a new
    /// or empty directory outside storage.path whose parent exists.
    Backup {
        /// Where the copy goes.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
    /// Fill the empty data directory (`storage.path`) from a backup made by
    /// `llmgram backup`, after checking its manifest and checksum (anything
    /// else is refused with exit 1). The bot must not be running.
    Restore {
        /// The backup to restore.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
    },
    /// Talk to the bot from this terminal: each line of stdin is a message
    /// (commands too), answered on stdout through the same actors, settings
    /// and LLM provider as the bot. Needs no TELEGRAM_BOT_TOKEN; ends at the
    /// end of stdin or on Ctrl-C.
    Chat {
        /// Keep the conversation in DIR between runs (default: a temporary
        /// directory removed at exit). Never the running bot's storage.path.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The language of the bot's own texts.
        #[arg(long, default_value = "en", value_parser = clap::builder::PossibleValuesParser::new(Locales::LANGUAGES))]
        language: String,
    },
}

/// jemalloc gives freed memory back to the OS from its own background thread,
/// within `dirty_decay_ms` (1 s, compiled in through .cargo/config.toml), even
/// while the bot is idle: with glibc's malloc the RSS of 100,000 evicted
/// sessions never came down, and mimalloc kept 0.4-0.6 GiB of it, returning
/// pages only when the thread that owned them allocated again (BENCHMARKS.md,
/// "Issue 14: memory"). `_RJEM_MALLOC_CONF` in the environment overrides the
/// options. The `system-alloc` feature turns it off for heap profilers
/// (heaptrack).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::CheckConfig) => return check_config(args.config.as_deref()),
        Some(Command::Migrate) => return migrate(args.config.as_deref()),
        Some(Command::Backup { to }) => return backup(args.config.as_deref(), &to),
        Some(Command::Restore { from }) => return restore(args.config.as_deref(), &from),
        Some(Command::Chat { data_dir, language }) => {
            let options = ChatOptions { data_dir, language };
            return chat(args.config.as_deref(), options);
        }
        None => {}
    }
    let loaded = Config::load(args.config.as_deref()).and_then(|config| {
        Secrets::from_lookup(&config, |var| std::env::var(var).ok()).map(|s| (config, s))
    });
    let (config, secrets) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("llmgram: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let log = config.log.clone();
    run_logged(&log, app::run(config, secrets, shutdown_signal()))
}

/// Starts logging and the async runtime, runs `service` to its end and
/// turns its outcome into the exit code.
fn run_logged(
    log: &LogConfig,
    service: impl std::future::Future<Output = Result<(), app::AppError>>,
) -> ExitCode {
    let _log_guard = match llmgram::telemetry::init(log) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("llmgram: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("llmgram: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    exit_code(runtime.block_on(service))
}

/// `llmgram chat`: the console front, until stdin ends or a signal.
fn chat(file: Option<&std::path::Path>, options: ChatOptions) -> ExitCode {
    let config = match load_config(file) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let secrets = Secrets::for_console(&config, |var| std::env::var(var).ok());
    let log = LogConfig {
        level: config.console.log_level.clone(),
        ..config.log.clone()
    };
    run_logged(
        &log,
        console::run(config, secrets, options, shutdown_signal()),
    )
}

/// The exit code for how the service ended, after saying why if it failed.
fn exit_code(result: Result<(), app::AppError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "llmgram stopped");
            eprintln!("llmgram: {error}");
            ExitCode::from(if error.is_configuration() {
                EXIT_CONFIG
            } else {
                EXIT_RUNTIME
            })
        }
    }
}

/// The configuration for a subcommand, or the exit code after saying why not.
fn load_config(file: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(file).map_err(|error| {
        eprintln!("llmgram: {error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// `llmgram check-config`: the effective configuration as JSON on stdout.
fn check_config(file: Option<&std::path::Path>) -> ExitCode {
    let config = match load_config(file) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if !config.ignored_env.is_empty() {
        eprintln!(
            "llmgram: warning: ignoring environment variables that are not settings (settings are LLMGRAM_<SECTION>__<KEY>): {}",
            config.ignored_env.join(", ")
        );
    }
    let secrets = Secrets::from_lookup(&config, |var| std::env::var(var).ok());
    let database = match &secrets {
        Ok(secrets) => database_report(&config, secrets, false),
        Err(_) => Ok(serde_json::Value::Null),
    };
    let report = serde_json::json!({
        "config": config,
        "secrets": match &secrets {
            Ok(secrets) => secrets.describe(),
            Err(error) => serde_json::Value::String(error.to_string()),
        },
        "database": match &database {
            Ok(report) => report.clone(),
            Err((_, error)) => serde_json::Value::String(error.clone()),
        },
    });
    match serde_json::to_string_pretty(&report) {
        Ok(text) => println!("{text}"),
        Err(error) => {
            eprintln!("llmgram: cannot print the configuration: {error}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    }
    match (secrets, database) {
        (Ok(_), Ok(_)) => ExitCode::SUCCESS,
        (Err(error), _) => {
            eprintln!("llmgram: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
        (Ok(_), Err((code, error))) => {
            eprintln!("llmgram: {error}");
            ExitCode::from(code)
        }
    }
}

/// `llmgram migrate`: the shared database's schema brought to this build's.
fn migrate(file: Option<&std::path::Path>) -> ExitCode {
    let config = match load_config(file) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let secrets = match Secrets::for_storage(&config, |var| std::env::var(var).ok()) {
        Ok(secrets) => secrets,
        Err(error) => {
            eprintln!("llmgram: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match database_report(&config, &secrets, true) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err((code, error)) => {
            eprintln!("llmgram: {error}");
            ExitCode::from(code)
        }
    }
}

/// With `storage.backend = "postgres"`: the database's schema version
/// against this build's, after migrating when `migrate`; `Null` on fjall.
/// The error carries its exit code: 2 for a schema newer than this build
/// or a build without the backend, 1 for a database that cannot be reached.
fn database_report(
    config: &Config,
    secrets: &Secrets,
    migrate: bool,
) -> Result<serde_json::Value, (u8, String)> {
    if config.storage.backend != llmgram::config::StorageBackend::Postgres {
        return if migrate {
            Err((
                EXIT_CONFIG,
                "storage.backend is \"fjall\": there is no schema to migrate".into(),
            ))
        } else {
            Ok(serde_json::Value::Null)
        };
    }
    #[cfg(feature = "postgres")]
    {
        let Some(url) = &secrets.postgres_url else {
            return Err((
                EXIT_CONFIG,
                format!("{} is not set", llmgram::config::POSTGRES_URL_VAR),
            ));
        };
        let report =
            llmgram::store::postgres::schema_report(url.expose(), &config.storage, migrate);
        match report {
            Ok(report) => Ok(serde_json::json!({
                "schema_version": report.to,
                "schema_version_before": report.from,
                "this_build": llmgram::store::postgres::SCHEMA_VERSION,
            })),
            Err(error) if error.to_string().contains("newer") => {
                Err((EXIT_CONFIG, error.to_string()))
            }
            Err(error) => Err((EXIT_RUNTIME, error.to_string())),
        }
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = (secrets, migrate);
        Err((
            EXIT_CONFIG,
            "this build has no PostgreSQL backend (cargo feature `postgres`)".into(),
        ))
    }
}

/// `llmgram backup --to DIR`: asks the running bot for a consistent copy.
fn backup(file: Option<&std::path::Path>, to: &std::path::Path) -> ExitCode {
    let config = match load_config(file) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let to = match std::path::absolute(to) {
        Ok(path) => path,
        Err(error) => {
            eprintln!("llmgram: {}: {error}", to.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(token) = std::env::var(OPS_TOKEN_VAR)
        .ok()
        .filter(|token| !token.trim().is_empty())
    else {
        eprintln!("llmgram: {OPS_TOKEN_VAR} is not set: backups need the bot's ops API token");
        return ExitCode::from(EXIT_CONFIG);
    };
    let url = format!("http://{}/backup", config.ops.listen);
    let request = async {
        let response = reqwest::Client::new()
            .post(&url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "to": to }))
            .send()
            .await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.text().await?))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime.map(|rt| rt.block_on(request)) {
        Ok(Ok((status, body))) if status.is_success() => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok(Ok((status, body))) => {
            eprintln!("llmgram: backup failed ({status}): {}", body.trim());
            ExitCode::from(EXIT_RUNTIME)
        }
        Ok(Err(error)) => {
            eprintln!("llmgram: cannot reach the bot at {url}: {error}");
            ExitCode::from(EXIT_RUNTIME)
        }
        Err(error) => {
            eprintln!("llmgram: {error}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// `llmgram restore --from DIR`: fills the empty data directory.
fn restore(file: Option<&std::path::Path>, from: &std::path::Path) -> ExitCode {
    let config = match load_config(file) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match llmgram::store::backup::restore(from, &config.storage.path) {
        Ok(report) => {
            println!(
                "restored {} records ({} chats) into {}",
                report.records,
                report.chats,
                config.storage.path.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("llmgram: restore failed: {error}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Completes on the first SIGINT or SIGTERM; a second one ends the process
/// at once, for an operator who will not wait for the graceful stop.
async fn shutdown_signal() {
    first_signal().await;
    tokio::spawn(async {
        first_signal().await;
        eprintln!("llmgram: second signal; exiting without waiting");
        std::process::exit(i32::from(EXIT_RUNTIME));
    });
}

async fn first_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the bot");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
