//! A pool's inbox: jobs submitted while the pool's drainers are busy with quick jobs, taken
//! without a lock (see [`crate::pool`] for when the pool opens it).
//!
//! A submission into the inbox costs one atomic add and one store (and the increment of its
//! job's reference count): the add reserves a slot and tells whether the inbox is open, the
//! store puts the job's reference there. A lock (the
//! inbox's own mutex, until this module) costs two locked instructions, the lock and its
//! release, and the release waits for every store before it.
//!
//! The inbox is one word and two buffers of slots. The word holds whether the inbox is open,
//! which buffer submissions go to, and how many slots of it were reserved. Whoever takes the
//! jobs (a drainer or a submission, always under the pool's lock, so one at a time) swaps the
//! word: from then on submissions reserve slots of the other buffer, which the previous take
//! left empty, and the taker collects the slots reserved before its swap, oldest first. A
//! submission that reserved a slot but has not written it yet is waited for: the taker spins
//! for the few instructions between the two (longer only if the submitting thread was
//! preempted there). A submission that finds the inbox closed, or its buffer full, reserved
//! nothing and takes the pool's lock instead.

use std::marker::PhantomData;
use std::sync::Arc;

#[cfg(all(test, tb_loom))]
use loom::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
#[cfg(not(all(test, tb_loom)))]
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// The word's bit: the inbox takes jobs.
const OPEN: u64 = 1 << 63;
/// The word's bit: which buffer submissions reserve slots of.
const BUFFER: u64 = 1 << 62;
/// The word's bits: how many slots of that buffer were reserved (it may count past the
/// buffer's end, by submissions that then reserved nothing).
const COUNT: u64 = BUFFER - 1;

/// A closable queue of `Arc<T>`: many threads push, one at a time takes (see the module's
/// documentation).
#[cfg_attr(not(all(test, tb_loom)), repr(align(128)))]
pub(crate) struct Inbox<T> {
    /// [`OPEN`], [`BUFFER`] and the [`COUNT`] of reserved slots. The submitting thread
    /// changes it for every job: it is alone on its cache lines with `until`, which the same
    /// thread reads first.
    word: AtomicU64,
    /// Until when submissions go in (a [`crate::clock::stamp`]), set as the inbox opens.
    until: AtomicU64,
    /// The two buffers: a reserved slot holds null until its job's reference is written.
    slots: [Box<[AtomicPtr<T>]>; 2],
    /// The inbox holds references to its items: it is `Send`/`Sync` as an `Arc<T>` is.
    _holds: PhantomData<Arc<T>>,
}

impl<T> Inbox<T> {
    /// A closed inbox whose buffers hold `capacity` jobs each.
    pub(crate) fn new(capacity: usize) -> Self {
        let buffer = || {
            (0..capacity)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect()
        };
        Inbox {
            word: AtomicU64::new(0),
            until: AtomicU64::new(0),
            slots: [buffer(), buffer()],
            _holds: PhantomData,
        }
    }

    /// Puts `item`, submitted at `stamp`, into the inbox if it is open and `stamp` is before the
    /// time it closes. False if not (nothing was reserved: the caller queues it otherwise).
    pub(crate) fn push(&self, item: &Arc<T>, stamp: u64) -> bool {
        // `until` may be another opening's than the word's (both are read relaxed): an earlier
        // one's sends the submission through the lock for nothing, a later one's lets it in
        // a little past its opening's end. Either way the word's open bit decides.
        if stamp >= self.until.load(Ordering::Relaxed) {
            return false;
        }
        // Between this add and the store below there is nothing that locks, calls out or
        // unwinds (an `Arc` count that overflows aborts): a taker waiting for the slot waits
        // for a few instructions, unless this thread is preempted there.
        let word = self.word.fetch_add(1, Ordering::AcqRel);
        let index = (word & COUNT) as usize;
        let buffer = &self.slots[usize::from(word & BUFFER != 0)];
        if word & OPEN == 0 || index >= buffer.len() {
            return false;
        }
        let item = Arc::into_raw(Arc::clone(item)).cast_mut();
        buffer[index].store(item, Ordering::Release);
        true
    }

