//! A turn of a Telegram Business fan chat (issue 17): the bot writes as the
//! creator (the Business account's owner) to a fan, so nothing of the bot's
//! own voice is ever sent there.
//!
//! What a message is was decided on intake ([`crate::front`]): the
//! creator's own messages and the fans' messages not to be answered arrive
//! as [`InboundKind::Context`] and only join the history (the creator's as
//! assistant turns: they are what "the creator" said). A fan's text that
//! arrives as [`InboundKind::Text`] gets a suggestion in the creator's
//! control room (`draft` mode, and `auto` outside `business.active_hours`
//! or without the reply right: `draft.rs`), or is answered in `auto` mode:
//! after
//! `business.auto_after` (dropped if the creator writes meanwhile), with
//! the connection's persona (else `business.persona`, else the default),
//! the mode checked again right before sending (a connection disabled or
//! paused meanwhile stops at once), the final answer only (no streaming,
//! no buttons). Anything but the LLM's answer (a refusal, an error text)
//! is not sent to the fan.
//!
//! Files (photos, voice notes, documents …) arrive as context with a
//! marker (`[photo] caption`, decided in [`crate::front`]): kept, never
//! answered, never downloaded. An edit ([`InboundKind::Edited`]) of a
//! tracked message replaces its history turn; never answered. `/forget
//! FAN` from the creator's control room arrives here as a command (the
//! front routes it) and deletes this conversation's record.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ractor::ActorProcessingErr;

use super::SessionState;
use super::draft::Closed;
use super::turn::{self, Change, Reply, Turn};
use crate::actors::root::business::Connection;
use crate::config::BusinessMode;
use crate::llm::Role;
use crate::store::record::{FanRecord, text_hash};
use crate::telegram::command::{Command, FanArg};
use crate::telegram::inbound::{Inbound, InboundKind, MessageId};
use crate::telegram::session_key::{ChatId, SessionKey};
use crate::texts::fill;

/// The user turn before a fan chat's history that starts with the
/// creator's message (fixed text, never the fan's).
const EARLIER: &str = "(earlier messages of this chat are not shown)";

/// Answers (or keeps) one update of a fan chat; a suggestion's button
/// press or the creator's own reply goes to `draft.rs`.
pub(super) async fn on_fan_update(
    state: &mut SessionState,
    inbound: &Inbound,
    earlier: &[u32],
) -> Result<(), ActorProcessingErr> {
    match &inbound.kind {
        InboundKind::Callback(press) => {
            return super::draft::on_press(state, inbound, press, earlier).await;
        }
        InboundKind::CreatorReply { seq, text } => {
            return super::draft::on_creator_reply(state, inbound, *seq, text, earlier).await;
        }
        _ => {}
    }
    let mut turn = Turn::new(&state.deps, inbound, earlier);
    turn.reply = match &inbound.kind {
        InboundKind::Context { text, by_owner } => {
            let why = if *by_owner {
                Closed::CreatorAnswered
            } else {
                Closed::FanWrote
            };
            super::draft::close(state, why).await;
            let kept = keep(state, text, *by_owner);
            track(state, inbound.message_id, kept);
            Reply::Silent
        }
        InboundKind::Text(text) => {
            super::draft::close(state, Closed::FanWrote).await;
            let reply = match decide(state, inbound).await {
                Decision::Answer => answer(state, &mut turn, text).await,
                Decision::Suggest(connection) => {
                    super::draft::suggest(state, &mut turn, text, &connection).await
                }
                Decision::Keep => {
                    keep(state, text, false);
                    Reply::Silent
                }
            };
            let asked = last_user_turn(state);
            track(state, inbound.message_id, asked);
            reply
        }
        InboundKind::Deleted(ids) => {
            if super::draft::answers_one_of(state, ids) {
                super::draft::close(state, Closed::Deleted).await;
            }
            forget(state, ids);
            Reply::Silent
        }
        InboundKind::Edited(text) => {
            if !edit(state, inbound.message_id, text) {
                turn.change = Change::Keep;
            }
            Reply::Silent
        }
        InboundKind::Command(Command::ForgetFan(FanArg::Fan(fan))) => {
            forget_fan(state, &mut turn, *fan).await
        }
        // Nothing else comes from a fan chat; it is not answered.
        _ => {
            turn.change = Change::Keep;
            Reply::Silent
        }
    };
    state.counters.answered += 1;
    let sent = turn::conclude(state, turn).await;
    super::draft::shown(state, sent.as_deref(), inbound.update_id).await;
    super::summary::after_turn(state, inbound.update_id);
    turn::finish(state, inbound.update_id, earlier)
}

