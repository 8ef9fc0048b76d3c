//! Runtimes: a Tokio runtime (async workers plus blocking pool) owned by the library.

use std::ffi::{c_char, CStr};
use std::mem::{offset_of, size_of};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::clock;
use crate::context;
use crate::error::{
    tb_status, Error, TB_ERR_INVALID_ARG, TB_ERR_OS, TB_ERR_SHUTDOWN, TB_OK, TB_PENDING,
    TB_TIMED_OUT,
};
use crate::handle::{HandleTable, TAG_RUNTIME};
use crate::job;
use crate::metrics::Counters;
use crate::panic::{boundary, panic_message};
use crate::pool::{Pool, PoolRef};
use crate::probe::Probe;
use crate::stall::Watchdog;
use crate::sync::lock;
use crate::timer_queue::TimerQueue;

/// A runtime handle: a generation-checked id, never a pointer. The id 0 is never valid.
///
/// Create one with `tb_runtime_new` (end it with `tb_runtime_shutdown`) or get the process-wide
/// one with `tb_runtime_default`. Handles are plain values: copy them freely, use them from any
/// thread. After shutdown the handle is dead and every call with it returns `TB_ERR_SHUTDOWN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct tb_runtime {
    /// The opaque id.
    pub id: u64,
}

/// `tb_runtime_config.flavor`: async workers on a pool of threads (the default).
pub const TB_MULTI_THREAD: u32 = 0;
/// `tb_runtime_config.flavor`: one async worker, a thread the library owns.
pub const TB_CURRENT_THREAD: u32 = 1;

/// How to build a runtime. Always start from `tb_runtime_config_init`, then change fields.
///
/// Zero in a numeric field means "the default" given for that field. The struct may grow in
/// later versions: `struct_size` tells the library which fields a caller built against an
/// older header has, and the missing ones take their defaults.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tb_runtime_config {
    /// `sizeof(tb_runtime_config)` as the caller knows it; set by `tb_runtime_config_init`.
    pub struct_size: u32,
    /// `TB_MULTI_THREAD` (default) or `TB_CURRENT_THREAD`.
    pub flavor: u32,
    /// Async worker threads. 0: one per CPU. Must be 0 or 1 for `TB_CURRENT_THREAD`. At most 1024.
    pub worker_threads: u32,
    /// Most blocking-pool threads alive at once. 0: 512, Tokio's default. At most 65536.
    ///
    /// Threads start on demand, one at a time, and only when no thread is idle: up to one per
    /// CPU for any jobs, more only while every thread is inside a job and the jobs are long
    /// (100 us or more on average, or none has ended for 1 ms since the last one did or the
    /// runtime started), that is blocked rather than busy, since more threads than CPUs cannot
    /// run quick jobs faster. So a burst of quick jobs runs on about one thread per CPU, and
    /// blocking jobs get up to this many threads. While jobs are quick (under 20 us on
    /// average), a new job is also left to the threads already running jobs when they will
    /// take it within 50 us or already keep every CPU but one busy, rather than waking an idle
    /// thread; if it lands behind a long job that way, an idle thread is woken for it once no
    /// job has ended for about 1 ms: within a few milliseconds.
    pub max_blocking_threads: u32,
    /// How long an idle blocking thread waits for work before it exits, in ms. 0: 10000.
    pub blocking_keep_alive_ms: u32,
    /// Most blocking jobs waiting to start. 0: unbounded. Past it `tb_spawn_blocking` returns
    /// `TB_ERR_BUSY`.
    pub max_queued_blocking: u32,
    /// Stack size of every thread the runtime starts, in bytes. 0: Tokio's default (2 MiB).
    /// Otherwise 65536 to 1073741824 (1 GiB).
    pub thread_stack_size: usize,
    /// Thread name prefix, copied. NULL: "tb". Workers are named "<name>-worker-N" and blocking
    /// threads "<name>-blocking-N"; the operating system keeps only the first 15 bytes of a
    /// thread name. At most 63 bytes of UTF-8.
    pub thread_name: *const c_char,
    /// A C callback running longer than this on an async worker is a stall, reported to the
    /// `tb_runtime_on_stall` hook, in ms. `tb_runtime_config_init` sets 10; 0 turns stall
    /// detection off (and with it the runtime's watchdog thread). At most 3600000.
    pub stall_threshold_ms: u32,
}

