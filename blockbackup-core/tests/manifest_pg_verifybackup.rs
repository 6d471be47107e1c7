//! Our manifest writer and reader against PostgreSQL 15's own: a manifest
//! taken by pg_basebackup parses, re-renders to the same bytes, and
//! pg_verifybackup accepts the re-rendered one and notices a damaged file.

mod manifest_pg_cluster;

use std::fs;
use std::time::UNIX_EPOCH;

use blockbackup_core::backup::manifest::{parse_manifest, render_manifest};
use manifest_pg_cluster::{unavailable, verifybackup, Cluster};

#[test]
fn pg_verifybackup_accepts_what_we_render() {
    if let Some(reason) = unavailable() {
        println!("skipped: {reason}");
        return;
    }
    let cluster = Cluster::start();
    cluster.psql(
        "CREATE TABLE t AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 10000) g",
    );
    let backup = cluster.dir.path().join("backup");
    cluster.base_backup(&backup);

    let manifest_path = backup.join("backup_manifest");
    let original = fs::read(&manifest_path).unwrap();
    let (files, wal_ranges) = parse_manifest(&original).unwrap();
    assert!(files.len() > 500, "only {} files", files.len());
    assert_eq!(wal_ranges.len(), 1);
    assert!(wal_ranges[0].start_lsn < wal_ranges[0].end_lsn);
    // What we parsed describes the files on disk.
    for file in &files {
        let path = backup.join(&file.path);
        let content = fs::read(&path).unwrap();
        assert_eq!(content.len() as u64, file.size, "{}", file.path);
        assert_eq!(crc32c::crc32c(&content), file.crc32c, "{}", file.path);
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        let mtime = mtime.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((mtime - file.mtime).abs() < 5, "{}", file.path);
    }

    // Re-rendering gives PostgreSQL's bytes exactly.
    let rendered = render_manifest(&files, &wal_ranges);
    assert_eq!(
        String::from_utf8_lossy(&rendered),
        String::from_utf8_lossy(&original)
    );
    fs::write(&manifest_path, &rendered).unwrap();
    let verified = verifybackup(&backup);
    assert!(
        verified.status.success(),
        "pg_verifybackup rejected our manifest: {}",
        String::from_utf8_lossy(&verified.stderr)
    );

    // One flipped byte in a relation file is noticed.
    let victim = files
        .iter()
        .find(|f| f.path.starts_with("base/") && f.size > 8192)
        .unwrap();
    let victim_path = backup.join(&victim.path);
    let mut content = fs::read(&victim_path).unwrap();
    content[5000] ^= 0x40;
    fs::write(&victim_path, &content).unwrap();
    let verified = verifybackup(&backup);
    assert!(
        !verified.status.success(),
        "pg_verifybackup missed a damaged {}",
        victim.path
    );
    let stderr = String::from_utf8_lossy(&verified.stderr);
    assert!(stderr.contains(&victim.path), "{stderr}");
}
