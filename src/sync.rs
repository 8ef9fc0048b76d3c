//! Locking helpers shared by the plumbing.
//!
//! Every critical section in the library leaves its data consistent before anything in it can
//! panic, so a poisoned mutex carries no information: [`lock`] takes it anyway rather than
//! turning one caught panic into a failure of every later call.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Locks `mutex`, ignoring poisoning.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits once on `cv` until notified (or spuriously woken) or until `deadline` (None: no
/// limit). Returns the guard and whether the deadline had already passed, in which case it did
/// not wait: the caller's loop ends there.
pub(crate) fn wait_until<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
) -> (MutexGuard<'a, T>, bool) {
    let Some(deadline) = deadline else {
        return (cv.wait(guard).unwrap_or_else(|p| p.into_inner()), false);
    };
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => {
            let (guard, _) = cv
                .wait_timeout(guard, left)
                .unwrap_or_else(|p| p.into_inner());
            (guard, false)
        }
        _ => (guard, true),
    }
}
