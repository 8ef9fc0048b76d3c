//! Load without loss: many blocking jobs through few threads, with timers and random cancels
//! alongside, every completion accounted for exactly, and memory back near where it started.
//!
//! `cargo test --test stress -- --nocapture` runs the full load, 1,000,000 jobs and 100,000
//! timers per round (about 5 s a round in a debug build on 2 cores), and prints counts,
//! timings and memory. `TB_STRESS_JOBS`, `TB_STRESS_TIMERS` and `TB_STRESS_BOUNDED` change the
//! sizes (the sanitizer runs use smaller ones, and set `TB_STRESS_SANITIZER=1`, which skips
//! the memory checks: a sanitizer's allocator holds freed memory back on purpose).
//!
//! Memory is measured twice after each round, after `malloc_trim(0)`: the heap bytes in use
//! (glibc's `mallinfo2`), which must come back to the baseline within `HEAP_TOLERANCE`, and
//! the resident set size from `/proc/self/statm`, within `RSS_TOLERANCE` plus the free bytes
//! the allocator keeps (the constants say why). The load runs twice in one process (`TB_STRESS_ROUNDS` changes that).

use std::ffi::c_void;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokio_bridge::completion::*;
use tokio_bridge::error::*;
use tokio_bridge::job::*;
use tokio_bridge::metrics::*;
use tokio_bridge::runtime::*;
use tokio_bridge::timer::*;

mod common;
use common::contract::{self, Api};
use common::{config, last_error, rss_bytes, runtime_with, Rng};

/// How far above the baseline the heap in use may end a round: the handle tables keep their
/// slots for reuse (20 bytes per handle that was live at once, per shard of the 16 a table
/// has; the test keeps at most about 1,000 per submitting thread), nothing else. A leak of
/// 1 byte per task (1.1 MB a round) would show.
const HEAP_TOLERANCE: u64 = 1 << 20;
/// How far above the baseline, plus the free bytes the allocator keeps (`mallinfo2`'s
/// `fordblks`), the resident set may end a round. glibc keeps the stacks of exited threads
/// cached for new ones (up to 40 MiB, with the pages they touched resident). And the free
/// memory of a thread's malloc arena stays resident when it ends in the top of the arena's
/// heap, which `malloc_trim` does not release for a thread's arena (only the main arena's):
/// a task record takes a 112-byte block, which glibc frees into its fast bins, and merging
/// those into the top later does not shrink the heap (it shrinks when a block of 64 KiB or
/// more is freed into it). After a round, up to 76 MiB of the submitting threads' arenas
/// stayed resident that way. The heap check above is the exact one; this one sees memory that is
/// neither in use nor free in the allocator (thread stacks, mappings) growing by more than
/// the tolerance.
const RSS_TOLERANCE: u64 = 48 << 20;

/// Everything the callbacks count, per task index. Jobs come first, then timers.
struct Book {
    runs: Vec<AtomicU8>,
    frees: Vec<AtomicU8>,
    completions: Vec<AtomicU8>,
    statuses: Vec<AtomicI32>,
    cancelled: Vec<AtomicU8>,
    refused: Vec<AtomicU8>,
}

impl Book {
    fn new(n: usize) -> Book {
        let zeros = |n| (0..n).map(|_| AtomicU8::new(0)).collect();
        Book {
            runs: zeros(n),
            frees: zeros(n),
            completions: zeros(n),
            statuses: (0..n).map(|_| AtomicI32::new(i32::MIN)).collect(),
            cancelled: zeros(n),
            refused: zeros(n),
        }
    }
}

/// The book of the running test; the tests of this file run one at a time.
static BOOK: AtomicPtr<Book> = AtomicPtr::new(std::ptr::null_mut());
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn book<'a>() -> &'a Book {
    // SAFETY: set by `with_book` for the whole test; no callback of its runtime runs after it.
    unsafe { &*BOOK.load(Ordering::Acquire) }
}

/// Runs `f` with a fresh book of `n` entries installed for the callbacks.
fn with_book<R>(n: usize, f: impl FnOnce(&Book) -> R) -> R {
    let book = Box::new(Book::new(n));
    BOOK.store(std::ptr::from_ref(&*book).cast_mut(), Ordering::Release);
    let result = f(&book);
    BOOK.store(std::ptr::null_mut(), Ordering::Release);
    result
}

fn arg(i: usize) -> *mut c_void {
    std::ptr::null_mut::<u8>().wrapping_add(i + 1).cast()
}

