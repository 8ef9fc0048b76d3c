//! Completion queues: tags pushed exactly once, in completion order, through a pollable fd that
//! is readable exactly while tags wait.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use tokio_bridge::completion::*;
use tokio_bridge::error::*;
use tokio_bridge::queue::*;
use tokio_bridge::timer::*;

mod common;
use common::*;

fn queue() -> tb_queue {
    let mut q = tb_queue::default();
    assert_eq!(tb_queue_new(&mut q), TB_OK, "{}", last_error());
    q
}

fn fd(q: tb_queue) -> i32 {
    let mut fd = -1;
    assert_eq!(tb_queue_fd(q, &mut fd), TB_OK);
    fd
}

fn readable(fd: i32, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) == 1 }
}

fn drain(q: tb_queue) -> Vec<u64> {
    let mut tags = vec![0u64; 4096];
    let mut all = Vec::new();
    loop {
        let mut n = 0;
        assert_eq!(
            tb_queue_drain(q, tags.as_mut_ptr(), tags.len(), &mut n),
            TB_OK
        );
        all.extend_from_slice(&tags[..n]);
        if n < tags.len() {
            return all;
        }
    }
}

fn stats(q: tb_queue) -> tb_queue_stats {
    let mut s = tb_queue_stats {
        struct_size: std::mem::size_of::<tb_queue_stats>() as u32,
        ..Default::default()
    };
    assert_eq!(tb_queue_get_stats(q, &mut s), TB_OK);
    s
}

#[test]
fn tags_arrive_in_completion_order_and_the_fd_follows_the_queue() {
    let rt = runtime();
    let q = queue();
    let fd = fd(q);
    assert!(!readable(fd, 0));
    let mut sleeps = Vec::new();
    for (tag, ms) in [(1u64, 60u64), (2, 20), (3, 40)] {
        let mut t = tb_task::default();
        assert_eq!(tb_sleep(rt, ms, &mut t), TB_OK);
        assert_eq!(tb_task_notify(t, q, tag), TB_OK);
        assert_eq!(tb_task_notify(t, q, tag), TB_ERR_ALREADY);
        sleeps.push(t);
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        assert!(readable(fd, 5_000), "the fd becomes readable");
        for tag in drain(q) {
            let t = sleeps[tag as usize - 1];
            assert_eq!(
                tb_task_poll(t),
                TB_OK,
                "the task is finished when its tag arrives"
            );
            got.push(tag);
        }
        assert!(!readable(fd, 0), "never left readable after a full drain");
    }
    assert_eq!(got, [2, 3, 1]);
    assert_eq!(tb_queue_free(q), TB_OK);
    shutdown(rt);
}

#[test]
fn a_finished_task_pushes_at_once_and_completion_racing_notify_pushes_once() {
    let rt = runtime();
    let q = queue();
    let done = spawn(rt, Some(result_fn), probe());
    outcome(done);
    assert_eq!(tb_task_notify(done, q, 7), TB_OK);
    assert_eq!(drain(q), [7]);

    // Quick jobs finish around the time notify is registered; every tag arrives exactly once.
    let n = 3000u64;
    for tag in 0..n {
        let t = spawn(rt, Some(result_fn), probe());
        assert_eq!(tb_task_notify(t, q, tag), TB_OK);
        assert_eq!(tb_task_release(t), TB_OK);
    }
    let mut seen = HashSet::new();
    let started = Instant::now();
    while seen.len() < n as usize {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} of {n} tags",
            seen.len()
        );
        assert_eq!(tb_queue_wait(q, 1000), TB_OK);
        for tag in drain(q) {
            assert!(seen.insert(tag), "tag {tag} twice");
        }
    }
    let s = stats(q);
    assert_eq!((s.pushed, s.drained, s.pending), (n + 1, n + 1, 0));
    assert!(s.wakeups <= s.pushed);
    assert_eq!(tb_queue_free(q), TB_OK);
    shutdown(rt);
}

#[test]
fn completions_coalesce_into_few_wakeups() {
    let rt = runtime();
    let q = queue();
    let n = 10_000u64;
    let tasks: Vec<tb_task> = (0..n)
        .map(|tag| {
            let mut t = tb_task::default();
            assert_eq!(tb_sleep(rt, 20, &mut t), TB_OK);
            assert_eq!(tb_task_notify(t, q, tag), TB_OK);
            t
        })
        .collect();
    assert_eq!(tb_wait_all(tasks.as_ptr(), tasks.len(), TB_FOREVER), TB_OK);
    assert_eq!(drain(q).len(), n as usize);
    let s = stats(q);
    println!("{} completions, {} wake-ups", s.pushed, s.wakeups);
    assert!(
        s.wakeups * 10 <= s.pushed,
        "{} wake-ups for {} completions",
        s.wakeups,
        s.pushed
    );
    assert_eq!(tb_queue_free(q), TB_OK);
    shutdown(rt);
}

#[test]
fn another_thread_can_drain_while_tasks_complete() {
    let rt = runtime();
    let q = queue();
    let n = 2000u64;
    let drainer = thread::spawn(move || {
        let mut got = Vec::new();
        while got.len() < n as usize {
            match tb_queue_wait(q, 10_000) {
                TB_OK => got.extend(drain(q)),
                other => panic!("tb_queue_wait returned {other}"),
            }
        }
        got
    });
    for tag in 0..n {
        let t = spawn(rt, Some(result_fn), probe());
        assert_eq!(tb_task_notify(t, q, tag), TB_OK);
        assert_eq!(tb_task_release(t), TB_OK);
    }
    let mut got = drainer.join().unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    assert_eq!(tb_queue_free(q), TB_OK);
    shutdown(rt);
}

