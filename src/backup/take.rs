//! `take_backup`: one call that starts a backup on the server, copies the
//! data directory (whole files, or only the blocks changed since the
//! parent), stops the backup, adds the WAL from start to stop so that the
//! backup restores on its own, and records it in the catalog.
//!
//! A backup is RUNNING in the catalog from its start, so a crash or a
//! killed session leaves a trace that the next call marks ERROR; it
//! becomes DONE only after its contents and manifest are durable. A backup
//! that is not DONE or OK is never used as a parent.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blockbackup_core::backup::copy::{
    copy_files, CopyOptions, CopyProgress, CopyStats, CopyTask, PageChecks,
};
use blockbackup_core::backup::incremental_file::restored_path;
use blockbackup_core::backup::manifest::{render_manifest, ManifestFile, WalRange};
use blockbackup_core::backup::page_checksum::PageChecksumFailure;
use blockbackup_core::backup::plan::{choose_method, walk_data_directory, FileMethod, SourceFile};
use blockbackup_core::backup::tablespace_map;
use blockbackup_core::civil_time::unix_now_us as now_us;
use blockbackup_core::repository::catalog::{
    BackupContents, BackupMode, BackupRecord, BackupStatus, Compression, StoredFile, StoredKind,
};
use blockbackup_core::repository::{Repository, RepositoryError};
use blockbackup_core::{BlockMap, Lsn, TimelineSpan};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::pg_backup_functions;
use super::progress::{Phase, ProgressReporter};
use super::repository_access;
use super::wal_copy::WalCopy;
use super::wal_hold::WalHold;
use crate::server_paths::{self, data_directory};
use crate::summary_access::{self, wait_until_summarized_while};
use crate::{errors, settings, shared_state, timeline};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestedMode {
    Auto,
    Full,
    Incremental,
}

pub struct TakeRequest {
    pub mode: RequestedMode,
    pub label: Option<String>,
    pub compression: Compression,
    pub level: i32,
    pub threads: usize,
}

/// How long a backup waits for the summarizer to reach its start LSN.
const SUMMARY_WAIT: Duration = Duration::from_secs(300);
const PG_CONTROL: &str = "global/pg_control";

