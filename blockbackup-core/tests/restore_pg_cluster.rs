//! End to end against PostgreSQL 15: two base backups of a changing
//! cluster become a full and a block-incremental backup (the incremental
//! holding only the blocks that differ, as the backup side stores them);
//! the restored chain passes pg_verifybackup, starts, reaches consistency
//! and holds the data of the second backup.

mod manifest_pg_cluster;
mod restore_support;

use std::fs;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::UNIX_EPOCH;

use blockbackup_core::backup::incremental_file::{incremental_path, IncrementalHeader};
use blockbackup_core::backup::manifest::parse_manifest;
use blockbackup_core::repository::catalog::{
    BackupContents, BackupRecord, Compression, StoredFile, StoredKind, TablespaceEntry,
};
use blockbackup_core::restore::{restore, RestoreOptions};
use blockbackup_core::Lsn;
use manifest_pg_cluster::{give_to_postgres, postgres_tempdir, unavailable, verifybackup, Cluster};
use restore_support::{chain, record, Backup};

const BLCKSZ: usize = 8192;

fn files_of(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            // Follows pg_tblspc's links into the tablespaces.
            if fs::metadata(entry.path()).unwrap().is_dir() {
                walk(base, &entry.path(), out);
            } else {
                out.push(
                    entry
                        .path()
                        .strip_prefix(base)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn is_relation_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap();
    (path.starts_with("base/") || path.starts_with("global/"))
        && name
            .split('.')
            .next()
            .unwrap()
            .bytes()
            .all(|b| b.is_ascii_digit())
}

/// Turns a pg_basebackup directory into a repository backup; relation
/// files that the parent also has become incremental files of the blocks
/// that differ.
fn import(
    repo: &Path,
    source: &Path,
    id: &str,
    parent: Option<&Backup>,
    tablespaces: &[TablespaceEntry],
) -> Backup {
    let (_, ranges) = parse_manifest(&fs::read(source.join("backup_manifest")).unwrap()).unwrap();
    let mut rec: BackupRecord = record(
        id,
        parent.map(|p| p.record.backup_id.as_str()),
        Compression::Gzip,
        0,
    );
    rec.block_size = BLCKSZ as u32;
    rec.timeline = ranges[0].timeline;
    rec.start_lsn = ranges[0].start_lsn;
    rec.stop_lsn = Some(ranges[0].end_lsn);
    rec.tablespaces = tablespaces.to_vec();
    let data_dir = repo.join("backups").join(id).join("pgdata");
    let mut contents = BackupContents::default();
    for path in files_of(source) {
        if path == "backup_manifest" {
            continue;
        }
        let content = fs::read(source.join(&path)).unwrap();
        let mtime = fs::metadata(source.join(&path))
            .unwrap()
            .modified()
            .unwrap();
        let mtime = mtime.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let parent_content = parent
            .filter(|_| is_relation_file(&path) && content.len().is_multiple_of(BLCKSZ))
            .and_then(|p| {
                fs::read(
                    source
                        .parent()
                        .unwrap()
                        .join(format!("bb-{}", p.record.backup_id))
                        .join(&path),
                )
                .ok()
            });
        let (stored_path, kind, stored) = if path.starts_with("pg_wal/") {
            (path.clone(), StoredKind::Wal, content)
        } else if let Some(old) = parent_content {
            let blocks: Vec<u32> = (0..content.len() / BLCKSZ)
                .filter(|&b| {
                    old.get(b * BLCKSZ..(b + 1) * BLCKSZ)
                        != Some(&content[b * BLCKSZ..(b + 1) * BLCKSZ])
                })
                .map(|b| b as u32)
                .collect();
            let header = IncrementalHeader {
                block_size: BLCKSZ as u32,
                truncation_blocks: (content.len() / BLCKSZ) as u32,
                blocks,
            };
            let mut stored = header.encode();
            for &b in &header.blocks {
                stored.extend_from_slice(&content[b as usize * BLCKSZ..(b as usize + 1) * BLCKSZ]);
            }
            (incremental_path(&path), StoredKind::Incremental, stored)
        } else {
            (path.clone(), StoredKind::Whole, content)
        };
        let disk = data_dir.join(format!("{stored_path}.gz"));
        fs::create_dir_all(disk.parent().unwrap()).unwrap();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, &stored).unwrap();
        let compressed = encoder.finish().unwrap();
        fs::write(&disk, &compressed).unwrap();
        contents.files.push(StoredFile {
            path: stored_path,
            kind,
            size: stored.len() as u64,
            stored_size: compressed.len() as u64,
            crc32c: crc32c::crc32c(&stored),
            stored_crc32c: None,
            mtime,
        });
    }
    Backup {
        record: rec,
        contents,
        data_dir,
    }
}

#[test]
fn a_restored_chain_verifies_starts_and_has_the_data() {
    if let Some(reason) = unavailable() {
        println!("skipped: {reason}");
        return;
    }
    let cluster = Cluster::start();
    let ts_location = cluster.dir.path().join("ts");
    fs::create_dir(&ts_location).unwrap();
    give_to_postgres(&ts_location);
    cluster.psql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        ts_location.display()
    ));
    let ts_oid: u32 = cluster
        .psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'")
        .parse()
        .unwrap();
    let tablespaces = [TablespaceEntry {
        oid: ts_oid,
        location: ts_location.to_str().unwrap().to_owned(),
    }];
    cluster.psql("CREATE TABLE t (id int PRIMARY KEY, pad text); INSERT INTO t SELECT g, repeat('a', 200) FROM generate_series(1, 20000) g");
    cluster.psql("CREATE TABLE u TABLESPACE ts AS SELECT g FROM generate_series(1, 1000) g");
    let backup = |name: &str| {
        let dest = cluster.dir.path().join(format!("bb-{name}"));
        let tablespace_copy = cluster.dir.path().join(format!("ts-{name}"));
        manifest_pg_cluster::run(
            manifest_pg_cluster::pg_command("pg_basebackup")
                .arg("-h")
                .arg(cluster.dir.path())
                .args([
                    "-p",
                    &cluster.port.to_string(),
                    "-U",
                    "postgres",
                    "-Fp",
                    "-X",
                    "fetch",
                    "-c",
                    "fast",
                    "--no-sync",
                ])
                .arg(format!(
                    "--tablespace-mapping={}={}",
                    ts_location.display(),
                    tablespace_copy.display()
                ))
                .arg("-D")
                .arg(&dest),
        );
    };
    backup("F");
    cluster.psql("UPDATE t SET pad = 'changed' WHERE id % 1000 = 0; INSERT INTO t SELECT g, 'new' FROM generate_series(20001, 25000) g; DELETE FROM t WHERE id <= 100; INSERT INTO u SELECT 0");
    cluster.psql("VACUUM t");
    backup("I");

    let repo = tempfile::tempdir().unwrap();
    let full = import(
        repo.path(),
        &cluster.dir.path().join("bb-F"),
        "F",
        None,
        &tablespaces,
    );
    let incremental = import(
        repo.path(),
        &cluster.dir.path().join("bb-I"),
        "I",
        Some(&full),
        &tablespaces,
    );
    let incremental_files = incremental
        .contents
        .files
        .iter()
        .filter(|f| f.kind == StoredKind::Incremental)
        .count();
    assert!(
        incremental_files > 100,
        "only {incremental_files} incremental files"
    );
    assert!(incremental
        .contents
        .files
        .iter()
        .any(|f| f.path.starts_with(&format!("pg_tblspc/{ts_oid}/PG_15"))));
    let stop_lsn = incremental.record.stop_lsn.unwrap();
    let backups = vec![full, incremental];
    drop(cluster);

    // In place, no recovery target: verifies and starts.
    let restored = postgres_tempdir();
    let target = restored.path().join("data");
    let options = RestoreOptions {
        target: target.clone(),
        tablespace_mapping: vec![],
        recovery_target_lsn: None,
        recovery_target_name: None,
        recovery: Default::default(),
        archive_commands: None,
        threads: 2,
        rules: Default::default(),
    };
    let stats = restore(&chain(&backups), &options, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(stats.files > 500);
    give_to_postgres(&target);
    let verified = verifybackup(&target);
    assert!(
        verified.status.success(),
        "pg_verifybackup rejected the restore: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    let restored_cluster = Cluster::start_existing(restored, target);
    assert_eq!(
        restored_cluster.psql("SELECT count(*), count(*) FILTER (WHERE pad = 'changed') FROM t"),
        "24900|20"
    );
    assert_eq!(restored_cluster.psql("SELECT count(*) FROM u"), "1001");
    assert_eq!(promoted(&restored_cluster), "f");
    drop(restored_cluster);

    // Tablespace mapped elsewhere, recovery to the end of the backup.
    let restored = postgres_tempdir();
    let target = restored.path().join("data");
    let mapped = restored.path().join("ts-mapped");
    let options = RestoreOptions {
        target: target.clone(),
        tablespace_mapping: vec![(ts_oid.to_string(), mapped.clone())],
        recovery_target_lsn: Some(Lsn(stop_lsn.0)),
        recovery_target_name: None,
        recovery: Default::default(),
        archive_commands: None,
        threads: 3,
        rules: Default::default(),
    };
    restore(&chain(&backups), &options, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    give_to_postgres(&target);
    give_to_postgres(&mapped);
    let restored_cluster = Cluster::start_existing(restored, target.clone());
    assert_eq!(restored_cluster.psql("SELECT count(*) FROM u"), "1001");
    assert_eq!(restored_cluster.psql("SELECT count(*) FROM t"), "24900");
    assert_eq!(
        fs::read_link(target.join(format!("pg_tblspc/{ts_oid}"))).unwrap(),
        mapped
    );
    // Promoted at the target.
    assert_eq!(promoted(&restored_cluster), "f");
}

/// `pg_is_in_recovery()` once promotion has had 10 s: `pg_ctl -w start`
/// returns when connections are accepted, which a hot standby does before
/// recovery ends.
fn promoted(cluster: &Cluster) -> String {
    let mut in_recovery = String::new();
    for _ in 0..100 {
        in_recovery = cluster.psql("SELECT pg_is_in_recovery()");
        if in_recovery == "f" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    in_recovery
}
