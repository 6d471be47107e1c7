//! `pg_blockbackup`: the backup repository with the server down.
//!
//! ```text
//! pg_blockbackup --repository DIR|s3://BUCKET/PREFIX [--s3-* options] COMMAND ...
//!
//! pg_blockbackup --repository DIR list
//! pg_blockbackup --repository DIR validate [BACKUP_ID]
//! pg_blockbackup --repository DIR archive-push WAL_PATH [--compress CODEC] [--compress-level N]
//! pg_blockbackup --repository DIR archive-get WAL_NAME TARGET_PATH [--prefetch MB]
//! pg_blockbackup --repository DIR prefetch-clear WAL_DIR
//! pg_blockbackup --repository DIR restore [BACKUP_ID] TARGET_DIR
//!                [--tablespace-mapping OLD=NEW]... [--parallel N] [--pgdata DIR]
//!                [--recovery-target-lsn LSN | --recovery-target-name NAME | --recovery-target-time TIME
//!                 | --recovery-target-xid XID | --recovery-target immediate|latest]
//!                [--recovery-target-timeline latest|current|N] [--recovery-target-inclusive on|off]
//!                [--setting NAME=VALUE]...
//! ```
//!
//! A repository in S3 is reached with `--s3-endpoint URL`, `--s3-region`,
//! `--s3-uri-style host|path`, `--s3-verify-tls y|n`, `--s3-ca-file FILE`
//! and the credentials of the standard environment (see
//! `repository_options`).
//!
//! It does what the SQL functions `backups()`, `validate_backup()` and
//! `restore_backup()` do, with the same code from the pure crate, so that a
//! DBA whose server is gone can still get it back; and it moves WAL in and
//! out of the repository's archive for `archive_command` (`archive-push
//! %p`) and `restore_command` (`archive-get %f %p`).
//!
//! `archive-get` exits with 0 when it wrote the file, 1 when the archive
//! does not hold it (recovery then ends, or tries streaming), and 255 on
//! any other error, a damaged file or an unreachable repository: an exit
//! status above 125 makes PostgreSQL stop recovery with a FATAL error
//! instead of taking the missing WAL for the end of the archive and
//! promoting early.
//!
//! With `--prefetch MB`, `archive-get` also starts a process of its own
//! (`archive-prefetch`, not for direct use) that fetches up to MB megabytes
//! of the following segments into `pg_blockbackup_prefetch/` beside
//! TARGET_PATH while the server replays, and serves the next request from
//! there (see the pure crate's `wal::prefetch`); `prefetch-clear`, the
//! restored cluster's `recovery_end_command`, removes that queue.

mod repository_options;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;

use blockbackup_core::civil_time::parse_time;
use blockbackup_core::compress::Compression;
use blockbackup_core::repository::catalog::BackupStatus;
use blockbackup_core::repository::upkeep;
use blockbackup_core::repository::Repository;
use blockbackup_core::restore::recovery_target::ArchiveCommands;
use blockbackup_core::restore::target::{data_directory_places, DestinationRules, ForbiddenPlace};
use blockbackup_core::restore::{restore_backup, RecoveryExtras, RestoreOptions};
use blockbackup_core::storage::s3::S3Settings;
use blockbackup_core::wal::prefetch::{segments_in, PREFETCH_DIR};
use blockbackup_core::wal::{ranges, PrefetchQueue, PushOutcome, WalArchive, WalFileName};
use blockbackup_core::Lsn;

