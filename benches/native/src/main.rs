//! Native Tokio: the work of the C benchmark programs (`benches/c/`), written as a Rust
//! program would write it with Tokio's own API.
//!
//! `tb-bench-native MODE key=value...` prints one `metric value` line per result, like the C
//! programs, and exits non-zero when the work was not done:
//!
//! - `roundtrip n= warmup=`: one no-op `spawn_blocking` at a time, awaited from `block_on`;
//! - `noop n= window= threads=`: n no-op jobs, at most `window` outstanding;
//! - `sleep n= threads= sleep_us=`: n jobs that sleep;
//! - `timers n= min_ms= max_ms=`: n tasks that each `sleep_until` a random delay, all at once;
//! - `calls n=`: `JoinHandle::is_finished` on a live task, in ns;
//! - `idle ms= burst=`: CPU used by an idle runtime after a burst of jobs.
//!
//! `threads=0` is Tokio's default configuration; otherwise `max_blocking_threads(threads)`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Runtime};
use tokio::task::{spawn_blocking, JoinHandle};

/// `key=value` arguments; every one given must be asked for.
struct Args {
    pairs: Vec<(String, u64)>,
    used: Vec<bool>,
}

impl Args {
    fn parse(words: &[String]) -> Args {
        let pairs: Vec<(String, u64)> = words
            .iter()
            .map(|word| {
                let (key, value) = word
                    .split_once('=')
                    .unwrap_or_else(|| fail(&format!("{word}: not key=value")));
                let value = value
                    .parse()
                    .unwrap_or_else(|_| fail(&format!("{word}: not a number")));
                (key.to_string(), value)
            })
            .collect();
        let used = vec![false; pairs.len()];
        Args { pairs, used }
    }

    fn get(&mut self, key: &str, fallback: u64) -> u64 {
        match self.pairs.iter().position(|(k, _)| k == key) {
            Some(at) => {
                self.used[at] = true;
                self.pairs[at].1
            }
            None => fallback,
        }
    }

    fn size(&mut self, key: &str, fallback: u64) -> usize {
        usize::try_from(self.get(key, fallback)).unwrap_or_else(|_| fail("too large"))
    }

    fn done(&self, mode: &str) {
        if let Some(at) = self.used.iter().position(|used| !used) {
            fail(&format!(
                "mode {mode} takes no argument {}",
                self.pairs[at].0
            ));
        }
    }
}

fn fail(message: &str) -> ! {
    eprintln!("bench: {message}");
    std::process::exit(1);
}

fn report(name: &str, value: f64) {
    println!("{name} {value}");
}

/// Prints `<prefix>_p50_us`, `<prefix>_p99_us` and `<prefix>_mean_us` of samples in ns.
fn report_latency(prefix: &str, mut ns: Vec<u64>) {
    if ns.is_empty() {
        fail(&format!("{prefix}: no samples"));
    }
    ns.sort_unstable();
    let n = ns.len();
    let mean = ns.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    report(&format!("{prefix}_p50_us"), ns[n / 2] as f64 / 1e3);
    report(&format!("{prefix}_p99_us"), ns[n * 99 / 100] as f64 / 1e3);
    report(&format!("{prefix}_mean_us"), mean / 1e3);
}

/// The instant all stamps count from, so that threads compare them.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn ns_at(at: Instant) -> u64 {
    at.duration_since(origin()).as_nanos() as u64
}

fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// CPU time of the whole process so far (user + system), in seconds.
fn cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = usage.ru_utime.tv_sec + usage.ru_stime.tv_sec;
    let micros = usage.ru_utime.tv_usec + usage.ru_stime.tv_usec;
    seconds as f64 + micros as f64 / 1e6
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_else(|e| fail(&format!("/proc/self/status: {e}")));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| fail(&format!("no {field} in /proc/self/status")))
}

fn threads_now() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap_or_else(|e| fail(&format!("/proc/self/task: {e}")))
        .count()
}

/// Samples the number of threads of the process every 5 ms.
struct ThreadSampler {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<usize>,
}

impl ThreadSampler {
    fn start() -> ThreadSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Acquire) {
                peak = peak.max(threads_now());
                thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        ThreadSampler { stop, thread }
    }

    /// The most threads seen, not counting the main thread and the sampler.
    fn stop(self) -> usize {
        let now = threads_now();
        self.stop.store(true, Ordering::Release);
        let peak = self.thread.join().expect("the sampler panicked");
        peak.max(now) - 2
    }
}

