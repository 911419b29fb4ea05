//! A media message's turn: photos shown to a vision model, voice notes and
//! audio transcribed and answered as text, documents read as text.
//!
//! Everything that can be refused without a download is refused first
//! (size, length, kind, no provider that could use it), with a localised
//! reply and no LLM call. Files are fetched off the session's mailbox
//! ([`Fetcher::fetch_then`](crate::media::fetch::Fetcher::fetch_then):
//! bounded downloads, the reading on a blocking thread) and their bytes
//! live only until the request that needs them is sent. The history keeps
//! what later turns need, never bytes: the file ids, and the caption or a
//! short description of a photo, the transcript of a recording, the text of
//! a document (cut to fit the history).

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{StreamExt as _, stream};

use super::SessionState;
use super::llm_turn::{self, Ask};
use super::turn::{Reply, Turn, escape_markdown};
use crate::actors::root::llm_pool::Overrides;
use crate::actors::root::session_sup::SessionDeps;
use crate::input;
use crate::llm::{ChatMessage, LlmError, Role};
use crate::media::document::{self, DocumentError};
use crate::media::fetch::{FetchError, Reservation};
use crate::media::{audio, image};
use crate::store::record::{StoredFile, StoredFileKind};
use crate::telegram::command::Command;
use crate::telegram::inbound::{Attachment, AttachmentKind, FileRef, MediaMessage};
use crate::telemetry::families::MEDIA_MESSAGES;
use crate::telemetry::{SecurityKind, security_event};
use crate::texts::{Texts, fill};

/// Largest image (pixels) sent to a model: 50 Mpx is far above any photo
/// Telegram serves (2560 px) and stops decompression bombs.
const MAX_IMAGE_PIXELS: u64 = 50_000_000;
/// Longest description of a photo kept in the history (characters).
const DESCRIPTION_MAX_CHARS: usize = 300;
/// What the description request asks; the image goes with it.
const DESCRIBE_PROMPT: &str = "Describe this image in one short sentence (at most 25 words) \
    for later reference in the conversation. Answer with the description only.";
/// Share of `session.max_history_chars` a document's text may take in the
/// history: the rest stays for the conversation around it.
const DOCUMENT_HISTORY_SHARE: usize = 2;

/// How a media turn ended, the `outcome` label of
/// `llmgram_media_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Answered,
    TooBig,
    TooLong,
    DownloadFailed,
    Unreadable,
    NoVision,
    NoTranscription,
    TranscriptionFailed,
    NothingHeard,
    Unsupported,
    Busy,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::TooBig => "too_big",
            Self::TooLong => "too_long",
            Self::DownloadFailed => "download_failed",
            Self::Unreadable => "unreadable",
            Self::NoVision => "no_vision",
            Self::NoTranscription => "no_transcription",
            Self::TranscriptionFailed => "transcription_failed",
            Self::NothingHeard => "nothing_heard",
            Self::Unsupported => "unsupported",
            Self::Busy => "busy",
        }
    }
}

/// A reply that ends the turn without an answer.
struct Refusal(Outcome, Reply);

