//! Bursts: messages arriving together (a paste Telegram cut into pieces)
//! are answered as one request; messages arriving while an answer is being
//! written wait their turn, and the user is told once.

use std::time::Duration;

use llmgram_fakes::LlmReply;

use crate::common::{Harness, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_messages_within_the_merge_window_make_one_request() {
    let merging = "session.merge_window = \"1s\"\nsession.merge_wait_chars = 0\n";
    let h = Harness::start_with(merging).await;
    h.say(80, "first part");
    h.say(80, "second part");
    h.say(80, "third part");
    let reply = &h.replies(80, 1).await[0];
    assert_eq!(reply.text, "answer to: first part\nsecond part\nthird part");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.llm.request_count(), 1, "one LLM request for the burst");
    assert_eq!(h.telegram.sent_to(80).len(), 1, "one answer");

    // Every merged update is stored as answered: a restart replays none.
    let h = h.restart(merging).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.llm.request_count(), 1, "nothing replayed");
    h.say(80, "next");
    let replies = h.replies(80, 2).await;
    assert_eq!(replies[1].text, "answer to: next");
    let history = &h.llm.requests()[1].messages;
    assert!(
        history
            .iter()
            .any(|(role, text)| role == "user" && text.contains("second part")),
        "the merged text is in the history: {history:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_piece_waits_for_the_rest_of_a_cut_paste() {
    // Default merge settings: a short message is answered at once, a long
    // one waits for the window.
    let h = Harness::start_with("session.merge_window = \"1500ms\"\n").await;
    let piece = "pasted text ".repeat(340);
    assert!(piece.chars().count() >= 3500);
    h.say(81, &piece);
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.say(81, "and the end of it");
    // The echoed answer is longer than one message.
    h.replies(81, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.llm.request_count(), 1);
    assert_eq!(
        h.llm.requests()[0].last_user_message(),
        format!("{piece}\nand the end of it"),
        "both pieces in one request"
    );

    // A short message on its own gets no delay from merging.
    let quick = h.say(81, "quick question");
    let replies = h.replies(81, 3).await;
    assert_eq!(replies[2].text, "answer to: quick question");
    let delivered = h.telegram.delivered_at(quick).expect("polled");
    let waited = replies[2].at.duration_since(delivered);
    assert!(
        waited < Duration::from_millis(1000),
        "no merge wait: {waited:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_behind_a_slow_answer_get_one_notice_and_their_own_answers() {
    let h = Harness::start_with("session.queued_notice_after = \"300ms\"\n").await;
    h.llm.script(vec![LlmReply::text_after(
        "the slow answer",
        Duration::from_millis(1500),
    )]);
    h.say(82, "slow question");
    eventually("the LLM request", || {
        let asked = h.llm.request_count() == 1;
        async move { asked }
    })
    .await;
    h.say(82, "second");
    h.say(82, "third");
    let replies = h.replies(82, 4).await;
    let texts: Vec<&str> = replies.iter().map(|m| m.text.as_str()).collect();
    assert!(texts[0].starts_with("Still writing"), "{texts:?}");
    assert_eq!(
        &texts[1..],
        ["the slow answer", "answer to: second", "answer to: third"]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.telegram.sent_to(82).len(), 4, "told once");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_inside_the_merge_window_sends_nothing_to_the_llm() {
    let h =
        Harness::start_with("session.merge_window = \"2s\"\nsession.merge_wait_chars = 0\n").await;
    h.say(83, "one");
    h.say(83, "two");
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.say(83, "/cancel");
    let reply = &h.replies(83, 1).await[0];
    assert!(reply.text.starts_with("Cancelled"), "{}", reply.text);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        h.llm.request_count(),
        0,
        "the held messages never reached the LLM"
    );
    assert_eq!(h.telegram.sent_to(83).len(), 1);

    // They were kept: /retry answers them.
    h.say(83, "/retry");
    let replies = h.replies(83, 2).await;
    assert_eq!(replies[1].text, "answer to: one\ntwo");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_request_that_crashes_its_session_is_retried_message_by_message() {
    let h =
        Harness::start_with("session.merge_window = \"1s\"\nsession.merge_wait_chars = 0\n").await;
    // The session panics when it starts answering the merged request.
    llmgram::chaos::panic_session(
        h.service.directory(),
        llmgram::telegram::inbound::ChatId(84),
    );
    h.say(84, "a");
    h.say(84, "b");
    h.say(84, "c");
    let replies = h.replies(84, 3).await;
    let texts: Vec<&str> = replies.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, ["answer to: a", "answer to: b", "answer to: c"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.telegram.sent_to(84).len(), 3, "each exactly once");
    let stats = h.service.session_stats().await.unwrap();
    assert_eq!(stats.restarted, 1);
    assert_eq!(stats.dropped, 0, "no innocent message dropped");
    h.stop().await;
}
