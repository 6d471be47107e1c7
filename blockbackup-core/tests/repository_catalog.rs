//! The repository on disk: creation, ids, records, listing, locking,
//! removal, chains and validation.

mod fixtures;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use blockbackup_core::lsn::Lsn;
use blockbackup_core::repository::catalog::{
    BackupContents, BackupMode, BackupRecord, BackupStatus, Compression, StoredFile, StoredKind,
};
use blockbackup_core::repository::{Repository, RepositoryError};
use fixtures::cluster;

const SYSTEM: u64 = 7_301_234_567_890_123_456;

fn record(id: &str, mode: BackupMode, parent: Option<&str>, start_time_us: i64) -> BackupRecord {
    let mut record = BackupRecord::begin(mode, cluster(SYSTEM), Lsn(0x1000), start_time_us);
    record.backup_id = id.to_owned();
    record.status = BackupStatus::Done;
    record.parent_backup_id = parent.map(str::to_owned);
    record.stop_lsn = Some(Lsn(0x2000));
    record.end_time_us = Some(start_time_us + 1);
    record
}

fn new_repository() -> (tempfile::TempDir, Repository) {
    let scratch = tempfile::tempdir().unwrap();
    let repository = Repository::open_or_create(&scratch.path().join("repo"), SYSTEM).unwrap();
    (scratch, repository)
}

#[test]
fn creates_and_reopens_for_the_same_cluster_only() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("repo");
    assert!(matches!(
        Repository::open(&root),
        Err(RepositoryError::NotARepository { .. })
    ));
    let repository = Repository::open_or_create(&root, SYSTEM).unwrap();
    assert_eq!(repository.root(), root);
    assert_eq!(repository.system_identifier(), SYSTEM);
    let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(root.join("pg_blockbackup.repository.json").is_file());

    assert_eq!(Repository::open(&root).unwrap().system_identifier(), SYSTEM);
    Repository::open_or_create(&root, SYSTEM).unwrap();
    let error = Repository::open_or_create(&root, 42).unwrap_err();
    assert!(matches!(
        error,
        RepositoryError::OtherCluster {
            repository_system_identifier: SYSTEM,
            system_identifier: 42,
            ..
        }
    ));
    assert!(error.to_string().contains(&SYSTEM.to_string()), "{error}");
}

#[test]
fn refuses_to_take_over_a_directory_in_use() {
    let scratch = tempfile::tempdir().unwrap();
    fs::write(scratch.path().join("something"), b"x").unwrap();
    let error = Repository::open_or_create(scratch.path(), SYSTEM).unwrap_err();
    assert!(matches!(error, RepositoryError::NotEmpty { .. }), "{error}");

    let damaged = tempfile::tempdir().unwrap();
    fs::write(damaged.path().join("pg_blockbackup.repository.json"), b"{").unwrap();
    let error = Repository::open(damaged.path()).unwrap_err();
    assert!(
        matches!(error, RepositoryError::BadMarker { .. }),
        "{error}"
    );
}

#[test]
fn ids_are_timestamps_made_unique() {
    let (_scratch, repository) = new_repository();
    let start = 1_700_000_000_000_000;
    let first = repository.new_backup_id(start, BackupMode::Full).unwrap();
    assert_eq!(first, "20231114-221320F");
    repository
        .write_record(&record(&first, BackupMode::Full, None, start))
        .unwrap();
    let second = repository.new_backup_id(start, BackupMode::Full).unwrap();
    assert_eq!(second, "20231114-221320F-2");
    repository
        .write_record(&record(&second, BackupMode::Full, None, start))
        .unwrap();
    assert_eq!(
        repository.new_backup_id(start, BackupMode::Full).unwrap(),
        "20231114-221320F-3"
    );
    assert_eq!(
        repository
            .new_backup_id(start, BackupMode::Incremental)
            .unwrap(),
        "20231114-221320I"
    );
    assert_eq!(
        repository.new_backup_id(start, BackupMode::Dump).unwrap(),
        "20231114-221320D"
    );
}

