//! Fetching a file a user sent: `getFile`, then the file download URL, with
//! a size cap, retries and a global bound on downloads in flight.
//!
//! - **Bounded memory.** A media turn first reserves its files' sizes from a
//!   byte budget ([`Fetcher::reserve`]: `media.max_in_flight_bytes`, in
//!   [`UNIT`]s, taken at once so two turns can never each hold part of what
//!   the other waits for) and keeps them until its request is answered: what a
//!   file becomes (a data URL, audio to upload) lives only inside a
//!   reservation, so the memory media takes is bounded by the budget, not by
//!   the chats, while small files (the usual photo) do not queue behind
//!   each other.
//! - **Off the actors.** [`Fetcher::fetch_then`] runs the download in a
//!   spawned task, then hands the bytes to a CPU-bound reader (base64, PDF
//!   text) on a blocking thread; the session only awaits the result. The
//!   bytes are dropped as soon as the reader has made what the request
//!   needs of them.
//! - **The token.** The download URL holds the bot token. It is built here,
//!   used for one request, and never logged: errors keep only their class
//!   (reqwest's errors name the URL, so they are never formatted).
//! - **Failures** are classified ([`FetchError`]): a file that is gone or
//!   too big is final; a network error, timeout, 429 or 5xx is retried with
//!   backoff up to `media.download_attempts` within `media.download_timeout`.

use std::sync::Arc;
use std::time::Duration;

use teloxide::Bot;
use teloxide::requests::Requester as _;
use teloxide::types::FileId;
use teloxide::{ApiError, RequestError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::MediaConfig;
use crate::retry::Backoff;
use crate::telegram::inbound::FileRef;
use crate::telemetry::families::MEDIA_DOWNLOADS;

/// First retry delay of a failed download; doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(300);
/// Longest delay between download attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// The byte budget's grain (bytes): a file reserves its size rounded up to
/// it. 64 KiB keeps the count of permits small for any budget.
pub const UNIT: u64 = 64 * 1024;

/// Why a file could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Larger than the limit for its kind (`size` when it is known).
    #[error("file too big ({size:?} bytes, limit {limit})")]
    TooBig {
        /// Its size, when Telegram or the download said.
        size: Option<u64>,
        /// The limit it broke.
        limit: u64,
    },
    /// Telegram does not have it (any more) for this bot, or the local file
    /// does not exist.
    #[error("file not found")]
    NotFound,
    /// Every attempt failed with a transient error (`class` of the last).
    #[error("download failed ({class}) after {attempts} attempts")]
    Failed {
        /// The last error's class.
        class: &'static str,
        /// Attempts made.
        attempts: u32,
    },
    /// No way to fetch it: a Telegram file on the console front.
    #[error("no Bot API to fetch the file from")]
    NoSource,
    /// The reader (the task after the download) failed to run.
    #[error("the file's reader did not finish")]
    Reader,
}

impl FetchError {
    /// Its label in logs and `llmgram_media_downloads_total{outcome}`.
    pub fn class(&self) -> &'static str {
        match self {
            Self::TooBig { .. } => "too_big",
            Self::NotFound => "not_found",
            Self::Failed { .. } => "failed",
            Self::NoSource => "no_source",
            Self::Reader => "reader",
        }
    }
}

/// One attempt's failure: final, or worth another attempt.
enum Attempt {
    Final(FetchError),
    Transient {
        class: &'static str,
        wait: Option<Duration>,
    },
}

/// Fetches files; shared by all sessions (cheap to clone).
#[derive(Debug, Clone)]
pub struct Fetcher {
    bot: Option<Bot>,
    /// The byte budget, in [`UNIT`]s.
    budget: Arc<Semaphore>,
    /// `media.max_in_flight_bytes` in [`UNIT`]s.
    capacity: u32,
    timeout: Duration,
    attempts: u32,
}

/// Part of the byte budget a media turn holds until its request is answered:
/// files are in memory only inside one.
#[derive(Debug)]
pub struct Reservation {
    /// The files it was taken for.
    files: usize,
    _permit: OwnedSemaphorePermit,
}

impl Reservation {
    /// Files that may be fetched at once under it (at least one).
    pub fn slots(&self) -> usize {
        self.files.max(1)
    }
}

