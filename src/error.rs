//! Status codes, their names and messages, and the thread-local last error.
//!
//! Every fallible exported function returns a `tb_status`. When it fails it also records an
//! [`Error`] in a thread-local slot; `tb_last_error` formats it on demand, so a failing call pays
//! for a few stores, not for string formatting.

use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::fmt;

/// A status code: values `>= 0` are outcomes, values `< 0` are errors.
///
/// It is a plain `int32_t` so that codes added by later versions pass through older code
/// unchanged; the `TB_*` constants are its values.
#[allow(non_camel_case_types)]
pub type tb_status = i32;

/// Success.
pub const TB_OK: tb_status = 0;
/// The task has not finished yet.
pub const TB_PENDING: tb_status = 1;
/// The wait ended because its timeout passed, not because the task finished.
pub const TB_TIMED_OUT: tb_status = 2;
/// A pointer argument that must not be NULL was NULL.
pub const TB_ERR_NULL: tb_status = -1;
/// An argument is out of range, or the call is not allowed in this situation.
pub const TB_ERR_INVALID_ARG: tb_status = -2;
/// A handle is zero, forged, released, stale, or of the wrong type.
pub const TB_ERR_BAD_HANDLE: tb_status = -3;
/// The task was cancelled before it ran to the end.
pub const TB_ERR_CANCELLED: tb_status = -4;
/// The task's callback returned a non-zero code (see `tb_outcome.code`).
pub const TB_ERR_CALLBACK: tb_status = -5;
/// A Rust panic inside the library was caught; the call or task did not complete normally.
pub const TB_ERR_PANIC: tb_status = -6;
/// The runtime is shut down or shutting down.
pub const TB_ERR_SHUTDOWN: tb_status = -7;
/// The call would block an async worker thread, so it was refused.
pub const TB_ERR_ON_RUNTIME_THREAD: tb_status = -8;
/// The job is running and cannot be stopped, or a queue limit was reached.
pub const TB_ERR_BUSY: tb_status = -9;
/// The action was already done: the task already finished, or a callback is already registered.
pub const TB_ERR_ALREADY: tb_status = -10;
/// The operating system refused a resource (a thread, a file descriptor, memory).
pub const TB_ERR_OS: tb_status = -11;
/// The call was made in a child process forked after a runtime started: the runtime's threads
/// do not exist there, so every call is refused (exec a new program, or use the parent).
pub const TB_ERR_FORKED: tb_status = -12;

/// Every status with its name and one-sentence message, in one place.
const STATUSES: &[(tb_status, &CStr, &CStr)] = &[
    (TB_OK, c"TB_OK", c"Success."),
    (TB_PENDING, c"TB_PENDING", c"The task has not finished yet."),
    (
        TB_TIMED_OUT,
        c"TB_TIMED_OUT",
        c"The timeout passed before the task finished.",
    ),
    (
        TB_ERR_NULL,
        c"TB_ERR_NULL",
        c"A required pointer argument was NULL.",
    ),
    (
        TB_ERR_INVALID_ARG,
        c"TB_ERR_INVALID_ARG",
        c"An argument was out of range or not allowed here.",
    ),
    (
        TB_ERR_BAD_HANDLE,
        c"TB_ERR_BAD_HANDLE",
        c"The handle is zero, forged, released, stale or of the wrong type.",
    ),
    (
        TB_ERR_CANCELLED,
        c"TB_ERR_CANCELLED",
        c"The task was cancelled.",
    ),
    (
        TB_ERR_CALLBACK,
        c"TB_ERR_CALLBACK",
        c"The task's callback returned a non-zero code.",
    ),
    (
        TB_ERR_PANIC,
        c"TB_ERR_PANIC",
        c"An internal panic was caught; the operation did not complete.",
    ),
    (
        TB_ERR_SHUTDOWN,
        c"TB_ERR_SHUTDOWN",
        c"The runtime is shut down or shutting down.",
    ),
    (
        TB_ERR_ON_RUNTIME_THREAD,
        c"TB_ERR_ON_RUNTIME_THREAD",
        c"The call would block an async worker thread and was refused.",
    ),
    (
        TB_ERR_BUSY,
        c"TB_ERR_BUSY",
        c"The job is running and cannot be stopped, or a queue limit was reached.",
    ),
    (
        TB_ERR_ALREADY,
        c"TB_ERR_ALREADY",
        c"The task already finished or the callback is already registered.",
    ),
    (
        TB_ERR_OS,
        c"TB_ERR_OS",
        c"The operating system refused a resource.",
    ),
    (
        TB_ERR_FORKED,
        c"TB_ERR_FORKED",
        c"The library cannot be used in a child forked after a runtime started.",
    ),
];

fn lookup(status: tb_status) -> Option<&'static (tb_status, &'static CStr, &'static CStr)> {
    STATUSES.iter().find(|(s, _, _)| *s == status)
}

