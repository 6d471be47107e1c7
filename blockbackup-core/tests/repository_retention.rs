//! Retention and deletion plans: what `expire_backups` and
//! `delete_backup` remove, and in which order.

mod fixtures;

use blockbackup_core::lsn::Lsn;
use blockbackup_core::repository::catalog::{BackupMode, BackupRecord, BackupStatus, DumpDetails};
use blockbackup_core::repository::{
    delete_plan, expire_plan, Catalog, DamagedEntry, ExpireAction, RepositoryError,
};
use fixtures::cluster;

const DAY: i64 = 86_400_000_000;
const NOW: i64 = 1_000 * DAY;

/// A backup that started `age_days` before NOW and ended right after.
fn backup(id: &str, parent: Option<&str>, age_days: i64, status: BackupStatus) -> BackupRecord {
    let start = NOW - age_days * DAY;
    let mode = if parent.is_some() {
        BackupMode::Incremental
    } else {
        BackupMode::Full
    };
    let mut record = BackupRecord::begin(mode, cluster(1), Lsn(1), start);
    record.backup_id = id.to_owned();
    record.status = status;
    record.parent_backup_id = parent.map(str::to_owned);
    record.stop_lsn = Some(Lsn(2));
    record.end_time_us = Some(start + 1);
    record
}

use BackupStatus::{Corrupt, Done, Error, Ok as Okay, Running};

/// Two chains and a stray failed backup:
/// F1 (30 days) <- I1a (29) <- I1b (28); F2 (10) <- I2a (9) <- I2b (2).
fn history() -> Vec<BackupRecord> {
    vec![
        backup("F1", None, 30, Okay),
        backup("I1a", Some("F1"), 29, Done),
        backup("I1b", Some("I1a"), 28, Done),
        backup("E", None, 20, Error),
        backup("F2", None, 10, Done),
        backup("I2a", Some("F2"), 9, Done),
        backup("I2b", Some("I2a"), 2, Done),
    ]
}

fn catalog(records: Vec<BackupRecord>) -> Catalog {
    Catalog {
        records,
        damaged: Vec::new(),
    }
}

fn ids(plan: &[(String, ExpireAction)]) -> Vec<&str> {
    plan.iter().map(|(id, _)| id.as_str()).collect()
}

#[test]
fn without_rules_only_failed_backups_go() {
    let plan = expire_plan(&catalog(history()), None, None, NOW);
    assert_eq!(plan, vec![("E".to_owned(), ExpireAction::DeletedFailed)]);
    assert_eq!(
        ExpireAction::DeletedFailed.as_str(),
        "deleted (failed backup)"
    );
    assert_eq!(ExpireAction::Deleted.as_str(), "deleted");
}

#[test]
fn keep_full_keeps_the_newest_chains_whole() {
    let plan = expire_plan(&catalog(history()), Some(1), None, NOW);
    assert_eq!(ids(&plan), vec!["I1b", "I1a", "E", "F1"]);
    assert!(plan[..2]
        .iter()
        .all(|(_, action)| *action == ExpireAction::Deleted));
    assert_eq!(plan[2].1, ExpireAction::DeletedFailed);
    assert_eq!(
        expire_plan(&catalog(history()), Some(2), None, NOW),
        vec![("E".to_owned(), ExpireAction::DeletedFailed)]
    );
}

#[test]
fn keep_full_counts_only_usable_full_backups() {
    let mut records = history();
    records.push(backup("F3", None, 1, Corrupt));
    records.push(backup("I3", Some("F3"), 0, Done));
    // F3 is not usable: F2 is still the newest usable one. But F3 is the
    // newest full backup, and a status can be wrong for a while (damage
    // found by a validation that met a transient problem): its chain stays.
    let plan = expire_plan(&catalog(records.clone()), Some(1), None, NOW);
    assert_eq!(ids(&plan), vec!["I1b", "I1a", "E", "F1"]);
}

#[test]
fn the_only_full_backup_survives_keep_full_even_when_corrupt() {
    // The case that lost a repository's only full backup: validation
    // had marked it CORRUPT after a permission problem.
    let records = vec![
        backup("F", None, 3, Corrupt),
        backup("I", Some("F"), 2, Done),
        backup("E", Some("I"), 1, Error),
    ];
    for keep_full in [0, 1, 2] {
        let plan = expire_plan(&catalog(records.clone()), Some(keep_full), None, NOW);
        assert_eq!(ids(&plan), vec!["E"], "keep_full {keep_full}");
    }
    let plan = expire_plan(&catalog(records), None, Some(0), NOW);
    assert_eq!(ids(&plan), vec!["E"]);
}

