//! The LLM side that is not an actor: OpenAI-compatible wire types, the HTTP
//! call with its error classification, and the shared client.
//!
//! The actor that owns the client and bounds concurrency is
//! `actors/root/llm_pool.rs`.

pub mod client;
pub mod error;
pub mod wire;

pub use client::LlmClient;
pub use error::LlmError;
pub use wire::{ChatMessage, Completion, Role, Transcript};