    /// Opens the inbox (closed, so empty) until `until`. Under the lock of whoever takes.
    pub(crate) fn open(&self, until: u64) {
        let word = self.word.load(Ordering::Relaxed);
        debug_assert!(word & OPEN == 0, "opened only when closed");
        self.until.store(until, Ordering::Relaxed);
        self.word.store(OPEN | (word & BUFFER), Ordering::Release);
    }

    /// Appends every item pushed so far to `out`, oldest first, and closes the inbox if
    /// `close`. Under the lock of whoever takes: one caller at a time.
    pub(crate) fn take(&self, close: bool, out: &mut Vec<Arc<T>>) {
        let word = self.word.load(Ordering::Relaxed);
        if word & OPEN == 0 || (!close && word & COUNT == 0) {
            return; // closed, so empty; or open with nothing to take
        }
        let next = if close { 0 } else { OPEN };
        // The buffer bit read above is current: only a taker or an opening changes it, under
        // the same lock as this call.
        let word = self.word.swap(next | (!word & BUFFER), Ordering::AcqRel);
        // From here to the end nothing unwinds (a failed allocation aborts): a take cut short
        // would leave written slots behind a count that no longer names them.
        let buffer = &self.slots[usize::from(word & BUFFER != 0)];
        let reserved = ((word & COUNT) as usize).min(buffer.len());
        for slot in &buffer[..reserved] {
            let item = loop {
                let item = slot.load(Ordering::Acquire);
                if !item.is_null() {
                    break item;
                }
                wait_a_moment();
            };
            // Only the taker writes a written slot, and the swap of the word orders this
            // before the reservation that writes it next.
            slot.store(std::ptr::null_mut(), Ordering::Relaxed);
            // SAFETY: a reference from `Arc::into_raw` in `push`, taken out of its slot once.
            out.push(unsafe { Arc::from_raw(item) });
        }
    }

    /// Whether it is open and holds items (some perhaps still being written): for spinning
    /// drainers to watch without the pool's lock.
    pub(crate) fn holds(&self) -> bool {
        self.len() != 0
    }

    /// How many items it holds, counting those still being written (none when closed: a
    /// closed inbox is empty).
    pub(crate) fn len(&self) -> usize {
        let word = self.word.load(Ordering::Relaxed);
        match word & OPEN {
            0 => 0,
            _ => ((word & COUNT) as usize).min(self.slots[0].len()),
        }
    }
}

impl<T> Drop for Inbox<T> {
    /// A pool closes its inbox before it goes, which empties it; whatever a panic left in
    /// it is dropped here.
    fn drop(&mut self) {
        for slot in self.slots.iter().flat_map(|buffer| buffer.iter()) {
            let item = slot.swap(std::ptr::null_mut(), Ordering::Acquire);
            if !item.is_null() {
                // SAFETY: a reference from `Arc::into_raw` in `push`, never taken out.
                drop(unsafe { Arc::from_raw(item) });
            }
        }
    }
}

/// Lets a submission between its reservation and its write go on.
fn wait_a_moment() {
    #[cfg(all(test, tb_loom))]
    loom::thread::yield_now();
    #[cfg(not(all(test, tb_loom)))]
    {
        std::hint::spin_loop();
        std::thread::yield_now();
    }
}

