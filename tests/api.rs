//! The C API's documented semantics, checked through the exported functions themselves.
//!
//! Timing assertions are generous ratios or lower bounds: these tests run on loaded 2-core
//! machines.

use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use tokio_bridge::completion::*;
use tokio_bridge::error::*;
use tokio_bridge::job::*;
use tokio_bridge::runtime::*;
use tokio_bridge::timer::*;
use tokio_bridge::version::*;

mod common;
use common::*;

#[test]
fn a_blocking_job_runs_once_on_a_blocking_thread_then_frees_its_arg() {
    let rt = runtime();
    let p = probe();
    let t = spawn(rt, Some(job_fn), p);
    let o = outcome(t);
    assert_eq!((o.status, o.code), (TB_OK, 0));
    assert_eq!(p.runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        p.frees.load(Ordering::SeqCst),
        1,
        "free_arg ran before the task finished"
    );
    let name = p.threads.lock().unwrap()[0].clone();
    assert!(name.starts_with("tb-blocking-"), "{name}");
    assert_eq!(tb_task_release(t), TB_OK);
    shutdown(rt);
}

#[test]
fn a_non_zero_return_is_a_callback_error_with_its_code() {
    let rt = runtime();
    let p = probe();
    p.code.store(5, Ordering::SeqCst);
    let o = outcome(spawn(rt, Some(job_fn), p));
    assert_eq!((o.status, o.code), (TB_ERR_CALLBACK, 5));
    let mut t = tb_task::default();
    assert_eq!(
        tb_spawn_blocking(rt, Some(result_fn), std::ptr::null_mut(), None, &mut t),
        TB_OK
    );
    assert_eq!(outcome(t).value as usize, 0xdead);
    shutdown(rt);
}

#[test]
fn the_outcome_measures_queue_and_run_time() {
    let rt = runtime();
    let p = probe_with_sleep_ms(50);
    let o = outcome(spawn(rt, Some(job_fn), p));
    assert!(o.run_us >= 45_000, "run_us {}", o.run_us);
    assert!(o.queued_us < o.run_us);
    shutdown(rt);
}

#[test]
fn a_job_queued_behind_another_reports_how_long_it_waited() {
    let rt = runtime_with(&config(1, 1));
    // The pool's only thread is held by a job that runs until it is cancelled.
    let holder = probe_with_sleep_ms(60_000);
    let first = spawn(rt, Some(chunked_fn), holder);
    wait_until("the first job runs", || {
        holder.runs.load(Ordering::SeqCst) == 1
    });
    let submitted = Instant::now();
    let second = spawn(rt, Some(job_fn), probe());
    thread::sleep(Duration::from_millis(50));
    assert_eq!(tb_task_cancel(first), TB_ERR_BUSY, "running: only flagged");
    let waited = outcome(second).queued_us;
    let bound = submitted.elapsed().as_micros() as u64;
    assert!(
        (50_000..=bound).contains(&waited),
        "queued {waited} us; at least 50,000 and at most the {bound} us since its submission"
    );
    outcome(first);
    shutdown(rt);
}

#[test]
fn failed_submissions_never_run_or_free_anything() {
    let rt = runtime();
    let p = probe();
    let mut t = tb_task::default();
    assert_eq!(
        tb_spawn_blocking(rt, None, arg(p), Some(free_fn), &mut t),
        TB_ERR_NULL
    );
    assert!(last_error().contains("func"));
    assert_eq!(
        tb_spawn_blocking(
            rt,
            Some(job_fn),
            arg(p),
            Some(free_fn),
            std::ptr::null_mut()
        ),
        TB_ERR_NULL
    );
    assert!(last_error().contains("out"));
    let forged = tb_runtime {
        id: 0x1000_0000_dead_beef,
    };
    assert_eq!(
        tb_spawn_blocking(forged, Some(job_fn), arg(p), Some(free_fn), &mut t),
        TB_ERR_BAD_HANDLE
    );
    assert_eq!(
        tb_timer_start(forged, 1, 1, Some(tick_fn), arg(p), Some(free_fn), &mut t),
        TB_ERR_BAD_HANDLE
    );
    assert_eq!(
        tb_timer_start(rt, 1, 1, None, arg(p), Some(free_fn), &mut t),
        TB_ERR_NULL
    );
    assert_eq!(tb_sleep(rt, 1, std::ptr::null_mut()), TB_ERR_NULL);
    assert_eq!(
        t,
        tb_task::default(),
        "out-params are written only on success"
    );
    shutdown(rt);
    assert_eq!(
        tb_spawn_blocking(rt, Some(job_fn), arg(p), Some(free_fn), &mut t),
        TB_ERR_SHUTDOWN
    );
    assert_eq!(
        tb_timer_start(rt, 1, 1, Some(tick_fn), arg(p), Some(free_fn), &mut t),
        TB_ERR_SHUTDOWN
    );
    assert_eq!(tb_sleep(rt, 1, &mut t), TB_ERR_SHUTDOWN);
    assert!(last_error().contains("shut down"), "{}", last_error());
    thread::sleep(Duration::from_millis(20));
    assert_eq!(p.runs.load(Ordering::SeqCst), 0);
    assert_eq!(p.frees.load(Ordering::SeqCst), 0);
}

#[test]
fn the_queue_bound_returns_busy_and_loses_nothing() {
    let mut cfg = config(1, 1);
    cfg.max_queued_blocking = 2;
    let rt = runtime_with(&cfg);
    let blocker = probe_with_sleep_ms(200);
    let running = spawn(rt, Some(job_fn), blocker);
    wait_until("the blocker runs", || {
        blocker.threads.lock().unwrap().len() == 1
    });
    let p = probe();
    let queued: Vec<tb_task> = (0..2).map(|_| spawn(rt, Some(job_fn), p)).collect();
    let mut t = tb_task::default();
    assert_eq!(
        tb_spawn_blocking(rt, Some(job_fn), arg(p), Some(free_fn), &mut t),
        TB_ERR_BUSY
    );
    assert!(last_error().contains("max_queued_blocking"));
    assert_eq!(tb_task_cancel(queued[1]), TB_OK, "cancelling frees a place");
    let third = spawn(rt, Some(job_fn), p);
    for t in [running, queued[0], third] {
        assert_eq!(outcome(t).status, TB_OK);
    }
    assert_eq!(p.runs.load(Ordering::SeqCst), 2);
    assert_eq!(p.frees.load(Ordering::SeqCst), 3);
    shutdown(rt);
}

