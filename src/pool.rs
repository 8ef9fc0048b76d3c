//! The queue of blocking jobs of one runtime, drained by threads of Tokio's blocking pool.
//!
//! Jobs are not handed to `spawn_blocking` one by one. The runtime keeps its own FIFO queue and
//! starts *drainers* with `spawn_blocking`: each drainer is a Tokio blocking thread that takes
//! jobs from the queue until it has been idle for the keep-alive time. Keeping the queue here is
//! what lets the library
//! - cancel a queued job at once (its `free_arg` runs before `tb_task_cancel` returns) and end
//!   every queued job at shutdown, which a job already inside Tokio's queue would not allow;
//! - bound the queue (`max_queued_blocking`) and count queued and running jobs exactly;
//! - avoid a thread burst: a new drainer is started only when no drainer is idle and none is
//!   already starting, so threads grow one at a time, each as soon as the previous one runs,
//!   and never beyond `max_blocking_threads`; past one drainer per CPU, only while every
//!   drainer is inside a job and the jobs are long (100 us or more on average, or none ended
//!   for 1 ms), that is while the drainers are blocked rather than busy with quick jobs (more
//!   threads than CPUs cannot run quick jobs faster);
//! - keep a drainer that runs out of work spinning for a few microseconds before it sleeps, so
//!   that a job submitted right after the last one starts without waking a sleeping thread
//!   (a futex wake-up on another CPU costs about 20 us); the spin adapts, shrinking when it
//!   does not pay (see [`Spin`]);
//! - with quick jobs, leave a new job to the drainers already inside one or spinning when they
//!   will clear the queue within 50 us or already keep every CPU but one busy, instead of
//!   waking a sleeping drainer: every thread more than the CPUs can run only slows quick jobs
//!   down (the submitting thread's futex calls, preempted lock holders). A check about 1 ms
//!   later, repeated while jobs wait, wakes sleeping drainers for any job that has waited
//!   0.5 ms while no job ended for as long, in case a busy drainer's job was a long one after
//!   all. The check runs as a task on an async worker: a worker blocked by a C
//!   callback (which the stall detector reports) delays it too.
//! - let a submission that would only leave its job to drainers busy with quick jobs skip the
//!   pool's lock: it puts the job into an *inbox* without any lock (see [`crate::inbox`]),
//!   which the drainers empty into the queue when it runs dry, and spinning drainers watch
//!   (see [`Pool::submit`]). The drainers take the pool's lock for every job, and taking it back
//!   from them was what a submitting thread spent most of its time on.

use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::clock;
use crate::context;
use crate::error::{Error, TB_ERR_BUSY, TB_ERR_OS, TB_ERR_SHUTDOWN};
use crate::inbox::Inbox;
use crate::metrics::Counters;
use crate::state::Cancelled;
use crate::sync::{lock, wait_until, Spin};
use crate::task::Task;

/// Locks that order each release of a [`PoolRef`] with the visits of a pool through its jobs'
/// tasks ([`visit`]), striped by the pool's address.
static RELEASES: [Mutex<()>; 16] = [const { Mutex::new(()) }; 16];

fn release_lock(pool: *const Pool) -> MutexGuard<'static, ()> {
    let hash = (pool as usize as u64 >> 7).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    lock!(RELEASES[(hash >> 60) as usize])
}

/// A counted reference to a pool, released under the pool's [`release_lock`].
///
/// A job's task points to its pool without counting: counting would cost the submitting
/// thread two locked instructions per job, an increment when it submits and a decrement when
/// it frees the task (12-16% of its time, measured). The pointer is good while the task has
/// not finished: until then someone holds a `PoolRef` of the pool and releases it only after
/// the task finished (the runtime, until its shutdown has ended every queued job; the drainer
/// running the job; whoever claimed it by a cancel). Every counted reference that may be a
/// pool's last is a `PoolRef`, so a thread that finds the task unfinished under the same lock
/// ([`visit`]) knows the pool is there.
pub(crate) struct PoolRef(ManuallyDrop<Arc<Pool>>);

impl PoolRef {
    pub(crate) fn new(pool: Arc<Pool>) -> Self {
        PoolRef(ManuallyDrop::new(pool))
    }
}

impl Deref for PoolRef {
    type Target = Arc<Pool>;

    fn deref(&self) -> &Arc<Pool> {
        &self.0
    }
}

impl Drop for PoolRef {
    /// Gives the count back under the lock; the last one drops the pool after it, so that
    /// what the pool's drop runs (it may drop tasks, and with them C code's `free_arg`) never
    /// runs under the lock.
    fn drop(&mut self) {
        let last = {
            let _ordered = release_lock(Arc::as_ptr(&self.0));
            // SAFETY: taken once, here; `self.0` is not used again.
            Arc::into_inner(unsafe { ManuallyDrop::take(&mut self.0) })
        };
        drop(last);
    }
}

/// Runs `f` on `pool`, the pool of the job `task`, unless the task has finished (None). `f`
/// runs under the pool's [`release_lock`], so it must be short: to keep the pool, it clones
/// it into a [`PoolRef`].
pub(crate) fn visit<R>(
    task: &Task,
    pool: NonNull<Pool>,
    f: impl FnOnce(&Arc<Pool>) -> R,
) -> Option<R> {
    let _ordered = release_lock(pool.as_ptr());
    if task.is_finished() {
        return None;
    }
    // SAFETY: the task has not finished, so a `PoolRef` of its pool is held, and it is not
    // released while this lock is held: the pool is alive, its count at least 1. The `Arc`
    // built here takes no count of its own and is never dropped.
    let pool = ManuallyDrop::new(unsafe { Arc::from_raw(pool.as_ptr()) });
    Some(f(&pool))
}

#[derive(Default)]
struct State {
    queue: VecDeque<Arc<Task>>,
    /// Jobs in `queue` that are still waiting (cancelled ones are skipped when popped).
    queued: usize,
    /// Jobs claimed by a cancel whose `free_arg` and completion callback still run on the
    /// cancelling thread: a shutdown waits for them as for running jobs.
    ending: usize,
    /// Jobs accepted since the pool started (counted here, under the lock the submission takes
    /// anyway, rather than in a counter shared with the drainers).
    submitted: u64,
    running: usize,
    drainers: usize,
    peak_drainers: usize,
    starting: usize,
    /// Drainers waiting on `work`, and how many of them were told to wake.
    idle: usize,
    wakeups: usize,
    /// Drainers spinning before they sleep, and how many of them were handed a job.
    spinning: usize,
    spin_claims: usize,
    /// A [`recheck`](Pool::recheck) is due: a job was left to the busy drainers.
    recheck_armed: bool,
    /// Whether the [`Inbox`] takes jobs (its own flag, kept here too so that the drainers,
    /// which read it after every job, do not read the inbox's cache line, which the
    /// submitting thread writes for every job: reading the flag there instead measured 5-7%
    /// slower no-ops, with the inbox's former lock on that line).
    inbox_open: bool,
    /// The inbox's jobs on their way into the queue, kept for its allocation.
    moving: Vec<Arc<Task>>,
    closed: bool,
}

/// How long the inbox takes jobs before a submission takes the pool's lock again, to decide
/// afresh with what the drainers did meanwhile (see [`Pool::submit`]).
const INBOX_NS: u64 = 500_000;

