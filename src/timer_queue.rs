//! A runtime's timer queue: every armed sleep and timer, in the order they are due, and the one
//! async task (the driver) that hands each to a worker when it is due.
//!
//! Armed tasks are kept in buckets of one millisecond (a vector of tasks in each; a ring of the
//! 1024 buckets from the earliest on, a B-tree of buckets beyond, see [`Buckets`]), so that
//! arming a timer costs a push on a bucket's vector: no Tokio task and no Tokio timer of its
//! own, and a timer fires at the end of its millisecond at the earliest, like Tokio's own.
//! When it is due, the driver spawns a short [`Fire`] task for it, so that its tick runs like any other task on any worker: a tick that blocks one worker
//! delays the tasks of that worker only, as Tokio's own timers would. A periodic timer goes back
//! into the queue after each tick.
//!
//! An armed timer is an [`Armed`]: whoever holds it (the queue, a `Fire` task) owns its end,
//! and dropping it ends the task. The queue's lock orders a cancel against an insertion: the
//! canceller sets the task's CANCEL bit before it takes the lock, and an insertion looks at the
//! bit under the lock, so either the canceller finds the task in the queue or the insertion
//! ends it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::{Instant, Sleep};

use crate::clock::now_ns;
use crate::metrics::Counters;
use crate::sync::lock;
use crate::task::Task;
use crate::timer::{self, Armed};

/// The most timers the driver hands out in one poll, so that the worker runs other tasks too.
const BATCH: usize = 256;
/// `next` of a queue with nothing armed.
const NEVER: u64 = u64::MAX;
/// A millisecond in [`now_ns`]: the width of a bucket.
const MS: u64 = 1_000_000;

/// How many buckets, from the first, live in the ring of [`Buckets`].
const RING: u64 = 1024;
/// An emptied bucket of the ring keeps its vector's allocation up to this many tasks.
const KEEP: usize = 16;

/// The bucket of a task due at `due` ([`now_ns`]): the millisecond it is due in, rounded up.
fn bucket(due: u64) -> u64 {
    due.div_ceil(MS)
}

/// Records `index`, `task`'s index in its bucket, in the task. A bucket never holds 2^32
/// tasks (their records alone would take 448 GiB).
fn set_place(task: &Task, index: usize) {
    let index = u32::try_from(index).expect("a bucket holds fewer than 2^32 tasks");
    task.place.store(index, Ordering::Relaxed);
}

/// Lets an emptied bucket of the ring give its memory back if it held more than [`KEEP`].
fn shrink<T>(bucket: &mut Vec<T>) {
    if bucket.is_empty() && bucket.capacity() > KEEP {
        *bucket = Vec::new();
    }
}

/// Items by bucket: those of the next [`RING`] buckets from `first` in a ring (adding one is a
/// push, with no search), later ones in a B-tree of buckets, moved into the ring as `first`
/// advances. An item has an index in its bucket, which the caller keeps: `push` and `remove`
/// tell it (through `at`) where an item is.
struct Buckets<T> {
    /// Every bucket before this one is empty.
    first: u64,
    /// Bucket `k`, for `first <= k < first + RING`, is `ring[k % RING]` (no ring until the
    /// first push).
    ring: Vec<Vec<T>>,
    /// Items in the ring.
    in_ring: usize,
    /// The buckets from `first + RING` on that hold items.
    later: BTreeMap<u64, Vec<T>>,
}

impl<T> Buckets<T> {
    fn new(first: u64) -> Self {
        Buckets {
            first,
            ring: Vec::new(),
            in_ring: 0,
            later: BTreeMap::new(),
        }
    }

    fn ring_slot(&mut self, key: u64) -> &mut Vec<T> {
        if self.ring.is_empty() {
            self.ring.resize_with(RING as usize, Vec::new);
        }
        &mut self.ring[(key % RING) as usize]
    }

