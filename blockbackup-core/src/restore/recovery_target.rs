//! Where recovery of a restored directory stops, checked before anything
//! is written: one target (an LSN, a restore point's name, a time, a
//! transaction, `immediate`, or the end of the WAL there is), the timeline
//! to follow, and whether the WAL to get there is in the backup itself or
//! in the repository's WAL archive.
//!
//! What the checks can know without reading the WAL:
//!
//! * replay can go as far as [`replay_reach`] says: the backup's own WAL,
//!   then every archived segment in a row on the target's timelines;
//! * an LSN must lie between the backup's stop and that reach;
//! * a restore point's name must be one the repository recorded (made by
//!   `create_restore_point`), at an LSN in the same span;
//! * a time must be at or after the moment the backup was consistent (its
//!   stop), and at or before the store time of the last segment replay
//!   would read: every record in a segment was written before it was
//!   archived;
//! * a transaction id must be newer than the newest one the backup had
//!   assigned when it stopped.
//!
//! Time and transaction targets need the archive: a backup's own WAL ends
//! where it becomes consistent, before any transaction that could be a
//! target. What the checks cannot know is whether a commit after a time
//! target was archived (PostgreSQL stops at the first commit past it):
//! with none, its start fails with "recovery ended before configured
//! recovery target was reached", and a later target or `latest` is needed.

use std::collections::BTreeMap;

