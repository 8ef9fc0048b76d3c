//! Bugs found by the model test, the stress test and the fuzzer, each as a minimal test.
//!
//! Each guards its fix. A test for a bug not yet fixed is added `#[ignore]`d, with the bug in
//! its reason, and the `ignore` goes with the fix.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use tokio_bridge::completion::*;
use tokio_bridge::error::*;
use tokio_bridge::job::*;
use tokio_bridge::queue::*;
use tokio_bridge::runtime::*;

mod common;
use common::*;

unsafe extern "C" fn slow_job(_arg: *mut c_void, _job: *mut tb_job) -> i32 {
    thread::sleep(Duration::from_millis(20));
    0
}

unsafe extern "C" fn quick_job(_arg: *mut c_void, _job: *mut tb_job) -> i32 {
    0
}

unsafe extern "C" fn count_free(arg: *mut c_void) {
    (*arg.cast::<AtomicUsize>()).fetch_add(1, Ordering::SeqCst);
}

/// A value that lives as long as the process (leaked), so that a job or callback outliving a
/// failed test's body never touches freed memory.
fn leaked<T: Default>() -> &'static T {
    Box::leak(Box::default())
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Found by the model test. The pool's queued count was decremented after `tb_task_cancel` had
/// claimed a queued job; if `tb_runtime_shutdown` ran `Pool::close` in between, close had
/// already set the count to 0 and the decrement underflowed:
/// in a debug build a panic, caught by the boundary, so `tb_task_cancel` returns `TB_ERR_PANIC`
/// (undocumented) and the job is left claimed but never settled: its completion callback never
/// runs, `tb_task_poll` says `TB_PENDING` forever and `tb_task_wait(TB_FOREVER)` hangs (its
/// `free_arg` runs only when the last reference goes). In a release build the count wraps to
/// `usize::MAX` instead. Usually failed within the first 50 rounds on 2 cores. The claim and
/// the count now change together under the pool's lock (`Pool::cancel`).
#[test]
fn cancel_racing_shutdown_never_panics_and_every_task_finishes() {
    for round in 0..200 {
        let rt = runtime_with(&config(1, 1));
        let frees = leaked::<AtomicUsize>();
        let tasks: Vec<tb_task> = (0..2000)
            .map(|_| {
                let mut t = tb_task::default();
                let arg = std::ptr::from_ref(frees).cast_mut().cast();
                assert_eq!(
                    tb_spawn_blocking(rt, Some(slow_job), arg, Some(count_free), &mut t),
                    TB_OK
                );
                t
            })
            .collect();
        let to_cancel = tasks.clone();
        let canceller = thread::spawn(move || {
            to_cancel
                .iter()
                .rev()
                .find(|&&t| tb_task_cancel(t) == TB_ERR_PANIC)
                .map(|_| last_error())
        });
        thread::sleep(Duration::from_micros(200));
        let shut = tb_runtime_shutdown(rt, 10_000);
        let panicked = canceller.join().unwrap();
        assert_eq!(panicked, None, "round {round}: tb_task_cancel panicked");
        assert_eq!(shut, TB_OK);
        for t in tasks {
            assert_eq!(
                tb_task_wait(t, 5_000),
                TB_OK,
                "round {round}: a task never finished"
            );
            assert_eq!(tb_task_release(t), TB_OK);
        }
        assert_eq!(frees.load(Ordering::SeqCst), 2000);
    }
}

/// Found while preparing the fuzzer's argument ranges: a `thread_stack_size` no thread can
/// have (2^60 bytes; the header puts no upper bound on it) makes Tokio panic with "OS can't
/// spawn worker thread" inside `tb_runtime_new`, which returns `TB_ERR_PANIC` (undocumented:
/// `TB_ERR_OS` or `TB_ERR_INVALID_ARG` is what the header allows), and the runtime's
/// stall watchdog thread, started before the panic, is never stopped: one thread leaks per
/// call.
#[test]
fn an_impossible_stack_size_is_refused_without_a_panic_or_a_leaked_thread() {
    let mut cfg = config(1, 2);
    cfg.thread_stack_size = 1 << 60;
    let before = threads();
    for _ in 0..5 {
        let mut rt = tb_runtime { id: 7 };
        let status = tb_runtime_new(&cfg, &mut rt);
        assert!(
            status == TB_ERR_OS || status == TB_ERR_INVALID_ARG,
            "tb_runtime_new returned {status}: {}",
            last_error()
        );
        assert_eq!(rt.id, 7, "out-param written on failure");
    }
    wait_until("no thread left behind", || threads() <= before);
}

