//! Stored records and their schema versions.
//!
//! Every stored value starts with one byte naming its schema version, then the
//! bincode encoding of that version's struct. The structs below are the
//! current versions. When a schema changes, the old struct is frozen under a
//! `v<N>` module with a conversion to the new one, the version constant goes
//! up, and `decode_*` keeps accepting every older version: stored data is
//! never stranded. The fixture test decodes bytes written by version 1.

use serde::{Deserialize, Serialize};

use super::codec::{self, CodecError};
use crate::config::CommandConfig;
use crate::telegram::command::Command;
use crate::telegram::inbound::{
    Attachment, AttachmentKind, ChatId, FileRef, Inbound, InboundKind, MediaMessage, MessageId,
    Press, Quoted, SessionKey, ThreadId,
};

/// Schema version of [`ChatRecord`] written by this build. Version 2 added
/// the chat's chosen model and its daily token usage; version 3 replaced the
/// newest applied update id with the set of recently answered ones
/// (Telegram's update ids are not monotonic); version 4 added the files of
/// a history message ([`StoredFile`]) and the one-time "images cannot be
/// seen" notice; version 5 added the chat's persona and own system prompt,
/// the month's usage and spend, and the summary of turns that left the
/// history; version 6 added when the conversation was last active
/// ([`ChatCounters::last_turn_at`]); version 7 added what a Telegram
/// Business fan chat keeps besides its history ([`FanRecord`]: the
/// messages a deletion can find, the suggestion waiting for the creator).
/// Older records are read through [`v1`], [`v2`], [`v3`], [`v4`], [`v5`]
/// and [`v6`] and migrated.
pub const CHAT_RECORD_VERSION: u8 = 7;
/// Schema version of [`UpdateEntry`] written by this build. Version 2 added
/// the admission sequence number of a pending update; version 3 added media
/// ([`StoredKind::Media`], a new last variant, so version 2 entries read as
/// they are); version 4 added the message's id and what it replies to
/// ([`StoredQuote`]); version 5 added edited messages
/// ([`StoredKind::Edited`], a new last variant, so version 4 entries read
/// as they are); version 6 added the forum topic of the message
/// ([`StoredUpdate::thread_id`]), so a topic message admitted before a
/// crash is replayed to its topic, and button presses
/// ([`StoredKind::Callback`], a new last variant); version 7 added the
/// Business connection of a fan chat's message ([`StoredUpdate::business`])
/// and context-only messages ([`StoredKind::Context`]); version 8 added the
/// creator's own reply to a suggestion ([`StoredKind::CreatorReply`], a new
/// last variant, so version 7 entries read as they are). Version 1 entries
/// are read through [`v1`], versions 2 and 3 through [`entry_v3`], 4 and 5
/// through [`entry_v5`], 6 through [`entry_v6`].
pub const UPDATE_ENTRY_VERSION: u8 = 8;

/// How many answered update ids a chat record keeps (besides every id of its
/// latest turn): enough to recognise any redelivery the restart and replay
/// paths can produce, which is at most a few turns back.
pub const RECENT_UPDATES: usize = 64;

/// Everything stored about one chat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRecord {
    /// The conversation, oldest first (already within the history bounds).
    pub history: Vec<StoredMessage>,
    /// Per-chat settings.
    pub settings: ChatSettings,
    /// Per-chat counters.
    pub counters: ChatCounters,
    /// The chat's most recently answered update ids, oldest first (at most
    /// [`RECENT_UPDATES`] plus the latest turn's). An update delivered again
    /// is recognised by being in this set, never by comparing ids: Telegram
    /// picks a random next id after a week without updates.
    pub recent_updates: Vec<u32>,
    /// What the turns that left the history said, written by the LLM;
    /// `None` until a turn leaves the history (or after `/reset`).
    pub summary: Option<String>,
    /// A Telegram Business fan chat's own state (version 7); `None` for
    /// every other conversation.
    pub fan: Option<FanRecord>,
}

/// What a Telegram Business fan chat keeps besides its history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanRecord {
    /// The chat's recent Telegram messages and the history turn each became
    /// (its message id and a hash of the turn's text: [`text_hash`]),
    /// oldest first, bounded: a deletion finds its turns with these, also
    /// after a restart.
    pub tracked: Vec<(i32, u64)>,
    /// The suggested reply waiting for the creator's tap (`draft` mode).
    pub draft: Option<StoredDraft>,
    /// The number of the newest suggestion made (each new one and each
    /// 🔄 Another takes the next): a tap names the one it was shown with,
    /// so a tap on a replaced one is recognised.
    pub draft_seq: u32,
}

/// A suggested reply to a fan, shown to the creator in their control room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDraft {
    /// Its number ([`FanRecord::draft_seq`] when it was made).
    pub seq: u32,
    /// The suggestion (Markdown, as the LLM wrote it); empty when writing
    /// it failed (the creator may ask for another, edit or skip).
    pub text: String,
    /// The fan's message it answers, cut for the control room.
    pub fan_text: String,
    /// The fan's first name, as the control room shows it.
    pub fan_name: String,
    /// The fan's message it answers (its id in the fan chat).
    pub fan_message: Option<i32>,
    /// The control-room message showing it, once known.
    pub shown_in: Option<i32>,
    /// The creator tapped ✏️ Edit: their next control-room text is the
    /// reply.
    pub editing: bool,
}

/// A hash of a history turn's text (FNV-1a, stable across builds and
/// restarts), as [`FanRecord::tracked`] names turns.
pub fn text_hash(text: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    text.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

impl ChatCounters {
    /// Starts a new count for a new UTC day (`day`, days since the epoch)
    /// and a new calendar month: what was spent before counts no more.
    pub fn roll_over(&mut self, day: u32) {
        if self.usage_day != day {
            self.usage_day = day;
            self.tokens_today = 0;
            self.cost_today = 0;
        }
        let month = crate::clock::month_of_day(day);
        if self.usage_month != month {
            self.usage_month = month;
            self.tokens_month = 0;
            self.cost_month = 0;
        }
    }

    /// Adds `tokens` costing `cost` (millionths of the currency unit) to
    /// the counts of UTC day `day`, rolled over first.
    pub fn spend(&mut self, day: u32, tokens: u64, cost: u64) {
        self.roll_over(day);
        self.tokens_today = self.tokens_today.saturating_add(tokens);
        self.tokens_month = self.tokens_month.saturating_add(tokens);
        self.cost_today = self.cost_today.saturating_add(cost);
        self.cost_month = self.cost_month.saturating_add(cost);
    }
}

impl ChatRecord {
    /// The highest update id in [`ChatRecord::recent_updates`], if any.
    pub fn newest_known_update(&self) -> Option<u32> {
        self.recent_updates.iter().copied().max()
    }
}

/// One history message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Who wrote it.
    pub role: StoredRole,
    /// The text, as later prompts see it: for media, what was read from it
    /// (the caption or a description of a photo, a transcript, a
    /// document's text) with the user's own words.
    pub content: String,
    /// The files the user sent with it: references, never their bytes.
    pub files: Vec<StoredFile>,
}

/// A file a history message came with: Telegram's id for it (enough to
/// fetch it again), never its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// What it was.
    pub kind: StoredFileKind,
    /// Telegram's `file_id`; empty for a console file.
    pub file_id: String,
    /// The sender's file name, for documents and audio files.
    pub name: Option<String>,
}

/// What a [`StoredFile`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredFileKind {
    /// A photo.
    Photo,
    /// A voice note.
    Voice,
    /// An audio file.
    Audio,
    /// A round video message.
    VideoNote,
    /// A document.
    Document,
}

/// Author of a [`StoredMessage`]; the system prompt is never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredRole {
    /// The Telegram user.
    User,
    /// The model.
    Assistant,
}

/// Per-chat settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatSettings {
    /// The user's Telegram `language_code` when last seen.
    pub language_code: Option<String>,
    /// The model this chat chose with `/model` (one of `llm.user_models`).
    pub model: Option<String>,
    /// The chat was told that images cannot be seen with this setup (told
    /// once).
    pub told_no_vision: bool,
    /// The `[[personas]]` entry this chat chose; `None` for the default.
    pub persona: Option<String>,
    /// The chat's own system prompt (`/persona custom …`), cleaned and
    /// bounded; it replaces the persona's while set.
    pub custom_prompt: Option<String>,
}

