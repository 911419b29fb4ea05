//! `/usage`: what a chat spent today and this month (tokens, and their
//! cost when `[[llm.prices]]` has prices), with the budgets in force; and
//! `/usage ID` for admins (the session's dispatch refuses anyone else):
//! that user's private chat (chat id = user id), read from the store.

use super::SessionState;
use super::llm_turn::{roll_over, unix_day};
use super::turn::{Reply, Turn};
use crate::config::LlmConfig;
use crate::pricing::format_money;
use crate::store::record::ChatCounters;
use crate::telegram::command::UserArg;
use crate::telegram::inbound::{ChatId, SessionKey};
use crate::texts::{Texts, fill};

/// `/usage` (this chat) or `/usage ID` (an admin asking about a user).
pub(super) async fn on_usage(
    state: &SessionState,
    turn: &Turn<'_>,
    user: Option<&UserArg>,
) -> Reply {
    let texts = &turn.texts;
    let llm = &state.deps.config.llm;
    let user = match user {
        None => return Reply::Plain(report(&state.counters, llm, texts)),
        Some(UserArg::Malformed(_)) => {
            return Reply::Plain(fill(&texts.usage_user_id, &[("command", "usage")]));
        }
        Some(UserArg::Id(user)) => *user,
    };
    // A user's own spend is that of their private chat with the bot.
    let own = SessionKey::of_chat(ChatId(user));
    let counters = if own == state.key {
        Ok(Some(state.counters))
    } else {
        state
            .deps
            .directory
            .persistence()
            .load_chat(&own)
            .await
            .map(|record| record.map(|record| record.counters))
    };
    match counters {
        Ok(counters) => {
            let header = fill(&texts.usage_of_user, &[("user", &user.to_string())]);
            let report = report(&counters.unwrap_or_default(), llm, texts);
            Reply::Plain(format!("{header}\n{report}"))
        }
        Err(error) => {
            tracing::error!(class = error.class(), %error, "usage not read");
            Reply::Plain(texts.internal_error.clone())
        }
    }
}

/// The lines of a usage report: today's and this month's tokens (with
/// their budgets), their cost when prices are configured, and the monthly
/// spending limit.
fn report(counters: &ChatCounters, llm: &LlmConfig, texts: &Texts) -> String {
    // What was counted on an earlier day or month is spent no more.
    let mut counters = *counters;
    roll_over(&mut counters, unix_day());
    let mut lines = vec![tokens_line(
        counters.tokens_today,
        llm.daily_token_budget,
        &texts.usage,
        &texts.usage_unlimited,
    )];
    lines.push(tokens_line(
        counters.tokens_month,
        llm.monthly_token_budget,
        &texts.usage_month,
        &texts.usage_month_unlimited,
    ));
    if !llm.prices.is_empty() {
        let money = |micros| format_money(micros, &llm.currency);
        lines.push(fill(
            &texts.usage_cost,
            &[
                ("today", &money(counters.cost_today)),
                ("month", &money(counters.cost_month)),
            ],
        ));
    }
    let budget = llm.monthly_cost_budget_micros();
    if budget > 0 {
        lines.push(fill(
            &texts.usage_cost_budget,
            &[("budget", &format_money(budget, &llm.currency))],
        ));
    }
    lines.join("\n")
}

/// "{tokens} of {budget}", or "{tokens}" without a budget.
fn tokens_line(tokens: u64, budget: u64, limited: &str, unlimited: &str) -> String {
    let tokens = tokens.to_string();
    if budget == 0 {
        fill(unlimited, &[("tokens", &tokens)])
    } else {
        fill(
            limited,
            &[("tokens", &tokens), ("budget", &budget.to_string())],
        )
    }
}
