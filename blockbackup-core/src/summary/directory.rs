//! The summaries directory: summary files, gap records, and keeping both
//! durable and pruned.
//!
//! The directory listing is the only catalog. A summary's name carries its
//! timeline and span, so the set of files alone says which WAL is covered;
//! files are only ever created whole (write, fsync, rename) so a crash
//! leaves either the old state or the new one, plus at most a `.tmp`
//! leftover that listings ignore and the next write replaces.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use thiserror::Error;

use crate::lsn::Lsn;
use crate::summary::block_map::BlockMap;
use crate::summary::file::{decode_summary, SummaryFileError, SummaryHeader};

const SUMMARY_SUFFIX: &str = ".summary";
const GAP_SUFFIX: &str = ".gap";
const TEMP_SUFFIX: &str = ".tmp";
const GAP_FILE_FIRST_LINE: &str = "pg_blockbackup gap 1";

/// A summary file's identity, which is also its file name.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub struct SummaryName {
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
}

impl SummaryName {
    /// The name PostgreSQL 17 gives its own summaries in `pg_wal/summaries`.
    pub fn file_name(&self) -> String {
        format!(
            "{}{SUMMARY_SUFFIX}",
            span_stem(self.timeline, self.start_lsn, self.end_lsn)
        )
    }

    /// The inverse of [`SummaryName::file_name`]; None for any other name.
    pub fn parse(file_name: &str) -> Option<Self> {
        let (timeline, start_lsn, end_lsn) =
            parse_span_stem(file_name.strip_suffix(SUMMARY_SUFFIX)?)?;
        Some(SummaryName {
            timeline,
            start_lsn,
            end_lsn,
        })
    }
}

impl From<SummaryHeader> for SummaryName {
    fn from(header: SummaryHeader) -> Self {
        SummaryName {
            timeline: header.timeline,
            start_lsn: header.start_lsn,
            end_lsn: header.end_lsn,
        }
    }
}

/// A span of WAL that could not be summarized (WAL removed before it was
/// read, summarization turned off, `wal_level = minimal`). Queries touching
/// it fail, and the record lets the error say why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GapRecord {
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
    pub reason: String,
}

impl GapRecord {
    pub fn file_name(&self) -> String {
        format!(
            "{}{GAP_SUFFIX}",
            span_stem(self.timeline, self.start_lsn, self.end_lsn)
        )
    }

    /// The file's content; the reason is flattened onto one line.
    pub fn file_contents(&self) -> String {
        let reason: String = self
            .reason
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        format!("{GAP_FILE_FIRST_LINE}\n{reason}\n")
    }

    pub fn read(path: &Path) -> Result<Self, SummaryDirError> {
        let corrupt = |detail: &str| SummaryDirError::Corrupt {
            path: path.to_owned(),
            source: SummaryFileError::Malformed(detail.to_owned()),
        };
        let (timeline, start_lsn, end_lsn) = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(GAP_SUFFIX))
            .and_then(parse_span_stem)
            .ok_or_else(|| corrupt("not a gap record file name"))?;
        let bytes = fs::read(path).map_err(|source| io_error(path, source))?;
        let text = std::str::from_utf8(&bytes).map_err(|_| corrupt("gap record is not UTF-8"))?;
        let mut lines = text.lines();
        if lines.next() != Some(GAP_FILE_FIRST_LINE) {
            return Err(SummaryDirError::Corrupt {
                path: path.to_owned(),
                source: SummaryFileError::BadMagic,
            });
        }
        Ok(GapRecord {
            timeline,
            start_lsn,
            end_lsn,
            reason: lines.next().unwrap_or_default().to_owned(),
        })
    }
}

/// A summary file found in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryEntry {
    pub name: SummaryName,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub modified: SystemTime,
}

#[derive(Debug, Error)]
pub enum SummaryDirError {
    #[error("could not access \"{}\": {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("summary file \"{}\" is corrupt: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: SummaryFileError,
    },
    #[error(
        "summary file \"{}\" holds timeline {} span {}..{}, which does not match its name",
        path.display(), header.timeline, header.start_lsn, header.end_lsn
    )]
    NameMismatch {
        path: PathBuf,
        header: SummaryHeader,
    },
}

