//! Tasks (a blocking job, a sleep or a timer with its state) and the table of task handles.

use std::ops::Deref;
use std::sync::Arc;

use crate::completion::tb_task;
use crate::error::{tb_status, Error, TB_OK};
use crate::handle::{HandleTable, TAG_TASK};
use crate::runtime::{self, tb_runtime, Runtime};
use crate::state::State;
use crate::sync::now_ns;

/// Every live task handle.
pub(crate) static TASKS: HandleTable<Task> = HandleTable::new(TAG_TASK);

/// What kind of work a task does, with the parts only that kind needs.
pub(crate) enum Work {
    Blocking(crate::job::Blocking),
    Async(crate::timer::Async),
}

/// What a task of each kind calls, with the caller's `arg`: kept in the task's [`State`] (as
/// `Some`) until the task's run or end takes it (see [`State::with_work`] for who may).
pub(crate) enum Callbacks {
    Job(crate::job::Payload),
    Timer(crate::timer::Ticks),
}

/// One unit of work submitted by C: a blocking job, a sleep or a timer.
pub(crate) struct Task {
    state: State<Option<Callbacks>>,
    /// When it was submitted ([`now_ns`](crate::sync::now_ns)).
    pub(crate) submitted_ns: u64,
    pub(crate) work: Work,
}

impl Task {
    /// A task of handle `id`, starting in `phase` (`QUEUED` or `RUNNING`).
    pub(crate) fn new(id: u64, work: Work, callbacks: Callbacks, phase: u8) -> Self {
        Task {
            state: State::new(id, phase, Some(callbacks)),
            submitted_ns: now_ns(),
            work,
        }
    }
}

impl Deref for Task {
    type Target = State<Option<Callbacks>>;

    fn deref(&self) -> &State<Option<Callbacks>> {
        &self.state
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

#[cfg(all(test, target_pointer_width = "64", not(tb_loom)))]
mod tests {
    use super::*;

    /// A million timers are a million task records. 136 bytes and the `Arc`'s two counts take
    /// a 160-byte block of glibc's allocator; 8 bytes more would take a 176-byte one.
    #[test]
    fn a_task_record_fits_a_160_byte_allocation() {
        assert!(std::mem::size_of::<Task>() <= 136);
    }
}
