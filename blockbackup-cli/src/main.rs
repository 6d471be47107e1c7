//! `pg_blockbackup`: the backup repository with the server down.
//!
//! ```text
//! pg_blockbackup --repository DIR list
//! pg_blockbackup --repository DIR validate [BACKUP_ID]
//! pg_blockbackup --repository DIR restore BACKUP_ID TARGET_DIR
//!                [--tablespace-mapping OLD=NEW]... [--recovery-target-lsn LSN | --recovery-target-name NAME] [--parallel N]
//!                [--pgdata DIR]
//! ```
//!
//! It does what the SQL functions `backups()`, `validate_backup()` and
//! `restore_backup()` do, with the same code from the pure crate, so that a
//! DBA whose server is gone can still get it back.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;

use blockbackup_core::repository::catalog::BackupStatus;
use blockbackup_core::repository::upkeep;
use blockbackup_core::repository::Repository;
use blockbackup_core::restore::target::{data_directory_places, DestinationRules, ForbiddenPlace};
use blockbackup_core::restore::{restore_backup, RestoreOptions};
use blockbackup_core::Lsn;

const USAGE: &str = "usage:
  pg_blockbackup --repository DIR list
  pg_blockbackup --repository DIR validate [BACKUP_ID]
  pg_blockbackup --repository DIR restore BACKUP_ID TARGET_DIR
                 [--tablespace-mapping OLD=NEW]... [--recovery-target-lsn LSN | --recovery-target-name NAME] [--parallel N]
                 [--pgdata DIR]   (default $PGDATA: a data directory the restore must stay away from)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pg_blockbackup: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let mut repository = None;
    let mut rest = Vec::new();
    let mut options = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--repository" => repository = Some(next_value(&mut iter, arg)?),
            "--tablespace-mapping"
            | "--recovery-target-lsn"
            | "--recovery-target-name"
            | "--parallel"
            | "--pgdata" => options.push((arg.clone(), next_value(&mut iter, arg)?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            flag if flag.starts_with("--") => {
                return Err(format!("unknown option {flag}\n{USAGE}"))
            }
            _ => rest.push(arg.clone()),
        }
    }
    let repository = repository.ok_or_else(|| format!("--repository is required\n{USAGE}"))?;
    let repo = Repository::open(&PathBuf::from(repository)).map_err(|e| e.to_string())?;
    match rest
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["list"] => list(&repo),
        ["validate"] => validate(&repo, None),
        ["validate", id] => validate(&repo, Some(id)),
        ["restore", id, target] => restore(&repo, id, target, &options),
        _ => Err(USAGE.to_string()),
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
    Ok(())
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
    let mut places = vec![ForbiddenPlace::new(repo.root(), "the repository")];
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
    repo: &Repository,
    id: &str,
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
    let mut restore_options = RestoreOptions {
        target: PathBuf::from(target),
        tablespace_mapping: Vec::new(),
        recovery_target_lsn: None,
        recovery_target_name: None,
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
    let stats = restore_backup(repo, id, &restore_options, &mut |_| {
        ControlFlow::Continue(())
    })
    .map_err(|e| e.to_string())?;
    println!(
        "restored {id} into {target}: {} files, {} bytes",
        stats.files, stats.bytes
    );
    Ok(())
}
