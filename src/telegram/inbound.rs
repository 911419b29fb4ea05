//! What a user sent, in the form the actors work with.
//!
//! The ingress turns each Telegram update into an [`Inbound`] (the console
//! front, each line it reads); nothing past the ingress sees teloxide's
//! update types. Messages, edited texts and button presses (callback
//! queries, [`InboundKind::Callback`]) are; updates that are not for us
//! (channel posts, commands addressed to another bot) become `None`.
//! Commands are parsed here, once, into a [`Command`]
//! ([`super::command`]).

use std::path::PathBuf;
use std::time::Instant;

use teloxide::types::{
    CallbackQuery, ChatKind, ChatPublic, FileMeta, Message, MessageKind, PhotoSize, PublicChatKind,
    PublicChatSupergroup, Update, UpdateKind,
};

use super::command::{self, Command, Parsed};
use crate::config::{CommandConfig, Config, MediaConfig};
use crate::input;

pub use super::session_key::{ChatId, SessionKey, ThreadId};
pub use teloxide::types::MessageId;

/// One message from a user, addressed to one conversation's session (a
/// chat's, or a forum topic's: [`SessionKey`]).
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Telegram's update id: increasing, unique per bot.
    pub update_id: u32,
    /// The conversation: the chat to answer in and, in a forum supergroup,
    /// the topic (the session key).
    pub key: SessionKey,
    /// The sender, when Telegram names one.
    pub user_id: Option<u64>,
    /// The sender's `language_code`, which picks the reply language.
    pub language_code: Option<String>,
    /// What was sent.
    pub kind: InboundKind,
    /// When the ingress received it, for end-to-end latency.
    pub received_at: Instant,
    /// When the user sent it (Telegram's `date`, Unix seconds); `None` for
    /// updates replayed from the store, which are never merged with others.
    pub sent_at: Option<i64>,
    /// Set by the ingress when the rate limiter says not to answer it.
    pub refused: Option<Refused>,
    /// In group chats, the sender's first name: the history names speakers.
    pub speaker: Option<String>,
    /// The message's own id in its chat: in groups the answer is sent as a
    /// reply to it. `None` for the console's lines.
    pub message_id: Option<MessageId>,
    /// What the message replies to, when it is a reply with text to quote
    /// (boxed: most messages are not replies).
    pub reply_to: Option<Box<Quoted>>,
}

/// The text a message replies to, as the prompt quotes it: Telegram's
/// partial `quote` when the user picked one, else the replied message's
/// text or caption; cleaned ([`input::clean`]) and cut to
/// `input.max_quote_chars`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quoted {
    /// The quoted text (ending in `…` when it was cut).
    pub text: String,
    /// The replied message is one of this bot's own answers.
    pub from_bot: bool,
    /// The user quoted only part of the message.
    pub partial: bool,
}

impl Quoted {
    /// What `message` replies to, if it is a reply with text to quote;
    /// `max_chars` bounds the text (characters).
    pub fn of(message: &Message, bot_username: &str, max_chars: usize) -> Option<Self> {
        let original = message.reply_to_message();
        let from_bot = original.is_some_and(|original| is_from(original, bot_username));
        let (text, partial) = match message.quote() {
            Some(quote) => (quote.text.as_str(), true),
            None => (original?.text().or_else(|| original?.caption())?, false),
        };
        Self::bounded(text, from_bot, partial, max_chars)
    }

    /// `text` cleaned and cut to `max_chars` characters (an ellipsis marks
    /// the cut); `None` when nothing is left of it.
    pub fn bounded(text: &str, from_bot: bool, partial: bool, max_chars: usize) -> Option<Self> {
        let cleaned = input::clean(text);
        if cleaned.is_empty() || max_chars == 0 {
            return None;
        }
        let text = input::cut_chars(&cleaned, max_chars);
        Some(Self {
            text,
            from_bot,
            partial,
        })
    }
}

/// Whether `message` was sent by the bot named `bot_username`.
fn is_from(message: &Message, bot_username: &str) -> bool {
    message
        .from
        .as_ref()
        .and_then(|author| author.username.as_deref())
        .is_some_and(|name| name.eq_ignore_ascii_case(bot_username))
}

/// The rate limiter's "no" for an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub reason: RefusalReason,
    /// Whether to tell the sender (once per window); otherwise no reply.
    pub notify: bool,
}

/// Why an update is not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// Over a rate limit; may try again after `retry_in`.
    RateLimited {
        /// When.
        retry_in: std::time::Duration,
    },
    /// The sender is banned.
    Banned,
    /// Allowlist mode, and the sender is not on the list.
    NotAllowed,
}

/// The content of an [`Inbound`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundKind {
    /// Plain text for the assistant.
    Text(String),
    /// `/name args`, parsed.
    Command(Command),
    /// A photo, voice note, audio file, video note or document, with its
    /// caption.
    Media(MediaMessage),
    /// A sticker, location, contact or other message without text or media
    /// the bot reads.
    NonText,
    /// A text message the user edited, with its new text (the message is
    /// [`Inbound::message_id`]).
    Edited(String),
    /// A button of one of the bot's messages was pressed (a callback
    /// query); [`Inbound::user_id`] is who pressed it.
    Callback(Press),
    /// A message of a Business fan chat kept as context only, never
    /// answered: the creator's own (`by_owner`, an assistant turn: what
    /// "the creator" said), or a fan's that is not to be answered (`off`
    /// mode, outside the active hours, over the fan's limits).
    Context {
        /// Its text.
        text: String,
        /// The account's owner (the creator) wrote it.
        by_owner: bool,
    },
    /// Messages of a Business fan chat were deleted (by the fan or the
    /// creator): they leave the conversation's history.
    Deleted(Vec<MessageId>),
    /// The creator's own reply to a suggestion they tapped ✏️ Edit on:
    /// their next text in the control room, routed to the fan's
    /// conversation by the front.
    CreatorReply {
        /// The suggestion it replaces.
        seq: u32,
        /// What the creator wrote.
        text: String,
    },
}

