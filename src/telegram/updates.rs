//! Reading updates one at a time, so that one Telegram sends and no client
//! can read does not cost every update after it.
//!
//! teloxide reads a getUpdates answer as a whole (its response envelope is
//! an untagged enum, so serde buffers every string of the batch before any
//! update is looked at): a single update holding a lone UTF-16 surrogate
//! (`\ud83d`, which Telegram has sent for cut emoji) fails the whole call,
//! the offset never moves and no later update of any user is answered.
//! teloxide-core once had a fault-tolerant getUpdates for exactly this
//! (`GetUpdatesFaultTolerant`); it was removed in 0.4. [`get_updates`]
//! therefore calls getUpdates itself through the bot's own HTTP client and
//! keeps each update as raw JSON until [`read_update`] parses it alone.
//!
//! An update that cannot be read, but whose `update_id` can, is skipped:
//! logged with its id (never its content), counted in
//! `llmgram_updates_skipped_total{reason}`, and confirmed with the rest of
//! its batch. The webhook uses [`read_update`] for each posted body.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use teloxide::types::{AllowedUpdate, ResponseParameters, Update, UpdateKind};
use teloxide::{ApiError, Bot, RequestError};

/// The update kinds the bot asks Telegram for (`allowed_updates` of
/// getUpdates and setWebhook): exactly those it handles. Messages, their
/// edits and button presses always; with `business.enabled`, the Business
/// connections and the fan chats' messages, their edits and deletions.
pub fn allowed_updates(config: &crate::config::Config) -> Vec<AllowedUpdate> {
    let mut kinds = vec![
        AllowedUpdate::Message,
        AllowedUpdate::EditedMessage,
        AllowedUpdate::CallbackQuery,
    ];
    if config.business.enabled {
        kinds.extend([
            AllowedUpdate::BusinessConnection,
            AllowedUpdate::BusinessMessage,
            AllowedUpdate::EditedBusinessMessage,
            AllowedUpdate::DeletedBusinessMessages,
        ]);
    }
    kinds
}

/// Why an update was skipped, the `reason` label of
/// `llmgram_updates_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Its JSON could not be turned into an update (a lone surrogate, a
    /// field of the wrong type).
    Unparseable,
    /// A kind this build does not know, or a known kind whose content it
    /// cannot read.
    UnknownKind,
}

impl SkipReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unparseable => "unparseable",
            Self::UnknownKind => "unknown_kind",
        }
    }
}

/// An update read on its own.
#[derive(Debug)]
pub struct Read {
    /// Its `update_id`, which confirms it whether or not it could be read.
    pub id: u32,
    /// The update; `None` when it was skipped (already logged and counted).
    pub update: Option<Update>,
}

/// JSON without a numeric `update_id`: not an update at all.
#[derive(Debug, thiserror::Error)]
#[error("not an update (JSON {category:?} error at line {line} column {column})")]
pub struct NotAnUpdate {
    category: serde_json::error::Category,
    line: usize,
    column: usize,
}

impl From<&serde_json::Error> for NotAnUpdate {
    fn from(error: &serde_json::Error) -> Self {
        Self {
            category: error.classify(),
            line: error.line(),
            column: error.column(),
        }
    }
}

