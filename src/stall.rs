//! The stall detector: C callbacks that run too long on an async worker, reported while they run.
//!
//! Each async worker has a [`Slot`] that it fills with plain atomic stores when it enters a C
//! callback (which function, which `arg`, since when) and clears when the callback returns: no
//! lock on that path. A watchdog thread per runtime scans the slots every half threshold (and
//! sleeps, costing nothing, while no callback runs) and reports a callback that has run past
//! the threshold while it still runs; the worker itself
//! hands over, on a rare path that may lock, the report of a stalled callback that ended.
//! Reports go to the hook set with `tb_runtime_on_stall`, and to stderr with `TB_STALL_LOG=1`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::now_ns;
use crate::context;
use crate::error::{tb_status, Error, TB_ERR_INVALID_ARG, TB_ERR_OS, TB_OK};
use crate::metrics::Counters;
use crate::panic::boundary;
use crate::runtime::{self, tb_runtime};
use crate::sync::lock;

/// `tb_stall.kind`: a timer callback (`tb_timer_start`).
pub const TB_STALL_TIMER: u32 = 0;
/// `tb_stall.kind`: a completion callback run by an async worker (of a sleep or timer).
pub const TB_STALL_COMPLETION: u32 = 1;
/// `tb_stall.kind`: a `free_arg` destructor run by an async worker (of a timer).
pub const TB_STALL_FREE: u32 = 2;

/// Any C function pointer. Compare it with yours after a cast: `(tb_any_fn)my_timer`.
#[allow(non_camel_case_types)]
pub type tb_any_fn = Option<unsafe extern "C" fn()>;

/// A stall: a C callback that ran on an async worker for longer than the runtime's
/// `stall_threshold_ms`. Passed to the `tb_runtime_on_stall` hook, valid during the call only.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tb_stall {
    /// `sizeof(tb_stall)` as the library knows it; fields may be added at the end later.
    pub struct_size: u32,
    /// `TB_STALL_TIMER`, `TB_STALL_COMPLETION` or `TB_STALL_FREE`.
    pub kind: u32,
    /// The callback that stalled, as the function pointer given to the library.
    pub callback: tb_any_fn,
    /// The `arg` it was called with.
    pub arg: *mut c_void,
    /// The operating system's id of the worker thread (`gettid()` on Linux).
    pub thread_id: u64,
    /// The worker thread's name, NUL-terminated (at most 15 bytes, as the kernel keeps).
    pub thread_name: [c_char; 16],
    /// How long the callback has run so far (`still_running`), or ran in all, in microseconds.
    pub duration_us: u64,
    /// True for the report made while the callback runs; false for the one made after it ended.
    pub still_running: bool,
}

/// A stall hook: called once when a callback is found running past the threshold
/// (`still_running` true), and once after a stalled callback ends (`still_running` false, with
/// its whole duration). A stall that ends before the watchdog's next scan gets only the second
/// report. Runs on the runtime's watchdog thread, `<name>-watchdog`, never on a worker: it may
/// take its time without stalling anything, but delays the reports after it.
#[allow(non_camel_case_types)]
pub type tb_stall_fn = Option<unsafe extern "C" fn(arg: *mut c_void, stall: *const tb_stall)>;

/// What one worker is running now, written only by that worker.
struct Slot {
    started_ns: AtomicU64,
    /// Counts the callbacks this worker finished: identifies the one running.
    seq: AtomicU64,
    callback: AtomicUsize,
    arg: AtomicUsize,
    kind: AtomicU32,
    thread_id: u64,
    thread_name: [c_char; 16],
    shared: Arc<Shared>,
}

/// One callback seen on one worker: what the reports are made of.
struct Seen {
    /// Identifies the slot (its address) for the watchdog's bookkeeping.
    slot: usize,
    seq: u64,
    callback: usize,
    arg: usize,
    kind: u32,
    thread_id: u64,
    thread_name: [c_char; 16],
    duration_ns: u64,
}

