//! Helpers shared by the error types of each boundary (`ConfigError`,
//! `LlmError`, `TelegramError`, `AppError` live with their boundary).

/// The error and its causes in one line. HTTP clients put the useful part
/// (DNS failure, connection refused, TLS alert) in the source chain and only a
/// generic "error sending request" in the top message.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// Locks `mutex` even if a holder panicked. For the crate's few mutexes,
/// whose data no panic can leave half-changed (each says why where it
/// locks): a poisoned lock there is no reason to fail a second time.
pub fn lock_unpoisoned<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
