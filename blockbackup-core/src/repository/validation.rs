//! Validation: every stored file reread and compared with what
//! `contents.json` recorded (sizes and CRC-32C of the content and of the
//! stored bytes), the chain of an incremental checked, and the verdict
//! recorded. Damage (a missing, changed or replaced file, a broken chain)
//! makes a backup CORRUPT; what could not be checked (permission denied,
//! an I/O error) is reported and leaves its status as it was.

use std::io;

use super::catalog::{BackupContents, BackupRecord, BackupStatus, Compression};
use super::{validate_backup_id, Repository, RepositoryError, CONTENTS_FILE_NAME};
use crate::content_checksum::{crc32c_of, Tallied};
use crate::safe_fs::is_not_regular;
use crate::safe_path::safe_relative_path;
use crate::storage::{join, Storage};

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
        let prefix = self.content_prefix(record);
        for file in &contents.files {
            report.files_checked += 1;
            let Some(relative) = safe_relative_path(&file.path) else {
                report.errors.push(format!(
                    "\"{}\": not a valid path inside a backup",
                    file.path
                ));
                continue;
            };
            let stored = join(
                &prefix,
                &compression.stored_name(&relative.to_string_lossy()),
            );
            match checksum_file(self.storage().as_ref(), &stored, compression) {
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
    storage: &dyn Storage,
    path: &str,
    compression: Compression,
) -> io::Result<FileChecksum> {
    let file = storage.open(path)?;
    let (raw, stored) = Tallied::new(io::BufReader::with_capacity(128 * 1024, file));
    let reader = compression.decoder(raw)?;
    let (size, crc) = crc32c_of(reader)?;
    let (stored_size, stored_crc32c) = stored.result();
    Ok(FileChecksum {
        size,
        stored_size,
        crc32c: crc,
        stored_crc32c,
    })
}