/// The delay of timer `i`: the same sequence as `bench_delay_ms` in `benches/c/bench.c`.
fn delay_ms(i: u64, min_ms: u64, max_ms: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    min_ms + z % (max_ms - min_ms + 1)
}

fn runtime(blocking_threads: u64) -> Runtime {
    let mut builder = Builder::new_multi_thread();
    builder.enable_all();
    if blocking_threads > 0 {
        builder.max_blocking_threads(blocking_threads as usize);
    }
    builder
        .build()
        .unwrap_or_else(|e| fail(&format!("runtime: {e}")))
}

async fn join<T>(handle: JoinHandle<T>) -> T {
    handle
        .await
        .unwrap_or_else(|e| fail(&format!("a task failed: {e}")))
}

fn roundtrip(args: &mut Args) {
    let n = args.size("n", 20_000);
    let warmup = args.size("warmup", 1000);
    args.done("roundtrip");
    let rt = runtime(0);
    let (rtt, wake, cpu) = rt.block_on(async {
        let mut rtt = Vec::with_capacity(n);
        let mut wake = Vec::with_capacity(n);
        let mut cpu = 0.0;
        for i in 0..warmup + n {
            if i == warmup {
                cpu = cpu_s();
            }
            let start = now_ns();
            let end = join(spawn_blocking(now_ns)).await;
            let woke = now_ns();
            if i >= warmup {
                rtt.push(woke - start);
                wake.push(woke - end);
            }
        }
        (rtt, wake, cpu_s() - cpu)
    });
    report_latency("rt", rtt);
    report_latency("wake", wake);
    report("cpu_us_per_op", cpu * 1e6 / n as f64);
}

fn noop(args: &mut Args) {
    let n = args.size("n", 1_000_000);
    let window = args.size("window", n as u64);
    let threads = args.get("threads", 0);
    args.done("noop");
    if window == 0 || window > n {
        fail("window must be in 1..n");
    }
    let rt = runtime(threads);
    let mut ring = VecDeque::with_capacity(window);
    let sampler = ThreadSampler::start();
    let cpu = cpu_s();
    let start = Instant::now();
    rt.block_on(async {
        for _ in 0..n {
            if ring.len() == window {
                join(ring.pop_front().expect("a full window")).await;
            }
            ring.push_back(spawn_blocking(|| {}));
        }
        for handle in ring {
            join(handle).await;
        }
    });
    let elapsed = start.elapsed();
    let cpu = cpu_s() - cpu;
    let threads_seen = sampler.stop();
    report("mops", n as f64 / elapsed.as_secs_f64() / 1e6);
    report("cpu_s", cpu);
    report("threads", threads_seen as f64);
}