#[test]
fn records_and_contents_round_trip() {
    let (_scratch, repository) = new_repository();
    let mut full = record("A", BackupMode::Full, None, 10);
    repository.write_record(&full).unwrap();
    assert!(repository.backup_dir("A").join("backup.json").is_file());
    assert!(!repository.root().join("backups/.creating-A").exists());
    assert_eq!(repository.read_record("A").unwrap(), full);

    full.status = BackupStatus::Ok;
    full.files = 1;
    repository.write_record(&full).unwrap();
    assert_eq!(repository.read_record("A").unwrap(), full);

    let contents = BackupContents {
        files: vec![StoredFile {
            path: "base/5/INCREMENTAL.16384".to_owned(),
            kind: StoredKind::Incremental,
            size: 100,
            stored_size: 50,
            crc32c: 0xdead_beef,
            stored_crc32c: None,
            mtime: 1_700_000_000,
        }],
    };
    repository.write_contents("A", &contents).unwrap();
    assert_eq!(repository.read_contents("A").unwrap(), contents);

    assert!(matches!(
        repository.read_record("B"),
        Err(RepositoryError::BackupNotFound { .. })
    ));
    assert!(matches!(
        repository.write_contents("B", &contents),
        Err(RepositoryError::BackupNotFound { .. })
    ));
    assert!(matches!(
        repository.write_record(&record("../B", BackupMode::Full, None, 1)),
        Err(RepositoryError::InvalidBackupId { .. })
    ));
    assert!(matches!(
        repository.read_record("../A"),
        Err(RepositoryError::InvalidBackupId { .. })
    ));
}

#[test]
fn lists_by_start_time_and_reports_damaged_backups() {
    let (_scratch, repository) = new_repository();
    for (id, start) in [("C", 5), ("A", 20), ("B", 5)] {
        repository
            .write_record(&record(id, BackupMode::Full, None, start))
            .unwrap();
    }
    let backups = repository.root().join("backups");
    fs::create_dir_all(backups.join(".deleting-X/pgdata")).unwrap();
    fs::create_dir_all(backups.join(".creating-Y")).unwrap();
    let ids: Vec<String> = repository
        .list()
        .unwrap()
        .records
        .into_iter()
        .map(|record| record.backup_id)
        .collect();
    assert_eq!(ids, vec!["B", "C", "A"]);

    // Damaged entries are listed apart, and the others still are.
    let problem_of = |id: &str| {
        let catalog = repository.list().unwrap();
        assert_eq!(catalog.records.len(), 3, "{catalog:?}");
        catalog
            .damaged_entry(id)
            .map(|entry| entry.problem.clone())
            .unwrap_or_else(|| panic!("{id} not listed as damaged: {catalog:?}"))
    };
    // An empty entry (a crash before the first record) is no backup.
    fs::create_dir_all(backups.join("D")).unwrap();
    assert!(repository.list().unwrap().damaged.is_empty());
    fs::create_dir_all(backups.join("D/pgdata")).unwrap();
    let problem = problem_of("D");
    assert!(
        problem.contains("backups/D/backup.json") && problem.contains("missing"),
        "{problem}"
    );
    fs::write(backups.join("D/backup.json"), b"{\"backup_id\": 3}").unwrap();
    assert!(problem_of("D").contains("could not be parsed"));
    fs::write(backups.join("D/backup.json"), b"garbage").unwrap();
    assert!(problem_of("D").contains("could not be parsed"));
    let mut misplaced = record("E", BackupMode::Full, None, 1);
    fs::write(
        backups.join("D/backup.json"),
        serde_json::to_vec(&misplaced).unwrap(),
    )
    .unwrap();
    assert!(problem_of("D").contains("describes backup \"E\""));
    misplaced.backup_id = "D".to_owned();
    fs::write(
        backups.join("D/backup.json"),
        serde_json::to_vec(&misplaced).unwrap(),
    )
    .unwrap();
    let catalog = repository.list().unwrap();
    assert_eq!(catalog.records.len(), 4);
    assert!(catalog.damaged.is_empty());
}

#[test]
fn the_lock_is_exclusive_until_dropped() {
    let (_scratch, repository) = new_repository();
    let held = repository.lock().unwrap();
    let error = repository.lock().unwrap_err();
    assert!(matches!(error, RepositoryError::Busy { .. }), "{error}");
    drop(held);
    repository.lock().unwrap();
}

