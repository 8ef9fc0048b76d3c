//! Runtime metrics: the pools' state now, and counters since the runtime started.
//!
//! Counters are relaxed atomics bumped on the paths that already do the work (a submission, a
//! job's end, a timer's end); gauges are read from the pool under its lock only when asked.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::error::{tb_status, Error, TB_OK};
use crate::panic::boundary;
use crate::runtime::{self, tb_runtime};
use crate::task::TASKS;

/// The state and counters of a runtime, filled by `tb_runtime_metrics`.
///
/// Set `struct_size` to `sizeof(tb_metrics)` before the call: a caller built against an older,
/// smaller struct gets the fields it knows. Counters (`jobs_*`, `queue_wait_*`) count since the
/// runtime started and are up to date by the time the task they count is finished; gauges
/// (`blocking_*`, `timers_active`, `tasks_alive`) count a task until just after it finished.
/// Once no job moves, `jobs_submitted == jobs_completed + jobs_cancelled + blocking_queued +
/// blocking_running`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct tb_metrics {
    /// `sizeof(tb_metrics)` as the caller knows it: set it before the call.
    pub struct_size: u32,
    /// Async worker threads.
    pub worker_threads: u32,
    /// Blocking-pool threads alive now (running a job or idle).
    pub blocking_threads: u32,
    /// Blocking-pool threads alive and waiting for work.
    pub blocking_idle: u32,
    /// Blocking jobs waiting for a thread.
    pub blocking_queued: u64,
    /// Blocking jobs running now.
    pub blocking_running: u64,
    /// Blocking jobs accepted by `tb_spawn_blocking`.
    pub jobs_submitted: u64,
    /// Blocking jobs whose callback ran and returned (whatever it returned).
    pub jobs_completed: u64,
    /// Of `jobs_completed`, those whose callback returned non-zero (or panicked inside the
    /// library).
    pub jobs_failed: u64,
    /// Blocking jobs that never ran: cancelled while queued, or dropped by shutdown.
    pub jobs_cancelled: u64,
    /// Sleeps and timers not yet ended.
    pub timers_active: u64,
    /// Tasks of this runtime not yet finished: queued and running jobs, jobs a cancel is still
    /// ending (their `free_arg` or completion callback runs), and active timers.
    pub tasks_alive: u64,
    /// Task handles not yet released, in the whole process (all runtimes).
    pub task_handles: u64,
    /// Total time blocking jobs spent queued, submission to start, in microseconds.
    pub queue_wait_total_us: u64,
    /// Longest time a blocking job spent queued, in microseconds.
    pub queue_wait_max_us: u64,
    /// Callbacks that ran on an async worker for longer than the stall threshold.
    pub stalls: u64,
    /// The longest such callback so far, in microseconds (including one still running).
    pub longest_stall_us: u64,
    /// The most blocking-pool threads alive at once since the runtime started.
    pub blocking_threads_peak: u32,
}

/// Counters shared by a runtime with its pool, its tasks and its watchdog.
#[derive(Default)]
pub(crate) struct Counters {
    /// Sleeps and timers not yet ended.
    pub(crate) async_tasks: AtomicUsize,
    pub(crate) jobs_completed: AtomicU64,
    pub(crate) jobs_failed: AtomicU64,
    pub(crate) jobs_cancelled: AtomicU64,
    pub(crate) queue_wait_total_us: AtomicU64,
    pub(crate) queue_wait_max_us: AtomicU64,
    pub(crate) stalls: AtomicU64,
    pub(crate) longest_stall_us: AtomicU64,
}

impl Counters {
    /// A blocking job started after waiting `queued_us` in the queue. A read-modify-write that
    /// would change nothing is skipped: a drainer does this for every job, and each one is a
    /// locked instruction.
    pub(crate) fn job_started(&self, queued_us: u64) {
        if queued_us > 0 {
            self.queue_wait_total_us
                .fetch_add(queued_us, Ordering::Relaxed);
        }
        if queued_us > self.queue_wait_max_us.load(Ordering::Relaxed) {
            self.queue_wait_max_us
                .fetch_max(queued_us, Ordering::Relaxed);
        }
    }

    /// A blocking job's callback returned; `failed` if it reported an error.
    pub(crate) fn job_completed(&self, failed: bool) {
        self.jobs_completed.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.jobs_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Fills `*out` with the state and counters of runtime `rt`.
///
/// Cheap enough to call often: it reads atomics and takes the blocking pool's lock once. Set
/// `out->struct_size` first. Errors: `TB_ERR_NULL` (`out`), `TB_ERR_INVALID_ARG`
/// (`struct_size`), `TB_ERR_BAD_HANDLE`, `TB_ERR_SHUTDOWN`. Any thread.
#[no_mangle]
pub extern "C" fn tb_runtime_metrics(rt: tb_runtime, out: *mut tb_metrics) -> tb_status {
    boundary("tb_runtime_metrics", || {
        let size = versioned_size::<tb_metrics>(out.cast(), "tb_metrics")?;
        let runtime = runtime::lookup(rt)?;
        let c = &runtime.counters;
        let pool = runtime.pool.snapshot();
        let timers = c.async_tasks.load(Ordering::Relaxed) as u64;
        let metrics = tb_metrics {
            struct_size: size as u32,
            worker_threads: runtime.workers,
            blocking_threads: pool.threads,
            blocking_idle: pool.idle,
            blocking_queued: pool.queued,
            blocking_running: pool.running,
            jobs_submitted: pool.submitted,
            jobs_completed: c.jobs_completed.load(Ordering::Relaxed),
            jobs_failed: c.jobs_failed.load(Ordering::Relaxed),
            jobs_cancelled: c.jobs_cancelled.load(Ordering::Relaxed),
            timers_active: timers,
            tasks_alive: pool.queued + pool.running + pool.ending + timers,
            task_handles: TASKS.live() as u64,
            queue_wait_total_us: c.queue_wait_total_us.load(Ordering::Relaxed),
            queue_wait_max_us: c.queue_wait_max_us.load(Ordering::Relaxed),
            stalls: c.stalls.load(Ordering::Relaxed),
            longest_stall_us: c.longest_stall_us.load(Ordering::Relaxed),
            blocking_threads_peak: pool.peak_threads,
        };
        // SAFETY: `out` is non-NULL and has `size <= sizeof(tb_metrics)` bytes.
        unsafe { write_versioned(&metrics, out.cast(), size) };
        Ok(TB_OK)
    })
}

/// Checks the `struct_size` a caller set in a versioned out-struct of type `T` and returns it.
///
/// A size from an older, smaller struct is accepted (fields past it are not written); a size
/// that cannot be one of ours is refused.
pub(crate) fn versioned_size<T>(out: *const u32, name: &str) -> Result<usize, Error> {
    if out.is_null() {
        return Err(Error::null("out"));
    }
    // SAFETY: checked non-NULL; `struct_size` is the first field of every versioned struct.
    let size = unsafe { out.read() } as usize;
    let max = std::mem::size_of::<T>();
    if size < 8 || size > max {
        return Err(Error::invalid(format!(
            "out->struct_size is {size}; set it to sizeof({name}) = {max}"
        )));
    }
    Ok(size)
}

/// Copies the first `size` bytes of `value` to `out`.
///
/// # Safety
/// `out` must have room for `size` bytes, and `size <= size_of::<T>()`.
pub(crate) unsafe fn write_versioned<T>(value: &T, out: *mut u8, size: usize) {
    std::ptr::copy_nonoverlapping(std::ptr::from_ref(value).cast::<u8>(), out, size);
}
