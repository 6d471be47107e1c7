//! A condition variable in shared memory, for the tables there that
//! sessions wait on (summaries written, dump agents changed).

use pgrx::pg_sys;

/// A condition variable in shared memory: waiters sleep on it (with a
/// timeout, since a wake-up can be missed between check and sleep) until
/// someone broadcasts.
#[repr(C)]
pub struct SharedCondition(std::cell::UnsafeCell<pg_sys::ConditionVariable>);

impl SharedCondition {
    /// Shared memory starts zeroed; this finishes the setup.
    pub unsafe fn init(this: *mut SharedCondition) {
        unsafe { pg_sys::ConditionVariableInit((*this).0.get()) };
    }

    pub fn broadcast(&self) {
        unsafe { pg_sys::ConditionVariableBroadcast(self.0.get()) };
    }

    /// Sleeps until a broadcast or `timeout_ms` passes; raises on a cancel
    /// or terminate request of this backend.
    pub fn sleep(&self, timeout_ms: i64) {
        unsafe {
            pg_sys::ConditionVariableTimedSleep(
                self.0.get(),
                timeout_ms as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
        }
    }

    /// Ends the sleeping that `sleep` began (call once the wait is over).
    pub fn stop_sleeping(&self) {
        unsafe { pg_sys::ConditionVariableCancelSleep() };
    }
}
