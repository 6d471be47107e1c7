//! How far recovery can replay: from a backup's start, segment by segment,
//! reading each as PostgreSQL does in archive recovery (the restore_command
//! first, on the newest timeline of the target's history that began at or
//! before the segment; then the WAL the backup itself stores in pg_wal).

use super::archive::ArchivedFile;
use super::name::{WalFileKind, WalFileName};
use crate::summary::range_plan::TimelineSpan;
use crate::Lsn;

/// Where replay from `start` must stop: the first position whose WAL is
/// neither archived (as a whole segment, on a timeline `history` allows
/// there) nor below `own_reach`, the end of the WAL the backup holds; and
/// the store's time of the last segment read from the archive on the way
/// (None when none is): every record replayed was written before it.
pub fn replay_reach(
    files: &[ArchivedFile],
    history: &[TimelineSpan],
    segment_size: u64,
    start: Lsn,
    own_reach: Lsn,
) -> (Lsn, Option<i64>) {
    let archived = |segment: u64| -> Option<&ArchivedFile> {
        // Newest timeline first, as XLogFileReadAnyTLI tries them.
        history.iter().rev().find_map(|span| {
            if span.begin.0 / segment_size > segment {
                return None;
            }
            let name = WalFileName::segment(span.timeline, segment, segment_size);
            files
                .iter()
                .find(|f| f.name == name && f.name.kind == WalFileKind::Segment)
        })
    };
    let mut position = start;
    let mut newest_time = None;
    loop {
        let segment = position.0 / segment_size;
        if let Some(file) = archived(segment) {
            position = Lsn((segment + 1) * segment_size);
            newest_time = file.modified_us.or(newest_time);
        } else if own_reach > position {
            position = own_reach;
        } else {
            return (position, newest_time);
        }
    }
}

/// A gap in the archive after a backup: replay from `start` stops at the
/// first returned LSN although WAL was archived up to the second (the end
/// of the newest archived segment on the timelines of `history`).
pub fn gap_after(
    files: &[ArchivedFile],
    history: &[TimelineSpan],
    segment_size: u64,
    start: Lsn,
    own_reach: Lsn,
) -> Option<(Lsn, Lsn)> {
    let (reach, _) = replay_reach(files, history, segment_size, start, own_reach);
    let newest = files
        .iter()
        // Whole segments: a timeline that was left ends in a partial one,
        // which recovery never reads.
        .filter(|f| f.name.kind == WalFileKind::Segment)
        .filter(|f| history.iter().any(|span| span.timeline == f.name.timeline))
        .map(|f| Lsn(f.name.start_lsn(segment_size).0 + segment_size))
        .max()?;
    (reach < newest).then_some((reach, newest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn file(name: &str, time: i64) -> ArchivedFile {
        crate::wal::archive::listed(name, 1, Some(time))
    }

    fn one_timeline() -> Vec<TimelineSpan> {
        vec![TimelineSpan {
            timeline: 1,
            begin: Lsn(0),
            end: None,
        }]
    }

    #[test]
    fn the_archive_and_the_backups_own_wal_together() {
        let files = vec![
            file("000000010000000000000003", 30),
            file("000000010000000000000004", 40),
            file("000000010000000000000006", 60),
        ];
        // The backup holds 2 and part of 3; the archive 3 and 4; 5 is missing.
        let (reach, time) = replay_reach(
            &files,
            &one_timeline(),
            SEG,
            Lsn(2 * SEG + 40),
            Lsn(3 * SEG + 100),
        );
        assert_eq!(reach, Lsn(5 * SEG));
        assert_eq!(time, Some(40));
        // Without the archive, the backup's own WAL.
        let (reach, time) =
            replay_reach(&[], &one_timeline(), SEG, Lsn(2 * SEG), Lsn(3 * SEG + 100));
        assert_eq!((reach, time), (Lsn(3 * SEG + 100), None));
        // Segment 5 is missing, 6 was archived: a gap.
        assert_eq!(
            gap_after(
                &files,
                &one_timeline(),
                SEG,
                Lsn(2 * SEG + 40),
                Lsn(3 * SEG + 100)
            ),
            Some((Lsn(5 * SEG), Lsn(7 * SEG)))
        );
        assert_eq!(
            gap_after(
                &files[..2],
                &one_timeline(),
                SEG,
                Lsn(2 * SEG + 40),
                Lsn(3 * SEG + 100)
            ),
            None
        );
    }

    #[test]
    fn a_new_timeline_is_read_from_where_it_began() {
        let history = vec![
            TimelineSpan {
                timeline: 1,
                begin: Lsn(0),
                end: Some(Lsn(4 * SEG + 10)),
            },
            TimelineSpan {
                timeline: 2,
                begin: Lsn(4 * SEG + 10),
                end: None,
            },
        ];
        let files = vec![
            file("000000010000000000000003", 1),
            file("000000010000000000000004", 2),
            file("000000020000000000000004", 3),
            file("000000020000000000000005", 4),
            file("000000010000000000000005", 5),
        ];
        let (reach, time) = replay_reach(&files, &history, SEG, Lsn(3 * SEG), Lsn(3 * SEG));
        assert_eq!(reach, Lsn(6 * SEG));
        // Segment 4 and 5 from timeline 2, the newest that began by then.
        assert_eq!(time, Some(4));
    }
}
