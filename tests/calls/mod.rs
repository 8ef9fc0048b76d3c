//! Bytes in, API calls out: the interpreter behind the fuzz target (`fuzz/fuzz_targets/
//! api_calls.rs`) and its replay test (`tests/fuzz_replay.rs`).
//!
//! Each input is read as a sequence of calls with arbitrary arguments: zeroed, forged, stale
//! and wrong-type handles, NULL pointers, any `struct_size`, any config field, any delay,
//! period or status value, array lengths up to the buffer or past any array. Every status is
//! checked against the codes the header documents (`tests/common/contract.rs`), and an
//! out-param must stay untouched when a call fails. A violation panics, which the fuzzer
//! reports as a crash. The `arg` of every job and timer is a heap block that its `free_arg`
//! frees, so under AddressSanitizer a `free_arg` run twice, too early or never shows as well.
//!
//! What the interpreter keeps out, so that inputs cannot hang: waits are at most 3 ms (except
//! the shutdowns at the end), jobs return at once.

use std::ffi::{c_char, c_void};

use tokio_bridge::completion::*;
use tokio_bridge::error::*;
use tokio_bridge::job::*;
use tokio_bridge::metrics::*;
use tokio_bridge::probe::*;
use tokio_bridge::queue::*;
use tokio_bridge::runtime::*;
use tokio_bridge::stall::*;
use tokio_bridge::tb_free_fn;
use tokio_bridge::timer::*;

use crate::common::contract::{self, Api};
use crate::common::fill_versioned;

/// The most calls one input makes.
const MAX_CALLS: usize = 48;
const SENTINEL: u64 = 0x5EE5_5EE5_5EE5_5EE5;

/// Reads numbers from the input; past its end, zeros.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.data.get(self.at).copied().unwrap_or(0);
            self.at += 1;
        }
        out
    }

    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }

    fn done(&self) -> bool {
        self.at >= self.data.len()
    }

    /// A small wait: 0 to 3 ms.
    fn timeout(&mut self) -> u64 {
        u64::from(self.u8() % 4)
    }

    /// One time in `n`.
    fn one_in(&mut self, n: u8) -> bool {
        self.u8() % n == 0
    }
}

/// Checks a status against the header; panics (a crash for the fuzzer) if it is not listed.
fn check(api: Api, status: tb_status) -> tb_status {
    if let Err(e) = contract::documented(api, status) {
        panic!("{e}");
    }
    status
}

/// A job's or timer's `arg`: a heap block its `free_arg` frees.
fn new_arg() -> *mut c_void {
    Box::into_raw(Box::new(0x0A0B_0C0Du64)).cast()
}

unsafe extern "C" fn free_arg(arg: *mut c_void) {
    drop(Box::from_raw(arg.cast::<u64>()));
}

unsafe fn touch(arg: *mut c_void) {
    if !arg.is_null() {
        let value = &mut *arg.cast::<u64>();
        *value = value.wrapping_add(1);
    }
}

unsafe extern "C" fn job_ok(arg: *mut c_void, job: *mut tb_job) -> i32 {
    touch(arg);
    tb_job_set_result(job, arg);
    0
}

unsafe extern "C" fn job_fails(arg: *mut c_void, job: *mut tb_job) -> i32 {
    touch(arg);
    i32::from(!tb_job_cancelled(job)) - 7
}

unsafe extern "C" fn tick(arg: *mut c_void, tick: u64) -> i32 {
    touch(arg);
    i32::from(tick >= 2)
}

unsafe extern "C" fn completed(_arg: *mut c_void, _t: tb_task, outcome: *const tb_outcome) {
    assert!(!outcome.is_null());
}

unsafe extern "C" fn stalled(_arg: *mut c_void, _stall: *const tb_stall) {}

/// What one input created, ended when the input ends.
#[derive(Default)]
struct State {
    runtimes: Vec<tb_runtime>,
    tasks: Vec<tb_task>,
    queues: Vec<tb_queue>,
}

impl State {
    fn any_id(&self, input: &mut Input) -> u64 {
        let pools = [
            self.runtimes.iter().map(|r| r.id).collect::<Vec<_>>(),
            self.tasks.iter().map(|t| t.id).collect(),
            self.queues.iter().map(|q| q.id).collect(),
        ];
        let pool = &pools[usize::from(input.u8() % 3)];
        match input.u8() % 8 {
            0 => 0,
            1 => input.u64(),
            _ if pool.is_empty() => input.u64(),
            n => pool[usize::from(n) * usize::from(input.u8()) % pool.len()],
        }
    }