pub fn take_backup(request: TakeRequest) -> BackupRecord {
    let repo = repository_access::open_for_writing();
    let lock = repo.lock().unwrap_or_else(|e| errors::repository(e));
    repository_access::mark_interrupted(&repo, &lock);
    let history = timeline::history_of(timeline::current_timeline());
    let parent = match request.mode {
        RequestedMode::Full => None,
        _ => repository_access::newest_usable_parent(&repo, &history).and_then(|record| {
            let contents = repo.read_contents(&record.backup_id).ok()?;
            Some((record, contents))
        }),
    };
    if request.mode == RequestedMode::Incremental && parent.is_none() {
        errors::no_parent_backup();
    }

    let start_time_us = now_us();
    let label = request
        .label
        .clone()
        .unwrap_or_else(|| "pg_blockbackup".to_string());
    let start_lsn = pg_backup_functions::start(&label, true);
    let mut guard = AbortOnError::new();
    let wal_hold = WalHold::reserve(start_lsn);
    let timeline = timeline::current_timeline();

    // Until the copy starts (and with it the WAL copy that lets the slot
    // move on), make sure the slot is not invalidated meanwhile.
    let mut watch_wal = || {
        if let Some(held) = wal_hold.at_risk() {
            errors::backup_needs_more_wal(held);
        }
    };
    let changes = parent.as_ref().and_then(|(record, _)| {
        changes_since(
            record,
            start_lsn,
            request.mode == RequestedMode::Incremental,
            &mut watch_wal,
        )
    });
    let (mode, parent) = match changes {
        Some(_) => (BackupMode::Incremental, parent),
        None => (BackupMode::Full, None),
    };
    let mut record = BackupRecord::begin(
        mode,
        pg_backup_functions::cluster_facts(timeline),
        start_lsn,
        start_time_us,
    );
    record.parent_backup_id = parent.as_ref().map(|(p, _)| p.backup_id.clone());
    record.label = request.label.clone();
    record.compression = request.compression;
    record.compression_level = Some(request.level);
    repo.create_backup(&mut record)
        .unwrap_or_else(|e| errors::repository(e));
    let backup_id = record.backup_id.clone();
    guard.record = Some((repo.clone(), record.clone()));

    let progress = shared_state::backup_progress().claim(&backup_id);
    // As pg_basebackup: with data checksums, every relation page read is
    // checked, except those the backup's own WAL will rewrite.
    let page_checks = unsafe { pg_sys::DataChecksumsEnabled() }.then_some(PageChecks {
        start_lsn,
        block_size: pg_sys::BLCKSZ,
        segment_blocks: pg_sys::RELSEG_SIZE,
    });
    let copy_options = CopyOptions {
        storage: repo.storage().clone(),
        prefix: repo.data_prefix(&backup_id),
        replace: false,
        compression: request.compression,
        level: request.level,
        threads: request.threads,
        page_checks,
    };
    let mut copier = Copier {
        options: copy_options,
        progress: &progress,
        wal_hold: &wal_hold,
        wal: Some(WalCopy::new(timeline, start_lsn)),
        stored: Vec::new(),
        stats: CopyStats::default(),
    };

    progress.phase(Phase::Copying);
    let parent_paths = parent
        .as_ref()
        .map(|(_, contents)| contents_paths(contents));
    let (tasks, control_file) = plan_copy(&repo, changes.as_ref(), parent_paths.as_ref());
    if let Some(held) = wal_hold.at_risk() {
        errors::backup_needs_more_wal(held);
    }
    copier.run(tasks);
    // pg_control last, as pg_basebackup does: the backup_label, not
    // pg_control, tells recovery where to start.
    copier.run(control_file);

    progress.phase(Phase::Stopping);
    let stop = pg_backup_functions::stop(false);
    guard.backup_stopped = true;
    if let Some(wal) = copier.wal.as_mut() {
        wal.stopped_at(stop.stop_lsn);
    }
    record.stop_lsn = Some(stop.stop_lsn);
    record.tablespaces = tablespace_map::parse(&stop.spcmapfile);
    // Staged in the extension's own directory of the data directory, which
    // backups leave out: the copy reads files from this host's disk.
    let staging = data_directory()
        .join("pg_blockbackup")
        .join(format!("staging-{}", unsafe { pg_sys::MyProcPid }));
    let mut label_files = vec![staged_file(&staging, "backup_label", &stop.labelfile)];
    if !stop.spcmapfile.is_empty() {
        label_files.push(staged_file(&staging, "tablespace_map", &stop.spcmapfile));
    }
    copier.run(label_files);

    progress.phase(Phase::CopyingWal);
    // The history as it is now: on a standby, the upstream may have been
    // promoted while the backup ran.
    copier.finish_wal(
        &timeline::history_of(timeline::current_timeline()),
        stop.stop_lsn,
    );
    let _ = std::fs::remove_dir_all(&staging);
    let Copier {
        mut stored, stats, ..
    } = copier;

    progress.phase(Phase::Finishing);
    stored.sort_by(|a, b| a.path.cmp(&b.path));
    write_manifest(
        &repo,
        &backup_id,
        &stored,
        timeline,
        start_lsn,
        stop.stop_lsn,
    );
    let (recovery_xid, recovery_time_us) = pg_backup_functions::recovery_point();
    record.recovery_xid = recovery_xid;
    record.recovery_time_us = recovery_time_us;
    record.files = stored.len() as u64;
    record.bytes_read = stats.bytes_read;
    record.bytes_written = stats.bytes_written;
    report_checksum_failures(&mut record, &stats.page_checksum_failures);
    record.end_time_us = Some(now_us());
    record.status = BackupStatus::Done;
    repo.write_contents(&backup_id, &BackupContents { files: stored })
        .unwrap_or_else(|e| errors::repository(e));
    repo.write_record(&record)
        .unwrap_or_else(|e| errors::repository(e));
    guard.disarm();
    record
}

/// Marks the backup ERROR and ends the server-side backup if anything
/// raises before the backup is recorded DONE.
struct AbortOnError {
    record: Option<(Repository, BackupRecord)>,
    backup_stopped: bool,
    armed: bool,
}

