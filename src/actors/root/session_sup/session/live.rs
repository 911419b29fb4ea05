//! A streamed answer on the user's screen: the messages showing it, and
//! when the next edit may go.
//!
//! The session feeds it the provider's text as it arrives and asks it what
//! to send; it answers with the parts that differ from what is shown (the
//! first text as a new message, later text as edits, past Telegram's size
//! limit new messages). One update is in flight at a time, and the next
//! waits `telegram.edit_interval` after it, so a fast stream costs a bounded
//! number of Bot API calls. Everything is rendered the way the final answer
//! is (Markdown still open at the end, such as `**E`, closed first, so it
//! never shows raw), so the final delivery only edits what changed. The
//! last message carries the Stop button while the answer grows
//! (`buttons.rs`); the final delivery replaces it with Regenerate.
//!
//! In a private chat (with `telegram.drafts`) the answer is shown as an
//! animated draft instead (`sendMessageDraft`, same pacing): nothing is
//! edited, and the final delivery sends the answer as new messages, which
//! replace the draft. A draft holds one message: a longer answer's draft
//! shows the part being written. A draft has no buttons (the method takes
//! none), so there Stop is `/cancel`. If the Bot API refuses drafts, the
//! answer falls back to the edited message at once (the outbox remembers
//! the refusal, so later answers fall back without a call). A draft that
//! fails otherwise is tried again at the next update, unless Telegram
//! rejected it outright.

use std::time::Duration;

use teloxide::types::MessageId;
use tokio::time::Instant;

use crate::actors::root::outbox::{Delivered, Part};
use crate::telegram::TelegramError;
use crate::telegram::buttons::Keyboard;
use crate::telegram::render::{OutgoingText, complete_partial, render_markdown, to_messages};

/// Shown in a message the final answer no longer needs (it rendered shorter
/// than its streamed prefix, which is rare); Telegram refuses empty text.
const SURPLUS_MESSAGE: &str = "…";

/// How a streamed answer is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// As a draft with this id (private chats).
    Draft(u32),
    /// As messages edited as it grows.
    Edit,
}

/// What of a streamed answer the chat shows.
#[derive(Debug)]
pub(super) struct LiveAnswer {
    /// Draft or edited messages.
    mode: Mode,
    /// A draft has been shown (and the answer not moved to edits since).
    drafted: bool,
    /// The answer's Markdown so far.
    text: String,
    /// Messages showing it, in order, with their current texts.
    shown: Vec<(MessageId, OutgoingText)>,
    /// The update in flight: which part index each of its parts fills.
    sending: Vec<(usize, OutgoingText)>,
    /// Text arrived since the last update began.
    dirty: bool,
    /// An update failed: stop editing; the final answer goes as new messages.
    frozen: bool,
    /// No update before this.
    next_update: Instant,
    max_units: usize,
    interval: Duration,
    /// The Stop button, under the last message while the answer grows.
    stop: Option<Keyboard>,
}

impl LiveAnswer {
    /// Nothing shown yet; the first text may go at once. Messages hold up to
    /// `max_units` UTF-16 units; edits are `interval` apart.
    pub(super) fn new(max_units: usize, interval: Duration) -> Self {
        Self {
            mode: Mode::Edit,
            drafted: false,
            text: String::new(),
            shown: Vec::new(),
            sending: Vec::new(),
            dirty: false,
            frozen: false,
            next_update: Instant::now(),
            max_units,
            interval,
            stop: None,
        }
    }

    /// Like [`Self::new`], shown as draft `draft_id` (non-zero) until the
    /// Bot API refuses drafts.
    pub(super) fn with_draft(max_units: usize, interval: Duration, draft_id: u32) -> Self {
        Self {
            mode: Mode::Draft(draft_id),
            ..Self::new(max_units, interval)
        }
    }

    /// Whether the answer was shown as a draft (so the final delivery sends
    /// it as new messages, whatever it would have edited otherwise).
    pub(super) fn drafted(&self) -> bool {
        self.drafted
    }

    /// Shows `stop` (the Stop button) under the answer while it grows; the
    /// final delivery replaces it.
    pub(super) fn set_stop(&mut self, stop: Option<Keyboard>) {
        self.stop = stop;
    }

    /// More text arrived.
    pub(super) fn push(&mut self, delta: &str) {
        self.text.push_str(delta);
        self.dirty = true;
    }

    /// The answer's Markdown so far.
    pub(super) fn text(&self) -> &str {
        &self.text
    }

    /// Whether a message shows (or is about to show) the answer, so
    /// "typing…" is no longer needed.
    pub(super) fn is_showing(&self) -> bool {
        self.drafted || !self.shown.is_empty() || !self.sending.is_empty()
    }

    /// Whether an update should be sent once [`Self::next_update`] comes.
    pub(super) fn wants_update(&self) -> bool {
        self.dirty && !self.frozen && self.sending.is_empty() && !self.text.trim().is_empty()
    }

