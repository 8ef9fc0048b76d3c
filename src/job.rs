//! Blocking jobs: C callbacks run on the runtime's blocking pool (`tb_spawn_blocking`).

use std::cell::Cell;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::clock::{self, nanos_between};
use crate::completion::{tb_outcome, tb_task};
use crate::context;
use crate::error::{
    tb_status, Error, TB_ERR_CALLBACK, TB_ERR_CANCELLED, TB_ERR_INVALID_ARG, TB_ERR_PANIC, TB_OK,
};
use crate::panic::boundary;
use crate::pool::{self, Pool, PoolRef};
use crate::runtime::tb_runtime;
use crate::state::{Cancelled, QUEUED};
use crate::task::{self, Callbacks, Task, Work};
use crate::userdata::{tb_free_fn, UserArg};

/// The job a blocking callback is running, as seen from inside the callback.
///
/// Opaque. The pointer passed to a `tb_blocking_fn` is valid only during that call and only on
/// the thread running it: `tb_job_cancelled` and `tb_job_set_result` refuse any other pointer.
pub struct tb_job {
    task: *const Task,
    /// The pool running it, held by the drainer calling the callback.
    pool: *const Pool,
    value: Cell<*mut c_void>,
}

/// A blocking callback: runs once on a blocking-pool thread with the `arg` given at submission.
///
/// Return 0 for success (outcome `TB_OK`); any other value gives the outcome `TB_ERR_CALLBACK`
/// with that value in `tb_outcome.code`. It may block for as long as it needs. `job` is valid
/// until it returns and only on this thread.
#[allow(non_camel_case_types)]
pub type tb_blocking_fn = Option<unsafe extern "C" fn(arg: *mut c_void, job: *mut tb_job) -> i32>;

/// A job's callback and argument, in its task's state until the job starts or is claimed
/// (cancelled or shut down while queued).
pub(crate) struct Payload {
    func: unsafe extern "C" fn(*mut c_void, *mut tb_job) -> i32,
    arg: UserArg,
}

/// The parts of a task that only blocking jobs have.
pub(crate) struct Blocking {
    /// Not counted: good while the task has not finished, reached through [`pool::visit`]
    /// (see [`PoolRef`]).
    pool: NonNull<Pool>,
}

// SAFETY: `pool` is only dereferenced through `pool::visit`, which any thread may call, and a
// `Pool` is `Sync`.
unsafe impl Send for Blocking {}
// SAFETY: as above.
unsafe impl Sync for Blocking {}

/// Takes the payload of `task`, a job.
///
/// # Safety
/// The caller must have won the task's transition out of QUEUED (a drainer starting it, or
/// whoever cancelled it or shut the pool down), and takes the payload only once.
unsafe fn take_payload(task: &Task) -> Payload {
    debug_assert!(
        matches!(task.work, Work::Blocking(_)),
        "only a job has a payload"
    );
    task.with_work(|work| ManuallyDrop::take(&mut work.job))
}

thread_local! {
    static CURRENT_JOB: Cell<*const tb_job> = const { Cell::new(std::ptr::null()) };
}

fn blocking(task: &Task) -> &Blocking {
    match &task.work {
        Work::Blocking(blocking) => blocking,
        Work::Async(_) => unreachable!("only blocking tasks reach the pool"),
    }
}

/// Runs a started job of `pool` on this (blocking) thread, a drainer of `pool`, and completes
/// its task. Returns how long its callback ran, in ns, and when it returned (a
/// [`clock::stamp`]).
pub(crate) fn run(pool: &Pool, task: &Arc<Task>) -> (u64, u64) {
    let started = clock::stamp();
    let queued_us = waited_us(task, started);
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the drainer calling us won QUEUED -> RUNNING.
        let payload = unsafe { take_payload(task) };
        let job = tb_job {
            task: Arc::as_ptr(task),
            pool,
            value: Cell::new(std::ptr::null_mut()),
        };
        let previous = CURRENT_JOB.with(|c| c.replace(&job));
        let code = context::as_task(task.id, || {
            // SAFETY: the caller's callback and argument, called once as documented.
            unsafe { (payload.func)(payload.arg.ptr(), std::ptr::from_ref(&job).cast_mut()) }
        });
        CURRENT_JOB.with(|c| c.set(previous));
        let ended = clock::stamp();
        context::as_task(task.id, || drop(payload));
        (code, job.value.get(), ended)
    }));
    let (status, code, value, ended) = match result {
        Ok((0, value, ended)) => (TB_OK, 0, value, ended),
        Ok((code, value, ended)) => (TB_ERR_CALLBACK, code, value, ended),
        Err(_) => (TB_ERR_PANIC, 0, std::ptr::null_mut(), clock::stamp()),
    };
    let run_ns = nanos_between(started, ended);
    let counters = &pool.counters;
    counters.job_started(queued_us);
    counters.job_completed(status != TB_OK);
    // Only the drainer that started the job moves it out of RUNNING (cancel only flags it).
    if task.begin_completion().is_some() {
        task.settle(tb_outcome {
            status,
            code,
            value,
            ticks: 0,
            queued_us,
            run_us: run_ns / 1000,
        });
    }
    (run_ns, ended)
}

