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
//! Lookups and removals take no lock, and a lookup writes only its own thread's memory, so that
//! threads polling the same task do not contend (a lock word is a cache line every caller
//! writes). Each slot is a stamp (its generation and whether it is free, live or being
//! emptied) and a pointer, both atomic, in chunks that never move or go away: a lookup checks
//! the stamp, loads the pointer, and checks the stamp again, and a removal wins the slot by
//! moving its stamp from live to being emptied, with one compare-and-swap. An object removed
//! from the table may still be read by a lookup that found it just before, so the table's
//! reference to it is dropped only once no such lookup can still be reading it (see
//! [`crate::reclaim`]): at once in the usual case. Objects whose end matters (a runtime's
//! threads, a queue's fd) are ended by the call that removes them, so even a late drop only
//! frees memory.
//!
//! Free slots are kept by threads: each thread keeps up to [`SPARE_MAX`] of each table's (see
//! [`Spare`]), takes a slot from those and puts an emptied one back there, without a lock or a
//! locked instruction. Only a thread with none left, or too many, takes the lock of a shard's
//! free list, to move [`SPARE_BATCH`] slots at once. Each thread has a home shard to take them
//! from, so that threads submitting work at the same time do not contend on one lock.

use std::cell::{Cell, RefCell};
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
/// How many free slots a thread takes from its home shard when it has none left, and keeps
/// when it gives slots back.
const SPARE_BATCH: usize = 32;
/// How many free slots of a table a thread keeps at most.
const SPARE_MAX: usize = 2 * SPARE_BATCH;

/// Tag of runtime handles.
pub(crate) const TAG_RUNTIME: u8 = 1;
/// Tag of task handles.
pub(crate) const TAG_TASK: u8 = 2;
/// Tag of completion queue handles.
pub(crate) const TAG_QUEUE: u8 = 3;

/// The phase of a slot at one generation, in the low bits of its stamp: free (in a free list,
/// or reserved and being set up), live (published), or being emptied by a removal. A slot
/// goes through them in this order, then is free at the next generation, so its stamp only
/// grows.
const FREE: u32 = 0;
const LIVE: u32 = 1;
const EMPTYING: u32 = 2;

/// The stamp of a slot at `generation` in `phase`.
const fn stamp(generation: u32, phase: u32) -> u32 {
    generation << 2 | phase
}

struct Slot<T> {
    /// The slot's generation and phase (see [`stamp`]).
    stamp: AtomicU32,
    /// The table's reference (from `Arc::into_raw`) while the slot is live; null otherwise.
    value: AtomicPtr<T>,
}

impl<T> Slot<T> {
    /// True if this slot was live at `generation` and has moved on since, or is being emptied
    /// (generations start at 1 and never wrap).
    fn was_live_at(&self, generation: u32) -> bool {
        generation != 0 && self.stamp.load(Ordering::Acquire) > stamp(generation, LIVE)
    }
}

/// Which of a shard's slots are taken: changed under the shard's lock.
struct Slots {
    /// How many slots were ever handed out (each chunk is allocated when its first slot is).
    issued: usize,
    free: Vec<u32>,
    /// Slots out of this shard: live, reserved, or kept free by a thread (see [`Spare`]).
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
    /// How many free slots each thread keeps (each its [`Spare::count`]): counted out of the
    /// shards' `taken` by [`live`](Self::live).
    spares: Mutex<Vec<Arc<Count>>>,
    removed: Reclaimer<T>,
    /// The table holds references to its objects: it is `Send`/`Sync` as an `Arc<T>` is.
    _holds: PhantomData<Arc<T>>,
}

/// What a thread's [`Spare`] needs of its table: a way to give its slots back.
trait Shelf {
    /// Puts free slots back into their shards' free lists (reordering `indices`).
    fn give_back(&self, indices: &mut [u32]);
    /// Forgets the count of a thread's spare slots, which has none left: the thread is ending.
    fn forget(&self, count: &Arc<Count>);
}

/// How many free slots a thread keeps of one table (its [`Spare::len`]), for
/// [`HandleTable::live`] on any thread: written by that thread only, with a plain store. On
/// cache lines of its own, as is [`Spare`]: a line shared with data another thread writes
/// would be taken from this thread at every write.
#[repr(align(128))]
struct Count(AtomicUsize);

/// The free slots of one table that one thread keeps (their stamps are free, at the
/// generation their next id will have). Taken from and given back to the shards in batches,
/// and all given back when the thread ends.
#[repr(align(128))]
struct Spare {
    table: &'static dyn Shelf,
    /// Slot indices (the low half of an id): the first `len` are kept, the last one is handed
    /// out next.
    indices: [u32; SPARE_MAX + 1],
    len: usize,
    count: Arc<Count>,
}

