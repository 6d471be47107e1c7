//! The manifest writer and reader agree on any content, and the reader
//! notices tampering and refuses what it cannot represent.

use blockbackup_core::backup::manifest::{
    parse_manifest, render_manifest, ManifestError, ManifestFile, WalRange,
};
use blockbackup_core::Lsn;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn file() -> impl Strategy<Value = ManifestFile> {
    (
        "[^\u{0}]{1,40}",
        any::<u64>(),
        -5_000_000_000i64..100_000_000_000,
        any::<u32>(),
    )
        .prop_map(|(path, size, mtime, crc32c)| ManifestFile {
            path,
            size,
            mtime,
            crc32c,
        })
}

fn wal_range() -> impl Strategy<Value = WalRange> {
    (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(timeline, a, b)| WalRange {
        timeline,
        start_lsn: Lsn(a.min(b)),
        end_lsn: Lsn(a.max(b)),
    })
}

/// Replaces the manifest checksum with the right one for `body`.
fn seal(body: &str) -> Vec<u8> {
    let digest = Sha256::digest(body.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{body}\"Manifest-Checksum\": \"{hex}\"}}\n").into_bytes()
}

proptest! {
    #[test]
    fn round_trips(files in prop::collection::vec(file(), 0..20), ranges in prop::collection::vec(wal_range(), 0..3)) {
        let bytes = render_manifest(&files, &ranges);
        let (parsed_files, parsed_ranges) = parse_manifest(&bytes).unwrap();
        prop_assert_eq!(parsed_files, files);
        prop_assert_eq!(parsed_ranges, ranges);
    }

    #[test]
    fn tampering_is_noticed(files in prop::collection::vec(file(), 1..5), at in any::<prop::sample::Index>()) {
        let mut bytes = render_manifest(&files, &[]);
        // Anywhere in the checksummed part, any change is caught.
        let body_end = bytes[..bytes.len() - 1].iter().rposition(|&b| b == b'\n').unwrap();
        let at = at.index(body_end);
        bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
        prop_assert!(parse_manifest(&bytes).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_manifest(&bytes);
    }
}

#[test]
fn layout_matches_postgresql() {
    let files = [
        ManifestFile {
            path: "backup_label".into(),
            size: 225,
            mtime: 1_585_074_146,
            crc32c: 0xeeb9_d08b,
        },
        ManifestFile {
            path: "base/1/1255".into(),
            size: 0,
            mtime: 0,
            crc32c: 0,
        },
    ];
    let ranges = [WalRange {
        timeline: 1,
        start_lsn: Lsn(0x200_0028),
        end_lsn: Lsn(0x200_0100),
    }];
    let text = String::from_utf8(render_manifest(&files, &ranges)).unwrap();
    let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n\
        { \"Path\": \"backup_label\", \"Size\": 225, \"Last-Modified\": \"2020-03-24 18:22:26 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"8bd0b9ee\" },\n\
        { \"Path\": \"base/1/1255\", \"Size\": 0, \"Last-Modified\": \"1970-01-01 00:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"00000000\" }\n\
        ],\n\"WAL-Ranges\": [\n\
        { \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n\
        ],\n";
    assert_eq!(text.into_bytes(), seal(body));

    let empty = String::from_utf8(render_manifest(&[], &[])).unwrap();
    assert!(empty.starts_with("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n],\n\"WAL-Ranges\": [\n\n],\n\"Manifest-Checksum\": \""));
}

#[test]
fn reads_encoded_paths_and_rejects_what_it_cannot_hold() {
    let entry = |path_field: &str, algorithm: &str, checksum: &str| {
        seal(&format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n\
             {{ {path_field}, \"Size\": 3, \"Last-Modified\": \"2020-03-24 18:22:26 GMT\", \"Checksum-Algorithm\": \"{algorithm}\", \"Checksum\": \"{checksum}\" }}\n\
             ],\n\"WAL-Ranges\": [\n\n],\n"
        ))
    };
    let (files, _) = parse_manifest(&entry(
        "\"Encoded-Path\": \"626173652f31\"",
        "CRC32C",
        "78563412",
    ))
    .unwrap();
    assert_eq!(files[0].path, "base/1");
    assert_eq!(files[0].crc32c, 0x1234_5678);

    let error =
        parse_manifest(&entry("\"Encoded-Path\": \"ff\"", "CRC32C", "78563412")).unwrap_err();
    assert!(
        matches!(error, ManifestError::BadEncodedPath { .. }),
        "{error}"
    );
    let error = parse_manifest(&entry("\"Path\": \"a\"", "SHA256", "00")).unwrap_err();
    assert!(
        matches!(error, ManifestError::UnsupportedChecksum { .. }),
        "{error}"
    );
    let error = parse_manifest(&entry("\"Path\": \"a\"", "CRC32C", "123")).unwrap_err();
    assert!(
        matches!(error, ManifestError::BadChecksum { .. }),
        "{error}"
    );

    let mut bytes = entry("\"Path\": \"a\"", "CRC32C", "78563412");
    bytes.pop();
    assert!(matches!(
        parse_manifest(&bytes).unwrap_err(),
        ManifestError::Lines
    ));
    let good = entry("\"Path\": \"a\"", "CRC32C", "78563412");
    let tampered = String::from_utf8(good)
        .unwrap()
        .replace("\"Size\": 3", "\"Size\": 4");
    assert!(matches!(
        parse_manifest(tampered.as_bytes()).unwrap_err(),
        ManifestError::ChecksumMismatch { .. }
    ));
}
