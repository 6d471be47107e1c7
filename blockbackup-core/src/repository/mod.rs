//! The backup repository: a directory of backups, each a self-describing
//! subdirectory, and the rules for naming, listing, chaining, expiring and
//! checking them.
//!
//! ```text
//! <root>/pg_blockbackup.repository.json   marker: format version, system identifier
//! <root>/lock                             flock'ed while a backup or delete runs
//! <root>/backups/<id>/backup.json         BackupRecord
//! <root>/backups/<id>/contents.json       BackupContents
//! <root>/backups/<id>/pgdata/...          the data directory image
//! <root>/backups/<id>/dump/...            a dump's pg_dump output
//! <root>/backups/<id>/pg_dump.log         a dump's pg_dump standard error
//! <root>/backups/<id>/running.lock        flock'ed while a dump runs
//! <root>/backups/<id>/reading.lock        shared flock while a restore reads it
//! <root>/create.lock                      flock'ed while an id is chosen
//! ```
//!
//! # Why it is built this way
//!
//! The directory tree is the only catalog, so that a repository survives
//! the server (the offline restore tool reads the same files) and so that
//! there is no second copy of the truth to drift. Every state change is a
//! single atomic step on that tree:
//!
//! * a backup appears when its first record is written, by renaming a
//!   complete `.creating-<id>` directory (record already inside) to
//!   `<id>`, so a listing never meets a backup directory without its
//!   record;
//! * records are replaced with write-to-temp, fsync, rename, fsync-dir;
//! * a backup disappears by renaming it to `.deleting-<id>` first, so a
//!   crash in the middle of a long recursive delete leaves a name listings
//!   ignore, never a half-deleted backup that looks real.
//!
//! A physical backup holds the repository lock from start to end, so a
//! RUNNING physical backup found while the lock is free was cut off. Dumps
//! run side by side (two databases dumped at once) and do not hold it:
//! each holds its own `running.lock`, taken before its record becomes
//! visible, so a RUNNING dump whose lock is free was cut off too
//! ([`Repository::is_dump_running`]). Choosing a new id and publishing
//! the first record happen under the short `create.lock`, which both kinds
//! take, so two backups started in the same second never pick one name.
//!
//! One damaged entry must not lock the whole catalog: [`Repository::list`]
//! returns the backups it can read and, apart, the entries it cannot
//! ([`DamagedEntry`]), which callers show as CORRUPT, never use, never
//! expire (nor what depends on them), and delete only when asked to.
//!
//! A restore holds a shared lock on every backup of its chain while it
//! reads, and [`Repository::remove_backup`] refuses a backup so held.
//!
//! The marker ties a repository to one cluster: incremental backups are
//! only meaningful against backups of the same system, and mixing two
//! clusters' backups in one chain would restore garbage.
//!
//! Retention ([`expire_plan`]) and deletion ([`delete_plan`]) are pure
//! functions over the records, so their rules (never break a chain that a
//! kept backup needs, never touch a RUNNING backup) are unit-tested without
//! a file system; the caller then removes what they return, children first.
//!
//! Every backup id that comes from a user goes through
//! [`validate_backup_id`] before it is joined to a path, because the ids
//! are directory names and `../..` is a directory name too.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::civil_time::civil_from_days;
use crate::content_checksum::{crc32c_of, Tallied};
use crate::repository::catalog::{
    BackupContents, BackupMode, BackupRecord, BackupStatus, Compression,
};
use crate::safe_fs::{is_not_regular, open_regular_beneath};

pub mod catalog;
pub mod upkeep;
use crate::safe_path::safe_relative_path;
use crate::summary::directory::{write_file_durably, SummaryDirError};

pub const MARKER_FILE_NAME: &str = "pg_blockbackup.repository.json";
const MARKER_FORMAT: &str = "pg_blockbackup repository";
const MARKER_VERSION: u32 = 1;
const LOCK_FILE_NAME: &str = "lock";
const BACKUPS_DIR: &str = "backups";
const RECORD_FILE_NAME: &str = "backup.json";
const CONTENTS_FILE_NAME: &str = "contents.json";
const DATA_DIR_NAME: &str = "pgdata";
const DUMP_DIR_NAME: &str = "dump";
const DUMP_LOG_NAME: &str = "pg_dump.log";
const RUNNING_LOCK_NAME: &str = "running.lock";
const READING_LOCK_NAME: &str = "reading.lock";
/// Directories inside a backup that only a run in progress uses.
const STAGING_DIRS: &[&str] = &["staging", ".restore-point-staging"];
const CREATE_LOCK_NAME: &str = "create.lock";
const DELETING_PREFIX: &str = ".deleting-";
const CREATING_PREFIX: &str = ".creating-";
const MAX_BACKUP_ID_LEN: usize = 64;
const MICROS_PER_DAY: i64 = 86_400_000_000;

#[derive(Debug, Error)]
pub enum RepositoryError {
    #[error("could not access \"{}\": {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Write(#[from] SummaryDirError),
    #[error(
        "\"{}\" is not a pg_blockbackup repository (it has no {MARKER_FILE_NAME}); check the repository path",
        root.display()
    )]
    NotARepository { root: PathBuf },
    #[error(
        "directory \"{}\" is not empty and is not a pg_blockbackup repository; use an empty or new directory for the repository",
        root.display()
    )]
    NotEmpty { root: PathBuf },
    #[error("repository marker \"{}\" is damaged: {detail}", path.display())]
    BadMarker { path: PathBuf, detail: String },
    #[error(
        "repository \"{}\" belongs to the cluster with system identifier {repository_system_identifier}, not to this one ({system_identifier}); use a separate repository for each cluster",
        root.display()
    )]
    OtherCluster {
        root: PathBuf,
        repository_system_identifier: u64,
        system_identifier: u64,
    },
    #[error("invalid backup id {id:?}: a backup id is 1 to {MAX_BACKUP_ID_LEN} characters from A-Z, a-z, 0-9, '_' and '-'")]
    InvalidBackupId { id: String },
    #[error("backup \"{id}\" does not exist in the repository; list the backups to see which do")]
    BackupNotFound { id: String },
    #[error(
        "\"{}\" could not be parsed: {source}; the backup is damaged: delete it or restore the file",
        path.display()
    )]
    BadJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "\"{}\" describes backup \"{found}\", not the directory it is in; the repository was edited by hand: move the directory back or delete it",
        path.display()
    )]
    RecordMismatch { path: PathBuf, found: String },
    #[error(
        "another backup or delete is running on this repository (\"{}\" is locked); wait for it to finish",
        path.display()
    )]
    Busy { path: PathBuf },
    #[error(
        "backup \"{id}\" has incremental backups that depend on it ({}); delete those first or use cascade",
        children.join(", ")
    )]
    HasChildren { id: String, children: Vec<String> },
    #[error("backup \"{id}\" depends on backup \"{parent}\", which is not in the repository; \"{id}\" cannot be restored or used as a parent")]
    MissingParent { id: String, parent: String },
    #[error("backup \"{id}\" is {} and cannot be restored or used as a parent", status.as_str())]
    NotUsable { id: String, status: BackupStatus },
    #[error("backup \"{id}\" was taken from the cluster with system identifier {found}, not {expected}; it does not belong in this repository")]
    ForeignBackup {
        id: String,
        found: u64,
        expected: u64,
    },
    #[error("the chain of backup \"{id}\" is broken: {detail}")]
    BrokenChain { id: String, detail: String },
    #[error("backup \"{id}\" is a dump of database \"{database}\"; a dump is restored with pg_restore (or psql for the plain format), not by restore_backup")]
    IsDump { id: String, database: String },
    #[error("backup \"{id}\" is still running; cancel it (cancel_dump_agent) or wait for it to end first")]
    StillRunning { id: String },
    #[error("backup \"{id}\" is being read by a restore; wait for the restore to end")]
    BeingRestored { id: String },
    #[error("backup \"{id}\" may be the parent of \"{damaged}\", whose record cannot be read; repair \"{damaged}\"'s backup.json or delete it first")]
    MayBeParentOfDamaged { id: String, damaged: String },
}

