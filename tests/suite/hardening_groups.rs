//! Group chats: what changes the whole group's conversation (`/forget`,
//! `/reset`, `/model <name>`) needs a group administrator or a bot admin.

use llmgram_fakes::{BOT_USERNAME, TelegramFault};
use serde_json::json;

use crate::common::Harness;

const GROUP: i64 = -100_777;
const ALICE: u64 = 21;
const BOB: u64 = 22;

const ADMINS_ONLY: &str = "Only group admins can do this.";
const CHECK_FAILED: &str = "Could not check your admin status. Please try again in a moment.";

fn say_in_group(h: &Harness, id: i64, user: u64, text: &str) {
    h.telegram.push_raw_message(json!({
        "message_id": id,
        "date": 1_700_000_000,
        "chat": {"id": GROUP, "type": "supergroup", "title": "Team"},
        "from": {"id": user, "is_bot": false, "first_name": if user == ALICE { "Alice" } else { "Bob" }},
        "text": text,
    }));
}

fn ask(h: &Harness, id: i64, user: u64, text: &str) {
    say_in_group(h, id, user, &format!("@{BOT_USERNAME} {text}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_member_cannot_wipe_the_group_or_change_its_model() {
    let h = Harness::start().await;
    ask(&h, 1, ALICE, "the code word is heron");
    h.replies(GROUP, 1).await;
    say_in_group(&h, 2, BOB, "/forget");
    say_in_group(&h, 3, BOB, "/reset");
    say_in_group(&h, 4, BOB, "/model llama-3.3-70b-versatile");
    let replies = h.replies(GROUP, 4).await;
    for reply in &replies[1..4] {
        assert_eq!(reply.text, ADMINS_ONLY);
    }
    ask(&h, 5, ALICE, "what was the code word?");
    h.replies(GROUP, 5).await;
    assert_history_survived(&h);
    assert_eq!(
        h.llm.requests().last().expect("a request").model,
        "llama-3.1-8b-instant",
        "model unchanged"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_administrator_can_reset_and_choose_the_model() {
    let h = Harness::start().await;
    h.telegram.set_member_status(GROUP, BOB, "administrator");
    ask(&h, 1, ALICE, "the code word is heron");
    h.replies(GROUP, 1).await;
    say_in_group(&h, 2, BOB, "/reset");
    say_in_group(&h, 3, BOB, "/model llama-3.3-70b-versatile");
    let replies = h.replies(GROUP, 3).await;
    assert_eq!(replies[1].text, "Done: I've forgotten our conversation.");
    assert_eq!(
        replies[2].text,
        "This chat now uses llama-3.3-70b-versatile."
    );
    ask(&h, 4, ALICE, "what was the code word?");
    h.replies(GROUP, 4).await;
    let requests = h.llm.requests();
    let last = requests.last().expect("a request");
    assert!(
        last.messages.iter().all(|(_, c)| !c.contains("heron")),
        "history reset: {:?}",
        last.messages
    );
    assert_eq!(last.model, "llama-3.3-70b-versatile");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_admin_needs_no_group_rights() {
    let h = Harness::start_with(&format!("admin_ids = [{BOB}]\n")).await;
    ask(&h, 1, ALICE, "the code word is heron");
    h.replies(GROUP, 1).await;
    say_in_group(&h, 2, BOB, "/forget");
    let replies = h.replies(GROUP, 2).await;
    assert!(replies[1].text.starts_with("Done: everything stored"));
    assert_eq!(h.telegram.method_calls("getChatMember"), 0);
    ask(&h, 3, ALICE, "what was the code word?");
    h.replies(GROUP, 3).await;
    let requests = h.llm.requests();
    let last = requests.last().expect("a request");
    assert!(last.messages.iter().all(|(_, c)| !c.contains("heron")));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_admin_check_refuses_with_a_clear_reply() {
    let h = Harness::start_with("telegram.admin_check_timeout = \"1s\"\n").await;
    h.telegram.set_member_status(GROUP, BOB, "administrator");
    // A refusal from the Bot API.
    h.telegram.refuse_method(
        "getChatMember",
        Some(TelegramFault::Status(
            400,
            "Bad Request: chat not found".into(),
        )),
    );
    ask(&h, 1, ALICE, "the code word is heron");
    h.replies(GROUP, 1).await;
    say_in_group(&h, 2, BOB, "/reset");
    let replies = h.replies(GROUP, 2).await;
    assert_eq!(replies[1].text, CHECK_FAILED);
    // A server error: teloxide waits 10 s before reporting it, so the check
    // times out.
    h.telegram.refuse_method(
        "getChatMember",
        Some(TelegramFault::Status(500, "Internal Server Error".into())),
    );
    say_in_group(&h, 3, BOB, "/forget");
    let replies = h.replies(GROUP, 3).await;
    assert_eq!(replies[2].text, CHECK_FAILED);
    ask(&h, 4, ALICE, "what was the code word?");
    h.replies(GROUP, 4).await;
    assert_history_survived(&h);
    // Telegram answers again: the failures were not cached as refusals.
    h.telegram.refuse_method("getChatMember", None);
    say_in_group(&h, 5, BOB, "/reset");
    let replies = h.replies(GROUP, 5).await;
    assert_eq!(replies[4].text, "Done: I've forgotten our conversation.");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_chats_need_no_admin_check() {
    let h = Harness::start().await;
    h.say(31, "hello");
    h.replies(31, 1).await;
    h.say(31, "/reset");
    let replies = h.replies(31, 2).await;
    assert_eq!(replies[1].text, "Done: I've forgotten our conversation.");
    assert_eq!(h.telegram.method_calls("getChatMember"), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_status_is_cached_briefly() {
    let h = Harness::start_with("telegram.admin_status_cache = \"500ms\"\n").await;
    h.telegram.set_member_status(GROUP, BOB, "administrator");
    say_in_group(&h, 1, BOB, "/reset");
    say_in_group(&h, 2, BOB, "/reset");
    let replies = h.replies(GROUP, 2).await;
    assert_eq!(replies[1].text, "Done: I've forgotten our conversation.");
    assert_eq!(h.telegram.method_calls("getChatMember"), 1, "cached");
    // Demoted: trusted until the cache runs out, then asked again.
    h.telegram.set_member_status(GROUP, BOB, "member");
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    say_in_group(&h, 3, BOB, "/reset");
    let replies = h.replies(GROUP, 3).await;
    assert_eq!(replies[2].text, ADMINS_ONLY);
    assert_eq!(h.telegram.method_calls("getChatMember"), 2);
    // /model without a name is for everyone.
    say_in_group(&h, 4, BOB, "/model");
    let replies = h.replies(GROUP, 4).await;
    assert!(replies[3].text.contains("llama-3.1-8b-instant"));
    assert_eq!(h.telegram.method_calls("getChatMember"), 2);
    h.stop().await;
}

/// The group's last LLM request still carries what Alice said before the
/// refused commands.
fn assert_history_survived(h: &Harness) {
    let requests = h.llm.requests();
    let last = requests.last().expect("a request");
    assert!(
        last.messages
            .iter()
            .any(|(_, c)| c == "Alice: the code word is heron"),
        "history survived: {:?}",
        last.messages
    );
}
