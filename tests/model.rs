//! Model-based random testing: random sequences of API calls on several threads at once, every
//! result checked against a model of the documented semantics.
//!
//! A sequence (one seed) builds one or two runtimes of random shape (current-thread or not, 1 to
//! 4 blocking threads, bounded queue or not, short keep-alive or not, stall detection on or
//! off), uses the default runtime too, creates completion queues, then runs 2 to 4 threads that
//! each make random calls: blocking jobs (quick, sleeping, failing, cooperative ones that poll
//! `tb_job_cancelled`, ones that set a result, ones that call the API from inside, ones that shut
//! their runtime down from inside), sleeps, timers (one-shot and periodic, some calling the API
//! from their tick), waits with random timeouts, polls, outcomes, cancels, completion callbacks
//! (some releasing their own handle), releases and double releases, `tb_wait_all` and
//! `tb_wait_any`, queue notifications and drains, metrics, the probe, stall hooks, shutdowns at
//! random points and submissions after them; zeroed, forged, stale and wrong-type handles, NULL
//! pointers and bad struct sizes.
//!
//! Every status is checked twice: against the codes the header documents for the function
//! (`tests/common/contract.rs`), and against what the model allows at that moment. Threads race,
//! so the model never predicts one answer where a race allows two: a logical clock stamps each
//! call's start and end and each event the model knows of (a release returned, a shutdown
//! began, a cancel returned `TB_ERR_BUSY`, a task was seen finished), and a call's allowed
//! answers follow from which events certainly happened before it started and which may have
//! happened before it ended. Callbacks check what they can see when they run (exactly once,
//! on the documented thread, `free_arg` before the completion callback, no job after a
//! `TB_OK` shutdown, ticks never overlapping). When a sequence ends, every task must have
//! finished exactly once with an outcome that matches what happened to it, every `free_arg`
//! and completion callback must have run exactly once, every notified tag must have been
//! drained exactly once, the runtimes' metrics must equal the model's counts exactly, and no
//! task handle may be left.
//!
//! Commands:
//! - `cargo test --test model`: the fixed budget, sequences with seeds 1 to 40
//!   (`TB_MODEL_SEQUENCES` changes the count).
//! - `TB_MODEL_SEED=<seed> cargo test --test model`: replays one sequence. The seed fixes every
//!   thread's calls and arguments; how the threads interleave differs from run to run.
//! - `TB_SOAK_SECONDS=600 cargo test --release --test model -- --ignored --nocapture`: the soak,
//!   random seeds for the given time.
//!
//! A failure names its seed; a crash or a hang (a sequence running over 120 s) prints it to
//! stderr before the process dies.
//!
//! It found two races, each now guarded by a minimal test in `tests/regressions.rs`: a cancel of
//! a queued job racing its runtime's shutdown, and `tb_task_outcome` lagging a drained tag.

use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::ffi::{c_void, CString};
use std::io::Write as _;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tokio_bridge::completion::*;
use tokio_bridge::error::*;
use tokio_bridge::job::*;
use tokio_bridge::metrics::*;
use tokio_bridge::probe::*;
use tokio_bridge::queue::*;
use tokio_bridge::runtime::*;
use tokio_bridge::stall::*;
use tokio_bridge::timer::*;

mod common;
use common::contract::{self, Api, Codes};
use common::{fill_versioned, last_error, Rng};

const NEVER: u64 = u64::MAX;
/// What out-params hold before a call, to see that a failed call leaves them alone.
const SENTINEL: u64 = 0x5EE5_5EE5_5EE5_5EE5;
/// A sequence running longer than this has hung.
const HANG: Duration = Duration::from_secs(120);

const OK: Codes = Codes::of(&[TB_OK]);
const BAD: Codes = Codes::of(&[TB_ERR_BAD_HANDLE]);
const NULL: Codes = Codes::of(&[TB_ERR_NULL]);
const INVALID: Codes = Codes::of(&[TB_ERR_INVALID_ARG]);
const SHUT: Codes = Codes::of(&[TB_ERR_SHUTDOWN]);
const ALREADY: Codes = Codes::of(&[TB_ERR_ALREADY]);
const TIMED_OUT: Codes = Codes::of(&[TB_TIMED_OUT]);
const PENDING: Codes = Codes::of(&[TB_PENDING]);
const ON_WORKER: Codes = Codes::of(&[TB_ERR_ON_RUNTIME_THREAD]);
const BUSY: Codes = Codes::of(&[TB_ERR_BUSY]);

// ---------------------------------------------------------------------------------------------
// The logical clock, violations and where the current thread is.

static CLOCK: AtomicU64 = AtomicU64::new(1);

/// The next tick of the logical clock: every event gets a distinct, totally ordered stamp.
fn now() -> u64 {
    CLOCK.fetch_add(1, SeqCst)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What went wrong in the current sequence. Callbacks cannot panic (they are `extern "C"`), so
/// every check records here and the sequence fails at its end.
static VIOLATIONS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn violation(message: String) {
    let mut all = lock(&VIOLATIONS);
    if all.len() < 40 {
        all.push(message);
    }
}

macro_rules! expect {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            violation(format!($($fmt)*));
        }
    };
}

/// Which library call the current thread is inside, for the callbacks to check the thread
/// they run on against the documentation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inside {
    Nothing,
    Cancel(u64),
    OnComplete(u64),
    Shutdown(u64),
}

thread_local! {
    static INSIDE: Cell<Inside> = const { Cell::new(Inside::Nothing) };
}

fn inside<R>(what: Inside, f: impl FnOnce() -> R) -> R {
    let previous = INSIDE.replace(what);
    let result = f();
    INSIDE.set(previous);
    result
}

fn thread_name() -> String {
    thread::current().name().unwrap_or("?").to_string()
}

/// Runs one call and stamps its start and end.
fn timed(f: impl FnOnce() -> tb_status) -> (tb_status, u64, u64) {
    let start = now();
    let status = f();
    (status, start, now())
}

/// The codes a call may return: `certain` holds the faults that must be reported (one of them,
/// or a `maybe`), `maybe` what a race may cause, `success` the answers with valid arguments.
#[derive(Default)]
struct Expect {
    certain: Codes,
    maybe: Codes,
    success: Codes,
}

impl Expect {
    fn new(success: Codes) -> Expect {
        Expect {
            success,
            ..Expect::default()
        }
    }

    fn fault(&mut self, codes: Codes) {
        self.certain = self.certain | codes;
    }

    fn maybe(&mut self, codes: Codes) {
        self.maybe = self.maybe | codes;
    }

    fn allowed(&self) -> Codes {
        if self.certain.is_empty() {
            self.maybe | self.success
        } else {
            self.certain | self.maybe
        }
    }
}

/// Checks a status against the header and the model; true if both accept it.
fn verify(api: Api, status: tb_status, x: &Expect, what: impl FnOnce() -> String) -> bool {
    if let Err(e) = contract::documented(api, status) {
        violation(format!("{e}: {} ({})", what(), last_error()));
        return false;
    }
    let allowed = x.allowed();
    if !allowed.contains(status) {
        violation(format!(
            "{} returned {}, the model allows {}: {} (last error: {})",
            api.name(),
            contract::status_name(status),
            allowed.names().join(" or "),
            what(),
            last_error()
        ));
        return false;
    }
    true
}

// ---------------------------------------------------------------------------------------------
// The model's state.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JobKind {
    Quick,
    Sleepy(u64),
    /// Works in 1 ms steps for up to this many ms, stopping when `tb_job_cancelled` says so.
    Cooperative(u64),
    /// Calls the API from inside the job.
    Nested,
    /// Shuts its own runtime down from inside the job.
    ShutsDown,
}

#[derive(Clone, Copy, Debug)]
enum Work {
    Job {
        kind: JobKind,
        code: i32,
        set_result: bool,
    },
    Sleep {
        delay_ms: u64,
    },
    /// Stops with `code` after `stop_after` ticks; a one-shot timer (`period_ms` 0) returns
    /// `code` from its only tick.
    Timer {
        delay_ms: u64,
        period_ms: u64,
        stop_after: u64,
        code: i32,
        nested: bool,
    },
}

/// One runtime of a sequence (or the default runtime).
struct Rt {
    serial: u64,
    handle: tb_runtime,
    name: String,
    is_default: bool,
    bounded: bool,
    stall_detection: bool,
    shutdown_calls: AtomicU32,
    /// When the first shutdown call began.
    shutdown_attempt: AtomicU64,
    /// When a shutdown call that did shut it down returned (TB_OK, TB_TIMED_OUT, TB_PENDING).
    closed_at: AtomicU64,
    /// When a shutdown call returned TB_OK: no callback of the runtime may run after it.
    ok_at: AtomicU64,
}

static NEXT_RT_SERIAL: AtomicU64 = AtomicU64::new(1);

impl Rt {
    fn new(handle: tb_runtime, name: &str, is_default: bool, cfg: &tb_runtime_config) -> Rt {
        Rt {
            serial: NEXT_RT_SERIAL.fetch_add(1, SeqCst),
            handle,
            name: name.to_string(),
            is_default,
            bounded: cfg.max_queued_blocking > 0,
            stall_detection: cfg.stall_threshold_ms > 0,
            shutdown_calls: AtomicU32::new(0),
            shutdown_attempt: AtomicU64::new(NEVER),
            closed_at: AtomicU64::new(NEVER),
            ok_at: AtomicU64::new(NEVER),
        }
    }

    fn blocking_thread(&self, name: &str) -> bool {
        name.starts_with(&format!("{}-blocking-", self.name))
    }

    fn worker_thread(&self, name: &str) -> bool {
        name.starts_with(&format!("{}-worker-", self.name))
    }
}

/// One task the model knows of: a submission, accepted or refused.
struct Task {
    serial: u64,
    world: Arc<World>,
    rt: Option<Arc<Rt>>,
    work: Work,
    has_free: bool,
    release_in_callback: bool,
    seed: u64,
    id: AtomicU64,
    submitted_at: AtomicU64,
    accepted: AtomicBool,
    free_entries: AtomicU32,
    frees: AtomicU32,
    free_at: AtomicU64,
    runs: AtomicU32,
    exits: AtomicU32,
    job_result: AtomicI32,
    ticks: AtomicU64,
    in_tick: AtomicBool,
    ticks_after_cancel: AtomicU32,
    completion_entries: AtomicU32,
    completions: AtomicU32,
    /// When the library (not a late registration) ran the completion callback.
    finisher_completed_at: AtomicU64,
    callbacks_registered: AtomicU32,
    callback_at: AtomicU64,
    release_attempt: AtomicU64,
    released_at: AtomicU64,
    releases: AtomicU32,
    cancel_attempt: AtomicU64,
    cancels_ok: AtomicU32,
    cancel_ok_at: AtomicU64,
    cancel_busy_at: AtomicU64,
    finished_seen: AtomicU64,
    final_status: AtomicI32,
    notifies: AtomicU32,
    /// Queues a notification was asked for; the one accepted is `notify_queue`.
    notify_tried: Mutex<Vec<u64>>,
    notify_queue: AtomicU64,
}