fn io_error(path: &Path, source: io::Error) -> RepositoryError {
    RepositoryError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
struct Marker {
    format: String,
    version: u32,
    system_identifier: u64,
}

/// Checks that `id` can safely name a directory: 1 to 64 characters from
/// `[A-Za-z0-9_-]`. Call it on every id that comes from a user before any
/// path is built from it.
pub fn validate_backup_id(id: &str) -> Result<(), RepositoryError> {
    let well_formed = (1..=MAX_BACKUP_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if well_formed {
        Ok(())
    } else {
        Err(RepositoryError::InvalidBackupId { id: id.to_owned() })
    }
}

/// An open repository. Opening checks the marker; nothing is cached, so
/// every query reads the tree as it is now.
#[derive(Debug)]
pub struct Repository {
    root: PathBuf,
    system_identifier: u64,
}

/// Held while a backup or delete runs; dropping it (or the process dying)
/// releases the lock.
#[derive(Debug)]
pub struct RepositoryLock {
    _file: File,
}

/// Held by the process that takes a dump, for as long as it runs.
#[derive(Debug)]
pub struct RunningLock {
    _file: File,
}

/// Held by a restore on each backup it reads; none when the lock file
/// could not be made (a full disk), since a restore must still work then.
#[derive(Debug)]
pub struct ReadingLock {
    _file: Option<File>,
}

/// A backup directory whose `backup.json` is missing, unreadable, not
/// valid JSON or about another backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedEntry {
    pub backup_id: String,
    pub problem: String,
}

/// What [`Repository::list`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    /// The readable backups, by (start time, id).
    pub records: Vec<BackupRecord>,
    /// The entries that could not be read, by id.
    pub damaged: Vec<DamagedEntry>,
}

impl Catalog {
    pub fn record(&self, id: &str) -> Option<&BackupRecord> {
        self.records.iter().find(|record| record.backup_id == id)
    }

    pub fn damaged_entry(&self, id: &str) -> Option<&DamagedEntry> {
        self.damaged.iter().find(|entry| entry.backup_id == id)
    }
}

/// What [`expire_plan`] decided for a backup it removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireAction {
    /// Removed by the retention rules.
    Deleted,
    /// Removed because taking it failed (status ERROR).
    DeletedFailed,
}

impl ExpireAction {
    /// The text `expire_backups()` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            ExpireAction::Deleted => "deleted",
            ExpireAction::DeletedFailed => "deleted (failed backup)",
        }
    }
}

/// The result of rereading a backup's files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationReport {
    pub files_checked: u64,
    /// Content bytes (after decompression) reread.
    pub bytes_checked: u64,
    /// Damage found, one message per missing or damaged file (or broken
    /// chain), naming it: the backup is CORRUPT.
    pub errors: Vec<String>,
    /// What could not be checked (permission denied, an I/O error): not
    /// evidence of damage, so the backup's status is left as it was.
    pub unchecked: Vec<String>,
    /// Pages that failed their checksum when the backup read them from the
    /// server: the stored copy is what the disk held, so the backup is not
    /// damaged, but what it holds of those pages is.
    pub source_damage: Vec<String>,
}

/// A backup's validation, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validation {
    /// The record with its new status (kept as it was when something
    /// could not be checked).
    pub record: BackupRecord,
    pub report: ValidationReport,
    /// Why the new status could not be written (a full disk, say); the
    /// verdict stands for this call.
    pub not_recorded: Option<String>,
}

