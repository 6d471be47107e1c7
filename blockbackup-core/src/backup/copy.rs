//! The parallel copy of a backup's files into the repository.
//!
//! The caller is a PostgreSQL backend, and only its own thread may call
//! back into PostgreSQL (to check for cancellation, to publish progress,
//! to log). So the work is split:
//!
//! * worker threads (`std::thread::scope`, so they cannot outlive the
//!   call) only read, checksum, compress and write files. They take tasks
//!   from a shared list, largest first, so that one huge relation does not
//!   start last and leave the other threads idle at the end;
//! * the calling thread waits on a channel with a short timeout and runs
//!   `poll` at least every 100 ms with the current progress. When `poll`
//!   answers `Break`, a shared flag tells the workers to stop at their next
//!   chunk, and the call returns [`CopyError::Cancelled`].
//!
//! Each file is streamed in bounded chunks, its CRC-32C computed over the
//! content (the uncompressed bytes, which is what restore checks after
//! decompressing) and over the bytes stored, compressed with the backup's
//! codec and written through the storage seam. When every file is
//! written, every file is synced, then their names, in parallel too, so
//! that the files and their names survive a crash (as PostgreSQL syncs a
//! data directory: a thousand small files synced one by one as they are
//! written would cost a disk round trip each). With `replace`, each file
//! instead replaces the one stored under its name at once when written.
//!
//! Files change while they are copied, and that is fine: WAL replay from
//! the backup's start repairs any torn or stale block. So a file that
//! vanished before it was opened is skipped (like `pg_basebackup`), a whole
//! file is copied up to the length it had when opened, or less if it
//! shrank, and a block an incremental file needs that lies past the end of
//! the file (the relation was truncated meanwhile) is stored as zeros.
//!
//! With `page_checks` set (the cluster has data checksums), every page of
//! a relation file that is read is checked as it passes
//! ([`crate::backup::page_checksum`]); a page that fails twice is reported with its
//! file and block, and copied as it is: the backup holds what the disk
//! held, and the report says what was wrong with it.
//!
//! Any real error (disk full, permission denied) stops the copy; the file
//! being written is removed, and the error names it. The caller marks the
//! backup ERROR anyway, so finished files are left for its removal.

use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::backup::incremental_file::{incremental_path, IncrementalHeader};
use crate::backup::page_checksum::{check_page, relation_segment, PageCheck, PageChecksumFailure};
use crate::backup::plan::FileMethod;
use crate::compress::Encoder;
use crate::content_checksum::{Tallied, Tally};
use crate::lsn::Lsn;
use crate::repository::catalog::{Compression, StoredFile, StoredKind};
use crate::safe_path::safe_relative_path;
use crate::storage::{join, Storage, StoredWriter};

/// Bytes read or written at a time; also how often a worker looks at the
/// stop flag.
const CHUNK_BYTES: usize = 1024 * 1024;
/// `poll` runs at least this often (plus the time one call of it takes).
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One file to copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyTask {
    /// Where to read it.
    pub source: PathBuf,
    /// Its path relative to the data directory, as restored, with '/'.
    pub path: String,
    pub method: FileMethod,
    pub kind: StoredKind,
    /// Modification time of the source, seconds since the Unix epoch.
    pub mtime: i64,
}

#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Where the files go: the store, and the prefix there of the backup's
    /// data directory image (`backups/<id>/pgdata`).
    pub storage: Arc<dyn Storage>,
    pub prefix: String,
    /// Replace files already there, each at once when written (a restore
    /// point completing a WAL segment), instead of writing new ones.
    pub replace: bool,
    pub compression: Compression,
    /// 0 to 9; higher values are taken as 9.
    /// The codec's level (clamped into its range).
    pub level: i32,
    /// Worker threads; 0 is taken as 1.
    pub threads: usize,
    /// Check page checksums of relation files as they are read.
    pub page_checks: Option<PageChecks>,
}

/// How to check the pages of a cluster with data checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageChecks {
    /// Pages at or past it are not checked (see `page_checksum`).
    pub start_lsn: Lsn,
    pub block_size: u32,
    /// Blocks per relation segment file, to number blocks across segments.
    pub segment_blocks: u32,
}

/// What `poll` is shown. Byte counts are of source data; `bytes_total` is
/// estimated from the sizes when the copy started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyProgress {
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Bytes read from the sources.
    pub bytes_read: u64,
    /// Bytes written to the repository (after compression).
    pub bytes_written: u64,
    /// Pages whose checksum failed (twice), by path and block.
    pub page_checksum_failures: Vec<PageChecksumFailure>,
}

