//! What the repository records about each backup: one `backup.json` per
//! backup (the catalog entry) and one `contents.json` listing every file
//! the backup stored, with the checksum that validation and restore check.
//!
//! Both are JSON (serde) so that a DBA can read them with any tool, and
//! both are written durably (temp file, fsync, rename) by `repository`.

use serde::{Deserialize, Serialize};

use crate::backup::page_checksum::PageChecksumFailure;
use crate::lsn::Lsn;

/// How many failed pages a record lists (it counts all of them).
pub const MAX_LISTED_CHECKSUM_FAILURES: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    Full,
    Incremental,
    Dump,
}

/// RUNNING while being taken; DONE when taken; OK once `validate_backup`
/// reread it; ERROR if taking it failed (never a parent); CORRUPT if
/// validation found a damaged or missing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BackupStatus {
    Running,
    Done,
    Ok,
    Error,
    Corrupt,
}

impl BackupMode {
    /// The name the SQL interface shows.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupMode::Full => "full",
            BackupMode::Incremental => "incremental",
            BackupMode::Dump => "dump",
        }
    }
}

impl BackupStatus {
    /// The name the SQL interface shows.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::Running => "RUNNING",
            BackupStatus::Done => "DONE",
            BackupStatus::Ok => "OK",
            BackupStatus::Error => "ERROR",
            BackupStatus::Corrupt => "CORRUPT",
        }
    }

    /// Whether a backup in this state can be restored or be a parent.
    pub fn is_usable(self) -> bool {
        matches!(self, BackupStatus::Done | BackupStatus::Ok)
    }
}

/// How a backup's files are stored: one codec for all of them.
pub use crate::compress::Compression;

/// A tablespace as `pg_backup_stop`'s tablespace map names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceEntry {
    pub oid: u32,
    pub location: String,
}

/// The catalog entry of one backup (`backups/<id>/backup.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub backup_id: String,
    pub mode: BackupMode,
    pub status: BackupStatus,
    pub parent_backup_id: Option<String>,
    pub label: Option<String>,
    pub timeline: u32,
    #[serde(with = "lsn_text")]
    pub start_lsn: Lsn,
    #[serde(with = "opt_lsn_text")]
    pub stop_lsn: Option<Lsn>,
    /// Microseconds since the Unix epoch.
    pub start_time_us: i64,
    pub end_time_us: Option<i64>,
    /// Latest transaction id and commit time the backup is consistent
    /// with, when known (for `recovery_target_xid`/`_time` decisions).
    pub recovery_xid: Option<u64>,
    pub recovery_time_us: Option<i64>,
    pub files: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub compression: Compression,
    /// The level `compression` was used at (None in records of the first
    /// release, which used gzip's default, 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    pub block_size: u32,
    /// Blocks per relation segment file (RELSEG_SIZE).
    pub segment_blocks: u32,
    pub wal_segment_size: u32,
    pub system_identifier: u64,
    /// PG_VERSION_NUM of the server, e.g. 150020.
    pub server_version: u32,
    pub tablespaces: Vec<TablespaceEntry>,
    /// Why the backup ended in ERROR or CORRUPT.
    pub error: Option<String>,
    /// For a dump: what was dumped and how pg_dump ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpDetails>,
    /// Named restore points created after the backup whose WAL the backup
    /// holds too, so that it can be restored to any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restore_points: Vec<RestorePoint>,
    /// Pages whose checksum failed when the backup read them: how many in
    /// all, and the first [`MAX_LISTED_CHECKSUM_FAILURES`] of them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub checksum_failures: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checksum_failure_pages: Vec<PageChecksumFailure>,
    /// The host the backup was started on. Its locks are that host's, so
    /// only that host can tell that a RUNNING backup was cut off (an
    /// object store is shared by hosts that share nothing else).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// A restore point (`pg_create_restore_point`) reachable from a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    pub name: String,
    /// The end of the restore point's WAL record.
    #[serde(with = "lsn_text")]
    pub lsn: Lsn,
    /// Microseconds since the Unix epoch.
    pub time_us: i64,
}

/// The longest restore point name PostgreSQL accepts (MAXFNAMELEN - 1).
pub const MAX_RESTORE_POINT_NAME_BYTES: usize = 63;

/// What the server a backup comes from is, as every record repeats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterFacts {
    pub timeline: u32,
    pub block_size: u32,
    pub segment_blocks: u32,
    pub wal_segment_size: u32,
    pub system_identifier: u64,
    pub server_version: u32,
}