/// A button press: a callback query on one of the bot's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Press {
    /// The query's id, for `answerCallbackQuery`.
    pub query_id: String,
    /// The button's callback data, as the client sent it (untrusted; read
    /// with [`super::buttons::Action::decode`]).
    pub data: String,
    /// The message whose button was pressed.
    pub message_id: MessageId,
}

impl Press {
    /// What the press asks for; `None` when the data is not the bot's.
    pub fn action(&self) -> Option<super::buttons::Action> {
        super::buttons::Action::decode(&self.data)
    }
}

/// A message carrying files: one, or an album's several merged into one
/// turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaMessage {
    /// The files, in the order sent.
    pub attachments: Vec<Attachment>,
    /// The caption (in a group without the bot's `@mention`); `None` when
    /// there is none or it is a command.
    pub caption: Option<String>,
    /// The caption was a command (`/caption for my beach post`): it applies
    /// to the files.
    pub command: Option<Command>,
    /// Telegram's album id: the album's photos arrive as separate updates
    /// and are answered as one turn.
    pub media_group: Option<String>,
}

/// One file of a [`MediaMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// What it is, which decides how it is read.
    pub kind: AttachmentKind,
    /// Where its bytes are.
    pub file: FileRef,
    /// Its size in bytes, when Telegram says.
    pub size: Option<u64>,
    /// Its length in seconds (voice, audio, video notes).
    pub duration: Option<u32>,
    /// The sender's file name (documents, audio files).
    pub file_name: Option<String>,
    /// The MIME type Telegram reports.
    pub mime_type: Option<String>,
}

/// What an [`Attachment`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachmentKind {
    /// A photo: shown to a vision model.
    Photo,
    /// A voice note: transcribed.
    Voice,
    /// An audio file: transcribed.
    Audio,
    /// A round video message: its sound is transcribed.
    VideoNote,
    /// A file: read as text or PDF when it is one.
    Document,
    /// A video, animation or other file kind the bot cannot read.
    Unsupported,
}

impl AttachmentKind {
    /// Its label in logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Photo => "photo",
            Self::Voice => "voice",
            Self::Audio => "audio",
            Self::VideoNote => "video_note",
            Self::Document => "document",
            Self::Unsupported => "unsupported",
        }
    }

    /// Whether it is listened to (transcribed).
    pub fn is_audio(self) -> bool {
        matches!(self, Self::Voice | Self::Audio | Self::VideoNote)
    }
}

/// Where an attachment's bytes are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRef {
    /// A Telegram file: `getFile`, then the file download URL.
    Telegram {
        /// Telegram's `file_id` (valid for this bot, for a long time).
        file_id: String,
    },
    /// A file on this machine (the console front's `/image PATH`).
    Local(PathBuf),
}

impl MediaMessage {
    /// What a Business fan chat's history keeps of it (the file itself is
    /// never fetched): `[photo]`, `[voice message]` … one per file, then
    /// the caption, as in `[photo] at the beach`. Fixed English words: the
    /// model reads them, nobody else.
    pub fn marker(&self) -> String {
        let mut marker: Vec<&str> = self
            .attachments
            .iter()
            .map(|attachment| match attachment.kind {
                AttachmentKind::Photo => "[photo]",
                AttachmentKind::Voice => "[voice message]",
                AttachmentKind::Audio => "[audio]",
                AttachmentKind::VideoNote => "[video message]",
                AttachmentKind::Document => "[file]",
                AttachmentKind::Unsupported => "[video]",
            })
            .collect();
        if let Some(caption) = &self.caption {
            marker.push(caption);
        }
        marker.join(" ")
    }

    /// What answering it costs against the per-user LLM limit (LLM calls):
    /// its most expensive file's `media.*_cost`, or one call for a command
    /// or a caption alone.
    pub fn cost(&self, media: &MediaConfig) -> u32 {
        self.attachments
            .iter()
            .map(|attachment| media.cost(attachment.kind))
            .max()
            .unwrap_or(0)
            .max(1)
    }
}

impl Inbound {
    /// Whether answering it takes an LLM call: text, and the commands that
    /// do ([`Command::costs_llm_call`]).
    pub fn costs_llm_call(&self) -> bool {
        match &self.kind {
            InboundKind::Text(_) => true,
            InboundKind::Command(command) => command.costs_llm_call(),
            // Unsupported files are answered from the bot's texts, but what
            // it can read costs a call; the session decides the rest.
            InboundKind::Media(media) => media
                .attachments
                .iter()
                .any(|attachment| attachment.kind != AttachmentKind::Unsupported),
            InboundKind::NonText => false,
            InboundKind::Edited(_) => true,
            InboundKind::Callback(press) => {
                press.action().is_some_and(|action| action.costs_llm_call())
            }
            InboundKind::Context { .. }
            | InboundKind::Deleted(_)
            | InboundKind::CreatorReply { .. } => false,
        }
    }

