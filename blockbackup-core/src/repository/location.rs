//! Where a repository is: a local directory, or a prefix of an S3 bucket
//! (`s3://<bucket>/<prefix>`), and how to open the store there.
//!
//! The locks of a repository are always on this host (see `locks`): for a
//! local one in its `locks/` directory; for one in a bucket in a directory
//! of this host's temporary directory named after the endpoint, bucket and
//! prefix, where the server and the offline command run by the same OS
//! user meet, as pgBackRest's lock path does.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Locks, Repository, RepositoryError, LOCKS_DIR};
use crate::storage::local::LocalStorage;
use crate::storage::s3::{RetryPolicy, S3ConfigError, S3Location, S3Settings, S3Storage};
use crate::storage::Storage;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepositoryLocation {
    Local(PathBuf),
    S3(S3Location),
}

impl RepositoryLocation {
    /// `s3://...` names a bucket; anything else a directory (whose
    /// checks, absolute and apart from the data, are the caller's).
    pub fn parse(text: &str) -> Result<Self, S3ConfigError> {
        if S3Location::is_s3(text) {
            S3Location::parse(text).map(RepositoryLocation::S3)
        } else {
            Ok(RepositoryLocation::Local(PathBuf::from(text)))
        }
    }

    pub fn local(&self) -> Option<&Path> {
        match self {
            RepositoryLocation::Local(root) => Some(root),
            RepositoryLocation::S3(_) => None,
        }
    }

    /// The store there, and where its locks are.
    fn open_store(
        &self,
        s3: Option<&S3Settings>,
    ) -> Result<(Arc<dyn Storage>, Locks), RepositoryError> {
        match self {
            RepositoryLocation::Local(root) => Ok((
                Arc::new(LocalStorage::new(root)),
                Locks::in_directory(&root.join(LOCKS_DIR)),
            )),
            RepositoryLocation::S3(location) => {
                let settings =
                    s3.ok_or(RepositoryError::S3Config(S3ConfigError::NoCredentials(
                        "the repository is in S3 but no S3 settings were given",
                    )))?;
                settings.check().map_err(RepositoryError::S3Config)?;
                let storage = S3Storage::connect(location, settings, RetryPolicy::default())
                    .map_err(|source| RepositoryError::Io {
                        path: PathBuf::from(location.to_string()),
                        source,
                    })?;
                Ok((
                    Arc::new(storage),
                    Locks::in_directory(
                        &remote_lock_dir(location, settings)
                            .map_err(|(path, source)| RepositoryError::Io { path, source })?,
                    ),
                ))
            }
        }
    }
}

impl fmt::Display for RepositoryLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepositoryLocation::Local(root) => write!(f, "{}", root.display()),
            RepositoryLocation::S3(location) => write!(f, "{location}"),
        }
    }
}

/// `<tmp>/pg_blockbackup-<uid>/<bucket>-<prefix>-<hash>`: one directory
/// per repository, the hash telling apart endpoints and odd names. The
/// temporary directory is everyone's, so the first level must be this
/// user's own, private directory (not a link someone else put there to
/// have our lock files made elsewhere).
fn remote_lock_dir(
    location: &S3Location,
    settings: &S3Settings,
) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let endpoint = settings
        .endpoint_url()
        .map(|url| url.to_string())
        .unwrap_or_default();
    let identity = format!("{endpoint} {location}");
    let readable: String = format!("{}-{}", location.bucket, location.prefix)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    let private = std::env::temp_dir().join(format!("pg_blockbackup-{uid}"));
    private_directory(&private, uid).map_err(|error| (private.clone(), error))?;
    Ok(private.join(format!(
        "{readable}-{:08x}",
        crc32c::crc32c(identity.as_bytes())
    )))
}

/// Makes `path` a directory of mode 0700, or checks that it is one:
/// a directory (not a link), owned by `uid`, that no one else can enter.
fn private_directory(path: &Path, uid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => return Err(error),
        _ => {}
    }
    let metadata = std::fs::symlink_metadata(path)?;
    if !metadata.is_dir() || metadata.uid() != uid || metadata.mode() & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the lock directory is not a directory of this user alone (mode 0700); remove it",
        ));
    }
    Ok(())
}

impl Repository {
    /// Opens the existing repository at `location`.
    pub fn open_at(
        location: &RepositoryLocation,
        s3: Option<&S3Settings>,
    ) -> Result<Self, RepositoryError> {
        if let RepositoryLocation::Local(root) = location {
            return Repository::open(root);
        }
        let (storage, locks) = location.open_store(s3)?;
        let mut repository =
            Repository::open_in(&PathBuf::from(location.to_string()), storage, locks)?;
        repository.location = location.clone();
        Ok(repository)
    }

    /// Opens the repository at `location` for `system_identifier`,
    /// creating it if the store there is empty.
    pub fn open_or_create_at(
        location: &RepositoryLocation,
        s3: Option<&S3Settings>,
        system_identifier: u64,
    ) -> Result<Self, RepositoryError> {
        if let RepositoryLocation::Local(root) = location {
            return Repository::open_or_create(root, system_identifier);
        }
        let (storage, locks) = location.open_store(s3)?;
        let mut repository = Repository::open_or_create_in(
            &PathBuf::from(location.to_string()),
            storage,
            locks,
            system_identifier,
        )?;
        repository.location = location.clone();
        Ok(repository)
    }

    /// Where the repository is.
    pub fn location(&self) -> &RepositoryLocation {
        &self.location
    }

    /// The directory of a local repository; None for one in a bucket.
    pub fn local_root(&self) -> Option<&Path> {
        self.location.local()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_private_lock_directory_is_made_and_checked() {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let scratch = tempfile::tempdir().unwrap();
        let made = scratch.path().join("mine");
        private_directory(&made, uid).unwrap();
        private_directory(&made, uid).unwrap();
        let link = scratch.path().join("link");
        std::os::unix::fs::symlink(&made, &link).unwrap();
        assert!(private_directory(&link, uid).is_err());
        let open = scratch.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        assert!(private_directory(&open, uid).is_err());
        assert!(private_directory(&made, uid + 1).is_err());
    }
}
