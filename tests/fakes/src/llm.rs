//! A fake OpenAI-compatible server: chat completions and transcriptions.
//!
//! [`FakeLlm::start`] serves `POST /v1/chat/completions` on `127.0.0.1`.
//! Every request is recorded as an [`LlmRequest`] (its text and its
//! `image_url` parts); the answer is decided by, in order of precedence, the
//! replies queued with [`FakeLlm::script`], the closure installed with
//! [`FakeLlm::set_responder`], and the default echo responder
//! (`"answer to: <last user message>"` after the latency set by
//! [`FakeLlm::set_latency`]).
//!
//! [`LlmReplyKind`] covers the interesting failure modes: HTTP errors with
//! `Retry-After`, malformed JSON, an empty `choices` array, a request that is
//! never answered, and server-sent-event streams that may break midway.
//!
//! The same server fakes speech-to-text, `POST /v1/audio/transcriptions`
//! (OpenAI's and Groq's multipart shape): see [`TranscriptionRequest`],
//! [`TranscriptionReply`], [`FakeLlm::script_transcriptions`] and
//! [`FakeLlm::set_transcript`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::{lock, serve, unix_now, wait_until};

mod transcription;

pub use transcription::{DEFAULT_TRANSCRIPT, TranscriptionReply, TranscriptionRequest};

/// How long a [`LlmReplyKind::Hang`] request sleeps before giving up.
const HANG_FOR: Duration = Duration::from_secs(3600);
/// Pause before aborting a broken stream, so the chunks already produced
/// reach the client before the connection is torn down.
const MIN_BREAK_PAUSE: Duration = Duration::from_millis(20);

/// A recorded chat-completions request.
#[derive(Clone, Debug)]
pub struct LlmRequest {
    /// The full JSON request body.
    pub body: Value,
    /// `model` from the body (empty if absent).
    pub model: String,
    /// `(role, content)` of each entry of `messages`; array contents are
    /// flattened to the concatenation of their text parts.
    pub messages: Vec<(String, String)>,
    /// The `image_url.url` of every `{"type": "image_url", …}` part of every
    /// message, in order (typically `data:image/jpeg;base64,…` URLs).
    pub images: Vec<String>,
    /// Whether the body asked for `"stream": true`.
    pub stream: bool,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// When the fake received the request.
    pub at: Instant,
}

impl LlmRequest {
    /// Content of the last message with role `user` (empty if none).
    pub fn last_user_message(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|(role, _)| role == "user")
            .map_or("", |(_, content)| content.as_str())
    }

    /// Number of image parts in the request (the length of
    /// [`images`](Self::images)).
    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// The copy kept under [`FakeLlm::set_lean_records`]: no body, and each
    /// image URL cut after its first comma (`data:image/jpeg;base64,`).
    fn lean(&self) -> LlmRequest {
        LlmRequest {
            body: Value::Null,
            model: self.model.clone(),
            messages: self.messages.clone(),
            images: self
                .images
                .iter()
                .map(|url| match url.split_once(',') {
                    Some((head, _)) => format!("{head},"),
                    None => url.clone(),
                })
                .collect(),
            stream: self.stream,
            authorization: self.authorization.clone(),
            at: self.at,
        }
    }
}

/// What to answer to one request.
#[derive(Clone, Debug)]
pub struct LlmReply {
    /// Slept before answering.
    pub delay: Duration,
    /// The answer itself.
    pub kind: LlmReplyKind,
}

