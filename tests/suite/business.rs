//! Telegram Business fan chats (issue 17): the bot answers a creator's fans
//! as the creator (`auto` mode) through the creator's Business connection;
//! the creator's own messages and unanswered fan messages are context only;
//! a fan chat is its own conversation, apart from other fans and from the
//! bot's private chat of the same id.

use std::time::Duration;

use llmgram::actors::root::business::Configure;
use llmgram::config::BusinessMode;
use llmgram_fakes::{BusinessConn, BusinessFrom, FakeLlm, FakeTelegram, LlmReply, LlmReplyKind};

use crate::common::process::BotProcess;

use crate::common::{Harness, WAIT};

const OWNER: i64 = 5000;
const FAN: i64 = 6001;
const OTHER_FAN: i64 = 6002;

/// Business on, the owner an admin (so they may connect), `auto` mode.
const AUTO: &str = "admin_ids = [5000]\nbusiness.enabled = true\nbusiness.mode = \"auto\"\n";

/// Whether some message of the LLM request contains `text`.
fn mentions(request: &llmgram_fakes::LlmRequest, text: &str) -> bool {
    request.messages.iter().any(|(_, c)| c.contains(text))
}

fn fan(h: &Harness, chat: i64, text: &str) -> i64 {
    h.telegram
        .push_business_message("c1", chat, BusinessFrom::Fan(chat as u64), text)
}

async fn connected(overrides: &str) -> Harness {
    let h = Harness::start_with(overrides).await;
    h.telegram
        .connect_business(BusinessConn::new("c1", OWNER as u64));
    h
}

