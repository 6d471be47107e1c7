//! The continuous WAL archive inside a repository: every segment and
//! history file the server finishes, stored through the storage seam,
//! compressed file by file, each with the CRC-32C of its content.
//!
//! ```text
//! archive/archive.json                          the archive's segment size
//! archive/<TTTTTTTTLLLLLLLL>/<name>-<crc><sfx>  segments, partial segments,
//!                                               backup history files
//! archive/history/<TTTTTTTT>.history-<crc><sfx> timeline history files
//! ```
//!
//! `<crc>` is the CRC-32C of the file's content in 8 hexadecimal digits and
//! `<sfx>` the codec's suffix (`.zst`, `.lz4`, `.gz`, none). Carrying the
//! checksum in the name makes every rule a listing can decide, on a file
//! system as on an object store:
//!
//! * a file is stored by one atomic, durable replace, so a reader sees it
//!   whole or not at all: an archiver killed while it writes leaves only a
//!   temporary the listing does not parse;
//! * archiving a name again with the same content (an archiver that died
//!   after storing but before telling the server, a standby with
//!   `archive_mode = always` next to its primary) finds the name with the
//!   same checksum and succeeds without writing; other content is refused
//!   and nothing is overwritten;
//! * a read decodes, counts and checksums the content and fails, naming
//!   the stored file, when anything differs, so damage is never served as
//!   WAL.
//!
//! A segment is checked before it is stored: its first page's long header
//! must carry the repository's system identifier, the archive's segment
//! size and the segment's own address, so that another cluster's WAL (or a
//! file that is not a segment) never enters the archive.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::history::parse_history;
use super::name::{valid_segment_size, WalFileKind, WalFileName};
use super::segment_header::{read_long_header, LongHeader};
use crate::compress::Compression;
use crate::repository::Repository;
use crate::storage::{join, Storage};
use crate::summary::range_plan::TimelineSpan;
use crate::Lsn;

pub const ARCHIVE_DIR: &str = "archive";
const INFO_FILE: &str = "archive/archive.json";
const HISTORY_DIR: &str = "history";
const INFO_FORMAT: &str = "pg_blockbackup WAL archive";
const INFO_VERSION: u32 = 1;
const READ_BUFFER: usize = 256 * 1024;

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("\"{name}\" is not the name of a WAL segment or history file")]
    InvalidName { name: String },
    #[error("could not read \"{}\": {source}", path.display())]
    ReadSource { path: PathBuf, source: io::Error },
    #[error("could not write \"{}\": {source}", path.display())]
    WriteTarget { path: PathBuf, source: io::Error },
    #[error("could not access \"{path}\" in the repository \"{repository}\": {source}")]
    Store {
        repository: String,
        path: String,
        source: io::Error,
    },
    #[error("\"{}\" is not a WAL segment of this archive: {detail}", path.display())]
    NotASegment { path: PathBuf, detail: String },
    #[error(
        "WAL file \"{}\" belongs to the cluster with system identifier {found}, not to the one this repository belongs to ({expected}); use a separate repository for each cluster",
        path.display()
    )]
    OtherSystem {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error(
        "WAL file \"{name}\" is already archived with other content (stored \"{stored}\", CRC-32C {stored_crc:08X}; \"{}\" has CRC-32C {new_crc:08X}); nothing was overwritten",
        source_path.display()
    )]
    Different {
        name: String,
        stored: String,
        stored_crc: u32,
        source_path: PathBuf,
        new_crc: u32,
    },
    #[error("\"{}\" changed while it was archived; nothing was stored", path.display())]
    Changed { path: PathBuf },
    #[error("archived WAL file \"{stored}\" is damaged: {detail}")]
    Damaged { stored: String, detail: String },
    #[error("the archive's description \"{path}\" is damaged: {detail}")]
    BadInfo { path: String, detail: String },
    #[error("the repository \"{repository}\" holds no WAL archive (\"{path}\" is missing): nothing was ever archived into it, or its archive was removed")]
    NoArchive { repository: String, path: String },
}

