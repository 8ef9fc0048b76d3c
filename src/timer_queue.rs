//! A runtime's timer queue: every armed sleep and timer, in the order they are due, and the one
//! async task (the driver) that hands each to a worker when it is due.
//!
//! An armed timer costs an entry of a B-tree (its due time, its id and its task): no Tokio task
//! and no Tokio timer of its own. When it is due, the driver spawns a short [`Fire`] task for
//! it, so that its tick runs like any other task on any worker: a tick that blocks one worker
//! delays the tasks of that worker only, as Tokio's own timers would. A periodic timer goes back
//! into the queue after each tick.
//!
//! Whoever holds a timer's task outside the queue (a `Fire` task, or the canceller that took it
//! out) owns its end: the tick, the next insertion or [`timer::end`]. The queue's lock orders a
//! cancel against an insertion: the canceller sets the task's CANCEL bit before it takes the
//! lock, and an insertion looks at the bit under the lock, so either the canceller finds the
//! task in the queue or the insertion ends it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::{Instant, Sleep};

use crate::metrics::Counters;
use crate::sync::{lock, now_ns};
use crate::task::Task;
use crate::timer;

/// The most timers the driver hands out in one poll, so that the worker runs other tasks too.
const BATCH: usize = 256;
/// `next` of a queue with nothing armed.
const NEVER: u64 = u64::MAX;

pub(crate) struct TimerQueue {
    state: Mutex<State>,
    handle: Handle,
    pub(crate) counters: Arc<Counters>,
}

struct State {
    /// Armed tasks by (due time in [`now_ns`], task id).
    due: BTreeMap<(u64, u64), Arc<Task>>,
    /// When the driver wakes up by itself next ([`NEVER`]: only when woken). An insertion due
    /// earlier wakes it.
    armed: u64,
    /// The driver's waker, taken by the insertion that wakes it.
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

    /// Arms `task` to fire at `due` ([`now_ns`]); ends it instead (`TB_ERR_SHUTDOWN` or
    /// `TB_ERR_CANCELLED`) when the queue is closed or a cancel was requested.
    pub(crate) fn insert(&self, task: Arc<Task>, due: u64) {
        let mut state = lock!(self.state);
        if state.closed || task.cancel_requested() {
            drop(state);
            return timer::end(&task, &self.counters, None);
        }
        timer::parts(&task).due.store(due, Ordering::Relaxed);
        state.due.insert((due, task.id), task);
        let waker = if due < state.armed {
            state.armed = due;
            state.waker.take()
        } else {
            None
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Takes the armed task `id`, due at `due`, out of the queue and ends it on a worker (its
    /// cancel bit is set: it ends with `TB_ERR_CANCELLED`). Nothing to do when it is not
    /// there: it is firing, and its `Fire` task sees the bit.
    pub(crate) fn cancel(self: &Arc<Self>, due: u64, id: u64) {
        let task = lock!(self.state).due.remove(&(due, id));
        if let Some(task) = task {
            // On a runtime shut down meanwhile, Tokio drops `Fire` at once, which ends the task.
            self.handle.spawn(Fire {
                queue: Arc::clone(self),
                task: Some(task),
            });
        }
    }

    /// Moves the tasks due by now into `fired` (at most [`BATCH`]) and makes `waker` the one an
    /// earlier insertion wakes. Returns when the next task is due: now when more are, [`NEVER`]
    /// when none is armed; `None` once the queue is closed.
    fn take_due(&self, waker: &Waker, fired: &mut Vec<Arc<Task>>) -> Option<u64> {
        let now = now_ns();
        let mut state = lock!(self.state);
        if state.closed {
            return None;
        }
        while fired.len() < BATCH {
            match state.due.first_entry() {
                Some(first) if first.key().0 <= now => fired.push(first.remove()),
                _ => break,
            }
        }
        let next = if fired.len() == BATCH {
            now
        } else {
            state.due.first_key_value().map_or(NEVER, |(key, _)| key.0)
        };
        state.armed = next;
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            state.waker = Some(waker.clone());
        }
        Some(next)
    }

    /// Refuses new insertions and ends every armed task with `TB_ERR_SHUTDOWN`, on this thread.
    fn close(&self) {
        let armed = {
            let mut state = lock!(self.state);
            state.closed = true;
            state.waker = None;
            std::mem::take(&mut state.due)
        };
        for task in armed.into_values() {
            timer::end(&task, &self.counters, None);
        }
    }
}

/// The driver: sleeps until the first armed task is due, then spawns a [`Fire`] for each due
/// task. Dropped by the runtime's shutdown (on a worker), it closes the queue.
struct Driver {
    queue: Arc<TimerQueue>,
    /// The batch being handed out, kept to reuse its allocation.
    fired: Vec<Arc<Task>>,
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
            for task in this.fired.drain(..) {
                tokio::spawn(Fire {
                    queue: Arc::clone(&this.queue),
                    task: Some(task),
                });
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
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// A due (or cancelled) task on its way to a worker: polled, it runs the tick; dropped
/// unpolled by a shutdown, it ends the task.
struct Fire {
    queue: Arc<TimerQueue>,
    task: Option<Arc<Task>>,
}

impl Future for Fire {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if let Some(task) = self.task.take() {
            timer::fire(&self.queue, task);
        }
        Poll::Ready(())
    }
}

impl Drop for Fire {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            timer::end(&task, &self.queue.counters, None);
        }
    }
}
