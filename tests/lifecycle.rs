//! Runtime lifecycles under stress: shutdown with thousands of queued jobs, shutdown from inside
//! callbacks, and thousands of runtimes created and shut down without leaking threads or memory.

use std::ffi::c_void;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use tokio_bridge::completion::*;
use tokio_bridge::error::*;
use tokio_bridge::metrics::*;
use tokio_bridge::runtime::*;
use tokio_bridge::timer::*;

mod common;
use common::*;

/// Threads of this process, and its resident memory in KiB (Linux).
fn threads_and_rss() -> (usize, u64) {
    let threads = std::fs::read_dir("/proc/self/task").unwrap().count();
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    (threads, pages * 4)
}

#[test]
fn shutdown_with_ten_thousand_queued_and_four_running_jobs() {
    let rt = runtime_with(&config(1, 4));
    let running = probe_with_sleep_ms(400);
    let cb = probe();
    let r: Vec<tb_task> = (0..4).map(|_| spawn(rt, Some(job_fn), running)).collect();
    wait_until("four run", || metrics(rt).blocking_running == 4);
    let queued = probe();
    let q: Vec<tb_task> = (0..10_000)
        .map(|_| spawn(rt, Some(job_fn), queued))
        .collect();
    for &t in r.iter().chain(&q) {
        assert_eq!(tb_task_on_complete(t, Some(complete_fn), arg(cb)), TB_OK);
    }
    assert_eq!(tb_runtime_shutdown(rt, 50), TB_TIMED_OUT);
    // Right after the timed-out shutdown: every queued job ended, freed, called back.
    assert_eq!(queued.frees.load(Ordering::SeqCst), 10_000);
    assert_eq!(queued.runs.load(Ordering::SeqCst), 0);
    assert!(q.iter().all(|&t| outcome(t).status == TB_ERR_SHUTDOWN));
    assert_eq!(
        tb_runtime_metrics(rt, &mut new_metrics()),
        TB_ERR_SHUTDOWN,
        "dead handle"
    );
    // Later the running ones finish and are recorded normally.
    assert!(r.iter().all(|&t| outcome(t).status == TB_OK));
    assert_eq!(running.frees.load(Ordering::SeqCst), 4);
    assert_eq!(cb.completions.load(Ordering::SeqCst), 10_004);
    for t in r.into_iter().chain(q) {
        assert_eq!(tb_task_release(t), TB_OK);
    }
}

#[test]
fn shutdown_from_completion_callbacks_returns_pending() {
    static RESULTS: Mutex<Vec<tb_status>> = Mutex::new(Vec::new());
    unsafe extern "C" fn stop(arg: *mut c_void, _t: tb_task, _o: *const tb_outcome) {
        let rt = *arg.cast::<tb_runtime>();
        RESULTS
            .lock()
            .unwrap()
            .push(tb_runtime_shutdown(rt, TB_FOREVER));
    }
    // On a blocking thread (a job's completion) and on a worker (a sleep's completion).
    for on_worker in [false, true] {
        let rt = Box::leak(Box::new(runtime()));
        let mut t = if on_worker {
            let mut t = tb_task::default();
            assert_eq!(tb_sleep(*rt, 1, &mut t), TB_OK);
            t
        } else {
            spawn(*rt, Some(result_fn), probe())
        };
        assert_eq!(
            tb_task_on_complete(t, Some(stop), std::ptr::from_mut(rt).cast()),
            TB_OK
        );
        assert_eq!(tb_task_wait(t, TB_FOREVER), TB_OK);
        assert_eq!(RESULTS.lock().unwrap().pop(), Some(TB_PENDING));
        assert_eq!(tb_sleep(*rt, 1, &mut t), TB_ERR_SHUTDOWN);
    }
}

#[test]
fn a_thousand_runtimes_leave_no_threads_or_memory_behind() {
    let mut current = config(0, 2);
    current.flavor = TB_CURRENT_THREAD;
    let churn = |n: usize| {
        for i in 0..n {
            let cfg = if i % 2 == 0 { config(2, 2) } else { current };
            let rt = runtime_with(&cfg);
            let t = spawn(rt, Some(result_fn), probe());
            let mut s = tb_task::default();
            assert_eq!(tb_sleep(rt, 0, &mut s), TB_OK);
            outcome(t);
            outcome(s);
            assert_eq!(tb_task_release(t), TB_OK);
            assert_eq!(tb_task_release(s), TB_OK);
            assert_eq!(
                tb_runtime_shutdown(rt, TB_FOREVER),
                TB_OK,
                "{}",
                last_error()
            );
        }
    };
    churn(100); // warm up allocator pools and the handle tables
    thread::sleep(Duration::from_millis(100));
    let (threads_before, rss_before) = threads_and_rss();
    churn(1000);
    thread::sleep(Duration::from_millis(100));
    let (threads_after, rss_after) = threads_and_rss();
    println!("threads {threads_before} -> {threads_after}, RSS {rss_before} -> {rss_after} KiB");
    // Other tests of this file run in parallel and start threads of their own; a leak here
    // would be a thread or more per runtime, so allow only a handful.
    assert!(
        threads_after <= threads_before + 8,
        "{threads_before} -> {threads_after}"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "{rss_before} -> {rss_after} KiB"
    );
}