use crate::civil_time::render_time;
use crate::repository::catalog::{BackupMode, BackupRecord, RestorePoint};
use crate::repository::{Repository, RepositoryLocation};
use crate::restore::conf_file::quote_value;
use crate::restore::rebuild::RestoreError;
use crate::storage::s3::S3Settings;
use crate::summary::range_plan::TimelineSpan;
use crate::wal::archive::{ArchiveError, ArchivedFile, WalArchive};
use crate::wal::history;
use crate::wal::name::WalFileKind;
use crate::wal::reach::replay_reach;
use crate::Lsn;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the WAL there is: the backup's own, and the archive's
    /// (`recovery_target => 'latest'`).
    End,
    /// As soon as the backup is consistent (`'immediate'`).
    Immediate,
    Lsn(Lsn),
    Name(String),
    /// Microseconds since the Unix epoch.
    Time(i64),
    Xid(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetTimeline {
    Latest,
    Current,
    Number(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryRequest {
    pub target: RecoveryTarget,
    /// Stop after the target (on, PostgreSQL's default) or before it; for
    /// LSN, time and xid targets only.
    pub inclusive: Option<bool>,
    /// None: PostgreSQL's default, `latest`.
    pub timeline: Option<TargetTimeline>,
}

impl Default for RecoveryRequest {
    fn default() -> Self {
        RecoveryRequest {
            target: RecoveryTarget::End,
            inclusive: None,
            timeline: None,
        }
    }
}

fn bad(detail: impl Into<String>) -> RestoreError {
    RestoreError::BadRecoveryTarget {
        detail: detail.into(),
    }
}

/// The arguments of `restore_backup()` and the offline `restore`, as one
/// request: at most one target.
pub struct RecoveryArguments<'a> {
    pub lsn: Option<Lsn>,
    pub name: Option<&'a str>,
    pub time_us: Option<i64>,
    pub xid: Option<u32>,
    pub target: Option<&'a str>,
    pub inclusive: Option<bool>,
    pub timeline: Option<&'a str>,
}

impl RecoveryRequest {
    pub fn from_arguments(args: RecoveryArguments<'_>) -> Result<Self, RestoreError> {
        let mut targets = Vec::new();
        if let Some(lsn) = args.lsn {
            targets.push(RecoveryTarget::Lsn(lsn));
        }
        if let Some(name) = args.name {
            if name.is_empty() {
                return Err(bad("recovery_target_name must not be empty"));
            }
            targets.push(RecoveryTarget::Name(name.to_owned()));
        }
        if let Some(time) = args.time_us {
            targets.push(RecoveryTarget::Time(time));
        }
        if let Some(xid) = args.xid {
            if xid < 3 {
                return Err(bad(format!(
                    "recovery_target_xid {xid} is not a normal transaction id (they start at 3)"
                )));
            }
            targets.push(RecoveryTarget::Xid(xid));
        }
        if let Some(target) = args.target {
            let target = match target {
                "immediate" => RecoveryTarget::Immediate,
                "latest" => RecoveryTarget::End,
                other => {
                    return Err(bad(format!(
                        "recovery_target must be 'immediate' or 'latest', not {other:?}"
                    )))
                }
            };
            targets.push(target);
        }
        if targets.len() > 1 {
            return Err(RestoreError::TwoRecoveryTargets);
        }
        let target = targets.pop().unwrap_or(RecoveryTarget::End);
        if args.inclusive.is_some()
            && !matches!(
                target,
                RecoveryTarget::Lsn(_) | RecoveryTarget::Time(_) | RecoveryTarget::Xid(_)
            )
        {
            return Err(bad(
                "recovery_target_inclusive applies to an LSN, time or xid target only",
            ));
        }
        let timeline = args.timeline.map(parse_timeline).transpose()?;
        Ok(RecoveryRequest {
            target,
            inclusive: args.inclusive,
            timeline,
        })
    }
}

fn parse_timeline(text: &str) -> Result<TargetTimeline, RestoreError> {
    match text {
        "latest" => Ok(TargetTimeline::Latest),
        "current" => Ok(TargetTimeline::Current),
        number => number
            .parse::<u32>()
            .ok()
            .filter(|&n| n >= 1)
            .map(TargetTimeline::Number)
            .ok_or_else(|| {
                bad(format!(
                    "recovery_target_timeline must be 'latest', 'current' or a timeline number, not {number:?}"
                ))
            }),
    }
}

impl RecoveryTarget {
    /// How messages name it.
    pub fn describe(&self) -> String {
        match self {
            RecoveryTarget::End => "the end of the archived WAL".to_owned(),
            RecoveryTarget::Immediate => "'immediate'".to_owned(),
            RecoveryTarget::Lsn(lsn) => format!("LSN {lsn}"),
            RecoveryTarget::Name(name) => format!("restore point {name:?}"),
            RecoveryTarget::Time(us) => format!("time {}", render_time(*us)),
            RecoveryTarget::Xid(xid) => format!("transaction {xid}"),
        }
    }
}

/// What the repository's WAL archive offers a restore, read once.
pub struct ArchiveContext {
    pub files: Vec<ArchivedFile>,
    pub segment_size: u64,
    /// The history of every timeline with an archived history file.
    pub histories: BTreeMap<u32, Vec<TimelineSpan>>,
    /// Every restore point the repository recorded.
    pub points: Vec<RestorePoint>,
    /// What the restored cluster runs to fetch from the archive.
    pub commands: ArchiveCommands,
}

impl ArchiveContext {
    /// The archive of `repository`, None while it holds no segment.
    pub fn load(
        repository: &Repository,
        commands: ArchiveCommands,
    ) -> Result<Option<Self>, RestoreError> {
        let archive = WalArchive::new(repository);
        let wal = |e: ArchiveError| bad(format!("the WAL archive cannot be read: {e}"));
        let Some(segment_size) = archive.segment_size().map_err(wal)? else {
            return Ok(None);
        };
        let files = archive.list().map_err(wal)?;
        let mut histories = BTreeMap::new();
        for file in files
            .iter()
            .filter(|f| f.name.kind == WalFileKind::TimelineHistory)
        {
            if let Some(history) = archive.history(file.name.timeline).map_err(wal)? {
                histories.insert(file.name.timeline, history);
            }
        }
        let catalog = repository.list()?;
        let points = catalog
            .records
            .iter()
            .flat_map(|record| record.restore_points.iter().cloned())
            .collect();
        Ok(Some(ArchiveContext {
            files,
            segment_size,
            histories,
            points,
            commands,
        }))
    }

    /// The timelines recovery of `record` follows for `choice`.
    fn history_for(
        &self,
        record: &BackupRecord,
        stop: Lsn,
        choice: Option<TargetTimeline>,
    ) -> Result<Vec<TimelineSpan>, RestoreError> {
        let own = || {
            vec![TimelineSpan {
                timeline: record.timeline,
                begin: Lsn(0),
                end: None,
            }]
        };
        let descends =
            |history: &Vec<TimelineSpan>| history::contains(history, record.timeline, stop);
        match choice.unwrap_or(TargetTimeline::Latest) {
            TargetTimeline::Current => Ok(own()),
            TargetTimeline::Latest => Ok(self
                .histories
                .iter()
                .rev()
                .find(|(&tli, history)| tli > record.timeline && descends(history))
                .map_or_else(own, |(_, history)| history.clone())),
            TargetTimeline::Number(n) if n == record.timeline => Ok(own()),
            TargetTimeline::Number(n) => match self.histories.get(&n) {
                Some(history) if descends(history) => Ok(history.clone()),
                Some(_) => Err(bad(format!(
                    "timeline {n} did not branch off timeline {} after backup {} ends ({stop}); choose a timeline that did, or an older backup",
                    record.timeline, record.backup_id
                ))),
                None => Err(bad(format!(
                    "the WAL archive has no history file of timeline {n}"
                ))),
            },
        }
    }
}

/// Checks that `request` can be reached from `record` (which becomes
/// consistent at `stop`), with the archive when there is one.
pub fn check_target(
    record: &BackupRecord,
    stop: Lsn,
    request: &RecoveryRequest,
    archive: Option<&ArchiveContext>,
) -> Result<(), RestoreError> {
    let own_reach = record.wal_reach().unwrap_or(stop);
    let (reach, newest_time) = match archive {
        Some(archive) => {
            let history = archive.history_for(record, stop, request.timeline)?;
            replay_reach(
                &archive.files,
                &history,
                archive.segment_size,
                record.start_lsn,
                own_reach,
            )
        }
        None => {
            if matches!(request.timeline, Some(TargetTimeline::Number(n)) if n != record.timeline) {
                return Err(bad(
                    "another timeline than the backup's needs the WAL archive, and the repository has none",
                ));
            }
            (own_reach, None)
        }
    };
    let target = request.target.describe();
    let unreachable = |detail: String| RestoreError::TargetNotReachable {
        target: target.clone(),
        backup_id: record.backup_id.clone(),
        detail,
    };
    let before = |consistent: String| RestoreError::TargetBeforeBackup {
        target: target.clone(),
        backup_id: record.backup_id.clone(),
        consistent,
    };
    let no_archive = || {
        unreachable(
            "a backup's own WAL ends where it becomes consistent; a time or transaction target needs the WAL archive (archive_library = 'pg_blockbackup'), and the repository has none"
                .to_owned(),
        )
    };
    match &request.target {
        RecoveryTarget::End | RecoveryTarget::Immediate => Ok(()),
        RecoveryTarget::Lsn(lsn) => {
            if *lsn < stop {
                return Err(RestoreError::RecoveryTargetBeforeConsistency {
                    target: *lsn,
                    backup_id: record.backup_id.clone(),
                    stop_lsn: stop,
                });
            }
            if *lsn > reach {
                return Err(match archive {
                    None => RestoreError::TargetUnreachable {
                        target: *lsn,
                        backup_id: record.backup_id.clone(),
                        reach,
                    },
                    Some(_) => unreachable(format!(
                        "its WAL and the archive's reach {reach} (the archive has no segment there; archived_wal() shows what it holds)"
                    )),
                });
            }
            Ok(())
        }
        RecoveryTarget::Name(name) => {
            if quote_value(name).is_none() {
                return Err(RestoreError::UnwritableSetting {
                    what: "recovery_target_name".to_owned(),
                    value: name.clone(),
                });
            }
            if record.restore_points.iter().any(|p| &p.name == name) {
                return Ok(());
            }
            let known: Vec<&RestorePoint> = match archive {
                Some(archive) => archive.points.iter().collect(),
                None => record.restore_points.iter().collect(),
            };
            match known.iter().find(|p| &p.name == name) {
                Some(point) if point.lsn < stop => Err(before(format!(
                    "at {stop}; the restore point is at {}",
                    point.lsn
                ))),
                Some(point) if point.lsn >= reach => Err(unreachable(format!(
                    "the restore point is at {}, the WAL there reaches {reach}",
                    point.lsn
                ))),
                Some(_) => Ok(()),
                None => {
                    let names: Vec<&str> = known.iter().map(|p| p.name.as_str()).collect();
                    Err(RestoreError::UnknownRestorePoint {
                        name: name.clone(),
                        backup_id: record.backup_id.clone(),
                        known: if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        },
                    })
                }
            }
        }
        RecoveryTarget::Time(time) => {
            let consistent = record.recovery_time_us.or(record.end_time_us).unwrap_or(0);
            if *time < consistent {
                return Err(before(format!("at {}", render_time(consistent))));
            }
            let Some(_) = archive else {
                return Err(no_archive());
            };
            match newest_time {
                Some(newest) if *time <= newest => Ok(()),
                Some(newest) => Err(unreachable(format!(
                    "the WAL in a row from the backup on ends at {reach}, archived at {}; the target may lie past it (SELECT pg_switch_wal() archives the current segment)",
                    render_time(newest)
                ))),
                None => Err(unreachable(format!(
                    "the archive holds no segment after the backup's own WAL (which ends at {reach})"
                ))),
            }
        }
        RecoveryTarget::Xid(xid) => {
            if let Some(newest) = record.recovery_xid {
                if !xid_follows(*xid, newest) {
                    return Err(before(format!(
                        "transaction {} was the newest assigned when it stopped",
                        newest as u32
                    )));
                }
            }
            match archive {
                Some(_) => Ok(()),
                None => Err(no_archive()),
            }
        }
    }
}

/// Whether the 32-bit `xid` was assigned after the full transaction id
/// `newest` (within the 2^31 window PostgreSQL compares xids in).
fn xid_follows(xid: u32, newest: u64) -> bool {
    (xid.wrapping_sub(newest as u32) as i32) > 0
}

/// The newest usable backup of `records` (one cluster's, oldest first)
/// from which `request` can be reached: for `restore_backup(NULL, ...)`.
pub fn choose_backup<'r>(
    records: &'r [BackupRecord],
    request: &RecoveryRequest,
    archive: Option<&ArchiveContext>,
) -> Result<&'r BackupRecord, RestoreError> {
    let usable = records
        .iter()
        .filter(|r| r.status.is_usable() && r.mode != BackupMode::Dump && r.stop_lsn.is_some());
    let mut last_error = None;
    for record in usable.rev() {
        let Some(stop) = record.stop_lsn else {
            continue;
        };
        match check_target(record, stop, request, archive) {
            Ok(()) => return Ok(record),
            // Too new for the target: an older one may do.
            Err(
                error @ (RestoreError::TargetBeforeBackup { .. }
                | RestoreError::RecoveryTargetBeforeConsistency { .. }),
            ) => {
                last_error.get_or_insert(error);
            }
            Err(error) => return Err(error),
        }
    }
    Err(RestoreError::NoBackupForTarget {
        target: request.target.describe(),
        detail: match last_error {
            Some(error) => format!("every backup is newer ({error})"),
            None => "the repository has no usable backup; take one with take_backup()".to_owned(),
        },
    })
}