impl Repository {
    /// Opens the repository at `root` for the cluster `system_identifier`,
    /// creating it (mode 0700) if the directory is missing or empty.
    pub fn open_or_create(root: &Path, system_identifier: u64) -> Result<Self, RepositoryError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|error| io_error(root, error))?;
        let marker_path = root.join(MARKER_FILE_NAME);
        let repository = if marker_path.exists() {
            Self::open(root)?
        } else {
            Self::create(root, system_identifier)?
        };
        if repository.system_identifier != system_identifier {
            return Err(RepositoryError::OtherCluster {
                root: root.to_owned(),
                repository_system_identifier: repository.system_identifier,
                system_identifier,
            });
        }
        Ok(repository)
    }

    /// Opens an existing repository (the offline tool's way in).
    pub fn open(root: &Path) -> Result<Self, RepositoryError> {
        let marker_path = root.join(MARKER_FILE_NAME);
        let bytes = match fs::read(&marker_path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(RepositoryError::NotARepository {
                    root: root.to_owned(),
                })
            }
            Err(error) => return Err(io_error(&marker_path, error)),
        };
        let bad = |detail: String| RepositoryError::BadMarker {
            path: marker_path.clone(),
            detail,
        };
        let marker: Marker =
            serde_json::from_slice(&bytes).map_err(|error| bad(error.to_string()))?;
        if marker.format != MARKER_FORMAT {
            return Err(bad(format!("unexpected format {:?}", marker.format)));
        }
        if marker.version != MARKER_VERSION {
            return Err(bad(format!(
                "repository format version {} is not supported (this version of pg_blockbackup reads version {MARKER_VERSION})",
                marker.version
            )));
        }
        Ok(Repository {
            root: root.to_owned(),
            system_identifier: marker.system_identifier,
        })
    }

    fn create(root: &Path, system_identifier: u64) -> Result<Self, RepositoryError> {
        // Refuse to scatter our files over a directory that holds other
        // things (a home directory, a data directory): a typo in the
        // setting should not turn someone's directory into a repository.
        // An empty `backups/` is what a crash during creation leaves.
        let backups = root.join(BACKUPS_DIR);
        let entries = fs::read_dir(root).map_err(|error| io_error(root, error))?;
        for entry in entries {
            let entry = entry.map_err(|error| io_error(root, error))?;
            let name = entry.file_name();
            let leftover = name == BACKUPS_DIR && is_empty_directory(&backups)?;
            if name != "lost+found" && !leftover {
                return Err(RepositoryError::NotEmpty {
                    root: root.to_owned(),
                });
            }
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&backups)
            .map_err(|error| io_error(&backups, error))?;
        let marker = Marker {
            format: MARKER_FORMAT.to_owned(),
            version: MARKER_VERSION,
            system_identifier,
        };
        // The marker goes last, so that a directory with a marker is
        // always a complete repository.
        write_file_durably(root, MARKER_FILE_NAME, &to_json(&marker))?;
        Ok(Repository {
            root: root.to_owned(),
            system_identifier,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The system identifier of the cluster the repository belongs to.
    pub fn system_identifier(&self) -> u64 {
        self.system_identifier
    }

    /// `<root>/backups/<id>`; `id` must have passed [`validate_backup_id`].
    pub fn backup_dir(&self, id: &str) -> PathBuf {
        self.backups_dir().join(id)
    }

    /// `<root>/backups/<id>/pgdata`, the data directory image.
    pub fn data_dir(&self, id: &str) -> PathBuf {
        self.backup_dir(id).join(DATA_DIR_NAME)
    }

    /// `<root>/backups/<id>/dump`, where a dump's output goes.
    pub fn dump_dir(&self, id: &str) -> PathBuf {
        self.backup_dir(id).join(DUMP_DIR_NAME)
    }

    /// `<root>/backups/<id>/pg_dump.log`, a dump's pg_dump standard error.
    pub fn dump_log(&self, id: &str) -> PathBuf {
        self.backup_dir(id).join(DUMP_LOG_NAME)
    }

    /// The directory the paths of a backup's `contents.json` are under.
    pub fn content_dir(&self, record: &BackupRecord) -> PathBuf {
        match record.mode {
            BackupMode::Dump => self.dump_dir(&record.backup_id),
            BackupMode::Full | BackupMode::Incremental => self.data_dir(&record.backup_id),
        }
    }

    fn backups_dir(&self) -> PathBuf {
        self.root.join(BACKUPS_DIR)
    }

    /// Gives `record` a fresh id (from its start time and mode) and
    /// publishes it. For a dump, the returned lock is taken before the
    /// record becomes visible and marks the dump as running until dropped.
    pub fn create_backup(
        &self,
        record: &mut BackupRecord,
    ) -> Result<Option<RunningLock>, RepositoryError> {
        let path = self.root.join(CREATE_LOCK_NAME);
        let guard = open_lock_file(&path)?;
        guard.lock().map_err(|error| io_error(&path, error))?;
        record.backup_id = self.new_backup_id(record.start_time_us, record.mode);
        let running = self.publish_new_record(record)?;
        drop(guard);
        Ok(running)
    }

    /// Whether a RUNNING dump's process still holds its lock; false also
    /// when the backup or its lock file is gone.
    pub fn is_dump_running(&self, id: &str) -> Result<bool, RepositoryError> {
        validate_backup_id(id)?;
        let path = self.backup_dir(id).join(RUNNING_LOCK_NAME);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(io_error(&path, error)),
        };
        match file.try_lock() {
            Ok(()) => Ok(false),
            Err(fs::TryLockError::WouldBlock) => Ok(true),
            Err(fs::TryLockError::Error(error)) => Err(io_error(&path, error)),
        }
    }

    /// A fresh id for a backup started at `start_time_us`:
    /// `YYYYMMDD-HHMMSS` (UTC) plus `F`, `I` or `D`, with `-2`, `-3`, …
    /// appended when that name is taken. Call it with the lock held.
    pub fn new_backup_id(&self, start_time_us: i64, mode: BackupMode) -> String {
        let base = format!("{}{}", utc_timestamp_name(start_time_us), mode_letter(mode));
        let taken = |id: &str| {
            let backups = self.backups_dir();
            backups.join(id).exists()
                || backups.join(format!("{CREATING_PREFIX}{id}")).exists()
                || backups.join(format!("{DELETING_PREFIX}{id}")).exists()
        };
        if !taken(&base) {
            return base;
        }
        let mut suffix = 2u64;
        loop {
            let candidate = format!("{base}-{suffix}");
            if !taken(&candidate) {
                return candidate;
            }
            suffix += 1;
        }
    }

    /// Every backup, by (start time, id), and apart the entries whose
    /// record cannot be read, by id. Only the backups directory itself
    /// being unreadable is an error: one damaged entry must not hide the
    /// others, and is not skipped either, since that would hide it and
    /// could let expiry remove what depends on it.
    pub fn list(&self) -> Result<Catalog, RepositoryError> {
        let backups = self.backups_dir();
        let entries = match fs::read_dir(&backups) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Catalog::default()),
            Err(error) => return Err(io_error(&backups, error)),
        };
        let mut catalog = Catalog::default();
        for entry in entries {
            let entry = entry.map_err(|error| io_error(&backups, error))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if validate_backup_id(&name).is_err() {
                // `.deleting-*`, `.creating-*` and names no backup has.
                continue;
            }
            let path = entry.path();
            let is_dir = match fs::symlink_metadata(&path) {
                Ok(metadata) => metadata.is_dir(),
                // Deleted since the directory was read.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => {
                    catalog.damaged.push(DamagedEntry {
                        backup_id: name.into_owned(),
                        problem: io_error(&path, error).to_string(),
                    });
                    continue;
                }
            };
            if !is_dir {
                continue;
            }
            match self.read_record(&name) {
                Ok(record) => catalog.records.push(record),
                Err(RepositoryError::BackupNotFound { .. }) => {
                    if !path.exists() {
                        continue;
                    }
                    catalog.damaged.push(DamagedEntry {
                        backup_id: name.into_owned(),
                        problem: format!(
                            "\"{}\" is missing: this is not a backup, or its record was lost",
                            path.join(RECORD_FILE_NAME).display()
                        ),
                    });
                }
                Err(error) => catalog.damaged.push(DamagedEntry {
                    backup_id: name.into_owned(),
                    problem: error.to_string(),
                }),
            }
        }
        catalog
            .records
            .sort_by(|a, b| (a.start_time_us, &a.backup_id).cmp(&(b.start_time_us, &b.backup_id)));
        catalog
            .damaged
            .sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
        Ok(catalog)
    }

    pub fn read_record(&self, id: &str) -> Result<BackupRecord, RepositoryError> {
        validate_backup_id(id)?;
        let path = self.backup_dir(id).join(RECORD_FILE_NAME);
        let record: BackupRecord = read_json(&path).map_err(|error| not_found_as(error, id))?;
        if record.backup_id != id {
            return Err(RepositoryError::RecordMismatch {
                path,
                found: record.backup_id,
            });
        }
        Ok(record)
    }

    /// Writes the backup's `backup.json` durably, replacing the old one.
    /// For a new id the backup directory is created with it, atomically
    /// (see [`Repository::create_backup`], which also picks the id).
    pub fn write_record(&self, record: &BackupRecord) -> Result<(), RepositoryError> {
        let id = &record.backup_id;
        validate_backup_id(id)?;
        let dir = self.backup_dir(id);
        if dir.is_dir() {
            write_file_durably(&dir, RECORD_FILE_NAME, &to_json(record))?;
            return Ok(());
        }
        self.publish_new_record(record).map(drop)
    }

    /// Builds `.creating-<id>` with the record and an empty content
    /// directory (and, for a dump, its held running lock), then renames it
    /// into place, so that [`Repository::list`] never meets a backup
    /// without its record.
    fn publish_new_record(
        &self,
        record: &BackupRecord,
    ) -> Result<Option<RunningLock>, RepositoryError> {
        let id = &record.backup_id;
        validate_backup_id(id)?;
        let backups = self.backups_dir();
        let dir = backups.join(id);
        let building = backups.join(format!("{CREATING_PREFIX}{id}"));
        if building.exists() {
            // Left by a crash; nothing refers to it.
            fs::remove_dir_all(&building).map_err(|error| io_error(&building, error))?;
        }
        let content_name = match record.mode {
            BackupMode::Dump => DUMP_DIR_NAME,
            BackupMode::Full | BackupMode::Incremental => DATA_DIR_NAME,
        };
        let content_dir = building.join(content_name);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&content_dir)
            .map_err(|error| io_error(&content_dir, error))?;
        open_lock_file(&building.join(READING_LOCK_NAME))?;
        let running = if record.mode == BackupMode::Dump {
            let path = building.join(RUNNING_LOCK_NAME);
            let file = open_lock_file(&path)?;
            file.lock().map_err(|error| io_error(&path, error))?;
            Some(RunningLock { _file: file })
        } else {
            None
        };
        sync_directory(&building)?;
        write_file_durably(&building, RECORD_FILE_NAME, &to_json(record))?;
        fs::rename(&building, &dir).map_err(|error| io_error(&dir, error))?;
        sync_directory(&backups)?;
        Ok(running)
    }

    pub fn read_contents(&self, id: &str) -> Result<BackupContents, RepositoryError> {
        validate_backup_id(id)?;
        let path = self.backup_dir(id).join(CONTENTS_FILE_NAME);
        read_json(&path).map_err(|error| not_found_as(error, id))
    }

    /// Writes the backup's `contents.json` durably; the backup must exist.
    pub fn write_contents(
        &self,
        id: &str,
        contents: &BackupContents,
    ) -> Result<(), RepositoryError> {
        validate_backup_id(id)?;
        let dir = self.backup_dir(id);
        if !dir.is_dir() {
            return Err(RepositoryError::BackupNotFound { id: id.to_owned() });
        }
        write_file_durably(&dir, CONTENTS_FILE_NAME, &to_json(contents))?;
        Ok(())
    }

    /// Takes the repository's exclusive lock without waiting. Backups and
    /// deletes hold it for their whole run.
    pub fn lock(&self) -> Result<RepositoryLock, RepositoryError> {
        let path = self.root.join(LOCK_FILE_NAME);
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(RepositoryLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(RepositoryError::Busy { path }),
            Err(fs::TryLockError::Error(error)) => Err(io_error(&path, error)),
        }
    }

    /// Removes a backup: renamed to `.deleting-<id>` first (durably), then
    /// removed recursively. Leftovers of earlier interrupted deletes are
    /// removed too. Call it with the lock held. A backup a restore is
    /// reading is refused (BeingRestored).
    pub fn remove_backup(&self, id: &str) -> Result<(), RepositoryError> {
        self.remove_backups(&[id.to_owned()])
    }

    /// Removes `ids` in order, each as [`Repository::remove_backup`] does;
    /// if a restore reads any of them, none is removed.
    pub fn remove_backups(&self, ids: &[String]) -> Result<(), RepositoryError> {
        let backups = self.backups_dir();
        let mut held = Vec::with_capacity(ids.len());
        for id in ids {
            validate_backup_id(id)?;
            if !backups.join(id).is_dir() {
                return Err(RepositoryError::BackupNotFound { id: id.clone() });
            }
            // Held (if it exists) until the directory is renamed away, so
            // that no restore starts reading it in between.
            held.push(self.lock_out_readers(id)?);
        }
        for id in ids {
            let dir = backups.join(id);
            let doomed = backups.join(format!("{DELETING_PREFIX}{id}"));
            if doomed.exists() {
                fs::remove_dir_all(&doomed).map_err(|error| io_error(&doomed, error))?;
            }
            fs::rename(&dir, &doomed).map_err(|error| io_error(&dir, error))?;
            sync_directory(&backups)?;
        }
        drop(held);
        let entries = fs::read_dir(&backups).map_err(|error| io_error(&backups, error))?;
        for entry in entries {
            let entry = entry.map_err(|error| io_error(&backups, error))?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(DELETING_PREFIX)
            {
                let path = entry.path();
                match fs::remove_dir_all(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => return Err(io_error(&path, error)),
                }
            }
        }
        sync_directory(&backups)
    }

    /// Takes a shared lock on backup `id` for a restore that reads it; see
    /// [`Repository::remove_backup`], which refuses a backup so held.
    pub fn hold_for_reading(&self, id: &str) -> Result<ReadingLock, RepositoryError> {
        validate_backup_id(id)?;
        let dir = self.backup_dir(id);
        if !dir.is_dir() {
            return Err(RepositoryError::BackupNotFound { id: id.to_owned() });
        }
        let path = dir.join(READING_LOCK_NAME);
        let file = match open_lock_file(&path) {
            Ok(file) => file,
            // A backup of an older release without the file, on a disk too
            // full to add it: read it unprotected rather than not at all.
            Err(_) => return Ok(ReadingLock { _file: None }),
        };
        file.lock_shared().map_err(|error| io_error(&path, error))?;
        if !dir.is_dir() {
            // Deleted while the lock was being taken.
            return Err(RepositoryError::BackupNotFound { id: id.to_owned() });
        }
        Ok(ReadingLock { _file: Some(file) })
    }

    /// The exclusive side of [`Repository::hold_for_reading`], without
    /// waiting: BeingRestored while a restore holds the backup. Hold what
    /// it returns while changing the backup's files.
    pub fn lock_out_readers(&self, id: &str) -> Result<Option<File>, RepositoryError> {
        validate_backup_id(id)?;
        let path = self.backup_dir(id).join(READING_LOCK_NAME);
        let file = match open_lock_file(&path) {
            Ok(file) => file,
            // A backup of an older release without the file, on a disk
            // too full (or read-only) to add it: no restore can have taken
            // it either.
            Err(RepositoryError::Io { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSPC) | Some(libc::EROFS)
                ) =>
            {
                return Ok(None)
            }
            Err(error) => return Err(error),
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(fs::TryLockError::WouldBlock) => {
                Err(RepositoryError::BeingRestored { id: id.to_owned() })
            }
            Err(fs::TryLockError::Error(error)) => Err(io_error(&path, error)),
        }
    }

    /// Removes what only a run in progress uses from backup `id`: its
    /// staging directories and, when `partial`, the files it was storing
    /// (the backup failed; its record, contents and a dump's log stay).
    /// Call it with the lock held.
    pub fn remove_leftovers(&self, id: &str, partial: bool) -> Result<(), RepositoryError> {
        validate_backup_id(id)?;
        let dir = self.backup_dir(id);
        let mut doomed: Vec<PathBuf> = STAGING_DIRS.iter().map(|name| dir.join(name)).collect();
        if partial {
            doomed.push(dir.join(DATA_DIR_NAME));
            doomed.push(dir.join(DUMP_DIR_NAME));
        }
        for path in doomed {
            match fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error(&path, error)),
            }
        }
        Ok(())
    }

    /// Removes `.creating-*` directories that failed starts left (when no
    /// backup is being created right now) and `.deleting-*` ones of
    /// interrupted deletions. Call it with the lock held.
    pub fn remove_abandoned(&self) -> Result<(), RepositoryError> {
        let path = self.root.join(CREATE_LOCK_NAME);
        let guard = open_lock_file(&path)?;
        let creating_idle = guard.try_lock().is_ok();
        let backups = self.backups_dir();
        let entries = match fs::read_dir(&backups) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error(&backups, error)),
        };
        for entry in entries {
            let entry = entry.map_err(|error| io_error(&backups, error))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let abandoned = name.starts_with(DELETING_PREFIX)
                || (creating_idle && name.starts_with(CREATING_PREFIX));
            if abandoned {
                let path = entry.path();
                match fs::remove_dir_all(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => return Err(io_error(&path, error)),
                }
            }
        }
        Ok(())
    }

    /// The backup `id` and its ancestors, oldest (the full backup) first.
    /// Every member must be usable (DONE or OK), present, of this cluster
    /// and of the same block geometry; anything else is an error naming
    /// the backup at fault.
    pub fn chain(&self, id: &str) -> Result<Vec<BackupRecord>, RepositoryError> {
        let mut chain: Vec<BackupRecord> = Vec::new();
        let mut seen = HashSet::new();
        let mut next = Some(id.to_owned());
        while let Some(current) = next {
            if !seen.insert(current.clone()) {
                return Err(RepositoryError::BrokenChain {
                    id: id.to_owned(),
                    detail: format!("backup \"{current}\" is its own ancestor"),
                });
            }
            let record = match (self.read_record(&current), chain.last()) {
                (Ok(record), _) => record,
                (Err(RepositoryError::BackupNotFound { .. }), Some(child)) => {
                    return Err(RepositoryError::MissingParent {
                        id: child.backup_id.clone(),
                        parent: current,
                    })
                }
                (Err(error), _) => return Err(error),
            };
            self.check_chain_member(&record, chain.last())?;
            next = record.parent_backup_id.clone();
            chain.push(record);
        }
        chain.reverse();
        Ok(chain)
    }

    fn check_chain_member(
        &self,
        record: &BackupRecord,
        child: Option<&BackupRecord>,
    ) -> Result<(), RepositoryError> {
        let id = &record.backup_id;
        let broken = |detail: String| RepositoryError::BrokenChain {
            id: id.clone(),
            detail,
        };
        if !record.status.is_usable() {
            return Err(RepositoryError::NotUsable {
                id: id.clone(),
                status: record.status,
            });
        }
        if record.system_identifier != self.system_identifier {
            return Err(RepositoryError::ForeignBackup {
                id: id.clone(),
                found: record.system_identifier,
                expected: self.system_identifier,
            });
        }
        match (record.mode, &record.parent_backup_id) {
            (BackupMode::Incremental, None) => {
                return Err(broken("it is incremental but names no parent".to_owned()))
            }
            (BackupMode::Full | BackupMode::Dump, Some(parent)) => {
                return Err(broken(format!(
                    "it is not incremental but names parent \"{parent}\""
                )))
            }
            _ => {}
        }
        if let Some(child) = child {
            if record.mode == BackupMode::Dump {
                return Err(broken(format!(
                    "\"{}\" names the dump \"{id}\" as its parent",
                    child.backup_id
                )));
            }
            if (record.block_size, record.segment_blocks)
                != (child.block_size, child.segment_blocks)
            {
                return Err(broken(format!(
                    "\"{}\" and its parent \"{id}\" differ in block size or segment size",
                    child.backup_id
                )));
            }
        }
        Ok(())
    }

    /// A backup and its ancestors, oldest (the full) first, each with its
    /// contents: what a restore reads.
    pub fn load_chain(
        &self,
        id: &str,
    ) -> Result<(Vec<BackupRecord>, Vec<BackupContents>), RepositoryError> {
        let leaf = self.read_record(id)?;
        if leaf.mode == BackupMode::Dump {
            return Err(RepositoryError::IsDump {
                id: leaf.backup_id,
                database: leaf.dump.map_or_else(String::new, |d| d.database),
            });
        }
        let records = self.chain(id)?;
        let contents = records
            .iter()
            .map(|record| self.read_contents(&record.backup_id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((records, contents))
    }

    /// [`Repository::load_chain`] for a restore: every backup of the chain
    /// is held for reading (so none can be deleted meanwhile) before its
    /// contents are read, and the chain is read again once held.
    #[allow(clippy::type_complexity)]
    pub fn load_chain_for_restore(
        &self,
        id: &str,
    ) -> Result<(Vec<BackupRecord>, Vec<BackupContents>, Vec<ReadingLock>), RepositoryError> {
        let (records, _) = self.load_chain(id)?;
        let locks = records
            .iter()
            .map(|record| self.hold_for_reading(&record.backup_id))
            .collect::<Result<Vec<_>, _>>()?;
        let (held, contents) = self.load_chain(id)?;
        if held != records {
            return Err(RepositoryError::BrokenChain {
                id: id.to_owned(),
                detail: "it changed while the restore started; try again".to_owned(),
            });
        }
        Ok((held, contents, locks))
    }

    /// Rereads a backup's files, checks its chain, and records the
    /// verdict: a DONE, OK or CORRUPT backup becomes CORRUPT when damage
    /// was found, OK when everything was checked and intact, and keeps its
    /// status when something could not be checked (an I/O error is not
    /// evidence of damage). An ERROR backup holds nothing to check and
    /// stays ERROR; RUNNING ones are the caller's to skip. A status that
    /// cannot be written (a full disk) does not fail the validation.
    pub fn validate_and_record(&self, mut record: BackupRecord) -> Validation {
        if record.status == BackupStatus::Error {
            let report = ValidationReport {
                errors: vec![format!(
                    "the backup failed while it was taken ({}); it holds nothing to validate or restore",
                    record.error.as_deref().unwrap_or("no reason recorded")
                )],
                ..ValidationReport::default()
            };
            return Validation {
                record,
                report,
                not_recorded: None,
            };
        }
        let mut report = match self.read_contents(&record.backup_id) {
            Ok(contents) => self.validate_backup_files(&record, &contents),
            Err(RepositoryError::Io { path, source })
                if source.kind() != io::ErrorKind::NotFound =>
            {
                ValidationReport {
                    unchecked: vec![format!(
                        "\"{}\" could not be read: {source}",
                        path.display()
                    )],
                    ..ValidationReport::default()
                }
            }
            Err(RepositoryError::BackupNotFound { .. }) => ValidationReport {
                errors: vec![format!(
                    "\"{}\" is missing: the backup's list of files is gone",
                    self.backup_dir(&record.backup_id)
                        .join(CONTENTS_FILE_NAME)
                        .display()
                )],
                ..ValidationReport::default()
            },
            Err(error) => ValidationReport {
                errors: vec![error.to_string()],
                ..ValidationReport::default()
            },
        };
        self.check_ancestors(&record, &mut report);
        report.source_damage = source_damage(&record);
        let judged = record.status.is_usable() || record.status == BackupStatus::Corrupt;
        let mut not_recorded = None;
        if judged {
            let verdict = if !report.errors.is_empty() {
                Some(BackupStatus::Corrupt)
            } else if report.unchecked.is_empty() {
                Some(BackupStatus::Ok)
            } else {
                None
            };
            if let Some(status) = verdict {
                record.status = status;
                record.error = report.errors.first().cloned();
                if let Err(error) = self.write_record(&record) {
                    not_recorded = Some(error.to_string());
                }
            }
        }
        Validation {
            record,
            report,
            not_recorded,
        }
    }

    /// An incremental is only as good as its chain: every ancestor must be
    /// present, usable and of this cluster.
    fn check_ancestors(&self, record: &BackupRecord, report: &mut ValidationReport) {
        let Some(parent) = record.parent_backup_id.as_deref() else {
            return;
        };
        match self.chain(parent) {
            Ok(_) => {}
            Err(RepositoryError::Io { path, source })
                if source.kind() != io::ErrorKind::NotFound =>
            {
                report.unchecked.push(format!(
                    "its chain could not be checked: \"{}\" could not be read: {source}",
                    path.display()
                ))
            }
            Err(RepositoryError::BackupNotFound { .. }) => report.errors.push(format!(
                "its parent backup \"{parent}\" is not in the repository: it cannot be restored"
            )),
            Err(error) => report.errors.push(format!("its chain is broken: {error}")),
        }
    }

    /// Rereads every file `contents` lists for backup `id` (decompressing
    /// when `compression` is gzip) and compares its size and CRC-32C with
    /// the listing. Problems are collected, one message per file, so that
    /// one damaged file does not hide the others. Stored files must be
    /// regular files reached without following a link.
    pub fn validate_backup_files(
        &self,
        record: &BackupRecord,
        contents: &BackupContents,
    ) -> ValidationReport {
        let mut report = ValidationReport::default();
        if let Err(error) = validate_backup_id(&record.backup_id) {
            report.errors.push(error.to_string());
            return report;
        }
        let compression = record.compression;
        let data_dir = self.content_dir(record);
        for file in &contents.files {
            report.files_checked += 1;
            let Some(relative) = safe_relative_path(&file.path) else {
                report.errors.push(format!(
                    "\"{}\": not a valid path inside a backup",
                    file.path
                ));
                continue;
            };
            let mut stored = relative.to_path_buf();
            stored.as_mut_os_string().push(compression.suffix());
            match checksum_file(&data_dir, &stored, compression) {
                Ok(found) => {
                    report.bytes_checked += found.size;
                    if found.stored_size != file.stored_size {
                        report.errors.push(format!(
                            "\"{}\": {} bytes on disk, {} expected",
                            file.path, found.stored_size, file.stored_size
                        ));
                    } else if found.size != file.size {
                        report.errors.push(format!(
                            "\"{}\": {} bytes of content, {} expected",
                            file.path, found.size, file.size
                        ));
                    } else if found.crc32c != file.crc32c {
                        report.errors.push(format!(
                            "\"{}\": CRC-32C {:08x}, {:08x} expected",
                            file.path, found.crc32c, file.crc32c
                        ));
                    } else if file
                        .stored_crc32c
                        .is_some_and(|crc| crc != found.stored_crc32c)
                    {
                        report.errors.push(format!(
                            "\"{}\": CRC-32C of the stored bytes {:08x}, {:08x} expected (the content decodes the same, the file does not)",
                            file.path,
                            found.stored_crc32c,
                            file.stored_crc32c.unwrap_or_default()
                        ));
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    report
                        .errors
                        .push(format!("\"{}\": file is missing", file.path));
                }
                Err(error) if is_not_regular(&error) => {
                    report.errors.push(format!(
                        "\"{}\": not a regular file (a symbolic link or another kind of file was put in its place)",
                        file.path
                    ));
                }
                Err(error) if is_damaged_content(&error) => {
                    report.errors.push(format!(
                        "\"{}\": the stored content does not decompress: {error}",
                        file.path
                    ));
                }
                Err(error) => {
                    report
                        .unchecked
                        .push(format!("\"{}\": could not be read: {error}", file.path));
                }
            }
        }
        report
    }
}

/// What the record says of page checksum failures met while it was taken.
fn source_damage(record: &BackupRecord) -> Vec<String> {
    let mut found: Vec<String> = record
        .checksum_failure_pages
        .iter()
        .map(|page| {
            format!(
                "\"{}\", block {}: the page failed its checksum when the backup read it from the server",
                page.path, page.block
            )
        })
        .collect();
    let unlisted = record.checksum_failures.saturating_sub(found.len() as u64);
    if unlisted > 0 {
        found.push(format!("{unlisted} more pages failed their checksum"));
    }
    found
}

/// A read error that says the stored bytes are wrong (a decoder's
/// complaint, a stream cut short), not that the disk could not be read.
fn is_damaged_content(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof
    )
}

struct FileChecksum {
    size: u64,
    stored_size: u64,
    crc32c: u32,
    stored_crc32c: u32,
}

fn checksum_file(
    dir: &Path,
    relative: &Path,
    compression: Compression,
) -> io::Result<FileChecksum> {
    let file = open_regular_beneath(dir, relative)?;
    let stored_size = file.metadata()?.len();
    let (raw, stored) = Tallied::new(io::BufReader::with_capacity(128 * 1024, file));
    let reader = compression.decoder(raw)?;
    let (size, crc) = crc32c_of(reader)?;
    Ok(FileChecksum {
        size,
        stored_size,
        crc32c: crc,
        stored_crc32c: stored.result().1,
    })
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs (strings, numbers, options, vectors)
    // into memory cannot fail; an empty document would be caught on read.
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RepositoryError> {
    let bytes = fs::read(path).map_err(|error| io_error(path, error))?;
    serde_json::from_slice(&bytes).map_err(|source| RepositoryError::BadJson {
        path: path.to_owned(),
        source,
    })
}

/// A missing record or contents file means the backup is not there.
fn not_found_as(error: RepositoryError, id: &str) -> RepositoryError {
    match error {
        RepositoryError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            RepositoryError::BackupNotFound { id: id.to_owned() }
        }
        other => other,
    }
}

fn open_lock_file(path: &Path) -> Result<File, RepositoryError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|error| io_error(path, error))
}

