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
//!   ([`telegram::transport`]; `sendMessageDraft`, which teloxide lacks, in
//!   [`telegram::draft`]), Bot API errors classified.
//! - [`llm`]: OpenAI-compatible wire types and the classified HTTP call,
//!   plain or streamed (server-sent events).
//! - [`ops`]: the operator's HTTP listener (health, readiness, metrics).
//! - [`listener`]: how the ops and webhook listeners serve connections
//!   (connection cap, header and request timeouts).
//! - [`front`]: the front ends apart from their actors: which one a service
//!   starts with, the intake every one hands updates over through, and
//!   [`front::console`] (`llmgram chat`: the same tree without Telegram,
//!   talked to from a terminal).
//! - [`history`]: a chat's bounded history, owned by its session.
//! - [`persona`]: the system prompts a chat may answer with (`[[personas]]`,
//!   the default one), resolved once and shared.
//! - [`pricing`]: what LLM tokens cost, in integer millionths of the
//!   currency (`[[llm.prices]]`), and amounts written for people.
//! - [`input`]: input cleaning (Unicode-aware) and validation, and the
//!   injection check, before any text reaches a prompt.
//! - [`store`]: everything fjall-facing: the database, the group-commit
//!   writer thread (the only writer, driven only by the persistence actor),
//!   backup and restore, versioned records and their encoding.
//! - [`config`], [`texts`], [`retry`], [`telemetry`], [`error`], [`clock`]:
//!   knobs, reply texts, backoff, logging, error helpers, epoch time.
//! - `chaos` (feature `chaos`, tests only): make any actor panic on command.
//!
//! `supervision.md` at the repository root draws the tree and states, for
//! each actor, what it owns and what survives its failure.

// Module docs link the private message enums on purpose (each actor's protocol
// is private to its file, its handle is public): rustdoc still checks those
// links resolve, so a renamed or removed message fails the doc check.
#![allow(rustdoc::private_intra_doc_links)]
#![warn(unreachable_pub)]
// Not in the unit-test build, which also links the dev-dependencies.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

// Dependencies of the binary only (`src/main.rs`: the command line and the
// global allocator); named here so the lint above checks all the others.
use clap as _;
use tikv_jemallocator as _;

pub mod actors;
pub mod app;
#[cfg(feature = "chaos")]
pub mod chaos;
pub mod clock;
pub mod config;
pub mod error;
pub mod front;
pub mod history;
pub mod input;
pub mod lease;
pub mod listener;
pub mod llm;
pub mod media;
pub mod ops;
pub mod persona;
pub mod pricing;
pub mod retry;
pub mod store;
pub mod telegram;
pub mod telemetry;
pub mod texts;
