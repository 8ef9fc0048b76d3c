//! Completion queues: completions delivered into a foreign event loop through a file descriptor.
//!
//! A loop that cannot take callbacks on other threads (asyncio, libuv, GLib, a C `epoll` loop)
//! registers the queue's fd for reading, asks each task to push a tag when it finishes
//! (`tb_task_notify`), and drains the tags when the fd is readable. The fd is written only when
//! the queue goes from empty to non-empty, so any number of completions between two drains cost
//! one wake-up; a drain that empties the queue also clears the fd, so it is never left readable
//! with nothing to drain.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::completion::{check_may_wait, tb_task};
use crate::error::{tb_status, Error, TB_ERR_BAD_HANDLE, TB_ERR_OS, TB_OK, TB_TIMED_OUT};
use crate::handle::{HandleTable, TAG_QUEUE};
use crate::metrics::{versioned_size, write_versioned};
use crate::panic::boundary;
use crate::runtime::deadline_after;
use crate::sync::{lock, wait_until};
use crate::task::TASKS;

/// A completion queue handle: a generation-checked id, never a pointer. The id 0 is never valid.
///
/// Create one with `tb_queue_new`, end it with `tb_queue_free`. Copy it freely and use it from
/// any thread until then; afterwards every call with it returns `TB_ERR_BAD_HANDLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct tb_queue {
    /// The opaque id.
    pub id: u64,
}

/// Counters of a completion queue, filled by `tb_queue_get_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct tb_queue_stats {
    /// `sizeof(tb_queue_stats)` as the caller knows it: set it before the call.
    pub struct_size: u32,
    /// Tags pushed so far (one per finished, notified task).
    pub pushed: u64,
    /// Tags drained so far.
    pub drained: u64,
    /// Times the fd was made readable: pushes that found the queue empty.
    pub wakeups: u64,
    /// Tags waiting to be drained now.
    pub pending: u64,
}

/// How the fd is made readable and cleared: an eventfd where the system has one, else a pipe.
enum Signal {
    EventFd(OwnedFd),
    Pipe { read: OwnedFd, write: OwnedFd },
}

impl Signal {
    fn new() -> Result<Signal, Error> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // SAFETY: plain syscall; a non-negative result is a new fd that we own.
            let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            if fd >= 0 {
                // SAFETY: `fd` was just created and is owned by nobody else.
                return Ok(Signal::EventFd(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
                return Err(os_error("eventfd"));
            }
        }
        Signal::pipe()
    }

    fn pipe() -> Result<Signal, Error> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two fds pipe() writes.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(os_error("pipe"));
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for fd in [&read, &write] {
            let raw = fd.as_raw_fd();
            // SAFETY: fcntl on fds we own.
            let ok = unsafe {
                let flags = libc::fcntl(raw, libc::F_GETFL);
                libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
                    && libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) == 0
            };
            if !ok {
                return Err(os_error("fcntl"));
            }
        }
        Ok(Signal::Pipe { read, write })
    }

    fn readable_fd(&self) -> RawFd {
        match self {
            Signal::EventFd(fd) => fd.as_raw_fd(),
            Signal::Pipe { read, .. } => read.as_raw_fd(),
        }
    }

    /// Makes the fd readable. Only called when it is not: a full pipe or eventfd cannot happen.
    fn raise(&self) {
        let one = 1u64.to_ne_bytes();
        let (fd, bytes) = match self {
            Signal::EventFd(fd) => (fd.as_raw_fd(), &one[..]),
            Signal::Pipe { write, .. } => (write.as_raw_fd(), &one[..1]),
        };
        // SAFETY: writing a local buffer to an fd we own. A failure (EAGAIN) would mean the fd
        // is already readable, which is all this is for.
        unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    }

    /// Makes the fd unreadable again.
    fn clear(&self) {
        let fd = self.readable_fd();
        let mut buf = [0u8; 64];
        // SAFETY: reading into a local buffer from an fd we own, until it is empty (EAGAIN).
        while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
}