const DEFAULT_MAX_BLOCKING_THREADS: u32 = 512;
const DEFAULT_KEEP_ALIVE_MS: u32 = 10_000;
const MAX_WORKER_THREADS: u32 = 1024;
const MAX_BLOCKING_THREADS: u32 = 65_536;
const MIN_STACK_SIZE: usize = 65_536;
const MAX_STACK_SIZE: usize = 1 << 30;
const MAX_NAME_LEN: usize = 63;
const DEFAULT_STALL_THRESHOLD_MS: u32 = 10;
const MAX_STALL_THRESHOLD_MS: u32 = 3_600_000;

impl Default for tb_runtime_config {
    fn default() -> Self {
        tb_runtime_config {
            struct_size: size_of::<tb_runtime_config>() as u32,
            flavor: TB_MULTI_THREAD,
            worker_threads: 0,
            max_blocking_threads: 0,
            blocking_keep_alive_ms: 0,
            max_queued_blocking: 0,
            thread_stack_size: 0,
            thread_name: std::ptr::null(),
            stall_threshold_ms: DEFAULT_STALL_THRESHOLD_MS,
        }
    }
}

/// The sizes an older caller's `tb_runtime_config` may have: the end of each field.
const CONFIG_SIZES: [usize; 9] = [
    offset_of!(tb_runtime_config, flavor) + 4,
    offset_of!(tb_runtime_config, worker_threads) + 4,
    offset_of!(tb_runtime_config, max_blocking_threads) + 4,
    offset_of!(tb_runtime_config, blocking_keep_alive_ms) + 4,
    offset_of!(tb_runtime_config, max_queued_blocking) + 4,
    offset_of!(tb_runtime_config, thread_stack_size) + size_of::<usize>(),
    offset_of!(tb_runtime_config, thread_name) + size_of::<*const c_char>(),
    offset_of!(tb_runtime_config, stall_threshold_ms) + 4,
    size_of::<tb_runtime_config>(),
];

/// A runtime configuration after validation.
struct Config {
    current_thread: bool,
    workers: usize,
    max_blocking: usize,
    keep_alive: Duration,
    max_queued: usize,
    stack_size: usize,
    name: String,
    stall_threshold: Duration,
}