fn is_empty_directory(dir: &Path) -> Result<bool, RepositoryError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(error) if error.kind() == io::ErrorKind::NotADirectory => Ok(false),
        Err(error) => Err(io_error(dir, error)),
    }
}

fn sync_directory(dir: &Path) -> Result<(), RepositoryError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| io_error(dir, error))
}

fn mode_letter(mode: BackupMode) -> char {
    match mode {
        BackupMode::Full => 'F',
        BackupMode::Incremental => 'I',
        BackupMode::Dump => 'D',
    }
}

/// `YYYYMMDD-HHMMSS` in UTC for a time in microseconds since the epoch.
fn utc_timestamp_name(time_us: i64) -> String {
    let seconds = time_us.div_euclid(1_000_000);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// The parent links among `records`, and each record's depth in its chain
/// (0 for a backup without a parent, or whose parent is unknown). Cycles
/// (only possible in a hand-edited repository) are cut where found.
fn chain_depths(records: &[BackupRecord]) -> BTreeMap<&str, usize> {
    let parents: BTreeMap<&str, Option<&str>> = records
        .iter()
        .map(|record| {
            (
                record.backup_id.as_str(),
                record.parent_backup_id.as_deref(),
            )
        })
        .collect();
    parents
        .keys()
        .map(|&id| {
            let mut depth = 0;
            let mut current = id;
            let mut seen = BTreeSet::from([id]);
            while let Some(&Some(parent)) = parents.get(current) {
                if !parents.contains_key(parent) || !seen.insert(parent) {
                    break;
                }
                depth += 1;
                current = parent;
            }
            (id, depth)
        })
        .collect()
}

/// `ids` ordered for removal: deepest first, so that a child always goes
/// before its parent and an interrupted run never leaves an orphan.
fn children_first<'a>(mut ids: Vec<&'a str>, depths: &BTreeMap<&str, usize>) -> Vec<&'a str> {
    ids.sort_by(|a, b| {
        let depth = |id: &str| depths.get(id).copied().unwrap_or(0);
        depth(b).cmp(&depth(a)).then(a.cmp(b))
    });
    ids
}

