//! Whether an update is answered now: the ingress's rate-limit verdict
//! (bans, the allowlist, per-user limits), and for a chat the store has not
//! seen yet, the new-chat admission limit, which delays its first answer
//! (open to `/cancel`) and refuses only when its queue is full.

use super::SessionState;
use super::turn::{Reply, Turn};
use crate::actors::root::limiter::Slot;
use crate::telegram::inbound::RefusalReason;
use crate::telemetry::{SecurityKind, security_event};
use crate::texts::{fill, retry_in_seconds};

/// The reply when the update is not to be answered now: its sender is over
/// a rate limit, or the chat is new and new chats are being admitted
/// slowly. `None` when it is to be answered.
pub(super) async fn refusal(state: &mut SessionState, turn: &mut Turn<'_>) -> Option<Reply> {
    let texts = &turn.texts;
    if let Some(refused) = turn.inbound.refused {
        tracing::info!(reason = ?refused.reason, notify = refused.notify, "refused");
        // One notice per window; later refused updates get no reply at all.
        if !refused.notify {
            return Some(Reply::Silent);
        }
        return Some(Reply::Plain(match refused.reason {
            RefusalReason::RateLimited { retry_in } => fill(
                &texts.slow_down,
                &[("seconds", &retry_in_seconds(retry_in))],
            ),
            RefusalReason::Banned => texts.banned.clone(),
            RefusalReason::NotAllowed => texts.private_bot.clone(),
        }));
    }
    if !state.is_new {
        return None;
    }
    // Bans and the allowlist were checked on arrival; admission only ever
    // delays, and refuses only when its queue is full. A limiter that is
    // away admits.
    match state.deps.directory.limiter().admit_new_chat().await {
        Slot::After(wait) => {
            if !wait.is_zero() {
                security_event(SecurityKind::NewChatFlood);
                tracing::info!(
                    wait_ms = wait.as_millis() as u64,
                    "new chat waits for admission"
                );
                // This chat's own session waits; /cancel ends the wait.
                let cancelled = state.signals.cancel.notified();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = cancelled => {
                        tracing::info!("admission wait cancelled");
                        turn.cancelled = true;
                        return Some(Reply::Plain(turn.texts.cancelled.clone()));
                    }
                }
            }
            state.is_new = false;
            None
        }
        Slot::Full { retry_in } => {
            security_event(SecurityKind::NewChatFlood);
            Some(Reply::Plain(fill(
                &texts.new_users_busy,
                &[("seconds", &retry_in_seconds(retry_in))],
            )))
        }
    }
}
