//! The local directory driver of the storage seam: what the repository
//! relies on, held against the file system.

use std::fs;
use std::io::{Read, Write};

use blockbackup_core::safe_fs::is_not_regular;
use blockbackup_core::storage::local::LocalStorage;
use blockbackup_core::storage::{Entry, Storage};

fn store() -> (tempfile::TempDir, LocalStorage) {
    let scratch = tempfile::tempdir().unwrap();
    let storage = LocalStorage::new(&scratch.path().join("repo"));
    (scratch, storage)
}

fn read(storage: &LocalStorage, path: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    storage.open(path).unwrap().read_to_end(&mut bytes).unwrap();
    bytes
}

#[test]
fn small_files_are_put_whole_and_replaced_at_once() {
    let (_scratch, storage) = store();
    assert_eq!(storage.get("a/b.json").unwrap(), None);
    storage.put("a/b.json", b"one").unwrap();
    assert_eq!(
        storage.get("a/b.json").unwrap().as_deref(),
        Some(&b"one"[..])
    );
    storage.put("a/b.json", b"two, longer").unwrap();
    assert_eq!(read(&storage, "a/b.json"), b"two, longer");
    assert_eq!(storage.size("a/b.json").unwrap(), Some(11));
    assert_eq!(storage.size("a/none").unwrap(), None);
}

#[test]
fn a_replacement_is_invisible_until_finished_and_gone_if_dropped() {
    let (scratch, storage) = store();
    storage
        .put("pg_wal/000000010000000000000001", b"old")
        .unwrap();
    let mut writer = storage.replace("pg_wal/000000010000000000000001").unwrap();
    writer.write_all(b"new and more").unwrap();
    writer.flush().unwrap();
    assert_eq!(read(&storage, "pg_wal/000000010000000000000001"), b"old");
    assert_eq!(writer.finish().unwrap(), 12);
    assert_eq!(
        read(&storage, "pg_wal/000000010000000000000001"),
        b"new and more"
    );

    let mut abandoned = storage.replace("pg_wal/000000010000000000000001").unwrap();
    abandoned.write_all(b"half").unwrap();
    drop(abandoned);
    assert_eq!(
        read(&storage, "pg_wal/000000010000000000000001"),
        b"new and more"
    );
    let names: Vec<_> = fs::read_dir(scratch.path().join("repo/pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "a temporary file was left: {names:?}");
}

#[test]
fn streamed_files_are_synced_and_listed() {
    let (_scratch, storage) = store();
    let mut paths = Vec::new();
    for name in ["b/5/1", "b/5/2", "b/6/1", "top"] {
        let mut writer = storage.create(name).unwrap();
        writer.write_all(name.as_bytes()).unwrap();
        assert_eq!(writer.finish().unwrap(), name.len() as u64);
        storage.sync_file(name).unwrap();
        paths.push(name.to_owned());
    }
    storage.sync_parents(&paths, 2).unwrap();
    let mut top = storage.list("").unwrap();
    top.sort();
    assert!(top[1].modified_us.is_some_and(|t| t > 0), "{top:?}");
    top[1].modified_us = None;
    assert_eq!(
        top,
        vec![
            Entry {
                name: "b".into(),
                is_prefix: true,
                size: 0,
                modified_us: None,
            },
            Entry {
                name: "top".into(),
                is_prefix: false,
                size: 3,
                modified_us: None,
            }
        ]
    );
    assert_eq!(storage.list("b/5").unwrap().len(), 2);
    assert!(storage.list("nowhere").unwrap().is_empty());
    storage.remove("b/5/1").unwrap();
    storage.remove("b/5/1").unwrap();
    storage.remove_all("b").unwrap();
    storage.remove_all("b").unwrap();
    assert_eq!(storage.list("").unwrap().len(), 1);
}

#[test]
fn links_are_never_followed_and_paths_stay_inside() {
    let (scratch, storage) = store();
    storage.put("backups/x/pgdata/PG_VERSION", b"15\n").unwrap();
    let outside = scratch.path().join("outside");
    fs::write(&outside, b"secret").unwrap();
    let inside = scratch.path().join("repo/backups/x/pgdata/link");
    std::os::unix::fs::symlink(&outside, &inside).unwrap();
    let error = storage.open("backups/x/pgdata/link").err().unwrap();
    assert!(is_not_regular(&error), "{error}");
    assert!(storage.size("backups/x/pgdata/link").is_err());
    // A directory on the way replaced by a link.
    let elsewhere = scratch.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("PG_VERSION"), b"15\n").unwrap();
    fs::rename(
        scratch.path().join("repo/backups/x/pgdata"),
        scratch.path().join("moved"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&elsewhere, scratch.path().join("repo/backups/x/pgdata")).unwrap();
    assert!(is_not_regular(
        &storage.open("backups/x/pgdata/PG_VERSION").err().unwrap()
    ));
    for bad in ["../outside", "/etc/passwd", "a/../../b"] {
        assert!(storage.put(bad, b"x").is_err(), "{bad}");
        assert!(storage.open(bad).is_err(), "{bad}");
    }
    assert_eq!(
        storage.local_path("backups/x/dump"),
        Some(scratch.path().join("repo/backups/x/dump"))
    );
}