/// The reply to a media message.
pub(super) async fn on_media(
    state: &mut SessionState,
    turn: &mut Turn<'_>,
    media: &MediaMessage,
) -> Reply {
    // A caption that is one of the bot's own commands is that command; an
    // assistant command applies its template to the files.
    // The user's words are cleaned as any text is (`input::clean`).
    let cleaned_args;
    let assistant = match &media.command {
        Some(Command::Assistant { name, args, .. }) => {
            cleaned_args = input::clean(args);
            Some((name.as_str(), cleaned_args.as_str()))
        }
        Some(command) => return super::on_command(state, turn, command).await,
        None => None,
    };
    let caption = input::clean(media.caption.as_deref().unwrap_or_default());
    let readable: Vec<&Attachment> = media
        .attachments
        .iter()
        .filter(|attachment| attachment.kind != AttachmentKind::Unsupported)
        .collect();
    let kind = readable
        .first()
        .map_or(AttachmentKind::Unsupported, |first| first.kind);
    let words = Words {
        caption: &caption,
        assistant,
        speaker: turn.inbound.speaker.clone(),
    };
    let result = match kind {
        AttachmentKind::Photo => photos(state, turn, &readable, &words).await,
        AttachmentKind::Voice | AttachmentKind::Audio | AttachmentKind::VideoNote => {
            recordings(state, turn, &readable, &words).await
        }
        AttachmentKind::Document => documents(state, turn, &readable, &words).await,
        AttachmentKind::Unsupported => Err(Refusal(
            Outcome::Unsupported,
            Reply::Plain(turn.texts.media_unsupported.clone()),
        )),
    };
    let (outcome, reply) = match result {
        Ok(reply) => (Outcome::Answered, reply),
        Err(Refusal(outcome, reply)) => (outcome, reply),
    };
    tracing::info!(
        kind = kind.label(),
        files = media.attachments.len(),
        outcome = outcome.label(),
        "media message"
    );
    metrics::counter!(MEDIA_MESSAGES, "kind" => kind.label(), "outcome" => outcome.label())
        .increment(1);
    reply
}

/// What the user wrote with the files.
struct Words<'a> {
    /// The caption (without the bot's mention in a group).
    caption: &'a str,
    /// The caption's assistant command: its name and arguments.
    assistant: Option<(&'a str, &'a str)>,
    /// In a group, who sent it.
    speaker: Option<String>,
}

impl Words<'_> {
    /// The user's own words: the caption, or the command's arguments.
    fn own(&self) -> &str {
        match self.assistant {
            Some((_, args)) => args.trim(),
            None => self.caption,
        }
    }

    /// The text the model gets for `content` (what was read from the
    /// files, then the user's words), through the assistant command's
    /// template when there is one; and the command's model and temperature.
    fn prompt(&self, deps: &SessionDeps, content: &str) -> (String, Overrides) {
        let asked = join_nonempty(&[content, self.own()], "\n\n");
        if input::looks_like_injection(&asked) {
            // Answered all the same: it only ever travels as a user message.
            security_event(SecurityKind::InjectionPhrase);
        }
        let command = self
            .assistant
            .and_then(|(name, _)| deps.config.command(name));
        match command {
            Some(command) => (
                fill(&command.template, &[("input", &asked)]),
                Overrides {
                    model: command.model.as_deref().map(Arc::from),
                    temperature: command.temperature,
                },
            ),
            None => (self.spoken(&asked), Overrides::default()),
        }
    }

    /// `text` as the history keeps it: in a group, with the speaker's name.
    fn spoken(&self, text: &str) -> String {
        match &self.speaker {
            Some(speaker) => format!("{speaker}: {text}"),
            None => text.to_owned(),
        }
    }
}

fn join_nonempty(parts: &[&str], separator: &str) -> String {
    parts
        .iter()
        .filter(|part| !part.trim().is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(separator)
}

/// The files of the kinds `wanted` picks (an album may mix photos with
/// videos, which are left out).
fn of_kind<'a>(
    attachments: &[&'a Attachment],
    wanted: impl Fn(AttachmentKind) -> bool,
) -> Vec<&'a Attachment> {
    attachments
        .iter()
        .copied()
        .filter(|attachment| wanted(attachment.kind))
        .collect()
}

/// The files as the history keeps them.
fn stored_files(attachments: &[&Attachment]) -> Vec<StoredFile> {
    attachments
        .iter()
        .filter_map(|attachment| {
            Some(StoredFile {
                kind: StoredFileKind::of(attachment.kind)?,
                file_id: match &attachment.file {
                    FileRef::Telegram { file_id } => file_id.clone(),
                    FileRef::Local(_) => String::new(),
                },
                name: attachment.file_name.clone(),
            })
        })
        .collect()
}

