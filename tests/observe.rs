//! Seeing blocking happen: metrics that match the work exactly, stalls reported while they run,
//! and the lateness probe.

use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use tokio_bridge::completion::*;
use tokio_bridge::error::*;
use tokio_bridge::job::*;
use tokio_bridge::metrics::*;
use tokio_bridge::probe::*;
use tokio_bridge::runtime::*;
use tokio_bridge::stall::*;
use tokio_bridge::timer::*;

mod common;
use common::*;

/// A stall report as the hook saw it, with when it arrived.
#[derive(Debug, Clone)]
struct Report {
    kind: u32,
    callback: usize,
    running: bool,
    duration_us: u64,
    thread: String,
    thread_id: u64,
    at: Instant,
}

fn reports() -> &'static Mutex<Vec<Report>> {
    Box::leak(Box::new(Mutex::new(Vec::new())))
}

unsafe extern "C" fn record(arg: *mut c_void, stall: *const tb_stall) {
    let s = &*stall;
    let list = &*arg.cast::<Mutex<Vec<Report>>>();
    list.lock().unwrap().push(Report {
        kind: s.kind,
        callback: s.callback.map_or(0, |f| f as usize),
        running: s.still_running,
        duration_us: s.duration_us,
        thread: CStr::from_ptr(s.thread_name.as_ptr())
            .to_str()
            .unwrap()
            .to_string(),
        thread_id: s.thread_id,
        at: Instant::now(),
    });
}

fn watched(cfg: &tb_runtime_config) -> (tb_runtime, &'static Mutex<Vec<Report>>) {
    let rt = runtime_with(cfg);
    let list = reports();
    let arg = std::ptr::from_ref(list).cast_mut().cast();
    assert_eq!(tb_runtime_on_stall(rt, Some(record), arg), TB_OK);
    (rt, list)
}

fn probe_stats(rt: tb_runtime) -> tb_probe_stats {
    let mut s = tb_probe_stats {
        struct_size: std::mem::size_of::<tb_probe_stats>() as u32,
        ..Default::default()
    };
    assert_eq!(tb_runtime_probe_stats(rt, &mut s), TB_OK);
    s
}

/// Sleeps `arg` milliseconds on whatever thread runs it: a worker, here.
unsafe extern "C" fn blocking_tick(arg: *mut c_void, _tick: u64) -> i32 {
    thread::sleep(Duration::from_millis(arg as u64));
    1
}

unsafe extern "C" fn blocking_completion(arg: *mut c_void, _t: tb_task, _o: *const tb_outcome) {
    thread::sleep(Duration::from_millis(arg as u64));
}

unsafe extern "C" fn blocking_free(arg: *mut c_void) {
    thread::sleep(Duration::from_millis(arg as u64));
}

unsafe extern "C" fn quick_tick(_arg: *mut c_void, tick: u64) -> i32 {
    i32::from(tick == 4)
}

