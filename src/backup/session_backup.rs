//! `backup_start` / `backup_stop` for scripts that copy files themselves,
//! bound to the session like `pg_backup_start`. `backup_start` names the
//! newest usable backup in the repository as the parent, so that the
//! script can ask `changed_blocks(parent_start_lsn, start_lsn)`; the
//! files such a script copies are its own, so no catalog entry is made.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use blockbackup_core::repository::catalog::BackupRecord;
use blockbackup_core::Lsn;

use super::{pg_backup_functions, repository_access};
use crate::summary_access::wait_until_summarized;
use crate::{errors, settings, timeline};

pub struct Started {
    pub backup_id: String,
    pub start_lsn: Lsn,
    pub timeline: u32,
    pub parent: Option<BackupRecord>,
}

pub struct Stopped {
    pub backup_id: String,
    pub stop: pg_backup_functions::StopResult,
}

const SUMMARY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The longest label pg_backup_start takes (MAXPGPATH).
const MAX_LABEL_BYTES: usize = 1024;

/// A backup label goes into `backup_label` as one line that recovery
/// parses: it may not hold a line break (a second line such as
/// `START TIMELINE: 9` would be read as the backup's), nor any other
/// control character, and not be longer than PostgreSQL allows.
pub fn check_label(label: &str) {
    if label.chars().any(char::is_control) {
        errors::invalid_argument(
            format!("invalid backup label {label:?}: it holds a line break or another control character"),
            "The label is written as one line of backup_label; use printable characters only.",
        );
    }
    if label.len() > MAX_LABEL_BYTES {
        errors::invalid_argument(
            format!(
                "backup label too long: {} bytes, at most {MAX_LABEL_BYTES}",
                label.len()
            ),
            "Use a shorter label.",
        );
    }
}

thread_local! {
    static SESSION_BACKUP: RefCell<Option<String>> = const { RefCell::new(None) };
}

pub fn start(label: &str, fast: bool) -> Started {
    if SESSION_BACKUP.with(|b| b.borrow().is_some()) {
        errors::session_backup_running();
    }
    let parent = settings::text(&settings::REPOSITORY).and_then(|_| {
        let history = timeline::history_of(timeline::current_timeline());
        repository_access::newest_usable_parent(&repository_access::open_for_writing(), &history)
    });
    let start_lsn = pg_backup_functions::start(label, fast);
    // So that changed_blocks(parent_start_lsn, start_lsn) answers at once.
    if parent.is_some() && settings::SUMMARIZE_WAL.get() {
        if let Err(reached) = wait_until_summarized(start_lsn, SUMMARY_WAIT) {
            pgrx::notice!(
                "pg_blockbackup: WAL is summarized only up to {reached}; wait_for_summary('{start_lsn}') before asking for changed blocks"
            );
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let backup_id = format!("session-{}-{now}", unsafe { pgrx::pg_sys::MyProcPid });
    SESSION_BACKUP.with(|b| *b.borrow_mut() = Some(backup_id.clone()));
    Started {
        backup_id,
        start_lsn,
        timeline: timeline::current_timeline(),
        parent,
    }
}

pub fn stop() -> Stopped {
    let Some(backup_id) = SESSION_BACKUP.with(|b| b.borrow_mut().take()) else {
        errors::no_session_backup();
    };
    Stopped {
        backup_id,
        stop: pg_backup_functions::stop(true),
    }
}
