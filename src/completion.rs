//! Task handles and how results come back: wait, poll, outcome, cancel, completion callbacks,
//! release, and waiting on groups of tasks.

use std::ffi::c_void;
use std::sync::Arc;

use crate::context;
use crate::error::{
    tb_status, Error, TB_ERR_ALREADY, TB_ERR_BUSY, TB_ERR_INVALID_ARG, TB_ERR_ON_RUNTIME_THREAD,
    TB_OK, TB_PENDING, TB_TIMED_OUT,
};
use crate::job;
use crate::panic::boundary;
use crate::runtime::deadline_after;
use crate::state::{Callback, Cancelled, Watcher};
use crate::task::{Task, Work, TASKS};
use crate::timer;

/// A task handle: a generation-checked id, never a pointer. The id 0 is never valid.
///
/// Returned by `tb_spawn_blocking`, `tb_sleep` and `tb_timer_start`. The caller owns it and
/// must end it with `tb_task_release` (the task itself goes on: releasing is not cancelling).
/// Copy it freely and use it from any thread until then; afterwards every call with it returns
/// `TB_ERR_BAD_HANDLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct tb_task {
    /// The opaque id.
    pub id: u64,
}

/// How a task ended, filled by `tb_task_outcome` and passed to completion callbacks.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tb_outcome {
    /// `TB_OK`, `TB_ERR_CANCELLED`, `TB_ERR_CALLBACK`, `TB_ERR_PANIC` or `TB_ERR_SHUTDOWN`.
    pub status: tb_status,
    /// What the callback returned: a blocking job's return value, or the non-zero value (or a
    /// one-shot timer's value) that stopped a timer. 0 otherwise.
    pub code: i32,
    /// The pointer set with `tb_job_set_result`, else NULL. The library never frees it.
    pub value: *mut c_void,
    /// Timers: how many times the timer callback ran. 0 for other tasks.
    pub ticks: u64,
    /// Microseconds from submission to start: until a blocking thread picked the job up. 0 for
    /// sleeps and timers, which start when they are submitted.
    pub queued_us: u64,
    /// Microseconds from start to end: the blocking callback's run time, or the sleep or
    /// timer's whole life, from `tb_sleep` or `tb_timer_start` to its end.
    pub run_us: u64,
}

impl Default for tb_outcome {
    fn default() -> Self {
        tb_outcome {
            status: TB_OK,
            code: 0,
            value: std::ptr::null_mut(),
            ticks: 0,
            queued_us: 0,
            run_us: 0,
        }
    }
}

// SAFETY: `value` is an opaque pointer the job handed over; the library never dereferences it.
unsafe impl Send for tb_outcome {}

/// A completion callback: runs exactly once when the task finishes.
///
/// `task` is the handle it was registered on (it may have been released since: then the handle
/// is dead and only identifies the task). `outcome` is valid during the call only. Inside the
/// callback the task is not finished yet (it is once the callback returns): read the outcome
/// from `outcome`, not with `tb_task_wait`. It runs with no internal lock held.
#[allow(non_camel_case_types)]
pub type tb_complete_fn =
    Option<unsafe extern "C" fn(arg: *mut c_void, task: tb_task, outcome: *const tb_outcome)>;

/// Wait without a time limit.
pub const TB_FOREVER: u64 = u64::MAX;

/// Refuses a wait that would block an async worker, or a task waiting for itself.
pub(crate) fn check_may_wait(
    timeout_ms: u64,
    ids: impl IntoIterator<Item = u64>,
) -> Result<(), Error> {
    if timeout_ms == 0 {
        return Ok(());
    }
    if context::on_async_worker() {
        return Err(Error::new(
            TB_ERR_ON_RUNTIME_THREAD,
            "called on an async worker thread (inside a timer or completion callback run by a \
             worker), where waiting would stall every task on that worker; use a timeout of 0 \
             or tb_task_on_complete",
        ));
    }
    let me = context::current_task();
    if me != 0 && ids.into_iter().any(|id| id == me) {
        return Err(Error::new(
            TB_ERR_INVALID_ARG,
            "a task would wait for itself (called from its own job or completion callback)",
        ));
    }
    Ok(())
}

