//! Forum topics: in a supergroup with topics enabled each topic is its own
//! conversation (history, stored record) and answers go to their topic as
//! replies; the General topic, plain groups and reply threads outside a
//! forum are one conversation per chat, as before.

use llmgram::store::inspect;
use llmgram::telegram::inbound::SessionKey;
use llmgram_fakes::{BOT_USERNAME, FakeLlm, FakeTelegram, LlmReply, LlmReplyKind};
use serde_json::json;
use teloxide::types::{ChatId, MessageId, ThreadId};

use crate::common::process::BotProcess;
use crate::common::{Harness, WAIT};

const FORUM: i64 = -100_777;
const TOPIC_A: i64 = 10;
const TOPIC_B: i64 = 20;

/// A message addressed to the bot in `thread` of the forum (`None`: the
/// General topic); returns its message id.
fn ask(h: &Harness, thread: Option<i64>, name: &str, text: &str) -> i64 {
    h.telegram
        .push_topic_text(FORUM, thread, 11, name, &format!("@{BOT_USERNAME} {text}"))
}

/// Waits until `n` answers were sent to the forum.
async fn answers(h: &Harness, n: usize) {
    h.replies(FORUM, n).await;
}

/// Whether some message of the LLM request contains `text`.
fn mentions(request: &llmgram_fakes::LlmRequest, text: &str) -> bool {
    request.messages.iter().any(|(_, c)| c.contains(text))
}