/// What a fan's message admitted for an LLM call gets, decided when it is
/// answered (the creator may have changed the mode since it arrived).
enum Decision {
    /// `auto`, with the reply right, within `business.active_hours`: the
    /// bot answers the fan itself.
    Answer,
    /// `draft`, or `auto` outside the active hours or without the reply
    /// right: a suggestion in the control room.
    Suggest(Connection),
    /// `off`, paused, disabled or gone: context only.
    Keep,
}

async fn decide(state: &SessionState, inbound: &Inbound) -> Decision {
    let Some(id) = state.key.connection() else {
        return Decision::Keep;
    };
    let Some(connection) = state.deps.directory.business().get(id).await else {
        return Decision::Keep;
    };
    let at = inbound
        .sent_at
        .unwrap_or_else(|| (crate::clock::unix_millis() / 1000) as i64);
    // Validated at start; an invalid window cannot be here.
    let window = state.deps.config.business.active_window().ok().flatten();
    let in_hours = window.is_none_or(|hours| hours.contains(at));
    match connection.mode_for(state.key.chat().0) {
        BusinessMode::Off => Decision::Keep,
        BusinessMode::Auto if connection.can_reply && in_hours => Decision::Answer,
        BusinessMode::Auto | BusinessMode::Draft => Decision::Suggest(connection),
    }
}

/// A message joins the history without an answer; the turn it became.
fn keep(state: &mut SessionState, text: &str, by_owner: bool) -> Option<Arc<str>> {
    let role = if by_owner {
        Role::Assistant
    } else {
        Role::User
    };
    let kept = match crate::input::validate(text, state.deps.config.input.max_chars) {
        Ok(cleaned) => {
            // A history never starts with an assistant turn (it would be
            // evicted at once); the creator often writes first, so a fixed
            // marker stands for the fan's side before it.
            if by_owner && state.history.is_empty() {
                state.history.push(Role::User, EARLIER.into());
            }
            let content: Arc<str> = cleaned.as_str().into();
            state.history.push(role, Arc::clone(&content));
            Some(content)
        }
        Err(_) => {
            tracing::debug!("context message not kept (empty or too long)");
            None
        }
    };
    if by_owner {
        state.signals.owner_taken.fetch_add(1, Ordering::SeqCst);
    }
    tracing::debug!(by_owner, "fan chat message kept as context");
    kept
}

/// How many recent messages of a fan chat a deletion can find.
pub(super) const TRACKED: usize = 64;

/// Notes that the Telegram message `message_id` became the history turn
/// `content` (kept by allocation, so an equal text elsewhere is not
/// confused with it).
pub(super) fn track(
    state: &mut SessionState,
    message_id: Option<MessageId>,
    content: Option<Arc<str>>,
) {
    let (Some(message_id), Some(content)) = (message_id, content) else {
        return;
    };
    if state.fan_messages.len() == TRACKED {
        state.fan_messages.pop_front();
    }
    state.fan_messages.push_back((message_id, content));
}

/// What the fan chat keeps besides its history, as stored.
pub(super) fn to_record(state: &SessionState) -> FanRecord {
    FanRecord {
        tracked: state
            .fan_messages
            .iter()
            .map(|(id, content)| (id.0, text_hash(content)))
            .collect(),
        draft: state.draft.clone(),
        draft_seq: state.draft_seq,
    }
}

/// Takes back what [`to_record`] stored: each tracked message is matched to
/// the newest history turn with its text that no later message took (a
/// turn that left the history since matches nothing and is dropped).
pub(super) fn restore(state: &mut SessionState, fan: FanRecord) {
    let turns: Vec<Arc<str>> = state
        .history
        .messages()
        .map(|m| Arc::clone(&m.content))
        .collect();
    state.fan_messages = rematch(&turns, fan.tracked);
    state.draft = fan.draft;
    state.draft_seq = fan.draft_seq;
}

/// The matching of [`restore`]: each tracked `(message id, text hash)`,
/// newest first, takes the newest turn of `turns` with that text not taken
/// yet.
fn rematch(
    turns: &[Arc<str>],
    tracked: Vec<(i32, u64)>,
) -> std::collections::VecDeque<(MessageId, Arc<str>)> {
    let mut taken = vec![false; turns.len()];
    let mut restored = std::collections::VecDeque::with_capacity(tracked.len());
    for (id, hash) in tracked.into_iter().rev() {
        let found = (0..turns.len())
            .rev()
            .find(|&i| !taken[i] && text_hash(&turns[i]) == hash);
        if let Some(i) = found {
            taken[i] = true;
            restored.push_front((MessageId(id), Arc::clone(&turns[i])));
        }
    }
    restored
}

