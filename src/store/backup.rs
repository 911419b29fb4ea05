//! Backup and restore: what `POST /backup` writes (`write_backup`, from a
//! snapshot the writer takes in its order) and `llmgram restore` reads back
//! ([`restore`]), the format, and where a backup may be written.
//!
//! A backup is a directory holding two files:
//!
//! - `records.bin`: every record of every keyspace as frames
//!   `[keyspace: u8][key length: u32 LE][key][value length: u32 LE][value]`,
//!   the keyspace an index into [`KEYSPACES`];
//! - `manifest.json`, written last and atomically (a rename): the format
//!   name and version, when the backup was made, the record count of each
//!   keyspace, the size of `records.bin` and its SHA-256.
//!
//! A directory without a valid manifest is not a backup: an interrupted one
//! has none, and a restore refuses it. A restore only reads these two files
//! (the source is never opened as a database, so nothing is ever written
//! into it) and checks the size, the checksum and every count before it
//! writes anything.
//!
//! Targets ([`prepare_target`]): a backup is written by the running bot on a
//! request from the ops listener, so where it goes is checked after resolving
//! symlinks and `..`: never inside the data directory (fjall would find a
//! foreign directory among its own at the next start and refuse to open)
//! nor above it, only the last directory of the path is created, and it must
//! be new or empty.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use fjall::{PersistMode, Readable};

use super::db::{OpenStore, StoreView};
use super::{BOT, CHATS, FAILED, StoreError, UPDATES, USAGE};

/// The `format` of every manifest.
pub const FORMAT: &str = "llmgram-backup";
/// The manifest version this build writes and reads.
pub const VERSION: u32 = 1;
/// The manifest's file name inside a backup.
pub const MANIFEST: &str = "manifest.json";
/// The records' file name inside a backup.
pub const RECORDS: &str = "records.bin";
/// The keyspaces a backup holds, in the order of the frames' index.
pub const KEYSPACES: [&str; 5] = [CHATS, UPDATES, BOT, FAILED, USAGE];

/// A manifest larger than this is not one of ours (ours are a few hundred
/// bytes); refused before reading it into memory.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// Why a backup or restore did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    /// The target directory is not allowed (inside the data directory,
    /// missing parent, not empty, …): the caller's mistake.
    #[error("backup target refused: {0}")]
    Target(String),
    /// Another backup is being written; one at a time.
    #[error("a backup is already in progress; try again once it has finished")]
    Busy,
    /// The restore source is not a complete, intact backup of this format.
    #[error("{path} is not a usable backup: {reason}")]
    NotABackup {
        /// The source directory.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a backup's files failed.
    #[error("{path}: {reason}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BackupError {
    /// A short stable name for logs.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Target(_) => "target",
            Self::Busy => "busy",
            Self::NotABackup { .. } => "not_a_backup",
            Self::Io { .. } => "io",
            Self::Store(error) => error.class(),
        }
    }

    fn io(path: &Path, error: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.display().to_string(),
            reason: error.to_string(),
        }
    }
}

/// The manifest of a backup (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written by this build.
    pub version: u32,
    /// When the backup was made (RFC 3339, UTC).
    pub created_at: String,
    /// Records per keyspace, in [`KEYSPACES`] order.
    pub keyspaces: Vec<KeyspaceCount>,
    /// Records over all keyspaces.
    pub records: u64,
    /// Size of `records.bin` in bytes.
    pub bytes: u64,
    /// SHA-256 of `records.bin`, lowercase hex.
    pub sha256: String,
}

/// One keyspace's record count in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyspaceCount {
    /// The keyspace.
    pub name: String,
    /// Its records.
    pub records: u64,
}

impl Manifest {
    /// The record count of keyspace `name` (0 if absent).
    pub fn count(&self, name: &str) -> u64 {
        self.keyspaces
            .iter()
            .find(|k| k.name == name)
            .map_or(0, |k| k.records)
    }
}

/// A backup directory accepted by [`prepare_target`].
#[derive(Debug)]
pub struct Target {
    /// Its canonical path.
    pub path: PathBuf,
    /// Whether [`prepare_target`] created it (so a failed backup removes it).
    pub created: bool,
}

