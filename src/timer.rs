//! Sleeps and timers: armed in the runtime's timer queue, each tick run as an async task on the
//! runtime's workers (see [`crate::timer_queue`]).

use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::clock::{micros_between, now_ns};
use crate::completion::{tb_outcome, tb_task};
use crate::context;
use crate::error::{tb_status, Error, TB_ERR_CANCELLED, TB_ERR_SHUTDOWN, TB_OK};
use crate::panic::boundary;
use crate::runtime::tb_runtime;
use crate::stall::{self, TB_STALL_TIMER};
use crate::state::RUNNING;
use crate::task::{self, Callbacks, Task, Work};
use crate::timer_queue::TimerQueue;
use crate::userdata::{tb_free_fn, UserArg};

/// A timer callback: runs on an async worker thread at each tick.
///
/// `tick` counts from 0. Return 0 to keep the timer going; any other value stops it, and becomes
/// `tb_outcome.code` (status `TB_OK`). It runs on an async worker, so it must not block: while
/// it runs, no other async task on that worker makes progress (blocking work belongs in
/// `tb_spawn_blocking`). Calls that would block, such as `tb_task_wait` with a timeout, are
/// refused there with `TB_ERR_ON_RUNTIME_THREAD`.
#[allow(non_camel_case_types)]
pub type tb_timer_fn = Option<unsafe extern "C" fn(arg: *mut c_void, tick: u64) -> i32>;

/// The parts of a task that only sleeps and timers have; what they call is in its state
/// ([`Ticks`]), for the holder of its [`Armed`].
pub(crate) struct Async {
    /// The runtime's timer queue. While the task is armed the queue holds it too: that cycle
    /// ends when the task leaves the queue, or when the queue closes (when Tokio drops the
    /// queue's driver at the runtime's shutdown, which may be after `tb_runtime_shutdown`
    /// returned, if it timed out).
    queue: Arc<TimerQueue>,
    /// When the task is due next ([`now_ns`]). Written under the queue's lock, as is its index
    /// in the queue's bucket of that millisecond (the task's `place`).
    pub(crate) due: AtomicU64,
}

/// The sleep or timer parts of `task`.
pub(crate) fn parts(task: &Task) -> &Async {
    match &task.work {
        Work::Async(parts) => parts,
        Work::Blocking(_) => unreachable!("only sleeps and timers are in a timer queue"),
    }
}

/// Ends `task` (a sleep or timer) on a worker if it waits in its queue, now that a cancel was
/// requested.
pub(crate) fn cancel(task: &Task) {
    parts(task).queue.cancel(task);
}

#[derive(Clone, Copy)]
struct Tick {
    func: unsafe extern "C" fn(*mut c_void, u64) -> i32,
    period_ms: u64,
}

/// What a sleep or timer calls, and how many times it has.
pub(crate) struct Ticks {
    /// `None` for a sleep.
    tick: Option<Tick>,
    arg: UserArg,
    count: u64,
}

/// The [`Ticks`] of a sleep or timer's work.
///
/// # Safety
/// `work` is a sleep's or timer's, and its ticks were not taken out.
unsafe fn ticks(work: &mut Callbacks) -> &mut Ticks {
    &mut work.timer
}

/// A sleep or timer that has not ended. Whoever holds it (the timer queue, or the worker task
/// firing it) owns the task's work and its end; dropped, it ends the task exactly once, with
/// `TB_ERR_CANCELLED` when a cancel was requested, else `TB_ERR_SHUTDOWN`.
pub(crate) struct Armed {
    /// `None` once ended.
    task: Option<Arc<Task>>,
}

impl Armed {
    pub(crate) fn task(&self) -> &Task {
        self.task.as_ref().expect("an armed task has not ended")
    }

    /// Frees `arg`, then completes the task with `result` (what its last tick returned), unless
    /// a cancel was requested (`TB_ERR_CANCELLED`); `None`: `TB_ERR_SHUTDOWN`.
    fn end(&mut self, result: Option<(tb_status, i32)>) {
        let Some(task) = self.task.take() else {
            return;
        };
        // SAFETY: the holder of the Armed owns the task's work, and ends it only once (its
        // `task` is None from here on).
        let ticks = unsafe { task.with_work(|work| ManuallyDrop::take(&mut work.timer)) };
        drop(ticks.arg);
        if let Some(cancelled) = task.begin_completion() {
            let (status, code) = match (cancelled, result) {
                (true, _) => (TB_ERR_CANCELLED, 0),
                (false, Some(result)) => result,
                (false, None) => (TB_ERR_SHUTDOWN, 0),
            };
            task.settle(tb_outcome {
                status,
                code,
                value: std::ptr::null_mut(),
                ticks: ticks.count,
                queued_us: 0,
                run_us: micros_between(task.submitted, now_ns()),
            });
        }
        parts(&task)
            .queue
            .counters
            .async_tasks
            .fetch_sub(1, Ordering::AcqRel);
    }

