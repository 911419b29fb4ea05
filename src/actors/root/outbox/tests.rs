//! The outbox on its own, on a paused clock: the real actor, started as the
//! root starts it, driven through [`OutboxHandle`], sending through a
//! scripted stand-in for the Bot API that records when each call was made.

use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::time::Instant;

use super::{Outbox, OutboxHandle, OutboxMsg, Part};
use crate::actors::Child;
use crate::actors::test_support::{self, TestDeps};
use crate::telegram::TelegramError;
use crate::telegram::inbound::ChatId;
use crate::telegram::scripted::Step;

/// Telegram's pacing limiters run on the real clock: loose enough here that
/// they never wait, so every wait in these tests is the outbox's own.
const UNPACED: &str = "telegram.per_chat_rate = 1000\ntelegram.per_chat_burst = 1000\n\
                       telegram.global_rate = 1000\ntelegram.group_per_minute = 60000\n";

const A: ChatId = ChatId(1);
const B: ChatId = ChatId(2);

async fn start(t: &TestDeps) -> ActorRef<OutboxMsg> {
    let name = t.deps.directory.name(Child::Outbox);
    let (outbox, _) = Actor::spawn(
        Some(name),
        Outbox,
        crate::actors::root::outbox_args(&t.deps),
    )
    .await
    .expect("outbox starts");
    outbox
}

fn outbox(t: &TestDeps) -> OutboxHandle<'_> {
    t.deps.directory.outbox()
}

/// Hands a delivery over from a task of its own, so the test goes on
/// while it is queued or sent.
fn deliver_in_background(
    t: &TestDeps,
    chat: ChatId,
    parts: Vec<Part>,
) -> tokio::task::JoinHandle<super::Delivered> {
    let directory = t.deps.directory.clone();
    tokio::spawn(async move { directory.outbox().deliver(&chat.into(), &parts, None).await })
}

fn plain(text: &str) -> Part {
    Part::plain(text)
}

/// Lets every task that can run, run (the clock does not move while any
/// can), so a delivery handed over before this is queued before one after.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_chat_sends_in_order_while_other_chats_go_on() {
    let t = test_support::deps("outbox-order", UNPACED);
    let actor = start(&t).await;
    let t0 = Instant::now();
    t.telegram.then(A, Step::Delay(Duration::from_secs(5)));
    let first = deliver_in_background(&t, A, vec![plain("a1"), plain("a2")]);
    settle().await;
    let second = deliver_in_background(&t, A, vec![plain("a3")]);
    settle().await;
    let other = outbox(&t).deliver(&B.into(), &[plain("b1")], None).await;
    assert!(other.is_ok(), "{other:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "chat B waited for chat A's slow send: {:?}",
        t0.elapsed()
    );
    assert_eq!(first.await.expect("task").expect("sent").len(), 2);
    assert_eq!(second.await.expect("task").expect("sent").len(), 1);
    assert_eq!(t.telegram.texts(A), ["a1", "a2", "a3"]);
    let calls = t.telegram.calls();
    let a2 = calls.iter().find(|c| c.text == "a2").expect("a2 sent");
    assert!(
        a2.at >= t0 + Duration::from_secs(5),
        "a2 went before a1 was sent"
    );
    actor.stop(None);
}

#[tokio::test(start_paused = true)]
async fn a_flood_wait_is_waited_out_and_the_message_keeps_its_place() {
    let t = test_support::deps("outbox-flood", UNPACED);
    let actor = start(&t).await;
    let t0 = Instant::now();
    t.telegram.then(
        A,
        Step::Fail(TelegramError::RetryAfter(Duration::from_secs(7))),
    );
    let sent = outbox(&t)
        .deliver(&A.into(), &[plain("x1"), plain("x2")], None)
        .await;
    assert_eq!(sent.expect("sent after the wait").len(), 2);
    let calls = t.telegram.calls();
    let attempts: Vec<(&str, Result<i32, &str>)> = calls
        .iter()
        .map(|c| (c.text.as_str(), c.outcome.map(|_| 0)))
        .collect();
    assert_eq!(
        attempts,
        [("x1", Err("retry_after")), ("x1", Ok(0)), ("x2", Ok(0))]
    );
    assert!(
        calls[1].at >= t0 + Duration::from_secs(7),
        "resent before retry_after: {:?}",
        calls[1].at - t0
    );
    actor.stop(None);
}

