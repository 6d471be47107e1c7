//! Restoring whole chains into directories: what is written, where
//! tablespaces go, recovery settings, the manifest, and that failures and
//! cancellation leave nothing behind.

mod restore_support;

use std::fs;
use std::ops::ControlFlow;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use blockbackup_core::backup::manifest::parse_manifest;
use blockbackup_core::repository::catalog::{Compression, RestorePoint, TablespaceEntry};
use blockbackup_core::restore::{
    restore, RestoreError, RestoreOptions, RestoreProgress, RestoreStats,
};
use blockbackup_core::Lsn;
use restore_support::*;

const REL: &str = "base/5/16384";
const TS_REL: &str = "pg_tblspc/16400/PG_15_202209061/5/16500";

fn tablespace() -> TablespaceEntry {
    TablespaceEntry {
        oid: 16400,
        location: "/srv/ts1".to_owned(),
    }
}

/// A full and an incremental backup of a small data directory with a
/// tablespace, WAL, and files the restore must not copy.
fn sample_chain(root: &Path, compression: Compression) -> Vec<Backup> {
    let mut full = record("F", None, compression, 0x100_0000);
    full.tablespaces = vec![tablespace()];
    let mut inc = record("I", Some("F"), compression, 0x200_0000);
    inc.tablespaces = vec![tablespace()];
    vec![
        write_backup(
            root,
            full,
            vec![
                whole("PG_VERSION", b"15\n".to_vec()),
                whole("global/pg_control", vec![7; 8192]),
                whole(REL, blocks(&[1, 1, 1])),
                whole("base/5/dropped", b"gone later".to_vec()),
                whole(TS_REL, blocks(&[5, 5])),
                whole(
                    "postgresql.auto.conf",
                    b"# Do not edit\nwork_mem = '8MB'".to_vec(),
                ),
                wal("pg_wal/000000010000000000000001", vec![1; 4096]),
            ],
        ),
        write_backup(
            root,
            inc,
            vec![
                whole("PG_VERSION", b"15\n".to_vec()),
                whole("global/pg_control", vec![8; 8192]),
                incremental(REL, 4, &[(1, block(2, 1)), (3, block(2, 3))]),
                incremental(TS_REL, 2, &[(0, block(6, 0))]),
                whole(
                    "postgresql.auto.conf",
                    b"# Do not edit\nwork_mem = '8MB'".to_vec(),
                ),
                whole("backup_label", b"START WAL LOCATION: 0/2000000\n".to_vec()),
                whole("tablespace_map", b"16400 /srv/ts1\n".to_vec()),
                whole("backup_manifest", b"stale".to_vec()),
                wal("pg_wal/000000010000000000000002", vec![2; 4096]),
            ],
        ),
    ]
}

fn options(target: &Path) -> RestoreOptions {
    RestoreOptions {
        target: target.to_owned(),
        tablespace_mapping: vec![],
        recovery_target_lsn: None,
        recovery_target_name: None,
        recovery: Default::default(),
        archive_commands: None,
        threads: 2,
        rules: Default::default(),
    }
}

fn run(backups: &[Backup], options: &RestoreOptions) -> Result<RestoreStats, RestoreError> {
    restore(&chain(backups), options, &mut |_| ControlFlow::Continue(()))
}

