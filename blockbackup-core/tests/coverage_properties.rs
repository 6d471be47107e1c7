//! Over random tilings of summaries with holes, a range is planned exactly
//! when the summaries cover it, and the plan is a contiguous cover.

use blockbackup_core::{plan_range, Lsn, SummaryName, TimelineSpan};
use proptest::prelude::*;

/// Consecutive stretches from `first`: (length, is it summarized).
fn tiling() -> impl Strategy<Value = (u64, Vec<(u64, bool)>)> {
    (
        0u64..50,
        prop::collection::vec((1u64..40, prop::bool::weighted(0.8)), 0..12),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn plans_exactly_the_covered_ranges(
        (first, stretches) in tiling(),
        a in 0u64..400,
        b in 0u64..400,
    ) {
        let (start, end) = (a.min(b), a.max(b));
        let mut summaries = Vec::new();
        let mut holes = Vec::new();
        let mut boundary = first;
        for (length, summarized) in stretches {
            let span = (boundary, boundary + length);
            if summarized {
                summaries.push(SummaryName { timeline: 1, start_lsn: Lsn(span.0), end_lsn: Lsn(span.1) });
            } else {
                holes.push(span);
            }
            boundary += length;
        }
        let last = boundary;
        let covered = start == end
            || (start >= first
                && end <= last
                && holes.iter().all(|&(hole_start, hole_end)| hole_end <= start || hole_start >= end));
        let history = [TimelineSpan { timeline: 1, begin: Lsn(0), end: None }];

        let result = plan_range(&summaries, &[], &history, Lsn(start), Lsn(end));
        prop_assert_eq!(result.is_ok(), covered, "{:?}", result);
        if let Ok(plan) = result {
            if start == end {
                prop_assert!(plan.summaries.is_empty());
                prop_assert!(plan.exact);
            } else {
                let chosen = &plan.summaries;
                prop_assert!(!chosen.is_empty());
                prop_assert!(chosen[0].start_lsn.0 <= start);
                prop_assert!(chosen[chosen.len() - 1].end_lsn.0 >= end);
                for pair in chosen.windows(2) {
                    prop_assert_eq!(pair[0].end_lsn, pair[1].start_lsn);
                }
                for summary in chosen {
                    prop_assert!(summary.start_lsn.0 < end && summary.end_lsn.0 > start);
                }
                let exact = chosen[0].start_lsn.0 == start && chosen[chosen.len() - 1].end_lsn.0 == end;
                prop_assert_eq!(plan.exact, exact);
            }
        }
    }

    /// Summaries of a timeline that the history abandoned never help,
    /// whatever they cover.
    #[test]
    fn abandoned_timeline_is_never_used(
        switch in 1u64..300,
        a in 0u64..400,
        b in 0u64..400,
        abandoned_start in 0u64..300,
    ) {
        let (start, end) = (a.min(b), a.max(b));
        let history = [
            TimelineSpan { timeline: 1, begin: Lsn(0), end: Some(Lsn(switch)) },
            TimelineSpan { timeline: 3, begin: Lsn(switch), end: None },
        ];
        let summaries = [
            SummaryName { timeline: 1, start_lsn: Lsn(0), end_lsn: Lsn(switch) },
            SummaryName { timeline: 2, start_lsn: Lsn(abandoned_start), end_lsn: Lsn(1000) },
        ];
        let result = plan_range(&summaries, &[], &history, Lsn(start), Lsn(end));
        prop_assert_eq!(result.is_ok(), start == end || end <= switch, "{:?}", result);
        if let Ok(plan) = result {
            prop_assert!(plan.summaries.iter().all(|s| s.timeline == 1));
        }
    }
}
