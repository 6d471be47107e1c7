//! The dump agent's background worker: it creates the dump's catalog
//! entry, runs pg_dump, watches it, and records how it ended.
//!
//! The worker holds the dump's running lock for its whole life, so a
//! worker that dies any other way (kill -9, a crash of the server) leaves
//! an entry that the next listing marks ERROR. It stops pg_dump when the
//! agent is cancelled, when the server shuts down (SIGTERM) and when the
//! postmaster dies; pg_dump itself dies with the worker (parent-death
//! signal). Nothing here raises an error through PostgreSQL: every failure
//! becomes the agent's ERROR and message.
//!
//! Into a local repository pg_dump writes by itself; into one in S3 its
//! standard output is streamed into the bucket (`dump::stream`) and its
//! standard error gathered in a temporary file of the data directory
//! (`base/pgsql_tmp`, which no backup copies), stored beside the dump at
//! the end.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blockbackup_core::dump::process::{checksum_output, log_tail, DumpExit, DumpProcess};
use blockbackup_core::dump::request::{
    pg_dump_arguments, ConnectionTarget, DumpFormat, DumpRequest,
};
use blockbackup_core::dump::stream::OutputStream;
use blockbackup_core::repository::catalog::{
    BackupContents, BackupMode, BackupRecord, BackupStatus, DumpDetails,
};
use blockbackup_core::repository::{Repository, RepositoryLocation, RunningLock};
use blockbackup_core::storage::join;
use blockbackup_core::Lsn;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::agent_table::{now_us, AgentSlot, AgentState, DumpAgentTable};
use crate::backup::{pg_backup_functions, repository_access};
use crate::server_paths::data_directory;
use crate::{shared_state, timeline};

/// Where a streamed dump's pg_dump standard error waits to be stored.
const STREAMED_LOG_DIR: &str = "base/pgsql_tmp";

/// How long pg_dump gets to leave after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
const POLL_INTERVAL_MS: i64 = 100;
const SIZE_REFRESH: Duration = Duration::from_secs(1);
const MESSAGE_TAIL_BYTES: usize = 900;

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn blockbackup_dump_agent_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let index = arg.value();
    let Ok(id) = BackgroundWorker::get_extra().parse::<i64>() else {
        return;
    };
    let table = shared_state::dump_agents();
    let me = unsafe { pg_sys::MyProcPid };
    let Some(slot) = table.at(index, id) else {
        return;
    };
    table.update(index, id, false, |slot| slot.worker_pid = me);
    let agent = Agent {
        table,
        index,
        id,
        slot,
    };
    agent.run();
}

struct Agent {
    table: &'static DumpAgentTable,
    index: usize,
    id: i64,
    slot: AgentSlot,
}

/// Where pg_dump's output goes.
enum Output {
    /// The file or directory pg_dump writes itself (a local repository).
    Local(PathBuf),
    /// The store's path its standard output is streamed to.
    Streamed(String),
}

/// Why pg_dump was stopped before it ended by itself.
enum StopReason {
    Cancelled,
    Shutdown,
    PostmasterDied,
}

impl StopReason {
    fn describe(&self) -> &'static str {
        match self {
            StopReason::Cancelled => {
                "cancelled: pg_dump was stopped and its partial output removed"
            }
            StopReason::Shutdown => {
                "the server shut down: pg_dump was stopped and its partial output removed"
            }
            StopReason::PostmasterDied => "the server ended: pg_dump was stopped",
        }
    }
}

