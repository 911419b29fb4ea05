//! Reply context: a message that replies to another carries the quoted
//! text (marked, bounded) into the LLM request and the history; in groups
//! the answer is sent as a reply to the message it answers.

use llmgram_fakes::{BOT_FIRST_NAME, BOT_USER_ID, BOT_USERNAME, LlmReply, MediaUpdate};
use serde_json::{Value, json};

use crate::common::Harness;

const GROUP: i64 = -100_777;

fn chat(chat_id: i64) -> Value {
    if chat_id < 0 {
        json!({"id": chat_id, "type": "supergroup", "title": "Creators"})
    } else {
        json!({"id": chat_id, "type": "private", "first_name": "User"})
    }
}

/// A text message of `user` in `chat_id`.
fn message(chat_id: i64, id: i64, user: u64, text: &str) -> Value {
    json!({
        "message_id": id,
        "date": 1_700_000_000,
        "chat": chat(chat_id),
        "from": {"id": user, "is_bot": false, "first_name": "Ann"},
        "text": text,
    })
}

/// `message` as a reply to a message of another user saying `original`.
fn replying_to_user(mut message: Value, original: &str) -> Value {
    message["reply_to_message"] = json!({
        "message_id": 1,
        "date": 1_699_999_000,
        "chat": message["chat"].clone(),
        "from": {"id": 99, "is_bot": false, "first_name": "Bob"},
        "text": original,
    });
    message
}