fn io_error(path: &Path, source: io::Error) -> SummaryDirError {
    SummaryDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The summaries in `dir`, by (start_lsn, timeline, end_lsn). A missing
/// directory holds none.
pub fn list_summaries(dir: &Path) -> Result<Vec<SummaryEntry>, SummaryDirError> {
    let mut summaries = Vec::new();
    for (file_name, path) in directory_files(dir)? {
        let Some(name) = SummaryName::parse(&file_name) else {
            continue;
        };
        let metadata = match fs::metadata(&path) {
            Ok(metadata) => metadata,
            // Removed by a concurrent expiry since the directory was read.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(io_error(&path, error)),
        };
        let modified = metadata
            .modified()
            .map_err(|error| io_error(&path, error))?;
        summaries.push(SummaryEntry {
            name,
            path,
            size_bytes: metadata.len(),
            modified,
        });
    }
    summaries.sort_by_key(|entry| {
        (
            entry.name.start_lsn,
            entry.name.timeline,
            entry.name.end_lsn,
        )
    });
    Ok(summaries)
}

/// The gap records in `dir`, by (start_lsn, timeline). A missing directory
/// holds none.
pub fn list_gaps(dir: &Path) -> Result<Vec<GapRecord>, SummaryDirError> {
    let mut gaps = Vec::new();
    for (file_name, path) in directory_files(dir)? {
        if !file_name.ends_with(GAP_SUFFIX) {
            continue;
        }
        match GapRecord::read(&path) {
            Ok(gap) => gaps.push(gap),
            Err(SummaryDirError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            }
            Err(error) => return Err(error),
        }
    }
    gaps.sort_by_key(|gap| (gap.start_lsn, gap.timeline, gap.end_lsn));
    Ok(gaps)
}

/// Reads and checks a summary file, including that its header says what
/// its name says: a renamed or swapped file would otherwise silently answer
/// for the wrong span of WAL.
pub fn read_summary(entry_path: &Path) -> Result<(SummaryHeader, BlockMap), SummaryDirError> {
    let bytes = fs::read(entry_path).map_err(|source| io_error(entry_path, source))?;
    let (header, map) = decode_summary(&bytes).map_err(|source| SummaryDirError::Corrupt {
        path: entry_path.to_owned(),
        source,
    })?;
    let named = entry_path
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(SummaryName::parse);
    if named != Some(SummaryName::from(header)) {
        return Err(SummaryDirError::NameMismatch {
            path: entry_path.to_owned(),
            header,
        });
    }
    Ok((header, map))
}

/// Creates or replaces `dir/file_name` so that after a crash it holds
/// either its old content or all of `bytes`, never a mix.
pub fn write_file_durably(
    dir: &Path,
    file_name: &str,
    bytes: &[u8],
) -> Result<(), SummaryDirError> {
    ensure_directory_durably(dir)?;
    let final_path = dir.join(file_name);
    let temp_path = dir.join(format!("{file_name}{TEMP_SUFFIX}"));
    let written = (|| {
        let mut file = File::create(&temp_path)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temp_path);
        return Err(io_error(&temp_path, error));
    }
    fs::rename(&temp_path, &final_path).map_err(|error| io_error(&final_path, error))?;
    sync_directory(dir)
}

/// Removes summaries last modified more than `keep` before `now`, then the
/// gap records that end at or before the oldest remaining summary's start:
/// nothing older can be asked for any more, so they explain nothing. If no
/// summary remains, gap records stay. Returns the removed summaries.
pub fn remove_expired(
    dir: &Path,
    keep: Duration,
    now: SystemTime,
) -> Result<Vec<SummaryName>, SummaryDirError> {
    let Some(cutoff) = now.checked_sub(keep) else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    let mut oldest_remaining_start: Option<Lsn> = None;
    for entry in list_summaries(dir)? {
        if entry.modified < cutoff {
            remove_if_present(&entry.path)?;
            removed.push(entry.name);
        } else {
            oldest_remaining_start = Some(
                oldest_remaining_start
                    .map_or(entry.name.start_lsn, |old| old.min(entry.name.start_lsn)),
            );
        }
    }
    if let Some(oldest_start) = oldest_remaining_start {
        for gap in list_gaps(dir)? {
            if gap.end_lsn <= oldest_start {
                remove_if_present(&dir.join(gap.file_name()))?;
            }
        }
    }
    Ok(removed)
}

fn remove_if_present(path: &Path) -> Result<(), SummaryDirError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io_error(path, error)),
        _ => Ok(()),
    }
}