/// Checks and creates the directory a backup goes to: `to` must be
/// absolute, its parent must exist, and once symlinks and `..` are resolved
/// it must be neither inside `data_dir` nor above it; if it exists it must
/// be an empty directory. Creates only `to` itself.
pub fn prepare_target(to: &Path, data_dir: &Path) -> Result<Target, BackupError> {
    if !to.is_absolute() {
        return Err(BackupError::Target(format!(
            "{} is not an absolute path",
            to.display()
        )));
    }
    let data = std::fs::canonicalize(data_dir).map_err(|e| BackupError::io(data_dir, e))?;
    let (Some(parent), Some(name)) = (to.parent(), to.file_name()) else {
        return Err(BackupError::Target(format!(
            "{} does not name a directory",
            to.display()
        )));
    };
    let parent = std::fs::canonicalize(parent).map_err(|e| {
        BackupError::Target(format!(
            "{}: {e}; a backup creates only its own directory, not its parents",
            parent.display()
        ))
    })?;
    let candidate = parent.join(name);
    let exists = std::fs::symlink_metadata(&candidate).is_ok();
    let resolved = if exists {
        std::fs::canonicalize(&candidate).map_err(|e| BackupError::io(&candidate, e))?
    } else {
        candidate
    };
    outside(&resolved, &data)?;
    if exists {
        let mut entries = std::fs::read_dir(&resolved).map_err(|e| {
            BackupError::Target(format!("{} is not a directory: {e}", resolved.display()))
        })?;
        if entries.next().is_some() {
            return Err(BackupError::Target(format!(
                "{} is not empty; a backup needs a new or empty directory",
                resolved.display()
            )));
        }
        return Ok(Target {
            path: resolved,
            created: false,
        });
    }
    // `create_dir` fails if anything (a symlink too) appeared at the name
    // since the check, so what is created is what was checked.
    std::fs::create_dir(&resolved).map_err(|e| BackupError::io(&resolved, e))?;
    Ok(Target {
        path: resolved,
        created: true,
    })
}

/// Refuses a restore whose source and target overlap, and a target that is
/// not empty. `to` may not exist yet (nor its parents): it is resolved
/// through its nearest existing ancestor.
pub fn check_restore_target(from: &Path, to: &Path) -> Result<(), BackupError> {
    let source = std::fs::canonicalize(from).map_err(|e| BackupError::io(from, e))?;
    let target = resolve_lenient(to)?;
    if target.starts_with(&source) || source.starts_with(&target) {
        return Err(BackupError::Target(format!(
            "the data directory {} and the backup {} overlap",
            to.display(),
            from.display()
        )));
    }
    let occupied = std::fs::read_dir(&target).is_ok_and(|mut entries| entries.next().is_some());
    if occupied || (target.exists() && !target.is_dir()) {
        return Err(BackupError::Target(format!(
            "{} is not empty; a restore needs an empty data directory",
            to.display()
        )));
    }
    Ok(())
}

/// `path` with symlinks and `..` resolved as far as it exists; the missing
/// rest is appended as written (it may not contain `..`).
fn resolve_lenient(path: &Path) -> Result<PathBuf, BackupError> {
    let absolute = std::path::absolute(path).map_err(|e| BackupError::io(path, e))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(existing).is_err() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        rest.push(name.to_owned());
        existing = parent;
    }
    let mut resolved = std::fs::canonicalize(existing).map_err(|e| BackupError::io(existing, e))?;
    for name in rest.iter().rev() {
        if Path::new(name)
            .components()
            .any(|c| c == Component::ParentDir)
        {
            return Err(BackupError::Target(format!(
                "{} has `..` in its missing part",
                path.display()
            )));
        }
        resolved.push(name);
    }
    Ok(resolved)
}

fn outside(target: &Path, data: &Path) -> Result<(), BackupError> {
    if target.starts_with(data) {
        return Err(BackupError::Target(format!(
            "{} is inside the data directory {}",
            target.display(),
            data.display()
        )));
    }
    if data.starts_with(target) {
        return Err(BackupError::Target(format!(
            "{} contains the data directory {}",
            target.display(),
            data.display()
        )));
    }
    Ok(())
}

/// Writes `records.bin` frame by frame, then the manifest.
pub struct RecordsWriter {
    dir: PathBuf,
    file: BufWriter<File>,
    hash: ring::digest::Context,
    counts: [u64; KEYSPACES.len()],
    bytes: u64,
}

