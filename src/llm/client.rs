//! One provider: chat-completion and audio-transcription calls over its own
//! pooled HTTP client, every failure classified into an [`LlmError`], and the
//! retry loop (shared by both) that honours `Retry-After` and backs off with
//! jitter.
//!
//! Nothing a provider sends is unbounded: a body is read up to
//! `llm.max_response_bytes` (a plain body past it is refused, a stream is
//! cut there), and an answer is cut at `llm.max_answer_chars` (a stream is
//! then closed, so the provider stops generating); a cut answer is marked
//! [`Completion::truncated`]. A transcript is cut at
//! `llm.max_transcript_chars` likewise ([`Transcript::truncated`]).

use std::time::Duration;

use std::sync::Arc;

use eventsource_stream::{EventStreamError, Eventsource as _};
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use reqwest::multipart::{Form, Part};
use tokio::sync::mpsc;
use tokio::time::Instant;
use url::Url;

use super::error::{LlmError, TimeoutPhase};
use super::wire::{
    ChatChunk, ChatMessage, ChatRequest, ChatResponse, Completion, StreamOptions, Transcript,
    TranscriptionResponse,
};
use crate::config::{Config, LlmConfig, RetryConfig, Secret, Secrets};
use crate::retry::Backoff;

/// Longest part of an error body kept in an [`LlmError::Rejected`] (bytes);
/// enough to read the provider's message, short enough for one log line.
const ERROR_DETAIL_BYTES: usize = 300;

/// The provider endpoint and the one pooled client that talks to it.
/// Cloning is cheap and shares the connection pool.
#[derive(Debug, Clone)]
pub struct LlmClient {
    name: Arc<str>,
    http: reqwest::Client,
    endpoint: Url,
    api_key: Option<Secret>,
    model: Arc<str>,
    max_tokens: u32,
    temperature: f32,
    max_answer_chars: usize,
    max_response_bytes: usize,
    /// The model for messages with images, if this provider can see them.
    vision_model: Option<Arc<str>>,
    /// The speech-to-text model, if this provider transcribes.
    transcription_model: Option<Arc<str>>,
    /// `{base_url}/audio/transcriptions`.
    transcriptions: Url,
    transcription_timeout: Duration,
    max_transcript_chars: usize,
}

/// Per-call choices over a provider's configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions<'a> {
    /// Another model than the provider's.
    pub model: Option<&'a str>,
    /// Another sampling temperature.
    pub temperature: Option<f32>,
    /// Stream the answer here as it is generated.
    pub stream: Option<&'a StreamTo>,
}

/// Where a streamed answer's text goes as it arrives, and the limits of a
/// stream.
#[derive(Debug, Clone)]
pub struct StreamTo {
    /// Each piece of new text, in order. When the receiver is gone (the user
    /// cancelled), the stream is dropped and the provider stops generating.
    pub deltas: mpsc::Sender<String>,
    /// Longest silence between two chunks once text has started arriving
    /// (`llm.stream_chunk_timeout`).
    pub chunk_timeout: Duration,
    /// Longest a whole streamed answer may take (`llm.stream_max_duration`).
    pub max_duration: Duration,
}

/// The primary provider then every `[[llm.fallback]]`, in the order calls
/// try them; each with its own client.
pub fn providers(config: &Config, secrets: &Secrets) -> Result<Vec<LlmClient>, LlmError> {
    let llm = &config.llm;
    let mut providers = vec![
        LlmClient::new(
            &llm.name,
            &llm.base_url,
            &llm.model,
            llm,
            secrets.llm_api_key.clone(),
        )?
        .with_media(llm.vision_model(), llm.transcription_model()),
    ];
    for fallback in &llm.fallback {
        providers.push(
            LlmClient::new(
                &fallback.name,
                &fallback.base_url,
                &fallback.model,
                llm,
                secrets.fallback_keys.get(&fallback.name).cloned(),
            )?
            .with_media(fallback.vision_model(), fallback.transcription_model()),
        );
    }
    Ok(providers)
}

