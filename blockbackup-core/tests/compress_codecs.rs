//! The codecs: encode then decode is the identity for every codec and
//! level, on empty, tiny, random and 1 GB streamed inputs; every flipped
//! byte and every truncation of a stored file of every codec is found by
//! validation and by a restore; a repository written before the codecs
//! were added validates and restores, and a chain mixing codecs restores.

mod restore_support;

use std::fs;
use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use std::path::Path;

use blockbackup_core::compress::Compression;
use blockbackup_core::repository::Repository;
use blockbackup_core::restore::{chain_members, restore, RestoreError, RestoreOptions};
use proptest::prelude::*;
use restore_support::*;

fn round_trip(codec: Compression, level: i32, data: &[u8]) -> Vec<u8> {
    let mut encoder = codec.encoder(Vec::new(), level).unwrap();
    encoder.write_all(data).unwrap();
    let stored = encoder.finish().unwrap();
    let mut decoded = Vec::new();
    codec
        .decoder(stored.as_slice())
        .unwrap()
        .read_to_end(&mut decoded)
        .unwrap();
    decoded
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_codec_and_level_round_trips(data in prop::collection::vec(any::<u8>(), 0..20_000),
                                         repeat in 1usize..4) {
        // Random bytes, and the same repeated (so that there is something
        // to compress).
        let data: Vec<u8> = data.iter().copied().cycle().take(data.len() * repeat).collect();
        for codec in Compression::ALL {
            for level in codec.levels() {
                prop_assert_eq!(round_trip(codec, level, &data), data.clone(), "{:?} {}", codec, level);
            }
        }
    }
}

#[test]
fn empty_and_tiny_inputs_round_trip() {
    for codec in Compression::ALL {
        for level in codec.levels() {
            for data in [&b""[..], b"x", b"\0\0\0\0"] {
                assert_eq!(round_trip(codec, level, data), data, "{codec:?} {level}");
            }
        }
    }
}

/// Pseudo-random, half compressible: what data files look like.
struct Synthetic {
    left: u64,
    state: u64,
}