impl Spare {
    fn counted(&mut self) {
        self.count.0.store(self.len, Ordering::Relaxed);
    }

    /// Hands out a kept slot, taking a batch from this thread's home shard if none is left.
    fn take<T: 'static>(&mut self, table: &HandleTable<T>) -> Result<u32, Error> {
        if self.len == 0 {
            let batch = &mut self.indices[..SPARE_BATCH];
            let taken = table.take_from_shard(batch)?;
            // Handed out from the end: in the shard's order.
            batch[..taken].reverse();
            self.len = taken;
        }
        self.len -= 1;
        self.counted();
        Ok(self.indices[self.len])
    }

    /// Keeps `index`, an emptied slot, giving the oldest slots back once there are too many.
    fn put(&mut self, index: u32) {
        self.indices[self.len] = index;
        self.len += 1;
        if self.len > SPARE_MAX {
            let extra = self.len - SPARE_BATCH;
            self.table.give_back(&mut self.indices[..extra]);
            self.indices.copy_within(extra..self.len, 0);
            self.len -= extra;
        }
        self.counted();
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        self.table.give_back(&mut self.indices[..self.len]);
        self.len = 0;
        self.counted();
        self.table.forget(&self.count);
    }
}

thread_local! {
    static HOME_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    /// This thread's spare slots, one entry per table it used.
    static SPARES: RefCell<Vec<Spare>> = const { RefCell::new(Vec::new()) };
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

/// The shard of slot `index` and the slot's place in it.
fn split_index(index: usize) -> (usize, usize) {
    (index % SHARDS, index / SHARDS)
}

impl<T: 'static> Shelf for HandleTable<T> {
    fn give_back(&self, indices: &mut [u32]) {
        indices.sort_unstable_by_key(|&index| index as usize % SHARDS);
        for same_shard in indices.chunk_by(|a, b| a % SHARDS as u32 == b % SHARDS as u32) {
            let shard = same_shard[0] as usize % SHARDS;
            let mut slots = self.lock(shard);
            slots.taken -= same_shard.len();
            slots
                .free
                .extend(same_shard.iter().map(|&index| index / SHARDS as u32));
        }
    }

    fn forget(&self, count: &Arc<Count>) {
        lock!(self.spares).retain(|kept| !Arc::ptr_eq(kept, count));
    }
}

