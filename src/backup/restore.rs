//! `restore_backup`: rebuilds a data directory from a backup and its
//! ancestors into a target directory, with the checks that keep a restore
//! on the same host away from the running cluster's files. The work itself
//! (reconstruction, manifest, tablespaces) is the pure crate's, shared with
//! the offline command.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use blockbackup_core::reconstruct::{
    chain_members, restore, RestoreOptions, RestoreProgress, RestoreStats,
};
use blockbackup_core::repository::{validate_backup_id, Repository};
use blockbackup_core::Lsn;

use super::repository_access;
use crate::server_paths::{data_directory, overlapping, resolved};
use crate::{errors, settings};

pub struct RestoreRequest {
    pub backup_id: String,
    pub target: String,
    pub recovery_target_lsn: Option<Lsn>,
    pub recovery_target_name: Option<String>,
    /// `{"<old location or oid>": "<new directory>"}`.
    pub tablespace_mapping: Option<serde_json::Value>,
}

pub fn restore_backup(request: RestoreRequest) -> RestoreStats {
    validate_backup_id(&request.backup_id).unwrap_or_else(|e| errors::repository(e));
    let repo = repository_access::open_for_writing();
    let forbidden = forbidden_places(&repo);
    let target = checked_destination("target_dir", Path::new(&request.target), &forbidden);
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
            let dir =
                checked_destination("a tablespace_mapping directory", Path::new(dir), &forbidden);
            if overlapping(&dir, &target) {
                errors::invalid_argument(
                    format!("tablespace directory \"{}\" overlaps target_dir", dir.display()),
                    "Leave such a tablespace unmapped: by default it is restored inside target_dir.",
                );
            }
            tablespace_mapping.push((key.clone(), dir));
        }
    }

    let (records, contents) = repo
        .load_chain(&request.backup_id)
        .unwrap_or_else(|e| errors::repository(e));
    let chain = chain_members(&repo, &records, &contents);
    let options = RestoreOptions {
        target,
        tablespace_mapping,
        recovery_target_lsn: request.recovery_target_lsn,
        recovery_target_name: request.recovery_target_name,
        threads: settings::PARALLEL.get().max(1) as usize,
    };
    let mut poll = |_: &RestoreProgress| {
        if super::take::interrupt_pending() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    restore(&chain, &options, &mut poll).unwrap_or_else(|e| {
        pgrx::pg_sys::check_for_interrupts!();
        errors::restore(e)
    })
}

/// The running cluster's data directory, its tablespaces and the
/// repository: a restore must not write into any of them.
fn forbidden_places(repo: &Repository) -> Vec<PathBuf> {
    let data_dir = data_directory();
    let mut places = vec![
        resolved(&data_dir).unwrap_or(data_dir.clone()),
        repo.root().to_path_buf(),
    ];
    if let Ok(entries) = std::fs::read_dir(data_dir.join("pg_tblspc")) {
        places.extend(
            entries
                .flatten()
                .filter_map(|e| e.path().canonicalize().ok()),
        );
    }
    places
}

fn checked_destination(what: &str, path: &Path, forbidden: &[PathBuf]) -> PathBuf {
    let Some(dir) = resolved(path) else {
        errors::invalid_argument(
            format!(
                "{what} must be an absolute path without \"..\", got \"{}\"",
                path.display()
            ),
            "Pass an absolute directory outside the data directory and the repository.",
        );
    };
    if let Some(place) = forbidden.iter().find(|place| overlapping(&dir, place)) {
        errors::invalid_argument(
            format!("{what} \"{}\" overlaps \"{}\", which belongs to the running cluster or the repository", dir.display(), place.display()),
            "Restore into a new, empty directory of its own.",
        );
    }
    dir
}