fn sleep_jobs(args: &mut Args) {
    let n = args.size("n", 25_600);
    let threads = args.get("threads", 64);
    let us = args.get("sleep_us", 1000);
    args.done("sleep");
    let rt = runtime(threads);
    let mut handles = Vec::with_capacity(n);
    let sampler = ThreadSampler::start();
    let start = Instant::now();
    rt.block_on(async {
        for _ in 0..n {
            handles.push(spawn_blocking(move || {
                thread::sleep(Duration::from_micros(us))
            }));
        }
        for handle in handles {
            join(handle).await;
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let threads_seen = sampler.stop();
    report("kjobs_per_s", n as f64 / elapsed / 1e3);
    report(
        "efficiency",
        n as f64 * us as f64 / 1e6 / threads as f64 / elapsed,
    );
    report("threads", threads_seen as f64);
}

/// What the timers saw when they fired, kept per thread so that the workers firing timers do
/// not contend on one cache line: each thread updates its own shard, chosen on first use.
#[repr(align(128))]
struct Fired {
    count: AtomicUsize,
    late_sum_ns: AtomicU64,
    late_max_ns: AtomicU64,
    last_ns: AtomicU64,
}

const SHARDS: usize = 64;
static FIRED: [Fired; SHARDS] = [const {
    Fired {
        count: AtomicUsize::new(0),
        late_sum_ns: AtomicU64::new(0),
        late_max_ns: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
    }
}; SHARDS];

fn my_shard() -> &'static Fired {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    &FIRED[MINE.with(|&mine| mine)]
}

fn fire(due_ns: u64) {
    let now = now_ns();
    let late = now.saturating_sub(due_ns);
    let shard = my_shard();
    shard.late_sum_ns.fetch_add(late, Ordering::Relaxed);
    shard.late_max_ns.fetch_max(late, Ordering::Relaxed);
    shard.last_ns.fetch_max(now, Ordering::Relaxed);
    shard.count.fetch_add(1, Ordering::Release);
}

/// The shards summed up: (count, late_sum_ns, late_max_ns, last_ns).
fn fired() -> (usize, u64, u64, u64) {
    FIRED.iter().fold((0, 0, 0, 0), |(n, sum, max, last), f| {
        (
            n + f.count.load(Ordering::Acquire),
            sum + f.late_sum_ns.load(Ordering::Relaxed),
            max.max(f.late_max_ns.load(Ordering::Relaxed)),
            last.max(f.last_ns.load(Ordering::Relaxed)),
        )
    })
}

fn timers(args: &mut Args) {
    let n = args.size("n", 1_000_000);
    let min_ms = args.get("min_ms", 10);
    let max_ms = args.get("max_ms", 1000);
    args.done("timers");
    let rt = runtime(0);
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
    let sampler = ThreadSampler::start();
    let rss = status_kib("VmRSS");
    let mut handles = Vec::with_capacity(n);
    let start = now_ns();
    for i in 0..n as u64 {
        let due = Instant::now() + Duration::from_millis(delay_ms(i, min_ms, max_ms));
        handles.push(rt.spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            fire(ns_at(due));
        }));
    }
    let submitted = now_ns();
    while fired().0 < n {
        thread::sleep(Duration::from_millis(1));
    }
    let peak = status_kib("VmHWM");
    let threads_seen = sampler.stop();
    rt.block_on(async {
        for handle in handles {
            join(handle).await;
        }
    });
    let (_, late_sum, late_max, last) = fired();
    report("wall_s", (last - start) as f64 / 1e9);
    report("submit_s", (submitted - start) as f64 / 1e9);
    report("bytes_per_timer", (peak - rss) as f64 * 1024.0 / n as f64);
    report("late_mean_ms", late_sum as f64 / n as f64 / 1e6);
    report("late_max_ms", late_max as f64 / 1e6);
    report("threads", threads_seen as f64);
}

fn poll_loop(live: &JoinHandle<()>, n: usize) {
    for _ in 0..n {
        if black_box(live).is_finished() {
            fail("is_finished: the live task is finished");
        }
    }
}

fn calls(args: &mut Args) {
    let n = args.size("n", 2_000_000);
    args.done("calls");
    let rt = runtime(0);
    let live = rt.spawn(async { tokio::time::sleep(Duration::from_secs(3600)).await });

    let start = Instant::now();
    poll_loop(&live, n);
    report("poll_ns", start.elapsed().as_nanos() as f64 / n as f64);

    let start = Instant::now();
    thread::scope(|scope| {
        scope.spawn(|| poll_loop(&live, n));
        poll_loop(&live, n);
    });
    report(
        "poll_2threads_ns",
        start.elapsed().as_nanos() as f64 / n as f64,
    );

    live.abort();
    if rt.block_on(live).is_ok() {
        fail("the aborted task finished");
    }
}

fn idle(args: &mut Args) {
    let ms = args.get("ms", 1000);
    let burst = args.size("burst", 10_000);
    args.done("idle");
    let rt = runtime(0);
    rt.block_on(async {
        let handles: Vec<_> = (0..burst).map(|_| spawn_blocking(|| {})).collect();
        for handle in handles {
            join(handle).await;
        }
    });
    thread::sleep(Duration::from_millis(100));
    let cpu = cpu_s();
    thread::sleep(Duration::from_millis(ms));
    let cpu = cpu_s() - cpu;
    report("idle_cpu_ms_per_s", cpu * 1e3 / (ms as f64 / 1e3));
}

fn main() {
    origin();
    let words: Vec<String> = std::env::args().collect();
    let Some(mode) = words.get(1) else {
        fail("usage: tb-bench-native MODE [key=value...]");
    };
    let mut args = Args::parse(&words[2..]);
    match mode.as_str() {
        "roundtrip" => roundtrip(&mut args),
        "noop" => noop(&mut args),
        "sleep" => sleep_jobs(&mut args),
        "timers" => timers(&mut args),
        "calls" => calls(&mut args),
        "idle" => idle(&mut args),
        other => fail(&format!("unknown mode {other}")),
    }
}