    /// LLM calls answering it costs against `limits.user_llm_per_minute`:
    /// 0 for the bot's own replies, one for text, more for media
    /// (`media.*_cost`).
    pub fn llm_cost(&self, media: &MediaConfig) -> u32 {
        match &self.kind {
            InboundKind::Media(message) if self.costs_llm_call() => message.cost(media),
            _ => u32::from(self.costs_llm_call()),
        }
    }

    /// Converts an update; `None` when it is not a message for this bot.
    /// `bot_username` is used to ignore `/command@other_bot`; the config
    /// gives the assistant commands and the media limits.
    pub fn from_update(update: &Update, bot_username: &str, config: &Config) -> Option<Self> {
        let (message, edited) = match &update.kind {
            UpdateKind::Message(message) => (message, false),
            UpdateKind::EditedMessage(message) => (message, true),
            UpdateKind::CallbackQuery(query) => return Self::from_press(update.id.0, query),
            UpdateKind::BusinessMessage(message) => {
                return Self::from_business(update.id.0, message, config);
            }
            UpdateKind::EditedBusinessMessage(message) => {
                return Self::from_business_edit(update.id.0, message, config);
            }
            UpdateKind::Error(raw) => return Self::from_deleted(update.id.0, raw),
            _ => return None,
        };
        let assistants = &config.commands;
        let kind = if message.chat.is_private() {
            classify(message, bot_username, assistants, &config.media)?
        } else {
            classify_in_group(message, bot_username, assistants, &config.media)?
        };
        // Only an edited text is answered again (an edited command or
        // caption is not); the session decides whether it still may be.
        let kind = match (edited, kind) {
            (false, kind) => kind,
            (true, InboundKind::Text(text)) => InboundKind::Edited(text),
            (true, _) => return None,
        };
        let user = message.from.as_ref();
        Some(Self {
            update_id: update.id.0,
            key: SessionKey::new(message.chat.id, topic(message)),
            user_id: user.map(|u| u.id.0),
            language_code: user.and_then(|u| u.language_code.clone()),
            kind,
            received_at: Instant::now(),
            sent_at: Some(message.date.timestamp()),
            refused: None,
            speaker: (!message.chat.is_private())
                .then(|| user.map(|u| u.first_name.clone()))
                .flatten(),
            message_id: Some(message.id),
            reply_to: Quoted::of(message, bot_username, config.input.max_quote_chars).map(Box::new),
        })
    }
}

impl Inbound {
    /// A message of a Business fan chat (`business_message`): its text, in
    /// the conversation of (connection, fan chat). Whether it is the
    /// creator's own, and whether it is answered, is decided on intake
    /// against the connection ([`crate::front`]). Text is read; a photo,
    /// voice note, file and the like comes as [`InboundKind::Media`] (only
    /// what it is and its caption: the intake keeps it as a marker, never
    /// downloaded); stickers and other messages are ignored (`None`), as
    /// are messages without a connection id.
    fn from_business(update_id: u32, message: &Message, config: &Config) -> Option<Self> {
        let MessageKind::Common(common) = &message.kind else {
            return None;
        };
        let connection = common.business_connection_id.as_ref()?;
        let user = message.from.as_ref();
        let kind = match message.text() {
            // Away, greeting and scheduled messages Telegram sends for the
            // creator are the creator's, whoever `from` names.
            Some(text) if common.is_from_offline => InboundKind::Context {
                text: text.to_owned(),
                by_owner: true,
            },
            Some(text) => InboundKind::Text(text.to_owned()),
            None => {
                let media = fan_chat_media(message, &config.media)?;
                if common.is_from_offline {
                    InboundKind::Context {
                        text: media.marker(),
                        by_owner: true,
                    }
                } else {
                    InboundKind::Media(media)
                }
            }
        };
        Some(Self {
            update_id,
            key: SessionKey::business(connection.0.as_str(), message.chat.id),
            user_id: user.map(|u| u.id.0),
            language_code: user.and_then(|u| u.language_code.clone()),
            kind,
            received_at: Instant::now(),
            sent_at: Some(message.date.timestamp()),
            refused: None,
            // The fan's name, for the creator's `/fans` list; taken out on
            // intake, so it is neither stored nor shown to the model.
            speaker: user.map(|u| u.first_name.clone()),
            message_id: Some(message.id),
            reply_to: Quoted::of(message, "", config.input.max_quote_chars).map(Box::new),
        })
    }

    /// An `edited_business_message`: the message's new text (a file's:
    /// its marker with the new caption, as [`MediaMessage::marker`]) as
    /// [`InboundKind::Edited`] in the fan chat's conversation, which
    /// replaces the history turn it became, if it still has it. The name of
    /// whoever edited it is not kept (`/fans` is fed by new messages).
    fn from_business_edit(update_id: u32, message: &Message, config: &Config) -> Option<Self> {
        let mut inbound = Self::from_business(update_id, message, config)?;
        inbound.kind = match std::mem::replace(&mut inbound.kind, InboundKind::NonText) {
            InboundKind::Text(text) | InboundKind::Context { text, .. } => {
                InboundKind::Edited(text)
            }
            InboundKind::Media(media) => InboundKind::Edited(media.marker()),
            _ => return None,
        };
        inbound.speaker = None;
        Some(inbound)
    }

