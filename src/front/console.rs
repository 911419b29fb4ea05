//! `llmgram chat`: the console front. An operator talks to the bot from a
//! terminal through the same actors, configuration and LLM provider as the
//! Telegram bot, without a bot token and without any Bot API call: for
//! trying prompts, commands and providers.
//!
//! - **The tree** is the bot's ([`app::start_console`]): persistence,
//!   breakers, limiter, LLM pool, outbox, session supervisor and sessions,
//!   with no front actor (root's table has no front row without a Bot API)
//!   and no ops listener. The outbox sends
//!   through [`Transport::Console`](crate::telegram::transport::Transport),
//!   which prints on stdout ([`ConsoleOut`]); logs stay on stderr.
//! - **Who is talking:** one private chat, [`CHAT_ID`], written by one user,
//!   [`USER_ID`], who is an admin for this run only (so `/model`, `/stats`
//!   work) and whose language is `--language`.
//! - **Per line** read from stdin (blank lines are skipped): an [`Inbound`]
//!   exactly as a Telegram text would be (commands parsed by
//!   [`classify_private_text`]; `/image PATH`, `/voice PATH` and
//!   `/file PATH` send a local file as a photo, voice note or document,
//!   [`classify_line`]), numbered after the highest update id the
//!   store holds (a session skips ids it has answered), handed over as a
//!   polled update is ([`hand_over`]: admitted durably, rate-limited,
//!   routed). The next line is read only once every routed update is
//!   answered (the session supervisor's `Drain`), so a piped script gets its
//!   answers in order. A `you> ` prompt appears only when stdin is a
//!   terminal.
//! - **Storage:** a fresh temporary directory, removed at exit, unless
//!   `--data-dir` names one to keep the conversation between runs. Never the
//!   bot's `storage.path`: a running bot holds its lock, and its update ids
//!   must not mix with the console's.
//! - **Ends** at the end of stdin, after the last answer, or on SIGINT /
//!   SIGTERM; either way the tree stops gracefully.

use std::future::Future;
use std::io::{BufRead as _, IsTerminal as _, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use teloxide::types::MessageId;
use tokio::sync::mpsc;

use super::{HandOverError, hand_over};
use crate::actors::Directory;
use crate::app::{self, AppError};
use crate::config::{Config, Secrets};
use crate::store::StoreError;
use crate::telegram::TelegramError;
use crate::telegram::inbound::{
    AttachmentKind, ChatId, Inbound, InboundKind, classify_private_text, local_media,
};

/// The console's chat: a private chat, so its id is its user's.
pub const CHAT_ID: ChatId = ChatId(USER_ID);
/// The console's user; an admin for the console run only.
pub const USER_ID: i64 = 1;
/// Shown before each line when stdin is a terminal.
const PROMPT: &str = "you> ";
/// The console has no bot username: a command addressed to any bot
/// (`/help@name`) is for another bot, and is ignored as Telegram's would be.
const NO_USERNAME: &str = "";
/// Lines read ahead of the conversation: one, so a line waits in the channel
/// while the previous one is answered and the reader then blocks.
const LINES_AHEAD: usize = 1;

/// What `llmgram chat` was asked for.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// The store to keep the conversation in; a temporary one if `None`.
    pub data_dir: Option<PathBuf>,
    /// The user's language code (`en`, `ru`): picks the reply texts.
    pub language: String,
}

/// Why the console front stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No temporary data directory could be created.
    #[error("cannot create a temporary data directory: {0}")]
    TempDir(std::io::Error),
    /// The store could not be read at start.
    #[error("cannot read the store: {0}")]
    Store(StoreError),
    /// A line could not be handed to the actors.
    #[error("cannot hand the message over: {0}")]
    HandOver(#[from] HandOverError),
    /// The session supervisor stayed away while an answer was awaited.
    #[error("the session supervisor is unavailable")]
    SessionsUnavailable,
    /// Stdout is closed.
    #[error(transparent)]
    Output(#[from] TelegramError),
}

/// Runs the console front until stdin ends or `shutdown` completes.
pub async fn run(
    mut config: Config,
    secrets: Secrets,
    options: ChatOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    // Dropped (and removed) only after the service, and so the store, stops.
    let temporary = match options.data_dir {
        Some(dir) => {
            config.storage.path = dir;
            None
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("llmgram-chat-")
                .tempdir()
                .map_err(ConsoleError::TempDir)?;
            config.storage.path = dir.path().to_path_buf();
            Some(dir)
        }
    };
    config.admin_ids.push(USER_ID);
    let config = Arc::new(config);
    let out = ConsoleOut::stdout();
    let service =
        app::start_console(Config::clone(&config), secrets, "llmgram", out.clone()).await?;
    let conversation = Conversation {
        directory: service.directory().clone(),
        config,
        out,
        language: options.language,
        interactive: std::io::stdin().is_terminal(),
    };
    let mut outcome = Ok(());
    let talk = async {
        tokio::select! {
            result = conversation.run(read_lines()) => outcome = result,
            () = shutdown => {}
        }
    };
    let stopped = service.run_until(talk).await;
    drop(temporary);
    stopped?;
    Ok(outcome?)
}

/// Lines of stdin, read by a thread of their own (a blocking read would hold
/// a runtime worker, and a thread blocked in it does not delay the exit).
/// Bytes that are not UTF-8 are replaced, not fatal.
fn read_lines() -> mpsc::Receiver<String> {
    let (lines, received) = mpsc::channel(LINES_AHEAD);
    let spawned = std::thread::Builder::new()
        .name("llmgram-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut line = Vec::new();
            loop {
                line.clear();
                match stdin.read_until(b'\n', &mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        if lines.blocking_send(text).is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot read stdin; ending");
                        return;
                    }
                }
            }
        });
    if let Err(error) = spawned {
        // The sender is gone with the closure: the conversation ends at once.
        tracing::error!(%error, "cannot start the stdin reader");
    }
    received
}

