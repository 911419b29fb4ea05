//! More of Telegram Business fan chats (issue 17): `/forget FAN` from the
//! creator's control room, edited business messages, files in fan chats,
//! and deletions that still find their messages after a restart.

use std::sync::Arc;

use llmgram::texts::{Locales, Texts, fill};
use llmgram_fakes::{BusinessConn, BusinessFrom, LlmRequest};

use crate::common::{Harness, WAIT};

const OWNER: i64 = 5000;
const FAN: i64 = 6001;
const OTHER_FAN: i64 = 6002;
/// Has no connection at all.
const NOBODY: i64 = 42;

/// Business on, the owner an admin (so they may connect), `auto` mode.
const AUTO: &str = "admin_ids = [5000]\nbusiness.enabled = true\nbusiness.mode = \"auto\"\n";

fn english() -> Arc<Texts> {
    Arc::clone(Locales::load().unwrap().for_language(None))
}

/// Whether some message of the LLM request contains `text`.
fn mentions(request: &LlmRequest, text: &str) -> bool {
    request.messages.iter().any(|(_, c)| c.contains(text))
}

/// Whether some turn of the request is exactly `text` (the fake LLM's
/// answers quote the question, so a question's own turn is looked for).
fn has_turn(request: &LlmRequest, text: &str) -> bool {
    request.messages.iter().any(|(_, c)| c == text)
}

fn fan(h: &Harness, chat: i64, text: &str) -> i64 {
    h.telegram
        .push_business_message("c1", chat, BusinessFrom::Fan(chat as u64), text)
}

/// Connected, with the control room's welcome received.
async fn connected(overrides: &str) -> Harness {
    let h = Harness::start_with(overrides).await;
    h.telegram
        .connect_business(BusinessConn::new("c1", OWNER as u64));
    h.replies(OWNER, 1).await;
    h
}

/// Lets the bot poll past everything pushed so far.
async fn settle(h: &Harness) {
    let polls = h.telegram.get_updates_calls();
    assert!(h.telegram.wait_for_get_updates(polls + 2, WAIT).await);
}

/// The fan writes `text` and gets the automatic answer (the `n`th the fan
/// chat received); the LLM request that wrote it.
async fn answered(h: &Harness, chat: i64, text: &str, n: usize) -> LlmRequest {
    fan(h, chat, text);
    let got = h.telegram.wait_for_business_sent("c1", chat, n, WAIT).await;
    assert_eq!(got.len(), n, "fan {chat}: {got:?}");
    h.llm
        .requests()
        .into_iter()
        .rev()
        .find(|request| mentions(request, text))
        .expect("the request answering it")
}

