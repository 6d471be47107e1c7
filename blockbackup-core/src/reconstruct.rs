//! Restoring a backup chain into a data directory.
//!
//! # Reconstructing one file
//!
//! A chain is a full backup followed by incrementals, oldest first. The
//! newest member that has a file decides what it is: a whole file is copied
//! as it is; an incremental file (see [`crate::incremental_file`]) gives the
//! exact length of the result and some of its blocks, and every other block
//! comes from the next older member that has the file, and so on down the
//! chain to the nearest whole file. A block at or past the end of an older
//! version of the file did not exist at that time, so it is zeros and no
//! still older version is consulted for it: a file that was truncated and
//! regrew without a block being written must not resurrect pre-truncation
//! data. The walk stops as soon as every block is decided, so members
//! older than needed are not even opened.
//!
//! The blocks of every source are stored in increasing block order, so the
//! result is produced as a sequential k-way merge: each output block is
//! taken from the newest source that has it, and every source is read front
//! to back exactly once, skipping the blocks a newer source supersedes.
//! That is what lets gzip'd sources be read without random access, and it
//! keeps memory to one block buffer per file plus the headers. Every source
//! is read to its end and its size and CRC-32C compared with what its
//! backup's `contents.json` recorded, so a damaged backup is an error that
//! names it, never a silently wrong restored file. When a source also has a
//! format problem, a checksum mismatch is reported first: it says that the
//! stored file changed since it was written, which is the likelier cause.
//!
//! # Restoring a directory
//!
//! [`restore`] writes the newest member's files (files only in older
//! backups were deleted since), creates the directories PostgreSQL needs at
//! startup, places tablespaces, configures archive recovery (which ends
//! on a new timeline, optionally at a target LSN), and writes a `backup_manifest` so that `pg_verifybackup` can
//! check the result. It writes nothing outside the target directory unless
//! a tablespace mapping says where a tablespace goes: by default
//! tablespaces are restored in place (`pg_tblspc/<oid>` as a real
//! directory, which PostgreSQL runs with `allow_in_place_tablespaces = on`,
//! appended to `postgresql.auto.conf`: without it, the end of recovery
//! refuses directories in `pg_tblspc`), so that a restore on the same host
//! never touches the running cluster's tablespaces. For the same
//! reason the backed-up `tablespace_map` (which names the original
//! locations) is dropped, and one naming the new locations is written
//! when some tablespace is mapped.
//!
//! Files are distributed over worker threads; the calling thread only
//! reports progress and relays cancellation. Every file and directory
//! written is fsynced before the restore reports success, and on any error
//! or cancellation everything the restore created is removed, so that a
//! half-restored directory never looks usable.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::read::MultiGzDecoder;
use roaring::RoaringBitmap;
use thiserror::Error;

use crate::backup_manifest::{render_manifest, ManifestFile, WalRange};
use crate::catalog::{
    BackupContents, BackupMode, BackupRecord, Compression, StoredFile, StoredKind,
};
use crate::incremental_file::{
    incremental_path, read_incremental_header, restored_path, IncrementalError, IncrementalHeader,
};
use crate::lsn::Lsn;
use crate::repository::Repository;
use crate::safe_path::safe_relative_path;

/// One backup of a chain, as restore reads it.
#[derive(Clone, Debug)]
pub struct ChainMember<'a> {
    pub record: &'a BackupRecord,
    /// The backup's data directory image, `backups/<id>/pgdata`.
    pub data_dir: PathBuf,
    pub contents: &'a BackupContents,
}

/// The chain members of `records` (oldest first) and their `contents`, as
/// `Repository::load_chain` returns them.
pub fn chain_members<'a>(
    repository: &Repository,
    records: &'a [BackupRecord],
    contents: &'a [BackupContents],
) -> Vec<ChainMember<'a>> {
    records
        .iter()
        .zip(contents)
        .map(|(record, contents)| ChainMember {
            record,
            data_dir: repository.data_dir(&record.backup_id),
            contents,
        })
        .collect()
}

/// Size and CRC-32C of a reconstructed file, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconstructedFile {
    pub size: u64,
    pub crc32c: u32,
}

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The new data directory: absent or empty.
    pub target: PathBuf,
    /// Where tablespaces go instead of in place under the target; the key
    /// is a tablespace's oid (as text) or its original location.
    pub tablespace_mapping: Vec<(String, PathBuf)>,
    /// Recover up to this LSN and promote; `None` recovers to the end of
    /// the backup's WAL only.
    pub recovery_target_lsn: Option<Lsn>,
    /// Recover up to this restore point of the backup and promote.
    pub recovery_target_name: Option<String>,
    /// Worker threads (0 counts as 1).
    pub threads: usize,
}

/// Progress of a restore, as given to the `poll` callback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreProgress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    /// Estimated until every reconstructed file's length is known.
    pub bytes_total: u64,
}

