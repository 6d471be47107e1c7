//! The data directory walk, on a synthetic data directory.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use blockbackup_core::backup::plan::{walk_data_directory, FileClass};
use blockbackup_core::relfork::{ForkNumber, RelFork};

const VERSION_DIR: &str = "PG_15_202209061";

fn touch(root: &Path, path: &str, size: usize) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, vec![7u8; size]).unwrap();
}

#[test]
fn walks_like_pg_basebackup() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let tablespace = scratch.path().join("tablespace");
    let elsewhere = scratch.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    touch(&elsewhere, "outside.conf", 1);

    for kept in [
        "PG_VERSION",
        "postgresql.conf",
        "postgresql.auto.conf",
        "global/1262",
        "global/pg_control",
        "base/5/PG_VERSION",
        "base/5/16384",
        "base/5/16384.1",
        "base/5/16384_fsm",
        "base/5/16384_vm",
        "base/5/16390_init",
        "pg_xact/0000",
    ] {
        touch(&data, kept, 8192);
    }
    for skipped in [
        "postmaster.pid",
        "postmaster.opts",
        "backup_label",
        "tablespace_map",
        "backup_manifest",
        "current_logfiles",
        "postgresql.auto.conf.tmp",
        "global/pg_internal.init",
        "global/pg_internal.init.4711",
        "base/5/pg_internal.init",
        "base/5/16390",
        "base/5/16390_vm",
        "base/5/16390.1",
        "base/5/t3_16500",
        "base/5/t3_16500_fsm",
        "base/pgsql_tmp/pgsql_tmp12.0",
        "base/5/pgsql_tmp_file",
        "pg_wal/000000010000000000000001",
        "pg_wal/archive_status/000000010000000000000001.ready",
        "pg_notify/0000",
        "pg_stat_tmp/global.stat",
        "pg_subtrans/0000",
        "pg_replslot/slot/state",
        "pg_dynshmem/mmap.1",
        "pg_serial/0000",
        "pg_snapshots/00000003-1",
        "pg_blockbackup/summaries/x.summary",
        "repository/backups/x/backup.json",
    ] {
        touch(&data, skipped, 10);
    }
    // A tablespace shared with another major version, and an in-place one.
    touch(&tablespace, &format!("{VERSION_DIR}/16401/16402"), 8192);
    touch(&tablespace, &format!("{VERSION_DIR}/16401/16402.2"), 8192);
    touch(&tablespace, "PG_14_202107181/16401/16402", 8192);
    fs::create_dir_all(data.join("pg_tblspc")).unwrap();
    symlink(&tablespace, data.join("pg_tblspc/16400")).unwrap();
    touch(
        &data,
        &format!("pg_tblspc/16500/{VERSION_DIR}/16401/16403"),
        8192,
    );
    // Other links are not followed.
    symlink(&elsewhere, data.join("log")).unwrap();
    symlink(elsewhere.join("outside.conf"), data.join("linked.conf")).unwrap();

    let (directories, files) =
        walk_data_directory(&data, VERSION_DIR, &[data.join("repository")]).unwrap();

    let paths: Vec<&str> = files.iter().map(|file| file.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "PG_VERSION",
            "base/5/16384",
            "base/5/16384.1",
            "base/5/16384_fsm",
            "base/5/16384_vm",
            "base/5/16390_init",
            "base/5/PG_VERSION",
            "global/1262",
            "global/pg_control",
            "pg_tblspc/16400/PG_15_202209061/16401/16402",
            "pg_tblspc/16400/PG_15_202209061/16401/16402.2",
            "pg_tblspc/16500/PG_15_202209061/16401/16403",
            "pg_xact/0000",
            "postgresql.auto.conf",
            "postgresql.conf",
        ]
    );
    assert_eq!(
        directories,
        vec![
            "base",
            "base/5",
            "global",
            "pg_dynshmem",
            "pg_notify",
            "pg_replslot",
            "pg_serial",
            "pg_snapshots",
            "pg_stat_tmp",
            "pg_subtrans",
            "pg_tblspc",
            "pg_tblspc/16400",
            "pg_tblspc/16400/PG_15_202209061",
            "pg_tblspc/16400/PG_15_202209061/16401",
            "pg_tblspc/16500",
            "pg_tblspc/16500/PG_15_202209061",
            "pg_tblspc/16500/PG_15_202209061/16401",
            "pg_wal",
            "pg_wal/archive_status",
            "pg_xact",
        ]
    );

    let by_path = |path: &str| files.iter().find(|file| file.path == path).unwrap();
    let in_tablespace = by_path("pg_tblspc/16400/PG_15_202209061/16401/16402.2");
    assert_eq!(
        in_tablespace.absolute,
        fs::canonicalize(&tablespace)
            .unwrap()
            .join(VERSION_DIR)
            .join("16401/16402.2")
    );
    assert_eq!(in_tablespace.size, 8192);
    assert_eq!(
        in_tablespace.class,
        FileClass::Relation {
            rf: RelFork {
                spc_oid: 16400,
                db_oid: 16401,
                rel_number: 16402,
                fork: ForkNumber::Main
            },
            segment: 2
        }
    );
    assert_eq!(by_path("global/pg_control").class, FileClass::NonRelation);
    assert!(by_path("base/5/16384").mtime > 0);
}

#[test]
fn a_linked_wal_directory_is_recreated_not_read() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let wal = scratch.path().join("wal");
    touch(&wal, "000000010000000000000001", 10);
    touch(&data, "PG_VERSION", 3);
    symlink(&wal, data.join("pg_wal")).unwrap();
    let (directories, files) = walk_data_directory(&data, VERSION_DIR, &[]).unwrap();
    assert_eq!(directories, vec!["pg_wal", "pg_wal/archive_status"]);
    assert_eq!(files.len(), 1);
}

#[test]
fn a_dangling_tablespace_link_is_an_error() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    fs::create_dir_all(data.join("pg_tblspc")).unwrap();
    symlink(scratch.path().join("gone"), data.join("pg_tblspc/16400")).unwrap();
    let error = walk_data_directory(&data, VERSION_DIR, &[]).unwrap_err();
    assert!(error.to_string().contains("pg_tblspc/16400"), "{error}");
}

#[test]
fn a_missing_data_directory_is_an_error() {
    let scratch = tempfile::tempdir().unwrap();
    let error = walk_data_directory(&scratch.path().join("nope"), VERSION_DIR, &[]).unwrap_err();
    assert!(error.to_string().contains("nope"), "{error}");
}