/// The files' room in the byte budget (`media.max_in_flight_bytes`; each
/// file's declared size, else `limit`), waited for at most
/// `limits.max_queue_wait` like an LLM slot; the turn holds it until its
/// request is sent.
async fn reserve(
    deps: &SessionDeps,
    texts: &Texts,
    files: &[&Attachment],
    limit: u64,
) -> Result<Reservation, Refusal> {
    let sizes: Vec<u64> = files
        .iter()
        .map(|file| file.size.unwrap_or(limit).min(limit))
        .collect();
    let wait = deps.config.limits.max_queue_wait;
    match tokio::time::timeout(wait, deps.fetcher.reserve(&sizes)).await {
        Ok(Some(reservation)) => Ok(reservation),
        Ok(None) => Err(Refusal(
            Outcome::DownloadFailed,
            Reply::Plain(texts.media_download_failed.clone()),
        )),
        Err(_) => {
            tracing::info!(
                wait_ms = wait.as_millis() as u64,
                "no room for the files in time"
            );
            Err(Refusal(Outcome::Busy, Reply::Plain(texts.llm_busy.clone())))
        }
    }
}

/// Refuses a file over `limit` bytes before anything is downloaded.
fn check_size(texts: &Texts, attachment: &Attachment, limit: u64) -> Result<(), Refusal> {
    match attachment.size {
        Some(size) if size > limit => Err(too_big(texts, Some(size), limit)),
        _ => Ok(()),
    }
}

fn too_big(texts: &Texts, size: Option<u64>, limit: u64) -> Refusal {
    const MB: f64 = 1024.0 * 1024.0;
    let megabytes = |bytes: u64| format!("{:.1}", bytes as f64 / MB);
    let size = size.map_or_else(|| format!(">{}", megabytes(limit)), megabytes);
    Refusal(
        Outcome::TooBig,
        Reply::Plain(fill(
            &texts.media_too_big,
            &[("size", &size), ("limit", &megabytes(limit))],
        )),
    )
}

/// The reply to a file that could not be had.
fn fetch_refusal(texts: &Texts, error: &FetchError) -> Refusal {
    match error {
        FetchError::TooBig { size, limit } => too_big(texts, *size, *limit),
        FetchError::NotFound
        | FetchError::Failed { .. }
        | FetchError::NoSource
        | FetchError::Reader => Refusal(
            Outcome::DownloadFailed,
            Reply::Plain(texts.media_download_failed.clone()),
        ),
    }
}

/// Appends a note (Markdown) to an answer; a plain reply (a fallback) is
/// left as it is. Whether the note was added.
fn with_note(reply: &mut Reply, note: &str) -> bool {
    match reply {
        Reply::Markdown(text) => {
            text.push_str("\n\n");
            text.push_str(note);
            true
        }
        Reply::Plain(_) | Reply::Buttons(..) | Reply::Silent => false,
    }
}

// ------------------------------------------------------------------ photos

