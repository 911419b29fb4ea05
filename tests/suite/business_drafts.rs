//! Telegram Business `draft` mode (issue 17, items 3 and 5): each fan
//! message gets a suggested reply in the creator's control room under
//! ✅ Send · 🔄 Another · ✏️ Edit · 🚫 Skip; nothing reaches the fan without
//! a tap; a suggestion the fan wrote past is outdated before it can be sent;
//! a tap made before SIGKILL is delivered once after the restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llmgram::texts::{Locales, Texts, fill};
use llmgram_fakes::{
    BusinessConn, BusinessFrom, FakeLlm, FakeTelegram, LlmReply, SentMessage, button_data,
};

use crate::common::process::BotProcess;
use crate::common::{Harness, WAIT};

const OWNER: i64 = 5000;
const FAN: i64 = 6001;
const OTHER_FAN: i64 = 6002;

/// Business on (draft is the default mode), the owner an admin.
const DRAFT: &str = "admin_ids = [5000]\nbusiness.enabled = true\n";

fn english() -> Arc<Texts> {
    Arc::clone(Locales::load().unwrap().for_language(None))
}

fn fan(h: &Harness, chat: i64, text: &str) -> i64 {
    h.telegram
        .push_business_message("c1", chat, BusinessFrom::Fan(chat as u64), text)
}