/// Per-chat counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatCounters {
    /// Updates answered (any reply, including commands and fallbacks).
    pub answered: u64,
    /// LLM calls that failed and got a fallback reply.
    pub llm_failures: u64,
    /// The UTC day (days since the Unix epoch) `tokens_today` counts.
    pub usage_day: u32,
    /// LLM tokens used on `usage_day` (reported by the provider, estimated
    /// when it reports none).
    pub tokens_today: u64,
    /// The UTC month (`year * 12 + month - 1`) `tokens_month` and
    /// `cost_month` count.
    pub usage_month: u32,
    /// LLM tokens used in `usage_month`.
    pub tokens_month: u64,
    /// What `tokens_today` cost at the configured prices (millionths of the
    /// price's currency unit).
    pub cost_today: u64,
    /// What `tokens_month` cost (millionths of the currency unit).
    pub cost_month: u64,
    /// When the conversation last had a message answered (milliseconds
    /// since the Unix epoch; 0 when unknown, as for records before version
    /// 6): `session.new_dialog_after` counts the idle time from it.
    pub last_turn_at: u64,
}

/// Version 1 of the chat record, frozen: the layout bincode wrote, so old
/// records keep decoding. Migrated to the current version on load.
pub mod v1 {
    use serde::Deserialize;

    use super::v3::StoredMessage;

    /// A version 1 chat record.
    #[derive(Debug, Deserialize)]
    pub struct ChatRecord {
        history: Vec<StoredMessage>,
        settings: ChatSettings,
        counters: ChatCounters,
        last_update_id: u32,
    }

    #[derive(Debug, Deserialize)]
    struct ChatSettings {
        language_code: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    struct ChatCounters {
        answered: u64,
        llm_failures: u64,
    }

    impl From<ChatRecord> for super::ChatRecord {
        fn from(old: ChatRecord) -> Self {
            super::v3::ChatRecord {
                history: old.history,
                settings: super::v3::ChatSettings {
                    language_code: old.settings.language_code,
                    model: None,
                },
                counters: super::v4::ChatCounters {
                    answered: old.counters.answered,
                    llm_failures: old.counters.llm_failures,
                    usage_day: 0,
                    tokens_today: 0,
                },
                recent_updates: super::recent_from_last(old.last_update_id),
            }
            .into()
        }
    }

    /// A version 1 update entry, frozen (pending updates had no admission
    /// sequence number).
    #[derive(Debug, Deserialize)]
    pub enum UpdateEntry {
        /// Received and not yet answered.
        Pending(StoredUpdate),
        /// Answered.
        Answered,
    }

    /// A version 1 stored update.
    #[derive(Debug, Deserialize)]
    pub struct StoredUpdate {
        update_id: u32,
        chat_id: i64,
        user_id: Option<u64>,
        language_code: Option<String>,
        kind: super::StoredKind,
    }

    impl From<UpdateEntry> for super::UpdateEntry {
        fn from(old: UpdateEntry) -> Self {
            match old {
                // Admitted before any version 2 entry: they replay first, in
                // id order among themselves (as version 1 replayed them).
                UpdateEntry::Pending(old) => Self::Pending(super::StoredUpdate {
                    update_id: old.update_id,
                    admitted: 0,
                    chat_id: old.chat_id,
                    user_id: old.user_id,
                    language_code: old.language_code,
                    kind: old.kind,
                    message_id: None,
                    reply_to: None,
                    thread_id: None,
                    business: None,
                }),
                UpdateEntry::Answered => Self::Answered,
            }
        }
    }

    /// A version 1 chat usage, frozen: the day's tokens only.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
    pub struct ChatUsage {
        /// The UTC day `tokens_today` counts.
        pub usage_day: u32,
        /// LLM tokens used on `usage_day`.
        pub tokens_today: u64,
    }

    impl From<ChatUsage> for super::ChatUsage {
        fn from(old: ChatUsage) -> Self {
            Self {
                usage_day: old.usage_day,
                tokens_today: old.tokens_today,
                ..Self::default()
            }
        }
    }
}

/// Versions 2 and 3 of the update entry, frozen: a pending update had no
/// message id and no quote. Migrated on load (a replayed version 3 update
/// is answered without its quote and, in a group, not as a reply).
pub mod entry_v3 {
    use serde::{Deserialize, Serialize};

    use super::StoredKind;

    /// A version 2–3 update entry.
    #[derive(Debug, Serialize, Deserialize)]
    pub enum UpdateEntry {
        /// Received and not yet answered.
        Pending(StoredUpdate),
        /// Answered.
        Answered,
    }

    /// A version 2–3 stored update.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct StoredUpdate {
        pub(super) update_id: u32,
        pub(super) admitted: u64,
        pub(super) chat_id: i64,
        pub(super) user_id: Option<u64>,
        pub(super) language_code: Option<String>,
        pub(super) kind: StoredKind,
    }

    impl From<UpdateEntry> for super::UpdateEntry {
        fn from(old: UpdateEntry) -> Self {
            match old {
                UpdateEntry::Pending(old) => Self::Pending(super::StoredUpdate {
                    update_id: old.update_id,
                    admitted: old.admitted,
                    chat_id: old.chat_id,
                    user_id: old.user_id,
                    language_code: old.language_code,
                    kind: old.kind,
                    message_id: None,
                    reply_to: None,
                    thread_id: None,
                    business: None,
                }),
                UpdateEntry::Answered => Self::Answered,
            }
        }
    }
}

/// Versions 4 and 5 of the update entry, frozen: a pending update had no
/// forum topic. Migrated on load (such an update was admitted before this
/// build knew topics, so it belongs to its whole chat).
pub mod entry_v5 {
    use serde::{Deserialize, Serialize};

    use super::{StoredKind, StoredQuote};

    /// A version 4–5 update entry.
    #[derive(Debug, Serialize, Deserialize)]
    pub enum UpdateEntry {
        /// Received and not yet answered.
        Pending(StoredUpdate),
        /// Answered.
        Answered,
    }

    /// A version 4–5 stored update.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct StoredUpdate {
        pub(super) update_id: u32,
        pub(super) admitted: u64,
        pub(super) chat_id: i64,
        pub(super) user_id: Option<u64>,
        pub(super) language_code: Option<String>,
        pub(super) kind: StoredKind,
        pub(super) message_id: Option<i32>,
        pub(super) reply_to: Option<Box<StoredQuote>>,
    }

    impl From<UpdateEntry> for super::UpdateEntry {
        fn from(old: UpdateEntry) -> Self {
            match old {
                UpdateEntry::Pending(old) => Self::Pending(super::StoredUpdate {
                    update_id: old.update_id,
                    admitted: old.admitted,
                    chat_id: old.chat_id,
                    user_id: old.user_id,
                    language_code: old.language_code,
                    kind: old.kind,
                    message_id: old.message_id,
                    reply_to: old.reply_to,
                    thread_id: None,
                    business: None,
                }),
                UpdateEntry::Answered => Self::Answered,
            }
        }
    }
}

/// Version 6 of the update entry, frozen: a pending update had no Business
/// connection. Migrated on load (such an update was admitted before this
/// build knew fan chats, so it is the bot's own chat's).
pub mod entry_v6 {
    use serde::{Deserialize, Serialize};

    use super::{StoredKind, StoredQuote};

    /// A version 6 update entry.
    // Decoded one at a time, as the current entry.
    #[allow(clippy::large_enum_variant)]
    #[derive(Debug, Serialize, Deserialize)]
    pub enum UpdateEntry {
        /// Received and not yet answered.
        Pending(StoredUpdate),
        /// Answered.
        Answered,
    }

    /// A version 6 stored update.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct StoredUpdate {
        pub(super) update_id: u32,
        pub(super) admitted: u64,
        pub(super) chat_id: i64,
        pub(super) user_id: Option<u64>,
        pub(super) language_code: Option<String>,
        pub(super) kind: StoredKind,
        pub(super) message_id: Option<i32>,
        pub(super) reply_to: Option<Box<StoredQuote>>,
        pub(super) thread_id: Option<i32>,
    }

    impl From<UpdateEntry> for super::UpdateEntry {
        fn from(old: UpdateEntry) -> Self {
            match old {
                UpdateEntry::Pending(old) => Self::Pending(super::StoredUpdate {
                    update_id: old.update_id,
                    admitted: old.admitted,
                    chat_id: old.chat_id,
                    user_id: old.user_id,
                    language_code: old.language_code,
                    kind: old.kind,
                    message_id: old.message_id,
                    reply_to: old.reply_to,
                    thread_id: old.thread_id,
                    business: None,
                }),
                UpdateEntry::Answered => Self::Answered,
            }
        }
    }
}

/// Version 2 of the chat record, frozen: it kept the newest applied update
/// id instead of the recently answered ones. Migrated on load.
pub mod v2 {
    use serde::Deserialize;

    use super::v3::{ChatSettings, StoredMessage};
    use super::v4::ChatCounters;

    /// A version 2 chat record.
    #[derive(Debug, Deserialize)]
    pub struct ChatRecord {
        history: Vec<StoredMessage>,
        settings: ChatSettings,
        counters: ChatCounters,
        last_update_id: u32,
    }

    impl From<ChatRecord> for super::ChatRecord {
        fn from(old: ChatRecord) -> Self {
            super::v3::ChatRecord {
                history: old.history,
                settings: old.settings,
                counters: old.counters,
                recent_updates: super::recent_from_last(old.last_update_id),
            }
            .into()
        }
    }
}

