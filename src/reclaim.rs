//! When an object removed from a handle table may be dropped.
//!
//! Lookups read a table's objects without a lock (see [`crate::handle`]), so a removal must not
//! drop the table's reference while a lookup that loaded the object's pointer just before the
//! removal still reads it. Each thread that looks objects up owns a [`Reader`] record whose
//! counter it makes odd for the length of a lookup (a read section) and even again after. A
//! removal first unlinks the object (no slot names it any more), then reads every record: when
//! no thread is inside a read section, the usual case as a lookup lasts nanoseconds, it drops
//! the object at once, on the removing thread, as a lock-based table would. Otherwise it sets
//! the object aside with the counters it saw, and a later removal from the same table drops it
//! once each of those threads has left the section it was in. What waits is memory only (the
//! objects whose end matters are ended by the call that removes them), until the first removal
//! from its table after those sections: tasks are removed all the time, but a runtime or queue
//! removed during a lookup stays allocated until the next runtime or queue is removed.
//!
//! Why that is enough: the reader's store of an odd counter, its load that finds the object
//! still linked (in a handle table, the first check of the slot's stamp), the removal's
//! unlinking write (the compare-and-swap that moves the stamp off live) and its load of the
//! counter are all sequentially consistent, so they have one order. If the removal's load comes
//! first, the unlink precedes the reader's load, which then cannot find the removed object. If
//! the reader's store comes first, the removal sees the section open (or already closed, with a
//! release store that orders the section's reads before the drop). Only atomic operations, no
//! fences, so that ThreadSanitizer follows every step.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// A thread's read-section counter: odd while the thread is inside a lookup. Aligned to its
/// own cache lines (two, as x86 fetches lines in pairs): threads write their counters at
/// every lookup and must not slow each other down.
#[repr(align(128))]
pub(crate) struct Reader {
    seq: AtomicU64,
    /// Owned by a live thread; a record is reused once its thread has ended.
    claimed: AtomicBool,
    next: Option<&'static Reader>,
}

/// Every record ever made, newest first; records are never freed.
static READERS: AtomicPtr<Reader> = AtomicPtr::new(std::ptr::null_mut());
static REGISTERING: Mutex<()> = Mutex::new(());

/// A record owned by this thread until it ends.
struct Claim(&'static Reader);

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = READER.try_with(|reader| reader.set(None));
        self.0.claimed.store(false, Ordering::Release);
    }
}

thread_local! {
    /// This thread's record, once claimed: read by every lookup, so without a destructor of
    /// its own (the cheapest kind of thread-local).
    static READER: Cell<Option<&'static Reader>> = const { Cell::new(None) };
    /// Gives the record back when the thread ends.
    static CLAIM: Claim = Claim(claim());
}

/// Takes a record no live thread owns, or makes one.
fn claim() -> &'static Reader {
    let _registering = lock!(REGISTERING);
    let mut next = readers();
    while let Some(reader) = next {
        if !reader.claimed.load(Ordering::Acquire) {
            reader.claimed.store(true, Ordering::Relaxed);
            return reader;
        }
        next = reader.next;
    }
    let reader = Box::leak(Box::new(Reader {
        seq: AtomicU64::new(0),
        claimed: AtomicBool::new(true),
        next: readers(),
    }));
    READERS.store(reader, Ordering::SeqCst);
    reader
}

/// The newest record (the head of the list).
fn readers() -> Option<&'static Reader> {
    // SAFETY: records are leaked boxes, never freed.
    unsafe { READERS.load(Ordering::SeqCst).as_ref() }
}

