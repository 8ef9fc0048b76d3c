//! Generation-checked handle tables: how a 64-bit id from C becomes a Rust object, safely.
//!
//! C never sees a pointer into Rust memory. A handle is an id with three parts:
//!
//! ```text
//!  63      60 59                      32 31                       0
//! +----------+--------------------------+--------------------------+
//! |   tag    |        generation        |       slot index         |
//! +----------+--------------------------+--------------------------+
//! ```
//!
//! The tag names the table (runtime, task, ...), so a handle of one type passed where another
//! is expected is refused. The generation of a slot grows each time the slot is emptied, so a
//! released or stale id no longer matches. Tags start at 1, so the id 0 is never valid.
//!
//! Lookups take no lock and write only their own thread's memory, so that threads polling the
//! same task do not contend (a lock word is a cache line every caller writes). Each slot is a
//! generation and a pointer, both atomic, in chunks that never move or go away: a lookup checks
//! the generation, loads the pointer, and checks the generation again. An object removed from the table may still be read by a lookup that
//! loaded its pointer just before, so the table's reference to it is dropped only once no such
//! lookup can still be reading it (see [`crate::reclaim`]): at once in the usual case. Objects
//! whose end matters (a runtime's threads, a queue's fd) are ended by the call that removes
//! them, so even a late drop only frees memory.
//!
//! Taking and giving back slots is rarer and takes a lock: each table is split into shards,
//! each with its own small mutex over its free list, and a thread takes slots from "its" shard,
//! so that threads submitting work at the same time do not contend on one lock.

use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, TB_ERR_OS};
use crate::reclaim::{self, Reclaimer};
use crate::sync::lock;

const SHARDS: usize = 16;
const INDEX_BITS: u32 = 32;
const GENERATION_BITS: u32 = 28;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;
const TAG_SHIFT: u32 = INDEX_BITS + GENERATION_BITS;
/// Slots in a shard's first chunk; each next chunk has twice as many as the one before.
const FIRST_CHUNK: usize = 64;
/// Chunks per shard: enough for every slot an index can name.
const CHUNKS: usize = 23;
const _: () = assert!(FIRST_CHUNK * ((1 << CHUNKS) - 1) >= (1 << INDEX_BITS) / SHARDS);

/// Tag of runtime handles.
pub(crate) const TAG_RUNTIME: u8 = 1;
/// Tag of task handles.
pub(crate) const TAG_TASK: u8 = 2;
/// Tag of completion queue handles.
pub(crate) const TAG_QUEUE: u8 = 3;

struct Slot<T> {
    generation: AtomicU32,
    /// The table's reference (from `Arc::into_raw`); null while the slot is free or reserved.
    value: AtomicPtr<T>,
}

impl<T> Slot<T> {
    /// True if this slot was issued at `generation` and has moved on since (generations start
    /// at 1 and never wrap).
    fn was_live_at(&self, generation: u32) -> bool {
        generation != 0 && generation < self.generation.load(Ordering::Acquire)
    }
}

/// Which of a shard's slots are taken: changed under the shard's lock.
struct Slots {
    /// How many slots were ever handed out (each chunk is allocated when its first slot is).
    issued: usize,
    free: Vec<u32>,
    /// Ids reserved or live: counted here, under the lock their reservation and removal take
    /// anyway, rather than in one counter every submitting thread writes.
    taken: usize,
}

struct Shard<T> {
    /// Allocated once under the lock and never freed: the tables are statics.
    chunks: [AtomicPtr<Slot<T>>; CHUNKS],
    slots: Mutex<Slots>,
}

/// A table of live objects of one type, addressed by generation-checked ids.
pub(crate) struct HandleTable<T> {
    tag: u8,
    shards: [Shard<T>; SHARDS],
    removed: Reclaimer<T>,
    /// The table holds references to its objects: it is `Send`/`Sync` as an `Arc<T>` is.
    _holds: PhantomData<Arc<T>>,
}