/// How many megabytes of WAL a restored cluster's `restore_command`
/// fetches ahead of replay (pgBackRest's `archive-get-queue-max` is the
/// same 128 MB): eight 16 MB segments.
pub const PREFETCH_MB: u64 = 128;

/// What a restored cluster runs to use the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveCommands {
    /// Fetches `%f` into `%p`, and the segments after it ahead of replay.
    pub restore_command: String,
    /// Removes what was fetched ahead and not replayed.
    pub recovery_end_command: String,
}

impl ArchiveCommands {
    /// The commands that run `program` (the offline command, by its
    /// absolute path) on the repository at `repository`: each argument
    /// quoted for the shell PostgreSQL runs them with, and `%` doubled, as
    /// PostgreSQL replaces `%f`, `%p`, `%r` and `%%` in them. Both run in
    /// the data directory. For a repository in S3 they carry how to reach
    /// it, never the credentials: the restored server's environment gives
    /// those (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), as it does to
    /// the offline command.
    pub fn new(
        program: &std::path::Path,
        repository: &RepositoryLocation,
        s3: Option<&S3Settings>,
    ) -> Self {
        let quote = |text: &str| {
            let text = text.replace('%', "%%");
            format!("'{}'", text.replace('\'', "'\\''"))
        };
        let mut base = format!(
            "{} --repository {}",
            quote(&program.to_string_lossy()),
            quote(&repository.to_string())
        );
        if let (RepositoryLocation::S3(_), Some(s3)) = (repository, s3) {
            for (option, value) in s3.command_options() {
                base.push_str(&format!(" {option} {}", quote(&value)));
            }
        }
        ArchiveCommands {
            restore_command: format!("{base} archive-get --prefetch {PREFETCH_MB} %f %p"),
            recovery_end_command: format!("{base} prefetch-clear pg_wal"),
        }
    }
}