/// The most jobs whose room the vector that moves the inbox's jobs keeps after a burst.
const MOVING_KEEP: usize = 1024;
/// How many jobs the inbox takes before a submission takes the pool's lock again, which
/// empties it (in each of its two buffers of slots: 16 KiB a runtime).
const INBOX_SLOTS: usize = 1024;

/// How a drainer whose queue ran dry lets the jobs being submitted gather in the inbox before
/// it takes them (see [`Pool::gather`] and [`Gathering`]). It begins once `GATHER_AFTER_TAKES`
/// takes in a row found jobs (they keep coming as it drains), with a time limit of
/// `GATHER_MIN_NS`, which doubles up to `GATHER_MAX_NS` each time jobs kept coming until the
/// limit. It looks at the inbox's count every `GATHER_LOOK_NS`, and takes the jobs once no new
/// one came since its last look or once there are `GATHER_JOBS`. It stops gathering when a
/// caller waits for a queued job, until takes in a row find jobs again.
const GATHER_AFTER_TAKES: u32 = 32;
const GATHER_MIN_NS: u64 = 1_000;
const GATHER_MAX_NS: u64 = 16_000;
const GATHER_LOOK_NS: u64 = 2_000;
const GATHER_JOBS: usize = INBOX_SLOTS / 4;

/// Why a drainer stopped gathering jobs (see [`Pool::gather`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gathered {
    /// No new job came since the last look; the inbox held this many.
    Quiet(usize),
    /// The inbox held [`GATHER_JOBS`] or more.
    Many,
    /// Jobs kept coming until the time limit.
    Limit,
    /// A caller is about to wait for a job still queued.
    Hurried,
}

/// A drainer's decision to gather jobs before its next take from the inbox, from what its
/// takes found and how its gatherings ended (see [`GATHER_AFTER_TAKES`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Gathering {
    /// Takes in a row that found jobs.
    streak: u32,
    /// How long the next gathering may last; 0 while the drainer does not gather.
    limit_ns: u64,
}

impl Gathering {
    /// The time limit of a gathering before the next take, if there is to be one: the last
    /// take found jobs, and so did enough before it.
    fn next(&self) -> Option<u64> {
        (self.streak > 0 && self.limit_ns > 0).then_some(self.limit_ns)
    }

    /// After a take from the inbox that `found` jobs or not.
    fn took(&mut self, found: bool) {
        self.streak = if found {
            self.streak.saturating_add(1)
        } else {
            0
        };
        if self.streak >= GATHER_AFTER_TAKES && self.limit_ns == 0 {
            self.limit_ns = GATHER_MIN_NS;
        }
    }

    /// After a gathering that ended as `how`.
    fn ended(&mut self, how: Gathered) {
        match how {
            Gathered::Hurried => *self = Gathering::default(),
            Gathered::Limit => self.limit_ns = (self.limit_ns * 2).min(GATHER_MAX_NS),
            Gathered::Quiet(_) | Gathered::Many => {}
        }
    }
}

/// How long a drainer without work spins before it sleeps: 2 to 50 us, adapting (see [`Spin`]).
const SPIN_MIN_NS: u64 = 2_000;
const SPIN_MAX_NS: u64 = 50_000;
/// Past one drainer per CPU, the pool grows only for jobs this long on average, or when no job
/// has ended for `QUIET_NS`. That second clause catches drainers all stuck in their first long
/// jobs; it is longer than a scheduler's time slice, so that quick jobs whose drainers were
/// preempted for a moment (every drainer inside a job, none ending) do not pass for stuck ones.
const STUCK_NS: u64 = 100_000;
const QUIET_NS: u64 = 1_000_000;
/// How far the time of the last job's end and the average run time move before they are
/// stored again (see [`Pool::note_end`]).
const END_GRAIN_NS: u64 = 10_000;
const AVERAGE_GRAIN_NS: u64 = 16;
/// Jobs shorter than this on average are quick: a drainer inside one is free again within
/// microseconds.
const QUICK_NS: u64 = 20_000;
/// With quick jobs, a new job is left to the drainers already busy when they can clear the queue
/// within this time (counting at least 1 us a job), rather than waking a sleeping drainer.
const BUSY_BACKLOG_NS: u64 = 50_000;
/// How soon a job left to the busy drainers is checked on, in case they were inside long jobs
/// after all; one waiting longer than half of it then gets a sleeping drainer woken. A Tokio
/// sleep on an async worker: 1 to 3 ms in practice (Tokio's timer counts whole milliseconds).
const RECHECK: Duration = Duration::from_millis(1);
/// How soon a recheck tries again to start a drainer after the OS refused one's thread (each
/// refusal prints the panic message of Tokio, caught by `spawn_drainer`, to stderr).
const RETRY_START: Duration = Duration::from_millis(100);

/// What a submission, a drainer or a recheck does once it has let go of the lock.
enum Next {
    /// Nothing: a spinning or busy drainer takes the job.
    Nothing,
    /// Has [`Pool::recheck`] run soon (the job was left to busy drainers).
    Recheck,
    /// Wakes this many sleeping drainers.
    Wake(usize),
    /// Starts a drainer (reserved under the lock).
    Grow,
}

/// The pool's gauges at one moment.
pub(crate) struct Snapshot {
    pub(crate) threads: u32,
    pub(crate) peak_threads: u32,
    pub(crate) idle: u32,
    pub(crate) queued: u64,
    pub(crate) running: u64,
    /// Jobs a cancel took out of the queue whose `free_arg` and completion callback still run.
    pub(crate) ending: u64,
    pub(crate) submitted: u64,
}

/// The blocking-job queue of one runtime.
pub(crate) struct Pool {
    /// The serial number of the runtime (see `context::runtime_serial`).
    serial: u64,
    handle: tokio::runtime::Handle,
    pub(crate) counters: Arc<Counters>,
    cpus: usize,
    /// Jobs queued while a drainer spins, for the spinners to watch without the lock. Changed
    /// under the lock only: a submission (or a move from the inbox) counts its jobs only while
    /// a drainer spins, and a job leaving the queue is uncounted while the count is not zero.
    /// A drainer begins to spin only with the queue empty, and jobs leave it in order, so the
    /// counted jobs are the first ones in the queue and the count is exact. A submission to
    /// drainers busy with a backlog (no spinner, the usual case under load) does not write
    /// this cache line, which the drainers read for every job: writing it took it from them
    /// each time.
    pending: AtomicUsize,
    /// When a job last ended (a [`clock::stamp`]); the pool's creation until one has, so that
    /// a burst of jobs right after it does not pass for drainers stuck in long jobs.
    last_end: AtomicU64,
    /// A moving average of how long jobs run, in ns.
    average_run_ns: AtomicU64,
    /// How long an idle drainer spins before it sleeps.
    spin: Spin,
    max_threads: usize,
    max_queued: usize,
    keep_alive: Duration,
    closed: AtomicBool,
    /// Set by a caller about to wait for a job still queued, so that a drainer gathering jobs
    /// takes them at once (see [`Pool::gather`]); cleared by the drainer that does.
    hurry: AtomicBool,
    state: Mutex<State>,
    inbox: Inbox<Task>,
    /// How long the inbox stays open: [`INBOX_NS`] (tests change it).
    inbox_ns: u64,
    work: Condvar,
    idle: Condvar,
}