/// Waits until task `t` finishes or `timeout_ms` milliseconds pass.
///
/// 0 only checks; `TB_FOREVER` waits without a limit. Returns `TB_OK` when the task is finished
/// (whatever its outcome: read it with `tb_task_outcome`) or `TB_TIMED_OUT`. A finished task's
/// `free_arg` and completion callback have already returned. A waiter spins for a few
/// microseconds (4 to 30, adapting to whether spinning paid off on this thread) before it sleeps
/// on a condition variable. A timed-out wait changes nothing: a blocking job goes on running.
///
/// On an async worker thread (inside a timer callback, or a completion callback run by a
/// worker) a non-zero timeout returns `TB_ERR_ON_RUNTIME_THREAD` instead of blocking the worker.
/// Errors: `TB_ERR_BAD_HANDLE`, `TB_ERR_ON_RUNTIME_THREAD`, `TB_ERR_INVALID_ARG` (a task
/// waiting for itself). Any thread.
#[no_mangle]
pub extern "C" fn tb_task_wait(t: tb_task, timeout_ms: u64) -> tb_status {
    boundary("tb_task_wait", || {
        // A finished task, the common case of a wait, needs neither a reference nor the clock.
        let finished = TASKS.with(t.id, |task| task.is_finished())?;
        check_may_wait(timeout_ms, [t.id])?;
        if finished {
            return Ok(TB_OK);
        }
        let task = TASKS.get(t.id)?;
        job::hurry(&task);
        Ok(if task.wait(deadline_after(timeout_ms)) {
            TB_OK
        } else {
            TB_TIMED_OUT
        })
    })
}

/// Returns `TB_PENDING` while task `t` runs and `TB_OK` once it is finished. Never blocks.
///
/// Errors: `TB_ERR_BAD_HANDLE`. Any thread, including async workers.
#[no_mangle]
pub extern "C" fn tb_task_poll(t: tb_task) -> tb_status {
    boundary("tb_task_poll", || {
        let finished = TASKS.with(t.id, |task| task.is_finished_now())?;
        Ok(if finished { TB_OK } else { TB_PENDING })
    })
}

/// Copies how task `t` ended into `*out`, once it is finished.
///
/// Returns `TB_OK` and fills `*out`, or `TB_PENDING` (and leaves `*out` alone) while the task
/// has not finished. It can be read any number of times until the handle is released.
/// Errors: `TB_ERR_NULL` (`out`), `TB_ERR_BAD_HANDLE`. Any thread.
#[no_mangle]
pub extern "C" fn tb_task_outcome(t: tb_task, out: *mut tb_outcome) -> tb_status {
    boundary("tb_task_outcome", || {
        if out.is_null() {
            return Err(Error::null("out"));
        }
        // Written from inside the lookup: the outcome is not copied through its result.
        let finished = TASKS.with(t.id, |task| match task.outcome() {
            Some(outcome) => {
                // SAFETY: checked non-NULL; the caller provides space for a tb_outcome.
                unsafe { out.write(outcome) };
                true
            }
            None => false,
        })?;
        Ok(if finished { TB_OK } else { TB_PENDING })
    })
}

/// Cancels task `t`. Never blocks.
///
/// - A queued blocking job never runs: it finishes with `TB_ERR_CANCELLED`, its `free_arg` and
///   completion callback run on this thread before the call returns `TB_OK`.
/// - A running blocking job cannot be stopped: `tb_job_cancelled` turns true for it (stopping
///   is up to the callback), the call returns `TB_ERR_BUSY`, and the outcome is what the
///   callback returns.
/// - A sleep or timer stops (after a tick already running) and finishes with
///   `TB_ERR_CANCELLED` on a worker shortly after; the call returns `TB_OK`.
/// - A task that already has its outcome: `TB_ERR_ALREADY`.
///
/// Errors: `TB_ERR_BAD_HANDLE`. Any thread, including callbacks.
#[no_mangle]
pub extern "C" fn tb_task_cancel(t: tb_task) -> tb_status {
    boundary("tb_task_cancel", || {
        let task = TASKS.get(t.id)?;
        let cancelled = match &task.work {
            Work::Blocking(_) => job::cancel(&task),
            Work::Async(_) => task.cancel(),
        };
        match (cancelled, &task.work) {
            (Cancelled::Claimed, _) => Ok(TB_OK), // ended on this thread
            (Cancelled::Requested, Work::Blocking(_)) => Err(Error::new(
                TB_ERR_BUSY,
                "the job is running and cannot be stopped; tb_job_cancelled now returns true \
                 inside it",
            )),
            (Cancelled::Requested, Work::Async(_)) => {
                timer::cancel(&task);
                Ok(TB_OK)
            }
            (Cancelled::TooLate, _) => Err(Error::new(TB_ERR_ALREADY, "the task already finished")),
        }
    })
}

/// Registers `func(arg, t, outcome)` to run exactly once when task `t` finishes.
///
/// It runs on the thread that finishes the task: a blocking-pool thread for a job that ran, an
/// async worker for a sleep or timer, the cancelling thread for a job cancelled while queued,
/// the shutting-down thread for a job dropped by shutdown. If the task has already finished it
/// runs at once on the calling thread, before this call returns. It runs with no internal lock
/// held, before the task counts as finished, and also when the handle was released meanwhile.
/// Only one callback per task: a second registration returns `TB_ERR_ALREADY` and is never
/// called. On any error `func` is never called.
/// Errors: `TB_ERR_NULL` (`func`), `TB_ERR_BAD_HANDLE`, `TB_ERR_ALREADY`. Any thread.
#[no_mangle]
pub extern "C" fn tb_task_on_complete(
    t: tb_task,
    func: tb_complete_fn,
    arg: *mut c_void,
) -> tb_status {
    boundary("tb_task_on_complete", || {
        let func = func.ok_or_else(|| Error::null("func"))?;
        let task = TASKS.get(t.id)?;
        task.on_complete(Callback::new(func, arg))?;
        Ok(TB_OK)
    })
}

