//! Where the typed errors of the pure crate become `ereport`s with SQLSTATEs.

use blockbackup_core::backup::copy::CopyError;
use blockbackup_core::dump::request::DumpRequestError;
use blockbackup_core::repository::RepositoryError;
use blockbackup_core::restore::RestoreError;
use blockbackup_core::storage::s3::{S3Error, S3Failure};
use blockbackup_core::wal::ArchiveError;
use blockbackup_core::{CoverageError, SummaryDirError};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

pub(crate) fn raise(
    code: PgSqlErrorCode,
    message: String,
    detail: Option<String>,
    hint: Option<&str>,
) -> ! {
    let mut report = ErrorReport::new(code, message, "pg_blockbackup");
    if let Some(detail) = detail {
        report = report.set_detail(detail);
    }
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub fn not_preloaded() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "pg_blockbackup is not loaded by shared_preload_libraries".into(),
        None,
        Some("Add pg_blockbackup to shared_preload_libraries in postgresql.conf and restart the server."),
    )
}

pub fn summarization_disabled() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "WAL summarization is disabled".into(),
        None,
        Some("Set blockbackup.summarize_wal = on and reload the configuration."),
    )
}

/// The same rule for every function: a NULL where a value is needed is
/// 22004, naming the argument.
pub fn null_argument(name: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        format!("argument {name} must not be NULL"),
        None,
        Some("Pass a value, or leave the argument out to get its default."),
    )
}

/// The value of an argument that must not be NULL.
pub fn required<T>(value: Option<T>, name: &str) -> T {
    value.unwrap_or_else(|| null_argument(name))
}

/// A role lacks EXECUTE on a server function a backup calls.
pub fn missing_privilege(function: &str, what: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("permission denied to {what}: the current role may not execute {function}"),
        None,
        Some(&format!(
            "A superuser can GRANT EXECUTE ON FUNCTION {function} TO the backup role (see the README's security section)."
        )),
    )
}

/// A role without superuser rights restoring while
/// blockbackup.restore_directory is unset.
pub fn restore_directory_unset() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        "only a superuser can restore while blockbackup.restore_directory is unset".into(),
        Some("Restores are written with the server's OS user; a superuser chooses where.".into()),
        Some("A superuser can ALTER SYSTEM SET blockbackup.restore_directory = '/srv/restores'; SELECT pg_reload_conf();"),
    )
}

/// A role without superuser rights passing restore_backup's settings.
pub fn restore_settings_not_superuser() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        "only a superuser may pass settings to restore_backup".into(),
        Some("A setting of the restored configuration (archive_command, say) runs what it says once the copy starts.".into()),
        Some("A superuser restores with settings, or edits the copy's postgresql.auto.conf before starting it."),
    )
}

pub fn invalid_argument(message: String, hint: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
        None,
        Some(hint),
    )
}

pub fn wait_timed_out(requested: String, summarized: String, timeout_ms: i32) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("WAL summarization did not reach {requested} within {timeout_ms} ms"),
        Some(format!("WAL is summarized up to {summarized}.")),
        Some("Check blockbackup.summarizer_status() and the server log; on an idle server, WAL that is not yet flushed is summarized once it is."),
    )
}

pub fn coverage(error: CoverageError) -> ! {
    let (code, hint) = match &error {
        CoverageError::InvalidRange { .. } => (
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "Pass the older LSN first.",
        ),
        CoverageError::NotYetSummarized { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Call blockbackup.wait_for_summary(end_lsn) first, or choose an end LSN that blockbackup.summaries() covers.",
        ),
        CoverageError::BeforeOldestSummary { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Choose a start LSN that blockbackup.summaries() covers; older changes are only known from a full backup.",
        ),
        CoverageError::Gap { .. } | CoverageError::HistoryDoesNotCover { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Changes inside a gap cannot be known: take a full backup, and keep blockbackup.summarize_wal on so that the summarizer's replication slot holds WAL.",
        ),
    };
    raise(
        code,
        format!("changed blocks cannot be computed: {error}"),
        None,
        Some(hint),
    )
}

pub fn summary_access(error: SummaryDirError) -> ! {
    let code = match &error {
        SummaryDirError::Io { .. } => PgSqlErrorCode::ERRCODE_IO_ERROR,
        _ => PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
    };
    raise(
        code,
        format!("could not read WAL summaries: {error}"),
        None,
        Some("A damaged summary file cannot be trusted: remove it (and every later one on its timeline) only together with taking a new full backup, or restore it from a copy."),
    )
}

