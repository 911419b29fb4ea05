//! Files and media messages of the fake Bot API.
//!
//! Telegram hands a bot a media message carrying only `file_id`s; the bot
//! resolves one with `getFile` to a `file_path` and downloads the bytes from
//! `GET /file/bot<TOKEN>/<file_path>`. This module fakes both steps over a
//! registry of files filled by [`FakeTelegram::add_file`], and builds the
//! media messages themselves with [`MediaUpdate`], so tests can drive the
//! whole photo/voice/document flow, its limits (Telegram's 20 MB download
//! cap) and its faults (failing getFile calls and downloads).
//!
//! A download must use a token the bot already used for an API method (the
//! fake learns tokens from the `/bot<TOKEN>/<method>` calls it serves); any
//! other token answers 404, as Telegram does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use std::sync::Arc;

use super::{
    FakeTelegram, Inner, Shared, TelegramFault, bot_user, error, fault_response, garbled, ok,
    param_str, private_chat,
};
use crate::{lock, unix_now, wait_until};

/// Largest file a bot may download, in bytes (20 MB): `getFile` answers
/// `400 Bad Request: file is too big` for anything larger, as the real Bot
/// API does.
pub const MAX_DOWNLOAD_SIZE: u64 = 20 * 1024 * 1024;

/// Title of the group chat of [`MediaUpdate::in_group`] messages.
const GROUP_TITLE: &str = "Test group";
/// `(width, height)` of the successive sizes of a photo, smallest first, as
/// Telegram sends them; further sizes keep growing.
const PHOTO_SIZES: [(u32, u32); 4] = [(90, 68), (320, 240), (800, 600), (1280, 960)];

/// The fake's file registry, download faults and counters.
#[derive(Debug, Default)]
pub(super) struct MediaState {
    /// Registered files by `file_id`.
    files: HashMap<String, StoredFile>,
    /// `file_path` → `file_id` (the latest file registered at that path).
    by_path: HashMap<String, String>,
    /// Files registered so far, for fresh ids.
    registered: u64,
    /// Statuses to answer instead of the next downloads.
    download_faults: VecDeque<u16>,
    /// Faults to answer instead of the next getFile calls.
    get_file_faults: VecDeque<TelegramFault>,
    get_file_calls: usize,
    downloads: usize,
    downloaded_paths: Vec<String>,
    /// Bot tokens seen on API method calls: the ones allowed to download.
    tokens: HashSet<String>,
}

impl MediaState {
    /// Remembers `token` (without the `bot` prefix) as one the bot uses.
    pub(super) fn saw_token(&mut self, token: &str) {
        if !self.tokens.contains(token) {
            self.tokens.insert(token.to_owned());
        }
    }

    /// `file_id`, `file_unique_id` and (for a registered file) `file_size`
    /// of the object describing `file_id` in a message.
    fn file_meta(&self, file_id: &str) -> Map<String, Value> {
        let mut meta = Map::new();
        meta.insert("file_id".into(), json!(file_id));
        match self.files.get(file_id) {
            Some(file) => {
                meta.insert("file_unique_id".into(), json!(file.unique_id));
                meta.insert("file_size".into(), json!(file.size));
            }
            None => {
                meta.insert(
                    "file_unique_id".into(),
                    json!(format!("AgADunknown{file_id}")),
                );
            }
        }
        meta
    }
}

/// A minimal JPEG of `width` × `height` pixels, `size` bytes long: the
/// JFIF and start-of-frame headers (enough for a reader of the dimensions,
/// not for a decoder of the pixels) and the end marker, padded with zeros
/// to `size` (or left at its 41 bytes if `size` is smaller). For photos
/// registered with [`FakeTelegram::add_file`] in tests and benchmarks.
pub fn jpeg(width: u16, height: u16, size: usize) -> Vec<u8> {
    let mut bytes = vec![
        0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0,
    ];
    // Start of frame (baseline): length 17, 8 bits, height, width, 3
    // components.
    bytes.extend([0xFF, 0xC0, 0x00, 0x11, 0x08]);
    bytes.extend(height.to_be_bytes());
    bytes.extend(width.to_be_bytes());
    bytes.extend([0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01]);
    bytes.extend([0xFF, 0xD9]);
    bytes.resize(size.max(bytes.len()), 0);
    bytes
}