/// Every file under `dir` (following no symlinks), relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                walk(base, &entry.path(), out);
            } else {
                out.push(
                    entry
                        .path()
                        .strip_prefix(base)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

/// The restored manifest describes every file except pg_wal's exactly.
fn check_manifest(target: &Path) {
    let (files, ranges) =
        parse_manifest(&fs::read(target.join("backup_manifest")).unwrap()).unwrap();
    assert_eq!(ranges.len(), 1);
    let mut listed: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    listed.sort();
    let mut on_disk: Vec<String> = files_under(target)
        .into_iter()
        .filter(|p| {
            !p.starts_with("pg_wal/") && p != "backup_manifest" && !p.starts_with("pg_tblspc/")
        })
        .collect();
    // Tablespace files, followed through a link if mapped.
    for file in &files {
        if file.path.starts_with("pg_tblspc/") {
            on_disk.push(file.path.clone());
        }
    }
    on_disk.sort();
    assert_eq!(listed, on_disk);
    for file in files {
        let content = fs::read(target.join(&file.path)).unwrap();
        assert_eq!(content.len() as u64, file.size, "{}", file.path);
        assert_eq!(crc32c::crc32c(&content), file.crc32c, "{}", file.path);
    }
}

#[test]
fn restores_the_newest_backup_with_tablespace_in_place() {
    for compression in [Compression::None, Compression::Gzip] {
        let dir = tempfile::tempdir().unwrap();
        let backups = sample_chain(dir.path(), compression);
        let target = dir.path().join("restored/data");
        let stats = run(&backups, &options(&target)).unwrap();
        assert_eq!(stats.files, 7);

        assert_eq!(fs::read(target.join(REL)).unwrap(), blocks(&[1, 2, 1, 2]));
        assert_eq!(fs::read(target.join(TS_REL)).unwrap(), blocks(&[6, 5]));
        assert_eq!(
            fs::read(target.join("global/pg_control")).unwrap(),
            vec![8; 8192]
        );
        // The backup stored only the part of the segment it needs; the
        // restore gives PostgreSQL a whole one, the rest zeros.
        let segment = fs::read(target.join("pg_wal/000000010000000000000002")).unwrap();
        assert_eq!(segment.len(), 16 << 20);
        assert_eq!(&segment[..4096], &[2u8; 4096][..]);
        assert!(segment[4096..].iter().all(|&b| b == 0));
        // Deleted since the full backup; and not what the restore writes.
        assert!(!target.join("base/5/dropped").exists());
        assert!(!target.join("pg_wal/000000010000000000000001").exists());
        assert!(!target.join("tablespace_map").exists());
        // Archive recovery, so that the restored cluster ends on a timeline
        // of its own.
        assert!(target.join("recovery.signal").exists());
        // In place: a real directory.
        assert!(fs::symlink_metadata(target.join("pg_tblspc/16400"))
            .unwrap()
            .is_dir());
        let conf = fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
        assert!(
            conf.lines()
                .any(|l| l == "allow_in_place_tablespaces = 'on'"),
            "{conf}"
        );
        assert!(
            conf.lines()
                .any(|l| l == "recovery_target_action = 'promote'"),
            "{conf}"
        );
        assert!(!conf.contains("recovery_target_lsn"), "{conf}");
        for required in [
            "pg_wal/archive_status",
            "pg_replslot",
            "pg_stat_tmp",
            "pg_notify",
            "pg_serial",
            "pg_snapshots",
            "pg_subtrans",
            "pg_twophase",
            "pg_logical/snapshots",
            "pg_logical/mappings",
            "pg_commit_ts",
            "pg_dynshmem",
            "pg_multixact/members",
            "pg_multixact/offsets",
            "pg_xact",
            "pg_stat",
        ] {
            assert!(target.join(required).is_dir(), "{required}");
        }
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(
            fs::metadata(target.join(REL)).unwrap().permissions().mode() & 0o777,
            0o600
        );
        check_manifest(&target);
        let (_, ranges) =
            parse_manifest(&fs::read(target.join("backup_manifest")).unwrap()).unwrap();
        assert_eq!(
            (ranges[0].timeline, ranges[0].start_lsn, ranges[0].end_lsn),
            (1, Lsn(0x200_0000), Lsn(0x200_0100))
        );
    }
}

#[test]
fn a_target_that_is_not_empty_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let backups = sample_chain(dir.path(), Compression::None);
    let target = dir.path().join("busy");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("precious"), b"keep").unwrap();
    let error = run(&backups, &options(&target)).unwrap_err();
    assert!(
        matches!(error, RestoreError::TargetNotEmpty { .. }),
        "{error}"
    );
    assert_eq!(files_under(&target), vec!["precious"]);

    // An existing empty directory is fine.
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    run(&backups, &options(&empty)).unwrap();
    assert!(empty.join(REL).exists());
}