/// The `postgresql.auto.conf` settings of `request`, in order.
pub fn recovery_settings(
    request: &RecoveryRequest,
    archive: Option<&ArchiveContext>,
) -> Vec<(&'static str, String)> {
    let mut settings = vec![(
        "restore_command",
        archive.map_or_else(
            || "/bin/false".to_owned(),
            |a| a.commands.restore_command.clone(),
        ),
    )];
    if let Some(archive) = archive {
        settings.push((
            "recovery_end_command",
            archive.commands.recovery_end_command.clone(),
        ));
    }
    let inclusive = |settings: &mut Vec<(&'static str, String)>, default: bool| {
        let on = request.inclusive.unwrap_or(default);
        settings.push((
            "recovery_target_inclusive",
            if on { "on" } else { "off" }.to_owned(),
        ));
    };
    match &request.target {
        RecoveryTarget::End => {}
        RecoveryTarget::Immediate => settings.push(("recovery_target", "immediate".to_owned())),
        RecoveryTarget::Lsn(lsn) => {
            settings.push(("recovery_target_lsn", lsn.to_string()));
            inclusive(&mut settings, true);
        }
        RecoveryTarget::Name(name) => settings.push(("recovery_target_name", name.clone())),
        RecoveryTarget::Time(us) => {
            settings.push(("recovery_target_time", render_time(*us)));
            inclusive(&mut settings, true);
        }
        RecoveryTarget::Xid(xid) => {
            settings.push(("recovery_target_xid", xid.to_string()));
            inclusive(&mut settings, true);
        }
    }
    if let Some(timeline) = request.timeline {
        settings.push((
            "recovery_target_timeline",
            match timeline {
                TargetTimeline::Latest => "latest".to_owned(),
                TargetTimeline::Current => "current".to_owned(),
                TargetTimeline::Number(n) => n.to_string(),
            },
        ));
    }
    settings.push(("recovery_target_action", "promote".to_owned()));
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_target_at_a_time() {
        let args = |lsn, name, target, inclusive| RecoveryArguments {
            lsn,
            name,
            time_us: None,
            xid: None,
            target,
            inclusive,
            timeline: None,
        };
        assert!(
            RecoveryRequest::from_arguments(args(Some(Lsn(1)), Some("x"), None, None)).is_err()
        );
        assert!(
            RecoveryRequest::from_arguments(args(None, Some("x"), Some("latest"), None)).is_err()
        );
        assert!(RecoveryRequest::from_arguments(args(None, Some("x"), None, Some(true))).is_err());
        assert!(RecoveryRequest::from_arguments(args(None, None, Some("soon"), None)).is_err());
        let request =
            RecoveryRequest::from_arguments(args(Some(Lsn(5)), None, None, Some(false))).unwrap();
        assert_eq!(request.target, RecoveryTarget::Lsn(Lsn(5)));
        let settings = recovery_settings(&request, None);
        assert!(settings.contains(&("recovery_target_inclusive", "off".to_owned())));
        assert_eq!(settings[0], ("restore_command", "/bin/false".to_owned()));
        assert_eq!(
            RecoveryRequest::from_arguments(args(None, None, Some("latest"), None))
                .unwrap()
                .target,
            RecoveryTarget::End
        );
    }

    #[test]
    fn the_restore_command_survives_the_shell_and_the_placeholders() {
        use std::path::Path;
        let commands = ArchiveCommands::new(
            Path::new("/usr/bin/pg_blockbackup"),
            &RepositoryLocation::Local("/var/lib/it's 100%".into()),
            None,
        );
        assert_eq!(
            commands.restore_command,
            "'/usr/bin/pg_blockbackup' --repository '/var/lib/it'\\''s 100%%' archive-get --prefetch 128 %f %p"
        );
        assert_eq!(
            commands.recovery_end_command,
            "'/usr/bin/pg_blockbackup' --repository '/var/lib/it'\\''s 100%%' prefetch-clear pg_wal"
        );
    }

    #[test]
    fn an_s3_restore_command_says_where_and_never_the_credentials() {
        use crate::storage::s3::{S3Location, S3Settings, Secret, UriStyle};
        let s3 = S3Settings {
            endpoint: "https://127.0.0.1:8443".into(),
            region: "eu-west-1".into(),
            uri_style: UriStyle::Path,
            verify_tls: false,
            ca_file: Some("/etc/ssl/store ca.pem".into()),
            key: "the-access-key".into(),
            secret: Secret::new("the-secret"),
            token: Some(Secret::new("the-token")),
        };
        let location = RepositoryLocation::S3(S3Location::parse("s3://bucket/db1").unwrap());
        let commands =
            ArchiveCommands::new(std::path::Path::new("/bin/pgbb"), &location, Some(&s3));
        assert_eq!(
            commands.restore_command,
            "'/bin/pgbb' --repository 's3://bucket/db1' --s3-endpoint 'https://127.0.0.1:8443' --s3-region 'eu-west-1' \
             --s3-uri-style 'path' --s3-verify-tls 'n' --s3-ca-file '/etc/ssl/store ca.pem' archive-get --prefetch 128 %f %p"
        );
        for command in [&commands.restore_command, &commands.recovery_end_command] {
            assert!(
                !command.contains("the-access-key")
                    && !command.contains("the-secret")
                    && !command.contains("the-token")
            );
        }
    }

    #[test]
    fn transaction_ids_compare_across_wraparound() {
        assert!(xid_follows(101, 100));
        assert!(!xid_follows(100, 100));
        assert!(!xid_follows(99, 100));
        assert!(xid_follows(5, (1u64 << 32) + 0xFFFF_FFF0));
    }
}
