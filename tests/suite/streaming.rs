//! Streamed answers (`llm.stream = true`): shown live in one message edited
//! a bounded number of times, continued in new messages past 4,096
//! characters, and kept (with a note) when the stream breaks.

use std::time::Duration;

use llmgram_fakes::{LlmReply, LlmReplyKind};

use crate::common::settled_transcript;
use crate::common::{Harness, eventually};

const STREAMING: &str = "llm.stream = true\ntelegram.edit_interval = \"200ms\"\n";

fn stream(chunks: Vec<String>, chunk_delay: Duration, break_after: Option<usize>) -> LlmReply {
    LlmReply::now(LlmReplyKind::Stream {
        chunks,
        chunk_delay,
        break_after,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_chunks_make_one_message_edited_a_bounded_number_of_times() {
    let h = Harness::start_with(STREAMING).await;
    let chunks: Vec<String> = (0..50).map(|i| format!("word{i} ")).collect();
    let full: String = chunks.concat();
    // 50 chunks 40 ms apart: a 2 s stream.
    h.llm
        .script(vec![stream(chunks, Duration::from_millis(40), None)]);

    h.say(70, "tell me a story");
    let shown = settled_transcript(&h, 70, 1).await;
    assert_eq!(
        shown,
        [full.trim_end()],
        "one message, ending in the full text"
    );
    assert!(h.llm.requests()[0].stream, "the request asked for a stream");

    let edits = h
        .telegram
        .edits()
        .iter()
        .filter(|e| e.chat_id == 70)
        .count();
    // 2 s of stream at one update per 200 ms, plus the final edit.
    assert!(edits >= 2, "the message grew live: {edits} edits");
    assert!(
        edits <= 14,
        "edits are paced by telegram.edit_interval: {edits}"
    );
    assert_eq!(h.telegram.sent_to(70).len(), 1, "no second message");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_9000_character_stream_ends_as_three_messages() {
    let h = Harness::start_with(STREAMING).await;
    // 90 chunks of 100 characters, sentences and paragraphs.
    let chunks: Vec<String> = (0..90)
        .map(|i| {
            let sentence = format!("Sentence {i:03} of a long streamed answer. ");
            let mut chunk: String = sentence.repeat(4).chars().take(98).collect();
            chunk.push_str(if i % 10 == 9 { "\n\n" } else { "  " });
            chunk
        })
        .collect();
    let full: String = chunks.concat();
    assert_eq!(full.chars().count(), 9_000);
    h.llm
        .script(vec![stream(chunks, Duration::from_millis(10), None)]);

    h.say(71, "write a lot");
    let shown = settled_transcript(&h, 71, 3).await;
    assert_eq!(shown.len(), 3, "9,000 characters end as 3 messages");
    for text in &shown {
        assert!(text.encode_utf16().count() <= 4096);
    }
    let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    assert_eq!(
        squeeze(&shown.concat()),
        squeeze(&full),
        "every character, in order"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_keeps_what_arrived_and_says_it_was_cut() {
    let h = Harness::start_with(STREAMING).await;
    let chunks: Vec<String> = (0..10).map(|i| format!("part{i} ")).collect();
    h.llm
        .script(vec![stream(chunks, Duration::from_millis(30), Some(5))]);

    h.say(72, "go");
    let shown = settled_transcript(&h, 72, 1).await;
    assert_eq!(shown.len(), 1);
    assert!(
        shown[0].starts_with("part0 part1 part2 part3 part4"),
        "what arrived is kept: {shown:?}"
    );
    assert!(!shown[0].contains("part5"));
    assert!(shown[0].contains("cut off"), "the user is told: {shown:?}");
    assert_eq!(
        h.llm.request_count(),
        1,
        "a stream the user has seen is not retried or sent elsewhere"
    );

    // The question can be answered again in full.
    h.llm.script(vec![LlmReply::text("the whole answer")]);
    h.say(72, "/retry");
    eventually("the retried answer", || {
        let done = h
            .telegram
            .transcript(72)
            .iter()
            .any(|(_, text)| text == "the whole answer");
        async move { done }
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_failing_before_its_first_text_is_retried_invisibly() {
    let h = Harness::start_with(&format!(
        "{STREAMING}llm.retry.initial_backoff = \"10ms\"\n"
    ))
    .await;
    h.llm.script(vec![
        LlmReply::status(500, None),
        stream(
            vec!["fine ".into(), "now".into()],
            Duration::from_millis(10),
            None,
        ),
    ]);
    h.say(73, "hello");
    let shown = settled_transcript(&h, 73, 1).await;
    assert_eq!(shown, ["fine now"]);
    assert_eq!(h.llm.request_count(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_stream_and_keeps_what_was_shown() {
    let h = Harness::start_with(STREAMING).await;
    let chunks: Vec<String> = (0..100).map(|i| format!("w{i} ")).collect();
    h.llm
        .script(vec![stream(chunks, Duration::from_millis(50), None)]);
    h.say(74, "long answer please");
    eventually("the stream to show a few words", || {
        let shown = h
            .telegram
            .transcript(74)
            .first()
            .is_some_and(|(_, text)| text.contains("w3"));
        async move { shown }
    })
    .await;
    h.say(74, "/cancel");
    let shown = settled_transcript(&h, 74, 1).await;
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(shown[0].starts_with("w0 w1"), "{shown:?}");
    assert!(!shown[0].contains("w99"), "the stream stopped: {shown:?}");
    assert!(shown[0].contains("Cancelled"), "{shown:?}");
    eventually("the provider's stream to be dropped", || {
        let idle = h.llm.in_flight() == 0;
        async move { idle }
    })
    .await;
    h.stop().await;
}

fn event(delta: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": null}]})
    )
}

fn raw(pieces: Vec<String>) -> LlmReply {
    LlmReply::now(LlmReplyKind::RawSse {
        pieces,
        chunk_delay: Duration::from_millis(20),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_in_a_streams_last_chunk_is_what_the_budget_counts() {
    let h = Harness::start_with(STREAMING).await;
    let usage = serde_json::json!({
        "choices": [],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 234, "total_tokens": 1234}
    });
    h.llm.script(vec![raw(vec![
        event("Hello"),
        event(" there"),
        format!(
            "data: {}\n\n",
            serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        ),
        format!("data: {usage}\n\n"),
        "data: [DONE]\n\n".into(),
    ])]);
    h.say(75, "hi");
    assert_eq!(settled_transcript(&h, 75, 1).await, ["Hello there"]);
    assert_eq!(
        h.llm.requests()[0].body["stream_options"]["include_usage"],
        true,
        "the stream asks for usage"
    );
    h.say(75, "/usage");
    eventually("the usage reply", || {
        let shown = h
            .telegram
            .transcript(75)
            .iter()
            .any(|(_, text)| text.contains("1234"));
        async move { shown }
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_a_stream_cuts_it_or_falls_back_never_reaching_the_user() {
    let h = Harness::start_with(&format!(
        "{STREAMING}llm.retry.initial_backoff = \"10ms\"\n"
    ))
    .await;
    // Garbage after some text: the text stays, marked as cut.
    h.llm.script(vec![raw(vec![
        event("Hello there"),
        "data: {\"choices\": [ this is not json\n\n".into(),
    ])]);
    h.say(76, "hi");
    let shown = settled_transcript(&h, 76, 1).await;
    assert!(shown[0].starts_with("Hello there"), "{shown:?}");
    assert!(shown[0].contains("cut off"), "{shown:?}");
    assert!(!shown[0].contains("json"), "no provider text: {shown:?}");

    // Garbage from the start: retried, then the localised fallback.
    let garbage = || raw(vec!["data: nonsense\n\n".into()]);
    h.llm.set_responder(move |_| garbage());
    h.say(77, "hi");
    let shown = settled_transcript(&h, 77, 1).await;
    assert_eq!(
        shown,
        ["The assistant can't answer right now. Please try again in a minute."]
    );
    assert!(
        h.llm.request_count() >= 3,
        "retried: {}",
        h.llm.request_count()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_cannot_be_edited_gets_the_final_text_as_a_new_one() {
    let h = Harness::start_with(STREAMING).await;
    h.llm.script(vec![stream(
        vec!["part0 ".into(), "part1".into()],
        Duration::from_millis(300),
        Some(1),
    )]);
    h.say(78, "go");
    eventually("the first text", || {
        let shown = !h.telegram.transcript(78).is_empty();
        async move { shown }
    })
    .await;
    // The user deletes the message: the final edit is refused.
    h.telegram.fail_next_sends(
        1,
        llmgram_fakes::TelegramFault::Status(400, "Bad Request: message to edit not found".into()),
    );
    let shown = settled_transcript(&h, 78, 2).await;
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert_eq!(shown[0], "part0");
    assert!(
        shown[1].starts_with("part0") && shown[1].contains("cut off"),
        "the final text arrives all the same: {shown:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_is_not_a_slow_call_for_the_breaker() {
    // Calls slower than 200 ms count as failures; two of them open the
    // breaker. Streams whose first text comes at once but which run for
    // a second are not slow.
    let h = Harness::start_with(&format!(
        "{STREAMING}breaker.window = 4\nbreaker.min_calls = 2\nbreaker.slow_call = \"200ms\"\n"
    ))
    .await;
    let long_stream = || {
        stream(
            (0..10).map(|i| format!("w{i} ")).collect(),
            Duration::from_millis(100),
            None,
        )
    };
    h.llm.set_responder(move |_| long_stream());
    for chat in [85, 86, 87] {
        h.say(chat, "long answer");
        let shown = settled_transcript(&h, chat, 1).await;
        assert_eq!(shown, ["w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"], "chat {chat}");
    }
    assert_eq!(
        h.llm.request_count(),
        3,
        "every answer came from the provider"
    );
    h.stop().await;
}