/// The shape of an answer.
#[derive(Clone, Debug)]
pub enum LlmReplyKind {
    /// A successful completion with this content (sent as SSE chunks followed
    /// by `data: [DONE]` when the request asked for `stream: true`).
    Text(String),
    /// This HTTP status and body, with `Retry-After: N` when `retry_after` is
    /// set.
    Status {
        /// HTTP status code.
        code: u16,
        /// Seconds for the `Retry-After` header.
        retry_after: Option<u64>,
        /// Response body (sent as `application/json` if it looks like JSON).
        body: String,
    },
    /// `200 application/json` with the truncated body
    /// `{"choices": [ this is not json`.
    InvalidJson,
    /// `200` with a well-formed completion whose `choices` array is empty.
    NoChoices,
    /// Never answers (sleeps for an hour); the client's timeout must fire.
    Hang,
    /// A server-sent-event stream with one `delta.content` chunk per entry,
    /// `chunk_delay` apart. With `break_after: Some(k)` the connection is
    /// closed abruptly after `k` chunks, without `[DONE]`.
    Stream {
        /// Content of each chunk.
        chunks: Vec<String>,
        /// Pause between consecutive chunks.
        chunk_delay: Duration,
        /// Abort the connection after this many chunks.
        break_after: Option<usize>,
    },
    /// A `200 text/event-stream` body sent exactly as given (the events,
    /// `data: ` lines and blank lines included), `chunk_delay` between the
    /// pieces: for streams with usage chunks, garbage or odd framing.
    RawSse {
        /// Pieces of the body.
        pieces: Vec<String>,
        /// Pause between consecutive pieces.
        chunk_delay: Duration,
    },
}

impl LlmReply {
    /// An immediate successful completion.
    pub fn text(s: impl Into<String>) -> LlmReply {
        LlmReply::text_after(s, Duration::ZERO)
    }

    /// A successful completion after `delay`.
    pub fn text_after(s: impl Into<String>, delay: Duration) -> LlmReply {
        LlmReply {
            delay,
            kind: LlmReplyKind::Text(s.into()),
        }
    }

    /// An immediate reply of the given kind.
    pub fn now(kind: LlmReplyKind) -> LlmReply {
        LlmReply {
            delay: Duration::ZERO,
            kind,
        }
    }

    /// An immediate HTTP error with an OpenAI-style JSON error body and an
    /// optional `Retry-After` header.
    pub fn status(code: u16, retry_after: Option<u64>) -> LlmReply {
        let body = json!({"error": {
            "message": format!("fake error {code}"),
            "type": "fake_error",
            "code": code,
        }});
        LlmReply::now(LlmReplyKind::Status {
            code,
            retry_after,
            body: body.to_string(),
        })
    }
}

type Responder = Arc<dyn Fn(&LlmRequest) -> LlmReply + Send + Sync>;

/// Handle to a running fake chat-completions server. Cheap to clone.
#[derive(Clone)]
pub struct FakeLlm {
    shared: Arc<Shared>,
    port: u16,
}

impl fmt::Debug for FakeLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeLlm")
            .field("port", &self.port)
            .field("requests", &self.request_count())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    inner: Mutex<Inner>,
    /// Signalled whenever a request is recorded.
    arrived: Notify,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Inner {
    requests: Vec<LlmRequest>,
    script: VecDeque<LlmReply>,
    responder: Option<Responder>,
    latency: Duration,
    /// Pause between the chunks of a text reply asked for as a stream
    /// ([`FakeLlm::set_stream_chunk_delay`]).
    stream_chunk_delay: Duration,
    /// Record requests without their body and image data
    /// ([`FakeLlm::set_lean_records`]).
    lean_records: bool,
    /// Transcription requests, script and defaults.
    transcription: transcription::TranscriptionState,
}

