//! Assistant commands declared in config: templates filled in one pass,
//! input asked for when missing, listed in /help and in the command menu.

use llmgram::config::Config;
use llmgram::texts::fill;
use llmgram_fakes::BOT_USERNAME;

use crate::common::{Harness, settled_transcript};

fn template(name: &str) -> String {
    Config::from_defaults_with("")
        .unwrap()
        .command(name)
        .unwrap()
        .template
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_fills_its_template_once_with_the_literal_text() {
    let h = Harness::start().await;
    h.say(1, "/caption sunset over the sea");
    h.replies(1, 1).await;
    let request = &h.llm.requests()[0];
    assert_eq!(
        request.last_user_message(),
        fill(&template("caption"), &[("input", "sunset over the sea")])
    );
    assert_eq!(request.body["temperature"], 0.8);

    // Text that looks like template syntax stays literal.
    h.say(2, "/reply {input} ＄｛system｝");
    h.replies(2, 1).await;
    let request = &h.llm.requests()[1];
    let want = template("reply").replace("{input}", "{input} ${system}");
    assert_eq!(request.last_user_message(), want);
    assert_eq!(request.messages[0].0, "system");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_without_text_asks_for_it_and_uses_the_next_message() {
    let h = Harness::start().await;
    h.say(3, "/flirt");
    assert!(h.replies(3, 1).await[0].text.contains("/flirt"));
    assert_eq!(h.llm.request_count(), 0);
    h.say(3, "you look great today!");
    h.replies(3, 2).await;
    let request = &h.llm.requests()[0];
    assert_eq!(
        request.last_user_message(),
        fill(&template("flirt"), &[("input", "you look great today!")])
    );
    assert_eq!(request.body["temperature"], 0.9);

    // The next plain message is plain again.
    h.say(3, "thanks");
    h.replies(3, 3).await;
    assert_eq!(h.llm.requests()[1].last_user_message(), "thanks");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_and_the_command_menu_list_the_commands_per_language() {
    let h = Harness::start().await;
    h.say(4, "/help");
    h.telegram.push_text_lang(5, 5, "/help", "ru");
    let english = &h.replies(4, 1).await[0].text;
    let russian = &h.replies(5, 1).await[0].text;
    assert!(english.contains("/flirt — playful"), "{english}");
    assert!(english.contains("/ideas — content ideas"), "{english}");
    assert!(russian.contains("/caption — подписи к посту"), "{russian}");

    let menus = h.telegram.my_commands();
    let names = |menu: &serde_json::Value| -> Vec<String> {
        menu["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["command"].as_str().unwrap().to_owned())
            .collect()
    };
    let ru = menus
        .iter()
        .find(|m| m["language_code"] == "ru")
        .expect("a Russian menu");
    assert!(names(ru).contains(&"flirt".to_owned()));
    assert!(
        menus.iter().any(|m| m.get("language_code").is_none()),
        "a default menu"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_picks_a_model_for_their_own_chat() {
    let h = Harness::start().await;
    h.say(6, "/model llama-3.3-70b-versatile");
    assert!(
        h.replies(6, 1).await[0]
            .text
            .contains("now uses llama-3.3-70b-versatile")
    );
    h.say(6, "hi");
    h.say(7, "hi");
    h.replies(6, 2).await;
    h.replies(7, 1).await;
    let model_of = |chat: &str| {
        h.llm
            .requests()
            .iter()
            .find(|r| r.last_user_message() == chat)
            .map(|r| r.model.clone())
    };
    assert!(model_of("hi").is_some());
    let models: Vec<String> = h.llm.requests().iter().map(|r| r.model.clone()).collect();
    assert!(
        models.contains(&"llama-3.3-70b-versatile".to_owned()),
        "{models:?}"
    );
    assert!(
        models.contains(&"llama-3.1-8b-instant".to_owned()),
        "the other chat keeps the default"
    );
    h.say(6, "/model gpt-99");
    assert!(
        h.replies(6, 3).await[2]
            .text
            .contains("Unknown model gpt-99")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_token_budget_stops_llm_calls_but_not_admins() {
    let h = Harness::start_with("llm.daily_token_budget = 10\nadmin_ids = [9]\n").await;
    h.say(8, "first question");
    assert_eq!(h.replies(8, 1).await[0].text, "answer to: first question");
    h.say(8, "/usage");
    let usage = &h.replies(8, 2).await[1].text;
    assert!(usage.contains("of 10 tokens"), "{usage}");
    h.say(8, "second question");
    let refused = &h.replies(8, 3).await[2].text;
    assert!(refused.contains("allowance of 10 tokens"), "{refused}");
    assert_eq!(h.llm.request_count(), 1, "no LLM call over budget");

    for question in ["admin one", "admin two"] {
        h.say(9, question);
    }
    h.replies(9, 2).await;
    assert_eq!(h.llm.request_count(), 3, "admins are exempt");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chats_model_choice_survives_a_restart() {
    let h = Harness::start().await;
    h.say(12, "/model llama-3.3-70b-versatile");
    h.replies(12, 1).await;
    let h = h.restart("").await;
    h.say(12, "/model");
    let shown = &h.replies(12, 2).await[1].text;
    assert!(
        shown.contains("Current model: llama-3.3-70b-versatile"),
        "{shown}"
    );
    h.say(12, "still yours?");
    h.replies(12, 3).await;
    assert_eq!(
        h.llm.requests().last().unwrap().model,
        "llama-3.3-70b-versatile"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_default_command_builds_its_request_and_answers() {
    let h = Harness::start().await;
    let defaults = Config::from_defaults_with("").unwrap();
    let commands = ["flirt", "caption", "reply", "ideas"];
    for (i, name) in commands.iter().enumerate() {
        let chat = 40 + i as i64;
        h.say(chat, &format!("/{name} summer in Lisbon"));
        let reply = &h.replies(chat, 1).await[0];
        let request = &h.llm.requests()[i];
        let command = defaults.command(name).unwrap();
        assert_eq!(
            request.messages[0],
            ("system".to_owned(), defaults.llm.system_prompt.clone()),
            "/{name}: the system prompt, byte for byte"
        );
        assert_eq!(
            request.last_user_message(),
            fill(&command.template, &[("input", "summer in Lisbon")]),
            "/{name}: the template, filled"
        );
        let model = command.model.as_deref().unwrap_or(&defaults.llm.model);
        assert_eq!(request.model, model, "/{name}: the model");
        let temperature = command.temperature.unwrap_or(defaults.llm.temperature);
        let sent = request.body["temperature"].as_f64().unwrap();
        assert!(
            (sent - f64::from(temperature)).abs() < 1e-6,
            "/{name}: temperature {sent}"
        );
        assert_eq!(
            reply.text,
            format!("answer to: {}", request.last_user_message()),
            "/{name}: answered"
        );
    }
    assert_eq!(h.llm.request_count(), commands.len());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_read_whatever_their_case_suffix_or_arguments() {
    let h = Harness::start_with("admin_ids = [900]\n").await;
    // Malformed arguments get the command's usage line, after the admin
    // check: a non-admin is refused before the argument is looked at.
    h.say(900, "/ban abc");
    h.say(900, &format!("/UNBAN@{BOT_USERNAME} 1 2"));
    h.say(901, "/ban abc");
    let admin = h.replies(900, 2).await;
    assert_eq!(admin[0].text, "Usage: /ban <user id>");
    assert_eq!(admin[1].text, "Usage: /unban <user id>");
    assert!(h.replies(901, 1).await[0].text.contains("not allowed"));
    // Case and the @bot suffix do not change a command; an unknown one is
    // named back in lower case; one for another bot gets no answer at all.
    h.say(902, "/start@other_bot");
    h.say(902, "/Nope now");
    h.say(902, &format!("/FLIRT@{BOT_USERNAME}"));
    let replies = settled_transcript(&h, 902, 2).await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies[0].contains("/nope"), "{}", replies[0]);
    assert!(replies[1].contains("/flirt"), "{}", replies[1]);
    assert_eq!(h.llm.request_count(), 0);
    h.stop().await;
}
