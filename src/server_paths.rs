//! Where this server keeps its files.

use std::path::PathBuf;

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

/// A client program of this server's own version (pg_dump, psql): the one
/// next to postgres.
pub fn client_program(name: &str) -> PathBuf {
    let server = unsafe { std::ffi::CStr::from_ptr((&raw const pg_sys::my_exec_path).cast()) };
    let server = PathBuf::from(server.to_string_lossy().into_owned());
    server
        .parent()
        .unwrap_or(std::path::Path::new("/"))
        .join(name)
}