#[test]
fn the_pool_never_runs_more_jobs_than_max_blocking_threads() {
    let rt = runtime_with(&config(1, 4));
    let in_flight: &'static _ = Box::leak(Box::new((AtomicUsize::new(0), AtomicUsize::new(0))));
    unsafe extern "C" fn counted(arg: *mut c_void, _job: *mut tb_job) -> i32 {
        let (now, peak) = &*arg.cast::<(AtomicUsize, AtomicUsize)>();
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(n, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(50));
        now.fetch_sub(1, Ordering::SeqCst);
        0
    }
    let started = Instant::now();
    let tasks: Vec<tb_task> = (0..8)
        .map(|_| {
            let mut t = tb_task::default();
            let a = std::ptr::from_ref(in_flight).cast_mut().cast();
            assert_eq!(tb_spawn_blocking(rt, Some(counted), a, None, &mut t), TB_OK);
            t
        })
        .collect();
    assert_eq!(tb_wait_all(tasks.as_ptr(), tasks.len(), TB_FOREVER), TB_OK);
    assert!(
        started.elapsed() >= Duration::from_millis(95),
        "two rounds of 50 ms"
    );
    assert_eq!(in_flight.1.load(Ordering::SeqCst), 4);
    shutdown(rt);
}

/// Flags shared by the jobs of `a_job_left_to_a_busy_thread_starts_when_that_job_is_long`.
#[derive(Default)]
struct Handoff {
    met: AtomicUsize,
    long_started: AtomicBool,
    quick_ran: AtomicBool,
}

/// A `Handoff`, leaked so that a job outliving a failed test's body never reads freed memory.
fn handoff() -> &'static Handoff {
    Box::leak(Box::default())
}

#[test]
fn a_job_left_to_a_busy_thread_starts_when_that_job_is_long() {
    // With quick jobs, a new job is left to a drainer inside one rather than waking a sleeping
    // drainer. Here the busy drainer's job turns out long: the new job must still start soon,
    // on the other drainer, and not only when the long one ends (after 3 s; the other drainer
    // would also wake by itself when its keep-alive time of 10 s is up).
    unsafe extern "C" fn meet(arg: *mut c_void, _job: *mut tb_job) -> i32 {
        let h = &*arg.cast::<Handoff>();
        h.met.fetch_add(1, Ordering::SeqCst);
        i32::from(!within(10, || h.met.load(Ordering::SeqCst) >= 2))
    }
    unsafe extern "C" fn nothing(_arg: *mut c_void, _job: *mut tb_job) -> i32 {
        0
    }
    unsafe extern "C" fn long(arg: *mut c_void, _job: *mut tb_job) -> i32 {
        let h = &*arg.cast::<Handoff>();
        h.long_started.store(true, Ordering::SeqCst);
        i32::from(!within(3, || h.quick_ran.load(Ordering::SeqCst)))
    }
    unsafe extern "C" fn quick(arg: *mut c_void, _job: *mut tb_job) -> i32 {
        (*arg.cast::<Handoff>())
            .quick_ran
            .store(true, Ordering::SeqCst);
        0
    }
    let rt = runtime_with(&config(1, 4));
    let h = handoff();
    let a = std::ptr::from_ref(h).cast_mut().cast();
    let submit = |f: unsafe extern "C" fn(*mut c_void, *mut tb_job) -> i32| {
        let mut t = tb_task::default();
        assert_eq!(tb_spawn_blocking(rt, Some(f), a, None, &mut t), TB_OK);
        t
    };
    // Two drainers (two jobs that wait for each other), then quick jobs only, then both idle.
    let (x, y) = (submit(meet), submit(meet));
    assert_eq!((outcome(x).code, outcome(y).code), (0, 0));
    let quick_jobs = if cfg!(miri) { 20 } else { 200 };
    for _ in 0..quick_jobs {
        assert_eq!(outcome(submit(nothing)).status, TB_OK);
    }
    thread::sleep(Duration::from_millis(20));
    // Under Miri every interpreted job is long, so no job is left to a busy drainer anyway.
    let rounds = if cfg!(miri) { 2 } else { 40 };
    for round in 0..rounds {
        h.long_started.store(false, Ordering::SeqCst);
        h.quick_ran.store(false, Ordering::SeqCst);
        if round > 0 {
            // A burst first, whose jobs are partly left to busy drainers: a check for them is
            // pending, and may come while the job below is still young.
            let burst: Vec<tb_task> = (0..50).map(|_| submit(nothing)).collect();
            for t in burst {
                assert_eq!(outcome(t).status, TB_OK);
                assert_eq!(tb_task_release(t), TB_OK);
            }
            thread::sleep(Duration::from_micros(100 * (round % 12)));
        }
        let held = submit(long);
        wait_until("the long job runs", || {
            h.long_started.load(Ordering::SeqCst)
        });
        let left = submit(quick);
        assert_eq!(
            outcome(held).code,
            0,
            "round {round}: the quick job ran while the long one held its thread"
        );
        assert_eq!(outcome(left).status, TB_OK);
        for t in [held, left] {
            assert_eq!(tb_task_release(t), TB_OK);
        }
    }
    for t in [x, y] {
        assert_eq!(tb_task_release(t), TB_OK);
    }
    shutdown(rt);
}