/// A file registered with [`FakeTelegram::add_file`].
#[derive(Debug)]
struct StoredFile {
    unique_id: String,
    path: String,
    bytes: Bytes,
    /// The size getFile and messages report (may differ from `bytes.len()`).
    size: u64,
}

impl FakeTelegram {
    // ----------------------------------------------------------------- files

    /// Registers a downloadable file at `file_path` (e.g.
    /// `"photos/file_1.jpg"`, `"voice/file_2.oga"`,
    /// `"documents/notes.txt"`) and returns its fresh, unique `file_id`.
    /// A later file registered at the same path replaces it for downloads.
    pub fn add_file(&self, bytes: Vec<u8>, file_path: &str) -> String {
        let size = bytes.len() as u64;
        self.add_file_declaring(bytes, file_path, size)
    }

    /// Like [`add_file`](Self::add_file), but messages and getFile report
    /// `file_size = declared_size` whatever the length of `bytes` (for
    /// oversize tests without allocating megabytes). Above
    /// [`MAX_DOWNLOAD_SIZE`], getFile refuses the file.
    pub fn add_file_declaring(
        &self,
        bytes: Vec<u8>,
        file_path: &str,
        declared_size: u64,
    ) -> String {
        let mut inner = lock(&self.shared.inner);
        let media = &mut inner.media;
        media.registered += 1;
        let n = media.registered;
        let file_id = format!("BQACAgIAAxkBAAIfakeFile{n:04}");
        let file = StoredFile {
            unique_id: format!("AgADfake{n:04}"),
            path: file_path.to_owned(),
            bytes: Bytes::from(bytes),
            size: declared_size,
        };
        media.by_path.insert(file_path.to_owned(), file_id.clone());
        media.files.insert(file_id.clone(), file);
        file_id
    }

    /// Makes the next `n` downloads (with a valid token) answer HTTP
    /// `status` (e.g. 500, 502) instead of the bytes; queued after any
    /// still pending. They count in [`downloads`](Self::downloads) only.
    pub fn fail_next_downloads(&self, n: usize, status: u16) {
        let mut inner = lock(&self.shared.inner);
        inner
            .media
            .download_faults
            .extend(std::iter::repeat_n(status, n));
    }

    /// Makes the next `n` getFile calls fail with `fault` (queued after any
    /// still pending). [`TelegramFault::Garbled`] answers a 200 that is not
    /// JSON.
    pub fn fail_next_get_files(&self, n: usize, fault: TelegramFault) {
        let mut inner = lock(&self.shared.inner);
        inner
            .media
            .get_file_faults
            .extend(std::iter::repeat_n(fault, n));
    }

    /// Number of getFile calls, failed ones included.
    pub fn get_file_calls(&self) -> usize {
        lock(&self.shared.inner).media.get_file_calls
    }

    /// Number of download requests received (`GET /file/bot<TOKEN>/…`),
    /// successful or not.
    pub fn downloads(&self) -> usize {
        lock(&self.shared.inner).media.downloads
    }

    /// The `file_path` of every successful download, in order.
    pub fn downloaded_paths(&self) -> Vec<String> {
        lock(&self.shared.inner).media.downloaded_paths.clone()
    }

    /// Waits until at least `n` download requests were received (or
    /// `timeout` passes) and returns the count.
    pub async fn wait_for_downloads(&self, n: usize, timeout: Duration) -> usize {
        wait_until(&self.shared.files, timeout, || self.downloads() >= n).await;
        self.downloads()
    }

    // ---------------------------------------------------------------- pushing