impl LlmClient {
    /// Builds the client of one provider: rustls, connection pooling, connect
    /// and request timeouts from config.
    pub fn new(
        name: &str,
        base_url: &Url,
        model: &str,
        config: &LlmConfig,
        api_key: Option<Secret>,
    ) -> Result<Self, LlmError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_max_idle_per_host(config.max_concurrency)
            .pool_idle_timeout(config.pool_idle_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| LlmError::Connect(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            name: name.into(),
            http,
            endpoint: endpoint_url(base_url, "chat/completions")?,
            api_key,
            model: model.into(),
            max_tokens: config.max_tokens,
            temperature: config.temperature,
            max_answer_chars: config.max_answer_chars,
            max_response_bytes: config.max_response_bytes,
            vision_model: None,
            transcription_model: None,
            transcriptions: endpoint_url(base_url, "audio/transcriptions")?,
            transcription_timeout: config.transcription_timeout,
            max_transcript_chars: config.max_transcript_chars,
        })
    }

    /// The same provider, able to see images with `vision_model` and to
    /// transcribe audio with `transcription_model` (each when given).
    pub fn with_media(
        mut self,
        vision_model: Option<&str>,
        transcription_model: Option<&str>,
    ) -> Self {
        self.vision_model = vision_model.map(Arc::from);
        self.transcription_model = transcription_model.map(Arc::from);
        self
    }

    /// The model messages with images go to, if this provider can see them.
    pub fn vision_model(&self) -> Option<&str> {
        self.vision_model.as_deref()
    }

    /// The speech-to-text model, if this provider transcribes.
    pub fn transcription_model(&self) -> Option<&str> {
        self.transcription_model.as_deref()
    }

    /// The model requests are sent to.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The provider's name from config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls the provider, retrying what may succeed later, until an answer,
    /// a final error, `policy`'s limits, or `deadline`. Returns the result and
    /// the number of calls made.
    pub async fn complete_with_retries(
        &self,
        messages: &[ChatMessage],
        options: CallOptions<'_>,
        policy: &RetryConfig,
        deadline: Instant,
    ) -> (Result<Completion, LlmError>, u32) {
        let model = options.model.unwrap_or(&self.model);
        let temperature = options.temperature.unwrap_or(self.temperature);
        let abandoned = || options.stream.is_some_and(|s| s.deltas.is_closed());
        let (result, calls) = self
            .with_retries(policy, deadline, abandoned, move || async move {
                match options.stream {
                    // A stream is bounded by the deadline only until its first
                    // text: after that, cutting it would waste a shown answer.
                    Some(stream) => {
                        self.stream_with(messages, model, temperature, stream, deadline)
                            .await
                    }
                    None => {
                        let call = self.complete_with(messages, model, temperature);
                        match tokio::time::timeout_at(deadline, call).await {
                            Ok(result) => result,
                            Err(_) => Err(LlmError::Timeout(TimeoutPhase::Read)),
                        }
                    }
                }
            })
            .await;
        // Whoever is charged for the answer prices it by its model.
        let result = result.map(|completion| Completion {
            model: model.to_owned(),
            ..completion
        });
        (result, calls)
    }

    /// Transcribes `audio` (a file named `file_name` of type `mime`) with
    /// `model`, retrying what may succeed later exactly like
    /// [`complete_with_retries`](Self::complete_with_retries), until a
    /// transcript, a final error, `policy`'s limits, or `deadline`. Each
    /// request has `llm.transcription_timeout`. Returns the result and the
    /// number of calls made; counts the outcome in
    /// `llmgram_transcriptions_total`.
    pub async fn transcribe_with_retries(
        &self,
        audio: bytes::Bytes,
        file_name: &str,
        mime: &str,
        model: &str,
        policy: &RetryConfig,
        deadline: Instant,
    ) -> (Result<Transcript, LlmError>, u32) {
        let (result, attempts) = self
            .with_retries(
                policy,
                deadline,
                || false,
                move || {
                    let call = self.transcribe(audio.clone(), file_name, mime, model);
                    async move {
                        match tokio::time::timeout_at(deadline, call).await {
                            Ok(result) => result,
                            Err(_) => Err(LlmError::Timeout(TimeoutPhase::Read)),
                        }
                    }
                },
            )
            .await;
        let outcome = match &result {
            Ok(transcript) if transcript.text.is_empty() => "empty",
            Ok(_) => "ok",
            Err(_) => "failed",
        };
        metrics::counter!(
            crate::telemetry::families::TRANSCRIPTIONS,
            "provider" => self.name.to_string(),
            "outcome" => outcome
        )
        .increment(1);
        (result, attempts)
    }

    /// The retry loop of every call: runs `call` until it succeeds, fails
    /// for good, `policy`'s limits are reached, `deadline` would pass, or
    /// `abandoned` says nobody wants the result any more. Counts each error
    /// in `llmgram_llm_errors_total`.
    async fn with_retries<T, F, Fut>(
        &self,
        policy: &RetryConfig,
        deadline: Instant,
        abandoned: impl Fn() -> bool,
        mut call: F,
    ) -> (Result<T, LlmError>, u32)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, LlmError>>,
    {
        let started = Instant::now();
        let mut backoff = Backoff::new(policy.initial_backoff, policy.max_backoff);
        let mut attempt = 1;
        loop {
            if abandoned() {
                return (Err(LlmError::Abandoned), attempt);
            }
            let error = match call().await {
                Ok(value) => return (Ok(value), attempt),
                Err(error) => error,
            };
            metrics::counter!(
                "llmgram_llm_errors_total",
                "provider" => self.name.to_string(),
                "class" => error.class()
            )
            .increment(1);
            if let LlmError::Rejected { status, detail } = &error {
                // A config or request error: say it loudly, once, here.
                tracing::error!(provider = %self.name, status, %detail, "provider rejected the request; check llm config and key");
            }
            if !error.is_retryable() || attempt >= policy.max_attempts {
                return (Err(error), attempt);
            }
            let wait = match error.retry_after() {
                Some(wait) if wait > policy.max_retry_after => return (Err(error), attempt),
                Some(wait) => wait,
                None => backoff.next_delay(),
            };
            if started.elapsed() + wait > policy.max_elapsed || Instant::now() + wait >= deadline {
                return (Err(error), attempt);
            }
            tracing::debug!(provider = %self.name, attempt, class = error.class(), ?wait, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Sends one transcription request (`POST /audio/transcriptions`,
    /// multipart: the file, `model`, `response_format=json`) and returns
    /// the transcript, cut at `llm.max_transcript_chars`.
    pub async fn transcribe(
        &self,
        audio: bytes::Bytes,
        file_name: &str,
        mime: &str,
        model: &str,
    ) -> Result<Transcript, LlmError> {
        let length = audio.len() as u64;
        let file = || {
            Part::stream_with_length(reqwest::Body::from(audio.clone()), length)
                .file_name(file_name.to_owned())
        };
        let file = file().mime_str(mime).unwrap_or_else(|_| {
            // The provider tells the format from the file name too.
            tracing::debug!(provider = %self.name, "not a MIME type; file sent without one");
            file()
        });
        let form = Form::new()
            .part("file", file)
            .text("model", model.to_owned())
            .text("response_format", "json");
        let request = self
            .http
            .post(self.transcriptions.clone())
            .multipart(form)
            .timeout(self.transcription_timeout);
        let request = match &self.api_key {
            Some(key) => request.bearer_auth(key.expose()),
            None => request,
        };
        let response = check_status(request.send().await?).await?;
        let bytes = read_capped(response, self.max_response_bytes).await?;
        parse_transcript(&bytes, self.max_transcript_chars)
    }

    /// Sends one chat-completion request to the provider's configured model
    /// and returns the answer.
    pub async fn complete(&self, messages: &[ChatMessage]) -> Result<Completion, LlmError> {
        self.complete_with(messages, &self.model, self.temperature)
            .await
    }

    /// Sends one chat-completion request to `model` and returns the answer.
    pub async fn complete_with(
        &self,
        messages: &[ChatMessage],
        model: &str,
        temperature: f32,
    ) -> Result<Completion, LlmError> {
        let request = self.post(messages, model, temperature, false);
        let response = check_status(request.send().await?).await?;
        let bytes = read_capped(response, self.max_response_bytes).await?;
        let mut completion = parse_completion(&bytes)?;
        cap_answer(&mut completion, self.max_answer_chars);
        Ok(completion)
    }

    /// Sends one chat-completion request with `"stream": true` and forwards
    /// each piece of text to `stream.deltas` as it arrives. Until the first
    /// text, the call ends at `deadline` like any other; after it, only a
    /// silence of `stream.chunk_timeout` or the whole answer taking
    /// `stream.max_duration` ends it, and any failure is then a
    /// [`LlmError::StreamCut`], since the user has seen part of the answer.
    pub async fn stream_with(
        &self,
        messages: &[ChatMessage],
        model: &str,
        temperature: f32,
        stream: &StreamTo,
        deadline: Instant,
    ) -> Result<Completion, LlmError> {
        let request = self
            .post(messages, model, temperature, true)
            .timeout(stream.max_duration);
        let started = Instant::now();
        let response = match tokio::time::timeout_at(deadline, request.send()).await {
            Ok(response) => check_status(response?).await?,
            Err(_) => return Err(LlmError::Timeout(TimeoutPhase::Read)),
        };
        if is_json(&response) {
            // A server that does not stream answers with one plain body.
            let read = read_capped(response, self.max_response_bytes);
            let bytes = match tokio::time::timeout_at(deadline, read).await {
                Ok(bytes) => bytes?,
                Err(_) => return Err(LlmError::Timeout(TimeoutPhase::Read)),
            };
            let mut completion = parse_completion(&bytes)?;
            cap_answer(&mut completion, self.max_answer_chars);
            completion.first_text_after = Some(started.elapsed());
            if stream.deltas.send(completion.text.clone()).await.is_err() {
                return Err(LlmError::Abandoned);
            }
            return Ok(completion);
        }
        let mut first_text_after = None;
        let limit = self.max_response_bytes;
        let mut read = 0;
        let mut events = response
            .bytes_stream()
            .map(move |chunk| {
                let chunk = chunk.map_err(BodyError::Http)?;
                read += chunk.len();
                if read > limit {
                    return Err(BodyError::TooLarge);
                }
                Ok(chunk)
            })
            .eventsource();
        let mut text = String::new();
        let mut text_chars = 0;
        let mut truncated = false;
        let mut usage = None;
        let mut finish_reason = None;
        let outcome = loop {
            let wait_until = if text.is_empty() {
                deadline
            } else {
                Instant::now() + stream.chunk_timeout
            };
            let event = match tokio::time::timeout_at(wait_until, events.next()).await {
                Err(_) => break Err(LlmError::Timeout(TimeoutPhase::Read)),
                Ok(None) if finish_reason.is_some() => break Ok(()),
                Ok(None) => {
                    break Err(LlmError::Network(
                        "the stream ended without finishing".into(),
                    ));
                }
                Ok(Some(Err(EventStreamError::Transport(BodyError::TooLarge))))
                    if !text.trim().is_empty() =>
                {
                    tracing::info!(provider = %self.name, limit, "stream cut at the response size limit");
                    truncated = true;
                    break Ok(());
                }
                Ok(Some(Err(error))) => break Err(stream_error(error, limit)),
                Ok(Some(Ok(event))) => event,
            };
            if event.data.trim() == "[DONE]" {
                break Ok(());
            }
            let chunk: ChatChunk = match serde_json::from_str(&event.data) {
                Ok(chunk) => chunk,
                Err(error) => {
                    break Err(LlmError::InvalidResponse(format!(
                        "not a stream chunk: {error}"
                    )));
                }
            };
            if chunk.usage.is_some() {
                usage = chunk.usage;
            }
            let Some(choice) = chunk.choices.into_iter().next() else {
                continue;
            };
            if choice.finish_reason.is_some() {
                finish_reason = choice.finish_reason;
            }
            let Some(content) = choice.delta.and_then(|d| d.content) else {
                continue;
            };
            if content.is_empty() {
                continue;
            }
            let room = self.max_answer_chars.saturating_sub(text_chars);
            let content = match content.char_indices().nth(room) {
                // Past the limit: keep what fits, then stop reading.
                Some((end, _)) => {
                    truncated = true;
                    content[..end].to_owned()
                }
                None => content,
            };
            text_chars += content.chars().count();
            text.push_str(&content);
            if first_text_after.is_none() && !text.trim().is_empty() {
                first_text_after = Some(started.elapsed());
            }
            if stream.deltas.send(content).await.is_err() {
                // Nobody reads the answer any more: dropping the response
                // closes the connection, and the provider stops generating.
                tracing::debug!(provider = %self.name, "stream abandoned by its reader");
                break Err(LlmError::Abandoned);
            }
            if truncated {
                // Dropping the stream closes the connection: the provider
                // stops generating what nobody will read.
                tracing::info!(provider = %self.name, limit = self.max_answer_chars, "answer cut at its length limit");
                break Ok(());
            }
        };
        match outcome {
            Ok(()) if text.trim().is_empty() => {
                Err(LlmError::InvalidResponse("empty answer".into()))
            }
            Ok(()) => Ok(Completion {
                text,
                usage,
                finish_reason,
                first_text_after,
                truncated,
                model: String::new(),
            }),
            Err(LlmError::Abandoned) => Err(LlmError::Abandoned),
            // Nothing the user could read arrived: the call may be retried
            // or go to the next provider like any other.
            Err(error) if text.trim().is_empty() => Err(error),
            Err(error) => Err(LlmError::StreamCut(Box::new(error))),
        }
    }

    /// A `POST /chat/completions` of the prompt, with the key, if any.
    fn post(
        &self,
        messages: &[ChatMessage],
        model: &str,
        temperature: f32,
        stream: bool,
    ) -> reqwest::RequestBuilder {
        let body = ChatRequest {
            model,
            messages,
            max_tokens: self.max_tokens,
            temperature,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
        };
        let request = self.http.post(self.endpoint.clone()).json(&body);
        match &self.api_key {
            Some(key) => request.bearer_auth(key.expose()),
            None => request,
        }
    }
}

/// Classifies a non-success status; passes a success through.
async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, LlmError> {
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(LlmError::RateLimited {
            retry_after: retry_after(response.headers()),
        });
    }
    if status.is_server_error() {
        return Err(LlmError::Server {
            status: status.as_u16(),
        });
    }
    if !status.is_success() {
        let body = read_prefix(response, ERROR_DETAIL_BYTES).await;
        return Err(LlmError::Rejected {
            status: status.as_u16(),
            detail: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(response)
}

/// A failure reading a streamed body.
#[derive(Debug)]
enum BodyError {
    /// The transport's.
    Http(reqwest::Error),
    /// More than `llm.max_response_bytes`.
    TooLarge,
}

/// The whole body, unless it is longer than `limit` bytes.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, LlmError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(LlmError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(LlmError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Up to `limit` bytes of the body's start (best effort: a failure ends it).
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(limit);
    body
}

/// Cuts `completion`'s text to `max_chars` characters, marking it truncated.
fn cap_answer(completion: &mut Completion, max_chars: usize) {
    if let Some((end, _)) = completion.text.char_indices().nth(max_chars) {
        completion.text.truncate(end);
        completion.truncated = true;
    }
}

/// Whether the body is one JSON document (not an event stream).
fn is_json(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"))
}

/// Classifies a failure while reading a stream.
fn stream_error(error: EventStreamError<BodyError>, limit: usize) -> LlmError {
    match error {
        EventStreamError::Transport(BodyError::Http(error)) => error.into(),
        EventStreamError::Transport(BodyError::TooLarge) => LlmError::TooLarge { limit },
        EventStreamError::Utf8(error) => {
            LlmError::InvalidResponse(format!("stream is not UTF-8: {error}"))
        }
        EventStreamError::Parser(error) => {
            LlmError::InvalidResponse(format!("not a server-sent event stream: {error}"))
        }
    }
}

/// `{base_url}/{path}`, keeping every segment of the base path (`Url::join`
/// would drop the last one of `.../openai/v1`).
fn endpoint_url(base: &Url, path: &str) -> Result<Url, LlmError> {
    let joined = format!("{}/{path}", base.as_str().trim_end_matches('/'));
    Url::parse(&joined).map_err(|e| {
        let base = crate::config::redact_url(base);
        LlmError::Connect(format!("bad endpoint {base}/{path}: {e}"))
    })
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Reads the first choice's text; a body that is not JSON, has no choices or
/// only blank text is an [`LlmError::InvalidResponse`].
pub fn parse_completion(bytes: &[u8]) -> Result<Completion, LlmError> {
    let response: ChatResponse = serde_json::from_slice(bytes)
        .map_err(|e| LlmError::InvalidResponse(format!("not a chat completion: {e}")))?;
    let choice = response
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| LlmError::InvalidResponse("no choices".into()))?;
    let text = choice
        .message
        .and_then(|m| m.content)
        .filter(|text| !text.trim().is_empty())
        .ok_or_else(|| LlmError::InvalidResponse("empty answer".into()))?;
    Ok(Completion {
        text,
        usage: response.usage,
        finish_reason: choice.finish_reason,
        first_text_after: None,
        truncated: false,
        model: String::new(),
    })
}

/// Reads a transcription's text, trimmed and cut at `max_chars`
/// characters; a body that is not JSON or has no `text` is an
/// [`LlmError::InvalidResponse`]. Blank text is a transcript of nothing, not
/// an error: the audio may hold no speech.
pub fn parse_transcript(bytes: &[u8], max_chars: usize) -> Result<Transcript, LlmError> {
    let response: TranscriptionResponse = serde_json::from_slice(bytes)
        .map_err(|e| LlmError::InvalidResponse(format!("not a transcription: {e}")))?;
    let mut text = response.text.trim().to_owned();
    let mut truncated = false;
    if let Some((end, _)) = text.char_indices().nth(max_chars) {
        text.truncate(end);
        truncated = true;
    }
    Ok(Transcript { text, truncated })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keeps_the_base_path() {
        let base = Url::parse("https://api.groq.com/openai/v1").unwrap();
        assert_eq!(
            endpoint_url(&base, "chat/completions").unwrap().as_str(),
            "https://api.groq.com/openai/v1/chat/completions"
        );
        let base = Url::parse("http://127.0.0.1:11434/v1/").unwrap();
        assert_eq!(
            endpoint_url(&base, "chat/completions").unwrap().as_str(),
            "http://127.0.0.1:11434/v1/chat/completions"
        );
    }

    #[test]
    fn garbage_bodies_are_invalid_responses() {
        for body in [
            &b"{\"choices\": [ this is not json"[..],
            b"{\"choices\": []}",
            b"{\"choices\": [{\"message\": {\"content\": \"  \"}}]}",
            b"{\"choices\": [{\"message\": {\"content\": null}}]}",
            b"<html>502</html>",
        ] {
            let err = parse_completion(body).unwrap_err();
            assert_eq!(err.class(), "invalid_response", "{err}");
        }
    }

    #[test]
    fn answers_are_cut_at_the_character_limit() {
        let mut completion =
            parse_completion("{\"choices\":[{\"message\":{\"content\":\"жжжжж\"}}]}".as_bytes())
                .unwrap();
        cap_answer(&mut completion, 5);
        assert_eq!(
            (completion.text.as_str(), completion.truncated),
            ("жжжжж", false)
        );
        cap_answer(&mut completion, 3);
        assert_eq!(
            (completion.text.as_str(), completion.truncated),
            ("жжж", true)
        );
    }

    #[test]
    fn transcripts_are_trimmed_cut_and_may_be_empty() {
        let transcript =
            parse_transcript("{\"text\":\" привет мир \\n\"}".as_bytes(), 100).unwrap();
        assert_eq!(transcript.text, "привет мир");
        assert!(!transcript.truncated);
        let cut = parse_transcript("{\"text\":\"привет мир\"}".as_bytes(), 6).unwrap();
        assert_eq!((cut.text.as_str(), cut.truncated), ("привет", true));
        let silence = parse_transcript(br#"{"text":"  "}"#, 100).unwrap();
        assert_eq!((silence.text.as_str(), silence.truncated), ("", false));
        for body in [&b"<html>502</html>"[..], b"{}", b"{\"text\": null}"] {
            let err = parse_transcript(body, 100).unwrap_err();
            assert_eq!(err.class(), "invalid_response", "{err}");
        }
    }

    #[test]
    fn a_normal_body_parses() {
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        let completion = parse_completion(body).unwrap();
        assert_eq!(completion.text, "hi");
        assert_eq!(completion.usage.unwrap().completion_tokens, 1);
    }
}