impl RecordsWriter {
    /// Creates `records.bin` in `dir` (which must not hold one).
    pub fn create(dir: &Path) -> Result<Self, BackupError> {
        let path = dir.join(RECORDS);
        let file = File::create_new(&path).map_err(|e| BackupError::io(&path, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file: BufWriter::with_capacity(1 << 20, file),
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            counts: [0; KEYSPACES.len()],
            bytes: 0,
        })
    }

    /// Appends one record of keyspace `KEYSPACES[keyspace]`.
    pub fn write(&mut self, keyspace: usize, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        let (Some(count), Ok(tag)) = (self.counts.get_mut(keyspace), u8::try_from(keyspace)) else {
            return Err(BackupError::Target(format!("no keyspace {keyspace}")));
        };
        *count += 1;
        let path = self.dir.join(RECORDS);
        let length = |part: &[u8]| {
            u32::try_from(part.len())
                .map(u32::to_le_bytes)
                .map_err(|_| BackupError::io(&path, "a record over 4 GiB"))
        };
        let (key_len, value_len) = (length(key)?, length(value)?);
        for part in [&[tag][..], &key_len, key, &value_len, value] {
            self.hash.update(part);
            self.file
                .write_all(part)
                .map_err(|e| BackupError::io(&path, e))?;
            self.bytes += part.len() as u64;
        }
        Ok(())
    }

    /// Makes `records.bin` durable, then writes the manifest (to a temporary
    /// name, synced, renamed: it appears whole or not at all).
    pub fn finish(self) -> Result<Manifest, BackupError> {
        let records_path = self.dir.join(RECORDS);
        let file = self
            .file
            .into_inner()
            .map_err(|e| BackupError::io(&records_path, e.error()))?;
        file.sync_all()
            .map_err(|e| BackupError::io(&records_path, e))?;
        let keyspaces: Vec<KeyspaceCount> = KEYSPACES
            .iter()
            .zip(self.counts)
            .map(|(name, records)| KeyspaceCount {
                name: (*name).to_owned(),
                records,
            })
            .collect();
        let manifest = Manifest {
            format: FORMAT.to_owned(),
            version: VERSION,
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            records: self.counts.iter().sum(),
            keyspaces,
            bytes: self.bytes,
            sha256: hex(self.hash.finish().as_ref()),
        };
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| BackupError::io(&self.dir.join(MANIFEST), e))?;
        let partial = self.dir.join(format!("{MANIFEST}.partial"));
        let mut file = File::create_new(&partial).map_err(|e| BackupError::io(&partial, e))?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(|e| BackupError::io(&partial, e))?;
        let path = self.dir.join(MANIFEST);
        std::fs::rename(&partial, &path).map_err(|e| BackupError::io(&path, e))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| BackupError::io(&self.dir, e))?;
        Ok(manifest)
    }

    /// Removes what was written, after a failure (best effort; the
    /// directory goes too if `remove_dir` and it is empty then).
    pub fn discard(dir: &Path, remove_dir: bool) {
        for name in [RECORDS, MANIFEST, &format!("{MANIFEST}.partial")] {
            let _ = std::fs::remove_file(dir.join(name));
        }
        if remove_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A backup whose manifest, size, checksum and counts have been checked.
#[derive(Debug)]
pub struct Verified {
    /// Its manifest.
    pub manifest: Manifest,
    dir: PathBuf,
}

/// Checks the backup in `dir`, reading only: the manifest's format, version
/// and shape, then every frame of `records.bin` against its size, checksum
/// and per-keyspace counts.
pub fn verify(dir: &Path) -> Result<Verified, BackupError> {
    let refuse = |reason: String| BackupError::NotABackup {
        path: dir.display().to_string(),
        reason,
    };
    if !dir.is_dir() {
        return Err(refuse("not a directory".into()));
    }
    let manifest_path = dir.join(MANIFEST);
    let size = std::fs::metadata(&manifest_path)
        .map_err(|e| {
            refuse(format!(
                "no {MANIFEST} ({e}); only `llmgram backup` makes backups"
            ))
        })?
        .len();
    if size > MAX_MANIFEST_BYTES {
        return Err(refuse(format!(
            "{MANIFEST} is {size} bytes, not a manifest"
        )));
    }
    let text = std::fs::read(&manifest_path).map_err(|e| BackupError::io(&manifest_path, e))?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| refuse(format!("{MANIFEST} is not JSON: {e}")))?;
    if value["format"] != FORMAT {
        return Err(refuse(format!("{MANIFEST} is not an {FORMAT} manifest")));
    }
    if value["version"] != VERSION {
        return Err(refuse(format!(
            "manifest version {} is not supported (this build reads version {VERSION})",
            value["version"]
        )));
    }
    let manifest: Manifest = serde_json::from_value(value)
        .map_err(|e| refuse(format!("{MANIFEST} is malformed: {e}")))?;
    let names: Vec<&str> = manifest.keyspaces.iter().map(|k| k.name.as_str()).collect();
    if names != KEYSPACES {
        return Err(refuse(format!(
            "manifest keyspaces {names:?}, expected {KEYSPACES:?}"
        )));
    }
    let total: u64 = manifest.keyspaces.iter().map(|k| k.records).sum();
    if total != manifest.records {
        return Err(refuse(format!(
            "manifest record count {} is not the sum of its keyspaces ({total})",
            manifest.records
        )));
    }

    let verified = Verified {
        manifest,
        dir: dir.to_path_buf(),
    };
    let mut frames = verified.frames()?;
    let mut counts = [0u64; KEYSPACES.len()];
    for frame in &mut frames {
        let (keyspace, _, _) = frame?;
        counts[keyspace] += 1;
    }
    let sha256 = frames.finish();
    let manifest = &verified.manifest;
    if sha256 != manifest.sha256 {
        return Err(refuse(format!(
            "{RECORDS} does not match the manifest's checksum (damaged or altered)"
        )));
    }
    for (expected, found) in manifest.keyspaces.iter().zip(counts) {
        if expected.records != found {
            return Err(refuse(format!(
                "keyspace {} holds {found} records, the manifest's count is {}",
                expected.name, expected.records
            )));
        }
    }
    Ok(verified)
}