/// What a restore wrote from the backups (not counting the files it
/// generates: manifest, signal and tablespace map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreStats {
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("restore target {} is not an empty directory: restore into a new or empty directory", path.display())]
    TargetNotEmpty { path: PathBuf },
    #[error("backup {backup_id} lists {path} but {} is missing: the backup is damaged; validate it (validate_backup) and restore another backup", file.display())]
    MissingFile {
        backup_id: String,
        path: String,
        file: PathBuf,
    },
    #[error("{path} in backup {backup_id} does not match contents.json: read {actual_size} bytes with CRC-32C {actual_crc:08x}, expected {expected_size} bytes with {expected_crc:08x}; the backup is damaged, restore another backup")]
    ChecksumMismatch {
        backup_id: String,
        path: String,
        expected_size: u64,
        expected_crc: u32,
        actual_size: u64,
        actual_crc: u32,
    },
    #[error("incremental file {path} of backup {backup_id} is invalid: {source}")]
    BadIncremental {
        backup_id: String,
        path: String,
        #[source]
        source: IncrementalError,
    },
    #[error("backup chain cannot be restored: {reason}")]
    BadChain { reason: String },
    #[error("no backup of the chain has {path}")]
    NotInChain { path: String },
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not decompress {path} of backup {backup_id}: {source}; the backup is damaged, restore another backup")]
    Decompress {
        backup_id: String,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("recovery target {target} is before {stop_lsn}, where backup {backup_id} becomes consistent: choose a target at or after it, or restore an older backup")]
    RecoveryTargetBeforeConsistency {
        target: Lsn,
        backup_id: String,
        stop_lsn: Lsn,
    },
    #[error("backup {backup_id} holds no WAL for restore point {name:?} (it holds: {known}); restore the backup that create_restore_point named")]
    UnknownRestorePoint {
        name: String,
        backup_id: String,
        known: String,
    },
    #[error("give recovery_target_lsn or recovery_target_name, not both: PostgreSQL recovers to one target")]
    TwoRecoveryTargets,
    #[error("tablespace mapping {key:?} -> {}: {reason}", location.display())]
    BadTablespaceMapping {
        key: String,
        location: PathBuf,
        reason: String,
    },
    #[error("restore cancelled; what it had written was removed")]
    Cancelled,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_owned(),
        source,
    }
}

// ---------------------------------------------------------------------------
// Reconstructing one file
// ---------------------------------------------------------------------------

/// The contents of each member of a chain, by stored path.
struct ChainIndex<'c, 'a> {
    chain: &'c [ChainMember<'a>],
    files: Vec<HashMap<&'a str, &'a StoredFile>>,
}

/// How one member of the chain has a file.
enum Version<'a> {
    Whole(&'a StoredFile),
    Incremental(&'a StoredFile),
    Absent,
}

impl<'c, 'a> ChainIndex<'c, 'a> {
    fn new(chain: &'c [ChainMember<'a>]) -> Self {
        let files = chain
            .iter()
            .map(|member| {
                member
                    .contents
                    .files
                    .iter()
                    .map(|file| (file.path.as_str(), file))
                    .collect()
            })
            .collect();
        ChainIndex { chain, files }
    }

    fn version(&self, member: usize, path: &str, incremental_name: &str) -> Version<'a> {
        let files = &self.files[member];
        match files.get(path) {
            Some(file) if file.kind != StoredKind::Incremental => Version::Whole(file),
            _ => match files.get(incremental_name) {
                Some(file) if file.kind == StoredKind::Incremental => Version::Incremental(file),
                _ => Version::Absent,
            },
        }
    }
}

/// Writes the file `restored_path` as the chain (oldest first) restores it
/// to `out`, checking every source read against its recorded CRC-32C.
pub fn reconstruct_file(
    chain: &[ChainMember<'_>],
    restored_path: &str,
    out: &mut impl Write,
) -> Result<ReconstructedFile, RestoreError> {
    let index = ChainIndex::new(chain);
    let mut out = CrcWriter::new(out);
    reconstruct_into(&index, restored_path, &mut out, Path::new(restored_path))?;
    Ok(out.result())
}

/// A stored file opened for reading, front to back: decompressed if the
/// backup is compressed, with the size and CRC-32C of what was read.
struct Source<'a> {
    backup_id: &'a str,
    file: &'a StoredFile,
    disk_path: PathBuf,
    compressed: bool,
    reader: Box<dyn Read + Send + 'a>,
    len: u64,
    crc: u32,
    /// The first error the underlying reader returned (the `Read` impl
    /// hands back only its kind), to tell damage from a clean early end.
    failure: Option<io::Error>,
}

