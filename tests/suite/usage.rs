//! `/usage`: today's and this month's tokens, their cost at the configured
//! prices, the monthly budgets in tokens and money, an admin's view of a
//! user's usage, and spend that outlives `/forget` and a restart.

use llmgram::pricing::format_money;
use llmgram_fakes::LlmRequest;

use crate::common::Harness;

/// The default model at 1,000 USD per million prompt tokens and 3,000 per
/// million answer tokens: a token costs a thousandth or three, so a few
/// answers cost cents, shown exactly.
const PRICED: &str = "llm.prices = [{ model = \"llama-3.1-8b-instant\", \
     input_per_million = 1000.0, output_per_million = 3000.0 }]\n";

/// Tokens the fake LLM reports for so many characters.
fn fake_tokens(chars: usize) -> u64 {
    chars.div_ceil(4).max(1) as u64
}

/// The prompt and answer tokens the fake reported for `request`, whose
/// answer was "answer to: <last user message>".
fn reported(request: &LlmRequest) -> (u64, u64) {
    let prompt: usize = request
        .messages
        .iter()
        .map(|(_, c)| c.chars().count())
        .sum();
    let answer = format!("answer to: {}", request.last_user_message());
    (fake_tokens(prompt), fake_tokens(answer.chars().count()))
}

/// Total tokens and cost (micros, at [`PRICED`]) of every request so far.
fn spent(h: &Harness) -> (u64, u64) {
    h.llm
        .requests()
        .iter()
        .map(reported)
        .fold((0, 0), |(t, c), (i, o)| {
            (t + i + o, c + i * 1_000 + o * 3_000)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_turn_into_the_cost_usage_shows() {
    let h = Harness::start_with(PRICED).await;
    for (n, question) in ["first question", "a second, longer question", "third"]
        .into_iter()
        .enumerate()
    {
        h.say(31, question);
        h.replies(31, n + 1).await;
    }
    let (tokens, cost) = spent(&h);
    assert!(tokens > 0 && cost > 0);
    h.say(31, "/usage");
    let usage = h.replies(31, 4).await[3].text.clone();
    let money = format_money(cost, "USD");
    assert!(money.starts_with("$0.") && money.len() > 4, "{money}");
    assert_eq!(
        usage,
        format!(
            "Today you have used {tokens} of 100000 tokens.\n\
             This month you have used {tokens} tokens.\n\
             Cost: {money} today, {money} this month."
        )
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_prices_usage_shows_tokens_only() {
    let h = Harness::start_with("llm.monthly_token_budget = 5000\n").await;
    h.say(32, "hello there");
    h.replies(32, 1).await;
    let (tokens, _) = spent(&h);
    h.say(32, "/usage");
    let usage = &h.replies(32, 2).await[1].text;
    assert_eq!(
        usage,
        &format!(
            "Today you have used {tokens} of 100000 tokens.\n\
             This month you have used {tokens} of 5000 tokens."
        )
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monthly_token_budget_stops_llm_calls_but_not_admins() {
    let h = Harness::start_with("llm.monthly_token_budget = 10\nadmin_ids = [39]\n").await;
    h.say(33, "first question");
    assert_eq!(h.replies(33, 1).await[0].text, "answer to: first question");
    h.say(33, "second question");
    let refused = &h.replies(33, 2).await[1].text;
    assert_eq!(
        refused,
        "You have used this month's allowance of 10 tokens. It renews on the 1st (UTC)."
    );
    assert_eq!(h.llm.request_count(), 1, "no LLM call over budget");
    for question in ["admin one", "admin two"] {
        h.say(39, question);
    }
    h.replies(39, 2).await;
    assert_eq!(h.llm.request_count(), 3, "admins are exempt");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monthly_money_budget_stops_llm_calls() {
    // One answer costs a few cents at these prices: past a cent.
    let h = Harness::start_with(&format!("{PRICED}llm.monthly_cost_budget = 0.01\n")).await;
    h.say(34, "first question");
    h.replies(34, 1).await;
    h.say(34, "second question");
    let refused = &h.replies(34, 2).await[1].text;
    assert_eq!(
        refused,
        "You have used this month's spending allowance of $0.01. It renews on the 1st (UTC)."
    );
    assert_eq!(h.llm.request_count(), 1, "no LLM call over budget");
    h.say(34, "/usage");
    let usage = &h.replies(34, 3).await[2].text;
    assert!(
        usage.ends_with("\nMonthly spending limit: $0.01."),
        "{usage}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_a_users_usage_and_nobody_else_does() {
    let h = Harness::start_with(&format!("{PRICED}admin_ids = [35]\n")).await;
    h.say(36, "what is usage");
    h.replies(36, 1).await;
    let (tokens, cost) = spent(&h);
    let money = format_money(cost, "USD");

    h.say(35, "/usage 36");
    let seen = &h.replies(35, 1).await[0].text;
    assert_eq!(
        seen,
        &format!(
            "Usage of user 36:\n\
             Today you have used {tokens} of 100000 tokens.\n\
             This month you have used {tokens} tokens.\n\
             Cost: {money} today, {money} this month."
        )
    );
    // A user nobody has heard from has spent nothing.
    h.say(35, "/usage 999");
    let nobody = &h.replies(35, 2).await[1].text;
    assert!(
        nobody.starts_with("Usage of user 999:\nToday you have used 0 of"),
        "{nobody}"
    );
    assert!(
        nobody.contains("Cost: $0.00 today, $0.00 this month."),
        "{nobody}"
    );
    h.say(35, "/usage someone");
    assert_eq!(h.replies(35, 3).await[2].text, "Usage: /usage <user id>");

    h.say(36, "/usage 35");
    assert_eq!(
        h.replies(36, 2).await[1].text,
        "Sorry, you are not allowed to use that command."
    );
    assert_eq!(h.llm.request_count(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_keeps_the_months_spend_across_a_restart() {
    let h = Harness::start_with(PRICED).await;
    h.say(37, "remember this");
    h.replies(37, 1).await;
    h.say(37, "/usage");
    let before = h.replies(37, 2).await[1].text.clone();
    let (tokens, cost) = spent(&h);
    assert!(before.contains(&format!("This month you have used {tokens} tokens.")));
    assert!(before.contains(&format_money(cost, "USD")), "{before}");

    h.say(37, "/forget");
    h.replies(37, 3).await;
    h.say(37, "/usage");
    assert_eq!(
        h.replies(37, 4).await[3].text,
        before,
        "kept in the session"
    );

    let h = h.restart(PRICED).await;
    h.say(37, "/usage");
    assert_eq!(h.replies(37, 5).await[4].text, before, "kept in the store");
    h.stop().await;
}