#[test]
fn a_sleep_finishes_after_its_delay_on_a_worker() {
    let rt = runtime();
    let started = Instant::now();
    let mut t = tb_task::default();
    assert_eq!(tb_sleep(rt, 60, &mut t), TB_OK);
    assert_eq!(tb_task_poll(t), TB_PENDING);
    let p = probe();
    assert_eq!(tb_task_on_complete(t, Some(complete_fn), arg(p)), TB_OK);
    let o = outcome(t);
    assert!(started.elapsed() >= Duration::from_millis(59));
    assert_eq!(o.status, TB_OK);
    assert!(p.threads.lock().unwrap()[0].starts_with("tb-worker-"));
    shutdown(rt);
}

#[test]
fn a_timer_ticks_on_a_worker_until_its_callback_stops_it() {
    let rt = runtime();
    let p = probe();
    p.sleep_ms.store(3, Ordering::SeqCst); // stop at the third tick
    let mut t = tb_task::default();
    assert_eq!(
        tb_timer_start(rt, 5, 10, Some(tick_fn), arg(p), Some(free_fn), &mut t),
        TB_OK
    );
    let o = outcome(t);
    assert_eq!((o.status, o.code, o.ticks), (TB_OK, 7, 3));
    assert_eq!(p.frees.load(Ordering::SeqCst), 1);
    assert!(p
        .threads
        .lock()
        .unwrap()
        .iter()
        .all(|n| n.starts_with("tb-worker-")));

    let once = probe_with_sleep_ms(100);
    assert_eq!(
        tb_timer_start(rt, 1, 0, Some(tick_fn), arg(once), Some(free_fn), &mut t),
        TB_OK
    );
    let o = outcome(t);
    assert_eq!(
        (o.status, o.code, o.ticks),
        (TB_OK, 0, 1),
        "period 0 runs once"
    );
    shutdown(rt);
}

#[test]
fn missed_ticks_are_delayed_not_burst() {
    // The first tick blocks its worker for 100 ms, missing ten 10 ms periods. Had the missed
    // ticks been made up, the three after the slow one would come back to back, right after it
    // ends; delayed, the next one comes a period after the slow one ends and the others a period
    // apart, so the fourth tick is at least 130 ms after the first (load can only stretch that,
    // and a tick that itself runs late only moves the ones after it later).
    static TIMES: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
    unsafe extern "C" fn slow_first(_arg: *mut c_void, tick: u64) -> i32 {
        TIMES.lock().unwrap().push(Instant::now());
        if tick == 0 {
            thread::sleep(Duration::from_millis(100));
        }
        i32::from(tick == 3)
    }
    let rt = runtime();
    let mut t = tb_task::default();
    assert_eq!(
        tb_timer_start(
            rt,
            0,
            10,
            Some(slow_first),
            std::ptr::null_mut(),
            None,
            &mut t
        ),
        TB_OK
    );
    assert_eq!(outcome(t).ticks, 4);
    let times = TIMES.lock().unwrap();
    assert!(
        times[3] - times[0] >= Duration::from_millis(129),
        "ticks burst: {times:?}"
    );
    shutdown(rt);
}

#[test]
fn wait_times_out_and_the_job_still_finishes_later() {
    let rt = runtime();
    let p = probe_with_sleep_ms(300);
    let t = spawn(rt, Some(job_fn), p);
    assert_eq!(tb_task_wait(t, 0), TB_TIMED_OUT, "0 only checks");
    let started = Instant::now();
    assert_eq!(tb_task_wait(t, 50), TB_TIMED_OUT);
    assert!(started.elapsed() >= Duration::from_millis(49));
    let mut o = tb_outcome::default();
    assert_eq!(tb_task_outcome(t, &mut o), TB_PENDING);
    assert_eq!(tb_task_outcome(t, std::ptr::null_mut()), TB_ERR_NULL);
    assert_eq!(outcome(t).status, TB_OK);
    assert_eq!(p.frees.load(Ordering::SeqCst), 1);
    shutdown(rt);
}

#[cfg(target_os = "linux")]
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
        0
    );
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(target_os = "linux")]
#[test]
fn a_waiter_sleeps_instead_of_spinning() {
    let rt = runtime();
    let p = probe_with_sleep_ms(400);
    let t = spawn(rt, Some(job_fn), p);
    let before = thread_cpu_time();
    assert_eq!(tb_task_wait(t, TB_FOREVER), TB_OK);
    let spent = thread_cpu_time() - before;
    assert!(
        spent < Duration::from_millis(100),
        "waiting 400 ms cost {spent:?} of CPU"
    );
    shutdown(rt);
}

/// Tasks share the locks and condition variables that registrations and sleeping waiters use
/// (a task's address picks one of 64): 300 sleeps (80 under Miri), each with a completion
/// callback, a `tb_wait_any` watcher and a thread waiting for it, all end, their callbacks run
/// once and every waiter wakes, however the tasks fall on the shared stripes.
#[test]
fn waiters_and_callbacks_of_many_tasks_all_wake_and_run_once() {
    let tasks_n = if cfg!(miri) { 80 } else { 300 };
    const WAITERS: usize = 6;
    let rt = runtime();
    let p = probe();
    let tasks: Vec<tb_task> = (0..tasks_n)
        .map(|i| {
            let mut t = tb_task::default();
            assert_eq!(tb_sleep(rt, 20 + (i % 7) as u64 * 10, &mut t), TB_OK);
            assert_eq!(tb_task_on_complete(t, Some(complete_fn), arg(p)), TB_OK);
            t
        })
        .collect();
    let started = Instant::now();
    let waiters: Vec<_> = (0..WAITERS)
        .map(|w| {
            let mine: Vec<tb_task> = tasks.iter().skip(w).step_by(WAITERS).copied().collect();
            thread::spawn(move || {
                let mut index = usize::MAX;
                for pair in mine.chunks(2) {
                    let n = pair.len();
                    assert_eq!(tb_wait_any(pair.as_ptr(), n, TB_FOREVER, &mut index), TB_OK);
                    for &t in pair {
                        assert_eq!(tb_task_wait(t, TB_FOREVER), TB_OK);
                    }
                }
            })
        })
        .collect();
    for waiter in waiters {
        waiter.join().unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the waits took {:?}",
        started.elapsed()
    );
    assert_eq!(p.completions.load(Ordering::SeqCst), tasks_n);
    assert!(p.statuses.lock().unwrap().iter().all(|&s| s == TB_OK));
    for t in tasks {
        assert_eq!(tb_task_release(t), TB_OK);
    }
    shutdown(rt);
}