thread_local! {
    static HOME_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_HOME_SHARD: AtomicUsize = AtomicUsize::new(0);

/// The shard this thread takes slots from: assigned round-robin on first use, then fixed.
fn home_shard() -> usize {
    HOME_SHARD
        .try_with(|home| {
            if home.get() == usize::MAX {
                home.set(NEXT_HOME_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
            }
            home.get()
        })
        .unwrap_or(0)
}

/// The chunk of a shard's slot `local` and its offset there.
fn locate(local: usize) -> (usize, usize) {
    let n = local / FIRST_CHUNK + 1;
    let chunk = (usize::BITS - 1 - n.leading_zeros()) as usize;
    (chunk, local - FIRST_CHUNK * ((1 << chunk) - 1))
}

impl<T> HandleTable<T> {
    pub(crate) const fn new(tag: u8) -> Self {
        HandleTable {
            tag,
            shards: [const {
                Shard {
                    chunks: [const { AtomicPtr::new(ptr::null_mut()) }; CHUNKS],
                    slots: Mutex::new(Slots {
                        issued: 0,
                        free: Vec::new(),
                        taken: 0,
                    }),
                }
            }; SHARDS],
            removed: Reclaimer::new(),
            _holds: PhantomData,
        }
    }

    fn kind(&self) -> &'static str {
        match self.tag {
            TAG_RUNTIME => "runtime",
            TAG_TASK => "task",
            _ => "queue",
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Slots> {
        lock!(self.shards[shard].slots)
    }

    /// Slot `local` of `shard`, if its chunk was ever allocated.
    fn slot(&self, shard: usize, local: usize) -> Option<&Slot<T>> {
        let (chunk, offset) = locate(local);
        let base = self.shards[shard]
            .chunks
            .get(chunk)?
            .load(Ordering::Acquire);
        // SAFETY: a chunk, once published, is never freed and has `FIRST_CHUNK << chunk` slots.
        (!base.is_null()).then(|| unsafe { &*base.add(offset) })
    }

    /// Takes a slot and returns its id. The id is not live until [`publish`](Self::publish):
    /// lookups fail until then, so nobody can reach an object that is still being set up.
    pub(crate) fn reserve(&self) -> Result<u64, Error> {
        let shard_index = home_shard();
        let mut slots = self.lock(shard_index);
        let local = match slots.free.pop() {
            Some(local) => local as usize,
            None => {
                let local = slots.issued;
                if (local + 1) * SHARDS > u32::MAX as usize {
                    return Err(Error::new(
                        TB_ERR_OS,
                        "the handle table is full (2^32 live handles)",
                    ));
                }
                let (chunk, offset) = locate(local);
                if offset == 0 {
                    let fresh: Box<[Slot<T>]> = (0..FIRST_CHUNK << chunk)
                        .map(|_| Slot {
                            generation: AtomicU32::new(1),
                            value: AtomicPtr::new(ptr::null_mut()),
                        })
                        .collect();
                    self.shards[shard_index].chunks[chunk]
                        .store(Box::into_raw(fresh).cast(), Ordering::Release);
                }
                slots.issued += 1;
                local
            }
        };
        slots.taken += 1;
        let slot = self.slot(shard_index, local).expect("issued slots exist");
        let index = (local * SHARDS + shard_index) as u64;
        let generation = u64::from(slot.generation.load(Ordering::Relaxed));
        Ok((u64::from(self.tag) << TAG_SHIFT) | (generation << INDEX_BITS) | index)
    }

    /// Makes a reserved id live, naming `value`.
    pub(crate) fn publish(&self, id: u64, value: Arc<T>) {
        let (shard_index, local, _) = self.split(id);
        let slot = self.slot(shard_index, local).expect("reserved slots exist");
        slot.value
            .store(Arc::into_raw(value).cast_mut(), Ordering::Release);
    }

    /// Gives back a reserved id that was never published.
    pub(crate) fn unreserve(&self, id: u64) {
        let (shard_index, local, _) = self.split(id);
        let slot = self.slot(shard_index, local).expect("reserved slots exist");
        Self::retire(&mut self.lock(shard_index), slot, local);
    }

    /// Empties a slot, under its shard's lock: its generation moves on, so every id naming it
    /// goes stale. Returns the table's reference it held, or null if it was only reserved.
    ///
    /// The pointer goes before the generation moves on (see [`with`](Self::with)). A slot whose
    /// generation has run out is never reused, so that no stale id can name a later object:
    /// 16 bytes left behind every 2^28 uses of a slot.
    fn retire(slots: &mut Slots, slot: &Slot<T>, local: usize) -> *mut T {
        slots.taken -= 1;
        let value = slot.value.swap(ptr::null_mut(), Ordering::SeqCst);
        let next = slot.generation.load(Ordering::Relaxed) + 1;
        slot.generation.store(next, Ordering::Release);
        if next < GENERATION_MASK {
            slots.free.push(local as u32);
        }
        value
    }

    fn split(&self, id: u64) -> (usize, usize, u32) {
        let index = (id & u64::from(u32::MAX)) as usize;
        let generation = ((id >> INDEX_BITS) as u32) & GENERATION_MASK;
        (index % SHARDS, index / SHARDS, generation)
    }

    /// Splits an id into (shard, local slot, generation), checking its tag.
    fn decode(&self, id: u64) -> Result<(usize, usize, u32), Error> {
        if id == 0 {
            return Err(Error::bad_handle(
                self.kind(),
                id,
                "is zero (never a valid handle)",
            ));
        }
        let tag = id >> TAG_SHIFT;
        if tag != u64::from(self.tag) {
            let why = match tag as u8 {
                TAG_RUNTIME => "is of the wrong type: it is a runtime handle",
                TAG_TASK => "is of the wrong type: it is a task handle",
                TAG_QUEUE => "is of the wrong type: it is a queue handle",
                _ => "has an unknown type tag (forged or corrupted)",
            };
            return Err(Error::bad_handle(self.kind(), id, why));
        }
        Ok(self.split(id))
    }

    /// True if `slot` (of `shard`) was issued at `generation` and has moved on since. Read under
    /// the shard's lock, so that a removal under way has finished: a removal empties the slot
    /// before it moves the generation on, and a lookup failing in between must not take the
    /// slot for one never issued at that generation.
    fn was_live_at(&self, shard: usize, slot: Option<&Slot<T>>, generation: u32) -> bool {
        let _settled = self.lock(shard);
        slot.is_some_and(|slot| slot.was_live_at(generation))
    }

    /// The error for `id` (of `shard`), which names no live object.
    fn dead(&self, id: u64, shard: usize, slot: Option<&Slot<T>>, generation: u32) -> Error {
        let why = if self.was_live_at(shard, slot, generation) {
            "is not live (released, or its runtime was shut down)"
        } else {
            "was never issued (forged or corrupted)"
        };
        Error::bad_handle(self.kind(), id, why)
    }

    /// Runs `f` on the live object named by `id`, without a lock.
    ///
    /// The object may be removed meanwhile (the lookup then counts as done before the removal).
    /// `f` must be short, as a removal meanwhile leaves the object to a later one to drop.
    pub(crate) fn with<R>(&self, id: u64, f: impl FnOnce(&Arc<T>) -> R) -> Result<R, Error> {
        let (shard_index, local, generation) = self.decode(id)?;
        let slot = self.slot(shard_index, local);
        let found = reclaim::read(|| {
            let slot = slot?;
            // The generation is checked before and after the pointer is read. A pointer
            // published for a later generation comes with that generation (the second check),
            // and one retired from an earlier generation is gone before the generation moves
            // on (the first check): so a pointer between two matching checks is this id's.
            if slot.generation.load(Ordering::Acquire) != generation {
                return None;
            }
            let value = slot.value.load(Ordering::SeqCst);
            if value.is_null() || slot.generation.load(Ordering::Acquire) != generation {
                return None;
            }
            // SAFETY: `value` is the table's reference (from `Arc::into_raw`), live at the
            // generation check; a removal does not drop it while this read section is open.
            let value = ManuallyDrop::new(unsafe { Arc::from_raw(value) });
            Some(f(&value))
        });
        found.ok_or_else(|| self.dead(id, shard_index, slot, generation))
    }

    /// Returns a new reference to the live object named by `id`.
    pub(crate) fn get(&self, id: u64) -> Result<Arc<T>, Error> {
        self.with(id, Arc::clone)
    }

    /// Makes `id` dead and runs `f` on the object it named, before the table lets go of it;
    /// the slot is reused with a new generation.
    pub(crate) fn remove<R>(&self, id: u64, f: impl FnOnce(&Arc<T>) -> R) -> Result<R, Error> {
        let (shard_index, local, generation) = self.decode(id)?;
        let slot = self.slot(shard_index, local);
        let mut slots = self.lock(shard_index);
        let live = slot.filter(|slot| {
            slot.generation.load(Ordering::Relaxed) == generation
                && !slot.value.load(Ordering::Relaxed).is_null()
        });
        let Some(live) = live else {
            drop(slots);
            return Err(self.dead(id, shard_index, slot, generation));
        };
        let value = Self::retire(&mut slots, live, local);
        drop(slots);
        // SAFETY: the table's reference, from `Arc::into_raw` in `publish`; no slot holds it now.
        let held = unsafe { Arc::from_raw(value) };
        Ok(self.removed.retire_after(held, f))
    }

    /// True if `id` was issued by this table and has since been removed (as opposed to never
    /// issued): its slot exists and has moved to a later generation.
    pub(crate) fn was_removed(&self, id: u64) -> bool {
        let Ok((shard_index, local, generation)) = self.decode(id) else {
            return false;
        };
        self.was_live_at(shard_index, self.slot(shard_index, local), generation)
    }

    /// How many ids of this table are live (or reserved, being set up).
    pub(crate) fn live(&self) -> usize {
        (0..SHARDS).map(|shard| self.lock(shard).taken).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TB_ERR_BAD_HANDLE;

    #[test]
    fn ids_are_checked_by_tag_generation_and_index() {
        static TABLE: HandleTable<u32> = HandleTable::new(TAG_TASK);
        let id = insert(&TABLE, 7);
        assert_ne!(id, 0);
        assert_eq!(*TABLE.get(id).unwrap(), 7);
        assert_eq!(TABLE.get(0).unwrap_err().status, TB_ERR_BAD_HANDLE);
        let as_runtime = (id & !(0xF << TAG_SHIFT)) | (u64::from(TAG_RUNTIME) << TAG_SHIFT);
        assert_eq!(TABLE.get(as_runtime).unwrap_err().status, TB_ERR_BAD_HANDLE);
        assert_eq!(
            TABLE.get(id + (1 << 20)).unwrap_err().status,
            TB_ERR_BAD_HANDLE
        );
        assert_eq!(TABLE.remove(id, |value| **value).unwrap(), 7);
        assert_eq!(
            TABLE.remove(id, |_| ()).unwrap_err().status,
            TB_ERR_BAD_HANDLE
        );
        assert!(TABLE.was_removed(id));
        let reused = insert(&TABLE, 8);
        assert_eq!(
            reused & u64::from(u32::MAX),
            id & u64::from(u32::MAX),
            "slot is reused"
        );
        assert_ne!(reused, id, "with a new generation");
        assert_eq!(TABLE.get(id).unwrap_err().status, TB_ERR_BAD_HANDLE);
        assert_eq!(*TABLE.get(reused).unwrap(), 8);
        TABLE.remove(reused, |_| ()).unwrap();
        assert_eq!(TABLE.live(), 0);
    }

    fn insert(table: &HandleTable<u32>, value: u32) -> u64 {
        let id = table.reserve().unwrap();
        assert_eq!(
            table.get(id).unwrap_err().status,
            TB_ERR_BAD_HANDLE,
            "not live yet"
        );
        table.publish(id, Arc::new(value));
        id
    }

    #[test]
    fn slots_fill_chunks_that_double() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(FIRST_CHUNK - 1), (0, FIRST_CHUNK - 1));
        assert_eq!(locate(FIRST_CHUNK), (1, 0));
        assert_eq!(locate(3 * FIRST_CHUNK - 1), (1, 2 * FIRST_CHUNK - 1));
        assert_eq!(locate(3 * FIRST_CHUNK), (2, 0));
        let last = (1 << INDEX_BITS) / SHARDS - 1;
        let (chunk, offset) = locate(last);
        assert!(chunk < CHUNKS && offset < FIRST_CHUNK << chunk);
    }

    /// Lookups race removals and the reuse of the same slots: a lookup either fails or finds
    /// the object its id named, never another one, and no object is freed while read (Miri and
    /// the sanitizers check the memory).
    #[test]
    fn lookups_racing_removal_and_reuse_find_the_right_object_or_none() {
        static TABLE: HandleTable<u64> = HandleTable::new(TAG_QUEUE);
        let rounds = if cfg!(miri) { 30 } else { 20_000 };
        // More slots than the first chunks hold, reused over and over by one thread's shard.
        let ids: Vec<std::sync::atomic::AtomicU64> = (0..200)
            .map(|_| {
                let id = TABLE.reserve().unwrap();
                TABLE.publish(id, Arc::new(id));
                std::sync::atomic::AtomicU64::new(id)
            })
            .collect();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    let (mut found, mut missed) = (0u64, 0u64);
                    for round in 0..rounds * 4 {
                        let id = ids[round % ids.len()].load(Ordering::Relaxed);
                        // Every other lookup forges the slot's next generation.
                        let id = id + ((round as u64 % 2) << INDEX_BITS);
                        match TABLE.with(id, |value| **value) {
                            Ok(value) => {
                                assert_eq!(value, id, "a lookup found another object");
                                found += 1;
                            }
                            Err(_) => missed += 1,
                        }
                    }
                    assert!(found + missed > 0);
                });
            }
            for round in 0..rounds {
                let cell = &ids[round % ids.len()];
                let old = cell.load(Ordering::Relaxed);
                assert_eq!(TABLE.remove(old, |value| **value).unwrap(), old);
                let id = TABLE.reserve().unwrap();
                TABLE.publish(id, Arc::new(id));
                cell.store(id, Ordering::Relaxed);
            }
        });
        for cell in &ids {
            TABLE.remove(cell.load(Ordering::Relaxed), |_| ()).unwrap();
        }
        assert_eq!(TABLE.live(), 0);
    }

    /// A lookup that fails because its object is being removed says the id is no longer live,
    /// never that it was never issued (a removal empties the slot before it moves the
    /// generation on; found by the model test under Miri: a submission racing a shutdown got
    /// `TB_ERR_BAD_HANDLE` instead of `TB_ERR_SHUTDOWN`).
    #[test]
    fn a_lookup_failing_during_a_removal_names_a_removed_id() {
        static TABLE: HandleTable<u64> = HandleTable::new(TAG_QUEUE);
        let rounds = if cfg!(miri) { 20 } else { 5_000 };
        for _ in 0..rounds {
            let id = TABLE.reserve().unwrap();
            TABLE.publish(id, Arc::new(id));
            std::thread::scope(|scope| {
                scope.spawn(|| TABLE.remove(id, |_| ()).unwrap());
                let error = loop {
                    match TABLE.with(id, |value| **value) {
                        // Yields, so that the removing thread runs even if every other CPU
                        // is busy (it took up to 15 s without, on a busy machine).
                        Ok(value) => {
                            assert_eq!(value, id);
                            std::thread::yield_now();
                        }
                        Err(error) => break error,
                    }
                };
                let text = error.to_string();
                assert!(text.contains("is not live"), "{text}");
            });
        }
        assert_eq!(TABLE.live(), 0);
    }

    /// A slot whose generation runs out is left alone: its ids stay dead for good.
    #[test]
    fn a_slot_is_never_reused_once_its_generation_runs_out() {
        static TABLE: HandleTable<u32> = HandleTable::new(TAG_QUEUE);
        let id = TABLE.reserve().unwrap();
        let (shard, local, _) = TABLE.split(id);
        let slot = TABLE.slot(shard, local).unwrap();
        slot.generation
            .store(GENERATION_MASK - 1, Ordering::Relaxed);
        let last = id & !(u64::from(GENERATION_MASK) << INDEX_BITS)
            | u64::from(GENERATION_MASK - 1) << INDEX_BITS;
        TABLE.publish(last, Arc::new(1));
        assert_eq!(TABLE.remove(last, |value| **value).unwrap(), 1);
        let next = insert(&TABLE, 2);
        assert_ne!(
            next & u64::from(u32::MAX),
            id & u64::from(u32::MAX),
            "not reused"
        );
        assert!(TABLE.was_removed(last));
        assert_eq!(TABLE.get(last).unwrap_err().status, TB_ERR_BAD_HANDLE);
        let forged = last + (1 << INDEX_BITS);
        assert_eq!(TABLE.get(forged).unwrap_err().status, TB_ERR_BAD_HANDLE);
        assert!(!TABLE.was_removed(forged));
        TABLE.remove(next, |_| ()).unwrap();
    }

    /// Generation 0 is never issued: such an id was never removed either.
    #[test]
    fn generation_zero_is_never_issued() {
        static TABLE: HandleTable<u32> = HandleTable::new(TAG_QUEUE);
        let id = insert(&TABLE, 3);
        let zero = id & !(u64::from(GENERATION_MASK) << INDEX_BITS);
        assert!(!TABLE.was_removed(zero));
        assert_eq!(TABLE.get(zero).unwrap_err().status, TB_ERR_BAD_HANDLE);
        TABLE.remove(id, |_| ()).unwrap();
    }

    /// A removal whose closure panics still leaves the object to the reclaimer: a lookup
    /// under way keeps it (and it is dropped once, after).
    #[test]
    fn a_panic_while_removing_leaves_the_object_to_the_reclaimer() {
        static TABLE: HandleTable<Vec<u8>> = HandleTable::new(TAG_QUEUE);
        let id = TABLE.reserve().unwrap();
        let object = Arc::new(vec![1u8]);
        TABLE.publish(id, Arc::clone(&object));
        let (entered, in_section) = std::sync::mpsc::channel();
        let (leave, left) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            reclaim::read(|| {
                entered.send(()).unwrap();
                left.recv().unwrap();
            })
        });
        in_section.recv().unwrap();
        let caught = std::panic::catch_unwind(|| TABLE.remove(id, |_| panic!("in the closure")));
        assert!(caught.is_err());
        assert!(TABLE.was_removed(id));
        assert_eq!(
            Arc::strong_count(&object),
            2,
            "dropped while a lookup was under way"
        );
        leave.send(()).unwrap();
        reader.join().unwrap();
        for _ in 0..10_000 {
            if Arc::strong_count(&object) == 1 {
                return;
            }
            // Other tests' lookups may hold it back until a later removal from this table.
            let other = TABLE.reserve().unwrap();
            TABLE.publish(other, Arc::new(Vec::new()));
            TABLE.remove(other, |_| ()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("the table kept the object");
    }

    #[test]
    fn a_reserved_id_can_be_given_back() {
        static TABLE: HandleTable<u32> = HandleTable::new(TAG_RUNTIME);
        let id = TABLE.reserve().unwrap();
        TABLE.unreserve(id);
        assert!(TABLE.was_removed(id));
        assert!(
            !TABLE.was_removed(id + (1 << INDEX_BITS)),
            "a future generation is forged"
        );
        assert_eq!(TABLE.live(), 0);
    }
}
