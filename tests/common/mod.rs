//! Helpers shared by the Rust integration tests: probes that callbacks report to, C-style
//! callbacks, and short forms of the common calls.
//!
//! Each test file compiles this module and uses part of it.
#![allow(dead_code)]

use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use tokio_bridge::completion::*;
use tokio_bridge::error::*;
use tokio_bridge::job::*;
use tokio_bridge::metrics::*;
use tokio_bridge::runtime::*;

pub mod contract;

/// What a test's callbacks saw. Leaked, so callbacks may outlive the test body safely.
#[derive(Default)]
pub struct Probe {
    pub runs: AtomicUsize,
    pub code: AtomicUsize,
    pub frees: AtomicUsize,
    pub completions: AtomicUsize,
    pub cancelled_seen: AtomicBool,
    pub sleep_ms: AtomicU64,
    pub threads: Mutex<Vec<String>>,
    pub statuses: Mutex<Vec<tb_status>>,
}

pub fn probe() -> &'static Probe {
    Box::leak(Box::default())
}

/// A probe whose `sleep_ms` is set: how long `job_fn` and `chunked_fn` run, how many ticks
/// `tick_fn` lasts.
pub fn probe_with_sleep_ms(sleep_ms: u64) -> &'static Probe {
    let p = probe();
    p.sleep_ms.store(sleep_ms, Ordering::SeqCst);
    p
}

pub fn arg(p: &'static Probe) -> *mut c_void {
    std::ptr::from_ref(p).cast_mut().cast()
}

unsafe fn from_arg(arg: *mut c_void) -> &'static Probe {
    &*arg.cast::<Probe>()
}

pub fn thread_name() -> String {
    thread::current().name().unwrap_or("?").to_string()
}

/// Records its thread, sleeps `sleep_ms`, returns `code`.
pub unsafe extern "C" fn job_fn(arg: *mut c_void, _job: *mut tb_job) -> i32 {
    let p = from_arg(arg);
    p.threads.lock().unwrap().push(thread_name());
    thread::sleep(Duration::from_millis(p.sleep_ms.load(Ordering::SeqCst)));
    p.runs.fetch_add(1, Ordering::SeqCst);
    p.code.load(Ordering::SeqCst) as i32
}

/// Works in 5 ms chunks for up to `sleep_ms`, stopping early when cancelled; returns 42 then.
pub unsafe extern "C" fn chunked_fn(arg: *mut c_void, job: *mut tb_job) -> i32 {
    let p = from_arg(arg);
    p.runs.fetch_add(1, Ordering::SeqCst);
    let end = Instant::now() + Duration::from_millis(p.sleep_ms.load(Ordering::SeqCst));
    while Instant::now() < end {
        if tb_job_cancelled(job) {
            p.cancelled_seen.store(true, Ordering::SeqCst);
            return 42;
        }
        thread::sleep(Duration::from_millis(5));
    }
    0
}

pub unsafe extern "C" fn result_fn(_arg: *mut c_void, job: *mut tb_job) -> i32 {
    tb_job_set_result(job, 0xdead_usize as *mut c_void);
    0
}

pub unsafe extern "C" fn free_fn(arg: *mut c_void) {
    from_arg(arg).frees.fetch_add(1, Ordering::SeqCst);
}

pub unsafe extern "C" fn complete_fn(arg: *mut c_void, _t: tb_task, outcome: *const tb_outcome) {
    let p = from_arg(arg);
    p.threads.lock().unwrap().push(thread_name());
    p.statuses.lock().unwrap().push((*outcome).status);
    p.completions.fetch_add(1, Ordering::SeqCst);
}

/// Stops after `sleep_ms` ticks with code 7; records its thread.
pub unsafe extern "C" fn tick_fn(arg: *mut c_void, tick: u64) -> i32 {
    let p = from_arg(arg);
    p.threads.lock().unwrap().push(thread_name());
    p.runs.fetch_add(1, Ordering::SeqCst);
    if tick + 1 >= p.sleep_ms.load(Ordering::SeqCst) {
        7
    } else {
        0
    }
}

