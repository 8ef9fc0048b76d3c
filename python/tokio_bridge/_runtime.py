"""Runtimes, tasks, and the Python side of every job: the registry that keeps a job's Python
objects alive until its ``free_arg`` runs, and the shutdown of every runtime at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import itertools
import math
import threading
import time
import traceback
import weakref
from ctypes import byref, c_void_p
from typing import Any, Callable, Dict, Generator, List, NamedTuple, Optional, Set, Tuple, Union

from ._aio import LoopQueue, QueueStats
from ._native import (
    BLOCKING_FN,
    FREE_FN,
    TB_CURRENT_THREAD,
    TB_ERR_ALREADY,
    TB_ERR_BAD_HANDLE,
    TB_ERR_BUSY,
    TB_ERR_CALLBACK,
    TB_ERR_SHUTDOWN,
    TB_FOREVER,
    TB_MULTI_THREAD,
    TB_OK,
    TB_PENDING,
    TB_TIMED_OUT,
    CallbackError,
    ShutdownError,
    TbOutcome,
    TbRuntime,
    TbRuntimeConfig,
    TbTask,
    check,
    error_for,
    last_error,
    lib,
    status_name,
)

#: ``CallbackError.code`` of a Python callable that raised.
EXCEPTION_CODE = 1

CFunction = Union[int, "ctypes._CFuncPtr"]
CArgument = Union[None, int, "ctypes._CData"]


# --- the Python side of jobs --------------------------------------------------------------------


class _PyJob:
    """A Python callable with its arguments, and what it returned or raised."""

    __slots__ = ("fn", "args", "kwargs", "value", "error", "traceback")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict):
        self.fn: Optional[Callable[..., Any]] = fn
        self.args: Optional[tuple] = args
        self.kwargs: Optional[dict] = kwargs
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.traceback: Optional[str] = None


#: Python jobs from submission until their ``free_arg`` runs, by the key passed as ``arg``.
_jobs: Dict[int, _PyJob] = {}
_job_keys = itertools.count(1)
#: ctypes objects passed to C jobs, with a key of the same series, by the address passed as
#: ``arg``, until ``free_arg`` runs.
_kept: Dict[int, List[Tuple[int, Any]]] = {}
#: The ``tb_job *`` of the Python job running on this thread, for :func:`cancelled`.
_current = threading.local()


def _run_job(key: int, job: int) -> int:
    """The ``tb_blocking_fn`` of every Python job: runs on a blocking-pool thread, which holds
    the GIL while Python code runs."""
    record = _jobs[key]
    _current.job = job
    try:
        record.value = record.fn(*record.args, **record.kwargs)  # type: ignore[misc]
        return 0
    except BaseException as error:
        # Drop this frame from the traceback: it refers to `record`, which would then refer to
        # itself through the error.
        error = error.with_traceback(error.__traceback__.tb_next)  # type: ignore[union-attr]
        record.error = error
        record.traceback = "".join(
            traceback.format_exception(type(error), error, error.__traceback__)
        )
        return EXCEPTION_CODE
    finally:
        _current.job = None


def _free_job(key: int) -> None:
    """The ``free_arg`` of every Python job: drops the registry's hold on the callable and its
    arguments. Runs after the job, or on the thread that cancelled it or shut the runtime down;
    :meth:`Runtime.spawn_blocking` calls it itself when the submission fails."""
    record = _jobs.pop(key)
    record.fn = record.args = record.kwargs = None
    _notify_freed()


def _free_kept(address: int) -> None:
    """The ``free_arg`` of a C job given a ctypes object: lets the object go (any of those kept
    for this address: they share its memory)."""
    kept = _kept[address]
    kept.pop()
    if not kept:
        del _kept[address]
    _notify_freed()


def _registered() -> Set[int]:
    """The keys of every job whose ``free_arg`` has not run, or whose submission is under way.
    Other threads may change the registries meanwhile: it iterates copies made in one step."""
    keys = set(_jobs)
    for kept in list(_kept.values()):
        keys.update(key for key, _ in tuple(kept))
    return keys


#: Notified each time an entry leaves the registries, for the exit handler.
_freed = threading.Condition()


def _notify_freed() -> None:
    with _freed:
        _freed.notify_all()


def _pointer_value(obj: Any) -> Optional[int]:
    """The address a ctypes pointer or function object holds. Unlike ``ctypes.cast`` it leaves
    no reference cycle behind on ``obj``, which would keep it alive until the next collection."""
    return c_void_p.from_address(ctypes.addressof(obj)).value


# The C function pointers live as long as the module: the library may call them until exit.
_RUN_JOB = BLOCKING_FN(_run_job)
_FREE_JOB = FREE_FN(_free_job)
_FREE_KEPT = FREE_FN(_free_kept)
_RUN_JOB_ADDRESS = _pointer_value(_RUN_JOB)
_FREE_JOB_ADDRESS = _pointer_value(_FREE_JOB)
_FREE_KEPT_ADDRESS = _pointer_value(_FREE_KEPT)


def cancelled() -> bool:
    """True when the Python job running on this thread has been asked to stop: its task was
    cancelled while it ran, or its runtime is shutting down (``tb_job_cancelled``).

    Call it from inside a callable run by :meth:`Runtime.spawn_blocking` or
    :meth:`Runtime.run_blocking`; a long job checks it between chunks of work and returns early.
    Anywhere else it raises :class:`RuntimeError`.
    """
    job = getattr(_current, "job", None)
    if job is None:
        raise RuntimeError(
            "tokio_bridge.cancelled() works only inside a Python callable run by "
            "spawn_blocking or run_blocking, on its thread"
        )
    return bool(lib.tb_job_cancelled(job))


def _c_function(func: CFunction) -> int:
    """The address of a C function given as an int or a ctypes function pointer."""
    if isinstance(func, int) and not isinstance(func, bool):
        if func == 0:
            raise ValueError("the C function's address is 0")
        return func
    if isinstance(func, ctypes._CFuncPtr):  # type: ignore[attr-defined]
        # ctypes keeps the thunk of a Python callback in `_objects`; a function from a CDLL
        # has none.
        if any(type(o).__name__ == "CThunkObject" for o in (func._objects or {}).values()):
            raise TypeError(
                "this ctypes function wraps a Python callable: submit the callable itself "
                "with spawn_blocking or run_blocking"
            )
        address = _pointer_value(func)
        if not address:
            raise ValueError("the ctypes function pointer is NULL")
        return address
    raise TypeError(
        "func must be a C function: a ctypes function from a CDLL (lib.my_job) or its address "
        f"as an int, not {type(func).__name__}"
    )


_POINTERS = (
    ctypes._Pointer,  # type: ignore[attr-defined]
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_wchar_p,
)
_OBJECTS = (
    ctypes.Array,
    ctypes._SimpleCData,  # type: ignore[attr-defined]
    ctypes.Structure,
    ctypes.Union,
)


def _c_argument(arg: CArgument) -> Tuple[Optional[int], Any]:
    """The ``void *`` to pass for ``arg``, and the object to keep alive meanwhile (or None)."""
    if arg is None:
        return None, None
    if isinstance(arg, int) and not isinstance(arg, bool):
        return arg, None
    if isinstance(arg, _POINTERS):
        address = _pointer_value(arg)
    elif isinstance(arg, _OBJECTS):
        address = ctypes.addressof(arg)
    else:
        raise TypeError(
            "arg must be None, an address as an int, or a ctypes object (an array, a "
            f"structure, a pointer, a number), not {type(arg).__name__}"
        )
    return address, (arg if address else None)


# --- tasks --------------------------------------------------------------------------------------


class Outcome(NamedTuple):
    """How a task ended (``tb_outcome``)."""

    status: int  #: ``TB_OK`` (0) or the negative status of the failure
    code: int  #: what the job's function returned (0 unless it failed)
    value: Optional[int]  #: a C job's ``tb_job_set_result`` pointer, else None
    ticks: int  #: 0: tasks of this package are not periodic
    queued_us: int  #: microseconds from submission to start
    run_us: int  #: microseconds from start to end

    @property
    def name(self) -> str:
        """The status name, such as ``"TB_OK"`` or ``"TB_ERR_CANCELLED"``."""
        return status_name(self.status)


_WAIT_SLICE_MS = 100


def _wait(handle: TbTask, timeout: Optional[float]) -> int:
    """``tb_task_wait`` with a timeout in seconds. On the main thread a long wait is cut into
    slices, so that Python runs its signal handlers (Ctrl-C) in between."""
    ms = TB_FOREVER if timeout is None else max(0, math.ceil(timeout * 1000))
    if ms <= _WAIT_SLICE_MS or threading.get_ident() != threading.main_thread().ident:
        return lib.tb_task_wait(handle, ms)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = _WAIT_SLICE_MS
        if deadline is not None:
            left = min(left, max(0, math.ceil((deadline - time.monotonic()) * 1000)))
        status = lib.tb_task_wait(handle, left)
        if status != TB_TIMED_OUT or (deadline is not None and time.monotonic() >= deadline):
            return status


class Task:
    """A submitted job or sleep: wait for it, poll it, cancel it, read its result, or await it.

    Its ``tb_task`` handle is released exactly once: as soon as the outcome has been read (by
    :meth:`wait`, :meth:`done`, :meth:`result`, :meth:`outcome` or ``await``), or when the
    object is garbage-collected before that. Releasing never stops the work.
    """

    def __init__(self, runtime: Runtime, handle: TbTask, job: Optional[_PyJob]):
        self.runtime = runtime
        self._handle = handle
        self._job = job
        self._lock = threading.Lock()
        self._outcome: Optional[Outcome] = None
        self._queue: Optional[LoopQueue] = None  # the queue it notifies when it finishes
        self._future: Optional[asyncio.Future] = None  # resolved when the tag comes in

    def __repr__(self) -> str:
        state = "pending" if self._outcome is None else self._outcome.name
        return f"<tokio_bridge.Task {self._handle.id:#x} {state}>"

    def _settle(self) -> bool:
        """Reads the outcome and releases the handle once the task has finished. True then."""
        if self._outcome is not None:
            return True
        with self._lock:
            if self._outcome is not None:
                return True
            raw = TbOutcome()
            if check(lib.tb_task_outcome(self._handle, byref(raw))) == TB_PENDING:
                return False
            self._outcome = Outcome(
                raw.status, raw.code, raw.value, raw.ticks, raw.queued_us, raw.run_us
            )
            check(lib.tb_task_release(self._handle))
            return True

    def __del__(self, _lib: ctypes.CDLL = lib) -> None:
        # Only when no other reference exists, so nothing can be settling it concurrently.
        if getattr(self, "_outcome", True) is None:
            _lib.tb_task_release(self._handle)

    def done(self) -> bool:
        """True once the task has finished. Never blocks."""
        return self._settle()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits until the task finishes or ``timeout`` seconds pass (None: no limit).

        Returns True when it has finished (whatever its outcome), False on timeout. A timeout
        changes nothing: the job goes on. The GIL is released while waiting.
        """
        if self._outcome is not None:
            return True
        status = _wait(self._handle, timeout)
        if status == TB_ERR_BAD_HANDLE and self._outcome is not None:
            return True  # another thread read the outcome and released the handle meanwhile
        if check(status) == TB_TIMED_OUT:
            return False
        return self._settle()

    def outcome(self) -> Optional[Outcome]:
        """The :class:`Outcome` once the task has finished, else None. Never blocks."""
        return self._outcome if self._settle() else None

    def result(self, timeout: Optional[float] = None) -> Any:
        """Waits for the task and returns its result.

        A Python callable's return value; a C function's ``tb_job_set_result`` pointer as an int
        (None for NULL); None for a sleep. Raises :class:`TimeoutError` when ``timeout`` seconds
        pass first, :class:`Cancelled`, :class:`ShutdownError` (dropped by a shutdown before it
        ran), :class:`CallbackError` (the function raised or returned non-zero), or
        :class:`TokioBridgeError` for any other status.
        """
        if not self.wait(timeout):
            raise TimeoutError(f"{self!r} did not finish within {timeout} s")
        return self._result()

    def _result(self) -> Any:
        outcome = self._outcome
        assert outcome is not None, "only called once the task has finished"
        job = self._job
        if outcome.status == TB_OK:
            return outcome.value if job is None else job.value
        if outcome.status == TB_ERR_CALLBACK and job is not None and job.error is not None:
            raise CallbackError(outcome.code, job.traceback) from job.error
        if outcome.status == TB_ERR_CALLBACK:
            raise CallbackError(outcome.code)
        raise error_for(outcome.status)

    def cancel(self) -> bool:
        """Cancels the task; never blocks. Like :meth:`concurrent.futures.Future.cancel`:

        - True: it was cancelled and ends with :class:`Cancelled`. A queued job never runs, and
          its arguments are released before this returns; a sleep stops.
        - False: it is running (a job cannot be interrupted: it was asked to stop, which it sees
          through :func:`tokio_bridge.cancelled` or ``tb_job_cancelled``, and its result is
          whatever it returns), or it has already finished. :meth:`done` tells which.
        """
        if self._outcome is not None:
            return False
        status = lib.tb_task_cancel(self._handle)
        if status == TB_OK:
            return True
        if status in (TB_ERR_BUSY, TB_ERR_ALREADY):
            return False
        if status == TB_ERR_BAD_HANDLE and self._outcome is not None:
            return False
        check(status)
        return False

    def __await__(self) -> Generator[Any, None, Any]:
        """Awaits the task on the running asyncio loop, through the loop's completion queue.

        Cancelling the awaiting coroutine cancels the task (see :meth:`cancel`). A task can be
        awaited by one coroutine at a time, on one event loop.
        """
        if not self._settle():
            future = self.runtime._loop_queue().watch(self)
            try:
                yield from future
            except asyncio.CancelledError:
                self.cancel()
                raise
        return self._result()


