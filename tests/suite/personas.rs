//! Personas (issue 16, item 1): `/persona` picks the system prompt a chat
//! answers with, byte for byte; a chat's own prompt is cleaned, bounded,
//! kept across restarts and cleared by `/persona default`; assistant
//! commands speak in the persona's voice; in groups only admins change it.

use llmgram::config::Config;
use llmgram::texts::fill;
use llmgram_fakes::BOT_USERNAME;
use serde_json::json;

use crate::common::Harness;

const GROUP: i64 = -100_888;
const ALICE: u64 = 31;
const BOB: u64 = 32;

fn defaults() -> Config {
    Config::from_defaults_with("").unwrap()
}

/// The system message of the chat's last LLM request.
fn last_system(h: &Harness) -> String {
    let requests = h.llm.requests();
    let last = requests.last().expect("a request");
    assert_eq!(last.messages[0].0, "system");
    assert_eq!(
        last.messages
            .iter()
            .filter(|(role, _)| role == "system")
            .count(),
        1,
        "one system message"
    );
    last.messages[0].1.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_picked_persona_is_the_system_prompt_of_the_next_request() {
    let h = Harness::start().await;
    let config = defaults();
    let fans = config.persona("fan_replies").unwrap();
    h.say(1, "hello");
    h.replies(1, 1).await;
    assert_eq!(last_system(&h), config.llm.system_prompt);

    h.say(1, "/persona Fan_Replies");
    let replies = h.replies(1, 2).await;
    assert_eq!(replies[1].text, "Done: I now answer as fan_replies.");
    h.say(1, "a fan says hi");
    h.replies(1, 3).await;
    assert_eq!(last_system(&h).as_bytes(), fans.system_prompt.as_bytes());
    let request = h.llm.requests().last().unwrap().clone();
    assert_eq!(request.last_user_message(), "a fan says hi");
    let sent = request.body["temperature"].as_f64().unwrap();
    assert!((sent - f64::from(fans.temperature.unwrap())).abs() < 1e-6);

    // The list marks it; show gives its prompt back.
    h.say(1, "/persona");
    h.say(1, "/persona show");
    let replies = h.replies(1, 5).await;
    assert!(
        replies[3].text.contains("fan_replies — "),
        "{}",
        replies[3].text
    );
    assert!(replies[3].text.contains("✓"), "{}", replies[3].text);
    assert!(replies[3].text.contains("Current: fan_replies."));
    assert!(
        replies[4].text.contains(&fans.system_prompt),
        "{}",
        replies[4].text
    );

    // Unknown names change nothing.
    h.say(1, "/persona pirate");
    assert!(h.replies(1, 6).await[5].text.contains("no persona pirate"));

    // /reset keeps it (a setting, not conversation).
    h.say(1, "/reset");
    h.say(1, "again");
    h.replies(1, 8).await;
    assert_eq!(last_system(&h), fans.system_prompt);

    // Default restores llm.system_prompt.
    h.say(1, "/persona default");
    h.say(1, "and now?");
    let replies = h.replies(1, 10).await;
    assert_eq!(replies[8].text, "Done: back to the default persona.");
    assert_eq!(last_system(&h), config.llm.system_prompt);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_is_in_the_users_language() {
    let h = Harness::start().await;
    h.telegram.push_text_lang(2, 2, "/persona", "ru");
    let text = &h.replies(2, 1).await[0].text;
    let brand = defaults().persona("brand").unwrap().description["ru"].clone();
    assert!(text.contains(&format!("brand — {brand}")), "{text}");
    assert!(text.contains("Сейчас: default."), "{text}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_prompt_is_sent_cleaned_kept_across_restarts_and_bounded() {
    let h = Harness::start().await;
    let config = defaults();
    // Zero-width characters go, fullwidth folds, the ends are trimmed; the
    // inner line breaks stay.
    h.say(
        3,
        "/persona custom   You are Mia\u{200B}'s voice.\nBe ｂｒｉｅｆ.  ",
    );
    let own = "You are Mia's voice.\nBe brief.";
    let replies = h.replies(3, 1).await;
    let set = format!(
        "Done: I now follow your own instructions ({} characters)",
        own.chars().count()
    );
    assert!(replies[0].text.starts_with(&set), "{}", replies[0].text);
    h.say(3, "hi");
    h.replies(3, 2).await;
    assert_eq!(last_system(&h).as_bytes(), own.as_bytes());

    let h = h.restart("").await;
    h.say(3, "still you?");
    h.replies(3, 3).await;
    assert_eq!(last_system(&h), own, "kept across the restart");

    // Oversized and empty ones are refused and change nothing.
    let limit = config.input.max_system_prompt_chars;
    h.say(3, &format!("/persona custom {}", "x".repeat(limit + 1)));
    h.say(3, "/persona custom   \u{200B} ");
    h.say(3, "and now?");
    let replies = h.replies(3, 6).await;
    assert_eq!(
        replies[3].text,
        format!(
            "Your instructions are too long: {} characters, the limit is {limit}. Nothing was changed; please shorten them.",
            limit + 1
        )
    );
    assert!(
        replies[4].text.starts_with("Write the instructions"),
        "{}",
        replies[4].text
    );
    assert_eq!(last_system(&h), own);
    let at_limit = "y".repeat(limit);
    h.say(3, &format!("/persona custom {at_limit}"));
    h.say(3, "at the limit");
    h.replies(3, 8).await;
    assert_eq!(last_system(&h), at_limit);

    // /persona show gives it back; default clears it.
    h.say(3, "/persona show");
    assert!(h.replies(3, 9).await[8].text.ends_with(&at_limit));
    h.say(3, "/persona default");
    h.say(3, "plain again");
    h.replies(3, 11).await;
    assert_eq!(last_system(&h), config.llm.system_prompt);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_clears_the_persona() {
    let h = Harness::start().await;
    h.say(4, "/persona brand");
    h.say(4, "/forget");
    h.say(4, "hi");
    h.replies(4, 3).await;
    assert_eq!(last_system(&h), defaults().llm.system_prompt);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assistant_commands_speak_in_the_personas_voice() {
    let h = Harness::start().await;
    let config = defaults();
    let brand = config.persona("brand").unwrap();
    let caption = config.command("caption").unwrap();
    h.say(5, "/persona brand");
    h.say(5, "/caption summer in Lisbon");
    h.replies(5, 2).await;
    let request = h.llm.requests().last().unwrap().clone();
    assert_eq!(
        request.messages[0].1.as_bytes(),
        brand.system_prompt.as_bytes()
    );
    assert_eq!(
        request.last_user_message(),
        fill(&caption.template, &[("input", "summer in Lisbon")]),
        "the command's template stays the user message"
    );
    // The command's own temperature wins over the persona's.
    let sent = request.body["temperature"].as_f64().unwrap();
    assert!((sent - f64::from(caption.temperature.unwrap())).abs() < 1e-6);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_personas_model_applies_unless_the_chat_chose_one() {
    let h = Harness::start_with(
        "[[personas]]\nname = \"big\"\ndescription = { en = \"d\" }\n\
         system_prompt = \"You are big.\"\nmodel = \"llama-3.3-70b-versatile\"\ntemperature = 0.1\n",
    )
    .await;
    h.say(6, "/persona big");
    h.say(6, "one");
    h.replies(6, 2).await;
    let request = h.llm.requests().last().unwrap().clone();
    assert_eq!(request.model, "llama-3.3-70b-versatile");
    assert_eq!(request.messages[0].1, "You are big.");
    h.say(6, "/model llama-3.1-8b-instant");
    h.say(6, "two");
    h.replies(6, 4).await;
    assert_eq!(
        h.llm.requests().last().unwrap().model,
        "llama-3.1-8b-instant"
    );
    h.stop().await;
}

fn say_in_group(h: &Harness, id: i64, user: u64, text: &str) {
    h.telegram.push_raw_message(json!({
        "message_id": id,
        "date": 1_700_000_000,
        "chat": {"id": GROUP, "type": "supergroup", "title": "Team"},
        "from": {"id": user, "is_bot": false, "first_name": if user == ALICE { "Alice" } else { "Bob" }},
        "text": text,
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_group_only_admins_change_the_persona() {
    let h = Harness::start().await;
    let config = defaults();
    h.telegram.set_member_status(GROUP, ALICE, "administrator");
    say_in_group(&h, 1, BOB, "/persona brand");
    say_in_group(&h, 2, BOB, "/persona custom You are a pirate.");
    say_in_group(&h, 3, BOB, "/persona");
    say_in_group(&h, 4, BOB, &format!("@{BOT_USERNAME} hello"));
    let replies = h.replies(GROUP, 4).await;
    assert_eq!(replies[0].text, "Only group admins can do this.");
    assert_eq!(replies[1].text, "Only group admins can do this.");
    assert!(
        replies[2].text.contains("Current: default."),
        "anyone may list"
    );
    assert_eq!(last_system(&h), config.llm.system_prompt);

    say_in_group(&h, 5, ALICE, "/persona strategist");
    say_in_group(&h, 6, BOB, &format!("@{BOT_USERNAME} plan my week"));
    h.replies(GROUP, 6).await;
    assert_eq!(
        last_system(&h),
        config.persona("strategist").unwrap().system_prompt
    );
    h.stop().await;
}