    /// A `deleted_business_messages` update, read from its raw JSON
    /// (teloxide 0.17 cannot: see [`super::updates::read_update`]); `None`
    /// for any other unreadable update.
    fn from_deleted(update_id: u32, raw: &serde_json::Value) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Deleted {
            business_connection_id: String,
            chat: ChatRef,
            message_ids: Vec<i32>,
        }
        #[derive(serde::Deserialize)]
        struct ChatRef {
            id: i64,
        }
        let deleted = raw.get("deleted_business_messages")?;
        let deleted = <Deleted as serde::Deserialize>::deserialize(deleted).ok()?;
        Some(Self {
            update_id,
            key: SessionKey::business(deleted.business_connection_id, ChatId(deleted.chat.id)),
            user_id: None,
            language_code: None,
            kind: InboundKind::Deleted(deleted.message_ids.into_iter().map(MessageId).collect()),
            received_at: Instant::now(),
            sent_at: None,
            refused: None,
            speaker: None,
            message_id: None,
            reply_to: None,
        })
    }

    /// A button press on one of the bot's messages; `None` for a press
    /// without data (a game) or without a message (inline mode), which
    /// this bot never offers.
    fn from_press(update_id: u32, query: &CallbackQuery) -> Option<Self> {
        let message = query.message.as_ref()?;
        let data = query.data.clone()?;
        let chat = message.chat();
        Some(Self {
            update_id,
            // A press in a forum topic belongs to that topic's conversation.
            key: SessionKey::new(chat.id, message.regular_message().and_then(topic)),
            user_id: Some(query.from.id.0),
            language_code: query.from.language_code.clone(),
            kind: InboundKind::Callback(Press {
                query_id: query.id.0.clone(),
                data,
                message_id: message.id(),
            }),
            received_at: Instant::now(),
            sent_at: None,
            refused: None,
            speaker: (!chat.is_private()).then(|| query.from.first_name.clone()),
            // Not a message of the user's: nothing to reply to or quote.
            message_id: None,
            reply_to: None,
        })
    }
}

/// A fan chat's file (or the creator's there): what it is and its
/// caption, never a command (a fan does not command the bot). `None` for
/// what the bot does not read (stickers, locations, …).
fn fan_chat_media(message: &Message, media: &MediaConfig) -> Option<MediaMessage> {
    let attachment = attachment(message, media)?;
    Some(MediaMessage {
        attachments: vec![attachment],
        caption: message
            .caption()
            .map(str::trim)
            .filter(|caption| !caption.is_empty())
            .map(str::to_owned),
        command: None,
        media_group: message.media_group_id().map(|id| id.0.clone()),
    })
}

/// The forum topic `message` was sent in: its thread, only for a topic
/// message of a forum supergroup. A reply thread of an ordinary group is
/// not a topic (one conversation), and the General topic has no thread id
/// (it is the chat's own conversation).
fn topic(message: &Message) -> Option<ThreadId> {
    let forum = matches!(
        &message.chat.kind,
        ChatKind::Public(ChatPublic {
            kind: PublicChatKind::Supergroup(PublicChatSupergroup { is_forum: true, .. }),
            ..
        })
    );
    message
        .thread_id
        .filter(|_| forum && message.is_topic_message)
}

fn classify(
    message: &Message,
    bot_username: &str,
    assistants: &[CommandConfig],
    media: &MediaConfig,
) -> Option<InboundKind> {
    if let Some(attachment) = attachment(message, media) {
        return media_message(message, attachment, bot_username, assistants, None);
    }
    let Some(text) = message.text() else {
        return Some(InboundKind::NonText);
    };
    classify_private_text(text, bot_username, assistants)
}

/// A message's file, if it has one the bot knows about.
fn attachment(message: &Message, media: &MediaConfig) -> Option<Attachment> {
    let with = |kind, file: &FileMeta| Attachment {
        kind,
        file: FileRef::Telegram {
            file_id: file.id.0.clone(),
        },
        size: known_size(file),
        duration: None,
        file_name: None,
        mime_type: None,
    };
    if let Some(sizes) = message.photo() {
        let chosen = choose_photo_size(sizes, media.max_image_bytes)?;
        return Some(with(AttachmentKind::Photo, &chosen.file));
    }
    if let Some(voice) = message.voice() {
        return Some(Attachment {
            duration: Some(voice.duration.seconds()),
            mime_type: voice.mime_type.as_ref().map(ToString::to_string),
            ..with(AttachmentKind::Voice, &voice.file)
        });
    }
    if let Some(audio) = message.audio() {
        return Some(Attachment {
            duration: Some(audio.duration.seconds()),
            file_name: audio.file_name.clone(),
            mime_type: audio.mime_type.as_ref().map(ToString::to_string),
            ..with(AttachmentKind::Audio, &audio.file)
        });
    }
    if let Some(note) = message.video_note() {
        return Some(Attachment {
            duration: Some(note.duration.seconds()),
            mime_type: Some("video/mp4".into()),
            file_name: Some("video_note.mp4".into()),
            ..with(AttachmentKind::VideoNote, &note.file)
        });
    }
    if let Some(document) = message.document() {
        return Some(Attachment {
            file_name: document.file_name.clone(),
            mime_type: document.mime_type.as_ref().map(ToString::to_string),
            ..with(AttachmentKind::Document, &document.file)
        });
    }
    if let Some(video) = message.video() {
        return Some(with(AttachmentKind::Unsupported, &video.file));
    }
    if let Some(animation) = message.animation() {
        return Some(with(AttachmentKind::Unsupported, &animation.file));
    }
    None
}