/// Names and paths of the regular files directly in `dir`.
fn directory_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, SummaryDirError> {
    let reader = match fs::read_dir(dir) {
        Ok(reader) => reader,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(dir, error)),
    };
    let mut files = Vec::new();
    for entry in reader {
        let entry = entry.map_err(|error| io_error(dir, error))?;
        if let Ok(name) = entry.file_name().into_string() {
            files.push((name, entry.path()));
        }
    }
    Ok(files)
}

fn ensure_directory_durably(dir: &Path) -> Result<(), SummaryDirError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|error| io_error(dir, error))?;
    // The new directory entry itself must survive a crash too.
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_directory(parent),
        _ => Ok(()),
    }
}

fn sync_directory(dir: &Path) -> Result<(), SummaryDirError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| io_error(dir, error))
}

/// `TTTTTTTTSSSSSSSSssssssssEEEEEEEEeeeeeeee`: timeline, start and end LSN
/// (each as two 32-bit halves) in upper-case hexadecimal.
fn span_stem(timeline: u32, start: Lsn, end: Lsn) -> String {
    format!(
        "{:08X}{:08X}{:08X}{:08X}{:08X}",
        timeline,
        start.0 >> 32,
        start.0 as u32,
        end.0 >> 32,
        end.0 as u32
    )
}