/// What a line sends: `/image PATH [caption]`, `/voice PATH [caption]` and
/// `/file PATH [caption]` send that local file as Telegram would a photo, a
/// voice note or a document (the caption may be a command, such as
/// `/caption for my beach post`); any other line is a text or a command.
fn classify_line(line: &str, config: &Config) -> Option<InboundKind> {
    let (word, rest) = line
        .trim_start()
        .split_once(char::is_whitespace)
        .unwrap_or((line.trim(), ""));
    let kind = match word {
        "/image" => AttachmentKind::Photo,
        "/voice" => AttachmentKind::Voice,
        "/file" => AttachmentKind::Document,
        _ => return classify_private_text(line, NO_USERNAME, &config.commands),
    };
    let rest = rest.trim_start();
    let (path, caption) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if path.is_empty() {
        return classify_private_text(line, NO_USERNAME, &config.commands);
    }
    local_media(kind, PathBuf::from(path), caption, &config.commands)
}

/// The operator's side of the conversation.
struct Conversation {
    directory: Directory,
    config: Arc<Config>,
    out: ConsoleOut,
    language: String,
    interactive: bool,
}

impl Conversation {
    async fn run(&self, mut lines: mpsc::Receiver<String>) -> Result<(), ConsoleError> {
        let mut next_update_id = self.first_update_id().await?;
        // With --data-dir, updates left unanswered by an earlier run are
        // replayed at start: their answers come first.
        self.wait_for_answers().await?;
        loop {
            if self.interactive {
                self.out.prompt(PROMPT).await?;
            }
            let Some(line) = lines.recv().await else {
                break;
            };
            let text = line.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            let Some(kind) = classify_line(text, &self.config) else {
                tracing::warn!("command for another bot ignored");
                continue;
            };
            let inbound = Inbound {
                update_id: next_update_id,
                key: CHAT_ID.into(),
                user_id: Some(USER_ID.unsigned_abs()),
                language_code: Some(self.language.clone()),
                kind,
                received_at: Instant::now(),
                // Each line waits for its answer: nothing to merge.
                sent_at: None,
                refused: None,
                speaker: None,
                message_id: None,
                reply_to: None,
            };
            next_update_id = next_update_id.saturating_add(1);
            hand_over(&self.directory, &self.config, vec![inbound]).await?;
            self.wait_for_answers().await?;
        }
        if self.interactive {
            // Leave the shell's prompt on a line of its own.
            self.out.newline().await?;
        }
        Ok(())
    }

    /// One past the highest update id the store knows of: its update log's
    /// and the console chat's newest answered one.
    async fn first_update_id(&self) -> Result<u32, ConsoleError> {
        let store = self.directory.persistence();
        let newest = store
            .newest_update_id()
            .await
            .map_err(ConsoleError::Store)?;
        let record = store
            .load_chat(&CHAT_ID.into())
            .await
            .map_err(ConsoleError::Store)?;
        let answered = record.and_then(|r| r.newest_known_update()).unwrap_or(0);
        Ok(newest.unwrap_or(0).max(answered).saturating_add(1))
    }

    /// Waits until every routed update is answered (its answer printed),
    /// then ends the answer's line.
    async fn wait_for_answers(&self) -> Result<(), ConsoleError> {
        self.directory
            .session_sup()
            .drain()
            .await
            .map_err(|_| ConsoleError::SessionsUnavailable)?;
        self.out.end_line().await?;
        Ok(())
    }
}

/// The console's screen: where the outbox's messages are printed, as plain
/// text (formatting entities are dropped). Cloning is cheap; every clone
/// writes to the same output, one message at a time.
#[derive(Clone)]
pub struct ConsoleOut {
    screen: Arc<Mutex<Screen>>,
}

impl std::fmt::Debug for ConsoleOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleOut")
    }
}

/// What has been printed, so edits can extend it.
struct Screen {
    output: Box<dyn Write + Send>,
    /// The id the next message gets; ids count from 1, as Telegram's do.
    next_id: i32,
    /// The message that ends the output, its line still open, and its text:
    /// an edit that extends it prints only what is new.
    open: Option<(MessageId, String)>,
}