    /// Mostly a task of this input (live or released), else any id at all.
    fn task(&self, input: &mut Input) -> tb_task {
        if !self.tasks.is_empty() && !input.one_in(6) {
            let i = usize::from(input.u8()) % self.tasks.len();
            return self.tasks[i];
        }
        tb_task {
            id: self.any_id(input),
        }
    }

    /// Mostly the default runtime or one of this input, else any id at all.
    fn runtime(&self, input: &mut Input) -> tb_runtime {
        match input.u8() % 8 {
            0 => tb_runtime {
                id: self.any_id(input),
            },
            n if (n as usize) <= self.runtimes.len() => self.runtimes[n as usize - 1],
            _ => {
                let mut rt = tb_runtime::default();
                check(Api::RuntimeDefault, tb_runtime_default(&mut rt));
                rt
            }
        }
    }

    fn queue(&self, input: &mut Input) -> tb_queue {
        if !self.queues.is_empty() && !input.one_in(5) {
            let i = usize::from(input.u8()) % self.queues.len();
            return self.queues[i];
        }
        tb_queue {
            id: self.any_id(input),
        }
    }
}

/// A pointer to `value`, or NULL one time in `n`.
fn or_null<T>(input: &mut Input, n: u8, value: &mut T) -> *mut T {
    if input.one_in(n) {
        std::ptr::null_mut()
    } else {
        value
    }
}

/// Runs one input's calls, then ends what it created.
pub fn run(data: &[u8]) {
    let mut input = Input { data, at: 0 };
    let mut state = State::default();
    for _ in 0..MAX_CALLS {
        if input.done() {
            break;
        }
        call(&mut input, &mut state);
    }
    end(state);
}

/// Cancels and releases every task, shuts down every runtime, frees every queue.
fn end(state: State) {
    for &t in &state.tasks {
        check(Api::TaskCancel, tb_task_cancel(t));
        check(Api::TaskWait, tb_task_wait(t, TB_FOREVER));
        check(Api::TaskRelease, tb_task_release(t));
    }
    for &rt in &state.runtimes {
        check(Api::RuntimeShutdown, tb_runtime_shutdown(rt, TB_FOREVER));
    }
    for &q in &state.queues {
        check(Api::QueueFree, tb_queue_free(q));
    }
}

fn submitted(state: &mut State, api: Api, status: tb_status, out: tb_task, arg: *mut c_void) {
    check(api, status);
    if status == TB_OK {
        assert!(
            out.id != SENTINEL,
            "{} succeeded without a handle",
            api.name()
        );
        state.tasks.push(out);
    } else {
        assert_eq!(
            out.id,
            SENTINEL,
            "{} failed and wrote its out-param",
            api.name()
        );
        if !arg.is_null() {
            // SAFETY: a failed submission leaves `arg` to the caller.
            unsafe { free_arg(arg) };
        }
    }
}

