//! The backup repository: backups, each a self-describing set of files
//! under `backups/<id>/`, kept in a [`Storage`], and the rules for naming,
//! listing, chaining, validating, expiring and removing them.
//!
//! ```text
//! pg_blockbackup.repository.json   marker: format version, system identifier
//! backups/<id>/backup.json         BackupRecord: written first (RUNNING), last (DONE)
//! backups/<id>/contents.json       BackupContents: every stored file, sizes, CRC-32Cs
//! backups/<id>/pgdata/...          the data directory image
//! backups/<id>/dump/...            a dump's pg_dump output
//! backups/<id>/pg_dump.log         a dump's pg_dump standard error
//! backups/<id>/deleting            tombstone: the backup is being removed
//! locks/                           this host's lock files (see `locks`)
//! ```
//!
//! # Why it is built this way
//!
//! The stored files are the only catalog, so that a repository survives
//! the server (the offline command reads the same files) and so that there
//! is no second copy of the truth to drift. Every state change is a single
//! atomic step of the store, none of them a directory rename:
//!
//! * a backup appears when its record is written, RUNNING, before any file
//!   of it; it is complete when the record says DONE, written after every
//!   file it lists is durable;
//! * records and contents are replaced whole and atomically;
//! * a backup disappears by its tombstone first, so a crash in the middle
//!   of a long removal leaves a backup listings skip (and the next upkeep
//!   removes), never a half-deleted backup that looks real.
//!
//! Locks (`locks`) are this host's, apart from the stored data: a physical
//! backup holds the repository lock, a dump its own running lock, a
//! restore a shared reading lock on each backup it reads.
//!
//! One damaged entry must not lock the whole catalog: [`Repository::list`]
//! returns the backups it can read and, apart, the entries it cannot
//! ([`DamagedEntry`]), which callers show as CORRUPT, never use, never
//! expire (nor what depends on them), and delete only when asked to.
//!
//! The marker ties a repository to one cluster: incremental backups are
//! only meaningful against backups of the same system, and mixing two
//! clusters' backups in one chain would restore garbage.
//!
//! Every backup id that comes from a user goes through
//! [`validate_backup_id`] before it is joined to a path, because the ids
//! are names in the store and `../..` is a name too.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::civil_time::utc_fields;
use crate::repository::catalog::{BackupContents, BackupMode, BackupRecord, BackupStatus};
use crate::storage::local::LocalStorage;
use crate::storage::{join, Storage};

pub mod catalog;
pub mod chain;
pub mod cluster_sets;
pub mod location;
pub mod locks;
pub mod retention;
pub mod upkeep;
pub mod validation;

pub use location::RepositoryLocation;
pub use locks::{Locks, ReadersLockedOut, ReadingLock, RepositoryLock, RunningLock};
pub use retention::{delete_plan, expire_plan, ExpireAction};
pub use validation::{Validation, ValidationReport};

pub const MARKER_FILE_NAME: &str = "pg_blockbackup.repository.json";
const MARKER_FORMAT: &str = "pg_blockbackup repository";
const MARKER_VERSION: u32 = 1;
const BACKUPS: &str = "backups";
pub(crate) const LOCKS_DIR: &str = "locks";
const RECORD_FILE_NAME: &str = "backup.json";
pub(crate) const CONTENTS_FILE_NAME: &str = "contents.json";
const DATA_DIR_NAME: &str = "pgdata";
const DUMP_DIR_NAME: &str = "dump";
const DUMP_LOG_NAME: &str = "pg_dump.log";
const TOMBSTONE: &str = "deleting";
/// Directories inside a backup that only a run in progress uses.
const STAGING_DIRS: &[&str] = &["staging", ".restore-point-staging"];
/// What earlier releases left for a moment and a crash could leave longer.
const LEGACY_PREFIXES: &[&str] = &[".deleting-", ".creating-"];
const LEGACY_LOCKS: &[&str] = &["lock", "create.lock"];
const MAX_BACKUP_ID_LEN: usize = 64;