/// The id a backup started `age_days` before NOW would have.
fn id_at(age_days: i64, letter: char) -> String {
    let seconds = (NOW - age_days * DAY) / 1_000_000;
    let days = seconds / 86_400;
    // Civil date of `days` since 1970-01-01, as the repository names ids.
    let (y, m, d) = blockbackup_core::civil_time::civil_from_days(days);
    let rem = seconds % 86_400;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}{letter}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn damaged(id: &str) -> DamagedEntry {
    DamagedEntry {
        backup_id: id.to_owned(),
        problem: "not valid JSON".to_owned(),
    }
}

#[test]
fn damaged_entries_and_what_depends_on_them_are_never_expired() {
    let mut records = history();
    records.push(backup("I9", Some("X"), 40, Done));
    records.push(backup("I10", Some("I9"), 39, Done));
    // "X" is no id of ours: it could be anything, so everything stays.
    let with_damage = Catalog {
        records: records.clone(),
        damaged: vec![damaged("X")],
    };
    let plan = expire_plan(&with_damage, Some(1), None, NOW);
    assert_eq!(ids(&plan), vec!["E"]);
    // Deleting the damaged entry itself is the user's call.
    let error = delete_plan(&with_damage, "X", false).unwrap_err();
    assert!(
        matches!(error, RepositoryError::HasChildren { .. }),
        "{error}"
    );
    assert_eq!(
        delete_plan(&with_damage, "X", true).unwrap(),
        vec!["I10", "I9", "X"]
    );
}

#[test]
fn what_a_damaged_incremental_may_be_built_on_stays() {
    // A damaged incremental started 25 days ago: F1's chain (30..28 days)
    // may be its ancestry, so neither retention nor a plain deletion
    // removes it; a damaged full backup needs no ancestor.
    let incremental = Catalog {
        records: history(),
        damaged: vec![damaged(&id_at(25, 'I'))],
    };
    let plan = expire_plan(&incremental, Some(1), None, NOW);
    assert_eq!(ids(&plan), vec!["E"]);
    let error = delete_plan(&incremental, "F1", true).unwrap_err();
    let damaged_id = id_at(25, 'I');
    assert!(
        matches!(&error, RepositoryError::MayBeParentOfDamaged { damaged, .. } if *damaged == damaged_id),
        "{error}"
    );
    // Newer backups than the damaged one cannot be its ancestors.
    assert_eq!(
        delete_plan(&incremental, "I2b", false).unwrap(),
        vec!["I2b"]
    );

    let full = Catalog {
        records: history(),
        damaged: vec![damaged(&id_at(25, 'F'))],
    };
    let plan = expire_plan(&full, Some(1), None, NOW);
    assert_eq!(ids(&plan), vec!["I1b", "I1a", "E", "F1"]);
}

#[test]
fn the_newest_usable_full_backup_survives_keep_days() {
    // F2's chain is CORRUPT (genuinely, say); F1 is the last restorable
    // full backup and outside the window: it stays.
    let mut records = history();
    for record in &mut records {
        if record.backup_id.ends_with('2') || record.backup_id.starts_with("I2") {
            record.status = Corrupt;
        }
    }
    let plan = expire_plan(&catalog(records), None, Some(1), NOW);
    assert_eq!(ids(&plan), vec!["E"]);
}

#[test]
fn keep_days_keeps_recent_backups_and_what_they_need() {
    // Only I2b ended within 5 days, and it needs F2 and I2a.
    let plan = expire_plan(&catalog(history()), None, Some(5), NOW);
    assert_eq!(ids(&plan), vec!["I1b", "I1a", "E", "F1"]);
    // 29.5 days keep I1b and so its whole chain.
    let plan = expire_plan(&catalog(history()), None, Some(29), NOW);
    assert_eq!(ids(&plan), vec!["E"]);
    let plan = expire_plan(&catalog(history()), None, Some(28), NOW);
    assert_eq!(ids(&plan), vec!["E"]);
    let plan = expire_plan(&catalog(history()), None, Some(27), NOW);
    assert_eq!(ids(&plan), vec!["I1b", "I1a", "E", "F1"]);
}