async fn photos(
    state: &mut SessionState,
    turn: &mut Turn<'_>,
    attachments: &[&Attachment],
    words: &Words<'_>,
) -> Result<Reply, Refusal> {
    let texts = Arc::clone(&turn.texts);
    let deps = Arc::clone(&state.deps);
    let media = &deps.config.media;
    let photos = of_kind(attachments, |kind| kind == AttachmentKind::Photo);
    let sent = photos.len().min(media.max_images_per_turn);
    let files = stored_files(&photos);
    let label = if photos.len() == 1 {
        "[Photo]".to_owned()
    } else {
        format!("[{} photos]", photos.len())
    };
    if !deps.config.llm.can_see_images() {
        return caption_only(state, turn, words, &label, files).await;
    }
    for photo in &photos[..sent] {
        check_size(&texts, photo, media.max_image_bytes)?;
    }
    deps.directory.outbox().show_typing(&state.key);
    // Held until the request is answered: the images live only inside it.
    let held = reserve(&deps, &texts, &photos[..sent], media.max_image_bytes).await?;
    // Boxed and collected first: a lazily mapped stream of borrowing
    // futures is not provably `Send` (rustc's higher-ranked lifetimes).
    let downloads: Vec<Pin<Box<dyn Future<Output = _> + Send + '_>>> = photos[..sent]
        .iter()
        .map(|photo| {
            Box::pin(deps.fetcher.fetch_then(
                &held,
                &photo.file,
                media.max_image_bytes,
                |bytes, _path| {
                    image::inspect_image(&bytes, MAX_IMAGE_PIXELS)
                        .map(|info| Arc::<str>::from(image::data_url(info.format.mime(), &bytes)))
                },
            )) as Pin<Box<dyn Future<Output = _> + Send + '_>>
        })
        .collect();
    let results: Vec<_> = stream::iter(downloads)
        .buffered(held.slots())
        .collect()
        .await;
    let mut images = Vec::with_capacity(sent);
    for result in results {
        match result {
            Ok(Ok(url)) => images.push(url),
            Ok(Err(error)) => {
                tracing::info!(error = %error, "image cannot be read");
                return Err(Refusal(
                    Outcome::Unreadable,
                    Reply::Plain(texts.image_unreadable.clone()),
                ));
            }
            Err(error) => return Err(fetch_refusal(&texts, &error)),
        }
    }
    let (text, overrides) = words.prompt(&deps, "");
    let text = if text.trim().is_empty() {
        // The model gets the images with no question: it is asked to react
        // to them, in the conversation's language.
        words.spoken(&label)
    } else {
        text
    };
    let describe =
        (media.describe_images && words.own().is_empty()).then(|| describe(&deps, images.clone()));
    let remembered = words.spoken(&join_nonempty(&[&label, words.own()], " "));
    let question = Ask {
        text: text.into(),
        images,
        remembered: remembered.as_str().into(),
        files,
    };
    let (mut reply, description) = match describe {
        Some(describe) => {
            let (reply, description) =
                tokio::join!(llm_turn::ask(state, turn, question, overrides), describe);
            (reply, description)
        }
        None => (llm_turn::ask(state, turn, question, overrides).await, None),
    };
    drop(held);
    if let Some(Described {
        text: description,
        input,
        output,
        model,
    }) = description
    {
        llm_turn::charge(
            state,
            &llm_turn::Spent {
                input,
                output,
                model: &model,
            },
        );
        let label = label.trim_end_matches(']');
        let described = words.spoken(&join_nonempty(
            &[&format!("{label}: {description}]"), words.own()],
            " ",
        ));
        // The history has the message as asked: with its quote line.
        state
            .history
            .rewrite_last_user(&turn.quoted(&remembered), turn.quoted(&described).into());
    }
    if sent < photos.len() {
        with_note(
            &mut reply,
            &fill(&texts.album_truncated, &[("count", &sent.to_string())]),
        );
    }
    Ok(reply)
}

/// No provider can see images: the caption is answered alone, and the chat
/// is told once why the picture was not looked at; without a caption there
/// is nothing to answer.
async fn caption_only(
    state: &mut SessionState,
    turn: &mut Turn<'_>,
    words: &Words<'_>,
    label: &str,
    files: Vec<StoredFile>,
) -> Result<Reply, Refusal> {
    if words.own().is_empty() {
        return Err(Refusal(
            Outcome::NoVision,
            Reply::Plain(turn.texts.no_vision.clone()),
        ));
    }
    let deps = Arc::clone(&state.deps);
    let (text, overrides) = words.prompt(&deps, "");
    let question = Ask {
        text: text.into(),
        images: Vec::new(),
        remembered: words
            .spoken(&join_nonempty(&[label, words.own()], " "))
            .into(),
        files,
    };
    let notice = turn.texts.no_vision_notice.clone();
    let mut reply = llm_turn::ask(state, turn, question, overrides).await;
    if !state.settings.told_no_vision && with_note(&mut reply, &notice) {
        state.settings.told_no_vision = true;
    }
    Ok(reply)
}

/// A one-line description of the images for the history, and the tokens
/// it cost; `None` when it could not be had (the turn goes on without it).
/// An image description, and what asking for it spent.
struct Described {
    text: String,
    /// Prompt tokens (an image as [`llm_turn::IMAGE_TOKENS`] when the
    /// provider reported none).
    input: u64,
    output: u64,
    /// The (vision) model that described it.
    model: String,
}

