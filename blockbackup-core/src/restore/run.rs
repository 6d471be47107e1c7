//! Restoring a backup chain into a data directory: the whole run, around
//! the rebuild of each file ([`crate::restore::rebuild`]).
//!
//! [`restore`] checks every destination first ([`crate::restore::target`]),
//! then writes the newest member's files (files only in older backups were
//! deleted since), creates the directories PostgreSQL needs at startup,
//! places tablespaces, configures archive recovery (which ends on a new
//! timeline, optionally at a target), and writes a `backup_manifest` so
//! that `pg_verifybackup` can check the result. It writes nothing outside
//! the target directory unless a tablespace mapping says where a
//! tablespace goes: by default tablespaces are restored in place
//! (`pg_tblspc/<oid>` as a real directory, which PostgreSQL runs with
//! `allow_in_place_tablespaces = on`, appended to `postgresql.auto.conf`:
//! without it, the end of recovery refuses directories in `pg_tblspc`),
//! so that a restore on the same host never touches the running cluster's
//! tablespaces. For the same reason the backed-up `tablespace_map` (which
//! names the original locations) is dropped, and one naming the new
//! locations is written when some tablespace is mapped; so are
//! `standby.signal` and `recovery.signal`, since the restore decides how
//! the copy recovers.
//!
//! # Writing so that nothing can be redirected or lost
//!
//! Every directory and file is created through handles of the directories
//! the restore made ([`TargetTree`]), never by path, so a directory swapped
//! for a symbolic link while the restore runs cannot send its files, or the
//! cleanup after a failure, anywhere else; that cleanup removes only what
//! this restore created.
//!
//! A restore that is cut off (the server stops, the machine fails) must not
//! leave a directory that looks usable. So the first file written is a
//! marker, [`MARKER`], naming the backup; the top-level `PG_VERSION`, without
//! which PostgreSQL refuses to start in a directory, is written last, once
//! everything else is durable; then the marker goes. A later restore into a
//! directory holding the marker says what it is instead of calling it merely
//! "not empty".
//!
//! Files are distributed over worker threads; the calling thread only
//! reports progress and relays cancellation.

use std::collections::{BTreeSet, HashSet};
use std::convert::Infallible;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backup::incremental_file::restored_path;
use crate::backup::manifest::{render_manifest, ManifestFile, WalRange};
use crate::backup::tablespace_map;
use crate::lsn::Lsn;
use crate::repository::catalog::{BackupMode, BackupRecord, StoredKind};
use crate::repository::{validate_backup_id, Repository};
use crate::restore::conf_file::{quote_value, setting_lines};
use crate::restore::rebuild::{
    chain_members, io_error, reconstruct_file, reconstruct_into, ChainIndex, ChainMember,
    CrcWriter, ReconstructedFile, RestoreError, Version,
};
use crate::restore::recovery_target::{
    self, check_target, choose_backup, ArchiveCommands, ArchiveContext, RecoveryArguments,
    RecoveryRequest,
};
use crate::restore::target::DestinationRules;
use crate::safe_fs::{open_regular_beneath, TargetTree};
use crate::safe_path::safe_relative_path;

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The new data directory: absent or empty.
    pub target: PathBuf,
    /// Where tablespaces go instead of in place under the target; the key
    /// is a tablespace's oid (as text) or its original location.
    pub tablespace_mapping: Vec<(String, PathBuf)>,
    /// Recover up to this LSN and promote; `None` recovers to the end of
    /// the backup's WAL only.
    pub recovery_target_lsn: Option<Lsn>,
    /// Recover up to this restore point of the backup and promote.
    pub recovery_target_name: Option<String>,
    /// The other targets and how to reach them (time, xid, 'immediate' or
    /// 'latest', timeline, inclusive).
    pub recovery: RecoveryExtras,
    /// The commands that fetch WAL from the repository's archive (the
    /// offline command's `archive-get %f %p`): with them, and an archive
    /// that holds WAL, recovery goes past the backup's own WAL; without
    /// them, a restore uses the backup's WAL only.
    pub archive_commands: Option<ArchiveCommands>,
    /// Worker threads (0 counts as 1).
    pub threads: usize,
    /// Where the target and mapped tablespaces may go.
    pub rules: DestinationRules,
}

