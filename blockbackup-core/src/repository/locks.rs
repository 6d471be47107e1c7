//! The locks that coordinate the processes using one repository on this
//! host: `flock`s on files of a local lock directory (for a repository in
//! a local directory, `locks/` inside it, so that the server and the
//! offline command meet there). They are host-local by nature, and kept
//! apart from the stored data: nothing the store holds depends on them.
//!
//! * the repository lock, held by a physical backup, a validation, an
//!   expiry or a deletion for its whole run (so a RUNNING physical backup
//!   found while it is free was cut off);
//! * the create lock, held while a new backup's id is chosen and its first
//!   record written (two backups started in the same second never pick one
//!   name);
//! * a dump's running lock, taken before its record is visible and held
//!   while pg_dump runs (a RUNNING dump whose lock is free was cut off);
//! * the cluster lock, held by a cluster backup (Citus) on its
//!   coordinator for its whole run (so a RUNNING set found while it is
//!   free was cut off);
//! * a backup's reading lock, shared by the restores reading it; a
//!   deletion takes it exclusively, without waiting, and so refuses a
//!   backup that is being restored.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{validate_backup_id, Repository, RepositoryError};

const REPOSITORY_LOCK: &str = "repository.lock";
const CREATE_LOCK: &str = "create.lock";
const CLUSTER_LOCK: &str = "cluster.lock";

/// Where a repository's lock files are.
#[derive(Clone, Debug)]
pub struct Locks {
    dir: PathBuf,
}

/// Held while a backup, validation, expiry or delete runs; dropping it
/// (or the process dying) releases the lock.
#[derive(Debug)]
pub struct RepositoryLock {
    _file: File,
}

/// Held by a cluster backup for its whole run.
#[derive(Debug)]
pub struct ClusterLock {
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

/// Held while a backup's files change (a deletion, a restore point): no
/// restore reads it meanwhile.
#[derive(Debug)]
pub struct ReadersLockedOut {
    _file: Option<File>,
}

/// Held while a new id is chosen and published.
pub(super) struct CreateLock {
    _file: File,
}

impl Locks {
    pub fn in_directory(dir: &Path) -> Self {
        Locks {
            dir: dir.to_owned(),
        }
    }

    fn file(&self, name: &str) -> Result<File, RepositoryError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| RepositoryError::Io {
                path: self.dir.clone(),
                source,
            })?;
        let path = self.dir.join(name);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| RepositoryError::Io { path, source })
    }

    fn existing(&self, name: &str) -> Result<Option<File>, RepositoryError> {
        let path = self.dir.join(name);
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => Ok(Some(file)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RepositoryError::Io { path, source }),
        }
    }

    /// Removes the per-backup lock files of `id` (after its deletion).
    pub(super) fn forget(&self, id: &str) {
        for name in [reading_name(id), running_name(id)] {
            let _ = fs::remove_file(self.dir.join(name));
        }
    }
}

/// This host's name, as the records of the backups it starts carry it.
pub fn this_host() -> String {
    let mut name = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the name is cut there.
    let status = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) };
    if status != 0 {
        return String::from("localhost");
    }
    let end = name
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(name.len());
    String::from_utf8_lossy(&name[..end]).into_owned()
}

fn reading_name(id: &str) -> String {
    format!("{id}.reading")
}

fn running_name(id: &str) -> String {
    format!("{id}.running")
}

fn io_error(path: PathBuf) -> impl FnOnce(io::Error) -> RepositoryError {
    move |source| RepositoryError::Io { path, source }
}

impl Repository {
    /// Takes the repository's exclusive lock without waiting. Backups and
    /// deletes hold it for their whole run.
    pub fn lock(&self) -> Result<RepositoryLock, RepositoryError> {
        Ok(RepositoryLock {
            _file: self.try_exclusive(REPOSITORY_LOCK)?,
        })
    }