const NO_STATUS: i32 = i32::MIN;

impl Task {
    fn arg(self: &Arc<Self>) -> *mut c_void {
        Arc::as_ptr(self).cast_mut().cast()
    }

    fn handle(&self) -> tb_task {
        tb_task {
            id: self.id.load(SeqCst),
        }
    }

    fn rt(&self) -> &Rt {
        self.rt.as_ref().expect("an accepted task has a runtime")
    }

    /// The pointer a job sets with `tb_job_set_result`.
    fn result_value(&self) -> *mut c_void {
        std::ptr::null_mut::<u8>()
            .wrapping_add((self.serial as usize + 1) * 16)
            .cast()
    }

    fn is_job(&self) -> bool {
        matches!(self.work, Work::Job { .. })
    }

    fn known_finished_before(&self, start: u64) -> bool {
        self.finished_seen.load(SeqCst) < start
    }

    fn describe(&self) -> String {
        format!(
            "task #{} {:?} on {} (id {:#x})",
            self.serial,
            self.work,
            self.rt
                .as_ref()
                .map_or("a bad runtime", |r| r.name.as_str()),
            self.id.load(SeqCst)
        )
    }

    /// Adds what this task's handle may answer, for a call between `start` and `end`.
    fn expect_handle(&self, x: &mut Expect, start: u64, end: u64) {
        if self.released_at.load(SeqCst) < start {
            x.fault(BAD);
        } else if self.release_attempt.load(SeqCst) < end {
            x.maybe(BAD);
        }
    }

    /// Records that the task was seen finished by a call that began at `start` and ended at
    /// `end`, and checks what "finished" promises: `free_arg` and the completion callback have
    /// returned, the job's callback too.
    fn seen_finished(&self, start: u64, end: u64, how: &str) {
        self.finished_seen.fetch_min(end, SeqCst);
        if self.has_free {
            expect!(
                self.frees.load(SeqCst) == 1,
                "{}: {how} says finished but free_arg has not returned",
                self.describe()
            );
        }
        if self.callback_at.load(SeqCst) < start {
            expect!(
                self.completions.load(SeqCst) == 1,
                "{}: {how} says finished but the completion callback has not returned",
                self.describe()
            );
        }
        expect!(
            self.runs.load(SeqCst) == self.exits.load(SeqCst),
            "{}: {how} says finished while the job still runs",
            self.describe()
        );
    }

    /// Checks an outcome against what the model knows happened to the task.
    fn check_outcome(&self, o: &tb_outcome, at: u64, how: &str) {
        let previous = self.final_status.swap(o.status, SeqCst);
        expect!(
            previous == NO_STATUS || previous == o.status,
            "{}: {how} gives status {} after {}",
            self.describe(),
            o.status,
            previous
        );
        let rt = self.rt();
        let cancelled = self.cancel_attempt.load(SeqCst) < at;
        let shut = rt.shutdown_attempt.load(SeqCst) < at;
        let why = |what: &str| format!("{}: {how}: {what}, outcome {o:?}", self.describe());
        match self.work {
            Work::Job { set_result, .. } => {
                let runs = self.runs.load(SeqCst);
                let ok = match o.status {
                    TB_OK | TB_ERR_CALLBACK => {
                        let result = self.job_result.load(SeqCst);
                        let value = if set_result {
                            self.result_value()
                        } else {
                            std::ptr::null_mut()
                        };
                        runs == 1
                            && self.exits.load(SeqCst) == 1
                            && o.code == result
                            && (o.status == TB_OK) == (result == 0)
                            && o.value == value
                    }
                    TB_ERR_CANCELLED => runs == 0 && cancelled && o.run_us == 0,
                    TB_ERR_SHUTDOWN => runs == 0 && shut && o.run_us == 0,
                    _ => false,
                };
                expect!(ok && o.ticks == 0, "{}", why("inconsistent job outcome"));
            }
            Work::Sleep { delay_ms } => {
                let ok = match o.status {
                    TB_OK => o.code == 0 && o.queued_us + o.run_us + 1000 >= delay_ms * 1000,
                    TB_ERR_CANCELLED => cancelled,
                    TB_ERR_SHUTDOWN => shut,
                    _ => false,
                };
                expect!(
                    ok && o.ticks == 0 && o.value.is_null(),
                    "{}",
                    why("inconsistent sleep outcome")
                );
            }
            Work::Timer {
                period_ms,
                stop_after,
                code,
                ..
            } => {
                let ticks = self.ticks.load(SeqCst);
                let ok = match o.status {
                    TB_OK => {
                        let expected = if period_ms == 0 { 1 } else { stop_after };
                        o.code == code && o.ticks == expected
                    }
                    TB_ERR_CANCELLED => cancelled && o.code == 0,
                    TB_ERR_SHUTDOWN => shut && o.code == 0,
                    _ => false,
                };
                expect!(
                    ok && o.ticks == ticks && o.value.is_null(),
                    "{}",
                    why(&format!("inconsistent timer outcome ({ticks} ticks seen)"))
                );
            }
        }
    }
}

/// A completion queue of a sequence.
struct Queue {
    handle: tb_queue,
    free_attempt: AtomicU64,
    freed_at: AtomicU64,
    seen: Mutex<HashSet<u64>>,
}

/// Everything one sequence created.
struct World {
    seed: u64,
    rts: Vec<Arc<Rt>>,
    queues: Mutex<Vec<Arc<Queue>>>,
    /// Every task, by serial.
    tasks: Mutex<Vec<Arc<Task>>>,
    /// Handles from earlier sequences: stale now.
    stale: Stale,
}

#[derive(Clone, Default)]
struct Stale {
    tasks: Vec<u64>,
    runtimes: Vec<u64>,
    queues: Vec<u64>,
}

/// Handles of finished sequences, for later ones to try.
static STALE: Mutex<Option<Stale>> = Mutex::new(None);

impl World {
    fn new_task(
        self: &Arc<Self>,
        rt: Option<Arc<Rt>>,
        work: Work,
        has_free: bool,
        rng: &mut Rng,
    ) -> Arc<Task> {
        let mut tasks = lock(&self.tasks);
        let task = Arc::new(Task {
            serial: tasks.len() as u64,
            world: Arc::clone(self),
            rt,
            work,
            has_free,
            release_in_callback: rng.chance(15),
            seed: rng.next(),
            id: AtomicU64::new(0),
            submitted_at: AtomicU64::new(NEVER),
            accepted: AtomicBool::new(false),
            free_entries: AtomicU32::new(0),
            frees: AtomicU32::new(0),
            free_at: AtomicU64::new(NEVER),
            runs: AtomicU32::new(0),
            exits: AtomicU32::new(0),
            job_result: AtomicI32::new(0),
            ticks: AtomicU64::new(0),
            in_tick: AtomicBool::new(false),
            ticks_after_cancel: AtomicU32::new(0),
            completion_entries: AtomicU32::new(0),
            completions: AtomicU32::new(0),
            finisher_completed_at: AtomicU64::new(NEVER),
            callbacks_registered: AtomicU32::new(0),
            callback_at: AtomicU64::new(NEVER),
            release_attempt: AtomicU64::new(NEVER),
            released_at: AtomicU64::new(NEVER),
            releases: AtomicU32::new(0),
            cancel_attempt: AtomicU64::new(NEVER),
            cancels_ok: AtomicU32::new(0),
            cancel_ok_at: AtomicU64::new(NEVER),
            cancel_busy_at: AtomicU64::new(NEVER),
            finished_seen: AtomicU64::new(NEVER),
            final_status: AtomicI32::new(NO_STATUS),
            notifies: AtomicU32::new(0),
            notify_tried: Mutex::new(Vec::new()),
            notify_queue: AtomicU64::new(NEVER),
        });
        tasks.push(Arc::clone(&task));
        task
    }

    fn task(&self, serial: u64) -> Option<Arc<Task>> {
        lock(&self.tasks).get(serial as usize).cloned()
    }

    fn tasks(&self) -> Vec<Arc<Task>> {
        lock(&self.tasks).clone()
    }
}

/// A task handle argument: a task of the model, or a handle that must be refused.
enum TaskRef {
    Task(Arc<Task>),
    Bad(u64, &'static str),
}

impl TaskRef {
    fn handle(&self) -> tb_task {
        match self {
            TaskRef::Task(t) => t.handle(),
            TaskRef::Bad(id, _) => tb_task { id: *id },
        }
    }

    fn expect(&self, x: &mut Expect, start: u64, end: u64) {
        match self {
            TaskRef::Task(t) => t.expect_handle(x, start, end),
            TaskRef::Bad(..) => x.fault(BAD),
        }
    }

    fn task(&self) -> Option<&Arc<Task>> {
        match self {
            TaskRef::Task(t) => Some(t),
            TaskRef::Bad(..) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            TaskRef::Task(t) => t.describe(),
            TaskRef::Bad(id, what) => format!("{what} task handle {id:#x}"),
        }
    }
}

/// A runtime handle argument: a runtime of the model, or a handle that must be refused with
/// one of `codes`.
enum RtRef {
    Rt(Arc<Rt>),
    Bad(u64, Codes, &'static str),
}

impl RtRef {
    fn handle(&self) -> tb_runtime {
        match self {
            RtRef::Rt(rt) => rt.handle,
            RtRef::Bad(id, ..) => tb_runtime { id: *id },
        }
    }

    fn expect(&self, x: &mut Expect, start: u64, end: u64) {
        match self {
            RtRef::Rt(rt) => {
                if rt.closed_at.load(SeqCst) < start {
                    x.fault(SHUT);
                } else if rt.shutdown_attempt.load(SeqCst) < end {
                    x.maybe(SHUT);
                }
            }
            RtRef::Bad(_, codes, _) => x.fault(*codes),
        }
    }

    fn rt(&self) -> Option<&Arc<Rt>> {
        match self {
            RtRef::Rt(rt) => Some(rt),
            RtRef::Bad(..) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            RtRef::Rt(rt) => format!("runtime {}", rt.name),
            RtRef::Bad(id, _, what) => format!("{what} runtime handle {id:#x}"),
        }
    }
}

enum QueueRef {
    Queue(Arc<Queue>),
    Bad(u64, &'static str),
}

impl QueueRef {
    fn handle(&self) -> tb_queue {
        match self {
            QueueRef::Queue(q) => q.handle,
            QueueRef::Bad(id, _) => tb_queue { id: *id },
        }
    }

    fn expect(&self, x: &mut Expect, start: u64, end: u64) {
        match self {
            QueueRef::Queue(q) => {
                if q.freed_at.load(SeqCst) < start {
                    x.fault(BAD);
                } else if q.free_attempt.load(SeqCst) < end {
                    x.maybe(BAD);
                }
            }
            QueueRef::Bad(..) => x.fault(BAD),
        }
    }