impl Verified {
    /// The records, read again from `records.bin`.
    pub fn frames(&self) -> Result<Frames, BackupError> {
        let path = self.dir.join(RECORDS);
        let refuse = |reason: String| BackupError::NotABackup {
            path: self.dir.display().to_string(),
            reason,
        };
        let file = File::open(&path).map_err(|e| refuse(format!("no {RECORDS}: {e}")))?;
        let size = file
            .metadata()
            .map_err(|e| BackupError::io(&path, e))?
            .len();
        if size != self.manifest.bytes {
            return Err(refuse(format!(
                "{RECORDS} is {size} bytes, the manifest's count is {}",
                self.manifest.bytes
            )));
        }
        Ok(Frames {
            dir: self.dir.clone(),
            reader: BufReader::with_capacity(1 << 20, file),
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            left: size,
            failed: false,
        })
    }
}

/// The records of a backup in file order: `(keyspace index, key, value)`.
pub struct Frames {
    dir: PathBuf,
    reader: BufReader<File>,
    hash: ring::digest::Context,
    /// Bytes not yet read: no length field may claim more.
    left: u64,
    failed: bool,
}

impl Frames {
    /// The SHA-256 (hex) of what was read.
    pub fn finish(self) -> String {
        hex(self.hash.finish().as_ref())
    }

    fn read(&mut self, len: u64) -> Result<Vec<u8>, BackupError> {
        if len > self.left {
            return Err(BackupError::NotABackup {
                path: self.dir.display().to_string(),
                reason: format!("{RECORDS} is truncated or damaged (checksum cannot match)"),
            });
        }
        let mut buffer = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
        self.reader
            .read_exact(&mut buffer)
            .map_err(|e| BackupError::io(&self.dir.join(RECORDS), e))?;
        self.hash.update(&buffer);
        self.left -= len;
        Ok(buffer)
    }

    fn length(&mut self) -> Result<u64, BackupError> {
        let bytes = self.read(4)?;
        let bytes: [u8; 4] = bytes.as_slice().try_into().unwrap_or_default();
        Ok(u64::from(u32::from_le_bytes(bytes)))
    }

    fn frame(&mut self) -> Result<(usize, Vec<u8>, Vec<u8>), BackupError> {
        let tag = usize::from(self.read(1)?.first().copied().unwrap_or(u8::MAX));
        if tag >= KEYSPACES.len() {
            return Err(BackupError::NotABackup {
                path: self.dir.display().to_string(),
                reason: format!("{RECORDS} is damaged: keyspace {tag} (checksum cannot match)"),
            });
        }
        let key_len = self.length()?;
        let key = self.read(key_len)?;
        let value_len = self.length()?;
        let value = self.read(value_len)?;
        Ok((tag, key, value))
    }
}