/// Counts a request as in flight until dropped.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> InFlight {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeLlm {
    /// Binds `127.0.0.1:0` and serves the fake API on the current tokio
    /// runtime.
    ///
    /// # Panics
    ///
    /// If the loopback interface cannot be bound.
    pub async fn start() -> FakeLlm {
        let shared = Arc::new(Shared::default());
        let router = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route(
                "/v1/audio/transcriptions",
                post(transcription::transcriptions),
            )
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let port = serve(router).await;
        FakeLlm { shared, port }
    }

    /// Base URL of the OpenAI-compatible API, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Installs the closure deciding the reply to each request not covered by
    /// [`script`](Self::script). It runs on the server task and must not
    /// block.
    pub fn set_responder<F>(&self, f: F)
    where
        F: Fn(&LlmRequest) -> LlmReply + Send + Sync + 'static,
    {
        lock(&self.shared.inner).responder = Some(Arc::new(f));
    }

    /// Sets the latency of the default (echo) responder.
    pub fn set_latency(&self, d: Duration) {
        lock(&self.shared.inner).latency = d;
    }

    /// Sets the pause between the 4 chunks of a text reply (the default
    /// echo's, or a scripted [`LlmReplyKind::Text`]) asked for with
    /// `"stream": true` (zero by default: the chunks come at once), so a
    /// streamed answer takes as long as a real one to arrive.
    pub fn set_stream_chunk_delay(&self, d: Duration) {
        lock(&self.shared.inner).stream_chunk_delay = d;
    }

    /// With `true`, requests received from now on are recorded without
    /// their JSON [`body`](LlmRequest::body) (`null`) and with each of their
    /// [`images`](LlmRequest::images) cut after its first comma
    /// (`data:image/jpeg;base64,`), so a benchmark sending hundreds of
    /// megabytes of images does not keep them all; responders still see the
    /// whole request. Off by default.
    pub fn set_lean_records(&self, lean: bool) {
        lock(&self.shared.inner).lean_records = lean;
    }

    /// Queues replies for the next requests (first in, first out), used before
    /// falling back to the responder.
    pub fn script(&self, replies: Vec<LlmReply>) {
        lock(&self.shared.inner).script.extend(replies);
    }

    /// Every well-formed request received, in arrival order.
    pub fn requests(&self) -> Vec<LlmRequest> {
        lock(&self.shared.inner).requests.clone()
    }

    /// Number of well-formed requests received.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.inner).requests.len()
    }

    /// Waits until at least `n` requests were received (or `timeout` passes)
    /// and returns the count.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> usize {
        wait_until(&self.shared.arrived, timeout, || self.request_count() >= n).await;
        self.request_count()
    }

    /// Highest number of requests being served at the same time so far.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Number of requests being served right now (a streamed answer counts
    /// until its body is finished).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }
}

// ------------------------------------------------------------------ server

fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The URLs of the `image_url` parts of a message's `content`.
fn content_images(content: &Value) -> impl Iterator<Item = String> + '_ {
    content
        .as_array()
        .into_iter()
        .flatten()
        .filter(|part| part.get("type").and_then(Value::as_str) == Some("image_url"))
        .filter_map(|part| {
            let image = part.get("image_url")?;
            // `{"url": …}` per the API; a bare string from lax clients.
            image
                .get("url")
                .unwrap_or(image)
                .as_str()
                .map(str::to_owned)
        })
}

fn parse_request(body: Value, authorization: Option<String>) -> LlmRequest {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
                    let content = m.get("content").map(content_text).unwrap_or_default();
                    (role.to_owned(), content)
                })
                .collect()
        })
        .unwrap_or_default();
    let images = body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content"))
        .flat_map(content_images)
        .collect();
    LlmRequest {
        body,
        model,
        messages,
        images,
        stream,
        authorization,
        at: Instant::now(),
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn openai_error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error"}});
    json_response(status, body.to_string())
}