    /// Adds `item` to bucket `key`, or to the first bucket if `key` is earlier; `at` learns
    /// its index there. Returns the bucket it went to.
    fn push(&mut self, key: u64, item: T, at: impl FnOnce(&T, usize)) -> u64 {
        let key = key.max(self.first);
        let bucket = if key < self.first + RING {
            self.in_ring += 1;
            self.ring_slot(key)
        } else {
            self.later.entry(key).or_default()
        };
        bucket.push(item);
        let index = bucket.len() - 1;
        at(&bucket[index], index);
        key
    }

    /// Takes the item at `index` of bucket `key` (the first bucket if `key` is earlier) if
    /// `is_it` says it is the one; the last item of the bucket takes its place and `at` learns
    /// its new index.
    fn remove(
        &mut self,
        key: u64,
        index: usize,
        is_it: impl Fn(&T) -> bool,
        at: impl FnOnce(&T, usize),
    ) -> Option<T> {
        let key = key.max(self.first);
        let in_ring = key < self.first + RING;
        let bucket = if in_ring {
            self.ring.get_mut((key % RING) as usize)?
        } else {
            self.later.get_mut(&key)?
        };
        if !bucket.get(index).is_some_and(is_it) {
            return None;
        }
        let removed = bucket.swap_remove(index);
        if let Some(moved) = bucket.get(index) {
            at(moved, index);
        }
        if in_ring {
            shrink(bucket);
            self.in_ring -= 1;
        } else if bucket.is_empty() {
            self.later.remove(&key);
        }
        Some(removed)
    }

    /// The first bucket that holds an item.
    fn next(&self) -> Option<u64> {
        if self.in_ring > 0 {
            (self.first..self.first + RING)
                .find(|&key| !self.ring[(key % RING) as usize].is_empty())
        } else {
            self.later.keys().next().copied()
        }
    }

    /// With the ring empty, moves `first` on to bucket `now` (the present's millisecond,
    /// rounded down: every item armed from now on is due in it or after), or to the first later
    /// bucket if that is earlier, so that items due within the next [`RING`] buckets go to the
    /// ring again.
    fn catch_up(&mut self, now: u64) {
        if self.in_ring == 0 && now > self.first {
            let to = self.later.keys().next().map_or(now, |&key| key.min(now));
            self.advance(to);
        }
    }

    /// Moves up to `room` items of the buckets up to `last` into `out`, the earliest bucket
    /// first and from the end of a bucket (so that the others keep their index), and moves
    /// `first` past the buckets emptied.
    fn take(&mut self, last: u64, mut room: usize, out: &mut Vec<T>) {
        while self.first <= last && room > 0 {
            if self.in_ring == 0 {
                // Nothing in the ring: on to the first later bucket, or past `last`.
                let to = self
                    .later
                    .keys()
                    .next()
                    .map_or(last + 1, |&key| key.min(last + 1));
                self.advance(to);
                continue;
            }
            let first = self.first;
            let bucket = self.ring_slot(first);
            let taken = bucket.len().min(room);
            out.extend(bucket.drain(bucket.len() - taken..));
            let emptied = bucket.is_empty();
            shrink(bucket);
            self.in_ring -= taken;
            if !emptied {
                return;
            }
            room -= taken;
            self.advance(first + 1);
        }
    }

