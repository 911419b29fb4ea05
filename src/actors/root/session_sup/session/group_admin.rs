//! In groups, the commands that change what the whole group shares —
//! `/forget`, `/reset`, `/model <name>` and `/persona <name>` (or
//! `custom`, `default`) — need the sender to be a group administrator
//! (creator or administrator, asked of Telegram with `getChatMember`) or a
//! bot admin (`admin_ids`). Private chats are not checked.
//!
//! The answer is cached per session for `telegram.admin_status_cache`. The
//! call runs in the group's own session turn, bounded by
//! `telegram.admin_check_timeout`: other chats never wait for it. A failed
//! or timed-out call refuses (fails closed) and is not cached.

use tokio::time::Instant;

use super::SessionState;
use super::turn::{Reply, Turn};
use crate::telegram::TelegramError;
use crate::telegram::command::Command;
use crate::telegram::inbound::{Inbound, InboundKind};
use crate::telemetry::{SecurityKind, security_event};

/// A group member's admin status, as Telegram said it at `checked_at`.
#[derive(Debug, Clone, Copy)]
pub(super) struct CachedStatus {
    user_id: u64,
    is_admin: bool,
    checked_at: Instant,
}

/// Whether `inbound` changes the whole group's conversation or settings.
fn changes_the_group(inbound: &Inbound) -> bool {
    if inbound.key.is_user() {
        return false;
    }
    match &inbound.kind {
        InboundKind::Command(command) => command.changes_the_group(),
        InboundKind::Media(media) => media
            .command
            .as_ref()
            .is_some_and(Command::changes_the_group),
        // A picker's press is checked as the command it stands for
        // (`buttons.rs`).
        InboundKind::Text(_)
        | InboundKind::NonText
        | InboundKind::Edited(_)
        | InboundKind::Callback(_)
        | InboundKind::Context { .. }
        | InboundKind::Deleted(_)
        | InboundKind::CreatorReply { .. } => false,
    }
}

/// The refusal to send when the sender may not run this command here;
/// `None` when they may (or it needs no rights).
pub(super) async fn refusal(state: &mut SessionState, turn: &Turn<'_>) -> Option<Reply> {
    let inbound = turn.inbound;
    if !changes_the_group(inbound) || state.deps.config.is_admin(inbound.user_id) {
        return None;
    }
    let texts = &turn.texts;
    // Telegram names no sender (an anonymous admin posting as the group, or
    // a channel): no one to check, so no rights.
    let Some(user_id) = inbound.user_id else {
        security_event(SecurityKind::AdminCommandDenied);
        return Some(Reply::Plain(texts.group_admins_only.clone()));
    };
    match is_group_admin(state, user_id).await {
        Ok(true) => None,
        Ok(false) => {
            security_event(SecurityKind::AdminCommandDenied);
            tracing::info!(user_id, "group command refused: not a group admin");
            Some(Reply::Plain(texts.group_admins_only.clone()))
        }
        Err(error) => {
            tracing::warn!(class = error.class(), %error, "cannot check group admin status");
            Some(Reply::Plain(texts.admin_check_failed.clone()))
        }
    }
}

/// The sender's status, from the cache or from Telegram.
pub(super) async fn is_group_admin(
    state: &mut SessionState,
    user_id: u64,
) -> Result<bool, TelegramError> {
    let ttl = state.deps.config.telegram.admin_status_cache;
    let now = Instant::now();
    state
        .admin_statuses
        .retain(|cached| now.duration_since(cached.checked_at) < ttl);
    if let Some(cached) = state.admin_statuses.iter().find(|c| c.user_id == user_id) {
        return Ok(cached.is_admin);
    }
    let timeout = state.deps.config.telegram.admin_check_timeout;
    let is_admin = tokio::time::timeout(
        timeout,
        state
            .deps
            .transport
            .is_chat_admin(state.key.chat(), user_id),
    )
    .await
    .map_err(|_| TelegramError::Timeout)??;
    if !ttl.is_zero() {
        state.admin_statuses.push(CachedStatus {
            user_id,
            is_admin,
            checked_at: now,
        });
    }
    Ok(is_admin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telegram::command::Command;
    use crate::telegram::inbound::ChatId;

    fn inbound(chat_id: i64, name: &str, args: &str) -> Inbound {
        Inbound {
            update_id: 1,
            key: ChatId(chat_id).into(),
            user_id: Some(5),
            language_code: None,
            kind: InboundKind::Command(Command::from_words(name, args.trim(), &[])),
            received_at: std::time::Instant::now(),
            sent_at: None,
            refused: None,
            speaker: None,
            message_id: None,
            reply_to: None,
        }
    }

    #[test]
    fn only_group_wide_changes_in_groups_are_checked() {
        assert!(changes_the_group(&inbound(-100_200, "forget", "")));
        assert!(changes_the_group(&inbound(-100_200, "reset", "")));
        assert!(changes_the_group(&inbound(-42, "model", "m")));
        assert!(!changes_the_group(&inbound(-100_200, "model", " ")));
        assert!(!changes_the_group(&inbound(-100_200, "help", "")));
        assert!(!changes_the_group(&inbound(42, "forget", "")));
        assert!(!changes_the_group(&inbound(42, "model", "m")));
    }
}
