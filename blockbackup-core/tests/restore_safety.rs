//! What a restore must never do, whatever happens around it: follow a
//! link swapped in while it runs, remove what it did not create, read a
//! stored file that was replaced by a link, leave a directory that looks
//! usable after being cut off, write a setting the server cannot read
//! back, or write where the destination rules forbid.

mod restore_support;

use std::fs;
use std::ops::ControlFlow;
use std::path::Path;

use blockbackup_core::repository::catalog::{Compression, RestorePoint};
use blockbackup_core::restore::target::{DestinationError, DestinationRules, ForbiddenPlace};
use blockbackup_core::restore::MARKER;
use blockbackup_core::restore::{restore, RestoreError, RestoreOptions, RestoreProgress};
use blockbackup_core::Lsn;
use restore_support::*;

const REL: &str = "base/5/16384";

/// A full backup with a big file (so that a restore is still running at
/// its first polls) and a standby.signal the restore must leave out.
fn big_backup(root: &Path) -> Vec<Backup> {
    let full = record("F", None, Compression::None, 0x100_0000);
    vec![write_backup(
        root,
        full,
        vec![
            whole("PG_VERSION", b"15\n".to_vec()),
            whole("global/pg_control", vec![7; 8192]),
            whole(REL, blocks(&[1, 1, 1])),
            whole("base/5/big", vec![9; 48 << 20]),
            whole("standby.signal", Vec::new()),
            whole("postgresql.auto.conf", b"work_mem = '8MB'\n".to_vec()),
            wal("pg_wal/000000010000000000000001", vec![1; 4096]),
        ],
    )]
}

fn options(target: &Path) -> RestoreOptions {
    RestoreOptions {
        target: target.to_owned(),
        tablespace_mapping: vec![],
        recovery_target_lsn: None,
        recovery_target_name: None,
        recovery: Default::default(),
        archive_commands: None,
        threads: 1,
        rules: DestinationRules::default(),
    }
}

