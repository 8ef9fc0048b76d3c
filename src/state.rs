//! The completion state machine every task goes through.
//!
//! ```text
//!            start (pool)                 begin_completion            settle
//!   QUEUED ----------------> RUNNING ------------------> COMPLETING --------> FINISHED
//!      |                        ^ cancel sets the CANCEL bit
//!      +--- claim (cancel, shutdown) ---------------------->+
//! ```
//!
//! The phase, the CANCEL bit and the bits of the task's registrations (completion callback,
//! queue notification, watchers, sleeping waiters) share one atomic byte, so every transition
//! is a single compare-and-swap and exactly one thread wins each of them: the winner of the move out of
//! QUEUED owns the job's work (its callback and `arg`; a sleep or timer, which starts RUNNING,
//! has its work owned by whoever holds it armed), the winner of the move into COMPLETING
//! records the outcome in its place, runs `free_arg` beforehand and the completion callback
//! afterwards. A task is FINISHED only once its completion callback has returned, so a waiter
//! that wakes up may free what the callback used. Registrations and sleeping waiters use a
//! lock and condition variable shared by many tasks (a [`Stripe`]); a task without any never
//! takes a lock.
//!
//! This module knows nothing of pools, timers or Tokio, so that it can be model-checked with
//! loom: built with `--cfg tb_loom`, its atomics, mutexes and condition variables are loom's (see
//! the `loom_tests` module and the README's "Reliability" section).

use std::ffi::c_void;
use std::sync::Arc;
use std::time::Instant;

#[cfg(all(test, tb_loom))]
use loom::cell::UnsafeCell;
#[cfg(all(test, tb_loom))]
use loom::sync::{
    atomic::{AtomicU32, AtomicU8, Ordering},
    Condvar, Mutex, MutexGuard,
};
#[cfg(not(all(test, tb_loom)))]
use std::sync::{
    atomic::{AtomicU32, AtomicU8, Ordering},
    Condvar, Mutex, MutexGuard,
};

use crate::completion::{tb_outcome, tb_task};
use crate::context;
use crate::error::{Error, TB_ERR_ALREADY};
use crate::queue::Queue;
use crate::stall::{self, TB_STALL_COMPLETION};
use crate::sync::{lock, wait_until, Spin};

/// The standard `UnsafeCell` behind loom's interface (`with`, `with_mut`), so that the model
/// checks also check every access to a task's body for races.
#[cfg(not(all(test, tb_loom)))]
struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(all(test, tb_loom)))]
impl<T> UnsafeCell<T> {
    fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

pub(crate) const QUEUED: u8 = 0;
pub(crate) const RUNNING: u8 = 1;
const COMPLETING: u8 = 2;
const FINISHED: u8 = 3;
const PHASE_MASK: u8 = 3;
const CANCEL: u8 = 4;
/// Registrations, each set once (under the task's stripe lock) and never cleared: a completion
/// callback, a queue notification, `tb_wait_any` watchers, a thread sleeping until the task
/// finishes.
const CALLBACK: u8 = 8;
const NOTIFY: u8 = 16;
const WATCHED: u8 = 32;
const WAITING: u8 = 64;
/// A task with any of these bits finishes under its stripe lock (see [`State::settle`]).
const SLOW: u8 = CALLBACK | NOTIFY | WATCHED | WAITING;

/// How long a thread spins in [`State::wait`] before it sleeps: 4 to 30 us.
#[cfg(not(all(test, tb_loom)))]
const WAIT_SPIN_NS: (u64, u64) = (4_000, 30_000);
/// Loom explores every atomic load: model checks do not spin.
#[cfg(all(test, tb_loom))]
const WAIT_SPIN_NS: (u64, u64) = (0, 0);

thread_local! {
    static WAIT_SPIN: Spin = const { Spin::new(WAIT_SPIN_NS.0, WAIT_SPIN_NS.1) };
}

/// A completion callback and its argument.
pub(crate) struct Callback {
    func: unsafe extern "C" fn(*mut c_void, tb_task, *const tb_outcome),
    arg: *mut c_void,
}

// SAFETY: the C API documents that the callback runs on another thread with this `arg`.
unsafe impl Send for Callback {}

impl Callback {
    pub(crate) fn new(
        func: unsafe extern "C" fn(*mut c_void, tb_task, *const tb_outcome),
        arg: *mut c_void,
    ) -> Self {
        Callback { func, arg }
    }