/// The recovery arguments besides an LSN and a name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryExtras {
    /// Microseconds since the Unix epoch.
    pub time_us: Option<i64>,
    pub xid: Option<u32>,
    /// `immediate` or `latest`.
    pub target: Option<String>,
    pub inclusive: Option<bool>,
    /// `latest`, `current` or a number.
    pub timeline: Option<String>,
    /// Settings appended to the copy's `postgresql.auto.conf` after the
    /// restore's own, in order (see [`super::extra_settings`]).
    pub settings: Vec<(String, String)>,
}

impl RestoreOptions {
    /// The one recovery request the arguments make; checks the settings
    /// to add too, so that a bad one is refused before anything is read or
    /// written.
    pub fn recovery_request(&self) -> Result<RecoveryRequest, RestoreError> {
        super::extra_settings::check(&self.recovery.settings)?;
        RecoveryRequest::from_arguments(RecoveryArguments {
            lsn: self.recovery_target_lsn,
            name: self.recovery_target_name.as_deref(),
            time_us: self.recovery.time_us,
            xid: self.recovery.xid,
            target: self.recovery.target.as_deref(),
            inclusive: self.recovery.inclusive,
            timeline: self.recovery.timeline.as_deref(),
        })
    }
}

/// Progress of a restore, as given to the `poll` callback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreProgress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    /// Estimated until every reconstructed file's length is known.
    pub bytes_total: u64,
}

/// What a restore wrote from the backups (not counting the files it
/// generates: manifest, signal and tablespace map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreStats {
    pub files: u64,
    pub bytes: u64,
}

/// Directories PostgreSQL expects at startup even when empty (a backup has
/// no file in them).
const REQUIRED_DIRECTORIES: &[&str] = &[
    "pg_wal",
    "pg_wal/archive_status",
    "pg_replslot",
    "pg_stat_tmp",
    "pg_tblspc",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
    "pg_twophase",
    "pg_logical",
    "pg_logical/snapshots",
    "pg_logical/mappings",
    "pg_commit_ts",
    "pg_dynshmem",
    "pg_multixact",
    "pg_multixact/members",
    "pg_multixact/offsets",
    "pg_xact",
    "pg_stat",
];

/// Files of a backup that restore writes itself, or leaves out.
const MANIFEST: &str = "backup_manifest";
const TABLESPACE_MAP: &str = "tablespace_map";
const AUTO_CONF: &str = "postgresql.auto.conf";
const RECOVERY_SIGNAL: &str = "recovery.signal";
const STANDBY_SIGNAL: &str = "standby.signal";
/// Written last: PostgreSQL refuses a directory without it.
const PG_VERSION: &str = "PG_VERSION";
/// Present while a restore writes the directory.
pub const MARKER: &str = "pg_blockbackup_restore_in_progress";
/// How the marker's text begins.
const MARKER_PREFIX: &str = "restore of backup ";

/// How often, at least, `poll` is called.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One file to restore.
struct Task {
    path: String,
    mtime: i64,
    /// Expected size (exact for whole files).
    estimate: u64,
    /// The size to pad it to with zeros: a WAL segment of which the backup
    /// stored only the part it needs is restored whole (0: no padding).
    pad_to: u64,
}

/// Where a tablespace goes: `None` in place under the target.
struct PlacedTablespace {
    oid: u32,
    mapped: Option<PathBuf>,
}

/// Restores backup `backup_id` of `repository` with its ancestors: what
/// `restore_backup()` and the offline command both run. The chain's
/// backups are held for reading while the restore runs, so that no
/// deletion or expiry removes a file it still needs.
///
/// With no `backup_id`, the newest usable backup from which the recovery
/// target can be reached is restored. With `options.archive_commands`
/// and a WAL archive in the repository, recovery fetches from the archive.
pub fn restore_backup(
    repository: &Repository,
    backup_id: Option<&str>,
    options: &RestoreOptions,
    poll: &mut dyn FnMut(&RestoreProgress) -> ControlFlow<()>,
) -> Result<(String, RestoreStats), RestoreError> {
    let request = options.recovery_request()?;
    let archive = match &options.archive_commands {
        Some(commands) => ArchiveContext::load(repository, commands.clone())?,
        None => None,
    };
    let backup_id = match backup_id {
        Some(id) => id.to_owned(),
        None => {
            let catalog = repository.list()?;
            let records: Vec<_> = catalog
                .records
                .into_iter()
                .filter(|r| r.system_identifier == repository.system_identifier())
                .collect();
            choose_backup(&records, &request, archive.as_ref())?
                .backup_id
                .clone()
        }
    };
    validate_backup_id(&backup_id)?;
    let (records, contents, _reading) = repository.load_chain_for_restore(&backup_id)?;
    let chain = chain_members(repository, &records, &contents);
    let stats = restore_with_archive(&chain, options, archive.as_ref(), poll)?;
    Ok((backup_id, stats))
}

