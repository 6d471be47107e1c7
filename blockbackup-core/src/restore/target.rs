//! Where a restore may write: the one check that the SQL function and the
//! offline command both apply to the target directory and to every
//! directory a tablespace is mapped to.
//!
//! A destination must be absolute, free of `..`, and apart from every
//! *forbidden place*: it may not be one, lie inside one or contain one.
//! The caller names the places: the repository always (a restore into it
//! would turn a directory of `backups/` into something the catalog cannot
//! read); on a server also its data directory, its tablespaces and every
//! directory it reads configuration from (a restore into an `include_dir`
//! would put a `postgresql.conf` where the running server reads it). And a
//! caller may *confine* destinations to one directory: the server does so
//! for roles that are not superusers, so that only a superuser chooses
//! where the server's OS user writes.
//!
//! Paths are compared resolved: made absolute and free of symbolic links
//! as far as they exist, so a link cannot hide that two paths overlap.

use std::path::{Component, Path, PathBuf};

use thiserror::Error;

use crate::restore::conf_file::{configuration_directories, Syntax};

/// A directory destinations must stay apart from, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForbiddenPlace {
    pub path: PathBuf,
    /// What it is, for the error: "the repository", "the data directory"...
    pub what: String,
}

/// The rules one restore's destinations must follow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationRules {
    pub forbidden: Vec<ForbiddenPlace>,
    /// When set, every destination must lie strictly inside it: the
    /// setting that names it (for the error) and the resolved directory.
    pub confined_to: Option<(String, PathBuf)>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DestinationError {
    #[error("{what} must be an absolute path without \"..\", got \"{}\"", path.display())]
    NotAbsolute { what: String, path: PathBuf },
    #[error("{what} \"{}\" overlaps {place_what} \"{}\"; a restore must not write there", path.display(), place.display())]
    Overlaps {
        what: String,
        path: PathBuf,
        place: PathBuf,
        place_what: String,
    },
    #[error("{what} \"{}\" is not inside {setting} (\"{}\"), where restores of roles without superuser rights must go", path.display(), dir.display())]
    OutsideConfinement {
        what: String,
        path: PathBuf,
        setting: String,
        dir: PathBuf,
    },
}

impl ForbiddenPlace {
    /// `path` resolved (kept as given when it cannot be), named `what`.
    pub fn new(path: &Path, what: impl Into<String>) -> Self {
        ForbiddenPlace {
            path: resolved(path).unwrap_or_else(|| path.to_owned()),
            what: what.into(),
        }
    }
}

impl DestinationRules {
    /// Checks one destination (`what` names it for errors: "target_dir")
    /// and returns it resolved: the path to create and write.
    pub fn check(&self, what: &str, path: &Path) -> Result<PathBuf, DestinationError> {
        let Some(dir) = resolved(path) else {
            return Err(DestinationError::NotAbsolute {
                what: what.to_owned(),
                path: path.to_owned(),
            });
        };
        if let Some((setting, confinement)) = &self.confined_to {
            if dir == *confinement || !dir.starts_with(confinement) {
                return Err(DestinationError::OutsideConfinement {
                    what: what.to_owned(),
                    path: dir,
                    setting: setting.clone(),
                    dir: confinement.clone(),
                });
            }
        }
        if let Some(place) = self
            .forbidden
            .iter()
            .find(|place| overlapping(&dir, &place.path))
        {
            return Err(DestinationError::Overlaps {
                what: what.to_owned(),
                path: dir,
                place: place.path.clone(),
                place_what: place.what.clone(),
            });
        }
        Ok(dir)
    }
}

/// The places of one data directory a restore must stay apart from: the
/// directory, the location of each of its tablespaces, and every directory
/// its configuration comes from, starting at `configuration` (the files
/// the server reads first, each with its syntax) and following includes.
pub fn data_directory_places(
    data_dir: &Path,
    configuration: &[(PathBuf, Syntax)],
) -> Vec<ForbiddenPlace> {
    let mut places = vec![ForbiddenPlace::new(data_dir, "the data directory")];
    if let Ok(entries) = std::fs::read_dir(data_dir.join("pg_tblspc")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            places.push(ForbiddenPlace::new(
                &entry.path(),
                format!("the location of tablespace {name} of the data directory"),
            ));
        }
    }
    for dir in configuration_directories(configuration) {
        places.push(ForbiddenPlace::new(
            &dir,
            "a directory the data directory's configuration comes from",
        ));
    }
    places
}

