//! llmgram: a Telegram assistant bot that answers with a large language
//! model, built as a supervised tree of actors.
//!
//! # Layout
//!
//! - [`app`]: builds the tree from a [`config::Config`] and runs it; the
//!   binary and the tests both start the service here.
//! - [`actors`]: the supervision tree, one actor per file, placed as in the
//!   tree (`actors/root/session_sup/session.rs` is supervised by
//!   `session_sup`, which root supervises).
//! - [`telegram`]: updates in ([`telegram::inbound`]), commands parsed once
//!   ([`telegram::command`]), Markdown rendered to
//!   entities ([`telegram::render`]), long answers split
//!   ([`telegram::split`]), the calls the outbox makes
//!   ([`telegram::transport`]), Bot API errors classified.
//! - [`llm`]: OpenAI-compatible wire types and the classified HTTP call,
//!   plain or streamed (server-sent events).
//! - [`ops`]: the operator's HTTP listener (health, readiness, metrics).
//! - [`listener`]: how the ops and webhook listeners serve connections
//!   (connection cap, header and request timeouts).
//! - [`console`]: `llmgram chat`, the console front: the same tree without
//!   Telegram, talked to from a terminal.
//! - [`history`]: a chat's bounded history, owned by its session.
//! - [`store`]: versioned records and their encoding; only the persistence
//!   actor opens the database.
//! - [`config`], [`texts`], [`retry`], [`telemetry`], [`error`]: knobs,
//!   reply texts, backoff, logging, error helpers.
//!
//! `supervision.md` at the repository root draws the tree and states, for
//! each actor, what it owns and what survives its failure.

pub mod actors;
pub mod app;
#[cfg(feature = "chaos")]
pub mod chaos;
pub mod config;
pub mod console;
pub mod error;
pub mod history;
pub mod input;
pub mod listener;
pub mod llm;
pub mod ops;
pub mod retry;
pub mod store;
pub mod telegram;
pub mod telemetry;
pub mod texts;
