//! The one interface through which everything the repository does to bytes
//! and names goes, with a driver per kind of store: the local directory
//! ([`local::LocalStorage`]) and an S3 bucket ([`s3::S3Storage`]).
//!
//! Paths are relative, `/`-separated names (`backups/<id>/backup.json`);
//! the driver maps them to where it keeps them. What the interface asks of
//! a driver is what an object store can give: whole-object reads and
//! writes, streamed writes, listings by prefix, removal. No operation
//! renames a directory or locks a file in the store, so that nothing the
//! repository does depends on either:
//!
//! * a backup becomes visible when its record (`backup.json`) is written,
//!   first, as RUNNING, and complete when the record says DONE, which is
//!   written last, after everything it lists is durable
//!   ([`Storage::sync_file`], [`Storage::sync_parents`]);
//! * a deletion first writes a tombstone next to the record, so that a
//!   listing skips the backup from then on, then removes the rest; one cut
//!   off half-way is finished by the next upkeep, and never leaves half a
//!   backup that looks whole;
//! * a file that changes in place (a record, a WAL segment a restore point
//!   completes) is replaced whole and atomically ([`Storage::put`],
//!   [`Storage::replace`]).
//!
//! Locks that keep two backups from running at once are not the store's
//! business: they are local to the host (see `repository::locks`).

use std::io::{self, Read, Write};
use std::path::PathBuf;

pub mod local;
pub mod s3;

/// An entry of a listing: a name directly under the listed prefix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub name: String,
    /// Whether it holds further names (a directory, a common prefix).
    pub is_prefix: bool,
    /// A file's size in bytes (0 for a prefix): what a listing of an object
    /// store gives for free, so that sizes need no request per file.
    pub size: u64,
    /// When it was last written, in microseconds since the Unix epoch, if
    /// the store knows.
    pub modified_us: Option<i64>,
}

/// A file being written; `finish` completes it and returns its size.
pub trait StoredWriter: Write + Send {
    fn finish(self: Box<Self>) -> io::Result<u64>;
}

pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Where the store is, for messages.
    fn describe(&self) -> String;

    /// Reads the file `path` front to back. NotFound when it is absent;
    /// anything but a plain stored file (a link put in its place) is an
    /// error [`crate::safe_fs::is_not_regular`] recognizes.
    fn open(&self, path: &str) -> io::Result<Box<dyn Read + Send>>;

    /// The size of the file `path`, None when it is absent.
    fn size(&self, path: &str) -> io::Result<Option<u64>>;

    /// A small file read whole, None when it is absent.
    fn get(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        match self.open(path) {
            Ok(mut reader) => {
                let mut bytes = Vec::new();
                reader.read_to_end(&mut bytes)?;
                Ok(Some(bytes))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Writes a small file whole, durably, replacing the old one at once.
    fn put(&self, path: &str, bytes: &[u8]) -> io::Result<()>;

    /// A new file streamed into place; durable once [`Storage::sync`]ed.
    fn create(&self, path: &str) -> io::Result<Box<dyn StoredWriter>>;

    /// A file streamed to replace `path` at once when finished (durably):
    /// until then readers see the old one.
    fn replace(&self, path: &str) -> io::Result<Box<dyn StoredWriter>>;

    /// Makes the file `path`, written with [`Storage::create`], durable.
    fn sync_file(&self, path: &str) -> io::Result<()>;

    /// Makes the names of the files `paths` durable (on a file system: the
    /// directories holding them, up to the root), with up to `threads` at
    /// once. Call it once the files are synced.
    fn sync_parents(&self, paths: &[String], threads: usize) -> io::Result<()>;

    /// The names directly under `prefix` ("" for the top), in no order.
    /// An absent prefix lists nothing.
    fn list(&self, prefix: &str) -> io::Result<Vec<Entry>>;

    /// Removes the file `path`; absent is fine.
    fn remove(&self, path: &str) -> io::Result<()>;

    /// Removes everything under `prefix`; absent is fine.
    fn remove_all(&self, prefix: &str) -> io::Result<()>;

    /// Where `path` is on this host's file system, for a program that
    /// writes there by itself (pg_dump); None for a store that is not a
    /// local directory.
    fn local_path(&self, path: &str) -> Option<PathBuf>;
}

/// `a/b` from `a` and `b`, either possibly empty.
pub fn join(prefix: &str, name: &str) -> String {
    match (prefix.is_empty(), name.is_empty()) {
        (true, _) => name.to_owned(),
        (_, true) => prefix.to_owned(),
        _ => format!("{prefix}/{name}"),
    }
}
