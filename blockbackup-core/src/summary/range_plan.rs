//! Which summaries answer a question about a range of WAL, or why none can.

use thiserror::Error;

use crate::lsn::Lsn;
use crate::summary::directory::{GapRecord, SummaryName};

/// One timeline of the server's history, oldest first: the timeline owns
/// the LSNs `begin <= lsn < end`; `end` None means it is still current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineSpan {
    pub timeline: u32,
    pub begin: Lsn,
    pub end: Option<Lsn>,
}

/// The summaries to merge, in order, to answer for a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangePlan {
    /// In LSN order; merge each into the result of the ones before it.
    pub summaries: Vec<SummaryName>,
    /// The summaries cover exactly the range. Otherwise they reach past
    /// one of its ends and the answer is a superset (safe for backups).
    pub exact: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoverageError {
    #[error("start LSN {start} is after end LSN {end}")]
    InvalidRange { start: Lsn, end: Lsn },
    #[error(
        "WAL at {requested} is older than every WAL summary ({}); take a full backup, or ask from the oldest summary's start on",
        describe_oldest(*oldest)
    )]
    BeforeOldestSummary { requested: Lsn, oldest: Option<Lsn> },
    #[error(
        "WAL is summarized only up to {summarized_to}, not yet to {requested_end}; wait for it with wait_for_summary('{requested_end}') and retry"
    )]
    NotYetSummarized {
        requested_end: Lsn,
        summarized_to: Lsn,
    },
    #[error(
        "WAL from {from} to {to} on timeline {timeline} was not summarized{}; changes in it are unknown, take a full backup",
        reason.as_deref().map(|reason| format!(" ({reason})")).unwrap_or_default()
    )]
    Gap {
        timeline: u32,
        from: Lsn,
        to: Lsn,
        reason: Option<String>,
    },
    #[error("the timeline history does not say which timeline LSN {lsn} belongs to")]
    HistoryDoesNotCover { lsn: Lsn },
}

fn describe_oldest(oldest: Option<Lsn>) -> String {
    match oldest {
        Some(lsn) => format!("the oldest starts at {lsn}"),
        None => "there are none yet".to_owned(),
    }
}

/// The part of the requested range that lies on one timeline.
#[derive(Clone, Copy, Debug)]
struct Piece {
    timeline: u32,
    start: Lsn,
    end: Lsn,
}

/// Chooses the summaries that together cover [start, end) along the
/// server's timeline history, using for each part of the range only the
/// summaries of the timeline that owns it: WAL of an abandoned timeline
/// describes changes the server never kept.
pub fn plan_range(
    summaries: &[SummaryName],
    gaps: &[GapRecord],
    history: &[TimelineSpan],
    start: Lsn,
    end: Lsn,
) -> Result<RangePlan, CoverageError> {
    if start > end {
        return Err(CoverageError::InvalidRange { start, end });
    }
    let pieces = split_by_timeline(history, start, end)?;
    let candidates_of = |piece: &Piece| {
        let mut candidates: Vec<SummaryName> = summaries
            .iter()
            .filter(|s| {
                s.timeline == piece.timeline && s.start_lsn < piece.end && s.end_lsn > piece.start
            })
            .copied()
            .collect();
        candidates.sort_by_key(|s| s.start_lsn);
        candidates
    };

    let mut plan = RangePlan {
        summaries: Vec::new(),
        exact: true,
    };
    for (piece_index, piece) in pieces.iter().enumerate() {
        let candidates = candidates_of(piece);
        let mut covered = piece.start;
        let mut next = 0;
        while covered < piece.end {
            // Of the summaries starting at or before the covered point, the
            // one reaching furthest; those passed over end no further than
            // it, so they can never help later and are not looked at again.
            let mut best: Option<SummaryName> = None;
            while let Some(candidate) = candidates.get(next).filter(|c| c.start_lsn <= covered) {
                let reaches_further = best.is_none_or(|best| {
                    (candidate.end_lsn, candidate.start_lsn) > (best.end_lsn, best.start_lsn)
                });
                if candidate.end_lsn > covered && reaches_further {
                    best = Some(*candidate);
                }
                next += 1;
            }
            let Some(chosen) = best else {
                let resumes_at = candidates.get(next).map(|c| c.start_lsn).or_else(|| {
                    pieces[piece_index + 1..].iter().find_map(|later| {
                        candidates_of(later)
                            .first()
                            .map(|c| c.start_lsn.max(later.start))
                    })
                });
                let hole = Hole {
                    timeline: piece.timeline,
                    from: covered,
                    resumes_at,
                    at_range_start: piece_index == 0 && covered == piece.start,
                };
                return Err(explain_hole(&hole, summaries, gaps, history, end));
            };
            if covered == piece.start && chosen.start_lsn != piece.start {
                plan.exact = false;
            }
            plan.summaries.push(chosen);
            covered = chosen.end_lsn;
        }
        if covered != piece.end {
            plan.exact = false;
        }
    }
    Ok(plan)
}