/// The oldest ancestor of `id` present in `by_id`.
fn chain_root<'a>(id: &'a str, by_id: &BTreeMap<&'a str, &'a BackupRecord>) -> &'a str {
    let mut current = id;
    let mut seen = BTreeSet::from([id]);
    while let Some(parent) = by_id
        .get(current)
        .and_then(|record| record.parent_backup_id.as_deref())
    {
        if !by_id.contains_key(parent) || !seen.insert(parent) {
            break;
        }
        current = parent;
    }
    current
}

/// `id` and all its ancestors present in `records`.
fn with_ancestors<'a>(
    id: &'a str,
    by_id: &BTreeMap<&'a str, &'a BackupRecord>,
    into: &mut BTreeSet<&'a str>,
) {
    let mut current = Some(id);
    while let Some(id) = current {
        if !into.insert(id) {
            break;
        }
        current = by_id
            .get(id)
            .and_then(|record| record.parent_backup_id.as_deref());
    }
}

/// Which backups retention removes, children first.
///
/// A backup is kept if any given rule keeps it:
/// * `keep_full` N keeps the newest N usable full backups and every backup
///   whose chain starts at one of them; it also keeps, for each database,
///   the newest N usable dumps of it, which stand alone the way full
///   backups do;
/// * `keep_days` D keeps usable backups that ended within D days of
///   `now_us`, and everything they depend on.
///
/// With neither rule given nothing is removed by age. Backups in ERROR are
/// removed in any case, RUNNING backups are never touched, and no backup
/// is removed while a kept (or RUNNING) backup depends on it: that rule
/// wins over all others, so retention can never make a backup unrestorable.
/// Two more always hold, whatever the rules say, because a rule applied to
/// a catalog that is wrong for the moment (a backup marked CORRUPT by a
/// transient problem, an entry that cannot be read) must not destroy the
/// last good copy: the newest full backup that did not fail, with every
/// backup built on it, is kept; and so is every backup whose chain reaches
/// a damaged entry (which is never removed by retention either).
pub fn expire_plan(
    catalog: &Catalog,
    keep_full: Option<u32>,
    keep_days: Option<u32>,
    now_us: i64,
) -> Vec<(String, ExpireAction)> {
    let records = &catalog.records;
    let by_id: BTreeMap<&str, &BackupRecord> = records
        .iter()
        .map(|record| (record.backup_id.as_str(), record))
        .collect();
    let not_failed = |record: &&BackupRecord| record.status != BackupStatus::Error;
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    if keep_full.is_none() && keep_days.is_none() {
        kept.extend(
            records
                .iter()
                .filter(not_failed)
                .map(|r| r.backup_id.as_str()),
        );
    }
    let mut roots = BTreeSet::new();
    if let Some(count) = keep_full {
        // Full backups form one group; dumps one group per database.
        let mut groups: BTreeMap<Option<&str>, Vec<&BackupRecord>> = BTreeMap::new();
        for record in records.iter().filter(|record| record.status.is_usable()) {
            match record.mode {
                BackupMode::Full => groups.entry(None).or_default().push(record),
                BackupMode::Dump => {
                    let database = record.dump.as_ref().map_or("", |d| d.database.as_str());
                    groups.entry(Some(database)).or_default().push(record);
                }
                BackupMode::Incremental => {}
            }
        }
        for (group, mut candidates) in groups {
            candidates.sort_by(|a, b| {
                (b.start_time_us, &b.backup_id).cmp(&(a.start_time_us, &a.backup_id))
            });
            let newest = candidates
                .into_iter()
                .take(count as usize)
                .map(|record| record.backup_id.as_str());
            match group {
                None => roots.extend(newest),
                Some(_) => kept.extend(newest),
            }
        }
    }
    // The newest full chain stays, whatever its status says today, and so
    // does the newest one that is usable.
    let newest_full = |usable_only: bool| {
        records
            .iter()
            .filter(not_failed)
            .filter(|record| record.mode == BackupMode::Full)
            .filter(|record| !usable_only || record.status.is_usable())
            .max_by_key(|record| (record.start_time_us, &record.backup_id))
    };
    for newest in [newest_full(false), newest_full(true)]
        .into_iter()
        .flatten()
    {
        roots.insert(newest.backup_id.as_str());
    }
    kept.extend(
        records
            .iter()
            .filter(not_failed)
            .map(|record| record.backup_id.as_str())
            .filter(|id| roots.contains(chain_root(id, &by_id))),
    );
    if let Some(days) = keep_days {
        let cutoff = now_us.saturating_sub(i64::from(days).saturating_mul(MICROS_PER_DAY));
        for record in records {
            let recent = record.end_time_us.is_some_and(|end| end >= cutoff);
            if record.status.is_usable() && recent {
                kept.insert(record.backup_id.as_str());
            }
        }
    }
    // What reaches a damaged entry cannot be judged: it stays. And since a
    // damaged entry's own parent is unknown, whatever it may be built on
    // stays too.
    for record in records.iter().filter(not_failed) {
        let root = chain_root(&record.backup_id, &by_id);
        let parent_of_root = by_id.get(root).and_then(|r| r.parent_backup_id.as_deref());
        if parent_of_root.is_some_and(|parent| catalog.damaged_entry(parent).is_some())
            || catalog
                .damaged
                .iter()
                .any(|entry| may_depend_on(&entry.backup_id, record))
        {
            kept.insert(record.backup_id.as_str());
        }
    }
    // Whatever a kept or running backup depends on stays.
    let mut protected = BTreeSet::new();
    for record in records {
        let id = record.backup_id.as_str();
        if kept.contains(id) || record.status == BackupStatus::Running {
            with_ancestors(id, &by_id, &mut protected);
        }
    }

    let doomed: Vec<&str> = records
        .iter()
        .map(|record| record.backup_id.as_str())
        .filter(|id| !protected.contains(id))
        .collect();
    let depths = chain_depths(records);
    children_first(doomed, &depths)
        .into_iter()
        .map(|id| {
            let action = match by_id.get(id).map(|record| record.status) {
                Some(BackupStatus::Error) => ExpireAction::DeletedFailed,
                _ => ExpireAction::Deleted,
            };
            (id.to_owned(), action)
        })
        .collect()
}