#[derive(Debug, Error)]
pub enum CopyError {
    #[error("could not read \"{}\": {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "could not write \"{}\": {source}; check the repository's free space and permissions",
        path.display()
    )]
    Write { path: PathBuf, source: io::Error },
    #[error("could not start a copy thread: {source}; lower the parallelism")]
    Thread { source: io::Error },
    #[error("\"{path}\" is not a relative path inside the data directory")]
    BadPath { path: String },
    #[error("the copy was cancelled")]
    Cancelled,
    #[error("\"{}\" is gone: {why}", path.display())]
    Gone { path: PathBuf, why: String },
}

fn read_error(path: &Path) -> impl Fn(io::Error) -> CopyError + '_ {
    move |source| CopyError::Read {
        path: path.to_owned(),
        source,
    }
}

fn write_error(path: &Path) -> impl Fn(io::Error) -> CopyError + '_ {
    move |source| CopyError::Write {
        path: path.to_owned(),
        source,
    }
}

/// Copies `tasks` into `options.dest_dir` with `options.threads` workers,
/// running `poll` on the calling thread at least every 100 ms. Returns what
/// was stored, sorted by path (vanished sources are not in it), and the
/// byte counts.
pub fn copy_files(
    tasks: Vec<CopyTask>,
    options: &CopyOptions,
    poll: &mut dyn FnMut(&CopyProgress) -> ControlFlow<()>,
) -> Result<(Vec<StoredFile>, CopyStats), CopyError> {
    for task in &tasks {
        if safe_relative_path(&task.path).is_none() {
            return Err(CopyError::BadPath {
                path: task.path.clone(),
            });
        }
    }
    let progress = SharedProgress {
        files_total: tasks.len() as u64,
        ..SharedProgress::default()
    };
    // Size the work: a stat per whole file, on this thread so that poll
    // keeps running however many files there are.
    let mut sized = Vec::with_capacity(tasks.len());
    let mut last_poll = Instant::now();
    for task in tasks {
        let estimate = match &task.method {
            FileMethod::Whole => fs::metadata(&task.source).map_or(0, |metadata| metadata.len()),
            FileMethod::Head(limit) => fs::metadata(&task.source)
                .map_or(0, |metadata| metadata.len())
                .min(*limit),
            FileMethod::Incremental(header) => {
                header.blocks.len() as u64 * u64::from(header.block_size)
            }
        };
        progress.bytes_total.fetch_add(estimate, Ordering::Relaxed);
        sized.push((estimate, task));
        if last_poll.elapsed() >= POLL_INTERVAL {
            last_poll = Instant::now();
            if poll(&progress.snapshot()).is_break() {
                return Err(CopyError::Cancelled);
            }
        }
    }
    sized.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.path.cmp(&b.1.path)));
    let tasks: Vec<CopyTask> = sized.into_iter().map(|(_, task)| task).collect();

    let mut stored = Vec::with_capacity(tasks.len());
    let mut stats = CopyStats::default();
    run_pool(
        &tasks,
        options.threads,
        &progress,
        |task, stop| copy_one(task, options, &progress, stop),
        |copied| {
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            if let Some((file, copied)) = copied {
                stats.bytes_read += copied.bytes_read;
                stats.bytes_written += file.stored_size;
                stats
                    .page_checksum_failures
                    .extend(
                        copied
                            .bad_blocks
                            .into_iter()
                            .map(|block| PageChecksumFailure {
                                path: copied.path.clone(),
                                block,
                            }),
                    );
                stored.push(file);
            }
        },
        poll,
    )?;

    // Make the files durable: most of their data is on its way already.
    // Replaced files were, each as it was renamed into place.
    if !options.replace {
        let written: Vec<String> = stored
            .iter()
            .map(|file| {
                join(
                    &options.prefix,
                    &stored_name(&file.path, options.compression),
                )
            })
            .collect();
        sync_all(&written, options, &progress, poll)?;
        // The files are durable; now their names.
        options
            .storage
            .sync_parents(&written, options.threads)
            .map_err(write_error(
                &PathBuf::from(options.storage.describe()).join(&options.prefix),
            ))?;
    }
    if poll(&progress.snapshot()).is_break() {
        return Err(CopyError::Cancelled);
    }
    stored.sort_by(|a, b| a.path.cmp(&b.path));
    stats
        .page_checksum_failures
        .sort_by(|a, b| (&a.path, a.block).cmp(&(&b.path, b.block)));
    Ok((stored, stats))
}

