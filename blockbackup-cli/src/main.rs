//! `pg_blockbackup`: the backup repository with the server down.
//!
//! ```text
//! pg_blockbackup --repository DIR list
//! pg_blockbackup --repository DIR validate [BACKUP_ID]
//! pg_blockbackup --repository DIR restore BACKUP_ID TARGET_DIR
//!                [--tablespace-mapping OLD=NEW]... [--recovery-target-lsn LSN | --recovery-target-name NAME] [--parallel N]
//! ```
//!
//! It does what the SQL functions `backups()`, `validate_backup()` and
//! `restore_backup()` do, with the same code from the pure crate, so that a
//! DBA whose server is gone can still get it back.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;

use blockbackup_core::catalog::{BackupRecord, BackupStatus};
use blockbackup_core::reconstruct::{chain_members, restore, RestoreOptions};
use blockbackup_core::repository::{validate_backup_id, Repository};
use blockbackup_core::Lsn;

const USAGE: &str = "usage:
  pg_blockbackup --repository DIR list
  pg_blockbackup --repository DIR validate [BACKUP_ID]
  pg_blockbackup --repository DIR restore BACKUP_ID TARGET_DIR
                 [--tablespace-mapping OLD=NEW]... [--recovery-target-lsn LSN | --recovery-target-name NAME] [--parallel N]";

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
            | "--parallel" => options.push((arg.clone(), next_value(&mut iter, arg)?)),
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
        ["restore", id, target] => restore_backup(&repo, id, target, &options),
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
    for r in repo.list().map_err(|e| e.to_string())? {
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
    Ok(())
}

fn validate(repo: &Repository, id: Option<&str>) -> Result<(), String> {
    let _lock = repo.lock().map_err(|e| e.to_string())?;
    let records: Vec<BackupRecord> = match id {
        Some(id) => {
            validate_backup_id(id).map_err(|e| e.to_string())?;
            vec![repo.read_record(id).map_err(|e| e.to_string())?]
        }
        None => repo.list().map_err(|e| e.to_string())?,
    };
    let mut corrupt = 0;
    for record in records
        .into_iter()
        .filter(|r| r.status != BackupStatus::Running)
    {
        let (record, report) = repo
            .validate_and_record(record)
            .map_err(|e| e.to_string())?;
        println!(
            "{} {}: {} files, {} bytes checked",
            record.backup_id,
            record.status.as_str(),
            report.files_checked,
            report.bytes_checked
        );
        for error in &report.errors {
            println!("  {error}");
        }
        corrupt += usize::from(!report.errors.is_empty());
    }
    if corrupt > 0 {
        return Err(format!("{corrupt} backup(s) failed validation"));
    }
    Ok(())
}

fn restore_backup(
    repo: &Repository,
    id: &str,
    target: &str,
    options: &[(String, String)],
) -> Result<(), String> {
    validate_backup_id(id).map_err(|e| e.to_string())?;
    let mut restore_options = RestoreOptions {
        target: PathBuf::from(target),
        tablespace_mapping: Vec::new(),
        recovery_target_lsn: None,
        recovery_target_name: None,
        threads: 1,
    };
    if !restore_options.target.is_absolute() {
        return Err(format!("TARGET_DIR must be an absolute path, got {target}"));
    }
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
            _ => {
                restore_options.threads = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or("--parallel takes 1 to 64")?
            }
        }
    }
    let (records, contents) = repo.load_chain(id).map_err(|e| e.to_string())?;
    let chain = chain_members(repo, &records, &contents);
    let stats = restore(&chain, &restore_options, &mut |_| ControlFlow::Continue(()))
        .map_err(|e| e.to_string())?;
    println!(
        "restored {id} into {target}: {} files, {} bytes",
        stats.files, stats.bytes
    );
    Ok(())
}