impl ConsoleOut {
    /// Prints on the process's stdout.
    pub fn stdout() -> Self {
        Self::to_writer(std::io::stdout())
    }

    /// Prints into `output` (tests).
    pub fn to_writer(output: impl Write + Send + 'static) -> Self {
        Self {
            screen: Arc::new(Mutex::new(Screen {
                output: Box::new(output),
                next_id: 1,
                open: None,
            })),
        }
    }

    /// Prints a new message; returns its id.
    pub async fn send(&self, text: &str) -> Result<MessageId, TelegramError> {
        let text = text.to_owned();
        self.with_screen(move |screen| screen.send(text)).await
    }

    /// Shows a message's new text: only the new end if it extends what was
    /// printed last (a streamed answer growing), else the whole text again.
    pub async fn edit(&self, id: MessageId, text: &str) -> Result<(), TelegramError> {
        let text = text.to_owned();
        self.with_screen(move |screen| screen.edit(id, text)).await
    }

    /// Ends the line of the last message, if it is open.
    async fn end_line(&self) -> Result<(), TelegramError> {
        self.with_screen(Screen::end_line).await
    }

    /// Prints the prompt, without a line end.
    async fn prompt(&self, prompt: &'static str) -> Result<(), TelegramError> {
        self.with_screen(move |screen| screen.write(prompt)).await
    }

    /// Prints a line end.
    async fn newline(&self) -> Result<(), TelegramError> {
        self.with_screen(|screen| screen.write("\n")).await
    }

    /// Runs `print` on the screen on a blocking thread: a slow terminal or a
    /// full pipe never holds a runtime worker.
    async fn with_screen<R: Send + 'static>(
        &self,
        print: impl FnOnce(&mut Screen) -> std::io::Result<R> + Send + 'static,
    ) -> Result<R, TelegramError> {
        let screen = Arc::clone(&self.screen);
        tokio::task::spawn_blocking(move || {
            // A panic while printing leaves at worst a half-printed line.
            let mut screen = crate::error::lock_unpoisoned(&screen);
            print(&mut screen)
        })
        .await
        .map_err(|e| TelegramError::Console(e.to_string()))?
        .map_err(|e| TelegramError::Console(e.to_string()))
    }
}

impl Screen {
    fn send(&mut self, text: String) -> std::io::Result<MessageId> {
        self.end_line()?;
        let id = MessageId(self.next_id);
        self.next_id = self.next_id.saturating_add(1);
        self.write(&text)?;
        self.open = Some((id, text));
        Ok(id)
    }

    fn edit(&mut self, id: MessageId, text: String) -> std::io::Result<()> {
        if let Some((open_id, printed)) = &mut self.open
            && *open_id == id
            && let Some(new) = text.strip_prefix(printed.as_str())
        {
            let new = new.to_owned();
            *printed = text;
            return self.write(&new);
        }
        self.end_line()?;
        self.write(&text)?;
        self.open = Some((id, text));
        Ok(())
    }

    fn end_line(&mut self) -> std::io::Result<()> {
        if self.open.take().is_some() {
            self.write("\n")?;
        }
        Ok(())
    }

    fn write(&mut self, text: &str) -> std::io::Result<()> {
        self.output.write_all(text.as_bytes())?;
        self.output.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[tokio::test]
    async fn messages_get_increasing_ids_and_lines_of_their_own() {
        let captured = Captured::default();
        let out = ConsoleOut::to_writer(captured.clone());
        let first = out.send("one").await.unwrap();
        let second = out.send("two").await.unwrap();
        assert!(second.0 > first.0);
        out.end_line().await.unwrap();
        out.end_line().await.unwrap();
        assert_eq!(captured.text(), "one\ntwo\n");
    }

    #[tokio::test]
    async fn an_edit_extending_the_last_message_prints_only_the_new_end() {
        let captured = Captured::default();
        let out = ConsoleOut::to_writer(captured.clone());
        let id = out.send("Hel").await.unwrap();
        out.edit(id, "Hello").await.unwrap();
        out.edit(id, "Hello, world").await.unwrap();
        out.edit(id, "Hello, world").await.unwrap();
        out.end_line().await.unwrap();
        assert_eq!(captured.text(), "Hello, world\n");
    }

    #[tokio::test]
    async fn an_edit_that_rewrites_prints_the_whole_new_text() {
        let captured = Captured::default();
        let out = ConsoleOut::to_writer(captured.clone());
        let first = out.send("draft").await.unwrap();
        out.send("next").await.unwrap();
        out.edit(first, "draft, extended").await.unwrap();
        let last = out.send("last").await.unwrap();
        out.edit(last, "changed").await.unwrap();
        out.end_line().await.unwrap();
        assert_eq!(
            captured.text(),
            "draft\nnext\ndraft, extended\nlast\nchanged\n"
        );
    }
}