    /// Queues the media message `media` for getUpdates. Returns the new
    /// update id.
    pub fn push_media(&self, media: MediaUpdate) -> i64 {
        let mut inner = lock(&self.shared.inner);
        let message = media.message(&mut inner);
        self.enqueue(&mut inner, message)
    }

    /// The update carrying `media`, as Telegram would post it to a webhook
    /// (not queued for getUpdates). Returns its id and JSON.
    pub fn media_update(&self, media: MediaUpdate) -> (i64, Value) {
        let mut inner = lock(&self.shared.inner);
        let update_id = inner.next_update_id;
        inner.next_update_id += 1;
        let message = media.message(&mut inner);
        (
            update_id,
            json!({"update_id": update_id, "message": message}),
        )
    }
}

/// What a [`MediaUpdate`] carries.
#[derive(Clone, Debug)]
enum Attachment {
    Photo(Vec<String>),
    Voice {
        file_id: String,
        duration: u32,
    },
    Audio {
        file_id: String,
        duration: u32,
        file_name: String,
    },
    VideoNote {
        file_id: String,
        duration: u32,
    },
    Document {
        file_id: String,
        file_name: String,
        mime_type: String,
    },
    Video {
        file_id: String,
    },
}

/// A user's media message, built up and then queued with
/// [`FakeTelegram::push_media`].
///
/// The sender is user `user_id` (first name `User`, language `en`), as with
/// [`FakeTelegram::push_text`]. File objects carry the `file_unique_id` and
/// `file_size` (declared size included) of files registered with
/// [`FakeTelegram::add_file`]; an unregistered `file_id` gets a made-up
/// unique id and no size (getFile then answers `invalid file_id`).
#[derive(Clone, Debug)]
pub struct MediaUpdate {
    chat_id: i64,
    user_id: u64,
    attachment: Attachment,
    caption: Option<String>,
    media_group_id: Option<String>,
    in_group: bool,
    reply_to_bot: bool,
}

impl MediaUpdate {
    fn new(chat_id: i64, user_id: u64, attachment: Attachment) -> MediaUpdate {
        MediaUpdate {
            chat_id,
            user_id,
            attachment,
            caption: None,
            media_group_id: None,
            in_group: false,
            reply_to_bot: false,
        }
    }

    /// A photo with one `PhotoSize` per id, smallest first as Telegram sends
    /// them (90×68, 320×240, 800×600, 1280×960, then larger).
    pub fn photo(chat_id: i64, user_id: u64, file_ids: &[&str]) -> MediaUpdate {
        let ids = file_ids.iter().map(|id| (*id).to_owned()).collect();
        MediaUpdate::new(chat_id, user_id, Attachment::Photo(ids))
    }

    /// A voice note (`audio/ogg`) lasting `duration_secs`.
    pub fn voice(chat_id: i64, user_id: u64, file_id: &str, duration_secs: u32) -> MediaUpdate {
        MediaUpdate::new(
            chat_id,
            user_id,
            Attachment::Voice {
                file_id: file_id.to_owned(),
                duration: duration_secs,
            },
        )
    }

    /// An audio file (`audio/mpeg`) named `file_name`.
    pub fn audio(
        chat_id: i64,
        user_id: u64,
        file_id: &str,
        duration_secs: u32,
        file_name: &str,
    ) -> MediaUpdate {
        MediaUpdate::new(
            chat_id,
            user_id,
            Attachment::Audio {
                file_id: file_id.to_owned(),
                duration: duration_secs,
                file_name: file_name.to_owned(),
            },
        )
    }

    /// A round video note (240×240).
    pub fn video_note(
        chat_id: i64,
        user_id: u64,
        file_id: &str,
        duration_secs: u32,
    ) -> MediaUpdate {
        MediaUpdate::new(
            chat_id,
            user_id,
            Attachment::VideoNote {
                file_id: file_id.to_owned(),
                duration: duration_secs,
            },
        )
    }

