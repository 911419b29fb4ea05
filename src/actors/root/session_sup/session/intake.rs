//! The session's entry point: an update arrives ([`on_arrival`]) and is
//! answered at once, or held for the merge window.
//!
//! Bursts: texts of one user sent within `session.merge_window` (Telegram
//! cuts a long paste into several messages) are held in the session's state
//! and answered as one request. Only a long piece waits for the window; a
//! short text is merged only with texts already in the mailbox (a
//! [`SessionMsg::FlushBurst`] the session casts to itself lands behind
//! them). Held texts stay pending at the supervisor, so a crash loses none;
//! the merged turn marks each of them answered. A `/cancel` while texts are
//! held drops them ([`cancel_burst`]).
//!
//! Albums: Telegram delivers an album's photos (or documents, or audio
//! files) as separate updates sharing a `media_group_id`. They are held the
//! same way, for `media.album_wait` after the last one, and answered as one
//! media turn with all the files.
//!
//! A merged turn carries the first message's quote (what it replied to)
//! and, in groups, is answered as a reply to that first message.

use std::sync::Arc;

use ractor::{ActorProcessingErr, ActorRef};

use super::turn::{self, Reply, Turn};
use super::{SessionMsg, SessionState, on_update};
use crate::input;
use crate::llm::Role;
use crate::telegram::command::Command;
use crate::telegram::inbound::{Inbound, InboundKind, MediaMessage};

/// Holds a text back while more may follow (`session.merge_window`);
/// answers anything else at once, after the texts held back.
pub(super) async fn on_arrival(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    inbound: Arc<Inbound>,
) -> Result<(), ActorProcessingErr> {
    let window = state.merge_window;
    let holdable = inbound.refused.is_none()
        && inbound.sent_at.is_some()
        && !state.answered_before(inbound.update_id);
    let mergeable = !window.is_zero() && holdable;
    let album = album_of(&inbound)
        .filter(|_| holdable && state.merges_albums)
        .map(str::to_owned);
    if let Some(album) = album {
        let joins = state
            .burst
            .first()
            .is_some_and(|first| album_of(first) == Some(album.as_str()));
        if !joins {
            answer_burst(state).await?;
        }
        state.burst.push(inbound);
        state.burst_generation += 1;
        let generation = state.burst_generation;
        myself.send_after(state.deps.config.media.album_wait, move || {
            SessionMsg::FlushBurst { generation }
        });
        return Ok(());
    }
    let text_chars = match &inbound.kind {
        InboundKind::Text(text) if mergeable => Some(text.chars().count()),
        _ => None,
    };
    let Some(chars) = text_chars else {
        if is_cancel(&inbound) && !state.burst.is_empty() {
            return cancel_burst(state, &inbound).await;
        }
        answer_burst(state).await?;
        return on_update(state, &inbound, &[]).await;
    };
    if let Some(first) = state.burst.first() {
        // Merged texts are joined with a newline each.
        let held: usize = state.burst.iter().map(|i| text_len(i) + 1).sum();
        // Telegram dates messages to the second.
        let window_secs = window.as_secs_f64().ceil() as i64;
        let sent_together = first
            .sent_at
            .zip(inbound.sent_at)
            .is_some_and(|(first, this)| (this - first).abs() <= window_secs.max(1));
        let joins = matches!(first.kind, InboundKind::Text(_))
            && first.user_id == inbound.user_id
            && sent_together
            && inbound
                .received_at
                .saturating_duration_since(first.received_at)
                <= window
            && held + chars <= state.deps.config.input.max_merged_chars;
        if !joins {
            answer_burst(state).await?;
        }
    }
    let first_received = state
        .burst
        .first()
        .map_or(inbound.received_at, |first| first.received_at);
    state.burst.push(inbound);
    state.burst_generation += 1;
    let generation = state.burst_generation;
    let waits_for_more = chars >= state.deps.config.session.merge_wait_chars;
    if waits_for_more {
        let wait = (first_received + window).saturating_duration_since(std::time::Instant::now());
        myself.send_after(wait, move || SessionMsg::FlushBurst { generation });
    } else {
        // Behind whatever is already in the mailbox: texts waiting there
        // join the burst first.
        myself.cast(SessionMsg::FlushBurst { generation })?;
    }
    Ok(())
}

