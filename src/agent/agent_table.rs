//! The dump agents in shared memory: what each was asked to do, where it
//! stands, and how it ended, so that any session can list, wait for or
//! cancel an agent that another session launched.
//!
//! A slot is copied in and out whole under one spinlock (a few kilobytes,
//! no calls inside); waiters sleep on one condition variable that an agent
//! broadcasts when it has created its catalog entry and when it ends. The
//! table keeps finished agents for `dump_agents()` until their slot is
//! needed again, oldest first. Shared memory does not survive a server
//! restart, and neither does this list; the repository's catalog keeps
//! the dumps themselves.

use std::cell::UnsafeCell;

use pgrx::pg_sys;

pub use blockbackup_core::civil_time::unix_now_us as now_us;

use crate::shared_condition::SharedCondition;

pub const AGENT_SLOTS: usize = 16;
const TEXT_BYTES: usize = 1024;
const NAME_BYTES: usize = 64;
const OPTIONS_BYTES: usize = blockbackup_core::dump::request::MAX_EXTRA_ARGS_BYTES + 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum AgentState {
    Free = 0,
    /// Registered; the worker has not created the catalog entry yet.
    Starting = 1,
    Running = 2,
    Done = 3,
    Error = 4,
}

impl AgentState {
    /// The status `dump_agents()` shows, the catalog's names.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Free => "FREE",
            AgentState::Starting | AgentState::Running => "RUNNING",
            AgentState::Done => "DONE",
            AgentState::Error => "ERROR",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, AgentState::Done | AgentState::Error)
    }
}

/// One agent, as stored in its slot.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct AgentSlot {
    pub agent_id: i64,
    pub state: AgentState,
    pub cancel_requested: bool,
    pub exit_code: Option<i32>,
    pub worker_pid: i32,
    pub dump_pid: i32,
    pub started_at_us: i64,
    pub finished_at_us: i64,
    pub bytes: i64,
    pub jobs: u32,
    format: [u8; NAME_BYTES],
    database: [u8; NAME_BYTES],
    role: [u8; NAME_BYTES],
    socket_directory: [u8; TEXT_BYTES],
    pub port: u16,
    /// NUL-separated pg_dump options.
    options: [u8; OPTIONS_BYTES],
    repository: [u8; TEXT_BYTES],
    pg_dump: [u8; TEXT_BYTES],
    backup_id: [u8; NAME_BYTES],
    output_path: [u8; TEXT_BYTES],
    message: [u8; TEXT_BYTES],
}

#[repr(C)]
pub struct DumpAgentTable {
    mutex: UnsafeCell<pg_sys::slock_t>,
    /// Only touched with `mutex` held.
    locked: UnsafeCell<LockedState>,
    changed: SharedCondition,
}

#[repr(C)]
struct LockedState {
    last_agent_id: i64,
    slots: [AgentSlot; AGENT_SLOTS],
}

/// What a launch asks of an agent.
pub struct AgentJob {
    pub database: String,
    pub format: String,
    pub jobs: u32,
    pub options: Vec<String>,
    pub role: String,
    pub socket_directory: String,
    pub port: u16,
    pub repository: String,
    pub pg_dump: String,
}