/// Only the exact form `span_stem` writes is accepted, so that a parsed
/// name always turns back into the same file name.
fn parse_span_stem(stem: &str) -> Option<(u32, Lsn, Lsn)> {
    let canonical = stem.len() == 40
        && stem
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'A'..=b'F').contains(&byte));
    if !canonical {
        return None;
    }
    let word = |index: usize| u32::from_str_radix(&stem[index * 8..index * 8 + 8], 16).ok();
    let lsn = |high: u32, low: u32| Lsn((u64::from(high) << 32) | u64::from(low));
    let start = lsn(word(1)?, word(2)?);
    let end = lsn(word(3)?, word(4)?);
    if end < start {
        return None;
    }
    Some((word(0)?, start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relfork::{ForkNumber, RelFork};
    use crate::summary::file::encode_summary;

    fn name(timeline: u32, start: u64, end: u64) -> SummaryName {
        SummaryName {
            timeline,
            start_lsn: Lsn(start),
            end_lsn: Lsn(end),
        }
    }

    fn write_summary(dir: &Path, name: SummaryName) {
        let mut map = BlockMap::new();
        let rf = RelFork {
            spc_oid: 1663,
            db_oid: 5,
            rel_number: 16384,
            fork: ForkNumber::Main,
        };
        map.mark_block_modified(rf, 1);
        let header = SummaryHeader {
            timeline: name.timeline,
            start_lsn: name.start_lsn,
            end_lsn: name.end_lsn,
        };
        write_file_durably(dir, &name.file_name(), &encode_summary(&header, &map)).unwrap();
    }

    fn set_modified(path: &Path, when: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    #[test]
    fn names_files_like_postgresql() {
        let summary = name(1, 0x0000_0001_0000_0028, 0x0000_0002_0000_0000);
        assert_eq!(
            summary.file_name(),
            "0000000100000001000000280000000200000000.summary"
        );
        assert_eq!(SummaryName::parse(&summary.file_name()), Some(summary));
        let gap = GapRecord {
            timeline: 2,
            start_lsn: Lsn(16),
            end_lsn: Lsn(32),
            reason: "x".into(),
        };
        assert_eq!(
            gap.file_name(),
            "0000000200000000000000100000000000000020.gap"
        );
    }

    #[test]
    fn rejects_other_names() {
        for bad in [
            "000000010000000100000028000000020000000.summary",
            "00000001000000010000002800000002000000000.summary",
            "0000000100000001000000280000000200000000.summary.tmp",
            "0000000100000001000000280000000200000000.gap",
            "00000001000000010000002800000002000000g0.summary",
            "0000000100000001000000a80000000200000000.summary",
            "+000000100000001000000280000000200000000.summary",
            // end before start
            "0000000100000002000000000000000100000000.summary",
        ] {
            assert_eq!(SummaryName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn writes_lists_and_reads_back() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("nested").join("summaries");
        assert!(list_summaries(&dir).unwrap().is_empty());
        assert!(list_gaps(&dir).unwrap().is_empty());

        let later = name(1, 200, 300);
        let earlier = name(1, 100, 200);
        let other_timeline = name(2, 100, 150);
        for summary in [later, earlier, other_timeline] {
            write_summary(&dir, summary);
        }
        fs::write(dir.join("junk.txt"), "x").unwrap();
        fs::write(
            dir.join(format!("{}.tmp", name(1, 300, 400).file_name())),
            "x",
        )
        .unwrap();

        let listed = list_summaries(&dir).unwrap();
        let names: Vec<_> = listed.iter().map(|entry| entry.name).collect();
        assert_eq!(names, vec![earlier, other_timeline, later]);
        assert!(listed.iter().all(|entry| entry.size_bytes > 0));
        assert!(!dir.join(format!("{}.tmp", later.file_name())).exists());

        let (header, map) = read_summary(&listed[0].path).unwrap();
        assert_eq!(SummaryName::from(header), earlier);
        assert_eq!(map.total_blocks(), 1);
    }

    #[test]
    fn renamed_summary_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        write_summary(temp.path(), name(1, 100, 200));
        let wrong = temp.path().join(name(1, 100, 300).file_name());
        fs::rename(temp.path().join(name(1, 100, 200).file_name()), &wrong).unwrap();
        let error = read_summary(&wrong).unwrap_err();
        assert!(matches!(error, SummaryDirError::NameMismatch { .. }));
        assert!(error.to_string().contains(&name(1, 100, 300).file_name()));
    }

    #[test]
    fn corrupt_summary_error_names_the_file() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join(name(1, 1, 2).file_name());
        fs::write(&path, b"garbage").unwrap();
        let error = read_summary(&path).unwrap_err();
        assert!(matches!(error, SummaryDirError::Corrupt { .. }));
        assert!(error.to_string().contains(&name(1, 1, 2).file_name()));
    }

    #[test]
    fn gap_records_round_trip_on_one_line() {
        let temp = tempfile::tempdir().unwrap();
        let gap = GapRecord {
            timeline: 1,
            start_lsn: Lsn(100),
            end_lsn: Lsn(200),
            reason: "WAL removed\nbefore\r\nsummarization".into(),
        };
        write_file_durably(
            temp.path(),
            &gap.file_name(),
            gap.file_contents().as_bytes(),
        )
        .unwrap();
        let read = list_gaps(temp.path()).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].reason, "WAL removed before  summarization");
        assert_eq!(read[0].start_lsn, Lsn(100));

        fs::write(temp.path().join(gap.file_name()), "something else\n").unwrap();
        assert!(matches!(
            list_gaps(temp.path()),
            Err(SummaryDirError::Corrupt { .. })
        ));
    }

    #[test]
    fn expiry_removes_old_summaries_and_the_gaps_before_what_remains() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let now = SystemTime::now();
        let old = name(1, 100, 200);
        let recent = name(1, 300, 400);
        write_summary(dir, old);
        write_summary(dir, recent);
        set_modified(&dir.join(old.file_name()), now - Duration::from_secs(7200));
        set_modified(&dir.join(recent.file_name()), now - Duration::from_secs(60));
        let explained_nothing = GapRecord {
            timeline: 1,
            start_lsn: Lsn(200),
            end_lsn: Lsn(300),
            reason: "WAL removed".into(),
        };
        let still_relevant = GapRecord {
            timeline: 1,
            start_lsn: Lsn(400),
            end_lsn: Lsn(500),
            reason: "summarization off".into(),
        };
        for gap in [&explained_nothing, &still_relevant] {
            write_file_durably(dir, &gap.file_name(), gap.file_contents().as_bytes()).unwrap();
        }

        let removed = remove_expired(dir, Duration::from_secs(3600), now).unwrap();
        assert_eq!(removed, vec![old]);
        let remaining: Vec<_> = list_summaries(dir)
            .unwrap()
            .iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(remaining, vec![recent]);
        assert_eq!(list_gaps(dir).unwrap(), vec![still_relevant.clone()]);

        // Everything expired: the gap records stay.
        let removed = remove_expired(dir, Duration::ZERO, now + Duration::from_secs(1)).unwrap();
        assert_eq!(removed, vec![recent]);
        assert_eq!(list_gaps(dir).unwrap(), vec![still_relevant]);

        assert!(remove_expired(dir, Duration::MAX, now).unwrap().is_empty());
    }
}