fn continue_always(_: &RestoreProgress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// Swaps the target for a link to `victim` at the first poll that sees
/// bytes written, then cancels the restore there or lets it finish.
fn restore_with_swap(precreate: bool, cancel: bool) {
    let dir = tempfile::tempdir().unwrap();
    let backups = big_backup(dir.path());
    let target = dir.path().join("data");
    if precreate {
        fs::create_dir(&target).unwrap();
    }
    let moved = dir.path().join("data.moved");
    let victim = dir.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("precious"), b"do not remove").unwrap();
    fs::create_dir(victim.join("base")).unwrap();
    fs::write(victim.join("base/keep"), b"mine").unwrap();

    let mut swapped = false;
    let result = restore(
        &chain(&backups),
        &options(&target),
        &mut |p: &RestoreProgress| {
            if !swapped && p.bytes_done > 0 {
                // What renameat2(RENAME_EXCHANGE) does in one step.
                fs::rename(&target, &moved).unwrap();
                std::os::unix::fs::symlink(&victim, &target).unwrap();
                swapped = true;
                if cancel {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        },
    );
    let what = format!("precreate {precreate}, cancel {cancel}");
    assert!(
        swapped,
        "{what}: the restore ended before it could be disturbed"
    );
    // The link and what it points at are untouched, either way.
    assert!(fs::symlink_metadata(&target)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(victim.join("precious")).unwrap(), b"do not remove");
    assert_eq!(fs::read(victim.join("base/keep")).unwrap(), b"mine");
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 2, "{what}");
    assert_eq!(
        fs::read_dir(victim.join("base")).unwrap().count(),
        1,
        "{what}"
    );
    if cancel {
        assert!(
            matches!(result, Err(RestoreError::Cancelled)),
            "{what}: {result:?}"
        );
        // What the restore made was removed where it really is now (the
        // directory itself stays: its name is someone else's now).
        assert_eq!(fs::read_dir(&moved).unwrap().count(), 0, "{what}");
    } else {
        // Every file went into the restore's own directory.
        result.unwrap();
        assert_eq!(fs::read(moved.join("PG_VERSION")).unwrap(), b"15\n");
        assert!(moved.join("base/5/big").is_file() && moved.join("backup_manifest").is_file());
    }
}

#[test]
fn a_target_swapped_for_a_link_midway_sends_nothing_through_it() {
    for precreate in [false, true] {
        restore_with_swap(precreate, false);
        restore_with_swap(precreate, true);
    }
}

#[test]
fn cleanup_leaves_what_others_put_in_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let backups = big_backup(dir.path());
    let target = dir.path().join("data");
    let mut planted = false;
    let error = restore(
        &chain(&backups),
        &options(&target),
        &mut |p: &RestoreProgress| {
            if !planted && p.bytes_done > 0 {
                fs::write(target.join("someone_elses"), b"x").unwrap();
                fs::write(target.join("base/5/theirs"), b"y").unwrap();
                planted = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        },
    )
    .unwrap_err();
    assert!(matches!(error, RestoreError::Cancelled), "{error}");
    assert_eq!(fs::read(target.join("someone_elses")).unwrap(), b"x");
    assert_eq!(fs::read(target.join("base/5/theirs")).unwrap(), b"y");
    // Nothing of the restore's own is left.
    assert!(!target.join("PG_VERSION").exists());
    assert!(!target.join(MARKER).exists());
    assert!(!target.join("global").exists());
    assert!(!target.join("base/5/big").exists());
}

#[test]
fn an_unfinished_restore_is_marked_and_not_startable() {
    let dir = tempfile::tempdir().unwrap();
    let backups = big_backup(dir.path());
    let target = dir.path().join("data");
    let mut seen_midway = None;
    restore(
        &chain(&backups),
        &options(&target),
        &mut |p: &RestoreProgress| {
            if seen_midway.is_none() && p.bytes_done > 0 {
                seen_midway = Some((
                    target.join(MARKER).exists(),
                    target.join("PG_VERSION").exists(),
                    fs::read_to_string(target.join(MARKER)).unwrap_or_default(),
                ));
            }
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    let (marker, version, text) = seen_midway.expect("no poll while files were written");
    assert!(marker, "no marker while the restore runs");
    assert!(!version, "PG_VERSION written before the end");
    assert!(text.contains("backup F"), "{text}");
    // Finished: startable, no marker, and what restore decides itself.
    assert!(!target.join(MARKER).exists());
    assert_eq!(fs::read(target.join("PG_VERSION")).unwrap(), b"15\n");
    assert!(!target.join("standby.signal").exists());
    assert!(target.join("recovery.signal").exists());

    // A directory an interrupted restore left is named as such.
    let left = dir.path().join("left");
    fs::create_dir_all(left.join("base/5")).unwrap();
    fs::write(left.join(MARKER), text.as_bytes()).unwrap();
    let error = restore(&chain(&backups), &options(&left), &mut continue_always).unwrap_err();
    assert!(
        matches!(&error, RestoreError::InterruptedRestore { detail, .. } if detail.contains("backup F")),
        "{error}"
    );
    assert!(left.join(MARKER).exists() && left.join("base/5").is_dir());
}

#[test]
fn a_stored_file_replaced_by_a_link_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let backups = big_backup(dir.path());
    let outside = dir.path().join("outside");
    fs::write(&outside, blocks(&[1, 1, 1])).unwrap();
    let stored = disk_path(&backups[0], REL);
    fs::remove_file(&stored).unwrap();
    std::os::unix::fs::symlink(&outside, &stored).unwrap();
    let target = dir.path().join("data");
    let error = restore(&chain(&backups), &options(&target), &mut continue_always).unwrap_err();
    assert!(
        matches!(&error, RestoreError::NotRegularFile { path, .. } if path == REL),
        "{error}"
    );
    assert!(!target.exists());

    // A directory on the way replaced by a link: the same.
    fs::remove_file(&stored).unwrap();
    let base = backups[0].data_dir.join("base");
    let elsewhere = dir.path().join("elsewhere");
    fs::rename(&base, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &base).unwrap();
    fs::write(elsewhere.join("5/16384"), blocks(&[1, 1, 1])).unwrap();
    let error = restore(&chain(&backups), &options(&target), &mut continue_always).unwrap_err();
    assert!(
        matches!(error, RestoreError::NotRegularFile { .. }),
        "{error}"
    );
}

#[test]
fn settings_are_quoted_so_that_the_server_reads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut backups = big_backup(dir.path());
    let name = "nightly\\";
    backups[0].record.restore_points = vec![RestorePoint {
        name: name.into(),
        lsn: Lsn(0x100_0100),
        time_us: 0,
    }];
    let target = dir.path().join("data");
    let mut options = options(&target);
    options.recovery_target_name = Some(name.into());
    restore(&chain(&backups), &options, &mut continue_always).unwrap();
    let conf = fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.lines()
            .any(|l| l == "recovery_target_name = 'nightly\\\\'"),
        "{conf}"
    );

    // A name that no configuration file can hold is refused up front.
    backups[0].record.restore_points[0].name = "two\nlines".into();
    options.recovery_target_name = Some("two\nlines".into());
    let target = dir.path().join("data2");
    options.target = target.clone();
    let error = restore(&chain(&backups), &options, &mut continue_always).unwrap_err();
    assert!(
        matches!(error, RestoreError::UnwritableSetting { .. }),
        "{error}"
    );
    assert!(!target.exists());
}

