//! Locking helpers shared by the plumbing.
//!
//! Every critical section in the library leaves its data consistent before anything in it can
//! panic, so a poisoned mutex carries no information: [`lock!`](lock) takes it anyway rather
//! than turning one caught panic into a failure of every later call.
//!
//! They are macros so that the same code serves std's mutexes and condition variables and, in
//! the model checks of the completion state machine (`--cfg tb_loom`), loom's.

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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An adaptive spin: how long to busy-wait for an event before sleeping on a condition
/// variable. Each spin that sees the event doubles the next one, each that does not halves it,
/// within `[min_ns, max_ns]`: it stays long where spinning pays (a quick job on an idle CPU) and
/// shrinks where it would only take CPU from the threads that cause the event (a busy machine,
/// long tasks). The floor keeps it short but never zero, so that it can grow back.
pub(crate) struct Spin {
    ns: AtomicU64,
    min_ns: u64,
    max_ns: u64,
}

impl Spin {
    pub(crate) const fn new(min_ns: u64, max_ns: u64) -> Spin {
        Spin {
            ns: AtomicU64::new(max_ns),
            min_ns,
            max_ns,
        }
    }

    /// Busy-waits until `done()` or the spin's time (or `deadline`) is up; returns `done()`.
    pub(crate) fn spin(&self, deadline: Option<Instant>, done: impl Fn() -> bool) -> bool {
        let budget = self.ns.load(Ordering::Relaxed);
        let until = Instant::now() + Duration::from_nanos(budget);
        let until = deadline.map_or(until, |d| d.min(until));
        while !done() && Instant::now() < until {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
        let caught = done();
        let next = if caught { budget * 2 } else { budget / 2 };
        self.ns
            .store(next.clamp(self.min_ns, self.max_ns), Ordering::Relaxed);
        caught
    }
}
