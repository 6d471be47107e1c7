//! The session side of a dump agent: check the request, start the agent's
//! worker, and wait for it.

use std::ffi::CStr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use blockbackup_core::dump::request::{DumpFormat, DumpRequest};
use pgrx::bgworkers::{BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::agent_table::{now_us, AgentJob, AgentSlot, AgentState, ClaimError, DumpAgentTable};
use crate::backup::repository_access;
use crate::{errors, shared_state};

pub const WORKER_TYPE: &str = "pg_blockbackup dump agent";
/// How long cancel_dump_agent waits for the agent to be gone.
const CANCEL_WAIT: Duration = Duration::from_secs(30);
const SLEEP_MS: i64 = 1000;

/// Starts an agent for `request`; returns once it has created its catalog
/// entry (or failed), or, with `wait`, once it has ended.
pub fn launch(request: DumpRequest, wait: bool) -> AgentSlot {
    let table = shared_state::dump_agents();
    check_database(&request.database);
    let repository = repository_access::open_for_writing();
    if repository.local_root().is_none() && request.format == DumpFormat::Directory {
        errors::directory_dump_needs_local_repository(&repository.root().display().to_string());
    }
    let job = AgentJob {
        database: request.database.clone(),
        format: request.format.as_str().to_owned(),
        jobs: request.jobs,
        options: request.options.clone(),
        role: session_role(),
        socket_directory: socket_directory(),
        port: u16::try_from(unsafe { pg_sys::PostPortNumber }).unwrap_or(5432),
        repository: repository.location().to_string(),
        pg_dump: pg_dump_program().to_string_lossy().into_owned(),
    };
    let (index, id) = match table.claim(&job, now_us()) {
        Ok(claimed) => claimed,
        Err(ClaimError::Full) => errors::agents_busy(super::agent_table::AGENT_SLOTS),
    };
    start_worker(table, index, id);
    let cancel_on_error = CancelOnError::new(table, index, id);
    let mut slot = wait_for(table, index, id, None, |state| {
        state != AgentState::Starting
    });
    if wait {
        slot = wait_for(table, index, id, None, AgentState::is_finished);
    }
    cancel_on_error.disarm();
    slot
}

/// Waits until agent `id` has ended or `timeout` passed; returns its slot.
/// Cancelling this wait leaves the agent running.
pub fn wait(id: i64, timeout: Option<Duration>) -> AgentSlot {
    let table = shared_state::dump_agents();
    let Some((index, _)) = table.get(id) else {
        errors::unknown_agent(id);
    };
    wait_for(table, index, id, timeout, AgentState::is_finished)
}

/// Asks agent `id` to stop and waits until it has; false if it had ended.
pub fn cancel(id: i64) -> bool {
    let table = shared_state::dump_agents();
    let Some((index, slot)) = table.get(id) else {
        errors::unknown_agent(id);
    };
    if slot.state.is_finished() {
        return false;
    }
    table.update(index, id, false, |slot| slot.cancel_requested = true);
    let slot = wait_for(table, index, id, Some(CANCEL_WAIT), AgentState::is_finished);
    if !slot.state.is_finished() {
        errors::agent_did_not_stop(id);
    }
    true
}

/// Every agent listed, with agents whose worker vanished marked ERROR.
pub fn list() -> Vec<AgentSlot> {
    let table = shared_state::dump_agents();
    for slot in table.all() {
        reap_if_vanished(table, &slot);
    }
    table.all()
}

fn wait_for(
    table: &'static DumpAgentTable,
    index: usize,
    id: i64,
    timeout: Option<Duration>,
    done: impl Fn(AgentState) -> bool,
) -> AgentSlot {
    let began = Instant::now();
    let slot = loop {
        let Some(slot) = table.at(index, id) else {
            table.stop_sleeping();
            errors::unknown_agent(id);
        };
        if done(slot.state) || reap_if_vanished(table, &slot) {
            break table.at(index, id).unwrap_or(slot);
        }
        let left = timeout.map(|t| t.saturating_sub(began.elapsed()));
        if left.is_some_and(|left| left.is_zero()) {
            break slot;
        }
        let nap = left.map_or(SLEEP_MS, |left| {
            (left.as_millis() as i64).clamp(1, SLEEP_MS)
        });
        table.sleep(nap);
    };
    table.stop_sleeping();
    slot
}

/// Marks an agent ERROR whose worker process is gone without saying how
/// it ended (killed, or it failed to start); true if it did.
fn reap_if_vanished(table: &DumpAgentTable, slot: &AgentSlot) -> bool {
    if slot.state.is_finished() || slot.worker_pid == 0 {
        return false;
    }
    let alive = unsafe { libc::kill(slot.worker_pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    if alive {
        return false;
    }
    let (index, id) = match table.get(slot.agent_id) {
        Some((index, _)) => (index, slot.agent_id),
        None => return false,
    };
    table.fail(
        index,
        id,
        "the agent's worker process ended without recording a result (killed?); see the server log",
    );
    true
}

fn start_worker(table: &DumpAgentTable, index: usize, id: i64) {
    let name = format!("{WORKER_TYPE} {id}");
    let registered = BackgroundWorkerBuilder::new(&name)
        .set_type(WORKER_TYPE)
        .set_library("pg_blockbackup")
        .set_function("blockbackup_dump_agent_main")
        .set_argument(Some(pg_sys::Datum::from(index)))
        .set_extra(&id.to_string())
        .enable_shmem_access(None)
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(None)
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic();
    let handle = match registered {
        Ok(handle) => handle,
        Err(_) => {
            table.fail(index, id, "no background worker slot was free");
            errors::no_worker_slot();
        }
    };
    match handle.wait_for_startup() {
        Ok(pid) => table.update(index, id, false, |slot| {
            if slot.worker_pid == 0 {
                slot.worker_pid = pid;
            }
        }),
        Err(status) => {
            let why = match status {
                BackgroundWorkerStatus::PostmasterDied => "the postmaster died",
                _ => "the postmaster did not start it",
            };
            table.fail(
                index,
                id,
                &format!("the agent's worker could not start: {why}"),
            );
            errors::agent_failed_to_start(why);
        }
    }
}

/// Cancels the agent when the launching wait ends in an error (Ctrl-C,
/// statement_timeout, terminate): Greenplum's launch semantics.
struct CancelOnError {
    table: &'static DumpAgentTable,
    index: usize,
    id: i64,
    armed: bool,
}

impl CancelOnError {
    fn new(table: &'static DumpAgentTable, index: usize, id: i64) -> Self {
        CancelOnError {
            table,
            index,
            id,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnError {
    fn drop(&mut self) {
        if self.armed {
            self.table.update(self.index, self.id, false, |slot| {
                slot.cancel_requested = true
            });
        }
    }
}

/// Errors unless `database` exists and accepts connections.
fn check_database(database: &str) {
    let args: [DatumWithOid; 1] = [database.into()];
    let allows = crate::read_only_sql::one::<bool>(
        "SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = $1",
        &args,
    );
    match allows {
        Ok(Some(true)) => {}
        Ok(Some(false)) => errors::database_not_connectable(database),
        Ok(None) | Err(pgrx::spi::SpiError::InvalidPosition) => errors::unknown_database(database),
        Err(e) => error!("pg_blockbackup: could not look up database \"{database}\": {e}"),
    }
}

pub(crate) fn session_role() -> String {
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetSessionUserId(), false);
        CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

/// The first directory of `unix_socket_directories`: the agent always
/// connects over the local socket.
pub(crate) fn socket_directory() -> String {
    let setting = unsafe {
        let raw = pg_sys::Unix_socket_directories;
        if raw.is_null() {
            String::new()
        } else {
            CStr::from_ptr(raw).to_string_lossy().into_owned()
        }
    };
    let first = setting
        .split(',')
        .map(|dir| dir.trim().trim_matches('"').to_owned())
        .find(|dir| !dir.is_empty() && !dir.starts_with('@'));
    first.unwrap_or_else(|| errors::no_unix_socket(&setting))
}

/// pg_dump from the server's own bin directory, so that its version
/// matches the server.
fn pg_dump_program() -> PathBuf {
    let program = crate::server_paths::client_program("pg_dump");
    if !program.is_file() {
        errors::pg_dump_missing(&program);
    }
    program
}