fn call(input: &mut Input, state: &mut State) {
    match input.u8() % 24 {
        0..=3 => {
            let rt = state.runtime(input);
            let func: tb_blocking_fn = match input.u8() % 5 {
                0 => None,
                1 => Some(job_fails),
                _ => Some(job_ok),
            };
            let owned = !input.one_in(4);
            let arg = if owned {
                new_arg()
            } else {
                std::ptr::null_mut()
            };
            let free: tb_free_fn = if owned { Some(free_arg) } else { None };
            let mut out = tb_task { id: SENTINEL };
            let out_ptr = or_null(input, 16, &mut out);
            let status = tb_spawn_blocking(rt, func, arg, free, out_ptr);
            submitted(state, Api::SpawnBlocking, status, out, arg);
        }
        4 => {
            let (rt, delay) = (state.runtime(input), input.u64());
            let mut out = tb_task { id: SENTINEL };
            let out_ptr = or_null(input, 16, &mut out);
            let status = tb_sleep(rt, delay, out_ptr);
            submitted(state, Api::Sleep, status, out, std::ptr::null_mut());
        }
        5..=6 => {
            let rt = state.runtime(input);
            let (delay, period) = (
                input.u64() >> (input.u8() % 64),
                input.u64() >> (input.u8() % 64),
            );
            let func: tb_timer_fn = if input.one_in(16) { None } else { Some(tick) };
            let arg = new_arg();
            let mut out = tb_task { id: SENTINEL };
            let out_ptr = or_null(input, 16, &mut out);
            let status = tb_timer_start(rt, delay, period, func, arg, Some(free_arg), out_ptr);
            submitted(state, Api::TimerStart, status, out, arg);
        }
        7 => {
            let (t, timeout) = (state.task(input), input.timeout());
            check(Api::TaskWait, tb_task_wait(t, timeout));
        }
        8 => {
            check(Api::TaskPoll, tb_task_poll(state.task(input)));
        }
        9 => {
            let t = state.task(input);
            let mut o = tb_outcome {
                code: 0x5EE5,
                ..tb_outcome::default()
            };
            let status = check(
                Api::TaskOutcome,
                tb_task_outcome(t, or_null(input, 8, &mut o)),
            );
            assert!(
                status == TB_OK || o.code == 0x5EE5,
                "tb_task_outcome wrote on {status}"
            );
        }
        10 => {
            check(Api::TaskCancel, tb_task_cancel(state.task(input)));
        }
        11 => {
            let t = state.task(input);
            let func: tb_complete_fn = if input.one_in(8) {
                None
            } else {
                Some(completed)
            };
            check(
                Api::TaskOnComplete,
                tb_task_on_complete(t, func, std::ptr::null_mut()),
            );
        }
        12 => {
            check(Api::TaskRelease, tb_task_release(state.task(input)));
        }
        13 => group_wait(input, state),
        14 => new_runtime(input, state),
        15 => {
            let (rt, timeout) = (state.runtime(input), input.timeout());
            let timeout = if input.one_in(4) { TB_FOREVER } else { timeout };
            check(Api::RuntimeShutdown, tb_runtime_shutdown(rt, timeout));
        }
        16 => {
            let rt = state.runtime(input);
            versioned::<tb_metrics>(input, Api::RuntimeMetrics, |p| tb_runtime_metrics(rt, p));
        }
        17 => probe(input, state),
        18 => queue_call(input, state),
        19 => {
            let mut q = tb_queue { id: SENTINEL };
            let status = check(Api::QueueNew, tb_queue_new(or_null(input, 8, &mut q)));
            if status == TB_OK {
                state.queues.push(q);
            }
        }
        20 => {
            let mut buf = [0x7Fu8; 64];
            let len = usize::from(input.u8()) % (buf.len() + 1);
            let ptr: *mut c_char = if input.one_in(8) {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            };
            tb_last_error(ptr, len);
            assert!(
                buf[len..].iter().all(|&b| b == 0x7F),
                "tb_last_error wrote past len"
            );
            let status = input.u32() as i32;
            // SAFETY: both return static NUL-terminated strings for any value.
            let (name, message) = unsafe {
                (
                    std::ffi::CStr::from_ptr(tb_status_name(status)),
                    std::ffi::CStr::from_ptr(tb_status_message(status)),
                )
            };
            assert!(!name.to_bytes().is_empty() && !message.to_bytes().is_empty());
        }
        21 => {
            let mut cfg = tb_runtime_config::default();
            tb_runtime_config_init(or_null(input, 2, &mut cfg));
            let mut rt = tb_runtime { id: SENTINEL };
            let status = check(
                Api::RuntimeDefault,
                tb_runtime_default(or_null(input, 4, &mut rt)),
            );
            assert!(status == TB_OK || rt.id == SENTINEL);
        }
        22 => {
            // Outside any job, every pointer is refused, whatever it points to.
            let fake: *mut tb_job = std::ptr::null_mut::<u8>()
                .wrapping_add(input.u64() as usize)
                .cast();
            assert!(!tb_job_cancelled(fake));
            tb_job_set_result(fake, fake.cast());
        }
        _ => {
            let (rt, with_hook) = (state.runtime(input), !input.one_in(3));
            let func: tb_stall_fn = if with_hook { Some(stalled) } else { None };
            check(
                Api::OnStall,
                tb_runtime_on_stall(rt, func, std::ptr::null_mut()),
            );
        }
    }
}

/// `tb_wait_all` or `tb_wait_any` on a few handles, with a length up to the array or past any
/// array, and NULL pointers.
fn group_wait(input: &mut Input, state: &mut State) {
    let handles: Vec<tb_task> = (0..input.u8() % 5).map(|_| state.task(input)).collect();
    let n = match input.u8() % 8 {
        0 => usize::MAX / 2 + usize::from(input.u8()),
        1 => 0,
        _ => handles.len(),
    };
    let tasks = if input.one_in(8) {
        std::ptr::null()
    } else {
        handles.as_ptr()
    };
    let timeout = input.timeout();
    if input.one_in(2) {
        check(Api::WaitAll, tb_wait_all(tasks, n, timeout));
    } else {
        let mut index = usize::MAX;
        let status = check(
            Api::WaitAny,
            tb_wait_any(tasks, n, timeout, or_null(input, 8, &mut index)),
        );
        assert!(
            status == TB_OK && index < n || status != TB_OK && index == usize::MAX,
            "tb_wait_any: {status} with index {index}"
        );
    }
}