impl<'a> Source<'a> {
    fn open(member: &'a ChainMember<'_>, file: &'a StoredFile) -> Result<Self, RestoreError> {
        let compressed = member.record.compression == Compression::Gzip;
        let disk_path = if compressed {
            member.data_dir.join(format!("{}.gz", file.path))
        } else {
            member.data_dir.join(&file.path)
        };
        let handle = File::open(&disk_path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                RestoreError::MissingFile {
                    backup_id: member.record.backup_id.clone(),
                    path: file.path.clone(),
                    file: disk_path.clone(),
                }
            } else {
                RestoreError::Io {
                    path: disk_path.clone(),
                    source,
                }
            }
        })?;
        let buffered = BufReader::with_capacity(128 * 1024, handle);
        let reader: Box<dyn Read + Send> = if compressed {
            Box::new(MultiGzDecoder::new(buffered))
        } else {
            Box::new(buffered)
        };
        Ok(Source {
            backup_id: &member.record.backup_id,
            file,
            disk_path,
            compressed,
            reader,
            len: 0,
            crc: 0,
            failure: None,
        })
    }

    /// Fills `buf` completely; `Ok(false)` if the content ended first.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, RestoreError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]) {
                Ok(0) => return Ok(false),
                Ok(n) => filled += n,
                Err(_) => return Err(self.read_error()),
            }
        }
        Ok(true)
    }

    /// Reads to the end of the content.
    fn drain(&mut self, scratch: &mut [u8]) -> Result<(), RestoreError> {
        loop {
            match self.read(scratch) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(self.read_error()),
            }
        }
    }

    /// The error for a failed read (after `read` returned `Err`).
    fn read_error(&mut self) -> RestoreError {
        let source = self
            .failure
            .take()
            .unwrap_or_else(|| io::Error::other("read failed"));
        if self.compressed
            && matches!(
                source.kind(),
                io::ErrorKind::InvalidData
                    | io::ErrorKind::InvalidInput
                    | io::ErrorKind::UnexpectedEof
            )
        {
            RestoreError::Decompress {
                backup_id: self.backup_id.to_owned(),
                path: self.file.path.clone(),
                source,
            }
        } else {
            RestoreError::Io {
                path: self.disk_path.clone(),
                source,
            }
        }
    }

    /// After the whole content was read: does it match `contents.json`?
    fn verify(&self) -> Result<(), RestoreError> {
        if self.len == self.file.size && self.crc == self.file.crc32c {
            Ok(())
        } else {
            Err(self.mismatch())
        }
    }

    fn mismatch(&self) -> RestoreError {
        RestoreError::ChecksumMismatch {
            backup_id: self.backup_id.to_owned(),
            path: self.file.path.clone(),
            expected_size: self.file.size,
            expected_crc: self.file.crc32c,
            actual_size: self.len,
            actual_crc: self.crc,
        }
    }

    /// The error for a format problem: reads the rest of the content first
    /// so that damage to the stored file is reported as such.
    fn format_error(&mut self, problem: IncrementalError) -> RestoreError {
        let mut scratch = [0u8; 8192];
        if let Err(error) = self.drain(&mut scratch) {
            return error;
        }
        if let Err(error) = self.verify() {
            return error;
        }
        RestoreError::BadIncremental {
            backup_id: self.backup_id.to_owned(),
            path: self.file.path.clone(),
            source: problem,
        }
    }

    fn header(&mut self) -> Result<IncrementalHeader, RestoreError> {
        match read_incremental_header(self) {
            Ok(header) => Ok(header),
            Err(_) if self.failure.is_some() => Err(self.read_error()),
            Err(problem) => Err(self.format_error(problem)),
        }
    }
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.reader.read(buf) {
                Ok(n) => {
                    self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
                    self.len += n as u64;
                    return Ok(n);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    let kind = error.kind();
                    self.failure = Some(error);
                    return Err(kind.into());
                }
            }
        }
    }
}

/// An incremental source of the merge: its header and the position of the
/// next listed block its data holds.
struct IncrementalSource<'a> {
    source: Source<'a>,
    header: IncrementalHeader,
    next: usize,
    /// The file's length when this backup was taken, capped by every newer
    /// version's: blocks at or past it are zeros if no newer source has
    /// them.
    live_blocks: u32,
}

