//! Which archived WAL no kept backup can use any more. Recovery from a
//! backup reads WAL from the backup's start LSN on, never before it,
//! whatever the timeline; so a segment that ends at or before the oldest
//! start of every kept backup is of no use, while every history file stays
//! (they are tiny, and a timeline's history is needed as long as anything
//! after it is). Nothing is removed while no usable backup is kept (the
//! archive may be all that is left to recover with, from a base backup
//! taken elsewhere), nor while the catalog holds a damaged entry (its
//! start is unknown).

use super::archive::{ArchiveError, ArchivedFile, WalArchive};
use super::name::WalFileKind;
use crate::repository::catalog::{BackupMode, BackupRecord};
use crate::Lsn;

/// Archived WAL removed by [`expire_wal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRemoval {
    pub first: String,
    pub last: String,
    pub files: u64,
    pub bytes: u64,
    /// The oldest start LSN a kept backup needs.
    pub kept_from: Lsn,
}

/// The archived files no kept backup of `kept` can use: segments,
/// partial segments and backup history files wholly before the oldest
/// kept start.
pub fn unneeded_wal<'a>(
    files: &'a [ArchivedFile],
    segment_size: u64,
    kept: &[BackupRecord],
    damaged_entries: bool,
) -> (Vec<&'a ArchivedFile>, Option<Lsn>) {
    let oldest = kept
        .iter()
        .filter(|r| r.status.is_usable() && r.mode != BackupMode::Dump)
        .map(|r| r.start_lsn)
        .min();
    let Some(oldest) = oldest.filter(|_| !damaged_entries) else {
        return (Vec::new(), None);
    };
    let keep_from_segment = oldest.0 / segment_size;
    let unneeded = files
        .iter()
        .filter(|f| f.name.kind != WalFileKind::TimelineHistory)
        .filter(|f| f.name.segment_number(segment_size) < keep_from_segment)
        .collect();
    (unneeded, Some(oldest))
}

/// Removes the archived WAL that none of `kept` can use; None when
/// nothing was removed.
pub fn expire_wal(
    archive: &WalArchive<'_>,
    kept: &[BackupRecord],
    damaged_entries: bool,
) -> Result<Option<WalRemoval>, ArchiveError> {
    let Some(segment_size) = archive.segment_size()? else {
        return Ok(None);
    };
    let files = archive.list()?;
    let (unneeded, oldest) = unneeded_wal(&files, segment_size, kept, damaged_entries);
    let (Some(first), Some(last), Some(kept_from)) = (unneeded.first(), unneeded.last(), oldest)
    else {
        return Ok(None);
    };
    let removal = WalRemoval {
        first: first.name.to_string(),
        last: last.name.to_string(),
        files: unneeded.len() as u64,
        bytes: unneeded.iter().map(|f| f.stored_bytes).sum(),
        kept_from,
    };
    // Oldest first: one cut off half-way leaves a shorter archive, never a
    // gap.
    for file in unneeded {
        archive.remove(file)?;
    }
    Ok(Some(removal))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::catalog::BackupStatus;

    const SEG: u64 = 16 << 20;

    fn file(name: &str) -> ArchivedFile {
        crate::wal::archive::listed(name, 1, None)
    }

    fn record(start: u64, status: BackupStatus, mode: BackupMode) -> BackupRecord {
        let json = format!(
            r#"{{"backup_id":"b","mode":"{}","status":"{}","parent_backup_id":null,"label":null,
            "timeline":1,"start_lsn":"{}","stop_lsn":null,"start_time_us":0,"end_time_us":null,
            "recovery_xid":null,"recovery_time_us":null,"files":0,"bytes_read":0,"bytes_written":0,
            "compression":"none","block_size":8192,"segment_blocks":131072,"wal_segment_size":16777216,
            "system_identifier":1,"server_version":150000,"tablespaces":[],"error":null}}"#,
            mode.as_str(),
            status.as_str(),
            Lsn(start)
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn only_what_lies_before_every_kept_backup_goes() {
        let files: Vec<ArchivedFile> = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "00000002.history",
            "000000010000000000000003.partial",
            "000000020000000000000003",
            "000000020000000000000004",
        ]
        .iter()
        .map(|n| file(n))
        .collect();
        let kept = [
            record(3 * SEG + 100, BackupStatus::Done, BackupMode::Full),
            record(SEG, BackupStatus::Error, BackupMode::Full),
            record(0, BackupStatus::Done, BackupMode::Dump),
        ];
        let (unneeded, oldest) = unneeded_wal(&files, SEG, &kept, false);
        let names: Vec<String> = unneeded.iter().map(|f| f.name.to_string()).collect();
        assert_eq!(
            names,
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup"
            ]
        );
        assert_eq!(oldest, Some(Lsn(3 * SEG + 100)));
        assert!(unneeded_wal(&files, SEG, &kept, true).0.is_empty());
        assert!(unneeded_wal(&files, SEG, &kept[1..], false).0.is_empty());
    }
}