const USAGE: &str = "usage (DIR: a directory, or s3://BUCKET/PREFIX with --s3-endpoint URL
  [--s3-region R] [--s3-uri-style host|path] [--s3-verify-tls y|n] [--s3-ca-file F] [--s3-key K]
  and AWS_SECRET_ACCESS_KEY, AWS_ACCESS_KEY_ID, AWS_SESSION_TOKEN in the environment):
  pg_blockbackup --repository DIR list
  pg_blockbackup --repository DIR validate [BACKUP_ID]
  pg_blockbackup --repository DIR archive-push WAL_PATH [--compress none|gzip|zstd|lz4] [--compress-level N]
  pg_blockbackup --repository DIR archive-get WAL_NAME TARGET_PATH [--prefetch MB]
  pg_blockbackup --repository DIR prefetch-clear WAL_DIR
  pg_blockbackup --repository DIR restore [BACKUP_ID] TARGET_DIR
                 [--tablespace-mapping OLD=NEW]... [--parallel N]
                 [--pgdata DIR]   (default $PGDATA: a data directory the restore must stay away from)
                 [--recovery-target-lsn LSN | --recovery-target-name NAME
                  | --recovery-target-time 'YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM]'
                  | --recovery-target-xid XID | --recovery-target immediate|latest]
                 [--recovery-target-timeline latest|current|N] [--recovery-target-inclusive on|off]
                 [--setting NAME=VALUE]...   (added to the copy's postgresql.auto.conf)
                 (without BACKUP_ID: the newest backup that reaches the target)";

/// The options `restore` takes.
const RESTORE_OPTIONS: &[&str] = &[
    "--tablespace-mapping",
    "--recovery-target-lsn",
    "--recovery-target-name",
    "--recovery-target-time",
    "--recovery-target-xid",
    "--recovery-target",
    "--recovery-target-timeline",
    "--recovery-target-inclusive",
    "--parallel",
    "--pgdata",
    "--setting",
];

/// What a command ends with besides success.
enum Failure {
    /// An error, said on standard error.
    Error(String),
    /// archive-get: the archive does not hold the file; not an error.
    NotInArchive,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Error(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::Error(message.to_owned())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let archive_get = args.iter().any(|arg| arg == "archive-get");
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::NotInArchive) => ExitCode::FAILURE,
        Err(Failure::Error(message)) => {
            eprintln!("pg_blockbackup: {message}");
            if archive_get {
                ExitCode::from(255)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The repository and how it was named, for the programs this one starts.
struct Repo {
    repository: Repository,
    s3: Option<S3Settings>,
    arguments: Vec<String>,
}

impl std::ops::Deref for Repo {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        &self.repository
    }
}

fn run(args: &[String]) -> Result<(), Failure> {
    let mut repository = repository_options::RepositoryOptions::default();
    let mut rest = Vec::new();
    let mut options = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            flag if repository_options::OPTIONS.contains(&flag) => {
                repository.push(flag, next_value(&mut iter, arg)?)
            }
            flag if RESTORE_OPTIONS.contains(&flag)
                || flag == "--compress"
                || flag == "--compress-level"
                || flag == "--prefetch" =>
            {
                options.push((arg.clone(), next_value(&mut iter, arg)?))
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            flag if flag.starts_with("--") => {
                repository_options::refuse_secret(flag)?;
                return Err(format!("unknown option {flag}\n{USAGE}").into());
            }
            _ => rest.push(arg.clone()),
        }
    }
    repository.location().map_err(|e| format!("{e}\n{USAGE}"))?;
    let (opened, s3) = repository.open()?;
    let repo = Repo {
        repository: opened,
        s3,
        arguments: repository.arguments(),
    };
    let allowed: &[&str] = match rest.first().map(String::as_str) {
        Some("restore") => RESTORE_OPTIONS,
        Some("archive-push") => &["--compress", "--compress-level"],
        Some("archive-get" | "archive-prefetch") => &["--prefetch"],
        _ => &[],
    };
    if let Some((flag, _)) = options
        .iter()
        .find(|(flag, _)| !allowed.contains(&flag.as_str()))
    {
        return Err(format!("{flag} does not apply to this command\n{USAGE}").into());
    }
    match rest
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["list"] => Ok(list(&repo)?),
        ["validate"] => Ok(validate(&repo, None)?),
        ["validate", id] => Ok(validate(&repo, Some(id))?),
        ["restore", id, target] => Ok(restore(&repo, Some(id), target, &options)?),
        ["restore", target] => Ok(restore(&repo, None, target, &options)?),
        ["archive-push", path] => Ok(archive_push(&repo, path, &options)?),
        ["archive-get", name, target] => archive_get(&repo, name, target, prefetch_mb(&options)?),
        ["archive-prefetch", name, queue] => archive_prefetch(&repo, name, queue, &options),
        ["prefetch-clear", wal_dir] => Ok(prefetch_clear(&repo, wal_dir)?),
        _ => Err(USAGE.into()),
    }
}

fn next_value(iter: &mut std::slice::Iter<'_, String>, flag: &str) -> Result<String, String> {
    iter.next()
        .cloned()
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn list(repo: &Repository) -> Result<(), String> {
    println!(
        "{:<22} {:<11} {:<8} {:<22} {:>4} {:>14} {:>14} {:>14}",
        "backup_id", "mode", "status", "parent", "tli", "start_lsn", "stop_lsn", "bytes_written"
    );
    let catalog = repo.list().map_err(|e| e.to_string())?;
    for r in &catalog.records {
        println!(
            "{:<22} {:<11} {:<8} {:<22} {:>4} {:>14} {:>14} {:>14}",
            r.backup_id,
            r.mode.as_str(),
            r.status.as_str(),
            r.parent_backup_id.as_deref().unwrap_or("-"),
            r.timeline,
            r.start_lsn.to_string(),
            r.stop_lsn.map_or("-".to_string(), |l| l.to_string()),
            r.bytes_written
        );
    }
    for entry in &catalog.damaged {
        println!(
            "{:<22} {:<11} {:<8} {}",
            entry.backup_id, "-", "CORRUPT", entry.problem
        );
    }
    let archive = WalArchive::new(repo);
    let files = archive.list().map_err(|e| e.to_string())?;
    if let Some(segment_size) = archive.segment_size().map_err(|e| e.to_string())? {
        println!();
        println!(
            "{:>4} {:<32} {:<32} {:>14} {:>14} {:>8} {:>14}",
            "tli", "start_wal", "end_wal", "start_lsn", "end_lsn", "segments", "stored_bytes"
        );
        for range in ranges(&files, segment_size) {
            println!(
                "{:>4} {:<32} {:<32} {:>14} {:>14} {:>8} {:>14}",
                range.timeline,
                range.start.to_string(),
                range.end.to_string(),
                range.start_lsn.to_string(),
                range.end_lsn.to_string(),
                range.segments,
                range.stored_bytes
            );
        }
    }
    Ok(())
}

/// For `archive_command = 'pg_blockbackup --repository R archive-push %p'`.
fn archive_push(repo: &Repository, path: &str, options: &[(String, String)]) -> Result<(), String> {
    let value = |flag: &str| {
        options
            .iter()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
    };
    let codec = Compression::parse(value("--compress").unwrap_or("none"))
        .map_err(|e| format!("--compress: {e}"))?;
    let level = value("--compress-level")
        .map(|text| {
            text.parse::<i32>()
                .map_err(|_| "--compress-level takes a number")
        })
        .transpose()?;
    let level = codec
        .check_level(level)
        .map_err(|e| format!("--compress-level: {e}"))?;
    let source = PathBuf::from(path);
    let name = source
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| format!("\"{path}\" does not name a file"))?;
    match WalArchive::new(repo)
        .push(name, &source, codec, level)
        .map_err(|e| e.to_string())?
    {
        PushOutcome::Stored { .. } => {}
        PushOutcome::AlreadyArchived => {
            eprintln!(
                "pg_blockbackup: WAL file \"{name}\" was already archived with the same content"
            )
        }
    }
    Ok(())
}

/// For `restore_command = 'pg_blockbackup --repository R archive-get %f %p'`.
/// With a prefetch budget, a segment already fetched ahead is moved into
/// place, and a filler is started for the ones that follow. Whatever goes
/// wrong with the queue only costs speed: the request then fetches itself.
fn archive_get(
    repo: &Repo,
    name: &str,
    target: &str,
    prefetch_mb: Option<u64>,
) -> Result<(), Failure> {
    let target = std::path::Path::new(target);
    let queued = prefetch_mb
        .zip(WalFileName::parse(name).filter(WalFileName::is_segment))
        .map(|(mb, parsed)| (mb, parsed, PrefetchQueue::beside(target, &owner_of(repo))));
    if let Some((mb, parsed, queue)) = &queued {
        match queue.take(parsed, target) {
            Ok(true) => {
                start_filler(repo, name, queue.dir(), *mb);
                return Ok(());
            }
            Ok(false) => {}
            Err(error) => eprintln!(
                "pg_blockbackup: warning: not fetching ahead into \"{}\": {error}",
                queue.dir().display()
            ),
        }
    }
    match WalArchive::new(repo).get(name, target) {
        Ok(true) => {
            if let Some((mb, _, queue)) = &queued {
                start_filler(repo, name, queue.dir(), *mb);
            }
            Ok(())
        }
        Ok(false) => Err(Failure::NotInArchive),
        Err(error) => Err(Failure::Error(error.to_string())),
    }
}

/// The repository a queue answers for.
fn owner_of(repo: &Repository) -> String {
    repo.root().to_string_lossy().into_owned()
}

/// `--prefetch MB`: None without it or with 0.
fn prefetch_mb(options: &[(String, String)]) -> Result<Option<u64>, String> {
    options
        .iter()
        .find(|(flag, _)| flag == "--prefetch")
        .map(|(_, value)| {
            value
                .parse::<u64>()
                .ok()
                .filter(|mb| *mb <= 1 << 20)
                .ok_or_else(|| "--prefetch takes a number of megabytes".to_owned())
        })
        .transpose()
        .map(|mb| mb.filter(|&mb| mb > 0))
}

/// Starts `archive-prefetch` in a process group of its own, with no
/// standard streams: archive-get returns at once and the server's
/// recovery goes on while it fetches. Not started is only slower.
fn start_filler(repo: &Repo, name: &str, queue: &std::path::Path, mb: u64) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let started = std::env::current_exe().and_then(|program| {
        Command::new(program)
            .args(&repo.arguments)
            .arg("archive-prefetch")
            .arg(name)
            .arg(queue)
            .arg("--prefetch")
            .arg(mb.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
    });
    if let Err(error) = started {
        eprintln!("pg_blockbackup: warning: could not start fetching ahead: {error}");
    }
}

/// The filler archive-get starts: fetches the segments after `name` into
/// the queue in `queue_dir`. Its failures are the next request's to meet.
fn archive_prefetch(
    repo: &Repository,
    name: &str,
    queue_dir: &str,
    options: &[(String, String)],
) -> Result<(), Failure> {
    let parsed = WalFileName::parse(name)
        .filter(WalFileName::is_segment)
        .ok_or_else(|| format!("\"{name}\" is not the name of a WAL segment"))?;
    let mb = prefetch_mb(options)?.ok_or("--prefetch is required")?;
    let archive = WalArchive::new(repo);
    let segment_size = match archive.segment_size() {
        Ok(Some(size)) => size,
        Ok(None) => return Ok(()),
        Err(error) => return Err(Failure::Error(error.to_string())),
    };
    let queue = PrefetchQueue::in_dir(std::path::Path::new(queue_dir), &owner_of(repo));
    queue
        .fill(&archive, &parsed, segments_in(mb << 20, segment_size))
        .map_err(|error| Failure::Error(error.to_string()))?;
    Ok(())
}

/// For `recovery_end_command`: the queue of `wal_dir` goes.
fn prefetch_clear(repo: &Repository, wal_dir: &str) -> Result<(), String> {
    let dir = std::path::Path::new(wal_dir).join(PREFETCH_DIR);
    PrefetchQueue::in_dir(&dir, &owner_of(repo))
        .clear()
        .map_err(|error| format!("could not remove \"{}\": {error}", dir.display()))
}

fn validate(repo: &Repository, id: Option<&str>) -> Result<(), String> {
    let lock = repo.lock().map_err(|e| e.to_string())?;
    let (rows, warnings) = upkeep::validate(repo, &lock, id).map_err(|e| e.to_string())?;
    for warning in warnings {
        eprintln!("pg_blockbackup: warning: {warning}");
    }
    let mut failed = 0;
    for row in &rows {
        let report = &row.report;
        println!(
            "{} {}: {} files, {} bytes checked",
            row.backup_id,
            row.status.as_str(),
            report.files_checked,
            report.bytes_checked
        );
        for error in &report.errors {
            println!("  {error}");
        }
        for problem in &report.unchecked {
            println!("  not checked: {problem}");
        }
        if let Some(why) = &row.not_recorded {
            eprintln!(
                "pg_blockbackup: warning: the status of {} could not be recorded: {why}",
                row.backup_id
            );
        }
        failed += usize::from(row.status != BackupStatus::Ok);
    }
    if failed > 0 {
        return Err(format!("{failed} backup(s) are not OK"));
    }
    Ok(())
}

/// The repository, and with a data directory named, the places of that
/// data directory: what restore_backup() keeps a restore away from on a
/// running server.
fn forbidden_places(repo: &Repository, pgdata: Option<&std::path::Path>) -> Vec<ForbiddenPlace> {
    use blockbackup_core::restore::conf_file::Syntax::{Authentication, Settings};
    let mut places: Vec<ForbiddenPlace> = repo
        .local_root()
        .map(|root| ForbiddenPlace::new(root, "the repository"))
        .into_iter()
        .collect();
    if let Some(pgdata) = pgdata {
        let configuration = [
            (pgdata.join("postgresql.conf"), Settings),
            (pgdata.join("pg_hba.conf"), Authentication),
            (pgdata.join("pg_ident.conf"), Authentication),
        ];
        places.extend(data_directory_places(pgdata, &configuration));
    }
    places
}

fn restore(
    repo: &Repo,
    id: Option<&str>,
    target: &str,
    options: &[(String, String)],
) -> Result<(), String> {
    // The same rules as restore_backup(): never into the repository
    // (which holds the backups; a directory in it would look like a broken
    // backup), always into an absolute, new or empty directory.
    let pgdata = options
        .iter()
        .find(|(flag, _)| flag == "--pgdata")
        .map(|(_, value)| PathBuf::from(value))
        .or_else(|| std::env::var_os("PGDATA").map(PathBuf::from));
    let rules = DestinationRules {
        forbidden: forbidden_places(repo, pgdata.as_deref()),
        confined_to: None,
    };
    // The restored cluster fetches archived WAL with this same program.
    let program = std::env::current_exe()
        .map_err(|e| format!("cannot tell where this program is, for the restore_command: {e}"))?;
    let mut restore_options = RestoreOptions {
        target: PathBuf::from(target),
        tablespace_mapping: Vec::new(),
        recovery_target_lsn: None,
        recovery_target_name: None,
        recovery: RecoveryExtras::default(),
        archive_commands: Some(ArchiveCommands::new(
            &program,
            repo.location(),
            repo.s3.as_ref(),
        )),
        threads: 1,
        rules,
    };
    for (flag, value) in options {
        match flag.as_str() {
            "--tablespace-mapping" => {
                let (old, new) = value
                    .split_once('=')
                    .ok_or("--tablespace-mapping takes OLD=NEW")?;
                restore_options
                    .tablespace_mapping
                    .push((old.to_string(), PathBuf::from(new)));
            }
            "--recovery-target-name" => {
                restore_options.recovery_target_name = Some(value.clone());
            }
            "--recovery-target-lsn" => {
                restore_options.recovery_target_lsn = Some(
                    value
                        .parse::<Lsn>()
                        .map_err(|e| format!("--recovery-target-lsn: {e}"))?,
                )
            }
            "--recovery-target-time" => {
                let us = parse_time(value).ok_or(
                    "--recovery-target-time takes 'YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM]' (with its UTC offset)",
                )?;
                if us > blockbackup_core::civil_time::unix_now_us() {
                    return Err("--recovery-target-time is in the future".to_owned());
                }
                restore_options.recovery.time_us = Some(us);
            }
            "--recovery-target-xid" => {
                restore_options.recovery.xid = Some(
                    value
                        .parse()
                        .map_err(|_| "--recovery-target-xid takes a transaction id")?,
                )
            }
            "--recovery-target" => restore_options.recovery.target = Some(value.clone()),
            "--recovery-target-timeline" => restore_options.recovery.timeline = Some(value.clone()),
            "--recovery-target-inclusive" => {
                restore_options.recovery.inclusive = Some(match value.as_str() {
                    "on" | "true" => true,
                    "off" | "false" => false,
                    _ => return Err("--recovery-target-inclusive takes on or off".to_owned()),
                })
            }
            "--setting" => {
                let (name, value) = value.split_once('=').ok_or("--setting takes NAME=VALUE")?;
                restore_options
                    .recovery
                    .settings
                    .push((name.to_owned(), value.to_owned()));
            }
            "--pgdata" => {}
            _ => {
                restore_options.threads = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or("--parallel takes 1 to 64")?
            }
        }
    }
    let (id, stats) = restore_backup(repo, id, &restore_options, &mut |_| {
        ControlFlow::Continue(())
    })
    .map_err(|e| e.to_string())?;
    println!(
        "restored {id} into {target}: {} files, {} bytes",
        stats.files, stats.bytes
    );
    Ok(())
}