    /// Runs the tick of a due task on a worker, then puts it back into its queue (a periodic
    /// timer that goes on) or ends it. A late tick delays the ones after it rather than letting
    /// them burst.
    pub(crate) fn fire(mut self) {
        let task = self.task();
        if task.cancel_requested() {
            return; // dropping ends it, cancelled
        }
        // SAFETY: the holder of the Armed owns the task's work. The tick about to run is
        // counted now: the work is not touched again until the next tick or the end.
        let (tick, arg, count) = unsafe {
            task.with_work(|work| {
                let ticks = ticks(work);
                let count = ticks.count;
                ticks.count += u64::from(ticks.tick.is_some());
                (ticks.tick, ticks.arg.ptr(), count)
            })
        };
        let Some(tick) = tick else {
            return self.end(Some((TB_OK, 0)));
        };
        let code = context::as_task(task.id, || {
            stall::timed(TB_STALL_TIMER, tick.func as usize, arg, || {
                // SAFETY: the caller's callback and argument, as documented.
                unsafe { (tick.func)(arg, count) }
            })
        });
        let due = parts(task).due.load(Ordering::Relaxed);
        if code != 0 || tick.period_ms == 0 {
            return self.end(Some((TB_OK, code)));
        }
        let now = now_ns();
        let mut next = later(due, tick.period_ms);
        if next < now {
            next = later(now, tick.period_ms);
        }
        let queue = Arc::clone(&parts(task).queue);
        queue.insert(self, next);
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.end(None);
    }
}

/// `at` plus `ms` milliseconds ([`now_ns`]), at most 30 years in the future.
fn later(at: u64, ms: u64) -> u64 {
    const FAR_MS: u64 = 86_400 * 365 * 30 * 1000;
    at.saturating_add(ms.min(FAR_MS) * 1_000_000)
}

/// Arms a sleep or timer in `rt`'s timer queue; shared by `tb_sleep` and `tb_timer_start`.
fn spawn(
    rt: tb_runtime,
    delay_ms: u64,
    tick: Option<Tick>,
    arg: *mut c_void,
    free_arg: tb_free_fn,
    out: *mut tb_task,
) -> Result<tb_status, Error> {
    task::submit(rt, out, |id, runtime| {
        let task = Arc::new(Task::new(
            id,
            Work::Async(Async {
                queue: Arc::clone(&runtime.timers),
                due: AtomicU64::new(0),
            }),
            Callbacks {
                timer: ManuallyDrop::new(Ticks {
                    tick,
                    arg: UserArg::new(arg, free_arg),
                    count: 0,
                }),
            },
            RUNNING,
            now_ns(),
        ));
        runtime.counters.async_tasks.fetch_add(1, Ordering::AcqRel);
        let armed = Armed {
            task: Some(Arc::clone(&task)),
        };
        // On a runtime shut down meanwhile, the queue ends the task at once.
        if delay_ms == 0 {
            // Due now: a period counts from here.
            parts(&task).due.store(task.submitted, Ordering::Relaxed);
            runtime.timers.fire_soon(armed);
        } else {
            runtime
                .timers
                .insert(armed, later(task.submitted, delay_ms));
        }
        Ok(task)
    })
}

/// Starts an async sleep: the task finishes with `TB_OK` after `delay_ms` milliseconds.
///
/// The sleep waits in the runtime's timer queue; no thread waits for it. It is measured
/// from the call and ends no earlier than `delay_ms` after it, usually within 2 ms more (the
/// timer queue counts in whole milliseconds, as Tokio's timers do). `tb_task_cancel` ends it at once with `TB_ERR_CANCELLED`; shutdown ends it
/// with `TB_ERR_SHUTDOWN`. Its completion callback runs on an async worker. On success `*out`
/// receives the task handle, to be released with `tb_task_release`.
/// Errors: `TB_ERR_NULL` (`out`), `TB_ERR_BAD_HANDLE`, `TB_ERR_SHUTDOWN`. Any thread.
#[no_mangle]
pub extern "C" fn tb_sleep(rt: tb_runtime, delay_ms: u64, out: *mut tb_task) -> tb_status {
    boundary("tb_sleep", || {
        spawn(rt, delay_ms, None, std::ptr::null_mut(), None, out)
    })
}

/// Starts a timer: `func(arg, tick)` runs on an async worker after `delay_ms`, then every
/// `period_ms` (0: only once).
///
/// Times are measured from the call. A tick that runs late delays the following ones instead of
/// letting missed ticks run in a burst. The timer stops when `func` returns non-zero: the task
/// finishes with `TB_OK`, `code` = that value and `ticks` = how many times `func` ran (a
/// one-shot timer finishes after its only tick, with `code` = what it returned).
/// `tb_task_cancel` stops it (a tick already running completes first) with `TB_ERR_CANCELLED`;
/// shutdown stops it with `TB_ERR_SHUTDOWN`.
///
/// `func` runs on an async worker thread and must not block (see `tb_timer_fn`). `free_arg(arg)`
/// (when not NULL) runs exactly once on a worker when the timer ends, before its completion
/// callback, which also runs on a worker; but if the runtime shuts down while this call arms
/// the timer, it ends at once with `TB_ERR_SHUTDOWN`, and `free_arg` runs on the calling thread
/// before this call returns `TB_OK`. On failure nothing runs and the caller keeps `arg`.
/// Errors: `TB_ERR_NULL` (`func`, `out`), `TB_ERR_BAD_HANDLE`, `TB_ERR_SHUTDOWN`. Any thread.
#[no_mangle]
pub extern "C" fn tb_timer_start(
    rt: tb_runtime,
    delay_ms: u64,
    period_ms: u64,
    func: tb_timer_fn,
    arg: *mut c_void,
    free_arg: tb_free_fn,
    out: *mut tb_task,
) -> tb_status {
    boundary("tb_timer_start", || {
        let func = func.ok_or_else(|| Error::null("func"))?;
        spawn(
            rt,
            delay_ms,
            Some(Tick { func, period_ms }),
            arg,
            free_arg,
            out,
        )
    })
}
