//! One file from the archiver into the repository's archive.

use std::path::Path;

use blockbackup_core::compress::Compression;
use blockbackup_core::repository::RepositoryLocation;
use blockbackup_core::wal::{PushOutcome, WalArchive};
use pgrx::{log, pg_sys, warning};

use super::status;
use crate::backup::repository_access;
use crate::settings;

/// Where and how the archive is written, from the settings.
pub struct ArchiveSettings {
    pub location: RepositoryLocation,
    pub codec: Compression,
    pub level: i32,
}

/// The settings, checked as take_backup checks them, as a message instead
/// of an ERROR.
pub fn archive_settings() -> Result<ArchiveSettings, String> {
    let location = repository_access::checked_repository_location()
        .map_err(|(message, hint)| format!("{message} ({hint})"))?;
    let codec = settings::COMPRESSION.get().compression();
    let level = match settings::COMPRESS_LEVEL.get() {
        -1 => None,
        level => Some(level),
    };
    let level = codec
        .check_level(level)
        .map_err(|e| format!("blockbackup.compress_level: {e}"))?;
    Ok(ArchiveSettings {
        location,
        codec,
        level,
    })
}

/// Whether archiving can be attempted at all; PostgreSQL logs that it is
/// not configured and keeps the WAL when not.
pub fn check_configured() -> bool {
    settings::text(&settings::REPOSITORY).is_some()
}

/// Archives `file` (at `path`, relative to the data directory); true once
/// it is durable in the repository or was there already with the same
/// content.
pub fn archive_file(file: &str, path: &str) -> bool {
    match push(file, Path::new(path)) {
        Ok(outcome) => {
            if outcome == PushOutcome::AlreadyArchived {
                log!("pg_blockbackup: WAL file \"{file}\" was already archived with the same content");
            }
            status::succeeded();
            true
        }
        Err(message) => {
            warning!("pg_blockbackup: could not archive WAL file \"{file}\": {message}");
            status::failed(file, &message);
            false
        }
    }
}

fn push(file: &str, path: &Path) -> Result<PushOutcome, String> {
    let settings = archive_settings()?;
    let repository = repository_access::open_existing(&settings.location).map_err(|e| {
        format!("{e}; take_backup() creates the repository, and archiving waits for it")
    })?;
    let system_identifier = unsafe { pg_sys::GetSystemIdentifier() };
    if repository.system_identifier() != system_identifier {
        return Err(format!(
            "repository \"{}\" belongs to the cluster with system identifier {}, not to this one ({system_identifier}); use a separate repository for each cluster",
            settings.location,
            repository.system_identifier()
        ));
    }
    WalArchive::new(&repository)
        .push(file, path, settings.codec, settings.level)
        .map_err(|e| e.to_string())
}