async fn describe(deps: &SessionDeps, images: Vec<Arc<str>>) -> Option<Described> {
    llm_turn::llm_slot(deps).await.ok()?;
    let prompt = [
        ChatMessage::new(Role::System, DESCRIBE_PROMPT),
        ChatMessage::with_images(Role::User, "", images),
    ];
    match deps
        .directory
        .llm_pool()
        .complete(&prompt, &Overrides::default(), None)
        .await
    {
        Ok(completion) => {
            let text: String = completion
                .text
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(DESCRIPTION_MAX_CHARS)
                .collect();
            let (input, output) = completion
                .usage
                .map_or((llm_turn::IMAGE_TOKENS, 0), |usage| {
                    (usage.prompt_tokens, usage.completion_tokens)
                });
            (!text.is_empty()).then_some(Described {
                text,
                input,
                output,
                model: completion.model,
            })
        }
        Err(error) => {
            tracing::info!(class = error.class(), "no description of the image");
            None
        }
    }
}

// -------------------------------------------------------------- recordings

async fn recordings(
    state: &mut SessionState,
    turn: &mut Turn<'_>,
    attachments: &[&Attachment],
    words: &Words<'_>,
) -> Result<Reply, Refusal> {
    let texts = Arc::clone(&turn.texts);
    let deps = Arc::clone(&state.deps);
    let media = &deps.config.media;
    let recordings = of_kind(attachments, AttachmentKind::is_audio);
    if !deps.config.llm.can_transcribe() {
        return Err(Refusal(
            Outcome::NoTranscription,
            Reply::Plain(texts.no_transcription.clone()),
        ));
    }
    for recording in &recordings {
        if let Some(seconds) = recording.duration.filter(|s| *s > media.max_audio_seconds) {
            return Err(Refusal(
                Outcome::TooLong,
                Reply::Plain(fill(
                    &texts.audio_too_long,
                    &[
                        ("seconds", &seconds.to_string()),
                        ("limit", &media.max_audio_seconds.to_string()),
                    ],
                )),
            ));
        }
        check_size(&texts, recording, media.max_audio_bytes)?;
    }
    let mut transcripts = Vec::with_capacity(recordings.len());
    for recording in &recordings {
        deps.directory.outbox().show_typing(&state.key);
        transcripts.push(transcribe(&deps, &texts, recording).await?);
    }
    // What was said is user text like any other.
    let transcript = input::clean(&transcripts.join("\n\n"));
    if transcript.trim().is_empty() {
        return Err(Refusal(
            Outcome::NothingHeard,
            Reply::Plain(texts.nothing_heard.clone()),
        ));
    }
    let label = match recordings.first().map(|r| r.kind) {
        Some(AttachmentKind::Audio) => "[Audio]",
        Some(AttachmentKind::VideoNote) => "[Video message]",
        _ => "[Voice message]",
    };
    let (text, overrides) = words.prompt(&deps, &transcript);
    let question = Ask {
        text: text.into(),
        images: Vec::new(),
        remembered: words
            .spoken(&join_nonempty(&[label, &transcript, words.own()], " "))
            .into(),
        files: stored_files(&recordings),
    };
    let reply = llm_turn::ask(state, turn, question, overrides).await;
    Ok(if media.show_transcript {
        with_transcript(reply, &transcript)
    } else {
        reply
    })
}

