//! Which backups retention removes ([`expire_plan`]) and which a deletion
//! removes ([`delete_plan`]): pure functions over the catalog, so that
//! their rules (never break a chain a kept backup needs, never touch a
//! RUNNING backup, never remove the last good copy) are tested without a
//! file system. The caller removes what they return, children first.

use std::collections::{BTreeMap, BTreeSet};

use super::catalog::{BackupMode, BackupRecord, BackupStatus};
use super::{utc_timestamp_name, validate_backup_id, Catalog, RepositoryError};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// What [`expire_plan`] decided for a backup it removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireAction {
    /// Removed by the retention rules.
    Deleted,
    /// Removed because taking it failed (status ERROR).
    DeletedFailed,
}

impl ExpireAction {
    /// The text `expire_backups()` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            ExpireAction::Deleted => "deleted",
            ExpireAction::DeletedFailed => "deleted (failed backup)",
        }
    }
}

/// The parent links among `records`, and each record's depth in its chain
/// (0 for a backup without a parent, or whose parent is unknown). Cycles
/// (only possible in a hand-edited repository) are cut where found.
fn chain_depths(records: &[BackupRecord]) -> BTreeMap<&str, usize> {
    let parents: BTreeMap<&str, Option<&str>> = records
        .iter()
        .map(|record| {
            (
                record.backup_id.as_str(),
                record.parent_backup_id.as_deref(),
            )
        })
        .collect();
    parents
        .keys()
        .map(|&id| {
            let mut depth = 0;
            let mut current = id;
            let mut seen = BTreeSet::from([id]);
            while let Some(&Some(parent)) = parents.get(current) {
                if !parents.contains_key(parent) || !seen.insert(parent) {
                    break;
                }
                depth += 1;
                current = parent;
            }
            (id, depth)
        })
        .collect()
}

/// `ids` ordered for removal: deepest first, so that a child always goes
/// before its parent and an interrupted run never leaves an orphan.
fn children_first<'a>(mut ids: Vec<&'a str>, depths: &BTreeMap<&str, usize>) -> Vec<&'a str> {
    ids.sort_by(|a, b| {
        let depth = |id: &str| depths.get(id).copied().unwrap_or(0);
        depth(b).cmp(&depth(a)).then(a.cmp(b))
    });
    ids
}

/// The oldest ancestor of `id` present in `by_id`.
fn chain_root<'a>(id: &'a str, by_id: &BTreeMap<&'a str, &'a BackupRecord>) -> &'a str {
    let mut current = id;
    let mut seen = BTreeSet::from([id]);
    while let Some(parent) = by_id
        .get(current)
        .and_then(|record| record.parent_backup_id.as_deref())
    {
        if !by_id.contains_key(parent) || !seen.insert(parent) {
            break;
        }
        current = parent;
    }
    current
}

/// `id` and all its ancestors present in `records`.
fn with_ancestors<'a>(
    id: &'a str,
    by_id: &BTreeMap<&'a str, &'a BackupRecord>,
    into: &mut BTreeSet<&'a str>,
) {
    let mut current = Some(id);
    while let Some(id) = current {
        if !into.insert(id) {
            break;
        }
        current = by_id
            .get(id)
            .and_then(|record| record.parent_backup_id.as_deref());
    }
}