/// Found by the model test. `tb_task_notify` promises that `tb_task_outcome` already has the
/// outcome when the tag is drained, but `Task::settle` pushes the tag (raising the eventfd and
/// waking `tb_queue_wait`) before it marks the task finished, and `tb_task_outcome` reads the
/// phase without taking the lock that section holds (the task's own lock then, its stripe's
/// now; unlike `tb_task_poll`, which waited for that critical section): a thread woken by the push that drains the tag and asks for the outcome at once
/// gets `TB_PENDING`. Usually fails within a few hundred rounds.
#[test]
fn the_outcome_is_ready_when_the_tag_is_drained() {
    drain_tags_then(|t, round| {
        let mut o = tb_outcome::default();
        assert_eq!(
            tb_task_outcome(t, &mut o),
            TB_OK,
            "round {round}: the tag was drained but the outcome is not there"
        );
    });
}

/// The same promise for `tb_task_poll`, which answers without the task's stripe lock unless a
/// queue notification is registered: dropping that condition makes this fail within ten rounds.
#[test]
fn a_task_polls_finished_when_its_tag_is_drained() {
    drain_tags_then(|t, round| {
        assert_eq!(
            tb_task_poll(t),
            TB_OK,
            "round {round}: the tag was drained but the task polls pending"
        );
    });
}

/// Runs 20,000 quick jobs one at a time, each with a queue notification, and calls `check` on
/// each at once when its tag is drained.
fn drain_tags_then(check: impl Fn(tb_task, u64)) {
    let rt = runtime();
    let mut q = tb_queue::default();
    assert_eq!(tb_queue_new(&mut q), TB_OK);
    for round in 0..20_000u64 {
        let mut t = tb_task::default();
        let null = std::ptr::null_mut();
        assert_eq!(
            tb_spawn_blocking(rt, Some(quick_job), null, None, &mut t),
            TB_OK
        );
        assert_eq!(tb_task_notify(t, q, round), TB_OK);
        assert_eq!(tb_queue_wait(q, 5_000), TB_OK);
        let (mut tag, mut n) = (0u64, 0usize);
        assert_eq!(tb_queue_drain(q, &mut tag, 1, &mut n), TB_OK);
        assert_eq!((n, tag), (1, round));
        check(t, round);
        assert_eq!(tb_task_release(t), TB_OK);
    }
    assert_eq!(tb_queue_free(q), TB_OK);
    shutdown(rt);
}

mod cancel_during_shutdown {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use tokio_bridge::timer::*;

    static RT: AtomicU64 = AtomicU64::new(0);
    static LONG: AtomicU64 = AtomicU64::new(0);
    static FIRST_SHUT: AtomicBool = AtomicBool::new(true);
    static CANCELLED: AtomicU64 = AtomicU64::new(u64::MAX);

    /// Ends a sleep; the first one ended by the shutdown cancels the long timer from another
    /// thread, while the runtime's tasks are being dropped.
    unsafe extern "C" fn sleep_done(_arg: *mut c_void, _t: tb_task, o: *const tb_outcome) {
        if (*o).status == TB_ERR_SHUTDOWN && FIRST_SHUT.swap(false, Ordering::SeqCst) {
            let canceller = thread::Builder::new()
                .name("canceller".into())
                .spawn(|| {
                    tb_task_cancel(tb_task {
                        id: LONG.load(Ordering::SeqCst),
                    })
                })
                .unwrap();
            CANCELLED.store(canceller.join().unwrap() as u64, Ordering::SeqCst);
        }
    }

    /// Starts many sleeps with no delay, then shuts the runtime down from the worker.
    unsafe extern "C" fn start_sleeps_and_shut_down(_arg: *mut c_void, _tick: u64) -> i32 {
        let rt = tb_runtime {
            id: RT.load(Ordering::SeqCst),
        };
        for _ in 0..2000 {
            let mut s = tb_task::default();
            assert_eq!(tb_sleep(rt, 0, &mut s), TB_OK);
            assert_eq!(
                tb_task_on_complete(s, Some(sleep_done), std::ptr::null_mut()),
                TB_OK
            );
            assert_eq!(tb_task_release(s), TB_OK);
        }
        assert_eq!(tb_runtime_shutdown(rt, 0), TB_PENDING);
        1
    }

