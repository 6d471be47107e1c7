//! Paths read from a catalog or a task list are joined to a directory we
//! write into or read from; only relative paths of plain components may be,
//! so that nothing reaches outside it.

use std::path::{Component, Path};

/// `path` as a relative path made only of normal components, or None if it
/// could reach outside the directory it is joined to.
pub fn safe_relative_path(path: &str) -> Option<&Path> {
    let path = Path::new(path);
    let normal = !path.as_os_str().is_empty()
        && path
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
    normal.then_some(path)
}