fn reconstruct_into(
    index: &ChainIndex<'_, '_>,
    path: &str,
    out: &mut impl Write,
    out_name: &Path,
) -> Result<(), RestoreError> {
    let chain = index.chain;
    let incremental_name = incremental_path(path);
    let newest = (0..chain.len())
        .rev()
        .map(|m| (m, index.version(m, path, &incremental_name)))
        .find(|(_, version)| !matches!(version, Version::Absent));
    let (deciding, first) = match newest {
        Some((m, Version::Whole(file))) => return copy_whole(&chain[m], file, out, out_name),
        Some((m, Version::Incremental(file))) => (m, file),
        None | Some((_, Version::Absent)) => {
            return Err(RestoreError::NotInChain {
                path: path.to_owned(),
            })
        }
    };

    // Open the sources newest first until every block is decided.
    let mut incrementals = Vec::new();
    let mut base: Option<Source> = None;
    let mut decided = RoaringBitmap::new();
    let mut live_blocks = u32::MAX;
    let mut member = deciding;
    let mut file = first;
    let block_size = loop {
        let mut source = Source::open(&chain[member], file)?;
        let header = source.header()?;
        // Checking each header against the newest backup's block size also
        // makes them all agree.
        if header.block_size != chain[deciding].record.block_size {
            return Err(RestoreError::BadChain {
                reason: format!(
                    "{} in backup {} has block size {}, but backup {} has {}",
                    file.path,
                    chain[member].record.backup_id,
                    header.block_size,
                    chain[deciding].record.backup_id,
                    chain[deciding].record.block_size,
                ),
            });
        }
        live_blocks = live_blocks.min(header.truncation_blocks);
        decided.extend(header.blocks.iter().copied().filter(|&b| b < live_blocks));
        let undecided = u64::from(live_blocks) - decided.range_cardinality(..live_blocks);
        let block_size = header.block_size;
        incrementals.push(IncrementalSource {
            source,
            header,
            next: 0,
            live_blocks,
        });
        if undecided == 0 {
            break block_size;
        }
        let older = member
            .checked_sub(1)
            .map(|m| (m, index.version(m, path, &incremental_name)));
        match older {
            Some((m, Version::Whole(whole))) => {
                base = Some(Source::open(&chain[m], whole)?);
                break block_size;
            }
            Some((m, Version::Incremental(inc))) => {
                member = m;
                file = inc;
            }
            Some((m, Version::Absent)) => {
                return Err(RestoreError::BadChain {
                    reason: format!(
                        "{} of backup {} needs {undecided} blocks of {path} from backup {}, which has no version of it",
                        file.path, chain[member].record.backup_id, chain[m].record.backup_id,
                    ),
                })
            }
            None => {
                return Err(RestoreError::BadChain {
                    reason: format!(
                        "{} of backup {} needs {undecided} blocks of {path} from an older backup, but it is the oldest of the chain",
                        file.path, chain[member].record.backup_id,
                    ),
                })
            }
        }
    };

    let bs = block_size as usize;
    let truncation_blocks = incrementals[0].header.truncation_blocks;
    let base_len = base.as_ref().map_or(0, |b| b.file.size);
    let mut block = vec![0u8; bs];
    let mut scratch = vec![0u8; bs];
    let zeros = vec![0u8; bs];

    for b in 0..truncation_blocks {
        // The newest source that has block b, if any; None means zeros.
        let mut chosen: Option<usize> = None;
        let mut from_base = false;
        for (k, inc) in incrementals.iter().enumerate() {
            if b >= inc.live_blocks {
                break;
            }
            if inc.header.blocks.get(inc.next) == Some(&b) {
                chosen = Some(k);
                break;
            }
            if k + 1 == incrementals.len() {
                from_base = true;
            }
        }
        // Every source holding block b consumes it, used or not.
        for (k, inc) in incrementals.iter_mut().enumerate() {
            if inc.header.blocks.get(inc.next) == Some(&b) {
                let buf = if chosen == Some(k) {
                    &mut block
                } else {
                    &mut scratch
                };
                if !inc.source.fill(buf)? {
                    return Err(inc.source.format_error(IncrementalError::WrongLength {
                        expected: inc.header.encoded_len(),
                        actual: inc.source.len,
                    }));
                }
                inc.next += 1;
            }
        }
        let start = u64::from(b) * u64::from(block_size);
        let mut use_block = chosen.is_some();
        if let Some(base) = base.as_mut() {
            if start < base_len {
                let available = (base_len - start).min(bs as u64) as usize;
                let buf = if from_base { &mut block } else { &mut scratch };
                if !base.fill(&mut buf[..available])? {
                    return Err(base.mismatch());
                }
                if from_base {
                    block[available..].fill(0);
                    use_block = true;
                }
            }
        }
        out.write_all(if use_block { &block } else { &zeros })
            .map_err(io_error(out_name))?;
    }

    // Read every source to its end and check it.
    let mut scratch = vec![0u8; 64 * 1024];
    for inc in &mut incrementals {
        inc.source.drain(&mut scratch)?;
        inc.source.verify()?;
        let expected = inc.header.encoded_len();
        if inc.source.len != expected {
            return Err(RestoreError::BadIncremental {
                backup_id: inc.source.backup_id.to_owned(),
                path: inc.source.file.path.clone(),
                source: IncrementalError::WrongLength {
                    expected,
                    actual: inc.source.len,
                },
            });
        }
    }
    if let Some(base) = base.as_mut() {
        base.drain(&mut scratch)?;
        base.verify()?;
    }
    Ok(())
}

fn copy_whole(
    member: &ChainMember<'_>,
    file: &StoredFile,
    out: &mut impl Write,
    out_name: &Path,
) -> Result<(), RestoreError> {
    let mut source = Source::open(member, file)?;
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.write_all(&buf[..n]).map_err(io_error(out_name))?,
            Err(_) => return Err(source.read_error()),
        }
    }
    source.verify()
}

/// Passes bytes through, computing their size and CRC-32C.
struct CrcWriter<W> {
    inner: W,
    len: u64,
    crc: u32,
}

impl<W: Write> CrcWriter<W> {
    fn new(inner: W) -> Self {
        CrcWriter {
            inner,
            len: 0,
            crc: 0,
        }
    }