/// Telegram reports `u32::MAX` (teloxide's fallback) when it gave no size.
fn known_size(file: &FileMeta) -> Option<u64> {
    (file.size != u32::MAX).then_some(u64::from(file.size))
}

/// The largest size of a photo within `max_bytes` (sizes of unknown bytes
/// count as fitting); the smallest when none fits, so the session can say
/// the photo is too large.
fn choose_photo_size(sizes: &[PhotoSize], max_bytes: u64) -> Option<&PhotoSize> {
    let area = |size: &&PhotoSize| u64::from(size.width) * u64::from(size.height);
    sizes
        .iter()
        .filter(|size| known_size(&size.file).is_none_or(|bytes| bytes <= max_bytes))
        .max_by_key(area)
        .or_else(|| sizes.iter().min_by_key(area))
}

/// A media message: the attachment with its caption, which may be a
/// command applying to it. `group_text` is the caption a group message
/// was addressed with (the mention removed).
fn media_message(
    message: &Message,
    attachment: Attachment,
    bot_username: &str,
    assistants: &[CommandConfig],
    group_text: Option<String>,
) -> Option<InboundKind> {
    let caption = group_text.or_else(|| message.caption().map(str::to_owned));
    with_caption(
        attachment,
        caption.as_deref().unwrap_or_default(),
        bot_username,
        assistants,
        message.media_group_id().map(|id| id.0.clone()),
    )
}

/// A media message of one file: its caption, or the command the caption
/// is; `None` for a command addressed to another bot.
fn with_caption(
    attachment: Attachment,
    caption: &str,
    bot_username: &str,
    assistants: &[CommandConfig],
    media_group: Option<String>,
) -> Option<InboundKind> {
    let caption = caption.trim();
    let (caption, command) = if caption.is_empty() {
        (None, None)
    } else {
        match command::parse(caption, bot_username, assistants) {
            Parsed::Command(command) => (None, Some(command)),
            Parsed::ForAnotherBot => return None,
            Parsed::Text => (Some(caption.to_owned()), None),
        }
    };
    Some(InboundKind::Media(MediaMessage {
        attachments: vec![attachment],
        caption,
        command,
        media_group,
    }))
}

/// What a text sent in a private chat is: a command (`/name args`), plain
/// text, or `None` for a command addressed to another bot
/// (`/start@other_bot`). The console front classifies its lines here too.
pub fn classify_private_text(
    text: &str,
    bot_username: &str,
    assistants: &[CommandConfig],
) -> Option<InboundKind> {
    Some(match command::parse(text, bot_username, assistants) {
        Parsed::Command(command) => InboundKind::Command(command),
        Parsed::ForAnotherBot => return None,
        Parsed::Text => InboundKind::Text(text.to_owned()),
    })
}

/// What the console's `/image PATH`, `/voice PATH` and `/file PATH` lines
/// send: a local file of `kind`, with the rest of the line as its caption
/// (which may be a command). `None` for a caption command addressed to
/// another bot.
pub fn local_media(
    kind: AttachmentKind,
    path: PathBuf,
    caption: &str,
    assistants: &[CommandConfig],
) -> Option<InboundKind> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned());
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mime_type = match (kind, extension.as_str()) {
        (AttachmentKind::Voice, "ogg" | "oga" | "opus") => Some("audio/ogg"),
        (AttachmentKind::Voice, "mp3") => Some("audio/mpeg"),
        (AttachmentKind::Voice, "wav") => Some("audio/wav"),
        (AttachmentKind::Voice, "m4a" | "mp4") => Some("audio/mp4"),
        (AttachmentKind::Voice, "flac") => Some("audio/flac"),
        (AttachmentKind::Voice, "webm") => Some("audio/webm"),
        _ => None,
    };
    let attachment = Attachment {
        kind,
        file: FileRef::Local(path),
        size: None,
        duration: None,
        file_name,
        mime_type: mime_type.map(str::to_owned),
    };
    with_caption(attachment, caption, "", assistants, None)
}

/// In a group the bot answers only what is addressed to it: its commands, a
/// message mentioning `@bot_username`, or a reply to one of its messages.
/// Everything else is `None`: never routed, never stored.
fn classify_in_group(
    message: &Message,
    bot_username: &str,
    assistants: &[CommandConfig],
    media: &MediaConfig,
) -> Option<InboundKind> {
    // Unaddressed media is dropped here, before anything is downloaded.
    let attachment = attachment(message, media);
    let text = match &attachment {
        Some(_) => message.caption().unwrap_or_default(),
        None => message.text()?,
    };
    if let Parsed::Command(command) = command::parse(text, bot_username, assistants) {
        return match attachment {
            Some(attachment) => media_message(message, attachment, bot_username, assistants, None),
            None => Some(InboundKind::Command(command)),
        };
    }
    let mention = format!("@{bot_username}");
    let mentioned = text.to_lowercase().contains(&mention.to_lowercase());
    let replied_to_bot = message
        .reply_to_message()
        .is_some_and(|original| is_from(original, bot_username));
    if !mentioned && !replied_to_bot {
        return None;
    }
    let without_mention = remove_ignore_case(text, &mention);
    let without_mention = without_mention.trim().to_owned();
    match attachment {
        Some(attachment) => media_message(
            message,
            attachment,
            bot_username,
            assistants,
            Some(without_mention),
        ),
        None => Some(InboundKind::Text(without_mention)),
    }
}

