//! `_PG_archive_module_init`: PostgreSQL 15 passes a struct to fill in and
//! calls the callbacks without state; 16 changed it to a returned constant
//! struct whose callbacks get an `ArchiveModuleState`. pgrx binds the 15
//! header only, so the 16-and-later struct is declared here as
//! `archive/archive_module.h` declares it.

use std::ffi::{c_char, CStr};

use pgrx::pg_guard;

use super::push;

fn text(pointer: *const c_char) -> Option<String> {
    if pointer.is_null() {
        return None;
    }
    Some(
        unsafe { CStr::from_ptr(pointer) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// One call of the archiver: `file` is the name, `path` where it is.
fn archive(file: *const c_char, path: *const c_char) -> bool {
    match (text(file), text(path)) {
        (Some(file), Some(path)) => push::archive_file(&file, &path),
        _ => false,
    }
}

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
mod callbacks {
    use super::*;
    use pgrx::pg_sys;

    #[pg_guard]
    unsafe extern "C-unwind" fn check_configured() -> bool {
        push::check_configured()
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn archive_file(file: *const c_char, path: *const c_char) -> bool {
        archive(file, path)
    }

    #[pg_guard]
    #[no_mangle]
    pub unsafe extern "C-unwind" fn _PG_archive_module_init(
        callbacks: *mut pg_sys::ArchiveModuleCallbacks,
    ) {
        unsafe {
            (*callbacks).check_configured_cb = Some(check_configured);
            (*callbacks).archive_file_cb = Some(archive_file);
            (*callbacks).shutdown_cb = None;
        }
    }
}

#[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
mod callbacks {
    use super::*;
    use std::ffi::c_void;

    #[repr(C)]
    pub struct ArchiveModuleState {
        private_data: *mut c_void,
    }

    #[repr(C)]
    pub struct ArchiveModuleCallbacks {
        startup_cb: Option<unsafe extern "C-unwind" fn(*mut ArchiveModuleState)>,
        check_configured_cb: Option<unsafe extern "C-unwind" fn(*mut ArchiveModuleState) -> bool>,
        archive_file_cb: Option<
            unsafe extern "C-unwind" fn(
                *mut ArchiveModuleState,
                *const c_char,
                *const c_char,
            ) -> bool,
        >,
        shutdown_cb: Option<unsafe extern "C-unwind" fn(*mut ArchiveModuleState)>,
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn check_configured(_state: *mut ArchiveModuleState) -> bool {
        push::check_configured()
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn archive_file(
        _state: *mut ArchiveModuleState,
        file: *const c_char,
        path: *const c_char,
    ) -> bool {
        archive(file, path)
    }

    static CALLBACKS: ArchiveModuleCallbacks = ArchiveModuleCallbacks {
        startup_cb: None,
        check_configured_cb: Some(check_configured),
        archive_file_cb: Some(archive_file),
        shutdown_cb: None,
    };

    #[pg_guard]
    #[no_mangle]
    pub unsafe extern "C-unwind" fn _PG_archive_module_init() -> *const ArchiveModuleCallbacks {
        &CALLBACKS
    }
}
