//! A runtime's timer queue: every armed sleep and timer, in the order they are due, and the one
//! async task (the driver) that hands each to a worker when it is due.
//!
//! Armed tasks are kept in buckets of one millisecond (a B-tree of the buckets that have any, a
//! vector of tasks in each), so that arming a timer costs a push on a small, hot tree's vector:
//! no Tokio task and no Tokio timer of its own, and a timer fires at the end of its millisecond
//! at the earliest, like Tokio's own. When it is due, the driver spawns a short [`Fire`] task for
//! it, so that its tick runs like any other task on any worker: a tick that blocks one worker
//! delays the tasks of that worker only, as Tokio's own timers would. A periodic timer goes back
//! into the queue after each tick.
//!
//! An armed timer is an [`Armed`]: whoever holds it (the queue, a `Fire` task) owns its end,
//! and dropping it ends the task. The queue's lock orders a cancel against an insertion: the
//! canceller sets the task's CANCEL bit before it takes the lock, and an insertion looks at the
//! bit under the lock, so either the canceller finds the task in the queue or the insertion
//! ends it.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::{Instant, Sleep};

use crate::metrics::Counters;
use crate::sync::{lock, now_ns};
use crate::task::Task;
use crate::timer::{self, Armed};

/// The most timers the driver hands out in one poll, so that the worker runs other tasks too.
const BATCH: usize = 256;
/// `next` of a queue with nothing armed.
const NEVER: u64 = u64::MAX;
/// A millisecond in [`now_ns`]: the width of a bucket.
const MS: u64 = 1_000_000;

/// The bucket of a task due at `due` ([`now_ns`]): the millisecond it is due in, rounded up.
fn bucket(due: u64) -> u64 {
    due.div_ceil(MS)
}

pub(crate) struct TimerQueue {
    state: Mutex<State>,
    handle: Handle,
    /// The runtime's counters: its sleeps and timers count themselves here.
    pub(crate) counters: Arc<Counters>,
}

struct State {
    /// Armed tasks by the millisecond ([`now_ns`] / 1 ms, rounded up) they are due in; each
    /// task knows its index in its bucket (`timer::Async::index`).
    due: BTreeMap<u64, Vec<Armed>>,
    /// When the driver wakes up by itself next ([`NEVER`]: only when woken). An insertion due
    /// earlier wakes it.
    armed: u64,
    /// Tasks a cancel took out of their bucket, for the driver to end on a worker.
    cancelled: Vec<Armed>,
    /// The driver's waker, taken by the insertion or cancel that wakes it.
    waker: Option<Waker>,
    /// Set when the driver ended (the runtime shut down): insertions end their task at once.
    closed: bool,
}

impl TimerQueue {
    /// A queue for the runtime of `handle`, with its driver spawned there.
    pub(crate) fn start(handle: &Handle, counters: Arc<Counters>) -> Arc<Self> {
        let queue = Arc::new(TimerQueue {
            state: Mutex::new(State {
                due: BTreeMap::new(),
                armed: NEVER,
                cancelled: Vec::new(),
                waker: None,
                closed: false,
            }),
            handle: handle.clone(),
            counters,
        });
        handle.spawn(Driver {
            queue: Arc::clone(&queue),
            fired: Vec::new(),
            sleep: None,
            until: NEVER,
        });
        queue
    }

    /// Arms a task to fire at `due` ([`now_ns`]); ends it instead (`TB_ERR_SHUTDOWN` or
    /// `TB_ERR_CANCELLED`) when the queue is closed or a cancel was requested.
    pub(crate) fn insert(&self, armed: Armed, due: u64) {
        let mut state = lock!(self.state);
        if state.closed || armed.task().cancel_requested() {
            drop(state);
            return drop(armed);
        }
        let parts = timer::parts(armed.task());
        let key = bucket(due);
        let bucket = state.due.entry(key).or_default();
        parts.due.store(due, Ordering::Relaxed);
        parts.index.store(bucket.len(), Ordering::Relaxed);
        bucket.push(armed);
        if key * MS < state.armed {
            state.armed = key * MS;
            wake_driver(state);
        }
    }

    /// Takes the armed `task` out of its bucket and has the driver end it on a worker (its
    /// cancel bit is set: it ends with `TB_ERR_CANCELLED`). Nothing to do when it is not there:
    /// it is firing, and its `Fire` task sees the bit. The task stays the queue's until then,
    /// so that a shutdown under way ends it with the others, never on the cancelling thread.
    pub(crate) fn cancel(&self, task: &Task) {
        let mut state = lock!(self.state);
        let Some(armed) = state.remove(task) else {
            return;
        };
        state.cancelled.push(armed);
        wake_driver(state);
    }