#[test]
fn mapped_tablespaces_go_where_they_are_told() {
    for key in ["16400", "/srv/ts1"] {
        let dir = tempfile::tempdir().unwrap();
        let backups = sample_chain(dir.path(), Compression::Gzip);
        let target = dir.path().join("data");
        let location = dir.path().join("new ts\\1");
        let mut options = options(&target);
        options.tablespace_mapping = vec![(key.to_owned(), location.clone())];
        run(&backups, &options).unwrap();

        let link = target.join("pg_tblspc/16400");
        assert_eq!(fs::read_link(&link).unwrap(), location);
        assert_eq!(
            fs::read(location.join("PG_15_202209061/5/16500")).unwrap(),
            blocks(&[6, 5])
        );
        assert_eq!(
            fs::metadata(&location).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let map = fs::read_to_string(target.join("tablespace_map")).unwrap();
        let escaped = location.to_str().unwrap().replace('\\', "\\\\");
        assert_eq!(map, format!("16400 {escaped}\n"));
        let conf = fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
        assert!(!conf.contains("allow_in_place_tablespaces"), "{conf}");
        check_manifest(&target);
    }
}

#[test]
fn bad_tablespace_mappings_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let backups = sample_chain(dir.path(), Compression::None);
    let target = dir.path().join("data");
    let busy = dir.path().join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("x"), b"x").unwrap();
    for (key, location) in [
        ("16401", dir.path().join("a")),
        ("16400", PathBuf::from("relative/dir")),
        ("16400", busy.clone()),
        ("16400", target.join("inside")),
    ] {
        let mut options = options(&target);
        options.tablespace_mapping = vec![(key.to_owned(), location.clone())];
        let error = run(&backups, &options).unwrap_err();
        assert!(
            matches!(
                error,
                RestoreError::BadTablespaceMapping { .. } | RestoreError::Destination(_)
            ),
            "{key} {location:?}: {error}"
        );
        assert!(!target.exists());
    }
    let mut options = options(&target);
    options.tablespace_mapping = vec![
        ("16400".to_owned(), dir.path().join("a")),
        ("/srv/ts1".to_owned(), dir.path().join("b")),
    ];
    assert!(matches!(
        run(&backups, &options).unwrap_err(),
        RestoreError::BadTablespaceMapping { .. }
    ));
    assert!(!target.exists());
}

#[test]
fn recovery_target_settings() {
    let dir = tempfile::tempdir().unwrap();
    let backups = sample_chain(dir.path(), Compression::None);
    let target = dir.path().join("data");
    let mut options = options(&target);

    options.recovery_target_lsn = Some(Lsn(0x200_00FF));
    let error = run(&backups, &options).unwrap_err();
    assert!(
        matches!(error, RestoreError::RecoveryTargetBeforeConsistency { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("0/20000FF"), "{error}");
    assert!(!target.exists());

    // Without an archive, only as far as the backup's own WAL reaches:
    // its stop LSN, or its newest restore point.
    options.recovery_target_lsn = Some(Lsn(0x300_0000));
    let error = run(&backups, &options).unwrap_err();
    assert!(
        matches!(
            error,
            RestoreError::TargetUnreachable {
                reach: Lsn(0x200_0100),
                ..
            }
        ),
        "{error}"
    );
    assert!(!target.exists());
    options.recovery_target_lsn = Some(Lsn(0x200_0100));
    run(&backups, &options).unwrap();
    fs::remove_dir_all(&target).unwrap();

    let mut backups = backups;
    backups.last_mut().unwrap().record.restore_points = vec![RestorePoint {
        name: "later".into(),
        lsn: Lsn(0x300_0000),
        time_us: 0,
    }];
    options.recovery_target_lsn = Some(Lsn(0x300_0001));
    assert!(matches!(
        run(&backups, &options).unwrap_err(),
        RestoreError::TargetUnreachable {
            reach: Lsn(0x300_0000),
            ..
        }
    ));
    options.recovery_target_lsn = Some(Lsn(0x300_0000));
    run(&backups, &options).unwrap();
    assert_eq!(fs::read(target.join("recovery.signal")).unwrap(), b"");
    let conf = fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.starts_with("# Do not edit\nwork_mem = '8MB'\n"),
        "{conf}"
    );
    for line in [
        "restore_command = '/bin/false'",
        "recovery_target_lsn = '0/3000000'",
        "recovery_target_inclusive = 'on'",
        "recovery_target_action = 'promote'",
    ] {
        assert!(
            conf.lines().any(|l| l == line),
            "{line} missing from {conf}"
        );
    }
    check_manifest(&target);
}

#[test]
fn recovery_target_names_must_be_restore_points_of_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let mut backups = sample_chain(dir.path(), Compression::None);
    let target = dir.path().join("data");
    let mut options = options(&target);
    options.recovery_target_name = Some("nightly".into());
    let error = run(&backups, &options).unwrap_err();
    assert!(
        matches!(&error, RestoreError::UnknownRestorePoint { known, .. } if known == "none"),
        "{error}"
    );
    assert!(!target.exists());

    backups.last_mut().unwrap().record.restore_points = vec![RestorePoint {
        name: "nightly's".into(),
        lsn: Lsn(0x300_0000),
        time_us: 0,
    }];
    assert!(matches!(
        run(&backups, &options).unwrap_err(),
        RestoreError::UnknownRestorePoint { .. }
    ));
    options.recovery_target_name = Some("nightly's".into());
    options.recovery_target_lsn = Some(Lsn(0x300_0000));
    assert!(matches!(
        run(&backups, &options).unwrap_err(),
        RestoreError::TwoRecoveryTargets
    ));
    options.recovery_target_lsn = None;
    run(&backups, &options).unwrap();
    let conf = fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.lines()
            .any(|l| l == "recovery_target_name = 'nightly''s'"),
        "{conf}"
    );
    assert!(!conf.contains("recovery_target_lsn"), "{conf}");
}

