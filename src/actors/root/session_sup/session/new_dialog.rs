//! `session.new_dialog_after`: after that long without a message answered,
//! the next message starts a fresh conversation (history and summary set
//! aside, as `/reset` does; settings and counters stay), and its answer says
//! so in one line. Off (zero) by default.
//!
//! The idle time is counted from the record's
//! [`ChatCounters::last_turn_at`](crate::store::record::ChatCounters::last_turn_at),
//! stamped with the wall clock each time a conversational message is
//! answered, so it holds across evictions and restarts. A record from
//! before that field (0) never counts as idle.

use super::SessionState;
use super::turn::{Reply, Turn, escape_markdown};
use crate::telegram::command::Command;
use crate::telegram::inbound::InboundKind;

/// Whether `kind` continues the conversation (and so may start a new one).
fn is_conversational(kind: &InboundKind) -> bool {
    matches!(
        kind,
        InboundKind::Text(_)
            | InboundKind::Media(_)
            | InboundKind::Command(Command::Assistant { .. })
    )
}

/// Before a message is answered: if the conversation has been idle past
/// `session.new_dialog_after`, clears it and returns `true` (the answer
/// then carries the notice, [`announce`]). Stamps the conversation active.
pub(super) fn begin(state: &mut SessionState, kind: &InboundKind, now_ms: u64) -> bool {
    if !is_conversational(kind) {
        return false;
    }
    let after = state.deps.config.session.new_dialog_after;
    let last = std::mem::replace(&mut state.counters.last_turn_at, now_ms);
    let idle_ms = now_ms.saturating_sub(last);
    let stale = !after.is_zero()
        && last != 0
        && u128::from(idle_ms) > after.as_millis()
        && (!state.history.is_empty() || state.summary.is_some());
    if stale {
        tracing::info!(
            idle_s = idle_ms / 1000,
            "idle past session.new_dialog_after; new conversation"
        );
        state.history.clear();
        super::summary::clear(state);
    }
    stale
}

/// The answer with the one-line "new conversation" notice above it.
pub(super) fn announce(turn: &mut Turn<'_>) {
    let notice = format!("_{}_", escape_markdown(&turn.texts.new_dialog_notice));
    let reply = std::mem::replace(&mut turn.reply, Reply::Silent);
    turn.reply = match reply {
        // A silent turn (a cancelled answer) tells nothing.
        Reply::Silent => Reply::Silent,
        reply => reply.below(&notice),
    };
}