    fn result(&self) -> ReconstructedFile {
        ReconstructedFile {
            size: self.len,
            crc32c: self.crc,
        }
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ---------------------------------------------------------------------------
// Restoring a chain into a directory
// ---------------------------------------------------------------------------

/// Directories PostgreSQL expects at startup even when empty (a backup has
/// no file in them).
const REQUIRED_DIRECTORIES: &[&str] = &[
    "pg_wal",
    "pg_wal/archive_status",
    "pg_replslot",
    "pg_stat_tmp",
    "pg_tblspc",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
    "pg_twophase",
    "pg_logical",
    "pg_logical/snapshots",
    "pg_logical/mappings",
    "pg_commit_ts",
    "pg_dynshmem",
    "pg_multixact",
    "pg_multixact/members",
    "pg_multixact/offsets",
    "pg_xact",
    "pg_stat",
];

/// Files of a backup that restore writes itself instead of copying.
const MANIFEST: &str = "backup_manifest";
const TABLESPACE_MAP: &str = "tablespace_map";
const AUTO_CONF: &str = "postgresql.auto.conf";
const RECOVERY_SIGNAL: &str = "recovery.signal";

/// How often, at least, `poll` is called.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One file to restore.
struct Task {
    path: String,
    mtime: i64,
    /// Expected size (exact for whole files).
    estimate: u64,
}

/// Where a tablespace goes: `None` in place under the target.
struct PlacedTablespace {
    oid: u32,
    mapped: Option<PathBuf>,
}

/// What a restore created, to remove on failure.
#[derive(Default)]
struct Created {
    /// Directories created (with any missing parents): removed whole.
    roots: Vec<PathBuf>,
    /// Empty directories that existed: their contents are removed.
    emptied: Vec<PathBuf>,
}

impl Created {
    /// Creates `dir` (mode 0700, with missing parents) or adopts it if it
    /// exists, remembering how to undo either.
    fn make_dir(&mut self, dir: &Path) -> Result<(), RestoreError> {
        if dir.is_dir() {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error(dir))?;
            self.emptied.push(dir.to_owned());
            return Ok(());
        }
        let mut root = dir;
        while let Some(parent) = root.parent() {
            if parent.as_os_str().is_empty() || fs::symlink_metadata(parent).is_ok() {
                break;
            }
            root = parent;
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(dir))?;
        self.roots.push(root.to_owned());
        Ok(())
    }

    /// Best effort: the restore already failed, and a removal error must
    /// not hide why.
    fn remove(&self) {
        for root in &self.roots {
            let _ = fs::remove_dir_all(root);
        }
        for dir in &self.emptied {
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    match entry.file_type() {
                        Ok(kind) if kind.is_dir() => {
                            let _ = fs::remove_dir_all(&path);
                        }
                        _ => {
                            let _ = fs::remove_file(&path);
                        }
                    }
                }
            }
        }
    }
}

/// Restores the newest backup of `chain` (oldest first) into
/// `options.target`, calling `poll` on this thread at least every 100 ms;
/// `poll` returning `Break` cancels the restore. On any error, everything
/// the restore created is removed again.
pub fn restore(
    chain: &[ChainMember<'_>],
    options: &RestoreOptions,
    poll: &mut dyn FnMut(&RestoreProgress) -> ControlFlow<()>,
) -> Result<RestoreStats, RestoreError> {
    let newest = check_chain(chain)?;
    let stop_lsn = newest
        .record
        .stop_lsn
        .ok_or_else(|| RestoreError::BadChain {
            reason: format!("backup {} has no stop LSN", newest.record.backup_id),
        })?;
    if let Some(name) = &options.recovery_target_name {
        if options.recovery_target_lsn.is_some() {
            return Err(RestoreError::TwoRecoveryTargets);
        }
        let points = &newest.record.restore_points;
        if !points.iter().any(|point| &point.name == name) {
            let known: Vec<&str> = points.iter().map(|point| point.name.as_str()).collect();
            return Err(RestoreError::UnknownRestorePoint {
                name: name.clone(),
                backup_id: newest.record.backup_id.clone(),
                known: if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                },
            });
        }
    }
    if let Some(target) = options.recovery_target_lsn {
        if target < stop_lsn {
            return Err(RestoreError::RecoveryTargetBeforeConsistency {
                target,
                backup_id: newest.record.backup_id.clone(),
                stop_lsn,
            });
        }
    }
    let index = ChainIndex::new(chain);
    let tasks = plan_files(&index)?;
    let tablespaces = plan_tablespaces(newest.record, options)?;
    check_target_empty(&options.target)?;

    let mut created = Created::default();
    let result = restore_into(
        &index,
        &tasks,
        &tablespaces,
        options,
        stop_lsn,
        &mut created,
        poll,
    );
    if result.is_err() {
        created.remove();
    }
    result
}

fn check_chain<'c, 'a>(chain: &'c [ChainMember<'a>]) -> Result<&'c ChainMember<'a>, RestoreError> {
    let bad = |reason: String| Err(RestoreError::BadChain { reason });
    let Some(newest) = chain.last() else {
        return bad("the chain is empty".to_owned());
    };
    for (i, member) in chain.iter().enumerate() {
        let record = member.record;
        if !record.status.is_usable() {
            return bad(format!(
                "backup {} is in status {:?}; only DONE or OK backups can be restored",
                record.backup_id, record.status
            ));
        }
        let expected_mode = if i == 0 {
            BackupMode::Full
        } else {
            BackupMode::Incremental
        };
        if record.mode != expected_mode {
            return bad(format!(
                "backup {} is {:?}, but position {i} of a chain must be {:?}",
                record.backup_id, record.mode, expected_mode
            ));
        }
        if i > 0
            && record.parent_backup_id.as_deref() != Some(chain[i - 1].record.backup_id.as_str())
        {
            return bad(format!(
                "backup {} has parent {:?}, not {}",
                record.backup_id,
                record.parent_backup_id,
                chain[i - 1].record.backup_id
            ));
        }
    }
    Ok(newest)
}