impl Agent {
    fn run(&self) {
        let (repo, mut record, output, _running) = match self.create_entry() {
            Ok(created) => created,
            Err(message) => {
                self.table.fail(self.index, self.id, &message);
                return;
            }
        };
        let backup_id = record.backup_id.clone();
        let log = match &output {
            Output::Local(_) => repo.dump_log(&backup_id),
            Output::Streamed(_) => streamed_log(&backup_id),
        };
        let Some(log) = log else {
            self.table
                .fail(self.index, self.id, "no place for pg_dump's log");
            return;
        };
        let output_text = match &output {
            Output::Local(path) => path.to_string_lossy().into_owned(),
            Output::Streamed(path) => repo.path_of(path).to_string_lossy().into_owned(),
        };
        self.table.update(self.index, self.id, true, |slot| {
            slot.state = AgentState::Running;
            slot.set_backup(&backup_id, &output_text);
        });

        let mut stream = None;
        let outcome = self.supervise(&repo, &output, &log, &mut stream);
        let tail = log_tail(&log, MESSAGE_TAIL_BYTES).unwrap_or_default();
        let (state, exit_code, message) = match outcome {
            Ok((exit, None)) if exit.succeeded() => {
                match self.record_output(&repo, &mut record, &output, stream.take()) {
                    Ok(()) => (AgentState::Done, exit.code, tail),
                    Err(error) => (AgentState::Error, exit.code, error),
                }
            }
            Ok((exit, None)) => (
                AgentState::Error,
                exit.code,
                failure_message(&exit, &tail, &self.slot),
            ),
            Ok((exit, Some(reason))) => (
                AgentState::Error,
                exit.code,
                join_nonempty(reason.describe(), &tail),
            ),
            Err(error) => (AgentState::Error, None, error),
        };
        if let Some(stream) = stream.take() {
            // pg_dump failed or was stopped: the upload goes.
            let _ = stream.finish(false, "");
        }
        if state == AgentState::Error {
            self.record_failure(&repo, &mut record, &output, exit_code, &message);
        }
        if matches!(output, Output::Streamed(_)) {
            store_log(&repo, &backup_id, &log);
        }
        let bytes = record.bytes_written as i64;
        self.table.update(self.index, self.id, true, |slot| {
            slot.state = state;
            slot.exit_code = exit_code;
            slot.dump_pid = 0;
            slot.bytes = bytes;
            slot.finished_at_us = now_us();
            slot.set_message(&message);
        });
    }

    /// The repository entry (RUNNING, with the running lock held) and
    /// where pg_dump's output goes.
    fn create_entry(&self) -> Result<(Repository, BackupRecord, Output, RunningLock), String> {
        let slot = &self.slot;
        let format = DumpFormat::parse(&slot.format()).map_err(|e| e.to_string())?;
        let location = RepositoryLocation::parse(&slot.repository()).map_err(|e| e.to_string())?;
        let repo = repository_access::open_or_create(&location).map_err(|e| e.to_string())?;
        let database = slot.database();
        let mut record = BackupRecord::begin(
            BackupMode::Dump,
            pg_backup_functions::cluster_facts(timeline::current_timeline()),
            current_lsn(),
            now_us(),
        );
        record.label = Some(format!("pg_dump of database {database}"));
        record.dump = Some(DumpDetails {
            database,
            format: format.as_str().to_owned(),
            jobs: slot.jobs,
            options: slot.options(),
            output: format.output_name().to_owned(),
            exit_code: None,
            agent_id: self.id,
        });
        let running = repo
            .create_backup(&mut record)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the repository did not lock the new dump".to_owned())?;
        let output = match repo.dump_dir(&record.backup_id) {
            Some(dir) => Output::Local(dir.join(format.output_name())),
            None => Output::Streamed(join(&repo.content_prefix(&record), format.output_name())),
        };
        Ok((repo, record, output, running))
    }