    /// When the next update may go.
    pub(super) fn next_update(&self) -> Instant {
        self.next_update
    }

    /// The parts that bring the chat up to date; the caller sends them and
    /// reports the outcome with [`Self::finish_update`].
    pub(super) fn begin_update(&mut self) -> Vec<Part> {
        self.dirty = false;
        // Rendered as it will be once finished, so no raw `**` shows.
        let mut wanted = to_messages(
            &render_markdown(&complete_partial(&self.text)),
            self.max_units,
        );
        if let Mode::Draft(draft_id) = self.mode {
            // One draft: the message being written.
            let Some(text) = wanted.pop() else {
                return Vec::new();
            };
            self.sending = vec![(0, text.clone())];
            return vec![Part::Draft { draft_id, text }];
        }
        super::turn::with_keyboard_last(&mut wanted, self.stop.clone());
        let (parts, sending) = diff(&self.shown, wanted);
        self.sending = sending;
        parts
    }

    /// The update begun last ended: `Ok` with the ids of its messages, or an
    /// error, after which the answer is no longer edited. For a draft: a
    /// refusal of drafts moves the answer to edited messages at once; a
    /// retryable failure waits for the next update (as long as Telegram
    /// asks, if longer).
    pub(super) fn finish_update(&mut self, outcome: Delivered) {
        let sending = std::mem::take(&mut self.sending);
        if let Mode::Draft(_) = self.mode {
            self.next_update = Instant::now() + self.interval;
            match outcome {
                Ok(_) => self.drafted = true,
                Err(TelegramError::Unsupported(_)) => {
                    self.mode = Mode::Edit;
                    self.drafted = false;
                    self.dirty = true;
                    self.next_update = Instant::now();
                }
                Err(TelegramError::RetryAfter(wait)) => {
                    self.dirty = true;
                    self.next_update = Instant::now() + wait.max(self.interval);
                }
                Err(error) if error.is_retryable() => self.dirty = true,
                Err(_) => self.frozen = true,
            }
            return;
        }
        match outcome {
            Ok(ids) if ids.len() == sending.len() => {
                for ((index, text), id) in sending.into_iter().zip(ids) {
                    if index < self.shown.len() {
                        self.shown[index] = (id, text);
                    } else {
                        self.shown.push((id, text));
                    }
                }
            }
            _ => self.frozen = true,
        }
        self.next_update = Instant::now() + self.interval;
    }

    /// The messages showing the answer, for the final delivery to edit;
    /// none if editing stopped or the answer was a draft (the final answer
    /// then goes as new messages below what is shown).
    pub(super) fn into_shown(self) -> Vec<(MessageId, OutgoingText)> {
        if self.frozen { Vec::new() } else { self.shown }
    }
}

