//! `restore_backup`: rebuilds a data directory from a backup and its
//! ancestors into a target directory. The work itself (reconstruction,
//! manifest, tablespaces, the destination check) is the pure crate's,
//! shared with the offline command; here we name the places of the running
//! server a restore must stay away from, and decide who may choose where
//! the server's OS user writes.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use blockbackup_core::repository::Repository;
use blockbackup_core::restore::conf_file;
use blockbackup_core::restore::recovery_target::ArchiveCommands;
use blockbackup_core::restore::target::{
    data_directory_places, resolved, DestinationRules, ForbiddenPlace,
};
use blockbackup_core::restore::{
    restore_backup, RecoveryExtras, RestoreOptions, RestoreProgress, RestoreStats,
};
use blockbackup_core::wal::WalArchive;
use blockbackup_core::Lsn;
use pgrx::pg_sys;

use super::repository_access;
use crate::server_paths::data_directory;
use crate::{errors, settings};

pub struct RestoreRequest {
    /// None: the newest usable backup that reaches the target.
    pub backup_id: Option<String>,
    pub target: String,
    pub recovery_target_lsn: Option<Lsn>,
    pub recovery_target_name: Option<String>,
    pub recovery: RecoveryExtras,
    /// `{"<old location or oid>": "<new directory>"}`.
    pub tablespace_mapping: Option<serde_json::Value>,
    /// `{"<setting>": <value>}` for the copy's `postgresql.auto.conf`.
    pub settings: Option<serde_json::Value>,
}