#[test]
fn removal_goes_through_a_tombstone() {
    let (_scratch, repository) = new_repository();
    for id in ["A", "B"] {
        repository
            .write_record(&record(id, BackupMode::Full, None, 1))
            .unwrap();
        fs::create_dir_all(repository.data_dir(id)).unwrap();
        fs::write(repository.data_dir(id).join("PG_VERSION"), b"15\n").unwrap();
    }
    repository.remove_backup("A").unwrap();
    assert!(!repository.backup_dir("A").exists());
    assert_eq!(repository.list().unwrap().records.len(), 1);
    assert!(matches!(
        repository.remove_backup("A"),
        Err(RepositoryError::BackupNotFound { .. })
    ));

    // A removal cut off after its tombstone: listings skip the backup,
    // and the next upkeep finishes it.
    fs::write(repository.backup_dir("B").join("deleting"), b"").unwrap();
    assert!(repository.list().unwrap().records.is_empty());
    // What earlier releases left behind goes too.
    let leftover = repository.root().join("backups/.deleting-Z/pgdata/base");
    fs::create_dir_all(&leftover).unwrap();
    repository.remove_abandoned().unwrap();
    assert!(!repository.backup_dir("B").exists());
    assert!(!repository.root().join("backups/.deleting-Z").exists());
}

#[test]
fn chains_run_from_the_full_backup() {
    let (_scratch, repository) = new_repository();
    repository
        .write_record(&record("F", BackupMode::Full, None, 1))
        .unwrap();
    repository
        .write_record(&record("I1", BackupMode::Incremental, Some("F"), 2))
        .unwrap();
    repository
        .write_record(&record("I2", BackupMode::Incremental, Some("I1"), 3))
        .unwrap();
    let chain: Vec<String> = repository
        .chain("I2")
        .unwrap()
        .into_iter()
        .map(|record| record.backup_id)
        .collect();
    assert_eq!(chain, vec!["F", "I1", "I2"]);
    assert_eq!(repository.chain("F").unwrap().len(), 1);

    let mut unusable = repository.read_record("I1").unwrap();
    unusable.status = BackupStatus::Corrupt;
    repository.write_record(&unusable).unwrap();
    let error = repository.chain("I2").unwrap_err();
    assert!(
        matches!(&error, RepositoryError::NotUsable { id, status: BackupStatus::Corrupt } if id == "I1"),
        "{error}"
    );
    assert!(error.to_string().contains("CORRUPT"), "{error}");

    repository
        .write_record(&record("I3", BackupMode::Incremental, Some("gone"), 4))
        .unwrap();
    let error = repository.chain("I3").unwrap_err();
    assert!(
        matches!(&error, RepositoryError::MissingParent { id, parent } if id == "I3" && parent == "gone"),
        "{error}"
    );

    let mut foreign = record("X", BackupMode::Full, None, 5);
    foreign.system_identifier = 1;
    repository.write_record(&foreign).unwrap();
    assert!(matches!(
        repository.chain("X"),
        Err(RepositoryError::ForeignBackup { .. })
    ));

    repository
        .write_record(&record("L1", BackupMode::Incremental, Some("L2"), 6))
        .unwrap();
    repository
        .write_record(&record("L2", BackupMode::Incremental, Some("L1"), 7))
        .unwrap();
    assert!(matches!(
        repository.chain("L1"),
        Err(RepositoryError::BrokenChain { .. })
    ));
}

fn store(repository: &Repository, id: &str, path: &str, content: &[u8], gzip: bool) -> StoredFile {
    let mut target = repository.data_dir(id).join(path);
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    let stored = if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(content).unwrap();
        target.as_mut_os_string().push(".gz");
        encoder.finish().unwrap()
    } else {
        content.to_vec()
    };
    fs::write(&target, &stored).unwrap();
    StoredFile {
        path: path.to_owned(),
        kind: StoredKind::Whole,
        size: content.len() as u64,
        stored_size: stored.len() as u64,
        crc32c: crc32c::crc32c(content),
        stored_crc32c: None,
        mtime: 0,
    }
}