/// Which backups retention removes, children first.
///
/// A backup is kept if any given rule keeps it:
/// * `keep_full` N keeps the newest N usable full backups and every backup
///   whose chain starts at one of them; it also keeps, for each database,
///   the newest N usable dumps of it, which stand alone the way full
///   backups do;
/// * `keep_days` D keeps usable backups that ended within D days of
///   `now_us`, and everything they depend on.
///
/// With neither rule given nothing is removed by age. Backups in ERROR are
/// removed in any case, RUNNING backups are never touched, and no backup
/// is removed while a kept (or RUNNING) backup depends on it: that rule
/// wins over all others, so retention can never make a backup unrestorable.
/// Two more always hold, whatever the rules say, because a rule applied to
/// a catalog that is wrong for the moment (a backup marked CORRUPT by a
/// transient problem, an entry that cannot be read) must not destroy the
/// last good copy: the newest full backup that did not fail, with every
/// backup built on it, is kept; and so is every backup whose chain reaches
/// a damaged entry (which is never removed by retention either).
pub fn expire_plan(
    catalog: &Catalog,
    keep_full: Option<u32>,
    keep_days: Option<u32>,
    now_us: i64,
) -> Vec<(String, ExpireAction)> {
    let records = &catalog.records;
    let by_id: BTreeMap<&str, &BackupRecord> = records
        .iter()
        .map(|record| (record.backup_id.as_str(), record))
        .collect();
    let not_failed = |record: &&BackupRecord| record.status != BackupStatus::Error;
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    if keep_full.is_none() && keep_days.is_none() {
        kept.extend(
            records
                .iter()
                .filter(not_failed)
                .map(|r| r.backup_id.as_str()),
        );
    }
    let mut roots = BTreeSet::new();
    if let Some(count) = keep_full {
        // Full backups form one group; dumps one group per database.
        let mut groups: BTreeMap<Option<&str>, Vec<&BackupRecord>> = BTreeMap::new();
        for record in records.iter().filter(|record| record.status.is_usable()) {
            match record.mode {
                BackupMode::Full => groups.entry(None).or_default().push(record),
                BackupMode::Dump => {
                    let database = record.dump.as_ref().map_or("", |d| d.database.as_str());
                    groups.entry(Some(database)).or_default().push(record);
                }
                BackupMode::Incremental => {}
            }
        }
        for (group, mut candidates) in groups {
            candidates.sort_by(|a, b| {
                (b.start_time_us, &b.backup_id).cmp(&(a.start_time_us, &a.backup_id))
            });
            let newest = candidates
                .into_iter()
                .take(count as usize)
                .map(|record| record.backup_id.as_str());
            match group {
                None => roots.extend(newest),
                Some(_) => kept.extend(newest),
            }
        }
    }
    // The newest full chain stays, whatever its status says today, and so
    // does the newest one that is usable.
    let newest_full = |usable_only: bool| {
        records
            .iter()
            .filter(not_failed)
            .filter(|record| record.mode == BackupMode::Full)
            .filter(|record| !usable_only || record.status.is_usable())
            .max_by_key(|record| (record.start_time_us, &record.backup_id))
    };
    for newest in [newest_full(false), newest_full(true)]
        .into_iter()
        .flatten()
    {
        roots.insert(newest.backup_id.as_str());
    }
    kept.extend(
        records
            .iter()
            .filter(not_failed)
            .map(|record| record.backup_id.as_str())
            .filter(|id| roots.contains(chain_root(id, &by_id))),
    );
    if let Some(days) = keep_days {
        let cutoff = now_us.saturating_sub(i64::from(days).saturating_mul(MICROS_PER_DAY));
        for record in records {
            let recent = record.end_time_us.is_some_and(|end| end >= cutoff);
            if record.status.is_usable() && recent {
                kept.insert(record.backup_id.as_str());
            }
        }
    }
    // What reaches a damaged entry cannot be judged: it stays. And since a
    // damaged entry's own parent is unknown, whatever it may be built on
    // stays too.
    for record in records.iter().filter(not_failed) {
        let root = chain_root(&record.backup_id, &by_id);
        let parent_of_root = by_id.get(root).and_then(|r| r.parent_backup_id.as_deref());
        if parent_of_root.is_some_and(|parent| catalog.damaged_entry(parent).is_some())
            || catalog
                .damaged
                .iter()
                .any(|entry| may_depend_on(&entry.backup_id, record))
        {
            kept.insert(record.backup_id.as_str());
        }
    }
    // Whatever a kept or running backup depends on stays.
    let mut protected = BTreeSet::new();
    for record in records {
        let id = record.backup_id.as_str();
        if kept.contains(id) || record.status == BackupStatus::Running {
            with_ancestors(id, &by_id, &mut protected);
        }
    }

    let doomed: Vec<&str> = records
        .iter()
        .map(|record| record.backup_id.as_str())
        .filter(|id| !protected.contains(id))
        .collect();
    let depths = chain_depths(records);
    children_first(doomed, &depths)
        .into_iter()
        .map(|id| {
            let action = match by_id.get(id).map(|record| record.status) {
                Some(BackupStatus::Error) => ExpireAction::DeletedFailed,
                _ => ExpireAction::Deleted,
            };
            (id.to_owned(), action)
        })
        .collect()
}