    /// Runs pg_dump to its end, or stops it; returns how it ended and why
    /// it was stopped, if it was.
    fn supervise(
        &self,
        repo: &Repository,
        output: &Output,
        log: &Path,
        stream: &mut Option<OutputStream>,
    ) -> Result<(DumpExit, Option<StopReason>), String> {
        let slot = &self.slot;
        let request = DumpRequest {
            database: slot.database(),
            format: DumpFormat::parse(&slot.format()).map_err(|e| e.to_string())?,
            jobs: slot.jobs,
            options: slot.options(),
        };
        let target = ConnectionTarget {
            socket_directory: slot.socket_directory(),
            port: slot.port,
            role: slot.role(),
            application_name: format!("pg_blockbackup dump agent {}", self.id),
        };
        let local = match output {
            Output::Local(path) => Some(path.as_path()),
            Output::Streamed(_) => None,
        };
        let writer = match output {
            Output::Local(_) => None,
            Output::Streamed(path) => Some(repo.storage().create(path).map_err(|e| {
                format!("could not store \"{}\": {e}", repo.path_of(path).display())
            })?),
        };
        let arguments = pg_dump_arguments(&request, &target, local);
        let program = PathBuf::from(slot.pg_dump());
        let mut process =
            DumpProcess::spawn(&program, &arguments, &environment(), log, local.is_none())
                .map_err(|e| format!("could not start \"{}\": {e}", program.display()))?;
        if let (Some(writer), Some(pipe)) = (writer, process.take_output()) {
            match OutputStream::start(pipe, writer) {
                Ok(started) => *stream = Some(started),
                Err(error) => {
                    let _ = process.terminate(STOP_GRACE);
                    return Err(format!("could not stream pg_dump's output: {error}"));
                }
            }
        }
        let pid = process.pid() as i32;
        self.table
            .update(self.index, self.id, true, |slot| slot.dump_pid = pid);

        let mut last_size_check = Instant::now();
        loop {
            let events = wait_on_latch(POLL_INTERVAL_MS);
            if let Some(exit) = process.poll().map_err(|e| e.to_string())? {
                return Ok((exit, None));
            }
            let reason = if events & pg_sys::WL_POSTMASTER_DEATH as i32 != 0 {
                Some(StopReason::PostmasterDied)
            } else if unsafe { pg_sys::ShutdownRequestPending } != 0 {
                Some(StopReason::Shutdown)
            } else if self
                .table
                .at(self.index, self.id)
                .is_none_or(|slot| slot.cancel_requested)
            {
                Some(StopReason::Cancelled)
            } else {
                None
            };
            if let Some(reason) = reason {
                let exit = process.terminate(STOP_GRACE).map_err(|e| e.to_string())?;
                return Ok((exit, Some(reason)));
            }
            if last_size_check.elapsed() >= SIZE_REFRESH {
                last_size_check = Instant::now();
                let bytes = match (output, stream.as_ref()) {
                    (Output::Local(path), _) => tree_size(path),
                    (Output::Streamed(_), Some(stream)) => stream.bytes(),
                    (Output::Streamed(_), None) => 0,
                } as i64;
                self.table
                    .update(self.index, self.id, false, |slot| slot.bytes = bytes);
            }
        }
    }

    /// Checksums what pg_dump wrote (or finishes storing what it streamed)
    /// and records the dump DONE.
    fn record_output(
        &self,
        repo: &Repository,
        record: &mut BackupRecord,
        output: &Output,
        stream: Option<OutputStream>,
    ) -> Result<(), String> {
        let output_name = record
            .dump
            .as_ref()
            .map(|d| d.output.clone())
            .unwrap_or_default();
        let files = match (output, stream) {
            (Output::Local(path), _) => {
                let dump_dir = path.parent().unwrap_or(path);
                checksum_output(dump_dir, path)
                    .map_err(|e| format!("could not read the dump pg_dump wrote: {e}"))?
            }
            (Output::Streamed(path), Some(stream)) => {
                let stored = stream.finish(true, &output_name).map_err(|e| {
                    format!(
                        "could not store the dump in \"{}\": {e}",
                        repo.path_of(path).display()
                    )
                })?;
                stored.into_iter().collect()
            }
            (Output::Streamed(_), None) => return Err("the dump's output was not streamed".into()),
        };
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        record.files = files.len() as u64;
        record.bytes_read = bytes;
        record.bytes_written = bytes;
        repo.write_contents(&record.backup_id, &BackupContents { files })
            .map_err(|e| e.to_string())?;
        record.status = BackupStatus::Done;
        record.end_time_us = Some(now_us());
        if let Some(dump) = record.dump.as_mut() {
            dump.exit_code = Some(0);
        }
        repo.write_record(record).map_err(|e| e.to_string())
    }

    /// Removes the partial output and records the dump ERROR; the log stays.
    fn record_failure(
        &self,
        repo: &Repository,
        record: &mut BackupRecord,
        output: &Output,
        exit_code: Option<i32>,
        message: &str,
    ) {
        // A streamed output was abandoned, which removed it.
        let Output::Local(output) = output else {
            return self.record_error(repo, record, exit_code, message);
        };
        let removed = if output.is_dir() {
            std::fs::remove_dir_all(output)
        } else {
            std::fs::remove_file(output)
        };
        if let Err(error) = removed {
            if error.kind() != std::io::ErrorKind::NotFound {
                warning!(
                    "pg_blockbackup: could not remove the partial dump \"{}\": {error}",
                    output.display()
                );
            }
        }
        self.record_error(repo, record, exit_code, message);
    }