impl Read for Synthetic {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.left as usize);
        for chunk in buf[..n].chunks_mut(8) {
            self.state = self
                .state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let word = if self.state >> 63 == 0 { self.state } else { 0 };
            chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Streams `size` bytes through the encoder into the decoder (through a
/// pipe, never held whole) and compares lengths and CRC-32C.
fn stream_through(codec: Compression, level: i32, size: u64) {
    let (reader, writer) = os_pipe();
    let encode = std::thread::spawn(move || {
        let mut source = Synthetic {
            left: size,
            state: 1,
        };
        let mut encoder = codec.encoder(io::BufWriter::new(writer), level).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let (mut len, mut crc) = (0u64, 0u32);
        loop {
            let n = source.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            len += n as u64;
            encoder.write_all(&buf[..n]).unwrap();
        }
        encoder.finish().unwrap().flush().unwrap();
        (len, crc)
    });
    let decoded = blockbackup_core::content_checksum::crc32c_of(
        codec.decoder(io::BufReader::new(reader)).unwrap(),
    )
    .unwrap();
    assert_eq!(encode.join().unwrap(), decoded, "{codec:?}");
    assert_eq!(decoded.0, size);
}

fn os_pipe() -> (fs::File, fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    use std::os::fd::FromRawFd;
    // SAFETY: fresh descriptors, owned here.
    unsafe { (fs::File::from_raw_fd(fds[0]), fs::File::from_raw_fd(fds[1])) }
}

#[test]
fn a_gigabyte_streams_through_every_codec() {
    // gzip at its fastest level: at 6 a gigabyte takes most of a minute on
    // one core, and the stream logic is the same at every level.
    for (codec, level) in [
        (Compression::None, 0),
        (Compression::Gzip, 1),
        (Compression::Zstd, 3),
        (Compression::Lz4, 1),
    ] {
        stream_through(codec, level, 1 << 30);
    }
}

fn options(target: &Path) -> RestoreOptions {
    RestoreOptions {
        target: target.to_owned(),
        tablespace_mapping: vec![],
        recovery_target_lsn: None,
        recovery_target_name: None,
        recovery: Default::default(),
        archive_commands: None,
        threads: 1,
        rules: Default::default(),
    }
}

/// A one-file backup stored with `codec` by the copy pipeline itself.
fn backup_with(dir: &Path, codec: Compression) -> Vec<Backup> {
    let content: Vec<u8> = (0..6000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
    vec![write_backup(
        dir,
        record("F", None, codec, 0x100_0000),
        vec![
            whole("PG_VERSION", b"15\n".to_vec()),
            whole("base/5/16384", content),
        ],
    )]
}

#[test]
fn every_flipped_byte_and_truncation_of_every_codec_is_found() {
    for codec in Compression::ALL {
        let dir = tempfile::tempdir().unwrap();
        let backups = backup_with(dir.path(), codec);
        let stored = disk_path(&backups[0], "base/5/16384");
        let original = fs::read(&stored).unwrap();
        let damaged = |bytes: &[u8]| {
            fs::write(&stored, bytes).unwrap();
            let target = dir.path().join("restored");
            let result = restore(&chain(&backups), &options(&target), &mut |_| {
                ControlFlow::Continue(())
            });
            let _ = fs::remove_dir_all(&target);
            result
        };
        // Every byte of a compressed file (headers, trailers, checksums
        // included); of an uncompressed one, which only its CRC guards,
        // every 61st.
        let step = if codec == Compression::None { 61 } else { 1 };
        for offset in (0..original.len()).step_by(step) {
            let mut bytes = original.clone();
            bytes[offset] ^= 0x40;
            let result = damaged(&bytes);
            assert!(
                matches!(
                    result,
                    Err(RestoreError::ChecksumMismatch { .. }
                        | RestoreError::StoredMismatch { .. }
                        | RestoreError::Decompress { .. })
                ),
                "{codec:?}: flipped byte {offset} of {} not found: {result:?}",
                original.len()
            );
        }
        for cut in [0, 1, original.len() / 2, original.len() - 1] {
            assert!(
                damaged(&original[..cut]).is_err(),
                "{codec:?}: truncation at {cut}"
            );
        }
        fs::write(&stored, &original).unwrap();
        assert!(
            damaged(&original).is_ok(),
            "{codec:?}: the intact backup does not restore"
        );
    }
}

#[test]
fn validation_finds_every_flipped_byte_of_every_codec() {
    use blockbackup_core::repository::catalog::{BackupMode, BackupRecord, BackupStatus};
    for codec in Compression::ALL {
        let scratch = tempfile::tempdir().unwrap();
        let repo = Repository::open_or_create(&scratch.path().join("repo"), 1).unwrap();
        let mut record = BackupRecord::begin(
            BackupMode::Full,
            fixtures_cluster(),
            blockbackup_core::Lsn(0x1000),
            1,
        );
        record.backup_id = "F".into();
        record.status = BackupStatus::Done;
        record.compression = codec;
        repo.write_record(&record).unwrap();
        let written = write_backup(
            &scratch.path().join("repo"),
            record.clone(),
            vec![whole(
                "base/5/16384",
                (0..3000u32).flat_map(|i| i.to_le_bytes()).collect(),
            )],
        );
        let stored = disk_path(&written, "base/5/16384");
        let original = fs::read(&stored).unwrap();
        assert!(repo
            .validate_backup_files(&record, &written.contents)
            .errors
            .is_empty());
        for offset in 0..original.len() {
            let mut bytes = original.clone();
            bytes[offset] ^= 0x01;
            fs::write(&stored, &bytes).unwrap();
            let report = repo.validate_backup_files(&record, &written.contents);
            assert!(
                !report.errors.is_empty(),
                "{codec:?}: byte {offset} not found"
            );
        }
        fs::write(&stored, &original[..original.len() - 1]).unwrap();
        assert!(!repo
            .validate_backup_files(&record, &written.contents)
            .errors
            .is_empty());
    }
}

fn fixtures_cluster() -> blockbackup_core::repository::catalog::ClusterFacts {
    blockbackup_core::repository::catalog::ClusterFacts {
        timeline: 1,
        block_size: BLOCK as u32,
        segment_blocks: 131_072,
        wal_segment_size: 16 << 20,
        system_identifier: 1,
        server_version: 150_020,
    }
}

/// A copy of the fixture repository, written by the code before the
/// codecs (a gzip full backup and an uncompressed incremental on it).
fn old_repository() -> (tempfile::TempDir, Repository) {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("repo");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repository_before_codecs");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&fixture)
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success());
    let repository = Repository::open(&root).unwrap();
    (scratch, repository)
}

const OLD_INCREMENTAL: &str = "20251124-160140I";

#[test]
fn a_repository_written_before_the_codecs_validates_and_restores() {
    let (scratch, repository) = old_repository();
    let catalog = repository.list().unwrap();
    assert_eq!(catalog.records.len(), 2);
    assert!(catalog.damaged.is_empty());
    for record in &catalog.records {
        let contents = repository.read_contents(&record.backup_id).unwrap();
        let report = repository.validate_backup_files(record, &contents);
        assert!(
            report.errors.is_empty(),
            "{}: {:?}",
            record.backup_id,
            report.errors
        );
        assert_eq!(report.files_checked, 5);
    }
    let (records, contents, _locks) = repository.load_chain_for_restore(OLD_INCREMENTAL).unwrap();
    assert_eq!(records[0].backup_id, "20251124-160000F");
    assert_eq!(records[0].compression, Compression::Gzip);
    assert_eq!(records[1].compression, Compression::None);
    let chain = chain_members(&repository, &records, &contents);
    let target = scratch.path().join("restored");
    restore(
        &chain,
        &options(&target),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    let relation = fs::read(target.join("base/5/16384")).unwrap();
    assert_eq!(
        relation,
        [vec![1u8; 8192], vec![9u8; 8192], vec![3u8; 8192]].concat()
    );
    assert_eq!(
        fs::read(target.join("global/pg_control")).unwrap(),
        vec![8u8; 8192]
    );
    assert_eq!(fs::read(target.join("PG_VERSION")).unwrap(), b"15\n");
}

#[test]
fn a_chain_mixing_codecs_restores() {
    let dir = tempfile::tempdir().unwrap();
    let block = |tag: u8| vec![tag; BLOCK];
    let rel = "base/5/16384";
    let mut backups = vec![write_backup(
        dir.path(),
        record("F", None, Compression::Gzip, 0x100_0000),
        vec![
            whole("PG_VERSION", b"15\n".to_vec()),
            whole(rel, [block(1), block(2), block(3)].concat()),
        ],
    )];
    let mut parent = "F".to_owned();
    for (i, codec) in [Compression::Zstd, Compression::None, Compression::Lz4]
        .into_iter()
        .enumerate()
    {
        let id = format!("I{i}");
        let tag = 10 + i as u8;
        backups.push(write_backup(
            dir.path(),
            record(
                &id,
                Some(&parent),
                codec,
                0x200_0000 + i as u64 * 0x100_0000,
            ),
            vec![
                whole("PG_VERSION", b"15\n".to_vec()),
                incremental(rel, 3, &[(i as u32, block(tag))]),
            ],
        ));
        parent = id;
    }
    let target = dir.path().join("restored");
    restore(&chain(&backups), &options(&target), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(
        fs::read(target.join(rel)).unwrap(),
        [block(10), block(11), block(12)].concat()
    );
}

/// `data` encoded by `codec`, written in 1000-byte pieces (so that lz4
/// cuts it into several blocks).
fn encoded(codec: Compression, data: &[u8]) -> Vec<u8> {
    let mut encoder = codec.encoder(Vec::new(), codec.default_level()).unwrap();
    for piece in data.chunks(1000) {
        encoder.write_all(piece).unwrap();
    }
    encoder.finish().unwrap()
}

fn decode(codec: Compression, stored: &[u8]) -> io::Result<Vec<u8>> {
    let mut decoded = Vec::new();
    codec.decoder(stored)?.read_to_end(&mut decoded)?;
    Ok(decoded)
}

/// Where to cut a stored stream: every byte of its first and last 64 (the
/// header, the end mark, the trailer), every 101st between, and for lz4
/// every block boundary and the 4 bytes of the block size after it.
fn cuts(codec: Compression, stored: &[u8]) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..stored.len())
        .filter(|&at| at < 64 || at + 64 >= stored.len() || at % 101 == 0)
        .collect();
    if codec == Compression::Lz4 {
        // Magic, FLG, BD, header checksum: lz4_flex writes no content size.
        assert_eq!(stored[4] & 0x08, 0, "an lz4 header with a content size");
        let mut at = 7;
        while at + 4 <= stored.len() {
            cuts.extend(at..at + 4);
            let size = u32::from_le_bytes(stored[at..at + 4].try_into().unwrap()) & 0x7FFF_FFFF;
            if size == 0 {
                break;
            }
            at += 4 + size as usize;
        }
        assert!(
            stored.len() < 1000 || at > 7 + 4 + 65_536,
            "lz4 wrote a single block"
        );
    }
    cuts
}

#[test]
fn every_cut_of_an_encoded_stream_is_an_error() {
    // Half of it random, so that lz4 and gzip write more than one block.
    let mut state = 7u64;
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            if i % 2 == 0 {
                (state >> 56) as u8
            } else {
                0
            }
        })
        .collect();
    for codec in Compression::ALL {
        if codec == Compression::None {
            // Only the CRC in the manifest or the archive's name guards it.
            continue;
        }
        for content in [&data[..], b""] {
            let stored = encoded(codec, content);
            assert_eq!(decode(codec, &stored).unwrap(), content, "{codec:?}");
            for cut in cuts(codec, &stored) {
                let result = decode(codec, &stored[..cut]);
                assert!(
                    result.is_err(),
                    "{codec:?}: the cut at {cut} of {} decoded to {} bytes",
                    stored.len(),
                    result.map_or(0, |d| d.len())
                );
            }
        }
    }
}

#[test]
fn a_stream_of_several_frames_reads_whole_and_garbage_after_it_is_an_error() {
    for codec in [Compression::Gzip, Compression::Zstd, Compression::Lz4] {
        let stored = [
            encoded(codec, b"first"),
            encoded(codec, b""),
            encoded(codec, b"second"),
        ]
        .concat();
        assert_eq!(decode(codec, &stored).unwrap(), b"firstsecond", "{codec:?}");
        let with_garbage = [stored.as_slice(), b"garbage"].concat();
        let error = decode(codec, &with_garbage).unwrap_err();
        assert!(
            matches!(
                error.kind(),
                io::ErrorKind::InvalidData
                    | io::ErrorKind::InvalidInput
                    | io::ErrorKind::UnexpectedEof
            ),
            "{codec:?}: {error}"
        );
    }
}
