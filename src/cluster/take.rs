//! `take_cluster_backup`: every node's backup at once, then one restore
//! point for all of them, attached to each node's backup.
//!
//! 1. Checks (Citus, superuser, coordinator, mode, name), the cluster lock
//!    in the coordinator's repository, and the set recorded RUNNING.
//! 2. One psql session per node holds that node's WAL until step 5 ends
//!    (see `wal_holds`).
//! 3. One psql per node runs that node's `take_backup`; the first node to
//!    fail has the others cancelled, and the set ends in ERROR naming the
//!    failed nodes, with no restore point made.
//! 4. `citus_create_restore_point` (see `coordinator`), timed.
//! 5. One psql per node runs `attach_restore_point`, which finds the point
//!    in that node's WAL and stores the WAL up to it in its backup.
//! 6. The set is DONE only when every node has both.

use std::panic::AssertUnwindSafe;

use blockbackup_core::civil_time::unix_now_us as now_us;
use blockbackup_core::cluster::node_command::{
    psql_arguments, NodeCommand, NodeOutput, NodeTarget,
};
use blockbackup_core::cluster::sql_literal;
use blockbackup_core::repository::cluster_sets::{
    check_restore_point_name, generated_restore_point_name, ClusterNode, ClusterSet, NodeStatus,
};
use blockbackup_core::repository::Repository;
use blockbackup_core::Lsn;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;

use super::coordinator::{self, CitusNode};
use super::errors;
use super::node_psql::{node_conninfo, psql_environment, POLL};
use super::wal_holds::{self, WalHolds};
use crate::backup::repository_access;

pub fn take(mode: &str, restore_point: Option<&str>) -> ClusterSet {
    let citus_version = coordinator::require_coordinator();
    if !matches!(mode, "auto" | "full" | "incremental") {
        errors::bad_mode(mode);
    }
    crate::shared_state::ensure_preloaded();
    let psql = crate::server_paths::client_program("psql");
    if !psql.is_file() {
        errors::psql_missing(&psql);
    }
    let repo = repository_access::open_for_writing();
    let lock = repo
        .cluster_lock()
        .unwrap_or_else(|e| crate::errors::repository(e));
    repo.mark_interrupted_cluster_sets(&lock, now_us())
        .unwrap_or_else(|e| crate::errors::repository(e));
    let start = now_us();
    let name = restore_point
        .map(str::to_owned)
        .unwrap_or_else(|| generated_restore_point_name(start));
    check_name_is_new(&repo, &name);

    let nodes = coordinator::nodes();
    let set_id = repo
        .new_cluster_set_id(start)
        .unwrap_or_else(|e| crate::errors::repository(e));
    let mut set = ClusterSet::new(
        set_id,
        name.clone(),
        mode.to_owned(),
        start,
        citus_version,
        nodes.iter().map(pending_node).collect(),
    );
    save(&repo, &set);
    let targets = targets(&set, &nodes);

    // 2. Every node's WAL held.
    let mut holds = match WalHolds::take(&psql, &targets, &wal_holds::slot_name(&set.set_id)) {
        Ok(holds) => holds,
        Err(failed) => {
            for (index, reason) in failed {
                fail_node(
                    &mut set.nodes[index],
                    format!("could not hold its WAL: {reason}"),
                );
            }
            fail_set(&repo, &mut set, errors::holds_failed);
        }
    };

    // 3. Every node's backup at once.
    let query = format!(
        "SELECT pg_catalog.row_to_json(b)::text FROM blockbackup.take_backup(mode => {}) b",
        sql_literal(mode)
    );
    mark_all(&mut set, NodeStatus::Running);
    save(&repo, &set);
    let outcomes = run_on_every_node(&psql, &targets, |_| query.clone());
    for (node, outcome) in set.nodes.iter_mut().zip(&outcomes) {
        match outcome.as_ref().map(|stdout| backup_of(stdout)) {
            Ok(Some((backup_id, mode))) => {
                node.backup_id = Some(backup_id);
                node.mode = Some(mode);
                node.status = NodeStatus::Running;
            }
            Ok(None) => fail_node(node, "take_backup printed no backup"),
            Err(Failure::Failed(message)) => fail_node(node, message),
            Err(Failure::Cancelled(message)) => {
                node.status = NodeStatus::Cancelled;
                node.message = Some(message.clone());
            }
        }
    }
    end_if_failed(&repo, &mut set, errors::nodes_failed);

    // 4. The common restore point.
    let point = restore_point_or_fail(&repo, &set, &name);
    set.commits_blocked_us = Some(point.blocked.as_micros() as i64);
    save(&repo, &set);

    // 5. Attached to every node's backup.
    let outcomes = run_on_every_node(&psql, &targets, |index| {
        let backup_id = set.nodes[index].backup_id.clone().unwrap_or_default();
        format!(
            "SELECT restore_point_lsn::text FROM blockbackup.attach_restore_point({}, {})",
            sql_literal(&backup_id),
            sql_literal(&name)
        )
    });
    for (index, (node, outcome)) in set.nodes.iter_mut().zip(&outcomes).enumerate() {
        match outcome {
            Ok(stdout) => match stdout.trim().parse::<Lsn>() {
                Ok(lsn) => {
                    node.restore_point_lsn = Some(lsn);
                    node.status = NodeStatus::Done;
                }
                Err(_) => fail_node(node, format!("attach_restore_point printed {stdout:?}")),
            },
            Err(Failure::Failed(message)) | Err(Failure::Cancelled(message)) => {
                match holds.ended_early(index) {
                    Some(why) => fail_node(
                        node,
                        format!("{message} (its WAL hold had ended early: {why})"),
                    ),
                    None => fail_node(node, message),
                }
            }
        }
    }
    holds.release();
    // The coordinator's point must be the record Citus wrote, not a later
    // one of the same name.
    if let Some(found) = set
        .nodes
        .iter()
        .find(|node| node.group_id == 0)
        .and_then(|node| node.restore_point_lsn)
        .filter(|&lsn| lsn != point.coordinator_lsn)
    {
        let message = format!(
            "the coordinator's restore point was found at {found}, not where Citus wrote it ({})",
            point.coordinator_lsn
        );
        set.fail(message.clone(), now_us());
        save(&repo, &set);
        errors::set_failed(message, &set.set_id);
    }
    end_if_failed(&repo, &mut set, errors::nodes_failed);
    if let Err(message) = set.finish(now_us()) {
        set.fail(message.clone(), now_us());
        save(&repo, &set);
        errors::set_failed(message, &set.set_id);
    }
    save(&repo, &set);
    drop(lock);
    set
}