#[test]
fn waiting_inside_a_timer_callback_is_refused() {
    static RESULTS: Mutex<Vec<tb_status>> = Mutex::new(Vec::new());
    unsafe extern "C" fn waits(arg: *mut c_void, _tick: u64) -> i32 {
        let t = *arg.cast::<tb_task>();
        let mut index = 0;
        let mut results = RESULTS.lock().unwrap();
        results.push(tb_task_wait(t, 100));
        results.push(tb_task_wait(t, 0));
        results.push(tb_wait_all(&t, 1, 100));
        results.push(tb_wait_any(&t, 1, 100, &mut index));
        1
    }
    let rt = runtime();
    let p = probe_with_sleep_ms(500);
    let job = Box::leak(Box::new(spawn(rt, Some(job_fn), p)));
    let mut t = tb_task::default();
    assert_eq!(
        tb_timer_start(
            rt,
            1,
            0,
            Some(waits),
            std::ptr::from_mut(job).cast(),
            None,
            &mut t
        ),
        TB_OK
    );
    outcome(t);
    assert_eq!(
        *RESULTS.lock().unwrap(),
        [
            TB_ERR_ON_RUNTIME_THREAD,
            TB_TIMED_OUT,
            TB_ERR_ON_RUNTIME_THREAD,
            TB_ERR_ON_RUNTIME_THREAD
        ]
    );
    shutdown(rt);
}

#[test]
fn a_job_waiting_for_itself_is_refused() {
    unsafe extern "C" fn self_wait(arg: *mut c_void, _job: *mut tb_job) -> i32 {
        let slot = &*arg.cast::<Mutex<tb_task>>();
        let me = *slot.lock().unwrap();
        tb_task_wait(me, 1000)
    }
    let rt = runtime_with(&config(1, 1));
    let gate = probe_with_sleep_ms(50);
    let first = spawn(rt, Some(job_fn), gate); // holds the only thread while the slot is filled
    let slot: &'static Mutex<tb_task> = Box::leak(Box::default());
    let mut t = tb_task::default();
    let a = std::ptr::from_ref(slot).cast_mut().cast();
    assert_eq!(
        tb_spawn_blocking(rt, Some(self_wait), a, None, &mut t),
        TB_OK
    );
    *slot.lock().unwrap() = t;
    outcome(first);
    let o = outcome(t);
    assert_eq!((o.status, o.code), (TB_ERR_CALLBACK, TB_ERR_INVALID_ARG));
    shutdown(rt);
}

#[test]
fn wait_all_and_wait_any_follow_the_slowest_and_the_fastest() {
    let rt = runtime();
    let (slow, fast) = (probe(), probe());
    slow.sleep_ms.store(300, Ordering::SeqCst);
    fast.sleep_ms.store(10, Ordering::SeqCst);
    let tasks = [spawn(rt, Some(job_fn), slow), spawn(rt, Some(job_fn), fast)];
    let mut index = 99;
    assert_eq!(
        tb_wait_any(tasks.as_ptr(), 2, TB_FOREVER, &mut index),
        TB_OK
    );
    assert_eq!(index, 1);
    assert_eq!(tb_wait_all(tasks.as_ptr(), 2, 10), TB_TIMED_OUT);
    assert_eq!(tb_wait_all(tasks.as_ptr(), 2, TB_FOREVER), TB_OK);
    assert_eq!(tb_wait_any(tasks.as_ptr(), 2, 0, &mut index), TB_OK);
    assert_eq!(index, 0, "the lowest finished index");
    assert_eq!(tb_wait_all(std::ptr::null(), 0, TB_FOREVER), TB_OK);
    assert_eq!(tb_wait_all(std::ptr::null(), 1, TB_FOREVER), TB_ERR_NULL);
    assert_eq!(
        tb_wait_all(tasks.as_ptr(), usize::MAX, 0),
        TB_ERR_INVALID_ARG
    );
    assert_eq!(
        tb_wait_any(tasks.as_ptr(), usize::MAX / 2, 0, &mut index),
        TB_ERR_INVALID_ARG
    );
    assert_eq!(
        tb_wait_any(tasks.as_ptr(), 0, 0, &mut index),
        TB_ERR_INVALID_ARG
    );
    assert_eq!(
        tb_wait_any(tasks.as_ptr(), 2, 0, std::ptr::null_mut()),
        TB_ERR_NULL
    );
    let with_bad = [tasks[0], tb_task { id: 0 }];
    assert_eq!(tb_wait_all(with_bad.as_ptr(), 2, 0), TB_ERR_BAD_HANDLE);
    assert!(last_error().contains("tasks[1]"), "{}", last_error());

    let mut pending = tb_task::default();
    assert_eq!(tb_sleep(rt, 10_000, &mut pending), TB_OK);
    let started = Instant::now();
    assert_eq!(tb_wait_any(&pending, 1, 30, &mut index), TB_TIMED_OUT);
    assert!(started.elapsed() >= Duration::from_millis(29));
    shutdown(rt);
}

#[test]
fn cancelling_a_queued_job_frees_it_at_once_and_it_never_runs() {
    let rt = runtime_with(&config(1, 1));
    let blocker = probe_with_sleep_ms(200);
    let running = spawn(rt, Some(job_fn), blocker);
    let p = probe();
    let queued = spawn(rt, Some(job_fn), p);
    let cb = probe();
    assert_eq!(
        tb_task_on_complete(queued, Some(complete_fn), arg(cb)),
        TB_OK
    );
    assert_eq!(tb_task_cancel(queued), TB_OK);
    assert_eq!(
        p.frees.load(Ordering::SeqCst),
        1,
        "free_arg ran before cancel returned"
    );
    assert_eq!(
        cb.completions.load(Ordering::SeqCst),
        1,
        "and so did the callback"
    );
    assert_eq!(
        cb.threads.lock().unwrap()[0],
        thread_name(),
        "on the cancelling thread"
    );
    assert_eq!(tb_task_poll(queued), TB_OK);
    assert_eq!(outcome(queued).status, TB_ERR_CANCELLED);
    assert_eq!(tb_task_cancel(queued), TB_ERR_ALREADY);
    outcome(running);
    thread::sleep(Duration::from_millis(20));
    assert_eq!(p.runs.load(Ordering::SeqCst), 0, "never runs");
    shutdown(rt);
}