impl Fetcher {
    /// A fetcher over the front's Bot API client (`None` on the console,
    /// which only reads local files).
    pub fn new(bot: Option<Bot>, media: &MediaConfig) -> Self {
        let capacity = u32::try_from(media.max_in_flight_bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Self {
            bot,
            budget: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            timeout: media.download_timeout,
            attempts: media.download_attempts,
        }
    }

    /// Waits until the files of `sizes` (bytes each; the kind's limit when
    /// Telegram declares none) fit the budget, and takes them at once (all
    /// of it, if they are more). `None` only if the fetcher is shutting down.
    pub async fn reserve(&self, sizes: &[u64]) -> Option<Reservation> {
        let units: u64 = sizes.iter().map(|size| size.div_ceil(UNIT).max(1)).sum();
        let units = u32::try_from(units)
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity);
        let permit = Arc::clone(&self.budget)
            .acquire_many_owned(units)
            .await
            .ok()?;
        Some(Reservation {
            files: sizes.len(),
            _permit: permit,
        })
    }

    /// Downloads `file` (at most `limit` bytes) in a task of its own, then
    /// runs `read` on the bytes on a blocking thread and returns what it
    /// made; the bytes are dropped there. The caller holds a
    /// [`Reservation`] while it keeps what `read` made.
    pub async fn fetch_then<T, F>(
        &self,
        _held: &Reservation,
        file: &FileRef,
        limit: u64,
        read: F,
    ) -> Result<T, FetchError>
    where
        T: Send + 'static,
        F: FnOnce(Vec<u8>, Option<String>) -> T + Send + 'static,
    {
        let fetcher = self.clone();
        let file = file.clone();
        let task = tokio::spawn(async move {
            let (bytes, path) = fetcher.fetch(&file, limit).await?;
            tokio::task::spawn_blocking(move || read(bytes, path))
                .await
                .map_err(|_| FetchError::Reader)
        });
        let outcome = task.await.map_err(|_| FetchError::Reader).and_then(|r| r);
        let label = match &outcome {
            Ok(_) => "ok",
            Err(error) => error.class(),
        };
        metrics::counter!(MEDIA_DOWNLOADS, "outcome" => label).increment(1);
        outcome
    }