/// The conversation of topic `thread` of the forum.
fn topic(thread: i64) -> SessionKey {
    SessionKey::new(ChatId(FORUM), Some(ThreadId(MessageId(thread as i32))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_topics_keep_separate_histories_and_answers_go_to_their_topic_as_replies() {
    let h = Harness::start().await;
    let a1 = ask(&h, Some(TOPIC_A), "Alice", "plan the beach shoot");
    answers(&h, 1).await;
    let b1 = ask(&h, Some(TOPIC_B), "Bob", "write a pasta caption");
    answers(&h, 2).await;
    let a2 = ask(&h, Some(TOPIC_A), "Alice", "and the sunset one?");
    answers(&h, 3).await;

    let requests = h.llm.requests();
    assert_eq!(requests.len(), 3);
    // Topic B's request has none of topic A's turns.
    assert!(mentions(&requests[1], "pasta caption"));
    assert!(!mentions(&requests[1], "beach shoot"));
    // Topic A's second request has its own first turn and none of B's.
    assert!(mentions(&requests[2], "beach shoot"));
    assert!(mentions(
        &requests[2],
        "answer to: Alice: plan the beach shoot"
    ));
    assert!(!mentions(&requests[2], "pasta"));

    let in_a = h.telegram.sent_to_topic(FORUM, Some(TOPIC_A));
    let in_b = h.telegram.sent_to_topic(FORUM, Some(TOPIC_B));
    assert_eq!(
        in_a.iter().map(|m| m.reply_to).collect::<Vec<_>>(),
        vec![Some(a1), Some(a2)]
    );
    assert_eq!(in_a[1].text, "answer to: Alice: and the sunset one?");
    assert_eq!(in_b.len(), 1);
    assert_eq!(in_b[0].reply_to, Some(b1));
    assert!(h.telegram.sent_to_topic(FORUM, None).is_empty());
    // "typing…", when shown, is shown in the topic.
    assert!(
        h.telegram
            .chat_actions_to(FORUM)
            .iter()
            .all(|action| action.thread_id.is_some())
    );

    // Each topic has its own record.
    let dir = h.stop_keeping_store().await;
    let store = inspect::open(dir.path()).unwrap();
    let keys: Vec<String> = store
        .conversations()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        keys,
        vec![format!("{FORUM}/{TOPIC_A}"), format!("{FORUM}/{TOPIC_B}")]
    );
    assert_eq!(
        store.chat(topic(TOPIC_A)).unwrap().unwrap().history.len(),
        4
    );
    assert_eq!(
        store.chat(topic(TOPIC_B)).unwrap().unwrap().history.len(),
        2
    );
    assert!(store.chat(ChatId(FORUM)).unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_conversation_survives_a_restart() {
    let h = Harness::start().await;
    ask(&h, Some(TOPIC_A), "Alice", "remember the lighthouse");
    answers(&h, 1).await;
    ask(&h, Some(TOPIC_B), "Bob", "remember the bakery");
    answers(&h, 2).await;

    let h = h.restart("").await;
    let asked = ask(&h, Some(TOPIC_A), "Alice", "what did I ask?");
    answers(&h, 3).await;
    let requests = h.llm.requests();
    let last = requests.last().unwrap();
    assert!(mentions(last, "lighthouse"));
    assert!(!mentions(last, "bakery"));
    let in_a = h.telegram.sent_to_topic(FORUM, Some(TOPIC_A));
    assert_eq!(in_a.last().unwrap().reply_to, Some(asked));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_is_per_topic_and_forget_clears_every_topic() {
    let h = Harness::start().await;
    // Both change a group's conversation: its administrators' commands.
    h.telegram.set_member_status(FORUM, 11, "administrator");
    h.telegram.set_member_status(FORUM, 12, "administrator");
    ask(&h, Some(TOPIC_A), "Alice", "the lighthouse");
    answers(&h, 1).await;
    ask(&h, Some(TOPIC_B), "Bob", "the bakery");
    answers(&h, 2).await;
    ask(&h, None, "Carol", "the harbour");
    answers(&h, 3).await;

    // /reset in topic A clears topic A only.
    h.telegram
        .push_topic_text(FORUM, Some(TOPIC_A), 11, "Alice", "/reset");
    answers(&h, 4).await;
    ask(&h, Some(TOPIC_B), "Bob", "and now?");
    answers(&h, 5).await;
    assert!(mentions(h.llm.requests().last().unwrap(), "bakery"));
    ask(&h, Some(TOPIC_A), "Alice", "and here?");
    answers(&h, 6).await;
    assert!(!mentions(h.llm.requests().last().unwrap(), "lighthouse"));

    // /forget in topic B deletes what is stored for the whole chat.
    h.telegram
        .push_topic_text(FORUM, Some(TOPIC_B), 12, "Bob", "/forget");
    answers(&h, 7).await;
    assert_eq!(
        h.telegram.sent_to(FORUM)[6].thread_id,
        Some(TOPIC_B),
        "the confirmation goes to the topic"
    );
    // The idle sessions of the other topics do not bring it back.
    ask(&h, None, "Carol", "still there?");
    answers(&h, 8).await;
    assert!(!mentions(h.llm.requests().last().unwrap(), "harbour"));

    let dir = h.stop_keeping_store().await;
    let store = inspect::open(dir.path()).unwrap();
    let keys: Vec<String> = store
        .conversations()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    // Only the General topic's turn after /forget is stored.
    assert_eq!(keys, vec![FORUM.to_string()]);
    assert_eq!(store.chat(ChatId(FORUM)).unwrap().unwrap().history.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_general_topic_and_reply_threads_outside_a_forum_are_one_conversation() {
    let h = Harness::start().await;
    // The General topic: no thread id, the chat's own conversation.
    let general = ask(&h, None, "Carol", "hello from General");
    answers(&h, 1).await;
    let sent = h.telegram.sent_to(FORUM);
    assert_eq!((sent[0].thread_id, sent[0].reply_to), (None, Some(general)));
    // A topic does not see it.
    ask(&h, Some(TOPIC_A), "Alice", "hello from a topic");
    answers(&h, 2).await;
    assert!(!mentions(h.llm.requests().last().unwrap(), "General"));

    // A plain supergroup whose messages carry reply threads (no forum, no
    // topic messages): one conversation, answers without a thread.
    const GROUP: i64 = -100_888;
    let in_thread = |id: i64, thread: i64, text: &str| {
        json!({
            "message_id": id,
            "date": 1_700_000_000,
            "chat": {"id": GROUP, "type": "supergroup", "title": "Plain"},
            "from": {"id": 13, "is_bot": false, "first_name": "Dan"},
            "message_thread_id": thread,
            "text": format!("@{BOT_USERNAME} {text}"),
        })
    };
    h.telegram
        .push_raw_message(in_thread(1, 100, "first thread question"));
    h.replies(GROUP, 1).await;
    h.telegram
        .push_raw_message(in_thread(2, 200, "second thread question"));
    let sent = h.telegram.wait_for_sent_to(GROUP, 2, WAIT).await;
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|m| m.thread_id.is_none()));
    assert_eq!(sent[1].reply_to, Some(2));
    assert!(mentions(
        h.llm.requests().last().unwrap(),
        "first thread question"
    ));
    h.stop().await;
}

/// A topic message admitted before a SIGKILL is replayed to its topic:
/// answered there, as a reply, with that topic's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_message_in_flight_at_the_crash_is_answered_in_its_topic_after_restart() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    llm.set_responder(|request| {
        if request.last_user_message().contains("hang") {
            LlmReply::now(LlmReplyKind::Hang)
        } else {
            LlmReply::text(format!("answer to: {}", request.last_user_message()))
        }
    });
    let mention = |text: &str| format!("@{BOT_USERNAME} {text}");

    let bot = BotProcess::start(&telegram, &llm, &data).await;
    telegram.push_topic_text(
        FORUM,
        Some(TOPIC_A),
        11,
        "Alice",
        &mention("the lighthouse"),
    );
    telegram.wait_for_sent_to(FORUM, 1, WAIT).await;
    telegram.push_topic_text(FORUM, Some(TOPIC_B), 12, "Bob", &mention("the bakery"));
    telegram.wait_for_sent_to(FORUM, 2, WAIT).await;
    let asked =
        telegram.push_topic_text(FORUM, Some(TOPIC_A), 11, "Alice", &mention("please hang"));
    assert_eq!(llm.wait_for_requests(3, WAIT).await, 3);
    // Confirmed to Telegram: from now on the store is the only copy.
    let polls = telegram.get_updates_calls();
    assert!(telegram.wait_for_get_updates(polls + 1, WAIT).await);
    bot.kill9().await;

    llm.set_responder(|request| {
        LlmReply::text(format!("healthy: {}", request.last_user_message()))
    });
    let bot = BotProcess::start(&telegram, &llm, &data).await;
    let sent = telegram.wait_for_sent_to(FORUM, 3, WAIT).await;
    assert_eq!(sent.len(), 3, "{}", bot.log());
    // A replayed group message has lost its speaker's name (not stored).
    assert_eq!(sent[2].text, "healthy: please hang");
    assert_eq!(
        (sent[2].thread_id, sent[2].reply_to),
        (Some(TOPIC_A), Some(asked))
    );
    let replayed = llm.requests().last().unwrap().clone();
    assert!(mentions(&replayed, "lighthouse"));
    assert!(!mentions(&replayed, "bakery"));
    assert_eq!(bot.terminate().await, Some(0));
}