/// Citus's restore point; when it cannot be made (its locks not had in
/// time, a worker gone, any error Citus raises), the set is recorded ERROR
/// with that message before the error goes on to the caller, so
/// `cluster_backups()` tells at once, not at the next call.
fn restore_point_or_fail(
    repo: &Repository,
    set: &ClusterSet,
    name: &str,
) -> coordinator::CommonRestorePoint {
    let repo = AssertUnwindSafe(repo);
    let set = AssertUnwindSafe(set);
    PgTryBuilder::new(|| coordinator::create_restore_point(name))
        .catch_others(|error| {
            let message = match &error {
                CaughtError::PostgresError(report)
                | CaughtError::ErrorReport(report)
                | CaughtError::RustPanic {
                    ereport: report, ..
                } => report.message().to_owned(),
            };
            let mut failed = set.clone();
            failed.fail(format!("no restore point: {message}"), now_us());
            // The error below is what the caller must see; a set that could
            // not be rewritten is marked interrupted by the next call.
            let _ = repo.write_cluster_set(&failed);
            error.rethrow()
        })
        .execute()
}

fn pending_node(node: &CitusNode) -> ClusterNode {
    ClusterNode {
        node_id: node.node_id,
        group_id: node.group_id,
        host: node.host.clone(),
        port: node.port,
        status: NodeStatus::Pending,
        backup_id: None,
        mode: None,
        restore_point_lsn: None,
        message: None,
    }
}

/// How each node is reached, in the set's order: the coordinator through
/// this server's own socket, the workers as pg_dist_node names them; all
/// in this database, as the session's user.
fn targets(set: &ClusterSet, nodes: &[CitusNode]) -> Vec<NodeTarget> {
    let database = coordinator::current_database();
    let user = crate::agent::launch::session_role();
    set.nodes
        .iter()
        .map(|node| {
            let citus = nodes
                .iter()
                .find(|n| n.node_id == node.node_id)
                .map_or((node.host.clone(), node.port), |n| (n.host.clone(), n.port));
            let (host, port) = if node.group_id == 0 {
                (
                    crate::agent::launch::socket_directory(),
                    u16::try_from(unsafe { pg_sys::PostPortNumber }).unwrap_or(5432),
                )
            } else {
                citus
            };
            NodeTarget {
                host,
                port,
                database: database.clone(),
                user: user.clone(),
            }
        })
        .collect()
}

