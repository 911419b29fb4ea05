//! The LLM pool on its own, with its real neighbours (one breaker per
//! provider and the persistence actor on a temp store), driven through
//! [`LlmPoolHandle`] against loopback OpenAI-compatible fakes (and, for
//! images and transcription, a small scripted server of its own). On the real
//! clock: a socket cannot be served on a paused one (tokio advances a
//! paused clock whenever the runtime waits, so every HTTP timeout would
//! fire at once).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use llmgram_fakes::{FakeLlm, LlmReply};
use ractor::{Actor, ActorCell};

use super::{LlmPool, LlmPoolHandle, Overrides};
use crate::actors::Child;
use crate::actors::root::breaker::{Breaker, BreakerArgs, BreakerStatus};
use crate::actors::test_support::{self, TestDeps};
use crate::llm::{ChatMessage, LlmError, Role, Transcript};

struct Pool {
    t: TestDeps,
    actors: Vec<ActorCell>,
}

impl Pool {
    /// The pool, its breakers and persistence, for the providers `config`
    /// names.
    async fn start(instance: &str, config: &str) -> Self {
        let t = test_support::deps(instance, config).with_providers();
        let mut actors = vec![t.start_persistence().await];
        for (index, provider) in t.deps.llm.iter().enumerate() {
            let args = BreakerArgs {
                provider: Arc::from(provider.name()),
                config: t.deps.config.breaker.clone(),
            };
            let name = t.deps.directory.name(Child::breaker(index));
            let (breaker, _) = Actor::spawn(Some(name), Breaker, args)
                .await
                .expect("breaker starts");
            actors.push(breaker.get_cell());
        }
        let name = t.deps.directory.name(Child::LlmPool);
        let (pool, _) = Actor::spawn(
            Some(name),
            LlmPool,
            crate::actors::root::llm_pool_args(&t.deps),
        )
        .await
        .expect("pool starts");
        actors.push(pool.get_cell());
        Self { t, actors }
    }

    fn handle(&self) -> LlmPoolHandle<'_> {
        self.t.deps.directory.llm_pool()
    }

    async fn ask(&self, text: &str) -> Result<String, LlmError> {
        let prompt = [ChatMessage::new(Role::User, text)];
        self.handle()
            .complete(&prompt, &Overrides::default(), None)
            .await
            .map(|completion| completion.text)
    }

    fn stop(self) {
        for actor in self.actors.into_iter().rev() {
            actor.stop(None);
        }
    }
}

fn primary(llm: &FakeLlm) -> String {
    format!("llm.base_url = {:?}\nllm.model = \"m1\"\n", llm.base_url())
}