    /// Moves `first` to `to` (every bucket before it is empty), and the later buckets now
    /// within the ring's reach into the ring.
    fn advance(&mut self, to: u64) {
        self.first = to;
        while let Some(entry) = self.later.first_entry() {
            if *entry.key() >= self.first + RING {
                break;
            }
            let key = *entry.key();
            let items = entry.remove();
            self.in_ring += items.len();
            let slot = self.ring_slot(key);
            debug_assert!(slot.is_empty(), "a ring slot is reused only once emptied");
            *slot = items;
        }
    }
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
    due: Buckets<Armed>,
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
                due: Buckets::new(bucket(now_ns())),
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
        if state.due.in_ring == 0 {
            // The driver may have slept long: arm from the present, into the ring.
            state.due.catch_up(now_ns() / MS);
        }
        let key = bucket(due);
        if key < state.due.first {
            // Due already, in a bucket taken: to a worker now, not a millisecond late in the
            // next bucket. (Its `Fire` task sees a cancel requested meanwhile.)
            timer::parts(armed.task()).due.store(due, Ordering::Relaxed);
            drop(state);
            return self.fire_soon(armed);
        }
        let key = state.due.push(key, armed, |armed, index| {
            timer::parts(armed.task()).due.store(due, Ordering::Relaxed);
            set_place(armed.task(), index);
        });
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
        let room = BATCH.saturating_sub(fired.len());
        state.due.take(now / MS, room, fired);
        let next = match state.due.next() {
            Some(key) if fired.len() < BATCH => key * MS,
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
                std::mem::replace(&mut state.due, Buckets::new(0)),
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
        self.due.remove(
            bucket(timer::parts(task).due.load(Ordering::Relaxed)),
            task.place.load(Ordering::Relaxed) as usize,
            |armed| armed.task().id == task.id,
            |moved, index| set_place(moved.task(), index),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Buckets of ids, and where each id is, kept as the queue keeps a task's bucket and index.
    struct Tracked {
        buckets: Buckets<u64>,
        /// The key each id was pushed with (the bucket it went to), and its index.
        at: HashMap<u64, (u64, usize)>,
    }

    impl Tracked {
        fn new(first: u64) -> Self {
            Tracked {
                buckets: Buckets::new(first),
                at: HashMap::new(),
            }
        }

        fn push(&mut self, key: u64, id: u64) -> u64 {
            let Tracked { buckets, at } = self;
            let went = buckets.push(key, id, |&id, index| {
                at.insert(id, (key, index));
            });
            assert_eq!(went, key.max(buckets.first));
            went
        }

        fn remove(&mut self, id: u64) -> bool {
            let Tracked { buckets, at } = self;
            let (key, index) = at[&id];
            let removed = buckets.remove(
                key,
                index,
                |&it| it == id,
                |&moved, index| {
                    at.get_mut(&moved).unwrap().1 = index;
                },
            );
            if removed.is_some() {
                at.remove(&id);
            }
            removed == Some(id)
        }

        fn take(&mut self, last: u64, room: usize) -> Vec<u64> {
            let mut out = Vec::new();
            self.buckets.take(last, room, &mut out);
            for id in &out {
                self.at.remove(id);
            }
            out
        }
    }

    #[test]
    fn items_come_out_by_bucket_from_the_ring_and_the_tree() {
        let mut b = Tracked::new(1000);
        b.push(1005, 1);
        b.push(1000 + RING + 10, 2);
        b.push(1000 + 2 * RING + 3, 3);
        assert_eq!(
            b.push(999, 4),
            1000,
            "an earlier key goes to the first bucket"
        );
        b.push(1005, 5);
        assert_eq!((b.buckets.in_ring, b.buckets.later.len()), (3, 2));
        assert_eq!(b.buckets.next(), Some(1000));
        assert_eq!(b.take(1004, 100), [4]);
        assert_eq!(b.buckets.next(), Some(1005));
        assert_eq!(b.take(1000 + 3 * RING, 100), [1, 5, 2, 3]);
        assert_eq!(b.buckets.first, 1000 + 3 * RING + 1);
        assert_eq!(b.buckets.next(), None);
        assert!(b.at.is_empty());
    }

    #[test]
    fn a_partly_taken_bucket_keeps_its_place_and_its_indexes() {
        let mut b = Tracked::new(0);
        for id in 0..10 {
            b.push(7, id);
        }
        assert_eq!(b.take(7, 3), [7, 8, 9]);
        assert_eq!(b.buckets.first, 7);
        assert_eq!(b.buckets.next(), Some(7));
        let (key, index) = b.at[&2];
        assert!(b.remove(2));
        assert_eq!(b.buckets.remove(key, index, |&it| it == 2, |_, _| {}), None);
        assert_eq!(b.take(7, 100), [0, 1, 6, 3, 4, 5]);
        assert!(
            b.buckets.ring[7].capacity() > 0,
            "a small emptied bucket keeps its memory"
        );
        for id in 0..100 {
            b.push(8, id);
        }
        assert_eq!(b.take(8, 1000).len(), 100);
        assert_eq!(b.buckets.ring[8].capacity(), 0, "a big one gives it back");
        for id in 0..100 {
            b.push(9, id);
        }
        for id in 0..100 {
            assert!(b.remove(id));
        }
        assert_eq!(
            b.buckets.ring[9].capacity(),
            0,
            "also when emptied by removals"
        );
    }

    #[test]
    fn an_item_is_found_after_moving_from_the_tree_into_the_ring() {
        let mut b = Tracked::new(0);
        let far = 3 * RING + 1;
        for id in 0..5 {
            b.push(far, id);
        }
        b.push(far - RING, 9);
        assert_eq!(b.take(far - RING, 100), [9]);
        assert_eq!(
            b.buckets.in_ring, 5,
            "bucket `far` came within the ring's reach"
        );
        assert!(b.remove(1));
        assert!(b.remove(4));
        assert_eq!(b.take(far, 100), [0, 3, 2]);
    }

    #[test]
    fn an_empty_ring_catches_up_with_the_present() {
        let mut b = Tracked::new(0);
        b.push(5500, 1);
        assert_eq!(b.buckets.in_ring, 0);
        b.buckets.catch_up(5000);
        assert_eq!((b.buckets.first, b.buckets.in_ring), (5000, 1));
        let mut b = Tracked::new(0);
        b.push(3000, 1);
        b.buckets.catch_up(5000);
        assert_eq!(
            b.buckets.first, 3000,
            "never past a bucket that holds items"
        );
        assert_eq!(b.take(3000, 10), [1]);
    }

    /// Random pushes, removals and takes against what they must do: every id comes out or is
    /// removed exactly once, never before its bucket is due, and earlier buckets first.
    #[test]
    fn random_operations_keep_every_item_exactly_once_and_in_bucket_order() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut random = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut b = Tracked::new(10_000);
        let mut bucket_of = HashMap::new();
        let (mut next_id, mut out) = (0u64, 0usize);
        // Under Miri, fewer: each operation also checks the whole structure.
        let operations = if cfg!(miri) { 300 } else { 20_000 };
        for _ in 0..operations {
            match random(10) {
                0..=5 => {
                    let key = b.buckets.first + random(3 * RING) - 10;
                    bucket_of.insert(next_id, b.push(key, next_id));
                    next_id += 1;
                }
                6 | 7 if !b.at.is_empty() => {
                    let id = *b.at.keys().nth(random(b.at.len() as u64) as usize).unwrap();
                    assert!(b.remove(id));
                    bucket_of.remove(&id);
                    out += 1;
                }
                _ => {
                    let last = b.buckets.first + random(200);
                    let taken = b.take(last, 1 + random(64) as usize);
                    let latest = taken.iter().map(|id| bucket_of[id]).max();
                    for id in &taken {
                        assert!(bucket_of[id] <= last, "taken before its bucket was due");
                        bucket_of.remove(id);
                    }
                    let earliest_left = bucket_of.values().min();
                    if let (Some(latest), Some(left)) = (latest, earliest_left) {
                        assert!(latest <= *left, "an earlier bucket was left behind");
                    }
                    out += taken.len();
                }
            }
            assert_eq!(b.buckets.next(), bucket_of.values().min().copied());
        }
        out += b.take(u64::MAX - 1, usize::MAX).len();
        assert_eq!(out as u64, next_id, "every item out exactly once");
    }
}
