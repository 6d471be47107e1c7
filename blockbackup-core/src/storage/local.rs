//! The local directory driver: a repository on this host's file system.
//!
//! Reads go through [`crate::safe_fs::open_regular_beneath`], so a link put
//! anywhere under the root is refused, not followed. Small files are
//! replaced with write-to-temp, fsync, rename, fsync-directory; streamed
//! files are written in place and made durable by [`Storage::sync_file`]
//! and [`Storage::sync_parents`] once all are written, which is what a
//! thousand small files need (one fsync each as it is written would cost a
//! disk round trip each), as PostgreSQL syncs a data directory. Directories
//! are created with mode 0700.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Entry, Storage, StoredWriter};
use crate::safe_fs::open_regular_beneath;
use crate::safe_path::safe_relative_path;

const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// A replaced file is handed to the disk in steps of this size while it is
/// written, so that its final fsync waits for the last step only.
const WRITEBACK_STEP_BYTES: u64 = 1024 * 1024;

#[derive(Debug)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: &Path) -> Self {
        LocalStorage {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/path` for a path made of plain components only.
    fn full(&self, path: &str) -> io::Result<PathBuf> {
        if path.is_empty() {
            return Ok(self.root.clone());
        }
        let relative = safe_relative_path(path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("\"{path}\" is not a plain relative path"),
            )
        })?;
        Ok(self.root.join(relative))
    }

    fn make_parent(&self, full: &Path) -> io::Result<()> {
        match full.parent() {
            Some(parent) => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent),
            None => Ok(()),
        }
    }
}

impl Storage for LocalStorage {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn open(&self, path: &str) -> io::Result<Box<dyn Read + Send>> {
        self.full(path)?;
        Ok(Box::new(open_regular_beneath(&self.root, Path::new(path))?))
    }

    fn size(&self, path: &str) -> io::Result<Option<u64>> {
        match fs::symlink_metadata(self.full(path)?) {
            Ok(metadata) if metadata.is_file() => Ok(Some(metadata.len())),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("\"{path}\" is not a regular file"),
            )),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn put(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        let mut writer = self.replace(path)?;
        writer.write_all(bytes)?;
        writer.finish().map(drop)
    }

    fn create(&self, path: &str) -> io::Result<Box<dyn StoredWriter>> {
        let full = self.full(path)?;
        self.make_parent(&full)?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&full)?;
        Ok(Box::new(InPlace {
            file: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
        }))
    }

    fn replace(&self, path: &str) -> io::Result<Box<dyn StoredWriter>> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let full = self.full(path)?;
        self.make_parent(&full)?;
        let name = full
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
            .to_string_lossy()
            .into_owned();
        let temporary = full.with_file_name(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        Ok(Box::new(Replacing {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            temporary,
            target: full,
            written: 0,
            handed: 0,
        }))
    }

    fn sync_file(&self, path: &str) -> io::Result<()> {
        File::open(self.full(path)?)?.sync_all()
    }

    fn sync_parents(&self, paths: &[String], threads: usize) -> io::Result<()> {
        // Every directory from each file's up to the root, once.
        let mut directories = BTreeSet::new();
        for path in paths {
            let mut current = self.full(path)?;
            while let Some(parent) = current.parent() {
                if !parent.starts_with(&self.root) || !directories.insert(parent.to_owned()) {
                    break;
                }
                current = parent.to_owned();
            }
        }
        let directories: Vec<PathBuf> = directories.into_iter().collect();
        let threads = threads.clamp(1, directories.len().max(1));
        let chunk = directories.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = directories
                .chunks(chunk)
                .map(|dirs| {
                    scope.spawn(move || {
                        dirs.iter()
                            .try_for_each(|dir| File::open(dir).and_then(|d| d.sync_all()))
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("a sync thread panicked")))
            })
        })
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        let entries = match fs::read_dir(self.full(prefix)?) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut listed = Vec::new();
        for entry in entries {
            let entry = entry?;
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            let (size, modified_us) = if kind.is_file() {
                match entry.metadata() {
                    Ok(metadata) => (
                        metadata.len(),
                        metadata
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_micros() as i64),
                    ),
                    Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                }
            } else {
                (0, None)
            };
            listed.push(Entry {
                name: entry.file_name().to_string_lossy().into_owned(),
                is_prefix: kind.is_dir(),
                size,
                modified_us,
            });
        }
        Ok(listed)
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        match fs::remove_file(self.full(path)?) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn remove_all(&self, prefix: &str) -> io::Result<()> {
        let full = self.full(prefix)?;
        let result = match fs::symlink_metadata(&full) {
            Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(&full),
            Ok(_) => fs::remove_file(&full),
            Err(error) => Err(error),
        };
        match result {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn local_path(&self, path: &str) -> Option<PathBuf> {
        self.full(path).ok()
    }
}

/// A streamed file written where it goes.
struct InPlace {
    file: BufWriter<File>,
}

impl Write for InPlace {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl StoredWriter for InPlace {
    fn finish(self: Box<Self>) -> io::Result<u64> {
        let file = self.file.into_inner().map_err(|error| error.into_error())?;
        start_writeback(&file);
        Ok(file.metadata()?.len())
    }
}

/// A streamed file written aside and renamed over its target when done.
struct Replacing {
    file: Option<BufWriter<File>>,
    temporary: PathBuf,
    target: PathBuf,
    /// Bytes given to the writer.
    written: u64,
    /// Bytes whose writeback was started.
    handed: u64,
}

impl Replacing {
    fn file(&mut self) -> io::Result<&mut BufWriter<File>> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("the file was finished"))
    }

    /// Starts writeback of what reached the kernel since the last step, a
    /// step at a time: the disk writes while the rest is still coming.
    fn hand_to_disk(&mut self) {
        let Some(file) = self.file.as_ref() else {
            return;
        };
        let in_kernel = self.written - file.buffer().len() as u64;
        if in_kernel - self.handed >= WRITEBACK_STEP_BYTES {
            start_writeback_range(file.get_ref(), self.handed, in_kernel - self.handed);
            self.handed = in_kernel;
        }
    }
}

impl Write for Replacing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let wrote = self.file()?.write(buf)?;
        self.written += wrote as u64;
        self.hand_to_disk();
        Ok(wrote)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file()?.write_all(buf)?;
        self.written += buf.len() as u64;
        self.hand_to_disk();
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file()?.flush()
    }
}

impl StoredWriter for Replacing {
    fn finish(mut self: Box<Self>) -> io::Result<u64> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("the file was finished"))?;
        let file = file.into_inner().map_err(|error| error.into_error())?;
        file.sync_all()?;
        let size = file.metadata()?.len();
        drop(file);
        if let Err(error) = fs::rename(&self.temporary, &self.target) {
            let _ = fs::remove_file(&self.temporary);
            return Err(error);
        }
        if let Some(parent) = self.target.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(size)
    }
}

impl Drop for Replacing {
    fn drop(&mut self) {
        // Not finished: the temporary file goes, the target is untouched.
        if self.file.is_some() {
            let _ = fs::remove_file(&self.temporary);
        }
    }
}

/// Asks the kernel to start writing the file's dirty pages now, without
/// waiting for them, so that the fsync that follows finds the work done.
/// Only a hint: an error here shows again in that fsync.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; the call only reads its arguments.
    unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File) {}

/// [`start_writeback`] of `length` bytes from `offset`.
#[cfg(target_os = "linux")]
fn start_writeback_range(file: &File, offset: u64, length: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(length)) else {
        return;
    };
    // SAFETY: a valid open descriptor; the call only reads its arguments.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset,
            length,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback_range(_file: &File, _offset: u64, _length: u64) {}