fn tokens(chars: usize) -> usize {
    chars.div_ceil(4).max(1)
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let guard = InFlight::enter(&shared);
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return openai_error(StatusCode::BAD_REQUEST, "request body is not valid JSON");
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let request = parse_request(body, authorization);

    let (scripted, responder, latency, chunk_delay) = {
        let mut inner = lock(&shared.inner);
        let record = if inner.lean_records {
            request.lean()
        } else {
            request.clone()
        };
        inner.requests.push(record);
        (
            inner.script.pop_front(),
            inner.responder.clone(),
            inner.latency,
            inner.stream_chunk_delay,
        )
    };
    shared.arrived.notify_waiters();

    let reply = match (scripted, responder) {
        (Some(reply), _) => reply,
        (None, Some(f)) => f(&request),
        (None, None) => LlmReply {
            delay: latency,
            kind: LlmReplyKind::Text(format!("answer to: {}", request.last_user_message())),
        },
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }

    let id = format!(
        "chatcmpl-{}",
        shared.next_id.fetch_add(1, Ordering::Relaxed) + 1
    );
    match reply.kind {
        LlmReplyKind::Text(text) if request.stream => {
            let chunks = split_chunks(&text, 4);
            sse_response(id, request.model, chunks, chunk_delay, None, guard)
        }
        LlmReplyKind::Text(text) => {
            let prompt_chars: usize = request
                .messages
                .iter()
                .map(|(_, c)| c.chars().count())
                .sum();
            let prompt_tokens = tokens(prompt_chars);
            let completion_tokens = tokens(text.chars().count());
            let body = json!({
                "id": id,
                "object": "chat.completion",
                "created": unix_now(),
                "model": request.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            });
            json_response(StatusCode::OK, body.to_string())
        }
        LlmReplyKind::Status {
            code,
            retry_after,
            body,
        } => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
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
            response
        }
        LlmReplyKind::InvalidJson => json_response(
            StatusCode::OK,
            r#"{"choices": [ this is not json"#.to_owned(),
        ),
        LlmReplyKind::NoChoices => json_response(
            StatusCode::OK,
            r#"{"id":"x","object":"chat.completion","choices":[]}"#.to_owned(),
        ),
        LlmReplyKind::Hang => {
            tokio::time::sleep(HANG_FOR).await;
            drop(guard);
            openai_error(StatusCode::GATEWAY_TIMEOUT, "fake hang elapsed")
        }
        LlmReplyKind::Stream {
            chunks,
            chunk_delay,
            break_after,
        } => sse_response(id, request.model, chunks, chunk_delay, break_after, guard),
        LlmReplyKind::RawSse {
            pieces,
            chunk_delay,
        } => {
            let stream = futures_util::StreamExt::then(
                futures_util::stream::iter(pieces.into_iter().enumerate()),
                move |(i, piece)| async move {
                    if i > 0 && !chunk_delay.is_zero() {
                        tokio::time::sleep(chunk_delay).await;
                    }
                    Ok::<_, std::io::Error>(Bytes::from(piece))
                },
            );
            let guarded = futures_util::stream::unfold(
                (Box::pin(stream), guard),
                |(mut stream, guard)| async move {
                    let next = futures_util::StreamExt::next(&mut stream).await?;
                    Some((next, (stream, guard)))
                },
            );
            let mut response = Response::new(Body::from_stream(guarded));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            response
        }
    }
}

/// Splits `text` into at most `n` pieces of roughly equal length, on char
/// boundaries. Empty text yields one empty piece.
fn split_chunks(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    let size = chars.len().div_ceil(n.max(1));
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

struct SseState {
    id: String,
    model: String,
    created: u64,
    chunks: std::vec::IntoIter<String>,
    sent: usize,
    chunk_delay: Duration,
    break_after: Option<usize>,
    finished: bool,
    _guard: InFlight,
}

impl SseState {
    fn event(&self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        });
        Bytes::from(format!("data: {chunk}\n\n"))
    }
}

fn sse_response(
    id: String,
    model: String,
    chunks: Vec<String>,
    chunk_delay: Duration,
    break_after: Option<usize>,
    guard: InFlight,
) -> Response {
    let state = SseState {
        id,
        model,
        created: unix_now(),
        chunks: chunks.into_iter(),
        sent: 0,
        chunk_delay,
        break_after,
        finished: false,
        _guard: guard,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        if st.break_after.is_some_and(|k| st.sent >= k) {
            tokio::time::sleep(st.chunk_delay.max(MIN_BREAK_PAUSE)).await;
            st.finished = true;
            let err =
                std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "fake stream broken");
            return Some((Err(err), st));
        }
        match st.chunks.next() {
            Some(content) => {
                if st.sent > 0 && !st.chunk_delay.is_zero() {
                    tokio::time::sleep(st.chunk_delay).await;
                }
                let delta = if st.sent == 0 {
                    json!({"role": "assistant", "content": content})
                } else {
                    json!({"content": content})
                };
                let bytes = st.event(delta, None);
                st.sent += 1;
                Some((Ok(bytes), st))
            }
            None if st.break_after.is_some() => {
                // Asked to break after more chunks than there are: still end
                // without a proper terminator.
                tokio::time::sleep(st.chunk_delay.max(MIN_BREAK_PAUSE)).await;
                st.finished = true;
                let err = std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "fake stream broken",
                );
                Some((Err(err), st))
            }
            None => {
                let mut bytes = st.event(json!({}), Some("stop")).to_vec();
                bytes.extend_from_slice(b"data: [DONE]\n\n");
                st.finished = true;
                Some((Ok(Bytes::from(bytes)), st))
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