fn fallback(llm: &FakeLlm) -> String {
    format!(
        "[[llm.fallback]]\nname = \"second\"\nbase_url = {:?}\nmodel = \"m2\"\n",
        llm.base_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_calls_are_in_flight_than_llm_max_concurrency() {
    let llm = FakeLlm::start().await;
    llm.set_latency(Duration::from_millis(150));
    let pool = Arc::new(
        Pool::start(
            "pool-bound",
            &format!("{}llm.max_concurrency = 2\n", primary(&llm)),
        )
        .await,
    );
    let asks: Vec<_> = (0..6)
        .map(|i| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.ask(&format!("q{i}")).await })
        })
        .collect();
    for (i, ask) in asks.into_iter().enumerate() {
        let answer = ask.await.expect("task").expect("answered");
        assert_eq!(answer, format!("answer to: q{i}"));
    }
    assert_eq!(llm.request_count(), 6);
    assert_eq!(
        llm.max_in_flight(),
        2,
        "the bound was not reached or not kept"
    );
    if let Ok(pool) = Arc::try_unwrap(pool) {
        pool.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_primary_falls_back_in_order_then_is_skipped_while_open() {
    let first = FakeLlm::start().await;
    let second = FakeLlm::start().await;
    first.script(vec![
        LlmReply::status(500, None),
        LlmReply::status(500, None),
    ]);
    let config = format!(
        "{}llm.retry.max_attempts = 1\nbreaker.window = 4\nbreaker.min_calls = 2\n\
         breaker.open_for = \"1h\"\nbreaker.first_probe_after = \"1h\"\n{}",
        primary(&first),
        fallback(&second)
    );
    let pool = Pool::start("pool-fallback", &config).await;
    for i in 0..2 {
        let answer = pool.ask(&format!("f{i}")).await.expect("answered");
        assert_eq!(answer, format!("answer to: f{i}"));
    }
    assert_eq!((first.request_count(), second.request_count()), (2, 2));
    assert!(matches!(
        pool.t.deps.directory.breaker(0).status().await,
        Ok(BreakerStatus::Open { .. })
    ));
    // Open: the primary is not asked at all; the fallback answers.
    let answer = pool.ask("f2").await.expect("answered");
    assert_eq!(answer, "answer to: f2");
    assert_eq!((first.request_count(), second.request_count()), (2, 3));
    pool.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_provider_failing_the_caller_gets_a_classified_error() {
    let first = FakeLlm::start().await;
    let second = FakeLlm::start().await;
    first.script(vec![LlmReply::status(500, None)]);
    second.script(vec![LlmReply::status(400, None)]);
    let config = format!(
        "{}llm.retry.max_attempts = 1\n{}",
        primary(&first),
        fallback(&second)
    );
    let pool = Pool::start("pool-all-fail", &config).await;
    let error = pool.ask("nobody").await.expect_err("no provider answered");
    assert_eq!(
        (first.request_count(), second.request_count()),
        (1, 1),
        "each provider asked once, in order"
    );
    // Classified, with the last provider's own failure kept for the logs.
    assert!(
        matches!(
            &error,
            LlmError::NoProvider { last: Some(last), .. }
                if matches!(**last, LlmError::Rejected { status: 400, .. })
        ),
        "{error:?}"
    );
    pool.stop();
}

/// One request a [`Stub`] received.
#[derive(Debug, Clone)]
struct Seen {
    /// `/v1/chat/completions` or `/v1/audio/transcriptions`.
    path: String,
    content_type: String,
    body: Vec<u8>,
}

impl Seen {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What a [`Stub`] answers next; when its script is empty, a chat
/// completion or a transcript naming the stub.
enum Reply {
    Status(u16, Option<&'static str>),
    Body(&'static str),
}

/// A scripted OpenAI-compatible server recording what it received: chat
/// completions and transcriptions, on a loopback port.
#[derive(Clone)]
struct Stub {
    name: &'static str,
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

impl Stub {
    async fn start(name: &'static str, script: Vec<Reply>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let stub = Self {
            name,
            base_url: format!("http://{address}/v1"),
            seen: Arc::default(),
            script: Arc::new(Mutex::new(script.into())),
        };
        let serving = stub.clone();
        let app = axum::Router::new().fallback(
            move |uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let stub = serving.clone();
                async move { stub.answer(&uri, &headers, &body) }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        stub
    }

    fn answer(&self, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
        let content_type = headers
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.seen.lock().unwrap().push(Seen {
            path: uri.path().to_owned(),
            content_type,
            body: body.to_vec(),
        });
        let json = [("content-type", "application/json")];
        match self.script.lock().unwrap().pop_front() {
            Some(Reply::Status(status, retry_after)) => {
                let status = StatusCode::from_u16(status).unwrap();
                match retry_after {
                    Some(wait) => (status, [("retry-after", wait)], "{}").into_response(),
                    None => (status, "{}").into_response(),
                }
            }
            Some(Reply::Body(body)) => (json, body).into_response(),
            None if uri.path().ends_with("/audio/transcriptions") => {
                (json, format!(r#"{{"text":" heard by {} "}}"#, self.name)).into_response()
            }
            None => (
                json,
                format!(
                    r#"{{"choices":[{{"message":{{"content":"seen by {}"}},"finish_reason":"stop"}}]}}"#,
                    self.name
                ),
            )
                .into_response(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The primary provider on this stub, with its media models (`""`:
    /// none).
    fn primary(&self, vision: &str, transcription: &str) -> String {
        format!(
            "llm.base_url = {:?}\nllm.model = \"m1\"\nllm.vision_model = {vision:?}\n\
             llm.transcription_model = {transcription:?}\n\
             llm.retry.initial_backoff = \"10ms\"\nllm.retry.max_backoff = \"10ms\"\n",
            self.base_url
        )
    }

    /// A `[[llm.fallback]]` on this stub (`extra`: its media keys).
    fn fallback(&self, extra: &str) -> String {
        format!(
            "[[llm.fallback]]\nname = {:?}\nbase_url = {:?}\nmodel = \"m2\"\n{extra}",
            self.name, self.base_url
        )
    }
}

const PHOTO: &str = "data:image/jpeg;base64,/9j/AAAA";

fn photo_prompt() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::System, "sys"),
        ChatMessage::new(Role::User, "earlier"),
        ChatMessage::with_images(Role::User, "what is this?", vec![PHOTO.to_owned()]),
    ]
}

impl Pool {
    async fn transcribe(&self) -> Result<Transcript, LlmError> {
        self.handle()
            .transcribe(
                bytes::Bytes::from_static(b"OggS fake audio"),
                "voice.ogg",
                "audio/ogg",
            )
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_prompt_goes_only_to_a_provider_that_sees_with_its_vision_model() {
    let first = Stub::start("first", Vec::new()).await;
    let second = Stub::start("second", Vec::new()).await;
    let config = format!(
        "{}{}",
        first.primary("", ""),
        second.fallback("vision = true\nvision_model = \"v2\"\n")
    );
    let pool = Pool::start("pool-vision", &config).await;
    let overrides = Overrides {
        model: Some(Arc::from("custom")),
        temperature: None,
    };
    let answer = pool
        .handle()
        .complete(&photo_prompt(), &overrides, None)
        .await
        .expect("answered");
    assert_eq!(answer.text, "seen by second");
    assert!(first.seen().is_empty(), "the blind primary was asked");
    let seen = second.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    let body = seen[0].json();
    assert_eq!(body["model"], "v2");
    assert_eq!(
        body["messages"],
        serde_json::json!([
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "earlier"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": PHOTO}},
            ]},
        ])
    );
    // A text prompt still goes to the primary, with the chat's model.
    let answer = pool
        .handle()
        .complete(&[ChatMessage::new(Role::User, "hi")], &overrides, None)
        .await
        .expect("answered");
    assert_eq!(answer.text, "seen by first");
    assert_eq!(first.seen()[0].json()["model"], "custom");
    pool.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_prompt_ignores_the_chats_model_on_a_primary_that_sees() {
    let first = Stub::start("first", Vec::new()).await;
    let pool = Pool::start("pool-vision-primary", &first.primary("pv", "")).await;
    let overrides = Overrides {
        model: Some(Arc::from("custom")),
        temperature: None,
    };
    let answer = pool
        .handle()
        .complete(&photo_prompt(), &overrides, None)
        .await
        .expect("answered");
    assert_eq!(answer.text, "seen by first");
    assert_eq!(first.seen()[0].json()["model"], "pv");
    pool.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_provider_for_the_media_the_caller_gets_a_classified_error() {
    let first = Stub::start("first", Vec::new()).await;
    let second = Stub::start("second", Vec::new()).await;
    let config = format!("{}{}", first.primary("", ""), second.fallback(""));
    let pool = Pool::start("pool-no-media", &config).await;
    let error = pool
        .handle()
        .complete(&photo_prompt(), &Overrides::default(), None)
        .await
        .expect_err("nobody sees");
    assert_eq!(error, LlmError::NoVision);
    let error = pool.transcribe().await.expect_err("nobody transcribes");
    assert_eq!(error, LlmError::NoTranscription);
    assert!(!error.is_retryable());
    assert!(first.seen().is_empty() && second.seen().is_empty());
    pool.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcription_is_retried_after_a_server_error() {
    let first = Stub::start("first", vec![Reply::Status(500, None)]).await;
    let pool = Pool::start("pool-transcribe", &first.primary("", "w1")).await;
    let transcript = pool.transcribe().await.expect("transcribed");
    assert_eq!(
        transcript,
        Transcript {
            text: "heard by first".into(),
            truncated: false
        }
    );
    let seen = first.seen();
    assert_eq!(seen.len(), 2, "one failure, one success");
    let request = &seen[1];
    assert_eq!(request.path, "/v1/audio/transcriptions");
    assert!(
        request
            .content_type
            .starts_with("multipart/form-data; boundary="),
        "{}",
        request.content_type
    );
    let body = request.text();
    for part in [
        "name=\"file\"; filename=\"voice.ogg\"",
        "Content-Type: audio/ogg",
        "OggS fake audio",
        "name=\"model\"\r\n\r\nw1\r\n",
        "name=\"response_format\"\r\n\r\njson\r\n",
    ] {
        assert!(body.contains(part), "{part:?} missing from {body:?}");
    }
    pool.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcription_waits_out_retry_after() {
    let first = Stub::start("first", vec![Reply::Status(429, Some("1"))]).await;
    let pool = Pool::start("pool-transcribe-429", &first.primary("", "w1")).await;
    let started = std::time::Instant::now();
    let transcript = pool.transcribe().await.expect("transcribed");
    assert_eq!(transcript.text, "heard by first");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After not honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(first.seen().len(), 2);
    pool.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_transcription_is_classified() {
    let first = Stub::start(
        "first",
        vec![
            Reply::Body("<html>oops</html>"),
            Reply::Body(r#"{"txt":1}"#),
        ],
    )
    .await;
    let config = format!("{}llm.retry.max_attempts = 2\n", first.primary("", "w1"));
    let pool = Pool::start("pool-transcribe-garbage", &config).await;
    let error = pool.transcribe().await.expect_err("no transcript");
    assert!(
        matches!(
            &error,
            LlmError::NoProvider { last: Some(last), .. }
                if matches!(**last, LlmError::InvalidResponse(_))
        ),
        "{error:?}"
    );
    assert_eq!(first.seen().len(), 2, "garbage is retried");
    pool.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcription_goes_to_the_fallback_that_transcribes() {
    let first = Stub::start("first", Vec::new()).await;
    let second = Stub::start("second", Vec::new()).await;
    let config = format!(
        "{}{}",
        first.primary("", ""),
        second.fallback("transcription_model = \"w2\"\n")
    );
    let pool = Pool::start("pool-transcribe-fallback", &config).await;
    let transcript = pool.transcribe().await.expect("transcribed");
    assert_eq!(transcript.text, "heard by second");
    assert!(first.seen().is_empty());
    let seen = second.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].text().contains("name=\"model\"\r\n\r\nw2\r\n"));
    pool.stop();
}
