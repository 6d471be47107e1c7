//! Chains: a backup and its ancestors, down to the full backup they are
//! built on, with the checks that make a chain restorable (every member
//! usable, present, of this cluster and of one block geometry).

use std::collections::HashSet;

use super::catalog::{BackupContents, BackupMode, BackupRecord};
use super::locks::ReadingLock;
use super::{Repository, RepositoryError};

impl Repository {
    /// The backup `id` and its ancestors, oldest (the full backup) first.
    /// Every member must be usable (DONE or OK), present, of this cluster
    /// and of the same block geometry; anything else is an error naming
    /// the backup at fault.
    pub fn chain(&self, id: &str) -> Result<Vec<BackupRecord>, RepositoryError> {
        let mut chain: Vec<BackupRecord> = Vec::new();
        let mut seen = HashSet::new();
        let mut next = Some(id.to_owned());
        while let Some(current) = next {
            if !seen.insert(current.clone()) {
                return Err(RepositoryError::BrokenChain {
                    id: id.to_owned(),
                    detail: format!("backup \"{current}\" is its own ancestor"),
                });
            }
            let record = match (self.read_record(&current), chain.last()) {
                (Ok(record), _) => record,
                (Err(RepositoryError::BackupNotFound { .. }), Some(child)) => {
                    return Err(RepositoryError::MissingParent {
                        id: child.backup_id.clone(),
                        parent: current,
                    })
                }
                (Err(error), _) => return Err(error),
            };
            self.check_chain_member(&record, chain.last())?;
            next = record.parent_backup_id.clone();
            chain.push(record);
        }
        chain.reverse();
        Ok(chain)
    }

    fn check_chain_member(
        &self,
        record: &BackupRecord,
        child: Option<&BackupRecord>,
    ) -> Result<(), RepositoryError> {
        let id = &record.backup_id;
        let broken = |detail: String| RepositoryError::BrokenChain {
            id: id.clone(),
            detail,
        };
        if !record.status.is_usable() {
            return Err(RepositoryError::NotUsable {
                id: id.clone(),
                status: record.status,
            });
        }
        if record.system_identifier != self.system_identifier {
            return Err(RepositoryError::ForeignBackup {
                id: id.clone(),
                found: record.system_identifier,
                expected: self.system_identifier,
            });
        }
        match (record.mode, &record.parent_backup_id) {
            (BackupMode::Incremental, None) => {
                return Err(broken("it is incremental but names no parent".to_owned()))
            }
            (BackupMode::Full | BackupMode::Dump, Some(parent)) => {
                return Err(broken(format!(
                    "it is not incremental but names parent \"{parent}\""
                )))
            }
            _ => {}
        }
        if let Some(child) = child {
            if record.mode == BackupMode::Dump {
                return Err(broken(format!(
                    "\"{}\" names the dump \"{id}\" as its parent",
                    child.backup_id
                )));
            }
            if (record.block_size, record.segment_blocks)
                != (child.block_size, child.segment_blocks)
            {
                return Err(broken(format!(
                    "\"{}\" and its parent \"{id}\" differ in block size or segment size",
                    child.backup_id
                )));
            }
        }
        Ok(())
    }

    /// A backup and its ancestors, oldest (the full) first, each with its
    /// contents: what a restore reads.
    pub fn load_chain(
        &self,
        id: &str,
    ) -> Result<(Vec<BackupRecord>, Vec<BackupContents>), RepositoryError> {
        let leaf = self.read_record(id)?;
        if leaf.mode == BackupMode::Dump {
            return Err(RepositoryError::IsDump {
                id: leaf.backup_id,
                database: leaf.dump.map_or_else(String::new, |d| d.database),
            });
        }
        let records = self.chain(id)?;
        let contents = records
            .iter()
            .map(|record| self.read_contents(&record.backup_id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((records, contents))
    }

    /// [`Repository::load_chain`] for a restore: every backup of the chain
    /// is held for reading (so none can be deleted meanwhile) before its
    /// contents are read, and the chain is read again once held.
    #[allow(clippy::type_complexity)]
    pub fn load_chain_for_restore(
        &self,
        id: &str,
    ) -> Result<(Vec<BackupRecord>, Vec<BackupContents>, Vec<ReadingLock>), RepositoryError> {
        let (records, _) = self.load_chain(id)?;
        let locks = records
            .iter()
            .map(|record| self.hold_for_reading(&record.backup_id))
            .collect::<Result<Vec<_>, _>>()?;
        let (held, contents) = self.load_chain(id)?;
        if held != records {
            return Err(RepositoryError::BrokenChain {
                id: id.to_owned(),
                detail: "it changed while the restore started; try again".to_owned(),
            });
        }
        Ok((held, contents, locks))
    }
}