/// `path` made absolute and free of symlinks and `..` as far as it exists
/// (the rest appended as written), so that two paths can be compared for
/// nesting even before the second one is created. None for a relative
/// path or one with `..`.
pub fn resolved(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            return Some(
                rest.iter()
                    .rev()
                    .fold(canonical, |acc: PathBuf, part| acc.join(part)),
            );
        }
        rest.push(existing.file_name()?.to_os_string());
        existing = existing.parent()?.to_path_buf();
    }
}

/// Whether one of two resolved paths lies inside the other (or they are
/// the same).
pub fn overlapping(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(places: &[&Path]) -> DestinationRules {
        DestinationRules {
            forbidden: places
                .iter()
                .map(|p| ForbiddenPlace::new(p, "the repository"))
                .collect(),
            confined_to: None,
        }
    }

    #[test]
    fn a_data_directory_keeps_restores_from_its_tablespaces_and_configuration() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().canonicalize().unwrap();
        let data = root.join("data");
        let space = root.join("space");
        let conf_d = root.join("conf.d");
        for dir in [data.join("pg_tblspc"), space.clone(), conf_d.clone()] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::os::unix::fs::symlink(&space, data.join("pg_tblspc/16400")).unwrap();
        std::fs::write(
            data.join("postgresql.conf"),
            format!("include_dir '{}'\n", conf_d.display()),
        )
        .unwrap();
        let rules = DestinationRules {
            forbidden: data_directory_places(
                &data,
                &[(data.join("postgresql.conf"), Syntax::Settings)],
            ),
            confined_to: None,
        };
        for (bad, what) in [
            (data.join("x"), "the data directory"),
            (space.join("x"), "tablespace 16400"),
            (conf_d.join("x"), "configuration comes from"),
        ] {
            let error = rules.check("target_dir", &bad).unwrap_err().to_string();
            assert!(error.contains(what), "{bad:?}: {error}");
        }
        assert!(rules.check("target_dir", &root.join("new")).is_ok());
    }

    #[test]
    fn destinations_stay_apart_from_forbidden_places() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().canonicalize().unwrap();
        let repo = root.join("repo");
        std::fs::create_dir(&repo).unwrap();
        let rules = rules(&[&repo]);
        assert_eq!(
            rules.check("target_dir", &root.join("new")).unwrap(),
            root.join("new")
        );
        for bad in [repo.clone(), repo.join("backups/x"), root.clone()] {
            let error = rules.check("target_dir", &bad).unwrap_err();
            assert!(
                matches!(error, DestinationError::Overlaps { .. }),
                "{bad:?}: {error}"
            );
        }
        // A link to inside the repository is seen through.
        std::os::unix::fs::symlink(&repo, root.join("link")).unwrap();
        assert!(rules.check("target_dir", &root.join("link/x")).is_err());
        for bad in ["relative/dir", "/tmp/../etc"] {
            assert!(matches!(
                rules.check("target_dir", Path::new(bad)),
                Err(DestinationError::NotAbsolute { .. })
            ));
        }
    }

    #[test]
    fn confinement_requires_a_path_strictly_inside() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().canonicalize().unwrap();
        let rules = DestinationRules {
            forbidden: Vec::new(),
            confined_to: Some((
                "blockbackup.restore_directory".into(),
                root.join("restores"),
            )),
        };
        assert!(rules.check("target_dir", &root.join("restores/a")).is_ok());
        for bad in [
            root.join("restores"),
            root.join("restoresX/a"),
            root.join("other"),
        ] {
            assert!(matches!(
                rules.check("target_dir", &bad),
                Err(DestinationError::OutsideConfinement { .. })
            ));
        }
    }
}