#[cfg(all(test, not(tb_loom)))]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_in_order_once_and_only_while_open() {
        let inbox = Inbox::new(4);
        let items: Vec<Arc<u32>> = (0..10).map(Arc::new).collect();
        assert!(!inbox.push(&items[0], 0), "closed");
        inbox.open(100);
        assert!(!inbox.push(&items[0], 100), "submitted after it closes");
        for item in &items[..3] {
            assert!(inbox.push(item, 1));
        }
        assert!(inbox.holds());
        assert_eq!(inbox.len(), 3);
        let mut out = Vec::new();
        inbox.take(false, &mut out);
        assert_eq!(out, items[..3]);
        assert!(!inbox.holds(), "open and empty");
        for item in &items[3..] {
            inbox.push(item, 1);
        }
        assert_eq!(inbox.len(), 4, "a full buffer takes no more");
        inbox.take(true, &mut out);
        assert_eq!(out, items[..7]);
        assert_eq!((inbox.len(), inbox.holds()), (0, false));
        assert!(!inbox.push(&items[9], 1), "closed again");
        inbox.open(100);
        assert!(inbox.push(&items[9], 1));
        out.clear();
        inbox.take(true, &mut out);
        assert_eq!(out, [Arc::clone(&items[9])]);
        assert!(
            items
                .iter()
                .all(|item| Arc::strong_count(item) == 1 + usize::from(**item == 9)),
            "the inbox keeps no reference"
        );
    }

    #[test]
    fn items_left_in_a_dropped_inbox_are_dropped() {
        let item = Arc::new(());
        let inbox = Inbox::new(2);
        inbox.open(u64::MAX);
        assert!(inbox.push(&item, 0));
        assert_eq!(Arc::strong_count(&item), 2);
        drop(inbox);
        assert_eq!(Arc::strong_count(&item), 1);
    }

    /// Threads push while one takes (and closes and opens the inbox again): every item pushed
    /// comes out exactly once, each thread's in the order it pushed them.
    #[test]
    fn concurrent_pushes_come_out_once_in_each_threads_order() {
        const THREADS: u64 = 3;
        let per_thread = if cfg!(miri) { 200 } else { 100_000 };
        let inbox = Arc::new(Inbox::new(64));
        inbox.open(u64::MAX);
        let pushers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let inbox = Arc::clone(&inbox);
                std::thread::spawn(move || {
                    let mut refused = Vec::new();
                    for n in 0..per_thread {
                        let item = Arc::new((thread, n));
                        if !inbox.push(&item, 0) {
                            refused.push(item);
                        }
                    }
                    refused
                })
            })
            .collect();
        let (mut out, mut takes) = (Vec::new(), 0u64);
        while !pushers.iter().all(|pusher| pusher.is_finished()) {
            takes += 1;
            let close = takes % 7 == 0;
            inbox.take(close, &mut out);
            if close {
                inbox.open(u64::MAX);
            }
        }
        inbox.take(true, &mut out);
        let refused: usize = pushers.into_iter().map(|p| p.join().unwrap().len()).sum();
        assert_eq!(out.len() + refused, (THREADS * per_thread) as usize);
        let mut last = [None; THREADS as usize];
        for item in &out {
            let (thread, n) = **item;
            assert!(last[thread as usize] < Some(n), "out of order or twice");
            last[thread as usize] = Some(n);
        }
    }
}

/// Model checks: every interleaving loom finds of pushes against a take that closes the inbox.
#[cfg(all(test, tb_loom))]
mod loom_tests {
    use super::*;

    #[test]
    fn loom_inbox_every_push_accepted_is_taken_once() {
        loom::model(|| {
            let inbox = Arc::new(Inbox::new(1));
            inbox.open(u64::MAX);
            let pushers: Vec<_> = (0..2u32)
                .map(|n| {
                    let inbox = Arc::clone(&inbox);
                    loom::thread::spawn(move || {
                        let item = Arc::new(n);
                        let accepted = inbox.push(&item, 0);
                        (item, accepted)
                    })
                })
                .collect();
            let mut out = Vec::new();
            inbox.take(false, &mut out);
            inbox.take(true, &mut out);
            for pusher in pushers {
                let (item, accepted) = pusher.join().unwrap();
                let taken = out.iter().filter(|out| Arc::ptr_eq(out, &item)).count();
                assert_eq!(
                    taken,
                    usize::from(accepted),
                    "taken once if accepted, else never"
                );
            }
        });
    }

    /// One thread pushes three jobs while takes reuse both buffers, close the inbox and open
    /// it again: the slots a take emptied are written again only after, and every job
    /// accepted comes out once, in the order pushed.
    #[test]
    fn loom_inbox_buffers_are_reused_and_reopened_in_order() {
        loom::model(|| {
            let inbox = Arc::new(Inbox::new(1));
            inbox.open(u64::MAX);
            let pusher = {
                let inbox = Arc::clone(&inbox);
                loom::thread::spawn(move || {
                    (0..3u32)
                        .map(|n| Arc::new(n))
                        .filter(|item| inbox.push(item, 0))
                        .map(|item| *item)
                        .collect::<Vec<_>>()
                })
            };
            let mut out = Vec::new();
            inbox.take(false, &mut out);
            inbox.take(false, &mut out);
            inbox.take(true, &mut out);
            inbox.open(u64::MAX);
            let accepted = pusher.join().unwrap();
            inbox.take(true, &mut out);
            let taken: Vec<u32> = out.iter().map(|item| **item).collect();
            assert_eq!(taken, accepted, "each accepted job once, in order");
        });
    }
}