pub fn directory_dump_needs_local_repository(repository: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("a dump in the directory format needs a repository in a directory, and \"{repository}\" is in S3"),
        Some("pg_dump writes the directory format into a directory by itself; the other formats are streamed into the bucket.".into()),
        Some("Use format => 'custom' (or 'tar' or 'plain'), or point blockbackup.repository at a directory."),
    )
}

pub fn repository_unset() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "blockbackup.repository is not set".into(),
        None,
        Some("ALTER SYSTEM SET blockbackup.repository = '/path/outside/the/data/directory'; SELECT pg_reload_conf();"),
    )
}

pub fn no_parent_backup() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "no backup in the repository can be the parent of an incremental backup".into(),
        Some("A parent must be DONE or OK, of this cluster, and on the server's current timeline history.".into()),
        Some("Take a full backup first: SELECT * FROM blockbackup.take_backup('full');"),
    )
}

pub fn incremental_impossible(parent: &str, reason: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("an incremental backup on {parent} is not possible: {reason}"),
        None,
        Some("Take a full backup, or use mode 'auto', which falls back to a full backup."),
    )
}

/// A backup failed for a reason that is neither the disk nor the user's.
pub fn backup_failed(message: String) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_IO_ERROR,
        format!("backup failed: {message}"),
        None,
        Some(BACKUP_FAILED_HINT),
    )
}

/// The copy threads stopped; a full disk gets its own SQLSTATE.
pub fn backup_copy(error: CopyError) -> ! {
    let (code, detail) = match &error {
        CopyError::Read { source, .. } | CopyError::Write { source, .. }
            if is_disk_full(source) =>
        {
            (PgSqlErrorCode::ERRCODE_DISK_FULL, None)
        }
        CopyError::Write { source, .. } => match store_failure(source) {
            Some((code, hint)) => (code, Some(hint.to_owned())),
            None => (PgSqlErrorCode::ERRCODE_IO_ERROR, None),
        },
        CopyError::Cancelled => (PgSqlErrorCode::ERRCODE_QUERY_CANCELED, None),
        _ => (PgSqlErrorCode::ERRCODE_IO_ERROR, None),
    };
    raise(
        code,
        format!("backup failed: {error}"),
        detail,
        Some(BACKUP_FAILED_HINT),
    )
}

const BACKUP_FAILED_HINT: &str =
    "The backup is marked ERROR and earlier backups are untouched; fix the cause and take the backup again.";

/// The WAL written during a backup approaches max_slot_wal_keep_size.
pub fn backup_needs_more_wal(held: u64) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        format!(
            "backup failed: it needs the {} MB of WAL written since it started, which is more than max_slot_wal_keep_size keeps",
            held / (1024 * 1024)
        ),
        Some("A checkpoint would remove that WAL and invalidate the backup's replication slot.".into()),
        Some("Raise max_slot_wal_keep_size, or take the backup when less WAL is written (the backup is marked ERROR)."),
    )
}

pub fn session_backup_running() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "a backup started with backup_start() is already running in this session".into(),
        None,
        Some("Finish it with SELECT * FROM blockbackup.backup_stop();"),
    )
}

pub fn no_session_backup() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "no backup was started with backup_start() in this session".into(),
        None,
        Some("backup_start() and backup_stop() must be called in the same session."),
    )
}

/// The SQLSTATE and hint of an object store's failure inside `error`:
/// which one it was (unreachable, credentials refused, no bucket, TLS)
/// decides what the user should do.
fn store_failure(error: &std::io::Error) -> Option<(PgSqlErrorCode, &'static str)> {
    let s3 = S3Error::of(error)?;
    let code = match s3.failure {
        S3Failure::Unreachable | S3Failure::Tls => PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
        S3Failure::Credentials => PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
        S3Failure::NoSuchBucket => PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
        S3Failure::NoSuchKey | S3Failure::Refused | S3Failure::BadAnswer => {
            PgSqlErrorCode::ERRCODE_IO_ERROR
        }
    };
    Some((code, s3.hint()))
}

fn is_disk_full(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(28)
}