/// One stored file of the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedFile {
    pub name: WalFileName,
    pub crc32c: u32,
    pub codec: Compression,
    /// Its path in the store.
    pub stored_path: String,
    pub stored_bytes: u64,
    /// When it was stored (microseconds since the Unix epoch), if known:
    /// every record in it was written before then.
    pub modified_us: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Stored {
        stored_bytes: u64,
    },
    /// The same content was archived before; nothing was written.
    AlreadyArchived,
}

#[derive(Serialize, Deserialize)]
struct Info {
    format: String,
    version: u32,
    wal_segment_size: u64,
}

/// The archive of `repository`.
pub struct WalArchive<'r> {
    repository: &'r Repository,
}

impl<'r> WalArchive<'r> {
    pub fn new(repository: &'r Repository) -> Self {
        WalArchive { repository }
    }

    fn storage(&self) -> &dyn Storage {
        self.repository.storage().as_ref()
    }

    fn store_error(&self, path: &str) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
        let path = path.to_owned();
        move |source| ArchiveError::Store {
            repository: self.storage().describe(),
            path,
            source,
        }
    }

    /// The archive's segment size, None while nothing was archived.
    pub fn segment_size(&self) -> Result<Option<u64>, ArchiveError> {
        let Some(bytes) = self
            .storage()
            .get(INFO_FILE)
            .map_err(self.store_error(INFO_FILE))?
        else {
            return Ok(None);
        };
        let bad = |detail: String| ArchiveError::BadInfo {
            path: INFO_FILE.to_owned(),
            detail,
        };
        let info: Info = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if info.format != INFO_FORMAT || info.version != INFO_VERSION {
            return Err(bad(format!(
                "format {:?} version {} is not one this version of pg_blockbackup reads",
                info.format, info.version
            )));
        }
        if !valid_segment_size(info.wal_segment_size) {
            return Err(bad(format!(
                "segment size {} is not a WAL segment size",
                info.wal_segment_size
            )));
        }
        Ok(Some(info.wal_segment_size))
    }

    fn record_segment_size(&self, segment_size: u64) -> Result<(), ArchiveError> {
        let info = Info {
            format: INFO_FORMAT.to_owned(),
            version: INFO_VERSION,
            wal_segment_size: segment_size,
        };
        let bytes = serde_json::to_vec_pretty(&info).map_err(io::Error::other);
        let bytes = bytes.map_err(self.store_error(INFO_FILE))?;
        self.storage()
            .put(INFO_FILE, &bytes)
            .map_err(self.store_error(INFO_FILE))
    }

    /// Stores the file at `source` as `name`, or finds it stored already
    /// with the same content. Durable when this returns.
    pub fn push(
        &self,
        name: &str,
        source: &Path,
        codec: Compression,
        level: i32,
    ) -> Result<PushOutcome, ArchiveError> {
        let parsed = WalFileName::parse(name).ok_or_else(|| ArchiveError::InvalidName {
            name: name.to_owned(),
        })?;
        let read_error = |source_error| ArchiveError::ReadSource {
            path: source.to_owned(),
            source: source_error,
        };
        let mut file = File::open(source).map_err(read_error)?;
        if parsed.is_segment() {
            self.check_segment(&parsed, &mut file, source)?;
        }
        let (size, crc) = crc_of(&mut file, source)?;

        let group = group_of(&parsed);
        let existing = self.stored_in(&group)?;
        if let Some(stored) = existing.iter().find(|f| f.name == parsed) {
            return if stored.crc32c == crc {
                Ok(PushOutcome::AlreadyArchived)
            } else {
                Err(ArchiveError::Different {
                    name: name.to_owned(),
                    stored: stored.stored_path.clone(),
                    stored_crc: stored.crc32c,
                    source_path: source.to_owned(),
                    new_crc: crc,
                })
            };
        }

        let stored_path = join(&group, &codec.stored_name(&format!("{parsed}-{crc:08X}")));
        let stored_bytes = self.store(&mut file, source, &stored_path, codec, level, size, crc)?;
        if existing.is_empty() {
            // A new directory: its own name must be durable too.
            self.storage()
                .sync_parents(std::slice::from_ref(&stored_path), 1)
                .map_err(self.store_error(&stored_path))?;
        }
        Ok(PushOutcome::Stored { stored_bytes })
    }

    /// The long header of a segment's first page against this archive.
    fn check_segment(
        &self,
        name: &WalFileName,
        file: &mut File,
        source: &Path,
    ) -> Result<(), ArchiveError> {
        let not_a_segment = |detail: String| ArchiveError::NotASegment {
            path: source.to_owned(),
            detail,
        };
        let length = file
            .metadata()
            .map_err(|e| ArchiveError::ReadSource {
                path: source.to_owned(),
                source: e,
            })?
            .len();
        let header: LongHeader = read_long_header(file)
            .map_err(|e| ArchiveError::ReadSource {
                path: source.to_owned(),
                source: e,
            })?
            .map_err(not_a_segment)?;
        let expected = self.repository.system_identifier();
        if header.system_identifier != expected {
            return Err(ArchiveError::OtherSystem {
                path: source.to_owned(),
                found: header.system_identifier,
                expected,
            });
        }
        let segment_size = u64::from(header.segment_size);
        if name.kind == WalFileKind::Segment && length != segment_size {
            return Err(not_a_segment(format!(
                "it is {length} bytes long, its header says segments are {segment_size}"
            )));
        }
        let address = name.start_lsn(segment_size);
        if header.page_address != address.0 {
            return Err(not_a_segment(format!(
                "its first page is for {}, its name for {address}",
                Lsn(header.page_address)
            )));
        }
        match self.segment_size()? {
            Some(archived) if archived != segment_size => Err(not_a_segment(format!(
                "its segments are {segment_size} bytes, the archive's {archived}"
            ))),
            Some(_) => Ok(()),
            None => self.record_segment_size(segment_size),
        }
    }

    /// Encodes `file` (of `size` bytes and CRC-32C `crc`, read again from
    /// its start) into `stored_path`, atomically; returns the stored size.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &self,
        file: &mut File,
        source: &Path,
        stored_path: &str,
        codec: Compression,
        level: i32,
        size: u64,
        crc: u32,
    ) -> Result<u64, ArchiveError> {
        use std::io::Seek;
        let read_error = |e| ArchiveError::ReadSource {
            path: source.to_owned(),
            source: e,
        };
        file.rewind().map_err(read_error)?;
        let writer = self
            .storage()
            .replace(stored_path)
            .map_err(self.store_error(stored_path))?;
        let mut encoder = codec
            .encoder(writer, level)
            .map_err(self.store_error(stored_path))?;
        let mut buffer = vec![0u8; READ_BUFFER];
        let (mut again_size, mut again_crc) = (0u64, 0u32);
        loop {
            let read = file.read(&mut buffer).map_err(read_error)?;
            if read == 0 {
                break;
            }
            again_crc = crc32c::crc32c_append(again_crc, &buffer[..read]);
            again_size += read as u64;
            encoder
                .write_all(&buffer[..read])
                .map_err(self.store_error(stored_path))?;
        }
        if (again_size, again_crc) != (size, crc) {
            // Dropping the unfinished writer leaves the old state.
            return Err(ArchiveError::Changed {
                path: source.to_owned(),
            });
        }
        let writer = encoder.finish().map_err(self.store_error(stored_path))?;
        writer.finish().map_err(self.store_error(stored_path))
    }

    /// The stored files of one group directory.
    fn stored_in(&self, group: &str) -> Result<Vec<ArchivedFile>, ArchiveError> {
        let entries = self
            .storage()
            .list(group)
            .map_err(self.store_error(group))?;
        Ok(entries
            .into_iter()
            .filter(|entry| !entry.is_prefix)
            .filter_map(|entry| {
                parse_stored(&entry.name).map(|(name, crc32c, codec)| ArchivedFile {
                    name,
                    crc32c,
                    codec,
                    stored_path: join(group, &entry.name),
                    stored_bytes: entry.size,
                    modified_us: entry.modified_us,
                })
            })
            .collect())
    }

    /// The stored file for `name`, if any.
    pub fn find(&self, name: &WalFileName) -> Result<Option<ArchivedFile>, ArchiveError> {
        let mut found: Vec<ArchivedFile> = self
            .stored_in(&group_of(name))?
            .into_iter()
            .filter(|f| f.name == *name)
            .collect();
        // Push never stores a name twice; should a hand-made copy exist, the
        // ambiguity is damage, not a choice to make silently.
        if found.len() > 1 {
            let names: Vec<&str> = found.iter().map(|f| f.stored_path.as_str()).collect();
            return Err(ArchiveError::Damaged {
                stored: names.join("\", \""),
                detail: "the archive holds this name more than once".to_owned(),
            });
        }
        Ok(found.pop())
    }

    /// Writes the archived file `name` to `target`, checked: Ok(false) when
    /// the archive does not hold it. Damage is an error and leaves no file
    /// at `target`, and so is a repository without an archive: an archive
    /// gone missing must stop recovery, not look like its end. For
    /// `restore_command`: the file is not synced.
    pub fn get(&self, name: &str, target: &Path) -> Result<bool, ArchiveError> {
        let parsed = WalFileName::parse(name).ok_or_else(|| ArchiveError::InvalidName {
            name: name.to_owned(),
        })?;
        let Some(segment_size) = self.segment_size()? else {
            return Err(ArchiveError::NoArchive {
                repository: self.repository.root().display().to_string(),
                path: INFO_FILE.to_owned(),
            });
        };
        let Some(stored) = self.find(&parsed)? else {
            return Ok(false);
        };
        let expected_size = (parsed.kind == WalFileKind::Segment).then_some(segment_size);
        let write_error = |e| ArchiveError::WriteTarget {
            path: target.to_owned(),
            source: e,
        };
        // Not fsynced: recovery reads the file at once, and after a crash
        // it asks for it again (PostgreSQL's own restore does not sync it
        // either); a sync of each 16 MB segment would make recovery wait on
        // the disk for every one.
        let mut out = File::create(target).map_err(write_error)?;
        let result = self.copy_checked(&stored, &mut out, target, expected_size);
        if result.is_err() {
            drop(out);
            let _ = std::fs::remove_file(target);
        }
        result.map(|()| true)
    }

    /// A small archived file (a timeline history) read whole and checked.
    pub fn read(&self, name: &WalFileName) -> Result<Option<Vec<u8>>, ArchiveError> {
        let Some(stored) = self.find(name)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        self.copy_checked(&stored, &mut bytes, Path::new(&stored.stored_path), None)?;
        Ok(Some(bytes))
    }

    /// The history of `timeline` from its archived history file: None when
    /// the archive does not hold it (timeline 1 has none and needs none).
    pub fn history(&self, timeline: u32) -> Result<Option<Vec<TimelineSpan>>, ArchiveError> {
        if timeline == 1 {
            return Ok(Some(vec![TimelineSpan {
                timeline: 1,
                begin: Lsn(0),
                end: None,
            }]));
        }
        let name = WalFileName {
            timeline,
            log: 0,
            seg: 0,
            kind: WalFileKind::TimelineHistory,
        };
        let Some(bytes) = self.read(&name)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        parse_history(timeline, &text)
            .map(Some)
            .ok_or_else(|| ArchiveError::Damaged {
                stored: name.to_string(),
                detail: "it is not a timeline history".to_owned(),
            })
    }

    fn copy_checked(
        &self,
        stored: &ArchivedFile,
        out: &mut dyn Write,
        target: &Path,
        expected_size: Option<u64>,
    ) -> Result<(), ArchiveError> {
        let damaged = |detail: String| ArchiveError::Damaged {
            stored: stored.stored_path.clone(),
            detail,
        };
        let reader = self
            .storage()
            .open(&stored.stored_path)
            .map_err(self.store_error(&stored.stored_path))?;
        let mut decoder = stored
            .codec
            .decoder(reader)
            .map_err(|e| damaged(e.to_string()))?;
        let mut buffer = vec![0u8; READ_BUFFER];
        let (mut size, mut crc) = (0u64, 0u32);
        loop {
            let read = match decoder.read(&mut buffer) {
                Ok(read) => read,
                // What decoders report about the data (flate2 says
                // InvalidInput), not about the store.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
                    ) =>
                {
                    return Err(damaged(format!("it does not decode: {e}")))
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(damaged(format!("it is cut short: {e}")))
                }
                Err(e) => return Err(self.store_error(&stored.stored_path)(e)),
            };
            if read == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buffer[..read]);
            size += read as u64;
            out.write_all(&buffer[..read])
                .map_err(|e| ArchiveError::WriteTarget {
                    path: target.to_owned(),
                    source: e,
                })?;
        }
        if crc != stored.crc32c {
            return Err(damaged(format!(
                "its content has CRC-32C {crc:08X}, its name says {:08X}",
                stored.crc32c
            )));
        }
        if let Some(expected) = expected_size.filter(|&e| e != size) {
            return Err(damaged(format!(
                "it holds {size} bytes, a segment {expected}"
            )));
        }
        Ok(())
    }

    /// Every stored file of the archive, by name.
    pub fn list(&self) -> Result<Vec<ArchivedFile>, ArchiveError> {
        let groups = self
            .storage()
            .list(ARCHIVE_DIR)
            .map_err(self.store_error(ARCHIVE_DIR))?;
        let mut files = Vec::new();
        for group in groups.into_iter().filter(|e| e.is_prefix) {
            files.extend(self.stored_in(&join(ARCHIVE_DIR, &group.name))?);
        }
        files.sort_by_key(|f| f.name);
        Ok(files)
    }

    /// Removes one stored file.
    pub fn remove(&self, file: &ArchivedFile) -> Result<(), ArchiveError> {
        self.storage()
            .remove(&file.stored_path)
            .map_err(self.store_error(&file.stored_path))
    }
}