/// Restores the newest backup of `chain` (oldest first) into
/// `options.target`, calling `poll` on this thread at least every 100 ms;
/// `poll` returning `Break` cancels the restore. Nothing is written before
/// every check passed; on any later error, everything the restore created
/// is removed again.
pub fn restore(
    chain: &[ChainMember<'_>],
    options: &RestoreOptions,
    poll: &mut dyn FnMut(&RestoreProgress) -> ControlFlow<()>,
) -> Result<RestoreStats, RestoreError> {
    restore_with_archive(chain, options, None, poll)
}

fn restore_with_archive(
    chain: &[ChainMember<'_>],
    options: &RestoreOptions,
    archive: Option<&ArchiveContext>,
    poll: &mut dyn FnMut(&RestoreProgress) -> ControlFlow<()>,
) -> Result<RestoreStats, RestoreError> {
    let newest = check_chain(chain)?;
    let stop_lsn = newest
        .record
        .stop_lsn
        .ok_or_else(|| RestoreError::BadChain {
            reason: format!("backup {} has no stop LSN", newest.record.backup_id),
        })?;
    let request = options.recovery_request()?;
    check_target(newest.record, stop_lsn, &request, archive)?;
    let mut options = options.clone();
    options.target = options.rules.check("target_dir", &options.target)?;
    for (_, location) in &mut options.tablespace_mapping {
        *location = options
            .rules
            .check("a tablespace_mapping directory", location)?;
    }
    let index = ChainIndex::new(chain);
    let tasks = plan_files(&index)?;
    let tablespaces = plan_tablespaces(newest.record, &options)?;
    check_target_empty(&options.target)?;

    let mut trees = Trees::default();
    let result = restore_into(
        &index,
        &tasks,
        &tablespaces,
        &options,
        RecoveryPlan {
            request: &request,
            archive,
            stop_lsn,
        },
        &mut trees,
        poll,
    );
    if result.is_err() {
        // Best effort: the restore already failed, and a problem while
        // removing must not hide why.
        trees.remove_created();
    }
    result
}

fn check_chain<'c, 'a>(chain: &'c [ChainMember<'a>]) -> Result<&'c ChainMember<'a>, RestoreError> {
    let bad = |reason: String| Err(RestoreError::BadChain { reason });
    let Some(newest) = chain.last() else {
        return bad("the chain is empty".to_owned());
    };
    for (i, member) in chain.iter().enumerate() {
        let record = member.record;
        if !record.status.is_usable() {
            return bad(format!(
                "backup {} is in status {:?}; only DONE or OK backups can be restored",
                record.backup_id, record.status
            ));
        }
        let expected_mode = if i == 0 {
            BackupMode::Full
        } else {
            BackupMode::Incremental
        };
        if record.mode != expected_mode {
            return bad(format!(
                "backup {} is {:?}, but position {i} of a chain must be {:?}",
                record.backup_id, record.mode, expected_mode
            ));
        }
        if i > 0
            && record.parent_backup_id.as_deref() != Some(chain[i - 1].record.backup_id.as_str())
        {
            return bad(format!(
                "backup {} has parent {:?}, not {}",
                record.backup_id,
                record.parent_backup_id,
                chain[i - 1].record.backup_id
            ));
        }
    }
    Ok(newest)
}

/// The newest member's files under their restored names.
fn plan_files(index: &ChainIndex<'_, '_>) -> Result<Vec<Task>, RestoreError> {
    let chain = index.chain;
    let newest = chain.len() - 1;
    let backup_id = &chain[newest].record.backup_id;
    let mut seen = HashSet::new();
    let mut tasks = Vec::new();
    for stored in &chain[newest].contents.files {
        let path = match stored.kind {
            StoredKind::Incremental => restored_path(&stored.path).ok_or_else(|| RestoreError::BadChain {
                reason: format!("backup {backup_id} lists {} as incremental, but that is not an incremental file name", stored.path),
            })?,
            StoredKind::Whole | StoredKind::Wal => stored.path.clone(),
        };
        if safe_relative_path(&path).is_none() || path == MARKER {
            return Err(RestoreError::BadChain {
                reason: format!("backup {backup_id} lists the unsafe path {:?}", stored.path),
            });
        }
        if [MANIFEST, TABLESPACE_MAP, RECOVERY_SIGNAL, STANDBY_SIGNAL].contains(&path.as_str()) {
            continue;
        }
        if !seen.insert(path.clone()) {
            return Err(RestoreError::BadChain {
                reason: format!("backup {backup_id} stores {path} twice"),
            });
        }
        let estimate = match stored.kind {
            StoredKind::Incremental => (0..newest)
                .rev()
                .map(|m| index.version(m, &path, &stored.path))
                .find_map(|version| match version {
                    Version::Whole(whole) => Some(Some(whole.size)),
                    Version::Absent => Some(None),
                    Version::Incremental(_) => None,
                })
                .flatten()
                .unwrap_or(stored.size),
            StoredKind::Whole | StoredKind::Wal => stored.size,
        };
        let segment_size = u64::from(chain[newest].record.wal_segment_size);
        let pad_to = if stored.kind == StoredKind::Wal && stored.size < segment_size {
            segment_size
        } else {
            0
        };
        tasks.push(Task {
            path,
            mtime: stored.mtime,
            estimate: estimate.max(pad_to),
            pad_to,
        });
    }
    if !seen.contains(PG_VERSION) {
        return Err(RestoreError::BadChain {
            reason: format!("backup {backup_id} holds no {PG_VERSION}"),
        });
    }
    // Largest first, so that no thread is left with a big file at the end.
    tasks.sort_by_key(|task| std::cmp::Reverse(task.estimate));
    Ok(tasks)
}

fn plan_tablespaces(
    record: &BackupRecord,
    options: &RestoreOptions,
) -> Result<Vec<PlacedTablespace>, RestoreError> {
    let mut used = vec![false; options.tablespace_mapping.len()];
    let mut placed = Vec::new();
    for tablespace in &record.tablespaces {
        let oid_key = tablespace.oid.to_string();
        let mut mapped: Option<(&str, &PathBuf)> = None;
        for (i, (key, location)) in options.tablespace_mapping.iter().enumerate() {
            if *key != oid_key && *key != tablespace.location {
                continue;
            }
            used[i] = true;
            if let Some((_, previous)) = mapped {
                if previous != location {
                    return Err(RestoreError::BadTablespaceMapping {
                        key: key.clone(),
                        location: location.clone(),
                        reason: format!(
                            "tablespace {} is also mapped to {}",
                            tablespace.oid,
                            previous.display()
                        ),
                    });
                }
            }
            mapped = Some((key, location));
        }
        if let Some((key, location)) = mapped {
            let bad = |reason: String| RestoreError::BadTablespaceMapping {
                key: key.to_owned(),
                location: location.clone(),
                reason,
            };
            if overlaps(location, &options.target) {
                return Err(bad(format!(
                    "the new location must be outside the restore target {} and not contain it",
                    options.target.display()
                )));
            }
            if let Some(other) = placed
                .iter()
                .filter_map(|p: &PlacedTablespace| p.mapped.as_ref())
                .find(|other| overlaps(location, other))
            {
                return Err(bad(format!(
                    "it overlaps {}, where another tablespace goes",
                    other.display()
                )));
            }
            if !is_absent_or_empty_dir(location).map_err(io_error(location))? {
                return Err(bad(
                    "the new location exists and is not an empty directory".to_owned()
                ));
            }
        }
        placed.push(PlacedTablespace {
            oid: tablespace.oid,
            mapped: mapped.map(|(_, location)| location.clone()),
        });
    }
    if let Some(i) = used.iter().position(|&u| !u) {
        let (key, location) = &options.tablespace_mapping[i];
        let known: Vec<String> = record
            .tablespaces
            .iter()
            .map(|t| format!("{} ({})", t.oid, t.location))
            .collect();
        return Err(RestoreError::BadTablespaceMapping {
            key: key.clone(),
            location: location.clone(),
            reason: format!(
                "backup {} has no tablespace with that oid or location; its tablespaces: {}",
                record.backup_id,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                },
            ),
        });
    }
    Ok(placed)
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn is_absent_or_empty_dir(path: &Path) -> io::Result<bool> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            Ok(std::fs::symlink_metadata(path).is_err())
        }
        Err(error) if error.kind() == io::ErrorKind::NotADirectory => Ok(false),
        Err(error) => Err(error),
    }
}

