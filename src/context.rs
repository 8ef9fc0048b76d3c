//! What the current thread (and process) is doing for the library.
//!
//! A process that forks after starting a runtime has a child without the runtime's threads:
//! every call there would wait for threads that do not exist. A `pthread_atfork` handler marks
//! the child, and every exported function refuses to work in it ([`forked`]).
//!
//! Three facts decide whether a call may block or must be refused:
//! - which runtime owns this thread (set when a runtime starts the thread), so that a runtime
//!   shut down from one of its own threads does not wait for itself;
//! - whether this thread is an async worker (set when it first parks, which only workers do),
//!   so that waiting there is refused instead of stalling every task on the worker;
//! - which task's job or completion callback this thread is running, so that a task waiting for
//!   itself is refused instead of deadlocking.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::thread::LocalKey;

static FORKED: AtomicBool = AtomicBool::new(false);

extern "C" fn in_child_after_fork() {
    FORKED.store(true, Ordering::Relaxed);
}

/// Makes a child forked from now on refuse every call. Called before the first thread starts.
pub(crate) fn watch_for_fork() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic. Failure (ENOMEM) would
        // leave children unprotected; nothing else depends on it.
        unsafe { libc::pthread_atfork(None, None, Some(in_child_after_fork)) };
    });
}

/// True in a child process forked after a runtime started.
pub(crate) fn forked() -> bool {
    FORKED.load(Ordering::Relaxed)
}

thread_local! {
    static RUNTIME_SERIAL: Cell<u64> = const { Cell::new(0) };
    static ASYNC_WORKER: Cell<bool> = const { Cell::new(false) };
    static CURRENT_TASK: Cell<u64> = const { Cell::new(0) };
}

/// Marks the calling thread as owned by the runtime with this serial number.
pub(crate) fn set_runtime_serial(serial: u64) {
    let _ = RUNTIME_SERIAL.try_with(|s| s.set(serial));
}

/// The serial number of the runtime that owns this thread, or 0.
pub(crate) fn runtime_serial() -> u64 {
    RUNTIME_SERIAL.try_with(Cell::get).unwrap_or(0)
}

/// True on an async worker thread of any runtime.
pub(crate) fn on_async_worker() -> bool {
    ASYNC_WORKER.try_with(Cell::get).unwrap_or(false)
}

/// Marks this thread as an async worker. True the first time only.
pub(crate) fn mark_async_worker() -> bool {
    ASYNC_WORKER.try_with(|w| !w.replace(true)).unwrap_or(false)
}

/// Runs `f` with `key` set to `value`, then puts the previous value back (also on unwind).
fn with_set<R>(key: &'static LocalKey<Cell<u64>>, value: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(&'static LocalKey<Cell<u64>>, u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = self.0.try_with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(key, key.try_with(|c| c.replace(value)).unwrap_or(0));
    f()
}

/// Runs `f` as the code of task `id` (its job or its completion callback).
pub(crate) fn as_task<R>(id: u64, f: impl FnOnce() -> R) -> R {
    with_set(&CURRENT_TASK, id, f)
}

/// Runs `f` as code of the runtime with this serial number on a thread it does not own (the
/// callbacks of a job cancelled while queued, on the cancelling thread), so that a shutdown of
/// that runtime from inside `f` does not wait, as it would wait for `f` itself.
pub(crate) fn as_runtime<R>(serial: u64, f: impl FnOnce() -> R) -> R {
    with_set(&RUNTIME_SERIAL, serial, f)
}

/// The id of the task whose code runs on this thread, or 0.
pub(crate) fn current_task() -> u64 {
    CURRENT_TASK.try_with(Cell::get).unwrap_or(0)
}