#[test]
fn destinations_the_rules_forbid_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let backups = big_backup(dir.path());
    let repository = dir.path().join("repo");
    fs::create_dir_all(repository.join("backups")).unwrap();
    let mut options = options(&repository.join("backups/x"));
    options.rules = DestinationRules {
        forbidden: vec![ForbiddenPlace::new(&repository, "the repository")],
        confined_to: None,
    };
    let error = restore(&chain(&backups), &options, &mut continue_always).unwrap_err();
    assert!(
        matches!(
            error,
            RestoreError::Destination(DestinationError::Overlaps { .. })
        ),
        "{error}"
    );
    assert!(!repository.join("backups/x").exists());

    options.target = dir.path().join("ok");
    options.tablespace_mapping = vec![("16400".into(), repository.join("ts"))];
    let error = restore(&chain(&backups), &options, &mut continue_always).unwrap_err();
    assert!(matches!(error, RestoreError::Destination(_)), "{error}");
    assert!(!dir.path().join("ok").exists());
}

#[test]
fn a_backup_without_postgresql_auto_conf_restores() {
    let dir = tempfile::tempdir().unwrap();
    let full = record("F", None, Compression::None, 0x100_0000);
    let backups = vec![write_backup(
        dir.path(),
        full,
        vec![
            whole("PG_VERSION", b"15\n".to_vec()),
            whole("global/pg_control", vec![7; 8192]),
            wal("pg_wal/000000010000000000000001", vec![1; 4096]),
        ],
    )];
    let target = dir.path().join("data");
    restore(&chain(&backups), &options(&target), &mut continue_always).unwrap();
    let conf = fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("restore_command = '/bin/false'"), "{conf}");
}

#[test]
fn a_marker_that_is_a_link_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let backups = big_backup(dir.path());
    let secret = dir.path().join("secret");
    fs::write(&secret, b"restore of backup X but really a password\n").unwrap();
    let left = dir.path().join("left");
    fs::create_dir(&left).unwrap();
    std::os::unix::fs::symlink(&secret, left.join(MARKER)).unwrap();
    let error = restore(&chain(&backups), &options(&left), &mut continue_always).unwrap_err();
    assert!(
        matches!(&error, RestoreError::InterruptedRestore { detail, .. } if !detail.contains("password")),
        "{error}"
    );
}

#[test]
fn a_tree_is_never_made_through_a_link_on_its_path() {
    use blockbackup_core::safe_fs::TargetTree;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let elsewhere = root.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("link")).unwrap();
    // As if the path had been resolved before the link was put there.
    for target in [root.join("link/new"), root.join("link/a/b")] {
        assert!(TargetTree::create(&target).is_err(), "{target:?}");
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }
    // Under a file: refused; and what a tree made, it removes.
    fs::write(root.join("file"), b"x").unwrap();
    assert!(TargetTree::create(&root.join("file/x")).is_err());
    let made = TargetTree::create(&root.join("p/q/r")).unwrap();
    assert!(root.join("p/q/r").is_dir());
    made.remove_created().unwrap();
    assert!(!root.join("p").exists());
}