fn validate_finds_damage(gzip: bool) {
    let (_scratch, repository) = new_repository();
    let compression = if gzip {
        Compression::Gzip
    } else {
        Compression::None
    };
    let mut a = record("A", BackupMode::Full, None, 1);
    a.compression = compression;
    repository.write_record(&a).unwrap();
    let data = repository.data_dir("A");
    let suffix = if gzip { ".gz" } else { "" };
    let files: Vec<StoredFile> = [
        ("PG_VERSION", b"15\n".to_vec()),
        ("base/5/16384", vec![1u8; 20_000]),
        ("base/5/16385", vec![2u8; 300]),
        ("global/1262", vec![3u8; 100]),
    ]
    .iter()
    .map(|(path, content)| store(&repository, "A", path, content, gzip))
    .collect();
    let contents = BackupContents { files };

    let report = repository.validate_backup_files(&a, &contents);
    assert_eq!(report.errors, Vec::<String>::new());
    assert_eq!(report.unchecked, Vec::<String>::new());
    assert_eq!(report.files_checked, 4);
    assert_eq!(report.bytes_checked, 3 + 20_000 + 300 + 100);

    fs::remove_file(data.join(format!("base/5/16385{suffix}"))).unwrap();
    // Same length, different content.
    store(&repository, "A", "global/1262", &[4u8; 100], gzip);
    let report = repository.validate_backup_files(&a, &contents);
    assert_eq!(report.errors.len(), 2, "{:?}", report.errors);
    assert!(report.errors[0].contains("base/5/16385") && report.errors[0].contains("missing"));
    assert!(
        report.errors[1].contains("global/1262"),
        "{:?}",
        report.errors
    );

    let mut escaping = contents.clone();
    escaping.files[0].path = "../../../etc/passwd".to_owned();
    let report = repository.validate_backup_files(&a, &escaping);
    assert!(
        report.errors[0].contains("not a valid path"),
        "{:?}",
        report.errors
    );
}

#[test]
fn validation_rereads_every_file() {
    validate_finds_damage(false);
}

#[test]
fn validation_rereads_every_gzip_file() {
    validate_finds_damage(true);
}

#[test]
fn validation_notices_a_short_file() {
    let (_scratch, repository) = new_repository();
    let a = record("A", BackupMode::Full, None, 1);
    repository.write_record(&a).unwrap();
    let file = store(&repository, "A", "base/5/1", &[9u8; 1000], false);
    let path = repository.data_dir("A").join("base/5/1");
    fs::write(&path, [9u8; 500]).unwrap();
    let report = repository.validate_backup_files(&a, &BackupContents { files: vec![file] });
    assert_eq!(report.errors.len(), 1);
    assert!(report.errors[0].contains("base/5/1"));
    assert!(Path::new(&path).exists());
}

#[test]
fn a_dump_holds_its_running_lock_until_dropped_and_is_not_restorable() {
    let (_scratch, repository) = new_repository();
    let mut first = record("", BackupMode::Dump, None, 1_700_000_000_000_000);
    first.status = BackupStatus::Running;
    let mut second = first.clone();
    let lock = repository.create_backup(&mut first).unwrap();
    assert!(lock.is_some());
    let lock2 = repository.create_backup(&mut second).unwrap();
    assert_eq!(first.backup_id, "20231114-221320D");
    assert_eq!(second.backup_id, "20231114-221320D-2");
    assert!(repository.dump_dir(&first.backup_id).unwrap().is_dir());
    assert!(!repository.data_dir(&first.backup_id).exists());
    assert!(repository.is_dump_running(&first.backup_id).unwrap());
    drop(lock);
    assert!(!repository.is_dump_running(&first.backup_id).unwrap());
    assert!(repository.is_dump_running(&second.backup_id).unwrap());
    drop(lock2);

    let mut done = repository.read_record(&first.backup_id).unwrap();
    done.status = BackupStatus::Done;
    repository.write_record(&done).unwrap();
    repository
        .write_contents(&done.backup_id, &BackupContents::default())
        .unwrap();
    assert!(matches!(
        repository.load_chain(&done.backup_id),
        Err(RepositoryError::IsDump { .. })
    ));

    let mut full = record("", BackupMode::Full, None, 1);
    assert!(repository.create_backup(&mut full).unwrap().is_none());
    assert!(repository.data_dir(&full.backup_id).is_dir());
}
