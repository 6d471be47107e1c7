//! Reconstructing single files from synthetic chains, compared with the
//! byte images they must produce.

mod restore_support;

use std::fs;

use blockbackup_core::repository::catalog::Compression;
use blockbackup_core::restore::{reconstruct_file, RestoreError};
use restore_support::*;

const REL: &str = "base/5/16384";

fn reconstruct(backups: &[Backup], path: &str) -> Result<Vec<u8>, RestoreError> {
    let mut out = Vec::new();
    let result = reconstruct_file(&chain(backups), path, &mut out)?;
    assert_eq!(result.size, out.len() as u64);
    assert_eq!(result.crc32c, crc32c::crc32c(&out));
    Ok(out)
}

/// full: 4 blocks; inc1: blocks 1 and 3 changed, grown to 7 with block 6
/// written (4 and 5 were never written: zeros); inc2: block 0 changed and
/// truncated to 6 blocks.
fn growing_chain(root: &std::path::Path, compression: Compression) -> Vec<Backup> {
    vec![
        write_backup(
            root,
            record("F", None, compression, 0x1000),
            vec![
                whole(REL, blocks(&[1, 1, 1, 1])),
                whole("PG_VERSION", b"15\n".to_vec()),
            ],
        ),
        write_backup(
            root,
            record("I1", Some("F"), compression, 0x2000),
            vec![
                incremental(
                    REL,
                    7,
                    &[(1, block(2, 1)), (3, block(2, 3)), (6, block(2, 6))],
                ),
                whole("PG_VERSION", b"15\n".to_vec()),
            ],
        ),
        write_backup(
            root,
            record("I2", Some("I1"), compression, 0x3000),
            vec![
                incremental(REL, 6, &[(0, block(3, 0))]),
                whole("PG_VERSION", b"15\n".to_vec()),
            ],
        ),
    ]
}

#[test]
fn full_only() {
    let dir = tempfile::tempdir().unwrap();
    let backups = vec![write_backup(
        dir.path(),
        record("F", None, Compression::None, 0x1000),
        vec![whole(REL, blocks(&[1, 2, 3]))],
    )];
    assert_eq!(reconstruct(&backups, REL).unwrap(), blocks(&[1, 2, 3]));
}

#[test]
fn changed_blocks_growth_and_truncation() {
    for compression in [Compression::None, Compression::Gzip] {
        let dir = tempfile::tempdir().unwrap();
        let backups = growing_chain(dir.path(), compression);
        assert_eq!(
            reconstruct(&backups[..1], REL).unwrap(),
            blocks(&[1, 1, 1, 1])
        );
        assert_eq!(
            reconstruct(&backups[..2], REL).unwrap(),
            blocks(&[1, 2, 1, 2, 0, 0, 2])
        );
        assert_eq!(
            reconstruct(&backups, REL).unwrap(),
            blocks(&[3, 2, 1, 2, 0, 0])
        );
        assert_eq!(reconstruct(&backups, "PG_VERSION").unwrap(), b"15\n");
    }
}

#[test]
fn a_newer_whole_file_decides_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut backups = growing_chain(dir.path(), Compression::None);
    backups.push(write_backup(
        dir.path(),
        record("I3", Some("I2"), Compression::None, 0x4000),
        vec![whole(REL, blocks(&[4]))],
    ));
    // Older sources are not even opened.
    fs::remove_file(disk_path(&backups[0], REL)).unwrap();
    assert_eq!(reconstruct(&backups, REL).unwrap(), blocks(&[4]));
}

#[test]
fn blocks_beyond_every_older_file_are_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let backups = vec![
        write_backup(
            dir.path(),
            record("F", None, Compression::None, 0x1000),
            vec![whole(REL, blocks(&[1, 1]))],
        ),
        write_backup(
            dir.path(),
            record("I1", Some("F"), Compression::None, 0x2000),
            vec![incremental(REL, 5, &[(4, block(2, 4))])],
        ),
    ];
    assert_eq!(
        reconstruct(&backups, REL).unwrap(),
        blocks(&[1, 1, 0, 0, 2])
    );
}

#[test]
fn a_truncation_in_between_hides_older_blocks() {
    // Truncated to 1 block in I1, regrown to 4 in I2 with only block 3
    // written: blocks 1 and 2 did not exist at I1, so they are zeros, not
    // the full backup's data from before the truncation.
    let dir = tempfile::tempdir().unwrap();
    let backups = vec![
        write_backup(
            dir.path(),
            record("F", None, Compression::None, 0x1000),
            vec![whole(REL, blocks(&[1, 1, 1, 1]))],
        ),
        write_backup(
            dir.path(),
            record("I1", Some("F"), Compression::None, 0x2000),
            vec![incremental(REL, 1, &[])],
        ),
        write_backup(
            dir.path(),
            record("I2", Some("I1"), Compression::None, 0x3000),
            vec![incremental(REL, 4, &[(3, block(3, 3))])],
        ),
    ];
    assert_eq!(reconstruct(&backups, REL).unwrap(), blocks(&[1, 0, 0, 3]));
}

