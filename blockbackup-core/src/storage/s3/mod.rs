//! The S3 driver: a repository in a bucket of any S3-compatible object
//! store (AWS S3, SeaweedFS, MinIO, Ceph, rclone's S3 server, ...), under
//! a prefix, `s3://<bucket>/<prefix>`.
//!
//! What the storage interface asks maps onto S3 directly: a read is a GET
//! streamed as it arrives, a size a HEAD, a small write one PUT, a streamed
//! write an [`upload::Upload`] (one PUT, or a multipart upload for a large
//! file), a listing ListObjectsV2 with `/` as delimiter, a removal DELETE
//! or DeleteObjects. An object is durable once its PUT or its
//! CompleteMultipartUpload has answered, and replaces the old one at once,
//! so syncing is nothing to do. That is all the repository needs to make a
//! backup visible only when its record says DONE, written last.
//!
//! A multipart upload that its writer could not abort (the store was
//! down, the process killed) stays in the bucket, invisible but kept: a
//! removal of a prefix aborts those under it too, so that removing a failed
//! backup's partial files leaves nothing behind.
//!
//! Some stores (SeaweedFS) keep a "directory" object `a/b/` after the last
//! object under `a/b/` is deleted: listings skip such keys, and a removal
//! of everything under a prefix deletes them too, deepest first.
//!
//! Requests, retries, timeouts and errors are [`client::Client`]'s; the
//! settings and the location are [`config`]'s.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use super::{Entry, Storage, StoredWriter};
use crate::safe_path::safe_relative_path;

pub mod client;
pub mod config;
pub mod error;
mod operations;
mod upload;
mod xml;

pub use client::RetryPolicy;
pub use config::{S3ConfigError, S3Location, S3Settings, Secret, UriStyle};
pub use error::{S3Error, S3Failure};

/// Uploader threads per file being written.
const UPLOADERS_PER_FILE: usize = 2;
/// Listings of a thousand unfinished uploads each, at most, per removal.
const MAX_UPLOAD_LISTINGS: usize = 100;
/// Connections kept open to the store, for that many requests at once.
const CONNECTIONS: usize = 32;

#[derive(Debug)]
pub struct S3Storage {
    client: Arc<client::Client>,
    location: S3Location,
}

impl S3Storage {
    /// The repository at `location`, once a listing has shown that the
    /// store answers, takes the credentials and has the bucket.
    pub fn connect(
        location: &S3Location,
        settings: &S3Settings,
        retry: RetryPolicy,
    ) -> io::Result<Self> {
        let client = client::Client::new(location, settings, retry, CONNECTIONS)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        let storage = S3Storage {
            client: Arc::new(client),
            location: location.clone(),
        };
        storage
            .client
            .list(&storage.listing_prefix(""), true, Some(1))?;
        Ok(storage)
    }

    /// The object key of repository path `path`.
    fn key(&self, path: &str) -> io::Result<String> {
        // Keys are not paths: `a//b` and `a/./b` would be other objects.
        let plain = path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
        if !path.is_empty() && (!plain || safe_relative_path(path).is_none()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("\"{path}\" is not a plain relative path"),
            ));
        }
        Ok(super::join(&self.location.prefix, path))
    }

    /// Aborts the multipart uploads under way under `prefix`: what a
    /// writer cut off with the store (or the process) left behind, which
    /// the store would otherwise keep, and bill, forever.
    fn abort_uploads(&self, prefix: &str) -> io::Result<()> {
        for _ in 0..MAX_UPLOAD_LISTINGS {
            let (uploads, truncated) = self.client.list_uploads(prefix)?;
            for (key, id) in &uploads {
                self.client.abort_multipart(key, id)?;
            }
            if !truncated || uploads.is_empty() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// How many multipart uploads are under way under repository path
    /// `path` (up to a thousand).
    pub fn unfinished_uploads(&self, path: &str) -> io::Result<usize> {
        self.key(path)?;
        Ok(self
            .client
            .list_uploads(&self.listing_prefix(path))?
            .0
            .len())
    }

    /// What the keys under repository path `path` start with.
    fn listing_prefix(&self, path: &str) -> String {
        let key = super::join(&self.location.prefix, path);
        if key.is_empty() {
            key
        } else {
            format!("{key}/")
        }
    }
}

impl Storage for S3Storage {
    fn describe(&self) -> String {
        self.location.to_string()
    }

    fn open(&self, path: &str) -> io::Result<Box<dyn Read + Send>> {
        self.client.get(&self.key(path)?)
    }

    fn size(&self, path: &str) -> io::Result<Option<u64>> {
        self.client.head(&self.key(path)?)
    }

    fn put(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.client.put(&self.key(path)?, bytes)
    }

    fn create(&self, path: &str) -> io::Result<Box<dyn StoredWriter>> {
        Ok(Box::new(upload::Upload::new(
            self.client.clone(),
            self.key(path)?,
            UPLOADERS_PER_FILE,
        )))
    }

    fn replace(&self, path: &str) -> io::Result<Box<dyn StoredWriter>> {
        // An object is replaced at once when its upload completes.
        self.create(path)
    }

    fn sync_file(&self, path: &str) -> io::Result<()> {
        self.key(path).map(drop)
    }

    fn sync_parents(&self, _paths: &[String], _threads: usize) -> io::Result<()> {
        Ok(())
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<Entry>> {
        self.key(prefix)?;
        let under = self.listing_prefix(prefix);
        let (objects, prefixes) = self.client.list(&under, true, None)?;
        let mut entries = Vec::new();
        for object in objects {
            let name = object.key.strip_prefix(&under).unwrap_or_default();
            // A store's "directory" marker (`a/b/`, or the prefix itself).
            if name.is_empty() || name.contains('/') {
                continue;
            }
            entries.push(Entry {
                name: name.to_owned(),
                is_prefix: false,
                size: object.size,
                modified_us: object.modified_us,
            });
        }
        for common in prefixes {
            let name = common
                .strip_prefix(&under)
                .unwrap_or_default()
                .trim_end_matches('/');
            if !name.is_empty() && !name.contains('/') {
                entries.push(Entry {
                    name: name.to_owned(),
                    is_prefix: true,
                    size: 0,
                    modified_us: None,
                });
            }
        }
        Ok(entries)
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        self.client.delete(&self.key(path)?)
    }

    fn remove_all(&self, prefix: &str) -> io::Result<()> {
        let key = self.key(prefix)?;
        let under = self.listing_prefix(prefix);
        self.abort_uploads(&under)?;
        let (objects, _) = self.client.list(&under, false, None)?;
        let mut keys: Vec<String> = objects.into_iter().map(|object| object.key).collect();
        if !key.is_empty() && self.client.head(&key)?.is_some() {
            keys.push(key);
        }
        // The "directories" between the prefix and each object, deepest
        // first, for the stores that keep them as objects of their own.
        let mut directories = BTreeSet::new();
        for key in &keys {
            let mut rest = key.as_str();
            while let Some(slash) = rest.rfind('/') {
                rest = &rest[..slash];
                let directory = format!("{rest}/");
                if directory.len() <= under.len() && directory != under {
                    break;
                }
                directories.insert(directory);
            }
        }
        if !under.is_empty() {
            directories.insert(under.clone());
        }
        keys.retain(|key| !key.ends_with('/'));
        self.client.delete_many(&keys)?;
        for directory in directories.iter().rev() {
            self.client.delete(directory)?;
        }
        Ok(())
    }

    fn local_path(&self, _path: &str) -> Option<PathBuf> {
        None
    }
}