fn put_text(field: &mut [u8], text: &str) {
    let mut end = text.len().min(field.len() - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    field.fill(0);
    field[..end].copy_from_slice(&text.as_bytes()[..end]);
}

fn get_text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

impl AgentSlot {
    pub fn database(&self) -> String {
        get_text(&self.database)
    }
    pub fn format(&self) -> String {
        get_text(&self.format)
    }
    pub fn role(&self) -> String {
        get_text(&self.role)
    }
    pub fn socket_directory(&self) -> String {
        get_text(&self.socket_directory)
    }
    pub fn repository(&self) -> String {
        get_text(&self.repository)
    }
    pub fn pg_dump(&self) -> String {
        get_text(&self.pg_dump)
    }
    pub fn backup_id(&self) -> Option<String> {
        Some(get_text(&self.backup_id)).filter(|id| !id.is_empty())
    }
    pub fn output_path(&self) -> Option<String> {
        Some(get_text(&self.output_path)).filter(|path| !path.is_empty())
    }
    pub fn message(&self) -> Option<String> {
        Some(get_text(&self.message)).filter(|message| !message.is_empty())
    }
    pub fn options(&self) -> Vec<String> {
        get_text(&self.options)
            .split('\n')
            .filter(|option| !option.is_empty())
            .map(str::to_owned)
            .collect()
    }
    pub fn set_backup(&mut self, backup_id: &str, output_path: &str) {
        put_text(&mut self.backup_id, backup_id);
        put_text(&mut self.output_path, output_path);
    }
    pub fn set_message(&mut self, message: &str) {
        // Keep the end of a long message: pg_dump's last lines say why.
        let mut start = message.len().saturating_sub(TEXT_BYTES - 1);
        while !message.is_char_boundary(start) {
            start += 1;
        }
        put_text(&mut self.message, &message[start..]);
    }
    pub fn duration_ms(&self) -> i64 {
        let end = if self.state.is_finished() {
            self.finished_at_us
        } else {
            now_us()
        };
        (end - self.started_at_us).max(0) / 1000
    }
}

pub enum ClaimError {
    /// Every slot holds an agent that has not finished.
    Full,
}

impl DumpAgentTable {
    /// Shared memory starts zeroed; this sets up the lock and the
    /// condition variable.
    pub unsafe fn init(this: *mut DumpAgentTable) {
        unsafe {
            pg_sys::SpinLockInit((*this).mutex.get());
            SharedCondition::init(&raw mut (*this).changed);
        }
    }

    /// Runs `f` with the spinlock held; `f` only copies (it must not
    /// raise or call into the server).
    fn with_lock<R>(&self, f: impl FnOnce(&mut LockedState) -> R) -> R {
        unsafe {
            pg_sys::SpinLockAcquire(self.mutex.get());
            let result = f(&mut *self.locked.get());
            pg_sys::SpinLockRelease(self.mutex.get());
            result
        }
    }

    /// Takes a free slot (or the one of the agent that finished first) for
    /// a new agent; returns its index and id.
    pub fn claim(&self, job: &AgentJob, launcher_now_us: i64) -> Result<(usize, i64), ClaimError> {
        let mut slot = AgentSlot {
            agent_id: 0,
            state: AgentState::Starting,
            cancel_requested: false,
            exit_code: None,
            worker_pid: 0,
            dump_pid: 0,
            started_at_us: launcher_now_us,
            finished_at_us: 0,
            bytes: 0,
            jobs: job.jobs,
            format: [0; NAME_BYTES],
            database: [0; NAME_BYTES],
            role: [0; NAME_BYTES],
            socket_directory: [0; TEXT_BYTES],
            port: job.port,
            options: [0; OPTIONS_BYTES],
            repository: [0; TEXT_BYTES],
            pg_dump: [0; TEXT_BYTES],
            backup_id: [0; NAME_BYTES],
            output_path: [0; TEXT_BYTES],
            message: [0; TEXT_BYTES],
        };
        put_text(&mut slot.format, &job.format);
        put_text(&mut slot.database, &job.database);
        put_text(&mut slot.role, &job.role);
        put_text(&mut slot.socket_directory, &job.socket_directory);
        put_text(&mut slot.options, &job.options.join("\n"));
        put_text(&mut slot.repository, &job.repository);
        put_text(&mut slot.pg_dump, &job.pg_dump);
        self.with_lock(|table| {
            let index = table
                .slots
                .iter()
                .position(|s| s.state == AgentState::Free)
                .or_else(|| {
                    table
                        .slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.state.is_finished())
                        .min_by_key(|(_, s)| s.finished_at_us)
                        .map(|(index, _)| index)
                })
                .ok_or(ClaimError::Full)?;
            // Ids grow and start from the clock after a restart, so an id
            // from before a restart never names a new agent.
            let id = (table.last_agent_id + 1).max(launcher_now_us / 1000);
            table.last_agent_id = id;
            slot.agent_id = id;
            table.slots[index] = slot;
            Ok((index, id))
        })
    }

    /// The slot of agent `id`, copied.
    pub fn get(&self, id: i64) -> Option<(usize, AgentSlot)> {
        self.with_lock(|table| {
            table
                .slots
                .iter()
                .position(|s| s.state != AgentState::Free && s.agent_id == id)
                .map(|index| (index, table.slots[index]))
        })
    }

    /// The slot at `index` if it still belongs to agent `id`, copied.
    pub fn at(&self, index: usize, id: i64) -> Option<AgentSlot> {
        self.with_lock(|table| {
            table
                .slots
                .get(index)
                .filter(|s| s.state != AgentState::Free && s.agent_id == id)
                .copied()
        })
    }

    /// Every agent still listed, oldest first.
    pub fn all(&self) -> Vec<AgentSlot> {
        let mut slots: Vec<AgentSlot> = self.with_lock(|table| {
            table
                .slots
                .iter()
                .filter(|s| s.state != AgentState::Free)
                .copied()
                .collect()
        });
        slots.sort_by_key(|s| s.agent_id);
        slots
    }

    /// Changes the slot at `index` if it still belongs to agent `id`, and
    /// wakes the waiters when `wake`.
    pub fn update(&self, index: usize, id: i64, wake: bool, f: impl FnOnce(&mut AgentSlot)) {
        self.with_lock(|table| {
            if let Some(slot) = table
                .slots
                .get_mut(index)
                .filter(|s| s.state != AgentState::Free && s.agent_id == id)
            {
                f(slot);
            }
        });
        if wake {
            self.changed.broadcast();
        }
    }

    /// Ends an agent that never ran (its worker could not start).
    pub fn fail(&self, index: usize, id: i64, message: &str) {
        self.update(index, id, true, |slot| {
            if !slot.state.is_finished() {
                slot.state = AgentState::Error;
                slot.finished_at_us = now_us();
                slot.set_message(message);
            }
        });
    }

    /// Sleeps until some agent changes or `timeout_ms` passes; raises on
    /// a cancel or terminate request of this session.
    pub fn sleep(&self, timeout_ms: i64) {
        self.changed.sleep(timeout_ms);
    }

    pub fn stop_sleeping(&self) {
        self.changed.stop_sleeping();
    }
}