/// The parts turning `shown` into `wanted`: edits of the messages whose text
/// changed, new messages past them, and a placeholder in shown messages
/// `wanted` no longer fills. Also returns, per part, the index it fills and
/// its text.
pub(super) fn diff(
    shown: &[(MessageId, OutgoingText)],
    wanted: Vec<OutgoingText>,
) -> (Vec<Part>, Vec<(usize, OutgoingText)>) {
    let mut parts = Vec::new();
    let mut filled = Vec::new();
    let wanted_count = wanted.len();
    for (index, text) in wanted.into_iter().enumerate() {
        match shown.get(index) {
            Some((_, current)) if *current == text => {}
            Some((message_id, _)) => {
                parts.push(Part::Edit {
                    message_id: *message_id,
                    text: text.clone(),
                });
                filled.push((index, text));
            }
            None => {
                parts.push(Part::New(text.clone()));
                filled.push((index, text));
            }
        }
    }
    for (index, (message_id, current)) in shown.iter().enumerate().skip(wanted_count) {
        let placeholder = OutgoingText::plain(SURPLUS_MESSAGE);
        if *current != placeholder {
            parts.push(Part::Edit {
                message_id: *message_id,
                text: placeholder.clone(),
            });
            filled.push((index, placeholder));
        }
    }
    (parts, filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(parts: &[Part]) -> Vec<String> {
        parts
            .iter()
            .map(|part| match part {
                Part::New(text) => format!("new:{}", text.text),
                Part::Reply { to, text } => format!("reply {}:{}", to.0, text.text),
                Part::Edit { message_id, text } => format!("edit {}:{}", message_id.0, text.text),
                Part::Draft { draft_id, text } => format!("draft {draft_id}:{}", text.text),
            })
            .collect()
    }

    #[test]
    fn first_text_is_a_new_message_then_edits() {
        let mut live = LiveAnswer::new(4096, Duration::from_millis(10));
        assert!(!live.wants_update());
        live.push("  ");
        assert!(!live.wants_update(), "blank text is not shown");
        live.push("Hello");
        assert!(live.wants_update());
        let parts = live.begin_update();
        assert_eq!(kinds(&parts), ["new:Hello"]);
        assert!(live.is_showing());
        assert!(!live.wants_update(), "one update at a time");
        live.push(", world");
        live.finish_update(Ok(vec![MessageId(7)]));
        assert!(live.wants_update());
        assert!(live.next_update() > Instant::now() - Duration::from_millis(1));
        let parts = live.begin_update();
        assert_eq!(kinds(&parts), ["edit 7:Hello, world"]);
        live.finish_update(Ok(vec![MessageId(7)]));
        assert_eq!(live.into_shown().len(), 1);
    }

    #[test]
    fn long_answers_continue_in_new_messages() {
        let mut live = LiveAnswer::new(100, Duration::ZERO);
        live.push(&"a".repeat(80));
        live.begin_update();
        live.finish_update(Ok(vec![MessageId(1)]));
        live.push(&format!(" {}", "b".repeat(80)));
        let parts = live.begin_update();
        // The first message changes (it was cut at the word boundary) or not,
        // and the rest goes into a new one.
        assert!(matches!(parts.last(), Some(Part::New(_))), "{parts:?}");
        let ids = (0..parts.len() as i32).map(|i| MessageId(i + 1)).collect();
        live.finish_update(Ok(ids));
        let shown = live.into_shown();
        assert_eq!(shown.len(), 2);
        let text: String = shown.iter().map(|(_, t)| t.text.as_str()).collect();
        assert_eq!(text.matches('a').count(), 80);
        assert_eq!(text.matches('b').count(), 80);
    }

    #[test]
    fn a_failed_update_stops_editing() {
        let mut live = LiveAnswer::new(4096, Duration::ZERO);
        live.push("x");
        live.begin_update();
        live.finish_update(Err(TelegramError::Rejected("rejected".into())));
        live.push("y");
        assert!(!live.wants_update());
        assert!(live.into_shown().is_empty());
    }

    #[test]
    fn unchanged_messages_are_not_edited_and_surplus_ones_are_blanked() {
        let shown = vec![
            (MessageId(1), OutgoingText::plain("one")),
            (MessageId(2), OutgoingText::plain("two")),
        ];
        let (parts, filled) = diff(&shown, vec![OutgoingText::plain("one")]);
        assert_eq!(kinds(&parts), ["edit 2:…"]);
        assert_eq!(filled[0].0, 1);
        let (parts, _) = diff(
            &shown,
            vec![
                OutgoingText::plain("one"),
                OutgoingText::plain("two!"),
                OutgoingText::plain("three"),
            ],
        );
        assert_eq!(kinds(&parts), ["edit 2:two!", "new:three"]);
    }

    #[test]
    fn a_draft_shows_the_answer_and_leaves_nothing_to_edit() {
        let mut live = LiveAnswer::with_draft(4096, Duration::ZERO, 5);
        live.push("Hel");
        assert!(!live.is_showing());
        assert_eq!(kinds(&live.begin_update()), ["draft 5:Hel"]);
        live.finish_update(Ok(Vec::new()));
        assert!(live.is_showing() && live.drafted());
        live.push("lo");
        assert_eq!(kinds(&live.begin_update()), ["draft 5:Hello"]);
        // A passing failure is tried again with the next update.
        live.finish_update(Err(TelegramError::Timeout));
        assert!(live.wants_update());
        assert_eq!(kinds(&live.begin_update()), ["draft 5:Hello"]);
        live.finish_update(Ok(Vec::new()));
        assert!(live.drafted());
        assert!(
            live.into_shown().is_empty(),
            "the final answer is sent anew"
        );
    }

    #[test]
    fn a_long_answer_drafts_the_part_being_written() {
        let mut live = LiveAnswer::with_draft(100, Duration::ZERO, 1);
        live.push(&format!("{} {}", "a".repeat(80), "b".repeat(40)));
        let parts = live.begin_update();
        assert_eq!(parts.len(), 1);
        assert!(
            matches!(&parts[0], Part::Draft { text, .. } if text.text.ends_with('b') && !text.text.contains('a')),
            "{parts:?}"
        );
    }

    #[test]
    fn refused_drafts_fall_back_to_edits_at_once() {
        let mut live = LiveAnswer::with_draft(4096, Duration::from_secs(60), 3);
        live.push("Hi");
        live.begin_update();
        live.finish_update(Err(TelegramError::Unsupported("old server".into())));
        assert!(!live.drafted() && !live.is_showing());
        assert!(live.wants_update());
        assert!(
            live.next_update() <= Instant::now(),
            "no wait for the fallback"
        );
        assert_eq!(kinds(&live.begin_update()), ["new:Hi"]);
        live.finish_update(Ok(vec![MessageId(4)]));
        assert_eq!(live.into_shown().len(), 1);
    }

    #[test]
    fn a_rejected_draft_stops_the_live_view() {
        let mut live = LiveAnswer::with_draft(4096, Duration::ZERO, 3);
        live.push("Hi");
        live.begin_update();
        live.finish_update(Err(TelegramError::Rejected("bad entities".into())));
        live.push("!");
        assert!(!live.wants_update());
        assert!(live.into_shown().is_empty());
    }
}
