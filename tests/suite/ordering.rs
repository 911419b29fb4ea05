//! One chat's messages reach the LLM strictly in order, one at a time, each
//! request carrying the answers to the earlier ones.

use std::time::Duration;

use crate::common::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_one_chat_is_answered_in_order() {
    let h = Harness::start().await;
    // Some latency so the burst is queued while the first answer is pending.
    h.llm.set_latency(Duration::from_millis(50));
    let texts: Vec<String> = (0..5).map(|i| format!("message {i}")).collect();
    for text in &texts {
        h.say(40, text);
    }
    let replies = h.replies(40, 5).await;
    let got: Vec<&str> = replies.iter().map(|m| m.text.as_str()).collect();
    let want: Vec<String> = texts.iter().map(|t| format!("answer to: {t}")).collect();
    assert_eq!(got, want);

    let requests = h.llm.requests();
    assert_eq!(requests.len(), 5);
    assert_eq!(h.llm.max_in_flight(), 1, "one LLM call at a time per chat");
    for (i, request) in requests.iter().enumerate() {
        let mut expected = Vec::new();
        for earlier in &texts[..i] {
            expected.push(("user".to_string(), earlier.clone()));
            expected.push(("assistant".to_string(), format!("answer to: {earlier}")));
        }
        expected.push(("user".to_string(), texts[i].clone()));
        assert_eq!(request.messages[1..], expected[..], "request {i}");
    }
    h.stop().await;
}
