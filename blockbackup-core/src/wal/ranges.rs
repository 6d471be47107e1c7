//! The archive's segments as runs: consecutive segments of one timeline,
//! a gap, a partial segment or another timeline ending a run. What
//! `archived_wal()` and the offline `list` show.

use std::collections::BTreeMap;

use super::archive::ArchivedFile;
use super::name::{WalFileKind, WalFileName};
use crate::Lsn;

/// A run of consecutive segments of one timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedRange {
    pub timeline: u32,
    pub start: WalFileName,
    pub end: WalFileName,
    pub start_lsn: Lsn,
    /// The end of the last segment (where the next one would begin); for a
    /// range ending in a partial segment, that segment's end too.
    pub end_lsn: Lsn,
    pub segments: u64,
    pub stored_bytes: u64,
    /// Whether the last segment is a `.partial` one.
    pub ends_partial: bool,
}

/// The runs of consecutive segments in `files`, by timeline then LSN: a
/// gap, a partial segment or the end of a timeline ends a run.
pub fn ranges(files: &[ArchivedFile], segment_size: u64) -> Vec<ArchivedRange> {
    let mut by_timeline: BTreeMap<u32, Vec<&ArchivedFile>> = BTreeMap::new();
    for file in files.iter().filter(|f| f.name.is_segment()) {
        by_timeline
            .entry(file.name.timeline)
            .or_default()
            .push(file);
    }
    let mut ranges = Vec::new();
    for (timeline, mut segments) in by_timeline {
        segments.sort_by_key(|f| (f.name.segment_number(segment_size), f.name.kind));
        let mut current: Option<ArchivedRange> = None;
        for file in segments {
            let number = file.name.segment_number(segment_size);
            let start = Lsn(number * segment_size);
            let follows = current
                .as_ref()
                .is_some_and(|range| !range.ends_partial && range.end_lsn == start);
            if !follows {
                ranges.extend(current.take());
                current = Some(ArchivedRange {
                    timeline,
                    start: file.name,
                    end: file.name,
                    start_lsn: start,
                    end_lsn: start,
                    segments: 0,
                    stored_bytes: 0,
                    ends_partial: false,
                });
            }
            if let Some(range) = current.as_mut() {
                range.end = file.name;
                range.end_lsn = Lsn(start.0 + segment_size);
                range.segments += 1;
                range.stored_bytes += file.stored_bytes;
                range.ends_partial = file.name.kind == WalFileKind::Partial;
            }
        }
        ranges.extend(current);
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> ArchivedFile {
        crate::wal::archive::listed(name, 10, None)
    }

    #[test]
    fn ranges_break_at_gaps_partials_and_timelines() {
        const MB16: u64 = 16 << 20;
        let files: Vec<ArchivedFile> = [
            "000000010000000000000001",
            "000000010000000000000002",
            "0000000100000000000000FF",
            "000000010000000100000000",
            "000000010000000100000002.partial",
            "000000010000000100000002.00000028.backup",
            "00000002.history",
            "000000020000000100000002",
            "000000020000000100000003",
        ]
        .iter()
        .map(|n| file(n))
        .collect();
        let got: Vec<(u32, String, String, u64, bool)> = ranges(&files, MB16)
            .into_iter()
            .map(|r| {
                (
                    r.timeline,
                    r.start.to_string(),
                    r.end.to_string(),
                    r.segments,
                    r.ends_partial,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    1,
                    "000000010000000000000001".into(),
                    "000000010000000000000002".into(),
                    2,
                    false
                ),
                (
                    1,
                    "0000000100000000000000FF".into(),
                    "000000010000000100000000".into(),
                    2,
                    false
                ),
                (
                    1,
                    "000000010000000100000002.partial".into(),
                    "000000010000000100000002.partial".into(),
                    1,
                    true
                ),
                (
                    2,
                    "000000020000000100000002".into(),
                    "000000020000000100000003".into(),
                    2,
                    false
                ),
            ]
        );
        let first = &ranges(&files, MB16)[0];
        assert_eq!(first.start_lsn, Lsn(0x100_0000));
        assert_eq!(first.end_lsn, Lsn(0x300_0000));
        assert_eq!(first.stored_bytes, 20);
    }
}
