//! The cluster backup's errors, with their SQLSTATEs and hints.

use blockbackup_core::Lsn;
use pgrx::PgSqlErrorCode;

use crate::errors::raise;

pub fn citus_missing(database: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("Citus is not installed in database \"{database}\": a cluster backup needs a Citus coordinator"),
        None,
        Some("Call take_cluster_backup in the database where CREATE EXTENSION citus was run, on the coordinator; a single server is backed up with take_backup."),
    )
}

pub fn not_superuser() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        "only a superuser can take a cluster backup".into(),
        Some("citus_create_restore_point, which makes the set's common restore point, is for superusers only.".into()),
        Some("Connect to the coordinator as a superuser."),
    )
}

pub fn not_coordinator(group_id: i32, coordinator: Option<String>) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("this node is a Citus worker (group {group_id}), not the coordinator"),
        None,
        Some(&match coordinator {
            Some(at) => format!("Call take_cluster_backup on the coordinator ({at})."),
            None => "Call take_cluster_backup on the coordinator.".to_owned(),
        }),
    )
}

pub fn no_coordinator_row() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "the coordinator is not in pg_dist_node".into(),
        Some(
            "A cluster backup restores every node from pg_dist_node, the coordinator included."
                .into(),
        ),
        Some("SELECT citus_set_coordinator_host('<host the workers reach it by>', <port>);"),
    )
}

pub fn restore_point_used(name: &str, set_id: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
        format!("restore point \"{name}\" is already the restore point of cluster backup {set_id}"),
        None,
        Some("Pass a new name, or leave restore_point out to have one made from the time: recovery stops at the first restore point of a name."),
    )
}

pub fn bad_mode(mode: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("invalid mode \"{mode}\""),
        None,
        Some("Pass 'auto', 'full' or 'incremental'."),
    )
}

pub fn nodes_failed(summary: String, set_id: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
        format!("cluster backup {set_id} failed: {summary}"),
        Some("The other nodes' backups were cancelled (ERROR on each node) and no restore point was made.".into()),
        Some("See blockbackup.cluster_backups() and each failed node's server log; take a new cluster backup once the node is back."),
    )
}

pub fn holds_failed(summary: String, set_id: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
        format!("cluster backup {set_id} failed: {summary}"),
        Some("No node's backup was started and no restore point was made.".into()),
        Some("Every node must be reachable and have two replication slots free while the set runs (max_replication_slots): one holds its WAL until the restore point is attached, one its backup's."),
    )
}

pub fn set_failed(message: String, set_id: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("cluster backup {set_id} failed: {message}"),
        None,
        Some("See blockbackup.cluster_backups(); the set is not restorable."),
    )
}

pub fn restore_point_busy(name: &str, tries: u32) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        format!("could not take Citus's locks for restore point \"{name}\" in {tries} tries"),
        Some("A long DDL statement, a node change or 2PC recovery held them; waiting longer would hold up every distributed commit.".into()),
        Some("Take the cluster backup again when no long DDL runs."),
    )
}

pub fn restore_point_not_found(name: &str, from: Lsn, to: Lsn) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("no restore point named \"{name}\" in this server's WAL from {from} to {to}"),
        None,
        Some("Attach a restore point written after the backup stopped (citus_create_restore_point or pg_create_restore_point)."),
    )
}

pub fn restore_point_twice(name: &str, first: Lsn, second: Lsn) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
        format!("two restore points named \"{name}\" after the backup (ending at {first} and at {second})"),
        Some("Recovery would stop at the first one.".into()),
        Some("Use a name that is written once."),
    )
}

pub fn psql_missing(program: &std::path::Path) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
        format!("psql was not found at \"{}\"", program.display()),
        Some(
            "A cluster backup reaches every node with the psql next to this server's postgres."
                .into(),
        ),
        Some("Install the PostgreSQL client programs of this server's version."),
    )
}