/// `message` as a reply to the bot's message `id` saying `original`.
fn replying_to_bot(mut message: Value, id: i64, original: &str) -> Value {
    message["reply_to_message"] = json!({
        "message_id": id,
        "date": 1_699_999_000,
        "chat": message["chat"].clone(),
        "from": {"id": BOT_USER_ID, "is_bot": true, "first_name": BOT_FIRST_NAME, "username": BOT_USERNAME},
        "text": original,
    });
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_puts_the_quoted_text_in_the_request_and_the_history() {
    let h = Harness::start().await;
    h.telegram.push_raw_message(replying_to_user(
        message(41, 10, 41, "where exactly?"),
        "see you at the pier at 5",
    ));
    h.replies(41, 1).await;
    let asked = "[Replying to: «see you at the pier at 5»]\nwhere exactly?";
    assert_eq!(h.llm.requests()[0].last_user_message(), asked);

    // The history keeps the message with its quote; the next turn reads it.
    h.say(41, "and then?");
    h.replies(41, 2).await;
    let requests = h.llm.requests();
    assert_eq!(requests[1].messages[1], ("user".into(), asked.into()));
    assert_eq!(requests[1].last_user_message(), "and then?");
    // A private chat's answers are not replies.
    assert!(h.telegram.sent_to(41).iter().all(|m| m.reply_to.is_none()));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_quote_is_used_alone() {
    let h = Harness::start().await;
    let mut reply = replying_to_user(
        message(42, 10, 42, "what does this mean?"),
        "Meet at the pier at 5, bring the drone and the spare batteries.",
    );
    reply["quote"] = json!({"text": "the spare batteries", "position": 42, "is_manual": true});
    h.telegram.push_raw_message(reply);
    h.replies(42, 1).await;
    assert_eq!(
        h.llm.requests()[0].last_user_message(),
        "[Quoting: «the spare batteries»]\nwhat does this mean?"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_an_answer_that_left_the_history_still_carries_it() {
    // No summary: the quote alone must carry the answer that left.
    let h = Harness::start_with("session.max_messages = 2\nsession.summarize = false\n").await;
    h.say(43, "name a colour");
    let first = h.replies(43, 1).await[0].clone();
    h.say(43, "name a fruit");
    h.replies(43, 2).await;

    h.telegram.push_raw_message(replying_to_bot(
        message(43, 50, 43, "a darker one"),
        first.message_id,
        &first.text,
    ));
    h.replies(43, 3).await;
    let third = &h.llm.requests()[2];
    assert_eq!(
        third.last_user_message(),
        "[Replying to your earlier answer: «answer to: name a colour»]\na darker one"
    );
    // Only the last exchange is left in the history: the answer comes
    // from the quote alone, which is user content, never the system prompt.
    let earlier = &third.messages[..third.messages.len() - 1];
    assert!(
        earlier.iter().all(|(_, c)| !c.contains("name a colour")),
        "{earlier:?}"
    );
    assert_eq!(third.messages[0].0, "system");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_quote_is_cut() {
    let h = Harness::start_with("input.max_quote_chars = 20\n").await;
    let long = "word ".repeat(400);
    h.telegram
        .push_raw_message(replying_to_user(message(44, 10, 44, "summarise it"), &long));
    h.replies(44, 1).await;
    assert_eq!(
        h.llm.requests()[0].last_user_message(),
        "[Replying to: «word word word word…»]\nsummarise it"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_group_the_answer_replies_to_the_message_with_its_first_part() {
    let h = Harness::start_with("telegram.max_message_chars = 100\n").await;
    h.telegram.push_raw_message(message(
        GROUP,
        77,
        11,
        &format!("@{BOT_USERNAME} a short one"),
    ));
    let sent = h.replies(GROUP, 1).await;
    assert_eq!(sent[0].reply_to, Some(77));
    assert!(sent[0].reply_without_original);

    // A long answer: only its first message is a reply.
    let long: String = (0..60).map(|i| format!("w{i:03} ")).collect();
    h.llm.set_responder(move |_| LlmReply::text(long.clone()));
    h.telegram.push_raw_message(message(
        GROUP,
        88,
        12,
        &format!("@{BOT_USERNAME} a long one"),
    ));
    let sent = h.replies(GROUP, 4).await;
    let answer = &sent[1..];
    assert!(answer.len() >= 3, "{answer:?}");
    assert_eq!(answer[0].reply_to, Some(88));
    assert!(answer[1..].iter().all(|m| m.reply_to.is_none()));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_group_answer_replies_with_its_first_message() {
    let h = Harness::start_with("llm.stream = true\n").await;
    h.telegram.push_raw_message(message(
        GROUP,
        91,
        11,
        &format!("@{BOT_USERNAME} stream it"),
    ));
    let sent = h.replies(GROUP, 1).await;
    assert_eq!(sent[0].reply_to, Some(91));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_caption_reply_carries_the_quote() {
    let h = Harness::start_with("llm.vision_model = \"see-model\"\n").await;
    let photo = h
        .telegram
        .add_file(llmgram_fakes::jpeg(640, 480, 2_000), "photos/file_0.jpg");
    let (_, update) = h
        .telegram
        .media_update(MediaUpdate::photo(45, 45, &[&photo]).caption("does this fit?"));
    let reply = replying_to_user(update["message"].clone(), "we need a sunset picture");
    h.telegram.push_raw_message(reply);
    h.replies(45, 1).await;
    let request = &h.llm.requests()[0];
    assert_eq!(
        request.last_user_message(),
        "[Replying to: «we need a sunset picture»]\ndoes this fit?"
    );
    assert_eq!(request.images.len(), 1);

    // The history keeps the photo's label with the quote.
    h.say(45, "thanks");
    h.replies(45, 2).await;
    let next = &h.llm.requests()[1];
    assert!(
        next.messages.iter().any(|(role, content)| role == "user"
            && content == "[Replying to: «we need a sunset picture»]\n[Photo] does this fit?"),
        "{:?}",
        next.messages
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_as_a_reply_takes_the_quote_as_its_input() {
    let h = Harness::start().await;
    h.telegram.push_raw_message(replying_to_user(
        message(46, 10, 46, "/reply"),
        "I love your sunset posts!",
    ));
    h.replies(46, 1).await;
    let asked = h.llm.requests()[0].last_user_message().to_owned();
    assert!(asked.contains("I love your sunset posts!"), "{asked}");
    assert!(!asked.contains("[Replying to"), "{asked}");
    // With its own text, the command quotes the message as any text does.
    h.telegram.push_raw_message(replying_to_user(
        message(46, 11, 46, "/reply thank them warmly"),
        "I love your sunset posts!",
    ));
    h.replies(46, 2).await;
    let asked = h.llm.requests()[1].last_user_message().to_owned();
    assert!(
        asked.starts_with("[Replying to: «I love your sunset posts!»]\n"),
        "{asked}"
    );
    assert!(asked.contains("thank them warmly"), "{asked}");
    h.stop().await;
}
