//! The completion state machine every task goes through, and the table of task handles.
//!
//! ```text
//!            start (pool)                 begin_completion            settle
//!   QUEUED ----------------> RUNNING ------------------> COMPLETING --------> FINISHED
//!      |                        ^ cancel sets the CANCEL bit
//!      +--- claim (cancel, shutdown) ---------------------->+
//! ```
//!
//! The phase and the CANCEL bit share one atomic word, so every transition is a single
//! compare-and-swap and exactly one thread wins each of them: the winner of the move out of
//! QUEUED owns the job's payload, the winner of the move into COMPLETING records the outcome,
//! runs `free_arg` beforehand and the completion callback afterwards. A task is FINISHED only
//! once its completion callback has returned, so a waiter that wakes up may free what the
//! callback used.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::completion::{tb_outcome, tb_task};
use crate::context;
use crate::error::{tb_status, Error, TB_ERR_ALREADY, TB_OK};
use crate::handle::{HandleTable, TAG_TASK};
use crate::queue::Queue;
use crate::runtime::{self, tb_runtime, Runtime};
use crate::stall::{self, TB_STALL_COMPLETION};
use crate::sync::{lock, wait_until};

/// Every live task handle.
pub(crate) static TASKS: HandleTable<Task> = HandleTable::new(TAG_TASK);

pub(crate) const QUEUED: u8 = 0;
pub(crate) const RUNNING: u8 = 1;
const COMPLETING: u8 = 2;
const FINISHED: u8 = 3;
const PHASE_MASK: u8 = 3;
const CANCEL: u8 = 4;

/// What kind of work a task does, with the parts only that kind needs.
pub(crate) enum Work {
    Blocking(crate::job::Blocking),
    Async(crate::timer::Async),
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
        *lock(&self.fired) = true;
        self.cv.notify_all();
    }

    /// Sleeps until a watched task finishes or `deadline` passes; false on timeout.
    pub(crate) fn sleep(&self, deadline: Option<Instant>) -> bool {
        let mut fired = lock(&self.fired);
        while !*fired {
            let (guard, expired) = wait_until(&self.cv, fired, deadline);
            fired = guard;
            if expired {
                return false;
            }
        }
        true
    }
}

struct Inner {
    outcome: tb_outcome,
    callback: Option<Callback>,
    callback_registered: bool,
    notify: Option<(Arc<Queue>, u64)>,
    notify_registered: bool,
    waiters: u32,
    watchers: Vec<Arc<Watcher>>,
}

/// One unit of work submitted by C: a blocking job, a sleep or a timer.
pub(crate) struct Task {
    pub(crate) id: u64,
    pub(crate) submitted: Instant,
    pub(crate) work: Work,
    state: AtomicU8,
    inner: Mutex<Inner>,
    finished: Condvar,
}

/// What `cancel` did.
pub(crate) enum Cancelled {
    /// The task was queued and is now claimed by the caller, who must end it.
    Claimed,
    /// The task is running; its CANCEL bit is now set.
    Requested,
    /// The task already has an outcome.
    TooLate,
}

impl Task {
    pub(crate) fn new(id: u64, work: Work, phase: u8) -> Self {
        Task {
            id,
            submitted: Instant::now(),
            work,
            state: AtomicU8::new(phase),
            inner: Mutex::new(Inner {
                outcome: tb_outcome::default(),
                callback: None,
                callback_registered: false,
                notify: None,
                notify_registered: false,
                waiters: 0,
                watchers: Vec::new(),
            }),
            finished: Condvar::new(),
        }
    }

