//! Memory that summarises: turns that leave the bounded history are folded
//! into a running summary that later requests carry; a failing summariser
//! changes nothing else.

use std::time::Duration;

use llmgram_fakes::LlmReply;

use crate::common::{Harness, eventually};

/// The summariser's requests are recognised by their instructions.
fn is_summary_request(request: &llmgram_fakes::LlmRequest) -> bool {
    request
        .messages
        .first()
        .is_some_and(|(_, text)| text.contains("running summary"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_that_leave_the_history_reach_later_requests_as_a_summary() {
    let h = Harness::start_with("session.max_messages = 4\n").await;
    h.llm.set_responder(|request| {
        if is_summary_request(request) {
            LlmReply::text("The user is Mia, plans a beach shoot at dawn.")
        } else {
            LlmReply::text(format!("answer to: {}", request.last_user_message()))
        }
    });
    for (i, text) in ["I am Mia", "beach shoot at dawn", "third", "fourth"]
        .into_iter()
        .enumerate()
    {
        h.say(60, text);
        h.replies(60, i + 1).await;
    }
    // The third turn pushed the first out: a summary was asked for, with
    // the dropped turn in it.
    eventually("a summary request", || async {
        h.llm.requests().iter().any(is_summary_request)
    })
    .await;
    let asked = h
        .llm
        .requests()
        .into_iter()
        .find(is_summary_request)
        .unwrap();
    assert!(asked.last_user_message().contains("I am Mia"), "{asked:?}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    h.say(60, "what is my name?");
    h.replies(60, 5).await;
    let last = h
        .llm
        .requests()
        .into_iter()
        .rfind(|r| !is_summary_request(r))
        .unwrap();
    assert_eq!(last.messages[1].0, "system");
    assert!(
        last.messages[1].1.contains("beach shoot at dawn"),
        "{last:?}"
    );
    // The persona's system prompt is untouched.
    assert!(!last.messages[0].1.contains("Mia"));

    // It survives a restart; /reset clears it.
    let h = h.restart("session.max_messages = 4\n").await;
    h.llm.set_responder(|request| {
        LlmReply::text(format!("answer to: {}", request.last_user_message()))
    });
    h.say(60, "still there?");
    h.replies(60, 6).await;
    let last = h.llm.requests().pop().unwrap();
    assert!(last.messages[1].1.contains("beach shoot"), "{last:?}");
    h.say(60, "/reset");
    h.say(60, "fresh start");
    h.replies(60, 8).await;
    let last = h.llm.requests().pop().unwrap();
    assert!(
        last.messages
            .iter()
            .all(|(_, t)| !t.contains("beach shoot"))
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_summariser_changes_nothing_else() {
    let h = Harness::start_with("session.max_messages = 2\nllm.retry.max_attempts = 1\n").await;
    h.llm.set_responder(|request| {
        if is_summary_request(request) {
            LlmReply::status(500, None)
        } else {
            LlmReply::text(format!("answer to: {}", request.last_user_message()))
        }
    });
    for i in 0..4 {
        h.say(61, &format!("message {i}"));
        let sent = h.replies(61, i + 1).await;
        assert_eq!(sent[i].text, format!("answer to: message {i}"));
    }
    let last = h
        .llm
        .requests()
        .into_iter()
        .rfind(|r| !is_summary_request(r))
        .unwrap();
    // System prompt, the previous turn, the new message: no summary.
    assert_eq!(last.messages.len(), 4, "{last:?}");
    assert!(h.llm.requests().iter().any(is_summary_request));
    h.stop().await;
}

/// `session.new_dialog_after`: a message after that long idle starts a
/// fresh conversation (the earlier turns leave the request), and the answer
/// says so; within the idle time, and with the knob at its default (off),
/// the conversation goes on. The idle time is counted from the stored
/// record, so it holds across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_after_the_idle_time_starts_a_new_conversation() {
    let config = "session.new_dialog_after = \"2s\"\n";
    let h = Harness::start_with(config).await;
    h.llm.set_responder(|request| {
        LlmReply::text(format!("answer to: {}", request.last_user_message()))
    });
    h.say(61, "my name is Mia");
    h.replies(61, 1).await;
    h.say(61, "and I shoot at dawn");
    let sent = h.replies(61, 2).await;
    // Quick follow-ups stay one conversation, without a notice.
    let request = h.llm.requests().pop().unwrap();
    assert!(
        request
            .messages
            .iter()
            .any(|(_, text)| text.contains("my name is Mia")),
        "{request:?}"
    );
    assert!(
        !sent[1].text.contains("new conversation"),
        "{}",
        sent[1].text
    );

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let h = h.restart(config).await;
    h.llm.set_responder(|request| {
        LlmReply::text(format!("answer to: {}", request.last_user_message()))
    });
    h.say(61, "what is the weather like?");
    let sent = h.replies(61, 3).await;
    let request = h.llm.requests().pop().unwrap();
    assert!(
        !request
            .messages
            .iter()
            .any(|(_, text)| text.contains("Mia") || text.contains("dawn")),
        "the idle conversation was set aside: {request:?}"
    );
    let answer = &sent[2].text;
    assert!(answer.contains("new conversation"), "{answer}");
    assert!(
        answer.contains("answer to: what is the weather like?"),
        "{answer}"
    );

    // Off by default: a long pause changes nothing.
    let h = h.restart("").await;
    h.llm.set_responder(|request| {
        LlmReply::text(format!("answer to: {}", request.last_user_message()))
    });
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    h.say(61, "and tomorrow?");
    let sent = h.replies(61, 4).await;
    let request = h.llm.requests().pop().unwrap();
    assert!(
        request
            .messages
            .iter()
            .any(|(_, text)| text.contains("weather")),
        "{request:?}"
    );
    assert!(
        !sent[3].text.contains("new conversation"),
        "{}",
        sent[3].text
    );
}
