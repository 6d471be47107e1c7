//! Where this server keeps its files, and the checks that keep a user's
//! directories (repository, restore target) apart from them.

use std::path::{Component, Path, PathBuf};

use pgrx::pg_sys;

pub fn data_directory() -> PathBuf {
    let data_dir = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) };
    PathBuf::from(data_dir.to_string_lossy().into_owned())
}

/// The per-version directory inside each tablespace, e.g. PG_15_202209061.
pub fn tablespace_version_directory() -> String {
    format!(
        "PG_{}_{}",
        pg_sys::PG_MAJORVERSION.to_string_lossy(),
        pg_sys::CATALOG_VERSION_NO
    )
}

/// `path` made absolute and free of symlinks and `..` as far as it exists
/// (the rest appended as written, without `..`), so that two paths can be
/// compared for nesting even before the second one is created.
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

/// Whether one of the two resolved paths lies inside the other (or they
/// are the same).
pub fn overlapping(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}
