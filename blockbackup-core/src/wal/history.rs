//! Timeline history files (`TTTTTTTT.history`): one line per ancestor
//! timeline, `<parent tli> <switch LSN> <reason>`, in order. The history of
//! timeline T is its ancestors, each up to where the next one branched
//! off, then T itself, open-ended.

use crate::summary::range_plan::TimelineSpan;
use crate::Lsn;

/// The history of `timeline` from its history file's text; None when a
/// line is not `<tli> <lsn> ...` or the timelines do not increase.
pub fn parse_history(timeline: u32, text: &str) -> Option<Vec<TimelineSpan>> {
    let mut spans: Vec<TimelineSpan> = Vec::new();
    let mut begin = Lsn(0);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parent: u32 = fields.next()?.parse().ok()?;
        let switch: Lsn = fields.next()?.parse().ok()?;
        if spans.last().is_some_and(|last| last.timeline >= parent) || parent >= timeline {
            return None;
        }
        spans.push(TimelineSpan {
            timeline: parent,
            begin,
            end: Some(switch),
        });
        begin = switch;
    }
    spans.push(TimelineSpan {
        timeline,
        begin,
        end: None,
    });
    Some(spans)
}

/// Whether `history` passes through timeline `timeline` at `lsn`.
pub fn contains(history: &[TimelineSpan], timeline: u32, lsn: Lsn) -> bool {
    history.iter().any(|span| {
        span.timeline == timeline && span.begin <= lsn && span.end.is_none_or(|end| lsn <= end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_postgresql_writes() {
        let text =
            "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n";
        let spans = parse_history(3, text).unwrap();
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].timeline, 1);
        assert_eq!(spans[0].end, Some(Lsn(0x300_0158)));
        assert_eq!(spans[1].begin, Lsn(0x300_0158));
        assert_eq!(
            spans[2],
            TimelineSpan {
                timeline: 3,
                begin: Lsn(0x500_0000),
                end: None
            }
        );
        assert!(contains(&spans, 1, Lsn(0x200_0000)));
        assert!(!contains(&spans, 1, Lsn(0x400_0000)));
        assert!(contains(&spans, 3, Lsn(0x600_0000)));
        assert!(parse_history(2, "1 junk\n").is_none());
        assert!(parse_history(2, "2\t0/1\tself\n").is_none());
        assert_eq!(parse_history(1, "").unwrap().len(), 1);
    }
}