/// Waits until `n` reports (or `n` reports of ended stalls, with `ended_only`) arrived.
fn wait_for_reports(list: &Mutex<Vec<Report>>, n: usize, ended_only: bool) -> Vec<Report> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let got = list.lock().unwrap().clone();
        if got.iter().filter(|r| !(ended_only && r.running)).count() >= n {
            return got;
        }
        assert!(Instant::now() < end, "fewer than {n} reports: {got:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// A C function's address, as the stall report gives it.
fn address(f: *const ()) -> usize {
    f as usize
}

#[test]
fn a_stalled_timer_callback_is_reported_while_it_runs_and_when_it_ends() {
    let (rt, list) = watched(&config(2, 4));
    let started = Instant::now();
    let mut t = tb_task::default();
    let arg = 200usize as *mut c_void;
    assert_eq!(
        tb_timer_start(rt, 0, 0, Some(blocking_tick), arg, None, &mut t),
        TB_OK
    );
    let got = wait_for_reports(list, 1, false);
    assert!(
        got[0].running,
        "the first report comes while it runs: {got:?}"
    );
    assert!(got[0].at - started < Duration::from_millis(180), "{got:?}");
    assert!(got[0].duration_us >= 10_000);
    outcome(t);
    let got = wait_for_reports(list, 2, false);
    assert_eq!(got.len(), 2, "{got:?}");
    let ended = &got[1];
    assert!(!ended.running && ended.duration_us >= 195_000, "{ended:?}");
    for r in &got {
        assert_eq!(r.kind, TB_STALL_TIMER);
        assert_eq!(
            r.callback,
            address(blocking_tick as *const ()),
            "the right function pointer"
        );
        assert!(
            r.thread.starts_with("tb-worker-") && r.thread_id > 0,
            "{r:?}"
        );
    }
    let m = metrics(rt);
    assert_eq!(m.stalls, 1);
    assert!(m.longest_stall_us >= 195_000);
    shutdown(rt);
}

#[test]
fn a_callback_stuck_for_a_second_is_reported_long_before_it_returns() {
    let mut cfg = config(1, 1);
    cfg.stall_threshold_ms = 50;
    let (rt, list) = watched(&cfg);
    let started = Instant::now();
    let mut t = tb_task::default();
    let arg = 1000usize as *mut c_void;
    assert_eq!(
        tb_timer_start(rt, 0, 0, Some(blocking_tick), arg, None, &mut t),
        TB_OK
    );
    let got = wait_for_reports(list, 1, false);
    let after = got[0].at - started;
    assert!(
        after >= Duration::from_millis(50) && after < Duration::from_millis(600),
        "{after:?}"
    );
    assert_eq!(tb_task_poll(t), TB_PENDING, "still running when reported");
    outcome(t);
    shutdown(rt);
}

#[test]
fn completion_callbacks_and_free_arg_on_workers_are_watched_too() {
    let (rt, list) = watched(&config(2, 4));
    let mut t = tb_task::default();
    let arg = 30usize as *mut c_void;
    assert_eq!(
        tb_timer_start(rt, 0, 0, Some(quick_tick), arg, Some(blocking_free), &mut t),
        TB_OK
    );
    assert_eq!(
        tb_task_on_complete(t, Some(blocking_completion), arg),
        TB_OK
    );
    outcome(t);
    let got = wait_for_reports(list, 2, true);
    let ended: Vec<(u32, usize)> = got
        .iter()
        .filter(|r| !r.running)
        .map(|r| (r.kind, r.callback))
        .collect();
    assert!(
        ended.contains(&(TB_STALL_FREE, address(blocking_free as *const ()))),
        "{got:?}"
    );
    assert!(
        ended.contains(&(
            TB_STALL_COMPLETION,
            address(blocking_completion as *const ())
        )),
        "{got:?}"
    );
    // The same callbacks on a blocking thread are not stalls: that thread may block.
    let p = probe();
    let job = spawn(rt, Some(result_fn), p);
    assert_eq!(
        tb_task_on_complete(job, Some(blocking_completion), arg),
        TB_OK
    );
    outcome(job);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(metrics(rt).stalls, 2);
    shutdown(rt);
}

#[test]
fn a_correct_program_reports_no_stall() {
    let (rt, list) = watched(&config(2, 8));
    let p = probe_with_sleep_ms(100);
    let jobs: Vec<tb_task> = (0..8).map(|_| spawn(rt, Some(job_fn), p)).collect();
    let timers: Vec<tb_task> = (0..50)
        .map(|_| {
            let mut t = tb_task::default();
            assert_eq!(
                tb_timer_start(
                    rt,
                    1,
                    2,
                    Some(quick_tick),
                    std::ptr::null_mut(),
                    None,
                    &mut t
                ),
                TB_OK
            );
            t
        })
        .collect();
    for t in jobs.into_iter().chain(timers) {
        outcome(t);
    }
    thread::sleep(Duration::from_millis(30));
    assert!(
        list.lock().unwrap().is_empty(),
        "{:?}",
        list.lock().unwrap()
    );
    assert_eq!(metrics(rt).stalls, 0);
    shutdown(rt);
}

#[test]
fn stall_detection_can_be_turned_off() {
    let mut cfg = config(1, 1);
    cfg.stall_threshold_ms = 0;
    let rt = runtime_with(&cfg);
    assert_eq!(
        tb_runtime_on_stall(rt, Some(record), std::ptr::null_mut()),
        TB_ERR_INVALID_ARG
    );
    assert!(last_error().contains("stall_threshold_ms"));
    let mut t = tb_task::default();
    let arg = 30usize as *mut c_void;
    assert_eq!(
        tb_timer_start(rt, 0, 0, Some(blocking_tick), arg, None, &mut t),
        TB_OK
    );
    outcome(t);
    assert_eq!(metrics(rt).stalls, 0);
    shutdown(rt);
    cfg.stall_threshold_ms = 3_600_001;
    let mut rt = tb_runtime::default();
    assert_eq!(tb_runtime_new(&cfg, &mut rt), TB_ERR_INVALID_ARG);
}

#[test]
fn metrics_match_the_work_done_exactly() {
    let rt = runtime_with(&config(1, 1));
    let blocker = probe_with_sleep_ms(150);
    let running = spawn(rt, Some(job_fn), blocker);
    wait_until("the blocker runs", || metrics(rt).blocking_running == 1);
    let failing = probe();
    failing.code.store(3, Ordering::SeqCst);
    let queued: Vec<tb_task> = (0..10)
        .map(|i| spawn(rt, Some(job_fn), if i < 4 { failing } else { probe() }))
        .collect();
    for &t in &queued[8..] {
        assert_eq!(tb_task_cancel(t), TB_OK);
    }
    let mut timer = tb_task::default();
    assert_eq!(tb_sleep(rt, 60_000, &mut timer), TB_OK);
    let m = metrics(rt);
    assert_eq!(
        (m.worker_threads, m.blocking_threads, m.blocking_idle),
        (1, 1, 0)
    );
    assert_eq!((m.blocking_queued, m.blocking_running), (8, 1));
    assert_eq!(m.blocking_threads_peak, 1, "max_blocking_threads = 1");
    assert_eq!(
        (m.jobs_submitted, m.jobs_completed, m.jobs_cancelled),
        (11, 0, 2)
    );
    assert_eq!((m.timers_active, m.tasks_alive), (1, 10));
    assert!(m.task_handles >= 12);
    for &t in &queued[..8] {
        outcome(t);
    }
    outcome(running);
    assert_eq!(tb_task_cancel(timer), TB_OK);
    outcome(timer);
    // Counters are final when a task finishes; gauges drop a moment later.
    wait_until("the gauges settle", || {
        let m = metrics(rt);
        (
            m.blocking_queued,
            m.blocking_running,
            m.timers_active,
            m.tasks_alive,
        ) == (0, 0, 0, 0)
    });
    let m = metrics(rt);
    assert_eq!(
        (
            m.jobs_submitted,
            m.jobs_completed,
            m.jobs_failed,
            m.jobs_cancelled
        ),
        (11, 9, 4, 2)
    );
    assert!(
        m.queue_wait_max_us >= 100_000,
        "the queued jobs waited for the blocker: {m:?}"
    );
    assert!(m.queue_wait_total_us >= m.queue_wait_max_us);
    wait_until("the idle thread is counted", || {
        metrics(rt).blocking_idle == 1
    });

    // An older caller's smaller struct gets the fields it knows, and nothing past them.
    let mut old = [0xAAu8; std::mem::size_of::<tb_metrics>()];
    old[..4].copy_from_slice(&16u32.to_ne_bytes());
    assert_eq!(tb_runtime_metrics(rt, old.as_mut_ptr().cast()), TB_OK);
    assert_eq!(
        u32::from_ne_bytes(old[4..8].try_into().unwrap()),
        1,
        "worker_threads"
    );
    assert!(
        old[16..].iter().all(|&b| b == 0xAA),
        "nothing written past struct_size"
    );
    let mut bad = tb_metrics::default();
    assert_eq!(tb_runtime_metrics(rt, &mut bad), TB_ERR_INVALID_ARG);
    assert_eq!(tb_runtime_metrics(rt, std::ptr::null_mut()), TB_ERR_NULL);
    shutdown(rt);
}

/// The runtime of the job `free_alive` frees, and the `tasks_alive` it saw there.
struct Alive {
    rt: tb_runtime,
    seen: AtomicU64,
}

/// A `free_arg` that reads its runtime's `tasks_alive`.
unsafe extern "C" fn free_alive(arg: *mut c_void) {
    let alive = &*arg.cast::<Alive>();
    alive
        .seen
        .store(metrics(alive.rt).tasks_alive, Ordering::SeqCst);
}

#[test]
fn a_job_being_cancelled_is_alive_until_its_free_arg_returns() {
    let rt = runtime_with(&config(1, 1));
    let running = spawn(rt, Some(job_fn), probe_with_sleep_ms(100));
    wait_until("the first job runs", || metrics(rt).blocking_running == 1);
    // Freed at the end: its free_arg has run by then, inside the cancel.
    let alive = Box::new(Alive {
        rt,
        seen: AtomicU64::new(u64::MAX),
    });
    let mut queued = tb_task::default();
    let arg = std::ptr::from_ref(&*alive).cast_mut().cast();
    assert_eq!(
        tb_spawn_blocking(rt, Some(job_fn), arg, Some(free_alive), &mut queued),
        TB_OK
    );
    assert_eq!(tb_task_cancel(queued), TB_OK);
    // Its free_arg ran on this thread, inside the cancel: the job was not finished then.
    assert_eq!(
        alive.seen.load(Ordering::SeqCst),
        2,
        "the running job and the ending one"
    );
    assert_eq!(outcome(queued).status, TB_ERR_CANCELLED);
    outcome(running);
    wait_until("no task is alive", || metrics(rt).tasks_alive == 0);
    shutdown(rt);
}

#[test]
fn the_probe_sees_starvation_only_when_a_worker_blocks() {
    // At rest, and with the blocking pool busy: lateness stays near Tokio's 1 ms resolution.
    let mut cfg = config(1, 8);
    cfg.flavor = TB_CURRENT_THREAD;
    let rt = runtime_with(&cfg);
    assert_eq!(tb_runtime_probe_start(rt, 5), TB_OK);
    assert_eq!(tb_runtime_probe_start(rt, 5), TB_ERR_ALREADY);
    thread::sleep(Duration::from_millis(300));
    let rest = probe_stats(rt);
    assert_eq!(tb_runtime_probe_stop(rt), TB_OK);
    assert_eq!(tb_runtime_probe_stop(rt), TB_ERR_ALREADY);
    assert!(rest.ticks >= 20, "{rest:?}");

    assert_eq!(tb_runtime_probe_start(rt, 5), TB_OK);
    let p = probe_with_sleep_ms(300);
    let jobs: Vec<tb_task> = (0..8).map(|_| spawn(rt, Some(job_fn), p)).collect();
    for t in jobs {
        outcome(t);
    }
    let pool_load = probe_stats(rt);
    assert_eq!(tb_runtime_probe_stop(rt), TB_OK);
    println!("at rest: {rest:?}\nblocking-pool load: {pool_load:?}");
    assert!(
        pool_load.p99_us < 5 * rest.p99_us.max(1_000),
        "{pool_load:?} vs {rest:?}"
    );

    // A timer callback that blocks the only worker for 300 ms.
    assert_eq!(tb_runtime_probe_start(rt, 5), TB_OK);
    thread::sleep(Duration::from_millis(20));
    let mut t = tb_task::default();
    let arg = 300usize as *mut c_void;
    assert_eq!(
        tb_timer_start(rt, 0, 0, Some(blocking_tick), arg, None, &mut t),
        TB_OK
    );
    outcome(t);
    thread::sleep(Duration::from_millis(20));
    let blocked = probe_stats(rt);
    println!("worker blocked: {blocked:?}");
    assert!(blocked.max_us > 100_000, "{blocked:?}");
    assert_eq!(blocked.period_ms, 5);
    assert_eq!(tb_runtime_probe_start(rt, 0), TB_ERR_INVALID_ARG);
    shutdown(rt);
}