fn os_error(call: &str) -> Error {
    Error::text(
        TB_ERR_OS,
        format!("{call} failed: {}", std::io::Error::last_os_error()),
    )
}

struct State {
    tags: VecDeque<u64>,
    /// The fd is readable (raised and not yet cleared).
    raised: bool,
    /// `tb_queue_free` was called: the fd is closed and new tags are dropped.
    freed: bool,
    signal: Option<Signal>,
}

/// A completion queue. Tasks that will notify it keep it alive after `tb_queue_free`.
pub(crate) struct Queue {
    state: Mutex<State>,
    nonempty: Condvar,
    pushed: AtomicU64,
    drained: AtomicU64,
    wakeups: AtomicU64,
}

static QUEUES: HandleTable<Queue> = HandleTable::new(TAG_QUEUE);

impl Queue {
    fn new(signal: Signal) -> Queue {
        Queue {
            state: Mutex::new(State {
                tags: VecDeque::new(),
                raised: false,
                freed: false,
                signal: Some(signal),
            }),
            nonempty: Condvar::new(),
            pushed: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock!(self.state)
    }

    /// Pushes a finished task's tag; raises the fd if the queue was empty.
    pub(crate) fn push(&self, tag: u64) {
        let mut state = self.lock();
        if state.freed {
            return;
        }
        state.tags.push_back(tag);
        self.pushed.fetch_add(1, Ordering::Relaxed);
        if !state.raised {
            state.raised = true;
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            if let Some(signal) = &state.signal {
                signal.raise();
            }
            drop(state);
            self.nonempty.notify_all();
        }
    }

    fn drain(&self, into: &mut [u64]) -> usize {
        let mut state = self.lock();
        let n = into.len().min(state.tags.len());
        for (slot, tag) in into.iter_mut().zip(state.tags.drain(..n)) {
            *slot = tag;
        }
        if state.tags.is_empty() && state.raised {
            state.raised = false;
            if let Some(signal) = &state.signal {
                signal.clear();
            }
        }
        self.drained.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Waits for a tag until `deadline`: true if one waits, false on timeout, an error if the
    /// queue is freed meanwhile.
    fn wait(&self, deadline: Option<Instant>) -> Result<bool, Error> {
        let mut state = self.lock();
        while state.tags.is_empty() {
            if state.freed {
                return Err(Error::new(
                    TB_ERR_BAD_HANDLE,
                    "the queue was freed while this call waited on it",
                ));
            }
            let (guard, expired) = wait_until!(self.nonempty, state, deadline);
            state = guard;
            if expired {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The live queue named by `q`.
pub(crate) fn lookup(q: tb_queue) -> Result<Arc<Queue>, Error> {
    QUEUES.get(q.id)
}

/// Creates a completion queue with its file descriptor.
///
/// On success `*out` receives the handle; the caller owns the queue and ends it with
/// `tb_queue_free`. Errors: `TB_ERR_NULL` (`out`), `TB_ERR_OS` (no fd could be created).
/// Any thread.
#[no_mangle]
pub extern "C" fn tb_queue_new(out: *mut tb_queue) -> tb_status {
    boundary("tb_queue_new", || {
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let queue = Arc::new(Queue::new(Signal::new()?));
        let id = QUEUES.reserve()?;
        QUEUES.publish(id, queue);
        // SAFETY: checked non-NULL.
        unsafe { out.write(tb_queue { id }) };
        Ok(TB_OK)
    })
}

/// Gets the file descriptor that is readable while tags wait in queue `q`.
///
/// Register it for reading in your event loop (`epoll`, `poll`, `loop.add_reader`, `uv_poll`,
/// `g_unix_fd_add`); when it is readable, call `tb_queue_drain` until it returns fewer tags than
/// asked for. Do not read, write or close the fd yourself: the queue owns it (an eventfd on
/// Linux, the read end of a pipe elsewhere) and closes it in `tb_queue_free`. It is
/// close-on-exec and non-blocking. Errors: `TB_ERR_NULL` (`fd`), `TB_ERR_BAD_HANDLE`.
/// Any thread.
#[no_mangle]
pub extern "C" fn tb_queue_fd(q: tb_queue, fd: *mut i32) -> tb_status {
    boundary("tb_queue_fd", || {
        if fd.is_null() {
            return Err(Error::null("fd"));
        }
        let queue = lookup(q)?;
        let raw = queue.lock().signal.as_ref().map(Signal::readable_fd);
        // A `tb_queue_free` on another thread since the lookup has closed the fd.
        let raw = raw.ok_or_else(|| Error::bad_handle("queue", q.id, "was freed"))?;
        // SAFETY: checked non-NULL.
        unsafe { fd.write(raw) };
        Ok(TB_OK)
    })
}

/// Asks task `t` to push `tag` onto queue `q` when it finishes.
///
/// The tag is pushed exactly once: when the task finishes (after its `free_arg` and completion
/// callback, so `tb_task_outcome` already has the outcome when the tag is drained), or at once
/// if it already has. One notification per task: a second call returns `TB_ERR_ALREADY`. The
/// task keeps the queue's memory alive until then, even after `tb_queue_free` (the tag is then
/// dropped). Errors: `TB_ERR_BAD_HANDLE` (either handle), `TB_ERR_ALREADY`. Any thread.
#[no_mangle]
pub extern "C" fn tb_task_notify(t: tb_task, q: tb_queue, tag: u64) -> tb_status {
    boundary("tb_task_notify", || {
        let task = TASKS.get(t.id)?;
        task.notify(lookup(q)?, tag)?;
        Ok(TB_OK)
    })
}

/// Moves up to `cap` waiting tags of queue `q` into `tags`, oldest first, and sets `*n` to how
/// many. Never blocks.
///
/// Tags come out in the order the tasks finished. When the drain empties the queue, the fd stops
/// being readable; if `*n == cap`, more may wait: drain again. `cap` may be 0 (then `tags` may be
/// NULL). Errors: `TB_ERR_NULL` (`n`, or `tags` with `cap` > 0), `TB_ERR_INVALID_ARG` (`cap`
/// larger than any array), `TB_ERR_BAD_HANDLE`. Any thread, including async workers.
#[no_mangle]
pub extern "C" fn tb_queue_drain(
    q: tb_queue,
    tags: *mut u64,
    cap: usize,
    n: *mut usize,
) -> tb_status {
    boundary("tb_queue_drain", || {
        if n.is_null() {
            return Err(Error::null("n"));
        }
        if tags.is_null() && cap > 0 {
            return Err(Error::null("tags"));
        }
        if cap > isize::MAX as usize / std::mem::size_of::<u64>() {
            return Err(Error::invalid(format!(
                "cap is {cap}: larger than any array of uint64_t can be"
            )));
        }
        let queue = lookup(q)?;
        let into: &mut [u64] = if cap == 0 {
            &mut []
        } else {
            // SAFETY: the caller passes an array of `cap` tags; checked non-NULL.
            unsafe { std::slice::from_raw_parts_mut(tags, cap) }
        };
        let drained = queue.drain(into);
        // SAFETY: checked non-NULL.
        unsafe { n.write(drained) };
        Ok(TB_OK)
    })
}

/// Blocks until a tag waits in queue `q` or `timeout_ms` passes, for callers without an event
/// loop.
///
/// Returns `TB_OK` when tags wait (drain them with `tb_queue_drain`) or `TB_TIMED_OUT`. 0 only
/// checks; `TB_FOREVER` waits without a limit. Like `tb_task_wait`, a non-zero timeout is
/// refused on an async worker (`TB_ERR_ON_RUNTIME_THREAD`). Errors: `TB_ERR_BAD_HANDLE` (also
/// when another thread frees the queue during the wait), `TB_ERR_ON_RUNTIME_THREAD`. Any thread.
#[no_mangle]
pub extern "C" fn tb_queue_wait(q: tb_queue, timeout_ms: u64) -> tb_status {
    boundary("tb_queue_wait", || {
        let queue = lookup(q)?;
        check_may_wait(timeout_ms, [])?;
        Ok(if queue.wait(deadline_after(timeout_ms))? {
            TB_OK
        } else {
            TB_TIMED_OUT
        })
    })
}

/// Fills `*out` with the counters of queue `q`; set `out->struct_size` first.
///
/// `wakeups / pushed` is how well completions coalesce: 1.0 means one fd write per completion,
/// near 0 means many completions per wake-up. Errors: `TB_ERR_NULL` (`out`),
/// `TB_ERR_INVALID_ARG` (`struct_size`), `TB_ERR_BAD_HANDLE`. Any thread.
#[no_mangle]
pub extern "C" fn tb_queue_get_stats(q: tb_queue, out: *mut tb_queue_stats) -> tb_status {
    boundary("tb_queue_get_stats", || {
        let size = versioned_size::<tb_queue_stats>(out.cast(), "tb_queue_stats")?;
        let queue = lookup(q)?;
        let stats = tb_queue_stats {
            struct_size: size as u32,
            pushed: queue.pushed.load(Ordering::Relaxed),
            drained: queue.drained.load(Ordering::Relaxed),
            wakeups: queue.wakeups.load(Ordering::Relaxed),
            pending: queue.lock().tags.len() as u64,
        };
        // SAFETY: `out` is non-NULL and has `size <= sizeof(tb_queue_stats)` bytes.
        unsafe { write_versioned(&stats, out.cast(), size) };
        Ok(TB_OK)
    })
}

/// Frees queue `q`: closes its fd and drops the tags waiting in it. The handle is dead after.
///
/// Remove the fd from your event loop first. Tasks still registered with `tb_task_notify` are
/// not affected: they run to their end, and their tags are dropped. Errors: `TB_ERR_BAD_HANDLE`
/// (also for a second free). Any thread.
#[no_mangle]
pub extern "C" fn tb_queue_free(q: tb_queue) -> tb_status {
    boundary("tb_queue_free", || {
        QUEUES.remove(q.id, |queue| {
            let mut state = queue.lock();
            state.freed = true;
            state.tags.clear();
            state.signal = None; // closes the fd now, not when the last notifying task ends
            drop(state);
            queue.nonempty.notify_all();
        })?;
        Ok(TB_OK)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, no wait.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    fn coalesces_and_clears(queue: Queue) {
        let fd = queue.lock().signal.as_ref().unwrap().readable_fd();
        assert!(!readable(fd));
        for tag in 0..1000 {
            queue.push(tag);
        }
        assert!(readable(fd));
        assert_eq!(
            queue.wakeups.load(Ordering::Relaxed),
            1,
            "1000 pushes, one fd write"
        );
        let mut out = [0u64; 600];
        assert_eq!(queue.drain(&mut out), 600);
        assert_eq!(out[0..3], [0, 1, 2]);
        assert!(readable(fd), "400 tags still wait");
        assert_eq!(queue.drain(&mut out), 400);
        assert_eq!(out[399], 999);
        assert!(!readable(fd), "a full drain clears the fd");
        queue.push(7);
        assert!(readable(fd));
        assert_eq!(queue.wakeups.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn an_eventfd_queue_coalesces_and_clears() {
        coalesces_and_clears(Queue::new(Signal::new().unwrap()));
    }

    #[test]
    fn a_pipe_queue_coalesces_and_clears() {
        coalesces_and_clears(Queue::new(Signal::pipe().unwrap()));
    }
}