/// Lets the bot poll past everything pushed so far.
async fn settle(h: &Harness) {
    let polls = h.telegram.get_updates_calls();
    assert!(h.telegram.wait_for_get_updates(polls + 2, WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_answers_the_fan_as_the_creator_and_nowhere_else() {
    let h = connected(AUTO).await;
    fan(&h, FAN, "do you ship to Lisbon?");
    let got = h.telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(
        got[0].text.contains("do you ship to Lisbon?"),
        "{}",
        got[0].text
    );
    assert!(h.telegram.business_refusals().is_empty());
    // Neither the fan's id as the bot's chat nor the control room got it
    // (the control room has only its welcome).
    let sent = h.telegram.sent();
    assert!(
        !sent
            .iter()
            .any(|m| m.chat_id == FAN || m.text.contains("Lisbon")),
        "{sent:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_creators_own_message_is_context_and_never_answered() {
    let h = connected(AUTO).await;
    h.telegram
        .push_business_message("c1", FAN, BusinessFrom::Owner, "the blue dress is sold out");
    settle(&h).await;
    fan(&h, FAN, "what about the red one?");
    h.telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    let requests = h.llm.requests();
    assert_eq!(requests.len(), 1, "the creator's message cost no call");
    let said = requests[0]
        .messages
        .iter()
        .find(|(_, content)| content.contains("blue dress"))
        .expect("the creator's message in the prompt");
    assert_eq!(said.0, "assistant");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.telegram.business_sent("c1", FAN).len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_after_answers_only_when_the_creator_stayed_silent() {
    let h = connected(&format!("{AUTO}business.auto_after = \"1500ms\"\n")).await;
    fan(&h, FAN, "first question");
    h.telegram
        .push_business_message("c1", FAN, BusinessFrom::Owner, "I'm here, one sec");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(h.telegram.business_sent("c1", FAN).is_empty());
    assert_eq!(h.llm.request_count(), 0);

    fan(&h, FAN, "second question");
    let asked = std::time::Instant::now();
    let got = h.telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    assert!(asked.elapsed() >= Duration::from_millis(1200));
    assert!(got[0].text.contains("second question"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disallowed_owners_connection_is_ignored() {
    let h = Harness::start_with(AUTO).await;
    h.telegram.connect_business(BusinessConn::new("c9", 7777));
    h.telegram
        .push_business_message("c9", FAN, BusinessFrom::Fan(FAN as u64), "hello?");
    settle(&h).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.telegram.business_sent_all().is_empty());
    assert_eq!(h.llm.request_count(), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_connection_stops_answering() {
    let h = connected(AUTO).await;
    fan(&h, FAN, "one");
    h.telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    h.telegram.disable_business("c1");
    settle(&h).await;
    fan(&h, FAN, "two");
    settle(&h).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.telegram.business_sent("c1", FAN).len(), 1);
    assert_eq!(h.llm.request_count(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fans_stay_isolated() {
    let h = connected(AUTO).await;
    fan(&h, FAN, "alpha secret");
    h.telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    fan(&h, OTHER_FAN, "beta question");
    h.telegram
        .wait_for_business_sent("c1", OTHER_FAN, 1, WAIT)
        .await;
    let requests = h.llm.requests();
    assert!(mentions(&requests[1], "beta question"));
    assert!(!mentions(&requests[1], "alpha secret"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_chat_is_not_the_bots_private_chat_of_the_same_id() {
    let h = connected(AUTO).await;
    h.say(FAN, "private hello");
    h.replies(FAN, 1).await;
    fan(&h, FAN, "fan hello");
    h.telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    let requests = h.llm.requests();
    assert!(!mentions(&requests[1], "private hello"));
    assert_eq!(h.telegram.sent_to(FAN).len(), 1);
    h.say(FAN, "private again");
    h.replies(FAN, 2).await;
    assert!(!mentions(h.llm.requests().last().unwrap(), "fan hello"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_mode_answers_nothing_but_keeps_context() {
    let off = "admin_ids = [5000]\nbusiness.enabled = true\nbusiness.mode = \"off\"\n";
    let h = connected(off).await;
    fan(&h, FAN, "remember my size is M");
    settle(&h).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.telegram.business_sent_all().is_empty());
    assert_eq!(h.llm.request_count(), 0);

    // The creator switches the connection to auto (the control room's
    // `/mode auto`).
    let switched = h
        .service
        .directory()
        .business()
        .configure(
            "c1",
            Configure::Mode {
                fan: None,
                mode: BusinessMode::Auto,
            },
        )
        .await;
    assert_eq!(switched.ok(), Some(true));
    fan(&h, FAN, "so which one fits?");
    h.telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    assert!(mentions(&h.llm.requests()[0], "my size is M"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_message_admitted_before_sigkill_is_answered_once_after_restart() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [
        ("LLMGRAM_BUSINESS__ENABLED", "true".to_owned()),
        ("LLMGRAM_BUSINESS__MODE", "auto".to_owned()),
        ("LLMGRAM_BUSINESS__ALLOWED_OWNER_IDS", format!("[{OWNER}]")),
    ];
    llm.set_responder(|request| {
        if request.last_user_message().contains("hang") {
            LlmReply::now(LlmReplyKind::Hang)
        } else {
            LlmReply::text(format!("answer to: {}", request.last_user_message()))
        }
    });
    let bot = BotProcess::spawn_with(&telegram, &llm, &data, &env);
    telegram.connect_business(BusinessConn::new("c1", OWNER as u64));
    telegram.push_business_message("c1", FAN, BusinessFrom::Fan(FAN as u64), "please hang");
    assert_eq!(llm.wait_for_requests(1, WAIT).await, 1, "{}", bot.log());
    // Confirmed to Telegram: from now on the store is the only copy.
    let polls = telegram.get_updates_calls();
    assert!(telegram.wait_for_get_updates(polls + 1, WAIT).await);
    bot.kill9().await;

    llm.set_responder(|request| {
        LlmReply::text(format!("healthy: {}", request.last_user_message()))
    });
    let bot = BotProcess::spawn_with(&telegram, &llm, &data, &env);
    let sent = telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    assert_eq!(sent.len(), 1, "{}", bot.log());
    assert_eq!(sent[0].text, "healthy: please hang");
    let polls = telegram.get_updates_calls();
    assert!(telegram.wait_for_get_updates(polls + 2, WAIT).await);
    assert_eq!(telegram.business_sent("c1", FAN).len(), 1);
    // Only the control room's welcome went out as the bot.
    assert!(telegram.sent().iter().all(|m| m.chat_id != FAN));
    assert_eq!(bot.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_message_leaves_the_history() {
    let h = connected(AUTO).await;
    let deleted =
        h.telegram
            .push_business_message("c1", FAN, BusinessFrom::Owner, "call me at 555-0199");
    h.telegram
        .push_business_message("c1", FAN, BusinessFrom::Owner, "or write here");
    settle(&h).await;
    h.telegram
        .push_deleted_business_messages("c1", FAN, &[deleted]);
    settle(&h).await;
    fan(&h, FAN, "how do I reach you?");
    h.telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    let request = &h.llm.requests()[0];
    assert!(!mentions(request, "555-0199"));
    assert!(mentions(request, "or write here"));
    h.stop().await;
}