/// Microseconds from the submission of `task`, a job, to `now` (a [`clock::stamp`]).
fn waited_us(task: &Task, now: u64) -> u64 {
    nanos_between(task.submitted, now) / 1000
}

/// Ends a job of `pool` that never started (claimed by cancel or shutdown): frees its argument
/// on this thread, then completes it with `status`. The caller holds `pool`.
pub(crate) fn abandon(pool: &Pool, task: &Task, status: tb_status) {
    pool.counters.jobs_cancelled.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the caller won the transition out of QUEUED.
    drop(unsafe { take_payload(task) });
    task.settle(tb_outcome {
        status,
        queued_us: waited_us(task, clock::stamp()),
        ..tb_outcome::default()
    });
}

/// A job of `pool` calling `func(arg, job)`, not queued yet: what a submission queues.
pub(crate) fn queued(
    id: u64,
    pool: &Arc<Pool>,
    func: unsafe extern "C" fn(*mut c_void, *mut tb_job) -> i32,
    arg: UserArg,
) -> Task {
    Task::new(
        id,
        Work::Blocking(Blocking {
            // From the `Arc`, not from a reference: `pool::visit` rebuilds the `Arc` from it.
            pool: NonNull::new(Arc::as_ptr(pool).cast_mut()).expect("an Arc is not null"),
        }),
        Callbacks {
            job: ManuallyDrop::new(Payload { func, arg }),
        },
        QUEUED,
        clock::stamp(),
    )
}

/// Before a caller waits for `task`: if it is a job still queued, has its pool's drainers take
/// it now rather than gather more jobs first (see `Pool::gather`).
pub(crate) fn hurry(task: &Arc<Task>) {
    hurry_all(std::slice::from_ref(task));
}

/// [`hurry`] for each of `tasks`, visiting a pool once for a run of its jobs (as a fork-join
/// round submits them): each visit takes the pool's release lock, and the flag it sets is
/// already set for the rest of the run.
pub(crate) fn hurry_all(tasks: &[Arc<Task>]) {
    let mut hurried = None;
    for task in tasks {
        if let Work::Blocking(job) = &task.work {
            if hurried != Some(job.pool)
                && task.is_queued()
                && pool::visit(task, job.pool, |pool| pool.hurry()).is_some()
            {
                hurried = Some(job.pool);
            }
        }
    }
}

/// Cancels a job: a queued one never runs and ends now, on this thread; a running one is only
/// flagged. See `tb_task_cancel`.
pub(crate) fn cancel(task: &Task) -> Cancelled {
    let kept = pool::visit(task, blocking(task).pool, |pool| {
        PoolRef::new(Arc::clone(pool))
    });
    match kept {
        Some(pool) => pool.cancel(task, || abandon(&pool, task, TB_ERR_CANCELLED)),
        None => Cancelled::TooLate,
    }
}

/// Submits `func(arg, job)` to run once on the runtime's blocking pool.
///
/// On success `*out` receives the task handle, `func` will run exactly once on a blocking-pool
/// thread (never on an async worker) unless the job is cancelled or the runtime shuts down
/// before it starts, and `free_arg(arg)` (when not NULL) runs exactly once: after `func` returns,
/// or when the queued job is cancelled (on the thread calling `tb_task_cancel`) or dropped by
/// shutdown (on the thread calling `tb_runtime_shutdown`). The task finishes after `free_arg`.
/// On failure nothing runs and the caller keeps ownership of `arg`.
///
/// Jobs start in submission order. When `max_queued_blocking` jobs are already waiting, returns
/// `TB_ERR_BUSY`. Errors: `TB_ERR_NULL` (`func` or `out`), `TB_ERR_BAD_HANDLE`,
/// `TB_ERR_SHUTDOWN`, `TB_ERR_BUSY`, `TB_ERR_OS` (no thread could be started).
/// Any thread, including callbacks.
#[no_mangle]
pub extern "C" fn tb_spawn_blocking(
    rt: tb_runtime,
    func: tb_blocking_fn,
    arg: *mut c_void,
    free_arg: tb_free_fn,
    out: *mut tb_task,
) -> tb_status {
    boundary("tb_spawn_blocking", || {
        let func = func.ok_or_else(|| Error::null("func"))?;
        task::submit(rt, out, |id, runtime| {
            let pool = &runtime.pool;
            let task = Arc::new(queued(id, pool, func, UserArg::new(arg, free_arg)));
            if let Err(error) = pool.submit(&task) {
                assert!(task.claim(), "an unqueued job is owned by its submitter");
                // SAFETY: just claimed; the job was never visible to anyone else.
                unsafe { take_payload(&task) }.arg.disarm();
                return Err(error);
            }
            Ok(task)
        })
    })
}