/// Version 3 of the chat record, frozen: history messages had no files and
/// settings no notice flag. Migrated on load.
pub mod v3 {
    use serde::{Deserialize, Serialize};

    use super::StoredRole;
    use super::v4::ChatCounters;

    /// A version 3 chat record.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct ChatRecord {
        pub(super) history: Vec<StoredMessage>,
        pub(super) settings: ChatSettings,
        pub(super) counters: ChatCounters,
        pub(super) recent_updates: Vec<u32>,
    }

    /// A version 1–3 history message: text only.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct StoredMessage {
        pub(super) role: StoredRole,
        pub(super) content: String,
    }

    /// Version 2–3 chat settings.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct ChatSettings {
        pub(super) language_code: Option<String>,
        pub(super) model: Option<String>,
    }

    impl From<ChatRecord> for super::ChatRecord {
        fn from(old: ChatRecord) -> Self {
            super::v4::ChatRecord {
                history: old
                    .history
                    .into_iter()
                    .map(|message| super::StoredMessage {
                        role: message.role,
                        content: message.content,
                        files: Vec::new(),
                    })
                    .collect(),
                settings: super::v4::ChatSettings {
                    language_code: old.settings.language_code,
                    model: old.settings.model,
                    told_no_vision: false,
                },
                counters: old.counters,
                recent_updates: old.recent_updates,
            }
            .into()
        }
    }
}

/// Version 4 of the chat record, frozen: no persona, custom prompt, month
/// counters or summary. Migrated on load.
pub mod v4 {
    use serde::{Deserialize, Serialize};

    use super::StoredMessage;

    /// A version 4 chat record.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct ChatRecord {
        pub(super) history: Vec<StoredMessage>,
        pub(super) settings: ChatSettings,
        pub(super) counters: ChatCounters,
        pub(super) recent_updates: Vec<u32>,
    }

    /// Version 4 chat settings.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct ChatSettings {
        pub(super) language_code: Option<String>,
        pub(super) model: Option<String>,
        pub(super) told_no_vision: bool,
    }

    /// Version 2–4 chat counters (version 1's are read into these).
    #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
    pub struct ChatCounters {
        pub(super) answered: u64,
        pub(super) llm_failures: u64,
        pub(super) usage_day: u32,
        pub(super) tokens_today: u64,
    }

    impl From<ChatRecord> for super::ChatRecord {
        fn from(old: ChatRecord) -> Self {
            Self {
                history: old.history,
                settings: super::ChatSettings {
                    language_code: old.settings.language_code,
                    model: old.settings.model,
                    told_no_vision: old.settings.told_no_vision,
                    persona: None,
                    custom_prompt: None,
                },
                counters: super::ChatCounters {
                    answered: old.counters.answered,
                    llm_failures: old.counters.llm_failures,
                    usage_day: old.counters.usage_day,
                    tokens_today: old.counters.tokens_today,
                    ..super::ChatCounters::default()
                },
                recent_updates: old.recent_updates,
                summary: None,
                fan: None,
            }
        }
    }
}

/// Version 5 of the chat record, frozen: no last-activity time. Migrated on
/// load.
pub mod v5 {
    use serde::{Deserialize, Serialize};

    use super::StoredMessage;

    /// A version 5 chat record.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct ChatRecord {
        pub(super) history: Vec<StoredMessage>,
        pub(super) settings: ChatSettings,
        pub(super) counters: ChatCounters,
        pub(super) recent_updates: Vec<u32>,
        pub(super) summary: Option<String>,
    }

    /// Version 5 chat settings.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct ChatSettings {
        pub(super) language_code: Option<String>,
        pub(super) model: Option<String>,
        pub(super) told_no_vision: bool,
        pub(super) persona: Option<String>,
        pub(super) custom_prompt: Option<String>,
    }

    /// Version 5 chat counters.
    #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
    pub struct ChatCounters {
        pub(super) answered: u64,
        pub(super) llm_failures: u64,
        pub(super) usage_day: u32,
        pub(super) tokens_today: u64,
        pub(super) usage_month: u32,
        pub(super) tokens_month: u64,
        pub(super) cost_today: u64,
        pub(super) cost_month: u64,
    }

    impl From<ChatRecord> for super::ChatRecord {
        fn from(old: ChatRecord) -> Self {
            let settings = old.settings;
            let counters = old.counters;
            Self {
                history: old.history,
                settings: super::ChatSettings {
                    language_code: settings.language_code,
                    model: settings.model,
                    told_no_vision: settings.told_no_vision,
                    persona: settings.persona,
                    custom_prompt: settings.custom_prompt,
                },
                counters: super::ChatCounters {
                    answered: counters.answered,
                    llm_failures: counters.llm_failures,
                    usage_day: counters.usage_day,
                    tokens_today: counters.tokens_today,
                    usage_month: counters.usage_month,
                    tokens_month: counters.tokens_month,
                    cost_today: counters.cost_today,
                    cost_month: counters.cost_month,
                    last_turn_at: 0,
                },
                recent_updates: old.recent_updates,
                summary: old.summary,
                fan: None,
            }
        }
    }
}

/// The answered set of a record that kept only its newest update id.
fn recent_from_last(last_update_id: u32) -> Vec<u32> {
    if last_update_id == 0 {
        Vec::new()
    } else {
        vec![last_update_id]
    }
}

/// Version 6 of the chat record, frozen: no fan chat state. Migrated on
/// load.
pub mod v6 {
    use serde::{Deserialize, Serialize};

    use super::{ChatCounters, ChatSettings, StoredMessage};

    /// A version 6 chat record.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct ChatRecord {
        pub(super) history: Vec<StoredMessage>,
        pub(super) settings: ChatSettings,
        pub(super) counters: ChatCounters,
        pub(super) recent_updates: Vec<u32>,
        pub(super) summary: Option<String>,
    }

    impl From<ChatRecord> for super::ChatRecord {
        fn from(old: ChatRecord) -> Self {
            Self {
                history: old.history,
                settings: old.settings,
                counters: old.counters,
                recent_updates: old.recent_updates,
                summary: old.summary,
                fan: None,
            }
        }
    }
}

/// A received update's entry in the updates keyspace.
// Entries live only while being encoded or decoded, one at a time, so the
// size of the `Answered` marker does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateEntry {
    /// Received and not yet answered: replayed after a restart.
    Pending(StoredUpdate),
    /// Answered; kept only until Telegram can no longer deliver it again.
    Answered,
}

/// An [`Inbound`] as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUpdate {
    /// Telegram's update id.
    pub update_id: u32,
    /// Admission sequence number: increasing in the order updates were
    /// received, across restarts. Replay orders by it, not by update id.
    pub admitted: u64,
    /// The chat.
    pub chat_id: i64,
    /// The sender.
    pub user_id: Option<u64>,
    /// The sender's language.
    pub language_code: Option<String>,
    /// The content.
    pub kind: StoredKind,
    /// The message's id in its chat (version 4): a group answer replies to
    /// it.
    pub message_id: Option<i32>,
    /// What the message replies to (version 4; boxed: most messages are
    /// not replies).
    pub reply_to: Option<Box<StoredQuote>>,
    /// The forum topic (`message_thread_id`) the message was sent in
    /// (version 6): with `chat_id`, its [`SessionKey`].
    pub thread_id: Option<i32>,
    /// The Business connection of a fan chat's message (version 7): with
    /// `chat_id`, its [`SessionKey`].
    pub business: Option<String>,
}

/// A [`Quoted`] as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredQuote {
    /// The quoted text, already cleaned and bounded.
    pub text: String,
    /// It is one of the bot's own answers.
    pub from_bot: bool,
    /// Only part of the replied message was quoted.
    pub partial: bool,
}

/// The content of a [`StoredUpdate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredKind {
    /// Plain text.
    Text(String),
    /// A command.
    Command {
        /// Its name.
        name: String,
        /// Its arguments.
        args: String,
    },
    /// A message without text.
    NonText,
    /// Files with their caption (update entry version 3).
    Media(StoredMedia),
    /// A text the user edited, its new text (update entry version 5).
    Edited(String),
    /// A button press (appended last, so earlier entries read the same).
    Callback {
        /// The callback query's id.
        query_id: String,
        /// The button's data, as sent.
        data: String,
        /// The message pressed on.
        message_id: i32,
    },
    /// A message kept as context only (version 7, appended last).
    Context {
        /// Its text.
        text: String,
        /// The Business account's owner wrote it.
        by_owner: bool,
    },
    /// Messages of a fan chat deleted (version 7, appended last).
    Deleted {
        /// Their ids.
        message_ids: Vec<i32>,
    },
    /// The creator's own reply to a suggestion (version 8, appended last).
    CreatorReply {
        /// The suggestion it replaces.
        seq: u32,
        /// What the creator wrote.
        text: String,
    },
}