#[test]
fn cancelling_a_running_job_is_busy_and_cooperative() {
    let rt = runtime();
    let p = probe_with_sleep_ms(10_000);
    let t = spawn(rt, Some(chunked_fn), p);
    wait_until("the job runs", || p.runs.load(Ordering::SeqCst) == 1);
    let started = Instant::now();
    assert_eq!(tb_task_cancel(t), TB_ERR_BUSY);
    assert!(last_error().contains("running"));
    let o = outcome(t);
    assert!(started.elapsed() < Duration::from_secs(5), "stopped early");
    assert!(p.cancelled_seen.load(Ordering::SeqCst));
    assert_eq!(
        (o.status, o.code),
        (TB_ERR_CALLBACK, 42),
        "the outcome is what the job returned"
    );
    assert_eq!(tb_task_cancel(t), TB_ERR_ALREADY);
    shutdown(rt);
}

#[test]
fn cancelling_sleeps_and_timers_stops_them() {
    let rt = runtime();
    let mut s = tb_task::default();
    assert_eq!(tb_sleep(rt, 60_000, &mut s), TB_OK);
    assert_eq!(tb_task_cancel(s), TB_OK);
    assert_eq!(outcome(s).status, TB_ERR_CANCELLED);

    let p = probe();
    p.sleep_ms.store(u64::MAX, Ordering::SeqCst); // never stops by itself
    let mut t = tb_task::default();
    assert_eq!(
        tb_timer_start(rt, 0, 5, Some(tick_fn), arg(p), Some(free_fn), &mut t),
        TB_OK
    );
    wait_until("three ticks", || p.runs.load(Ordering::SeqCst) >= 3);
    assert_eq!(tb_task_cancel(t), TB_OK);
    let o = outcome(t);
    assert_eq!(o.status, TB_ERR_CANCELLED);
    let ticks = p.runs.load(Ordering::SeqCst);
    assert_eq!(o.ticks as usize, ticks);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(
        p.runs.load(Ordering::SeqCst),
        ticks,
        "no tick after the cancel"
    );
    assert_eq!(p.frees.load(Ordering::SeqCst), 1);
    assert_eq!(tb_task_cancel(t), TB_ERR_ALREADY);
    shutdown(rt);
}

#[test]
fn a_sleep_due_before_every_armed_one_is_not_held_up_by_them() {
    // The timer queue sleeps until its first armed task: one armed later but due sooner must
    // wake it.
    let rt = runtime();
    let mut long = tb_task::default();
    assert_eq!(tb_sleep(rt, 60_000, &mut long), TB_OK);
    thread::sleep(Duration::from_millis(20)); // the queue now sleeps for the minute
    let mut short = tb_task::default();
    assert_eq!(tb_sleep(rt, 30, &mut short), TB_OK);
    assert_eq!(tb_task_wait(short, 20_000), TB_OK);
    assert_eq!(tb_task_poll(long), TB_PENDING);
    assert_eq!(tb_task_cancel(long), TB_OK);
    assert_eq!(outcome(long).status, TB_ERR_CANCELLED);
    shutdown(rt);
}

#[test]
fn timers_due_in_the_same_millisecond_cancel_in_any_order_at_once() {
    // Started in a burst, the timers share the queue's few millisecond buckets: cancelling them
    // in a random order moves the others within their bucket, and each must still be found and
    // ended at once (a cancel that missed its timer would end it only after the minute).
    let rt = runtime();
    let p = probe();
    let n = if cfg!(miri) { 300 } else { 3000 };
    let mut timers = vec![tb_task::default(); n];
    for t in &mut timers {
        assert_eq!(
            tb_timer_start(rt, 60_000, 0, Some(tick_fn), arg(p), Some(free_fn), t),
            TB_OK
        );
    }
    let mut order: Vec<usize> = (0..n).filter(|i| i % 10 != 0).collect();
    let mut rng = Rng::new(7);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &i in &order {
        assert_eq!(tb_task_cancel(timers[i]), TB_OK);
    }
    for &i in &order {
        assert_eq!(
            tb_task_wait(timers[i], 20_000),
            TB_OK,
            "timer {i} not ended"
        );
        let mut o = tb_outcome::default();
        assert_eq!(tb_task_outcome(timers[i], &mut o), TB_OK);
        assert_eq!((o.status, o.ticks), (TB_ERR_CANCELLED, 0));
    }
    assert_eq!(p.frees.load(Ordering::SeqCst), order.len());
    shutdown(rt);
    for (i, &t) in timers.iter().enumerate() {
        let mut o = tb_outcome::default();
        assert_eq!(tb_task_outcome(t, &mut o), TB_OK);
        let expected = if i % 10 == 0 {
            TB_ERR_SHUTDOWN
        } else {
            TB_ERR_CANCELLED
        };
        assert_eq!(o.status, expected, "timer {i}");
        assert_eq!(tb_task_release(t), TB_OK);
    }
    assert_eq!(p.frees.load(Ordering::SeqCst), n);
    assert_eq!(p.runs.load(Ordering::SeqCst), 0);
}

