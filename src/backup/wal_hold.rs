//! Keeps the WAL a backup needs (from its start to its stop) from being
//! removed while the backup runs: a temporary replication slot of this
//! backend, reserved before the backup starts. PostgreSQL drops it if the
//! backend errors out or exits; we drop it when the backup ends.

use crate::replication_slot::{self, RS_TEMPORARY};

pub struct WalHold {
    name: std::ffi::CString,
}

impl WalHold {
    pub fn reserve() -> Self {
        let pid = unsafe { pgrx::pg_sys::MyProcPid };
        let name = std::ffi::CString::new(format!("pg_blockbackup_backup_{pid}"))
            .unwrap_or_else(|_| unreachable!("a slot name from digits has no NUL"));
        replication_slot::create_reserving_wal(&name, RS_TEMPORARY);
        WalHold { name }
    }
}

impl Drop for WalHold {
    fn drop(&mut self) {
        // While an error unwinds, PostgreSQL's own error cleanup releases
        // and drops this backend's temporary slot; calling into it here,
        // with the error still pending, would not be safe.
        if !std::thread::panicking() {
            replication_slot::release_and_drop(&self.name);
        }
    }
}