/// Runs `f` inside a read section of this thread: an object `f` finds linked in a table (with
/// a sequentially consistent load) is not dropped before `f` returns, even if it is removed
/// meanwhile.
pub(crate) fn read<R>(f: impl FnOnce() -> R) -> R {
    struct Section(&'static Reader, u64);
    impl Drop for Section {
        fn drop(&mut self) {
            self.0.seq.store(self.1 + 2, Ordering::Release);
        }
    }
    let owned = READER.try_with(Cell::get).ok().flatten().or_else(|| {
        let reader = CLAIM.try_with(|claim| claim.0).ok()?;
        let _ = READER.try_with(|owned| owned.set(Some(reader)));
        Some(reader)
    });
    // A thread whose thread-locals are being destroyed borrows a record for this section.
    let borrowed;
    let reader = match owned {
        Some(reader) => reader,
        None => {
            borrowed = Claim(claim());
            borrowed.0
        }
    };
    let seq = reader.seq.load(Ordering::Relaxed);
    if seq % 2 == 1 {
        return f(); // nested in a section of this thread, which covers it
    }
    reader.seq.store(seq + 1, Ordering::SeqCst);
    let _section = Section(reader, seq);
    f()
}

/// Objects removed from one table, waiting for the read sections that may still read them.
pub(crate) struct Reclaimer<T> {
    waiting: Mutex<Vec<Waiting<T>>>,
    any_waiting: AtomicBool,
}

struct Waiting<T> {
    value: Arc<T>,
    /// The records found inside a section, with their counters then.
    sections: Vec<(&'static Reader, u64)>,
}

impl<T> Reclaimer<T> {
    pub(crate) const fn new() -> Self {
        Reclaimer {
            waiting: Mutex::new(Vec::new()),
            any_waiting: AtomicBool::new(false),
        }
    }

    /// Drops `value`, the table's reference to an object just unlinked from its slot (by a
    /// sequentially consistent write), once no lookup can still be reading it: at once if no
    /// thread is inside a read section, else during a later call. Also drops the objects set
    /// aside earlier whose sections have all ended.
    pub(crate) fn retire(&self, value: Arc<T>) {
        let mut sections = Vec::new();
        let mut next = readers();
        while let Some(reader) = next {
            let seq = reader.seq.load(Ordering::SeqCst);
            if seq % 2 == 1 {
                sections.push((reader, seq));
            }
            next = reader.next;
        }
        let ended = if self.any_waiting.load(Ordering::Acquire) {
            self.take_ended()
        } else {
            Vec::new()
        };
        if sections.is_empty() {
            drop(value);
        } else {
            lock!(self.waiting).push(Waiting { value, sections });
            self.any_waiting.store(true, Ordering::Release);
        }
        drop(ended);
    }

    /// Runs `f` on `value`, just unlinked, then [`retire`](Self::retire)s it, also if `f`
    /// unwinds: a lookup may still be reading it.
    pub(crate) fn retire_after<R>(&self, value: Arc<T>, f: impl FnOnce(&Arc<T>) -> R) -> R {
        struct Retiring<'a, T>(&'a Reclaimer<T>, Option<Arc<T>>);
        impl<T> Drop for Retiring<'_, T> {
            fn drop(&mut self) {
                if let Some(value) = self.1.take() {
                    self.0.retire(value);
                }
            }
        }
        let retiring = Retiring(self, Some(value));
        f(retiring.1.as_ref().expect("held until dropped"))
    }

    /// Takes the objects set aside whose read sections have all ended; the caller drops them
    /// outside the lock.
    fn take_ended(&self) -> Vec<Arc<T>> {
        let mut waiting = lock!(self.waiting);
        let mut ended = Vec::new();
        let mut i = 0;
        while i < waiting.len() {
            waiting[i]
                .sections
                .retain(|(reader, seq)| reader.seq.load(Ordering::SeqCst) == *seq);
            if waiting[i].sections.is_empty() {
                ended.push(waiting.swap_remove(i).value);
            } else {
                i += 1;
            }
        }
        self.any_waiting
            .store(!waiting.is_empty(), Ordering::Release);
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;

    /// Counts its drops in the counter it points to.
    struct Counted(&'static AtomicUsize);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Other tests of this process look objects up in parallel, so an object may wait for
    /// their sections too: removals go on until it is dropped.
    fn retire_until_dropped(removed: &Reclaimer<Counted>, drops: &'static AtomicUsize, n: usize) {
        static FILLER: AtomicUsize = AtomicUsize::new(0);
        for _ in 0..10_000 {
            if drops.load(Ordering::SeqCst) == n {
                return;
            }
            removed.retire(Arc::new(Counted(&FILLER)));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("an object removed outside every read section was never dropped");
    }

    #[test]
    fn an_object_removed_during_a_read_section_is_dropped_after_it() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let removed = Reclaimer::new();
        let (entered, in_section) = mpsc::channel();
        let (leave, left) = mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            read(|| {
                read(|| entered.send(()).unwrap()); // nested: part of the same section
                left.recv().unwrap();
            })
        });
        in_section.recv().unwrap();
        removed.retire(Arc::new(Counted(&DROPS)));
        assert_eq!(
            DROPS.load(Ordering::SeqCst),
            0,
            "dropped while a section is open"
        );
        leave.send(()).unwrap();
        reader.join().unwrap();
        retire_until_dropped(&removed, &DROPS, 1);
    }

    #[test]
    fn records_of_ended_threads_are_reused() {
        let count = || {
            let (mut n, mut next) = (0, readers());
            while let Some(reader) = next {
                n += 1;
                next = reader.next;
            }
            n
        };
        for _ in 0..20 {
            std::thread::spawn(|| read(|| ())).join().unwrap();
        }
        let before = count();
        for _ in 0..50 {
            std::thread::spawn(|| read(|| ())).join().unwrap();
        }
        // Threads of other tests may make records meanwhile, but not one per thread here.
        assert!(
            count() < before + 50,
            "each ended thread's record is reused"
        );
    }
}