fn check_target_empty(target: &Path) -> Result<(), RestoreError> {
    if is_absent_or_empty_dir(target).map_err(io_error(target))? {
        return Ok(());
    }
    if std::fs::symlink_metadata(target.join(MARKER)).is_ok() {
        return Err(RestoreError::InterruptedRestore {
            path: target.to_owned(),
            detail: marker_summary(target),
        });
    }
    Err(RestoreError::TargetNotEmpty {
        path: target.to_owned(),
    })
}

/// The first line of the marker an interrupted restore left, if it is
/// one: a small regular file, not a link, in our own words. Anything else
/// is not echoed (the directory may be someone else's).
fn marker_summary(target: &Path) -> String {
    const UNREADABLE: &str = "its marker could not be read";
    let Ok(file) = open_regular_beneath(target, Path::new(MARKER)) else {
        return UNREADABLE.to_owned();
    };
    let mut text = String::new();
    if file.take(1024).read_to_string(&mut text).is_err() {
        return UNREADABLE.to_owned();
    }
    match text.lines().next() {
        Some(line) if line.starts_with(MARKER_PREFIX) => line.to_owned(),
        _ => UNREADABLE.to_owned(),
    }
}

/// The directory trees a restore writes: the target and each mapped
/// tablespace's location.
#[derive(Default)]
struct Trees {
    target: Option<TargetTree>,
    mapped: Vec<(u32, TargetTree)>,
}