impl<T: 'static> HandleTable<T> {
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
            spares: Mutex::new(Vec::new()),
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

    /// Slot `index` (the low half of an id), which was handed out, so its chunk exists.
    fn issued_slot(&self, index: usize) -> &Slot<T> {
        let (shard, local) = split_index(index);
        self.slot(shard, local).expect("issued slots exist")
    }

    /// Runs `f` on this thread's spare slots of this table; None once this thread's
    /// thread-locals are being destroyed (the caller then takes a shard's lock instead).
    fn with_spare<R>(&'static self, f: impl FnOnce(&mut Spare) -> R) -> Option<R> {
        SPARES
            .try_with(|spares| {
                let mut spares = spares.try_borrow_mut().ok()?;
                let at = match spares.iter().position(|s| ptr::addr_eq(s.table, self)) {
                    Some(at) => at,
                    None => {
                        let count = Arc::new(Count(AtomicUsize::new(0)));
                        lock!(self.spares).push(Arc::clone(&count));
                        spares.push(Spare {
                            table: self,
                            indices: [0; SPARE_MAX + 1],
                            len: 0,
                            count,
                        });
                        spares.len() - 1
                    }
                };
                Some(f(&mut spares[at]))
            })
            .ok()
            .flatten()
    }

    /// Takes free slots out of this thread's home shard into `into`, as many as fit (at least
    /// one): freed ones first (last freed, first taken), then new ones in ascending order, as
    /// a C program's loop over its handles then finds them. Returns how many it took.
    fn take_from_shard(&self, into: &mut [u32]) -> Result<usize, Error> {
        let shard_index = home_shard();
        let mut slots = self.lock(shard_index);
        for (taken, place) in into.iter_mut().enumerate() {
            let local = match slots.free.pop() {
                Some(local) => local as usize,
                None => {
                    let local = slots.issued;
                    if (local + 1) * SHARDS > u32::MAX as usize {
                        if taken == 0 {
                            return Err(Error::new(
                                TB_ERR_OS,
                                "the handle table is full (2^32 live handles)",
                            ));
                        }
                        return Ok(taken);
                    }
                    let (chunk, offset) = locate(local);
                    if offset == 0 {
                        let fresh: Box<[Slot<T>]> = (0..FIRST_CHUNK << chunk)
                            .map(|_| Slot {
                                stamp: AtomicU32::new(stamp(1, FREE)),
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
            *place = (local * SHARDS + shard_index) as u32;
        }
        Ok(into.len())
    }

    /// Takes a slot and returns its id. The id is not live until [`publish`](Self::publish):
    /// lookups fail until then, so nobody can reach an object that is still being set up.
    pub(crate) fn reserve(&'static self) -> Result<u64, Error> {
        let index = match self.with_spare(|spare| spare.take(self)) {
            Some(taken) => taken?,
            None => {
                let mut one = [0];
                self.take_from_shard(&mut one)?;
                one[0]
            }
        };
        let stamp = self
            .issued_slot(index as usize)
            .stamp
            .load(Ordering::Relaxed);
        let generation = u64::from(stamp >> 2);
        Ok((u64::from(self.tag) << TAG_SHIFT) | (generation << INDEX_BITS) | u64::from(index))
    }

    /// Makes a reserved id live, naming `value`.
    pub(crate) fn publish(&self, id: u64, value: Arc<T>) {
        let (shard_index, local, generation) = self.split(id);
        let slot = self.slot(shard_index, local).expect("reserved slots exist");
        slot.value
            .store(Arc::into_raw(value).cast_mut(), Ordering::Release);
        slot.stamp.store(stamp(generation, LIVE), Ordering::Release);
    }

    /// Gives back a reserved id that was never published.
    pub(crate) fn unreserve(&'static self, id: u64) {
        let (_, _, generation) = self.split(id);
        self.free_slot(id as u32, generation);
    }

    /// Frees slot `index`, emptied (or only reserved) at `generation`: its stamp moves to the
    /// next generation, so every id naming it stays dead, and this thread keeps it.
    ///
    /// A slot whose generation has run out is never reused, so that no stale id can name a
    /// later object: 16 bytes left behind every 2^28 uses of a slot.
    fn free_slot(&'static self, index: u32, generation: u32) {
        let next = generation + 1;
        self.issued_slot(index as usize)
            .stamp
            .store(stamp(next, FREE), Ordering::Release);
        if next >= GENERATION_MASK {
            self.lock(split_index(index as usize).0).taken -= 1;
        } else if self.with_spare(|spare| spare.put(index)).is_none() {
            self.give_back(&mut [index]);
        }
    }

    fn split(&self, id: u64) -> (usize, usize, u32) {
        let (shard, local) = split_index((id & u64::from(u32::MAX)) as usize);
        let generation = ((id >> INDEX_BITS) as u32) & GENERATION_MASK;
        (shard, local, generation)
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

    /// The error for `id`, which names no live object. A slot being emptied counts as no
    /// longer live, so that a lookup failing during a removal never says the id was never
    /// issued.
    fn dead(&self, id: u64, slot: Option<&Slot<T>>, generation: u32) -> Error {
        let why = if slot.is_some_and(|slot| slot.was_live_at(generation)) {
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
        let live = stamp(generation, LIVE);
        let found = reclaim::read(|| {
            let slot = slot?;
            // The stamp is checked before and after the pointer is read. A pointer published
            // for a later generation comes with that generation's stamp (the second check),
            // and one emptied at this generation leaves the live stamp first (the first
            // check, whose sequentially consistent load is what the read section covers): so
            // a pointer between two live checks is this id's.
            if slot.stamp.load(Ordering::SeqCst) != live {
                return None;
            }
            let value = slot.value.load(Ordering::Acquire);
            if slot.stamp.load(Ordering::Acquire) != live {
                return None;
            }
            debug_assert!(!value.is_null(), "a live slot has its object");
            // SAFETY: `value` is the table's reference (from `Arc::into_raw`), live at the
            // stamp check; a removal does not drop it while this read section is open.
            let value = ManuallyDrop::new(unsafe { Arc::from_raw(value) });
            Some(f(&value))
        });
        found.ok_or_else(|| self.dead(id, slot, generation))
    }

    /// Returns a new reference to the live object named by `id`.
    pub(crate) fn get(&self, id: u64) -> Result<Arc<T>, Error> {
        self.with(id, Arc::clone)
    }

    /// Makes `id` dead and runs `f` on the object it named, before the table lets go of it;
    /// the slot is reused with a new generation. Of removals racing for one id, one wins.
    pub(crate) fn remove<R>(
        &'static self,
        id: u64,
        f: impl FnOnce(&Arc<T>) -> R,
    ) -> Result<R, Error> {
        let (shard_index, local, generation) = self.decode(id)?;
        let slot = self.slot(shard_index, local);
        let live = stamp(generation, LIVE);
        // The unlinking step of the read sections' argument (see `crate::reclaim`).
        let won = slot.filter(|slot| {
            slot.stamp
                .compare_exchange(
                    live,
                    stamp(generation, EMPTYING),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                )
                .is_ok()
        });
        let Some(slot) = won else {
            return Err(self.dead(id, slot, generation));
        };
        let value = slot.value.load(Ordering::Relaxed);
        slot.value.store(ptr::null_mut(), Ordering::Release);
        self.free_slot(id as u32, generation);
        // SAFETY: the table's reference, from `Arc::into_raw` in `publish`; no slot holds it now.
        let held = unsafe { Arc::from_raw(value) };
        Ok(self.removed.retire_after(held, f))
    }

    /// True if `id` was issued by this table and has since been removed (as opposed to never
    /// issued): its slot exists and has moved on from that generation's live stamp.
    pub(crate) fn was_removed(&self, id: u64) -> bool {
        let Ok((shard_index, local, generation)) = self.decode(id) else {
            return false;
        };
        self.slot(shard_index, local)
            .is_some_and(|slot| slot.was_live_at(generation))
    }

    /// How many ids of this table are live (or reserved, being set up). Exact when no other
    /// thread takes or frees slots meanwhile.
    pub(crate) fn live(&self) -> usize {
        let spare: usize = lock!(self.spares)
            .iter()
            .map(|count| count.0.load(Ordering::Relaxed))
            .sum();
        let taken: usize = (0..SHARDS).map(|shard| self.lock(shard).taken).sum();
        taken.saturating_sub(spare)
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

    fn insert(table: &'static HandleTable<u32>, value: u32) -> u64 {
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

    /// Of two removals racing for one id, exactly one wins; the other says the id is no
    /// longer live.
    #[test]
    fn of_removals_racing_for_one_id_one_wins() {
        static TABLE: HandleTable<u32> = HandleTable::new(TAG_QUEUE);
        let rounds = if cfg!(miri) { 10 } else { 2_000 };
        for round in 0..rounds {
            let id = insert(&TABLE, round);
            let results = std::thread::scope(|scope| {
                let other = scope.spawn(|| TABLE.remove(id, |value| **value));
                [TABLE.remove(id, |value| **value), other.join().unwrap()]
            });
            let won: Vec<u32> = results
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .copied()
                .collect();
            assert_eq!(won, [round], "one removal wins, with the object");
            let lost = results.into_iter().find_map(Result::err).unwrap();
            assert!(lost.to_string().contains("is not live"), "{lost}");
        }
        assert_eq!(TABLE.live(), 0);
    }

    /// Threads keep the slots they free, up to `SPARE_MAX`, give the rest back to the shards,
    /// and give all back when they end; the count of live ids stays exact meanwhile.
    #[test]
    fn slots_kept_by_threads_go_back_to_the_shards() {
        static TABLE: HandleTable<u32> = HandleTable::new(TAG_QUEUE);
        let n = 3 * SPARE_MAX as u32;
        let ids = std::thread::spawn(move || (0..n).map(|i| insert(&TABLE, i)).collect::<Vec<_>>())
            .join()
            .unwrap();
        assert_eq!(TABLE.live(), n as usize);
        std::thread::spawn(move || {
            for (removed, id) in ids.into_iter().enumerate() {
                TABLE.remove(id, |_| ()).unwrap();
                assert_eq!(TABLE.live(), n as usize - removed - 1);
                let kept = SPARES.with(|spares| spares.borrow()[0].len);
                assert!(kept <= SPARE_MAX);
            }
            let again = insert(&TABLE, 0);
            assert_eq!(TABLE.live(), 1);
            TABLE.remove(again, |_| ()).unwrap();
        })
        .join()
        .unwrap();
        assert_eq!(TABLE.live(), 0);
        assert!(
            lock!(TABLE.spares).is_empty(),
            "ended threads' counts are gone"
        );
        for shard in 0..SHARDS {
            let slots = TABLE.lock(shard);
            assert_eq!(slots.taken, 0, "every slot is back in shard {shard}");
            assert_eq!(slots.free.len(), slots.issued);
        }
    }

    /// A slot whose generation runs out is left alone: its ids stay dead for good.
    #[test]
    fn a_slot_is_never_reused_once_its_generation_runs_out() {
        static TABLE: HandleTable<u32> = HandleTable::new(TAG_QUEUE);
        let id = TABLE.reserve().unwrap();
        let (shard, local, _) = TABLE.split(id);
        let slot = TABLE.slot(shard, local).unwrap();
        slot.stamp
            .store(stamp(GENERATION_MASK - 1, FREE), Ordering::Relaxed);
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
