//! Citus cluster backups from SQL: take a set on the coordinator, list the
//! sets, and (on every node) attach a restore point written by another
//! program to a backup.

use blockbackup_core::repository::cluster_sets::ClusterSet;
use pgrx::prelude::*;
use pgrx::JsonB;

use super::backups::timestamp;
use crate::backup::{repository_access, restore_point};
use crate::cluster::take;
use crate::errors::required;
use crate::shared_state;
use crate::sql_types::PgLsn;

#[pg_extern(volatile)]
fn take_cluster_backup(
    mode: default!(Option<String>, "'auto'"),
    restore_point: default!(Option<String>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(node, String),
        name!(backup_id, Option<String>),
        name!(mode, Option<String>),
        name!(status, String),
        name!(restore_point, String),
        name!(restore_point_lsn, Option<PgLsn>),
    ),
> {
    let mode = required(mode, "mode");
    let set = take::take(&mode, restore_point.as_deref());
    let rows: Vec<_> = set
        .nodes
        .iter()
        .map(|node| {
            (
                node.label(),
                node.backup_id.clone(),
                node.mode.clone(),
                node.status.as_str().to_owned(),
                set.restore_point.clone(),
                node.restore_point_lsn.map(PgLsn),
            )
        })
        .collect();
    TableIterator::new(rows)
}

#[pg_extern(volatile)]
fn cluster_backups() -> TableIterator<
    'static,
    (
        name!(set_id, String),
        name!(restore_point, String),
        name!(status, String),
        name!(mode, String),
        name!(start_time, Option<TimestampWithTimeZone>),
        name!(end_time, Option<TimestampWithTimeZone>),
        name!(commits_blocked_ms, Option<f64>),
        name!(citus_version, String),
        name!(nodes, JsonB),
        name!(message, Option<String>),
    ),
> {
    shared_state::ensure_preloaded();
    let repo = repository_access::open_existing(&repository_access::repository_location())
        .unwrap_or_else(|e| crate::errors::repository(e));
    let sets = repo
        .cluster_sets()
        .unwrap_or_else(|e| crate::errors::repository(e));
    TableIterator::new(sets.into_iter().map(row))
}

fn row(
    set: ClusterSet,
) -> (
    String,
    String,
    String,
    String,
    Option<TimestampWithTimeZone>,
    Option<TimestampWithTimeZone>,
    Option<f64>,
    String,
    JsonB,
    Option<String>,
) {
    let nodes = serde_json::Value::Array(
        set.nodes
            .iter()
            .map(|node| {
                serde_json::json!({
                    "node": node.label(),
                    "node_id": node.node_id,
                    "group_id": node.group_id,
                    "backup_id": node.backup_id,
                    "mode": node.mode,
                    "status": node.status.as_str(),
                    "restore_point_lsn": node.restore_point_lsn.map(|lsn| lsn.to_string()),
                    "message": node.message,
                })
            })
            .collect(),
    );
    (
        set.set_id,
        set.restore_point,
        set.status.as_str().to_owned(),
        set.mode,
        timestamp(Some(set.start_time_us)),
        timestamp(set.end_time_us),
        set.commits_blocked_us.map(|us| us as f64 / 1000.0),
        set.citus_version,
        JsonB(nodes),
        set.message,
    )
}

/// Attaches to a backup the restore point `name` that another program
/// (a cluster backup's citus_create_restore_point, or
/// pg_create_restore_point) wrote into this server's WAL after the backup
/// stopped: its WAL is stored in the backup, and restore_backup(...,
/// recovery_target_name => name) works as for create_restore_point.
#[pg_extern(volatile)]
fn attach_restore_point(
    backup_id: Option<String>,
    name: Option<String>,
) -> TableIterator<
    'static,
    (
        name!(backup_id, String),
        name!(restore_point_lsn, PgLsn),
        name!(wal_segments, i32),
    ),
> {
    shared_state::ensure_preloaded();
    let backup_id = required(backup_id, "backup_id");
    let name = required(name, "name");
    let attached = restore_point::attach(&name, &backup_id);
    TableIterator::once((
        attached.backup_id,
        PgLsn(attached.lsn),
        attached.wal_segments as i32,
    ))
}