impl Trees {
    fn target(&self) -> &TargetTree {
        self.target
            .as_ref()
            .unwrap_or_else(|| unreachable!("the target tree is created first"))
    }

    /// The tree and relative path a restored path is written to: files of
    /// a mapped tablespace (`pg_tblspc/<oid>/...`) go to its location.
    fn locate<'p>(&self, path: &'p str) -> (&TargetTree, &'p Path) {
        if let Some(rest) = path.strip_prefix("pg_tblspc/") {
            if let Some((oid, inside)) = rest.split_once('/') {
                if let Some((_, tree)) = self
                    .mapped
                    .iter()
                    .find(|(mapped, _)| mapped.to_string() == oid)
                {
                    return (tree, Path::new(inside));
                }
            }
        }
        (self.target(), Path::new(path))
    }

    /// Creates the restored directory `dir` in the tree it belongs to.
    fn make_dir(&mut self, dir: &str) -> Result<(), RestoreError> {
        let mapped_oid = dir
            .strip_prefix("pg_tblspc/")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(oid, inside)| oid.parse::<u32>().ok().map(|oid| (oid, inside)));
        let (tree, relative) = match mapped_oid.and_then(|(oid, inside)| {
            self.mapped
                .iter_mut()
                .find(|(mapped, _)| *mapped == oid)
                .map(|(_, tree)| (tree, inside))
        }) {
            Some((tree, inside)) => (tree, Path::new(inside)),
            None => (
                self.target
                    .as_mut()
                    .unwrap_or_else(|| unreachable!("the target tree is created first")),
                Path::new(dir),
            ),
        };
        tree.make_dir(relative).map_err(|source| RestoreError::Io {
            path: tree.root().join(relative),
            source,
        })
    }

    fn is_mapped_link(&self, dir: &str) -> bool {
        dir.strip_prefix("pg_tblspc/")
            .is_some_and(|oid| self.mapped.iter().any(|(m, _)| m.to_string() == oid))
    }

    fn sync(&self) -> io::Result<()> {
        for (_, tree) in &self.mapped {
            tree.sync_directories()?;
        }
        if let Some(target) = &self.target {
            target.sync_directories()?;
        }
        Ok(())
    }

    fn remove_created(self) {
        for (_, tree) in self.mapped {
            let _ = tree.remove_created();
        }
        if let Some(target) = self.target {
            let _ = target.remove_created();
        }
    }
}

/// Shared between the worker threads and the polling thread.
struct Shared<'t> {
    tasks: &'t [Task],
    /// Files restored after the workers (PG_VERSION), counted in the total.
    later_files: u64,
    next: AtomicUsize,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    cancel: AtomicBool,
    error: Mutex<Option<RestoreError>>,
    written: Mutex<Vec<ManifestFile>>,
}

impl Shared<'_> {
    fn progress(&self) -> RestoreProgress {
        RestoreProgress {
            files_done: self.files_done.load(Ordering::Relaxed),
            files_total: self.tasks.len() as u64 + self.later_files,
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
        }
    }

    fn fail(&self, error: RestoreError) {
        if !self.cancel.load(Ordering::SeqCst) {
            let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(error);
        }
        self.cancel.store(true, Ordering::SeqCst);
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Where recovery of the restored directory stops, and how it gets there.
struct RecoveryPlan<'a> {
    request: &'a RecoveryRequest,
    archive: Option<&'a ArchiveContext>,
    /// Where the newest backup becomes consistent.
    stop_lsn: Lsn,
}

