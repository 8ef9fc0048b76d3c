//! Locking helpers shared by the plumbing.
//!
//! Every critical section in the library leaves its data consistent before anything in it can
//! panic, so a poisoned mutex carries no information: [`lock!`](lock) takes it anyway rather
//! than turning one caught panic into a failure of every later call.
//!
//! They are macros so that the same code serves std's mutexes and condition variables and, in
//! the model checks of the completion state machine (`--cfg tb_loom`), loom's.

use std::sync::OnceLock;
use std::time::Instant;

/// Locks a mutex, ignoring poisoning.
macro_rules! lock {
    ($mutex:expr) => {
        $mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
}

/// Waits once on a condition variable with its mutex guard, until notified (or spuriously
/// woken) or until a deadline (`Option<Instant>`, None: no limit). Evaluates to the guard and
/// whether the deadline had already passed, in which case it did not wait: the caller's loop
/// ends there.
macro_rules! wait_until {
    ($cv:expr, $guard:expr, $deadline:expr) => {{
        let guard = $guard;
        match $deadline {
            None => ($cv.wait(guard).unwrap_or_else(|p| p.into_inner()), false),
            Some(deadline) => match deadline.checked_duration_since(std::time::Instant::now()) {
                Some(left) if !left.is_zero() => {
                    let (guard, _) = $cv
                        .wait_timeout(guard, left)
                        .unwrap_or_else(|p| p.into_inner());
                    (guard, false)
                }
                _ => (guard, true),
            },
        }
    }};
}

pub(crate) use {lock, wait_until};

/// Nanoseconds on a monotonic clock since the library's first use, never 0: a time that fits
/// an atomic.
pub(crate) fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}