/// Releases the handle `t`: the id is dead from now on, for every call, including a second
/// release (`TB_ERR_BAD_HANDLE`).
///
/// Releasing does not stop the task (like dropping a Tokio `JoinHandle`): it runs to its end,
/// and its `free_arg` and completion callback still run; then its memory is returned.
/// Errors: `TB_ERR_BAD_HANDLE`. Any thread, including the task's own completion callback.
#[no_mangle]
pub extern "C" fn tb_task_release(t: tb_task) -> tb_status {
    boundary("tb_task_release", || {
        TASKS.remove(t.id, |_| ())?;
        Ok(TB_OK)
    })
}

/// Looks up every handle of a C array, naming the first bad one.
fn lookup_all(tasks: *const tb_task, n: usize) -> Result<Vec<Arc<Task>>, Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if tasks.is_null() {
        return Err(Error::null("tasks"));
    }
    if n > isize::MAX as usize / std::mem::size_of::<tb_task>() {
        return Err(Error::invalid(format!(
            "n is {n}: larger than any array of tb_task can be"
        )));
    }
    // SAFETY: the caller passes an array of `n` handles.
    let handles = unsafe { std::slice::from_raw_parts(tasks, n) };
    handles
        .iter()
        .enumerate()
        .map(|(i, t)| {
            TASKS
                .get(t.id)
                .map_err(|e| Error::text(e.status, format!("tasks[{i}]: {e}")))
        })
        .collect()
}

/// Waits until all `n` tasks of the array `tasks` finish, or `timeout_ms` passes.
///
/// Returns `TB_OK` when every task is finished, `TB_TIMED_OUT` otherwise; `n` = 0 returns
/// `TB_OK`. The same thread rules as `tb_task_wait` apply. The array is only read during the
/// call. Errors: `TB_ERR_NULL` (`tasks` with `n` > 0), `TB_ERR_BAD_HANDLE` (naming the index),
/// `TB_ERR_ON_RUNTIME_THREAD`, `TB_ERR_INVALID_ARG` (`n` larger than any array, or a task
/// waiting for itself). Any thread.
#[no_mangle]
pub extern "C" fn tb_wait_all(tasks: *const tb_task, n: usize, timeout_ms: u64) -> tb_status {
    boundary("tb_wait_all", || {
        let all = lookup_all(tasks, n)?;
        check_may_wait(timeout_ms, all.iter().map(|t| t.id))?;
        let deadline = deadline_after(timeout_ms);
        job::hurry_all(&all);
        Ok(if all.iter().all(|task| task.wait(deadline)) {
            TB_OK
        } else {
            TB_TIMED_OUT
        })
    })
}

/// Waits until any of the `n` tasks of the array `tasks` finishes, or `timeout_ms` passes.
///
/// Returns `TB_OK` and sets `*index` to the lowest index of a finished task, or
/// `TB_TIMED_OUT` (leaving `*index` alone). The same thread rules as `tb_task_wait` apply.
/// Errors: `TB_ERR_NULL` (`tasks`, `index`), `TB_ERR_INVALID_ARG` (`n` = 0 or larger than any
/// array, or a task waiting for itself), `TB_ERR_BAD_HANDLE` (naming the index), `TB_ERR_ON_RUNTIME_THREAD`.
/// Any thread.
#[no_mangle]
pub extern "C" fn tb_wait_any(
    tasks: *const tb_task,
    n: usize,
    timeout_ms: u64,
    index: *mut usize,
) -> tb_status {
    boundary("tb_wait_any", || {
        if index.is_null() {
            return Err(Error::null("index"));
        }
        if n == 0 {
            return Err(Error::new(
                TB_ERR_INVALID_ARG,
                "n is 0: there is no task to wait for",
            ));
        }
        let all = lookup_all(tasks, n)?;
        check_may_wait(timeout_ms, all.iter().map(|t| t.id))?;
        let first_finished = || all.iter().position(|t| t.is_finished());
        let found = match first_finished() {
            Some(found) => Some(found),
            None if timeout_ms == 0 => None,
            None => {
                job::hurry_all(&all);
                let watcher = Watcher::new();
                let watching: Vec<&Arc<Task>> =
                    all.iter().take_while(|t| t.watch(&watcher)).collect();
                if watching.len() == all.len() {
                    watcher.sleep(deadline_after(timeout_ms));
                }
                for task in watching {
                    task.unwatch(&watcher);
                }
                first_finished()
            }
        };
        match found {
            Some(found) => {
                // SAFETY: checked non-NULL.
                unsafe { index.write(found) };
                Ok(TB_OK)
            }
            None => Ok(TB_TIMED_OUT),
        }
    })
}