fn restore_into(
    index: &ChainIndex<'_, '_>,
    tasks: &[Task],
    tablespaces: &[PlacedTablespace],
    options: &RestoreOptions,
    recovery: RecoveryPlan<'_>,
    trees: &mut Trees,
    poll: &mut dyn FnMut(&RestoreProgress) -> ControlFlow<()>,
) -> Result<RestoreStats, RestoreError> {
    let target = options.target.as_path();
    let stop_lsn = recovery.stop_lsn;
    let newest = &index.chain[index.chain.len() - 1];
    let tree_error = |path: &Path| {
        let path = target.join(path);
        move |source| RestoreError::Io { path, source }
    };

    // The target, with the marker in it before anything else.
    let tree = TargetTree::create(target).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            RestoreError::TargetNotEmpty {
                path: target.to_owned(),
            }
        } else {
            RestoreError::Io {
                path: target.to_owned(),
                source,
            }
        }
    })?;
    trees.target = Some(tree);
    let marker = format!(
        "{MARKER_PREFIX}{} started at {} (Unix time) by process {}; it did not finish\n",
        newest.record.backup_id,
        unix_now(),
        std::process::id()
    );
    write_new_file(trees.target(), MARKER, marker.as_bytes(), 0)?;
    trees
        .target()
        .sync_directories()
        .map_err(io_error(target))?;

    // Directories: mapped tablespaces with their links, then every
    // directory a file or PostgreSQL needs, parents first.
    trees
        .target
        .as_mut()
        .unwrap_or_else(|| unreachable!("set above"))
        .make_dir(Path::new("pg_tblspc"))
        .map_err(tree_error(Path::new("pg_tblspc")))?;
    let mut dirs: BTreeSet<String> = REQUIRED_DIRECTORIES
        .iter()
        .map(|d| (*d).to_owned())
        .collect();
    for tablespace in tablespaces {
        match &tablespace.mapped {
            Some(location) => {
                let tree = TargetTree::create(location).map_err(io_error(location))?;
                let link = format!("pg_tblspc/{}", tablespace.oid);
                trees.mapped.push((tablespace.oid, tree));
                trees
                    .target()
                    .symlink(location, Path::new(&link))
                    .map_err(tree_error(Path::new(&link)))?;
            }
            None => {
                dirs.insert(format!("pg_tblspc/{}", tablespace.oid));
            }
        }
    }
    for task in tasks {
        let mut path = task.path.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            dirs.insert(parent.to_owned());
            path = parent;
        }
    }
    let any_in_place = dirs.iter().any(|dir| {
        dir.strip_prefix("pg_tblspc/")
            .is_some_and(|oid| !oid.contains('/') && !trees.is_mapped_link(dir))
    });
    for dir in &dirs {
        if !trees.is_mapped_link(dir) && dir != "pg_tblspc" {
            trees.make_dir(dir)?;
        }
    }

    // Files, on worker threads; the top-level PG_VERSION waits.
    let (version_task, tasks): (Vec<&Task>, Vec<&Task>) =
        tasks.iter().partition(|task| task.path == PG_VERSION);
    let worker_tasks: Vec<Task> = tasks
        .iter()
        .map(|task| Task {
            path: task.path.clone(),
            mtime: task.mtime,
            estimate: task.estimate,
            pad_to: task.pad_to,
        })
        .collect();
    let shared = Shared {
        tasks: &worker_tasks,
        later_files: version_task.len() as u64,
        next: AtomicUsize::new(0),
        files_done: AtomicU64::new(0),
        bytes_done: AtomicU64::new(0),
        bytes_total: AtomicU64::new(worker_tasks.iter().map(|t| t.estimate).sum()),
        cancel: AtomicBool::new(false),
        error: Mutex::new(None),
        written: Mutex::new(Vec::with_capacity(worker_tasks.len() + 1)),
    };
    let threads = options.threads.clamp(1, worker_tasks.len().max(1));
    let mut cancelled = false;
    let trees_ref: &Trees = trees;
    std::thread::scope(|scope| {
        // Never sent on: it disconnects when the last worker exits.
        let (done_tx, done_rx) = mpsc::channel::<Infallible>();
        for _ in 0..threads {
            let done_tx = done_tx.clone();
            let shared = &shared;
            scope.spawn(move || worker(index, trees_ref, shared, &done_tx));
        }
        drop(done_tx);
        loop {
            let finished = matches!(
                done_rx.recv_timeout(POLL_INTERVAL),
                Err(mpsc::RecvTimeoutError::Disconnected)
            );
            if !cancelled && poll(&shared.progress()).is_break() {
                cancelled = true;
                shared.cancel.store(true, Ordering::SeqCst);
            }
            if finished {
                break;
            }
        }
    });
    if cancelled {
        return Err(RestoreError::Cancelled);
    }
    let mut final_progress = shared.progress();
    if let Some(error) = shared.error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(error);
    }
    let mut manifest = shared
        .written
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let mut stats = RestoreStats {
        files: worker_tasks.len() as u64,
        bytes: shared.bytes_done.load(Ordering::Relaxed),
    };

    // PG_VERSION, rebuilt (and checked) now, written last.
    let mut version = Vec::new();
    let version_file = reconstruct_file(index.chain, PG_VERSION, &mut version)?;
    let version_mtime = version_task.first().map_or(0, |task| task.mtime);
    manifest.push(ManifestFile {
        path: PG_VERSION.to_owned(),
        size: version_file.size,
        mtime: version_mtime,
        crc32c: version_file.crc32c,
    });
    stats.files += 1;
    stats.bytes += version_file.size;
    final_progress.files_done += 1;
    final_progress.bytes_done += version_file.size;
    final_progress.bytes_total += version_file.size;

    // Files restore writes itself.
    let now = unix_now();
    let tree = trees.target();
    let mapped: Vec<(u32, &Path)> = tablespaces
        .iter()
        .filter_map(|t| t.mapped.as_deref().map(|location| (t.oid, location)))
        .collect();
    if !mapped.is_empty() {
        let content = tablespace_map::render(&mapped);
        manifest.push(write_new_file(tree, TABLESPACE_MAP, &content, now)?);
    }
    let settings = recovery_settings(
        any_in_place,
        recovery.request,
        recovery.archive,
        &options.recovery.settings,
    )?;
    // Always archive recovery, ending on a new timeline: the restored
    // cluster's WAL after the backup differs from the original's WAL at
    // the same LSNs, and only a timeline switch tells the two apart, so
    // that no incremental backup of one is ever built on a backup of the
    // other. The WAL is in pg_wal; a failing restore_command makes
    // PostgreSQL read it from there.
    manifest.push(write_new_file(tree, RECOVERY_SIGNAL, b"", now)?);
    let had_auto_conf = manifest.iter().any(|file| file.path == AUTO_CONF);
    manifest.retain(|file| file.path != AUTO_CONF);
    manifest.push(append_settings(tree, had_auto_conf, &settings, now)?);
    manifest.sort_by(|a, b| a.path.cmp(&b.path));
    let wal = [WalRange {
        timeline: newest.record.timeline,
        start_lsn: newest.record.start_lsn,
        end_lsn: stop_lsn,
    }];
    write_new_file(tree, MANIFEST, &render_manifest(&manifest, &wal), now)?;
    trees.sync().map_err(io_error(target))?;

    // The directory becomes startable, then stops looking interrupted.
    write_new_file(tree, PG_VERSION, &version, version_mtime)?;
    tree.sync_directories().map_err(io_error(target))?;
    tree.remove_created_file(Path::new(MARKER))
        .map_err(io_error(&target.join(MARKER)))?;
    tree.sync_directories().map_err(io_error(target))?;
    // Done: a request to cancel now comes too late to matter.
    let _ = poll(&final_progress);
    Ok(stats)
}