    fn describe(&self) -> String {
        match self {
            QueueRef::Queue(q) => format!("queue {:#x}", q.handle.id),
            QueueRef::Bad(id, what) => format!("{what} queue handle {id:#x}"),
        }
    }
}

/// A forged id with the given type tag: random generation and index, never issued.
fn forged(rng: &mut Rng, tag: u64) -> u64 {
    (tag << 60) | (rng.next() & ((1 << 60) - 1))
}

// ---------------------------------------------------------------------------------------------
// Callbacks: each checks what it can see, and records it.

unsafe fn task_of<'a>(arg: *mut c_void) -> &'a Task {
    &*arg.cast::<Task>()
}

unsafe extern "C" fn job_fn(arg: *mut c_void, job: *mut tb_job) -> i32 {
    let t = task_of(arg);
    let entered = now();
    let runs = t.runs.fetch_add(1, SeqCst) + 1;
    expect!(runs == 1, "{}: the job ran {runs} times", t.describe());
    let rt = t.rt();
    expect!(
        rt.ok_at.load(SeqCst) > entered,
        "{}: the job started after tb_runtime_shutdown returned TB_OK",
        t.describe()
    );
    let name = thread_name();
    expect!(
        rt.blocking_thread(&name),
        "{}: the job runs on thread {name}, not a blocking thread of its runtime",
        t.describe()
    );
    let Work::Job {
        kind,
        code,
        set_result,
    } = t.work
    else {
        unreachable!("job_fn runs jobs only")
    };
    let mut result = code;
    let mut actor = Actor::new(&t.world, t.seed, Place::Job(t.serial));
    match kind {
        JobKind::Quick => {}
        JobKind::Sleepy(ms) => thread::sleep(Duration::from_millis(ms)),
        JobKind::Cooperative(ms) => {
            let end = Instant::now() + Duration::from_millis(ms);
            while Instant::now() < end {
                if cancelled(t, job) {
                    result = 42;
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
        }
        JobKind::Nested => actor.nested_in_job(t, job),
        JobKind::ShutsDown => {
            let timeout = actor.rng.pick(&[0, 10, TB_FOREVER]);
            actor.shutdown(&RtRef::Rt(Arc::clone(t.rt.as_ref().unwrap())), timeout);
        }
    }
    if set_result {
        tb_job_set_result(job, t.result_value());
    }
    t.job_result.store(result, SeqCst);
    t.exits.fetch_add(1, SeqCst);
    result
}

/// Asks `tb_job_cancelled` and checks the answer against the cancels and shutdowns seen.
fn cancelled(t: &Task, job: *mut tb_job) -> bool {
    let rt = t.rt();
    let before = now();
    let flag = tb_job_cancelled(job);
    let after = now();
    if flag {
        let asked = t
            .cancel_attempt
            .load(SeqCst)
            .min(rt.shutdown_attempt.load(SeqCst));
        expect!(
            asked < after,
            "{}: tb_job_cancelled is true but nobody cancelled it nor shut its runtime down",
            t.describe()
        );
    } else {
        expect!(
            t.cancel_busy_at.load(SeqCst) > before,
            "{}: tb_job_cancelled is false after tb_task_cancel returned TB_ERR_BUSY",
            t.describe()
        );
        expect!(
            rt.closed_at.load(SeqCst) > before,
            "{}: tb_job_cancelled is false after its runtime was shut down",
            t.describe()
        );
    }
    flag
}

unsafe extern "C" fn tick_fn(arg: *mut c_void, tick: u64) -> i32 {
    let t = task_of(arg);
    let at = now();
    expect!(
        !t.in_tick.swap(true, SeqCst),
        "{}: two ticks of one timer overlap",
        t.describe()
    );
    let seen = t.ticks.load(SeqCst);
    expect!(
        tick == seen,
        "{}: tick {tick} after {seen} ticks",
        t.describe()
    );
    let rt = t.rt();
    let name = thread_name();
    expect!(
        rt.worker_thread(&name),
        "{}: the tick runs on {name}, not a worker of its runtime",
        t.describe()
    );
    expect!(
        rt.ok_at.load(SeqCst) > at,
        "{}: a tick ran after tb_runtime_shutdown returned TB_OK",
        t.describe()
    );
    if t.cancel_ok_at.load(SeqCst) < at {
        t.ticks_after_cancel.fetch_add(1, SeqCst);
    }
    let Work::Timer {
        period_ms,
        stop_after,
        code,
        nested,
        ..
    } = t.work
    else {
        unreachable!("tick_fn runs timers only")
    };
    if nested {
        Actor::new(&t.world, t.seed ^ tick, Place::Worker).nested_in_tick(t);
    }
    let n = t.ticks.fetch_add(1, SeqCst) + 1;
    let result = if period_ms == 0 || n >= stop_after {
        code
    } else {
        0
    };
    t.in_tick.store(false, SeqCst);
    result
}

unsafe extern "C" fn free_fn(arg: *mut c_void) {
    let t = task_of(arg);
    let at = now();
    let n = t.free_entries.fetch_add(1, SeqCst) + 1;
    expect!(n == 1, "{}: free_arg called {n} times", t.describe());
    expect!(
        t.completion_entries.load(SeqCst) == 0,
        "{}: free_arg after the completion callback",
        t.describe()
    );
    expect!(
        t.runs.load(SeqCst) == t.exits.load(SeqCst),
        "{}: free_arg while the job runs",
        t.describe()
    );
    expect!(
        !t.in_tick.load(SeqCst),
        "{}: free_arg during a tick",
        t.describe()
    );
    t.free_at.store(at, SeqCst);
    t.frees.fetch_add(1, SeqCst);
}

unsafe extern "C" fn complete_fn(arg: *mut c_void, task: tb_task, outcome: *const tb_outcome) {
    let t = task_of(arg);
    let at = now();
    let n = t.completion_entries.fetch_add(1, SeqCst) + 1;
    expect!(
        n == 1,
        "{}: completion callback called {n} times",
        t.describe()
    );
    expect!(
        task.id == t.id.load(SeqCst),
        "{}: completion callback given handle {:#x}",
        t.describe(),
        task.id
    );
    if t.has_free {
        expect!(
            t.frees.load(SeqCst) == 1,
            "{}: completion callback before free_arg returned",
            t.describe()
        );
    }
    let o = *outcome;
    let rt = t.rt();
    let by_registration = INSIDE.get() == Inside::OnComplete(t.serial);
    if !by_registration {
        t.finisher_completed_at.store(at, SeqCst);
        let name = thread_name();
        let right_thread = match (t.is_job(), o.status) {
            (true, TB_ERR_CANCELLED) => INSIDE.get() == Inside::Cancel(t.serial),
            (true, TB_ERR_SHUTDOWN) => INSIDE.get() == Inside::Shutdown(rt.serial),
            (true, _) => rt.blocking_thread(&name),
            (false, TB_ERR_SHUTDOWN) => true,
            (false, _) => rt.worker_thread(&name),
        };
        expect!(
            right_thread,
            "{}: completion callback with status {} on thread {name}",
            t.describe(),
            o.status
        );
    }
    t.check_outcome(&o, at, "the completion callback");
    let mut actor = Actor::new(&t.world, t.seed ^ 0xC0, Place::Callback);
    actor.poll_in_callback(t, by_registration);
    if t.release_in_callback {
        let me = TaskRef::Task(actor.world.task(t.serial).unwrap());
        actor.release(&me);
    }
    t.completions.fetch_add(1, SeqCst);
}

unsafe extern "C" fn stall_hook(arg: *mut c_void, _stall: *const tb_stall) {
    let rt = &*arg.cast::<Rt>();
    expect!(
        rt.ok_at.load(SeqCst) > now(),
        "runtime {}: a stall report after tb_runtime_shutdown returned TB_OK",
        rt.name
    );
}

// ---------------------------------------------------------------------------------------------
// The calls.

/// Where an actor's calls come from, which decides what waiting may answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// A thread of the test.
    Plain,
    /// Inside the job of this task, on a blocking thread.
    Job(u64),
    /// Inside a timer callback, on an async worker.
    Worker,
    /// Inside a completion callback, wherever it runs.
    Callback,
}

/// Makes random calls against a world and checks each result.
struct Actor<'w> {
    world: &'w Arc<World>,
    rng: Rng,
    place: Place,
}

impl<'w> Actor<'w> {
    fn new(world: &'w Arc<World>, seed: u64, place: Place) -> Actor<'w> {
        Actor {
            world,
            rng: Rng::new(seed),
            place,
        }
    }

    fn pick_task(&mut self) -> TaskRef {
        if self.rng.chance(88) {
            let tasks = lock(&self.world.tasks);
            for _ in 0..4 {
                if tasks.is_empty() {
                    break;
                }
                let t = &tasks[self.rng.below(tasks.len() as u64) as usize];
                if t.accepted.load(SeqCst) {
                    return TaskRef::Task(Arc::clone(t));
                }
            }
        }
        let stale = &self.world.stale;
        match self.rng.below(6) {
            0 => TaskRef::Bad(0, "zeroed"),
            1 => TaskRef::Bad(forged(&mut self.rng, 2), "forged"),
            2 => {
                let tag = 4 + self.rng.below(12);
                TaskRef::Bad(forged(&mut self.rng, tag), "unknown-tag")
            }
            3 => TaskRef::Bad(self.world.rts[0].handle.id, "runtime-as-task"),
            4 if !stale.tasks.is_empty() => TaskRef::Bad(self.rng.pick(&stale.tasks), "stale"),
            _ => match lock(&self.world.queues).first() {
                Some(q) => TaskRef::Bad(q.handle.id, "queue-as-task"),
                None => TaskRef::Bad(0, "zeroed"),
            },
        }
    }

    fn pick_rt(&mut self) -> RtRef {
        if self.rng.chance(90) {
            let rts = &self.world.rts;
            return RtRef::Rt(Arc::clone(&rts[self.rng.below(rts.len() as u64) as usize]));
        }
        let stale = &self.world.stale;
        match self.rng.below(5) {
            0 => RtRef::Bad(0, BAD, "zeroed"),
            1 => RtRef::Bad(forged(&mut self.rng, 1), BAD | SHUT, "forged"),
            2 if !stale.runtimes.is_empty() => {
                RtRef::Bad(self.rng.pick(&stale.runtimes), SHUT, "stale")
            }
            _ => match self.pick_task() {
                TaskRef::Task(t) => RtRef::Bad(t.id.load(SeqCst), BAD, "task-as-runtime"),
                TaskRef::Bad(..) => RtRef::Bad(forged(&mut self.rng, 3), BAD, "queue-tagged"),
            },
        }
    }

    fn pick_queue(&mut self) -> QueueRef {
        if self.rng.chance(90) {
            let queues = lock(&self.world.queues);
            if !queues.is_empty() {
                let q = &queues[self.rng.below(queues.len() as u64) as usize];
                return QueueRef::Queue(Arc::clone(q));
            }
        }
        let stale = &self.world.stale;
        match self.rng.below(4) {
            0 => QueueRef::Bad(0, "zeroed"),
            1 => QueueRef::Bad(forged(&mut self.rng, 3), "forged"),
            2 if !stale.queues.is_empty() => QueueRef::Bad(self.rng.pick(&stale.queues), "stale"),
            _ => QueueRef::Bad(self.world.rts[0].handle.id, "runtime-as-queue"),
        }
    }

    fn timeout(&mut self) -> u64 {
        self.rng.pick(&[0, 0, 1, 3, 10, 30, TB_FOREVER])
    }

    /// One random call from a test thread.
    fn random_call(&mut self) {
        match self.rng.below(100) {
            0..=17 => {
                let rt = self.pick_rt();
                self.spawn_job(&rt, true);
            }
            18..=22 => {
                let rt = self.pick_rt();
                self.sleep(&rt);
            }
            23..=29 => {
                let rt = self.pick_rt();
                self.timer(&rt);
            }
            30..=37 => {
                let (t, timeout) = (self.pick_task(), self.timeout());
                self.wait(&t, timeout);
            }
            38..=44 => {
                let t = self.pick_task();
                self.poll(&t);
            }
            45..=50 => {
                let t = self.pick_task();
                self.outcome(&t);
            }
            51..=59 => {
                let t = self.pick_task();
                self.cancel(&t);
            }
            60..=64 => {
                let t = self.pick_task();
                self.on_complete(&t);
            }
            65..=71 => {
                let t = self.pick_task();
                self.release(&t);
                if self.rng.chance(30) {
                    self.release(&t);
                }
            }
            72..=74 => self.wait_all(),
            75..=77 => self.wait_any(),
            78..=81 => {
                let (t, q) = (self.pick_task(), self.pick_queue());
                self.notify(&t, &q);
            }
            82..=85 => self.drain(),
            86..=87 => self.queue_misc(),
            88..=90 => self.metrics(),
            91..=92 => self.probe(),
            93 => self.on_stall(),
            94 => {
                let (rt, timeout) = (self.pick_rt(), self.rng.pick(&[0, 1, 10, TB_FOREVER]));
                self.shutdown(&rt, timeout);
            }
            95..=97 => self.misc(),
            _ => self.runtime_calls(),
        }
    }

    fn spawn_job(&mut self, rt: &RtRef, nested: bool) -> Option<Arc<Task>> {
        let kind = match self.rng.below(100) {
            0..=39 => JobKind::Quick,
            40..=64 => JobKind::Sleepy(1 + self.rng.below(5)),
            65..=74 => JobKind::Cooperative(20 + self.rng.below(80)),
            75..=97 if nested => JobKind::Nested,
            98..=99 if nested => JobKind::ShutsDown,
            _ => JobKind::Quick,
        };
        let code = match self.rng.below(10) {
            0 => self.rng.next() as i32,
            1..=2 => 1 + self.rng.below(1000) as i32,
            _ => 0,
        };
        let work = Work::Job {
            kind,
            code,
            set_result: self.rng.chance(15),
        };
        let has_free = self.rng.chance(80);
        let (null_func, null_out) = (self.rng.chance(3), self.rng.chance(3));
        let t = self
            .world
            .new_task(rt.rt().cloned(), work, has_free, &mut self.rng);
        let mut out = tb_task { id: SENTINEL };
        let (status, start, end) = timed(|| {
            tb_spawn_blocking(
                rt.handle(),
                if null_func { None } else { Some(job_fn) },
                t.arg(),
                if has_free { Some(free_fn) } else { None },
                if null_out {
                    std::ptr::null_mut()
                } else {
                    &mut out
                },
            )
        });
        let mut x = Expect::new(OK);
        if rt.rt().is_some_and(|rt| rt.bounded) {
            x.success = OK | BUSY;
        }
        if null_func || null_out {
            x.fault(NULL);
        }
        rt.expect(&mut x, start, end);
        self.submitted(Api::SpawnBlocking, status, &x, &t, out, end, rt)
    }

    fn sleep(&mut self, rt: &RtRef) {
        let work = Work::Sleep {
            delay_ms: self.rng.pick(&[0, 1, 5, 20, 60]),
        };
        let null_out = self.rng.chance(3);
        let t = self
            .world
            .new_task(rt.rt().cloned(), work, false, &mut self.rng);
        let Work::Sleep { delay_ms } = work else {
            unreachable!()
        };
        let mut out = tb_task { id: SENTINEL };
        let (status, start, end) = timed(|| {
            tb_sleep(
                rt.handle(),
                delay_ms,
                if null_out {
                    std::ptr::null_mut()
                } else {
                    &mut out
                },
            )
        });
        let mut x = Expect::new(OK);
        if null_out {
            x.fault(NULL);
        }
        rt.expect(&mut x, start, end);
        self.submitted(Api::Sleep, status, &x, &t, out, end, rt);
    }

    fn timer(&mut self, rt: &RtRef) {
        let period_ms = self.rng.pick(&[0, 0, 1, 2, 5]);
        let work = Work::Timer {
            delay_ms: self.rng.pick(&[0, 1, 3, 10, 40]),
            period_ms,
            stop_after: 1 + self.rng.below(6),
            code: if period_ms == 0 && self.rng.chance(50) {
                0
            } else {
                1 + self.rng.below(500) as i32
            },
            nested: self.rng.chance(20),
        };
        let Work::Timer { delay_ms, .. } = work else {
            unreachable!()
        };
        let has_free = self.rng.chance(80);
        let (null_func, null_out) = (self.rng.chance(3), self.rng.chance(3));
        let t = self
            .world
            .new_task(rt.rt().cloned(), work, has_free, &mut self.rng);
        let mut out = tb_task { id: SENTINEL };
        let (status, start, end) = timed(|| {
            tb_timer_start(
                rt.handle(),
                delay_ms,
                period_ms,
                if null_func { None } else { Some(tick_fn) },
                t.arg(),
                if has_free { Some(free_fn) } else { None },
                if null_out {
                    std::ptr::null_mut()
                } else {
                    &mut out
                },
            )
        });
        let mut x = Expect::new(OK);
        if null_func || null_out {
            x.fault(NULL);
        }
        rt.expect(&mut x, start, end);
        self.submitted(Api::TimerStart, status, &x, &t, out, end, rt);
    }

    /// Records a submission's result; on success, may register a callback and a notification.
    #[allow(clippy::too_many_arguments)]
    fn submitted(
        &mut self,
        api: Api,
        status: tb_status,
        x: &Expect,
        t: &Arc<Task>,
        out: tb_task,
        end: u64,
        rt: &RtRef,
    ) -> Option<Arc<Task>> {
        verify(api, status, x, || {
            format!("submitting {} to {}", t.describe(), rt.describe())
        });
        if status != TB_OK {
            expect!(
                out.id == SENTINEL,
                "{}: {} failed but wrote its out-param",
                t.describe(),
                api.name()
            );
            return None;
        }
        expect!(
            out.id != 0 && out.id != SENTINEL,
            "{}: {} returned the handle {:#x}",
            t.describe(),
            api.name(),
            out.id
        );
        t.id.store(out.id, SeqCst);
        t.submitted_at.store(end, SeqCst);
        t.accepted.store(true, SeqCst);
        let r = TaskRef::Task(Arc::clone(t));
        if self.rng.chance(50) {
            self.on_complete(&r);
        }
        if self.rng.chance(15) {
            let q = self.pick_queue();
            self.notify(&r, &q);
        }
        Some(Arc::clone(t))
    }

    fn wait(&mut self, r: &TaskRef, timeout_ms: u64) {
        let (status, start, end) = timed(|| tb_task_wait(r.handle(), timeout_ms));
        let mut x = Expect::new(OK | TIMED_OUT);
        if timeout_ms == TB_FOREVER || r.task().is_some_and(|t| t.known_finished_before(start)) {
            x.success = OK;
        }
        match self.place {
            Place::Worker if timeout_ms > 0 => x.success = ON_WORKER,
            Place::Job(me) if timeout_ms > 0 && r.task().is_some_and(|t| t.serial == me) => {
                x.success = INVALID;
            }
            _ => {}
        }
        r.expect(&mut x, start, end);
        let ok = verify(Api::TaskWait, status, &x, || {
            format!("waiting {timeout_ms} ms for {}", r.describe())
        });
        if ok && status == TB_OK {
            if let Some(t) = r.task() {
                t.seen_finished(start, end, "tb_task_wait");
            }
        }
    }

    fn poll(&mut self, r: &TaskRef) {
        let (status, start, end) = timed(|| tb_task_poll(r.handle()));
        let mut x = Expect::new(OK | PENDING);
        if r.task().is_some_and(|t| t.known_finished_before(start)) {
            x.success = OK;
        }
        r.expect(&mut x, start, end);
        if verify(Api::TaskPoll, status, &x, || {
            format!("polling {}", r.describe())
        }) && status == TB_OK
        {
            if let Some(t) = r.task() {
                t.seen_finished(start, end, "tb_task_poll");
            }
        }
    }

    fn outcome(&mut self, r: &TaskRef) {
        let null_out = self.rng.chance(5);
        let mut o = tb_outcome {
            code: 0x5EE5,
            ..tb_outcome::default()
        };
        let (status, start, end) = timed(|| {
            tb_task_outcome(
                r.handle(),
                if null_out {
                    std::ptr::null_mut()
                } else {
                    &mut o
                },
            )
        });
        let mut x = Expect::new(OK | PENDING);
        if r.task().is_some_and(|t| t.known_finished_before(start)) {
            x.success = OK;
        }
        if null_out {
            x.fault(NULL);
        }
        r.expect(&mut x, start, end);
        let ok = verify(Api::TaskOutcome, status, &x, || {
            format!("reading the outcome of {}", r.describe())
        });
        if status != TB_OK {
            expect!(
                o.code == 0x5EE5,
                "tb_task_outcome returned {status} but wrote its out-param"
            );
        } else if let (true, Some(t)) = (ok, r.task()) {
            t.seen_finished(start, end, "tb_task_outcome");
            t.check_outcome(&o, end, "tb_task_outcome");
        }
    }

    fn cancel(&mut self, r: &TaskRef) {
        let serial = r.task().map_or(u64::MAX, |t| t.serial);
        if let Some(t) = r.task() {
            t.cancel_attempt.fetch_min(now(), SeqCst);
        }
        let (status, start, end) =
            timed(|| inside(Inside::Cancel(serial), || tb_task_cancel(r.handle())));
        let mut x = Expect::new(OK | ALREADY);
        if let Some(t) = r.task() {
            if t.known_finished_before(start) {
                x.success = ALREADY;
            } else if t.is_job() {
                x.success = OK | ALREADY | BUSY;
            }
        }
        r.expect(&mut x, start, end);
        if !verify(Api::TaskCancel, status, &x, || {
            format!("cancelling {}", r.describe())
        }) {
            return;
        }
        let Some(t) = r.task() else { return };
        match status {
            TB_OK => {
                t.cancels_ok.fetch_add(1, SeqCst);
                t.cancel_ok_at.fetch_min(end, SeqCst);
                if t.is_job() {
                    expect!(
                        t.runs.load(SeqCst) == 0,
                        "{}: cancelled while queued, yet it ran",
                        t.describe()
                    );
                    t.seen_finished(start, end, "tb_task_cancel of a queued job");
                }
            }
            TB_ERR_BUSY => {
                t.cancel_busy_at.fetch_min(end, SeqCst);
            }
            _ => {}
        }
    }

    fn on_complete(&mut self, r: &TaskRef) {
        let null_func = self.rng.chance(5);
        let serial = r.task().map_or(u64::MAX, |t| t.serial);
        let arg = r.task().map_or(std::ptr::null_mut(), |t| t.arg());
        let (status, start, end) = timed(|| {
            inside(Inside::OnComplete(serial), || {
                tb_task_on_complete(
                    r.handle(),
                    if null_func { None } else { Some(complete_fn) },
                    arg,
                )
            })
        });
        let mut x = Expect::new(OK | ALREADY);
        if let Some(t) = r.task() {
            if t.callback_at.load(SeqCst) < start {
                x.success = ALREADY;
            }
        }
        if null_func {
            x.fault(NULL);
        }
        r.expect(&mut x, start, end);
        let ok = verify(Api::TaskOnComplete, status, &x, || {
            format!("registering a completion callback on {}", r.describe())
        });
        if let (true, TB_OK, Some(t)) = (ok, status, r.task()) {
            let n = t.callbacks_registered.fetch_add(1, SeqCst) + 1;
            expect!(
                n == 1,
                "{}: {n} completion callbacks accepted",
                t.describe()
            );
            t.callback_at.fetch_min(end, SeqCst);
            if t.known_finished_before(start) {
                expect!(
                    t.completions.load(SeqCst) == 1,
                    "{}: registered after the end, the callback did not run at once",
                    t.describe()
                );
            }
        }
    }

    fn release(&mut self, r: &TaskRef) {
        if let Some(t) = r.task() {
            t.release_attempt.fetch_min(now(), SeqCst);
        }
        let (status, start, end) = timed(|| tb_task_release(r.handle()));
        let mut x = Expect::new(OK);
        r.expect(&mut x, start, end);
        let ok = verify(Api::TaskRelease, status, &x, || {
            format!("releasing {}", r.describe())
        });
        if let (true, TB_OK, Some(t)) = (ok, status, r.task()) {
            let n = t.releases.fetch_add(1, SeqCst) + 1;
            expect!(n == 1, "{}: released {n} times", t.describe());
            t.released_at.fetch_min(end, SeqCst);
        }
    }

    /// A few task handles, some bad, for the group waits.
    fn group(&mut self) -> Vec<TaskRef> {
        let n = self.rng.below(5);
        (0..n).map(|_| self.pick_task()).collect()
    }

    fn wait_all(&mut self) {
        let group = self.group();
        let handles: Vec<tb_task> = group.iter().map(TaskRef::handle).collect();
        let null = !handles.is_empty() && self.rng.chance(5);
        let huge = self.rng.chance(3);
        let n = if huge { usize::MAX / 2 } else { handles.len() };
        let timeout_ms = self.timeout().min(30);
        let ptr = if null {
            std::ptr::null()
        } else {
            handles.as_ptr()
        };
        let (status, start, end) = timed(|| tb_wait_all(ptr, n, timeout_ms));
        let mut x = Expect::new(OK | TIMED_OUT);
        if handles.is_empty() && !huge {
            x.success = OK;
        } else if null {
            x.fault(NULL);
        } else if huge {
            x.fault(INVALID);
        } else {
            if group
                .iter()
                .all(|r| r.task().is_some_and(|t| t.known_finished_before(start)))
            {
                x.success = OK;
            }
            self.expect_group(&mut x, &group, timeout_ms, start, end);
        }
        let ok = verify(Api::WaitAll, status, &x, || {
            format!("tb_wait_all of {n} tasks, {timeout_ms} ms")
        });
        if ok && status == TB_OK {
            for t in group.iter().filter_map(TaskRef::task) {
                t.seen_finished(start, end, "tb_wait_all");
            }
        }
    }

    /// Adds what the tasks of a group wait may answer, beyond NULL and size faults; where the
    /// call comes from overrides the answers with valid handles.
    fn expect_group(
        &self,
        x: &mut Expect,
        group: &[TaskRef],
        timeout_ms: u64,
        start: u64,
        end: u64,
    ) {
        for r in group {
            r.expect(x, start, end);
        }
        match self.place {
            Place::Worker if timeout_ms > 0 => x.success = ON_WORKER,
            Place::Job(me)
                if timeout_ms > 0
                    && group
                        .iter()
                        .any(|r| r.task().is_some_and(|t| t.serial == me)) =>
            {
                x.success = INVALID;
            }
            _ => {}
        }
    }

    fn wait_any(&mut self) {
        let group = self.group();
        let handles: Vec<tb_task> = group.iter().map(TaskRef::handle).collect();
        let null_tasks = !handles.is_empty() && self.rng.chance(5);
        let null_index = self.rng.chance(5);
        let timeout_ms = self.timeout().min(30);
        let mut index = usize::MAX;
        let ptr = if null_tasks {
            std::ptr::null()
        } else {
            handles.as_ptr()
        };
        let (status, start, end) = timed(|| {
            tb_wait_any(
                ptr,
                handles.len(),
                timeout_ms,
                if null_index {
                    std::ptr::null_mut()
                } else {
                    &mut index
                },
            )
        });
        let mut x = Expect::new(OK | TIMED_OUT);
        if null_index || null_tasks {
            x.fault(NULL);
        }
        if handles.is_empty() {
            x.fault(INVALID);
        }
        if x.certain.is_empty() {
            if group
                .iter()
                .any(|r| r.task().is_some_and(|t| t.known_finished_before(start)))
            {
                x.success = OK;
            }
            self.expect_group(&mut x, &group, timeout_ms, start, end);
        }
        let ok = verify(Api::WaitAny, status, &x, || {
            format!("tb_wait_any of {} tasks, {timeout_ms} ms", handles.len())
        });
        if !ok {
            return;
        }
        if status != TB_OK {
            expect!(
                index == usize::MAX,
                "tb_wait_any returned {status} but wrote *index"
            );
            return;
        }
        expect!(
            index < handles.len(),
            "tb_wait_any gave index {index} of {}",
            handles.len()
        );
        if let Some(t) = group.get(index).and_then(TaskRef::task) {
            t.seen_finished(start, end, "tb_wait_any");
        }
        for (i, r) in group.iter().enumerate().take(index) {
            if let Some(t) = r.task() {
                expect!(
                    !t.known_finished_before(start),
                    "tb_wait_any gave index {index}, but task {i} had finished before the call"
                );
            }
        }
    }

    fn notify(&mut self, r: &TaskRef, q: &QueueRef) {
        let tag = r.task().map_or(NEVER, |t| t.serial);
        if let (Some(t), QueueRef::Queue(queue)) = (r.task(), q) {
            lock(&t.notify_tried).push(queue.handle.id);
        }
        let (status, start, end) = timed(|| tb_task_notify(r.handle(), q.handle(), tag));
        let mut x = Expect::new(OK | ALREADY);
        if let Some(t) = r.task() {
            if t.notifies.load(SeqCst) > 0 {
                x.success = ALREADY;
            }
        }
        r.expect(&mut x, start, end);
        q.expect(&mut x, start, end);
        let ok = verify(Api::TaskNotify, status, &x, || {
            format!("notifying {} of {}", q.describe(), r.describe())
        });
        if let (true, TB_OK, Some(t)) = (ok, status, r.task()) {
            let n = t.notifies.fetch_add(1, SeqCst) + 1;
            expect!(n == 1, "{}: {n} notifications accepted", t.describe());
            t.notify_queue.store(q.handle().id, SeqCst);
        }
    }

    fn drain(&mut self) {
        let q = self.pick_queue();
        let mut tags = [SENTINEL; 64];
        let cap = self.rng.pick(&[0, 1, 4, 64]);
        let (null_tags, null_n, huge) =
            (self.rng.chance(4), self.rng.chance(4), self.rng.chance(3));
        let cap = if huge { usize::MAX / 4 } else { cap };
        let mut n = usize::MAX;
        let (status, start, end) = timed(|| {
            tb_queue_drain(
                q.handle(),
                if null_tags {
                    std::ptr::null_mut()
                } else {
                    tags.as_mut_ptr()
                },
                cap,
                if null_n { std::ptr::null_mut() } else { &mut n },
            )
        });
        let mut x = Expect::new(OK);
        if null_n || (null_tags && cap > 0) {
            x.fault(NULL);
        } else if huge {
            x.fault(INVALID);
        }
        q.expect(&mut x, start, end);
        let ok = verify(Api::QueueDrain, status, &x, || {
            format!("draining {} into {cap} slots", q.describe())
        });
        if !ok || status != TB_OK {
            return;
        }
        expect!(n <= cap, "tb_queue_drain gave {n} tags for {cap} slots");
        let QueueRef::Queue(queue) = &q else { return };
        for &tag in &tags[..n.min(tags.len())] {
            self.drained(queue, tag, start, end);
        }
    }

    /// Checks one drained tag: a notified task of this queue, finished, drained once.
    fn drained(&mut self, queue: &Queue, tag: u64, start: u64, end: u64) {
        let Some(t) = self.world.task(tag) else {
            violation(format!("drained tag {tag:#x}, which no task was given"));
            return;
        };
        expect!(
            lock(&queue.seen).insert(tag),
            "{}: its tag was drained twice",
            t.describe()
        );
        expect!(
            lock(&t.notify_tried).contains(&queue.handle.id),
            "{}: its tag came out of a queue it was never given",
            t.describe()
        );
        t.seen_finished(start, end, "a drained tag");
        let r = TaskRef::Task(Arc::clone(&t));
        let mut o = tb_outcome::default();
        let (status, start, end) = timed(|| tb_task_outcome(t.handle(), &mut o));
        let mut x = Expect::new(OK);
        r.expect(&mut x, start, end);
        if verify(Api::TaskOutcome, status, &x, || {
            format!("the outcome of {} after its tag", t.describe())
        }) && status == TB_OK
        {
            t.check_outcome(&o, end, "tb_task_outcome after the tag");
        }
    }

    fn queue_misc(&mut self) {
        let q = self.pick_queue();
        match self.rng.below(8) {
            0 if self.place == Place::Plain => self.free_queue(&q),
            1 if self.place == Place::Plain => self.new_queue(),
            4..=5 => {
                let timeout_ms = self.rng.pick(&[0, 1, 5]);
                let (status, start, end) = timed(|| tb_queue_wait(q.handle(), timeout_ms));
                let mut x = Expect::new(OK | TIMED_OUT);
                if self.place == Place::Worker && timeout_ms > 0 {
                    x.success = ON_WORKER;
                }
                q.expect(&mut x, start, end);
                verify(Api::QueueWait, status, &x, || {
                    format!("waiting {timeout_ms} ms on {}", q.describe())
                });
            }
            2..=3 => {
                let null = self.rng.chance(10);
                let mut fd = -7;
                let (status, start, end) = timed(|| {
                    tb_queue_fd(
                        q.handle(),
                        if null { std::ptr::null_mut() } else { &mut fd },
                    )
                });
                let mut x = Expect::new(OK);
                if null {
                    x.fault(NULL);
                }
                q.expect(&mut x, start, end);
                verify(Api::QueueFd, status, &x, || {
                    format!("the fd of {}", q.describe())
                });
                expect!(
                    (status == TB_OK) == (fd >= 0),
                    "tb_queue_fd returned {status} with fd {fd}"
                );
            }
            _ => {
                self.versioned(
                    Api::QueueStats,
                    |p| tb_queue_get_stats(q.handle(), p),
                    |x, start, end| q.expect(x, start, end),
                    &q.describe(),
                );
            }
        }
    }

    fn free_queue(&mut self, q: &QueueRef) {
        if let QueueRef::Queue(queue) = q {
            queue.free_attempt.fetch_min(now(), SeqCst);
        }
        let (status, start, end) = timed(|| tb_queue_free(q.handle()));
        let mut x = Expect::new(OK);
        q.expect(&mut x, start, end);
        let ok = verify(Api::QueueFree, status, &x, || {
            format!("freeing {}", q.describe())
        });
        if let (true, TB_OK, QueueRef::Queue(queue)) = (ok, status, q) {
            queue.freed_at.fetch_min(end, SeqCst);
        }
    }

    fn new_queue(&mut self) {
        let null = self.rng.chance(20);
        let mut out = tb_queue { id: SENTINEL };
        let status = tb_queue_new(if null { std::ptr::null_mut() } else { &mut out });
        let mut x = Expect::new(OK);
        if null {
            x.fault(NULL);
        }
        verify(Api::QueueNew, status, &x, || "a new queue".into());
        if status == TB_OK {
            lock(&self.world.queues).push(Arc::new(Queue {
                handle: out,
                free_attempt: AtomicU64::new(NEVER),
                freed_at: AtomicU64::new(NEVER),
                seen: Mutex::new(HashSet::new()),
            }));
        } else {
            expect!(
                out.id == SENTINEL,
                "tb_queue_new failed but wrote its out-param"
            );
        }
    }

    /// Drains a queue until it is empty, checking every tag.
    fn drain_all(&mut self, queue: &Arc<Queue>) {
        let mut tags = [0u64; 64];
        loop {
            let mut n = 0;
            let (status, start, end) =
                timed(|| tb_queue_drain(queue.handle, tags.as_mut_ptr(), tags.len(), &mut n));
            expect!(status == TB_OK, "the final drain returned {status}");
            for &tag in &tags[..n] {
                self.drained(queue, tag, start, end);
            }
            if n < tags.len() || status != TB_OK {
                return;
            }
        }
    }

    /// Calls a function filling a versioned struct `T` with a random `struct_size` (valid or
    /// not, or a NULL pointer), and checks that it writes `struct_size` bytes and no more.
    fn versioned<T>(
        &mut self,
        api: Api,
        call: impl FnOnce(*mut T) -> tb_status,
        expect_handle: impl FnOnce(&mut Expect, u64, u64),
        what: &str,
    ) {
        let full = std::mem::size_of::<T>() as u32;
        let size: u32 = match self.rng.below(8) {
            0 => 0,
            1 => 7,
            2 => 8,
            3 => full + 8,
            4 => self.rng.next() as u32,
            _ => full,
        };
        let null = self.rng.chance(5);
        let start = now();
        let (status, untouched) = fill_versioned(size, null, call);
        let end = now();
        let mut x = Expect::new(OK);
        if null {
            x.fault(NULL);
        } else if size < 8 || size > full {
            x.fault(INVALID);
        }
        expect_handle(&mut x, start, end);
        verify(api, status, &x, || {
            format!("{} of {what}, struct_size {size}", api.name())
        });
        expect!(
            untouched,
            "{} with struct_size {size} wrote past it",
            api.name()
        );
    }

    fn metrics(&mut self) {
        let rt = self.pick_rt();
        self.versioned(
            Api::RuntimeMetrics,
            |p| tb_runtime_metrics(rt.handle(), p),
            |x, start, end| rt.expect(x, start, end),
            &rt.describe(),
        );
    }

    fn probe(&mut self) {
        let rt = self.pick_rt();
        match self.rng.below(3) {
            0 => {
                let period = self.rng.pick(&[0, 1, 5, 60_000, 60_001, u32::MAX]);
                let (status, start, end) = timed(|| tb_runtime_probe_start(rt.handle(), period));
                let mut x = Expect::new(OK | ALREADY);
                if period == 0 || period > 60_000 {
                    x.fault(INVALID);
                }
                rt.expect(&mut x, start, end);
                verify(Api::ProbeStart, status, &x, || {
                    format!("starting the probe of {} every {period} ms", rt.describe())
                });
            }
            1 => {
                let (status, start, end) = timed(|| tb_runtime_probe_stop(rt.handle()));
                let mut x = Expect::new(OK | ALREADY);
                rt.expect(&mut x, start, end);
                verify(Api::ProbeStop, status, &x, || {
                    format!("stopping the probe of {}", rt.describe())
                });
            }
            _ => {
                self.versioned(
                    Api::ProbeStats,
                    |p| tb_runtime_probe_stats(rt.handle(), p),
                    |x, start, end| rt.expect(x, start, end),
                    &rt.describe(),
                );
            }
        }
    }

    fn on_stall(&mut self) {
        let rt = self.pick_rt();
        // A hook on the default runtime would outlive this sequence's memory.
        let remove = self.rng.chance(30) || rt.rt().is_some_and(|r| r.is_default);
        let arg = rt
            .rt()
            .map_or(std::ptr::null_mut(), |r| Arc::as_ptr(r).cast_mut().cast());
        let (status, start, end) = timed(|| {
            tb_runtime_on_stall(
                rt.handle(),
                if remove { None } else { Some(stall_hook) },
                arg,
            )
        });
        let mut x = Expect::new(OK);
        if rt.rt().is_some_and(|r| !r.stall_detection) {
            x.success = INVALID;
        }
        rt.expect(&mut x, start, end);
        verify(Api::OnStall, status, &x, || {
            format!("setting the stall hook of {}", rt.describe())
        });
    }

    fn shutdown(&mut self, r: &RtRef, timeout_ms: u64) -> tb_status {
        let mut others = 0;
        if let Some(rt) = r.rt().filter(|rt| !rt.is_default) {
            others = rt.shutdown_calls.fetch_add(1, SeqCst);
            rt.shutdown_attempt.fetch_min(now(), SeqCst);
        }
        let serial = r.rt().map_or(0, |rt| rt.serial);
        let (status, start, end) = timed(|| {
            inside(Inside::Shutdown(serial), || {
                tb_runtime_shutdown(r.handle(), timeout_ms)
            })
        });
        let mut x = Expect::default();
        match r {
            RtRef::Bad(_, codes, _) => x.fault(*codes),
            RtRef::Rt(rt) if rt.is_default => x.fault(INVALID),
            RtRef::Rt(rt) if rt.closed_at.load(SeqCst) < start => x.fault(SHUT),
            RtRef::Rt(rt) => {
                let own_thread = matches!(self.place, Place::Job(_) | Place::Worker);
                x.success = match (own_thread, timeout_ms) {
                    (true, _) => PENDING,
                    (false, TB_FOREVER) => OK,
                    (false, _) => OK | TIMED_OUT,
                };
                if others > 0 || rt.shutdown_calls.load(SeqCst) > 1 {
                    x.maybe(SHUT);
                }
            }
        }
        let ok = verify(Api::RuntimeShutdown, status, &x, || {
            format!("shutting {} down, {timeout_ms} ms", r.describe())
        });
        let Some(rt) = r.rt() else { return status };
        if !ok || !matches!(status, TB_OK | TB_TIMED_OUT | TB_PENDING) {
            return status;
        }
        rt.closed_at.fetch_min(end, SeqCst);
        if status == TB_OK {
            rt.ok_at.fetch_min(end, SeqCst);
            for t in self.world.tasks() {
                let ours = t.rt.as_ref().is_some_and(|o| Arc::ptr_eq(o, rt));
                if ours && t.submitted_at.load(SeqCst) < start {
                    t.seen_finished(start, end, "tb_runtime_shutdown's TB_OK");
                }
            }
        }
        status
    }

    /// Status names and messages, the last error, configs refused, NULL out-params.
    fn misc(&mut self) {
        let any = self.rng.next() as i32;
        for s in [any, any % 16, TB_ERR_FORKED, TB_OK] {
            // SAFETY: both return static NUL-terminated strings for any value.
            let (name, message) = unsafe {
                (
                    std::ffi::CStr::from_ptr(tb_status_name(s)),
                    std::ffi::CStr::from_ptr(tb_status_message(s)),
                )
            };
            expect!(
                name.to_bytes().starts_with(b"TB_") && !message.to_bytes().is_empty(),
                "status {s}: name {name:?}, message {message:?}"
            );
        }
        let mut buf = [0x7Fu8; 64];
        let len = self.rng.below(65) as usize;
        let null = self.rng.chance(20);
        let n = tb_last_error(
            if null {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            len,
        );
        if !null && len > 0 && n > 0 {
            let end = n.min(len - 1);
            expect!(
                buf[end] == 0 && !buf[..end].contains(&0),
                "tb_last_error({len}) returned {n} without NUL-terminating at {end}"
            );
            expect!(
                buf[len..].iter().all(|&b| b == 0x7F),
                "tb_last_error({len}) wrote past len"
            );
        }
        if !null && len == 0 {
            expect!(buf.iter().all(|&b| b == 0x7F), "tb_last_error(0) wrote");
        }
    }

    /// Invalid configs, NULL out-params and the default runtime.
    fn runtime_calls(&mut self) {
        let mut cfg = tb_runtime_config::default();
        tb_runtime_config_init(&mut cfg);
        tb_runtime_config_init(std::ptr::null_mut());
        match self.rng.below(7) {
            0 => cfg.struct_size = self.rng.pick(&[0, 3, 5, 1000, u32::MAX]),
            1 => cfg.flavor = 2 + self.rng.below(100) as u32,
            2 => cfg.worker_threads = 1025 + self.rng.below(10_000) as u32,
            3 => {
                cfg.flavor = TB_CURRENT_THREAD;
                cfg.worker_threads = 2;
            }
            4 => cfg.max_blocking_threads = 65_537,
            5 => cfg.stall_threshold_ms = 3_600_001,
            _ => cfg.thread_stack_size = 1 + self.rng.below(65_535) as usize,
        }
        let null_out = self.rng.chance(20);
        let mut out = tb_runtime { id: SENTINEL };
        let status = tb_runtime_new(
            &cfg,
            if null_out {
                std::ptr::null_mut()
            } else {
                &mut out
            },
        );
        let mut x = Expect::default();
        x.fault(if null_out { NULL } else { INVALID });
        verify(Api::RuntimeNew, status, &x, || {
            format!("a bad config {cfg:?}")
        });
        expect!(
            out.id == SENTINEL,
            "tb_runtime_new failed but wrote its out-param"
        );
        let null = self.rng.chance(30);
        let mut out = tb_runtime { id: SENTINEL };
        let status = tb_runtime_default(if null { std::ptr::null_mut() } else { &mut out });
        let mut x = Expect::new(OK);
        if null {
            x.fault(NULL);
        }
        verify(Api::RuntimeDefault, status, &x, || {
            "the default runtime".into()
        });
        let default = self.world.rts.iter().find(|rt| rt.is_default).unwrap();
        expect!(
            null || out.id == default.handle.id,
            "tb_runtime_default gave another handle"
        );
    }

    /// Calls from inside a job: wait for itself, poll itself, foreign job pointers, a child job,
    /// and a few random non-blocking calls.
    fn nested_in_job(&mut self, t: &Task, job: *mut tb_job) {
        let me = TaskRef::Task(self.world.task(t.serial).unwrap());
        if t.id.load(SeqCst) != 0 {
            self.wait(&me, 5);
            self.poll(&me);
        }
        let local = 0u64;
        expect!(
            !tb_job_cancelled(std::ptr::null())
                && !tb_job_cancelled(std::ptr::from_ref(&local).cast()),
            "tb_job_cancelled accepted a pointer that is not the running job"
        );
        tb_job_set_result(std::ptr::null_mut(), std::ptr::null_mut());
        cancelled(t, job);
        let rt = RtRef::Rt(Arc::clone(t.rt.as_ref().unwrap()));
        if let Some(child) = self.spawn_job(&rt, false) {
            if self.rng.chance(50) {
                self.release(&TaskRef::Task(child));
            }
        }
        for _ in 0..self.rng.below(4) {
            self.callback_call();
        }
    }

    /// Calls from a timer's tick, on an async worker: waits are refused, the rest works.
    fn nested_in_tick(&mut self, t: &Task) {
        // The first tick may run before tb_timer_start has returned the handle.
        if t.id.load(SeqCst) != 0 {
            let me = TaskRef::Task(self.world.task(t.serial).unwrap());
            self.wait(&me, 1);
            self.poll(&me);
        }
        self.callback_call();
        if self.rng.chance(20) {
            let rt = RtRef::Rt(Arc::clone(t.rt.as_ref().unwrap()));
            self.spawn_job(&rt, false);
        }
    }

    /// A non-blocking call, as callbacks may make.
    fn callback_call(&mut self) {
        match self.rng.below(8) {
            0 => {
                let t = self.pick_task();
                self.cancel(&t);
            }
            1 => {
                let (t, timeout) = (self.pick_task(), self.rng.pick(&[0, 1, 2]));
                self.wait(&t, timeout);
            }
            2 => self.wait_any(),
            3 => self.drain(),
            4 => self.queue_misc(),
            5 => self.metrics(),
            6 => {
                let t = self.pick_task();
                self.outcome(&t);
            }
            _ => {
                let t = self.pick_task();
                self.poll(&t);
            }
        }
    }

    /// Inside a completion callback the task is not finished yet, unless the callback was
    /// registered after the end and runs inside `tb_task_on_complete`.
    fn poll_in_callback(&mut self, t: &Task, by_registration: bool) {
        let r = TaskRef::Task(self.world.task(t.serial).unwrap());
        let (status, start, end) = timed(|| tb_task_poll(t.handle()));
        let mut x = Expect::new(if by_registration { OK } else { PENDING });
        r.expect(&mut x, start, end);
        verify(Api::TaskPoll, status, &x, || {
            format!("polling {} from its own completion callback", t.describe())
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Sequences.

/// What one sequence did.
#[derive(Default)]
struct Counts {
    tasks: u64,
    threads: u64,
}

/// The metrics of a runtime, or None once it is shut down (a job may do that at any time).
fn metrics_of(rt: tb_runtime) -> Option<tb_metrics> {
    let mut m = tb_metrics {
        struct_size: std::mem::size_of::<tb_metrics>() as u32,
        ..Default::default()
    };
    match tb_runtime_metrics(rt, &mut m) {
        TB_OK => Some(m),
        status => {
            assert_eq!(status, TB_ERR_SHUTDOWN, "{}", last_error());
            None
        }
    }
}

fn default_runtime() -> tb_runtime {
    let mut rt = tb_runtime::default();
    assert_eq!(tb_runtime_default(&mut rt), TB_OK);
    rt
}

/// Waits until `cond` holds; records a violation if it does not within `limit`.
fn settle(what: impl FnOnce() -> String, limit: Duration, cond: impl Fn() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        if Instant::now() > end {
            violation(format!("{} did not happen within {limit:?}", what()));
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Builds a world for `seed`: its runtimes, the default one, and queues.
fn build_world(seed: u64, rng: &mut Rng) -> Arc<World> {
    let mut rts = Vec::new();
    for i in 0..1 + rng.below(2) {
        let mut cfg = tb_runtime_config::default();
        tb_runtime_config_init(&mut cfg);
        if rng.chance(25) {
            cfg.flavor = TB_CURRENT_THREAD;
        } else {
            cfg.worker_threads = 1 + rng.below(2) as u32;
        }
        cfg.max_blocking_threads = 1 + rng.below(4) as u32;
        if rng.chance(30) {
            cfg.max_queued_blocking = 2 + rng.below(7) as u32;
        }
        if rng.chance(40) {
            cfg.blocking_keep_alive_ms = 5 + rng.below(45) as u32;
        }
        cfg.stall_threshold_ms = rng.pick(&[0, 10, 1000]);
        let name = format!("m{i}");
        let cname = CString::new(name.clone()).unwrap();
        cfg.thread_name = cname.as_ptr();
        let mut handle = tb_runtime::default();
        assert_eq!(tb_runtime_new(&cfg, &mut handle), TB_OK, "{}", last_error());
        rts.push(Arc::new(Rt::new(handle, &name, false, &cfg)));
    }
    let mut cfg = tb_runtime_config::default();
    tb_runtime_config_init(&mut cfg);
    rts.push(Arc::new(Rt::new(default_runtime(), "tb", true, &cfg)));
    let mut queues = Vec::new();
    for _ in 0..rng.below(3) {
        let mut q = tb_queue::default();
        assert_eq!(tb_queue_new(&mut q), TB_OK);
        queues.push(Arc::new(Queue {
            handle: q,
            free_attempt: AtomicU64::new(NEVER),
            freed_at: AtomicU64::new(NEVER),
            seen: Mutex::new(HashSet::new()),
        }));
    }
    Arc::new(World {
        seed,
        rts,
        queues: Mutex::new(queues),
        tasks: Mutex::new(Vec::new()),
        stale: lock(&STALE).clone().unwrap_or_default(),
    })
}

/// Runs the sequence of `seed`; returns what it did, or the violations it found.
fn sequence(seed: u64) -> Result<Counts, String> {
    lock(&VIOLATIONS).clear();
    let mut rng = Rng::new(seed);
    let default_before = metrics_of(default_runtime()).unwrap();
    let world = build_world(seed, &mut rng);
    let threads = 2 + rng.below(3);
    let calls = 20 + rng.below(60);
    thread::scope(|s| {
        for i in 0..threads {
            let world = &world;
            s.spawn(move || {
                let mut actor = Actor::new(world, seed ^ ((i + 1) * 0x9E37), Place::Plain);
                for _ in 0..calls {
                    actor.random_call();
                }
            });
        }
    });
    finish(&world, &default_before);
    let counts = Counts {
        tasks: lock(&world.tasks).len() as u64,
        threads,
    };
    retire(world);
    let violations = std::mem::take(&mut *lock(&VIOLATIONS));
    if violations.is_empty() {
        Ok(counts)
    } else {
        Err(violations.join("\n"))
    }
}

/// Ends a sequence: every runtime shut down, every task waited for and checked, every handle
/// released, every queue drained and freed, the metrics compared with the model.
fn finish(world: &Arc<World>, default_before: &tb_metrics) {
    let mut actor = Actor::new(world, world.seed, Place::Plain);
    for rt in &world.rts {
        if rt.closed_at.load(SeqCst) != NEVER {
            continue;
        }
        // Jobs of the other runtimes, ticks and callbacks may still be submitting to this one
        // (a job they submitted may even end before they see it accepted): the counts must
        // agree once that settles.
        let mismatch = std::cell::RefCell::new(String::new());
        settle(
            || {
                format!(
                    "runtime {}: every task ending, the metrics agreeing with the model ({})",
                    rt.name,
                    mismatch.borrow()
                )
            },
            Duration::from_secs(60),
            || {
                metrics_of(rt.handle).map_or(true, |m| {
                    let differ = metrics_differ(world, rt, &m, default_before);
                    let settled = differ.is_none();
                    *mismatch.borrow_mut() = differ.unwrap_or_default();
                    settled
                })
            },
        );
        if !rt.is_default {
            // A job may still shut it down first: then this call says TB_ERR_SHUTDOWN.
            let status = actor.shutdown(&RtRef::Rt(Arc::clone(rt)), TB_FOREVER);
            expect!(
                matches!(status, TB_OK | TB_ERR_SHUTDOWN),
                "runtime {}: the final shutdown returned {status}",
                rt.name
            );
        }
    }
    for t in world.tasks() {
        if !t.accepted.load(SeqCst) {
            continue;
        }
        let r = TaskRef::Task(Arc::clone(&t));
        if t.releases.load(SeqCst) == 0 {
            actor.wait(&r, TB_FOREVER);
            actor.outcome(&r);
            actor.release(&r);
            actor.release(&r);
        }
        settle(
            || format!("{}: free_arg and completion callback", t.describe()),
            Duration::from_secs(60),
            || {
                t.frees.load(SeqCst) == u32::from(t.has_free)
                    && t.completions.load(SeqCst) == t.callbacks_registered.load(SeqCst)
                    && t.runs.load(SeqCst) == t.exits.load(SeqCst)
                    && !t.in_tick.load(SeqCst)
            },
        );
    }
    for q in lock(&world.queues).clone() {
        if q.free_attempt.load(SeqCst) == NEVER {
            actor.drain_all(&q);
            let seen = lock(&q.seen);
            for t in world.tasks() {
                if t.notify_queue.load(SeqCst) == q.handle.id && t.notifies.load(SeqCst) == 1 {
                    expect!(
                        seen.contains(&t.serial),
                        "{}: notified, but its tag never came out of the queue",
                        t.describe()
                    );
                }
            }
        }
        let r = QueueRef::Queue(Arc::clone(&q));
        actor.free_queue(&r);
        actor.free_queue(&r);
    }
    for t in world.tasks() {
        check_task_at_end(&t);
    }
    expect!(
        metrics_of(default_runtime()).unwrap().task_handles == 0,
        "task handles left after every task was released"
    );
}

/// What must hold for a task once everything ended.
fn check_task_at_end(t: &Task) {
    let accepted = t.accepted.load(SeqCst);
    let frees = t.frees.load(SeqCst);
    let runs = t.runs.load(SeqCst);
    let completions = t.completion_entries.load(SeqCst);
    if !accepted {
        expect!(
            frees == 0 && runs == 0 && completions == 0 && t.ticks.load(SeqCst) == 0,
            "{}: refused, yet free_arg ran {frees}, the job {runs}, the callback {completions} times",
            t.describe()
        );
        return;
    }
    expect!(
        frees == u32::from(t.has_free),
        "{}: free_arg ran {frees} times",
        t.describe()
    );
    expect!(
        completions == t.callbacks_registered.load(SeqCst),
        "{}: completion callback ran {completions} times",
        t.describe()
    );
    expect!(runs <= 1, "{}: ran {runs} times", t.describe());
    let rt = t.rt();
    let ok_at = rt.ok_at.load(SeqCst);
    for (what, at) in [
        ("free_arg", t.free_at.load(SeqCst)),
        (
            "the completion callback",
            t.finisher_completed_at.load(SeqCst),
        ),
    ] {
        expect!(
            at == NEVER || at < ok_at,
            "{}: {what} ran after tb_runtime_shutdown returned TB_OK",
            t.describe()
        );
    }
    let status = t.final_status.load(SeqCst);
    let cancels = t.cancels_ok.load(SeqCst);
    if t.is_job() {
        expect!(
            cancels <= 1,
            "{}: tb_task_cancel returned TB_OK {cancels} times",
            t.describe()
        );
        expect!(
            runs == 1 || cancels == 1 || rt.shutdown_attempt.load(SeqCst) != NEVER,
            "{}: never ran, yet nobody cancelled it nor shut its runtime down",
            t.describe()
        );
        expect!(
            cancels == 0 || runs == 0,
            "{}: cancelled while queued, yet it ran",
            t.describe()
        );
        expect!(
            t.cancel_busy_at.load(SeqCst) == NEVER || runs == 1,
            "{}: cancel said TB_ERR_BUSY, yet the job never ran",
            t.describe()
        );
    } else {
        expect!(
            t.ticks_after_cancel.load(SeqCst) <= 1,
            "{}: ticks kept coming after tb_task_cancel returned",
            t.describe()
        );
    }
    if status != NO_STATUS {
        expect!(
            (status == TB_ERR_CANCELLED) == (cancels > 0),
            "{}: status {status} after {cancels} successful cancels",
            t.describe()
        );
    }
}

/// How the runtime's metrics differ from the model's counts, if they do: every task must have
/// ended, and the counters must equal the model's. The default runtime is shared by every
/// sequence: its counters are compared as differences from the sequence's start.
fn metrics_differ(world: &World, rt: &Rt, m: &tb_metrics, before: &tb_metrics) -> Option<String> {
    let base = if rt.is_default {
        *before
    } else {
        tb_metrics::default()
    };
    let jobs: Vec<Arc<Task>> = world
        .tasks()
        .into_iter()
        .filter(|t| {
            t.accepted.load(SeqCst)
                && t.is_job()
                && t.rt.as_ref().is_some_and(|o| std::ptr::eq(&**o, rt))
        })
        .collect();
    let ran = jobs.iter().filter(|t| t.runs.load(SeqCst) == 1);
    let failed = ran
        .clone()
        .filter(|t| t.job_result.load(SeqCst) != 0)
        .count() as u64;
    let ran = ran.count() as u64;
    let got = (
        m.jobs_submitted - base.jobs_submitted,
        m.jobs_completed - base.jobs_completed,
        m.jobs_failed - base.jobs_failed,
        m.jobs_cancelled - base.jobs_cancelled,
    );
    let want = (jobs.len() as u64, ran, failed, jobs.len() as u64 - ran);
    let ended = m.tasks_alive == 0
        && m.blocking_queued == 0
        && m.blocking_running == 0
        && m.timers_active == 0;
    (got != want || !ended).then(|| {
        format!(
            "metrics (submitted, completed, failed, cancelled) = {got:?}, the model counts \
             {want:?}; {m:?}"
        )
    })
}

/// Keeps a finished world alive a little longer (a callback that ran late would find its
/// task), and remembers its handles as stale ones for later sequences.
fn retire(world: Arc<World>) {
    static GRAVEYARD: Mutex<VecDeque<Arc<World>>> = Mutex::new(VecDeque::new());
    let mut stale = lock(&STALE).take().unwrap_or_default();
    let keep = |list: &mut Vec<u64>, id: u64| {
        list.push(id);
        if list.len() > 16 {
            list.remove(0);
        }
    };
    for t in world
        .tasks()
        .iter()
        .filter(|t| t.accepted.load(SeqCst))
        .take(4)
    {
        keep(&mut stale.tasks, t.id.load(SeqCst));
    }
    for rt in world.rts.iter().filter(|rt| !rt.is_default) {
        keep(&mut stale.runtimes, rt.handle.id);
    }
    for q in lock(&world.queues).iter() {
        keep(&mut stale.queues, q.handle.id);
    }
    *lock(&STALE) = Some(stale);
    let mut graveyard = lock(&GRAVEYARD);
    graveyard.push_back(world);
    if graveyard.len() > 4 {
        // Tasks point back to their world: empty the list to free both.
        let old = graveyard.pop_front().unwrap();
        lock(&old.tasks).clear();
    }
}

// ---------------------------------------------------------------------------------------------
// Crashes and hangs name their seed.

/// The seed being run, for the crash handler.
static CURRENT_SEED: AtomicU64 = AtomicU64::new(0);

/// Writes "model: <what> during seed 0x..." to stderr with async-signal-safe calls only.
fn write_seed_line(what: &[u8]) {
    let seed = CURRENT_SEED.load(SeqCst);
    let mut line = [0u8; 96];
    let mut n = 0;
    for part in [b"\nmodel: ".as_slice(), what, b" during seed 0x".as_slice()] {
        line[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    for shift in (0..16).rev() {
        line[n] = b"0123456789abcdef"[((seed >> (shift * 4)) & 0xF) as usize];
        n += 1;
    }
    line[n] = b'\n';
    // SAFETY: write(2) is async-signal-safe; the buffer is ours.
    unsafe { libc::write(2, line.as_ptr().cast(), n + 1) };
}

extern "C" fn on_crash(signal: i32) {
    write_seed_line(b"crashed");
    // SAFETY: the handler was installed with SA_RESETHAND: this raises the default action.
    unsafe { libc::raise(signal) };
}

fn install_crash_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for signal in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGABRT,
        ] {
            // SAFETY: a plain sigaction with a handler that only calls async-signal-safe code.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_crash as extern "C" fn(i32) as usize;
                action.sa_flags = libc::SA_RESETHAND | libc::SA_ONSTACK;
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
    });
}

/// Runs `seed` under the hang detector; panics naming the seed on a violation.
fn run_seed(seed: u64) -> Counts {
    // Miri has no signals, and reports its own errors.
    if !cfg!(miri) {
        install_crash_handler();
    }
    CURRENT_SEED.store(seed, SeqCst);
    let (done, watch) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if watch.recv_timeout(HANG) == Err(mpsc::RecvTimeoutError::Timeout) {
            write_seed_line(b"hung for 120 s");
            std::process::abort();
        }
    });
    let result = sequence(seed);
    drop(done);
    watchdog.join().unwrap();
    match result {
        Ok(counts) => counts,
        Err(violations) => panic!(
            "model violations in sequence {seed:#x} (replay: TB_MODEL_SEED={seed:#x} cargo test \
             --test model):\n{violations}"
        ),
    }
}

/// Only one sequence at a time in this process: the model counts task handles process-wide.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn parse_seed(text: &str) -> u64 {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .unwrap_or_else(|_| panic!("not a seed: {text}"))
}

fn report(what: &str, sequences: u64, counts: &Counts, started: Instant) {
    let (_, calls) = contract::calls();
    let line = format!(
        "model ({what}): {sequences} sequences, {} threads, {} tasks, {calls} checked calls in \
         {:.1} s\n",
        counts.threads,
        counts.tasks,
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}

#[test]
fn random_sequences_follow_the_documented_model() {
    let _one = lock(&ONE_AT_A_TIME);
    let started = Instant::now();
    let seeds: Vec<u64> = match std::env::var("TB_MODEL_SEED") {
        Ok(seed) => vec![parse_seed(&seed)],
        Err(_) => {
            let n = std::env::var("TB_MODEL_SEQUENCES").map_or(40, |n| parse_seed(&n));
            (1..=n).collect()
        }
    };
    let mut total = Counts::default();
    for &seed in &seeds {
        let counts = run_seed(seed);
        total.tasks += counts.tasks;
        total.threads += counts.threads;
    }
    report("budget", seeds.len() as u64, &total, started);
}

#[test]
#[ignore = "the soak: minutes; run with TB_SOAK_SECONDS=<s> -- --ignored"]
fn soak() {
    let _one = lock(&ONE_AT_A_TIME);
    let seconds: u64 = std::env::var("TB_SOAK_SECONDS").map_or(60, |s| parse_seed(&s));
    let started = Instant::now();
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Rng::new(base);
    let mut total = Counts::default();
    let mut sequences = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let counts = run_seed(rng.next());
        total.tasks += counts.tasks;
        total.threads += counts.threads;
        sequences += 1;
    }
    report("soak", sequences, &total, started);
}

/// The table of allowed codes is taken from the header: every code it allows for a function is
/// named in that function's doc comment, and every function returning a `tb_status` has a row.
#[test]
fn the_allowed_codes_are_the_documented_ones() {
    let header = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("include/tokio_bridge.h"),
    )
    .unwrap();
    let mut declared = Vec::new();
    let mut doc = String::new();
    for line in header.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("/**") {
            doc.clear();
        }
        if trimmed.starts_with('*') || trimmed.starts_with("/**") {
            doc.push_str(trimmed);
            doc.push('\n');
        }
        if let Some(rest) = line.strip_prefix("tb_status ") {
            let name = rest.split('(').next().unwrap().to_string();
            declared.push((name, doc.clone()));
        }
    }
    assert!(declared.len() >= 20, "found {} functions", declared.len());
    for (name, doc) in &declared {
        let api = contract::ALL
            .iter()
            .find(|api| api.name() == name)
            .unwrap_or_else(|| panic!("{name} has no row in tests/common/contract.rs"));
        for code in api.documented().names() {
            assert!(
                code == "TB_OK" || doc.contains(&code),
                "{name}: the table allows {code}, which its documentation does not name"
            );
        }
    }
    assert_eq!(
        declared.len(),
        contract::ALL.len(),
        "a row for a function that is gone"
    );
}