/// The newest member's files under their restored names.
fn plan_files(index: &ChainIndex<'_, '_>) -> Result<Vec<Task>, RestoreError> {
    let chain = index.chain;
    let newest = chain.len() - 1;
    let backup_id = &chain[newest].record.backup_id;
    let mut seen = HashSet::new();
    let mut tasks = Vec::new();
    for stored in &chain[newest].contents.files {
        let path = match stored.kind {
            StoredKind::Incremental => restored_path(&stored.path).ok_or_else(|| RestoreError::BadChain {
                reason: format!("backup {backup_id} lists {} as incremental, but that is not an incremental file name", stored.path),
            })?,
            StoredKind::Whole | StoredKind::Wal => stored.path.clone(),
        };
        if safe_relative_path(&path).is_none() {
            return Err(RestoreError::BadChain {
                reason: format!("backup {backup_id} lists the unsafe path {:?}", stored.path),
            });
        }
        if path == MANIFEST || path == TABLESPACE_MAP {
            continue;
        }
        if !seen.insert(path.clone()) {
            return Err(RestoreError::BadChain {
                reason: format!("backup {backup_id} stores {path} twice"),
            });
        }
        let estimate = match stored.kind {
            StoredKind::Incremental => (0..newest)
                .rev()
                .map(|m| index.version(m, &path, &stored.path))
                .find_map(|version| match version {
                    Version::Whole(whole) => Some(Some(whole.size)),
                    Version::Absent => Some(None),
                    Version::Incremental(_) => None,
                })
                .flatten()
                .unwrap_or(stored.size),
            StoredKind::Whole | StoredKind::Wal => stored.size,
        };
        tasks.push(Task {
            path,
            mtime: stored.mtime,
            estimate,
        });
    }
    // Largest first, so that no thread is left with a big file at the end.
    tasks.sort_by_key(|task| std::cmp::Reverse(task.estimate));
    Ok(tasks)
}

fn plan_tablespaces(
    record: &BackupRecord,
    options: &RestoreOptions,
) -> Result<Vec<PlacedTablespace>, RestoreError> {
    let mut used = vec![false; options.tablespace_mapping.len()];
    let mut placed = Vec::new();
    for tablespace in &record.tablespaces {
        let oid_key = tablespace.oid.to_string();
        let mut mapped: Option<(&str, &PathBuf)> = None;
        for (i, (key, location)) in options.tablespace_mapping.iter().enumerate() {
            if *key != oid_key && *key != tablespace.location {
                continue;
            }
            used[i] = true;
            if let Some((_, previous)) = mapped {
                if previous != location {
                    return Err(RestoreError::BadTablespaceMapping {
                        key: key.clone(),
                        location: location.clone(),
                        reason: format!(
                            "tablespace {} is also mapped to {}",
                            tablespace.oid,
                            previous.display()
                        ),
                    });
                }
            }
            mapped = Some((key, location));
        }
        if let Some((key, location)) = mapped {
            let bad = |reason: String| RestoreError::BadTablespaceMapping {
                key: key.to_owned(),
                location: location.clone(),
                reason,
            };
            if !location.is_absolute() {
                return Err(bad("the new location must be an absolute path".to_owned()));
            }
            if overlaps(location, &options.target) {
                return Err(bad(format!(
                    "the new location must be outside the restore target {} and not contain it",
                    options.target.display()
                )));
            }
            if let Some(other) = placed
                .iter()
                .filter_map(|p: &PlacedTablespace| p.mapped.as_ref())
                .find(|other| overlaps(location, other))
            {
                return Err(bad(format!(
                    "it overlaps {}, where another tablespace goes",
                    other.display()
                )));
            }
            if !is_absent_or_empty_dir(location).map_err(io_error(location))? {
                return Err(bad(
                    "the new location exists and is not an empty directory".to_owned()
                ));
            }
        }
        placed.push(PlacedTablespace {
            oid: tablespace.oid,
            mapped: mapped.map(|(_, location)| location.clone()),
        });
    }
    if let Some(i) = used.iter().position(|&u| !u) {
        let (key, location) = &options.tablespace_mapping[i];
        let known: Vec<String> = record
            .tablespaces
            .iter()
            .map(|t| format!("{} ({})", t.oid, t.location))
            .collect();
        return Err(RestoreError::BadTablespaceMapping {
            key: key.clone(),
            location: location.clone(),
            reason: format!(
                "backup {} has no tablespace with that oid or location; its tablespaces: {}",
                record.backup_id,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        });
    }
    Ok(placed)
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn is_absent_or_empty_dir(path: &Path) -> io::Result<bool> {
    match fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            Ok(fs::symlink_metadata(path).is_err())
        }
        Err(error) if error.kind() == io::ErrorKind::NotADirectory => Ok(false),
        Err(error) => Err(error),
    }
}

fn check_target_empty(target: &Path) -> Result<(), RestoreError> {
    if is_absent_or_empty_dir(target).map_err(io_error(target))? {
        Ok(())
    } else {
        Err(RestoreError::TargetNotEmpty {
            path: target.to_owned(),
        })
    }
}

/// Shared between the worker threads and the polling thread.
struct Shared<'t> {
    tasks: &'t [Task],
    next: AtomicUsize,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    cancel: AtomicBool,
    error: Mutex<Option<RestoreError>>,
    written: Mutex<Vec<ManifestFile>>,
}

