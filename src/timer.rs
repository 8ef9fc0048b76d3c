//! Sleeps and timers: async tasks on the runtime's workers (`tokio::spawn` + `tokio::time`).

use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::completion::{tb_outcome, tb_task};
use crate::context;
use crate::error::{tb_status, Error, TB_ERR_CANCELLED, TB_ERR_SHUTDOWN, TB_OK};
use crate::metrics::Counters;
use crate::panic::boundary;
use crate::runtime::tb_runtime;
use crate::stall::{self, TB_STALL_TIMER};
use crate::state::RUNNING;
use crate::sync::{lock, micros_between, now_ns};
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
    /// The waker of the task's future, so that a cancel request wakes it.
    waker: Mutex<Option<Waker>>,
}

impl Async {
    /// Wakes the task's future, if it waits, to see a cancel request made before this call.
    pub(crate) fn wake(&self) {
        let waker = lock!(self.waker).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Makes [`wake`](Self::wake) wake `waker`. A cancel request made before a `wake` that this
    /// call precedes is visible after it: check for one after registering.
    fn register(&self, waker: &Waker) {
        let mut slot = lock!(self.waker);
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
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
    /// When a worker first ran the task ([`now_ns`], never 0), or 0 before.
    started: u64,
}

impl Drop for Ending {
    fn drop(&mut self) {
        drop(self.arg.take());
        if let Some(cancelled) = self.task.begin_completion() {
            let now = now_ns();
            let started = if self.started == 0 { now } else { self.started };
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

/// `at` plus `ms` milliseconds, saturating far in the future instead of overflowing.
fn later(at: Instant, ms: u64) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    at + Duration::from_millis(ms).min(FAR)
}

/// A sleep's or timer's life on the workers: waits for `next`, runs its tick, and again for a
/// periodic timer. A hand-written future, so that a task holds one `Sleep`, reset at each tick,
/// and nothing else it does not need: with a million timers, every byte counts a megabyte.
struct Run {
    schedule: Schedule,
    /// Created on the first wait that needs it, on a worker (it needs the runtime's context).
    sleep: Option<Sleep>,
}

/// What a [`Run`] holds besides its `Sleep`.
struct Schedule {
    ending: Ending,
    tick: Option<Tick>,
    /// When the task is next due: the submission time plus the delay, then each period.
    next: Instant,
}

/// Waits for `next`: ready when it has come, pending (with the timer armed) until then.
fn wait(mut sleep: Pin<&mut Option<Sleep>>, next: Instant, cx: &mut Context<'_>) -> Poll<()> {
    if next <= Instant::now() {
        // Already due: the timer wheel would only add up to a millisecond of rounding.
        return Poll::Ready(());
    }
    match sleep.as_mut().as_pin_mut() {
        Some(armed) if armed.deadline() == next => {}
        Some(armed) => armed.reset(next),
        None => sleep.set(Some(tokio::time::sleep_until(next))),
    }
    sleep.as_pin_mut().expect("the sleep was just set").poll(cx)
}

impl Schedule {
    /// Whether a cancel was requested; if not, a later request wakes `waker`.
    fn cancelled(&self, waker: &Waker) -> bool {
        let Work::Async(parts) = &self.ending.task.work else {
            unreachable!("only async tasks run here")
        };
        parts.register(waker);
        self.ending.task.cancel_requested()
    }

    /// Runs one tick; whether the timer goes on. A late tick delays the ones after it rather
    /// than letting them burst.
    fn tick(&mut self) -> bool {
        let Some(tick) = &self.tick else {
            self.ending.result = Some((TB_OK, 0));
            return false;
        };
        let arg = self
            .ending
            .arg
            .as_ref()
            .map_or(std::ptr::null_mut(), UserArg::ptr);
        let ticks = self.ending.ticks;
        let code = context::as_task(self.ending.task.id, || {
            stall::timed(TB_STALL_TIMER, tick.func as usize, arg, || {
                // SAFETY: the caller's callback and argument, as documented.
                unsafe { (tick.func)(arg, ticks) }
            })
        });
        self.ending.ticks += 1;
        if code != 0 || tick.period_ms == 0 {
            self.ending.result = Some((TB_OK, code));
            return false;
        }
        let now = Instant::now();
        self.next = later(self.next, tick.period_ms);
        if self.next < now {
            self.next = later(now, tick.period_ms);
        }
        true
    }
}

impl Future for Run {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: only `sleep` needs pinning, and it is reached only through the `Pin` below.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: `sleep` is never moved out of `this`, and `Run` has no `Drop` of its own.
        let mut sleep = unsafe { Pin::new_unchecked(&mut this.sleep) };
        if this.schedule.ending.started == 0 {
            this.schedule.ending.started = now_ns();
        }
        let mut ticked = false;
        loop {
            if this.schedule.cancelled(cx.waker()) {
                return Poll::Ready(()); // `ending` records the cancel
            }
            if wait(sleep.as_mut(), this.schedule.next, cx).is_pending() {
                return Poll::Pending;
            }
            if ticked {
                // Due again at once (a tick that took about its period): one tick per poll, so
                // that the worker's other tasks run in between.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if !this.schedule.tick() {
                return Poll::Ready(());
            }
            ticked = true;
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
            waker: Mutex::new(None),
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
        started: 0,
    };
    // On a runtime shut down meanwhile, Tokio drops the future at once: `ending` records that.
    runtime.handle.spawn(Run {
        schedule: Schedule {
            ending,
            tick,
            next: later(Instant::now(), delay_ms),
        },
        sleep: None,
    });
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