impl Slot {
    /// What this slot holds now, as of `seq`, having run for `duration_ns`.
    fn seen(&self, seq: u64, duration_ns: u64) -> Seen {
        Seen {
            slot: std::ptr::from_ref(self) as usize,
            seq,
            callback: self.callback.load(Ordering::Relaxed),
            arg: self.arg.load(Ordering::Relaxed),
            kind: self.kind.load(Ordering::Relaxed),
            thread_id: self.thread_id,
            thread_name: self.thread_name,
            duration_ns,
        }
    }
}

pub(crate) struct Hook {
    func: unsafe extern "C" fn(*mut c_void, *const tb_stall),
    arg: *mut c_void,
}

// SAFETY: the C API documents that the hook runs on the watchdog thread with this `arg`.
unsafe impl Send for Hook {}

struct Shared {
    threshold_ns: u64,
    counters: Arc<Counters>,
    log: bool,
    slots: Mutex<Vec<Arc<Slot>>>,
    ended: Mutex<Vec<Seen>>,
    hook: Mutex<Option<Hook>>,
    stopped: Mutex<bool>,
    wake: Condvar,
    /// The watchdog sleeps until a callback starts.
    asleep: AtomicBool,
}

/// The stall detector of one runtime.
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

thread_local! {
    static SLOT: RefCell<Option<Arc<Slot>>> = const { RefCell::new(None) };
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// True when `TB_STALL_LOG` asks for stall reports on stderr.
fn log_from_env() -> bool {
    std::env::var_os("TB_STALL_LOG").is_some_and(|v| !v.is_empty() && v != "0")
}

impl Watchdog {
    /// Starts the watchdog thread of a runtime whose serial number is `serial`.
    pub(crate) fn start(
        threshold: Duration,
        counters: Arc<Counters>,
        name: &str,
        serial: u64,
    ) -> Result<Watchdog, Error> {
        let shared = Arc::new(Shared {
            threshold_ns: threshold.as_nanos() as u64,
            counters,
            log: log_from_env(),
            slots: Mutex::new(Vec::new()),
            ended: Mutex::new(Vec::new()),
            hook: Mutex::new(None),
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            asleep: AtomicBool::new(false),
        });
        let watched = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("{name}-watchdog"))
            .spawn(move || {
                // A hook that shuts the runtime down must not wait for this very thread.
                context::set_runtime_serial(serial);
                watched.watch();
            })
            .map_err(|e| {
                Error::text(
                    TB_ERR_OS,
                    format!("could not start the watchdog thread: {e}"),
                )
            })?;
        Ok(Watchdog {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Gives the calling worker thread a slot that this watchdog scans.
    pub(crate) fn register_current_thread(&self) {
        let current = std::thread::current();
        let mut thread_name = [0 as c_char; 16];
        for (to, from) in thread_name
            .iter_mut()
            .zip(current.name().unwrap_or("").bytes().take(15))
        {
            *to = from as c_char;
        }
        let slot = Arc::new(Slot {
            started_ns: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            callback: AtomicUsize::new(0),
            arg: AtomicUsize::new(0),
            kind: AtomicU32::new(0),
            // SAFETY: plain syscall without arguments.
            thread_id: unsafe { libc::syscall(libc::SYS_gettid) } as u64,
            thread_name,
            shared: Arc::clone(&self.shared),
        });
        lock!(self.shared.slots).push(Arc::clone(&slot));
        let _ = SLOT.try_with(|s| *s.borrow_mut() = Some(slot));
    }

    pub(crate) fn set_hook(&self, hook: Option<Hook>) {
        *lock!(self.shared.hook) = hook;
    }

    /// Stops the watchdog; with `join`, waits until its thread (and any hook call) has ended.
    pub(crate) fn stop(&self, join: bool) {
        *lock!(self.shared.stopped) = true;
        self.shared.wake.notify_all();
        lock!(self.shared.slots).clear();
        if let Some(thread) = lock!(self.thread).take() {
            if join {
                let _ = thread.join();
            }
        }
    }
}

impl Shared {
    /// Scans every half threshold while callbacks run; while none runs, sleeps until the next
    /// one starts (it wakes the watchdog), so that an idle runtime costs no CPU.
    fn watch(&self) {
        let interval = Duration::from_nanos((self.threshold_ns / 2).max(1_000_000));
        // For each slot, the seq of the callback already reported as running.
        let mut reported: HashMap<usize, u64> = HashMap::new();
        loop {
            self.scan_running(&mut reported);
            self.report_ended(&mut reported);
            let mut stopped = lock!(self.stopped);
            if *stopped {
                return;
            }
            if self.any_running() {
                stopped = self
                    .wake
                    .wait_timeout(stopped, interval)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            } else {
                // A callback starting, or a stalled one handing over its end, after this store
                // sees it and wakes us; one that did so before it is seen by the checks right
                // after.
                self.asleep.store(true, Ordering::SeqCst);
                if self.any_running() || !lock!(self.ended).is_empty() {
                    self.asleep.store(false, Ordering::SeqCst);
                    continue;
                }
                while self.asleep.load(Ordering::SeqCst) && !*stopped {
                    stopped = self.wake.wait(stopped).unwrap_or_else(|p| p.into_inner());
                }
            }
            drop(stopped);
        }
    }

    fn any_running(&self) -> bool {
        lock!(self.slots)
            .iter()
            .any(|slot| slot.started_ns.load(Ordering::SeqCst) != 0)
    }

    /// Called by a worker entering a callback: ends the watchdog's idle sleep, if it sleeps.
    fn wake_up(&self) {
        if self.asleep.load(Ordering::SeqCst) && self.asleep.swap(false, Ordering::SeqCst) {
            let _stopped = lock!(self.stopped);
            self.wake.notify_all();
        }
    }

    fn scan_running(&self, reported: &mut HashMap<usize, u64>) {
        let slots: Vec<Arc<Slot>> = lock!(self.slots).clone();
        let now = now_ns();
        for slot in slots {
            let started = slot.started_ns.load(Ordering::Acquire);
            if started == 0 || now.saturating_sub(started) < self.threshold_ns {
                continue;
            }
            let seq = slot.seq.load(Ordering::Acquire);
            let seen = slot.seen(seq, now - started);
            // The callback may have ended (and another begun) while we read: then skip it.
            if slot.started_ns.load(Ordering::Acquire) != started
                || slot.seq.load(Ordering::Acquire) != seq
            {
                continue;
            }
            self.counters
                .longest_stall_us
                .fetch_max(seen.duration_ns / 1000, Ordering::Relaxed);
            if reported.get(&seen.slot) != Some(&seq) {
                reported.insert(seen.slot, seq);
                self.counters.stalls.fetch_add(1, Ordering::Relaxed);
                self.report(&seen, true);
            }
        }
    }

    fn report_ended(&self, reported: &mut HashMap<usize, u64>) {
        let ended = std::mem::take(&mut *lock!(self.ended));
        for seen in ended {
            if reported.get(&seen.slot) == Some(&seen.seq) {
                reported.remove(&seen.slot);
            } else {
                self.counters.stalls.fetch_add(1, Ordering::Relaxed);
            }
            self.counters
                .longest_stall_us
                .fetch_max(seen.duration_ns / 1000, Ordering::Relaxed);
            self.report(&seen, false);
        }
    }

    fn report(&self, seen: &Seen, still_running: bool) {
        let stall = tb_stall {
            struct_size: std::mem::size_of::<tb_stall>() as u32,
            kind: seen.kind,
            // SAFETY: `callback` was stored from a non-NULL C function pointer.
            callback: unsafe { std::mem::transmute::<usize, tb_any_fn>(seen.callback) },
            arg: seen.arg as *mut c_void,
            thread_id: seen.thread_id,
            thread_name: seen.thread_name,
            duration_us: seen.duration_ns / 1000,
            still_running,
        };
        if self.log {
            eprintln!("{}", describe(&stall));
        }
        let hook = lock!(self.hook).as_ref().map(|h| (h.func, h.arg));
        if let Some((func, arg)) = hook {
            // SAFETY: the caller's hook and argument, as documented; `stall` outlives the call.
            unsafe { func(arg, &stall) };
        }
    }
}

/// One line for stderr: which callback (by symbol name when the dynamic linker knows it), where,
/// for how long.
fn describe(stall: &tb_stall) -> String {
    let callback = stall.callback.map_or(0, |f| f as usize);
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address and fills `info`.
    let symbol = if unsafe { libc::dladdr(callback as *const c_void, &mut info) } != 0
        && !info.dli_sname.is_null()
    {
        // SAFETY: dladdr returned a NUL-terminated symbol name.
        let name = unsafe { CStr::from_ptr(info.dli_sname) }.to_string_lossy();
        format!("{name} ({callback:#x})")
    } else {
        format!("{callback:#x} (no exported symbol: a non-static function linked with -rdynamic shows its name)")
    };
    let kind = match stall.kind {
        TB_STALL_TIMER => "timer callback",
        TB_STALL_COMPLETION => "completion callback",
        _ => "free_arg",
    };
    // SAFETY: the name is NUL-terminated within its 16 bytes.
    let thread = unsafe { CStr::from_ptr(stall.thread_name.as_ptr()) }.to_string_lossy();
    format!(
        "tokio-bridge: stall: {kind} {symbol}, arg {:p}, on async worker {thread} (tid {}): \
         {:.1} ms{}",
        stall.arg,
        stall.thread_id,
        stall.duration_us as f64 / 1000.0,
        if stall.still_running {
            " so far, still running"
        } else {
            ", ended"
        }
    )
}

/// Runs the C callback `f` (the function `callback`, called with `arg`), timing it when this
/// thread is a watched async worker. A callback nested in another counts as part of it.
pub(crate) fn timed<R>(kind: u32, callback: usize, arg: *mut c_void, f: impl FnOnce() -> R) -> R {
    /// Clears the slot when the callback returns, and hands over a stall that ended.
    struct Leave<'a>(&'a Slot);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            let slot = self.0;
            let started = slot.started_ns.swap(0, Ordering::AcqRel);
            let seq = slot.seq.load(Ordering::Relaxed);
            slot.seq.store(seq + 1, Ordering::Release);
            let _ = DEPTH.try_with(|d| d.set(0));
            let duration_ns = now_ns().saturating_sub(started);
            if duration_ns >= slot.shared.threshold_ns {
                let seen = slot.seen(seq, duration_ns);
                lock!(slot.shared.ended).push(seen);
                // The watchdog may have gone to sleep once this callback stopped running.
                slot.shared.wake_up();
            }
        }
    }
    if DEPTH.try_with(|d| d.get()).unwrap_or(1) > 0 {
        return f();
    }
    SLOT.with(|s| match &*s.borrow() {
        Some(slot) => {
            let _ = DEPTH.try_with(|d| d.set(1));
            slot.callback.store(callback, Ordering::Relaxed);
            slot.arg.store(arg as usize, Ordering::Relaxed);
            slot.kind.store(kind, Ordering::Relaxed);
            slot.started_ns.store(now_ns(), Ordering::SeqCst);
            slot.shared.wake_up();
            let _leave = Leave(slot);
            f()
        }
        None => f(),
    })
}

/// Sets the hook that receives the stall reports of runtime `rt`, replacing any previous one;
/// NULL `func` removes it.
///
/// See `tb_stall_fn` for when and where it is called. The library does not own `arg`. After
/// `tb_runtime_shutdown` returns `TB_OK`, the hook is never called again. With
/// `TB_STALL_LOG=1` in the environment, every report is also printed to stderr, hook or not.
/// Errors: `TB_ERR_BAD_HANDLE`, `TB_ERR_SHUTDOWN`, `TB_ERR_INVALID_ARG` (the runtime's
/// `stall_threshold_ms` is 0: detection is off). Any thread.
#[no_mangle]
pub extern "C" fn tb_runtime_on_stall(
    rt: tb_runtime,
    func: tb_stall_fn,
    arg: *mut c_void,
) -> tb_status {
    boundary("tb_runtime_on_stall", || {
        let runtime = runtime::lookup(rt)?;
        let watchdog = runtime.watchdog.as_ref().ok_or_else(|| {
            Error::new(
                TB_ERR_INVALID_ARG,
                "stall detection is off for this runtime (its stall_threshold_ms is 0)",
            )
        })?;
        watchdog.set_hook(func.map(|func| Hook { func, arg }));
        Ok(TB_OK)
    })
}
