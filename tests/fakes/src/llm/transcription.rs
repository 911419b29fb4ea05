//! The fake speech-to-text endpoint, `POST /v1/audio/transcriptions`.
//!
//! Voice notes reach the bot as audio files it must turn into text before
//! the chat model sees them; OpenAI and Groq both take them as
//! `multipart/form-data` with a `file` part (file name and content type)
//! and the text fields `model`, `language`, `response_format`,
//! `temperature` and `prompt`. Each well-formed request is recorded as a
//! [`TranscriptionRequest`]; the answer comes from the replies queued with
//! [`FakeLlm::script_transcriptions`], else it is the transcript set with
//! [`FakeLlm::set_transcript`] ([`DEFAULT_TRANSCRIPT`] until then), after
//! the latency set with [`FakeLlm::set_transcription_latency`].
//!
//! A transcript is answered as the request's `response_format` asks:
//! `{"text": …}` for `json` (the default), the bare text for `text`, `srt`
//! and `vtt`, and a minimal verbose object for `verbose_json`. A request
//! that is not multipart, or lacks `model` or a non-empty `file`, gets a
//! 400 with an OpenAI error body and is not recorded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{FakeLlm, HANG_FOR, Shared, json_response, openai_error};
use crate::{lock, wait_until};

/// What the default reply transcribes every audio file to, until
/// [`FakeLlm::set_transcript`] says otherwise.
pub const DEFAULT_TRANSCRIPT: &str = "hello from a voice note";

/// A recorded `POST /v1/audio/transcriptions` request.
#[derive(Clone, Debug)]
pub struct TranscriptionRequest {
    /// The `model` field.
    pub model: String,
    /// The file name of the `file` part (empty if it had none).
    pub file_name: String,
    /// The content type of the `file` part, if given.
    pub content_type: Option<String>,
    /// The audio bytes.
    pub bytes: Vec<u8>,
    /// The `response_format` field, if given.
    pub response_format: Option<String>,
    /// The `language` field, if given.
    pub language: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// When the fake received the request.
    pub at: Instant,
}

/// What to answer to one transcription request.
///
/// Variants answer at once; wrap one with [`after`](Self::after) (the
/// [`Delayed`](Self::Delayed) variant) to answer it later.
#[derive(Clone, Debug)]
pub enum TranscriptionReply {
    /// A successful transcription of the audio to this text, shaped by the
    /// request's `response_format`.
    Text(String),
    /// This HTTP status and body (sent as `application/json` if it looks
    /// like JSON), with `Retry-After: N` when `retry_after` is set.
    Status {
        /// HTTP status code.
        code: u16,
        /// Seconds for the `Retry-After` header.
        retry_after: Option<u64>,
        /// Response body.
        body: String,
    },
    /// `200 application/json` with a body that is not JSON.
    Garbage,
    /// Never answers (sleeps for an hour); the client's timeout must fire.
    Hang,
    /// `reply`, after sleeping `delay`.
    Delayed {
        /// Slept before answering.
        delay: Duration,
        /// The answer then.
        reply: Box<TranscriptionReply>,
    },
}

impl TranscriptionReply {
    /// An immediate successful transcription.
    pub fn text(s: impl Into<String>) -> TranscriptionReply {
        TranscriptionReply::Text(s.into())
    }

    /// An immediate HTTP error with an OpenAI-style JSON error body and an
    /// optional `Retry-After` header.
    pub fn status(code: u16, retry_after: Option<u64>) -> TranscriptionReply {
        let body = json!({"error": {
            "message": format!("fake error {code}"),
            "type": "fake_error",
            "code": code,
        }});
        TranscriptionReply::Status {
            code,
            retry_after,
            body: body.to_string(),
        }
    }

    /// This reply, answered after `delay`.
    pub fn after(self, delay: Duration) -> TranscriptionReply {
        TranscriptionReply::Delayed {
            delay,
            reply: Box::new(self),
        }
    }
}

/// The transcription side of the fake's state.
#[derive(Debug, Default)]
pub(super) struct TranscriptionState {
    requests: Vec<TranscriptionRequest>,
    script: VecDeque<TranscriptionReply>,
    /// `None` until set: [`DEFAULT_TRANSCRIPT`].
    transcript: Option<String>,
    latency: Duration,
}

impl FakeLlm {
    /// Queues replies for the next transcription requests (first in, first
    /// out), used before falling back to the default transcript.
    pub fn script_transcriptions(&self, replies: Vec<TranscriptionReply>) {
        lock(&self.shared.inner)
            .transcription
            .script
            .extend(replies);
    }

    /// Sets what the default reply transcribes every audio file to
    /// (initially [`DEFAULT_TRANSCRIPT`]).
    pub fn set_transcript(&self, text: &str) {
        lock(&self.shared.inner).transcription.transcript = Some(text.to_owned());
    }