pub fn config(workers: u32, max_blocking: u32) -> tb_runtime_config {
    let mut cfg = tb_runtime_config::default();
    tb_runtime_config_init(&mut cfg);
    cfg.worker_threads = workers;
    cfg.max_blocking_threads = max_blocking;
    cfg
}

pub fn runtime_with(cfg: &tb_runtime_config) -> tb_runtime {
    let mut rt = tb_runtime::default();
    assert_eq!(tb_runtime_new(cfg, &mut rt), TB_OK, "{}", last_error());
    rt
}

pub fn runtime() -> tb_runtime {
    runtime_with(&config(2, 8))
}

pub fn shutdown(rt: tb_runtime) {
    assert_eq!(tb_runtime_shutdown(rt, 10_000), TB_OK, "{}", last_error());
}

pub fn last_error() -> String {
    let mut buf = [0u8; 512];
    let n = tb_last_error(buf.as_mut_ptr().cast(), buf.len());
    assert!(n < buf.len());
    CStr::from_bytes_until_nul(&buf)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

pub fn spawn(rt: tb_runtime, f: tb_blocking_fn, p: &'static Probe) -> tb_task {
    let mut t = tb_task::default();
    assert_eq!(
        tb_spawn_blocking(rt, f, arg(p), Some(free_fn), &mut t),
        TB_OK,
        "{}",
        last_error()
    );
    t
}

pub fn outcome(t: tb_task) -> tb_outcome {
    let mut o = tb_outcome::default();
    assert_eq!(tb_task_wait(t, TB_FOREVER), TB_OK);
    assert_eq!(tb_task_outcome(t, &mut o), TB_OK);
    o
}

pub fn wait_until(what: &str, cond: impl Fn() -> bool) {
    assert!(within(20, cond), "timed out waiting until {what}");
}

/// Polls `cond` every millisecond for up to `secs` seconds; true if it held.
pub fn within(secs: u64, cond: impl Fn() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if Instant::now() > end {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

/// A `tb_metrics` ready to be filled: `struct_size` set.
pub fn new_metrics() -> tb_metrics {
    tb_metrics {
        struct_size: std::mem::size_of::<tb_metrics>() as u32,
        ..Default::default()
    }
}

pub fn metrics(rt: tb_runtime) -> tb_metrics {
    let mut m = new_metrics();
    assert_eq!(tb_runtime_metrics(rt, &mut m), TB_OK, "{}", last_error());
    m
}

/// A small seedable generator (xorshift64*): random tests replay exactly from their seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed: nearby seeds give unrelated streams, and the state is never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True `percent` times in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The process's resident set size in bytes, from `/proc/self/statm`.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// Calls `f` to fill a versioned struct `T` (one that starts with `struct_size`) whose
/// `struct_size` is set to `size`, or with NULL when `null`. The buffer is aligned for `T`,
/// filled with 0xAB and 8 bytes longer than `T`. Returns the status and whether the call left
/// every byte past `struct_size` alone (past `struct_size` itself, when it failed).
pub fn fill_versioned<T>(
    size: u32,
    null: bool,
    f: impl FnOnce(*mut T) -> tb_status,
) -> (tb_status, bool) {
    let full = std::mem::size_of::<T>();
    let mut words = vec![u64::from_ne_bytes([0xAB; 8]); full / 8 + 2];
    let ptr = words.as_mut_ptr().cast::<u8>();
    // SAFETY: `words` has at least `full + 8` bytes; `struct_size` is T's first field.
    unsafe { ptr.cast::<u32>().write(size) };
    let status = f(if null {
        std::ptr::null_mut()
    } else {
        ptr.cast()
    });
    // SAFETY: the same bytes, read back as bytes.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, full + 8) };
    let written = if status == TB_OK { size as usize } else { 4 };
    let untouched = written <= full && bytes[written..].iter().all(|&b| b == 0xAB);
    let size_kept = bytes[..4] == size.to_ne_bytes();
    (status, untouched && size_kept)
}