#[derive(Debug, Error)]
pub enum RepositoryError {
    #[error("could not access \"{}\": {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
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
    /// The WAL archive could not be read or changed.
    #[error(transparent)]
    Archive(#[from] crate::wal::ArchiveError),
    /// The S3 settings cannot work (checked before any request).
    #[error(transparent)]
    S3Config(#[from] crate::storage::s3::S3ConfigError),
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
/// every query reads the store as it is now.
#[derive(Debug, Clone)]
pub struct Repository {
    /// Where it is, for messages (and the root of a local one).
    root: PathBuf,
    location: RepositoryLocation,
    storage: Arc<dyn Storage>,
    locks: Locks,
    system_identifier: u64,
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

impl Repository {
    /// Opens the local repository at `root` for the cluster
    /// `system_identifier`, creating it (mode 0700) if the directory is
    /// missing or empty.
    pub fn open_or_create(root: &Path, system_identifier: u64) -> Result<Self, RepositoryError> {
        let storage = Arc::new(LocalStorage::new(root));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode_700()
            .create(root)
            .map_err(|error| io_error(root, error))?;
        Self::open_or_create_in(
            root,
            storage,
            Locks::in_directory(&root.join(LOCKS_DIR)),
            system_identifier,
        )
    }

    /// Opens an existing local repository (the offline command's way in).
    pub fn open(root: &Path) -> Result<Self, RepositoryError> {
        let storage = Arc::new(LocalStorage::new(root));
        Self::open_in(root, storage, Locks::in_directory(&root.join(LOCKS_DIR)))
    }

    /// Opens the repository in `storage` (`root` names it in messages),
    /// creating it for `system_identifier` if the store is empty.
    pub fn open_or_create_in(
        root: &Path,
        storage: Arc<dyn Storage>,
        locks: Locks,
        system_identifier: u64,
    ) -> Result<Self, RepositoryError> {
        let exists = storage
            .size(MARKER_FILE_NAME)
            .map_err(|error| io_error(&root.join(MARKER_FILE_NAME), error))?
            .is_some();
        let repository = if exists {
            Self::open_in(root, storage, locks)?
        } else {
            Self::create(root, storage, locks, system_identifier)?
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

    /// Opens the existing repository in `storage`.
    pub fn open_in(
        root: &Path,
        storage: Arc<dyn Storage>,
        locks: Locks,
    ) -> Result<Self, RepositoryError> {
        let marker_path = root.join(MARKER_FILE_NAME);
        let bytes = match storage.get(MARKER_FILE_NAME) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
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
            location: RepositoryLocation::Local(root.to_owned()),
            storage,
            locks,
            system_identifier: marker.system_identifier,
        })
    }

    fn create(
        root: &Path,
        storage: Arc<dyn Storage>,
        locks: Locks,
        system_identifier: u64,
    ) -> Result<Self, RepositoryError> {
        // Refuse to scatter our files over a store that holds other things
        // (a home directory, a data directory): a typo in the setting
        // should not turn someone's directory into a repository. What a
        // crash during creation (or an empty store) leaves is fine.
        let entries = storage.list("").map_err(|error| io_error(root, error))?;
        for entry in entries {
            let ours = entry.name == BACKUPS || entry.name == LOCKS_DIR;
            let empty_or_ours = !ours
                || storage
                    .list(&entry.name)
                    .map_err(|error| io_error(&root.join(&entry.name), error))?
                    .is_empty()
                || entry.name == LOCKS_DIR;
            if entry.name != "lost+found" && !(ours && empty_or_ours) {
                return Err(RepositoryError::NotEmpty {
                    root: root.to_owned(),
                });
            }
        }
        let marker = Marker {
            format: MARKER_FORMAT.to_owned(),
            version: MARKER_VERSION,
            system_identifier,
        };
        // The marker goes last, so that a store with a marker is always a
        // complete repository.
        storage
            .put(MARKER_FILE_NAME, &to_json(&marker))
            .map_err(|error| io_error(&root.join(MARKER_FILE_NAME), error))?;
        Ok(Repository {
            root: root.to_owned(),
            location: RepositoryLocation::Local(root.to_owned()),
            storage,
            locks,
            system_identifier,
        })
    }

    /// Where the repository is, as messages name it (for a local one,
    /// its directory; see [`Repository::local_root`]).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The system identifier of the cluster the repository belongs to.
    pub fn system_identifier(&self) -> u64 {
        self.system_identifier
    }

    /// `backups/<id>`; `id` must have passed [`validate_backup_id`].
    pub fn backup_prefix(&self, id: &str) -> String {
        join(BACKUPS, id)
    }

    /// `backups/<id>/pgdata`, the data directory image.
    pub fn data_prefix(&self, id: &str) -> String {
        join(&self.backup_prefix(id), DATA_DIR_NAME)
    }

    /// The prefix the paths of a backup's `contents.json` are under.
    pub fn content_prefix(&self, record: &BackupRecord) -> String {
        let name = match record.mode {
            BackupMode::Dump => DUMP_DIR_NAME,
            BackupMode::Full | BackupMode::Incremental => DATA_DIR_NAME,
        };
        join(&self.backup_prefix(&record.backup_id), name)
    }

    /// Where `path` of the store is in messages (and, for a local
    /// repository, on disk).
    pub fn path_of(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    /// `<root>/backups/<id>` of a local repository.
    pub fn backup_dir(&self, id: &str) -> PathBuf {
        self.path_of(&self.backup_prefix(id))
    }

    /// `<root>/backups/<id>/pgdata` of a local repository.
    pub fn data_dir(&self, id: &str) -> PathBuf {
        self.path_of(&self.data_prefix(id))
    }

    /// Where a dump's output goes on this host: pg_dump writes there by
    /// itself. None for a repository that is not a local directory.
    pub fn dump_dir(&self, id: &str) -> Option<PathBuf> {
        self.storage
            .local_path(&join(&self.backup_prefix(id), DUMP_DIR_NAME))
    }

    /// Where a dump's pg_dump standard error goes on this host.
    pub fn dump_log(&self, id: &str) -> Option<PathBuf> {
        self.storage.local_path(&self.dump_log_path(id))
    }

    /// The store's path of a dump's pg_dump standard error.
    pub fn dump_log_path(&self, id: &str) -> String {
        join(&self.backup_prefix(id), DUMP_LOG_NAME)
    }

    fn record_path(&self, id: &str) -> String {
        join(&self.backup_prefix(id), RECORD_FILE_NAME)
    }

    fn contents_path(&self, id: &str) -> String {
        join(&self.backup_prefix(id), CONTENTS_FILE_NAME)
    }

    fn tombstone_path(&self, id: &str) -> String {
        join(&self.backup_prefix(id), TOMBSTONE)
    }

    fn store_error(&self, path: &str) -> impl FnOnce(std::io::Error) -> RepositoryError + '_ {
        let path = self.path_of(path);
        move |source| RepositoryError::Io { path, source }
    }

    /// Gives `record` a fresh id (from its start time and mode) and
    /// publishes it. For a dump, the returned lock is taken before the
    /// record becomes visible and marks the dump as running until dropped.
    pub fn create_backup(
        &self,
        record: &mut BackupRecord,
    ) -> Result<Option<RunningLock>, RepositoryError> {
        let _creating = self.create_lock()?;
        record.backup_id = self.new_backup_id(record.start_time_us, record.mode)?;
        record.host = Some(locks::this_host());
        let running = match record.mode {
            BackupMode::Dump => Some(self.running_lock(&record.backup_id)?),
            BackupMode::Full | BackupMode::Incremental => None,
        };
        self.write_record(record)?;
        // A local dump's pg_dump writes into its directory by itself.
        if let Some(dir) = self.storage.local_path(&self.content_prefix(record)) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode_700()
                .create(&dir)
                .map_err(|error| io_error(&dir, error))?;
        }
        Ok(running)
    }

    /// A fresh id for a backup started at `start_time_us`:
    /// `YYYYMMDD-HHMMSS` (UTC) plus `F`, `I` or `D`, with `-2`, `-3`, …
    /// appended when that name is taken. Call it with the create lock held.
    pub fn new_backup_id(
        &self,
        start_time_us: i64,
        mode: BackupMode,
    ) -> Result<String, RepositoryError> {
        let taken: std::collections::HashSet<String> = self
            .storage
            .list(BACKUPS)
            .map_err(self.store_error(BACKUPS))?
            .into_iter()
            .map(|entry| entry.name)
            .collect();
        let is_taken = |id: &str| {
            taken.contains(id)
                || LEGACY_PREFIXES
                    .iter()
                    .any(|prefix| taken.contains(&format!("{prefix}{id}")))
        };
        let base = format!("{}{}", utc_timestamp_name(start_time_us), mode_letter(mode));
        if !is_taken(&base) {
            return Ok(base);
        }
        let mut suffix = 2u64;
        loop {
            let candidate = format!("{base}-{suffix}");
            if !is_taken(&candidate) {
                return Ok(candidate);
            }
            suffix += 1;
        }
    }

    /// Every backup, by (start time, id), and apart the entries whose
    /// record cannot be read, by id. Only the store itself being
    /// unreadable is an error: one damaged entry must not hide the others,
    /// and is not skipped either, since that would hide it and could let
    /// expiry remove what depends on it. Backups being removed are left
    /// out, and so are empty entries (what a crash before the first record
    /// can leave).
    pub fn list(&self) -> Result<Catalog, RepositoryError> {
        let entries = self
            .storage
            .list(BACKUPS)
            .map_err(self.store_error(BACKUPS))?;
        let mut catalog = Catalog::default();
        for entry in entries {
            let id = entry.name;
            if !entry.is_prefix || validate_backup_id(&id).is_err() {
                // Legacy `.deleting-*`, `.creating-*` and names no backup has.
                continue;
            }
            let damaged = |problem: String| DamagedEntry {
                backup_id: id.clone(),
                problem,
            };
            match self.storage.size(&self.tombstone_path(&id)) {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(error) => {
                    catalog.damaged.push(damaged(
                        io_error(&self.path_of(&self.tombstone_path(&id)), error).to_string(),
                    ));
                    continue;
                }
            }
            match self.read_record(&id) {
                Ok(record) => catalog.records.push(record),
                Err(RepositoryError::BackupNotFound { .. }) => {
                    let held = self
                        .storage
                        .list(&self.backup_prefix(&id))
                        .map(|entries| !entries.is_empty())
                        .unwrap_or(true);
                    if held {
                        catalog.damaged.push(damaged(format!(
                            "\"{}\" is missing: this is not a backup, or its record was lost",
                            self.path_of(&self.record_path(&id)).display()
                        )));
                    }
                }
                Err(error) => catalog.damaged.push(damaged(error.to_string())),
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
        let path = self.record_path(id);
        let record: BackupRecord = self.read_json(&path, id)?;
        if record.backup_id != id {
            return Err(RepositoryError::RecordMismatch {
                path: self.path_of(&path),
                found: record.backup_id,
            });
        }
        Ok(record)
    }

    /// Writes the backup's `backup.json` durably, replacing the old one
    /// (for a new id, this publishes the backup; see
    /// [`Repository::create_backup`], which also picks the id).
    pub fn write_record(&self, record: &BackupRecord) -> Result<(), RepositoryError> {
        validate_backup_id(&record.backup_id)?;
        let path = self.record_path(&record.backup_id);
        self.storage
            .put(&path, &to_json(record))
            .map_err(self.store_error(&path))
    }

    pub fn read_contents(&self, id: &str) -> Result<BackupContents, RepositoryError> {
        validate_backup_id(id)?;
        self.read_json(&self.contents_path(id), id)
    }

    /// Writes the backup's `contents.json` durably; the backup must exist.
    pub fn write_contents(
        &self,
        id: &str,
        contents: &BackupContents,
    ) -> Result<(), RepositoryError> {
        validate_backup_id(id)?;
        self.read_record(id)?;
        let path = self.contents_path(id);
        self.storage
            .put(&path, &to_json(contents))
            .map_err(self.store_error(&path))
    }

    /// A JSON file of backup `id`; BackupNotFound when it is absent.
    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        id: &str,
    ) -> Result<T, RepositoryError> {
        let bytes = self
            .storage
            .get(path)
            .map_err(self.store_error(path))?
            .ok_or_else(|| RepositoryError::BackupNotFound { id: id.to_owned() })?;
        serde_json::from_slice(&bytes).map_err(|source| RepositoryError::BadJson {
            path: self.path_of(path),
            source,
        })
    }

    /// Removes a backup: its tombstone first (durably), then everything
    /// else, the tombstone last. Call it with the lock held. A backup a
    /// restore is reading is refused (BeingRestored).
    pub fn remove_backup(&self, id: &str) -> Result<(), RepositoryError> {
        self.remove_backups(&[id.to_owned()])
    }

    /// Removes `ids` in order, each as [`Repository::remove_backup`] does;
    /// if a restore reads any of them, none is removed.
    pub fn remove_backups(&self, ids: &[String]) -> Result<(), RepositoryError> {
        let mut held = Vec::with_capacity(ids.len());
        for id in ids {
            validate_backup_id(id)?;
            let present = !self
                .storage
                .list(&self.backup_prefix(id))
                .map_err(self.store_error(&self.backup_prefix(id)))?
                .is_empty();
            if !present {
                return Err(RepositoryError::BackupNotFound { id: id.clone() });
            }
            // Held until the tombstone is written, so that no restore
            // starts reading it in between.
            held.push(self.lock_out_readers(id)?);
        }
        for id in ids {
            let tombstone = self.tombstone_path(id);
            self.storage
                .put(&tombstone, b"")
                .map_err(self.store_error(&tombstone))?;
        }
        drop(held);
        for id in ids {
            self.finish_removal(id)?;
        }
        Ok(())
    }

    /// Removes all of a backup but its tombstone, then the tombstone.
    fn finish_removal(&self, id: &str) -> Result<(), RepositoryError> {
        let prefix = self.backup_prefix(id);
        let entries = self
            .storage
            .list(&prefix)
            .map_err(self.store_error(&prefix))?;
        for entry in entries.iter().filter(|entry| entry.name != TOMBSTONE) {
            let path = join(&prefix, &entry.name);
            self.storage
                .remove_all(&path)
                .map_err(self.store_error(&path))?;
        }
        self.storage
            .remove_all(&prefix)
            .map_err(self.store_error(&prefix))?;
        self.locks.forget(id);
        Ok(())
    }

    /// Removes what only a run in progress uses from backup `id`: its
    /// staging directories and, when `partial`, the files it was storing
    /// (the backup failed; its record, contents and a dump's log stay).
    /// Call it with the lock held.
    pub fn remove_leftovers(&self, id: &str, partial: bool) -> Result<(), RepositoryError> {
        validate_backup_id(id)?;
        let prefix = self.backup_prefix(id);
        let mut doomed: Vec<&str> = STAGING_DIRS.to_vec();
        if partial {
            doomed.extend([DATA_DIR_NAME, DUMP_DIR_NAME]);
        }
        for name in doomed {
            let path = join(&prefix, name);
            self.storage
                .remove_all(&path)
                .map_err(self.store_error(&path))?;
        }
        Ok(())
    }

    /// Finishes removals a crash cut off (backups with a tombstone),
    /// removes empty entries (what a crash before a backup's first record
    /// leaves) when no backup is being created right now, and what earlier
    /// releases left (`.creating-*`, `.deleting-*`, their lock files).
    /// Call it with the lock held.
    pub fn remove_abandoned(&self) -> Result<(), RepositoryError> {
        let creating_idle = self.try_create_lock()?;
        let entries = self
            .storage
            .list(BACKUPS)
            .map_err(self.store_error(BACKUPS))?;
        for entry in entries {
            let prefix = self.backup_prefix(&entry.name);
            let legacy = LEGACY_PREFIXES
                .iter()
                .any(|legacy| entry.name.starts_with(legacy));
            if legacy {
                if legacy_is_removable(&entry.name, creating_idle.is_some()) {
                    self.storage
                        .remove_all(&prefix)
                        .map_err(self.store_error(&prefix))?;
                }
                continue;
            }
            if validate_backup_id(&entry.name).is_err() || !entry.is_prefix {
                continue;
            }
            let tombstone = self
                .storage
                .size(&self.tombstone_path(&entry.name))
                .map_err(self.store_error(&self.tombstone_path(&entry.name)))?;
            if tombstone.is_some() {
                self.finish_removal(&entry.name)?;
                continue;
            }
            let empty = self
                .storage
                .list(&prefix)
                .map_err(self.store_error(&prefix))?
                .is_empty();
            if empty && creating_idle.is_some() {
                self.storage
                    .remove_all(&prefix)
                    .map_err(self.store_error(&prefix))?;
            }
        }
        for name in LEGACY_LOCKS {
            let _ = self.storage.remove(name);
        }
        Ok(())
    }
}

/// A `.deleting-*` entry can always go; a `.creating-*` one only while no
/// backup is being created (an older release builds one under its lock).
fn legacy_is_removable(name: &str, creating_idle: bool) -> bool {
    name.starts_with(".deleting-") || creating_idle
}

/// `mode(0o700)` for directories this module creates.
trait Private {
    fn mode_700(&mut self) -> &mut Self;
}

impl Private for std::fs::DirBuilder {
    fn mode_700(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o700)
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs (strings, numbers, options, vectors)
    // into memory cannot fail; an empty document would be caught on read.
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn mode_letter(mode: BackupMode) -> char {
    match mode {
        BackupMode::Full => 'F',
        BackupMode::Incremental => 'I',
        BackupMode::Dump => 'D',
    }
}

/// `YYYYMMDD-HHMMSS` in UTC for a time in microseconds since the epoch.
pub(crate) fn utc_timestamp_name(time_us: i64) -> String {
    let ((year, month, day), (hour, minute, second), _) = utc_fields(time_us);
    format!("{year:04}{month:02}{day:02}-{hour:02}{minute:02}{second:02}")
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
        use crate::safe_path::safe_relative_path;
        assert!(safe_relative_path("base/5/16384").is_some());
        for bad in ["", "/etc/passwd", "../x", "base/../../x", "./x"] {
            assert!(safe_relative_path(bad).is_none(), "{bad:?}");
        }
    }
}