/// `text` without any `needle` (ASCII case-insensitive).
fn remove_ignore_case(text: &str, needle: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.to_ascii_lowercase().find(&needle.to_ascii_lowercase()) {
        out.push_str(&rest[..at]);
        rest = &rest[at + needle.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn config() -> Config {
        Config::from_defaults_with("media.max_image_bytes = 50000\n").unwrap()
    }

    #[test]
    fn business_messages_and_deletions_belong_to_the_fan_chat() {
        let message = r#"{"update_id":2,"business_message":{"message_id":1,"date":1764650000,
            "chat":{"id":6001,"type":"private","first_name":"Fan"},
            "from":{"id":6001,"is_bot":false,"first_name":"Fan"},
            "text":"hi","business_connection_id":"c1"}}"#;
        let read = super::super::updates::read_update(message).unwrap();
        let inbound = Inbound::from_update(&read.update.unwrap(), "bot", &config()).unwrap();
        assert_eq!(inbound.key, SessionKey::business("c1", ChatId(6001)));
        assert_eq!(inbound.kind, InboundKind::Text("hi".into()));
        assert_eq!(inbound.speaker.as_deref(), Some("Fan"));

        let deleted = r#"{"update_id":3,"deleted_business_messages":{"business_connection_id":"c1",
            "chat":{"id":6001,"type":"private","first_name":"Fan"},"message_ids":[1,2]}}"#;
        let read = super::super::updates::read_update(deleted).unwrap();
        let inbound = Inbound::from_update(&read.update.unwrap(), "bot", &config()).unwrap();
        assert_eq!(inbound.key, SessionKey::business("c1", ChatId(6001)));
        assert_eq!(
            inbound.kind,
            InboundKind::Deleted(vec![MessageId(1), MessageId(2)])
        );
    }

    #[test]
    fn fan_chat_files_and_edits_are_read_as_markers_and_edits() {
        let business = |kind: &str, fields: &str| {
            let raw = format!(
                r#"{{"update_id":4,"{kind}":{{"message_id":5,"date":1764650000,
                "chat":{{"id":6001,"type":"private","first_name":"Fan"}},
                "from":{{"id":6001,"is_bot":false,"first_name":"Fan"}},
                "business_connection_id":"c1",{fields}}}}}"#
            );
            let read = super::super::updates::read_update(&raw).unwrap();
            Inbound::from_update(&read.update.unwrap(), "bot", &config())
        };
        let captioned = format!(
            r#"{},"caption":" /start at the beach ""#,
            photo(&[("p", 90, 1_000)])
        );
        let media = media_of(business("business_message", &captioned));
        assert_eq!(media.caption.as_deref(), Some("/start at the beach"));
        assert_eq!(media.command, None, "a fan's caption is never a command");
        assert_eq!(media.marker(), "[photo] /start at the beach");
        let voice = r#""voice":{"file_id":"v","file_unique_id":"uv","duration":3,"mime_type":"audio/ogg","file_size":3000}"#;
        assert_eq!(
            media_of(business("business_message", voice)).marker(),
            "[voice message]"
        );
        let sticker = r#""sticker":{"file_id":"s","file_unique_id":"us","type":"regular","width":1,"height":1,"is_animated":false,"is_video":false}"#;
        assert!(business("business_message", sticker).is_none());

        let edited = business(
            "edited_business_message",
            r#""text":"hi again","edit_date":1764650100"#,
        )
        .unwrap();
        assert_eq!(edited.key, SessionKey::business("c1", ChatId(6001)));
        assert_eq!(edited.kind, InboundKind::Edited("hi again".into()));
        assert_eq!(edited.message_id, Some(MessageId(5)));
        assert_eq!(edited.speaker, None);
        let recaptioned = format!(
            r#"{},"caption":"sunset","edit_date":1764650100"#,
            photo(&[("p", 90, 1_000)])
        );
        assert_eq!(
            business("edited_business_message", &recaptioned)
                .unwrap()
                .kind,
            InboundKind::Edited("[photo] sunset".into())
        );
    }

    fn update(chat: &str, fields: &str) -> Update {
        serde_json::from_str(&format!(
            r#"{{"update_id":9,"message":{{"message_id":1,"date":1700000000,"chat":{chat},
            "from":{{"id":5,"is_bot":false,"first_name":"Ann"}},{fields}}}}}"#
        ))
        .unwrap()
    }

    const PRIVATE: &str = r#"{"id":5,"type":"private","first_name":"Ann"}"#;
    const GROUP: &str = r#"{"id":-7,"type":"group","title":"G"}"#;

    fn photo(sizes: &[(&str, u32, u32)]) -> String {
        let sizes: Vec<String> = sizes
            .iter()
            .map(|(id, side, bytes)| {
                format!(
                    r#"{{"file_id":"{id}","file_unique_id":"u{id}","width":{side},"height":{side},"file_size":{bytes}}}"#
                )
            })
            .collect();
        format!(r#""photo":[{}]"#, sizes.join(","))
    }

    fn media_of(inbound: Option<Inbound>) -> MediaMessage {
        match inbound.expect("a message for the bot").kind {
            InboundKind::Media(media) => media,
            other => panic!("not media: {other:?}"),
        }
    }

    #[test]
    fn the_largest_photo_size_within_the_limit_is_chosen() {
        let config = config();
        let fields = photo(&[("s", 90, 1_000), ("m", 320, 20_000), ("l", 1280, 90_000)]);
        let media = media_of(Inbound::from_update(
            &update(PRIVATE, &fields),
            "bot",
            &config,
        ));
        assert_eq!(
            media.attachments[0].file,
            FileRef::Telegram {
                file_id: "m".into()
            }
        );
        assert_eq!(media.attachments[0].size, Some(20_000));
        // None fits: the smallest, so the session can say it is too large.
        let fields = photo(&[("l", 1280, 90_000), ("xl", 2560, 300_000)]);
        let media = media_of(Inbound::from_update(
            &update(PRIVATE, &fields),
            "bot",
            &config,
        ));
        assert_eq!(media.attachments[0].size, Some(90_000));
    }

    #[test]
    fn captions_are_text_or_commands_and_albums_keep_their_id() {
        let config = config();
        let fields = format!(
            r#"{},"caption":"/caption for my beach post","media_group_id":"g1""#,
            photo(&[("a", 90, 100)])
        );
        let media = media_of(Inbound::from_update(
            &update(PRIVATE, &fields),
            "bot",
            &config,
        ));
        assert!(matches!(
            media.command,
            Some(Command::Assistant { ref name, ref args, .. }) if name == "caption" && args == "for my beach post"
        ));
        assert_eq!(media.caption, None);
        assert_eq!(media.media_group.as_deref(), Some("g1"));
        let voice = r#""voice":{"file_id":"v","file_unique_id":"uv","duration":4,"mime_type":"audio/ogg","file_size":3000},"caption":"hi""#;
        let inbound = Inbound::from_update(&update(PRIVATE, voice), "bot", &config).unwrap();
        assert_eq!(inbound.llm_cost(&config.media), config.media.audio_cost);
        let media = media_of(Some(inbound));
        assert_eq!(media.attachments[0].kind, AttachmentKind::Voice);
        assert_eq!(media.attachments[0].duration, Some(4));
        assert_eq!(media.caption.as_deref(), Some("hi"));
    }

    #[test]
    fn only_edited_texts_are_kept_as_edits() {
        let config = config();
        let edited = |fields: &str| -> Update {
            serde_json::from_str(&format!(
                r#"{{"update_id":9,"edited_message":{{"message_id":7,"date":1700000000,"edit_date":1700000060,"chat":{PRIVATE},
                "from":{{"id":5,"is_bot":false,"first_name":"Ann"}},{fields}}}}}"#
            ))
            .unwrap()
        };
        let inbound =
            Inbound::from_update(&edited(r#""text":"new text""#), "bot", &config).unwrap();
        assert_eq!(inbound.kind, InboundKind::Edited("new text".into()));
        assert_eq!(inbound.message_id, Some(MessageId(7)));
        assert!(Inbound::from_update(&edited(r#""text":"/reset""#), "bot", &config).is_none());
        let caption = format!(r#"{},"caption":"new caption""#, photo(&[("a", 90, 100)]));
        assert!(Inbound::from_update(&edited(&caption), "bot", &config).is_none());
    }

    #[test]
    fn only_a_forum_topic_message_names_a_topic() {
        let config = config();
        const FORUM: &str = r#"{"id":-1001,"type":"supergroup","title":"F","is_forum":true}"#;
        const SUPERGROUP: &str = r#"{"id":-1002,"type":"supergroup","title":"S"}"#;
        let key = |chat: &str, fields: &str| {
            Inbound::from_update(&update(chat, fields), "bot", &config)
                .unwrap()
                .key
        };
        let in_topic = r#""text":"/start","is_topic_message":true,"message_thread_id":5"#;
        let topic = key(FORUM, in_topic);
        assert_eq!(topic.chat(), ChatId(-1001));
        assert_eq!(topic.thread_number(), Some(5));
        // An edit in a topic stays in it.
        let edited: Update = serde_json::from_str(&format!(
            r#"{{"update_id":9,"edited_message":{{"message_id":7,"date":1700000000,"edit_date":1700000060,"chat":{FORUM},
            "from":{{"id":5,"is_bot":false,"first_name":"Ann"}},"text":"@bot new","is_topic_message":true,"message_thread_id":5}}}}"#
        ))
        .unwrap();
        let edited = Inbound::from_update(&edited, "bot", &config).unwrap();
        assert_eq!(edited.key, topic);
        // The General topic, and a reply thread outside a forum, are the
        // whole chat's conversation.
        assert!(key(FORUM, r#""text":"/start""#).is_whole_chat());
        let reply_thread = r#""text":"/start","message_thread_id":5"#;
        assert!(key(FORUM, reply_thread).is_whole_chat());
        assert!(key(SUPERGROUP, reply_thread).is_whole_chat());
        assert!(key(SUPERGROUP, in_topic).is_whole_chat());
        assert!(key(PRIVATE, "\"text\":\"hi\"").is_whole_chat());
    }

    #[test]
    fn in_groups_only_addressed_media_is_kept() {
        let config = config();
        let plain = photo(&[("a", 90, 100)]);
        assert!(Inbound::from_update(&update(GROUP, &plain), "bot", &config).is_none());
        let mentioned = format!(r#"{plain},"caption":"@Bot what is it?""#);
        let media = media_of(Inbound::from_update(
            &update(GROUP, &mentioned),
            "bot",
            &config,
        ));
        assert_eq!(media.caption.as_deref(), Some("what is it?"));
        let command = format!(r#"{plain},"caption":"/caption sunset""#);
        assert!(Inbound::from_update(&update(GROUP, &command), "bot", &config).is_some());
        let sticker = r#""sticker":{"file_id":"s","file_unique_id":"us","type":"regular","width":1,"height":1,"is_animated":false,"is_video":false}"#;
        let inbound = Inbound::from_update(&update(PRIVATE, sticker), "bot", &config).unwrap();
        assert_eq!(inbound.kind, InboundKind::NonText);
    }

    const BOT: &str = r#"{"id":1,"is_bot":true,"first_name":"B","username":"Bot"}"#;
    const BOB: &str = r#"{"id":6,"is_bot":false,"first_name":"Bob"}"#;

    /// A `reply_to_message` by `from` with `fields` (text or caption).
    fn replying(from: &str, chat: &str, fields: &str) -> String {
        format!(
            r#""reply_to_message":{{"message_id":40,"date":1699999999,"chat":{chat},"from":{from},{fields}}}"#
        )
    }

    #[test]
    fn a_reply_carries_the_replied_text_or_the_users_quote() {
        let config = config();
        let fields = format!(
            r#""text":"and this?",{}"#,
            replying(BOB, PRIVATE, r#""text":"see you at 5""#)
        );
        let inbound = Inbound::from_update(&update(PRIVATE, &fields), "bot", &config).unwrap();
        assert_eq!(inbound.message_id, Some(MessageId(1)));
        assert_eq!(
            inbound.reply_to.map(|quote| *quote),
            Some(Quoted {
                text: "see you at 5".into(),
                from_bot: false,
                partial: false,
            })
        );
        // Telegram's partial quote wins over the whole message; the bot's
        // own message is recognised by its username.
        let fields = format!(
            r#""text":"why?",{},"quote":{{"text":"at the pier","position":20,"is_manual":true}}"#,
            replying(BOT, GROUP, r#""text":"Try a sunrise shot at the pier.""#)
        );
        let inbound = Inbound::from_update(&update(GROUP, &fields), "bot", &config).unwrap();
        assert_eq!(inbound.kind, InboundKind::Text("why?".into()));
        assert_eq!(
            inbound.reply_to.map(|quote| *quote),
            Some(Quoted {
                text: "at the pier".into(),
                from_bot: true,
                partial: true,
            })
        );
        // A caption is quoted; a photo without one has nothing to quote.
        let caption = format!(
            r#""text":"nice",{}"#,
            replying(
                BOB,
                PRIVATE,
                &format!(r#"{},"caption":"my beach""#, photo(&[("a", 9, 9)]))
            )
        );
        let inbound = Inbound::from_update(&update(PRIVATE, &caption), "bot", &config).unwrap();
        assert_eq!(inbound.reply_to.unwrap().text, "my beach");
        let bare = format!(
            r#""text":"nice",{}"#,
            replying(BOB, PRIVATE, &photo(&[("a", 9, 9)]))
        );
        let inbound = Inbound::from_update(&update(PRIVATE, &bare), "bot", &config).unwrap();
        assert_eq!(inbound.reply_to, None);
        // Not a reply at all.
        let inbound =
            Inbound::from_update(&update(PRIVATE, r#""text":"hi""#), "bot", &config).unwrap();
        assert_eq!(inbound.reply_to, None);
    }

    #[test]
    fn quotes_are_cleaned_and_bounded() {
        let cut = Quoted::bounded("  abcdef  ", false, false, 3).unwrap();
        assert_eq!(cut.text, "abc…");
        let whole = Quoted::bounded("abc", true, false, 3).unwrap();
        assert_eq!(whole.text, "abc");
        assert!(whole.from_bot);
        // Invisible characters go, as in any user text.
        assert_eq!(
            Quoted::bounded("a\u{200B}b", false, false, 10)
                .unwrap()
                .text,
            "ab"
        );
        assert_eq!(Quoted::bounded(" \u{200B} ", false, false, 10), None);
        assert_eq!(Quoted::bounded("abc", false, false, 0), None);
        // Multi-byte characters are counted, never split.
        assert_eq!(
            Quoted::bounded("привет мир", false, false, 6).unwrap().text,
            "привет…"
        );
        let config = Config::from_defaults_with("input.max_quote_chars = 5\n").unwrap();
        let fields = format!(
            r#""text":"?",{}"#,
            replying(BOB, PRIVATE, r#""text":"a long message here""#)
        );
        let inbound = Inbound::from_update(&update(PRIVATE, &fields), "bot", &config).unwrap();
        assert_eq!(inbound.reply_to.unwrap().text, "a lon…");
    }

    #[test]
    fn mentions_are_removed_whatever_their_case() {
        assert_eq!(remove_ignore_case("@Bot hi @bot!", "@bot"), " hi !");
        assert_eq!(remove_ignore_case("жж @bot жж", "@BOT"), "жж  жж");
    }
}