#[tokio::test(start_paused = true)]
async fn a_flood_wait_longer_than_allowed_is_returned_not_waited() {
    let t = test_support::deps(
        "outbox-flood-long",
        &format!("{UNPACED}telegram.max_retry_after = \"60s\"\n"),
    );
    let actor = start(&t).await;
    let t0 = Instant::now();
    t.telegram.then(
        A,
        Step::Fail(TelegramError::RetryAfter(Duration::from_secs(61))),
    );
    let sent = outbox(&t).deliver(&A.into(), &[plain("y1")], None).await;
    assert!(
        matches!(sent, Err(TelegramError::RetryAfter(wait)) if wait == Duration::from_secs(61)),
        "{sent:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(1));
    // The chat is not stuck behind it.
    assert!(
        outbox(&t)
            .deliver(&A.into(), &[plain("y2")], None)
            .await
            .is_ok()
    );
    actor.stop(None);
}

#[tokio::test(start_paused = true)]
async fn flush_answers_after_the_chats_earlier_deliveries_only() {
    let t = test_support::deps("outbox-flush", UNPACED);
    let actor = start(&t).await;
    let t0 = Instant::now();
    t.telegram.then(A, Step::Delay(Duration::from_secs(10)));
    let slow = deliver_in_background(&t, A, vec![plain("slow")]);
    settle().await;
    outbox(&t).flush(&B.into()).await.expect("outbox answers");
    assert!(t0.elapsed() < Duration::from_secs(1), "B waited for A");
    outbox(&t).flush(&A.into()).await.expect("outbox answers");
    assert!(
        t0.elapsed() >= Duration::from_secs(10),
        "flushed before A's send"
    );
    assert_eq!(t.telegram.texts(A), ["slow"]);
    assert!(slow.await.expect("task").is_ok());
    actor.stop(None);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_outbox_flushes_the_deliveries_its_predecessor_left_running() {
    let t = test_support::deps("outbox-restart", UNPACED);
    let first = start(&t).await;
    let t0 = Instant::now();
    t.telegram.then(A, Step::Delay(Duration::from_secs(10)));
    let slow = deliver_in_background(&t, A, vec![plain("slow")]);
    settle().await;
    // The outbox dies with the send task running; its successor has an
    // empty queue, but a new session must still not read the chat's record
    // before that send (and its commit) is done.
    first.kill();
    settle().await;
    let second = start(&t).await;
    outbox(&t)
        .flush(&A.into())
        .await
        .expect("successor answers");
    assert!(
        t0.elapsed() >= Duration::from_secs(10),
        "flushed before the predecessor's send ended: {:?}",
        t0.elapsed()
    );
    assert_eq!(t.telegram.texts(A), ["slow"]);
    assert!(slow.await.expect("task").is_ok(), "the send task finished");
    second.stop(None);
}

#[test]
fn only_the_first_new_message_replies() {
    use teloxide::types::MessageId;
    let describe = |parts: &[Part]| -> Vec<String> {
        parts
            .iter()
            .map(|part| match part {
                Part::New(text) => format!("new:{}", text.text),
                Part::Reply { to, text } => format!("reply {}:{}", to.0, text.text),
                Part::Edit { message_id, text } => format!("edit {}:{}", message_id.0, text.text),
                Part::Draft { draft_id, text } => format!("draft {draft_id}:{}", text.text),
            })
            .collect()
    };
    let parts = vec![plain("one"), plain("two")];
    assert_eq!(
        describe(&Part::reply_first(parts.clone(), Some(MessageId(7)))),
        ["reply 7:one", "new:two"]
    );
    assert_eq!(
        describe(&Part::reply_first(parts, None)),
        ["new:one", "new:two"]
    );
    // Edits of what is shown stay edits; the first new message replies.
    let edit = Part::Edit {
        message_id: MessageId(3),
        text: crate::telegram::render::OutgoingText::plain("grown"),
    };
    assert_eq!(
        describe(&Part::reply_first(
            vec![edit, plain("more")],
            Some(MessageId(7))
        )),
        ["edit 3:grown", "reply 7:more"]
    );
}

fn draft(text: &str) -> Part {
    Part::Draft {
        draft_id: 9,
        text: crate::telegram::render::OutgoingText::plain(text),
    }
}

#[tokio::test(start_paused = true)]
async fn a_draft_is_shown_and_has_no_message_id() {
    let t = test_support::deps("outbox-draft", UNPACED);
    let actor = start(&t).await;
    let ids = outbox(&t).deliver(&A.into(), &[draft("Hel")], None).await;
    assert_eq!(ids.expect("shown"), Vec::new());
    let calls = t.telegram.calls();
    assert_eq!((calls[0].method, calls[0].text.as_str()), ("draft", "Hel"));
    actor.stop(None);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_of_drafts_is_remembered_and_not_asked_again() {
    let t = test_support::deps("outbox-draft-refused", UNPACED);
    let actor = start(&t).await;
    t.telegram.then(
        A,
        Step::Fail(TelegramError::Unsupported(
            "Not Found: method not found".into(),
        )),
    );
    let refused = outbox(&t).deliver(&A.into(), &[draft("Hel")], None).await;
    assert!(
        matches!(refused, Err(TelegramError::Unsupported(_))),
        "{refused:?}"
    );
    assert!(t.deps.drafts.is_refused());
    // Another chat: refused at once, no call made.
    let refused = outbox(&t).deliver(&B.into(), &[draft("Hi")], None).await;
    assert!(
        matches!(refused, Err(TelegramError::Unsupported(_))),
        "{refused:?}"
    );
    assert_eq!(t.telegram.calls().len(), 1);
    // Messages go on as before.
    assert!(
        outbox(&t)
            .deliver(&B.into(), &[plain("Hi")], None)
            .await
            .is_ok()
    );
    actor.stop(None);
}