/// The newest user turn of the history (an answered or kept fan text).
fn last_user_turn(state: &SessionState) -> Option<Arc<str>> {
    state
        .history
        .messages()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| Arc::clone(&m.content))
}

/// Deleted messages leave the history (those this session still tracks).
fn forget(state: &mut SessionState, ids: &[MessageId]) {
    let mut removed = 0usize;
    for id in ids {
        while let Some(index) = state
            .fan_messages
            .iter()
            .position(|(tracked, _)| tracked == id)
        {
            if let Some((_, content)) = state.fan_messages.remove(index)
                && state.history.remove(&content)
            {
                removed += 1;
            }
        }
    }
    tracing::info!(deleted = ids.len(), removed, "fan chat messages deleted");
}

/// An edited message (the fan's or the creator's) replaces the history
/// turn it became, in place and with its role, and stays tracked (a later
/// deletion or edit still finds it); never answered. Whether the history
/// changed: an untracked message (older than [`TRACKED`], or one the
/// history no longer has) or an empty or too long new text changes
/// nothing.
fn edit(state: &mut SessionState, message_id: Option<MessageId>, text: &str) -> bool {
    let Some(slot) = message_id.and_then(|id| {
        state
            .fan_messages
            .iter_mut()
            .rev()
            .find(|(tracked, _)| *tracked == id)
    }) else {
        tracing::debug!("edit of an untracked fan chat message ignored");
        return false;
    };
    let Ok(cleaned) = crate::input::validate(text, state.deps.config.input.max_chars) else {
        tracing::debug!("edited fan chat message not kept (empty or too long)");
        return false;
    };
    let now: Arc<str> = cleaned.as_str().into();
    if !state.history.replace(&slot.1, Arc::clone(&now)) {
        tracing::debug!("edited fan chat message no longer in the history");
        return false;
    }
    slot.1 = now;
    tracing::info!("fan chat message edited in the history");
    true
}

/// `/forget FAN` from the creator's control room, routed here by the front
/// (`front::route_forget_fan`): the conversation's history, summary,
/// tracked messages and the suggestion waiting for the creator go (its
/// spend and the suggestions' numbering stay), and the business actor
/// forgets the fan (their place in `/fans`, their own mode and pause). The
/// confirmation goes to the control room. Only the connection's owner can
/// have sent it, for this very fan; anything else is ignored.
async fn forget_fan(state: &mut SessionState, turn: &mut Turn<'_>, fan: i64) -> Reply {
    turn.change = Change::Keep;
    let Some(id) = state.key.connection().map(str::to_owned) else {
        return Reply::Silent;
    };
    let id = id.as_str();
    let deps = Arc::clone(&state.deps);
    let business = deps.directory.business();
    let Some(connection) = business.get(id).await else {
        tracing::info!(connection = %id, "connection gone; fan not forgotten");
        return Reply::Silent;
    };
    let owner = turn
        .inbound
        .user_id
        .and_then(|user| i64::try_from(user).ok());
    if owner != Some(connection.owner_user_id) || fan != state.key.chat().0 {
        tracing::warn!(connection = %id, "/forget of a fan not from the creator; ignored");
        return Reply::Silent;
    }
    turn.deliver_to = Some(SessionKey::of_chat(ChatId(connection.owner_chat_id)));
    if let Err(error) = business.forget_fan(id, fan).await {
        tracing::warn!(connection = %id, %error, "fan not forgotten");
        return Reply::Plain(turn.texts.biz_unavailable.clone());
    }
    // The record is rewritten empty rather than deleted: the suggestions'
    // numbering (`draft_seq`) must go on, or a tap on a suggestion shown
    // before could be taken for a new one with the same number; its spend
    // stays as `/forget` keeps it. (A deletion would also drop the bot's own
    // chat of the same id's quarantined updates: they are keyed by chat id.)
    state.history.clear();
    super::summary::clear(state);
    state.settings = crate::store::record::ChatSettings::default();
    state.fan_messages.clear();
    // An open suggestion loses its buttons and says why.
    super::draft::close(state, Closed::Forgotten).await;
    turn.change = Change::Update;
    tracing::info!(connection = %id, fan, "fan chat forgotten");
    Reply::Plain(fill(
        &turn.texts.biz_forgot_fan,
        &[("fan", &fan.to_string())],
    ))
}