/// The detail of a failure, kept unformatted until someone asks for it.
#[derive(Debug)]
pub(crate) enum Detail {
    Static(&'static str),
    Text(String),
    Handle {
        kind: &'static str,
        id: u64,
        why: &'static str,
    },
}

/// A failed call: the status it returns and what went wrong.
#[derive(Debug)]
pub(crate) struct Error {
    pub(crate) status: tb_status,
    detail: Detail,
}

impl Error {
    pub(crate) fn new(status: tb_status, what: &'static str) -> Self {
        Error {
            status,
            detail: Detail::Static(what),
        }
    }

    pub(crate) fn text(status: tb_status, what: String) -> Self {
        Error {
            status,
            detail: Detail::Text(what),
        }
    }

    pub(crate) fn bad_handle(kind: &'static str, id: u64, why: &'static str) -> Self {
        Error {
            status: TB_ERR_BAD_HANDLE,
            detail: Detail::Handle { kind, id, why },
        }
    }

    pub(crate) fn null(argument: &'static str) -> Self {
        Error::text(TB_ERR_NULL, format!("argument `{argument}` is NULL"))
    }

    pub(crate) fn invalid(what: String) -> Self {
        Error::text(TB_ERR_INVALID_ARG, what)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Detail::Static(s) => f.write_str(s),
            Detail::Text(s) => f.write_str(s),
            Detail::Handle { kind, id, why } => write!(f, "{kind} handle {id:#018x} {why}"),
        }
    }
}

struct LastError {
    function: &'static str,
    error: Error,
}

thread_local! {
    static LAST_ERROR: RefCell<Option<LastError>> = const { RefCell::new(None) };
}

/// Records `error` as this thread's last failure, raised by `function`, and returns its status.
pub(crate) fn record(function: &'static str, error: Error) -> tb_status {
    let status = error.status;
    // A thread being torn down has no slot left; the status still reaches the caller.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = Some(LastError { function, error });
        }
    });
    status
}

fn last_error_text() -> Option<String> {
    LAST_ERROR
        .try_with(|slot| {
            slot.try_borrow().ok().and_then(|last| {
                last.as_ref().map(|last| {
                    let name = lookup(last.error.status)
                        .map(|(_, name, _)| name.to_str().unwrap_or("TB_UNKNOWN"))
                        .unwrap_or("TB_UNKNOWN");
                    format!("{}: {} ({})", last.function, last.error, name)
                })
            })
        })
        .ok()
        .flatten()
}

/// Returns the name of a status code, such as `"TB_ERR_BAD_HANDLE"`.
///
/// Unknown values give `"TB_UNKNOWN"`. The string is static: never free it. Any thread.
#[no_mangle]
pub extern "C" fn tb_status_name(status: tb_status) -> *const c_char {
    let unknown = c"TB_UNKNOWN".as_ptr();
    crate::panic::boundary_value("tb_status_name", unknown, || {
        lookup(status).map_or(unknown, |(_, name, _)| name.as_ptr())
    })
}

/// Returns a one-sentence description of a status code.
///
/// Unknown values give a sentence saying so. The string is static: never free it. Any thread.
#[no_mangle]
pub extern "C" fn tb_status_message(status: tb_status) -> *const c_char {
    let unknown = c"Unknown status code.".as_ptr();
    crate::panic::boundary_value("tb_status_message", unknown, || {
        lookup(status).map_or(unknown, |(_, _, message)| message.as_ptr())
    })
}

/// Copies the calling thread's last failure, in detail, into `buf`.
///
/// The text names the function that failed, the argument or handle at fault and why, and ends
/// with the status name. It is NUL-terminated and truncated to fit `len` bytes (nothing is
/// written when `buf` is NULL or `len` is 0). Returns the full length of the message without
/// its NUL, so a return value `>= len` means the copy was truncated; 0 means this thread has
/// had no failure. Successful calls do not clear it. Each thread has its own.
#[no_mangle]
pub extern "C" fn tb_last_error(buf: *mut c_char, len: usize) -> usize {
    crate::panic::boundary_value("tb_last_error", 0, || {
        let Some(text) = last_error_text() else {
            return 0;
        };
        if !buf.is_null() && len > 0 {
            let n = text.len().min(len - 1);
            // SAFETY: the caller promises `buf` has room for `len` bytes; we write n + 1 <= len.
            unsafe {
                std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
                *buf.add(n) = 0;
            }
        }
        text.len()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_a_distinct_name_and_message() {
        for (i, (a, name, message)) in STATUSES.iter().enumerate() {
            assert!(name.to_str().unwrap().starts_with("TB_"));
            assert!(message.to_str().unwrap().ends_with('.'));
            for (b, other, _) in &STATUSES[i + 1..] {
                assert_ne!(a, b);
                assert_ne!(name, other);
            }
        }
    }
}