/// Cuts [start, end) at the timeline switches that fall inside it.
fn split_by_timeline(
    history: &[TimelineSpan],
    start: Lsn,
    end: Lsn,
) -> Result<Vec<Piece>, CoverageError> {
    let mut pieces = Vec::new();
    let mut reached = start;
    for span in history {
        if reached >= end {
            break;
        }
        let span_end = span.end.unwrap_or(Lsn(u64::MAX));
        if span_end <= reached {
            continue;
        }
        if span.begin > reached {
            return Err(CoverageError::HistoryDoesNotCover { lsn: reached });
        }
        let piece_end = end.min(span_end);
        pieces.push(Piece {
            timeline: span.timeline,
            start: reached,
            end: piece_end,
        });
        reached = piece_end;
    }
    if reached < end {
        return Err(CoverageError::HistoryDoesNotCover { lsn: reached });
    }
    Ok(pieces)
}

/// A stretch of the requested range that no summary covers.
struct Hole {
    timeline: u32,
    from: Lsn,
    /// Where summaries cover the range again; None: not before its end.
    resumes_at: Option<Lsn>,
    at_range_start: bool,
}

fn explain_hole(
    hole: &Hole,
    summaries: &[SummaryName],
    gaps: &[GapRecord],
    history: &[TimelineSpan],
    range_end: Lsn,
) -> CoverageError {
    let to = hole.resumes_at.unwrap_or(range_end);
    let overlapping = |gap: &&GapRecord| gap.start_lsn < to && gap.end_lsn > hole.from;
    // A recorded gap is the real explanation wherever the hole lies: waiting
    // or starting later would not help if WAL was never summarized.
    let recorded_gap = gaps
        .iter()
        .filter(overlapping)
        .find(|gap| gap.timeline == hole.timeline)
        .or_else(|| gaps.iter().find(overlapping));
    if let Some(gap) = recorded_gap {
        return CoverageError::Gap {
            timeline: hole.timeline,
            from: hole.from,
            to,
            reason: Some(gap.reason.clone()),
        };
    }

    let same_timeline = || summaries.iter().filter(|s| s.timeline == hole.timeline);
    let anything_before = same_timeline().any(|s| s.start_lsn <= hole.from);
    if hole.at_range_start && !anything_before {
        let on_history = |s: &&SummaryName| history.iter().any(|span| span.timeline == s.timeline);
        return CoverageError::BeforeOldestSummary {
            requested: hole.from,
            oldest: summaries
                .iter()
                .filter(on_history)
                .map(|s| s.start_lsn)
                .min(),
        };
    }
    match hole.resumes_at {
        None => CoverageError::NotYetSummarized {
            requested_end: range_end,
            summarized_to: same_timeline()
                .filter(|s| s.start_lsn <= hole.from)
                .map(|s| s.end_lsn)
                .max()
                .unwrap_or(hole.from),
        },
        Some(to) => CoverageError::Gap {
            timeline: hole.timeline,
            from: hole.from,
            to,
            reason: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(timeline: u32, start: u64, end: u64) -> SummaryName {
        SummaryName {
            timeline,
            start_lsn: Lsn(start),
            end_lsn: Lsn(end),
        }
    }

    fn one_timeline() -> Vec<TimelineSpan> {
        vec![TimelineSpan {
            timeline: 1,
            begin: Lsn(0),
            end: None,
        }]
    }

    fn plan(summaries: &[SummaryName], start: u64, end: u64) -> Result<RangePlan, CoverageError> {
        plan_range(summaries, &[], &one_timeline(), Lsn(start), Lsn(end))
    }

    #[test]
    fn exact_boundaries_give_an_exact_plan() {
        let tiles = [
            summary(1, 100, 200),
            summary(1, 200, 300),
            summary(1, 300, 400),
        ];
        let result = plan(&tiles, 100, 300).unwrap();
        assert_eq!(result.summaries, tiles[..2].to_vec());
        assert!(result.exact);
    }

    #[test]
    fn inner_boundaries_give_a_superset() {
        let tiles = [
            summary(1, 100, 200),
            summary(1, 200, 300),
            summary(1, 300, 400),
        ];
        let result = plan(&tiles, 150, 301).unwrap();
        assert_eq!(result.summaries, tiles.to_vec());
        assert!(!result.exact);
    }

    #[test]
    fn empty_range_needs_nothing() {
        let result = plan(&[], 500, 500).unwrap();
        assert!(result.summaries.is_empty());
        assert!(result.exact);
    }

    #[test]
    fn reversed_range_is_invalid() {
        assert_eq!(
            plan(&[], 2, 1),
            Err(CoverageError::InvalidRange {
                start: Lsn(2),
                end: Lsn(1)
            })
        );
    }

    #[test]
    fn prefers_the_summary_reaching_furthest() {
        let tiles = [
            summary(1, 100, 200),
            summary(1, 100, 400),
            summary(1, 200, 300),
            summary(1, 300, 400),
        ];
        assert_eq!(plan(&tiles, 100, 400).unwrap().summaries, vec![tiles[1]]);
    }

    #[test]
    fn names_each_kind_of_hole() {
        let tiles = [summary(1, 100, 200), summary(1, 300, 400)];
        assert_eq!(
            plan(&tiles, 50, 150),
            Err(CoverageError::BeforeOldestSummary {
                requested: Lsn(50),
                oldest: Some(Lsn(100))
            })
        );
        assert_eq!(
            plan(&[], 50, 150),
            Err(CoverageError::BeforeOldestSummary {
                requested: Lsn(50),
                oldest: None
            })
        );
        assert_eq!(
            plan(&tiles, 150, 350),
            Err(CoverageError::Gap {
                timeline: 1,
                from: Lsn(200),
                to: Lsn(300),
                reason: None
            })
        );
        assert_eq!(
            plan(&tiles, 350, 500),
            Err(CoverageError::NotYetSummarized {
                requested_end: Lsn(500),
                summarized_to: Lsn(400)
            })
        );
        assert_eq!(
            plan(&tiles, 450, 500),
            Err(CoverageError::NotYetSummarized {
                requested_end: Lsn(500),
                summarized_to: Lsn(400)
            })
        );
    }

    #[test]
    fn recorded_gaps_explain_holes() {
        let tiles = [summary(1, 100, 200), summary(1, 300, 400)];
        let gaps = [GapRecord {
            timeline: 1,
            start_lsn: Lsn(200),
            end_lsn: Lsn(300),
            reason: "WAL removed before it was summarized".into(),
        }];
        let error = plan_range(&tiles, &gaps, &one_timeline(), Lsn(150), Lsn(350)).unwrap_err();
        assert_eq!(
            error,
            CoverageError::Gap {
                timeline: 1,
                from: Lsn(200),
                to: Lsn(300),
                reason: Some("WAL removed before it was summarized".into())
            }
        );
        let message = error.to_string();
        assert!(
            message.contains("0/C8") && message.contains("0/12C"),
            "{message}"
        );
        assert!(message.contains("WAL removed"), "{message}");
    }

    #[test]
    fn timeline_switch_uses_only_the_history() {
        let history = [
            TimelineSpan {
                timeline: 1,
                begin: Lsn(0),
                end: Some(Lsn(250)),
            },
            TimelineSpan {
                timeline: 3,
                begin: Lsn(250),
                end: None,
            },
        ];
        let old_timeline = [summary(1, 100, 200), summary(1, 200, 250)];
        // Timeline 2 branched off at 220 and was abandoned.
        let abandoned = [summary(2, 220, 400)];
        let new_timeline = [summary(3, 250, 300), summary(3, 300, 400)];
        let all: Vec<_> = [&old_timeline[..], &abandoned, &new_timeline].concat();

        let result = plan_range(&all, &[], &history, Lsn(100), Lsn(400)).unwrap();
        assert_eq!(
            result.summaries,
            [&old_timeline[..], &new_timeline].concat()
        );
        assert!(result.exact);

        // Without timeline 1's last summary, the abandoned one must not fill in.
        let missing: Vec<_> = all
            .iter()
            .copied()
            .filter(|s| *s != old_timeline[1])
            .collect();
        assert_eq!(
            plan_range(&missing, &[], &history, Lsn(100), Lsn(400)),
            Err(CoverageError::Gap {
                timeline: 1,
                from: Lsn(200),
                to: Lsn(250),
                reason: None
            })
        );
        // Nor after the switch.
        let missing: Vec<_> = all
            .iter()
            .copied()
            .filter(|s| *s != new_timeline[0])
            .collect();
        assert_eq!(
            plan_range(&missing, &[], &history, Lsn(100), Lsn(400)),
            Err(CoverageError::Gap {
                timeline: 3,
                from: Lsn(250),
                to: Lsn(300),
                reason: None
            })
        );
        // Summarizer still on timeline 1: nothing summarized past 200 yet.
        assert_eq!(
            plan_range(&old_timeline[..1], &[], &history, Lsn(100), Lsn(400)),
            Err(CoverageError::NotYetSummarized {
                requested_end: Lsn(400),
                summarized_to: Lsn(200)
            })
        );
    }

    #[test]
    fn incomplete_history_is_an_error() {
        let history = [TimelineSpan {
            timeline: 1,
            begin: Lsn(0),
            end: Some(Lsn(100)),
        }];
        assert_eq!(
            plan_range(&[summary(1, 0, 100)], &[], &history, Lsn(50), Lsn(150)),
            Err(CoverageError::HistoryDoesNotCover { lsn: Lsn(100) })
        );
        assert_eq!(
            plan_range(&[], &[], &[], Lsn(50), Lsn(150)),
            Err(CoverageError::HistoryDoesNotCover { lsn: Lsn(50) })
        );
    }
}