/// Whether the damaged entry `damaged` (whose record, and so whose
/// parent, is unknown) may be built on `record`: unless its id says it is a
/// full backup or a dump, any backup that started before it may be its
/// ancestor. An id not of our making may be anything.
fn may_depend_on(damaged: &str, record: &BackupRecord) -> bool {
    let stamp_len = "YYYYMMDD-HHMMSS".len();
    let (Some(stamp), Some(letter)) = (damaged.get(..stamp_len), damaged.as_bytes().get(stamp_len))
    else {
        return true;
    };
    let ours = stamp.bytes().enumerate().all(|(i, b)| {
        if i == 8 {
            b == b'-'
        } else {
            b.is_ascii_digit()
        }
    });
    if !ours {
        return true;
    }
    match letter {
        b'F' | b'D' => false,
        b'I' => utc_timestamp_name(record.start_time_us).as_str() <= stamp,
        _ => true,
    }
}

/// The backups `delete_backup(id, cascade)` removes, children first: `id`
/// itself and, with `cascade`, every backup that depends on it. Without
/// `cascade`, a backup that others depend on is refused.
///
/// The caller holds the repository lock and has marked backups that were
/// cut off as ERROR, so a RUNNING record here is a dump still being taken:
/// it is refused, and so is any plan that would remove one.
pub fn delete_plan(
    catalog: &Catalog,
    id: &str,
    cascade: bool,
) -> Result<Vec<String>, RepositoryError> {
    validate_backup_id(id)?;
    let records = &catalog.records;
    if catalog.record(id).is_none() && catalog.damaged_entry(id).is_none() {
        return Err(RepositoryError::BackupNotFound { id: id.to_owned() });
    }
    let mut doomed = BTreeSet::from([id]);
    // Grow the set until no record outside it names a parent inside it.
    loop {
        let before = doomed.len();
        for record in records {
            if let Some(parent) = record.parent_backup_id.as_deref() {
                if doomed.contains(parent) {
                    doomed.insert(record.backup_id.as_str());
                }
            }
        }
        if doomed.len() == before {
            break;
        }
    }
    if let Some(running) = records.iter().find(|record| {
        record.status == BackupStatus::Running && doomed.contains(record.backup_id.as_str())
    }) {
        return Err(RepositoryError::StillRunning {
            id: running.backup_id.clone(),
        });
    }
    for record in records
        .iter()
        .filter(|r| doomed.contains(r.backup_id.as_str()))
    {
        if let Some(entry) = catalog.damaged.iter().find(|entry| {
            !doomed.contains(entry.backup_id.as_str()) && may_depend_on(&entry.backup_id, record)
        }) {
            return Err(RepositoryError::MayBeParentOfDamaged {
                id: record.backup_id.clone(),
                damaged: entry.backup_id.clone(),
            });
        }
    }
    if !cascade && doomed.len() > 1 {
        let children = records
            .iter()
            .filter(|record| record.parent_backup_id.as_deref() == Some(id))
            .map(|record| record.backup_id.clone())
            .collect();
        return Err(RepositoryError::HasChildren {
            id: id.to_owned(),
            children,
        });
    }
    let depths = chain_depths(records);
    Ok(children_first(doomed.into_iter().collect(), &depths)
        .into_iter()
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_names_are_utc() {
        assert_eq!(utc_timestamp_name(0), "19700101-000000");
        assert_eq!(utc_timestamp_name(951_782_400_000_000), "20000229-000000");
        assert_eq!(utc_timestamp_name(1_700_000_000_123_456), "20231114-221320");
        assert_eq!(utc_timestamp_name(-1), "19691231-235959");
    }

    #[test]
    fn backup_ids_cannot_escape() {
        for good in ["20240101-000000F", "a", "A_b-9", &"x".repeat(64)] {
            assert!(validate_backup_id(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "a b",
            ".deleting-x",
            "é",
            &"x".repeat(65),
        ] {
            assert!(validate_backup_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn safe_paths_stay_inside() {
        assert!(safe_relative_path("base/5/16384").is_some());
        for bad in ["", "/etc/passwd", "../x", "base/../../x", "./x"] {
            assert!(safe_relative_path(bad).is_none(), "{bad:?}");
        }
    }
}