pub fn repository(error: RepositoryError) -> ! {
    use RepositoryError as E;
    let error = match error {
        E::Archive(error) => archive(error),
        error => error,
    };
    let (code, hint) = match &error {
        E::Io { source, .. } if is_disk_full(source) => {
            (PgSqlErrorCode::ERRCODE_DISK_FULL, "Free space in the repository, or expire old backups.")
        }
        E::Io { source, .. } => store_failure(source).unwrap_or((
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            "Check that the server's OS user can read and write the repository.",
        )),
        E::S3Config(_) => (
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "Set blockbackup.s3_endpoint, blockbackup.s3_key and blockbackup.s3_key_secret (superuser only) for a repository at s3://<bucket>/<prefix>.",
        ),
        E::InvalidBackupId { .. } => {
            (PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "Use a backup_id from blockbackup.backups().")
        }
        E::BackupNotFound { .. } => {
            (PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, "SELECT backup_id FROM blockbackup.backups(); lists them.")
        }
        E::Busy { .. } => (PgSqlErrorCode::ERRCODE_OBJECT_IN_USE, "Wait until the other backup or deletion ends."),
        E::BeingRestored { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            "Wait until restore_backup (or the offline restore) that reads it has ended.",
        ),
        E::HasChildren { .. } => (
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            "Pass cascade => true to delete the backups that depend on it too.",
        ),
        E::MayBeParentOfDamaged { .. } => (
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            "blockbackup.backups() shows the damaged entry as CORRUPT with its problem; restore its backup.json from a copy, or delete that entry first.",
        ),
        E::NotARepository { .. } | E::NotEmpty { .. } | E::OtherCluster { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Point blockbackup.repository at an empty directory or at this cluster's repository.",
        ),
        E::IsDump { .. } => (
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            "Restore a dump with pg_restore from the output_path dump_agents() or the catalog shows.",
        ),
        E::StillRunning { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            "SELECT blockbackup.cancel_dump_agent(agent_id) stops a running dump.",
        ),
        E::NotUsable { .. } | E::MissingParent { .. } | E::BrokenChain { .. } | E::ForeignBackup { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Check blockbackup.backups() and validate_backup(); restore or build on another backup.",
        ),
        _ => (
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            "The repository's catalog is damaged; validate_backup() names what is wrong.",
        ),
    };
    raise(
        code,
        format!("backup repository: {error}"),
        None,
        Some(hint),
    )
}

pub fn archive(error: ArchiveError) -> ! {
    use ArchiveError as E;
    let (code, hint) = match &error {
        E::Store { source, .. } if is_disk_full(source) => (
            PgSqlErrorCode::ERRCODE_DISK_FULL,
            "Free space in the repository, or expire old backups and the WAL they needed.",
        ),
        E::Store { source, .. } => store_failure(source).unwrap_or((
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            "Check that the server's OS user can read and write the repository.",
        )),
        E::ReadSource { .. } | E::WriteTarget { .. } => (
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            "Check that the server's OS user can read and write the repository.",
        ),
        E::InvalidName { .. } => (
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "Name a WAL segment (24 hexadecimal digits) or a timeline history file.",
        ),
        E::OtherSystem { .. } | E::NotASegment { .. } | E::Different { .. } | E::Changed { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Use a separate repository for each cluster.",
        ),
        E::Damaged { .. } | E::BadInfo { .. } => (
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            "The archive is damaged; restore the named file from a copy, or take a new full backup.",
        ),
        E::NoArchive { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Archive into this repository first (archive_library = 'pg_blockbackup'), or name the repository that holds the archive.",
        ),
    };
    raise(code, format!("WAL archive: {error}"), None, Some(hint))
}

pub fn archive_command_missing(program: &std::path::Path) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "the repository has a WAL archive, but the offline command that fetches from it is not installed at \"{}\"",
            program.display()
        ),
        None,
        Some("Install target/release/pg_blockbackup next to postgres (scripts/setup.sh does); the restored cluster runs it as its restore_command."),
    )
}

