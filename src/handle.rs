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
//! Each table is split into shards, each behind its own small mutex, so that threads submitting
//! work at the same time do not contend on one lock: a thread inserts into "its" shard and a
//! lookup goes straight to the shard named by the id's index.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, TB_ERR_OS};
use crate::sync::lock;

const SHARDS: usize = 16;
const INDEX_BITS: u32 = 32;
const GENERATION_BITS: u32 = 28;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;
const TAG_SHIFT: u32 = INDEX_BITS + GENERATION_BITS;

/// Tag of runtime handles.
pub(crate) const TAG_RUNTIME: u8 = 1;
/// Tag of task handles.
pub(crate) const TAG_TASK: u8 = 2;
/// Tag of completion queue handles.
pub(crate) const TAG_QUEUE: u8 = 3;

struct Slot<T> {
    generation: u32,
    value: Option<Arc<T>>,
}

struct Shard<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

/// A table of live objects of one type, addressed by generation-checked ids.
pub(crate) struct HandleTable<T> {
    tag: u8,
    shards: [Mutex<Shard<T>>; SHARDS],
    live: AtomicUsize,
}

thread_local! {
    static HOME_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_HOME_SHARD: AtomicUsize = AtomicUsize::new(0);

/// The shard this thread inserts into: assigned round-robin on first use, then fixed.
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

impl<T> HandleTable<T> {
    pub(crate) const fn new(tag: u8) -> Self {
        HandleTable {
            tag,
            shards: [const {
                Mutex::new(Shard {
                    slots: Vec::new(),
                    free: Vec::new(),
                })
            }; SHARDS],
            live: AtomicUsize::new(0),
        }
    }

    fn kind(&self) -> &'static str {
        match self.tag {
            TAG_RUNTIME => "runtime",
            TAG_TASK => "task",
            _ => "queue",
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard<T>> {
        lock!(self.shards[shard])
    }

    /// Takes a slot and returns its id. The id is not live until [`publish`](Self::publish):
    /// lookups fail until then, so nobody can reach an object that is still being set up.
    pub(crate) fn reserve(&self) -> Result<u64, Error> {
        let shard_index = home_shard();
        let mut shard = self.lock(shard_index);
        let local = match shard.free.pop() {
            Some(local) => local as usize,
            None => {
                let local = shard.slots.len();
                if (local + 1) * SHARDS > u32::MAX as usize {
                    return Err(Error::new(
                        TB_ERR_OS,
                        "the handle table is full (2^32 live handles)",
                    ));
                }
                shard.slots.push(Slot {
                    generation: 1,
                    value: None,
                });
                local
            }
        };
        let index = (local * SHARDS + shard_index) as u64;
        let generation = u64::from(shard.slots[local].generation);
        Ok((u64::from(self.tag) << TAG_SHIFT) | (generation << INDEX_BITS) | index)
    }

    /// Makes a reserved id live, naming `value`.
    pub(crate) fn publish(&self, id: u64, value: Arc<T>) {
        let (shard_index, local, _) = self.split(id);
        self.lock(shard_index).slots[local].value = Some(value);
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives back a reserved id that was never published.
    pub(crate) fn unreserve(&self, id: u64) {
        let (shard_index, local, _) = self.split(id);
        Self::retire(&mut self.lock(shard_index), local);
    }

    /// Empties a slot: its generation moves on, so every id naming it goes stale.
    fn retire(shard: &mut Shard<T>, local: usize) -> Option<Arc<T>> {
        let slot = &mut shard.slots[local];
        slot.generation = match (slot.generation + 1) & GENERATION_MASK {
            0 => 1,
            next => next,
        };
        let value = slot.value.take();
        shard.free.push(local as u32);
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

    fn find<'a>(
        &self,
        shard: &'a mut Shard<T>,
        id: u64,
        local: usize,
        generation: u32,
    ) -> Result<&'a mut Slot<T>, Error> {
        let why = match shard.slots.get_mut(local) {
            Some(slot) if slot.generation == generation && slot.value.is_some() => return Ok(slot),
            Some(slot) if generation < slot.generation => {
                "is not live (released, or its runtime was shut down)"
            }
            _ => "was never issued (forged or corrupted)",
        };
        Err(Error::bad_handle(self.kind(), id, why))
    }

    /// Runs `f` on the live object named by `id`, under the shard lock.
    ///
    /// `f` must be short and must not touch any handle table or run user code.
    pub(crate) fn with<R>(&self, id: u64, f: impl FnOnce(&Arc<T>) -> R) -> Result<R, Error> {
        let (shard_index, local, generation) = self.decode(id)?;
        let mut shard = self.lock(shard_index);
        let slot = self.find(&mut shard, id, local, generation)?;
        Ok(f(slot.value.as_ref().expect("find returns live slots")))
    }

    /// Returns a new reference to the live object named by `id`.
    pub(crate) fn get(&self, id: u64) -> Result<Arc<T>, Error> {
        self.with(id, Arc::clone)
    }

    /// Makes `id` dead and returns the object it named; the slot is reused with a new generation.
    pub(crate) fn remove(&self, id: u64) -> Result<Arc<T>, Error> {
        let (shard_index, local, generation) = self.decode(id)?;
        let mut shard = self.lock(shard_index);
        self.find(&mut shard, id, local, generation)?;
        let value = Self::retire(&mut shard, local).expect("find returns live slots");
        self.live.fetch_sub(1, Ordering::Relaxed);
        Ok(value)
    }

    /// True if `id` was issued by this table and has since been removed (as opposed to never
    /// issued): its slot exists and has moved to a later generation.
    pub(crate) fn was_removed(&self, id: u64) -> bool {
        let Ok((shard_index, local, generation)) = self.decode(id) else {
            return false;
        };
        let shard = self.lock(shard_index);
        shard
            .slots
            .get(local)
            .is_some_and(|slot| generation < slot.generation)
    }

    /// How many ids are live in this table.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
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
        assert_eq!(*TABLE.remove(id).unwrap(), 7);
        assert_eq!(TABLE.remove(id).unwrap_err().status, TB_ERR_BAD_HANDLE);
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
        TABLE.remove(reused).unwrap();
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
