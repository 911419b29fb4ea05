//! Reply context: what a message replies to, quoted above the user's text.
//!
//! The ingress keeps what a reply quotes ([`Quoted`]: Telegram's partial
//! quote, or the replied message's text or caption, cleaned and cut to
//! `input.max_quote_chars`). Here it becomes one marked line put above the
//! user's own words, in the user's message: the model reads it as user
//! content, never as instructions (it never reaches the system prompt). The
//! history keeps the message with its quote line, so later turns read the
//! same conversation the model answered.
//!
//! A reply to one of the bot's own answers quotes that answer, labelled as
//! the assistant's earlier answer, so the conversation continues from it
//! even after it left the history. While the whole answer is still in the
//! history the quote adds nothing and is left out; a partial quote (the
//! user picked the part they mean) is always kept.

use crate::history::History;
use crate::input;
use crate::llm::Role;
use crate::telegram::inbound::Quoted;
use crate::telegram::render::render_markdown;

/// The line quoting `quoted` ahead of the user's text, or `None` when it
/// adds nothing (the bot's whole answer is still in `history`).
pub(super) fn quote_line(history: &History, quoted: &Quoted) -> Option<String> {
    if quoted.from_bot && !quoted.partial && answer_in_history(history, &quoted.text) {
        return None;
    }
    let label = match (quoted.partial, quoted.from_bot) {
        (false, false) => "Replying to",
        (false, true) => "Replying to your earlier answer",
        (true, false) => "Quoting",
        (true, true) => "Quoting your earlier answer",
    };
    Some(format!("[{label}: «{}»]", quoted.text))
}

/// Whether an answer in `history` shows `quoted` (the text Telegram has of
/// one of the bot's messages: the answer's Markdown rendered, maybe one of
/// its parts, maybe cut).
fn answer_in_history(history: &History, quoted: &str) -> bool {
    let quoted = quoted.strip_suffix('…').unwrap_or(quoted).trim_end();
    history
        .messages()
        .filter(|message| message.role == Role::Assistant)
        .any(|message| input::clean(&render_markdown(&message.content).text).contains(quoted))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn quoted(text: &str, from_bot: bool, partial: bool) -> Quoted {
        Quoted {
            text: text.into(),
            from_bot,
            partial,
        }
    }

    #[test]
    fn quotes_are_labelled_by_who_wrote_them() {
        let history = History::new(10, 10_000);
        assert_eq!(
            quote_line(&history, &quoted("see you at 5", false, false)).unwrap(),
            "[Replying to: «see you at 5»]"
        );
        assert_eq!(
            quote_line(&history, &quoted("at 5", false, true)).unwrap(),
            "[Quoting: «at 5»]"
        );
        assert_eq!(
            quote_line(&history, &quoted("Try a sunrise shot.", true, false)).unwrap(),
            "[Replying to your earlier answer: «Try a sunrise shot.»]"
        );
        assert_eq!(
            quote_line(&history, &quoted("sunrise", true, true)).unwrap(),
            "[Quoting your earlier answer: «sunrise»]"
        );
    }

    #[test]
    fn an_answer_still_in_the_history_is_not_quoted_again() {
        let mut history = History::new(10, 10_000);
        history.push(Role::User, "ideas?".into());
        history.push(
            Role::Assistant,
            "Try a **sunrise** shot at the pier.".into(),
        );
        // Telegram has the rendered text (no Markdown), maybe cut.
        assert_eq!(
            quote_line(&history, &quoted("Try a sunrise shot…", true, false)),
            None
        );
        assert_eq!(
            quote_line(
                &history,
                &quoted("Try a sunrise shot at the pier.", true, false)
            ),
            None
        );
        // The part the user picked is kept, and so is another answer.
        assert!(quote_line(&history, &quoted("sunrise", true, true)).is_some());
        assert!(quote_line(&history, &quoted("Shoot at noon.", true, false)).is_some());
    }
}