/// Finds the job running on this thread, refusing any other pointer.
fn current_job(job: *const tb_job) -> Result<&'static tb_job, Error> {
    if job.is_null() {
        return Err(Error::null("job"));
    }
    let current = CURRENT_JOB.with(Cell::get);
    if current != job {
        return Err(Error::new(
            TB_ERR_INVALID_ARG,
            "`job` is not the job running on this thread (it is valid only inside its own \
             callback, on the thread running it)",
        ));
    }
    // SAFETY: `job` is the live tb_job of the callback running on this thread; it outlives the
    // callback, and the reference does not escape this call.
    Ok(unsafe { &*current })
}

/// Returns true when the running job has been asked to stop.
///
/// That is when `tb_task_cancel` was called on its task, or its runtime is shutting down. Long
/// jobs should check it between chunks of work and return early (cancellation is cooperative:
/// nothing interrupts a running callback). Call it only from inside the job's own callback, on
/// its thread; any other pointer (NULL, stale, another job's) returns false and records an
/// error for `tb_last_error`.
#[no_mangle]
pub extern "C" fn tb_job_cancelled(job: *const tb_job) -> bool {
    boundary("tb_job_cancelled", || {
        let job = current_job(job)?;
        // SAFETY: `task` points into the Arc held by the drainer running this job, and `pool`
        // is that drainer's.
        let (task, pool) = unsafe { (&*job.task, &*job.pool) };
        Ok(task.cancel_requested() || pool.is_closed())
    })
}

/// Sets the job's result pointer, read back as `tb_outcome.value`.
///
/// The library never dereferences or frees `value`: ownership passes to whoever reads the
/// outcome. The last call wins. Call it only from inside the job's own callback, on its thread;
/// any other `job` pointer is ignored and records an error for `tb_last_error`.
#[no_mangle]
pub extern "C" fn tb_job_set_result(job: *mut tb_job, value: *mut c_void) {
    boundary("tb_job_set_result", || {
        current_job(job)?.value.set(value);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TB_ERR_NULL;

    /// Only a panic in the middle of a job's end could leave it queued when its last reference
    /// goes; its `arg` is freed then, once.
    #[test]
    fn a_job_dropped_while_queued_still_frees_its_arg() {
        use std::sync::atomic::AtomicUsize;
        static FREES: AtomicUsize = AtomicUsize::new(0);
        unsafe extern "C" fn count(_: *mut c_void) {
            FREES.fetch_add(1, Ordering::SeqCst);
        }
        unsafe extern "C" fn never(_: *mut c_void, _: *mut tb_job) -> i32 {
            unreachable!("a queued job dropped never runs")
        }
        let tokio = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let pool = Arc::new(Pool::new(
            1,
            tokio.handle().clone(),
            1,
            0,
            std::time::Duration::from_secs(1),
            Arc::default(),
        ));
        let task = queued(
            1,
            &pool,
            never,
            UserArg::new(std::ptr::null_mut(), Some(count)),
        );
        drop(task);
        assert_eq!(FREES.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_foreign_job_pointer_is_refused() {
        let fake = tb_job {
            task: std::ptr::null(),
            pool: std::ptr::null(),
            value: Cell::new(std::ptr::null_mut()),
        };
        assert!(!tb_job_cancelled(&fake));
        assert!(!tb_job_cancelled(std::ptr::null()));
        assert_eq!(current_job(&fake).err().unwrap().status, TB_ERR_INVALID_ARG);
        assert_eq!(
            current_job(std::ptr::null()).err().unwrap().status,
            TB_ERR_NULL
        );
    }
}
