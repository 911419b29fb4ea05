//! The fake LLM's paced streams ([`FakeLlm::set_stream_chunk_delay`]): a
//! text reply asked for as a stream takes as long as its pauses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use llmgram_fakes::FakeLlm;
use serde_json::json;

#[tokio::test]
async fn a_streamed_echo_is_paced_by_the_chunk_delay() {
    let llm = FakeLlm::start().await;
    llm.set_stream_chunk_delay(Duration::from_millis(100));
    let started = Instant::now();
    let body = reqwest::Client::new()
        .post(format!("{}/chat/completions", llm.base_url()))
        .json(&json!({
            "model": "m",
            "stream": true,
            "messages": [{"role": "user", "content": "hello there"}],
        }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert!(body.contains("data: [DONE]"), "{body}");
    let pieces = body.matches("\"content\"").count();
    assert!(pieces >= 4, "the echo in 4 chunks: {body}");
}
