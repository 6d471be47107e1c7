//! PostgreSQL's backup manifest (`backup_manifest`, format version 1).
//!
//! PostgreSQL 13+ writes this file into every base backup and
//! `pg_verifybackup` checks a directory against it: every file present
//! with its size and checksum, nothing extra, and the WAL needed for
//! consistency parseable. A restore that writes one lets a DBA verify it
//! with PostgreSQL's own tool instead of trusting ours.
//!
//! The writer reproduces byte for byte what PostgreSQL 15's server writes
//! (`backup_manifest.c`): the same line structure, JSON strings escaped as
//! `escape_json` does, sizes in decimal, modification times as
//! `YYYY-MM-DD HH:MM:SS GMT`, CRC-32C checksums printed as the hex of the
//! four bytes in little-endian order (PostgreSQL copies the native `uint32`
//! into a byte buffer and hex-encodes that), LSNs as `%X/%X`, and a final
//! `Manifest-Checksum`: the SHA-256 of every byte up to and including the
//! newline before that line. A test re-renders a manifest taken by
//! `pg_basebackup` and compares the bytes.
//!
//! The reader parses with serde_json, verifies the manifest checksum the
//! way `pg_verifybackup` locates it (the last line is the checksum line,
//! the file ends with a newline), and accepts only CRC-32C file checksums,
//! the algorithm this project writes and `pg_basebackup`'s default.
//!
//! Paths are Rust strings, hence valid UTF-8: PostgreSQL writes such paths
//! as `"Path"`, so the writer never needs `"Encoded-Path"`. The reader
//! decodes `"Encoded-Path"` (hex) and rejects it only when the decoded
//! bytes are not UTF-8.

use std::fmt::Write as _;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::civil_time::{civil_from_days, days_from_civil};
use crate::lsn::{Lsn, LsnParseError};

/// One file of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// Relative to the data directory, with '/'.
    pub path: String,
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    pub crc32c: u32,
}

/// A range of WAL the backup needs, on one timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
}

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("backup manifest is not JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("backup manifest must have at least two lines and end with a newline")]
    Lines,
    #[error("backup manifest checksum mismatch: the manifest records {recorded}, its content hashes to {computed}; the manifest is damaged")]
    ChecksumMismatch { recorded: String, computed: String },
    #[error("backup manifest version {0} is not supported (expected 1 or 2)")]
    UnsupportedVersion(u64),
    #[error(
        "backup manifest file entry {index} must have exactly one of \"Path\" and \"Encoded-Path\""
    )]
    PathMissing { index: usize },
    #[error("backup manifest \"Encoded-Path\" {value:?} is not the hex of a UTF-8 path")]
    BadEncodedPath { value: String },
    #[error("backup manifest entry {path:?} has checksum algorithm {algorithm:?}; only CRC32C is supported (take the backup with --manifest-checksums=CRC32C)")]
    UnsupportedChecksum { path: String, algorithm: String },
    #[error("backup manifest entry {path:?} has checksum {value:?}, not 8 hex digits")]
    BadChecksum { path: String, value: String },
    #[error("backup manifest entry {path:?} has modification time {value:?}, not \"YYYY-MM-DD HH:MM:SS GMT\"")]
    BadTimestamp { path: String, value: String },
    #[error("backup manifest WAL range has an invalid LSN: {0}")]
    BadLsn(#[from] LsnParseError),
}

/// The bytes of a `backup_manifest` listing `files` and `wal_ranges`, in
/// the order given.
pub fn render_manifest(files: &[ManifestFile], wal_ranges: &[WalRange]) -> Vec<u8> {
    let mut out = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [");
    for (i, file) in files.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        out.push_str("{ \"Path\": ");
        escape_json(&mut out, &file.path);
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            ", \"Size\": {}, \"Last-Modified\": \"{}\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
            file.size,
            format_gmt(file.mtime),
            hex(&file.crc32c.to_le_bytes()),
        );
    }
    out.push_str("\n],\n\"WAL-Ranges\": [\n");
    for (i, range) in wal_ranges.iter().enumerate() {
        let _ = write!(
            out,
            "{}{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}",
            if i == 0 { "" } else { ",\n" },
            range.timeline,
            range.start_lsn,
            range.end_lsn,
        );
    }
    out.push_str("\n],\n");
    let checksum = hex(&Sha256::digest(out.as_bytes()));
    let _ = writeln!(out, "\"Manifest-Checksum\": \"{checksum}\"}}");
    out.into_bytes()
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u64,
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
    #[serde(rename = "WAL-Ranges")]
    wal_ranges: Vec<RawWalRange>,
    #[serde(rename = "Manifest-Checksum")]
    checksum: String,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Last-Modified")]
    last_modified: String,
    #[serde(rename = "Checksum-Algorithm")]
    checksum_algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

#[derive(Deserialize)]
struct RawWalRange {
    #[serde(rename = "Timeline")]
    timeline: u32,
    #[serde(rename = "Start-LSN")]
    start_lsn: String,
    #[serde(rename = "End-LSN")]
    end_lsn: String,
}