/// Says `text` in the control room; the `nth` message sent there.
async fn control(h: &Harness, text: &str, nth: usize) -> String {
    h.say(OWNER, text);
    h.replies(OWNER, nth).await[nth - 1].text.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_fan_empties_that_fans_conversation_and_only_theirs() {
    let texts = english();
    let h = connected(AUTO).await;
    answered(&h, FAN, "my code is 4242", 1).await;
    answered(&h, OTHER_FAN, "my code is 7373", 1).await;
    // The fan's own mode: forgotten with the rest.
    assert!(control(&h, "/mode 6001 off", 2).await.contains("6001"));

    assert_eq!(
        control(&h, "/forget 6001", 3).await,
        fill(&texts.biz_forgot_fan, &[("fan", "6001")])
    );
    let fans = control(&h, "/fans", 4).await;
    assert!(!fans.contains("6001") && fans.contains("6002"), "{fans}");

    // The fan follows the connection's mode (auto) again, with nothing of
    // before; the other fan keeps everything.
    let request = answered(&h, FAN, "hello again", 2).await;
    assert!(!mentions(&request, "4242"), "{request:?}");
    let request = answered(&h, OTHER_FAN, "still there?", 2).await;
    assert!(mentions(&request, "7373"));

    // Plain /forget in the control room is the control room's own; a
    // malformed fan gets the usage; someone without a connection is told.
    assert_eq!(control(&h, "/forget bob", 5).await, texts.biz_forget_usage);
    assert_eq!(control(&h, "/forget", 6).await, texts.forgotten);
    h.say(NOBODY, "/forget 6001");
    assert_eq!(h.replies(NOBODY, 1).await[0].text, texts.biz_no_connection);
    // Nothing reached the fans' chats but their answers.
    assert_eq!(h.telegram.business_sent("c1", FAN).len(), 2);
    assert_eq!(h.telegram.business_sent("c1", OTHER_FAN).len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_fan_survives_a_restart() {
    let h = connected(AUTO).await;
    answered(&h, FAN, "my code is 4242", 1).await;
    control(&h, "/forget 6001", 2).await;
    let h = h.restart(AUTO).await;
    let request = answered(&h, FAN, "remember me?", 2).await;
    assert!(!mentions(&request, "4242"), "{request:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_replace_their_turn_and_are_never_answered() {
    let h = connected(AUTO).await;
    let price =
        h.telegram
            .push_business_message("c1", FAN, BusinessFrom::Owner, "the price is 100");
    settle(&h).await;
    let size = fan(&h, FAN, "size S please");
    h.telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;

    h.telegram.push_edited_business_message(
        "c1",
        FAN,
        price,
        BusinessFrom::Owner,
        "the price is 120",
    );
    h.telegram.push_edited_business_message(
        "c1",
        FAN,
        size,
        BusinessFrom::Fan(FAN as u64),
        "size M please",
    );
    settle(&h).await;
    let calls = h.llm.requests().len();
    assert_eq!(calls, 1, "an edit costs no call");

    let request = answered(&h, FAN, "ok?", 2).await;
    assert!(has_turn(&request, "the price is 120"), "{request:?}");
    assert!(has_turn(&request, "size M please"), "{request:?}");
    assert!(!has_turn(&request, "the price is 100"));
    assert!(!has_turn(&request, "size S please"));
    h.stop().await;
}

/// A `business_message` with a photo (and `caption`, if any) or a voice
/// note, as Telegram sends it.
fn push_file(h: &Harness, message_id: i64, file: &str) {
    h.telegram.push_raw_update(&format!(
        r#""business_message":{{"message_id":{message_id},"date":1764650000,
        "chat":{{"id":{FAN},"type":"private","first_name":"Fan"}},
        "from":{{"id":{FAN},"is_bot":false,"first_name":"Fan"}},
        "business_connection_id":"c1",{file}}}"#
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_in_fan_chats_are_markers_never_fetched_nor_answered() {
    let h = connected(AUTO).await;
    push_file(
        &h,
        900,
        r#""photo":[{"file_id":"p","file_unique_id":"up","width":90,"height":90,"file_size":1000}],"caption":"my new hat""#,
    );
    push_file(
        &h,
        901,
        r#""voice":{"file_id":"v","file_unique_id":"uv","duration":3,"mime_type":"audio/ogg","file_size":3000}"#,
    );
    settle(&h).await;
    assert!(h.llm.requests().is_empty(), "a file is not answered");
    assert_eq!(h.telegram.get_file_calls(), 0, "nor downloaded");
    assert!(h.telegram.business_sent("c1", FAN).is_empty());

    let request = answered(&h, FAN, "well?", 1).await;
    assert!(mentions(&request, "[photo] my new hat"), "{request:?}");
    assert!(mentions(&request, "[voice message]"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_after_a_restart_still_leave_the_history() {
    let h = connected(AUTO).await;
    let creators =
        h.telegram
            .push_business_message("c1", FAN, BusinessFrom::Owner, "call me at 555-0199");
    settle(&h).await;
    let fans = fan(&h, FAN, "my address is 12 Elm St");
    h.telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    answered(&h, FAN, "thanks", 2).await;

    let h = h.restart(AUTO).await;
    h.telegram
        .push_deleted_business_messages("c1", FAN, &[creators, fans]);
    settle(&h).await;
    let request = answered(&h, FAN, "how do I reach you?", 3).await;
    assert!(!mentions(&request, "555-0199"), "{request:?}");
    assert!(
        !has_turn(&request, "my address is 12 Elm St"),
        "{request:?}"
    );
    assert!(has_turn(&request, "thanks"), "{request:?}");
    h.stop().await;
}