/// Reads one update from its JSON. An update whose id can be read but whose
/// content cannot is skipped: logged with its id and counted, never failed.
pub fn read_update(json: &str) -> Result<Read, NotAnUpdate> {
    /// Only the id, from an update whose content cannot be read; serde
    /// skips the other fields without decoding their strings.
    #[derive(Deserialize)]
    struct IdOnly {
        update_id: u32,
    }

    match serde_json::from_str::<Update>(json) {
        // teloxide 0.17 cannot read `deleted_business_messages` (it wants
        // `message_ids` as objects, Telegram sends integers): its content
        // is kept for `Inbound::from_update` to read itself.
        Ok(mut update) if let Some(deleted) = deleted_business_messages(&update.kind, json) => {
            update.kind = UpdateKind::Error(deleted);
            Ok(Read {
                id: update.id.0,
                update: Some(update),
            })
        }
        Ok(update) if matches!(update.kind, UpdateKind::Error(_)) => {
            skipped(update.id.0, SkipReason::UnknownKind, None);
            Ok(Read {
                id: update.id.0,
                update: None,
            })
        }
        Ok(update) => Ok(Read {
            id: update.id.0,
            update: Some(update),
        }),
        // serde would also read `IdOnly` from an array such as `[7]`.
        Err(error) if !json.trim_start().starts_with('{') => Err(NotAnUpdate::from(&error)),
        Err(error) => {
            let id = serde_json::from_str::<IdOnly>(json)
                .map_err(|_| NotAnUpdate::from(&error))?
                .update_id;
            skipped(id, SkipReason::Unparseable, Some(&error));
            Ok(Read { id, update: None })
        }
    }
}

/// The `deleted_business_messages` update teloxide could not parse
/// (`kind` is its [`UpdateKind::Error`]), read again from `json` as
/// `{"deleted_business_messages": …}` for `Inbound::from_update`; `None`
/// for any other update.
fn deleted_business_messages(kind: &UpdateKind, json: &str) -> Option<serde_json::Value> {
    if !matches!(kind, UpdateKind::Error(_)) {
        return None;
    }
    #[derive(Deserialize)]
    struct Deleted {
        deleted_business_messages: Option<serde_json::Value>,
    }
    let deleted = serde_json::from_str::<Deleted>(json)
        .ok()?
        .deleted_business_messages?;
    Some(serde_json::json!({ "deleted_business_messages": deleted }))
}

/// Logs and counts a skipped update. The error's position and category
/// only: its message may quote the update's text.
fn skipped(update_id: u32, reason: SkipReason, error: Option<&serde_json::Error>) {
    metrics::counter!(crate::telemetry::families::UPDATES_SKIPPED, "reason" => reason.label())
        .increment(1);
    match error {
        Some(error) => tracing::warn!(
            update_id,
            reason = reason.label(),
            category = ?error.classify(),
            line = error.line(),
            column = error.column(),
            "update cannot be read; skipped"
        ),
        None => tracing::warn!(
            update_id,
            reason = reason.label(),
            "update of a kind this build cannot read; skipped"
        ),
    }
}

/// One getUpdates answer, read update by update.
#[derive(Debug, Default)]
pub struct Batch {
    /// The updates that could be read, in Telegram's order.
    pub updates: Vec<Update>,
    /// Items in the answer, read or not.
    pub received: usize,
    /// The offset that confirms every update of the batch; `None` for an
    /// empty batch.
    pub next_offset: Option<i32>,
}

/// getUpdates's parameters, as teloxide would send them.
#[derive(Serialize)]
struct GetUpdates<'a> {
    offset: i32,
    limit: u8,
    timeout: u32,
    allowed_updates: &'a [AllowedUpdate],
}

/// The Bot API's answer with the result left unparsed. Not untagged, so
/// raw values survive.
#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Option<Vec<Box<RawValue>>>,
    #[serde(default)]
    description: Option<ApiError>,
    #[serde(default)]
    parameters: Option<ResponseParameters>,
}

/// Calls getUpdates with the bot's client, token and API URL, and reads each
/// update on its own ([`read_update`]). Failures are teloxide's
/// [`RequestError`]s, classified as for any other call.
pub async fn get_updates(
    bot: &Bot,
    offset: i32,
    limit: u8,
    timeout: Duration,
    allowed_updates: &[AllowedUpdate],
) -> Result<Batch, RequestError> {
    let mut url = bot.api_url();
    // teloxide checks at start that the API URL can be a base (config
    // validation does too); this mirrors its method URL.
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.push(&format!("bot{}", bot.token()));
        segments.push("getUpdates");
    }
    let params = GetUpdates {
        offset,
        limit,
        timeout: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
        allowed_updates,
    };
    let text = bot
        .client()
        .post(url)
        .json(&params)
        .send()
        .await?
        .text()
        .await?;
    let envelope: Envelope =
        serde_json::from_str(&text).map_err(|source| RequestError::InvalidJson {
            source: Arc::new(source),
            raw: "getUpdates answer".into(),
        })?;
    if !envelope.ok {
        return Err(match envelope.parameters {
            Some(ResponseParameters::RetryAfter(after)) => RequestError::RetryAfter(after),
            Some(ResponseParameters::MigrateToChatId(chat)) => RequestError::MigrateToChatId(chat),
            None => RequestError::Api(
                envelope
                    .description
                    .unwrap_or_else(|| ApiError::Unknown("no description".into())),
            ),
        });
    }
    Ok(read_batch(envelope.result.unwrap_or_default()))
}