/// Whether the damaged entry `damaged` (whose record, and so whose
/// parent, is unknown) may be built on `record`: unless its id says it is a
/// full backup or a dump, any backup that started before it may be its
/// ancestor. An id not of our making may be anything.
fn may_depend_on(damaged: &str, record: &BackupRecord) -> bool {
    let stamp_len = "YYYYMMDD-HHMMSS".len();
    let (Some(stamp), Some(letter)) = (damaged.get(..stamp_len), damaged.as_bytes().get(stamp_len))
    else {
        return true;
    };
    let ours = stamp.bytes().enumerate().all(|(i, b)| {
        if i == 8 {
            b == b'-'
        } else {
            b.is_ascii_digit()
        }
    });
    if !ours {
        return true;
    }
    match letter {
        b'F' | b'D' => false,
        b'I' => utc_timestamp_name(record.start_time_us).as_str() <= stamp,
        _ => true,
    }
}

/// The backups `delete_backup(id, cascade)` removes, children first: `id`
/// itself and, with `cascade`, every backup that depends on it. Without
/// `cascade`, a backup that others depend on is refused.
///
/// The caller holds the repository lock and has marked backups that were
/// cut off as ERROR, so a RUNNING record here is a dump still being taken:
/// it is refused, and so is any plan that would remove one.
pub fn delete_plan(
    catalog: &Catalog,
    id: &str,
    cascade: bool,
) -> Result<Vec<String>, RepositoryError> {
    validate_backup_id(id)?;
    let records = &catalog.records;
    if catalog.record(id).is_none() && catalog.damaged_entry(id).is_none() {
        return Err(RepositoryError::BackupNotFound { id: id.to_owned() });
    }
    let mut doomed = BTreeSet::from([id]);
    // Grow the set until no record outside it names a parent inside it.
    loop {
        let before = doomed.len();
        for record in records {
            if let Some(parent) = record.parent_backup_id.as_deref() {
                if doomed.contains(parent) {
                    doomed.insert(record.backup_id.as_str());
                }
            }
        }
        if doomed.len() == before {
            break;
        }
    }
    if let Some(running) = records.iter().find(|record| {
        record.status == BackupStatus::Running && doomed.contains(record.backup_id.as_str())
    }) {
        return Err(RepositoryError::StillRunning {
            id: running.backup_id.clone(),
        });
    }
    for record in records
        .iter()
        .filter(|r| doomed.contains(r.backup_id.as_str()))
    {
        if let Some(entry) = catalog.damaged.iter().find(|entry| {
            !doomed.contains(entry.backup_id.as_str()) && may_depend_on(&entry.backup_id, record)
        }) {
            return Err(RepositoryError::MayBeParentOfDamaged {
                id: record.backup_id.clone(),
                damaged: entry.backup_id.clone(),
            });
        }
    }
    if !cascade && doomed.len() > 1 {
        let children = records
            .iter()
            .filter(|record| record.parent_backup_id.as_deref() == Some(id))
            .map(|record| record.backup_id.clone())
            .collect();
        return Err(RepositoryError::HasChildren {
            id: id.to_owned(),
            children,
        });
    }
    let depths = chain_depths(records);
    Ok(children_first(doomed.into_iter().collect(), &depths)
        .into_iter()
        .map(str::to_owned)
        .collect())
}