    /// A document named `file_name` of type `mime_type`.
    pub fn document(
        chat_id: i64,
        user_id: u64,
        file_id: &str,
        file_name: &str,
        mime_type: &str,
    ) -> MediaUpdate {
        MediaUpdate::new(
            chat_id,
            user_id,
            Attachment::Document {
                file_id: file_id.to_owned(),
                file_name: file_name.to_owned(),
                mime_type: mime_type.to_owned(),
            },
        )
    }

    /// A video (640×360, 5 s, `video/mp4`): a kind the bot does not handle.
    pub fn video(chat_id: i64, user_id: u64, file_id: &str) -> MediaUpdate {
        MediaUpdate::new(
            chat_id,
            user_id,
            Attachment::Video {
                file_id: file_id.to_owned(),
            },
        )
    }

    /// Sets the `caption`; one starting with `/` gets a `bot_command`
    /// caption entity over its first word.
    pub fn caption(mut self, caption: &str) -> MediaUpdate {
        self.caption = Some(caption.to_owned());
        self
    }

    /// Sets `media_group_id`: the message is one item of an album.
    pub fn album(mut self, media_group_id: &str) -> MediaUpdate {
        self.media_group_id = Some(media_group_id.to_owned());
        self
    }

    /// Sends the message in a chat of type `group` (title `Test group`);
    /// the caller's `chat_id` should then be negative.
    pub fn in_group(mut self) -> MediaUpdate {
        self.in_group = true;
        self
    }

    /// Makes the message a reply to the bot: to the last message the bot
    /// sent to the chat, or else to a made-up one from the bot.
    pub fn reply_to_bot(mut self) -> MediaUpdate {
        self.reply_to_bot = true;
        self
    }

    /// The `Message` object, with the chat's next message id.
    fn message(&self, inner: &mut Inner) -> Value {
        let chat = if self.in_group {
            json!({"id": self.chat_id, "type": "group", "title": GROUP_TITLE})
        } else {
            private_chat(self.chat_id)
        };
        let reply_to = self.reply_to_bot.then(|| {
            let last_sent = inner
                .sent_by_chat
                .get(&self.chat_id)
                .and_then(|indexes| indexes.last())
                .map(|&i| {
                    let sent = &inner.sent[i];
                    (sent.message_id, sent.text.clone())
                });
            let (message_id, text) = last_sent.unwrap_or_else(|| {
                (
                    inner.next_message_id(self.chat_id),
                    "An earlier answer.".to_owned(),
                )
            });
            json!({
                "message_id": message_id,
                "date": unix_now(),
                "chat": chat,
                "from": bot_user(),
                "text": text,
            })
        });
        let message_id = inner.next_message_id(self.chat_id);
        let mut message = Map::new();
        message.insert("message_id".into(), json!(message_id));
        message.insert("date".into(), json!(unix_now()));
        message.insert("chat".into(), chat);
        message.insert(
            "from".into(),
            json!({
                "id": self.user_id,
                "is_bot": false,
                "first_name": "User",
                "language_code": "en",
            }),
        );
        let (key, value) = self.attachment_json(&inner.media);
        message.insert(key.into(), value);
        if let Some(caption) = &self.caption {
            message.insert("caption".into(), json!(caption));
            if caption.starts_with('/') {
                let first_word = caption.split_whitespace().next().unwrap_or(caption);
                let length = first_word.encode_utf16().count();
                message.insert(
                    "caption_entities".into(),
                    json!([{"type": "bot_command", "offset": 0, "length": length}]),
                );
            }
        }
        if let Some(group) = &self.media_group_id {
            message.insert("media_group_id".into(), json!(group));
        }
        if let Some(reply_to) = reply_to {
            message.insert("reply_to_message".into(), reply_to);
        }
        Value::Object(message)
    }