/// Reads each raw update of a batch; the offset covers every item whose id
/// could be read.
fn read_batch(raw: Vec<Box<RawValue>>) -> Batch {
    let mut batch = Batch {
        received: raw.len(),
        ..Batch::default()
    };
    let mut last_id = None;
    for item in raw {
        match read_update(item.get()) {
            Ok(read) => {
                last_id = last_id.max(Some(read.id));
                batch.updates.extend(read.update);
            }
            Err(error) => {
                metrics::counter!(crate::telemetry::families::UPDATES_SKIPPED, "reason" => "not_an_update")
                    .increment(1);
                tracing::warn!(%error, "getUpdates returned an item without an update id; skipped");
            }
        }
    }
    // Update ids fit in i32 (Telegram's offset type) for the lifetime of a bot.
    batch.next_offset = last_id.map(|id| i32::try_from(id).unwrap_or(i32::MAX).saturating_add(1));
    batch
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const BROKEN: &str = r#"{"update_id":7,"message":{"message_id":1,"date":1700000000,"chat":{"id":5,"type":"private","first_name":"U"},"text":"cut \ud83d emoji"}}"#;
    const GOOD: &str = r#"{"update_id":8,"message":{"message_id":2,"date":1700000000,"chat":{"id":5,"type":"private","first_name":"U"},"text":"fine"}}"#;

    #[test]
    fn an_unreadable_update_keeps_its_id() {
        assert!(serde_json::from_str::<Update>(BROKEN).is_err());
        let read = read_update(BROKEN).unwrap();
        assert_eq!(read.id, 7);
        assert!(read.update.is_none());
        let read = read_update(r#"{"update_id":9,"new_kind":{"a":1}}"#).unwrap();
        assert_eq!((read.id, read.update.is_none()), (9, true));
        let read = read_update(GOOD).unwrap();
        assert_eq!(read.id, 8);
        assert!(read.update.is_some());
    }

    #[test]
    fn json_without_an_id_is_not_an_update() {
        for junk in [
            "",
            "nope",
            "[1]",
            r#"{"message":{}}"#,
            r#"{"update_id":"7"}"#,
        ] {
            assert!(read_update(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn a_batch_is_read_item_by_item_and_confirmed_whole() {
        let answer =
            format!(r#"{{"ok":true,"result":[{GOOD},{BROKEN},12,{{"update_id":10,"x":{{}}}}]}}"#);
        let envelope: Envelope = serde_json::from_str(&answer).unwrap();
        let batch = read_batch(envelope.result.unwrap());
        assert_eq!(batch.received, 4);
        assert_eq!(batch.updates.len(), 1);
        assert_eq!(batch.updates[0].id.0, 8);
        assert_eq!(batch.next_offset, Some(11));
        assert_eq!(read_batch(Vec::new()).next_offset, None);
    }

    #[test]
    fn errors_are_classified_as_teloxide_does() {
        let envelope: Envelope =
            serde_json::from_str(r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#)
                .unwrap();
        assert_eq!(envelope.description, Some(ApiError::InvalidToken));
        let envelope: Envelope = serde_json::from_str(
            r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3","parameters":{"retry_after":3}}"#,
        )
        .unwrap();
        assert!(matches!(
            envelope.parameters,
            Some(ResponseParameters::RetryAfter(_))
        ));
    }
}
