//! OpenAI-compatible chat-completions and audio-transcription types: exactly
//! the fields llmgram sends and reads, so any compatible server (OpenAI,
//! Groq, Ollama, vLLM, llama.cpp) works.

use std::sync::Arc;

use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Serialize, Serializer};

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
///
/// Only the current turn's user message may carry images (as `data:` URLs);
/// the history never holds image bytes. A message without images serializes
/// as `{"role": …, "content": "text"}`, one with images as the
/// OpenAI-compatible list of parts (see [`ChatMessage::with_images`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// The author.
    pub role: Role,
    /// The text.
    pub content: Arc<str>,
    /// Images of this turn (`data:image/jpeg;base64,…` URLs), if any; `None`
    /// for every text message, so they stay as small as before.
    pub images: Option<Arc<[Arc<str>]>>,
}

impl ChatMessage {
    /// A message with the given role and text.
    pub fn new(role: Role, content: impl Into<Arc<str>>) -> Self {
        Self {
            role,
            content: content.into(),
            images: None,
        }
    }

    /// A message with text and images (data URLs such as
    /// `data:image/jpeg;base64,…`). It is sent as a list of parts: the text
    /// (left out when blank), then one `image_url` part per image. With no
    /// images it is the same as [`ChatMessage::new`].
    /// Images are shared, not copied: a photo's data URL goes into the
    /// answer's request and its description's without a second copy.
    pub fn with_images<I>(role: Role, content: impl Into<Arc<str>>, images: Vec<I>) -> Self
    where
        I: Into<Arc<str>>,
    {
        let images = (!images.is_empty()).then(|| images.into_iter().map(Into::into).collect());
        Self {
            role,
            content: content.into(),
            images,
        }
    }

    /// The message's images (data URLs); empty for a text message.
    pub fn images(&self) -> &[Arc<str>] {
        self.images.as_deref().unwrap_or_default()
    }
}

impl Serialize for ChatMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut message = serializer.serialize_struct("ChatMessage", 2)?;
        message.serialize_field("role", &self.role)?;
        match self.images() {
            [] => message.serialize_field("content", &*self.content)?,
            images => message.serialize_field(
                "content",
                &Parts {
                    text: &self.content,
                    images,
                },
            )?,
        }
        message.end()
    }
}

/// A message's content as a list of parts: its text, then its images.
struct Parts<'a> {
    text: &'a str,
    images: &'a [Arc<str>],
}

impl Serialize for Parts<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = (!self.text.trim().is_empty()).then_some(Part::Text { text: self.text });
        let images = self.images.iter().map(|url| Part::ImageUrl {
            image_url: ImageUrl { url },
        });
        serializer.collect_seq(text.into_iter().chain(images))
    }
}

/// One part of a message's content.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part<'a> {
    /// `{"type": "text", "text": …}`.
    Text { text: &'a str },
    /// `{"type": "image_url", "image_url": {"url": …}}`.
    ImageUrl { image_url: ImageUrl<'a> },
}

/// Where an image part's image is: here, a `data:` URL.
#[derive(Serialize)]
struct ImageUrl<'a> {
    url: &'a str,
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
    /// The model that answered (the one it was asked of), which prices the
    /// tokens; empty until the client that made the call sets it.
    pub model: String,
}

/// The parts of a `POST /audio/transcriptions` response llmgram reads
/// (`response_format=json`).
#[derive(Debug, Deserialize)]
pub struct TranscriptionResponse {
    /// What was said; blank when nothing was heard.
    pub text: String,
}

/// A voice note or audio file as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// What was said, trimmed; empty when nothing was heard.
    pub text: String,
    /// The transcript went past `llm.max_transcript_chars` and `text` is
    /// its beginning.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_message_is_sent_as_before() {
        let message = ChatMessage::new(Role::User, "hi");
        assert_eq!(
            serde_json::to_string(&message).unwrap(),
            r#"{"role":"user","content":"hi"}"#
        );
        let no_images = ChatMessage::with_images(Role::User, "hi", Vec::<String>::new());
        assert_eq!(no_images, message);
        assert!(no_images.images().is_empty());
    }

    #[test]
    fn images_are_sent_as_parts_after_the_text() {
        let message = ChatMessage::with_images(
            Role::User,
            "what is this?",
            vec![
                "data:image/jpeg;base64,AAAA".to_owned(),
                "data:image/png;base64,BBBB".to_owned(),
            ],
        );
        assert_eq!(message.images().len(), 2);
        assert_eq!(
            serde_json::to_string(&message).unwrap(),
            concat!(
                r#"{"role":"user","content":["#,
                r#"{"type":"text","text":"what is this?"},"#,
                r#"{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,AAAA"}},"#,
                r#"{"type":"image_url","image_url":{"url":"data:image/png;base64,BBBB"}}"#,
                r#"]}"#
            )
        );
    }

    #[test]
    fn a_blank_caption_sends_the_image_alone() {
        let message = ChatMessage::with_images(
            Role::User,
            " ",
            vec!["data:image/jpeg;base64,AAAA".to_owned()],
        );
        assert_eq!(
            serde_json::to_string(&message).unwrap(),
            r#"{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,AAAA"}}]}"#
        );
    }
}