# --- runtimes -----------------------------------------------------------------------------------

#: Runtimes not yet closed: the exit handler shuts them down.
_live: Set[Runtime] = set()
_live_lock = threading.Lock()
_exiting = False

_FLAVORS = {"multi_thread": TB_MULTI_THREAD, "current_thread": TB_CURRENT_THREAD}


def _u32(name: str, value: int) -> int:
    if not isinstance(value, int) or not 0 <= value < 2**32:
        raise ValueError(f"{name} must be an int from 0 to {2**32 - 1}, not {value!r}")
    return value


class Runtime:
    """A Tokio runtime: async workers plus a blocking pool (``tb_runtime_new``).

    Every keyword is a ``tb_runtime_config`` field; 0 or None means the library's default:

    - ``flavor``: ``"multi_thread"`` (default) or ``"current_thread"``;
    - ``workers``: async worker threads (0: one per CPU);
    - ``max_blocking_threads``: most blocking-pool threads at once (0: 512);
    - ``blocking_keep_alive_ms``: how long an idle blocking thread waits for work (0: 10 s);
    - ``max_queued_blocking``: most jobs waiting to start, beyond which a submission raises
      :class:`TokioBridgeError` ``TB_ERR_BUSY`` (0: unbounded);
    - ``thread_stack_size``: bytes (0: 2 MiB);
    - ``thread_name``: prefix of the thread names (None: ``"tb"``).

    Use it as a context manager, or call :meth:`close`. A runtime still open when the
    interpreter exits is closed by an exit handler: see the package documentation.
    """

    def __init__(
        self,
        *,
        flavor: str = "multi_thread",
        workers: int = 0,
        max_blocking_threads: int = 0,
        blocking_keep_alive_ms: int = 0,
        max_queued_blocking: int = 0,
        thread_stack_size: int = 0,
        thread_name: Optional[str] = None,
    ):
        if flavor not in _FLAVORS:
            raise ValueError(f"flavor must be 'multi_thread' or 'current_thread', not {flavor!r}")
        config = TbRuntimeConfig()
        lib.tb_runtime_config_init(byref(config))
        config.flavor = _FLAVORS[flavor]
        config.worker_threads = _u32("workers", workers)
        config.max_blocking_threads = _u32("max_blocking_threads", max_blocking_threads)
        config.blocking_keep_alive_ms = _u32("blocking_keep_alive_ms", blocking_keep_alive_ms)
        config.max_queued_blocking = _u32("max_queued_blocking", max_queued_blocking)
        if not isinstance(thread_stack_size, int) or thread_stack_size < 0:
            raise ValueError(f"thread_stack_size must be an int >= 0, not {thread_stack_size!r}")
        config.thread_stack_size = thread_stack_size
        config.thread_name = None if thread_name is None else thread_name.encode()
        self._lock = threading.Lock()
        self._closed = False
        self._ended = False
        self._shut_down = threading.Event()
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopQueue] = (
            weakref.WeakKeyDictionary()
        )
        handle = TbRuntime()
        with _live_lock:  # the exit handler must see every runtime created before it ran
            if _exiting:
                raise ShutdownError(
                    TB_ERR_SHUTDOWN, "the interpreter is exiting: no new runtime can start"
                )
            check(lib.tb_runtime_new(byref(config), byref(handle)))
            self._handle = handle
            _live.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<tokio_bridge.Runtime {self._handle.id:#x} {state}>"

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def close(self, timeout: Optional[float] = None) -> bool:
        """Shuts the runtime down (``tb_runtime_shutdown``), with the GIL released.

        New submissions raise :class:`ShutdownError` at once. Queued jobs never run: they end
        with :class:`ShutdownError` and their arguments are released on this thread. Running
        jobs cannot be interrupted (:func:`cancelled` turns true for them): this waits up to
        ``timeout`` seconds (None: no limit) for them. Returns True when everything ended,
        False when the timeout passed first or when called from one of the runtime's own
        threads (the shutdown then finishes in the background). Another call waits for the
        first one (up to ``timeout``) and returns the same.
        """
        with self._lock:
            closing_elsewhere = self._closed
            self._closed = True
            queues = list(self._queues.values())
            self._queues.clear()
        if closing_elsewhere:
            self._shut_down.wait(timeout)
            return self._ended
        try:
            ms = TB_FOREVER if timeout is None else max(0, math.ceil(timeout * 1000))
            self._ended = check(lib.tb_runtime_shutdown(self._handle, ms)) == TB_OK
        finally:
            with _live_lock:
                _live.discard(self)
            self._shut_down.set()
        for queue in queues:
            queue.close()
        return self._ended

    def _submit(self, func: int, arg: Optional[int], free_arg: Optional[int]) -> TbTask:
        handle = TbTask()
        status = lib.tb_spawn_blocking(self._handle, func, arg, free_arg, byref(handle))
        if status < 0:
            raise error_for(status, last_error())
        return handle

    def spawn_blocking(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Task:
        """Runs ``fn(*args, **kwargs)`` once on a blocking-pool thread; returns its :class:`Task`.

        The thread holds the GIL while Python code runs, as any Python thread does. ``fn`` and
        its arguments are kept alive until the job's ``free_arg`` runs: after the call, or when
        the job is cancelled or dropped by a shutdown before it starts. An exception raised by
        ``fn`` comes back from :meth:`Task.result` as :class:`CallbackError` with its traceback.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        key = next(_job_keys)
        record = _PyJob(fn, args, kwargs)
        _jobs[key] = record
        try:
            handle = self._submit(_RUN_JOB_ADDRESS, key, _FREE_JOB_ADDRESS)
        except BaseException:
            _free_job(key)  # a failed submission never calls free_arg
            raise
        return Task(self, handle, record)

    def spawn_blocking_c(self, func: CFunction, arg: CArgument = None) -> Task:
        """Runs the C function ``int32_t func(void *arg, tb_job *job)`` once on a blocking-pool
        thread, without the GIL; returns its :class:`Task`.

        ``func`` is a ctypes function from a :class:`ctypes.CDLL` or a function address. ``arg``
        is None (NULL), an address as an int (passed as is, owned by the caller), or a ctypes
        object: an array, structure, union or number is passed by address, a pointer
        (``c_void_p``, ``c_char_p``, ``POINTER(...)``) by value, and the object is kept alive
        until the job's ``free_arg`` runs, which takes the GIL for a moment after the function.
        The function returns 0 for success or a code that :meth:`Task.result` raises as
        :class:`CallbackError`; ``tb_job_set_result`` sets the int that ``result()`` returns.
        A C library that calls ``tb_job_*`` must link the same library file as the package
        (:data:`tokio_bridge.library_path`).
        """
        address = _c_function(func)
        pointer, keep = _c_argument(arg)
        if keep is None:
            return Task(self, self._submit(address, pointer, None), None)
        assert pointer is not None
        _kept.setdefault(pointer, []).append((next(_job_keys), keep))
        try:
            handle = self._submit(address, pointer, _FREE_KEPT_ADDRESS)
        except BaseException:
            _free_kept(pointer)
            raise
        return Task(self, handle, None)

    def sleep(self, ms: float) -> Task:
        """Starts an async sleep of ``ms`` milliseconds on the async workers (``tb_sleep``); no
        thread waits for it. Returns its :class:`Task`, whose result is None."""
        if ms < 0:
            raise ValueError(f"ms must be >= 0, not {ms!r}")
        handle = TbTask()
        check(lib.tb_sleep(self._handle, math.ceil(ms), byref(handle)))
        return Task(self, handle, None)

    def _loop_queue(self) -> LoopQueue:
        """The completion queue of this runtime on the running event loop, made on first use."""
        loop = asyncio.get_running_loop()
        with self._lock:
            queue = self._queues.get(loop)
            if queue is None:
                queue = self._queues[loop] = LoopQueue(loop)
            return queue

    async def run_blocking(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``await``-able :meth:`spawn_blocking`: returns ``fn``'s result or raises as
        :meth:`Task.result` does. Cancelling the awaiting coroutine cancels the job."""
        return await self.spawn_blocking(fn, *args, **kwargs)

    async def run_blocking_c(self, func: CFunction, arg: CArgument = None) -> Optional[int]:
        """``await``-able :meth:`spawn_blocking_c`: returns the ``tb_job_set_result`` value.
        Cancelling the awaiting coroutine cancels the job."""
        return await self.spawn_blocking_c(func, arg)

    async def asleep(self, ms: float) -> None:
        """``await``-able :meth:`sleep`. Cancelling the awaiting coroutine cancels the sleep."""
        await self.sleep(ms)

    def queue_stats(self) -> Optional[QueueStats]:
        """The counters of this runtime's completion queue on the running event loop, or None if
        nothing has been awaited on it yet."""
        loop = asyncio.get_running_loop()
        with self._lock:
            queue = self._queues.get(loop)
        return None if queue is None else queue.stats()


_default: Optional[Runtime] = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    """A runtime with the default configuration and threads named ``tbpy-*``, created on first
    use (again after it was closed) and closed at exit like any other. (The library's own
    ``tb_runtime_default`` is never used: it cannot be shut down.)"""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Runtime(thread_name="tbpy")
        return _default


def _close_every_runtime() -> None:
    """Registered with :mod:`atexit` at import: closes every open runtime before the interpreter
    starts finalizing, so that no callback of this package runs on a library thread after.

    Then it waits until the ``free_arg`` of every job registered by then has run: that also
    covers jobs still running on a runtime closed earlier with a timeout, and a ``free_arg`` that
    another thread's cancel or close is running right now. Submissions that other threads start
    from now on are all refused, so they cannot hold it up.
    """
    global _exiting
    with _live_lock:
        _exiting = True
        runtimes = list(_live)
    for runtime in runtimes:
        runtime.close()
    with _freed:
        waiting = _registered()
        _freed.wait_for(lambda: waiting.isdisjoint(_registered()))


atexit.register(_close_every_runtime)