#[test]
fn either_rule_keeps() {
    let mut records = history();
    records.push(backup("F0", None, 60, Done));
    // keep_full 1 keeps chain 2, keep_days 29 keeps chain 1; F0 goes.
    let plan = expire_plan(&catalog(records.clone()), Some(1), Some(29), NOW);
    assert_eq!(ids(&plan), vec!["E", "F0"]);
}

#[test]
fn running_backups_and_their_parents_are_never_touched() {
    let mut records = history();
    records.push(backup("R", Some("I1b"), 0, Running));
    let plan = expire_plan(&catalog(records.clone()), Some(1), Some(1), NOW);
    assert_eq!(ids(&plan), vec!["E"]);
}

#[test]
fn failed_backups_go_even_when_recent() {
    let records = vec![backup("F", None, 0, Done), backup("E", Some("F"), 0, Error)];
    let plan = expire_plan(&catalog(records.clone()), Some(5), Some(5), NOW);
    assert_eq!(plan, vec![("E".to_owned(), ExpireAction::DeletedFailed)]);
}

#[test]
fn dumps_count_separately_under_keep_full() {
    let mut records = history();
    for (id, age) in [("D1", 40), ("D2", 3)] {
        let mut dump = backup(id, None, age, Done);
        dump.mode = BackupMode::Dump;
        records.push(dump);
    }
    let plan = expire_plan(&catalog(records.clone()), Some(1), None, NOW);
    assert_eq!(ids(&plan), vec!["I1b", "I1a", "D1", "E", "F1"]);
}

#[test]
fn deleting_requires_cascade_for_parents() {
    let records = history();
    assert_eq!(
        delete_plan(&catalog(records.clone()), "I2b", false).unwrap(),
        vec!["I2b"]
    );
    let error = delete_plan(&catalog(records.clone()), "I2a", false).unwrap_err();
    assert!(
        matches!(&error, RepositoryError::HasChildren { id, children } if id == "I2a" && children == &["I2b".to_owned()]),
        "{error}"
    );
    assert!(error.to_string().contains("cascade"), "{error}");
    assert_eq!(
        delete_plan(&catalog(records.clone()), "F1", true).unwrap(),
        vec!["I1b", "I1a", "F1"]
    );
    assert!(matches!(
        delete_plan(&catalog(records.clone()), "nope", true),
        Err(RepositoryError::BackupNotFound { .. })
    ));
    assert!(matches!(
        delete_plan(&catalog(records.clone()), "../F1", true),
        Err(RepositoryError::InvalidBackupId { .. })
    ));
}

#[test]
fn cascade_takes_every_branch_children_first() {
    let mut records = history();
    records.push(backup("I2c", Some("F2"), 1, Done));
    records.push(backup("I2d", Some("I2c"), 0, Done));
    let plan = delete_plan(&catalog(records.clone()), "F2", true).unwrap();
    assert_eq!(plan, vec!["I2b", "I2d", "I2a", "I2c", "F2"]);
}

fn dump(id: &str, database: &str, age_days: i64, status: BackupStatus) -> BackupRecord {
    let mut record = backup(id, None, age_days, status);
    record.mode = BackupMode::Dump;
    record.dump = Some(DumpDetails {
        database: database.to_owned(),
        format: "custom".to_owned(),
        jobs: 1,
        options: Vec::new(),
        output: "dump.custom".to_owned(),
        exit_code: Some(0),
        agent_id: 1,
    });
    record
}

#[test]
fn keep_full_keeps_the_newest_dumps_of_each_database() {
    let records = vec![
        dump("A1", "app", 9, Done),
        dump("A2", "app", 5, Done),
        dump("B1", "billing", 30, Done),
        dump("A3", "app", 1, Error),
    ];
    let plan = expire_plan(&catalog(records.clone()), Some(1), None, NOW);
    assert_eq!(ids(&plan), vec!["A1", "A3"]);
}

#[test]
fn a_running_dump_cannot_be_deleted() {
    let records = vec![dump("D", "app", 0, Running)];
    assert!(matches!(
        delete_plan(&catalog(records.clone()), "D", false),
        Err(RepositoryError::StillRunning { id }) if id == "D"
    ));
    assert!(expire_plan(&catalog(records.clone()), Some(0), Some(0), NOW).is_empty());
}