impl Shared<'_> {
    fn progress(&self) -> RestoreProgress {
        RestoreProgress {
            files_done: self.files_done.load(Ordering::Relaxed),
            files_total: self.tasks.len() as u64,
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
        }
    }

    fn fail(&self, error: RestoreError) {
        if !self.cancel.load(Ordering::SeqCst) {
            let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(error);
        }
        self.cancel.store(true, Ordering::SeqCst);
    }
}

fn restore_into(
    index: &ChainIndex<'_, '_>,
    tasks: &[Task],
    tablespaces: &[PlacedTablespace],
    options: &RestoreOptions,
    stop_lsn: Lsn,
    created: &mut Created,
    poll: &mut dyn FnMut(&RestoreProgress) -> ControlFlow<()>,
) -> Result<RestoreStats, RestoreError> {
    let target = options.target.as_path();
    let newest = &index.chain[index.chain.len() - 1];

    // Directories: the target, mapped tablespaces with their links, then
    // every directory a file or PostgreSQL needs, parents first.
    created.make_dir(target)?;
    let mut to_sync: Vec<PathBuf> = vec![target.to_owned()];
    to_sync.extend(
        target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_owned),
    );
    let tblspc = target.join("pg_tblspc");
    make_dir(&tblspc)?;
    let mut dirs: BTreeSet<String> = REQUIRED_DIRECTORIES
        .iter()
        .map(|d| (*d).to_owned())
        .collect();
    for tablespace in tablespaces {
        let link = tblspc.join(tablespace.oid.to_string());
        match &tablespace.mapped {
            Some(location) => {
                created.make_dir(location)?;
                std::os::unix::fs::symlink(location, &link).map_err(io_error(&link))?;
                to_sync.push(location.clone());
                to_sync.extend(location.parent().map(Path::to_owned));
            }
            None => {
                dirs.insert(format!("pg_tblspc/{}", tablespace.oid));
            }
        }
    }
    for task in tasks {
        let mut path = task.path.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            dirs.insert(parent.to_owned());
            path = parent;
        }
    }
    for dir in &dirs {
        let path = target.join(dir);
        make_dir(&path)?;
        to_sync.push(path);
    }
    let mapped_oids: Vec<String> = tablespaces
        .iter()
        .filter(|t| t.mapped.is_some())
        .map(|t| t.oid.to_string())
        .collect();
    let any_in_place = dirs.iter().any(|dir| {
        dir.strip_prefix("pg_tblspc/")
            .is_some_and(|oid| !oid.contains('/') && !mapped_oids.iter().any(|m| m == oid))
    });

    // Files, on worker threads.
    let shared = Shared {
        tasks,
        next: AtomicUsize::new(0),
        files_done: AtomicU64::new(0),
        bytes_done: AtomicU64::new(0),
        bytes_total: AtomicU64::new(tasks.iter().map(|t| t.estimate).sum()),
        cancel: AtomicBool::new(false),
        error: Mutex::new(None),
        written: Mutex::new(Vec::with_capacity(tasks.len())),
    };
    let threads = options.threads.clamp(1, tasks.len().max(1));
    let mut cancelled = false;
    std::thread::scope(|scope| {
        // Never sent on: it disconnects when the last worker exits.
        let (done_tx, done_rx) = mpsc::channel::<Infallible>();
        for _ in 0..threads {
            let done_tx = done_tx.clone();
            let shared = &shared;
            scope.spawn(move || worker(index, target, shared, &done_tx));
        }
        drop(done_tx);
        loop {
            let finished = matches!(
                done_rx.recv_timeout(POLL_INTERVAL),
                Err(mpsc::RecvTimeoutError::Disconnected)
            );
            if !cancelled && poll(&shared.progress()).is_break() {
                cancelled = true;
                shared.cancel.store(true, Ordering::SeqCst);
            }
            if finished {
                break;
            }
        }
    });
    if cancelled {
        return Err(RestoreError::Cancelled);
    }
    if let Some(error) = shared.error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(error);
    }
    let mut manifest = shared
        .written
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let stats = RestoreStats {
        files: tasks.len() as u64,
        bytes: shared.bytes_done.load(Ordering::Relaxed),
    };

    // Files restore writes itself.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mapped: Vec<(u32, &PathBuf)> = tablespaces
        .iter()
        .filter_map(|t| t.mapped.as_ref().map(|location| (t.oid, location)))
        .collect();
    if !mapped.is_empty() {
        let content = tablespace_map(&mapped);
        manifest.push(write_new_file(target, TABLESPACE_MAP, &content, now)?);
    }
    let mut settings = String::new();
    if any_in_place {
        // Recovery refuses directories in pg_tblspc without it.
        settings.push_str("allow_in_place_tablespaces = on\n");
    }
    // Always archive recovery, ending on a new timeline: the restored
    // cluster's WAL after the backup differs from the original's WAL at
    // the same LSNs, and only a timeline switch tells the two apart, so
    // that no incremental backup of one is ever built on a backup of the
    // other. The WAL is in pg_wal; a failing restore_command makes
    // PostgreSQL read it from there.
    manifest.push(write_new_file(target, RECOVERY_SIGNAL, b"", now)?);
    settings.push_str("restore_command = '/bin/false'\n");
    if let Some(lsn) = options.recovery_target_lsn {
        settings.push_str(&format!(
            "recovery_target_lsn = '{lsn}'\nrecovery_target_inclusive = on\n"
        ));
    }
    if let Some(name) = &options.recovery_target_name {
        settings.push_str(&format!(
            "recovery_target_name = '{}'\n",
            name.replace('\'', "''")
        ));
    }
    settings.push_str("recovery_target_action = 'promote'\n");
    if !settings.is_empty() {
        manifest.retain(|file| file.path != AUTO_CONF);
        manifest.push(append_settings(target, &settings, now)?);
    }
    manifest.sort_by(|a, b| a.path.cmp(&b.path));
    let wal = [WalRange {
        timeline: newest.record.timeline,
        start_lsn: newest.record.start_lsn,
        end_lsn: stop_lsn,
    }];
    write_new_file(target, MANIFEST, &render_manifest(&manifest, &wal), now)?;

    for dir in &to_sync {
        File::open(dir)
            .and_then(|handle| handle.sync_all())
            .map_err(io_error(dir))?;
    }
    Ok(stats)
}