#[test]
fn cancellation_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut backups = sample_chain(dir.path(), Compression::None);
    // A big file, so the restore is still running when it is cancelled.
    let mut big = record("B", Some("I"), Compression::None, 0x300_0000);
    big.tablespaces = vec![tablespace()];
    let mut files = vec![whole("base/5/big", vec![9; 64 << 20])];
    files.push(whole("PG_VERSION", b"15\n".to_vec()));
    files.push(incremental(TS_REL, 2, &[]));
    backups.push(write_backup(dir.path(), big, files));

    let target = dir.path().join("data");
    let location = dir.path().join("ts");
    let mut options = options(&target);
    options.tablespace_mapping = vec![("16400".to_owned(), location.clone())];
    let mut polls = Vec::new();
    let error = restore(
        &chain(&backups),
        &options,
        &mut |progress: &RestoreProgress| {
            polls.push(*progress);
            if progress.bytes_done > 0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap_err();
    assert!(matches!(error, RestoreError::Cancelled), "{error}");
    assert!(!target.exists());
    assert!(!location.exists());
    assert!(polls.iter().all(|p| p.files_total == 3));

    // A pre-existing empty target stays, empty.
    fs::create_dir(&target).unwrap();
    let error = restore(&chain(&backups), &options, &mut |p: &RestoreProgress| {
        if p.bytes_done > 0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap_err();
    assert!(matches!(error, RestoreError::Cancelled));
    assert!(target.is_dir());
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
    assert!(!location.exists());
}

#[test]
fn a_failure_midway_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let backups = sample_chain(dir.path(), Compression::None);
    fs::remove_file(disk_path(&backups[0], TS_REL)).unwrap();
    let target = dir.path().join("data");
    let location = dir.path().join("ts");
    let mut options = options(&target);
    options.tablespace_mapping = vec![("16400".to_owned(), location.clone())];
    let error = run(&backups, &options).unwrap_err();
    assert!(
        matches!(error, RestoreError::MissingFile { ref backup_id, .. } if backup_id == "F"),
        "{error}"
    );
    assert!(!target.exists());
    assert!(!location.exists());
}

#[test]
fn progress_is_reported_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let backups = sample_chain(dir.path(), Compression::None);
    let target = dir.path().join("data");
    let mut last = RestoreProgress::default();
    let mut options = options(&target);
    options.threads = 4;
    let stats = restore(&chain(&backups), &options, &mut |p: &RestoreProgress| {
        last = *p;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(last.files_done, 7);
    assert_eq!(last.files_total, 7);
    assert_eq!(last.bytes_done, stats.bytes);
    assert_eq!(last.bytes_total, stats.bytes);
}

#[test]
fn chains_must_be_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let mut backups = sample_chain(dir.path(), Compression::None);
    let target = dir.path().join("data");
    backups[1].record.parent_backup_id = Some("X".to_owned());
    assert!(matches!(
        run(&backups, &options(&target)).unwrap_err(),
        RestoreError::BadChain { .. }
    ));
    assert!(matches!(
        run(&backups[1..], &options(&target)).unwrap_err(),
        RestoreError::BadChain { .. }
    ));
    assert!(matches!(
        run(&[], &options(&target)).unwrap_err(),
        RestoreError::BadChain { .. }
    ));
    assert!(!target.exists());
}
