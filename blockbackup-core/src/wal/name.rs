//! The names PostgreSQL gives the files it archives, parsed strictly: a
//! name that is none of them is refused before it is joined to a path.
//!
//! * `TTTTTTTTLLLLLLLLSSSSSSSS`: a WAL segment of timeline T, log L,
//!   segment S (24 upper-case hexadecimal digits);
//! * the same followed by `.partial`: the last, unfinished segment of a
//!   timeline a standby was promoted from;
//! * the same followed by `.OOOOOOOO.backup`: a backup history file (O is
//!   the start LSN's offset in the segment);
//! * `TTTTTTTT.history`: a timeline history file.

use std::fmt;

use crate::Lsn;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFileKind {
    Segment,
    Partial,
    BackupHistory { offset: u32 },
    TimelineHistory,
}

/// A parsed archive name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalFileName {
    pub timeline: u32,
    /// The `LLLLLLLL` and `SSSSSSSS` parts; zero for a history file.
    pub log: u32,
    pub seg: u32,
    pub kind: WalFileKind,
}

fn hex8(text: &str) -> Option<u32> {
    (text.len() == 8
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
    .then(|| u32::from_str_radix(text, 16).ok())
    .flatten()
}

impl WalFileName {
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(timeline) = name.strip_suffix(".history") {
            return Some(WalFileName {
                timeline: hex8(timeline).filter(|&t| t != 0)?,
                log: 0,
                seg: 0,
                kind: WalFileKind::TimelineHistory,
            });
        }
        let (base, rest) = (name.get(..24)?, name.get(24..)?);
        let kind = match rest {
            "" => WalFileKind::Segment,
            ".partial" => WalFileKind::Partial,
            _ => {
                let offset = rest.strip_prefix('.')?.strip_suffix(".backup")?;
                WalFileKind::BackupHistory {
                    offset: hex8(offset)?,
                }
            }
        };
        let timeline = hex8(&base[..8]).filter(|&t| t != 0)?;
        Some(WalFileName {
            timeline,
            log: hex8(&base[8..16])?,
            seg: hex8(&base[16..24])?,
            kind,
        })
    }

    /// The segment `number` (LSN / segment size) of `timeline`.
    pub fn segment(timeline: u32, number: u64, segment_size: u64) -> Self {
        let per_log = segments_per_log(segment_size);
        WalFileName {
            timeline,
            log: (number / per_log) as u32,
            seg: (number % per_log) as u32,
            kind: WalFileKind::Segment,
        }
    }

    pub fn is_segment(&self) -> bool {
        matches!(self.kind, WalFileKind::Segment | WalFileKind::Partial)
    }

    /// The segment's number (its start LSN / the segment size).
    pub fn segment_number(&self, segment_size: u64) -> u64 {
        u64::from(self.log) * segments_per_log(segment_size) + u64::from(self.seg)
    }

    pub fn start_lsn(&self, segment_size: u64) -> Lsn {
        Lsn(self.segment_number(segment_size) * segment_size)
    }

    /// The 24-digit segment part (the whole name of a plain segment).
    pub fn segment_part(&self) -> String {
        format!("{:08X}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            WalFileKind::TimelineHistory => write!(f, "{:08X}.history", self.timeline),
            WalFileKind::Segment => f.write_str(&self.segment_part()),
            WalFileKind::Partial => write!(f, "{}.partial", self.segment_part()),
            WalFileKind::BackupHistory { offset } => {
                write!(f, "{}.{offset:08X}.backup", self.segment_part())
            }
        }
    }
}

/// Segments in one "log" (4 GB of WAL): PostgreSQL's XLogSegmentsPerXLogId.
pub fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size.max(1)
}

/// Whether `size` is a WAL segment size PostgreSQL allows (a power of two
/// from 1 MB to 1 GB).
pub fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    #[test]
    fn parses_every_kind_and_prints_it_back() {
        for name in [
            "000000010000000000000001",
            "00000002000000A3000000FF",
            "000000010000000000000003.partial",
            "000000010000000000000003.00000028.backup",
            "00000002.history",
        ] {
            let parsed = WalFileName::parse(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(parsed.to_string(), name);
        }
        let seg = WalFileName::parse("00000002000000A3000000FF").unwrap();
        assert_eq!(seg.timeline, 2);
        assert_eq!(seg.segment_number(MB16), 0xA3 * 256 + 0xFF);
        assert_eq!(seg.start_lsn(MB16), Lsn(0xA3_FF00_0000));
        assert_eq!(WalFileName::segment(2, 0xA3 * 256 + 0xFF, MB16), seg);
    }

    #[test]
    fn refuses_anything_else() {
        for name in [
            "",
            "00000001000000000000000",
            "0000000100000000000000010",
            "000000010000000000000001.gz",
            "00000001000000000000000g",
            "000000010000000000000001/..",
            "../000000010000000000000001",
            "000000000000000000000001",
            "00000000.history",
            "0000001.history",
            "000000010000000000000001.0000028.backup",
            "000000010000000000000001.partial.partial",
            "0000000a0000000000000001",
        ] {
            assert!(WalFileName::parse(name).is_none(), "{name:?} was accepted");
        }
    }

    #[test]
    fn segment_sizes() {
        assert!(valid_segment_size(1 << 20));
        assert!(valid_segment_size(MB16));
        assert!(valid_segment_size(1 << 30));
        assert!(!valid_segment_size(1 << 31));
        assert!(!valid_segment_size(3 << 20));
        assert_eq!(segments_per_log(MB16), 256);
        assert_eq!(segments_per_log(1 << 30), 4);
    }
}