/// Downloads and transcribes one recording.
async fn transcribe(
    deps: &SessionDeps,
    texts: &Texts,
    recording: &Attachment,
) -> Result<String, Refusal> {
    let media = &deps.config.media;
    // Held until the upload is done: the recording lives only inside it.
    let held = reserve(deps, texts, &[recording], media.max_audio_bytes).await?;
    let audio = deps
        .fetcher
        .fetch_then(
            &held,
            &recording.file,
            media.max_audio_bytes,
            |bytes, path| audio::check_audio(&bytes).map(|()| (bytes, path)),
        )
        .await
        .map_err(|error| fetch_refusal(texts, &error))?;
    let (bytes, path) = audio.map_err(|error| {
        tracing::info!(%error, "recording cannot be read");
        Refusal(
            Outcome::Unreadable,
            Reply::Plain(texts.audio_unreadable.clone()),
        )
    })?;
    let (file_name, mime) = audio_name(recording, path.as_deref());
    let transcribed = match llm_turn::llm_slot(deps).await {
        Ok(()) => {
            deps.directory
                .llm_pool()
                .transcribe(bytes.into(), &file_name, &mime)
                .await
        }
        Err(error) => Err(error),
    };
    drop(held);
    match transcribed {
        Ok(transcript) => Ok(transcript.text),
        Err(error) => {
            tracing::info!(class = error.class(), "transcription failed");
            let text = match &error {
                LlmError::NoProvider { retry_in: None, .. } | LlmError::Rejected { .. } => {
                    texts.transcription_failed.clone()
                }
                other => match llm_turn::fallback_text(texts, other) {
                    text if text == texts.llm_unavailable => texts.transcription_failed.clone(),
                    text => text,
                },
            };
            Err(Refusal(Outcome::TranscriptionFailed, Reply::Plain(text)))
        }
    }
}

/// The file name and MIME type a transcription endpoint is told: they pick
/// the decoder (Telegram voice notes are Ogg/Opus, video notes MP4).
fn audio_name(recording: &Attachment, path: Option<&str>) -> (String, String) {
    let default = match recording.kind {
        AttachmentKind::VideoNote => ("video_note.mp4", "video/mp4"),
        AttachmentKind::Audio => ("audio.mp3", "audio/mpeg"),
        _ => ("voice.ogg", "audio/ogg"),
    };
    let name = recording
        .file_name
        .clone()
        .or_else(|| {
            path.and_then(|path| path.rsplit('/').next())
                .map(|name| name.replace(".oga", ".ogg"))
        })
        .unwrap_or_else(|| default.0.to_owned());
    let mime = recording
        .mime_type
        .clone()
        .unwrap_or_else(|| default.1.to_owned());
    (name, mime)
}

/// The answer with the transcript quoted above it, so the user sees what
/// was understood. The transcript is escaped: it is the user's words, not
/// Markdown.
fn with_transcript(reply: Reply, transcript: &str) -> Reply {
    let quoted = format!("> 🎙 {}", escape_markdown(transcript).replace('\n', "\n> "));
    reply.below(&quoted)
}

// --------------------------------------------------------------- documents

