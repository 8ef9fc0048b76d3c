"""asyncio integration: one completion queue per (runtime, event loop), its fd watched with
``loop.add_reader``.

An awaited task is asked to push its id as a tag onto the queue when it finishes
(``tb_task_notify``). The library writes the queue's fd only when the queue goes from empty to
non-empty, so a burst of completions costs one wake-up of the loop; the reader then drains every
tag and wakes the awaiting coroutines, all on the loop's own thread. No thread is started per
await and no callback of this package ever runs on a library thread for the asyncio path.
"""

from __future__ import annotations

import asyncio
import ctypes
import weakref
from ctypes import byref, c_int32, c_size_t, c_uint64
from typing import TYPE_CHECKING, Dict, NamedTuple

from ._native import (
    TB_ERR_BAD_HANDLE,
    TB_PENDING,
    TbQueue,
    TbQueueStats,
    TokioBridgeError,
    check,
    lib,
)

if TYPE_CHECKING:
    from ._runtime import Task

_DRAIN_BATCH = 1024


class QueueStats(NamedTuple):
    """Counters of an event loop's completion queue (``tb_queue_stats``)."""

    pushed: int  #: tags pushed: awaited tasks that finished
    drained: int  #: tags drained by the loop
    wakeups: int  #: times the fd was made readable; ``wakeups / pushed`` shows the coalescing
    pending: int  #: tags waiting now


def _free_queue(queue: TbQueue) -> None:
    lib.tb_queue_free(queue)


class LoopQueue:
    """The completion queue of one runtime on one event loop. Used on the loop's thread only,
    except :meth:`close`."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        queue = TbQueue()
        check(lib.tb_queue_new(byref(queue)))
        fd = c_int32()
        try:
            check(lib.tb_queue_fd(queue, byref(fd)))
            loop.add_reader(fd.value, self._on_readable)
        except BaseException:
            lib.tb_queue_free(queue)
            raise
        self._queue = queue
        self._fd = fd.value
        self._loop = weakref.ref(loop)
        self._tasks: Dict[int, Task] = {}
        self._tags = (c_uint64 * _DRAIN_BATCH)()
        self._closing = False
        # Frees the queue when the loop is garbage-collected, if close() has not done it before.
        # At interpreter exit the process closes the fd itself.
        self._free_once = weakref.finalize(loop, _free_queue, queue)
        self._free_once.atexit = False

    def watch(self, task: Task) -> asyncio.Future:
        """A future of this loop that is resolved when ``task`` finishes."""
        loop = self._loop()
        assert loop is not None, "a running loop is alive"
        if task._future is not None and not task._future.done():
            raise RuntimeError(f"{task!r} is already awaited by another coroutine")
        future = loop.create_future()
        if task._queue is None:
            tag = task._handle.id
            self._tasks[tag] = task
            status = lib.tb_task_notify(task._handle, self._queue, tag)
            if status < 0:
                del self._tasks[tag]
                if status == TB_ERR_BAD_HANDLE and task.done():
                    future.set_result(None)  # another thread read its outcome meanwhile
                    return future
                check(status)
            task._queue = self
        elif task._queue is not self:
            raise RuntimeError(f"{task!r} is awaited on another event loop")
        task._future = future
        return future

    def _on_readable(self) -> None:
        if not self._free_once.alive:
            return  # a close scheduled from another thread ran after the queue was freed
        count = c_size_t()
        while True:
            check(lib.tb_queue_drain(self._queue, self._tags, _DRAIN_BATCH, byref(count)))
            for tag in self._tags[: count.value]:
                self._finished(self._tasks.pop(tag))
            if count.value < _DRAIN_BATCH:
                break
        if self._closing and not self._tasks:
            self._free()

    @staticmethod
    def _finished(task: Task) -> None:
        future, task._future = task._future, None
        try:
            # The library pushes a task's tag only once its outcome can be read.
            if not task._settle():
                raise TokioBridgeError(TB_PENDING, "a notified task is not finished")
        except TokioBridgeError as error:
            if future is not None and not future.done():
                future.set_exception(error)
            return
        if future is not None and not future.done():
            future.set_result(None)

    def stats(self) -> QueueStats:
        raw = TbQueueStats(struct_size=ctypes.sizeof(TbQueueStats))
        check(lib.tb_queue_get_stats(self._queue, byref(raw)))
        return QueueStats(raw.pushed, raw.drained, raw.wakeups, raw.pending)

    def close(self) -> None:
        """Called once the runtime is shut down, from any thread: delivers the outcomes still
        queued, and frees the queue as soon as no awaited task is left."""
        loop = self._loop()
        if loop is None or loop.is_closed():
            self._free()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop or not loop.is_running():
            self._close_on_loop()
            return
        try:
            loop.call_soon_threadsafe(self._close_on_loop)
        except RuntimeError:  # the loop was closed meanwhile
            self._free()

    def _close_on_loop(self) -> None:
        self._closing = True
        self._on_readable()

    def _free(self) -> None:
        if not self._free_once.alive:
            return
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)
        self._free_once()
        self._tasks.clear()
