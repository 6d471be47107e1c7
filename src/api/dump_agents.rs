//! Dump agents from SQL: launch, list, wait, cancel.

use std::time::Duration;

use blockbackup_core::dump::request::DumpRequest;
use pgrx::prelude::*;

use crate::agent::agent_table::AgentSlot;
use crate::agent::launch;
use crate::errors::required;
use crate::{errors, shared_state};

/// A `launch_dump_agent` / `wait_dump_agent` row: agent_id, status,
/// exit_code, output_path, bytes, duration_ms, message, backup_id.
type ResultRow = (
    i64,
    String,
    Option<i32>,
    Option<String>,
    i64,
    i64,
    Option<String>,
    Option<String>,
);

fn result_row(slot: AgentSlot) -> ResultRow {
    (
        slot.agent_id,
        slot.state.as_str().to_owned(),
        slot.exit_code,
        slot.output_path(),
        slot.bytes,
        slot.duration_ms(),
        slot.message(),
        slot.backup_id(),
    )
}

/// A one-dimensional text array without NULLs, as a list.
fn text_list(array: Array<'_, String>, name: &str) -> Vec<String> {
    // SAFETY: the array pointer is valid for the call; only its header is
    // read, and the Array is rebuilt from it at once.
    let raw = array.into_array_type();
    let dimensions = unsafe { (*raw).ndim };
    if dimensions > 1 {
        errors::invalid_argument(
            format!("{name} must be a one-dimensional array, got {dimensions} dimensions"),
            "Pass one option per element, e.g. '{--schema=app,--no-owner}'.",
        );
    }
    let array = unsafe {
        Array::<String>::from_datum(pgrx::pg_sys::Datum::from(raw), false)
            .unwrap_or_else(|| errors::null_argument(name))
    };
    array
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.unwrap_or_else(|| errors::null_argument(&format!("{name}[{}]", i + 1)))
        })
        .collect()
}

/// 0 stands for "not yet".
fn timestamp(unix_us: i64) -> Option<TimestampWithTimeZone> {
    super::backups::timestamp(Some(unix_us).filter(|&us| us != 0))
}

#[pg_extern(volatile)]
fn launch_dump_agent(
    dbname: Option<String>,
    format: default!(Option<String>, "'custom'"),
    jobs: default!(Option<i32>, 1),
    extra_args: default!(Option<Array<'_, String>>, "'{}'"),
    wait: default!(Option<bool>, true),
) -> TableIterator<
    'static,
    (
        name!(agent_id, i64),
        name!(status, String),
        name!(exit_code, Option<i32>),
        name!(output_path, Option<String>),
        name!(bytes, i64),
        name!(duration_ms, i64),
        name!(message, Option<String>),
        name!(backup_id, Option<String>),
    ),
> {
    shared_state::ensure_preloaded();
    let dbname = required(dbname, "dbname");
    let format = required(format, "format");
    let jobs = required(jobs, "jobs");
    let wait = required(wait, "wait");
    let extra_args = text_list(required(extra_args, "extra_args"), "extra_args");
    let request = DumpRequest::new(&dbname, &format, i64::from(jobs), &extra_args)
        .unwrap_or_else(|e| errors::dump_request(e));
    TableIterator::once(result_row(launch::launch(request, wait)))
}

#[pg_extern(volatile)]
fn wait_dump_agent(
    agent_id: Option<i64>,
    timeout_ms: default!(Option<i32>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(agent_id, i64),
        name!(status, String),
        name!(exit_code, Option<i32>),
        name!(output_path, Option<String>),
        name!(bytes, i64),
        name!(duration_ms, i64),
        name!(message, Option<String>),
        name!(backup_id, Option<String>),
    ),
> {
    shared_state::ensure_preloaded();
    let agent_id = required(agent_id, "agent_id");
    let timeout = match timeout_ms {
        Some(ms) if ms < 0 => errors::invalid_argument(
            format!("timeout_ms must not be negative, got {ms}"),
            "Pass a number of milliseconds, or NULL to wait until the agent ends.",
        ),
        Some(ms) => Some(Duration::from_millis(ms as u64)),
        None => None,
    };
    TableIterator::once(result_row(launch::wait(agent_id, timeout)))
}

#[pg_extern(volatile)]
fn cancel_dump_agent(agent_id: Option<i64>) -> bool {
    shared_state::ensure_preloaded();
    let agent_id = required(agent_id, "agent_id");
    launch::cancel(agent_id)
}

#[pg_extern(volatile)]
fn dump_agents() -> TableIterator<
    'static,
    (
        name!(agent_id, i64),
        name!(pid, Option<i32>),
        name!(dbname, String),
        name!(status, String),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(finished_at, Option<TimestampWithTimeZone>),
        name!(exit_code, Option<i32>),
        name!(output_path, Option<String>),
        name!(bytes, i64),
        name!(message, Option<String>),
        name!(backup_id, Option<String>),
        name!(format, String),
        name!(worker_pid, Option<i32>),
    ),
> {
    shared_state::ensure_preloaded();
    TableIterator::new(launch::list().into_iter().map(|slot| {
        (
            slot.agent_id,
            (slot.dump_pid != 0).then_some(slot.dump_pid),
            slot.database(),
            slot.state.as_str().to_owned(),
            timestamp(slot.started_at_us),
            timestamp(slot.finished_at_us),
            slot.exit_code,
            slot.output_path(),
            slot.bytes,
            slot.message(),
            slot.backup_id(),
            slot.format(),
            (slot.worker_pid != 0 && !slot.state.is_finished()).then_some(slot.worker_pid),
        )
    }))
}