/// A [`MediaMessage`] as stored: file references, never bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMedia {
    /// The files.
    pub attachments: Vec<StoredAttachment>,
    /// The caption, when it is not a command.
    pub caption: Option<String>,
    /// The caption's command, as its words (parsed again on replay).
    pub command: Option<(String, String)>,
    /// The album id.
    pub media_group: Option<String>,
}

/// An [`Attachment`] as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAttachment {
    /// What it is: `AttachmentKind::label`.
    pub kind: String,
    /// Telegram's `file_id`, or the console's local path.
    pub file: StoredFileRef,
    /// Size in bytes, if known.
    pub size: Option<u64>,
    /// Length in seconds, if known.
    pub duration: Option<u32>,
    /// The sender's file name.
    pub file_name: Option<String>,
    /// The MIME type.
    pub mime_type: Option<String>,
}

/// A [`FileRef`] as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredFileRef {
    /// A Telegram `file_id`.
    Telegram(String),
    /// A local path (console front).
    Local(String),
}

/// Schema version of [`ChatUsage`] written by this build. Version 2 added
/// the month's tokens and the day's and month's cost; version 1 usage is
/// read through [`v1::ChatUsage`].
pub const CHAT_USAGE_VERSION: u8 = 2;

/// What a chat spent, kept when `/forget` deletes its record: a budget
/// counts spend, not conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatUsage {
    /// The UTC day `tokens_today` counts (as [`ChatCounters::usage_day`]).
    pub usage_day: u32,
    /// LLM tokens used on `usage_day`.
    pub tokens_today: u64,
    /// The UTC month `tokens_month` and `cost_month` count (as
    /// [`ChatCounters::usage_month`]).
    pub usage_month: u32,
    /// LLM tokens used in `usage_month`.
    pub tokens_month: u64,
    /// What `tokens_today` cost (millionths of the currency unit).
    pub cost_today: u64,
    /// What `tokens_month` cost (millionths of the currency unit).
    pub cost_month: u64,
}

impl ChatUsage {
    /// The spend in `counters`.
    pub fn of(counters: &ChatCounters) -> Self {
        Self {
            usage_day: counters.usage_day,
            tokens_today: counters.tokens_today,
            usage_month: counters.usage_month,
            tokens_month: counters.tokens_month,
            cost_today: counters.cost_today,
            cost_month: counters.cost_month,
        }
    }

    /// Whether nothing was spent (nothing worth keeping).
    pub fn is_nothing(&self) -> bool {
        self.tokens_today == 0
            && self.tokens_month == 0
            && self.cost_today == 0
            && self.cost_month == 0
    }

    /// Adds `tokens` costing `cost` on UTC day `day` (days since the
    /// epoch), starting a new day's and month's count first
    /// ([`ChatCounters::spend`]).
    pub fn add(&mut self, day: u32, tokens: u64, cost: u64) {
        let mut counters = self.counters();
        counters.spend(day, tokens, cost);
        *self = Self::of(&counters);
    }

    /// Counters holding this spend and nothing else.
    pub fn counters(&self) -> ChatCounters {
        ChatCounters {
            usage_day: self.usage_day,
            tokens_today: self.tokens_today,
            usage_month: self.usage_month,
            tokens_month: self.tokens_month,
            cost_today: self.cost_today,
            cost_month: self.cost_month,
            ..ChatCounters::default()
        }
    }
}

/// Encodes a chat's usage with its version byte.
pub fn encode_usage(usage: &ChatUsage) -> Result<Vec<u8>, CodecError> {
    with_version(CHAT_USAGE_VERSION, codec::encode(usage)?)
}

/// Decodes a chat's usage of any known version.
pub fn decode_usage(bytes: &[u8]) -> Result<ChatUsage, RecordError> {
    match split_version(bytes)? {
        (1, body) => decode_as::<v1::ChatUsage, _>(1, body),
        (2, body) => decode_as::<ChatUsage, _>(2, body),
        (version, _) => Err(RecordError::UnknownVersion(version)),
    }
}

/// Schema version of [`BotSetting`] written by this build. Version 2 let
/// a Business connection follow the configured mode until its creator
/// picks one ([`StoredConnection::mode`] became optional) and added the
/// suggestion a creator is editing ([`StoredConnection::editing`]);
/// version 1 settings are read through [`setting_v1`].
pub const BOT_SETTING_VERSION: u8 = 2;

/// A bot-wide setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BotSetting {
    /// Users who get no answers.
    Bans(Vec<i64>),
    /// The model admins chose for everyone.
    DefaultModel(String),
    /// The Telegram Business connections (a new last variant: version 1
    /// settings read as they are).
    Business(Vec<StoredConnection>),
}

/// A Telegram Business connection as stored: what Telegram said about it and
/// what its creator chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConnection {
    /// Telegram's connection id.
    pub id: String,
    /// The creator (the business account's user id).
    pub owner_user_id: i64,
    /// The creator's private chat with the bot: their control room.
    pub owner_chat_id: i64,
    /// The creator let the bot reply in their chats (`rights.can_reply`).
    pub can_reply: bool,
    /// The connection is on (Telegram's `is_enabled`).
    pub enabled: bool,
    /// What fans' messages get, unless a fan has their own; `None`: the
    /// configured `business.mode` (the creator has not picked one).
    pub mode: Option<StoredMode>,
    /// The creator paused every fan (`/pause`).
    pub paused: bool,
    /// The `[[personas]]` entry fans are answered in; `None` for the
    /// configured one.
    pub persona: Option<String>,
    /// Recently active fans and fans with their own mode.
    pub fans: Vec<StoredFan>,
    /// The suggestion the creator tapped ✏️ Edit on: their next text in
    /// the control room is the reply to that fan.
    pub editing: Option<StoredEdit>,
    /// The creator's `language_code` as Telegram last said: the control
    /// room's texts about fans are in it.
    pub language: Option<String>,
    /// What the LLM calls for this connection's fans spent today and this
    /// month: the creator's budget (`llm.daily_token_budget` and the
    /// monthly ones apply to it, across all their fans).
    pub spent: ChatUsage,
}

/// A suggestion being edited by its creator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEdit {
    /// The fan's chat.
    pub fan: i64,
    /// The suggestion's number in that chat ([`FanRecord::draft_seq`]).
    pub seq: u32,
    /// The control-room update taken as the reply, once one was (the same
    /// update delivered again is taken again; any other is not).
    pub taken_by: Option<u32>,
}

/// Version 1 of the bot settings, frozen: a connection's mode was always
/// stored (the configured one when it connected) and nothing was being
/// edited. Migrated on load (the stored mode is kept as the creator's).
pub mod setting_v1 {
    use serde::{Deserialize, Serialize};

    use super::{StoredFan, StoredMode};

    /// A version 1 bot setting.
    #[derive(Debug, Serialize, Deserialize)]
    pub enum BotSetting {
        /// Bans.
        Bans(Vec<i64>),
        /// The admins' model.
        DefaultModel(String),
        /// Business connections.
        Business(Vec<StoredConnection>),
    }

    /// A version 1 connection.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct StoredConnection {
        pub(super) id: String,
        pub(super) owner_user_id: i64,
        pub(super) owner_chat_id: i64,
        pub(super) can_reply: bool,
        pub(super) enabled: bool,
        pub(super) mode: StoredMode,
        pub(super) paused: bool,
        pub(super) persona: Option<String>,
        pub(super) fans: Vec<StoredFan>,
    }

    impl From<BotSetting> for super::BotSetting {
        fn from(old: BotSetting) -> Self {
            match old {
                BotSetting::Bans(bans) => Self::Bans(bans),
                BotSetting::DefaultModel(model) => Self::DefaultModel(model),
                BotSetting::Business(connections) => Self::Business(
                    connections
                        .into_iter()
                        .map(|old| super::StoredConnection {
                            id: old.id,
                            owner_user_id: old.owner_user_id,
                            owner_chat_id: old.owner_chat_id,
                            can_reply: old.can_reply,
                            enabled: old.enabled,
                            mode: Some(old.mode),
                            paused: old.paused,
                            persona: old.persona,
                            fans: old.fans,
                            editing: None,
                            language: None,
                            spent: super::ChatUsage::default(),
                        })
                        .collect(),
                ),
            }
        }
    }
}

/// A fan's chat under a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFan {
    /// The fan's chat id (a private chat with the creator).
    pub chat_id: i64,
    /// The fan's first name, as Telegram last said.
    pub name: String,
    /// When the fan last wrote (Unix seconds).
    pub last_at: i64,
    /// The fan's own mode, overriding the connection's.
    pub mode: Option<StoredMode>,
    /// The creator paused this fan.
    pub paused: bool,
}