/// Reads a caller's config, possibly from an older, smaller struct, and checks every field.
///
/// # Safety
/// `cfg` must be NULL or point to at least `struct_size` readable bytes.
unsafe fn read_config(cfg: *const tb_runtime_config) -> Result<Config, Error> {
    let mut c = tb_runtime_config::default();
    if !cfg.is_null() {
        let size = (*cfg.cast::<u32>()) as usize;
        if !CONFIG_SIZES.contains(&size) {
            return Err(Error::invalid(format!(
                "cfg->struct_size is {size}; expected sizeof(tb_runtime_config) = {} (use \
                 tb_runtime_config_init), or the size of a struct from an older header",
                size_of::<tb_runtime_config>()
            )));
        }
        std::ptr::copy_nonoverlapping(
            cfg.cast::<u8>(),
            std::ptr::from_mut(&mut c).cast::<u8>(),
            size,
        );
    }
    let current_thread = match c.flavor {
        TB_MULTI_THREAD => false,
        TB_CURRENT_THREAD => true,
        other => {
            return Err(Error::invalid(format!(
                "cfg->flavor is {other}; expected TB_MULTI_THREAD (0) or TB_CURRENT_THREAD (1)"
            )))
        }
    };
    if current_thread && c.worker_threads > 1 {
        return Err(Error::invalid(format!(
            "cfg->worker_threads is {} but a TB_CURRENT_THREAD runtime has one worker (use 0 or 1)",
            c.worker_threads
        )));
    }
    if c.worker_threads > MAX_WORKER_THREADS {
        return Err(Error::invalid(format!(
            "cfg->worker_threads is {}; at most {MAX_WORKER_THREADS}",
            c.worker_threads
        )));
    }
    if c.max_blocking_threads > MAX_BLOCKING_THREADS {
        return Err(Error::invalid(format!(
            "cfg->max_blocking_threads is {}; at most {MAX_BLOCKING_THREADS}",
            c.max_blocking_threads
        )));
    }
    if c.stall_threshold_ms > MAX_STALL_THRESHOLD_MS {
        return Err(Error::invalid(format!(
            "cfg->stall_threshold_ms is {}; at most {MAX_STALL_THRESHOLD_MS} (0 turns detection off)",
            c.stall_threshold_ms
        )));
    }
    if c.thread_stack_size != 0 && !(MIN_STACK_SIZE..=MAX_STACK_SIZE).contains(&c.thread_stack_size)
    {
        return Err(Error::invalid(format!(
            "cfg->thread_stack_size is {}; use 0 (default) or {MIN_STACK_SIZE} to {MAX_STACK_SIZE}",
            c.thread_stack_size
        )));
    }
    let name = if c.thread_name.is_null() {
        "tb".to_string()
    } else {
        let bytes = CStr::from_ptr(c.thread_name).to_bytes();
        match std::str::from_utf8(bytes) {
            Ok(name) if !name.is_empty() && name.len() <= MAX_NAME_LEN => name.to_string(),
            _ => {
                return Err(Error::invalid(format!(
                    "cfg->thread_name must be 1 to {MAX_NAME_LEN} bytes of UTF-8"
                )))
            }
        }
    };
    let workers = match (current_thread, c.worker_threads) {
        (true, _) => 1,
        (false, 0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        (false, n) => n as usize,
    };
    let or_default = |value: u32, default: u32| if value == 0 { default } else { value };
    Ok(Config {
        current_thread,
        workers,
        max_blocking: or_default(c.max_blocking_threads, DEFAULT_MAX_BLOCKING_THREADS) as usize,
        keep_alive: Duration::from_millis(u64::from(or_default(
            c.blocking_keep_alive_ms,
            DEFAULT_KEEP_ALIVE_MS,
        ))),
        max_queued: c.max_queued_blocking as usize,
        stack_size: c.thread_stack_size,
        name,
        stall_threshold: Duration::from_millis(u64::from(c.stall_threshold_ms)),
    })
}

/// Who drives the Tokio runtime, and so how to stop it.
enum Driver {
    /// Tokio's own worker threads.
    MultiThread(tokio::runtime::Runtime),
    /// A thread of ours inside `block_on`, told when to stop and how long to wait.
    CurrentThread {
        stop: tokio::sync::oneshot::Sender<Option<Duration>>,
        stopped: mpsc::Receiver<()>,
        thread: std::thread::JoinHandle<()>,
    },
}

/// A runtime created by `tb_runtime_new` or `tb_runtime_default`.
pub(crate) struct Runtime {
    serial: u64,
    is_default: bool,
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) pool: PoolRef,
    pub(crate) timers: Arc<TimerQueue>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) workers: u32,
    pub(crate) watchdog: Option<Arc<Watchdog>>,
    pub(crate) probe: Mutex<Probe>,
    closed: AtomicBool,
    driver: Mutex<Option<Driver>>,
}

static RUNTIMES: HandleTable<Runtime> = HandleTable::new(TAG_RUNTIME);
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);
static DEFAULT: Mutex<Option<u64>> = Mutex::new(None);

/// The live runtime named by `rt`.
pub(crate) fn lookup(rt: tb_runtime) -> Result<Arc<Runtime>, Error> {
    with(rt, |runtime| Ok(Arc::clone(runtime)))
}