#[test]
fn freeing_a_queue_with_pending_notifications_drops_them_safely() {
    let rt = runtime();
    let q = queue();
    let p = probe_with_sleep_ms(100);
    let running = spawn(rt, Some(job_fn), p);
    assert_eq!(tb_task_notify(running, q, 1), TB_OK);
    let done = spawn(rt, Some(result_fn), probe());
    outcome(done);
    assert_eq!(tb_task_notify(done, q, 2), TB_OK); // waiting in the queue
    let waiter = thread::spawn(move || tb_queue_wait(q, TB_FOREVER));
    thread::sleep(Duration::from_millis(20));
    assert_eq!(tb_queue_free(q), TB_OK);
    assert_eq!(
        waiter.join().unwrap(),
        TB_OK,
        "the waiter saw the pending tag"
    );
    assert_eq!(tb_queue_free(q), TB_ERR_BAD_HANDLE, "double free");
    let mut n = 0;
    assert_eq!(
        tb_queue_drain(q, std::ptr::null_mut(), 0, &mut n),
        TB_ERR_BAD_HANDLE
    );
    assert_eq!(
        outcome(running).status,
        TB_OK,
        "the task ran on; its tag was dropped"
    );
    assert_eq!(p.frees.load(Ordering::SeqCst), 1);

    let empty = queue();
    let waiter = thread::spawn(move || tb_queue_wait(empty, TB_FOREVER));
    thread::sleep(Duration::from_millis(20));
    assert_eq!(tb_queue_free(empty), TB_OK);
    assert_eq!(
        waiter.join().unwrap(),
        TB_ERR_BAD_HANDLE,
        "a wait ends when its queue is freed"
    );
    shutdown(rt);
}

#[test]
fn misuse_is_refused_with_the_documented_codes() {
    let rt = runtime();
    let q = queue();
    let mut n = 0usize;
    let mut tags = [0u64; 4];
    assert_eq!(tb_queue_new(std::ptr::null_mut()), TB_ERR_NULL);
    assert_eq!(tb_queue_fd(q, std::ptr::null_mut()), TB_ERR_NULL);
    assert_eq!(
        tb_queue_drain(q, tags.as_mut_ptr(), 4, std::ptr::null_mut()),
        TB_ERR_NULL
    );
    assert_eq!(
        tb_queue_drain(q, std::ptr::null_mut(), 4, &mut n),
        TB_ERR_NULL
    );
    assert_eq!(
        tb_queue_drain(q, tags.as_mut_ptr(), usize::MAX, &mut n),
        TB_ERR_INVALID_ARG
    );
    assert_eq!(tb_queue_drain(q, std::ptr::null_mut(), 0, &mut n), TB_OK);
    assert_eq!(n, 0);
    assert_eq!(tb_queue_wait(q, 0), TB_TIMED_OUT);
    let t = spawn(rt, Some(result_fn), probe());
    for bad in [
        tb_queue { id: 0 },
        tb_queue { id: t.id },
        tb_queue { id: rt.id },
    ] {
        assert_eq!(tb_queue_wait(bad, 0), TB_ERR_BAD_HANDLE);
        assert_eq!(tb_task_notify(t, bad, 1), TB_ERR_BAD_HANDLE);
    }
    assert!(last_error().contains("queue handle"), "{}", last_error());
    assert_eq!(
        tb_task_notify(tb_task { id: q.id }, q, 1),
        TB_ERR_BAD_HANDLE
    );
    let mut s = tb_queue_stats::default();
    assert_eq!(
        tb_queue_get_stats(q, &mut s),
        TB_ERR_INVALID_ARG,
        "struct_size not set"
    );
    assert_eq!(tb_queue_get_stats(q, std::ptr::null_mut()), TB_ERR_NULL);
    outcome(t);
    assert_eq!(tb_queue_free(q), TB_OK);
    shutdown(rt);
}

#[test]
fn waiting_on_a_queue_inside_a_timer_callback_is_refused() {
    use std::sync::Mutex;
    static RESULT: Mutex<Vec<tb_status>> = Mutex::new(Vec::new());
    unsafe extern "C" fn waits(arg: *mut std::ffi::c_void, _tick: u64) -> i32 {
        let q = *arg.cast::<tb_queue>();
        let mut r = RESULT.lock().unwrap();
        r.push(tb_queue_wait(q, 100));
        r.push(tb_queue_wait(q, 0));
        1
    }
    let rt = runtime();
    let q = Box::leak(Box::new(queue()));
    let mut t = tb_task::default();
    let a = std::ptr::from_mut(q).cast();
    assert_eq!(
        tb_timer_start(rt, 0, 0, Some(waits), a, None, &mut t),
        TB_OK
    );
    outcome(t);
    assert_eq!(
        *RESULT.lock().unwrap(),
        [TB_ERR_ON_RUNTIME_THREAD, TB_TIMED_OUT]
    );
    assert_eq!(tb_queue_free(*q), TB_OK);
    shutdown(rt);
}
