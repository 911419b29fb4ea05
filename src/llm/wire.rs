//! OpenAI-compatible chat-completions types: exactly the fields llmgram sends
//! and reads, so any compatible server (OpenAI, Groq, Ollama, vLLM,
//! llama.cpp) works.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Who wrote a message of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions from the operator's config; never user text.
    System,
    /// The Telegram user.
    User,
    /// The model.
    Assistant,
}

/// One message of a prompt. Content is shared, so building a request from a
/// long history copies pointers, not text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The author.
    pub role: Role,
    /// The text.
    pub content: Arc<str>,
}

impl ChatMessage {
    /// A message with the given role and text.
    pub fn new(role: Role, content: impl Into<Arc<str>>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// The request body of `POST /chat/completions`.
#[derive(Debug, Serialize)]
pub struct ChatRequest<'a> {
    /// Model name.
    pub model: &'a str,
    /// System prompt, history, and the new user message.
    pub messages: &'a [ChatMessage],
    /// Upper bound on generated tokens.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f32,
    /// Whether to stream the answer as server-sent events.
    pub stream: bool,
    /// For a stream: ask for token usage in its last chunk (the budget
    /// counts real tokens, not estimates, where the provider can).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

/// `stream_options` of a streamed request.
#[derive(Debug, Serialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    pub include_usage: bool,
}

/// The parts of the response body llmgram reads.
#[derive(Debug, Deserialize)]
pub struct ChatResponse {
    /// Candidate answers; llmgram reads the first.
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Token accounting, when the provider reports it.
    pub usage: Option<Usage>,
}

/// One candidate answer.
#[derive(Debug, Deserialize)]
pub struct Choice {
    /// The answer message.
    pub message: Option<ChoiceMessage>,
    /// Why generation stopped (`stop`, `length`, …).
    pub finish_reason: Option<String>,
}

/// The message inside a [`Choice`].
#[derive(Debug, Deserialize)]
pub struct ChoiceMessage {
    /// The answer text; some providers send `null` on refusals.
    pub content: Option<String>,
}

/// One server-sent event of a streamed answer (`"stream": true`).
#[derive(Debug, Deserialize)]
pub struct ChatChunk {
    /// Candidate deltas; llmgram reads the first.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Token accounting, sent by some providers with the last chunk.
    pub usage: Option<Usage>,
}

/// One candidate's part of a streamed answer.
#[derive(Debug, Deserialize)]
pub struct ChunkChoice {
    /// The new text, if any.
    pub delta: Option<ChunkDelta>,
    /// Set on the last chunk.
    pub finish_reason: Option<String>,
}

/// The text a chunk adds.
#[derive(Debug, Deserialize)]
pub struct ChunkDelta {
    /// More answer text; absent in role-only or final chunks.
    pub content: Option<String>,
}

/// Token counts reported by the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens in the answer.
    #[serde(default)]
    pub completion_tokens: u64,
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The answer text, never blank.
    pub text: String,
    /// Token counts, when reported.
    pub usage: Option<Usage>,
    /// Why generation stopped, when reported.
    pub finish_reason: Option<String>,
    /// For a streamed answer: how long its first text took, which is what
    /// the user waited for (a long answer streaming for a minute is not a
    /// slow provider).
    pub first_text_after: Option<std::time::Duration>,
    /// The answer went past `llm.max_answer_chars` or
    /// `llm.max_response_bytes` and `text` is its beginning.
    pub truncated: bool,
}