async fn documents(
    state: &mut SessionState,
    turn: &mut Turn<'_>,
    attachments: &[&Attachment],
    words: &Words<'_>,
) -> Result<Reply, Refusal> {
    let texts = Arc::clone(&turn.texts);
    let deps = Arc::clone(&state.deps);
    let media = &deps.config.media;
    let documents = of_kind(attachments, |kind| kind == AttachmentKind::Document);
    for document in &documents {
        check_size(&texts, document, media.max_document_bytes)?;
    }
    // The text must fit the context with the answer, whatever the config.
    let llm = &deps.config.llm;
    let context_chars = llm
        .context_tokens
        .saturating_sub(u64::from(llm.max_tokens))
        .saturating_mul(3);
    let max_chars = media
        .max_document_chars
        .min(usize::try_from(context_chars).unwrap_or(usize::MAX))
        / documents.len().max(1);
    let mut read = Vec::with_capacity(documents.len());
    let (mut truncated, mut lossy) = (false, false);
    for document in &documents {
        deps.directory.outbox().show_typing(&state.key);
        let name = document.file_name.clone();
        let mime = document.mime_type.clone();
        // The text read is bounded by max_chars; the bytes go with the reader.
        let held = reserve(&deps, &texts, &[document], media.max_document_bytes).await?;
        let result = deps
            .fetcher
            .fetch_then(
                &held,
                &document.file,
                media.max_document_bytes,
                move |bytes, path| {
                    let name = name
                        .or_else(|| path.map(|p| p.rsplit('/').next().unwrap_or("").to_owned()));
                    document::read_document(&bytes, name.as_deref(), mime.as_deref(), max_chars)
                        .map(|read| document::DocumentText {
                            text: input::clean(&read.text),
                            ..read
                        })
                },
            )
            .await
            .map_err(|error| fetch_refusal(&texts, &error))?;
        let text = result.map_err(|error| document_refusal(&texts, &error))?;
        truncated |= text.truncated;
        lossy |= text.lossy;
        let name = document.file_name.as_deref().unwrap_or("file");
        read.push((name.to_owned(), text.text));
    }
    let content = read
        .iter()
        .map(|(name, text)| format!("File \"{name}\":\n```\n{text}\n```"))
        .collect::<Vec<_>>()
        .join("\n\n");
    let (text, overrides) = words.prompt(&deps, &content);
    // The history keeps the text within its own bounds: a document must not
    // push the whole conversation out.
    let keep = deps.config.session.max_history_chars / DOCUMENT_HISTORY_SHARE;
    let remembered = words.spoken(&join_nonempty(&[&content, words.own()], "\n\n"));
    let remembered: String = if remembered.chars().count() > keep {
        let mut cut: String = remembered.chars().take(keep).collect();
        cut.push_str("\n[…]");
        cut
    } else {
        remembered
    };
    let question = Ask {
        text: text.into(),
        images: Vec::new(),
        remembered: remembered.into(),
        files: stored_files(&documents),
    };
    let mut reply = llm_turn::ask(state, turn, question, overrides).await;
    if truncated {
        with_note(
            &mut reply,
            &fill(
                &texts.document_truncated,
                &[("chars", &max_chars.to_string())],
            ),
        );
    }
    if lossy {
        with_note(&mut reply, &texts.document_lossy);
    }
    Ok(reply)
}

fn document_refusal(texts: &Texts, error: &DocumentError) -> Refusal {
    tracing::info!(reason = error.label(), "document cannot be read");
    match error {
        DocumentError::Unsupported => Refusal(
            Outcome::Unsupported,
            Reply::Plain(texts.media_unsupported.clone()),
        ),
        DocumentError::NoText => Refusal(
            Outcome::Unreadable,
            Reply::Plain(texts.document_no_text.clone()),
        ),
        _ => Refusal(
            Outcome::Unreadable,
            Reply::Plain(texts.document_unreadable.clone()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcripts_are_quoted_literally() {
        let reply = with_transcript(Reply::Markdown("**ok**".into()), "a *b*\nc_d");
        assert_eq!(
            reply,
            Reply::Markdown("> 🎙 a \\*b\\*\n> c\\_d\n\n**ok**".into())
        );
    }

    #[test]
    fn every_label_is_registered_at_start() {
        use crate::telemetry::families::{MEDIA_KINDS, MEDIA_OUTCOMES};
        for outcome in [
            Outcome::Answered,
            Outcome::TooBig,
            Outcome::TooLong,
            Outcome::DownloadFailed,
            Outcome::Unreadable,
            Outcome::NoVision,
            Outcome::NoTranscription,
            Outcome::TranscriptionFailed,
            Outcome::NothingHeard,
            Outcome::Unsupported,
            Outcome::Busy,
        ] {
            assert!(MEDIA_OUTCOMES.contains(&outcome.label()));
        }
        for kind in [
            AttachmentKind::Photo,
            AttachmentKind::Voice,
            AttachmentKind::Audio,
            AttachmentKind::VideoNote,
            AttachmentKind::Document,
            AttachmentKind::Unsupported,
        ] {
            assert!(MEDIA_KINDS.contains(&kind.label()));
        }
    }

    #[test]
    fn notes_go_under_answers_only() {
        let mut answer = Reply::Markdown("a".into());
        assert!(with_note(&mut answer, "n"));
        assert_eq!(answer, Reply::Markdown("a\n\nn".into()));
        let mut fallback = Reply::Plain("busy".into());
        assert!(!with_note(&mut fallback, "n"));
    }
}