    /// Found in review of the timer queue. A cancel that took an armed timer out of the queue
    /// handed it to Tokio, which, while the runtime shuts down, drops what it is handed at
    /// once: the timer's `free_arg` and completion callback then ran inside `tb_task_cancel`,
    /// on the cancelling thread (a C caller holding a lock the callback takes deadlocks). A
    /// cancelled timer now stays the queue's until the queue's driver ends it on a worker.
    #[test]
    fn a_timer_cancelled_during_shutdown_ends_on_a_worker() {
        let rt = runtime_with(&config(1, 8));
        RT.store(rt.id, Ordering::SeqCst);
        let p = probe();
        let mut long = tb_task::default();
        assert_eq!(
            tb_timer_start(
                rt,
                60_000,
                0,
                Some(tick_fn),
                arg(p),
                Some(free_fn),
                &mut long
            ),
            TB_OK
        );
        assert_eq!(tb_task_on_complete(long, Some(complete_fn), arg(p)), TB_OK);
        LONG.store(long.id, Ordering::SeqCst);
        let mut trigger = tb_task::default();
        let tick =
            Some(start_sleeps_and_shut_down as unsafe extern "C" fn(*mut c_void, u64) -> i32);
        assert_eq!(
            tb_timer_start(rt, 5, 0, tick, std::ptr::null_mut(), None, &mut trigger),
            TB_OK
        );
        assert_eq!(tb_task_wait(long, 20_000), TB_OK);
        let status = outcome(long).status;
        assert!(
            status == TB_ERR_CANCELLED || status == TB_ERR_SHUTDOWN,
            "status {status}"
        );
        assert_eq!(p.frees.load(Ordering::SeqCst), 1);
        let threads = p.threads.lock().unwrap().clone();
        assert_eq!(threads.len(), 1);
        assert!(
            threads[0].starts_with("tb-worker-"),
            "the completion ran on {}",
            threads[0]
        );
    }
}

/// Holds its blocking thread until a shutdown flags the job; sets the `AtomicBool` its `arg`
/// points to once it runs.
unsafe extern "C" fn hold_until_cancelled(arg: *mut c_void, job: *mut tb_job) -> i32 {
    (*arg.cast::<std::sync::atomic::AtomicBool>()).store(true, Ordering::SeqCst);
    for _ in 0..10_000 {
        if tb_job_cancelled(job) {
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    0
}

/// A runtime with one blocking thread, held by a job (running, so that a shutdown lets it end
/// with `TB_OK`), and a quick job queued behind it with `completion` registered: (runtime, held
/// job, queued job).
fn one_job_held_one_queued(completion: tb_complete_fn) -> (tb_runtime, tb_task, tb_task) {
    let rt = runtime_with(&config(1, 1));
    let mut held = tb_task::default();
    let hold = Some(hold_until_cancelled as unsafe extern "C" fn(*mut c_void, *mut tb_job) -> i32);
    let running = leaked::<std::sync::atomic::AtomicBool>();
    let arg = std::ptr::from_ref(running).cast_mut().cast();
    assert_eq!(tb_spawn_blocking(rt, hold, arg, None, &mut held), TB_OK);
    while !running.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(1));
    }
    let mut queued = tb_task::default();
    assert_eq!(
        tb_spawn_blocking(rt, Some(quick_job), std::ptr::null_mut(), None, &mut queued),
        TB_OK
    );
    assert_eq!(
        tb_task_on_complete(queued, completion, std::ptr::null_mut()),
        TB_OK
    );
    (rt, held, queued)
}

mod cancel_racing_shutdown_callbacks {
    use super::*;
    use std::sync::atomic::AtomicBool;

    static STARTED: AtomicBool = AtomicBool::new(false);
    static DONE: AtomicBool = AtomicBool::new(false);

    /// The cancelled job's completion callback: slow, on the cancelling thread.
    unsafe extern "C" fn slow_completion(_arg: *mut c_void, _t: tb_task, _o: *const tb_outcome) {
        STARTED.store(true, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(300));
        DONE.store(true, Ordering::SeqCst);
    }