    fn call(self, id: u64, outcome: &tb_outcome) {
        context::as_task(id, || {
            stall::timed(TB_STALL_COMPLETION, self.func as usize, self.arg, || {
                // SAFETY: a C function pointer and argument registered by the caller, called once.
                unsafe { (self.func)(self.arg, tb_task { id }, outcome) }
            })
        })
    }
}

/// Someone waiting for any of several tasks (`tb_wait_any`).
pub(crate) struct Watcher {
    fired: Mutex<bool>,
    cv: Condvar,
}

impl Watcher {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Watcher {
            fired: Mutex::new(false),
            cv: Condvar::new(),
        })
    }

    fn fire(&self) {
        *lock!(self.fired) = true;
        self.cv.notify_all();
    }

    /// Sleeps until a watched task finishes or `deadline` passes; false on timeout.
    pub(crate) fn sleep(&self, deadline: Option<Instant>) -> bool {
        let mut fired = lock!(self.fired);
        while !*fired {
            let (guard, expired) = wait_until!(self.cv, fired, deadline);
            fired = guard;
            if expired {
                return false;
            }
        }
        true
    }
}

/// The locks and condition variables that tasks share, picked by a task's address: a task's
/// registrations (its completion callback, queue notification and `tb_wait_any` watchers) are
/// guarded by its stripe's lock, and threads waiting for it sleep on its stripe's condition
/// variable. A task of its own would cost 12 bytes of lock and condition variable, and with a
/// million timers every byte of a task counts a megabyte; most tasks never take the lock at all
/// (see [`State::settle`]).
#[cfg_attr(not(all(test, tb_loom)), repr(align(128)))]
struct Stripe {
    lock: Mutex<()>,
    cv: Condvar,
}

/// How many stripes there are: a power of two. A multiplicative hash of a task's address picks
/// one (tasks allocated one after another fall on different stripes).
#[cfg(not(all(test, tb_loom)))]
const STRIPES: usize = 64;
/// One stripe in the model checks: each model has one task, and a stripe chosen by address
/// could differ from one execution of a model to the next, which loom does not allow.
#[cfg(all(test, tb_loom))]
const STRIPES: usize = 1;

#[cfg(not(all(test, tb_loom)))]
static STRIPE: [Stripe; STRIPES] = [const {
    Stripe {
        lock: Mutex::new(()),
        cv: Condvar::new(),
    }
}; STRIPES];

#[cfg(all(test, tb_loom))]
loom::lazy_static! {
    static ref STRIPE: [Stripe; STRIPES] = std::array::from_fn(|_| Stripe {
        lock: Mutex::new(()),
        cv: Condvar::new(),
    });
}

/// What few tasks have, under their stripe's lock: a completion callback, a queue to notify
/// (`tb_task_notify`) and `tb_wait_any` watchers.
#[derive(Default)]
struct Rare {
    callback: Option<Callback>,
    notify: Option<(Arc<Queue>, u64)>,
    watchers: Vec<Arc<Watcher>>,
}

/// What a task holds until it ends, then how it ended. They never live at once, so they share
/// the space, told apart by the task's phase: the work is there until the task settles (its
/// owner takes it out, or uses it in place, before), the outcome from then on.
union Body<W> {
    work: std::mem::ManuallyDrop<W>,
    outcome: tb_outcome,
}