    /// The message field holding the attachment and its value.
    fn attachment_json(&self, media: &MediaState) -> (&'static str, Value) {
        let with = |file_id: &str, fields: Value| {
            let mut object = media.file_meta(file_id);
            if let Value::Object(fields) = fields {
                object.extend(fields);
            }
            Value::Object(object)
        };
        match &self.attachment {
            Attachment::Photo(ids) => {
                let sizes = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        let (width, height) = PHOTO_SIZES.get(i).copied().unwrap_or_else(|| {
                            let k = u32::try_from(i).unwrap_or(u32::MAX);
                            (640_u32.saturating_mul(k), 480_u32.saturating_mul(k))
                        });
                        with(id, json!({"width": width, "height": height}))
                    })
                    .collect();
                ("photo", Value::Array(sizes))
            }
            Attachment::Voice { file_id, duration } => (
                "voice",
                with(
                    file_id,
                    json!({"duration": duration, "mime_type": "audio/ogg"}),
                ),
            ),
            Attachment::Audio {
                file_id,
                duration,
                file_name,
            } => (
                "audio",
                with(
                    file_id,
                    json!({
                        "duration": duration,
                        "file_name": file_name,
                        "mime_type": "audio/mpeg",
                    }),
                ),
            ),
            Attachment::VideoNote { file_id, duration } => (
                "video_note",
                with(file_id, json!({"length": 240, "duration": duration})),
            ),
            Attachment::Document {
                file_id,
                file_name,
                mime_type,
            } => (
                "document",
                with(
                    file_id,
                    json!({"file_name": file_name, "mime_type": mime_type}),
                ),
            ),
            Attachment::Video { file_id } => (
                "video",
                with(
                    file_id,
                    json!({
                        "width": 640,
                        "height": 360,
                        "duration": 5,
                        "mime_type": "video/mp4",
                    }),
                ),
            ),
        }
    }
}

// ------------------------------------------------------------------ server

/// `getFile`: the registered file's `File` object.
pub(super) fn get_file(shared: &Shared, params: &Map<String, Value>) -> Response {
    let mut inner = lock(&shared.inner);
    let media = &mut inner.media;
    media.get_file_calls += 1;
    let fault = media.get_file_faults.pop_front();
    let response = match fault {
        Some(TelegramFault::Garbled) => garbled(),
        Some(fault) => fault_response(&fault),
        None => {
            match param_str(params, "file_id").and_then(|id| Some((id, media.files.get(id)?))) {
                None => error(400, "Bad Request: invalid file_id"),
                Some((_, file)) if file.size > MAX_DOWNLOAD_SIZE => {
                    error(400, "Bad Request: file is too big")
                }
                Some((file_id, file)) => ok(&json!({
                    "file_id": file_id,
                    "file_unique_id": file.unique_id,
                    "file_size": file.size,
                    "file_path": file.path,
                })),
            }
        }
    };
    drop(inner);
    shared.files.notify_waiters();
    response
}

/// `GET /file/bot<TOKEN>/<file_path>`: the bytes of a registered file.
pub(super) async fn download(
    State(shared): State<Arc<Shared>>,
    Path((bot_token, file_path)): Path<(String, String)>,
) -> Response {
    let response = {
        let mut inner = lock(&shared.inner);
        let media = &mut inner.media;
        media.downloads += 1;
        let known_token = bot_token
            .strip_prefix("bot")
            .is_some_and(|token| media.tokens.contains(token));
        if !known_token {
            error(404, "Not Found")
        } else if let Some(code) = media.download_faults.pop_front() {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(
                code,
                status.canonical_reason().unwrap_or("Fake download fault"),
            )
        } else {
            let bytes = media
                .by_path
                .get(&file_path)
                .and_then(|id| media.files.get(id))
                .map(|file| file.bytes.clone());
            match bytes {
                Some(bytes) => {
                    media.downloaded_paths.push(file_path);
                    (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, "application/octet-stream")],
                        bytes,
                    )
                        .into_response()
                }
                None => error(404, "Not Found"),
            }
        }
    };
    shared.files.notify_waiters();
    response
}