    /// Records the dump ERROR, with nothing stored.
    fn record_error(
        &self,
        repo: &Repository,
        record: &mut BackupRecord,
        exit_code: Option<i32>,
        message: &str,
    ) {
        record.status = BackupStatus::Error;
        record.end_time_us = Some(now_us());
        record.files = 0;
        record.bytes_written = 0;
        record.error = Some(message.to_owned());
        if let Some(dump) = record.dump.as_mut() {
            dump.exit_code = exit_code;
        }
        let written = repo
            .write_contents(&record.backup_id, &BackupContents::default())
            .and_then(|()| repo.write_record(record));
        if let Err(error) = written {
            warning!(
                "pg_blockbackup: could not record dump \"{}\" as failed: {error}",
                record.backup_id
            );
        }
    }
}

/// Waits on the latch; returns the events that woke it.
fn wait_on_latch(timeout_ms: i64) -> i32 {
    unsafe {
        let events = pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH) as i32,
            timeout_ms as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        events
    }
}

fn current_lsn() -> Lsn {
    unsafe {
        if pg_sys::RecoveryInProgress() {
            Lsn(pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut()))
        } else {
            Lsn(pg_sys::GetXLogInsertRecPtr())
        }
    }
}

/// pg_dump's environment: only what locates files and sets the language,
/// from the server's own; nothing that could point it at another server
/// (PGHOST, PGSERVICE, ...) or change its session (PGOPTIONS).
fn environment() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(key, _)| {
            let key = key.to_string_lossy();
            matches!(key.as_ref(), "HOME" | "PATH" | "LANG" | "TZ" | "PGPASSFILE")
                || key.starts_with("LC_")
        })
        .collect()
}

/// `<data directory>/base/pgsql_tmp/pgsql_tmp_pg_blockbackup_dump_<id>.log`:
/// a place only the server's OS user writes, which no backup copies and a
/// restart of the server empties.
fn streamed_log(backup_id: &str) -> Option<PathBuf> {
    let dir = data_directory().join(STREAMED_LOG_DIR);
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("pgsql_tmp_pg_blockbackup_dump_{backup_id}.log"));
    // A leftover of an earlier run of the same id is not this one's.
    let _ = std::fs::remove_file(&path);
    Some(path)
}

/// Stores a streamed dump's log beside it, then removes the local copy.
fn store_log(repo: &Repository, backup_id: &str, log: &Path) {
    let stored = std::fs::read(log)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            repo.storage()
                .put(&repo.dump_log_path(backup_id), &bytes)
                .map_err(|e| e.to_string())
        });
    match stored {
        Ok(()) => {
            let _ = std::fs::remove_file(log);
        }
        Err(error) => warning!(
            "pg_blockbackup: pg_dump's log of dump \"{backup_id}\" stays in \"{}\": {error}",
            log.display()
        ),
    }
}

fn tree_size(path: &Path) -> u64 {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !metadata.is_dir() {
        return metadata.len();
    }
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|entry| tree_size(&entry.path()))
            .sum()
    })
}

fn join_nonempty(first: &str, second: &str) -> String {
    if second.is_empty() {
        first.to_owned()
    } else {
        format!("{first}\n{second}")
    }
}

/// pg_dump's own words, and what to do when it could not connect.
fn failure_message(exit: &DumpExit, tail: &str, slot: &AgentSlot) -> String {
    let mut message = join_nonempty(&format!("pg_dump failed ({})", exit.description), tail);
    let connection_refused = [
        "pg_hba.conf",
        "authentication failed",
        "password",
        "not permitted to log in",
    ]
    .iter()
    .any(|needle| tail.contains(needle));
    if connection_refused {
        message.push_str(&format!(
            "\nHINT: the agent connects as role \"{}\" over the Unix socket in \"{}\" (port {}), without a password prompt: pg_hba.conf needs a \"local\" line that admits this role (trust, or peer with a map to the server's OS user), or the password must be in the server OS user's ~/.pgpass.",
            slot.role(),
            slot.socket_directory(),
            slot.port
        ));
    }
    message
}