/// The state of one task: its phase, work, outcome, callback, notification and waiters.
///
/// `W` is what the task runs (a job's callback, a timer's tick, with their `arg`). It belongs
/// to whoever owns the task's phase: the thread that moved it out of QUEUED, or for a task
/// started RUNNING whoever the caller says owns it (a timer's `Armed`). Only that owner may
/// touch it ([`with_work`](Self::with_work)), and takes it out before the task settles: the
/// state never drops it (the outcome takes its place when the task settles, and is read only
/// once the task is FINISHED).
pub(crate) struct State<W> {
    pub(crate) id: u64,
    /// The phase, the CANCEL bit and which registrations the task has (see [`SLOW`]).
    state: AtomicU8,
    /// The task's index in its bucket while it is armed in a timer queue (sleeps and timers),
    /// kept by the queue under its lock. Here, beside the state byte, because it fills the
    /// space the byte would leave empty.
    pub(crate) place: AtomicU32,
    /// Written only under the task's stripe lock, with the registration's bit set.
    rare: UnsafeCell<Option<Box<Rare>>>,
    body: UnsafeCell<Body<W>>,
}

// SAFETY: `body` is touched by one thread at a time: the owner of the task's work until it
// settles (for a job, the winner of an atomic move between phases; for a sleep or timer, the
// holder of its `Armed`, handed on under the timer queue's lock or through Tokio's spawn, both
// of which order one holder's accesses before the next's), then only read, by threads that
// saw the task FINISHED, which the owner set after writing the outcome. `rare` is touched only
// under the task's stripe lock.
unsafe impl<W: Send> Sync for State<W> {}

/// What `cancel` did.
pub(crate) enum Cancelled {
    /// The task was queued and is now claimed by the caller, who must end it.
    Claimed,
    /// The task is running; its CANCEL bit is now set.
    Requested,
    /// The task already has an outcome.
    TooLate,
}

impl<W> State<W> {
    pub(crate) fn new(id: u64, phase: u8, work: W) -> Self {
        State {
            id,
            state: AtomicU8::new(phase),
            place: AtomicU32::new(0),
            rare: UnsafeCell::new(None),
            body: UnsafeCell::new(Body {
                work: std::mem::ManuallyDrop::new(work),
            }),
        }
    }

    /// Runs `f` on the task's work.
    ///
    /// # Safety
    /// The caller must own the task's phase (see [`State`]), the task must not have settled,
    /// and what `f` takes out of the work is not there for the next caller.
    pub(crate) unsafe fn with_work<R>(&self, f: impl FnOnce(&mut W) -> R) -> R {
        self.body.with_mut(|body| f(&mut (*body).work))
    }

    /// The outcome of a FINISHED task.
    fn finished_outcome(&self) -> tb_outcome {
        debug_assert!(self.is_finished());
        // SAFETY: written once before the task became FINISHED, never again.
        self.body.with(|body| unsafe { (*body).outcome })
    }

    /// This task's stripe.
    fn stripe(&self) -> &'static Stripe {
        let address = std::ptr::from_ref(self) as usize as u64;
        let hash = (address >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &STRIPE[(hash >> 40) as usize & (STRIPES - 1)]
    }

    /// Runs `f` on the task's registrations. The caller holds the task's stripe lock (`_held`).
    fn rare<R>(
        &self,
        _held: &MutexGuard<'_, ()>,
        f: impl FnOnce(&mut Option<Box<Rare>>) -> R,
    ) -> R {
        // SAFETY: `rare` is touched only under the stripe lock, which the caller holds.
        self.rare.with_mut(|rare| f(unsafe { &mut *rare }))
    }

    /// Sets `bits` (a registration's, under the stripe lock) and returns the state before.
    fn mark(&self, bits: u8) -> u8 {
        self.state.fetch_or(bits, Ordering::AcqRel)
    }