    /// The file's bytes and its path on the server (for its extension).
    async fn fetch(
        &self,
        file: &FileRef,
        limit: u64,
    ) -> Result<(Vec<u8>, Option<String>), FetchError> {
        match file {
            FileRef::Local(path) => {
                let size = tokio::fs::metadata(path)
                    .await
                    .map_err(|_| FetchError::NotFound)?
                    .len();
                if size > limit {
                    return Err(FetchError::TooBig {
                        size: Some(size),
                        limit,
                    });
                }
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|_| FetchError::NotFound)?;
                Ok((bytes, Some(path.to_string_lossy().into_owned())))
            }
            FileRef::Telegram { file_id } => {
                let bot = self.bot.as_ref().ok_or(FetchError::NoSource)?;
                self.download_with_retries(bot, file_id, limit).await
            }
        }
    }

    async fn download_with_retries(
        &self,
        bot: &Bot,
        file_id: &str,
        limit: u64,
    ) -> Result<(Vec<u8>, Option<String>), FetchError> {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF);
        let mut attempt = 1;
        loop {
            let result = tokio::time::timeout_at(deadline, download(bot, file_id, limit)).await;
            let (class, wait) = match result {
                Ok(Ok(fetched)) => return Ok(fetched),
                Ok(Err(Attempt::Final(error))) => return Err(error),
                Ok(Err(Attempt::Transient { class, wait })) => (class, wait),
                Err(_) => ("timeout", None),
            };
            let wait = wait.unwrap_or_else(|| backoff.next_delay());
            if attempt >= self.attempts || Instant::now() + wait >= deadline {
                tracing::warn!(attempt, class, "file download failed");
                return Err(FetchError::Failed {
                    class,
                    attempts: attempt,
                });
            }
            tracing::debug!(attempt, class, ?wait, "file download failed; retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// One attempt: `getFile`, then the download, read up to `limit` bytes.
async fn download(
    bot: &Bot,
    file_id: &str,
    limit: u64,
) -> Result<(Vec<u8>, Option<String>), Attempt> {
    let file = bot
        .get_file(FileId(file_id.to_owned()))
        .await
        .map_err(|error| get_file_error(error, limit))?;
    let declared = u64::from(file.meta.size);
    // teloxide reports u32::MAX when Telegram gave no size.
    if file.meta.size != u32::MAX && declared > limit {
        return Err(Attempt::Final(FetchError::TooBig {
            size: Some(declared),
            limit,
        }));
    }
    let mut url = bot.api_url();
    // The same URL teloxide's own download builds; the API URL was checked
    // at start to be a base URL.
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty();
        segments.push("file");
        segments.push(&format!("bot{}", bot.token()));
        segments.extend(file.path.split('/'));
    }
    let mut response = bot
        .client()
        .get(url)
        .send()
        .await
        .map_err(|error| transient(&error))?;
    let status = response.status();
    if status.as_u16() == 429 || status.is_server_error() {
        return Err(Attempt::Transient {
            class: if status.as_u16() == 429 {
                "rate_limited"
            } else {
                "server_error"
            },
            wait: None,
        });
    }
    if !status.is_success() {
        return Err(Attempt::Final(FetchError::NotFound));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(declared.min(limit)).unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(|error| transient(&error))? {
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(Attempt::Final(FetchError::TooBig { size: None, limit }));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, Some(file.path)))
}

/// A download's network error; its text (which names the URL, and so the
/// token) is never kept.
fn transient(error: &reqwest::Error) -> Attempt {
    Attempt::Transient {
        class: if error.is_timeout() {
            "timeout"
        } else if error.is_connect() {
            "connect"
        } else {
            "network"
        },
        wait: None,
    }
}

/// `getFile`'s failure: Telegram's "no such file" and "file is too big"
/// are final; the rest may pass.
fn get_file_error(error: RequestError, limit: u64) -> Attempt {
    match error {
        RequestError::RetryAfter(after) => Attempt::Transient {
            class: "rate_limited",
            wait: Some(after.duration()),
        },
        RequestError::Api(ApiError::Unknown(description))
            if description.contains("file is too big") =>
        {
            Attempt::Final(FetchError::TooBig { size: None, limit })
        }
        RequestError::Api(_) | RequestError::MigrateToChatId(_) => {
            Attempt::Final(FetchError::NotFound)
        }
        RequestError::Network(_) => Attempt::Transient {
            class: "network",
            wait: None,
        },
        RequestError::InvalidJson { .. } | RequestError::Io(_) => Attempt::Transient {
            class: "invalid_answer",
            wait: None,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::config::Config;

    fn fetcher(budget: u64) -> Fetcher {
        let config = Config::from_defaults_with(&format!(
            "media.max_in_flight_bytes = {budget}\nmedia.max_image_bytes = 1\n\
             media.max_audio_bytes = 1\nmedia.max_document_bytes = 1\n"
        ))
        .unwrap();
        Fetcher::new(None, &config.media)
    }

    #[tokio::test]
    async fn local_files_are_read_within_their_limit() {
        let fetcher = fetcher(UNIT);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("note.txt");
        std::fs::write(&path, b"hello").unwrap();
        let held = fetcher.reserve(&[5]).await.unwrap();
        let file = FileRef::Local(path);
        let read = fetcher
            .fetch_then(&held, &file, 5, |bytes, _| bytes.len())
            .await;
        assert_eq!(read, Ok(5));
        let refused = fetcher.fetch_then(&held, &file, 4, |_, _| ()).await;
        assert_eq!(
            refused,
            Err(FetchError::TooBig {
                size: Some(5),
                limit: 4
            })
        );
        let missing = FileRef::Local(dir.path().join("missing"));
        let gone = fetcher.fetch_then(&held, &missing, 5, |_, _| ()).await;
        assert_eq!(gone, Err(FetchError::NotFound));
        let telegram = FileRef::Telegram {
            file_id: "x".into(),
        };
        let no_bot = fetcher.fetch_then(&held, &telegram, 5, |_, _| ()).await;
        assert_eq!(no_bot, Err(FetchError::NoSource));
    }

    #[tokio::test]
    async fn reservations_take_bytes_whole_and_at_most_the_budget() {
        // A budget of 4 units (256 KiB).
        let fetcher = fetcher(4 * UNIT);
        let album = fetcher.reserve(&[10 * UNIT, 10 * UNIT]).await.unwrap();
        assert_eq!(album.slots(), 2, "files fetched at once under it");
        // More than the budget takes all of it: nothing left for the next.
        let waiting = tokio::time::timeout(Duration::from_millis(50), fetcher.reserve(&[1])).await;
        assert!(waiting.is_err());
        drop(album);
        // Small files share the budget: three photos of 60 KiB at once.
        let photos: Vec<_> =
            futures_util::future::join_all((0..3).map(|_| fetcher.reserve(&[60 * 1024]))).await;
        assert!(photos.iter().all(Option::is_some));
        let fourth = fetcher.reserve(&[2 * UNIT]);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), fourth)
                .await
                .is_err(),
            "one unit is left, two are asked"
        );
    }
}