/// A runtime from a config of arbitrary bytes (with mostly sane thread counts, so that inputs
/// stay fast), an arbitrary name, or NULL.
fn new_runtime(input: &mut Input, state: &mut State) {
    let mut cfg = tb_runtime_config::default();
    tb_runtime_config_init(&mut cfg);
    let mut name = [0u8; 80];
    if !input.one_in(4) {
        cfg.struct_size = match input.u8() % 4 {
            0 => input.u32(),
            _ => cfg.struct_size,
        };
        cfg.flavor = input.u32() % 3;
        cfg.worker_threads = match input.u8() % 8 {
            0 => input.u32(),
            n => u32::from(n % 3),
        };
        cfg.max_blocking_threads = input.u32() >> (input.u8() % 32);
        cfg.blocking_keep_alive_ms = input.u32();
        cfg.max_queued_blocking = input.u32() >> (input.u8() % 32);
        cfg.thread_stack_size = input.u64() as usize >> (input.u8() % 64);
        cfg.stall_threshold_ms = input.u32() >> (input.u8() % 32);
        if input.one_in(2) {
            let len = usize::from(input.u8()) % name.len();
            for b in &mut name[..len] {
                *b = input.u8();
            }
            cfg.thread_name = name.as_ptr().cast();
        }
    }
    let cfg_ptr: *const tb_runtime_config = if input.one_in(6) {
        std::ptr::null()
    } else {
        &cfg
    };
    let mut rt = tb_runtime { id: SENTINEL };
    let status = check(
        Api::RuntimeNew,
        tb_runtime_new(cfg_ptr, or_null(input, 16, &mut rt)),
    );
    if status == TB_OK {
        state.runtimes.push(rt);
    } else {
        assert_eq!(
            rt.id, SENTINEL,
            "tb_runtime_new failed and wrote its out-param"
        );
    }
}

fn probe(input: &mut Input, state: &mut State) {
    let rt = state.runtime(input);
    match input.u8() % 3 {
        0 => {
            let period = input.u32() >> (input.u8() % 32);
            check(Api::ProbeStart, tb_runtime_probe_start(rt, period));
        }
        1 => {
            check(Api::ProbeStop, tb_runtime_probe_stop(rt));
        }
        _ => {
            versioned::<tb_probe_stats>(input, Api::ProbeStats, |p| tb_runtime_probe_stats(rt, p));
        }
    }
}

fn queue_call(input: &mut Input, state: &mut State) {
    let q = state.queue(input);
    match input.u8() % 6 {
        0 => {
            let mut fd = -7;
            let status = check(Api::QueueFd, tb_queue_fd(q, or_null(input, 8, &mut fd)));
            assert!(status != TB_OK || fd >= 0, "tb_queue_fd gave fd {fd}");
        }
        1 => {
            let (t, tag) = (state.task(input), input.u64());
            check(Api::TaskNotify, tb_task_notify(t, q, tag));
        }
        2 => {
            let mut tags = [SENTINEL; 16];
            let cap = match input.u8() % 6 {
                0 => usize::MAX / 8 + usize::from(input.u8()),
                n => usize::from(n) * 3 % (tags.len() + 1),
            };
            let tags_ptr = if input.one_in(8) {
                std::ptr::null_mut()
            } else {
                tags.as_mut_ptr()
            };
            let mut n = usize::MAX;
            let status = check(
                Api::QueueDrain,
                tb_queue_drain(q, tags_ptr, cap, or_null(input, 8, &mut n)),
            );
            assert!(status != TB_OK || n <= cap, "drained {n} tags into {cap}");
        }
        3 => {
            check(Api::QueueWait, tb_queue_wait(q, input.timeout()));
        }
        4 => versioned::<tb_queue_stats>(input, Api::QueueStats, |p| tb_queue_get_stats(q, p)),
        _ => {
            check(Api::QueueFree, tb_queue_free(q));
        }
    }
}

/// Calls a function that fills a versioned struct `T`, with an arbitrary `struct_size` or a
/// NULL pointer; checks that it writes no byte past `struct_size`.
fn versioned<T>(input: &mut Input, api: Api, f: impl FnOnce(*mut T) -> tb_status) {
    let size = match input.u8() % 4 {
        0 => input.u32(),
        1 => u32::from(input.u8()),
        _ => std::mem::size_of::<T>() as u32,
    };
    let (status, untouched) = fill_versioned(size, input.one_in(8), f);
    check(api, status);
    assert!(
        untouched,
        "{} with struct_size {size} wrote past it",
        api.name()
    );
}
