//! Tasks (a blocking job, a sleep or a timer with its state) and the table of task handles.

use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::Arc;

use crate::completion::tb_task;
use crate::error::{tb_status, Error, TB_OK};
use crate::handle::{HandleTable, TAG_TASK};
use crate::runtime::{self, tb_runtime, Runtime};
use crate::state::State;

/// Every live task handle.
pub(crate) static TASKS: HandleTable<Task> = HandleTable::new(TAG_TASK);

/// What kind of work a task does, with the parts only that kind needs.
pub(crate) enum Work {
    Blocking(crate::job::Blocking),
    Async(crate::timer::Async),
}

/// What a task calls, with the caller's `arg`: kept in the task's [`State`] until the task's
/// run or end takes it (see [`State::with_work`] for who may). A union, told apart by the
/// task's [`Work`] (a job's `Blocking`, a sleep's or timer's `Async`), so that it carries no tag
/// of its own: a timer's is 40 bytes, the size of the outcome that takes its place.
pub(crate) union Callbacks {
    pub(crate) job: ManuallyDrop<crate::job::Payload>,
    pub(crate) timer: ManuallyDrop<crate::timer::Ticks>,
}

/// One unit of work submitted by C: a blocking job, a sleep or a timer.
pub(crate) struct Task {
    state: State<Callbacks>,
    /// When it was submitted: for a blocking job a [`stamp`](crate::clock::stamp) (only its
    /// queue time is measured from it, with [`nanos_between`](crate::clock::nanos_between)),
    /// for a sleep or timer a [`now_ns`](crate::clock::now_ns) reading (its delay counts from
    /// there).
    pub(crate) submitted: u64,
    pub(crate) work: Work,
}

impl Task {
    /// A task of handle `id`, starting in `phase` (`QUEUED` or `RUNNING`), submitted at
    /// `submitted` (see [`Task::submitted`]).
    pub(crate) fn new(
        id: u64,
        work: Work,
        callbacks: Callbacks,
        phase: u8,
        submitted: u64,
    ) -> Self {
        Task {
            state: State::new(id, phase, callbacks),
            submitted,
            work,
        }
    }
}

impl Drop for Task {
    /// A job dropped while still queued (possible only if a panic cut its end short) still
    /// frees its `arg`: its payload was never taken. Every other task's work was taken, or is a
    /// timer's, which its `Armed` always ends.
    fn drop(&mut self) {
        if matches!(self.work, Work::Blocking(_)) && self.state.is_queued() {
            // SAFETY: nobody else holds the task, and a queued job's payload is still there.
            drop(unsafe {
                self.state
                    .with_work(|work| ManuallyDrop::take(&mut work.job))
            });
        }
    }
}

impl Deref for Task {
    type Target = State<Callbacks>;

    fn deref(&self) -> &State<Callbacks> {
        &self.state
    }
}

/// Submits a task to runtime `rt` and writes its handle to `*out`: checks `out` and the
/// runtime, reserves an id, has `make` build the task and queue or arm it, then makes the id
/// live. On error (or a panic) the id is given back. `make` runs inside the runtime's lookup
/// (see [`runtime::with`]): the submission takes no reference count of the runtime.
pub(crate) fn submit(
    rt: tb_runtime,
    out: *mut tb_task,
    make: impl FnOnce(u64, &Arc<Runtime>) -> Result<Arc<Task>, Error>,
) -> Result<tb_status, Error> {
    /// Gives the reserved id back unless it was published.
    struct Reserved(u64);
    impl Drop for Reserved {
        fn drop(&mut self) {
            TASKS.unreserve(self.0);
        }
    }
    if out.is_null() {
        return Err(Error::null("out"));
    }
    runtime::with(rt, |runtime| {
        let reserved = Reserved(TASKS.reserve()?);
        let task = make(reserved.0, runtime)?;
        let id = reserved.0;
        std::mem::forget(reserved);
        TASKS.publish(id, task);
        // SAFETY: checked non-NULL; the caller provides space for a tb_task.
        unsafe { out.write(tb_task { id }) };
        Ok(TB_OK)
    })
}

#[cfg(all(test, target_pointer_width = "64", not(tb_loom)))]
mod tests {
    use super::*;

    /// A million timers are a million task records. 88 bytes and the `Arc`'s two counts take
    /// a 112-byte block of glibc's allocator; 8 bytes more would take a 128-byte one.
    #[test]
    fn a_task_record_fits_a_112_byte_allocation() {
        assert!(std::mem::size_of::<Task>() <= 88);
    }
}