/// A business mode as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredMode {
    /// Suggest a reply to the creator.
    Draft,
    /// Answer the fan as the creator.
    Auto,
    /// Context only.
    Off,
}

/// Encodes a bot setting with its version byte.
pub fn encode_setting(setting: &BotSetting) -> Result<Vec<u8>, CodecError> {
    with_version(BOT_SETTING_VERSION, codec::encode(setting)?)
}

/// Decodes a bot setting of any known version.
pub fn decode_setting(bytes: &[u8]) -> Result<BotSetting, RecordError> {
    match split_version(bytes)? {
        (1, body) => decode_as::<setting_v1::BotSetting, _>(1, body),
        (2, body) => decode_as::<BotSetting, _>(2, body),
        (version, _) => Err(RecordError::UnknownVersion(version)),
    }
}

/// A stored value that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Zero bytes.
    #[error("empty value")]
    Empty,
    /// A version this build does not know (written by a newer build?).
    #[error("unknown schema version {0}")]
    UnknownVersion(u8),
    /// The bytes do not decode as the version they claim.
    #[error("undecodable version {version} value: {source}")]
    Corrupt {
        /// The version byte.
        version: u8,
        /// The decoder's complaint.
        source: CodecError,
    },
}

/// Encodes a chat record with its version byte.
pub fn encode_chat(record: &ChatRecord) -> Result<Vec<u8>, CodecError> {
    with_version(CHAT_RECORD_VERSION, codec::encode(record)?)
}

/// Decodes a chat record of any known version.
pub fn decode_chat(bytes: &[u8]) -> Result<ChatRecord, RecordError> {
    match split_version(bytes)? {
        (1, body) => decode_as::<v1::ChatRecord, _>(1, body),
        (2, body) => decode_as::<v2::ChatRecord, _>(2, body),
        (3, body) => decode_as::<v3::ChatRecord, _>(3, body),
        (4, body) => decode_as::<v4::ChatRecord, _>(4, body),
        (5, body) => decode_as::<v5::ChatRecord, _>(5, body),
        (6, body) => decode_as::<v6::ChatRecord, _>(6, body),
        (7, body) => decode_as::<ChatRecord, _>(7, body),
        (version, _) => Err(RecordError::UnknownVersion(version)),
    }
}

/// Encodes an update entry with its version byte.
pub fn encode_update(entry: &UpdateEntry) -> Result<Vec<u8>, CodecError> {
    with_version(UPDATE_ENTRY_VERSION, codec::encode(entry)?)
}

/// Decodes an update entry of any known version.
pub fn decode_update(bytes: &[u8]) -> Result<UpdateEntry, RecordError> {
    match split_version(bytes)? {
        (1, body) => decode_as::<v1::UpdateEntry, _>(1, body),
        // Version 3 only appended a variant: version 2 bytes read as it.
        (version @ (2 | 3), body) => decode_as::<entry_v3::UpdateEntry, _>(version, body),
        (version @ (4 | 5), body) => decode_as::<entry_v5::UpdateEntry, _>(version, body),
        (6, body) => decode_as::<entry_v6::UpdateEntry, _>(6, body),
        // Version 8 only appended a variant: version 7 bytes read as it.
        (version @ (7 | 8), body) => decode_as::<UpdateEntry, _>(version, body),
        (version, _) => Err(RecordError::UnknownVersion(version)),
    }
}

/// Decodes `body` as the type `Stored` that schema `version` wrote, and
/// upgrades it to the current type `T` (the identity for the current
/// version).
fn decode_as<Stored, T>(version: u8, body: &[u8]) -> Result<T, RecordError>
where
    Stored: serde::de::DeserializeOwned + Into<T>,
{
    codec::decode::<Stored>(body)
        .map(Into::into)
        .map_err(|source| RecordError::Corrupt { version, source })
}

fn with_version(version: u8, body: Vec<u8>) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(version);
    out.extend_from_slice(&body);
    Ok(out)
}

fn split_version(bytes: &[u8]) -> Result<(u8, &[u8]), RecordError> {
    bytes
        .split_first()
        .map(|(version, body)| (*version, body))
        .ok_or(RecordError::Empty)
}

impl StoredUpdate {
    /// The update as stored, admitted as number `admitted`.
    pub fn new(inbound: &Inbound, admitted: u64) -> Self {
        Self {
            update_id: inbound.update_id,
            admitted,
            chat_id: inbound.key.chat().0,
            user_id: inbound.user_id,
            language_code: inbound.language_code.clone(),
            kind: match &inbound.kind {
                InboundKind::Text(text) => StoredKind::Text(text.clone()),
                InboundKind::Command(command) => {
                    let (name, args) = command.words();
                    StoredKind::Command {
                        name: name.to_owned(),
                        args: args.into_owned(),
                    }
                }
                InboundKind::Media(media) => StoredKind::Media(StoredMedia::new(media)),
                InboundKind::NonText => StoredKind::NonText,
                InboundKind::Edited(text) => StoredKind::Edited(text.clone()),
                InboundKind::Callback(press) => StoredKind::Callback {
                    query_id: press.query_id.clone(),
                    data: press.data.clone(),
                    message_id: press.message_id.0,
                },
                InboundKind::Context { text, by_owner } => StoredKind::Context {
                    text: text.clone(),
                    by_owner: *by_owner,
                },
                InboundKind::Deleted(ids) => StoredKind::Deleted {
                    message_ids: ids.iter().map(|id| id.0).collect(),
                },
                InboundKind::CreatorReply { seq, text } => StoredKind::CreatorReply {
                    seq: *seq,
                    text: text.clone(),
                },
            },
            message_id: inbound.message_id.map(|id| id.0),
            reply_to: inbound.reply_to.as_ref().map(|quote| {
                Box::new(StoredQuote {
                    text: quote.text.clone(),
                    from_bot: quote.from_bot,
                    partial: quote.partial,
                })
            }),
            thread_id: inbound.key.thread_number(),
            business: inbound.key.connection().map(str::to_owned),
        }
    }

    /// Its conversation.
    pub fn key(&self) -> SessionKey {
        match &self.business {
            Some(connection) => SessionKey::business(connection.clone(), ChatId(self.chat_id)),
            None => SessionKey::new(
                ChatId(self.chat_id),
                self.thread_id.map(|thread| ThreadId(MessageId(thread))),
            ),
        }
    }

    /// Its admission number: the order received, across restarts.
    pub fn admitted(&self) -> u64 {
        self.admitted
    }

    /// The same update with the admission number a database assigned when
    /// it stored it (PostgreSQL numbers admissions with a sequence, so the
    /// encoded copy carries 0).
    pub fn admitted_as(self, admitted: u64) -> Self {
        Self { admitted, ..self }
    }

    /// The update as the actors use it; `received_at` is now, since the
    /// original instant did not survive the restart. A command is parsed
    /// again against today's configured commands (`assistants`).
    pub fn into_inbound(self, assistants: &[CommandConfig]) -> Inbound {
        Inbound {
            update_id: self.update_id,
            key: self.key(),
            user_id: self.user_id,
            language_code: self.language_code,
            kind: match self.kind {
                StoredKind::Text(text) => InboundKind::Text(text),
                StoredKind::Command { name, args } => {
                    InboundKind::Command(Command::from_words(&name, &args, assistants))
                }
                StoredKind::NonText => InboundKind::NonText,
                StoredKind::Edited(text) => InboundKind::Edited(text),
                StoredKind::Callback {
                    query_id,
                    data,
                    message_id,
                } => InboundKind::Callback(Press {
                    query_id,
                    data,
                    message_id: MessageId(message_id),
                }),
                StoredKind::Media(media) => InboundKind::Media(media.into_media(assistants)),
                StoredKind::Context { text, by_owner } => InboundKind::Context { text, by_owner },
                StoredKind::Deleted { message_ids } => {
                    InboundKind::Deleted(message_ids.into_iter().map(MessageId).collect())
                }
                StoredKind::CreatorReply { seq, text } => InboundKind::CreatorReply { seq, text },
            },
            received_at: std::time::Instant::now(),
            sent_at: None,
            refused: None,
            // Not stored: a replayed group message loses its speaker's name.
            speaker: None,
            message_id: self.message_id.map(MessageId),
            reply_to: self.reply_to.map(|quote| {
                Box::new(Quoted {
                    text: quote.text,
                    from_bot: quote.from_bot,
                    partial: quote.partial,
                })
            }),
        }
    }
}

impl StoredMedia {
    fn new(media: &MediaMessage) -> Self {
        Self {
            attachments: media
                .attachments
                .iter()
                .map(|a| StoredAttachment {
                    kind: a.kind.label().to_owned(),
                    file: match &a.file {
                        FileRef::Telegram { file_id } => StoredFileRef::Telegram(file_id.clone()),
                        FileRef::Local(path) => {
                            StoredFileRef::Local(path.to_string_lossy().into_owned())
                        }
                    },
                    size: a.size,
                    duration: a.duration,
                    file_name: a.file_name.clone(),
                    mime_type: a.mime_type.clone(),
                })
                .collect(),
            caption: media.caption.clone(),
            command: media.command.as_ref().map(|command| {
                let (name, args) = command.words();
                (name.to_owned(), args.into_owned())
            }),
            media_group: media.media_group.clone(),
        }
    }