#[test]
fn a_completion_callback_runs_once_on_the_thread_that_finishes_the_task() {
    let rt = runtime();
    let p = probe_with_sleep_ms(30);
    let t = spawn(rt, Some(job_fn), p);
    let cb = probe();
    assert_eq!(tb_task_on_complete(t, Some(complete_fn), arg(cb)), TB_OK);
    assert_eq!(
        tb_task_on_complete(t, Some(complete_fn), arg(cb)),
        TB_ERR_ALREADY
    );
    assert_eq!(tb_task_on_complete(t, None, arg(cb)), TB_ERR_NULL);
    outcome(t);
    assert_eq!(
        cb.completions.load(Ordering::SeqCst),
        1,
        "finished only after the callback"
    );
    assert!(cb.threads.lock().unwrap()[0].starts_with("tb-blocking-"));

    // Registered after the end: runs at once, on the caller's thread.
    let late = spawn(rt, Some(job_fn), probe());
    outcome(late);
    let cb2 = probe();
    assert_eq!(
        tb_task_on_complete(late, Some(complete_fn), arg(cb2)),
        TB_OK
    );
    assert_eq!(cb2.completions.load(Ordering::SeqCst), 1);
    assert_eq!(cb2.threads.lock().unwrap()[0], thread_name());
    shutdown(rt);
}

#[test]
fn on_complete_racing_completion_fires_exactly_once() {
    let rt = runtime();
    let cb = probe();
    let n = 2000;
    let tasks: Vec<tb_task> = (0..n)
        .map(|_| {
            let mut t = tb_task::default();
            assert_eq!(
                tb_spawn_blocking(rt, Some(result_fn), std::ptr::null_mut(), None, &mut t),
                TB_OK
            );
            assert_eq!(tb_task_on_complete(t, Some(complete_fn), arg(cb)), TB_OK);
            t
        })
        .collect();
    assert_eq!(tb_wait_all(tasks.as_ptr(), n, TB_FOREVER), TB_OK);
    assert_eq!(cb.completions.load(Ordering::SeqCst), n);
    for t in tasks {
        assert_eq!(tb_task_release(t), TB_OK);
    }
    shutdown(rt);
}

#[test]
fn cancel_racing_start_has_exactly_one_winner() {
    let rt = runtime_with(&config(1, 4));
    let p = probe();
    let cb = probe();
    let n = 2000;
    let (mut cancelled, mut ran) = (0, 0);
    for _ in 0..n {
        let t = spawn(rt, Some(result_fn), p);
        assert_eq!(tb_task_on_complete(t, Some(complete_fn), arg(cb)), TB_OK);
        match tb_task_cancel(t) {
            TB_OK => {
                cancelled += 1;
                assert_eq!(outcome(t).status, TB_ERR_CANCELLED);
            }
            TB_ERR_BUSY | TB_ERR_ALREADY => {
                ran += 1;
                assert_eq!(outcome(t).status, TB_OK);
            }
            other => panic!("unexpected {other}"),
        }
        assert_eq!(tb_task_release(t), TB_OK);
    }
    assert_eq!(cancelled + ran, n);
    wait_until("all callbacks", || {
        cb.completions.load(Ordering::SeqCst) == n
    });
    assert_eq!(p.frees.load(Ordering::SeqCst), n);
    shutdown(rt);
}

#[test]
fn handles_are_checked_by_type_generation_and_liveness() {
    let rt = runtime();
    let t = spawn(rt, Some(job_fn), probe());
    outcome(t);
    for bad in [
        tb_task { id: 0 },
        tb_task {
            id: 0x2000_0000_ffff_ffff,
        },
        tb_task { id: u64::MAX },
        tb_task { id: rt.id }, // a runtime passed as a task
    ] {
        assert_eq!(tb_task_poll(bad), TB_ERR_BAD_HANDLE, "{bad:?}");
        assert_eq!(tb_task_wait(bad, 0), TB_ERR_BAD_HANDLE);
        assert_eq!(tb_task_cancel(bad), TB_ERR_BAD_HANDLE);
        assert_eq!(tb_task_release(bad), TB_ERR_BAD_HANDLE);
        assert_eq!(
            tb_task_on_complete(bad, Some(complete_fn), std::ptr::null_mut()),
            TB_ERR_BAD_HANDLE
        );
    }
    assert!(last_error().contains("wrong type"), "{}", last_error());
    assert_eq!(
        tb_sleep(tb_runtime { id: t.id }, 1, &mut tb_task::default()),
        TB_ERR_BAD_HANDLE
    );
    assert_eq!(tb_task_release(t), TB_OK);
    assert_eq!(tb_task_release(t), TB_ERR_BAD_HANDLE, "double release");
    assert!(last_error().contains("not live"));
    assert_eq!(tb_task_poll(t), TB_ERR_BAD_HANDLE, "stale");
    assert_eq!(
        tb_task_outcome(t, &mut tb_outcome::default()),
        TB_ERR_BAD_HANDLE
    );
    shutdown(rt);
}