/// An archived file as a listing gives it, for the tests of the modules
/// that read listings.
#[cfg(test)]
pub(crate) fn listed(name: &str, stored_bytes: u64, modified_us: Option<i64>) -> ArchivedFile {
    ArchivedFile {
        name: WalFileName::parse(name).expect("a WAL file name"),
        crc32c: 0,
        codec: Compression::None,
        stored_path: name.to_owned(),
        stored_bytes,
        modified_us,
    }
}

/// Where files of `name` are stored.
fn group_of(name: &WalFileName) -> String {
    match name.kind {
        WalFileKind::TimelineHistory => join(ARCHIVE_DIR, HISTORY_DIR),
        _ => join(
            ARCHIVE_DIR,
            &format!("{:08X}{:08X}", name.timeline, name.log),
        ),
    }
}

/// `<name>-<crc><suffix>` back into its parts; None for anything else (a
/// temporary of a write cut off).
fn parse_stored(stored: &str) -> Option<(WalFileName, u32, Compression)> {
    let (codec, base) = Compression::ALL
        .into_iter()
        .filter(|c| *c != Compression::None)
        .find_map(|c| stored.strip_suffix(c.suffix()).map(|base| (c, base)))
        .unwrap_or((Compression::None, stored));
    let (name, crc) = base.rsplit_once('-')?;
    let crc_ok = crc.len() == 8 && crc.bytes().all(|b| b.is_ascii_hexdigit());
    if !crc_ok {
        return None;
    }
    Some((
        WalFileName::parse(name)?,
        u32::from_str_radix(crc, 16).ok()?,
        codec,
    ))
}