impl Iterator for Frames {
    type Item = Result<(usize, Vec<u8>, Vec<u8>), BackupError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 || self.failed {
            return None;
        }
        let frame = self.frame();
        self.failed = frame.is_err();
        Some(frame)
    }
}

/// What a backup or restore copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BackupReport {
    /// Key-value records copied, over all keyspaces.
    pub records: u64,
    /// Chat records among them.
    pub chats: u64,
}

/// Records restored per write batch: large enough to amortise the commit,
/// small enough to bound the memory a batch holds.
const COPY_BATCH: usize = 10_000;

/// Writes `source` as a backup into `to`, which [`prepare_target`] checks
/// against the data directory `data_dir` first. A failed backup leaves no
/// partial files behind. Runs on a thread of its own, off the writer: the
/// view is a snapshot, so writes go on meanwhile.
pub(crate) fn write_backup(
    source: &StoreView,
    to: &Path,
    data_dir: &Path,
) -> Result<BackupReport, BackupError> {
    let target = prepare_target(to, data_dir)?;
    let written = write_records(source, &target.path);
    if written.is_err() {
        RecordsWriter::discard(&target.path, target.created);
    }
    written
}

fn write_records(source: &StoreView, dir: &Path) -> Result<BackupReport, BackupError> {
    let mut out = RecordsWriter::create(dir)?;
    for (name, keyspace) in &source.keyspaces {
        let Some(index) = KEYSPACES.iter().position(|k| k == name) else {
            continue;
        };
        for item in source.snapshot.iter(keyspace) {
            let (key, value) = item.into_inner().map_err(StoreError::from)?;
            out.write(index, &key, &value)?;
        }
    }
    let manifest = out.finish()?;
    Ok(BackupReport {
        records: manifest.records,
        chats: manifest.count(CHATS),
    })
}