pub fn restore(error: RestoreError) -> ! {
    use blockbackup_core::restore::target::DestinationError as D;
    use RestoreError as E;
    let error = match error {
        E::Repository(error) => repository(error),
        error => error,
    };
    let (code, hint) = match &error {
        E::Destination(D::OutsideConfinement { .. }) => (
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "Restore into a new directory under blockbackup.restore_directory, or ask a superuser to restore.",
        ),
        E::Destination(_) => (
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "Restore into a new, empty directory of its own, apart from the running cluster's files and the repository.",
        ),
        E::TargetNotEmpty { .. } | E::BadTablespaceMapping { .. } => (
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "Restore into a new, empty directory of its own.",
        ),
        E::TargetNotReachable { .. } | E::NoBackupForTarget { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Nothing was written. blockbackup.archived_wal() shows the WAL the archive holds, backups() what each backup reaches.",
        ),
        E::BadSetting { .. } => (
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "Nothing was written. Pass settings as {\"name\": \"value\"}, with names PostgreSQL knows; the recovery target has arguments of its own.",
        ),
        E::RecoveryTargetBeforeConsistency { .. }
        | E::UnknownRestorePoint { .. }
        | E::TwoRecoveryTargets
        | E::TargetUnreachable { .. }
        | E::BadRecoveryTarget { .. }
        | E::TargetBeforeBackup { .. }
        | E::UnwritableSetting { .. } => (
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "Nothing was written. blockbackup.backups() and restore_points() show what each backup reaches.",
        ),
        E::InterruptedRestore { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "A restore into that directory was cut off (the server stopped, the machine failed); what it holds is incomplete and cannot start. Remove it and restore again.",
        ),
        E::Io { source, .. } if is_disk_full(source) => (
            PgSqlErrorCode::ERRCODE_DISK_FULL,
            "Nothing usable was left in the target; free space where it goes and restore again.",
        ),
        E::Io { .. } => (
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            "Nothing usable was left in the target; check the permissions and the disk.",
        ),
        E::Cancelled => (
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            "What the restore had written was removed.",
        ),
        _ => (
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            "Nothing usable was left in the target; validate the backups with blockbackup.validate_backup().",
        ),
    };
    raise(code, format!("restore failed: {error}"), None, Some(hint))
}

pub fn dump_request(error: DumpRequestError) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("dump agent not started: {error}"),
        None,
        Some(error.hint()),
    )
}

pub fn unknown_database(database: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
        format!("dump agent not started: database \"{database}\" does not exist"),
        None,
        Some("SELECT datname FROM pg_database; lists the databases."),
    )
}

pub fn database_not_connectable(database: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("dump agent not started: database \"{database}\" does not allow connections"),
        None,
        Some("pg_dump needs to connect; ALTER DATABASE ... ALLOW_CONNECTIONS true, or dump another database."),
    )
}

pub fn no_unix_socket(setting: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("dump agent not started: the server has no Unix-socket directory (unix_socket_directories = '{setting}')"),
        None,
        Some("The agent connects over the local socket; set unix_socket_directories to a directory and restart the server."),
    )
}

pub fn pg_dump_missing(program: &std::path::Path) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
        format!("dump agent not started: \"{}\" does not exist", program.display()),
        None,
        Some("Install the PostgreSQL client programs of the server's version (on Debian: postgresql-client-<version>)."),
    )
}

pub fn agents_busy(slots: usize) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        format!("dump agent not started: {slots} dump agents are already running"),
        None,
        Some("Wait for one to finish (blockbackup.dump_agents() lists them)."),
    )
}

pub fn no_worker_slot() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        "dump agent not started: no background worker slot is free".into(),
        None,
        Some("Each agent is a background worker; raise max_worker_processes (restart needed) or wait for other workers to end."),
    )
}

pub fn agent_failed_to_start(why: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("dump agent not started: its worker could not start ({why})"),
        None,
        Some("See the server log."),
    )
}

pub fn unknown_agent(agent_id: i64) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("dump agent {agent_id} does not exist"),
        Some("The list of agents lives in shared memory: it starts empty after a server restart and keeps the 16 most recent agents.".into()),
        Some("SELECT * FROM blockbackup.dump_agents(); lists them; finished dumps stay in blockbackup.backups()."),
    )
}

pub fn agent_did_not_stop(agent_id: i64) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
        format!("dump agent {agent_id} was asked to stop but is still running"),
        None,
        Some("See the server log; the agent stops pg_dump with SIGTERM and then SIGKILL."),
    )
}

pub fn restore_point_in_recovery() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "restore points cannot be created during recovery".into(),
        None,
        Some("Create the restore point on the primary."),
    )
}

pub fn no_backup_for_restore_point() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "no finished physical backup of this timeline to hold the restore point".into(),
        None,
        Some("Take a backup first (blockbackup.take_backup()), then create the restore point."),
    )
}
