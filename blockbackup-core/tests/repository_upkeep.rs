//! The upkeep the SQL functions and the offline command share, on a
//! repository that is damaged or was left behind by crashes: a damaged
//! entry locks nothing, cut-off backups are cleaned up, validation tells
//! damage from what it could not check and checks chains, and nothing a
//! restore is reading can be deleted.

mod fixtures;

use std::fs;

use blockbackup_core::lsn::Lsn;
use blockbackup_core::repository::catalog::{
    BackupContents, BackupMode, BackupRecord, BackupStatus, StoredFile, StoredKind,
};
use blockbackup_core::repository::upkeep::{delete, expire, mark_interrupted, validate};
use blockbackup_core::repository::{Repository, RepositoryError};
use fixtures::cluster;

const SYSTEM: u64 = 7_301_234_567_890_123_456;

fn new_repository() -> (tempfile::TempDir, Repository) {
    let scratch = tempfile::tempdir().unwrap();
    let repository = Repository::open_or_create(&scratch.path().join("repo"), SYSTEM).unwrap();
    (scratch, repository)
}

/// A finished backup holding one file `PG_VERSION`.
fn stored_backup(
    repository: &Repository,
    id: &str,
    mode: BackupMode,
    parent: Option<&str>,
    start: i64,
) -> BackupRecord {
    let mut record = BackupRecord::begin(mode, cluster(SYSTEM), Lsn(0x1000), start);
    record.backup_id = id.to_owned();
    record.status = BackupStatus::Done;
    record.parent_backup_id = parent.map(str::to_owned);
    record.stop_lsn = Some(Lsn(0x2000));
    record.end_time_us = Some(start + 1);
    repository.write_record(&record).unwrap();
    let content = b"15\n";
    fs::create_dir_all(repository.data_dir(id)).unwrap();
    fs::write(repository.data_dir(id).join("PG_VERSION"), content).unwrap();
    let contents = BackupContents {
        files: vec![StoredFile {
            path: "PG_VERSION".to_owned(),
            kind: StoredKind::Whole,
            size: 3,
            stored_size: 3,
            crc32c: crc32c::crc32c(content),
            stored_crc32c: None,
            mtime: 0,
        }],
    };
    repository.write_contents(id, &contents).unwrap();
    record
}

#[test]
fn one_damaged_record_locks_nothing() {
    let (_scratch, repository) = new_repository();
    stored_backup(&repository, "F1", BackupMode::Full, None, 1);
    stored_backup(&repository, "F2", BackupMode::Full, None, 2);
    fs::write(
        repository.backup_dir("F1").join("backup.json"),
        b"\x00garbage",
    )
    .unwrap();

    let lock = repository.lock().unwrap();
    let (rows, _) = validate(&repository, &lock, None).unwrap();
    let status = |id: &str| rows.iter().find(|r| r.backup_id == id).map(|r| r.status);
    assert_eq!(status("F1"), Some(BackupStatus::Corrupt));
    assert_eq!(status("F2"), Some(BackupStatus::Ok));
    let (rows, _) = validate(&repository, &lock, Some("F1")).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].report.errors[0].contains("could not be parsed"),
        "{rows:?}"
    );

    // Retention leaves it alone; a deletion asked for removes it.
    let (removed, _) = expire(&repository, &lock, Some(1), None, 10).unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    let (deleted, _) = delete(&repository, &lock, "F1", false).unwrap();
    assert_eq!(deleted, vec!["F1"]);
    let catalog = repository.list().unwrap();
    assert!(catalog.damaged.is_empty());
    assert_eq!(catalog.records.len(), 1);
}