impl AbortOnError {
    fn new() -> Self {
        AbortOnError {
            record: None,
            backup_stopped: false,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for AbortOnError {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if !self.backup_stopped {
            // Only flips the session's backup state under WAL insert locks;
            // safe while the error unwinds.
            pg_backup_functions::abort();
        }
        if let Some((repo, mut record)) = self.record.take() {
            record.status = BackupStatus::Error;
            record.end_time_us = Some(now_us());
            record.error = Some(
                "the backup failed or was cancelled (see the server log); its partial files were removed"
                    .into(),
            );
            // Space first: the failure may be a full disk. Best effort,
            // as the next call that takes the lock removes them too.
            let _ = repo.remove_leftovers(&record.backup_id, true);
            let _ = repo.write_record(&record);
        }
    }
}

/// The blocks changed since the parent started, or None (a full backup)
/// when summaries do not cover that range and `required` is false;
/// `tick` runs while it waits for the summarizer.
fn changes_since(
    parent: &BackupRecord,
    start_lsn: Lsn,
    required: bool,
    tick: &mut dyn FnMut(),
) -> Option<BlockMap> {
    if !settings::SUMMARIZE_WAL.get() {
        if required {
            errors::summarization_disabled();
        }
        notice!("pg_blockbackup: WAL summarization is off; taking a full backup");
        return None;
    }
    if let Err(reached) = wait_until_summarized_while(start_lsn, SUMMARY_WAIT, tick) {
        if required {
            errors::wait_timed_out(
                start_lsn.to_string(),
                reached.to_string(),
                SUMMARY_WAIT.as_millis() as i32,
            );
        }
        notice!("pg_blockbackup: WAL is summarized only up to {reached}; taking a full backup");
        return None;
    }
    match summary_access::try_changes_between(parent.start_lsn, start_lsn) {
        Ok(changes) => Some(changes),
        Err(e) if required => errors::incremental_impossible(&parent.backup_id, &e.to_string()),
        Err(e) => {
            notice!(
                "pg_blockbackup: no incremental backup on {}: {e}; taking a full backup",
                parent.backup_id
            );
            None
        }
    }
}

/// Every path the parent backup holds, under its restored name.
fn contents_paths(contents: &BackupContents) -> HashSet<String> {
    contents
        .files
        .iter()
        .map(|f| restored_path(&f.path).unwrap_or_else(|| f.path.clone()))
        .collect()
}

fn plan_copy(
    repo: &Repository,
    changes: Option<&BlockMap>,
    parent_paths: Option<&HashSet<String>>,
) -> (Vec<CopyTask>, Vec<CopyTask>) {
    let data_dir = data_directory();
    let version_dir = server_paths::tablespace_version_directory();
    let repository: Vec<PathBuf> = repo
        .local_root()
        .map(Path::to_path_buf)
        .into_iter()
        .collect();
    let (_, files) = walk_data_directory(&data_dir, &version_dir, &repository)
        .unwrap_or_else(|e| errors::backup_failed(e.to_string()));
    let (control, others): (Vec<SourceFile>, Vec<SourceFile>) =
        files.into_iter().partition(|f| f.path == PG_CONTROL);
    let task = |file: SourceFile| {
        let has_parent = parent_paths.is_some_and(|paths| paths.contains(&file.path));
        let method = choose_method(
            &file,
            changes,
            has_parent,
            pg_sys::BLCKSZ,
            pg_sys::RELSEG_SIZE,
        );
        let kind = match method {
            FileMethod::Whole | FileMethod::Head(_) => StoredKind::Whole,
            FileMethod::Incremental(_) => StoredKind::Incremental,
        };
        CopyTask {
            source: file.absolute,
            path: file.path,
            method,
            kind,
            mtime: file.mtime,
        }
    };
    (
        others.into_iter().map(task).collect(),
        control.into_iter().map(task).collect(),
    )
}

/// The copy of one backup: the files, and the WAL alongside.
struct Copier<'a> {
    options: CopyOptions,
    progress: &'a ProgressReporter,
    wal_hold: &'a WalHold,
    /// None once the last WAL was copied.
    wal: Option<WalCopy>,
    stored: Vec<StoredFile>,
    stats: CopyStats,
}

impl Copier<'_> {
    /// Runs the copy threads, reporting progress from this (the only
    /// PostgreSQL) thread and, at each poll, watching for a cancel request,
    /// copying the WAL segments the server finished meanwhile, and making
    /// sure the WAL the backup holds stays within max_slot_wal_keep_size.
    fn run(&mut self, tasks: Vec<CopyTask>) {
        if tasks.is_empty() {
            return;
        }
        let mut wal_at_risk = None;
        let mut wal_failed = None;
        let options = &self.options;
        let (progress, wal_hold) = (self.progress, self.wal_hold);
        let wal = &mut self.wal;
        let mut poll = |p: &CopyProgress| {
            progress.counts(p.files_total, p.files_done, p.bytes_total, p.bytes_done);
            if wal_failed.is_none() {
                if let Some(wal) = wal.as_mut() {
                    wal_failed = wal.copy_finished(options, wal_hold).err();
                }
            }
            wal_at_risk = wal_at_risk.or_else(|| wal_hold.at_risk());
            if interrupt_pending() || wal_at_risk.is_some() || wal_failed.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let copied = copy_files(tasks, options, &mut poll);
        if let Some(held) = wal_at_risk {
            errors::backup_needs_more_wal(held);
        }
        if let Some(error) = wal_failed {
            errors::backup_copy(error);
        }
        match copied {
            Ok((files, copied)) => self.add(files, copied),
            Err(e) => {
                pg_sys::check_for_interrupts!();
                errors::backup_copy(e);
            }
        }
    }

    /// Copies the WAL not copied yet, through the segment of `stop`.
    fn finish_wal(&mut self, history: &[TimelineSpan], stop: Lsn) {
        let Some(wal) = self.wal.take() else {
            return;
        };
        let mut poll = || {
            if interrupt_pending() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        match wal.finish(history, stop, &self.options, &mut poll) {
            Ok((files, copied)) => self.add(files, copied),
            Err(e) => {
                pg_sys::check_for_interrupts!();
                errors::backup_copy(e);
            }
        }
    }

    fn add(&mut self, files: Vec<StoredFile>, copied: CopyStats) {
        self.stored.extend(files);
        self.stats.bytes_read += copied.bytes_read;
        self.stats.bytes_written += copied.bytes_written;
        self.stats
            .page_checksum_failures
            .extend(copied.page_checksum_failures);
    }
}

/// WARNINGs naming each failed page (as pg_basebackup, at most five per
/// file), and the count in the record.
fn report_checksum_failures(record: &mut BackupRecord, failures: &[PageChecksumFailure]) {
    if failures.is_empty() {
        return;
    }
    let mut per_file: std::collections::BTreeMap<&str, usize> = Default::default();
    for failure in failures {
        let count = per_file.entry(failure.path.as_str()).or_default();
        *count += 1;
        if *count <= 5 {
            warning!(
                "pg_blockbackup: checksum verification failed in file \"{}\", block {}",
                failure.path,
                failure.block
            );
        }
    }
    for (path, count) in per_file.into_iter().filter(|(_, count)| *count > 5) {
        warning!(
            "pg_blockbackup: file \"{path}\" has {count} pages that failed checksum verification"
        );
    }
    warning!(
        "pg_blockbackup: backup {} holds {} pages that failed checksum verification; they are stored as the disk held them",
        record.backup_id,
        failures.len()
    );
    record.add_checksum_failures(failures);
}

pub(crate) fn interrupt_pending() -> bool {
    unsafe { std::ptr::read_volatile(&raw const pg_sys::InterruptPending) != 0 }
}

fn staged_file(staging: &Path, name: &str, content: &str) -> CopyTask {
    std::fs::create_dir_all(staging)
        .and_then(|()| std::fs::write(staging.join(name), content))
        .unwrap_or_else(|e| {
            errors::backup_failed(format!(
                "could not stage {name} in \"{}\": {e}",
                staging.display()
            ))
        });
    CopyTask {
        source: staging.join(name),
        path: name.to_string(),
        method: FileMethod::Whole,
        kind: StoredKind::Whole,
        mtime: now_us() / 1_000_000,
    }
}

/// PostgreSQL's backup_manifest for the stored image, so that
/// pg_verifybackup can check an uncompressed backup directly.
fn write_manifest(
    repo: &Repository,
    backup_id: &str,
    stored: &[StoredFile],
    timeline: u32,
    start: Lsn,
    stop: Lsn,
) {
    let files: Vec<ManifestFile> = stored
        .iter()
        .filter(|f| f.kind != StoredKind::Wal)
        .map(|f| ManifestFile {
            path: f.path.clone(),
            size: f.size,
            mtime: f.mtime,
            crc32c: f.crc32c,
        })
        .collect();
    let manifest = render_manifest(
        &files,
        &[WalRange {
            timeline,
            start_lsn: start,
            end_lsn: stop,
        }],
    );
    let path = blockbackup_core::storage::join(&repo.data_prefix(backup_id), "backup_manifest");
    repo.storage()
        .put(&path, &manifest)
        .unwrap_or_else(|source| {
            errors::repository(RepositoryError::Io {
                path: repo.path_of(&path),
                source,
            })
        });
}