/// The album an update belongs to, if any.
fn album_of(inbound: &Inbound) -> Option<&str> {
    match &inbound.kind {
        InboundKind::Media(media) => media.media_group.as_deref(),
        _ => None,
    }
}

/// An album's updates as one media message: every file in arrival order,
/// the first caption or command.
fn merged_album(burst: &[Arc<Inbound>]) -> Option<MediaMessage> {
    let mut parts = burst.iter().filter_map(|inbound| match &inbound.kind {
        InboundKind::Media(media) => Some(media),
        _ => None,
    });
    let mut merged = parts.next()?.clone();
    for part in parts {
        merged.attachments.extend(part.attachments.iter().cloned());
        if merged.caption.is_none() && merged.command.is_none() {
            merged.caption.clone_from(&part.caption);
            merged.command.clone_from(&part.command);
        }
    }
    Some(merged)
}

fn is_cancel(inbound: &Inbound) -> bool {
    matches!(&inbound.kind, InboundKind::Command(Command::Cancel))
}

/// `/cancel` while texts wait to be merged: they are not sent to the LLM.
/// They stay in the history (for `/retry`), and the turn marks them and the
/// `/cancel` answered.
async fn cancel_burst(
    state: &mut SessionState,
    inbound: &Inbound,
) -> Result<(), ActorProcessingErr> {
    let burst = std::mem::take(&mut state.burst);
    let earlier: Vec<u32> = burst.iter().map(|held| held.update_id).collect();
    let text = merged_text(&burst);
    if let Ok(cleaned) = input::validate(&text, state.deps.config.input.max_merged_chars) {
        state.history.push(Role::User, cleaned.as_str().into());
    }
    tracing::info!(held = earlier.len(), "held messages cancelled");
    let mut turn = Turn::new(&state.deps, inbound, &earlier);
    turn.reply = Reply::Plain(turn.texts.cancelled.clone());
    state.counters.answered += 1;
    turn::conclude(state, turn).await;
    turn::finish(state, inbound.update_id, &earlier)
}

/// The texts of a burst, one per line.
fn merged_text(burst: &[Arc<Inbound>]) -> String {
    burst
        .iter()
        .filter_map(|inbound| match &inbound.kind {
            InboundKind::Text(text) => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn text_len(inbound: &Inbound) -> usize {
    match &inbound.kind {
        InboundKind::Text(text) => text.chars().count(),
        _ => 0,
    }
}

/// Answers the texts held back, as one request when there are several.
pub(super) async fn answer_burst(state: &mut SessionState) -> Result<(), ActorProcessingErr> {
    let burst = std::mem::take(&mut state.burst);
    let Some((last, earlier)) = burst.split_last() else {
        return Ok(());
    };
    if earlier.is_empty() {
        return on_update(state, last, &[]).await;
    }
    let kind = match merged_album(&burst) {
        Some(album) => InboundKind::Media(album),
        None => InboundKind::Text(merged_text(&burst)),
    };
    // The burst reads as one message starting with its first: that one's
    // quote, and in groups the answer replies to it.
    let first = earlier.first().unwrap_or(last);
    let merged = Inbound {
        kind,
        message_id: first.message_id,
        reply_to: first.reply_to.clone(),
        ..Inbound::clone(last)
    };
    let earlier: Vec<u32> = earlier.iter().map(|inbound| inbound.update_id).collect();
    metrics::counter!("llmgram_merged_messages_total").increment(earlier.len() as u64);
    tracing::debug!(
        merged = earlier.len() + 1,
        "messages merged into one request"
    );
    on_update(state, &merged, &earlier).await
}