#[test]
fn a_cut_off_backup_loses_its_partial_files_and_failed_starts_are_cleared() {
    let (_scratch, repository) = new_repository();
    let mut running = stored_backup(&repository, "R", BackupMode::Full, None, 1);
    running.status = BackupStatus::Running;
    repository.write_record(&running).unwrap();
    fs::create_dir_all(repository.data_dir("R").join("base/5")).unwrap();
    fs::write(
        repository.data_dir("R").join("base/5/1"),
        vec![1u8; 1 << 20],
    )
    .unwrap();
    fs::create_dir_all(repository.backup_dir("R").join("staging")).unwrap();
    let backups = repository.root().join("backups");
    fs::create_dir_all(backups.join(".creating-X/pgdata")).unwrap();
    fs::create_dir_all(backups.join(".deleting-Y/pgdata")).unwrap();
    stored_backup(&repository, "D", BackupMode::Full, None, 2);
    fs::create_dir_all(repository.backup_dir("D").join(".restore-point-staging")).unwrap();

    let lock = repository.lock().unwrap();
    let (catalog, warnings) = mark_interrupted(&repository, &lock).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let record = catalog.record("R").unwrap();
    assert_eq!(record.status, BackupStatus::Error);
    assert!(record
        .error
        .as_deref()
        .unwrap()
        .contains("partial files were removed"));
    assert_eq!(
        repository.read_record("R").unwrap().status,
        BackupStatus::Error
    );
    assert!(!repository.data_dir("R").exists());
    assert!(!repository.backup_dir("R").join("staging").exists());
    assert!(repository.backup_dir("R").join("backup.json").is_file());
    assert!(!backups.join(".creating-X").exists());
    assert!(!backups.join(".deleting-Y").exists());
    // A finished backup keeps its files; only its staging goes.
    assert!(repository.data_dir("D").join("PG_VERSION").is_file());
    assert!(!repository
        .backup_dir("D")
        .join(".restore-point-staging")
        .exists());

    // Validating an ERROR backup says what it is, not that it is missing.
    let (rows, _) = validate(&repository, &lock, Some("R")).unwrap();
    assert_eq!(rows[0].status, BackupStatus::Error);
    assert!(
        rows[0].report.errors[0].contains("failed while it was taken"),
        "{rows:?}"
    );
}

#[test]
fn a_creation_in_progress_is_not_cleared() {
    let (_scratch, repository) = new_repository();
    let building = repository.root().join("backups/.creating-X");
    fs::create_dir_all(&building).unwrap();
    fs::create_dir_all(repository.root().join("locks")).unwrap();
    let create_lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(repository.root().join("locks/create.lock"))
        .unwrap();
    create_lock.lock().unwrap();
    let lock = repository.lock().unwrap();
    mark_interrupted(&repository, &lock).unwrap();
    assert!(building.exists());
}

#[test]
fn an_incremental_whose_parent_is_gone_is_corrupt() {
    let (_scratch, repository) = new_repository();
    stored_backup(&repository, "F", BackupMode::Full, None, 1);
    stored_backup(&repository, "I", BackupMode::Incremental, Some("F"), 2);
    let lock = repository.lock().unwrap();
    let (rows, _) = validate(&repository, &lock, Some("I")).unwrap();
    assert_eq!(rows[0].status, BackupStatus::Ok, "{rows:?}");

    fs::remove_dir_all(repository.backup_dir("F")).unwrap();
    let (rows, _) = validate(&repository, &lock, Some("I")).unwrap();
    assert_eq!(rows[0].status, BackupStatus::Corrupt, "{rows:?}");
    assert!(rows[0].report.errors[0].contains("\"F\""), "{rows:?}");
    assert_eq!(
        repository.read_record("I").unwrap().status,
        BackupStatus::Corrupt
    );
}

#[test]
fn a_stored_file_replaced_by_a_link_is_damage() {
    let (scratch, repository) = new_repository();
    stored_backup(&repository, "F", BackupMode::Full, None, 1);
    let outside = scratch.path().join("outside");
    fs::write(&outside, b"15\n").unwrap();
    let stored = repository.data_dir("F").join("PG_VERSION");
    fs::remove_file(&stored).unwrap();
    std::os::unix::fs::symlink(&outside, &stored).unwrap();
    let lock = repository.lock().unwrap();
    let (rows, _) = validate(&repository, &lock, Some("F")).unwrap();
    assert_eq!(rows[0].status, BackupStatus::Corrupt);
    assert!(
        rows[0].report.errors[0].contains("not a regular file"),
        "{rows:?}"
    );
}

#[test]
fn a_backup_being_restored_cannot_be_deleted() {
    let (_scratch, repository) = new_repository();
    stored_backup(&repository, "F", BackupMode::Full, None, 1);
    stored_backup(&repository, "I", BackupMode::Incremental, Some("F"), 2);
    let reading = repository.hold_for_reading("F").unwrap();
    let lock = repository.lock().unwrap();
    let error = delete(&repository, &lock, "F", true).unwrap_err();
    assert!(
        matches!(error, RepositoryError::BeingRestored { ref id } if id == "F"),
        "{error}"
    );
    // Nothing of the cascade went: the child is still there.
    assert!(repository.read_record("I").is_ok());
    let (rows, _) = expire(&repository, &lock, None, Some(0), i64::MAX / 2).unwrap();
    assert!(rows
        .iter()
        .all(|r| r.backup_id != "F" || r.action.contains("restore")));
    drop(reading);
    let (deleted, _) = delete(&repository, &lock, "F", true).unwrap();
    assert_eq!(deleted, vec!["I", "F"]);
}