    fn transition(&self, f: impl Fn(u8) -> Option<u8>) -> Result<u8, u8> {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, f)
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.state.load(Ordering::Acquire) & PHASE_MASK == FINISHED
    }

    /// True while the task is QUEUED: nobody started or claimed it.
    pub(crate) fn is_queued(&self) -> bool {
        self.state.load(Ordering::Acquire) & PHASE_MASK == QUEUED
    }

    /// Like [`is_finished`](Self::is_finished), but a task being marked finished right now
    /// (its queue tag already pushed) counts as finished: the answer waits for that critical
    /// section. Without a queue notification there is no tag to see early, and no lock taken:
    /// threads polling one task then only read it.
    pub(crate) fn is_finished_now(&self) -> bool {
        self.is_finished()
            || (self.state.load(Ordering::Acquire) & NOTIFY != 0 && {
                let _settled = lock!(self.stripe().lock);
                self.is_finished()
            })
    }

    /// True once a cancel was requested while the task ran.
    pub(crate) fn cancel_requested(&self) -> bool {
        self.state.load(Ordering::Acquire) & CANCEL != 0
    }

    /// QUEUED -> RUNNING. False if the task was claimed (cancelled or shut down) first.
    pub(crate) fn start(&self) -> bool {
        self.transition(|s| (s & PHASE_MASK == QUEUED).then_some(s + RUNNING))
            .is_ok()
    }

    /// QUEUED -> COMPLETING for a job that will never run. True if the caller won it.
    pub(crate) fn claim(&self) -> bool {
        self.transition(|s| (s & PHASE_MASK == QUEUED).then_some(s + COMPLETING))
            .is_ok()
    }

    /// Cancels: claims a queued task, or sets the CANCEL bit of a running one.
    pub(crate) fn cancel(&self) -> Cancelled {
        match self.transition(|s| match s & PHASE_MASK {
            QUEUED => Some((s + COMPLETING) | CANCEL),
            RUNNING => Some(s | CANCEL),
            _ => None,
        }) {
            Ok(before) if before & PHASE_MASK == QUEUED => Cancelled::Claimed,
            Ok(_) => Cancelled::Requested,
            Err(_) => Cancelled::TooLate,
        }
    }

    /// RUNNING -> COMPLETING. Returns whether a cancel had been requested, or None if the task
    /// was not running (someone else is completing it).
    pub(crate) fn begin_completion(&self) -> Option<bool> {
        self.transition(|s| (s & PHASE_MASK == RUNNING).then_some(s + (COMPLETING - RUNNING)))
            .ok()
            .map(|before| before & CANCEL != 0)
    }

    /// Records the outcome in place of the work, runs the completion callback, then marks the
    /// task FINISHED and wakes its waiters. Only the thread that moved the task into COMPLETING
    /// may call it, once it has taken what it needed out of the work (its `arg` already freed).
    ///
    /// A task without registrations (no callback, notification, watcher or sleeping waiter: the
    /// bits of [`SLOW`]) becomes FINISHED with one compare-and-swap and no lock; a
    /// registration sets its bit under the stripe lock, so that either it comes first and
    /// the swap fails (the task then finishes under the lock, as below), or the swap comes
    /// first and the registration finds the task FINISHED.
    pub(crate) fn settle(&self, outcome: tb_outcome) {
        debug_assert_eq!(
            self.state.load(Ordering::Relaxed) & PHASE_MASK,
            COMPLETING,
            "only the owner of a completing task settles it"
        );
        // SAFETY: the caller owns the phase (COMPLETING), and nobody reads the body before the
        // task is FINISHED, below.
        self.body
            .with_mut(|body| unsafe { (*body).outcome = outcome });
        let quick = self.transition(|s| (s & SLOW == 0).then_some(s + (FINISHED - COMPLETING)));
        if quick.is_err() {
            self.settle_registered(&outcome);
        }
    }

    /// The end of [`settle`](Self::settle) for a task with registrations.
    fn settle_registered(&self, outcome: &tb_outcome) {
        let stripe = self.stripe();
        let mut held = lock!(stripe.lock);
        let callback = self.rare(&held, |rare| rare.as_mut().and_then(|r| r.callback.take()));
        if let Some(callback) = callback {
            drop(held);
            callback.call(self.id, outcome);
            held = lock!(stripe.lock);
        }
        // The tag goes in before the task counts as finished, in the same critical section: a
        // thread that sees the task finished also finds its tag, and one that drains the tag and
        // then asks for the outcome waits for this lock and finds the task finished.
        let rare = self.rare(&held, Option::take);
        if let Some((queue, tag)) = rare.as_ref().and_then(|rare| rare.notify.as_ref()) {
            queue.push(*tag);
        }
        let before = self
            .state
            .fetch_add(FINISHED - COMPLETING, Ordering::AcqRel);
        drop(held);
        if before & WAITING != 0 {
            stripe.cv.notify_all();
        }
        for watcher in rare.iter().flat_map(|rare| rare.watchers.iter()) {
            watcher.fire();
        }
    }

    /// Registers a queue to receive `tag` when the task finishes, or pushes it now if it has.
    pub(crate) fn notify(&self, queue: Arc<Queue>, tag: u64) -> Result<(), Error> {
        match self.register_once(NOTIFY, "a queue notification")? {
            Some(held) => self.keep(&held, |rare| rare.notify = Some((queue, tag))),
            None => queue.push(tag),
        }
        Ok(())
    }

    /// Registers the completion callback, or runs it now (on this thread) if the task finished.
    pub(crate) fn on_complete(&self, callback: Callback) -> Result<(), Error> {
        match self.register_once(CALLBACK, "a completion callback")? {
            Some(held) => self.keep(&held, |rare| rare.callback = Some(callback)),
            None => callback.call(self.id, &self.finished_outcome()),
        }
        Ok(())
    }

    /// Sets the `bit` of a registration that a task takes once (`what` names it), under the
    /// stripe lock. Returns the lock held if the task has not finished (the caller keeps the
    /// registration for [`settle`](Self::settle)), or None if it has (the caller acts now,
    /// unlocked); `TB_ERR_ALREADY` if the bit was set.
    fn register_once(&self, bit: u8, what: &str) -> Result<Option<MutexGuard<'static, ()>>, Error> {
        let held = lock!(self.stripe().lock);
        let before = self.mark(bit);
        if before & bit != 0 {
            return Err(Error::text(
                TB_ERR_ALREADY,
                format!("{what} is already registered for this task"),
            ));
        }
        Ok((before & PHASE_MASK != FINISHED).then_some(held))
    }

    /// Keeps a registration in the task's `Rare` part, allocated on the first one. The caller
    /// holds the task's stripe lock (`held`).
    fn keep(&self, held: &MutexGuard<'_, ()>, f: impl FnOnce(&mut Rare)) {
        self.rare(held, |rare| f(rare.get_or_insert_with(Box::default)));
    }

    /// The outcome, once the task is finished (as [`is_finished_now`](Self::is_finished_now)
    /// tells it: a task being marked finished right now, its queue tag already pushed and
    /// maybe drained, counts as finished).
    pub(crate) fn outcome(&self) -> Option<tb_outcome> {
        self.is_finished_now().then(|| self.finished_outcome())
    }

    /// Blocks until the task is finished or `deadline` passes (None: no limit). True if finished.
    ///
    /// It first spins for a few microseconds: a quick job often finishes meanwhile, and then
    /// the waiter needs no futex wake-up from another CPU (about 20 us). The spin adapts per
    /// thread (see [`Spin`]): on a busy machine, or for long tasks, it shrinks to a few
    /// microseconds and leaves the CPU to the threads doing the work. Then it sleeps on the
    /// task's stripe, having set the WAITING bit under the stripe lock, so that the task
    /// finishes under that lock and wakes the stripe's sleepers (those of other tasks of the
    /// stripe wake too, and sleep again).
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        if self.is_finished() {
            return true;
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            // A poll: no spin (whose length would adapt to it), and no WAITING bit, which
            // would make the task finish under its stripe lock for nothing.
            return self.is_finished();
        }
        let caught = WAIT_SPIN.with(|spin| spin.spin(deadline, || self.is_finished()));
        if caught {
            return true;
        }
        let stripe = self.stripe();
        let mut held = lock!(stripe.lock);
        while self.mark(WAITING) & PHASE_MASK != FINISHED {
            let (guard, expired) = wait_until!(stripe.cv, held, deadline);
            held = guard;
            if expired {
                return false;
            }
        }
        true
    }

    /// Adds `watcher` to be fired when the task finishes. False if it already has.
    pub(crate) fn watch(&self, watcher: &Arc<Watcher>) -> bool {
        let held = lock!(self.stripe().lock);
        if self.mark(WATCHED) & PHASE_MASK == FINISHED {
            return false;
        }
        self.keep(&held, |rare| rare.watchers.push(Arc::clone(watcher)));
        true
    }

    pub(crate) fn unwatch(&self, watcher: &Arc<Watcher>) {
        let held = lock!(self.stripe().lock);
        self.rare(&held, |rare| {
            if let Some(rare) = rare {
                rare.watchers.retain(|w| !Arc::ptr_eq(w, watcher));
            }
        });
    }
}