/// Connected, the welcome received; suggestions numbered by the LLM.
async fn connected() -> Harness {
    let h = Harness::start_with(DRAFT).await;
    let n = Arc::new(AtomicUsize::new(0));
    h.llm.set_responder(move |request| {
        let n = n.fetch_add(1, Ordering::SeqCst) + 1;
        LlmReply::text(format!(
            "suggestion {n} for: {}",
            request.last_user_message()
        ))
    });
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

/// The control room's `nth` message (1-based), waited for.
async fn control(h: &Harness, nth: usize) -> SentMessage {
    h.replies(OWNER, nth).await[nth - 1].clone()
}

/// The buttons' data under a control-room message.
fn buttons(message: &SentMessage) -> Vec<String> {
    button_data(message.reply_markup.as_ref().expect("buttons"))
}

/// The newest text of a control-room message, after its edits, and whether
/// it still has buttons.
async fn shown(h: &Harness, message_id: i64, containing: &str) -> (String, bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let edits = h.telegram.edits();
        if let Some(edit) = edits
            .iter()
            .rev()
            .find(|e| e.chat_id == OWNER && e.message_id == message_id)
            && edit.text.contains(containing)
        {
            return (edit.text.clone(), edit.reply_markup.is_some());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no edit of {message_id} with {containing:?}: {edits:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tap(h: &Harness, message: &SentMessage, data: &str) {
    h.telegram
        .push_callback(OWNER, OWNER as u64, message.message_id, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suggestion_waits_for_send_and_reaches_the_fan_as_the_creator_once() {
    let texts = english();
    let h = connected().await;
    fan(&h, FAN, "do you ship to Lisbon?");
    let suggestion = control(&h, 2).await;
    assert!(
        suggestion.text.contains("do you ship to Lisbon?")
            && suggestion
                .text
                .contains("suggestion 1 for: do you ship to Lisbon?"),
        "{}",
        suggestion.text
    );
    assert_eq!(
        buttons(&suggestion),
        [
            "bd1:s:6001:1",
            "bd1:a:6001:1",
            "bd1:e:6001:1",
            "bd1:k:6001:1"
        ]
    );
    // Never sent without the creator's tap.
    settle(&h).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.telegram.business_sent_all().is_empty());

    tap(&h, &suggestion, "bd1:s:6001:1");
    let got = h.telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    assert_eq!(got[0].text, "suggestion 1 for: do you ship to Lisbon?");
    let (text, has_buttons) = shown(&h, suggestion.message_id, &texts.draft_sent).await;
    assert!(!has_buttons, "{text}");
    assert!(h.telegram.business_refusals().is_empty());

    // A second tap of the same button sends nothing more.
    tap(&h, &suggestion, "bd1:s:6001:1");
    let answers = h.telegram.callback_answers().len();
    assert!(h.telegram.wait_for_callback_answers(2, WAIT).await);
    assert!(answers <= 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.telegram.business_sent("c1", FAN).len(), 1);

    // The history has what was sent, as the creator's.
    fan(&h, FAN, "great, and to Porto?");
    control(&h, 3).await;
    let request = h.llm.requests().last().unwrap().clone();
    let sent = request
        .messages
        .iter()
        .find(|(_, c)| c.contains("suggestion 1 for"))
        .expect("the sent reply in the prompt");
    assert_eq!(sent.0, "assistant");
    // Nothing of the control room reached the fan's prompt, and the bot's
    // own chat with the fan's id got nothing.
    assert!(!request.messages.iter().any(|(_, c)| c.contains("💬")));
    assert!(h.telegram.sent_to(FAN).is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replaces_the_suggestion_and_edit_sends_the_creators_own_words() {
    let texts = english();
    let h = connected().await;
    fan(&h, FAN, "what time tomorrow?");
    let suggestion = control(&h, 2).await;

    tap(&h, &suggestion, "bd1:a:6001:1");
    let (text, has_buttons) = shown(&h, suggestion.message_id, "suggestion 2 for").await;
    assert!(has_buttons, "{text}");
    assert_eq!(h.llm.request_count(), 2);
    // The replaced suggestion's Send does nothing.
    tap(&h, &suggestion, "bd1:s:6001:1");
    assert!(h.telegram.wait_for_callback_answers(2, WAIT).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.telegram.business_sent_all().is_empty());
    assert_eq!(
        h.telegram.callback_answers()[1].text.as_deref(),
        Some(texts.draft_gone.as_str())
    );

    // ✏️ Edit: the creator's next message is the reply, as written.
    tap(&h, &suggestion, "bd1:e:6001:2");
    shown(&h, suggestion.message_id, "goes to").await;
    h.say(OWNER, "Let's say 5 pm *sharp*");
    let got = h.telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    assert_eq!(got[0].text, "Let's say 5 pm *sharp*");
    let confirmation = control(&h, 3).await;
    assert_eq!(
        confirmation.text,
        fill(&texts.draft_sent_yours, &[("fan", "Fan")])
    );
    assert_eq!(h.llm.request_count(), 2, "the creator's text cost no call");

    // The next control-room text is the creator's own chat with the bot
    // again.
    h.say(OWNER, "thanks bot");
    let answer = control(&h, 4).await;
    assert!(answer.text.contains("thanks bot"), "{}", answer.text);
    assert_eq!(h.telegram.business_sent("c1", FAN).len(), 1);

    // 🚫 Skip on the next one: nothing sent, the message says so.
    fan(&h, FAN, "ok!");
    let next = control(&h, 5).await;
    let skip = buttons(&next)[3].clone();
    tap(&h, &next, &skip);
    let (_, has_buttons) = shown(&h, next.message_id, &texts.draft_skipped).await;
    assert!(!has_buttons);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.telegram.business_sent("c1", FAN).len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suggestion_the_fan_wrote_past_is_outdated_before_it_can_be_sent() {
    let texts = english();
    let h = connected().await;
    fan(&h, FAN, "first");
    let first = control(&h, 2).await;
    fan(&h, FAN, "second");
    let second = control(&h, 3).await;
    let outdated = fill(&texts.draft_outdated, &[("fan", "Fan")]);
    let (_, has_buttons) = shown(&h, first.message_id, &outdated[..20]).await;
    assert!(!has_buttons);
    assert_eq!(
        buttons(&second),
        [
            "bd1:s:6001:2",
            "bd1:a:6001:2",
            "bd1:e:6001:2",
            "bd1:k:6001:2"
        ]
    );
    tap(&h, &first, "bd1:s:6001:1");
    assert!(h.telegram.wait_for_callback_answers(1, WAIT).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.telegram.business_sent_all().is_empty());

    // The creator answers the fan themselves: the open one closes too.
    h.telegram
        .push_business_message("c1", FAN, BusinessFrom::Owner, "on my way");
    let (_, has_buttons) = shown(&h, second.message_id, &texts.draft_answered[..10]).await;
    assert!(!has_buttons);
    tap(&h, &second, "bd1:s:6001:2");
    assert!(h.telegram.wait_for_callback_answers(2, WAIT).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.telegram.business_sent_all().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_connection_stops_drafting_and_sending() {
    let texts = english();
    let h = connected().await;
    fan(&h, FAN, "hello?");
    let suggestion = control(&h, 2).await;
    h.telegram.disable_business("c1");
    assert_eq!(control(&h, 3).await.text, texts.biz_disabled);
    fan(&h, FAN, "are you there?");
    settle(&h).await;
    tap(&h, &suggestion, "bd1:s:6001:1");
    assert!(h.telegram.wait_for_callback_answers(1, WAIT).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.llm.request_count(), 1, "no new suggestion");
    assert_eq!(h.telegram.sent_to(OWNER).len(), 3);
    assert!(h.telegram.business_sent_all().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fans_suggestions_stay_apart() {
    let h = connected().await;
    fan(&h, FAN, "alpha secret");
    let alpha = control(&h, 2).await;
    fan(&h, OTHER_FAN, "beta question");
    let beta = control(&h, 3).await;
    assert!(!beta.text.contains("alpha"), "{}", beta.text);
    assert!(!mentions_in_last_request(&h, "alpha secret"));
    // Each fan's Send goes to that fan only.
    tap(&h, &beta, &buttons(&beta)[0]);
    let got = h
        .telegram
        .wait_for_business_sent("c1", OTHER_FAN, 1, WAIT)
        .await;
    assert!(got[0].text.contains("beta question"));
    tap(&h, &alpha, &buttons(&alpha)[0]);
    let got = h.telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    assert!(got[0].text.contains("alpha secret"));
    assert_eq!(h.telegram.business_sent("c1", OTHER_FAN).len(), 1);
    h.stop().await;
}

fn mentions_in_last_request(h: &Harness, text: &str) -> bool {
    h.llm
        .requests()
        .last()
        .is_some_and(|r| r.messages.iter().any(|(_, c)| c.contains(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_tapped_before_sigkill_is_delivered_once_after_restart() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [
        ("LLMGRAM_BUSINESS__ENABLED", "true".to_owned()),
        ("LLMGRAM_BUSINESS__ALLOWED_OWNER_IDS", format!("[{OWNER}]")),
    ];
    llm.set_responder(|request| {
        LlmReply::text(format!("draft for: {}", request.last_user_message()))
    });
    let bot = BotProcess::spawn_with(&telegram, &llm, &data, &env);
    telegram.connect_business(BusinessConn::new("c1", OWNER as u64));
    telegram.push_business_message("c1", FAN, BusinessFrom::Fan(FAN as u64), "deal?");
    let room = telegram.wait_for_sent_to(OWNER, 2, WAIT).await;
    assert_eq!(room.len(), 2, "{}", bot.log());
    let suggestion = room[1].clone();

    // The tap is admitted and confirmed, then its session is held inside
    // the turn (Telegram does not answer the button) while the process is
    // killed.
    telegram.stall_method("answerCallbackQuery", Some(Duration::from_secs(30)));
    telegram.push_callback(OWNER, OWNER as u64, suggestion.message_id, "bd1:s:6001:1");
    let polls = telegram.get_updates_calls();
    assert!(telegram.wait_for_get_updates(polls + 2, WAIT).await);
    assert!(
        telegram.method_calls("answerCallbackQuery") >= 1,
        "{}",
        bot.log()
    );
    bot.kill9().await;
    assert!(telegram.business_sent_all().is_empty());

    telegram.stall_method("answerCallbackQuery", None);
    let bot = BotProcess::spawn_with(&telegram, &llm, &data, &env);
    let sent = telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    assert_eq!(sent.len(), 1, "{}", bot.log());
    assert_eq!(sent[0].text, "draft for: deal?");
    let polls = telegram.get_updates_calls();
    assert!(telegram.wait_for_get_updates(polls + 2, WAIT).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(telegram.business_sent("c1", FAN).len(), 1);
    assert_eq!(
        llm.request_count(),
        1,
        "the suggestion was not written again"
    );
    assert_eq!(bot.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_token_budget_is_the_creators_across_their_fans() {
    let texts = english();
    // The creator may connect but is no admin: the budget applies.
    let config = "business.enabled = true\nbusiness.allowed_owner_ids = [5000]\n\
                  llm.daily_token_budget = 5\n";
    let h = Harness::start_with(config).await;
    h.telegram
        .connect_business(BusinessConn::new("c1", OWNER as u64));
    h.replies(OWNER, 1).await;
    fan(
        &h,
        FAN,
        "a question long enough to spend the whole budget at once",
    );
    let first = control(&h, 2).await;
    assert_eq!(buttons(&first).len(), 4, "{}", first.text);
    // Another fan, a fan chat of their own: the creator's budget is spent.
    fan(&h, OTHER_FAN, "and mine?");
    let second = control(&h, 3).await;
    let refused = fill(&texts.budget_exceeded, &[("budget", "5")]);
    assert!(second.text.contains(&refused[..30]), "{}", second.text);
    assert_eq!(h.llm.request_count(), 1);
    assert_eq!(
        buttons(&second),
        ["bd1:a:6002:1", "bd1:e:6002:1", "bd1:k:6002:1"]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_fan_closes_their_open_suggestion() {
    let texts = english();
    let h = connected().await;
    fan(&h, FAN, "remember me?");
    let suggestion = control(&h, 2).await;
    h.say(OWNER, "/forget 6001");
    assert_eq!(
        control(&h, 3).await.text,
        fill(&texts.biz_forgot_fan, &[("fan", "6001")])
    );
    let (_, has_buttons) = shown(&h, suggestion.message_id, &texts.draft_forgotten[..12]).await;
    assert!(!has_buttons);
    tap(&h, &suggestion, "bd1:s:6001:1");
    assert!(h.telegram.wait_for_callback_answers(1, WAIT).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.telegram.business_sent_all().is_empty());
    // The next suggestion goes on numbering: the old button never matches.
    fan(&h, FAN, "hello again");
    let next = control(&h, 4).await;
    assert_eq!(buttons(&next)[0], "bd1:s:6001:2");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_message_admitted_before_sigkill_is_suggested_once_after_restart() {
    let telegram = FakeTelegram::start().await;
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [
        ("LLMGRAM_BUSINESS__ENABLED", "true".to_owned()),
        ("LLMGRAM_BUSINESS__ALLOWED_OWNER_IDS", format!("[{OWNER}]")),
    ];
    llm.set_responder(|_| LlmReply::now(llmgram_fakes::LlmReplyKind::Hang));
    let bot = BotProcess::spawn_with(&telegram, &llm, &data, &env);
    telegram.connect_business(BusinessConn::new("c1", OWNER as u64));
    assert_eq!(telegram.wait_for_sent_to(OWNER, 1, WAIT).await.len(), 1);
    telegram.push_business_message("c1", FAN, BusinessFrom::Fan(FAN as u64), "still open?");
    assert_eq!(llm.wait_for_requests(1, WAIT).await, 1, "{}", bot.log());
    let polls = telegram.get_updates_calls();
    assert!(telegram.wait_for_get_updates(polls + 1, WAIT).await);
    bot.kill9().await;

    llm.set_responder(|request| LlmReply::text(format!("yes: {}", request.last_user_message())));
    let bot = BotProcess::spawn_with(&telegram, &llm, &data, &env);
    let room = telegram.wait_for_sent_to(OWNER, 2, WAIT).await;
    assert_eq!(room.len(), 2, "{}", bot.log());
    assert!(
        room[1].text.contains("yes: still open?"),
        "{}",
        room[1].text
    );
    let polls = telegram.get_updates_calls();
    assert!(telegram.wait_for_get_updates(polls + 2, WAIT).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(telegram.sent_to(OWNER).len(), 2, "suggested once");
    assert!(
        telegram.business_sent_all().is_empty(),
        "never sent untapped"
    );
    // Its buttons work after the restart.
    telegram.push_callback(
        OWNER,
        OWNER as u64,
        room[1].message_id,
        &button_data(room[1].reply_markup.as_ref().unwrap())[0],
    );
    let sent = telegram.wait_for_business_sent("c1", FAN, 1, WAIT).await;
    assert_eq!(sent[0].text, "yes: still open?");
    assert_eq!(bot.terminate().await, Some(0));
}