/// Fills the empty data directory `to` from the backup at `from` (the
/// service must not be running on `to`). The backup is only read: its
/// manifest, size, checksum and counts are checked before anything is
/// written, and it is never opened as a database.
pub fn restore(from: &Path, to: &Path) -> Result<BackupReport, BackupError> {
    let verified = verify(from)?;
    check_restore_target(from, to)?;
    let target = OpenStore::open(to)?;
    let mut batch = target.db.batch();
    let mut frames = verified.frames()?;
    for frame in &mut frames {
        let (index, key, value) = frame?;
        let keyspace = KEYSPACES
            .get(index)
            .and_then(|name| target.keyspace(name))
            .ok_or_else(|| BackupError::Target(format!("no keyspace {index}")))?;
        batch.insert(keyspace, key, value);
        if batch.len() >= COPY_BATCH {
            std::mem::replace(&mut batch, target.db.batch())
                .commit()
                .map_err(StoreError::from)?;
        }
    }
    // The file was read twice: the verified pass and this one. Were it
    // changed in between, what was written is not what was verified.
    if frames.finish() != verified.manifest.sha256 {
        return Err(BackupError::NotABackup {
            path: from.display().to_string(),
            reason: format!(
                "it changed while being restored; {} holds a partial copy to discard",
                to.display()
            ),
        });
    }
    batch.commit().map_err(StoreError::from)?;
    target
        .db
        .persist(PersistMode::SyncAll)
        .map_err(StoreError::from)?;
    Ok(BackupReport {
        records: verified.manifest.records,
        chats: verified.manifest.count(CHATS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup_with(records: &[(usize, &[u8], &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = RecordsWriter::create(dir.path()).unwrap();
        for (keyspace, key, value) in records {
            writer.write(*keyspace, key, value).unwrap();
        }
        writer.finish().unwrap();
        dir
    }

    #[test]
    fn a_written_backup_verifies_and_reads_back() {
        let dir = backup_with(&[(0, b"k1", b"v1"), (0, b"k2", b""), (2, b"bans", b"x")]);
        let verified = verify(dir.path()).unwrap();
        assert_eq!(verified.manifest.records, 3);
        assert_eq!(verified.manifest.count(CHATS), 2);
        assert_eq!(verified.manifest.count(BOT), 1);
        let frames: Vec<_> = verified.frames().unwrap().map(Result::unwrap).collect();
        assert_eq!(frames[1], (0, b"k2".to_vec(), Vec::new()));
        assert_eq!(frames[2], (2, b"bans".to_vec(), b"x".to_vec()));
    }

    /// A record: keyspace index, key, value.
    type Record = (usize, Vec<u8>, Vec<u8>);

    /// Every record of every keyspace, in backup order.
    fn contents(store: &OpenStore) -> Result<Vec<Record>, Box<dyn std::error::Error>> {
        let mut all = Vec::new();
        for (index, name) in KEYSPACES.iter().enumerate() {
            let keyspace = store.keyspace(name).ok_or("keyspace missing")?;
            for item in keyspace.iter() {
                let (key, value) = item.into_inner()?;
                all.push((index, key.to_vec(), value.to_vec()));
            }
        }
        Ok(all)
    }

    #[test]
    fn a_backup_restores_to_an_equal_store_and_a_tampered_one_is_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let data = root.path().join("data");
        let source = OpenStore::open(&data)?;
        for chat in 0..30_u8 {
            source.chats.insert([b'c', chat], vec![chat; 100])?;
        }
        source.updates.insert([0, 0, 0, 9], b"update")?;
        source.bot.insert(b"bans", b"setting")?;
        source.failed.insert(b"f1", b"bad")?;
        source.usage.insert([b'c', 1], b"spent")?;
        let view = source.view();
        // Written after the snapshot: not in the backup.
        source.chats.insert(b"late", b"x")?;
        let report = write_backup(&view, &root.path().join("copy"), &data)?;
        assert_eq!(
            report,
            BackupReport {
                records: 34,
                chats: 30
            }
        );
        let mut expected = contents(&source)?;
        expected.retain(|(_, key, _)| key.as_slice() != b"late");

        let restored = root.path().join("restored");
        assert_eq!(restore(&root.path().join("copy"), &restored)?, report);
        assert_eq!(contents(&OpenStore::open(&restored)?)?, expected);

        // One byte changed in a value: the checksum no longer matches, and
        // nothing is restored.
        let records = root.path().join("copy").join(RECORDS);
        let mut bytes = std::fs::read(&records)?;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&records, bytes)?;
        let second = root.path().join("second");
        assert!(matches!(
            restore(&root.path().join("copy"), &second),
            Err(BackupError::NotABackup { .. })
        ));
        assert!(!second.exists());
        Ok(())
    }

    #[test]
    fn an_empty_backup_is_still_a_backup() {
        let dir = backup_with(&[]);
        assert_eq!(verify(dir.path()).unwrap().manifest.records, 0);
    }

    #[test]
    fn a_truncated_or_extended_record_file_is_refused() {
        let dir = backup_with(&[(0, b"k1", b"v1")]);
        let path = dir.path().join(RECORDS);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = verify(dir.path()).unwrap_err();
        assert!(err.to_string().contains("bytes"), "{err}");
        // Same size, a length field that claims more than the file holds.
        let mut long = bytes.clone();
        long[1] = 0xff;
        std::fs::write(&path, &long).unwrap();
        assert!(matches!(
            verify(dir.path()),
            Err(BackupError::NotABackup { .. })
        ));
    }

    #[test]
    fn targets_inside_or_above_the_data_directory_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir_all(data.join("keyspaces")).unwrap();
        for bad in [
            data.join("keyspaces/x"),
            data.join("x"),
            data.clone(),
            data.join("../data/x"),
            root.path().to_path_buf(),
            PathBuf::from("relative"),
            root.path().join("missing/x"),
        ] {
            assert!(
                matches!(prepare_target(&bad, &data), Err(BackupError::Target(_))),
                "{}",
                bad.display()
            );
        }
        // Above the data directory, even when "empty" is not the question.
        let above = root.path().join("above");
        std::fs::create_dir_all(above.join("data")).unwrap();
        let err = prepare_target(&above, &above.join("data")).unwrap_err();
        assert!(err.to_string().contains("contains"), "{err}");
        let good = prepare_target(&root.path().join("copy"), &data).unwrap();
        assert!(good.created && good.path.is_dir());
    }

    #[test]
    fn restore_targets_may_not_overlap_the_backup() {
        let root = tempfile::tempdir().unwrap();
        let backup = root.path().join("backup");
        std::fs::create_dir(&backup).unwrap();
        assert!(check_restore_target(&backup, &backup.join("data/new")).is_err());
        assert!(check_restore_target(&backup.join("."), root.path()).is_err());
        assert!(check_restore_target(&backup, &root.path().join("a/b/data")).is_ok());
    }
}