    /// Found by the model test's soak. `tb_task_cancel` of a queued job claims it, then runs its
    /// `free_arg` and completion callback on the cancelling thread; a `tb_runtime_shutdown`
    /// meanwhile found the job claimed, left it to the canceller and returned `TB_OK` while
    /// the callback still ran, though `TB_OK` promises that no callback of the runtime runs
    /// after it. The pool now counts a job claimed by a cancel until its callbacks returned,
    /// and the shutdown waits for it.
    #[test]
    fn shutdown_waits_for_the_callbacks_of_a_job_cancelled_meanwhile() {
        let (rt, held, queued) = one_job_held_one_queued(Some(slow_completion));
        let canceller = thread::spawn(move || tb_task_cancel(queued));
        while !STARTED.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            tb_runtime_shutdown(rt, TB_FOREVER),
            TB_OK,
            "{}",
            last_error()
        );
        assert!(
            DONE.load(Ordering::SeqCst),
            "tb_runtime_shutdown returned TB_OK while a completion callback of its runtime ran"
        );
        assert_eq!(canceller.join().unwrap(), TB_OK);
        assert_eq!(outcome(queued).status, TB_ERR_CANCELLED);
        assert_eq!(outcome(held).status, TB_OK);
    }
}

mod shutdown_inside_a_cancelled_jobs_callback {
    use super::*;
    use std::sync::atomic::AtomicI64;
    use std::sync::mpsc;

    static RT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static SHUTDOWN_STATUS: AtomicI64 = AtomicI64::new(i64::MIN);

    unsafe extern "C" fn shut_down(_arg: *mut c_void, _t: tb_task, _o: *const tb_outcome) {
        let rt = tb_runtime {
            id: RT.load(Ordering::SeqCst),
        };
        SHUTDOWN_STATUS.store(
            i64::from(tb_runtime_shutdown(rt, TB_FOREVER)),
            Ordering::SeqCst,
        );
    }

    /// Guards the fix above against a deadlock of its own: the completion callback of a job
    /// cancelled while queued runs on the cancelling thread, and a shutdown of the job's
    /// runtime from inside it must not wait for the cancel that is running it. Like a shutdown
    /// from any callback of the runtime, it returns `TB_PENDING` and finishes in the
    /// background.
    #[test]
    fn shutting_the_runtime_down_from_a_cancelled_jobs_callback_does_not_wait_for_itself() {
        let (rt, held, queued) = one_job_held_one_queued(Some(shut_down));
        RT.store(rt.id, Ordering::SeqCst);
        let (sent, cancelled) = mpsc::channel();
        thread::spawn(move || sent.send(tb_task_cancel(queued)).unwrap());
        let status = cancelled
            .recv_timeout(Duration::from_secs(20))
            .expect("tb_task_cancel hung: the shutdown inside its callback waited for it");
        assert_eq!(status, TB_OK);
        assert_eq!(
            SHUTDOWN_STATUS.load(Ordering::SeqCst),
            i64::from(TB_PENDING)
        );
        assert_eq!(tb_task_wait(held, 20_000), TB_OK);
        assert_eq!(outcome(queued).status, TB_ERR_CANCELLED);
    }
}

/// Found by the model test's soak. `tb_queue_fd` looked the queue up, then read its fd, and
/// took a fd closed by a `tb_queue_free` on another thread in between for a broken invariant:
/// `TB_ERR_PANIC` (undocumented). It now answers `TB_ERR_BAD_HANDLE`, as it would a moment
/// later. The race is narrow: this test hit it in most runs before the fix, not all.
#[test]
fn queue_fd_racing_queue_free_is_a_bad_handle() {
    use std::sync::atomic::AtomicU64;
    use tokio_bridge::queue::*;
    static CURRENT: AtomicU64 = AtomicU64::new(0);
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let reader = thread::spawn(|| {
        let mut statuses = Vec::new();
        while !DONE.load(Ordering::SeqCst) {
            let mut fd = -1;
            let q = tb_queue {
                id: CURRENT.load(Ordering::SeqCst),
            };
            let status = tb_queue_fd(q, &mut fd);
            if status != TB_OK && status != TB_ERR_BAD_HANDLE {
                statuses.push(status);
            }
        }
        statuses
    });
    for _ in 0..50_000 {
        let mut q = tb_queue::default();
        assert_eq!(tb_queue_new(&mut q), TB_OK);
        CURRENT.store(q.id, Ordering::SeqCst);
        thread::yield_now();
        assert_eq!(tb_queue_free(q), TB_OK);
    }
    DONE.store(true, Ordering::SeqCst);
    let statuses = reader.join().unwrap();
    assert!(statuses.is_empty(), "tb_queue_fd returned {statuses:?}");
}