/// Runs `f` on the live runtime `rt`, without a reference count of its own: inside the lookup's
/// read section (see [`HandleTable::with`]), so `f` should be brief. A runtime shut down
/// meanwhile stays allocated until `f` returns; a removal of any object meanwhile is dropped
/// by a later removal.
pub(crate) fn with<R>(
    rt: tb_runtime,
    f: impl FnOnce(&Arc<Runtime>) -> Result<R, Error>,
) -> Result<R, Error> {
    let found = RUNTIMES.with(rt.id, |runtime| {
        if runtime.is_closed() {
            return Err(Error::new(TB_ERR_SHUTDOWN, "the runtime is shutting down"));
        }
        f(runtime)
    });
    found.map_err(|error| {
        if RUNTIMES.was_removed(rt.id) {
            Error::text(
                TB_ERR_SHUTDOWN,
                format!("runtime handle {:#018x} was shut down", rt.id),
            )
        } else {
            error
        }
    })?
}

/// Names threads "<name>-worker-N" for the first `workers` threads Tokio starts and
/// "<name>-blocking-N" for the rest.
///
/// Tokio starts its workers first, while building the runtime, but each thread takes whichever
/// task is first in line when it starts; so the names are right only if no blocking task is
/// queued before every worker runs. [`Started`] waits for that.
fn thread_names(name: String, workers: usize) -> impl Fn() -> String + Send + Sync + 'static {
    let started = AtomicUsize::new(0);
    move || match started.fetch_add(1, Ordering::Relaxed) {
        n if n < workers => format!("{name}-worker-{n}"),
        n => format!("{name}-blocking-{}", n - workers),
    }
}

/// Counts async workers that have started: each one parks (goes idle) once right after it
/// starts, and only workers park. `tb_runtime_new` returns once all of them have. That first
/// park is also when a worker gets its stall-detector slot.
#[derive(Default)]
struct Started {
    workers: Mutex<usize>,
    cv: Condvar,
    watchdog: Option<Arc<Watchdog>>,
}

impl Started {
    fn on_park(&self) {
        if context::mark_async_worker() {
            if let Some(watchdog) = &self.watchdog {
                watchdog.register_current_thread();
            }
            *lock!(self.workers) += 1;
            self.cv.notify_all();
        }
    }

    fn wait_for(&self, workers: usize) -> Result<(), Error> {
        let started = lock!(self.workers);
        let (started, waited) = self
            .cv
            .wait_timeout_while(started, WORKER_START_TIMEOUT, |n| *n < workers)
            .unwrap_or_else(|p| p.into_inner());
        if waited.timed_out() {
            return Err(Error::text(
                TB_ERR_OS,
                format!("only {} of {workers} worker threads started", *started),
            ));
        }
        Ok(())
    }
}

const WORKER_START_TIMEOUT: Duration = Duration::from_secs(10);

fn os_error(what: &str, error: std::io::Error) -> Error {
    Error::text(TB_ERR_OS, format!("{what}: {error}"))
}

impl Runtime {
    fn start(config: Config, is_default: bool) -> Result<Runtime, Error> {
        context::watch_for_fork();
        let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
        let mut builder = if config.current_thread {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(config.workers);
            builder
        };
        let tokio_workers = if config.current_thread {
            0
        } else {
            config.workers
        };
        let counters = Arc::new(Counters::default());
        let watchdog = if config.stall_threshold.is_zero() {
            None
        } else {
            Some(Arc::new(Watchdog::start(
                config.stall_threshold,
                Arc::clone(&counters),
                &config.name,
                serial,
            )?))
        };
        let stop_watchdog = || {
            if let Some(watchdog) = &watchdog {
                watchdog.stop(true);
            }
        };
        let started = Arc::new(Started {
            watchdog: watchdog.clone(),
            ..Started::default()
        });
        let on_park = Arc::clone(&started);
        builder
            .enable_time()
            .max_blocking_threads(config.max_blocking)
            .thread_keep_alive(config.keep_alive)
            .thread_name_fn(thread_names(config.name.clone(), tokio_workers))
            .on_thread_start(move || context::set_runtime_serial(serial))
            .on_thread_park(move || on_park.on_park());
        if config.stack_size > 0 {
            builder.thread_stack_size(config.stack_size);
        }
        // Tokio panics when the OS refuses its first worker thread: that is TB_ERR_OS too.
        let built = catch_unwind(AssertUnwindSafe(|| builder.build()));
        let runtime = match built {
            Ok(Ok(runtime)) => runtime,
            Ok(Err(e)) => {
                stop_watchdog();
                return Err(os_error("could not start the runtime", e));
            }
            Err(panic) => {
                stop_watchdog();
                return Err(Error::text(
                    TB_ERR_OS,
                    format!(
                        "could not start the runtime's threads: {}",
                        panic_message(panic.as_ref())
                    ),
                ));
            }
        };
        let handle = runtime.handle().clone();
        let driver = if config.current_thread {
            Self::drive_on_own_thread(runtime, &config, serial).inspect_err(|_| stop_watchdog())?
        } else {
            Driver::MultiThread(runtime)
        };
        if let Err(error) = started.wait_for(config.workers) {
            Self::stop_in_background(Some(driver));
            stop_watchdog();
            return Err(error);
        }
        Ok(Runtime {
            serial,
            is_default,
            pool: PoolRef::new(Arc::new(Pool::new(
                serial,
                handle.clone(),
                config.max_blocking,
                config.max_queued,
                config.keep_alive,
                Arc::clone(&counters),
            ))),
            timers: TimerQueue::start(&handle, Arc::clone(&counters)),
            handle,
            counters,
            workers: config.workers as u32,
            watchdog,
            probe: Mutex::default(),
            closed: AtomicBool::new(false),
            driver: Mutex::new(Some(driver)),
        })
    }