impl Pool {
    pub(crate) fn new(
        serial: u64,
        handle: tokio::runtime::Handle,
        max_threads: usize,
        max_queued: usize,
        keep_alive: Duration,
        counters: Arc<Counters>,
    ) -> Self {
        Pool {
            serial,
            handle,
            counters,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pending: AtomicUsize::new(0),
            last_end: AtomicU64::new(clock::stamp()),
            average_run_ns: AtomicU64::new(0),
            spin: Spin::new(SPIN_MIN_NS, SPIN_MAX_NS),
            max_threads,
            max_queued,
            keep_alive,
            closed: AtomicBool::new(false),
            hurry: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            inbox: Inbox::new(INBOX_SLOTS),
            inbox_ns: INBOX_NS,
            work: Condvar::new(),
            idle: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock!(self.state)
    }

    /// True once the runtime started shutting down.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Queues a job. On error the job was not queued and will never run.
    ///
    /// When the job would only be left to drainers busy with quick jobs, it goes into the
    /// [`Inbox`], with one atomic add and no lock: the drainers take the pool's lock for every
    /// job, and taking it back from them cost the submitting thread more than anything else
    /// it did for a job (a third of its time, spent waiting for the lock's cache line), and a
    /// lock of the inbox's own still cost a fifth of it. The inbox is open only while that
    /// holds (see [`Self::open_inbox`]); a drainer whose queue ran dry (or spinning, and
    /// seeing jobs there) moves the inbox's jobs into the queue, and whatever ends that state
    /// (a drainer about to sleep, the recheck, a cancel, the pool's close) closes it or
    /// empties it first, under the pool's lock, so that every decision made there sees every
    /// job. An inbox open for [`INBOX_NS`], or full, sends the next submission through the
    /// lock too, which closes it and decides as without it (waking a drainer, growing the pool
    /// if the drainers' jobs turned out long), then opens it again if it may.
    pub(crate) fn submit(self: &Arc<Self>, task: &Arc<Task>) -> Result<(), Error> {
        if self.inbox.push(task, task.submitted) {
            return Ok(());
        }
        let mut state = self.lock();
        self.take_inbox(&mut state, true);
        if state.closed {
            return Err(Error::new(TB_ERR_SHUTDOWN, "the runtime is shutting down"));
        }
        if self.max_queued > 0 && state.queued >= self.max_queued {
            return Err(Error::text(
                TB_ERR_BUSY,
                format!(
                    "{} blocking jobs are already queued (max_queued_blocking)",
                    state.queued
                ),
            ));
        }
        state.queue.push_back(Arc::clone(task));
        self.count_queued(&mut state, 1);
        let next = if state.spinning > state.spin_claims {
            state.spin_claims += 1;
            Next::Nothing
        } else if state.idle > 0 && self.busy_drainers_suffice(&state) {
            Self::recheck_later(&mut state)
        } else if state.idle > 0 {
            Self::wake(&mut state, 1)
        } else {
            self.grow_or_recheck(&mut state)
        };
        let next = self.open_inbox(&mut state, next);
        drop(state);
        if self.act(next) {
            Ok(())
        } else {
            self.unqueue_without_drainers(task)
        }
    }

    /// Does what was decided under the lock, once it is released. False if the OS refused to
    /// start a drainer.
    fn act(self: &Arc<Self>, next: Next) -> bool {
        match next {
            Next::Nothing => true,
            Next::Recheck => {
                self.arm_recheck(RECHECK);
                true
            }
            Next::Wake(n) => {
                for _ in 0..n {
                    self.work.notify_one();
                }
                true
            }
            Next::Grow => self.spawn_drainer(),
        }
    }

    /// After a submission decided `next` for its job: opens the inbox if that was to leave it
    /// to the drainers inside jobs, and the next jobs would be left to them too whatever the
    /// backlog. That is when the pool is open and unbounded (its exact count of queued jobs is
    /// not needed), the jobs are quick, one drainer at least is inside a job or spinning (it
    /// will look into the inbox when its queue runs dry, or as it spins, through
    /// [`Inbox::holds`]), and none sleeps unless those inside jobs or spinning keep every CPU
    /// but one busy (see [`Self::busy_drainers_suffice`]). A recheck must be due
    /// (it is armed now if need be): it closes the inbox and looks again, so that jobs that
    /// turn out long still get sleeping drainers woken and the pool grown. Returns what the
    /// submission does next.
    fn open_inbox(&self, state: &mut State, next: Next) -> Next {
        let left = matches!(next, Next::Nothing | Next::Recheck);
        if !left
            || state.inbox_open
            || state.closed
            || self.max_queued > 0
            || state.running + state.spinning == 0
            || (state.idle > 0 && !self.busy_keep_the_cpus(state))
            || !self.jobs_are_quick()
        {
            return next;
        }
        let next = match next {
            Next::Recheck => Next::Recheck,
            _ => Self::recheck_later(state),
        };
        state.inbox_open = true;
        self.inbox
            .open(clock::stamp_after(clock::stamp(), self.inbox_ns));
        next
    }

    /// Moves the inbox's jobs to the end of the queue (after every job there: they are newer),
    /// and closes the inbox if `close`. True if it moved any.
    fn take_inbox(&self, state: &mut State, close: bool) -> bool {
        if !state.inbox_open {
            return false; // a closed inbox is empty
        }
        self.inbox.take(close, &mut state.moving);
        if close {
            state.inbox_open = false;
        }
        let moved = state.moving.len();
        state.queue.extend(state.moving.drain(..));
        self.count_queued(state, moved);
        state.moving.shrink_to(MOVING_KEEP);
        moved > 0
    }

    /// Counts `n` jobs just added to the queue: queued, submitted, and `pending` while a
    /// drainer spins.
    fn count_queued(&self, state: &mut State, n: usize) {
        state.queued += n;
        state.submitted += n as u64;
        if state.spinning > 0 && n > 0 {
            let pending = self.pending.load(Ordering::Relaxed);
            self.pending.store(pending + n, Ordering::Release);
        }
    }

    /// Closes the inbox once the jobs turned out long (`drain` calls it, with the lock, after
    /// a job whose end made the average long): its jobs were left to the busy drainers on the
    /// grounds that they were quick. Each of them, but the one this drainer takes next, wakes
    /// a sleeping drainer, as its submission would have done had it come now; submissions
    /// from now on decide under the lock (which may also grow the pool).
    fn reconsider_inbox<'a>(
        self: &'a Arc<Self>,
        mut state: MutexGuard<'a, State>,
    ) -> MutexGuard<'a, State> {
        let queued = state.queued;
        self.take_inbox(&mut state, true);
        let moved = state.queued - queued;
        let woken = state.idle.min(moved.saturating_sub(1));
        if woken == 0 {
            return state;
        }
        let next = Self::wake(&mut state, woken);
        drop(state);
        self.act(next);
        self.lock()
    }

    /// Has a [`recheck`](Self::recheck) run soon, unless one is due already.
    fn recheck_later(state: &mut State) -> Next {
        match std::mem::replace(&mut state.recheck_armed, true) {
            false => Next::Recheck,
            true => Next::Nothing,
        }
    }

    /// Tells `n` sleeping drainers to wake (they are no longer counted idle).
    fn wake(state: &mut State, n: usize) -> Next {
        state.idle -= n;
        state.wakeups += n;
        Next::Wake(n)
    }

    /// For queued jobs that no drainer is free to take: starts a drainer if the pool should
    /// grow now (counting it under the lock), else has a [`recheck`](Self::recheck) look again
    /// later if it may grow then, when a drainer may have been inside its job long enough.
    ///
    /// Threads start one at a time, never beyond `max_threads`; past one drainer per CPU, only
    /// while every drainer is inside a job and the jobs are long (on average, or none ended
    /// for a while): more threads than CPUs help only drainers blocked in their jobs.
    fn grow_or_recheck(&self, state: &mut State) -> Next {
        if state.closed || state.starting > 0 || state.drainers >= self.max_threads {
            return Next::Nothing;
        }
        if state.drainers >= self.cpus {
            if state.running < state.drainers {
                return Next::Nothing;
            }
            let long = self.average_run_ns.load(Ordering::Relaxed) >= STUCK_NS
                || self.since_last_end(clock::stamp()) >= QUIET_NS;
            if !long {
                return Self::recheck_later(state);
            }
        }
        state.drainers += 1;
        state.peak_drainers = state.peak_drainers.max(state.drainers);
        state.starting += 1;
        Next::Grow
    }

    /// After the OS refused to start a drainer: if none is alive either, nobody would ever run
    /// `task`, so it is taken back out of the queue and the submission fails. If it is no
    /// longer in the queue, a shutdown took it or a drainer that has exited since ran it: it
    /// was accepted, and ended or will end as any other job.
    fn unqueue_without_drainers(&self, task: &Arc<Task>) -> Result<(), Error> {
        let mut state = self.lock();
        if state.drainers > 0 {
            return Ok(());
        }
        let Some(at) = state.queue.iter().rposition(|t| Arc::ptr_eq(t, task)) else {
            return Ok(());
        };
        // No drainer, so none was spinning when it was queued: it was not counted in `pending`.
        state.queue.remove(at);
        state.queued -= 1;
        state.submitted -= 1;
        Err(Error::new(
            TB_ERR_OS,
            "the operating system refused to start a blocking thread",
        ))
    }

    /// Cancels `task`, a job of this pool (see `State::cancel`). A queued job is claimed under
    /// the pool's lock, so that a shutdown sees it either queued (and ends it itself) or
    /// claimed; it then counts as ending while `abandon` runs its `free_arg` and completion
    /// callback on this thread, and [`wait_idle`](Self::wait_idle) waits for that too. Those
    /// callbacks run as code of the runtime: a shutdown from inside them does not wait for them
    /// (see `context::as_runtime`).
    pub(crate) fn cancel(&self, task: &Task, abandon: impl FnOnce()) -> Cancelled {
        /// Ends the count of a claimed job when `abandon` returns (or unwinds).
        struct Ending<'a>(&'a Pool);
        impl Drop for Ending<'_> {
            fn drop(&mut self) {
                let mut state = self.0.lock();
                state.ending -= 1;
                self.0.notify_if_idle(&state);
            }
        }
        let mut state = self.lock();
        // A job in the inbox is counted queued first, like the others.
        self.take_inbox(&mut state, false);
        let cancelled = task.cancel();
        if !matches!(cancelled, Cancelled::Claimed) {
            return cancelled;
        }
        if !state.closed {
            state.queued -= 1; // a closed pool's queue was emptied, and its count zeroed
        }
        state.ending += 1;
        drop(state);
        let _ending = Ending(self);
        context::as_runtime(self.serial, abandon);
        cancelled
    }

    /// True when the jobs are quick.
    fn jobs_are_quick(&self) -> bool {
        self.average_run_ns.load(Ordering::Relaxed) < QUICK_NS
    }

    /// True when the jobs are quick and the drainers inside one or spinning will take every
    /// queued job within [`BUSY_BACKLOG_NS`], or already keep every CPU but one busy (the
    /// submitting thread needs one: more drainers would only take turns with it and each
    /// other). A new job is then left to them: waking a sleeping drainer would cost the
    /// submitting thread a futex call, and the woken thread would compete for the CPUs with
    /// the busy drainers and the submitting threads (on two CPUs, four drainers contending
    /// for the pool's lock ran quick jobs at a quarter of the speed of one). A
    /// [`recheck`](Self::recheck) covers the case where a busy drainer's job is a long one
    /// after all.
    fn busy_drainers_suffice(&self, state: &State) -> bool {
        let busy = state.running + state.spinning;
        let average = self.average_run_ns.load(Ordering::Relaxed);
        busy > 0
            && average < QUICK_NS
            && (self.busy_keep_the_cpus(state)
                || state.queued as u64 * average.max(1_000) <= busy as u64 * BUSY_BACKLOG_NS)
    }

    /// True when the drainers inside a job or spinning keep every CPU but one busy.
    fn busy_keep_the_cpus(&self, state: &State) -> bool {
        state.running + state.spinning + 1 >= self.cpus
    }

    /// Has [`recheck`](Self::recheck) run in `after`, on an async worker.
    fn arm_recheck(self: &Arc<Self>, after: Duration) {
        let pool = Arc::downgrade(self);
        // A runtime shutting down drops the task unrun: nothing to check on then.
        drop(self.handle.spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(pool) = pool.upgrade() {
                PoolRef::new(pool).recheck();
            }
        }));
    }

    /// Wakes sleeping drainers for jobs that have waited longer than half of [`RECHECK`] while
    /// no job ended for that long: the busy drainers they were left to are inside long jobs.
    /// Otherwise (the jobs are young, or the drainers are getting through them) it checks on
    /// them again later. With no drainer asleep, it starts one if the pool may grow, as a
    /// submission would, and checks again later if the pool may grow then.
    fn recheck(self: &Arc<Self>) {
        let mut state = self.lock();
        state.recheck_armed = false;
        // The inbox was open only while a recheck was due: it closes, and its jobs count.
        self.take_inbox(&mut state, true);
        if state.queued == 0 {
            return;
        }
        let oldest = state.queue.front().map_or(u64::MAX, |task| task.submitted);
        let half = RECHECK.as_nanos() as u64 / 2;
        let now = clock::stamp();
        let young = clock::nanos_between(oldest, now) < half;
        let progress = self.since_last_end(now) < half + END_GRAIN_NS;
        let next = if state.idle == 0 {
            self.grow_or_recheck(&mut state)
        } else if young || progress {
            Self::recheck_later(&mut state)
        } else {
            let woken = state.idle.min(state.queued);
            Self::wake(&mut state, woken)
        };
        drop(state);
        self.act(next);
    }

    /// Wakes a shutdown waiting in [`wait_idle`](Self::wait_idle) once no job runs or ends.
    fn notify_if_idle(&self, state: &State) {
        if state.closed && state.running == 0 && state.ending == 0 {
            self.idle.notify_all();
        }
    }

    /// Nanoseconds from the last end of a job to `now` (a [`clock::stamp`]).
    fn since_last_end(&self, now: u64) -> u64 {
        clock::nanos_between(self.last_end.load(Ordering::Relaxed), now)
    }

    /// Records that a job ran `run_ns` and ended at `ended` (a [`clock::stamp`]), into
    /// `average`, the calling drainer's own moving average of run times, and into the pool's.
    ///
    /// The pool's copies are stored only when they move: the end time by [`END_GRAIN_NS`], the
    /// average by 1/64 and [`AVERAGE_GRAIN_NS`]. The submitting threads read them for every
    /// job, and a store for every job would take their cache line away from them each time.
    /// The pool's average is the last copy a drainer stored of its own, each exact: an
    /// estimate, with drainers of differently long jobs taking turns. A sample counts for at
    /// most twice `STUCK_NS`, so that one quick job whose thread was preempted for
    /// milliseconds does not make the jobs look long; five long jobs in a row still do.
    fn note_end(&self, average: &mut u64, run_ns: u64, ended: u64) {
        if self.since_last_end(ended) >= END_GRAIN_NS {
            self.last_end.store(ended, Ordering::Relaxed);
        }
        let sample = run_ns.min(2 * STUCK_NS);
        *average = *average - *average / 8 + sample / 8;
        let published = self.average_run_ns.load(Ordering::Relaxed);
        if average.abs_diff(published) > published / 64 + AVERAGE_GRAIN_NS {
            self.average_run_ns.store(*average, Ordering::Relaxed);
        }
    }

    /// Starts a reserved drainer on Tokio's blocking pool. False if the OS refused a thread;
    /// a [`recheck`](Self::recheck) then tries again if jobs are queued.
    ///
    /// Tokio panics when the OS refuses a thread and its pool has none, but keeps the drainer
    /// queued, to run it if a thread appears later. So the drainer holds the pool weakly (a
    /// strong reference would close a cycle, pool -> Tokio handle -> Tokio's queue -> drainer,
    /// and leak them all), and a drainer whose start failed is marked abandoned: it does nothing
    /// if Tokio ever runs it, since its place was given back here.
    fn spawn_drainer(self: &Arc<Self>) -> bool {
        let pool = Arc::downgrade(self);
        let abandoned = Arc::new(AtomicBool::new(false));
        let ticket = Arc::clone(&abandoned);
        let spawned = catch_unwind(AssertUnwindSafe(|| {
            self.handle.spawn_blocking(move || {
                if let Some(pool) = pool.upgrade().filter(|_| !ticket.load(Ordering::Acquire)) {
                    PoolRef::new(pool).drain();
                }
            });
        }));
        if spawned.is_err() {
            let mut state = self.lock();
            abandoned.store(true, Ordering::Release);
            state.drainers -= 1;
            state.starting -= 1;
            // Jobs submitted while it was starting were left to it: a recheck tries again
            // (and again, as long as the OS refuses and jobs wait), so that they are not
            // stranded until the next submission.
            let retry = state.queued > 0
                && !state.closed
                && matches!(Self::recheck_later(&mut state), Next::Recheck);
            drop(state);
            if retry {
                self.arm_recheck(RETRY_START);
            }
        }
        spawned.is_ok()
    }

    fn drain(self: &Arc<Self>) {
        let mut average = self.average_run_ns.load(Ordering::Relaxed);
        let mut gathering = Gathering::default();
        let mut state = self.lock();
        state.starting -= 1;
        loop {
            if let Some(task) = state.queue.pop_front() {
                let pending = self.pending.load(Ordering::Relaxed);
                if pending > 0 {
                    self.pending.store(pending - 1, Ordering::Relaxed);
                }
                if !task.start() {
                    continue; // cancelled while queued; whoever cancelled it ended it
                }
                state.queued -= 1;
                state.running += 1;
                // Jobs left behind this one, and nobody free to take them: maybe one more
                // drainer (each new one, once it holds a job, considers the next).
                let next = if state.queued > 0 && state.idle == 0 && state.spinning == 0 {
                    self.grow_or_recheck(&mut state)
                } else {
                    Next::Nothing
                };
                drop(state);
                self.act(next);
                let (run_ns, ended) = crate::job::run(self, &task);
                self.note_end(&mut average, run_ns, ended);
                drop(task);
                state = self.lock();
                state.running -= 1;
                self.notify_if_idle(&state);
                if state.inbox_open && !self.jobs_are_quick() {
                    state = self.reconsider_inbox(state);
                }
                continue;
            }
            // The queue ran dry: on to the jobs submitted into the inbox meanwhile, gathered
            // first while they keep coming.
            let gather = gathering.next();
            if let Some(limit_ns) = gather.filter(|_| state.inbox_open && self.jobs_are_quick()) {
                let (guard, gathered) = self.as_spinner(state, || self.gather(limit_ns));
                state = guard;
                if let Some(how) = gathered {
                    gathering.ended(how);
                }
                if !state.queue.is_empty() {
                    continue; // another drainer took them, or a submission queued one
                }
            }
            let found = self.take_inbox(&mut state, false);
            gathering.took(found);
            if found {
                continue;
            }
            if state.closed {
                break;
            }
            state = self.spin(state);
            if !state.queue.is_empty() || state.closed || self.take_inbox(&mut state, false) {
                continue;
            }
            // About to sleep: from now on submissions take the pool's lock, and see this
            // drainer (any job they put into the inbox until now is moved first).
            if self.take_inbox(&mut state, true) {
                continue;
            }
            state.idle += 1;
            let (guard, waited) = self
                .work
                .wait_timeout(state, self.keep_alive)
                .unwrap_or_else(|p| p.into_inner());
            state = guard;
            if state.wakeups > 0 {
                state.wakeups -= 1;
            } else {
                state.idle -= 1;
                // The inbox may have opened again meanwhile: its jobs keep this drainer too.
                if waited.timed_out()
                    && state.queue.is_empty()
                    && !self.take_inbox(&mut state, false)
                {
                    break;
                }
            }
        }
        state.drainers -= 1;
    }

    /// Waits, without the lock, while jobs keep coming into the inbox, so that the drainer
    /// takes them in one batch: until no new job came during a look's interval, the inbox
    /// holds [`GATHER_JOBS`], `limit_ns` passed, or a caller is about to wait for a job still
    /// queued ([`Self::hurry`]). Says which.
    ///
    /// Taken as they come, quick jobs crossed from the submitting CPU to the draining one
    /// nearly one at a time: each take read (and swapped) the inbox's word, which the
    /// submitting thread writes for every job, and the slots and task records it was still
    /// writing, so that the submitting thread waited for those cache lines to come back for
    /// nearly every job. On a machine where moving a cache line between the CPUs was slow
    /// (0.6 us for a ping-pong of two), the submitting thread ran a third as fast as when
    /// they were gathered. A look reads the word only. A job waits at most one look's
    /// interval longer when the submitting thread stops without waiting for it, and not at
    /// all when it waits for it.
    fn gather(&self, limit_ns: u64) -> Gathered {
        let start = Instant::now();
        let limit = start + Duration::from_nanos(limit_ns);
        let mut seen = 0; // the take before this left the inbox empty
        let mut looks: u32 = 0;
        loop {
            looks += 1;
            let look_at = start + Duration::from_nanos(GATHER_LOOK_NS * u64::from(looks));
            let look_at = look_at.min(limit);
            // The flag is read at least once before each look, however late this thread runs.
            loop {
                if self.hurry.load(Ordering::Relaxed) {
                    self.hurry.store(false, Ordering::Relaxed);
                    return Gathered::Hurried;
                }
                if Instant::now() >= look_at {
                    break;
                }
                for _ in 0..16 {
                    std::hint::spin_loop();
                }
            }
            let held = self.inbox.len();
            if held == seen {
                return Gathered::Quiet(held);
            }
            if held >= GATHER_JOBS {
                return Gathered::Many;
            }
            if look_at >= limit {
                return Gathered::Limit;
            }
            seen = held;
        }
    }

    /// Has a drainer gathering jobs take them now: a caller is about to wait for one of them.
    /// Writes the flag's cache line only if it is not set yet.
    pub(crate) fn hurry(&self) {
        if !self.hurry.load(Ordering::Relaxed) {
            self.hurry.store(true, Ordering::Relaxed);
        }
    }

    /// Spins unlocked for a moment, watching for work, then takes the lock back (see
    /// [`Self::as_spinner`]).
    fn spin<'a>(&'a self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.as_spinner(state, || {
            self.spin.spin(None, || {
                self.pending.load(Ordering::Acquire) > 0 || self.inbox.holds()
            });
        })
        .0
    }

    /// Runs `busy`, which spins, without the lock and counted among the spinners (a submission
    /// may leave its job to one), then takes the lock back; `None` (and nothing run) when the
    /// spinners, and with quick jobs the drainers running them too, would not stay fewer than
    /// the CPUs, so that they never starve the threads that submit work.
    fn as_spinner<'a, R>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        busy: impl FnOnce() -> R,
    ) -> (MutexGuard<'a, State>, Option<R>) {
        let running = if self.jobs_are_quick() {
            state.running
        } else {
            0
        };
        if state.spinning + running + 1 >= self.cpus.max(2) {
            return (state, None);
        }
        state.spinning += 1;
        drop(state);
        let done = busy();
        let mut state = self.lock();
        if state.spin_claims > 0 {
            state.spin_claims -= 1;
        }
        state.spinning -= 1;
        (state, Some(done))
    }

    /// Refuses new jobs and takes every queued one out (the caller ends them). Idle drainers
    /// exit; running jobs go on.
    pub(crate) fn close(&self) -> Vec<Arc<Task>> {
        let mut state = self.lock();
        state.closed = true;
        self.closed.store(true, Ordering::Release);
        self.take_inbox(&mut state, true);
        state.queued = 0;
        let queued = std::mem::take(&mut state.queue);
        self.pending.store(0, Ordering::Relaxed);
        drop(state);
        self.work.notify_all();
        queued.into()
    }

    /// The pool's gauges now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let state = self.lock();
        let in_inbox = self.inbox.len();
        Snapshot {
            threads: state.drainers as u32,
            peak_threads: state.peak_drainers as u32,
            idle: state.idle as u32,
            queued: (state.queued + in_inbox) as u64,
            running: state.running as u64,
            ending: state.ending as u64,
            submitted: state.submitted + in_inbox as u64,
        }
    }

    /// Waits until no job is running or being ended by a cancel, or `deadline` passes. True if
    /// none is.
    pub(crate) fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        let mut state = self.lock();
        while state.running > 0 || state.ending > 0 {
            let (guard, expired) = wait_until!(self.idle, state, deadline);
            state = guard;
            if expired {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{TB_ERR_CANCELLED, TB_ERR_OS, TB_ERR_SHUTDOWN};
    use crate::job::{self, tb_job};
    use crate::userdata::UserArg;
    use std::ffi::c_void;

    /// Longer than any test: the inbox stays open.
    const HOUR_NS: u64 = 3_600_000_000_000;

    /// What the jobs of one test saw: the order they ran in. Jobs that block run until `go`.
    #[derive(Default)]
    struct Log {
        go: AtomicBool,
        ran: Mutex<Vec<usize>>,
    }

    /// Leaked (see [`step`]).
    fn log() -> &'static Log {
        Box::leak(Box::default())
    }

    /// A job's argument: its log, its number, and whether it blocks until `log.go`.
    struct Step {
        log: &'static Log,
        n: usize,
        blocks: bool,
    }

    /// Leaked, as the log is, so that a job outliving a failed test's body never reads freed
    /// memory.
    fn step(log: &'static Log, n: usize, blocks: bool) -> &'static Step {
        Box::leak(Box::new(Step { log, n, blocks }))
    }

    unsafe extern "C" fn record(arg: *mut c_void, _: *mut tb_job) -> i32 {
        let step = &*arg.cast::<Step>();
        lock!(step.log.ran).push(step.n);
        while step.blocks && !step.log.go.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        0
    }

    /// Submits job `n` of `log` to `pool`.
    fn submit(
        pool: &Arc<Pool>,
        log: &'static Log,
        n: usize,
        blocks: bool,
    ) -> Result<Arc<Task>, Error> {
        let arg = UserArg::new(
            std::ptr::from_ref(step(log, n, blocks)).cast_mut().cast(),
            None,
        );
        let task = Arc::new(job::queued(n as u64 + 1, pool, record, arg));
        pool.submit(&task).map(|()| task)
    }

    /// Opens the inbox by hand, as a submission may when a drainer is inside a job, then
    /// submits job `n` into it.
    fn submit_to_inbox(pool: &Arc<Pool>, log: &'static Log, n: usize, blocks: bool) {
        submit_to_inbox_locked(pool, &mut pool.lock(), log, n, blocks);
    }

    /// [`submit_to_inbox`] with the pool's lock held by the caller (`state`): nobody closes
    /// the inbox meanwhile, and a submission into an open inbox does not take the lock.
    fn submit_to_inbox_locked(
        pool: &Arc<Pool>,
        state: &mut State,
        log: &'static Log,
        n: usize,
        blocks: bool,
    ) {
        if !state.inbox_open {
            state.inbox_open = true;
            pool.inbox.open(u64::MAX);
        }
        submit(pool, log, n, blocks).unwrap();
        assert!(pool.inbox.holds(), "it went in");
    }

    /// A Tokio runtime that is never driven: a recheck never runs.
    fn undriven() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A pool on `tokio` as if on a machine of 2 CPUs.
    fn pool_of(
        tokio: &tokio::runtime::Runtime,
        max_threads: usize,
        keep_alive: Duration,
        inbox_ns: u64,
    ) -> Arc<Pool> {
        let mut pool = Pool::new(
            1,
            tokio.handle().clone(),
            max_threads,
            0,
            keep_alive,
            Arc::default(),
        );
        pool.inbox_ns = inbox_ns;
        pool.cpus = 2;
        Arc::new(pool)
    }

    /// A job's task points to its pool without counting (see `PoolRef`). A thread cancelling
    /// and hurrying jobs through their tasks, over and over while a shutdown ends them and the
    /// pool's last references go (the test's and the exiting drainer's), finds each job
    /// unfinished with its pool there, or finished, and then leaves the pool alone (ASan and
    /// Miri check the memory). Each job ends once: run, cancelled or ended by the shutdown.
    #[test]
    fn visits_through_tasks_racing_the_pools_last_release_never_find_it_freed() {
        let tokio = undriven();
        let rounds = if cfg!(miri) { 3 } else { 100 };
        for round in 0..rounds {
            let log = log();
            let pool = PoolRef::new(pool_of(&tokio, 1, Duration::from_millis(1), HOUR_NS));
            let gone = Arc::downgrade(&pool);
            let tasks: Vec<Arc<Task>> = (0..4)
                .map(|n| submit(&pool, log, n, true).unwrap())
                .collect();
            let released = AtomicBool::new(false);
            let cancelled = std::thread::scope(|scope| {
                let visitor = scope.spawn(|| {
                    let mut cancelled = 0;
                    // Some visits after the release too.
                    let mut after = 0;
                    while after < 3 * tasks.len() {
                        after += usize::from(released.load(Ordering::Acquire));
                        let task = &tasks[(cancelled + after + round) % tasks.len()];
                        job::hurry(task);
                        cancelled += usize::from(matches!(job::cancel(task), Cancelled::Claimed));
                        std::thread::yield_now();
                    }
                    cancelled
                });
                log.go.store(true, Ordering::Release);
                // As a runtime's shutdown does: end the queued jobs, wait for the others.
                for task in pool.close() {
                    if task.claim() {
                        job::abandon(&pool, &task, TB_ERR_SHUTDOWN);
                    }
                }
                assert!(pool.wait_idle(None));
                drop(pool);
                wait_for("the drainer to exit", || gone.strong_count() == 0);
                released.store(true, Ordering::Release);
                visitor.join().unwrap()
            });
            for task in &tasks {
                assert!(task.is_finished());
                assert!(matches!(job::cancel(task), Cancelled::TooLate));
                job::hurry(task);
            }
            let ran = lock!(log.ran).len();
            assert!(ran + cancelled <= tasks.len(), "each job ended once");
        }
    }

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Ends what is left as a runtime's shutdown does, so that the idle drainers exit and the
    /// Tokio runtime's drop does not wait for their keep-alive.
    fn end(pool: &Pool, logs: &[&Log]) {
        for log in logs {
            log.go.store(true, Ordering::Release);
        }
        for task in pool.close() {
            if task.claim() {
                job::abandon(pool, &task, TB_ERR_SHUTDOWN);
            }
        }
        assert!(pool.wait_idle(None));
    }

    /// Calls [`end`] when dropped, also when the test fails: a failing test's blocked jobs are
    /// released, so that the Tokio runtime's drop, which waits for its blocking threads, does
    /// not hang the test binary. Made after the runtime, so dropped before it.
    struct Ends<'a>(&'a Pool, &'a [&'a Log]);

    impl Drop for Ends<'_> {
        fn drop(&mut self) {
            end(self.0, self.1);
        }
    }

    /// A pool of one drainer at most, job 0 running in it (blocked until `log.go`), and a way
    /// to submit job `n`. The inbox stays as the submissions and the drainer leave it, open
    /// for `inbox_ns`.
    struct Busy {
        _tokio: tokio::runtime::Runtime,
        pool: Arc<Pool>,
        log: &'static Log,
        first: Arc<Task>,
    }

    impl Busy {
        fn new(inbox_ns: u64) -> Self {
            let tokio = undriven();
            let pool = pool_of(&tokio, 1, Duration::from_secs(10), inbox_ns);
            let log = log();
            let first = submit(&pool, log, 0, true).expect("an open pool takes a job");
            wait_for("job 0 runs", || !lock!(log.ran).is_empty());
            Busy {
                _tokio: tokio,
                pool,
                log,
                first,
            }
        }

        fn submit(&self, n: usize) -> Result<Arc<Task>, Error> {
            submit(&self.pool, self.log, n, false)
        }

        fn in_inbox(&self) -> Option<usize> {
            let open = self.pool.lock().inbox_open;
            open.then(|| self.pool.inbox.len())
        }
    }

    impl Drop for Busy {
        fn drop(&mut self) {
            end(&self.pool, &[self.log]);
        }
    }

    /// A job submitted while a drainer was starting is left to it; when the OS refuses that
    /// drainer's thread, a recheck is armed to start one again, and rearmed while the OS
    /// refuses, instead of the job waiting for the next submission.
    #[test]
    fn jobs_left_to_a_drainer_that_failed_to_start_are_retried() {
        // Blocking threads of a 64 TiB stack: the OS refuses every one.
        let tokio = tokio::runtime::Builder::new_current_thread()
            .thread_stack_size(1 << 46)
            .build()
            .unwrap();
        let pool = pool_of(&tokio, 4, Duration::from_secs(10), HOUR_NS);
        let log = log();
        assert_eq!(
            submit(&pool, log, 0, false).err().map(|e| e.status),
            Some(TB_ERR_OS),
            "no drainer could start: the submission takes its job back"
        );
        pool.recheck();
        assert!(
            !pool.lock().recheck_armed,
            "the recheck its failure armed found no job and stopped"
        );
        {
            // A drainer starting, as a submission on another thread reserves it.
            let mut state = pool.lock();
            state.drainers += 1;
            state.starting += 1;
        }
        let waiting = submit(&pool, log, 1, false).expect("left to the starting drainer");
        assert!(!pool.spawn_drainer(), "the OS refuses it");
        let armed = |pool: &Pool| {
            let state = pool.lock();
            (state.recheck_armed, state.queued, state.drainers)
        };
        assert_eq!(armed(&pool), (true, 1, 0), "a recheck will try again");
        pool.recheck();
        assert_eq!(armed(&pool), (true, 1, 0), "refused again: and again later");
        end(&pool, &[log]);
        assert_eq!(waiting.outcome().map(|o| o.status), Some(TB_ERR_SHUTDOWN));
        assert!(lock!(log.ran).is_empty());
    }

    #[test]
    fn jobs_left_to_a_busy_drainer_go_through_the_inbox_in_order() {
        let busy = Busy::new(HOUR_NS);
        assert_eq!(
            busy.in_inbox(),
            None,
            "closed while no job was left to a drainer"
        );
        let _second = busy.submit(1).unwrap();
        assert_eq!(
            busy.in_inbox(),
            Some(0),
            "job 1 was left to the busy drainer: the inbox opened"
        );
        let later: Vec<_> = (2..5).map(|n| busy.submit(n).unwrap()).collect();
        assert_eq!(busy.in_inbox(), Some(3), "the next jobs went into it");
        let s = busy.pool.snapshot();
        assert_eq!((s.queued, s.running, s.submitted), (4, 1, 5), "and count");
        assert!(matches!(job::cancel(&later[1]), Cancelled::Claimed));
        assert_eq!(later[1].outcome().unwrap().status, TB_ERR_CANCELLED);
        assert_eq!(
            busy.in_inbox(),
            Some(0),
            "moved into the queue to be cancelled"
        );
        assert_eq!(busy.pool.snapshot().queued, 3);
        let _last = busy.submit(5).unwrap();
        assert_eq!(busy.in_inbox(), Some(1), "still open");
        busy.log.go.store(true, Ordering::Release);
        while busy.pool.snapshot().idle == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*lock!(busy.log.ran), [0, 1, 2, 4, 5], "in submission order");
        assert_eq!(
            busy.in_inbox(),
            None,
            "closed by the drainer before it slept"
        );
        let s = busy.pool.snapshot();
        assert_eq!((s.queued, s.running, s.submitted), (0, 0, 6));
        assert!(busy.first.is_finished_now());
    }

    #[test]
    fn closing_the_pool_takes_the_jobs_in_the_inbox_too() {
        let busy = Busy::new(HOUR_NS);
        let queued: Vec<_> = (1..4).map(|n| busy.submit(n).unwrap()).collect();
        assert_eq!(busy.in_inbox(), Some(2));
        let taken = busy.pool.close();
        assert_eq!(busy.in_inbox(), None);
        let ids = |tasks: &[Arc<Task>]| tasks.iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(ids(&taken), ids(&queued), "all of them, in order");
        assert_eq!(busy.pool.snapshot().queued, 0);
        assert_eq!(
            busy.submit(4).err().map(|e| e.status),
            Some(TB_ERR_SHUTDOWN)
        );
        busy.log.go.store(true, Ordering::Release);
        assert!(busy.pool.wait_idle(None));
        assert_eq!(*lock!(busy.log.ran), [0], "none of them ran");
        for task in &taken {
            assert!(task.claim());
            job::abandon(&busy.pool, task, TB_ERR_SHUTDOWN);
        }
    }

    #[test]
    fn an_inbox_open_for_its_time_sends_the_next_job_through_the_lock() {
        let busy = Busy::new(0);
        let _opened = busy.submit(1).unwrap();
        assert_eq!(busy.in_inbox(), Some(0));
        let _through = busy.submit(2).unwrap();
        assert_eq!(
            (busy.in_inbox(), busy.pool.lock().queued),
            (Some(0), 2),
            "job 2 was queued under the lock, and the inbox opened again"
        );
        busy.log.go.store(true, Ordering::Release);
        while lock!(busy.log.ran).len() < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*lock!(busy.log.ran), [0, 1, 2]);
    }

    /// A drainer gathering jobs stops looking once no new job came since its last look: at its
    /// first look if none came (or the inbox is closed), at its second if some came before it
    /// began and no more after. A caller about to wait for a queued job stops it at once.
    #[test]
    fn gathering_stops_when_no_new_job_came_or_a_caller_waits() {
        let busy = Busy::new(HOUR_NS);
        let gather = || busy.pool.gather(HOUR_NS);
        assert_eq!(gather(), Gathered::Quiet(0), "closed: nothing comes");
        let _opened = busy.submit(1).unwrap();
        assert_eq!(busy.in_inbox(), Some(0));
        assert_eq!(gather(), Gathered::Quiet(0), "open, and nothing came");
        let jobs: Vec<_> = (2..7).map(|n| busy.submit(n).unwrap()).collect();
        assert_eq!(gather(), Gathered::Quiet(5), "five came, then no more");
        assert_eq!(busy.in_inbox(), Some(5), "gathering takes nothing");
        job::hurry(&jobs[2]);
        assert_eq!(gather(), Gathered::Hurried);
        assert_eq!(
            gather(),
            Gathered::Quiet(5),
            "the drainer that stopped cleared it"
        );
        job::hurry(&busy.first);
        assert_eq!(gather(), Gathered::Quiet(5), "only a queued job hurries");
        let _more: Vec<_> = (7..7 + GATHER_JOBS)
            .map(|n| busy.submit(n).unwrap())
            .collect();
        assert_eq!(gather(), Gathered::Many);
    }

    /// A drainer begins to gather jobs once enough takes in a row found some, with a short
    /// limit that doubles while jobs keep coming until it; a take that finds none pauses the
    /// gathering, and a caller waiting for a queued job stops it.
    #[test]
    fn a_drainer_gathers_jobs_only_while_they_keep_coming() {
        let mut gathering = Gathering::default();
        for _ in 1..GATHER_AFTER_TAKES {
            gathering.took(true);
            assert_eq!(gathering.next(), None, "not enough takes in a row yet");
        }
        gathering.took(true);
        assert_eq!(gathering.next(), Some(GATHER_MIN_NS));
        gathering.ended(Gathered::Limit);
        assert_eq!(gathering.next(), Some(2 * GATHER_MIN_NS));
        for _ in 0..20 {
            gathering.ended(Gathered::Limit);
        }
        assert_eq!(gathering.next(), Some(GATHER_MAX_NS));
        gathering.ended(Gathered::Quiet(3));
        gathering.ended(Gathered::Many);
        assert_eq!(gathering.next(), Some(GATHER_MAX_NS), "unchanged");
        gathering.took(false);
        assert_eq!(gathering.next(), None, "nothing came: no gathering");
        gathering.took(true);
        assert_eq!(gathering.next(), Some(GATHER_MAX_NS), "jobs come again");
        gathering.ended(Gathered::Hurried);
        assert_eq!(gathering, Gathering::default(), "back to the start");
    }

    /// A drainer gathering jobs that keep coming stops at its time limit.
    #[test]
    fn gathering_jobs_that_keep_coming_ends_at_the_limit() {
        let busy = Busy::new(HOUR_NS);
        let _opened = busy.submit(1).unwrap();
        let gathering = AtomicBool::new(true);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                // Fewer than the inbox holds: a full inbox would close and empty.
                for n in 2..2 + 2 * GATHER_JOBS {
                    if !gathering.load(Ordering::Acquire) {
                        break;
                    }
                    busy.submit(n).unwrap();
                }
            });
            wait_for("a job comes", || busy.in_inbox().unwrap_or(0) > 0);
            // Shorter than a look: the only look comes at the limit, with new jobs since.
            let stopped = busy.pool.gather(GATHER_LOOK_NS / 2);
            gathering.store(false, Ordering::Release);
            assert!(
                matches!(stopped, Gathered::Limit | Gathered::Many),
                "{stopped:?}"
            );
        });
    }

    /// An idle drainer whose keep-alive runs out takes what the inbox holds, even with the
    /// queue empty: the inbox may have opened while it slept (its jobs left to a drainer inside
    /// a job that turned out long), and no other drainer may come for them.
    #[test]
    fn a_drainer_at_the_end_of_its_keep_alive_takes_the_inbox_jobs() {
        let tokio = undriven();
        // Long enough for this thread to see the drainer asleep before it leaves (Miri
        // interprets a thousand times slower than native, on a clock at native speed).
        let keep_alive = Duration::from_millis(if cfg!(miri) { 2_000 } else { 100 });
        let pool = pool_of(&tokio, 1, keep_alive, HOUR_NS);
        let log = log();
        let _ends = Ends(&pool, &[log]);
        submit(&pool, log, 0, false).unwrap();
        // Job 1 goes into the inbox under the pool's lock while the drainer sleeps: it cannot
        // leave its wait before (it takes the lock back first), so its keep-alive runs out
        // with job 1 there, however late this thread runs.
        wait_for("the drainer sleeps", || {
            let mut state = pool.lock();
            if state.idle == 0 {
                return false;
            }
            submit_to_inbox_locked(&pool, &mut state, log, 1, false);
            true
        });
        wait_for("job 1 runs", || lock!(log.ran).len() == 2);
    }

    /// When a job's end shows the jobs are long after all, its drainer closes the inbox, and
    /// each job the inbox held, but the one that drainer takes next, wakes a sleeping drainer,
    /// as its submission would have if it had come then.
    #[test]
    fn jobs_turning_long_close_the_inbox_and_wake_a_sleeping_drainer() {
        let tokio = undriven();
        let pool = pool_of(&tokio, 2, Duration::from_secs(60), HOUR_NS);
        let (long, rest) = (log(), log());
        let _ends = Ends(&pool, &[long, rest]);
        submit(&pool, long, 0, true).unwrap();
        wait_for("job 0 runs", || pool.snapshot().running == 1);
        submit(&pool, rest, 1, false).unwrap();
        wait_for("a second drainer ran job 1 and sleeps", || {
            let s = pool.snapshot();
            (s.threads, s.idle, lock!(rest.ran).len()) == (2, 1, 1)
        });
        // Job 1 ran for microseconds, or for more on a slow machine (under Miri it counts
        // as long): the jobs are quick until job 0 ends.
        pool.average_run_ns.store(0, Ordering::Relaxed);
        submit_to_inbox(&pool, rest, 2, true);
        submit_to_inbox(&pool, rest, 3, true);
        // Job 0 has run for milliseconds: its end makes the jobs long.
        long.go.store(true, Ordering::Release);
        wait_for("jobs 2 and 3 run at once", || {
            pool.snapshot().running == 2 && lock!(rest.ran).len() == 3
        });
        assert!(!pool.jobs_are_quick());
        assert!(!pool.lock().inbox_open);
    }
}