/// Parses a `backup_manifest` after verifying its `Manifest-Checksum`.
pub fn parse_manifest(bytes: &[u8]) -> Result<(Vec<ManifestFile>, Vec<WalRange>), ManifestError> {
    let raw: RawManifest = serde_json::from_slice(bytes)?;
    verify_checksum(bytes, raw.checksum)?;
    if !(1..=2).contains(&raw.version) {
        return Err(ManifestError::UnsupportedVersion(raw.version));
    }
    let mut files = Vec::with_capacity(raw.files.len());
    for (index, file) in raw.files.into_iter().enumerate() {
        let path = match (file.path, file.encoded_path) {
            (Some(path), None) => path,
            (None, Some(encoded)) => unhex(&encoded)
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or(ManifestError::BadEncodedPath { value: encoded })?,
            _ => return Err(ManifestError::PathMissing { index }),
        };
        let algorithm = file.checksum_algorithm.unwrap_or_else(|| "NONE".to_owned());
        let checksum = match file.checksum {
            Some(checksum) if algorithm.eq_ignore_ascii_case("CRC32C") => checksum,
            _ => return Err(ManifestError::UnsupportedChecksum { path, algorithm }),
        };
        let crc32c = match unhex(&checksum).as_deref() {
            Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
            _ => {
                return Err(ManifestError::BadChecksum {
                    path,
                    value: checksum,
                })
            }
        };
        let Some(mtime) = parse_gmt(&file.last_modified) else {
            return Err(ManifestError::BadTimestamp {
                path,
                value: file.last_modified,
            });
        };
        files.push(ManifestFile {
            path,
            size: file.size,
            mtime,
            crc32c,
        });
    }
    let wal_ranges = raw
        .wal_ranges
        .into_iter()
        .map(|range| {
            Ok(WalRange {
                timeline: range.timeline,
                start_lsn: range.start_lsn.parse()?,
                end_lsn: range.end_lsn.parse()?,
            })
        })
        .collect::<Result<_, ManifestError>>()?;
    Ok((files, wal_ranges))
}

/// Checks the checksum as `pg_verifybackup` does: the file ends with a
/// newline, the last line holds the checksum, and the SHA-256 covers
/// everything up to and including the newline before that line.
fn verify_checksum(bytes: &[u8], recorded: String) -> Result<(), ManifestError> {
    if bytes.last() != Some(&b'\n') {
        return Err(ManifestError::Lines);
    }
    let body_end = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .ok_or(ManifestError::Lines)?
        + 1;
    let computed = hex(&Sha256::digest(&bytes[..body_end]));
    if !recorded.eq_ignore_ascii_case(&computed) {
        return Err(ManifestError::ChecksumMismatch { recorded, computed });
    }
    Ok(())
}

/// PostgreSQL's `escape_json`.
fn escape_json(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            let pair = text.get(i..i + 2)?;
            if pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                u8::from_str_radix(pair, 16).ok()
            } else {
                None
            }
        })
        .collect()
}

/// `pg_strftime("%Y-%m-%d %H:%M:%S %Z", pg_gmtime(t))`.
fn format_gmt(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn parse_gmt(text: &str) -> Option<i64> {
    let rest = text.strip_suffix(" GMT")?;
    let (date, time) = rest.split_once(' ')?;
    let number = |s: &str| -> Option<i64> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    let mut date_parts = date.splitn(3, '-');
    let year = number(date_parts.next()?)?;
    let month = number(date_parts.next()?)?;
    let day = number(date_parts.next()?)?;
    let mut time_parts = time.splitn(3, ':');
    let hour = number(time_parts.next()?)?;
    let minute = number(time_parts.next()?)?;
    let second = number(time_parts.next()?)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let (month, day) = (month as u32, day as u32);
    let days = days_from_civil(year, month, day);
    // Rejects days past the end of their month (2021-02-30).
    if civil_from_days(days) != (year, month, day) {
        return None;
    }
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_postgresql() {
        assert_eq!(format_gmt(0), "1970-01-01 00:00:00 GMT");
        assert_eq!(format_gmt(1_585_074_146), "2020-03-24 18:22:26 GMT");
        assert_eq!(format_gmt(951_782_400), "2000-02-29 00:00:00 GMT");
        assert_eq!(format_gmt(-1), "1969-12-31 23:59:59 GMT");
        for t in [
            0,
            1,
            -1,
            951_782_400,
            1_585_074_146,
            4_102_444_800,
            -86_400 * 365 * 300,
        ] {
            assert_eq!(parse_gmt(&format_gmt(t)), Some(t), "{t}");
        }
        assert_eq!(parse_gmt("2021-02-29 00:00:00 GMT"), None);
        assert_eq!(parse_gmt("2021-02-28 24:00:00 GMT"), None);
        assert_eq!(parse_gmt("2021-02-28 00:00:00 UTC"), None);
        assert_eq!(parse_gmt("2021-02-28 +0:00:00 GMT"), None);
    }

    #[test]
    fn escapes_like_escape_json() {
        let mut out = String::new();
        escape_json(&mut out, "a\"b\\c/\n\t\u{1}é");
        assert_eq!(out, "\"a\\\"b\\\\c/\\n\\t\\u0001é\"");
    }

    #[test]
    fn checksum_bytes_are_little_endian() {
        assert_eq!(hex(&0x1234_5678u32.to_le_bytes()), "78563412");
    }
}