/// Model checks: every interleaving loom can find of the races the C API allows on one task.
/// `RUSTFLAGS="--cfg tb_loom" cargo test --release --lib loom`.
#[cfg(all(test, tb_loom))]
mod loom_tests {
    use super::*;
    use crate::error::{TB_ERR_CANCELLED, TB_OK};
    // Counted outside the model: read only after every model thread has joined.
    use loom::thread;
    use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};

    /// Runs `f` under loom and prints how many interleavings it explored.
    /// The count is the model's own: the test harness runs the models in parallel.
    fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
        let runs = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&runs);
        loom::model(move || {
            counted.fetch_add(1, StdOrdering::SeqCst);
            f();
        });
        println!("{name}: {} interleavings", runs.load(StdOrdering::SeqCst));
    }

    fn outcome(status: i32) -> tb_outcome {
        tb_outcome {
            status,
            ..tb_outcome::default()
        }
    }

    /// What an async task's end does: settle with OK, or CANCELLED if a cancel came first.
    fn complete(state: &State<()>) -> bool {
        match state.begin_completion() {
            Some(cancelled) => {
                state.settle(outcome(if cancelled { TB_ERR_CANCELLED } else { TB_OK }));
                true
            }
            None => false,
        }
    }

    #[test]
    fn loom_cancel_racing_completion_agrees_with_the_outcome() {
        model("cancel vs completion", || {
            let state = Arc::new(State::new(1, RUNNING, ()));
            let other = Arc::clone(&state);
            let canceller = thread::spawn(move || {
                let cancelled = other.cancel();
                // Asking for the outcome while the task completes: none, or the final one.
                if let Some(seen) = other.outcome() {
                    assert_ne!(seen.status, -1);
                }
                cancelled
            });
            assert!(complete(&state), "only the task completes itself");
            let cancelled = canceller.join().unwrap();
            let status = state.outcome().expect("finished").status;
            match cancelled {
                Cancelled::Requested => assert_eq!(status, TB_ERR_CANCELLED),
                Cancelled::TooLate => assert_eq!(status, TB_OK),
                Cancelled::Claimed => panic!("a running task cannot be claimed"),
            }
        });
    }

    #[test]
    fn loom_cancel_racing_start_has_one_winner() {
        model("cancel vs start", || {
            // The winner takes the work, as a drainer or a cancel takes a job's payload.
            let state = Arc::new(State::new(1, QUEUED, Some(7)));
            let other = Arc::clone(&state);
            let canceller = thread::spawn(move || match other.cancel() {
                Cancelled::Claimed => {
                    // SAFETY: claimed: this thread owns the work.
                    assert_eq!(unsafe { other.with_work(Option::take) }, Some(7));
                    other.settle(outcome(TB_ERR_CANCELLED));
                    true
                }
                _ => false,
            });
            let started = state.start();
            if started {
                // SAFETY: started: this thread owns the work.
                assert_eq!(unsafe { state.with_work(Option::take) }, Some(7));
                assert!(state.begin_completion().is_some());
                state.settle(outcome(TB_OK));
            }
            let claimed = canceller.join().unwrap();
            assert!(started != claimed, "exactly one of start and claim wins");
            assert!(state.is_finished());
        });
    }

    /// A completion callback counting its calls in the `AtomicUsize` its `arg` points to.
    unsafe extern "C" fn count(arg: *mut c_void, _t: tb_task, _o: *const tb_outcome) {
        (*arg.cast::<AtomicUsize>()).fetch_add(1, StdOrdering::SeqCst);
    }

    /// A counting callback with its own counter (not a static: the models run in parallel).
    fn counter() -> (
        std::sync::Arc<AtomicUsize>,
        impl Fn() -> Callback + Send + 'static,
    ) {
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let arg = std::sync::Arc::as_ptr(&calls) as usize;
        (calls, move || Callback::new(count, arg as *mut c_void))
    }

    #[test]
    fn loom_on_complete_racing_settle_runs_once_and_before_finished() {
        model("on_complete vs settle", || {
            let (calls, callback) = counter();
            let state = Arc::new(State::new(1, RUNNING, ()));
            let other = Arc::clone(&state);
            let registrar = thread::spawn(move || {
                other.on_complete(callback()).unwrap();
                // Registered after the end: it ran here, already.
                other.is_finished()
            });
            assert!(complete(&state));
            let late = registrar.join().unwrap();
            assert_eq!(calls.load(StdOrdering::SeqCst), 1, "exactly once");
            if late {
                let (_, again) = counter();
                assert!(state.on_complete(again()).is_err());
            }
        });
    }

    #[test]
    fn loom_a_waiter_wakes_once_the_task_is_finished() {
        model("wait vs settle", || {
            let state = Arc::new(State::new(1, RUNNING, ()));
            let other = Arc::clone(&state);
            let waiter = thread::spawn(move || {
                assert!(other.wait(None));
                other
                    .outcome()
                    .expect("finished when the wait returns")
                    .status
            });
            assert!(complete(&state));
            assert_eq!(waiter.join().unwrap(), TB_OK);
        });
    }

    #[test]
    fn loom_a_watcher_added_racing_settle_fires_or_is_refused() {
        model("watch vs settle", || {
            let state = Arc::new(State::new(1, RUNNING, ()));
            let other = Arc::clone(&state);
            let watcher = Watcher::new();
            let added = Arc::clone(&watcher);
            let watching = thread::spawn(move || other.watch(&added));
            assert!(complete(&state));
            if watching.join().unwrap() {
                assert!(watcher.sleep(None), "a watcher added in time is fired");
            }
        });
    }

    /// Two tasks share the model's one stripe, each with a waiter that may sleep on it while
    /// the other task completes: a wake-up meant for one task reaches the other's waiter too,
    /// and neither waiter misses its own (notifying one sleeper instead of all would).
    #[test]
    fn loom_waiters_of_two_tasks_sharing_a_stripe_both_wake() {
        model("two tasks on one stripe", || {
            let first = Arc::new(State::new(1, RUNNING, ()));
            let second = Arc::new(State::new(2, RUNNING, ()));
            let (a, b) = (Arc::clone(&first), Arc::clone(&second));
            let waiters = [
                thread::spawn(move || a.wait(None)),
                thread::spawn(move || b.wait(None)),
            ];
            assert!(complete(&second));
            assert!(complete(&first));
            for waiter in waiters {
                assert!(waiter.join().unwrap());
            }
        });
    }

    #[test]
    fn loom_cancel_on_complete_wait_and_completion_all_at_once() {
        model("cancel + on_complete + wait vs completion", || {
            let (calls, callback) = counter();
            let state = Arc::new(State::new(1, RUNNING, ()));
            let (a, b, c) = (Arc::clone(&state), Arc::clone(&state), Arc::clone(&state));
            let canceller = thread::spawn(move || a.cancel());
            let registrar = thread::spawn(move || b.on_complete(callback()).unwrap());
            let completer = thread::spawn(move || complete(&c));
            assert!(state.wait(None));
            let status = state.outcome().unwrap().status;
            registrar.join().unwrap();
            assert!(completer.join().unwrap());
            match canceller.join().unwrap() {
                Cancelled::Requested => assert_eq!(status, TB_ERR_CANCELLED),
                Cancelled::TooLate => assert_eq!(status, TB_OK),
                Cancelled::Claimed => panic!("a running task cannot be claimed"),
            }
            assert_eq!(calls.load(StdOrdering::SeqCst), 1, "exactly once");
        });
    }
}
