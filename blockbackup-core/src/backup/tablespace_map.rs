//! `tablespace_map`, as `pg_backup_stop` writes it and recovery reads it:
//! one `<oid> <location>` line per tablespace, with a newline, carriage
//! return or backslash in the location escaped by a backslash. A backup
//! reads it to record its tablespaces; a restore that maps tablespaces
//! elsewhere writes one naming the new locations.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::repository::catalog::TablespaceEntry;

/// The entries of a `tablespace_map`; lines that are not `<oid> <location>`
/// are skipped.
pub fn parse(map: &str) -> Vec<TablespaceEntry> {
    let mut entries = Vec::new();
    let mut line = String::new();
    let mut chars = map.chars();
    let mut finish = |line: &mut String| {
        if let Some((oid, location)) = line.split_once(' ') {
            if let Ok(oid) = oid.parse() {
                entries.push(TablespaceEntry {
                    oid,
                    location: location.to_owned(),
                });
            }
        }
        line.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => line.push(chars.next().unwrap_or('\\')),
            '\n' => finish(&mut line),
            c => line.push(c),
        }
    }
    finish(&mut line);
    entries
}

/// A `tablespace_map` naming `location` for each tablespace `oid`.
pub fn render(entries: &[(u32, &Path)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (oid, location) in entries {
        out.extend_from_slice(format!("{oid} ").as_bytes());
        for &byte in location.as_os_str().as_bytes() {
            if matches!(byte, b'\n' | b'\r' | b'\\') {
                out.push(b'\\');
            }
            out.push(byte);
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_with_every_escaped_character_round_trip() {
        let locations = [
            "/srv/ts1",
            "/srv/with space",
            "/srv/back\\slash",
            "/srv/new\nline",
            "/srv/cr\r",
        ];
        let entries: Vec<(u32, &Path)> = locations
            .iter()
            .enumerate()
            .map(|(i, l)| (16400 + i as u32, Path::new(*l)))
            .collect();
        let text = String::from_utf8(render(&entries)).unwrap();
        let parsed = parse(&text);
        assert_eq!(parsed.len(), locations.len());
        for (entry, location) in parsed.iter().zip(locations) {
            assert_eq!(entry.location, location);
        }
        assert_eq!(
            parse("16400 /a\n16401 /b"),
            vec![
                TablespaceEntry {
                    oid: 16400,
                    location: "/a".into()
                },
                TablespaceEntry {
                    oid: 16401,
                    location: "/b".into()
                },
            ]
        );
        assert!(parse("garbage\n").is_empty());
    }
}