    /// Sets the latency of the default transcription reply.
    pub fn set_transcription_latency(&self, d: Duration) {
        lock(&self.shared.inner).transcription.latency = d;
    }

    /// Every well-formed transcription request received, in arrival order.
    pub fn transcription_requests(&self) -> Vec<TranscriptionRequest> {
        lock(&self.shared.inner).transcription.requests.clone()
    }

    /// Number of well-formed transcription requests received.
    pub fn transcription_count(&self) -> usize {
        lock(&self.shared.inner).transcription.requests.len()
    }

    /// Waits until at least `n` transcription requests were received (or
    /// `timeout` passes) and returns the count.
    pub async fn wait_for_transcriptions(&self, n: usize, timeout: Duration) -> usize {
        wait_until(&self.shared.arrived, timeout, || {
            self.transcription_count() >= n
        })
        .await;
        self.transcription_count()
    }
}

/// The fields of a transcription form, as received.
#[derive(Default)]
struct Form {
    file: Option<(String, Option<String>, Vec<u8>)>,
    model: Option<String>,
    language: Option<String>,
    response_format: Option<String>,
}

/// Reads the multipart form; `Err` is the message of a 400.
async fn read_form(mut multipart: Multipart) -> Result<Form, String> {
    let mut form = Form::default();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| format!("could not parse multipart form: {}", e.body_text()))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            let file_name = field.file_name().unwrap_or_default().to_owned();
            let content_type = field.content_type().map(str::to_owned);
            let bytes = field
                .bytes()
                .await
                .map_err(|e| format!("could not read file: {}", e.body_text()))?;
            form.file = Some((file_name, content_type, bytes.to_vec()));
            continue;
        }
        let value = field
            .text()
            .await
            .map_err(|e| format!("could not read field {name}: {}", e.body_text()))?;
        match name.as_str() {
            "model" => form.model = Some(value),
            "language" => form.language = Some(value),
            "response_format" => form.response_format = Some(value),
            // `temperature`, `prompt`, `timestamp_granularities[]`, …
            _ => {}
        }
    }
    Ok(form)
}

/// `POST /v1/audio/transcriptions`.
pub(super) async fn transcriptions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let multipart = match multipart {
        Ok(m) => m,
        Err(rejection) => {
            let message = format!(
                "expected a multipart/form-data body: {}",
                rejection.body_text()
            );
            return openai_error(StatusCode::BAD_REQUEST, &message);
        }
    };
    let form = match read_form(multipart).await {
        Ok(form) => form,
        Err(message) => return openai_error(StatusCode::BAD_REQUEST, &message),
    };
    let Some(model) = form.model.filter(|m| !m.is_empty()) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
        );
    };
    let Some((file_name, content_type, bytes)) = form.file else {
        return openai_error(StatusCode::BAD_REQUEST, "file is a required property");
    };
    if bytes.is_empty() {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "The audio file could not be decoded or its format is not supported.",
        );
    }
    let request = TranscriptionRequest {
        model,
        file_name,
        content_type,
        bytes,
        response_format: form.response_format,
        language: form.language,
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        at: Instant::now(),
    };
    let format = request.response_format.clone().unwrap_or_default();
    let reply = {
        let mut inner = lock(&shared.inner);
        let state = &mut inner.transcription;
        state.requests.push(request);
        state.script.pop_front().unwrap_or_else(|| {
            let text = state
                .transcript
                .clone()
                .unwrap_or_else(|| DEFAULT_TRANSCRIPT.to_owned());
            TranscriptionReply::Text(text).after(state.latency)
        })
    };
    shared.arrived.notify_waiters();
    answer(reply, &format).await
}

/// Sends `reply` for a request that asked for `response_format = format`.
async fn answer(mut reply: TranscriptionReply, format: &str) -> Response {
    loop {
        match reply {
            TranscriptionReply::Delayed { delay, reply: next } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                reply = *next;
            }
            TranscriptionReply::Text(text) => {
                return match format {
                    "text" | "srt" | "vtt" => (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                        text,
                    )
                        .into_response(),
                    "verbose_json" => json_response(
                        StatusCode::OK,
                        json!({
                            "task": "transcribe",
                            "language": "english",
                            "duration": 1.0,
                            "text": text,
                            "segments": [],
                        })
                        .to_string(),
                    ),
                    _ => json_response(StatusCode::OK, json!({"text": text}).to_string()),
                };
            }
            TranscriptionReply::Status {
                code,
                retry_after,
                body,
            } => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let content_type = if body.trim_start().starts_with('{') {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                };
                let mut response =
                    (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
                if let Some(secs) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                return response;
            }
            TranscriptionReply::Garbage => {
                return json_response(StatusCode::OK, r#"{"text": "unterminated"#.to_owned());
            }
            TranscriptionReply::Hang => {
                tokio::time::sleep(HANG_FOR).await;
                return openai_error(StatusCode::GATEWAY_TIMEOUT, "fake hang elapsed");
            }
        }
    }
}
