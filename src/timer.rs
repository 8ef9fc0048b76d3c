//! Sleeps and timers: async tasks on the runtime's workers (`tokio::spawn` + `tokio::time`).

use std::ffi::c_void;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Notify;

use crate::completion::{tb_outcome, tb_task};
use crate::context;
use crate::error::{tb_status, Error, TB_ERR_CANCELLED, TB_ERR_SHUTDOWN, TB_OK};
use crate::metrics::Counters;
use crate::panic::boundary;
use crate::runtime::tb_runtime;
use crate::stall::{self, TB_STALL_TIMER};
use crate::state::RUNNING;
use crate::sync::{micros_between, now_ns};
use crate::task::{Submission, Task, Work};
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

/// The parts of a task that only sleeps and timers have.
pub(crate) struct Async {
    /// Wakes the task's future so that it sees a cancel request.
    wake: Notify,
}

impl Async {
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }
}

struct Tick {
    func: unsafe extern "C" fn(*mut c_void, u64) -> i32,
    period_ms: u64,
}

/// Owns an async task's end: whether its future returns, is cancelled, or is dropped by
/// shutdown, dropping this frees `arg` and completes the task exactly once, on the worker.
struct Ending {
    task: Arc<Task>,
    counters: Arc<Counters>,
    arg: Option<UserArg>,
    /// Set when the future ran to its end.
    result: Option<(tb_status, i32)>,
    ticks: u64,
    /// When a worker first ran the task ([`now_ns`]).
    started: Option<u64>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        drop(self.arg.take());
        if let Some(cancelled) = self.task.begin_completion() {
            let now = now_ns();
            let started = self.started.unwrap_or(now);
            let (status, code) = match (cancelled, self.result) {
                (true, _) => (TB_ERR_CANCELLED, 0),
                (false, Some(result)) => result,
                (false, None) => (TB_ERR_SHUTDOWN, 0),
            };
            self.task.settle(tb_outcome {
                status,
                code,
                value: std::ptr::null_mut(),
                ticks: self.ticks,
                queued_us: micros_between(self.task.submitted_ns, started),
                run_us: micros_between(started, now),
            });
        }
        self.counters.async_tasks.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits until `deadline`; false if the task was cancelled first.
async fn sleep_until(task: &Task, deadline: tokio::time::Instant) -> bool {
    let Work::Async(parts) = &task.work else {
        unreachable!("only async tasks run here")
    };
    if deadline <= tokio::time::Instant::now() {
        // Already due: the timer wheel would only add up to a millisecond of rounding.
        return !task.cancel_requested();
    }
    let mut sleep = pin!(tokio::time::sleep_until(deadline));
    let mut woken = pin!(parts.wake.notified());
    poll_fn(|cx| {
        if task.cancel_requested() || woken.as_mut().poll(cx).is_ready() {
            // A wake-up comes only with a cancel request.
            return Poll::Ready(false);
        }
        sleep.as_mut().poll(cx).map(|()| true)
    })
    .await
}

/// `at` plus `ms` milliseconds, saturating far in the future instead of overflowing.
fn later(at: tokio::time::Instant, ms: u64) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    at + Duration::from_millis(ms).min(FAR)
}

/// The task's life: waits for `first` (the submission time plus the delay), then ticks.
async fn run(mut ending: Ending, first: tokio::time::Instant, tick: Option<Tick>) {
    let task = Arc::clone(&ending.task);
    ending.started = Some(now_ns());
    let mut next = first;
    loop {
        if !sleep_until(&task, next).await {
            return; // cancelled: `ending` records it
        }
        let Some(tick) = &tick else {
            ending.result = Some((TB_OK, 0));
            return;
        };
        let arg = ending
            .arg
            .as_ref()
            .map_or(std::ptr::null_mut(), UserArg::ptr);
        let code = context::as_task(task.id, || {
            stall::timed(TB_STALL_TIMER, tick.func as usize, arg, || {
                // SAFETY: the caller's callback and argument, as documented.
                unsafe { (tick.func)(arg, ending.ticks) }
            })
        });
        ending.ticks += 1;
        if code != 0 || tick.period_ms == 0 {
            ending.result = Some((TB_OK, code));
            return;
        }
        // A late tick delays the ones after it rather than letting them burst.
        let now = tokio::time::Instant::now();
        next = later(next, tick.period_ms);
        if next < now {
            next = later(now, tick.period_ms);
        }
    }
}

/// Starts an async task on `rt`'s workers; shared by `tb_sleep` and `tb_timer_start`.
fn spawn(
    rt: tb_runtime,
    delay_ms: u64,
    tick: Option<Tick>,
    arg: *mut c_void,
    free_arg: tb_free_fn,
    out: *mut tb_task,
) -> Result<tb_status, Error> {
    let submission = Submission::start(rt, out)?;
    let runtime = &submission.runtime;
    let task = Arc::new(Task::new(
        submission.id,
        Work::Async(Async {
            wake: Notify::new(),
        }),
        RUNNING,
    ));
    runtime.counters.async_tasks.fetch_add(1, Ordering::AcqRel);
    let ending = Ending {
        task: Arc::clone(&task),
        counters: Arc::clone(&runtime.counters),
        arg: Some(UserArg::new(arg, free_arg)),
        result: None,
        ticks: 0,
        started: None,
    };
    // On a runtime shut down meanwhile, Tokio drops the future at once: `ending` records that.
    let first = later(tokio::time::Instant::now(), delay_ms);
    runtime.handle.spawn(run(ending, first, tick));
    Ok(submission.publish(task))
}

/// Starts an async sleep: the task finishes with `TB_OK` after `delay_ms` milliseconds.
///
/// The sleep is an async task on the runtime's workers; no thread waits for it. It is measured
/// from the call. `tb_task_cancel` ends it at once with `TB_ERR_CANCELLED`; shutdown ends it
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
/// callback, which also runs on a worker. On failure nothing runs and the caller keeps `arg`.
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