#[test]
fn a_released_task_runs_to_its_end_and_its_slot_is_reused() {
    let rt = runtime();
    let p = probe_with_sleep_ms(50);
    let cb = probe();
    let t = spawn(rt, Some(job_fn), p);
    assert_eq!(tb_task_on_complete(t, Some(complete_fn), arg(cb)), TB_OK);
    assert_eq!(tb_task_release(t), TB_OK);
    wait_until("the released job ends", || {
        cb.completions.load(Ordering::SeqCst) == 1
    });
    assert_eq!(
        (
            p.runs.load(Ordering::SeqCst),
            p.frees.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
    // Memory of released tasks is reused: the next task on this thread takes the same slot.
    let next = spawn(rt, Some(result_fn), probe());
    assert_eq!(next.id & 0xffff_ffff, t.id & 0xffff_ffff);
    assert_ne!(next.id, t.id);
    outcome(next);
    shutdown(rt);
}

#[test]
fn shutdown_ends_queued_jobs_and_timers_and_waits_for_running_ones() {
    let rt = runtime_with(&config(1, 2));
    let running = probe_with_sleep_ms(150);
    let cb = probe();
    let r: Vec<tb_task> = (0..2).map(|_| spawn(rt, Some(job_fn), running)).collect();
    wait_until("both run", || running.threads.lock().unwrap().len() == 2);
    let queued = probe();
    let q: Vec<tb_task> = (0..100).map(|_| spawn(rt, Some(job_fn), queued)).collect();
    let ticking = probe_with_sleep_ms(u64::MAX);
    let mut timer = tb_task::default();
    assert_eq!(
        tb_timer_start(
            rt,
            0,
            5,
            Some(tick_fn),
            arg(ticking),
            Some(free_fn),
            &mut timer
        ),
        TB_OK
    );
    for &t in r.iter().chain(&q).chain([&timer]) {
        assert_eq!(tb_task_on_complete(t, Some(complete_fn), arg(cb)), TB_OK);
    }
    assert_eq!(tb_runtime_shutdown(rt, 10_000), TB_OK);
    assert_eq!(
        cb.completions.load(Ordering::SeqCst),
        103,
        "every callback ran before TB_OK"
    );
    assert_eq!(queued.runs.load(Ordering::SeqCst), 0);
    assert_eq!(queued.frees.load(Ordering::SeqCst), 100);
    assert_eq!(running.frees.load(Ordering::SeqCst), 2);
    assert_eq!(ticking.frees.load(Ordering::SeqCst), 1);
    for &t in &r {
        assert_eq!(outcome(t).status, TB_OK);
    }
    for &t in &q {
        assert_eq!(outcome(t).status, TB_ERR_SHUTDOWN);
    }
    assert_eq!(outcome(timer).status, TB_ERR_SHUTDOWN);
    thread::sleep(Duration::from_millis(30));
    assert_eq!(
        cb.completions.load(Ordering::SeqCst),
        103,
        "nothing after TB_OK"
    );
    assert_eq!(
        tb_runtime_shutdown(rt, 0),
        TB_ERR_SHUTDOWN,
        "the handle is dead"
    );
}

#[test]
fn shutdown_times_out_and_the_running_job_is_recorded_later() {
    let rt = runtime();
    let p = probe_with_sleep_ms(400);
    let t = spawn(rt, Some(chunked_fn), p);
    let slow = probe_with_sleep_ms(400);
    let plain = spawn(rt, Some(job_fn), slow);
    wait_until("both run", || {
        p.runs.load(Ordering::SeqCst) == 1 && slow.threads.lock().unwrap().len() == 1
    });
    let started = Instant::now();
    assert_eq!(tb_runtime_shutdown(rt, 50), TB_TIMED_OUT);
    assert!(
        started.elapsed() < Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    let o = outcome(plain);
    assert_eq!(o.status, TB_OK, "recorded normally");
    assert_eq!(slow.frees.load(Ordering::SeqCst), 1);
    assert_eq!(
        outcome(t).code,
        42,
        "tb_job_cancelled turned true at shutdown"
    );
}

#[test]
fn shutdown_from_inside_callbacks_does_not_deadlock() {
    static RESULTS: Mutex<Vec<tb_status>> = Mutex::new(Vec::new());
    unsafe extern "C" fn stop_from_timer(arg: *mut c_void, _tick: u64) -> i32 {
        RESULTS
            .lock()
            .unwrap()
            .push(tb_runtime_shutdown(*arg.cast::<tb_runtime>(), TB_FOREVER));
        1
    }
    unsafe extern "C" fn stop_from_job(arg: *mut c_void, _job: *mut tb_job) -> i32 {
        RESULTS
            .lock()
            .unwrap()
            .push(tb_runtime_shutdown(*arg.cast::<tb_runtime>(), TB_FOREVER));
        0
    }
    for current_thread in [false, true] {
        for from_job in [false, true] {
            let mut cfg = config(if current_thread { 1 } else { 2 }, 4);
            cfg.flavor = if current_thread {
                TB_CURRENT_THREAD
            } else {
                TB_MULTI_THREAD
            };
            let rt = Box::leak(Box::new(runtime_with(&cfg)));
            let a = std::ptr::from_mut(rt).cast();
            let mut t = tb_task::default();
            let status = if from_job {
                tb_spawn_blocking(*rt, Some(stop_from_job), a, None, &mut t)
            } else {
                tb_timer_start(*rt, 1, 0, Some(stop_from_timer), a, None, &mut t)
            };
            assert_eq!(status, TB_OK);
            let o = outcome(t);
            assert_eq!(o.status, TB_OK);
            assert_eq!(RESULTS.lock().unwrap().pop(), Some(TB_PENDING));
            let mut s = tb_task::default();
            assert_eq!(tb_sleep(*rt, 1, &mut s), TB_ERR_SHUTDOWN);
        }
    }
}

#[test]
fn a_current_thread_runtime_runs_timers_on_its_own_thread() {
    let mut cfg = config(0, 4);
    cfg.flavor = TB_CURRENT_THREAD;
    let name = c"ct";
    cfg.thread_name = name.as_ptr();
    let rt = runtime_with(&cfg);
    let p = probe_with_sleep_ms(2);
    let mut t = tb_task::default();
    assert_eq!(
        tb_timer_start(rt, 1, 1, Some(tick_fn), arg(p), None, &mut t),
        TB_OK
    );
    outcome(t);
    // The job waits for its completion callback to be registered, so that the callback runs
    // where the job ends and not at once on this thread, however the threads are scheduled.
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    unsafe extern "C" fn after_registration(_arg: *mut c_void, _job: *mut tb_job) -> i32 {
        while !REGISTERED.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
        0
    }
    let mut job = tb_task::default();
    assert_eq!(
        tb_spawn_blocking(
            rt,
            Some(after_registration),
            std::ptr::null_mut(),
            None,
            &mut job
        ),
        TB_OK
    );
    let cb = probe();
    assert_eq!(tb_task_on_complete(job, Some(complete_fn), arg(cb)), TB_OK);
    REGISTERED.store(true, Ordering::SeqCst);
    outcome(job);
    assert!(p.threads.lock().unwrap().iter().all(|n| n == "ct-worker-0"));
    assert!(cb.threads.lock().unwrap()[0].starts_with("ct-blocking-"));
    shutdown(rt);
}

#[test]
fn the_default_runtime_is_shared_and_cannot_be_shut_down() {
    let (mut a, mut b) = (tb_runtime::default(), tb_runtime::default());
    assert_eq!(tb_runtime_default(&mut a), TB_OK);
    assert_eq!(tb_runtime_default(&mut b), TB_OK);
    assert_eq!(a, b);
    assert_eq!(tb_runtime_default(std::ptr::null_mut()), TB_ERR_NULL);
    assert_eq!(outcome(spawn(a, Some(result_fn), probe())).status, TB_OK);
    assert_eq!(tb_runtime_shutdown(a, 0), TB_ERR_INVALID_ARG);
    assert!(last_error().contains("default runtime"));
}

#[test]
fn configs_are_validated_and_named_in_the_error() {
    let mut rt = tb_runtime::default();
    assert_eq!(
        tb_runtime_new(std::ptr::null(), std::ptr::null_mut()),
        TB_ERR_NULL
    );
    let mut cfg = config(0, 0);
    cfg.flavor = 9;
    assert_eq!(tb_runtime_new(&cfg, &mut rt), TB_ERR_INVALID_ARG);
    assert!(last_error().contains("flavor"));
    let mut cfg = config(0, 0);
    cfg.struct_size = 1000;
    assert_eq!(tb_runtime_new(&cfg, &mut rt), TB_ERR_INVALID_ARG);
    assert!(last_error().contains("struct_size"));
    let mut cfg = config(5000, 0);
    assert_eq!(tb_runtime_new(&cfg, &mut rt), TB_ERR_INVALID_ARG);
    assert!(last_error().contains("worker_threads"));
    cfg = config(0, 0);
    cfg.thread_name = c"".as_ptr();
    assert_eq!(tb_runtime_new(&cfg, &mut rt), TB_ERR_INVALID_ARG);
    assert!(last_error().contains("thread_name"));
    assert_eq!(rt, tb_runtime::default());
    tb_runtime_config_init(std::ptr::null_mut()); // recorded, no crash
    assert!(last_error().contains("cfg"));
    assert_eq!(
        tb_runtime_new(std::ptr::null(), &mut rt),
        TB_OK,
        "NULL means defaults"
    );
    shutdown(rt);
}

#[test]
fn status_names_messages_and_the_last_error_are_usable_from_c() {
    let name = |s| {
        unsafe { CStr::from_ptr(tb_status_name(s)) }
            .to_str()
            .unwrap()
    };
    assert_eq!(name(TB_ERR_BAD_HANDLE), "TB_ERR_BAD_HANDLE");
    assert_eq!(name(TB_OK), "TB_OK");
    assert_eq!(name(12345), "TB_UNKNOWN");
    let message = unsafe { CStr::from_ptr(tb_status_message(TB_ERR_BUSY)) };
    assert!(message.to_str().unwrap().contains("running"));
    assert!(!tb_status_message(-999).is_null());

    let fresh = thread::spawn(|| tb_last_error(std::ptr::null_mut(), 0))
        .join()
        .unwrap();
    assert_eq!(fresh, 0, "no failure yet on a new thread");
    assert_eq!(tb_task_poll(tb_task { id: 0 }), TB_ERR_BAD_HANDLE);
    let full = tb_last_error(std::ptr::null_mut(), 0);
    assert!(full > 20);
    let mut small = [0x55u8; 8];
    assert_eq!(tb_last_error(small.as_mut_ptr().cast(), small.len()), full);
    assert_eq!(small[7], 0, "truncated and NUL-terminated");
    assert_eq!(&small[..7], b"tb_task");
    let text = last_error();
    assert!(
        text.starts_with("tb_task_poll: task handle 0x0000000000000000 is zero"),
        "{text}"
    );
    assert!(text.ends_with("(TB_ERR_BAD_HANDLE)"));
}

#[test]
fn the_version_matches_cargo() {
    let expected = (env!("CARGO_PKG_VERSION_MAJOR").parse::<u32>().unwrap() << 16)
        | (env!("CARGO_PKG_VERSION_MINOR").parse::<u32>().unwrap() << 8)
        | env!("CARGO_PKG_VERSION_PATCH").parse::<u32>().unwrap();
    assert_eq!(tb_version(), expected);
    let text = unsafe { CStr::from_ptr(tb_version_string()) };
    assert_eq!(text.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn released_handles_do_not_grow_memory_over_a_long_run() {
    let rt = runtime_with(&config(1, 2));
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20_000 {
        let mut t = tb_task::default();
        assert_eq!(
            tb_spawn_blocking(rt, Some(result_fn), std::ptr::null_mut(), None, &mut t),
            TB_OK
        );
        assert_eq!(tb_task_wait(t, TB_FOREVER), TB_OK);
        assert_eq!(tb_task_release(t), TB_OK);
        ids.insert(t.id & 0xffff_ffff);
    }
    assert!(ids.len() <= 2, "slots are reused: {} distinct", ids.len());
    shutdown(rt);
}

#[test]
fn a_backlog_of_blocking_jobs_gets_threads_while_jobs_keep_ending() {
    // 2000 jobs of 1 ms at once, up to 64 threads: jobs end every few microseconds long before
    // 64 threads could have started, and the pool must still grow, to about 64.
    let rt = runtime_with(&config(1, 64));
    let p = probe_with_sleep_ms(1);
    let started = Instant::now();
    let tasks: Vec<tb_task> = (0..2000).map(|_| spawn(rt, Some(job_fn), p)).collect();
    for t in tasks {
        outcome(t);
    }
    let took = started.elapsed();
    let threads = p
        .threads
        .lock()
        .unwrap()
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    println!("2000 jobs of 1 ms: {took:?} on {threads} threads");
    assert!(
        threads >= 32,
        "only {threads} threads for 2000 blocking jobs"
    );
    assert!(
        took < Duration::from_millis(400),
        "{took:?} (on 2 threads: ~1000 ms; on 64: ~35 ms)"
    );
    shutdown(rt);
}