/// The creator wrote after the message being answered.
fn creator_wrote(state: &SessionState) -> bool {
    state.signals.owner_arrived.load(Ordering::SeqCst)
        > state.signals.owner_taken.load(Ordering::SeqCst)
}

/// The fan's text answered by the LLM as the creator; [`Reply::Silent`]
/// (the text kept as context) when the answer is no longer wanted.
async fn answer(state: &mut SessionState, turn: &mut Turn<'_>, text: &str) -> Reply {
    let wait = state
        .deps
        .config
        .business
        .auto_after
        .saturating_sub(turn.inbound.received_at.elapsed());
    if !wait.is_zero() {
        let spoke = state.signals.owner_spoke.notified();
        tokio::pin!(spoke);
        spoke.as_mut().enable();
        if !creator_wrote(state) {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut spoke => {}
            }
        }
    }
    if creator_wrote(state) {
        tracing::info!("the creator answered the fan; automatic answer dropped");
        metrics::counter!(crate::telemetry::families::BUSINESS_AUTO, "outcome" => "creator_answered")
            .increment(1);
        keep(state, text, false);
        return Reply::Silent;
    }
    if !may_send(state).await {
        keep(state, text, false);
        return Reply::Silent;
    }
    let persona = persona(state).await;
    let chosen = std::mem::replace(&mut state.settings.persona, persona);
    let reply = super::on_text(state, turn, text).await;
    state.settings.persona = chosen;
    match reply {
        Reply::Markdown(answer) if may_send(state).await => {
            metrics::counter!(crate::telemetry::families::BUSINESS_AUTO, "outcome" => "answered")
                .increment(1);
            tracing::info!("fan answered as the creator");
            Reply::Markdown(answer)
        }
        Reply::Markdown(_) => Reply::Silent,
        _ => {
            tracing::info!("no answer for the fan (refused or failed); nothing sent");
            metrics::counter!(crate::telemetry::families::BUSINESS_AUTO, "outcome" => "not_answered")
                .increment(1);
            Reply::Silent
        }
    }
}

/// Whether the connection still answers this fan automatically: known,
/// enabled, not paused, `auto` for the fan, with the reply right. Fails
/// closed.
async fn may_send(state: &SessionState) -> bool {
    let Some(id) = state.key.connection() else {
        return false;
    };
    let fan = state.key.chat().0;
    let Some(connection) = state.deps.directory.business().get(id).await else {
        tracing::info!(connection = %id, "connection gone; automatic answer dropped");
        return false;
    };
    let auto = connection.mode_for(fan) == BusinessMode::Auto && connection.can_reply;
    if !auto {
        tracing::info!(connection = %id, "connection no longer answers automatically; answer dropped");
        metrics::counter!(crate::telemetry::families::BUSINESS_AUTO, "outcome" => "stopped")
            .increment(1);
    }
    auto
}

/// The persona fan answers are written in: the connection's, else
/// `business.persona`, else (empty) the default.
pub(super) async fn persona(state: &SessionState) -> Option<String> {
    let own = match state.key.connection() {
        Some(id) => state
            .deps
            .directory
            .business()
            .get(id)
            .await
            .and_then(|connection| connection.persona),
        None => None,
    };
    own.or_else(|| Some(state.deps.config.business.persona.clone()))
        .filter(|name| !name.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_matches_equal_texts_newest_first_and_drops_evicted_turns() {
        // History after a restart: "ok" twice (the fan's, then the
        // creator's), "hi" once; the first "hi" (message 1) was evicted.
        let turns: Vec<Arc<str>> = ["ok", "fine", "ok", "hi"]
            .into_iter()
            .map(Arc::from)
            .collect();
        let tracked = vec![
            (1, text_hash("hi")),
            (2, text_hash("ok")),
            (3, text_hash("fine")),
            (4, text_hash("ok")),
            (5, text_hash("hi")),
        ];
        let restored = rematch(&turns, tracked);
        let ids: Vec<i32> = restored.iter().map(|(id, _)| id.0).collect();
        assert_eq!(ids, [2, 3, 4, 5], "message 1's turn left the history");
        // Equal texts: each message has its own turn (by allocation).
        assert!(Arc::ptr_eq(&restored[0].1, &turns[0]));
        assert!(Arc::ptr_eq(&restored[2].1, &turns[2]));
        assert!(Arc::ptr_eq(&restored[3].1, &turns[3]));
        // A tracked message whose text the history does not have is dropped.
        assert!(rematch(&turns, vec![(9, text_hash("gone"))]).is_empty());
    }
}
