//! The repository named by `blockbackup.repository`, opened with the checks
//! a backup tool owes its users: the setting is there, the directory is
//! absolute and apart from the data directory (or the bucket location is
//! well formed, and the `blockbackup.s3_*` settings reach it), and the
//! repository belongs to this cluster.

use std::path::PathBuf;

use blockbackup_core::repository::catalog::{BackupMode, BackupRecord};
use blockbackup_core::repository::upkeep;
use blockbackup_core::repository::{
    Catalog, Repository, RepositoryError, RepositoryLocation, RepositoryLock,
};
use blockbackup_core::restore::target::{overlapping, resolved};
use blockbackup_core::storage::s3::config::DEFAULT_REGION;
use blockbackup_core::storage::s3::{S3Settings, Secret, UriStyle};
use blockbackup_core::TimelineSpan;
use pgrx::warning;

use super::pg_backup_functions;
use crate::server_paths::data_directory;
use crate::{errors, settings};

/// The repository's location, or an ERROR saying what is wrong with the
/// setting.
pub fn repository_location() -> RepositoryLocation {
    match checked_repository_location() {
        Ok(location) => location,
        Err((_, _)) if settings::text(&settings::REPOSITORY).is_none() => {
            errors::repository_unset()
        }
        Err((message, hint)) => errors::invalid_argument(message, hint),
    }
}

/// `blockbackup.repository`, resolved, or why it cannot be used (a message
/// and a hint): for callers that must not raise, such as the archiver.
pub fn checked_repository_location() -> Result<RepositoryLocation, (String, &'static str)> {
    let Some(text) = settings::text(&settings::REPOSITORY) else {
        return Err((
            "blockbackup.repository is not set".to_owned(),
            "Set it to a directory outside the data directory, e.g. /var/lib/pg_blockbackup, or to s3://<bucket>/<prefix>.",
        ));
    };
    let root = match RepositoryLocation::parse(&text) {
        Ok(RepositoryLocation::Local(root)) => root,
        Ok(location) => return Ok(location),
        Err(error) => {
            return Err((
                format!("blockbackup.repository: {error}"),
                "A bucket name is 3 to 63 characters from a-z, 0-9, '.' and '-'; the prefix after it names where in the bucket the repository is.",
            ))
        }
    };
    let Some(resolved_root) = resolved(&root) else {
        return Err((
            format!(
                "blockbackup.repository must be an absolute path without \"..\" or s3://<bucket>/<prefix>, got \"{}\"",
                root.display()
            ),
            "Set it to a directory outside the data directory, e.g. /var/lib/pg_blockbackup.",
        ));
    };
    let data_dir = resolved(&data_directory()).unwrap_or_else(data_directory);
    if overlapping(&resolved_root, &data_dir) {
        return Err((
            format!(
                "blockbackup.repository \"{}\" overlaps the data directory \"{}\"",
                root.display(),
                data_dir.display()
            ),
            "A backup inside the data it backs up would copy itself; choose a directory outside the data directory.",
        ));
    }
    Ok(RepositoryLocation::Local(resolved_root))
}

/// The `blockbackup.s3_*` settings (whether or not the repository is in
/// S3; only an S3 repository uses them). Credentials not set there come
/// from the server's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
/// AWS_SESSION_TOKEN), where no reload ever logs them.
pub fn s3_settings() -> S3Settings {
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let credential = |setting, name: &str| settings::text(setting).or_else(|| env(name));
    S3Settings {
        endpoint: settings::text(&settings::S3_ENDPOINT).unwrap_or_default(),
        region: settings::text(&settings::S3_REGION).unwrap_or_else(|| DEFAULT_REGION.to_owned()),
        uri_style: match settings::S3_URI_STYLE.get() {
            settings::UriStyleSetting::Host => UriStyle::Host,
            settings::UriStyleSetting::Path => UriStyle::Path,
        },
        verify_tls: settings::S3_VERIFY_TLS.get(),
        ca_file: settings::text(&settings::S3_CA_FILE).map(PathBuf::from),
        key: credential(&settings::S3_KEY, "AWS_ACCESS_KEY_ID").unwrap_or_default(),
        secret: Secret::new(
            credential(&settings::S3_KEY_SECRET, "AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
        ),
        token: credential(&settings::S3_TOKEN, "AWS_SESSION_TOKEN").map(Secret::new),
    }
}

/// Opens the existing repository at `location`, without raising.
pub fn open_existing(location: &RepositoryLocation) -> Result<Repository, RepositoryError> {
    Repository::open_at(location, Some(&s3_settings()))
}

/// Opens the repository, creating it on first use for this cluster.
pub fn open_for_writing() -> Repository {
    open_or_create(&repository_location()).unwrap_or_else(|e| errors::repository(e))
}

/// Opens the repository at `location`, creating it on first use for this
/// cluster, without raising.
pub fn open_or_create(location: &RepositoryLocation) -> Result<Repository, RepositoryError> {
    Repository::open_or_create_at(
        location,
        Some(&s3_settings()),
        pg_backup_functions::system_identifier(),
    )
}

/// The catalog with backups that were cut off (session killed, server
/// crashed) marked ERROR and their partial files removed; the caller holds
/// the repository lock. Problems on the way (a full disk) are WARNINGs,
/// never a reason to fail: reading the catalog must always work.
pub fn mark_interrupted(repo: &Repository, lock: &RepositoryLock) -> Catalog {
    let (catalog, warnings) =
        upkeep::mark_interrupted(repo, lock).unwrap_or_else(|e| errors::repository(e));
    for message in warnings {
        warning!("pg_blockbackup: {message}");
    }
    catalog
}

/// The catalog for a listing: cut-off backups are marked when the lock is
/// free (with it taken, a backup or deletion runs and nothing was cut off
/// that the next call would not mark).
pub fn catalog_marking_interrupted(repo: &Repository) -> Catalog {
    match repo.lock() {
        Ok(lock) => mark_interrupted(repo, &lock),
        Err(_) => repo.list().unwrap_or_else(|e| errors::repository(e)),
    }
}

/// The newest backup an incremental can build on: usable, of this
/// cluster, and started on a timeline of the server's current history.
pub fn newest_usable_parent(repo: &Repository, history: &[TimelineSpan]) -> Option<BackupRecord> {
    let system_identifier = pg_backup_functions::system_identifier();
    let catalog = repo.list().unwrap_or_else(|e| errors::repository(e));
    catalog.records.into_iter().rev().find(|r| {
        r.status.is_usable()
            && r.mode != BackupMode::Dump
            && r.system_identifier == system_identifier
            && on_history(r, history)
    })
}

fn on_history(record: &BackupRecord, history: &[TimelineSpan]) -> bool {
    history.iter().any(|span| {
        span.timeline == record.timeline
            && span.begin <= record.start_lsn
            && span.end.is_none_or(|end| record.start_lsn < end)
    })
}