fn check_name_is_new(repo: &Repository, name: &str) {
    if let Err(message) = check_restore_point_name(name) {
        crate::errors::invalid_argument(
            message,
            "A restore point name is 1 to 63 bytes without control characters.",
        );
    }
    let sets = repo
        .cluster_sets()
        .unwrap_or_else(|e| crate::errors::repository(e));
    if let Some(set) = sets.iter().find(|set| set.restore_point == name) {
        errors::restore_point_used(name, &set.set_id);
    }
}

fn save(repo: &Repository, set: &ClusterSet) {
    repo.write_cluster_set(set)
        .unwrap_or_else(|e| crate::errors::repository(e));
}

fn mark_all(set: &mut ClusterSet, status: NodeStatus) {
    for node in &mut set.nodes {
        node.status = status;
    }
}

fn fail_node(node: &mut ClusterNode, message: impl Into<String>) {
    node.status = NodeStatus::Error;
    node.message = Some(message.into());
}

/// Ends the set in ERROR if any node failed (see [`fail_set`]).
fn end_if_failed(repo: &Repository, set: &mut ClusterSet, error: fn(String, &str) -> !) {
    if set
        .nodes
        .iter()
        .any(|node| node.status == NodeStatus::Error)
    {
        fail_set(repo, set, error);
    }
}

/// Ends the set in ERROR naming its failed nodes, and raises `error` with
/// them.
fn fail_set(repo: &Repository, set: &mut ClusterSet, error: fn(String, &str) -> !) -> ! {
    let summary = set
        .nodes
        .iter()
        .filter(|node| node.status == NodeStatus::Error)
        .map(|node| {
            format!(
                "node {}: {}",
                node.label(),
                node.message.as_deref().unwrap_or("failed")
            )
        })
        .collect::<Vec<String>>()
        .join("; ");
    set.fail(summary.clone(), now_us());
    save(repo, set);
    error(summary, &set.set_id)
}

/// (backup_id, mode) from take_backup's row as JSON.
fn backup_of(stdout: &str) -> Option<(String, String)> {
    let row: serde_json::Value = serde_json::from_str(stdout.trim()).ok()?;
    Some((
        row.get("backup_id")?.as_str()?.to_owned(),
        row.get("mode")?.as_str()?.to_owned(),
    ))
}

enum Failure {
    /// The node's command failed by itself.
    Failed(String),
    /// Stopped because another node failed.
    Cancelled(String),
}

/// Runs `query_of(index)` on every node at once; on the first failure the
/// others are cancelled. Returns each node's output or failure, in order.
/// An error of this session (a cancel, a terminate) cancels them all: the
/// commands are dropped while unwinding, which cancels and reaps them.
fn run_on_every_node(
    psql: &std::path::Path,
    targets: &[NodeTarget],
    query_of: impl Fn(usize) -> String,
) -> Vec<Result<String, Failure>> {
    let environment = psql_environment();
    let mut results: Vec<Option<Result<String, Failure>>> =
        (0..targets.len()).map(|_| None).collect();
    let mut running: Vec<(usize, NodeCommand)> = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        let arguments = psql_arguments(&node_conninfo(target), &query_of(index));
        match NodeCommand::spawn(psql, &arguments, &environment) {
            Ok(command) => running.push((index, command)),
            Err(error) => {
                results[index] = Some(Err(Failure::Failed(format!(
                    "could not start psql: {error}"
                ))))
            }
        }
    }
    let mut cancelling = results.iter().any(Option::is_some);
    while !running.is_empty() {
        if cancelling {
            for (_, command) in &mut running {
                command.cancel();
            }
        }
        let mut still = Vec::new();
        for (index, mut command) in running {
            match command.poll() {
                Ok(None) => still.push((index, command)),
                Ok(Some(output)) => {
                    let result = outcome(output, cancelling);
                    cancelling |= result.is_err();
                    results[index] = Some(result);
                }
                Err(error) => {
                    cancelling = true;
                    results[index] = Some(Err(Failure::Failed(format!(
                        "could not watch psql: {error}"
                    ))));
                }
            }
        }
        running = still;
        if !running.is_empty() {
            std::thread::sleep(POLL);
            pg_sys::check_for_interrupts!();
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Failure::Failed("did not run".into()))))
        .collect()
}

fn outcome(output: NodeOutput, cancelling: bool) -> Result<String, Failure> {
    if output.succeeded() {
        Ok(output.stdout)
    } else if cancelling {
        Err(Failure::Cancelled(format!(
            "cancelled because another node failed ({})",
            output.failure()
        )))
    } else {
        Err(Failure::Failed(output.failure()))
    }
}