fn crc_of(file: &mut File, path: &Path) -> Result<(u64, u32), ArchiveError> {
    use std::io::Seek;
    let read_error = |e| ArchiveError::ReadSource {
        path: path.to_owned(),
        source: e,
    };
    file.rewind().map_err(read_error)?;
    let mut buffer = vec![0u8; READ_BUFFER];
    let (mut size, mut crc) = (0u64, 0u32);
    loop {
        let read = file.read(&mut buffer).map_err(read_error)?;
        if read == 0 {
            return Ok((size, crc));
        }
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
        size += read as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip_and_temporaries_are_not_files() {
        let (name, crc, codec) = parse_stored("000000010000000000000003-0A1B2C3D.zst").unwrap();
        assert_eq!(name.to_string(), "000000010000000000000003");
        assert_eq!((crc, codec), (0x0A1B_2C3D, Compression::Zstd));
        let (name, _, codec) = parse_stored("00000002.history-00000000").unwrap();
        assert_eq!(
            (name.to_string().as_str(), codec),
            ("00000002.history", Compression::None)
        );
        for other in [
            ".000000010000000000000003-0A1B2C3D.zst.tmp-12-0",
            "000000010000000000000003.zst",
            "000000010000000000000003-0A1B2C3.zst",
            "000000010000000000000003-0A1B2C3D.bz2",
            "archive.json",
        ] {
            assert!(parse_stored(other).is_none(), "{other}");
        }
    }
}