fn index(arg: *mut c_void) -> usize {
    arg as usize - 1
}

/// Jobs whose index ends in 7 fail with their index as the code.
fn failing(i: usize) -> bool {
    i % 10 == 7
}

unsafe extern "C" fn job(arg: *mut c_void, _job: *mut tb_job) -> i32 {
    let i = index(arg);
    book().runs[i].fetch_add(1, Ordering::Relaxed);
    if failing(i) {
        i as i32
    } else {
        0
    }
}

/// Periodic timers (every 10th) stop after 3 ticks; the others are one-shot.
unsafe extern "C" fn tick(arg: *mut c_void, tick: u64) -> i32 {
    let i = index(arg);
    book().runs[i].fetch_add(1, Ordering::Relaxed);
    i32::from(tick + 1 >= 3)
}

unsafe extern "C" fn free(arg: *mut c_void) {
    book().frees[index(arg)].fetch_add(1, Ordering::Relaxed);
}

unsafe extern "C" fn complete(arg: *mut c_void, _t: tb_task, outcome: *const tb_outcome) {
    let i = index(arg);
    book().statuses[i].store((*outcome).status, Ordering::Relaxed);
    book().completions[i].fetch_add(1, Ordering::Relaxed);
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

fn metrics(rt: tb_runtime) -> tb_metrics {
    let mut m = tb_metrics {
        struct_size: std::mem::size_of::<tb_metrics>() as u32,
        ..Default::default()
    };
    assert_eq!(tb_runtime_metrics(rt, &mut m), TB_OK, "{}", last_error());
    m
}

/// Memory now: (resident set, heap bytes allocated and not freed, free bytes the allocator
/// keeps), after giving the allocator's free pages back to the system.
fn memory() -> (u64, u64, u64) {
    // SAFETY: malloc_trim only releases free memory; mallinfo2 only reads counters.
    let info = unsafe {
        libc::malloc_trim(0);
        libc::mallinfo2()
    };
    (
        rss_bytes(),
        (info.uordblks + info.hblkhd) as u64,
        info.fordblks as u64,
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Waits until the runtime has no task left, for at most `limit`.
fn drained(rt: tb_runtime, limit: Duration) {
    let end = Instant::now() + limit;
    while metrics(rt).tasks_alive > 0 {
        assert!(
            Instant::now() < end,
            "tasks left after {limit:?}: {:?}",
            metrics(rt)
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Cancels task `i` (a job if `i < jobs`, else a timer); records a successful cancel.
fn cancel(i: usize, t: tb_task, jobs: usize) {
    let status = tb_task_cancel(t);
    contract::documented(Api::TaskCancel, status).unwrap();
    let allowed: &[tb_status] = if i < jobs {
        &[TB_OK, TB_ERR_BUSY, TB_ERR_ALREADY]
    } else {
        &[TB_OK, TB_ERR_ALREADY]
    };
    assert!(allowed.contains(&status), "cancel of task {i}: {status}");
    if status == TB_OK {
        book().cancelled[i].store(1, Ordering::Relaxed);
    }
}

/// Handles still owned by a submitter, shared with the canceller. Handles leave it in batches
/// and are released (releasing does not stop a task), under the same lock as the cancels, so
/// a cancel never meets a released handle.
struct Window {
    handles: Mutex<Vec<(usize, tb_task)>>,
    limit: usize,
}

impl Window {
    fn push(&self, i: usize, t: tb_task) {
        let mut handles = self.handles.lock().unwrap();
        handles.push((i, t));
        if handles.len() >= self.limit {
            for (_, t) in handles.drain(..self.limit / 2) {
                assert_eq!(tb_task_release(t), TB_OK);
            }
        }
    }

    /// Cancels a random one of the newest handles (the likeliest to be still queued); records a
    /// successful cancel.
    fn cancel_one(&self, rng: &mut Rng, jobs: usize) {
        let handles = self.handles.lock().unwrap();
        if handles.is_empty() {
            return;
        }
        let newest = handles.len().min(256) as u64;
        let (i, t) = handles[handles.len() - 1 - rng.below(newest) as usize];
        cancel(i, t, jobs);
    }

    fn release_all(&self) {
        for (_, t) in self.handles.lock().unwrap().drain(..) {
            assert_eq!(tb_task_release(t), TB_OK);
        }
    }
}

unsafe extern "C" fn gated(_arg: *mut c_void, _job: *mut tb_job) -> i32 {
    while !OPEN.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(1));
    }
    0
}

/// What the held jobs wait for. One test runs at a time, and each ends its runtime before the
/// next holds threads.
static OPEN: AtomicBool = AtomicBool::new(true);

/// Blocking threads held by jobs that wait for the gate; it opens when dropped at the latest,
/// so a failing test does not leave them stuck.
struct Gate;

impl Gate {
    fn open(&self) {
        OPEN.store(true, Ordering::Release);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

/// Occupies `n` blocking threads of `rt` until the returned gate opens.
fn hold(rt: tb_runtime, n: u64) -> Gate {
    OPEN.store(false, Ordering::Release);
    for _ in 0..n {
        let mut t = tb_task::default();
        let null = std::ptr::null_mut();
        assert_eq!(
            tb_spawn_blocking(rt, Some(gated), null, None, &mut t),
            TB_OK
        );
        assert_eq!(tb_task_release(t), TB_OK);
    }
    let start = Instant::now();
    while metrics(rt).blocking_running < n {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            metrics(rt)
        );
        thread::sleep(Duration::from_millis(1));
    }
    Gate
}

/// What one round measured.
struct Round {
    submit: Duration,
    total: Duration,
    peak_rss: u64,
    cancelled_jobs: u64,
    cancelled_timers: u64,
}

/// Submits `jobs` no-op jobs (two threads, which also cancel every 100th job at once) and
/// `timers` timers (a third), while a fourth thread cancels random recent tasks, to a runtime
/// with 4 blocking threads and an unbounded queue; then checks every task's fate against the
/// book and the runtime's metrics. The 4 threads are held until half the jobs are in, so the
/// queue grows to about half a million and the second half flows while the first drains.
fn round(jobs: usize, timers: usize) -> Round {
    let mut cfg = config(2, 4);
    cfg.max_queued_blocking = 0;
    let rt = runtime_with(&cfg);
    let gate = hold(rt, 4);
    let started = Instant::now();
    let submitted = AtomicUsize::new(0);
    let peak = Arc::new(AtomicU64::new(rss_bytes()));
    let done = Arc::new(AtomicBool::new(false));
    let job_window = Window {
        handles: Mutex::new(Vec::new()),
        limit: 1024,
    };
    let timer_window = Window {
        handles: Mutex::new(Vec::new()),
        limit: 1024,
    };
    let submit = thread::scope(|s| {
        let sampler = {
            let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let submitters: Vec<_> = (0..2)
            .map(|part| {
                let (window, gate, submitted) = (&job_window, &gate, &submitted);
                s.spawn(move || {
                    for i in (part..jobs).step_by(2) {
                        if submitted.fetch_add(1, Ordering::Relaxed) == jobs / 2 {
                            gate.open();
                        }
                        let mut t = tb_task::default();
                        let status = tb_spawn_blocking(rt, Some(job), arg(i), Some(free), &mut t);
                        assert_eq!(status, TB_OK, "job {i}: {}", last_error());
                        if i % 4 == 0 {
                            assert_eq!(tb_task_on_complete(t, Some(complete), arg(i)), TB_OK);
                        }
                        // Once the threads run, jobs drain about as fast as they come: cancel
                        // some while surely queued, besides the canceller's random ones.
                        if i % 100 == 50 {
                            cancel(i, t, jobs);
                        }
                        window.push(i, t);
                    }
                })
            })
            .collect();
        let timer_starter = s.spawn(|| {
            let mut rng = Rng::new(7);
            for i in jobs..jobs + timers {
                let period = if i % 10 == 0 { 1 } else { 0 };
                let mut t = tb_task::default();
                let status = tb_timer_start(
                    rt,
                    rng.below(20),
                    period,
                    Some(tick),
                    arg(i),
                    Some(free),
                    &mut t,
                );
                assert_eq!(status, TB_OK, "timer {i}: {}", last_error());
                if i % 2 == 0 {
                    assert_eq!(tb_task_on_complete(t, Some(complete), arg(i)), TB_OK);
                }
                timer_window.push(i, t);
            }
        });
        let canceller = s.spawn(|| {
            let mut rng = Rng::new(11);
            while !done.load(Ordering::Relaxed) {
                job_window.cancel_one(&mut rng, jobs);
                timer_window.cancel_one(&mut rng, jobs);
                thread::yield_now();
            }
        });
        for submitter in submitters {
            submitter.join().unwrap();
        }
        timer_starter.join().unwrap();
        gate.open();
        let submit = started.elapsed();
        drained(rt, Duration::from_secs(600));
        done.store(true, Ordering::Relaxed);
        canceller.join().unwrap();
        sampler.join().unwrap();
        submit
    });
    job_window.release_all();
    timer_window.release_all();
    let total = started.elapsed();
    let (cancelled_jobs, cancelled_timers) = check_round(rt, jobs, timers, 4);
    assert_eq!(
        tb_runtime_shutdown(rt, TB_FOREVER),
        TB_OK,
        "{}",
        last_error()
    );
    Round {
        submit,
        total,
        peak_rss: peak.load(Ordering::Relaxed),
        cancelled_jobs,
        cancelled_timers,
    }
}

/// Every job ran once unless cancelled while queued, every timer ticked as planned unless
/// cancelled, every `free_arg` and registered completion callback ran exactly once with the
/// right status, and the metrics say the same. Returns the cancelled jobs and timers.
fn check_round(rt: tb_runtime, jobs: usize, timers: usize, held: u64) -> (u64, u64) {
    let b = book();
    let (mut ran, mut failed, mut cancelled_jobs, mut cancelled_timers) = (0u64, 0u64, 0, 0);
    for i in 0..jobs + timers {
        let runs = b.runs[i].load(Ordering::Relaxed);
        let cancelled = b.cancelled[i].load(Ordering::Relaxed) == 1;
        assert_eq!(
            b.frees[i].load(Ordering::Relaxed),
            1,
            "free_arg of task {i}"
        );
        let registered = if i < jobs { i % 4 == 0 } else { i % 2 == 0 };
        assert_eq!(
            b.completions[i].load(Ordering::Relaxed),
            u8::from(registered),
            "completion callbacks of task {i}"
        );
        let status = b.statuses[i].load(Ordering::Relaxed);
        if i < jobs {
            assert_eq!(runs, u8::from(!cancelled), "runs of job {i}");
            ran += u64::from(runs);
            failed += u64::from(runs == 1 && failing(i));
            cancelled_jobs += u64::from(cancelled);
            let want = match (cancelled, failing(i)) {
                (true, _) => TB_ERR_CANCELLED,
                (false, true) => TB_ERR_CALLBACK,
                (false, false) => TB_OK,
            };
            assert!(!registered || status == want, "job {i}: status {status}");
        } else {
            let planned = if i % 10 == 0 { 3 } else { 1 };
            assert!(
                if cancelled {
                    runs <= planned
                } else {
                    runs == planned
                },
                "timer {i}: {runs} ticks, cancelled {cancelled}"
            );
            cancelled_timers += u64::from(cancelled);
            let want = if cancelled { TB_ERR_CANCELLED } else { TB_OK };
            assert!(!registered || status == want, "timer {i}: status {status}");
        }
    }
    let m = metrics(rt);
    assert_eq!(
        (
            m.jobs_submitted,
            m.jobs_completed,
            m.jobs_failed,
            m.jobs_cancelled
        ),
        (jobs as u64 + held, ran + held, failed, cancelled_jobs),
        "{m:?}"
    );
    assert_eq!(
        (
            m.blocking_queued,
            m.blocking_running,
            m.timers_active,
            m.tasks_alive,
            m.task_handles
        ),
        (0, 0, 0, 0, 0),
        "{m:?}"
    );
    assert!(m.blocking_threads <= 4, "{m:?}");
    (cancelled_jobs, cancelled_timers)
}

#[test]
fn a_million_jobs_and_timers_with_random_cancels_lose_nothing_and_free_their_memory() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let jobs = env_count("TB_STRESS_JOBS", 1_000_000);
    let timers = env_count("TB_STRESS_TIMERS", 100_000);
    let (rss_before, heap_before, _) = memory();
    for n in 1..=env_count("TB_STRESS_ROUNDS", 2) {
        let r = with_book(jobs + timers, |_| round(jobs, timers));
        let (rss, heap, free) = memory();
        eprintln!(
            "stress round {n}: {jobs} jobs (4 blocking threads, unbounded queue) and {timers} \
             timers, {} jobs and {} timers cancelled; submitted in {:.1} s, all done in {:.1} s; \
             RSS {:.1} MiB before, {:.1} MiB at peak, {:.1} MiB after; heap in use {:.2} MiB \
             before, {:.2} MiB after, {:.1} MiB free in the allocator",
            r.cancelled_jobs,
            r.cancelled_timers,
            r.submit.as_secs_f64(),
            r.total.as_secs_f64(),
            mib(rss_before),
            mib(r.peak_rss),
            mib(rss),
            mib(heap_before),
            mib(heap),
            mib(free)
        );
        assert!(
            r.cancelled_jobs > 0 && r.cancelled_timers > 0,
            "the cancels reached queued jobs and timers"
        );
        // A sanitizer's allocator holds freed memory back on purpose: no memory check then.
        if std::env::var_os("TB_STRESS_SANITIZER").is_none() {
            assert!(
                heap <= heap_before + HEAP_TOLERANCE,
                "round {n}: heap in use went from {heap_before} to {heap} bytes"
            );
            assert!(
                rss <= rss_before + RSS_TOLERANCE + free,
                "round {n}: RSS went from {:.1} to {:.1} MiB, with {:.1} MiB free in the allocator",
                mib(rss_before),
                mib(rss),
                mib(free)
            );
        }
    }
}

/// Submits job `i`; returns whether it was accepted, checking the status and the out-param.
fn try_submit(rt: tb_runtime, i: usize) -> bool {
    let mut t = tb_task { id: 7 };
    let status = tb_spawn_blocking(rt, Some(job), arg(i), Some(free), &mut t);
    contract::documented(Api::SpawnBlocking, status).unwrap();
    match status {
        TB_OK => {
            assert_eq!(tb_task_release(t), TB_OK);
            true
        }
        TB_ERR_BUSY => {
            assert_eq!(t.id, 7, "a refused submission wrote its out-param");
            book().refused[i].store(1, Ordering::Relaxed);
            false
        }
        other => panic!("job {i}: {other}: {}", last_error()),
    }
}

#[test]
fn a_bounded_queue_refuses_past_its_bound_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    const BOUND: usize = 64;
    let attempts = env_count("TB_STRESS_BOUNDED", 100_000);
    let mut cfg = config(2, 2);
    cfg.max_queued_blocking = BOUND as u32;
    let rt = runtime_with(&cfg);
    with_book(attempts + 200, |b| {
        let gate = hold(rt, 2);
        // Both threads are held: exactly BOUND jobs queue, every later one is refused.
        let accepted: Vec<bool> = (0..200).map(|i| try_submit(rt, i)).collect();
        assert!(accepted[..BOUND].iter().all(|&a| a));
        assert!(accepted[BOUND..].iter().all(|&a| !a));
        assert_eq!(metrics(rt).blocking_queued, BOUND as u64);
        gate.open();
        // Then under load: two submitters retry refused jobs with new indices, a sampler checks
        // that the queue never holds more than the bound.
        let busy = AtomicU64::new(0);
        let over = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    if metrics(rt).blocking_queued > BOUND as u64 {
                        over.fetch_add(1, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_micros(100));
                }
            });
            let submitters: Vec<_> = (0..2)
                .map(|part| {
                    let busy = &busy;
                    s.spawn(move || {
                        for i in (200 + part..200 + attempts).step_by(2) {
                            if !try_submit(rt, i) {
                                busy.fetch_add(1, Ordering::Relaxed);
                                thread::yield_now();
                            }
                        }
                    })
                })
                .collect();
            for submitter in submitters {
                submitter.join().unwrap();
            }
            drained(rt, Duration::from_secs(300));
            done.store(true, Ordering::Relaxed);
        });
        let mut accepted_total = 0u64;
        for i in 0..attempts + 200 {
            let refused = b.refused[i].load(Ordering::Relaxed) == 1;
            let want = u8::from(!refused);
            assert_eq!(b.runs[i].load(Ordering::Relaxed), want, "runs of job {i}");
            assert_eq!(b.frees[i].load(Ordering::Relaxed), want, "frees of job {i}");
            accepted_total += u64::from(want);
        }
        let m = metrics(rt);
        assert_eq!(
            (m.jobs_submitted, m.jobs_completed, m.jobs_cancelled),
            (accepted_total + 2, accepted_total + 2, 0),
            "{m:?}"
        );
        assert_eq!(
            over.load(Ordering::Relaxed),
            0,
            "the queue went past its bound"
        );
        eprintln!(
            "bounded queue ({BOUND}): {} of {} submissions accepted, {} refused with \
             TB_ERR_BUSY; each accepted job ran once",
            accepted_total,
            attempts + 200,
            attempts as u64 + 200 - accepted_total
        );
    });
    assert_eq!(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
}