    /// The lock file `name`, locked exclusively without waiting (Busy when
    /// another holds it).
    fn try_exclusive(&self, name: &str) -> Result<File, RepositoryError> {
        let file = self.locks.file(name)?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(fs::TryLockError::WouldBlock) => Err(RepositoryError::Busy {
                path: self.locks.dir.join(name),
            }),
            Err(fs::TryLockError::Error(error)) => Err(io_error(self.locks.dir.join(name))(error)),
        }
    }

    /// Takes the cluster lock without waiting: one cluster backup at a time.
    pub fn cluster_lock(&self) -> Result<ClusterLock, RepositoryError> {
        Ok(ClusterLock {
            _file: self.try_exclusive(CLUSTER_LOCK)?,
        })
    }

    /// Waits for the create lock.
    pub(super) fn create_lock(&self) -> Result<CreateLock, RepositoryError> {
        let file = self.locks.file(CREATE_LOCK)?;
        file.lock()
            .map_err(io_error(self.locks.dir.join(CREATE_LOCK)))?;
        Ok(CreateLock { _file: file })
    }

    /// The create lock if it is free right now (no backup is being created).
    pub(super) fn try_create_lock(&self) -> Result<Option<CreateLock>, RepositoryError> {
        let file = self.locks.file(CREATE_LOCK)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(CreateLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(error)) => {
                Err(io_error(self.locks.dir.join(CREATE_LOCK))(error))
            }
        }
    }

    /// Takes the running lock of the dump `id`.
    pub(super) fn running_lock(&self, id: &str) -> Result<RunningLock, RepositoryError> {
        let name = running_name(id);
        let file = self.locks.file(&name)?;
        file.lock().map_err(io_error(self.locks.dir.join(name)))?;
        Ok(RunningLock { _file: file })
    }

    /// Whether a RUNNING dump's process still holds its lock; false also
    /// when its lock file is gone.
    pub fn is_dump_running(&self, id: &str) -> Result<bool, RepositoryError> {
        validate_backup_id(id)?;
        let name = running_name(id);
        let Some(file) = self.locks.existing(&name)? else {
            return Ok(false);
        };
        match file.try_lock() {
            Ok(()) => Ok(false),
            Err(fs::TryLockError::WouldBlock) => Ok(true),
            Err(fs::TryLockError::Error(error)) => Err(io_error(self.locks.dir.join(name))(error)),
        }
    }

    /// Takes a shared lock on backup `id` for a restore that reads it; see
    /// [`Repository::lock_out_readers`], which a deletion takes.
    pub fn hold_for_reading(&self, id: &str) -> Result<ReadingLock, RepositoryError> {
        validate_backup_id(id)?;
        self.read_record(id)?;
        let name = reading_name(id);
        let file = match self.locks.file(&name) {
            Ok(file) => file,
            // A disk too full to add the file: read unprotected rather
            // than not at all.
            Err(_) => return Ok(ReadingLock { _file: None }),
        };
        file.lock_shared()
            .map_err(io_error(self.locks.dir.join(&name)))?;
        // Deleted while the lock was being taken?
        self.read_record(id)?;
        Ok(ReadingLock { _file: Some(file) })
    }

    /// The exclusive side of [`Repository::hold_for_reading`], without
    /// waiting: BeingRestored while a restore holds the backup. Hold what
    /// it returns while changing the backup's files.
    pub fn lock_out_readers(&self, id: &str) -> Result<ReadersLockedOut, RepositoryError> {
        validate_backup_id(id)?;
        let name = reading_name(id);
        let file = match self.locks.file(&name) {
            Ok(file) => file,
            // On a disk too full (or read-only) to add the file, no
            // restore could have taken it either.
            Err(RepositoryError::Io { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSPC) | Some(libc::EROFS)
                ) =>
            {
                return Ok(ReadersLockedOut { _file: None })
            }
            Err(error) => return Err(error),
        };
        match file.try_lock() {
            Ok(()) => Ok(ReadersLockedOut { _file: Some(file) }),
            Err(fs::TryLockError::WouldBlock) => {
                Err(RepositoryError::BeingRestored { id: id.to_owned() })
            }
            Err(fs::TryLockError::Error(error)) => Err(io_error(self.locks.dir.join(name))(error)),
        }
    }
}