    fn into_media(self, assistants: &[CommandConfig]) -> MediaMessage {
        MediaMessage {
            attachments: self
                .attachments
                .into_iter()
                .map(|a| Attachment {
                    kind: kind_from_label(&a.kind),
                    file: match a.file {
                        StoredFileRef::Telegram(file_id) => FileRef::Telegram { file_id },
                        StoredFileRef::Local(path) => FileRef::Local(path.into()),
                    },
                    size: a.size,
                    duration: a.duration,
                    file_name: a.file_name,
                    mime_type: a.mime_type,
                })
                .collect(),
            caption: self.caption,
            command: self
                .command
                .map(|(name, args)| Command::from_words(&name, &args, assistants)),
            media_group: self.media_group,
        }
    }
}

/// The kind a stored label names; a label this build does not know (a
/// newer build's) is answered as unsupported, never dropped.
fn kind_from_label(label: &str) -> AttachmentKind {
    [
        AttachmentKind::Photo,
        AttachmentKind::Voice,
        AttachmentKind::Audio,
        AttachmentKind::VideoNote,
        AttachmentKind::Document,
    ]
    .into_iter()
    .find(|kind| kind.label() == label)
    .unwrap_or(AttachmentKind::Unsupported)
}

impl StoredFileKind {
    /// The stored kind of an attachment; `None` for what is not kept.
    pub fn of(kind: AttachmentKind) -> Option<Self> {
        match kind {
            AttachmentKind::Photo => Some(Self::Photo),
            AttachmentKind::Voice => Some(Self::Voice),
            AttachmentKind::Audio => Some(Self::Audio),
            AttachmentKind::VideoNote => Some(Self::VideoNote),
            AttachmentKind::Document => Some(Self::Document),
            AttachmentKind::Unsupported => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record the version-1 fixture holds.
    fn fixture_record() -> ChatRecord {
        ChatRecord {
            history: vec![
                StoredMessage {
                    role: StoredRole::User,
                    content: "Привет! Write me a caption 📸".into(),
                    files: Vec::new(),
                },
                StoredMessage {
                    role: StoredRole::Assistant,
                    content: "Golden hour, golden mood ✨".into(),
                    files: Vec::new(),
                },
            ],
            settings: ChatSettings {
                language_code: Some("ru".into()),
                ..ChatSettings::default()
            },
            counters: ChatCounters {
                answered: 7,
                llm_failures: 1,
                ..ChatCounters::default()
            },
            recent_updates: vec![123_456_789],
            summary: None,
            fan: None,
        }
    }

    /// The fixture's counters in their version 2–4 layout.
    fn old_counters(record: &ChatRecord) -> v4::ChatCounters {
        v4::ChatCounters {
            answered: record.counters.answered,
            llm_failures: record.counters.llm_failures,
            usage_day: record.counters.usage_day,
            tokens_today: record.counters.tokens_today,
        }
    }

    const FIXTURE_V1: &[u8] = include_bytes!("../../tests/fixtures/chat_record_v1.bin");

    #[test]
    fn version_1_fixture_decodes_and_migrates() {
        assert_eq!(FIXTURE_V1[0], 1);
        assert_eq!(decode_chat(FIXTURE_V1).unwrap(), fixture_record());
    }

    /// The fixture's history and settings in their version 2–3 layout.
    fn old_layout(record: &ChatRecord) -> (Vec<v3::StoredMessage>, v3::ChatSettings) {
        let history = record
            .history
            .iter()
            .map(|m| v3::StoredMessage {
                role: m.role,
                content: m.content.clone(),
            })
            .collect();
        let settings = v3::ChatSettings {
            language_code: record.settings.language_code.clone(),
            model: record.settings.model.clone(),
        };
        (history, settings)
    }

    #[test]
    fn version_2_and_3_records_and_version_1_entries_migrate() {
        #[derive(Serialize)]
        struct V2 {
            history: Vec<v3::StoredMessage>,
            settings: v3::ChatSettings,
            counters: v4::ChatCounters,
            last_update_id: u32,
        }
        let old = fixture_record();
        let (history, settings) = old_layout(&old);
        let v2 = V2 {
            history: history.clone(),
            settings: settings.clone(),
            counters: old_counters(&old),
            last_update_id: 123_456_789,
        };
        let bytes = with_version(2, codec::encode(&v2).unwrap()).unwrap();
        assert_eq!(decode_chat(&bytes).unwrap(), old);
        let v3 = v3::ChatRecord {
            history,
            settings,
            counters: old_counters(&old),
            recent_updates: old.recent_updates.clone(),
        };
        let bytes = with_version(3, codec::encode(&v3).unwrap()).unwrap();
        assert_eq!(decode_chat(&bytes).unwrap(), old);

        #[derive(Serialize)]
        enum EntryV1 {
            Pending(UpdateV1),
        }
        #[derive(Serialize)]
        struct UpdateV1 {
            update_id: u32,
            chat_id: i64,
            user_id: Option<u64>,
            language_code: Option<String>,
            kind: StoredKind,
        }
        let v1 = EntryV1::Pending(UpdateV1 {
            update_id: 9,
            chat_id: 3,
            user_id: Some(3),
            language_code: None,
            kind: StoredKind::NonText,
        });
        let bytes = with_version(1, codec::encode(&v1).unwrap()).unwrap();
        assert_eq!(
            decode_update(&bytes).unwrap(),
            UpdateEntry::Pending(StoredUpdate {
                update_id: 9,
                admitted: 0,
                chat_id: 3,
                user_id: Some(3),
                language_code: None,
                kind: StoredKind::NonText,
                message_id: None,
                reply_to: None,
                thread_id: None,
                business: None,
            })
        );
    }

    /// Version 3 entries (no message id, no quote) still decode, and the
    /// current version keeps both.
    #[test]
    fn version_3_entries_decode_and_version_4_keeps_the_quote() {
        let v3 = entry_v3::UpdateEntry::Pending(entry_v3::StoredUpdate {
            update_id: 11,
            admitted: 4,
            chat_id: -100,
            user_id: Some(9),
            language_code: Some("en".into()),
            kind: StoredKind::Text("and this?".into()),
        });
        let bytes = with_version(3, codec::encode(&v3).unwrap()).unwrap();
        let mut expected = StoredUpdate {
            update_id: 11,
            admitted: 4,
            chat_id: -100,
            user_id: Some(9),
            language_code: Some("en".into()),
            kind: StoredKind::Text("and this?".into()),
            message_id: None,
            reply_to: None,
            thread_id: None,
            business: None,
        };
        assert_eq!(
            decode_update(&bytes).unwrap(),
            UpdateEntry::Pending(expected.clone())
        );
        let answered = with_version(3, codec::encode(&entry_v3::UpdateEntry::Answered).unwrap());
        assert_eq!(
            decode_update(&answered.unwrap()).unwrap(),
            UpdateEntry::Answered
        );

        expected.message_id = Some(42);
        expected.reply_to = Some(Box::new(StoredQuote {
            text: "the beach at dawn".into(),
            from_bot: true,
            partial: false,
        }));
        let bytes = encode_update(&UpdateEntry::Pending(expected.clone())).unwrap();
        assert_eq!(bytes[0], UPDATE_ENTRY_VERSION);
        let UpdateEntry::Pending(stored) = decode_update(&bytes).unwrap() else {
            panic!("not pending");
        };
        assert_eq!(stored, expected);
        // Version 5 only appended a variant: the same bytes as version 4 read
        // the same (version 6 added a field, so they are written in the
        // frozen version 4–5 layout).
        let mut bytes = v5_entry_bytes(&expected);
        assert_eq!(bytes[0], 5);
        assert_eq!(
            decode_update(&bytes).unwrap(),
            UpdateEntry::Pending(expected.clone())
        );
        bytes[0] = 4;
        assert_eq!(
            decode_update(&bytes).unwrap(),
            UpdateEntry::Pending(expected.clone())
        );
        let inbound = stored.into_inbound(&[]);
        assert_eq!(inbound.message_id, Some(MessageId(42)));
        assert_eq!(
            inbound.reply_to.map(|quote| *quote),
            Some(Quoted {
                text: "the beach at dawn".into(),
                from_bot: true,
                partial: false,
            })
        );
    }

    /// `update` (without a topic) encoded as version 5 wrote it.
    fn v5_entry_bytes(update: &StoredUpdate) -> Vec<u8> {
        assert_eq!(update.thread_id, None);
        let old = entry_v5::UpdateEntry::Pending(entry_v5::StoredUpdate {
            update_id: update.update_id,
            admitted: update.admitted,
            chat_id: update.chat_id,
            user_id: update.user_id,
            language_code: update.language_code.clone(),
            kind: update.kind.clone(),
            message_id: update.message_id,
            reply_to: update.reply_to.clone(),
        });
        with_version(5, codec::encode(&old).unwrap()).unwrap()
    }

    /// Version 6 keeps a topic message's thread, so it is replayed to its
    /// topic; a version 5 entry is its whole chat's.
    #[test]
    fn version_6_entries_keep_the_topic_and_version_5_ones_read_as_whole_chats() {
        let topic = SessionKey::new(ChatId(-100_777), Some(ThreadId(MessageId(12))));
        let inbound = Inbound {
            update_id: 21,
            key: topic.clone(),
            user_id: Some(9),
            language_code: Some("en".into()),
            kind: InboundKind::Edited("@bot and now?".into()),
            received_at: std::time::Instant::now(),
            sent_at: None,
            refused: None,
            speaker: None,
            message_id: Some(MessageId(40)),
            reply_to: None,
        };
        let stored = StoredUpdate::new(&inbound, 8);
        assert_eq!(stored.thread_id, Some(12));
        let bytes = encode_update(&UpdateEntry::Pending(stored.clone())).unwrap();
        assert_eq!(bytes[0], UPDATE_ENTRY_VERSION);
        let UpdateEntry::Pending(decoded) = decode_update(&bytes).unwrap() else {
            panic!("not pending");
        };
        assert_eq!(decoded, stored);
        let replayed = decoded.into_inbound(&[]);
        assert_eq!(replayed.key, topic);
        assert_eq!(replayed.kind, inbound.kind);
        assert_eq!(replayed.message_id, Some(MessageId(40)));

        let whole = StoredUpdate {
            thread_id: None,
            ..stored
        };
        let UpdateEntry::Pending(old) = decode_update(&v5_entry_bytes(&whole)).unwrap() else {
            panic!("not pending");
        };
        assert_eq!(old, whole);
        assert_eq!(
            old.into_inbound(&[]).key,
            SessionKey::of_chat(ChatId(-100_777))
        );
        let answered = with_version(5, codec::encode(&entry_v5::UpdateEntry::Answered).unwrap());
        assert_eq!(
            decode_update(&answered.unwrap()).unwrap(),
            UpdateEntry::Answered
        );
    }

    /// Version 7 keeps a fan chat's connection and context-only messages;
    /// a version 6 entry is the bot's own chat's.
    #[test]
    fn version_7_entries_keep_the_business_connection() {
        let fan = SessionKey::business("c1", ChatId(6001));
        let inbound = Inbound {
            update_id: 30,
            key: fan.clone(),
            user_id: Some(5000),
            language_code: None,
            kind: InboundKind::Context {
                text: "I'll answer later".into(),
                by_owner: true,
            },
            received_at: std::time::Instant::now(),
            sent_at: None,
            refused: None,
            speaker: None,
            message_id: Some(MessageId(7)),
            reply_to: None,
        };
        let stored = StoredUpdate::new(&inbound, 3);
        let bytes = encode_update(&UpdateEntry::Pending(stored.clone())).unwrap();
        let UpdateEntry::Pending(decoded) = decode_update(&bytes).unwrap() else {
            panic!("not pending");
        };
        assert_eq!(decoded, stored);
        let replayed = decoded.into_inbound(&[]);
        assert_eq!(replayed.key, fan);
        assert_eq!(replayed.kind, inbound.kind);

        let old = entry_v6::UpdateEntry::Pending(entry_v6::StoredUpdate {
            update_id: 31,
            admitted: 4,
            chat_id: 6001,
            user_id: Some(6001),
            language_code: None,
            kind: StoredKind::Text("hi".into()),
            message_id: None,
            reply_to: None,
            thread_id: None,
        });
        let bytes = with_version(6, codec::encode(&old).unwrap()).unwrap();
        let UpdateEntry::Pending(old) = decode_update(&bytes).unwrap() else {
            panic!("not pending");
        };
        assert_eq!(old.business, None);
        assert_eq!(old.into_inbound(&[]).key, SessionKey::of_chat(ChatId(6001)));
    }

    /// A version 4 record with a photo, a voice note and a document.
    fn media_record() -> ChatRecord {
        let mut record = fixture_record();
        let file = |kind, file_id: &str, name: Option<&str>| StoredFile {
            kind,
            file_id: file_id.into(),
            name: name.map(str::to_owned),
        };
        record.history.extend([
            StoredMessage {
                role: StoredRole::User,
                content: "[Photo: a beach at sunset] for my beach post".into(),
                files: vec![file(StoredFileKind::Photo, "AgACAgIAAxkBAAIBc2", None)],
            },
            StoredMessage {
                role: StoredRole::User,
                content: "[Voice message] привет, как дела".into(),
                files: vec![file(StoredFileKind::Voice, "AwACAgIAAxkBAAIBdG", None)],
            },
            StoredMessage {
                role: StoredRole::User,
                content: "File \"notes.txt\":\n```\nbuy milk\n```".into(),
                files: vec![file(
                    StoredFileKind::Document,
                    "BQACAgIAAxkBAAIBdW",
                    Some("notes.txt"),
                )],
            },
        ]);
        record.settings.told_no_vision = true;
        record
    }

    const FIXTURE_V4: &[u8] = include_bytes!("../../tests/fixtures/chat_record_v4.bin");

    /// Version 4 wrote [`media_record`] (without version 5's fields).
    #[test]
    fn version_4_fixture_decodes() {
        assert_eq!(FIXTURE_V4[0], 4);
        assert_eq!(decode_chat(FIXTURE_V4).unwrap(), media_record());
    }

    /// A version 5 record: persona, own prompt, month counters, summary.
    fn v5_record() -> ChatRecord {
        let mut record = media_record();
        record.settings.persona = Some("brand".into());
        record.settings.custom_prompt = Some("You are Mia's warm, witty voice.".into());
        record.counters.usage_month = 24_323;
        record.counters.tokens_month = 123_456;
        record.counters.cost_today = 1_250;
        record.counters.cost_month = 98_765;
        record.summary = Some("The user plans a beach shoot at dawn.".into());
        record
    }

    const FIXTURE_V5: &[u8] = include_bytes!("../../tests/fixtures/chat_record_v5.bin");

    /// Version 5 wrote [`v5_record`] (without version 6's last-activity
    /// time).
    #[test]
    fn version_5_fixture_decodes() {
        assert_eq!(FIXTURE_V5[0], 5);
        assert_eq!(decode_chat(FIXTURE_V5).unwrap(), v5_record());
    }

    /// A version 6 record: the conversation's last activity.
    fn v6_record() -> ChatRecord {
        let mut record = v5_record();
        record.counters.last_turn_at = 1_796_000_000_000;
        record
    }

    const FIXTURE_V6: &[u8] = include_bytes!("../../tests/fixtures/chat_record_v6.bin");

    /// Writes the version 6 fixture (run once, with
    /// `LLMGRAM_WRITE_FIXTURE=1`, when version 6 was introduced); the
    /// fixture then stays as it is, for every later version to decode.
    #[test]
    fn version_6_fixture_decodes() {
        if std::env::var_os("LLMGRAM_WRITE_FIXTURE").is_some() {
            std::fs::write(
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/chat_record_v6.bin"
                ),
                encode_chat(&v6_record()).unwrap(),
            )
            .unwrap();
        }
        assert_eq!(FIXTURE_V6[0], 6);
        assert_eq!(decode_chat(FIXTURE_V6).unwrap(), v6_record());
    }

    /// A version 7 record: a fan chat's tracked messages and suggestion.
    fn v7_record() -> ChatRecord {
        let mut record = v6_record();
        record.fan = Some(FanRecord {
            tracked: vec![(41, text_hash("Golden hour, golden mood ✨"))],
            draft: Some(StoredDraft {
                seq: 3,
                text: "Sure, tomorrow!".into(),
                fan_text: "can we talk?".into(),
                fan_name: "Ann".into(),
                fan_message: Some(42),
                shown_in: Some(900),
                editing: true,
            }),
            draft_seq: 3,
        });
        record
    }

    const FIXTURE_V7: &[u8] = include_bytes!("../../tests/fixtures/chat_record_v7.bin");

    /// Writes the version 7 fixture (run once, with
    /// `LLMGRAM_WRITE_FIXTURE=1`, when version 7 was introduced); the
    /// fixture then stays as it is, for every later version to decode.
    #[test]
    fn version_7_fixture_decodes() {
        if std::env::var_os("LLMGRAM_WRITE_FIXTURE").is_some() {
            std::fs::write(
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/chat_record_v7.bin"
                ),
                encode_chat(&v7_record()).unwrap(),
            )
            .unwrap();
        }
        assert_eq!(FIXTURE_V7[0], 7);
        assert_eq!(decode_chat(FIXTURE_V7).unwrap(), v7_record());
        // Hashes are the stored names of turns: they must never change.
        assert_eq!(text_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(text_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn usage_adds_up_within_a_day_and_month_and_starts_over_after() {
        let mut usage = ChatUsage::default();
        usage.add(20_000, 10, 5);
        usage.add(20_000, 7, 1);
        assert_eq!((usage.tokens_today, usage.tokens_month), (17, 17));
        assert_eq!((usage.cost_today, usage.cost_month), (6, 6));
        // The next day of the same month.
        let next = if crate::clock::month_of_day(20_001) == crate::clock::month_of_day(20_000) {
            20_001
        } else {
            19_999
        };
        usage.add(next, 3, 0);
        assert_eq!((usage.tokens_today, usage.tokens_month), (3, 20));
        // A day of another month.
        usage.add(20_000 + 40, 2, 0);
        assert_eq!((usage.tokens_today, usage.tokens_month), (2, 2));
    }

    #[test]
    fn version_1_business_settings_keep_their_mode_as_the_creators() {
        let old = setting_v1::BotSetting::Business(vec![setting_v1::StoredConnection {
            id: "c1".into(),
            owner_user_id: 5,
            owner_chat_id: 5,
            can_reply: true,
            enabled: true,
            mode: StoredMode::Auto,
            paused: false,
            persona: None,
            fans: Vec::new(),
        }]);
        let bytes = with_version(1, codec::encode(&old).unwrap()).unwrap();
        let BotSetting::Business(connections) = decode_setting(&bytes).unwrap() else {
            panic!("not business");
        };
        assert_eq!(connections[0].mode, Some(StoredMode::Auto));
        assert_eq!(connections[0].editing, None);
        let again = encode_setting(&BotSetting::Business(connections.clone())).unwrap();
        assert_eq!(again[0], 2);
        assert_eq!(
            decode_setting(&again).unwrap(),
            BotSetting::Business(connections)
        );
    }

    #[test]
    fn a_creators_reply_round_trips_and_version_7_entries_still_read() {
        let inbound = Inbound {
            update_id: 9,
            key: SessionKey::business("c1", ChatId(6001)),
            user_id: Some(5),
            language_code: None,
            kind: InboundKind::CreatorReply {
                seq: 4,
                text: "see you at 5".into(),
            },
            received_at: std::time::Instant::now(),
            sent_at: None,
            refused: None,
            speaker: None,
            message_id: None,
            reply_to: None,
        };
        let bytes = encode_update(&UpdateEntry::Pending(StoredUpdate::new(&inbound, 1))).unwrap();
        assert_eq!(bytes[0], 8);
        let UpdateEntry::Pending(stored) = decode_update(&bytes).unwrap() else {
            panic!("not pending");
        };
        let back = stored.into_inbound(&[]);
        assert_eq!(back.kind, inbound.kind);
        assert_eq!(back.key, inbound.key);
        // A version 7 entry (no such variant yet) reads the same.
        let text = Inbound {
            kind: InboundKind::Text("hi".into()),
            ..inbound
        };
        let mut old = encode_update(&UpdateEntry::Pending(StoredUpdate::new(&text, 2))).unwrap();
        old[0] = 7;
        assert!(matches!(decode_update(&old), Ok(UpdateEntry::Pending(_))));
    }

    #[test]
    fn media_updates_round_trip_without_bytes() {
        let inbound = Inbound {
            update_id: 7,
            key: SessionKey::of_chat(ChatId(5)),
            user_id: Some(5),
            language_code: None,
            kind: InboundKind::Media(MediaMessage {
                attachments: vec![Attachment {
                    kind: AttachmentKind::Voice,
                    file: FileRef::Telegram {
                        file_id: "AwACAg".into(),
                    },
                    size: Some(12_345),
                    duration: Some(4),
                    file_name: None,
                    mime_type: Some("audio/ogg".into()),
                }],
                caption: Some("what do you think?".into()),
                command: None,
                media_group: Some("1357".into()),
            }),
            received_at: std::time::Instant::now(),
            sent_at: None,
            refused: None,
            speaker: None,
            message_id: None,
            reply_to: None,
        };
        let entry = UpdateEntry::Pending(StoredUpdate::new(&inbound, 3));
        let bytes = encode_update(&entry).unwrap();
        assert_eq!(bytes[0], UPDATE_ENTRY_VERSION);
        let UpdateEntry::Pending(stored) = decode_update(&bytes).unwrap() else {
            panic!("not pending");
        };
        assert_eq!(stored.into_inbound(&[]).kind, inbound.kind);
        // A label from a newer build reads as unsupported, not as an error.
        assert_eq!(kind_from_label("hologram"), AttachmentKind::Unsupported);
    }

    #[test]
    fn a_button_press_round_trips_and_earlier_kinds_keep_their_index() {
        let inbound = Inbound {
            update_id: 8,
            key: SessionKey::of_chat(ChatId(-100)),
            user_id: Some(6),
            language_code: Some("ru".into()),
            kind: InboundKind::Callback(Press {
                query_id: "4411".into(),
                data: "r1:ff:6".into(),
                message_id: MessageId(12),
            }),
            received_at: std::time::Instant::now(),
            sent_at: None,
            refused: None,
            speaker: None,
            message_id: None,
            reply_to: None,
        };
        let entry = UpdateEntry::Pending(StoredUpdate::new(&inbound, 4));
        let UpdateEntry::Pending(stored) = decode_update(&encode_update(&entry).unwrap()).unwrap()
        else {
            panic!("not pending");
        };
        assert_eq!(stored.into_inbound(&[]).kind, inbound.kind);
        // Appended last: an edit (the variant before it) encodes as before.
        let edited = codec::encode(&StoredKind::Edited("x".into())).unwrap();
        assert_eq!(edited[0], 4);
        let press = codec::encode(&StoredKind::Callback {
            query_id: String::new(),
            data: String::new(),
            message_id: 0,
        })
        .unwrap();
        assert_eq!(press[0], 5);
    }

    #[test]
    fn the_current_version_is_written() {
        assert_eq!(
            encode_chat(&fixture_record()).unwrap()[0],
            CHAT_RECORD_VERSION
        );
    }

    #[test]
    fn records_round_trip() {
        let record = fixture_record();
        assert_eq!(decode_chat(&encode_chat(&record).unwrap()).unwrap(), record);
        let entry = UpdateEntry::Pending(StoredUpdate {
            update_id: 5,
            admitted: 17,
            chat_id: -100,
            user_id: Some(9),
            language_code: None,
            kind: StoredKind::Command {
                name: "reset".into(),
                args: String::new(),
            },
            message_id: Some(3),
            reply_to: None,
            thread_id: Some(4),
            business: None,
        });
        assert_eq!(
            decode_update(&encode_update(&entry).unwrap()).unwrap(),
            entry
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode_chat(&[]), Err(RecordError::Empty));
        assert_eq!(
            decode_chat(&[99, 1, 2]),
            Err(RecordError::UnknownVersion(99))
        );
        assert!(matches!(
            decode_chat(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(RecordError::Corrupt { .. })
        ));
        let mut padded = encode_chat(&fixture_record()).unwrap();
        padded.push(0);
        assert!(matches!(
            decode_chat(&padded),
            Err(RecordError::Corrupt { .. })
        ));
    }

    #[test]
    fn version_1_usage_decodes_and_version_2_round_trips() {
        let old = v1::ChatUsage {
            usage_day: 20_424,
            tokens_today: 1_234,
        };
        let bytes = with_version(1, codec::encode(&old).unwrap()).unwrap();
        assert_eq!(
            decode_usage(&bytes).unwrap(),
            ChatUsage {
                usage_day: 20_424,
                tokens_today: 1_234,
                ..ChatUsage::default()
            }
        );
        let mut counters = ChatCounters {
            answered: 9,
            llm_failures: 2,
            usage_day: 20_424,
            tokens_today: 1_234,
            usage_month: 24_323,
            tokens_month: 56_789,
            cost_today: 1_250,
            cost_month: 98_765,
            last_turn_at: 1_796_000_000_000,
        };
        let usage = ChatUsage::of(&counters);
        let bytes = encode_usage(&usage).unwrap();
        assert_eq!(bytes[0], CHAT_USAGE_VERSION);
        assert_eq!(decode_usage(&bytes).unwrap(), usage);
        // What the usage restores is the spend, and nothing else.
        counters.answered = 0;
        counters.llm_failures = 0;
        counters.last_turn_at = 0;
        assert_eq!(usage.counters(), counters);
        assert!(!usage.is_nothing() && ChatUsage::default().is_nothing());
        assert_eq!(decode_usage(&[3, 0]), Err(RecordError::UnknownVersion(3)));
    }
}