/// The settings restore appends to `postgresql.auto.conf`: in-place
/// tablespaces, and archive recovery to the requested target, then promote;
/// then the caller's `extra` (checked already).
fn recovery_settings(
    any_in_place: bool,
    request: &RecoveryRequest,
    archive: Option<&ArchiveContext>,
    extra: &[(String, String)],
) -> Result<String, RestoreError> {
    let mut settings: Vec<(&str, String)> = Vec::new();
    if any_in_place {
        // Recovery refuses directories in pg_tblspc without it.
        settings.push(("allow_in_place_tablespaces", "on".to_owned()));
    }
    settings.extend(recovery_target::recovery_settings(request, archive));
    settings.extend(extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    setting_lines(&pairs).ok_or_else(|| RestoreError::UnwritableSetting {
        what: "a recovery setting".to_owned(),
        value: settings
            .iter()
            .find(|(_, v)| quote_value(v).is_none())
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
    })
}

fn worker(
    index: &ChainIndex<'_, '_>,
    trees: &Trees,
    shared: &Shared<'_>,
    _alive: &mpsc::Sender<Infallible>,
) {
    while !shared.cancel.load(Ordering::SeqCst) {
        let i = shared.next.fetch_add(1, Ordering::SeqCst);
        let Some(task) = shared.tasks.get(i) else {
            return;
        };
        match restore_file(index, trees, task, shared) {
            Ok(written) => {
                shared.files_done.fetch_add(1, Ordering::Relaxed);
                shared
                    .bytes_total
                    .fetch_add(written.size.max(task.pad_to), Ordering::Relaxed);
                shared
                    .bytes_total
                    .fetch_sub(task.estimate, Ordering::Relaxed);
                if !task.path.starts_with("pg_wal/") {
                    let mut manifest = shared.written.lock().unwrap_or_else(|e| e.into_inner());
                    manifest.push(ManifestFile {
                        path: task.path.clone(),
                        size: written.size,
                        mtime: task.mtime,
                        crc32c: written.crc32c,
                    });
                }
            }
            Err(error) => {
                shared.fail(error);
                return;
            }
        }
    }
}

fn restore_file(
    index: &ChainIndex<'_, '_>,
    trees: &Trees,
    task: &Task,
    shared: &Shared<'_>,
) -> Result<ReconstructedFile, RestoreError> {
    let (tree, relative) = trees.locate(&task.path);
    let path = tree.root().join(relative);
    let file = tree.create_file(relative).map_err(io_error(&path))?;
    let counted = Counted { file, shared };
    let mut out = CrcWriter::new(BufWriter::with_capacity(256 * 1024, counted));
    reconstruct_into(index, &task.path, &mut out, &path)?;
    let result = out.result();
    let mut buffered = out.inner;
    if result.size < task.pad_to {
        let zeros = vec![0u8; 64 * 1024];
        let mut left = task.pad_to - result.size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            buffered.write_all(&zeros[..n]).map_err(io_error(&path))?;
            left -= n as u64;
        }
    }
    let counted = buffered
        .into_inner()
        .map_err(|e| io_error(&path)(e.into_error()))?;
    counted.file.sync_all().map_err(io_error(&path))?;
    Ok(result)
}