#[derive(Default)]
struct SharedProgress {
    files_total: u64,
    files_done: AtomicU64,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
}

impl SharedProgress {
    fn snapshot(&self) -> CopyProgress {
        CopyProgress {
            files_total: self.files_total,
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
        }
    }
}

/// fsyncs every file of `paths`, on `options.threads` threads.
fn sync_all(
    paths: &[String],
    options: &CopyOptions,
    progress: &SharedProgress,
    poll: &mut dyn FnMut(&CopyProgress) -> ControlFlow<()>,
) -> Result<(), CopyError> {
    run_pool(
        paths,
        options.threads,
        progress,
        |path, _| {
            options
                .storage
                .sync_file(path)
                .map_err(write_error(&shown(options, path)))
        },
        |()| {},
        poll,
    )
}

/// A stored path in messages.
fn shown(options: &CopyOptions, path: &str) -> PathBuf {
    PathBuf::from(options.storage.describe()).join(path)
}

/// Runs `work` over `items` on `threads` scoped threads, in order of the
/// slice, handing each result to `done` and calling `poll` on this thread.
/// The first error, or `poll` answering `Break`, stops the workers at their
/// next check of the stop flag they are given.
fn run_pool<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    progress: &SharedProgress,
    work: impl Fn(&T, &AtomicBool) -> Result<R, CopyError> + Sync,
    mut done: impl FnMut(R),
    poll: &mut dyn FnMut(&CopyProgress) -> ControlFlow<()>,
) -> Result<(), CopyError> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let mut first_error = None;
    let mut cancelled = false;
    /// Stops the workers if this thread unwinds (a panic in `poll` or
    /// `done`): the scope joins them before the unwinding goes on.
    struct StopOnUnwind<'a>(&'a AtomicBool);
    impl Drop for StopOnUnwind<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    thread::scope(|scope| {
        let _stop_on_unwind = StopOnUnwind(&stop);
        let (sender, receiver) = mpsc::channel();
        for number in 0..threads.clamp(1, items.len().max(1)) {
            let sender = sender.clone();
            let (next, stop, work) = (&next, &stop, &work);
            let worker = move || loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    break;
                };
                let result = work(item, stop);
                let failed = result.is_err();
                if sender.send(result).is_err() || failed {
                    break;
                }
            };
            let spawned = thread::Builder::new()
                .name(format!("blockbackup copy {number}"))
                .spawn_scoped(scope, worker);
            if let Err(source) = spawned {
                stop.store(true, Ordering::Relaxed);
                first_error = Some(CopyError::Thread { source });
                break;
            }
        }
        drop(sender);
        let mut last_poll = Instant::now();
        loop {
            match receiver.recv_timeout(POLL_INTERVAL) {
                Ok(Ok(result)) => done(result),
                Ok(Err(CopyError::Cancelled)) => {}
                Ok(Err(error)) => {
                    stop.store(true, Ordering::Relaxed);
                    first_error.get_or_insert(error);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if !cancelled && last_poll.elapsed() >= POLL_INTERVAL {
                last_poll = Instant::now();
                if poll(&progress.snapshot()).is_break() {
                    cancelled = true;
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
    });
    match first_error {
        Some(error) => Err(error),
        None if cancelled => Err(CopyError::Cancelled),
        None => Ok(()),
    }
}

/// The file name under `dest_dir` of a stored path.
fn stored_name(stored_path: &str, compression: Compression) -> String {
    compression.stored_name(stored_path)
}

/// What copying one file read.
struct Copied {
    /// The source path relative to the data directory.
    path: String,
    bytes_read: u64,
    /// Content size and CRC-32C of what was stored.
    size: u64,
    crc32c: u32,
    /// Blocks whose page checksum failed twice.
    bad_blocks: Vec<u32>,
}

/// The pages of one source to check: the block number of its first byte.
#[derive(Clone, Copy)]
struct PageScan {
    checks: PageChecks,
    first_block: u32,
}

impl PageScan {
    fn for_task(task: &CopyTask, options: &CopyOptions) -> Option<Self> {
        let checks = options.page_checks?;
        let segment = relation_segment(&task.path)?;
        Some(PageScan {
            checks,
            first_block: segment.wrapping_mul(checks.segment_blocks),
        })
    }

    /// Checks the whole pages of `data`, read at `offset` of `source`;
    /// a page that fails is read again once before it counts.
    fn check(&self, source: &File, data: &[u8], offset: u64, bad: &mut Vec<u32>) -> io::Result<()> {
        let size = self.checks.block_size as usize;
        let first = offset / u64::from(self.checks.block_size);
        for (i, page) in data.chunks_exact(size).enumerate() {
            let block = self.first_block.wrapping_add((first + i as u64) as u32);
            if !matches!(
                check_page(page, block, self.checks.start_lsn),
                PageCheck::Mismatch { .. }
            ) {
                continue;
            }
            let mut again = vec![0u8; size];
            let at = offset + (i * size) as u64;
            let filled = read_at_most(source, &mut again, at)?;
            let still_bad = filled == size
                && matches!(
                    check_page(&again, block, self.checks.start_lsn),
                    PageCheck::Mismatch { .. }
                );
            if still_bad {
                bad.push(block);
            }
        }
        Ok(())
    }
}

/// Copies one task; None when its source vanished first.
fn copy_one(
    task: &CopyTask,
    options: &CopyOptions,
    progress: &SharedProgress,
    stop: &AtomicBool,
) -> Result<Option<(StoredFile, Copied)>, CopyError> {
    let source = match File::open(&task.source) {
        Ok(source) => source,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(read_error(&task.source)(error)),
    };
    let stored_path = match &task.method {
        FileMethod::Whole | FileMethod::Head(_) => task.path.clone(),
        FileMethod::Incremental(_) => incremental_path(&task.path),
    };
    let name = join(
        &options.prefix,
        &stored_name(&stored_path, options.compression),
    );
    let dest = shown(options, &name);
    let file = if options.replace {
        options.storage.replace(&name)
    } else {
        options.storage.create(&name)
    }
    .map_err(write_error(&dest))?;
    let mut sink =
        Sink::new(file, options.compression, options.level).map_err(write_error(&dest))?;
    let pages = PageScan::for_task(task, options);
    let copied = match &task.method {
        FileMethod::Whole => copy_whole(
            &source,
            task,
            u64::MAX,
            pages,
            &mut sink,
            &dest,
            progress,
            stop,
        ),
        FileMethod::Head(limit) => copy_whole(
            &source, task, *limit, pages, &mut sink, &dest, progress, stop,
        ),
        FileMethod::Incremental(header) => copy_blocks(
            &source, task, header, pages, &mut sink, &dest, progress, stop,
        ),
    }
    .and_then(|copied| {
        let stored = sink.finish().map_err(write_error(&dest))?;
        Ok((copied, stored))
    });
    match copied {
        Ok((copied, (stored_size, stored_crc32c))) => Ok(Some((
            StoredFile {
                path: stored_path,
                kind: task.kind,
                size: copied.size,
                stored_size,
                crc32c: copied.crc32c,
                stored_crc32c: Some(stored_crc32c),
                mtime: task.mtime,
            },
            copied,
        ))),
        Err(error) => {
            // Best effort: the error that matters is the one returned. (A
            // file being replaced was not touched: its writer was dropped.)
            if !options.replace {
                let _ = options.storage.remove(&name);
            }
            Err(error)
        }
    }
}

/// Streams the source up to the length it had when opened, at most
/// `limit` bytes.
#[allow(clippy::too_many_arguments)]
fn copy_whole(
    source: &File,
    task: &CopyTask,
    limit: u64,
    pages: Option<PageScan>,
    sink: &mut Sink,
    dest: &Path,
    progress: &SharedProgress,
    stop: &AtomicBool,
) -> Result<Copied, CopyError> {
    let mut remaining = source
        .metadata()
        .map_err(read_error(&task.source))?
        .len()
        .min(limit);
    let mut buffer = vec![0u8; chunk_for(remaining)];
    let mut crc = 0u32;
    let mut size = 0u64;
    let mut bad_blocks = Vec::new();
    while remaining > 0 {
        if stop.load(Ordering::Relaxed) {
            return Err(CopyError::Cancelled);
        }
        let want = buffer
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        // Whole chunks (a multiple of the page size) so that pages can be
        // checked in place; short only at the end of the file.
        let read =
            read_at_most(source, &mut buffer[..want], size).map_err(read_error(&task.source))?;
        if read == 0 {
            break;
        }
        let data = &buffer[..read];
        if let Some(pages) = &pages {
            pages
                .check(source, data, size, &mut bad_blocks)
                .map_err(read_error(&task.source))?;
        }
        crc = crc32c::crc32c_append(crc, data);
        sink.write_all(data).map_err(write_error(dest))?;
        size += read as u64;
        remaining -= read as u64;
        progress
            .bytes_done
            .fetch_add(read as u64, Ordering::Relaxed);
        if read < want {
            break;
        }
    }
    Ok(Copied {
        path: task.path.clone(),
        bytes_read: size,
        size,
        crc32c: crc,
        bad_blocks,
    })
}

/// Writes the incremental file: the header, then each listed block read
/// from the source, runs of consecutive blocks in one read. Blocks past
/// the end of the source are zeros.
#[allow(clippy::too_many_arguments)]
fn copy_blocks(
    source: &File,
    task: &CopyTask,
    header: &IncrementalHeader,
    pages: Option<PageScan>,
    sink: &mut Sink,
    dest: &Path,
    progress: &SharedProgress,
    stop: &AtomicBool,
) -> Result<Copied, CopyError> {
    let encoded = header.encode();
    let mut crc = crc32c::crc32c(&encoded);
    sink.write_all(&encoded).map_err(write_error(dest))?;
    let mut size = encoded.len() as u64;
    let mut bytes_read = 0u64;
    let mut bad_blocks = Vec::new();
    let block_size = header.block_size as usize;
    let run_blocks = (CHUNK_BYTES / block_size.max(1))
        .max(1)
        .min(header.blocks.len());
    let mut buffer = vec![0u8; run_blocks * block_size];
    let mut rest = header.blocks.as_slice();
    while let Some(&first) = rest.first() {
        if stop.load(Ordering::Relaxed) {
            return Err(CopyError::Cancelled);
        }
        let run = rest
            .iter()
            .take(run_blocks)
            .zip(first..)
            .take_while(|(block, expected)| **block == *expected)
            .count();
        let data = &mut buffer[..run * block_size];
        let offset = u64::from(first) * u64::from(header.block_size);
        let filled = read_at_most(source, data, offset).map_err(read_error(&task.source))?;
        data[filled..].fill(0);
        if let Some(pages) = &pages {
            pages
                .check(source, &data[..filled], offset, &mut bad_blocks)
                .map_err(read_error(&task.source))?;
        }
        crc = crc32c::crc32c_append(crc, data);
        sink.write_all(data).map_err(write_error(dest))?;
        size += data.len() as u64;
        bytes_read += filled as u64;
        progress
            .bytes_done
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        rest = &rest[run..];
    }
    Ok(Copied {
        path: task.path.clone(),
        bytes_read,
        size,
        crc32c: crc,
        bad_blocks,
    })
}

/// The buffer for streaming `remaining` bytes: one chunk, or less for a
/// smaller file (a thousand small files must not each zero a whole chunk),
/// always whole pages of the largest block size PostgreSQL allows, so that
/// pages are checked in place whatever the cluster's block size.
fn chunk_for(remaining: u64) -> usize {
    const PAGE: u64 = 32768;
    let pages = remaining.div_ceil(PAGE).max(1);
    usize::try_from(pages.saturating_mul(PAGE))
        .unwrap_or(CHUNK_BYTES)
        .min(CHUNK_BYTES)
}

/// Fills `buffer` from `offset` as far as the file goes; returns how much.
fn read_at_most(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Where file content goes: the stored file, through the codec, with the
/// size and CRC-32C of the bytes stored.
struct Sink {
    encoder: Encoder<Tallied<Box<dyn StoredWriter>>>,
    stored: Arc<Tally>,
}

impl Sink {
    fn new(file: Box<dyn StoredWriter>, compression: Compression, level: i32) -> io::Result<Self> {
        let (tallied, stored) = Tallied::new(file);
        Ok(Sink {
            encoder: compression.encoder(tallied, level)?,
            stored,
        })
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.encoder.write_all(data)
    }

    /// Writes everything out and returns the size and CRC-32C of what was
    /// stored; `copy_files` syncs the file once all are written.
    fn finish(self) -> io::Result<(u64, u32)> {
        let tallied = self.encoder.finish()?;
        tallied.inner.finish()?;
        Ok(self.stored.result())
    }
}

#[cfg(test)]
mod tests {
    use super::{chunk_for, CHUNK_BYTES};

    #[test]
    fn a_small_file_gets_a_small_buffer_of_whole_pages() {
        assert_eq!(chunk_for(0), 32768);
        assert_eq!(chunk_for(1), 32768);
        assert_eq!(chunk_for(8192), 32768);
        assert_eq!(chunk_for(32769), 65536);
        assert_eq!(chunk_for(CHUNK_BYTES as u64 - 1), CHUNK_BYTES);
        assert_eq!(chunk_for(u64::MAX), CHUNK_BYTES);
        for size in [1u64, 8191, 40000, 300_000, 5_000_000] {
            assert_eq!(chunk_for(size) % 32768, 0, "{size}");
        }
    }
}