/// Restores and returns the backup restored with what was written.
pub fn restore(request: RestoreRequest) -> (String, RestoreStats) {
    let repo = repository_access::open_for_writing();
    let rules = destination_rules(&repo);
    let archive_commands = archive_commands(&repo);
    let mut tablespace_mapping = Vec::new();
    if let Some(mapping) = &request.tablespace_mapping {
        let Some(entries) = mapping.as_object() else {
            errors::invalid_argument(
                "tablespace_mapping must be a JSON object".into(),
                "Pass {\"<old location or oid>\": \"<new directory>\"}.",
            );
        };
        for (key, value) in entries {
            let Some(dir) = value.as_str() else {
                errors::invalid_argument(
                    format!("tablespace_mapping[\"{key}\"] must be a string"),
                    "Pass the new directory as a JSON string.",
                );
            };
            tablespace_mapping.push((key.clone(), PathBuf::from(dir)));
        }
    }

    let mut recovery = request.recovery;
    if let Some(settings) = &request.settings {
        recovery.settings = extra_settings(settings);
    }
    let options = RestoreOptions {
        target: PathBuf::from(&request.target),
        tablespace_mapping,
        recovery_target_lsn: request.recovery_target_lsn,
        recovery_target_name: request.recovery_target_name,
        recovery,
        archive_commands,
        threads: settings::PARALLEL.get().max(1) as usize,
        rules,
    };
    let mut poll = |_: &RestoreProgress| {
        if super::take::interrupt_pending() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    restore_backup(&repo, request.backup_id.as_deref(), &options, &mut poll).unwrap_or_else(|e| {
        pgrx::pg_sys::check_for_interrupts!();
        errors::restore(e)
    })
}

/// The settings to add to the copy's configuration, from `{"name":
/// value}` (a string, number or boolean each). Superusers only: a setting
/// such as `archive_command` runs what it says once the copy is started.
fn extra_settings(settings: &serde_json::Value) -> Vec<(String, String)> {
    if !unsafe { pg_sys::superuser() } {
        errors::restore_settings_not_superuser();
    }
    let Some(entries) = settings.as_object() else {
        errors::invalid_argument(
            "settings must be a JSON object".into(),
            "Pass {\"<setting>\": \"<value>\"}, e.g. {\"port\": 5433}.",
        );
    };
    entries
        .iter()
        .map(|(name, value)| {
            let text = match value {
                serde_json::Value::String(text) => text.clone(),
                serde_json::Value::Number(number) => number.to_string(),
                serde_json::Value::Bool(on) => if *on { "on" } else { "off" }.to_owned(),
                _ => errors::invalid_argument(
                    format!("settings[\"{name}\"] must be a string, a number or a boolean"),
                    "Pass each setting's value as PostgreSQL would read it.",
                ),
            };
            (name.clone(), text)
        })
        .collect()
}

/// The restored cluster's `restore_command` and `recovery_end_command`
/// when the repository has a WAL archive: the offline command installed
/// next to `postgres`, fetching from this repository. None without an archive (the backup's own WAL
/// then); an error when there is one but the command is missing.
fn archive_commands(repo: &Repository) -> Option<ArchiveCommands> {
    let has_archive = WalArchive::new(repo)
        .segment_size()
        .unwrap_or_else(|e| errors::archive(e))
        .is_some();
    if !has_archive {
        return None;
    }
    // SAFETY: set once at process start, a NUL-terminated path.
    let postgres = unsafe { std::ffi::CStr::from_ptr((&raw const pg_sys::my_exec_path).cast()) }
        .to_string_lossy()
        .into_owned();
    let program = Path::new(&postgres)
        .parent()
        .map(|bin| bin.join("pg_blockbackup"))
        .unwrap_or_default();
    if !program.is_file() {
        errors::archive_command_missing(&program);
    }
    Some(ArchiveCommands::new(
        &program,
        repo.location(),
        Some(&repository_access::s3_settings()),
    ))
}

/// Where this session's restore may write: apart from the data directory,
/// its tablespaces, every directory the server reads configuration or
/// keys from, and the repository; and, for a role without superuser
/// rights, only under `blockbackup.restore_directory`.
fn destination_rules(repo: &Repository) -> DestinationRules {
    let confined_to = if unsafe { pg_sys::superuser() } {
        None
    } else {
        let Some(dir) = settings::text(&settings::RESTORE_DIRECTORY) else {
            errors::restore_directory_unset();
        };
        let Some(dir) = resolved(Path::new(&dir)) else {
            errors::invalid_argument(
                format!("blockbackup.restore_directory must be an absolute path, got \"{dir}\""),
                "A superuser sets it to an absolute directory.",
            );
        };
        Some(("blockbackup.restore_directory".to_owned(), dir))
    };
    let data_dir = data_directory();
    let mut forbidden: Vec<ForbiddenPlace> = repo
        .local_root()
        .map(|root| ForbiddenPlace::new(root, "the repository"))
        .into_iter()
        .collect();
    forbidden.extend(data_directory_places(
        &data_dir,
        &configuration_files(&data_dir),
    ));
    for dir in key_directories(&data_dir) {
        forbidden.push(ForbiddenPlace::new(
            &dir,
            "a directory the server reads TLS keys from",
        ));
    }
    DestinationRules {
        forbidden,
        confined_to,
    }
}

/// Where the server reads settings and client authentication from first:
/// `config_file`, `hba_file` and `ident_file` (includes are followed from
/// there).
fn configuration_files(data_dir: &Path) -> Vec<(PathBuf, conf_file::Syntax)> {
    use conf_file::Syntax::{Authentication, Settings};
    [
        ("config_file", Settings),
        ("hba_file", Authentication),
        ("ident_file", Authentication),
    ]
    .into_iter()
    .filter_map(|(name, syntax)| {
        settings::server_setting(name).map(|value| (absolute(data_dir, value), syntax))
    })
    .collect()
}

/// The directories of the `ssl_*` files and `ssl_crl_dir`.
fn key_directories(data_dir: &Path) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for name in [
        "ssl_cert_file",
        "ssl_key_file",
        "ssl_ca_file",
        "ssl_crl_file",
    ] {
        if let Some(file) = settings::server_setting(name) {
            if let Some(parent) = absolute(data_dir, file).parent() {
                dirs.insert(parent.to_owned());
            }
        }
    }
    if let Some(dir) = settings::server_setting("ssl_crl_dir") {
        dirs.insert(absolute(data_dir, dir));
    }
    dirs
}

/// A setting's path, relative ones taken from the data directory.
fn absolute(data_dir: &Path, value: String) -> PathBuf {
    let path = PathBuf::from(value);
    if path.is_absolute() {
        path
    } else {
        data_dir.join(path)
    }
}