    /// Hands a task to a worker now, to run its tick (or end it, if a cancel was requested).
    pub(crate) fn fire_soon(&self, armed: Armed) {
        // On a runtime shut down meanwhile, Tokio drops `Fire` at once, which ends the task.
        self.handle.spawn(Fire(Some(armed)));
    }

    /// Moves the cancelled tasks and those due by now into `fired` (at most [`BATCH`] due ones)
    /// and makes `waker` the one an earlier insertion or a cancel wakes. Returns when the next
    /// task is due: now when more are, [`NEVER`] when none is armed; `None` once the queue is
    /// closed.
    fn take_due(&self, waker: &Waker, fired: &mut Vec<Armed>) -> Option<u64> {
        let now = now_ns();
        let mut state = lock!(self.state);
        if state.closed {
            return None;
        }
        fired.append(&mut state.cancelled);
        // Taken from the end of a bucket, so that the others keep their index.
        while let Some(mut first) = state.due.first_entry() {
            if *first.key() > now / MS || fired.len() >= BATCH {
                break;
            }
            let bucket = first.get_mut();
            let room = BATCH - fired.len();
            fired.extend(bucket.drain(bucket.len().saturating_sub(room)..));
            if bucket.is_empty() {
                first.remove();
            }
        }
        let next = match state.due.first_key_value() {
            Some((&key, _)) if fired.len() < BATCH => key * MS,
            Some(_) => now,
            None => NEVER,
        };
        state.armed = next;
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            state.waker = Some(waker.clone());
        }
        Some(next)
    }

    /// Refuses new insertions and ends every task it holds, on this thread: `TB_ERR_SHUTDOWN`,
    /// or `TB_ERR_CANCELLED` for those a cancel took out of their bucket.
    fn close(&self) {
        let (armed, cancelled, waker) = {
            let mut state = lock!(self.state);
            state.closed = true;
            (
                std::mem::take(&mut state.due),
                std::mem::take(&mut state.cancelled),
                state.waker.take(),
            )
        };
        // Outside the lock: ending a task runs its callbacks.
        drop((armed, cancelled, waker));
    }
}

impl State {
    /// Takes `task` out of its bucket, if it is armed.
    fn remove(&mut self, task: &Task) -> Option<Armed> {
        let parts = timer::parts(task);
        let key = bucket(parts.due.load(Ordering::Relaxed));
        let index = parts.index.load(Ordering::Relaxed);
        let mut entry = match self.due.entry(key) {
            Entry::Occupied(entry) => entry,
            Entry::Vacant(_) => return None,
        };
        let bucket = entry.get_mut();
        if !bucket
            .get(index)
            .is_some_and(|armed| armed.task().id == task.id)
        {
            return None;
        }
        let removed = bucket.swap_remove(index);
        match bucket.get(index) {
            Some(moved) => timer::parts(moved.task())
                .index
                .store(index, Ordering::Relaxed),
            None if bucket.is_empty() => drop(entry.remove()),
            None => {}
        }
        Some(removed)
    }
}

/// The driver: sleeps until the first armed task is due, then spawns a [`Fire`] for each due
/// task. Dropped by the runtime's shutdown (on a worker), it closes the queue.
struct Driver {
    queue: Arc<TimerQueue>,
    /// The batch being handed out, kept to reuse its allocation.
    fired: Vec<Armed>,
    /// Created on the first wait, on a worker (it needs the runtime's context).
    sleep: Option<Pin<Box<Sleep>>>,
    /// What `sleep` is set for ([`now_ns`]).
    until: u64,
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            let Some(next) = this.queue.take_due(cx.waker(), &mut this.fired) else {
                return Poll::Ready(());
            };
            for armed in this.fired.drain(..) {
                this.queue.fire_soon(armed);
            }
            if next == NEVER {
                return Poll::Pending;
            }
            let now = now_ns();
            if next <= now {
                // More are due (a full batch): let the worker run the others first.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if this.until != next {
                // Rounded up to the microsecond: Tokio's clock is read apart from `now_ns`.
                let deadline = Instant::now() + Duration::from_micros((next - now).div_ceil(1000));
                match &mut this.sleep {
                    Some(sleep) => sleep.as_mut().reset(deadline),
                    None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                this.until = next;
            }
            let sleep = this.sleep.as_mut().expect("the sleep was just set");
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Elapsed: set it again even for the same `next`, so that it can never spin.
            this.until = NEVER;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// Wakes the sleeping driver, if it sleeps, once `state` (just changed) is unlocked.
fn wake_driver(mut state: MutexGuard<'_, State>) {
    let waker = state.waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// A due (or cancelled) task on its way to a worker: polled, it runs the tick; dropped
/// unpolled by a shutdown, it ends the task.
struct Fire(Option<Armed>);

impl Future for Fire {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if let Some(armed) = self.0.take() {
            armed.fire();
        }
        Poll::Ready(())
    }
}