impl BackupRecord {
    /// Records page checksum failures the copy found.
    pub fn add_checksum_failures(&mut self, failures: &[PageChecksumFailure]) {
        self.checksum_failures += failures.len() as u64;
        let room = MAX_LISTED_CHECKSUM_FAILURES.saturating_sub(self.checksum_failure_pages.len());
        self.checksum_failure_pages
            .extend(failures.iter().take(room).cloned());
    }

    /// The furthest LSN the WAL this backup holds is known to reach: its
    /// stop LSN (pg_backup_stop switched to a new segment there, so a
    /// record starts at it), or its newest restore point, whose WAL was
    /// stored up to a segment switch after it.
    pub fn wal_reach(&self) -> Option<Lsn> {
        let stop = self.stop_lsn?;
        Some(
            self.restore_points
                .iter()
                .map(|point| point.lsn)
                .fold(stop, std::cmp::max),
        )
    }

    /// A RUNNING record with no id yet (`Repository::create_backup` gives
    /// it one), no parent, nothing copied and no compression.
    pub fn begin(
        mode: BackupMode,
        cluster: ClusterFacts,
        start_lsn: Lsn,
        start_time_us: i64,
    ) -> Self {
        BackupRecord {
            backup_id: String::new(),
            mode,
            status: BackupStatus::Running,
            parent_backup_id: None,
            label: None,
            timeline: cluster.timeline,
            start_lsn,
            stop_lsn: None,
            start_time_us,
            end_time_us: None,
            recovery_xid: None,
            recovery_time_us: None,
            files: 0,
            bytes_read: 0,
            bytes_written: 0,
            compression: Compression::None,
            compression_level: None,
            block_size: cluster.block_size,
            segment_blocks: cluster.segment_blocks,
            wal_segment_size: cluster.wal_segment_size,
            system_identifier: cluster.system_identifier,
            server_version: cluster.server_version,
            tablespaces: Vec::new(),
            error: None,
            dump: None,
            restore_points: Vec::new(),
            checksum_failures: 0,
            checksum_failure_pages: Vec::new(),
            host: None,
        }
    }
}

/// What a `dump` backup holds: one pg_dump run of one database, its output
/// under `backups/<id>/dump/` and pg_dump's standard error in
/// `backups/<id>/pg_dump.log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpDetails {
    pub database: String,
    /// pg_dump's format: custom, directory, plain or tar.
    pub format: String,
    pub jobs: u32,
    /// The extra pg_dump options, as passed (normalized).
    pub options: Vec<String>,
    /// The dump file (directory for the directory format), relative to
    /// the backup's `dump/` directory.
    pub output: String,
    /// pg_dump's exit code; None while it runs or when a signal ended it.
    pub exit_code: Option<i32>,
    /// The agent that took it (unique on this server, see `dump_agents()`).
    pub agent_id: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredKind {
    /// The whole file.
    Whole,
    /// An incremental file (`INCREMENTAL.<name>`, see `incremental_file`).
    Incremental,
    /// A WAL segment under pg_wal/.
    Wal,
}

/// One file a backup stored (`backups/<id>/contents.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Path relative to the backup's data directory image, as restored
    /// (for an incremental file: `base/5/INCREMENTAL.16384`), with '/'.
    pub path: String,
    pub kind: StoredKind,
    /// Bytes of the file's content (before compression).
    pub size: u64,
    /// Bytes on disk in the repository (after compression).
    pub stored_size: u64,
    /// CRC-32C of the content (before compression).
    pub crc32c: u32,
    /// CRC-32C of the bytes stored (after compression; the content's for
    /// uncompressed files). Absent in records of the first release, which
    /// checked the content only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_crc32c: Option<u32>,
    /// Modification time of the source, seconds since the Unix epoch.
    pub mtime: i64,
}

/// `contents.json`: what a backup holds, in path order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupContents {
    pub files: Vec<StoredFile>,
}

impl BackupContents {
    /// Adds `files`, replacing those with the same path; keeps path order.
    pub fn upsert(&mut self, files: Vec<StoredFile>) {
        for file in files {
            match self.files.binary_search_by(|f| f.path.cmp(&file.path)) {
                Ok(at) => self.files[at] = file,
                Err(at) => self.files.insert(at, file),
            }
        }
    }
}

mod lsn_text {
    use super::Lsn;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(lsn)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

pub(crate) mod opt_lsn_text {
    use super::Lsn;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(lsn: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
        match lsn {
            Some(lsn) => s.collect_str(lsn),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Lsn>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}