fn make_dir(path: &Path) -> Result<(), RestoreError> {
    match DirBuilder::new().mode(0o700).create(path) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other.map_err(io_error(path)),
    }
}

fn worker(
    index: &ChainIndex<'_, '_>,
    target: &Path,
    shared: &Shared<'_>,
    _alive: &mpsc::Sender<Infallible>,
) {
    while !shared.cancel.load(Ordering::SeqCst) {
        let i = shared.next.fetch_add(1, Ordering::SeqCst);
        let Some(task) = shared.tasks.get(i) else {
            return;
        };
        match restore_file(index, target, task, shared) {
            Ok(written) => {
                shared.files_done.fetch_add(1, Ordering::Relaxed);
                shared
                    .bytes_total
                    .fetch_add(written.size, Ordering::Relaxed);
                shared
                    .bytes_total
                    .fetch_sub(task.estimate, Ordering::Relaxed);
                if !task.path.starts_with("pg_wal/") {
                    let mut manifest = shared.written.lock().unwrap_or_else(|e| e.into_inner());
                    manifest.push(ManifestFile {
                        path: task.path.clone(),
                        size: written.size,
                        mtime: task.mtime,
                        crc32c: written.crc32c,
                    });
                }
            }
            Err(error) => {
                shared.fail(error);
                return;
            }
        }
    }
}

fn restore_file(
    index: &ChainIndex<'_, '_>,
    target: &Path,
    task: &Task,
    shared: &Shared<'_>,
) -> Result<ReconstructedFile, RestoreError> {
    let path = target.join(&task.path);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_error(&path))?;
    let counted = Counted { file, shared };
    let mut out = CrcWriter::new(BufWriter::with_capacity(256 * 1024, counted));
    reconstruct_into(index, &task.path, &mut out, &path)?;
    let result = out.result();
    let counted = out
        .inner
        .into_inner()
        .map_err(|e| io_error(&path)(e.into_error()))?;
    counted.file.sync_all().map_err(io_error(&path))?;
    Ok(result)
}

/// A restored file being written: counts progress, and stops the copy
/// when the restore is cancelled.
struct Counted<'s, 't> {
    file: File,
    shared: &'s Shared<'t>,
}

impl Write for Counted<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.shared.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("restore cancelled"));
        }
        let n = self.file.write(buf)?;
        self.shared
            .bytes_done
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// `tablespace_map` as `pg_backup_stop` writes it: `<oid> <location>`
/// lines, with newline, carriage return and backslash escaped by a
/// backslash.
fn tablespace_map(mapped: &[(u32, &PathBuf)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (oid, location) in mapped {
        out.extend_from_slice(format!("{oid} ").as_bytes());
        for &byte in location.as_os_str().as_bytes() {
            if matches!(byte, b'\n' | b'\r' | b'\\') {
                out.push(b'\\');
            }
            out.push(byte);
        }
        out.push(b'\n');
    }
    out
}

fn write_new_file(
    target: &Path,
    name: &str,
    content: &[u8],
    mtime: i64,
) -> Result<ManifestFile, RestoreError> {
    let path = target.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_error(&path))?;
    file.write_all(content)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&path))?;
    Ok(ManifestFile {
        path: name.to_owned(),
        size: content.len() as u64,
        mtime,
        crc32c: crc32c::crc32c(content),
    })
}

/// Appends `settings` to `postgresql.auto.conf` (creating it if the
/// backup had none), where they override `postgresql.conf`: settings for
/// in-place tablespaces and for recovery.
fn append_settings(target: &Path, settings: &str, now: i64) -> Result<ManifestFile, RestoreError> {
    let path = target.join(AUTO_CONF);
    let mut content = match fs::read(&path) {
        Ok(content) => content,
        Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(io_error(&path)(error)),
    };
    if content.last().is_some_and(|&b| b != b'\n') {
        content.push(b'\n');
    }
    content.extend_from_slice(b"# added by pg_blockbackup restore\n");
    content.extend_from_slice(settings.as_bytes());
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_error(&path))?;
    file.write_all(&content)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&path))?;
    Ok(ManifestFile {
        path: AUTO_CONF.to_owned(),
        size: content.len() as u64,
        mtime: now,
        crc32c: crc32c::crc32c(&content),
    })
}
