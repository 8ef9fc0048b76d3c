//! C data handed to the library together with its destructor.
//!
//! As in wasmtime's C API, the library stores `{data, finalizer}` and runs the finalizer when
//! the owner is dropped, so "`free_arg` runs exactly once" is a property of Rust ownership rather
//! than of every code path remembering to call it.

use std::ffi::c_void;

use crate::stall::{self, TB_STALL_FREE};

/// Destroys a user `arg`. Called exactly once per accepted submission, never for a call that
/// failed. NULL means the library does not own `arg`.
#[allow(non_camel_case_types)]
pub type tb_free_fn = Option<unsafe extern "C" fn(arg: *mut c_void)>;

/// A user pointer and the function that frees it; dropping it frees the pointer.
pub(crate) struct UserArg {
    ptr: *mut c_void,
    free: tb_free_fn,
}

// SAFETY: the C API documents that `arg` is handed to another thread (a blocking thread or an
// async worker) and freed there; the caller promises that this is allowed for its data.
unsafe impl Send for UserArg {}

impl UserArg {
    pub(crate) fn new(ptr: *mut c_void, free: tb_free_fn) -> Self {
        UserArg { ptr, free }
    }

    pub(crate) fn ptr(&self) -> *mut c_void {
        self.ptr
    }

    /// Gives `arg` back to the caller without freeing it: the submission failed.
    pub(crate) fn disarm(mut self) {
        self.free = None;
    }

    /// Frees `arg` now, if the library owns it; dropping it later frees nothing.
    pub(crate) fn free_now(&mut self) {
        if let Some(free) = self.free.take() {
            stall::timed(TB_STALL_FREE, free as usize, self.ptr, || {
                // SAFETY: `free` is the caller's destructor for `ptr`, called exactly once.
                unsafe { free(self.ptr) }
            })
        }
    }
}

impl Drop for UserArg {
    fn drop(&mut self) {
        self.free_now();
    }
}
