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

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blockbackup_core::dump::process::{checksum_output, log_tail, DumpExit, DumpProcess};
use blockbackup_core::dump::request::{
    pg_dump_arguments, ConnectionTarget, DumpFormat, DumpRequest,
};
use blockbackup_core::repository::catalog::{
    BackupContents, BackupMode, BackupRecord, BackupStatus, DumpDetails,
};
use blockbackup_core::repository::{Repository, RunningLock};
use blockbackup_core::Lsn;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::agent_table::{now_us, AgentSlot, AgentState, DumpAgentTable};
use crate::backup::pg_backup_functions;
use crate::{shared_state, timeline};

/// pg_dump writes its output by itself, so it needs a directory here.
const LOCAL_ONLY: &str =
    "dump agents need a repository in a local directory: pg_dump writes its output there";

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
        let Some(log) = repo.dump_log(&backup_id) else {
            self.table.fail(self.index, self.id, LOCAL_ONLY);
            return;
        };
        let output_text = output.to_string_lossy().into_owned();
        self.table.update(self.index, self.id, true, |slot| {
            slot.state = AgentState::Running;
            slot.set_backup(&backup_id, &output_text);
        });

        let outcome = self.supervise(&output, &log);
        let tail = log_tail(&log, MESSAGE_TAIL_BYTES).unwrap_or_default();
        let (state, exit_code, message) = match outcome {
            Ok((exit, None)) if exit.succeeded() => match self.record_output(&repo, &mut record) {
                Ok(()) => (AgentState::Done, exit.code, tail),
                Err(error) => (AgentState::Error, exit.code, error),
            },
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
        if state == AgentState::Error {
            self.record_failure(&repo, &mut record, &output, exit_code, &message);
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

    /// The repository entry (RUNNING, with the running lock held) and the
    /// path pg_dump writes to.
    fn create_entry(&self) -> Result<(Repository, BackupRecord, PathBuf, RunningLock), String> {
        let slot = &self.slot;
        let format = DumpFormat::parse(&slot.format()).map_err(|e| e.to_string())?;
        let repo = Repository::open_or_create(
            Path::new(&slot.repository()),
            pg_backup_functions::system_identifier(),
        )
        .map_err(|e| e.to_string())?;
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
        let output = repo
            .dump_dir(&record.backup_id)
            .ok_or_else(|| LOCAL_ONLY.to_owned())?
            .join(format.output_name());
        Ok((repo, record, output, running))
    }

    /// Runs pg_dump to its end, or stops it; returns how it ended and why
    /// it was stopped, if it was.
    fn supervise(
        &self,
        output: &Path,
        log: &Path,
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
        let arguments = pg_dump_arguments(&request, &target, output);
        let program = PathBuf::from(slot.pg_dump());
        let mut process = DumpProcess::spawn(&program, &arguments, &environment(), log)
            .map_err(|e| format!("could not start \"{}\": {e}", program.display()))?;
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
                let bytes = tree_size(output) as i64;
                self.table
                    .update(self.index, self.id, false, |slot| slot.bytes = bytes);
            }
        }
    }

    /// Checksums what pg_dump wrote and records the dump DONE.
    fn record_output(&self, repo: &Repository, record: &mut BackupRecord) -> Result<(), String> {
        let dump_dir = repo
            .dump_dir(&record.backup_id)
            .ok_or_else(|| LOCAL_ONLY.to_owned())?;
        let output_name = record
            .dump
            .as_ref()
            .map(|d| d.output.clone())
            .unwrap_or_default();
        let files = checksum_output(&dump_dir, &dump_dir.join(&output_name))
            .map_err(|e| format!("could not read the dump pg_dump wrote: {e}"))?;
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
        output: &Path,
        exit_code: Option<i32>,
        message: &str,
    ) {
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
