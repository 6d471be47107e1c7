//! Rebuilding one file of a data directory from a backup chain.
//!
//! # Reconstructing one file
//!
//! A chain is a full backup followed by incrementals, oldest first. The
//! newest member that has a file decides what it is: a whole file is copied
//! as it is; an incremental file (see [`crate::backup::incremental_file`]) gives the
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
//! Restoring a whole directory from a chain is [`crate::restore::run`]'s;
//! its entry points are re-exported here.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use roaring::RoaringBitmap;
use thiserror::Error;

use crate::backup::incremental_file::{
    incremental_path, read_incremental_header, IncrementalError, IncrementalHeader,
};
use crate::content_checksum::{Tallied, Tally};
use crate::lsn::Lsn;
use crate::repository::catalog::{
    BackupContents, BackupRecord, Compression, StoredFile, StoredKind,
};
use crate::repository::{Repository, RepositoryError};
use crate::restore::target::DestinationError;
use crate::safe_fs::is_not_regular;
use crate::storage::{join, Storage};

/// One backup of a chain, as restore reads it.
#[derive(Clone, Debug)]
pub struct ChainMember<'a> {
    pub record: &'a BackupRecord,
    /// Where its files are: the store and the prefix of its data directory
    /// image there (`backups/<id>/pgdata`).
    pub storage: Arc<dyn Storage>,
    pub prefix: String,
    pub contents: &'a BackupContents,
}

impl ChainMember<'_> {
    /// A stored file's name in messages.
    fn shown(&self, stored_name: &str) -> PathBuf {
        PathBuf::from(self.storage.describe()).join(join(&self.prefix, stored_name))
    }
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
            storage: repository.storage().clone(),
            prefix: repository.data_prefix(&record.backup_id),
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
    #[error("the stored bytes of {path} in backup {backup_id} differ from what contents.json recorded (their size or CRC-32C), although they decode to the recorded content; the backup was changed since it was written, restore another backup")]
    StoredMismatch { backup_id: String, path: String },
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
    #[error("give one recovery target (recovery_target_lsn, _name, _time, _xid or recovery_target), not several: PostgreSQL recovers to one")]
    TwoRecoveryTargets,
    #[error("tablespace mapping {key:?} -> {}: {reason}", location.display())]
    BadTablespaceMapping {
        key: String,
        location: PathBuf,
        reason: String,
    },
    #[error("restore cancelled; what it had written was removed")]
    Cancelled,
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// The repository could not give the chain (a missing or damaged
    /// backup, a lock held by a deletion).
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error("restore target {} holds an interrupted restore ({detail}); remove that directory, or restore into another one", path.display())]
    InterruptedRestore { path: PathBuf, detail: String },
    #[error("recovery target {target} is past the WAL backup {backup_id} holds, which reaches {reach}; without a WAL archive a backup restores to its own end or to one of its restore points")]
    TargetUnreachable {
        target: Lsn,
        backup_id: String,
        reach: Lsn,
    },
    #[error("backup {backup_id} lists {path}, but {} is not a regular file (a symbolic link or other file was put there); the backup is damaged, restore another backup", file.display())]
    NotRegularFile {
        backup_id: String,
        path: String,
        file: PathBuf,
    },
    #[error("{what} {value:?} holds a line break or another control character, which a configuration file cannot hold")]
    UnwritableSetting { what: String, value: String },
    /// A setting the caller asked to add to the copy's configuration.
    #[error("setting {name:?} cannot be added to the restored configuration: {reason}")]
    BadSetting { name: String, reason: String },
    /// Recovery arguments that do not go together or are malformed.
    #[error("{detail}")]
    BadRecoveryTarget { detail: String },
    #[error("recovery target {target} is before backup {backup_id} is consistent ({consistent}): choose a later target, or restore an older backup")]
    TargetBeforeBackup {
        target: String,
        backup_id: String,
        consistent: String,
    },
    #[error("recovery target {target} cannot be reached from backup {backup_id}: {detail}")]
    TargetNotReachable {
        target: String,
        backup_id: String,
        detail: String,
    },
    #[error("no usable backup of the repository can recover to {target}: {detail}")]
    NoBackupForTarget { target: String, detail: String },
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_owned(),
        source,
    }
}

// ---------------------------------------------------------------------------
// Reconstructing one file
// ---------------------------------------------------------------------------

/// The contents of each member of a chain, by stored path.
pub(crate) struct ChainIndex<'c, 'a> {
    pub(crate) chain: &'c [ChainMember<'a>],
    files: Vec<HashMap<&'a str, &'a StoredFile>>,
}

/// How one member of the chain has a file.
pub(crate) enum Version<'a> {
    Whole(&'a StoredFile),
    Incremental(&'a StoredFile),
    Absent,
}

impl<'c, 'a> ChainIndex<'c, 'a> {
    pub(crate) fn new(chain: &'c [ChainMember<'a>]) -> Self {
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

    pub(crate) fn version(&self, member: usize, path: &str, incremental_name: &str) -> Version<'a> {
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
    /// Size and CRC-32C of the stored bytes read under the decoder.
    stored: Arc<Tally>,
    len: u64,
    crc: u32,
    /// The first error the underlying reader returned (the `Read` impl
    /// hands back only its kind), to tell damage from a clean early end.
    failure: Option<io::Error>,
}

impl<'a> Source<'a> {
    fn open(member: &'a ChainMember<'_>, file: &'a StoredFile) -> Result<Self, RestoreError> {
        let compression = member.record.compression;
        let compressed = compression != Compression::None;
        let stored_name = compression.stored_name(&file.path);
        let disk_path = member.shown(&stored_name);
        let handle = member
            .storage
            .open(&join(&member.prefix, &stored_name))
            .map_err(|source| {
                if source.kind() == io::ErrorKind::NotFound {
                    RestoreError::MissingFile {
                        backup_id: member.record.backup_id.clone(),
                        path: file.path.clone(),
                        file: disk_path.clone(),
                    }
                } else if is_not_regular(&source) {
                    RestoreError::NotRegularFile {
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
        let (buffered, stored) = Tallied::new(BufReader::with_capacity(128 * 1024, handle));
        let reader = compression
            .decoder(buffered)
            .map_err(|source| RestoreError::Io {
                path: disk_path.clone(),
                source,
            })?;
        Ok(Source {
            backup_id: &member.record.backup_id,
            file,
            disk_path,
            compressed,
            reader,
            stored,
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
        if self.len != self.file.size || self.crc != self.file.crc32c {
            return Err(self.mismatch());
        }
        let (stored_len, stored_crc) = self.stored.result();
        let stored_differs = stored_len != self.file.stored_size
            || self.file.stored_crc32c.is_some_and(|crc| crc != stored_crc);
        if stored_differs {
            return Err(RestoreError::StoredMismatch {
                backup_id: self.backup_id.to_owned(),
                path: self.file.path.clone(),
            });
        }
        Ok(())
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

pub(crate) fn reconstruct_into(
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
pub(crate) struct CrcWriter<W> {
    pub(crate) inner: W,
    len: u64,
    crc: u32,
}

impl<W: Write> CrcWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        CrcWriter {
            inner,
            len: 0,
            crc: 0,
        }
    }

    pub(crate) fn result(&self) -> ReconstructedFile {
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