    fn transition(&self, f: impl Fn(u8) -> Option<u8>) -> Result<u8, u8> {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, f)
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.state.load(Ordering::Acquire) & PHASE_MASK == FINISHED
    }

    /// Like [`is_finished`](Self::is_finished), but a task being marked finished right now
    /// (its tag already pushed) counts as finished: the answer waits for that critical section.
    pub(crate) fn is_finished_now(&self) -> bool {
        self.is_finished() || {
            let _settled = lock(&self.inner);
            self.is_finished()
        }
    }

    /// True once a cancel was requested while the task ran.
    pub(crate) fn cancel_requested(&self) -> bool {
        self.state.load(Ordering::Acquire) & CANCEL != 0
    }

    /// QUEUED -> RUNNING. False if the task was claimed (cancelled or shut down) first.
    pub(crate) fn start(&self) -> bool {
        self.transition(|s| (s == QUEUED).then_some(RUNNING))
            .is_ok()
    }

    /// QUEUED -> COMPLETING for a job that will never run. True if the caller won it.
    pub(crate) fn claim(&self) -> bool {
        self.transition(|s| (s == QUEUED).then_some(COMPLETING))
            .is_ok()
    }

    /// Cancels: claims a queued task, or sets the CANCEL bit of a running one.
    pub(crate) fn cancel(&self) -> Cancelled {
        match self.transition(|s| match s & PHASE_MASK {
            QUEUED => Some(COMPLETING | CANCEL),
            RUNNING => Some(s | CANCEL),
            _ => None,
        }) {
            Ok(QUEUED) => Cancelled::Claimed,
            Ok(_) => Cancelled::Requested,
            Err(_) => Cancelled::TooLate,
        }
    }

    /// RUNNING -> COMPLETING. Returns whether a cancel had been requested, or None if the task
    /// was not running (someone else is completing it).
    pub(crate) fn begin_completion(&self) -> Option<bool> {
        self.transition(|s| (s & PHASE_MASK == RUNNING).then_some(COMPLETING | (s & CANCEL)))
            .ok()
            .map(|previous| previous & CANCEL != 0)
    }

    /// Records the outcome, runs the completion callback, then marks the task FINISHED and
    /// wakes its waiters. Only the thread that moved the task into COMPLETING may call it.
    pub(crate) fn settle(&self, outcome: tb_outcome) {
        let mut inner = lock(&self.inner);
        inner.outcome = outcome;
        if let Some(callback) = inner.callback.take() {
            drop(inner);
            callback.call(self.id, &outcome);
            inner = lock(&self.inner);
        }
        // The tag goes in before the task counts as finished, in the same critical section: a
        // thread that sees the task finished also finds its tag, and one that drains the tag and
        // then asks for the outcome waits for this lock and finds the task finished.
        if let Some((queue, tag)) = inner.notify.take() {
            queue.push(tag);
        }
        self.state
            .fetch_add(FINISHED - COMPLETING, Ordering::AcqRel);
        let wake = inner.waiters > 0;
        let watchers = std::mem::take(&mut inner.watchers);
        drop(inner);
        if wake {
            self.finished.notify_all();
        }
        for watcher in watchers {
            watcher.fire();
        }
    }

    /// Registers a queue to receive `tag` when the task finishes, or pushes it now if it has.
    pub(crate) fn notify(&self, queue: Arc<Queue>, tag: u64) -> Result<(), Error> {
        let mut inner = lock(&self.inner);
        if inner.notify_registered {
            return Err(Error::new(
                TB_ERR_ALREADY,
                "a queue notification is already registered for this task",
            ));
        }
        inner.notify_registered = true;
        if self.is_finished() {
            drop(inner);
            queue.push(tag);
        } else {
            inner.notify = Some((queue, tag));
        }
        Ok(())
    }

    /// Registers the completion callback, or runs it now (on this thread) if the task finished.
    pub(crate) fn on_complete(&self, callback: Callback) -> Result<(), Error> {
        let mut inner = lock(&self.inner);
        if inner.callback_registered {
            return Err(Error::new(
                TB_ERR_ALREADY,
                "a completion callback is already registered for this task",
            ));
        }
        inner.callback_registered = true;
        if self.is_finished() {
            let outcome = inner.outcome;
            drop(inner);
            callback.call(self.id, &outcome);
        } else {
            inner.callback = Some(callback);
        }
        Ok(())
    }

    /// The outcome, once the task is finished.
    pub(crate) fn outcome(&self) -> Option<tb_outcome> {
        self.is_finished().then(|| lock(&self.inner).outcome)
    }

    /// Blocks until the task is finished or `deadline` passes (None: no limit). True if finished.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        if self.is_finished() {
            return true;
        }
        let mut inner = lock(&self.inner);
        while !self.is_finished() {
            inner.waiters += 1;
            let (guard, expired) = wait_until(&self.finished, inner, deadline);
            inner = guard;
            inner.waiters -= 1;
            if expired {
                return false;
            }
        }
        true
    }

    /// Adds `watcher` to be fired when the task finishes. False if it already has.
    pub(crate) fn watch(&self, watcher: &Arc<Watcher>) -> bool {
        let mut inner = lock(&self.inner);
        if self.is_finished() {
            return false;
        }
        inner.watchers.push(Arc::clone(watcher));
        true
    }

    pub(crate) fn unwatch(&self, watcher: &Arc<Watcher>) {
        lock(&self.inner)
            .watchers
            .retain(|w| !Arc::ptr_eq(w, watcher));
    }
}

/// A task being submitted: its runtime is live and its id reserved but not yet live.
///
/// Dropped without [`publish`](Self::publish) (the submission failed), it gives the id back.
pub(crate) struct Submission {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) id: u64,
    out: *mut tb_task,
    published: bool,
}

impl Submission {
    /// Checks the out-param and the runtime, and reserves an id.
    pub(crate) fn start(rt: tb_runtime, out: *mut tb_task) -> Result<Self, Error> {
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let runtime = runtime::lookup(rt)?;
        let id = TASKS.reserve()?;
        Ok(Submission {
            runtime,
            id,
            out,
            published: false,
        })
    }

    /// Makes the task's handle live and gives it to the caller.
    pub(crate) fn publish(mut self, task: Arc<Task>) -> tb_status {
        TASKS.publish(self.id, task);
        self.published = true;
        // SAFETY: checked non-NULL; the caller provides space for a tb_task.
        unsafe { self.out.write(tb_task { id: self.id }) };
        TB_OK
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        if !self.published {
            TASKS.unreserve(self.id);
        }
    }
}

/// Microseconds from `from` to `to`, saturating.
pub(crate) fn micros_between(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX)
}
