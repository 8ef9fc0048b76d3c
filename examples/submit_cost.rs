//! Measures the cost of the blocking-job path (submit, run a no-op, complete, release) and of
//! the timer-callback path, in nanoseconds per task, with 10,000 tasks in flight.
//!
//! `cargo run --release --example submit_cost [stall_threshold_ms [rounds]]`: pass 0 to turn
//! the stall detector off and compare. Under `valgrind --tool=callgrind`, a few rounds give
//! instruction counts that do not depend on the machine's load.

use std::ffi::c_void;
use std::time::Instant;

use tokio_bridge::completion::*;
use tokio_bridge::error::*;
use tokio_bridge::job::*;
use tokio_bridge::runtime::*;
use tokio_bridge::timer::*;

unsafe extern "C" fn nothing(_arg: *mut c_void, _job: *mut tb_job) -> i32 {
    0
}

unsafe extern "C" fn tick(_arg: *mut c_void, _tick: u64) -> i32 {
    1
}

const BATCH: usize = 10_000;

/// Nanoseconds per task: submit BATCH tasks, wait for all, release them; `rounds` times.
fn per_task(rounds: usize, mut submit: impl FnMut(&mut tb_task) -> tb_status) -> f64 {
    let mut tasks = vec![tb_task::default(); BATCH];
    let start = Instant::now();
    for _ in 0..rounds {
        for t in tasks.iter_mut() {
            assert_eq!(submit(t), TB_OK);
        }
        assert_eq!(tb_wait_all(tasks.as_ptr(), BATCH, TB_FOREVER), TB_OK);
        for t in &tasks {
            assert_eq!(tb_task_release(*t), TB_OK);
        }
    }
    start.elapsed().as_nanos() as f64 / (BATCH * rounds) as f64
}

fn main() {
    let mut cfg = tb_runtime_config::default();
    tb_runtime_config_init(&mut cfg);
    cfg.worker_threads = 2;
    cfg.max_blocking_threads = 2;
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: stall_threshold_ms rounds"))
        .collect();
    if let Some(&threshold) = args.first() {
        cfg.stall_threshold_ms = threshold;
    }
    let rounds = args.get(1).map_or(50, |&r| r as usize);
    let mut rt = tb_runtime::default();
    assert_eq!(tb_runtime_new(&cfg, &mut rt), TB_OK);
    let null = std::ptr::null_mut();
    for round in 0..3 {
        let job = per_task(rounds, |t| {
            tb_spawn_blocking(rt, Some(nothing), null, None, t)
        });
        let timer = per_task(rounds, |t| {
            tb_timer_start(rt, 0, 0, Some(tick), null, None, t)
        });
        println!(
            "run {round}: blocking no-op job {job:.0} ns/task, one-shot timer {timer:.0} ns/task"
        );
    }
    assert_eq!(tb_runtime_shutdown(rt, TB_FOREVER), TB_OK);
}
