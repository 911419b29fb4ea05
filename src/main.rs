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
use llmgram::config::{Config, Secrets};

/// A Telegram assistant bot answering with a large language model.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML file merged over the built-in defaults (config/default.toml).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
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
    let _log_guard = match llmgram::telemetry::init(&config.log) {
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
    match runtime.block_on(app::run(config, secrets, shutdown_signal())) {
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

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
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