#[test]
fn a_partial_last_block_is_padded_with_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let mut short = blocks(&[1, 1]);
    short.truncate(BLOCK + 100);
    let backups = vec![
        write_backup(
            dir.path(),
            record("F", None, Compression::None, 0x1000),
            vec![whole(REL, short.clone())],
        ),
        write_backup(
            dir.path(),
            record("I1", Some("F"), Compression::None, 0x2000),
            vec![incremental(REL, 3, &[])],
        ),
    ];
    let mut expected = short;
    expected.resize(3 * BLOCK, 0);
    assert_eq!(reconstruct(&backups, REL).unwrap(), expected);
}

#[test]
fn a_flipped_byte_in_any_source_is_a_checksum_mismatch() {
    for compression in [Compression::None, Compression::Gzip] {
        for (victim, stored, at) in [
            (0, REL.to_owned(), 3000),
            (1, "base/5/INCREMENTAL.16384".to_owned(), 10),
            (1, "base/5/INCREMENTAL.16384".to_owned(), 2000),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let backups = growing_chain(dir.path(), compression);
            let path = disk_path(&backups[victim], &stored);
            if compression == Compression::Gzip {
                // Re-compress damaged content, so that gzip's own check
                // passes and ours must notice.
                let mut content = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(fs::File::open(&path).unwrap()),
                    &mut content,
                )
                .unwrap();
                content[at] ^= 1;
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut encoder, &content).unwrap();
                fs::write(&path, encoder.finish().unwrap()).unwrap();
            } else {
                let mut content = fs::read(&path).unwrap();
                content[at] ^= 1;
                fs::write(&path, content).unwrap();
            }
            let error = reconstruct(&backups, REL).unwrap_err();
            match &error {
                RestoreError::ChecksumMismatch {
                    backup_id, path, ..
                } => {
                    assert_eq!(backup_id, &backups[victim].record.backup_id);
                    assert_eq!(path, &stored);
                }
                other => panic!("{stored} byte {at}: {other}"),
            }
            let message = error.to_string();
            assert!(
                message.contains(&stored) && message.contains(&backups[victim].record.backup_id),
                "{message}"
            );
        }
    }
}

#[test]
fn damaged_gzip_is_a_decompression_error() {
    let dir = tempfile::tempdir().unwrap();
    let backups = growing_chain(dir.path(), Compression::Gzip);
    let path = disk_path(&backups[0], REL);
    let mut content = fs::read(&path).unwrap();
    let middle = content.len() / 2;
    content.truncate(middle);
    fs::write(&path, content).unwrap();
    let error = reconstruct(&backups, REL).unwrap_err();
    assert!(
        matches!(error, RestoreError::Decompress { ref backup_id, .. } if backup_id == "F"),
        "{error}"
    );
}

#[test]
fn a_missing_source_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let backups = growing_chain(dir.path(), Compression::None);
    fs::remove_file(disk_path(&backups[1], "base/5/INCREMENTAL.16384")).unwrap();
    let error = reconstruct(&backups, REL).unwrap_err();
    match &error {
        RestoreError::MissingFile {
            backup_id, path, ..
        } => {
            assert_eq!(backup_id, "I1");
            assert_eq!(path, "base/5/INCREMENTAL.16384");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn an_incremental_without_an_older_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let backups = vec![
        write_backup(
            dir.path(),
            record("F", None, Compression::None, 0x1000),
            vec![whole("PG_VERSION", b"15\n".to_vec())],
        ),
        write_backup(
            dir.path(),
            record("I1", Some("F"), Compression::None, 0x2000),
            vec![incremental(REL, 2, &[(1, block(2, 1))])],
        ),
    ];
    let error = reconstruct(&backups, REL).unwrap_err();
    assert!(matches!(error, RestoreError::BadChain { .. }), "{error}");
    // It is fine when the incremental holds every block.
    let backups = vec![
        write_backup(
            dir.path(),
            record("G", None, Compression::None, 0x1000),
            vec![whole("PG_VERSION", b"15\n".to_vec())],
        ),
        write_backup(
            dir.path(),
            record("J1", Some("G"), Compression::None, 0x2000),
            vec![incremental(REL, 1, &[(0, block(2, 0))])],
        ),
    ];
    assert_eq!(reconstruct(&backups, REL).unwrap(), blocks(&[2]));
    assert!(matches!(
        reconstruct(&backups, "base/5/1").unwrap_err(),
        RestoreError::NotInChain { .. }
    ));
}

#[test]
fn incremental_files_with_wrong_lengths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut short = incremental(REL, 3, &[(0, block(2, 0)), (2, block(2, 2))]);
    short.content.truncate(short.content.len() - 10);
    let mut long = incremental(REL, 3, &[(1, block(2, 1))]);
    long.content.extend_from_slice(b"junk");
    for (name, bad) in [("short", short), ("long", long)] {
        let backups = vec![
            write_backup(
                dir.path(),
                record(&format!("F{name}"), None, Compression::None, 0x1000),
                vec![whole(REL, blocks(&[1, 1, 1]))],
            ),
            write_backup(
                dir.path(),
                record(
                    &format!("I{name}"),
                    Some(&format!("F{name}")),
                    Compression::None,
                    0x2000,
                ),
                vec![bad],
            ),
        ];
        let error = reconstruct(&backups, REL).unwrap_err();
        assert!(
            matches!(error, RestoreError::BadIncremental { .. }),
            "{name}: {error}"
        );
    }
}
