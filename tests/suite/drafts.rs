//! Live answers by default (issue 16): streaming is on, a private chat sees
//! the answer grow as a `sendMessageDraft` draft and then gets it as one
//! normal message with entities; a Bot API that refuses drafts, a group, or
//! `telegram.drafts = false` get the edited live message instead; `/cancel`
//! keeps what the draft showed.

use std::time::Duration;

use llmgram::config::Config;
use llmgram_fakes::{BOT_USERNAME, LlmReply, LlmReplyKind};
use serde_json::json;

use crate::common::{Harness, eventually, settled_transcript};

/// The defaults, stated (the harness pins both off for the older suites),
/// with updates paced for a short test.
const LIVE: &str =
    "llm.stream = true\ntelegram.drafts = true\ntelegram.edit_interval = \"200ms\"\n";

fn stream(chunks: Vec<String>, chunk_delay: Duration) -> LlmReply {
    LlmReply::now(LlmReplyKind::Stream {
        chunks,
        chunk_delay,
        break_after: None,
    })
}

/// "Hello **bold** w0 w1 …": 1 s of stream with Markdown to render.
fn bold_answer() -> (Vec<String>, String) {
    let mut chunks = vec!["Hello ".to_owned(), "**bo".to_owned(), "ld** ".to_owned()];
    chunks.extend((0..20).map(|i| format!("w{i} ")));
    let shown = chunks.concat().replace("**", "");
    (chunks, shown.trim_end().to_owned())
}

#[test]
fn streaming_and_drafts_are_the_defaults() {
    let config = Config::from_defaults_with("").unwrap();
    assert!(config.llm.stream);
    assert!(config.telegram.drafts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_answer_is_drafted_then_sent_once_with_entities() {
    let h = Harness::start_with(LIVE).await;
    let (chunks, full) = bold_answer();
    h.llm
        .script(vec![stream(chunks, Duration::from_millis(50))]);

    h.say(80, "hi");
    let shown = settled_transcript(&h, 80, 1).await;
    assert_eq!(shown, [full.as_str()]);
    assert!(h.llm.requests()[0].stream);

    let drafts = h.telegram.drafts_to(80);
    assert!(
        drafts.len() >= 2,
        "the draft grew live: {} drafts",
        drafts.len()
    );
    assert!(
        drafts.len() <= 10,
        "drafts are paced by edit_interval: {}",
        drafts.len()
    );
    assert!(drafts[0].draft_id != 0);
    assert!(
        drafts.iter().all(|d| d.draft_id == drafts[0].draft_id),
        "one draft per answer"
    );
    assert!(
        drafts.iter().all(|d| full.starts_with(d.text.trim_end())),
        "{drafts:?}"
    );
    assert!(
        drafts.iter().any(|d| d.entities.is_some()),
        "drafts are rendered like the answer"
    );
    assert!(h.telegram.edits().is_empty(), "nothing is edited");
    let sent = h.telegram.sent_to(80);
    assert_eq!(sent.len(), 1, "one final message");
    assert_eq!(
        sent[0].body["entities"][0]["type"], "bold",
        "{:?}",
        sent[0].body
    );

    // The next answer is a new draft.
    h.llm.script(vec![stream(
        vec!["again ".into(), "here".into()],
        Duration::from_millis(50),
    )]);
    h.say(80, "more");
    settled_transcript(&h, 80, 2).await;
    let last = h.telegram.drafts_to(80).last().cloned().unwrap();
    assert_ne!(last.draft_id, drafts[0].draft_id);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_draft_falls_back_to_edits_and_is_not_asked_again() {
    let h = Harness::start_with(LIVE).await;
    h.telegram.refuse_drafts(true);
    let (chunks, full) = bold_answer();
    h.llm
        .script(vec![stream(chunks, Duration::from_millis(50))]);

    h.say(81, "hi");
    let shown = settled_transcript(&h, 81, 1).await;
    assert_eq!(shown, [full.as_str()], "the answer is complete");
    assert_eq!(h.telegram.method_calls("sendMessageDraft"), 1);
    let edits = |chat: i64| {
        h.telegram
            .edits()
            .iter()
            .filter(|e| e.chat_id == chat)
            .count()
    };
    assert!(edits(81) >= 1, "the live message was edited");
    assert_eq!(h.telegram.sent_to(81).len(), 1);

    // Remembered: the next answer, in another chat, goes straight to edits.
    let (chunks, full) = bold_answer();
    h.llm
        .script(vec![stream(chunks, Duration::from_millis(50))]);
    h.say(82, "hi");
    let shown = settled_transcript(&h, 82, 1).await;
    assert_eq!(shown, [full.as_str()]);
    assert_eq!(
        h.telegram.method_calls("sendMessageDraft"),
        1,
        "not asked again"
    );
    assert!(edits(82) >= 1);
    assert!(h.telegram.drafts().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_see_an_edited_message() {
    let h = Harness::start_with(LIVE).await;
    const GROUP: i64 = -100_808;
    let (chunks, full) = bold_answer();
    h.llm
        .script(vec![stream(chunks, Duration::from_millis(50))]);
    h.telegram.push_raw_message(json!({
        "message_id": 5,
        "date": 1_700_000_000,
        "chat": {"id": GROUP, "type": "supergroup", "title": "Team"},
        "from": {"id": 31, "is_bot": false, "first_name": "Ann"},
        "text": format!("@{BOT_USERNAME} hi"),
    }));
    let shown = settled_transcript(&h, GROUP, 1).await;
    assert_eq!(shown, [full.as_str()]);
    assert_eq!(h.telegram.method_calls("sendMessageDraft"), 0);
    assert!(h.telegram.edits().iter().any(|e| e.chat_id == GROUP));
    assert_eq!(h.telegram.sent_to(GROUP)[0].reply_to, Some(5));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drafts_switched_off_use_edits() {
    let h = Harness::start_with(&LIVE.replace("drafts = true", "drafts = false")).await;
    let (chunks, full) = bold_answer();
    h.llm
        .script(vec![stream(chunks, Duration::from_millis(50))]);
    h.say(83, "hi");
    let shown = settled_transcript(&h, 83, 1).await;
    assert_eq!(shown, [full.as_str()]);
    assert_eq!(h.telegram.method_calls("sendMessageDraft"), 0);
    assert!(h.telegram.edits().iter().any(|e| e.chat_id == 83));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_a_draft_chat_sends_what_was_shown() {
    let h = Harness::start_with(LIVE).await;
    let chunks: Vec<String> = (0..100).map(|i| format!("w{i} ")).collect();
    h.llm
        .script(vec![stream(chunks, Duration::from_millis(50))]);
    h.say(84, "long answer please");
    eventually("the draft to show a few words", || {
        let shown = h
            .telegram
            .drafts_to(84)
            .last()
            .is_some_and(|d| d.text.contains("w3"));
        async move { shown }
    })
    .await;
    assert!(h.telegram.sent_to(84).is_empty(), "a draft is no message");
    let drafted = h.telegram.drafts_to(84).last().unwrap().text.clone();
    h.say(84, "/cancel");
    let shown = settled_transcript(&h, 84, 1).await;
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(
        shown[0].starts_with(drafted.trim_end()),
        "what the draft showed stays: {shown:?}"
    );
    assert!(!shown[0].contains("w99"), "the stream stopped: {shown:?}");
    assert!(shown[0].contains("Cancelled"), "{shown:?}");
    assert!(h.telegram.edits().is_empty());
    h.stop().await;
}