/// A restored file being written: counts progress, and stops the copy
/// when the restore is cancelled.
struct Counted<'s, 't> {
    file: std::fs::File,
    shared: &'s Shared<'t>,
}

impl Write for Counted<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.shared.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("restore cancelled"));
        }
        let n = self.file.write(buf)?;
        self.shared
            .bytes_done
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn write_new_file(
    tree: &TargetTree,
    name: &str,
    content: &[u8],
    mtime: i64,
) -> Result<ManifestFile, RestoreError> {
    let path = tree.root().join(name);
    let mut file = tree.create_file(Path::new(name)).map_err(io_error(&path))?;
    file.write_all(content)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&path))?;
    Ok(ManifestFile {
        path: name.to_owned(),
        size: content.len() as u64,
        mtime,
        crc32c: crc32c::crc32c(content),
    })
}

/// Appends `settings` to `postgresql.auto.conf` (creating it if the
/// backup had none), where they override `postgresql.conf`: settings for
/// in-place tablespaces and for recovery.
fn append_settings(
    tree: &TargetTree,
    exists: bool,
    settings: &str,
    now: i64,
) -> Result<ManifestFile, RestoreError> {
    let path = tree.root().join(AUTO_CONF);
    let relative = Path::new(AUTO_CONF);
    let mut content = Vec::new();
    let mut file = if exists {
        let mut file = tree.open_created_file(relative).map_err(io_error(&path))?;
        file.read_to_end(&mut content).map_err(io_error(&path))?;
        file
    } else {
        tree.create_file(relative).map_err(io_error(&path))?
    };
    let mut addition = Vec::new();
    if content.last().is_some_and(|&b| b != b'\n') {
        addition.push(b'\n');
    }
    addition.extend_from_slice(b"# added by pg_blockbackup restore\n");
    addition.extend_from_slice(settings.as_bytes());
    file.seek(SeekFrom::End(0))
        .and_then(|_| file.write_all(&addition))
        .and_then(|()| file.sync_all())
        .map_err(io_error(&path))?;
    content.extend_from_slice(&addition);
    Ok(ManifestFile {
        path: AUTO_CONF.to_owned(),
        size: content.len() as u64,
        mtime: now,
        crc32c: crc32c::crc32c(&content),
    })
}