    /// Starts the thread that runs a current-thread runtime until it is told to stop.
    fn drive_on_own_thread(
        runtime: tokio::runtime::Runtime,
        config: &Config,
        serial: u64,
    ) -> Result<Driver, Error> {
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<Option<Duration>>();
        let (stopped_tx, stopped) = mpsc::channel();
        let mut thread = std::thread::Builder::new().name(format!("{}-worker-0", config.name));
        if config.stack_size > 0 {
            thread = thread.stack_size(config.stack_size);
        }
        let thread = thread
            .spawn(move || {
                context::set_runtime_serial(serial);
                let grace =
                    runtime.block_on(async { stop_rx.await.unwrap_or(Some(Duration::ZERO)) });
                match grace {
                    Some(grace) => runtime.shutdown_timeout(grace),
                    None => drop(runtime),
                }
                let _ = stopped_tx.send(());
            })
            .map_err(|e| os_error("could not start the runtime's worker thread", e))?;
        Ok(Driver::CurrentThread {
            stop,
            stopped,
            thread,
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Refuses new work and ends every queued job (`TB_ERR_SHUTDOWN`) on this thread.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for task in self.pool.close() {
            if task.claim() {
                job::abandon(&self.pool, &task, TB_ERR_SHUTDOWN);
            }
        }
    }

    /// Stops the async side (timers end with `TB_ERR_SHUTDOWN`) and waits for running jobs
    /// until `deadline`. True if everything ended.
    fn finish(&self, deadline: Option<Instant>) -> bool {
        let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let driver = lock!(self.driver).take();
        match driver {
            Some(Driver::MultiThread(runtime)) => match left() {
                Some(grace) => runtime.shutdown_timeout(grace),
                None => drop(runtime),
            },
            Some(Driver::CurrentThread {
                stop,
                stopped,
                thread,
            }) => {
                // A driver that cannot be told has already stopped: nothing to wait for. One
                // that says it stopped in time is joined, so that no thread outlives TB_OK.
                let told = stop.send(left()).is_ok();
                let ended = match (told, left()) {
                    (false, _) => true,
                    (true, Some(grace)) => stopped.recv_timeout(grace).is_ok(),
                    (true, None) => stopped.recv().is_ok(),
                };
                if ended {
                    let _ = thread.join();
                }
            }
            None => {}
        }
        if let Some(watchdog) = &self.watchdog {
            watchdog.stop(true);
        }
        self.pool.wait_idle(deadline) && self.counters.async_tasks.load(Ordering::Acquire) == 0
    }

    /// Stops without waiting for anything: for calls from threads that must not block.
    fn finish_in_background(&self) {
        Self::stop_in_background(lock!(self.driver).take());
        if let Some(watchdog) = &self.watchdog {
            watchdog.stop(false);
        }
    }

    fn stop_in_background(driver: Option<Driver>) {
        match driver {
            Some(Driver::MultiThread(runtime)) => runtime.shutdown_background(),
            Some(Driver::CurrentThread { stop, .. }) => drop(stop.send(Some(Duration::ZERO))),
            None => {}
        }
    }
}

/// Converts a timeout in milliseconds to a deadline; `None` means no limit.
pub(crate) fn deadline_after(timeout_ms: u64) -> Option<Instant> {
    Instant::now().checked_add(Duration::from_millis(timeout_ms))
}

/// Fills `cfg` with the defaults and sets `cfg->struct_size`.
///
/// Call it before changing fields, so that fields added by later versions get their defaults.
/// NULL is ignored (and recorded for `tb_last_error`). Any thread.
#[no_mangle]
pub extern "C" fn tb_runtime_config_init(cfg: *mut tb_runtime_config) {
    boundary("tb_runtime_config_init", || {
        if cfg.is_null() {
            return Err(Error::null("cfg"));
        }
        // SAFETY: checked non-NULL; the caller provides a whole tb_runtime_config.
        unsafe { cfg.write(tb_runtime_config::default()) };
        Ok(())
    })
}

/// Creates a runtime: async workers plus a blocking pool, with their threads.
///
/// `cfg` may be NULL for the defaults; it is only read during the call (`thread_name` is
/// copied). On success `*out` receives the handle; the caller owns the runtime and ends it with
/// `tb_runtime_shutdown`. Errors: `TB_ERR_NULL` (`out`), `TB_ERR_INVALID_ARG` (a field out of
/// range; `tb_last_error` names it), `TB_ERR_OS` (threads could not be started).
/// Any thread, including callbacks.
#[no_mangle]
pub extern "C" fn tb_runtime_new(cfg: *const tb_runtime_config, out: *mut tb_runtime) -> tb_status {
    boundary("tb_runtime_new", || {
        if out.is_null() {
            return Err(Error::null("out"));
        }
        // SAFETY: the caller passes NULL or a config of at least `struct_size` bytes.
        let config = unsafe { read_config(cfg) }?;
        let id = create(config, false)?;
        // SAFETY: checked non-NULL.
        unsafe { out.write(tb_runtime { id }) };
        Ok(TB_OK)
    })
}

fn create(config: Config, is_default: bool) -> Result<u64, Error> {
    clock::prepare();
    let runtime = Runtime::start(config, is_default)?;
    let id = match RUNTIMES.reserve() {
        Ok(id) => id,
        Err(error) => {
            runtime.close();
            runtime.finish_in_background();
            return Err(error);
        }
    };
    RUNTIMES.publish(id, Arc::new(runtime));
    Ok(id)
}

/// Gets the process-wide default runtime, creating it (with the default config) on first use.
///
/// It lives until the process exits: `tb_runtime_shutdown` refuses it. Errors: `TB_ERR_NULL`,
/// `TB_ERR_OS`. Any thread.
#[no_mangle]
pub extern "C" fn tb_runtime_default(out: *mut tb_runtime) -> tb_status {
    boundary("tb_runtime_default", || {
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let mut default = lock!(DEFAULT);
        let id = match *default {
            Some(id) => id,
            None => {
                // SAFETY: NULL selects the defaults.
                let id = create(unsafe { read_config(std::ptr::null()) }?, true)?;
                *default = Some(id);
                id
            }
        };
        // SAFETY: checked non-NULL.
        unsafe { out.write(tb_runtime { id }) };
        Ok(TB_OK)
    })
}

/// Shuts a runtime down and frees it.
///
/// From the first moment, new submissions return `TB_ERR_SHUTDOWN`, and so does every later
/// call with this handle. Queued blocking jobs never run: they end with `TB_ERR_SHUTDOWN`, their
/// `free_arg` and completion callbacks run on this thread. Sleeps and timers end with
/// `TB_ERR_SHUTDOWN` on the runtime's workers. Running blocking jobs cannot be stopped: their
/// `tb_job_cancelled` turns true, and this call waits up to `timeout_ms` (`TB_FOREVER`: no
/// limit; 0: no wait) for them. Returns `TB_OK` when everything ended (no callback of this
/// runtime runs after that), or `TB_TIMED_OUT` when some jobs still run: they finish later and
/// are recorded normally.
///
/// Called from inside a callback of this runtime (on one of its own threads, or on a thread
/// whose `tb_task_cancel` is ending one of its queued jobs), or from an async worker of any
/// runtime, it does not wait: it starts the shutdown, returns `TB_PENDING`, and the rest
/// happens in the background. Task handles stay readable until released.
/// Errors: `TB_ERR_BAD_HANDLE`, `TB_ERR_SHUTDOWN` (already shut down),
/// `TB_ERR_INVALID_ARG` (the default runtime, which lives for the process).
#[no_mangle]
pub extern "C" fn tb_runtime_shutdown(rt: tb_runtime, timeout_ms: u64) -> tb_status {
    boundary("tb_runtime_shutdown", || {
        let runtime = lookup(rt)?;
        if runtime.is_default {
            return Err(Error::new(
                TB_ERR_INVALID_ARG,
                "the default runtime lives for the whole process and cannot be shut down",
            ));
        }
        // Only one caller wins the removal (of the runtime just looked up: an id names one
        // object only); a concurrent second one sees a dead handle.
        RUNTIMES
            .remove(rt.id, |_| ())
            .map_err(|_| Error::new(TB_ERR_SHUTDOWN, "the runtime is already shutting down"))?;
        runtime.close();
        if context::runtime_serial() == runtime.serial || context::on_async_worker() {
            runtime.finish_in_background();
            return Ok(TB_PENDING);
        }
        Ok(if runtime.finish(deadline_after(timeout_ms)) {
            TB_OK
        } else {
            TB_TIMED_OUT
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TB_ERR_BAD_HANDLE;

    #[test]
    fn a_config_is_checked_field_by_field() {
        let mut cfg = tb_runtime_config {
            flavor: 7,
            ..Default::default()
        };
        let error = unsafe { read_config(&cfg) }.err().unwrap();
        assert_eq!(error.status, TB_ERR_INVALID_ARG);
        assert!(error.to_string().contains("flavor"));
        cfg.flavor = TB_CURRENT_THREAD;
        cfg.worker_threads = 2;
        assert!(unsafe { read_config(&cfg) }.is_err());
        cfg.worker_threads = 0;
        cfg.thread_stack_size = 100;
        assert!(unsafe { read_config(&cfg) }.is_err());
        cfg.thread_stack_size = 0;
        cfg.struct_size = 3;
        assert!(unsafe { read_config(&cfg) }.is_err());
    }

    #[test]
    fn an_older_smaller_config_takes_defaults_for_missing_fields() {
        let cfg = tb_runtime_config {
            flavor: TB_CURRENT_THREAD,
            max_blocking_threads: 3,
            max_queued_blocking: 9,
            struct_size: CONFIG_SIZES[2] as u32, // up to max_blocking_threads
            ..Default::default()
        };
        let config = unsafe { read_config(&cfg) }.unwrap();
        assert!(config.current_thread);
        assert_eq!(config.max_blocking, 3);
        assert_eq!(config.max_queued, 0, "a field past struct_size is not read");
    }

    #[test]
    fn thread_names_put_workers_first() {
        let names = thread_names("x".into(), 2);
        let got: Vec<String> = (0..4).map(|_| names()).collect();
        assert_eq!(
            got,
            ["x-worker-0", "x-worker-1", "x-blocking-0", "x-blocking-1"]
        );
    }

    #[test]
    fn the_bad_handle_status_is_kept_for_forged_runtimes() {
        let forged = tb_runtime {
            id: 0x1000_0000_0000_0000 | (1 << 40) | 5,
        };
        assert_eq!(lookup(forged).err().unwrap().status, TB_ERR_BAD_HANDLE);
    }
}
